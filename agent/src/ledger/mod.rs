//! The audit ledger: the last cumulative value per (source, tier, topic,
//! partition, bucket), summed per (cluster, topic, tier, bucket), and each
//! consumer group's lag and health.
//!
//! The ledger is plain data with no locks; the agent's service owns it on
//! one task, persists what [`Ledger::take_dirty`] hands out, and calls
//! [`Ledger::evaluate`] on its tick. It holds the buckets of the window plus
//! grace (DESIGN §8); its one I/O is reading back, through [`Cold`], what it
//! left to the store of older buckets when a late count comes.
//!
//! `apply` takes in what sources send, `persist` hands rows to the store,
//! loads them back and reads the buckets the ledger no longer holds, and
//! `evaluate` judges the books into a snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use tally_audit::snapshot::{
    BucketBooks, BucketTier, ClusterInfo, GroupHealth, LatencyBooks, PartitionLag, SourceInfo,
    TierBooks, TopicBooks, TopicBuckets,
};
use tally_audit::wire::AcceptRange;
use tally_audit::{
    BucketStatus, BucketWidth, CellCounts, CountEntry, Error as AuditError, Hello, Lag, Latency,
    LatencyHistogram, Reason, Snapshot, Tier, TierKind,
};

use crate::health::{HealthConfig, PartitionHealth, group_status};
use crate::store::{
    CellRow, ColdReader, HealthRow, HistoryRow, Loaded, SeriesRow, Skipped, SourceRow, SumRow,
    WriteBatch,
};
use crate::{Error, Result};
use persist::latency_kv_key;

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
    /// Which topics are copies of which (DESIGN §11).
    pub mirrors: crate::mirror::MirrorRules,
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
            mirrors: crate::mirror::MirrorRules::default(),
        }
    }

    /// Whether `bucket` is closed at `now_ms`: its grace period has ended.
    pub fn is_closed(&self, bucket: i64, now_ms: i64) -> bool {
        now_ms
            >= bucket
                .saturating_add(self.width.ms() as i64)
                .saturating_add(self.grace_ms as i64)
    }

    /// The first bucket held whole in memory at `now_ms`: the window plus
    /// the grace period (DESIGN §8). Older buckets live in the store.
    pub fn resident_from(&self, now_ms: i64) -> i64 {
        let span = self.window_ms.saturating_add(self.grace_ms);
        self.width
            .bucket_of(now_ms.saturating_sub(i64::try_from(span).unwrap_or(i64::MAX)))
            .start_ms()
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

impl CellKey {
    fn id(&self) -> CellId {
        CellId {
            source: self.source,
            series: self.series,
            partition: self.partition,
        }
    }
}

/// A cell's key within its bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CellId {
    source: u32,
    series: u32,
    partition: i32,
}

/// The cells held in memory, by bucket, so that the buckets that leave the
/// window are dropped whole.
#[derive(Debug, Default)]
struct Cells {
    by_bucket: BTreeMap<i64, BucketCells>,
    len: usize,
}

/// The cells of one bucket: the values side by side, and a hash index of
/// their keys. Kept apart, the index costs 16 bytes a slot instead of the
/// 80 of a whole cell, and a hash table has up to twice the slots it fills.
#[derive(Debug, Default)]
struct BucketCells {
    index: FxHashMap<CellId, u32>,
    cells: Vec<(CellId, Cell)>,
}

impl BucketCells {
    fn get(&self, id: &CellId) -> Option<&Cell> {
        self.index.get(id).map(|&i| &self.cells[i as usize].1)
    }

    fn get_mut(&mut self, id: &CellId) -> Option<&mut Cell> {
        self.index.get(id).map(|&i| &mut self.cells[i as usize].1)
    }

