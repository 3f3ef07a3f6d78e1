//! The collector's exact books (DESIGN.md §2, §9): every audited partition's records
//! read once, as a consumer reads them, each bucketed by its own timestamp into the same
//! [`PartitionBooks`] the instrumented broker keeps, and every watched group's
//! committed offsets judged over those books (the no-fetch rule: committing K says the
//! records below K were consumed).
//!
//! A [`Tailer`] fetches each audited partition from where it stopped, one Fetch per
//! leader per round, read_committed: control batches hold no records and batches of
//! aborted transactions are passed over. Records without a timestamp are bucketed by
//! the time they were read (`no_timestamp`). Retention moves the books' log start (what
//! a group had not reached by then expires), and `OFFSET_OUT_OF_RANGE` after retention
//! moves the reading to the new log start.
//!
//! Each partition's position and books are stored together, atomically, in
//! `<data-dir>/<cluster>/books/<topic>/<partition>.json`: after a kill -9 the reading
//! resumes at the stored position with the books that counted everything before it, so
//! nothing is counted twice and nothing is missed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tally_audit::BucketWidth;
use tally_audit::books::{PartitionBooks, WholeBooks};
use tally_audit::emitter::Emitter;
use tally_kafka::client::{
    Aborts, BatchKind, Client, Isolation, KafkaCode, LogChunk, TopicPartition,
};
use tally_kafka::records::{self, BatchHeader};
use tracing::{debug, warn};

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
    emitter: Option<Emitter>,
    last_save: Instant,
    /// For `max_read_rate`: when the current second of reading began and the bytes
    /// fetched since.
    rate_window: (Instant, u64),
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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
            emitter,
            last_save: Instant::now(),
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
    }

    /// Applies committed offsets to the books of the partitions they are on.
    pub fn commit(&mut self, commits: &[Commit]) {
        for c in commits {
            let Some(tail) = self.tails.get_mut(&c.tp) else {
                continue;
            };
            // Until the partition has been read, its books cannot place the commit.
            if tail.next.is_none() {
                continue;
            }
            let known = tail.books.has_group(&c.group);
            if tail.books.commit(&c.group, c.offset, None).is_some() || !known {
                tail.changed = true;
            }
        }
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
    /// leader from every partition's position, and the answers counted into the books.
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
        let at = now_ms();
        for chunk in fetched.chunks {
            self.apply(chunk, at, &mut report);
        }
        report
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
            if kind != BatchKind::Data {
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
            let kept = total - keep as u64;
            let bytes = (header.size() as u64 * kept)
                .checked_div(total)
                .unwrap_or(0);
            count(
                &mut tail.books,
                width,
                &header,
                &offsets[keep..],
                &stamps[keep..],
                bytes,
                at_ms,
            );
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
            // What the agent no longer keeps need not be kept here either.
            if let Some(from) = emitter.accepts_from_ms() {
                for tail in self.tails.values_mut() {
                    if tail.books.prune_before(from) > 0 {
                        tail.changed = true;
                    }
                }
            }
        }
        if now || self.last_save.elapsed() >= self.settings.save_every {
            self.save();
        }
    }

    fn save(&mut self) {
        self.last_save = Instant::now();
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
                Ok(()) => tail.changed = false,
                Err(e) => warn!(file = %path.display(), "cannot store the books of {tp}: {e}"),
            }
        }
    }
}

/// Counts the records of one batch (offsets and timestamps as read) into `books`:
/// runs of consecutive offsets, each record in the bucket of its timestamp, or of
/// `at_ms` (the read time) when it has none.
fn count(
    books: &mut PartitionBooks,
    width: BucketWidth,
    header: &BatchHeader,
    offsets: &[i64],
    stamps: &[i64],
    bytes: u64,
    at_ms: i64,
) {
    if offsets.is_empty() {
        return;
    }
    // A batch without timestamps says so in its max timestamp; LogAppendTime
    // batches give every record the append time (`read_batch` does).
    let none = !header.log_append_time() && header.max_timestamp < 0;
    let times: Vec<i64> = stamps
        .iter()
        .map(|t| if none || *t < 0 { at_ms } else { *t })
        .collect();
    let no_ts: Vec<bool> = stamps.iter().map(|t| none || *t < 0).collect();
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
