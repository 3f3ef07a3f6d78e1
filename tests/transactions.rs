//! Transactions on `tally broker`, through real clients (confluent-kafka's
//! transactional producer and read_committed consumers,
//! tests/compat/transactions_confluent_kafka.py; kafkajs,
//! tests/compat/transactions_kafkajs.js):
//!
//! - committed and aborted transactions: a read_committed reader gets exactly
//!   the committed records, a read_uncommitted one all of them; a transaction
//!   left open holds read_committed readers at the last stable offset; a new
//!   producer with the same transactional id fences the old one and aborts
//!   what it left open. The audit books count the committed records in the
//!   `broker` tier and the aborted ones apart (`aborted`), and balance.
//! - kill -9 of the broker in the middle of transactions: after the restart
//!   the producer that stayed commits its transaction whole, and the one that
//!   went away has its transaction aborted at its timeout; a read_committed
//!   group's lag is measured to the last stable offset.
//! - the exactly-once loop (consume, transform, produce, and commit the
//!   offsets with the transaction) across a kill -9 of the broker: its output
//!   equals its input, no record lost or doubled.
//!
//! Under CI=true a missing client fails (see tests/compat.rs).

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{Agent, Broker, client_scripts, tail};

const SCRIPT: &str = "transactions_confluent_kafka.py";

fn agent(dir: &tempfile::TempDir) -> Agent {
    Agent::start(
        &dir.path().join("agent"),
        &[
            "--bucket-width",
            "60s",
            "--grace",
            "2m",
            "--tick",
            "200ms",
            "--window",
            "24h",
        ],
    )
}

/// Runs the script in `mode` to its end; its JSON result.
fn script(python: &Path, broker: &Broker, args: &[&str]) -> Value {
    let run = common::run(
        Command::new(python)
            .arg(client_scripts().join(SCRIPT))
            .args(args),
        b"",
        common::CLIENT_TIMEOUT,
    );
    run.assert_success(&format!("{SCRIPT} {}", args.join(" ")), broker);
    run.json()
}

/// A script run that talks: lines of its stdout come through a channel, and
/// lines can be written to its stdin.
struct Talking {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: std::path::PathBuf,
}

