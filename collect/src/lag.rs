//! Lag arithmetic, kept apart from the network so that every rule has a unit test:
//! lag in records against the right end, lag in seconds from a record's timestamp
//! (read, cached, or estimated), and when a group committed what it has.
//!
//! The rules (DESIGN.md §2 and §9):
//! - lag in records = end − committed, where the end is the larger of ListOffsets
//!   `latest` and the last high watermark a Fetch showed (one peer answers ListOffsets
//!   wrongly), or the last stable offset for groups that read committed data only;
//! - an end below the committed offset (a truncated log, or a broker that answers
//!   oddly) is 0 lag and counted as inconsistent, never negative;
//! - lag seconds = now − the timestamp of the first record at or after the committed
//!   offset; 0 when caught up; never NaN, never negative;
//! - where that record cannot be read, the timestamp is estimated from the records
//!   already read on the partition, and the sample says so.

use std::collections::{BTreeMap, HashMap};

use tally_kafka::client::TopicPartition;

/// Lag in records and whether the offsets contradict each other (end < committed).
pub fn lag_records(committed: i64, end: i64) -> (u64, bool) {
    if end < committed {
        (0, true)
    } else {
        (u64::try_from(end - committed).unwrap_or(0), false)
    }
}

/// The end a lag is measured against: the larger of ListOffsets `latest` and the last
/// high watermark seen, or (for groups that read committed data only) the last stable
/// offset where the cluster gave one.
pub fn end_offset(latest: Option<i64>, high_watermark: Option<i64>) -> Option<i64> {
    match (latest, high_watermark) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Seconds from `timestamp_ms` to `now_ms`, never negative (a record stamped in the
/// future is 0 behind, not ahead) and always finite.
pub fn lag_seconds(now_ms: i64, timestamp_ms: i64) -> f64 {
    let ms = now_ms.saturating_sub(timestamp_ms).max(0);
    // Exact for any lag below 2^53 ms (285,000 years).
    #[allow(clippy::cast_precision_loss)]
    let seconds = ms as f64 / 1000.0;
    seconds
}

/// A timestamp for the record at a committed offset: read from the log, or estimated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordTime {
    /// The first record at or after the offset was read; its timestamp.
    Read(i64),
    /// Not readable; estimated from other records of the partition.
    Estimated(i64),
    /// Not readable, and nothing to estimate from.
    Unknown,
}

/// The most (offset, timestamp) points kept per partition for estimates.
const MAX_POINTS: usize = 256;

/// Record timestamps read per partition: a cache keyed by the committed offset (so
/// that a group whose offset does not move costs no read), and the points estimates
/// interpolate between.
#[derive(Debug, Default)]
pub struct RecordTimes {
    /// (partition, committed offset) → what was read there, and the poll that last used it.
    cache: HashMap<(TopicPartition, i64), (RecordTime, u64)>,
    /// Per partition, offsets and the timestamps of the records read at them.
    points: HashMap<TopicPartition, BTreeMap<i64, i64>>,
    /// The current poll's number.
    generation: u64,
}

impl RecordTimes {
    /// Starts a poll: entries no poll uses for a whole poll are dropped at its end.
    pub fn begin_poll(&mut self) {
        self.generation += 1;
    }

    /// Ends a poll: drops what it did not use (moved offsets, deleted groups).
    pub fn end_poll(&mut self) {
        let current = self.generation;
        self.cache.retain(|_, (_, used)| *used == current);
    }

    /// What is cached for (partition, offset), marking it used in this poll.
    pub fn cached(&mut self, tp: &TopicPartition, offset: i64) -> Option<RecordTime> {
        let current = self.generation;
        let key = (tp.clone(), offset);
        self.cache.get_mut(&key).map(|(time, used)| {
            *used = current;
            *time
        })
    }

    /// Records a read: the first record at or after `offset` is at `record_offset`
    /// with `timestamp_ms`.
    pub fn read(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        record_offset: i64,
        timestamp_ms: i64,
    ) {
        self.cache.insert(
            (tp.clone(), offset),
            (RecordTime::Read(timestamp_ms), self.generation),
        );
        self.point(tp, record_offset, timestamp_ms);
    }

    /// Adds an (offset, timestamp) point without caching a committed offset (a record
    /// read elsewhere on the partition, e.g. at the log start).
    pub fn point(&mut self, tp: &TopicPartition, offset: i64, timestamp_ms: i64) {
        if timestamp_ms < 0 {
            return;
        }
        let points = self.points.entry(tp.clone()).or_default();
        points.insert(offset, timestamp_ms);
        while points.len() > MAX_POINTS {
            // Keep the newest: lag is about the records not yet consumed.
            points.pop_first();
        }
    }

    /// Estimates the timestamp at `offset` from the points read on the partition (the
    /// next poll tries to read the record again).
    pub fn estimate(&self, tp: &TopicPartition, offset: i64) -> RecordTime {
        self.points
            .get(tp)
            .and_then(|points| interpolate(points, offset))
            .map_or(RecordTime::Unknown, RecordTime::Estimated)
    }

    /// Forgets a partition (its topic was deleted).
    pub fn forget_partition(&mut self, tp: &TopicPartition) {
        self.points.remove(tp);
        self.cache.retain(|(p, _), _| p != tp);
    }

    /// Cached entries (for the metrics and the benchmark).
    pub fn cached_len(&self) -> usize {
        self.cache.len()
    }
}

/// The timestamp at `offset` between the nearest points below and above (linear,
/// never before the lower point's time); the nearest one where only one side exists.
fn interpolate(points: &BTreeMap<i64, i64>, offset: i64) -> Option<i64> {
    let below = points.range(..=offset).next_back();
    let above = points.range(offset..).next();
    match (below, above) {
        (Some((&o1, &t1)), Some((&o2, &t2))) if o2 > o1 => {
            let span = i128::from(o2 - o1);
            let part = i128::from(offset - o1);
            let dt = i128::from(t2) - i128::from(t1);
            let t = i128::from(t1) + dt * part / span;
            i64::try_from(t).ok().map(|t| t.max(t1.min(t2)))
        }
        (Some((_, &t)), _) | (None, Some((_, &t))) => Some(t),
        (None, None) => None,
    }
}

/// When each group committed what it has: the poll that first saw the offset (a
/// collector that cannot read `__consumer_offsets` sees commits only by polling).
#[derive(Debug, Default)]
pub struct CommitTimes {
    seen: HashMap<(String, TopicPartition), (i64, i64)>,
    dirty: bool,
}

impl CommitTimes {
    /// Notes `offset` for (group, partition) at `now_ms`; returns when it was first seen.
    pub fn observe(&mut self, group: &str, tp: &TopicPartition, offset: i64, now_ms: i64) -> i64 {
        let key = (group.to_owned(), tp.clone());
        match self.seen.get(&key) {
            Some(&(o, at)) if o == offset => at,
            _ => {
                self.seen.insert(key, (offset, now_ms));
                self.dirty = true;
                now_ms
            }
        }
    }

    /// The latest time any partition of `group` changed its committed offset.
    pub fn last_change(&self, group: &str) -> Option<i64> {
        self.seen
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|(_, &(_, at))| at)
            .max()
    }

    /// Drops everything known of `group`.
    pub fn forget_group(&mut self, group: &str) {
        let before = self.seen.len();
        self.seen.retain(|(g, _), _| g != group);
        self.dirty |= self.seen.len() != before;
    }

    /// Drops everything known of `topic`.
    pub fn forget_topic(&mut self, topic: &str) {
        let before = self.seen.len();
        self.seen.retain(|(_, tp), _| tp.topic != topic);
        self.dirty |= self.seen.len() != before;
    }

    /// Whether something changed since the last [`CommitTimes::take_entries`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Every entry, sorted, for saving; clears the dirty mark.
    pub fn take_entries(&mut self) -> Vec<CommitEntry> {
        self.dirty = false;
        let mut out: Vec<CommitEntry> = self
            .seen
            .iter()
            .map(|((group, tp), &(offset, at_ms))| CommitEntry {
                group: group.clone(),
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset,
                first_seen_ms: at_ms,
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        out
    }

    /// Restores saved entries.
    pub fn restore(&mut self, entries: Vec<CommitEntry>) {
        for e in entries {
            let tp = TopicPartition {
                topic: e.topic,
                partition: e.partition,
            };
            self.seen.insert((e.group, tp), (e.offset, e.first_seen_ms));
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// One saved commit time.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitEntry {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The committed offset.
    pub offset: i64,
    /// The poll that first saw it.
    pub first_seen_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition: p,
        }
    }

    #[test]
    fn lag_never_goes_negative() {
        assert_eq!(lag_records(10, 25), (15, false));
        assert_eq!(lag_records(25, 25), (0, false));
        assert_eq!(lag_records(30, 25), (0, true));
        assert_eq!(lag_seconds(10_000, 4_000), 6.0);
        assert_eq!(lag_seconds(10_000, 12_000), 0.0);
        assert!(lag_seconds(i64::MAX, i64::MIN).is_finite());
    }

    #[test]
    fn the_end_is_the_larger_of_list_offsets_and_the_high_watermark() {
        // tansu was seen answering `latest` = 1 for a partition of 100 records.
        assert_eq!(end_offset(Some(1), Some(100)), Some(100));
        assert_eq!(end_offset(Some(100), Some(90)), Some(100));
        assert_eq!(end_offset(None, Some(7)), Some(7));
        assert_eq!(end_offset(None, None), None);
    }

    #[test]
    fn a_stuck_offset_is_read_once_and_a_moved_one_is_dropped() {
        let mut times = RecordTimes::default();
        times.begin_poll();
        assert_eq!(times.cached(&tp(0), 5), None);
        times.read(&tp(0), 5, 5, 1_000);
        times.end_poll();
        for _ in 0..3 {
            times.begin_poll();
            assert_eq!(times.cached(&tp(0), 5), Some(RecordTime::Read(1_000)));
            times.end_poll();
        }
        // The group moved on: nothing asks for offset 5 in this poll.
        times.begin_poll();
        assert_eq!(times.cached(&tp(0), 9), None);
        times.end_poll();
        assert_eq!(times.cached_len(), 0);
    }

    #[test]
    fn estimates_interpolate_between_records_read() {
        let mut times = RecordTimes::default();
        times.point(&tp(0), 100, 10_000);
        times.point(&tp(0), 200, 20_000);
        assert_eq!(times.estimate(&tp(0), 150), RecordTime::Estimated(15_000));
        // Below every point (deleted by retention): the oldest record still there.
        assert_eq!(times.estimate(&tp(0), 40), RecordTime::Estimated(10_000));
        assert_eq!(times.estimate(&tp(0), 900), RecordTime::Estimated(20_000));
        assert_eq!(times.estimate(&tp(1), 5), RecordTime::Unknown);
    }

    #[test]
    fn commit_times_are_the_poll_that_first_saw_the_offset() {
        let mut c = CommitTimes::default();
        assert_eq!(c.observe("g", &tp(0), 5, 1_000), 1_000);
        assert_eq!(c.observe("g", &tp(0), 5, 2_000), 1_000);
        assert_eq!(c.observe("g", &tp(0), 6, 3_000), 3_000);
        assert_eq!(c.last_change("g"), Some(3_000));
        let saved = c.take_entries();
        let mut restored = CommitTimes::default();
        restored.restore(saved);
        assert_eq!(restored.observe("g", &tp(0), 6, 9_000), 3_000);
        restored.forget_group("g");
        assert!(restored.is_empty());
    }
}
