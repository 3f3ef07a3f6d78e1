//! The broker against the hostile inputs of issue 12: record batches whose
//! count lies, compression bombs, fetch amplification, silent and trickling
//! connections, and control batches from clients. Each test asserts what the
//! client is answered, that other clients are served meanwhile, that memory
//! stays bounded (peak RSS of this process, from /proc, with a generous
//! bound: the exact figures belong in benchmarks), and that nothing
//! acknowledged is lost.

#![allow(clippy::unwrap_used)]

mod client;

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    CreateTopicsRequest, FetchRequest, FetchResponse, MetadataRequest, ProduceRequest,
};
use kafka_protocol::records::Compression;
use tally_broker::batch::{self, RecordsError};
use tally_broker::config::BrokerConfig;
use tally_broker::server::{RunningBroker, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use client::{
    Client, Producer, batch, fetch_request, now_ms, produce_request, records, topic_name,
};

const INVALID_RECORD: i16 = 87;
const MESSAGE_TOO_LARGE: i16 = 10;
const NONE: i16 = 0;
/// Peak RSS this test process may reach, all tests together. Before the
/// fixes, each of the lying-count, bomb and amplification tests alone went
/// well past it.
const PEAK_RSS_BOUND_MIB: u64 = 1536;

/// Peak resident memory of this process so far (VmHWM), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib / 1024
}

fn assert_memory_bounded(what: &str) {
    let peak = peak_rss_mib();
    eprintln!("{what}: peak RSS of the test process {peak} MiB");
    assert!(
        peak < PEAK_RSS_BOUND_MIB,
        "{what}: peak RSS {peak} MiB, over {PEAK_RSS_BOUND_MIB} MiB"
    );
}

struct TestBroker {
    running: RunningBroker,
    dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path) -> BrokerConfig {
    BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        data_dir: dir.to_path_buf(),
        agent: String::new(),
        ..BrokerConfig::default()
    }
}

impl TestBroker {
    async fn start(tune: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        tune(&mut cfg);
        TestBroker {
            running: start(cfg).await.unwrap(),
            dir,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(self.running.addr()).await.unwrap()
    }

    async fn create(&self, topic: &str, partitions: i32) {
        let request = CreateTopicsRequest::default().with_topics(vec![
            CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(1),
        ]);
        let r = self.client().await.call(&request, 5).await.unwrap();
        assert_eq!(r.topics[0].error_code, NONE, "create {topic}");
    }

    /// Records in the audit books of a partition, over all buckets.
    fn counted(&self, topic: &str, partition: i32) -> u64 {
        self.running
            .broker()
            .audit()
            .unwrap()
            .books(topic, partition)
            .map_or(0, |b| b.broker_buckets().map(|(_, t)| t.records).sum())
    }

    /// Every value in a partition, fetched from offset 0.
    async fn values(&self, topic: &str, partition: i32) -> Vec<Bytes> {
        let r = self
            .client()
            .await
            .call(&fetch_request(topic, partition, 0, 64 << 20), 12)
            .await
            .unwrap();
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, NONE);
        records(p.records.as_ref().unwrap())
            .into_iter()
            .map(|r| r.2)
            .collect()
    }
}

/// A producer's batch of `values` in `codec`, offsets from 0.
fn encoded(values: &[&[u8]], codec: Compression) -> Vec<u8> {
    let now = vec![now_ms(); values.len()];
    client::batch_with(values, &now, Producer::PLAIN, codec).to_vec()
}

const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

const ATTRIBUTES_AT: usize = 21;
const CRC_AT: usize = 17;
const HEADER: usize = 61;

