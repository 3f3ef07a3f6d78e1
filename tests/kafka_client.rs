//! tally-kafka's client (the collector's) against tally's own broker, the real binary on
//! 127.0.0.1: metadata, offsets, groups, committed offsets and one-record fetches over
//! plaintext; SASL_SSL with each mechanism; a wrong password and an unknown mechanism
//! refused with errors that name the mechanism and the user but never the secret.

#![allow(clippy::unwrap_used, unreachable_pub)]

#[path = "../broker/tests/client/mod.rs"]
mod client;
mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{CreateTopicsRequest, GroupId, OffsetCommitRequest};
use kafka_protocol::protocol::StrBytes;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tally_kafka::client::{
    Client, ClientConfig, Isolation, KafkaCode, Observer, OffsetSpec, Outcome, SaslMechanism,
    SecurityProtocol, TopicPartition,
};
use tally_kafka::tls::ClientTlsFiles;

use common::Broker;

const TOPIC: &str = "orders";
const BASE_TS: i64 = 1_700_000_000_000;

/// Every call of a test is bounded: a hung client fails the test instead of hanging it.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than 60 s"))
}

/// Creates the topic, produces 5 records to partition 0 (two batches) and 2 to
/// partition 1, and commits offsets for groups `g1` and `g2`, with the broker tests'
/// client.
async fn seed(addr: std::net::SocketAddr) {
    let mut c = client::Client::connect(addr).await.unwrap();
    let created = c
        .call(
            &CreateTopicsRequest::default().with_topics(vec![
                CreatableTopic::default()
                    .with_name(client::topic_name(TOPIC))
                    .with_num_partitions(3)
                    .with_replication_factor(1),
            ]),
            7,
        )
        .await
        .unwrap();
    assert_eq!(created.topics[0].error_code, 0);
    let ts = |i: i64| BASE_TS + i * 1000;
    // (partition, values, timestamps) of each batch produced.
    type Batch<'a> = (i32, Vec<&'a [u8]>, Vec<i64>);
    let batches: [Batch; 3] = [
        (0, vec![b"a", b"b", b"c"], vec![ts(0), ts(1), ts(2)]),
        (0, vec![b"d", b"e"], vec![ts(3), ts(4)]),
        (1, vec![b"x", b"y"], vec![ts(10), ts(11)]),
    ];
    for (partition, values, timestamps) in batches {
        let records = client::batch_at(&values, &timestamps, client::Producer::PLAIN);
        let r = c
            .call(&client::produce_request(TOPIC, partition, -1, records), 9)
            .await
            .unwrap();
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    for (group, offsets) in [("g1", vec![(0, 3i64), (1, 1)]), ("g2", vec![(0, 5)])] {
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::from_static_str(""))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(client::topic_name(TOPIC))
                    .with_partitions(
                        offsets
                            .iter()
                            .map(|(p, o)| {
                                OffsetCommitRequestPartition::default()
                                    .with_partition_index(*p)
                                    .with_committed_offset(*o)
                            })
                            .collect(),
                    ),
            ]);
        let r = c.call(&request, 8).await.unwrap();
        for p in &r.topics[0].partitions {
            assert_eq!(p.error_code, 0, "commit of {group}");
        }
    }
}

