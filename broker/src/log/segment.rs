//! One segment of a partition's log: a `.log` file of whole record batches
//! named by the segment's base offset, with its `.index` and `.timeindex`.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;

use super::LogConfig;
use super::index::{
    IndexCadence, NO_TIMESTAMP, OffsetEntry, OffsetIndex, SegmentBounds, TimeEntry, TimeIndex,
};
use crate::batch::{self, BATCH_OVERHEAD, BatchHeader};
use crate::{Error, Result};

/// Bytes read at a time when walking a segment's batches.
const SCAN_CHUNK: usize = 64 * 1024;
/// The base offset and batch length fields that precede a batch's length.
const LENGTH_PREFIX: usize = 12;

pub(crate) fn log_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

fn time_index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.timeindex"))
}

/// A segment's log file, shared with [`super::SyncHandle`]s so that a flusher
/// can fsync it without the log's lock. `written` is the bytes appended so
/// far and `synced` the bytes known to be on disk.
#[derive(Debug)]
pub(crate) struct LogFile {
    file: File,
    path: PathBuf,
    written: AtomicU64,
    synced: AtomicU64,
    /// After a failed fsync the kernel may have dropped the dirty pages and
    /// a later fsync may succeed without them, so the file never again
    /// reports itself durable.
    failed: AtomicBool,
}

