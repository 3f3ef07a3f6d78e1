//! Heartbeat: keeps a member's session alive and tells it when the group
//! rebalances.

use std::time::Instant;

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use crate::context::Broker;

pub(super) fn handle(broker: &Broker, request: HeartbeatRequest) -> HeartbeatResponse {
    let error = broker.groups.unavailable().or_else(|| {
        broker.groups.coordinator().heartbeat(
            &request.group_id.0,
            request.generation_id,
            &request.member_id,
            request.group_instance_id.as_deref(),
            Instant::now(),
        )
    });
    HeartbeatResponse::default().with_error_code(error.map_or(0, |e| e.code()))
}
