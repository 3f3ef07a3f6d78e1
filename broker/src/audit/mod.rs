//! The broker's audit instrumentation: exact counts per topic, partition and
//! event-time bucket of what the log holds and what each consumer group
//! consumed, streamed with the groups' lag to the agent, and rebuilt from the
//! log and the committed offsets after a restart.
//!
//! It also measures end-to-end latency per (topic, tier), in the
//! [`LatencyBook`]s the collector keeps too: for `broker`, from a record's
//! timestamp to its append; for `group:<name>`, from a record's timestamp to
//! the commit that covered it. Unlike the counts, latency
//! histograms are not rebuilt: they restart from zero when the broker
//! restarts, which is a new emitter session whose histograms replace the old
//! session's at the agent (a counter reset to Prometheus).

pub use tally_audit::books;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tally_audit::emitter::{Emitter, EmitterConfig, EmitterStats};
use tally_audit::{BucketWidth, LagSample, LatencyBook, LatencyHistogram, Tier, TierKind};
use tracing::{info, warn};

#[cfg(test)]
use self::books::Tally;
use self::books::{DurableBooks, PartitionBooks};
use crate::batch::{BatchHeader, record_timestamps};
use crate::groups::Groups;
use crate::log::{LogObserver, PartitionLog};
use crate::topics::{Observers, Topics};
use crate::{Error, Result};

/// How the broker reports to the agent.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The deployment's bucket width.
    pub width: BucketWidth,
    /// The cluster the counts are filed under.
    pub cluster: String,
    /// The emitter's source id.
    pub source: String,
    /// The agent's ingest WebSocket URL; `None` counts without sending.
    pub agent: Option<String>,
    /// The agent's bearer token.
    pub token: Option<String>,
    /// The CA (PEM) that signed a `wss://` agent's certificate; none: the system's roots.
    pub agent_ca: Option<std::path::PathBuf>,
}

/// What the durable state of one partition holds beyond its books: append
/// times of batches without timestamps, which the log does not keep, and the
/// records of aborted transactions that retention deleted, per bucket.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct DurablePartition {
    books: DurableBooks,
    #[serde(default)]
    append_times: BTreeMap<i64, i64>,
    #[serde(default)]
    retired_aborted: BTreeMap<i64, u64>,
}

/// Records of one bucket in a held batch, in offset order.
#[derive(Clone, Copy, Debug)]
struct Stretch {
    bucket: i64,
    len: u64,
    no_timestamp: u64,
    first_ts: i64,
    last_ts: i64,
}

/// A batch held back from the books: a transaction's records count only
/// once it commits (an abort counts them apart), and the records after an
/// open transaction's first wait with it, so that the books, like a
/// `read_committed` reader, stop at the last stable offset.
#[derive(Debug)]
struct Held {
    offset: i64,
    producer_id: i64,
    transactional: bool,
    /// Commit (true) or abort, once the transaction's marker came.
    outcome: Option<bool>,
    bytes: u64,
    stretches: Vec<Stretch>,
}

/// The records of `buckets` (one per record, as [`record_buckets`] gives
/// them) as stretches of one bucket each.
fn stretches(buckets: &[i64], no_ts: &[bool], timestamps: &[i64]) -> Vec<Stretch> {
    let mut out: Vec<Stretch> = Vec::new();
    for (i, b) in buckets.iter().enumerate() {
        let ts = timestamps.get(i).copied().unwrap_or(-1);
        let no = u64::from(no_ts.get(i).copied().unwrap_or(false));
        match out.last_mut() {
            Some(s) if s.bucket == *b => {
                s.len += 1;
                s.no_timestamp += no;
                s.last_ts = if s.first_ts < 0 || ts < 0 { -1 } else { ts };
                if ts < 0 {
                    s.first_ts = -1;
                }
            }
            _ => out.push(Stretch {
                bucket: *b,
                len: 1,
                no_timestamp: no,
                first_ts: ts,
                last_ts: ts,
            }),
        }
    }
    out
}

/// (group, topic, partition).
type CommitKey = (String, String, i32);

#[derive(Default)]
struct Partition {
    books: PartitionBooks,
    append_times: BTreeMap<i64, i64>,
    /// Batches waiting for their transaction, or for one before them, to end.
    held: std::collections::VecDeque<Held>,
    /// Aborted records still in the log: (the offset after them, bucket, count).
    aborted_live: Vec<(i64, i64, u64)>,
    /// Aborted records retention deleted, per bucket (durable: the log no
    /// longer tells them).
    retired_aborted: BTreeMap<i64, u64>,
    /// Changed beyond what the dirty buckets say (commits, append times).
    changed: bool,
    /// Broker-tier latency of the appends since the last tick.
    latency: LatencyBook,
    /// The partition's topic was deleted: nothing is stored any more.
    deleted: bool,
}

