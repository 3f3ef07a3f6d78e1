//! OffsetFetch: every committed offset of a group, asked of its coordinator. Works for
//! classic and KIP-848 `consumer` groups alike.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{ApiKey, GroupId, OffsetFetchRequest, OffsetFetchResponse};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::Semaphore;

use super::find_coordinator::GroupAnswers;
use super::request::{Api, ResponseErrors, first};
use super::transport::BrokerAddr;
use super::{Client, KafkaCode};
use crate::Result;

impl Api for OffsetFetchRequest {
    const KEY: ApiKey = ApiKey::OffsetFetch;
    // v1 cannot ask for every partition of a group (null topics came with v2).
    const NAME: &'static str = "OffsetFetch";
    const MIN: i16 = 2;
    // v10 names topics by id only.
    const MAX: i16 = 9;
    type Response = OffsetFetchResponse;
}

impl ResponseErrors for OffsetFetchResponse {
    fn first_error(&self) -> Option<i16> {
        let old = std::iter::once(self.error_code).chain(
            self.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        );
        let new = self.groups.iter().flat_map(|g| {
            std::iter::once(g.error_code).chain(
                g.topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            )
        });
        first(old.chain(new))
    }
}

/// Requests for single groups that may be in flight to one coordinator at once (brokers
/// older than OffsetFetch v8 take one group per request).
const GROUPS_IN_FLIGHT: usize = 64;

/// A group's committed offset of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The committed offset; -1 when none.
    pub offset: i64,
    /// The partition's error, if any.
    pub error: Option<KafkaCode>,
}

fn offset(topic: &str, partition: i32, committed: i64, code: i16) -> CommittedOffset {
    CommittedOffset {
        topic: topic.to_owned(),
        partition,
        offset: committed,
        error: (code != 0).then_some(KafkaCode(code)),
    }
}

impl Client {
    /// Every committed offset of each group, asked of the group's coordinator: all its
    /// groups in one request where it speaks OffsetFetch v8+, else one request per group,
    /// pipelined on the coordinator's connection. See
    /// [`per_coordinator`](Client::per_coordinator) for retries.
    pub async fn offset_fetch(
        &self,
        groups: &[String],
    ) -> Result<HashMap<String, Result<Vec<CommittedOffset>, KafkaCode>>> {
        let client = self.clone();
        self.per_coordinator(groups, move |addr, groups| {
            let client = client.clone();
            async move { client.offset_fetch_at(&addr, &groups).await }
        })
        .await
    }

    async fn offset_fetch_at(
        &self,
        broker: &BrokerAddr,
        groups: &[String],
    ) -> Result<GroupAnswers<Vec<CommittedOffset>>> {
        let version = self.version_for::<OffsetFetchRequest>(broker).await?;
        if version >= 8 {
            let request_groups: Vec<OffsetFetchRequestGroup> = groups
                .iter()
                .map(|g| {
                    OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(StrBytes::from_string(g.clone())))
                        .with_topics(None)
                })
                .collect();
            let (response, _) = self
                .call(broker, |_| {
                    // The request-level topics must stay an empty list in v8+.
                    OffsetFetchRequest::default().with_groups(request_groups)
                })
                .await?;
            let mut answers = HashMap::new();
            for g in response.groups {
                let answer = if g.error_code != 0 {
                    Err(KafkaCode(g.error_code))
                } else {
                    Ok(g.topics
                        .iter()
                        .flat_map(|t| {
                            t.partitions.iter().map(|p| {
                                offset(
                                    t.name.0.as_str(),
                                    p.partition_index,
                                    p.committed_offset,
                                    p.error_code,
                                )
                            })
                        })
                        .collect())
                };
                answers.insert(g.group_id.0.as_str().to_owned(), answer);
            }
            return Ok(answers);
        }
        let in_flight = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
        let calls = groups.iter().map(|g| {
            let in_flight = in_flight.clone();
            async move {
                let _permit = in_flight.acquire().await;
                let answer = self
                    .call(broker, |_| {
                        OffsetFetchRequest::default()
                            .with_group_id(GroupId(StrBytes::from_string(g.clone())))
                            .with_topics(None)
                    })
                    .await;
                (g, answer)
            }
        });
        let mut answers = HashMap::new();
        for (g, answer) in join_all(calls).await {
            let (response, _) = answer?;
            let answer = if response.error_code != 0 {
                Err(KafkaCode(response.error_code))
            } else {
                Ok(response
                    .topics
                    .iter()
                    .flat_map(|t| {
                        t.partitions.iter().map(|p| {
                            offset(
                                t.name.0.as_str(),
                                p.partition_index,
                                p.committed_offset,
                                p.error_code,
                            )
                        })
                    })
                    .collect())
            };
            answers.insert(g.clone(), answer);
        }
        Ok(answers)
    }
}
