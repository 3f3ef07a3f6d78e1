//! How fast the ledger takes counts in, how long one evaluation takes, and
//! how much memory one cell costs.
//!
//! Targets (see BENCHMARKS.md): at least 1,000,000 counts/s into the ledger on
//! one core, and at most 300 bytes per cell (source, tier, topic, partition,
//! bucket).
//!
//! The workload is one broker emitter counting 100 topics × 10 partitions for
//! three tiers (`broker`, `group:billing`, `group:search`): 3,000 cells per
//! one-minute bucket, sent as messages of 1,000 entries.
//!
//! Run with `cargo bench -p tally-agent --bench ledger`. Before the criterion
//! benches it prints the memory per cell, measured by counting the live bytes
//! of the global allocator.

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, Stats, StatsAlloc};
use tally_agent::ledger::{Ledger, LedgerConfig, Session};
use tally_audit::{
    Bucket, BucketWidth, CellCounts, CountEntry, Hello, Lag, LagSample, Tier, TierKind,
};

// The workspace forbids `unsafe` code, and implementing `GlobalAlloc` needs it,
// so the counting wrapper around the system allocator comes from `stats_alloc`.
// It costs a few atomic adds per allocation, and an update message allocates
// only a handful of times (printed below), so the throughput figures hold.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TOPICS: usize = 100;
const PARTITIONS: usize = 10;
const TIER_NAMES: [&str; 3] = ["broker", "group:billing", "group:search"];
const CELLS_PER_BUCKET: usize = TOPICS * PARTITIONS * TIER_NAMES.len();
const ENTRIES_PER_MESSAGE: usize = 1_000;
const MESSAGES_PER_BUCKET: usize = CELLS_PER_BUCKET / ENTRIES_PER_MESSAGE;
const WIDTH_MS: i64 = 60_000;
const FIRST_BUCKET: i64 = 1_732_800_000_000;
/// One hour of buckets: the default window.
const WINDOW_BUCKETS: usize = 60;
/// 1,000,000 cells, rounded up to whole buckets: about 5.6 hours.
const MILLION_BUCKETS: usize = 1_000_000_usize.div_ceil(CELLS_PER_BUCKET);

/// Half-way through the last of `buckets` buckets, so that every bucket but
/// the last three is closed (grace is two widths) and the window ends there.
const fn now_after(buckets: usize) -> i64 {
    FIRST_BUCKET + (buckets as i64 - 1) * WIDTH_MS + WIDTH_MS / 2
}
const STARTED_AT: i64 = FIRST_BUCKET - 3_600_000;

fn width() -> BucketWidth {
    BucketWidth::new(WIDTH_MS as u64).expect("a valid width")
}

/// What one broker emitter counts, and its messages.
struct Workload {
    topics: Vec<String>,
    tiers: Vec<Tier>,
}

impl Workload {
    fn new() -> Self {
        Workload {
            topics: (0..TOPICS).map(|t| format!("orders-{t:03}")).collect(),
            tiers: TIER_NAMES
                .iter()
                .map(|t| t.parse().expect("a valid tier"))
                .collect(),
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            source: "broker-local-1".into(),
            cluster: "local".into(),
            tier_kinds: vec![TierKind::Broker, TierKind::Group],
            bucket_width_ms: WIDTH_MS as u64,
            started_at_ms: STARTED_AT,
        }
    }

    /// The `part`th message of bucket number `bucket`: 1,000 of its 3,000
    /// cells, all tiers of a partition side by side, as the broker sends them.
    fn message(&self, bucket: usize, part: usize) -> Vec<CountEntry> {
        let start = FIRST_BUCKET + bucket as i64 * WIDTH_MS;
        let bucket: Bucket = width().bucket_at(start).expect("an aligned bucket");
        (part * ENTRIES_PER_MESSAGE..(part + 1) * ENTRIES_PER_MESSAGE)
            .map(|k| {
                let tier = k % TIER_NAMES.len();
                let partition = k / TIER_NAMES.len() % PARTITIONS;
                let topic = k / (TIER_NAMES.len() * PARTITIONS);
                let records = 1_000 + (k as u64 * 7) % 500;
                CountEntry {
                    tier: self.tiers[tier].clone(),
                    topic: self.topics[topic].clone(),
                    partition: partition as i32,
                    bucket,
                    counts: CellCounts {
                        records,
                        bytes: records * 180,
                        no_timestamp: 0,
                        expired: 0,
                        skipped: 0,
                        ..CellCounts::default()
                    },
                }
            })
            .collect()
    }

