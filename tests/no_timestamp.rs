//! Records without a timestamp: kafka-python writes a v2 batch of a CreateTime
//! topic with timestamp -1 (a base and a max timestamp of -1, or single records
//! of -1 beside stamped ones) when it is handed `timestamp_ms=-1`, as old and
//! hand-written producers do. DESIGN §2: such a record is bucketed by its append
//! time and also counted as `no_timestamp`; §9: the collector buckets it by the
//! time it read it (the broker uses its append time, so the two differ for such
//! records only).
//!
//! Each test runs an agent, a `tally broker` reporting to it as cluster `local`,
//! and a `tally collect` on that same broker reporting as cluster `copy`, and
//! checks what a user would see in the agent's HTTP API: where the records are
//! counted, how many are `no_timestamp`, that the clusters' totals agree, and
//! that a consumer group's books and lag make sense. The records with
//! timestamps are an hour old, so that their buckets and the buckets of
//! "now" never meet.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::collector::Collector;
use common::{Agent, Broker, client_scripts as scripts, now_ms, tail};

/// The bucket width of every test (the agent's, the broker's, the collector's).
const WIDTH_MS: i64 = 60_000;
/// How long the agent may take to show what the clients did.
const SETTLE: Duration = Duration::from_secs(30);
/// What kafka-python is told to send as the timestamp of a record without one.
const NONE: i64 = -1;

fn bucket_of(ts: i64) -> i64 {
    ts.div_euclid(WIDTH_MS) * WIDTH_MS
}

/// The start of the bucket an hour ago: long closed, inside the agent's window.
fn hour_ago() -> i64 {
    bucket_of(now_ms() - 3_600_000)
}

/// A timestamp `secs` seconds into the `n`th bucket after `base`.
fn at(base: i64, n: i64, secs: i64) -> i64 {
    base + n * WIDTH_MS + secs * 1000
}

// ---------------------------------------------------------------- processes

/// An agent in 60 s buckets, with its data in the returned folder; None (the
/// test is skipped) where the Python clients are missing, except under
/// CI=true, where that fails.
fn setup() -> Option<(PathBuf, tempfile::TempDir, Agent)> {
    let python = common::python()?;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &dir.path().join("agent"),
        &[
            "--bucket-width",
            "60s",
            "--grace",
            "2m",
            "--tick",
            "200ms",
            "--window",
            "24h",
        ],
    );
    Some((python, dir, agent))
}

/// A `tally broker` reporting to `agent` (cluster `local`).
fn start_broker(agent: &Agent) -> Broker {
    Broker::reporting_to(agent.addr, &["--bucket-width", "60s"])
}

/// One acknowledged record, with the timestamp it was sent with (-1: none).
#[derive(Clone, Copy, Debug)]
struct Rec {
    partition: i32,
    offset: i64,
    ts: i64,
}

/// Creates `topic` and produces `plan`'s batches (see reconcile_produce.py) with
/// kafka-python, each planned batch as one record batch.
fn produce(python: &PathBuf, broker: &Broker, topic: &str, plan: &Value) -> Vec<Rec> {
    let result = common::client_result(
        &format!("kafka-python producing to {topic}"),
        Command::new(python)
            .arg(scripts().join("reconcile_produce.py"))
            .args(["kafka-python", broker.addr(), topic]),
        plan,
        broker,
    );
    let records: Vec<Rec> = result["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Rec {
            partition: r["partition"].as_i64().unwrap() as i32,
            offset: r["offset"].as_i64().unwrap(),
            ts: r["timestamp"].as_i64().unwrap(),
        })
        .collect();
    let planned: usize = plan["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["timestamps"].as_array().unwrap().len())
        .sum();
    assert_eq!(records.len(), planned, "records acknowledged: {result}");
    records
}

/// Runs reconcile_group.py in `mode` for `group` on `topic`.
fn group(
    python: &PathBuf,
    broker: &Broker,
    mode: &str,
    topic: &str,
    group: &str,
    args: &Value,
) -> Value {
    common::client_result(
        &format!("group {group} ({mode})"),
        Command::new(python)
            .arg(scripts().join("reconcile_group.py"))
            .args([mode, broker.addr(), topic, group]),
        args,
        broker,
    )
}