/// The books of one partition. They live with the partition: its log tells
/// them of every append, start move and deletion from under the partition's
/// lock ([`LogObserver`]), so a produce never waits on another partition's
/// audit, nor on a file write.
pub struct PartitionAudit {
    topic: String,
    partition: i32,
    width: BucketWidth,
    path: PathBuf,
    state: Mutex<Partition>,
    /// Held while the books are written to disk: two writes never
    /// interleave, and none follows the partition's deletion.
    store: Mutex<()>,
}

impl std::fmt::Debug for PartitionAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionAudit")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl PartitionAudit {
    /// Writes the books to disk (synced when `sync`): a copy is taken under
    /// the partition's books lock, the file is written outside it.
    fn store(&self, sync: bool) -> Result<()> {
        let _writing = self.store.lock();
        let state = {
            let part = self.state.lock();
            if part.deleted {
                return Ok(());
            }
            DurablePartition {
                books: part.books.durable_state(),
                append_times: part.append_times.clone(),
                retired_aborted: part.retired_aborted.clone(),
            }
        };
        let path = &self.path;
        let text = serde_json::to_vec(&state).map_err(|e| Error::Config(e.to_string()))?;
        let io = |source| Error::Io {
            what: "cannot write the audit state",
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut f, &text).map_err(io)?;
        if sync {
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }
}

impl Partition {
    /// Takes a batch that is transactional, a marker, or follows a held
    /// one: it is held until what is before it and its own transaction end.
    fn hold(
        &mut self,
        width: BucketWidth,
        h: &BatchHeader,
        batch: &[u8],
        known: Option<&[i64]>,
        append_ms: i64,
        now_ms: i64,
    ) {
        if h.is_control() {
            if let Some(m) = crate::batch::control_marker(batch) {
                for held in self.held.iter_mut().filter(|x| {
                    x.transactional && x.outcome.is_none() && x.producer_id == m.producer_id
                }) {
                    held.outcome = Some(m.commit);
                }
            }
            self.drain(now_ms);
            return;
        }
        let (buckets, no_ts, timestamps) = record_buckets(width, h, batch, append_ms, known);
        if no_ts.iter().any(|b| *b) && !self.append_times.contains_key(&h.base_offset) {
            self.append_times.insert(h.base_offset, append_ms);
            self.changed = true;
        }
        self.held.push_back(Held {
            offset: h.base_offset,
            producer_id: h.producer_id,
            transactional: h.is_transactional(),
            outcome: None,
            bytes: h.size() as u64,
            stretches: stretches(&buckets, &no_ts, &timestamps),
        });
        self.drain(now_ms);
    }

    /// Counts the held batches whose transactions ended, in offset order,
    /// up to the first one still open.
    fn drain(&mut self, now_ms: i64) {
        while let Some(front) = self.held.front() {
            let commit = match (front.transactional, front.outcome) {
                (false, _) => true,
                (true, Some(c)) => c,
                (true, None) => break,
            };
            let Some(held) = self.held.pop_front() else {
                break;
            };
            let n: u64 = held.stretches.iter().map(|s| s.len).sum();
            let mut extra = held.bytes % n.max(1);
            let share = held.bytes / n.max(1);
            let mut offset = held.offset;
            for s in &held.stretches {
                if commit {
                    let bonus = extra.min(s.len);
                    extra -= bonus;
                    self.books.append_stretch(
                        offset,
                        s.len,
                        s.bucket,
                        share * s.len + bonus,
                        s.no_timestamp,
                        s.first_ts,
                        s.last_ts,
                    );
                    if s.first_ts >= 0 && s.last_ts >= 0 && s.no_timestamp == 0 {
                        let mid = s.first_ts + (s.last_ts - s.first_ts) / 2;
                        self.latency
                            .record(now_ms.saturating_sub(mid).max(0) as u64, s.len);
                    }
                } else {
                    self.books.count_aborted(s.bucket, s.len);
                    self.aborted_live
                        .push((offset + s.len as i64, s.bucket, s.len));
                }
                offset += s.len as i64;
            }
        }
    }
}

