//! End-to-end reconciliation: real clients (confluent-kafka, kafka-python,
//! kafkajs) produce known records to `tally broker` and commit known offsets
//! in consumer groups; the broker counts them and streams the counts to
//! `tally agent`; and the agent's `/api/v1/topics/{topic}/buckets` must equal
//! the ground truth the test computes from what the clients were told
//! happened, bucket by bucket and tier by tier.
//!
//! The ground truth follows DESIGN §2: a record's bucket is its timestamp
//! floored to the width (60 s here; every timestamp is about an hour old, so
//! every bucket is closed). For a group on a partition, records before the
//! offset it started from are `skipped`: its first fetch that the broker
//! could tie to it (a subscribed consumer), or, where none was tied, the log
//! start at its first commit (committing K asserts everything before K was
//! processed). Records retention deleted while they were at or above its
//! highest commit are `expired`; the other records below its highest commit
//! (or the log start, if retention moved past it) are consumed (`records`);
//! the rest are `pending`.
//!
//! Each test runs its own agent and broker on free ports with temporary data
//! folders. The client scripts are `tests/compat/reconcile_*`; under CI=true
//! a missing client fails the test (see tests/compat.rs).

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::collector::Collector;
use common::{Agent, Broker, client_scripts as scripts, tail};

/// The bucket width of every test, so that explicit timestamps pick buckets.
const WIDTH_MS: i64 = 60_000;
/// How long the agent may take to show what the clients did.
const SETTLE: Duration = Duration::from_secs(20);

fn bucket_of(ts: i64) -> i64 {
    ts.div_euclid(WIDTH_MS) * WIDTH_MS
}

/// The start of the bucket an hour ago: buckets from here on are long closed
/// (grace 2 min), yet well inside the agent's window (24 h).
fn hour_ago() -> i64 {
    bucket_of(common::now_ms() - 3_600_000)
}

/// A timestamp `secs` seconds into the `n`th bucket after `base`.
fn at(base: i64, n: i64, secs: i64) -> i64 {
    base + n * WIDTH_MS + secs * 1000
}

// ---------------------------------------------------------------- processes

fn agent_flags() -> [&'static str; 8] {
    [
        "--bucket-width",
        "60s",
        "--grace",
        "2m",
        "--tick",
        "200ms",
        "--window",
        "24h",
    ]
}

