//! The demo's pipeline, through the Kafka protocol with librdkafka (the
//! `rdkafka` crate): a producer that also reports what it sent (the
//! `produced` tier) and loses a few records on purpose, consumer groups
//! scripted to show each status tally judges, and a mirror that copies
//! `orders` to a second cluster, losing, duplicating and delaying a few
//! records on purpose.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tally_audit::emitter::{Emitter, EmitterConfig};
use tally_audit::{BucketWidth, CountEntry, Tier, TierKind};
use tracing::{debug, warn};

/// A topic of the demo.
struct TopicPlan {
    name: &'static str,
    partitions: i32,
    /// Records per second per partition.
    rate: u32,
    configs: &'static [(&'static str, &'static str)],
    /// One record in this many is counted by the producer but never sent.
    lose_one_in: Option<u64>,
}

const TOPICS: [TopicPlan; 3] = [
    TopicPlan {
        name: "orders",
        partitions: 3,
        rate: 30,
        configs: &[],
        lose_one_in: None,
    },
    TopicPlan {
        name: "payments",
        partitions: 2,
        rate: 20,
        configs: &[],
        lose_one_in: Some(150),
    },
    TopicPlan {
        name: "clicks",
        partitions: 2,
        rate: 40,
        // Short retention: what a slow group has not read by then expires.
        configs: &[("retention.ms", "20000"), ("segment.bytes", "16384")],
        lose_one_in: None,
    },
];

/// How a group consumes.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Keeps up.
    Healthy,
    /// Reads this share of what is produced.
    Slow(f64),
    /// Keeps up until `at` seconds, then commits the same offsets forever.
    StallAfter(u64),
    /// Keeps up until `at` seconds, then stops committing.
    StopAfter(u64),
    /// Every `every` seconds goes back `by` records and commits there; reads
    /// at 1.5 × the production rate, so that climbing back past where it was
    /// takes a while and the agent's `rewind` lasts long enough to be seen.
    Rewinds { every: u64, by: i64 },
    /// Joins at `at` seconds, at the end of the log.
    JoinsAt(u64),
    /// Reads 30 % for `slow` seconds, then everything, again and again.
    Bursty { slow: u64 },
}

struct GroupPlan {
    name: &'static str,
    topic: &'static str,
    behaviour: Behaviour,
    /// Also report what it processed, client-side, as `consumer:<name>`,
    /// counting a few records twice.
    reports_as: Option<&'static str>,
}

const GROUPS: [GroupPlan; 8] = [
    GroupPlan {
        name: "billing",
        topic: "orders",
        behaviour: Behaviour::Healthy,
        reports_as: Some("etl"),
    },
    GroupPlan {
        name: "analytics",
        topic: "orders",
        behaviour: Behaviour::Slow(0.7),
        reports_as: None,
    },
    GroupPlan {
        name: "legacy-export",
        topic: "orders",
        behaviour: Behaviour::StopAfter(20),
        reports_as: None,
    },
    GroupPlan {
        name: "late-joiner",
        topic: "orders",
        behaviour: Behaviour::JoinsAt(25),
        reports_as: None,
    },
    GroupPlan {
        name: "fraud-check",
        topic: "payments",
        behaviour: Behaviour::StallAfter(15),
        reports_as: None,
    },
    GroupPlan {
        name: "reporting",
        topic: "payments",
        behaviour: Behaviour::Bursty { slow: 40 },
        reports_as: None,
    },
    GroupPlan {
        name: "archiver",
        topic: "clicks",
        behaviour: Behaviour::Slow(0.3),
        reports_as: None,
    },
    GroupPlan {
        name: "replay",
        topic: "clicks",
        behaviour: Behaviour::Rewinds { every: 30, by: 400 },
        reports_as: None,
    },
];

/// The topic the demo's mirror copies, and its name in the second cluster
/// (MirrorMaker 2's naming: `<source cluster>.<topic>`).
pub(crate) const MIRRORED: &str = "orders";
pub(crate) const MIRROR_COPY: &str = "local.orders";

