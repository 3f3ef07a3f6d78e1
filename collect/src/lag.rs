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

/// The record timestamps read on one partition: a cache keyed by committed offset (so
/// that a group whose offset does not move costs no read), and the points estimates
/// interpolate between.
#[derive(Debug, Default)]
pub struct PartitionTimes {
    /// Committed offset → what was read there, and the poll that last used it.
    cache: HashMap<i64, (RecordTime, u64)>,
    /// Offsets and the timestamps of the records read at them.
    points: BTreeMap<i64, i64>,
}

impl PartitionTimes {
    /// What is cached for `offset`, marking it used in poll `generation`.
    pub fn cached(&mut self, offset: i64, generation: u64) -> Option<RecordTime> {
        self.cache.get_mut(&offset).map(|(time, used)| {
            *used = generation;
            *time
        })
    }

    /// Records a read in poll `generation`: the first record at or after `offset` is
    /// at `record_offset` with `timestamp_ms`.
    ///
    /// A record without a timestamp (-1) is timed by when it was first read, as the
    /// books bucket it: its lag grows from then, rather than from 1970.
    pub fn read(&mut self, offset: i64, record_offset: i64, timestamp_ms: i64, generation: u64) {
        if timestamp_ms < 0 {
            let first_seen = match self.cache.get(&offset) {
                Some((RecordTime::Read(t), _)) => *t,
                _ => crate::now_ms(),
            };
            self.cache
                .insert(offset, (RecordTime::Read(first_seen), generation));
            return;
        }
        self.cache
            .insert(offset, (RecordTime::Read(timestamp_ms), generation));
        self.point(record_offset, timestamp_ms);
    }

    /// Adds an (offset, timestamp) point without caching a committed offset (a record
    /// read elsewhere on the partition, e.g. at the log start).
    pub fn point(&mut self, offset: i64, timestamp_ms: i64) {
        if timestamp_ms < 0 {
            return;
        }
        self.points.insert(offset, timestamp_ms);
        while self.points.len() > MAX_POINTS {
            // Keep the newest: lag is about the records not yet consumed.
            self.points.pop_first();
        }
    }

    /// Estimates the timestamp at `offset` from the points read (the next poll tries
    /// to read the record again).
    pub fn estimate(&self, offset: i64) -> RecordTime {
        interpolate(&self.points, offset).map_or(RecordTime::Unknown, RecordTime::Estimated)
    }

    /// Ends poll `generation`: drops the offsets it did not use (moved on, or groups gone).
    pub fn end_poll(&mut self, generation: u64) {
        self.cache.retain(|_, (_, used)| *used == generation);
    }

    /// Cached offsets.
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

/// The most partitions per topic a group's commit times are kept for (a partition
/// number comes off the wire; the caller passes only partitions the metadata has).
const MAX_PARTITION: i32 = 1 << 20;

/// One group's commit times: per topic, per partition (offset, first seen).
#[derive(Debug, Default)]
struct GroupCommits {
    topics: HashMap<String, Vec<Option<(i64, i64)>>>,
    last_change: Option<i64>,
}

/// When each group committed what it has: the time `__consumer_offsets` gives for the
/// commit where the collector reads it, else the poll that first saw the offset (a
/// collector that cannot read `__consumer_offsets` sees commits only by polling).
/// Looked up by name without allocating; only a change allocates.
#[derive(Debug, Default)]
pub struct CommitTimes {
    groups: HashMap<String, GroupCommits>,
    dirty: bool,
}

impl CommitTimes {
    /// Notes `offset` for (group, topic, partition) at `now_ms`; returns when it was
    /// first seen.
    pub fn observe(
        &mut self,
        group: &str,
        topic: &str,
        partition: i32,
        offset: i64,
        now_ms: i64,
    ) -> i64 {
        self.observe_logged(group, topic, partition, offset, None, now_ms)
            .0
    }