#[derive(Default)]
struct Seen(Mutex<Vec<(&'static str, String, Outcome)>>);

impl Observer for Seen {
    fn request(&self, api: &'static str, broker: &str, outcome: Outcome, _elapsed: Duration) {
        self.0
            .lock()
            .unwrap()
            .push((api, broker.to_owned(), outcome));
    }
}

fn tp(partition: i32) -> TopicPartition {
    TopicPartition::new(TOPIC, partition)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_metadata_offsets_groups_and_one_record_fetches() {
    let broker = Broker::start(&[]);
    seed(broker.socket_addr()).await;
    let seen = Arc::new(Seen::default());
    let client = bounded(
        "connect",
        Client::connect(ClientConfig {
            bootstrap: vec![broker.addr().to_owned()],
            observer: Some(seen.clone()),
            ..ClientConfig::default()
        }),
    )
    .await
    .unwrap();

    let metadata = bounded("metadata", client.metadata()).await.unwrap();
    assert_eq!(metadata.brokers.len(), 1);
    let node = metadata.brokers[0].node_id;
    assert_eq!(
        format!("{}:{}", metadata.brokers[0].host, metadata.brokers[0].port),
        broker.addr()
    );
    assert_eq!(client.brokers(), metadata.brokers);
    let topic = metadata.topics.iter().find(|t| t.name == TOPIC).unwrap();
    assert!(!topic.is_internal);
    assert_eq!(topic.error, None);
    assert_eq!(
        topic
            .partitions
            .iter()
            .map(|p| p.partition)
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(
        topic
            .partitions
            .iter()
            .all(|p| p.leader == node && p.isr == vec![node])
    );

    let all = [tp(0), tp(1), tp(2), TopicPartition::new("no-such-topic", 0)];
    let latest = bounded(
        "list_offsets",
        client.list_offsets(&all, OffsetSpec::Latest),
    )
    .await
    .unwrap();
    assert_eq!(latest[&tp(0)], Ok(5));
    assert_eq!(latest[&tp(1)], Ok(2));
    assert_eq!(latest[&tp(2)], Ok(0));
    assert_eq!(
        latest[&TopicPartition::new("no-such-topic", 0)],
        Err(KafkaCode::UNKNOWN_TOPIC_OR_PARTITION)
    );
    let earliest = client
        .list_offsets(&all[..3], OffsetSpec::Earliest)
        .await
        .unwrap();
    assert!(earliest.values().all(|o| *o == Ok(0)), "{earliest:?}");
    let stable = client
        .list_offsets(&all[..2], OffsetSpec::LastStable)
        .await
        .unwrap();
    assert_eq!(stable[&tp(0)], Ok(5));

    let groups: Vec<String> = ["g1", "g2", "nobody"].map(String::from).to_vec();
    let committed = bounded("offset_fetch", client.offset_fetch(&groups))
        .await
        .unwrap();
    let mut g1: Vec<(i32, i64)> = committed["g1"]
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c.topic, TOPIC);
            assert_eq!(c.error, None);
            (c.partition, c.offset)
        })
        .collect();
    g1.sort();
    assert_eq!(g1, vec![(0, 3), (1, 1)]);
    let g2 = committed["g2"].as_ref().unwrap();
    assert_eq!((g2.len(), g2[0].partition, g2[0].offset), (1, 0, 5));
    assert!(committed["nobody"].as_ref().unwrap().is_empty());

    let listed = bounded("list_groups", client.list_groups()).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|g| g.group.as_str()).collect();
    assert!(names.contains(&"g1") && names.contains(&"g2"), "{listed:?}");
    let described = client.describe_groups(&groups[..1]).await.unwrap();
    let g1 = described["g1"].as_ref().unwrap();
    assert_eq!((g1.group.as_str(), g1.members), ("g1", 0));
    assert_eq!(g1.state, "Empty");

    // The record at each committed offset, and its own timestamp: inside the first
    // batch, at the start of the second, past the end.
    for (offset, want) in [
        (0, Some(BASE_TS)),
        (2, Some(BASE_TS + 2000)),
        (3, Some(BASE_TS + 3000)),
        (4, Some(BASE_TS + 4000)),
    ] {
        let one = bounded(
            "fetch_one",
            client.fetch_one(&tp(0), offset, Isolation::ReadUncommitted, 1024),
        )
        .await
        .unwrap();
        assert_eq!(one.error, None);
        assert_eq!(one.high_watermark, 5);
        assert_eq!(one.log_start_offset, 0);
        let record = one.record.unwrap();
        assert_eq!((record.offset, Some(record.timestamp_ms)), (offset, want));
    }
    let committed_one = client
        .fetch_one(&tp(1), 1, Isolation::ReadCommitted, 1024)
        .await
        .unwrap();
    assert_eq!(committed_one.last_stable_offset, 2);
    assert_eq!(committed_one.record.unwrap().timestamp_ms, BASE_TS + 11_000);
    let caught_up = client
        .fetch_one(&tp(0), 5, Isolation::ReadUncommitted, 1024)
        .await
        .unwrap();
    assert_eq!((caught_up.error, caught_up.record), (None, None));
    let beyond = client
        .fetch_one(&tp(0), 99, Isolation::ReadUncommitted, 1024)
        .await
        .unwrap();
    assert_eq!(beyond.error, Some(KafkaCode(1)), "OFFSET_OUT_OF_RANGE");

    let seen = seen.0.lock().unwrap();
    for api in [
        "Metadata",
        "ListOffsets",
        "OffsetFetch",
        "FindCoordinator",
        "ListGroups",
        "DescribeGroups",
        "Fetch",
    ] {
        assert!(
            seen.iter()
                .any(|(a, b, o)| *a == api && b == broker.addr() && *o == Outcome::Ok),
            "no successful {api} observed: {seen:?}"
        );
    }
    assert!(seen.contains(&("Fetch", broker.addr().to_owned(), Outcome::KafkaError(1))));
    drop(seen);
    broker.assert_quiet();
}

#[tokio::test]
async fn unreachable_bootstrap_servers_are_each_named_in_the_error() {
    let a = format!("127.0.0.1:{}", common::free_port());
    let b = format!("127.0.0.1:{}", common::free_port());
    let err = bounded(
        "connect",
        Client::connect(ClientConfig {
            bootstrap: vec![a.clone(), b.clone()],
            connect_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        }),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!("'{a}'")) && err.contains(&format!("'{b}'")),
        "{err}"
    );
    assert!(err.contains("refused"), "{err}");
}

const USER: &str = "alice";
const PASSWORD: &str = "alice-secret-5f1e";

