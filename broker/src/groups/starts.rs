//! Where each group started reading a partition it had not committed on:
//! the offset of the first Fetch tied to the group (see [`super::ties`]).
//! The audit takes it at the group's first commit there (DESIGN §2).
//!
//! The starts live in `<data-dir>/groups/starts.json`, replaced atomically.
//! A Fetch that records a start is answered only once the file holds it, so
//! a broker killed between a group's first fetch and its first commit still
//! knows where the group started: no record the group was sent can be
//! counted as skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::Result;
use crate::log::{replace_file, sync_dir};

/// (group, topic, partition).
type Key = (String, String, i32);

#[derive(Serialize, Deserialize)]
struct Entry {
    group: String,
    topic: String,
    partition: i32,
    offset: i64,
}

#[derive(Default)]
struct Recorded {
    starts: BTreeMap<Key, i64>,
    /// Moves on every change; the file holds `written`'s version.
    version: u64,
}

/// The recorded starts, in memory and on disk.
pub(crate) struct Starts {
    path: PathBuf,
    recorded: Mutex<Recorded>,
    /// The version on disk; held while writing, so writers take turns and a
    /// writer whose change another one already wrote returns at once.
    written: Mutex<u64>,
}

impl Starts {
    /// The file under `data_dir`.
    pub(crate) fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("groups").join("starts.json")
    }

    /// Reads the file; a damaged one is reported and read as empty (the
    /// groups it named fall back to the no-fetch rule).
    pub(crate) fn load(path: PathBuf) -> Starts {
        let starts = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Entry>>(&bytes) {
                Ok(entries) => entries
                    .into_iter()
                    .map(|e| ((e.group, e.topic, e.partition), e.offset))
                    .collect(),
                Err(e) => {
                    warn!(path = %path.display(), "the groups' start offsets are damaged and were not read: {e}");
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                warn!(path = %path.display(), "cannot read the groups' start offsets: {e}");
                BTreeMap::new()
            }
        };
        Starts {
            path,
            recorded: Mutex::new(Recorded { starts, version: 0 }),
            written: Mutex::new(0),
        }
    }

    /// Records `offset` as the group's start unless it has one; true when
    /// it is new (and must be written).
    pub(crate) fn record(&self, group: &str, topic: &str, partition: i32, offset: i64) -> bool {
        let mut r = self.recorded.lock();
        let key = (group.to_owned(), topic.to_owned(), partition);
        if r.starts.contains_key(&key) {
            return false;
        }
        r.starts.insert(key, offset);
        r.version += 1;
        true
    }

    /// The group's recorded start on a partition.
    pub(crate) fn get(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        self.recorded
            .lock()
            .starts
            .get(&(group.to_owned(), topic.to_owned(), partition))
            .copied()
    }

    /// Forgets the starts `select(group, topic)` picks; true when any went.
    pub(crate) fn remove(&self, select: impl Fn(&str, &str) -> bool) -> bool {
        let mut r = self.recorded.lock();
        let before = r.starts.len();
        r.starts.retain(|(g, t, _), _| !select(g, t));
        let changed = r.starts.len() != before;
        if changed {
            r.version += 1;
        }
        changed
    }

    /// Writes the starts if they changed since the last write, and fsyncs.
    /// Blocking: call it off the async runtime.
    pub(crate) fn persist(&self) -> Result<()> {
        let mut written = self.written.lock();
        let (version, bytes) = {
            let r = self.recorded.lock();
            if r.version == *written {
                return Ok(());
            }
            let entries: Vec<Entry> = r
                .starts
                .iter()
                .map(|((group, topic, partition), offset)| Entry {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                })
                .collect();
            let bytes = serde_json::to_vec(&entries)
                .map_err(|e| crate::Error::Config(format!("cannot encode the starts: {e}")))?;
            (r.version, bytes)
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|source| crate::Error::Io {
            what: "cannot create the groups folder",
            path: dir.to_path_buf(),
            source,
        })?;
        replace_file(&self.path, &bytes)?;
        sync_dir(dir)?;
        *written = version;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_start_wins_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = Starts::path_in(dir.path());
        let starts = Starts::load(path.clone());
        assert!(starts.record("g", "t", 0, 400));
        assert!(
            !starts.record("g", "t", 0, 700),
            "later fetches do not move it"
        );
        assert!(starts.record("g", "u", 1, 3));
        starts.persist().unwrap();
        let again = Starts::load(path.clone());
        assert_eq!(again.get("g", "t", 0), Some(400));
        assert_eq!(again.get("g", "u", 1), Some(3));
        assert!(again.remove(|_, t| t == "u"));
        again.persist().unwrap();
        let third = Starts::load(path.clone());
        assert_eq!(third.get("g", "u", 1), None);
        assert_eq!(third.get("g", "t", 0), Some(400));
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(Starts::load(path).get("g", "t", 0), None);
    }
}
