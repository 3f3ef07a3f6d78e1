//! What `/metrics` would cost through the two Prometheus crates used as they
//! are meant to be used, for comparison with the agent's direct encoder
//! (`snapshot_text`, `render_*` in `metrics.rs`): issue 16.
//!
//! Each crate keeps its families in a registry from tick to tick. A tick sets
//! every series from the snapshot, adds the series that are new and removes
//! those the snapshot no longer has; a scrape encodes the registry as text.
//! To set a value without building its label set again, each family keeps the
//! handle of every series by its label values, with the tick that last set it
//! (which is also how a tick finds the series that vanished).
//!
//! - `prometheus_*`: the `prometheus` crate (`IntCounterVec`, `IntGaugeVec`,
//!   `GaugeVec` in a `Registry`, then `TextEncoder`).
//! - `client_*`: `prometheus-client` (`Family<labels, Counter | Gauge>` in a
//!   `Registry`, then its encoder of the Prometheus text format 0.0.4, the
//!   format `/metrics` serves).
//!
//! `*_update_*` is one tick in which every count, ratio, lag, offset and
//! timestamp changed (two such snapshots, set in turn); `*_encode_*` is the
//! scrape. Their sum is what compares with `render_*`, which writes the text
//! straight from the snapshot. The snapshots are those of `metrics.rs`.
//!
//! Before measuring, the setup checks that each crate's text has as many
//! sample lines as `snapshot_text` of the same snapshot, after a first tick,
//! after a tick where series vanished and a partition's status changed, and
//! after a tick where they came back. One family has no equivalent in either
//! crate: `tally_audit_latency_seconds`, histograms whose buckets (bounds per
//! series) and counts the snapshot already holds, where both crates'
//! histograms only observe values; the bench snapshots have none.
//!
//! Run with `cargo bench -p tally-agent --bench metrics_options`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter as ClientCounter;
use prometheus_client::metrics::family::Family as ClientFamily;
use prometheus_client::metrics::gauge::Gauge as ClientGauge;
use prometheus_client::registry::Registry as ClientRegistry;
use rustc_hash::FxHashMap;
use tally_agent::metrics::snapshot_text;
use tally_audit::{BucketStatus, GroupState, GroupStatus, PartitionStatus, Snapshot};

mod common;
use common::{series_in, snapshot};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `_total` counter, set from the snapshot's count.
    Counter,
    /// A gauge of whole numbers.
    Int,
    /// A gauge of fractions (ratios, seconds).
    Float,
}

/// A family of `agent/src/metrics.rs`: its name, help, type and label names.
struct Def {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
}

const CTT: &[&str] = &["cluster", "topic", "tier"];
const CGTP: &[&str] = &["cluster", "group", "topic", "partition"];
const CTP: &[&str] = &["cluster", "topic", "partition"];

const EVALUATED: usize = 0;
const RECORDS: usize = 1;
const MISSING: usize = 2;
const EXCESS: usize = 3;
const EXPIRED: usize = 4;
const ABORTED: usize = 5;
const COMPLETENESS: usize = 6;
const PENDING: usize = 7;
const BUCKETS: usize = 8;
const LAG: usize = 9;
const LAG_S: usize = 10;
const COMMITTED: usize = 11;
const GROUP_LAG: usize = 12;
const GROUP_LAG_S: usize = 13;
const GROUP_STATUS: usize = 14;
const PART_STATUS: usize = 15;
const ESTIMATED: usize = 16;
const STALE: usize = 17;
const TOPIC_LAG: usize = 18;
const TOPIC_LAG_S: usize = 19;
const END: usize = 20;
const START: usize = 21;
const LAST_SEEN: usize = 22;
const MESSAGES: usize = 23;
const ALERTS: usize = 24;
const BROKERS: usize = 25;
const OFFLINE: usize = 26;
const TOPIC_PARTITIONS: usize = 27;
const LEADER: usize = 28;
const REPLICAS: usize = 29;
const ISR: usize = 30;
const UNDER: usize = 31;
const MEMBERS: usize = 32;
const STATE: usize = 33;

