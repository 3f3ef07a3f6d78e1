use super::*;
use tally_audit::{GroupStatus, LagSample, Latency, LatencyHistogram};

const W: u64 = 1_000;
/// A bucket start well in the past of `NOW`, so that its grace is over.
const B0: i64 = 100_000;
const NOW_OPEN: i64 = B0 + 500;
const NOW_CLOSED: i64 = B0 + 10_000;

fn ledger() -> Ledger {
    let mut cfg = LedgerConfig::new(BucketWidth::new(W).unwrap());
    cfg.window_ms = 60_000;
    Ledger::new(cfg)
}

fn hello(l: &mut Ledger, source: &str, started: i64) -> Session {
    l.hello(
        &Hello {
            source: source.into(),
            cluster: "local".into(),
            tier_kinds: vec![
                TierKind::Produced,
                TierKind::Broker,
                TierKind::Group,
                TierKind::Consumer,
            ],
            bucket_width_ms: W,
            started_at_ms: started,
        },
        0,
    )
    .unwrap()
}

fn entry(tier: &str, partition: i32, bucket: i64, records: u64) -> CountEntry {
    CountEntry {
        tier: tier.parse().unwrap(),
        topic: "orders".into(),
        partition,
        bucket: BucketWidth::new(W).unwrap().bucket_at(bucket).unwrap(),
        counts: CellCounts {
            records,
            bytes: records * 100,
            no_timestamp: 0,
            expired: 0,
            skipped: 0,
            ..CellCounts::default()
        },
    }
}

fn group(records: u64, expired: u64, skipped: u64) -> CountEntry {
    let mut e = entry("group:billing", 0, B0, records);
    e.counts.expired = expired;
    e.counts.skipped = skipped;
    e
}

fn bucket_tier(snap: &Snapshot, tier: &str) -> BucketTier {
    snap.buckets[0].buckets[0].tiers[tier].clone()
}

fn status_of(l: &mut Ledger, now: i64, tier: &str) -> BucketStatus {
    bucket_tier(&l.evaluate(now), tier).status
}

#[test]
fn a_bucket_within_grace_is_open() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    l.apply_counts(s, 1, &[entry("broker", 0, B0, 10), group(3, 0, 0)], 0)
        .unwrap();
    assert_eq!(status_of(&mut l, NOW_OPEN, "broker"), BucketStatus::Open);
    assert_eq!(
        status_of(&mut l, NOW_OPEN, "group:billing"),
        BucketStatus::Open
    );
    // Grace is 2 × width after the bucket ends: open until B0 + 3 s.
    assert_eq!(status_of(&mut l, B0 + 2_999, "broker"), BucketStatus::Open);
    assert_eq!(
        status_of(&mut l, B0 + 3_000, "broker"),
        BucketStatus::Complete
    );
}

#[test]
fn group_statuses_follow_the_books() {
    let cases = [
        (group(10, 0, 0), BucketStatus::Complete, 0, 0, 0),
        (group(7, 0, 0), BucketStatus::Pending, 0, 0, 3),
        (group(7, 3, 0), BucketStatus::Incomplete, 3, 0, 0),
        (group(6, 0, 4), BucketStatus::Complete, 0, 0, 0),
        (group(12, 0, 0), BucketStatus::Excess, 0, 2, 0),
    ];
    for (g, status, missing, excess, pending) in cases {
        let mut l = ledger();
        let s = hello(&mut l, "b", 1);
        l.apply_counts(s, 1, &[entry("broker", 0, B0, 10), g.clone()], 0)
            .unwrap();
        let t = bucket_tier(&l.evaluate(NOW_CLOSED), "group:billing");
        assert_eq!(
            (t.status, t.missing, t.excess, t.pending),
            (status, missing, excess, Some(pending)),
            "{g:?}"
        );
        // The books balance: broker = consumed + pending + expired + skipped (without excess).
        if excess == 0 {
            assert_eq!(
                10,
                g.counts.records + pending + g.counts.expired + g.counts.skipped
            );
        }
    }
}

#[test]
fn client_tiers_compare_with_the_broker() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    l.apply_counts(
        s,
        1,
        &[
            entry("broker", 0, B0, 10),
            entry("produced", 0, B0, 12),
            entry("consumer:app", 0, B0, 9),
            entry("consumer:dup", 0, B0, 11),
        ],
        0,
    )
    .unwrap();
    let snap = l.evaluate(NOW_CLOSED);
    let produced = bucket_tier(&snap, "produced");
    assert_eq!(
        (produced.status, produced.missing),
        (BucketStatus::Incomplete, 2),
        "lost in produce"
    );
    let app = bucket_tier(&snap, "consumer:app");
    assert_eq!((app.status, app.missing), (BucketStatus::Incomplete, 1));
    let dup = bucket_tier(&snap, "consumer:dup");
    assert_eq!((dup.status, dup.excess), (BucketStatus::Excess, 1));
    assert_eq!(bucket_tier(&snap, "broker").status, BucketStatus::Complete);
    let books = &snap.topics[0];
    assert_eq!(books.reference.as_deref(), Some("broker"));
    assert!((books.tiers["produced"].completeness - 10.0 / 12.0).abs() < 1e-9);
    assert!((books.tiers["consumer:app"].completeness - 0.9).abs() < 1e-9);
}

#[test]
fn more_appended_than_produced_is_excess() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    l.apply_counts(
        s,
        1,
        &[entry("broker", 0, B0, 10), entry("produced", 0, B0, 8)],
        0,
    )
    .unwrap();
    let t = bucket_tier(&l.evaluate(NOW_CLOSED), "produced");
    assert_eq!((t.status, t.excess), (BucketStatus::Excess, 2));
}

#[test]
fn pending_at_close_then_caught_up_is_late() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    l.apply_counts(s, 1, &[entry("broker", 0, B0, 10), group(4, 0, 0)], 0)
        .unwrap();
    assert_eq!(
        status_of(&mut l, NOW_CLOSED, "group:billing"),
        BucketStatus::Pending
    );
    l.apply_counts(s, 2, &[group(10, 0, 0)], 0).unwrap();
    assert_eq!(
        status_of(&mut l, NOW_CLOSED + 1, "group:billing"),
        BucketStatus::Late
    );
    // A tier that was complete at close stays complete, never late.
    assert_eq!(
        status_of(&mut l, NOW_CLOSED + 2, "broker"),
        BucketStatus::Complete
    );
}

/// A bucket that left the window is judged again when a late count comes:
/// its history turns `late`, though no evaluation of the window shows it.
#[test]
fn a_late_count_before_the_window_corrects_the_history() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    l.apply_counts(s, 1, &[entry("broker", 0, B0, 10), group(4, 0, 0)], 0)
        .unwrap();
    assert_eq!(
        status_of(&mut l, NOW_CLOSED, "group:billing"),
        BucketStatus::Pending
    );
    let _ = l.take_dirty();
    // Two minutes on, the bucket is before the 1-minute window.
    let later = B0 + 120_000;
    assert!(l.evaluate(later).buckets[0].buckets.is_empty());
    l.apply_counts(s, 2, &[group(10, 0, 0)], later).unwrap();
    let snap = l.evaluate(later + 1);
    assert_eq!(
        snap.topics[0].tiers["group:billing"].records, 10,
        "the total follows the late count"
    );
    let history = l.take_dirty().history;
    let group_series = history
        .iter()
        .find(|h| h.bucket == B0 && h.status == "late")
        .unwrap_or_else(|| panic!("the bucket judged late again: {history:?}"));
    assert!(group_series.unresolved_at_close);
    assert_eq!((group_series.records, group_series.reference), (10, 10));
}

