//! Fetch of one partition, read two ways: for one record (the offset and timestamp of
//! the record at, or first after, an offset: [`Client::fetch_one`]) and for whole
//! records (offset, timestamp, key and value: [`Client::fetch_records`]), each with the
//! partition's watermarks.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::future::join_all;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};

use super::list_offsets::topic_name;
use super::record_batch::{AbortedTransaction, first_record, read_records};
use super::request::{Api, ResponseErrors, first};
use super::{BrokerAddr, Client, KafkaCode, TopicPartition, is_transport};
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

/// A whole record of a Fetch answer. Key and value share the answer's buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its offset.
    pub offset: i64,
    /// Its timestamp in ms since the epoch (the batch's max timestamp for
    /// LogAppendTime batches; -1 when it has none).
    pub timestamp_ms: i64,
    /// Its key; `None` when null.
    pub key: Option<Bytes>,
    /// Its value; `None` when null (a tombstone).
    pub value: Option<Bytes>,
}

/// What one Fetch of one partition for whole records found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedRecords {
    /// The partition's error, if any (`OFFSET_OUT_OF_RANGE` when the offset is below
    /// the log start or above the end, `TOPIC_AUTHORIZATION_FAILED`, …).
    pub error: Option<KafkaCode>,
    /// The high watermark; -1 when the answer has none.
    pub high_watermark: i64,
    /// The last stable offset; -1 when the answer has none.
    pub last_stable_offset: i64,
    /// The log start offset; -1 when the answer has none.
    pub log_start_offset: i64,
    /// Where to fetch next: the offset after the last whole batch the answer held
    /// (control, aborted and compressed batches included), or the offset asked for
    /// when it held none (nothing there yet, or a first batch larger than `max_bytes`
    /// that the broker cut: ask again with more).
    pub next_offset: i64,
    /// The records at or after the offset asked for, in log order. Control records
    /// are never records; with [`Isolation::ReadCommitted`] neither are those of
    /// aborted transactions.
    pub records: Vec<Record>,
    /// Compressed batches passed over: this crate has no codecs yet, so their records
    /// are not read (their offsets are still passed: `next_offset` is after them).
    /// Kafka writes `__consumer_offsets` uncompressed unless
    /// `offsets.topic.compression.codec` says otherwise.
    pub skipped_compressed_batches: u32,
}

/// One partition's part of a [`Client::fetch_log`] answer: its record batches as the
/// broker sent them, for a reader with its own codecs.
#[derive(Clone, Debug)]
pub struct LogChunk {
    /// The partition.
    pub tp: TopicPartition,
    /// The offset it was fetched from.
    pub offset: i64,
    /// The partition's error, if any (`OFFSET_OUT_OF_RANGE` after retention moved the
    /// log start past `offset`, a stale leader, …).
    pub error: Option<KafkaCode>,
    /// The high watermark; -1 when the answer has none.
    pub high_watermark: i64,
    /// The last stable offset; -1 when the answer has none.
    pub last_stable_offset: i64,
    /// The log start offset; -1 when the answer has none.
    pub log_start_offset: i64,
    /// The record batches (the last one may be cut off by the size limits).
    pub records: Bytes,
    /// With read_committed, the answer's aborted transactions.
    pub aborted: Vec<AbortedTransaction>,
}

/// What a [`Client::fetch_log`] round brought.
#[derive(Debug, Default)]
pub struct LogFetch {
    /// One chunk per partition whose leader answered.
    pub chunks: Vec<LogChunk>,
    /// Partitions without a known leader.
    pub leaderless: Vec<TopicPartition>,
    /// Leaders that could not be reached, with their partitions.
    pub failed: Vec<(BrokerAddr, Vec<TopicPartition>, Error)>,
}

/// One partition of a Fetch answer, not yet read.
struct RawFetch {
    broker: String,
    error: Option<KafkaCode>,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
    records: Option<Bytes>,
    /// With read_committed, the answer's aborted transactions.
    aborted: Option<Vec<AbortedTransaction>>,
}

impl RawFetch {
    fn failed(code: KafkaCode) -> RawFetch {
        RawFetch {
            broker: String::new(),
            error: Some(code),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            records: None,
            aborted: None,
        }
    }

