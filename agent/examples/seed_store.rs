//! Writes an agent data directory holding a given number of cells, for
//! `bench/agent-restart.sh` and `bench/agent-history.sh`.
//!
//! The rows are what a running agent would have stored for one broker
//! emitter counting TOPICS topics × 10 partitions for three tiers (`broker`,
//! `group:billing`, `group:search`), one-minute buckets ending now: a source,
//! its series with ids from 0 (with their totals and first buckets), the
//! cells that refer to them, each (series, bucket)'s sum and the history of
//! the closed buckets, so that the agent restores them as they are.
//!
//! Usage: `cargo run --release -p tally-agent --example seed_store -- DIR [CELLS] [TOPICS]`
//! (CELLS defaults to 1,000,000, TOPICS to 100; DIR must not hold a database yet).

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tally_agent::store::{CellRow, HistoryRow, SeriesRow, SourceRow, Store, SumRow, WriteBatch};
use tally_audit::CellCounts;

const PARTITIONS: usize = 10;
const TIERS: [&str; 3] = ["broker", "group:billing", "group:search"];
const WIDTH_MS: i64 = 60_000;
const BATCH: usize = 50_000;

/// The shape of the seeded deployment.
#[derive(Clone, Copy)]
struct Shape {
    topics: usize,
    first_bucket: i64,
}

impl Shape {
    fn cells_per_bucket(self) -> usize {
        self.topics * PARTITIONS * TIERS.len()
    }
}

type Failure = Box<dyn std::error::Error>;

fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        return Err("usage: seed_store DIR [CELLS]".into());
    };
    let cells: usize = match args.next() {
        Some(n) => n.replace('_', "").parse().map_err(|e| {
            format!("\"{n}\" is not a number of cells ({e}): expected e.g. 1000000")
        })?,
        None => 1_000_000,
    };
    let topics: usize = match args.next() {
        Some(n) => n
            .replace('_', "")
            .parse()
            .ok()
            .filter(|t| *t > 0)
            .ok_or_else(|| format!("\"{n}\" is not a number of topics: expected e.g. 1000"))?,
        None => 100,
    };
    if dir.join(tally_agent::store::FILE_NAME).exists() {
        return Err(format!(
            "\"{}\" already holds an agent database: give an empty or missing directory",
            dir.display()
        )
        .into());
    }
    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let per_bucket = topics * PARTITIONS * TIERS.len();
    let buckets = cells.div_ceil(per_bucket) as i64;
    // The newest bucket is the current one, so nothing is past retention.
    let first_bucket = (now_ms / WIDTH_MS - (buckets - 1)) * WIDTH_MS;
    let shape = Shape {
        topics,
        first_bucket,
    };
    let series_count = topics * TIERS.len();
    let mut totals = vec![CellCounts::default(); series_count];

    let started = Instant::now();
    let mut store = Store::open(&dir)?;
    store.write(&WriteBatch {
        sources: vec![SourceRow {
            id: 0,
            name: "broker-local-1".into(),
            cluster: "local".into(),
            tier_kinds: r#"["broker","group"]"#.into(),
            epoch: first_bucket - 3_600_000,
            last_seen_ms: now_ms,
            messages: buckets as u64 * 3,
            errors: 0,
        }],
        ..WriteBatch::default()
    })?;
    // Each (series, bucket)'s sum, as the agent stores it beside its cells,
    // written with the batch that completes the bucket.
    let mut open_sums: std::collections::BTreeMap<(i64, u32), CellCounts> =
        std::collections::BTreeMap::new();
    for first in (0..cells).step_by(BATCH) {
        let last = (first + BATCH).min(cells);
        let batch_cells: Vec<CellRow> = (first..last).map(|i| cell(i, shape)).collect();
        for c in &batch_cells {
            totals[c.series as usize].add(&c.counts);
            open_sums
                .entry((c.bucket, c.series))
                .or_default()
                .add(&c.counts);
        }
        let done_before = if last == cells {
            i64::MAX
        } else {
            batch_cells.last().map_or(i64::MIN, |c| c.bucket)
        };
        let still_open = open_sums.split_off(&(done_before, 0));
        let done = std::mem::replace(&mut open_sums, still_open);
        // A closed bucket has its judgement on record, as the agent writes
        // it at close: every tier counted what the broker did.
        let history = done
            .iter()
            .filter(|((bucket, _), _)| bucket + 3 * WIDTH_MS <= now_ms)
            .map(|(&(bucket, series), counts)| HistoryRow {
                series,
                bucket,
                status: "complete".into(),
                unresolved_at_close: false,
                records: counts.records,
                reference: counts.records,
                pending: 0,
                expired: 0,
                skipped: 0,
                closed_at_ms: bucket + 3 * WIDTH_MS,
            })
            .collect();
        let sums = done
            .into_iter()
            .map(|((bucket, series), counts)| SumRow {
                series,
                bucket,
                counts,
            })
            .collect();
        store.write(&WriteBatch {
            cells: batch_cells,
            sums,
            history,
            ..WriteBatch::default()
        })?;
        if last % 5_000_000 < BATCH {
            eprintln!("seed_store: {last} cells of {cells}");
        }
    }
    let series: Vec<SeriesRow> = (0..topics)
        .flat_map(|t| TIERS.iter().enumerate().map(move |(k, tier)| (t, k, tier)))
        .map(|(t, k, tier)| {
            let id = t * TIERS.len() + k;
            SeriesRow {
                id: id as u32,
                cluster: "local".into(),
                topic: format!("orders-{t:04}"),
                tier: (*tier).to_owned(),
                pruned_records: 0,
                pruned_expired: 0,
                first_bucket: Some(first_bucket),
                live: totals[id],
            }
        })
        .collect();
    store.write(&WriteBatch {
        series,
        ..WriteBatch::default()
    })?;
    drop(store);
    eprintln!(
        "seed_store: wrote {cells} cells ({buckets} buckets of {per_bucket}, {series_count} series) to \"{}\" in {:.1?}",
        dir.display(),
        started.elapsed()
    );
    Ok(())
}

/// The `i`th cell: buckets one after another, each (topic, partition) with
/// its three tiers side by side.
fn cell(i: usize, shape: Shape) -> CellRow {
    let first_bucket = shape.first_bucket;
    let bucket = (i / shape.cells_per_bucket()) as i64;
    let k = i % shape.cells_per_bucket();
    let tier = k % TIERS.len();
    let partition = k / TIERS.len() % PARTITIONS;
    let topic = k / (TIERS.len() * PARTITIONS);
    // Every tier counts what the broker did: the books balance.
    let records =
        1_000 + ((bucket as u64 * 31 + (topic * PARTITIONS + partition) as u64) * 7) % 500;
    CellRow {
        source: 0,
        series: (topic * TIERS.len() + tier) as u32,
        partition: partition as i32,
        bucket: first_bucket + bucket * WIDTH_MS,
        epoch: first_bucket - 3_600_000,
        seq: bucket as u64 * 3 + 1,
        counts: tally_audit::CellCounts {
            records,
            bytes: records * 180,
            ..Default::default()
        },
    }
}
