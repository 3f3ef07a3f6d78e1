//! OffsetFetch (v1–9): a group's committed offsets for the named
//! partitions, or for all of them when topics is null (v2+); several
//! groups at once from v8. A partition without a commit gets -1.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};

use super::str_bytes;
use crate::context::Broker;
use crate::groups::CommittedOffset;

/// Per topic, per partition: the latest commit, if any.
type Fetched = Vec<(String, Vec<(i32, Option<CommittedOffset>)>)>;

fn fetch(
    broker: &Broker,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Fetched, ResponseError> {
    if let Some(e) = broker.groups.unavailable() {
        return Err(e);
    }
    Ok(match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(topic, partitions)| {
                let found = partitions
                    .into_iter()
                    .map(|p| (p, broker.groups.committed(group, &topic, p)))
                    .collect();
                (topic, found)
            })
            .collect(),
        None => {
            let mut all: Fetched = Vec::new();
            for o in broker.groups.group_committed(group) {
                match all.last_mut() {
                    Some((t, parts)) if *t == o.topic => {
                        parts.push((o.partition, Some(o.committed)))
                    }
                    _ => all.push((o.topic, vec![(o.partition, Some(o.committed))])),
                }
            }
            all
        }
    })
}

fn offset_of(c: &Option<CommittedOffset>) -> (i64, i32, String) {
    match c {
        Some(c) => (
            c.offset,
            c.leader_epoch,
            c.metadata.clone().unwrap_or_default(),
        ),
        None => (-1, -1, String::new()),
    }
}

pub(super) fn handle(
    broker: &Broker,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|g| {
                let wanted = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes))
                        .collect()
                });
                let answer = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                match fetch(broker, &g.group_id.0, wanted) {
                    Err(e) => answer.with_error_code(e.code()),
                    Ok(found) => answer.with_topics(
                        found
                            .into_iter()
                            .map(|(topic, parts)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(str_bytes(&topic)))
                                    .with_partitions(
                                        parts
                                            .iter()
                                            .map(|(p, c)| {
                                                let (offset, epoch, metadata) = offset_of(c);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(*p)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(Some(str_bytes(&metadata)))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
                }
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted: Option<Vec<(String, Vec<i32>)>> = request.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let partition = |p: i32, c: &Option<CommittedOffset>, error: Option<ResponseError>| {
        let (offset, epoch, metadata) = offset_of(c);
        OffsetFetchResponsePartition::default()
            .with_partition_index(p)
            .with_committed_offset(offset)
            .with_committed_leader_epoch(if version >= 5 { epoch } else { -1 })
            .with_metadata(Some(str_bytes(&metadata)))
            .with_error_code(error.map_or(0, |e| e.code()))
    };
    let topic = |name: &str, parts: Vec<OffsetFetchResponsePartition>| {
        OffsetFetchResponseTopic::default()
            .with_name(TopicName(str_bytes(name)))
            .with_partitions(parts)
    };
    match fetch(broker, &request.group_id.0, wanted.clone()) {
        Ok(found) => OffsetFetchResponse::default().with_topics(
            found
                .iter()
                .map(|(name, parts)| {
                    topic(
                        name,
                        parts.iter().map(|(p, c)| partition(*p, c, None)).collect(),
                    )
                })
                .collect(),
        ),
        // v2+ carries the group's error at the top; v1 only per partition.
        Err(e) if version >= 2 => OffsetFetchResponse::default().with_error_code(e.code()),
        Err(e) => OffsetFetchResponse::default().with_topics(
            wanted
                .unwrap_or_default()
                .iter()
                .map(|(name, parts)| {
                    topic(
                        name,
                        parts
                            .iter()
                            .map(|p| partition(*p, &None, Some(e)))
                            .collect(),
                    )
                })
                .collect(),
        ),
    }
}
