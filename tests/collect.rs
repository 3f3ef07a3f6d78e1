//! `tally collect` against real Kafka-compatible servers on 127.0.0.1: tally's own
//! broker (plaintext and SASL_SSL with SCRAM), and two independent implementations
//! from PyPI, tansu and noida-db (tests/common/peers.rs). confluent-kafka
//! (tests/compat/collect_workload.py) and kafkajs (collect_workload.js) produce records
//! with known timestamps and commit chosen offsets; the collector reports to a real
//! agent, whose /metrics the assertions read, as a Prometheus user would:
//! per (group, topic, partition) the committed offset, lag in records (exact) and lag
//! seconds (within the poll interval plus 1 s of now − the record's timestamp).

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::collector::Collector;
use common::peers::{Noida, Tansu};
use common::{Agent, Broker, client_scripts, metric, node, now_ms, python, tally};

/// The collector's lag interval in these tests.
const LAG_INTERVAL_S: f64 = 1.0;

/// Runs collect_workload.py; its JSON (the records' offsets and timestamps and the
/// committed offsets).
fn workload(
    bootstrap: &str,
    topic: &str,
    partitions: u32,
    records: u32,
    suffix: &str,
    extra: &[&str],
) -> Value {
    let py = python().expect("python with confluent-kafka (scripts/test installs it)");
    // Recent timestamps: noida-db's retention deletes records whose own timestamps
    // are old; ten minutes back keeps lag seconds far above the tolerance.
    let base = now_ms() - 600_000;
    let mut cmd = Command::new(py);
    cmd.arg(client_scripts().join("collect_workload.py"))
        .args(["--bootstrap", bootstrap, "--topic", topic])
        .args(["--partitions", &partitions.to_string()])
        .args(["--records-per-partition", &records.to_string()])
        .args(["--base-ts-ms", &base.to_string(), "--group-suffix", suffix])
        .args(extra);
    let run = common::run(&mut cmd, b"", Duration::from_secs(120));
    assert!(
        run.status.success(),
        "collect_workload.py failed: {}\n{}",
        run.stderr,
        run.stdout
    );
    // With --live-seconds the workload's line comes first, then the live group's.
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut w = lines
        .iter()
        .find(|l| l["event"] == "workload")
        .cloned()
        .unwrap_or_else(|| panic!("no workload line in {}", run.stdout));
    for l in &lines {
        if l["event"] == "live" {
            w["live"] = l.clone();
        }
    }
    w
}

