//! Topic names against the broker's folders and Kafka's reserved names: every
//! name Kafka allows is a topic that keeps its records across a restart and
//! can be deleted for good; Kafka's internal topics are never created; and a
//! data folder written by an older version opens with nothing lost.

#![allow(clippy::unwrap_used)]

mod client;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, MetadataRequest, MetadataResponse,
};
use tally_broker::config::BrokerConfig;
use tally_broker::log::LogConfig;
use tally_broker::server::{RunningBroker, start};
use tally_broker::topics::Topics;

use client::{Client, batch, fetch_request, now_ms, produce_request, records, topic_name};

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_REQUEST: i16 = 42;

fn config(dir: &Path) -> BrokerConfig {
    BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        data_dir: dir.to_path_buf(),
        auto_create_topics: true,
        ..BrokerConfig::default()
    }
}

async fn start_in(dir: &Path) -> RunningBroker {
    start(config(dir)).await.unwrap()
}

/// Stops the broker and waits until nothing holds it, so that its data
/// folder can be opened again.
async fn stop(broker: RunningBroker) {
    let weak = Arc::downgrade(broker.broker());
    broker.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while weak.upgrade().is_some() {
        assert!(Instant::now() < deadline, "the broker is still in use");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Closes the client's connection (which holds the broker), stops the broker
/// and starts it again on the same folder.
async fn restart(broker: RunningBroker, c: Client, dir: &Path) -> (RunningBroker, Client) {
    drop(c);
    stop(broker).await;
    let broker = start_in(dir).await;
    let c = Client::connect(broker.addr()).await.unwrap();
    (broker, c)
}

async fn create(c: &mut Client, name: &str, validate_only: bool) -> CreatableTopicResult {
    let request = CreateTopicsRequest::default()
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ])
        .with_timeout_ms(10_000)
        .with_validate_only(validate_only);
    let mut topics = c.call(&request, 7).await.unwrap().topics;
    assert_eq!(topics.len(), 1);
    topics.remove(0)
}

async fn metadata(c: &mut Client, names: &[&str], auto_create: bool) -> MetadataResponse {
    let request = MetadataRequest::default()
        .with_topics(Some(
            names
                .iter()
                .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
                .collect(),
        ))
        .with_allow_auto_topic_creation(auto_create);
    c.call(&request, 12).await.unwrap()
}

async fn describe(c: &mut Client, name: &str, auto_create: bool) -> MetadataResponseTopic {
    metadata(c, &[name], auto_create).await.topics.remove(0)
}

/// Every topic the broker lists (Metadata for all topics).
async fn listed(c: &mut Client) -> Vec<String> {
    let all = c
        .call(&MetadataRequest::default().with_topics(None), 12)
        .await
        .unwrap();
    all.topics
        .iter()
        .map(|t| t.name.as_ref().unwrap().0.to_string())
        .collect()
}

async fn delete(c: &mut Client, name: &str) -> (i16, Option<String>) {
    let request = DeleteTopicsRequest::default()
        .with_topic_names(vec![topic_name(name)])
        .with_timeout_ms(5_000);
    let r = c.call(&request, 5).await.unwrap();
    assert_eq!(r.responses.len(), 1);
    let t = &r.responses[0];
    (
        t.error_code,
        t.error_message.as_ref().map(|m| m.to_string()),
    )
}

async fn produce(c: &mut Client, topic: &str, values: &[&[u8]]) {
    let mut r = c
        .call(&produce_request(topic, 0, -1, batch(values)), 9)
        .await
        .unwrap();
    let p = r.responses.remove(0).partition_responses.remove(0);
    assert_eq!(p.error_code, NONE, "produce to {topic}: {p:?}");
}

