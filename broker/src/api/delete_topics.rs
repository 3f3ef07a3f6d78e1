//! DeleteTopics: by name (v0–5) or by name or id (v6+).

use std::collections::{HashMap, HashSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};

use super::str_bytes;
use crate::context::Broker;

pub(super) fn handle(
    broker: &Broker,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let wanted: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect()
    };
    // As Kafka does, a topic named (or identified) twice is refused once, and
    // not deleted.
    let mut times: HashMap<(Option<String>, uuid::Uuid), usize> = HashMap::new();
    for key in &wanted {
        *times.entry(key.clone()).or_default() += 1;
    }
    let mut answered = HashSet::new();
    let responses = wanted
        .into_iter()
        .filter(|key| answered.insert(key.clone()))
        .map(|(name, id)| {
            if times.get(&(name.clone(), id)).is_some_and(|n| *n > 1) {
                let what = name.as_ref().map_or_else(
                    || format!("topic id \"{id}\""),
                    |n| format!("topic \"{n}\""),
                );
                return DeletableTopicResult::default()
                    .with_name(name.as_ref().map(|n| TopicName(str_bytes(n))))
                    .with_topic_id(if version >= 6 { id } else { uuid::Uuid::nil() })
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message((version >= 5).then(|| {
                        str_bytes(&format!(
                            "{what} is named more than once in this request: name each topic once"
                        ))
                    }));
            }
            let name = name.or_else(|| broker.topics.by_id(id).map(|t| t.name.clone()));
            let Some(name) = name else {
                return DeletableTopicResult::default()
                    .with_topic_id(id)
                    .with_error_code(ResponseError::UnknownTopicId.code());
            };
            let result =
                DeletableTopicResult::default().with_name(Some(TopicName(str_bytes(&name))));
            match broker.topics.delete(&name) {
                Ok(topic) => {
                    broker.on_topic_deleted(&topic);
                    if version >= 6 {
                        result.with_topic_id(topic.id)
                    } else {
                        result
                    }
                }
                Err(r) => result
                    .with_error_code(r.error.code())
                    .with_error_message((version >= 5).then(|| str_bytes(&r.message))),
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}
