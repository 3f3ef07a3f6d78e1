//! The mirror audit (DESIGN §11): a topic copied to another cluster is one
//! more tier of its books. Two `tally broker`s are clusters `a` and `b`, both
//! reporting to one agent run with `--mirror a:orders=b:a.orders`.
//! confluent-kafka produces known records to `a` (tests/compat/
//! collect_workload.py), and a small real mirror (tests/compat/
//! mirror_copy.py: consume from `a`, produce to `b` with the same partition
//! and timestamp) copies them, losing or duplicating records of chosen
//! buckets on purpose. The assertions read the agent's API and /metrics, as
//! a user would. The last test has cluster `b` be noida-db, a Kafka-compatible
//! server tally did not write (tests/common/peers.rs), watched by `tally
//! collect`, whose exact books count the copy.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::collector::Collector;
use common::peers::Noida;
use common::{Agent, Broker, client_scripts, metric, now_ms, python};

/// How long the agent may take to show what the clients did.
const SETTLE_S: u64 = 30;

fn agent(dir: &std::path::Path, width_ms: i64, grace: &str, mirror: &str) -> Agent {
    Agent::start(
        dir,
        &[
            "--bucket-width",
            &format!("{width_ms}ms"),
            "--grace",
            grace,
            "--tick",
            "200ms",
            "--window",
            "1h",
            "--mirror",
            mirror,
        ],
    )
}

fn broker(agent: &Agent, width_ms: i64, cluster: &str) -> Broker {
    let width = format!("{width_ms}ms");
    Broker::reporting_to(
        agent.addr,
        &["--bucket-width", &width, "--cluster", cluster],
    )
}

/// Produces `records` records to each of `partitions` partitions of `topic`
/// on `bootstrap`, one a second from `base` (partition p one ms later).
fn produce(bootstrap: &str, topic: &str, partitions: u32, records: u32, base: i64) {
    let py = python().expect("python with confluent-kafka (scripts/test installs it)");
    let mut cmd = Command::new(py);
    cmd.arg(client_scripts().join("collect_workload.py"))
        .args(["--bootstrap", bootstrap, "--topic", topic])
        .args(["--partitions", &partitions.to_string()])
        .args(["--records-per-partition", &records.to_string()])
        .args(["--base-ts-ms", &base.to_string(), "--group-suffix", "m"]);
    let run = common::run(&mut cmd, b"", Duration::from_secs(120));
    assert!(
        run.status.success(),
        "collect_workload.py failed: {}\n{}",
        run.stderr,
        run.stdout
    );
}

/// Runs the mirror from `a`'s `topic` to `b`'s `a.<topic>` with `extra`
/// arguments; its JSON line.
fn mirror(a: &Broker, b: &str, topic: &str, width_ms: i64, extra: &[String]) -> Value {
    let py = python().expect("python with confluent-kafka (scripts/test installs it)");
    let mut cmd = Command::new(py);
    cmd.arg(client_scripts().join("mirror_copy.py"))
        .args(["--from", a.addr(), "--topic", topic, "--to", b])
        .args(["--dest-topic", &format!("a.{topic}")])
        .args(["--width-ms", &width_ms.to_string()])
        .args(extra);
    let run = common::run(&mut cmd, b"", Duration::from_secs(120));
    assert!(
        run.status.success(),
        "mirror_copy.py failed: {}\n{}",
        run.stderr,
        run.stdout
    );
    serde_json::from_str(run.stdout.trim()).unwrap()
}