impl LogObserver for PartitionAudit {
    fn appended(&self, written: &[BatchHeader], bytes: &[u8], known: &[Vec<i64>], now_ms: i64) {
        let width = self.width;
        let mut guard = self.state.lock();
        let part = &mut *guard;
        let mut at = 0usize;
        for (i, h) in written.iter().enumerate() {
            let size = h.size();
            let batch = bytes.get(at..at + size).unwrap_or(&[]);
            at += size;
            if h.is_control() || h.is_transactional() || !part.held.is_empty() {
                let known = known.get(i).filter(|ts| !ts.is_empty()).map(Vec::as_slice);
                part.hold(width, h, batch, known, now_ms, now_ms);
                continue;
            }
            // The produce path read the records' timestamps while validating
            // them (LogAppendTime batches too: they give the count).
            let read_here;
            let timestamps: &[i64] = match known.get(i) {
                Some(ts) if !ts.is_empty() => ts,
                _ => {
                    read_here = record_timestamps(batch).unwrap_or_default();
                    &read_here
                }
            };
            let n = usize::try_from(h.record_count.max(0)).unwrap_or(0);
            let (min, max) = timestamps
                .iter()
                .fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
            let uniform = timestamps.len() == n
                && min >= 0
                && !h.log_append_time()
                && h.max_timestamp >= 0
                && width.bucket_of(min) == width.bucket_of(max);
            if uniform {
                // The common case: the whole batch in one bucket.
                let bucket = width.bucket_of(min).start_ms();
                part.books
                    .append_uniform(h.base_offset, n as u64, bucket, size as u64, timestamps);
                part.latency.record_timestamps(now_ms, timestamps);
                continue;
            }
            let (buckets, no_ts, timestamps) =
                record_buckets(width, h, batch, now_ms, Some(timestamps));
            if no_ts.iter().any(|b| *b) {
                part.append_times.insert(h.base_offset, now_ms);
                part.changed = true;
            }
            part.books
                .append(h.base_offset, &buckets, size as u64, &no_ts, &timestamps);
            part.latency.record_timestamps(
                now_ms,
                timestamps
                    .iter()
                    .zip(&no_ts)
                    .filter(|(_, no)| !**no)
                    .map(|(ts, _)| ts),
            );
        }
    }

    /// Retention is about to delete records below `new_start`: what groups
    /// had not consumed of them expires, and the books of the deleted records
    /// are stored before the log lets go of them.
    fn start_moving(&self, new_start: i64) -> Result<()> {
        {
            let mut guard = self.state.lock();
            let part = &mut *guard;
            part.books.retain_from(new_start);
            part.append_times = part.append_times.split_off(&new_start);
            let retired = &mut part.retired_aborted;
            part.aborted_live.retain(|&(end, bucket, n)| {
                if end <= new_start {
                    *retired.entry(bucket).or_default() += n;
                }
                end > new_start
            });
        }
        self.store(true)
    }