impl LogFile {
    fn new(file: File, path: PathBuf, size: u64) -> Self {
        LogFile {
            file,
            path,
            written: AtomicU64::new(size),
            synced: AtomicU64::new(size),
            failed: AtomicBool::new(false),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// An error once an fsync of this file has failed.
    pub(crate) fn check_healthy(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            Err(Error::Io {
                what: "fsync",
                path: self.path.clone(),
                source: std::io::Error::other(
                    "an earlier fsync failed, so appended records may not be on disk",
                ),
            })
        } else {
            Ok(())
        }
    }

    /// Whether everything appended so far is known to be on disk.
    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) >= self.written.load(Ordering::Acquire)
    }

    /// Fsyncs the file if anything was appended since the last fsync;
    /// true if it did.
    pub(crate) fn sync(&self) -> Result<bool> {
        self.check_healthy()?;
        // Read before the fsync: whatever was written by now is covered by it.
        let target = self.written.load(Ordering::Acquire);
        if self.synced.load(Ordering::Acquire) >= target {
            return Ok(false);
        }
        match self.file.sync_data() {
            Ok(()) => {
                self.synced.fetch_max(target, Ordering::AcqRel);
                Ok(true)
            }
            Err(source) => {
                self.failed.store(true, Ordering::Release);
                Err(Error::Io {
                    what: "fsync",
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, position)
            .map_err(|source| Error::Io {
                what: "read",
                path: self.path.clone(),
                source,
            })
    }
}

/// What the bytes at the cursor hold.
#[derive(Debug)]
pub(crate) enum Scan {
    /// A batch at `position`.
    Batch { position: u64, header: BatchHeader },
    /// The cursor reached the end exactly.
    End,
    /// The bytes at `position` are not a (whole, valid) batch.
    Invalid { position: u64, reason: String },
}

/// Walks a segment's batches in order, reading the file in chunks so that
/// small batches cost no syscall each and large ones are skipped unread.
pub(crate) struct BatchCursor<'a> {
    log: &'a LogFile,
    position: u64,
    end: u64,
    buf: Vec<u8>,
    buf_at: u64,
}

impl<'a> BatchCursor<'a> {
    fn new(log: &'a LogFile, position: u64, end: u64) -> Self {
        BatchCursor {
            log,
            position,
            end,
            buf: Vec::new(),
            buf_at: 0,
        }
    }

    /// `len` bytes at `at`, which the caller has checked lie before `end`.
    fn window(&mut self, at: u64, len: usize) -> Result<&[u8]> {
        let cached = at >= self.buf_at && at + len as u64 <= self.buf_at + self.buf.len() as u64;
        if !cached {
            let remaining = usize::try_from(self.end - at).unwrap_or(usize::MAX);
            let read = len.max(SCAN_CHUNK.min(remaining));
            self.buf.clear();
            self.buf.resize(read, 0);
            self.log.read_exact_at(&mut self.buf, at)?;
            self.buf_at = at;
        }
        let from = usize::try_from(at - self.buf_at).unwrap_or(0);
        Ok(&self.buf[from..from + len])
    }

    /// The next batch; with `verify`, its CRC and counts are checked too.
    pub(crate) fn next(&mut self, verify: bool) -> Result<Scan> {
        let position = self.position;
        let left = self.end - position;
        if left == 0 {
            return Ok(Scan::End);
        }
        if left < BATCH_OVERHEAD as u64 {
            return Ok(Scan::Invalid {
                position,
                reason: format!("{left} bytes remain, fewer than a batch header"),
            });
        }
        let header = match BatchHeader::parse(self.window(position, BATCH_OVERHEAD)?) {
            Ok(header) => header,
            Err(e) => {
                return Ok(Scan::Invalid {
                    position,
                    reason: e.to_string(),
                });
            }
        };
        let size = header.size() as u64;
        if size > left {
            return Ok(Scan::Invalid {
                position,
                reason: format!("a batch of {size} bytes runs past the {left} bytes that remain"),
            });
        }
        if verify {
            let whole = self.window(position, header.size())?;
            let checked = batch::check_crc(whole, &header)
                .and_then(|()| batch::check_counts(&header))
                .and_then(|()| header.compression().map(|_| ()));
            if let Err(e) = checked {
                return Ok(Scan::Invalid {
                    position,
                    reason: e.to_string(),
                });
            }
        }
        self.position += size;
        Ok(Scan::Batch { position, header })
    }
}

/// One segment: its files, its size and offsets, its indexes.
pub(crate) struct Segment {
    base: i64,
    log: Arc<LogFile>,
    size: u64,
    next_offset: i64,
    offsets: OffsetIndex,
    times: TimeIndex,
    cadence: IndexCadence,
    /// When the segment is due to be rolled by time, counted from here: its
    /// first append (Kafka uses its first timestamp).
    roll_from_ms: Option<i64>,
}

impl Segment {
    /// Creates an empty segment starting at `base`.
    pub(crate) fn create(dir: &Path, base: i64, cfg: &LogConfig) -> Result<Self> {
        let path = log_path(dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|source| Error::Io {
                what: "create segment",
                path: path.clone(),
                source,
            })?;
        let offsets = OffsetIndex::rebuild(&index_path(dir, base), Vec::new())?;
        let times = TimeIndex::rebuild(&time_index_path(dir, base), Vec::new())?;
        Ok(Segment {
            base,
            log: Arc::new(LogFile::new(file, path, 0)),
            size: 0,
            next_offset: base,
            offsets,
            times,
            cadence: IndexCadence::new(cfg.index_interval_bytes, None, base),
            roll_from_ms: None,
        })
    }

    /// Opens the active (last) segment after a restart: checks every batch
    /// (length, CRC, counts, contiguous offsets), truncates the log at the
    /// first one that fails (a torn or corrupt tail), and rebuilds both
    /// indexes from what remains.
    pub(crate) fn recover(dir: &Path, base: i64, cfg: &LogConfig, now_ms: i64) -> Result<Self> {
        let log = open_log(dir, base)?;
        let mut segment = Self::rebuild_from_log(dir, base, log, cfg)?;
        // Kafka rolls by the segment's first timestamp; an unusable one (none,
        // or from the future) counts from now.
        segment.roll_from_ms = match segment.first_header()? {
            Some(h) if (0..=now_ms).contains(&h.max_timestamp) => Some(h.max_timestamp),
            Some(_) => Some(now_ms),
            None => None,
        };
        Ok(segment)
    }

    /// Opens a sealed segment whose successor starts at `end_offset`. Its
    /// indexes are trusted only after they pass their checks and the last
    /// offset index entry leads, batch by batch, exactly to the end of the
    /// file; otherwise the segment is recovered like an active one.
    pub(crate) fn open_sealed(
        dir: &Path,
        base: i64,
        end_offset: i64,
        cfg: &LogConfig,
        now_ms: i64,
    ) -> Result<Self> {
        let log = open_log(dir, base)?;
        let bounds = SegmentBounds {
            log_bytes: log.written.load(Ordering::Acquire),
            relative_end: u64::try_from(end_offset - base).unwrap_or(0),
        };
        let offsets = OffsetIndex::load(&index_path(dir, base), bounds)?;
        let times = TimeIndex::load(&time_index_path(dir, base), bounds)?;
        let (offsets, times) = match (offsets, times) {
            (Ok(offsets), Ok(times)) => (offsets, times),
            (Err(why), _) => {
                tracing::warn!(segment = %log.path.display(), "rebuilding the offset index: {why}");
                return Self::recover(dir, base, cfg, now_ms);
            }
            (_, Err(why)) => {
                tracing::warn!(segment = %log.path.display(), "rebuilding the time index: {why}");
                return Self::recover(dir, base, cfg, now_ms);
            }
        };
        match Self::check_tail(&log, base, &offsets, &times, bounds.log_bytes)? {
            Ok(next_offset) => {
                let size = bounds.log_bytes;
                let last_time = times.last().copied();
                Ok(Segment {
                    base,
                    log: Arc::new(log),
                    size,
                    next_offset,
                    offsets: OffsetIndex::open(&index_path(dir, base), offsets)?,
                    times: TimeIndex::open(&time_index_path(dir, base), times)?,
                    cadence: IndexCadence::new(cfg.index_interval_bytes, last_time, base),
                    roll_from_ms: None,
                })
            }
            Err(why) => {
                tracing::warn!(segment = %log.path.display(), "recovering a sealed segment: {why}");
                Self::recover(dir, base, cfg, now_ms)
            }
        }
    }

    /// Walks from the last offset index entry to the end of the file; returns
    /// the segment's next offset, or why the indexes or the tail are wrong.
    fn check_tail(
        log: &LogFile,
        base: i64,
        offsets: &[OffsetEntry],
        times: &[TimeEntry],
        size: u64,
    ) -> Result<std::result::Result<i64, String>> {
        let (start, mut expected) = match offsets.last() {
            Some(e) => (
                u64::from(e.position),
                Some(base + i64::from(e.relative_offset)),
            ),
            None => (0, Some(base)),
        };
        let mut cursor = BatchCursor::new(log, start, size);
        let mut next_offset = base;
        let mut previous_end = None;
        let mut tail_max = NO_TIMESTAMP;
        loop {
            match cursor.next(false)? {
                Scan::Batch { header, .. } => {
                    match expected.take() {
                        Some(expected) if header.base_offset != expected => {
                            return Ok(Err(format!(
                                "the last index entry points at offset {} instead of {expected}",
                                header.base_offset
                            )));
                        }
                        _ => {}
                    }
                    if previous_end.is_some_and(|end| end != header.base_offset) {
                        return Ok(Err(format!(
                            "offset {} does not follow {next_offset}",
                            header.base_offset
                        )));
                    }
                    next_offset = header.next_offset();
                    previous_end = Some(next_offset);
                    tail_max = tail_max.max(header.max_timestamp);
                }
                Scan::End => break,
                Scan::Invalid { position, reason } => {
                    return Ok(Err(format!("byte {position}: {reason}")));
                }
            }
        }
        let indexed_max = times.last().map_or(NO_TIMESTAMP, |e| e.timestamp);
        if tail_max > indexed_max {
            return Ok(Err(format!(
                "timestamp {tail_max} is above the time index's last {indexed_max}"
            )));
        }
        if let Some(last) = times.last() {
            let batch_offset = base + i64::from(last.relative_offset);
            let before =
                offsets.partition_point(|e| base + i64::from(e.relative_offset) <= batch_offset);
            let start = before
                .checked_sub(1)
                .map_or(0, |i| u64::from(offsets[i].position));
            let mut cursor = BatchCursor::new(log, start, size);
            let matched = loop {
                match cursor.next(false)? {
                    Scan::Batch { header, .. } if header.base_offset < batch_offset => {}
                    Scan::Batch { header, .. } => {
                        break header.base_offset == batch_offset
                            && header.max_timestamp == last.timestamp;
                    }
                    Scan::End | Scan::Invalid { .. } => break false,
                }
            };
            if !matched {
                return Ok(Err(format!(
                    "the time index's last entry ({}, offset {batch_offset}) matches no batch",
                    last.timestamp
                )));
            }
        }
        Ok(Ok(next_offset))
    }

    /// Scans the whole log (checking every batch), truncates it at the first
    /// invalid one, and writes fresh indexes.
    fn rebuild_from_log(dir: &Path, base: i64, log: LogFile, cfg: &LogConfig) -> Result<Self> {
        let file_size = log.written.load(Ordering::Acquire);
        let mut cadence = IndexCadence::new(cfg.index_interval_bytes, None, base);
        let mut offset_entries = Vec::new();
        let mut time_entries = Vec::new();
        let mut next_offset = base;
        let mut size = 0;
        let mut cursor = BatchCursor::new(&log, 0, file_size);
        loop {
            match cursor.next(true)? {
                Scan::Batch { position, header } => {
                    if header.base_offset != next_offset {
                        tracing::warn!(
                            segment = %log.path.display(),
                            "truncating at byte {position}: offset {} where {next_offset} was expected",
                            header.base_offset
                        );
                        break;
                    }
                    let (offset_entry, time_entry) = cadence.observe(base, position, &header);
                    offset_entries.extend(offset_entry);
                    time_entries.extend(time_entry);
                    next_offset = header.next_offset();
                    size = position + header.size() as u64;
                }
                Scan::End => break,
                Scan::Invalid { position, reason } => {
                    tracing::warn!(segment = %log.path.display(), "truncating at byte {position}: {reason}");
                    break;
                }
            }
        }
        time_entries.extend(cadence.time_entry(base));
        if size < file_size {
            log.file.set_len(size).map_err(|source| Error::Io {
                what: "truncate",
                path: log.path.clone(),
                source,
            })?;
            log.file.sync_all().map_err(|source| Error::Io {
                what: "fsync",
                path: log.path.clone(),
                source,
            })?;
            log.written.store(size, Ordering::Release);
            log.synced.store(size, Ordering::Release);
        }
        Ok(Segment {
            base,
            log: Arc::new(log),
            size,
            next_offset,
            offsets: OffsetIndex::rebuild(&index_path(dir, base), offset_entries)?,
            times: TimeIndex::rebuild(&time_index_path(dir, base), time_entries)?,
            cadence,
            roll_from_ms: None,
        })
    }

    pub(crate) fn base(&self) -> i64 {
        self.base
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub(crate) fn log_file(&self) -> &Arc<LogFile> {
        &self.log
    }

    /// The segment's largest batch max timestamp and the base offset of the
    /// batch holding it; `NO_TIMESTAMP` when no batch has a timestamp.
    pub(crate) fn max_timestamp(&self) -> (i64, i64) {
        (
            self.cadence.max_timestamp,
            self.cadence.max_timestamp_offset,
        )
    }

    /// Whether the segment is due to be rolled by time at `now_ms`.
    pub(crate) fn roll_due(&self, now_ms: i64, segment_ms: i64) -> bool {
        self.roll_from_ms
            .is_some_and(|from| !self.is_empty() && now_ms.saturating_sub(from) >= segment_ms)
    }

    /// The time retention judges the segment by: its max timestamp, or the
    /// file's modification time when none of its records has a timestamp.
    pub(crate) fn retention_timestamp(&self) -> Result<i64> {
        if self.cadence.max_timestamp > NO_TIMESTAMP {
            return Ok(self.cadence.max_timestamp);
        }
        let modified = self
            .log
            .file
            .metadata()
            .and_then(|m| m.modified())
            .map_err(|source| Error::Io {
                what: "stat",
                path: self.log.path.clone(),
                source,
            })?;
        Ok(modified
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// Appends whole batches whose base offsets are already assigned
    /// (`headers` are theirs, in order) and indexes them.
    /// The batches' bytes are the concatenation of `parts`.
    pub(crate) fn append(
        &mut self,
        parts: &[IoSlice<'_>],
        headers: &[BatchHeader],
        now_ms: i64,
    ) -> Result<()> {
        let start = self.size;
        let length: u64 = parts.iter().map(|p| p.len() as u64).sum();
        self.roll_from_ms.get_or_insert(now_ms);
        if let Err(source) = write_all_vectored_at(&self.log.file, parts, start) {
            // Leave no partial batch behind for the next append to follow.
            let _ = self.log.file.set_len(start);
            return Err(Error::Io {
                what: "append to",
                path: self.log.path.clone(),
                source,
            });
        }
        let mut position = start;
        for header in headers {
            let (offset_entry, time_entry) = self.cadence.observe(self.base, position, header);
            if let Some(e) = offset_entry {
                self.offsets.append(e);
            }
            if let Some(e) = time_entry {
                self.times.append(e);
            }
            position += header.size() as u64;
            self.next_offset = header.next_offset();
        }
        self.size = start + length;
        self.log.written.store(self.size, Ordering::Release);
        Ok(())
    }

    /// Makes the segment read-only for good: records its final max timestamp
    /// in the time index and fsyncs the log and both indexes, so that a
    /// sealed segment never needs the recovery an active one gets.
    pub(crate) fn seal(&mut self) -> Result<()> {
        if let Some(e) = self.cadence.time_entry(self.base) {
            self.times.append(e);
        }
        self.log.sync()?;
        self.offsets.sync()?;
        self.times.sync()
    }

    /// Fsyncs the log and both indexes.
    pub(crate) fn flush(&self) -> Result<()> {
        self.log.sync()?;
        self.offsets.sync()?;
        self.times.sync()
    }

    /// A cursor over the batches from byte `position`.
    pub(crate) fn cursor(&self, position: u64) -> BatchCursor<'_> {
        BatchCursor::new(&self.log, position, self.size)
    }

    /// The batch holding `offset`, or the first one after it; `None` when the
    /// segment ends before `offset`.
    pub(crate) fn locate(&self, offset: i64) -> Result<Option<(u64, BatchHeader)>> {
        let relative = u32::try_from(offset.saturating_sub(self.base).max(0)).unwrap_or(u32::MAX);
        let mut cursor = self.cursor(self.offsets.lookup(relative));
        loop {
            match cursor.next(false)? {
                Scan::Batch { position, header } if header.last_offset() >= offset => {
                    return Ok(Some((position, header)));
                }
                Scan::Batch { .. } => {}
                Scan::End => return Ok(None),
                Scan::Invalid { position, reason } => {
                    return Err(corrupt(&self.log, position, &reason));
                }
            }
        }
    }

    /// The first batch whose max timestamp is at least `timestamp`, found by
    /// starting where the time index says no earlier batch can qualify.
    pub(crate) fn locate_timestamp(&self, timestamp: i64) -> Result<Option<(u64, BatchHeader)>> {
        if self.cadence.max_timestamp < timestamp {
            return Ok(None);
        }
        let from = self
            .times
            .last_below(timestamp)
            .map_or(self.base, |e| self.base + i64::from(e.relative_offset));
        let Some((position, _)) = self.locate(from)? else {
            return Ok(None);
        };
        let mut cursor = self.cursor(position);
        loop {
            match cursor.next(false)? {
                Scan::Batch { position, header } if header.max_timestamp >= timestamp => {
                    return Ok(Some((position, header)));
                }
                Scan::Batch { .. } => {}
                Scan::End => return Ok(None),
                Scan::Invalid { position, reason } => {
                    return Err(corrupt(&self.log, position, &reason));
                }
            }
        }
    }

    /// Whole batches from byte `position`, at most `max_bytes` of them but
    /// always at least the first, however large.
    pub(crate) fn read(&self, position: u64, max_bytes: usize) -> Result<Bytes> {
        let available = self.size.saturating_sub(position);
        let want = usize::try_from(available)
            .unwrap_or(usize::MAX)
            .min(max_bytes);
        let mut buf = vec![0u8; want];
        self.log.read_exact_at(&mut buf, position)?;
        let mut end = 0;
        while let Some(length) = buf.get(end + 8..end + LENGTH_PREFIX) {
            let length = i32::from_be_bytes([length[0], length[1], length[2], length[3]]);
            let size = LENGTH_PREFIX + usize::try_from(length).unwrap_or(0);
            if end + size > buf.len() {
                break;
            }
            end += size;
        }
        if end == 0 {
            // Kafka hands out the first batch whole even past max_bytes, so a
            // consumer is never stuck behind a batch larger than its limit.
            let Some((_, header)) = self.batch_at(position)? else {
                return Ok(Bytes::new());
            };
            return self.read_exact(position, header.size());
        }
        buf.truncate(end);
        Ok(Bytes::from(buf))
    }

    /// The header of the batch at byte `position`.
    pub(crate) fn batch_at(&self, position: u64) -> Result<Option<(u64, BatchHeader)>> {
        match self.cursor(position).next(false)? {
            Scan::Batch { position, header } => Ok(Some((position, header))),
            Scan::End => Ok(None),
            Scan::Invalid { position, reason } => Err(corrupt(&self.log, position, &reason)),
        }
    }

    /// `len` bytes from byte `position`.
    pub(crate) fn read_exact(&self, position: u64, len: usize) -> Result<Bytes> {
        let mut buf = vec![0u8; len];
        self.log.read_exact_at(&mut buf, position)?;
        Ok(Bytes::from(buf))
    }

    /// The header of the first batch, if any.
    fn first_header(&self) -> Result<Option<BatchHeader>> {
        Ok(self.batch_at(0)?.map(|(_, h)| h))
    }

    /// Removes the segment's files.
    pub(crate) fn delete(self) -> Result<()> {
        for path in [
            self.log.path.clone(),
            self.offsets.path().to_path_buf(),
            self.times.path().to_path_buf(),
        ] {
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
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.log.path)
            .field("base", &self.base)
            .field("next_offset", &self.next_offset)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

fn open_log(dir: &Path, base: i64) -> Result<LogFile> {
    let path = log_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Io {
            what: "open segment",
            path: path.clone(),
            source,
        })?;
    let size = file
        .metadata()
        .map_err(|source| Error::Io {
            what: "stat",
            path: path.clone(),
            source,
        })?
        .len();
    Ok(LogFile::new(file, path, size))
}

fn corrupt(log: &LogFile, position: u64, reason: &str) -> Error {
    Error::InvalidBatch(format!(
        "segment '{}' at byte {position}: {reason}",
        log.path.display()
    ))
}
/// `pwritev` until every byte of `parts` is at `offset` and after.
fn write_all_vectored_at(
    file: &File,
    parts: &[IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    let mut owned: Vec<IoSlice<'_>> = parts.iter().filter(|p| !p.is_empty()).copied().collect();
    let mut left = &mut owned[..];
    while !left.is_empty() {
        match rustix::io::pwritev(file, left, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                offset += n as u64;
                IoSlice::advance_slices(&mut left, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