    /// Notes `offset` for (group, topic, partition) at `now_ms`, with the time the
    /// commit log (`__consumer_offsets`) gives for a commit of that offset, where it
    /// has one. Returns the commit time to report and whether it changed (a new
    /// offset, or the same offset committed again).
    ///
    /// - A commit of an offset already held moves its time to the logged time when that
    ///   is later (the group re-committed the same offset: Burrow's `stall`, not `stop`).
    /// - A new offset takes the logged time, else `now_ms` (the poll that first saw it).
    /// - The time reported for a partition never goes back (the agent takes a commit
    ///   older than the last one it saw for a resent sample): a logged time earlier
    ///   than the one already reported, as when the log is read only after polling saw
    ///   the offset, leaves the reported one.
    pub fn observe_logged(
        &mut self,
        group: &str,
        topic: &str,
        partition: i32,
        offset: i64,
        logged_ms: Option<i64>,
        now_ms: i64,
    ) -> (i64, bool) {
        let Ok(index) = usize::try_from(partition) else {
            return (logged_ms.unwrap_or(now_ms), true);
        };
        if partition >= MAX_PARTITION {
            return (logged_ms.unwrap_or(now_ms), true);
        }
        let held = self
            .groups
            .get(group)
            .and_then(|g| g.topics.get(topic))
            .and_then(|parts| parts.get(index))
            .copied()
            .flatten();
        let at = match held {
            Some((o, at)) if o == offset => match logged_ms {
                Some(logged) if logged > at => logged,
                _ => return (at, false),
            },
            Some((_, at)) => logged_ms.unwrap_or(now_ms).max(at),
            None => logged_ms.unwrap_or(now_ms),
        };
        let g = match self.groups.get_mut(group) {
            Some(g) => g,
            None => self.groups.entry(group.to_owned()).or_default(),
        };
        let parts = match g.topics.get_mut(topic) {
            Some(p) => p,
            None => g.topics.entry(topic.to_owned()).or_default(),
        };
        if parts.len() <= index {
            parts.resize(index + 1, None);
        }
        parts[index] = Some((offset, at));
        g.last_change = Some(g.last_change.map_or(at, |l| l.max(at)));
        self.dirty = true;
        (at, true)
    }

    /// The latest time any partition of `group` changed its committed offset.
    pub fn last_change(&self, group: &str) -> Option<i64> {
        self.groups.get(group).and_then(|g| g.last_change)
    }

    /// Drops everything known of `group`.
    pub fn forget_group(&mut self, group: &str) {
        self.dirty |= self.groups.remove(group).is_some();
    }

    /// Drops everything known of `topic`.
    pub fn forget_topic(&mut self, topic: &str) {
        for g in self.groups.values_mut() {
            self.dirty |= g.topics.remove(topic).is_some();
        }
    }

