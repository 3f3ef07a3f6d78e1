//! Idempotent and transactional producers: the ids the broker hands out
//! (InitProducerId) and, per partition, each producer's epoch and recent
//! batches, against which a produced batch is checked for order and
//! recognised as a retry, and the partition's open and aborted transactions,
//! which give its last stable offset and the aborted list of a Fetch.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;

use crate::batch::{BatchHeader, Marker};
use crate::log::PartitionLog;
use crate::topics::Refusal;
use crate::{Error, Result};

/// Producer ids, handed out in blocks whose end is stored before use, so
/// that no id is ever given twice, across restarts too.
pub(crate) struct ProducerIds {
    path: PathBuf,
    state: Mutex<(i64, i64)>,
}

impl ProducerIds {
    const BLOCK: i64 = 1_000;

    pub(crate) fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("producer_ids");
        let stored = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<i64>().map_err(|e| {
                Error::Config(format!("'{}' holds \"{}\": {e}", path.display(), s.trim()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(Error::Io {
                    what: "cannot read",
                    path,
                    source,
                });
            }
        };
        Ok(ProducerIds {
            path,
            state: Mutex::new((stored, stored)),
        })
    }

    pub(crate) fn next(&self) -> Result<i64> {
        let mut s = self.state.lock();
        if s.0 >= s.1 {
            let limit = s.1 + Self::BLOCK;
            let tmp = self.path.with_extension("tmp");
            let io = |source| Error::Io {
                what: "cannot write",
                path: tmp.clone(),
                source,
            };
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            std::io::Write::write_all(&mut f, limit.to_string().as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &self.path).map_err(io)?;
            s.1 = limit;
        }
        let id = s.0;
        s.0 += 1;
        Ok(id)
    }
}

/// How many recent batches per producer are kept to recognise a retry.
const DEDUP_BATCHES: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Written {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Default)]
struct Producer {
    epoch: i16,
    recent: VecDeque<Written>,
}

/// The verdict on an idempotent producer's batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sequence {
    /// Not an idempotent batch, or the next one in order: append it.
    Append,
    /// A retry of a batch already in the log, at this base offset.
    Duplicate(i64),
}

/// A transaction that was aborted on a partition: its records, from
/// `first_offset` to the marker at `last_offset`, are not to be read by a
/// `read_committed` consumer (Fetch's aborted transactions list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    /// The producer whose transaction it was.
    pub producer_id: i64,
    /// The offset of its first record on the partition.
    pub first_offset: i64,
    /// The offset of its abort marker.
    pub last_offset: i64,
}

/// Producers of one partition: producer id → epoch and recent batches, and
/// the partition's open and aborted transactions.
#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
    /// Open transactions: producer id → the offset of its first record here.
    ongoing: HashMap<i64, i64>,
    /// Aborted transactions still in the log, in marker order.
    aborted: VecDeque<AbortedTxn>,
}

impl ProducerStates {
    /// Rebuilds the state from the log (after a restart): every batch's
    /// header, and the marker of every control batch.
    pub fn rebuild(&mut self, log: &PartitionLog) -> crate::Result<()> {
        for b in log.batches(log.start_offset())? {
            if b.is_control() {
                if let Some(marker) = crate::batch::control_marker(&log.read_batch(b.base_offset)?)
                {
                    self.record_marker(b.base_offset, marker);
                }
            } else {
                self.record(&b);
            }
        }
        Ok(())
    }

    /// The last stable offset of a log that ends at `end`: the first offset
    /// of the oldest open transaction, or `end`.
    pub fn stable_offset(&self, end: i64) -> i64 {
        self.ongoing.values().copied().fold(end, i64::min)
    }

    /// The producer's epoch as this partition last saw it (0 if never).
    pub fn epoch_of(&self, producer_id: i64) -> i16 {
        self.producers.get(&producer_id).map_or(0, |p| p.epoch)
    }

    /// The producers with a transaction open on this partition.
    pub fn open_transactions(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.ongoing.iter().map(|(p, o)| (*p, *o))
    }