    /// Inserts or replaces; whether the cell is new.
    fn insert(&mut self, id: CellId, cell: Cell) -> bool {
        match self.index.get(&id) {
            Some(&i) => {
                self.cells[i as usize].1 = cell;
                false
            }
            None => {
                // A bucket's cells are bounded by the series limits, far below u32::MAX.
                self.index.insert(id, self.cells.len() as u32);
                self.cells.push((id, cell));
                true
            }
        }
    }
}

impl Cells {
    fn get(&self, k: &CellKey) -> Option<&Cell> {
        self.by_bucket.get(&k.bucket)?.get(&k.id())
    }

    fn get_mut(&mut self, k: &CellKey) -> Option<&mut Cell> {
        self.by_bucket.get_mut(&k.bucket)?.get_mut(&k.id())
    }

    fn insert(&mut self, k: CellKey, cell: Cell) {
        if self
            .by_bucket
            .entry(k.bucket)
            .or_default()
            .insert(k.id(), cell)
        {
            self.len += 1;
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Drops the cells of `bucket`, handing them to `each`.
    fn drop_bucket(&mut self, bucket: i64, mut each: impl FnMut(CellKey, Cell)) {
        if let Some(cells) = self.by_bucket.remove(&bucket) {
            self.len -= cells.cells.len();
            for (id, cell) in cells.cells {
                let key = CellKey {
                    source: id.source,
                    series: id.series,
                    partition: id.partition,
                    bucket,
                };
                each(key, cell);
            }
        }
    }
}

/// What the ledger reads back from the store of the buckets it no longer
/// holds in memory (older than the window plus grace, DESIGN §8). Every
/// read sees what the store committed; the ledger keeps what it changed in
/// memory until that is committed (see [`Ledger::seal`]).
pub trait Cold: Send {
    /// The stored cell of (`bucket`, `source`, `series`, `partition`).
    fn cell(
        &self,
        bucket: i64,
        source: u32,
        series: u32,
        partition: i32,
    ) -> Result<Option<CellRow>>;
    /// The stored sum of `series` in `bucket`.
    fn sum(&self, series: u32, bucket: i64) -> Result<Option<CellCounts>>;
    /// The stored close of `series` in `bucket`: status and whether it was
    /// unresolved at close.
    fn closed(&self, series: u32, bucket: i64) -> Result<Option<(String, bool)>>;
    /// Per series, the sum of the stored cells of the buckets before `before`.
    fn sums_before(&self, before: i64) -> Result<Vec<(u32, CellCounts)>>;
}

/// The bucket status a history row names, if it names one.
fn status_named(name: &str) -> Option<BucketStatus> {
    BucketStatus::ALL.into_iter().find(|s| s.as_str() == name)
}

/// The store behind [`Cold`], shown by name only.
struct ColdLink(Box<dyn Cold>);

impl std::fmt::Debug for ColdLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cold")
    }
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
    /// Sum of the cells not pruned yet, in memory or stored only.
    live: CellCounts,
    /// Sum of the cells already pruned by retention.
    pruned: CellCounts,
    /// The first bucket it counted in.
    first_bucket: Option<i64>,
    /// Its topic's id (`u32::MAX` for a placeholder).
    tid: u32,
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
            first_bucket: None,
            tid: u32::MAX,
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

/// A consumer group on one cluster: (cluster, group), shared by the lag
/// entries' store rows without copies.
type GroupKey = (Arc<str>, Arc<str>);

/// A group's lag entries, by topic and partition: nested so that a sample is
/// found by borrowing its names.
#[derive(Debug, Default)]
struct GroupLag {
    topics: BTreeMap<Arc<str>, BTreeMap<i32, LagEntry>>,
}

impl GroupLag {
    fn entries(&self) -> impl Iterator<Item = (&Arc<str>, i32, &LagEntry)> {
        self.topics
            .iter()
            .flat_map(|(t, parts)| parts.iter().map(move |(p, e)| (t, *p, e)))
    }
}

/// The latest lag sample of a partition, without the names its key holds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LastLag {
    committed: i64,
    end_offset: i64,
    start_offset: i64,
    lag_records: u64,
    lag_seconds: f64,
    commit_at_ms: i64,
    stable_offset: Option<i64>,
    estimated: bool,
}

