//! How long `/metrics` takes to render from a large snapshot.
//!
//! Target (see BENCHMARKS.md): at most 100 ms with 100,000 partition-level
//! series. The snapshot is a large deployment: 1,000 topics of 10
//! partitions, and 1,000 consumer groups that each read 10 of the topics, so
//! that `tally_consumer_lag_records{group,topic,partition}` has 100,000
//! series. Every (group, partition) also yields `lag_seconds`, the committed
//! offset and five partition-status series, and every topic its per-tier
//! books, so the whole exposition holds far more series; the bench prints the
//! total. A second snapshot, with 12,500 (group, partition) pairs, holds about
//! 100,000 series in all.
//!
//! Run with `cargo bench -p tally-agent --bench metrics`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use prometheus::{Encoder, TextEncoder};
use tally_agent::metrics::{AgentMetrics, snapshot_families};

mod common;
use common::{series_in, snapshot};

fn render(c: &mut Criterion) {
    let metrics = AgentMetrics::new();
    let mut group = c.benchmark_group("metrics");
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(8));
    for (name, topics, groups) in [
        ("100k_partitions", 1_000, 1_000),
        ("12k_partitions", 1_000, 125),
    ] {
        let snap = snapshot(topics, groups);
        let partitions: usize = snap.groups.iter().map(|g| g.partitions.len()).sum();
        let out = metrics.render(&snap);
        let series = series_in(&out);
        println!(
            "metrics/{name}: {partitions} (group, topic, partition) series per family, {series} series in all, {:.1} MiB of text",
            out.len() as f64 / 1_048_576.0
        );
        group.throughput(Throughput::Elements(series as u64));
        group.bench_function(format!("render_{name}"), |b| {
            b.iter(|| black_box(metrics.render_snapshot(&snap)))
        });
        // What a scrape of an evaluation already rendered costs: its text is
        // shared with the response (a reference, not a copy), and the few
        // live counters are encoded.
        let cached = metrics.render_snapshot(&snap);
        let text_len: usize = cached.iter().map(|c| c.len()).sum();
        group.bench_function(format!("scrape_{name}"), |b| {
            b.iter(|| {
                let live = axum::body::Bytes::from(metrics.render_live());
                black_box((cached.clone(), live))
            })
        });
        // The `prometheus` crate's way, for comparison: building its
        // families (a `String` per label name and value), then its encoder.
        group.bench_function(format!("crate_render_{name}"), |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(text_len);
                TextEncoder::new()
                    .encode(&snapshot_families(&snap), &mut out)
                    .expect("encodable");
                black_box(out)
            })
        });
        // Building the families alone (what the OTLP export reads).
        group.bench_function(format!("families_{name}"), |b| {
            b.iter(|| black_box(snapshot_families(&snap)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1));
    targets = render
}
criterion_main!(benches);