/// The timestamp of the record at `offset` of `partition`, from the workload's output.
fn timestamp_at(w: &Value, partition: i64, offset: i64) -> i64 {
    let p = w["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["partition"].as_i64() == Some(partition))
        .unwrap();
    p["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0].as_i64() == Some(offset))
        .map(|r| r[1].as_i64().unwrap())
        .unwrap_or_else(|| panic!("no record at offset {offset} of partition {partition}"))
}

fn end_of(w: &Value, partition: i64) -> i64 {
    w["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["partition"].as_i64() == Some(partition))
        .unwrap()["end"]
        .as_i64()
        .unwrap()
}

/// Waits until the agent reports `group`'s committed offsets on every partition of
/// the workload's topic, then checks committed, lag records and lag seconds.
fn assert_group_lag(agent: &Agent, cluster: &str, w: &Value, group: &str, committed: &[i64]) {
    let topic = w["topic"].as_str().unwrap().to_owned();
    let labels = |p: &str| {
        vec![
            ("cluster", cluster.to_owned()),
            ("group", group.to_owned()),
            ("topic", topic.clone()),
            ("partition", p.to_owned()),
        ]
    };
    let text = agent.until(
        60,
        &format!("{cluster}/{group} committed offsets at the agent"),
        |a| {
            let text = a.metrics();
            let all = committed.iter().enumerate().all(|(p, c)| {
                let l = labels(&p.to_string());
                let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
                metric(&text, "tally_consumer_committed_offset", &l) == Some(*c as f64)
            });
            all.then_some(text)
        },
    );
    let now = now_ms();
    for (p, &c) in committed.iter().enumerate() {
        let partition = i64::try_from(p).unwrap();
        let l = labels(&p.to_string());
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let end = end_of(w, partition);
        let lag = metric(&text, "tally_consumer_lag_records", &l).unwrap();
        assert_eq!(lag, (end - c) as f64, "{cluster}/{group} p{p}: lag records");
        let seconds = metric(&text, "tally_consumer_lag_seconds", &l).unwrap();
        if c >= end {
            assert_eq!(seconds, 0.0, "{cluster}/{group} p{p}: caught up");
        } else {
            let expected = (now - timestamp_at(w, partition, c)) as f64 / 1000.0;
            let tolerance = LAG_INTERVAL_S + 1.0;
            assert!(
                seconds <= expected + 0.2 && seconds >= expected - tolerance,
                "{cluster}/{group} p{p}: lag seconds {seconds}, expected {expected} (−{tolerance} s)"
            );
        }
        assert_eq!(
            metric(&text, "tally_consumer_lag_estimated", &l).unwrap_or(0.0),
            0.0,
            "{cluster}/{group} p{p}: the record was readable, not estimated"
        );
    }
}

fn committed_of(w: &Value, group: &str) -> Vec<i64> {
    w["groups"][group]
        .as_array()
        .unwrap_or_else(|| panic!("no group {group} in {w}"))
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// The shared scenario: a group with chosen commits and one caught up, on one cluster.
fn committed_and_caught_up(agent: &Agent, cluster: &str, bootstrap: &str, extra: &[&str]) {
    let w = workload(bootstrap, "orders", 3, 20, "a", extra);
    let committed = committed_of(&w, "committed-a");
    assert!(
        committed.iter().zip(0..).any(|(c, p)| *c < end_of(&w, p)),
        "{w}"
    );
    assert_group_lag(agent, cluster, &w, "committed-a", &committed);
    assert_group_lag(
        agent,
        cluster,
        &w,
        "caughtup-a",
        &committed_of(&w, "caughtup-a"),
    );
}

#[test]
fn lag_of_groups_on_tally_broker_and_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), &["--tick", "250ms"]);
    let broker = Broker::start(&[]);
    let collector = Collector::start(&agent, &["--bootstrap", broker.addr(), "--cluster", "ext"]);
    committed_and_caught_up(&agent, "ext", broker.addr(), &[]);
    assert_eq!(collector.up("ext"), Some(1.0), "{}", collector.log());

    // A group that commits more is followed; a new topic is picked up.
    let w = workload(
        broker.addr(),
        "payments",
        2,
        10,
        "b",
        &["--live-seconds", "3"],
    );
    let live: Vec<i64> = w["live"]["committed"]
        .as_array()
        .unwrap_or_else(|| panic!("no live group in {w}"))
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_group_lag(
        &agent,
        "ext",
        &w,
        "committed-b",
        &committed_of(&w, "committed-b"),
    );
    assert_group_lag(&agent, "ext", &w, "live-b", &live);
    let text = collector.metrics();
    assert!(
        metric(&text, "tally_collect_partitions", &[("cluster", "ext")]).unwrap() >= 5.0,
        "{text}"
    );
    // Group state and members reach the agent.
    let members = agent.until(30, "live-b's members at the agent", |a| {
        metric(
            &a.metrics(),
            "tally_consumer_group_members",
            &[("cluster", "ext"), ("group", "committed-a")],
        )
    });
    assert_eq!(members, 0.0, "a group with commits and no members");
    let metrics = agent.metrics();
    assert_eq!(
        metric(
            &metrics,
            "tally_consumer_group_state",
            &[
                ("cluster", "ext"),
                ("group", "committed-a"),
                ("state", "Empty")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tally_topic_partitions",
            &[("cluster", "ext"), ("topic", "payments")]
        ),
        Some(2.0)
    );

    // A deleted group goes away with no alarm.
    let py = python().unwrap();
    let run = common::run(
        Command::new(py).args([
            "-c",
            "import sys; from confluent_kafka.admin import AdminClient; \
             a = AdminClient({'bootstrap.servers': sys.argv[1]}); \
             [f.result(30) for f in a.delete_consumer_groups(['committed-a'], request_timeout=30).values()]",
            broker.addr(),
        ]),
        b"",
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "delete group: {}", run.stderr);
    agent.until(30, "committed-a forgotten at the agent", |a| {
        let text = a.metrics();
        let gone = !text.lines().any(|l| {
            l.starts_with("tally_consumer_lag_records{") && l.contains("group=\"committed-a\"")
        });
        gone.then_some(())
    });
    let status = metric(
        &agent.metrics(),
        "tally_consumer_group_status",
        &[
            ("cluster", "ext"),
            ("group", "committed-a"),
            ("status", "err"),
        ],
    );
    assert_ne!(status, Some(1.0), "a deleted group raises no alarm");
}

/// A group whose committed offset retention deleted: lag seconds are estimated from
/// the oldest record still there, and flagged; and a collector killed with -9 and
/// started again keeps its commit times (its state folder survives).
#[test]
fn lag_below_the_log_start_is_estimated_and_state_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), &["--tick", "250ms"]);
    let broker = Broker::start(&["--retention-check", "1s"]);
    let py = python().unwrap();
    let run = common::run(
        Command::new(&py).args([
            "-c",
            "import sys; from confluent_kafka.admin import AdminClient, NewTopic; \
             a = AdminClient({'bootstrap.servers': sys.argv[1]}); \
             t = NewTopic('expiring', 1, 1, config={'segment.bytes': '1024', 'retention.bytes': '1'}); \
             [f.result(30) for f in a.create_topics([t]).values()]",
            broker.addr(),
        ]),
        b"",
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "create topic: {}", run.stderr);
    let w = workload(
        broker.addr(),
        "expiring",
        1,
        60,
        "x",
        &["-X", "linger.ms=0", "-X", "batch.num.messages=1"],
    );
    let committed = committed_of(&w, "committed-x")[0];
    // Wait for retention to move the log start past the commit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let start = loop {
        let run = common::run(
            Command::new(&py).args([
                "-c",
                "import sys; from confluent_kafka import Consumer, TopicPartition; \
                 c = Consumer({'bootstrap.servers': sys.argv[1], 'group.id': 'probe'}); \
                 print(c.get_watermark_offsets(TopicPartition('expiring', 0), timeout=10)[0])",
                broker.addr(),
            ]),
            b"",
            Duration::from_secs(30),
        );
        let start: i64 = run.stdout.trim().parse().unwrap_or(-1);
        if start > committed {
            break start;
        }
        assert!(
            Instant::now() < deadline,
            "retention never passed offset {committed} (start {start})"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let state = tempfile::tempdir().unwrap();
    let mut collector = Collector::start_in(
        &agent,
        state.path(),
        &["--bootstrap", broker.addr(), "--cluster", "ret"],
    );
    let labels = [
        ("cluster", "ret"),
        ("group", "committed-x"),
        ("topic", "expiring"),
        ("partition", "0"),
    ];
    let text = agent.until(60, "an estimated lag sample", |a| {
        let text = a.metrics();
        (metric(&text, "tally_consumer_lag_estimated", &labels) == Some(1.0)).then_some(text)
    });
    let now = now_ms();
    let expected = (now - timestamp_at(&w, 0, start)) as f64 / 1000.0;
    let seconds = metric(&text, "tally_consumer_lag_seconds", &labels).unwrap();
    assert!(
        seconds <= expected + 0.2 && seconds >= expected - LAG_INTERVAL_S - 1.0,
        "estimated from the oldest record left (offset {start}): {seconds} s, expected {expected}"
    );
    assert_eq!(
        metric(&text, "tally_consumer_lag_records", &labels),
        Some((end_of(&w, 0) - committed) as f64)
    );
    // kill -9, then the same state folder: the commit times are those seen first.
    collector.child.kill().unwrap();
    collector.child.wait().unwrap();
    let file = state.path().join("state/ret/commits.json");
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let first_seen = saved
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["group"] == "committed-x")
        .unwrap_or_else(|| panic!("committed-x not saved: {saved}"))["first_seen_ms"]
        .as_i64()
        .unwrap();
    assert!(first_seen <= now, "{saved}");
    drop(collector);
    let _again = Collector::start_in(
        &agent,
        state.path(),
        &["--bootstrap", broker.addr(), "--cluster", "ret"],
    );
    std::thread::sleep(Duration::from_secs(3));
    let saved_again: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let still = saved_again
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["group"] == "committed-x")
        .unwrap()["first_seen_ms"]
        .as_i64()
        .unwrap();
    assert_eq!(still, first_seen, "the commit time survives the restart");
}

