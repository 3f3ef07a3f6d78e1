//! `tally agent` end to end: the built binary on loopback, fed over its real
//! WebSocket and HTTP ingest, read through its API and /metrics, checked with
//! promtool, killed with SIGKILL and restarted.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::time::Duration;

use common::{
    Agent, Socket, get, metric, now_ms, past_bucket, post_ingest, request, ws_recv as recv,
    ws_send as send,
};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const FLAGS: &[&str] = &[
    "--bucket-width",
    "1s",
    "--grace",
    "1s",
    "--window",
    "10m",
    "--tick",
    "100ms",
];

async fn connect(
    agent: &Agent,
    token: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{}/api/v1/ingest", agent.addr).into_client_request()?;
    if let Some(t) = token {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// The welcome of an agent started with [`FLAGS`]: its width, and the range
/// of buckets it accepts, from now − retention (7 d) to now + 1 h (the grace
/// is shorter).
fn assert_welcome(welcome: &Value) {
    let keys: Vec<&String> = welcome.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["accept_from_ms", "accept_to_ms", "bucket_width_ms", "type"],
        "{welcome}"
    );
    assert_eq!(
        (
            welcome["type"].as_str(),
            welcome["bucket_width_ms"].as_u64()
        ),
        (Some("welcome"), Some(1000))
    );
    let now = now_ms();
    let from = welcome["accept_from_ms"].as_i64().unwrap();
    let to = welcome["accept_to_ms"].as_i64().unwrap();
    let week = 7 * 86_400_000;
    assert!(
        (now - week - 60_000..=now - week + 1_000).contains(&from),
        "{welcome}"
    );
    assert!(
        (now + 3_540_000..=now + 3_600_000).contains(&to),
        "{welcome}"
    );
    assert_eq!(from % 1000, 0, "aligned: {welcome}");
}

fn hello(source: &str, started: i64) -> Value {
    json!({"v": 1, "type": "hello", "source": source, "cluster": "local",
           "tier_kinds": ["broker", "group"], "bucket_width_ms": 1000, "started_at_ms": started})
}

fn count(tier: &str, partition: i32, bucket: i64, records: u64) -> Value {
    json!({"tier": tier, "topic": "orders", "partition": partition, "bucket": bucket,
           "records": records, "bytes": records * 100, "no_timestamp": 0, "expired": 0, "skipped": 0})
}

fn books(bucket: i64, seq: u64) -> Value {
    json!({"v": 1, "type": "counts", "seq": seq, "counts": [
        count("broker", 0, bucket, 400), count("broker", 1, bucket, 800),
        count("group:billing", 0, bucket, 350), count("group:billing", 1, bucket, 800)]})
}

fn lag(seq: u64) -> Value {
    json!({"v": 1, "type": "lag", "seq": seq, "at_ms": now_ms(), "partitions": [
        {"group": "billing", "topic": "orders", "partition": 0, "committed": 350, "end_offset": 400,
         "start_offset": 0, "lag_records": 50, "lag_seconds": 3.2, "commit_at_ms": now_ms()},
        {"group": "billing", "topic": "orders", "partition": 1, "committed": 800, "end_offset": 800,
         "start_offset": 0, "lag_records": 0, "lag_seconds": 0.0, "commit_at_ms": now_ms()}]})
}

fn tier(topics: &Value, tier: &str) -> Value {
    topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "orders")
        .map(|t| t["tiers"][tier].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_counts_and_lag_then_serves_the_books() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), FLAGS);
    let mut ws = connect(&agent, None).await.unwrap();
    send(&mut ws, &hello("broker-1", 1)).await;
    assert_welcome(&recv(&mut ws).await);
    let bucket = past_bucket();
    send(&mut ws, &books(bucket, 1)).await;
    send(&mut ws, &lag(2)).await;
    let mut acked = vec![
        recv(&mut ws).await["seq"].as_u64(),
        recv(&mut ws).await["seq"].as_u64(),
    ];
    acked.sort();
    assert_eq!(acked, vec![Some(1), Some(2)]);

    let topics = agent.until(10, "the books", |a| {
        let t = a.json("/api/v1/topics");
        (tier(&t, "group:billing")["records"] == 1150).then_some(t)
    });
    let broker = tier(&topics, "broker");
    assert_eq!(
        (broker["records"].as_u64(), broker["missing"].as_u64()),
        (Some(1200), Some(0))
    );
    let billing = tier(&topics, "group:billing");
    assert_eq!(billing["pending"], 50);
    assert_eq!(billing["expired"], 0);
    assert!((billing["completeness"].as_f64().unwrap() - 1150.0 / 1200.0).abs() < 1e-9);

    let buckets = agent.json("/api/v1/topics/orders/buckets?cluster=local");
    assert_eq!(buckets["width_ms"], 1000);
    let b = &buckets["buckets"][0];
    assert_eq!(b["bucket"], bucket);
    assert_eq!(b["tiers"]["broker"]["records"], 1200);
    assert_eq!(b["tiers"]["broker"]["status"], "complete");
    assert_eq!(b["tiers"]["group:billing"]["status"], "pending");
    assert_eq!(b["tiers"]["group:billing"]["pending"], 50);
    let (status, body) = get(agent.addr, "/api/v1/topics/nope/buckets", None);
    assert_eq!(status, 404);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert!(
        err["detail"].as_str().unwrap().contains("\"nope\""),
        "{body}"
    );

    let groups = agent.json("/api/v1/groups");
    let g = &groups["groups"][0];
    assert_eq!(
        (g["group"].as_str(), g["status"].as_str()),
        (Some("billing"), Some("ok"))
    );
    assert_eq!(g["lag_records"], 50);
    assert_eq!(g["max_lag_seconds"], 3.2);
    assert_eq!(g["partitions"][0]["end_offset"], 400);
    assert_eq!(agent.json("/api/v1/groups/billing")["lag_records"], 50);
    assert_eq!(get(agent.addr, "/api/v1/groups/nobody", None).0, 404);

    let sources = agent.json("/api/v1/sources");
    assert_eq!(sources["sources"][0]["source"], "broker-1");
    assert_eq!(sources["sources"][0]["connected"], true);
    assert_eq!(agent.json("/api/v1/alerts")["alerts"], json!([]));

    let text = agent.metrics();
    let m = |name, labels: &[(&str, &str)]| metric(&text, name, labels);
    assert_eq!(
        m(
            "tally_audit_records_total",
            &[("tier", "broker"), ("cluster", "local")]
        ),
        Some(1200.0)
    );
    assert_eq!(
        m("tally_audit_records_total", &[("tier", "group:billing")]),
        Some(1150.0)
    );
    assert_eq!(
        m("tally_audit_missing_records", &[("tier", "group:billing")]),
        Some(0.0)
    );
    assert_eq!(
        m(
            "tally_audit_buckets",
            &[("tier", "group:billing"), ("status", "pending")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m(
            "tally_consumer_lag_records",
            &[("group", "billing"), ("partition", "0")]
        ),
        Some(50.0)
    );
    assert_eq!(
        m(
            "tally_consumer_lag_seconds",
            &[("group", "billing"), ("partition", "0")]
        ),
        Some(3.2)
    );
    assert_eq!(
        m("tally_consumer_group_lag_records", &[("group", "billing")]),
        Some(50.0)
    );
    assert_eq!(
        m(
            "tally_consumer_group_status",
            &[("group", "billing"), ("status", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m(
            "tally_consumer_group_status",
            &[("group", "billing"), ("status", "err")]
        ),
        Some(0.0)
    );
    assert_eq!(
        m(
            "tally_partition_end_offset",
            &[("topic", "orders"), ("partition", "0")]
        ),
        Some(400.0)
    );
    assert_eq!(
        m(
            "tally_ingest_messages_total",
            &[("source", "broker-1"), ("type", "counts")]
        ),
        Some(1.0)
    );
    assert!(
        m(
            "tally_source_last_seen_timestamp_seconds",
            &[("source", "broker-1")]
        )
        .unwrap()
            > 1.7e9
    );

    common::promtool_check_metrics(&text);
}

/// `/metrics` costs what is scraped: the audit series are rendered when a
/// scrape asks for an evaluation not rendered yet, once however many scrapes
/// read it, and not at all while nobody scrapes; a scrape after a change
/// shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_rendered_per_scraped_evaluation_only() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), FLAGS);
    let scrape = || {
        let text = agent.metrics();
        let at = metric(&text, "tally_agent_evaluated_timestamp_seconds", &[])
            .expect("the evaluation time is exposed");
        let renders = metric(&text, "tally_agent_metrics_renders_total", &[])
            .expect("the renders are counted");
        (at, renders, text)
    };
    // Scrapes in quick succession: the same evaluation is rendered once.
    let mut seen: Vec<(f64, f64)> = Vec::new();
    for _ in 0..40 {
        let (at, renders, _) = scrape();
        seen.push((at, renders));
    }
    for pair in seen.windows(2) {
        let ((at0, r0), (at1, r1)) = (pair[0], pair[1]);
        if at0 == at1 {
            assert_eq!(r1, r0, "one evaluation rendered twice: {seen:?}");
        } else {
            assert!(at1 > at0, "{seen:?}");
            assert_eq!(r1, r0 + 1.0, "one render per new evaluation: {seen:?}");
        }
    }
    assert!(
        seen.windows(2).any(|pair| pair[0].0 == pair[1].0),
        "40 scrapes read one 100 ms evaluation at least twice: {seen:?}"
    );
    // Nobody scrapes for 20 evaluations: nothing is rendered meanwhile.
    let (at_before, renders_before, _) = scrape();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (at_after, renders_after, _) = scrape();
    assert!(at_after >= at_before + 1.5, "{at_before} → {at_after}");
    assert_eq!(renders_after, renders_before + 1.0);

    // A change shows at the next scrape of a later evaluation.
    let mut ws = connect(&agent, None).await.unwrap();
    send(&mut ws, &hello("broker-1", 1)).await;
    assert_welcome(&recv(&mut ws).await);
    send(&mut ws, &books(past_bucket(), 1)).await;
    assert_eq!(recv(&mut ws).await["seq"], 1);
    let text = agent.until(10, "the counts in /metrics", |_| {
        let (_, _, text) = scrape();
        metric(
            &text,
            "tally_audit_records_total",
            &[("tier", "broker"), ("cluster", "local")],
        )
        .is_some_and(|n| n == 1200.0)
        .then_some(text)
    });
    common::promtool_check_metrics(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_error_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &dir.path().join("agent"),
        &[
            FLAGS,
            &[
                "--max-series-per-source",
                "4",
                "--max-message-bytes",
                "4096",
            ],
        ]
        .concat(),
    );
    let mut ws = connect(&agent, None).await.unwrap();
    // Before the hello, messages are refused but the connection stays.
    send(&mut ws, &books(past_bucket(), 1)).await;
    let r = recv(&mut ws).await;
    assert_eq!(
        (r["type"].as_str(), r["reason"].as_str()),
        (Some("error"), Some("protocol"))
    );
    send(&mut ws, &hello("b", 1)).await;
    assert_eq!(recv(&mut ws).await["type"], "welcome");

    let bucket = past_bucket();
    let cases: Vec<(String, &str)> = vec![
        ("{\"v\":1,\"type\":".into(), "malformed"),
        (json!({"v": 2, "type": "counts", "seq": 3, "counts": []}).to_string(), "version"),
        (json!({"v": 1, "type": "gossip", "seq": 4}).to_string(), "unknown_type"),
        (
            json!({"v": 1, "type": "counts", "seq": 5, "counts": [count("broker", 0, bucket + 1, 1)]}).to_string(),
            "unaligned_bucket",
        ),
        (
            json!({"v": 1, "type": "counts", "seq": 6, "counts": [{"tier": "broker", "topic": "orders",
                "partition": 0, "bucket": bucket, "records": -3}]})
            .to_string(),
            "bad_count",
        ),
        (
            json!({"v": 1, "type": "counts", "seq": 7, "counts": [{"tier": "broker", "topic": "orders",
                "partition": 0, "bucket": bucket, "records": 1e300}]})
            .to_string(),
            "bad_count",
        ),
        (
            json!({"v": 1, "type": "counts", "seq": 8, "counts": [count("broker", 0, bucket, 1)],
                   "padding": "x".repeat(5000)})
            .to_string(),
            "oversize",
        ),
        (
            json!({"v": 1, "type": "counts", "seq": 9, "counts": (0..5).map(|p| count("broker", p, bucket, 1)).collect::<Vec<_>>()})
                .to_string(),
            "cardinality",
        ),
    ];
    for (text, reason) in &cases {
        ws.send(Ws::Text(text.clone().into())).await.unwrap();
        let r = recv(&mut ws).await;
        assert_eq!(r["type"], "error", "{reason}: {r}");
        assert_eq!(r["reason"], *reason, "{r}");
        assert!(!r["error"].as_str().unwrap().is_empty());
    }
    // The refused seq is named where it could be read.
    send(&mut ws, &json!({"v": 1, "type": "counts", "seq": 77, "counts": [count("broker", 0, bucket + 1, 1)]})).await;
    assert_eq!(recv(&mut ws).await["seq"], 77);
    // The same connection still takes a good message.
    send(
        &mut ws,
        &json!({"v": 1, "type": "counts", "seq": 10, "counts": [count("broker", 0, bucket, 7)]}),
    )
    .await;
    assert_eq!(recv(&mut ws).await, json!({"type": "ack", "seq": 10}));

    // A hello with another width is refused.
    let mut other = connect(&agent, None).await.unwrap();
    let mut h = hello("c", 1);
    h["bucket_width_ms"] = json!(60000);
    send(&mut other, &h).await;
    let r = recv(&mut other).await;
    assert_eq!(r["reason"], "width_mismatch");
    assert!(r["error"].as_str().unwrap().contains("\"60000\""), "{r}");

    let text = agent.until(5, "error counters", |a| {
        let t = a.metrics();
        (metric(
            &t,
            "tally_ingest_errors_total",
            &[("reason", "width_mismatch")],
        ) == Some(1.0))
        .then_some(t)
    });
    for (reason, n) in [
        ("malformed", 1.0),
        ("version", 1.0),
        ("unknown_type", 1.0),
        ("unaligned_bucket", 2.0),
        ("bad_count", 2.0),
        ("oversize", 1.0),
        ("cardinality", 1.0),
        ("protocol", 1.0),
    ] {
        assert_eq!(
            metric(&text, "tally_ingest_errors_total", &[("reason", reason)]),
            Some(n),
            "{reason}"
        );
    }
    agent.until(5, "the good message's count", |a| {
        (tier(&a.json("/api/v1/topics"), "broker")["records"] == 7).then_some(())
    });
    assert!(
        agent.log().contains("ingest refused"),
        "refusals are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keep_the_books_and_resends_do_not_double_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let bucket = past_bucket();
    let agent = Agent::start(&data, FLAGS);
    let mut ws = connect(&agent, None).await.unwrap();
    send(&mut ws, &hello("broker-1", 1)).await;
    recv(&mut ws).await;
    send(&mut ws, &books(bucket, 1)).await;
    send(&mut ws, &lag(2)).await;
    recv(&mut ws).await;
    recv(&mut ws).await;
    // Snapshots are evaluated on the agent's tick: wait for one that holds the
    // lag too (the last message), so that nothing acknowledged is still to come.
    agent.until(10, "the lag", |a| {
        (a.json("/api/v1/groups")["groups"][0]["lag_records"] == 50).then_some(())
    });
    let before = agent.until(10, "the books", |a| {
        let t = a.json("/api/v1/topics");
        (tier(&t, "group:billing")["records"] == 1150).then_some(t)
    });
    let buckets_before = agent.json("/api/v1/topics/orders/buckets");
    agent.kill9();

    let agent = Agent::start(&data, FLAGS);
    let after = agent.json("/api/v1/topics");
    assert_eq!(after, before);
    let buckets_after = agent.until(5, "bucket view", |a| {
        let b = a.json("/api/v1/topics/orders/buckets");
        (b["buckets"] == buckets_before["buckets"]).then_some(b)
    });
    assert_eq!(
        buckets_after["buckets"][0]["tiers"]["group:billing"]["pending"],
        50
    );
    assert_eq!(agent.json("/api/v1/groups")["groups"][0]["lag_records"], 50);
    let sources = agent.json("/api/v1/sources");
    assert_eq!(sources["sources"][0]["messages"]["counts"], 1);

    // The emitter did not see its ack before the kill, so it sends the same message again.
    let mut ws = connect(&agent, None).await.unwrap();
    send(&mut ws, &hello("broker-1", 1)).await;
    recv(&mut ws).await;
    send(&mut ws, &books(bucket, 1)).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "ack", "seq": 1}));
    std::thread::sleep(Duration::from_millis(300));
    let t = agent.json("/api/v1/topics");
    assert_eq!(tier(&t, "broker")["records"], 1200);
    assert_eq!(tier(&t, "group:billing")["records"], 1150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_ingest_and_the_api_but_not_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &dir.path().join("agent"),
        &[FLAGS, &["--token", "s3cret"]].concat(),
    );
    let (status, body) = get(agent.addr, "/api/v1/topics", None);
    assert_eq!(status, 401);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "unauthorized");
    assert_eq!(get(agent.addr, "/api/v1/topics", Some("wrong")).0, 401);
    assert_eq!(get(agent.addr, "/api/v1/topics", Some("s3cret")).0, 200);
    assert_eq!(get(agent.addr, "/metrics", None).0, 200);
    assert_eq!(get(agent.addr, "/healthz", None).0, 200);
    assert_eq!(get(agent.addr, "/readyz", None).0, 200);
    let refused = connect(&agent, None).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401),
        "{refused:?}"
    );
    let mut ws = connect(&agent, Some("s3cret")).await.unwrap();
    send(&mut ws, &hello("b", 1)).await;
    assert_eq!(recv(&mut ws).await["type"], "welcome");
    let post = json!([hello("p", 1)]).to_string();
    assert_eq!(
        request(agent.addr, "POST", "/api/v1/ingest", None, Some(&post))
            .unwrap()
            .0,
        401
    );
}

