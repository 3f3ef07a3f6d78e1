//! DescribeGroups: state, protocol and members of each group; member
//! metadata and assignments only once the group is stable, as Kafka does.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::str_bytes;
use crate::context::Broker;
use crate::groups::GroupState;

/// READ, DELETE and DESCRIBE: everything a group supports, as no ACLs apply.
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

pub(super) fn handle(
    broker: &Broker,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let unavailable = broker.groups.unavailable();
    let groups = request
        .groups
        .into_iter()
        .map(|id| {
            let group = DescribedGroup::default().with_group_id(id.clone());
            let group = if version >= 3 && request.include_authorized_operations {
                group.with_authorized_operations(GROUP_OPERATIONS)
            } else {
                group
            };
            if let Some(e) = unavailable {
                return group.with_error_code(e.code());
            }
            if id.0.is_empty() {
                return group.with_error_code(ResponseError::InvalidGroupId.code());
            }
            let Some(summary) = broker.groups.describe(&id.0) else {
                return if version >= 6 {
                    group
                        .with_error_code(ResponseError::GroupIdNotFound.code())
                        .with_error_message(Some(str_bytes(&format!(
                            "group \"{}\" does not exist",
                            &*id.0
                        ))))
                        .with_group_state(str_bytes(GroupState::Dead.as_str()))
                } else {
                    group.with_group_state(str_bytes(GroupState::Dead.as_str()))
                };
            };
            let stable = summary.state == GroupState::Stable;
            group
                .with_group_state(str_bytes(summary.state.as_str()))
                .with_protocol_type(str_bytes(&summary.protocol_type))
                .with_protocol_data(str_bytes(if stable { &summary.protocol } else { "" }))
                .with_members(
                    summary
                        .members
                        .into_iter()
                        .map(|m| {
                            let member = DescribedGroupMember::default()
                                .with_member_id(str_bytes(&m.member_id))
                                .with_group_instance_id(if version >= 4 {
                                    m.instance_id.as_deref().map(str_bytes)
                                } else {
                                    None
                                })
                                .with_client_id(str_bytes(&m.client_id))
                                .with_client_host(str_bytes(&m.client_host));
                            if stable {
                                member
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            } else {
                                member
                            }
                        })
                        .collect(),
                )
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