#[test]
fn complete_at_close_is_not_late() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    l.apply_counts(s, 1, &[entry("broker", 0, B0, 10), group(10, 0, 0)], 0)
        .unwrap();
    assert_eq!(
        status_of(&mut l, NOW_CLOSED, "group:billing"),
        BucketStatus::Complete
    );
    assert_eq!(
        status_of(&mut l, NOW_CLOSED + 1, "group:billing"),
        BucketStatus::Complete
    );
}

#[test]
fn a_resend_does_not_double_count() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    let msg = [entry("broker", 0, B0, 10)];
    assert_eq!(l.apply_counts(s, 1, &msg, 0).unwrap().changed, 1);
    let again = l.apply_counts(s, 1, &msg, 0).unwrap();
    assert_eq!((again.changed, again.unchanged), (0, 1));
    // A resend after a reconnect carries a new seq and the same cumulative value.
    l.apply_counts(s, 5, &msg, 0).unwrap();
    assert_eq!(l.evaluate(NOW_CLOSED).topics[0].tiers["broker"].records, 10);
}

#[test]
fn an_out_of_order_seq_is_ignored() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    l.apply_counts(s, 9, &[entry("broker", 0, B0, 50)], 0)
        .unwrap();
    let stale = l
        .apply_counts(s, 8, &[entry("broker", 0, B0, 40)], 0)
        .unwrap();
    assert_eq!(stale.stale, 1);
    assert_eq!(l.evaluate(NOW_CLOSED).topics[0].tiers["broker"].records, 50);
}

#[test]
fn a_restarted_emitter_supersedes_its_old_session() {
    let mut l = ledger();
    let old = hello(&mut l, "b", 1);
    l.apply_counts(old, 900, &[entry("broker", 0, B0, 50)], 0)
        .unwrap();
    // The old process's connection ended.
    l.goodbye(old);
    let new = hello(&mut l, "b", 2);
    // seq starts again at 1 in the new process; the later session wins.
    assert_eq!(
        l.apply_counts(new, 1, &[entry("broker", 0, B0, 60)], 0)
            .unwrap()
            .changed,
        1
    );
    assert_eq!(l.evaluate(NOW_CLOSED).topics[0].tiers["broker"].records, 60);
}

#[test]
fn two_sources_of_one_tier_are_summed() {
    let mut l = ledger();
    let a = hello(&mut l, "app-1", 1);
    let b = hello(&mut l, "app-2", 1);
    l.apply_counts(a, 1, &[entry("produced", 0, B0, 4)], 0)
        .unwrap();
    l.apply_counts(b, 1, &[entry("produced", 0, B0, 6)], 0)
        .unwrap();
    l.apply_counts(b, 2, &[entry("produced", 0, B0, 7)], 0)
        .unwrap();
    let snap = l.evaluate(NOW_CLOSED);
    assert_eq!(snap.topics[0].tiers["produced"].records, 11);
    assert_eq!(snap.sources.len(), 2);
}

#[test]
fn partitions_and_buckets_aggregate_per_topic_tier_bucket() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    l.apply_counts(
        s,
        1,
        &[
            entry("broker", 0, B0, 1),
            entry("broker", 1, B0, 2),
            entry("broker", 2, B0 + 1_000, 4),
        ],
        0,
    )
    .unwrap();
    let snap = l.evaluate(NOW_CLOSED);
    let buckets = &snap.buckets[0].buckets;
    assert_eq!(buckets.len(), 2);
    assert_eq!(
        (buckets[0].bucket, buckets[0].tiers["broker"].records),
        (B0, 3)
    );
    assert_eq!(
        (buckets[1].bucket, buckets[1].tiers["broker"].records),
        (B0 + 1_000, 4)
    );
    assert_eq!(snap.topics[0].tiers["broker"].records, 7);
}

#[test]
fn too_many_series_are_refused_whole() {
    let mut l = ledger();
    l.cfg.max_series_per_source = 2;
    let s = hello(&mut l, "b", 1);
    let err = l
        .apply_counts(
            s,
            1,
            &[
                entry("broker", 0, B0, 1),
                entry("broker", 1, B0, 1),
                entry("broker", 2, B0, 1),
            ],
            0,
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Audit(ref e) if e.reason == Reason::Cardinality),
        "{err}"
    );
    assert_eq!(l.cell_count(), 0, "nothing of a refused message is applied");
    // New buckets of known series do not count against the limit.
    l.apply_counts(
        s,
        2,
        &[entry("broker", 0, B0, 1), entry("broker", 1, B0 + 1_000, 1)],
        0,
    )
    .unwrap();
    l.apply_counts(s, 3, &[entry("broker", 0, B0 + 2_000, 1)], 0)
        .unwrap();
}

#[test]
fn a_tier_the_source_did_not_announce_is_refused() {
    let mut l = ledger();
    let s = l
        .hello(
            &Hello {
                source: "app".into(),
                cluster: "local".into(),
                tier_kinds: vec![TierKind::Produced],
                bucket_width_ms: W,
                started_at_ms: 1,
            },
            0,
        )
        .unwrap();
    let err = l
        .apply_counts(s, 1, &[entry("broker", 0, B0, 1)], 0)
        .unwrap_err();
    assert!(err.to_string().contains("\"broker\""), "{err}");
}

#[test]
fn buckets_older_than_retention_are_ignored_and_pruned() {
    let mut l = ledger();
    l.cfg.retention_ms = 5_000;
    let s = hello(&mut l, "b", 1);
    l.apply_counts(s, 1, &[entry("broker", 0, B0, 10)], B0)
        .unwrap();
    let batch = l.prune(B0 + 20_000, 0).unwrap().expect("a bucket to prune");
    assert_eq!(batch.prune_before, Some(l.prune_horizon(B0 + 20_000)));
    assert_eq!(l.cell_count(), 0);
    // The cumulative total keeps what was pruned.
    assert_eq!(
        l.evaluate(B0 + 20_000).topics[0].tiers["broker"].records,
        10
    );
    let late = l
        .apply_counts(s, 2, &[entry("broker", 0, B0, 12)], B0 + 20_000)
        .unwrap();
    assert_eq!((late.out_of_range, late.stale), (1, 0));
}

fn lag(group: &str, partition: i32, committed: i64, end: i64, commit_at_ms: i64) -> Lag {
    Lag {
        seq: 1,
        at_ms: commit_at_ms,
        partitions: vec![LagSample {
            group: group.into(),
            topic: "orders".into(),
            partition,
            committed,
            end_offset: end,
            start_offset: 0,
            lag_records: (end - committed) as u64,
            lag_seconds: if end > committed { 2.5 } else { 0.0 },
            commit_at_ms,
            stable_offset: None,
            estimated: false,
        }],
    }
}

