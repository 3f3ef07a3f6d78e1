//! Real Kafka clients in consumer groups of `tally broker`: confluent-kafka
//! and kafka-python (in `.venv`), kafkajs (in `tests/compat/node_modules`)
//! and kcat's balanced consumer, each with `subscribe()` on a topic of 3
//! partitions. The members split the partitions, take over those of a
//! member that leaves or is killed, resume at their committed offsets, and
//! show up in the admin clients' DescribeGroups and ListGroups; committed
//! offsets survive a kill -9 of the broker.
//!
//! The client scripts are `tests/compat/groups_*`. A long-lived member
//! prints one JSON line per assignment change and leaves the group when it
//! reads "close" on stdin; a one-shot run prints one JSON result.
//! `scripts/test` installs every client; under CI=true a missing one fails
//! its test.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{Broker, CLIENT_TIMEOUT, ClientRun, client_scripts as scripts, tail};

/// The session timeout every member asks for (`groups_events.py`,
/// `groups_kafkajs.js`): what a killed member costs its group.
const SESSION_TIMEOUT: Duration = Duration::from_millis(6_000);
/// A member's first assignment arrives within this long of subscribe():
/// a broker that holds the first JoinGroup (one peer does, for
/// kafka-python) never gets there.
const FIRST_ASSIGNMENT: Duration = Duration::from_secs(5);
const PARTITIONS: [i64; 3] = [0, 1, 2];

/// The clients that join groups through their own scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    ConfluentKafka,
    KafkaPython,
    Kafkajs,
}

impl Client {
    /// The command that runs this client's script, or None (skip) where
    /// the client is not installed.
    fn script(self) -> Option<Command> {
        match self {
            Client::ConfluentKafka => python_script("groups_confluent_kafka.py"),
            Client::KafkaPython => python_script("groups_kafka_python.py"),
            Client::Kafkajs => {
                let mut cmd = Command::new(common::node()?);
                cmd.arg(scripts().join("groups_kafkajs.js"));
                Some(cmd)
            }
        }
    }

    /// The admin that describes this client's groups: kafkajs's own, and
    /// kafka-python's for the Python clients.
    fn admin(self) -> Option<Command> {
        match self {
            Client::Kafkajs => self.script(),
            Client::ConfluentKafka | Client::KafkaPython => python_script("groups_admin.py"),
        }
    }
}

/// That Python running `script`, or None (skip).
fn python_script(script: &str) -> Option<Command> {
    let mut cmd = Command::new(common::python()?);
    cmd.arg(scripts().join(script));
    Some(cmd)
}

/// Runs `cmd` to its end, killing it after `CLIENT_TIMEOUT`.
fn run(cmd: &mut Command) -> ClientRun {
    common::run(cmd, b"", CLIENT_TIMEOUT)
}

/// Runs `cmd` (a client script) with `args` against `broker`; its JSON
/// result, failing with everything it said when it failed or found a
/// mismatch.
fn one_shot(mut cmd: Command, broker: &Broker, args: &[&str]) -> Value {
    let (mode, rest) = args.split_first().unwrap();
    let out = run(cmd.arg(mode).arg(broker.addr()).args(rest));
    let result: Option<Value> = out
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok());
    let mismatches = result
        .as_ref()
        .and_then(|r| r["mismatches"].as_array().cloned())
        .unwrap_or_default();
    match result {
        Some(result) if out.status.success() && mismatches.is_empty() => result,
        _ => panic!(
            "{args:?} exited with {} and printed:\n{}\n\nclient stderr:\n{}\n\nbroker log:\n{}",
            out.status,
            out.stdout,
            tail(&out.stderr),
            tail(&broker.log())
        ),
    }
}

/// A record as the scripts print it: partition, offset, value.
type Record = (i64, i64, String);