fn fix_crc(b: &mut [u8]) {
    if b.len() < CRC_AT + 4 {
        return;
    }
    let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Makes the batch claim `count` records, consistently (last offset delta
/// too) and with a valid CRC, as the hostile probe did.
fn claim(b: &mut [u8], count: i32) {
    b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    b[57..61].copy_from_slice(&count.to_be_bytes());
    fix_crc(b);
}

/// `header` (a batch's first 61 bytes) over `region` as its records, with
/// the batch length and CRC fixed.
fn rebatch(header: &[u8], region: &[u8]) -> Vec<u8> {
    let mut b = header[..HEADER].to_vec();
    b.extend_from_slice(region);
    let length = i32::try_from(b.len() - 12).unwrap();
    b[8..12].copy_from_slice(&length.to_be_bytes());
    fix_crc(&mut b);
    b
}

fn produce_many(topic: &str, partition: i32, batches: &[Vec<u8>]) -> ProduceRequest {
    produce_request(topic, partition, -1, Bytes::from(batches.concat()))
}

/// The error code of the only partition answered.
async fn produce_code(c: &mut Client, request: &ProduceRequest) -> i16 {
    let r = c.call(request, 9).await.unwrap();
    r.responses[0].partition_responses[0].error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_record_count_lies_is_refused_and_never_counted() {
    let broker = TestBroker::start(|_| {}).await;
    broker.create("lies", 1).await;
    let mut c = broker.client().await;
    assert_eq!(
        produce_code(
            &mut c,
            &produce_many("lies", 0, &[encoded(&[b"kept"], Compression::Zstd)])
        )
        .await,
        NONE
    );
    for codec in CODECS {
        for claimed in [20_000_000, 50_000_000, i32::MAX, 2] {
            let mut lying = encoded(&[b"one record"], codec);
            claim(&mut lying, claimed);
            if codec == Compression::Zstd {
                assert!(lying.len() < 100, "a small batch: {} bytes", lying.len());
            }
            // Five at once, as the probe sent them: 100 M claimed records.
            let request = produce_many("lies", 0, &vec![lying; 5]);
            assert_eq!(
                produce_code(&mut c, &request).await,
                INVALID_RECORD,
                "{codec:?} claiming {claimed} records"
            );
        }
        // Fewer claimed than held is a lie too.
        let mut short = encoded(&[b"a", b"b", b"c"], codec);
        claim(&mut short, 2);
        assert_eq!(
            produce_code(&mut c, &produce_many("lies", 0, &[short])).await,
            INVALID_RECORD,
            "{codec:?} claiming 2 of 3"
        );
    }
    // The error message says what is wrong (Produce v8+ carries it).
    let mut lying = encoded(&[b"x"], Compression::Zstd);
    claim(&mut lying, 20_000_000);
    let r = c.call(&produce_many("lies", 0, &[lying]), 9).await.unwrap();
    let message = r.responses[0].partition_responses[0]
        .error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    assert!(message.contains("record count '20000000'"), "{message}");
    // Other clients were served, and only the true record is there and counted.
    assert_eq!(
        broker.values("lies", 0).await,
        [Bytes::from_static(b"kept")]
    );
    assert_eq!(broker.counted("lies", 0), 1);
    // Honest batches of every codec are still accepted and counted exactly.
    for codec in CODECS {
        let honest = encoded(&[b"h1", b"h2"], codec);
        assert_eq!(
            produce_code(&mut c, &produce_many("lies", 0, &[honest])).await,
            NONE,
            "{codec:?}"
        );
    }
    assert_eq!(broker.counted("lies", 0), 11);
    assert_memory_bounded("lying record counts");

    // A restart rebuilds the books from the log at once: nothing claimed
    // was ever stored.
    drop(c);
    let dir = broker.dir;
    let weak = std::sync::Arc::downgrade(broker.running.broker());
    broker.running.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while weak.upgrade().is_some() {
        assert!(Instant::now() < deadline, "the broker is still in use");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let running = start(config(dir.path())).await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "restart took {took:?}");
    let broker = TestBroker { running, dir };
    assert_eq!(broker.counted("lies", 0), 11);
    assert_eq!(broker.values("lies", 0).await.len(), 11);
    assert_memory_bounded("restart after lying record counts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_may_not_write_control_batches() {
    let broker = TestBroker::start(|_| {}).await;
    broker.create("markers", 1).await;
    let mut c = broker.client().await;
    for codec in [Compression::None, Compression::Zstd] {
        for bits in [0x20u8, 0x30] {
            // Attribute bit 5 is "control"; bit 4 "transactional".
            let mut control = encoded(&[b"marker"], codec);
            control[ATTRIBUTES_AT + 1] |= bits;
            fix_crc(&mut control);
            let r = c
                .call(&produce_many("markers", 0, &[control]), 9)
                .await
                .unwrap();
            let p = &r.responses[0].partition_responses[0];
            assert_eq!(
                p.error_code, INVALID_RECORD,
                "{codec:?} attributes {bits:#x}"
            );
            let message = p.error_message.as_ref().map(|m| m.to_string());
            assert!(
                message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("control batch"),
                "{message:?}"
            );
        }
    }
    // An ordinary batch next to it is appended; the control batch never was.
    let plain = encoded(&[b"data"], Compression::None);
    assert_eq!(
        produce_code(&mut c, &produce_many("markers", 0, &[plain])).await,
        NONE
    );
    assert_eq!(
        broker.values("markers", 0).await,
        [Bytes::from_static(b"data")]
    );
    assert_eq!(broker.counted("markers", 0), 1);
}

/// Encodes `n` as a zigzag varint.
fn varint(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A zstd batch of one record whose value is `value_bytes` zeros: a few KB
/// on the wire, `value_bytes` once decompressed.
fn zstd_bomb(value_bytes: usize) -> Vec<u8> {
    let mut body = vec![0u8, 0, 0]; // attributes, timestamp delta, offset delta
    varint(-1, &mut body); // key: null
    varint(value_bytes as i64, &mut body);
    let mut prefix = Vec::new();
    varint((body.len() + value_bytes + 1) as i64, &mut prefix);
    prefix.extend(&body);
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    encoder.write_all(&prefix).unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = value_bytes;
    while left > 0 {
        let n = left.min(zeros.len());
        encoder.write_all(&zeros[..n]).unwrap();
        left -= n;
    }
    encoder.write_all(&[0]).unwrap(); // no headers
    let region = encoder.finish().unwrap();
    rebatch(&encoded(&[b"h"], Compression::Zstd), &region)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_bombs_are_capped_per_request_and_never_stall_other_clients() {
    // Scaled down from the probe (200 batches of 128 MiB against 256 MiB)
    // to keep the debug build quick: the same ratios at 1/8.
    const BOMB: usize = 16 << 20;
    let broker = TestBroker::start(|c| c.max_decompressed_bytes = 2 * BOMB as u64 + 1024).await;
    broker.create("bombs", 2).await;
    let bomb = zstd_bomb(BOMB);
    assert!(bomb.len() < 8 * 1024, "a bomb of {} bytes", bomb.len());
    let mut c = broker.client().await;
    // One or two bombs fit the request's budget: the records are real.
    assert_eq!(
        produce_code(
            &mut c,
            &produce_many("bombs", 0, std::slice::from_ref(&bomb))
        )
        .await,
        NONE
    );
    assert_eq!(
        produce_code(
            &mut c,
            &produce_many("bombs", 0, &[bomb.clone(), bomb.clone()])
        )
        .await,
        NONE
    );
    let appended = broker.values("bombs", 0).await.len();
    assert_eq!(appended, 3);

    // 200 in one request: refused as too large, nothing of it appended.
    let request = produce_many("bombs", 0, &vec![bomb.clone(); 200]);
    let started = Instant::now();
    let r = c.call(&request, 9).await.unwrap();
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(p.error_code, MESSAGE_TOO_LARGE);
    let message = p
        .error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    assert!(message.contains("max_decompressed_bytes"), "{message}");
    eprintln!("200 bombs refused in {:?}", started.elapsed());
    // The budget is the request's: a second partition in the same request
    // gets no fresh one.
    let two = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic_name("bombs"))
                .with_partition_data(
                    (0..2)
                        .map(|p| {
                            PartitionProduceData::default()
                                .with_index(p)
                                .with_records(Some(Bytes::from(vec![bomb.clone(); 2].concat())))
                        })
                        .collect(),
                ),
        ]);
    let r = c.call(&two, 9).await.unwrap();
    let codes: Vec<i16> = r.responses[0]
        .partition_responses
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, [NONE, MESSAGE_TOO_LARGE]);

    // What was acknowledged is all there, and nothing else.
    assert_eq!(broker.values("bombs", 0).await.len(), 5);
    assert_eq!(broker.counted("bombs", 0), 5);
    assert_eq!(broker.values("bombs", 1).await.len(), 0);
    assert_memory_bounded("compression bombs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_runs_off_the_async_workers() {
    // A budget large enough that each request decompresses 1 GiB before it
    // is refused: four clients sending such requests at once keep both
    // cores busy, yet a fifth client is answered quickly every time.
    let broker = TestBroker::start(|c| c.max_decompressed_bytes = 1 << 30).await;
    broker.create("bombs", 1).await;
    let bomb = zstd_bomb(16 << 20);
    let request = produce_many("bombs", 0, &vec![bomb; 200]);
    let addr = broker.running.addr();
    let bombers: Vec<_> = (0..4)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await.unwrap();
                let mut codes = Vec::new();
                for _ in 0..4 {
                    codes.push(produce_code(&mut c, &request).await);
                }
                codes
            })
        })
        .collect();
    let mut other = broker.client().await;
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    while !bombers.iter().all(|b| b.is_finished()) {
        let t = Instant::now();
        let m = other
            .call(&MetadataRequest::default().with_topics(None), 9)
            .await
            .unwrap();
        assert!(!m.topics.is_empty());
        slowest = slowest.max(t.elapsed());
        answered += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for b in bombers {
        assert_eq!(b.await.unwrap(), [MESSAGE_TOO_LARGE; 4]);
    }
    eprintln!("{answered} Metadata requests during the bombs, slowest {slowest:?}");
    assert!(
        answered >= 5,
        "the bombs were over after {answered} requests"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "Metadata waited {slowest:?} behind the bombs"
    );
    assert_eq!(broker.values("bombs", 0).await.len(), 0);
    assert_memory_bounded("decompression off the async workers");
}

