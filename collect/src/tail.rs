//! The collector's exact books (DESIGN.md §2, §9): every audited partition's records
//! read once, as a consumer reads them, each bucketed by its own timestamp into the same
//! [`PartitionBooks`] the instrumented broker keeps, and every watched group's
//! committed offsets judged over those books (the no-fetch rule: committing K says the
//! records below K were consumed).
//!
//! A [`Tailer`] fetches each audited partition from where it stopped, one Fetch per
//! leader per round, read_committed: control batches hold no records, and records of
//! aborted transactions are counted apart (`aborted`), never as records of the `broker`
//! tier, so no group consumes them. Records without a timestamp are bucketed by
//! the time they were read (`no_timestamp`). Retention moves the books' log start (what
//! a group had not reached by then expires), and `OFFSET_OUT_OF_RANGE` after retention
//! moves the reading to the new log start.
//!
//! Each partition's position and books are stored together, atomically, in
//! `<data-dir>/<cluster>/books/<topic>/<partition>.json`: after a kill -9 the reading
//! resumes at the stored position with the books that counted everything before it, so
//! nothing is counted twice and nothing is missed.
//!
//! It also measures end-to-end latency per (topic, tier) with the broker's
//! [`LatencyBook`]: for `broker`, from a record's timestamp to the round that read it
//! (exact for LogAppendTime topics, whose timestamp is the append); for `group:<name>`,
//! from a record's timestamp to the lag poll that saw the commit covering it. Records
//! without a timestamp and records of aborted transactions are not in the `broker`
//! tier's latency. A commit seen beyond what the reading has reached waits for it, so
//! that the records it covers are still timed from the poll that saw it. Latency is
//! not stored: it restarts from zero with the process, a new emitter session whose
//! histograms replace the old session's at the agent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tally_audit::books::{PartitionBooks, WholeBooks};
use tally_audit::emitter::Emitter;
use tally_audit::{BucketWidth, LatencyBook, LatencyHistogram, Tier};
use tally_kafka::client::{
    Aborts, BatchKind, Client, Isolation, KafkaCode, LogChunk, TopicPartition,
};
use tally_kafka::records::{self, BatchHeader};
use tracing::{debug, warn};

use crate::now_ms;

use crate::state_file;

/// Where a partition read for the first time starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartAt {
    /// At the log start: the books count everything the log still holds.
    #[default]
    Earliest,
    /// At the log end: the books count what is appended from now on.
    Latest,
}

/// How the collector reads an audited cluster's log.
#[derive(Clone, Debug)]
pub struct TailSettings {
    /// Where a partition read for the first time starts.
    pub start: StartAt,
    /// The most bytes one Fetch answer may bring.
    pub max_bytes: i32,
    /// The most bytes of one partition in one answer.
    pub partition_max_bytes: i32,
    /// How often the positions and books are stored at most.
    pub save_every: Duration,
    /// The most bytes per second the reading fetches (none: no cap).
    pub max_read_rate: Option<u64>,
}

impl Default for TailSettings {
    fn default() -> Self {
        TailSettings {
            start: StartAt::Earliest,
            max_bytes: 16 << 20,
            partition_max_bytes: 4 << 20,
            save_every: Duration::from_secs(5),
            max_read_rate: None,
        }
    }
}

/// One committed offset, as a lag poll read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The group.
    pub group: String,
    /// The partition.
    pub tp: TopicPartition,
    /// The offset committed.
    pub offset: i64,
    /// When the poll that read it ran (epoch ms): where the latency of the records it
    /// newly covers ends.
    pub seen_at_ms: i64,
}

/// How many sightings of one (group, partition)'s commits wait for the reading at
/// most; beyond, the newest replaces the last (its records are timed a little later).
const MAX_WAITING: usize = 8;

/// A commit seen beyond what the reading had reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sighting {
    offset: i64,
    seen_at_ms: i64,
}

/// What became of a commit applied to the books.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Applied {
    /// Applied as far as the books go.
    Done,
    /// Beyond what was read (or the partition is not placed yet): to be applied again
    /// after the reading.
    Waits,
    /// The partition is not audited.
    Unknown,
}

/// The latency of one audited topic since this process started (not stored).
#[derive(Debug, Default)]
struct TopicLatency {
    /// Record timestamp → the round that read it.
    broker: LatencyBook,
    /// Per group, record timestamp → the poll that saw the commit covering it.
    groups: BTreeMap<String, LatencyBook>,
}

/// What one round read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Records counted into the books.
    pub records: u64,
    /// Bytes of the batches read.
    pub bytes: u64,
    /// Batches passed over as control batches or aborted transactions.
    pub passed_over: u64,
    /// Batches that could not be read (CRC, framing); their offsets are passed.
    pub unreadable: u64,
    /// Partitions whose leader did not answer.
    pub unanswered: u64,
}

