//! The Grafana dashboards (`grafana/`): valid against Grafana's own dashboard
//! schema (generated from `@grafana/schema` and checked with ajv, see
//! `grafana/schema-check/`), provisioning that a stock Grafana reads, and
//! every panel's query answered with data by a real Prometheus that scrapes
//! a running `tally demo`.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, require_installed, require_tool, try_get};
use serde_json::Value;

const DASHBOARDS: [&str; 2] = ["tally-overview.json", "tally-broker.json"];

fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana")
}

fn dashboard(name: &str) -> Value {
    let path = grafana_dir().join("dashboards").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// (panel title, expr) of every query of a dashboard.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?} has a target without an expr"));
            out.push((title, expr.to_owned()));
        }
    }
    out
}

/// What Grafana would put in place of the dashboard's variables with "All"
/// selected (their allValue is `.*`), and of its interval variables.
fn substitute(expr: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m");
    for var in ["cluster", "topic", "group", "instance"] {
        s = s
            .replace(&format!("${{{var}}}"), ".*")
            .replace(&format!("${var}"), ".*");
    }
    assert!(!s.contains('$'), "a variable the test does not know: {s}");
    s
}

/// Runs `node check.js FILES` in grafana/schema-check; None (skip) where node
/// or the npm packages are missing, except under CI=true.
fn schema_check(files: &[&Path]) -> Option<common::ClientRun> {
    let node = require_tool("node")?;
    let dir = grafana_dir().join("schema-check");
    let installed = dir
        .join("node_modules/ts-json-schema-generator/package.json")
        .is_file()
        && dir
            .join("node_modules/@grafana/schema/package.json")
            .is_file();
    if !require_installed(
        "the npm packages of grafana/schema-check (npm ci)",
        installed,
    ) {
        return None;
    }
    let mut cmd = Command::new(node);
    cmd.current_dir(&dir).arg("check.js").args(files);
    Some(common::run(&mut cmd, b"", Duration::from_secs(120)))
}

#[test]
fn both_dashboards_are_valid_against_grafanas_dashboard_schema() {
    let dir = grafana_dir().join("dashboards");
    let files: Vec<PathBuf> = DASHBOARDS.iter().map(|n| dir.join(n)).collect();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let Some(run) = schema_check(&refs) else {
        return;
    };
    assert!(
        run.status.success(),
        "schema check failed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    for name in DASHBOARDS {
        assert!(
            run.stdout.contains(&format!("{name}: valid")),
            "{name} not reported valid:\n{}",
            run.stdout
        );
    }
}

#[test]
fn the_schema_check_rejects_broken_dashboards() {
    let tmp = tempfile::tempdir().unwrap();
    let good = dashboard("tally-overview.json");
    let mut cases = Vec::new();

    let mut panels_not_a_list = good.clone();
    panels_not_a_list["panels"] = Value::from("x");
    cases.push(("panels-x.json", panels_not_a_list, "/panels: must be array"));

    let mut unknown_key = good.clone();
    unknown_key["panels"][1]["titel"] = Value::from("typo");
    cases.push((
        "unknown-key.json",
        unknown_key,
        "must NOT have additional properties",
    ));

    let mut no_schema_version = good.clone();
    no_schema_version
        .as_object_mut()
        .unwrap()
        .remove("schemaVersion");
    cases.push((
        "no-schema-version.json",
        no_schema_version,
        "must have required property 'schemaVersion'",
    ));

    let mut bad_variable = good;
    bad_variable["templating"]["list"][1]["type"] = Value::from("dropdown");
    cases.push((
        "bad-variable.json",
        bad_variable,
        "/templating/list/1/type: must be equal to one of the allowed values",
    ));

    for (name, doc, error) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        let Some(run) = schema_check(&[&path]) else {
            return;
        };
        assert!(
            !run.status.success(),
            "{name} was accepted:\n{}",
            run.stdout
        );
        assert!(
            run.stdout.contains(error),
            "{name}: expected {error:?} in:\n{}",
            run.stdout
        );
    }
}

#[test]
fn dashboards_use_the_datasource_variable_and_the_provisioning_points_at_them() {
    for name in DASHBOARDS {
        let d = dashboard(name);
        let vars = d["templating"]["list"].as_array().unwrap();
        let ds = vars
            .iter()
            .find(|v| v["type"] == "datasource")
            .unwrap_or_else(|| panic!("{name}: no datasource variable"));
        assert_eq!(ds["query"], "prometheus", "{name}");
        let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());
        let mut ids = std::collections::BTreeSet::new();
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap();
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: panel id repeated at {title:?}"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "{name}: {title}");
            assert!(!p["targets"].as_array().unwrap().is_empty(), "{title}");
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "{name}: {title}");
                let expr = t["expr"].as_str().unwrap();
                assert!(
                    !expr.contains("vector(0)"),
                    "{name}: {title}: a query must not invent data: {expr}"
                );
            }
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(v["datasource"]["uid"], ds_ref.as_str(), "{name}");
            assert_eq!(v["allValue"], ".*", "{name}: {}", v["name"]);
        }
    }
    let prov = grafana_dir().join("provisioning");
    let yaml = |p: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(prov.join(p)).unwrap();
        yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let ds = yaml("datasources/tally.yml");
    assert_eq!(ds["apiVersion"], 1);
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
    assert!(
        ds["datasources"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("http")
    );
    let dash = yaml("dashboards/tally.yml");
    assert_eq!(dash["apiVersion"], 1);
    let provider = &dash["providers"][0];
    assert_eq!(provider["type"], "file");
    let path = provider["options"]["path"].as_str().unwrap();
    assert!(Path::new(path).is_absolute(), "{path}");
    // The docs tell to copy grafana/dashboards/*.json to exactly that folder.
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana.md"))
            .unwrap();
    assert!(
        docs.contains(&format!("grafana/dashboards/*.json {path}")),
        "docs/grafana.md does not copy the dashboards to {path}"
    );
}

