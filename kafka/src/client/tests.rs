//! Routing and retries against a canned cluster behind the [`Transport`] seam: each test
//! scripts what the brokers answer (NOT_LEADER then OK, NOT_COORDINATOR, a broker gone)
//! and checks where the client sent what, in which version, and how often.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeGroupsRequest, DescribeGroupsResponse, FetchRequest, FetchResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, ListGroupsRequest,
    ListGroupsResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::*;

fn addr(node: i32) -> BrokerAddr {
    BrokerAddr::new(format!("b{node}"), 9092)
}

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

/// One request as the fake cluster received it.
#[derive(Clone, Debug)]
struct Sent {
    broker: BrokerAddr,
    api_key: i16,
    version: i16,
    body: Bytes,
}

type Script = dyn Fn(&Fake, &Sent) -> Result<Bytes> + Send + Sync;

/// A cluster of canned brokers.
struct Fake {
    versions: Mutex<HashMap<BrokerAddr, ApiVersions>>,
    down: Mutex<HashSet<BrokerAddr>>,
    sent: Mutex<Vec<Sent>>,
    disconnects: Mutex<Vec<BrokerAddr>>,
    script: Box<Script>,
}

/// The versions of a recent Kafka.
fn modern() -> ApiVersions {
    ApiVersions::new([
        (ApiKey::Fetch as i16, 4, 17),
        (ApiKey::ListOffsets as i16, 1, 9),
        (ApiKey::Metadata as i16, 0, 12),
        (ApiKey::OffsetFetch as i16, 1, 9),
        (ApiKey::FindCoordinator as i16, 0, 6),
        (ApiKey::DescribeGroups as i16, 0, 5),
        (ApiKey::ListGroups as i16, 0, 5),
    ])
}

impl Fake {
    fn new(script: impl Fn(&Fake, &Sent) -> Result<Bytes> + Send + Sync + 'static) -> Arc<Fake> {
        Arc::new(Fake {
            versions: Mutex::new(HashMap::new()),
            down: Mutex::new(HashSet::new()),
            sent: Mutex::new(Vec::new()),
            disconnects: Mutex::new(Vec::new()),
            script: Box::new(script),
        })
    }

    fn set_versions(&self, broker: BrokerAddr, versions: ApiVersions) {
        self.versions.lock().unwrap().insert(broker, versions);
    }

    fn take_down(&self, broker: BrokerAddr) {
        self.down.lock().unwrap().insert(broker);
    }

    fn is_down(&self, broker: &BrokerAddr) -> bool {
        self.down.lock().unwrap().contains(broker)
    }

    /// The requests of `api` received so far.
    fn sent(&self, api: ApiKey) -> Vec<Sent> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.api_key == api as i16)
            .cloned()
            .collect()
    }

    fn count(&self, api: ApiKey) -> usize {
        self.sent(api).len()
    }

    fn clear(&self) {
        self.sent.lock().unwrap().clear();
    }
}

impl Transport for Fake {
    fn api_versions<'a>(&'a self, broker: &'a BrokerAddr) -> BoxFuture<'a, Result<ApiVersions>> {
        Box::pin(async move {
            if self.is_down(broker) {
                return Err(Error::Connect {
                    broker: broker.to_string(),
                    reason: "Connection refused".to_owned(),
                });
            }
            Ok(self
                .versions
                .lock()
                .unwrap()
                .get(broker)
                .cloned()
                .unwrap_or_else(modern))
        })
    }

    fn send<'a>(
        &'a self,
        broker: &'a BrokerAddr,
        request: RawRequest,
    ) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            if self.is_down(broker) {
                return Err(Error::Connection {
                    broker: broker.to_string(),
                    reason: "closed by the broker".to_owned(),
                });
            }
            let sent = Sent {
                broker: broker.clone(),
                api_key: request.api_key,
                version: request.version,
                body: request.body,
            };
            self.sent.lock().unwrap().push(sent.clone());
            (self.script)(self, &sent)
        })
    }

    fn disconnect(&self, broker: &BrokerAddr) {
        self.disconnects.lock().unwrap().push(broker.clone());
    }
}

