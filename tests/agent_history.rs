//! A day of closed buckets (DESIGN §8): the agent holds the window in memory
//! and leaves older buckets to its state database, from which the bucket
//! view answers exactly; a late count into a 20-hour-old bucket corrects its
//! history without doubling anything; and all of it survives kill -9.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use common::{Agent, get, metric, now_ms, post_ingest};
use serde_json::{Value, json};

const WIDTH: i64 = 60_000;
/// A day of one-minute buckets, ending at the current one.
const BUCKETS: i64 = 24 * 60;
/// The bucket, counted back from the newest, whose group falls 3 short.
const SHORT: i64 = 20 * 60;
/// The bucket whose group counts 5 twice.
const TWICE: i64 = 22 * 60;
const FLAGS: &[&str] = &[
    "--bucket-width",
    "1m",
    "--grace",
    "2m",
    "--window",
    "1h",
    "--tick",
    "100ms",
];

fn hello() -> Value {
    json!({"v": 1, "type": "hello", "source": "history", "cluster": "local",
           "tier_kinds": ["broker", "group"], "bucket_width_ms": WIDTH, "started_at_ms": 1})
}

fn count(tier: &str, partition: i32, bucket: i64, records: u64) -> Value {
    json!({"tier": tier, "topic": "orders", "partition": partition, "bucket": bucket,
           "records": records, "bytes": records * 10})
}

/// The broker's records of partition `p` in the bucket `back` buckets before the newest.
fn broker_records(back: i64, p: i32) -> u64 {
    10 + (back % 7) as u64 + p as u64
}

/// What the group consumed there: all of it, but 3 short in SHORT (partition
/// 0) and 5 twice in TWICE (partition 1).
fn group_records(back: i64, p: i32) -> u64 {
    match (back, p) {
        (SHORT, 0) => broker_records(back, p) - 3,
        (TWICE, 1) => broker_records(back, p) + 5,
        _ => broker_records(back, p),
    }
}

fn bucket_of(newest: i64, back: i64) -> i64 {
    newest - back * WIDTH
}

fn buckets(agent: &Agent, from: i64, to: i64) -> Vec<Value> {
    let view = agent.json(&format!(
        "/api/v1/topics/orders/buckets?from={from}&to={to}"
    ));
    view["buckets"].as_array().unwrap().clone()
}

fn tier_of(bucket: &Value, tier: &str) -> Value {
    bucket["tiers"][tier].clone()
}

fn totals(agent: &Agent) -> (u64, u64) {
    let topics = agent.json("/api/v1/topics");
    let t = &topics["topics"][0]["tiers"];
    (
        t["broker"]["records"].as_u64().unwrap(),
        t["group:billing"]["records"].as_u64().unwrap(),
    )
}

/// What a user checks of the stored day: every bucket before the window is
/// there with its exact counts, and judged.
fn assert_day(agent: &Agent, newest: i64, short_status: &str, short_group: u64) {
    let window_start = now_ms() - 3_600_000;
    let from = bucket_of(newest, BUCKETS - 1);
    let to = window_start - 2 * WIDTH;
    let stored = buckets(agent, from, to);
    let expected = (to - from + WIDTH - 1) / WIDTH;
    assert_eq!(stored.len() as i64, expected, "one entry per stored bucket");
    for b in &stored {
        let back = (newest - b["bucket"].as_i64().unwrap()) / WIDTH;
        let broker = tier_of(b, "broker");
        let group = tier_of(b, "group:billing");
        assert_eq!(
            broker["records"].as_u64().unwrap(),
            broker_records(back, 0) + broker_records(back, 1),
            "broker records of the bucket {back} minutes back"
        );
        let (status, records) = match back {
            SHORT => (short_status, short_group),
            TWICE => ("excess", group_records(back, 0) + group_records(back, 1)),
            _ => ("complete", group_records(back, 0) + group_records(back, 1)),
        };
        assert_eq!(
            group["status"], status,
            "group in the bucket {back} back: {b}"
        );
        assert_eq!(group["records"].as_u64().unwrap(), records, "{b}");
        if back == TWICE {
            assert_eq!(group["excess"], 5, "{b}");
        }
    }
}

