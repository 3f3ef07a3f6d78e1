//! LeaveGroup: one member (v0–2) or a batch of members, by member id or
//! group.instance.id (v3+), leave; the rest rebalance.

use std::time::Instant;

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use super::str_bytes;
use crate::context::Broker;
use crate::groups::LeavingMember;

pub(super) fn handle(
    broker: &Broker,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    if let Some(e) = broker.groups.unavailable() {
        return LeaveGroupResponse::default().with_error_code(e.code());
    }
    let leaving: Vec<LeavingMember> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| LeavingMember {
                member_id: m.member_id.to_string(),
                instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
            })
            .collect()
    } else {
        vec![LeavingMember {
            member_id: request.member_id.to_string(),
            instance_id: None,
        }]
    };
    let errors = broker
        .groups
        .coordinator()
        .leave(&request.group_id.0, &leaving, Instant::now());
    if version < 3 {
        let error = errors.first().copied().flatten();
        return LeaveGroupResponse::default().with_error_code(error.map_or(0, |e| e.code()));
    }
    LeaveGroupResponse::default().with_members(
        leaving
            .into_iter()
            .zip(errors)
            .map(|(m, e)| {
                MemberResponse::default()
                    .with_member_id(str_bytes(&m.member_id))
                    .with_group_instance_id(m.instance_id.as_deref().map(str_bytes))
                    .with_error_code(e.map_or(0, |e| e.code()))
            })
            .collect(),
    )
}