/// One audited partition.
#[derive(Debug, Default)]
struct Tail {
    books: PartitionBooks,
    /// The next offset to read; `None` until the first round places it.
    next: Option<i64>,
    /// The high watermark the last answer gave.
    high_watermark: i64,
    /// Whether the books changed since they were stored.
    changed: bool,
}

/// What is stored of one partition.
#[derive(Serialize, Deserialize)]
struct DurableTail {
    next: i64,
    books: WholeBooks,
}

/// The exact books of one cluster's audited partitions. See the module documentation.
pub struct Tailer {
    width: BucketWidth,
    settings: TailSettings,
    dir: PathBuf,
    tails: BTreeMap<TopicPartition, Tail>,
    /// Per audited topic, its `broker` and group tiers' latency.
    latency: BTreeMap<String, TopicLatency>,
    /// Per (group, partition), commits seen beyond what was read, oldest first.
    waiting: BTreeMap<(String, TopicPartition), Vec<Sighting>>,
    emitter: Option<Emitter>,
    /// When the books were last stored; `None` until the first are, which are stored
    /// at the first flush that has any (a collector killed within its first
    /// `save_every` resumes from them), the later ones at most every `save_every`.
    last_save: Option<Instant>,
    /// For `max_read_rate`: when the current second of reading began and the bytes
    /// fetched since.
    rate_window: (Instant, u64),
}

fn state_path(dir: &Path, tp: &TopicPartition) -> PathBuf {
    dir.join(&tp.topic).join(format!("{}.json", tp.partition))
}

