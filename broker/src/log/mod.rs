//! One partition's log on disk, laid out as Kafka lays it out: a folder of
//! segments named by their base offset (`00000000000000000000.log`), each
//! with a sparse offset index (`.index`) and a time index (`.timeindex`),
//! and a `start_offset` file that keeps the log start offset across restarts
//! once retention has moved it.

mod flush;
mod index;
mod segment;

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

pub use flush::{Flusher, FsyncPolicy, SyncHandle};
pub(crate) use index::replace_file;
use segment::{Scan, Segment};

use crate::batch::{self, BatchHeader};
use crate::{Error, Result};

const START_OFFSET_FILE: &str = "start_offset";

/// How a partition's log rolls and retains its segments (Kafka's topic
/// settings of the same names).
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// `segment.bytes`: a segment is rolled before it grows past this.
    pub segment_bytes: u64,
    /// `segment.ms`: a non-empty segment is rolled once this old.
    pub segment_ms: i64,
    /// `retention.ms`: segments whose newest timestamp is older are deleted;
    /// -1 keeps them forever.
    pub retention_ms: i64,
    /// `retention.bytes`: oldest segments are deleted while the log would
    /// stay at least this large without them; -1 for no limit.
    pub retention_bytes: i64,
    /// `index.interval.bytes`: bytes between offset index entries.
    pub index_interval_bytes: u32,
    /// `message.timestamp.type=LogAppendTime`: the broker stamps every batch
    /// with its append time.
    pub log_append_time: bool,
    /// `max.message.bytes`: the largest record batch a producer may send;
    /// `None` for the broker's frame limit only.
    pub max_message_bytes: Option<i64>,
}

impl Default for LogConfig {
    fn default() -> Self {
        const DAY_MS: i64 = 24 * 60 * 60 * 1000;
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            retention_ms: 7 * DAY_MS,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            log_append_time: false,
            max_message_bytes: None,
        }
    }
}

impl LogConfig {
    /// Refuses settings that cannot work, naming the value and the range.
    pub fn validate(&self) -> Result<()> {
        // Positions in the offset index are 32 bits, as in Kafka.
        let max_segment = i32::MAX as u64;
        if !(1..=max_segment).contains(&self.segment_bytes) {
            return Err(Error::Config(format!(
                "segment_bytes '{}' is out of range: accepted are 1 to {max_segment}",
                self.segment_bytes
            )));
        }
        if self.segment_ms < 1 {
            return Err(Error::Config(format!(
                "segment_ms '{}' is out of range: accepted are 1 and above",
                self.segment_ms
            )));
        }
        if self.retention_ms < -1 {
            return Err(Error::Config(format!(
                "retention_ms '{}' is out of range: accepted are -1 (forever) and 0 and above",
                self.retention_ms
            )));
        }
        if self.retention_bytes < -1 {
            return Err(Error::Config(format!(
                "retention_bytes '{}' is out of range: accepted are -1 (unlimited) and 0 and above",
                self.retention_bytes
            )));
        }
        Ok(())
    }
}

/// What [`PartitionLog::append`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record appended.
    pub base_offset: i64,
    /// Offset of the last record appended.
    pub last_offset: i64,
    /// The append time stamped on the batches, or -1 when the log keeps the
    /// producers' CreateTime (what Produce answers as `log_append_time_ms`).
    pub log_append_time: i64,
    /// The batches' headers as written: offsets assigned, CRCs updated.
    pub headers: Vec<BatchHeader>,
}

/// What watches one partition's log: the audit's books of the partition.
///
/// The log tells it of every append, every move of its start offset and its
/// deletion, from under the partition's lock, so it sees them in offset
/// order and no other partition waits on it.
pub trait LogObserver: Send + Sync + std::fmt::Debug {
    /// Batches were appended. `written` are their headers as stored (offsets
    /// assigned, LogAppendTime stamped); `records` the bytes as the producer
    /// sent them; `timestamps[i]` the record timestamps of batch `i` where
    /// the caller read them already (empty where not).
    fn appended(
        &self,
        written: &[BatchHeader],
        records: &[u8],
        timestamps: &[Vec<i64>],
        now_ms: i64,
    );