impl Talking {
    fn start(python: &Path, args: &[&str], dir: &Path) -> Talking {
        let stderr = dir.join(format!("client-{}.err", common::free_port()));
        let mut child = Command::new(python)
            .arg(client_scripts().join(SCRIPT))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Talking {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    /// The next line that `want` accepts, within `within`.
    fn until(&self, within: Duration, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "the client did not print {what} within {within:?}: {}",
                    tail(&std::fs::read_to_string(&self.stderr).unwrap_or_default())
                ),
            }
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The JSON line it ends with.
    fn result(mut self, within: Duration) -> Value {
        let line = self.until(within, "its JSON result", |l| l.starts_with('{'));
        let _ = self.child.wait();
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Talking {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's totals of `topic` in the broker's cluster, once `ready` accepts them.
fn totals(agent: &Agent, topic: &str, ready: impl Fn(&Value) -> bool) -> Value {
    agent.until(30, &format!("the totals of {topic}"), |a| {
        let topics = a.json("/api/v1/topics");
        let t = topics["topics"]
            .as_array()?
            .iter()
            .find(|t| t["cluster"] == "local" && t["topic"] == topic)?
            .clone();
        ready(&t).then_some(t)
    })
}

fn tier(t: &Value, tier: &str, field: &str) -> u64 {
    t["tiers"][tier][field].as_u64().unwrap_or(0)
}

#[test]
fn committed_aborted_open_and_fenced_transactions() {
    let Some(python) = common::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(&dir);
    let broker = Broker::reporting_to(agent.addr, &["--bucket-width", "60s"]);
    let ts = (common::now_ms() - 3_600_000).to_string();
    let out = script(&python, &broker, &["basic", broker.addr(), "txn", &ts]);

    // Per partition (records alternate over 2): committed c1 (10) and c2 (7),
    // 3 plain records between; aborted a1 (5) never read committed.
    let values = |prefix: &str, n: usize, p: usize| -> Vec<String> {
        (0..n)
            .filter(|i| i % 2 == p)
            .map(|i| format!("{prefix}-{i}"))
            .collect()
    };
    let committed = |p: usize| -> Vec<String> {
        [
            values("c1", 10, p),
            values("plain", 3, p),
            values("c2", 7, p),
        ]
        .concat()
    };
    let all = |p: usize| -> Vec<String> {
        [
            values("c1", 10, p),
            values("a1", 5, p),
            values("plain", 3, p),
            values("c2", 7, p),
        ]
        .concat()
    };
    assert_eq!(
        out["committed"],
        json!({"0": committed(0), "1": committed(1)}),
        "{out}"
    );
    assert_eq!(
        out["uncommitted"],
        json!({"0": all(0), "1": all(1)}),
        "{out}"
    );
    // The markers take an offset each: 3 transactions touched both partitions.
    assert_eq!(
        out["committed_positions"],
        json!({"0": 17, "1": 14}),
        "{out}"
    );
    // An open transaction: read_committed readers stop at its first record,
    // read_uncommitted ones see it.
    assert_eq!(out["while_open"], out["committed"], "{out}");
    assert_eq!(out["open_positions"], json!({"0": 17, "1": 14}), "{out}");
    assert_eq!(
        out["open_uncommitted"],
        json!({
            "0": ([all(0), values("open", 4, 0)].concat()),
            "1": ([all(1), values("open", 4, 1)].concat())
        }),
        "{out}"
    );
    // The new producer fenced the old one, whose commit then fails for good.
    assert_eq!(out["zombie_commit"]["name"], "_FENCED", "{out}");
    assert_eq!(out["zombie_commit"]["fatal"], true, "{out}");
    assert_eq!(out["after_fence"], out["committed"], "{out}");

    // The books: 20 records in the broker tier, 9 aborted (a1's 5 and the
    // fenced transaction's 4), the read_committed group consumed all 20.
    let t = totals(&agent, "txn", |t| tier(t, "broker", "aborted") == 9);
    assert_eq!(tier(&t, "broker", "records"), 20, "{t}");
    let g = "group:committed-reader";
    assert_eq!(
        (
            tier(&t, g, "records"),
            tier(&t, g, "pending"),
            tier(&t, g, "skipped"),
            tier(&t, g, "expired")
        ),
        (20, 0, 0, 0),
        "{t}"
    );
    // The tools' view (kafka-python's admin client; confluent-kafka has none):
    // ListTransactions and DescribeTransactions show the id, its producer and
    // the epoch the fencing producer got (0, 1 for the abort, 2).
    let tools = common::run(
        Command::new(&python).arg("-c").arg(format!(
            "import json; from kafka.admin import KafkaAdminClient; from kafka.errors import KafkaError\n\
             a = KafkaAdminClient(bootstrap_servers='{}')\n\
             listed = [[t.transactional_id, t.state.value] for ts in a.list_transactions().values() for t in ts]\n\
             d = a.describe_transactions(['basic-1'])['basic-1']\n\
             try:\n    a.describe_transactions(['no-such-id']); unknown = None\n\
             except KafkaError as e:\n    unknown = type(e).__name__\n\
             print(json.dumps({{'listed': listed, 'state': d.state.value, 'epoch': d.producer_epoch, \
             'ongoing': [t.transactional_id for ts in a.list_transactions(state_filters=['Ongoing']).values() for t in ts], \
             'unknown': unknown}}))",
            broker.addr()
        )),
        b"",
        common::CLIENT_TIMEOUT,
    );
    tools.assert_success("kafka-python transaction admin", &broker);
    assert_eq!(
        tools.json(),
        json!({
            "listed": [["basic-1", "Empty"]],
            "state": "Empty",
            "epoch": 2,
            "ongoing": [],
            "unknown": "TransactionalIdNotFoundError"
        })
    );
    broker.assert_quiet();
}

#[test]
fn kill9_mid_transaction_commits_whole_or_aborts_at_the_timeout() {
    let Some(python) = common::python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(&dir);
    let mut broker = Broker::reporting_to(agent.addr, &["--bucket-width", "60s"]);
    // One producer stays through the restart, one goes away.
    let mut keep = Talking::start(
        &python,
        &["hold", broker.addr(), "kept", "keep-1", "60000"],
        dir.path(),
    );
    keep.until(Duration::from_secs(60), "open", |l| l == "open");
    let mut drop_ = Talking::start(
        &python,
        &["hold", broker.addr(), "dropped", "drop-1", "4000"],
        dir.path(),
    );
    drop_.until(Duration::from_secs(60), "open", |l| l == "open");

    // A read_committed group reads to the last stable offset (1: the plain
    // record) and commits there: it lags by nothing, though the log holds 6.
    let read = script(
        &python,
        &broker,
        &["read", broker.addr(), "kept", "read_committed", "rc-group"],
    );
    assert_eq!(read["values"], json!({"0": ["before"]}), "{read}");
    assert_eq!(read["positions"], json!({"0": 1}), "{read}");
    let group = agent.until(30, "rc-group's lag", |a| {
        let (status, body) = common::get(a.addr, "/api/v1/groups/rc-group", None);
        (status == 200).then(|| serde_json::from_str::<Value>(&body).unwrap())
    });
    assert_eq!(
        group["lag_records"], 0,
        "measured to the last stable offset: {group}"
    );

    broker.kill9();
    broker.restart();

    keep.say("commit");
    let kept = keep.result(Duration::from_secs(90));
    assert_eq!(kept["committed"], true, "{kept}\n{}", tail(&broker.log()));
    drop_.say("exit");
    let gone = drop_.result(Duration::from_secs(30));
    assert_eq!(gone["command"], "exit");

    let read = script(
        &python,
        &broker,
        &["read", broker.addr(), "kept", "read_committed"],
    );
    let want: Vec<String> = std::iter::once("before".to_owned())
        .chain((0..5).map(|i| format!("keep-1-{i}")))
        .collect();
    assert_eq!(
        read["values"],
        json!({"0": want}),
        "committed whole: {read}"
    );
    // The abandoned transaction is aborted at its timeout: the last stable
    // offset passes its marker, and its records are never read committed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let dropped = loop {
        let read = script(
            &python,
            &broker,
            &["read", broker.addr(), "dropped", "read_committed"],
        );
        if read["positions"]["0"] == 7 || Instant::now() > deadline {
            break read;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        dropped,
        json!({"values": {"0": ["before"]}, "positions": {"0": 7}}),
        "aborted at its timeout: {}",
        tail(&broker.log())
    );
    assert!(
        broker.log().contains("transaction timed out"),
        "{}",
        tail(&broker.log())
    );

    let t = totals(&agent, "kept", |t| tier(t, "broker", "records") == 6);
    assert_eq!(tier(&t, "broker", "aborted"), 0, "{t}");
    let t = totals(&agent, "dropped", |t| tier(t, "broker", "aborted") == 5);
    assert_eq!(tier(&t, "broker", "records"), 1, "{t}");
}

#[test]
fn exactly_once_loop_across_a_kill9_of_the_broker() {
    let Some(python) = common::python() else {
        return;
    };
    const N: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&[]);
    script(
        &python,
        &broker,
        &["fill", broker.addr(), "in", &N.to_string()],
    );
    let mut eos = Talking::start(
        &python,
        &["eos", broker.addr(), "in", "out", &N.to_string(), "15"],
        dir.path(),
    );
    // Mid-way, in the middle of a transaction whose records are written, the
    // broker is killed and comes back.
    eos.until(Duration::from_secs(90), "open", |l| l == "open");
    broker.kill9();
    broker.restart();
    std::thread::sleep(Duration::from_secs(2));
    eos.say("go");
    let result = eos.result(Duration::from_secs(240));
    assert_eq!(result["done"], N, "{result}\n{}", tail(&broker.log()));

    let read = script(
        &python,
        &broker,
        &["read", broker.addr(), "out", "read_committed"],
    );
    for p in 0..2 {
        let want: Vec<String> = (0..N)
            .filter(|i| i % 2 == p)
            .map(|i| format!("R-{i}"))
            .collect();
        assert_eq!(
            read["values"][p.to_string()],
            json!(want),
            "partition {p}: the output equals the input, in order, each once ({} restarts)",
            result["restarts"]
        );
    }
}

#[test]
fn kafkajs_commits_aborts_and_sends_offsets_in_a_transaction() {
    let Some(node) = common::node() else {
        return;
    };
    let broker = Broker::start(&[]);
    let run = common::run(
        Command::new(node)
            .current_dir(client_scripts())
            .arg("transactions_kafkajs.js")
            .args([broker.addr(), "kjs"]),
        b"",
        common::CLIENT_TIMEOUT,
    );
    run.assert_success("transactions_kafkajs.js", &broker);
    let out = run.json();
    let names = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}")).collect()
    };
    assert_eq!(out["committed"], json!(names("kc", 6)), "{out}");
    assert_eq!(
        out["uncommitted"],
        json!([names("ka", 4), names("kc", 6)].concat()),
        "{out}"
    );
    assert_eq!(out["output"], json!(names("KC", 6)), "{out}");
    // The offsets went with the transaction: 3 records on each partition.
    assert_eq!(out["group_offsets"], json!({"0": "3", "1": "3"}), "{out}");
    broker.assert_quiet();
}
