//! What a collector sends the agent (DESIGN §5, §9), end to end: the built
//! `tally agent` on loopback, fed hello, lag, cluster and forget over its real
//! WebSocket ingest, read through its API and /metrics (checked with promtool).

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use common::{
    Agent, Socket, metric, now_ms, promtool_check_metrics, ws_recv as recv, ws_send as send,
};
use serde_json::{Value, json};

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

async fn connect(agent: &Agent) -> Socket {
    tokio_tungstenite::connect_async(format!("ws://{}/api/v1/ingest", agent.addr))
        .await
        .unwrap()
        .0
}

/// A collector's session: hello, answered by a welcome.
async fn collector(agent: &Agent) -> Socket {
    let mut ws = connect(agent).await;
    send(
        &mut ws,
        &json!({"v": 1, "type": "hello", "source": "collect-prod", "cluster": "prod",
                "tier_kinds": ["broker", "group"], "bucket_width_ms": 1000,
                "started_at_ms": now_ms()}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "welcome");
    ws
}

/// Sends `msg` and expects its ack.
async fn acked(ws: &mut Socket, msg: Value) {
    let seq = msg["seq"].clone();
    send(ws, &msg).await;
    let reply = recv(ws).await;
    assert_eq!(reply, json!({"type": "ack", "seq": seq}), "for {msg}");
}

fn sample(group: &str, topic: &str, partition: i32, lag: i64, seconds: f64) -> Value {
    json!({"group": group, "topic": topic, "partition": partition, "committed": 1000,
           "end_offset": 1000 + lag, "start_offset": 0, "lag_records": lag,
           "lag_seconds": seconds, "commit_at_ms": now_ms()})
}

fn groups(agent: &Agent) -> Vec<Value> {
    agent.json("/api/v1/groups")["groups"]
        .as_array()
        .unwrap()
        .clone()
}

fn group<'a>(all: &'a [Value], name: &str) -> Option<&'a Value> {
    all.iter().find(|g| g["group"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_from_a_collector_shows_estimates_sums_per_topic_and_goes_stale() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), FLAGS);
    let mut ws = collector(&agent).await;
    let mut estimated = sample("billing", "orders", 1, 30, 12.5);
    estimated["estimated"] = json!(true);
    estimated["stable_offset"] = json!(1020);
    let at = now_ms();
    let partitions = json!([
        sample("billing", "orders", 0, 20, 4.0),
        estimated,
        sample("billing", "payments", 0, 5, 1.0),
    ]);
    acked(
        &mut ws,
        json!({"v":1,"type":"lag","seq":1,"at_ms":at,"partitions":partitions}),
    )
    .await;
    // A second poll one second later: the interval is 1 s, so the lag is
    // stale 3 s after the last one.
    acked(
        &mut ws,
        json!({"v":1,"type":"lag","seq":2,"at_ms":at + 1000,"partitions":partitions}),
    )
    .await;

    let text = agent.until(10, "the lag on /metrics", |a| {
        let m = a.metrics();
        metric(&m, "tally_consumer_group_topic_lag_records", &[]).map(|_| m)
    });
    promtool_check_metrics(&text);
    let at_p = |p: &'static str| {
        [
            ("cluster", "prod"),
            ("group", "billing"),
            ("topic", "orders"),
            ("partition", p),
        ]
    };
    assert_eq!(
        metric(&text, "tally_consumer_lag_estimated", &at_p("1")),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "tally_consumer_lag_estimated", &at_p("0")),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "tally_consumer_lag_seconds", &at_p("1")),
        Some(12.5),
        "the lag series keep their labels"
    );
    assert_eq!(
        metric(&text, "tally_consumer_lag_stale", &at_p("0")),
        Some(0.0)
    );
    let topic = |t: &'static str| [("cluster", "prod"), ("group", "billing"), ("topic", t)];
    assert_eq!(
        metric(
            &text,
            "tally_consumer_group_topic_lag_records",
            &topic("orders")
        ),
        Some(50.0)
    );
    assert_eq!(
        metric(
            &text,
            "tally_consumer_group_topic_max_lag_seconds",
            &topic("orders")
        ),
        Some(12.5)
    );
    assert_eq!(
        metric(
            &text,
            "tally_consumer_group_topic_lag_records",
            &topic("payments")
        ),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &text,
            "tally_consumer_group_lag_records",
            &[("group", "billing")]
        ),
        Some(55.0)
    );

    let all = groups(&agent);
    let g = group(&all, "billing").unwrap();
    let p1 = g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["topic"] == "orders" && p["partition"] == 1)
        .unwrap();
    assert_eq!(
        (
            p1["estimated"].clone(),
            p1["stable_offset"].clone(),
            p1["stale"].clone()
        ),
        (json!(true), json!(1020), json!(false))
    );
    let p0 = &g["partitions"][0];
    assert!(
        p0.get("stable_offset").is_none(),
        "absent where not reported: {p0}"
    );
    assert_eq!(p0["estimated"], false);

    // The collector goes silent: after three intervals the lag is stale,
    // shown as such, and no longer exported as current.
    let stale = agent.until(15, "the lag to go stale", |a| {
        let all = groups(a);
        let g = group(&all, "billing").cloned()?;
        (g["stale"] == true).then_some(g)
    });
    assert!(
        stale["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["stale"] == true),
        "{stale}"
    );
    assert_eq!(
        stale["lag_records"], 0,
        "stale lag is not current lag: {stale}"
    );
    assert_eq!(
        stale["partitions"][0]["lag_records"], 20,
        "the last known value stays visible"
    );
    let text = agent.metrics();
    promtool_check_metrics(&text);
    assert_eq!(
        metric(&text, "tally_consumer_lag_stale", &at_p("0")),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "tally_consumer_lag_records", &at_p("0")),
        None,
        "never frozen as current"
    );
    assert_eq!(
        metric(
            &text,
            "tally_consumer_group_topic_lag_records",
            &topic("orders")
        ),
        None
    );
    assert_eq!(
        metric(
            &text,
            "tally_consumer_group_lag_records",
            &[("group", "billing")]
        ),
        None
    );

    // The next poll brings it back.
    acked(
        &mut ws,
        json!({"v":1,"type":"lag","seq":3,"at_ms":now_ms(),"partitions":partitions}),
    )
    .await;
    agent.until(10, "the lag to be current again", |a| {
        metric(&a.metrics(), "tally_consumer_lag_stale", &at_p("0")).filter(|v| *v == 0.0)
    });
}