#[test]
fn lag_health_restores_from_its_compact_rows_and_from_version_3_json() {
    let mut l = ledger();
    let s = hello(&mut l, "collect-local", 1);
    let mut batches = Vec::new();
    // A window that falls behind, then rewinds; and a partition with an
    // estimated lag, a stable offset and a sample older than its window.
    for i in 0..12 {
        let mut m = lag(
            "billing",
            0,
            1_000 + i * 25,
            2_000 + i * 60,
            60_000 * (i + 1),
        );
        m.partitions.push(LagSample {
            partition: 1,
            estimated: i % 2 == 0,
            stable_offset: Some(5_000 - i),
            lag_seconds: 0.1 * i as f64,
            ..lag("audit", 1, 40, 90, 1_000).partitions[0].clone()
        });
        m.partitions[1].group = "billing".into();
        l.apply_lag(s, &m, 60_000 * (i + 1) + 7).unwrap();
        batches.push(l.take_dirty());
    }
    l.apply_lag(s, &lag("billing", 0, 3, 2_800, 800_000), 800_005)
        .unwrap();
    l.apply_lag(s, &lag("audit", 2, 10, 10, 1_000), 1_000)
        .unwrap();
    batches.push(l.take_dirty());
    let rows = &batches.last().unwrap().health;
    assert!(
        rows.iter().all(|h| h.state.len() < 200),
        "compact rows: {:?}",
        rows.iter().map(|h| h.state.len()).collect::<Vec<_>>()
    );
    let now = 900_000;
    let expected = l.evaluate(now).groups;
    let mut restored = Ledger::restore(l.config().clone(), persisted(batches.clone())).unwrap();
    assert_eq!(restored.restore_skipped().rows, 0);
    assert_eq!(restored.evaluate(now).groups, expected);
    assert_eq!(restored.open_series(), l.open_series());
    // New entries after a restore get new rows.
    restored
        .apply_lag(s, &lag("audit", 3, 1, 2, 2_000), 2_000)
        .unwrap();
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| &b.health)
        .map(|h| h.id)
        .collect();
    let new = restored.take_message_rows().health;
    assert!(new.len() == 1 && !ids.contains(&new[0].id), "{new:?}");

    // Version 3 kept the state as JSON; a row that reads as neither is skipped.
    let mut loaded = persisted(batches);
    let json = r#"{"health":{"commits":[{"offset":2171,"lag":1172,"at_ms":1000}],"committed":2171,"end_offset":3343,"start_offset":0,"lag_records":1172,"lag_seconds":2.5},"last":{"group":"ops","topic":"orders","partition":0,"committed":2171,"end_offset":3343,"start_offset":0,"lag_records":1172,"lag_seconds":2.5,"commit_at_ms":1000},"source":0,"refreshed_ms":1000,"at_ms":1000,"interval_ms":10000}"#;
    let row = |id: i64, group: &str, state: &[u8]| tally_agent_health_row(id, group, state);
    loaded.health.push(row(90, "ops", json.as_bytes()));
    loaded.health.push(row(91, "broken", &[1, 0xff]));
    let mut restored = Ledger::restore(l.config().clone(), loaded).unwrap();
    assert_eq!(restored.restore_skipped().rows, 1);
    let snap = restored.evaluate(2_000);
    let ops = snap.groups.iter().find(|g| g.group == "ops").unwrap();
    assert_eq!(
        (
            ops.lag_records,
            ops.partitions[0].committed,
            ops.partitions[0].commits.len()
        ),
        (1172, 2171, 1)
    );
    assert!(snap.groups.iter().all(|g| g.group != "broken"));
    // A new partition takes an id after every stored one.
    restored
        .apply_lag(s, &lag("ops", 1, 1, 2, 2_000), 2_000)
        .unwrap();
    assert_eq!(restored.take_message_rows().health[0].id, 92);
}

fn tally_agent_health_row(id: i64, group: &str, state: &[u8]) -> crate::store::HealthRow {
    crate::store::HealthRow {
        id,
        cluster: "local".into(),
        group: group.into(),
        topic: "orders".into(),
        partition: 0,
        state: state.to_vec(),
    }
}

#[test]
fn lag_rolls_up_per_group() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    l.apply_lag(s, &lag("billing", 0, 100, 150, 1_000), 1_000)
        .unwrap();
    l.apply_lag(s, &lag("billing", 1, 10, 10, 1_000), 1_000)
        .unwrap();
    l.apply_lag(s, &lag("audit", 0, 5, 5, 1_000), 1_000)
        .unwrap();
    let snap = l.evaluate(2_000);
    assert_eq!(snap.groups.len(), 2);
    let billing = snap.groups.iter().find(|g| g.group == "billing").unwrap();
    assert_eq!(billing.lag_records, 50);
    assert_eq!(billing.max_lag_seconds, 2.5);
    assert_eq!(billing.partitions.len(), 2);
    assert_eq!(billing.status, GroupStatus::Ok);
}

/// Replays every batch into what a store would hold (upsert by key).
fn persisted(batches: Vec<WriteBatch>) -> Loaded {
    fn upsert<T, K: Ord>(rows: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
        let mut m = BTreeMap::new();
        for r in rows {
            m.insert(key(&r), r);
        }
        m.into_values().collect()
    }
    let mut all = WriteBatch::default();
    for b in batches {
        all.sources.extend(b.sources);
        all.series.extend(b.series);
        all.cells.extend(b.cells);
        all.history.extend(b.history);
        all.health.extend(b.health);
        all.kv.extend(b.kv);
    }
    Loaded {
        sources: upsert(all.sources, |r| r.id),
        series: upsert(all.series, |r| r.id),
        cells: upsert(all.cells, |r| (r.source, r.series, r.partition, r.bucket)),
        history: upsert(all.history, |r| (r.series, r.bucket)),
        health: upsert(all.health, |r| r.id),
        kv: upsert(all.kv, |r| r.0.clone()),
        skipped: Default::default(),
    }
}

#[test]
fn a_restored_ledger_reports_the_same_books_and_still_ignores_resends() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    let mut batches = Vec::new();
    l.apply_counts(s, 1, &[entry("broker", 0, B0, 10), group(4, 0, 0)], 0)
        .unwrap();
    l.apply_lag(s, &lag("billing", 0, 4, 10, 500), 500).unwrap();
    batches.push(l.take_dirty());
    let before = l.evaluate(NOW_CLOSED);
    batches.push(l.take_dirty());
    l.apply_counts(s, 2, &[group(10, 0, 0)], 0).unwrap();
    batches.push(l.take_dirty());
    let expected = l.evaluate(NOW_CLOSED + 1);
    assert_eq!(
        bucket_tier(&before, "group:billing").status,
        BucketStatus::Pending
    );

    let mut restored = Ledger::restore(l.config().clone(), persisted(batches)).unwrap();
    let mut after = restored.evaluate(NOW_CLOSED + 1);
    let mut expected = expected;
    for src in expected.sources.iter_mut().chain(after.sources.iter_mut()) {
        src.connected = false;
    }
    assert_eq!(after, expected);
    assert_eq!(
        bucket_tier(&after, "group:billing").status,
        BucketStatus::Late
    );
    // The old session's resend is recognised as already applied.
    let s2 = hello(&mut restored, "b", 1);
    let again = restored.apply_counts(s2, 2, &[group(10, 0, 0)], 0).unwrap();
    assert_eq!((again.changed, again.unchanged), (0, 1));
    assert_eq!(
        restored.evaluate(NOW_CLOSED + 2).topics[0].tiers["group:billing"].records,
        10
    );
}

