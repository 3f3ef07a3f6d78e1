//! Fetch, for one record: the offset and timestamp of the record at (or first after) an
//! offset, with the partition's watermarks.

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};

use super::list_offsets::topic_name;
use super::record_batch::{AbortedTransaction, first_record};
use super::request::{Api, ResponseErrors, first};
use super::{Client, KafkaCode, TopicPartition, is_transport};
use crate::{Error, Result};

impl Api for FetchRequest {
    const KEY: ApiKey = ApiKey::Fetch;
    const NAME: &'static str = "Fetch";
    // v4 brought isolation levels and the last stable offset.
    const MIN: i16 = 4;
    // v13 names topics by id only.
    const MAX: i16 = 12;
    type Response = FetchResponse;
}

impl ResponseErrors for FetchResponse {
    fn first_error(&self) -> Option<i16> {
        first(
            std::iter::once(self.error_code).chain(
                self.responses
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            ),
        )
    }
}

/// Which records a fetch may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// Everything up to the high watermark, aborted transactions included.
    ReadUncommitted,
    /// Up to the last stable offset, without aborted transactions.
    ReadCommitted,
}

/// How long a small Fetch lets the broker wait for records where there are none.
const FETCH_MAX_WAIT_MS: i32 = 100;

/// What one small Fetch of one partition found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchOne {
    /// The partition's error, if any (`OFFSET_OUT_OF_RANGE` when the offset is below
    /// the log start or above the end, …).
    pub error: Option<KafkaCode>,
    /// The high watermark; -1 when the answer has none.
    pub high_watermark: i64,
    /// The last stable offset; -1 when the answer has none.
    pub last_stable_offset: i64,
    /// The log start offset; -1 when the answer has none.
    pub log_start_offset: i64,
    /// The record found, if any.
    pub record: Option<FetchedRecord>,
    /// The offset after the last whole batch the answer held (see
    /// `record_batch::next_offset`): the partition's end is at least this.
    pub next_offset: Option<i64>,
}

/// A record's position and time.
///
/// This is the first record at or after the offset asked for: records below it in the
/// first batch are skipped, and so are control batches, and for read_committed the
/// batches of aborted transactions (from the answer's aborted list, as Kafka's consumer
/// does). In a *compressed* batch the records are not decompressed: the batch header
/// gives the offset (the batch's base offset, or the offset asked for when that lies
/// inside the batch) and the timestamp (the batch's first timestamp, or its max
/// timestamp for LogAppendTime topics). For an offset inside a compressed batch the
/// timestamp is therefore that of the batch's first record, at most the batch's span
/// earlier than the record's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchedRecord {
    /// Its offset.
    pub offset: i64,
    /// Its timestamp in ms since the epoch (-1 when it has none).
    pub timestamp_ms: i64,
}

impl Client {
    /// One small Fetch of `tp` from `offset`, to the partition's leader (`min_bytes` 1
    /// and `max_wait_ms` 100: a broker answers at once where there are records, and
    /// within 100 ms where there are none; tansu answers `min_bytes` 0 with no
    /// partition at all). `max_bytes` bounds the answer, but brokers
    /// send at least the first batch whole. A moved leader or an unknown partition
    /// refreshes the metadata and retries; a partition error that remains is in
    /// [`FetchOne::error`]. Fails when the leader cannot be reached after every attempt.
    pub async fn fetch_one(
        &self,
        tp: &TopicPartition,
        offset: i64,
        isolation: Isolation,
        max_bytes: i32,
    ) -> Result<FetchOne> {
        let mut last = None;
        for attempt in 0..self.attempts() {
            self.backoff(attempt).await;
            if attempt > 0 || self.leader_of(tp).is_none() {
                self.refresh().await;
            }
            let Some((_, leader)) = self.leader_of(tp) else {
                let code = if self.knows(tp) {
                    KafkaCode::LEADER_NOT_AVAILABLE
                } else {
                    KafkaCode::UNKNOWN_TOPIC_OR_PARTITION
                };
                last = Some(Ok(FetchOne::failed(code)));
                continue;
            };
            match self
                .fetch_one_at(&leader, tp, offset, isolation, max_bytes)
                .await
            {
                Ok(found) => match found.error {
                    Some(code) if code.is_stale_leader() => last = Some(Ok(found)),
                    _ => return Ok(found),
                },
                Err(e) if is_transport(&e) => last = Some(Err(e)),
                Err(e) => return Err(e),
            }
        }
        last.unwrap_or(Ok(FetchOne::failed(KafkaCode::LEADER_NOT_AVAILABLE)))
    }

    async fn fetch_one_at(
        &self,
        broker: &super::BrokerAddr,
        tp: &TopicPartition,
        offset: i64,
        isolation: Isolation,
        max_bytes: i32,
    ) -> Result<FetchOne> {
        let max_bytes = max_bytes.max(1);
        let (response, _) = self
            .call(broker, |_| {
                FetchRequest::default()
                    .with_max_wait_ms(FETCH_MAX_WAIT_MS)
                    .with_min_bytes(1)
                    .with_max_bytes(max_bytes)
                    .with_isolation_level(match isolation {
                        Isolation::ReadUncommitted => 0,
                        Isolation::ReadCommitted => 1,
                    })
                    .with_topics(vec![
                        FetchTopic::default()
                            .with_topic(topic_name(&tp.topic))
                            .with_partitions(vec![
                                FetchPartition::default()
                                    .with_partition(tp.partition)
                                    .with_fetch_offset(offset)
                                    .with_partition_max_bytes(max_bytes),
                            ]),
                    ])
            })
            .await?;
        if response.error_code != 0 {
            return Ok(FetchOne::failed(KafkaCode(response.error_code)));
        }
        let partition = response
            .responses
            .iter()
            .filter(|t| t.topic.0.as_str() == tp.topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == tp.partition)
            .ok_or_else(|| Error::Malformed {
                broker: broker.to_string(),
                reason: format!("Fetch answered without partition {tp}"),
            })?;
        let mut found = FetchOne {
            error: (partition.error_code != 0).then_some(KafkaCode(partition.error_code)),
            high_watermark: partition.high_watermark,
            last_stable_offset: partition.last_stable_offset,
            log_start_offset: partition.log_start_offset,
            record: None,
            next_offset: None,
        };
        if found.error.is_some() {
            return Ok(found);
        }
        let aborted: Option<Vec<AbortedTransaction>> = match isolation {
            Isolation::ReadUncommitted => None,
            Isolation::ReadCommitted => Some(
                partition
                    .aborted_transactions
                    .iter()
                    .flatten()
                    .map(|a| AbortedTransaction {
                        producer_id: a.producer_id.0,
                        first_offset: a.first_offset,
                    })
                    .collect(),
            ),
        };
        if let Some(records) = &partition.records {
            found.next_offset = super::record_batch::next_offset(records);
            found.record = first_record(records, offset, aborted.as_deref()).map_err(|reason| {
                Error::CorruptRecords {
                    broker: broker.to_string(),
                    reason: format!("Fetch of {tp}: {reason}"),
                }
            })?;
        }
        Ok(found)
    }
}

impl FetchOne {
    fn failed(code: KafkaCode) -> FetchOne {
        FetchOne {
            error: Some(code),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            record: None,
            next_offset: None,
        }
    }
}
