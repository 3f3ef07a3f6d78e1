//! `tally collect` takes commit times from `__consumer_offsets` where the cluster has
//! it (issue 14, DESIGN.md §2), end to end against a Kafka-compatible server tally did
//! not write: tansu (tests/common/peers.rs). tansu keeps no `__consumer_offsets` of its
//! own but accepts a topic of that name, so the test creates it and writes records in
//! Kafka's exact binary key and value layouts (tests/compat/offsets_topic_records.py,
//! with chosen commit times), for groups that also really commit the same offsets
//! (tests/compat/collect_workload.py). The assertions read the agent's
//! `/api/v1/groups/{group}` as a user would: the commit time is the one in the log,
//! not the poll's; a group that commits the same offset again reads `stall`, not
//! `stop`; and a restarted collector resumes the topic where it stopped.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use common::collector::Collector;
use common::peers::Tansu;
use common::{Agent, client_scripts, get, now_ms, python};

const CLUSTER: &str = "tansu";

/// Starts the collector on tansu with its state in `dir`, and waits until it reached it.
fn start_collector(agent: &Agent, bootstrap: &str, dir: &Path) -> Collector {
    let c = Collector::start_in(
        agent,
        dir,
        &["--bootstrap", bootstrap, "--cluster", CLUSTER],
    );
    c.until(20, "the collector to reach tansu", |c| {
        (c.up(CLUSTER) == Some(1.0)).then_some(())
    });
    c
}

/// Polls the collector finished since it started.
fn polls(c: &Collector) -> f64 {
    c.metric("tally_collect_poll_duration_seconds_count", CLUSTER)
        .unwrap_or(0.0)
}

/// Writes `items` (offsets_topic_records.py's JSON) to tansu's `__consumer_offsets`.
fn write_records(bootstrap: &str, create: bool, items: &Value) {
    let py = python().expect("python with confluent-kafka (scripts/test installs it)");
    let mut cmd = Command::new(py);
    cmd.arg(client_scripts().join("offsets_topic_records.py"))
        .args(["--bootstrap", bootstrap]);
    if create {
        cmd.args(["--create", "1"]);
    }
    let run = common::run(
        &mut cmd,
        items.to_string().as_bytes(),
        Duration::from_secs(60),
    );
    assert!(
        run.status.success(),
        "offsets_topic_records.py failed: {}\n{}",
        run.stderr,
        run.stdout
    );
}

/// Runs collect_workload.py: topic `orders`, one partition of 10 records; groups
/// committed-o at 5 and caughtup-o at 10, both without members.
fn workload(bootstrap: &str) -> Value {
    let py = python().expect("python with confluent-kafka (scripts/test installs it)");
    let mut cmd = Command::new(py);
    cmd.arg(client_scripts().join("collect_workload.py"))
        .args(["--bootstrap", bootstrap, "--topic", "orders"])
        .args(["--partitions", "1", "--records-per-partition", "10"])
        .args(["--base-ts-ms", &(now_ms() - 600_000).to_string()])
        .args(["--group-suffix", "o"]);
    let run = common::run(&mut cmd, b"", Duration::from_secs(120));
    assert!(
        run.status.success(),
        "collect_workload.py failed: {}\n{}",
        run.stderr,
        run.stdout
    );
    serde_json::from_str(run.stdout.trim()).unwrap()
}

/// Partition 0 of `orders` for `group` at the agent, once it has a sample.
fn partition0(agent: &Agent, group: &str) -> Option<Value> {
    let (status, body) = get(
        agent.addr,
        &format!("/api/v1/groups/{group}?cluster={CLUSTER}"),
        None,
    );
    if status != 200 {
        return None;
    }
    let g: Value = serde_json::from_str(&body).ok()?;
    g["partitions"]
        .as_array()?
        .iter()
        .find(|p| p["topic"] == "orders" && p["partition"] == 0)
        .cloned()
}

