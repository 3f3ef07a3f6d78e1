//! Consumer group health, after Burrow's model.
//!
//! Each (group, topic, partition) keeps a window of its last N commits
//! ([`HealthConfig::window`], default 10) and the latest lag sample. A commit
//! enters the window when the sample's commit time or committed offset changes,
//! so a group that keeps committing the same offset still fills its window —
//! that is how a stall shows. [`PartitionHealth::status`] judges the partition;
//! [`group_status`] rolls the partitions up to the worst of them.
//!
//! # Rules, in the order they are checked
//!
//! The order is Burrow's evaluator's (LinkedIn Burrow, `Consumer Lag Evaluation
//! Rules` on its wiki, and its caching evaluator): the first rule that holds decides.
//!
//! 1. **Lag now is zero → `ok`.** A caught-up consumer is never in error.
//! 2. **No commit seen → `ok`.** There is nothing to judge yet.
//! 3. **`stop`**: the group has not committed for longer than the stop threshold,
//!    and the records it has not consumed have waited longer than that too. The
//!    threshold is the smaller of
//!    - Burrow's: the time the window took, from its oldest to its newest commit;
//!    - tally's: [`HealthConfig::stop_after_ms`] (default 5 minutes). On a
//!      low-traffic topic Burrow's window spans hours, so Burrow alone would call
//!      a dead consumer stopped only hours later.
//!
//!    Checked before the zero-lag rule, as Burrow does, because the window of a
//!    stopped consumer may be old and hold a zero.
//! 4. **`rewind`**: the committed offset went backwards within the window and has
//!    not since climbed back to where it was. Checked before the zero-lag rule,
//!    as Burrow does since its PR #716: a consumer reset to the start of the log
//!    often had zero lag just before.
//! 5. **Some commit in the window had zero lag → `ok`.**
//! 6. **`stall`**: the offset is the same in every commit of the window and the
//!    lag did not fall: the consumer commits but does not move.
//! 7. **`warn`**: the lag did not fall between any two commits of the window and
//!    ends higher than it started: the consumer moves, but falls behind.
//! 8. Otherwise `ok`.
//!
//! Rules 4, 6 and 7 compare commits, so they need at least two.
//!
//! # Where tally differs from Burrow, and why
//!
//! - *Incomplete windows.* Burrow's stop rule on a window of one commit calls any
//!   lagging consumer stopped the moment after its first commit, and on a window
//!   of two it fires after a single late commit. tally scales the span of an
//!   incomplete window up to a full one (the span divided by its intervals, times
//!   N − 1), so a new group waits as many commit intervals as a full window would.
//!   On a full window the rule is Burrow's exactly.
//! - *Recently caught up.* Burrow does not call a partition stopped when one of
//!   the broker end offsets it fetched recently was at or below the last commit,
//!   which keeps the first record after a quiet spell from looking like a stop
//!   (its issue #303). tally gets the same from the sample's `lag_seconds`, the
//!   age of the oldest unconsumed record: a stop needs that record to have waited
//!   longer than the threshold. Where a source does not know that age (lag above
//!   zero but `lag_seconds` zero), the time since the last commit decides alone.
//! - *Flat lag.* Burrow's wiki warns on lag that is "fixed or increasing". tally
//!   warns only when the lag also ended higher than it started: a lag that holds
//!   exactly steady is a consumer keeping pace, and with samples once a second
//!   a steady producer shows exactly that.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tally_audit::LagSample;

use crate::compact::{get_f64, get_i64, get_u64, put_f64, put_i64, put_u64};

pub use tally_audit::snapshot::{CommitPoint, GroupStatus, PartitionStatus};

/// The default number of commits kept per partition.
pub const DEFAULT_WINDOW: usize = 10;
/// The default time without a commit, while records wait, after which a partition is stopped.
pub const DEFAULT_STOP_AFTER_MS: i64 = 300_000;

/// How partitions are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthConfig {
    /// Commits kept per partition (Burrow's `intervals`); 0 counts as 1.
    pub window: usize,
    /// A partition whose group has not committed for this long, while its oldest
    /// unconsumed record has waited this long, is stopped, however long its window is.
    pub stop_after_ms: i64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            window: DEFAULT_WINDOW,
            stop_after_ms: DEFAULT_STOP_AFTER_MS,
        }
    }
}

impl HealthConfig {
    fn capacity(&self) -> usize {
        self.window.max(1)
    }
}

