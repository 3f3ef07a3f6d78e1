//! One partition's audit books: which event-time bucket every offset's
//! record falls in, and, for each consumer group, which of those records it
//! consumed, skipped or lost to retention.
//!
//! A group's books on a partition begin at its first commit there, and
//! start at the offset it began reading from: its first fetch tied to it
//! (DESIGN §2), or, where no fetch was tied, the log start (committing K
//! asserts that everything from the log start to K was processed). Every
//! record below that start is `skipped`, including records retention
//! deleted before the group's first commit. Every record from the start to
//! the group's high-water mark (its highest committed offset) is exactly one
//! of `expired` (deleted by retention after the first commit, before the
//! group got to it) or `consumed`; every record at or above it is pending.
//! So per bucket, `broker = consumed + pending + expired + skipped` holds by
//! construction, and no count ever falls.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{BucketWidth, CellCounts, CountEntry, Tier};

/// A stretch of consecutive offsets whose records share one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The first offset of the stretch.
    pub first: i64,
    /// How many records.
    pub count: u64,
    /// The bucket they fall in.
    pub bucket: i64,
    /// The timestamp the first record was bucketed by (-1: unknown, as in
    /// state files written before runs kept timestamps).
    #[serde(default = "unknown_ts")]
    pub first_ts: i64,
    /// The timestamp the last record was bucketed by (-1: unknown).
    #[serde(default = "unknown_ts")]
    pub last_ts: i64,
}

fn unknown_ts() -> i64 {
    -1
}

/// How many slices a covered stretch of one run is recorded in: a run lies in
/// one bucket, so its timestamps differ by less than the bucket width, and a
/// few interpolated points describe it well without a value per record.
const LATENCY_SLICES: u64 = 8;

impl Run {
    /// The timestamp of the record at `offset`, interpolated between the
    /// run's first and last (records of one batch are mostly in time order).
    pub fn timestamp_at(&self, offset: i64) -> Option<i64> {
        if self.first_ts < 0 || self.last_ts < 0 {
            return None;
        }
        let span = self.count.saturating_sub(1) as i128;
        if span == 0 {
            return Some(self.first_ts);
        }
        let i = (offset - self.first).clamp(0, span as i64) as i128;
        let ts = self.first_ts as i128 + (self.last_ts as i128 - self.first_ts as i128) * i / span;
        Some(ts as i64)
    }
}

/// The `broker` tier's count of one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Records.
    pub records: u64,
    /// Bytes of their batches, shared out by record.
    pub bytes: u64,
    /// Records without a timestamp (bucketed by append time).
    pub no_timestamp: u64,
}

/// A group's books on one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupBooks {
    /// Where the group's books start: records before it are skipped. Set
    /// at the group's first commit (see the module documentation); books
    /// written before that rule hold the first commit's offset here.
    pub first: i64,
    /// The highest offset the group committed (or that retention moved it to).
    pub high: i64,
    /// Per bucket, records that retention deleted before the group consumed them.
    pub expired: BTreeMap<i64, u64>,
}

/// One group tier's counts of one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupTally {
    /// Records consumed (below the high-water mark, neither skipped nor expired).
    pub consumed: u64,
    /// Records deleted by retention before the group consumed them.
    pub expired: u64,
    /// Records before the offset the group started from.
    pub skipped: u64,
}

/// The books of one partition. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionBooks {
    runs: Vec<Run>,
    /// Per bucket, sorted by bucket: a `Vec`, not a map, for memory (records
    /// mostly come in time order, so a new bucket is pushed at the end).
    broker: Vec<(i64, Tally)>,
    /// Per bucket, records of aborted transactions: not records of the
    /// `broker` tier, counted apart. Rare, so kept apart from the tallies.
    aborted: BTreeMap<i64, u64>,
    start: i64,
    groups: BTreeMap<String, GroupBooks>,
    dirty_broker: BTreeSet<i64>,
    dirty_groups: BTreeSet<(String, i64)>,
}

impl PartitionBooks {
    /// Empty books.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next offset the books expect.
    pub fn end(&self) -> i64 {
        self.runs
            .last()
            .map_or(self.start, |r| r.first + r.count as i64)
    }

    /// The log start offset the books know of.
    pub fn start(&self) -> i64 {
        self.start
    }

    /// Counts records appended at `first_offset` on: one bucket per record,
    /// in offset order, with the batch's bytes shared out by record and the
    /// number of records that had no timestamp. `timestamps` holds the time
    /// each record was bucketed by (-1 where unknown), kept per run for
    /// [`PartitionBooks::latencies`].
    pub fn append(
        &mut self,
        first_offset: i64,
        buckets: &[i64],
        bytes: u64,
        no_timestamp: &[bool],
        timestamps: &[i64],
    ) {
        if buckets.is_empty() {
            return;
        }
        if self.runs.is_empty() && self.start < first_offset {
            // Books opened on a log whose earlier records are unknown to them.
            self.start = first_offset;
        }
        let n = buckets.len() as u64;
        let share = bytes / n;
        let mut extra = bytes % n;
        let ts_at = |i: usize| timestamps.get(i).copied().filter(|t| *t >= 0).unwrap_or(-1);
        // One step per stretch of records in one bucket, not per record: this
        // runs on the produce path.
        let mut i = 0;
        while i < buckets.len() {
            let bucket = buckets[i];
            let j = buckets[i..]
                .iter()
                .position(|b| *b != bucket)
                .map_or(buckets.len(), |k| i + k);
            let len = (j - i) as u64;
            let offset = first_offset + i as i64;
            let unknown = (i..j).any(|k| ts_at(k) < 0);
            let (first_ts, last_ts) = if unknown {
                (-1, -1)
            } else {
                (ts_at(i), ts_at(j - 1))
            };
            self.extend_runs(offset, len, bucket, first_ts, last_ts);
            let t = self.tally_mut(bucket);
            t.records += len;
            let bonus = extra.min(len);
            t.bytes += share * len + bonus;
            extra -= bonus;
            t.no_timestamp += (i..j)
                .filter(|k| no_timestamp.get(*k).copied().unwrap_or(false))
                .count() as u64;
            self.dirty_broker.insert(bucket);
            i = j;
        }
        let mut fresh: Vec<i64> = buckets.to_vec();
        fresh.sort_unstable();
        fresh.dedup();
        self.mark_pending(&fresh);
    }