    fn corrupt(&self, tp: &TopicPartition, reason: String) -> Error {
        Error::CorruptRecords {
            broker: self.broker.clone(),
            reason: format!("Fetch of {tp}: {reason}"),
        }
    }
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
        let raw = self.fetch_raw(tp, offset, isolation, max_bytes).await?;
        let mut found = FetchOne {
            error: raw.error,
            high_watermark: raw.high_watermark,
            last_stable_offset: raw.last_stable_offset,
            log_start_offset: raw.log_start_offset,
            record: None,
            next_offset: None,
        };
        if found.error.is_some() {
            return Ok(found);
        }
        if let Some(records) = &raw.records {
            found.next_offset = super::record_batch::next_offset(records);
            found.record = first_record(records, offset, raw.aborted.as_deref())
                .map_err(|reason| raw.corrupt(tp, reason))?;
        }
        Ok(found)
    }

    /// A Fetch of `tp` from `offset` for whole records, as [`fetch_one`](Client::fetch_one)
    /// sends it and retries it. `max_bytes` bounds the answer (brokers send at least the
    /// first batch whole, and the client refuses an answer above its
    /// `max_response_bytes`); the records are slices of the answer, so what they hold
    /// is bounded by the bytes received. Uncompressed batches are read (CRC checked);
    /// compressed ones are passed over and counted in
    /// [`FetchedRecords::skipped_compressed_batches`]. A batch that fails its CRC or
    /// whose fields run past it fails the call ([`Error::CorruptRecords`]).
    pub async fn fetch_records(
        &self,
        tp: &TopicPartition,
        offset: i64,
        isolation: Isolation,
        max_bytes: i32,
    ) -> Result<FetchedRecords> {
        let raw = self.fetch_raw(tp, offset, isolation, max_bytes).await?;
        let mut fetched = FetchedRecords {
            error: raw.error,
            high_watermark: raw.high_watermark,
            last_stable_offset: raw.last_stable_offset,
            log_start_offset: raw.log_start_offset,
            next_offset: offset,
            records: Vec::new(),
            skipped_compressed_batches: 0,
        };
        if fetched.error.is_some() {
            return Ok(fetched);
        }
        if let Some(records) = &raw.records {
            let read = read_records(records, offset, raw.aborted.as_deref())
                .map_err(|reason| raw.corrupt(tp, reason))?;
            fetched.next_offset = read.next_offset.map_or(offset, |n| n.max(offset));
            fetched.records = read.records;
            fetched.skipped_compressed_batches = read.skipped_compressed_batches;
        }
        Ok(fetched)
    }

    /// Fetches each partition of `from` at its offset: one Fetch per leader, the leaders
    /// concurrently. `partition_max_bytes` bounds each partition's records and
    /// `max_bytes` the whole answer (brokers still send a partition's first batch
    /// whole). Nothing is retried: a stale leader's partitions come back with its error,
    /// and the metadata is refreshed for the next call.
    pub async fn fetch_log(
        &self,
        from: &[(TopicPartition, i64)],
        isolation: Isolation,
        max_bytes: i32,
        partition_max_bytes: i32,
    ) -> LogFetch {
        let mut out = LogFetch::default();
        let mut by_leader: BTreeMap<BrokerAddr, Vec<(TopicPartition, i64)>> = BTreeMap::new();
        for (tp, offset) in from {
            match self.leader_of(tp) {
                Some((_, leader)) => by_leader
                    .entry(leader)
                    .or_default()
                    .push((tp.clone(), *offset)),
                None => out.leaderless.push(tp.clone()),
            }
        }
        let calls = by_leader.into_iter().map(|(leader, parts)| async move {
            let answer = self
                .fetch_log_at(&leader, &parts, isolation, max_bytes, partition_max_bytes)
                .await;
            (leader, parts, answer)
        });
        let mut stale = !out.leaderless.is_empty();
        for (leader, parts, answer) in join_all(calls).await {
            match answer {
                Ok(chunks) => {
                    stale |= chunks
                        .iter()
                        .any(|c| c.error.is_some_and(KafkaCode::is_stale_leader));
                    out.chunks.extend(chunks);
                }
                Err(e) => {
                    stale = true;
                    out.failed
                        .push((leader, parts.into_iter().map(|(tp, _)| tp).collect(), e));
                }
            }
        }
        if stale {
            self.refresh().await;
        }
        out
    }

    async fn fetch_log_at(
        &self,
        broker: &BrokerAddr,
        parts: &[(TopicPartition, i64)],
        isolation: Isolation,
        max_bytes: i32,
        partition_max_bytes: i32,
    ) -> Result<Vec<LogChunk>> {
        let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
        for (tp, offset) in parts {
            topics.entry(tp.topic.as_str()).or_default().push(
                FetchPartition::default()
                    .with_partition(tp.partition)
                    .with_fetch_offset(*offset)
                    .with_partition_max_bytes(partition_max_bytes.max(1)),
            );
        }
        let (response, _) = self
            .call(broker, |_| {
                FetchRequest::default()
                    .with_max_wait_ms(FETCH_MAX_WAIT_MS)
                    .with_min_bytes(1)
                    .with_max_bytes(max_bytes.max(1))
                    .with_isolation_level(match isolation {
                        Isolation::ReadUncommitted => 0,
                        Isolation::ReadCommitted => 1,
                    })
                    .with_topics(
                        topics
                            .into_iter()
                            .map(|(topic, partitions)| {
                                FetchTopic::default()
                                    .with_topic(topic_name(topic))
                                    .with_partitions(partitions)
                            })
                            .collect(),
                    )
            })
            .await?;
        let offsets: BTreeMap<(&str, i32), i64> = parts
            .iter()
            .map(|(tp, o)| ((tp.topic.as_str(), tp.partition), *o))
            .collect();
        let mut chunks = Vec::with_capacity(parts.len());
        if response.error_code != 0 {
            // An error for the whole answer is every partition's.
            let code = KafkaCode(response.error_code);
            return Ok(parts
                .iter()
                .map(|(tp, offset)| LogChunk {
                    tp: tp.clone(),
                    offset: *offset,
                    error: Some(code),
                    high_watermark: -1,
                    last_stable_offset: -1,
                    log_start_offset: -1,
                    records: Bytes::new(),
                    aborted: Vec::new(),
                })
                .collect());
        }
        for t in response.responses {
            for p in t.partitions {
                let Some(offset) = offsets.get(&(t.topic.0.as_str(), p.partition_index)) else {
                    continue;
                };
                let error = (p.error_code != 0).then_some(KafkaCode(p.error_code));
                chunks.push(LogChunk {
                    tp: TopicPartition::new(t.topic.0.as_str(), p.partition_index),
                    offset: *offset,
                    error,
                    high_watermark: p.high_watermark,
                    last_stable_offset: p.last_stable_offset,
                    log_start_offset: p.log_start_offset,
                    records: if error.is_some() {
                        Bytes::new()
                    } else {
                        p.records.unwrap_or_default()
                    },
                    aborted: p
                        .aborted_transactions
                        .iter()
                        .flatten()
                        .map(|a| AbortedTransaction {
                            producer_id: a.producer_id.0,
                            first_offset: a.first_offset,
                        })
                        .collect(),
                });
            }
        }
        Ok(chunks)
    }

    /// One Fetch of `tp` to its leader, retried where a new leader may answer.
    async fn fetch_raw(
        &self,
        tp: &TopicPartition,
        offset: i64,
        isolation: Isolation,
        max_bytes: i32,
    ) -> Result<RawFetch> {
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
                last = Some(Ok(RawFetch::failed(code)));
                continue;
            };
            match self
                .fetch_raw_at(&leader, tp, offset, isolation, max_bytes)
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
        last.unwrap_or(Ok(RawFetch::failed(KafkaCode::LEADER_NOT_AVAILABLE)))
    }

    /// One Fetch of `tp` from `offset` to `broker`: [`Client::fetch_log_at`] for one
    /// partition, which the answer must hold.
    async fn fetch_raw_at(
        &self,
        broker: &super::BrokerAddr,
        tp: &TopicPartition,
        offset: i64,
        isolation: Isolation,
        max_bytes: i32,
    ) -> Result<RawFetch> {
        let parts = [(tp.clone(), offset)];
        let chunk = self
            .fetch_log_at(broker, &parts, isolation, max_bytes, max_bytes)
            .await?
            .into_iter()
            .find(|c| c.tp == *tp)
            .ok_or_else(|| Error::Malformed {
                broker: broker.to_string(),
                reason: format!("Fetch answered without partition {tp}"),
            })?;
        Ok(RawFetch {
            broker: broker.to_string(),
            error: chunk.error,
            high_watermark: chunk.high_watermark,
            last_stable_offset: chunk.last_stable_offset,
            log_start_offset: chunk.log_start_offset,
            records: (chunk.error.is_none() && !chunk.records.is_empty()).then_some(chunk.records),
            aborted: match isolation {
                Isolation::ReadUncommitted => None,
                Isolation::ReadCommitted => Some(chunk.aborted),
            },
        })
    }
}