fn records(v: &Value) -> Vec<Record> {
    v.as_array()
        .unwrap_or_else(|| panic!("an array of records, got {v}"))
        .iter()
        .map(|r| {
            (
                r[0].as_i64().unwrap(),
                r[1].as_i64().unwrap(),
                r[2].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The records the `produce` modes write: `p<partition>-<i>` at offset i.
fn produced(partition: i64, offsets: std::ops::Range<i64>) -> Vec<Record> {
    offsets
        .map(|o| (partition, o, format!("p{partition}-{o}")))
        .collect()
}

/// {partition: offset} from a JSON object keyed by partition.
fn offsets(v: &Value) -> BTreeMap<i64, i64> {
    v.as_object()
        .unwrap_or_else(|| panic!("offsets by partition, got {v}"))
        .iter()
        .map(|(p, o)| (p.parse().unwrap(), o.as_i64().unwrap()))
        .collect()
}

/// The committed offsets of `group` on `topic`, read back through
/// OffsetFetch by `client`'s own API (confluent-kafka's committed(),
/// kafka-python's and kafkajs's admin).
fn fetch_offsets(client: Client, broker: &Broker, topic: &str, group: &str) -> BTreeMap<i64, i64> {
    let cmd = match client {
        Client::KafkaPython => client.admin(),
        Client::ConfluentKafka | Client::Kafkajs => client.script(),
    }
    .unwrap();
    offsets(&one_shot(cmd, broker, &["offsets", topic, group])["committed"])
}

/// One long-lived member process.
struct Member {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: PathBuf,
    assigned: Option<BTreeSet<i64>>,
    first_assigned: Option<Duration>,
    gone: bool,
}

/// The members of one group, all of one client, and what they reported.
struct Group<'a> {
    client: Client,
    broker: &'a Broker,
    topic: String,
    id: String,
    members: Vec<Member>,
    tx: Sender<(usize, Value)>,
    events: Receiver<(usize, Value)>,
}

impl<'a> Group<'a> {
    fn new(client: Client, broker: &'a Broker, topic: &str, id: &str) -> Self {
        let (tx, events) = channel();
        Group {
            client,
            broker,
            topic: topic.to_owned(),
            id: id.to_owned(),
            members: Vec::new(),
            tx,
            events,
        }
    }

    /// Starts a member named `name` (its client id); returns its index.
    fn join(&mut self, name: &str) -> usize {
        let i = self.members.len();
        let stderr = self.broker.dir().join(format!("{}-{name}.stderr", self.id));
        let mut child = self
            .client
            .script()
            .unwrap()
            .args(["member", self.broker.addr(), &self.topic, &self.id, name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn a member");
        let stdout = child.stdout.take().unwrap();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event =
                    serde_json::from_str(&line).unwrap_or_else(|_| json!({"unparsed": line}));
                if tx.send((i, event)).is_err() {
                    return;
                }
            }
            let _ = tx.send((i, json!({"exited": true})));
        });
        self.members.push(Member {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            stderr,
            assigned: None,
            first_assigned: None,
            gone: false,
        });
        i
    }

    fn apply(&mut self, (i, event): (usize, Value)) {
        let m = &mut self.members[i];
        if let Some(parts) = event["assigned"].as_array() {
            let parts: BTreeSet<i64> = parts.iter().map(|p| p.as_i64().unwrap()).collect();
            if !parts.is_empty() && m.first_assigned.is_none() {
                m.first_assigned = Some(Duration::from_millis(event["ms"].as_u64().unwrap()));
            }
            m.assigned = Some(parts);
        } else if event["closed"] == true || event["exited"] == true {
            m.gone = true;
        }
    }

    /// Whether the latest assignments of `who` are disjoint, none empty,
    /// and cover every partition.
    fn covered_by(&self, who: &[usize]) -> bool {
        let mut seen = BTreeSet::new();
        for &i in who {
            match &self.members[i].assigned {
                Some(a) if !a.is_empty() && !self.members[i].gone => {
                    if a.iter().any(|p| !seen.insert(*p)) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        seen.into_iter().eq(PARTITIONS)
    }

    /// Waits until `who` split every partition among them; how long it
    /// took. Fails after `within` with what each member reported.
    fn await_split(&mut self, who: &[usize], within: Duration, what: &str) -> Duration {
        let start = Instant::now();
        while !self.covered_by(who) {
            let left = (start + within).saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => self.apply(event),
                Err(_) => panic!(
                    "{:?}: {what}: the partitions were not split among {:?} within {within:?}\n{}",
                    self.client,
                    who.iter()
                        .map(|i| &self.members[*i].name)
                        .collect::<Vec<_>>(),
                    self.report()
                ),
            }
        }
        start.elapsed()
    }

    /// What every member reported, its stderr, and the broker's log.
    fn report(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            s.push_str(&format!(
                "member {}: assigned {:?}, gone {}; stderr:\n{}\n",
                m.name,
                m.assigned,
                m.gone,
                tail(&std::fs::read_to_string(&m.stderr).unwrap_or_default())
            ));
        }
        s.push_str(&format!("broker log:\n{}", tail(&self.broker.log())));
        s
    }

    /// Tells member `i` to leave the group, and waits until it has.
    fn close(&mut self, i: usize) {
        if let Some(mut stdin) = self.members[i].stdin.take() {
            let _ = stdin.write_all(b"close\n");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.members[i].child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "member {} exited with {status}\n{}",
                    self.members[i].name,
                    self.report()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {} did not leave within 20 s\n{}",
                self.members[i].name,
                self.report()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.members[i].gone = true;
    }

    /// kill -9 of member `i`: it never leaves, its session runs out.
    fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.child.kill().unwrap();
        m.child.wait().unwrap();
        m.gone = true;
    }

    /// The latest assignment of the member whose client id is `name`.
    fn assigned_to(&self, name: &str) -> Option<Vec<i64>> {
        self.members
            .iter()
            .find(|m| m.name == name && !m.gone)
            .and_then(|m| m.assigned.as_ref())
            .map(|a| a.iter().copied().collect())
    }
}

impl Drop for Group<'_> {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
    }
}

/// Checks DescribeGroups and ListGroups as the client's admin shows them
/// against what the members themselves reported.
fn assert_described(group: &Group<'_>, members: usize) {
    let client = group.client;
    let result = one_shot(
        client.admin().unwrap(),
        group.broker,
        &["describe", &group.topic, &group.id, &members.to_string()],
    );
    let described = &result["group"];
    let state = if members == 0 { "Empty" } else { "Stable" };
    assert_eq!(
        described["state"], state,
        "{client:?}: DescribeGroups state: {result}"
    );
    assert_eq!(
        described["protocol_type"], "consumer",
        "{client:?}: DescribeGroups protocol type: {result}"
    );
    let listed = described["members"].as_array().unwrap();
    assert_eq!(
        listed.len(),
        members,
        "{client:?}: DescribeGroups members: {result}"
    );
    if members > 0 {
        assert!(
            ["range", "roundrobin", "RoundRobinAssigner"]
                .contains(&described["protocol"].as_str().unwrap_or_default()),
            "{client:?}: DescribeGroups protocol of a stable group: {result}"
        );
    }
    for m in listed {
        let name = m["client_id"].as_str().unwrap();
        let reported = group.assigned_to(name).unwrap_or_else(|| {
            panic!("{client:?}: DescribeGroups lists {name}, which is not a live member: {result}")
        });
        let shown: Vec<i64> = m["assigned"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_i64().unwrap())
            .collect();
        assert_eq!(
            shown, reported,
            "{client:?}: DescribeGroups shows {name}'s assignment unlike {name} itself: {result}"
        );
        assert_eq!(m["client_host"], "/127.0.0.1", "{result}");
        assert!(
            m["member_id"]
                .as_str()
                .is_some_and(|id| id.starts_with(name)),
            "{client:?}: a member id is the client id and a UUID: {result}"
        );
    }
    let found = result["listed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group_id"] == group.id.as_str())
        .unwrap_or_else(|| {
            panic!(
                "{client:?}: ListGroups does not list {}: {result}",
                group.id
            )
        });
    assert_eq!(found["protocol_type"], "consumer", "{result}");
    // kafkajs's listGroups speaks ListGroups v2, which has no state.
    if !found["state"].is_null() {
        assert_eq!(
            found["state"], state,
            "{client:?}: ListGroups state: {result}"
        );
    }
}

