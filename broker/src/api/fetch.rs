//! Fetch (v4+): whole batches from each partition's log, honouring
//! max_bytes, partition_max_bytes, min_bytes and max_wait_ms (long polling).
//! A `read_committed` fetch reads up to the last stable offset and is told
//! the aborted transactions among what it read.
//! Fetch sessions are not kept: the answer's session id is always 0, which
//! tells clients to send full fetches.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId};

use super::Caller;
use crate::Error;
use crate::batch::BatchHeader;
use crate::context::Broker;

/// The whole batches of `bytes` (read from a log) that start before `upper`.
fn below(bytes: Bytes, upper: i64) -> Bytes {
    let mut at = 0;
    while let Ok(h) = BatchHeader::parse(&bytes[at..]) {
        if h.base_offset >= upper || at + h.size() > bytes.len() {
            break;
        }
        at += h.size();
    }
    bytes.slice(..at)
}

/// The offset after the last batch of `bytes`, if it holds one.
fn last_batch_end(bytes: &Bytes) -> Option<i64> {
    let mut at = 0;
    let mut end = None;
    while let Ok(h) = BatchHeader::parse(&bytes[at..]) {
        if at + h.size() > bytes.len() {
            break;
        }
        end = Some(h.next_offset());
        at += h.size();
    }
    end
}

/// The partitions' answers, the bytes read, and whether a partition failed.
///
/// The whole response holds at most the smaller of the request's max_bytes
/// and the broker's fetch_max_bytes, except that the first batch of the first
/// partition with data is returned whole (Kafka's rule: a batch larger than
/// every limit can still be fetched); each partition holds at most its
/// partition_max_bytes, or its first batch whole where that fits the rest.
/// A partition listed more than once is answered once, as first asked, and a
/// topic listed more than once is one topic in the answer.
fn read_all(
    broker: &Broker,
    request: &FetchRequest,
    version: i16,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let committed_only = request.isolation_level == 1;
    let mut budget = usize::try_from(request.max_bytes.max(0))
        .unwrap_or(usize::MAX)
        .min(broker.cfg.fetch_max_bytes);
    let mut total = 0usize;
    let mut failed = false;
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    let mut topic_at: HashMap<&str, usize> = HashMap::new();
    let mut answered: HashSet<(&str, i32)> = HashSet::new();
    for t in &request.topics {
        let at = *topic_at.entry(&t.topic.0).or_insert_with(|| {
            topics.push(
                FetchableTopicResponse::default()
                    .with_topic(t.topic.clone())
                    .with_topic_id(t.topic_id),
            );
            topics.len() - 1
        });
        let topic = broker.topics.get(&t.topic.0);
        let partitions = &mut topics[at].partitions;
        for p in &t.partitions {
            if !answered.insert((&t.topic.0, p.partition)) {
                continue;
            }
            let answer = PartitionData::default()
                .with_partition_index(p.partition)
                .with_aborted_transactions(Some(Vec::new()));
            let Some(part) = topic.as_ref().and_then(|t| t.partition(p.partition)) else {
                failed = true;
                partitions.push(
                    answer
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_records(Some(Bytes::new())),
                );
                continue;
            };
            let log = part.log.lock();
            let (start, end) = (log.start_offset(), log.end_offset());
            let stable = part.producers.lock().stable_offset(end);
            // A read_committed reader gets nothing at or past the last
            // stable offset: an open transaction's records wait there.
            let upper = if committed_only { stable } else { end };
            let answer = answer
                .with_high_watermark(end)
                .with_last_stable_offset(stable);
            // log_start_offset exists from v5 on.
            let answer = if version >= 5 {
                answer.with_log_start_offset(start)
            } else {
                answer
            };
            // A partition's first batch comes back whole even past its
            // partition_max_bytes, so a large batch never blocks a consumer;
            // only the first partition with data may also pass the
            // response's limit (Kafka's rule).
            let first = total == 0;
            let limit = usize::try_from(p.partition_max_bytes.max(0))
                .unwrap_or(0)
                .min(budget)
                .max(1);
            let records = if (budget == 0 && !first)
                || p.fetch_offset == end
                || (p.fetch_offset >= upper && p.fetch_offset <= end)
            {
                Ok(Bytes::new())
            } else {
                log.read(p.fetch_offset, limit).map(|b| below(b, upper))
            };
            match records {
                Ok(bytes) => {
                    // A batch that does not fit what is left of the response
                    // waits for the next fetch.
                    let bytes = if !first && bytes.len() > budget {
                        Bytes::new()
                    } else {
                        bytes
                    };
                    total += bytes.len();
                    budget = budget.saturating_sub(bytes.len());
                    // Which of the records returned a read_committed reader
                    // must drop: those of aborted transactions.
                    let answer = match last_batch_end(&bytes) {
                        Some(to) if committed_only => {
                            let aborted = part
                                .producers
                                .lock()
                                .aborted_between(p.fetch_offset, to)
                                .into_iter()
                                .map(|a| {
                                    AbortedTransaction::default()
                                        .with_producer_id(ProducerId(a.producer_id))
                                        .with_first_offset(a.first_offset)
                                })
                                .collect();
                            answer.with_aborted_transactions(Some(aborted))
                        }
                        _ => answer,
                    };
                    partitions.push(answer.with_records(Some(bytes)));
                }
                Err(Error::OffsetOutOfRange { .. }) => {
                    failed = true;
                    partitions.push(
                        answer
                            .with_error_code(ResponseError::OffsetOutOfRange.code())
                            .with_records(Some(Bytes::new())),
                    );
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(topic = %t.topic.0, partition = p.partition, "fetch failed: {e}");
                    partitions.push(
                        answer
                            .with_error_code(ResponseError::KafkaStorageError.code())
                            .with_records(Some(Bytes::new())),
                    );
                }
            }
        }
    }
    (topics, total, failed)
}

pub(super) async fn handle(
    broker: &Broker,
    request: FetchRequest,
    version: i16,
    caller: &Caller,
) -> FetchResponse {
    // Before anything is read: a group's start is on disk before it gets a record.
    let client_id = caller.client_id.as_deref().unwrap_or_default();
    broker
        .groups
        .tie_fetch(client_id, caller.peer.ip(), &request)
        .await;
    let min_bytes = usize::try_from(request.min_bytes.max(0)).unwrap_or(0);
    let wait = Duration::from_millis(
        u64::try_from(request.max_wait_ms.max(0))
            .unwrap_or(0)
            .min(30_000),
    );
    let deadline = tokio::time::Instant::now() + wait;
    let mut appended = broker.topics.subscribe();
    let topics = loop {
        appended.borrow_and_update();
        let (topics, total, failed) = read_all(broker, &request, version);
        // Like Kafka: answer at once when enough is there, when a partition
        // failed, or when the client asked for no minimum.
        if total >= min_bytes || failed || tokio::time::Instant::now() >= deadline {
            break topics;
        }
        // Wait for an append anywhere, then read again.
        if tokio::time::timeout_at(deadline, appended.changed())
            .await
            .is_err()
        {
            break read_all(broker, &request, version).0;
        }
    };
    for t in &topics {
        for p in &t.partitions {
            if let Some(records) = &p.records {
                broker.on_fetched(&t.topic.0, records);
            }
        }
    }
    FetchResponse::default()
        .with_session_id(0)
        .with_responses(topics)
}