#[test]
fn post_ingest_answers_every_message_of_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), FLAGS);
    let bucket = past_bucket();
    let batch = json!([hello("poster", 1), books(bucket, 1),
        {"v": 1, "type": "counts", "seq": 2, "counts": [count("broker", 0, bucket + 3, 1)]}, lag(3)]);
    let (status, body) = post_ingest(agent.addr, &batch);
    assert_eq!(status, 200, "{body}");
    let replies: Value = serde_json::from_str(&body).unwrap();
    assert_welcome(&replies[0]);
    assert_eq!(replies[1], json!({"type": "ack", "seq": 1}));
    assert_eq!(
        (replies[2]["type"].as_str(), replies[2]["seq"].as_u64()),
        (Some("error"), Some(2))
    );
    assert_eq!(replies[3], json!({"type": "ack", "seq": 3}));
    agent.until(5, "posted counts", |a| {
        (tier(&a.json("/api/v1/topics"), "broker")["records"] == 1200).then_some(())
    });
    // A batch must open with a hello.
    let (_, body) = post_ingest(agent.addr, &json!([books(bucket, 9)]));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()[0]["reason"],
        "protocol"
    );
    let (status, body) = request(
        agent.addr,
        "POST",
        "/api/v1/ingest",
        None,
        Some("{not an array"),
    )
    .unwrap();
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "malformed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_a_snapshot_then_updates() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), FLAGS);
    let (mut feed, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/api/v1/stream", agent.addr))
            .await
            .unwrap();
    let first = recv(&mut feed).await;
    assert_eq!(first["type"], "snapshot");
    assert_eq!(first["snapshot"]["width_ms"], 1000);
    assert_eq!(first["snapshot"]["topics"], json!([]));
    let mut ws = connect(&agent, None).await.unwrap();
    send(&mut ws, &hello("b", 1)).await;
    recv(&mut ws).await;
    send(&mut ws, &books(past_bucket(), 1)).await;
    recv(&mut ws).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let u = recv(&mut feed).await;
        assert_eq!(u["type"], "update");
        assert!(u["at_ms"].as_i64().unwrap() > 0);
        if let Some(topics) = u.get("topics") {
            // A delta: the new topic upserted whole, nothing removed.
            assert_eq!(topics["upsert"][0]["topic"], "orders");
            assert_eq!(topics["upsert"][0]["tiers"]["broker"]["records"], 1200);
            assert!(topics.get("remove").is_none(), "{u}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no topics update");
    }
    // More counts for one tier: the next topics delta carries that topic
    // again, and the buckets delta only the bucket that changed.
    send(
        &mut ws,
        &json!({"v": 1, "type": "counts", "seq": 2, "counts": [
        count("broker", 0, past_bucket() - 5000, 7)]}),
    )
    .await;
    recv(&mut ws).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let u = recv(&mut feed).await;
        if let Some(topics) = u.get("topics") {
            assert_eq!(
                topics["upsert"][0]["tiers"]["broker"]["records"], 1207,
                "{u}"
            );
            let changed = &u["buckets"]["upsert"][0]["buckets"]["upsert"];
            assert_eq!(changed.as_array().unwrap().len(), 1, "{u}");
            assert_eq!(changed[0]["tiers"]["broker"]["records"], 7, "{u}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no second topics update"
        );
    }
}