/// A group Empty with no new commit for --forget-empty-groups-after is retracted from
/// the agent, with no alarm, and comes back when it commits again.
#[test]
fn long_empty_groups_are_forgotten_without_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), &["--tick", "250ms"]);
    let broker = Broker::start(&[]);
    let _collector = Collector::start(
        &agent,
        &[
            "--bootstrap",
            broker.addr(),
            "--cluster",
            "idle",
            "--forget-empty-groups-after",
            "4s",
        ],
    );
    let w = workload(broker.addr(), "quiet", 1, 8, "f", &[]);
    assert_group_lag(
        &agent,
        "idle",
        &w,
        "committed-f",
        &committed_of(&w, "committed-f"),
    );
    let has_series = |text: &str, group: &str| {
        text.lines().any(|l| {
            l.starts_with("tally_consumer_committed_offset{")
                && l.contains(&format!("group=\"{group}\""))
        })
    };
    agent.until(30, "committed-f forgotten", |a| {
        (!has_series(&a.metrics(), "committed-f")).then_some(())
    });
    let text = agent.metrics();
    assert_ne!(
        metric(
            &text,
            "tally_consumer_group_status",
            &[
                ("cluster", "idle"),
                ("group", "committed-f"),
                ("status", "err")
            ]
        ),
        Some(1.0),
        "forgetting raises no alarm"
    );
    // It commits again (a new offset): it is watched again.
    let py = python().unwrap();
    let run = common::run(
        Command::new(py).args([
            "-c",
            "import sys; from confluent_kafka import Consumer, TopicPartition; \
             c = Consumer({'bootstrap.servers': sys.argv[1], 'group.id': 'committed-f'}); \
             c.commit(offsets=[TopicPartition('quiet', 0, 7)], asynchronous=False); c.close()",
            broker.addr(),
        ]),
        b"",
        Duration::from_secs(60),
    );
    assert!(run.status.success(), "commit: {}", run.stderr);
    agent.until(30, "committed-f back", |a| {
        let text = a.metrics();
        (metric(
            &text,
            "tally_consumer_committed_offset",
            &[
                ("cluster", "idle"),
                ("group", "committed-f"),
                ("topic", "quiet"),
                ("partition", "0"),
            ],
        ) == Some(7.0))
        .then_some(())
    });
}