/// Three members split the partitions; one leaves, one is killed, and the
/// rest take over; the admin client sees each step.
fn members_split_and_take_over(client: Client) {
    if client.script().is_none() || client.admin().is_none() {
        return;
    }
    let broker = Broker::start(&[]);
    let topic = "orders";
    one_shot(client.script().unwrap(), &broker, &["produce", topic, "3"]);
    let mut group = Group::new(client, &broker, topic, "billing");

    let a = group.join("member-a");
    group.await_split(&[a], Duration::from_secs(15), "a lone member");
    let first = group.members[a].first_assigned.unwrap();
    assert!(
        first <= FIRST_ASSIGNMENT,
        "{client:?}: the first member got its assignment {first:?} after subscribe(), \
         more than {FIRST_ASSIGNMENT:?}: the join stalled\n{}",
        group.report()
    );

    let b = group.join("member-b");
    let c = group.join("member-c");
    group.await_split(&[a, b, c], Duration::from_secs(30), "three members");
    assert_described(&group, 3);

    group.close(c);
    let took = group.await_split(
        &[a, b],
        SESSION_TIMEOUT,
        "two members after the third left (LeaveGroup)",
    );
    eprintln!("{client:?}: takeover after a leave: {took:?}");

    group.kill(b);
    // The killed member is noticed when its session runs out; the survivor
    // then rejoins on its next heartbeat.
    let took = group.await_split(
        &[a],
        SESSION_TIMEOUT + Duration::from_secs(6),
        "one member after the second was killed (kill -9)",
    );
    eprintln!("{client:?}: takeover after a kill -9: {took:?}");
    assert_described(&group, 1);

    group.close(a);
    assert_described(&group, 0);
    broker.assert_quiet();
}

