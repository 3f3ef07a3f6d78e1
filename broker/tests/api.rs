//! Every API the broker serves, in process, over a real TCP socket: what a
//! Kafka client sends and what it must get back.

#![allow(clippy::unwrap_used)]

mod client;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest,
    DeleteTopicsRequest, DescribeConfigsRequest, FetchRequest, InitProducerIdRequest,
    ListOffsetsRequest, MetadataRequest, ProduceRequest, ProducerId,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::records::IEEE;
use tally_broker::config::BrokerConfig;
use tally_broker::server::{RunningBroker, start};

use client::{
    Client, Producer, batch, batch_at, decode_response, fetch_request, frame, now_ms,
    produce_request, raw_frame, records, topic_name,
};

// Kafka's error codes, as the protocol numbers them.
const NONE: i16 = 0;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_REQUIRED_ACKS: i16 = 21;
const UNSUPPORTED_VERSION: i16 = 35;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const INVALID_CONFIG: i16 = 40;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_RECORD: i16 = 87;
const UNKNOWN_TOPIC_ID: i16 = 100;

// DescribeConfigs' resource types and config sources.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC_CONFIG: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

struct TestBroker {
    running: RunningBroker,
    _dir: tempfile::TempDir,
}

impl TestBroker {
    async fn start(tune: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = BrokerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            data_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        };
        tune(&mut cfg);
        let running = start(cfg).await.unwrap();
        TestBroker { running, _dir: dir }
    }

    async fn client(&self) -> Client {
        Client::connect(self.running.addr()).await.unwrap()
    }
}

async fn default_broker() -> TestBroker {
    TestBroker::start(|_| {}).await
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

// ---------------------------------------------------------------------------
// Requests the tests share.

fn creatable(name: &str, partitions: i32, configs: &[(&str, &str)]) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(topic_name(name))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(text(k))
                        .with_value(Some(text(v)))
                })
                .collect(),
        )
}

async fn create_topics(
    c: &mut Client,
    topics: Vec<CreatableTopic>,
    validate_only: bool,
    version: i16,
) -> Vec<CreatableTopicResult> {
    let request = CreateTopicsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(10_000)
        .with_validate_only(validate_only);
    c.call(&request, version).await.unwrap().topics
}

async fn create_topic(c: &mut Client, name: &str, partitions: i32) -> CreatableTopicResult {
    let result = create_topics(c, vec![creatable(name, partitions, &[])], false, 7)
        .await
        .remove(0);
    assert_eq!(result.error_code, NONE, "create {name}: {result:?}");
    result
}

async fn metadata_topic(c: &mut Client, name: &str, version: i16) -> MetadataResponseTopic {
    let mut request = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name(name))),
    ]));
    if version >= 4 {
        request = request.with_allow_auto_topic_creation(false);
    }
    let mut response = c.call(&request, version).await.unwrap();
    assert_eq!(response.topics.len(), 1);
    response.topics.remove(0)
}

async fn produce_with(
    c: &mut Client,
    topic: &str,
    partition: i32,
    records: Bytes,
    version: i16,
) -> PartitionProduceResponse {
    let mut response = c
        .call(&produce_request(topic, partition, -1, records), version)
        .await
        .unwrap();
    assert_eq!(response.responses.len(), 1);
    assert_eq!(response.responses[0].partition_responses.len(), 1);
    response.responses.remove(0).partition_responses.remove(0)
}

/// Produces one plain batch with acks=-1 and returns its base offset.
async fn produce(c: &mut Client, topic: &str, partition: i32, values: &[&[u8]]) -> i64 {
    let answer = produce_with(c, topic, partition, batch(values), 9).await;
    assert_eq!(answer.error_code, NONE, "{answer:?}");
    answer.base_offset
}

async fn fetch_partition(c: &mut Client, request: &FetchRequest, version: i16) -> PartitionData {
    let mut response = c.call(request, version).await.unwrap();
    assert_eq!(response.error_code, NONE);
    assert_eq!(response.responses.len(), 1);
    assert_eq!(response.responses[0].partitions.len(), 1);
    response.responses.remove(0).partitions.remove(0)
}

async fn fetch_from(c: &mut Client, topic: &str, partition: i32, offset: i64) -> PartitionData {
    fetch_partition(c, &fetch_request(topic, partition, offset, 1 << 20), 12).await
}

fn values(records: &[(i64, i64, Bytes)]) -> Vec<(i64, Vec<u8>)> {
    records
        .iter()
        .map(|(offset, _, value)| (*offset, value.to_vec()))
        .collect()
}

fn list_offsets_request(topic: &str, partition: i32, timestamp: i64) -> ListOffsetsRequest {
    ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(timestamp),
                ]),
        ])
}

/// (error, timestamp, offset) of one ListOffsets query.
async fn list_offset(
    c: &mut Client,
    topic: &str,
    partition: i32,
    timestamp: i64,
    version: i16,
) -> (i16, i64, i64) {
    let response = c
        .call(&list_offsets_request(topic, partition, timestamp), version)
        .await
        .unwrap();
    let p = &response.topics[0].partitions[0];
    (p.error_code, p.timestamp, p.offset)
}

async fn log_end(c: &mut Client, topic: &str, partition: i32) -> i64 {
    let (error, _, offset) = list_offset(c, topic, partition, -1, 7).await;
    assert_eq!(error, NONE);
    offset
}

fn supported_table() -> Vec<(i16, i16, i16)> {
    tally_broker::SUPPORTED
        .iter()
        .map(|(key, min, max)| (*key as i16, *min, *max))
        .collect()
}

fn advertised(response: &ApiVersionsResponse) -> Vec<(i16, i16, i16)> {
    response
        .api_keys
        .iter()
        .map(|a| (a.api_key, a.min_version, a.max_version))
        .collect()
}

