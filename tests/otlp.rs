//! `tally agent --otlp-endpoint`: a real OTLP/HTTP receiver (axum on
//! 127.0.0.1, decoding protobuf with `opentelemetry-proto`) gets the agent's
//! `tally_` metrics, and each exported value equals the same series on
//! `/metrics` for the same snapshot.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Agent, now_ms, post_ingest};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, number_data_point};
use prost::Message as _;
use serde_json::json;

type Received = Arc<Mutex<Vec<(String, ExportMetricsServiceRequest)>>>;

/// Starts the receiver on a free port; every decoded request (with its
/// content type) lands in the returned list.
fn receiver(runtime: &tokio::runtime::Runtime) -> (std::net::SocketAddr, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                let kind = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                match ExportMetricsServiceRequest::decode(body) {
                    Ok(req) => {
                        sink.lock().unwrap().push((kind, req));
                        (axum::http::StatusCode::OK, Vec::new())
                    }
                    Err(e) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        e.to_string().into_bytes(),
                    ),
                }
            },
        ),
    );
    runtime.spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

/// A series key: the name and its sorted labels.
type Key = (String, BTreeMap<String, String>);

fn key_text(k: &Key) -> String {
    let labels: Vec<String> = k.1.iter().map(|(n, v)| format!("{n}=\"{v}\"")).collect();
    format!("{}{{{}}}", k.0, labels.join(","))
}

/// The `tally_` series of a Prometheus text exposition.
fn parse_exposition(text: &str) -> BTreeMap<Key, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("tally_")) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap()),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Label values here hold no commas or quotes.
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap();
            map.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
        let v = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap(),
        };
        out.insert((name.to_owned(), map), v);
    }
    out
}

