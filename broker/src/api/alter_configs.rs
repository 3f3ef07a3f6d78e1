//! AlterConfigs and IncrementalAlterConfigs for topics: the configs the log
//! honours take effect at once, the rest of Kafka's topic configs are
//! stored and reported; both persist in `topic.json`. An unknown name or a
//! bad value is INVALID_CONFIG, naming it; broker configs are set by flags.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse as AlterResult;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::str_bytes;
use crate::context::Broker;
use crate::topics::Refusal;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// The change asked of one resource's configs.
enum Change<'a> {
    /// AlterConfigs: these configs, the others back to their defaults.
    Replace(BTreeMap<String, String>),
    /// IncrementalAlterConfigs: (name, operation, value) in turn.
    Steps(Vec<(&'a str, i8, Option<&'a str>)>),
}

fn apply(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    change: Change<'_>,
    validate_only: bool,
) -> Result<(), Refusal> {
    match resource_type {
        RESOURCE_TOPIC => {}
        RESOURCE_BROKER => {
            return Err(Refusal::new(
                ResponseError::InvalidConfig,
                format!(
                    "broker \"{name}\": the broker's configs are set by its flags and config file (tally broker --help), not at run time"
                ),
            ));
        }
        other => {
            return Err(Refusal::new(
                ResponseError::InvalidRequest,
                format!("resource type \"{other}\" cannot be altered: expected 2 (topic)"),
            ));
        }
    }
    let topic = broker.topics.get(name).ok_or_else(|| {
        Refusal::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic \"{name}\" does not exist"),
        )
    })?;
    let configs = match change {
        Change::Replace(configs) => configs,
        Change::Steps(steps) => {
            let mut configs = topic.configs.clone();
            for (key, op, value) in steps {
                step(&mut configs, key, op, value)?;
            }
            configs
        }
    };
    broker
        .topics
        .alter_configs(name, configs, validate_only)
        .map(drop)
}

/// One IncrementalAlterConfigs operation: 0 SET, 1 DELETE (back to the
/// default), 2 APPEND and 3 SUBTRACT (to and from a comma-separated list).
fn step(
    configs: &mut BTreeMap<String, String>,
    key: &str,
    op: i8,
    value: Option<&str>,
) -> Result<(), Refusal> {
    let value_of = |v: Option<&str>| {
        v.map(str::to_owned).ok_or_else(|| {
            Refusal::new(
                ResponseError::InvalidRequest,
                format!("config \"{key}\": this operation needs a value"),
            )
        })
    };
    match op {
        0 => {
            configs.insert(key.to_owned(), value_of(value)?);
        }
        1 => {
            configs.remove(key);
        }
        2 | 3 => {
            let given = value_of(value)?;
            let current = configs.get(key).cloned().unwrap_or_else(|| {
                // The default of the only list-valued config the log honours.
                if key == "cleanup.policy" {
                    "delete".to_owned()
                } else {
                    String::new()
                }
            });
            let mut items: Vec<String> = current
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            for v in given.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if op == 2 {
                    if !items.iter().any(|i| i == v) {
                        items.push(v.to_owned());
                    }
                } else {
                    items.retain(|i| i != v);
                }
            }
            configs.insert(key.to_owned(), items.join(","));
        }
        other => {
            return Err(Refusal::new(
                ResponseError::InvalidRequest,
                format!(
                    "config \"{key}\": operation \"{other}\" is not known: expected 0 (set), 1 (delete), 2 (append) or 3 (subtract)"
                ),
            ));
        }
    }
    Ok(())
}

fn outcome(r: Result<(), Refusal>) -> (i16, Option<StrBytes>) {
    match r {
        Ok(()) => (0, None),
        Err(r) => (r.error.code(), Some(str_bytes(&r.message))),
    }
}

pub(super) fn alter(broker: &Broker, request: &AlterConfigsRequest) -> AlterConfigsResponse {
    let responses = request
        .resources
        .iter()
        .map(|r| {
            let mut configs = BTreeMap::new();
            for c in &r.configs {
                if let Some(v) = &c.value {
                    configs.insert(c.name.to_string(), v.to_string());
                }
            }
            let (code, message) = outcome(apply(
                broker,
                r.resource_type,
                &r.resource_name,
                Change::Replace(configs),
                request.validate_only,
            ));
            AlterResult::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone())
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub(super) fn incremental(
    broker: &Broker,
    request: &IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let responses = request
        .resources
        .iter()
        .map(|r| {
            let steps = r
                .configs
                .iter()
                .map(|c| (c.name.as_str(), c.config_operation, c.value.as_deref()))
                .collect();
            let (code, message) = outcome(apply(
                broker,
                r.resource_type,
                &r.resource_name,
                Change::Steps(steps),
                request.validate_only,
            ));
            IncrementalResult::default()
                .with_error_code(code)
                .with_error_message(message)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone())
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