#[test]
fn kafkajs_commits_are_read_too() {
    let node = node().expect("node with kafkajs (scripts/test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), &["--tick", "250ms"]);
    let broker = Broker::start(&[]);
    let _collector = Collector::start(&agent, &["--bootstrap", broker.addr(), "--cluster", "js"]);
    let base = now_ms() - 300_000;
    let mut cmd = Command::new(node);
    cmd.arg(client_scripts().join("collect_workload.js"))
        .args([
            "--bootstrap",
            broker.addr(),
            "--topic",
            "clicks",
            "--partitions",
            "2",
        ])
        .args([
            "--records-per-partition",
            "12",
            "--base-ts-ms",
            &base.to_string(),
        ])
        .args(["--group-suffix", "js"]);
    let run = common::run(&mut cmd, b"", Duration::from_secs(120));
    assert!(
        run.status.success(),
        "collect_workload.js: {}\n{}",
        run.stderr,
        run.stdout
    );
    let w: Value = serde_json::from_str(run.stdout.lines().last().unwrap()).unwrap();
    let groups = w["groups"].as_object().unwrap();
    assert!(!groups.is_empty(), "{w}");
    for (group, committed) in groups {
        let committed: Vec<i64> = committed
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_group_lag(&agent, "js", &w, group, &committed);
    }
}

/// The shared scenario on a foreign cluster, with a collector and an agent of its own.
fn lag_on_peer(cluster: &str, bootstrap: &str) {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), &["--tick", "250ms"]);
    let collector = Collector::start(&agent, &["--bootstrap", bootstrap, "--cluster", cluster]);
    committed_and_caught_up(&agent, cluster, bootstrap, &[]);
    assert_eq!(collector.up(cluster), Some(1.0));
}

