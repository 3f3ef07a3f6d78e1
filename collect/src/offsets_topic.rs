//! Commit times from `__consumer_offsets`, as Burrow takes them: where a cluster's
//! Metadata lists the topic and the collector may read it, every poll tails it from
//! where it left off and keeps, per watched (group, topic, partition), the last few
//! commits with the time the coordinator wrote them. A lag sample's commit time is
//! then the time of the commit of the offset OffsetFetch returned, so a group that
//! commits the same offset again shows a new commit (Burrow's `stall`, not `stop`).
//! Where the topic is absent or not readable, the collector keeps the poll-time rule
//! ([`crate::lag::CommitTimes`]).
//!
//! Bounds: each poll reads at most [`BYTES_PER_PARTITION`] from each partition (one
//! Fetch, [`CONCURRENCY`] at a time, each answer dropped once read), so a large topic
//! is caught up over several polls. Commits are kept, [`HISTORY`] each, only for the
//! groups and partitions the collector watches or will watch (the filters admit them:
//! a new group commits before the next discovery lists it); a tombstone, a deleted
//! group or a deleted topic forgets them. The position and the commits kept are saved
//! in `offsets_topic.json` next to `commits.json`, so a restart resumes where it
//! stopped.
//!
//! Compressed batches are passed over and counted (the Kafka client has no codecs
//! yet); Kafka writes the topic uncompressed unless `offsets.topic.compression.codec`
//! says otherwise.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use tally_kafka::client::{
    Client, FetchedRecords, Isolation, KafkaCode, Metadata, OffsetSpec, OffsetsTopicRecord,
    TopicPartition,
};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// The topic's name.
pub const TOPIC: &str = "__consumer_offsets";
/// What one poll reads from one partition at most (more only where a single batch is
/// larger: up to 64 MiB).
pub const BYTES_PER_PARTITION: i32 = 4 << 20;
/// The largest Fetch asked for, for a first batch larger than [`BYTES_PER_PARTITION`].
const MAX_BYTES: i32 = 64 << 20;
/// Fetches of the topic at once.
pub const CONCURRENCY: usize = 4;
/// Commits kept per (group, topic, partition): OffsetFetch and the tail are read at
/// different moments, so the offset OffsetFetch returned may be a few commits back.
pub const HISTORY: usize = 4;

const OFFSET_OUT_OF_RANGE: KafkaCode = KafkaCode(1);
const TOPIC_AUTHORIZATION_FAILED: KafkaCode = KafkaCode(29);

/// What one read of the topic did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TailReport {
    /// Records read.
    pub records: u64,
    /// Offset commits (and tombstones) of watched partitions taken in.
    pub commits: u64,
    /// Records that are not in any layout Kafka writes there.
    pub unreadable: u64,
    /// Compressed batches passed over.
    pub skipped_compressed_batches: u64,
    /// Records between the positions and the partitions' ends after the read.
    pub behind: i64,
}

/// Whether the tail is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Read (or to be tried).
    Open,
    /// Not authorised: tried again after the next metadata refresh, quietly.
    Denied,
}

/// One commit kept, as saved.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SavedCommit {
    group: String,
    topic: String,
    partition: i32,
    offset: i64,
    commit_ms: i64,
}

/// The saved state.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Saved {
    /// Per partition of the topic, the next offset to read.
    positions: BTreeMap<i32, i64>,
    /// The commits kept, oldest first per key.
    commits: Vec<SavedCommit>,
}

type Commits = VecDeque<(i64, i64)>;

/// The tail of one cluster's `__consumer_offsets`.
pub struct OffsetsTopic {
    cluster: String,
    state_file: PathBuf,
    /// The topic's partitions in the last metadata (0: the cluster lists no such topic).
    partitions: i32,
    access: Access,
    /// Whether "not authorised" was logged.
    denial_logged: bool,
    /// Per partition, the next offset to read (none: from the earliest).
    positions: BTreeMap<i32, i64>,
    /// Per partition, the largest end seen (ListOffsets `latest` or a high watermark).
    ends: BTreeMap<i32, i64>,
    /// Per partition, a raised Fetch size (a first batch larger than the default).
    max_bytes: BTreeMap<i32, i32>,
    /// Group → topic → partition → the last commits (offset, commit time), oldest first.
    commits: HashMap<String, HashMap<String, HashMap<i32, Commits>>>,
    dirty: bool,
}

