//! DescribeConfigs: a topic's configs (set or default), and the broker's.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::str_bytes;
use crate::context::Broker;
use crate::topics::Topic;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_DOUBLE: i8 = 6;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;

fn entry(name: &str, value: String, source: i8, config_type: i8) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(&value)))
        .with_config_source(source)
        .with_config_type(config_type)
}

/// A topic's configs as Kafka names them, with their source.
pub(super) fn topic_entries(topic: &Topic) -> Vec<DescribeConfigsResourceResult> {
    let c = &topic.log_config;
    let values = [
        ("cleanup.policy", "delete".to_owned(), TYPE_STRING),
        ("retention.ms", c.retention_ms.to_string(), TYPE_LONG),
        ("retention.bytes", c.retention_bytes.to_string(), TYPE_LONG),
        ("segment.bytes", c.segment_bytes.to_string(), TYPE_INT),
        ("segment.ms", c.segment_ms.to_string(), TYPE_LONG),
        (
            "message.timestamp.type",
            if c.log_append_time {
                "LogAppendTime"
            } else {
                "CreateTime"
            }
            .to_owned(),
            TYPE_STRING,
        ),
    ];
    let honoured = values.into_iter().map(|(name, value, t)| {
        let source = if topic.configs.contains_key(name) {
            SOURCE_TOPIC
        } else {
            SOURCE_DEFAULT
        };
        entry(name, value, source, t)
    });
    // The configs stored for the tools, as they were set.
    let stored = crate::topics::STORED_TOPIC_CONFIGS
        .iter()
        .filter_map(|(name, kind)| {
            let value = topic.configs.get(*name)?;
            let t = match kind {
                crate::topics::ValueKind::Long => TYPE_LONG,
                crate::topics::ValueKind::Bool => TYPE_BOOLEAN,
                crate::topics::ValueKind::Ratio => TYPE_DOUBLE,
                _ => TYPE_STRING,
            };
            Some(entry(name, value.clone(), SOURCE_TOPIC, t))
        });
    honoured.chain(stored).collect()
}

fn broker_entries(broker: &Broker) -> Vec<DescribeConfigsResourceResult> {
    let (host, port) = broker.cfg.advertised();
    [
        ("broker.id", broker.cfg.node_id.to_string(), TYPE_INT),
        (
            "num.partitions",
            broker.cfg.default_partitions.to_string(),
            TYPE_INT,
        ),
        (
            "auto.create.topics.enable",
            broker.cfg.auto_create_topics.to_string(),
            TYPE_STRING,
        ),
        (
            "advertised.listeners",
            format!("PLAINTEXT://{host}:{port}"),
            TYPE_STRING,
        ),
        (
            "message.max.bytes",
            broker.cfg.max_frame_bytes.to_string(),
            TYPE_INT,
        ),
    ]
    .into_iter()
    .map(|(n, v, t)| entry(n, v, SOURCE_STATIC_BROKER, t))
    .collect()
}

pub(super) fn handle(
    broker: &Broker,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|r| {
            let name = r.resource_name.to_string();
            let result = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let entries = match r.resource_type {
                RESOURCE_TOPIC => match broker.topics.get(&name) {
                    Some(t) => topic_entries(&t),
                    None => {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(str_bytes(&format!("topic \"{name}\" does not exist"))));
                    }
                },
                RESOURCE_BROKER => broker_entries(broker),
                other => {
                    return result
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(str_bytes(&format!(
                            "resource type \"{other}\" is not described: expected 2 (topic) or 4 (broker)"
                        ))));
                }
            };
            let entries = match &r.configuration_keys {
                Some(keys) => entries
                    .into_iter()
                    .filter(|e| keys.contains(&e.name))
                    .collect(),
                None => entries,
            };
            // config_type exists from v3 on.
            let entries = entries
                .into_iter()
                .map(|e| if version >= 3 { e } else { e.with_config_type(0) })
                .collect();
            result.with_configs(entries)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