#[test]
fn a_group_that_consumed_nothing_of_a_bucket_is_pending_there() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    l.apply_counts(
        s,
        1,
        &[
            entry("broker", 0, B0, 10),
            entry("broker", 0, B0 + 1_000, 5),
            group(10, 0, 0),
        ],
        0,
    )
    .unwrap();
    let snap = l.evaluate(NOW_CLOSED);
    let second = &snap.buckets[0].buckets[1].tiers["group:billing"];
    assert_eq!(
        (second.status, second.records, second.pending),
        (BucketStatus::Pending, 0, Some(5))
    );
    // Before the tier's first bucket, nothing is judged.
    l.apply_counts(s, 2, &[entry("broker", 0, B0 - 1_000, 3)], 0)
        .unwrap();
    let snap = l.evaluate(NOW_CLOSED);
    assert!(
        !snap.buckets[0].buckets[0]
            .tiers
            .contains_key("group:billing")
    );
}

fn histogram(
    tier: &str,
    bounds_ms: &[u64],
    counts: &[u64],
    count: u64,
    sum_ms: u64,
) -> LatencyHistogram {
    LatencyHistogram {
        tier: tier.parse().unwrap(),
        topic: "orders".into(),
        bounds_ms: bounds_ms.to_vec(),
        counts: counts.to_vec(),
        count,
        sum_ms,
    }
}

fn latency(seq: u64, histograms: Vec<LatencyHistogram>) -> Latency {
    Latency { seq, histograms }
}

#[test]
fn latency_keeps_the_last_histogram_per_source_and_sums_sources() {
    let mut l = ledger();
    let a = hello(&mut l, "a", 1);
    let b = hello(&mut l, "b", 1);
    let applied = l
        .apply_latency(
            a,
            &latency(1, vec![histogram("broker", &[10, 100], &[1, 2], 3, 400)]),
            0,
        )
        .unwrap();
    assert_eq!(applied.changed, 1);
    // A later cumulative value replaces the first; a resend changes nothing.
    let newer = histogram("broker", &[10, 100], &[2, 4], 5, 600);
    l.apply_latency(a, &latency(2, vec![newer.clone()]), 0)
        .unwrap();
    let again = l.apply_latency(a, &latency(2, vec![newer]), 0).unwrap();
    assert_eq!(again.unchanged, 1);
    // An older seq arriving late is ignored.
    let old = l
        .apply_latency(
            a,
            &latency(1, vec![histogram("broker", &[10, 100], &[9, 9], 9, 9)]),
            0,
        )
        .unwrap();
    assert_eq!(old.stale, 1);
    l.apply_latency(
        b,
        &latency(1, vec![histogram("broker", &[10, 100], &[1, 1], 1, 7)]),
        0,
    )
    .unwrap();
    let snap = l.evaluate(NOW_OPEN);
    assert_eq!(snap.latency.len(), 1, "{:?}", snap.latency);
    let books = &snap.latency[0];
    assert_eq!(
        (
            books.cluster.as_str(),
            books.topic.as_str(),
            books.tier.as_str()
        ),
        ("local", "orders", "broker")
    );
    assert_eq!(
        (books.counts.as_slice(), books.count, books.sum_ms),
        (&[3, 5][..], 6, 607)
    );
    assert_eq!(snap.sources[0].messages["latency"], 4);
}

#[test]
fn latency_with_other_bounds_is_left_out_of_the_sum() {
    let mut l = ledger();
    let a = hello(&mut l, "a", 1);
    let b = hello(&mut l, "b", 1);
    l.apply_latency(
        a,
        &latency(
            1,
            vec![histogram("group:billing", &[10, 100], &[1, 2], 2, 50)],
        ),
        0,
    )
    .unwrap();
    l.apply_latency(
        b,
        &latency(1, vec![histogram("group:billing", &[5, 50], &[1, 1], 1, 1)]),
        0,
    )
    .unwrap();
    let snap = l.evaluate(NOW_OPEN);
    assert_eq!(snap.latency.len(), 1);
    assert_eq!(snap.latency[0].bounds_ms, [10, 100]);
    assert_eq!((snap.latency[0].count, snap.latency[0].sum_ms), (2, 50));
}

#[test]
fn latency_of_an_unannounced_tier_is_refused() {
    let mut l = ledger();
    let s = l
        .hello(
            &Hello {
                source: "b".into(),
                cluster: "local".into(),
                tier_kinds: vec![TierKind::Broker],
                bucket_width_ms: W,
                started_at_ms: 1,
            },
            0,
        )
        .unwrap();
    let err = l
        .apply_latency(
            s,
            &latency(1, vec![histogram("group:billing", &[10], &[1], 1, 1)]),
            0,
        )
        .unwrap_err();
    assert!(err.to_string().contains("\"group:billing\""), "{err}");
    assert!(l.evaluate(NOW_OPEN).latency.is_empty());
}

#[test]
fn latency_survives_a_restore_and_still_ignores_stale_resends() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    l.apply_latency(
        s,
        &latency(3, vec![histogram("broker", &[10, 100], &[2, 4], 5, 600)]),
        0,
    )
    .unwrap();
    let batches = vec![l.take_dirty()];
    assert!(
        batches[0]
            .kv
            .iter()
            .any(|(k, _)| k == "latency/0/local/orders/broker"),
        "{:?}",
        batches[0].kv
    );
    let expected = l.evaluate(NOW_OPEN).latency;
    let mut restored = Ledger::restore(l.config().clone(), persisted(batches)).unwrap();
    assert_eq!(restored.evaluate(NOW_OPEN).latency, expected);
    let s2 = hello(&mut restored, "b", 1);
    let stale = restored
        .apply_latency(
            s2,
            &latency(2, vec![histogram("broker", &[10, 100], &[0, 0], 0, 0)]),
            0,
        )
        .unwrap();
    assert_eq!(stale.stale, 1);
    assert_eq!(restored.evaluate(NOW_OPEN).latency, expected);
}

fn topic_entry(topic: String, bucket: i64) -> CountEntry {
    CountEntry {
        topic,
        ..entry("broker", 0, bucket, 1)
    }
}

#[test]
fn a_message_refused_for_cardinality_leaves_nothing_behind() {
    let mut l = ledger();
    l.cfg.max_series_per_source = 10;
    let s = hello(&mut l, "b", 1);
    let many: Vec<CountEntry> = (0..5_000)
        .map(|i| topic_entry(format!("t{i}"), B0))
        .collect();
    for seq in 1..=3 {
        let err = l.apply_counts(s, seq, &many, 0).unwrap_err();
        assert!(
            matches!(err, Error::Audit(ref e) if e.reason == Reason::Cardinality),
            "{err}"
        );
    }
    // Nothing interned: no series, no topic, nothing to store or show.
    assert!(l.series.is_empty() && l.topics.is_empty() && l.series_ids.is_empty());
    assert!(l.take_dirty().series.is_empty());
    assert!(l.evaluate(NOW_CLOSED).topics.is_empty());
    assert_eq!(l.open_series(), 0);
    // Within the limit, the same source is served.
    l.apply_counts(s, 4, &many[..10], 0).unwrap();
    assert_eq!((l.series.len(), l.open_series()), (10, 10));
}

