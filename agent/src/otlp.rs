//! OTLP/HTTP (protobuf) export of the agent's metrics, for users who run
//! OpenTelemetry instead of (or beside) Prometheus.
//!
//! The values are the ones `/metrics` shows: the same families, built by
//! [`crate::metrics::snapshot_families`] from the latest snapshot plus the
//! agent's live counters, with the same names and labels (as attributes).
//! Counters and gauges are observable instruments whose callbacks read those
//! families when the SDK's periodic reader collects.
//!
//! OpenTelemetry has no observable histogram, and the SDK's histogram takes
//! one measurement at a time, while the snapshot holds already aggregated
//! buckets over millions of records. So the latency histogram joins the
//! export at the HTTP client: [`HistogramClient`] decodes each protobuf
//! request the SDK's exporter sends, adds the histogram of the very snapshot
//! the callbacks read, and sends it on with the reqwest client.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1 as proto_common;
use opentelemetry_proto::tonic::metrics::v1 as proto;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{Instrument, PeriodicReader, SdkMeterProvider, Stream};
use prometheus::proto::{MetricFamily, MetricType};
use prost::Message as _;
use tally_audit::Snapshot;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::AgentMetrics;
use crate::{Error, Result};

/// Series per instrument before the SDK folds the rest into an overflow
/// series; above the SDK's default of 2000 because the agent has a lag
/// series per (group, topic, partition).
const CARDINALITY_LIMIT: usize = 1_000_000;

/// The metrics endpoint for a user's `url`: a URL with no path gets the
/// standard `/v1/metrics`; a URL with a path is used as it is. `https`
/// trusts the system's root certificates.
pub fn endpoint(url: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::Config(format!(
            "otlp_endpoint \"{url}\" {why}: expected an http or https URL such as http://127.0.0.1:4318 or https://collector:4318/v1/metrics"
        ))
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("does not use http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    let mut out = parsed;
    if out.path() == "/" || out.path().is_empty() {
        out.set_path("/v1/metrics");
    }
    Ok(out.to_string())
}

/// The instrumentation scope of everything the agent exports.
const SCOPE: &str = "tally-agent";

/// A running OTLP export; stop it with [`OtlpExport::shutdown`], which
/// pushes once more.
pub struct OtlpExport {
    provider: SdkMeterProvider,
    register: tokio::task::JoinHandle<()>,
}

impl OtlpExport {
    /// Starts pushing every `interval` to `url` (see [`endpoint`]) what the
    /// latest snapshot of `snapshots` and the live counters of `metrics` say.
    pub fn start(
        url: &str,
        interval: Duration,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        metrics: AgentMetrics,
    ) -> Result<OtlpExport> {
        let url = endpoint(url)?;
        let timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(30));
        let source = Arc::new(Families {
            snapshots,
            metrics,
            cache: Mutex::new(None),
            collected: Mutex::new(None),
        });
        let client = HistogramClient::new(timeout, source.clone())?;
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(timeout)
            .build()
            .map_err(|e| Error::Config(format!("otlp_endpoint \"{url}\": {e}")))?;
        let reader = PeriodicReader::builder(exporter)
            .with_interval(interval)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(Resource::builder().with_service_name(SCOPE).build())
            .with_reader(reader)
            .with_view(view)
            .build();
        let meter = provider.meter(SCOPE);
        let register = tokio::spawn(register(meter, source, interval));
        info!(endpoint = %url, interval = ?interval, "pushing metrics over OTLP/HTTP");
        Ok(OtlpExport { provider, register })
    }

    /// Stops registering new families, pushes what there is once more, and stops.
    pub async fn shutdown(self) {
        self.register.abort();
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            warn!("OTLP export did not shut down cleanly: {e}");
        }
    }
}

/// Every instrument may have many series.
fn view(_: &Instrument) -> Option<Stream> {
    Stream::builder()
        .with_cardinality_limit(CARDINALITY_LIMIT)
        .build()
        .ok()
}

/// The families of one snapshot.
type Cached = Option<(Arc<Snapshot>, Arc<Vec<MetricFamily>>)>;

/// The families `/metrics` shows, computed once per snapshot however many
/// instruments' callbacks ask.
struct Families {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: AgentMetrics,
    cache: Mutex<Cached>,
    /// What the callbacks of the latest collection read: the histogram sent
    /// with them comes from the same snapshot.
    collected: Mutex<Option<Arc<Vec<MetricFamily>>>>,
}

