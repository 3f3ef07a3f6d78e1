//! The dashboard against a large live agent (issue 18): how soon the first
//! frame comes after connecting, what each frame costs, how soon keys
//! answer, and the dashboard's memory. `bench/dashboard-size.sh` starts the
//! agent and feeds it (100,000 lag partitions, 2,000 topics, 3 clusters),
//! then runs this against it:
//!
//! `TALLY_AGENT=http://127.0.0.1:PORT BENCH_SECONDS=60 cargo bench -p tally-dashboard --bench size`
//!
//! It is the dashboard's own code on its own path: `conn::run` reads the
//! agent's feed over a real WebSocket, `State::feed` takes each frame, and
//! `view::render` draws it, on a 200×60 `TestBackend` where the terminal
//! would be (a terminal's write costs the same bytes whatever the data).
//! A frame is drawn after each message of the feed, as the dashboard does;
//! keys are pressed between frames and timed to the end of the frame they
//! cause. Prints a Markdown table; exits 1 when a target is missed.
//!
//! Targets: first frame ≤ 2 s after connecting; frames ≤ 5 ms (p99); keys
//! answered within one frame (≤ 5 ms p99); RSS ≤ 200 MiB.

#![allow(missing_docs, clippy::unwrap_used, unreachable_pub)]

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use tally_dashboard::conn::{self, ConnEvent};
use tally_dashboard::input::handle_key;
use tally_dashboard::state::{Link, State};

const FIRST_FRAME_TARGET: Duration = Duration::from_secs(2);
const FRAME_TARGET_MS: f64 = 5.0;
const RSS_TARGET_KIB: u64 = 200 * 1024;

/// The keys pressed, in turn, one between two frames: every view, the
/// cluster filter all the way round, scrolling, the sort, a drill-in.
const KEYS: &[KeyCode] = &[
    KeyCode::Char('1'),
    KeyCode::Char('c'),
    KeyCode::Char('2'),
    KeyCode::PageDown,
    KeyCode::Char('s'),
    KeyCode::Char('3'),
    KeyCode::Right,
    KeyCode::Char('4'),
    KeyCode::End,
    KeyCode::Enter,
    KeyCode::Esc,
    KeyCode::Char('c'),
    KeyCode::Char('5'),
    KeyCode::Char('6'),
    KeyCode::Char('c'),
    KeyCode::Char('c'),
    KeyCode::Char('s'),
    KeyCode::Char('s'),
];

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    tally_dashboard::now_ms()
}