#[test]
fn the_limit_across_all_sources_holds() {
    let mut l = ledger();
    l.cfg.max_series = 3;
    let a = hello(&mut l, "a", 1);
    let b = hello(&mut l, "b", 1);
    l.apply_counts(
        a,
        1,
        &[entry("broker", 0, B0, 1), entry("broker", 1, B0, 1)],
        0,
    )
    .unwrap();
    let err = l
        .apply_counts(
            b,
            1,
            &[entry("produced", 0, B0, 1), entry("produced", 1, B0, 1)],
            0,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--max-series") && err.contains("\"b\""),
        "{err}"
    );
    assert_eq!(l.series.len(), 1, "the refused tier was not interned");
    l.apply_counts(b, 2, &[entry("produced", 0, B0, 1)], 0)
        .unwrap();
    // Known series take no room: new buckets of them are accepted.
    l.apply_counts(a, 2, &[entry("broker", 0, B0 + 1_000, 1)], 0)
        .unwrap();
    assert_eq!(l.open_series(), 3);
    let lag_err = l.apply_lag(b, &lag("billing", 0, 1, 2, 0), 0).unwrap_err();
    assert!(lag_err.to_string().contains("--max-series"), "{lag_err}");
}

#[test]
fn entries_outside_the_accepted_range_are_dropped_alone() {
    let mut l = ledger();
    l.cfg.retention_ms = 3_600_000;
    let s = hello(&mut l, "b", 1);
    let now = 10 * 86_400_000;
    let range = l.accept_range(now);
    let far_back = now - 2 * 3_600_000;
    let far_ahead = now + 3 * 3_600_000;
    let applied = l
        .apply_counts(
            s,
            1,
            &[
                entry("broker", 0, far_back, 5),
                entry("broker", 0, now - 60_000, 7),
                entry("broker", 0, far_ahead, 9),
                entry("broker", 0, i64::MAX / W as i64 * W as i64, 11),
            ],
            now,
        )
        .unwrap();
    assert_eq!((applied.changed, applied.out_of_range), (1, 3));
    assert!(!range.contains(BucketWidth::new(W).unwrap().bucket_of(far_ahead)));
    let buckets: Vec<i64> = l.bucket_records().iter().map(|b| b.3).collect();
    assert_eq!(buckets, [now - 60_000]);
    // A message of nothing but out-of-range entries opens no series.
    let t = hello(&mut l, "c", 1);
    let applied = l
        .apply_counts(t, 1, &[topic_entry("elsewhere".into(), far_ahead)], now)
        .unwrap();
    assert_eq!(applied.out_of_range, 1);
    assert_eq!(l.series.len(), 1);
}

#[test]
fn a_store_with_gaps_and_unusable_rows_restores_what_it_can() {
    let mut l = ledger();
    let a = hello(&mut l, "a", 1);
    let b = hello(&mut l, "b", 1);
    let c = hello(&mut l, "c", 1);
    l.apply_counts(a, 1, &[entry("broker", 0, B0, 10)], 0)
        .unwrap();
    l.apply_counts(b, 1, &[entry("produced", 0, B0, 20)], 0)
        .unwrap();
    l.apply_counts(c, 1, &[entry("consumer:billing", 0, B0, 8)], 0)
        .unwrap();
    let mut loaded = persisted(vec![l.take_dirty()]);
    // Source "b" and its series were never stored (a failed write), and
    // series 2's tier was damaged.
    loaded.sources.retain(|s| s.id != 1);
    loaded.series.retain(|s| s.id != 1);
    loaded.series[1].tier = "middle".into();
    let restored = Ledger::restore(ledger().cfg, loaded).unwrap();
    assert!(
        restored.restore_skipped().rows >= 3,
        "{:?}",
        restored.restore_skipped()
    );
    let snap = {
        let mut r = restored;
        let snap = r.evaluate(NOW_CLOSED);
        // The lost source can open again and gets a new id.
        let b = hello(&mut r, "b", 2);
        assert_eq!(b.source_id(), 3);
        snap
    };
    assert_eq!(snap.topics[0].tiers["broker"].records, 10);
    assert_eq!(snap.topics[0].tiers.len(), 1, "{:?}", snap.topics[0].tiers);
    let names: Vec<&str> = snap.sources.iter().map(|s| s.source.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
}

#[test]
fn more_sources_than_kept_are_refused() {
    let mut l = ledger();
    let first = hello(&mut l, "s0", 1);
    for i in 1..MAX_SOURCES {
        hello(&mut l, &format!("s{i}"), 1);
    }
    let err = l
        .hello(
            &Hello {
                source: "one-more".into(),
                cluster: "local".into(),
                tier_kinds: vec![TierKind::Broker],
                bucket_width_ms: W,
                started_at_ms: 1,
            },
            0,
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Audit(ref e) if e.reason == Reason::Cardinality),
        "{err}"
    );
    // A known source still opens sessions.
    l.goodbye(first);
    hello(&mut l, "s0", 2);
}

fn hello_at(l: &mut Ledger, source: &str, cluster: &str, now_ms: i64) -> Result<Session> {
    l.hello(
        &Hello {
            source: source.into(),
            cluster: cluster.into(),
            tier_kinds: vec![TierKind::Broker, TierKind::Group, TierKind::Produced],
            bucket_width_ms: W,
            started_at_ms: now_ms,
        },
        now_ms,
    )
}

fn refused_as_duplicate(r: Result<Session>) -> bool {
    matches!(r, Err(Error::Audit(ref e)) if e.reason == Reason::DuplicateSource)
}

#[test]
fn a_second_live_session_of_one_source_is_refused_and_a_silent_one_replaced() {
    let mut l = ledger();
    let live = l.config().live_ms as i64;
    let first = hello_at(&mut l, "collect-prod", "prod", 0).unwrap();
    l.apply_counts(first, 1, &[entry("broker", 0, B0, 5)], 1_000)
        .unwrap();
    // Heard from 1 s ago: a second collector for the cluster is refused.
    assert!(refused_as_duplicate(hello_at(
        &mut l,
        "collect-prod",
        "prod",
        2_000
    )));
    // Silent for longer than 3 ticks: the old session is taken over, as after
    // a restart whose old connection has not closed yet.
    assert!(hello_at(&mut l, "collect-prod", "prod", 1_000 + live + 1).is_ok());
}

#[test]
fn log_tiers_of_a_topic_have_one_source_per_cluster() {
    let mut l = ledger();
    let broker = hello_at(&mut l, "broker-local-0", "local", 0).unwrap();
    let collector = hello_at(&mut l, "collect-local", "local", 0).unwrap();
    let other = hello_at(&mut l, "collect-copy", "copy", 0).unwrap();
    l.apply_counts(broker, 1, &[entry("broker", 0, B0, 10), group(4, 0, 0)], 0)
        .unwrap();
    // A collector beside the instrumented broker: its broker and group counts of
    // the topic are refused on their own; its produced counts are taken.
    let applied = l
        .apply_counts(
            collector,
            1,
            &[
                entry("broker", 0, B0, 10),
                group(4, 0, 0),
                entry("produced", 0, B0, 3),
            ],
            0,
        )
        .unwrap();
    assert_eq!(applied.duplicate_source, 2);
    assert!(applied.first_duplicate);
    assert_eq!(applied.changed, 1);
    let again = l
        .apply_counts(collector, 2, &[entry("broker", 0, B0, 11)], 0)
        .unwrap();
    assert_eq!(again.duplicate_source, 1);
    assert!(!again.first_duplicate, "logged once per source");
    // Another cluster's collector reports the same topic name freely.
    let elsewhere = l
        .apply_counts(other, 1, &[entry("broker", 0, B0, 7)], 0)
        .unwrap();
    assert_eq!(elsewhere.duplicate_source, 0);
    let snap = l.evaluate(NOW_CLOSED);
    let local = snap.topics.iter().find(|t| t.cluster == "local").unwrap();
    assert_eq!(
        local.tiers["broker"].records, 10,
        "the books are not doubled"
    );
    assert_eq!(local.tiers["group:billing"].records, 4);
    let shown = snap
        .sources
        .iter()
        .find(|s| s.source == "collect-local")
        .unwrap();
    assert_eq!(shown.duplicate_entries, 3);
    // Once the broker is gone (no session, not heard from for a grace period),
    // the collector may take over its tiers.
    l.goodbye(broker);
    let grace = l.config().grace_ms as i64;
    let later = l
        .apply_counts(collector, 3, &[entry("broker", 0, B0, 12)], grace + 1)
        .unwrap();
    assert_eq!(later.duplicate_source, 0);
}

