//! Committed offsets: the latest commit and a short history per (group,
//! topic, partition) in memory, made durable by an append-only log,
//! `<data-dir>/groups/offsets.log`.
//!
//! Each record is `[u32 length][u32 crc32c][body]`; the body is a commit or
//! a tombstone. A commit is fsynced before it is acknowledged, concurrent
//! commits share fsyncs, and a torn or damaged tail is cut off at load. The
//! log is rewritten to the live set (temp file, fsync, rename) once it grows
//! well beyond it.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tracing::{info, warn};

use super::CommittedOffset;
use super::cursor::Cursor;
use crate::{Error, Result};

const COMMIT: u8 = 1;
const TOMBSTONE: u8 = 2;
/// The fixed part of a record: length and CRC.
const FRAME: usize = 8;
/// No record holds more than a group id, a topic and metadata.
const MAX_BODY: usize = 1 << 20;
/// The largest metadata a record may hold, whatever the settings say.
pub(crate) const MAX_METADATA: usize = 512 * 1024;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// A (topic, partition) of a group.
pub(crate) type PartitionKey = (String, i32);

/// One record of the log.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Record {
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    /// `None` is a tombstone.
    pub(crate) commit: Option<CommittedOffset>,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    // Group ids are Kafka strings (i16 length), topics at most 249 bytes.
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

impl Record {
    fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; FRAME]);
        out.push(if self.commit.is_some() {
            COMMIT
        } else {
            TOMBSTONE
        });
        put_str(out, &self.group);
        put_str(out, &self.topic);
        out.extend_from_slice(&self.partition.to_be_bytes());
        if let Some(c) = &self.commit {
            out.extend_from_slice(&c.offset.to_be_bytes());
            out.extend_from_slice(&c.leader_epoch.to_be_bytes());
            out.extend_from_slice(&c.commit_time_ms.to_be_bytes());
            match &c.metadata {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(m) => {
                    let len = i32::try_from(m.len()).unwrap_or(i32::MAX);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(m.as_bytes());
                }
            }
        }
        let body_len = out.len() - start - FRAME;
        let crc = crc32c::crc32c(&out[start + FRAME..]);
        out[start..start + 4].copy_from_slice(&(body_len as u32).to_be_bytes());
        out[start + 4..start + FRAME].copy_from_slice(&crc.to_be_bytes());
    }

    /// The size of the record in the log.
    fn encoded_len(&self) -> u64 {
        let mut n = FRAME + 1 + 2 + self.group.len() + 2 + self.topic.len() + 4;
        if let Some(c) = &self.commit {
            n += 8 + 4 + 8 + 4 + c.metadata.as_ref().map_or(0, String::len);
        }
        n as u64
    }
}

/// Reads one body; `None` when it is not a well-formed record.
fn decode_body(body: &[u8]) -> Option<Record> {
    let mut c = Cursor(body);
    let kind = c.array::<1>()?[0];
    let group = c.string()?;
    let topic = c.string()?;
    let partition = i32::from_be_bytes(c.array()?);
    let commit = match kind {
        TOMBSTONE => None,
        COMMIT => {
            let offset = i64::from_be_bytes(c.array()?);
            let leader_epoch = i32::from_be_bytes(c.array()?);
            let commit_time_ms = i64::from_be_bytes(c.array()?);
            let len = i32::from_be_bytes(c.array()?);
            let metadata = match len {
                -1 => None,
                n => Some(String::from_utf8(c.take(usize::try_from(n).ok()?)?.to_vec()).ok()?),
            };
            Some(CommittedOffset {
                offset,
                leader_epoch,
                metadata,
                commit_time_ms,
            })
        }
        _ => return None,
    };
    c.0.is_empty().then_some(Record {
        group,
        topic,
        partition,
        commit,
    })
}