fn batch(partition: i32, codec: &str, timestamps: &[i64]) -> Value {
    json!({ "partition": partition, "codec": codec, "timestamps": timestamps })
}

// ------------------------------------------------------------ the agent view

/// `/api/v1/topics/{topic}/buckets` of `cluster`, or None while the agent has
/// no counts of it.
fn view_in(agent: &Agent, cluster: &str, topic: &str) -> Option<Value> {
    let path = format!("/api/v1/topics/{topic}/buckets?cluster={cluster}");
    let (status, body) = common::try_get(agent.addr, &path, None).ok()?;
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "GET {path}: {body}");
    Some(serde_json::from_str(&body).unwrap())
}

/// `/api/v1/topics`' entry of (`cluster`, `topic`), or Null.
fn topic_in(agent: &Agent, cluster: &str, topic: &str) -> Value {
    agent.json("/api/v1/topics")["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["cluster"] == cluster && t["topic"] == topic)
        .cloned()
        .unwrap_or(Value::Null)
}

/// bucket → records of `tier` in a buckets view (buckets where the tier has a cell).
fn tier_cells(view: &Value, tier: &str) -> BTreeMap<i64, Value> {
    view["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| {
            let cell = b["tiers"].get(tier)?;
            Some((b["bucket"].as_i64().unwrap(), cell.clone()))
        })
        .collect()
}

fn tier_total(view: &Value, tier: &str) -> u64 {
    tier_cells(view, tier)
        .values()
        .map(|c| c["records"].as_u64().unwrap())
        .sum()
}