/// The `p`-th percentile of `v` (sorted here), in ms.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn main() {
    let Ok(agent) = std::env::var("TALLY_AGENT") else {
        eprintln!(
            "size: set TALLY_AGENT to the agent's URL (bench/dashboard-size.sh does); nothing measured"
        );
        return;
    };
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = conn::stream_url(&agent).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let connector = tally_audit::tls::AgentConnector::new(None);
    let started = Instant::now();
    runtime.spawn(conn::run(url, None, connector, tx));

    let mut state = State::new(agent.clone(), true);
    let mut terminal = Terminal::new(TestBackend::new(200, 60)).unwrap();
    let mut first_frame: Option<Duration> = None;
    let mut messages = 0u64;
    let mut frames: Vec<f64> = Vec::new();
    // The frame's parts: taking the message, and drawing (per view).
    let mut feeds: Vec<f64> = Vec::new();
    let mut draws: std::collections::BTreeMap<&str, Vec<f64>> = std::collections::BTreeMap::new();
    let mut keys: Vec<f64> = Vec::new();
    let mut by_key: std::collections::BTreeMap<String, Vec<f64>> =
        std::collections::BTreeMap::new();
    let mut rss_max = 0;
    let mut key = 0;
    let deadline = started + Duration::from_secs(seconds) + FIRST_FRAME_TARGET * 30;
    let mut measured_until: Option<Instant> = None;
    while let Some(event) = runtime.block_on(async {
        tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .ok()
            .flatten()
    }) {
        let t0 = Instant::now();
        match event {
            ConnEvent::Connecting { .. } => continue,
            ConnEvent::Connected => {
                state.set_link(Link::Connected, now_ms());
                continue;
            }
            ConnEvent::Down { error, .. } => {
                eprintln!("size: the feed went down: {error}");
                std::process::exit(1);
            }
            ConnEvent::Frame(message) => {
                messages += 1;
                state.feed(message, now_ms());
            }
        }
        let fed_ms = t0.elapsed().as_secs_f64() * 1e3;
        terminal
            .draw(|f| tally_dashboard::view::render(&state, f))
            .unwrap();
        let frame_ms = t0.elapsed().as_secs_f64() * 1e3;
        if first_frame.is_some() {
            feeds.push(fed_ms);
            draws
                .entry(state.tab.title())
                .or_default()
                .push(frame_ms - fed_ms);
        }
        if state.shown().is_none() {
            continue;
        }
        let Some(_) = first_frame else {
            first_frame = Some(started.elapsed());
            measured_until = Some(Instant::now() + Duration::from_secs(seconds));
            let s = state.shown().unwrap();
            eprintln!(
                "size: first frame after {:?}: {} topics, {} groups, {} lag partitions, {} clusters, {} messages",
                started.elapsed(),
                s.topics.len(),
                s.groups.len(),
                s.groups.iter().map(|g| g.partitions.len()).sum::<usize>(),
                state.rows.clusters.len(),
                messages
            );
            continue;
        };
        frames.push(frame_ms);
        // A key between two frames, timed with the frame it causes.
        let t1 = Instant::now();
        handle_key(&mut state, KeyEvent::from(KEYS[key % KEYS.len()]));
        key += 1;
        terminal
            .draw(|f| tally_dashboard::view::render(&state, f))
            .unwrap();
        let key_ms = t1.elapsed().as_secs_f64() * 1e3;
        keys.push(key_ms);
        by_key
            .entry(format!("{:?}", KEYS[(key - 1) % KEYS.len()]))
            .or_default()
            .push(key_ms);
        rss_max = rss_max.max(rss_kib("VmRSS:"));
        if measured_until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
    }
    let Some(first) = first_frame else {
        eprintln!("size: no whole snapshot within {:?}", deadline - started);
        std::process::exit(1);
    };
    let hwm = rss_kib("VmHWM:");
    let (f50, f99, fmax) = (
        percentile(&mut frames, 0.5),
        percentile(&mut frames, 0.99),
        percentile(&mut frames, 1.0),
    );
    let (k50, k99, kmax) = (
        percentile(&mut keys, 0.5),
        percentile(&mut keys, 0.99),
        percentile(&mut keys, 1.0),
    );
    eprintln!(
        "size: taking a message p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut feeds, 0.5),
        percentile(&mut feeds, 0.99)
    );
    for (view, v) in &mut draws {
        eprintln!(
            "size: drawing {view}: p50 {:.2} ms, p99 {:.2} ms ({} frames)",
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.len()
        );
    }
    for (k, v) in &mut by_key {
        eprintln!(
            "size: key {k}: p50 {:.2} ms, max {:.2} ms",
            percentile(v, 0.5),
            percentile(v, 1.0)
        );
    }
    let s = state.live.as_ref().unwrap();
    println!(
        "| what | figure | target |\n|---|---|---|\n\
         | books | {} topics, {} groups, {} lag partitions, {} clusters | 2,000 / 100,000 / 3 |\n\
         | first frame after connecting | {:.0} ms | ≤ 2,000 ms |\n\
         | frames (feed message taken + drawn, 200×60) | {} frames: p50 {f50:.2} ms, p99 {f99:.2} ms, max {fmax:.2} ms | ≤ 5 ms |\n\
         | keys (handled + drawn) | {} keys: p50 {k50:.2} ms, p99 {k99:.2} ms, max {kmax:.2} ms | within one frame |\n\
         | RSS | {} MiB at most while measured, {} MiB peak (VmHWM) | ≤ 200 MiB |",
        s.topics.len(),
        s.groups.len(),
        s.groups.iter().map(|g| g.partitions.len()).sum::<usize>(),
        state.rows.clusters.len(),
        first.as_secs_f64() * 1e3,
        frames.len(),
        keys.len(),
        rss_max / 1024,
        hwm / 1024,
    );
    let missed = first > FIRST_FRAME_TARGET
        || f99 > FRAME_TARGET_MS
        || k99 > FRAME_TARGET_MS
        || hwm > RSS_TARGET_KIB;
    if missed {
        eprintln!("size: a target was missed");
        std::process::exit(1);
    }
}
