//! Alerts end to end: the real `tally agent` with a rules file, fed lag over
//! its HTTP ingest, notifying a real webhook receiver and a real Alertmanager;
//! a real Prometheus evaluating `alerts/prometheus/tally.rules.yml` over the
//! agent's /metrics; and promtool checking and testing those rules.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Agent, free_port, get, now_ms, post_ingest, request, require_tool, tally};
use serde_json::{Value, json};

/// The agent's flags for alert tests: short buckets and a short tick.
const FLAGS: &[&str] = &[
    "--bucket-width",
    "1s",
    "--grace",
    "1s",
    "--window",
    "10m",
    "--tick",
    "100ms",
];

const LAG_RULES: &str = r#"
rules:
  - name: TestConsumerLag
    kind: consumer_lag
    group: "bill*"
    records: 100
    for: 1s
    severity: critical
    labels: {team: payments}
    annotations:
      summary: "{{ $labels.group }} is {{ $value }} records behind on {{ $labels.topic }}"
"#;

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts/prometheus")
}

/// Sends one ingest batch: a hello, then a lag sample of group `billing` on
/// `orders` with `lag` records behind on partition 0.
fn send_lag(agent: SocketAddr, lag: u64, seq: u64) {
    let batch = json!([
        {"v": 1, "type": "hello", "source": "broker-test", "cluster": "local",
         "tier_kinds": ["broker", "group"], "bucket_width_ms": 1000, "started_at_ms": 1},
        {"v": 1, "type": "lag", "seq": seq, "at_ms": now_ms(), "partitions": [
            {"group": "billing", "topic": "orders", "partition": 0, "committed": 1000,
             "end_offset": 1000 + lag as i64, "start_offset": 0, "lag_records": lag,
             "lag_seconds": if lag > 0 { 5.0 } else { 0.0 }, "commit_at_ms": now_ms()}]}
    ]);
    let (status, body) = post_ingest(agent, &batch);
    assert_eq!(status, 200, "{body}");
    let replies: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(replies[1]["type"], "ack", "{body}");
}