/// A `tally broker` reporting to `agent`, in buckets of the tests' width.
fn start_broker(agent: &Agent, extra: &[&str]) -> Broker {
    let flags: Vec<&str> = ["--bucket-width", "60s"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    Broker::reporting_to(agent.addr, &flags)
}

/// The real clients the tests drive.
struct Clients {
    python: PathBuf,
    node: Option<PathBuf>,
}

impl Clients {
    /// The Python clients, and kafkajs when `with_kafkajs`; None (the test
    /// is skipped) where one is missing, except under CI=true, where that fails.
    fn find(with_kafkajs: bool) -> Option<Clients> {
        let python = common::python()?;
        let node = if with_kafkajs {
            Some(common::node()?)
        } else {
            None
        };
        Some(Clients { python, node })
    }

    /// Produces `plan` (see reconcile_produce.py) with `which` client:
    /// "confluent-kafka", "kafka-python" or "kafkajs".
    fn produce(&self, which: &str, broker: &Broker, topic: &str, plan: &Value) -> Vec<Rec> {
        let mut cmd = if which == "kafkajs" {
            let mut c = Command::new(self.node.as_ref().expect("kafkajs was not asked for"));
            c.arg(scripts().join("reconcile_produce.js"));
            c
        } else {
            let mut c = Command::new(&self.python);
            c.arg(scripts().join("reconcile_produce.py")).arg(which);
            c
        };
        cmd.arg(broker.addr()).arg(topic);
        let result = common::client_result(
            &format!("{which} producing to {topic}"),
            &mut cmd,
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
        assert_eq!(records.len(), planned, "{which}: records acknowledged");
        let sent: Vec<i64> = plan["batches"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["timestamps"].as_array().unwrap().iter())
            .map(|t| t.as_i64().unwrap())
            .collect();
        let acknowledged: Vec<i64> = records.iter().map(|r| r.ts).collect();
        // A LogAppendTime topic acknowledges the broker's append time instead.
        if plan["create"]["configs"]["message.timestamp.type"] != "LogAppendTime" {
            assert_eq!(acknowledged, sent, "{which}: timestamps acknowledged");
        }
        records
    }

    fn group(&self, mode: &str, broker: &Broker, topic: &str, group: &str, args: &Value) -> Value {
        common::client_result(
            &format!("group {group} ({mode})"),
            Command::new(&self.python)
                .arg(scripts().join("reconcile_group.py"))
                .args([mode, broker.addr(), topic, group]),
            args,
            broker,
        )
    }

    /// Group `group` commits 0 on every partition of `targets`, then reads
    /// and commits at each target offset in turn; the commits go into `truth`.
    fn consume(&self, broker: &Broker, truth: &mut Truth, group: &str, targets: &[(i32, &[i64])]) {
        let map: serde_json::Map<String, Value> = targets
            .iter()
            .map(|(p, t)| (p.to_string(), json!(t)))
            .collect();
        let result = self.group(
            "consume",
            broker,
            &truth.topic,
            group,
            &json!({ "targets": map }),
        );
        // What the group read is what was produced, record by record.
        for r in result["read"].as_array().unwrap() {
            let (p, o) = (
                r["partition"].as_i64().unwrap() as i32,
                r["offset"].as_i64().unwrap(),
            );
            let produced = truth
                .records
                .iter()
                .find(|x| x.partition == p && x.offset == o)
                .unwrap_or_else(|| {
                    panic!("group {group} read partition {p} offset {o}, never produced")
                });
            assert_eq!(
                produced.ts,
                r["timestamp"].as_i64().unwrap(),
                "partition {p} offset {o}"
            );
        }
        let read = result["read"].as_array().unwrap().len() as i64;
        let want: i64 = targets
            .iter()
            .map(|(_, t)| t.last().copied().unwrap_or(0))
            .sum();
        assert_eq!(
            read, want,
            "group {group} read exactly up to its last targets"
        );
        truth.record_commits(group, &result["commits"]);
    }

    /// Group `group` commits each step's offsets in turn, pausing `pause_ms` after each.
    fn commit(
        &self,
        broker: &Broker,
        truth: &mut Truth,
        group: &str,
        steps: &[&[(i32, i64)]],
        pause_ms: u64,
    ) {
        let steps: Vec<Value> = steps
            .iter()
            .map(|offsets| {
                let map: serde_json::Map<String, Value> = offsets
                    .iter()
                    .map(|(p, o)| (p.to_string(), json!(o)))
                    .collect();
                json!({ "offsets": map, "pause_ms": pause_ms })
            })
            .collect();
        let result = self.group(
            "commit",
            broker,
            &truth.topic,
            group,
            &json!({ "steps": steps }),
        );
        truth.record_commits(group, &result["commits"]);
    }
}

impl Clients {
    /// Group `group` subscribes at the end of the log (`latest`); once its
    /// fetches from there reach the broker, `meanwhile` runs (and produces
    /// what it reads), then it reads and commits at each target offset in
    /// turn. Its commits and where it started go into `truth`.
    fn latest(
        &self,
        broker: &Broker,
        truth: &mut Truth,
        group: &str,
        targets: &[(i32, &[i64])],
        meanwhile: impl FnOnce(&mut Truth),
    ) {
        let ready = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        std::fs::remove_file(&ready).unwrap();
        let map: serde_json::Map<String, Value> = targets
            .iter()
            .map(|(p, t)| (p.to_string(), json!(t)))
            .collect();
        let args = json!({ "targets": map, "ready_file": ready.to_str().unwrap() });
        let ends: Vec<(i32, i64)> = targets.iter().map(|(p, _)| (*p, truth.end(*p))).collect();
        let topic = truth.topic.clone();
        let result = std::thread::scope(|s| {
            let reader = s.spawn(|| self.group("latest", broker, &topic, group, &args));
            let deadline = Instant::now() + Duration::from_secs(60);
            while !ready.exists() {
                assert!(
                    Instant::now() < deadline && !reader.is_finished(),
                    "group {group} never got ready"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            meanwhile(truth);
            reader.join().unwrap()
        });
        for r in result["read"].as_array().unwrap() {
            let (p, o) = (
                r["partition"].as_i64().unwrap() as i32,
                r["offset"].as_i64().unwrap(),
            );
            let start = ends.iter().find(|(q, _)| *q == p).unwrap().1;
            assert!(
                o >= start,
                "group {group} read partition {p} offset {o}, before its start {start}"
            );
        }
        truth.record_commits(group, &result["commits"]);
        for (p, end) in ends {
            truth
                .groups
                .entry(group.to_owned())
                .or_default()
                .entry(p)
                .or_default()
                .fetched_from = Some(end);
        }
    }
}

fn batch(partition: i32, codec: &str, timestamps: &[i64]) -> Value {
    json!({ "partition": partition, "codec": codec, "timestamps": timestamps })
}

// ------------------------------------------------------------- ground truth

/// One acknowledged record.
#[derive(Clone, Copy, Debug)]
struct Rec {
    partition: i32,
    offset: i64,
    ts: i64,
}

/// A group's commits on one partition, in order, before and after the one
/// retention pass that moved the log start (all "before" when none did),
/// and the offset of its first fetch the broker tied to it, if it made one.
#[derive(Clone, Debug, Default)]
struct Commits {
    before: Vec<i64>,
    after: Vec<i64>,
    fetched_from: Option<i64>,
}

/// What the clients produced and committed, and where retention moved each
/// partition's log start.
struct Truth {
    topic: String,
    records: Vec<Rec>,
    start: BTreeMap<i32, i64>,
    groups: BTreeMap<String, BTreeMap<i32, Commits>>,
}

/// One tier's numbers in one bucket, as the agent shows them (`pending`,
/// `expired` and `skipped` exist on group tiers only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cell {
    records: u64,
    pending: Option<u64>,
    expired: Option<u64>,
    skipped: Option<u64>,
}

/// bucket → tier → cell.
type Books = BTreeMap<i64, BTreeMap<String, Cell>>;

impl Truth {
    fn new(topic: &str) -> Truth {
        Truth {
            topic: topic.to_owned(),
            records: Vec::new(),
            start: BTreeMap::new(),
            groups: BTreeMap::new(),
        }
    }

    fn record_commits(&mut self, group: &str, commits: &Value) {
        let retained = !self.start.is_empty();
        for c in commits.as_array().unwrap() {
            let (p, o) = (c[0].as_i64().unwrap() as i32, c[1].as_i64().unwrap());
            let commits = self
                .groups
                .entry(group.to_owned())
                .or_default()
                .entry(p)
                .or_default();
            if retained {
                commits.after.push(o);
            } else {
                commits.before.push(o);
            }
        }
    }

    fn end(&self, partition: i32) -> i64 {
        self.records
            .iter()
            .filter(|r| r.partition == partition)
            .map(|r| r.offset + 1)
            .max()
            .unwrap_or(0)
    }

    fn books(&self) -> Books {
        let mut books = Books::new();
        for r in &self.records {
            let tiers = books.entry(bucket_of(r.ts)).or_default();
            tiers
                .entry("broker".to_owned())
                .or_insert(Cell {
                    records: 0,
                    pending: None,
                    expired: None,
                    skipped: None,
                })
                .records += 1;
        }
        for (group, partitions) in &self.groups {
            let tier = format!("group:{group}");
            for tiers in books.values_mut() {
                tiers.insert(
                    tier.clone(),
                    Cell {
                        records: 0,
                        pending: Some(0),
                        expired: Some(0),
                        skipped: Some(0),
                    },
                );
            }
            for r in &self.records {
                let cell = books
                    .get_mut(&bucket_of(r.ts))
                    .unwrap()
                    .get_mut(&tier)
                    .unwrap();
                let bump = |n: &mut Option<u64>| *n = Some(n.unwrap() + 1);
                let Some(c) = partitions
                    .get(&r.partition)
                    .filter(|c| !c.before.is_empty() || !c.after.is_empty())
                else {
                    bump(&mut cell.pending);
                    continue;
                };
                let all: Vec<i64> = c.before.iter().chain(&c.after).copied().collect();
                let start = self.start.get(&r.partition).copied().unwrap_or(0);
                // The log start at the group's first commit.
                let log_start = if c.before.is_empty() { start } else { 0 };
                let first = c
                    .fetched_from
                    .map_or(log_start, |f| f.clamp(log_start, all[0].max(log_start)));
                let high_at_retention = c.before.iter().copied().max().unwrap_or(first);
                let high = all.iter().copied().max().unwrap().max(start);
                if r.offset < first {
                    bump(&mut cell.skipped);
                } else if r.offset >= high_at_retention && r.offset < start {
                    bump(&mut cell.expired);
                } else if r.offset < high {
                    cell.records += 1;
                } else {
                    bump(&mut cell.pending);
                }
            }
        }
        books
    }
}

// ------------------------------------------------------------ the agent view

/// `/api/v1/topics/{topic}/buckets` of the broker's own cluster, or None while the
/// agent has no counts of it.
fn view(agent: &Agent, topic: &str) -> Option<Value> {
    view_in(agent, "local", topic)
}

/// `/api/v1/topics/{topic}/buckets` of `cluster`, or None while the agent has no
/// counts of it.
fn view_in(agent: &Agent, cluster: &str, topic: &str) -> Option<Value> {
    let path = format!("/api/v1/topics/{topic}/buckets?cluster={cluster}");
    let (status, body) = common::try_get(agent.addr, &path, None).ok()?;
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "GET {path}: {body}");
    Some(serde_json::from_str(&body).unwrap())
}

fn books_of(view: &Value) -> Books {
    let mut books = Books::new();
    for b in view["buckets"].as_array().unwrap() {
        let tiers = books.entry(b["bucket"].as_i64().unwrap()).or_default();
        for (tier, t) in b["tiers"].as_object().unwrap() {
            tiers.insert(
                tier.clone(),
                Cell {
                    records: t["records"].as_u64().unwrap(),
                    pending: t.get("pending").and_then(Value::as_u64),
                    expired: t.get("expired").and_then(Value::as_u64),
                    skipped: t.get("skipped").and_then(Value::as_u64),
                },
            );
        }
    }
    books
}

/// The cells where `got` and `want` differ, one line each.
fn differences(got: &Books, want: &Books) -> String {
    let buckets: BTreeSet<i64> = got.keys().chain(want.keys()).copied().collect();
    let base = buckets.first().copied().unwrap_or(0);
    let mut lines = Vec::new();
    for b in buckets {
        let (g, w) = (got.get(&b), want.get(&b));
        let tiers: BTreeSet<&String> = g.into_iter().chain(w).flat_map(|t| t.keys()).collect();
        for tier in tiers {
            let (gc, wc) = (g.and_then(|t| t.get(tier)), w.and_then(|t| t.get(tier)));
            if gc != wc {
                lines.push(format!(
                    "bucket {b} (+{} min) {tier}: agent {gc:?}, truth {wc:?}",
                    (b - base) / WIDTH_MS
                ));
            }
        }
    }
    lines.join("\n")
}

/// Polls the agent until its books of `truth.topic` equal `truth`, and
/// returns the view; fails after `SETTLE` with the differences.
fn wait_for_truth(agent: &Agent, broker: &Broker, truth: &Truth) -> Value {
    wait_for_truth_in(agent, "local", &broker.log(), truth)
}

/// [`wait_for_truth`] for the books of `cluster` (a collector's), with `log` (the
/// collector's) shown on failure.
fn wait_for_truth_in(agent: &Agent, cluster: &str, log: &str, truth: &Truth) -> Value {
    let want = truth.books();
    let deadline = Instant::now() + SETTLE;
    loop {
        let got = view_in(agent, cluster, &truth.topic);
        if let Some(v) = &got
            && books_of(v) == want
        {
            return got.unwrap();
        }
        if Instant::now() >= deadline {
            let shown = got.as_ref().map(books_of).unwrap_or_default();
            panic!(
                "the agent's books of {} in cluster {cluster} differ from the ground truth after {SETTLE:?}:\n{}\n\nagent log:\n{}\n{cluster} log:\n{}",
                truth.topic,
                differences(&shown, &want),
                tail(&agent.log()),
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every bucket's statuses follow from its numbers: `broker` is the
/// reference and complete; a group tier is incomplete where records expired,
/// pending where some wait, and otherwise complete (or late, when it was
/// seen pending after its grace period ended).
fn assert_statuses(view: &Value) {
    for b in view["buckets"].as_array().unwrap() {
        for (tier, t) in b["tiers"].as_object().unwrap() {
            let status = t["status"].as_str().unwrap();
            let allowed: &[&str] = if tier == "broker" {
                &["complete"]
            } else if t["expired"].as_u64().unwrap() > 0 {
                &["incomplete"]
            } else if t["pending"].as_u64().unwrap() > 0 {
                &["pending"]
            } else {
                &["complete", "late"]
            };
            assert!(
                allowed.contains(&status),
                "bucket {} {tier}: status {status}, expected one of {allowed:?}: {t}",
                b["bucket"]
            );
        }
    }
}

/// broker = consumed + pending + expired + skipped, for every group and bucket.
fn assert_balanced(view: &Value) {
    for b in view["buckets"].as_array().unwrap() {
        let tiers = b["tiers"].as_object().unwrap();
        let broker = tiers["broker"]["records"].as_u64().unwrap();
        for (tier, t) in tiers.iter().filter(|(n, _)| n.starts_with("group:")) {
            let sum: u64 = ["records", "pending", "expired", "skipped"]
                .iter()
                .map(|k| t[*k].as_u64().unwrap())
                .sum();
            assert_eq!(
                sum, broker,
                "bucket {} {tier} does not balance: {t}",
                b["bucket"]
            );
        }
    }
}

fn group_total(view: &Value, group: &str, field: &str) -> u64 {
    view["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["tiers"][format!("group:{group}")][field].as_u64())
        .sum()
}

/// The broker's emitter as `/api/v1/sources` shows it.
fn source(agent: &Agent) -> Value {
    let sources = agent.json("/api/v1/sources");
    sources["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "broker-local-0")
        .cloned()
        .unwrap_or(Value::Null)
}

/// The group's partitions as `/api/v1/groups` shows them.
fn group_partitions(agent: &Agent, group: &str) -> Vec<Value> {
    agent.json("/api/v1/groups")["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == group)
        .map(|g| g["partitions"].as_array().unwrap().clone())
        .unwrap_or_default()
}

/// Samples the view for `secs` seconds; every sample must equal `want`.
fn assert_steady(agent: &Agent, topic: &str, want: &Books, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let got = view(agent, topic).map(|v| books_of(&v)).unwrap_or_default();
        assert!(
            got == *want,
            "{what}: the books changed:\n{}\nagent log:\n{}",
            differences(&got, want),
            tail(&agent.log())
        );
        std::thread::sleep(Duration::from_millis(150));
    }
}

// --------------------------------------------------------- the log on disk

/// A record batch as the broker's segment files hold it (Kafka's format).
#[derive(Debug)]
struct DiskBatch {
    partition: i32,
    base: i64,
    count: i64,
    codec: u16,
    first_ts: i64,
    max_ts: i64,
}

/// Every batch of `topic` in the broker's log files, read the way
/// kafka-dump-log would: what the clients really sent, batch by batch.
fn disk_batches(broker: &Broker, topic: &str) -> Vec<DiskBatch> {
    let mut out = Vec::new();
    let dir = broker.data_dir().join("topics").join(topic);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let Ok(partition) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let mut logs: Vec<PathBuf> = std::fs::read_dir(entry.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let bytes = std::fs::read(&log).unwrap();
            let i64_at = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
            let i32_at = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
            let mut at = 0;
            while at + 61 <= bytes.len() {
                let len = i32_at(at + 8) as usize;
                out.push(DiskBatch {
                    partition,
                    base: i64_at(at),
                    count: i64::from(i32_at(at + 57)),
                    codec: u16::from_be_bytes([bytes[at + 21], bytes[at + 22]]) & 7,
                    first_ts: i64_at(at + 27),
                    max_ts: i64_at(at + 35),
                });
                at += 12 + len;
            }
        }
    }
    out
}

/// The timestamps of a batch's records, as they were produced.
fn batch_timestamps(records: &[Rec], b: &DiskBatch) -> Vec<i64> {
    let mut ts: Vec<(i64, i64)> = records
        .iter()
        .filter(|r| r.partition == b.partition && (b.base..b.base + b.count).contains(&r.offset))
        .map(|r| (r.offset, r.ts))
        .collect();
    ts.sort();
    assert_eq!(
        ts.len() as i64,
        b.count,
        "batch {b:?} holds unknown records"
    );
    ts.into_iter().map(|(_, t)| t).collect()
}

/// Whether a commit of some group on `truth.topic` fell strictly inside a batch.
fn commit_inside_batch(truth: &Truth, batches: &[DiskBatch]) -> bool {
    truth.groups.values().any(|partitions| {
        partitions.iter().any(|(p, c)| {
            c.before.iter().chain(&c.after).any(|o| {
                batches
                    .iter()
                    .any(|b| b.partition == *p && b.base < *o && *o < b.base + b.count)
            })
        })
    })
}

/// The clients and an agent; the agent's data lives in the returned folder,
/// which the test keeps until its end.
fn setup(with_kafkajs: bool) -> Option<(Clients, tempfile::TempDir, Agent)> {
    let clients = Clients::find(with_kafkajs)?;
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), &agent_flags());
    Some((clients, dir, agent))
}

// -------------------------------------------------------------------- tests

#[test]
fn three_clients_codecs_and_straddling_batches_reconcile_exactly() {
    let Some((clients, _agent_dir, agent)) = setup(true) else {
        return;
    };
    let broker = start_broker(&agent, &[]);
    // A collector on the same broker keeps books of its own (cluster `copy`), from
    // the records it reads and the offsets the groups commit: they must equal the
    // broker's, and the truth, bucket by bucket and tier by tier.
    let copy = Collector::copy_of(&agent, &broker, "orders");
    let mut truth = Truth::new("orders");
    let b = hour_ago();

    // Batches inside one bucket and across bucket boundaries, in every
    // codec, some with records older than the batch's first one.
    let confluent = json!({
        "create": {"partitions": 3},
        "batches": [
            batch(0, "none", &[at(b, 0, 1), at(b, 0, 2), at(b, 0, 3), at(b, 0, 4)]),
            batch(0, "gzip", &[at(b, 0, 50), at(b, 1, 5), at(b, 0, 55), at(b, 1, 10), at(b, 0, 58)]),
            batch(1, "zstd", &[at(b, 1, 40), at(b, 2, 1), at(b, 1, 50), at(b, 2, 2), at(b, 1, 30)]),
            batch(1, "lz4", &[at(b, 1, 1), at(b, 1, 2), at(b, 1, 3)]),
            batch(2, "snappy", &[at(b, 2, 10), at(b, 3, 5), at(b, 2, 20), at(b, 3, 10)]),
            batch(2, "none", &[at(b, 3, 20), at(b, 2, 59), at(b, 3, 30)]),
        ],
    });
    let kafka_python = json!({
        "batches": [
            batch(0, "lz4", &[at(b, 1, 20), at(b, 2, 5), at(b, 1, 25)]),
            batch(1, "gzip", &[at(b, 2, 30), at(b, 2, 31), at(b, 2, 32), at(b, 2, 33)]),
            batch(2, "zstd", &[at(b, 2, 45), at(b, 3, 40), at(b, 2, 46), at(b, 3, 41)]),
            batch(2, "snappy", &[at(b, 0, 10), at(b, 0, 11), at(b, 0, 12)]),
            batch(0, "none", &[at(b, 2, 1), at(b, 2, 2)]),
        ],
    });
    let kafkajs = json!({
        "batches": [
            batch(0, "gzip", &[at(b, 3, 1), at(b, 2, 50), at(b, 3, 2), at(b, 3, 3)]),
            batch(1, "none", &[at(b, 0, 40), at(b, 0, 41), at(b, 1, 1)]),
            batch(2, "gzip", &[at(b, 0, 20), at(b, 0, 21), at(b, 0, 22), at(b, 0, 23), at(b, 0, 24)]),
        ],
    });
    truth
        .records
        .extend(clients.produce("confluent-kafka", &broker, "orders", &confluent));
    truth
        .records
        .extend(clients.produce("kafka-python", &broker, "orders", &kafka_python));
    truth
        .records
        .extend(clients.produce("kafkajs", &broker, "orders", &kafkajs));
    assert_eq!(
        [truth.end(0), truth.end(1), truth.end(2)],
        [18, 15, 19],
        "offsets as planned"
    );

    // K = 25 records consumed, with commits on batch boundaries and inside
    // batches (partition 0 at 6 is inside the gzip batch 4..9, partition 1
    // at 2 inside the zstd batch 0..5, partition 2 at 9 inside the zstd
    // batch 7..11); a second group consumes everything.
    clients.consume(
        &broker,
        &mut truth,
        "billing",
        &[(0, &[4, 6, 10]), (1, &[2, 6]), (2, &[9])],
    );
    let ends: Vec<(i32, i64)> = (0..3).map(|p| (p, truth.end(p))).collect();
    clients.commit(
        &broker,
        &mut truth,
        "archive",
        &[&[(0, 0), (1, 0), (2, 0)][..], &ends[..]],
        0,
    );

    // The plan really produced what it meant to: every codec, compressed
    // batches that straddle a bucket boundary, commits inside batches.
    let batches = disk_batches(&broker, "orders");
    let codecs: BTreeSet<u16> = batches.iter().map(|b| b.codec).collect();
    assert_eq!(
        codecs,
        BTreeSet::from([0, 1, 2, 3, 4]),
        "codecs on disk: {batches:?}"
    );
    let straddling = batches
        .iter()
        .filter(|d| d.codec != 0 && bucket_of(d.first_ts) != bucket_of(d.max_ts))
        .count();
    assert!(
        straddling >= 4,
        "compressed batches across a boundary: {batches:?}"
    );
    assert!(
        batches.iter().any(|d| {
            let ts = batch_timestamps(&truth.records, d);
            ts.iter().any(|t| *t < ts[0]) && d.codec != 0
        }),
        "no compressed batch holds a record older than its first: {batches:?}"
    );
    assert!(
        commit_inside_batch(&truth, &batches),
        "no commit inside a batch"
    );

    let want = truth.books();
    assert!(want.len() >= 4, "buckets: {want:?}");
    let view = wait_for_truth(&agent, &broker, &truth);
    assert_eq!(
        group_total(&view, "billing", "records"),
        25,
        "K records consumed"
    );
    assert_eq!(group_total(&view, "archive", "pending"), 0);
    assert_statuses(&view);
    assert_balanced(&view);
    let copied = wait_for_truth_in(&agent, "copy", &copy.log(), &truth);
    assert_eq!(group_total(&copied, "billing", "records"), 25);
    assert_balanced(&copied);
}

#[test]
fn compressed_batches_with_a_record_older_than_their_first_are_counted_by_record() {
    // A batch's header says the first and the largest timestamps; a record
    // may still be older than the first (a negative timestamp delta), in an
    // earlier bucket, while the first and the largest share one.
    let Some((clients, _agent_dir, agent)) = setup(false) else {
        return;
    };
    let broker = start_broker(&agent, &[]);
    let mut truth = Truth::new("stragglers");
    let b = hour_ago();
    let confluent = json!({
        "create": {"partitions": 2},
        "batches": [
            batch(0, "lz4", &[at(b, 1, 10), at(b, 1, 20), at(b, 0, 30), at(b, 1, 30)]),
            batch(0, "zstd", &[at(b, 2, 5), at(b, 1, 50), at(b, 2, 6)]),
        ],
    });
    let kafka_python = json!({
        "batches": [
            batch(1, "gzip", &[at(b, 1, 10), at(b, 0, 50), at(b, 1, 15)]),
            batch(1, "snappy", &[at(b, 2, 1), at(b, 2, 2), at(b, 1, 59)]),
        ],
    });
    truth
        .records
        .extend(clients.produce("confluent-kafka", &broker, "stragglers", &confluent));
    truth
        .records
        .extend(clients.produce("kafka-python", &broker, "stragglers", &kafka_python));
    clients.consume(&broker, &mut truth, "g", &[(0, &[2, 5]), (1, &[4])]);

    let batches = disk_batches(&broker, "stragglers");
    let fooling = batches
        .iter()
        .filter(|d| {
            let ts = batch_timestamps(&truth.records, d);
            d.codec != 0
                && bucket_of(d.first_ts) == bucket_of(d.max_ts)
                && ts.iter().any(|t| bucket_of(*t) < bucket_of(d.first_ts))
        })
        .count();
    assert_eq!(
        fooling, 4,
        "compressed batches whose header spans one bucket but hold an older record: {batches:?}"
    );
    let view = wait_for_truth(&agent, &broker, &truth);
    assert_balanced(&view);
}

#[test]
fn retention_expires_what_a_group_had_not_consumed() {
    let Some((clients, _agent_dir, agent)) = setup(false) else {
        return;
    };
    let broker = start_broker(&agent, &["--retention-check", "1s"]);
    // The collector reads the records before retention deletes them, and sees the
    // log start move in its Fetch answers.
    let copy = Collector::copy_of(&agent, &broker, "expiring");
    let mut truth = Truth::new("expiring");
    // Every batch ends with a record that turns an hour old `AGES_OUT` from
    // now; segments are judged by their newest record, so none can go
    // before then, and every sealed one goes right after.
    const AGES_OUT: i64 = 20_000;
    let newest = common::now_ms() - 3_600_000 + AGES_OUT;
    let m = bucket_of(newest);
    let batches: Vec<Value> = (0..2)
        .flat_map(|p| {
            (0..6).map(move |n| {
                batch(
                    p,
                    if n % 2 == 0 { "none" } else { "lz4" },
                    &[at(m, -2, 3 * n + p as i64), at(m, -1, 3 * n + 1), newest],
                )
            })
        })
        .collect();
    let plan = json!({
        "create": {"partitions": 2, "configs": {"segment.bytes": "1024", "retention.ms": "3600000"}},
        "value_bytes": 300,
        "batches": batches,
    });
    truth
        .records
        .extend(clients.produce("confluent-kafka", &broker, "expiring", &plan));
    // "slow" read 4 records of partition 0 (up to inside its second batch)
    // and none of partition 1; "fast" read everything.
    clients.commit(
        &broker,
        &mut truth,
        "slow",
        &[&[(0, 0), (1, 0)], &[(0, 4)]],
        0,
    );
    clients.commit(
        &broker,
        &mut truth,
        "fast",
        &[&[(0, 0), (1, 0)], &[(0, 18), (1, 18)]],
        0,
    );
    assert!(
        common::now_ms() < newest + 3_600_000 - 1000,
        "the commits took too long: retention may have run before them"
    );

    // Retention deletes every sealed segment once they age out.
    let deadline = Instant::now() + Duration::from_secs(AGES_OUT as u64 / 1000 + 20);
    let starts = loop {
        let parts = group_partitions(&agent, "slow");
        let starts: BTreeMap<i32, i64> = parts
            .iter()
            .map(|p| {
                (
                    p["partition"].as_i64().unwrap() as i32,
                    p["start_offset"].as_i64().unwrap(),
                )
            })
            .collect();
        if starts.len() == 2 && starts.values().all(|s| *s > 0) {
            break starts;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not move the log starts: {parts:?}\nbroker log:\n{}",
            tail(&broker.log())
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(starts[&0] > 4 && starts[&1] > 0, "log starts {starts:?}");
    truth.start = starts.clone();
    // The slow group goes on from the new start of partition 1.
    clients.commit(&broker, &mut truth, "slow", &[&[(1, starts[&1] + 1)]], 0);

    let view = wait_for_truth(&agent, &broker, &truth);
    let deleted_unconsumed = (starts[&0] - 4) + starts[&1];
    assert_eq!(
        group_total(&view, "slow", "expired"),
        deleted_unconsumed as u64
    );
    assert_eq!(group_total(&view, "fast", "expired"), 0);
    assert_eq!(group_total(&view, "fast", "pending"), 0);
    assert_balanced(&view);
    assert_statuses(&view);
    let copied = wait_for_truth_in(&agent, "copy", &copy.log(), &truth);
    assert_eq!(
        group_total(&copied, "slow", "expired"),
        deleted_unconsumed as u64
    );
    assert_balanced(&copied);
}

/// Two batches on each of two partitions, from bucket `round` to
/// `round + 2`, compressed ones straddling a boundary; for the kill tests.
fn durable_plan(b: i64, create: bool, round: i64) -> Value {
    let mut plan = json!({
        "batches": [
            batch(0, "gzip", &[at(b, round, 50), at(b, round + 1, 5), at(b, round, 55), at(b, round + 1, 10)]),
            batch(1, "none", &[at(b, round, 1), at(b, round, 2), at(b, round + 1, 3)]),
            batch(0, "zstd", &[at(b, round + 1, 20), at(b, round + 1, 21)]),
            batch(1, "snappy", &[at(b, round + 1, 30), at(b, round + 2, 1), at(b, round + 1, 31)]),
        ],
    });
    if create {
        plan["create"] = json!({"partitions": 2});
    }
    plan
}

#[test]
fn broker_killed_and_restarted_leaves_the_books_identical() {
    let Some((clients, _agent_dir, agent)) = setup(false) else {
        return;
    };
    let mut broker = start_broker(&agent, &[]);
    let mut truth = Truth::new("durable");
    let b = hour_ago();
    truth.records.extend(clients.produce(
        "confluent-kafka",
        &broker,
        "durable",
        &durable_plan(b, true, 0),
    ));
    clients.consume(&broker, &mut truth, "g", &[(0, &[2, 5]), (1, &[4])]);
    let before = books_of(&wait_for_truth(&agent, &broker, &truth));

    // kill -9 once everything was reported: the restarted broker rebuilds its
    // books from the log and the committed offsets and resends them.
    let counts_before = source(&agent)["messages"]["counts"].as_u64().unwrap();
    broker.restart();
    let deadline = Instant::now() + SETTLE;
    loop {
        let s = source(&agent);
        if s["messages"]["hello"].as_u64() >= Some(2)
            && s["messages"]["counts"].as_u64() > Some(counts_before)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted broker did not report: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_steady(&agent, "durable", &before, 3, "after the broker restarted");

    // kill -9 right after a commit, before the broker could report it.
    clients.commit(&broker, &mut truth, "g", &[&[(0, 6), (1, 5)]], 0);
    broker.restart();
    let view = wait_for_truth(&agent, &broker, &truth);
    assert_steady(
        &agent,
        "durable",
        &books_of(&view),
        3,
        "after the second restart",
    );

    // The restarted broker goes on counting.
    truth.records.extend(clients.produce(
        "confluent-kafka",
        &broker,
        "durable",
        &durable_plan(b, false, 2),
    ));
    clients.commit(&broker, &mut truth, "g", &[&[(0, 9)]], 0);
    let view = wait_for_truth(&agent, &broker, &truth);
    assert_balanced(&view);
}

#[test]
fn agent_killed_and_restarted_keeps_the_books_and_catches_up() {
    let Some((clients, _agent_dir, mut agent)) = setup(false) else {
        return;
    };
    let broker = start_broker(&agent, &[]);
    let mut truth = Truth::new("ledger");
    let b = hour_ago();
    truth.records.extend(clients.produce(
        "confluent-kafka",
        &broker,
        "ledger",
        &durable_plan(b, true, 0),
    ));
    clients.consume(&broker, &mut truth, "g", &[(0, &[3]), (1, &[1, 5])]);
    let before = books_of(&wait_for_truth(&agent, &broker, &truth));

    // kill -9 and restart on the same address and state: the same books,
    // from the first answer on and after the broker reconnected.
    let (addr, data) = (agent.addr, agent.data_dir.clone());
    agent.kill9();
    agent = Agent::start_at(addr, &data, &agent_flags());
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        if let Some(v) = view(&agent, "ledger") {
            break books_of(&v);
        }
        assert!(
            Instant::now() < deadline,
            "the restarted agent shows no books of ledger"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        first == before,
        "the restarted agent lost books:\n{}",
        differences(&first, &before)
    );
    let deadline = Instant::now() + SETTLE;
    while source(&agent)["connected"] != true {
        assert!(
            Instant::now() < deadline,
            "the broker did not reconnect: {}",
            source(&agent)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_steady(&agent, "ledger", &before, 3, "after the agent restarted");

    // What happens while the agent is down reaches it once it is back.
    agent.kill9();
    truth.records.extend(clients.produce(
        "confluent-kafka",
        &broker,
        "ledger",
        &durable_plan(b, false, 2),
    ));
    clients.commit(&broker, &mut truth, "g", &[&[(0, 7), (1, 8)]], 0);
    std::thread::sleep(Duration::from_millis(1500));
    agent = Agent::start_at(addr, &data, &agent_flags());
    let view = wait_for_truth(&agent, &broker, &truth);
    assert_balanced(&view);
}

#[test]
fn a_group_that_rewinds_is_flagged_and_its_counts_never_fall() {
    let Some((clients, _agent_dir, agent)) = setup(false) else {
        return;
    };
    let broker = start_broker(&agent, &[]);
    let mut truth = Truth::new("replays");
    let b = hour_ago();
    let plan = json!({
        "create": {"partitions": 1},
        "batches": [
            batch(0, "gzip", &(0..10).map(|i| at(b, 0, 5 * i)).collect::<Vec<_>>()),
            batch(0, "none", &(0..10).map(|i| at(b, 0, 50 + 2 * i)).collect::<Vec<_>>()),
            batch(0, "snappy", &(0..10).map(|i| at(b, 1, 3 * i)).collect::<Vec<_>>()),
        ],
    });
    truth
        .records
        .extend(clients.produce("kafka-python", &broker, "replays", &plan));

    // Commits 1.3 s apart, so that each one reaches the agent (the broker
    // samples lag once a second); meanwhile the consumed counts are watched.
    let steps: &[&[(i32, i64)]] = &[
        &[(0, 0)],
        &[(0, 10)],
        &[(0, 20)],
        &[(0, 5)],
        &[(0, 20)],
        &[(0, 8)],
    ];
    let seen = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut seen: Vec<Books> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Some(v) = view(&agent, "replays") {
                    seen.push(books_of(&v));
                }
                let done = seen.last().is_some_and(|b| {
                    b.values()
                        .any(|t| t.get("group:replay").is_some_and(|c| c.records > 0))
                }) && group_partitions(&agent, "replay")
                    .first()
                    .is_some_and(|p| p["committed"] == 8);
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        clients.commit(&broker, &mut truth, "replay", steps, 1300);
        watcher.join().unwrap()
    });
    assert!(
        seen.len() >= 10,
        "the books were seen only {} times",
        seen.len()
    );
    for pair in seen.windows(2) {
        for (bucket, tiers) in &pair[0] {
            let (Some(was), Some(now)) = (
                tiers.get("group:replay"),
                pair[1].get(bucket).and_then(|t| t.get("group:replay")),
            ) else {
                continue;
            };
            assert!(
                now.records >= was.records,
                "bucket {bucket}: consumed fell from {} to {} on a rewind",
                was.records,
                now.records
            );
        }
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let groups = agent.json("/api/v1/groups");
        let g = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == "replay")
            .cloned()
            .unwrap_or(Value::Null);
        if g["partitions"][0]["status"] == "rewind" {
            assert_eq!(g["status"], "err", "{g}");
            assert_eq!(g["partitions"][0]["committed"], 8, "{g}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group is not flagged as rewinding: {g}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Consumed stays at the highest commit: the first 20 records.
    let view = wait_for_truth(&agent, &broker, &truth);
    assert_eq!(group_total(&view, "replay", "records"), 20);
    assert_balanced(&view);
}

#[test]
fn a_group_that_starts_late_skips_what_came_before() {
    let Some((clients, _agent_dir, agent)) = setup(false) else {
        return;
    };
    let broker = start_broker(&agent, &[]);
    let mut truth = Truth::new("latecomers");
    let b = hour_ago();
    let first = json!({
        "create": {"partitions": 2},
        "batches": [
            batch(0, "zstd", &[at(b, 0, 1), at(b, 0, 2), at(b, 1, 1), at(b, 0, 3), at(b, 1, 2), at(b, 1, 3)]),
            batch(1, "none", &[at(b, 1, 10), at(b, 2, 10), at(b, 1, 11), at(b, 2, 11), at(b, 2, 12)]),
        ],
    });
    truth
        .records
        .extend(clients.produce("kafka-python", &broker, "latecomers", &first));
    // "claims" never fetches: committing the end asserts it processed
    // everything before it.
    clients.commit(&broker, &mut truth, "claims", &[&[(0, 6), (1, 5)]], 0);
    let more = json!({
        "batches": [
            batch(0, "gzip", &[at(b, 2, 20), at(b, 2, 21), at(b, 3, 1)]),
            batch(1, "lz4", &[at(b, 2, 30), at(b, 3, 30), at(b, 2, 31), at(b, 3, 31)]),
        ],
    });
    // "late" subscribes at `latest`: it starts at the end of the log, reads
    // what comes next, and commits only then.
    clients.latest(
        &broker,
        &mut truth,
        "late",
        &[(0, &[9]), (1, &[7])],
        |truth| {
            truth
                .records
                .extend(clients.produce("kafka-python", &broker, "latecomers", &more));
        },
    );

    let view = wait_for_truth(&agent, &broker, &truth);
    assert_eq!(
        group_total(&view, "late", "skipped"),
        11,
        "records before its first fetch"
    );
    assert_eq!(group_total(&view, "late", "records"), 5);
    assert_eq!(group_total(&view, "late", "pending"), 2);
    assert_eq!(
        group_total(&view, "claims", "skipped"),
        0,
        "nothing fetched: nothing skipped"
    );
    assert_eq!(group_total(&view, "claims", "records"), 11);
    assert_eq!(group_total(&view, "claims", "pending"), 7);
    assert_balanced(&view);
    assert_statuses(&view);
}

#[test]
fn a_group_that_has_not_consumed_a_bucket_shows_it_pending() {
    // Both groups committed offset 0 on every partition: everything after is
    // theirs to consume. "idle" consumed nothing; "recent" consumed only
    // partition 1, whose records are newer than partition 0's.
    let Some((clients, _agent_dir, agent)) = setup(false) else {
        return;
    };
    let broker = start_broker(&agent, &[]);
    let mut truth = Truth::new("backlog");
    let b = hour_ago();
    let plan = json!({
        "create": {"partitions": 2},
        "batches": [
            batch(0, "none", &[at(b, 0, 1), at(b, 0, 2), at(b, 1, 1)]),
            batch(1, "gzip", &[at(b, 1, 10), at(b, 2, 10), at(b, 1, 11), at(b, 2, 11)]),
        ],
    });
    truth
        .records
        .extend(clients.produce("confluent-kafka", &broker, "backlog", &plan));
    clients.commit(&broker, &mut truth, "idle", &[&[(0, 0), (1, 0)]], 0);
    clients.commit(
        &broker,
        &mut truth,
        "recent",
        &[&[(0, 0), (1, 0)], &[(1, 4)]],
        0,
    );
    let view = wait_for_truth(&agent, &broker, &truth);
    assert_eq!(group_total(&view, "idle", "pending"), 7);
    assert_balanced(&view);
}

#[test]
fn a_collector_killed_mid_workload_resumes_with_exact_books() {
    let Some((clients, dir, agent)) = setup(false) else {
        return;
    };
    let broker = start_broker(&agent, &[]);
    let state = dir.path().join("collector");
    let args = [
        "--cluster",
        "copy",
        "--bootstrap",
        broker.addr(),
        "--bucket-width",
        "60s",
        "--audit-topics",
        "resumed",
    ];
    let mut copy = Collector::start_in(&agent, &state, &args);
    let mut truth = Truth::new("resumed");
    let b = hour_ago();
    truth.records.extend(clients.produce(
        "confluent-kafka",
        &broker,
        "resumed",
        &durable_plan(b, true, 0),
    ));
    clients.consume(&broker, &mut truth, "g", &[(0, &[2, 5]), (1, &[4])]);
    wait_for_truth_in(&agent, "copy", &copy.log(), &truth);

    // kill -9 right after more records came: the collector stored its position and
    // books together a few seconds ago at most, and reads on from there.
    truth.records.extend(clients.produce(
        "confluent-kafka",
        &broker,
        "resumed",
        &durable_plan(b, false, 2),
    ));
    copy.child.kill().unwrap();
    copy.child.wait().unwrap();
    // More records and a commit while it is down.
    truth.records.extend(clients.produce(
        "confluent-kafka",
        &broker,
        "resumed",
        &durable_plan(b, false, 4),
    ));
    clients.commit(&broker, &mut truth, "g", &[&[(0, 9), (1, 8)]], 0);
    let copy = Collector::start_in(&agent, &state, &args);
    let view = wait_for_truth_in(&agent, "copy", &copy.log(), &truth);
    assert_balanced(&view);
    // The broker's own books (cluster local) say the same.
    wait_for_truth(&agent, &broker, &truth);
    let stored = state
        .join("state")
        .join("copy")
        .join("books")
        .join("resumed");
    assert_eq!(
        std::fs::read_dir(&stored).unwrap().count(),
        2,
        "one stored book per partition in {}",
        stored.display()
    );
}

/// The agent's view of one source, or Null.
fn source_named(agent: &Agent, name: &str) -> Value {
    agent.json("/api/v1/sources")["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn a_second_source_for_a_reported_cluster_is_refused_and_the_books_hold() {
    let Some((clients, _agent_dir, agent)) = setup(false) else {
        return;
    };
    let broker = start_broker(&agent, &[]);
    let copy = Collector::copy_of(&agent, &broker, "twice");
    let mut truth = Truth::new("twice");
    let b = hour_ago();
    truth.records.extend(clients.produce(
        "confluent-kafka",
        &broker,
        "twice",
        &durable_plan(b, true, 0),
    ));
    clients.consume(&broker, &mut truth, "g", &[(0, &[3]), (1, &[2])]);
    let local = books_of(&wait_for_truth(&agent, &broker, &truth));
    wait_for_truth_in(&agent, "copy", &copy.log(), &truth);

    // A collector beside the instrumented broker, for the broker's own cluster:
    // its broker and group counts are refused as duplicate_source.
    let beside = Collector::start(
        &agent,
        &[
            "--cluster",
            "local",
            "--bootstrap",
            broker.addr(),
            "--bucket-width",
            "60s",
            "--audit-topics",
            "twice",
        ],
    );
    let deadline = Instant::now() + SETTLE;
    loop {
        let s = source_named(&agent, "collect-local");
        if s["duplicate_entries"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second source's counts were not refused: {s}\n{}",
            tail(&beside.log())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let errors = common::metric(
        &agent.metrics(),
        "tally_ingest_errors_total",
        &[("reason", "duplicate_source")],
    );
    assert!(errors.unwrap_or(0.0) >= 1.0, "not counted: {errors:?}");
    assert!(
        agent.log().contains("duplicate_source"),
        "not logged:\n{}",
        tail(&agent.log())
    );
    assert_steady(&agent, "twice", &local, 3, "beside the broker");

    // A second collector for the `copy` cluster: the same source id, whose
    // session is live, so its hello is refused and the books stay as they are.
    let copied = books_of(&view_in(&agent, "copy", "twice").unwrap());
    let second = Collector::copy_of(&agent, &broker, "twice");
    let deadline = Instant::now() + SETTLE;
    while !second.log().contains("duplicate_source") {
        assert!(
            Instant::now() < deadline,
            "the second collector was not refused:\n{}",
            tail(&second.log())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..20 {
        let now = books_of(&view_in(&agent, "copy", "twice").unwrap());
        assert_eq!(now, copied, "the copy's books changed");
        std::thread::sleep(Duration::from_millis(150));
    }
    drop(second);
    drop(beside);
    drop(copy);
}

#[test]
fn a_log_append_time_topic_is_bucketed_by_append_time_in_the_broker_and_the_collector() {
    let Some((clients, _agent_dir, agent)) = setup(false) else {
        return;
    };
    let broker = start_broker(&agent, &[]);
    let copy = Collector::copy_of(&agent, &broker, "stamped");
    let b = hour_ago();
    let plan = json!({
        "create": {"partitions": 2, "configs": {"message.timestamp.type": "LogAppendTime"}},
        "batches": [
            batch(0, "none", &[at(b, 0, 1), at(b, 0, 2), at(b, 1, 3)]),
            batch(1, "zstd", &[at(b, 1, 1), at(b, 2, 2), at(b, 0, 3)]),
            batch(1, "gzip", &[at(b, 3, 1), at(b, 3, 2)]),
        ],
    });
    let mut truth = Truth::new("stamped");
    truth
        .records
        .extend(clients.produce("confluent-kafka", &broker, "stamped", &plan));
    // The delivery reports carry the append time, which replaced the producer's.
    assert!(
        truth.records.iter().all(|r| r.ts > b + 30 * WIDTH_MS),
        "the records keep their own timestamps: {:?}",
        truth.records.iter().map(|r| r.ts).collect::<Vec<_>>()
    );
    clients.consume(&broker, &mut truth, "g", &[(0, &[2]), (1, &[4])]);
    wait_for_truth(&agent, &broker, &truth);
    let copied = wait_for_truth_in(&agent, "copy", &copy.log(), &truth);
    assert_balanced(&copied);
}

#[test]
fn delete_records_expires_what_a_group_had_not_consumed() {
    let Some((clients, _agent_dir, agent)) = setup(false) else {
        return;
    };
    let broker = start_broker(&agent, &[]);
    let mut truth = Truth::new("trimmed");
    let b = hour_ago();
    // 6 batches of 3 records per partition, over three buckets.
    let batches: Vec<Value> = (0..2)
        .flat_map(|p| {
            (0..6).map(move |n| {
                batch(
                    p,
                    if n % 2 == 0 { "none" } else { "zstd" },
                    &[
                        at(b, n / 2, 3 * n),
                        at(b, n / 2, 3 * n + 1),
                        at(b, n / 2, 3 * n + 2),
                    ],
                )
            })
        })
        .collect();
    let plan = json!({"create": {"partitions": 2}, "value_bytes": 50, "batches": batches});
    truth
        .records
        .extend(clients.produce("confluent-kafka", &broker, "trimmed", &plan));
    // "slow" read 4 records of partition 0 and none of partition 1; "fast"
    // read everything.
    clients.commit(
        &broker,
        &mut truth,
        "slow",
        &[&[(0, 0), (1, 0)], &[(0, 4)]],
        0,
    );
    clients.commit(
        &broker,
        &mut truth,
        "fast",
        &[&[(0, 0), (1, 0)], &[(0, 18), (1, 18)]],
        0,
    );

    // An admin deletes the records before offset 10 of partition 0 (mid-batch)
    // and before 6 of partition 1.
    let script = format!(
        "from confluent_kafka import TopicPartition; from confluent_kafka.admin import AdminClient; import json; \
         a = AdminClient({{'bootstrap.servers': '{}'}}); \
         tps = [TopicPartition('trimmed', 0, 10), TopicPartition('trimmed', 1, 6)]; \
         fs = a.delete_records(tps); \
         print(json.dumps({{str(tp.partition): f.result(timeout=15).low_watermark for tp, f in fs.items()}}))",
        broker.addr()
    );
    let run = common::run(
        Command::new(&clients.python).arg("-c").arg(script),
        b"",
        common::CLIENT_TIMEOUT,
    );
    let moved = run.accept("delete_records", &broker);
    assert_eq!(moved, json!({"0": 10, "1": 6}));
    truth.start = BTreeMap::from([(0, 10), (1, 6)]);

    // What "slow" had not read below the new starts expired; "fast" lost nothing.
    let view = wait_for_truth(&agent, &broker, &truth);
    assert_eq!(group_total(&view, "slow", "expired"), (10 - 4) + 6);
    assert_eq!(group_total(&view, "fast", "expired"), 0);
    assert_eq!(group_total(&view, "fast", "pending"), 0);
    assert_balanced(&view);
}