    /// The log start is about to move to `new_start` (retention); nothing is
    /// deleted yet. An error leaves the log as it was.
    fn start_moving(&self, new_start: i64) -> Result<()>;

    /// The partition's topic is being deleted.
    fn deleted(&self);
}

/// One partition's log. Not internally locked: the server keeps it in a
/// mutex; fsyncs can run outside that mutex through [`SyncHandle`]s.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    cfg: LogConfig,
    /// In offset order; never empty; the last is the active segment.
    segments: Vec<Segment>,
    start_offset: i64,
    /// Set when the partition's topic is deleted and its folder moved away:
    /// from then on nothing creates, rewrites or removes files by their old
    /// paths, where a topic created again under the same name keeps its own.
    retired: bool,
    /// The audit's books of this partition, when the broker keeps them.
    observer: Option<Arc<dyn LogObserver>>,
}

impl PartitionLog {
    /// Opens the log in `dir`, creating it if needed. After a crash this is
    /// where the log is repaired: the active segment is checked batch by
    /// batch and cut at a torn or corrupt tail, damaged or missing indexes
    /// are rebuilt, and segments that retention had already given up are
    /// removed.
    pub fn open(dir: &Path, cfg: LogConfig) -> Result<PartitionLog> {
        cfg.validate()?;
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: "create log folder",
            path: dir.to_path_buf(),
            source,
        })?;
        let now_ms = wall_clock_ms();
        let mut bases = segment_bases(dir)?;
        let persisted_start = read_start_offset(dir)?;

        // Retention persists the new start before deleting; finish the job.
        if let Some(start) = persisted_start {
            while bases.len() > 1 && bases[1] <= start {
                remove_segment_files(dir, bases.remove(0))?;
            }
        }

        let mut segments = Vec::with_capacity(bases.len());
        for (i, &base) in bases.iter().enumerate() {
            let segment = match bases.get(i + 1) {
                Some(&end) => Segment::open_sealed(dir, base, end, &cfg, now_ms)?,
                None => Segment::recover(dir, base, &cfg, now_ms)?,
            };
            segments.push(segment);
        }

        let start = persisted_start.unwrap_or(0);
        let data_end = segments.last().map(Segment::next_offset);
        if data_end.is_none_or(|end| end < start) {
            // Nothing left at or after the start offset: begin afresh there.
            for segment in segments.drain(..) {
                segment.delete()?;
            }
            segments.push(Segment::create(dir, start, &cfg)?);
            sync_dir(dir)?;
        }
        let first_base = segments.first().map_or(start, Segment::base);
        Ok(PartitionLog {
            dir: dir.to_path_buf(),
            cfg,
            segments,
            start_offset: start.max(first_base),
            retired: false,
            observer: None,
        })
    }

    /// Stops the log before its folder is moved away (its topic is being
    /// deleted): appends are refused, and rolls, retention and
    /// [`PartitionLog::delete`] do nothing. Reads still work on the open files.
    pub fn retire(&mut self) {
        self.retired = true;
        if let Some(observer) = self.observer.take() {
            observer.deleted();
        }
    }

    /// Makes `observer` the one told of this log's appends, start moves and
    /// deletion (replacing any before it).
    pub fn observe(&mut self, observer: Arc<dyn LogObserver>) {
        self.observer = Some(observer);
    }

    /// The folder holding the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's settings.
    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    /// Replaces the settings (after an `AlterConfigs`); they apply from the
    /// next append, roll or retention pass.
    pub fn set_config(&mut self, cfg: LogConfig) -> Result<()> {
        cfg.validate()?;
        self.cfg = cfg;
        Ok(())
    }

    /// Appends validated batches (one or more, as from a Produce request):
    /// assigns their offsets from the log end (rewriting base offsets), and
    /// stamps them with `now_ms` when the log uses LogAppendTime. All of them
    /// go to one segment, rolled first if they would not fit or it is due.
    /// Durability is a separate step: see [`Flusher::durable`].
    pub fn append(&mut self, records: &[u8], now_ms: i64) -> Result<Appended> {
        let headers = batch::validate_batches(records)?;
        self.append_checked(records, &headers, now_ms)
    }

    /// [`PartitionLog::append`] for batches the caller already validated:
    /// `headers` must be what [`batch::validate_batches`] returned for these
    /// very bytes (the produce path validates once, before it takes the lock).
    ///
    /// The caller's bytes are not copied: each batch goes to the segment
    /// behind its new base offset in one vectored write. Only a LogAppendTime
    /// log, which changes timestamps and so the CRC, stamps a copy.
    pub fn append_checked(
        &mut self,
        records: &[u8],
        headers: &[BatchHeader],
        now_ms: i64,
    ) -> Result<Appended> {
        self.append_read(records, headers, &[], now_ms)
    }

    /// [`PartitionLog::append_checked`] for batches whose record timestamps
    /// the caller read while validating them (`timestamps[i]` those of
    /// batch `i`), which the observer then need not read again.
    pub fn append_read(
        &mut self,
        records: &[u8],
        headers: &[BatchHeader],
        timestamps: &[Vec<i64>],
        now_ms: i64,
    ) -> Result<Appended> {
        if self.retired {
            return Err(Error::Io {
                what: "append to a partition of a deleted topic",
                path: self.dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "the topic was deleted"),
            });
        }
        let total = records.len() as u64;
        let count: i64 = headers.iter().map(|h| i64::from(h.record_count)).sum();
        self.roll_for(total, count, now_ms)?;

        let base_offset = self.end_offset();
        let mut next = base_offset;
        let mut written = Vec::with_capacity(headers.len());
        if self.cfg.log_append_time {
            let mut stamped = records.to_vec();
            let mut at = 0;
            for header in headers {
                let bytes = &mut stamped[at..at + header.size()];
                batch::set_base_offset(bytes, next);
                batch::set_log_append_time(bytes, now_ms);
                let header = BatchHeader::parse(bytes)?;
                next = header.next_offset();
                at += header.size();
                written.push(header);
            }
            self.active_mut()
                .append(&[IoSlice::new(&stamped)], &written, now_ms)?;
        } else {
            let mut offsets = Vec::with_capacity(headers.len());
            for header in headers {
                let header = BatchHeader {
                    base_offset: next,
                    ..*header
                };
                next = header.next_offset();
                offsets.push(header.base_offset.to_be_bytes());
                written.push(header);
            }
            let mut parts = Vec::with_capacity(2 * headers.len());
            let mut at = 0;
            for (header, offset) in headers.iter().zip(&offsets) {
                parts.push(IoSlice::new(offset));
                parts.push(IoSlice::new(
                    &records[at + offset.len()..at + header.size()],
                ));
                at += header.size();
            }
            self.active_mut().append(&parts, &written, now_ms)?;
        }
        if let Some(observer) = &self.observer {
            observer.appended(&written, records, timestamps, now_ms);
        }
        Ok(Appended {
            base_offset,
            last_offset: next - 1,
            log_append_time: if self.cfg.log_append_time { now_ms } else { -1 },
            headers: written,
        })
    }

    /// Rolls before an append of `bytes` holding `records` if the active
    /// segment is non-empty and would overflow (bytes, or the 32-bit relative
    /// offsets and positions of its indexes), or is due by time.
    fn roll_for(&mut self, bytes: u64, records: i64, now_ms: i64) -> Result<()> {
        let active = self.active();
        if active.is_empty() {
            return Ok(());
        }
        let grown = active.size() + bytes;
        let last_relative = active.next_offset() + records - 1 - active.base();
        if grown > self.cfg.segment_bytes
            || grown > u64::from(u32::MAX)
            || last_relative > i64::from(u32::MAX)
            || active.roll_due(now_ms, self.cfg.segment_ms)
        {
            self.roll()?;
        }
        Ok(())
    }

    /// Rolls the active segment if it is non-empty and older than
    /// `segment_ms`; true if it did. Lets retention reach an idle topic's
    /// data, since retention never deletes the active segment.
    pub fn roll_if_due(&mut self, now_ms: i64) -> Result<bool> {
        if !self.retired && self.active().roll_due(now_ms, self.cfg.segment_ms) {
            self.roll()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn roll(&mut self) -> Result<()> {
        let base = self.end_offset();
        self.active_mut().seal()?;
        let segment = Segment::create(&self.dir, base, &self.cfg)?;
        self.segments.push(segment);
        sync_dir(&self.dir)
    }

    /// Whole batches from the one holding `offset`, up to `max_bytes`, but
    /// always at least one batch even if it is larger (Kafka's semantics).
    /// Stops at the end of a segment; empty at the log end; an
    /// [`Error::OffsetOutOfRange`] outside `[start_offset, end_offset]`.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes> {
        self.check_range(offset)?;
        match self.locate(offset)? {
            Some((segment, position, _)) => self.segments[segment].read(position, max_bytes),
            None => Ok(Bytes::new()),
        }
    }

    /// The segment index, position and header of the batch holding `offset`
    /// (or the first batch after it).
    fn locate(&self, offset: i64) -> Result<Option<(usize, u64, BatchHeader)>> {
        let first = self
            .segments
            .partition_point(|s| s.base() <= offset)
            .saturating_sub(1);
        for (i, segment) in self.segments.iter().enumerate().skip(first) {
            if let Some((position, header)) = segment.locate(offset)? {
                return Ok(Some((i, position, header)));
            }
        }
        Ok(None)
    }

    fn check_range(&self, offset: i64) -> Result<()> {
        if offset < self.start_offset || offset > self.end_offset() {
            return Err(Error::OffsetOutOfRange {
                offset,
                start: self.start_offset,
                end: self.end_offset(),
            });
        }
        Ok(())
    }

    /// The log start offset: the first offset retention has kept.
    pub fn start_offset(&self) -> i64 {
        self.start_offset
    }

    /// The log end offset: the offset the next record will get.
    pub fn end_offset(&self) -> i64 {
        self.active().next_offset()
    }

    /// Bytes of all segments' log files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::size).sum()
    }

    /// `(offset, timestamp)` of the earliest record whose timestamp is at
    /// least `timestamp`, as ListOffsets answers a timestamp query; `None`
    /// when there is none. The time index finds the batch, and the batch's
    /// records give the exact record. (Offset first, unlike
    /// [`PartitionLog::max_timestamp`].)
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Option<(i64, i64)> {
        match self.find_timestamp(timestamp) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "offset lookup by timestamp failed");
                None
            }
        }
    }

    fn find_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        for segment in &self.segments {
            let Some((position, header)) = segment.locate_timestamp(timestamp)? else {
                continue;
            };
            let raw = segment.read_exact(position, header.size())?;
            let exact = batch::record_offsets_and_timestamps(&raw)
                .ok()
                .and_then(|records| {
                    records
                        .into_iter()
                        .find(|&(offset, ts)| ts >= timestamp && offset >= self.start_offset)
                });
            return Ok(Some(exact.unwrap_or((
                header.base_offset.max(self.start_offset),
                header.max_timestamp,
            ))));
        }
        Ok(None)
    }

    /// `(timestamp, offset)` of the record with the largest timestamp (the
    /// earliest such record on ties), for ListOffsets `MAX_TIMESTAMP`; `None`
    /// when no record has a timestamp.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let mut best: Option<(&Segment, i64, i64)> = None;
        for segment in &self.segments {
            let (ts, batch_offset) = segment.max_timestamp();
            if ts >= 0 && best.is_none_or(|(_, best_ts, _)| ts > best_ts) {
                best = Some((segment, ts, batch_offset));
            }
        }
        let (segment, ts, batch_offset) = best?;
        let exact = segment
            .locate(batch_offset)
            .ok()
            .flatten()
            .and_then(|(position, header)| segment.read_exact(position, header.size()).ok())
            .and_then(|raw| batch::record_offsets_and_timestamps(&raw).ok())
            .and_then(|records| records.into_iter().find(|&(_, t)| t == ts))
            .map_or(batch_offset, |(offset, _)| offset);
        Some((ts, exact))
    }

    /// Deletes whole segments, oldest first and never the active one, while
    /// the oldest is past `retention_ms` (by its newest timestamp) or the log
    /// would stay at least `retention_bytes` without it. The new start
    /// offset is persisted before any file goes, so a restart cannot bring
    /// deleted records back. Returns the new start offset if it moved.
    ///
    /// The observer hears of the new start before anything is deleted; an
    /// error from it leaves the log as it was.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<Option<i64>> {
        if self.retired {
            return Ok(None);
        }
        let sealed = self.segments.len() - 1;
        let mut doomed = 0;
        if self.cfg.retention_ms >= 0 {
            while doomed < sealed
                && now_ms.saturating_sub(self.segments[doomed].retention_timestamp()?)
                    > self.cfg.retention_ms
            {
                doomed += 1;
            }
        }
        if self.cfg.retention_bytes >= 0 {
            let limit = self.cfg.retention_bytes as u64;
            let mut size: u64 = self.segments[doomed..].iter().map(Segment::size).sum();
            while doomed < sealed && size - self.segments[doomed].size() >= limit {
                size -= self.segments[doomed].size();
                doomed += 1;
            }
        }
        if doomed == 0 {
            return Ok(None);
        }
        let new_start = self.segments[doomed].base().max(self.start_offset);
        if let Some(observer) = &self.observer {
            observer.start_moving(new_start)?;
        }
        write_start_offset(&self.dir, new_start)?;
        self.start_offset = new_start;
        for segment in self.segments.drain(..doomed) {
            segment.delete()?;
        }
        Ok(Some(new_start))
    }

    /// Moves the log start offset to `offset` (DeleteRecords; -1: the end,
    /// deleting every record): readers lose the records before it at once,
    /// and the sealed segments wholly below it are deleted. As in
    /// [`PartitionLog::enforce_retention`], the observer hears first and the
    /// new start is persisted before any file goes. An offset at or before
    /// the start changes nothing; one past the end is
    /// [`Error::OffsetOutOfRange`]. Returns the start offset after.
    pub fn delete_records(&mut self, offset: i64) -> Result<i64> {
        let end = self.end_offset();
        let offset = if offset == -1 { end } else { offset };
        if offset < 0 || offset > end {
            return Err(Error::OffsetOutOfRange {
                offset,
                start: self.start_offset,
                end,
            });
        }
        if self.retired || offset <= self.start_offset {
            return Ok(self.start_offset);
        }
        if let Some(observer) = &self.observer {
            observer.start_moving(offset)?;
        }
        write_start_offset(&self.dir, offset)?;
        self.start_offset = offset;
        let sealed = self.segments.len() - 1;
        let doomed = (0..sealed)
            .take_while(|&i| self.segments[i + 1].base() <= offset)
            .count();
        for segment in self.segments.drain(..doomed) {
            segment.delete()?;
        }
        Ok(offset)
    }

    /// Headers of the batches holding `from` and after, in offset order
    /// (from the start when `from` is before it; empty past the end).
    pub fn batches(&self, from: i64) -> Result<Vec<BatchHeader>> {
        let from = from.max(self.start_offset);
        let mut headers = Vec::new();
        let Some((first, position, _)) = self.locate(from)? else {
            return Ok(headers);
        };
        for (i, segment) in self.segments.iter().enumerate().skip(first) {
            let mut cursor = segment.cursor(if i == first { position } else { 0 });
            loop {
                match cursor.next(false)? {
                    Scan::Batch { header, .. } => headers.push(header),
                    Scan::End => break,
                    Scan::Invalid { position, reason } => {
                        return Err(Error::InvalidBatch(format!(
                            "segment {} at byte {position}: {reason}",
                            segment.base()
                        )));
                    }
                }
            }
        }
        Ok(headers)
    }

    /// The raw batch holding `offset` (the one starting there, given a base
    /// offset from [`PartitionLog::batches`]).
    pub fn read_batch(&self, offset: i64) -> Result<Bytes> {
        if offset >= self.end_offset() {
            return Err(Error::OffsetOutOfRange {
                offset,
                start: self.start_offset,
                end: self.end_offset(),
            });
        }
        self.check_range(offset)?;
        match self.locate(offset)? {
            Some((segment, position, header)) => {
                self.segments[segment].read_exact(position, header.size())
            }
            None => Err(Error::OffsetOutOfRange {
                offset,
                start: self.start_offset,
                end: self.end_offset(),
            }),
        }
    }

    /// A handle that fsyncs the active segment without this log's lock; take
    /// it after an append, and hand it to [`Flusher::durable`].
    pub fn sync_handle(&self) -> SyncHandle {
        SyncHandle::new(self.active().log_file().clone())
    }

    /// Fsyncs the active segment's log and indexes (sealed segments were
    /// fsynced when they were rolled).
    pub fn flush(&mut self) -> Result<()> {
        self.active().flush()
    }

    /// Deletes the whole log and its folder.
    pub fn delete(self) -> Result<()> {
        if self.retired {
            return Ok(());
        }
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
            what: "delete log folder",
            path: dir,
            source,
        })
    }

    fn active(&self) -> &Segment {
        // `segments` is never empty: open creates one and retention spares
        // the last.
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }
}

