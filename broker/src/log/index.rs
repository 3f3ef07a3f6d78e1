//! A segment's two sparse indexes, kept in memory and appended to their files:
//! the offset index maps a batch's offset (relative to the segment's base) to
//! its byte position, and the time index records where the segment's running
//! maximum timestamp rose, so a timestamp lookup knows where to start reading.
//!
//! Both are derived data: when a file is missing or fails the checks in
//! [`OffsetIndex::load`] or [`TimeIndex::load`], the segment rebuilds it by
//! reading the log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::batch::BatchHeader;
use crate::{Error, Result};

/// Bytes of one offset index entry: relative offset u32, position u32.
pub(crate) const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of one time index entry: timestamp i64, relative offset u32.
pub(crate) const TIME_ENTRY_BYTES: usize = 12;
/// Kafka's "no timestamp".
pub(crate) const NO_TIMESTAMP: i64 = -1;

/// An offset index entry: the batch starting at `relative_offset` begins at
/// byte `position` of the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub(crate) relative_offset: u32,
    pub(crate) position: u32,
}

/// A time index entry: the segment's running maximum timestamp became
/// `timestamp` at the batch starting at `relative_offset`; every batch before
/// it has a smaller max timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub(crate) timestamp: i64,
    pub(crate) relative_offset: u32,
}

/// What a segment's indexes must agree with to be trusted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SegmentBounds {
    /// Bytes in the segment's log file.
    pub(crate) log_bytes: u64,
    /// Relative offsets must stay below this (the next segment's base).
    pub(crate) relative_end: u64,
}

/// Decides, batch by batch, which index entries to write; used both while
/// appending and while rebuilding, so that both produce the same indexes.
#[derive(Clone, Debug)]
pub(crate) struct IndexCadence {
    interval_bytes: u64,
    bytes_since_entry: u64,
    /// The segment's running max timestamp and the batch where it was reached.
    pub(crate) max_timestamp: i64,
    pub(crate) max_timestamp_offset: i64,
    last_indexed_timestamp: i64,
}

impl IndexCadence {
    pub(crate) fn new(interval_bytes: u32, last_time_entry: Option<TimeEntry>, base: i64) -> Self {
        let (max_timestamp, max_timestamp_offset) = match last_time_entry {
            Some(e) => (e.timestamp, base + i64::from(e.relative_offset)),
            None => (NO_TIMESTAMP, base),
        };
        IndexCadence {
            interval_bytes: u64::from(interval_bytes),
            bytes_since_entry: 0,
            max_timestamp,
            max_timestamp_offset,
            last_indexed_timestamp: max_timestamp,
        }
    }

    /// Accounts for the batch at `position`; returns the entries to append.
    pub(crate) fn observe(
        &mut self,
        base: i64,
        position: u64,
        header: &BatchHeader,
    ) -> (Option<OffsetEntry>, Option<TimeEntry>) {
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.max_timestamp_offset = header.base_offset;
        }
        let mut entries = (None, None);
        // Like Kafka, the first batch is never indexed (position 0 is implied),
        // and the interval is measured from the previous entry.
        if self.bytes_since_entry > self.interval_bytes {
            entries.0 = relative(base, header.base_offset)
                .zip(u32::try_from(position).ok())
                .map(|(relative_offset, position)| OffsetEntry {
                    relative_offset,
                    position,
                });
            entries.1 = self.time_entry(base);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += header.size() as u64;
        entries
    }

    /// The entry that records the running max, if it rose since the last one;
    /// written at index points and when the segment is sealed.
    pub(crate) fn time_entry(&mut self, base: i64) -> Option<TimeEntry> {
        if self.max_timestamp <= self.last_indexed_timestamp {
            return None;
        }
        let relative_offset = relative(base, self.max_timestamp_offset)?;
        self.last_indexed_timestamp = self.max_timestamp;
        Some(TimeEntry {
            timestamp: self.max_timestamp,
            relative_offset,
        })
    }
}

fn relative(base: i64, offset: i64) -> Option<u32> {
    u32::try_from(offset.checked_sub(base)?).ok()
}

