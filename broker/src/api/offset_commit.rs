//! OffsetCommit (v2–9): a member of the current generation, or anyone for
//! a group without members (generation -1), stores offsets; the answer
//! comes once they are fsynced.

use std::time::Instant;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use tracing::debug;

use crate::context::{Broker, now_ms};
use crate::groups::CommittedOffset;

pub(super) async fn handle(
    broker: &Broker,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let group = request.group_id.0.to_string();
    let gate = match broker.groups.unavailable() {
        Some(e) => Err(e),
        None => broker.groups.coordinator().check_commit(
            &group,
            request.generation_id_or_member_epoch,
            &request.member_id,
            request.group_instance_id.as_deref(),
            Instant::now(),
        ),
    };
    if let Err(e) = gate {
        debug!(group, error = ?e, "offset commit refused");
    }
    let committed_at = now_ms();
    let max_metadata = broker.groups.config().max_metadata_bytes;
    // Per topic, per partition: the error, or None for a commit to store.
    let mut answers: Vec<Vec<(i32, Option<ResponseError>)>> = Vec::new();
    let mut to_store = Vec::new();
    for t in &request.topics {
        let topic = broker.topics.get(&t.name.0);
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let error = match (&gate, &topic) {
                (Err(e), _) => Some(*e),
                (Ok(()), None) => Some(ResponseError::UnknownTopicOrPartition),
                (Ok(()), Some(topic)) if topic.partition(p.partition_index).is_none() => {
                    Some(ResponseError::UnknownTopicOrPartition)
                }
                _ if p
                    .committed_metadata
                    .as_ref()
                    .is_some_and(|m| m.len() > max_metadata) =>
                {
                    Some(ResponseError::OffsetMetadataTooLarge)
                }
                _ => None,
            };
            if error.is_none() {
                to_store.push((
                    t.name.0.to_string(),
                    p.partition_index,
                    CommittedOffset {
                        offset: p.committed_offset,
                        leader_epoch: if version >= 6 {
                            p.committed_leader_epoch
                        } else {
                            -1
                        },
                        // Kafka stores a null metadata as "".
                        metadata: Some(
                            p.committed_metadata
                                .as_ref()
                                .map_or_else(String::new, |m| m.to_string()),
                        ),
                        commit_time_ms: committed_at,
                    },
                ));
            }
            parts.push((p.partition_index, error));
        }
        answers.push(parts);
    }
    let stored = if to_store.is_empty() {
        Ok(())
    } else {
        broker.groups.commit(&group, to_store).await
    };
    let topics = request
        .topics
        .into_iter()
        .zip(answers)
        .map(|(t, parts)| {
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(index, error)| {
                            let error = error.or(stored.err());
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(index)
                                .with_error_code(error.map_or(0, |e| e.code()))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
