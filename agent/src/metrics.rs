//! The Prometheus exposition: series rendered from the latest snapshot, plus
//! the agent's own live counters.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tally_alerts::Alerting;
use tally_alerts::notify::{NOTIFIERS, RESULTS};
use tally_audit::{BucketStatus, GroupState, GroupStatus, Reason, Snapshot};

/// The agent's own counters, updated as things happen.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Registry,
    /// Refused ingest messages per reason.
    pub ingest_errors: IntCounterVec,
    /// Cells held by the ledger.
    pub ledger_cells: IntGauge,
    /// 1 once stored state is loaded.
    pub ready: IntGauge,
    /// Stored rows left out at the last start because they could not be read.
    pub store_rows_skipped: IntGauge,
    /// HTTP requests answered with an error status, per status code.
    pub http_errors: IntCounterVec,
    /// Connections the agent closed, per reason.
    pub connections_closed: IntCounterVec,
    /// Renders of the snapshot's series for `/metrics` (one per scraped snapshot).
    pub renders: IntCounter,
}

impl AgentMetrics {
    /// Registers the live counters.
    pub fn new() -> Self {
        let registry = Registry::new();
        let ingest_errors = IntCounterVec::new(
            Opts::new(
                "tally_ingest_errors_total",
                "Ingest messages refused, per reason",
            ),
            &["cluster", "reason"],
        )
        .expect("static metric definition");
        let ledger_cells = IntGauge::new(
            "tally_ledger_cells",
            "Cells (source, tier, topic, partition, bucket) held by the ledger",
        )
        .expect("static metric definition");
        let ready = IntGauge::new(
            "tally_agent_ready",
            "1 once the agent has loaded its stored state",
        )
        .expect("static metric definition");
        let store_rows_skipped = IntGauge::new(
            "tally_store_rows_skipped",
            "Stored rows left out at start because they could not be read or used",
        )
        .expect("static metric definition");
        let http_errors = IntCounterVec::new(
            Opts::new(
                "tally_http_errors_total",
                "HTTP requests answered with an error, per status code",
            ),
            &["code"],
        )
        .expect("static metric definition");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "tally_http_connections_closed_total",
                "Connections the agent closed: no request header in time (header_timeout), no ingest hello in time (hello_timeout), or no request yet when a new connection needed the slot at the limit (evicted)",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let renders = IntCounter::new(
            "tally_agent_metrics_renders_total",
            "Renders of the audit series for /metrics: at most one per evaluation that was scraped, none while nobody scrapes",
        )
        .expect("static metric definition");
        for reason in ["header_timeout", "hello_timeout", "evicted"] {
            connections_closed.with_label_values(&[reason]);
        }
        for c in [
            Box::new(ingest_errors.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ledger_cells.clone()),
            Box::new(ready.clone()),
            Box::new(store_rows_skipped.clone()),
            Box::new(http_errors.clone()),
            Box::new(connections_closed.clone()),
            Box::new(renders.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        for reason in Reason::ALL {
            ingest_errors.with_label_values(&["", reason.as_str()]);
        }
        AgentMetrics {
            registry,
            ingest_errors,
            ledger_cells,
            ready,
            store_rows_skipped,
            http_errors,
            connections_closed,
            renders,
        }
    }

    /// Counts one refused message.
    pub fn refused(&self, cluster: &str, reason: Reason) {
        self.refused_entries(cluster, reason, 1);
    }

    /// Counts `n` refusals of one reason (entries dropped on their own).
    pub fn refused_entries(&self, cluster: &str, reason: Reason, n: u64) {
        self.ingest_errors
            .with_label_values(&[cluster, reason.as_str()])
            .inc_by(n);
    }

    /// The text exposition of `snapshot` and the live counters, in one piece.
    pub fn render(&self, snapshot: &Snapshot) -> Vec<u8> {
        let mut out = snapshot_text(snapshot);
        out.extend(self.render_live());
        out
    }

    /// The text exposition of the series derived from `snapshot`, a piece per
    /// family ([`snapshot_chunks`]); the agent renders it when a scrape asks
    /// for a snapshot not rendered yet.
    pub fn render_snapshot(&self, snapshot: &Snapshot) -> Vec<axum::body::Bytes> {
        snapshot_chunks(snapshot)
    }

    /// The text exposition of the live counters.
    pub fn render_live(&self) -> Vec<u8> {
        encode(&self.live_families())
    }

    /// The live counters as families (the OTLP export reads them too).
    pub fn live_families(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }

    /// Adds the alert engine's series (`tally_notifications_total`,
    /// `tally_alert_rules`) to the live ones, read when they are gathered.
    pub fn register_alerting(&self, alerting: Arc<Alerting>) {
        let collector = AlertingCollector {
            alerting,
            notifications: IntCounterVec::new(
                Opts::new(
                    "tally_notifications_total",
                    "Alert notifications per notifier and result (sent, retried, failed, dropped)",
                ),
                &["notifier", "result"],
            )
            .expect("valid metric"),
            rules: IntGauge::new("tally_alert_rules", "Alert rules in force")
                .expect("valid metric"),
        };
        if let Err(e) = self.registry.register(Box::new(collector)) {
            tracing::warn!("the alerting metrics are not registered: {e}");
        }
    }
}

/// The alert engine's series, brought up to date from its own counters each
/// time the registry is gathered (a scrape of `/metrics`, an OTLP export).
struct AlertingCollector {
    alerting: Arc<Alerting>,
    notifications: IntCounterVec,
    rules: IntGauge,
}

impl Collector for AlertingCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.notifications.desc();
        d.extend(self.rules.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = self.alerting.stats();
        for notifier in NOTIFIERS {
            for result in RESULTS {
                let counter = self.notifications.with_label_values(&[notifier, result]);
                let (now, shown) = (stats.get(notifier, result), counter.get());
                if now > shown {
                    counter.inc_by(now - shown);
                }
            }
        }
        self.rules
            .set(i64::try_from(self.alerting.rules().rules.len()).unwrap_or(i64::MAX));
        let mut out = self.notifications.collect();
        out.extend(self.rules.collect());
        out
    }
}

fn encode(families: &[MetricFamily]) -> Vec<u8> {
    let mut out = Vec::with_capacity(families.iter().map(|f| f.get_metric().len() * 96).sum());
    // Encoding plain in-memory families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(families, &mut out);
    out
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// How a [`Family`] keeps its series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// As the `prometheus` crate's values.
    Proto,
    /// As lines of the text exposition.
    Text,
}

enum Sink {
    Proto(MetricFamily),
    Text { body: String, series: usize },
}

/// One metric family being built, as values or straight as text.
struct Family {
    name: &'static str,
    kind: MetricType,
    sink: Sink,
}

impl Family {
    fn new(mode: Mode, name: &'static str, help: &'static str, kind: MetricType) -> Self {
        let sink = match mode {
            Mode::Proto => {
                let mut mf = MetricFamily::default();
                mf.set_name(name.to_owned());
                mf.set_help(help.to_owned());
                mf.set_field_type(kind);
                Sink::Proto(mf)
            }
            // The family's text starts with its header, so that the text of
            // a render is the families' texts one after the other, uncopied.
            Mode::Text => {
                let mut body = String::new();
                body.push_str("# HELP ");
                body.push_str(name);
                body.push(' ');
                escape_into(&mut body, help, false);
                body.push_str("\n# TYPE ");
                body.push_str(name);
                body.push(' ');
                body.push_str(match kind {
                    MetricType::COUNTER => "counter",
                    MetricType::HISTOGRAM => "histogram",
                    _ => "gauge",
                });
                body.push('\n');
                Sink::Text { body, series: 0 }
            }
        };
        Family { name, kind, sink }
    }

