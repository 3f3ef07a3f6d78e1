//! The broker's own metrics (`tally_broker_*`), served on `--metrics-listen`.
//! Request durations go into HDR histograms and are exposed as Prometheus
//! histograms.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use kafka_protocol::messages::ApiKey;
use parking_lot::Mutex;
use prometheus::proto::{
    Bucket, Gauge, Histogram as PromHistogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::context::Broker;
use crate::{Error, Result};

/// Upper bounds of the exposed request-duration buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The broker's counters and histograms.
pub(crate) struct BrokerMetrics {
    registry: Registry,
    requests: IntCounterVec,
    durations: Mutex<BTreeMap<&'static str, (Histogram<u64>, f64)>>,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    records_in: IntCounterVec,
    records_out: IntCounterVec,
    /// Open client connections.
    pub(crate) connections: IntGauge,
    connections_closed: IntCounterVec,
    auth_failures: IntCounterVec,
}

fn api_name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::DescribeAcls => "DescribeAcls",
        ApiKey::CreateAcls => "CreateAcls",
        ApiKey::DeleteAcls => "DeleteAcls",
        ApiKey::DescribeLogDirs => "DescribeLogDirs",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::DescribeTransactions => "DescribeTransactions",
        ApiKey::ListTransactions => "ListTransactions",
        ApiKey::ConsumerGroupHeartbeat => "ConsumerGroupHeartbeat",
        ApiKey::ConsumerGroupDescribe => "ConsumerGroupDescribe",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        _ => "Other",
    }
}

