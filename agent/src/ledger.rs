//! The audit ledger: the last cumulative value per (source, tier, topic,
//! partition, bucket), summed per (cluster, topic, tier, bucket), and each
//! consumer group's lag and health.
//!
//! The ledger is plain data with no locks and no I/O; the agent's service
//! owns it on one task, persists what [`Ledger::take_dirty`] hands out, and
//! calls [`Ledger::evaluate`] on its tick.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use rustc_hash::{FxHashMap, FxHashSet};
use tally_audit::snapshot::{
    BucketBooks, BucketTier, ClusterInfo, GroupHealth, LatencyBooks, PartitionLag, SourceInfo,
    TierBooks, TopicBooks, TopicBuckets,
};
use tally_audit::wire::AcceptRange;
use tally_audit::{
    BucketStatus, BucketWidth, CellCounts, CountEntry, Error as AuditError, GroupStatus, Hello,
    Lag, Latency, LatencyHistogram, Reason, Snapshot, Tier, TierKind,
};

use crate::health::{HealthConfig, PartitionHealth, group_status};
use crate::store::{
    CellRow, HealthRow, HistoryRow, Loaded, SeriesRow, Skipped, SourceRow, WriteBatch,
};
use crate::{Error, Result};

/// The shortest silence after which a connected session may be replaced.
pub const MIN_LIVE_MS: u64 = 30_000;

/// How the ledger judges buckets and what it keeps.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// The bucket width of the deployment.
    pub width: BucketWidth,
    /// How long after a bucket ends it stays `open`.
    pub grace_ms: u64,
    /// How far back gauges, completeness and the bucket view reach.
    pub window_ms: u64,
    /// How long cells and closed-bucket history are kept.
    pub retention_ms: u64,
    /// The most series (tier, topic, partition, or lag partition) one source may open.
    pub max_series_per_source: usize,
    /// The most series all sources together may open.
    pub max_series: usize,
    /// Burrow-style health settings.
    pub health: HealthConfig,
    /// How recently a connected session must have been heard from to be live: a
    /// `hello` of its source id is refused meanwhile. 3 ticks, but at least 30 s:
    /// emitters send nothing while nothing changes (no heartbeat), so a shorter
    /// silence is an idle emitter, not a lost one.
    pub live_ms: u64,
}

impl LedgerConfig {
    /// Defaults for `width`: grace 2 × width, window 1 h, retention 7 days.
    pub fn new(width: BucketWidth) -> Self {
        LedgerConfig {
            width,
            grace_ms: 2 * width.ms(),
            window_ms: 3_600_000,
            retention_ms: 7 * 86_400_000,
            max_series_per_source: 100_000,
            max_series: DEFAULT_MAX_SERIES,
            health: HealthConfig::default(),
            live_ms: MIN_LIVE_MS,
        }
    }
}

/// The default of [`LedgerConfig::max_series`].
pub const DEFAULT_MAX_SERIES: usize = 1_000_000;

/// The most sources (distinct `hello` source ids) the ledger keeps: every
/// source costs memory and a stored row for as long as the agent runs.
pub const MAX_SOURCES: usize = 10_000;

/// Identifies a source's open session; handed out by [`Ledger::hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Session {
    source: u32,
    epoch: i64,
}

impl Session {
    /// The source's id within the ledger.
    pub fn source_id(&self) -> u32 {
        self.source
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct CellKey {
    source: u32,
    series: u32,
    partition: i32,
    bucket: i64,
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    epoch: i64,
    seq: u64,
    v: CellCounts,
}

const MESSAGE_TYPES: [&str; 6] = ["hello", "counts", "lag", "latency", "forget", "cluster"];

/// The lag interval assumed for a partition until two samples show its own.
pub const DEFAULT_LAG_INTERVAL_MS: i64 = 10_000;
/// The shortest lag interval staleness is judged by, so that a source that
/// samples many times a second is not called stale over a short pause.
pub const MIN_LAG_INTERVAL_MS: i64 = 1_000;
/// Lag not refreshed for this many lag intervals is stale (DESIGN §2).
pub const STALE_AFTER_INTERVALS: i64 = 3;

/// The last latency histogram of one (source, cluster, topic, tier).
type LatencyKey = (u32, String, String, Tier);

/// A source's last latency histogram, and the session and `seq` that sent it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct LatencyCell {
    epoch: i64,
    seq: u64,
    cluster: String,
    histogram: LatencyHistogram,
}

#[derive(Debug)]
struct Source {
    name: String,
    cluster: String,
    tier_kinds: Vec<TierKind>,
    epoch: i64,
    last_seen_ms: i64,
    messages: [u64; 6],
    errors: u64,
    sessions: u32,
    /// Count entries refused as `duplicate_source`.
    duplicate_entries: u64,
    series: FxHashSet<(u32, i32)>,
    lag_series: usize,
    latency_series: usize,
    /// Entries (topics, partitions, groups) of the source's cluster state.
    cluster_series: usize,
}

impl Source {
    /// Holds the id of a stored source that could not be read.
    fn placeholder() -> Self {
        Source {
            name: String::new(),
            cluster: String::new(),
            tier_kinds: Vec::new(),
            epoch: 0,
            last_seen_ms: 0,
            messages: [0; 6],
            errors: 0,
            sessions: 0,
            duplicate_entries: 0,
            series: FxHashSet::default(),
            lag_series: 0,
            latency_series: 0,
            cluster_series: 0,
        }
    }

    fn is_placeholder(&self) -> bool {
        self.name.is_empty()
    }

    fn open_series(&self) -> usize {
        self.series.len() + self.lag_series + self.latency_series + self.cluster_series
    }