/// The agent's alerts of rule `name` in `state`.
fn alerts_in(agent: &Agent, name: &str, state: &str) -> Vec<Value> {
    agent.json("/api/v1/alerts")["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["alertname"] == name && a["state"] == state)
        .cloned()
        .collect()
}

/// A webhook receiver on 127.0.0.1: answers every POST with 200 and keeps
/// its JSON body.
struct Webhook {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let keep = bodies.clone();
        // The thread ends with the test process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.to_ascii_lowercase();
                    if let Some(v) = l.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    keep.lock().unwrap().push(v);
                }
                let mut stream = reader.into_inner();
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Webhook { addr, bodies }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// Waits for a payload with an alert in its `list` ("firing" or "resolved").
    fn wait_for(&self, list: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(b) = self
                .bodies()
                .into_iter()
                .find(|b| b[list].as_array().is_some_and(|l| !l.is_empty()))
            {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "no webhook payload with {list} alerts within {secs} s; got {:?}",
                self.bodies()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A real server process with its own folder; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `program` with `args(dir, addr)` and waits until `ready` answers 200.
    fn start(
        program: &Path,
        args: impl FnOnce(&Path, SocketAddr) -> Vec<String>,
        ready: &str,
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("server.log");
        let child = Command::new(program)
            .args(args(dir.path(), addr))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let mut server = Server {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status}: {}",
                    program.display(),
                    server.log()
                );
            }
            if let Ok((200, _)) = common::try_get(addr, ready, None) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within 30 s: {}",
                program.display(),
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = get(self.addr, path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_rules(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn promtool_checks_and_tests_the_prometheus_rules() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let dir = prometheus_dir();
    let check = Command::new(&promtool)
        .args(["check", "rules", "tally.rules.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "promtool check rules: {out}");
    assert!(out.contains("SUCCESS"), "{out}");
    let test = Command::new(&promtool)
        .args(["test", "rules", "tally.rules.test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let out =
        String::from_utf8_lossy(&test.stdout).into_owned() + &String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success(), "promtool test rules: {out}");
    // Every alert of the rules file has a firing and a quiet case.
    let rules = std::fs::read_to_string(dir.join("tally.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("tally.rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("{alert} fires"))
                && tests.contains(&format!("{alert} stays quiet")),
            "{alert} lacks a firing or a quiet case in tally.rules.test.yml"
        );
    }
}

#[test]
fn a_bad_rules_file_is_refused_at_start_naming_rule_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        "rules:\n  - name: Fine\n    kind: expired\n  - name: LagTooHigh\n    kind: consumer_lag\n    records: lots\n",
    );
    let out = tally()
        .args(["agent", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--rules")
        .arg(&rules)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started: {stderr}");
    assert!(
        stderr.contains("rule \"LagTooHigh\"")
            && stderr.contains("field \"records\"")
            && stderr.contains("\"lots\" is not a number"),
        "{stderr}"
    );
}

#[test]
fn a_failed_reload_keeps_the_rules_and_sighup_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), LAG_RULES);
    let path = rules.to_str().unwrap();
    let agent = Agent::start(
        &dir.path().join("agent"),
        &[FLAGS, &["--rules", path]].concat(),
    );
    let names = |agent: &Agent| -> Vec<String> {
        agent.json("/api/v1/rules")["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&agent), ["TestConsumerLag"]);

    std::fs::write(
        &rules,
        format!("{LAG_RULES}  - {{name: Broken, kind: group_status, statuses: [sad]}}\n"),
    )
    .unwrap();
    let (status, body) =
        request(agent.addr, "POST", "/api/v1/rules/reload", None, Some("")).unwrap();
    assert_eq!(status, 422, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let detail = answer["detail"].as_str().unwrap();
    assert!(
        detail.contains("rule \"Broken\"")
            && detail.contains("field \"statuses\"")
            && detail.contains("\"sad\""),
        "{detail}"
    );
    assert_eq!(names(&agent), ["TestConsumerLag"], "the old rules stay");
    // They still evaluate: a lagging group fires.
    send_lag(agent.addr, 500, 1);
    agent.until(20, "the lag alert to fire", |a| {
        (!alerts_in(a, "TestConsumerLag", "firing").is_empty()).then_some(())
    });

    std::fs::write(
        &rules,
        format!("{LAG_RULES}  - {{name: Expired, kind: expired}}\n"),
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &agent.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    agent.until(20, "SIGHUP to reload the rules", |a| {
        (names(a) == ["TestConsumerLag", "Expired"]).then_some(())
    });
    let (status, body) =
        request(agent.addr, "POST", "/api/v1/rules/reload", None, Some("")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(agent.metrics().contains("tally_alert_rules 2"));
}

#[test]
fn webhook_gets_firing_then_resolved_and_a_restart_announces_nothing_again() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), LAG_RULES);
    let hook = Webhook::start();
    let data = dir.path().join("agent");
    let hook_url = hook.url();
    let flags = [
        FLAGS,
        &[
            "--rules",
            rules.to_str().unwrap(),
            "--webhook-url",
            &hook_url,
            "--external-url",
            "http://tally.test:9400",
        ],
    ]
    .concat();
    let agent = Agent::start(&data, &flags);
    // A lag below the threshold: nothing.
    send_lag(agent.addr, 50, 1);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        agent.json("/api/v1/alerts")["alerts"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    send_lag(agent.addr, 500, 2);
    // Pending first (for: 1s), then firing.
    let firing = hook.wait_for("firing", 20);
    assert_eq!(firing["version"], "1");
    assert_eq!(firing["status"], "firing");
    let alert = &firing["firing"][0];
    assert_eq!(alert["alertname"], "TestConsumerLag");
    assert_eq!(alert["state"], "firing");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(
        alert["labels"],
        json!({"alertname": "TestConsumerLag", "severity": "critical", "team": "payments",
               "cluster": "local", "group": "billing", "topic": "orders"})
    );
    assert_eq!(
        alert["annotations"]["summary"],
        "billing is 500 records behind on orders"
    );
    assert_eq!(alert["value"], 500.0);
    assert!(alert["starts_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(alert["ends_at"], Value::Null);
    assert_eq!(
        alert["generator_url"],
        "http://tally.test:9400/api/v1/alerts"
    );
    let shown = alerts_in(&agent, "TestConsumerLag", "firing");
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0]["labels"]["group"], "billing");
    let metrics = agent.metrics();
    assert!(
        metrics.contains("tally_alerts{cluster=\"local\",alertname=\"TestConsumerLag\",severity=\"critical\",state=\"firing\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tally_notifications_total{notifier=\"webhook\",result=\"sent\"} 1"));

    // kill -9 and start again on the same data: the alert is still firing,
    // and the webhook hears nothing new.
    std::thread::sleep(Duration::from_millis(300));
    let addr = agent.addr;
    agent.kill9();
    let agent = Agent::start_at(addr, &data, &flags);
    assert_eq!(
        alerts_in(&agent, "TestConsumerLag", "firing").len(),
        1,
        "restored as firing"
    );
    send_lag(agent.addr, 600, 3);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(alerts_in(&agent, "TestConsumerLag", "firing").len(), 1);
    assert_eq!(
        hook.bodies().len(),
        1,
        "a restart announced again: {:?}",
        hook.bodies()
    );

    // Caught up: resolved, announced once.
    send_lag(agent.addr, 0, 4);
    let resolved = hook.wait_for("resolved", 20);
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["firing"], json!([]));
    let r = &resolved["resolved"][0];
    assert_eq!(r["state"], "resolved");
    assert_eq!(r["labels"]["group"], "billing");
    assert_eq!(
        r["starts_at"], alert["starts_at"],
        "the same alert resolves"
    );
    assert!(r["ends_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(alerts_in(&agent, "TestConsumerLag", "resolved").len(), 1);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(hook.bodies().len(), 2, "{:?}", hook.bodies());
}

/// An agent with the lag rules that notifies `url`, each attempt under `timeout`.
fn with_webhook(dir: &Path, rules: &Path, url: &str, timeout: &str) -> Agent {
    Agent::start(
        &dir.join("agent"),
        &[
            FLAGS,
            &[
                "--rules",
                rules.to_str().unwrap(),
                "--webhook-url",
                url,
                "--notify-timeout",
                timeout,
            ],
        ]
        .concat(),
    )
}

/// Webhook notifications retried so far, from the agent's /metrics.
fn webhook_retries(a: &Agent) -> u64 {
    let series = "tally_notifications_total{notifier=\"webhook\",result=\"retried\"} ";
    a.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_webhook_that_is_down_does_not_stop_the_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), LAG_RULES);
    // A port where nothing listens.
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let agent = with_webhook(dir.path(), &rules, &dead, "1s");
    send_lag(agent.addr, 500, 1);
    agent.until(20, "the lag alert to fire", |a| {
        (!alerts_in(a, "TestConsumerLag", "firing").is_empty()).then_some(())
    });
    send_lag(agent.addr, 0, 2);
    agent.until(20, "the lag alert to resolve", |a| {
        (!alerts_in(a, "TestConsumerLag", "resolved").is_empty()).then_some(())
    });
    // The failed POSTs were retried, and counted.
    agent.until(20, "a retried notification", |a| {
        (webhook_retries(a) >= 1).then_some(())
    });
}

#[test]
fn a_webhook_that_never_answers_times_out_and_is_retried() {
    // Accepts connections and holds them without a word.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging = format!("http://{}/hook", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), LAG_RULES);
    let agent = with_webhook(dir.path(), &rules, &hanging, "500ms");
    send_lag(agent.addr, 500, 1);
    agent.until(20, "the lag alert to fire", |a| {
        (!alerts_in(a, "TestConsumerLag", "firing").is_empty()).then_some(())
    });
    // Each attempt gives up after the timeout and is tried again.
    agent.until(20, "two timed-out attempts", |a| {
        (webhook_retries(a) >= 2).then_some(())
    });
    assert!(
        held.lock().unwrap().len() >= 2,
        "the webhook was called again"
    );
    // Meanwhile the evaluation goes on.
    send_lag(agent.addr, 0, 2);
    agent.until(20, "the lag alert to resolve", |a| {
        (!alerts_in(a, "TestConsumerLag", "resolved").is_empty()).then_some(())
    });
}

#[test]
fn alertmanager_gets_the_firing_lag_alert_and_then_its_resolution() {
    let Some(alertmanager) = require_tool("prometheus-alertmanager") else {
        return;
    };
    let am = Server::start(
        &alertmanager,
        |dir, addr| {
            let config = dir.join("alertmanager.yml");
            std::fs::write(
                &config,
                "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: blackhole\n",
            )
            .unwrap();
            vec![
                format!("--config.file={}", config.display()),
                format!("--storage.path={}", dir.join("data").display()),
                format!("--web.listen-address={addr}"),
                "--cluster.listen-address=".into(),
            ]
        },
        "/-/ready",
    );
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), LAG_RULES);
    let agent = Agent::start(
        &dir.path().join("agent"),
        &[
            FLAGS,
            &[
                "--rules",
                rules.to_str().unwrap(),
                "--alertmanager-url",
                &format!("http://{}", am.addr),
                "--alert-resend",
                "1s",
            ],
        ]
        .concat(),
    );
    send_lag(agent.addr, 500, 1);
    let active = until(30, "Alertmanager to hold the lag alert", || {
        am.json("/api/v2/alerts")
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == "TestConsumerLag")
            .cloned()
    });
    assert_eq!(active["status"]["state"], "active", "{active}");
    assert_eq!(active["labels"]["group"], "billing");
    assert_eq!(active["labels"]["severity"], "critical");
    assert_eq!(active["labels"]["team"], "payments");
    assert_eq!(
        active["annotations"]["summary"],
        "billing is 500 records behind on orders"
    );
    assert_eq!(
        active["generatorURL"],
        format!("http://{}/api/v1/alerts", agent.addr)
    );
    // Re-sent while firing: Alertmanager's updatedAt moves on.
    let first_update = active["updatedAt"].as_str().unwrap().to_owned();
    until(15, "the alert to be re-sent", || {
        am.json("/api/v2/alerts")
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == "TestConsumerLag")
            .filter(|a| a["updatedAt"].as_str() != Some(first_update.as_str()))
            .cloned()
    });

    send_lag(agent.addr, 0, 2);
    until(30, "Alertmanager to see the alert resolved", || {
        let all =
            am.json("/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true");
        let gone = !all
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["alertname"] == "TestConsumerLag");
        gone.then_some(())
    });
    // amtool agrees.
    if let Some(amtool) = require_tool("amtool") {
        let out = Command::new(amtool)
            .args(["alert", "query", "-o", "json", "--alertmanager.url"])
            .arg(format!("http://{}", am.addr))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            !listed.to_string().contains("TestConsumerLag"),
            "amtool still lists the resolved alert: {listed}"
        );
    }
    assert!(am.log().contains("Listening"), "{}", am.log());
}

