//! Real Kafka clients against `tally broker`: kcat (Debian's, librdkafka
//! 2.0.2), confluent-kafka and kafka-python (in `.venv`), and kafkajs (in
//! `tests/compat/node_modules`). Each test starts its own broker on a free
//! loopback port with its own data folder, drives one client through topic
//! creation, metadata, produce (keys, values, headers, timestamps, codecs,
//! idempotence), reading back by partition assignment, and offset look-ups,
//! and checks that what comes back is exactly what went in.
//!
//! The client scripts live in `tests/compat/`; each prints a JSON result with
//! what it sent, what it read back and a list of mismatches, and exits 1 when
//! that list is not empty. `scripts/test` installs every client; under
//! CI=true a missing one fails its test.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use common::{Broker, CLIENT_TIMEOUT, ClientRun, client_scripts as scripts, python};

fn run(cmd: &mut Command, stdin: &[u8]) -> ClientRun {
    common::run(cmd, stdin, CLIENT_TIMEOUT)
}

/// Runs one of the Python client scripts against `broker` and returns its
/// JSON result, failing with everything it said when it found a mismatch.
fn python_client(python: &Path, script: &str, broker: &Broker, args: &[&str]) -> Value {
    let out = run(
        Command::new(python)
            .arg(scripts().join(script))
            .arg(broker.addr())
            .args(args),
        b"",
    );
    out.accept(script, broker)
}

fn records(v: &Value) -> &Vec<Value> {
    v.as_array().expect("an array of records")
}

#[test]
fn confluent_kafka_produces_every_codec_and_reads_back_exactly() {
    let Some(python) = python() else { return };
    // fsync=always: acks=all answers only once the batch is on disk.
    let broker = Broker::start(&["--fsync", "always"]);
    let result = python_client(&python, "with_confluent_kafka.py", &broker, &["orders"]);
    let (sent, read) = (records(&result["sent"]), records(&result["read"]));
    assert_eq!(sent.len(), 60, "20 records per partition were acknowledged");
    assert_eq!(read, sent, "records read back differ from those sent");
    assert_eq!(
        result["checks"]["partitions"]["got"],
        serde_json::json!([0, 1, 2])
    );
    broker.assert_quiet();
}

#[test]
fn kafka_python_produces_every_codec_and_reads_back_exactly() {
    let Some(python) = python() else { return };
    let broker = Broker::start(&["--fsync", "never"]);
    let result = python_client(&python, "with_kafka_python.py", &broker, &["payments"]);
    let (sent, read) = (records(&result["sent"]), records(&result["read"]));
    assert_eq!(sent.len(), 60, "20 records per partition were acknowledged");
    assert_eq!(read, sent, "records read back differ from those sent");
    assert_eq!(
        result["checks"]["partitions_for_topic"]["got"],
        serde_json::json!([0, 1, 2])
    );
    broker.assert_quiet();
}

#[test]
fn kafkajs_admin_and_idempotent_producer_write_what_confluent_kafka_reads() {
    let Some(python) = python() else { return };
    let Some(node) = common::node() else { return };
    let broker = Broker::start(&["--fsync", "never"]);
    let out = run(
        Command::new(node)
            .arg(scripts().join("with_kafkajs.js"))
            .arg(broker.addr())
            .arg("clicks"),
        b"",
    );
    let produced = out.accept("with_kafkajs.js", &broker);
    let sent = records(&produced["sent"]);
    assert_eq!(sent.len(), 36, "12 records per partition were acknowledged");
    // kafkajs reads only through consumer groups, which the broker does not
    // serve yet: confluent-kafka reads the partitions back by assignment.
    let back = python_client(&python, "read_back.py", &broker, &["clicks", "0", "1", "2"]);
    assert_eq!(
        records(&back["read"]),
        sent,
        "records read back differ from those kafkajs sent"
    );
    broker.assert_quiet();
}

/// One kcat producer run: its flags, and the records it sends as
/// (key, value), where None is sent as null.
struct KcatSend {
    partition: i32,
    flags: &'static [&'static str],
    headers: &'static [(&'static str, &'static str)],
    records: &'static [(Option<&'static str>, Option<&'static str>)],
}

const KCAT_SENDS: &[KcatSend] = &[
    KcatSend {
        partition: 0,
        flags: &[],
        headers: &[("app", "tally"), ("trace", "first")],
        records: &[
            (Some("k1"), Some("v1")),
            (None, Some("no key")),
            (Some("k3"), None),
        ],
    },
    KcatSend {
        partition: 0,
        flags: &["-X", "enable.idempotence=true"],
        headers: &[("dup", "one"), ("dup", "two"), ("empty", "")],
        records: &[(Some("k4"), Some("v4")), (Some("k5"), Some("value five"))],
    },
    KcatSend {
        partition: 1,
        flags: &["-z", "snappy"],
        headers: &[("codec", "snappy")],
        records: &[
            (Some("s1"), Some("snappy one")),
            (Some("s2"), Some("snappy two")),
        ],
    },
    KcatSend {
        partition: 1,
        flags: &["-z", "gzip"],
        headers: &[("codec", "gzip")],
        records: &[(Some("g1"), Some("gzip one")), (Some("g2"), None)],
    },
    KcatSend {
        partition: 1,
        flags: &["-z", "lz4"],
        headers: &[("codec", "lz4")],
        records: &[(Some("l1"), Some("lz4 one")), (None, Some("lz4 two"))],
    },
    KcatSend {
        partition: 1,
        flags: &["-X", "compression.codec=zstd"],
        headers: &[("codec", "zstd")],
        records: &[
            (Some("z1"), Some("zstd one")),
            (Some("z2"), Some("zstd two")),
        ],
    },
];