/// The commit window and latest lag of one group on one partition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PartitionHealth {
    commits: VecDeque<CommitPoint>,
    committed: i64,
    end_offset: i64,
    start_offset: i64,
    lag_records: u64,
    lag_seconds: f64,
}

impl PartitionHealth {
    /// Takes in one lag sample: it always becomes the current lag, and its commit
    /// enters the window when it is a new one (a new commit time or a new offset).
    ///
    /// A sample whose commit is older than the newest commit already seen is a
    /// resent or reordered one and is ignored, so it cannot pass for a rewind.
    pub fn observe(&mut self, sample: &LagSample, cfg: &HealthConfig) {
        let has_commit = sample.committed >= 0 && sample.commit_at_ms >= 0;
        if has_commit
            && self
                .commits
                .back()
                .is_some_and(|last| sample.commit_at_ms < last.at_ms)
        {
            return;
        }
        self.committed = sample.committed;
        self.end_offset = sample.end_offset;
        self.start_offset = sample.start_offset;
        self.lag_records = sample.lag_records;
        self.lag_seconds = sample.lag_seconds;
        if has_commit
            && self.commits.back().is_none_or(|last| {
                last.at_ms != sample.commit_at_ms || last.offset != sample.committed
            })
        {
            self.commits.push_back(CommitPoint {
                offset: sample.committed,
                lag: sample.lag_records,
                at_ms: sample.commit_at_ms,
            });
        }
        while self.commits.len() > cfg.capacity() {
            self.commits.pop_front();
        }
    }

