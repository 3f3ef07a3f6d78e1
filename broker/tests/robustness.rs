//! Nothing a peer sends can take the broker down: malformed frames, hostile
//! lengths, unknown APIs and versions, half-sent requests, too many
//! connections and mutated requests all end at most that one connection,
//! and a new connection is served afterwards.

#![allow(clippy::unwrap_used)]

mod client;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    InitProducerIdRequest, ListOffsetsRequest, MetadataRequest,
};
use kafka_protocol::protocol::StrBytes;
use tally_broker::config::BrokerConfig;
use tally_broker::server::{RunningBroker, start};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use client::{
    Client, batch, fetch_request, frame, produce_request, raw_frame, records, topic_name,
};

const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Panics in the runtime's threads, where the broker's tasks run: a handler
/// that panics only loses its connection, so the tests count them. (The
/// tests' own assertions run on the test threads and are not counted.)
fn panics() -> &'static AtomicUsize {
    static COUNT: OnceLock<&'static AtomicUsize> = OnceLock::new();
    COUNT.get_or_init(|| {
        let count: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-runtime"))
            {
                count.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
        count
    })
}

struct TestBroker {
    running: RunningBroker,
    _dir: tempfile::TempDir,
}

impl TestBroker {
    async fn start(tune: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        panics();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = BrokerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            data_dir: dir.path().to_path_buf(),
            max_frame_bytes: MAX_FRAME_BYTES,
            ..BrokerConfig::default()
        };
        tune(&mut cfg);
        TestBroker {
            running: start(cfg).await.unwrap(),
            _dir: dir,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(self.running.addr()).await.unwrap()
    }

    /// A new connection gets an ApiVersions answer.
    async fn assert_serving(&self, after: &str) {
        let mut c = self.client().await;
        c.api_versions()
            .await
            .unwrap_or_else(|e| panic!("after {after}, a new connection is not served: {e}"));
    }

    /// Sends `bytes` on a new connection, expects the broker to close it,
    /// then checks that a new connection is still served.
    async fn assert_closes(&self, what: &str, bytes: &[u8]) {
        let mut c = self.client().await;
        c.send_raw(bytes).await.unwrap();
        assert!(
            c.is_closed_by_broker().await,
            "{what}: the broker kept the connection open"
        );
        self.assert_serving(what).await;
    }
}

fn be32(n: i32) -> [u8; 4] {
    n.to_be_bytes()
}