/// Per bucket of `a`'s `topic`: the `mirror:b` tier (bucket, status, records,
/// missing, excess, pending), where the bucket has one.
fn mirror_tier(agent: &Agent, topic: &str) -> Tier {
    // Not known yet (404) reads as no buckets.
    let (status, body) = common::get(
        agent.addr,
        &format!("/api/v1/topics/{topic}/buckets?cluster=a"),
        None,
    );
    if status != 200 {
        return Vec::new();
    }
    let view: Value = serde_json::from_str(&body).unwrap();
    view["buckets"]
        .as_array()
        .map(|buckets| {
            buckets
                .iter()
                .filter_map(|b| {
                    let m = &b["tiers"]["mirror:b"];
                    m.is_object().then(|| {
                        (
                            b["bucket"].as_i64().unwrap(),
                            m["status"].as_str().unwrap().to_owned(),
                            m["records"].as_u64().unwrap(),
                            m["missing"].as_u64().unwrap(),
                            m["excess"].as_u64().unwrap(),
                            m["pending"].as_u64().unwrap_or(0),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn s(status: &str) -> String {
    status.to_owned()
}

type Tier = Vec<(i64, String, u64, u64, u64, u64)>;

/// Waits until the `mirror:b` tier of `a`'s `topic` is `expected` ("when"
/// says which state); the last one seen where it does not come.
fn settle(agent: &Agent, topic: &str, when: &str, expected: &Tier) {
    let deadline = std::time::Instant::now() + Duration::from_secs(SETTLE_S);
    loop {
        let got = mirror_tier(agent, topic);
        if &got == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{when}: the mirror tier of {topic} is not {expected:?} after {SETTLE_S} s; last {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 10 s buckets in the lossy mirror's tests, so that they see them close:
/// the mirror copies records as they come, and each bucket is judged when
/// its grace ends.
const LOSSY_WIDTH_MS: i64 = 10_000;

#[test]
fn a_lossy_mirror_shows_complete_incomplete_and_excess_buckets() {
    if python().is_none() {
        return;
    }
    let (_dir, agent, a) = lossy_setup();
    let b = broker(&agent, LOSSY_WIDTH_MS, "b");
    lossy(&agent, &a, b.addr());
}

#[test]
fn a_lossy_mirror_into_a_foreign_cluster_is_audited_through_the_collector() {
    if python().is_none() || Noida::binary().is_none() {
        return;
    }
    let (_dir, agent, a) = lossy_setup();
    let noida = Noida::start();
    let width = format!("{LOSSY_WIDTH_MS}ms");
    let collector = Collector::start(
        &agent,
        &[
            "--cluster",
            "b",
            "--bootstrap",
            &noida.bootstrap(),
            "--bucket-width",
            &width,
            "--audit-topics",
            "a\\.orders",
        ],
    );
    lossy(&agent, &a, &noida.bootstrap());
    assert_eq!(collector.up("b"), Some(1.0), "{}", collector.log());
}

/// The agent of the lossy mirror's tests (its folder with it), and cluster
/// `a`'s broker.
fn lossy_setup() -> (tempfile::TempDir, Agent, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(
        &dir.path().join("agent"),
        LOSSY_WIDTH_MS,
        "5s",
        "a:orders=b:a.orders",
    );
    let a = broker(&agent, LOSSY_WIDTH_MS, "a");
    (dir, agent, a)
}

/// Produces 3 buckets of records to `a`'s `orders`, has the mirror copy them
/// to `b` losing 3 records of the second and copying 5 of the third twice,
/// and checks the books, the lag and /metrics at the agent.
fn lossy(agent: &Agent, a: &Broker, b: &str) {
    const WIDTH_MS: i64 = LOSSY_WIDTH_MS;
    // 2 partitions × 30 records, one a second from a bucket that has not
    // begun yet: 20 records in each of three buckets.
    let b0 = (now_ms() / WIDTH_MS + 2) * WIDTH_MS;
    let (b1, b2) = (b0 + WIDTH_MS, b0 + 2 * WIDTH_MS);
    produce(a.addr(), "orders", 2, 30, b0);
    let copy = mirror(
        a,
        b,
        "orders",
        WIDTH_MS,
        &[format!("--drop={b1}:3"), format!("--duplicate={b2}:5")],
    );
    assert_eq!(
        (&copy["read"], &copy["dropped"], &copy["duplicated"]),
        (&Value::from(60), &Value::from(3), &Value::from(5)),
        "{copy}"
    );

    // Each bucket closes a grace period after it ends; the copy stopped
    // rising long before, so the short one is lost, not pending.
    let expected = vec![
        (b0, s("complete"), 20, 0, 0, 0),
        (b1, s("incomplete"), 17, 3, 0, 0),
        (b2, s("excess"), 25, 0, 5, 0),
    ];
    std::thread::sleep(Duration::from_millis(
        u64::try_from(b2 + WIDTH_MS + 5_000 - now_ms()).unwrap_or(0),
    ));
    settle(agent, "orders", "after the copy", &expected);

    // The topic's books over the window say the same.
    let topics = agent.json("/api/v1/topics");
    let books = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["cluster"] == "a" && t["topic"] == "orders")
        .unwrap_or_else(|| panic!("no books of a:orders in {topics}"));
    let m = &books["tiers"]["mirror:b"];
    assert_eq!(
        (&m["records"], &m["missing"], &m["excess"]),
        (&Value::from(62), &Value::from(3), &Value::from(5)),
        "{books}"
    );
    // The 3 records lost are the mirror's lag, as old as their bucket.
    assert_eq!(m["mirror_lag"]["records"], 3, "{books}");
    let lag_seconds = m["mirror_lag"]["seconds"].as_f64().unwrap();
    let age = (now_ms() - b1) as f64 / 1000.0;
    assert!(
        lag_seconds > 0.0 && lag_seconds <= age,
        "the lag is the age of bucket {b1} ({age} s): {books}"
    );
    // The destination keeps its own books: its broker tier counts the copy.
    let dest = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["cluster"] == "b" && t["topic"] == "a.orders")
        .unwrap_or_else(|| panic!("no books of b:a.orders in {topics}"));
    assert_eq!(dest["tiers"]["broker"]["records"], 62, "{dest}");

    // /metrics agrees, under the tier's name.
    let text = agent.metrics();
    let series = |name: &str| {
        metric(
            &text,
            name,
            &[("cluster", "a"), ("topic", "orders"), ("tier", "mirror:b")],
        )
    };
    assert_eq!(series("tally_audit_missing_records"), Some(3.0));
    assert_eq!(series("tally_audit_excess_records"), Some(5.0));
    assert_eq!(series("tally_audit_records_total"), Some(62.0));
    assert_eq!(series("tally_audit_mirror_lag_records"), Some(3.0));
    assert!(series("tally_audit_mirror_lag_seconds").is_some_and(|s| s > 0.0));
    common::promtool_check_metrics(&text);
}

#[test]
fn a_slow_mirror_is_pending_then_late_once_it_catches_up() {
    if python().is_none() {
        return;
    }
    const WIDTH_MS: i64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    // A pattern rule, as MirrorMaker 2 names its copies.
    let agent = agent(&dir.path().join("agent"), WIDTH_MS, "15s", "a:*=b:a.*");
    let a = broker(&agent, WIDTH_MS, "a");
    let b = broker(&agent, WIDTH_MS, "b");
    // A bucket ten minutes back: closed before any of it is copied.
    let b0 = (now_ms() - 600_000).div_euclid(WIDTH_MS) * WIDTH_MS;
    produce(a.addr(), "slow", 1, 40, b0);
    // The mirror copies 25 of the 40 records and stops there for now.
    let first = mirror(
        &a,
        b.addr(),
        "slow",
        WIDTH_MS,
        &["--max-records=25".to_owned()],
    );
    assert_eq!(first["copied"], 25, "{first}");
    // Just copied: behind, not lossy.
    settle(
        &agent,
        "slow",
        "just copied",
        &vec![(b0, s("pending"), 25, 0, 0, 15)],
    );
    // A grace period without a rise: lost.
    settle(
        &agent,
        "slow",
        "a grace period later",
        &vec![(b0, s("incomplete"), 25, 15, 0, 0)],
    );
    // It catches up (from where it committed): late.
    let rest = mirror(&a, b.addr(), "slow", WIDTH_MS, &[]);
    assert_eq!(rest["copied"], 15, "{rest}");
    settle(
        &agent,
        "slow",
        "caught up",
        &vec![(b0, s("late"), 40, 0, 0, 0)],
    );
    let text = agent.metrics();
    let labels = [("cluster", "a"), ("topic", "slow"), ("tier", "mirror:b")];
    assert_eq!(
        metric(&text, "tally_audit_mirror_lag_records", &labels),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "tally_audit_missing_records", &labels),
        Some(0.0)
    );
}

#[test]
fn a_bad_mirror_flag_is_refused_at_start_naming_it() {
    for (rule, why) in [
        ("a:orders", "has no \"=\""),
        ("a:orders=", "is empty"),
        ("a:*=b:orders", "one side only"),
        ("orders=b:a.orders", "names no cluster"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = common::tally()
            .args(["agent", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(["--mirror", rule])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{rule}: {stderr}");
        assert!(
            stderr.contains(rule) && stderr.contains(why),
            "{rule}: {stderr}"
        );
    }
}