/// Every family of the snapshot but the latency histogram, indexed by the
/// constants above; names and helps as `agent/src/metrics.rs` has them.
const FAMILIES: [Def; 34] = [
    Def {
        name: "tally_agent_evaluated_timestamp_seconds",
        help: "When the books, lag and alerts these series show were evaluated (Unix seconds)",
        kind: Kind::Float,
        labels: &[],
    },
    Def {
        name: "tally_audit_records_total",
        help: "Records counted per topic and tier",
        kind: Kind::Counter,
        labels: CTT,
    },
    Def {
        name: "tally_audit_missing_records",
        help: "Records missing in closed buckets of the window",
        kind: Kind::Int,
        labels: CTT,
    },
    Def {
        name: "tally_audit_excess_records",
        help: "Duplicate records in closed buckets of the window",
        kind: Kind::Int,
        labels: CTT,
    },
    Def {
        name: "tally_audit_expired_records_total",
        help: "Records deleted by retention before the group consumed them",
        kind: Kind::Counter,
        labels: &["cluster", "topic", "group"],
    },
    Def {
        name: "tally_audit_aborted_records_total",
        help: "Records of aborted transactions in the log, counted apart from the broker tier's records",
        kind: Kind::Counter,
        labels: &["cluster", "topic"],
    },
    Def {
        name: "tally_audit_completeness_ratio",
        help: "Records of the tier over the reference tier's, in closed buckets of the window",
        kind: Kind::Float,
        labels: CTT,
    },
    Def {
        name: "tally_audit_pending_records",
        help: "Reference records a group has not consumed yet",
        kind: Kind::Int,
        labels: CTT,
    },
    Def {
        name: "tally_audit_buckets",
        help: "Buckets of the window per status",
        kind: Kind::Int,
        labels: &["cluster", "topic", "tier", "status"],
    },
    Def {
        name: "tally_consumer_lag_records",
        help: "Consumer lag in records per partition",
        kind: Kind::Int,
        labels: CGTP,
    },
    Def {
        name: "tally_consumer_lag_seconds",
        help: "Consumer lag in seconds per partition: now minus the timestamp of the first unconsumed record",
        kind: Kind::Float,
        labels: CGTP,
    },
    Def {
        name: "tally_consumer_committed_offset",
        help: "Committed offset per partition",
        kind: Kind::Int,
        labels: CGTP,
    },
    Def {
        name: "tally_consumer_group_lag_records",
        help: "Consumer lag in records per group",
        kind: Kind::Int,
        labels: &["cluster", "group"],
    },
    Def {
        name: "tally_consumer_group_max_lag_seconds",
        help: "Largest lag in seconds of any partition of the group",
        kind: Kind::Float,
        labels: &["cluster", "group"],
    },
    Def {
        name: "tally_consumer_group_status",
        help: "1 for the group's current status (ok, warn, err), 0 for the others",
        kind: Kind::Int,
        labels: &["cluster", "group", "status"],
    },
    Def {
        name: "tally_consumer_partition_status",
        help: "1 for the partition's current status (ok, warn, stop, stall, rewind); only the current status has a series",
        kind: Kind::Int,
        labels: &["cluster", "group", "topic", "partition", "status"],
    },
    Def {
        name: "tally_consumer_lag_estimated",
        help: "1 where the partition's lag seconds are estimated from offsets and timestamps seen before (the record at the committed offset could not be read), 0 where read from the record",
        kind: Kind::Int,
        labels: CGTP,
    },
    Def {
        name: "tally_consumer_lag_stale",
        help: "1 where the partition's lag was not refreshed for 3 lag intervals of its source (source down, cluster unreachable): its lag, committed offset and estimated series are left out until it is; 0 where current",
        kind: Kind::Int,
        labels: CGTP,
    },
    Def {
        name: "tally_consumer_group_topic_lag_records",
        help: "Consumer lag in records per group and topic (sum over the partitions with current lag)",
        kind: Kind::Int,
        labels: &["cluster", "group", "topic"],
    },
    Def {
        name: "tally_consumer_group_topic_max_lag_seconds",
        help: "Largest lag in seconds of any partition of the topic with current lag, per group",
        kind: Kind::Float,
        labels: &["cluster", "group", "topic"],
    },
    Def {
        name: "tally_partition_end_offset",
        help: "Log end offset per partition",
        kind: Kind::Int,
        labels: CTP,
    },
    Def {
        name: "tally_partition_start_offset",
        help: "Log start offset per partition",
        kind: Kind::Int,
        labels: CTP,
    },
    Def {
        name: "tally_source_last_seen_timestamp_seconds",
        help: "When the source last sent a message",
        kind: Kind::Float,
        labels: &["cluster", "source"],
    },
    Def {
        name: "tally_ingest_messages_total",
        help: "Ingest messages accepted per source and type",
        kind: Kind::Counter,
        labels: &["cluster", "source", "type"],
    },
    Def {
        name: "tally_alerts",
        help: "Alerts per name, severity and state (pending or firing)",
        kind: Kind::Int,
        labels: &["cluster", "alertname", "severity", "state"],
    },
    Def {
        name: "tally_cluster_brokers",
        help: "Live brokers of the cluster",
        kind: Kind::Int,
        labels: &["cluster"],
    },
    Def {
        name: "tally_cluster_offline_partitions",
        help: "Partitions without a leader",
        kind: Kind::Int,
        labels: &["cluster"],
    },
    Def {
        name: "tally_topic_partitions",
        help: "Partitions of the topic",
        kind: Kind::Int,
        labels: &["cluster", "topic"],
    },
    Def {
        name: "tally_partition_leader",
        help: "Broker id of the partition's leader; -1 when it has none (offline)",
        kind: Kind::Int,
        labels: CTP,
    },
    Def {
        name: "tally_partition_replicas",
        help: "Replicas assigned to the partition",
        kind: Kind::Int,
        labels: CTP,
    },
    Def {
        name: "tally_partition_in_sync_replicas",
        help: "Replicas of the partition in sync",
        kind: Kind::Int,
        labels: CTP,
    },
    Def {
        name: "tally_partition_under_replicated",
        help: "1 when fewer replicas of the partition are in sync than assigned, 0 otherwise",
        kind: Kind::Int,
        labels: CTP,
    },
    Def {
        name: "tally_consumer_group_members",
        help: "Members of the consumer group",
        kind: Kind::Int,
        labels: &["cluster", "group"],
    },
    Def {
        name: "tally_consumer_group_state",
        help: "1 for the consumer group's current state as Kafka names it, 0 for the others",
        kind: Kind::Int,
        labels: &["cluster", "group", "state"],
    },
];