impl Tailer {
    /// Books stored under `dir` (`<data-dir>/<cluster>/books`), restored; counts go to
    /// `emitter` (none: nothing is sent).
    pub fn open(
        dir: PathBuf,
        width: BucketWidth,
        settings: TailSettings,
        emitter: Option<Emitter>,
    ) -> std::io::Result<Tailer> {
        std::fs::create_dir_all(&dir)?;
        let mut tails = BTreeMap::new();
        for topic in std::fs::read_dir(&dir)? {
            let topic = topic?;
            if !topic.file_type()?.is_dir() {
                continue;
            }
            let name = topic.file_name().to_string_lossy().into_owned();
            for file in std::fs::read_dir(topic.path())? {
                let path = file?.path();
                let Some(partition) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|n| n.parse::<i32>().ok())
                else {
                    continue;
                };
                let stored = std::fs::read(&path).and_then(|bytes| {
                    serde_json::from_slice::<DurableTail>(&bytes).map_err(std::io::Error::other)
                });
                match stored {
                    Ok(d) => {
                        let mut books = PartitionBooks::restore_whole(d.books);
                        // A new session: the agent gets every cell again.
                        books.mark_all_dirty();
                        tails.insert(
                            TopicPartition::new(name.clone(), partition),
                            Tail {
                                books,
                                next: Some(d.next),
                                high_watermark: -1,
                                changed: false,
                            },
                        );
                    }
                    Err(e) => warn!(
                        file = %path.display(),
                        "the stored books do not read and are left out (the partition is read again from its start): {e}"
                    ),
                }
            }
        }
        Ok(Tailer {
            width,
            settings,
            dir,
            tails,
            latency: BTreeMap::new(),
            waiting: BTreeMap::new(),
            emitter,
            last_save: None,
            rate_window: (Instant::now(), 0),
        })
    }

    /// Sets the audited partitions: new ones are read from now on, and those no longer
    /// audited (deleted topics, fewer partitions) are forgotten with their stored books.
    pub fn audit(&mut self, partitions: &BTreeSet<TopicPartition>) {
        let gone: Vec<TopicPartition> = self
            .tails
            .keys()
            .filter(|tp| !partitions.contains(*tp))
            .cloned()
            .collect();
        for tp in gone {
            self.tails.remove(&tp);
            let path = state_path(&self.dir, &tp);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(file = %path.display(), "cannot remove the books of {tp}: {e}");
            }
        }
        for tp in partitions {
            self.tails.entry(tp.clone()).or_default();
        }
        self.waiting.retain(|(_, tp), _| partitions.contains(tp));
        let topics: BTreeSet<&str> = partitions.iter().map(|tp| tp.topic.as_str()).collect();
        self.latency.retain(|t, _| topics.contains(t.as_str()));
        for t in topics {
            if !self.latency.contains_key(t) {
                self.latency.insert(t.to_owned(), TopicLatency::default());
            }
        }
    }

    /// Applies committed offsets to the books of the partitions they are on, and records
    /// the latency of the records each newly covers, up to the poll that saw it. A
    /// commit beyond what was read waits: each round applies it again as far as the
    /// reading got.
    pub fn commit(&mut self, commits: &[Commit]) {
        for c in commits {
            let applied = apply_commit(
                &mut self.tails,
                &mut self.latency,
                &c.group,
                &c.tp,
                Sighting {
                    offset: c.offset,
                    seen_at_ms: c.seen_at_ms,
                },
            );
            if applied != Applied::Waits {
                continue;
            }
            let waiting = self
                .waiting
                .entry((c.group.clone(), c.tp.clone()))
                .or_default();
            // An earlier sighting as far or further times these records already.
            if waiting.last().is_some_and(|w| w.offset >= c.offset) {
                continue;
            }
            if waiting.len() >= MAX_WAITING {
                waiting.pop();
            }
            waiting.push(Sighting {
                offset: c.offset,
                seen_at_ms: c.seen_at_ms,
            });
        }
    }

    /// Applies the waiting commits again, as far as the reading got.
    fn settle_waiting(&mut self) {
        let (tails, latency) = (&mut self.tails, &mut self.latency);
        self.waiting.retain(|(group, tp), sightings| {
            sightings.retain(|s| apply_commit(tails, latency, group, tp, *s) == Applied::Waits);
            !sightings.is_empty()
        });
    }

    /// Forgets deleted groups.
    pub fn forget_groups(&mut self, groups: &[String]) {
        for tail in self.tails.values_mut() {
            for g in groups {
                if tail.books.has_group(g) {
                    tail.books.forget_group(g);
                    tail.changed = true;
                }
            }
        }
        self.waiting.retain(|(g, _), _| !groups.contains(g));
        for topic in self.latency.values_mut() {
            topic.groups.retain(|g, _| !groups.contains(g));
        }
    }

    /// Per topic, how many records the reading is behind the log end.
    pub fn tail_lag(&self) -> BTreeMap<&str, i64> {
        let mut out: BTreeMap<&str, i64> = BTreeMap::new();
        for (tp, t) in &self.tails {
            let behind = match t.next {
                Some(next) if t.high_watermark >= 0 => (t.high_watermark - next).max(0),
                _ => 0,
            };
            *out.entry(tp.topic.as_str()).or_default() += behind;
        }
        out
    }

    /// One round: places the partitions read for the first time, then one Fetch per
    /// leader from every partition's position, the answers counted into the books, and
    /// the commits that waited for them applied.
    pub async fn round(&mut self, client: &Client) -> RoundReport {
        let mut report = RoundReport::default();
        self.place(client).await;
        let from: Vec<(TopicPartition, i64)> = self
            .tails
            .iter()
            .filter_map(|(tp, t)| t.next.map(|n| (tp.clone(), n)))
            .collect();
        if from.is_empty() {
            return report;
        }
        let (max_bytes, partition_max_bytes) = self.within_rate().await;
        let fetched = client
            .fetch_log(
                &from,
                Isolation::ReadCommitted,
                max_bytes,
                partition_max_bytes,
            )
            .await;
        let fetched_bytes: u64 = fetched.chunks.iter().map(|c| c.records.len() as u64).sum();
        self.rate_window.1 += fetched_bytes;
        report.unanswered = (fetched.leaderless.len()
            + fetched
                .failed
                .iter()
                .map(|(_, p, _)| p.len())
                .sum::<usize>()) as u64;
        for (leader, _, e) in &fetched.failed {
            debug!(%leader, "fetch for the books failed: {e}");
        }
        let mut chunks = fetched.chunks;
        self.reread_withheld_aborts(client, &mut chunks, partition_max_bytes)
            .await;
        let at = now_ms();
        for chunk in chunks {
            self.apply(chunk, at, &mut report);
        }
        self.settle_waiting();
        report
    }

    /// Kafka answers a read_committed Fetch with the batches of aborted transactions
    /// and the list that names them, and the reader drops them. Some brokers (noida-db)
    /// leave those batches out of the answer instead, so their records could not be
    /// counted as `aborted`. Where an answer names an aborted transaction whose first
    /// batch it does not hold, the partition is read again from the same offset with
    /// read_uncommitted, kept below the last stable offset (what is above it may still
    /// be open), and that answer is counted with the first answer's list.
    async fn reread_withheld_aborts(
        &mut self,
        client: &Client,
        chunks: &mut [LogChunk],
        partition_max_bytes: i32,
    ) {
        let withheld: Vec<usize> = (0..chunks.len())
            .filter(|&i| withholds_aborted_batches(&chunks[i]))
            .collect();
        if withheld.is_empty() {
            return;
        }
        let from: Vec<(TopicPartition, i64)> = withheld
            .iter()
            .map(|&i| (chunks[i].tp.clone(), chunks[i].offset))
            .collect();
        let again = client
            .fetch_log(
                &from,
                Isolation::ReadUncommitted,
                partition_max_bytes.saturating_mul(from.len() as i32),
                partition_max_bytes,
            )
            .await;
        self.rate_window.1 += again
            .chunks
            .iter()
            .map(|c| c.records.len() as u64)
            .sum::<u64>();
        for mut chunk in again.chunks {
            let Some(&i) = withheld
                .iter()
                .find(|&&i| chunks[i].tp == chunk.tp && chunks[i].offset == chunk.offset)
            else {
                continue;
            };
            if chunk.error.is_some() {
                continue;
            }
            let first = &mut chunks[i];
            let stable = match first.last_stable_offset {
                lso if lso >= 0 => lso,
                _ => answer_end(&first.records).unwrap_or(first.offset),
            };
            chunk.records = chunk
                .records
                .slice(..whole_batches_below(&chunk.records, stable));
            chunk.aborted = std::mem::take(&mut first.aborted);
            chunk.last_stable_offset = first.last_stable_offset;
            debug!(partition = %chunk.tp, from = chunk.offset, below = stable, "aborted batches were left out of the read_committed answer: read again read_uncommitted");
            chunks[i] = chunk;
        }
    }

    /// With `max_read_rate`: waits until the bytes fetched in the current second are
    /// within the rate, and gives the size limits of the next Fetch (at most one
    /// second's worth; brokers still send a partition's first batch whole).
    async fn within_rate(&mut self) -> (i32, i32) {
        let (max, per_partition) = (self.settings.max_bytes, self.settings.partition_max_bytes);
        let Some(rate) = self.settings.max_read_rate else {
            return (max, per_partition);
        };
        let (began, spent) = self.rate_window;
        let elapsed = began.elapsed();
        if elapsed >= Duration::from_secs(1) {
            // Carry over what the last second overspent.
            let over = spent.saturating_sub(rate);
            self.rate_window = (Instant::now(), over);
        }
        let (began, spent) = self.rate_window;
        if spent >= rate {
            let wait =
                Duration::from_secs_f64(spent as f64 / rate as f64).saturating_sub(began.elapsed());
            tokio::time::sleep(wait).await;
            self.rate_window = (Instant::now(), spent.saturating_sub(rate));
        }
        let cap = i32::try_from(rate).unwrap_or(i32::MAX).max(1);
        (max.min(cap), per_partition.min(cap))
    }

    /// Gives every partition read for the first time its start offset.
    async fn place(&mut self, client: &Client) {
        let unplaced: Vec<TopicPartition> = self
            .tails
            .iter()
            .filter(|(_, t)| t.next.is_none())
            .map(|(tp, _)| tp.clone())
            .collect();
        if unplaced.is_empty() {
            return;
        }
        let spec = match self.settings.start {
            StartAt::Earliest => tally_kafka::client::OffsetSpec::Earliest,
            StartAt::Latest => tally_kafka::client::OffsetSpec::Latest,
        };
        match client.list_offsets(&unplaced, spec).await {
            Ok(found) => {
                for (tp, offset) in found {
                    if let (Ok(offset), Some(t)) = (offset, self.tails.get_mut(&tp)) {
                        let offset = offset.max(0);
                        t.next = Some(offset);
                        t.books.retain_from(offset);
                        t.changed = true;
                    }
                }
            }
            Err(e) => debug!("cannot place the audited partitions: {e}"),
        }
    }

    /// Counts one partition's answer into its books.
    fn apply(&mut self, chunk: LogChunk, at_ms: i64, report: &mut RoundReport) {
        let width = self.width;
        let Some(tail) = self.tails.get_mut(&chunk.tp) else {
            return;
        };
        let mut read_latency = self.latency.get_mut(&chunk.tp.topic).map(|t| &mut t.broker);
        let Some(mut next) = tail.next else { return };
        if chunk.high_watermark >= 0 {
            tail.high_watermark = chunk.high_watermark;
        }
        if chunk.log_start_offset > tail.books.start() {
            // Retention: what a group had not reached below the new start expired.
            tail.books.retain_from(chunk.log_start_offset);
            tail.changed = true;
        }
        match chunk.error {
            None => {}
            Some(KafkaCode(1)) => {
                // OFFSET_OUT_OF_RANGE: below the log start after retention, the reading
                // moves to it. Above the end (a truncated log) it waits for the log to
                // reach it again, as a consumer would under `auto.offset.reset=none`.
                if chunk.log_start_offset > next {
                    warn!(partition = %chunk.tp, from = next, to = chunk.log_start_offset, "retention deleted records before they were read: reading on from the log start");
                    next = chunk.log_start_offset;
                    tail.next = Some(next);
                    tail.changed = true;
                }
                return;
            }
            Some(code) => {
                debug!(partition = %chunk.tp, "fetch for the books: {code}");
                return;
            }
        }
        let records = &chunk.records[..];
        let mut aborts = Aborts::new(Some(&chunk.aborted));
        let mut at = 0usize;
        let mut offsets: Vec<i64> = Vec::new();
        let mut stamps: Vec<i64> = Vec::new();
        while let Some(rest) = records.get(at..).filter(|r| !r.is_empty()) {
            let header = match BatchHeader::parse(rest) {
                Ok(h) => h,
                // A batch cut off before its header ends the answer.
                Err(_) if rest.len() < records::BATCH_OVERHEAD => break,
                Err(e) => {
                    warn!(partition = %chunk.tp, offset = next, "a batch the collector cannot read ends this answer: {e}");
                    report.unreadable += 1;
                    break;
                }
            };
            let Some(batch) = rest.get(..header.size()) else {
                // The size limits cut the last batch: it comes whole next round.
                break;
            };
            at += header.size();
            if header.next_offset() <= next {
                continue;
            }
            let kind = aborts.kind(header.attributes, header.last_offset(), header.producer_id);
            if kind == BatchKind::Control {
                // Transaction markers are not records.
                report.passed_over += 1;
                next = header.next_offset();
                continue;
            }
            offsets.clear();
            stamps.clear();
            let read = records::check_crc(batch, &header)
                .map_err(records::RecordsError::from)
                .and_then(|()| {
                    records::read_batch(batch, &header, |offset, ts| {
                        offsets.push(offset);
                        stamps.push(ts);
                    })
                });
            if let Err(e) = read {
                warn!(partition = %chunk.tp, batch = header.base_offset, "a batch that does not read is passed over: {e}");
                report.unreadable += 1;
                next = header.next_offset();
                continue;
            }
            let total = offsets.len() as u64;
            // A batch read in part (a start inside it) counts its bytes in part.
            let keep = offsets
                .iter()
                .position(|o| *o >= next)
                .unwrap_or(offsets.len());
            if kind == BatchKind::Aborted {
                // Not records of the `broker` tier: counted apart, in the bucket
                // each would have had, and a gap in the runs groups consume.
                count_aborted(&mut tail.books, width, &header, &stamps[keep..], at_ms);
                report.passed_over += 1;
                tail.changed = true;
                next = header.next_offset();
                continue;
            }
            let kept = total - keep as u64;
            let bytes = (header.size() as u64 * kept)
                .checked_div(total)
                .unwrap_or(0);
            let (times, no_ts) = times_of(&header, &stamps[keep..], at_ms);
            count(
                &mut tail.books,
                width,
                &offsets[keep..],
                &times,
                &no_ts,
                bytes,
            );
            if let Some(book) = read_latency.as_deref_mut() {
                book.record_timestamps(
                    at_ms,
                    times
                        .iter()
                        .zip(&no_ts)
                        .filter(|(_, no)| !**no)
                        .map(|(t, _)| t),
                );
            }
            report.records += kept;
            report.bytes += bytes;
            tail.changed = true;
            next = header.next_offset();
        }
        if Some(next) != tail.next {
            tail.next = Some(next);
            tail.changed = true;
        }
    }

    /// Hands the agent every cell that changed, and stores the changed books when due
    /// (`now`: at once).
    pub fn flush(&mut self, now: bool) {
        let mut counts = Vec::new();
        for (tp, tail) in &mut self.tails {
            for (tier, bucket) in tail.books.take_dirty() {
                counts.push(tail.books.count_entry(
                    self.width,
                    &tp.topic,
                    tp.partition,
                    tier,
                    bucket,
                ));
            }
        }
        if let Some(emitter) = &self.emitter {
            if !counts.is_empty() {
                emitter.record_counts(counts);
            }
            let latency = changed_latency(&mut self.latency);
            if !latency.is_empty() {
                emitter.record_latency(latency);
            }
            // What the agent no longer keeps need not be kept here either.
            if let Some(from) = emitter.accepts_from_ms() {
                for tail in self.tails.values_mut() {
                    if tail.books.prune_before(from) > 0 {
                        tail.changed = true;
                    }
                }
            }
        }
        let due = self
            .last_save
            .is_none_or(|at| at.elapsed() >= self.settings.save_every);
        if now || due {
            self.save();
        }
    }

    fn save(&mut self) {
        let mut wrote = false;
        for (tp, tail) in &mut self.tails {
            let Some(next) = tail.next else { continue };
            if !tail.changed {
                continue;
            }
            let path = state_path(&self.dir, tp);
            let stored = DurableTail {
                next,
                books: tail.books.whole_state(),
            };
            let written = serde_json::to_vec(&stored)
                .map_err(std::io::Error::other)
                .and_then(|bytes| {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    state_file::replace(&path, &bytes)
                });
            match written {
                Ok(()) => {
                    tail.changed = false;
                    wrote = true;
                }
                Err(e) => warn!(file = %path.display(), "cannot store the books of {tp}: {e}"),
            }
        }
        if wrote || self.last_save.is_some() {
            self.last_save = Some(Instant::now());
        }
    }
}