    fn gauge(mode: Mode, name: &'static str, help: &'static str) -> Self {
        Self::new(mode, name, help, MetricType::GAUGE)
    }

    fn counter(mode: Mode, name: &'static str, help: &'static str) -> Self {
        Self::new(mode, name, help, MetricType::COUNTER)
    }

    fn histogram(mode: Mode, name: &'static str, help: &'static str) -> Self {
        Self::new(mode, name, help, MetricType::HISTOGRAM)
    }

    /// Makes room in the text for `series` more lines of about 128 bytes.
    fn reserve(&mut self, series: usize) {
        if let Sink::Text { body, .. } = &mut self.sink {
            body.reserve(series.saturating_mul(128));
        }
    }

    fn is_empty(&self) -> bool {
        match &self.sink {
            Sink::Proto(mf) => mf.get_metric().is_empty(),
            Sink::Text { series, .. } => *series == 0,
        }
    }

    fn metric(labels: &[(&str, &str)]) -> Metric {
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = LabelPair::default();
                    l.set_name((*k).to_owned());
                    l.set_value((*v).to_owned());
                    l
                })
                .collect(),
        );
        m
    }

    /// Writes one sample line: `name{labels} value` (the text encoder's
    /// formatting: labels in the order given, the value as Rust prints an `f64`).
    fn line(
        body: &mut String,
        name: &str,
        suffix: &str,
        labels: &[(&str, &str)],
        extra: Option<(&str, &str)>,
        value: f64,
    ) {
        body.push_str(name);
        body.push_str(suffix);
        if !labels.is_empty() || extra.is_some() {
            let mut sep = '{';
            for (k, v) in labels.iter().chain(extra.as_ref()) {
                body.push(sep);
                body.push_str(k);
                body.push_str("=\"");
                escape_into(body, v, true);
                body.push('"');
                sep = ',';
            }
            body.push('}');
        }
        body.push(' ');
        push_value(body, value);
        body.push('\n');
    }

    /// Adds one histogram of cumulative `counts` at `bounds` (in the
    /// family's unit); the `+Inf` bucket comes from `count`.
    fn push_histogram(
        &mut self,
        labels: &[(&str, &str)],
        bounds: impl IntoIterator<Item = f64>,
        counts: &[u64],
        count: u64,
        sum: f64,
    ) {
        match &mut self.sink {
            Sink::Proto(mf) => {
                let mut m = Self::metric(labels);
                let mut h = Histogram::default();
                h.set_bucket(
                    bounds
                        .into_iter()
                        .zip(counts)
                        .map(|(le, n)| {
                            let mut b = Bucket::default();
                            b.set_upper_bound(le);
                            b.set_cumulative_count(*n);
                            b
                        })
                        .collect(),
                );
                h.set_sample_count(count);
                h.set_sample_sum(sum);
                m.set_histogram(h);
                mf.mut_metric().push(m);
            }
            Sink::Text { body, series } => {
                let mut le = String::new();
                let mut inf_seen = false;
                for (bound, n) in bounds.into_iter().zip(counts) {
                    le.clear();
                    use std::fmt::Write as _;
                    let _ = write!(le, "{bound}");
                    inf_seen |= bound.is_infinite() && bound.is_sign_positive();
                    Self::line(
                        body,
                        self.name,
                        "_bucket",
                        labels,
                        Some(("le", &le)),
                        *n as f64,
                    );
                }
                if !inf_seen {
                    Self::line(
                        body,
                        self.name,
                        "_bucket",
                        labels,
                        Some(("le", "+Inf")),
                        count as f64,
                    );
                }
                Self::line(body, self.name, "_sum", labels, None, sum);
                Self::line(body, self.name, "_count", labels, None, count as f64);
                *series += 1;
            }
        }
    }

    fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        match &mut self.sink {
            Sink::Proto(mf) => {
                let mut m = Self::metric(labels);
                if self.kind == MetricType::COUNTER {
                    let mut c = Counter::default();
                    c.set_value(value);
                    m.set_counter(c);
                } else {
                    let mut g = Gauge::default();
                    g.set_value(value);
                    m.set_gauge(g);
                }
                mf.mut_metric().push(m);
            }
            Sink::Text { body, series } => {
                Self::line(body, self.name, "", labels, None, value);
                *series += 1;
            }
        }
    }

    /// [`Family::push`] with the labels also written out already (by
    /// [`Labels::new`]), so that the many families of one (group, topic,
    /// partition) escape and join its labels once, not once each.
    fn push_labels(&mut self, labels: &Labels<'_>, value: f64) {
        match &mut self.sink {
            Sink::Proto(_) => self.push(labels.pairs, value),
            Sink::Text { body, series } => {
                body.push_str(self.name);
                body.push_str(&labels.text);
                body.push(' ');
                push_value(body, value);
                body.push('\n');
                *series += 1;
            }
        }
    }
}

