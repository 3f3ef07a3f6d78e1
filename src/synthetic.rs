//! A synthetic pipeline for `tally demo`: simulated partitions, producers and
//! consumer groups whose counts and lag go to the agent through the real
//! emitter client, over the real WebSocket.
//!
//! Every group is scripted to show one of the statuses tally judges: a
//! healthy group, a lagging one (`warn`), a stalled one, a stopped one, one
//! that rewinds, one that loses records to retention, one that starts late,
//! one that catches up after its buckets closed (`late`), a client-side
//! consumer that counts duplicates, and a producer that loses records.

use std::collections::HashMap;
use std::time::Duration;

use tally_audit::emitter::{Emitter, EmitterConfig};
use tally_audit::{BucketWidth, CountEntry, LagSample, Tier, TierKind};

/// A run of records appended in one bucket, in offset order.
#[derive(Clone, Copy, Debug)]
struct Run {
    bucket: i64,
    first_offset: u64,
    count: u64,
    first_ts: i64,
    last_ts: i64,
}

#[derive(Debug, Default)]
struct Partition {
    runs: Vec<Run>,
    end: u64,
    start: u64,
    /// Records appended per bucket (the `broker` tier).
    appended: HashMap<i64, u64>,
    /// Records the producer sent per bucket (the `produced` tier).
    produced: HashMap<i64, u64>,
}

impl Partition {
    fn append(&mut self, width: BucketWidth, ts: i64, n: u64, lost: u64) {
        let bucket = width.bucket_of(ts).start_ms();
        *self.produced.entry(bucket).or_default() += n + lost;
        if n == 0 {
            return;
        }
        *self.appended.entry(bucket).or_default() += n;
        match self.runs.last_mut() {
            Some(r) if r.bucket == bucket => {
                r.count += n;
                r.last_ts = ts;
            }
            _ => self.runs.push(Run {
                bucket,
                first_offset: self.end,
                count: n,
                first_ts: ts,
                last_ts: ts,
            }),
        }
        self.end += n;
    }

    fn timestamp_at(&self, offset: u64) -> Option<i64> {
        let run = self
            .runs
            .iter()
            .find(|r| offset >= r.first_offset && offset < r.first_offset + r.count)?;
        let span = (run.last_ts - run.first_ts) as f64;
        let frac = (offset - run.first_offset) as f64 / run.count.max(1) as f64;
        Some(run.first_ts + (span * frac) as i64)
    }

    /// Records per bucket in [from, to).
    fn per_bucket(&self, from: u64, to: u64, mut f: impl FnMut(i64, u64)) {
        for r in &self.runs {
            let lo = from.max(r.first_offset);
            let hi = to.min(r.first_offset + r.count);
            if hi > lo {
                f(r.bucket, hi - lo);
            }
        }
    }
}

/// How a group consumes, second by second.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Keeps up.
    Healthy,
    /// Consumes this share of the produce rate.
    Slow(f64),
    /// Keeps up until `at` seconds, then commits the same offset forever.
    StallAfter(u64),
    /// Keeps up until `at` seconds, then stops committing.
    StopAfter(u64),
    /// Keeps up, and every `every` seconds goes back by `by` records.
    Rewinds { every: u64, by: u64 },
    /// Joins at `at` seconds at the log end, then keeps up.
    JoinsAt(u64),
    /// Slow (40 %) for `slow` seconds, then fast until caught up, again and again.
    Bursty { slow: u64 },
}

#[derive(Debug)]
struct Group {
    name: &'static str,
    topic: &'static str,
    behaviour: Behaviour,
    /// Per partition: committed offset (None before the first commit).
    committed: Vec<Option<u64>>,
    commit_at_ms: Vec<i64>,
    consumed: HashMap<(usize, i64), u64>,
    expired: HashMap<(usize, i64), u64>,
    skipped: HashMap<(usize, i64), u64>,
    slow_phase_until: u64,
}

struct Topic {
    name: &'static str,
    partitions: Vec<Partition>,
    rate: u64,
    /// Records kept per partition (a short retention) or none.
    keep: Option<u64>,
    /// One record in this many is lost between producer and broker.
    lose_one_in: Option<u64>,
}