/// Base offsets of the segments in `dir`, ascending; removes leftovers of
/// interrupted writes and indexes whose log is gone.
fn segment_bases(dir: &Path) -> Result<Vec<i64>> {
    let io = |source| Error::Io {
        what: "list log folder",
        path: dir.to_path_buf(),
        source,
    };
    let mut bases = Vec::new();
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".tmp") {
            orphans.push(path);
            continue;
        }
        let Some((stem, extension)) = name.split_once('.') else {
            continue;
        };
        let Ok(base) = stem.parse::<i64>() else {
            continue;
        };
        match extension {
            "log" => bases.push(base),
            "index" | "timeindex" if !segment::log_path(dir, base).exists() => orphans.push(path),
            _ => {}
        }
    }
    for path in orphans {
        std::fs::remove_file(&path).map_err(|source| Error::Io {
            what: "remove leftover",
            path: path.clone(),
            source,
        })?;
    }
    bases.sort_unstable();
    Ok(bases)
}

fn remove_segment_files(dir: &Path, base: i64) -> Result<()> {
    for extension in ["log", "index", "timeindex"] {
        let path = dir.join(format!("{base:020}.{extension}"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "delete",
                    path,
                    source,
                });
            }
        }
    }
    Ok(())
}

fn read_start_offset(dir: &Path) -> Result<Option<i64>> {
    let path = dir.join(START_OFFSET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<i64>() {
            Ok(offset) if offset >= 0 => Ok(Some(offset)),
            _ => {
                // Written atomically, so this is damage from outside; the
                // segments still bound the log.
                tracing::warn!(path = %path.display(), content = %text.trim(), "ignoring an unreadable log start offset");
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            what: "read",
            path,
            source,
        }),
    }
}

fn write_start_offset(dir: &Path, offset: i64) -> Result<()> {
    index::replace_file(
        &dir.join(START_OFFSET_FILE),
        format!("{offset}\n").as_bytes(),
    )?;
    sync_dir(dir)
}

/// Makes created, renamed and deleted names in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            what: "fsync folder",
            path: dir.to_path_buf(),
            source,
        })
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
