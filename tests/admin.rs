//! The admin APIs of `tally broker` through confluent-kafka's AdminClient
//! (and kafka-python's for DescribeLogDirs), as tools call them on start:
//! CreatePartitions grows a topic and keeps its records, and refuses what
//! cannot be done with a clear error; the ACL calls answer
//! SECURITY_DISABLED (no authorizer runs); DescribeLogDirs gives the log
//! folder and each partition's size; OffsetDelete removes an idle group's
//! offsets and keeps a live group's. The partitions survive a restart.
//!
//! The client script is `tests/compat/admin_confluent_kafka.py`;
//! `scripts/test` installs the clients; under CI=true a missing one fails.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::process::Command;

use serde_json::{Value, json};

use common::{Broker, CLIENT_TIMEOUT, client_scripts as scripts, python};

/// The error a call gave: (name, message).
fn refused(v: &Value) -> (String, String) {
    (
        v["name"].as_str().unwrap_or_default().to_owned(),
        v["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn admin_clients_grow_a_topic_and_get_clear_answers_for_acls_and_log_dirs() {
    let Some(python) = python() else { return };
    let mut broker = Broker::start(&["--node-id", "3"]);
    let run = common::run(
        Command::new(&python)
            .arg(scripts().join("admin_confluent_kafka.py"))
            .arg(broker.addr())
            .arg("3"),
        b"",
        CLIENT_TIMEOUT,
    );
    let out = run.accept("admin_confluent_kafka.py", &broker);

    // Grown from 2 to 4, then to 5 with an assignment naming this broker.
    assert_eq!(out["before"], json!([0, 1]));
    assert_eq!(out["grow"], Value::Null, "{out}");
    assert_eq!(out["validate_only"], Value::Null, "{out}");
    assert_eq!(out["assigned_here"], Value::Null, "{out}");
    assert_eq!(
        out["after"],
        json!([0, 1, 2, 3, 4]),
        "validate_only grew nothing: {out}"
    );
    // The old partitions keep their records; the new one takes records.
    let read = &out["read"];
    let want: Vec<String> = (0..10).map(|i| format!("p0-{i}")).collect();
    assert_eq!(read["0"], json!(want));
    let want: Vec<String> = (0..10).map(|i| format!("p1-{i}")).collect();
    assert_eq!(read["1"], json!(want));
    assert_eq!(read["4"], json!(["new-partition"]));
    assert_eq!(out["delivered_to_new"], json!([[null, 4, 0]]));

    // What cannot be done is refused, saying why.
    let (name, message) = refused(&out["fewer"]);
    assert_eq!(name, "INVALID_PARTITIONS", "{out}");
    assert!(
        message.contains("has 4 partitions") && message.contains("\"3\""),
        "{message}"
    );
    let (name, message) = refused(&out["unknown"]);
    assert_eq!(name, "UNKNOWN_TOPIC_OR_PART", "{out}");
    assert!(message.contains("no-such-topic"), "{message}");
    let (name, message) = refused(&out["assigned_elsewhere"]);
    assert_eq!(name, "INVALID_REPLICA_ASSIGNMENT", "{out}");
    assert!(
        message.contains("[10]") && message.contains("[3]"),
        "{message}"
    );

    // CreateTopics takes an assignment to this broker, and refuses another.
    assert_eq!(out["create_assigned_here"], Value::Null, "{out}");
    assert_eq!(out["assigned_partitions"], json!([0, 1, 2]));
    let (name, message) = refused(&out["create_assigned_elsewhere"]);
    assert_eq!(name, "INVALID_REPLICA_ASSIGNMENT", "{out}");
    assert!(
        message.contains("partition 1 is assigned to brokers [4]"),
        "{message}"
    );

    // Topic configs at creation: Kafka's names accepted and described.
    assert_eq!(out["create_configured"], Value::Null, "{out}");
    assert_eq!(
        out["described_at_creation"],
        json!({
            "compression.type": "zstd",
            "max.message.bytes": "2000000",
            "delete.retention.ms": "1000",
            "min.insync.replicas": "1",
            "retention.ms": "3600000",
        })
    );
    // max.message.bytes 1000: a batch of 100 B goes in, one of 5000 B is refused.
    assert_eq!(
        out["max_message_bytes"],
        json!([[100, null], [5000, "MSG_SIZE_TOO_LARGE"]]),
        "{out}"
    );
    let (name, message) = refused(&out["create_bogus_config"]);
    assert_eq!(name, "INVALID_CONFIG", "{out}");
    assert!(message.contains("\"no.such.config\""), "{message}");
    // IncrementalAlterConfigs sets and deletes; AlterConfigs replaces all.
    assert_eq!(out["incremental"], Value::Null, "{out}");
    assert_eq!(
        out["after_incremental"],
        json!({"retention.ms": "7200000", "compression.type": null, "max.message.bytes": "2000000"})
    );
    for (call, named) in [
        ("incremental_bogus", "\"bogus.config\""),
        ("incremental_bad_value", "\"brotli\""),
        ("incremental_broker", "flags"),
    ] {
        let (name, message) = refused(&out[call]);
        assert_eq!(name, "INVALID_CONFIG", "{call}: {out}");
        assert!(message.contains(named), "{call}: {message}");
    }
    assert_eq!(out["alter"], Value::Null, "{out}");
    let default_retention = out["after_alter"]["retention.ms"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(out["after_alter"]["segment.ms"], "60000", "{out}");
    assert_ne!(
        default_retention, "7200000",
        "AlterConfigs puts back the default: {out}"
    );
    assert_eq!(
        out["after_alter"]["max.message.bytes"],
        Value::Null,
        "{out}"
    );

    // DeleteRecords moves the log start; a lower offset changes nothing; past
    // the end is refused; a reader from 0 starts at the new start.
    assert_eq!(out["delete_records"], json!({"low_watermark": 6}), "{out}");
    assert_eq!(
        out["delete_records_again_lower"],
        json!({"low_watermark": 6}),
        "{out}"
    );
    assert_eq!(
        out["delete_records_past_end"],
        json!({"name": "OFFSET_OUT_OF_RANGE"}),
        "{out}"
    );
    assert_eq!(
        out["trimmed_read"],
        json!(["t-6", "t-7", "t-8", "t-9"]),
        "{out}"
    );
    assert_eq!(out["trimmed_watermarks"], json!([6, 10]), "{out}");

    // DescribeCluster and DescribeTopics: this broker, and every operation.
    assert_eq!(out["cluster"]["controller"], 3, "{out}");
    assert_eq!(out["cluster"]["nodes"], json!([3]), "{out}");
    assert_eq!(
        out["cluster"]["operations"],
        json!([
            "ALTER",
            "ALTER_CONFIGS",
            "CLUSTER_ACTION",
            "CREATE",
            "DESCRIBE",
            "DESCRIBE_CONFIGS",
            "IDEMPOTENT_WRITE"
        ]),
        "{out}"
    );
    assert_eq!(
        out["topic_operations"],
        json!([
            "ALTER",
            "ALTER_CONFIGS",
            "CREATE",
            "DELETE",
            "DESCRIBE",
            "DESCRIBE_CONFIGS",
            "READ",
            "WRITE"
        ]),
        "{out}"
    );
    assert_eq!(out["topic_partitions"], 5, "{out}");

    // No authorizer: every ACL call says so (librdkafka drops
    // DescribeAcls' error and shows no ACLs; kafka-python shows the error).
    assert_eq!(out["describe_acls_confluent"], json!([]), "{out}");
    assert_eq!(
        out["describe_acls"]["name"], "SecurityDisabledError",
        "{out}"
    );
    for call in ["create_acls", "delete_acls"] {
        let (name, message) = refused(&out[call]);
        assert_eq!(name, "SECURITY_DISABLED", "{call}: {out}");
        assert!(message.contains("no authorizer"), "{call}: {message}");
    }

    // The log folder, with the grown topic's partitions in it.
    let dirs = out["log_dirs"].as_str().unwrap();
    let folder = std::fs::canonicalize(broker.data_dir().join("topics")).unwrap();
    assert!(dirs.contains(&folder.display().to_string()), "{dirs}");
    assert!(dirs.contains("grown"), "{dirs}");

    // OffsetDelete: an empty group's offset goes, the other stays; a live
    // group subscribed to the topic keeps it; no group: refused.
    assert_eq!(
        out["offset_delete_idle"],
        json!({"grown/0": "NoError"}),
        "{out}"
    );
    assert_eq!(out["idle_left"], json!(["grown/1=9"]), "{out}");
    assert_eq!(
        out["offset_delete_live"],
        json!({"grown/0": "GroupSubscribedToTopicError"}),
        "{out}"
    );
    assert_eq!(
        out["offset_delete_unknown"],
        json!("GroupIdNotFoundError"),
        "{out}"
    );

    // After a restart the topic still has 5 partitions and its records.
    broker.restart();
    let run = common::run(
        Command::new(&python).arg("-c").arg(format!(
            "from confluent_kafka.admin import AdminClient, ConfigResource; import json; \
             a = AdminClient({{'bootstrap.servers': '{}'}}); \
             md = a.list_topics(topic='grown', timeout=10); \
             r = ConfigResource(ConfigResource.Type.TOPIC, 'configured'); \
             c = a.describe_configs([r])[r].result(timeout=15); \
             print(json.dumps({{'partitions': sorted(md.topics['grown'].partitions), 'segment.ms': c['segment.ms'].value}}))",
            broker.addr()
        )),
        b"",
        CLIENT_TIMEOUT,
    );
    let after = run.accept("list_topics after the restart", &broker);
    assert_eq!(after["partitions"], json!([0, 1, 2, 3, 4]));
    assert_eq!(
        after["segment.ms"], "60000",
        "AlterConfigs is durable: {after}"
    );
    // The only warning: the batch over max.message.bytes, named.
    let log = broker.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0]
            .contains("5070 bytes is over topic \"small-messages\"'s max.message.bytes (1000)"),
        "{warnings:#?}"
    );
}