/// The records of `bytes` up to the first one that is torn or damaged, and
/// the length of that valid prefix.
pub(crate) fn decode_log(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut pos = 0;
    while bytes.len() - pos >= FRAME {
        let len = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        let crc = u32::from_be_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        let start = pos + FRAME;
        if len > MAX_BODY || bytes.len() - start < len {
            break;
        }
        let body = &bytes[start..start + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Some(record) = decode_body(body) else {
            break;
        };
        records.push(record);
        pos = start + len;
    }
    (records, pos)
}

/// The committed offsets in memory: per group, per (topic, partition), the
/// last commits, oldest first.
#[derive(Default)]
pub(crate) struct Offsets {
    pub(crate) groups: BTreeMap<String, BTreeMap<PartitionKey, VecDeque<CommittedOffset>>>,
    /// What the latest commits take in the log: what compaction would keep.
    live_bytes: u64,
}

impl Offsets {
    fn apply(&mut self, record: Record, history_len: usize) {
        let key = (record.topic.clone(), record.partition);
        let latest_len = |group: &str, key: &PartitionKey, c: &CommittedOffset| {
            Record {
                group: group.to_owned(),
                topic: key.0.clone(),
                partition: key.1,
                commit: Some(c.clone()),
            }
            .encoded_len()
        };
        let group = self.groups.entry(record.group.clone()).or_default();
        if let Some(old) = group.get(&key).and_then(|h| h.back()) {
            self.live_bytes = self
                .live_bytes
                .saturating_sub(latest_len(&record.group, &key, old));
        }
        match record.commit {
            Some(c) => {
                self.live_bytes += latest_len(&record.group, &key, &c);
                let history = group.entry(key).or_default();
                history.push_back(c);
                while history.len() > history_len.max(1) {
                    history.pop_front();
                }
            }
            None => {
                group.remove(&key);
                if group.is_empty() {
                    self.groups.remove(&record.group);
                }
            }
        }
    }

    /// The latest commit of every key, as records.
    fn live_records(&self) -> impl Iterator<Item = Record> + '_ {
        self.groups.iter().flat_map(|(group, parts)| {
            parts
                .iter()
                .filter_map(move |((topic, partition), history)| {
                    history.back().map(|c| Record {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        commit: Some(c.clone()),
                    })
                })
        })
    }
}

/// When the log is rewritten to its live set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Compaction {
    /// Never compact a log smaller than this.
    pub(crate) min_bytes: u64,
    /// Compact once the log is this many times larger than the live set.
    pub(crate) ratio: u64,
}

struct Writer {
    file: File,
    len: u64,
    /// Bytes ever written, across rewrites: what an fsync makes durable.
    written: u64,
}

/// The durable store of committed offsets.
pub(crate) struct OffsetStore {
    path: PathBuf,
    history_len: usize,
    compaction: Compaction,
    writer: Mutex<Writer>,
    offsets: Mutex<Offsets>,
    /// How much of `written` is durable.
    durable: AtomicU64,
    /// Serialises fsyncs, so that one covers the callers that queued behind it.
    syncing: Mutex<()>,
}

