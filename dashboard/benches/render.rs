//! Render time per frame with 10,000 topic rows and 1,000 groups, on a
//! 200×60 TestBackend, per tab; and what a feed update costs the state
//! (apply the delta, rebuild the rows). Target: ≤ 5 ms per frame.
//!
//! `cargo bench -p tally-dashboard --bench render`

#![allow(missing_docs, clippy::unwrap_used, unreachable_pub)]

#[path = "../tests/fixture/mod.rs"]
mod fixture;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use tally_audit::feed::{Delta, FeedMessage};
use tally_audit::{BucketStatus, PartitionStatus, Snapshot};
use tally_dashboard::input::{Action, apply};
use tally_dashboard::state::{State, Tab};

/// 5,000 topics × 2 tiers = 10,000 topic rows, each with 30 buckets, and
/// 1,000 groups of 2 partitions.
fn big() -> Snapshot {
    let mut s = fixture::snapshot();
    s.topics = (0..5_000)
        .map(|i| fixture::topic(&format!("topic-{i:05}"), 1_000 + i, 990 + i, i % 3))
        .collect();
    let statuses: Vec<BucketStatus> = (0..30)
        .map(|i| BucketStatus::ALL[(i * 7) % BucketStatus::ALL.len()])
        .collect();
    s.buckets = (0..5_000)
        .map(|i| fixture::buckets(&format!("topic-{i:05}"), &statuses))
        .collect();
    s.groups = (0..1_000)
        .map(|i| {
            fixture::group(
                &format!("group-{i:04}"),
                PartitionStatus::ALL[(i % 5) as usize],
                i * 3,
            )
        })
        .collect();
    s
}

fn state(snapshot: &Snapshot) -> State {
    let mut state = State::new("http://127.0.0.1:9400", true);
    state.set_link(tally_dashboard::state::Link::Connected, fixture::AT);
    state.feed(
        FeedMessage::Snapshot {
            snapshot: Box::new(snapshot.clone()),
        },
        fixture::AT,
    );
    // Lag history for every sparkline.
    let mut prev = snapshot.clone();
    for step in 1..40 {
        let mut next = prev.clone();
        next.at_ms += 1000;
        for g in &mut next.groups {
            g.lag_records = (g.lag_records + step * 7) % 5_000;
        }
        state.feed(
            FeedMessage::Update(Box::new(Delta::between(&prev, &next))),
            next.at_ms,
        );
        prev = next;
    }
    state
}

fn render(c: &mut Criterion) {
    let snapshot = big();
    let mut state = state(&snapshot);
    assert_eq!(state.rows.topics.len(), 10_000);
    assert_eq!(state.rows.groups.len(), 1_000);
    let mut terminal = Terminal::new(TestBackend::new(200, 60)).unwrap();
    let mut group = c.benchmark_group("dashboard_render_200x60");
    for tab in Tab::ALL {
        apply(&mut state, Action::Tab(tab));
        // Somewhere in the middle, so the table must scroll.
        for _ in 0..500 {
            apply(&mut state, Action::PageDown);
        }
        group.bench_function(tab.title().to_lowercase(), |b| {
            b.iter(|| {
                terminal
                    .draw(|f| tally_dashboard::view::render(black_box(&state), f))
                    .unwrap();
            });
        });
    }
    group.finish();
}

fn update(c: &mut Criterion) {
    let snapshot = big();
    let state = state(&snapshot);
    // A tick in which 1 % of the topics, their newest bucket and every
    // group's lag changed.
    let mut next = snapshot.clone();
    next.at_ms += 1000;
    for t in next.topics.iter_mut().step_by(100) {
        for b in t.tiers.values_mut() {
            b.records += 10;
        }
    }
    for t in next.buckets.iter_mut().step_by(100) {
        if let Some(b) = t.buckets.last_mut() {
            for tier in b.tiers.values_mut() {
                tier.records += 10;
            }
        }
    }
    for g in &mut next.groups {
        g.lag_records += 1;
    }
    let delta = Delta::between(&snapshot, &next);
    let mut group = c.benchmark_group("dashboard_update");
    group.sample_size(20);
    group.bench_function("delta_between_snapshots", |b| {
        b.iter(|| Delta::between(black_box(&snapshot), black_box(&next)));
    });
    group.bench_function("apply_delta_and_rebuild_rows", |b| {
        b.iter_batched(
            || (state.clone(), delta.clone()),
            |(mut s, d)| {
                s.feed(FeedMessage::Update(Box::new(d)), fixture::AT + 1000);
                s
            },
            criterion::BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, render, update);
criterion_main!(benches);