/// Whether a read_committed answer names an aborted transaction that begins at or after
/// the offset read from, below where the answer's batches end (the last stable offset
/// when it holds none), whose first batch the answer does not hold: the broker withheld the aborted
/// batches rather than send them for the reader to drop.
fn withholds_aborted_batches(chunk: &LogChunk) -> bool {
    if chunk.error.is_some() || chunk.aborted.is_empty() {
        return false;
    }
    let held = batch_headers(&chunk.records);
    // Kafka lists the aborted transactions of the range it answers with.
    let bound = held
        .last()
        .map_or(chunk.last_stable_offset, BatchHeader::next_offset);
    chunk.aborted.iter().any(|a| {
        a.first_offset >= chunk.offset
            && a.first_offset < bound
            && !held.iter().any(|h| {
                h.producer_id == a.producer_id
                    && h.base_offset <= a.first_offset
                    && a.first_offset < h.next_offset()
            })
    })
}

/// The headers of the whole batches of an answer, in order.
fn batch_headers(records: &[u8]) -> Vec<BatchHeader> {
    let mut headers = Vec::new();
    let mut at = 0usize;
    while let Some(rest) = records.get(at..).filter(|r| !r.is_empty()) {
        let Ok(h) = BatchHeader::parse(rest) else {
            break;
        };
        if rest.len() < h.size() {
            break;
        }
        at += h.size();
        headers.push(h);
    }
    headers
}