#[test]
fn lag_on_tansu() {
    let tansu = Tansu::start();
    lag_on_peer("tansu", &tansu.bootstrap());
}

#[test]
fn lag_on_noida_db() {
    let noida = Noida::start();
    lag_on_peer("noida", &noida.bootstrap());
}

#[test]
fn two_clusters_in_one_process_and_one_goes_down() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), &["--tick", "250ms"]);
    let broker = Broker::start(&[]);
    let mut tansu = Tansu::start();
    let config = dir.path().join("collect.toml");
    std::fs::write(
        &config,
        format!(
            "lag_interval = \"1s\"\n\n[[cluster]]\ncluster = \"one\"\nbootstrap = \"{}\"\n\n[[cluster]]\ncluster = \"two\"\nbootstrap = [\"{}\"]\nrequest_timeout = \"2s\"\n",
            broker.addr(),
            tansu.bootstrap()
        ),
    )
    .unwrap();
    let collector = Collector::start(&agent, &["--config", config.to_str().unwrap()]);
    let w = workload(broker.addr(), "orders", 2, 10, "one", &[]);
    assert_group_lag(
        &agent,
        "one",
        &w,
        "committed-one",
        &committed_of(&w, "committed-one"),
    );
    let wait_up = |cluster: &str, want: f64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while collector.up(cluster) != Some(want) {
            assert!(
                Instant::now() < deadline,
                "{cluster} never {want}: {}",
                collector.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_up("two", 1.0);
    tansu.stop();
    wait_up("two", 0.0);
    assert_eq!(collector.up("one"), Some(1.0));
    // The other cluster goes on: a new commit there still arrives.
    let w2 = workload(broker.addr(), "more", 1, 6, "one2", &[]);
    assert_group_lag(
        &agent,
        "one",
        &w2,
        "committed-one2",
        &committed_of(&w2, "committed-one2"),
    );
    tansu.restart();
    wait_up("two", 1.0);
    assert!(!collector.log().contains("panicked"), "{}", collector.log());
}

/// tally's broker over SASL_SSL with SCRAM-SHA-512, with certificates made here.
#[test]
fn lag_over_sasl_ssl_with_scram() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl (scripts/test installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=tally test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "req.pem",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "req.pem",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    let users = d.join("users.toml");
    std::fs::write(
        &users,
        "[[user]]\nname = \"watcher\"\npassword = \"watch-pw-5e1f\"\n",
    )
    .unwrap();
    owner_only(&users);
    let password_file = d.join("pw");
    std::fs::write(&password_file, "watch-pw-5e1f\n").unwrap();
    owner_only(&password_file);
    let p = |name: &str| d.join(name).to_str().unwrap().to_owned();
    let broker = Broker::start(&[
        "--tls-cert",
        &p("cert.pem"),
        "--tls-key",
        &p("key.pem"),
        "--sasl-users",
        &p("users.toml"),
    ]);
    let agent = Agent::start(&d.join("agent"), &["--tick", "250ms"]);
    let client = [
        "--security-protocol",
        "sasl_ssl",
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        "watcher",
        "--sasl-password",
        "watch-pw-5e1f",
        "--ssl-ca",
        &p("ca.pem"),
    ];
    let collector = Collector::start(
        &agent,
        &[
            "--bootstrap",
            broker.addr(),
            "--cluster",
            "secure",
            "--security-protocol",
            "sasl_ssl",
            "--sasl-mechanism",
            "SCRAM-SHA-512",
            "--sasl-username",
            "watcher",
            "--sasl-password-file",
            &p("pw"),
            "--ssl-ca",
            &p("ca.pem"),
        ],
    );
    let w = workload(broker.addr(), "secured", 2, 10, "s", &client);
    assert_group_lag(
        &agent,
        "secure",
        &w,
        "committed-s",
        &committed_of(&w, "committed-s"),
    );
    assert_eq!(collector.up("secure"), Some(1.0));
    assert!(
        !collector.log().contains("watch-pw-5e1f"),
        "the password is never logged"
    );

    // A wrong password: the cluster is down for this collector, and says why.
    let bad_pw = d.join("bad-pw");
    std::fs::write(&bad_pw, "nope\n").unwrap();
    owner_only(&bad_pw);
    let bad = Collector::start(
        &agent,
        &[
            "--bootstrap",
            broker.addr(),
            "--cluster",
            "secure-bad",
            "--security-protocol",
            "sasl_ssl",
            "--sasl-mechanism",
            "SCRAM-SHA-512",
            "--sasl-username",
            "watcher",
            "--sasl-password-file",
            &p("bad-pw"),
            "--ssl-ca",
            &p("ca.pem"),
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(bad.up("secure-bad"), Some(0.0));
    let log = bad.log();
    assert!(log.contains("watcher") && !log.contains("nope\n"), "{log}");
}

fn owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn bad_config_names_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], &str); 5] = [
        ("unknown key", &["--config", "CFG"], "bogus_key"),
        (
            "bad regex",
            &[
                "--cluster",
                "c",
                "--bootstrap",
                "127.0.0.1:1",
                "--topics",
                "orders([",
            ],
            "orders([",
        ),
        ("missing bootstrap", &["--cluster", "c"], "no bootstrap"),
        (
            "bad protocol",
            &[
                "--cluster",
                "c",
                "--bootstrap",
                "127.0.0.1:1",
                "--security-protocol",
                "tls13",
            ],
            "'tls13'",
        ),
        (
            "bad duration",
            &[
                "--cluster",
                "c",
                "--bootstrap",
                "127.0.0.1:1",
                "--lag-interval",
                "often",
            ],
            "\"often\"",
        ),
    ];
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[[cluster]]\ncluster = \"c\"\nbootstrap = \"127.0.0.1:1\"\nbogus_key = 1\n",
    )
    .unwrap();
    for (what, args, needle) in cases {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if *a == "CFG" {
                    cfg.display().to_string()
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        let out = tally()
            .arg("collect")
            .args(&args)
            .args(["--metrics-listen", "", "--agent", ""])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what}: accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(needle),
            "{what}: {stderr:?} should name {needle:?}"
        );
    }
    // --print-config shows the effective settings and never a password.
    let out = tally()
        .args([
            "collect",
            "--cluster",
            "c",
            "--bootstrap",
            "127.0.0.1:9092",
            "--print-config",
        ])
        .args([
            "--security-protocol",
            "sasl_plaintext",
            "--sasl-mechanism",
            "PLAIN",
        ])
        .args(["--sasl-username", "u", "--sasl-password", "hunter2-secret"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("cluster = \"c\"") && text.contains("<redacted>"),
        "{text}"
    );
    assert!(!text.contains("hunter2-secret"), "{text}");
}