/// A private CA, the broker's certificate for localhost and 127.0.0.1, and the users
/// file, made for this run.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "kafka client test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf.signed_by(&key, &ca).unwrap();
        let pki = Pki { dir };
        std::fs::write(pki.path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(pki.path("broker.pem"), leaf.pem()).unwrap();
        std::fs::write(pki.path("broker-key.pem"), key.serialize_pem()).unwrap();
        let users = pki.path("users.toml");
        std::fs::write(
            &users,
            format!("[[user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn broker(&self) -> Broker {
        let s = |p: PathBuf| p.to_str().unwrap().to_owned();
        let flags = [
            "--tls-cert".to_owned(),
            s(self.path("broker.pem")),
            "--tls-key".to_owned(),
            s(self.path("broker-key.pem")),
            "--sasl-users".to_owned(),
            s(self.path("users.toml")),
        ];
        Broker::start(&flags.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn config(&self, broker: &Broker, mechanism: SaslMechanism, password: &str) -> ClientConfig {
        ClientConfig {
            bootstrap: vec![broker.addr().to_owned()],
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(mechanism),
            sasl_username: Some(USER.to_owned()),
            sasl_password: Some(password.into()),
            tls: ClientTlsFiles {
                ca: Some(self.path("ca.pem")),
                ..ClientTlsFiles::default()
            },
            connect_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_with_each_mechanism_and_refusals_that_keep_the_secret() {
    let pki = Pki::new();
    let broker = pki.broker();
    for mechanism in [
        SaslMechanism::ScramSha512,
        SaslMechanism::ScramSha256,
        SaslMechanism::Plain,
    ] {
        let client = bounded(
            "connect",
            Client::connect(pki.config(&broker, mechanism, PASSWORD)),
        )
        .await
        .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        let metadata = client.metadata().await.unwrap();
        assert_eq!(metadata.brokers.len(), 1, "{mechanism}");
        let offsets = client
            .list_offsets(&[TopicPartition::new("none", 0)], OffsetSpec::Latest)
            .await
            .unwrap();
        assert_eq!(offsets.len(), 1);
        let groups = client.list_groups().await.unwrap();
        assert!(groups.is_empty(), "{groups:?}");
    }

    let wrong = "not-the-password-93c1";
    let err = bounded(
        "connect",
        Client::connect(pki.config(&broker, SaslMechanism::ScramSha512, wrong)),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("SCRAM-SHA-512") && err.contains("'alice'"),
        "{err}"
    );
    assert!(err.contains(broker.addr()), "{err}");
    assert!(err.contains("SASL_AUTHENTICATION_FAILED"), "{err}");
    assert!(!err.contains(wrong) && !err.contains(PASSWORD), "{err}");

    // OAUTHBEARER: tally's broker does not enable it; the refusal names the mechanism
    // and the token file, never the token.
    let token = "eyJ-secret-token-value";
    let token_file = pki.path("token");
    std::fs::write(&token_file, token).unwrap();
    let cfg = ClientConfig {
        sasl_mechanism: Some(SaslMechanism::OauthBearer),
        sasl_username: None,
        sasl_password: None,
        sasl_oauthbearer_token_file: Some(token_file.clone()),
        ..pki.config(&broker, SaslMechanism::Plain, PASSWORD)
    };
    let err = bounded("connect", Client::connect(cfg))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("OAUTHBEARER") && err.contains(path_str(&token_file)),
        "{err}"
    );
    assert!(err.contains("PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"), "{err}");
    assert!(!err.contains(token), "{err}");

    // Plaintext on the TLS port: a clear error, bounded by the connect timeout.
    let err = bounded(
        "connect",
        Client::connect(ClientConfig {
            bootstrap: vec![broker.addr().to_owned()],
            connect_timeout: Duration::from_secs(3),
            ..ClientConfig::default()
        }),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains(broker.addr()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_without_sasl_and_a_client_that_trusts_another_ca() {
    let pki = Pki::new();
    let s = |p: PathBuf| p.to_str().unwrap().to_owned();
    let flags = [
        "--tls-cert".to_owned(),
        s(pki.path("broker.pem")),
        "--tls-key".to_owned(),
        s(pki.path("broker-key.pem")),
    ];
    let broker = Broker::start(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let ssl = |ca: PathBuf| ClientConfig {
        bootstrap: vec![broker.addr().to_owned()],
        security_protocol: SecurityProtocol::Ssl,
        tls: ClientTlsFiles {
            ca: Some(ca),
            ..ClientTlsFiles::default()
        },
        ..ClientConfig::default()
    };
    let client = bounded("connect", Client::connect(ssl(pki.path("ca.pem"))))
        .await
        .unwrap();
    assert_eq!(client.metadata().await.unwrap().brokers.len(), 1);
    // A client that trusts another CA refuses the broker's certificate.
    let other = Pki::new();
    let err = bounded("connect", Client::connect(ssl(other.path("ca.pem"))))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("TLS handshake") && err.contains(broker.addr()),
        "{err}"
    );
}