/// The running workload.
pub(crate) struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    reporter: Emitter,
}

fn now_ms() -> i64 {
    tally_agent::service::now_ms()
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("client.id", "tally-demo");
    c
}

/// Cumulative counts by (tier, topic, partition, bucket), handed to an
/// emitter when they change.
#[derive(Default)]
struct Tallies {
    counts: HashMap<(Tier, String, i32, i64), u64>,
    changed: Vec<(Tier, String, i32, i64)>,
}

impl Tallies {
    fn add(&mut self, tier: &Tier, topic: &str, partition: i32, bucket: i64, n: u64) {
        let key = (tier.clone(), topic.to_owned(), partition, bucket);
        *self.counts.entry(key.clone()).or_default() += n;
        self.changed.push(key);
    }

    fn flush(&mut self, width: BucketWidth, emitter: &Emitter) {
        let mut keys = std::mem::take(&mut self.changed);
        keys.sort();
        keys.dedup();
        emitter.record_counts(keys.into_iter().map(|k| {
            let counts = tally_audit::CellCounts {
                records: self.counts[&k],
                ..Default::default()
            };
            CountEntry {
                bucket: width.bucket_of(k.3),
                tier: k.0,
                topic: k.1,
                partition: k.2,
                counts,
            }
        }));
    }
}

/// Creates the topics, then starts the producer, every group and the
/// mirror to `replica` (the second cluster's bootstrap).
pub(crate) async fn start(
    bootstrap: &str,
    replica: &str,
    agent_url: &str,
    width: BucketWidth,
) -> anyhow::Result<Workload> {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap)
        .create()
        .context("cannot create the admin client")?;
    let topics: Vec<NewTopic<'_>> = TOPICS
        .iter()
        .map(|t| {
            t.configs.iter().fold(
                NewTopic::new(t.name, t.partitions, TopicReplication::Fixed(1)),
                |n, (k, v)| n.set(k, v),
            )
        })
        .collect();
    let results = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("cannot create the demo topics")?;
    let replica_admin: AdminClient<DefaultClientContext> = client(replica)
        .create()
        .context("cannot create the admin client of the second cluster")?;
    let copy_partitions = TOPICS
        .iter()
        .find(|t| t.name == MIRRORED)
        .map_or(1, |t| t.partitions);
    let copies = replica_admin
        .create_topics(
            &[NewTopic::new(
                MIRROR_COPY,
                copy_partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("cannot create the mirror's topic")?;
    for r in results.into_iter().chain(copies) {
        if let Err((topic, e)) = r
            && e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            anyhow::bail!("cannot create topic \"{topic}\": {e}");
        }
    }
    let mut rc = EmitterConfig::new(
        agent_url.to_owned(),
        "demo-clients".to_owned(),
        "local".to_owned(),
        vec![TierKind::Produced, TierKind::Consumer],
        width,
    );
    rc.flush_interval = Duration::from_millis(500);
    let reporter = Emitter::start(rc);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    {
        let (stop, reporter, bootstrap) = (stop.clone(), reporter.clone(), bootstrap.to_owned());
        threads.push(
            std::thread::Builder::new()
                .name("demo-producer".into())
                .spawn(move || {
                    if let Err(e) = produce(&bootstrap, &reporter, width, &stop) {
                        warn!("demo producer stopped: {e:#}");
                    }
                })?,
        );
    }
    {
        let (stop, bootstrap, replica) = (stop.clone(), bootstrap.to_owned(), replica.to_owned());
        threads.push(
            std::thread::Builder::new()
                .name("demo-mirror".into())
                .spawn(move || {
                    if let Err(e) = mirror(&bootstrap, &replica, width, &stop) {
                        warn!("demo mirror stopped: {e:#}");
                    }
                })?,
        );
    }
    for plan in &GROUPS {
        let (stop, reporter, bootstrap) = (stop.clone(), reporter.clone(), bootstrap.to_owned());
        threads.push(
            std::thread::Builder::new()
                .name(format!("demo-{}", plan.name))
                .spawn(move || {
                    if let Err(e) = consume(&bootstrap, plan, &reporter, width, &stop) {
                        warn!(group = plan.name, "demo consumer stopped: {e:#}");
                    }
                })?,
        );
    }
    Ok(Workload {
        stop,
        threads,
        reporter,
    })
}

impl Workload {
    /// Stops every client (groups leave, the producer flushes) and waits until
    /// the reported counts are acknowledged.
    pub(crate) async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        self.reporter.flush(Duration::from_secs(3)).await;
        self.reporter.shutdown().await;
    }
}

