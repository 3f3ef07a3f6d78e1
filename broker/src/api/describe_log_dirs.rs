//! DescribeLogDirs: the one log folder of this broker, with the size of
//! every partition's log in it (all topics, or those asked for).

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse};

use super::str_bytes;
use crate::context::Broker;

pub(super) fn handle(broker: &Broker, request: &DescribeLogDirsRequest) -> DescribeLogDirsResponse {
    let size = |topic: &crate::topics::Topic, p: i32| {
        topic.partition(p).map(|part| {
            DescribeLogDirsPartition::default()
                .with_partition_index(p)
                .with_partition_size(
                    i64::try_from(part.log.lock().size_bytes()).unwrap_or(i64::MAX),
                )
                .with_offset_lag(0)
        })
    };
    let topics: Vec<DescribeLogDirsTopic> = match &request.topics {
        // Null: every topic.
        None => broker
            .topics
            .all()
            .iter()
            .map(|t| {
                let partitions = (0..i32::try_from(t.partitions.len()).unwrap_or(i32::MAX))
                    .filter_map(|p| size(t, p))
                    .collect();
                DescribeLogDirsTopic::default()
                    .with_name(kafka_protocol::messages::TopicName(str_bytes(&t.name)))
                    .with_partitions(partitions)
            })
            .collect(),
        // Those asked for that exist (Kafka leaves out the others).
        Some(asked) => asked
            .iter()
            .filter_map(|a| {
                let t = broker.topics.get(&a.topic.0)?;
                let partitions: Vec<_> = a.partitions.iter().filter_map(|&p| size(&t, p)).collect();
                (!partitions.is_empty()).then(|| {
                    DescribeLogDirsTopic::default()
                        .with_name(a.topic.clone())
                        .with_partitions(partitions)
                })
            })
            .collect(),
    };
    let dir = broker.cfg.data_dir.join(crate::topics::TOPICS_DIR);
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    DescribeLogDirsResponse::default().with_results(vec![
        DescribeLogDirsResult::default()
            .with_log_dir(str_bytes(&dir.display().to_string()))
            .with_topics(topics)
            // Unknown here (Kafka's value for "not reported").
            .with_total_bytes(-1)
            .with_usable_bytes(-1),
    ])
}