    fn deleted(&self) {
        self.state.lock().deleted = true;
        let _writing = self.store.lock();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Every partition's books, by (topic, partition): the [`Observers`] that
/// give each partition's log its [`PartitionAudit`].
struct AllBooks {
    width: BucketWidth,
    dir: PathBuf,
    parts: RwLock<BTreeMap<String, BTreeMap<i32, Arc<PartitionAudit>>>>,
}

impl AllBooks {
    fn get(&self, topic: &str, partition: i32) -> Option<Arc<PartitionAudit>> {
        self.parts.read().get(topic)?.get(&partition).cloned()
    }

    fn all(&self) -> Vec<Arc<PartitionAudit>> {
        self.parts
            .read()
            .values()
            .flat_map(|t| t.values().cloned())
            .collect()
    }
}

impl Observers for AllBooks {
    fn observer(
        &self,
        topic: &str,
        partition: i32,
        log: &PartitionLog,
        created: bool,
    ) -> Result<Arc<dyn LogObserver>> {
        let path = state_path(&self.dir, topic, partition);
        let state = if created {
            // Whatever a topic of this name left is not this one's.
            let _ = std::fs::remove_file(&path);
            Partition::default()
        } else {
            rebuild(self.width, load_state(&path)?, log)?
        };
        let audit = Arc::new(PartitionAudit {
            topic: topic.to_owned(),
            partition,
            width: self.width,
            path,
            state: Mutex::new(state),
            store: Mutex::new(()),
        });
        self.parts
            .write()
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, audit.clone());
        Ok(audit)
    }
}

/// The instrumentation of one broker.
///
/// Each partition's books are its own ([`PartitionAudit`]), locked by the
/// produce path under the partition's log lock and by the audit tick
/// briefly, one partition at a time. The tick's own locks, `seen` then
/// `latency`, are never taken on the produce path. Under them it asks the
/// groups only for where a group started ([`Groups::start_of`]), whose lock
/// is a leaf that the fetch path holds briefly and never with one of these.
pub struct Instrumentation {
    cfg: AuditConfig,
    dir: PathBuf,
    books: Arc<AllBooks>,
    /// The last commit time seen per (group, topic, partition), and whether
    /// that commit reached past the books' end (records held back for a
    /// transaction), to be taken again once they are counted.
    seen: Mutex<HashMap<CommitKey, (i64, bool)>>,
    /// Per (topic, tier): latency since this process started.
    latency: Mutex<BTreeMap<(String, Tier), LatencyBook>>,
    emitter: Mutex<Option<Emitter>>,
}

fn state_path(dir: &Path, topic: &str, partition: i32) -> PathBuf {
    dir.join(topic).join(format!("{partition}.json"))
}

/// The bucket of every record of one batch, which had no timestamp, and the
/// time each was bucketed by (its timestamp, or the append time).
///
/// A LogAppendTime batch lies in the bucket of its append time. Any other
/// batch has its records' timestamps read: its header gives the first and
/// the largest timestamp but not the smallest, and producers do write records
/// older than a batch's first, so the header alone cannot place them.
///
/// `known` holds the records' timestamps where the caller has read them
/// already (the produce path). Either way, a batch counts the records it
/// holds, never the count its header declares: a batch whose records do not
/// read (a lying count written by an older broker) counts none, so that no
/// memory follows a number read off the wire.
pub fn record_buckets(
    width: BucketWidth,
    header: &BatchHeader,
    batch: &[u8],
    append_ms: i64,
    known: Option<&[i64]>,
) -> (Vec<i64>, Vec<bool>, Vec<i64>) {
    let read;
    let ts: &[i64] = match known {
        Some(ts) => ts,
        None => {
            read = record_timestamps(batch).unwrap_or_default();
            &read
        }
    };
    let n = ts.len();
    let all = |ts: i64, no_ts: bool| {
        (
            vec![width.bucket_of(ts).start_ms(); n],
            vec![no_ts; n],
            vec![ts; n],
        )
    };
    if header.log_append_time() {
        return all(header.max_timestamp, false);
    }
    if header.max_timestamp < 0 {
        return all(append_ms, true);
    }
    let no_ts: Vec<bool> = ts.iter().map(|t| *t < 0).collect();
    let at: Vec<i64> = ts
        .iter()
        .map(|t| if *t < 0 { append_ms } else { *t })
        .collect();
    let buckets = at.iter().map(|t| width.bucket_of(*t).start_ms()).collect();
    (buckets, no_ts, at)
}

impl Instrumentation {
    /// Opens the instrumentation: restores each partition's durable books,
    /// counts the batches the log holds beyond them, and gives every
    /// partition's log, loaded and created from now on, its books.
    pub fn open(data_dir: &Path, cfg: AuditConfig, topics: &Topics) -> Result<Instrumentation> {
        let dir = data_dir.join("audit");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            what: "cannot create the audit folder",
            path: dir.clone(),
            source,
        })?;
        let started = std::time::Instant::now();
        remove_orphans(&dir, topics);
        let books = Arc::new(AllBooks {
            width: cfg.width,
            dir: dir.clone(),
            parts: RwLock::new(BTreeMap::new()),
        });
        topics.observe(books.clone())?;
        info!(
            partitions = books.all().len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "audit books rebuilt from the log"
        );
        Ok(Instrumentation {
            cfg,
            dir,
            books,
            seen: Mutex::new(HashMap::new()),
            latency: Mutex::new(BTreeMap::new()),
            emitter: Mutex::new(None),
        })
    }

    /// Starts streaming to the agent (needs a tokio runtime).
    pub fn start_emitter(&self) {
        let Some(url) = &self.cfg.agent else { return };
        let mut ec = EmitterConfig::new(
            url.clone(),
            self.cfg.source.clone(),
            self.cfg.cluster.clone(),
            vec![TierKind::Broker, TierKind::Group],
            self.cfg.width,
        );
        ec.token = self.cfg.token.clone();
        ec.agent_ca = self.cfg.agent_ca.clone();
        *self.emitter.lock() = Some(Emitter::start(ec));
    }

    /// Waits (bounded) until the agent has everything counted so far.
    pub async fn flush(&self, timeout: std::time::Duration) -> bool {
        let emitter = self.emitter.lock().clone();
        match emitter {
            Some(e) => e.flush(timeout).await,
            None => true,
        }
    }

    /// The emitter's counters, when it runs.
    pub fn emitter_stats(&self) -> Option<EmitterStats> {
        self.emitter.lock().as_ref().map(Emitter::stats)
    }

    /// Forgets a deleted topic (its partitions' books went with their logs).
    pub fn on_topic_deleted(&self, topic: &str) {
        {
            let mut parts = self.books.parts.write();
            // A topic created again under this name since keeps its books.
            if let Some(t) = parts.get_mut(topic) {
                t.retain(|_, p| !p.state.lock().deleted);
                if t.is_empty() {
                    parts.remove(topic);
                }
            }
        }
        self.latency.lock().retain(|(t, _), _| t != topic);
        // Only if empty: a topic created again may have stored books there.
        let _ = std::fs::remove_dir(self.dir.join(topic));
    }

    /// Forgets a deleted group.
    pub fn on_group_deleted(&self, group: &str) {
        for part in self.books.all() {
            let mut part = part.state.lock();
            part.books.forget_group(group);
            part.changed = true;
        }
        self.latency
            .lock()
            .retain(|(_, tier), _| *tier != Tier::Group(group.to_owned()));
    }

    /// Takes in the groups' commits now, before a log start moves (retention,
    /// DeleteRecords): what a group committed before the records went counts
    /// as read, not as expired or as never read.
    pub fn take_commits(&self, groups: &Groups) {
        self.sync_commits(groups);
    }

    /// Takes in the groups' commits since the last call, stores changed books,
    /// and hands changed counts and every group's lag to the emitter.
    pub fn tick(&self, now_ms: i64, topics: &Topics, groups: &Groups) {
        self.sync_commits(groups);
        let mut counts = Vec::new();
        // Runs of buckets the agent no longer keeps are forgotten.
        let accepts_from = self
            .emitter
            .lock()
            .as_ref()
            .and_then(Emitter::accepts_from_ms);
        let mut changed = Vec::new();
        {
            let mut latency = self.latency.lock();
            for audit in self.books.all() {
                let mut part = audit.state.lock();
                if part.deleted {
                    continue;
                }
                if part.latency.is_changed() {
                    latency
                        .entry((audit.topic.clone(), Tier::Broker))
                        .or_default()
                        .absorb(&mut part.latency);
                }
                let dirty = part.books.take_dirty();
                if dirty.is_empty() && !part.changed {
                    continue;
                }
                for (tier, bucket) in dirty {
                    counts.push(part.books.count_entry(
                        self.cfg.width,
                        &audit.topic,
                        audit.partition,
                        tier,
                        bucket,
                    ));
                }
                if let Some(from) = accepts_from {
                    part.books.prune_before(from);
                    part.retired_aborted.retain(|b, _| *b >= from);
                    part.aborted_live.retain(|(_, b, _)| *b >= from);
                }
                part.changed = false;
                drop(part);
                changed.push(audit);
            }
        }
        // Outside every lock the produce path takes.
        for audit in changed {
            if let Err(e) = audit.store(false) {
                warn!(topic = %audit.topic, partition = audit.partition, "cannot store the audit state: {e}");
            }
        }
        let lag = self.lag(now_ms, topics, groups);
        let latency = self.changed_latency();
        if let Some(emitter) = self.emitter.lock().as_ref() {
            emitter.record_counts(counts);
            if !lag.is_empty() {
                emitter.record_lag(now_ms, lag);
            }
            if !latency.is_empty() {
                emitter.record_latency(latency);
            }
        }
    }

    /// The wire histograms of every (topic, tier) whose latency changed since
    /// the last call.
    fn changed_latency(&self) -> Vec<LatencyHistogram> {
        let mut latency = self.latency.lock();
        latency
            .iter_mut()
            .filter_map(|((topic, tier), book)| book.take_changed().then(|| book.wire(topic, tier)))
            .collect()
    }

    /// The latency histogram of one (topic, tier) as last ticked, for tests
    /// and diagnostics.
    pub fn latency(&self, topic: &str, tier: &Tier) -> Option<LatencyHistogram> {
        self.latency
            .lock()
            .get(&(topic.to_owned(), tier.clone()))
            .map(|book| book.wire(topic, tier))
    }

    /// Applies every commit the coordinator accepted since the last call,
    /// including ones already superseded, so a brief high-water mark is not
    /// missed; each records the latency of the records it covered, as of
    /// its commit time.
    fn sync_commits(&self, groups: &Groups) {
        let mut seen = self.seen.lock();
        let mut latency = self.latency.lock();
        for c in groups.all_committed() {
            let key = (c.group.clone(), c.topic.clone(), c.partition);
            let (last, short) = seen.get(&key).copied().unwrap_or((i64::MIN, false));
            if c.committed.commit_time_ms <= last && !short {
                continue;
            }
            let Some(audit) = self.books.get(&c.topic, c.partition) else {
                continue;
            };
            let mut part = audit.state.lock();
            let mut covered = Vec::new();
            // Where the group started, for its first commit here.
            let fetched_from = if part.books.has_group(&c.group) {
                None
            } else {
                groups.start_of(&c.group, &c.topic, c.partition)
            };
            for h in groups.history(&c.group, &c.topic, c.partition) {
                if h.commit_time_ms > last
                    && let Some(range) = part.books.commit(&c.group, h.offset, fetched_from)
                {
                    covered.push((range, h.commit_time_ms));
                }
            }
            if let Some(range) = part
                .books
                .commit(&c.group, c.committed.offset, fetched_from)
            {
                covered.push((range, c.committed.commit_time_ms));
            }
            if !covered.is_empty() {
                let book = latency
                    .entry((c.topic.clone(), Tier::Group(c.group.clone())))
                    .or_default();
                for ((from, to), at_ms) in covered {
                    part.books
                        .latencies(from, to, at_ms, |ms, n| book.record(ms, n));
                }
            }
            part.changed = true;
            let short = !part.held.is_empty()
                && part
                    .books
                    .high_of(&c.group)
                    .is_some_and(|high| high < c.committed.offset);
            seen.insert(key, (c.committed.commit_time_ms, short));
        }
    }

    fn lag(&self, now_ms: i64, topics: &Topics, groups: &Groups) -> Vec<LagSample> {
        let mut samples = Vec::new();
        for c in groups.all_committed() {
            let Some(part) = topics
                .get(&c.topic)
                .and_then(|t| t.partition(c.partition).cloned())
            else {
                continue;
            };
            let log = part.log.lock();
            let (start, log_end) = (log.start_offset(), log.end_offset());
            let stable = part.producers.lock().stable_offset(log_end);
            // A read_committed group cannot read past the last stable offset:
            // its lag is measured to there.
            let end = if groups.is_read_committed(&c.group) {
                stable
            } else {
                log_end
            };
            let committed = c.committed.offset;
            let next = committed.max(start);
            let lag_records = u64::try_from(end - committed.min(end)).unwrap_or(0);
            let lag_seconds = if next >= end {
                0.0
            } else {
                // A record without a timestamp is timed by its append, as it is bucketed.
                timestamp_at(&log, next)
                    .or_else(|| {
                        let audit = self.books.get(&c.topic, c.partition)?;
                        let part = audit.state.lock();
                        part.append_times
                            .range(..=next)
                            .next_back()
                            .map(|(_, t)| *t)
                    })
                    .map_or(0.0, |ts| (now_ms - ts).max(0) as f64 / 1000.0)
            };
            samples.push(LagSample {
                group: c.group,
                topic: c.topic,
                partition: c.partition,
                committed,
                end_offset: log_end,
                start_offset: start,
                lag_records,
                lag_seconds,
                commit_at_ms: c.committed.commit_time_ms,
                // The broker reads every record it lags behind from its own
                // log: nothing is estimated.
                stable_offset: (stable < log_end).then_some(stable),
                estimated: false,
            });
        }
        samples
    }

    /// The counts of one partition, for tests and the demo summary.
    pub fn books(&self, topic: &str, partition: i32) -> Option<PartitionBooks> {
        self.books
            .get(topic, partition)
            .map(|p| p.state.lock().books.clone())
    }

    /// Stores every partition's state (on shutdown).
    pub fn store_all(&self) {
        for audit in self.books.all() {
            if let Err(e) = audit.store(true) {
                warn!(topic = %audit.topic, partition = audit.partition, "cannot store the audit state: {e}");
            }
        }
    }
}