fn fetch_of(partitions: &[(&str, i32)], max_bytes: i32, partition_max_bytes: i32) -> FetchRequest {
    let topics = partitions
        .iter()
        .map(|(t, p)| {
            FetchTopic::default()
                .with_topic(topic_name(t))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(*p)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(partition_max_bytes),
                ])
        })
        .collect();
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(max_bytes)
        .with_topics(topics)
}

/// Record bytes per (topic, partition) of a Fetch response, in answer order.
fn answered(r: &FetchResponse) -> Vec<(String, i32, usize)> {
    r.responses
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                assert_eq!(p.error_code, NONE);
                (
                    t.topic.0.to_string(),
                    p.partition_index,
                    p.records.as_ref().map_or(0, |r| r.len()),
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_responses_are_capped_and_a_repeated_partition_is_answered_once() {
    const CAP: usize = 1 << 20;
    let broker = TestBroker::start(|c| c.fetch_max_bytes = CAP).await;
    broker.create("wide", 3).await;
    let mut c = broker.client().await;
    let value = vec![b'v'; 100_000];
    // 8 MB in partition 0, 1 MB in partition 1, and partition 2 starts with
    // a batch larger than every limit below.
    for _ in 0..80 {
        let r = c
            .call(&produce_request("wide", 0, -1, batch(&[&value])), 9)
            .await;
        assert_eq!(
            r.unwrap().responses[0].partition_responses[0].error_code,
            NONE
        );
    }
    for _ in 0..10 {
        let r = c
            .call(&produce_request("wide", 1, -1, batch(&[&value])), 9)
            .await;
        assert_eq!(
            r.unwrap().responses[0].partition_responses[0].error_code,
            NONE
        );
    }
    let large = vec![b'L'; 300_000];
    let r = c
        .call(&produce_request("wide", 2, -1, batch(&[&large])), 9)
        .await;
    assert_eq!(
        r.unwrap().responses[0].partition_responses[0].error_code,
        NONE
    );

    // The probe: one partition 600 times, max_bytes 2^31-1.
    let repeated = fetch_of(&[("wide", 0); 600], i32::MAX, i32::MAX);
    let r = c.call(&repeated, 12).await.unwrap();
    let got = answered(&r);
    assert_eq!(got.len(), 1, "a repeated partition is answered once");
    assert!(got[0].2 > 0 && got[0].2 <= CAP, "{} bytes", got[0].2);
    let p = &r.responses[0].partitions[0];
    // Whole batches from the fetch offset: they decode.
    let values = records(p.records.as_ref().unwrap());
    assert_eq!(values[0].0, 0);
    assert_eq!(values.len(), CAP / 100_100, "as many whole batches as fit");

    // The request's own max_bytes holds across partitions (librdkafka's
    // test 0082 asked for 1,000,000 and must not get more).
    let spread = fetch_of(&[("wide", 0), ("wide", 1), ("wide", 2)], 250_000, 1 << 20);
    let got = answered(&c.call(&spread, 12).await.unwrap());
    let total: usize = got.iter().map(|g| g.2).sum();
    assert!(total > 0 && total <= 250_000, "{got:?}");
    let spread = fetch_of(&[("wide", 1), ("wide", 0)], 1_000_000, 1 << 20);
    let got = answered(&c.call(&spread, 12).await.unwrap());
    let total: usize = got.iter().map(|g| g.2).sum();
    assert!(total > 900_000 && total <= 1_000_000, "{got:?}");

    // A batch larger than both limits still comes back whole when it is the
    // first with data, and then nothing else does.
    let first = fetch_of(&[("wide", 2), ("wide", 0)], 1000, 1000);
    let r = c.call(&first, 12).await.unwrap();
    let got = answered(&r);
    assert_eq!(got[1].2, 0, "{got:?}");
    let whole = records(r.responses[0].partitions[0].records.as_ref().unwrap());
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0].2.len(), large.len());
    // Behind other data it waits for a fetch of its own.
    let behind = fetch_of(&[("wide", 1), ("wide", 2)], 200_000, 1 << 20);
    let got = answered(&c.call(&behind, 12).await.unwrap());
    assert_eq!(got[1].2, 0, "{got:?}");

    // The same topic listed twice, partitions repeated inside each: one
    // topic, each partition once.
    let mut twice = fetch_of(&[("wide", 0), ("wide", 1)], i32::MAX, 1000);
    let again = twice.topics.clone();
    twice.topics.extend(again);
    let r = c.call(&twice, 12).await.unwrap();
    assert_eq!(r.responses.len(), 1);
    let got = answered(&r);
    assert_eq!(
        got.iter().map(|g| (g.0.as_str(), g.1)).collect::<Vec<_>>(),
        [("wide", 0), ("wide", 1)]
    );

    // Many clients asking the same at once stay within memory.
    let addr = broker.running.addr();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let repeated = repeated.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await.unwrap();
                let r = c.call(&repeated, 12).await.unwrap();
                answered(&r)[0].2
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap() <= CAP);
    }
    assert_eq!(broker.values("wide", 1).await.len(), 10, "nothing lost");
    assert_memory_bounded("fetch amplification");
}

