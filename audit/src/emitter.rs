//! The emitter client: how brokers and applications stream cumulative counts
//! and lag samples to the agent over WebSocket (DESIGN.md §5).
//!
//! [`Emitter::start`] spawns one connection task. Callers record counts and
//! lag samples through cheap, non-blocking calls that only touch memory; the
//! task sends what changed every [`EmitterConfig::flush_interval`], keeps
//! every message until the agent acknowledges it, and after a reconnect sends
//! again whatever was not acknowledged. Counts are cumulative, so a resend
//! never double counts: the agent keeps the last value per key.
//!
//! The buffer is bounded by [`EmitterConfig::max_pending`]; when the agent is
//! away for long enough to fill it, the oldest buckets are dropped first and
//! counted in [`EmitterStats::dropped_entries`].
//!
//! [`Emitter::record_forget`] retracts groups and topics: it drops what is
//! held for them and sends a `forget` that is kept, like counts, until the
//! agent acknowledges it, and sent before any lag recorded after it.
//! [`Emitter::record_cluster`] replaces the cluster state held; only the
//! latest is sent, and sent again after a reconnect.
//!
//! The agent's `welcome` says which buckets it accepts (from its retention
//! back to an hour or its grace ahead); the emitter moves that range along
//! its own clock and drops an entry outside it before sending, counted in
//! [`EmitterStats::out_of_range_entries`] and logged, instead of sending what
//! the agent would drop.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header::AUTHORIZATION};
use tokio_tungstenite::{WebSocketStream, tungstenite};

use crate::wire::{
    AcceptRange, DEFAULT_MAX_LIST_ENTRIES, DEFAULT_MAX_MESSAGE_BYTES, MAX_COUNT,
    MAX_LATENCY_BOUNDS, MAX_PARTITION,
};
use crate::{
    Bucket, BucketWidth, CellCounts, Cluster, ClusterState, CountEntry, Counts, Forget, Hello, Lag,
    LagSample, Latency, LatencyHistogram, Message, Reply, Tier, TierKind, validate_group,
    validate_topic,
};

/// How often the overflow warning may be logged.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(5);
/// Room kept in every message for the envelope around its entries.
const ENVELOPE_BYTES: usize = 128;

/// What an [`Emitter`] connects to, who it says it is, and its limits.
#[derive(Clone)]
pub struct EmitterConfig {
    /// The agent's ingest endpoint, e.g. `ws://127.0.0.1:9400/api/v1/ingest`.
    pub url: String,
    /// A stable id of this emitter, e.g. `broker-local-1`.
    pub source: String,
    /// The Kafka cluster the counts are about.
    pub cluster: String,
    /// The kinds of tier this source reports.
    pub tier_kinds: Vec<TierKind>,
    /// The bucket width; it must equal the agent's.
    pub width: BucketWidth,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// A PEM file of the CA that signed the agent's certificate, for a
    /// `wss://` URL; without one the system's root certificates are trusted.
    pub agent_ca: Option<std::path::PathBuf>,
    /// How often changed state is sent (default 250 ms).
    pub flush_interval: Duration,
    /// The most count entries held, changed or unacknowledged (default 200 000).
    pub max_pending: usize,
    /// The most entries in one message (default 5 000).
    pub max_batch: usize,
    /// The largest message sent, in bytes (default: the agent's default limit, 1 MiB).
    pub max_message_bytes: usize,
    /// The most `counts` messages awaiting acknowledgement at once (default 16).
    pub max_in_flight: usize,
    /// The first delay before reconnecting (default 100 ms).
    pub backoff_min: Duration,
    /// The longest delay before reconnecting (default 10 s).
    pub backoff_max: Duration,
    /// How long connecting and the `hello`/`welcome` exchange may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long a message may wait for its answer before the connection is
    /// judged dead and opened again (default 30 s).
    pub ack_timeout: Duration,
    /// How long [`Emitter::shutdown`] waits for the final flush (default 3 s).
    pub shutdown_timeout: Duration,
}

impl EmitterConfig {
    /// A configuration with the given endpoint and identity and the default limits.
    pub fn new(
        url: impl Into<String>,
        source: impl Into<String>,
        cluster: impl Into<String>,
        tier_kinds: Vec<TierKind>,
        width: BucketWidth,
    ) -> Self {
        EmitterConfig {
            url: url.into(),
            source: source.into(),
            cluster: cluster.into(),
            tier_kinds,
            width,
            token: None,
            agent_ca: None,
            flush_interval: Duration::from_millis(250),
            max_pending: 200_000,
            max_batch: 5_000,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_in_flight: 16,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(3),
        }
    }
}

impl fmt::Debug for EmitterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: show only whether there is one.
        f.debug_struct("EmitterConfig")
            .field("url", &self.url)
            .field("source", &self.source)
            .field("cluster", &self.cluster)
            .field("tier_kinds", &self.tier_kinds)
            .field("width", &self.width)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("agent_ca", &self.agent_ca)
            .field("flush_interval", &self.flush_interval)
            .field("max_pending", &self.max_pending)
            .field("max_batch", &self.max_batch)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_in_flight", &self.max_in_flight)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("ack_timeout", &self.ack_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

/// What an emitter has done so far; the broker exports these as metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EmitterStats {
    /// Whether a session with the agent is open (welcome received).
    pub connected: bool,
    /// Count entries held now: changed and not yet sent, or sent and not yet acknowledged.
    pub buffered: u64,
    /// Messages sent (`counts`, `lag`, `latency`, `forget` and `cluster`), resends included.
    pub sent_messages: u64,
    /// Messages the agent acknowledged.
    pub acked_messages: u64,
    /// Count entries sent again because their first message was never acknowledged.
    pub resent_entries: u64,
    /// Count entries, and names waiting to be forgotten, dropped because the buffer was full.
    pub dropped_entries: u64,
    /// Entries (counts, lag samples, latency histograms) the agent refused with an `error` reply.
    pub refused_entries: u64,
    /// Entries (counts and lag samples) refused before sending because the
    /// agent would refuse them (bad topic, unaligned bucket, …).
    pub invalid_entries: u64,
    /// Count entries dropped before sending because their bucket lies outside
    /// the range the agent accepts (its `welcome`'s `accept_from_ms` to
    /// `accept_to_ms`, moved along with the clock).
    pub out_of_range_entries: u64,
    /// `error` replies received.
    pub error_replies: u64,
    /// Sessions opened (welcome received).
    pub connects: u64,
    /// The last connection failure or refusal, for a person.
    pub last_error: Option<String>,
}

/// A cheap handle on an emitter; clones share one buffer and one connection.
///
/// Every method may be called from any thread. Dropping the last handle stops
/// the connection task without a final flush; call [`Emitter::shutdown`] to
/// send what is left first.
#[derive(Clone)]
pub struct Emitter {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Emitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emitter")
            .field("url", &self.handle.shared.cfg.url)
            .field("source", &self.handle.shared.cfg.source)
            .finish_non_exhaustive()
    }
}