/// The offset after an answer's last whole batch.
fn answer_end(records: &[u8]) -> Option<i64> {
    batch_headers(records).last().map(BatchHeader::next_offset)
}

/// How many bytes of an answer are whole batches that end at or below `bound`.
fn whole_batches_below(records: &[u8], bound: i64) -> usize {
    batch_headers(records)
        .iter()
        .take_while(|h| h.next_offset() <= bound)
        .map(BatchHeader::size)
        .sum()
}

/// The time each record of a batch is bucketed by: its timestamp, or `at_ms` (the
/// read time) when it has none; and whether it had none.
fn times_of(header: &BatchHeader, stamps: &[i64], at_ms: i64) -> (Vec<i64>, Vec<bool>) {
    // A batch without timestamps says so in its max timestamp; LogAppendTime
    // batches give every record the append time (`read_batch` does).
    let none = !header.log_append_time() && header.max_timestamp < 0;
    stamps
        .iter()
        .map(|t| {
            let no = none || *t < 0;
            (if no { at_ms } else { *t }, no)
        })
        .unzip()
}

/// Counts the records of an aborted transaction's batch apart, by bucket.
fn count_aborted(
    books: &mut PartitionBooks,
    width: BucketWidth,
    header: &BatchHeader,
    stamps: &[i64],
    at_ms: i64,
) {
    let (times, _) = times_of(header, stamps, at_ms);
    let mut i = 0;
    while i < times.len() {
        let bucket = width.bucket_of(times[i]).start_ms();
        let mut j = i + 1;
        while j < times.len() && width.bucket_of(times[j]).start_ms() == bucket {
            j += 1;
        }
        books.count_aborted(bucket, (j - i) as u64);
        i = j;
    }
}