#[test]
fn a_day_of_closed_buckets_is_served_from_storage_takes_a_late_count_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let agent = Agent::start(&data, FLAGS);
    let newest = now_ms().div_euclid(WIDTH) * WIDTH;
    // The day, oldest first, 60 buckets to a message.
    let mut batch = vec![hello()];
    let mut seq = 0;
    for chunk in (0..BUCKETS).rev().collect::<Vec<_>>().chunks(60) {
        seq += 1;
        let mut counts = Vec::new();
        for &back in chunk {
            let bucket = bucket_of(newest, back);
            for p in 0..2 {
                counts.push(count("broker", p, bucket, broker_records(back, p)));
                counts.push(count("group:billing", p, bucket, group_records(back, p)));
            }
        }
        batch.push(json!({"v": 1, "type": "counts", "seq": seq, "counts": counts}));
    }
    let (status, body) = post_ingest(agent.addr, &Value::Array(batch));
    assert_eq!(status, 200, "{body}");
    let replies: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert!(
        replies[1..].iter().all(|r| r["type"] == "ack"),
        "every message acknowledged: {body}"
    );
    let broker_total: u64 = (0..BUCKETS)
        .map(|b| broker_records(b, 0) + broker_records(b, 1))
        .sum();
    let group_total: u64 = (0..BUCKETS)
        .map(|b| group_records(b, 0) + group_records(b, 1))
        .sum();
    agent.until(10, "the day's totals", |a| {
        (totals(a) == (broker_total, group_total)).then_some(())
    });
    let short = bucket_of(newest, SHORT);
    let short_full = broker_records(SHORT, 0) + broker_records(SHORT, 1);
    // The 20-hour-old bucket was closed when its counts came: judged then.
    agent.until(10, "the short bucket judged", |a| {
        let b = buckets(a, short, short + WIDTH);
        (tier_of(&b[0], "group:billing")["status"] == "pending").then_some(())
    });
    assert_day(&agent, newest, "pending", short_full - 3);
    // Memory holds the window (about 63 buckets × 4 cells), not the day
    // (5,760 cells).
    let cells = metric(&agent.metrics(), "tally_ledger_cells", &[]).unwrap();
    assert!(cells <= 64.0 * 4.0, "cells in memory: {cells}");

    // The late count: the group catches up on partition 0.
    let late = json!([hello(), {"v": 1, "type": "counts", "seq": seq + 1, "counts": [
        count("group:billing", 0, short, broker_records(SHORT, 0))]}]);
    let (status, body) = post_ingest(agent.addr, &late);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""type":"ack""#), "{body}");
    // Exact at once (the acknowledged count is stored), and the history says late.
    agent.until(10, "the late bucket judged again", |a| {
        let b = buckets(a, short, short + WIDTH);
        (tier_of(&b[0], "group:billing")["status"] == "late").then_some(())
    });
    // The totals follow at the next evaluation: +3, not the count again.
    agent.until(10, "the late count in the totals", |a| {
        (totals(a) == (broker_total, group_total + 3)).then_some(())
    });
    assert_day(&agent, newest, "late", short_full);
    // A resend of the same count changes nothing.
    let (status, _) = post_ingest(agent.addr, &late);
    assert_eq!(status, 200);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(totals(&agent), (broker_total, group_total + 3));

    let addr = agent.addr;
    agent.kill9();
    let agent = Agent::start_at(addr, &data, FLAGS);
    assert_eq!(totals(&agent), (broker_total, group_total + 3));
    assert_day(&agent, newest, "late", short_full);
    // Resends right after the start (the window's cells may still be being
    // read in) are recognised: the newest bucket's counts and the late one.
    let newest_counts: Vec<Value> = (0..2)
        .flat_map(|p| {
            [
                count("group:billing", p, newest, group_records(0, p)),
                count("broker", p, newest, broker_records(0, p)),
            ]
        })
        .collect();
    let resend = json!([hello(), {"v": 1, "type": "counts", "seq": 1, "counts": newest_counts},
        late[1].clone()]);
    let (status, body) = post_ingest(agent.addr, &resend);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches(r#""type":"ack""#).count(), 2, "{body}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(totals(&agent), (broker_total, group_total + 3));
    let cells = metric(&agent.metrics(), "tally_ledger_cells", &[]).unwrap();
    assert!(
        cells <= 64.0 * 4.0,
        "a restart loads the window only: {cells} cells"
    );
    // An unknown topic beyond the window is a clear 404.
    let (status, body) = get(
        agent.addr,
        &format!("/api/v1/topics/nope/buckets?from={short}"),
        None,
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nope"), "{body}");
}
