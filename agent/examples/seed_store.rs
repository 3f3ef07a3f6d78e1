//! Writes an agent data directory holding a given number of cells, for
//! `bench/agent-restart.sh`.
//!
//! The rows are what a running agent would have stored for one broker
//! emitter counting 100 topics × 10 partitions for three tiers (`broker`,
//! `group:billing`, `group:search`), one-minute buckets ending now: a source,
//! its series with ids from 0, and cells that refer to them, so that the agent
//! restores them as they are.
//!
//! Usage: `cargo run --release -p tally-agent --example seed_store -- DIR [CELLS]`
//! (CELLS defaults to 1,000,000; DIR must not hold a database yet).

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tally_agent::store::{CellRow, SeriesRow, SourceRow, Store, WriteBatch};

const TOPICS: usize = 100;
const PARTITIONS: usize = 10;
const TIERS: [&str; 3] = ["broker", "group:billing", "group:search"];
const CELLS_PER_BUCKET: usize = TOPICS * PARTITIONS * TIERS.len();
const WIDTH_MS: i64 = 60_000;
const BATCH: usize = 50_000;

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
    if dir.join(tally_agent::store::FILE_NAME).exists() {
        return Err(format!(
            "\"{}\" already holds an agent database: give an empty or missing directory",
            dir.display()
        )
        .into());
    }
    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let buckets = cells.div_ceil(CELLS_PER_BUCKET) as i64;
    // The newest bucket is the current one, so nothing is past retention.
    let first_bucket = (now_ms / WIDTH_MS - (buckets - 1)) * WIDTH_MS;

    let started = Instant::now();
    let mut store = Store::open(&dir)?;
    let series: Vec<SeriesRow> = (0..TOPICS)
        .flat_map(|t| {
            TIERS.iter().enumerate().map(move |(k, tier)| SeriesRow {
                id: (t * TIERS.len() + k) as u32,
                cluster: "local".into(),
                topic: format!("orders-{t:03}"),
                tier: (*tier).to_owned(),
                pruned_records: 0,
                pruned_expired: 0,
            })
        })
        .collect();
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
        series,
        ..WriteBatch::default()
    })?;
    for first in (0..cells).step_by(BATCH) {
        let batch = WriteBatch {
            cells: (first..(first + BATCH).min(cells))
                .map(|i| cell(i, first_bucket))
                .collect(),
            ..WriteBatch::default()
        };
        store.write(&batch)?;
    }
    drop(store);
    eprintln!(
        "seed_store: wrote {cells} cells ({buckets} buckets of {CELLS_PER_BUCKET}) to \"{}\" in {:.1?}",
        dir.display(),
        started.elapsed()
    );
    Ok(())
}

/// The `i`th cell: buckets one after another, each (topic, partition) with
/// its three tiers side by side.
fn cell(i: usize, first_bucket: i64) -> CellRow {
    let bucket = (i / CELLS_PER_BUCKET) as i64;
    let k = i % CELLS_PER_BUCKET;
    let tier = k % TIERS.len();
    let partition = k / TIERS.len() % PARTITIONS;
    let topic = k / (TIERS.len() * PARTITIONS);
    let records = 1_000 + (i as u64 * 7) % 500;
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