impl Families {
    fn snapshot_families(&self) -> Arc<Vec<MetricFamily>> {
        let snapshot = self.snapshots.borrow().clone();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((s, f)) = cache.as_ref()
            && Arc::ptr_eq(s, &snapshot)
        {
            return f.clone();
        }
        let families = Arc::new(crate::metrics::snapshot_families(&snapshot));
        *cache = Some((snapshot, families.clone()));
        families
    }

    /// Calls `f` with each series of the family `name`: its attributes and
    /// value. Collections call this.
    fn each(&self, name: &str, mut f: impl FnMut(&[KeyValue], f64)) {
        let snapshot = self.snapshot_families();
        *self
            .collected
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(snapshot.clone());
        let live = self.metrics.live_families();
        for family in snapshot.iter().chain(&live).filter(|m| m.name() == name) {
            for m in family.get_metric() {
                let attrs: Vec<KeyValue> = m
                    .get_label()
                    .iter()
                    .map(|l| KeyValue::new(l.name().to_owned(), l.value().to_owned()))
                    .collect();
                let value = match family.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    _ => m.get_gauge().get_value(),
                };
                f(&attrs, value);
            }
        }
    }

    /// The histogram families of the snapshot the last collection read.
    fn collected_histograms(&self) -> Vec<MetricFamily> {
        let collected = self
            .collected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let families = collected.unwrap_or_else(|| self.snapshot_families());
        families
            .iter()
            .filter(|f| f.get_field_type() == MetricType::HISTOGRAM)
            .cloned()
            .collect()
    }
}

/// Registers an observable instrument for every counter and gauge family as
/// it first appears (checked once per export interval, so a new family is
/// pushed from the next export or the one after).
async fn register(meter: Meter, source: Arc<Families>, interval: Duration) {
    let mut registered: HashSet<String> = HashSet::new();
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let snapshot = source.snapshot_families();
        let live = source.metrics.live_families();
        for family in snapshot.iter().chain(&live) {
            let kind = family.get_field_type();
            if kind == MetricType::HISTOGRAM || registered.contains(family.name()) {
                continue;
            }
            let name = family.name().to_owned();
            registered.insert(name.clone());
            let help = family.help().to_owned();
            let src = source.clone();
            let n = name.clone();
            if kind == MetricType::COUNTER {
                meter
                    .f64_observable_counter(name)
                    .with_description(help)
                    .with_callback(move |o| src.each(&n, |a, v| o.observe(v, a)))
                    .build();
            } else {
                meter
                    .f64_observable_gauge(name)
                    .with_description(help)
                    .with_callback(move |o| src.each(&n, |a, v| o.observe(v, a)))
                    .build();
            }
        }
    }
}

/// The exporter's HTTP client: adds the snapshot's histograms to each
/// export request, then sends it with reqwest's blocking client (the
/// periodic reader exports from a thread of its own).
#[derive(Debug)]
struct HistogramClient {
    inner: reqwest::blocking::Client,
    source: SourceRef,
    start_ns: u64,
    /// When a failed push was last logged, in seconds since the epoch.
    warned_at: AtomicU64,
}

/// [`Families`] behind a Debug that the HTTP client trait asks for.
struct SourceRef(Arc<Families>);

impl std::fmt::Debug for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Families")
    }
}

impl HistogramClient {
    fn new(timeout: Duration, source: Arc<Families>) -> Result<Self> {
        // A blocking client may not be built on an async runtime's thread.
        let inner = std::thread::spawn(move || {
            // https trusts the system's root certificates, through rustls with ring.
            let (tls, no_roots) = tally_audit::tls::system_client_config();
            if let Some(e) = no_roots {
                tracing::warn!("an https OTLP endpoint will fail: {e}");
            }
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .tls_backend_preconfigured(tls)
                .build()
        })
        .join()
        .map_err(|_| Error::Config("the thread building the OTLP HTTP client panicked".into()))?
        .map_err(|e| Error::Config(format!("cannot build the OTLP HTTP client: {e}")))?;
        Ok(HistogramClient {
            inner,
            source: SourceRef(source),
            start_ns: unix_ns(SystemTime::now()),
            warned_at: AtomicU64::new(0),
        })
    }

