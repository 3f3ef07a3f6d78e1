//! Where a consumer group starts on a partition (DESIGN §2, amended): real
//! clients (confluent-kafka, kafkajs) start groups in every way users do, and
//! the agent's books must say what those users mean.
//!
//! - A group's start on a partition where it had no committed offset is the
//!   first fetch offset of a member that the group assigned the partition:
//!   from the beginning nothing is skipped, even with auto-commit; at `latest`
//!   after a backlog, the backlog is skipped and the rest is consumed.
//! - Where no fetch ties to the group (it assigns partitions itself, an admin
//!   tool commits), committing K consumes everything from the log start to K.
//! - A fetch whose client id and host match members of two groups assigned
//!   the partition ties to neither: their commits fall back to that rule.
//!   Groups that share a client id (librdkafka's default) but read
//!   different topics tie as usual.
//! - A static member's rejoin, a rebalance mid-read and a kill -9 of the
//!   broker between the first fetch and the first commit change nothing.
//!
//! Each test runs its own agent and broker on free loopback ports, produces a
//! backlog with explicit timestamps (an hour old, over three 60 s buckets),
//! lets a group start, and polls the agent until its books of the topic,
//! bucket by bucket, equal the ground truth computed from what the clients
//! produced, read and committed; then checks the totals a user reads on
//! `/api/v1/topics` and that every bucket balances:
//! `broker = consumed + pending + expired + skipped`. The client scripts are
//! `tests/compat/start_*`; under CI=true a missing client fails the test.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{Agent, Broker, CLIENT_TIMEOUT, client_scripts, tail};

/// The bucket width of agent and broker, so that explicit timestamps pick buckets.
const WIDTH_MS: i64 = 60_000;
/// How long the agent may take to show what the clients did.
const SETTLE: Duration = Duration::from_secs(60);
/// Records per partition in the backlog, before a group starts.
const BACKLOG: i64 = 200;
/// Records per partition produced once the group is fetching.
const MORE: i64 = 150;
/// Every topic has two partitions.
const PARTITIONS: i32 = 2;

// ------------------------------------------------------------------ clients

/// One of the real clients, as the interpreter and the script that drives it.
struct Client {
    program: PathBuf,
    script: &'static str,
}

impl Client {
    /// confluent-kafka; None (skip) where missing, except under CI=true.
    fn confluent_kafka() -> Option<Client> {
        Some(Client {
            program: common::python()?,
            script: "start_confluent_kafka.py",
        })
    }

    /// kafkajs; None (skip) where missing, except under CI=true.
    fn kafkajs() -> Option<Client> {
        Some(Client {
            program: common::node()?,
            script: "start_kafkajs.js",
        })
    }

    /// Runs one mode of the script on `topic` and returns its JSON result;
    /// fails with everything it said when it failed.
    fn run(&self, mode: &str, broker: &Broker, topic: &str, args: &Value) -> Value {
        let mut cmd = Command::new(&self.program);
        cmd.arg(client_scripts().join(self.script))
            .args([mode, broker.addr(), topic])
            .env("KAFKAJS_NO_PARTITIONER_WARNING", "1");
        common::run(&mut cmd, args.to_string().as_bytes(), CLIENT_TIMEOUT)
            .accept(&format!("{} {mode} on {topic}", self.script), broker)
    }

    /// Creates `topic` with the backlog; returns what was acknowledged.
    fn backlog(&self, broker: &Broker, topic: &str, base: i64) -> Vec<Rec> {
        let result = self.run(
            "produce",
            broker,
            topic,
            &json!({ "create": PARTITIONS, "records": stamps(base, 0, BACKLOG) }),
        );
        let records = recs(&result["records"]);
        assert_eq!(
            records.len() as i64,
            BACKLOG * i64::from(PARTITIONS),
            "backlog acknowledged"
        );
        for p in 0..PARTITIONS {
            assert_eq!(end(&records, p), BACKLOG, "partition {p} after the backlog");
        }
        records
    }
}

