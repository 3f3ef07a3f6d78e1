//! One watched cluster: discovery on `--metadata-interval`, a lag poll on
//! `--lag-interval`, and what they send to the agent.
//!
//! A poll reads every watched group's committed offsets (OffsetFetch, batched per
//! coordinator), the start and end offsets of every watched partition (ListOffsets,
//! batched per leader), and, for each (group, partition) behind its end, the timestamp
//! of the record at the committed offset (one small Fetch, cached while the offset
//! does not move). A cluster that cannot be reached is retried on the next poll,
//! reported as `tally_collect_up{cluster} 0`, and affects no other cluster. Commit
//! times come from `__consumer_offsets` where it can be read ([`OffsetsTopic`]),
//! else from the poll that first saw an offset.
//!
//! Between polls the audited partitions are read for the books ([`Tailer`]); the
//! committed offsets a poll read go to them with the poll's time, where the latency
//! of the records a commit newly covers ends.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_audit::BucketWidth;
use tally_audit::emitter::Emitter;
use tally_audit::wire::{
    ClusterState, GroupMetadata, GroupState, LagSample, PartitionMetadata as WirePartition,
    TopicMetadata as WireTopic,
};
use tally_kafka::client::{
    Client, FetchOne, Isolation, KafkaCode, Metadata, OffsetSpec, TopicPartition,
};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::ClusterSettings;
use crate::lag::{self, CommitEntry, CommitTimes, PartitionTimes, RecordTime};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::offsets_topic::OffsetsTopic;
use crate::tail::{Commit, Tailer};

/// Kafka's OFFSET_OUT_OF_RANGE: the record is gone (retention) or not yet there.
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// How many record reads run at once.
const READ_CONCURRENCY: usize = 64;
/// How much one record read may bring back.
const READ_MAX_BYTES: i32 = 4096;
/// How long the reading of the audited partitions rests after a round that found
/// nothing new.
const TAIL_IDLE: Duration = Duration::from_millis(200);
/// How often the commit times are saved at most.
const SAVE_EVERY: Duration = Duration::from_secs(10);

/// What one poll found, for the tests and the benchmark.
#[derive(Clone, Debug, Default)]
pub struct PollReport {
    /// Lag samples sent.
    pub samples: usize,
    /// Committed offsets read.
    pub offsets: usize,
    /// Records fetched for lag seconds.
    pub record_reads: usize,
    /// Last batches read because ListOffsets' end was below a commit or a Fetch.
    pub end_reads: usize,
    /// Timestamps served from the cache.
    pub cache_hits: usize,
}

/// A watched partition's offsets.
#[derive(Clone, Copy, Debug, Default)]
struct Offsets {
    start: Option<i64>,
    latest: Option<i64>,
    stable: Option<i64>,
    high_watermark: Option<i64>,
    /// The offset after the last record a Fetch returned.
    fetched_end: Option<i64>,
    /// A Fetch returned records at or above the high watermark it reported: this
    /// broker's ends cannot be trusted (tansu), so every poll reads the last batch.
    distrusted: bool,
}