/// Calls `set(family, label values, value)` once for every series that
/// `snapshot_text` writes of `s` (but the latency histogram), deriving them
/// the same way.
fn each_series(s: &Snapshot, mut set: impl FnMut(usize, &[&str], f64)) {
    set(EVALUATED, &[], s.at_ms as f64 / 1000.0);
    for t in &s.topics {
        let (cluster, topic) = (t.cluster.as_str(), t.topic.as_str());
        for (tier, b) in &t.tiers {
            let l = [cluster, topic, tier.as_str()];
            set(RECORDS, &l, b.records as f64);
            set(MISSING, &l, b.missing as f64);
            set(EXCESS, &l, b.excess as f64);
            set(COMPLETENESS, &l, b.completeness);
            if let Some(p) = b.pending {
                set(PENDING, &l, p as f64);
            }
            if tier == "broker" {
                set(ABORTED, &[cluster, topic], b.aborted as f64);
            }
            if let (Some(e), Some(group)) = (b.expired, tier.strip_prefix("group:")) {
                set(EXPIRED, &[cluster, topic, group], e as f64);
            }
            for status in BucketStatus::ALL {
                let n = b.buckets.get(&status).copied().unwrap_or(0);
                set(
                    BUCKETS,
                    &[cluster, topic, tier.as_str(), status.as_str()],
                    n as f64,
                );
            }
        }
    }

    let mut offsets: BTreeMap<(&str, &str, i32), (i64, i64)> = BTreeMap::new();
    let mut partition = String::new();
    for g in &s.groups {
        let (cluster, group) = (g.cluster.as_str(), g.group.as_str());
        if !g.stale {
            set(GROUP_LAG, &[cluster, group], g.lag_records as f64);
            set(GROUP_LAG_S, &[cluster, group], g.max_lag_seconds);
        }
        let mut per_topic: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
        for p in g.partitions.iter().filter(|p| !p.stale) {
            let t = per_topic.entry(p.topic.as_str()).or_default();
            t.0 += p.lag_records;
            t.1 = t.1.max(p.lag_seconds);
        }
        for (topic, (records, seconds)) in per_topic {
            set(TOPIC_LAG, &[cluster, group, topic], records as f64);
            set(TOPIC_LAG_S, &[cluster, group, topic], seconds);
        }
        for status in GroupStatus::ALL {
            set(
                GROUP_STATUS,
                &[cluster, group, status.as_str()],
                f64::from(u8::from(g.status == status)),
            );
        }
        for p in g.partitions.iter() {
            partition.clear();
            let _ = write!(partition, "{}", p.partition);
            let l = [cluster, group, p.topic.as_str(), partition.as_str()];
            set(STALE, &l, f64::from(u8::from(p.stale)));
            if !p.stale {
                set(LAG, &l, p.lag_records as f64);
                set(LAG_S, &l, p.lag_seconds);
                set(COMMITTED, &l, p.committed as f64);
                set(ESTIMATED, &l, f64::from(u8::from(p.estimated)));
            }
            set(
                PART_STATUS,
                &[
                    cluster,
                    group,
                    p.topic.as_str(),
                    partition.as_str(),
                    p.status.as_str(),
                ],
                1.0,
            );
            if p.stale {
                continue;
            }
            let e = offsets
                .entry((cluster, p.topic.as_str(), p.partition))
                .or_insert((p.end_offset, p.start_offset));
            e.0 = e.0.max(p.end_offset);
            e.1 = e.1.max(p.start_offset);
        }
    }
    for ((cluster, topic, p), (end, start)) in offsets {
        partition.clear();
        let _ = write!(partition, "{p}");
        set(END, &[cluster, topic, partition.as_str()], end as f64);
        set(START, &[cluster, topic, partition.as_str()], start as f64);
    }

    let mut latest: BTreeMap<&str, &tally_audit::snapshot::ClusterInfo> = BTreeMap::new();
    for c in &s.clusters {
        let e = latest.entry(c.cluster.as_str()).or_insert(c);
        if c.received_ms > e.received_ms {
            *e = c;
        }
    }
    for (cluster, c) in latest {
        set(BROKERS, &[cluster], f64::from(c.brokers));
        set(OFFLINE, &[cluster], c.offline_partitions as f64);
        for t in &c.topics {
            let topic = t.topic.as_str();
            set(
                TOPIC_PARTITIONS,
                &[cluster, topic],
                t.partitions.len() as f64,
            );
            for p in &t.partitions {
                partition.clear();
                let _ = write!(partition, "{}", p.partition);
                let l = [cluster, topic, partition.as_str()];
                set(LEADER, &l, f64::from(p.leader));
                set(REPLICAS, &l, f64::from(p.replicas));
                set(ISR, &l, f64::from(p.in_sync_replicas));
                set(UNDER, &l, f64::from(u8::from(p.is_under_replicated())));
            }
        }
        for g in &c.groups {
            let group = g.group.as_str();
            set(MEMBERS, &[cluster, group], f64::from(g.members));
            for st in GroupState::ALL {
                set(
                    STATE,
                    &[cluster, group, st.as_str()],
                    f64::from(u8::from(g.state == st)),
                );
            }
        }
    }

    for src in &s.sources {
        let (cluster, source) = (src.cluster.as_str(), src.source.as_str());
        set(
            LAST_SEEN,
            &[cluster, source],
            src.last_seen_ms as f64 / 1000.0,
        );
        for (kind, n) in &src.messages {
            set(MESSAGES, &[cluster, source, kind.as_str()], *n as f64);
        }
    }

    let mut alerts: BTreeMap<(&str, &str, &str, &str), u64> = BTreeMap::new();
    for a in &s.alerts {
        if a.state == "pending" || a.state == "firing" {
            let cluster = a.labels.get("cluster").map_or("", String::as_str);
            *alerts
                .entry((
                    cluster,
                    a.alertname.as_str(),
                    a.severity.as_str(),
                    a.state.as_str(),
                ))
                .or_default() += 1;
        }
    }
    for ((cluster, name, severity, state), n) in alerts {
        set(ALERTS, &[cluster, name, severity, state], n as f64);
    }
}