impl From<&tally_audit::LagSample> for LastLag {
    fn from(s: &tally_audit::LagSample) -> Self {
        LastLag {
            committed: s.committed,
            end_offset: s.end_offset,
            start_offset: s.start_offset,
            lag_records: s.lag_records,
            lag_seconds: s.lag_seconds,
            commit_at_ms: s.commit_at_ms,
            stable_offset: s.stable_offset,
            estimated: s.estimated,
        }
    }
}

#[derive(Debug)]
struct LagEntry {
    /// Its row in the store.
    id: i64,
    /// Changed since its row was last handed to the store.
    dirty: bool,
    health: PartitionHealth,
    last: LastLag,
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

/// The first byte of a lag entry's compact form (a stored JSON state, the
/// form before it, starts with `{`).
const LAG_STATE_V1: u8 = 1;

impl LagEntry {
    /// The entry's stored state: [`LAG_STATE_V1`], the times, the latest
    /// sample as differences from the health's copy of it, then the health
    /// (typically 60–90 bytes where its JSON took 850).
    fn encode(&self, out: &mut Vec<u8>) {
        use crate::compact::{put_f64, put_i64, put_u64};
        let h = &self.health;
        let l = &self.last;
        out.push(LAG_STATE_V1);
        put_u64(out, self.source.map_or(0, |s| u64::from(s) + 1));
        put_i64(out, self.refreshed_ms);
        put_i64(out, self.at_ms.wrapping_sub(self.refreshed_ms));
        put_i64(out, self.interval_ms.map_or(-1, |i| i.max(0)));
        let flags = u8::from(l.stable_offset.is_some())
            | u8::from(l.estimated) << 1
            | u8::from(l.lag_seconds.to_bits() != h.lag_seconds().to_bits()) << 2;
        out.push(flags);
        put_i64(out, l.committed.wrapping_sub(h.committed()));
        put_i64(out, l.end_offset.wrapping_sub(h.end_offset()));
        put_i64(out, l.start_offset.wrapping_sub(h.start_offset()));
        put_i64(out, l.lag_records.wrapping_sub(h.lag_records()) as i64);
        put_i64(out, l.commit_at_ms.wrapping_sub(self.refreshed_ms));
        if let Some(stable) = l.stable_offset {
            put_i64(out, stable.wrapping_sub(l.end_offset));
        }
        if flags & 4 != 0 {
            put_f64(out, l.lag_seconds);
        }
        h.encode(out);
    }

    /// Reads [`LagEntry::encode`]'s form; None where it is not that.
    fn decode(id: i64, mut input: &[u8]) -> Option<LagEntry> {
        use crate::compact::{get_f64, get_i64, get_u64};
        let input = &mut input;
        let (&version, rest) = input.split_first()?;
        if version != LAG_STATE_V1 {
            return None;
        }
        *input = rest;
        let source = match get_u64(input)? {
            0 => None,
            s => Some(u32::try_from(s - 1).ok()?),
        };
        let refreshed_ms = get_i64(input)?;
        let at_ms = refreshed_ms.wrapping_add(get_i64(input)?);
        let interval_ms = Some(get_i64(input)?).filter(|&i| i >= 0);
        let (&flags, rest) = input.split_first()?;
        *input = rest;
        let d_committed = get_i64(input)?;
        let d_end = get_i64(input)?;
        let d_start = get_i64(input)?;
        let d_lag = get_i64(input)?;
        let commit_at_ms = refreshed_ms.wrapping_add(get_i64(input)?);
        let stable = if flags & 1 != 0 {
            Some(get_i64(input)?)
        } else {
            None
        };
        let lag_seconds = if flags & 4 != 0 {
            Some(get_f64(input)?)
        } else {
            None
        };
        let health = PartitionHealth::decode(input)?;
        if !input.is_empty() {
            return None;
        }
        let end_offset = health.end_offset().wrapping_add(d_end);
        let last = LastLag {
            committed: health.committed().wrapping_add(d_committed),
            end_offset,
            start_offset: health.start_offset().wrapping_add(d_start),
            lag_records: health.lag_records().wrapping_add(d_lag as u64),
            lag_seconds: lag_seconds.unwrap_or(health.lag_seconds()),
            commit_at_ms,
            stable_offset: stable.map(|s| end_offset.wrapping_add(s)),
            estimated: flags & 2 != 0,
        };
        Some(LagEntry {
            id,
            dirty: false,
            health,
            last,
            source,
            refreshed_ms,
            at_ms,
            interval_ms,
        })
    }
}

impl LagEntry {
    /// Whether the lag was not refreshed for [`STALE_AFTER_INTERVALS`] lag
    /// intervals at `now_ms`.
    fn is_stale(&self, now_ms: i64) -> bool {
        now_ms > self.stale_after()
    }