    /// Every group has new records of `buckets` pending: its cells of these
    /// buckets exist from now on, even while it has consumed none of them.
    fn mark_pending(&mut self, buckets: &[i64]) {
        for g in self.groups.keys() {
            for b in buckets {
                self.dirty_groups.insert((g.clone(), *b));
            }
        }
    }

    /// The `broker` tally of `bucket`, made where there is none.
    fn tally_mut(&mut self, bucket: i64) -> &mut Tally {
        let at = match self.broker.last() {
            Some((last, _)) if *last < bucket => self.broker.len(),
            None => 0,
            _ => match self.broker.binary_search_by_key(&bucket, |(b, _)| *b) {
                Ok(i) => return &mut self.broker[i].1,
                Err(i) => i,
            },
        };
        grow_gently(&mut self.broker);
        self.broker.insert(at, (bucket, Tally::default()));
        &mut self.broker[at].1
    }

    /// Adds `len` records at `offset` in `bucket` to the runs, extending the
    /// last run where they continue it; `first_ts`/`last_ts` are -1 when any
    /// record's timestamp is unknown.
    fn extend_runs(&mut self, offset: i64, len: u64, bucket: i64, first_ts: i64, last_ts: i64) {
        match self.runs.last_mut() {
            Some(r) if r.bucket == bucket && r.first + r.count as i64 == offset => {
                r.count += len;
                if first_ts < 0 || r.first_ts < 0 {
                    r.first_ts = -1;
                }
                r.last_ts = if r.first_ts < 0 { -1 } else { last_ts };
            }
            _ => {
                grow_gently(&mut self.runs);
                self.runs.push(Run {
                    first: offset,
                    count: len,
                    bucket,
                    first_ts,
                    last_ts,
                });
            }
        }
    }

    /// [`PartitionBooks::append`] for `n` records that all fall in `bucket`
    /// and all have a timestamp (`timestamps`, in offset order).
    pub fn append_uniform(
        &mut self,
        first_offset: i64,
        n: u64,
        bucket: i64,
        bytes: u64,
        timestamps: &[i64],
    ) {
        if n == 0 {
            return;
        }
        if self.runs.is_empty() && self.start < first_offset {
            self.start = first_offset;
        }
        let first_ts = timestamps.first().copied().unwrap_or(-1);
        let last_ts = timestamps.last().copied().unwrap_or(-1);
        self.extend_runs(first_offset, n, bucket, first_ts, last_ts);
        let t = self.tally_mut(bucket);
        t.records += n;
        t.bytes += bytes;
        self.dirty_broker.insert(bucket);
        self.mark_pending(&[bucket]);
    }

    /// Counts `len` records at `offset` on, all in `bucket`: `bytes` of
    /// batch, `no_timestamp` of them without a timestamp, the first and last
    /// bucketed by `first_ts` and `last_ts` (-1: unknown). What a transaction
    /// held back is counted this way once it commits.
    #[allow(clippy::too_many_arguments)]
    pub fn append_stretch(
        &mut self,
        offset: i64,
        len: u64,
        bucket: i64,
        bytes: u64,
        no_timestamp: u64,
        first_ts: i64,
        last_ts: i64,
    ) {
        if len == 0 {
            return;
        }
        if self.runs.is_empty() && self.start < offset {
            self.start = offset;
        }
        self.extend_runs(offset, len, bucket, first_ts, last_ts);
        let t = self.tally_mut(bucket);
        t.records += len;
        t.bytes += bytes;
        t.no_timestamp += no_timestamp;
        self.dirty_broker.insert(bucket);
        self.mark_pending(&[bucket]);
    }

    /// The group's high-water mark here: the highest offset its commits
    /// covered (a commit past the books' end counts up to the end only).
    pub fn high_of(&self, group: &str) -> Option<i64> {
        self.groups.get(group).map(|g| g.high)
    }

    /// The runs holding offsets in `[from, to)`, each with the part of it
    /// inside the range as `(run, lo, hi)`.
    fn runs_between(&self, from: i64, to: i64) -> impl Iterator<Item = (&Run, i64, i64)> {
        // The last run starting at or before `from`.
        let i = if from < to {
            self.runs
                .partition_point(|r| r.first <= from)
                .saturating_sub(1)
        } else {
            self.runs.len()
        };
        self.runs[i..]
            .iter()
            .take_while(move |r| r.first < to)
            .filter_map(move |r| {
                let lo = from.max(r.first);
                let hi = to.min(r.first + r.count as i64);
                (hi > lo).then_some((r, lo, hi))
            })
    }

    /// Calls `f(bucket, records)` for the records with offsets in `[from, to)`.
    pub fn each_between(&self, from: i64, to: i64, mut f: impl FnMut(i64, u64)) {
        for (r, lo, hi) in self.runs_between(from, to) {
            f(r.bucket, (hi - lo) as u64);
        }
    }

    /// Calls `f(latency_ms, records)` for the records with offsets in
    /// `[from, to)` as seen at `at_ms`: `at_ms` minus each record's
    /// timestamp, clamped at 0. Records of unknown timestamp are left out.
    pub fn latencies(&self, from: i64, to: i64, at_ms: i64, mut f: impl FnMut(u64, u64)) {
        for (r, lo, hi) in self.runs_between(from, to) {
            let n = (hi - lo) as u64;
            let slices = n.min(LATENCY_SLICES);
            let mut start = lo;
            for k in 0..slices {
                // Slices as even as whole records allow; each is recorded at its middle.
                let len = (n * (k + 1) / slices - n * k / slices) as i64;
                let Some(ts) = r.timestamp_at(start + (len - 1) / 2) else {
                    break;
                };
                f(at_ms.saturating_sub(ts).max(0) as u64, len as u64);
                start += len;
            }
        }
    }