    /// `body` with the histograms added; `body` itself where it does not
    /// decode (then the SDK sent something this code does not know).
    fn with_histograms(&self, body: &Bytes) -> Bytes {
        let Ok(mut request) = ExportMetricsServiceRequest::decode(body.clone()) else {
            return body.clone();
        };
        let histograms = self.source.0.collected_histograms();
        if histograms.is_empty() {
            return body.clone();
        }
        let now = unix_ns(SystemTime::now());
        let metrics = histograms.iter().map(|f| histogram(f, self.start_ns, now));
        let Some(resource) = request.resource_metrics.first_mut() else {
            return body.clone();
        };
        match resource
            .scope_metrics
            .iter_mut()
            .find(|s| s.scope.as_ref().is_some_and(|s| s.name == SCOPE))
        {
            Some(scope) => scope.metrics.extend(metrics),
            None => resource.scope_metrics.push(proto::ScopeMetrics {
                scope: Some(proto_common::InstrumentationScope {
                    name: SCOPE.into(),
                    ..Default::default()
                }),
                metrics: metrics.collect(),
                ..Default::default()
            }),
        }
        Bytes::from(request.encode_to_vec())
    }
}

#[async_trait::async_trait]
impl HttpClient for HistogramClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (mut parts, body) = request.into_parts();
        let body = self.with_histograms(&body);
        parts.headers.remove("content-length");
        let sent = self
            .inner
            .send_bytes(Request::from_parts(parts, body))
            .await;
        let failure = match &sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the receiver answered {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failure {
            // Once a minute at most: a receiver that is away stays away a while.
            let now = unix_ns(SystemTime::now()) / 1_000_000_000;
            let last = self.warned_at.load(Ordering::Relaxed);
            if now >= last + 60
                && self
                    .warned_at
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                warn!("OTLP push failed: {why}");
            }
        }
        sent
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A Prometheus histogram family as an OTLP cumulative explicit-bucket
/// histogram: the same bounds, per-bucket counts (OTLP's are not
/// cumulative), count and sum; no min and max, which the buckets do not know.
fn histogram(family: &MetricFamily, start_ns: u64, now_ns: u64) -> proto::Metric {
    let data_points = family
        .get_metric()
        .iter()
        .map(|m| {
            let h = m.get_histogram();
            let mut explicit_bounds = Vec::new();
            let mut bucket_counts = Vec::new();
            let mut below = 0;
            for b in h.get_bucket() {
                if b.upper_bound().is_finite() {
                    explicit_bounds.push(b.upper_bound());
                    bucket_counts.push(b.cumulative_count().saturating_sub(below));
                    below = b.cumulative_count();
                }
            }
            bucket_counts.push(h.get_sample_count().saturating_sub(below));
            proto::HistogramDataPoint {
                attributes: m
                    .get_label()
                    .iter()
                    .map(|l| proto_common::KeyValue {
                        key: l.name().to_owned(),
                        value: Some(proto_common::AnyValue {
                            value: Some(proto_common::any_value::Value::StringValue(
                                l.value().to_owned(),
                            )),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                start_time_unix_nano: start_ns,
                time_unix_nano: now_ns,
                count: h.get_sample_count(),
                sum: Some(h.get_sample_sum()),
                bucket_counts,
                explicit_bounds,
                ..Default::default()
            }
        })
        .collect();
    proto::Metric {
        name: family.name().to_owned(),
        description: family.help().to_owned(),
        unit: "s".into(),
        data: Some(proto::metric::Data::Histogram(proto::Histogram {
            data_points,
            aggregation_temporality: proto::AggregationTemporality::Cumulative as i32,
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_metrics_path_and_must_be_http_or_https() {
        assert_eq!(
            endpoint("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/metrics"
        );
        assert_eq!(
            endpoint("http://c:4318/otlp/v1/metrics").unwrap(),
            "http://c:4318/otlp/v1/metrics"
        );
        assert_eq!(
            endpoint("https://c:4318").unwrap(),
            "https://c:4318/v1/metrics"
        );
        let err = endpoint("ftp://c:4318").unwrap_err().to_string();
        assert!(
            err.contains("\"ftp://c:4318\"") && err.contains("https"),
            "{err}"
        );
        let err = endpoint("collector:4318").unwrap_err().to_string();
        assert!(err.contains("\"collector:4318\""), "{err}");
    }
}