/// Whether the broker closed `s` (end of stream or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_trickling_sockets_cannot_lock_clients_out() {
    const LIMIT: usize = 64;
    let request_timeout = Duration::from_secs(3);
    let broker = TestBroker::start(|c| {
        c.max_connections = LIMIT;
        c.request_timeout = request_timeout;
        c.idle_timeout = Duration::from_secs(5);
    })
    .await;
    broker.create("kept", 1).await;
    // A client that has been served keeps its connection through it all.
    let mut veteran = broker.client().await;
    let r = veteran
        .call(
            &produce_request("kept", 0, -1, batch(&[b"acknowledged"])),
            9,
        )
        .await
        .unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, NONE);

    // Half the limit never sends a byte; the other half trickles a request
    // one byte at a time.
    let addr = broker.running.addr();
    let filled = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..LIMIT / 2 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let trickle = client::frame(&MetadataRequest::default().with_topics(None), 9, 1);
    let mut tricklers = Vec::new();
    for _ in 0..LIMIT / 2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let trickle = trickle.clone();
        tricklers.push(tokio::spawn(async move {
            let started = Instant::now();
            for byte in trickle.iter() {
                if s.write_all(&[*byte]).await.is_err() {
                    return Some(started.elapsed());
                }
                let mut buf = [0u8; 1];
                // Closed by the broker: the read ends; else a byte a 200 ms.
                match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                    _ => {}
                }
            }
            None
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Real clients get in at once, long before any timeout: each takes the
    // place of a socket that never completed a request.
    for i in 0..10 {
        let t = Instant::now();
        let mut c = broker.client().await;
        c.api_versions()
            .await
            .unwrap_or_else(|e| panic!("client {i} was locked out: {e}"));
        let r = c
            .call(&fetch_request("kept", 0, 0, 1 << 20), 12)
            .await
            .unwrap();
        let got = records(r.responses[0].partitions[0].records.as_ref().unwrap());
        assert_eq!(got[0].2, Bytes::from_static(b"acknowledged"));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "client {i} took {:?}",
            t.elapsed()
        );
    }
    assert!(
        filled.elapsed() < request_timeout,
        "the test ran past the timeout"
    );
    // The sockets pushed out were the flood's own, never a served client.
    veteran
        .api_versions()
        .await
        .expect("a served client was pushed out by silent sockets");

    // The silent sockets are closed after the request timeout, the
    // tricklers too although they keep sending.
    let mut still_open = 0;
    for s in &mut silent {
        if !closed_within(s, request_timeout + Duration::from_secs(2)).await {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "silent sockets outlived the request timeout");
    for t in tricklers {
        let closed_after = t.await.unwrap().expect("a trickler was served");
        assert!(
            closed_after < request_timeout + Duration::from_secs(2),
            "a trickler was closed only after {closed_after:?}"
        );
    }

    // A client that completed a request and then says nothing is closed
    // after the idle timeout, not before.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(&client::frame(
        &kafka_protocol::messages::ApiVersionsRequest::default(),
        0,
        1,
    ))
    .await
    .unwrap();
    let mut size = [0u8; 4];
    idle.read_exact(&mut size).await.unwrap();
    let mut answer = vec![0u8; usize::try_from(i32::from_be_bytes(size)).unwrap()];
    idle.read_exact(&mut answer).await.unwrap();
    assert!(
        !closed_within(&mut idle, Duration::from_secs(4)).await,
        "closed before idle_timeout"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "idle_timeout did not close it"
    );
    assert_memory_bounded("idle connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_with_a_request_in_progress_are_never_pushed_out() {
    let broker = TestBroker::start(|c| c.max_connections = 2).await;
    broker.create("polled", 1).await;
    let addr = broker.running.addr();
    // Two long polls fill the limit; both are answered in full.
    let mut sent = Vec::new();
    let polls: Vec<_> = (0..2)
        .map(|_| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            sent.push(rx);
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await.unwrap();
                let poll = fetch_request("polled", 0, 0, 1 << 20)
                    .with_max_wait_ms(6_000)
                    .with_min_bytes(1);
                c.send(&poll, 12).await.unwrap();
                let _ = tx.send(());
                let (_, r) = c
                    .receive::<kafka_protocol::messages::FetchRequest>(12)
                    .await
                    .unwrap();
                r.responses[0].partitions[0].error_code
            })
        })
        .collect();
    // Both requests are on the wire (on a loaded machine, connecting can
    // take longer than any fixed pause); give the broker a moment to read
    // them: 300 ms was seen too short once under the whole suite on 2 cores
    // (the broker had not read a poll yet, so it pushed that connection out),
    // and 1 s once with librdkafka's suite building beside the whole suite.
    // The polls wait 6 s, so the check below still lands while they are held.
    for rx in sent {
        rx.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut extra = broker.client().await;
    let _ = extra
        .send(&kafka_protocol::messages::ApiVersionsRequest::default(), 0)
        .await;
    assert!(
        extra.is_closed_by_broker().await,
        "a connection beyond the limit was served while every one was busy"
    );
    for p in polls {
        assert_eq!(p.await.unwrap(), NONE);
    }
    // Once they are done, a new client gets in.
    let mut c = broker.client().await;
    c.api_versions().await.unwrap();
}