/// (partition, leader, replicas, in-sync replicas)
type Partition = (i32, i32, u32, u32);

fn cluster_msg(
    seq: u64,
    topics: &[(&str, &[Partition])],
    groups: &[(&str, &str, u32)],
) -> tally_audit::Cluster {
    tally_audit::Cluster {
        seq,
        state: tally_audit::ClusterState {
            at_ms: 5,
            brokers: 3,
            topics: topics
                .iter()
                .map(|(t, ps)| tally_audit::TopicMetadata {
                    topic: (*t).into(),
                    partitions: ps
                        .iter()
                        .map(|&(partition, leader, replicas, in_sync_replicas)| {
                            tally_audit::PartitionMetadata {
                                partition,
                                leader,
                                replicas,
                                in_sync_replicas,
                            }
                        })
                        .collect(),
                })
                .collect(),
            groups: groups
                .iter()
                .map(|&(g, st, members)| tally_audit::GroupMetadata {
                    group: g.into(),
                    state: tally_audit::GroupState::from_kafka(st),
                    members,
                })
                .collect(),
        },
    }
}

#[test]
fn lag_is_stale_after_three_of_its_intervals_and_judged_as_of_then() {
    let mut l = ledger();
    let s = hello(&mut l, "collect-local", 1);
    // Polled every 10 s: the second sample shows the interval.
    l.apply_lag(s, &lag("billing", 0, 100, 150, 1_000), 1_000)
        .unwrap();
    l.apply_lag(s, &lag("billing", 0, 120, 170, 11_000), 11_000)
        .unwrap();
    let fresh = l.evaluate(11_000 + 30_000);
    assert!(!fresh.groups[0].partitions[0].stale);
    assert_eq!(fresh.groups[0].lag_records, 50);
    let snap = l.evaluate(11_000 + 30_001);
    let g = &snap.groups[0];
    assert!(g.partitions[0].stale && g.stale);
    assert_eq!(
        g.partitions[0].lag_records, 50,
        "the last known value is kept, flagged"
    );
    assert_eq!(g.lag_records, 0, "stale lag is not current lag");
    // Long after, a stale partition is not called stopped: the source went away.
    let later = l.evaluate(11_000 + 3_600_000);
    assert_eq!(
        later.groups[0].partitions[0].status,
        tally_audit::PartitionStatus::Ok
    );
    // A new sample makes it current again.
    l.apply_lag(s, &lag("billing", 0, 120, 150, 3_611_000), 3_611_000)
        .unwrap();
    assert!(!l.evaluate(3_611_500).groups[0].stale);
}

#[test]
fn estimated_and_stable_offset_reach_the_snapshot() {
    let mut l = ledger();
    let s = hello(&mut l, "collect-local", 1);
    let mut m = lag("billing", 0, 100, 150, 1_000);
    m.partitions[0].estimated = true;
    m.partitions[0].stable_offset = Some(140);
    l.apply_lag(s, &m, 1_000).unwrap();
    let p = &l.evaluate(1_500).groups[0].partitions[0];
    assert_eq!((p.estimated, p.stable_offset), (true, Some(140)));
}

#[test]
fn forget_drops_the_sources_lag_and_latency_and_stores_the_deletion() {
    let mut l = ledger();
    let s = hello(&mut l, "collect-local", 1);
    l.apply_lag(s, &lag("billing", 0, 100, 150, 1_000), 1_000)
        .unwrap();
    l.apply_lag(s, &lag("audit", 0, 100, 150, 1_000), 1_000)
        .unwrap();
    l.apply_latency(
        s,
        &Latency {
            seq: 3,
            histograms: vec![LatencyHistogram {
                tier: "group:billing".parse().unwrap(),
                topic: "orders".into(),
                bounds_ms: vec![5],
                counts: vec![1],
                count: 1,
                sum_ms: 2,
            }],
        },
        1_000,
    )
    .unwrap();
    let stored = l.take_dirty();
    let billing_row = stored
        .health
        .iter()
        .find(|h| &*h.group == "billing")
        .map(|h| h.id)
        .expect("billing's health is stored");
    let open = l.open_series();
    l.apply_forget(
        s,
        &tally_audit::Forget {
            seq: 4,
            groups: vec!["billing".into()],
            topics: vec![],
        },
        2_000,
    )
    .unwrap();
    let snap = l.evaluate(2_000);
    let groups: Vec<&str> = snap.groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(groups, ["audit"]);
    assert!(snap.latency.is_empty());
    assert_eq!(l.open_series(), open - 2);
    let rows = l.take_message_rows();
    assert_eq!(rows.health_deleted, [billing_row]);
    assert_eq!(rows.kv_deleted.len(), 1);
    assert_eq!(snap.sources[0].messages["forget"], 1);
    // Another source's forget leaves this source's lag alone.
    let other = hello(&mut l, "other", 1);
    l.apply_forget(
        other,
        &tally_audit::Forget {
            seq: 1,
            groups: vec![],
            topics: vec!["orders".into()],
        },
        2_000,
    )
    .unwrap();
    assert_eq!(l.evaluate(2_000).groups.len(), 1);
}

#[test]
fn the_latest_cluster_state_wins_and_forget_trims_it() {
    let mut l = ledger();
    let s = hello(&mut l, "collect-local", 1);
    let first = cluster_msg(
        2,
        &[
            ("orders", &[(0, 1, 3, 3), (1, -1, 3, 1)]),
            ("old", &[(0, 2, 1, 1)]),
        ],
        &[("billing", "Stable", 2)],
    );
    l.apply_cluster(s, &first, 1_000).unwrap();
    let snap = l.evaluate(1_000);
    let c = &snap.clusters[0];
    assert_eq!(
        (c.cluster.as_str(), c.source.as_str()),
        ("local", "collect-local")
    );
    assert_eq!(
        (
            c.partitions,
            c.offline_partitions,
            c.under_replicated_partitions
        ),
        (3, 1, 1)
    );
    assert_eq!(l.open_series(), 2 + 3 + 1);
    // An older seq of the same session is ignored; a newer one replaces.
    let older = cluster_msg(1, &[], &[]);
    l.apply_cluster(s, &older, 1_100).unwrap();
    assert_eq!(l.evaluate(1_100).clusters[0].topics.len(), 2);
    let newer = cluster_msg(
        3,
        &[("orders", &[(0, 1, 3, 3)])],
        &[("billing", "Empty", 0)],
    );
    l.apply_cluster(s, &newer, 1_200).unwrap();
    let snap = l.evaluate(1_200);
    assert_eq!(snap.clusters[0].topics.len(), 1);
    assert_eq!(l.open_series(), 1 + 1 + 1);
    l.apply_forget(
        s,
        &tally_audit::Forget {
            seq: 4,
            groups: vec!["billing".into()],
            topics: vec![],
        },
        1_300,
    )
    .unwrap();
    assert!(l.evaluate(1_300).clusters[0].groups.is_empty());
    assert_eq!(l.open_series(), 2);
}