/// `n` timestamps per partition, 600 ms apart from `secs` seconds after
/// `base` (partition 1 a second later): 200 of them span two buckets.
fn stamps(base: i64, secs: i64, n: i64) -> Value {
    let per: serde_json::Map<String, Value> = (0..PARTITIONS)
        .map(|p| {
            let first = base + secs * 1000 + i64::from(p) * 1000;
            (
                p.to_string(),
                json!((0..n).map(|i| first + i * 600).collect::<Vec<_>>()),
            )
        })
        .collect();
    Value::Object(per)
}

/// The records produced once a group fetches: from 90 s in, so that the
/// middle bucket holds backlog and later records alike.
fn more(base: i64) -> Value {
    stamps(base, 90, MORE)
}

// ------------------------------------------------------------- ground truth

/// One acknowledged (or read) record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rec {
    partition: i32,
    offset: i64,
    ts: i64,
}

fn recs(v: &Value) -> Vec<Rec> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of records: {v}"))
        .iter()
        .map(|r| Rec {
            partition: r["partition"].as_i64().unwrap() as i32,
            offset: r["offset"].as_i64().unwrap(),
            ts: r["timestamp"].as_i64().unwrap(),
        })
        .collect()
}

/// The records of `topic` in a list that names each record's topic.
fn recs_of(v: &Value, topic: &str) -> Vec<Rec> {
    let of_topic: Vec<Value> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list of records: {v}"))
        .iter()
        .filter(|r| r["topic"] == topic)
        .cloned()
        .collect();
    recs(&Value::Array(of_topic))
}

/// The offset after the last record of `partition`.
fn end(records: &[Rec], partition: i32) -> i64 {
    records
        .iter()
        .filter(|r| r.partition == partition)
        .map(|r| r.offset + 1)
        .max()
        .unwrap_or(0)
}

fn bucket_of(ts: i64) -> i64 {
    ts.div_euclid(WIDTH_MS) * WIDTH_MS
}

/// Where a group started and what it last committed, per partition.
#[derive(Clone, Debug)]
struct Group {
    start: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
}

/// One group tier's numbers (in a bucket, or in total).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cell {
    consumed: u64,
    pending: u64,
    expired: u64,
    skipped: u64,
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "consumed {}, skipped {}, pending {}, expired {}",
            self.consumed, self.skipped, self.pending, self.expired
        )
    }
}

/// bucket → (broker records, group → cell).
type Books = BTreeMap<i64, (u64, BTreeMap<String, Cell>)>;

/// What the books must say: below a group's start skipped, from its start
/// to its commit consumed, the rest pending (nothing expires here).
fn truth(records: &[Rec], groups: &BTreeMap<&str, Group>) -> Books {
    let mut books = Books::new();
    for r in records {
        let (broker, cells) = books.entry(bucket_of(r.ts)).or_default();
        *broker += 1;
        for (name, g) in groups {
            let cell = cells.entry((*name).to_owned()).or_default();
            let committed = g.committed.get(&r.partition).copied();
            let start = g.start.get(&r.partition).copied().unwrap_or(0);
            match committed {
                _ if r.offset < start => cell.skipped += 1,
                Some(c) if r.offset < c => cell.consumed += 1,
                _ => cell.pending += 1,
            }
        }
    }
    books
}

fn totals(books: &Books, group: &str) -> Cell {
    books
        .values()
        .filter_map(|(_, cells)| cells.get(group))
        .fold(Cell::default(), |t, c| Cell {
            consumed: t.consumed + c.consumed,
            pending: t.pending + c.pending,
            expired: t.expired + c.expired,
            skipped: t.skipped + c.skipped,
        })
}

// ------------------------------------------------------------ the agent view

/// Agent and broker of one test; the agent's data lives in the folder,
/// removed after both are killed (fields drop in order).
struct Setup {
    broker: Broker,
    agent: Agent,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
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
    let broker = Broker::reporting_to(agent.addr, &["--bucket-width", "60s"]);
    Setup {
        broker,
        agent,
        _dir: dir,
    }
}

/// The start of the bucket an hour ago: long closed (grace 2 min), well
/// inside the window (24 h).
fn hour_ago() -> i64 {
    bucket_of(common::now_ms() - 3_600_000)
}

