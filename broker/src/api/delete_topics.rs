//! DeleteTopics: by name (v0–5) or by name or id (v6+).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};

use super::str_bytes;
use crate::server::Broker;

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
    let responses = wanted
        .into_iter()
        .map(|(name, id)| {
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
