//! ListOffsets: earliest, latest (the last stable offset for
//! read_committed), max timestamp, and by timestamp through the time index.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::context::Broker;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub(super) fn handle(
    broker: &Broker,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let committed_only = request.isolation_level == 1;
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let topic = broker.topics.get(&t.name.0);
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let answer = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    let Some(part) = topic.as_ref().and_then(|t| t.partition(p.partition_index))
                    else {
                        return answer
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_timestamp(-1)
                            .with_offset(-1);
                    };
                    let log = part.log.lock();
                    let (timestamp, offset) = match p.timestamp {
                        // A read_committed reader's latest is the last stable offset.
                        LATEST if committed_only => {
                            (-1, part.producers.lock().stable_offset(log.end_offset()))
                        }
                        LATEST => (-1, log.end_offset()),
                        EARLIEST => (-1, log.start_offset()),
                        MAX_TIMESTAMP => log.max_timestamp().unwrap_or((-1, -1)),
                        ts if ts >= 0 => log
                            .offset_for_timestamp(ts)
                            .map_or((-1, -1), |(o, t)| (t, o)),
                        other => {
                            return answer
                                .with_error_code(ResponseError::InvalidRequest.code())
                                .with_timestamp(other)
                                .with_offset(-1);
                        }
                    };
                    let answer = answer.with_timestamp(timestamp).with_offset(offset);
                    if version >= 4 {
                        answer.with_leader_epoch(0)
                    } else {
                        answer
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