/// Polls the agent until the `broker` tier of `topic` in `cluster` holds
/// `total` records and every tier of `groups` has consumed them all; returns
/// the buckets view and the time it was first seen so (an upper bound on
/// when the records were counted). Fails after `SETTLE` with what it shows.
fn wait_for_totals(
    agent: &Agent,
    cluster: &str,
    topic: &str,
    total: u64,
    groups: &[&str],
    log: impl Fn() -> String,
) -> (Value, i64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let view = view_in(agent, cluster, topic);
        if let Some(v) = &view
            && tier_total(v, "broker") == total
            && groups
                .iter()
                .all(|g| tier_total(v, &format!("group:{g}")) == total)
        {
            return (view.unwrap(), now_ms());
        }
        if Instant::now() >= deadline {
            panic!(
                "after {SETTLE:?} the agent does not show {total} records of {topic} in cluster {cluster}, \
                 counted by the broker tier and consumed by {groups:?}:\nbuckets: {}\ntopics: {}\n\nagent log:\n{}\n{cluster} log:\n{}",
                view.unwrap_or(Value::Null),
                topic_in(agent, cluster, topic),
                tail(&agent.log()),
                tail(&log())
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The books of one cluster as a user checks them: the stamped records in
/// the buckets of their timestamps (`stamped`), the records without one in
/// buckets from `from` to `to` (both inclusive) and nowhere else, `untimed` of
/// them; a group `g` that consumed everything, bucket by bucket; and the
/// `broker` tier's `no_timestamp` in `/api/v1/topics`.
#[allow(clippy::too_many_arguments)]
fn assert_books(
    agent: &Agent,
    cluster: &str,
    topic: &str,
    view: &Value,
    stamped: &BTreeMap<i64, u64>,
    untimed: u64,
    (from, to): (i64, i64),
    what: &str,
) {
    let broker = tier_cells(view, "broker");
    let counts: BTreeMap<i64, u64> = broker
        .iter()
        .map(|(b, c)| (*b, c["records"].as_u64().unwrap()))
        .collect();
    for (b, n) in stamped {
        assert_eq!(
            counts.get(b).copied().unwrap_or(0),
            *n,
            "cluster {cluster}: the records stamped in bucket {b} are not all counted there (and only they): {view}"
        );
    }
    let elsewhere: BTreeMap<i64, u64> = counts
        .iter()
        .filter(|(b, _)| !stamped.contains_key(b))
        .map(|(b, n)| (*b, *n))
        .collect();
    for (b, n) in &elsewhere {
        assert!(
            (from..=to).contains(b),
            "cluster {cluster}: {n} records counted in bucket {b} ({:+} s from the first bucket of {what}, {from}); \
             records without a timestamp belong in the buckets from {from} to {to} ({what}): {view}",
            (b - from) / 1000,
        );
    }
    assert_eq!(
        elsewhere.values().sum::<u64>(),
        untimed,
        "cluster {cluster}: records without a timestamp counted in the buckets of {what}: {elsewhere:?}"
    );

    // The group consumed every record, in the bucket the broker tier counts it in.
    let consumed = tier_cells(view, "group:g");
    for (b, n) in &counts {
        let c = consumed.get(b).unwrap_or_else(|| {
            panic!("cluster {cluster}: group g has no cell in bucket {b}: {view}")
        });
        assert_eq!(
            (
                c["records"].as_u64(),
                c["pending"].as_u64(),
                c["expired"].as_u64(),
                c["skipped"].as_u64()
            ),
            (Some(*n), Some(0), Some(0), Some(0)),
            "cluster {cluster}: group g in bucket {b} (broker {n}): {c}"
        );
    }

    let t = topic_in(agent, cluster, topic);
    let total = stamped.values().sum::<u64>() + untimed;
    assert_eq!(
        (
            t["tiers"]["broker"]["records"].as_u64(),
            t["tiers"]["broker"]["no_timestamp"].as_u64()
        ),
        (Some(total), Some(untimed)),
        "cluster {cluster}: /api/v1/topics, broker tier (records, no_timestamp): {t}"
    );
    assert_eq!(
        (
            t["tiers"]["group:g"]["records"].as_u64(),
            t["tiers"]["group:g"]["pending"].as_u64()
        ),
        (Some(total), Some(0)),
        "cluster {cluster}: /api/v1/topics, group:g (records, pending): {t}"
    );
}

// -------------------------------------------------------------------- tests

#[test]
fn records_without_a_timestamp_are_bucketed_by_append_time_in_the_broker_and_read_time_in_the_collector()
 {
    let Some((python, _agent_dir, agent)) = setup() else {
        return;
    };
    let broker = start_broker(&agent);
    let copy = Collector::copy_of(&agent, &broker, "untimed");
    let b = hour_ago();
    // Whole batches without timestamps (base and max timestamp -1), plain and
    // gzip; stamped batches; and batches that mix the two, with the record
    // without a timestamp first (base -1, max stamped) or after a stamped one.
    let plan = json!({
        "create": {"partitions": 3},
        "batches": [
            batch(0, "none", &[NONE, NONE, NONE]),
            batch(1, "gzip", &[NONE, NONE, NONE, NONE]),
            batch(2, "none", &[at(b, 0, 10), at(b, 0, 20), at(b, 1, 5)]),
            batch(0, "none", &[at(b, 2, 1), NONE, at(b, 0, 30)]),
            batch(1, "gzip", &[NONE, at(b, 1, 40)]),
            batch(2, "none", &[NONE, NONE]),
        ],
    });
    let before = now_ms();
    let records = produce(&python, &broker, "untimed", &plan);
    let after = now_ms();

    let untimed = records.iter().filter(|r| r.ts == NONE).count() as u64;
    let mut stamped: BTreeMap<i64, u64> = BTreeMap::new();
    for r in records.iter().filter(|r| r.ts != NONE) {
        *stamped.entry(bucket_of(r.ts)).or_default() += 1;
    }
    assert_eq!((untimed, stamped.values().sum::<u64>()), (11, 6));
    let total = records.len() as u64;

    // A group reads everything (what it reads carries the timestamps as they
    // were produced: -1 where there was none) and commits along the way.
    let ends: BTreeMap<i32, i64> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        let e = m.entry(r.partition).or_insert(0);
        *e = (*e).max(r.offset + 1);
        m
    });
    let targets: serde_json::Map<String, Value> = ends
        .iter()
        .map(|(p, end)| (p.to_string(), json!([end / 2, end])))
        .collect();
    let result = group(
        &python,
        &broker,
        "consume",
        "untimed",
        "g",
        &json!({ "targets": targets }),
    );
    let read = result["read"].as_array().unwrap();
    assert_eq!(read.len() as u64, total, "group g read: {result}");
    for r in read {
        let (p, o) = (
            r["partition"].as_i64().unwrap() as i32,
            r["offset"].as_i64().unwrap(),
        );
        let produced = records
            .iter()
            .find(|x| x.partition == p && x.offset == o)
            .unwrap_or_else(|| panic!("group g read partition {p} offset {o}, never produced"));
        assert_eq!(
            r["timestamp"].as_i64().unwrap(),
            produced.ts,
            "the timestamp a consumer reads at partition {p} offset {o}"
        );
    }

    // The broker: no-timestamp records in the buckets of their append time,
    // which fell between `before` and `after`.
    let (local, _) = wait_for_totals(&agent, "local", "untimed", total, &["g"], || broker.log());
    assert_books(
        &agent,
        "local",
        "untimed",
        &local,
        &stamped,
        untimed,
        (bucket_of(before), bucket_of(after)),
        "the append time",
    );

    // The collector: in the buckets of the time it read them, between `before`
    // and the moment the agent showed them.
    let (copied, seen) = wait_for_totals(&agent, "copy", "untimed", total, &["g"], || copy.log());
    assert_books(
        &agent,
        "copy",
        "untimed",
        &copied,
        &stamped,
        untimed,
        (bucket_of(before), bucket_of(seen)),
        "the read time",
    );

    // Both clusters report the same totals per tier.
    let totals = |cluster: &str| -> BTreeMap<String, (u64, u64)> {
        topic_in(&agent, cluster, "untimed")["tiers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(tier, t)| {
                (
                    tier.clone(),
                    (
                        t["records"].as_u64().unwrap(),
                        t["no_timestamp"].as_u64().unwrap_or(0),
                    ),
                )
            })
            .collect()
    };
    assert_eq!(
        totals("copy"),
        totals("local"),
        "per tier (records, no_timestamp): cluster copy against cluster local"
    );
    // And the same records in each bucket of a timestamp.
    for b in stamped.keys() {
        assert_eq!(
            tier_cells(&copied, "broker")[b]["records"],
            tier_cells(&local, "broker")[b]["records"],
            "bucket {b}"
        );
    }
    drop(copy);
}