fn encode<T: Encodable>(message: &T, version: i16) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    message.encode(&mut buf, version).unwrap();
    Ok(buf.freeze())
}

fn decode<T: Decodable>(sent: &Sent) -> T {
    T::decode(&mut sent.body.clone(), sent.version).unwrap()
}

/// Metadata with brokers 1..=`brokers` and topic `t`'s partitions led by `leaders`.
fn metadata(brokers: i32, leaders: &[i32], version: i16) -> Result<Bytes> {
    let response = MetadataResponse::default()
        .with_controller_id(BrokerId(1))
        .with_brokers(
            (1..=brokers)
                .map(|n| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(n))
                        .with_host(s(&format!("b{n}")))
                        .with_port(9092)
                })
                .collect(),
        )
        .with_topics(vec![
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(s("t"))))
                .with_partitions(
                    leaders
                        .iter()
                        .enumerate()
                        .map(|(p, leader)| {
                            MetadataResponsePartition::default()
                                .with_partition_index(p as i32)
                                .with_leader_id(BrokerId(*leader))
                                .with_replica_nodes(vec![BrokerId(*leader)])
                                .with_isr_nodes(vec![BrokerId(*leader)])
                        })
                        .collect(),
                ),
        ]);
    encode(&response, version)
}

/// A ListOffsets answer: each asked partition gets `code` (offset 100 + partition when 0).
fn list_offsets_answer(sent: &Sent, code: impl Fn(i32) -> i16) -> Result<Bytes> {
    let request: ListOffsetsRequest = decode(sent);
    let response = ListOffsetsResponse::default().with_topics(
        request
            .topics
            .iter()
            .map(|t| {
                ListOffsetsTopicResponse::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                let c = code(p.partition_index);
                                ListOffsetsPartitionResponse::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(c)
                                    .with_offset(if c == 0 {
                                        100 + i64::from(p.partition_index)
                                    } else {
                                        -1
                                    })
                            })
                            .collect(),
                    )
            })
            .collect(),
    );
    encode(&response, sent.version)
}

fn cfg() -> ClientConfig {
    ClientConfig {
        bootstrap: vec!["b1:9092".to_owned()],
        ..ClientConfig::default()
    }
}

async fn client(fake: &Arc<Fake>) -> Client {
    Client::connect_with(cfg(), fake.clone(), Retry::default())
        .await
        .unwrap()
}

fn tp(p: i32) -> TopicPartition {
    TopicPartition::new("t", p)
}

/// The partitions of `t` a ListOffsets request asks for.
fn asked(sent: &Sent) -> Vec<i32> {
    let request: ListOffsetsRequest = decode(sent);
    request
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.partition_index))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn list_offsets_goes_to_each_leader_once_for_all_its_partitions() {
    let fake = Fake::new(|_, sent| match sent.api_key {
        3 => metadata(2, &[1, 2, 1], sent.version),
        2 => list_offsets_answer(sent, |_| 0),
        _ => unreachable!(),
    });
    let client = client(&fake).await;
    assert_eq!(client.brokers().len(), 2);
    let offsets = client
        .list_offsets(&[tp(0), tp(1), tp(2), tp(0)], OffsetSpec::Latest)
        .await
        .unwrap();
    assert_eq!(offsets.len(), 3);
    assert_eq!(offsets[&tp(0)], Ok(100));
    assert_eq!(offsets[&tp(1)], Ok(101));
    assert_eq!(offsets[&tp(2)], Ok(102));
    let sent = fake.sent(ApiKey::ListOffsets);
    assert_eq!(sent.len(), 2, "one request per leader");
    let mut per_broker: Vec<(String, Vec<i32>)> = sent
        .iter()
        .map(|r| (r.broker.to_string(), asked(r)))
        .collect();
    per_broker.sort();
    assert_eq!(
        per_broker,
        vec![
            ("b1:9092".to_owned(), vec![0, 2]),
            ("b2:9092".to_owned(), vec![1])
        ]
    );
    assert!(sent.iter().all(|r| r.version == 9), "newest common version");
    // No refresh was needed: the leaders were known.
    assert_eq!(fake.count(ApiKey::Metadata), 1);
}