impl Family {
    /// [`Family::push_labels`] with one more label after `labels`.
    fn push_labels_and(&mut self, labels: &Labels<'_>, extra: (&str, &str), value: f64) {
        match &mut self.sink {
            Sink::Proto(_) => {
                let mut pairs = labels.pairs.to_vec();
                pairs.push(extra);
                self.push(&pairs, value);
            }
            Sink::Text { body, series } => {
                body.push_str(self.name);
                match labels.text.strip_suffix('}') {
                    Some(open) => {
                        body.push_str(open);
                        body.push(',');
                    }
                    None => body.push('{'),
                }
                body.push_str(extra.0);
                body.push_str("=\"");
                escape_into(body, extra.1, true);
                body.push_str("\"} ");
                push_value(body, value);
                body.push('\n');
                *series += 1;
            }
        }
    }
}

/// Label pairs, with their text as a sample line writes it (`{k="v",…}`).
struct Labels<'a> {
    pairs: &'a [(&'a str, &'a str)],
    text: String,
}

impl<'a> Labels<'a> {
    fn new(pairs: &'a [(&'a str, &'a str)], mode: Mode) -> Self {
        let mut text = String::new();
        if mode == Mode::Text && !pairs.is_empty() {
            let mut sep = '{';
            for (k, v) in pairs {
                text.push(sep);
                text.push_str(k);
                text.push_str("=\"");
                escape_into(&mut text, v, true);
                text.push('"');
                sep = ',';
            }
            text.push('}');
        }
        Labels { pairs, text }
    }
}