impl BrokerMetrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(v.clone()))
                .expect("unique metric names");
            v
        };
        let requests = vec(
            "tally_broker_requests_total",
            "Requests handled, per API",
            &["api"],
        );
        let bytes_in = vec(
            "tally_broker_bytes_in_total",
            "Record bytes appended, per topic",
            &["topic"],
        );
        let bytes_out = vec(
            "tally_broker_bytes_out_total",
            "Record bytes fetched, per topic",
            &["topic"],
        );
        let records_in = vec(
            "tally_broker_records_in_total",
            "Records appended, per topic",
            &["topic"],
        );
        let records_out = vec(
            "tally_broker_records_out_total",
            "Records fetched, per topic",
            &["topic"],
        );
        let connections_closed = vec(
            "tally_broker_connections_closed_total",
            "Connections the broker closed or refused to protect the others, per reason: \
             idle, request_timeout, evicted (room made at max_connections), refused",
            &["reason"],
        );
        let auth_failures = vec(
            "tally_broker_auth_failures_total",
            "SASL logins refused (wrong password, unknown user, malformed exchange), per mechanism",
            &["mechanism"],
        );
        let connections = IntGauge::new("tally_broker_connections", "Open client connections")
            .expect("static metric definition");
        registry
            .register(Box::new(connections.clone()))
            .expect("unique metric names");
        BrokerMetrics {
            registry,
            requests,
            durations: Mutex::new(BTreeMap::new()),
            bytes_in,
            bytes_out,
            records_in,
            records_out,
            connections,
            connections_closed,
            auth_failures,
        }
    }

    /// A SASL login refused, with `mechanism`.
    pub(crate) fn auth_failed(&self, mechanism: &str) {
        self.auth_failures.with_label_values(&[mechanism]).inc();
    }

    /// A connection closed (or refused) by the broker, for `reason`.
    pub(crate) fn connection_closed(&self, reason: &str) {
        self.connections_closed.with_label_values(&[reason]).inc();
    }

    pub(crate) fn request(&self, key: ApiKey, took: Duration) {
        let name = api_name(key);
        self.requests.with_label_values(&[name]).inc();
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let mut d = self.durations.lock();
        let entry = d.entry(name).or_insert_with(|| {
            // 1 µs .. 1 h at 3 significant digits.
            (
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds"),
                0.0,
            )
        });
        let _ = entry.0.record(micros.min(3_600_000_000));
        entry.1 += took.as_secs_f64();
    }

    pub(crate) fn appended(&self, topic: &str, records: u64, bytes: u64) {
        self.records_in.with_label_values(&[topic]).inc_by(records);
        self.bytes_in.with_label_values(&[topic]).inc_by(bytes);
    }

    pub(crate) fn fetched(&self, topic: &str, records: u64, bytes: u64) {
        self.records_out.with_label_values(&[topic]).inc_by(records);
        self.bytes_out.with_label_values(&[topic]).inc_by(bytes);
    }

    pub(crate) fn forget_topic(&self, topic: &str) {
        for v in [
            &self.bytes_in,
            &self.bytes_out,
            &self.records_in,
            &self.records_out,
        ] {
            let _ = v.remove_label_values(&[topic]);
        }
    }

    fn durations_family(&self) -> MetricFamily {
        let mut mf = MetricFamily::default();
        mf.set_name("tally_broker_request_duration_seconds".into());
        mf.set_help("Request handling time per API (from an HDR histogram)".into());
        mf.set_field_type(MetricType::HISTOGRAM);
        for (api, (h, sum)) in self.durations.lock().iter() {
            let mut label = LabelPair::default();
            label.set_name("api".into());
            label.set_value((*api).into());
            let mut ph = PromHistogram::default();
            ph.set_sample_count(h.len());
            ph.set_sample_sum(*sum);
            ph.set_bucket(
                BUCKETS
                    .iter()
                    .map(|le| {
                        let mut b = Bucket::default();
                        b.set_upper_bound(*le);
                        b.set_cumulative_count(h.count_between(0, (le * 1e6) as u64));
                        b
                    })
                    .collect(),
            );
            let mut m = Metric::default();
            m.set_label(vec![label]);
            m.set_histogram(ph);
            mf.mut_metric().push(m);
        }
        mf
    }

    fn log_sizes(broker: &Broker) -> MetricFamily {
        let mut mf = MetricFamily::default();
        mf.set_name("tally_broker_log_size_bytes".into());
        mf.set_help("Size of each partition's log on disk".into());
        mf.set_field_type(MetricType::GAUGE);
        for topic in broker.topics.all() {
            for (p, part) in topic.partitions.iter().enumerate() {
                let size = part.log.lock().size_bytes();
                let labels = [("topic", topic.name.clone()), ("partition", p.to_string())]
                    .into_iter()
                    .map(|(k, v)| {
                        let mut l = LabelPair::default();
                        l.set_name(k.into());
                        l.set_value(v);
                        l
                    })
                    .collect();
                let mut g = Gauge::default();
                g.set_value(size as f64);
                let mut m = Metric::default();
                m.set_label(labels);
                m.set_gauge(g);
                mf.mut_metric().push(m);
            }
        }
        mf
    }

    /// The text exposition.
    pub(crate) fn render(&self, broker: &Broker) -> Vec<u8> {
        let mut families = self.registry.gather();
        families.push(self.durations_family());
        families.push(Self::log_sizes(broker));
        if let Some(stats) = broker.audit().and_then(|a| a.emitter_stats()) {
            families.extend(emitter_families(&stats));
        }
        families.retain(|f| !f.get_metric().is_empty());
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

fn plain(name: &str, help: &str, kind: MetricType, value: f64) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(name.into());
    mf.set_help(help.into());
    mf.set_field_type(kind);
    let mut m = Metric::default();
    if kind == MetricType::COUNTER {
        let mut c = prometheus::proto::Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    mf.mut_metric().push(m);
    mf
}

/// What the audit emitter buffered, resent and dropped.
fn emitter_families(s: &tally_audit::emitter::EmitterStats) -> Vec<MetricFamily> {
    vec![
        plain(
            "tally_broker_emitter_connected",
            "1 while the audit emitter has a session with the agent",
            MetricType::GAUGE,
            f64::from(u8::from(s.connected)),
        ),
        plain(
            "tally_broker_emitter_buffered_entries",
            "Audit count entries waiting to be sent or acknowledged",
            MetricType::GAUGE,
            s.buffered as f64,
        ),
        plain(
            "tally_broker_emitter_sent_messages_total",
            "Audit messages sent to the agent",
            MetricType::COUNTER,
            s.sent_messages as f64,
        ),
        plain(
            "tally_broker_emitter_resent_entries_total",
            "Audit count entries sent again after a reconnect",
            MetricType::COUNTER,
            s.resent_entries as f64,
        ),
        plain(
            "tally_broker_emitter_dropped_entries_total",
            "Audit count entries dropped because the buffer was full",
            MetricType::COUNTER,
            s.dropped_entries as f64,
        ),
        plain(
            "tally_broker_emitter_refused_entries_total",
            "Audit count entries the agent refused",
            MetricType::COUNTER,
            s.refused_entries as f64,
        ),
        plain(
            "tally_broker_emitter_out_of_range_entries_total",
            "Audit count entries not sent because their bucket lies outside the range the agent accepts",
            MetricType::COUNTER,
            s.out_of_range_entries as f64,
        ),
    ]
}

/// Serves `GET /metrics` on `addr`; returns the bound address.
pub(crate) async fn serve(addr: SocketAddr, broker: Arc<Broker>) -> Result<SocketAddr> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Io {
            what: "cannot listen for /metrics on",
            path: PathBuf::from(addr.to_string()),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Io {
        what: "metrics listener address",
        path: PathBuf::from(addr.to_string()),
        source,
    })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let b = broker.clone();
                async move {
                    let body = tokio::task::spawn_blocking(move || b.metrics.render(&b))
                        .await
                        .unwrap_or_default();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(bound)
}