#[test]
fn a_cluster_state_over_the_series_limit_is_refused() {
    let mut cfg = LedgerConfig::new(BucketWidth::new(W).unwrap());
    cfg.max_series_per_source = 4;
    let mut l = Ledger::new(cfg);
    let s = hello(&mut l, "collect-local", 1);
    let big = cluster_msg(
        1,
        &[(
            "orders",
            &[(0, 1, 1, 1), (1, 1, 1, 1), (2, 1, 1, 1), (3, 1, 1, 1)],
        )],
        &[],
    );
    let Err(Error::Audit(e)) = l.apply_cluster(s, &big, 1_000) else {
        panic!("refused")
    };
    assert_eq!(e.reason, Reason::Cardinality);
    assert!(l.evaluate(1_000).clusters.is_empty());
    assert_eq!(l.open_series(), 0);
}

#[test]
fn the_lag_entry_round_trips_through_the_store() {
    let mut l = ledger();
    let s = hello(&mut l, "collect-local", 1);
    l.apply_lag(s, &lag("billing", 0, 100, 150, 1_000), 1_000)
        .unwrap();
    l.apply_lag(s, &lag("billing", 0, 100, 150, 3_000), 3_000)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut store = crate::store::Store::open(dir.path()).unwrap();
    store.write(&l.take_dirty()).unwrap();
    let restored = Ledger::restore(l.config().clone(), store.load().unwrap()).unwrap();
    // Refreshed at 3 000 every 2 000 ms: stale after 9 000.
    let mut restored = restored;
    assert!(!restored.evaluate(9_000).groups[0].stale);
    assert!(restored.evaluate(9_001).groups[0].stale);
}

/// A small seeded generator for the randomised tests.
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// The change hint of each evaluation (what the stream feed diffs, and what
/// the evaluation itself reuses) is truthful: a topic it leaves out has the
/// same books and buckets as in the evaluation before, and an evaluation that
/// reuses them equals one that evaluates every topic afresh, across many
/// ticks of random counts and clock steps.
#[test]
fn the_change_hint_names_every_topic_that_changed() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    let mut now = B0;
    let mut prev: Option<Snapshot> = None;
    let (mut hinted, mut left_out) = (0, 0);
    let mut seq = 0;
    for tick in 0..400_u64 {
        for _ in 0..next() % 3 {
            seq += 1;
            let tier = ["broker", "group:billing", "produced"][(next() % 3) as usize];
            let bucket = (now / W as i64 - (next() % 5) as i64) * W as i64;
            let mut e = entry(tier, (next() % 2) as i32, bucket.max(B0), next() % 50);
            e.topic = format!("t{}", next() % 8);
            l.apply_counts(s, seq, &[e], now).unwrap();
        }
        now += (next() % 700) as i64;
        let snap = l.evaluate(now);
        assert_eq!(snap.changes.seq, 2 * tick + 1);
        l.all_topics_dirty = true;
        let fresh = l.evaluate(now);
        assert_eq!(snap.topics, fresh.topics, "tick {tick}");
        assert_eq!(snap.buckets, fresh.buckets, "tick {tick}");
        if let (Some(prev), Some(topics)) = (&prev, &snap.changes.topics) {
            hinted += 1;
            for (books, view) in snap.topics.iter().zip(&snap.buckets) {
                let key = tally_audit::feed::TopicKey {
                    cluster: books.cluster.clone(),
                    topic: books.topic.clone(),
                };
                if topics.contains(&key) {
                    continue;
                }
                left_out += 1;
                let before = prev
                    .topics
                    .iter()
                    .position(|t| t.cluster == books.cluster && t.topic == books.topic)
                    .expect("a topic the hint leaves out was there before");
                assert_eq!(&prev.topics[before], books, "tick {tick}");
                assert_eq!(&prev.buckets[before], view, "tick {tick}");
            }
        }
        prev = Some(fresh);
    }
    assert!(hinted > 100, "the hint was given in {hinted} of 400 ticks");
    assert!(left_out > 500, "{left_out} topics left out of hints");
}

/// A group the evaluation reuses (its lag unchanged, the clock unable to
/// have moved it) equals one judged afresh, and the group hint names every
/// group that differs from the evaluation before, across ticks of random
/// lag samples and clock steps long enough to make partitions stale and stop.
#[test]
fn a_reused_group_equals_one_judged_afresh() {
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    let mut now = B0;
    let mut offsets = [[0_i64; 3]; 5];
    let mut prev: Option<Snapshot> = None;
    let (mut reused, mut hinted) = (0, 0);
    for tick in 0..400_u64 {
        if next().is_multiple_of(3) {
            let g = (next() % 5) as usize;
            let p = (next() % 3) as usize;
            offsets[g][p] += (next() % 4) as i64;
            let end = offsets[g][p] + (next() % 3) as i64 * 10;
            let mut sample = lag(&format!("g{g}"), p as i32, offsets[g][p], end, now);
            sample.seq = tick + 1;
            l.apply_lag(s, &sample, now).unwrap();
        }
        now += (next() % 9_000) as i64;
        let snap = l.evaluate(now);
        let judged = l.judged_groups.len();
        l.judged_groups.clear();
        let fresh = l.evaluate(now);
        assert_eq!(snap.groups, fresh.groups, "tick {tick}");
        if let (Some(prev), Some(changed)) = (&prev, &snap.changes.groups) {
            hinted += 1;
            for g in &snap.groups {
                let key = tally_audit::feed::GroupKey {
                    cluster: g.cluster.clone(),
                    group: g.group.clone(),
                };
                if changed.contains(&key) {
                    continue;
                }
                reused += 1;
                let before = prev
                    .groups
                    .iter()
                    .find(|b| b.cluster == g.cluster && b.group == g.group)
                    .expect("a group the hint leaves out was there before");
                assert_eq!(before, g, "tick {tick}");
            }
        }
        assert!(judged <= 5);
        prev = Some(fresh);
    }
    assert!(hinted > 300, "{hinted}");
    assert!(reused > 200, "groups reused: {reused}");
}