fn produce(
    bootstrap: &str,
    reporter: &Emitter,
    width: BucketWidth,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let producer: BaseProducer = client(bootstrap)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .context("cannot create the producer")?;
    let mut tallies = Tallies::default();
    let mut sent: u64 = 0;
    let mut last_report = Instant::now();
    let tick = Duration::from_millis(100);
    while !stop.load(Ordering::Acquire) {
        let started = Instant::now();
        for t in &TOPICS {
            for p in 0..t.partitions {
                for _ in 0..t.rate / 10 {
                    sent += 1;
                    let ts = now_ms();
                    let bucket = width.bucket_of(ts).start_ms();
                    tallies.add(&Tier::Produced, t.name, p, bucket, 1);
                    if t.lose_one_in.is_some_and(|k| sent.is_multiple_of(k)) {
                        // Counted as produced, never sent: loss in produce.
                        continue;
                    }
                    let key = format!("{}-{sent}", t.name);
                    let value = format!("{{\"n\":{sent},\"topic\":\"{}\",\"at\":{ts}}}", t.name);
                    let record = BaseRecord::to(t.name)
                        .partition(p)
                        .key(&key)
                        .payload(&value)
                        .timestamp(ts);
                    if let Err((e, _)) = producer.send(record) {
                        debug!("demo produce failed: {e}");
                    }
                }
            }
        }
        producer.poll(Duration::ZERO);
        if last_report.elapsed() >= Duration::from_millis(500) {
            tallies.flush(width, reporter);
            last_report = Instant::now();
        }
        std::thread::sleep(tick.saturating_sub(started.elapsed()));
    }
    let _ = producer.flush(Duration::from_secs(3));
    tallies.flush(width, reporter);
    Ok(())
}

/// A record on its way through the mirror.
struct InFlight {
    partition: i32,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    timestamp: i64,
}