/// (tier, topic, partition, bucket).
type CellKey = (Tier, &'static str, i32, i64);
/// (records, expired, skipped).
type Tallies = (u64, u64, u64);

/// The simulated pipeline.
pub(crate) struct Synthetic {
    width: BucketWidth,
    topics: Vec<Topic>,
    groups: Vec<Group>,
    second: u64,
    sent: HashMap<CellKey, Tallies>,
    seed: u64,
}

impl Synthetic {
    pub(crate) fn new(width: BucketWidth) -> Self {
        let topic = |name, partitions: usize, rate, keep, lose_one_in| Topic {
            name,
            partitions: (0..partitions).map(|_| Partition::default()).collect(),
            rate,
            keep,
            lose_one_in,
        };
        let group = |name, topic, behaviour, partitions: usize| Group {
            name,
            topic,
            behaviour,
            committed: vec![None; partitions],
            commit_at_ms: vec![-1; partitions],
            consumed: HashMap::new(),
            expired: HashMap::new(),
            skipped: HashMap::new(),
            slow_phase_until: 0,
        };
        Synthetic {
            width,
            topics: vec![
                topic("orders", 3, 40, None, None),
                topic("payments", 2, 25, None, Some(150)),
                topic("clicks", 2, 60, Some(900), None),
            ],
            groups: vec![
                group("billing", "orders", Behaviour::Healthy, 3),
                group("analytics", "orders", Behaviour::Slow(0.8), 3),
                group("legacy-export", "orders", Behaviour::StopAfter(20), 3),
                group("late-joiner", "orders", Behaviour::JoinsAt(25), 3),
                group("fraud-check", "payments", Behaviour::StallAfter(15), 2),
                group("reporting", "payments", Behaviour::Bursty { slow: 40 }, 2),
                group("archiver", "clicks", Behaviour::Slow(0.5), 2),
                group(
                    "replay",
                    "clicks",
                    Behaviour::Rewinds { every: 45, by: 300 },
                    2,
                ),
            ],
            second: 0,
            sent: HashMap::new(),
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn jitter(&mut self, n: u64) -> u64 {
        // xorshift: cheap, repeatable variation in the produce rate.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let spread = (n / 4).max(1);
        n - spread / 2 + self.seed % spread
    }

    /// Advances the pipeline by one second ending at `now_ms`.
    pub(crate) fn step(&mut self, now_ms: i64) {
        self.second += 1;
        let width = self.width;
        for ti in 0..self.topics.len() {
            for pi in 0..self.topics[ti].partitions.len() {
                let n = self.jitter(self.topics[ti].rate);
                let lost = self.topics[ti]
                    .lose_one_in
                    .map_or(0, |k| u64::from(self.seed % k < 2));
                // Spread the second's records over its milliseconds, a few of them a little late.
                let t = &mut self.topics[ti];
                let p = &mut t.partitions[pi];
                let half = n / 2;
                p.append(width, now_ms - 1_000 + 250, half, 0);
                p.append(width, now_ms - 1_000 + 750, n - half, lost);
                if let Some(keep) = t.keep {
                    p.start = p.start.max(p.end.saturating_sub(keep));
                }
            }
        }
        let second = self.second;
        for g in &mut self.groups {
            let Some(topic) = self.topics.iter().find(|t| t.name == g.topic) else {
                continue;
            };
            for (pi, p) in topic.partitions.iter().enumerate() {
                advance(g, pi, p, second, topic.rate, now_ms);
            }
        }
    }

    /// Hands the current cumulative counts and lag to the emitters.
    pub(crate) fn emit(&mut self, broker: &Emitter, producer: &Emitter, now_ms: i64) {
        let mut counts: Vec<(CellKey, Tallies)> = Vec::new();
        for t in &self.topics {
            for (pi, p) in t.partitions.iter().enumerate() {
                for (&b, &n) in &p.appended {
                    counts.push(((Tier::Broker, t.name, pi as i32, b), (n, 0, 0)));
                }
                for (&b, &n) in &p.produced {
                    counts.push(((Tier::Produced, t.name, pi as i32, b), (n, 0, 0)));
                }
            }
        }
        for g in &self.groups {
            let tier = Tier::Group(g.name.to_owned());
            let mut keys: Vec<(usize, i64)> = g.consumed.keys().copied().collect();
            keys.extend(g.expired.keys().copied());
            keys.extend(g.skipped.keys().copied());
            keys.sort_unstable();
            keys.dedup();
            for k in keys {
                let get = |m: &HashMap<(usize, i64), u64>| m.get(&k).copied().unwrap_or(0);
                counts.push((
                    (tier.clone(), g.topic, k.0 as i32, k.1),
                    (get(&g.consumed), get(&g.expired), get(&g.skipped)),
                ));
            }
            // A client-side consumer of billing's records that processes a few twice.
            if g.name == "billing" {
                for (&(pi, b), &n) in &g.consumed {
                    let dup = u64::from(pi == 0 && (b / self.width.ms() as i64) % 3 == 0) * 2;
                    counts.push((
                        (Tier::Consumer("etl".into()), g.topic, pi as i32, b),
                        (n + dup, 0, 0),
                    ));
                }
            }
        }
        let horizon = now_ms - 3_600_000;
        for (key, tallies) in counts {
            let (tier, topic, partition, bucket) = key.clone();
            let (records, expired, skipped) = tallies;
            if bucket < horizon || self.sent.get(&key) == Some(&tallies) {
                continue;
            }
            self.sent.insert(key, tallies);
            let entry = CountEntry {
                bytes: records * 120,
                tier: tier.clone(),
                topic: topic.to_owned(),
                partition,
                bucket: self.width.bucket_of(bucket),
                records,
                no_timestamp: 0,
                expired,
                skipped,
            };
            if matches!(tier, Tier::Produced | Tier::Consumer(_)) {
                producer.record_count(entry);
            } else {
                broker.record_count(entry);
            }
        }
        let mut samples = Vec::new();
        for g in &self.groups {
            let Some(topic) = self.topics.iter().find(|t| t.name == g.topic) else {
                continue;
            };
            for (pi, p) in topic.partitions.iter().enumerate() {
                let Some(committed) = g.committed[pi] else {
                    continue;
                };
                let lag = p.end.saturating_sub(committed);
                let lag_seconds = if lag == 0 {
                    0.0
                } else {
                    p.timestamp_at(committed.max(p.start))
                        .map_or(0.0, |ts| ((now_ms - ts).max(0)) as f64 / 1000.0)
                };
                samples.push(LagSample {
                    group: g.name.to_owned(),
                    topic: g.topic.to_owned(),
                    partition: pi as i32,
                    committed: committed as i64,
                    end_offset: p.end as i64,
                    start_offset: p.start as i64,
                    lag_records: lag,
                    lag_seconds,
                    commit_at_ms: g.commit_at_ms[pi],
                });
            }
        }
        broker.record_lag(now_ms, samples);
    }
}

fn advance(g: &mut Group, pi: usize, p: &Partition, second: u64, rate: u64, now_ms: i64) {
    let current = g.committed[pi];
    // Retention moved past what the group had not consumed: those records expired.
    if let Some(c) = current
        && c < p.start
    {
        p.per_bucket(c, p.start, |b, n| {
            *g.expired.entry((pi, b)).or_default() += n
        });
        g.committed[pi] = Some(p.start);
    }
    let current = g.committed[pi];
    let target = match (g.behaviour, current) {
        (Behaviour::JoinsAt(at), None) => {
            if second < at {
                return;
            }
            p.per_bucket(p.start, p.end, |b, n| {
                *g.skipped.entry((pi, b)).or_default() += n
            });
            Some(p.end)
        }
        (_, None) => Some(p.start),
        (Behaviour::Healthy | Behaviour::JoinsAt(_), Some(_)) => Some(p.end),
        (Behaviour::Slow(share), Some(c)) => Some((c + (rate as f64 * share) as u64).min(p.end)),
        (Behaviour::StallAfter(at), Some(c)) => Some(if second < at { p.end } else { c }),
        (Behaviour::StopAfter(at), Some(_)) => (second < at).then_some(p.end),
        (Behaviour::Rewinds { every, by }, Some(c)) => {
            if second.is_multiple_of(every) {
                let back = c.saturating_sub(by).max(p.start);
                g.committed[pi] = Some(back);
                g.commit_at_ms[pi] = now_ms;
                return;
            }
            Some(p.end)
        }
        (Behaviour::Bursty { slow }, Some(c)) => {
            if g.slow_phase_until == 0 || (c >= p.end && second > g.slow_phase_until + 5) {
                g.slow_phase_until = second + slow;
            }
            let step = if second <= g.slow_phase_until {
                rate * 2 / 5
            } else {
                rate * 3
            };
            Some((c + step).min(p.end))
        }
    };
    let Some(target) = target else { return };
    let from = current.unwrap_or(target);
    if target > from {
        // Counts never go down: a rewind re-reads records already counted.
        let high = g.high_water(pi);
        if target > high {
            p.per_bucket(from.max(high), target, |b, n| {
                *g.consumed.entry((pi, b)).or_default() += n
            });
        }
    }
    g.committed[pi] = Some(target);
    g.commit_at_ms[pi] = now_ms;
}

impl Group {
    /// The highest offset this group's counts already cover.
    fn high_water(&self, pi: usize) -> u64 {
        let consumed: u64 = self
            .consumed
            .iter()
            .filter(|((p, _), _)| *p == pi)
            .map(|(_, n)| n)
            .sum();
        let expired: u64 = self
            .expired
            .iter()
            .filter(|((p, _), _)| *p == pi)
            .map(|(_, n)| n)
            .sum();
        let skipped: u64 = self
            .skipped
            .iter()
            .filter(|((p, _), _)| *p == pi)
            .map(|(_, n)| n)
            .sum();
        consumed + expired + skipped
    }
}

/// The emitters of the synthetic pipeline: a broker-side one and a client-side one.
pub(crate) fn emitters(url: &str, width: BucketWidth, token: Option<String>) -> (Emitter, Emitter) {
    let mut broker = EmitterConfig::new(
        url.to_owned(),
        "demo-broker".to_owned(),
        "local".to_owned(),
        vec![TierKind::Broker, TierKind::Group],
        width,
    );
    broker.token = token.clone();
    broker.flush_interval = Duration::from_millis(200);
    let mut producer = EmitterConfig::new(
        url.to_owned(),
        "demo-clients".to_owned(),
        "local".to_owned(),
        vec![TierKind::Produced, TierKind::Consumer],
        width,
    );
    producer.token = token;
    producer.flush_interval = Duration::from_millis(200);
    (Emitter::start(broker), Emitter::start(producer))
}
