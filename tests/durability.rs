//! kill -9 loses nothing acknowledged: `tally broker --fsync always` is
//! killed with SIGKILL while several producers write to it, restarted on the
//! same data folder, and read back whole, ten times over a growing log.

#![allow(clippy::unwrap_used, unreachable_pub)]

#[path = "../broker/tests/client/mod.rs"]
mod client;
mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::ListOffsetsRequest;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{CreateTopicsRequest, FetchRequest};

use client::{Client, batch, fetch_request, produce_request, records, topic_name};
use common::Broker;

const TOPIC: &str = "durable";
const PARTITIONS: i32 = 3;
const PRODUCERS: usize = 4;
const CYCLES: usize = 10;

/// `tally broker` with no agent, fsyncing before every acknowledgement.
fn start_broker() -> Broker {
    Broker::start(&[
        "--fsync",
        "always",
        "--auto-create-topics",
        "false",
        // Small segments, so that kills also land around segment rolls
        // and recovery walks many sealed segments.
        "--segment-bytes",
        "16384",
    ])
}

/// A batch the broker acknowledged: where it said the records are.
#[derive(Debug)]
struct Acked {
    partition: i32,
    base_offset: i64,
    payloads: Vec<Bytes>,
}

/// Produces until the connection breaks, one batch of 1-4 records with
/// distinct payloads per request, acks=-1; returns what was acknowledged.
async fn produce_until_killed(addr: SocketAddr, cycle: usize, producer: usize) -> Vec<Acked> {
    let mut acked = Vec::new();
    let Ok(mut c) = Client::connect(addr).await else {
        return acked;
    };
    for n in 0usize.. {
        let partition = ((producer + n) % PARTITIONS as usize) as i32;
        let payloads: Vec<Bytes> = (0..1 + (n + producer) % 4)
            .map(|r| {
                Bytes::from(format!(
                    "cycle{cycle}-producer{producer}-batch{n}-record{r}"
                ))
            })
            .collect();
        let values: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        let request = produce_request(TOPIC, partition, -1, batch(&values));
        let Ok(response) = c.call(&request, 9).await else {
            // Killed mid-request: this batch was never acknowledged.
            break;
        };
        let p = &response.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0, "produce refused: {p:?}");
        acked.push(Acked {
            partition,
            base_offset: p.base_offset,
            payloads,
        });
    }
    acked
}

/// Every record of a partition, by offset from the log start, read through Fetch.
async fn read_partition(c: &mut Client, partition: i32) -> Vec<(i64, Bytes)> {
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(topic_name(TOPIC))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(-1),
                ]),
        ]);
    let end = c.call(&request, 7).await.unwrap().topics[0].partitions[0].offset;
    let mut log = Vec::new();
    let mut next = 0;
    while next < end {
        let request: FetchRequest = fetch_request(TOPIC, partition, next, 1 << 20);
        let response = c.call(&request, 12).await.unwrap();
        let p = &response.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch of partition {partition} at {next}");
        assert_eq!(p.high_watermark, end);
        let fetched: Vec<(i64, Bytes)> = records(p.records.as_ref().unwrap())
            .into_iter()
            .filter(|(offset, _, _)| *offset >= next)
            .map(|(offset, _, value)| (offset, value))
            .collect();
        assert!(!fetched.is_empty(), "no progress at {next} of {end}");
        next = fetched.last().unwrap().0 + 1;
        log.extend(fetched);
    }
    log
}

/// The log holds every acknowledged record where the broker said it put
/// it, at contiguous offsets from 0, and no payload twice.
async fn check_log(addr: SocketAddr, acked: &[Acked], cycle: usize) -> usize {
    let mut c = Client::connect(addr).await.unwrap();
    let mut seen = HashSet::new();
    let mut total = 0;
    for partition in 0..PARTITIONS {
        let log = read_partition(&mut c, partition).await;
        for (i, (offset, value)) in log.iter().enumerate() {
            assert_eq!(
                *offset, i as i64,
                "cycle {cycle}: partition {partition} offsets are not contiguous from 0"
            );
            assert!(
                seen.insert(value.clone()),
                "cycle {cycle}: partition {partition} holds {value:?} twice"
            );
        }
        for a in acked.iter().filter(|a| a.partition == partition) {
            for (j, payload) in a.payloads.iter().enumerate() {
                let at = a.base_offset + j as i64;
                let found = usize::try_from(at).ok().and_then(|i| log.get(i));
                assert_eq!(
                    found.map(|(_, v)| v),
                    Some(payload),
                    "cycle {cycle}: acknowledged record {payload:?} is not at partition {partition} offset {at} (log ends at {})",
                    log.len()
                );
            }
        }
        total += log.len();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged() {
    let mut broker = start_broker();
    let mut c = Client::connect(broker.socket_addr()).await.unwrap();
    let created = c
        .call(
            &CreateTopicsRequest::default().with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic_name(TOPIC))
                    .with_num_partitions(PARTITIONS)
                    .with_replication_factor(1),
            ]),
            7,
        )
        .await
        .unwrap();
    assert_eq!(created.topics[0].error_code, 0);
    drop(c);

    let mut acked: Vec<Acked> = Vec::new();
    for cycle in 0..CYCLES {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| tokio::spawn(produce_until_killed(broker.socket_addr(), cycle, p)))
            .collect();
        // Kill at a different moment of the write path each cycle.
        let pause = 150 + (cycle * 37) % 200;
        tokio::time::sleep(Duration::from_millis(pause as u64)).await;
        broker.kill9();
        let mut this_cycle = 0;
        for p in producers {
            let mine = p.await.unwrap();
            this_cycle += mine.len();
            acked.extend(mine);
        }
        assert!(
            this_cycle > 0,
            "cycle {cycle}: nothing was acknowledged in {pause} ms"
        );

        broker.restart();
        let acked_records: usize = acked.iter().map(|a| a.payloads.len()).sum();
        let stored = check_log(broker.socket_addr(), &acked, cycle).await;
        assert!(stored >= acked_records, "cycle {cycle}");
        eprintln!(
            "cycle {cycle}: {this_cycle} batches acknowledged, {acked_records} records acknowledged in all, {stored} in the log"
        );
    }
}