fn window(p: &Value) -> Vec<(i64, i64)> {
    p["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["offset"].as_i64().unwrap(), c["at_ms"].as_i64().unwrap()))
        .collect()
}

#[test]
fn commit_times_come_from_consumer_offsets_on_tansu() {
    if Tansu::binary().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), &["--tick", "250ms"]);
    let tansu = Tansu::start();
    let bootstrap = tansu.bootstrap();
    let collect_dir = dir.path().join("collect");
    let collector = start_collector(&agent, &bootstrap, &collect_dir);

    // No such topic yet: commit times are polling's, and the metric says so.
    collector.until(20, "two polls", |c| (polls(c) >= 2.0).then_some(()));
    assert_eq!(
        collector.metric("tally_collect_offsets_topic_read", CLUSTER),
        Some(0.0),
        "{}",
        collector.log()
    );

    // The log, written before the groups commit: every value version, a key of each
    // offset-commit version, and records the collector must pass over.
    let now = now_ms();
    let caught_up_at = now - 7_200_000;
    let committed_at = now - 3_600_000;
    let first = json!([
        {"group_metadata": "committed-o"},
        {"commit": ["committed-o", "orders", 0], "offset": 2, "commit_ms": committed_at - 60_000,
         "key_version": 0, "value_version": 0},
        {"commit": ["caughtup-o", "orders", 0], "offset": 10, "commit_ms": caught_up_at,
         "value_version": 1},
        {"commit": ["committed-o", "orders", 0], "offset": 5, "commit_ms": committed_at,
         "value_version": 3},
        {"commit": ["nobody-o", "orders", 0], "offset": 1, "commit_ms": now, "value_version": 2},
        {"tombstone": ["nobody-o", "orders", 0]},
        {"raw_key_hex": "ff", "raw_value_hex": "00"},
    ]);
    write_records(&bootstrap, true, &first);
    let w = workload(&bootstrap);
    assert_eq!(w["groups"]["committed-o"], json!([5]), "{w}");
    assert_eq!(w["groups"]["caughtup-o"], json!([10]), "{w}");

    // The commit time is the one in the log, not the poll that saw the offset.
    let p = agent.until(60, "committed-o at the agent", |a| {
        partition0(a, "committed-o").filter(|p| p["committed"] == 5)
    });
    assert_eq!(
        p["commit_at_ms"].as_i64(),
        Some(committed_at),
        "{p}\n{}",
        common::tail(&collector.log())
    );
    let c = agent.until(60, "caughtup-o at the agent", |a| {
        partition0(a, "caughtup-o").filter(|p| p["committed"] == 10)
    });
    assert_eq!(c["commit_at_ms"].as_i64(), Some(caught_up_at), "{c}");
    // An hour without a commit, 5 records behind that waited 10 minutes: stopped.
    let p = agent.until(30, "committed-o judged stop", |a| {
        partition0(a, "committed-o").filter(|p| p["status"] == "stop")
    });
    assert_eq!(p["lag_records"], 5, "{p}");
    assert_eq!(
        collector.metric("tally_collect_offsets_topic_read", CLUSTER),
        Some(1.0)
    );
    let read = collector
        .metric("tally_collect_offsets_topic_records_total", CLUSTER)
        .unwrap();
    assert!(read >= 7.0, "records read from the log: {read}");
    assert_eq!(
        collector.metric("tally_collect_offsets_topic_skipped_batches_total", CLUSTER),
        Some(0.0)
    );

    // The group commits the same offset again: polling could not see it (Burrow's
    // stop); the log shows a new commit, and the consumer that commits but does not
    // move is a stall.
    let recommitted_at = now_ms() - 1_000;
    write_records(
        &bootstrap,
        false,
        &json!([{"commit": ["committed-o", "orders", 0], "offset": 5,
                 "commit_ms": recommitted_at, "value_version": 4}]),
    );
    let p = agent.until(30, "committed-o's re-commit at the agent", |a| {
        partition0(a, "committed-o").filter(|p| p["commit_at_ms"].as_i64() == Some(recommitted_at))
    });
    assert_eq!(
        window(&p),
        vec![(5, committed_at), (5, recommitted_at)],
        "{p}"
    );
    let p = agent.until(30, "committed-o judged stall", |a| {
        partition0(a, "committed-o").filter(|p| p["status"] == "stall")
    });
    assert_eq!(p["committed"], 5, "{p}");

    // A restart resumes the log where it stopped: nothing is read again.
    let state = collect_dir
        .join("state")
        .join(CLUSTER)
        .join("offsets_topic.json");
    collector.until(30, "the position saved", |_| {
        let saved: Value = serde_json::from_slice(&std::fs::read(&state).ok()?).ok()?;
        (saved["positions"]["0"].as_i64()? >= 8).then_some(())
    });
    drop(collector);
    let collector = start_collector(&agent, &bootstrap, &collect_dir);
    collector.until(30, "three polls after the restart", |c| {
        (polls(c) >= 3.0).then_some(())
    });
    assert_eq!(
        collector.metric("tally_collect_offsets_topic_read", CLUSTER),
        Some(1.0)
    );
    assert_eq!(
        collector
            .metric("tally_collect_offsets_topic_records_total", CLUSTER)
            .unwrap_or(0.0),
        0.0,
        "the log was read again after the restart: {}",
        common::tail(&collector.log())
    );
    let again_at = now_ms() - 500;
    write_records(
        &bootstrap,
        false,
        &json!([{"commit": ["committed-o", "orders", 0], "offset": 5,
                 "commit_ms": again_at, "value_version": 3}]),
    );
    agent.until(30, "the commit after the restart", |a| {
        partition0(a, "committed-o").filter(|p| p["commit_at_ms"].as_i64() == Some(again_at))
    });
    assert_eq!(
        collector.metric("tally_collect_offsets_topic_records_total", CLUSTER),
        Some(1.0)
    );
}