impl Emitter {
    /// Starts an emitter: spawns its connection task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn start(cfg: EmitterConfig) -> Emitter {
        let started_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let shared = Arc::new(Shared {
            connector: crate::tls::AgentConnector::new(cfg.agent_ca.clone()),
            cfg,
            started_at_ms,
            state: Mutex::new(State::default()),
            send_now: Notify::new(),
            progress: Notify::new(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(Arc::clone(&shared), stop_rx));
        Emitter {
            handle: Arc::new(Handle {
                shared,
                stop,
                task: Mutex::new(Some(task)),
            }),
        }
    }

    /// Records the cumulative count of one (tier, topic, partition, bucket),
    /// replacing the last value recorded for it.
    pub fn record_count(&self, entry: CountEntry) {
        self.record_counts(std::iter::once(entry));
    }

    /// The oldest bucket start the agent keeps now (its `welcome`'s `accept_from_ms`,
    /// moved on by the time since); `None` before the first welcome. Books may forget
    /// the buckets before it.
    pub fn accepts_from_ms(&self) -> Option<i64> {
        self.handle
            .shared
            .lock()
            .accept_now()
            .map(|range| range.from_ms)
    }

    /// Records many cumulative counts at once (see [`Emitter::record_count`]).
    pub fn record_counts(&self, entries: impl IntoIterator<Item = CountEntry>) {
        let shared = &self.handle.shared;
        let mut state = shared.lock();
        state.version += 1;
        let version = state.version;
        for entry in entries {
            if let Err(why) = entry.check(shared.cfg.width).map_err(|e| e.detail) {
                state.note_invalid(&why);
                continue;
            }
            let (key, tally) = split_entry(entry);
            state.dirty.insert(
                key,
                Held {
                    tally,
                    version,
                    resend: false,
                },
            );
        }
        if state.enforce_bound(shared.cfg.max_pending) {
            shared.progress.notify_waiters();
        }
    }

    /// Records lag samples taken at `at_ms`; each replaces the last sample of
    /// its (group, topic, partition).
    pub fn record_lag(&self, at_ms: i64, samples: Vec<LagSample>) {
        let shared = &self.handle.shared;
        let mut state = shared.lock();
        state.version += 1;
        let version = state.version;
        for sample in samples {
            if let Some(why) = invalid_lag(&sample) {
                state.note_invalid(&why);
                continue;
            }
            let key = LagKey {
                group: sample.group.clone(),
                topic: sample.topic.clone(),
                partition: sample.partition,
            };
            state.lag.insert(
                key,
                LagHeld {
                    at_ms,
                    sample,
                    version,
                    dirty: true,
                },
            );
        }
    }

    /// Records latency histograms; each replaces the last histogram of its
    /// (tier, topic). They are cumulative since this emitter started, so a
    /// histogram that is sent twice, or after a reconnect, never double counts.
    pub fn record_latency(&self, histograms: Vec<LatencyHistogram>) {
        let shared = &self.handle.shared;
        let mut state = shared.lock();
        state.version += 1;
        let version = state.version;
        for histogram in histograms {
            if let Some(why) = invalid_latency(&histogram) {
                state.note_invalid(&why);
                continue;
            }
            let key = LatencyKey {
                tier: histogram.tier.clone(),
                topic: histogram.topic.clone(),
            };
            if state
                .latency
                .get(&key)
                .is_some_and(|held| held.histogram == histogram)
            {
                continue;
            }
            state.latency.insert(
                key,
                LatencyHeld {
                    histogram,
                    version,
                    dirty: true,
                },
            );
        }
    }

    /// Retracts consumer groups and topics this source no longer reports
    /// (deleted, or an empty group expired): drops the lag samples held for
    /// them (and the latency histograms of the topics), so that a reconnect
    /// does not send them again, and sends a `forget` naming them.
    ///
    /// The `forget` is kept until the agent acknowledges it and sent again
    /// after a reconnect; it goes out before any lag recorded after this call,
    /// so that a group recreated later is not forgotten again. A name the
    /// agent would refuse is dropped and counted in
    /// [`EmitterStats::invalid_entries`]. At most
    /// [`EmitterConfig::max_pending`] names wait at once; beyond that the
    /// oldest are dropped and counted in [`EmitterStats::dropped_entries`].
    pub fn record_forget(&self, groups: Vec<String>, topics: Vec<String>) {
        let shared = &self.handle.shared;
        let mut state = shared.lock();
        state.version += 1;
        let version = state.version;
        for group in groups {
            if let Err(e) = validate_group(&group) {
                state.note_invalid(&e.detail);
                continue;
            }
            state.lag.retain(|k, _| k.group != group);
            state.forget.insert((ForgetKind::Group, group), version);
        }
        for topic in topics {
            if let Err(e) = validate_topic(&topic) {
                state.note_invalid(&e.detail);
                continue;
            }
            state.lag.retain(|k, _| k.topic != topic);
            state.latency.retain(|k, _| k.topic != topic);
            state.forget.insert((ForgetKind::Topic, topic), version);
        }
        state.bound_forget(shared.cfg.max_pending);
        drop(state);
        shared.send_now.notify_one();
    }

    /// Replaces the cluster state held: the brokers, topics' partitions and
    /// groups' state the agent exports. Only the latest state is sent; it is
    /// sent again after a reconnect, and a newer one replaces it even before
    /// it was sent.
    ///
    /// A state the agent would refuse (a bad name, a duplicate, a number out
    /// of range, more than [`crate::wire::DEFAULT_MAX_LIST_ENTRIES`] entries
    /// in a list, or larger than [`EmitterConfig::max_message_bytes`]) is
    /// dropped, counted in [`EmitterStats::invalid_entries`] and logged; the
    /// last good one stays.
    pub fn record_cluster(&self, cluster: ClusterState) {
        let shared = &self.handle.shared;
        let mut state = shared.lock();
        if let Err(e) = cluster.check(DEFAULT_MAX_LIST_ENTRIES) {
            state.note_invalid(&format!("cluster state: {}", e.detail));
            return;
        }
        let size = Message::Cluster(Cluster {
            // The largest seq: measured before it has its own.
            seq: crate::wire::MAX_SEQ,
            state: cluster.clone(),
        })
        .to_json()
        .len();
        if size > shared.cfg.max_message_bytes {
            state.note_invalid(&format!(
                "a cluster state of \"{size}\" bytes is over the message limit of {} bytes: raise the agent's --max-message-bytes (and this emitter's max_message_bytes), or watch fewer topics and groups",
                shared.cfg.max_message_bytes
            ));
            return;
        }
        if state
            .cluster
            .as_ref()
            .is_some_and(|held| held.state == cluster)
        {
            return;
        }
        state.version += 1;
        let version = state.version;
        state.cluster = Some(ClusterHeld {
            state: cluster,
            version,
            dirty: true,
        });
    }

    /// What the emitter has done so far.
    pub fn stats(&self) -> EmitterStats {
        let state = self.handle.shared.lock();
        let mut stats = state.stats.clone();
        stats.buffered = (state.dirty.len() + state.in_flight_entries) as u64;
        stats
    }

    /// Sends what is pending now and waits until nothing recorded before the
    /// call is still waiting to be sent or acknowledged.
    ///
    /// Returns `false` when `timeout` passes first (e.g. the agent is down).
    /// Entries the agent refused or that were dropped for room are no longer
    /// waiting; they show in [`Emitter::stats`]. A value replaced by a newer
    /// one recorded after the call is not waited for.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let shared = &self.handle.shared;
        let deadline = Instant::now() + timeout;
        let target = shared.lock().version;
        shared.send_now.notify_one();
        loop {
            let progress = shared.progress.notified();
            tokio::pin!(progress);
            // Registered before checking, so progress made in between still wakes us.
            progress.as_mut().enable();
            if !shared.lock().waiting_for(target) {
                return true;
            }
            if tokio::time::timeout_at(deadline, progress).await.is_err() {
                return !shared.lock().waiting_for(target);
            }
        }
    }