/// A frame whose header is real (so the broker reads the body) but whose
/// body is `body`, as a hostile client would send it.
fn hostile(key: ApiKey, version: i16, body: &[u8]) -> Bytes {
    raw_frame(key as i16, version, 1, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_lengths_outside_1_to_max_frame_bytes_close_the_connection() {
    let broker = TestBroker::start(|_| {}).await;
    let over = i32::try_from(MAX_FRAME_BYTES + 1).unwrap();
    for len in [-1, i32::MIN, 0, 1, 7, over, i32::MAX] {
        let mut bytes = be32(len).to_vec();
        bytes.extend([0u8; 64]);
        broker
            .assert_closes(&format!("frame length {len}"), &bytes)
            .await;
    }
    // The largest frame allowed is read whole, then judged on its content:
    // an ApiVersions padded to the limit is answered (Kafka ignores bytes
    // after the last field), a Metadata whose topic count is junk is not.
    let padded = |key: ApiKey, fill: u8| {
        let mut f = BytesMut::new();
        f.put_i32(i32::try_from(MAX_FRAME_BYTES).unwrap());
        f.put_i16(key as i16);
        f.put_i16(if key == ApiKey::Metadata { 1 } else { 0 });
        f.put_i32(1);
        f.put_i16(-1);
        f.resize(4 + MAX_FRAME_BYTES, fill);
        f
    };
    let mut c = broker.client().await;
    c.send_raw(&padded(ApiKey::ApiVersions, 0)).await.unwrap();
    let answer = c.read_frame().await.unwrap().expect("an answer");
    assert_eq!(&answer[..4], &1i32.to_be_bytes());
    broker
        .assert_closes(
            "a max_frame_bytes Metadata of junk",
            &padded(ApiKey::Metadata, 0xab),
        )
        .await;
    assert_eq!(panics().load(Ordering::SeqCst), 0, "a task panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_close_the_connection() {
    let broker = TestBroker::start(|_| {}).await;
    broker
        .assert_closes("an HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    broker
        .assert_closes(
            "a TLS ClientHello",
            &[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
        )
        .await;
    let mut noise = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push(x as u8);
    }
    broker.assert_closes("4 KiB of noise", &noise).await;
    // Framed noise: a plausible length, then junk where the header goes.
    let mut framed = be32(40).to_vec();
    framed.extend(&noise[..40]);
    broker.assert_closes("a framed junk header", &framed).await;
    // A real header, a junk body.
    broker
        .assert_closes(
            "Metadata v1 with a junk body",
            &hostile(ApiKey::Metadata, 1, &noise[..100]),
        )
        .await;
    assert_eq!(panics().load(Ordering::SeqCst), 0, "a task panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_array_lengths_in_tiny_bodies_do_not_take_the_broker_down() {
    // kafka-protocol 0.18 reserves room for an array's claimed length before
    // reading it; the allocation failure aborts the process. These are the
    // bodies that did it, sent over the wire.
    let broker = TestBroker::start(|_| {}).await;
    let mut produce_v3 = Vec::new();
    produce_v3.extend([0xff, 0xff]); // transactional_id: null
    produce_v3.extend(1i16.to_be_bytes()); // acks
    produce_v3.extend(30_000i32.to_be_bytes()); // timeout_ms
    produce_v3.extend(be32(0x7fff_ffff)); // topic_data: 2^31-1 topics
    produce_v3.extend([0, 0]);
    assert_eq!(produce_v3.len(), 14);
    broker
        .assert_closes(
            "Produce v3 claiming 2^31-1 topics",
            &hostile(ApiKey::Produce, 3, &produce_v3),
        )
        .await;
    broker
        .assert_closes(
            "Metadata v1 claiming 2^31-1 topics",
            &hostile(ApiKey::Metadata, 1, &be32(0x7fff_ffff)),
        )
        .await;
    broker
        .assert_closes(
            "Metadata v1 claiming 2^30 topics",
            &hostile(ApiKey::Metadata, 1, &be32(1 << 30)),
        )
        .await;
    // Flexible versions: a compact array length as a varint, and the
    // request header's tagged fields (header v2).
    let mut metadata_v9 = Vec::new();
    metadata_v9.extend(raw_header(ApiKey::Metadata, 9));
    metadata_v9.push(0); // header: no tagged fields
    metadata_v9.extend([0xff, 0xff, 0xff, 0xff, 0x07]); // 2^31-2 topics
    metadata_v9.extend([1, 0, 0]);
    broker
        .assert_closes("Metadata v9 claiming 2^31-2 topics", &framed(&metadata_v9))
        .await;
    let mut fetch_v12 = Vec::new();
    fetch_v12.extend(raw_header(ApiKey::Fetch, 12));
    fetch_v12.push(0);
    fetch_v12.extend(be32(-1)); // replica_id
    fetch_v12.extend([0; 12]); // max_wait_ms, min_bytes, max_bytes
    fetch_v12.push(0); // isolation_level
    fetch_v12.extend([0; 8]); // session id and epoch
    fetch_v12.extend([0xfe, 0xff, 0xff, 0xff, 0x0f]); // topics: 2^32-3
    broker
        .assert_closes("Fetch v12 claiming 2^32-3 topics", &framed(&fetch_v12))
        .await;
    let mut api_versions_v3 = Vec::new();
    api_versions_v3.extend(raw_header(ApiKey::ApiVersions, 3));
    api_versions_v3.push(0);
    api_versions_v3.extend([0xff, 0xff, 0xff, 0xff, 0x0f]); // client name: 4 GiB
    broker
        .assert_closes(
            "ApiVersions v3 with a 4 GiB client name",
            &framed(&api_versions_v3),
        )
        .await;
    let mut header_tags = Vec::new();
    header_tags.extend(raw_header(ApiKey::Metadata, 12));
    header_tags.extend([0xff, 0xff, 0xff, 0xff, 0x0f]); // 2^32-1 header tags
    broker
        .assert_closes("a header with 2^32-1 tagged fields", &framed(&header_tags))
        .await;
    assert_eq!(panics().load(Ordering::SeqCst), 0, "a task panicked");
}

/// api key, version, correlation id, null client id.
fn raw_header(key: ApiKey, version: i16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend((key as i16).to_be_bytes());
    h.extend(version.to_be_bytes());
    h.extend(be32(7));
    h.extend([0xff, 0xff]);
    h
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = be32(i32::try_from(body.len()).unwrap()).to_vec();
    f.extend(body);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_apis_and_unserved_versions_close_the_connection() {
    let broker = TestBroker::start(|_| {}).await;
    for (what, key, version) in [
        ("api key 999", 999, 0),
        ("api key -1", -1, 0),
        ("api key 32767", i16::MAX, 0),
        (
            "AddPartitionsToTxn: transactions are not served",
            ApiKey::AddPartitionsToTxn as i16,
            0,
        ),
        ("Produce v99", ApiKey::Produce as i16, 99),
        ("Produce v2, older than served", ApiKey::Produce as i16, 2),
        ("Produce v-1", ApiKey::Produce as i16, -1),
        ("Fetch v3", ApiKey::Fetch as i16, 3),
        ("Metadata v13", ApiKey::Metadata as i16, 13),
    ] {
        broker
            .assert_closes(what, &raw_frame(key, version, 5, &[0, 0, 0, 0]))
            .await;
    }
    // A valid request in an unserved version is refused just the same.
    let request = produce_request("t", 0, 1, batch(&[b"x"]));
    let mut bytes = frame(&request, 9, 3).to_vec();
    bytes[6..8].copy_from_slice(&99i16.to_be_bytes());
    broker
        .assert_closes("a whole Produce v9 labelled v99", &bytes)
        .await;
    assert_eq!(panics().load(Ordering::SeqCst), 0, "a task panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_and_vanishing_clients_leave_the_broker_serving() {
    let broker = TestBroker::start(|_| {}).await;
    let addr = broker.running.addr();
    // A frame that promises 100 bytes and brings 10, then the client goes.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&be32(100)).await.unwrap();
    s.write_all(&[0u8; 10]).await.unwrap();
    drop(s);
    broker.assert_serving("a truncated frame").await;
    // Half a length prefix.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0]).await.unwrap();
    drop(s);
    broker.assert_serving("half a length prefix").await;
    // A frame too short for its header (no client id).
    let mut short = be32(8).to_vec();
    short.extend(raw_header(ApiKey::Metadata, 1)[..8].iter());
    broker
        .assert_closes("a header without its client id", &short)
        .await;
    // A client that sends a request and leaves before the answer.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let long_poll = fetch_request("gone", 0, 0, 1 << 20)
        .with_max_wait_ms(2_000)
        .with_min_bytes(1);
    s.write_all(&frame(&long_poll, 12, 1)).await.unwrap();
    drop(s);
    broker.assert_serving("a client leaving mid-request").await;
    assert_eq!(panics().load(Ordering::SeqCst), 0, "a task panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_and_the_others_served() {
    let broker = TestBroker::start(|c| c.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = broker.client().await;
        c.api_versions().await.unwrap();
        held.push(c);
        // Distinct completion times, so the longest idle is the first.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // At the limit, a new connection takes the place of the one that has
    // gone longest without completing a request: the limit holds, and a
    // client is never locked out by idle connections.
    for round in 0..2 {
        let mut extra = broker.client().await;
        extra
            .api_versions()
            .await
            .unwrap_or_else(|e| panic!("round {round}: the new connection was not served: {e}"));
        let mut oldest = held.remove(0);
        assert!(
            oldest.is_closed_by_broker().await,
            "round {round}: the longest idle connection was kept past max_connections"
        );
        // The others are still served; served in this order, the first is
        // again the longest idle.
        held.push(extra);
        for c in &mut held {
            c.api_versions().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A slot frees when a client leaves (once the broker has seen it go):
    // no one is pushed out then.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = broker.client().await;
        if c.api_versions().await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot freed 5 s after a client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in &mut held {
        c.api_versions().await.unwrap();
    }
    assert_eq!(panics().load(Ordering::SeqCst), 0, "a task panicked");
}

/// xorshift64*: the fuzz loop's randomness, seeded so a failure repeats.
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

/// Valid requests of every served API, in several versions each.
fn corpus() -> Vec<Vec<u8>> {
    let text = |s: &str| StrBytes::from_string(s.to_owned());
    let metadata = |v: i16| {
        let r = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("fuzzed"))),
        ]));
        let r = if v >= 4 {
            r.with_allow_auto_topic_creation(false)
        } else {
            r
        };
        frame(&r, v, 11).to_vec()
    };
    let list_offsets = |v: i16| {
        let r = ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic_name("fuzzed"))
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(-2),
                    ]),
            ]);
        frame(&r, v, 12).to_vec()
    };
    let mut all = Vec::new();
    for v in 0..=3 {
        all.push(frame(&ApiVersionsRequest::default(), v, 10).to_vec());
    }
    for v in [0, 1, 4, 9, 12] {
        all.push(metadata(v));
    }
    for v in [3, 7, 9] {
        let r = produce_request("fuzzed", 0, 1, batch(&[b"fuzz", b"more fuzz"]));
        all.push(frame(&r, v, 13).to_vec());
    }
    for v in [4, 11, 12] {
        all.push(frame(&fetch_request("fuzzed", 0, 0, 1 << 16), v, 14).to_vec());
    }
    for v in [1, 4, 7] {
        all.push(list_offsets(v));
    }
    for v in [1, 4] {
        let r = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(text("fuzzed"))
                .with_configuration_keys(None),
        ]);
        all.push(frame(&r, v, 15).to_vec());
    }
    for v in [0, 4] {
        let r = InitProducerIdRequest::default().with_transactional_id(None);
        all.push(frame(&r, v, 16).to_vec());
    }
    let create = CreateTopicsRequest::default()
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(topic_name("fuzz-created"))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ])
        .with_validate_only(true);
    all.push(frame(&create, 5, 17).to_vec());
    let delete = DeleteTopicsRequest::default().with_topics(vec![
        DeleteTopicState::default().with_name(Some(topic_name("fuzz-none"))),
    ]);
    all.push(frame(&delete, 6, 18).to_vec());
    all
}

