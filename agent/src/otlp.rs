//! OTLP/HTTP (protobuf) export of the agent's metrics, for users who run
//! OpenTelemetry instead of (or beside) Prometheus.
//!
//! The values are the ones `/metrics` shows: the same families, built by
//! [`crate::metrics::snapshot_families`] from the latest snapshot plus the
//! agent's live counters, with the same names and labels (as attributes).
//! Counters and gauges are observable instruments whose callbacks read those
//! families when the SDK's periodic reader collects. OpenTelemetry has no
//! observable histogram, so the latency histogram is a synchronous one with
//! the snapshot's bounds, into which every new snapshot's increase is
//! recorded, bucket by bucket; its cumulative counts are then the snapshot's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{
    Aggregation, Instrument, InstrumentKind, PeriodicReader, SdkMeterProvider, Stream,
};
use prometheus::proto::{MetricFamily, MetricType};
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
/// standard `/v1/metrics`; a URL with a path is used as it is. Only `http`
/// is accepted: the agent is built without a TLS stack.
pub fn endpoint(url: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::Config(format!(
            "otlp_endpoint \"{url}\" {why}: expected an http URL such as http://127.0.0.1:4318 or http://collector:4318/v1/metrics"
        ))
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if parsed.scheme() != "http" {
        return Err(bad(
            "does not use http (https needs a TLS stack the agent is built without; use a local collector)",
        ));
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

/// A running OTLP export; stop it with [`OtlpExport::shutdown`], which
/// pushes once more.
pub struct OtlpExport {
    provider: SdkMeterProvider,
    replay: tokio::task::JoinHandle<()>,
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
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(interval.clamp(Duration::from_secs(1), Duration::from_secs(30)))
            .build()
            .map_err(|e| Error::Config(format!("otlp_endpoint \"{url}\": {e}")))?;
        let reader = PeriodicReader::builder(exporter)
            .with_interval(interval)
            .build();
        // The latency histogram's bounds, set from the first snapshot that
        // has one, before its instrument is created.
        let bounds: Bounds = Arc::default();
        let view_bounds = bounds.clone();
        let provider = SdkMeterProvider::builder()
            .with_resource(Resource::builder().with_service_name("tally-agent").build())
            .with_reader(reader)
            .with_view(move |i: &Instrument| view(i, &view_bounds))
            .build();
        let source = Arc::new(Families {
            snapshots: snapshots.clone(),
            metrics,
            cache: Mutex::new(None),
        });
        let meter = provider.meter("tally-agent");
        let replay = tokio::spawn(follow(meter, bounds, source, snapshots));
        info!(endpoint = %url, interval = ?interval, "pushing metrics over OTLP/HTTP");
        Ok(OtlpExport { provider, replay })
    }

    /// Stops following snapshots, pushes what there is once more, and stops.
    pub async fn shutdown(self) {
        self.replay.abort();
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            warn!("OTLP export did not shut down cleanly: {e}");
        }
    }
}

/// Every instrument may have many series; histograms keep no min and max,
/// since their values are replayed from buckets, not measured.
fn view(i: &Instrument, bounds: &Bounds) -> Option<Stream> {
    let builder = Stream::builder().with_cardinality_limit(CARDINALITY_LIMIT);
    let builder = if i.kind() == InstrumentKind::Histogram {
        builder.with_aggregation(Aggregation::ExplicitBucketHistogram {
            boundaries: bounds
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            record_min_max: false,
        })
    } else {
        builder
    };
    builder.build().ok()
}

/// Bounds of the histogram instrument, shared with the view, which cannot
/// read the instrument's own.
type Bounds = Arc<Mutex<Vec<f64>>>;

/// A series' labels.
type SeriesKey = Vec<(String, String)>;

/// The families of one snapshot.
type Cached = Option<(Arc<Snapshot>, Arc<Vec<MetricFamily>>)>;

/// The families `/metrics` shows, computed once per snapshot however many
/// instruments' callbacks ask.
struct Families {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: AgentMetrics,
    cache: Mutex<Cached>,
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

    /// Calls `f` with each series of the family `name`: its attributes and value.
    fn each(&self, name: &str, mut f: impl FnMut(&[KeyValue], f64)) {
        let snapshot = self.snapshot_families();
        let live = self.metrics.live_families();
        for family in snapshot.iter().chain(&live).filter(|m| m.name() == name) {
            for m in family.get_metric() {
                let attrs = attributes(m);
                let value = match family.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    _ => m.get_gauge().get_value(),
                };
                f(&attrs, value);
            }
        }
    }

    /// Every family: the snapshot's and the live ones.
    fn all(&self) -> (Arc<Vec<MetricFamily>>, Vec<MetricFamily>) {
        (self.snapshot_families(), self.metrics.live_families())
    }
}

