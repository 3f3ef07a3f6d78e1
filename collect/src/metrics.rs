//! The collector's own `/metrics` (`tally_collect_*`, default 127.0.0.1:9402): whether
//! each cluster is up, requests and errors per API and broker, poll durations, what is
//! watched, and offsets read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tally_kafka::client::{Observer, Outcome};

/// Every series of the collector, with a `cluster` label.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// 1 while the last poll of the cluster succeeded.
    pub up: IntGaugeVec,
    /// Requests per API and broker.
    pub requests: IntCounterVec,
    /// Failed requests per API and broker (transport errors and error codes).
    pub request_errors: IntCounterVec,
    /// How long a lag poll took.
    pub poll_duration: HistogramVec,
    /// Partitions watched.
    pub partitions: IntGaugeVec,
    /// Groups watched.
    pub groups: IntGaugeVec,
    /// Committed offsets read.
    pub offsets_read: IntCounterVec,
    /// Records read to learn a committed offset's timestamp.
    pub record_reads: IntCounterVec,
    /// Last batches read where ListOffsets' end could not be trusted.
    pub end_reads: IntCounterVec,
    /// Lag-seconds timestamps served from the cache.
    pub record_cache_hits: IntCounterVec,
    /// Samples whose end offset was below the committed offset.
    pub inconsistent_offsets: IntCounterVec,
    /// Samples whose lag seconds were estimated.
    pub estimated: IntCounterVec,
    /// Records read from `__consumer_offsets`.
    pub offsets_topic_records: IntCounterVec,
    /// Compressed batches of `__consumer_offsets` passed over.
    pub offsets_topic_skipped_batches: IntCounterVec,
    /// Records of `__consumer_offsets` not yet read.
    pub offsets_topic_behind: IntGaugeVec,
    /// 1 while commit times come from `__consumer_offsets`.
    pub offsets_topic_read: IntGaugeVec,
    /// Records of the audited topics not yet read, per topic.
    pub tail_lag: IntGaugeVec,
    /// Records of the audited topics counted into the books.
    pub tail_records: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g =
        IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The series, registered (the names are constants: registering cannot fail).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let poll_duration = HistogramVec::new(
            HistogramOpts::new(
                "tally_collect_poll_duration_seconds",
                "How long one lag poll of a cluster took (offsets, record reads, sending)",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["cluster"],
        )
        .unwrap_or_else(|e| panic!("poll duration: {e}"));
        registry
            .register(Box::new(poll_duration.clone()))
            .unwrap_or_else(|e| panic!("poll duration: {e}"));
        Metrics {
            up: gauge(
                &registry,
                "tally_collect_up",
                "1 when the last poll of the cluster reached it, 0 when it could not",
                &["cluster"],
            ),
            tail_lag: gauge(
                &registry,
                "tally_collect_tail_lag_records",
                "Records of an audited topic between where the collector's reading is and the log end (the high watermark)",
                &["cluster", "topic"],
            ),
            tail_records: counter(
                &registry,
                "tally_collect_tail_records_total",
                "Records of the audited topics read and counted into the books",
                &["cluster"],
            ),
            requests: counter(
                &registry,
                "tally_collect_requests_total",
                "Kafka requests sent, per API and broker",
                &["cluster", "api", "broker"],
            ),
            request_errors: counter(
                &registry,
                "tally_collect_request_errors_total",
                "Kafka requests that failed (no answer, or an error code), per API and broker",
                &["cluster", "api", "broker"],
            ),
            poll_duration,
            partitions: gauge(
                &registry,
                "tally_collect_partitions",
                "Partitions watched",
                &["cluster"],
            ),
            groups: gauge(
                &registry,
                "tally_collect_groups",
                "Consumer groups watched",
                &["cluster"],
            ),
            offsets_read: counter(
                &registry,
                "tally_collect_offsets_read_total",
                "Committed offsets read (rate() gives offsets per second)",
                &["cluster"],
            ),
            record_reads: counter(
                &registry,
                "tally_collect_record_reads_total",
                "Records fetched to learn the timestamp at a committed offset",
                &["cluster"],
            ),
            end_reads: counter(
                &registry,
                "tally_collect_end_reads_total",
                "Fetches of a partition's last batch, where ListOffsets answered below a commit or below what a Fetch showed",
                &["cluster"],
            ),
            record_cache_hits: counter(
                &registry,
                "tally_collect_record_cache_hits_total",
                "Timestamps at committed offsets that did not move, served without a fetch",
                &["cluster"],
            ),
            inconsistent_offsets: counter(
                &registry,
                "tally_collect_inconsistent_offsets_total",
                "Lag samples whose end offset was below the committed offset (reported as 0 lag)",
                &["cluster"],
            ),
            estimated: counter(
                &registry,
                "tally_collect_estimated_samples_total",
                "Lag samples whose seconds were estimated (the record at the committed offset could not be read)",
                &["cluster"],
            ),
            offsets_topic_records: counter(
                &registry,
                "tally_collect_offsets_topic_records_total",
                "Records read from __consumer_offsets for commit times",
                &["cluster"],
            ),
            offsets_topic_skipped_batches: counter(
                &registry,
                "tally_collect_offsets_topic_skipped_batches_total",
                "Compressed batches of __consumer_offsets passed over (their commits are not seen)",
                &["cluster"],
            ),
            offsets_topic_behind: gauge(
                &registry,
                "tally_collect_offsets_topic_behind_records",
                "Records of __consumer_offsets not read yet (the first reads catch up over several polls)",
                &["cluster"],
            ),
            offsets_topic_read: gauge(
                &registry,
                "tally_collect_offsets_topic_read",
                "1 when commit times come from __consumer_offsets, 0 when from polling (no such topic, or not authorised)",
                &["cluster"],
            ),
            registry,
        }
    }

    /// The observer a cluster's client reports its requests to.
    pub fn observer(&self, cluster: &str) -> Arc<dyn Observer> {
        Arc::new(RequestObserver {
            cluster: cluster.to_owned(),
            requests: self.requests.clone(),
            errors: self.request_errors.clone(),
        })
    }

    /// The text exposition.
    pub fn render(&self) -> Vec<u8> {
        let families = self.registry.gather();
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

struct RequestObserver {
    cluster: String,
    requests: IntCounterVec,
    errors: IntCounterVec,
}

impl Observer for RequestObserver {
    fn request(&self, api: &'static str, broker: &str, outcome: Outcome, _elapsed: Duration) {
        let labels = [self.cluster.as_str(), api, broker];
        self.requests.with_label_values(&labels).inc();
        if !matches!(outcome, Outcome::Ok) {
            self.errors.with_label_values(&labels).inc();
        }
    }
}

/// Serves `GET /metrics` on `addr`; returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> std::io::Result<SocketAddr> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.render(),
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