impl OffsetsTopic {
    /// The tail of `cluster`, resumed from `dir/offsets_topic.json` where that exists
    /// (a file that does not parse is ignored and the topic read again from the start).
    pub fn load(dir: &Path, cluster: &str) -> OffsetsTopic {
        let state_file = dir.join("offsets_topic.json");
        let mut tail = OffsetsTopic {
            cluster: cluster.to_owned(),
            state_file,
            partitions: 0,
            access: Access::Open,
            denial_logged: false,
            positions: BTreeMap::new(),
            ends: BTreeMap::new(),
            max_bytes: BTreeMap::new(),
            commits: HashMap::new(),
            dirty: false,
        };
        match std::fs::read(&tail.state_file) {
            Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                Ok(saved) => {
                    tail.positions = saved.positions;
                    for c in saved.commits {
                        tail.push(c.group, c.topic, c.partition, c.offset, c.commit_ms);
                    }
                }
                Err(e) => warn!(
                    file = %tail.state_file.display(),
                    "the saved __consumer_offsets position does not parse and is ignored (the topic is read again from its start): {e}"
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(
                file = %tail.state_file.display(),
                "cannot read the saved __consumer_offsets position (the topic is read again from its start): {e}"
            ),
        }
        tail.dirty = false;
        tail
    }

    /// Takes in a metadata refresh: the topic's partitions (none where the cluster does
    /// not list it), and a new chance for a tail that was not authorised.
    pub fn set_metadata(&mut self, metadata: &Metadata) {
        let partitions = metadata
            .topics
            .iter()
            .find(|t| t.name == TOPIC && t.error.is_none())
            .map_or(0, |t| i32::try_from(t.partitions.len()).unwrap_or(i32::MAX));
        if partitions != self.partitions {
            debug!(cluster = %self.cluster, partitions, "{TOPIC} partitions");
        }
        self.partitions = partitions;
        self.positions.retain(|p, _| *p < partitions);
        self.ends.retain(|p, _| *p < partitions);
        self.max_bytes.retain(|p, _| *p < partitions);
        self.access = Access::Open;
    }

    /// Whether commit times come from the topic: the cluster lists it and it was not
    /// refused.
    pub fn is_read(&self) -> bool {
        self.partitions > 0 && self.access == Access::Open
    }

    /// Keeps only the commits of (group, topic, partition) that `keep` admits.
    pub fn retain(&mut self, keep: impl Fn(&str, &str, i32) -> bool) {
        let mut dropped = false;
        self.commits.retain(|group, topics| {
            topics.retain(|topic, parts| {
                parts.retain(|p, _| {
                    let k = keep(group, topic, *p);
                    dropped |= !k;
                    k
                });
                !parts.is_empty()
            });
            !topics.is_empty()
        });
        self.dirty |= dropped;
    }

    /// The commit time of the newest commit of `offset` kept for (group, topic,
    /// partition).
    pub fn commit_time(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Option<i64> {
        self.commits
            .get(group)?
            .get(topic)?
            .get(&partition)?
            .iter()
            .rev()
            .find(|(o, _)| *o == offset)
            .map(|(_, at)| *at)
    }

    /// Commits kept, all keys together.
    pub fn len(&self) -> usize {
        self.commits
            .values()
            .flat_map(|t| t.values())
            .flat_map(|p| p.values())
            .map(VecDeque::len)
            .sum()
    }

    /// Whether no commit is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, group: String, topic: String, partition: i32, offset: i64, at: i64) {
        let kept = self
            .commits
            .entry(group)
            .or_default()
            .entry(topic)
            .or_default()
            .entry(partition)
            .or_default();
        kept.push_back((offset, at));
        while kept.len() > HISTORY {
            kept.pop_front();
        }
        self.dirty = true;
    }

    fn delete(&mut self, group: &str, topic: &str, partition: i32) {
        let Some(topics) = self.commits.get_mut(group) else {
            return;
        };
        if let Some(parts) = topics.get_mut(topic) {
            self.dirty |= parts.remove(&partition).is_some();
            if parts.is_empty() {
                topics.remove(topic);
            }
        }
        if topics.is_empty() {
            self.commits.remove(group);
        }
    }

    /// Reads what was appended since the last read, at most [`BYTES_PER_PARTITION`] per
    /// partition, keeping the commits `keep` says are watched. Never fails: a cluster
    /// that does not answer is tried again next poll, and one that refuses the topic
    /// is logged once (info) and left to the poll-time rule.
    pub async fn read(
        &mut self,
        client: &Client,
        keep: impl Fn(&str, &str, i32) -> bool,
    ) -> TailReport {
        let mut report = TailReport::default();
        if !self.is_read() {
            return report;
        }
        let all: Vec<TopicPartition> = (0..self.partitions)
            .map(|p| TopicPartition::new(TOPIC, p))
            .collect();
        let latest = match client.list_offsets(&all, OffsetSpec::Latest).await {
            Ok(latest) => latest,
            Err(e) => {
                debug!(cluster = %self.cluster, "{TOPIC}: ListOffsets failed: {e}");
                return report;
            }
        };
        if latest
            .values()
            .any(|r| *r == Err(TOPIC_AUTHORIZATION_FAILED))
        {
            self.deny();
            return report;
        }
        for (tp, end) in &latest {
            if let Ok(end) = end {
                let e = self.ends.entry(tp.partition).or_insert(*end);
                *e = (*e).max(*end);
            }
        }
        let unknown: Vec<TopicPartition> = all
            .iter()
            .filter(|tp| !self.positions.contains_key(&tp.partition))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            match client.list_offsets(&unknown, OffsetSpec::Earliest).await {
                Ok(starts) => {
                    for (tp, start) in starts {
                        if let Ok(start) = start {
                            self.positions.insert(tp.partition, start.max(0));
                        }
                    }
                }
                Err(e) => {
                    debug!(cluster = %self.cluster, "{TOPIC}: ListOffsets earliest failed: {e}")
                }
            }
        }
        let due: Vec<(i32, i64, i32)> = self
            .positions
            .iter()
            .filter(|&(p, at)| self.ends.get(p).is_some_and(|end| end > at))
            .map(|(p, at)| {
                let bytes = self
                    .max_bytes
                    .get(p)
                    .copied()
                    .unwrap_or(BYTES_PER_PARTITION);
                (*p, *at, bytes)
            })
            .collect();
        let mut due = due.into_iter();
        let mut running = JoinSet::new();
        loop {
            while running.len() < CONCURRENCY {
                let Some((partition, at, bytes)) = due.next() else {
                    break;
                };
                let client = client.clone();
                running.spawn(async move {
                    let tp = TopicPartition::new(TOPIC, partition);
                    let fetched = client
                        .fetch_records(&tp, at, Isolation::ReadCommitted, bytes)
                        .await;
                    (partition, at, bytes, fetched)
                });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            let Ok((partition, at, bytes, fetched)) = done else {
                continue;
            };
            match fetched {
                Ok(f) => {
                    if !self.take(partition, at, bytes, f, &keep, &mut report) {
                        running.abort_all();
                        break;
                    }
                }
                Err(e) => {
                    debug!(cluster = %self.cluster, partition, offset = at, "{TOPIC}: Fetch failed: {e}");
                }
            }
        }
        report.behind = self
            .positions
            .iter()
            .map(|(p, at)| self.ends.get(p).map_or(0, |end| (end - at).max(0)))
            .sum();
        report
    }

    /// Takes in one Fetch answer of `partition` from `at`; false when the topic turned
    /// out to be refused.
    fn take(
        &mut self,
        partition: i32,
        at: i64,
        bytes: i32,
        f: FetchedRecords,
        keep: &impl Fn(&str, &str, i32) -> bool,
        report: &mut TailReport,
    ) -> bool {
        match f.error {
            None => {}
            Some(TOPIC_AUTHORIZATION_FAILED) => {
                self.deny();
                return false;
            }
            Some(OFFSET_OUT_OF_RANGE) => {
                // Below the log start (compaction, retention) or past the end (the
                // topic was recreated): from the earliest again.
                debug!(cluster = %self.cluster, partition, offset = at, "{TOPIC}: offset out of range, reading from the earliest");
                self.positions.remove(&partition);
                self.dirty = true;
                return true;
            }
            Some(code) => {
                debug!(cluster = %self.cluster, partition, offset = at, "{TOPIC}: Fetch: {code}");
                return true;
            }
        }
        if f.high_watermark >= 0 {
            let e = self.ends.entry(partition).or_insert(f.high_watermark);
            *e = (*e).max(f.high_watermark);
        }
        report.records += u64::try_from(f.records.len()).unwrap_or(u64::MAX);
        report.skipped_compressed_batches += u64::from(f.skipped_compressed_batches);
        for record in &f.records {
            match OffsetsTopicRecord::parse(record.key.as_deref(), record.value.as_deref()) {
                Ok(OffsetsTopicRecord::Commit {
                    group,
                    topic,
                    partition: p,
                    commit,
                }) => {
                    if !keep(&group, &topic, p) {
                        continue;
                    }
                    report.commits += 1;
                    match commit {
                        Some(c) => self.push(group, topic, p, c.offset, c.commit_timestamp_ms),
                        None => self.delete(&group, &topic, p),
                    }
                }
                Ok(OffsetsTopicRecord::Other { .. }) => {}
                Err(e) => {
                    report.unreadable += 1;
                    debug!(cluster = %self.cluster, partition, offset = record.offset, "{TOPIC}: {e}");
                }
            }
        }
        if f.next_offset > at {
            self.positions.insert(partition, f.next_offset);
            self.max_bytes.remove(&partition);
            self.dirty = true;
        } else if self.ends.get(&partition).is_some_and(|end| *end > at) {
            // Records are there but no whole batch came: a batch larger than asked for.
            let more = bytes.saturating_mul(2).min(MAX_BYTES);
            if more > bytes {
                self.max_bytes.insert(partition, more);
            } else {
                debug!(cluster = %self.cluster, partition, offset = at, "{TOPIC}: no whole batch in {bytes} bytes");
            }
        }
        true
    }

    fn deny(&mut self) {
        self.access = Access::Denied;
        if !self.denial_logged {
            self.denial_logged = true;
            info!(
                cluster = %self.cluster,
                "{TOPIC} is not readable (not authorised): commit times are those of the poll that first saw an offset, and a group that re-commits the same offset reads stop rather than stall"
            );
        }
    }

    /// Saves the position and the commits kept when they changed (atomically).
    pub fn save(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let mut commits = Vec::with_capacity(self.len());
        for (group, topics) in &self.commits {
            for (topic, parts) in topics {
                for (partition, kept) in parts {
                    for (offset, at) in kept {
                        commits.push(SavedCommit {
                            group: group.clone(),
                            topic: topic.clone(),
                            partition: *partition,
                            offset: *offset,
                            commit_ms: *at,
                        });
                    }
                }
            }
        }
        // Stable order (by key; each key's commits stay oldest first).
        commits.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        let saved = Saved {
            positions: self.positions.clone(),
            commits,
        };
        let result = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::state_file::replace(&self.state_file, &bytes));
        if let Err(e) = result {
            self.dirty = true;
            warn!(file = %self.state_file.display(), "cannot save the {TOPIC} position: {e}");
        }
    }