#[tokio::test(start_paused = true)]
async fn not_leader_refreshes_the_metadata_and_retries_at_the_new_leader() {
    // Partition 0 moves from broker 1 to broker 2 after the first ListOffsets.
    let fake = Fake::new(|fake, sent| match sent.api_key {
        3 => {
            let moved = fake.count(ApiKey::ListOffsets) > 0;
            metadata(2, &[if moved { 2 } else { 1 }], sent.version)
        }
        2 if sent.broker == addr(1) => list_offsets_answer(sent, |_| 6),
        2 => list_offsets_answer(sent, |_| 0),
        _ => unreachable!(),
    });
    let seen = Arc::new(Recorder::default());
    let client = Client::connect_with(
        ClientConfig {
            observer: Some(seen.clone()),
            ..cfg()
        },
        fake.clone(),
        Retry::default(),
    )
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let offsets = client
        .list_offsets(&[tp(0)], OffsetSpec::Earliest)
        .await
        .unwrap();
    assert_eq!(offsets[&tp(0)], Ok(100));
    let sent = fake.sent(ApiKey::ListOffsets);
    assert_eq!(
        sent.iter().map(|r| r.broker.clone()).collect::<Vec<_>>(),
        vec![addr(1), addr(2)]
    );
    assert_eq!(
        fake.count(ApiKey::Metadata),
        2,
        "bootstrap, then one refresh"
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(100),
        "one back-off"
    );
    let seen = seen.0.lock().unwrap();
    assert!(seen.contains(&("ListOffsets", "b1:9092".to_owned(), Outcome::KafkaError(6))));
    assert!(seen.contains(&("ListOffsets", "b2:9092".to_owned(), Outcome::Ok)));
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded_and_the_last_error_is_the_partitions() {
    let fake = Fake::new(|_, sent| match sent.api_key {
        3 => metadata(1, &[1, 1], sent.version),
        2 => list_offsets_answer(sent, |p| if p == 0 { 6 } else { 0 }),
        _ => unreachable!(),
    });
    let client = client(&fake).await;
    let started = tokio::time::Instant::now();
    let offsets = client
        .list_offsets(&[tp(0), tp(1)], OffsetSpec::Latest)
        .await
        .unwrap();
    assert_eq!(offsets[&tp(0)], Err(KafkaCode::NOT_LEADER_OR_FOLLOWER));
    assert_eq!(
        offsets[&tp(1)],
        Ok(101),
        "the healthy partition is not failed"
    );
    assert_eq!(fake.count(ApiKey::ListOffsets), 3);
    // Back-offs of 100 ms, then 200 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    // A partition the cluster does not have is reported as such, without a request.
    fake.clear();
    let offsets = client
        .list_offsets(&[TopicPartition::new("gone", 0)], OffsetSpec::Latest)
        .await
        .unwrap();
    assert_eq!(
        offsets[&TopicPartition::new("gone", 0)],
        Err(KafkaCode::UNKNOWN_TOPIC_OR_PARTITION)
    );
    assert_eq!(fake.count(ApiKey::ListOffsets), 0);
}

#[tokio::test(start_paused = true)]
async fn a_vanished_broker_is_dropped_and_its_partitions_follow_the_new_metadata() {
    let fake = Fake::new(|fake, sent| match sent.api_key {
        3 => {
            let gone = fake.is_down(&addr(2));
            metadata(
                if gone { 1 } else { 2 },
                &[1, if gone { 1 } else { 2 }],
                sent.version,
            )
        }
        2 => list_offsets_answer(sent, |_| 0),
        1 => fetch_answer(sent, 0),
        _ => unreachable!(),
    });
    let client = client(&fake).await;
    fake.take_down(addr(2));
    let offsets = client
        .list_offsets(&[tp(0), tp(1)], OffsetSpec::Latest)
        .await
        .unwrap();
    assert_eq!(offsets[&tp(1)], Ok(101));
    assert!(fake.disconnects.lock().unwrap().contains(&addr(2)));
    assert_eq!(client.brokers().len(), 1, "the metadata was refreshed");
    // Every broker gone: nothing answered, so the call fails rather than inventing
    // per-partition answers.
    fake.take_down(addr(1));
    let err = client
        .list_offsets(&[tp(0)], OffsetSpec::Latest)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("b1:9092"), "{err}");
    let err = client
        .fetch_one(&tp(0), 0, Isolation::ReadUncommitted, 1024)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("b1:9092"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn bootstrap_tries_each_server_and_names_each_failure() {
    let fake = Fake::new(|_, sent| metadata(1, &[1], sent.version));
    fake.take_down(addr(1));
    fake.take_down(addr(2));
    let err = Client::connect_with(
        ClientConfig {
            bootstrap: vec!["b1:9092".into(), "b2:9092".into()],
            ..ClientConfig::default()
        },
        fake.clone(),
        Retry::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("cannot reach the cluster through any bootstrap server: 'b1:9092': ")
            && err.contains("; 'b2:9092': "),
        "{err}"
    );
    // The second one up: it is used.
    fake.down.lock().unwrap().remove(&addr(2));
    Client::connect_with(
        ClientConfig {
            bootstrap: vec!["b1:9092".into(), "b2:9092".into()],
            ..ClientConfig::default()
        },
        fake.clone(),
        Retry::default(),
    )
    .await
    .unwrap();
}

/// An OffsetFetch answer for every group asked: partition 0 of `t` at 42, or `code`.
fn offset_fetch_answer(sent: &Sent, code: impl Fn(&str) -> i16) -> Result<Bytes> {
    let request: OffsetFetchRequest = decode(sent);
    if sent.version >= 8 {
        let groups = request
            .groups
            .iter()
            .map(|g| {
                let c = code(g.group_id.0.as_str());
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_error_code(c)
                    .with_topics(if c != 0 {
                        vec![]
                    } else {
                        vec![
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(s("t")))
                                .with_partitions(vec![
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(0)
                                        .with_committed_offset(42),
                                ]),
                        ]
                    })
            })
            .collect();
        return encode(
            &OffsetFetchResponse::default().with_groups(groups),
            sent.version,
        );
    }
    let c = code(request.group_id.0.as_str());
    let response = OffsetFetchResponse::default()
        .with_error_code(c)
        .with_topics(if c != 0 {
            vec![]
        } else {
            vec![
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_partitions(vec![
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(42),
                    ]),
            ]
        });
    encode(&response, sent.version)
}

/// A FindCoordinator answer naming broker `node` for every key.
fn find_coordinator_answer(sent: &Sent, node: impl Fn(&str) -> i32) -> Result<Bytes> {
    let request: FindCoordinatorRequest = decode(sent);
    if sent.version >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|k| {
                let n = node(k.as_str());
                Coordinator::default()
                    .with_key(k.clone())
                    .with_node_id(BrokerId(n))
                    .with_host(s(&format!("b{n}")))
                    .with_port(9092)
            })
            .collect();
        return encode(
            &FindCoordinatorResponse::default().with_coordinators(coordinators),
            sent.version,
        );
    }
    let n = node(request.key.as_str());
    encode(
        &FindCoordinatorResponse::default()
            .with_node_id(BrokerId(n))
            .with_host(s(&format!("b{n}")))
            .with_port(9092),
        sent.version,
    )
}