/// xorshift64*: seeded, so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `region` compressed as `codec` writes a batch's records.
fn compress(codec: Compression, region: &[u8]) -> Vec<u8> {
    match codec {
        Compression::None => region.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(region).unwrap();
            e.finish().unwrap()
        }
        Compression::Snappy => snap::raw::Encoder::new().compress_vec(region).unwrap(),
        Compression::Lz4 => {
            let mut e = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
            e.write_all(region).unwrap();
            let (out, result) = e.finish();
            result.unwrap();
            out
        }
        Compression::Zstd => zstd::encode_all(region, 1).unwrap(),
    }
}

fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>, from: usize) {
    for _ in 0..1 + rng.below(4) {
        if bytes.len() <= from {
            return;
        }
        let at = from + rng.below(bytes.len() - from);
        match rng.below(5) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff][rng.below(6)],
            2 => bytes.truncate(at),
            3 => {
                let junk: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
                bytes.splice(at..at, junk);
            }
            _ => {
                // A varint that claims a huge length.
                bytes.splice(at..at, [0xfe, 0xff, 0xff, 0xff, 0x0f]);
            }
        }
    }
}

/// Mutations of valid batches of every codec through validation and
/// decompression: no panic, bounded time and memory, and whatever is
/// accepted holds exactly the records its header declares. (The same check
/// runs without bound under cargo-fuzz: fuzz/fuzz_targets/record_batch.rs.)
#[test]
fn mutated_batches_of_every_codec_are_refused_or_hold_what_they_declare() {
    let started = Instant::now();
    let mut rng = Rng(0x0ba7_c4ed_5eed_1234);
    let values: Vec<Vec<u8>> = (0..12).map(|i| vec![b'a' + i as u8; 1 + i * 7]).collect();
    let value_refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    let plain = encoded(&value_refs, Compression::None);
    let (mut tried, mut accepted, mut too_large) = (0u32, 0u32, 0u32);
    while tried < 6_000 && started.elapsed() < Duration::from_secs(4) {
        let codec = CODECS[rng.below(CODECS.len())];
        let header = encoded(&[b"h"], codec);
        let mut bytes = match rng.below(3) {
            // The records mangled before compression: deep into the walk.
            0 => {
                let mut region = plain[HEADER..].to_vec();
                mutate_bytes(&mut rng, &mut region, 0);
                let mut b = rebatch(&header, &compress(codec, &region));
                claim(&mut b, 12);
                b
            }
            // The compressed bytes mangled: into the decompressors.
            1 => {
                let mut b = rebatch(&header, &compress(codec, &plain[HEADER..]));
                claim(&mut b, 12);
                mutate_bytes(&mut rng, &mut b, HEADER);
                let length = i32::try_from(b.len() - 12).unwrap();
                b[8..12].copy_from_slice(&length.to_be_bytes());
                fix_crc(&mut b);
                b
            }
            // The header's counts and lengths mangled.
            _ => {
                let mut b = rebatch(&header, &compress(codec, &plain[HEADER..]));
                let count = [0, 1, 11, 13, 12_000, 20_000_000, i32::MAX, -1][rng.below(8)];
                claim(&mut b, count);
                if rng.below(2) == 0 {
                    mutate_bytes(&mut rng, &mut b, 8);
                    fix_crc(&mut b);
                }
                b
            }
        };
        if rng.below(4) == 0 {
            // Two batches in one request, the second the same.
            let again = bytes.clone();
            bytes.extend(again);
        }
        tried += 1;
        let mut budget = 1 << 20;
        match batch::check_produced(&bytes, &mut budget) {
            Ok(checked) => {
                accepted += 1;
                assert_eq!(checked.headers.len(), checked.timestamps.len());
                for (h, ts) in checked.headers.iter().zip(&checked.timestamps) {
                    assert_eq!(
                        i64::from(h.record_count),
                        ts.len() as i64,
                        "an accepted batch holds other than it declares"
                    );
                }
            }
            Err(RecordsError::TooLarge { .. }) => too_large += 1,
            Err(RecordsError::Invalid(_)) => {}
        }
        let _ = batch::record_timestamps(&bytes);
    }
    let took = started.elapsed();
    eprintln!("{tried} mutated batches in {took:?}: {accepted} accepted, {too_large} too large");
    assert!(tried >= 500, "only {tried} batches in {took:?}");
    assert!(accepted > 0, "no mutation kept a batch valid");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_memory_bounded("mutated batches");
}

