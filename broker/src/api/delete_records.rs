//! DeleteRecords: a partition's log start offset moves up to the offset
//! asked (-1: the end). Readers lose the records below it at once; the
//! audit books count what a group had not read of them as `expired`, as
//! retention does.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use tracing::{info, warn};

use crate::context::Broker;

pub(super) fn handle(broker: &Broker, request: &DeleteRecordsRequest) -> DeleteRecordsResponse {
    // What groups committed before this request counts as read.
    broker.audit_take_commits();
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let topic = broker.topics.get(&t.name.0);
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let result =
                        DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
                    let Some(part) = topic.as_ref().and_then(|topic| topic.partition(p.partition_index)) else {
                        return result
                            .with_low_watermark(-1)
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    };
                    let moved = part.log.lock().delete_records(p.offset);
                    match moved {
                        Ok(start) => {
                            part.producers.lock().forget_before(start);
                            info!(topic = %t.name.0, partition = p.partition_index, start, "records deleted by DeleteRecords");
                            result.with_low_watermark(start)
                        }
                        Err(crate::Error::OffsetOutOfRange { .. }) => result
                            .with_low_watermark(-1)
                            .with_error_code(ResponseError::OffsetOutOfRange.code()),
                        Err(e) => {
                            warn!(topic = %t.name.0, partition = p.partition_index, "DeleteRecords failed: {e}");
                            result
                                .with_low_watermark(-1)
                                .with_error_code(ResponseError::KafkaStorageError.code())
                        }
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
