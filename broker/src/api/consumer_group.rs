//! The KIP-848 consumer group protocol: ConsumerGroupHeartbeat (v1, the
//! version librdkafka speaks; v0 too) and ConsumerGroupDescribe. The
//! coordinator's rules are in [`crate::groups::consumer`].

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_group_describe_response::{self, DescribedGroup, Member};
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse,
};

use super::{Caller, str_bytes};
use crate::context::Broker;
use crate::groups::consumer::{Catalog, Heartbeat, Tp};

/// Kafka's `group.consumer.heartbeat.interval.ms` default.
const HEARTBEAT_INTERVAL_MS: i32 = 5_000;

/// READ, DELETE and DESCRIBE: everything a group supports, as no ACLs apply.
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

pub(super) fn heartbeat(
    broker: &Broker,
    request: ConsumerGroupHeartbeatRequest,
    caller: &Caller,
) -> ConsumerGroupHeartbeatResponse {
    if let Some(e) = broker.groups.unavailable() {
        return ConsumerGroupHeartbeatResponse::default()
            .with_error_code(e.code())
            .with_member_epoch(request.member_epoch);
    }
    let hb = Heartbeat {
        group_id: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.map(|s| s.to_string()),
        rack_id: request.rack_id.map(|s| s.to_string()),
        subscribed_topic_names: request
            .subscribed_topic_names
            .map(|v| v.into_iter().map(|t| t.0.to_string()).collect()),
        subscribed_topic_regex: request.subscribed_topic_regex.map(|s| s.to_string()),
        server_assignor: request.server_assignor.map(|s| s.to_string()),
        owned: request.topic_partitions.map(|v| {
            v.into_iter()
                .map(|tp| (tp.topic_id, tp.partitions))
                .collect()
        }),
        client_id: caller.client_id(),
        host: caller.peer.ip(),
    };
    let beat = broker.groups.consumer_heartbeat(hb, &broker.topics);
    let answer = ConsumerGroupHeartbeatResponse::default()
        .with_member_id(Some(str_bytes(&beat.member_id)))
        .with_member_epoch(beat.member_epoch)
        .with_heartbeat_interval_ms(HEARTBEAT_INTERVAL_MS);
    if let Some((error, message)) = beat.error {
        tracing::debug!(member = %beat.member_id, ?error, "consumer group heartbeat refused: {message}");
        return answer
            .with_error_code(error.code())
            .with_error_message(Some(str_bytes(&message)));
    }
    answer.with_assignment(beat.assignment.map(|parts| {
        Assignment::default().with_topic_partitions(
            parts
                .into_iter()
                .map(|(id, partitions)| {
                    TopicPartitions::default()
                        .with_topic_id(id)
                        .with_partitions(partitions)
                })
                .collect(),
        )
    }))
}

/// Partitions as ConsumerGroupDescribe lists them, by topic.
fn described(parts: &[Tp], broker: &Broker) -> consumer_group_describe_response::Assignment {
    let mut topics: Vec<consumer_group_describe_response::TopicPartitions> = Vec::new();
    for (topic, p) in parts {
        match topics.last_mut() {
            Some(last) if *last.topic_name.0 == **topic => last.partitions.push(*p),
            _ => {
                let id = broker
                    .topics
                    .topic(topic)
                    .map(|(id, _)| id)
                    .unwrap_or_default();
                topics.push(
                    consumer_group_describe_response::TopicPartitions::default()
                        .with_topic_id(id)
                        .with_topic_name(str_bytes(topic).into())
                        .with_partitions(vec![*p]),
                );
            }
        }
    }
    consumer_group_describe_response::Assignment::default().with_topic_partitions(topics)
}

pub(super) fn describe(
    broker: &Broker,
    request: &ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let unavailable = broker.groups.unavailable();
    let groups = request
        .group_ids
        .iter()
        .map(|id| {
            let group = DescribedGroup::default().with_group_id(id.clone());
            if let Some(e) = unavailable {
                return group.with_error_code(e.code());
            }
            let Some(g) = broker.groups.describe_consumer(&id.0) else {
                let known = broker.groups.describe(&id.0).is_some();
                return group
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(Some(str_bytes(&if known {
                        format!("group \"{}\" is not a consumer-protocol group", id.0)
                    } else {
                        format!("group \"{}\" does not exist", id.0)
                    })));
            };
            let members = g
                .members
                .iter()
                .map(|m| {
                    Member::default()
                        .with_member_id(str_bytes(&m.member_id))
                        .with_instance_id(m.instance_id.as_deref().map(str_bytes))
                        .with_rack_id(m.rack_id.as_deref().map(str_bytes))
                        .with_member_epoch(m.epoch)
                        .with_client_id(str_bytes(&m.client_id))
                        .with_client_host(str_bytes(&m.client_host))
                        .with_subscribed_topic_names(
                            m.topics.iter().map(|t| str_bytes(t).into()).collect(),
                        )
                        .with_subscribed_topic_regex(m.regex.as_deref().map(str_bytes))
                        .with_assignment(described(&m.assignment, broker))
                        .with_target_assignment(described(&m.target, broker))
                })
                .collect();
            let group = group
                .with_group_state(str_bytes(g.state.as_str()))
                .with_group_epoch(g.epoch)
                .with_assignment_epoch(g.assignment_epoch)
                .with_assignor_name(str_bytes(&g.assignor))
                .with_members(members);
            if request.include_authorized_operations {
                group.with_authorized_operations(GROUP_OPERATIONS)
            } else {
                group.with_authorized_operations(i32::MIN)
            }
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}
