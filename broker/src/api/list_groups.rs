//! ListGroups: every group, filtered by state (v4+) and type (v5+:
//! "classic", or "consumer" for the KIP-848 protocol).

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::str_bytes;
use crate::context::Broker;

pub(super) fn handle(
    broker: &Broker,
    request: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    if let Some(e) = broker.groups.unavailable() {
        return ListGroupsResponse::default().with_error_code(e.code());
    }
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let wanted = |group_type: &str| {
        version < 5
            || request.types_filter.is_empty()
            || request
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case(group_type))
    };
    let groups = broker
        .groups
        .list()
        .into_iter()
        .filter(|g| wanted(g.group_type))
        .filter(|g| {
            version < 4
                || states.is_empty()
                || states.contains(&g.state.as_str().to_ascii_lowercase())
        })
        .map(|g| {
            let listed = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&g.group)))
                .with_protocol_type(str_bytes(&g.protocol_type));
            let listed = if version >= 4 {
                listed.with_group_state(str_bytes(g.state.as_str()))
            } else {
                listed
            };
            if version >= 5 {
                listed.with_group_type(str_bytes(g.group_type))
            } else {
                listed
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}