    /// Flushes for at most [`EmitterConfig::shutdown_timeout`], then closes the
    /// connection and stops the task. Other handles keep buffering, but
    /// nothing is sent any more.
    pub async fn shutdown(self) {
        let shared = &self.handle.shared;
        let flushed = self.flush(shared.cfg.shutdown_timeout).await;
        if !flushed {
            let stats = self.stats();
            tracing::warn!(
                source = %shared.cfg.source,
                buffered = stats.buffered,
                "emitter stopped before the agent acknowledged everything"
            );
        }
        self.handle.stop.send_replace(true);
        let task = self
            .handle
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut task) = task
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

/// A count's identity; ordered by bucket first so that the oldest buckets
/// are sent, and dropped, first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CountKey {
    bucket: Bucket,
    tier: Tier,
    topic: String,
    partition: i32,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    tally: CellCounts,
    /// The record call that set this value; what [`Emitter::flush`] waits for.
    version: u64,
    /// Whether this value was sent before without an answer.
    resend: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LagKey {
    group: String,
    topic: String,
    partition: i32,
}

#[derive(Clone, Debug)]
struct LagHeld {
    at_ms: i64,
    sample: LagSample,
    version: u64,
    dirty: bool,
}

/// What a name waiting to be forgotten names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ForgetKind {
    Group,
    Topic,
}

#[derive(Clone, Debug)]
struct ClusterHeld {
    state: ClusterState,
    version: u64,
    dirty: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct LatencyKey {
    tier: Tier,
    topic: String,
}

#[derive(Clone, Debug)]
struct LatencyHeld {
    histogram: LatencyHistogram,
    version: u64,
    dirty: bool,
}

/// The first of `keys` and as many after it as fit one message: at most
/// `max_batch` entries and `budget` bytes, as `bytes` counts each.
fn fitting<K: Clone>(
    keys: &[&K],
    max_batch: usize,
    budget: usize,
    bytes: impl Fn(&K) -> usize,
) -> Vec<K> {
    let mut size = 0;
    let mut chosen = Vec::new();
    for key in keys {
        let b = bytes(key);
        if !chosen.is_empty() && (chosen.len() >= max_batch || size + b > budget) {
            break;
        }
        size += b;
        chosen.push((*key).clone());
    }
    chosen
}

enum Payload {
    Counts(VecDeque<(CountKey, Held)>),
    Lag(Vec<(LagKey, u64)>),
    Latency(Vec<(LatencyKey, u64)>),
    Forget(Vec<((ForgetKind, String), u64)>),
    Cluster(u64),
}

struct InFlight {
    sent_at: Instant,
    payload: Payload,
}

struct State {
    dirty: BTreeMap<CountKey, Held>,
    in_flight: BTreeMap<u64, InFlight>,
    in_flight_entries: usize,
    lag: HashMap<LagKey, LagHeld>,
    /// The order in which the dirty lag samples of poll `lag_plan_at` go out.
    lag_plan: VecDeque<LagKey>,
    lag_plan_at: i64,
    latency: HashMap<LatencyKey, LatencyHeld>,
    /// Names to forget, not yet sent, with the record call that named them.
    forget: BTreeMap<(ForgetKind, String), u64>,
    cluster: Option<ClusterHeld>,
    next_seq: u64,
    version: u64,
    stats: EmitterStats,
    dropped_since_warning: u64,
    last_drop_warning: Option<Instant>,
    last_invalid_warning: Option<Instant>,
    last_range_warning: Option<Instant>,
    /// The range of buckets the agent accepts, as its last `welcome` gave it,
    /// and when that arrived.
    accept: Option<(AcceptRange, Instant)>,
}

impl Default for State {
    fn default() -> Self {
        State {
            dirty: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            in_flight_entries: 0,
            lag: HashMap::new(),
            lag_plan: VecDeque::new(),
            lag_plan_at: i64::MIN,
            latency: HashMap::new(),
            forget: BTreeMap::new(),
            cluster: None,
            next_seq: 1,
            version: 0,
            stats: EmitterStats::default(),
            dropped_since_warning: 0,
            last_drop_warning: None,
            last_invalid_warning: None,
            last_range_warning: None,
            accept: None,
        }
    }
}

struct Shared {
    cfg: EmitterConfig,
    /// Opens the WebSocket, over TLS for `wss://`.
    connector: crate::tls::AgentConnector,
    started_at_ms: i64,
    state: Mutex<State>,
    /// Wakes the task to send now rather than at the next tick.
    send_now: Notify,
    /// Wakes flush waiters when something was acknowledged, refused or dropped.
    progress: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panic elsewhere
        // while holding the lock leaves nothing half-done worth refusing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn split_entry(e: CountEntry) -> (CountKey, CellCounts) {
    (
        CountKey {
            bucket: e.bucket,
            tier: e.tier,
            topic: e.topic,
            partition: e.partition,
        },
        e.counts,
    )
}

fn join_entry(k: &CountKey, t: &CellCounts) -> CountEntry {
    CountEntry {
        tier: k.tier.clone(),
        topic: k.topic.clone(),
        partition: k.partition,
        bucket: k.bucket,
        counts: *t,
    }
}

fn invalid_lag(s: &LagSample) -> Option<String> {
    if let Err(err) = validate_group(&s.group) {
        return Some(err.detail);
    }
    if let Err(err) = validate_topic(&s.topic) {
        return Some(err.detail);
    }
    if !(0..=MAX_PARTITION).contains(&s.partition) {
        return Some(format!(
            "partition \"{}\" is out of range: expected 0 to {MAX_PARTITION}",
            s.partition
        ));
    }
    for (name, v) in [
        ("committed", s.committed),
        ("end_offset", s.end_offset),
        ("start_offset", s.start_offset),
    ] {
        if v < -1 {
            return Some(format!(
                "{name} \"{v}\" is not an offset: expected -1 or more"
            ));
        }
    }
    if s.lag_records > MAX_COUNT {
        return Some(format!(
            "lag_records \"{}\" is not a count: expected an integer from 0 to {MAX_COUNT}",
            s.lag_records
        ));
    }
    if !s.lag_seconds.is_finite() || s.lag_seconds < 0.0 || s.lag_seconds > 1e12 {
        return Some(format!(
            "lag_seconds \"{}\" is not accepted: expected a finite number of seconds, 0 or more",
            s.lag_seconds
        ));
    }
    None
}

fn invalid_latency(h: &LatencyHistogram) -> Option<String> {
    if let Err(err) = validate_topic(&h.topic) {
        return Some(err.detail);
    }
    if h.bounds_ms.len() != h.counts.len() || h.bounds_ms.len() > MAX_LATENCY_BOUNDS {
        return Some(format!(
            "latency histogram with \"{}\" bounds and \"{}\" counts is not accepted: expected as many counts as bounds, at most {MAX_LATENCY_BOUNDS}",
            h.bounds_ms.len(),
            h.counts.len()
        ));
    }
    if h.bounds_ms.windows(2).any(|w| w[0] >= w[1]) {
        return Some(format!(
            "latency bounds \"{:?}\" are not accepted: expected strictly ascending",
            h.bounds_ms
        ));
    }
    if h.counts.windows(2).any(|w| w[0] > w[1]) || h.counts.last().is_some_and(|&c| c > h.count) {
        return Some(format!(
            "latency counts \"{:?}\" are not accepted: expected cumulative, never decreasing, at most the total \"{}\"",
            h.counts, h.count
        ));
    }
    let largest = h
        .bounds_ms
        .iter()
        .chain(&h.counts)
        .chain([&h.count, &h.sum_ms])
        .max()
        .copied()
        .unwrap_or(0);
    if largest > MAX_COUNT {
        return Some(format!(
            "latency value \"{largest}\" is not accepted: expected an integer from 0 to {MAX_COUNT}"
        ));
    }
    None
}

fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

fn signed_len(n: i64) -> usize {
    usize::from(n < 0) + decimal_len(n.unsigned_abs())
}

/// An upper bound on the JSON size of one count entry.
fn count_entry_bytes(k: &CountKey, t: &CellCounts) -> usize {
    const FRAME: &str = r#"{"tier":"","topic":"","partition":,"bucket":,"records":,"bytes":,"no_timestamp":,"expired":,"skipped":,"aborted":},"#;
    let tier_name = match &k.tier {
        Tier::Produced => "produced".len(),
        Tier::Broker => "broker".len(),
        Tier::Group(n) => "group:".len() + 2 * n.len(),
        Tier::Consumer(n) => "consumer:".len() + 2 * n.len(),
        Tier::Mirror(n) => "mirror:".len() + 2 * n.len(),
    };
    FRAME.len()
        + tier_name
        + k.topic.len()
        + signed_len(i64::from(k.partition))
        + signed_len(k.bucket.start_ms())
        + t.named()
            .into_iter()
            .map(|(_, v)| decimal_len(v))
            .sum::<usize>()
}

/// An upper bound on the JSON size of one lag sample.
fn lag_sample_bytes(s: &LagSample) -> usize {
    // Keys, punctuation, seven integers of at most 20 characters and one float of at most 24.
    const FIXED: usize = 140 + 7 * 20 + 24;
    FIXED + 2 * s.group.len() + s.topic.len()
}

/// An upper bound on the JSON size of one latency histogram.
fn latency_histogram_bytes(h: &LatencyHistogram) -> usize {
    const FIXED: usize = 100 + 2 * 20;
    // Every number at most 20 characters and a comma.
    FIXED + 2 * h.tier.to_string().len() + h.topic.len() + 21 * (h.bounds_ms.len() + h.counts.len())
}

impl State {
    fn note_invalid(&mut self, why: &str) {
        self.stats.invalid_entries += 1;
        let now = Instant::now();
        if self
            .last_invalid_warning
            .is_none_or(|t| now.duration_since(t) >= DROP_WARNING_EVERY)
        {
            self.last_invalid_warning = Some(now);
            tracing::warn!(
                invalid_entries = self.stats.invalid_entries,
                "emitter refused an entry the agent would refuse: {why}"
            );
        }
    }