/// One family of a metrics crate: how a tick adds, sets and removes a series.
trait CrateFamily {
    /// The handle of one series.
    type Series;
    fn add(&self, labels: &[&str]) -> Self::Series;
    fn set(series: &Self::Series, value: f64);
    fn remove(&self, labels: &[&str]);
}

/// A family and its series by label values, each with the tick that last
/// set it.
struct Tracked<F: CrateFamily> {
    family: F,
    series: FxHashMap<Box<[u8]>, (F::Series, u64)>,
}

/// What a crate keeps between ticks besides its registry.
struct Families<F: CrateFamily> {
    tracked: Vec<Tracked<F>>,
    tick: u64,
    /// The key of the series being set (label values, each after its length).
    key: Vec<u8>,
}

impl<F: CrateFamily> Families<F> {
    fn new(families: impl IntoIterator<Item = F>) -> Self {
        Families {
            tracked: families
                .into_iter()
                .map(|family| Tracked {
                    family,
                    series: FxHashMap::default(),
                })
                .collect(),
            tick: 0,
            key: Vec::new(),
        }
    }

    /// Sets every series of `s`, adding those new since the last tick, and
    /// removes those that `s` no longer has.
    fn update(&mut self, s: &Snapshot) {
        self.tick += 1;
        let tick = self.tick;
        let Families { tracked, key, .. } = self;
        each_series(s, |f, labels, value| {
            let Tracked { family, series } = &mut tracked[f];
            key.clear();
            for l in labels {
                key.extend_from_slice(&(l.len() as u32).to_le_bytes());
                key.extend_from_slice(l.as_bytes());
            }
            if let Some((handle, seen)) = series.get_mut(key.as_slice()) {
                F::set(handle, value);
                *seen = tick;
            } else {
                let handle = family.add(labels);
                F::set(&handle, value);
                series.insert(key.as_slice().into(), (handle, tick));
            }
        });
        for Tracked { family, series } in tracked.iter_mut() {
            series.retain(|key, (_, seen)| {
                if *seen != tick {
                    family.remove(&label_values(key));
                }
                *seen == tick
            });
        }
    }
}