/// Builds every snapshot-derived family (§6 of the design), as the
/// `prometheus` crate's values (what the OTLP export reads).
pub fn snapshot_families(s: &Snapshot) -> Vec<MetricFamily> {
    snapshot_series(s, Mode::Proto)
        .into_iter()
        .filter_map(|f| match f.sink {
            Sink::Proto(mf) => Some(mf),
            Sink::Text { .. } => None,
        })
        .collect()
}

/// The text exposition of every snapshot-derived family, written straight
/// from the snapshot: byte for byte what the `prometheus` crate's
/// `TextEncoder` writes of [`snapshot_families`], without building its
/// values first (a `String` per label name and value, a message per series).
pub fn snapshot_text(s: &Snapshot) -> Vec<u8> {
    snapshot_chunks(s).concat()
}

/// [`snapshot_text`] in pieces, one per family with series (its `# HELP` and
/// `# TYPE` lines, then its samples), each kept as written: the text of a
/// scrape is these pieces one after the other, never copied into one.
pub fn snapshot_chunks(s: &Snapshot) -> Vec<axum::body::Bytes> {
    snapshot_series(s, Mode::Text)
        .into_iter()
        .filter_map(|f| match f.sink {
            Sink::Text { body, series } if series > 0 => Some(axum::body::Bytes::from(body)),
            _ => None,
        })
        .collect()
}

/// Writes `v` as Rust prints an `f64` (what the `prometheus` crate's encoder
/// writes): most values are whole numbers, written here without the
/// formatting machinery.
fn push_value(out: &mut String, v: f64) {
    // Below 2^53 every whole f64 is exact, and Rust prints it without a
    // fraction or an exponent, as an integer prints.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if v.fract() == 0.0 && v.abs() < EXACT && !(v == 0.0 && v.is_sign_negative()) {
        let mut n = v as i64;
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let negative = n < 0;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10).unsigned_abs() as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if negative {
            out.push('-');
        }
        for d in &digits[at..] {
            out.push(char::from(*d));
        }
        return;
    }
    use std::fmt::Write as _;
    // Writing into a String cannot fail.
    let _ = write!(out, "{v}");
}