    /// The aborted transactions a `read_committed` reader of `[from, to)`
    /// must know of: those whose marker is at or after `from` and whose first
    /// record is before `to`.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.aborted
            .iter()
            .filter(|a| a.last_offset >= from && a.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions wholly below a new log start.
    pub fn forget_before(&mut self, start: i64) {
        while self.aborted.front().is_some_and(|a| a.last_offset < start) {
            self.aborted.pop_front();
        }
    }

    /// A transaction marker was appended at `offset`: the producer's
    /// transaction on this partition ends (an abort is listed), and a marker
    /// of a newer epoch fences the older one.
    pub fn record_marker(&mut self, offset: i64, marker: Marker) {
        if let Some(first) = self.ongoing.remove(&marker.producer_id)
            && !marker.commit
        {
            self.aborted.push_back(AbortedTxn {
                producer_id: marker.producer_id,
                first_offset: first,
                last_offset: offset,
            });
        }
        if let Some(p) = self.producers.get_mut(&marker.producer_id)
            && marker.producer_epoch > p.epoch
        {
            p.epoch = marker.producer_epoch;
            p.recent.clear();
        }
    }

    /// Checks a batch against the producer's state.
    pub fn check(&self, b: &BatchHeader) -> Result<Sequence, Refusal> {
        if b.producer_id < 0 || b.base_sequence < 0 {
            return Ok(Sequence::Append);
        }
        let last_seq = b.base_sequence.wrapping_add(b.last_offset_delta);
        let Some(p) = self.producers.get(&b.producer_id) else {
            return if b.base_sequence == 0 {
                Ok(Sequence::Append)
            } else {
                Err(Refusal::new(
                    ResponseError::UnknownProducerId,
                    format!(
                        "producer {} is not known here and its batch starts at sequence {}",
                        b.producer_id, b.base_sequence
                    ),
                ))
            };
        };
        if b.producer_epoch < p.epoch {
            return Err(Refusal::new(
                ResponseError::InvalidProducerEpoch,
                format!(
                    "producer {} epoch {} is older than the current epoch {}",
                    b.producer_id, b.producer_epoch, p.epoch
                ),
            ));
        }
        if b.producer_epoch > p.epoch {
            return if b.base_sequence == 0 {
                Ok(Sequence::Append)
            } else {
                Err(Refusal::new(
                    ResponseError::OutOfOrderSequenceNumber,
                    format!(
                        "producer {} new epoch {} must start at sequence 0, not {}",
                        b.producer_id, b.producer_epoch, b.base_sequence
                    ),
                ))
            };
        }
        if let Some(w) = p
            .recent
            .iter()
            .find(|w| w.first_seq == b.base_sequence && w.last_seq == last_seq)
        {
            return Ok(Sequence::Duplicate(w.base_offset));
        }
        let expected = p
            .recent
            .back()
            .map_or(0, |w| w.last_seq.wrapping_add(1).max(0));
        if b.base_sequence == expected || (expected == 0 && p.recent.is_empty()) {
            Ok(Sequence::Append)
        } else {
            Err(Refusal::new(
                ResponseError::OutOfOrderSequenceNumber,
                format!(
                    "producer {} sent sequence {} where {} was expected",
                    b.producer_id, b.base_sequence, expected
                ),
            ))
        }
    }

    /// Records a batch that was appended.
    pub fn record(&mut self, b: &BatchHeader) {
        if b.is_transactional() && !b.is_control() && b.producer_id >= 0 {
            self.ongoing.entry(b.producer_id).or_insert(b.base_offset);
        }
        if b.producer_id < 0 || b.base_sequence < 0 {
            return;
        }
        let p = self.producers.entry(b.producer_id).or_default();
        if b.producer_epoch != p.epoch {
            p.epoch = b.producer_epoch;
            p.recent.clear();
        }
        p.recent.push_back(Written {
            first_seq: b.base_sequence,
            last_seq: b.base_sequence.wrapping_add(b.last_offset_delta),
            base_offset: b.base_offset,
        });
        while p.recent.len() > DEDUP_BATCHES {
            p.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, n: i32, offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset: offset,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: n - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: n,
        }
    }

    #[test]
    fn idempotent_producers_are_deduplicated_and_ordered() {
        let mut s = ProducerStates::default();
        let b0 = header(7, 0, 0, 10, 0);
        assert_eq!(s.check(&b0), Ok(Sequence::Append));
        s.record(&b0);
        let b1 = header(7, 0, 10, 5, 10);
        assert_eq!(s.check(&b1), Ok(Sequence::Append));
        s.record(&b1);
        // A retry of either batch is recognised with its original offset.
        assert_eq!(
            s.check(&header(7, 0, 0, 10, -1)),
            Ok(Sequence::Duplicate(0))
        );
        assert_eq!(
            s.check(&header(7, 0, 10, 5, -1)),
            Ok(Sequence::Duplicate(10))
        );
        // A gap is out of order.
        let gap = s.check(&header(7, 0, 20, 1, -1)).unwrap_err();
        assert_eq!(gap.error, ResponseError::OutOfOrderSequenceNumber);
        assert!(gap.message.contains("15"), "{}", gap.message);
        // An older epoch is fenced; a newer one starts again at 0.
        assert_eq!(
            s.check(&header(7, -1, 15, 1, -1)).unwrap_err().error,
            ResponseError::InvalidProducerEpoch
        );
        assert_eq!(s.check(&header(7, 1, 0, 1, -1)), Ok(Sequence::Append));
        // Unknown producers must start at 0; plain producers are not checked.
        assert_eq!(
            s.check(&header(8, 0, 3, 1, -1)).unwrap_err().error,
            ResponseError::UnknownProducerId
        );
        assert_eq!(s.check(&header(-1, -1, -1, 3, -1)), Ok(Sequence::Append));
    }
}
