//! Memory per audited partition (issue 15): the live heap bytes one partition's books
//! hold after 24 hours of 1-minute buckets, records in time order, as the collector
//! keeps them (the same `PartitionBooks` as the instrumented broker).
//!
//! `cargo bench -p tally-collect --bench books_memory`
//!
//! Per partition: a batch of 100 records every 10 s for 24 h (8,640 batches, 864,000
//! records), every record in the bucket of its own timestamp; three groups commit
//! after every batch (one keeps up, one lags a minute, one a quarter of an hour); the
//! dirty cells are handed out after every minute, as the collector does when it sends
//! counts. 100 partitions are built side by side and the live heap is divided by 100.
//! The workspace forbids `unsafe`, so the counting allocator is `stats_alloc`'s.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tally_audit::BucketWidth;
use tally_audit::books::PartitionBooks;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const PARTITIONS: usize = 100;
const HOURS: i64 = 24;
const BATCH_EVERY_MS: i64 = 10_000;
const RECORDS_PER_BATCH: usize = 100;
const BUDGET_BYTES: f64 = 128.0 * 1024.0;

fn main() {
    let width = BucketWidth::new(60_000).expect("a minute is a width");
    let start_ms: i64 = 1_800_000_000_000;
    let region = Region::new(GLOBAL);
    let mut parts: Vec<PartitionBooks> = (0..PARTITIONS).map(|_| PartitionBooks::new()).collect();
    let batches = HOURS * 3_600_000 / BATCH_EVERY_MS;
    let mut buckets = Vec::with_capacity(RECORDS_PER_BATCH);
    let mut stamps = Vec::with_capacity(RECORDS_PER_BATCH);
    for n in 0..batches {
        let at = start_ms + n * BATCH_EVERY_MS;
        buckets.clear();
        stamps.clear();
        for i in 0..RECORDS_PER_BATCH as i64 {
            let ts = at + i * (BATCH_EVERY_MS / RECORDS_PER_BATCH as i64);
            stamps.push(ts);
            buckets.push(width.bucket_of(ts).start_ms());
        }
        for books in &mut parts {
            let first = books.end();
            books.append(
                first,
                &buckets,
                100 * RECORDS_PER_BATCH as u64,
                &[],
                &stamps,
            );
            let end = books.end();
            books.commit("keeps-up", end, None);
            books.commit("a-minute-behind", (end - 600).max(0), None);
            books.commit("a-quarter-behind", (end - 9_000).max(0), None);
            if n % 6 == 5 {
                drop(books.take_dirty());
            }
        }
    }
    let stats = region.change();
    let live = stats.bytes_allocated as f64 - stats.bytes_deallocated as f64;
    let per = live / PARTITIONS as f64;
    println!(
        "books of {PARTITIONS} partitions, {HOURS} h of 1-min buckets, {} records each: live heap {:.1} MiB",
        batches * RECORDS_PER_BATCH as i64,
        live / (1 << 20) as f64
    );
    println!(
        "per partition: {:.1} KiB (target ≤ 128 KiB: {})",
        per / 1024.0,
        if per <= BUDGET_BYTES { "met" } else { "missed" }
    );
    drop(parts);
}
