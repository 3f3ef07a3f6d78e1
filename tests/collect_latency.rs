//! End-to-end latency of a collected cluster (DESIGN.md §9): `tally collect`, reading
//! a cluster's records for its books, reports record timestamp → the read for the
//! `broker` tier and record timestamp → the poll that saw the covering commit for
//! each group, in the same `latency` messages the instrumented broker sends, so that
//! the agent's `tally_audit_latency_seconds` (and the Grafana latency panels over
//! it) show a collected cluster too.
//!
//! The test runs an agent, a `tally broker` reporting to it as cluster `local`, and
//! a `tally collect` on that broker reporting as cluster `copy`; real clients produce
//! and commit, and the test reads the histograms a user would scrape from the
//! agent's /metrics.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use common::collector::Collector;
use common::{Agent, Broker, client_scripts as scripts, now_ms};

const LATENCY: &str = "tally_audit_latency_seconds";

/// Produces `plan` (see reconcile_produce.py) with confluent-kafka; the timestamp
/// each record was acknowledged with (the append time on a LogAppendTime topic).
fn produce(python: &PathBuf, broker: &Broker, topic: &str, plan: &Value) -> Vec<i64> {
    let result = common::client_result(
        &format!("confluent-kafka producing to {topic}"),
        Command::new(python)
            .arg(scripts().join("reconcile_produce.py"))
            .args(["confluent-kafka", broker.addr(), topic]),
        plan,
        broker,
    );
    result["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["timestamp"].as_i64().unwrap())
        .collect()
}

/// One series of the latency histogram of (`cluster`, `topic`, `tier`): `suffix` is
/// `_count`, `_sum` or `_bucket` (with `le`).
fn latency(
    text: &str,
    cluster: &str,
    topic: &str,
    tier: &str,
    suffix: &str,
    le: Option<&str>,
) -> Option<f64> {
    let mut labels = vec![("cluster", cluster), ("topic", topic), ("tier", tier)];
    if let Some(le) = le {
        labels.push(("le", le));
    }
    common::metric(text, &format!("{LATENCY}{suffix}"), &labels)
}

/// Asserts that (`cluster`, `topic`, `tier`) holds `count` latencies, each within
/// `range_ms`, as far as the histogram's bounds and its mean tell.
fn assert_within(
    text: &str,
    cluster: &str,
    topic: &str,
    tier: &str,
    count: u64,
    range_ms: (i64, i64),
) {
    let what = format!("{cluster}/{topic}/{tier}");
    let series: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with(LATENCY)
                && l.contains(&format!("cluster=\"{cluster}\""))
                && l.contains(&format!("topic=\"{topic}\""))
                && l.contains(&format!("tier=\"{tier}\""))
        })
        .collect();
    let n = latency(text, cluster, topic, tier, "_count", None);
    assert_eq!(n, Some(count as f64), "{what}: {series:#?}");
    // Every bucket bound below the range holds none; every one above holds all.
    for line in &series {
        let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let value: f64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
        let bound_ms = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse::<f64>().unwrap() * 1000.0
        };
        if bound_ms < range_ms.0 as f64 {
            assert_eq!(
                value, 0.0,
                "{what}: latencies below {} ms: {series:#?}",
                range_ms.0
            );
        }
        if bound_ms >= range_ms.1 as f64 {
            assert_eq!(
                value, count as f64,
                "{what}: latencies above {} ms: {series:#?}",
                range_ms.1
            );
        }
    }
    let mean_ms =
        latency(text, cluster, topic, tier, "_sum", None).unwrap() * 1000.0 / count as f64;
    assert!(
        (range_ms.0 as f64 - 1.0..=range_ms.1 as f64 + 1.0).contains(&mean_ms),
        "{what}: a mean of {mean_ms} ms, outside {range_ms:?}: {series:#?}"
    );
}