#[test]
fn a_broken_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\nbuckt_width = \"10s\"\n").unwrap();
    let out = common::tally()
        .args(["agent", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("buckt_width") && err.contains("bad.toml"),
        "{err}"
    );

    let out = common::tally()
        .args(["agent", "--bucket-width", "ten"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"ten\""));

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "bucket_width = \"10s\"\nwindow = \"30m\"\n").unwrap();
    let out = common::tally()
        .args(["agent", "--print-config", "--window", "2h", "--config"])
        .arg(&good)
        .env("TALLY_AGENT_LISTEN", "127.0.0.1:9555")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("bucket_width = \"10s\""), "{printed}");
    assert!(
        printed.contains("window = \"2h\""),
        "flag wins over file: {printed}"
    );
    assert!(
        printed.contains("listen = \"127.0.0.1:9555\""),
        "env applies: {printed}"
    );
}

#[test]
fn help_documents_every_flag() {
    let out = common::tally().args(["agent", "--help"]).output().unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!("agent_help", String::from_utf8_lossy(&out.stdout));
    let out = common::tally().args(["demo", "--help"]).output().unwrap();
    insta::assert_snapshot!("demo_help", String::from_utf8_lossy(&out.stdout));
    let out = common::tally().args(["broker", "--help"]).output().unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!("broker_help", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &[]);
    let log = agent.until(10, "a log line", |a| {
        let log = a.log();
        log.contains("listening").then_some(log)
    });
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file: {log:?}"
    );
    assert!(log.contains(" INFO "), "plain level names: {log}");
}