/// A record as kcat prints it with `KCAT_FORMAT`, less the timestamp.
fn kcat_line(
    topic: &str,
    partition: i32,
    offset: usize,
    key: Option<&str>,
    value: Option<&str>,
    headers: &[(&str, &str)],
) -> String {
    let len = |s: Option<&str>| s.map_or(-1, |s| s.len() as i64);
    let headers: Vec<String> = headers.iter().map(|(n, v)| format!("{n}={v}")).collect();
    format!(
        "{topic}\t{partition}\t{offset}\t{}\t{}\t{}\t{}\t{}",
        len(key),
        key.unwrap_or("NULL"),
        len(value),
        value.unwrap_or("NULL"),
        headers.join(",")
    )
}

const KCAT_FORMAT: &str = "%t\\t%p\\t%o\\t%T\\t%K\\t%k\\t%S\\t%s\\t%h\\n";

fn kcat(broker: &Broker, args: &[&str], stdin: &[u8]) -> String {
    let out = run(
        common::kcat()
            .args(["-b", broker.addr(), "-m", "10"])
            .args(args),
        stdin,
    );
    out.assert_success(&format!("kcat {args:?}"), broker);
    out.stdout
}

#[test]
fn kcat_lists_produces_consumes_and_queries_by_time() {
    if common::require_tool("kcat").is_none() {
        return;
    }
    let broker = Broker::start(&["--fsync", "never", "--default-partitions", "2"]);
    let topic = "audit.kcat";

    // Produce: each run is one producer; its records' timestamps are the
    // time kcat sent them, within the run.
    let mut expected: [Vec<(String, i64, i64)>; 2] = [Vec::new(), Vec::new()];
    for send in KCAT_SENDS {
        let mut input = String::new();
        for (key, value) in send.records {
            input.push_str(&format!("{}:{}\n", key.unwrap_or(""), value.unwrap_or("")));
        }
        let mut args = vec!["-P", "-t", topic, "-K", ":", "-Z"];
        let partition = send.partition.to_string();
        args.extend(["-p", &partition]);
        args.extend(send.flags);
        let headers: Vec<String> = send
            .headers
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        for h in &headers {
            args.extend(["-H", h]);
        }
        let before = common::now_ms();
        kcat(&broker, &args, input.as_bytes());
        let after = common::now_ms();
        let lines = &mut expected[send.partition as usize];
        for (key, value) in send.records {
            let line = kcat_line(
                topic,
                send.partition,
                lines.len(),
                *key,
                *value,
                send.headers,
            );
            lines.push((line, before, after));
        }
    }

    // Metadata: the broker, and the auto-created topic with its 2 partitions.
    let listing: Value = serde_json::from_str(&kcat(&broker, &["-L", "-J"], b"")).unwrap();
    assert_eq!(
        listing["brokers"],
        serde_json::json!([{"id": 0, "name": broker.addr()}]),
        "{listing}"
    );
    let described = listing["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == topic)
        .unwrap_or_else(|| panic!("{topic} is not listed: {listing}"));
    let leaders: Vec<(i64, i64)> = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                p["leader"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(leaders, [(0, 0), (1, 0)], "{described}");

    // Consume each partition from the beginning to its end.
    let mut timestamps: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    for partition in [0, 1] {
        let p = partition.to_string();
        let out = kcat(
            &broker,
            &[
                "-C",
                "-t",
                topic,
                "-p",
                &p,
                "-o",
                "beginning",
                "-e",
                "-Z",
                "-f",
                KCAT_FORMAT,
            ],
            b"",
        );
        let mut got = Vec::new();
        for line in out.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 9, "unexpected kcat line {line:?}");
            timestamps[partition].push(fields[3].parse().unwrap());
            let mut without_ts = fields.clone();
            without_ts.remove(3);
            got.push(without_ts.join("\t"));
        }
        let want: Vec<String> = expected[partition]
            .iter()
            .map(|(l, _, _)| l.clone())
            .collect();
        assert_eq!(got, want, "partition {partition} read back differs");
        for (ts, (line, before, after)) in timestamps[partition].iter().zip(&expected[partition]) {
            assert!(
                (*before..=*after).contains(ts),
                "{line}: timestamp {ts} is not the send time ({before}..={after})"
            );
        }
    }

    // The JSON envelope says the timestamps are the producer's (CreateTime).
    let envelope = kcat(
        &broker,
        &["-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-J"],
        b"",
    );
    for line in envelope.lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["tstype"], "create", "{line}");
    }

    // Offsets by time: the first offset at or after the time asked, -1 past
    // the last record; and consuming from a time starts there.
    let second_run = timestamps[0][3];
    let first_at_or_after = timestamps[0].iter().position(|t| *t >= second_run).unwrap();
    for (ts, want) in [
        (1, 0i64),
        (second_run, first_at_or_after as i64),
        (timestamps[0][4] + 1, -1),
    ] {
        let query = format!("{topic}:0:{ts}");
        let out = kcat(&broker, &["-Q", "-t", &query], b"");
        assert_eq!(
            out.trim(),
            format!("{topic} [0] offset {want}"),
            "-Q {query}"
        );
    }
    let from_time = format!("s@{second_run}");
    let out = kcat(
        &broker,
        &[
            "-C", "-t", topic, "-p", "0", "-o", &from_time, "-e", "-Z", "-f", "%o\\n",
        ],
        b"",
    );
    let offsets: Vec<usize> = out.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(
        offsets,
        (first_at_or_after..5).collect::<Vec<_>>(),
        "-o {from_time}"
    );

    broker.assert_quiet();
}