fn attrs(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                other => panic!("attribute {} is not a string: {other:?}", kv.key),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn number(p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> f64 {
    match p.value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => f64::NAN,
    }
}

/// An export request in the exposition's terms: histograms become their
/// `_bucket`, `_sum` and `_count` series. Also checks each metric's kind.
fn flatten(req: &ExportMetricsServiceRequest) -> BTreeMap<Key, f64> {
    let cumulative = AggregationTemporality::Cumulative as i32;
    let mut out = BTreeMap::new();
    for rm in &req.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                match m.data.as_ref().unwrap() {
                    Data::Gauge(g) => {
                        assert!(!m.name.ends_with("_total"), "{} is a gauge", m.name);
                        for p in &g.data_points {
                            out.insert((m.name.clone(), attrs(&p.attributes)), number(p));
                        }
                    }
                    Data::Sum(s) => {
                        assert!(
                            s.is_monotonic && s.aggregation_temporality == cumulative,
                            "{} is not a cumulative monotonic sum",
                            m.name
                        );
                        for p in &s.data_points {
                            out.insert((m.name.clone(), attrs(&p.attributes)), number(p));
                        }
                    }
                    Data::Histogram(h) => {
                        assert_eq!(h.aggregation_temporality, cumulative, "{}", m.name);
                        for p in &h.data_points {
                            let a = attrs(&p.attributes);
                            let mut below = 0;
                            for (i, n) in p.bucket_counts.iter().enumerate() {
                                below += n;
                                let le = p.explicit_bounds.get(i).map_or("+Inf".to_owned(), |b| {
                                    // As the exposition writes the bound.
                                    format!("{b}")
                                });
                                let mut la = a.clone();
                                la.insert("le".into(), le);
                                out.insert((format!("{}_bucket", m.name), la), below as f64);
                            }
                            out.insert(
                                (format!("{}_sum", m.name), a.clone()),
                                p.sum.unwrap_or(f64::NAN),
                            );
                            out.insert((format!("{}_count", m.name), a), p.count as f64);
                        }
                    }
                    other => panic!("{}: unexpected kind {other:?}", m.name),
                }
            }
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The agent's own series that change with every evaluation or render.
const PER_EVALUATION: [&str; 2] = [
    "tally_agent_evaluated_timestamp_seconds",
    "tally_agent_metrics_renders_total",
];

/// An exposition without [`PER_EVALUATION`]'s series.
fn settled(text: &str) -> String {
    text.lines()
        .filter(|l| {
            !PER_EVALUATION.iter().any(|name| {
                let comment = l
                    .strip_prefix("# HELP ")
                    .or_else(|| l.strip_prefix("# TYPE "));
                l.starts_with(name) || comment.is_some_and(|c| c.starts_with(name))
            })
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn otlp_export_carries_the_same_values_as_metrics() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, received) = receiver(&runtime);
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
            "100ms",
            "--otlp-endpoint",
            &format!("http://{addr}"),
            "--otlp-interval",
            "1",
        ],
    );

    // Closed buckets a minute ago, lag, latency, and one refused message.
    let bucket = (now_ms() - 60_000) / 1000 * 1000;
    let count = |tier: &str, partition: i32, records: u64, expired: u64| {
        json!({"tier": tier, "topic": "orders", "partition": partition, "bucket": bucket,
               "records": records, "bytes": records * 100, "no_timestamp": 0,
               "expired": expired, "skipped": 0})
    };
    let mut unaligned = count("broker", 0, 1, 0);
    unaligned["bucket"] = json!(bucket + 3);
    let batch = json!([
        {"v": 1, "type": "hello", "source": "broker-1", "cluster": "local",
         "tier_kinds": ["broker", "group"], "bucket_width_ms": 1000, "started_at_ms": 1},
        {"v": 1, "type": "counts", "seq": 1, "counts": [
            count("broker", 0, 400, 0), count("broker", 1, 800, 0),
            count("group:billing", 0, 350, 0), count("group:billing", 1, 800, 0),
            count("group:audit", 0, 300, 100), count("group:audit", 1, 800, 0)]},
        {"v": 1, "type": "lag", "seq": 2, "at_ms": now_ms(), "partitions": [
            {"group": "billing", "topic": "orders", "partition": 0, "committed": 350,
             "end_offset": 400, "start_offset": 0, "lag_records": 50, "lag_seconds": 3.25,
             "commit_at_ms": now_ms()},
            {"group": "billing", "topic": "orders", "partition": 1, "committed": 800,
             "end_offset": 800, "start_offset": 0, "lag_records": 0, "lag_seconds": 0.0,
             "commit_at_ms": now_ms()}]},
        {"v": 1, "type": "latency", "seq": 3, "histograms": [
            {"tier": "broker", "topic": "orders", "bounds_ms": [5, 250, 1000],
             "counts": [3, 9, 10], "count": 12, "sum_ms": 4567},
            {"tier": "group:billing", "topic": "orders", "bounds_ms": [5, 250, 1000],
             "counts": [0, 1, 4], "count": 4, "sum_ms": 2201}]},
        {"v": 1, "type": "counts", "seq": 4, "counts": [unaligned]}
    ]);
    let (status, body) = post_ingest(agent.addr, &batch);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"error\""),
        "the unaligned bucket was refused: {body}"
    );

    // Settled: the books show everything and /metrics stops changing (but for
    // the agent's own evaluation time and render count, which change with
    // every evaluation and every render; they are left out of the comparison).
    let mut before = agent.until(20, "the books on /metrics", |a| {
        let m = settled(&a.metrics());
        (m.contains("tally_audit_latency_seconds_count")
            && m.contains("tally_consumer_lag_seconds{")
            && m.contains("tally_audit_expired_records_total{"))
        .then_some(m)
    });
    let settling = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let again = settled(&agent.metrics());
        if again == before {
            break;
        }
        assert!(
            Instant::now() < settling,
            "/metrics still changes after 30 s:\n{again}"
        );
        before = again;
    }
    let expected = parse_exposition(&before);

    // The first export that starts after this /metrics read.
    let seen = received.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(15);
    let (content_type, export) = loop {
        if let Some(r) = received.lock().unwrap().get(seen + 1) {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no OTLP export within 15 s: {}",
            common::tail(&agent.log())
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        settled(&agent.metrics()),
        before,
        "the snapshot changed meanwhile"
    );
    assert_eq!(content_type, "application/x-protobuf");
    let service = export.resource_metrics[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.clone());
    assert!(
        format!("{service:?}").contains("tally-agent"),
        "{service:?}"
    );
    let mut got = flatten(&export);
    got.retain(|k, _| !PER_EVALUATION.contains(&k.0.as_str()));

    let mut problems = Vec::new();
    for (k, v) in &expected {
        match got.get(k) {
            Some(g) if close(*g, *v) => {}
            Some(g) => problems.push(format!("{}: OTLP {g}, /metrics {v}", key_text(k))),
            None => problems.push(format!("{}: not exported ({v} on /metrics)", key_text(k))),
        }
    }
    for k in got.keys().filter(|k| !expected.contains_key(*k)) {
        problems.push(format!("{}: exported, not on /metrics", key_text(k)));
    }
    assert!(
        problems.is_empty(),
        "{} of {} series differ:\n{}",
        problems.len(),
        expected.len(),
        problems.join("\n")
    );
    // What the comparison covered: every kind of series.
    for name in [
        "tally_audit_records_total",
        "tally_audit_completeness_ratio",
        "tally_audit_expired_records_total",
        "tally_audit_buckets",
        "tally_audit_latency_seconds_bucket",
        "tally_consumer_lag_seconds",
        "tally_consumer_group_status",
        "tally_ingest_errors_total",
        "tally_source_last_seen_timestamp_seconds",
    ] {
        assert!(
            expected.keys().any(|k| k.0 == name),
            "{name} missing from /metrics"
        );
    }
    let lag = &expected[&(
        "tally_consumer_lag_seconds".to_owned(),
        [
            ("cluster", "local"),
            ("group", "billing"),
            ("topic", "orders"),
            ("partition", "0"),
        ]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect(),
    )];
    assert_eq!(*lag, 3.25);
}

#[test]
fn a_bad_otlp_endpoint_is_refused_by_name() {
    let out = common::tally()
        .args([
            "agent",
            "--otlp-endpoint",
            "ftp://collector:4318",
            "--print-config",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"ftp://collector:4318\""), "{err}");
    let out = common::tally()
        .args([
            "agent",
            "--otlp-endpoint",
            "http://127.0.0.1:4318",
            "--otlp-interval",
            "5",
            "--print-config",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(
        toml.contains("otlp_endpoint = \"http://127.0.0.1:4318\""),
        "{toml}"
    );
    assert!(toml.contains("otlp_interval = \"5s\""), "{toml}");
}

#[test]
fn an_absent_receiver_is_logged_and_the_agent_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("http://127.0.0.1:{}", common::free_port());
    let agent = Agent::start(
        &dir.path().join("agent"),
        &["--otlp-endpoint", &nobody, "--otlp-interval", "500ms"],
    );
    agent.until(20, "a logged push failure", |a| {
        a.log().contains("OTLP push failed").then_some(())
    });
    assert_eq!(common::get(agent.addr, "/readyz", None).0, 200);
    assert!(agent.metrics().contains("tally_agent_ready 1"));
}
