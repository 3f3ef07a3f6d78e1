//! Render time per frame with 10,000 topic rows and 1,000 groups, on a
//! 200×60 TestBackend, per tab; and what a feed update costs the state
//! (apply the delta, rebuild the rows). Target: ≤ 5 ms per frame.
//!
//! And what a feed tick costs the agent at the same scale: the delta by
//! comparing everything, the delta from the evaluation's hint, serialising it
//! once, and sending those bytes to 10 dashboards over loopback WebSockets.
//! Target (issue 16): ≤ 5 ms in all per tick for 10 dashboards.
//!
//! `cargo bench -p tally-dashboard --bench render`

#![allow(missing_docs, clippy::unwrap_used, unreachable_pub)]

#[path = "../tests/fixture/mod.rs"]
mod fixture;

use std::collections::HashSet;
use std::hint::black_box;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use criterion::{Criterion, criterion_group, criterion_main};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use tally_audit::feed::{Changes, Delta, FeedMessage, Keyed};
use tally_audit::{BucketStatus, PartitionStatus, Snapshot};
use tally_dashboard::input::{Action, apply};
use tally_dashboard::state::{State, Tab};

/// 5,000 topics × 2 tiers = 10,000 topic rows, each with 30 buckets, and
/// 1,000 groups of 2 partitions.
fn big() -> Snapshot {
    let mut s = fixture::snapshot();
    s.topics = (0..5_000)
        .map(|i| fixture::topic(&format!("topic-{i:05}"), 1_000 + i, 990 + i, i % 3).into())
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
            more: false,
        },
        fixture::AT,
    );
    // Lag history for every sparkline.
    let mut prev = snapshot.clone();
    for step in 1..40 {
        let mut next = prev.clone();
        next.at_ms += 1000;
        for g in &mut next.groups {
            std::sync::Arc::make_mut(g).lag_records = (g.lag_records + step * 7) % 5_000;
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
    apply(&mut state, Action::Tab(Tab::Topics));
    assert_eq!(state.rows.topics.len(), 10_000);
    apply(&mut state, Action::Tab(Tab::Groups));
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
        for b in std::sync::Arc::make_mut(t).tiers.values_mut() {
            b.records += 10;
        }
    }
    for t in next.buckets.iter_mut().step_by(100) {
        if let Some(b) = std::sync::Arc::make_mut(&mut t.buckets).last_mut() {
            for tier in b.tiers.values_mut() {
                tier.records += 10;
            }
        }
    }
    for g in &mut next.groups {
        std::sync::Arc::make_mut(g).lag_records += 1;
    }
    let delta = Delta::between(&snapshot, &next);
    // The evaluation's hint for that tick: the topics it evaluated again and
    // the groups it judged again, and that it follows the one before.
    let mut before = snapshot.clone();
    before.changes.seq = 1;
    next.changes = Changes {
        seq: 2,
        topics: Some(next.topics.iter().step_by(100).map(Keyed::key).collect()),
        groups: Some(next.groups.iter().map(Keyed::key).collect()),
    };
    assert_eq!(next.changes.topics.as_ref().map(HashSet::len), Some(50));
    assert_eq!(next.changes.groups.as_ref().map(HashSet::len), Some(1_000));
    assert_eq!(Delta::with_changes(&before, &next), delta);
    let message = FeedMessage::Update(Box::new(delta.clone()));
    let frame = serde_json::to_string(&message).unwrap();
    eprintln!("update frame: {} bytes", frame.len());
    let mut group = c.benchmark_group("dashboard_update");
    group.sample_size(20);
    group.bench_function("delta_between_snapshots", |b| {
        b.iter(|| Delta::between(black_box(&snapshot), black_box(&next)));
    });
    group.bench_function("delta_with_changes", |b| {
        b.iter(|| Delta::with_changes(black_box(&before), black_box(&next)));
    });
    group.bench_function("serialise_update_frame", |b| {
        b.iter(|| serde_json::to_string(black_box(&message)).unwrap());
    });
    let mut dashboards = Dashboards::connect(10);
    let text = Utf8Bytes::from(frame);
    group.bench_function("send_update_frame_to_10_dashboards", |b| {
        b.iter(|| dashboards.send(&text));
    });
    // The same, in CPU time of the sending thread: the wall time above also
    // holds the waits for the dashboards, which share this machine's 2 cores.
    if thread_cpu().is_some() {
        group.bench_function("send_update_frame_to_10_dashboards_cpu", |b| {
            b.iter_custom(|iters| {
                let start = thread_cpu().unwrap_or_default();
                for _ in 0..iters {
                    dashboards.send(&text);
                }
                thread_cpu().unwrap_or_default().saturating_sub(start)
            });
        });
    }
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

/// The CPU time this thread has used (Linux), to the nanosecond.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// WebSockets to dashboards that read every frame and drop it: the agent's
/// ends on a current-thread runtime (as one send is), the dashboards' ends on
/// a runtime of their own, on another thread.
struct Dashboards {
    runtime: tokio::runtime::Runtime,
    sockets: Vec<WebSocketStream<TcpStream>>,
    _readers: tokio::runtime::Runtime,
}

impl Dashboards {
    fn connect(n: usize) -> Dashboards {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let readers = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut sockets = Vec::new();
        for _ in 0..n {
            readers.spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream)
                    .await
                    .unwrap();
                while let Some(Ok(_)) = ws.next().await {}
            });
            let socket = runtime.block_on(async {
                let (stream, _) = listener.accept().await.unwrap();
                tokio_tungstenite::accept_async(stream).await.unwrap()
            });
            sockets.push(socket);
        }
        Dashboards {
            runtime,
            sockets,
            _readers: readers,
        }
    }

    /// Sends `text` to every dashboard, one after the other, each send done
    /// when the frame is in the kernel's hands.
    fn send(&mut self, text: &Utf8Bytes) {
        self.runtime.block_on(async {
            for socket in &mut self.sockets {
                socket.send(Message::Text(text.clone())).await.unwrap();
            }
        });
    }
}

criterion_group!(benches, render, update);
criterion_main!(benches);
