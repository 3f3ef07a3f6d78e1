//! Metadata: brokers, topics and partitions; topics are created on demand
//! when the broker allows it and the client asks for it.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use tracing::debug;

use super::str_bytes;
use crate::context::Broker;
use crate::topics::{self, Topic};

/// READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS and
/// ALTER_CONFIGS: every operation on a topic, as no authorizer limits any.
const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);

fn describe(broker: &Broker, topic: &Topic, version: i16) -> MetadataResponseTopic {
    let node = BrokerId(broker.cfg.node_id);
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_topic_id(if version >= 10 {
            topic.id
        } else {
            uuid::Uuid::nil()
        })
        .with_partitions(
            (0..topic.partitions.len() as i32)
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(node)
                        .with_leader_epoch(if version >= 7 { 0 } else { -1 })
                        .with_replica_nodes(vec![node])
                        .with_isr_nodes(vec![node])
                })
                .collect(),
        )
}

fn failed(name: &str, error: ResponseError) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(name))))
        .with_error_code(error.code())
}

pub(super) fn handle(broker: &Broker, request: MetadataRequest, version: i16) -> MetadataResponse {
    let (host, port) = broker.cfg.advertised();
    let topics: Vec<MetadataResponseTopic> = match request.topics {
        // v0 used an empty list to mean "all".
        None => broker
            .topics
            .all()
            .iter()
            .map(|t| describe(broker, t, version))
            .collect(),
        Some(list) if list.is_empty() && version == 0 => broker
            .topics
            .all()
            .iter()
            .map(|t| describe(broker, t, version))
            .collect(),
        Some(list) => list
            .iter()
            .map(|requested| {
                let topic = match (&requested.name, requested.topic_id.is_nil()) {
                    (Some(name), _) => Some(name.0.to_string()),
                    (None, false) => broker
                        .topics
                        .by_id(requested.topic_id)
                        .map(|t| t.name.clone()),
                    (None, true) => None,
                };
                let Some(name) = topic else {
                    return MetadataResponseTopic::default()
                        .with_topic_id(requested.topic_id)
                        .with_error_code(ResponseError::UnknownTopicId.code());
                };
                if let Some(t) = broker.topics.get(&name) {
                    return describe(broker, &t, version);
                }
                let may_create = broker.cfg.auto_create_topics
                    && (version < 4 || request.allow_auto_topic_creation);
                if tally_audit::validate_topic(&name).is_err() {
                    return failed(&name, ResponseError::InvalidTopicException);
                }
                if topics::is_internal(&name) {
                    // Kafka's own topic, which this broker does not keep as a
                    // topic: answered as missing, never auto-created.
                    return failed(&name, ResponseError::UnknownTopicOrPartition)
                        .with_is_internal(true);
                }
                if !may_create {
                    return failed(&name, ResponseError::UnknownTopicOrPartition);
                }
                match broker.topics.create(
                    &name,
                    broker.cfg.default_partitions,
                    Default::default(),
                    false,
                ) {
                    Ok(t) => describe(broker, &t, version),
                    // Another request created it meanwhile.
                    Err(r) if r.error == ResponseError::TopicAlreadyExists => {
                        broker.topics.get(&name).map_or_else(
                            || failed(&name, ResponseError::UnknownTopicOrPartition),
                            |t| describe(broker, &t, version),
                        )
                    }
                    Err(r) => {
                        debug!(topic = %name, "auto-create refused: {}", r.message);
                        failed(&name, r.error)
                    }
                }
            })
            .collect(),
    };
    // Asked for (v8+), every operation: no authorizer runs.
    let topics = if version >= 8 && request.include_topic_authorized_operations {
        topics
            .into_iter()
            .map(|t| {
                if t.error_code == 0 {
                    t.with_topic_authorized_operations(TOPIC_OPERATIONS)
                } else {
                    t
                }
            })
            .collect()
    } else {
        topics
    };
    let cluster_operations =
        if (8..=10).contains(&version) && request.include_cluster_authorized_operations {
            super::describe_cluster::CLUSTER_OPERATIONS
        } else {
            super::describe_cluster::NOT_ASKED
        };
    MetadataResponse::default()
        .with_cluster_authorized_operations(cluster_operations)
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(broker.cfg.node_id))
                .with_host(str_bytes(&host))
                .with_port(port),
        ])
        .with_cluster_id((version >= 2).then(|| str_bytes(&broker.cluster_id)))
        .with_controller_id(BrokerId(if version >= 1 { broker.cfg.node_id } else { -1 }))
        .with_topics(topics)
}