fn committed(answer: &Result<Vec<CommittedOffset>, KafkaCode>) -> Vec<(String, i32, i64)> {
    answer
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.topic.clone(), c.partition, c.offset))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn not_coordinator_finds_the_coordinator_again_and_load_in_progress_backs_off() {
    // Group "moved" is on broker 1 until the first OffsetFetch says NOT_COORDINATOR,
    // then on broker 2. Group "loading" answers LOAD_IN_PROGRESS twice, then its offsets.
    let fake = Fake::new(|fake, sent| match sent.api_key {
        3 => metadata(2, &[1], sent.version),
        10 => {
            let moved = fake
                .sent(ApiKey::OffsetFetch)
                .iter()
                .any(|r| r.broker == addr(1));
            find_coordinator_answer(sent, |g| if g == "moved" && moved { 2 } else { 1 })
        }
        9 => {
            let earlier = fake.count(ApiKey::OffsetFetch);
            let broker = sent.broker.clone();
            offset_fetch_answer(sent, |g| match g {
                "moved" if broker == addr(1) => 16,
                "loading" if earlier <= 2 => 14,
                _ => 0,
            })
        }
        _ => unreachable!(),
    });
    let client = client(&fake).await;
    let groups = ["moved".to_owned(), "loading".to_owned()];
    let answers = client.offset_fetch(&groups).await.unwrap();
    assert_eq!(committed(&answers["moved"]), vec![("t".to_owned(), 0, 42)]);
    assert_eq!(
        committed(&answers["loading"]),
        vec![("t".to_owned(), 0, 42)]
    );
    let find = fake.sent(ApiKey::FindCoordinator);
    assert_eq!(
        find.len(),
        3,
        "both at first, then each group when it was refused"
    );
    assert!(find.iter().all(|r| r.version == 6));
    // The cache: a second call finds no coordinator, and asks broker 2 for "moved".
    fake.clear();
    let answers = client.offset_fetch(&groups[..1]).await.unwrap();
    assert!(answers["moved"].is_ok());
    assert_eq!(fake.count(ApiKey::FindCoordinator), 0);
    assert_eq!(fake.sent(ApiKey::OffsetFetch)[0].broker, addr(2));
}