    /// The bucket of the record at `offset`, if the books know it.
    pub fn bucket_at(&self, offset: i64) -> Option<i64> {
        let i = self
            .runs
            .partition_point(|r| r.first <= offset)
            .checked_sub(1)?;
        let r = self.runs[i];
        (offset < r.first + r.count as i64).then_some(r.bucket)
    }

    fn mark_group(&mut self, group: &str, from: i64, to: i64) {
        let mut buckets = Vec::new();
        self.each_between(from, to, |b, _| buckets.push(b));
        for b in buckets {
            self.dirty_groups.insert((group.to_owned(), b));
        }
    }

    /// Whether `group` has committed on this partition.
    pub fn has_group(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Records a commit of `offset` by `group`. Counts only ever grow: a
    /// commit below the high-water mark (a rewind) changes nothing.
    ///
    /// `fetched_from` matters at the group's first commit only: the offset
    /// of its first fetch tied to it, if any. The group's books start there
    /// (within the log start and the commit), or at the log start where no
    /// fetch was tied.
    ///
    /// Returns the offsets `[from, to)` the commit newly covered, if any: the
    /// records the group consumed with it.
    pub fn commit(
        &mut self,
        group: &str,
        offset: i64,
        fetched_from: Option<i64>,
    ) -> Option<(i64, i64)> {
        let offset = offset.clamp(0, self.end());
        match self.groups.get_mut(group) {
            None => {
                // Nothing below the log start can be consumed any more: a
                // first commit below it starts at it.
                let high = offset.max(self.start);
                let first = fetched_from.map_or(self.start, |f| f.clamp(self.start, high));
                self.groups.insert(
                    group.to_owned(),
                    GroupBooks {
                        first,
                        high,
                        expired: BTreeMap::new(),
                    },
                );
                // All of the group's buckets, skipped or pending alike.
                let end = self.end();
                self.mark_group(group, 0, end);
                (high > first).then_some((first, high))
            }
            Some(g) if offset > g.high => {
                let from = g.high;
                g.high = offset;
                self.mark_group(group, from, offset);
                self.settle_expiry(group);
                Some((from, offset))
            }
            Some(_) => {
                self.settle_expiry(group);
                None
            }
        }
    }

    /// Forgets what the agent no longer keeps: the runs and `broker` counts of the
    /// buckets that start before `before_ms`, and the groups' `expired` counts
    /// there. The last run stays whatever its bucket (it carries the books' end),
    /// and so does its bucket's count. Counts of the other buckets do not change.
    /// Returns how many runs were dropped.
    pub fn prune_before(&mut self, before_ms: i64) -> usize {
        let Some(last) = self.runs.last().copied() else {
            return 0;
        };
        let before = self.runs.len();
        let keep_last = self.runs.len() - 1;
        let mut i = 0;
        self.runs.retain(|r| {
            let kept = r.bucket >= before_ms || i == keep_last;
            i += 1;
            kept
        });
        let dropped = before - self.runs.len();
        if dropped > 0 {
            self.runs.shrink_to_fit();
        }
        self.broker
            .retain(|(b, _)| *b >= before_ms || *b == last.bucket);
        if self.broker.capacity() > self.broker.len() + self.broker.len() / 4 + 16 {
            self.broker.shrink_to_fit();
        }
        self.aborted.retain(|b, _| *b >= before_ms);
        for g in self.groups.values_mut() {
            g.expired.retain(|b, _| *b >= before_ms);
        }
        self.dirty_broker.retain(|b| *b >= before_ms);
        self.dirty_groups.retain(|(_, b)| *b >= before_ms);
        dropped
    }

    /// Moves the log start offset (retention deleted what is below it).
    pub fn retain_from(&mut self, start: i64) {
        if start <= self.start {
            return;
        }
        self.start = start;
        let groups: Vec<String> = self.groups.keys().cloned().collect();
        for g in groups {
            self.settle_expiry(&g);
        }
    }

    /// What a group had not consumed below the log start has expired.
    fn settle_expiry(&mut self, group: &str) {
        let start = self.start;
        let Some(g) = self.groups.get(group) else {
            return;
        };
        if g.high >= start {
            return;
        }
        let from = g.high;
        let mut lost = Vec::new();
        self.each_between(from, start, |b, n| lost.push((b, n)));
        if let Some(g) = self.groups.get_mut(group) {
            for (b, n) in &lost {
                *g.expired.entry(*b).or_default() += n;
            }
            g.high = start;
        }
        for (b, _) in lost {
            self.dirty_groups.insert((group.to_owned(), b));
        }
    }

    /// Counts `n` records of an aborted transaction in `bucket`. They are
    /// not records of the `broker` tier (no run holds them, so no group
    /// consumes them); their offsets are a gap in the books.
    pub fn count_aborted(&mut self, bucket: i64, n: u64) {
        if n == 0 {
            return;
        }
        *self.aborted.entry(bucket).or_default() += n;
        self.dirty_broker.insert(bucket);
    }

    /// Records of aborted transactions in `bucket`.
    pub fn aborted(&self, bucket: i64) -> u64 {
        self.aborted.get(&bucket).copied().unwrap_or(0)
    }

    /// The `broker` tier's count of `bucket`.
    pub fn broker(&self, bucket: i64) -> Tally {
        self.broker
            .binary_search_by_key(&bucket, |(b, _)| *b)
            .map_or_else(|_| Tally::default(), |i| self.broker[i].1)
    }

    /// Every bucket with records, and its count.
    pub fn broker_buckets(&self) -> impl Iterator<Item = (i64, Tally)> + '_ {
        self.broker.iter().copied()
    }

    /// A group's counts of `bucket`.
    pub fn group(&self, group: &str, bucket: i64) -> GroupTally {
        let Some(g) = self.groups.get(group) else {
            return GroupTally::default();
        };
        let mut t = GroupTally {
            expired: g.expired.get(&bucket).copied().unwrap_or(0),
            ..GroupTally::default()
        };
        let mut below_first = 0;
        self.each_between(0, g.first, |b, n| {
            if b == bucket {
                below_first += n;
            }
        });
        t.skipped = below_first;
        let mut below_high = 0;
        self.each_between(g.first, g.high, |b, n| {
            if b == bucket {
                below_high += n;
            }
        });
        t.consumed = below_high.saturating_sub(t.expired);
        t
    }

