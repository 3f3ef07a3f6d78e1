//! How fast the agent's state database restarts and commits.
//!
//! Targets: a restart with 1,000,000 stored cells is ready within a second,
//! so `Store::open` + `load` must take well under that; a group commit of
//! 10,000 cell upserts takes a few tens of milliseconds at most.
//!
//! Run with `cargo bench -p tally-agent --bench store_load`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode};
use tally_agent::store::{CellRow, Store, WriteBatch};
use tempfile::TempDir;

const STORED_CELLS: usize = 1_000_000;
const SETUP_BATCH: usize = 50_000;
const COMMIT_BATCH: usize = 10_000;
/// Entries per `counts` message, as the broker's emitter sends them.
const MESSAGE: usize = 1_000;

const SOURCES: usize = 4;
const SERIES: usize = 250;
const PARTITIONS: usize = 10;
/// Cells per bucket: every (source, series, partition) counts in every bucket.
const CELLS_PER_BUCKET: usize = SOURCES * SERIES * PARTITIONS;
const WIDTH_MS: i64 = 60_000;
const FIRST_BUCKET: i64 = 1_732_800_000_000;

/// The `i`th cell in arrival order: buckets fill one after another, as they do
/// when emitters report in event time, which is not the table's key order.
fn cell(i: usize, seq: u64) -> CellRow {
    let bucket = i / CELLS_PER_BUCKET;
    let within = i % CELLS_PER_BUCKET;
    let records = (i as u64 * 7_919) % 5_000_000;
    CellRow {
        source: (within % SOURCES) as u32,
        series: (within / SOURCES % SERIES) as u32,
        partition: (within / (SOURCES * SERIES)) as i32,
        bucket: FIRST_BUCKET + bucket as i64 * WIDTH_MS,
        epoch: 1_732_799_000_000,
        seq,
        counts: tally_audit::CellCounts {
            records,
            bytes: records * 180,
            no_timestamp: records % 3,
            expired: records % 11,
            ..Default::default()
        },
    }
}

/// A data directory holding `STORED_CELLS` cells, written once per run in
/// batches of `SETUP_BATCH`, as the agent would have written them.
fn stored_million() -> TempDir {
    let dir = TempDir::new().expect("temporary directory");
    let mut store = Store::open(dir.path()).expect("open the store");
    let started = Instant::now();
    for first in (0..STORED_CELLS).step_by(SETUP_BATCH) {
        let batch = WriteBatch {
            cells: (first..first + SETUP_BATCH).map(|i| cell(i, 1)).collect(),
            ..WriteBatch::default()
        };
        store.write(&batch).expect("write a setup batch");
    }
    eprintln!(
        "setup: wrote {STORED_CELLS} cells in batches of {SETUP_BATCH} in {:.2?}",
        started.elapsed()
    );
    dir
}

fn restart(c: &mut Criterion, dir: &Path) {
    let mut group = c.benchmark_group("store");
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("open_and_load_1m_cells", |b| {
        b.iter(|| {
            let store = Store::open(dir).expect("open the store");
            let loaded = store.load().expect("load");
            assert_eq!(loaded.cells.len(), STORED_CELLS);
            black_box(loaded)
        })
    });
    group.finish();
}

fn commit(c: &mut Criterion, dir: &Path) {
    let mut store = Store::open(dir).expect("open the store");
    let mut group = c.benchmark_group("store");
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(5));

    // The steady state: the cumulative counts of the newest bucket rise, for
    // every source, series and partition at once.
    let mut seq = 1;
    group.bench_function("commit_10k_cell_updates_into_1m", |b| {
        b.iter_batched(
            || {
                seq += 1;
                WriteBatch {
                    cells: (STORED_CELLS - COMMIT_BATCH..STORED_CELLS)
                        .map(|i| cell(i, seq))
                        .collect(),
                    ..WriteBatch::default()
                }
            },
            |batch| store.write(&batch).expect("commit"),
            BatchSize::PerIteration,
        )
    });

    // The same, as the agent writes it: one batch per message of 1,000
    // entries, any of which may fail alone.
    group.bench_function("commit_10k_cell_updates_as_10_messages_into_1m", |b| {
        b.iter_batched(
            || {
                seq += 1;
                (0..COMMIT_BATCH / MESSAGE)
                    .map(|m| {
                        let first = STORED_CELLS - COMMIT_BATCH + m * MESSAGE;
                        WriteBatch {
                            cells: (first..first + MESSAGE).map(|i| cell(i, seq)).collect(),
                            ..WriteBatch::default()
                        }
                    })
                    .collect::<Vec<_>>()
            },
            |pieces| {
                let pieces: Vec<&WriteBatch> = pieces.iter().collect();
                let outcomes = store.write_each(&pieces).expect("commit");
                assert!(outcomes.iter().all(Result::is_ok));
            },
            BatchSize::PerIteration,
        )
    });

    // A new bucket opening: every cell of the commit is new.
    let mut next = STORED_CELLS;
    group.bench_function("commit_10k_new_cells_into_1m", |b| {
        b.iter_batched(
            || {
                let first = next;
                next += COMMIT_BATCH;
                WriteBatch {
                    cells: (first..first + COMMIT_BATCH).map(|i| cell(i, 1)).collect(),
                    ..WriteBatch::default()
                }
            },
            |batch| store.write(&batch).expect("commit"),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

// A hand-written main instead of `criterion_main!`, so that the data directory
// is removed when the run ends.
fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    let dir = stored_million();
    // `restart` first: `commit` adds cells to the same directory.
    restart(&mut c, dir.path());
    commit(&mut c, dir.path());
    c.final_summary();
}