    /// The last moment the lag is still fresh.
    fn stale_after(&self) -> i64 {
        let interval = self
            .interval_ms
            .unwrap_or(DEFAULT_LAG_INTERVAL_MS)
            .max(MIN_LAG_INTERVAL_MS);
        self.refreshed_ms
            .saturating_add(interval.saturating_mul(STALE_AFTER_INTERVALS))
    }
}

/// A group's health as last evaluated, and the first moment the clock alone
/// can change it (a partition going stale or stopping).
#[derive(Debug)]
struct JudgedGroup {
    health: Arc<GroupHealth>,
    until_ms: i64,
}

/// A lag entry as the health table stored it before [`LAG_STATE_V1`] (JSON),
/// read from databases that a version before it wrote.
#[derive(serde::Deserialize)]
struct StoredLag {
    health: PartitionHealth,
    last: tally_audit::LagSample,
    #[serde(default)]
    source: Option<u32>,
    #[serde(default)]
    refreshed_ms: i64,
    #[serde(default)]
    at_ms: i64,
    #[serde(default)]
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
    cells: Cells,
    /// Where the buckets the ledger does not hold are read from; None holds
    /// every bucket of the retention in memory (a ledger without a store).
    cold: Option<ColdLink>,
    /// The first bucket held whole in memory: buckets before it were left
    /// to the store (their cells, sums and closes are read back when a late
    /// count comes). Never moves back.
    resident_from: i64,
    /// The window's stored cells are still being read in (see
    /// [`Ledger::begin_warming`]).
    warming: bool,
    /// The generation that changes made now belong to (see [`Ledger::seal`]).
    generation: u64,
    /// Per bucket held in memory, whole or in part: the generation of its
    /// last change. A bucket outside the window is dropped from memory only
    /// once that generation is committed.
    touched: BTreeMap<i64, u64>,
    /// Buckets before this were moved to the series' pruned totals.
    pruned_before: i64,
    /// (topic, bucket)s before the window that took a late count, to be
    /// judged again at the next evaluation.
    late_outside: BTreeSet<(u32, i64)>,
    dirty_sums: FxHashSet<(u32, i64)>,
    /// Evaluations so far: the `seq` of the snapshot's change hint.
    evaluations: u64,
    /// Topics whose books changed since the last evaluation.
    dirty_topics: FxHashSet<u32>,
    /// Whether every topic may have changed (a restore, a prune).
    all_topics_dirty: bool,
    /// What the time alone decides of the last evaluation: the newest closed
    /// bucket and the window's first bucket. While both stay, a topic whose
    /// counts did not change evaluates as before.
    last_epoch: Option<(i64, i64)>,
    /// Per topic id: its books and buckets at the last evaluation, reused
    /// while the change hint leaves it out.
    evaluated: Vec<Option<(Arc<TopicBooks>, TopicBuckets)>>,
    /// Per (cluster, group): its health at the last evaluation, reused until
    /// a sample changes it or the clock can.
    judged_groups: HashMap<GroupKey, JudgedGroup>,
    /// Groups whose lag changed since the last evaluation.
    dirty_groups: HashSet<GroupKey>,
    /// Series open over all sources (what [`LedgerConfig::max_series`] bounds).
    open_series: usize,
    /// What [`Ledger::restore`] left out.
    restore_skipped: Skipped,
    sums: BTreeMap<(u32, i64), CellCounts>,
    closed: FxHashMap<(u32, i64), Closed>,
    lag: BTreeMap<GroupKey, GroupLag>,
    /// The store row id of the next new lag entry.
    next_lag_id: i64,
    /// Per source: its latest cluster state (in memory only: its emitter
    /// sends the latest again whenever it connects).
    clusters: BTreeMap<u32, HeldCluster>,
    /// Store rows of lag entries forgotten since the last flush.
    dirty_health_deleted: Vec<i64>,
    dirty_kv_deleted: Vec<String>,
    latency: BTreeMap<LatencyKey, LatencyCell>,
    /// (source, cluster, topic, tier) already warned about for differing bounds.
    latency_bounds_warned: HashSet<LatencyKey>,
    key_buf: String,
    dirty_cells: Vec<CellKey>,
    dirty_sources: HashSet<u32>,
    dirty_series: FxHashSet<u32>,
    dirty_history: Vec<HistoryRow>,
    /// Groups with a lag entry changed since the last flush (each such
    /// entry is marked `dirty`).
    dirty_health: HashSet<GroupKey>,
    dirty_latency: BTreeSet<LatencyKey>,
    /// Per cluster and topic, the source whose `broker` and `group:` counts are
    /// taken (DESIGN §5); nested so that a lookup borrows the names.
    log_owners: HashMap<String, HashMap<String, u32>>,
    /// When each (mirror series, bucket) last rose, while that is within a
    /// grace period: a short closed bucket of a copy that is still rising is
    /// `pending`, not `incomplete` (§11). Not stored: after a restart a short
    /// copy is `incomplete` until it rises again.
    mirror_rose: FxHashMap<(u32, i64), i64>,
    /// Per topic with a mirror tier that rose: when a grace period after
    /// its last rise ends, and it must be judged again though nothing changed.
    mirror_recheck: FxHashMap<u32, i64>,
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
            cells: Cells::default(),
            cold: None,
            resident_from: i64::MIN,
            warming: false,
            generation: 1,
            touched: BTreeMap::new(),
            pruned_before: i64::MIN,
            late_outside: BTreeSet::new(),
            dirty_sums: FxHashSet::default(),
            evaluations: 0,
            dirty_topics: FxHashSet::default(),
            all_topics_dirty: true,
            last_epoch: None,
            evaluated: Vec::new(),
            judged_groups: HashMap::new(),
            dirty_groups: HashSet::new(),
            open_series: 0,
            restore_skipped: Skipped::default(),
            sums: BTreeMap::new(),
            closed: FxHashMap::default(),
            lag: BTreeMap::new(),
            next_lag_id: 1,
            clusters: BTreeMap::new(),
            dirty_health_deleted: Vec::new(),
            dirty_kv_deleted: Vec::new(),
            latency: BTreeMap::new(),
            latency_bounds_warned: HashSet::new(),
            key_buf: String::new(),
            dirty_cells: Vec::new(),
            dirty_sources: HashSet::new(),
            dirty_series: FxHashSet::default(),
            mirror_rose: FxHashMap::default(),
            mirror_recheck: FxHashMap::default(),
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
}

mod apply;
mod evaluate;
mod persist;

pub use evaluate::TopicPlan;

#[cfg(test)]
mod tests;