#[tokio::test(start_paused = true)]
async fn a_coordinator_that_keeps_refusing_gives_the_group_its_error_after_the_attempts() {
    let fake = Fake::new(|_, sent| match sent.api_key {
        3 => metadata(1, &[1], sent.version),
        10 => find_coordinator_answer(sent, |_| 1),
        9 => offset_fetch_answer(sent, |g| {
            if g == "stuck" {
                15
            } else if g == "denied" {
                30
            } else {
                0
            }
        }),
        15 => {
            let request: DescribeGroupsRequest = decode(sent);
            let groups = request
                .groups
                .iter()
                .map(|g| {
                    DescribedGroup::default()
                        .with_group_id(g.clone())
                        .with_error_code(if g.0.as_str() == "stuck" { 16 } else { 0 })
                        .with_group_state(s("Stable"))
                        .with_protocol_type(s("consumer"))
                })
                .collect();
            encode(
                &DescribeGroupsResponse::default().with_groups(groups),
                sent.version,
            )
        }
        _ => unreachable!(),
    });
    let client = client(&fake).await;
    let groups: Vec<String> = ["stuck", "denied", "fine"].map(String::from).to_vec();
    let answers = client.offset_fetch(&groups).await.unwrap();
    assert_eq!(answers["stuck"], Err(KafkaCode::COORDINATOR_NOT_AVAILABLE));
    assert_eq!(answers["denied"], Err(KafkaCode(30)), "not retried");
    assert!(answers["fine"].is_ok());
    // v9: one request for all groups at first, then "stuck" alone, twice.
    let sent = fake.sent(ApiKey::OffsetFetch);
    assert_eq!(sent.len(), 3);
    let first: OffsetFetchRequest = decode(&sent[0]);
    assert_eq!(first.groups.len(), 3);
    let described = client.describe_groups(&groups).await.unwrap();
    assert_eq!(described["stuck"], Err(KafkaCode::NOT_COORDINATOR));
    let fine = described["fine"].as_ref().unwrap();
    assert_eq!(
        (fine.state.as_str(), fine.protocol_type.as_str()),
        ("Stable", "consumer")
    );
    assert_eq!(fake.count(ApiKey::DescribeGroups), 3);
}