    /// The wire count of one cell, `(tier, bucket)` as [`PartitionBooks::take_dirty`]
    /// names it (`None`: the `broker` tier), of partition `partition` of `topic`.
    pub fn count_entry(
        &self,
        width: BucketWidth,
        topic: &str,
        partition: i32,
        tier: Option<String>,
        bucket: i64,
    ) -> CountEntry {
        let (tier, counts) = match tier {
            None => {
                let t = self.broker(bucket);
                let counts = CellCounts {
                    records: t.records,
                    bytes: t.bytes,
                    no_timestamp: t.no_timestamp,
                    aborted: self.aborted(bucket),
                    ..CellCounts::default()
                };
                (Tier::Broker, counts)
            }
            Some(group) => {
                let t = self.group(&group, bucket);
                let counts = CellCounts {
                    records: t.consumed,
                    expired: t.expired,
                    skipped: t.skipped,
                    ..CellCounts::default()
                };
                (Tier::Group(group), counts)
            }
        };
        CountEntry {
            tier,
            topic: topic.to_owned(),
            partition,
            bucket: width.bucket_of(bucket),
            counts,
        }
    }

    /// The groups that committed on this partition.
    pub fn groups(&self) -> impl Iterator<Item = (&str, &GroupBooks)> {
        self.groups.iter().map(|(n, g)| (n.as_str(), g))
    }

    /// Forgets a group (it was deleted).
    pub fn forget_group(&mut self, group: &str) {
        self.groups.remove(group);
        self.dirty_groups.retain(|(g, _)| g != group);
    }

    /// The (tier, bucket) cells changed since the last call: `None` is the
    /// `broker` tier, `Some(group)` a group's.
    pub fn take_dirty(&mut self) -> Vec<(Option<String>, i64)> {
        let mut out: Vec<(Option<String>, i64)> = std::mem::take(&mut self.dirty_broker)
            .into_iter()
            .map(|b| (None, b))
            .collect();
        out.extend(
            std::mem::take(&mut self.dirty_groups)
                .into_iter()
                .map(|(g, b)| (Some(g), b)),
        );
        out
    }

    /// Marks every cell as changed (after a restart, so that all are sent).
    pub fn mark_all_dirty(&mut self) {
        self.dirty_broker = self.broker.iter().map(|(b, _)| *b).collect();
        self.dirty_broker.extend(self.aborted.keys());
        let mut cells = BTreeSet::new();
        for (name, g) in &self.groups {
            self.each_between(0, g.high, |b, _| {
                cells.insert((name.clone(), b));
            });
            for b in g.expired.keys() {
                cells.insert((name.clone(), *b));
            }
        }
        self.dirty_groups = cells;
    }

    /// What must survive a restart that the log cannot tell: the runs of
    /// records already deleted, and every group's first commit, high-water
    /// mark and expired records.
    pub fn durable_state(&self) -> DurableBooks {
        DurableBooks {
            start: self.start,
            retired: self
                .runs
                .iter()
                .copied()
                .filter(|r| r.first < self.start)
                .collect(),
            retired_tallies: self.runs.iter().filter(|r| r.first < self.start).fold(
                BTreeMap::new(),
                |mut m: BTreeMap<i64, Tally>, r| {
                    let kept = self.retired_share(r);
                    let t = m.entry(r.bucket).or_default();
                    t.records += kept.records;
                    t.bytes += kept.bytes;
                    t.no_timestamp += kept.no_timestamp;
                    m
                },
            ),
            groups: self.groups.clone(),
        }
    }

    /// The part of a run's bucket tally that its records below the start carry.
    fn retired_share(&self, r: &Run) -> Tally {
        let below = (self.start.min(r.first + r.count as i64) - r.first).max(0) as u64;
        let total = self.broker(r.bucket);
        if total.records == 0 {
            return Tally::default();
        }
        Tally {
            records: below,
            bytes: total.bytes * below / total.records,
            no_timestamp: total.no_timestamp * below / total.records,
        }
    }

    /// Everything the books hold, for a reader that cannot read the log again to
    /// rebuild them (the collector): [`PartitionBooks::restore_whole`] gives back
    /// books equal to these.
    pub fn whole_state(&self) -> WholeBooks {
        WholeBooks {
            start: self.start,
            runs: self.runs.clone(),
            broker: self.broker.iter().copied().collect(),
            aborted: self.aborted.clone(),
            groups: self.groups.clone(),
        }
    }

    /// Books restored from [`PartitionBooks::whole_state`]; nothing is dirty.
    pub fn restore_whole(state: WholeBooks) -> Self {
        PartitionBooks {
            runs: state.runs,
            broker: state.broker.into_iter().collect(),
            aborted: state.aborted,
            start: state.start,
            groups: state.groups,
            ..PartitionBooks::default()
        }
    }

    /// Books restored from their durable part; the log's live batches are
    /// appended after this.
    pub fn restore(state: DurableBooks) -> Self {
        let mut books = PartitionBooks {
            start: state.start,
            ..PartitionBooks::default()
        };
        for r in &state.retired {
            let end = r.first + r.count as i64;
            let kept = (state.start.min(end) - r.first).max(0) as u64;
            if kept > 0 {
                let last_ts = r.timestamp_at(r.first + kept as i64 - 1).unwrap_or(-1);
                books.runs.push(Run {
                    count: kept,
                    last_ts,
                    ..*r
                });
            }
        }
        books.broker = state.retired_tallies.into_iter().collect();
        books.groups = state.groups;
        books
    }
}