fn attributes(m: &prometheus::proto::Metric) -> Vec<KeyValue> {
    m.get_label()
        .iter()
        .map(|l| KeyValue::new(l.name().to_owned(), l.value().to_owned()))
        .collect()
}

/// Registers an instrument for every family as it first appears, and
/// replays every new snapshot's histogram increases.
async fn follow(
    meter: Meter,
    bounds: Bounds,
    source: Arc<Families>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
) {
    let mut registered: HashSet<String> = HashSet::new();
    let mut histograms: HashMap<String, Replay> = HashMap::new();
    loop {
        let (snapshot, live) = source.all();
        for family in snapshot.iter().chain(&live) {
            let name = family.name().to_owned();
            if family.get_field_type() == MetricType::HISTOGRAM {
                let replay = histograms
                    .entry(name.clone())
                    .or_insert_with(|| Replay::new(&meter, &bounds, family));
                replay.record(family);
                continue;
            }
            if !registered.insert(name.clone()) {
                continue;
            }
            let help = family.help().to_owned();
            let src = source.clone();
            let n = name.clone();
            match family.get_field_type() {
                MetricType::COUNTER => {
                    meter
                        .f64_observable_counter(name)
                        .with_description(help)
                        .with_callback(move |o| src.each(&n, |a, v| o.observe(v, a)))
                        .build();
                }
                _ => {
                    meter
                        .f64_observable_gauge(name)
                        .with_description(help)
                        .with_callback(move |o| src.each(&n, |a, v| o.observe(v, a)))
                        .build();
                }
            }
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

/// A histogram family replayed into a synchronous histogram: per series, the
/// per-bucket counts and the sum recorded so far.
struct Replay {
    histogram: Histogram<f64>,
    bounds: Vec<f64>,
    /// Per series: counts per bucket (the last above the last bound) and sum.
    seen: HashMap<SeriesKey, (Vec<u64>, f64)>,
    warned: bool,
}

impl Replay {
    fn new(meter: &Meter, shared_bounds: &Bounds, family: &MetricFamily) -> Replay {
        let bounds: Vec<f64> = family
            .get_metric()
            .first()
            .map(|m| {
                m.get_histogram()
                    .get_bucket()
                    .iter()
                    .map(|b| b.upper_bound())
                    .filter(|b| b.is_finite())
                    .collect()
            })
            .unwrap_or_default();
        *shared_bounds.lock().unwrap_or_else(PoisonError::into_inner) = bounds.clone();
        let histogram = meter
            .f64_histogram(family.name().to_owned())
            .with_description(family.help().to_owned())
            .with_unit("s")
            .with_boundaries(bounds.clone())
            .build();
        Replay {
            histogram,
            bounds,
            seen: HashMap::new(),
            warned: false,
        }
    }

    /// Records what each series of `family` gained since the last call.
    fn record(&mut self, family: &MetricFamily) {
        for m in family.get_metric() {
            let h = m.get_histogram();
            let bounds: Vec<f64> = h
                .get_bucket()
                .iter()
                .map(|b| b.upper_bound())
                .filter(|b| b.is_finite())
                .collect();
            let key: SeriesKey = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
                .collect();
            if bounds != self.bounds {
                self.warn_once(&key, "its bounds differ from the first series'");
                continue;
            }
            // Per bucket, the last one above the last bound.
            let mut counts = Vec::with_capacity(bounds.len() + 1);
            let mut below = 0;
            for b in h.get_bucket() {
                if b.upper_bound().is_finite() {
                    counts.push(b.cumulative_count().saturating_sub(below));
                    below = b.cumulative_count();
                }
            }
            counts.push(h.get_sample_count().saturating_sub(below));
            let sum = h.get_sample_sum();
            let (old_counts, old_sum) = self
                .seen
                .get(&key)
                .cloned()
                .unwrap_or_else(|| (vec![0; counts.len()], 0.0));
            if counts.iter().zip(&old_counts).any(|(new, old)| new < old) {
                // The source started over: what was recorded cannot be taken
                // back, so start counting from here.
                self.warn_once(&key, "its counts went down (the source restarted)");
                self.seen.insert(key, (counts, sum));
                continue;
            }
            let added: Vec<u64> = counts.iter().zip(&old_counts).map(|(n, o)| n - o).collect();
            if added.iter().any(|&n| n > 0) {
                let attrs: Vec<KeyValue> = key
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                    .collect();
                for (value, n) in spread(&self.bounds, &added, sum - old_sum) {
                    for _ in 0..n {
                        self.histogram.record(value, &attrs);
                    }
                }
            }
            self.seen.insert(key, (counts, sum));
        }
    }

    fn warn_once(&mut self, key: &[(String, String)], why: &str) {
        if !self.warned {
            self.warned = true;
            warn!(series = ?key, "OTLP latency histogram: a series is left out: {why}");
        }
    }
}

/// Values to record, one per bucket with its count, such that each lies in
/// its bucket (`(bounds[i-1], bounds[i]]`, the first from 0, the last above
/// the last bound) and together they add up to `sum` wherever the buckets
/// allow it: every value sits at the same fraction of its bucket's width,
/// and the values above the last bound take what remains.
fn spread(bounds: &[f64], counts: &[u64], sum: f64) -> Vec<(f64, u64)> {
    let lower = |i: usize| if i == 0 { 0.0 } else { bounds[i - 1] };
    let finite = bounds.len().min(counts.len());
    let above = counts.get(finite).copied().unwrap_or(0);
    let floor: f64 = (0..finite).map(|i| counts[i] as f64 * lower(i)).sum();
    let width: f64 = (0..finite)
        .map(|i| counts[i] as f64 * (bounds[i] - lower(i)))
        .sum();
    let top = bounds.last().copied().unwrap_or(0.0);
    let fraction = if above > 0 {
        // Leave room above the last bound: the values there must exceed it.
        let room = sum - floor - above as f64 * top;
        if width > 0.0 {
            (room / 2.0 / width).clamp(1e-6, 1.0)
        } else {
            0.5
        }
    } else if width > 0.0 {
        ((sum - floor) / width).clamp(1e-6, 1.0)
    } else {
        1.0
    };
    let mut out: Vec<(f64, u64)> = (0..finite)
        .filter(|&i| counts[i] > 0)
        .map(|i| (lower(i) + fraction * (bounds[i] - lower(i)), counts[i]))
        .collect();
    if above > 0 {
        let used = floor + fraction * width;
        let each = (sum - used) / above as f64;
        let value = if each > top {
            each
        } else {
            top * (1.0 + 1e-9) + 1e-9
        };
        out.push((value, above));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_metrics_path_and_must_be_http() {
        assert_eq!(
            endpoint("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/metrics"
        );
        assert_eq!(
            endpoint("http://c:4318/otlp/v1/metrics").unwrap(),
            "http://c:4318/otlp/v1/metrics"
        );
        let err = endpoint("https://c:4318").unwrap_err().to_string();
        assert!(
            err.contains("\"https://c:4318\"") && err.contains("http"),
            "{err}"
        );
        let err = endpoint("collector:4318").unwrap_err().to_string();
        assert!(err.contains("\"collector:4318\""), "{err}");
    }

    fn bucket_of(bounds: &[f64], v: f64) -> usize {
        bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len())
    }

    #[test]
    fn spread_values_stay_in_their_buckets_and_add_up() {
        let bounds = [0.005, 0.01, 0.1, 1.0, 10.0];
        for (counts, sum) in [
            (vec![3, 0, 2, 0, 1, 0], 0.01 + 0.15 + 5.0),
            (vec![0, 0, 0, 0, 0, 4], 100.0),
            (
                vec![1, 1, 1, 1, 1, 2],
                0.003 + 0.007 + 0.05 + 0.5 + 5.0 + 30.0,
            ),
            (vec![10, 0, 0, 0, 0, 0], 0.0),
        ] {
            let values = spread(&bounds, &counts, sum);
            let mut got = vec![0u64; counts.len()];
            let mut total = 0.0;
            for (v, n) in &values {
                got[bucket_of(&bounds, *v)] += n;
                total += v * *n as f64;
            }
            assert_eq!(got, counts, "{values:?}");
            if sum > 0.0 {
                assert!(
                    (total - sum).abs() <= 1e-9 * sum.max(1.0),
                    "{total} vs {sum}"
                );
            }
        }
    }
}