impl Offsets {
    /// The end: the largest of ListOffsets `latest`, the high watermark and what a
    /// Fetch returned.
    fn end(&self) -> Option<i64> {
        let end = lag::end_offset(self.latest, self.high_watermark);
        match (end, self.fetched_end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One watched partition: its offsets and the record timestamps read on it.
#[derive(Debug, Default)]
struct Part {
    offsets: Offsets,
    times: PartitionTimes,
}

/// The state of one watched cluster.
pub struct ClusterWatch {
    settings: ClusterSettings,
    metrics: Metrics,
    emitter: Option<Emitter>,
    state_file: PathBuf,
    client: Option<Client>,
    /// Watched topics and their partition count, from the last discovery.
    topics: BTreeMap<String, i32>,
    /// Watched groups, from the last discovery.
    groups: BTreeSet<String>,
    /// Groups forgotten as long-Empty; watched again once they commit something new.
    forgotten: HashSet<String>,
    last_discovery: Option<Instant>,
    last_save: Option<Instant>,
    /// Per watched topic, its partitions by number (looked up by name without
    /// allocating: a poll touches every committed offset).
    parts: HashMap<String, Vec<Part>>,
    /// The poll's number (record-time caches drop what a poll did not use).
    generation: u64,
    commits: CommitTimes,
    offsets_topic: OffsetsTopic,
    last_metadata: Option<Metadata>,
    up: bool,
    /// The exact books of the audited topics (none without `audit_topics`).
    tailer: Option<Tailer>,
    /// The last lag poll's committed offsets, for the books.
    last_commits: Vec<Commit>,
}

impl ClusterWatch {
    /// A watch that sends to `emitter` (none: nothing is sent) and keeps its state in
    /// `data_dir/<cluster>/`.
    pub fn new(
        settings: ClusterSettings,
        metrics: Metrics,
        emitter: Option<Emitter>,
        data_dir: &std::path::Path,
        width: BucketWidth,
    ) -> std::io::Result<ClusterWatch> {
        let dir = data_dir.join(&settings.name);
        std::fs::create_dir_all(&dir)?;
        let state_file = dir.join("commits.json");
        let mut commits = CommitTimes::default();
        match std::fs::read(&state_file) {
            Ok(bytes) => match serde_json::from_slice::<Vec<CommitEntry>>(&bytes) {
                Ok(entries) => commits.restore(entries),
                Err(e) => warn!(
                    file = %state_file.display(),
                    "the saved commit times do not parse and are ignored (commit times restart from now): {e}"
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        metrics.up.with_label_values(&[&settings.name]).set(0);
        let offsets_topic = OffsetsTopic::load(&dir, &settings.name);
        let tailer = match settings.audit_topics {
            Some(_) => Some(Tailer::open(
                dir.join("books"),
                width,
                settings.tail.clone(),
                emitter.clone(),
            )?),
            None => None,
        };
        Ok(ClusterWatch {
            settings,
            metrics,
            emitter,
            state_file,
            client: None,
            topics: BTreeMap::new(),
            groups: BTreeSet::new(),
            forgotten: HashSet::new(),
            last_discovery: None,
            last_save: None,
            parts: HashMap::new(),
            generation: 0,
            commits,
            offsets_topic,
            last_metadata: None,
            up: false,
            tailer,
            last_commits: Vec::new(),
        })
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Polls on the lag interval until `stop` says so, then saves the commit times.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut next = tokio::time::Instant::now();
        loop {
            // Between lag polls the audited partitions are read: a round that found
            // nothing new waits a little (its Fetch already waited up to 100 ms).
            while tokio::time::Instant::now() < next && self.tailer.is_some() && !*stop.borrow() {
                let busy = self.tail_round().await;
                if !busy {
                    tokio::select! {
                        _ = tokio::time::sleep(TAIL_IDLE.min(next.saturating_duration_since(tokio::time::Instant::now()))) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
            // The wait above may have seen the stop already.
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            next += self.settings.lag_interval;
            let started = Instant::now();
            match self.poll().await {
                Ok(report) => debug!(
                    cluster = %self.settings.name,
                    samples = report.samples,
                    offsets = report.offsets,
                    reads = report.record_reads,
                    cache_hits = report.cache_hits,
                    end_reads = report.end_reads,
                    elapsed_ms = started.elapsed().as_millis(),
                    "lag poll done"
                ),
                Err(e) => {
                    if self.up {
                        warn!(cluster = %self.settings.name, "cluster unreachable: {e}");
                    } else {
                        debug!(cluster = %self.settings.name, "cluster still unreachable: {e}");
                    }
                    self.set_up(false);
                }
            }
            self.metrics
                .poll_duration
                .with_label_values(&[&self.settings.name])
                .observe(started.elapsed().as_secs_f64());
            // A poll longer than the interval starts the next one at once, not a
            // burst of missed ones.
            let now = tokio::time::Instant::now();
            if next < now {
                next = now;
            }
        }
        self.save(true);
        if let Some(t) = &mut self.tailer {
            t.flush(true);
        }
    }

    /// One round of reading the audited partitions; whether it counted anything.
    /// Only while the last lag poll reached the cluster: reconnecting is the poll's
    /// work, so an unreachable cluster costs no connection attempt per round.
    async fn tail_round(&mut self) -> bool {
        let Some(client) = self.client.clone().filter(|_| self.up) else {
            return false;
        };
        let audited = self.audited_partitions();
        let commits = std::mem::take(&mut self.last_commits);
        let Some(tailer) = &mut self.tailer else {
            return false;
        };
        tailer.audit(&audited);
        tailer.commit(&commits);
        let report = tailer.round(&client).await;
        tailer.flush(false);
        if report != crate::tail::RoundReport::default() {
            debug!(
                cluster = %self.settings.name,
                records = report.records,
                bytes = report.bytes,
                passed_over = report.passed_over,
                unreadable = report.unreadable,
                unanswered = report.unanswered,
                "books round done"
            );
        }
        for (topic, behind) in tailer.tail_lag() {
            self.metrics
                .tail_lag
                .with_label_values(&[&self.settings.name, topic])
                .set(behind);
        }
        if report.records > 0 {
            self.metrics
                .tail_records
                .with_label_values(&[&self.settings.name])
                .inc_by(report.records);
        }
        report.records > 0 || report.passed_over > 0
    }

    /// The watched partitions of the audited topics.
    fn audited_partitions(&self) -> BTreeSet<TopicPartition> {
        let Some(filter) = &self.settings.audit_topics else {
            return BTreeSet::new();
        };
        self.watched_partitions()
            .into_iter()
            .filter(|tp| filter.matches(&tp.topic))
            .collect()
    }

    fn set_up(&mut self, up: bool) {
        if up && !self.up {
            info!(cluster = %self.settings.name, "cluster reached");
        }
        self.up = up;
        self.metrics
            .up
            .with_label_values(&[&self.settings.name])
            .set(i64::from(up));
        if !up {
            // Reconnect from the bootstrap list next time: the brokers may have moved.
            self.client = None;
        }
    }

    async fn client(&mut self) -> Result<Client, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let mut cfg = self.settings.client.clone();
        cfg.observer = Some(self.metrics.observer(&self.settings.name));
        let client = Client::connect(cfg).await.map_err(|e| e.to_string())?;
        self.client = Some(client.clone());
        self.last_discovery = None;
        Ok(client)
    }

    /// One poll: discovery when due, then offsets, record reads and the samples sent.
    pub async fn poll(&mut self) -> Result<PollReport, String> {
        let client = self.client().await?;
        let due = self
            .last_discovery
            .is_none_or(|at| at.elapsed() >= self.settings.metadata_interval);
        if due {
            self.discover(&client).await?;
            self.last_discovery = Some(Instant::now());
        }
        let report = self.poll_lag(&client).await?;
        self.set_up(true);
        self.save(false);
        Ok(report)
    }

    /// Topics, partitions and groups, and what disappeared since the last time.
    async fn discover(&mut self, client: &Client) -> Result<(), String> {
        let metadata = client.metadata().await.map_err(|e| e.to_string())?;
        let filters = &self.settings.filters;
        let topics: BTreeMap<String, i32> = metadata
            .topics
            .iter()
            .filter(|t| t.error.is_none() && filters.topic(&t.name, t.is_internal))
            .map(|t| {
                (
                    t.name.clone(),
                    i32::try_from(t.partitions.len()).unwrap_or(i32::MAX),
                )
            })
            .collect();
        let listed = client.list_groups().await.map_err(|e| e.to_string())?;
        let groups: BTreeSet<String> = listed
            .iter()
            .filter(|g| g.protocol_type.is_empty() || g.protocol_type == "consumer")
            .map(|g| g.group.clone())
            .filter(|g| filters.group(g))
            .collect();
        let gone_topics: Vec<String> = self
            .topics
            .keys()
            .filter(|t| !topics.contains_key(*t))
            .cloned()
            .collect();
        let gone_groups: Vec<String> = self
            .groups
            .iter()
            .filter(|g| !groups.contains(*g))
            .cloned()
            .collect();
        for t in &gone_topics {
            self.commits.forget_topic(t);
            self.parts.remove(t);
        }
        for g in &gone_groups {
            self.commits.forget_group(g);
            self.forgotten.remove(g);
        }
        if let Some(tailer) = &mut self.tailer
            && !gone_groups.is_empty()
        {
            tailer.forget_groups(&gone_groups);
        }
        if !gone_topics.is_empty() || !gone_groups.is_empty() {
            self.offsets_topic.retain(|g, t, _| {
                !gone_groups.iter().any(|x| x == g) && !gone_topics.iter().any(|x| x == t)
            });
            info!(
                cluster = %self.settings.name,
                topics = ?gone_topics,
                groups = ?gone_groups,
                "deleted topics and groups are forgotten"
            );
            if let Some(e) = &self.emitter {
                e.record_forget(gone_groups, gone_topics);
            }
        }
        let new_topics = topics
            .keys()
            .filter(|t| !self.topics.contains_key(*t))
            .count();
        if new_topics > 0 && self.last_metadata.is_some() {
            info!(cluster = %self.settings.name, new_topics, "new topics are watched");
        }
        for (topic, &count) in &topics {
            let parts = self.parts.entry(topic.clone()).or_default();
            parts.resize_with(usize::try_from(count).unwrap_or(0), Part::default);
        }
        self.topics = topics;
        self.groups = groups;
        self.offsets_topic.set_metadata(&metadata);
        self.metrics
            .groups
            .with_label_values(&[&self.settings.name])
            .set(i64::try_from(self.groups.len()).unwrap_or(i64::MAX));
        self.metrics
            .partitions
            .with_label_values(&[&self.settings.name])
            .set(self.topics.values().map(|&n| i64::from(n)).sum());
        self.last_metadata = Some(metadata);
        Ok(())
    }

    fn watched_partitions(&self) -> Vec<TopicPartition> {
        let Some(metadata) = &self.last_metadata else {
            return Vec::new();
        };
        metadata
            .topics
            .iter()
            .filter(|t| self.topics.contains_key(&t.name))
            .flat_map(|t| {
                t.partitions.iter().map(|p| TopicPartition {
                    topic: t.name.clone(),
                    partition: p.partition,
                })
            })
            .collect()
    }

    fn part(&self, topic: &str, partition: i32) -> Option<&Part> {
        self.parts.get(topic)?.get(usize::try_from(partition).ok()?)
    }

    fn part_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Part> {
        self.parts
            .get_mut(topic)?
            .get_mut(usize::try_from(partition).ok()?)
    }

    async fn poll_lag(&mut self, client: &Client) -> Result<PollReport, String> {
        let name = self.settings.name.clone();
        let groups: Vec<String> = self.groups.iter().cloned().collect();
        let committed = client
            .offset_fetch(&groups)
            .await
            .map_err(|e| e.to_string())?;
        let descriptions = client
            .describe_groups(&groups)
            .await
            .map_err(|e| e.to_string())?;
        let partitions = self.watched_partitions();
        let need_stable = groups
            .iter()
            .any(|g| self.settings.filters.read_committed(g));
        let (starts, latests) = tokio::join!(
            client.list_offsets(&partitions, OffsetSpec::Earliest),
            client.list_offsets(&partitions, OffsetSpec::Latest),
        );
        let starts = starts.map_err(|e| e.to_string())?;
        let latests = latests.map_err(|e| e.to_string())?;
        let stables = if need_stable {
            Some(
                client
                    .list_offsets(&partitions, OffsetSpec::LastStable)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        for tp in &partitions {
            if let Some(part) = self.part_mut(&tp.topic, tp.partition) {
                let o = &mut part.offsets;
                o.start = starts.get(tp).and_then(|r| r.as_ref().ok().copied());
                o.latest = latests.get(tp).and_then(|r| r.as_ref().ok().copied());
                o.stable = stables
                    .as_ref()
                    .and_then(|s| s.get(tp))
                    .and_then(|r| r.as_ref().ok().copied());
            }
        }
        let now = now_ms();
        self.generation += 1;
        let generation = self.generation;
        // (group, topic, partition, committed, read committed) of every watched
        // commit, borrowed from the answer: a poll allocates per sample only for
        // the sample itself.
        let mut rows: Vec<(&str, &str, i32, i64, bool)> = Vec::new();
        for group in &groups {
            let Some(Ok(offsets)) = committed.get(group) else {
                continue;
            };
            let read_committed = self.settings.filters.read_committed(group);
            for c in offsets {
                if c.offset < 0 || c.error.is_some() || self.part(&c.topic, c.partition).is_none() {
                    continue;
                }
                rows.push((group, &c.topic, c.partition, c.offset, read_committed));
            }
        }
        if self.tailer.is_some() {
            self.last_commits = rows
                .iter()
                .map(|&(group, topic, partition, offset, _)| Commit {
                    group: group.to_owned(),
                    tp: TopicPartition::new(topic, partition),
                    offset,
                    seen_at_ms: now,
                })
                .collect();
        }
        let offsets_read = rows.len();
        self.metrics
            .offsets_read
            .with_label_values(&[&name])
            .inc_by(u64::try_from(offsets_read).unwrap_or(u64::MAX));
        // A commit above the end the broker gives, or a broker whose ends were seen to
        // be wrong: read the last batch, whose end is the partition's (one peer, tansu,
        // answers ListOffsets and the high watermark with the last batch's base + 1).
        let mut suspicious: BTreeSet<(&str, i32)> = BTreeSet::new();
        for &(_, topic, partition, c, _) in &rows {
            if let Some(part) = self.part(topic, partition) {
                let o = &part.offsets;
                if o.distrusted || o.end().is_none_or(|end| end < c) {
                    suspicious.insert((topic, partition));
                }
            }
        }
        let probes: Vec<(TopicPartition, i64, bool)> = suspicious
            .into_iter()
            .map(|(topic, partition)| {
                let o = self
                    .part(topic, partition)
                    .map(|p| p.offsets)
                    .unwrap_or_default();
                let at = lag::end_offset(o.latest, o.high_watermark).unwrap_or(1);
                (
                    TopicPartition::new(topic, partition),
                    (at - 1).max(0),
                    false,
                )
            })
            .collect();
        let end_reads = probes.len();
        for ((tp, at, _), result) in probes.iter().zip(read_all(client, &probes).await) {
            match result {
                Ok(f) => self.note_fetch(tp, &f),
                Err(e) => {
                    debug!(cluster = %name, topic = %tp.topic, partition = tp.partition, offset = at, "reading the last batch failed: {e}")
                }
            }
        }
        // Which (partition, offset) need a record read for lag seconds.
        let mut wanted: BTreeSet<(&str, i32, i64, bool)> = BTreeSet::new();
        let mut cache_hits = 0usize;
        for &(_, topic, partition, c, read_committed) in &rows {
            let Some(end) = self.end_for(topic, partition, read_committed) else {
                continue;
            };
            if c >= end {
                continue;
            }
            let Some(part) = self.part_mut(topic, partition) else {
                continue;
            };
            if part.times.cached(c, generation).is_some() {
                cache_hits += 1;
            } else {
                wanted.insert((topic, partition, c, read_committed));
            }
        }
        let wanted: Vec<(TopicPartition, i64, bool)> = wanted
            .into_iter()
            .map(|(t, p, c, rc)| (TopicPartition::new(t, p), c, rc))
            .collect();
        let mut record_reads = wanted.len();
        let results = read_all(client, &wanted).await;
        let mut gone: BTreeSet<TopicPartition> = BTreeSet::new();
        for ((tp, offset, _), result) in wanted.iter().zip(results) {
            match result {
                Ok(f) => {
                    self.note_fetch(tp, &f);
                    match (&f.error, &f.record) {
                        (None, Some(r)) => {
                            if let Some(part) = self.part_mut(&tp.topic, tp.partition) {
                                part.times
                                    .read(*offset, r.offset, r.timestamp_ms, generation);
                            }
                        }
                        (Some(KafkaCode(OFFSET_OUT_OF_RANGE)), _) => {
                            gone.insert(tp.clone());
                        }
                        _ => {}
                    }
                }
                Err(e) => {
                    debug!(cluster = %name, topic = %tp.topic, partition = tp.partition, offset, "record read failed: {e}");
                }
            }
        }
        // Records deleted below the log start: read the oldest record still there,
        // so that the estimate has a point above the committed offset.
        let start_reads: Vec<(TopicPartition, i64, bool)> = gone
            .into_iter()
            .filter_map(|tp| {
                let start = self.part(&tp.topic, tp.partition)?.offsets.start?;
                Some((tp, start, false))
            })
            .collect();
        record_reads += start_reads.len();
        for ((tp, _, _), result) in start_reads.iter().zip(read_all(client, &start_reads).await) {
            if let Ok(f) = result {
                self.note_fetch(tp, &f);
                if let (Some(r), Some(part)) = (&f.record, self.part_mut(&tp.topic, tp.partition)) {
                    part.times.point(r.offset, r.timestamp_ms);
                }
            }
        }
        self.metrics
            .record_reads
            .with_label_values(&[&name])
            .inc_by(u64::try_from(record_reads).unwrap_or(u64::MAX));
        self.metrics
            .end_reads
            .with_label_values(&[&name])
            .inc_by(u64::try_from(end_reads).unwrap_or(u64::MAX));
        self.metrics
            .record_cache_hits
            .with_label_values(&[&name])
            .inc_by(u64::try_from(cache_hits).unwrap_or(u64::MAX));
        // Commit times logged since the last poll: of watched partitions, and of those
        // the next discovery may watch (a new group commits before it is listed).
        let tail = {
            let (filters, topics) = (&self.settings.filters, &self.topics);
            self.offsets_topic
                .read(client, |g, t, p| {
                    p >= 0
                        && filters.group(g)
                        && topics
                            .get(t)
                            .map_or_else(|| filters.topic(t, false), |count| p < *count)
                })
                .await
        };
        self.metrics
            .offsets_topic_records
            .with_label_values(&[&name])
            .inc_by(tail.records);
        self.metrics
            .offsets_topic_skipped_batches
            .with_label_values(&[&name])
            .inc_by(tail.skipped_compressed_batches);
        self.metrics
            .offsets_topic_behind
            .with_label_values(&[&name])
            .set(tail.behind);
        self.metrics
            .offsets_topic_read
            .with_label_values(&[&name])
            .set(i64::from(self.offsets_topic.is_read()));
        // The samples. A group forgotten as long-Empty is left out until it commits
        // something new.
        let mut samples = Vec::with_capacity(rows.len());
        let mut inconsistent = 0u64;
        let mut estimated = 0u64;
        let mut back: HashSet<&str> = HashSet::new();
        for &(group, topic, partition, c, read_committed) in &rows {
            let logged = self.offsets_topic.commit_time(group, topic, partition, c);
            let (commit_at_ms, changed) = self
                .commits
                .observe_logged(group, topic, partition, c, logged, now);
            if self.forgotten.contains(group) {
                if !changed {
                    continue;
                }
                back.insert(group);
            }
            let end = self.end_for(topic, partition, false).unwrap_or(c);
            let target = self
                .end_for(topic, partition, read_committed)
                .unwrap_or(end);
            let (lag_records, odd) = lag::lag_records(c, target);
            if odd {
                inconsistent += 1;
            }
            let Some(part) = self.part_mut(topic, partition) else {
                continue;
            };
            let (lag_seconds, is_estimate) = if lag_records == 0 {
                (0.0, false)
            } else {
                let time = part
                    .times
                    .cached(c, generation)
                    .unwrap_or_else(|| part.times.estimate(c));
                match time {
                    RecordTime::Read(ts) => (lag::lag_seconds(now, ts), false),
                    RecordTime::Estimated(ts) => (lag::lag_seconds(now, ts), true),
                    RecordTime::Unknown => (0.0, true),
                }
            };
            if is_estimate {
                estimated += 1;
            }
            let o = part.offsets;
            samples.push(LagSample {
                group: group.to_owned(),
                topic: topic.to_owned(),
                partition,
                committed: c,
                end_offset: end.max(0),
                start_offset: o.start.unwrap_or(0).max(0),
                lag_records,
                lag_seconds,
                commit_at_ms,
                stable_offset: o.stable.filter(|s| *s != end),
                estimated: is_estimate,
            });
        }
        for g in back {
            self.forgotten.remove(g);
        }
        for parts in self.parts.values_mut() {
            for part in parts {
                part.times.end_poll(generation);
            }
        }
        self.metrics
            .inconsistent_offsets
            .with_label_values(&[&name])
            .inc_by(inconsistent);
        self.metrics
            .estimated
            .with_label_values(&[&name])
            .inc_by(estimated);
        // Group state and members, and the long-Empty groups to forget.
        let mut group_states = Vec::new();
        let mut forget = Vec::new();
        let forget_after =
            i64::try_from(self.settings.forget_empty_groups_after.as_millis()).unwrap_or(i64::MAX);
        for group in &groups {
            let Some(Ok(d)) = descriptions.get(group) else {
                continue;
            };
            if d.state == "Empty" {
                let last = self.commits.last_change(group);
                if last.is_some_and(|at| now.saturating_sub(at) >= forget_after)
                    && self.forgotten.insert(group.clone())
                {
                    forget.push(group.clone());
                }
            } else {
                self.forgotten.remove(group);
            }
            if self.forgotten.contains(group) {
                continue;
            }
            group_states.push(GroupMetadata {
                group: group.clone(),
                state: GroupState::from(d.state.clone()),
                members: u32::try_from(d.members).unwrap_or(u32::MAX),
            });
        }
        if !forget.is_empty() {
            info!(cluster = %name, groups = ?forget, "groups Empty with no commit for --forget-empty-groups-after are forgotten");
            samples.retain(|s| !self.forgotten.contains(&s.group));
        }
        let sample_count = samples.len();
        if let Some(e) = &self.emitter {
            if !forget.is_empty() {
                e.record_forget(forget, Vec::new());
            }
            e.record_lag(now, samples);
            e.record_cluster(self.cluster_state(now, group_states));
        }
        Ok(PollReport {
            samples: sample_count,
            offsets: offsets_read,
            record_reads,
            end_reads,
            cache_hits,
        })
    }

    /// The end of a partition a group is measured against.
    fn end_for(&self, topic: &str, partition: i32, read_committed: bool) -> Option<i64> {
        let o = &self.part(topic, partition)?.offsets;
        let end = o.end()?;
        if read_committed {
            Some(o.stable.map_or(end, |s| s.min(end)))
        } else {
            Some(end)
        }
    }

    fn note_fetch(&mut self, tp: &TopicPartition, f: &FetchOne) {
        if let Some(code) = f.error {
            debug!(cluster = %self.settings.name, topic = %tp.topic, partition = tp.partition, "record read: {code}");
        }
        let cluster = self.settings.name.clone();
        let Some(part) = self.part_mut(&tp.topic, tp.partition) else {
            return;
        };
        let o = &mut part.offsets;
        if f.high_watermark >= 0 {
            o.high_watermark = Some(f.high_watermark);
        }
        if let Some(next) = f.next_offset {
            o.fetched_end = Some(o.fetched_end.map_or(next, |e| e.max(next)));
        }
        // A Fetch that shows more than ListOffsets said (records above it, or a higher
        // high watermark) makes ListOffsets untrusted for the partition: from then on
        // every poll reads its last batch, until ListOffsets agrees again. (A record
        // appended between the two requests can also do it, for one poll.)
        let Some(latest) = o.latest else { return };
        let shown = f.next_offset.unwrap_or(-1).max(f.high_watermark);
        if shown > latest {
            if !o.distrusted {
                debug!(
                    cluster = %cluster,
                    topic = %tp.topic,
                    partition = tp.partition,
                    list_offsets_latest = latest,
                    fetch_shows = shown,
                    "ListOffsets answered below what a Fetch shows: the partition's last batch is read every poll"
                );
            }
            o.distrusted = true;
        } else if f.error.is_none() {
            o.distrusted = false;
        }
    }

    fn cluster_state(&self, now: i64, groups: Vec<GroupMetadata>) -> ClusterState {
        let (brokers, topics) = match &self.last_metadata {
            Some(m) => (
                u32::try_from(m.brokers.len()).unwrap_or(u32::MAX),
                m.topics
                    .iter()
                    .filter(|t| self.topics.contains_key(&t.name))
                    .map(|t| WireTopic {
                        topic: t.name.clone(),
                        partitions: t
                            .partitions
                            .iter()
                            .map(|p| WirePartition {
                                partition: p.partition,
                                leader: p.leader,
                                replicas: u32::try_from(p.replicas.len()).unwrap_or(u32::MAX),
                                in_sync_replicas: u32::try_from(p.isr.len()).unwrap_or(u32::MAX),
                            })
                            .collect(),
                    })
                    .collect(),
            ),
            None => (0, Vec::new()),
        };
        ClusterState {
            at_ms: now,
            brokers,
            topics,
            groups,
        }
    }

    /// Saves the commit times (and the `__consumer_offsets` position) when they
    /// changed (after the first poll, then at most every [`SAVE_EVERY`] unless `now`),
    /// atomically: a kill -9 leaves the old file or the new one.
    fn save(&mut self, now: bool) {
        let recent = self.last_save.is_some_and(|at| at.elapsed() < SAVE_EVERY);
        let dirty = self.commits.is_dirty() || self.offsets_topic.is_dirty();
        if !dirty || (!now && recent) {
            return;
        }
        self.last_save = Some(Instant::now());
        self.offsets_topic.save();
        if !self.commits.is_dirty() {
            return;
        }
        let entries = self.commits.take_entries();
        let result = serde_json::to_vec(&entries)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::state_file::replace(&self.state_file, &bytes));
        if let Err(e) = result {
            warn!(file = %self.state_file.display(), "cannot save the commit times: {e}");
        }
    }
}

/// Runs the reads (partition, offset, read committed) with at most
/// [`READ_CONCURRENCY`] at once; answers in order.
async fn read_all(
    client: &Client,
    reads: &[(TopicPartition, i64, bool)],
) -> Vec<Result<FetchOne, String>> {
    let permits = Arc::new(Semaphore::new(READ_CONCURRENCY));
    let mut tasks = Vec::with_capacity(reads.len());
    for (tp, offset, read_committed) in reads {
        // The permit is taken before the task exists: at most READ_CONCURRENCY
        // tasks at a time, however many reads a first poll has.
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .map_err(|e| e.to_string());
        let client = client.clone();
        let tp = tp.clone();
        let offset = *offset;
        let isolation = if *read_committed {
            Isolation::ReadCommitted
        } else {
            Isolation::ReadUncommitted
        };
        tasks.push(tokio::spawn(async move {
            let _permit = permit?;
            client
                .fetch_one(&tp, offset, isolation, READ_MAX_BYTES)
                .await
                .map_err(|e| e.to_string())
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    out
}