/// Records stamped 200 s ago, read by the collector as they are appended and then
/// committed by a group: the `broker` tier's latency is their age when read, the
/// group's their age at the poll that saw the commit; records of a LogAppendTime
/// topic are timed from their append, whatever the producer stamped.
#[test]
fn a_collected_cluster_shows_read_and_commit_latency_of_real_records() {
    let Some(python) = common::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &dir.path().join("agent"),
        &["--bucket-width", "60s", "--tick", "200ms"],
    );
    let broker = Broker::reporting_to(agent.addr, &["--bucket-width", "60s"]);
    let copy = Collector::copy_of(&agent, &broker, "orders|stamped");

    let ts = now_ms() - 200_000;
    let before_produce = now_ms();
    let plan = json!({"create": {"partitions": 2}, "batches": [
        {"partition": 0, "codec": "none", "timestamps": [ts, ts + 1, ts + 2, ts + 3]},
        {"partition": 1, "codec": "lz4", "timestamps": [ts + 10, ts + 11, ts + 12]}]});
    let stamps = produce(&python, &broker, "orders", &plan);
    assert_eq!(
        stamps,
        [ts, ts + 1, ts + 2, ts + 3, ts + 10, ts + 11, ts + 12]
    );
    // Stamped an hour ago by the producer; the broker stamps its append time.
    let hour_ago = now_ms() - 3_600_000;
    let plan = json!({
        "create": {"partitions": 1, "configs": {"message.timestamp.type": "LogAppendTime"}},
        "batches": [{"partition": 0, "codec": "none", "timestamps": [hour_ago, hour_ago + 1, hour_ago + 2]}]});
    let appended = produce(&python, &broker, "stamped", &plan);
    assert!(
        appended.iter().all(|t| *t >= before_produce),
        "{appended:?}"
    );

    // The group commits 3 on both partitions: 3 + 3 records, the last of partition 0
    // left pending.
    let before_commit = now_ms();
    let steps = json!({"steps": [{"offsets": {"0": 0, "1": 0}, "pause_ms": 0},
                                 {"offsets": {"0": 3, "1": 3}, "pause_ms": 0}]});
    common::client_result(
        "group billing committing",
        Command::new(&python)
            .arg(scripts().join("reconcile_group.py"))
            .args(["commit", broker.addr(), "orders", "billing"]),
        &steps,
        &broker,
    );

    let text = agent.until(60, "the collected cluster's latency histograms", |a| {
        let m = a.metrics();
        let count = |cluster, topic, tier| latency(&m, cluster, topic, tier, "_count", None);
        let done = count("copy", "orders", "broker") == Some(7.0)
            && count("copy", "orders", "group:billing") == Some(6.0)
            && count("copy", "stamped", "broker") == Some(3.0)
            && count("local", "orders", "group:billing") == Some(6.0);
        done.then_some(m)
    });
    let seen = now_ms();
    // Read between the produce and now; each record's age then.
    assert_within(
        &text,
        "copy",
        "orders",
        "broker",
        7,
        (before_produce - (ts + 12), seen - ts),
    );
    // Committed after `before_commit`, seen by a poll before now.
    assert_within(
        &text,
        "copy",
        "orders",
        "group:billing",
        6,
        (before_commit - (ts + 12), seen - ts),
    );
    // Timed from the append, not from the producer's stamp an hour before.
    let newest = appended.iter().max().unwrap();
    let oldest = appended.iter().min().unwrap();
    assert_within(&text, "copy", "stamped", "broker", 3, (0, seen - oldest));
    assert!(seen - newest < 60_000, "{appended:?}");
    // The instrumented broker timed the same records: as many, in the same ranges.
    assert_eq!(
        latency(&text, "local", "orders", "broker", "_count", None),
        Some(7.0)
    );
    assert_within(
        &text,
        "local",
        "orders",
        "group:billing",
        6,
        (before_commit - (ts + 12), seen - ts),
    );
    common::promtool_check_metrics(&text);
    drop(copy);
}