/// The agent's books of `topic` from `/api/v1/topics/{topic}/buckets`, or
/// None while it has none.
fn books_shown(agent: &Agent, topic: &str) -> Option<Books> {
    let path = format!("/api/v1/topics/{topic}/buckets?cluster=local");
    let (status, body) = common::try_get(agent.addr, &path, None).ok()?;
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "GET {path}: {body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    let mut books = Books::new();
    for b in view["buckets"].as_array().unwrap() {
        let tiers = b["tiers"].as_object().unwrap();
        let broker = tiers
            .get("broker")
            .and_then(|t| t["records"].as_u64())
            .unwrap_or(0);
        let cells = tiers
            .iter()
            .filter_map(|(tier, t)| Some((tier.strip_prefix("group:")?.to_owned(), cell_of(t))))
            .collect();
        books.insert(b["bucket"].as_i64().unwrap(), (broker, cells));
    }
    Some(books)
}

fn cell_of(t: &Value) -> Cell {
    let n = |k: &str| {
        t[k].as_u64()
            .unwrap_or_else(|| panic!("no \"{k}\" in a group tier: {t}"))
    };
    Cell {
        consumed: n("records"),
        pending: n("pending"),
        expired: n("expired"),
        skipped: n("skipped"),
    }
}

/// The group tiers' totals on `/api/v1/topics`.
fn totals_shown(agent: &Agent, topic: &str) -> BTreeMap<String, Cell> {
    let topics = agent.json("/api/v1/topics");
    let Some(t) = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == topic && t["cluster"] == "local")
    else {
        return BTreeMap::new();
    };
    t["tiers"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(tier, v)| Some((tier.strip_prefix("group:")?.to_owned(), cell_of(v))))
        .collect()
}

