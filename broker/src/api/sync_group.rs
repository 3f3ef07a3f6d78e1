//! SyncGroup: the leader hands in the assignments; every member waits for
//! its own.

use std::time::Instant;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use super::str_bytes;
use crate::context::Broker;
use crate::groups::{SyncOutcome, SyncRequest};

pub(super) async fn handle(
    broker: &Broker,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let outcome = match broker.groups.unavailable() {
        Some(e) => SyncOutcome::failed(e),
        None => {
            let sync = SyncRequest {
                group_id: request.group_id.0.to_string(),
                generation_id: request.generation_id,
                member_id: request.member_id.to_string(),
                instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
                protocol_type: request.protocol_type.as_ref().map(|p| p.to_string()),
                protocol_name: request.protocol_name.as_ref().map(|p| p.to_string()),
                assignments: request
                    .assignments
                    .into_iter()
                    .map(|a| (a.member_id.to_string(), a.assignment))
                    .collect(),
            };
            let reply = broker.groups.coordinator().sync(sync, Instant::now());
            reply
                .wait(|| SyncOutcome::failed(ResponseError::CoordinatorNotAvailable))
                .await
        }
    };
    let v5 = version >= 5;
    SyncGroupResponse::default()
        .with_error_code(outcome.error.map_or(0, |e| e.code()))
        .with_protocol_type(
            outcome
                .protocol_type
                .as_deref()
                .filter(|_| v5)
                .map(str_bytes),
        )
        .with_protocol_name(
            outcome
                .protocol_name
                .as_deref()
                .filter(|_| v5)
                .map(str_bytes),
        )
        .with_assignment(outcome.assignment)
}