/// What [`PartitionBooks::durable_state`] keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableBooks {
    /// The log start offset.
    pub start: i64,
    /// Runs of records below the start (deleted from the log).
    pub retired: Vec<Run>,
    /// The `broker` tallies those deleted records carried.
    pub retired_tallies: BTreeMap<i64, Tally>,
    /// Every group's books.
    pub groups: BTreeMap<String, GroupBooks>,
}

/// Makes room for one more element, growing by an eighth rather than doubling:
/// a partition's books hold one run and one tally per bucket for as long as the
/// agent keeps buckets (DESIGN's memory per audited partition), and doubling
/// would leave up to half of that unused.
fn grow_gently<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.len() / 8 + 16);
    }
}

/// The whole of one partition's books (see [`PartitionBooks::whole_state`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WholeBooks {
    /// The log start offset the books know of.
    pub start: i64,
    /// Every run, in offset order.
    pub runs: Vec<Run>,
    /// The `broker` tier's count per bucket.
    pub broker: BTreeMap<i64, Tally>,
    /// Records of aborted transactions per bucket.
    #[serde(default)]
    pub aborted: BTreeMap<i64, u64>,
    /// Every group's books.
    pub groups: BTreeMap<String, GroupBooks>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 records in bucket 0, 5 in bucket 60, 5 in bucket 120 (offsets 0..20).
    fn books() -> PartitionBooks {
        let mut b = PartitionBooks::new();
        b.append(0, &[0; 10], 1000, &[], &[]);
        b.append(10, &[60, 60, 60, 120, 60], 500, &[], &[]);
        b.append(15, &[120; 5], 500, &[], &[]);
        b
    }

    fn balance(b: &PartitionBooks, group: &str, high: i64) {
        for bucket in [0, 60, 120] {
            let t = b.group(group, bucket);
            let mut pending = 0;
            b.each_between(high, b.end(), |bk, n| {
                if bk == bucket {
                    pending += n;
                }
            });
            assert_eq!(
                b.broker(bucket).records,
                t.consumed + t.expired + t.skipped + pending,
                "bucket {bucket}: {t:?} pending {pending}"
            );
        }
    }

    #[test]
    fn pruning_forgets_old_buckets_and_keeps_the_rest_exact() {
        let mut b = books();
        b.commit("g", 12, None);
        let kept_120 = (b.broker(120), b.group("g", 120));
        let end = b.end();
        // Buckets 0 and 60 are past the agent's retention.
        assert_eq!(b.prune_before(120), 3, "the runs of 0, 60 (twice) go");
        assert_eq!(b.broker(0).records, 0);
        assert_eq!(b.broker(60).records, 0);
        assert_eq!((b.broker(120), b.group("g", 120)), kept_120);
        assert_eq!(b.end(), end);
        // The books go on: appends, commits and retention as before.
        b.append(end, &[180, 180], 100, &[], &[]);
        b.commit("g", end + 1, None);
        assert_eq!(b.broker(180).records, 2);
        assert_eq!(b.group("g", 180).consumed, 1);
        // The last run stays even when its bucket is old: it carries the end.
        let mut idle = PartitionBooks::new();
        idle.append(0, &[0, 0], 10, &[], &[]);
        assert_eq!(idle.prune_before(1_000), 0);
        assert_eq!((idle.end(), idle.broker(0).records), (2, 2));
    }

    /// Records of an aborted transaction (offsets 20..23, between committed
    /// data) are counted apart: not `broker` records, never consumed by a
    /// group that commits past them, sent with their bucket, kept across a
    /// restart of the collector, and pruned with their bucket.
    #[test]
    fn aborted_records_are_counted_apart_and_no_group_consumes_them() {
        let width = BucketWidth::new(100).unwrap();
        let mut b = books();
        let _ = b.take_dirty();
        b.count_aborted(120, 3);
        b.append(23, &[120, 180], 200, &[], &[]);
        // Bucket 120: offsets 13, 15..20 and 23.
        assert_eq!((b.broker(120).records, b.aborted(120)), (7, 3));
        b.commit("g", 25, None);
        let g = b.group("g", 120);
        assert_eq!(
            g.consumed, 7,
            "the group consumed the records, not the aborted ones"
        );
        let dirty = b.take_dirty();
        assert!(dirty.contains(&(None, 120)), "{dirty:?}");
        let broker = b.count_entry(width, "t", 0, None, 120);
        assert_eq!((broker.counts.records, broker.counts.aborted), (7, 3));
        let group = b.count_entry(width, "t", 0, Some("g".into()), 120);
        assert_eq!((group.counts.records, group.counts.aborted), (7, 0));
        let restored = PartitionBooks::restore_whole(b.whole_state());
        assert_eq!(restored.aborted(120), 3);
        let mut again = restored.clone();
        again.mark_all_dirty();
        assert!(again.take_dirty().contains(&(None, 120)));
        b.prune_before(180);
        assert_eq!(b.aborted(120), 0);
    }

    #[test]
    fn whole_books_restore_equal_and_count_on_alike() {
        let mut b = books();
        b.commit("g", 12, None);
        b.retain_from(3);
        let mut restored = PartitionBooks::restore_whole(b.whole_state());
        let _ = b.take_dirty();
        assert_eq!(restored, b);
        b.append(20, &[180, 180], 100, &[], &[]);
        restored.append(20, &[180, 180], 100, &[], &[]);
        b.commit("g", 21, None);
        restored.commit("g", 21, None);
        assert_eq!(restored, b);
        assert_eq!(
            restored.group("g", 120).consumed,
            b.group("g", 120).consumed
        );
    }

    #[test]
    fn runs_follow_buckets_record_by_record() {
        let b = books();
        assert_eq!(b.broker(0).records, 10);
        assert_eq!(b.broker(60).records, 4);
        assert_eq!(b.broker(120).records, 6);
        assert_eq!(
            b.broker(0).bytes + b.broker(60).bytes + b.broker(120).bytes,
            2000
        );
        assert_eq!(b.bucket_at(13), Some(120));
        assert_eq!(b.bucket_at(14), Some(60));
        assert_eq!(b.bucket_at(20), None);
        assert_eq!(b.end(), 20);
    }

    #[test]
    fn a_commit_mid_batch_counts_exactly() {
        let mut b = books();
        b.commit("g", 0, None);
        b.commit("g", 12, None);
        assert_eq!(b.group("g", 0).consumed, 10);
        assert_eq!(b.group("g", 60).consumed, 2);
        assert_eq!(b.group("g", 120).consumed, 0);
        balance(&b, "g", 12);
    }

    #[test]
    fn a_rewind_never_decreases_counts() {
        let mut b = books();
        b.commit("g", 0, None);
        b.commit("g", 15, None);
        b.commit("g", 3, None);
        assert_eq!(b.group("g", 0).consumed, 10);
        assert_eq!(b.group("g", 60).consumed, 4);
        b.commit("g", 16, None);
        assert_eq!(b.group("g", 120).consumed, 2);
        balance(&b, "g", 16);
    }

    #[test]
    fn a_late_group_skips_what_came_before_its_first_fetch() {
        let mut b = books();
        // It started reading at 12 (`latest`) and committed there.
        b.commit("late", 12, Some(12));
        let t = b.group("late", 0);
        assert_eq!((t.skipped, t.consumed), (10, 0));
        assert_eq!(b.group("late", 60).skipped, 2);
        b.commit("late", 20, None);
        assert_eq!(b.group("late", 60).consumed, 2);
        assert_eq!(b.group("late", 120).consumed, 6);
        balance(&b, "late", 20);
        // Started at 5, first committed at 12: 5 skipped, 7 consumed.
        b.commit("mid", 12, Some(5));
        let t = b.group("mid", 0);
        assert_eq!((t.skipped, t.consumed), (5, 5));
        assert_eq!(b.group("mid", 60).consumed, 2);
        balance(&b, "mid", 12);
    }

    #[test]
    fn a_first_commit_without_a_tied_fetch_consumed_everything_from_the_log_start() {
        let mut b = books();
        // An admin tool, or a consumer that assigns itself, commits K once.
        assert_eq!(b.commit("admin", 12, None), Some((0, 12)));
        let t = b.group("admin", 0);
        assert_eq!((t.skipped, t.consumed), (0, 10));
        assert_eq!(b.group("admin", 60).consumed, 2);
        balance(&b, "admin", 12);
        // A fetch offset outside [log start, K] is held inside it.
        b.commit("ahead", 12, Some(19));
        assert_eq!(b.group("ahead", 0).skipped, 10);
        assert_eq!(b.group("ahead", 60).skipped, 2);
        balance(&b, "ahead", 12);
    }

    #[test]
    fn retention_expires_what_a_group_had_not_consumed() {
        let mut b = books();
        b.commit("slow", 0, None);
        b.commit("slow", 4, None);
        b.commit("fast", 0, None);
        b.commit("fast", 20, None);
        b.retain_from(12);
        let t = b.group("slow", 0);
        assert_eq!((t.consumed, t.expired), (4, 6));
        assert_eq!(b.group("slow", 60).expired, 2);
        assert_eq!(b.group("fast", 0).expired, 0);
        balance(&b, "slow", 12);
        balance(&b, "fast", 20);
        // The slow group continues from the new start.
        b.commit("slow", 14, None);
        assert_eq!(b.group("slow", 60).consumed, 1);
        assert_eq!(b.group("slow", 120).consumed, 1);
        balance(&b, "slow", 14);
        // What retention deleted before a group's first commit is skipped,
        // not expired: the group did not exist for it.
        b.commit("new", 5, None);
        let t = b.group("new", 0);
        assert_eq!((t.skipped, t.expired, t.consumed), (10, 0, 0));
        assert_eq!(b.group("new", 60).skipped, 2);
        balance(&b, "new", 12);
        // A group that fetched from 3 before retention and first commits
        // after it starts at the log start.
        b.commit("early", 14, Some(3));
        let t = b.group("early", 0);
        assert_eq!((t.skipped, t.expired, t.consumed), (10, 0, 0));
        assert_eq!(b.group("early", 60).consumed, 1);
        assert_eq!(b.group("early", 120).consumed, 1);
        balance(&b, "early", 14);
    }

    #[test]
    fn dirty_cells_name_what_changed() {
        let mut b = books();
        let first = b.take_dirty();
        assert_eq!(first, vec![(None, 0), (None, 60), (None, 120)]);
        // A first commit names every bucket of the group, pending ones too.
        b.commit("g", 0, None);
        let g = |bucket| (Some("g".to_owned()), bucket);
        assert_eq!(b.take_dirty(), vec![g(0), g(60), g(120)]);
        b.commit("g", 11, None);
        assert_eq!(b.take_dirty(), vec![g(0), g(60)]);
        assert!(b.take_dirty().is_empty());
        // New records are pending for every group in their bucket.
        b.append(20, &[180], 10, &[], &[]);
        assert_eq!(b.take_dirty(), vec![(None, 180), g(180)]);
    }

    #[test]
    fn durable_state_and_the_live_log_restore_the_same_books() {
        let mut b = books();
        b.commit("g", 0, None);
        b.commit("g", 3, None);
        b.retain_from(12);
        let state = b.durable_state();
        let json = serde_json::to_string(&state).unwrap();
        let mut restored = PartitionBooks::restore(serde_json::from_str(&json).unwrap());
        // The log still holds offsets 12..20, as one batch spanning two buckets.
        restored.append(12, &[60, 120, 60, 120, 120, 120, 120, 120], 800, &[], &[]);
        for bucket in [0, 60, 120] {
            assert_eq!(
                restored.broker(bucket).records,
                b.broker(bucket).records,
                "bucket {bucket}"
            );
            assert_eq!(
                restored.group("g", bucket),
                b.group("g", bucket),
                "bucket {bucket}"
            );
        }
        assert_eq!(restored.end(), 20);
    }

    #[test]
    fn run_timestamps_are_interpolated_by_offset() {
        let mut b = PartitionBooks::new();
        // Offsets 0..5 in one bucket, stamped 1000, 1010, …, 1040; offset 5 in the next.
        b.append(0, &[0; 5], 50, &[], &[1000, 1010, 1020, 1030, 1040]);
        b.append(5, &[60_000], 10, &[], &[60_000]);
        let r = b.runs[0];
        assert_eq!((r.first_ts, r.last_ts, r.count), (1000, 1040, 5));
        assert_eq!(r.timestamp_at(2), Some(1020));
        assert_eq!(r.timestamp_at(3), Some(1030));
        // Seen at 61 000, each record is 61 000 − its timestamp old.
        let mut seen = Vec::new();
        b.latencies(1, 6, 61_000, |ms, n| seen.push((ms, n)));
        let total: u64 = seen.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 5, "{seen:?}");
        assert_eq!(
            seen,
            vec![
                (59_990, 1),
                (59_980, 1),
                (59_970, 1),
                (59_960, 1),
                (1000, 1)
            ]
        );
        // A timestamp from the future is clamped at 0.
        let mut future = Vec::new();
        b.latencies(5, 6, 59_000, |ms, n| future.push((ms, n)));
        assert_eq!(future, vec![(0, 1)]);
        // A run holding a record of unknown timestamp is left out.
        b.append(6, &[60_000, 60_000], 10, &[], &[60_500, -1]);
        let mut unknown = Vec::new();
        b.latencies(5, 8, 70_000, |ms, n| unknown.push((ms, n)));
        assert!(unknown.is_empty(), "{unknown:?}");
    }

    #[test]
    fn a_long_run_is_recorded_in_a_few_slices_that_cover_it() {
        let mut b = PartitionBooks::new();
        let ts: Vec<i64> = (0..1000).map(|i| 10_000 + i * 10).collect();
        b.append(0, &[0; 1000], 1000, &[], &ts);
        let mut seen = Vec::new();
        b.latencies(0, 1000, 30_000, |ms, n| seen.push((ms, n)));
        assert_eq!(seen.len() as u64, LATENCY_SLICES);
        assert_eq!(seen.iter().map(|(_, n)| n).sum::<u64>(), 1000);
        let mean = seen.iter().map(|(ms, n)| ms * n).sum::<u64>() / 1000;
        // The exact mean is 30 000 − (10 000 + 4 995).
        assert!((15_000..=15_010).contains(&mean), "{seen:?}");
    }

    #[test]
    fn a_commit_returns_what_it_covered_for_group_latency() {
        let mut b = PartitionBooks::new();
        b.append(0, &[0; 4], 40, &[], &[100, 200, 300, 400]);
        assert_eq!(
            b.commit("g", 1, Some(1)),
            None,
            "a first commit where the group began reading consumes nothing"
        );
        let covered = b.commit("g", 3, None);
        assert_eq!(covered, Some((1, 3)));
        let (from, to) = covered.unwrap();
        let mut seen = Vec::new();
        b.latencies(from, to, 1_000, |ms, n| seen.push((ms, n)));
        assert_eq!(seen, vec![(800, 1), (700, 1)]);
        assert_eq!(b.commit("g", 2, None), None, "a rewind covers nothing");
        assert_eq!(b.commit("g", 3, None), None, "a repeat covers nothing");
    }

    #[test]
    fn run_timestamps_survive_durable_state_and_old_state_reads_as_unknown() {
        let mut b = PartitionBooks::new();
        b.append(0, &[0; 4], 40, &[], &[100, 200, 300, 400]);
        b.append(4, &[60_000; 2], 20, &[], &[60_000, 60_010]);
        b.retain_from(2);
        let restored = PartitionBooks::restore(b.durable_state());
        let r = restored.runs[0];
        assert_eq!((r.first, r.count, r.first_ts, r.last_ts), (0, 2, 100, 200));
        let old: Run = serde_json::from_str(r#"{"first":0,"count":3,"bucket":0}"#).unwrap();
        assert_eq!((old.first_ts, old.timestamp_at(1)), (-1, None));
    }

    #[test]
    fn a_uniform_batch_counts_like_record_by_record() {
        let mut a = books();
        let mut b = books();
        a.commit("g", 5, None);
        b.commit("g", 5, None);
        a.append(
            20,
            &[180; 4],
            40,
            &[],
            &[180_001, 180_002, 180_003, 180_004],
        );
        b.append_uniform(20, 4, 180, 40, &[180_001, 180_002, 180_003, 180_004]);
        assert_eq!(a.broker(180), b.broker(180));
        assert_eq!(a.runs, b.runs);
        assert_eq!(a.take_dirty(), b.take_dirty());
    }

    /// A seeded generator for the property test (splitmix64).
    struct Seeded(u64);

    impl Seeded {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// A number in `[lo, hi]`.
        fn between(&mut self, lo: i64, hi: i64) -> i64 {
            lo + (self.next() % (hi - lo + 1) as u64) as i64
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Is {
        Pending,
        Consumed,
        Expired,
        Skipped,
    }

    /// What the books must say, record by record: DESIGN §2 stated once
    /// more, the slow way.
    #[derive(Default)]
    struct Oracle {
        buckets: Vec<i64>,
        start: i64,
        groups: BTreeMap<String, OracleGroup>,
    }

    /// A group's first tied fetch, and once it committed, its high-water
    /// mark and what each record is to it.
    type OracleGroup = (Option<i64>, Option<(i64, Vec<Is>)>);

    impl Oracle {
        fn end(&self) -> i64 {
            self.buckets.len() as i64
        }

        fn append(&mut self, buckets: &[i64]) {
            self.buckets.extend_from_slice(buckets);
            for (_, state) in self.groups.values_mut() {
                if let Some((_, is)) = state {
                    is.resize(self.buckets.len(), Is::Pending);
                }
            }
        }

        fn fetch(&mut self, group: &str, offset: i64) {
            let g = self.groups.entry(group.to_owned()).or_default();
            if g.1.is_none() && g.0.is_none() {
                g.0 = Some(offset);
            }
        }

        fn commit(&mut self, group: &str, offset: i64) {
            let offset = offset.clamp(0, self.end());
            let (start, end) = (self.start, self.end());
            let g = self.groups.entry(group.to_owned()).or_default();
            match &mut g.1 {
                None => {
                    let high = offset.max(start);
                    let first = g.0.map_or(start, |f| f.clamp(start, high));
                    let is = (0..end)
                        .map(|o| match o {
                            o if o < first => Is::Skipped,
                            o if o < high => Is::Consumed,
                            _ => Is::Pending,
                        })
                        .collect();
                    g.1 = Some((high, is));
                }
                Some((high, is)) => {
                    for o in *high..offset {
                        is[o as usize] = Is::Consumed;
                    }
                    *high = offset.max(*high);
                }
            }
        }

        fn retain_from(&mut self, start: i64) {
            if start <= self.start {
                return;
            }
            self.start = start;
            for (_, state) in self.groups.values_mut() {
                if let Some((high, is)) = state {
                    for o in *high..start {
                        is[o as usize] = Is::Expired;
                    }
                    *high = start.max(*high);
                }
            }
        }

        fn count(&self, group: &str, bucket: i64, what: Is) -> u64 {
            let Some((_, Some((_, is)))) = self.groups.get(group) else {
                return 0;
            };
            is.iter()
                .zip(&self.buckets)
                .filter(|(i, b)| **i == what && **b == bucket)
                .count() as u64
        }
    }

    /// Random appends (buckets going back in time too), fetches, commits
    /// forward and back, retention and restarts: every group's books match
    /// the oracle, balance per bucket, and never fall.
    #[test]
    fn books_balance_and_never_fall_under_random_histories() {
        const GROUPS: [&str; 3] = ["a", "b", "c"];
        for seed in 0..200u64 {
            let mut rng = Seeded(seed);
            let mut books = PartitionBooks::new();
            let mut oracle = Oracle::default();
            let mut last: BTreeMap<(&str, i64), GroupTally> = BTreeMap::new();
            for step in 0..120 {
                let end = oracle.end();
                let what = rng.next() % 100;
                let group = GROUPS[(rng.next() % 3) as usize];
                let op = match what {
                    0..=34 => {
                        let n = rng.between(1, 12) as usize;
                        let newest = rng.between(0, 10);
                        // Mostly one bucket, sometimes older ones mixed in.
                        let buckets: Vec<i64> = (0..n)
                            .map(|_| {
                                if rng.next().is_multiple_of(4) {
                                    rng.between(0, newest) * 60
                                } else {
                                    newest * 60
                                }
                            })
                            .collect();
                        let bytes = rng.next() % 5_000;
                        if buckets.iter().all(|b| *b == buckets[0]) && rng.next().is_multiple_of(2)
                        {
                            books.append_uniform(end, n as u64, buckets[0], bytes, &[]);
                        } else {
                            books.append(end, &buckets, bytes, &[], &[]);
                        }
                        oracle.append(&buckets);
                        format!("append {buckets:?}")
                    }
                    35..=49 => {
                        let offset = rng.between(oracle.start, end);
                        oracle.fetch(group, offset);
                        format!("{group} fetches at {offset}")
                    }
                    50..=84 => {
                        let offset = rng.between(0, end + 2);
                        let fetched = match &oracle.groups.get(group) {
                            Some((f, None)) => *f,
                            _ => None,
                        };
                        books.commit(group, offset, fetched);
                        oracle.commit(group, offset);
                        format!("{group} commits {offset}")
                    }
                    85..=93 => {
                        let start = rng.between(oracle.start, end);
                        books.retain_from(start);
                        oracle.retain_from(start);
                        format!("retention to {start}")
                    }
                    _ => {
                        let json = serde_json::to_string(&books.durable_state()).unwrap();
                        let mut restored =
                            PartitionBooks::restore(serde_json::from_str(&json).unwrap());
                        restored.retain_from(oracle.start);
                        // The log's live records, in batches of any size.
                        let mut at = oracle.start;
                        while at < end {
                            let n = rng.between(1, end - at);
                            let batch = &oracle.buckets[at as usize..(at + n) as usize];
                            restored.append(at, batch, 100, &[], &[]);
                            at += n;
                        }
                        books = restored;
                        "restart".to_owned()
                    }
                };
                let ctx = || format!("seed {seed}, step {step} ({op})");
                assert_eq!(books.end(), oracle.end(), "{}", ctx());
                let buckets: BTreeSet<i64> = oracle.buckets.iter().copied().collect();
                for &bucket in &buckets {
                    let records = oracle.buckets.iter().filter(|b| **b == bucket).count() as u64;
                    assert_eq!(books.broker(bucket).records, records, "{}", ctx());
                    for group in GROUPS {
                        if !books.has_group(group) {
                            continue;
                        }
                        let t = books.group(group, bucket);
                        let want = GroupTally {
                            consumed: oracle.count(group, bucket, Is::Consumed),
                            expired: oracle.count(group, bucket, Is::Expired),
                            skipped: oracle.count(group, bucket, Is::Skipped),
                        };
                        assert_eq!(t, want, "group {group}, bucket {bucket}: {}", ctx());
                        let high = books.groups[group].high;
                        let mut pending = 0;
                        books.each_between(high, books.end(), |b, n| {
                            if b == bucket {
                                pending += n;
                            }
                        });
                        assert_eq!(
                            pending,
                            oracle.count(group, bucket, Is::Pending),
                            "{}",
                            ctx()
                        );
                        assert_eq!(
                            records,
                            t.consumed + pending + t.expired + t.skipped,
                            "group {group}, bucket {bucket}: {}",
                            ctx()
                        );
                        if let Some(was) = last.insert((group, bucket), t) {
                            assert!(
                                t.consumed >= was.consumed
                                    && t.expired >= was.expired
                                    && t.skipped >= was.skipped,
                                "group {group}, bucket {bucket} fell from {was:?} to {t:?}: {}",
                                ctx()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn records_without_timestamp_are_counted_apart() {
        let mut b = PartitionBooks::new();
        b.append(0, &[60, 60, 60], 30, &[false, true, true], &[]);
        assert_eq!(b.broker(60).no_timestamp, 2);
    }
}
