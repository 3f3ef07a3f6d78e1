//! CreatePartitions: a topic grows to more partitions. The partitions it
//! has keep their records, offsets and books; the new ones start empty, and
//! producers and groups find them in the next Metadata. A replica
//! assignment may name this broker only (one replica per partition).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::str_bytes;
use crate::context::Broker;
use crate::topics::Refusal;

pub(super) fn handle(
    broker: &Broker,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    // As Kafka does, a topic named twice is refused, and grown by neither.
    let (topics, twice) = super::each_once(request.topics, |t| &t.name.0);
    let results = topics
        .into_iter()
        .map(|t| {
            let name = t.name.0.to_string();
            let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            let outcome = if twice.contains(&name) {
                Err(Refusal::new(
                    ResponseError::InvalidRequest,
                    format!("topic \"{name}\" is named more than once in this request: name each topic once"),
                ))
            } else {
                check_assignments(broker, &name, &t).and_then(|()| {
                    broker
                        .topics
                        .add_partitions(&name, t.count, request.validate_only)
                })
            };
            match outcome {
                Ok(_) => result.with_error_message(None),
                Err(r) => result
                    .with_error_code(r.error.code())
                    .with_error_message(Some(str_bytes(&r.message))),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

/// An assignment must give each new partition one replica, this broker.
fn check_assignments(
    broker: &Broker,
    name: &str,
    t: &CreatePartitionsTopic,
) -> Result<(), Refusal> {
    let Some(assignments) = &t.assignments else {
        return Ok(());
    };
    let node = broker.cfg.node_id;
    let now = broker.topics.get(name).map_or(0, |topic| {
        i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX)
    });
    let new = usize::try_from(t.count.saturating_sub(now)).unwrap_or(0);
    if assignments.len() != new {
        return Err(Refusal::new(
            ResponseError::InvalidReplicaAssignment,
            format!(
                "the assignment lists {} partitions, but topic \"{name}\" grows by {new} (from {now} to {})",
                assignments.len(),
                t.count
            ),
        ));
    }
    for (i, a) in assignments.iter().enumerate() {
        let ids: Vec<i32> = a.broker_ids.iter().map(|b| b.0).collect();
        if ids != [node] {
            return Err(Refusal::new(
                ResponseError::InvalidReplicaAssignment,
                format!(
                    "new partition {} is assigned to brokers {ids:?}: this single broker (id {node}) holds every partition, so each assignment must be [{node}]",
                    i32::try_from(i).unwrap_or(i32::MAX).saturating_add(now)
                ),
            ));
        }
    }
    Ok(())
}