#[tokio::test(start_paused = true)]
async fn older_coordinators_get_one_offset_fetch_per_group_and_one_find_coordinator_per_group() {
    let fake = Fake::new(|_, sent| match sent.api_key {
        3 => metadata(1, &[1], sent.version),
        10 => find_coordinator_answer(sent, |_| 1),
        9 => offset_fetch_answer(sent, |_| 0),
        _ => unreachable!(),
    });
    fake.set_versions(
        addr(1),
        ApiVersions::new([
            (ApiKey::Metadata as i16, 0, 8),
            (ApiKey::OffsetFetch as i16, 1, 7),
            (ApiKey::FindCoordinator as i16, 0, 3),
        ]),
    );
    let client = client(&fake).await;
    assert_eq!(fake.sent(ApiKey::Metadata)[0].version, 8);
    let groups: Vec<String> = (0..200).map(|i| format!("g{i}")).collect();
    let answers = client.offset_fetch(&groups).await.unwrap();
    assert_eq!(answers.len(), 200);
    assert!(
        answers
            .values()
            .all(|a| committed(a) == vec![("t".to_owned(), 0, 42)])
    );
    let sent = fake.sent(ApiKey::OffsetFetch);
    assert_eq!(sent.len(), 200);
    assert!(sent.iter().all(|r| r.version == 7));
    let find = fake.sent(ApiKey::FindCoordinator);
    assert_eq!(find.len(), 200);
    assert!(find.iter().all(|r| r.version == 3));
}

/// A Fetch answer for partition 0 of `t`: one record batch at offset 10 (3 records),
/// or `code`.
fn fetch_answer(sent: &Sent, code: i16) -> Result<Bytes> {
    let request: FetchRequest = decode(sent);
    let fetch_offset = request.topics[0].partitions[0].fetch_offset;
    assert!(fetch_offset >= 0);
    let records = kafka_protocol::records::Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset: 10,
        sequence: -1,
        timestamp: 5_000,
        key: None,
        value: Some(Bytes::from_static(b"v")),
        headers: Default::default(),
    };
    let recs: Vec<_> = (0..3)
        .map(|i| {
            let mut r = records.clone();
            r.offset = 10 + i;
            r.timestamp = 5_000 + i * 10;
            r
        })
        .collect();
    let mut buf = BytesMut::new();
    kafka_protocol::records::RecordBatchEncoder::encode(
        &mut buf,
        &recs,
        &kafka_protocol::records::RecordEncodeOptions {
            version: 2,
            compression: kafka_protocol::records::Compression::None,
        },
    )
    .unwrap();
    let response = FetchResponse::default().with_responses(vec![
        FetchableTopicResponse::default()
            .with_topic(request.topics[0].topic.clone())
            .with_partitions(vec![
                PartitionData::default()
                    .with_partition_index(0)
                    .with_error_code(code)
                    .with_high_watermark(13)
                    .with_last_stable_offset(13)
                    .with_log_start_offset(10)
                    .with_records(Some(buf.freeze())),
            ]),
    ]);
    encode(&response, sent.version)
}

#[tokio::test(start_paused = true)]
async fn fetch_one_follows_the_leader_and_reads_the_record_at_the_offset() {
    let fake = Fake::new(|fake, sent| match sent.api_key {
        3 => {
            let moved = fake.count(ApiKey::Fetch) > 0;
            metadata(2, &[if moved { 2 } else { 1 }], sent.version)
        }
        1 if sent.broker == addr(1) => fetch_answer(sent, 6),
        1 => fetch_answer(sent, 0),
        _ => unreachable!(),
    });
    let client = client(&fake).await;
    let one = client
        .fetch_one(&tp(0), 11, Isolation::ReadCommitted, 4096)
        .await
        .unwrap();
    assert_eq!(one.error, None);
    assert_eq!((one.high_watermark, one.log_start_offset), (13, 10));
    assert_eq!(
        one.record,
        Some(FetchedRecord {
            offset: 11,
            timestamp_ms: 5_010
        })
    );
    let sent = fake.sent(ApiKey::Fetch);
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter().all(|r| r.version == 12),
        "v12: the newest with topic names"
    );
    let request: FetchRequest = decode(&sent[1]);
    assert_eq!(request.isolation_level, 1);
    // min_bytes 1: tansu answers min_bytes 0 without the partition; where there are
    // records a broker answers at once, else within max_wait_ms.
    assert_eq!((request.min_bytes, request.max_wait_ms), (1, 100));
    assert_eq!(request.topics[0].partitions[0].partition_max_bytes, 4096);
}