    /// One lag sample per (group, topic, partition) of the two group tiers.
    fn lag(&self, seq: u64, now: i64) -> Lag {
        let mut partitions = Vec::new();
        for group in ["billing", "search"] {
            for topic in &self.topics {
                for p in 0..PARTITIONS {
                    partitions.push(LagSample {
                        group: group.into(),
                        topic: topic.clone(),
                        partition: p as i32,
                        committed: 10_000 + seq as i64 * 100,
                        end_offset: 10_050 + seq as i64 * 100,
                        start_offset: 0,
                        lag_records: 50,
                        lag_seconds: 0.5,
                        commit_at_ms: now - 1_000,
                        stable_offset: None,
                        estimated: false,
                    });
                }
            }
        }
        Lag {
            seq,
            at_ms: now,
            partitions,
        }
    }

    /// A ledger holding the first `buckets` buckets, with nothing left dirty.
    fn ledger(&self, buckets: usize) -> (Ledger, Session, u64) {
        let now = now_after(buckets);
        let mut ledger = Ledger::new(LedgerConfig::new(width()));
        let session = ledger.hello(&self.hello(), now).expect("hello");
        let mut seq = 0;
        for b in 0..buckets {
            for part in 0..MESSAGES_PER_BUCKET {
                seq += 1;
                ledger
                    .apply_counts(session, seq, &self.message(b, part), now)
                    .expect("counts accepted");
            }
            drop(ledger.take_dirty());
        }
        (ledger, session, seq)
    }
}