/// Copies `orders` from `source` to `local.orders` on `dest` in the same
/// partition with the same timestamp, as MirrorMaker 2 does, in cycles of
/// 12 bucket widths: at 2 widths it loses 3 records (a bucket `incomplete`),
/// at 4 it copies 5 records twice (`excess`), and from 6 to 10 it holds each
/// record back until it is 2.5 widths old, so that the buckets closing then
/// are short while the copy still rises (`pending`) and catch up after
/// (`late`). The rest of the time it keeps up (`complete`).
fn mirror(source: &str, dest: &str, width: BucketWidth, stop: &AtomicBool) -> anyhow::Result<()> {
    let consumer: BaseConsumer = client(source)
        .set("client.id", "tally-demo-mirror")
        .set("group.id", "mirror-replica")
        .set("enable.auto.commit", "true")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create()
        .context("cannot create the mirror's consumer")?;
    consumer
        .subscribe(&[MIRRORED])
        .context("cannot subscribe the mirror")?;
    let producer: BaseProducer = client(dest)
        .set("client.id", "tally-demo-mirror")
        .set("linger.ms", "20")
        .create()
        .context("cannot create the mirror's producer")?;
    let w = i64::try_from(width.ms()).unwrap_or(i64::MAX);
    let cycle = w.saturating_mul(12);
    let started = now_ms();
    let mut queue: VecDeque<InFlight> = VecDeque::new();
    // The cycle whose loss and duplicates were set up, and how many of each
    // are still to come.
    let (mut lost_in, mut doubled_in) = (-1, -1);
    let (mut to_lose, mut to_double) = (0u32, 0u32);
    while !stop.load(Ordering::Acquire) {
        let wait = if queue.is_empty() { 100 } else { 10 };
        let mut first = true;
        while let Some(m) = consumer.poll(Duration::from_millis(if first { wait } else { 0 })) {
            first = false;
            match m {
                Ok(m) => queue.push_back(InFlight {
                    partition: m.partition(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    timestamp: m.timestamp().to_millis().unwrap_or_else(now_ms),
                }),
                Err(e) => debug!("demo mirror: {e}"),
            }
            if queue.len() >= 10_000 {
                break;
            }
        }
        let now = now_ms();
        let (n, phase) = (
            (now - started).div_euclid(cycle),
            (now - started).rem_euclid(cycle),
        );
        if phase >= 2 * w && lost_in != n {
            lost_in = n;
            to_lose = 3;
        }
        if phase >= 4 * w && doubled_in != n {
            doubled_in = n;
            to_double = 5;
        }
        let hold = if (6 * w..10 * w).contains(&phase) {
            w * 5 / 2
        } else {
            0
        };
        while queue.front().is_some_and(|r| r.timestamp <= now - hold) {
            let Some(r) = queue.pop_front() else { break };
            if to_lose > 0 {
                to_lose -= 1;
                continue;
            }
            let times = if to_double > 0 {
                to_double -= 1;
                2
            } else {
                1
            };
            for _ in 0..times {
                let mut record = BaseRecord::<[u8], [u8]>::to(MIRROR_COPY)
                    .partition(r.partition)
                    .timestamp(r.timestamp);
                if let Some(k) = &r.key {
                    record = record.key(k.as_slice());
                }
                if let Some(p) = &r.payload {
                    record = record.payload(p.as_slice());
                }
                if let Err((e, _)) = producer.send(record) {
                    debug!("demo mirror produce failed: {e}");
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    let _ = producer.flush(Duration::from_secs(3));
    Ok(())
}

fn consume(
    bootstrap: &str,
    plan: &GroupPlan,
    reporter: &Emitter,
    width: BucketWidth,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let secs = || started.elapsed().as_secs();
    let late_start = match plan.behaviour {
        Behaviour::JoinsAt(at) => Some(at),
        _ => None,
    };
    if let Some(at) = late_start {
        while secs() < at {
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // A client id per group, as applications have: the broker ties a fetch
    // to its group by client id and host, and where groups share both it
    // cannot tell where a group started reading.
    let consumer: BaseConsumer = client(bootstrap)
        .set("client.id", format!("tally-demo-{}", plan.name))
        .set("group.id", plan.name)
        .set("enable.auto.commit", "false")
        .set(
            "auto.offset.reset",
            if late_start.is_some() {
                "latest"
            } else {
                "earliest"
            },
        )
        .set("session.timeout.ms", "10000")
        .set("enable.partition.eof", "false")
        .create()
        .context("cannot create the consumer")?;
    consumer
        .subscribe(&[plan.topic])
        .context("cannot subscribe")?;
    let rate: u32 = TOPICS
        .iter()
        .find(|t| t.name == plan.topic)
        .map_or(10, |t| t.rate * t.partitions as u32);
    let reported_tier = plan.reports_as.map(|n| Tier::Consumer(n.to_owned()));
    let mut tallies = Tallies::default();
    let mut processed: u64 = 0;
    let mut budget = 0.0f64;
    let mut last_tick = Instant::now();
    let mut last_commit = Instant::now();
    let mut paused = false;
    let mut slow_until = 0u64;
    let mut last_rewind = 0u64;
    while !stop.load(Ordering::Acquire) {
        let now = secs();
        let dt = last_tick.elapsed().as_secs_f64();
        last_tick = Instant::now();
        // How much this group may read now.
        let share = match plan.behaviour {
            Behaviour::Slow(s) => Some(s),
            Behaviour::Rewinds { .. } => Some(1.5),
            Behaviour::Bursty { slow } => {
                if slow_until == 0 {
                    slow_until = now + slow;
                }
                if now < slow_until {
                    Some(0.3)
                } else {
                    let caught_up = lag_of(&consumer) == Some(0);
                    if caught_up && now > slow_until + 5 {
                        slow_until = now + slow;
                    }
                    None
                }
            }
            _ => None,
        };
        let frozen = match plan.behaviour {
            Behaviour::StallAfter(at) | Behaviour::StopAfter(at) => now >= at,
            _ => false,
        };
        if frozen && !paused {
            if let Ok(assigned) = consumer.assignment() {
                let _ = consumer.pause(&assigned);
            }
            paused = true;
        }
        if let Behaviour::Rewinds { every, by } = plan.behaviour
            && now >= last_rewind + every
            && now > 0
        {
            last_rewind = now;
            rewind(&consumer, by);
        }
        if let Some(s) = share {
            budget = (budget + dt * rate as f64 * s).min(rate as f64);
        }
        let may_read = share.is_none() || budget >= 1.0;
        if may_read && !frozen {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                budget -= 1.0;
                processed += 1;
                if let (Some(tier), Some(ts)) = (&reported_tier, m.timestamp().to_millis()) {
                    // A few records processed twice: duplicates downstream.
                    let twice = m.partition() == 0 && processed.is_multiple_of(400);
                    let bucket = width.bucket_of(ts).start_ms();
                    tallies.add(tier, m.topic(), m.partition(), bucket, 1 + u64::from(twice));
                }
            }
        } else if frozen {
            // Paused: polling reads nothing and keeps the membership alive.
            let _ = consumer.poll(Duration::from_millis(50));
        } else {
            // Out of budget: a poll would read, so wait instead.
            std::thread::sleep(Duration::from_millis(20));
        }
        if last_commit.elapsed() >= Duration::from_millis(1000) {
            last_commit = Instant::now();
            let stopped = matches!(plan.behaviour, Behaviour::StopAfter(at) if now >= at);
            if !stopped {
                commit_positions(&consumer);
            }
            if reported_tier.is_some() {
                tallies.flush(width, reporter);
            }
        }
    }
    if !matches!(plan.behaviour, Behaviour::StopAfter(_)) {
        commit_positions(&consumer);
    }
    if reported_tier.is_some() {
        tallies.flush(width, reporter);
    }
    Ok(())
}

/// Commits where the consumer stands (the same offsets again when it reads
/// nothing: that is how a stall looks).
fn commit_positions(consumer: &BaseConsumer) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    for e in positions.elements() {
        if let Offset::Offset(o) = e.offset() {
            let _ = tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o));
        } else if let Ok(Some(o)) = committed_offset(consumer, e.topic(), e.partition()) {
            let _ = tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o));
        }
    }
    if tpl.count() > 0 {
        let _ = consumer.commit(&tpl, CommitMode::Async);
    }
}

fn committed_offset(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
) -> anyhow::Result<Option<i64>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(1))?;
    Ok(committed.elements().first().and_then(|e| match e.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }))
}

/// Goes back `by` records on every assigned partition and commits there.
fn rewind(consumer: &BaseConsumer, by: i64) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    for e in positions.elements() {
        if let Offset::Offset(o) = e.offset() {
            let back = (o - by).max(0);
            if consumer
                .seek(
                    e.topic(),
                    e.partition(),
                    Offset::Offset(back),
                    Duration::from_secs(1),
                )
                .is_ok()
            {
                let _ = tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(back));
            }
        }
    }
    if tpl.count() > 0 {
        let _ = consumer.commit(&tpl, CommitMode::Async);
    }
}

/// Records the consumer has not read yet on its assigned partitions.
fn lag_of(consumer: &BaseConsumer) -> Option<i64> {
    let positions = consumer.position().ok()?;
    let mut lag = 0;
    for e in positions.elements() {
        let (_, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), Duration::from_millis(500))
            .ok()?;
        if let Offset::Offset(o) = e.offset() {
            lag += (high - o).max(0);
        }
    }
    Some(lag)
}