impl OffsetStore {
    /// Where the log of `data_dir` lives.
    pub(crate) fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("groups").join("offsets.log")
    }

    /// Reads the log, cuts off a torn tail, and opens it for appends.
    pub(crate) fn load(
        path: &Path,
        history_len: usize,
        compaction: Compaction,
    ) -> Result<OffsetStore> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io("cannot create the groups folder", dir))?;
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io("cannot open", path))?;
        if created {
            sync_dir(dir)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io("cannot read", path))?;
        let (records, valid) = decode_log(&bytes);
        if valid < bytes.len() {
            warn!(
                path = %path.display(),
                valid_bytes = valid,
                dropped_bytes = bytes.len() - valid,
                "offsets log has a torn or damaged tail; truncating it"
            );
            file.set_len(valid as u64)
                .map_err(io("cannot truncate", path))?;
            file.sync_all().map_err(io("cannot fsync", path))?;
        }
        let mut offsets = Offsets::default();
        let count = records.len();
        for r in records {
            offsets.apply(r, history_len);
        }
        info!(
            records = count,
            groups = offsets.groups.len(),
            bytes = valid,
            "committed offsets loaded"
        );
        let store = OffsetStore {
            path: path.to_path_buf(),
            history_len,
            compaction,
            writer: Mutex::new(Writer {
                file,
                len: valid as u64,
                written: 0,
            }),
            offsets: Mutex::new(offsets),
            durable: AtomicU64::new(0),
            syncing: Mutex::new(()),
        };
        Ok(store)
    }

    /// Appends `records`, applies them, and returns once they are on disk.
    /// Blocking: call it off the async runtime.
    pub(crate) fn append(&self, records: Vec<Record>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let target = self.write(&mut self.writer.lock(), records)?;
        self.sync_through(target)
    }

    /// Writes and applies `records` under the writer's lock; returns the
    /// position an fsync must reach.
    fn write(&self, w: &mut Writer, records: Vec<Record>) -> Result<u64> {
        let mut buf = Vec::new();
        for r in &records {
            r.encode_into(&mut buf);
        }
        if let Err(e) = w.file.write_all(&buf) {
            // A partial record in the middle of the log would hide every
            // later one at the next load.
            let _ = w.file.set_len(w.len);
            return Err(io("cannot append to", &self.path)(e));
        }
        w.len += buf.len() as u64;
        w.written += buf.len() as u64;
        let live = {
            let mut offsets = self.offsets.lock();
            for r in records {
                offsets.apply(r, self.history_len);
            }
            offsets.live_bytes
        };
        if w.len >= self.compaction.min_bytes
            && w.len > live.saturating_mul(self.compaction.ratio.max(2))
        {
            self.compact(w)?;
        }
        Ok(w.written)
    }

    /// Fsyncs until `target` bytes of `written` are durable; a caller whose
    /// bytes another caller's fsync covered returns at once.
    fn sync_through(&self, target: u64) -> Result<()> {
        let _turn = self.syncing.lock();
        if self.durable.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let (file, written) = {
            let w = self.writer.lock();
            (
                w.file.try_clone().map_err(io("cannot fsync", &self.path))?,
                w.written,
            )
        };
        file.sync_data().map_err(io("cannot fsync", &self.path))?;
        self.durable.fetch_max(written, Ordering::AcqRel);
        Ok(())
    }

    /// Rewrites the log to the latest commit of each key.
    fn compact(&self, w: &mut Writer) -> Result<()> {
        let mut buf = Vec::new();
        for r in self.offsets.lock().live_records() {
            r.encode_into(&mut buf);
        }
        let tmp = self.path.with_extension("log.compacting");
        {
            let mut f = File::create(&tmp).map_err(io("cannot create", &tmp))?;
            f.write_all(&buf).map_err(io("cannot write", &tmp))?;
            f.sync_all().map_err(io("cannot fsync", &tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io("cannot replace", &self.path))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        sync_dir(dir)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io("cannot open", &self.path))?;
        info!(
            before_bytes = w.len,
            after_bytes = buf.len(),
            "offsets log compacted"
        );
        w.file = file;
        w.len = buf.len() as u64;
        // The rewritten file holds everything written so far, fsynced.
        self.durable.fetch_max(w.written, Ordering::AcqRel);
        Ok(())
    }

    /// Reads the in-memory offsets.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Offsets) -> T) -> T {
        f(&self.offsets.lock())
    }

    /// Tombstones for every key `select` picks, appended and fsynced.
    pub(crate) fn remove(&self, select: impl Fn(&str, &str, i32) -> bool) -> Result<usize> {
        // Under the writer's lock, no commit slips in between choosing the
        // keys and writing their tombstones.
        let mut w = self.writer.lock();
        let doomed: Vec<Record> = self
            .offsets
            .lock()
            .groups
            .iter()
            .flat_map(|(g, parts)| {
                parts
                    .keys()
                    .filter(|(t, p)| select(g, t, *p))
                    .map(|(t, p)| Record {
                        group: g.clone(),
                        topic: t.clone(),
                        partition: *p,
                        commit: None,
                    })
            })
            .collect();
        let n = doomed.len();
        if n == 0 {
            return Ok(0);
        }
        let target = self.write(&mut w, doomed)?;
        drop(w);
        self.sync_through(target)?;
        Ok(n)
    }

    /// The size of the log file now.
    pub(crate) fn log_bytes(&self) -> u64 {
        self.writer.lock().len
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot fsync the folder", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(group: &str, topic: &str, partition: i32, offset: i64) -> Record {
        Record {
            group: group.into(),
            topic: topic.into(),
            partition,
            commit: Some(CommittedOffset {
                offset,
                leader_epoch: 3,
                metadata: Some("m".into()),
                commit_time_ms: 1_700_000_000_000 + offset,
            }),
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_stops_the_read() {
        let mut buf = Vec::new();
        let a = commit("g", "t", 0, 5);
        let b = Record {
            commit: None,
            ..commit("g", "t", 1, 0)
        };
        let c = Record {
            commit: Some(CommittedOffset {
                metadata: None,
                ..commit("g", "t", 2, 9).commit.unwrap()
            }),
            ..commit("g", "t", 2, 9)
        };
        for r in [&a, &b, &c] {
            r.encode_into(&mut buf);
        }
        assert_eq!(
            buf.len() as u64,
            a.encoded_len() + b.encoded_len() + c.encoded_len()
        );
        let (records, valid) = decode_log(&buf);
        assert_eq!(records, vec![a.clone(), b.clone(), c]);
        assert_eq!(valid, buf.len());
        for cut in 1..buf.len() - (a.encoded_len() + b.encoded_len()) as usize {
            let (records, valid) = decode_log(&buf[..buf.len() - cut]);
            assert_eq!(records, vec![a.clone(), b.clone()], "cut {cut}");
            assert_eq!(valid as u64, a.encoded_len() + b.encoded_len());
        }
        let mut flipped = buf.clone();
        flipped[FRAME + 3] ^= 0x40;
        assert_eq!(decode_log(&flipped), (vec![], 0));
    }

    #[test]
    fn keeps_a_bounded_history_and_tombstones_remove_it() {
        let mut o = Offsets::default();
        for off in 0..15 {
            o.apply(commit("g", "t", 0, off), 10);
        }
        let h = &o.groups["g"][&("t".to_owned(), 0)];
        assert_eq!(h.len(), 10);
        assert_eq!(h.front().unwrap().offset, 5);
        assert_eq!(h.back().unwrap().offset, 14);
        assert_eq!(o.live_bytes, commit("g", "t", 0, 14).encoded_len());
        o.apply(
            Record {
                commit: None,
                ..commit("g", "t", 0, 0)
            },
            10,
        );
        assert!(o.groups.is_empty());
        assert_eq!(o.live_bytes, 0);
    }
}