/// The label values of a series' key.
fn label_values(mut key: &[u8]) -> Vec<&str> {
    let mut values = Vec::new();
    while let Some((len, rest)) = key.split_first_chunk::<4>() {
        let (value, rest) = rest.split_at(u32::from_le_bytes(*len) as usize);
        values.push(std::str::from_utf8(value).expect("keys are made of label values"));
        key = rest;
    }
    values
}

/// A way of rendering `/metrics` that keeps its families between ticks.
trait Exporter {
    /// One tick: the families brought to `s`.
    fn update(&mut self, s: &Snapshot);
    /// One scrape: the families as text.
    fn encode(&self, capacity: usize) -> Vec<u8>;
}

enum PrometheusFamily {
    Counter(IntCounterVec),
    Int(IntGaugeVec),
    Float(GaugeVec),
}

enum PrometheusSeries {
    Counter(IntCounter),
    Int(IntGauge),
    Float(Gauge),
}

impl CrateFamily for PrometheusFamily {
    type Series = PrometheusSeries;

    fn add(&self, labels: &[&str]) -> PrometheusSeries {
        match self {
            Self::Counter(v) => PrometheusSeries::Counter(v.with_label_values(labels)),
            Self::Int(v) => PrometheusSeries::Int(v.with_label_values(labels)),
            Self::Float(v) => PrometheusSeries::Float(v.with_label_values(labels)),
        }
    }

    fn set(series: &PrometheusSeries, value: f64) {
        match series {
            // A counter has no `set`: it is moved up to the count, or reset
            // first where the count went down.
            PrometheusSeries::Counter(c) => {
                let (to, now) = (value as u64, c.get());
                if to < now {
                    c.reset();
                    c.inc_by(to);
                } else {
                    c.inc_by(to - now);
                }
            }
            PrometheusSeries::Int(g) => g.set(value as i64),
            PrometheusSeries::Float(g) => g.set(value),
        }
    }

    fn remove(&self, labels: &[&str]) {
        match self {
            Self::Counter(v) => v.remove_label_values(labels),
            Self::Int(v) => v.remove_label_values(labels),
            Self::Float(v) => v.remove_label_values(labels),
        }
        .expect("a series set by an earlier tick");
    }
}

/// The `prometheus` crate's families in its registry.
struct PrometheusCrate {
    registry: Registry,
    families: Families<PrometheusFamily>,
}