/// A consumer that commits what it processed, stops and restarts reads
/// every record exactly once; one that commits an offset in the middle of
/// what it read restarts exactly there.
fn resumes_at_committed_offsets(client: Client) {
    if client.script().is_none() {
        return;
    }
    let broker = Broker::start(&[]);
    let topic = "ledger";
    let consume = |group: &str, take: usize, commit: &str, extra_ms: u64| {
        one_shot(
            client.script().unwrap(),
            &broker,
            &[
                "consume",
                topic,
                group,
                &take.to_string(),
                commit,
                &extra_ms.to_string(),
            ],
        )
    };
    one_shot(client.script().unwrap(), &broker, &["produce", topic, "10"]);
    let everything: Vec<Record> = PARTITIONS
        .iter()
        .flat_map(|p| produced(*p, 0..10))
        .collect();

    // Commit what was processed, stop, restart.
    let first = consume("resume", 12, "processed", 0);
    let first_read = records(&first["read"]);
    let mut next: BTreeMap<i64, i64> = BTreeMap::new();
    for (p, o, _) in &first_read {
        next.insert(*p, o + 1);
    }
    assert_eq!(
        offsets(&first["committed"]),
        next,
        "{client:?}: the offsets committed after 12 records: {first}"
    );
    assert_eq!(
        fetch_offsets(client, &broker, topic, "resume"),
        next,
        "{client:?}: OffsetFetch after the first run"
    );
    let second = consume("resume", 18, "none", 1_500);
    let second_read = records(&second["read"]);
    for p in PARTITIONS {
        let resumed_at = second_read.iter().find(|r| r.0 == p).map(|r| r.1);
        let committed = next.get(&p).copied().unwrap_or(0);
        if committed < 10 {
            assert_eq!(
                resumed_at,
                Some(committed),
                "{client:?}: partition {p} resumed elsewhere than at its committed offset: {second}"
            );
        }
    }
    let mut all = first_read;
    all.extend(second_read);
    all.extend(records(&second["extra"]));
    all.sort();
    assert_eq!(
        all, everything,
        "{client:?}: across the stop, every record must be read exactly once"
    );

    // Read everything, commit offsets inside what was read, restart.
    let marks = BTreeMap::from([(0, 4), (1, 7), (2, 2)]);
    let third = consume("mid-batch", 30, "0:4,1:7,2:2", 0);
    assert_eq!(records(&third["read"]).len(), 30);
    assert_eq!(
        offsets(&third["committed"]),
        marks,
        "{client:?}: the commit in the middle of the batch: {third}"
    );
    let fourth = consume("mid-batch", 17, "none", 1_500);
    let fourth_read = records(&fourth["read"]);
    for (p, mark) in &marks {
        assert_eq!(
            fourth_read.iter().find(|r| r.0 == *p).map(|r| r.1),
            Some(*mark),
            "{client:?}: after committing {mark} on partition {p}, the first record read there: {fourth}"
        );
    }
    let mut after: Vec<Record> = fourth_read;
    after.extend(records(&fourth["extra"]));
    after.sort();
    let want: Vec<Record> = marks
        .iter()
        .flat_map(|(p, m)| produced(*p, *m..10))
        .collect();
    assert_eq!(
        after, want,
        "{client:?}: the restart reads from each committed offset to the end, once"
    );
    broker.assert_quiet();
}

#[test]
fn confluent_kafka_members_split_partitions_and_take_over() {
    members_split_and_take_over(Client::ConfluentKafka);
}

#[test]
fn kafka_python_members_join_promptly_split_partitions_and_take_over() {
    members_split_and_take_over(Client::KafkaPython);
}

#[test]
fn kafkajs_members_split_partitions_and_take_over() {
    members_split_and_take_over(Client::Kafkajs);
}

#[test]
fn confluent_kafka_resumes_at_committed_offsets() {
    resumes_at_committed_offsets(Client::ConfluentKafka);
}

#[test]
fn kafka_python_resumes_at_committed_offsets() {
    resumes_at_committed_offsets(Client::KafkaPython);
}

#[test]
fn kafkajs_resumes_at_committed_offsets() {
    resumes_at_committed_offsets(Client::Kafkajs);
}