    /// Whether something changed since the last [`CommitTimes::take_entries`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Every entry, sorted, for saving; clears the dirty mark.
    pub fn take_entries(&mut self) -> Vec<CommitEntry> {
        self.dirty = false;
        let mut out = Vec::new();
        for (group, g) in &self.groups {
            for (topic, parts) in &g.topics {
                for (partition, entry) in parts.iter().enumerate() {
                    if let Some((offset, at)) = entry {
                        out.push(CommitEntry {
                            group: group.clone(),
                            topic: topic.clone(),
                            partition: i32::try_from(partition).unwrap_or(i32::MAX),
                            offset: *offset,
                            first_seen_ms: *at,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        out
    }

    /// Restores saved entries.
    pub fn restore(&mut self, entries: Vec<CommitEntry>) {
        for e in entries {
            let Ok(index) = usize::try_from(e.partition) else {
                continue;
            };
            if e.partition >= MAX_PARTITION {
                continue;
            }
            let g = self.groups.entry(e.group).or_default();
            let parts = g.topics.entry(e.topic).or_default();
            if parts.len() <= index {
                parts.resize(index + 1, None);
            }
            parts[index] = Some((e.offset, e.first_seen_ms));
            g.last_change = Some(
                g.last_change
                    .map_or(e.first_seen_ms, |l| l.max(e.first_seen_ms)),
            );
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.groups
            .values()
            .flat_map(|g| g.topics.values())
            .map(|parts| parts.iter().flatten().count())
            .sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    /// Its commit time: from `__consumer_offsets`, else the poll that first saw it.
    pub first_seen_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut times = PartitionTimes::default();
        assert_eq!(times.cached(5, 1), None);
        times.read(5, 5, 1_000, 1);
        times.end_poll(1);
        for generation in 2..5 {
            assert_eq!(times.cached(5, generation), Some(RecordTime::Read(1_000)));
            times.end_poll(generation);
        }
        // The group moved on: nothing asks for offset 5 in this poll.
        assert_eq!(times.cached(9, 5), None);
        times.end_poll(5);
        assert_eq!(times.cached_len(), 0);
    }

    /// A group stuck on a record without a timestamp lags from when the record was
    /// first read (as the books bucket it), not from 1970; the time stays put while
    /// the group does, and such a record gives estimates no point.
    #[test]
    fn a_record_without_a_timestamp_is_timed_by_its_first_read() {
        let mut times = PartitionTimes::default();
        let before = crate::now_ms();
        times.read(5, 5, -1, 1);
        let Some(RecordTime::Read(first)) = times.cached(5, 1) else {
            panic!("the read is cached")
        };
        assert!((before..=crate::now_ms()).contains(&first), "{first}");
        assert!(lag_seconds(crate::now_ms(), first) < 60.0);
        times.end_poll(1);
        std::thread::sleep(std::time::Duration::from_millis(5));
        times.read(5, 5, -1, 2);
        assert_eq!(times.cached(5, 2), Some(RecordTime::Read(first)));
        assert_eq!(times.estimate(5), RecordTime::Unknown);
    }

    #[test]
    fn estimates_interpolate_between_records_read() {
        let mut times = PartitionTimes::default();
        assert_eq!(times.estimate(5), RecordTime::Unknown);
        times.point(100, 10_000);
        times.point(200, 20_000);
        assert_eq!(times.estimate(150), RecordTime::Estimated(15_000));
        // Below every point (deleted by retention): the oldest record still there.
        assert_eq!(times.estimate(40), RecordTime::Estimated(10_000));
        assert_eq!(times.estimate(900), RecordTime::Estimated(20_000));
    }

    #[test]
    fn logged_commit_times_show_re_commits_and_never_go_back() {
        let mut c = CommitTimes::default();
        // The log gives the commit's own time, not the poll's.
        assert_eq!(
            c.observe_logged("g", "t", 0, 5, Some(900), 1_000),
            (900, true)
        );
        assert_eq!(
            c.observe_logged("g", "t", 0, 5, Some(900), 2_000),
            (900, false)
        );
        // The same offset committed again: a new commit time (stall, not stop).
        assert_eq!(
            c.observe_logged("g", "t", 0, 5, Some(1_900), 3_000),
            (1_900, true)
        );
        assert_eq!(c.last_change("g"), Some(1_900));
        // Not in the log (yet): the poll's time, and a later logged time for that
        // offset that is older does not take it back.
        assert_eq!(c.observe_logged("g", "t", 0, 6, None, 4_000), (4_000, true));
        assert_eq!(
            c.observe_logged("g", "t", 0, 6, Some(3_500), 5_000),
            (4_000, false)
        );
        // A new offset whose logged time is below the last reported one.
        assert_eq!(
            c.observe_logged("g", "t", 0, 7, Some(3_900), 6_000),
            (4_000, true)
        );
        assert_eq!(
            c.observe_logged("g", "t", 0, 8, Some(6_500), 7_000),
            (6_500, true)
        );
        assert_eq!(c.observe("g", "t", 0, 8, 8_000), 6_500);
    }

    #[test]
    fn commit_times_are_the_poll_that_first_saw_the_offset() {
        let mut c = CommitTimes::default();
        assert_eq!(c.observe("g", "t", 0, 5, 1_000), 1_000);
        assert_eq!(c.observe("g", "t", 0, 5, 2_000), 1_000);
        assert_eq!(c.observe("g", "t", 1, 7, 2_500), 2_500);
        assert_eq!(c.observe("g", "t", 0, 6, 3_000), 3_000);
        assert_eq!(c.last_change("g"), Some(3_000));
        assert_eq!(c.len(), 2);
        // A partition number off the wire never sizes memory.
        assert_eq!(c.observe("g", "t", i32::MAX, 1, 4_000), 4_000);
        assert_eq!(c.len(), 2);
        let saved = c.take_entries();
        assert!(!c.is_dirty());
        let mut restored = CommitTimes::default();
        restored.restore(saved);
        assert_eq!(restored.observe("g", "t", 0, 6, 9_000), 3_000);
        assert_eq!(restored.last_change("g"), Some(3_000));
        restored.forget_topic("t");
        assert!(restored.is_empty());
        restored.forget_group("g");
        assert_eq!(restored.last_change("g"), None);
    }
}