/// Escapes a label value (`quotes`) or a help text as the text format asks:
/// `\` and newlines, and `"` in label values.
fn escape_into(out: &mut String, v: &str, quotes: bool) {
    if !v
        .bytes()
        .any(|b| b == b'\\' || b == b'\n' || (quotes && b == b'"'))
    {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Every snapshot-derived family, built in `mode`; empty ones left out.
fn snapshot_series(s: &Snapshot, mode: Mode) -> Vec<Family> {
    let mut records = Family::counter(
        mode,
        "tally_audit_records_total",
        "Records counted per topic and tier",
    );
    let mut missing = Family::gauge(
        mode,
        "tally_audit_missing_records",
        "Records missing in closed buckets of the window",
    );
    let mut excess = Family::gauge(
        mode,
        "tally_audit_excess_records",
        "Duplicate records in closed buckets of the window",
    );
    let mut expired = Family::counter(
        mode,
        "tally_audit_expired_records_total",
        "Records deleted by retention before the group consumed them",
    );
    let mut aborted = Family::counter(
        mode,
        "tally_audit_aborted_records_total",
        "Records of aborted transactions in the log, counted apart from the broker tier's records",
    );
    let mut completeness = Family::gauge(
        mode,
        "tally_audit_completeness_ratio",
        "Records of the tier over the reference tier's, in closed buckets of the window",
    );
    let mut pending = Family::gauge(
        mode,
        "tally_audit_pending_records",
        "Reference records a group has not consumed yet",
    );
    let mut buckets = Family::gauge(
        mode,
        "tally_audit_buckets",
        "Buckets of the window per status",
    );
    let mut mirror_lag = Family::gauge(
        mode,
        "tally_audit_mirror_lag_records",
        "Source records of closed buckets of the window not yet on the mirror's destination",
    );
    let mut mirror_lag_s = Family::gauge(
        mode,
        "tally_audit_mirror_lag_seconds",
        "Age of the oldest source records not yet on the mirror's destination (0 when none)",
    );
    let mut evaluated = Family::gauge(
        mode,
        "tally_agent_evaluated_timestamp_seconds",
        "When the books, lag and alerts these series show were evaluated (Unix seconds)",
    );
    evaluated.push(&[], s.at_ms as f64 / 1000.0);
    let mut latency = Family::histogram(
        mode,
        "tally_audit_latency_seconds",
        "Seconds from a record's timestamp to when the tier counted it (for a group: its commit)",
    );
    for l in &s.latency {
        latency.push_histogram(
            &[
                ("cluster", l.cluster.as_str()),
                ("topic", l.topic.as_str()),
                ("tier", l.tier.as_str()),
            ],
            l.bounds_ms.iter().map(|&ms| ms as f64 / 1000.0),
            &l.counts,
            l.count,
            l.sum_ms as f64 / 1000.0,
        );
    }
    for t in &s.topics {
        for (tier, b) in &t.tiers {
            let l = [
                ("cluster", t.cluster.as_str()),
                ("topic", t.topic.as_str()),
                ("tier", tier.as_str()),
            ];
            records.push(&l, b.records as f64);
            missing.push(&l, b.missing as f64);
            excess.push(&l, b.excess as f64);
            completeness.push(&l, b.completeness);
            if let Some(p) = b.pending {
                pending.push(&l, p as f64);
            }
            if let Some(m) = &b.mirror_lag {
                mirror_lag.push(&l, m.records as f64);
                mirror_lag_s.push(&l, m.seconds);
            }
            if tier == "broker" {
                aborted.push(
                    &[("cluster", t.cluster.as_str()), ("topic", t.topic.as_str())],
                    b.aborted as f64,
                );
            }
            if let (Some(e), Some(group)) = (b.expired, tier.strip_prefix("group:")) {
                expired.push(
                    &[
                        ("cluster", t.cluster.as_str()),
                        ("topic", t.topic.as_str()),
                        ("group", group),
                    ],
                    e as f64,
                );
            }
            for status in BucketStatus::ALL {
                let n = b.buckets.get(&status).copied().unwrap_or(0);
                buckets.push(
                    &[
                        ("cluster", t.cluster.as_str()),
                        ("topic", t.topic.as_str()),
                        ("tier", tier.as_str()),
                        ("status", status.as_str()),
                    ],
                    n as f64,
                );
            }
        }
    }

    let mut lag = Family::gauge(
        mode,
        "tally_consumer_lag_records",
        "Consumer lag in records per partition",
    );
    let mut lag_s = Family::gauge(
        mode,
        "tally_consumer_lag_seconds",
        "Consumer lag in seconds per partition: now minus the timestamp of the first unconsumed record",
    );
    let mut committed = Family::gauge(
        mode,
        "tally_consumer_committed_offset",
        "Committed offset per partition",
    );
    let mut group_lag = Family::gauge(
        mode,
        "tally_consumer_group_lag_records",
        "Consumer lag in records per group",
    );
    let mut group_lag_s = Family::gauge(
        mode,
        "tally_consumer_group_max_lag_seconds",
        "Largest lag in seconds of any partition of the group",
    );
    let mut group_status = Family::gauge(
        mode,
        "tally_consumer_group_status",
        "1 for the group's current status (ok, warn, err), 0 for the others",
    );
    let mut part_status = Family::gauge(
        mode,
        "tally_consumer_partition_status",
        "1 for the partition's current status (ok, warn, stop, stall, rewind); only the current status has a series",
    );
    let mut estimated = Family::gauge(
        mode,
        "tally_consumer_lag_estimated",
        "1 where the partition's lag seconds are estimated from offsets and timestamps seen before (the record at the committed offset could not be read), 0 where read from the record",
    );
    let mut stale = Family::gauge(
        mode,
        "tally_consumer_lag_stale",
        "1 where the partition's lag was not refreshed for 3 lag intervals of its source (source down, cluster unreachable): its lag, committed offset and estimated series are left out until it is; 0 where current",
    );
    // One series per (group, topic, partition) each: written once, not
    // copied again and again as the text grows.
    let lag_partitions: usize = s.groups.iter().map(|g| g.partitions.len()).sum();
    for f in [
        &mut lag,
        &mut lag_s,
        &mut committed,
        &mut part_status,
        &mut estimated,
        &mut stale,
    ] {
        f.reserve(lag_partitions);
    }
    let mut topic_lag = Family::gauge(
        mode,
        "tally_consumer_group_topic_lag_records",
        "Consumer lag in records per group and topic (sum over the partitions with current lag)",
    );
    let mut topic_lag_s = Family::gauge(
        mode,
        "tally_consumer_group_topic_max_lag_seconds",
        "Largest lag in seconds of any partition of the topic with current lag, per group",
    );
    let mut offsets: BTreeMap<(&str, &str, i32), (i64, i64)> = BTreeMap::new();
    for g in &s.groups {
        let gl = [("cluster", g.cluster.as_str()), ("group", g.group.as_str())];
        // A group whose every partition is stale has no current lag.
        if !g.stale {
            group_lag.push(&gl, g.lag_records as f64);
            group_lag_s.push(&gl, g.max_lag_seconds);
        }
        let mut per_topic: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
        for p in g.partitions.iter().filter(|p| !p.stale) {
            let t = per_topic.entry(p.topic.as_str()).or_default();
            t.0 += p.lag_records;
            t.1 = t.1.max(p.lag_seconds);
        }
        for (topic, (records, seconds)) in per_topic {
            let l = [
                ("cluster", g.cluster.as_str()),
                ("group", g.group.as_str()),
                ("topic", topic),
            ];
            topic_lag.push(&l, records as f64);
            topic_lag_s.push(&l, seconds);
        }
        for status in GroupStatus::ALL {
            group_status.push(
                &[
                    ("cluster", g.cluster.as_str()),
                    ("group", g.group.as_str()),
                    ("status", status.as_str()),
                ],
                f64::from(u8::from(g.status == status)),
            );
        }
        for p in g.partitions.iter() {
            let partition = p.partition.to_string();
            let pairs = [
                ("cluster", g.cluster.as_str()),
                ("group", g.group.as_str()),
                ("topic", p.topic.as_str()),
                ("partition", partition.as_str()),
            ];
            let l = Labels::new(&pairs, mode);
            stale.push_labels(&l, f64::from(u8::from(p.stale)));
            if !p.stale {
                lag.push_labels(&l, p.lag_records as f64);
                lag_s.push_labels(&l, p.lag_seconds);
                committed.push_labels(&l, p.committed as f64);
                estimated.push_labels(&l, f64::from(u8::from(p.estimated)));
            }
            // One series per partition, not five: at 100,000 partitions the
            // one-hot form would be half of all series.
            part_status.push_labels_and(&l, ("status", p.status.as_str()), 1.0);
            if p.stale {
                continue;
            }
            let e = offsets
                .entry((g.cluster.as_str(), p.topic.as_str(), p.partition))
                .or_insert((p.end_offset, p.start_offset));
            e.0 = e.0.max(p.end_offset);
            e.1 = e.1.max(p.start_offset);
        }
    }
    let mut end = Family::gauge(
        mode,
        "tally_partition_end_offset",
        "Log end offset per partition",
    );
    let mut start = Family::gauge(
        mode,
        "tally_partition_start_offset",
        "Log start offset per partition",
    );
    for ((cluster, topic, partition), (e, st)) in offsets {
        let partition = partition.to_string();
        let l = [
            ("cluster", cluster),
            ("topic", topic),
            ("partition", partition.as_str()),
        ];
        end.push(&l, e as f64);
        start.push(&l, st as f64);
    }

    let cluster_families = cluster_families(s, mode);

    let mut last_seen = Family::gauge(
        mode,
        "tally_source_last_seen_timestamp_seconds",
        "When the source last sent a message",
    );
    let mut messages = Family::counter(
        mode,
        "tally_ingest_messages_total",
        "Ingest messages accepted per source and type",
    );
    for src in &s.sources {
        let l = [
            ("cluster", src.cluster.as_str()),
            ("source", src.source.as_str()),
        ];
        last_seen.push(&l, src.last_seen_ms as f64 / 1000.0);
        for (kind, n) in &src.messages {
            messages.push(
                &[
                    ("cluster", src.cluster.as_str()),
                    ("source", src.source.as_str()),
                    ("type", kind.as_str()),
                ],
                *n as f64,
            );
        }
    }

    let mut alerts = Family::gauge(
        mode,
        "tally_alerts",
        "Alerts per name, severity and state (pending or firing)",
    );
    let mut alert_counts: BTreeMap<(&str, &str, &str, &str), u64> = BTreeMap::new();
    for a in &s.alerts {
        if a.state == "pending" || a.state == "firing" {
            let cluster = a.labels.get("cluster").map_or("", String::as_str);
            *alert_counts
                .entry((
                    cluster,
                    a.alertname.as_str(),
                    a.severity.as_str(),
                    a.state.as_str(),
                ))
                .or_default() += 1;
        }
    }
    for ((cluster, name, severity, state), n) in alert_counts {
        alerts.push(
            &[
                ("cluster", cluster),
                ("alertname", name),
                ("severity", severity),
                ("state", state),
            ],
            n as f64,
        );
    }

    [
        evaluated,
        records,
        missing,
        excess,
        expired,
        aborted,
        completeness,
        pending,
        buckets,
        mirror_lag,
        mirror_lag_s,
        latency,
        lag,
        lag_s,
        committed,
        group_lag,
        group_lag_s,
        group_status,
        part_status,
        estimated,
        stale,
        topic_lag,
        topic_lag_s,
        end,
        start,
        last_seen,
        messages,
        alerts,
    ]
    .into_iter()
    .chain(cluster_families)
    .filter(|f| !f.is_empty())
    .collect()
}

/// The series of the cluster states that collectors report. Where two
/// sources report one cluster, the one heard from last is shown, so that no
/// series appears twice.
fn cluster_families(s: &Snapshot, mode: Mode) -> Vec<Family> {
    let mut brokers = Family::gauge(mode, "tally_cluster_brokers", "Live brokers of the cluster");
    let mut offline = Family::gauge(
        mode,
        "tally_cluster_offline_partitions",
        "Partitions without a leader",
    );
    let mut partitions = Family::gauge(mode, "tally_topic_partitions", "Partitions of the topic");
    let mut leader = Family::gauge(
        mode,
        "tally_partition_leader",
        "Broker id of the partition's leader; -1 when it has none (offline)",
    );
    let mut replicas = Family::gauge(
        mode,
        "tally_partition_replicas",
        "Replicas assigned to the partition",
    );
    let mut isr = Family::gauge(
        mode,
        "tally_partition_in_sync_replicas",
        "Replicas of the partition in sync",
    );
    let mut under = Family::gauge(
        mode,
        "tally_partition_under_replicated",
        "1 when fewer replicas of the partition are in sync than assigned, 0 otherwise",
    );
    let mut members = Family::gauge(
        mode,
        "tally_consumer_group_members",
        "Members of the consumer group",
    );
    let mut state = Family::gauge(
        mode,
        "tally_consumer_group_state",
        "1 for the consumer group's current state as Kafka names it, 0 for the others",
    );
    let mut latest: BTreeMap<&str, &tally_audit::snapshot::ClusterInfo> = BTreeMap::new();
    for c in &s.clusters {
        let e = latest.entry(c.cluster.as_str()).or_insert(c);
        if c.received_ms > e.received_ms {
            *e = c;
        }
    }
    for (cluster, c) in latest {
        brokers.push(&[("cluster", cluster)], f64::from(c.brokers));
        offline.push(&[("cluster", cluster)], c.offline_partitions as f64);
        for t in &c.topics {
            let topic = t.topic.as_str();
            partitions.push(
                &[("cluster", cluster), ("topic", topic)],
                t.partitions.len() as f64,
            );
            for p in &t.partitions {
                let partition = p.partition.to_string();
                let l = [
                    ("cluster", cluster),
                    ("topic", topic),
                    ("partition", partition.as_str()),
                ];
                leader.push(&l, f64::from(p.leader));
                replicas.push(&l, f64::from(p.replicas));
                isr.push(&l, f64::from(p.in_sync_replicas));
                under.push(&l, f64::from(u8::from(p.is_under_replicated())));
            }
        }
        for g in &c.groups {
            let group = g.group.as_str();
            members.push(
                &[("cluster", cluster), ("group", group)],
                f64::from(g.members),
            );
            for st in GroupState::ALL {
                state.push(
                    &[
                        ("cluster", cluster),
                        ("group", group),
                        ("state", st.as_str()),
                    ],
                    f64::from(u8::from(g.state == st)),
                );
            }
        }
    }
    vec![
        brokers, offline, partitions, leader, replicas, isr, under, members, state,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot with every kind of series: books of a broker and two group
    /// tiers, lag (estimated and stale among it), latency histograms, an
    /// alert, a source, a collector's cluster state, and a group name whose
    /// quote, backslash and non-ASCII letters must be escaped or kept.
    fn snapshot() -> Snapshot {
        let group = "we\"ird\\grüp";
        serde_json::from_value(serde_json::json!({
            "at_ms": 1_732_800_000_123_i64, "width_ms": 60_000, "grace_ms": 120_000,
            "window_ms": 3_600_000,
            "topics": [{"cluster": "local", "topic": "orders", "reference": "broker",
                "tiers": {
                    "broker": {"records": 1200, "bytes": 120_000, "completeness": 1.0,
                        "missing": 0, "excess": 0, "no_timestamp": 3, "aborted": 7,
                        "buckets": {"complete": 4, "open": 1}},
                    "group:billing": {"records": 1150, "bytes": 0, "completeness": 0.958_333_333_3,
                        "missing": 2, "excess": 1, "pending": 50, "expired": 4, "skipped": 0,
                        "no_timestamp": 0, "buckets": {"pending": 1, "late": 2}},
                    (format!("group:{group}")): {"records": 0, "bytes": 0, "completeness": 0.0,
                        "missing": 0, "excess": 0, "pending": 1200, "expired": 0, "skipped": 5,
                        "no_timestamp": 0, "buckets": {}}}}],
            "buckets": [],
            "groups": [{"cluster": "local", "group": "billing", "status": "warn",
                "lag_records": 50, "max_lag_seconds": 3.25, "stale": false,
                "partitions": [
                    {"topic": "orders", "partition": 0, "committed": 350, "end_offset": 400,
                     "start_offset": 0, "lag_records": 50, "lag_seconds": 3.25, "status": "ok",
                     "commit_at_ms": 1_732_799_999_000_i64, "commits": [], "estimated": true},
                    {"topic": "orders", "partition": 1, "committed": 10, "end_offset": 10,
                     "start_offset": 2, "lag_records": 0, "lag_seconds": 0.0, "status": "stall",
                     "commit_at_ms": 1_732_799_000_000_i64, "commits": [], "stale": true}]},
                {"cluster": "copy", "group": group, "status": "ok", "lag_records": 0,
                 "max_lag_seconds": 0.0, "partitions": []}],
            "sources": [{"source": "broker-1", "cluster": "local", "tier_kinds": ["broker", "group"],
                "last_seen_ms": 1_732_800_000_000_i64, "messages": {"counts": 12, "lag": 3},
                "errors": 1, "connected": true}],
            "alerts": [{"alertname": "ConsumerLagHigh", "state": "firing", "severity": "page",
                "labels": {"group": "billing"}, "annotations": {}, "since_ms": 1_732_799_000_000_i64,
                "value": 3.25}],
            "latency": [{"cluster": "local", "topic": "orders", "tier": "broker",
                "bounds_ms": [5, 10, 2_500, 3_600_000], "counts": [1, 4, 9, 9], "count": 10,
                "sum_ms": 12_345}],
            "clusters": [{"cluster": "copy", "source": "collect-copy", "at_ms": 1_732_800_000_000_i64,
                "received_ms": 1_732_800_000_001_i64, "brokers": 3, "partitions": 2,
                "offline_partitions": 1, "under_replicated_partitions": 1,
                "topics": [{"topic": "orders", "partitions": [
                    {"partition": 0, "leader": 1, "replicas": 3, "in_sync_replicas": 3},
                    {"partition": 1, "leader": -1, "replicas": 3, "in_sync_replicas": 0}]}],
                "groups": [{"group": group, "state": "Stable", "members": 2}]}]
        }))
        .expect("a valid snapshot")
    }

    #[test]
    fn values_are_written_as_rust_prints_an_f64() {
        for v in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            7.0,
            1200.0,
            -1_234_567.0,
            0.5,
            3.25,
            1_732_800_000.123,
            9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            1e300,
            -1e-300,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let mut out = String::new();
            push_value(&mut out, v);
            assert_eq!(out, v.to_string());
        }
    }

    /// The text written straight from the snapshot is, byte for byte, what the
    /// `prometheus` crate's encoder writes of the same series: the families
    /// the OTLP export reads and the text `/metrics` serves cannot drift.
    #[test]
    fn the_text_written_directly_equals_the_prometheus_encoders() {
        let s = snapshot();
        let direct = String::from_utf8(snapshot_text(&s)).unwrap();
        let encoded = String::from_utf8(encode(&snapshot_families(&s))).unwrap();
        assert_eq!(direct, encoded);
        // The cases that matter are in it.
        for needle in [
            r#"group="we\"ird\\grüp""#,
            "tally_audit_latency_seconds_bucket{cluster=\"local\",topic=\"orders\",tier=\"broker\",le=\"+Inf\"} 10",
            "tally_audit_aborted_records_total{cluster=\"local\",topic=\"orders\"} 7",
            "tally_partition_leader{cluster=\"copy\",topic=\"orders\",partition=\"1\"} -1",
            "tally_agent_evaluated_timestamp_seconds 1732800000.123",
        ] {
            assert!(direct.contains(needle), "{needle} is not in:\n{direct}");
        }
    }
}