/// A group's lag on one partition of `topic` in `cluster`, as `/api/v1/groups` shows it.
fn lag_in(agent: &Agent, cluster: &str, group: &str, topic: &str, partition: i64) -> Value {
    agent.json("/api/v1/groups")["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["cluster"] == cluster && g["group"] == group)
        .flat_map(|g| g["partitions"].as_array().cloned().unwrap_or_default())
        .find(|p| p["topic"] == topic && p["partition"] == partition)
        .unwrap_or(Value::Null)
}

#[test]
fn a_group_behind_on_records_without_a_timestamp_lags_by_seconds_not_by_the_epoch() {
    let Some((python, _agent_dir, agent)) = setup() else {
        return;
    };
    let broker = start_broker(&agent);
    let copy = Collector::copy_of(&agent, &broker, "behind");
    let plan = json!({
        "create": {"partitions": 1},
        "batches": [batch(0, "none", &[NONE, NONE, NONE, NONE])],
    });
    let before = now_ms();
    let records = produce(&python, &broker, "behind", &plan);
    assert_eq!(records.len(), 4);
    // The group has processed the first record: three wait, the next at offset 1.
    group(
        &python,
        &broker,
        "commit",
        "behind",
        "late",
        &json!({ "steps": [{"offsets": {"0": 1}, "pause_ms": 0}] }),
    );

    for cluster in ["local", "copy"] {
        let log = || {
            if cluster == "local" {
                broker.log()
            } else {
                copy.log()
            }
        };
        let deadline = Instant::now() + SETTLE;
        let p = loop {
            let p = lag_in(&agent, cluster, "late", "behind", 0);
            if p["committed"] == 1 && p["end_offset"] == 4 {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "cluster {cluster}: the agent shows no lag of group late at offset 1 of 4 after {SETTLE:?}: {p}\n\
                 agent log:\n{}\n{cluster} log:\n{}",
                tail(&agent.log()),
                tail(&log())
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(p["lag_records"], 3, "cluster {cluster}: {p}");
        // The next record has no timestamp: it was appended (and read by the
        // collector) after `before`, so the group is at most that far behind.
        let since = (now_ms() - before) as f64 / 1000.0;
        let lag = p["lag_seconds"].as_f64().unwrap();
        assert!(
            (0.0..=since + 1.0).contains(&lag),
            "cluster {cluster}: group late lags {lag} s on a record produced {since:.1} s ago without a timestamp: {p}"
        );
    }
    drop(copy);
}
