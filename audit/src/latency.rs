//! End-to-end latency of one (topic, tier): how long after its timestamp a
//! record was counted by the tier, kept as exact counts at the wire's bounds
//! ([`LATENCY_BOUNDS_MS`]) and sent as the wire's cumulative
//! [`LatencyHistogram`].
//!
//! One implementation for the instrumented broker (record timestamp → append,
//! and → the commit that covered it) and the collector (record timestamp →
//! the read, and → the poll that saw the covering commit). A book is
//! cumulative since its process started: a restart is a new emitter session,
//! whose histograms replace the old session's at the agent.

use crate::wire::{LATENCY_BOUNDS_MS, MAX_COUNT};
use crate::{LatencyHistogram, Tier};

/// The latency of one (topic, tier), in milliseconds: counts at the wire's
/// bounds ([`LATENCY_BOUNDS_MS`]), exact, plus those above the last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyBook {
    /// `bins[i]`: latencies above bound `i - 1` and at most bound `i`; the
    /// last holds those above every bound.
    bins: [u64; LATENCY_BOUNDS_MS.len() + 1],
    count: u64,
    sum_ms: u64,
    changed: bool,
}

impl LatencyBook {
    /// Records `n` records of latency `ms`.
    pub fn record(&mut self, ms: u64, n: u64) {
        if n == 0 {
            return;
        }
        let bin = LATENCY_BOUNDS_MS.partition_point(|b| *b < ms);
        self.bins[bin] = self.bins[bin].saturating_add(n);
        self.count = self.count.saturating_add(n);
        self.sum_ms = self.sum_ms.saturating_add(ms.saturating_mul(n));
        self.changed = true;
    }

    /// Records the latency at `now_ms` of every timestamp (clamped at 0),
    /// once per run of equal ones: producers stamp many records of a batch
    /// with the same millisecond. The caller leaves out records without a
    /// timestamp.
    pub fn record_timestamps<'a>(
        &mut self,
        now_ms: i64,
        timestamps: impl IntoIterator<Item = &'a i64>,
    ) {
        let mut run: Option<(i64, u64)> = None;
        for &ts in timestamps {
            match &mut run {
                Some((at, n)) if *at == ts => *n += 1,
                _ => {
                    if let Some((at, n)) = run.replace((ts, 1)) {
                        self.record(now_ms.saturating_sub(at).max(0) as u64, n);
                    }
                }
            }
        }
        if let Some((at, n)) = run {
            self.record(now_ms.saturating_sub(at).max(0) as u64, n);
        }
    }

    /// Adds what `delta` holds and empties it.
    pub fn absorb(&mut self, delta: &mut LatencyBook) {
        for (bin, n) in self.bins.iter_mut().zip(&delta.bins) {
            *bin = bin.saturating_add(*n);
        }
        self.count = self.count.saturating_add(delta.count);
        self.sum_ms = self.sum_ms.saturating_add(delta.sum_ms);
        self.changed |= delta.changed;
        *delta = LatencyBook::default();
    }

    /// How many records were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether something was recorded (or absorbed) since the last
    /// [`LatencyBook::take_changed`].
    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// Whether something was recorded since the last call: the book's
    /// histogram is due to be sent.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The wire's cumulative histogram at [`LATENCY_BOUNDS_MS`], with counts
    /// and sum capped at [`MAX_COUNT`] as the agent requires.
    pub fn wire(&self, topic: &str, tier: &Tier) -> LatencyHistogram {
        let count = self.count.min(MAX_COUNT);
        let mut below = 0u64;
        LatencyHistogram {
            tier: tier.clone(),
            topic: topic.to_owned(),
            bounds_ms: LATENCY_BOUNDS_MS.to_vec(),
            counts: self.bins[..LATENCY_BOUNDS_MS.len()]
                .iter()
                .map(|n| {
                    below = below.saturating_add(*n);
                    below.min(count)
                })
                .collect(),
            count,
            sum_ms: self.sum_ms.min(MAX_COUNT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BucketWidth;

    #[test]
    fn a_latency_book_becomes_the_wires_cumulative_histogram() {
        let mut book = LatencyBook::default();
        book.record(3, 2);
        book.record(7, 1);
        book.record(20_000, 1);
        book.record(0, 0);
        let h = book.wire("orders", &Tier::Broker);
        assert_eq!(h.bounds_ms, LATENCY_BOUNDS_MS);
        let at = |bound: u64| {
            let i = LATENCY_BOUNDS_MS.iter().position(|b| *b == bound).unwrap();
            h.counts[i]
        };
        assert_eq!(
            (at(5), at(10), at(10_000), at(30_000), at(3_600_000)),
            (2, 3, 3, 4, 4)
        );
        assert_eq!((h.count, h.sum_ms), (4, 20_013));
        // What an emitter sends, the agent accepts.
        let text = crate::Message::Latency(crate::Latency {
            seq: 1,
            histograms: vec![h],
        })
        .to_json();
        let limits = crate::wire::Limits::new(BucketWidth::DEFAULT);
        assert!(crate::wire::decode(text.as_bytes(), &limits).is_ok());
    }

    #[test]
    fn timestamps_are_recorded_per_run_and_deltas_absorbed_once() {
        let mut delta = LatencyBook::default();
        // Two runs of equal stamps, one stamp from the future (clamped at 0).
        delta.record_timestamps(10_000, &[9_000, 9_000, 9_000, 9_990, 10_500]);
        assert_eq!(delta.count(), 5);
        let mut book = LatencyBook::default();
        assert!(!book.is_changed());
        book.absorb(&mut delta);
        assert_eq!(delta, LatencyBook::default());
        assert!(book.take_changed());
        assert!(!book.take_changed());
        let h = book.wire("orders", &Tier::Group("billing".into()));
        assert_eq!((h.count, h.sum_ms), (5, 3_010));
        // Emptied, the delta adds nothing, and changes nothing.
        book.absorb(&mut delta);
        assert!(!book.is_changed());
        assert_eq!(book.wire("orders", &Tier::Broker).count, 5);
    }
}