/// Counts the records of one batch (offsets as read, and the times of [`times_of`])
/// into `books`: runs of consecutive offsets, each record in the bucket of its time.
fn count(
    books: &mut PartitionBooks,
    width: BucketWidth,
    offsets: &[i64],
    times: &[i64],
    no_ts: &[bool],
    bytes: u64,
) {
    if offsets.is_empty() {
        return;
    }
    let buckets: Vec<i64> = times
        .iter()
        .map(|t| width.bucket_of(*t).start_ms())
        .collect();
    let total = offsets.len() as u64;
    // Compacted logs leave gaps between offsets: one append per consecutive run.
    let mut i = 0;
    while i < offsets.len() {
        let mut j = i + 1;
        while j < offsets.len() && offsets[j] == offsets[j - 1] + 1 {
            j += 1;
        }
        let share = bytes * (j - i) as u64 / total;
        books.append(
            offsets[i],
            &buckets[i..j],
            share,
            &no_ts[i..j],
            &times[i..j],
        );
        i = j;
    }
}

/// Applies one commit, seen at `seen.seen_at_ms`, to its partition's books, and records
/// the latency of the records it newly covers into its group's book.
fn apply_commit(
    tails: &mut BTreeMap<TopicPartition, Tail>,
    latency: &mut BTreeMap<String, TopicLatency>,
    group: &str,
    tp: &TopicPartition,
    seen: Sighting,
) -> Applied {
    let Some(tail) = tails.get_mut(tp) else {
        return Applied::Unknown;
    };
    // Until the partition has been read, its books cannot place the commit.
    let Some(next) = tail.next else {
        return Applied::Waits;
    };
    let known = tail.books.has_group(group);
    let covered = tail.books.commit(group, seen.offset, None);
    if covered.is_some() || !known {
        tail.changed = true;
    }
    if let (Some((from, to)), Some(topic)) = (covered, latency.get_mut(&tp.topic)) {
        if !topic.groups.contains_key(group) {
            topic
                .groups
                .insert(group.to_owned(), LatencyBook::default());
        }
        if let Some(book) = topic.groups.get_mut(group) {
            tail.books
                .latencies(from, to, seen.seen_at_ms, |ms, n| book.record(ms, n));
        }
    }
    if seen.offset > next {
        Applied::Waits
    } else {
        Applied::Done
    }
}

