//! The initial rebalance delay and static members, through confluent-kafka
//! (tests/compat/groups_static.py): two static members that join a new group
//! a second apart get their partitions in one generation when the broker
//! waits `--group-initial-rebalance-delay` (3 s, Kafka's default), so the
//! first is never revoked; one that closes and comes back within its session
//! timeout gets its partitions again without a rebalance, and the other sees
//! nothing happen. With the delay at 0 the first member is given everything
//! and then revoked, which is what the delay is for.
//!
//! Under CI=true a missing client fails (see tests/compat.rs).

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::process::Command;

use serde_json::{Value, json};

use common::{Broker, client_scripts};

/// (who, what, partitions) of every event, in order.
fn events(python: &std::path::Path, broker: &Broker) -> Vec<(String, String, Value)> {
    let run = common::run(
        Command::new(python)
            .arg(client_scripts().join("groups_static.py"))
            .args([broker.addr(), "members"]),
        b"",
        common::CLIENT_TIMEOUT,
    );
    run.assert_success("groups_static.py", broker);
    run.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["who"].as_str().unwrap().to_owned(),
                e["what"].as_str().unwrap().to_owned(),
                e["partitions"].clone(),
            )
        })
        .collect()
}

fn event(who: &str, what: &str, partitions: Value) -> (String, String, Value) {
    (who.to_owned(), what.to_owned(), partitions)
}

#[test]
fn static_members_join_in_one_generation_and_rejoin_without_a_rebalance() {
    let Some(python) = common::python() else {
        return;
    };
    // Kafka's default delay, and none, side by side.
    let delayed = Broker::start_with(&["--no-metrics", "--agent", ""]);
    let at_once = Broker::start(&[]);
    let (with_delay, without) = std::thread::scope(|s| {
        let a = s.spawn(|| events(&python, &delayed));
        let b = s.spawn(|| events(&python, &at_once));
        (a.join().unwrap(), b.join().unwrap())
    });

    // Both members in the first generation: nobody revoked until "a" closes;
    // "a" comes back to the same partitions; "b" keeps its own throughout.
    let mut first_two = with_delay[..2].to_vec();
    first_two.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        first_two,
        [
            event("a", "assign", json!([0, 1])),
            event("b", "assign", json!([2, 3]))
        ],
        "{with_delay:?}\n{}",
        common::tail(&delayed.log())
    );
    assert_eq!(
        with_delay[2..5],
        [
            event("a", "revoke", json!([0, 1])),
            event("a", "assign", json!([0, 1])),
            event("a", "revoke", json!([0, 1])),
        ],
        "a closes, comes back to its partitions, closes again: {with_delay:?}"
    );
    assert_eq!(
        with_delay[5..],
        [event("b", "revoke", json!([2, 3]))],
        "b is revoked only when it closes: {with_delay:?}"
    );
    assert!(
        delayed
            .log()
            .contains("static member rejoined without a rebalance"),
        "{}",
        common::tail(&delayed.log())
    );

    // Without the delay, "a" is alone in the first generation and is revoked
    // when "b" joins.
    assert_eq!(
        without[..2],
        [
            event("a", "assign", json!([0, 1, 2, 3])),
            event("a", "revoke", json!([0, 1, 2, 3]))
        ],
        "{without:?}"
    );
    delayed.assert_quiet();
    at_once.assert_quiet();
}