/// Books per bucket and tier: (records, pending).
type Books = BTreeMap<i64, BTreeMap<String, (u64, u64)>>;

/// The agent's books of `topic` in `cluster`.
fn agent_books(agent: &Agent, cluster: &str, topic: &str) -> Option<Books> {
    let path = format!("/api/v1/topics/{topic}/buckets?cluster={cluster}");
    let (status, body) = common::try_get(agent.addr, &path, None).ok()?;
    if status != 200 {
        return None;
    }
    let view: Value = serde_json::from_str(&body).unwrap();
    let mut books = Books::new();
    for b in view["buckets"].as_array()? {
        let tiers: &mut BTreeMap<String, (u64, u64)> =
            books.entry(b["bucket"].as_i64()?).or_default();
        for (tier, t) in b["tiers"].as_object()? {
            tiers.insert(
                tier.clone(),
                (
                    t["records"].as_u64()?,
                    t.get("pending").and_then(Value::as_u64).unwrap_or(0),
                ),
            );
        }
    }
    Some(books)
}

/// The books the workload `w` must give, in buckets of `width_ms`: every record in
/// the bucket of its timestamp; for each group, the records below its commit
/// consumed and the rest pending (the collector's no-fetch rule, DESIGN §2).
fn workload_books(w: &Value, width_ms: i64) -> Books {
    let mut books = Books::new();
    let groups = w["groups"].as_object().unwrap();
    for p in w["offsets"].as_array().unwrap() {
        let partition = p["partition"].as_u64().unwrap() as usize;
        for r in p["records"].as_array().unwrap() {
            let (offset, ts) = (r[0].as_i64().unwrap(), r[1].as_i64().unwrap());
            let tiers = books.entry(ts.div_euclid(width_ms) * width_ms).or_default();
            tiers.entry("broker".into()).or_default().0 += 1;
            for (group, committed) in groups {
                let cell = tiers.entry(format!("group:{group}")).or_default();
                if offset < committed[partition].as_i64().unwrap() {
                    cell.0 += 1;
                } else {
                    cell.1 += 1;
                }
            }
        }
    }
    books
}