/// `stats_alloc` already counts the growth and shrinking of a reallocation in
/// `bytes_allocated` and `bytes_deallocated`.
fn live_bytes(s: &Stats) -> isize {
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

/// Inserts 1,000,000 cells through `apply_counts` and prints the live bytes
/// the ledger holds per cell, along the way and after an evaluation.
fn report_memory_per_cell() {
    let work = Workload::new();
    let now = now_after(MILLION_BUCKETS);
    let region = Region::new(GLOBAL);
    let mut ledger = Ledger::new(LedgerConfig::new(width()));
    let session = ledger.hello(&work.hello(), now).expect("hello");
    let mut seq = 0;
    let mut next_report = 100_000;
    println!("memory: live heap bytes held by the ledger, per cell");
    for b in 0..MILLION_BUCKETS {
        for part in 0..MESSAGES_PER_BUCKET {
            seq += 1;
            let msg = work.message(b, part);
            ledger
                .apply_counts(session, seq, &msg, now)
                .expect("counts accepted");
        }
        // The agent hands the dirty rows to the store every 5 ms.
        drop(ledger.take_dirty());
        let cells = ledger.cell_count();
        if cells >= next_report {
            let live = live_bytes(&region.change());
            println!(
                "memory: {cells:>9} cells  {:>6.1} MiB  {:>6.1} bytes/cell",
                live as f64 / 1_048_576.0,
                live as f64 / cells as f64
            );
            next_report += 100_000;
        }
    }
    let cells = ledger.cell_count();
    let after_ingest = live_bytes(&region.change());
    let snapshot = ledger.evaluate(now);
    drop(snapshot);
    drop(ledger.take_dirty());
    let after_evaluate = live_bytes(&region.change());
    println!(
        "memory: {cells} cells after ingest: {:.1} bytes/cell; after evaluate (closed-bucket states kept): {:.1} bytes/cell",
        after_ingest as f64 / cells as f64,
        after_evaluate as f64 / cells as f64
    );

    // How much the counting allocator can weigh on the throughput figures.
    let mut msg = work.message(MILLION_BUCKETS - 1, 0);
    for e in &mut msg {
        e.counts.records += 1;
    }
    let before = Region::new(GLOBAL);
    ledger
        .apply_counts(session, seq + 1, &msg, now)
        .expect("counts accepted");
    println!(
        "memory: one update message of {ENTRIES_PER_MESSAGE} entries makes {} allocations",
        before.change().allocations
    );
    drop(ledger);
    println!(
        "memory: {} bytes still live after the ledger is dropped",
        live_bytes(&region.change())
    );
}

/// Adds one to every count of `msg`, as the next cumulative value.
fn advance(msg: &mut [CountEntry]) {
    for e in msg {
        e.counts.records += 1;
        e.counts.bytes += 180;
    }
}

fn ingest(c: &mut Criterion) {
    let work = Workload::new();
    let mut group = c.benchmark_group("ledger_ingest");
    group.throughput(Throughput::Elements(ENTRIES_PER_MESSAGE as u64));
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(5));

    // The steady state: the emitter resends the rising counts of the current
    // bucket; the ledger already holds an hour of buckets. The dirty rows are
    // handed out after every message, untimed, as the agent's 5 ms flush would.
    let (mut ledger, session, mut seq) = work.ledger(WINDOW_BUCKETS);
    let now = now_after(WINDOW_BUCKETS);
    let mut messages: Vec<Vec<CountEntry>> = (0..MESSAGES_PER_BUCKET)
        .map(|part| work.message(WINDOW_BUCKETS - 1, part))
        .collect();
    group.bench_function("update_existing_cells_180k_held", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for i in 0..iters {
                let msg = &mut messages[i as usize % MESSAGES_PER_BUCKET];
                advance(msg);
                seq += 1;
                let started = Instant::now();
                let applied = ledger
                    .apply_counts(session, seq, msg, now)
                    .expect("counts accepted");
                spent += started.elapsed();
                assert_eq!(applied.changed, ENTRIES_PER_MESSAGE);
                drop(black_box(ledger.take_dirty()));
            }
            spent
        })
    });

    // The same, with handing out the dirty rows timed too: all the ledger
    // task does per message apart from waiting on SQLite, which runs on the
    // writer thread.
    group.bench_function("update_existing_cells_and_take_dirty_180k_held", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for i in 0..iters {
                let msg = &mut messages[i as usize % MESSAGES_PER_BUCKET];
                advance(msg);
                seq += 1;
                let started = Instant::now();
                ledger
                    .apply_counts(session, seq, msg, now)
                    .expect("counts accepted");
                let batch = ledger.take_dirty();
                spent += started.elapsed();
                drop(black_box(batch));
            }
            spent
        })
    });
    drop(ledger);

    // Buckets advancing: every entry opens a new cell, from an empty ledger
    // up to `iters` × 1,000 cells.
    group.bench_function("insert_new_cells", |b| {
        b.iter_custom(|iters| {
            // Far enough on that the last bucket is within retention, and
            // the first too.
            let now = now_after(iters as usize / MESSAGES_PER_BUCKET + 1);
            let mut ledger = Ledger::new(LedgerConfig::new(width()));
            let session = ledger.hello(&work.hello(), now).expect("hello");
            let mut spent = Duration::ZERO;
            for i in 0..iters as usize {
                let msg = work.message(i / MESSAGES_PER_BUCKET, i % MESSAGES_PER_BUCKET);
                let started = Instant::now();
                let applied = ledger
                    .apply_counts(session, i as u64 + 1, &msg, now)
                    .expect("counts accepted");
                spent += started.elapsed();
                assert_eq!(applied.changed, ENTRIES_PER_MESSAGE);
                drop(black_box(ledger.take_dirty()));
            }
            spent
        })
    });
    group.finish();
}

fn evaluate(c: &mut Criterion) {
    let work = Workload::new();
    let mut group = c.benchmark_group("ledger_evaluate");
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(5));
    for (name, buckets) in [
        ("evaluate_180k_cells_2k_lag_partitions", WINDOW_BUCKETS),
        ("evaluate_1m_cells_2k_lag_partitions", MILLION_BUCKETS),
    ] {
        let (mut ledger, session, _) = work.ledger(buckets);
        let now = now_after(buckets);
        for seq in 1..=3 {
            ledger
                .apply_lag(session, &work.lag(seq, now), now)
                .expect("lag accepted");
        }
        // The first evaluation closes every past bucket; later ones find them closed.
        drop(ledger.evaluate(now));
        drop(ledger.take_dirty());
        group.bench_function(name, |b| b.iter(|| black_box(ledger.evaluate(now))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1));
    targets = ingest, evaluate
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` and `--list` only
    // check that each bench runs, which the million-cell report is not needed for.
    let measuring = std::env::args().any(|a| a == "--bench");
    let listing = std::env::args().any(|a| a == "--list");
    if measuring && !listing {
        report_memory_per_cell();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
