//! End-to-end latency through `tally agent`: a `latency` message over the
//! real WebSocket ingest becomes the histogram `tally_audit_latency_seconds`
//! on /metrics, accepted by promtool, and survives a kill -9; and `tally
//! broker` measures it for records a real client produced and a group
//! committed.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::time::Duration;

use common::{Agent, Broker, CLIENT_TIMEOUT, client_scripts, now_ms};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

const FLAGS: &[&str] = &["--bucket-width", "1s", "--tick", "100ms"];

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(agent: &Agent) -> Socket {
    let url = format!("ws://{}/api/v1/ingest", agent.addr);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Socket, msg: &Value) {
    ws.send(Ws::Text(msg.to_string().into())).await.unwrap();
}

async fn recv(ws: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a reply within 10 s")
            .expect("connection open")
            .expect("a frame");
        if let Ws::Text(t) = frame {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn hello() -> Value {
    json!({"v": 1, "type": "hello", "source": "broker-1", "cluster": "local",
           "tier_kinds": ["broker", "group"], "bucket_width_ms": 1000, "started_at_ms": 1})
}

fn latency() -> Value {
    json!({"v": 1, "type": "latency", "seq": 1, "histograms": [
        {"tier": "broker", "topic": "orders", "bounds_ms": [5, 250, 1000],
         "counts": [3, 9, 10], "count": 12, "sum_ms": 4500},
        {"tier": "group:billing", "topic": "orders", "bounds_ms": [5, 250, 1000],
         "counts": [0, 1, 4], "count": 4, "sum_ms": 2200}]})
}

/// The lines of `name`'s series for `tier`, without comments.
fn series<'a>(text: &'a str, name: &str, tier: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("tier=\"{tier}\"")))
        .collect()
}

fn value(lines: &[&str], suffix_and_label: &str) -> Option<f64> {
    lines
        .iter()
        .find(|l| l.contains(suffix_and_label))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn check_histogram(text: &str) {
    const NAME: &str = "tally_audit_latency_seconds";
    assert!(text.contains(&format!("# TYPE {NAME} histogram")), "{text}");
    let broker = series(text, NAME, "broker");
    assert!(
        broker
            .iter()
            .all(|l| l.contains("cluster=\"local\"") && l.contains("topic=\"orders\"")),
        "{broker:?}"
    );
    assert_eq!(value(&broker, "le=\"0.005\""), Some(3.0), "{broker:?}");
    assert_eq!(value(&broker, "le=\"0.25\""), Some(9.0), "{broker:?}");
    assert_eq!(value(&broker, "le=\"1\""), Some(10.0), "{broker:?}");
    assert_eq!(value(&broker, "le=\"+Inf\""), Some(12.0), "{broker:?}");
    assert_eq!(value(&broker, "_sum{"), Some(4.5), "{broker:?}");
    assert_eq!(value(&broker, "_count{"), Some(12.0), "{broker:?}");
    let billing = series(text, NAME, "group:billing");
    assert_eq!(value(&billing, "le=\"1\""), Some(4.0), "{billing:?}");
    assert_eq!(value(&billing, "_sum{"), Some(2.2), "{billing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_becomes_a_prometheus_histogram_that_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let agent = Agent::start(&data, FLAGS);
    let mut ws = connect(&agent).await;
    send(&mut ws, &hello()).await;
    assert_eq!(recv(&mut ws).await["type"], "welcome");
    send(&mut ws, &latency()).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "ack", "seq": 1}));

    let text = agent.until(10, "the latency histogram", |a| {
        let m = a.metrics();
        m.contains("tally_audit_latency_seconds_count{")
            .then_some(m)
    });
    check_histogram(&text);

    common::promtool_check_metrics(&text);

    // The ack means it was stored: a kill -9 does not lose it.
    drop(ws);
    let addr = agent.addr;
    agent.kill9();
    let agent = Agent::start_at(addr, &data, FLAGS);
    let text = agent.until(10, "the latency histogram after a restart", |a| {
        let m = a.metrics();
        m.contains("tally_audit_latency_seconds_count{")
            .then_some(m)
    });
    check_histogram(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_histogram_is_refused_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), FLAGS);
    let mut ws = connect(&agent).await;
    send(&mut ws, &hello()).await;
    assert_eq!(recv(&mut ws).await["type"], "welcome");
    let mut bad = latency();
    bad["histograms"][0]["bounds_ms"] = json!([5, 1000, 250]);
    send(&mut ws, &bad).await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["seq"], 1);
    assert!(
        reply["error"].as_str().unwrap().contains("\"250\""),
        "{reply}"
    );
    assert!(!agent.metrics().contains("tally_audit_latency_seconds"));
}

#[test]
fn the_broker_measures_append_and_commit_latency_of_real_records() {
    let Some(python) = common::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &dir.path().join("agent"),
        &["--bucket-width", "60s", "--tick", "200ms"],
    );
    let broker = Broker::reporting_to(agent.addr, &["--bucket-width", "60s"]);
    // Stamped 200 s ago: appended and committed between 120 s and 300 s later.
    let ts = now_ms() - 200_000;
    let plan = json!({"create": {"partitions": 1},
        "batches": [{"partition": 0, "codec": "none", "timestamps": [ts, ts + 1, ts + 2, ts + 3]}]});
    common::run(
        std::process::Command::new(&python)
            .arg(client_scripts().join("reconcile_produce.py"))
            .args(["confluent-kafka", broker.addr(), "orders"]),
        plan.to_string().as_bytes(),
        CLIENT_TIMEOUT,
    )
    .accept("confluent-kafka producing", &broker);
    // The group's first commit (0) consumes nothing; the second covers 0..3.
    let steps = json!({"steps": [{"offsets": {"0": 0}, "pause_ms": 0},
                                 {"offsets": {"0": 3}, "pause_ms": 0}]});
    common::run(
        std::process::Command::new(&python)
            .arg(client_scripts().join("reconcile_group.py"))
            .args(["commit", broker.addr(), "orders", "billing"]),
        steps.to_string().as_bytes(),
        CLIENT_TIMEOUT,
    )
    .accept("group billing committing", &broker);

    let text = agent.until(30, "both latency histograms", |a| {
        let m = a.metrics();
        let billing = series(&m, "tally_audit_latency_seconds", "group:billing");
        (value(&billing, "_count{") == Some(3.0)).then_some(m)
    });
    let broker_tier = series(&text, "tally_audit_latency_seconds", "broker");
    assert_eq!(value(&broker_tier, "_count{"), Some(4.0), "{broker_tier:?}");
    assert_eq!(
        value(&broker_tier, "le=\"120\""),
        Some(0.0),
        "{broker_tier:?}"
    );
    assert_eq!(
        value(&broker_tier, "le=\"300\""),
        Some(4.0),
        "{broker_tier:?}"
    );
    let sum = value(&broker_tier, "_sum{").unwrap();
    assert!((200.0..300.0).contains(&(sum / 4.0)), "{broker_tier:?}");
    let billing = series(&text, "tally_audit_latency_seconds", "group:billing");
    assert_eq!(value(&billing, "le=\"120\""), Some(0.0), "{billing:?}");
    assert_eq!(value(&billing, "le=\"300\""), Some(3.0), "{billing:?}");
}
