//! `tally demo` end to end: the broker, the agent and a librdkafka workload
//! must show every group status and every bucket status through the agent's
//! API within two minutes, the mirror to the second cluster every status of
//! its tier too, and print the books when the demo stops.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{free_port, get};
use serde_json::Value;

fn json(addr: std::net::SocketAddr, path: &str) -> Option<Value> {
    match common::try_get(addr, path, None) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

#[test]
fn the_demo_shows_every_status_and_prints_the_books() {
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let kafka = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    // Files, not pipes: nothing here reads while the demo runs, and a full
    // pipe would stall it.
    let logs = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = common::tally()
        .args([
            "demo",
            "--no-tui",
            "--duration",
            "150",
            "--bucket-width",
            "2s",
            "--agent-listen",
        ])
        .arg(addr.to_string())
        .args(["--kafka-listen", &kafka, "--metrics-listen", &metrics])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();

    let set = |items: &[&str]| {
        items
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<String>>()
    };
    let want_groups = set(&["ok", "warn", "err"]);
    let want_partitions = set(&["ok", "warn", "stop", "stall", "rewind"]);
    let want_buckets = set(&[
        "open",
        "complete",
        "pending",
        "incomplete",
        "excess",
        "late",
    ]);
    // The mirror's tier of `orders`: every closed status.
    let want_mirror = set(&["complete", "pending", "incomplete", "excess", "late"]);
    let (mut groups, mut partitions, mut buckets, mut mirror) = (
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    );
    let mut expired = 0;
    let mut skipped = 0;
    // The example rules fire on the lagging, stopped, stalled and expiring groups.
    let want_firing = set(&[
        "ConsumerLagHigh",
        "ConsumerGroupUnhealthy",
        "AuditIncomplete",
        "RecordsExpiredUnconsumed",
        "MirrorBehind",
    ]);
    let mut firing = BTreeSet::new();
    let mut firing_metric = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline
        && (groups != want_groups
            || partitions != want_partitions
            || buckets != want_buckets
            || !want_mirror.is_subset(&mirror)
            || expired == 0
            || firing != want_firing
            || !firing_metric)
    {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(a) = json(addr, "/api/v1/alerts") {
            for alert in a["alerts"].as_array().unwrap() {
                if alert["state"] == "firing" {
                    firing.insert(alert["alertname"].as_str().unwrap().to_owned());
                }
            }
        }
        if let Ok((200, text)) = common::try_get(addr, "/metrics", None) {
            firing_metric |= text
                .lines()
                .any(|l| l.starts_with("tally_alerts{") && l.contains("state=\"firing\""));
        }
        if let Some(g) = json(addr, "/api/v1/groups") {
            for group in g["groups"].as_array().unwrap() {
                groups.insert(group["status"].as_str().unwrap().to_owned());
                for p in group["partitions"].as_array().unwrap() {
                    partitions.insert(p["status"].as_str().unwrap().to_owned());
                }
            }
        }
        if let Some(t) = json(addr, "/api/v1/topics") {
            for topic in t["topics"].as_array().unwrap() {
                for (_, tier) in topic["tiers"].as_object().unwrap() {
                    expired = expired.max(tier["expired"].as_u64().unwrap_or(0));
                    skipped = skipped.max(tier["skipped"].as_u64().unwrap_or(0));
                }
                let name = topic["topic"].as_str().unwrap();
                if let Some(b) = json(addr, &format!("/api/v1/topics/{name}/buckets")) {
                    for bucket in b["buckets"].as_array().unwrap() {
                        for (name, tier) in bucket["tiers"].as_object().unwrap() {
                            let status = tier["status"].as_str().unwrap().to_owned();
                            if name == "mirror:replica" {
                                mirror.insert(status.clone());
                            }
                            buckets.insert(status);
                        }
                    }
                }
            }
        }
    }
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let stopped_by = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > stopped_by {
            let _ = child.kill();
            panic!(
                "the demo did not stop within 30 s of SIGTERM: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert_eq!(groups, want_groups, "group statuses seen");
    assert_eq!(partitions, want_partitions, "partition statuses seen");
    assert_eq!(buckets, want_buckets, "bucket statuses seen");
    assert!(
        want_mirror.is_subset(&mirror),
        "mirror:replica statuses seen: {mirror:?}, want {want_mirror:?}"
    );
    assert!(expired > 0, "a group lost records to retention");
    assert_eq!(firing, want_firing, "alerts seen firing");
    assert!(
        firing_metric,
        "tally_alerts{{state=\"firing\"}} on /metrics"
    );
    assert!(skipped > 0, "a group that joined late skipped records");
    assert!(status.success(), "{stderr}");
    let summary = std::fs::read_to_string(&out_path).unwrap();
    for needle in [
        "TOPIC",
        "group:billing",
        "produced",
        "GROUP",
        "legacy-export",
        "fraud-check",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle}: {summary}"
        );
    }
    // The agent stopped with the demo.
    assert!(
        common::try_get(addr, "/healthz", None).is_err() || get(addr, "/healthz", None).0 != 200
    );
}