    /// Whether something changed since the last save.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_kafka::client::{PartitionMetadata, Record, TopicMetadata};

    fn key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
        let mut k = 1i16.to_be_bytes().to_vec();
        for s in [group, topic] {
            k.extend((s.len() as i16).to_be_bytes());
            k.extend(s.as_bytes());
        }
        k.extend(partition.to_be_bytes());
        k
    }

    fn value(offset: i64, at: i64) -> Vec<u8> {
        let mut v = 3i16.to_be_bytes().to_vec();
        v.extend(offset.to_be_bytes());
        v.extend((-1i32).to_be_bytes());
        v.extend(0i16.to_be_bytes());
        v.extend(at.to_be_bytes());
        v
    }

    fn record(offset: i64, k: Vec<u8>, v: Option<Vec<u8>>) -> Record {
        Record {
            offset,
            timestamp_ms: 0,
            key: Some(k.into()),
            value: v.map(Into::into),
        }
    }

    fn fetched(next: i64, records: Vec<Record>) -> FetchedRecords {
        FetchedRecords {
            error: None,
            high_watermark: next,
            last_stable_offset: next,
            log_start_offset: 0,
            next_offset: next,
            records,
            skipped_compressed_batches: 0,
        }
    }

    fn metadata(partitions: usize) -> Metadata {
        Metadata {
            cluster_id: None,
            controller_id: 1,
            brokers: Vec::new(),
            topics: vec![TopicMetadata {
                name: TOPIC.into(),
                is_internal: true,
                error: None,
                partitions: (0..partitions)
                    .map(|p| PartitionMetadata {
                        partition: p as i32,
                        leader: 1,
                        replicas: vec![1],
                        isr: vec![1],
                        offline_replicas: Vec::new(),
                        error: None,
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn commits_are_kept_for_watched_partitions_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut tail = OffsetsTopic::load(dir.path(), "c");
        assert!(!tail.is_read(), "no topic listed yet");
        tail.set_metadata(&metadata(2));
        assert!(tail.is_read());
        let keep = |g: &str, _: &str, _: i32| g != "unwatched";
        let mut report = TailReport::default();
        let records = vec![
            record(0, key("g", "t", 0), Some(value(5, 1_000))),
            record(1, key("g", "t", 0), Some(value(5, 2_000))),
            record(2, key("g", "t", 1), Some(value(9, 2_500))),
            record(3, key("unwatched", "t", 0), Some(value(1, 3_000))),
            record(4, 2i16.to_be_bytes().to_vec(), Some(vec![0, 3])),
            record(5, vec![0xff], None),
            record(6, key("g", "t", 0), Some(value(6, 3_000))),
        ];
        assert!(tail.take(
            0,
            0,
            BYTES_PER_PARTITION,
            fetched(7, records),
            &keep,
            &mut report
        ));
        assert_eq!(
            (report.records, report.commits, report.unreadable),
            (7, 4, 1)
        );
        // The newest commit of the offset asked for: a re-commit shows its own time.
        assert_eq!(tail.commit_time("g", "t", 0, 5), Some(2_000));
        assert_eq!(tail.commit_time("g", "t", 0, 6), Some(3_000));
        assert_eq!(tail.commit_time("g", "t", 0, 7), None);
        assert_eq!(tail.commit_time("unwatched", "t", 0, 1), None);
        assert_eq!(tail.positions.get(&0), Some(&7));
        tail.save();
        let mut again = OffsetsTopic::load(dir.path(), "c");
        again.set_metadata(&metadata(2));
        assert_eq!(again.positions.get(&0), Some(&7));
        assert_eq!(again.commit_time("g", "t", 0, 5), Some(2_000));
        assert_eq!(again.commit_time("g", "t", 1, 9), Some(2_500));
        // A tombstone deletes; forgetting drops unwatched keys.
        let tomb = vec![record(7, key("g", "t", 1), None)];
        assert!(again.take(
            0,
            7,
            BYTES_PER_PARTITION,
            fetched(8, tomb),
            &keep,
            &mut report
        ));
        assert_eq!(again.commit_time("g", "t", 1, 9), None);
        again.retain(|_, _, p| p != 0);
        assert!(again.is_empty());
    }

    #[test]
    fn history_is_bounded_and_a_large_batch_asks_for_more() {
        let dir = tempfile::tempdir().unwrap();
        let mut tail = OffsetsTopic::load(dir.path(), "c");
        tail.set_metadata(&metadata(1));
        let keep = |_: &str, _: &str, _: i32| true;
        let mut report = TailReport::default();
        let records: Vec<Record> = (0..20)
            .map(|i| record(i, key("g", "t", 0), Some(value(i, i * 10))))
            .collect();
        assert!(tail.take(
            0,
            0,
            BYTES_PER_PARTITION,
            fetched(20, records),
            &keep,
            &mut report
        ));
        assert_eq!(tail.len(), HISTORY);
        assert_eq!(tail.commit_time("g", "t", 0, 19), Some(190));
        assert_eq!(tail.commit_time("g", "t", 0, 0), None);
        // No whole batch although the end is further: the next Fetch asks for twice.
        tail.ends.insert(0, 100);
        assert!(tail.take(
            0,
            20,
            BYTES_PER_PARTITION,
            fetched(20, Vec::new()),
            &keep,
            &mut report
        ));
        assert_eq!(tail.max_bytes.get(&0), Some(&(BYTES_PER_PARTITION * 2)));
        // Refused: no more reads, and the poll-time rule applies.
        let mut refused = fetched(20, Vec::new());
        refused.error = Some(TOPIC_AUTHORIZATION_FAILED);
        assert!(!tail.take(0, 20, BYTES_PER_PARTITION, refused, &keep, &mut report));
        assert!(!tail.is_read());
        // Out of range: from the earliest again.
        tail.set_metadata(&metadata(1));
        let mut gone = fetched(20, Vec::new());
        gone.error = Some(OFFSET_OUT_OF_RANGE);
        assert!(tail.take(0, 20, BYTES_PER_PARTITION, gone, &keep, &mut report));
        assert_eq!(tail.positions.get(&0), None);
    }
}