    /// Refuses a message that would take this source over `limit` series.
    fn admit(&self, fresh: usize, limit: usize) -> Result<()> {
        let open = self.open_series();
        if open + fresh > limit {
            return Err(refuse(
                Reason::Cardinality,
                format!(
                    "source \"{}\" would open at least {} series, over the limit of {limit} per source (--max-series-per-source)",
                    crate::error::shown(&self.name),
                    open + fresh,
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Series {
    cluster: String,
    topic: String,
    tier: Tier,
    /// Sum of the cells in memory.
    live: CellCounts,
    /// Sum of the cells already pruned by retention.
    pruned: CellCounts,
}

impl Series {
    /// Holds the id of a stored series that could not be read; it belongs to
    /// no topic, so it is never shown.
    fn placeholder() -> Self {
        Series {
            cluster: String::new(),
            topic: String::new(),
            tier: Tier::Broker,
            live: CellCounts::default(),
            pruned: CellCounts::default(),
        }
    }

    fn is_placeholder(&self) -> bool {
        self.topic.is_empty()
    }
}

#[derive(Debug)]
struct Topic {
    cluster: String,
    topic: String,
    series: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Closed {
    status: BucketStatus,
    unresolved_at_close: bool,
}

type HealthKey = (String, String, String, i32);

#[derive(Debug)]
struct LagEntry {
    health: PartitionHealth,
    last: tally_audit::LagSample,
    /// The source that last reported it (None when restored from a store
    /// that did not say).
    source: Option<u32>,
    /// When the agent last took a sample in (its clock).
    refreshed_ms: i64,
    /// The `at_ms` of the lag message of that sample (the source's clock).
    at_ms: i64,
    /// The gap between the last two `at_ms` of this partition: its source's
    /// lag interval, where seen.
    interval_ms: Option<i64>,
}

impl LagEntry {
    /// Whether the lag was not refreshed for [`STALE_AFTER_INTERVALS`] lag
    /// intervals at `now_ms`.
    fn is_stale(&self, now_ms: i64) -> bool {
        let interval = self
            .interval_ms
            .unwrap_or(DEFAULT_LAG_INTERVAL_MS)
            .max(MIN_LAG_INTERVAL_MS);
        now_ms.saturating_sub(self.refreshed_ms) > interval.saturating_mul(STALE_AFTER_INTERVALS)
    }
}

/// The lag entry as stored in the health table.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredLag {
    health: PartitionHealth,
    last: tally_audit::LagSample,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<u32>,
    #[serde(default)]
    refreshed_ms: i64,
    #[serde(default)]
    at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval_ms: Option<i64>,
}

/// The latest cluster state of one source.
#[derive(Debug)]
struct HeldCluster {
    cluster: String,
    epoch: i64,
    seq: u64,
    received_ms: i64,
    state: tally_audit::ClusterState,
}

/// What a cluster state counts against the cardinality limits.
fn cluster_entries(state: &tally_audit::ClusterState) -> usize {
    state.topics.len() + state.partition_count() + state.groups.len()
}

/// The audit ledger. See the module documentation.
#[derive(Debug)]
pub struct Ledger {
    cfg: LedgerConfig,
    sources: Vec<Source>,
    source_ids: HashMap<String, u32>,
    series: Vec<Series>,
    series_ids: HashMap<String, u32>,
    topics: Vec<Topic>,
    topic_ids: HashMap<(String, String), u32>,
    cells: FxHashMap<CellKey, Cell>,
    /// Series open over all sources (what [`LedgerConfig::max_series`] bounds).
    open_series: usize,
    /// What [`Ledger::restore`] left out.
    restore_skipped: Skipped,
    sums: BTreeMap<(u32, i64), CellCounts>,
    closed: HashMap<(u32, i64), Closed>,
    lag: BTreeMap<HealthKey, LagEntry>,
    /// Per source: its latest cluster state (in memory only: its emitter
    /// sends the latest again whenever it connects).
    clusters: BTreeMap<u32, HeldCluster>,
    dirty_health_deleted: Vec<HealthKey>,
    dirty_kv_deleted: Vec<String>,
    latency: BTreeMap<LatencyKey, LatencyCell>,
    /// (source, cluster, topic, tier) already warned about for differing bounds.
    latency_bounds_warned: HashSet<LatencyKey>,
    key_buf: String,
    dirty_cells: Vec<CellKey>,
    dirty_sources: HashSet<u32>,
    dirty_series: FxHashSet<u32>,
    dirty_history: Vec<HistoryRow>,
    dirty_health: HashSet<HealthKey>,
    dirty_latency: BTreeSet<LatencyKey>,
    /// Per cluster and topic, the source whose `broker` and `group:` counts are
    /// taken (DESIGN §5); nested so that a lookup borrows the names.
    log_owners: HashMap<String, HashMap<String, u32>>,
}

/// What applying a message changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries whose value changed.
    pub changed: usize,
    /// Entries that repeated the stored value (a resend).
    pub unchanged: usize,
    /// Entries older than the stored value (by session and `seq`), ignored.
    pub stale: usize,
    /// Entries whose bucket lies outside the accepted range (see
    /// [`Ledger::accept_range`]), dropped on their own.
    pub out_of_range: usize,
    /// `broker` and `group:` entries of a (cluster, topic) another live source
    /// reports, dropped on their own (`duplicate_source`).
    pub duplicate_source: usize,
    /// Whether they are the first this source had refused so (to log once).
    pub first_duplicate: bool,
}

fn refuse(reason: Reason, detail: String) -> Error {
    Error::Audit(AuditError::new(reason, detail))
}

impl Ledger {
    /// An empty ledger.
    pub fn new(cfg: LedgerConfig) -> Self {
        Ledger {
            cfg,
            sources: Vec::new(),
            source_ids: HashMap::new(),
            series: Vec::new(),
            series_ids: HashMap::new(),
            topics: Vec::new(),
            topic_ids: HashMap::new(),
            cells: FxHashMap::default(),
            open_series: 0,
            restore_skipped: Skipped::default(),
            sums: BTreeMap::new(),
            closed: HashMap::new(),
            lag: BTreeMap::new(),
            clusters: BTreeMap::new(),
            dirty_health_deleted: Vec::new(),
            dirty_kv_deleted: Vec::new(),
            latency: BTreeMap::new(),
            latency_bounds_warned: HashSet::new(),
            key_buf: String::new(),
            dirty_cells: Vec::new(),
            dirty_sources: HashSet::new(),
            dirty_series: FxHashSet::default(),
            dirty_history: Vec::new(),
            dirty_health: HashSet::new(),
            dirty_latency: BTreeSet::new(),
            log_owners: HashMap::new(),
        }
    }

    /// The ledger's settings.
    pub fn config(&self) -> &LedgerConfig {
        &self.cfg
    }

    /// Number of cells held.
    pub fn cell_count(&self) -> usize {
        self.cells.len()
    }

    /// What [`Ledger::restore`] and [`Ledger::restore_cells`] left out
    /// because it could not be read or used, with what the store's lenient
    /// readers left out.
    pub fn restore_skipped(&self) -> &Skipped {
        &self.restore_skipped
    }

    /// Adds what the store's readers left out to [`Ledger::restore_skipped`].
    pub fn note_unread(&mut self, unread: Skipped) {
        self.restore_skipped.absorb(unread);
    }

    /// Series open over all sources (counts, lag and latency).
    pub fn open_series(&self) -> usize {
        self.open_series
    }

    /// Opens a session for the source of `hello`; a new source beyond
    /// [`MAX_SOURCES`] is refused (`cardinality`).
    pub fn hello(&mut self, hello: &Hello, now_ms: i64) -> Result<Session> {
        let id = match self.source_ids.get(&hello.source) {
            Some(&id) => id,
            None if self.sources.len() >= MAX_SOURCES => {
                return Err(refuse(
                    Reason::Cardinality,
                    format!(
                        "source \"{}\" would be one more than the {MAX_SOURCES} sources this agent keeps: reuse a source id per emitter",
                        crate::error::shown(&hello.source)
                    ),
                ));
            }
            None => {
                let id = self.sources.len() as u32;
                self.sources.push(Source {
                    name: hello.source.clone(),
                    cluster: hello.cluster.clone(),
                    tier_kinds: Vec::new(),
                    epoch: hello.started_at_ms,
                    last_seen_ms: now_ms,
                    messages: [0; 6],
                    errors: 0,
                    sessions: 0,
                    duplicate_entries: 0,
                    series: FxHashSet::default(),
                    lag_series: 0,
                    latency_series: 0,
                    cluster_series: 0,
                });
                self.source_ids.insert(hello.source.clone(), id);
                id
            }
        };
        let src = &mut self.sources[id as usize];
        let heard = now_ms.saturating_sub(src.last_seen_ms);
        if src.sessions > 0 && heard <= self.cfg.live_ms as i64 {
            return Err(refuse(
                Reason::DuplicateSource,
                format!(
                    "source \"{}\" has a live session (heard from {heard} ms ago): another emitter uses the same source id; two collectors for one cluster? Give each cluster one collector, or its own cluster name",
                    crate::error::shown(&hello.source)
                ),
            ));
        }
        src.cluster = hello.cluster.clone();
        src.tier_kinds = hello.tier_kinds.clone();
        src.epoch = src.epoch.max(hello.started_at_ms);
        src.last_seen_ms = now_ms;
        src.messages[0] += 1;
        src.sessions += 1;
        self.dirty_sources.insert(id);
        Ok(Session {
            source: id,
            epoch: hello.started_at_ms,
        })
    }

    /// The range of buckets accepted at `now_ms`: from the oldest bucket the
    /// retention keeps to max(grace, 1 h) ahead (DESIGN §5).
    pub fn accept_range(&self, now_ms: i64) -> AcceptRange {
        AcceptRange::at(
            now_ms,
            self.cfg.width,
            self.cfg.retention_ms,
            self.cfg.grace_ms,
        )
    }

    /// Refuses `fresh` new series of `source` over either limit: the
    /// source's own, or the one over all sources.
    fn admit(&self, source: &Source, fresh: usize) -> Result<()> {
        source.admit(fresh, self.cfg.max_series_per_source)?;
        if fresh > 0 && self.open_series + fresh > self.cfg.max_series {
            return Err(refuse(
                Reason::Cardinality,
                format!(
                    "source \"{}\" would take the agent to {} series, over the limit of {} across all sources (--max-series)",
                    crate::error::shown(&source.name),
                    self.open_series + fresh,
                    self.cfg.max_series
                ),
            ));
        }
        Ok(())
    }

    /// The id of a series already interned, without creating it.
    fn known_series(&mut self, cluster: &str, topic: &str, tier: &Tier) -> Option<u32> {
        self.key_buf.clear();
        let _ = write!(self.key_buf, "{cluster}\u{0}{topic}\u{0}{tier}");
        self.series_ids.get(self.key_buf.as_str()).copied()
    }

    /// Closes a session (the connection ended).
    pub fn goodbye(&mut self, session: Session) {
        if let Some(src) = self.sources.get_mut(session.source as usize) {
            src.sessions = src.sessions.saturating_sub(1);
        }
    }

    /// The cluster a session reports on.
    pub fn cluster_of(&self, session: Session) -> Option<String> {
        self.sources
            .get(session.source as usize)
            .map(|s| s.cluster.clone())
    }

    /// The source id of a session.
    pub fn source_name(&self, session: Session) -> Option<String> {
        self.sources
            .get(session.source as usize)
            .map(|s| s.name.clone())
    }

    /// Counts a refused message against the session's source.
    pub fn refused(&mut self, session: Option<Session>) {
        if let Some(session) = session
            && let Some(src) = self.sources.get_mut(session.source as usize)
        {
            src.errors += 1;
            self.dirty_sources.insert(session.source);
        }
    }

    /// Whether `source` may report the `broker` and `group:` tiers of `topic` in
    /// `cluster`: no other source does, or the one that did is gone (no session,
    /// and not heard from within the grace period).
    fn may_report_log(&self, source: u32, cluster: &str, topic: &str, now_ms: i64) -> bool {
        let Some(&owner) = self.log_owners.get(cluster).and_then(|t| t.get(topic)) else {
            return true;
        };
        if owner == source {
            return true;
        }
        let Some(o) = self.sources.get(owner as usize) else {
            return true;
        };
        let recent = now_ms.saturating_sub(o.last_seen_ms) <= self.cfg.grace_ms as i64;
        !(o.sessions > 0 || recent)
    }

    fn series_id(&mut self, cluster: &str, topic: &str, tier: &Tier) -> u32 {
        self.key_buf.clear();
        let _ = write!(self.key_buf, "{cluster}\u{0}{topic}\u{0}{tier}");
        if let Some(&id) = self.series_ids.get(self.key_buf.as_str()) {
            return id;
        }
        let topic_id = self.topic_id(cluster, topic);
        let id = self.series.len() as u32;
        self.series.push(Series {
            cluster: cluster.to_owned(),
            topic: topic.to_owned(),
            tier: tier.clone(),
            live: CellCounts::default(),
            pruned: CellCounts::default(),
        });
        self.topics[topic_id as usize].series.push(id);
        self.series_ids.insert(self.key_buf.clone(), id);
        self.dirty_series.insert(id);
        id
    }

    fn topic_id(&mut self, cluster: &str, topic: &str) -> u32 {
        let key = (cluster.to_owned(), topic.to_owned());
        if let Some(&id) = self.topic_ids.get(&key) {
            return id;
        }
        let id = self.topics.len() as u32;
        self.topics.push(Topic {
            cluster: cluster.to_owned(),
            topic: topic.to_owned(),
            series: Vec::new(),
        });
        self.topic_ids.insert(key, id);
        id
    }

    /// Applies a `counts` message: each entry replaces the last value of its
    /// key unless the stored one came from a later (session, `seq`).
    ///
    /// The message is applied whole or not at all: a tier kind the source did
    /// not announce, or more series than the cardinality limit, refuses it.
    pub fn apply_counts(
        &mut self,
        session: Session,
        seq: u64,
        entries: &[CountEntry],
        now_ms: i64,
    ) -> Result<Applied> {
        let src = self
            .sources
            .get(session.source as usize)
            .ok_or_else(|| refuse(Reason::Protocol, "counts before hello".into()))?;
        let cluster = src.cluster.clone();
        if let Some(e) = entries
            .iter()
            .find(|e| !src.tier_kinds.contains(&e.tier.kind()))
        {
            return Err(refuse(
                Reason::BadField,
                format!(
                    "tier \"{}\" is not among the tier kinds this source announced in its hello ({:?})",
                    crate::error::shown(&e.tier.to_string()),
                    src.tier_kinds
                ),
            ));
        }
        // An entry outside the accepted range is dropped on its own.
        let range = self.accept_range(now_ms);
        let in_range: Vec<&CountEntry> = entries
            .iter()
            .filter(|e| range.contains(e.bucket))
            .collect();
        let out_of_range = entries.len() - in_range.len();
        // So is a `broker` or `group:` entry of a topic another live source reports.
        let mut owned: HashMap<&str, bool> = HashMap::new();
        for e in &in_range {
            if matches!(e.tier.kind(), TierKind::Broker | TierKind::Group) {
                let topic = e.topic.as_str();
                if !owned.contains_key(topic) {
                    let ours = self.may_report_log(session.source, &cluster, topic, now_ms);
                    owned.insert(topic, ours);
                }
            }
        }
        let kept: Vec<&CountEntry> = in_range
            .into_iter()
            .filter(|e| {
                !matches!(e.tier.kind(), TierKind::Broker | TierKind::Group)
                    || owned.get(e.topic.as_str()).copied().unwrap_or(true)
            })
            .collect();
        let mut applied = Applied {
            out_of_range,
            duplicate_source: entries.len() - out_of_range - kept.len(),
            ..Applied::default()
        };
        // Look series up without creating any, so that a refused message
        // leaves nothing behind. Emitters group entries by topic and tier:
        // look each run up once.
        let mut ids: Vec<Option<u32>> = Vec::with_capacity(kept.len());
        let mut last: Option<(&str, &Tier, Option<u32>)> = None;
        for e in &kept {
            let id = match last {
                Some((topic, tier, id)) if topic == e.topic && *tier == e.tier => id,
                _ => self.known_series(&cluster, &e.topic, &e.tier),
            };
            last = Some((&e.topic, &e.tier, id));
            ids.push(id);
        }
        let src = &self.sources[session.source as usize];
        let mut fresh: FxHashSet<(u32, i32)> = FxHashSet::default();
        let mut fresh_new: FxHashSet<(&str, &Tier, i32)> = FxHashSet::default();
        for (e, id) in kept.iter().zip(&ids) {
            match id {
                Some(id) if !src.series.contains(&(*id, e.partition)) => {
                    fresh.insert((*id, e.partition));
                }
                Some(_) => {}
                None => {
                    fresh_new.insert((&e.topic, &e.tier, e.partition));
                }
            }
            // Far more distinct series than allowed: stop counting early.
            if fresh.len() + fresh_new.len() > self.cfg.max_series_per_source {
                break;
            }
        }
        self.admit(src, fresh.len() + fresh_new.len())?;
        drop(fresh_new);
        let ids: Vec<u32> = kept
            .iter()
            .zip(ids)
            .map(|(e, id)| id.unwrap_or_else(|| self.series_id(&cluster, &e.topic, &e.tier)))
            .collect();
        for (topic, ours) in owned {
            let known = self.log_owners.get(&cluster).and_then(|t| t.get(topic));
            if ours && known != Some(&session.source) {
                self.log_owners
                    .entry(cluster.clone())
                    .or_default()
                    .insert(topic.to_owned(), session.source);
            }
        }
        let src = &mut self.sources[session.source as usize];
        if applied.duplicate_source > 0 {
            applied.first_duplicate = src.duplicate_entries == 0;
            src.duplicate_entries += applied.duplicate_source as u64;
        }
        let before = src.series.len();
        src.series
            .extend(ids.iter().zip(&kept).map(|(&id, e)| (id, e.partition)));
        self.open_series += src.series.len() - before;
        src.last_seen_ms = now_ms;
        src.messages[1] += 1;
        self.dirty_sources.insert(session.source);

        for (e, &series) in kept.into_iter().zip(&ids) {
            let key = CellKey {
                source: session.source,
                series,
                partition: e.partition,
                bucket: e.bucket.start_ms(),
            };
            let new = e.counts;
            let old = match self.cells.get_mut(&key) {
                Some(cell) => {
                    if (session.epoch, seq) < (cell.epoch, cell.seq) {
                        applied.stale += 1;
                        continue;
                    }
                    cell.epoch = session.epoch;
                    cell.seq = seq;
                    if cell.v == new {
                        applied.unchanged += 1;
                        continue;
                    }
                    std::mem::replace(&mut cell.v, new)
                }
                None => {
                    self.cells.insert(
                        key,
                        Cell {
                            epoch: session.epoch,
                            seq,
                            v: new,
                        },
                    );
                    CellCounts::default()
                }
            };
            applied.changed += 1;
            self.sums
                .entry((series, key.bucket))
                .or_default()
                .swap(&old, &new);
            self.series[series as usize].live.swap(&old, &new);
            self.dirty_cells.push(key);
            self.dirty_series.insert(series);
        }
        Ok(applied)
    }

    /// Applies a `lag` message to each partition's health.
    pub fn apply_lag(&mut self, session: Session, lag: &Lag, now_ms: i64) -> Result<()> {
        let src = self
            .sources
            .get(session.source as usize)
            .ok_or_else(|| refuse(Reason::Protocol, "lag before hello".into()))?;
        let cluster = src.cluster.clone();
        let fresh = lag
            .partitions
            .iter()
            .filter(|s| {
                !self.lag.contains_key(&(
                    cluster.clone(),
                    s.group.clone(),
                    s.topic.clone(),
                    s.partition,
                ))
            })
            .count();
        self.admit(src, fresh)?;
        self.open_series += fresh;
        let src = &mut self.sources[session.source as usize];
        src.lag_series += fresh;
        src.last_seen_ms = now_ms;
        src.messages[2] += 1;
        self.dirty_sources.insert(session.source);
        for s in &lag.partitions {
            let key = (
                cluster.clone(),
                s.group.clone(),
                s.topic.clone(),
                s.partition,
            );
            let entry = self.lag.entry(key.clone()).or_insert_with(|| LagEntry {
                health: PartitionHealth::default(),
                last: s.clone(),
                source: Some(session.source),
                refreshed_ms: now_ms,
                at_ms: lag.at_ms,
                interval_ms: None,
            });
            entry.health.observe(s, &self.cfg.health);
            entry.last = s.clone();
            entry.source = Some(session.source);
            entry.refreshed_ms = now_ms;
            // One sample per partition per poll: the gap between two is the
            // source's lag interval (a resend repeats the `at_ms`).
            let gap = lag.at_ms.saturating_sub(entry.at_ms);
            if gap > 0 {
                entry.interval_ms = Some(gap);
            }
            entry.at_ms = entry.at_ms.max(lag.at_ms);
            self.dirty_health.insert(key);
        }
        Ok(())
    }

    /// Applies a `latency` message: each histogram replaces the source's last
    /// one of its (tier, topic), unless that came later (by session and `seq`).
    pub fn apply_latency(
        &mut self,
        session: Session,
        latency: &Latency,
        now_ms: i64,
    ) -> Result<Applied> {
        let src = self
            .sources
            .get(session.source as usize)
            .ok_or_else(|| refuse(Reason::Protocol, "latency before hello".into()))?;
        let cluster = src.cluster.clone();
        if let Some(h) = latency
            .histograms
            .iter()
            .find(|h| !src.tier_kinds.contains(&h.tier.kind()))
        {
            return Err(refuse(
                Reason::BadField,
                format!(
                    "tier \"{}\" is not among the tier kinds this source announced in its hello ({:?})",
                    crate::error::shown(&h.tier.to_string()),
                    src.tier_kinds
                ),
            ));
        }
        let key_of = |h: &LatencyHistogram| -> LatencyKey {
            (
                session.source,
                cluster.clone(),
                h.topic.clone(),
                h.tier.clone(),
            )
        };
        let fresh: BTreeSet<LatencyKey> = latency
            .histograms
            .iter()
            .map(key_of)
            .filter(|k| !self.latency.contains_key(k))
            .collect();
        self.admit(src, fresh.len())?;
        self.open_series += fresh.len();
        let src = &mut self.sources[session.source as usize];
        src.latency_series += fresh.len();
        src.last_seen_ms = now_ms;
        src.messages[3] += 1;
        self.dirty_sources.insert(session.source);
        let mut applied = Applied::default();
        for h in &latency.histograms {
            let key = key_of(h);
            if let Some(cell) = self.latency.get(&key) {
                if (session.epoch, latency.seq) < (cell.epoch, cell.seq) {
                    applied.stale += 1;
                    continue;
                }
                if cell.histogram == *h {
                    applied.unchanged += 1;
                    continue;
                }
            }
            self.latency.insert(
                key.clone(),
                LatencyCell {
                    epoch: session.epoch,
                    seq: latency.seq,
                    cluster: cluster.clone(),
                    histogram: h.clone(),
                },
            );
            self.dirty_latency.insert(key);
            applied.changed += 1;
        }
        Ok(applied)
    }

    /// Applies a `forget` message: drops what this source reported for the
    /// named groups (their lag and status on every topic, the latency of
    /// their `group:` tiers) and topics (every group's lag on them, their
    /// latency, their cluster metadata), with no alarm. Counts already
    /// recorded stay in the books: they are history, pruned with the retention.
    pub fn apply_forget(
        &mut self,
        session: Session,
        forget: &tally_audit::Forget,
        now_ms: i64,
    ) -> Result<()> {
        let src = self
            .sources
            .get(session.source as usize)
            .ok_or_else(|| refuse(Reason::Protocol, "forget before hello".into()))?;
        let cluster = src.cluster.clone();
        let groups: HashSet<&str> = forget.groups.iter().map(String::as_str).collect();
        let topics: HashSet<&str> = forget.topics.iter().map(String::as_str).collect();
        let gone: Vec<HealthKey> = self
            .lag
            .iter()
            .filter(|((c, g, t, _), e)| {
                *c == cluster
                    && e.source.is_none_or(|s| s == session.source)
                    && (groups.contains(g.as_str()) || topics.contains(t.as_str()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(e) = self.lag.remove(&key) {
                let owner = e.source.unwrap_or(session.source);
                if let Some(s) = self.sources.get_mut(owner as usize) {
                    s.lag_series = s.lag_series.saturating_sub(1);
                }
                self.open_series = self.open_series.saturating_sub(1);
            }
            self.dirty_health.remove(&key);
            self.dirty_health_deleted.push(key);
        }
        let latency_gone: Vec<LatencyKey> = self
            .latency
            .keys()
            .filter(|(s, c, t, tier)| {
                *s == session.source
                    && *c == cluster
                    && (topics.contains(t.as_str())
                        || matches!(tier, Tier::Group(g) if groups.contains(g.as_str())))
            })
            .cloned()
            .collect();
        for key in latency_gone {
            self.latency.remove(&key);
            self.dirty_latency.remove(&key);
            self.dirty_kv_deleted.push(latency_kv_key(&key));
            self.open_series = self.open_series.saturating_sub(1);
            let src = &mut self.sources[session.source as usize];
            src.latency_series = src.latency_series.saturating_sub(1);
        }
        if let Some(held) = self.clusters.get_mut(&session.source) {
            let before = cluster_entries(&held.state);
            held.state
                .topics
                .retain(|t| !topics.contains(t.topic.as_str()));
            held.state
                .groups
                .retain(|g| !groups.contains(g.group.as_str()));
            let dropped = before - cluster_entries(&held.state);
            self.open_series = self.open_series.saturating_sub(dropped);
            let src = &mut self.sources[session.source as usize];
            src.cluster_series = src.cluster_series.saturating_sub(dropped);
        }
        let src = &mut self.sources[session.source as usize];
        src.last_seen_ms = now_ms;
        src.messages[4] += 1;
        self.dirty_sources.insert(session.source);
        Ok(())
    }

    /// Applies a `cluster` message: it replaces the source's last cluster
    /// state whole, unless that came later (by session and `seq`). A state
    /// with more entries (topics, partitions and groups) than the source's or
    /// the agent's series limit allows is refused (`cardinality`).
    pub fn apply_cluster(
        &mut self,
        session: Session,
        cluster: &tally_audit::Cluster,
        now_ms: i64,
    ) -> Result<()> {
        let src = self
            .sources
            .get(session.source as usize)
            .ok_or_else(|| refuse(Reason::Protocol, "cluster before hello".into()))?;
        let name = src.cluster.clone();
        let held = self.clusters.get(&session.source);
        let newer = held.is_none_or(|h| (session.epoch, cluster.seq) >= (h.epoch, h.seq));
        if newer {
            let entries = cluster_entries(&cluster.state);
            let before = held.map_or(0, |h| cluster_entries(&h.state));
            self.admit(src, entries.saturating_sub(before))?;
            self.open_series = (self.open_series + entries).saturating_sub(before);
            self.sources[session.source as usize].cluster_series = entries;
            self.clusters.insert(
                session.source,
                HeldCluster {
                    cluster: name,
                    epoch: session.epoch,
                    seq: cluster.seq,
                    received_ms: now_ms,
                    state: cluster.state.clone(),
                },
            );
        }
        let src = &mut self.sources[session.source as usize];
        src.last_seen_ms = now_ms;
        src.messages[5] += 1;
        self.dirty_sources.insert(session.source);
        Ok(())
    }

    fn cluster_infos(&self) -> Vec<ClusterInfo> {
        let mut out: Vec<ClusterInfo> = self
            .clusters
            .iter()
            .map(|(&source, h)| {
                let partitions = || h.state.topics.iter().flat_map(|t| &t.partitions);
                ClusterInfo {
                    cluster: h.cluster.clone(),
                    source: self
                        .sources
                        .get(source as usize)
                        .map_or_else(String::new, |s| s.name.clone()),
                    at_ms: h.state.at_ms,
                    received_ms: h.received_ms,
                    brokers: h.state.brokers,
                    partitions: h.state.partition_count() as u64,
                    offline_partitions: partitions().filter(|p| p.is_offline()).count() as u64,
                    under_replicated_partitions: partitions()
                        .filter(|p| p.is_under_replicated())
                        .count() as u64,
                    topics: h.state.topics.clone(),
                    groups: h.state.groups.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.cluster, &a.source).cmp(&(&b.cluster, &b.source)));
        out
    }

    fn oldest_kept_bucket(&self, now_ms: i64) -> i64 {
        let horizon = now_ms.saturating_sub(self.cfg.retention_ms as i64);
        self.cfg.width.bucket_of(horizon).start_ms()
    }

    /// Drops cells and history older than the retention, keeping their sums
    /// in each series' pruned totals. Returns the cells dropped.
    pub fn prune(&mut self, now_ms: i64) -> usize {
        let oldest = self.oldest_kept_bucket(now_ms);
        let before = self.cells.len();
        let mut dropped: Vec<(u32, CellCounts)> = Vec::new();
        self.cells.retain(|k, c| {
            if k.bucket < oldest {
                dropped.push((k.series, c.v));
                false
            } else {
                true
            }
        });
        for (series, v) in dropped {
            let s = &mut self.series[series as usize];
            s.live.swap(&v, &CellCounts::default());
            s.pruned.add(&v);
            self.dirty_series.insert(series);
        }
        self.sums.retain(|(_, b), _| *b >= oldest);
        self.closed.retain(|(_, b), _| *b >= oldest);
        before - self.cells.len()
    }

    /// The oldest bucket that [`Ledger::prune`] keeps at `now_ms`.
    pub fn prune_horizon(&self, now_ms: i64) -> i64 {
        self.oldest_kept_bucket(now_ms)
    }

    /// Hands out every row changed since the last call, for the store.
    pub fn take_dirty(&mut self) -> WriteBatch {
        let mut batch = self.take_message_rows();
        for id in std::mem::take(&mut self.dirty_sources) {
            let s = &self.sources[id as usize];
            batch.sources.push(SourceRow {
                id,
                name: s.name.clone(),
                cluster: s.cluster.clone(),
                tier_kinds: serde_json::to_string(&s.tier_kinds).unwrap_or_default(),
                epoch: s.epoch,
                last_seen_ms: s.last_seen_ms,
                messages: s.messages.iter().sum(),
                errors: s.errors,
            });
            batch.kv.push((
                format!("source/{id}/messages"),
                serde_json::to_string(&s.messages).unwrap_or_default(),
            ));
        }
        batch.history = std::mem::take(&mut self.dirty_history);
        batch
    }

    /// Hands out the rows a message changes (cells, series, latency, health),
    /// so that each message is stored, or refused, on its own; the sources'
    /// rows and the history wait for [`Ledger::take_dirty`].
    pub fn take_message_rows(&mut self) -> WriteBatch {
        let mut batch = WriteBatch::default();
        let mut keys = std::mem::take(&mut self.dirty_cells);
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            if let Some(c) = self.cells.get(&k) {
                batch.cells.push(CellRow {
                    source: k.source,
                    series: k.series,
                    partition: k.partition,
                    bucket: k.bucket,
                    epoch: c.epoch,
                    seq: c.seq,
                    counts: c.v,
                });
            }
        }
        for id in std::mem::take(&mut self.dirty_series) {
            let s = &self.series[id as usize];
            batch.series.push(SeriesRow {
                id,
                cluster: s.cluster.clone(),
                topic: s.topic.clone(),
                tier: s.tier.to_string(),
                pruned_records: s.pruned.records,
                pruned_expired: s.pruned.expired,
            });
        }
        for key in std::mem::take(&mut self.dirty_latency) {
            if let Some(cell) = self.latency.get(&key) {
                batch.kv.push((
                    latency_kv_key(&key),
                    serde_json::to_string(cell).unwrap_or_default(),
                ));
            }
        }
        batch.health_deleted = std::mem::take(&mut self.dirty_health_deleted);
        batch.kv_deleted = std::mem::take(&mut self.dirty_kv_deleted);
        for key in std::mem::take(&mut self.dirty_health) {
            if let Some(e) = self.lag.get(&key) {
                let state = serde_json::to_value(StoredLag {
                    health: e.health.clone(),
                    last: e.last.clone(),
                    source: e.source,
                    refreshed_ms: e.refreshed_ms,
                    at_ms: e.at_ms,
                    interval_ms: e.interval_ms,
                })
                .unwrap_or_default();
                batch.health.push(HealthRow {
                    cluster: key.0.clone(),
                    group: key.1.clone(),
                    topic: key.2.clone(),
                    partition: key.3,
                    state: state.to_string(),
                });
            }
        }
        batch
    }

    /// Rebuilds a ledger from what the store loaded.
    ///
    /// What cannot be used (a gap or a repeat in the ids, a tier that does
    /// not parse, a cell of an unknown source or series) is left out and
    /// counted in [`Ledger::restore_skipped`], so that the agent starts with
    /// what it can read instead of not at all.
    pub fn restore(cfg: LedgerConfig, mut loaded: Loaded) -> Result<Self> {
        let mut ledger = Ledger::new(cfg);
        ledger.restore_skipped = std::mem::take(&mut loaded.skipped);
        let kv: HashMap<String, String> = loaded.kv.into_iter().collect();
        let mut sources = loaded.sources;
        sources.sort_by_key(|s| s.id);
        sources.dedup_by_key(|s| s.id);
        for s in sources {
            if s.id as usize > MAX_SOURCES.max(ledger.sources.len()) * 2 {
                let id = s.id;
                ledger
                    .restore_skipped
                    .note(|| format!("source id \"{id}\" is out of range"));
                continue;
            }
            // A source row that was never stored leaves a gap: keep its id
            // taken, by a source no one can open again.
            while ledger.sources.len() < s.id as usize {
                let gap = ledger.sources.len();
                ledger
                    .restore_skipped
                    .note(|| format!("source id \"{gap}\" is missing"));
                ledger.sources.push(Source::placeholder());
            }
            if ledger.source_ids.contains_key(&s.name) {
                let (id, name) = (s.id, s.name.clone());
                ledger.restore_skipped.note(|| {
                    format!(
                        "source id \"{id}\" repeats the name \"{}\"",
                        crate::error::shown(&name)
                    )
                });
                ledger.sources.push(Source::placeholder());
                continue;
            }
            // Older stores kept three message types; a missing one counts from 0.
            let messages = kv
                .get(&format!("source/{}/messages", s.id))
                .and_then(|m| serde_json::from_str::<Vec<u64>>(m).ok())
                .map_or([0, s.messages, 0, 0, 0, 0], |stored| {
                    let mut messages = [0; 6];
                    for (slot, n) in messages.iter_mut().zip(stored) {
                        *slot = n;
                    }
                    messages
                });
            ledger.source_ids.insert(s.name.clone(), s.id);
            ledger.sources.push(Source {
                tier_kinds: serde_json::from_str(&s.tier_kinds).unwrap_or_default(),
                name: s.name,
                cluster: s.cluster,
                epoch: s.epoch,
                last_seen_ms: s.last_seen_ms,
                messages,
                errors: s.errors,
                sessions: 0,
                duplicate_entries: 0,
                series: FxHashSet::default(),
                lag_series: 0,
                latency_series: 0,
                cluster_series: 0,
            });
        }
        for (key, value) in &kv {
            let Some(rest) = key.strip_prefix("latency/") else {
                continue;
            };
            let source = rest.split('/').next().and_then(|id| id.parse::<u32>().ok());
            let cell = serde_json::from_str::<LatencyCell>(value);
            match (source, cell) {
                (Some(source), Ok(cell))
                    if ledger
                        .sources
                        .get(source as usize)
                        .is_some_and(|s| !s.is_placeholder()) =>
                {
                    ledger.sources[source as usize].latency_series += 1;
                    ledger.open_series += 1;
                    ledger.latency.insert(
                        (
                            source,
                            cell.cluster.clone(),
                            cell.histogram.topic.clone(),
                            cell.histogram.tier.clone(),
                        ),
                        cell,
                    );
                }
                _ => {
                    tracing::warn!(key = %key, "ignored a stored latency histogram that cannot be read")
                }
            }
        }
        let mut series = loaded.series;
        series.sort_by_key(|s| s.id);
        series.dedup_by_key(|s| s.id);
        let limit = ledger.cfg.max_series.max(series.len()).saturating_mul(2);
        for s in series {
            if s.id as usize > limit {
                let id = s.id;
                ledger
                    .restore_skipped
                    .note(|| format!("series id \"{id}\" is out of range"));
                continue;
            }
            while ledger.series.len() < s.id as usize {
                let gap = ledger.series.len();
                ledger
                    .restore_skipped
                    .note(|| format!("series id \"{gap}\" is missing"));
                ledger.series.push(Series::placeholder());
            }
            let tier = s.tier.parse::<Tier>();
            let known = tier
                .as_ref()
                .ok()
                .and_then(|t| ledger.known_series(&s.cluster, &s.topic, t));
            match tier {
                Ok(tier) if known.is_none() => {
                    let id = ledger.series_id(&s.cluster, &s.topic, &tier);
                    ledger.series[id as usize].pruned.records = s.pruned_records;
                    ledger.series[id as usize].pruned.expired = s.pruned_expired;
                }
                _ => {
                    let id = s.id;
                    ledger.restore_skipped.note(|| {
                        format!(
                            "series id \"{id}\" has a tier that does not parse or repeats another series"
                        )
                    });
                    ledger.series.push(Series::placeholder());
                }
            }
        }
        // Series interned while restoring are stored already.
        ledger.dirty_series.clear();
        let cells = std::mem::take(&mut loaded.cells);
        for h in loaded.history {
            if let Some(status) = BucketStatus::ALL
                .into_iter()
                .find(|s| s.as_str() == h.status)
            {
                ledger.closed.insert(
                    (h.series, h.bucket),
                    Closed {
                        status,
                        unresolved_at_close: h.unresolved_at_close,
                    },
                );
            }
        }
        for h in loaded.health {
            match serde_json::from_str::<StoredLag>(&h.state) {
                Ok(state) => {
                    let source = state.source.filter(|&s| {
                        ledger
                            .sources
                            .get(s as usize)
                            .is_some_and(|s| !s.is_placeholder())
                    });
                    if let Some(s) = source {
                        ledger.sources[s as usize].lag_series += 1;
                    }
                    ledger.lag.insert(
                        (h.cluster, h.group, h.topic, h.partition),
                        LagEntry {
                            health: state.health,
                            last: state.last,
                            source,
                            refreshed_ms: state.refreshed_ms,
                            at_ms: state.at_ms,
                            interval_ms: state.interval_ms,
                        },
                    );
                }
                Err(e) => ledger.restore_skipped.note(|| {
                    format!(
                        "the health of group \"{}\" on \"{}\" {}: {e}",
                        crate::error::shown(&h.group),
                        crate::error::shown(&h.topic),
                        h.partition
                    )
                }),
            }
        }
        ledger.open_series += ledger.lag.len();
        ledger.restore_cells(cells)?;
        Ok(ledger)
    }

    /// Adds stored cells to a ledger being restored (the store streams them
    /// in chunks, so this runs while the rest are still being read). A cell
    /// of an unknown source or series is left out and counted in
    /// [`Ledger::restore_skipped`].
    pub fn restore_cells(&mut self, cells: Vec<CellRow>) -> Result<()> {
        self.cells.reserve(cells.len());
        let mut last_series = None;
        for c in cells {
            let known = self
                .sources
                .get(c.source as usize)
                .is_some_and(|s| !s.is_placeholder())
                && self
                    .series
                    .get(c.series as usize)
                    .is_some_and(|s| !s.is_placeholder());
            if !known {
                self.restore_skipped.note(|| {
                    format!(
                        "a cell of unknown source \"{}\" or series \"{}\"",
                        c.source, c.series
                    )
                });
                continue;
            }
            let key = CellKey {
                source: c.source,
                series: c.series,
                partition: c.partition,
                bucket: c.bucket,
            };
            let v = c.counts;
            self.sums.entry((c.series, c.bucket)).or_default().add(&v);
            self.series[c.series as usize].live.add(&v);
            if last_series != Some((c.source, c.series, c.partition)) {
                if self.sources[c.source as usize]
                    .series
                    .insert((c.series, c.partition))
                {
                    self.open_series += 1;
                }
                last_series = Some((c.source, c.series, c.partition));
            }
            self.cells.insert(
                key,
                Cell {
                    epoch: c.epoch,
                    seq: c.seq,
                    v,
                },
            );
        }
        Ok(())
    }

    /// Evaluates the books and the groups' health at `now_ms`.
    pub fn evaluate(&mut self, now_ms: i64) -> Snapshot {
        let width = self.cfg.width;
        let window_start = width
            .bucket_of(now_ms.saturating_sub(self.cfg.window_ms as i64))
            .start_ms();
        let mut topics = Vec::with_capacity(self.topics.len());
        let mut buckets = Vec::with_capacity(self.topics.len());
        let mut order: Vec<u32> = (0..self.topics.len() as u32).collect();
        order.sort_by(|a, b| {
            let (a, b) = (&self.topics[*a as usize], &self.topics[*b as usize]);
            (&a.cluster, &a.topic).cmp(&(&b.cluster, &b.topic))
        });
        for tid in order {
            let (books, view) = self.evaluate_topic(tid, window_start, now_ms);
            topics.push(books);
            buckets.push(view);
        }
        Snapshot {
            at_ms: now_ms,
            width_ms: width.ms(),
            grace_ms: self.cfg.grace_ms,
            window_ms: self.cfg.window_ms,
            topics,
            buckets,
            groups: self.evaluate_groups(now_ms),
            sources: self.source_infos(),
            alerts: Vec::new(),
            latency: self.latency_books(),
            clusters: self.cluster_infos(),
        }
    }

    /// Each (cluster, topic, tier)'s latency, summed over its sources. Sums
    /// only make sense over equal bounds: the first source's bounds win, and
    /// a source with other bounds is left out (and warned about once).
    fn latency_books(&mut self) -> Vec<LatencyBooks> {
        let mut books: BTreeMap<(&str, &str, &Tier), LatencyBooks> = BTreeMap::new();
        let mut skipped = Vec::new();
        for (key, cell) in &self.latency {
            let h = &cell.histogram;
            let sum = books
                .entry((key.1.as_str(), key.2.as_str(), &key.3))
                .or_insert_with(|| LatencyBooks {
                    cluster: key.1.clone(),
                    topic: key.2.clone(),
                    tier: key.3.to_string(),
                    bounds_ms: h.bounds_ms.clone(),
                    counts: vec![0; h.counts.len()],
                    count: 0,
                    sum_ms: 0,
                });
            if sum.bounds_ms != h.bounds_ms {
                skipped.push(key);
                continue;
            }
            for (total, n) in sum.counts.iter_mut().zip(&h.counts) {
                *total = total.saturating_add(*n);
            }
            sum.count = sum.count.saturating_add(h.count);
            sum.sum_ms = sum.sum_ms.saturating_add(h.sum_ms);
        }
        let out = books.into_values().collect();
        for key in skipped {
            if self.latency_bounds_warned.insert(key.clone()) {
                let source = self
                    .sources
                    .get(key.0 as usize)
                    .map_or("", |s| s.name.as_str());
                tracing::warn!(
                    source,
                    cluster = %key.1,
                    topic = %key.2,
                    tier = %key.3,
                    "left a latency histogram out of the sum: its bounds differ from another source's"
                );
            }
        }
        out
    }

    fn reference_of(&self, topic: &Topic) -> Option<u32> {
        let find = |t: &Tier| {
            topic
                .series
                .iter()
                .copied()
                .find(|&s| self.series[s as usize].tier == *t)
        };
        find(&Tier::Broker).or_else(|| find(&Tier::Produced))
    }

    fn evaluate_topic(
        &mut self,
        tid: u32,
        window_start: i64,
        now_ms: i64,
    ) -> (TopicBooks, TopicBuckets) {
        let topic = &self.topics[tid as usize];
        let reference = self.reference_of(topic);
        let width = self.cfg.width;
        let series_ids = topic.series.clone();
        let mut per_bucket: BTreeMap<i64, Vec<(u32, CellCounts)>> = BTreeMap::new();
        let first_bucket: HashMap<u32, i64> = series_ids
            .iter()
            .filter_map(|&s| {
                self.sums
                    .range((s, i64::MIN)..=(s, i64::MAX))
                    .next()
                    .map(|(&(_, b), _)| (s, b))
            })
            .collect();
        for &s in &series_ids {
            for (&(_, b), c) in self.sums.range((s, window_start)..=(s, i64::MAX)) {
                per_bucket.entry(b).or_default().push((s, *c));
            }
        }
        let mut books = TopicBooks {
            cluster: topic.cluster.clone(),
            topic: topic.topic.clone(),
            reference: reference.map(|r| self.series[r as usize].tier.to_string()),
            tiers: BTreeMap::new(),
        };
        struct Ratio {
            num: u64,
            den: u64,
        }
        let mut ratios: HashMap<u32, Ratio> = HashMap::new();
        for &s in &series_ids {
            let sr = &self.series[s as usize];
            let is_group = sr.tier.kind() == TierKind::Group;
            let mut tb = TierBooks {
                records: sr.live.records + sr.pruned.records,
                bytes: sr.live.bytes,
                completeness: 1.0,
                no_timestamp: sr.live.no_timestamp,
                aborted: sr.live.aborted,
                ..TierBooks::default()
            };
            if is_group {
                tb.expired = Some(sr.live.expired + sr.pruned.expired);
                tb.skipped = Some(sr.live.skipped);
                let reference_total = reference.map_or(0, |r| self.series[r as usize].live.records);
                let accounted = sr.live.records + sr.live.expired + sr.live.skipped;
                tb.pending = Some(reference_total.saturating_sub(accounted));
            }
            books.tiers.insert(sr.tier.to_string(), tb);
            ratios.insert(s, Ratio { num: 0, den: 0 });
        }
        let mut view = TopicBuckets {
            cluster: books.cluster.clone(),
            topic: books.topic.clone(),
            width_ms: width.ms(),
            buckets: Vec::with_capacity(per_bucket.len()),
        };
        for (bucket, present) in per_bucket {
            let closed = now_ms
                >= bucket
                    .saturating_add(width.ms() as i64)
                    .saturating_add(self.cfg.grace_ms as i64);
            let reference_counts = reference.map(|r| {
                present
                    .iter()
                    .find(|(s, _)| *s == r)
                    .map(|(_, c)| *c)
                    .unwrap_or_default()
            });
            let mut bb = BucketBooks {
                bucket,
                tiers: BTreeMap::new(),
            };
            for &s in &series_ids {
                // A tier that counted nothing in a bucket the reference has
                // is judged at zero, from its first bucket on.
                let counts = match present.iter().find(|(p, _)| *p == s) {
                    Some((_, c)) => *c,
                    None if reference_counts.is_some_and(|r| r.records > 0)
                        && first_bucket.get(&s).is_some_and(|f| *f <= bucket) =>
                    {
                        CellCounts::default()
                    }
                    None => continue,
                };
                let sr = &self.series[s as usize];
                let prior = self.closed.get(&(s, bucket)).copied();
                let j = judge(
                    &sr.tier,
                    Some(s) == reference,
                    &counts,
                    reference_counts.as_ref(),
                    closed,
                    prior.is_some_and(|p| p.unresolved_at_close),
                );
                if closed {
                    let entry = Closed {
                        status: j.status,
                        unresolved_at_close: prior.map_or(
                            matches!(j.status, BucketStatus::Pending | BucketStatus::Incomplete),
                            |p| p.unresolved_at_close,
                        ),
                    };
                    if prior != Some(entry) {
                        self.closed.insert((s, bucket), entry);
                        self.dirty_history.push(HistoryRow {
                            series: s,
                            bucket,
                            status: j.status.as_str().to_owned(),
                            unresolved_at_close: entry.unresolved_at_close,
                            records: counts.records,
                            reference: reference_counts.map_or(0, |r| r.records),
                            pending: j.pending.unwrap_or(0),
                            expired: counts.expired,
                            skipped: counts.skipped,
                            closed_at_ms: now_ms,
                        });
                    }
                    if let Some(r) = ratios.get_mut(&s) {
                        r.num += j.ratio.0;
                        r.den += j.ratio.1;
                    }
                    if let Some(tb) = books.tiers.get_mut(&sr.tier.to_string()) {
                        tb.missing += j.missing;
                        tb.excess += j.excess;
                    }
                }
                if let Some(tb) = books.tiers.get_mut(&sr.tier.to_string()) {
                    *tb.buckets.entry(j.status).or_default() += 1;
                }
                let is_group = sr.tier.kind() == TierKind::Group;
                bb.tiers.insert(
                    sr.tier.to_string(),
                    BucketTier {
                        records: counts.records,
                        status: j.status,
                        missing: j.missing,
                        excess: j.excess,
                        pending: j.pending,
                        expired: is_group.then_some(counts.expired),
                        skipped: is_group.then_some(counts.skipped),
                        aborted: counts.aborted,
                    },
                );
            }
            view.buckets.push(bb);
        }
        for (s, r) in ratios {
            if let Some(tb) = books
                .tiers
                .get_mut(&self.series[s as usize].tier.to_string())
            {
                tb.completeness = if r.den == 0 {
                    1.0
                } else {
                    r.num as f64 / r.den as f64
                };
            }
        }
        (books, view)
    }

    fn evaluate_groups(&self, now_ms: i64) -> Vec<GroupHealth> {
        let mut groups: Vec<GroupHealth> = Vec::new();
        for ((cluster, group, topic, partition), e) in &self.lag {
            let stale = e.is_stale(now_ms);
            // Stale lag is judged as of its last refresh: a source that went
            // away is no news of the consumer.
            let judged_at = if stale { e.refreshed_ms } else { now_ms };
            let status = e.health.status(judged_at, &self.cfg.health);
            let p = PartitionLag {
                stable_offset: e.last.stable_offset,
                estimated: e.last.estimated,
                stale,
                topic: topic.clone(),
                partition: *partition,
                committed: e.last.committed,
                end_offset: e.last.end_offset,
                start_offset: e.last.start_offset,
                lag_records: e.last.lag_records,
                lag_seconds: e.last.lag_seconds,
                status,
                commit_at_ms: e.last.commit_at_ms,
                commits: e.health.commits().cloned().collect(),
            };
            match groups.last_mut() {
                Some(g) if g.cluster == *cluster && g.group == *group => g.partitions.push(p),
                _ => groups.push(GroupHealth {
                    cluster: cluster.clone(),
                    group: group.clone(),
                    status: GroupStatus::Ok,
                    lag_records: 0,
                    max_lag_seconds: 0.0,
                    partitions: vec![p],
                    stale: false,
                }),
            }
        }
        for g in &mut groups {
            g.status = group_status(g.partitions.iter().map(|p| p.status));
            let fresh = || g.partitions.iter().filter(|p| !p.stale);
            g.lag_records = fresh().map(|p| p.lag_records).sum();
            g.max_lag_seconds = fresh().map(|p| p.lag_seconds).fold(0.0, f64::max);
            g.stale = g.partitions.iter().all(|p| p.stale);
        }
        groups
    }

    fn source_infos(&self) -> Vec<SourceInfo> {
        let mut out: Vec<SourceInfo> = self
            .sources
            .iter()
            .filter(|s| !s.is_placeholder())
            .map(|s| SourceInfo {
                source: s.name.clone(),
                cluster: s.cluster.clone(),
                tier_kinds: s
                    .tier_kinds
                    .iter()
                    .map(|k| {
                        serde_json::to_value(k)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    })
                    .collect(),
                last_seen_ms: s.last_seen_ms,
                messages: MESSAGE_TYPES
                    .iter()
                    .zip(s.messages)
                    .map(|(t, n)| ((*t).to_owned(), n))
                    .collect(),
                errors: s.errors,
                connected: s.sessions > 0,
                duplicate_entries: s.duplicate_entries,
            })
            .collect();
        out.sort_by(|a, b| a.source.cmp(&b.source));
        out
    }

    /// Buckets with a sum, for diagnostics and tests: (cluster, topic, tier, bucket) → records.
    pub fn bucket_records(&self) -> BTreeSet<(String, String, String, i64, u64)> {
        self.sums
            .iter()
            .map(|(&(s, b), c)| {
                let sr = &self.series[s as usize];
                (
                    sr.cluster.clone(),
                    sr.topic.clone(),
                    sr.tier.to_string(),
                    b,
                    c.records,
                )
            })
            .collect()
    }
}

/// The verdict on one tier in one bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Judgement {
    status: BucketStatus,
    missing: u64,
    excess: u64,
    pending: Option<u64>,
    /// Numerator and denominator of this bucket's share of completeness.
    ratio: (u64, u64),
}

/// Judges one tier's counts in one bucket against the reference's.
///
/// Downstream tiers (groups, consumers, and `broker` where only `produced`
/// is the reference) compare their count with the reference's; the
/// `produced` tier, upstream of `broker`, is judged the other way round:
/// fewer appended than produced is loss in produce, more is duplicates.
/// The store's key of one latency histogram.
fn latency_kv_key((source, cluster, topic, tier): &LatencyKey) -> String {
    format!("latency/{source}/{cluster}/{topic}/{tier}")
}

fn judge(
    tier: &Tier,
    is_reference: bool,
    counts: &CellCounts,
    reference: Option<&CellCounts>,
    closed: bool,
    unresolved_at_close: bool,
) -> Judgement {
    let settle = |status: BucketStatus| {
        if !closed {
            BucketStatus::Open
        } else if status == BucketStatus::Complete && unresolved_at_close {
            BucketStatus::Late
        } else {
            status
        }
    };
    let Some(reference) = reference.filter(|_| !is_reference) else {
        return Judgement {
            status: settle(BucketStatus::Complete),
            missing: 0,
            excess: 0,
            pending: None,
            ratio: (counts.records, counts.records),
        };
    };
    match tier.kind() {
        TierKind::Group => {
            let accounted = counts.records + counts.expired + counts.skipped;
            let pending = reference.records.saturating_sub(accounted);
            let excess = accounted.saturating_sub(reference.records);
            let status = if counts.expired > 0 {
                BucketStatus::Incomplete
            } else if pending > 0 {
                BucketStatus::Pending
            } else if excess > 0 {
                BucketStatus::Excess
            } else {
                BucketStatus::Complete
            };
            Judgement {
                status: settle(status),
                missing: if closed { counts.expired } else { 0 },
                excess: if closed { excess } else { 0 },
                pending: Some(pending),
                ratio: (
                    counts.records,
                    reference.records.saturating_sub(counts.skipped),
                ),
            }
        }
        kind => {
            let (upstream, downstream) = if kind == TierKind::Produced {
                (counts.records, reference.records)
            } else {
                (reference.records, counts.records)
            };
            let missing = upstream.saturating_sub(downstream);
            let excess = downstream.saturating_sub(upstream);
            let status = if missing > 0 {
                BucketStatus::Incomplete
            } else if excess > 0 {
                BucketStatus::Excess
            } else {
                BucketStatus::Complete
            };
            Judgement {
                status: settle(status),
                missing,
                excess,
                pending: None,
                ratio: (downstream, upstream),
            }
        }
    }
}

#[cfg(test)]
mod tests;