/// The exposition at the largest size the suite affords passes `promtool
/// check metrics`: 400 topics of 5 partitions with their broker and group
/// books, and 100 groups each lagging on 25 topics (12,500 lag partitions,
/// about 100,000 series); a scrape with no new evaluation serves the same
/// text, and one after a change shows it.
#[test]
fn the_exposition_of_a_large_agent_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &dir.path().join("agent"),
        &[
            "--bucket-width",
            "1s",
            "--grace",
            "1s",
            "--window",
            "10m",
            "--tick",
            "1s",
        ],
    );
    let bucket = past_bucket();
    let topic = |t: u32| format!("orders-{t:03}");
    let mut counts = Vec::new();
    for t in 0..400 {
        for p in 0..5 {
            for tier in ["broker", "group:billing"] {
                counts.push(json!({"tier": tier, "topic": topic(t), "partition": p,
                    "bucket": bucket, "records": 100 + t, "bytes": 1000}));
            }
        }
    }
    let mut lag = Vec::new();
    for g in 0..100 {
        for t in 0..25 {
            for p in 0..5 {
                lag.push(
                    json!({"group": format!("group-{g:03}"), "topic": topic((g * 4 + t) % 400),
                    "partition": p, "committed": 90, "end_offset": 100 + t, "start_offset": 0,
                    "lag_records": 10 + t, "lag_seconds": 1.5, "commit_at_ms": now_ms()}),
                );
            }
        }
    }
    // Lag in messages of 2,500 partitions, each under the 1 MiB limit.
    let mut batch = vec![
        hello("big", 1),
        json!({"v": 1, "type": "counts", "seq": 1, "counts": counts}),
    ];
    for (i, part) in lag.chunks(2_500).enumerate() {
        batch.push(
            json!({"v": 1, "type": "lag", "seq": 2 + i, "at_ms": now_ms(), "partitions": part}),
        );
    }
    let batch = Value::Array(batch);
    let (status, body) = post_ingest(agent.addr, &batch);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("error"), "{body}");
    let text = agent.until(20, "every lag series in /metrics", |a| {
        let text = a.metrics();
        let lines = text
            .lines()
            .filter(|l| l.starts_with("tally_consumer_lag_records{"))
            .count();
        (lines == 12_500).then_some(text)
    });
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series > 90_000, "{series} series");
    common::promtool_check_metrics(&text);
    // No new evaluation between two scrapes: the same text, rendered once.
    let renders = |t: &str| metric(t, "tally_agent_metrics_renders_total", &[]).unwrap();
    let at = |t: &str| metric(t, "tally_agent_evaluated_timestamp_seconds", &[]).unwrap();
    let (first, second) = loop {
        let (a, b) = (agent.metrics(), agent.metrics());
        if at(&a) == at(&b) {
            break (a, b);
        }
    };
    assert_eq!(renders(&first), renders(&second));
    let body = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("tally_audit_") || l.starts_with("tally_consumer_"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(body(&first), body(&second), "the cached text");
}