/// The values in partition 0 of `topic`, from offset 0.
async fn values(c: &mut Client, topic: &str) -> Vec<Vec<u8>> {
    let mut r = c
        .call(&fetch_request(topic, 0, 0, 1 << 20), 12)
        .await
        .unwrap();
    let p = r.responses.remove(0).partitions.remove(0);
    assert_eq!(p.error_code, NONE, "fetch from {topic}: {p:?}");
    records(&p.records.unwrap_or_default())
        .into_iter()
        .map(|(_, _, v)| v.to_vec())
        .collect()
}

fn folder_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn long_name(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b"abcdefghij._-0123456789"[i % 23]))
        .collect()
}

// ---------------------------------------------------------------------------
// Every name Kafka allows is a topic, across restarts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_named_like_bookkeeping_keep_their_records_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut c = Client::connect(broker.addr()).await.unwrap();
    // The last one has the shape the older version gave its deleted folders,
    // with an id that is not the topic's own.
    let names = [
        "orders.deleted",
        ".deleted",
        "deleted",
        "orders.0123456789abcdef0123456789abcdef.deleted",
    ];
    for name in names {
        assert_eq!(create(&mut c, name, false).await.error_code, NONE, "{name}");
        produce(&mut c, name, &[name.as_bytes(), b"second"]).await;
    }
    // An auto-created one too.
    assert_eq!(
        describe(&mut c, "auto.deleted", true).await.error_code,
        NONE
    );
    produce(&mut c, "auto.deleted", &[b"auto"]).await;

    let (broker, c) = restart(broker, c, dir.path()).await;
    // Twice: whatever the first start tidied must not touch them either.
    let (broker, mut c) = restart(broker, c, dir.path()).await;
    for name in names {
        let t = describe(&mut c, name, false).await;
        assert_eq!(t.error_code, NONE, "{name} is still there");
        assert_eq!(
            values(&mut c, name).await,
            vec![name.as_bytes().to_vec(), b"second".to_vec()],
            "{name} kept its records"
        );
    }
    assert_eq!(values(&mut c, "auto.deleted").await, vec![b"auto".to_vec()]);
    drop(c);
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_249_character_topic_is_deleted_for_good_and_can_be_created_again() {
    let dir = tempfile::tempdir().unwrap();
    let name = long_name(249);
    let broker = start_in(dir.path()).await;
    let mut c = Client::connect(broker.addr()).await.unwrap();
    assert_eq!(create(&mut c, &name, false).await.error_code, NONE);
    produce(&mut c, &name, &[b"one", b"two"]).await;
    assert_eq!(values(&mut c, &name).await.len(), 2);

    let (error, message) = delete(&mut c, &name).await;
    assert_eq!(error, NONE, "{message:?}");
    assert_eq!(
        describe(&mut c, &name, false).await.error_code,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert!(
        !folder_names(&dir.path().join("topics")).contains(&name),
        "the folder left topics/ before DeleteTopics answered"
    );

    let (broker, mut c) = restart(broker, c, dir.path()).await;
    assert_eq!(
        describe(&mut c, &name, false).await.error_code,
        UNKNOWN_TOPIC_OR_PARTITION,
        "a deleted topic stays deleted after a restart"
    );
    assert!(!listed(&mut c).await.contains(&name));
    assert!(
        folder_names(&dir.path().join("deleted")).is_empty(),
        "the deleted topic's files are removed at the latest at the next start"
    );

    // Created again, it starts empty, and survives a restart.
    assert_eq!(create(&mut c, &name, false).await.error_code, NONE);
    assert!(values(&mut c, &name).await.is_empty());
    produce(&mut c, &name, &[b"three"]).await;
    let (broker, mut c) = restart(broker, c, dir.path()).await;
    assert_eq!(values(&mut c, &name).await, vec![b"three".to_vec()]);
    assert_eq!(delete(&mut c, &name).await.0, NONE);
    drop(c);
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_kafka_does_not_allow_are_refused_with_invalid_topic_exception() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut c = Client::connect(broker.addr()).await.unwrap();
    let too_long = long_name(250);
    for name in [too_long.as_str(), "a/b", "a b", "ä", ".", "..", "x\0y"] {
        let r = create(&mut c, name, false).await;
        assert_eq!(r.error_code, INVALID_TOPIC_EXCEPTION, "create {name:?}");
        let message = r.error_message.unwrap().to_string();
        assert!(message.contains("[a-zA-Z0-9._-]"), "{message}");
        let t = describe(&mut c, name, true).await;
        assert_eq!(t.error_code, INVALID_TOPIC_EXCEPTION, "metadata {name:?}");
    }
    assert!(listed(&mut c).await.is_empty());
    assert!(folder_names(&dir.path().join("topics")).is_empty());
    drop(c);
    stop(broker).await;
}

// ---------------------------------------------------------------------------
// Kafka's internal topics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_internal_topics_are_never_created_here() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut c = Client::connect(broker.addr()).await.unwrap();
    for name in ["__consumer_offsets", "__transaction_state"] {
        // Auto-creation answers as Kafka does for a topic it does not have.
        let t = describe(&mut c, name, true).await;
        assert_eq!(t.error_code, UNKNOWN_TOPIC_OR_PARTITION, "metadata {name}");
        assert!(t.is_internal, "{name} is flagged internal");
        // CreateTopics refuses it, as Kafka refuses its internal topics.
        for validate_only in [true, false] {
            let r = create(&mut c, name, validate_only).await;
            assert_eq!(r.error_code, INVALID_REQUEST, "create {name}");
            let message = r.error_message.unwrap().to_string();
            assert!(message.contains(&format!("\"{name}\"")), "{message}");
            assert!(message.contains("internal"), "{message}");
        }
        // There is nothing to delete.
        assert_eq!(delete(&mut c, name).await.0, UNKNOWN_TOPIC_OR_PARTITION);
        // A name that collides with it ('.' for '_') is refused too.
        let folded = name.replacen('_', ".", 3);
        let r = create(&mut c, &folded, false).await;
        assert_eq!(r.error_code, INVALID_TOPIC_EXCEPTION, "create {folded}");
        assert!(
            r.error_message.unwrap().contains("collides"),
            "{folded} collides with {name}"
        );
    }
    assert!(listed(&mut c).await.is_empty());
    assert!(folder_names(&dir.path().join("topics")).is_empty());

    // Kafka reserves only those: other names starting with "__" are topics.
    assert_eq!(create(&mut c, "__audit", false).await.error_code, NONE);
    assert_eq!(describe(&mut c, "__orders", true).await.error_code, NONE);
    assert!(!describe(&mut c, "__orders", false).await.is_internal);
    assert_eq!(listed(&mut c).await, vec!["__audit", "__orders"]);
    drop(c);
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_differ_only_in_dot_and_underscore_collide() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut c = Client::connect(broker.addr()).await.unwrap();
    assert_eq!(create(&mut c, "orders_eu.v1", false).await.error_code, NONE);
    for other in ["orders.eu.v1", "orders_eu_v1", "orders.eu_v1"] {
        let r = create(&mut c, other, false).await;
        assert_eq!(r.error_code, INVALID_TOPIC_EXCEPTION, "{other}");
        let message = r.error_message.unwrap().to_string();
        assert!(
            message.contains(&format!("\"{other}\"")) && message.contains("\"orders_eu.v1\""),
            "{message}"
        );
        assert_eq!(
            describe(&mut c, other, true).await.error_code,
            INVALID_TOPIC_EXCEPTION,
            "auto-creating {other}"
        );
    }
    // Once the first is deleted, the name is free.
    assert_eq!(delete(&mut c, "orders_eu.v1").await.0, NONE);
    assert_eq!(create(&mut c, "orders.eu.v1", false).await.error_code, NONE);
    assert_eq!(listed(&mut c).await, vec!["orders.eu.v1"]);
    drop(c);
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_named_twice_in_one_request_is_refused_once_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    let mut c = Client::connect(broker.addr()).await.unwrap();
    let creatable = |name: &str| {
        CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(1)
            .with_replication_factor(1)
    };
    let request = CreateTopicsRequest::default()
        .with_topics(vec![
            creatable("twice"),
            creatable("once"),
            creatable("twice"),
        ])
        .with_timeout_ms(10_000);
    let r = c.call(&request, 7).await.unwrap().topics;
    let codes: Vec<(String, i16)> = r
        .iter()
        .map(|t| (t.name.0.to_string(), t.error_code))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("twice".to_owned(), INVALID_REQUEST),
            ("once".to_owned(), NONE)
        ]
    );
    assert!(r[0].error_message.as_ref().unwrap().contains("\"twice\""));
    assert_eq!(listed(&mut c).await, vec!["once"]);

    let id = describe(&mut c, "once", false).await.topic_id;
    let by_name = DeleteTopicsRequest::default()
        .with_topic_names(vec![topic_name("once"), topic_name("once")])
        .with_timeout_ms(5_000);
    let r = c.call(&by_name, 5).await.unwrap().responses;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].error_code, INVALID_REQUEST);
    let by_id = DeleteTopicsRequest::default()
        .with_topics(vec![
            DeleteTopicState::default().with_topic_id(id),
            DeleteTopicState::default().with_topic_id(id),
        ])
        .with_timeout_ms(5_000);
    let r = c.call(&by_id, 6).await.unwrap().responses;
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].error_code, r[0].topic_id), (INVALID_REQUEST, id));
    assert_eq!(listed(&mut c).await, vec!["once"], "nothing was deleted");
    drop(c);
    stop(broker).await;
}