fn cluster(seq: u64, orders_isr: u32, with_old: bool) -> Value {
    let mut topics = vec![json!({"topic": "orders", "partitions": [
        {"partition": 0, "leader": 1, "replicas": 3, "in_sync_replicas": 3},
        {"partition": 1, "leader": 2, "replicas": 3, "in_sync_replicas": orders_isr},
        {"partition": 2, "leader": -1, "replicas": 3, "in_sync_replicas": 0}]})];
    if with_old {
        topics.push(json!({"topic": "old", "partitions": [
            {"partition": 0, "leader": 3, "replicas": 1, "in_sync_replicas": 1}]}));
    }
    json!({"v": 1, "type": "cluster", "seq": seq, "at_ms": now_ms(), "brokers": 3,
           "topics": topics,
           "groups": [{"group": "billing", "state": "Stable", "members": 2},
                      {"group": "legacy", "state": "AwaitingSync", "members": 1},
                      {"group": "future", "state": "SomethingNewInKafka9", "members": 0}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_metadata_becomes_series_and_the_latest_state_wins() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), FLAGS);
    let mut ws = collector(&agent).await;
    acked(&mut ws, cluster(1, 2, true)).await;

    let text = agent.until(10, "the cluster series", |a| {
        let m = a.metrics();
        metric(&m, "tally_cluster_brokers", &[("cluster", "prod")]).map(|_| m)
    });
    promtool_check_metrics(&text);
    let c = [("cluster", "prod")];
    assert_eq!(metric(&text, "tally_cluster_brokers", &c), Some(3.0));
    assert_eq!(
        metric(&text, "tally_cluster_offline_partitions", &c),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "tally_topic_partitions",
            &[("cluster", "prod"), ("topic", "orders")]
        ),
        Some(3.0)
    );
    let p = |n: &'static str| [("cluster", "prod"), ("topic", "orders"), ("partition", n)];
    assert_eq!(metric(&text, "tally_partition_leader", &p("2")), Some(-1.0));
    assert_eq!(metric(&text, "tally_partition_leader", &p("1")), Some(2.0));
    assert_eq!(
        metric(&text, "tally_partition_replicas", &p("1")),
        Some(3.0)
    );
    assert_eq!(
        metric(&text, "tally_partition_in_sync_replicas", &p("1")),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "tally_partition_under_replicated", &p("1")),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "tally_partition_under_replicated", &p("0")),
        Some(0.0)
    );
    let g = |group: &'static str, state: &'static str| {
        [("cluster", "prod"), ("group", group), ("state", state)]
    };
    assert_eq!(
        metric(
            &text,
            "tally_consumer_group_members",
            &[("group", "billing")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "tally_consumer_group_state", &g("billing", "Stable")),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "tally_consumer_group_state", &g("billing", "Empty")),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "tally_consumer_group_state",
            &[("cluster", "prod"), ("group", "billing")]
        ),
        Some(1.0),
        "one-hot"
    );
    assert_eq!(
        metric(
            &text,
            "tally_consumer_group_state",
            &g("legacy", "CompletingRebalance")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "tally_consumer_group_state", &g("future", "Unknown")),
        Some(1.0)
    );
    assert_eq!(
        text.lines()
            .filter(
                |l| l.starts_with("tally_consumer_group_state{") && l.contains("group=\"billing\"")
            )
            .count(),
        8
    );

    let api = agent.json("/api/v1/clusters");
    let c0 = &api["clusters"][0];
    assert_eq!(
        (
            c0["cluster"].clone(),
            c0["source"].clone(),
            c0["brokers"].clone()
        ),
        (json!("prod"), json!("collect-prod"), json!(3))
    );
    assert_eq!(
        (
            c0["partitions"].clone(),
            c0["offline_partitions"].clone(),
            c0["under_replicated_partitions"].clone()
        ),
        (json!(4), json!(1), json!(2))
    );
    assert_eq!(
        c0["groups"][0],
        json!({"group": "billing", "state": "Stable", "members": 2})
    );

    // The next state replaces the last whole: "old" is gone, orders healed.
    acked(&mut ws, cluster(2, 3, false)).await;
    let text = agent.until(10, "the newer state", |a| {
        let m = a.metrics();
        metric(&m, "tally_topic_partitions", &[("topic", "old")])
            .is_none()
            .then_some(m)
    });
    promtool_check_metrics(&text);
    assert_eq!(
        metric(&text, "tally_partition_leader", &[("topic", "old")]),
        None
    );
    assert_eq!(
        metric(&text, "tally_partition_under_replicated", &p("1")),
        Some(0.0)
    );
    assert_eq!(
        agent.json("/api/v1/sources")["sources"][0]["messages"]["cluster"],
        2
    );
    assert_eq!(
        metric(
            &text,
            "tally_ingest_messages_total",
            &[("source", "collect-prod"), ("type", "cluster")]
        ),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_removes_a_groups_and_a_topics_series_with_no_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), FLAGS);
    let mut ws = collector(&agent).await;
    let partitions = json!([
        sample("billing", "orders", 0, 20, 4.0),
        sample("gone-group", "orders", 0, 900, 600.0),
        sample("audit", "old", 0, 7, 2.0),
        sample("audit", "orders", 0, 1, 0.5),
    ]);
    acked(
        &mut ws,
        json!({"v":1,"type":"lag","seq":1,"at_ms":now_ms(),"partitions":partitions}),
    )
    .await;
    acked(&mut ws, cluster(2, 3, true)).await;
    agent.until(10, "the lag", |a| (groups(a).len() == 3).then_some(()));

    acked(
        &mut ws,
        json!({"v":1,"type":"forget","seq":3,"groups":["gone-group","legacy"],"topics":["old"]}),
    )
    .await;
    let all = agent.until(10, "the forget", |a| {
        let all = groups(a);
        group(&all, "gone-group").is_none().then_some(all)
    });
    let audit = group(&all, "audit").unwrap();
    let topics: Vec<&Value> = audit["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["topic"])
        .collect();
    assert_eq!(
        topics,
        [&json!("orders")],
        "only the forgotten topic left the group"
    );
    assert_eq!(audit["status"], "ok");
    assert!(group(&all, "billing").is_some());

    let text = agent.metrics();
    promtool_check_metrics(&text);
    for name in [
        "tally_consumer_lag_records",
        "tally_consumer_group_lag_records",
        "tally_consumer_group_status",
        "tally_consumer_group_topic_lag_records",
        "tally_consumer_partition_status",
    ] {
        assert_eq!(
            metric(&text, name, &[("group", "gone-group")]),
            None,
            "{name}"
        );
    }
    assert_eq!(
        metric(&text, "tally_consumer_lag_records", &[("topic", "old")]),
        None
    );
    assert_eq!(
        metric(&text, "tally_topic_partitions", &[("topic", "old")]),
        None
    );
    assert_eq!(
        metric(
            &text,
            "tally_consumer_group_members",
            &[("group", "legacy")]
        ),
        None
    );
    assert_eq!(
        metric(
            &text,
            "tally_consumer_group_members",
            &[("group", "billing")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "tally_ingest_messages_total",
            &[("source", "collect-prod"), ("type", "forget")]
        ),
        Some(1.0)
    );
    // No alarm: nothing refused, no error status, no alert.
    assert_eq!(
        metric(&text, "tally_ingest_errors_total", &[("cluster", "prod")]).unwrap_or(0.0),
        0.0
    );
    assert!(all.iter().all(|g| g["status"] != "err"), "{all:?}");
    assert_eq!(agent.json("/api/v1/alerts")["alerts"], json!([]));

    // A forget with a bad name is refused naming it, and counted.
    send(
        &mut ws,
        &json!({"v":1,"type":"forget","seq":4,"topics":["no such/topic"]}),
    )
    .await;
    let reply = recv(&mut ws).await;
    assert_eq!(
        (
            reply["type"].clone(),
            reply["seq"].clone(),
            reply["reason"].clone()
        ),
        (json!("error"), json!(4), json!("bad_topic"))
    );
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("\"no such/topic\""),
        "{reply}"
    );

    // Forgotten lag stays forgotten after a restart.
    drop(ws);
    let data = agent.data_dir.clone();
    agent.kill9();
    let agent = Agent::start(&data, FLAGS);
    let all = groups(&agent);
    assert!(group(&all, "gone-group").is_none(), "{all:?}");
    assert!(group(&all, "billing").is_some());
}