impl PrometheusCrate {
    fn new() -> Self {
        let registry = Registry::new();
        let families = FAMILIES.iter().map(|d| {
            let opts = Opts::new(d.name, d.help);
            let family = match d.kind {
                Kind::Counter => PrometheusFamily::Counter(
                    IntCounterVec::new(opts, d.labels).expect("valid family"),
                ),
                Kind::Int => {
                    PrometheusFamily::Int(IntGaugeVec::new(opts, d.labels).expect("valid family"))
                }
                Kind::Float => {
                    PrometheusFamily::Float(GaugeVec::new(opts, d.labels).expect("valid family"))
                }
            };
            let collector: Box<dyn prometheus::core::Collector> = match &family {
                PrometheusFamily::Counter(v) => Box::new(v.clone()),
                PrometheusFamily::Int(v) => Box::new(v.clone()),
                PrometheusFamily::Float(v) => Box::new(v.clone()),
            };
            registry.register(collector).expect("unique family names");
            family
        });
        let families = Families::new(families.collect::<Vec<_>>());
        PrometheusCrate { registry, families }
    }
}

impl Exporter for PrometheusCrate {
    fn update(&mut self, s: &Snapshot) {
        self.families.update(s);
    }

    fn encode(&self, capacity: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(capacity);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encodable");
        out
    }
}

/// prometheus-client's label set: the names are the family's, fixed.
type Labels = Vec<(&'static str, String)>;
type FloatGauge = ClientGauge<f64, AtomicU64>;

enum ClientMetric {
    Counter(ClientFamily<Labels, ClientCounter>),
    Int(ClientFamily<Labels, ClientGauge>),
    Float(ClientFamily<Labels, FloatGauge>),
}

struct ClientSeriesFamily {
    names: &'static [&'static str],
    metric: ClientMetric,
}

enum ClientSeries {
    Counter(ClientCounter),
    Int(ClientGauge),
    Float(FloatGauge),
}

impl ClientSeriesFamily {
    fn labels(&self, values: &[&str]) -> Labels {
        self.names
            .iter()
            .zip(values)
            .map(|(&k, &v)| (k, v.to_owned()))
            .collect()
    }
}

impl CrateFamily for ClientSeriesFamily {
    type Series = ClientSeries;

    fn add(&self, labels: &[&str]) -> ClientSeries {
        let labels = self.labels(labels);
        match &self.metric {
            ClientMetric::Counter(f) => ClientSeries::Counter(f.get_or_create_owned(&labels)),
            ClientMetric::Int(f) => ClientSeries::Int(f.get_or_create_owned(&labels)),
            ClientMetric::Float(f) => ClientSeries::Float(f.get_or_create_owned(&labels)),
        }
    }

    fn set(series: &ClientSeries, value: f64) {
        match series {
            // A counter has no `set`; its atomic is exposed for such uses.
            ClientSeries::Counter(c) => c.inner().store(value as u64, Ordering::Relaxed),
            ClientSeries::Int(g) => {
                g.set(value as i64);
            }
            ClientSeries::Float(g) => {
                g.set(value);
            }
        }
    }

    fn remove(&self, labels: &[&str]) {
        let labels = self.labels(labels);
        let removed = match &self.metric {
            ClientMetric::Counter(f) => f.remove(&labels),
            ClientMetric::Int(f) => f.remove(&labels),
            ClientMetric::Float(f) => f.remove(&labels),
        };
        assert!(removed, "a series set by an earlier tick");
    }
}

/// prometheus-client's families in its registry.
struct ClientCrate {
    registry: ClientRegistry,
    families: Families<ClientSeriesFamily>,
}

impl ClientCrate {
    fn new() -> Self {
        let mut registry = ClientRegistry::default();
        let families: Vec<ClientSeriesFamily> = FAMILIES
            .iter()
            .map(|d| {
                let metric = match d.kind {
                    Kind::Counter => {
                        let f = ClientFamily::<Labels, ClientCounter>::default();
                        // The encoder adds the `_total` suffix.
                        let name = d.name.strip_suffix("_total").unwrap_or(d.name);
                        registry.register(name, d.help, f.clone());
                        ClientMetric::Counter(f)
                    }
                    Kind::Int => {
                        let f = ClientFamily::<Labels, ClientGauge>::default();
                        registry.register(d.name, d.help, f.clone());
                        ClientMetric::Int(f)
                    }
                    Kind::Float => {
                        let f = ClientFamily::<Labels, FloatGauge>::default();
                        registry.register(d.name, d.help, f.clone());
                        ClientMetric::Float(f)
                    }
                };
                ClientSeriesFamily {
                    names: d.labels,
                    metric,
                }
            })
            .collect();
        ClientCrate {
            registry,
            families: Families::new(families),
        }
    }
}

impl Exporter for ClientCrate {
    fn update(&mut self, s: &Snapshot) {
        self.families.update(s);
    }