// ---------------------------------------------------------------------------
// The folders on disk.

fn append(topics: &Topics, name: &str, values: &[&[u8]]) {
    let topic = topics.get(name).unwrap();
    topic.partitions[0]
        .log
        .lock()
        .append(&batch(values), now_ms())
        .unwrap();
}

fn end_offset(topics: &Topics, name: &str) -> i64 {
    topics.get(name).unwrap().partitions[0]
        .log
        .lock()
        .end_offset()
}

#[test]
fn a_data_folder_of_the_older_layout_opens_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let topics_dir = dir.path().join("topics");
    let leftover;
    let live_lookalike;
    {
        let topics = Topics::open(dir.path(), LogConfig::default()).unwrap();
        for name in ["orders", "kept", "orders.deleted"] {
            topics.create(name, 1, BTreeMap::new(), false).unwrap();
            append(&topics, name, &[b"a", b"b", b"c"]);
        }
        // A live topic whose name has the older version's pattern, with
        // some other topic's id in it.
        let orders_id = topics.get("orders").unwrap().id.simple().to_string();
        live_lookalike = format!("kept.{orders_id}.deleted");
        topics
            .create(&live_lookalike, 1, BTreeMap::new(), false)
            .unwrap();
        append(&topics, &live_lookalike, &[b"x"]);
        // What the older version's delete left when it stopped before
        // removing the folder: the topic renamed in place.
        leftover = format!("orders.{orders_id}.deleted");
    }
    std::fs::rename(topics_dir.join("orders"), topics_dir.join(&leftover)).unwrap();
    // And one whose removal was cut short after its topic.json went: not a
    // topic, not provably a leftover either, so it is left alone.
    let ghost = "ghost.00000000000000000000000000000001.deleted";
    std::fs::create_dir_all(topics_dir.join(ghost).join("0")).unwrap();
    std::fs::write(topics_dir.join(ghost).join("0").join("start_offset"), "0\n").unwrap();

    let topics = Topics::open(dir.path(), LogConfig::default()).unwrap();
    let names: Vec<String> = topics.all().iter().map(|t| t.name.clone()).collect();
    assert_eq!(
        names,
        vec![
            "kept".to_owned(),
            live_lookalike.clone(),
            "orders.deleted".to_owned()
        ]
    );
    assert_eq!(end_offset(&topics, "kept"), 3);
    assert_eq!(end_offset(&topics, "orders.deleted"), 3);
    assert_eq!(end_offset(&topics, &live_lookalike), 1);
    assert_eq!(
        folder_names(&topics_dir),
        vec![
            ghost.to_owned(),
            "kept".to_owned(),
            live_lookalike.clone(),
            "orders.deleted".to_owned()
        ],
        "the leftover is gone, everything else is where it was"
    );
    assert!(folder_names(&dir.path().join("deleted")).is_empty());
    // The deleted topic's name is free again.
    topics.create("orders", 1, BTreeMap::new(), false).unwrap();
    assert_eq!(end_offset(&topics, "orders"), 0);
}