    /// Drops the oldest buckets until the held entries fit; true when any were dropped.
    fn enforce_bound(&mut self, max_pending: usize) -> bool {
        let mut dropped = 0u64;
        while self.dirty.len() + self.in_flight_entries > max_pending {
            let dirty_oldest = self.dirty.first_key_value().map(|(k, _)| k.bucket);
            let flight_oldest = self
                .in_flight
                .iter()
                .filter_map(|(seq, f)| match &f.payload {
                    Payload::Counts(v) => v.front().map(|(k, _)| (k.bucket, *seq)),
                    Payload::Lag(_)
                    | Payload::Latency(_)
                    | Payload::Forget(_)
                    | Payload::Cluster(_) => None,
                })
                .min();
            match (dirty_oldest, flight_oldest) {
                (Some(d), Some((f, seq))) if f < d => self.drop_in_flight_front(seq),
                (Some(_), _) => {
                    self.dirty.pop_first();
                }
                (None, Some((_, seq))) => self.drop_in_flight_front(seq),
                (None, None) => break,
            }
            dropped += 1;
        }
        if dropped == 0 {
            return false;
        }
        self.stats.dropped_entries += dropped;
        self.dropped_since_warning += dropped;
        let now = Instant::now();
        if self
            .last_drop_warning
            .is_none_or(|t| now.duration_since(t) >= DROP_WARNING_EVERY)
        {
            self.last_drop_warning = Some(now);
            tracing::warn!(
                dropped = self.dropped_since_warning,
                dropped_total = self.stats.dropped_entries,
                max_pending,
                "emitter buffer full: dropped count entries of the oldest buckets"
            );
            self.dropped_since_warning = 0;
        }
        true
    }

    fn drop_in_flight_front(&mut self, seq: u64) {
        if let Some(InFlight {
            payload: Payload::Counts(v),
            ..
        }) = self.in_flight.get_mut(&seq)
            && v.pop_front().is_some()
        {
            self.in_flight_entries -= 1;
        }
    }

    /// Drops the oldest names waiting to be forgotten beyond `max_pending`.
    fn bound_forget(&mut self, max_pending: usize) {
        let over = self.forget.len().saturating_sub(max_pending.max(1));
        if over == 0 {
            return;
        }
        let mut oldest: Vec<((ForgetKind, String), u64)> =
            std::mem::take(&mut self.forget).into_iter().collect();
        oldest.sort_by_key(|(_, version)| *version);
        self.forget = oldest.into_iter().skip(over).collect();
        self.stats.dropped_entries += over as u64;
        tracing::warn!(
            dropped = over,
            max_pending,
            "emitter buffer full: dropped the oldest groups and topics waiting to be forgotten"
        );
    }

    fn waiting_for(&self, target: u64) -> bool {
        self.forget.values().any(|v| *v <= target)
            || self
                .cluster
                .as_ref()
                .is_some_and(|c| c.dirty && c.version <= target)
            || self.dirty.values().any(|h| h.version <= target)
            || self.lag.values().any(|l| l.dirty && l.version <= target)
            || self
                .latency
                .values()
                .any(|l| l.dirty && l.version <= target)
            || self.in_flight.values().any(|f| match &f.payload {
                Payload::Counts(v) => v.iter().any(|(_, h)| h.version <= target),
                Payload::Lag(v) => v.iter().any(|(_, version)| *version <= target),
                Payload::Latency(v) => v.iter().any(|(_, version)| *version <= target),
                Payload::Forget(v) => v.iter().any(|(_, version)| *version <= target),
                Payload::Cluster(version) => *version <= target,
            })
    }