/// A child process killed (SIGKILL) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query; the `data.result` array (None when Prometheus is not
/// answering or refused the query, with its error).
fn query(prom: SocketAddr, expr: &str) -> Result<Vec<Value>, String> {
    let path = format!("/api/v1/query?query={}", percent_encode(expr));
    let (status, body) = try_get(prom, &path, None).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if status != 200 || v["status"] != "success" {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// `label_values(selector, label)` of a query variable, through the label
/// values API.
fn label_values(prom: SocketAddr, q: &str) -> Result<Vec<Value>, String> {
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("not label_values(...): {q}"))?;
    let (selector, label) = inner
        .rsplit_once(',')
        .ok_or_else(|| format!("no label in {q}"))?;
    let path = format!(
        "/api/v1/label/{}/values?match[]={}",
        label.trim(),
        percent_encode(&substitute(selector.trim()))
    );
    let (status, body) = try_get(prom, &path, None).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if status != 200 || v["status"] != "success" {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(v["data"].as_array().cloned().unwrap_or_default())
}

fn nonempty(prom: SocketAddr, expr: &str) -> bool {
    query(prom, expr).is_ok_and(|r| !r.is_empty())
}

#[test]
fn every_panel_query_returns_data_from_a_real_prometheus_scraping_the_demo() {
    let Some(prometheus) = require_tool("prometheus") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let agent: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let broker_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let kafka = format!("127.0.0.1:{}", free_port());
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let demo_log = tmp.path().join("demo.log");
    let demo = Killed(
        common::tally()
            .args([
                "demo",
                "--no-tui",
                "--duration",
                "300",
                "--bucket-width",
                "2s",
            ])
            .args(["--agent-listen", &agent.to_string()])
            .args(["--metrics-listen", &broker_metrics.to_string()])
            .args(["--kafka-listen", &kafka, "--data-dir"])
            .arg(tmp.path().join("demo"))
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&demo_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n\
             \x20 - job_name: tally-agent\n    static_configs:\n      - targets: ['{agent}']\n\
             \x20 - job_name: tally-broker\n    static_configs:\n      - targets: ['{broker_metrics}']\n"
        ),
    )
    .unwrap();
    let prom_log = tmp.path().join("prometheus.log");
    let _prometheus = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prom_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let logs = || {
        format!(
            "\ndemo log:\n{}\nprometheus log:\n{}",
            common::tail(&std::fs::read_to_string(&demo_log).unwrap_or_default()),
            common::tail(&std::fs::read_to_string(&prom_log).unwrap_or_default())
        )
    };

    // The demo has lagging groups, a group losing records to retention, and
    // both targets up; then 30 s more of scrapes for the rates.
    let deadline = Instant::now() + Duration::from_secs(150);
    let ready = [
        "up{job=\"tally-agent\"} == 1",
        "up{job=\"tally-broker\"} == 1",
        "tally_consumer_group_lag_records > 100",
        "tally_consumer_group_max_lag_seconds > 5",
        "tally_audit_expired_records_total > 0",
        "tally_audit_buckets{status=\"incomplete\"} > 0",
    ];
    let mut waiting: Vec<&str> = ready.to_vec();
    while !waiting.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the demo did not show {waiting:?} in Prometheus within 150 s{}",
            logs()
        );
        std::thread::sleep(Duration::from_secs(1));
        waiting.retain(|q| !nonempty(prom, q));
    }
    std::thread::sleep(Duration::from_secs(30));

    let mut checked = 0;
    let mut failures = Vec::new();
    for name in DASHBOARDS {
        let d = dashboard(name);
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] != "query" {
                continue;
            }
            let q = v["query"]["query"].as_str().unwrap();
            match label_values(prom, q) {
                Ok(values) if !values.is_empty() => checked += 1,
                Ok(_) => failures.push(format!("{name}: variable ${}: no values: {q}", v["name"])),
                Err(e) => failures.push(format!("{name}: variable ${}: {q}: {e}", v["name"])),
            }
        }
        for (title, expr) in queries(&d) {
            let q = substitute(&expr);
            match query(prom, &q) {
                Ok(r) if !r.is_empty() => checked += 1,
                Ok(_) => failures.push(format!("{name}: panel {title:?}: no data for {q}")),
                Err(e) => failures.push(format!("{name}: panel {title:?}: {q}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} queries failed:\n{}{}",
        failures.len(),
        checked + failures.len(),
        failures.join("\n"),
        logs()
    );
    assert!(checked > 30, "only {checked} queries checked");
    drop(demo);
}