    fn encode(&self, capacity: usize) -> Vec<u8> {
        let mut out = String::with_capacity(capacity);
        prometheus_text::encode(&mut out, &self.registry).expect("encodable");
        out.into_bytes()
    }
}

/// `s` a tick later: every count, ratio, lag, offset and timestamp moved,
/// the same series.
fn changed(s: &Snapshot) -> Snapshot {
    let mut s = s.clone();
    s.at_ms += 1_000;
    for t in &mut s.topics {
        for b in std::sync::Arc::make_mut(t).tiers.values_mut() {
            b.records += 100;
            b.missing += 1;
            b.excess += 1;
            b.aborted += 1;
            b.completeness *= 0.999;
            for n in [&mut b.pending, &mut b.expired].into_iter().flatten() {
                *n += 1;
            }
            for n in b.buckets.values_mut() {
                *n += 1;
            }
        }
    }
    for g in &mut s.groups {
        let g = std::sync::Arc::make_mut(g);
        for p in std::sync::Arc::make_mut(&mut g.partitions).iter_mut() {
            p.committed += 100;
            p.end_offset += 101;
            p.start_offset += 50;
            p.lag_records += 1;
            p.lag_seconds += 0.25;
        }
        g.lag_records = g.partitions.iter().map(|p| p.lag_records).sum();
        g.max_lag_seconds += 0.25;
    }
    for src in &mut s.sources {
        src.last_seen_ms += 1_000;
        for n in src.messages.values_mut() {
            *n += 1;
        }
    }
    s
}

/// `s` with series gone: its last group no longer there, and one partition
/// stale and another with a new status.
fn vanished(s: &Snapshot) -> Snapshot {
    let mut s = s.clone();
    s.groups.pop();
    let partitions =
        std::sync::Arc::make_mut(&mut std::sync::Arc::make_mut(&mut s.groups[0]).partitions);
    partitions[0].stale = true;
    partitions[1].status = PartitionStatus::Stall;
    s
}

fn options(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics_options");
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(8));
    for (name, topics, groups) in [
        ("100k_partitions", 1_000, 1_000),
        ("12k_partitions", 1_000, 125),
    ] {
        let snap = snapshot(topics, groups);
        assert!(
            snap.latency.is_empty(),
            "neither crate expresses the latency histograms"
        );
        let next = changed(&snap);
        let direct = snapshot_text(&snap);
        let series = series_in(&direct);
        println!(
            "metrics_options/{name}: {series} series, {:.1} MiB of text written directly",
            direct.len() as f64 / 1_048_576.0
        );
        group.throughput(Throughput::Elements(series as u64));
        measure(
            &mut group,
            "prometheus",
            name,
            PrometheusCrate::new(),
            [&snap, &next],
            direct.len(),
        );
        measure(
            &mut group,
            "client",
            name,
            ClientCrate::new(),
            [&snap, &next],
            direct.len(),
        );
    }
    group.finish();
}

/// Checks that `exporter` shows the series of `snap` and `next` like
/// `snapshot_text`, then measures its tick and its scrape.
fn measure(
    group: &mut BenchmarkGroup<'_, WallTime>,
    way: &str,
    name: &str,
    mut exporter: impl Exporter,
    [snap, next]: [&Snapshot; 2],
    capacity: usize,
) {
    let started = Instant::now();
    exporter.update(snap);
    let first = started.elapsed();
    // Compares the sample lines with `snapshot_text`'s; gives the text's size.
    let same_series = |exporter: &dyn Exporter, s: &Snapshot| {
        let text = exporter.encode(capacity);
        assert_eq!(
            series_in(&text),
            series_in(&snapshot_text(s)),
            "{way}: the sample lines differ from snapshot_text's"
        );
        text.len()
    };
    let size = same_series(&exporter, snap);
    println!(
        "metrics_options/{way}_{name}: first tick (every series new) {:.0} ms, {:.1} MiB of text",
        first.as_secs_f64() * 1000.0,
        size as f64 / 1_048_576.0
    );
    for s in [&vanished(snap), next] {
        exporter.update(s);
        same_series(&exporter, s);
    }
    group.bench_function(format!("{way}_update_{name}"), |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            exporter.update(if flip { snap } else { next });
        })
    });
    group.bench_function(format!("{way}_encode_{name}"), |b| {
        b.iter(|| black_box(exporter.encode(capacity)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1));
    targets = options
}
criterion_main!(benches);