// ---------------------------------------------------------------------------
// ApiVersions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_advertises_exactly_the_served_table_in_every_version() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    for version in 0..=3 {
        let mut request = ApiVersionsRequest::default();
        if version >= 3 {
            request = request
                .with_client_software_name(text("tally-tests"))
                .with_client_software_version(text("1.0"));
        }
        let response = c.call(&request, version).await.unwrap();
        assert_eq!(response.error_code, NONE, "v{version}");
        assert_eq!(advertised(&response), supported_table(), "v{version}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_in_an_unknown_version_gets_a_v0_answer_with_the_ranges() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    // A client newer than the broker sends its own newest version; the
    // body may be anything, and the answer is v0 so that any client reads it.
    c.send_raw(&raw_frame(ApiKey::ApiVersions as i16, 99, 4242, &[0, 0, 0]))
        .await
        .unwrap();
    let mut frame = c.read_frame().await.unwrap().expect("an answer");
    let (id, response) = {
        let id = i32::from_be_bytes(frame[..4].try_into().unwrap());
        let mut body = frame.split_off(4);
        (id, ApiVersionsResponse::decode(&mut body, 0).unwrap())
    };
    assert_eq!(id, 4242);
    assert_eq!(response.error_code, UNSUPPORTED_VERSION);
    assert_eq!(advertised(&response), supported_table());
    // The connection stays usable: the client retries in a version it knows.
    c.api_versions().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_v3_answer_carries_no_default_tagged_fields() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    let request = ApiVersionsRequest::default()
        .with_client_software_name(text("tally-tests"))
        .with_client_software_version(text("1.0"));
    c.send_raw(&frame(&request, 3, 9)).await.unwrap();
    let raw = c.read_frame().await.unwrap().expect("an answer");
    // The response header stays v0 for ApiVersions (a bare correlation id),
    // then: error code, compact array of (key, min, max, empty tags),
    // throttle time, and the body's tagged fields.
    assert_eq!(&raw[..4], &9i32.to_be_bytes());
    let body = &raw[4..];
    let n = tally_broker::SUPPORTED.len();
    assert!(n < 127, "the compact array length fits one varint byte");
    assert_eq!(&body[..2], &[0, 0], "error code");
    assert_eq!(usize::from(body[2]), n + 1, "compact array length");
    assert_eq!(
        body.len(),
        2 + 1 + n * 7 + 4 + 1,
        "nothing beyond the api table, the throttle time and an empty tag section: {body:02x?}"
    );
    for (i, (key, min, max)) in supported_table().into_iter().enumerate() {
        let entry = &body[3 + i * 7..3 + (i + 1) * 7];
        let mut want = BytesMut::new();
        want.put_i16(key);
        want.put_i16(min);
        want.put_i16(max);
        want.put_u8(0);
        assert_eq!(entry, &want[..], "entry {i}");
    }
    assert_eq!(
        &body[body.len() - 5..],
        &[0, 0, 0, 0, 0],
        "throttle 0, no tags"
    );
}

