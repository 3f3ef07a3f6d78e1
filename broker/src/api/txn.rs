//! The transaction APIs: AddPartitionsToTxn (v0–4; v4 batches several
//! transactions and has a verify-only form), AddOffsetsToTxn, TxnOffsetCommit,
//! EndTxn, and, for the tools, DescribeTransactions and ListTransactions.
//! The coordinator's rules are in [`crate::txn`].

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{self, TopicData};
use kafka_protocol::messages::list_transactions_response;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use std::time::Instant;
use tracing::debug;

use super::str_bytes;
use crate::context::{Broker, now_ms};
use crate::txn::{self, Staged, State};

/// The coordinator is up once the committed offsets are loaded: a
/// transaction's offsets go there.
fn ready(broker: &Broker) -> Result<(), ResponseError> {
    match broker.groups.unavailable() {
        Some(_) => Err(ResponseError::CoordinatorLoadInProgress),
        None => Ok(()),
    }
}

/// Adds one transaction's partitions: each partition's error, by topic. A
/// partition that does not exist fails the request, and the others are
/// then not attempted (Kafka's rule).
fn add_one(
    broker: &Broker,
    id: &str,
    producer_id: i64,
    epoch: i16,
    verify_only: bool,
    topics: &[AddPartitionsToTxnTopic],
) -> Vec<AddPartitionsToTxnTopicResult> {
    let mut wanted = Vec::new();
    let mut unknown = std::collections::HashSet::new();
    for t in topics {
        let topic = broker.topics.get(&t.name.0);
        for p in &t.partitions {
            if topic.as_ref().and_then(|t| t.partition(*p)).is_none() {
                unknown.insert((t.name.0.to_string(), *p));
            }
            wanted.push((t.name.0.to_string(), *p));
        }
    }
    let outcome = |key: &(String, i32)| -> Result<(), ResponseError> {
        if unknown.contains(key) {
            return Err(ResponseError::UnknownTopicOrPartition);
        }
        if !unknown.is_empty() {
            return Err(ResponseError::OperationNotAttempted);
        }
        Ok(())
    };
    let whole = ready(broker).and_then(|()| {
        if !unknown.is_empty() || verify_only {
            return Ok(());
        }
        broker.txns.add_partitions(id, producer_id, epoch, &wanted)
    });
    topics
        .iter()
        .map(|t| {
            let results = t
                .partitions
                .iter()
                .map(|p| {
                    let key = (t.name.0.to_string(), *p);
                    let result = whole.and_then(|()| outcome(&key)).and_then(|()| {
                        if verify_only {
                            broker.txns.verify_partitions(id, producer_id, epoch, &key)
                        } else {
                            Ok(())
                        }
                    });
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*p)
                        .with_partition_error_code(result.err().map_or(0, |e| e.code()))
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(results)
        })
        .collect()
}

pub(super) fn add_partitions(
    broker: &Broker,
    request: &AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    if version <= 3 {
        let results = add_one(
            broker,
            &request.v3_and_below_transactional_id.0,
            request.v3_and_below_producer_id.0,
            request.v3_and_below_producer_epoch,
            false,
            &request.v3_and_below_topics,
        );
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    let results = request
        .transactions
        .iter()
        .map(|t| {
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id.clone())
                .with_topic_results(add_one(
                    broker,
                    &t.transactional_id.0,
                    t.producer_id.0,
                    t.producer_epoch,
                    t.verify_only,
                    &t.topics,
                ))
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
}

pub(super) fn add_offsets(
    broker: &Broker,
    request: &AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let result = ready(broker).and_then(|()| {
        if request.group_id.0.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        broker.txns.add_group(
            &request.transactional_id.0,
            request.producer_id.0,
            request.producer_epoch,
            &request.group_id.0,
        )
    });
    AddOffsetsToTxnResponse::default().with_error_code(result.err().map_or(0, |e| e.code()))
}

pub(super) fn offset_commit(
    broker: &Broker,
    request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let group = request.group_id.0.to_string();
    // A consumer that names its generation (v3+) must be a current member,
    // so that a zombie's transaction cannot commit.
    let gate = ready(broker).and_then(|()| {
        if request.generation_id >= 0 || !request.member_id.is_empty() {
            broker.groups.coordinator().check_commit(
                &group,
                request.generation_id,
                &request.member_id,
                request.group_instance_id.as_deref(),
                Instant::now(),
            )
        } else {
            Ok(())
        }
    });
    let max_metadata = broker.groups.config().max_metadata_bytes;
    let mut staged = Vec::new();
    let mut answers = Vec::with_capacity(request.topics.len());
    for t in &request.topics {
        let topic = broker.topics.get(&t.name.0);
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let error = match (&gate, &topic) {
                (Err(e), _) => Some(*e),
                (Ok(()), Some(topic)) if topic.partition(p.partition_index).is_some() => {
                    if p.committed_metadata
                        .as_ref()
                        .is_some_and(|m| m.len() > max_metadata)
                    {
                        Some(ResponseError::OffsetMetadataTooLarge)
                    } else {
                        None
                    }
                }
                (Ok(()), _) => Some(ResponseError::UnknownTopicOrPartition),
            };
            if error.is_none() {
                staged.push(Staged {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                });
            }
            parts.push((p.partition_index, error));
        }
        answers.push((t.name.clone(), parts));
    }
    let stored = if staged.is_empty() {
        Ok(())
    } else {
        broker.txns.stage_offsets(
            &request.transactional_id.0,
            request.producer_id.0,
            request.producer_epoch,
            &group,
            staged,
        )
    };
    if let Err(e) = &stored {
        debug!(group, error = ?e, "transactional offset commit refused");
    }
    let topics = answers
        .into_iter()
        .map(|(name, parts)| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(index, error)| {
                            let error = error.or(stored.err());
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(index)
                                .with_error_code(error.map_or(0, |e| e.code()))
                        })
                        .collect(),
                )
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub(super) async fn end(broker: &Broker, request: &EndTxnRequest) -> EndTxnResponse {
    let answer = EndTxnResponse::default()
        .with_producer_id(request.producer_id)
        .with_producer_epoch(request.producer_epoch);
    let result = match ready(broker).and_then(|()| {
        broker.txns.end(
            &request.transactional_id.0,
            request.producer_id.0,
            request.producer_epoch,
            request.committed,
        )
    }) {
        Ok(None) => Ok(()),
        Ok(Some(ending)) => txn::complete(broker, &ending).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        debug!(transactional_id = %request.transactional_id.0, error = ?e, "EndTxn refused");
    }
    answer.with_error_code(result.err().map_or(0, |e| e.code()))
}

pub(super) fn describe(
    broker: &Broker,
    request: &DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let states = request
        .transactional_ids
        .iter()
        .map(|id| {
            let answer = describe_transactions_response::TransactionState::default()
                .with_transactional_id(id.clone());
            let Some(t) = broker.txns.describe(&id.0) else {
                return answer
                    .with_error_code(ResponseError::TransactionalIdNotFound.code())
                    .with_transaction_state(str_bytes(""))
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1)
                    .with_transaction_start_time_ms(-1);
            };
            let mut topics: Vec<TopicData> = Vec::new();
            for (topic, partition) in &t.partitions {
                match topics.last_mut() {
                    Some(last) if *last.topic.0 == **topic => last.partitions.push(*partition),
                    _ => topics.push(
                        TopicData::default()
                            .with_topic(str_bytes(topic).into())
                            .with_partitions(vec![*partition]),
                    ),
                }
            }
            answer
                .with_transaction_state(str_bytes(t.state.as_str()))
                .with_transaction_timeout_ms(t.timeout_ms)
                .with_transaction_start_time_ms(t.started_ms)
                .with_producer_id(ProducerId(t.producer_id))
                .with_producer_epoch(t.epoch)
                .with_topics(topics)
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

const STATES: [State; 6] = [
    State::Empty,
    State::Ongoing,
    State::PrepareCommit,
    State::PrepareAbort,
    State::CompleteCommit,
    State::CompleteAbort,
];

pub(super) fn list(broker: &Broker, request: &ListTransactionsRequest) -> ListTransactionsResponse {
    let unknown: Vec<_> = request
        .state_filters
        .iter()
        .filter(|f| !STATES.iter().any(|s| s.as_str() == &***f))
        .cloned()
        .collect();
    let now = now_ms();
    let states = broker
        .txns
        .all()
        .into_iter()
        .filter(|t| {
            request.state_filters.is_empty()
                || request
                    .state_filters
                    .iter()
                    .any(|f| &**f == t.state.as_str())
        })
        .filter(|t| {
            request.producer_id_filters.is_empty()
                || request
                    .producer_id_filters
                    .contains(&ProducerId(t.producer_id))
        })
        // v1: only transactions open longer than the filter (-1: all).
        .filter(|t| {
            request.duration_filter < 0
                || (t.started_ms >= 0 && now - t.started_ms > request.duration_filter)
        })
        .map(|t| {
            list_transactions_response::TransactionState::default()
                .with_transactional_id(str_bytes(&t.id).into())
                .with_producer_id(ProducerId(t.producer_id))
                .with_transaction_state(str_bytes(t.state.as_str()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(states)
}
