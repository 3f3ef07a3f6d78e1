//! The snapshot of a large deployment that the `/metrics` benches render
//! (`metrics.rs`, `metrics_options.rs`).

use std::collections::BTreeMap;

use tally_audit::snapshot::{GroupHealth, PartitionLag, SourceInfo, TierBooks, TopicBooks};
use tally_audit::{BucketStatus, CommitPoint, GroupStatus, PartitionStatus, Snapshot};

const PARTITIONS: usize = 10;
/// Topics each group reads.
const TOPICS_PER_GROUP: usize = 10;
const NOW: i64 = 1_732_800_000_000;

/// A snapshot where `groups` groups each read `TOPICS_PER_GROUP` of `topics`
/// topics: group `g` reads topics `g .. g + 10`, wrapping around.
pub(crate) fn snapshot(topics: usize, groups: usize) -> Snapshot {
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
        mirror_lag: None,
    };
    let topic_books = (0..topics)
        .map(|t| {
            let mut tiers = BTreeMap::from([("broker".to_owned(), books(5_000_000, false))]);
            for &g in &readers[t] {
                tiers.insert(format!("group:{}", group_name(g)), books(4_999_880, true));
            }
            std::sync::Arc::new(TopicBooks {
                cluster: "local".into(),
                topic: topic_name(t),
                reference: Some("broker".into()),
                tiers,
            })
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
                partitions: partitions.into(),
            }
            .into()
        })
        .collect();
    Snapshot {
        at_ms: NOW,
        width_ms: 60_000,
        grace_ms: 120_000,
        window_ms: 3_600_000,
        topics: topic_books,
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
        // No buckets, alerts, latency or collector cluster states.
        ..Snapshot::default()
    }
}

/// Sample lines in a text exposition (those not starting with `#`).
pub(crate) fn series_in(exposition: &[u8]) -> usize {
    exposition
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && l[0] != b'#')
        .count()
}