    /// Gives `payload` the next sequence number and holds it in flight until
    /// the agent answers.
    fn launch(&mut self, payload: Payload) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.insert(
            seq,
            InFlight {
                sent_at: Instant::now(),
                payload,
            },
        );
        self.stats.sent_messages += 1;
        seq
    }

    /// The next message to send, moved to in-flight; `None` when nothing is due.
    fn next_message(&mut self, cfg: &EmitterConfig) -> Option<Message> {
        let budget = cfg.max_message_bytes.saturating_sub(ENVELOPE_BYTES);
        let max_batch = cfg.max_batch.max(1);
        // Forgetting goes first: lag recorded after a forget is newer than it.
        if !self.forget.is_empty() {
            let mut size = 0;
            let mut sent = Vec::new();
            while sent.len() < max_batch {
                let Some(entry) = self.forget.first_entry() else {
                    break;
                };
                // A quoted, escaped name and a comma.
                let bytes = 2 * entry.key().1.len() + 3;
                if !sent.is_empty() && size + bytes > budget {
                    break;
                }
                size += bytes;
                sent.push(entry.remove_entry());
            }
            let names = |kind: ForgetKind| -> Vec<String> {
                sent.iter()
                    .filter(|((k, _), _)| *k == kind)
                    .map(|((_, name), _)| name.clone())
                    .collect()
            };
            let (groups, topics) = (names(ForgetKind::Group), names(ForgetKind::Topic));
            let seq = self.launch(Payload::Forget(sent));
            return Some(Message::Forget(Forget {
                seq,
                groups,
                topics,
            }));
        }
        if let Some(at_ms) = self.lag.values().filter(|l| l.dirty).map(|l| l.at_ms).min() {
            // The dirty samples of the oldest poll go out in (group, topic, partition)
            // order, `max_batch` a message: the order is worked out once per poll and
            // followed over its messages (a collector's poll holds 100,000 samples);
            // samples that became dirty since are picked up when it runs out.
            let mut chosen = self.take_lag_plan(at_ms, max_batch, budget);
            if chosen.is_empty() {
                self.plan_lag(at_ms);
                chosen = self.take_lag_plan(at_ms, max_batch, budget);
            }
            let mut partitions = Vec::with_capacity(chosen.len());
            let mut sent = Vec::with_capacity(chosen.len());
            for key in chosen {
                if let Some(held) = self.lag.get_mut(&key) {
                    held.dirty = false;
                    partitions.push(held.sample.clone());
                    sent.push((key, held.version));
                }
            }
            let seq = self.launch(Payload::Lag(sent));
            return Some(Message::Lag(Lag {
                seq,
                at_ms,
                partitions,
            }));
        }
        if let Some(held) = self.cluster.as_mut().filter(|c| c.dirty) {
            held.dirty = false;
            let state = held.state.clone();
            let version = held.version;
            let seq = self.launch(Payload::Cluster(version));
            return Some(Message::Cluster(Cluster { seq, state }));
        }
        if self.latency.values().any(|l| l.dirty) {
            let mut keys: Vec<&LatencyKey> = self
                .latency
                .iter()
                .filter(|(_, l)| l.dirty)
                .map(|(k, _)| k)
                .collect();
            keys.sort();
            let chosen = fitting(&keys, max_batch, budget, |k| {
                self.latency
                    .get(k)
                    .map_or(0, |h| latency_histogram_bytes(&h.histogram))
            });
            let mut histograms = Vec::with_capacity(chosen.len());
            let mut sent = Vec::with_capacity(chosen.len());
            for key in chosen {
                if let Some(held) = self.latency.get_mut(&key) {
                    held.dirty = false;
                    histograms.push(held.histogram.clone());
                    sent.push((key, held.version));
                }
            }
            let seq = self.launch(Payload::Latency(sent));
            return Some(Message::Latency(Latency { seq, histograms }));
        }
        let counts_in_flight = self
            .in_flight
            .values()
            .filter(|f| matches!(f.payload, Payload::Counts(_)))
            .count();
        if self.dirty.is_empty() || counts_in_flight >= cfg.max_in_flight.max(1) {
            return None;
        }
        let accept = self.accept_now();
        let mut size = 0;
        let mut batch = VecDeque::new();
        let mut out_of_range = 0u64;
        while batch.len() < max_batch {
            let Some(entry) = self.dirty.first_entry() else {
                break;
            };
            if accept.is_some_and(|r| !r.contains(entry.key().bucket)) {
                entry.remove();
                out_of_range += 1;
                continue;
            }
            let bytes = count_entry_bytes(entry.key(), &entry.get().tally);
            if !batch.is_empty() && size + bytes > budget {
                break;
            }
            size += bytes;
            let (key, held) = entry.remove_entry();
            if held.resend {
                self.stats.resent_entries += 1;
            }
            batch.push_back((key, held));
        }
        self.note_out_of_range(out_of_range, accept);
        if batch.is_empty() {
            return None;
        }
        let counts = batch.iter().map(|(k, h)| join_entry(k, &h.tally)).collect();
        self.in_flight_entries += batch.len();
        let seq = self.launch(Payload::Counts(batch));
        Some(Message::Counts(Counts { seq, counts }))
    }