/// Current resident memory of this process (VmRSS), in MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap()
        / 1024
}

/// The hostile probe's inputs at its own scale, against the defaults: the
/// figures in BENCHMARKS.md. A measurement, so ignored by default; run it
/// in release mode:
/// `cargo test --release -p tally-broker --test hostile -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement at the probe's scale (release mode); see BENCHMARKS.md"]
async fn at_the_probes_scale() {
    let broker = TestBroker::start(|_| {}).await;
    broker.create("probe", 1).await;
    let mut c = broker.client().await;

    // Lying record counts: 82-byte zstd batches claiming 20 M records each.
    let mut lying = encoded(&[b"x"], Compression::Zstd);
    claim(&mut lying, 20_000_000);
    let request = produce_many("probe", 0, &vec![lying.clone(); 5]);
    let t = Instant::now();
    for _ in 0..10 {
        assert_eq!(produce_code(&mut c, &request).await, INVALID_RECORD);
    }
    eprintln!(
        "lying counts: batch of {} bytes; 10 requests of 5 (1 G records claimed) refused in {:?}; \
         peak RSS {} MiB",
        lying.len(),
        t.elapsed(),
        peak_rss_mib()
    );

    // Compression bombs: 200 batches of ~128 MiB each in one request.
    let bomb = zstd_bomb((128 << 20) - 64);
    let request = produce_many("probe", 0, &vec![bomb.clone(); 200]);
    let addr = broker.running.addr();
    let bomber = tokio::spawn(async move {
        let mut c = Client::connect(addr).await.unwrap();
        let t = Instant::now();
        let code = produce_code(&mut c, &request).await;
        (code, t.elapsed())
    });
    let mut other = broker.client().await;
    let mut slowest = Duration::ZERO;
    let mut asked = 0;
    while !bomber.is_finished() {
        let t = Instant::now();
        other
            .call(&MetadataRequest::default().with_topics(None), 9)
            .await
            .unwrap();
        slowest = slowest.max(t.elapsed());
        asked += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (code, took) = bomber.await.unwrap();
    assert_eq!(code, MESSAGE_TOO_LARGE);
    eprintln!(
        "bombs: 200 batches of {} bytes (128 MiB each decompressed) refused with error {code} in \
         {took:?}; {asked} Metadata requests meanwhile, slowest {slowest:?}; peak RSS {} MiB",
        bomb.len(),
        peak_rss_mib()
    );

    // Fetch amplification: 100 MB in the partition (batches of 100 KB),
    // listed 600 times.
    let value = vec![b'v'; 100_000];
    for _ in 0..1000 {
        let r = c
            .call(&produce_request("probe", 0, -1, batch(&[&value])), 9)
            .await
            .unwrap();
        assert_eq!(r.responses[0].partition_responses[0].error_code, NONE);
    }
    let repeated = fetch_of(&[("probe", 0); 600], i32::MAX, i32::MAX);
    let before = rss_mib();
    let t = Instant::now();
    let r = c.call(&repeated, 12).await.unwrap();
    let got = answered(&r);
    eprintln!(
        "fetch: one partition of 100 MB listed 600 times, max_bytes 2^31-1: {} partition(s) \
         answered with {} bytes in {:?}; RSS {before} MiB before, peak {} MiB",
        got.len(),
        got.iter().map(|g| g.2).sum::<usize>(),
        t.elapsed(),
        peak_rss_mib()
    );
    drop(r);
    let spread = fetch_of(&[("probe", 0)], 1_000_000, 1_048_576);
    let got = answered(&c.call(&spread, 12).await.unwrap());
    eprintln!(
        "fetch: max_bytes 1,000,000 answered with {} bytes",
        got[0].2
    );

    // 1,024 silent sockets (the default limit), then a client.
    let mut silent = Vec::new();
    for _ in 0..1024 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let mut late = broker.client().await;
    late.api_versions().await.unwrap();
    eprintln!(
        "connections: after 1,024 silent sockets, a new client was answered in {:?}",
        t.elapsed()
    );
    drop(silent);
    assert_memory_bounded("the probe's scale");
}
