//! OffsetDelete: a group's committed offsets of some partitions go, unless
//! its members subscribe to their topic (see `Groups::delete_offsets`).

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse, TopicName};

use super::str_bytes;
use crate::context::Broker;

pub(super) async fn handle(broker: &Broker, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let asked: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    match broker
        .groups
        .delete_offsets(&request.group_id.0, asked)
        .await
    {
        Err(e) => OffsetDeleteResponse::default().with_error_code(e.code()),
        Ok(answers) => {
            let mut topics: Vec<OffsetDeleteResponseTopic> = Vec::new();
            for (topic, partition, error) in answers {
                let entry = OffsetDeleteResponsePartition::default()
                    .with_partition_index(partition)
                    .with_error_code(error.map_or(0, |e| e.code()));
                match topics.iter_mut().find(|t| *t.name.0 == *topic) {
                    Some(t) => t.partitions.push(entry),
                    None => topics.push(
                        OffsetDeleteResponseTopic::default()
                            .with_name(TopicName(str_bytes(&topic)))
                            .with_partitions(vec![entry]),
                    ),
                }
            }
            OffsetDeleteResponse::default().with_topics(topics)
        }
    }
}