/// Removes the books of topics that no longer exist: a broker stopped
/// between deleting a topic and dropping its books would otherwise hand
/// them to a topic created again under the same name.
fn remove_orphans(dir: &Path, topics: &Topics) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if topics.get(&name).is_none() {
            info!(topic = %name, "removing the audit books of a deleted topic");
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                warn!(topic = %name, "cannot remove the audit books of a deleted topic: {e}");
            }
        }
    }
}

/// The timestamp of the record at `offset`, read from its batch.
fn timestamp_at(log: &PartitionLog, offset: i64) -> Option<i64> {
    let bytes = log.read(offset, 1).ok()?;
    let header = BatchHeader::parse(&bytes).ok()?;
    if header.log_append_time() {
        return Some(header.max_timestamp);
    }
    let ts = record_timestamps(&bytes[..header.size().min(bytes.len())]).ok()?;
    let i = usize::try_from(offset - header.base_offset).ok()?;
    ts.get(i).copied().filter(|t| *t >= 0)
}

fn load_state(path: &Path) -> Result<DurablePartition> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::Config(format!("audit state '{}' is damaged: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DurablePartition::default()),
        Err(source) => Err(Error::Io {
            what: "cannot read the audit state",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Books from the stored state plus the log's batches beyond it.
fn rebuild(width: BucketWidth, state: DurablePartition, log: &PartitionLog) -> Result<Partition> {
    let mut part = Partition {
        books: PartitionBooks::restore(state.books),
        append_times: state.append_times,
        retired_aborted: state.retired_aborted,
        ..Partition::default()
    };
    for (bucket, n) in &part.retired_aborted {
        part.books.count_aborted(*bucket, *n);
    }
    part.books.retain_from(log.start_offset());
    let from = part.books.end().max(log.start_offset());
    for h in log.batches(from)? {
        if h.base_offset < part.books.end() {
            continue;
        }
        let batch = log.read_batch(h.base_offset)?;
        // A batch without timestamps whose append time was not stored yet (a
        // crash within a tick of the append) is placed at the time of this
        // rebuild, and that is stored: never in 1970, and the same every
        // time after.
        let append_ms = match part.append_times.get(&h.base_offset) {
            Some(t) => *t,
            None if h.max_timestamp < 0 && !h.log_append_time() && !h.is_control() => {
                let now = crate::context::now_ms();
                part.append_times.insert(h.base_offset, now);
                part.changed = true;
                now
            }
            None => h.max_timestamp,
        };
        // Transactions are replayed as they were written: held until their
        // markers, committed records counted, aborted ones apart.
        if h.is_control() || h.is_transactional() || !part.held.is_empty() {
            part.hold(width, &h, &batch, None, append_ms, append_ms);
            continue;
        }
        let (buckets, no_ts, timestamps) = record_buckets(width, &h, &batch, append_ms, None);
        part.books.append(
            h.base_offset,
            &buckets,
            h.size() as u64,
            &no_ts,
            &timestamps,
        );
    }
    // Latency is not rebuilt (see the module documentation).
    part.latency = LatencyBook::default();
    part.books.mark_all_dirty();
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Produces one record stamped `ts` to partition `p` of topic `t`, as the
    /// produce path does: under the partition's log lock, 5 ms after `ts`.
    fn append_one(topics: &Topics, p: i32, ts: i64) {
        let batch = lying_batch(1, ts);
        let header = BatchHeader::parse(&batch).unwrap();
        let part = topics.get("t").unwrap().partition(p).unwrap().clone();
        part.log
            .lock()
            .append_read(&batch, &[header], &[vec![ts]], ts + 5)
            .unwrap();
    }

    /// What the tests count with: cluster `local`, no agent.
    fn test_config(width: BucketWidth) -> AuditConfig {
        AuditConfig {
            width,
            cluster: "local".into(),
            source: "test".into(),
            agent: None,
            token: None,
            agent_ca: None,
        }
    }

    /// The produce path (the log's observer), the audit tick and retention
    /// share the books' locks; taken in different orders they deadlocked
    /// the demo's broker within a minute. Run the three at once, bounded.
    #[test]
    fn appends_ticks_and_retention_at_once_never_wait_on_each_other() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let topics = Arc::new(Topics::open(dir.path(), crate::log::LogConfig::default()).unwrap());
        topics.create("t", 1, BTreeMap::new(), false).unwrap();
        let groups =
            Arc::new(Groups::open(dir.path(), crate::groups::GroupsConfig::default()).unwrap());
        let cfg = test_config(BucketWidth::new(1_000).unwrap());
        let audit = Arc::new(Instrumentation::open(dir.path(), cfg, &topics).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let (done, finished) = std::sync::mpsc::channel();
        let spawn = |work: Box<dyn Fn(u64) + Send>| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    work(i);
                    i += 1;
                }
                done.send(i).unwrap();
            });
        };
        let t = topics.clone();
        spawn(Box::new(move |i| append_one(&t, 0, 1_000 + i as i64)));
        let (a, t, g) = (audit.clone(), topics.clone(), groups.clone());
        spawn(Box::new(move |i| a.tick(2_000 + i as i64, &t, &g)));
        let (a, t) = (audit.clone(), topics.clone());
        spawn(Box::new(move |_| {
            // As retention does: under the partition's log lock.
            let part = t.get("t").unwrap().partition(0).unwrap().clone();
            let _log = part.log.lock();
            a.books.get("t", 0).unwrap().start_moving(0).unwrap();
        }));
        std::thread::sleep(Duration::from_millis(1_500));
        stop.store(true, Ordering::Relaxed);
        for _ in 0..3 {
            let rounds = finished
                .recv_timeout(Duration::from_secs(20))
                .expect("a thread is stuck: the instrumentation's locks deadlocked");
            assert!(rounds > 0);
        }
    }

    /// The books live with their partition: while one partition's books are
    /// being written to disk (held here, as a slow disk would), appends to
    /// another partition go on and are counted.
    #[test]
    fn a_produce_never_waits_on_the_audit_of_another_partition() {
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let topics = Arc::new(Topics::open(dir.path(), crate::log::LogConfig::default()).unwrap());
        topics.create("t", 2, BTreeMap::new(), false).unwrap();
        let cfg = test_config(BucketWidth::new(1_000).unwrap());
        let audit = Arc::new(Instrumentation::open(dir.path(), cfg, &topics).unwrap());
        append_one(&topics, 1, 5_000);
        let held = audit.books.get("t", 1).unwrap();
        let writing = held.store.lock();
        let (done, appended) = std::sync::mpsc::channel();
        let t = topics.clone();
        let producer = std::thread::spawn(move || {
            for i in 0..100 {
                append_one(&t, 0, 6_000 + i);
            }
            done.send(()).unwrap();
        });
        appended
            .recv_timeout(Duration::from_secs(20))
            .expect("appends to partition 0 waited on partition 1's store");
        producer.join().unwrap();
        drop(writing);
        let books = audit.books("t", 0).unwrap();
        assert_eq!(books.broker(6_000).records, 100);
        assert_eq!(audit.books("t", 1).unwrap().broker(5_000).records, 1);
    }

    /// A zstd batch of one record whose header declares `declared` records
    /// (its CRC no longer matches: such a batch could only come from a log
    /// written before produce checked counts).
    fn lying_batch(declared: i32, ts: i64) -> Vec<u8> {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            sequence: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            timestamp: ts,
            key: None,
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: Default::default(),
        };
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &[record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::Zstd,
            },
        )
        .unwrap();
        // record_count sits after base offset, length, leader epoch, magic,
        // CRC, attributes, last offset delta, two timestamps, producer id,
        // epoch and base sequence.
        buf[57..61].copy_from_slice(&declared.to_be_bytes());
        buf.to_vec()
    }

    /// An older broker let batches with a lying record count into its log;
    /// the books rebuilt from such a log count the records the batch holds
    /// (none that read), never the 20 million its header claims, and the
    /// rebuild allocates nothing per claimed record.
    #[test]
    fn a_log_with_a_lying_record_count_rebuilds_without_counting_the_claim() {
        let width = BucketWidth::new(1_000).unwrap();
        let honest = lying_batch(1, 5_000);
        let h = BatchHeader::parse(&honest).unwrap();
        assert_eq!(
            record_buckets(width, &h, &honest, 9_000, None).0,
            vec![5_000]
        );
        let lying = lying_batch(20_000_000, 5_000);
        let h = BatchHeader::parse(&lying).unwrap();
        assert_eq!(h.record_count, 20_000_000);
        let (buckets, no_ts, ts) = record_buckets(width, &h, &lying, 9_000, None);
        assert!(buckets.is_empty() && no_ts.is_empty() && ts.is_empty());

        let dir = tempfile::tempdir().unwrap();
        let topics = Topics::open(dir.path(), crate::log::LogConfig::default()).unwrap();
        topics.create("t", 1, BTreeMap::new(), false).unwrap();
        {
            let topic = topics.get("t").unwrap();
            let mut log = topic.partition(0).unwrap().log.lock();
            for batch in [&honest, &lying, &honest] {
                let header = BatchHeader::parse(batch).unwrap();
                log.append_checked(batch, &[header], 9_000).unwrap();
            }
        }
        let cfg = test_config(width);
        let audit = Instrumentation::open(dir.path(), cfg, &topics).unwrap();
        let books = audit.books("t", 0).unwrap();
        assert_eq!(
            books.broker(5_000).records,
            2,
            "the two honest records only"
        );
    }

    /// A batch without timestamps appended just before a crash, before any
    /// tick stored its append time: the rebuilt books place it at the time of
    /// the rebuild (never in 1970, which the agent would drop), as
    /// `no_timestamp`, and keep that place across later restarts.
    #[test]
    fn a_batch_without_timestamps_whose_append_time_was_lost_is_placed_at_the_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let width = BucketWidth::new(1_000).unwrap();
        let cfg = test_config(width);
        let topics = Topics::open(dir.path(), crate::log::LogConfig::default()).unwrap();
        topics.create("t", 1, BTreeMap::new(), false).unwrap();
        {
            // Appended with no books watching: as if the broker died at once.
            let batch = lying_batch(1, -1);
            let header = BatchHeader::parse(&batch).unwrap();
            assert_eq!(header.max_timestamp, -1);
            let topic = topics.get("t").unwrap();
            let mut log = topic.partition(0).unwrap().log.lock();
            log.append_checked(&batch, &[header], 9_000).unwrap();
        }
        let before = crate::context::now_ms();
        let audit = Instrumentation::open(dir.path(), cfg.clone(), &topics).unwrap();
        let after = crate::context::now_ms();
        let books = audit.books("t", 0).unwrap();
        let placed: Vec<(i64, Tally)> = books.broker_buckets().collect();
        assert_eq!(placed.len(), 1, "{placed:?}");
        let (bucket, tally) = placed[0];
        assert!(
            (width.bucket_of(before).start_ms()..=after).contains(&bucket),
            "bucket {bucket} outside the rebuild's {before}..{after}"
        );
        assert_eq!((tally.records, tally.no_timestamp), (1, 1));
        audit.store_all();
        drop(audit);
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        let again = Instrumentation::open(dir.path(), cfg, &topics).unwrap();
        let replaced: Vec<(i64, Tally)> = again.books("t", 0).unwrap().broker_buckets().collect();
        assert_eq!(replaced, placed);
    }

    /// A broker stopped between deleting a topic and dropping its books:
    /// the topic created again under that name starts with empty books.
    #[test]
    fn books_of_a_topic_deleted_before_a_crash_are_not_handed_to_its_successor() {
        let dir = tempfile::tempdir().unwrap();
        let width = BucketWidth::new(1_000).unwrap();
        let cfg = test_config(width);
        {
            let topics = Topics::open(dir.path(), crate::log::LogConfig::default()).unwrap();
            topics.create("t", 1, BTreeMap::new(), false).unwrap();
            let batch = lying_batch(1, 5_000);
            {
                let topic = topics.get("t").unwrap();
                let mut log = topic.partition(0).unwrap().log.lock();
                let header = BatchHeader::parse(&batch).unwrap();
                log.append_checked(&batch, &[header], 9_000).unwrap();
            }
            let audit = Instrumentation::open(dir.path(), cfg.clone(), &topics).unwrap();
            audit.books.get("t", 0).unwrap().start_moving(1).unwrap();
            assert!(dir.path().join("audit/t/0.json").exists());
            // The topic goes; the crash comes before its books do.
            topics.delete("t").unwrap();
        }
        let topics = Topics::open(dir.path(), crate::log::LogConfig::default()).unwrap();
        let _audit = Instrumentation::open(dir.path(), cfg.clone(), &topics).unwrap();
        assert!(!dir.path().join("audit/t").exists());
        topics.create("t", 1, BTreeMap::new(), false).unwrap();
        let audit = Instrumentation::open(dir.path(), cfg, &topics).unwrap();
        let books = audit.books("t", 0).unwrap();
        assert_eq!(books.broker(5_000).records, 0);
        assert_eq!(books.start(), 0);
    }
}