/// kcat's balanced consumer (`-G`): one run reads to the end and commits
/// on close; the next run of the group reads only what came since.
#[test]
fn kcat_balanced_consumer_consumes_and_commits() {
    if common::require_tool("kcat").is_none() || Client::KafkaPython.admin().is_none() {
        return;
    }
    let broker = Broker::start(&["--default-partitions", "3"]);
    let topic = "clicks";
    let produce = |offsets: std::ops::Range<i64>| {
        for p in PARTITIONS {
            let input: String = produced(p, offsets.clone())
                .into_iter()
                .map(|(_, _, v)| v + "\n")
                .collect();
            let out = common::run(
                common::kcat().args(["-b", broker.addr(), "-P", "-t", topic, "-p", &p.to_string()]),
                input.as_bytes(),
                CLIENT_TIMEOUT,
            );
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "kcat -P -p {p}: {}",
                out.stderr
            );
        }
    };
    let consume = || {
        let out = run(common::kcat().args([
            "-b",
            broker.addr(),
            "-G",
            "dashboard",
            topic,
            // Not `-o beginning`: kcat would start every assigned partition
            // there, whatever the group committed.
            "-X",
            "auto.offset.reset=earliest",
            "-e",
            "-f",
            "%p %o %s\\n",
            "-X",
            "session.timeout.ms=6000",
        ]));
        out.assert_success("kcat -G", &broker);
        let mut read: Vec<Record> = out
            .stdout
            .lines()
            .map(|l| {
                let mut f = l.splitn(3, ' ');
                (
                    f.next().unwrap().parse().unwrap(),
                    f.next().unwrap().parse().unwrap(),
                    f.next().unwrap().to_owned(),
                )
            })
            .collect();
        read.sort();
        read
    };
    let committed = || {
        offsets(
            &one_shot(
                Client::KafkaPython.admin().unwrap(),
                &broker,
                &["offsets", topic, "dashboard"],
            )["committed"],
        )
    };

    produce(0..4);
    let want: Vec<Record> = PARTITIONS.iter().flat_map(|p| produced(*p, 0..4)).collect();
    assert_eq!(consume(), want, "the first kcat -G run reads everything");
    assert_eq!(
        committed(),
        BTreeMap::from([(0, 4), (1, 4), (2, 4)]),
        "kcat -G commits the offsets it consumed (OffsetFetch by kafka-python's admin)"
    );

    produce(4..6);
    let want: Vec<Record> = PARTITIONS.iter().flat_map(|p| produced(*p, 4..6)).collect();
    assert_eq!(
        consume(),
        want,
        "the second kcat -G run of the group reads only the new records"
    );
    assert_eq!(committed(), BTreeMap::from([(0, 6), (1, 6), (2, 6)]));
    broker.assert_quiet();
}

/// Offsets acknowledged by a synchronous commit survive a kill -9 of the
/// broker: committed() and the admin's OffsetFetch return them after the
/// restart, and the group resumes there.
#[test]
fn confluent_kafka_commits_survive_kill_9_of_the_broker() {
    let client = Client::ConfluentKafka;
    if client.script().is_none() {
        return;
    }
    let mut broker = Broker::start(&[]);
    let topic = "payments";
    one_shot(client.script().unwrap(), &broker, &["produce", topic, "10"]);
    let marks = BTreeMap::from([(0, 3), (1, 6), (2, 9)]);
    let committed = one_shot(
        client.script().unwrap(),
        &broker,
        &["consume", topic, "settle", "30", "0:3,1:6,2:9", "0"],
    );
    assert_eq!(
        offsets(&committed["committed"]),
        marks,
        "commit(asynchronous=False) acknowledged: {committed}"
    );

    broker.kill9();
    broker.restart();

    assert_eq!(
        fetch_offsets(client, &broker, topic, "settle"),
        marks,
        "confluent-kafka committed() after the broker's kill -9"
    );
    assert_eq!(
        fetch_offsets(Client::KafkaPython, &broker, topic, "settle"),
        marks,
        "kafka-python's admin list_group_offsets after the broker's kill -9"
    );
    let resumed = one_shot(
        client.script().unwrap(),
        &broker,
        &["consume", topic, "settle", "12", "none", "1500"],
    );
    let mut read = records(&resumed["read"]);
    read.extend(records(&resumed["extra"]));
    read.sort();
    let want: Vec<Record> = marks
        .iter()
        .flat_map(|(p, m)| produced(*p, *m..10))
        .collect();
    assert_eq!(
        read, want,
        "the group resumes at the offsets committed before the kill -9"
    );
    broker.assert_quiet();
}