#[tokio::test(start_paused = true)]
async fn a_broker_without_a_common_version_is_a_clear_error() {
    let fake = Fake::new(|_, sent| match sent.api_key {
        3 => metadata(1, &[1], sent.version),
        _ => unreachable!(),
    });
    fake.set_versions(
        addr(1),
        ApiVersions::new([
            (ApiKey::Metadata as i16, 0, 12),
            (ApiKey::Fetch as i16, 0, 3),
        ]),
    );
    let client = client(&fake).await;
    let err = client
        .fetch_one(&tp(0), 0, Isolation::ReadUncommitted, 1024)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "broker 'b1:9092' speaks Fetch v0 to v3 and this client v4 to v12: no common version"
    );
    assert_eq!(fake.count(ApiKey::Fetch), 0);
}

#[tokio::test(start_paused = true)]
async fn list_groups_asks_every_broker_in_its_newest_version() {
    let fake = Fake::new(|_, sent| match sent.api_key {
        3 => metadata(2, &[1], sent.version),
        16 => {
            let request: ListGroupsRequest = decode(sent);
            let filtered = sent.version >= 5;
            assert_eq!(
                request
                    .types_filter
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>(),
                if filtered {
                    vec!["classic", "consumer"]
                } else {
                    vec![]
                }
            );
            let group = if sent.broker == addr(1) {
                "on-1"
            } else {
                "on-2"
            };
            let mut listed = ListedGroup::default()
                .with_group_id(GroupId(s(group)))
                .with_protocol_type(s("consumer"));
            if sent.version >= 4 {
                listed = listed.with_group_state(s("Stable"));
            }
            if sent.version >= 5 {
                listed = listed.with_group_type(s("classic"));
            }
            encode(
                &ListGroupsResponse::default().with_groups(vec![listed]),
                sent.version,
            )
        }
        _ => unreachable!(),
    });
    fake.set_versions(
        addr(2),
        ApiVersions::new([
            (ApiKey::Metadata as i16, 0, 12),
            (ApiKey::ListGroups as i16, 0, 3),
        ]),
    );
    let client = client(&fake).await;
    let groups = client.list_groups().await.unwrap();
    assert_eq!(
        groups,
        vec![
            GroupListing {
                group: "on-1".into(),
                protocol_type: "consumer".into(),
                state: Some("Stable".into()),
                group_type: Some("classic".into()),
            },
            GroupListing {
                group: "on-2".into(),
                protocol_type: "consumer".into(),
                state: None,
                group_type: None,
            },
        ]
    );
    // A broker that cannot be reached fails the listing: a partial one would make its
    // groups look deleted.
    fake.take_down(addr(2));
    let err = client.list_groups().await.unwrap_err().to_string();
    assert!(err.contains("b2:9092"), "{err}");
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(&'static str, String, Outcome)>>);

impl Observer for Recorder {
    fn request(&self, api: &'static str, broker: &str, outcome: Outcome, _: Duration) {
        self.0
            .lock()
            .unwrap()
            .push((api, broker.to_owned(), outcome));
    }
}

#[tokio::test(start_paused = true)]
async fn damaged_records_are_an_error_of_their_own_and_keep_the_connection() {
    let fake = Fake::new(|_, sent| match sent.api_key {
        3 => metadata(1, &[1], sent.version),
        1 => {
            let request: FetchRequest = decode(sent);
            // A whole v2 batch by its length, with a CRC that does not hold.
            let mut records = vec![0u8; 12 + 49];
            records[8..12].copy_from_slice(&49i32.to_be_bytes());
            records[16] = 2;
            let response = FetchResponse::default().with_responses(vec![
                FetchableTopicResponse::default()
                    .with_topic(request.topics[0].topic.clone())
                    .with_partitions(vec![
                        PartitionData::default()
                            .with_high_watermark(1)
                            .with_records(Some(Bytes::from(records))),
                    ]),
            ]);
            encode(&response, sent.version)
        }
        _ => unreachable!(),
    });
    let client = client(&fake).await;
    let err = client
        .fetch_one(&tp(0), 0, Isolation::ReadUncommitted, 1024)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CorruptRecords { .. }), "{err}");
    assert!(err.to_string().contains("CRC"), "{err}");
    assert_eq!(fake.count(ApiKey::Fetch), 1, "not retried");
    assert!(fake.disconnects.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn list_groups_leaves_out_a_broker_that_left_the_cluster() {
    let fake = Fake::new(|fake, sent| match sent.api_key {
        3 => metadata(
            if fake.is_down(&addr(2)) { 1 } else { 2 },
            &[1],
            sent.version,
        ),
        16 => {
            let listed = ListedGroup::default()
                .with_group_id(GroupId(s("g")))
                .with_protocol_type(s("consumer"));
            encode(
                &ListGroupsResponse::default().with_groups(vec![listed]),
                sent.version,
            )
        }
        _ => unreachable!(),
    });
    let client = client(&fake).await;
    fake.take_down(addr(2));
    let groups = client.list_groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(client.brokers().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn fetch_records_follows_the_leader_and_reads_whole_records() {
    let fake = Fake::new(|fake, sent| match sent.api_key {
        3 => {
            let moved = fake.count(ApiKey::Fetch) > 0;
            metadata(2, &[if moved { 2 } else { 1 }], sent.version)
        }
        1 if sent.broker == addr(1) => fetch_answer(sent, 6),
        1 => fetch_answer(sent, 0),
        _ => unreachable!(),
    });
    let reader = client(&fake).await;
    let fetched = reader
        .fetch_records(&tp(0), 11, Isolation::ReadCommitted, 1 << 20)
        .await
        .unwrap();
    assert_eq!(fetched.error, None);
    assert_eq!((fetched.high_watermark, fetched.log_start_offset), (13, 10));
    // The batch (written by kafka-protocol's own encoder) starts at 10: the record
    // below the offset asked for is left out.
    let value = Some(Bytes::from_static(b"v"));
    assert_eq!(
        fetched.records,
        vec![
            Record {
                offset: 11,
                timestamp_ms: 5_010,
                key: None,
                value: value.clone(),
            },
            Record {
                offset: 12,
                timestamp_ms: 5_020,
                key: None,
                value,
            },
        ]
    );
    assert_eq!(fetched.next_offset, 13);
    assert_eq!(fetched.skipped_compressed_batches, 0);
    let sent = fake.sent(ApiKey::Fetch);
    assert_eq!(sent.len(), 2, "the moved leader was asked again");
    let request: FetchRequest = decode(&sent[1]);
    assert_eq!(request.topics[0].partitions[0].partition_max_bytes, 1 << 20);
    // A partition error is the answer's, with no records and no progress.
    let fake = Fake::new(|_, sent| match sent.api_key {
        3 => metadata(1, &[1], sent.version),
        1 => fetch_answer(sent, 29),
        _ => unreachable!(),
    });
    let refusing = client(&fake).await;
    let refused = refusing
        .fetch_records(&tp(0), 11, Isolation::ReadUncommitted, 1024)
        .await
        .unwrap();
    assert_eq!(refused.error, Some(KafkaCode(29)));
    assert!(refused.records.is_empty());
    assert_eq!(refused.next_offset, 11);
}
