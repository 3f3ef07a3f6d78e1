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

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use prometheus::{Encoder, TextEncoder};
use tally_agent::metrics::{AgentMetrics, snapshot_families};
use tally_audit::snapshot::{GroupHealth, PartitionLag, SourceInfo, TierBooks, TopicBooks};
use tally_audit::{BucketStatus, CommitPoint, GroupStatus, PartitionStatus, Snapshot};

const PARTITIONS: usize = 10;
/// Topics each group reads.
const TOPICS_PER_GROUP: usize = 10;
const NOW: i64 = 1_732_800_000_000;

/// A snapshot where `groups` groups each read `TOPICS_PER_GROUP` of `topics`
/// topics: group `g` reads topics `g .. g + 10`, wrapping around.
fn snapshot(topics: usize, groups: usize) -> Snapshot {
    let topic_name = |t: usize| format!("orders-{t:04}");
    let group_name = |g: usize| format!("service-{g:04}");
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); topics];
    for g in 0..groups {
        for k in 0..TOPICS_PER_GROUP {
            readers[(g + k) % topics].push(g);
        }
    }
    let books = |records: u64, group: bool| TierBooks {
        records,
        bytes: records * 180,
        completeness: if group { 0.998 } else { 1.0 },
        missing: 0,
        excess: 0,
        pending: group.then_some(120),
        expired: group.then_some(0),
        skipped: group.then_some(0),
        no_timestamp: 0,
        aborted: 0,
        buckets: BTreeMap::from([
            (BucketStatus::Open, 3),
            (
                if group {
                    BucketStatus::Pending
                } else {
                    BucketStatus::Complete
                },
                57,
            ),
        ]),
    };
    let topic_books = (0..topics)
        .map(|t| {
            let mut tiers = BTreeMap::from([("broker".to_owned(), books(5_000_000, false))]);
            for &g in &readers[t] {
                tiers.insert(format!("group:{}", group_name(g)), books(4_999_880, true));
            }
            TopicBooks {
                cluster: "local".into(),
                topic: topic_name(t),
                reference: Some("broker".into()),
                tiers,
            }
        })
        .collect();
    let group_health = (0..groups)
        .map(|g| {
            let partitions: Vec<PartitionLag> = (0..TOPICS_PER_GROUP)
                .flat_map(|k| {
                    let topic = topic_name((g + k) % topics);
                    (0..PARTITIONS).map(move |p| PartitionLag {
                        topic: topic.clone(),
                        partition: p as i32,
                        committed: 500_000 + p as i64,
                        end_offset: 500_012 + p as i64,
                        start_offset: 1_000,
                        lag_records: 12,
                        lag_seconds: 0.4,
                        status: PartitionStatus::Ok,
                        commit_at_ms: NOW - 900,
                        commits: vec![CommitPoint {
                            offset: 500_000 + p as i64,
                            lag: 12,
                            at_ms: NOW - 900,
                        }],
                        stable_offset: None,
                        estimated: false,
                        stale: false,
                    })
                })
                .collect();
            GroupHealth {
                cluster: "local".into(),
                group: group_name(g),
                status: GroupStatus::Ok,
                lag_records: partitions.iter().map(|p| p.lag_records).sum(),
                max_lag_seconds: 0.4,
                stale: false,
                partitions,
            }
        })
        .collect();
    Snapshot {
        at_ms: NOW,
        width_ms: 60_000,
        grace_ms: 120_000,
        window_ms: 3_600_000,
        topics: topic_books,
        buckets: Vec::new(),
        groups: group_health,
        sources: vec![SourceInfo {
            source: "broker-local-1".into(),
            cluster: "local".into(),
            tier_kinds: vec!["broker".into(), "group".into()],
            last_seen_ms: NOW,
            messages: BTreeMap::from([("counts".into(), 1_000), ("lag".into(), 1_000)]),
            errors: 0,
            connected: true,
            duplicate_entries: 0,
        }],
        alerts: Vec::new(),
        latency: Vec::new(),
        clusters: Vec::new(),
    }
}

fn series_in(exposition: &[u8]) -> usize {
    exposition
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && l[0] != b'#')
        .count()
}

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
            b.iter(|| black_box(metrics.render(&snap)))
        });
        // What a scrape of an evaluation already rendered costs: its text is
        // shared with the response (a reference, not a copy), and the few
        // live counters are encoded.
        let cached = axum::body::Bytes::from(metrics.render_snapshot(&snap));
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
                let mut out = Vec::with_capacity(cached.len());
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