    /// Appends the health in the compact form [`PartitionHealth::decode`]
    /// reads: the latest sample, then the window's commits, each as its
    /// difference from the one before (a byte or two where they move little).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_i64(out, self.committed);
        put_i64(out, self.end_offset.wrapping_sub(self.committed));
        put_i64(out, self.start_offset);
        put_u64(out, self.lag_records);
        put_f64(out, self.lag_seconds);
        put_u64(out, self.commits.len() as u64);
        let (mut offset, mut lag, mut at_ms) = (self.committed, 0u64, 0i64);
        for c in &self.commits {
            put_i64(out, c.offset.wrapping_sub(offset));
            put_i64(out, c.lag.wrapping_sub(lag) as i64);
            put_i64(out, c.at_ms.wrapping_sub(at_ms));
            (offset, lag, at_ms) = (c.offset, c.lag, c.at_ms);
        }
    }

    /// Reads what [`PartitionHealth::encode`] wrote from the front of
    /// `input`; None where it is cut short or is not that encoding.
    pub fn decode(input: &mut &[u8]) -> Option<PartitionHealth> {
        let committed = get_i64(input)?;
        let end_offset = committed.wrapping_add(get_i64(input)?);
        let start_offset = get_i64(input)?;
        let lag_records = get_u64(input)?;
        let lag_seconds = get_f64(input)?;
        let n = get_u64(input)?;
        // A commit takes 3 bytes at least: a larger count is not this encoding.
        if n > (input.len() / 3) as u64 {
            return None;
        }
        let mut commits = VecDeque::with_capacity(n as usize);
        let (mut offset, mut lag, mut at_ms) = (committed, 0u64, 0i64);
        for _ in 0..n {
            offset = offset.wrapping_add(get_i64(input)?);
            lag = lag.wrapping_add(get_i64(input)? as u64);
            at_ms = at_ms.wrapping_add(get_i64(input)?);
            commits.push_back(CommitPoint { offset, lag, at_ms });
        }
        Some(PartitionHealth {
            commits,
            committed,
            end_offset,
            start_offset,
            lag_records,
            lag_seconds,
        })
    }

    /// The partition's status at `now_ms` (see the module documentation for the rules).
    pub fn status(&self, now_ms: i64, cfg: &HealthConfig) -> PartitionStatus {
        if self.lag_records == 0 {
            return PartitionStatus::Ok;
        }
        // A window longer than configured (the setting shrank since) is judged on its newest part.
        let skip = self.commits.len().saturating_sub(cfg.capacity());
        let window: Vec<&CommitPoint> = self.commits.iter().skip(skip).collect();
        let (Some(first), Some(last)) = (window.first(), window.last()) else {
            return PartitionStatus::Ok;
        };
        if self.is_stopped(&window, now_ms, cfg) {
            return PartitionStatus::Stop;
        }
        if window.len() < 2 {
            return PartitionStatus::Ok;
        }
        if is_unrecovered_rewind(&window) {
            return PartitionStatus::Rewind;
        }
        if window.iter().any(|c| c.lag == 0) {
            return PartitionStatus::Ok;
        }
        let lag_never_falls = window.windows(2).all(|pair| pair[1].lag >= pair[0].lag);
        if lag_never_falls && window.iter().all(|c| c.offset == first.offset) {
            return PartitionStatus::Stall;
        }
        if lag_never_falls && last.lag > first.lag {
            return PartitionStatus::Warn;
        }
        PartitionStatus::Ok
    }

    /// The commits in the window, oldest first.
    pub fn commits(&self) -> impl Iterator<Item = &CommitPoint> {
        self.commits.iter()
    }

    /// When the newest commit in the window was made.
    pub fn last_commit_ms(&self) -> Option<i64> {
        self.commits.back().map(|c| c.at_ms)
    }

    /// The committed offset of the latest sample (-1 when the group never committed).
    pub fn committed(&self) -> i64 {
        self.committed
    }

    /// The log end offset of the latest sample.
    pub fn end_offset(&self) -> i64 {
        self.end_offset
    }

    /// The log start offset of the latest sample.
    pub fn start_offset(&self) -> i64 {
        self.start_offset
    }

    /// The lag in records of the latest sample.
    pub fn lag_records(&self) -> u64 {
        self.lag_records
    }

    /// The lag in seconds of the latest sample.
    pub fn lag_seconds(&self) -> f64 {
        self.lag_seconds
    }

    fn is_stopped(&self, window: &[&CommitPoint], now_ms: i64, cfg: &HealthConfig) -> bool {
        let Some(last) = window.last() else {
            return false;
        };
        let threshold = match burrow_stop_gap(window, cfg.capacity()) {
            Some(gap) => gap.min(cfg.stop_after_ms),
            None => cfg.stop_after_ms,
        }
        .max(0);
        let silent_ms = now_ms.saturating_sub(last.at_ms);
        silent_ms > threshold && self.waited_ms().is_none_or(|waited| waited > threshold)
    }

    /// When [`PartitionHealth::status`] turns `stop` by the clock alone,
    /// given the samples so far (the other statuses follow the samples):
    /// None where the clock cannot stop it (no lag, no commit, or a wait the
    /// source reports below the threshold).
    pub fn stops_at(&self, cfg: &HealthConfig) -> Option<i64> {
        if self.lag_records == 0 {
            return None;
        }
        let skip = self.commits.len().saturating_sub(cfg.capacity());
        let window: Vec<&CommitPoint> = self.commits.iter().skip(skip).collect();
        let last = window.last()?;
        let threshold = match burrow_stop_gap(&window, cfg.capacity()) {
            Some(gap) => gap.min(cfg.stop_after_ms),
            None => cfg.stop_after_ms,
        }
        .max(0);
        if self.waited_ms().is_some_and(|waited| waited <= threshold) {
            return None;
        }
        Some(last.at_ms.saturating_add(threshold).saturating_add(1))
    }

    /// How long the oldest unconsumed record has waited, where the source knows it.
    fn waited_ms(&self) -> Option<i64> {
        // `as` saturates, which is what an absurdly large age should do.
        (self.lag_seconds.is_finite() && self.lag_seconds > 0.0)
            .then_some((self.lag_seconds * 1000.0) as i64)
    }
}

/// Burrow's stop threshold: the time the window took, scaled up to a full
/// window when it is not full yet. `None` when the window cannot tell.
fn burrow_stop_gap(window: &[&CommitPoint], capacity: usize) -> Option<i64> {
    let (first, last) = (window.first()?, window.last()?);
    let intervals = window.len().checked_sub(1).filter(|&n| n > 0)?;
    let span = last.at_ms.saturating_sub(first.at_ms);
    if span <= 0 {
        return None;
    }
    let full = capacity.max(window.len()) - 1;
    let scaled = i128::from(span) * full as i128 / intervals as i128;
    Some(i64::try_from(scaled).unwrap_or(i64::MAX))
}

