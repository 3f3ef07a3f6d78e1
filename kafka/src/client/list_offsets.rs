//! ListOffsets: a partition's earliest, latest or last stable offset, asked of its
//! leader, one request per leader for all its partitions.

use std::collections::{BTreeMap, HashMap};

use futures_util::future::join_all;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ListOffsetsRequest, ListOffsetsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::request::{Api, ResponseErrors, first};
use super::transport::BrokerAddr;
use super::{Client, KafkaCode, TopicPartition, is_transport};
use crate::{Error, Result};

impl Api for ListOffsetsRequest {
    const KEY: ApiKey = ApiKey::ListOffsets;
    const NAME: &'static str = "ListOffsets";
    const MIN: i16 = 1;
    const MAX: i16 = 10;
    type Response = ListOffsetsResponse;
}

impl ResponseErrors for ListOffsetsResponse {
    fn first_error(&self) -> Option<i16> {
        first(
            self.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        )
    }
}

/// Which offset ListOffsets asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark: the offset the next record will get, as read_uncommitted
    /// readers see it.
    Latest,
    /// The last stable offset: the latest with isolation level read_committed (below
    /// the first open transaction). A broker that speaks only ListOffsets v1 has no
    /// isolation level, and answers with the high watermark.
    LastStable,
}

impl OffsetSpec {
    fn timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest | OffsetSpec::LastStable => -1,
        }
    }
}

pub(super) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

impl Client {
    /// The offset `spec` names of each partition, asked of the leaders (one request per
    /// leader). A partition whose leader moved or is unknown is retried after a metadata
    /// refresh; what still fails after every attempt is that partition's error (a
    /// broker that could not be reached gives `NETWORK_EXCEPTION`). The whole call fails
    /// only when no broker answered at all, or on an error no retry can cure.
    pub async fn list_offsets(
        &self,
        partitions: &[TopicPartition],
        spec: OffsetSpec,
    ) -> Result<HashMap<TopicPartition, Result<i64, KafkaCode>>> {
        let mut results = HashMap::new();
        let mut remaining: Vec<TopicPartition> = partitions.to_vec();
        remaining.sort();
        remaining.dedup();
        let mut last_error: HashMap<TopicPartition, KafkaCode> = HashMap::new();
        let mut answered = false;
        let mut transport_error = None;
        for attempt in 0..self.attempts() {
            if remaining.is_empty() {
                break;
            }
            self.backoff(attempt).await;
            if attempt > 0 || remaining.iter().any(|tp| self.leader_of(tp).is_none()) {
                self.refresh().await;
            }
            let mut by_leader: BTreeMap<BrokerAddr, Vec<TopicPartition>> = BTreeMap::new();
            let mut next = Vec::new();
            for tp in remaining {
                match self.leader_of(&tp) {
                    Some((_, addr)) => by_leader.entry(addr).or_default().push(tp),
                    None => {
                        let code = if self.knows(&tp) {
                            KafkaCode::LEADER_NOT_AVAILABLE
                        } else {
                            KafkaCode::UNKNOWN_TOPIC_OR_PARTITION
                        };
                        last_error.insert(tp.clone(), code);
                        next.push(tp);
                    }
                }
            }
            let calls = by_leader.into_iter().map(|(addr, tps)| async move {
                let answer = self.list_offsets_at(&addr, &tps, spec).await;
                (tps, answer)
            });
            for (tps, answer) in join_all(calls).await {
                let answers = match answer {
                    Ok(answers) => {
                        answered = true;
                        answers
                    }
                    Err(e) if is_transport(&e) => {
                        for tp in tps {
                            last_error.insert(tp.clone(), KafkaCode::NETWORK_EXCEPTION);
                            next.push(tp);
                        }
                        transport_error = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                for tp in tps {
                    match answers.get(&tp) {
                        Some(&(0, offset)) => {
                            results.insert(tp, Ok(offset));
                        }
                        Some(&(code, _)) if KafkaCode(code).is_stale_leader() => {
                            last_error.insert(tp.clone(), KafkaCode(code));
                            next.push(tp);
                        }
                        Some(&(code, _)) => {
                            results.insert(tp, Err(KafkaCode(code)));
                        }
                        None => {
                            last_error.insert(tp.clone(), KafkaCode::UNKNOWN_TOPIC_OR_PARTITION);
                            next.push(tp);
                        }
                    }
                }
            }
            remaining = next;
        }
        super::settle(
            results,
            remaining,
            &last_error,
            answered,
            transport_error,
            KafkaCode::UNKNOWN_TOPIC_OR_PARTITION,
        )
    }

    /// One ListOffsets to `broker`; each partition's (error code, offset).
    async fn list_offsets_at(
        &self,
        broker: &BrokerAddr,
        partitions: &[TopicPartition],
        spec: OffsetSpec,
    ) -> Result<HashMap<TopicPartition, (i16, i64)>> {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in partitions {
            topics.entry(&tp.topic).or_default().push(tp.partition);
        }
        let timeout_ms = i32::try_from(self.inner.request_timeout.as_millis()).unwrap_or(i32::MAX);
        let (response, _) = self
            .call(broker, |version| {
                let mut request = ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(
                        topics
                            .iter()
                            .map(|(topic, ps)| {
                                ListOffsetsTopic::default()
                                    .with_name(topic_name(topic))
                                    .with_partitions(
                                        ps.iter()
                                            .map(|p| {
                                                ListOffsetsPartition::default()
                                                    .with_partition_index(*p)
                                                    .with_current_leader_epoch(-1)
                                                    .with_timestamp(spec.timestamp())
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    );
                if version >= 2 && spec == OffsetSpec::LastStable {
                    request = request.with_isolation_level(1);
                }
                if version >= 10 {
                    request = request.with_timeout_ms(timeout_ms);
                }
                request
            })
            .await?;
        let mut answers = HashMap::new();
        for topic in response.topics {
            let name = topic.name.0.as_str().to_owned();
            for p in topic.partitions {
                answers.insert(
                    TopicPartition::new(name.clone(), p.partition_index),
                    (p.error_code, p.offset),
                );
            }
        }
        if answers.is_empty() && !partitions.is_empty() {
            return Err(Error::Malformed {
                broker: broker.to_string(),
                reason: "ListOffsets answered for no partition".to_owned(),
            });
        }
        Ok(answers)
    }
}