/// One mutation of a valid frame: bytes flipped, lengths set to extremes,
/// bytes cut or inserted; mostly with the size prefix fixed up so the
/// broker reads the mangled request whole.
fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let mut body = valid[4..].to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let at = rng.below(body.len());
        match rng.below(6) {
            0 => body[at] ^= 1 << rng.below(8),
            1 => body[at] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff][rng.below(6)],
            2 if at + 4 <= body.len() => {
                let extreme = [0x7fff_ffffi32, -1, i32::MIN, 0, 1 << 24, 0xffff][rng.below(6)];
                body[at..at + 4].copy_from_slice(&extreme.to_be_bytes());
            }
            3 => body.truncate(at.max(8)),
            4 => {
                let n = 1 + rng.below(8);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                body.splice(at..at, junk);
            }
            _ => {
                // Varint-shaped junk, where flexible versions keep lengths.
                body.splice(at..at, [0xff, 0xff, 0xff, 0xff, 0x0f]);
            }
        }
    }
    let mut frame = Vec::with_capacity(body.len() + 4);
    let len = i32::try_from(body.len()).unwrap();
    frame.extend(match rng.below(10) {
        // Sometimes the size prefix lies.
        0 => len.wrapping_add(rng.below(16) as i32 - 8).to_be_bytes(),
        _ => len.to_be_bytes(),
    });
    frame.extend(body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_over_the_wire_never_take_the_broker_down() {
    let broker = TestBroker::start(|c| c.max_connections = 4096).await;
    let mut setup = broker.client().await;
    let created = setup
        .call(
            &CreateTopicsRequest::default().with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic_name("fuzzed"))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
            ]),
            5,
        )
        .await
        .unwrap();
    assert_eq!(created.topics[0].error_code, 0);
    let before = setup
        .call(&produce_request("fuzzed", 0, -1, batch(&[b"kept"])), 9)
        .await
        .unwrap();
    assert_eq!(before.responses[0].partition_responses[0].base_offset, 0);

    let corpus = corpus();
    let mut rng = Rng(0x5eed_f7a1_1234_5678);
    let started = Instant::now();
    let (mut sent, mut answered, mut closed, mut silent) = (0, 0, 0, 0);
    while sent < 400 && started.elapsed() < Duration::from_secs(8) {
        let valid = &corpus[rng.below(corpus.len())];
        let bytes = mutate(&mut rng, valid);
        let mut c = broker.client().await;
        if c.send_raw(&bytes).await.is_ok() {
            // An answer, a close, or silence (a long poll, a frame the broker
            // still waits on): any of them is fine, only briefly awaited.
            match tokio::time::timeout(Duration::from_millis(100), c.read_frame()).await {
                Ok(Ok(Some(_))) => answered += 1,
                Ok(_) => closed += 1,
                Err(_) => silent += 1,
            }
        }
        sent += 1;
        if sent % 50 == 0 {
            broker
                .assert_serving(&format!("{sent} mutated requests"))
                .await;
        }
    }
    eprintln!("{sent} mutated requests: {answered} answered, {closed} closed, {silent} silent");
    assert!(sent >= 200, "only {sent} mutated requests were sent");
    // Mutations that keep a request decodable reach the handlers too.
    assert!(
        answered > 0 && closed > 0,
        "the mutations only ever hit one path"
    );
    broker.assert_serving("the fuzz loop").await;
    // What was stored before is still there.
    let r = setup
        .call(&fetch_request("fuzzed", 0, 0, 1 << 20), 12)
        .await
        .unwrap();
    let got = records(r.responses[0].partitions[0].records.as_ref().unwrap());
    assert_eq!(got[0].2, Bytes::from_static(b"kept"));
    assert_eq!(panics().load(Ordering::SeqCst), 0, "a task panicked");
}
