//! How long one evaluation of the example rules takes on a large snapshot:
//! the agent runs it on its evaluation task at every tick.
//!
//! Target (see BENCHMARKS.md): at most 100 ms (a tenth of the default 1 s
//! tick) with 100,000 (group, topic, partition) lag series: 1,000 groups that
//! each read 10 topics of 10 partitions, 1,000 topics with a broker tier and
//! 10 group tiers each, 60 buckets per topic in the window. A tenth of the
//! groups lag, so about 1,000 alerts are active and the state machine has
//! work to do.
//!
//! Run with `cargo bench -p tally-alerts --bench evaluate`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use tally_alerts::{AlertBook, EXAMPLE_RULES, RuleSet};
use tally_audit::snapshot::{
    BucketBooks, BucketTier, GroupHealth, PartitionLag, SourceInfo, TierBooks, TopicBooks,
    TopicBuckets,
};
use tally_audit::{BucketStatus, GroupStatus, PartitionStatus, Snapshot};

const TOPICS: usize = 1_000;
const GROUPS: usize = 1_000;
const PARTITIONS: usize = 10;
const TOPICS_PER_GROUP: usize = 10;
const BUCKETS: usize = 60;
const NOW: i64 = 1_732_800_000_000;

fn snapshot() -> Snapshot {
    let topic = |t: usize| format!("orders-{t:04}");
    let group = |g: usize| format!("service-{g:04}");
    let lagging = |g: usize| g.is_multiple_of(10);
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); TOPICS];
    for g in 0..GROUPS {
        for k in 0..TOPICS_PER_GROUP {
            readers[(g + k) % TOPICS].push(g);
        }
    }
    let groups = (0..GROUPS)
        .map(|g| GroupHealth {
            cluster: "local".into(),
            group: group(g),
            status: if lagging(g) {
                GroupStatus::Err
            } else {
                GroupStatus::Ok
            },
            lag_records: 0,
            max_lag_seconds: 0.0,
            stale: false,
            partitions: (0..TOPICS_PER_GROUP)
                .flat_map(|k| {
                    (0..PARTITIONS).map(move |p| PartitionLag {
                        topic: format!("orders-{:04}", (g + k) % TOPICS),
                        partition: p as i32,
                        committed: 1_000,
                        end_offset: if lagging(g) { 3_000 } else { 1_000 },
                        start_offset: 0,
                        lag_records: if lagging(g) { 2_000 } else { 0 },
                        lag_seconds: if lagging(g) { 90.0 } else { 0.0 },
                        status: PartitionStatus::Ok,
                        commit_at_ms: NOW,
                        commits: Vec::new(),
                        stable_offset: None,
                        estimated: false,
                        stale: false,
                    })
                })
                .collect::<Vec<_>>()
                .into(),
        })
        .map(std::sync::Arc::new)
        .collect();
    let tier_books = |completeness| TierBooks {
        records: 1_000,
        completeness,
        ..TierBooks::default()
    };
    let topics = (0..TOPICS)
        .map(|t| {
            let mut tiers = BTreeMap::from([("broker".to_owned(), tier_books(1.0))]);
            for g in &readers[t] {
                let c = if lagging(*g) { 0.5 } else { 1.0 };
                tiers.insert(format!("group:{}", group(*g)), tier_books(c));
            }
            std::sync::Arc::new(TopicBooks {
                cluster: "local".into(),
                topic: topic(t),
                reference: Some("broker".into()),
                tiers,
            })
        })
        .collect();
    let buckets = (0..TOPICS)
        .map(|t| TopicBuckets {
            cluster: "local".into(),
            topic: topic(t),
            width_ms: 60_000,
            buckets: (0..BUCKETS)
                .map(|b| BucketBooks {
                    bucket: NOW - (BUCKETS - b) as i64 * 60_000,
                    tiers: readers[t]
                        .iter()
                        .map(|g| {
                            let expired = u64::from(lagging(*g) && b == 0);
                            (
                                format!("group:{}", group(*g)),
                                BucketTier {
                                    records: 100,
                                    status: BucketStatus::Complete,
                                    missing: expired,
                                    excess: 0,
                                    pending: Some(0),
                                    expired: Some(expired),
                                    skipped: Some(0),
                                    aborted: 0,
                                },
                            )
                        })
                        .collect(),
                })
                .collect::<Vec<_>>()
                .into(),
        })
        .collect();
    Snapshot {
        at_ms: NOW,
        width_ms: 60_000,
        groups,
        topics,
        buckets,
        sources: vec![SourceInfo {
            source: "broker-0".into(),
            cluster: "local".into(),
            tier_kinds: vec!["broker".into(), "group".into()],
            last_seen_ms: NOW,
            messages: BTreeMap::new(),
            errors: 0,
            connected: true,
            duplicate_entries: 0,
        }],
        ..Snapshot::default()
    }
}

fn evaluate(c: &mut Criterion) {
    let rules = RuleSet::parse(EXAMPLE_RULES, "example").expect("the example rules parse");
    let snap = snapshot();
    let mut book = AlertBook::new(15 * 60_000);
    let mut now = NOW;
    book.evaluate(now, &rules, &snap);
    let active = book.alerts().count();
    eprintln!("evaluate: {active} alerts active over 100,000 lag series");
    let mut g = c.benchmark_group("alerts");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    g.bench_function("evaluate_example_rules_100k_partitions", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(book.evaluate(now, &rules, black_box(&snap)))
        })
    });
    g.finish();
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