    /// The range of buckets the agent accepts now: the one its welcome gave,
    /// moved on by the time since.
    pub(crate) fn accept_now(&self) -> Option<AcceptRange> {
        self.accept.map(|(range, at)| {
            let elapsed = i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX);
            range.shifted(elapsed)
        })
    }

    fn note_out_of_range(&mut self, dropped: u64, accept: Option<AcceptRange>) {
        if dropped == 0 {
            return;
        }
        self.stats.out_of_range_entries += dropped;
        let now = Instant::now();
        if self
            .last_range_warning
            .is_none_or(|t| now.duration_since(t) >= DROP_WARNING_EVERY)
        {
            self.last_range_warning = Some(now);
            let (from_ms, to_ms) = accept.map_or((0, 0), |r| (r.from_ms, r.to_ms));
            tracing::warn!(
                dropped,
                dropped_total = self.stats.out_of_range_entries,
                accept_from_ms = from_ms,
                accept_to_ms = to_ms,
                "emitter dropped count entries whose bucket the agent does not accept (older than its retention, or too far ahead)"
            );
        }
    }

    fn on_reply(&mut self, text: &str) {
        let reply = match serde_json::from_str::<Reply>(text) {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(
                    reply = %text.chars().take(200).collect::<String>(),
                    "ignored a reply from the agent that is not a reply: {e}"
                );
                return;
            }
        };
        match reply {
            Reply::Ack { seq } => match self.in_flight.remove(&seq) {
                Some(flight) => {
                    self.stats.acked_messages += 1;
                    if let Payload::Counts(v) = flight.payload {
                        self.in_flight_entries -= v.len();
                    }
                }
                None => tracing::debug!(seq, "ack for a message not in flight"),
            },
            Reply::Error { seq, error, reason } => {
                self.stats.error_replies += 1;
                let reason = reason.unwrap_or_default();
                tracing::warn!(
                    seq,
                    reason = %reason,
                    "agent refused a message, not retrying it: {error}"
                );
                self.stats.last_error =
                    Some(format!("agent refused a message ({reason}): {error}"));
                let flight = seq.and_then(|s| self.in_flight.remove(&s));
                match flight.map(|f| f.payload) {
                    Some(Payload::Counts(v)) => {
                        self.in_flight_entries -= v.len();
                        self.stats.refused_entries += v.len() as u64;
                    }
                    Some(Payload::Lag(v)) => {
                        self.stats.refused_entries += v.len() as u64;
                        // Forget refused samples, or every reconnect would send them again.
                        for (key, version) in v {
                            if self.lag.get(&key).is_some_and(|l| l.version == version) {
                                self.lag.remove(&key);
                            }
                        }
                    }
                    Some(Payload::Latency(v)) => {
                        self.stats.refused_entries += v.len() as u64;
                        for (key, version) in v {
                            if self.latency.get(&key).is_some_and(|l| l.version == version) {
                                self.latency.remove(&key);
                            }
                        }
                    }
                    Some(Payload::Forget(v)) => self.stats.refused_entries += v.len() as u64,
                    Some(Payload::Cluster(version)) => {
                        self.stats.refused_entries += 1;
                        if self.cluster.as_ref().is_some_and(|c| c.version == version) {
                            self.cluster = None;
                        }
                    }
                    None => {}
                }
            }
            Reply::Welcome { .. } => tracing::debug!("ignored a second welcome"),
        }
    }

    /// Puts every unacknowledged entry back to be sent again, unless a newer
    /// value for its key is already waiting.
    /// Orders the dirty lag samples taken at `at_ms` for sending.
    fn plan_lag(&mut self, at_ms: i64) {
        let mut keys: Vec<&LagKey> = self
            .lag
            .iter()
            .filter(|(_, l)| l.dirty && l.at_ms == at_ms)
            .map(|(k, _)| k)
            .collect();
        keys.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        self.lag_plan = keys.into_iter().cloned().collect();
        self.lag_plan_at = at_ms;
    }

    /// The next keys of the plan for samples taken at `at_ms` that still wait,
    /// at most `max_batch` of them and `budget` bytes (at least one).
    fn take_lag_plan(&mut self, at_ms: i64, max_batch: usize, budget: usize) -> Vec<LagKey> {
        if self.lag_plan_at != at_ms {
            self.lag_plan.clear();
        }
        let mut chosen = Vec::new();
        let mut size = 0;
        while let Some(key) = self.lag_plan.front() {
            let Some(held) = self.lag.get(key).filter(|h| h.dirty && h.at_ms == at_ms) else {
                self.lag_plan.pop_front();
                continue;
            };
            let b = lag_sample_bytes(&held.sample);
            if !chosen.is_empty() && (chosen.len() >= max_batch || size + b > budget) {
                break;
            }
            size += b;
            if let Some(key) = self.lag_plan.pop_front() {
                chosen.push(key);
            }
        }
        chosen
    }

    fn requeue(&mut self) {
        let flights = std::mem::take(&mut self.in_flight);
        self.in_flight_entries = 0;
        // Newest first, so that of two unacknowledged values of a key the newer wins.
        for (_, flight) in flights.into_iter().rev() {
            match flight.payload {
                Payload::Counts(v) => {
                    for (key, mut held) in v {
                        self.dirty.entry(key).or_insert_with(|| {
                            held.resend = true;
                            held
                        });
                    }
                }
                Payload::Forget(v) => {
                    for (key, version) in v {
                        self.forget.entry(key).or_insert(version);
                    }
                }
                // Lag, latency and the cluster state are held apart and
                // marked to be sent again when the next session opens.
                Payload::Lag(_) | Payload::Latency(_) | Payload::Cluster(_) => {}
            }
        }
    }

    fn oldest_unanswered(&self) -> Option<Instant> {
        self.in_flight.values().map(|f| f.sent_at).min()
    }
}

type Socket = WebSocketStream<crate::tls::AgentStream>;

/// Why a session ended.
enum SessionEnd {
    Stopped,
    Lost(String),
}

/// Reconnect delays: exponential, with jitter so that many emitters do not
/// reconnect in step after an agent restart.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // Between half and all of the base delay.
        let random = RandomState::new().build_hasher().finish();
        let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.5 + 0.5 * fraction)
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means every handle is gone: stop as well.
    let _ = stop.wait_for(|s| *s).await;
}

fn is_stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let cfg = &shared.cfg;
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut failures: u64 = 0;
    while !is_stopped(&stop) {
        let opened = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            opened = open_session(&shared) => opened,
        };
        match opened {
            Ok((ws, accept)) => {
                failures = 0;
                let began = Instant::now();
                {
                    let mut state = shared.lock();
                    state.accept = accept.map(|range| (range, Instant::now()));
                    state.stats.connected = true;
                    state.stats.connects += 1;
                    for held in state.lag.values_mut() {
                        held.dirty = true;
                    }
                    for held in state.latency.values_mut() {
                        held.dirty = true;
                    }
                    if let Some(held) = state.cluster.as_mut() {
                        held.dirty = true;
                    }
                }
                tracing::info!(url = %cfg.url, source = %cfg.source, "emitter connected to the agent");
                let end = session(&shared, ws, &mut stop).await;
                {
                    let mut state = shared.lock();
                    state.stats.connected = false;
                    state.requeue();
                    if let SessionEnd::Lost(why) = &end {
                        state.stats.last_error = Some(why.clone());
                    }
                }
                shared.progress.notify_waiters();
                match end {
                    SessionEnd::Stopped => break,
                    SessionEnd::Lost(why) => {
                        tracing::warn!(url = %cfg.url, "emitter lost the agent, will reconnect: {why}");
                    }
                }
                // A session that lasted is a recovery; one that dies at once is not.
                if began.elapsed() >= cfg.backoff_max {
                    backoff.reset();
                }
            }
            Err(why) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(url = %cfg.url, "emitter cannot reach the agent, will retry: {why}");
                } else {
                    tracing::debug!(url = %cfg.url, failures, "emitter still cannot reach the agent: {why}");
                }
                shared.lock().stats.last_error = Some(why);
            }
        }
        let delay = backoff.delay();
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Connects, says hello and waits for the welcome; returns the socket and
/// the range of buckets the agent accepts, where it says.
async fn open_session(shared: &Shared) -> Result<(Socket, Option<AcceptRange>), String> {
    let cfg = &shared.cfg;
    let mut request = crate::tls::request(&cfg.url).map_err(|e| e.to_string())?;
    if let Some(token) = &cfg.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            "the agent token is not accepted: expected visible ASCII characters only".to_owned()
        })?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let deadline = Instant::now() + cfg.connect_timeout;
    let (mut ws, _) = tokio::time::timeout_at(deadline, shared.connector.connect(request))
        .await
        .map_err(|_| {
            format!(
                "connecting to \"{}\" took longer than {:?}",
                cfg.url, cfg.connect_timeout
            )
        })?
        .map_err(|e| format!("connecting to \"{}\" failed: {e}", cfg.url))?;
    let hello = Message::Hello(Hello {
        source: cfg.source.clone(),
        cluster: cfg.cluster.clone(),
        tier_kinds: cfg.tier_kinds.clone(),
        bucket_width_ms: cfg.width.ms(),
        started_at_ms: shared.started_at_ms,
    });
    tokio::time::timeout_at(
        deadline,
        ws.send(tungstenite::Message::text(hello.to_json())),
    )
    .await
    .map_err(|_| "sending hello timed out".to_owned())?
    .map_err(|e| format!("sending hello failed: {e}"))?;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("the agent sent no welcome within {:?}", cfg.connect_timeout))?;
        let text = match frame {
            None | Some(Ok(tungstenite::Message::Close(_))) => {
                return Err("the agent closed the connection before its welcome".to_owned());
            }
            Some(Err(e)) => return Err(format!("waiting for the welcome failed: {e}")),
            Some(Ok(tungstenite::Message::Text(t))) => t.to_string(),
            Some(Ok(tungstenite::Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(_)) => continue,
        };
        match serde_json::from_str::<Reply>(&text) {
            Ok(
                reply @ Reply::Welcome {
                    bucket_width_ms, ..
                },
            ) if bucket_width_ms == cfg.width.ms() => {
                return Ok((ws, AcceptRange::of_welcome(&reply)));
            }
            Ok(Reply::Welcome {
                bucket_width_ms, ..
            }) => {
                let _ = ws.close(None).await;
                return Err(format!(
                    "the agent's bucket width \"{bucket_width_ms}\" ms differs from this emitter's {} ms: every emitter and the agent must use one width",
                    cfg.width.ms()
                ));
            }
            Ok(Reply::Error { error, reason, .. }) => {
                let _ = ws.close(None).await;
                return Err(format!(
                    "the agent refused hello ({}): {error}",
                    reason.unwrap_or_default()
                ));
            }
            Ok(Reply::Ack { seq }) => tracing::debug!(seq, "ack before the welcome ignored"),
            Err(e) => tracing::warn!(
                reply = %text.chars().take(200).collect::<String>(),
                "ignored a reply from the agent that is not a reply: {e}"
            ),
        }
    }
}