/// The offset index of one segment.
#[derive(Debug)]
pub(crate) struct OffsetIndex {
    path: PathBuf,
    file: File,
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    /// Reads and checks the file: its size is a whole number of entries, the
    /// entries rise strictly in offset and position, and none points past the
    /// segment. `Ok(Err(why))` when it cannot be trusted.
    pub(crate) fn load(
        path: &Path,
        bounds: SegmentBounds,
    ) -> Result<std::result::Result<Vec<OffsetEntry>, String>> {
        let Some(bytes) = read_if_present(path)? else {
            return Ok(Err("it is missing".to_string()));
        };
        if bytes.len() % OFFSET_ENTRY_BYTES != 0 {
            return Ok(Err(format!(
                "its {} bytes are not a whole number of {OFFSET_ENTRY_BYTES}-byte entries",
                bytes.len()
            )));
        }
        let entries: Vec<OffsetEntry> = bytes
            .chunks_exact(OFFSET_ENTRY_BYTES)
            .map(|c| OffsetEntry {
                relative_offset: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                position: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        for (i, e) in entries.iter().enumerate() {
            if u64::from(e.position) >= bounds.log_bytes
                || u64::from(e.relative_offset) >= bounds.relative_end
            {
                return Ok(Err(format!("entry {i} points past the segment")));
            }
            if i > 0 {
                let previous = entries[i - 1];
                if e.relative_offset <= previous.relative_offset || e.position <= previous.position
                {
                    return Ok(Err(format!("entry {i} is out of order")));
                }
            }
        }
        Ok(Ok(entries))
    }

    /// Opens the index for appending, over entries already checked or built.
    pub(crate) fn open(path: &Path, entries: Vec<OffsetEntry>) -> Result<Self> {
        Ok(OffsetIndex {
            path: path.to_path_buf(),
            file: open_append(path)?,
            entries,
        })
    }

    /// Writes `entries` as the whole file (atomically), then opens it.
    pub(crate) fn rebuild(path: &Path, entries: Vec<OffsetEntry>) -> Result<Self> {
        let mut bytes = Vec::with_capacity(entries.len() * OFFSET_ENTRY_BYTES);
        for e in &entries {
            bytes.extend_from_slice(&e.relative_offset.to_be_bytes());
            bytes.extend_from_slice(&e.position.to_be_bytes());
        }
        replace_file(path, &bytes)?;
        Self::open(path, entries)
    }

    pub(crate) fn append(&mut self, entry: OffsetEntry) {
        let mut bytes = [0u8; OFFSET_ENTRY_BYTES];
        bytes[..4].copy_from_slice(&entry.relative_offset.to_be_bytes());
        bytes[4..].copy_from_slice(&entry.position.to_be_bytes());
        write_entry(&mut self.file, &self.path, &bytes);
        self.entries.push(entry);
    }

    /// Position of the last indexed batch at or before `relative_offset`
    /// (0, the segment's start, when there is none).
    pub(crate) fn lookup(&self, relative_offset: u32) -> u64 {
        let after = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        after
            .checked_sub(1)
            .map_or(0, |i| u64::from(self.entries[i].position))
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|source| Error::Io {
            what: "fsync",
            path: self.path.clone(),
            source,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// The time index of one segment.
#[derive(Debug)]
pub(crate) struct TimeIndex {
    path: PathBuf,
    file: File,
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// Reads and checks the file: a whole number of entries, timestamps
    /// strictly rising, offsets never falling, none past the segment.
    /// `Ok(Err(why))` when it cannot be trusted.
    pub(crate) fn load(
        path: &Path,
        bounds: SegmentBounds,
    ) -> Result<std::result::Result<Vec<TimeEntry>, String>> {
        let Some(bytes) = read_if_present(path)? else {
            return Ok(Err("it is missing".to_string()));
        };
        if bytes.len() % TIME_ENTRY_BYTES != 0 {
            return Ok(Err(format!(
                "its {} bytes are not a whole number of {TIME_ENTRY_BYTES}-byte entries",
                bytes.len()
            )));
        }
        let entries: Vec<TimeEntry> = bytes
            .chunks_exact(TIME_ENTRY_BYTES)
            .map(|c| TimeEntry {
                timestamp: i64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
                relative_offset: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
            })
            .collect();
        for (i, e) in entries.iter().enumerate() {
            if u64::from(e.relative_offset) >= bounds.relative_end {
                return Ok(Err(format!("entry {i} points past the segment")));
            }
            if e.timestamp <= NO_TIMESTAMP {
                return Ok(Err(format!("entry {i} has no timestamp")));
            }
            if i > 0 {
                let previous = entries[i - 1];
                if e.timestamp <= previous.timestamp || e.relative_offset < previous.relative_offset
                {
                    return Ok(Err(format!("entry {i} is out of order")));
                }
            }
        }
        Ok(Ok(entries))
    }

    pub(crate) fn open(path: &Path, entries: Vec<TimeEntry>) -> Result<Self> {
        Ok(TimeIndex {
            path: path.to_path_buf(),
            file: open_append(path)?,
            entries,
        })
    }

    /// Writes `entries` as the whole file (atomically), then opens it.
    pub(crate) fn rebuild(path: &Path, entries: Vec<TimeEntry>) -> Result<Self> {
        let mut bytes = Vec::with_capacity(entries.len() * TIME_ENTRY_BYTES);
        for e in &entries {
            bytes.extend_from_slice(&e.timestamp.to_be_bytes());
            bytes.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        replace_file(path, &bytes)?;
        Self::open(path, entries)
    }

    pub(crate) fn append(&mut self, entry: TimeEntry) {
        let mut bytes = [0u8; TIME_ENTRY_BYTES];
        bytes[..8].copy_from_slice(&entry.timestamp.to_be_bytes());
        bytes[8..].copy_from_slice(&entry.relative_offset.to_be_bytes());
        write_entry(&mut self.file, &self.path, &bytes);
        self.entries.push(entry);
    }

    /// The last entry whose timestamp is below `timestamp`: no batch before
    /// its offset can hold a timestamp at or above `timestamp`.
    pub(crate) fn last_below(&self, timestamp: i64) -> Option<TimeEntry> {
        let below = self.entries.partition_point(|e| e.timestamp < timestamp);
        below.checked_sub(1).map(|i| self.entries[i])
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|source| Error::Io {
            what: "fsync",
            path: self.path.clone(),
            source,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            what: "read index",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| Error::Io {
            what: "open index",
            path: path.to_path_buf(),
            source,
        })
}

/// An index entry that fails to reach the file costs only speed until the
/// next open, which finds the file damaged and rebuilds it, so a failure here
/// must not fail the append whose records are already in the log.
fn write_entry(file: &mut File, path: &Path, bytes: &[u8]) {
    if let Err(e) = file.write_all(bytes) {
        tracing::warn!(path = %path.display(), error = %e, "index entry not written; the index will be rebuilt at the next open");
    }
}

/// Replaces `path` with `bytes` through a synced temporary file and a rename,
/// so a crash leaves either the old file or the whole new one.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    };
    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", &tmp))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> SegmentBounds {
        SegmentBounds {
            log_bytes: 10_000,
            relative_end: 1_000,
        }
    }

    #[test]
    fn offset_index_round_trips_and_finds_the_entry_at_or_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let entries = vec![
            OffsetEntry {
                relative_offset: 10,
                position: 100,
            },
            OffsetEntry {
                relative_offset: 20,
                position: 200,
            },
        ];
        let index = OffsetIndex::rebuild(&path, entries.clone()).unwrap();
        assert_eq!(index.lookup(5), 0);
        assert_eq!(index.lookup(10), 100);
        assert_eq!(index.lookup(19), 100);
        assert_eq!(index.lookup(25), 200);
        assert_eq!(OffsetIndex::load(&path, bounds()).unwrap(), Ok(entries));
    }

    #[test]
    fn damaged_offset_indexes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        assert!(
            OffsetIndex::load(&path, bounds()).unwrap().is_err(),
            "missing"
        );
        std::fs::write(&path, [0u8; 7]).unwrap();
        assert!(
            OffsetIndex::load(&path, bounds()).unwrap().is_err(),
            "torn entry"
        );
        let mut bytes = Vec::new();
        for (offset, position) in [(20u32, 200u32), (10, 300)] {
            bytes.extend_from_slice(&offset.to_be_bytes());
            bytes.extend_from_slice(&position.to_be_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            OffsetIndex::load(&path, bounds()).unwrap().is_err(),
            "out of order"
        );
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&5u32.to_be_bytes());
        bytes.extend_from_slice(&20_000u32.to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            OffsetIndex::load(&path, bounds()).unwrap().is_err(),
            "past the segment"
        );
    }

    #[test]
    fn time_index_finds_the_last_entry_below_a_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        let entries = vec![
            TimeEntry {
                timestamp: 1_000,
                relative_offset: 0,
            },
            TimeEntry {
                timestamp: 2_000,
                relative_offset: 7,
            },
        ];
        let index = TimeIndex::rebuild(&path, entries.clone()).unwrap();
        assert_eq!(index.last_below(1_000), None);
        assert_eq!(index.last_below(1_001), Some(entries[0]));
        assert_eq!(index.last_below(9_999), Some(entries[1]));
        assert_eq!(TimeIndex::load(&path, bounds()).unwrap(), Ok(entries));
        std::fs::write(&path, [0u8; 13]).unwrap();
        assert!(TimeIndex::load(&path, bounds()).unwrap().is_err());
    }
}