#[test]
fn a_folder_no_topic_owns_is_not_taken_for_a_new_topics_data() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::open(dir.path(), LogConfig::default()).unwrap();
    let topics_dir = dir.path().join("topics");
    // Data of unknown origin: refused, and left as it was.
    std::fs::create_dir_all(topics_dir.join("stray").join("0")).unwrap();
    let Err(r) = topics.create("stray", 1, BTreeMap::new(), false) else {
        panic!("a topic was made of a stray folder");
    };
    assert_eq!(r.error, ResponseError::KafkaStorageError);
    assert!(r.message.contains("stray"), "{}", r.message);
    assert!(topics_dir.join("stray").join("0").exists());
    assert!(topics.get("stray").is_none());
    // What a crash during a create leaves is reused.
    std::fs::create_dir_all(topics_dir.join("half")).unwrap();
    std::fs::write(topics_dir.join("half").join("topic.json.tmp"), "{").unwrap();
    topics.create("half", 2, BTreeMap::new(), false).unwrap();
    assert_eq!(topics.get("half").unwrap().partitions.len(), 2);
}

#[test]
fn a_deleted_topic_leaves_topics_at_once_and_its_files_go() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::open(dir.path(), LogConfig::default()).unwrap();
    let name = long_name(249);
    topics.create(&name, 3, BTreeMap::new(), false).unwrap();
    append(&topics, &name, &[b"a"]);
    let id = topics.delete(&name).unwrap().id;
    assert!(folder_names(&dir.path().join("topics")).is_empty());
    let trash = dir.path().join("deleted").join(id.simple().to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    while trash.exists() {
        assert!(Instant::now() < deadline, "the files were not removed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let Err(again) = topics.delete(&name) else {
        panic!("deleted twice");
    };
    assert_eq!(again.error, ResponseError::UnknownTopicOrPartition);
}

/// A produce or a retention pass that looked the topic up before it was
/// deleted must not write into the folder of a topic created again under
/// the same name.
#[test]
fn a_deleted_topics_partitions_cannot_touch_a_new_topic_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let topics = Topics::open(dir.path(), LogConfig::default()).unwrap();
    let configs: BTreeMap<String, String> = [
        ("segment.ms".to_owned(), "1".to_owned()),
        ("retention.ms".to_owned(), "1".to_owned()),
    ]
    .into();
    topics.create("t", 1, configs.clone(), false).unwrap();
    append(&topics, "t", &[b"a", b"b", b"c"]);
    let old = topics.get("t").unwrap();
    topics.delete("t").unwrap();
    topics.create("t", 1, configs, false).unwrap();
    let partition = dir.path().join("topics").join("t").join("0");
    let fresh = folder_names(&partition);

    let mut log = old.partitions[0].log.lock();
    assert!(log.append(&batch(&[b"late"]), now_ms()).is_err());
    let later = now_ms() + 60_000;
    assert!(!log.roll_if_due(later).unwrap());
    assert_eq!(log.enforce_retention(later).unwrap(), None);
    drop(log);
    assert_eq!(folder_names(&partition), fresh);
    drop(topics);
    let topics = Topics::open(dir.path(), LogConfig::default()).unwrap();
    let log = topics.get("t").unwrap().partitions[0]
        .log
        .lock()
        .end_offset();
    assert_eq!(log, 0, "the new topic is empty");
}