/// A start reads everything but the window's cells (their sums instead) and
/// serves at once; a count meanwhile reads its stored cell, so a resend is
/// still recognised and a new value replaces the stored one; the cells read
/// in afterwards never overwrite what memory holds.
#[test]
fn a_start_serves_before_the_cells_are_read_in_and_counts_stay_exact() {
    use crate::store::{ColdReader, Store};
    let dir = tempfile::tempdir().unwrap();
    let mut l = ledger();
    let s = hello(&mut l, "b", 1);
    l.apply_counts(
        s,
        1,
        &[entry("broker", 0, B0, 10), entry("broker", 1, B0, 20)],
        0,
    )
    .unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store.write(&l.take_dirty()).unwrap();
    let records = |l: &mut Ledger| l.evaluate(NOW_CLOSED).topics[0].tiers["broker"].records;
    assert_eq!(records(&mut l), 30);

    let from = l.config().resident_from(NOW_CLOSED);
    assert!(from <= B0);
    let mut r =
        Ledger::restore(l.config().clone(), store.load_without_cells(from).unwrap()).unwrap();
    let (sums, unread) = Store::read_sums(store.path(), from).unwrap();
    assert_eq!((sums.len(), unread.rows), (1, 0));
    r.restore_sums(sums);
    r.attach_cold(
        Box::new(ColdReader::open(store.path()).unwrap()),
        NOW_CLOSED,
    );
    r.begin_warming();
    assert!(r.is_warming());
    assert_eq!(r.cell_count(), 0);
    assert_eq!(records(&mut r), 30, "the books come from the stored sums");

    let s2 = hello(&mut r, "b", 2);
    let resent = r
        .apply_counts(s2, 1, &[entry("broker", 0, B0, 10)], 0)
        .unwrap();
    assert_eq!((resent.changed, resent.unchanged), (0, 1));
    r.apply_counts(s2, 2, &[entry("broker", 1, B0, 25)], 0)
        .unwrap();
    assert_eq!(records(&mut r), 35, "25 replaced the stored 20");

    // The stored cells arrive: partition 1's 20 is older than memory's 25.
    let mut chunks = Vec::new();
    Store::stream_cells(store.path(), 1, from..i64::MAX, |c| {
        chunks.push(c);
        true
    })
    .unwrap();
    assert_eq!(chunks.len(), 2);
    for chunk in chunks {
        r.warm_cells(chunk);
    }
    r.warmed();
    assert!(!r.is_warming());
    assert_eq!(r.cell_count(), 2);
    assert_eq!(records(&mut r), 35);
    r.apply_counts(
        s2,
        3,
        &[entry("broker", 0, B0, 12), entry("broker", 1, B0, 25)],
        0,
    )
    .unwrap();
    assert_eq!(records(&mut r), 37);
    assert_eq!(r.open_series(), l.open_series());
}

/// A ledger with the mirror rule `a:orders=b:a.orders`, and one broker
/// source per cluster.
fn mirrored() -> (Ledger, Session, Session) {
    let mut cfg = LedgerConfig::new(BucketWidth::new(W).unwrap());
    cfg.window_ms = 60_000;
    cfg.mirrors =
        crate::mirror::MirrorRules::parse(&["a:orders=b:a.orders".parse().unwrap()]).unwrap();
    let mut l = Ledger::new(cfg);
    let open = |l: &mut Ledger, source: &str, cluster: &str| {
        l.hello(
            &Hello {
                source: source.into(),
                cluster: cluster.into(),
                tier_kinds: vec![TierKind::Broker],
                bucket_width_ms: W,
                started_at_ms: 1,
            },
            0,
        )
        .unwrap()
    };
    let a = open(&mut l, "broker-a", "a");
    let b = open(&mut l, "broker-b", "b");
    (l, a, b)
}

fn copy(bucket: i64, records: u64) -> CountEntry {
    CountEntry {
        topic: "a.orders".into(),
        ..entry("broker", 0, bucket, records)
    }
}

/// The mirror tier of `orders` on cluster `a`, per bucket: (status, missing, excess).
fn mirror_buckets(snap: &Snapshot) -> Vec<(i64, BucketStatus, u64, u64)> {
    let t = snap
        .buckets
        .iter()
        .find(|t| t.cluster == "a" && t.topic == "orders")
        .expect("a:orders has buckets");
    t.buckets
        .iter()
        .filter_map(|b| {
            let m = b.tiers.get("mirror:b")?;
            Some((b.bucket, m.status, m.missing, m.excess))
        })
        .collect()
}

#[test]
fn a_mirror_is_a_tier_of_its_source_topic_judged_bucket_by_bucket() {
    let (mut l, a, b) = mirrored();
    let (b1, b2, b3) = (B0, B0 + 1_000, B0 + 2_000);
    l.apply_counts(
        a,
        1,
        &[
            entry("broker", 0, b1, 10),
            entry("broker", 0, b2, 20),
            entry("broker", 0, b3, 30),
        ],
        0,
    )
    .unwrap();
    // The copy: complete, 3 records lost, 5 copied twice.
    l.apply_counts(b, 1, &[copy(b1, 10), copy(b2, 17), copy(b3, 35)], 0)
        .unwrap();
    // Long after the last rise: short is lost, not pending.
    let now = b3 + 10_000;
    let snap = l.evaluate(now);
    assert_eq!(
        mirror_buckets(&snap),
        vec![
            (b1, BucketStatus::Complete, 0, 0),
            (b2, BucketStatus::Incomplete, 3, 0),
            (b3, BucketStatus::Excess, 0, 5),
        ]
    );
    let books = snap
        .topics
        .iter()
        .find(|t| t.cluster == "a" && t.topic == "orders")
        .unwrap();
    let m = &books.tiers["mirror:b"];
    assert_eq!((m.records, m.missing, m.excess), (62, 3, 5));
    // 3 records of b2 are not on the copy: the lag is their bucket's age.
    let lag = m.mirror_lag.expect("a mirror tier has a lag");
    assert_eq!(lag.records, 3);
    assert_eq!(lag.seconds, (now - b2) as f64 / 1000.0);
    // The destination keeps its own books as well.
    let dest = snap
        .topics
        .iter()
        .find(|t| t.cluster == "b" && t.topic == "a.orders")
        .unwrap();
    assert_eq!(dest.tiers["broker"].records, 62);
    assert!(!dest.tiers.contains_key("mirror:b"));
}

#[test]
fn a_slow_mirror_is_pending_then_late_once_it_catches_up() {
    let (mut l, a, b) = mirrored();
    let grace = l.cfg.grace_ms as i64;
    l.apply_counts(a, 1, &[entry("broker", 0, B0, 10)], 0)
        .unwrap();
    let closed = B0 + 1_000 + grace;
    // Rising just before the bucket closes, still short.
    l.apply_counts(b, 1, &[copy(B0, 4)], closed - 10).unwrap();
    let snap = l.evaluate(closed);
    assert_eq!(
        mirror_buckets(&snap),
        vec![(B0, BucketStatus::Pending, 0, 0)]
    );
    let tb = &snap
        .buckets
        .iter()
        .find(|t| t.cluster == "a")
        .unwrap()
        .buckets[0]
        .tiers["mirror:b"];
    assert_eq!(tb.pending, Some(6));
    // Still rising: pending.
    l.apply_counts(b, 2, &[copy(B0, 7)], closed + 500).unwrap();
    assert_eq!(
        mirror_buckets(&l.evaluate(closed + 1_000)),
        vec![(B0, BucketStatus::Pending, 0, 0)]
    );
    // A grace period without a rise: lost, though no count came (the
    // clock alone turns it).
    assert_eq!(
        mirror_buckets(&l.evaluate(closed + 500 + grace)),
        vec![(B0, BucketStatus::Incomplete, 3, 0)]
    );
    // The copy catches up: late.
    l.apply_counts(b, 3, &[copy(B0, 10)], closed + 5_000)
        .unwrap();
    assert_eq!(
        mirror_buckets(&l.evaluate(closed + 5_001)),
        vec![(B0, BucketStatus::Late, 0, 0)]
    );
}

#[test]
fn a_source_cannot_report_a_mirror_tier_itself() {
    let (mut l, a, _) = mirrored();
    let e = l
        .apply_counts(a, 1, &[entry("mirror:b", 0, B0, 10)], 0)
        .unwrap_err();
    assert!(e.to_string().contains("mirror:b"), "{e}");
}