/// The collector's exact books of a peer's topic (`--audit-topics`), records in
/// batches of `codec`, equal the workload's ground truth bucket by bucket and tier
/// by tier.
fn books_on_peer(cluster: &str, bootstrap: &str, codec: &str) {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), &["--tick", "250ms"]);
    let w = workload(
        bootstrap,
        "audited",
        2,
        150,
        "books",
        &[
            "-X",
            &format!("compression.codec={codec}"),
            "-X",
            "linger.ms=20",
        ],
    );
    let collector = Collector::start(
        &agent,
        &[
            "--bootstrap",
            bootstrap,
            "--cluster",
            cluster,
            "--audit-topics",
            "audited",
        ],
    );
    let want = workload_books(&w, 60_000);
    assert!(
        want.len() >= 2,
        "the records span one bucket only: {want:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = agent_books(&agent, cluster, "audited");
        if got.as_ref() == Some(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{cluster}: the collector's books differ from the truth:\nagent {got:?}\ntruth {want:?}\ncollector log:\n{}",
            common::tail(&collector.log())
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn exact_books_on_tansu() {
    let tansu = Tansu::start();
    books_on_peer("tansu", &tansu.bootstrap(), "gzip");
}

#[test]
fn exact_books_on_noida_db() {
    let noida = Noida::start();
    books_on_peer("noida", &noida.bootstrap(), "zstd");
}