/// Sends everything that is due, as long as the window allows.
async fn send_due(shared: &Shared, ws: &mut Socket) -> Result<(), String> {
    loop {
        let Some(message) = shared.lock().next_message(&shared.cfg) else {
            // Entries dropped as out of range are no longer waited for.
            shared.progress.notify_waiters();
            return Ok(());
        };
        let text = message.to_json();
        tokio::time::timeout(
            shared.cfg.ack_timeout,
            ws.send(tungstenite::Message::text(text)),
        )
        .await
        .map_err(|_| {
            format!(
                "sending a {} message took longer than {:?}",
                message.kind(),
                shared.cfg.ack_timeout
            )
        })?
        .map_err(|e| format!("sending a {} message failed: {e}", message.kind()))?;
    }
}

async fn session(shared: &Shared, mut ws: Socket, stop: &mut watch::Receiver<bool>) -> SessionEnd {
    let cfg = &shared.cfg;
    let period = cfg.flush_interval.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What piled up while away goes out at once.
    if let Err(why) = send_due(shared, &mut ws).await {
        return SessionEnd::Lost(why);
    }
    loop {
        let outcome = tokio::select! {
            biased;
            () = stopped(stop) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return SessionEnd::Stopped;
            }
            frame = ws.next() => match frame {
                None => Err("the agent closed the connection".to_owned()),
                Some(Ok(tungstenite::Message::Close(_))) => {
                    Err("the agent closed the connection".to_owned())
                }
                Some(Err(e)) => Err(format!("reading from the agent failed: {e}")),
                Some(Ok(tungstenite::Message::Text(t))) => {
                    shared.lock().on_reply(t.as_str());
                    shared.progress.notify_waiters();
                    Ok(())
                }
                Some(Ok(tungstenite::Message::Binary(b))) => {
                    shared.lock().on_reply(&String::from_utf8_lossy(&b));
                    shared.progress.notify_waiters();
                    Ok(())
                }
                Some(Ok(_)) => Ok(()),
            },
            _ = tick.tick() => {
                let overdue = shared
                    .lock()
                    .oldest_unanswered()
                    .is_some_and(|t| t.elapsed() >= cfg.ack_timeout);
                if overdue {
                    Err(format!("the agent answered nothing within {:?}", cfg.ack_timeout))
                } else {
                    send_due(shared, &mut ws).await
                }
            }
            () = shared.send_now.notified() => send_due(shared, &mut ws).await,
        };
        if let Err(why) = outcome {
            let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
            return SessionEnd::Lost(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bucket: i64, records: u64) -> CountEntry {
        CountEntry {
            tier: Tier::Group("billing".into()),
            topic: "orders".into(),
            partition: 3,
            bucket: BucketWidth::DEFAULT.bucket_of(bucket),
            counts: CellCounts {
                records,
                bytes: records * 100,
                no_timestamp: 0,
                expired: 0,
                skipped: 0,
                ..CellCounts::default()
            },
        }
    }

    #[test]
    fn size_bound_is_never_below_the_real_size() {
        for e in [
            entry(0, 0),
            entry(-120_000, MAX_COUNT),
            entry(1_732_800_000_000, 12_345),
        ] {
            let (k, t) = split_entry(e.clone());
            let real = serde_json::to_string(&e).unwrap().len() + 1;
            assert!(count_entry_bytes(&k, &t) >= real, "{real}");
        }
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<_> = (0..5).map(|_| b.delay()).collect();
        for (d, base) in delays.iter().zip([100u64, 200, 400, 400, 400]) {
            assert!(
                *d >= Duration::from_millis(base / 2) && *d <= Duration::from_millis(base),
                "{d:?} for base {base}"
            );
        }
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }

    #[test]
    fn requeue_keeps_the_newer_dirty_value() {
        let cfg = EmitterConfig::new("ws://x", "s", "c", vec![], BucketWidth::DEFAULT);
        let mut state = State::default();
        let (k, t) = split_entry(entry(0, 5));
        state.dirty.insert(
            k.clone(),
            Held {
                tally: t,
                version: 1,
                resend: false,
            },
        );
        assert!(state.next_message(&cfg).is_some());
        let (_, newer) = split_entry(entry(0, 9));
        state.dirty.insert(
            k.clone(),
            Held {
                tally: newer,
                version: 2,
                resend: false,
            },
        );
        state.requeue();
        assert_eq!(state.dirty[&k].tally.records, 9);
        assert!(!state.dirty[&k].resend);
        assert_eq!(state.in_flight_entries, 0);
    }

    #[test]
    fn entries_outside_the_agents_range_are_dropped_and_counted() {
        let cfg = EmitterConfig::new("ws://x", "s", "c", vec![], BucketWidth::DEFAULT);
        let mut state = State {
            accept: Some((
                AcceptRange {
                    from_ms: 600_000,
                    to_ms: 1_200_000,
                },
                Instant::now(),
            )),
            ..State::default()
        };
        for b in [0, 600_000, 900_000, 1_200_000, 3_600_000] {
            let (k, t) = split_entry(entry(b, 1));
            state.dirty.insert(
                k,
                Held {
                    tally: t,
                    version: 1,
                    resend: false,
                },
            );
        }
        let Some(Message::Counts(c)) = state.next_message(&cfg) else {
            panic!("nothing to send")
        };
        let sent: Vec<i64> = c.counts.iter().map(|e| e.bucket.start_ms()).collect();
        assert_eq!(sent, [600_000, 900_000, 1_200_000]);
        assert_eq!(state.stats.out_of_range_entries, 2);
        assert!(state.dirty.is_empty());
        // Nothing in range left: no empty message.
        let (k, t) = split_entry(entry(0, 2));
        state.dirty.insert(
            k,
            Held {
                tally: t,
                version: 2,
                resend: false,
            },
        );
        assert!(state.next_message(&cfg).is_none());
        assert_eq!(state.stats.out_of_range_entries, 3);
    }

    fn sample(group: &str, topic: &str) -> LagSample {
        LagSample {
            group: group.into(),
            topic: topic.into(),
            partition: 0,
            committed: 5,
            end_offset: 9,
            start_offset: 0,
            lag_records: 4,
            lag_seconds: 1.5,
            commit_at_ms: 10,
            stable_offset: Some(7),
            estimated: true,
        }
    }

    fn hold_lag(state: &mut State, s: LagSample, version: u64) {
        let key = LagKey {
            group: s.group.clone(),
            topic: s.topic.clone(),
            partition: s.partition,
        };
        state.lag.insert(
            key,
            LagHeld {
                at_ms: 100,
                sample: s,
                version,
                dirty: true,
            },
        );
    }

    fn cluster_state(brokers: u32) -> ClusterState {
        ClusterState {
            at_ms: 1,
            brokers,
            topics: vec![crate::TopicMetadata {
                topic: "orders".into(),
                partitions: vec![crate::PartitionMetadata {
                    partition: 0,
                    leader: 1,
                    replicas: 3,
                    in_sync_replicas: 2,
                }],
            }],
            groups: vec![crate::GroupMetadata {
                group: "billing".into(),
                state: crate::GroupState::Stable,
                members: 2,
            }],
        }
    }

    #[test]
    fn a_forget_goes_before_lag_and_comes_back_after_a_lost_session() {
        let cfg = EmitterConfig::new("ws://x", "s", "c", vec![], BucketWidth::DEFAULT);
        let mut state = State::default();
        state.forget.insert((ForgetKind::Group, "old".into()), 1);
        state.forget.insert((ForgetKind::Topic, "gone".into()), 1);
        hold_lag(&mut state, sample("billing", "orders"), 2);
        let Some(Message::Forget(f)) = state.next_message(&cfg) else {
            panic!("the forget goes first")
        };
        assert_eq!(
            (f.groups.as_slice(), f.topics.as_slice()),
            (&["old".to_owned()][..], &["gone".to_owned()][..])
        );
        let Some(Message::Lag(l)) = state.next_message(&cfg) else {
            panic!("then the lag")
        };
        assert_eq!(
            (l.partitions[0].stable_offset, l.partitions[0].estimated),
            (Some(7), true)
        );
        assert!(state.waiting_for(2));
        // The connection drops before either is acknowledged: the forget is
        // sent again, and before the lag.
        state.requeue();
        assert_eq!(state.forget.len(), 2);
        for held in state.lag.values_mut() {
            held.dirty = true;
        }
        let Some(Message::Forget(again)) = state.next_message(&cfg) else {
            panic!("the forget is resent first")
        };
        state.on_reply(&Reply::Ack { seq: again.seq }.to_json());
        assert!(state.forget.is_empty());
        assert!(matches!(state.next_message(&cfg), Some(Message::Lag(_))));
    }

    #[test]
    fn a_refused_forget_is_not_retried_and_a_long_one_is_split() {
        let mut cfg = EmitterConfig::new("ws://x", "s", "c", vec![], BucketWidth::DEFAULT);
        cfg.max_message_bytes = ENVELOPE_BYTES + 60;
        let mut state = State::default();
        for i in 0..10 {
            state
                .forget
                .insert((ForgetKind::Topic, format!("topic-{i:02}")), 1);
        }
        let Some(Message::Forget(first)) = state.next_message(&cfg) else {
            panic!()
        };
        assert!(
            first.topics.len() > 1 && first.topics.len() < 10,
            "{}",
            first.topics.len()
        );
        assert!(Message::Forget(first.clone()).to_json().len() <= cfg.max_message_bytes);
        state.on_reply(
            &Reply::Error {
                seq: Some(first.seq),
                error: "no".into(),
                reason: Some("bad_topic".into()),
            }
            .to_json(),
        );
        assert_eq!(state.stats.refused_entries, first.topics.len() as u64);
        state.requeue();
        assert_eq!(state.forget.len(), 10 - first.topics.len());
    }

    #[test]
    fn only_the_latest_cluster_state_is_sent_and_sent_again_after_a_reconnect() {
        let cfg = EmitterConfig::new("ws://x", "s", "c", vec![], BucketWidth::DEFAULT);
        let mut state = State::default();
        for brokers in [1, 2, 3] {
            state.cluster = Some(ClusterHeld {
                state: cluster_state(brokers),
                version: u64::from(brokers),
                dirty: true,
            });
        }
        let Some(Message::Cluster(c)) = state.next_message(&cfg) else {
            panic!()
        };
        assert_eq!(c.state.brokers, 3);
        assert!(state.next_message(&cfg).is_none(), "sent once");
        state.requeue();
        if let Some(held) = state.cluster.as_mut() {
            held.dirty = true;
        }
        let Some(Message::Cluster(again)) = state.next_message(&cfg) else {
            panic!("resent after the reconnect")
        };
        assert_eq!(again.state, c.state);
        state.on_reply(
            &Reply::Error {
                seq: Some(again.seq),
                error: "no".into(),
                reason: Some("cardinality".into()),
            }
            .to_json(),
        );
        assert!(state.cluster.is_none(), "a refused state is not sent again");
    }

    #[test]
    fn batches_respect_the_byte_budget() {
        let mut cfg = EmitterConfig::new("ws://x", "s", "c", vec![], BucketWidth::DEFAULT);
        cfg.max_message_bytes = ENVELOPE_BYTES + 1_000;
        let mut state = State::default();
        for b in 0..100 {
            let (k, t) = split_entry(entry(b * 60_000, 1));
            state.dirty.insert(
                k,
                Held {
                    tally: t,
                    version: 1,
                    resend: false,
                },
            );
        }
        let Some(message) = state.next_message(&cfg) else {
            panic!("nothing to send")
        };
        let json = message.to_json();
        assert!(json.len() <= cfg.max_message_bytes, "{}", json.len());
        let Message::Counts(c) = message else {
            panic!()
        };
        assert!(c.counts.len() > 1 && c.counts.len() < 100);
    }
}