// ---------------------------------------------------------------------------
// Metadata

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_creates_a_missing_topic_when_auto_create_is_on_and_the_client_allows_it() {
    let broker = TestBroker::start(|c| c.default_partitions = 3).await;
    let mut c = broker.client().await;
    let ask = |name: &str, allow: bool| {
        MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(name))),
            ]))
            .with_allow_auto_topic_creation(allow)
    };
    // The client says no: nothing is created.
    let r = c.call(&ask("orders", false), 9).await.unwrap();
    assert_eq!(r.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    assert!(broker.running.broker().topics().get("orders").is_none());

    let r = c.call(&ask("orders", true), 9).await.unwrap();
    let t = &r.topics[0];
    assert_eq!(t.error_code, NONE);
    assert_eq!(t.name.as_ref().unwrap().0.as_str(), "orders");
    assert_eq!(t.partitions.len(), 3, "default_partitions");
    for (i, p) in t.partitions.iter().enumerate() {
        assert_eq!(p.partition_index, i as i32);
        assert_eq!(p.error_code, NONE);
        assert_eq!(p.leader_id.0, 0);
        assert_eq!(p.replica_nodes, vec![BrokerId(0)]);
        assert_eq!(p.isr_nodes, vec![BrokerId(0)]);
    }
    // The topic is real: a produce to it is appended.
    assert_eq!(produce(&mut c, "orders", 2, &[b"x"]).await, 0);

    // Before v4 there is no flag: the broker's setting decides.
    let v1 = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name("legacy"))),
    ]));
    let r = c.call(&v1, 1).await.unwrap();
    assert_eq!(r.topics[0].error_code, NONE);
    assert_eq!(r.topics[0].partitions.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_does_not_create_topics_when_auto_create_is_off() {
    let broker = TestBroker::start(|c| c.auto_create_topics = false).await;
    let mut c = broker.client().await;
    for version in [1, 4, 9, 12] {
        let mut request = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("orders"))),
        ]));
        if version >= 4 {
            request = request.with_allow_auto_topic_creation(true);
        }
        let r = c.call(&request, version).await.unwrap();
        assert_eq!(
            r.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION,
            "v{version}"
        );
        assert!(r.topics[0].partitions.is_empty());
    }
    assert!(broker.running.broker().topics().all().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_answers_an_invalid_topic_name_with_error_17() {
    for auto_create in [true, false] {
        let broker = TestBroker::start(|c| c.auto_create_topics = auto_create).await;
        let mut c = broker.client().await;
        for name in ["bad name!", "", "..", &"x".repeat(250)] {
            let request = MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(name))),
            ]));
            let r = c.call(&request, 9).await.unwrap();
            assert_eq!(
                r.topics[0].error_code, INVALID_TOPIC_EXCEPTION,
                "\"{name}\" with auto-create {auto_create}"
            );
        }
        assert!(broker.running.broker().topics().all().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_v0_v1_v9_and_v12_decode_and_describe_the_cluster() {
    let broker = TestBroker::start(|c| c.auto_create_topics = false).await;
    let mut c = broker.client().await;
    let created = create_topic(&mut c, "orders", 2).await;
    create_topic(&mut c, "payments", 1).await;

    for version in [0, 1, 9, 12] {
        // "All topics" is an empty list in v0 and null from v1 on.
        let all = if version == 0 {
            MetadataRequest::default().with_topics(Some(Vec::new()))
        } else {
            MetadataRequest::default().with_topics(None)
        };
        let all = if version >= 4 {
            all.with_allow_auto_topic_creation(false)
        } else {
            all
        };
        let r = c.call(&all, version).await.unwrap();
        assert_eq!(r.brokers.len(), 1, "v{version}");
        assert_eq!(r.brokers[0].node_id.0, 0);
        assert_eq!(r.brokers[0].host.as_str(), "127.0.0.1");
        if version >= 1 {
            assert_eq!(r.controller_id.0, 0, "v{version}");
        }
        if version >= 2 {
            assert!(r.cluster_id.as_ref().is_some_and(|id| !id.is_empty()));
        }
        let mut names: Vec<(String, usize)> = r
            .topics
            .iter()
            .map(|t| {
                assert_eq!(t.error_code, NONE);
                (t.name.as_ref().unwrap().0.to_string(), t.partitions.len())
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![("orders".to_owned(), 2), ("payments".to_owned(), 1)],
            "v{version}"
        );

        let t = metadata_topic(&mut c, "orders", version).await;
        assert_eq!(t.error_code, NONE);
        if version >= 10 {
            assert_eq!(t.topic_id, created.topic_id, "v{version} topic id");
        }
    }
    // From v1 on, an empty list asks for no topics at all.
    let none = MetadataRequest::default().with_topics(Some(Vec::new()));
    assert!(c.call(&none, 1).await.unwrap().topics.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_advertises_the_port_the_listener_is_bound_to() {
    // Listening on port 0 (as tests and embedders do) binds a free port;
    // clients reconnect to what Metadata advertises, so it must be that port.
    let broker = default_broker().await;
    let addr = broker.running.addr();
    let mut c = broker.client().await;
    let r = c
        .call(&MetadataRequest::default().with_topics(None), 12)
        .await
        .unwrap();
    let advertised = (r.brokers[0].host.to_string(), r.brokers[0].port);
    assert_eq!(
        advertised,
        (addr.ip().to_string(), i32::from(addr.port())),
        "Metadata advertises a port no client can connect to"
    );
}

// ---------------------------------------------------------------------------
// CreateTopics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_creates_partitions_and_echoes_configs() {
    let broker = TestBroker::start(|c| {
        c.auto_create_topics = false;
        c.default_partitions = 2;
    })
    .await;
    let mut c = broker.client().await;
    for version in 2..=7 {
        let name = format!("created-v{version}");
        let r = create_topics(
            &mut c,
            vec![creatable(
                &name,
                3,
                &[("retention.ms", "60000"), ("segment.bytes", "1048576")],
            )],
            false,
            version,
        )
        .await;
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.error_code, NONE, "v{version}: {r:?}");
        assert_eq!(r.name.0.as_str(), name);
        if version >= 5 {
            assert_eq!(r.num_partitions, 3);
            assert_eq!(r.replication_factor, 1);
            let configs: BTreeMap<String, (Option<String>, i8)> = r
                .configs
                .as_ref()
                .expect("configs from v5 on")
                .iter()
                .map(|e| {
                    (
                        e.name.to_string(),
                        (e.value.as_ref().map(|v| v.to_string()), e.config_source),
                    )
                })
                .collect();
            assert_eq!(
                configs["retention.ms"],
                (Some("60000".to_owned()), SOURCE_TOPIC_CONFIG)
            );
            assert_eq!(
                configs["segment.bytes"],
                (Some("1048576".to_owned()), SOURCE_TOPIC_CONFIG)
            );
            assert_eq!(
                configs["cleanup.policy"],
                (Some("delete".to_owned()), SOURCE_DEFAULT)
            );
        }
        if version >= 7 {
            assert!(!r.topic_id.is_nil());
        }
        let t = metadata_topic(&mut c, &name, 9).await;
        assert_eq!(t.error_code, NONE);
        assert_eq!(t.partitions.len(), 3);
    }

    // -1 partitions and -1 replication factor take the broker's defaults.
    let r = create_topics(
        &mut c,
        vec![creatable("defaulted", -1, &[]).with_replication_factor(-1)],
        false,
        7,
    )
    .await;
    assert_eq!(r[0].error_code, NONE, "{:?}", r[0]);
    assert_eq!(r[0].num_partitions, 2);
    assert_eq!(
        metadata_topic(&mut c, "defaulted", 9)
            .await
            .partitions
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_refuses_what_a_single_broker_cannot_do() {
    let broker = TestBroker::start(|c| c.auto_create_topics = false).await;
    let mut c = broker.client().await;
    create_topic(&mut c, "taken", 1).await;
    let r = create_topics(
        &mut c,
        vec![
            creatable("replicated", 1, &[]).with_replication_factor(2),
            creatable("taken", 1, &[]),
            creatable("badconfig", 1, &[("retention.ms", "soon")]),
            creatable("unknownconfig", 1, &[("flush.millis", "10")]),
            creatable("compacted", 1, &[("cleanup.policy", "compact")]),
            creatable("nopartitions", 0, &[]),
            creatable("bad name!", 1, &[]),
        ],
        false,
        5,
    )
    .await;
    let codes: Vec<(String, i16)> = r
        .iter()
        .map(|t| (t.name.0.to_string(), t.error_code))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("replicated".to_owned(), INVALID_REPLICATION_FACTOR),
            ("taken".to_owned(), TOPIC_ALREADY_EXISTS),
            ("badconfig".to_owned(), INVALID_CONFIG),
            ("unknownconfig".to_owned(), INVALID_CONFIG),
            ("compacted".to_owned(), INVALID_CONFIG),
            ("nopartitions".to_owned(), INVALID_PARTITIONS),
            ("bad name!".to_owned(), INVALID_TOPIC_EXCEPTION),
        ]
    );
    for t in &r {
        let message = t.error_message.as_ref().map(|m| m.to_string());
        assert!(
            message.as_ref().is_some_and(|m| !m.is_empty()),
            "{}: an error message says why",
            t.name.0
        );
    }
    let message = r[2].error_message.as_ref().unwrap().to_string();
    assert!(message.contains("soon"), "names the bad value: {message}");
    let names: Vec<String> = broker
        .running
        .broker()
        .topics()
        .all()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(
        names,
        vec!["taken".to_owned()],
        "nothing refused was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_validate_only_checks_but_creates_nothing() {
    let broker = TestBroker::start(|c| c.auto_create_topics = false).await;
    let mut c = broker.client().await;
    create_topic(&mut c, "taken", 1).await;
    let r = create_topics(
        &mut c,
        vec![
            creatable("dry", 4, &[("retention.ms", "1000")]),
            creatable("taken", 1, &[]),
            creatable("drybad", 1, &[("retention.ms", "x")]),
        ],
        true,
        7,
    )
    .await;
    assert_eq!(r[0].error_code, NONE, "{:?}", r[0]);
    assert_eq!(r[0].num_partitions, 4);
    assert_eq!(r[1].error_code, TOPIC_ALREADY_EXISTS);
    assert_eq!(r[2].error_code, INVALID_CONFIG);
    let t = metadata_topic(&mut c, "dry", 12).await;
    assert_eq!(t.error_code, UNKNOWN_TOPIC_OR_PARTITION);
    assert!(broker.running.broker().topics().get("dry").is_none());
    // It can still be created for real afterwards.
    create_topic(&mut c, "dry", 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_validate_only_answers_the_partition_count_it_would_create() {
    // Kafka resolves -1 to num.partitions before answering, validate_only or not.
    let broker = TestBroker::start(|c| c.default_partitions = 5).await;
    let mut c = broker.client().await;
    let r = create_topics(&mut c, vec![creatable("dry", -1, &[])], true, 7).await;
    assert_eq!(r[0].error_code, NONE, "{:?}", r[0]);
    assert_eq!(r[0].num_partitions, 5, "the default the topic would get");
}

// ---------------------------------------------------------------------------
// DeleteTopics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_topics_by_name_and_by_id() {
    let broker = TestBroker::start(|c| c.auto_create_topics = false).await;
    let mut c = broker.client().await;
    for name in ["a", "b", "c", "d"] {
        create_topic(&mut c, name, 1).await;
    }
    let id_of_c = metadata_topic(&mut c, "c", 12).await.topic_id;
    produce(&mut c, "a", 0, &[b"gone soon"]).await;

    // v1-5 name topics in a plain list.
    for (version, name) in [(1, "a"), (4, "d")] {
        let request = DeleteTopicsRequest::default()
            .with_topic_names(vec![topic_name(name), topic_name("never-was")])
            .with_timeout_ms(5_000);
        let r = c.call(&request, version).await.unwrap();
        let codes: Vec<(String, i16)> = r
            .responses
            .iter()
            .map(|t| (t.name.as_ref().unwrap().0.to_string(), t.error_code))
            .collect();
        assert_eq!(
            codes,
            vec![
                (name.to_owned(), NONE),
                ("never-was".to_owned(), UNKNOWN_TOPIC_OR_PARTITION)
            ],
            "v{version}"
        );
    }
    // v6 names them or gives their ids.
    let request = DeleteTopicsRequest::default()
        .with_topics(vec![
            DeleteTopicState::default().with_name(Some(topic_name("b"))),
            DeleteTopicState::default()
                .with_name(None)
                .with_topic_id(id_of_c),
            DeleteTopicState::default()
                .with_name(None)
                .with_topic_id(uuid::Uuid::from_u128(42)),
        ])
        .with_timeout_ms(5_000);
    let r = c.call(&request, 6).await.unwrap();
    assert_eq!(r.responses.len(), 3);
    assert_eq!(r.responses[0].error_code, NONE);
    assert_eq!(r.responses[0].name.as_ref().unwrap().0.as_str(), "b");
    assert_eq!(r.responses[1].error_code, NONE);
    assert_eq!(r.responses[1].name.as_ref().unwrap().0.as_str(), "c");
    assert_eq!(r.responses[1].topic_id, id_of_c);
    assert_eq!(r.responses[2].error_code, UNKNOWN_TOPIC_ID);

    for name in ["a", "b", "c", "d"] {
        let t = metadata_topic(&mut c, name, 9).await;
        assert_eq!(t.error_code, UNKNOWN_TOPIC_OR_PARTITION, "{name} is gone");
    }
    // A topic of the same name starts again from offset 0.
    create_topic(&mut c, "a", 1).await;
    assert_eq!(log_end(&mut c, "a", 0).await, 0);
}

// ---------------------------------------------------------------------------
// DescribeConfigs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_configs_of_a_topic_and_of_the_broker() {
    let broker = TestBroker::start(|c| {
        c.auto_create_topics = false;
        c.default_partitions = 4;
    })
    .await;
    let mut c = broker.client().await;
    let r = create_topics(
        &mut c,
        vec![creatable("orders", 1, &[("retention.ms", "1234")])],
        false,
        7,
    )
    .await;
    assert_eq!(r[0].error_code, NONE);

    let resource = |kind: i8, name: &str, keys: Option<&[&str]>| {
        DescribeConfigsResource::default()
            .with_resource_type(kind)
            .with_resource_name(text(name))
            .with_configuration_keys(keys.map(|ks| ks.iter().map(|k| text(k)).collect()))
    };
    for version in 1..=4 {
        let request = DescribeConfigsRequest::default().with_resources(vec![
            resource(RESOURCE_TOPIC, "orders", None),
            resource(RESOURCE_TOPIC, "orders", Some(&["retention.ms"])),
            resource(RESOURCE_BROKER, "0", None),
            resource(RESOURCE_TOPIC, "missing", None),
        ]);
        let r = c.call(&request, version).await.unwrap();
        assert_eq!(r.results.len(), 4);
        let entries = |i: usize| -> BTreeMap<String, (String, i8)> {
            assert_eq!(r.results[i].error_code, NONE, "v{version} resource {i}");
            r.results[i]
                .configs
                .iter()
                .map(|e| {
                    (
                        e.name.to_string(),
                        (
                            e.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                            e.config_source,
                        ),
                    )
                })
                .collect()
        };
        let topic = entries(0);
        assert_eq!(
            topic["retention.ms"],
            ("1234".to_owned(), SOURCE_TOPIC_CONFIG),
            "v{version}"
        );
        assert_eq!(
            topic["cleanup.policy"],
            ("delete".to_owned(), SOURCE_DEFAULT)
        );
        assert_eq!(
            topic["message.timestamp.type"],
            ("CreateTime".to_owned(), SOURCE_DEFAULT)
        );
        let only = entries(1);
        assert_eq!(
            only.keys().collect::<Vec<_>>(),
            vec!["retention.ms"],
            "configuration_keys filters, v{version}"
        );
        let broker_configs = entries(2);
        assert_eq!(broker_configs["broker.id"].0, "0");
        assert_eq!(broker_configs["num.partitions"].0, "4");
        assert_eq!(broker_configs["auto.create.topics.enable"].0, "false");
        assert_eq!(r.results[3].error_code, UNKNOWN_TOPIC_OR_PARTITION);
        assert_eq!(r.results[3].resource_name.as_str(), "missing");
    }
}

// ---------------------------------------------------------------------------
// Produce

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_with_acks_0_gets_no_answer_but_is_appended() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "fire", 1).await;
    for version in [3, 9] {
        let id = c
            .send(
                &produce_request("fire", 0, 0, batch(&[b"a", b"b"])),
                version,
            )
            .await
            .unwrap();
        // The next answer on the connection is the next request's, with its own id.
        let next = c
            .send(&list_offsets_request("fire", 0, -1), 7)
            .await
            .unwrap();
        assert_eq!(next, id + 1);
        let (got, _) = c.receive::<ListOffsetsRequest>(7).await.unwrap();
        assert_eq!(got, next, "v{version}: no answer to the acks=0 produce");
    }
    assert_eq!(log_end(&mut c, "fire", 0).await, 4);
    let fetched = records(
        fetch_from(&mut c, "fire", 0, 0)
            .await
            .records
            .as_ref()
            .unwrap(),
    );
    assert_eq!(fetched.len(), 4);
}

/// A client that writes a large request a little at a time (as librdkafka
/// does over TLS, one ~2 KB record per write) gets it appended whole, and a
/// request sent right behind it is answered after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_produce_written_in_small_pieces_is_appended_whole() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "trickle", 1).await;
    let values: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            let mut v = format!("record {i} ").into_bytes();
            v.resize(1000, b'a' + (i % 26) as u8);
            v
        })
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    let produce = frame(&produce_request("trickle", 0, -1, batch(&refs)), 9, 41);
    let behind = frame(&list_offsets_request("trickle", 0, -1), 7, 42);
    assert!(produce.len() > 256 * 1024, "{} bytes", produce.len());
    for (i, piece) in produce.chunks(2048).enumerate() {
        c.send_raw(piece).await.unwrap();
        if i % 8 == 7 {
            tokio::time::sleep(Duration::from_micros(300)).await;
        }
    }
    c.send_raw(&behind).await.unwrap();
    let (id, answer) = c.receive::<ProduceRequest>(9).await.unwrap();
    assert_eq!(id, 41);
    let partition = &answer.responses[0].partition_responses[0];
    assert_eq!(partition.error_code, NONE, "{partition:?}");
    assert_eq!(partition.base_offset, 0);
    let (id, answer) = c.receive::<ListOffsetsRequest>(7).await.unwrap();
    assert_eq!(id, 42);
    assert_eq!(answer.topics[0].partitions[0].offset, 300);
    let mut fetched = Vec::new();
    while fetched.len() < values.len() {
        let data = fetch_from(&mut c, "trickle", 0, fetched.len() as i64).await;
        let got = records(data.records.as_ref().unwrap());
        assert!(!got.is_empty(), "nothing fetched at {}", fetched.len());
        fetched.extend(got.into_iter().map(|(_, _, value)| value.to_vec()));
    }
    assert_eq!(fetched, values);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_with_acks_1_and_all_answers_the_offsets_in_every_version() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "acked", 2).await;
    let mut expected = 0;
    for version in 3..=9 {
        for acks in [1, -1] {
            let response = c
                .call(
                    &produce_request("acked", 1, acks, batch(&[b"one", b"two", b"three"])),
                    version,
                )
                .await
                .unwrap();
            let t = &response.responses[0];
            assert_eq!(t.name.0.as_str(), "acked");
            let p = &t.partition_responses[0];
            assert_eq!(p.index, 1);
            assert_eq!(p.error_code, NONE, "v{version} acks {acks}: {p:?}");
            assert_eq!(p.base_offset, expected, "v{version} acks {acks}");
            assert_eq!(p.log_append_time_ms, -1, "CreateTime topics answer -1");
            if version >= 5 {
                assert_eq!(p.log_start_offset, 0);
            }
            expected += 3;
        }
    }
    assert_eq!(log_end(&mut c, "acked", 1).await, expected);
    assert_eq!(log_end(&mut c, "acked", 0).await, 0);

    // acks other than -1, 0 and 1 are refused, and nothing is appended.
    let p = c
        .call(&produce_request("acked", 0, 2, batch(&[b"x"])), 9)
        .await
        .unwrap();
    assert_eq!(
        p.responses[0].partition_responses[0].error_code,
        INVALID_REQUIRED_ACKS
    );
    assert_eq!(log_end(&mut c, "acked", 0).await, 0);

    // Unknown topics and partitions are refused per partition.
    for (topic, partition) in [("acked", 2), ("acked", -1), ("nowhere", 0)] {
        let p = produce_with(&mut c, topic, partition, batch(&[b"x"]), 9).await;
        assert_eq!(
            p.error_code, UNKNOWN_TOPIC_OR_PARTITION,
            "{topic}/{partition}"
        );
        assert_eq!(p.base_offset, -1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_stamps_log_append_time_where_the_topic_asks_for_it() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    let r = create_topics(
        &mut c,
        vec![creatable(
            "stamped",
            1,
            &[("message.timestamp.type", "LogAppendTime")],
        )],
        false,
        7,
    )
    .await;
    assert_eq!(r[0].error_code, NONE);
    let before = now_ms();
    let p = produce_with(
        &mut c,
        "stamped",
        0,
        batch_at(&[b"old"], &[1_000], Producer::PLAIN),
        9,
    )
    .await;
    let after = now_ms();
    assert_eq!(p.error_code, NONE);
    assert!(
        (before..=after).contains(&p.log_append_time_ms),
        "{} within {before}..={after}",
        p.log_append_time_ms
    );
    let fetched = records(
        fetch_from(&mut c, "stamped", 0, 0)
            .await
            .records
            .as_ref()
            .unwrap(),
    );
    assert_eq!(fetched[0].1, p.log_append_time_ms);
}

// ---------------------------------------------------------------------------
// Fetch

/// Produces batches [a b] [c] [d e f] to `topic`/0 and returns their sizes.
async fn three_batches(c: &mut Client, topic: &str) -> Vec<usize> {
    let batches = [
        batch(&[b"a", b"b"]),
        batch(&[b"c"]),
        batch(&[b"d", b"e", b"f"]),
    ];
    let mut sizes = Vec::new();
    for b in batches {
        sizes.push(b.len());
        let p = produce_with(c, topic, 0, b, 9).await;
        assert_eq!(p.error_code, NONE);
    }
    sizes
}

fn letters(s: &str, from: i64) -> Vec<(i64, Vec<u8>)> {
    s.bytes()
        .enumerate()
        .map(|(i, b)| (from + i as i64, vec![b]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_returns_the_produced_batches_in_every_version() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "fetched", 1).await;
    three_batches(&mut c, "fetched").await;
    for version in 4..=12 {
        let p = fetch_partition(&mut c, &fetch_request("fetched", 0, 0, 1 << 20), version).await;
        assert_eq!(p.error_code, NONE, "v{version}");
        assert_eq!(p.high_watermark, 6);
        assert_eq!(p.last_stable_offset, 6);
        if version >= 5 {
            assert_eq!(p.log_start_offset, 0);
        }
        let got = values(&records(p.records.as_ref().unwrap()));
        assert_eq!(got, letters("abcdef", 0), "v{version}");
    }
    // From the middle of a batch: the whole batch holding the offset comes back.
    let p = fetch_from(&mut c, "fetched", 0, 4).await;
    let got = values(&records(p.records.as_ref().unwrap()));
    assert_eq!(got, letters("def", 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_honours_partition_max_bytes_and_max_bytes_but_returns_at_least_one_batch() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "limited", 2).await;
    let sizes = three_batches(&mut c, "limited").await;
    produce(&mut c, "limited", 1, &[b"p1"]).await;

    let with_limits = |max_bytes: i32, partition_max_bytes: i32| {
        FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_bytes(max_bytes)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(topic_name("limited"))
                    .with_partitions(
                        (0..2)
                            .map(|p| {
                                FetchPartition::default()
                                    .with_partition(p)
                                    .with_fetch_offset(0)
                                    .with_partition_max_bytes(partition_max_bytes)
                            })
                            .collect(),
                    ),
            ])
    };
    let addr = broker.running.addr();
    let fetch = |max_bytes, partition_max_bytes| {
        let request = with_limits(max_bytes, partition_max_bytes);
        async move {
            let c = &mut Client::connect(addr).await.unwrap();
            let r = c.call(&request, 12).await.unwrap();
            r.responses[0]
                .partitions
                .iter()
                .map(|p| {
                    assert_eq!(p.error_code, NONE);
                    values(&records(p.records.as_ref().expect("records, never null")))
                })
                .collect::<Vec<_>>()
        }
    };

    // A batch larger than the limit still comes back whole, alone.
    let got = fetch(1 << 20, 1).await;
    assert_eq!(got[0], letters("ab", 0));
    assert_eq!(got[1], vec![(0, b"p1".to_vec())]);
    // Exactly two batches fit.
    let two = i32::try_from(sizes[0] + sizes[1]).unwrap();
    assert_eq!(fetch(1 << 20, two).await[0], letters("abc", 0));
    assert_eq!(fetch(1 << 20, two + 1).await[0], letters("abc", 0));
    // The response limit: the first partition gets one batch, the next nothing.
    let got = fetch(1, 1 << 20).await;
    assert_eq!(got[0], letters("ab", 0));
    assert_eq!(got[1], Vec::new());
    let got = fetch(two, 1 << 20).await;
    assert_eq!(got[0], letters("abc", 0));
    assert_eq!(got[1], Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_of_an_empty_partition_answers_empty_records_not_null() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "empty", 1).await;
    for version in [4, 11, 12] {
        let p = fetch_partition(&mut c, &fetch_request("empty", 0, 0, 1 << 20), version).await;
        assert_eq!(p.error_code, NONE, "v{version}");
        assert_eq!(p.high_watermark, 0);
        assert_eq!(p.records, Some(Bytes::new()), "v{version}: empty, not null");
    }
    // Also at the log end of a partition with data.
    produce(&mut c, "empty", 0, &[b"x"]).await;
    let p = fetch_partition(&mut c, &fetch_request("empty", 0, 1, 1 << 20), 4).await;
    assert_eq!(p.error_code, NONE);
    assert_eq!(p.records, Some(Bytes::new()));
}

fn long_poll(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    fetch_request(topic, 0, offset, 1 << 20)
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_long_poll_returns_as_soon_as_another_connection_produces() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "polled", 1).await;
    let mut producer = broker.client().await;

    let started = Instant::now();
    let waiting = c.send(&long_poll("polled", 0, 500), 12).await.unwrap();
    let produced = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        produce(&mut producer, "polled", 0, &[b"wake up"]).await
    };
    let (offset, answer) = tokio::join!(produced, c.receive::<FetchRequest>(12));
    let elapsed = started.elapsed();
    assert_eq!(offset, 0);
    let (id, response) = answer.unwrap();
    assert_eq!(id, waiting);
    let p = &response.responses[0].partitions[0];
    assert_eq!(
        values(&records(p.records.as_ref().unwrap())),
        vec![(0, b"wake up".to_vec())]
    );
    assert!(
        elapsed < Duration::from_millis(500),
        "answered after {elapsed:?}: the fetch waited out max_wait instead of waking on the produce"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_long_poll_answers_empty_after_max_wait_when_nothing_comes() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "quiet", 1).await;
    create_topic(&mut c, "busy", 1).await;
    produce(&mut c, "quiet", 0, &[b"old"]).await;
    let mut other = broker.client().await;

    let started = Instant::now();
    c.send(&long_poll("quiet", 1, 500), 12).await.unwrap();
    // Appends to another topic wake the fetch, but must not end it.
    let noise = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            produce(&mut other, "busy", 0, &[b"elsewhere"]).await;
        }
    };
    let ((), answer) = tokio::join!(noise, c.receive::<FetchRequest>(12));
    let elapsed = started.elapsed();
    let (_, response) = answer.unwrap();
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, NONE);
    assert_eq!(p.high_watermark, 1);
    assert_eq!(p.records, Some(Bytes::new()));
    assert!(
        elapsed >= Duration::from_millis(500),
        "answered after {elapsed:?}, before max_wait"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
}