/// The wire histograms of every (topic, tier) whose latency changed since the last call.
fn changed_latency(latency: &mut BTreeMap<String, TopicLatency>) -> Vec<LatencyHistogram> {
    let mut out = Vec::new();
    for (topic, t) in latency {
        if t.broker.take_changed() {
            out.push(t.broker.wire(topic, &Tier::Broker));
        }
        for (group, book) in &mut t.groups {
            if book.take_changed() {
                out.push(book.wire(topic, &Tier::Group(group.clone())));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use tally_kafka::client::AbortedTransaction;

    const WIDTH_MS: u64 = 60_000;

    /// A batch of one record per timestamp (-1: none) at `base`, of `producer` in a
    /// transaction where `producer >= 0`.
    fn batch(base: i64, timestamps: &[i64], producer: i64) -> Vec<u8> {
        let records: Vec<Record> = timestamps
            .iter()
            .enumerate()
            .map(|(i, &timestamp)| Record {
                transactional: producer >= 0,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: producer,
                producer_epoch: if producer >= 0 { 0 } else { -1 },
                sequence: if producer >= 0 { i as i32 } else { -1 },
                timestamp_type: TimestampType::Creation,
                offset: base + i as i64,
                timestamp,
                key: None,
                value: Some(bytes::Bytes::from_static(b"v")),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    fn chunk(
        tp: &TopicPartition,
        from: i64,
        batches: &[Vec<u8>],
        aborted: &[(i64, i64)],
    ) -> LogChunk {
        LogChunk {
            tp: tp.clone(),
            offset: from,
            error: None,
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: 0,
            records: batches.concat().into(),
            aborted: aborted
                .iter()
                .map(|&(producer_id, first_offset)| AbortedTransaction {
                    producer_id,
                    first_offset,
                })
                .collect(),
        }
    }

    /// A Tailer auditing `orders` partition 0, read from offset 0.
    fn tailer(dir: &Path) -> (Tailer, TopicPartition) {
        let tp = TopicPartition::new("orders", 0);
        let width = BucketWidth::new(WIDTH_MS).unwrap();
        let mut t = Tailer::open(dir.to_owned(), width, TailSettings::default(), None).unwrap();
        t.audit(&BTreeSet::from([tp.clone()]));
        t.tails.get_mut(&tp).unwrap().next = Some(0);
        (t, tp)
    }

    fn commit(tp: &TopicPartition, group: &str, offset: i64, seen_at_ms: i64) -> Commit {
        Commit {
            group: group.into(),
            tp: tp.clone(),
            offset,
            seen_at_ms,
        }
    }

    fn histogram(t: &Tailer, tier: &Tier) -> LatencyHistogram {
        let topic = &t.latency["orders"];
        let book = match tier {
            Tier::Group(g) => &topic.groups[g],
            _ => &topic.broker,
        };
        book.wire("orders", tier)
    }

    /// The `broker` tier's latency is record timestamp → the round that read it, for
    /// records with a timestamp and outside aborted transactions; a group's is record
    /// timestamp → the poll that saw the commit covering it, also where the reading
    /// reached the records only after that poll.
    #[test]
    fn latency_is_recorded_at_the_read_and_at_the_poll_that_saw_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut t, tp) = tailer(dir.path());
        let mut report = RoundReport::default();
        let mut log_append = batch(7, &[1], -1);
        records::set_log_append_time(&mut log_append, 1_199_500);
        // Read at 1 200 000; each batch in runs of its own, so that the books time
        // every record exactly.
        let read = chunk(
            &tp,
            0,
            &[
                batch(0, &[1_150_000, 1_152_500, 1_155_000], -1),
                // No timestamps: counted, bucketed by the read, not timed.
                batch(3, &[-1, -1], -1),
                // An aborted transaction: not records of the `broker` tier.
                batch(5, &[1_199_000, 1_199_000], 42),
                log_append,
            ],
            &[(42, 5)],
        );
        t.apply(read, 1_200_000, &mut report);
        assert_eq!(report.records, 6);
        let broker = histogram(&t, &Tier::Broker);
        assert_eq!(
            (broker.count, broker.sum_ms),
            (4, 50_000 + 47_500 + 45_000 + 500),
            "{broker:?}"
        );

        // A poll at 1 210 000 sees billing at 3: its first commit covers 0..3.
        t.commit(&[commit(&tp, "billing", 3, 1_210_000)]);
        let billing = Tier::Group("billing".into());
        let h = histogram(&t, &billing);
        assert_eq!((h.count, h.sum_ms), (3, 60_000 + 57_500 + 55_000), "{h:?}");
        let sent = changed_latency(&mut t.latency);
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(changed_latency(&mut t.latency).is_empty());

        // A poll at 1 220 000 sees billing at 9, beyond what was read (8): it covers
        // 3..8 now (the records without a timestamp are timed from their read, as the
        // broker times them from their append; the aborted ones are none of the
        // group's) and waits for offset 8.
        t.commit(&[commit(&tp, "billing", 9, 1_220_000)]);
        let h = histogram(&t, &billing);
        assert_eq!(
            (h.count, h.sum_ms - 172_500),
            (6, 20_000 + 20_000 + 20_500),
            "{h:?}"
        );
        assert_eq!(t.waiting.len(), 1);
        // A later poll sees the same offset: the first sighting still times the records.
        t.commit(&[commit(&tp, "billing", 9, 1_290_000)]);
        assert_eq!(t.waiting.values().next().unwrap().len(), 1);

        // Offset 8 is read at 1 230 000 and timed from the poll at 1 220 000.
        t.apply(
            chunk(&tp, 8, &[batch(8, &[1_205_000], -1)], &[]),
            1_230_000,
            &mut report,
        );
        t.settle_waiting();
        assert!(t.waiting.is_empty());
        let h = histogram(&t, &billing);
        assert_eq!((h.count, h.sum_ms - 233_000), (7, 15_000), "{h:?}");
        let broker = histogram(&t, &Tier::Broker);
        assert_eq!((broker.count, broker.sum_ms - 143_000), (5, 25_000));
        let sent = changed_latency(&mut t.latency);
        assert_eq!(sent.len(), 2, "{sent:?}");

        // A deleted group's latency goes with its books.
        t.forget_groups(&["billing".into()]);
        assert!(t.latency["orders"].groups.is_empty());
    }

    /// A commit seen before its partition was placed waits for the reading, and one
    /// on a partition no longer audited is dropped with it.
    #[test]
    fn commits_wait_for_the_reading_and_go_with_their_partition() {
        let dir = tempfile::tempdir().unwrap();
        let (mut t, tp) = tailer(dir.path());
        t.tails.get_mut(&tp).unwrap().next = None;
        t.commit(&[commit(&tp, "billing", 2, 1_010_000)]);
        assert!(t.latency["orders"].groups.is_empty());
        t.tails.get_mut(&tp).unwrap().next = Some(0);
        let mut report = RoundReport::default();
        t.apply(
            chunk(
                &tp,
                0,
                &[batch(0, &[1_000_000, 1_000_000, 1_000_000], -1)],
                &[],
            ),
            1_050_000,
            &mut report,
        );
        t.settle_waiting();
        let h = histogram(&t, &Tier::Group("billing".into()));
        assert_eq!((h.count, h.sum_ms), (2, 20_000), "{h:?}");
        assert!(t.waiting.is_empty());

        t.commit(&[commit(&tp, "billing", 10, 1_060_000)]);
        assert_eq!(t.waiting.len(), 1);
        t.audit(&BTreeSet::new());
        assert!(t.waiting.is_empty() && t.latency.is_empty());
    }

    /// The first books are stored at the first flush that has any, not a `save_every`
    /// after the start: a collector killed within its first seconds resumes from them.
    #[test]
    fn the_first_books_are_stored_at_once_and_later_ones_at_most_every_save_every() {
        let dir = tempfile::tempdir().unwrap();
        let (mut t, tp) = tailer(dir.path());
        let path = state_path(dir.path(), &tp);
        t.flush(false);
        assert!(!path.exists(), "nothing changed yet");
        let mut report = RoundReport::default();
        t.apply(
            chunk(&tp, 0, &[batch(0, &[1_000], -1)], &[]),
            2_000,
            &mut report,
        );
        t.flush(false);
        assert!(path.exists());
        let first = std::fs::read(&path).unwrap();
        t.apply(
            chunk(&tp, 1, &[batch(1, &[1_001], -1)], &[]),
            2_000,
            &mut report,
        );
        t.flush(false);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            first,
            "stored again within save_every"
        );
        t.flush(true);
        assert_ne!(std::fs::read(&path).unwrap(), first);
    }
}