/// Whether the offset went backwards within the window and the consumer has
/// not since committed at or beyond the highest offset it had before.
fn is_unrecovered_rewind(window: &[&CommitPoint]) -> bool {
    let Some(rewound_at) = (1..window.len())
        .rev()
        .find(|&i| window[i].offset < window[i - 1].offset)
    else {
        return false;
    };
    let peak = window[..rewound_at]
        .iter()
        .map(|c| c.offset)
        .max()
        .unwrap_or(i64::MIN);
    window.last().is_some_and(|latest| latest.offset < peak)
}

/// A group's status: its worst partition's, with `stop`, `stall` and `rewind`
/// as `err`. A group with no partitions is `ok`.
pub fn group_status(partitions: impl IntoIterator<Item = PartitionStatus>) -> GroupStatus {
    partitions
        .into_iter()
        .max()
        .map_or(GroupStatus::Ok, GroupStatus::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minute, the commit interval of Burrow's wiki examples.
    const MIN: i64 = 60_000;
    const T0: i64 = 1_732_800_000_000;

    /// The sample the broker sends right after a commit of `offset` at `at_ms`,
    /// with `lag` records still to consume that have waited `waited_s` seconds.
    fn sample(offset: i64, lag: u64, at_ms: i64, waited_s: f64) -> LagSample {
        LagSample {
            group: "billing".to_owned(),
            topic: "orders".to_owned(),
            partition: 0,
            committed: offset,
            end_offset: offset + lag as i64,
            start_offset: 0,
            lag_records: lag,
            lag_seconds: if lag == 0 { 0.0 } else { waited_s },
            commit_at_ms: at_ms,
            stable_offset: None,
            estimated: false,
        }
    }

    /// A partition fed one commit a minute: `(offset, lag)` in order, from T0.
    /// Unconsumed records have waited 30 s at each commit.
    fn committed_every_minute(commits: &[(i64, u64)], cfg: &HealthConfig) -> PartitionHealth {
        let mut health = PartitionHealth::default();
        for (i, &(offset, lag)) in commits.iter().enumerate() {
            health.observe(&sample(offset, lag, T0 + i as i64 * MIN, 30.0), cfg);
        }
        health
    }

    fn minute_of_last(commits: &[(i64, u64)]) -> i64 {
        T0 + (commits.len() as i64 - 1) * MIN
    }

    #[test]
    fn the_compact_form_reads_back_to_the_same_health_and_is_small() {
        let cfg = HealthConfig::default();
        let commits: Vec<(i64, u64)> = (0..12)
            .map(|i| (2_171 + i * 25, 1_172 + i as u64 * 25))
            .collect();
        let mut health = committed_every_minute(&commits, &cfg);
        // A rewind and extreme values read back too.
        health.observe(
            &sample(5, u64::MAX, minute_of_last(&commits) + MIN, 279.31),
            &cfg,
        );
        health.observe(&sample(i64::MIN, 0, i64::MAX, 0.0), &cfg);
        let mut out = vec![7];
        health.encode(&mut out);
        out.push(9);
        let mut input = &out[1..];
        assert_eq!(PartitionHealth::decode(&mut input), Some(health.clone()));
        assert_eq!(input, &[9]);
        // A full window of one-minute commits fits in well under the 600 bytes of its JSON.
        let steady = committed_every_minute(&commits, &cfg);
        let mut out = Vec::new();
        steady.encode(&mut out);
        assert!(out.len() < 100, "{} bytes", out.len());
        // Every cut of it is refused, never read as something else.
        for cut in 0..out.len() {
            assert_eq!(
                PartitionHealth::decode(&mut &out[..cut]),
                None,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn ok_when_lag_was_zero_within_the_window() {
        let cfg = HealthConfig::default();
        // Lag grows at every commit after having been zero: Burrow's rule 1 makes it OK.
        let commits: Vec<(i64, u64)> = (0..10).map(|i| (1_000 + i * 100, i as u64 * 10)).collect();
        let health = committed_every_minute(&commits, &cfg);
        let now = minute_of_last(&commits) + 30_000;
        assert_eq!(health.status(now, &cfg), PartitionStatus::Ok);

        // The same growth without the zero is a consumer falling behind.
        let health = committed_every_minute(&commits[1..], &cfg);
        assert_eq!(health.status(now, &cfg), PartitionStatus::Warn);
    }

    #[test]
    fn warn_when_offsets_advance_but_lag_never_falls() {
        let cfg = HealthConfig::default();
        let lags = [100, 110, 110, 130, 150, 150, 170, 200, 220, 250];
        let commits: Vec<(i64, u64)> = lags
            .iter()
            .enumerate()
            .map(|(i, &lag)| (5_000 + i as i64 * 500, lag))
            .collect();
        let health = committed_every_minute(&commits, &cfg);
        let now = minute_of_last(&commits) + 30_000;
        assert_eq!(health.status(now, &cfg), PartitionStatus::Warn);
        assert_eq!(
            group_status([PartitionStatus::Ok, health.status(now, &cfg)]),
            GroupStatus::Warn
        );
    }

    #[test]
    fn ok_when_lag_falls_somewhere_or_holds_steady() {
        let cfg = HealthConfig::default();
        let dips: Vec<(i64, u64)> = [100, 120, 140, 90, 110, 130, 150, 170, 190, 210]
            .iter()
            .enumerate()
            .map(|(i, &lag)| (5_000 + i as i64 * 500, lag))
            .collect();
        let now = minute_of_last(&dips) + 30_000;
        assert_eq!(
            committed_every_minute(&dips, &cfg).status(now, &cfg),
            PartitionStatus::Ok
        );

        let steady: Vec<(i64, u64)> = (0..10).map(|i| (5_000 + i * 500, 40)).collect();
        assert_eq!(
            committed_every_minute(&steady, &cfg).status(now, &cfg),
            PartitionStatus::Ok
        );
    }

    #[test]
    fn stall_when_the_same_offset_is_committed_while_lag_grows() {
        let cfg = HealthConfig::default();
        let commits: Vec<(i64, u64)> = (0..10).map(|i| (7_500, 20 + i as u64 * 15)).collect();
        let health = committed_every_minute(&commits, &cfg);
        assert_eq!(
            health.commits().count(),
            10,
            "same offset, new commit time: each counts"
        );
        let now = minute_of_last(&commits) + 30_000;
        assert_eq!(health.status(now, &cfg), PartitionStatus::Stall);
        assert_eq!(group_status([health.status(now, &cfg)]), GroupStatus::Err);
    }

    #[test]
    fn stop_when_silent_for_longer_than_the_window_took() {
        // A long stop_after isolates Burrow's rule.
        let cfg = HealthConfig {
            stop_after_ms: 24 * 60 * MIN,
            ..HealthConfig::default()
        };
        let commits: Vec<(i64, u64)> = [80, 60, 70, 40, 50, 30, 45, 20, 35, 25]
            .iter()
            .enumerate()
            .map(|(i, &lag)| (2_000 + i as i64 * 300, lag))
            .collect();
        let mut health = committed_every_minute(&commits, &cfg);
        let last = minute_of_last(&commits);
        let span = 9 * MIN;
        assert_eq!(health.status(last + 30_000, &cfg), PartitionStatus::Ok);

        // Samples keep coming; the consumer does not commit, records pile up.
        health.observe(&sample(4_700, 900, last, 900.0), &cfg);
        assert_eq!(health.status(last + span, &cfg), PartitionStatus::Ok);
        assert_eq!(
            health.status(last + span + 1_000, &cfg),
            PartitionStatus::Stop
        );
        assert_eq!(
            group_status([health.status(last + span + 1_000, &cfg)]),
            GroupStatus::Err
        );
    }

    #[test]
    fn rewind_when_the_offset_goes_back_until_it_climbs_past_where_it_was() {
        let cfg = HealthConfig::default();
        let mut commits: Vec<(i64, u64)> = (0..6)
            .map(|i| (10_000 + i * 1_000, 50 + i as u64))
            .collect();
        commits.extend([(200, 15_100), (1_200, 14_200), (2_200, 13_300)]);
        let health = committed_every_minute(&commits, &cfg);
        let now = minute_of_last(&commits) + 30_000;
        assert_eq!(health.status(now, &cfg), PartitionStatus::Rewind);
        assert_eq!(group_status([health.status(now, &cfg)]), GroupStatus::Err);

        // Back past 15 000, the highest offset before the rewind: judged as usual again.
        commits.push((15_500, 500));
        let health = committed_every_minute(&commits, &cfg);
        let now = minute_of_last(&commits) + 30_000;
        assert_eq!(health.status(now, &cfg), PartitionStatus::Ok);
    }

    #[test]
    fn rewind_is_seen_even_after_zero_lag() {
        let cfg = HealthConfig::default();
        let commits = [(4_000, 0), (4_100, 0), (4_200, 0), (0, 4_300), (100, 4_250)];
        let health = committed_every_minute(&commits, &cfg);
        let now = minute_of_last(&commits) + 30_000;
        assert_eq!(health.status(now, &cfg), PartitionStatus::Rewind);
    }

    #[test]
    fn a_new_group_is_not_flagged_on_its_first_commits() {
        let cfg = HealthConfig::default();
        let mut health = PartitionHealth::default();
        health.observe(&sample(0, 500, T0, 2.0), &cfg);
        assert_eq!(health.commits().count(), 1);
        assert_eq!(health.status(T0 + 2_000, &cfg), PartitionStatus::Ok);

        // Two commits a second apart, then one sample period without a commit:
        // Burrow's rule on the raw span would call that a stop.
        health.observe(&sample(200, 400, T0 + 1_000, 2.0), &cfg);
        assert_eq!(health.status(T0 + 3_500, &cfg), PartitionStatus::Ok);
        // Nine intervals of silence are a stop, as on a full window.
        health.observe(&sample(200, 900, T0 + 1_000, 12.0), &cfg);
        assert_eq!(health.status(T0 + 11_000, &cfg), PartitionStatus::Stop);
    }

    #[test]
    fn a_low_traffic_partition_stops_after_stop_after() {
        // One record every ten minutes, consumed and committed each time: the
        // window spans 90 minutes.
        let cfg = HealthConfig::default();
        let mut health = PartitionHealth::default();
        for i in 0..10 {
            health.observe(&sample(i, 0, T0 + i * 10 * MIN, 0.0), &cfg);
        }
        let last = T0 + 90 * MIN;
        // Two minutes later a record arrives and the consumer never takes it.
        health.observe(&sample(9, 1, last, 6.0 * 60.0), &cfg);
        let now = last + 8 * MIN;
        assert_eq!(health.status(now, &cfg), PartitionStatus::Stop);

        let burrow_alone = HealthConfig {
            stop_after_ms: i64::MAX,
            ..cfg
        };
        assert_eq!(health.status(now, &burrow_alone), PartitionStatus::Ok);
    }

    #[test]
    fn the_first_record_after_a_quiet_spell_is_not_a_stop() {
        let cfg = HealthConfig::default();
        let mut health = PartitionHealth::default();
        health.observe(&sample(500, 0, T0, 0.0), &cfg);
        health.observe(&sample(501, 0, T0 + MIN, 0.0), &cfg);
        let now = T0 + 60 * MIN;
        // A record arrived a second ago; the consumer has not committed it yet.
        health.observe(&sample(501, 1, T0 + MIN, 1.0), &cfg);
        assert_eq!(health.status(now, &cfg), PartitionStatus::Ok);

        // A source that cannot tell how long records waited: commit age decides.
        health.observe(&sample(501, 1, T0 + MIN, 0.0), &cfg);
        assert_eq!(health.lag_seconds(), 0.0);
        assert_eq!(health.status(now, &cfg), PartitionStatus::Stop);
    }

    #[test]
    fn lag_back_to_zero_is_ok() {
        let cfg = HealthConfig::default();
        let commits: Vec<(i64, u64)> = (0..10).map(|i| (7_500, 20 + i as u64 * 15)).collect();
        let mut health = committed_every_minute(&commits, &cfg);
        let last = minute_of_last(&commits);
        assert_eq!(health.status(last + 30_000, &cfg), PartitionStatus::Stall);

        health.observe(&sample(7_655, 0, last + 40_000, 0.0), &cfg);
        assert_eq!(health.status(last + 50_000, &cfg), PartitionStatus::Ok);
        // Even long after the last commit: nothing waits, so nothing is stopped.
        assert_eq!(health.status(last + 600 * MIN, &cfg), PartitionStatus::Ok);
    }

    #[test]
    fn repeated_samples_of_one_commit_do_not_grow_the_window() {
        let cfg = HealthConfig::default();
        let mut health = PartitionHealth::default();
        for lag in [10, 12, 15, 19, 30] {
            health.observe(&sample(300, lag, T0, 5.0), &cfg);
        }
        assert_eq!(health.commits().count(), 1);
        assert_eq!(
            health.commits().next().map(|c| c.lag),
            Some(10),
            "lag when first seen"
        );
        assert_eq!(health.lag_records(), 30, "current lag follows every sample");
        assert_eq!(health.end_offset(), 330);

        // Same offset, committed again: a new commit.
        health.observe(&sample(300, 31, T0 + 5_000, 5.0), &cfg);
        assert_eq!(health.commits().count(), 2);
        assert_eq!(health.last_commit_ms(), Some(T0 + 5_000));
    }

    #[test]
    fn a_sample_older_than_the_newest_commit_is_ignored() {
        let cfg = HealthConfig::default();
        let mut health = PartitionHealth::default();
        health.observe(&sample(1_000, 5, T0, 1.0), &cfg);
        health.observe(&sample(2_000, 5, T0 + MIN, 1.0), &cfg);
        health.observe(&sample(1_000, 900, T0, 1.0), &cfg);
        assert_eq!(health.commits().count(), 2);
        assert_eq!(health.committed(), 2_000);
        assert_eq!(health.lag_records(), 5);
        assert_eq!(health.status(T0 + MIN + 1_000, &cfg), PartitionStatus::Ok);
    }

    #[test]
    fn samples_without_a_commit_add_none() {
        let cfg = HealthConfig::default();
        let mut health = PartitionHealth::default();
        let mut never = sample(-1, 0, -1, 0.0);
        never.end_offset = 40;
        never.lag_records = 40;
        never.lag_seconds = 3_600.0;
        health.observe(&never, &cfg);
        assert_eq!(health.commits().count(), 0);
        assert_eq!(health.last_commit_ms(), None);
        assert_eq!(health.lag_records(), 40);
        assert_eq!(health.status(T0, &cfg), PartitionStatus::Ok);
    }

    #[test]
    fn the_window_keeps_the_last_n_commits_oldest_first() {
        let cfg = HealthConfig::default();
        let mut health = PartitionHealth::default();
        for i in 0..25 {
            health.observe(&sample(i * 10, 1, T0 + i * 1_000, 1.0), &cfg);
        }
        let offsets: Vec<i64> = health.commits().map(|c| c.offset).collect();
        assert_eq!(offsets, (15..25).map(|i| i * 10).collect::<Vec<_>>());
        assert_eq!(health.last_commit_ms(), Some(T0 + 24_000));

        let small = HealthConfig { window: 3, ..cfg };
        health.observe(&sample(250, 1, T0 + 25_000, 1.0), &small);
        let offsets: Vec<i64> = health.commits().map(|c| c.offset).collect();
        assert_eq!(offsets, vec![230, 240, 250]);
    }

    #[test]
    fn the_group_takes_its_worst_partition() {
        use PartitionStatus as P;
        assert_eq!(group_status(std::iter::empty()), GroupStatus::Ok);
        assert_eq!(group_status([P::Ok, P::Ok]), GroupStatus::Ok);
        assert_eq!(group_status([P::Ok, P::Warn, P::Ok]), GroupStatus::Warn);
        for err in [P::Stop, P::Stall, P::Rewind] {
            assert_eq!(
                group_status([P::Warn, err, P::Ok]),
                GroupStatus::Err,
                "{err}"
            );
            assert_eq!(GroupStatus::from(err), GroupStatus::Err);
        }
        assert_eq!(GroupStatus::from(P::Warn), GroupStatus::Warn);
        assert_eq!(GroupStatus::from(P::Ok), GroupStatus::Ok);
    }

    #[test]
    fn statuses_are_named_in_lowercase() {
        let names: Vec<&str> = PartitionStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["ok", "warn", "stop", "stall", "rewind"]);
        let names: Vec<&str> = GroupStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["ok", "warn", "err"]);
        for s in PartitionStatus::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        for s in GroupStatus::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }

    #[test]
    fn partition_health_survives_a_serde_round_trip() {
        let cfg = HealthConfig::default();
        let commits: Vec<(i64, u64)> = (0..10).map(|i| (7_500, 20 + i as u64 * 15)).collect();
        let health = committed_every_minute(&commits, &cfg);
        let json = serde_json::to_string(&health).unwrap();
        let back: PartitionHealth = serde_json::from_str(&json).unwrap();
        assert_eq!(back, health);
        let now = minute_of_last(&commits) + 30_000;
        assert_eq!(back.status(now, &cfg), PartitionStatus::Stall);

        let cfg_back: HealthConfig = serde_json::from_str(r#"{"window": 20}"#).unwrap();
        assert_eq!(cfg_back.window, 20);
        assert_eq!(cfg_back.stop_after_ms, DEFAULT_STOP_AFTER_MS);
    }
}
