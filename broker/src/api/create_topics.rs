//! CreateTopics: partitions, replication factor 1, and the topic configs
//! the log understands.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use tracing::info;

use super::{describe_configs, str_bytes};
use crate::context::Broker;
use crate::topics::Refusal;

pub(super) fn handle(
    broker: &Broker,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    // As Kafka does, a name given twice is refused once, and created by neither.
    let (topics, twice) = super::each_once(request.topics, |t| &t.name.0);
    let results = topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let result = CreatableTopicResult::default().with_name(t.name.clone());
            if twice.contains(&name) {
                return result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes(&format!(
                        "topic \"{name}\" is named more than once in this request: name each topic once"
                    ))));
            }
            let partitions = if !t.assignments.is_empty() {
                    i32::try_from(t.assignments.len()).unwrap_or(i32::MAX)
                } else if t.num_partitions == -1 {
                    broker.cfg.default_partitions
                } else {
                    t.num_partitions
                };
            let outcome = (|| {
                if t.replication_factor != -1 && t.replication_factor != 1 {
                    return Err(Refusal::new(
                        ResponseError::InvalidReplicationFactor,
                        format!(
                            "replication factor \"{}\" is not possible on a single broker: use 1 or -1",
                            t.replication_factor
                        ),
                    ));
                }
                if !t.assignments.is_empty() {
                    check_assignments(broker.cfg.node_id, &t)?;
                }
                let mut configs = BTreeMap::new();
                for c in &t.configs {
                    if let Some(v) = &c.value {
                        configs.insert(c.name.to_string(), v.to_string());
                    }
                }
                broker.topics.create(&name, partitions, configs, request.validate_only)
            })();
            match outcome {
                Ok(topic) if version < 5 => {
                    if !request.validate_only {
                        info!(topic = %name, partitions = topic.partitions.len(), "created by CreateTopics");
                    }
                    result
                }
                Ok(topic) => {
                    if !request.validate_only {
                        info!(topic = %name, partitions = topic.partitions.len(), "created by CreateTopics");
                    }
                    let configs = describe_configs::topic_entries(&topic)
                        .into_iter()
                        .map(|e| {
                            CreatableTopicConfigs::default()
                                .with_name(e.name)
                                .with_value(e.value)
                                .with_config_source(e.config_source)
                        })
                        .collect();
                    result
                        .with_topic_id(if version >= 7 { topic.id } else { uuid::Uuid::nil() })
                        .with_num_partitions(partitions)
                        .with_replication_factor(1)
                        .with_configs(Some(configs))
                }
                Err(r) => result
                    .with_error_code(r.error.code())
                    .with_error_message(Some(str_bytes(&r.message))),
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(results)
}

/// A manual assignment, as Kafka checks it, on one broker: the partition
/// count and replication factor left to it (-1), partitions 0 to n-1 each
/// once, and each on this broker alone.
fn check_assignments(
    node: i32,
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<(), Refusal> {
    let bad = |message: String| {
        Err(Refusal::new(
            ResponseError::InvalidReplicaAssignment,
            message,
        ))
    };
    if t.num_partitions != -1 || t.replication_factor != -1 {
        return Err(Refusal::new(
            ResponseError::InvalidRequest,
            "a replica assignment gives the partitions and their replicas: send num_partitions and replication_factor as -1 with it",
        ));
    }
    let mut indexes: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
    indexes.sort_unstable();
    if !indexes
        .iter()
        .copied()
        .eq(0..i32::try_from(indexes.len()).unwrap_or(i32::MAX))
    {
        return bad(format!(
            "the assignment names partitions {indexes:?}: expected each of 0 to {} once",
            indexes.len().saturating_sub(1)
        ));
    }
    for a in &t.assignments {
        let ids: Vec<i32> = a.broker_ids.iter().map(|b| b.0).collect();
        if ids != [node] {
            return bad(format!(
                "partition {} is assigned to brokers {ids:?}: this single broker (id {node}) holds every partition, so each assignment must be [{node}]",
                a.partition_index
            ));
        }
    }
    Ok(())
}
