//! JoinGroup: a member joins and waits until the group's rebalance
//! completes; v4+ new members first get MEMBER_ID_REQUIRED and an id.

use std::time::Instant;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use super::{Caller, str_bytes};
use crate::context::Broker;
use crate::groups::{JoinOutcome, JoinRequest};

pub(super) async fn handle(
    broker: &Broker,
    request: JoinGroupRequest,
    version: i16,
    caller: &Caller,
) -> JoinGroupResponse {
    let member_id = request.member_id.to_string();
    let outcome = match broker.groups.unavailable() {
        Some(e) => JoinOutcome::failed(e, &member_id),
        None => {
            let join = JoinRequest {
                group_id: request.group_id.0.to_string(),
                member_id: member_id.clone(),
                instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
                client_id: caller.client_id(),
                client_host: caller.host(),
                session_timeout_ms: request.session_timeout_ms,
                rebalance_timeout_ms: if version >= 1 {
                    request.rebalance_timeout_ms
                } else {
                    -1
                },
                protocol_type: request.protocol_type.to_string(),
                protocols: request
                    .protocols
                    .into_iter()
                    .map(|p| (p.name.to_string(), p.metadata))
                    .collect(),
                require_known_member_id: version >= 4,
                supports_skip_assignment: version >= 9,
            };
            let reply = broker.groups.coordinator().join(join, Instant::now());
            reply
                .wait(|| JoinOutcome::failed(ResponseError::CoordinatorNotAvailable, &member_id))
                .await
        }
    };
    JoinGroupResponse::default()
        .with_error_code(outcome.error.map_or(0, |e| e.code()))
        .with_generation_id(outcome.generation_id)
        .with_protocol_type(if version >= 7 {
            outcome.protocol_type.as_deref().map(str_bytes)
        } else {
            None
        })
        // Before v7 the protocol name is not nullable.
        .with_protocol_name(match outcome.protocol_name.as_deref() {
            Some(p) => Some(str_bytes(p)),
            None if version >= 7 => None,
            None => Some(str_bytes("")),
        })
        .with_leader(str_bytes(&outcome.leader))
        .with_skip_assignment(version >= 9 && outcome.skip_assignment)
        .with_member_id(str_bytes(&outcome.member_id))
        .with_members(
            outcome
                .members
                .into_iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&m.member_id))
                        .with_group_instance_id(if version >= 5 {
                            m.instance_id.as_deref().map(str_bytes)
                        } else {
                            None
                        })
                        .with_metadata(m.metadata)
                })
                .collect(),
        )
}