/// One line per group: what the agent shows and what is true, in total.
fn summary(shown: &Books, want: &Books) -> String {
    let names: Vec<&String> = want
        .values()
        .flat_map(|(_, cells)| cells.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    names
        .into_iter()
        .map(|g| {
            format!(
                "group:{g}: agent {}; truth {}",
                totals(shown, g),
                totals(want, g)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The buckets where `shown` and `want` differ.
fn differences(shown: &Books, want: &Books) -> String {
    let buckets: BTreeSet<i64> = shown.keys().chain(want.keys()).copied().collect();
    let base = buckets.first().copied().unwrap_or(0);
    buckets
        .into_iter()
        .filter(|b| shown.get(b) != want.get(b))
        .map(|b| {
            format!(
                "bucket +{} min: agent {:?}\n             truth {:?}",
                (b - base) / WIDTH_MS,
                shown.get(&b),
                want.get(&b)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls the agent until its books of `topic` equal the truth, bucket by
/// bucket, and the totals on `/api/v1/topics` equal the truth's; then checks
/// that every bucket balances and that each group's totals are `expect`.
fn assert_books(
    s: &Setup,
    topic: &str,
    records: &[Rec],
    groups: &BTreeMap<&str, Group>,
    expect: &[(&str, Cell)],
) {
    let want = truth(records, groups);
    for (g, cell) in expect {
        assert_eq!(
            totals(&want, g),
            *cell,
            "the test's own ground truth for group {g}"
        );
    }
    let deadline = Instant::now() + SETTLE;
    let shown = loop {
        let shown = books_shown(&s.agent, topic).unwrap_or_default();
        if shown == want {
            let on_topics = totals_shown(&s.agent, topic);
            if groups
                .keys()
                .all(|g| on_topics.get(*g) == Some(&totals(&want, g)))
            {
                break shown;
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "after {SETTLE:?} the agent's books of {topic} are not what the groups did:\n{}\n\n\
                 per bucket:\n{}\n\n/api/v1/topics: {:?}\n\nagent log:\n{}\nbroker log:\n{}",
                summary(&shown, &want),
                differences(&shown, &want),
                totals_shown(&s.agent, topic),
                tail(&s.agent.log()),
                tail(&s.broker.log())
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    for (bucket, (broker, cells)) in &shown {
        for (g, c) in cells {
            assert_eq!(
                c.consumed + c.pending + c.expired + c.skipped,
                *broker,
                "bucket {bucket} group:{g} does not balance: {c}, broker {broker}"
            );
        }
    }
    for (g, cell) in expect {
        assert_eq!(totals(&shown, g), *cell, "group:{g} in total");
    }
}

// ---------------------------------------------------------- what was read

/// A group's run as a script reported it: what it read and committed.
fn group_of(result: &Value, group: &str) -> (Vec<Rec>, BTreeMap<i32, i64>) {
    let g = &result["groups"][group];
    let committed = g["committed"]
        .as_object()
        .unwrap_or_else(|| panic!("no result for group {group}: {result}"))
        .iter()
        .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
        .collect();
    (recs(&g["read"]), committed)
}

/// The group read exactly the records from `from` to the end of each
/// partition, as they were produced.
fn assert_read(group: &str, read: &[Rec], records: &[Rec], from: &BTreeMap<i32, i64>) {
    let mut want: Vec<Rec> = records
        .iter()
        .filter(|r| r.offset >= from[&r.partition])
        .copied()
        .collect();
    want.sort_by_key(|r| (r.partition, r.offset));
    let mut got = read.to_vec();
    got.sort_by_key(|r| (r.partition, r.offset));
    let firsts = |rs: &[Rec]| -> BTreeMap<i32, i64> {
        let mut m = BTreeMap::new();
        for r in rs {
            m.entry(r.partition).or_insert(r.offset);
        }
        m
    };
    assert!(
        got == want,
        "group {group} read {} records (first offsets {:?}), expected {} (first offsets {:?})",
        got.len(),
        firsts(&got),
        want.len(),
        firsts(&want)
    );
}

fn each(offset: i64) -> BTreeMap<i32, i64> {
    (0..PARTITIONS).map(|p| (p, offset)).collect()
}

fn ends(records: &[Rec]) -> BTreeMap<i32, i64> {
    (0..PARTITIONS).map(|p| (p, end(records, p))).collect()
}

const ALL: i64 = (BACKLOG + MORE) * PARTITIONS as i64;
const BACKLOG_ALL: i64 = BACKLOG * PARTITIONS as i64;
const MORE_ALL: i64 = MORE * PARTITIONS as i64;

fn cell(consumed: i64, skipped: i64, pending: i64) -> Cell {
    Cell {
        consumed: consumed as u64,
        pending: pending as u64,
        expired: 0,
        skipped: skipped as u64,
    }
}

// ----------------------------------------------------------- the scenarios

/// Rule 1 from the beginning: a group at `earliest` with auto-commit (every
/// second) reads the backlog and what comes after; it consumed everything,
/// skipped nothing, though its first auto-commit came after it had read.
fn from_the_beginning_with_auto_commit(client: &Client, read_args: impl Fn(i64) -> Value) {
    let s = setup();
    let (topic, base) = ("from-the-start", hour_ago());
    let mut records = client.backlog(&s.broker, topic, base);
    let result = client.run("read", &s.broker, topic, &read_args(base));
    records.extend(recs(&result["produced"]));
    let (read, committed) = group_of(&result, "early");
    assert_read("early", &read, &records, &each(0));
    assert_eq!(committed, ends(&records), "auto-commit reached the end");
    let groups = BTreeMap::from([(
        "early",
        Group {
            start: each(0),
            committed,
        },
    )]);
    assert_books(&s, topic, &records, &groups, &[("early", cell(ALL, 0, 0))]);
}

/// Rule 1 at the end: a group at `latest` subscribes after the backlog,
/// reads what comes after and commits once at the end: the backlog skipped,
/// what it read consumed.
fn at_latest_after_a_backlog(client: &Client, read_args: impl Fn(i64) -> Value) {
    let s = setup();
    let (topic, base) = ("after-the-backlog", hour_ago());
    let mut records = client.backlog(&s.broker, topic, base);
    let result = client.run("read", &s.broker, topic, &read_args(base));
    records.extend(recs(&result["produced"]));
    let (read, committed) = group_of(&result, "late");
    assert_read("late", &read, &records, &each(BACKLOG));
    assert_eq!(committed, ends(&records), "the one commit at the end");
    let groups = BTreeMap::from([(
        "late",
        Group {
            start: each(BACKLOG),
            committed,
        },
    )]);
    assert_books(
        &s,
        topic,
        &records,
        &groups,
        &[("late", cell(MORE_ALL, BACKLOG_ALL, 0))],
    );
}

/// Rule 2: commits of K with no fetch consume [log start, K) and skip nothing.
fn commits_without_a_fetch(client: &Client, runs: &[(&str, &str, [i64; 2])]) {
    let s = setup();
    let (topic, base) = ("no-fetch", hour_ago());
    let records = client.backlog(&s.broker, topic, base);
    let mut groups = BTreeMap::new();
    let mut expect = Vec::new();
    for (mode, group, k) in runs {
        let offsets: BTreeMap<i32, i64> = (0..PARTITIONS).zip(*k).collect();
        let result = client.run(
            mode,
            &s.broker,
            topic,
            &json!({ "group": group, "offsets": offsets }),
        );
        let (read, committed) = group_of(&result, group);
        assert!(read.is_empty(), "{group} read records: {read:?}");
        assert_eq!(committed, offsets, "{group}: the committed offsets");
        let consumed: i64 = k.iter().sum();
        expect.push((*group, cell(consumed, 0, BACKLOG_ALL - consumed)));
        groups.insert(
            *group,
            Group {
                start: each(0),
                committed,
            },
        );
    }
    assert_books(&s, topic, &records, &groups, &expect);
}

/// Rule 3: "twin-a" and "twin-b" have one member each with one client id
/// (and host), both assigned both partitions before either fetches; "own"
/// has a client id of its own. All three start at latest after the backlog
/// (`args`) and commit once at the end. The twins' fetches tie to no group,
/// so their commits fall back to the no-fetch rule; "own" skips the backlog.
fn a_fetch_that_matches_two_groups(client: &Client, mut args: Value) {
    let s = setup();
    let (topic, base) = ("shared-client-id", hour_ago());
    let mut records = client.backlog(&s.broker, topic, base);
    args["more"] = more(base);
    let result = client.run("read", &s.broker, topic, &args);
    records.extend(recs(&result["produced"]));
    let mut groups = BTreeMap::new();
    for g in ["twin-a", "twin-b", "own"] {
        let (read, committed) = group_of(&result, g);
        assert_read(g, &read, &records, &each(BACKLOG));
        assert_eq!(committed, ends(&records), "{g}: the one commit at the end");
        let start = if g == "own" { BACKLOG } else { 0 };
        groups.insert(
            g,
            Group {
                start: each(start),
                committed,
            },
        );
    }
    assert_books(
        &s,
        topic,
        &records,
        &groups,
        &[
            ("twin-a", cell(ALL, 0, 0)),
            ("twin-b", cell(ALL, 0, 0)),
            ("own", cell(MORE_ALL, BACKLOG_ALL, 0)),
        ],
    );
}

// -------------------------------------------------------------------- tests

#[test]
fn confluent_kafka_group_from_the_beginning_with_auto_commit_skips_nothing() {
    let Some(client) = Client::confluent_kafka() else {
        return;
    };
    from_the_beginning_with_auto_commit(&client, |base| {
        json!({
            "members": [{"group": "early", "client_id": "early-reader"}],
            "reset": "earliest",
            "commit": "auto",
            "more": more(base),
        })
    });
}

#[test]
fn kafkajs_group_from_the_beginning_with_auto_commit_skips_nothing() {
    let Some(client) = Client::kafkajs() else {
        return;
    };
    from_the_beginning_with_auto_commit(&client, |base| {
        json!({
            "group": "early",
            "from_beginning": true,
            "commit": "auto",
            "more": more(base),
        })
    });
}

#[test]
fn confluent_kafka_group_at_latest_skips_the_backlog_and_consumes_what_it_read() {
    let Some(client) = Client::confluent_kafka() else {
        return;
    };
    at_latest_after_a_backlog(&client, |base| {
        json!({
            "members": [{"group": "late", "client_id": "late-reader"}],
            "reset": "latest",
            "commit": "end",
            "more": more(base),
        })
    });
}

#[test]
fn kafkajs_group_at_latest_skips_the_backlog_and_consumes_what_it_read() {
    let Some(client) = Client::kafkajs() else {
        return;
    };
    at_latest_after_a_backlog(&client, |base| {
        json!({
            "group": "late",
            "from_beginning": false,
            "commit": "end",
            "more": more(base),
        })
    });
}

#[test]
fn confluent_kafka_commits_without_a_fetch_consume_below_the_commit() {
    let Some(client) = Client::confluent_kafka() else {
        return;
    };
    // assign() and commit(offsets=...) with no poll; and the admin client's
    // alter_consumer_group_offsets.
    commits_without_a_fetch(
        &client,
        &[
            ("commit", "assigned", [150, 120]),
            ("alter", "altered", [60, BACKLOG]),
        ],
    );
}

#[test]
fn kafkajs_admin_set_offsets_consumes_below_the_commit() {
    let Some(client) = Client::kafkajs() else {
        return;
    };
    // setOffsets joins the group with the topic paused and commits by seek().
    commits_without_a_fetch(&client, &[("set-offsets", "set", [150, 120])]);
}

#[test]
fn confluent_kafka_fetch_that_matches_two_groups_ties_to_neither() {
    let Some(client) = Client::confluent_kafka() else {
        return;
    };
    a_fetch_that_matches_two_groups(
        &client,
        json!({
            "members": [
                {"group": "twin-a", "client_id": "shared-client"},
                {"group": "twin-b", "client_id": "shared-client"},
                {"group": "own", "client_id": "own-client"},
            ],
            "hold": true,
            "reset": "latest",
            "commit": "end",
        }),
    );
}

#[test]
fn kafkajs_fetch_that_matches_two_groups_ties_to_neither() {
    let Some(client) = Client::kafkajs() else {
        return;
    };
    // The twins keep kafkajs's default client id, "kafkajs".
    a_fetch_that_matches_two_groups(
        &client,
        json!({
            "groups": [
                {"group": "twin-a"},
                {"group": "twin-b"},
                {"group": "own", "client_id": "own-client"},
            ],
            "hold": true,
            "from_beginning": false,
            "commit": "end",
        }),
    );
}

#[test]
fn groups_that_share_a_client_id_on_different_topics_each_tie_their_fetches() {
    let Some(client) = Client::confluent_kafka() else {
        return;
    };
    let s = setup();
    let base = hour_ago();
    // Two applications with librdkafka's default client id ("rdkafka") on
    // one host, each with a group on a topic of its own: a fetch matches the
    // member assigned its partition, and only that one, so each group's
    // start at latest is tied and it skips its backlog.
    let mut records: BTreeMap<&str, Vec<Rec>> = BTreeMap::new();
    for topic in ["left", "right"] {
        records.insert(topic, client.backlog(&s.broker, topic, base));
    }
    let result = client.run(
        "read",
        &s.broker,
        "left",
        &json!({
            "members": [
                {"group": "left-reader", "topic": "left"},
                {"group": "right-reader", "topic": "right"},
            ],
            "hold": true,
            "reset": "latest",
            "commit": "end",
            "more": more(base),
        }),
    );
    for (topic, group) in [("left", "left-reader"), ("right", "right-reader")] {
        let records = records.get_mut(topic).unwrap();
        records.extend(recs_of(&result["produced"], topic));
        let (read, committed) = group_of(&result, group);
        assert_read(group, &read, records, &each(BACKLOG));
        assert_eq!(
            committed,
            ends(records),
            "{group}: the one commit at the end"
        );
        let groups = BTreeMap::from([(
            group,
            Group {
                start: each(BACKLOG),
                committed,
            },
        )]);
        assert_books(
            &s,
            topic,
            records,
            &groups,
            &[(group, cell(MORE_ALL, BACKLOG_ALL, 0))],
        );
    }
}

#[test]
fn a_static_member_that_leaves_and_rejoins_skips_nothing() {
    let Some(client) = Client::confluent_kafka() else {
        return;
    };
    let s = setup();
    let (topic, base) = ("static-member", hour_ago());
    let mut records = client.backlog(&s.broker, topic, base);
    // The first incarnation reads from the beginning to 120 and 80, commits
    // that and closes without leaving; the second rejoins as the same
    // instance and reads the rest, and what comes after.
    let result = client.run(
        "static",
        &s.broker,
        topic,
        &json!({
            "group": "static",
            "instance_id": "static-1",
            "client_id": "static-reader",
            "first": {"0": 120, "1": 80},
            "more": more(base),
        }),
    );
    records.extend(recs(&result["produced"]));
    let (read, committed) = group_of(&result, "static");
    assert_read("static", &read, &records, &each(0));
    assert_eq!(committed, ends(&records), "the rejoined member's commit");
    let groups = BTreeMap::from([(
        "static",
        Group {
            start: each(0),
            committed,
        },
    )]);
    assert_books(&s, topic, &records, &groups, &[("static", cell(ALL, 0, 0))]);
}

#[test]
fn a_group_that_rebalances_mid_read_skips_nothing() {
    let Some(client) = Client::confluent_kafka() else {
        return;
    };
    let s = setup();
    let (topic, base) = ("rebalanced", hour_ago());
    let mut records = client.backlog(&s.broker, topic, base);
    // Member a reads from the beginning to the middle of the backlog
    // (auto-commit); member b joins; after the rebalance each reads its
    // partition to the end, and what comes after.
    let result = client.run(
        "rebalance",
        &s.broker,
        topic,
        &json!({
            "group": "rebalancing",
            "half": {"0": BACKLOG / 2, "1": BACKLOG / 2},
            "more": more(base),
        }),
    );
    records.extend(recs(&result["produced"]));
    let (read, committed) = group_of(&result, "rebalancing");
    assert_read("rebalancing", &read, &records, &each(0));
    assert_eq!(committed, ends(&records), "auto-commit reached the end");
    let groups = BTreeMap::from([(
        "rebalancing",
        Group {
            start: each(0),
            committed,
        },
    )]);
    assert_books(
        &s,
        topic,
        &records,
        &groups,
        &[("rebalancing", cell(ALL, 0, 0))],
    );
}

#[test]
fn a_broker_killed_between_the_first_fetch_and_the_first_commit_keeps_the_start() {
    let Some(client) = Client::confluent_kafka() else {
        return;
    };
    let mut s = setup();
    let (topic, base) = ("killed-before-commit", hour_ago());
    let mut records = client.backlog(&s.broker, topic, base);
    // The group starts at latest after the backlog and reads what comes
    // after, without committing.
    let result = client.run(
        "read",
        &s.broker,
        topic,
        &json!({
            "members": [{"group": "restarted", "client_id": "restarted-reader"}],
            "reset": "latest",
            "commit": "none",
            "more": more(base),
        }),
    );
    records.extend(recs(&result["produced"]));
    let (read, committed) = group_of(&result, "restarted");
    assert_read("restarted", &read, &records, &each(BACKLOG));
    assert!(committed.is_empty(), "no commit yet: {committed:?}");

    // kill -9, restart on the same data folder, then the group commits what
    // it read (with no fetch: its start came from the fetches before).
    s.broker.restart();
    let offsets = ends(&records);
    let result = client.run(
        "commit",
        &s.broker,
        topic,
        &json!({ "group": "restarted", "offsets": offsets }),
    );
    let (_, committed) = group_of(&result, "restarted");
    assert_eq!(committed, offsets);
    let groups = BTreeMap::from([(
        "restarted",
        Group {
            start: each(BACKLOG),
            committed,
        },
    )]);
    assert_books(
        &s,
        topic,
        &records,
        &groups,
        &[("restarted", cell(MORE_ALL, BACKLOG_ALL, 0))],
    );
}