#[test]
fn prometheus_with_tally_rules_fires_the_lag_alert_scraping_the_agent() {
    let Some(prometheus) = require_tool("prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("agent"), FLAGS);
    // Without --rules the agent has no rules to reload, and says how to give some.
    let (status, body) =
        request(agent.addr, "POST", "/api/v1/rules/reload", None, Some("")).unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("--rules FILE"), "{body}");
    let target = agent.addr;
    let rules = prometheus_dir().join("tally.rules.yml");
    let prom = Server::start(
        &prometheus,
        |dir, addr| {
            let config = dir.join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: tally\n    static_configs:\n      - targets: ['{target}']\n",
                    rules.display()
                ),
            )
            .unwrap();
            vec![
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={addr}"),
            ]
        },
        "/-/ready",
    );
    // The rules loaded from the file.
    let groups = prom.json("/api/v1/rules")["data"]["groups"].clone();
    assert!(groups.to_string().contains("ConsumerLagHigh"), "{groups}");
    // billing lags 5000 records (over the 1000 of ConsumerLagHigh), kept fresh.
    let mut seq = 1;
    let state = until(90, "Prometheus' ConsumerLagHigh to fire", || {
        if seq % 20 == 1 {
            send_lag(agent.addr, 5000, seq);
        }
        seq += 1;
        let alerts = prom.json("/api/v1/alerts")["data"]["alerts"].clone();
        alerts
            .as_array()
            .unwrap()
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == "ConsumerLagHigh"
                    && a["labels"]["group"] == "billing"
                    && a["state"] == "firing"
            })
            .cloned()
    });
    assert_eq!(state["labels"]["topic"], "orders");
    assert_eq!(state["labels"]["cluster"], "local");
    let value: f64 = state["value"].as_str().unwrap().parse().unwrap();
    assert_eq!(value, 5000.0, "{state}");
}
