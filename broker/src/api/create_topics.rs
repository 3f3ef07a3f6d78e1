//! CreateTopics: partitions, replication factor 1, and the topic configs
//! the log understands.

use std::collections::{BTreeMap, HashMap, HashSet};

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
    let mut times: HashMap<String, usize> = HashMap::new();
    for t in &request.topics {
        *times.entry(t.name.0.to_string()).or_default() += 1;
    }
    let mut answered = HashSet::new();
    let results = request
        .topics
        .into_iter()
        .filter(|t| answered.insert(t.name.0.to_string()))
        .map(|t| {
            let name = t.name.0.to_string();
            let result = CreatableTopicResult::default().with_name(t.name.clone());
            if times.get(&name).is_some_and(|n| *n > 1) {
                return result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes(&format!(
                        "topic \"{name}\" is named more than once in this request: name each topic once"
                    ))));
            }
            let partitions = if t.num_partitions == -1 {
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
                    return Err(Refusal::new(
                        ResponseError::InvalidReplicaAssignment,
                        "manual replica assignments are not supported on a single broker",
                    ));
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
