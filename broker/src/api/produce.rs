//! Produce: validates each partition's v2 batches, checks idempotent
//! producers' sequences and that a transactional batch's transaction added
//! its partition, appends, and answers once the fsync policy is met
//! (never for acks=0).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use tracing::{debug, warn};

use super::str_bytes;
use bytes::Bytes;

use crate::Error;
use crate::batch::{self, CheckedBatches, RecordsError};
use crate::context::{Broker, now_ms};
use crate::producers::Sequence;
use crate::topics::{Partition, Refusal, Topic};

struct Outcome {
    base_offset: i64,
    log_append_time: i64,
    log_start_offset: i64,
}

fn refusal_of(e: &Error) -> Refusal {
    match e {
        Error::CorruptBatch { .. } => Refusal::new(ResponseError::CorruptMessage, e.to_string()),
        Error::UnsupportedMagic(_) | Error::InvalidBatch(_) => {
            Refusal::new(ResponseError::InvalidRecord, e.to_string())
        }
        _ => Refusal::new(ResponseError::KafkaStorageError, e.to_string()),
    }
}

/// Requests this small whose batches are all uncompressed are checked on the
/// async worker; anything else goes to the bounded checking pool.
const INLINE_CHECK_BYTES: usize = 256 * 1024;

/// Checks every batch down to its last record, decompressing within
/// `budget` (what is left of the request's max_decompressed_bytes), off the
/// async workers when that can take long, so that one client's batches never
/// stall the others'.
async fn check(
    broker: &Broker,
    records: &Bytes,
    budget: &mut u64,
) -> Result<CheckedBatches, Refusal> {
    let checked = if records.len() <= INLINE_CHECK_BYTES && !batch::any_compressed(records) {
        batch::check_produced(records, budget)
    } else {
        let permit = broker
            .checks
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Refusal::new(ResponseError::UnknownServerError, e.to_string()))?;
        let records = records.clone();
        let mut left = *budget;
        let (checked, left) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            (batch::check_produced(&records, &mut left), left)
        })
        .await
        .map_err(|e| Refusal::new(ResponseError::UnknownServerError, e.to_string()))?;
        *budget = left;
        checked
    };
    checked.map_err(|e| match e {
        RecordsError::Invalid(e) => refusal_of(&e.into()),
        too_large @ RecordsError::TooLarge { .. } => {
            Refusal::new(ResponseError::MessageTooLarge, too_large.to_string())
        }
    })
}

/// Kafka's log overhead before a batch's `batch_length`: offset and length.
const LOG_OVERHEAD: i64 = 12;

async fn append(
    broker: &Broker,
    topic: &Topic,
    partition: i32,
    part: &Partition,
    records: &Bytes,
    acks: i16,
    budget: &mut u64,
) -> Result<Outcome, Refusal> {
    let max_message_bytes = topic.log_config.max_message_bytes;
    let topic = topic.name.as_str();
    let CheckedBatches {
        headers,
        timestamps,
        ..
    } = check(broker, records, budget).await?;
    // The topic's max.message.bytes, as Kafka applies it: per batch as sent.
    if let Some(limit) = max_message_bytes
        && let Some(size) = headers
            .iter()
            .map(|h| i64::from(h.batch_length) + LOG_OVERHEAD)
            .find(|size| *size > limit)
    {
        return Err(Refusal::new(
            ResponseError::MessageTooLarge,
            format!(
                "a record batch of {size} bytes is over topic \"{topic}\"'s max.message.bytes ({limit})"
            ),
        ));
    }
    if headers.is_empty() {
        return Err(Refusal::new(
            ResponseError::InvalidRecord,
            "the produce request holds no record batch",
        ));
    }
    // Kafka's rule: only the broker writes control records (transaction markers).
    if headers.iter().any(|h| h.is_control()) {
        return Err(Refusal::new(
            ResponseError::InvalidRecord,
            "a control batch (attribute bit 0x20) was sent: only the broker writes control records",
        ));
    }
    // A transactional batch goes only to a partition its open transaction added.
    for h in headers.iter().filter(|h| h.is_transactional()) {
        broker
            .txns
            .check_produce(h.producer_id, h.producer_epoch, topic, partition)?;
    }
    let (outcome, sync) = {
        let mut log = part.log.lock();
        let mut producers = part.producers.lock();
        // A producer sends one batch per partition per request; a retry of
        // it is answered with the offset it got the first time.
        for h in &headers {
            if let Sequence::Duplicate(offset) = producers.check(h)? {
                debug!(
                    topic,
                    producer = h.producer_id,
                    seq = h.base_sequence,
                    "duplicate batch acknowledged again"
                );
                return Ok(Outcome {
                    base_offset: offset,
                    log_append_time: -1,
                    log_start_offset: log.start_offset(),
                });
            }
        }
        let appended = log
            .append_read(records, &headers, &timestamps, now_ms())
            .map_err(|e| refusal_of(&e))?;
        for h in &appended.headers {
            producers.record(h);
        }
        broker.on_appended(topic, &appended);
        (
            Outcome {
                base_offset: appended.base_offset,
                log_append_time: appended.log_append_time,
                log_start_offset: log.start_offset(),
            },
            log.sync_handle(),
        )
    };
    broker.topics.notify_appended();
    // Registering marks the segment dirty under every policy; only acks 1
    // and -1 wait for the fsync.
    let durable = broker.flusher.durable(sync);
    if acks != 0 {
        durable
            .await
            .map_err(|e| Refusal::new(ResponseError::KafkaStorageError, e.to_string()))?;
    }
    Ok(outcome)
}

pub(super) async fn handle(
    broker: &Broker,
    request: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    // What the whole request may decompress, over all its partitions.
    let mut budget = broker.cfg.max_decompressed_bytes;
    let mut responses = Vec::with_capacity(request.topic_data.len());
    for t in request.topic_data {
        let name = t.name.0.to_string();
        let topic = broker.topics.get(&name);
        let mut partitions = Vec::with_capacity(t.partition_data.len());
        for p in t.partition_data {
            let answer = PartitionProduceResponse::default().with_index(p.index);
            let part = topic
                .as_ref()
                .and_then(|t| Some(t).zip(t.partition(p.index)));
            let result = match (part, &p.records) {
                (None, _) => Err(Refusal::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic \"{name}\" partition {} does not exist", p.index),
                )),
                (Some(_), None) => Err(Refusal::new(
                    ResponseError::InvalidRecord,
                    "records are null",
                )),
                (Some((topic, part)), Some(records)) => {
                    if ![-1, 0, 1].contains(&acks) {
                        Err(Refusal::new(
                            ResponseError::InvalidRequiredAcks,
                            format!("acks \"{acks}\" is not valid: expected -1, 0 or 1"),
                        ))
                    } else {
                        append(broker, topic, p.index, part, records, acks, &mut budget).await
                    }
                }
            };
            partitions.push(match result {
                Ok(o) => answer
                    .with_base_offset(o.base_offset)
                    .with_log_append_time_ms(o.log_append_time)
                    .with_log_start_offset(if version >= 5 { o.log_start_offset } else { -1 }),
                Err(r) => {
                    warn!(topic = %name, partition = p.index, error = ?r.error, "produce refused: {}", r.message);
                    answer
                        .with_error_code(r.error.code())
                        .with_error_message((version >= 8).then(|| str_bytes(&r.message)))
                        .with_base_offset(-1)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(-1)
                }
            });
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(t.name)
                .with_partition_responses(partitions),
        );
    }
    (acks != 0).then(|| ProduceResponse::default().with_responses(responses))
}
