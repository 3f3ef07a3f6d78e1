//! The KIP-848 consumer group protocol on `tally broker`, through librdkafka's
//! `group.protocol=consumer` (tests/compat/groups_kip848.py), for both server
//! assignors: three members get disjoint assignments that cover the topic; one
//! leaves and its partitions move to the two others; a classic group reads
//! beside it, and ListGroups and DescribeGroups (ConsumerGroupDescribe for the
//! new kind) show both with their types. The audit treats the new kind as it
//! does the classic one: the group's books balance in the broker's own view
//! (cluster `local`) and in a collector's of the same broker (cluster `copy`),
//! and its lag reaches the agent.
//!
//! Under CI=true a missing client fails (see tests/compat.rs).

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::{Value, json};

use common::collector::Collector;
use common::{Agent, Broker, client_scripts};

fn run(python: &std::path::Path, broker: &Broker, topic: &str, assignor: &str) -> Value {
    let run = common::run(
        Command::new(python)
            .arg(client_scripts().join("groups_kip848.py"))
            .args([broker.addr(), topic, assignor]),
        b"",
        common::CLIENT_TIMEOUT,
    );
    run.assert_success("groups_kip848.py", broker);
    run.json()
}

/// The members' partitions: disjoint, together 0-5.
fn covering(out: &Value, phase: &str, members: &[&str]) -> Vec<Vec<i64>> {
    let got: Vec<Vec<i64>> = members
        .iter()
        .map(|m| {
            out[phase][m]
                .as_array()
                .unwrap_or_else(|| panic!("{phase}: {m} has no assignment: {out}"))
                .iter()
                .map(|p| p.as_i64().unwrap())
                .collect()
        })
        .collect();
    let mut all: Vec<i64> = got.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..6).collect::<Vec<_>>(),
        "{phase}: disjoint and whole: {out}"
    );
    assert!(got.iter().all(|g| !g.is_empty()), "{phase}: {out}");
    got
}

#[test]
fn three_members_share_a_topic_and_one_leaving_moves_its_partitions() {
    let Some(python) = common::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &dir.path().join("agent"),
        &[
            "--bucket-width",
            "60s",
            "--tick",
            "200ms",
            "--window",
            "24h",
        ],
    );
    let broker = Broker::reporting_to(agent.addr, &["--bucket-width", "60s"]);
    let other = Broker::start(&[]);
    let copy = Collector::copy_of(&agent, &broker, "k848");
    let (uniform, range) = std::thread::scope(|s| {
        let u = s.spawn(|| run(&python, &broker, "k848", "uniform"));
        let r = s.spawn(|| run(&python, &other, "r848", "range"));
        (u.join().unwrap(), r.join().unwrap())
    });

    for out in [&uniform, &range] {
        covering(out, "three", &["m1", "m2", "m3"]);
        covering(out, "two", &["m1", "m2"]);
        // Both kinds listed and described, with their types.
        assert_eq!(
            out["listed"],
            json!([
                ["classic", "CLASSIC", "STABLE"],
                ["kip848", "CONSUMER", "STABLE"]
            ]),
            "{out}"
        );
        assert_eq!(out["described"]["kip848"]["type"], "CONSUMER", "{out}");
        assert_eq!(out["described"]["classic"]["type"], "CLASSIC", "{out}");
        let members = out["described"]["kip848"]["members"].as_array().unwrap();
        let clients: BTreeSet<&str> = members.iter().map(|m| m[0].as_str().unwrap()).collect();
        assert_eq!(clients, BTreeSet::from(["client-m1", "client-m2"]), "{out}");
        // Every record read, and committed: 10 per partition.
        let want: BTreeSet<String> = (0..60).map(|i| format!("r-{i}")).collect();
        let read: BTreeSet<String> = serde_json::from_value(out["read"].clone()).unwrap();
        assert_eq!(read, want, "{out}");
        assert_eq!(
            out["committed"],
            json!({"0": 10, "1": 10, "2": 10, "3": 10, "4": 10, "5": 10}),
            "{out}"
        );
    }
    // The uniform assignor is sticky: when m3 leaves, only its partitions
    // move; m1 and m2 keep theirs.
    let three = covering(&uniform, "three", &["m1", "m2", "m3"]);
    let two = covering(&uniform, "two", &["m1", "m2"]);
    for (before, after) in three.iter().zip(&two) {
        assert!(
            before.iter().all(|p| after.contains(p)),
            "a member that stayed lost a partition: {three:?} then {two:?}"
        );
    }
    // The range assignor gives each member one contiguous stretch.
    for m in covering(&range, "three", &["m1", "m2", "m3"]) {
        assert!(
            m.windows(2).all(|w| w[1] == w[0] + 1),
            "range gives contiguous partitions: {range}"
        );
    }

    // The books: the KIP-848 group consumed all 60 records, in the broker's
    // own view and in the collector's.
    for cluster in ["local", "copy"] {
        let t = agent.until(
            60,
            &format!("{cluster}: group:kip848 consumed all 60"),
            |a| {
                let topics = a.json("/api/v1/topics");
                let t = topics["topics"]
                    .as_array()?
                    .iter()
                    .find(|t| t["cluster"] == cluster && t["topic"] == "k848")?
                    .clone();
                (t["tiers"]["group:kip848"]["records"] == 60).then_some(t)
            },
        );
        let g = &t["tiers"]["group:kip848"];
        assert_eq!(t["tiers"]["broker"]["records"], 60, "{t}");
        assert_eq!(
            (
                g["pending"].as_u64().unwrap_or(0),
                g["skipped"].as_u64().unwrap_or(0),
                g["expired"].as_u64().unwrap_or(0)
            ),
            (0, 0, 0),
            "{cluster}: {t}"
        );
    }
    // Its lag, from the broker and from the collector.
    for cluster in ["local", "copy"] {
        let lag = agent.until(30, &format!("{cluster}: the lag of kip848"), |a| {
            let path = format!("/api/v1/groups/kip848?cluster={cluster}");
            let (status, body) = common::get(a.addr, &path, None);
            let lag: Value = serde_json::from_str(&body).ok()?;
            (status == 200 && lag["lag_records"] == 0).then_some(lag)
        });
        assert_eq!(lag["lag_records"], 0, "{lag}");
    }
    drop(copy);
    broker.assert_quiet();
    other.assert_quiet();
}