/// How long a Fetch with max_wait 3 s takes to be answered.
async fn time_to_answer(c: &mut Client, request: FetchRequest) -> (Duration, PartitionData) {
    let started = Instant::now();
    let p = fetch_partition(c, &request.with_max_wait_ms(3_000), 12).await;
    (started.elapsed(), p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_with_min_bytes_0_answers_at_once() {
    // Kafka: "If the client sets this to 0, the server will always respond
    // immediately."
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "eager", 1).await;
    let request = fetch_request("eager", 0, 0, 1 << 20).with_min_bytes(0);
    let (elapsed, p) = time_to_answer(&mut c, request).await;
    assert_eq!(p.error_code, NONE);
    assert!(
        elapsed < Duration::from_millis(1_500),
        "min_bytes 0 was answered after {elapsed:?}, as if it were 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_answers_a_partition_error_at_once() {
    // Kafka does not hold a fetch whose partitions failed: waiting cannot
    // mend an offset out of range or a partition that does not exist.
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "erring", 1).await;
    for (what, partition, offset, code) in [
        ("an offset out of range", 0, 10, OFFSET_OUT_OF_RANGE),
        ("an unknown partition", 5, 0, UNKNOWN_TOPIC_OR_PARTITION),
    ] {
        let request = fetch_request("erring", partition, offset, 1 << 20).with_min_bytes(1);
        let (elapsed, p) = time_to_answer(&mut c, request).await;
        assert_eq!(p.error_code, code, "{what}");
        assert!(
            elapsed < Duration::from_millis(1_500),
            "{what} was answered after {elapsed:?}: the fetch waited out max_wait"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_outside_the_log_is_offset_out_of_range() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "ranged", 1).await;
    produce(&mut c, "ranged", 0, &[b"a", b"b"]).await;
    for offset in [3, 1_000, -5] {
        for version in [4, 12] {
            let p = fetch_partition(
                &mut c,
                &fetch_request("ranged", 0, offset, 1 << 20),
                version,
            )
            .await;
            assert_eq!(
                p.error_code, OFFSET_OUT_OF_RANGE,
                "offset {offset} v{version}"
            );
            assert_eq!(p.high_watermark, 2);
        }
    }
    // Unknown partitions say so.
    let p = fetch_partition(&mut c, &fetch_request("ranged", 7, 0, 1 << 20), 12).await;
    assert_eq!(p.error_code, UNKNOWN_TOPIC_OR_PARTITION);
}

// ---------------------------------------------------------------------------
// ListOffsets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_earliest_latest_max_timestamp_and_by_timestamp() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "timed", 1).await;
    // Empty: earliest = latest = 0, and no timestamp matches.
    assert_eq!(list_offset(&mut c, "timed", 0, -2, 7).await, (NONE, -1, 0));
    assert_eq!(list_offset(&mut c, "timed", 0, -1, 7).await, (NONE, -1, 0));
    assert_eq!(list_offset(&mut c, "timed", 0, 1, 7).await, (NONE, -1, -1));

    let t = now_ms() - 60_000;
    // Offsets 0..=4 with timestamps t, t+10 | t+20, t+5 | t+30.
    for (values, timestamps) in [
        (vec![&b"0"[..], b"1"], vec![t, t + 10]),
        (vec![b"2", b"3"], vec![t + 20, t + 5]),
        (vec![b"4"], vec![t + 30]),
    ] {
        let p = produce_with(
            &mut c,
            "timed",
            0,
            batch_at(&values, &timestamps, Producer::PLAIN),
            9,
        )
        .await;
        assert_eq!(p.error_code, NONE);
    }
    for version in 1..=7 {
        let (e, _, earliest) = list_offset(&mut c, "timed", 0, -2, version).await;
        let (_, _, latest) = list_offset(&mut c, "timed", 0, -1, version).await;
        assert_eq!((e, earliest, latest), (NONE, 0, 5), "v{version}");
        // The earliest record whose timestamp is at least the one asked for.
        for (asked, want) in [
            (t - 1_000, (t, 0)),
            (t, (t, 0)),
            (t + 6, (t + 10, 1)),
            (t + 10, (t + 10, 1)),
            (t + 15, (t + 20, 2)),
            (t + 25, (t + 30, 4)),
            (t + 30, (t + 30, 4)),
        ] {
            let (e, ts, offset) = list_offset(&mut c, "timed", 0, asked, version).await;
            assert_eq!(
                (e, ts, offset),
                (NONE, want.0, want.1),
                "v{version} at t+{}",
                asked - t
            );
        }
        let (e, ts, offset) = list_offset(&mut c, "timed", 0, t + 31, version).await;
        assert_eq!(
            (e, ts, offset),
            (NONE, -1, -1),
            "v{version}: none that late"
        );
    }
    // MAX_TIMESTAMP (v7): the record with the largest timestamp.
    assert_eq!(
        list_offset(&mut c, "timed", 0, -3, 7).await,
        (NONE, t + 30, 4)
    );
    // Unknown partitions say so.
    assert_eq!(
        list_offset(&mut c, "timed", 3, -1, 7).await.0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        list_offset(&mut c, "untimed", 0, -1, 7).await.0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
}

// ---------------------------------------------------------------------------
// InitProducerId and idempotent produce

async fn init_producer_id(c: &mut Client, version: i16) -> (i64, i16) {
    let mut request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000);
    if version >= 3 {
        request = request
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    let r = c.call(&request, version).await.unwrap();
    assert_eq!(r.error_code, NONE, "v{version}");
    (r.producer_id.0, r.producer_epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_producer_id_hands_out_distinct_ids_in_every_version() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    let mut seen = Vec::new();
    for version in 0..=4 {
        let (id, epoch) = init_producer_id(&mut c, version).await;
        assert!(id >= 0);
        assert_eq!(epoch, 0);
        assert!(!seen.contains(&id), "id {id} handed out twice");
        seen.push(id);
    }
    // A producer that has an id asks for its epoch to be bumped (v3+).
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_producer_id(ProducerId(seen[0]))
        .with_producer_epoch(0);
    let r = c.call(&request, 4).await.unwrap();
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (NONE, seen[0], 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_are_acknowledged_once_and_gaps_refused() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "exactly", 1).await;
    produce(&mut c, "exactly", 0, &[b"plain"]).await;
    let (id, epoch) = init_producer_id(&mut c, 4).await;
    let idempotent = |seq: i32, values: &[&[u8]]| {
        let now = now_ms();
        batch_at(
            values,
            &vec![now; values.len()],
            Producer {
                id,
                epoch,
                base_sequence: seq,
            },
        )
    };
    let first = idempotent(0, &[b"i0", b"i1", b"i2"]);
    let p = produce_with(&mut c, "exactly", 0, first.clone(), 9).await;
    assert_eq!((p.error_code, p.base_offset), (NONE, 1));
    // The same batch again, as a producer retries after a lost answer.
    let p = produce_with(&mut c, "exactly", 0, first.clone(), 9).await;
    assert_eq!(
        (p.error_code, p.base_offset),
        (NONE, 1),
        "the original offset"
    );
    assert_eq!(log_end(&mut c, "exactly", 0).await, 4, "not appended twice");

    let second = idempotent(3, &[b"i3", b"i4"]);
    let p = produce_with(&mut c, "exactly", 0, second.clone(), 9).await;
    assert_eq!((p.error_code, p.base_offset), (NONE, 4));
    // An older retry is still recognised.
    let p = produce_with(&mut c, "exactly", 0, first, 9).await;
    assert_eq!((p.error_code, p.base_offset), (NONE, 1));

    // A gap in the sequence: sequence 5 is next, 10 is not.
    let p = produce_with(&mut c, "exactly", 0, idempotent(10, &[b"i10"]), 9).await;
    assert_eq!(p.error_code, OUT_OF_ORDER_SEQUENCE_NUMBER, "{p:?}");
    assert_eq!(p.base_offset, -1);
    assert_eq!(log_end(&mut c, "exactly", 0).await, 6);

    let p = produce_with(&mut c, "exactly", 0, idempotent(5, &[b"i5"]), 9).await;
    assert_eq!((p.error_code, p.base_offset), (NONE, 6));
    let got = values(&records(
        fetch_from(&mut c, "exactly", 0, 0)
            .await
            .records
            .as_ref()
            .unwrap(),
    ));
    let want: Vec<(i64, Vec<u8>)> = ["plain", "i0", "i1", "i2", "i3", "i4", "i5"]
        .iter()
        .enumerate()
        .map(|(i, v)| (i as i64, v.as_bytes().to_vec()))
        .collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------
// Record batches the broker must refuse

/// A magic 1 message set (Kafka 0.10's format) holding one message.
fn magic_1_message(value: &[u8]) -> Bytes {
    let mut message = BytesMut::new();
    message.put_i8(1); // magic
    message.put_i8(0); // attributes
    message.put_i64(now_ms());
    message.put_i32(-1); // null key
    message.put_i32(i32::try_from(value.len()).unwrap());
    message.extend_from_slice(value);
    let mut set = BytesMut::new();
    set.put_i64(0);
    set.put_i32(i32::try_from(4 + message.len()).unwrap());
    set.put_u32(IEEE.checksum(&message));
    set.extend_from_slice(&message);
    set.freeze()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_refuses_the_old_message_format_and_corrupt_batches() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "strict", 1).await;

    for version in [3, 7, 9] {
        let p = produce_with(&mut c, "strict", 0, magic_1_message(b"old"), version).await;
        assert_eq!(p.error_code, INVALID_RECORD, "magic 1, v{version}: {p:?}");
    }

    let good = batch(&[b"checked"]);
    let mut corrupt = BytesMut::from(&good[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let p = produce_with(&mut c, "strict", 0, corrupt.freeze(), 9).await;
    assert_eq!(p.error_code, CORRUPT_MESSAGE, "{p:?}");
    assert_eq!(p.base_offset, -1);

    assert_eq!(
        log_end(&mut c, "strict", 0).await,
        0,
        "nothing refused was appended"
    );
    let p = produce_with(&mut c, "strict", 0, good, 9).await;
    assert_eq!((p.error_code, p.base_offset), (NONE, 0));
}

// ---------------------------------------------------------------------------
// Pipelining

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_pipelined_requests_are_answered_in_order() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "piped", 1).await;

    let mut wire = BytesMut::new();
    let mut kinds = Vec::new();
    for i in 0..20i32 {
        let id = 100 + i;
        let kind = i % 5;
        let bytes = match kind {
            0 => frame(&ApiVersionsRequest::default(), 2, id),
            1 => frame(
                &produce_request("piped", 0, -1, batch(&[format!("m{i}").as_bytes()])),
                9,
                id,
            ),
            2 => frame(
                &MetadataRequest::default()
                    .with_topics(None)
                    .with_allow_auto_topic_creation(false),
                12,
                id,
            ),
            3 => frame(&fetch_request("piped", 0, 0, 1 << 20), 12, id),
            _ => frame(&list_offsets_request("piped", 0, -1), 7, id),
        };
        wire.extend_from_slice(&bytes);
        kinds.push((id, kind));
    }
    c.send_raw(&wire).await.unwrap();

    let mut produced = Vec::new();
    for (id, kind) in kinds {
        let f = c.read_frame().await.unwrap().expect("an answer");
        let got = match kind {
            0 => decode_response::<ApiVersionsRequest>(f, 2).unwrap().0,
            1 => {
                let (got, r) = decode_response::<ProduceRequest>(f, 9).unwrap();
                let p = &r.responses[0].partition_responses[0];
                assert_eq!(p.error_code, NONE);
                produced.push(p.base_offset);
                got
            }
            2 => decode_response::<MetadataRequest>(f, 12).unwrap().0,
            3 => {
                let (got, r) = decode_response::<FetchRequest>(f, 12).unwrap();
                // Each fetch sees every produce sent before it.
                let p = &r.responses[0].partitions[0];
                assert_eq!(p.high_watermark, produced.len() as i64);
                got
            }
            _ => {
                let (got, r) = decode_response::<ListOffsetsRequest>(f, 7).unwrap();
                assert_eq!(r.topics[0].partitions[0].offset, produced.len() as i64);
                got
            }
        };
        assert_eq!(got, id, "answers come in request order");
    }
    assert_eq!(produced, vec![0, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_not_held_back_by_a_pipelined_acks_0_produce() {
    let broker = default_broker().await;
    let mut c = broker.client().await;
    create_topic(&mut c, "mixed", 1).await;
    // Metadata, then a fire-and-forget produce, sent together; the client
    // then waits for the Metadata answer before sending anything else.
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&frame(
        &MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false),
        12,
        1,
    ));
    wire.extend_from_slice(&frame(
        &produce_request("mixed", 0, 0, batch(&[b"x"])),
        9,
        2,
    ));
    c.send_raw(&wire).await.unwrap();
    let answer = c.read_frame().await;
    let frame = answer.expect("the Metadata answer arrives without a further request");
    let (id, _) = decode_response::<MetadataRequest>(frame.unwrap(), 12).unwrap();
    assert_eq!(id, 1);
}
