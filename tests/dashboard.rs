//! `tally dashboard` end to end, in a real terminal: a real agent fed over
//! POST /api/v1/ingest, the dashboard in a detached tmux session of a fixed
//! size, keys sent with `send-keys` and the screen read with
//! `capture-pane`.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Agent, now_ms, post_ingest, require_tool};
use serde_json::{Value, json};

const FLAGS: &[&str] = &[
    "--bucket-width",
    "1s",
    "--grace",
    "1s",
    "--window",
    "10m",
    "--tick",
    "200ms",
];

/// A tmux server on a private socket; killed (with everything in it) when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(width: u16, height: u16) -> Tmux {
        let tmux = Tmux {
            socket: format!("tally-dashboard-test-{}-{}", std::process::id(), now_ms()),
        };
        // A plain shell with a prompt to look for once the dashboard is gone.
        let out = tmux.cmd(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "dash",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "env PS1='shell-ready$ ' TERM=xterm-256color bash --norc --noprofile -i",
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        tmux
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .env_remove("TMUX")
            .output()
            .unwrap()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "dash"];
        args.extend_from_slice(keys);
        let out = self.cmd(&args);
        assert!(out.status.success(), "send-keys {keys:?}: {out:?}");
    }

    /// Types `text` literally, then Enter.
    fn line(&self, text: &str) {
        let out = self.cmd(&["send-keys", "-t", "dash", "-l", text]);
        assert!(out.status.success(), "{out:?}");
        self.keys(&["Enter"]);
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "dash"]).stdout)
            .into_owned()
    }

    fn alternate_screen_on(&self) -> bool {
        let out = self.cmd(&["display-message", "-p", "-t", "dash", "#{alternate_on}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// Waits up to `secs` for the screen to satisfy `ok`; returns it.
    fn wait_for(&self, secs: u64, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {secs} s waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// One past bucket for every post of a test run, so that a later post
/// replaces the counts of an earlier one instead of adding a bucket.
fn bucket() -> i64 {
    static BUCKET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BUCKET.get_or_init(|| (now_ms() - 60_000) / 1000 * 1000)
}

/// Posts one ingest batch: `broker` counted `produced` records of orders in
/// one past bucket, group billing `consumed` of them, and the lag between.
fn post(agent: &Agent, seq: u64, produced: u64, consumed: u64) {
    post_to(agent, "e2e-broker", "local", seq, produced, consumed);
}

/// [`post`] as `source` of `cluster`.
fn post_to(agent: &Agent, source: &str, cluster: &str, seq: u64, produced: u64, consumed: u64) {
    let bucket = bucket();
    let count = |tier: &str, records: u64| {
        json!({"tier": tier, "topic": "orders", "partition": 0, "bucket": bucket,
               "records": records, "bytes": records * 100, "no_timestamp": 0, "expired": 0, "skipped": 0})
    };
    let lag = produced - consumed;
    let batch = json!([
        {"v": 1, "type": "hello", "source": source, "cluster": cluster,
         "tier_kinds": ["broker", "group"], "bucket_width_ms": 1000, "started_at_ms": 1},
        {"v": 1, "type": "counts", "seq": seq * 2, "counts": [count("broker", produced), count("group:billing", consumed)]},
        {"v": 1, "type": "lag", "seq": seq * 2 + 1, "at_ms": now_ms(), "partitions": [
            {"group": "billing", "topic": "orders", "partition": 0, "committed": consumed,
             "end_offset": produced, "start_offset": 0, "lag_records": lag,
             "lag_seconds": 2.5, "commit_at_ms": now_ms()}]}
    ]);
    let (status, body) = post_ingest(agent.addr, &batch);
    assert_eq!(status, 200, "{body}");
    let replies: Value = serde_json::from_str(&body).unwrap();
    for r in replies.as_array().unwrap() {
        assert_ne!(r["type"], "error", "{body}");
    }
}

#[test]
fn the_dashboard_follows_a_live_agent_switches_views_and_quits_cleanly() {
    if require_tool("tmux").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let mut agent = Agent::start(&data, FLAGS);
    post(&agent, 1, 1200, 1150);

    let tmux = Tmux::start(140, 40);
    tmux.wait_for(10, "the shell prompt", |s| s.contains("shell-ready$"));
    tmux.line(&format!(
        "{} dashboard --agent http://{}",
        env!("CARGO_BIN_EXE_tally"),
        agent.addr
    ));
    let overview = tmux.wait_for(20, "the overview with data", |s| {
        s.contains("● connected") && s.contains("TOPICS 1") && s.contains("GROUPS 1")
    });
    assert!(overview.contains("1 Overview"), "{overview}");
    assert!(
        tmux.alternate_screen_on(),
        "the dashboard uses the alternate screen"
    );

    // Topics: the books as posted, then updated live.
    tmux.keys(&["2"]);
    tmux.wait_for(10, "the topics view with the first counts", |s| {
        s.contains("Topics × tiers")
            && s.lines()
                .any(|l| l.contains("group:billing") && l.contains("1150"))
    });
    post(&agent, 2, 1500, 1490);
    let updated = tmux.wait_for(10, "the topics view with the new counts", |s| {
        s.lines()
            .any(|l| l.contains("group:billing") && l.contains("1490"))
    });
    assert!(
        updated
            .lines()
            .any(|l| l.contains("broker") && l.contains("1500")),
        "{updated}"
    );

    // Groups, then a drill into the partitions and back.
    tmux.keys(&["4"]);
    tmux.wait_for(10, "the groups view", |s| {
        s.contains("LAG HISTORY") && s.lines().any(|l| l.contains("billing") && l.contains("10"))
    });
    tmux.keys(&["Enter"]);
    tmux.wait_for(10, "billing's partitions", |s| {
        s.contains("billing: 1 partitions") && s.contains("COMMITTED")
    });
    tmux.keys(&["Escape"]);
    tmux.wait_for(10, "the groups list again", |s| !s.contains("COMMITTED"));

    // Tab moves on to Alerts, 6 to Sources.
    tmux.keys(&["Tab"]);
    tmux.wait_for(10, "the alerts view", |s| s.contains("Alerts: 0 firing"));
    tmux.keys(&["6"]);
    tmux.wait_for(10, "the sources view", |s| s.contains("e2e-broker"));

    // The agent goes away: the data stays, marked stale; it comes back.
    let addr = agent.addr;
    agent.kill9();
    let stale = tmux.wait_for(15, "the stale marker", |s| {
        s.contains("STALE") && s.contains("disconnected")
    });
    assert!(stale.contains("e2e-broker"), "the last data stays: {stale}");
    agent = Agent::start_at(addr, &data, FLAGS);
    tmux.wait_for(30, "the reconnection", |s| {
        s.contains("● connected") && !s.contains("STALE")
    });

    // A too small terminal is said so, and a resize back redraws.
    let out = tmux.cmd(&["resize-window", "-t", "dash", "-x", "40", "-y", "10"]);
    assert!(out.status.success(), "{out:?}");
    tmux.wait_for(10, "the too-small notice", |s| {
        s.contains("Terminal too small")
    });
    let out = tmux.cmd(&["resize-window", "-t", "dash", "-x", "140", "-y", "40"]);
    assert!(out.status.success(), "{out:?}");
    tmux.wait_for(10, "the sources view again", |s| s.contains("e2e-broker"));

    // q leaves a clean shell: the prompt, no alternate screen, no dashboard.
    tmux.keys(&["q"]);
    let shell = tmux.wait_for(10, "the shell after q", |s| {
        s.lines().filter(|l| l.starts_with("shell-ready$")).count() >= 2
    });
    assert!(
        !tmux.alternate_screen_on(),
        "still on the alternate screen:\n{shell}"
    );
    assert!(!shell.contains("Sources:"), "{shell}");
    // The shell takes commands: the terminal left raw mode.
    tmux.line("echo still-$((40+2))");
    tmux.wait_for(10, "the shell's answer", |s| s.contains("still-42"));
    drop(agent);
}

/// The rows of `cluster`'s panel that give its records/s: from its title
/// to its list of topics.
fn flow_rows(screen: &str, cluster: &str) -> String {
    screen
        .lines()
        .skip_while(|l| !l.contains(&format!(" {cluster} │")))
        .skip(1)
        .take_while(|l| !l.contains("TOPICS"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn with_two_clusters_the_overview_flows_and_c_switches_what_every_view_shows() {
    if require_tool("tmux").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), FLAGS);
    // The same topic and group in both clusters, each from its own source.
    post_to(&agent, "e2e-east", "east", 1, 1000, 900);
    post_to(&agent, "e2e-west", "west", 1, 2000, 1500);

    let tmux = Tmux::start(160, 45);
    tmux.wait_for(10, "the shell prompt", |s| s.contains("shell-ready$"));
    tmux.line(&format!(
        "{} dashboard --agent http://{}",
        env!("CARGO_BIN_EXE_tally"),
        agent.addr
    ));
    let first = tmux.wait_for(20, "a panel per cluster", |s| {
        s.contains("● connected")
            && s.contains("all 2 clusters")
            && s.contains(" east │")
            && s.contains(" west │")
            && s.matches("TOPICS 1").count() == 2
    });
    // Records flow into east: its sparkline moves between two captures.
    let mut seq = 2;
    let mut produced = 1000;
    let before = flow_rows(&first, "east");
    assert!(
        before.contains(" in ") && before.contains(" out"),
        "{first}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let moved = loop {
        produced += 250;
        post_to(&agent, "e2e-east", "east", seq, produced, produced - 100);
        seq += 1;
        std::thread::sleep(Duration::from_millis(300));
        let screen = tmux.screen();
        let now = flow_rows(&screen, "east");
        if now != before && now.chars().any(|c| ('▁'..='█').contains(&c)) {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "east's flow did not move from\n{before}\n{screen}"
        );
    };
    // What was posted is counted: the most records/s in and out above zero
    // (the latest sample may be a tick with nothing new).
    assert!(
        moved.contains("at most") && !moved.contains("at most 0/s"),
        "{moved}"
    );
    let later = {
        std::thread::sleep(Duration::from_millis(600));
        flow_rows(&tmux.screen(), "east")
    };
    assert_ne!(moved, later, "the graphs move on with time");

    // c: east alone, in every view.
    tmux.keys(&["c"]);
    let east = tmux.wait_for(10, "east alone", |s| {
        s.contains("cluster east") && s.contains(" east │") && !s.contains(" west │")
    });
    assert!(!east.contains("e2e-west"), "{east}");
    let only = |what: &str, keep: &str, gone: &str, key: &str, marker: &str| {
        tmux.keys(&[key]);
        let screen = tmux.wait_for(10, what, |s| s.contains(marker) && s.contains(keep));
        let body: Vec<&str> = screen.lines().skip(2).collect();
        assert!(
            !body.iter().any(|l| l.contains(gone)),
            "{what}: {gone} still shown:\n{screen}"
        );
    };
    only(
        "east's topics",
        "east",
        "west",
        "2",
        "Topics × tiers: 2 rows",
    );
    only("east's groups", "east", "west", "4", "Groups: 1");
    only("east's sources", "e2e-east", "e2e-west", "6", "Sources: 1");
    // c again: west alone; and once more: both.
    tmux.keys(&["c"]);
    let west = tmux.wait_for(10, "west's sources", |s| {
        s.contains("cluster west") && s.contains("e2e-west") && s.contains("Sources: 1")
    });
    assert!(!west.contains("e2e-east"), "{west}");
    only(
        "west's topics",
        "west",
        "east",
        "2",
        "Topics × tiers: 2 rows",
    );
    tmux.keys(&["c"]);
    tmux.wait_for(10, "both clusters' topics", |s| {
        s.contains("all 2 clusters") && s.contains("Topics × tiers: 4 rows")
    });
    tmux.keys(&["q"]);
    tmux.wait_for(10, "the shell after q", |s| {
        s.lines().filter(|l| l.starts_with("shell-ready$")).count() >= 2
    });
}

#[test]
fn a_bad_agent_url_is_refused_with_the_url_named() {
    let out = common::tally()
        .args(["dashboard", "--agent", "ftp://127.0.0.1:9400"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"ftp://127.0.0.1:9400\"") && err.contains("http://"),
        "{err}"
    );
}

#[test]
fn without_a_terminal_the_dashboard_says_so() {
    let out = common::tally()
        .args(["dashboard", "--agent", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a terminal"), "{err}");
}

#[test]
fn help_documents_every_flag() {
    let out = common::tally()
        .args(["dashboard", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--agent",
        "TALLY_DASHBOARD_AGENT",
        "--token",
        "TALLY_TOKEN",
        "--tick",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    insta::assert_snapshot!("dashboard_help", help);
}

#[test]
fn the_demo_shows_the_dashboard_and_q_ends_it_with_the_books_printed() {
    if require_tool("tmux").is_none() {
        return;
    }
    let tmux = Tmux::start(160, 45);
    tmux.wait_for(10, "the shell prompt", |s| s.contains("shell-ready$"));
    let port = |_| format!("127.0.0.1:{}", common::free_port());
    let (agent, kafka, metrics) = (port(0), port(1), port(2));
    // The demo's log lines before the dashboard starts go to a file, so the
    // screen holds only the dashboard and then the books.
    let log = tempfile::NamedTempFile::new().unwrap();
    tmux.line(&format!(
        "{} demo --bucket-width 2s --agent-listen {agent} --kafka-listen {kafka} --metrics-listen {metrics} 2>{}",
        env!("CARGO_BIN_EXE_tally"),
        log.path().display()
    ));
    let screen = tmux.wait_for(60, "the dashboard with the demo's topics and groups", |s| {
        s.contains("● connected")
            && s.contains(" local │")
            && s.contains(" replica │")
            && s.contains("TOPICS 3")
            && s.contains("TOPICS 1")
    });
    assert!(screen.contains(&format!("http://{agent}")), "{screen}");
    tmux.keys(&["q"]);
    let books = tmux.wait_for(30, "the books and the shell after q", |s| {
        s.contains("TOPIC") && s.contains("GROUP") && s.trim_end().ends_with("shell-ready$")
    });
    assert!(!tmux.alternate_screen_on(), "{books}");
    assert!(books.contains("group:billing"), "{books}");
    // The demo's agent stopped with it.
    let addr: std::net::SocketAddr = agent.parse().unwrap();
    assert!(common::try_get(addr, "/healthz", None).is_err());
}
