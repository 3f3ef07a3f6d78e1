//! The emitter against a small in-test agent: a WebSocket server on 127.0.0.1
//! that checks every message with the real decoder and answers like the agent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tally_audit::emitter::{Emitter, EmitterConfig};
use tally_audit::wire::LATENCY_BOUNDS_MS;
use tally_audit::wire::{Limits, decode};
use tally_audit::{
    BucketWidth, CountEntry, LagSample, LatencyHistogram, Message, Reply, Tier, TierKind,
};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const WIDTH_MS: u64 = 1_000;
const LONG: Duration = Duration::from_secs(5);

fn width() -> BucketWidth {
    BucketWidth::new(WIDTH_MS).expect("valid width")
}

/// What the test agent does with one `counts` or `lag` message.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Ack,
    Refuse,
    /// Drop the connection without answering.
    Close,
    /// Send replies that are not replies, then the ack.
    GarbageThenAck,
}

/// Decides the action from (connection index, index of the message within
/// the connection, the message).
type Script = Arc<dyn Fn(usize, usize, &Value) -> Action + Send + Sync>;

#[derive(Clone, Debug, PartialEq)]
enum Event {
    Received(Value),
    WelcomeSent,
}

#[derive(Default)]
struct Connection {
    authorization: Option<String>,
    events: Vec<Event>,
}

impl Connection {
    fn received(&self) -> impl Iterator<Item = &Value> {
        self.events.iter().filter_map(|e| match e {
            Event::Received(v) => Some(v),
            Event::WelcomeSent => None,
        })
    }
}

type CountKey = (String, String, i64, i64);

#[derive(Default)]
struct Books {
    connections: Vec<Connection>,
    /// What the agent applied: the last value per key, with the seq it came in.
    latest: HashMap<CountKey, (u64, u64)>,
}

struct TestAgent {
    addr: SocketAddr,
    books: Arc<Mutex<Books>>,
    kick: Arc<Notify>,
}

struct AgentOptions {
    width_ms: u64,
    welcome_delay: Duration,
    /// The `accept_from_ms` and `accept_to_ms` the welcome carries.
    accept: Option<(i64, i64)>,
    script: Script,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            width_ms: WIDTH_MS,
            welcome_delay: Duration::ZERO,
            accept: None,
            script: Arc::new(|_, _, _| Action::Ack),
        }
    }
}

impl TestAgent {
    async fn start(options: AgentOptions) -> TestAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        TestAgent::serve(listener, options)
    }

    async fn start_on(addr: SocketAddr, options: AgentOptions) -> TestAgent {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the reserved port");
        TestAgent::serve(listener, options)
    }

    fn serve(listener: TcpListener, options: AgentOptions) -> TestAgent {
        let addr = listener.local_addr().expect("local addr");
        let books = Arc::new(Mutex::new(Books::default()));
        let kick = Arc::new(Notify::new());
        let options = Arc::new(options);
        let (b, k) = (Arc::clone(&books), Arc::clone(&kick));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(
                    stream,
                    Arc::clone(&b),
                    Arc::clone(&k),
                    Arc::clone(&options),
                ));
            }
        });
        TestAgent { addr, books, kick }
    }

    fn url(&self) -> String {
        format!("ws://{}/api/v1/ingest", self.addr)
    }

    fn connections(&self) -> usize {
        self.books.lock().expect("books").connections.len()
    }

    /// Every `counts` entry received on connection `conn`, with its message's seq.
    fn counts_on(&self, conn: usize) -> Vec<(u64, Value)> {
        let books = self.books.lock().expect("books");
        books
            .connections
            .get(conn)
            .map(|c| {
                c.received()
                    .filter(|v| v["type"] == "counts")
                    .flat_map(|v| {
                        let seq = v["seq"].as_u64().expect("seq");
                        v["counts"]
                            .as_array()
                            .expect("counts")
                            .iter()
                            .map(move |e| (seq, e.clone()))
                            .collect::<Vec<_>>()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn all_counts(&self) -> Vec<(u64, Value)> {
        (0..self.connections())
            .flat_map(|c| self.counts_on(c))
            .collect()
    }

    fn lag_on(&self, conn: usize) -> Vec<Value> {
        let books = self.books.lock().expect("books");
        books.connections[conn]
            .received()
            .filter(|v| v["type"] == "lag")
            .cloned()
            .collect()
    }

    fn latency_on(&self, conn: usize) -> Vec<Value> {
        let books = self.books.lock().expect("books");
        books.connections[conn]
            .received()
            .filter(|v| v["type"] == "latency")
            .cloned()
            .collect()
    }

    fn latest(&self, topic: &str, partition: i64, bucket: i64) -> Option<u64> {
        let books = self.books.lock().expect("books");
        books
            .latest
            .get(&("broker".into(), topic.into(), partition, bucket))
            .map(|(_, records)| *records)
    }

    fn kick(&self) {
        self.kick.notify_waiters();
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    books: Arc<Mutex<Books>>,
    kick: Arc<Notify>,
    options: Arc<AgentOptions>,
) {
    let authorization = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&authorization);
    // The error type is tungstenite's, fixed by its callback trait.
    #[allow(clippy::result_large_err)]
    let capture = move |req: &Request, resp: Response| {
        *seen.lock().expect("auth") = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, capture).await else {
        return;
    };
    let conn = {
        let mut b = books.lock().expect("books");
        b.connections.push(Connection {
            authorization: authorization.lock().expect("auth").clone(),
            events: Vec::new(),
        });
        b.connections.len() - 1
    };
    let limits = Limits::new(BucketWidth::new(options.width_ms).expect("width"));
    let (mut tx, mut rx) = ws.split();
    let mut welcome_at: Option<Instant> = None;
    let mut nth = 0;
    let kicked = kick.notified();
    tokio::pin!(kicked);
    loop {
        let far = Instant::now() + Duration::from_secs(3600);
        let frame = tokio::select! {
            () = &mut kicked => return,
            () = tokio::time::sleep_until(welcome_at.unwrap_or(far)), if welcome_at.is_some() => {
                welcome_at = None;
                books.lock().expect("books").connections[conn].events.push(Event::WelcomeSent);
                let welcome = Reply::Welcome {
                    bucket_width_ms: options.width_ms,
                    accept_from_ms: options.accept.map(|a| a.0),
                    accept_to_ms: options.accept.map(|a| a.1),
                }
                .to_json();
                if tx.send(Frame::text(welcome)).await.is_err() {
                    return;
                }
                continue;
            }
            frame = rx.next() => frame,
        };
        let text = match frame {
            Some(Ok(Frame::Text(t))) => t.to_string(),
            Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
            _ => return,
        };
        let value: Value = serde_json::from_str(&text).expect("the emitter sends JSON");
        books.lock().expect("books").connections[conn]
            .events
            .push(Event::Received(value.clone()));
        let message = match decode(text.as_bytes(), &limits) {
            Ok(m) => m,
            Err(refused) => {
                let _ = tx.send(Frame::text(refused.reply().to_json())).await;
                continue;
            }
        };
        let seq = match &message {
            Message::Hello(_) => {
                welcome_at = Some(Instant::now() + options.welcome_delay);
                continue;
            }
            other => other.seq().expect("seq"),
        };
        let action = (options.script)(conn, nth, &value);
        nth += 1;
        let reply = match action {
            Action::Close => return,
            Action::Refuse => Reply::Error {
                seq: Some(seq),
                error: "refused by the test".into(),
                reason: Some("cardinality".into()),
            },
            Action::Ack | Action::GarbageThenAck => {
                if let Message::Counts(c) = &message {
                    let mut b = books.lock().expect("books");
                    for e in &c.counts {
                        let key = (
                            e.tier.to_string(),
                            e.topic.clone(),
                            i64::from(e.partition),
                            e.bucket.start_ms(),
                        );
                        let slot = b.latest.entry(key).or_insert((0, 0));
                        if seq >= slot.0 {
                            *slot = (seq, e.counts.records);
                        }
                    }
                }
                Reply::Ack { seq }
            }
        };
        if action == Action::GarbageThenAck {
            for junk in [
                Frame::text("not json at all"),
                Frame::text(r#"{"type":"ack","seq":987654}"#),
                Frame::text(r#"{"type":"ack","seq":-3}"#),
                Frame::text(r#"{"type":"welcome","bucket_width_ms":5}"#),
                Frame::binary(vec![0xff, 0x00, 0x7b]),
            ] {
                let _ = tx.send(junk).await;
            }
        }
        if tx.send(Frame::text(reply.to_json())).await.is_err() {
            return;
        }
    }
}

fn config(url: &str) -> EmitterConfig {
    let mut cfg = EmitterConfig::new(
        url,
        "broker-test-1",
        "local",
        vec![TierKind::Broker, TierKind::Group],
        width(),
    );
    cfg.flush_interval = Duration::from_millis(50);
    cfg.backoff_min = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(200);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.ack_timeout = Duration::from_secs(3);
    cfg
}

fn count(topic: &str, partition: i32, bucket_index: i64, records: u64) -> CountEntry {
    CountEntry {
        tier: Tier::Broker,
        topic: topic.into(),
        partition,
        bucket: width().bucket_of(bucket_index * WIDTH_MS as i64),
        counts: tally_audit::CellCounts {
            records,
            bytes: records * 10,
            no_timestamp: 0,
            expired: 0,
            skipped: 0,
            ..Default::default()
        },
    }
}

fn lag(partition: i32, lag_records: u64) -> LagSample {
    LagSample {
        group: "billing".into(),
        topic: "orders".into(),
        partition,
        committed: 100,
        end_offset: 100 + lag_records as i64,
        start_offset: 0,
        lag_records,
        lag_seconds: 0.5,
        commit_at_ms: 1_000,
        stable_offset: None,
        estimated: false,
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + LONG;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// A loopback port with nothing listening on it (yet).
async fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test]
async fn hello_comes_first_and_counts_follow_the_welcome() {
    let agent = TestAgent::start(AgentOptions {
        welcome_delay: Duration::from_millis(300),
        ..AgentOptions::default()
    })
    .await;
    let emitter = Emitter::start(config(&agent.url()));
    emitter.record_counts([count("orders", 0, 5, 10), count("orders", 1, 5, 4)]);
    emitter.record_lag(5_000, vec![lag(0, 3)]);
    assert!(emitter.flush(LONG).await, "{:?}", emitter.stats());

    let books = agent.books.lock().expect("books");
    let conn = &books.connections[0];
    assert_eq!(conn.authorization, None);
    let Event::Received(hello) = &conn.events[0] else {
        panic!("the first event is not a received hello: {:?}", conn.events)
    };
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["v"], 1);
    assert_eq!(hello["source"], "broker-test-1");
    assert_eq!(hello["cluster"], "local");
    assert_eq!(hello["bucket_width_ms"], WIDTH_MS);
    assert_eq!(hello["tier_kinds"], serde_json::json!(["broker", "group"]));
    assert_eq!(
        conn.events[1],
        Event::WelcomeSent,
        "something was sent before the welcome"
    );
    let seqs: Vec<u64> = conn.events[2..]
        .iter()
        .map(|e| match e {
            Event::Received(v) => v["seq"].as_u64().expect("seq"),
            Event::WelcomeSent => panic!("a second welcome"),
        })
        .collect();
    assert_eq!(seqs.first(), Some(&1));
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    drop(books);
    assert_eq!(agent.latest("orders", 0, 5000), Some(10));
    assert_eq!(agent.latest("orders", 1, 5000), Some(4));
    assert_eq!(agent.lag_on(0).len(), 1);
    let stats = emitter.stats();
    assert!(stats.connected);
    assert_eq!((stats.connects, stats.buffered), (1, 0));
    assert_eq!(stats.acked_messages, stats.sent_messages);
}

#[tokio::test]
async fn buckets_outside_the_agents_range_are_not_sent() {
    // The range the welcome gives moves with the clock; these buckets are
    // days away from either end of it.
    let agent = TestAgent::start(AgentOptions {
        accept: Some((10_000, 20_000)),
        ..AgentOptions::default()
    })
    .await;
    let emitter = Emitter::start(config(&agent.url()));
    eventually("connected", || emitter.stats().connected).await;
    emitter.record_counts([
        count("orders", 0, 5, 1),
        count("orders", 0, 12, 2),
        count("orders", 0, 18, 3),
        count("orders", 0, 200_000_000, 4),
    ]);
    assert!(emitter.flush(LONG).await, "{:?}", emitter.stats());
    assert_eq!(agent.latest("orders", 0, 5_000), None);
    assert_eq!(agent.latest("orders", 0, 12_000), Some(2));
    assert_eq!(agent.latest("orders", 0, 18_000), Some(3));
    assert_eq!(agent.latest("orders", 0, 200_000_000_000), None);
    let stats = emitter.stats();
    assert_eq!((stats.out_of_range_entries, stats.buffered), (2, 0));
}

#[tokio::test]
async fn only_the_latest_value_of_a_key_is_sent() {
    let agent = TestAgent::start(AgentOptions::default()).await;
    let mut cfg = config(&agent.url());
    // Only flush() sends, so that nothing leaves between the three records.
    cfg.flush_interval = Duration::from_secs(60);
    let emitter = Emitter::start(cfg);
    eventually("connected", || emitter.stats().connected).await;

    emitter.record_count(count("orders", 0, 7, 1));
    emitter.record_count(count("orders", 0, 7, 2));
    emitter.record_count(count("orders", 0, 7, 3));
    assert_eq!(emitter.stats().buffered, 1);
    assert!(emitter.flush(LONG).await);

    let counts = agent.all_counts();
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts[0].1["records"], 3);
    assert_eq!(counts[0].1["bytes"], 30);
    assert_eq!(emitter.stats().sent_messages, 1);
}

#[tokio::test]
async fn unacknowledged_entries_are_resent_after_a_reconnect() {
    // The first connection acks its first counts message, then drops on the second.
    let script: Script = Arc::new(|conn, nth, _| match (conn, nth) {
        (0, 0) => Action::Ack,
        (0, _) => Action::Close,
        _ => Action::Ack,
    });
    let agent = TestAgent::start(AgentOptions {
        script,
        ..AgentOptions::default()
    })
    .await;
    let emitter = Emitter::start(config(&agent.url()));
    emitter.record_count(count("acked", 0, 1, 10));
    assert!(emitter.flush(LONG).await);

    emitter.record_counts([count("orders", 0, 1, 20), count("orders", 1, 2, 30)]);
    assert!(emitter.flush(LONG).await, "{:?}", emitter.stats());

    let first = agent.counts_on(0);
    let second = agent.counts_on(1);
    let topics = |c: &[(u64, Value)]| {
        let mut t: Vec<String> = c
            .iter()
            .map(|(_, e)| format!("{}/{}", e["topic"], e["partition"]))
            .collect();
        t.sort();
        t
    };
    assert_eq!(
        topics(&first),
        ["\"acked\"/0", "\"orders\"/0", "\"orders\"/1"]
    );
    assert_eq!(
        topics(&second),
        ["\"orders\"/0", "\"orders\"/1"],
        "acked entries must not be resent"
    );
    let last_seq_before = first.iter().map(|(s, _)| *s).max().expect("seqs");
    assert!(second.iter().all(|(s, _)| *s > last_seq_before));

    let stats = emitter.stats();
    assert_eq!(stats.connects, 2);
    assert_eq!(stats.resent_entries, 2);
    assert_eq!(stats.buffered, 0);
    assert_eq!(agent.latest("acked", 0, 1000), Some(10));
    assert_eq!(agent.latest("orders", 0, 1000), Some(20));
    assert_eq!(agent.latest("orders", 1, 2000), Some(30));
}

#[tokio::test]
async fn an_agent_that_starts_late_still_gets_everything() {
    let addr = free_port().await;
    let emitter = Emitter::start(config(&format!("ws://{addr}/api/v1/ingest")));
    emitter.record_counts((0..3).map(|p| count("orders", p, 4, 100 + p as u64)));
    emitter.record_lag(4_000, vec![lag(0, 9)]);
    assert!(!emitter.flush(Duration::from_millis(300)).await);
    let stats = emitter.stats();
    assert!(!stats.connected);
    assert_eq!(stats.buffered, 3);
    let why = stats.last_error.expect("a connection error");
    assert!(why.contains(&addr.to_string()), "{why}");

    let agent = TestAgent::start_on(addr, AgentOptions::default()).await;
    assert!(emitter.flush(LONG).await, "{:?}", emitter.stats());
    for p in 0..3 {
        assert_eq!(
            agent.latest("orders", i64::from(p), 4000),
            Some(100 + p as u64)
        );
    }
    assert_eq!(agent.lag_on(0).len(), 1);
    assert_eq!(emitter.stats().connects, 1);
}

#[tokio::test]
async fn refused_messages_are_counted_and_not_retried() {
    let script: Script = Arc::new(|_, nth, _| {
        if nth == 0 {
            Action::Refuse
        } else {
            Action::Ack
        }
    });
    let agent = TestAgent::start(AgentOptions {
        script,
        ..AgentOptions::default()
    })
    .await;
    let emitter = Emitter::start(config(&agent.url()));
    emitter.record_counts([count("refused", 0, 1, 5), count("refused", 1, 1, 6)]);
    assert!(emitter.flush(LONG).await);
    let stats = emitter.stats();
    assert_eq!(stats.error_replies, 1);
    assert_eq!(stats.refused_entries, 2);
    assert_eq!(stats.buffered, 0);
    let why = stats.last_error.expect("the refusal");
    assert!(why.contains("cardinality"), "{why}");

    emitter.record_count(count("fine", 0, 1, 7));
    assert!(emitter.flush(LONG).await);
    // Several flush intervals: a retry would have happened by now.
    sleep(Duration::from_millis(300)).await;
    let refused = agent
        .all_counts()
        .iter()
        .filter(|(_, e)| e["topic"] == "refused")
        .count();
    assert_eq!(refused, 2, "refused entries were sent again");
    assert_eq!(agent.latest("refused", 0, 1000), None);
    assert_eq!(agent.latest("fine", 0, 1000), Some(7));
    assert_eq!(emitter.stats().connects, 1);
}

#[tokio::test]
async fn invalid_entries_are_kept_out_of_the_batch() {
    let agent = TestAgent::start(AgentOptions::default()).await;
    let emitter = Emitter::start(config(&agent.url()));
    let mut unaligned = count("orders", 0, 0, 1);
    unaligned.bucket = BucketWidth::new(1_500).expect("width").bucket_of(1_500);
    let bad_topic = count("no spaces allowed", 0, 1, 1);
    let mut bad_lag = lag(0, 1);
    bad_lag.lag_seconds = f64::NAN;
    emitter.record_counts([unaligned, bad_topic, count("orders", 2, 3, 42)]);
    emitter.record_lag(3_000, vec![bad_lag, lag(1, 2)]);
    assert!(emitter.flush(LONG).await);

    let stats = emitter.stats();
    assert_eq!(stats.invalid_entries, 3);
    assert_eq!((stats.error_replies, stats.refused_entries), (0, 0));
    let counts = agent.all_counts();
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(agent.latest("orders", 2, 3000), Some(42));
    let lag = agent.lag_on(0);
    assert_eq!(lag.len(), 1);
    assert_eq!(
        lag[0]["partitions"].as_array().expect("partitions").len(),
        1
    );
}

#[tokio::test]
async fn overflow_drops_the_oldest_buckets_first() {
    let addr = free_port().await;
    let mut cfg = config(&format!("ws://{addr}/api/v1/ingest"));
    cfg.max_pending = 5;
    let emitter = Emitter::start(cfg);
    for bucket in [4, 0, 7, 2, 6, 1, 5, 3] {
        emitter.record_count(count("orders", 0, bucket, 10 + bucket as u64));
    }
    // Updating a held key takes no extra room.
    emitter.record_count(count("orders", 0, 7, 99));
    let stats = emitter.stats();
    assert_eq!(stats.dropped_entries, 3);
    assert_eq!(stats.buffered, 5);

    let agent = TestAgent::start_on(addr, AgentOptions::default()).await;
    assert!(emitter.flush(LONG).await, "{:?}", emitter.stats());
    for bucket in 0..3 {
        assert_eq!(
            agent.latest("orders", 0, bucket * 1000),
            None,
            "bucket {bucket}"
        );
    }
    for bucket in 3..7 {
        assert_eq!(
            agent.latest("orders", 0, bucket * 1000),
            Some(10 + bucket as u64)
        );
    }
    assert_eq!(agent.latest("orders", 0, 7000), Some(99));
    assert_eq!(emitter.stats().dropped_entries, 3);
}

#[tokio::test]
async fn the_token_is_sent_as_a_bearer_header() {
    let agent = TestAgent::start(AgentOptions::default()).await;
    let mut cfg = config(&agent.url());
    cfg.token = Some("s3cret-token".into());
    assert!(
        !format!("{cfg:?}").contains("s3cret"),
        "Debug shows the token"
    );
    let emitter = Emitter::start(cfg);
    emitter.record_count(count("orders", 0, 1, 1));
    assert!(emitter.flush(LONG).await);
    let books = agent.books.lock().expect("books");
    assert_eq!(
        books.connections[0].authorization.as_deref(),
        Some("Bearer s3cret-token")
    );
}

#[tokio::test]
async fn a_width_mismatch_is_reported_and_nothing_is_sent() {
    let agent = TestAgent::start(AgentOptions {
        width_ms: 2 * WIDTH_MS,
        ..AgentOptions::default()
    })
    .await;
    let emitter = Emitter::start(config(&agent.url()));
    emitter.record_count(count("orders", 0, 1, 1));
    eventually("the refusal is reported", || {
        emitter
            .stats()
            .last_error
            .is_some_and(|e| e.contains("width_mismatch"))
    })
    .await;
    assert!(!emitter.flush(Duration::from_millis(200)).await);
    let stats = emitter.stats();
    assert!(!stats.connected);
    assert_eq!(
        (stats.connects, stats.sent_messages, stats.buffered),
        (0, 0, 1)
    );
    assert!(agent.all_counts().is_empty());
}

#[tokio::test]
async fn garbage_replies_are_ignored() {
    let agent = TestAgent::start(AgentOptions {
        script: Arc::new(|_, _, _| Action::GarbageThenAck),
        ..AgentOptions::default()
    })
    .await;
    let emitter = Emitter::start(config(&agent.url()));
    emitter.record_count(count("orders", 0, 1, 1));
    assert!(emitter.flush(LONG).await);
    emitter.record_count(count("orders", 0, 1, 2));
    assert!(emitter.flush(LONG).await);
    let stats = emitter.stats();
    assert_eq!((stats.connects, stats.error_replies), (1, 0));
    assert_eq!(stats.acked_messages, 2);
    assert_eq!(agent.latest("orders", 0, 1000), Some(2));
}

#[tokio::test]
async fn lag_keeps_the_latest_sample_and_is_sent_again_after_a_reconnect() {
    let agent = TestAgent::start(AgentOptions::default()).await;
    let mut cfg = config(&agent.url());
    cfg.flush_interval = Duration::from_secs(60);
    let emitter = Emitter::start(cfg);
    eventually("connected", || emitter.stats().connected).await;

    emitter.record_lag(1_000, vec![lag(0, 5)]);
    emitter.record_lag(2_000, vec![lag(0, 7), lag(1, 1)]);
    assert!(emitter.flush(LONG).await);
    let first = agent.lag_on(0);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["at_ms"], 2_000);
    let lags: Vec<&Value> = first[0]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| &p["lag_records"])
        .collect();
    assert_eq!(lags, [7, 1]);

    agent.kick();
    eventually("reconnected", || emitter.stats().connects == 2).await;
    eventually("lag sent again", || {
        agent.connections() == 2 && !agent.lag_on(1).is_empty()
    })
    .await;
    let again = agent.lag_on(1);
    assert_eq!(
        again[0]["partitions"].as_array().expect("partitions").len(),
        2
    );
}

fn latency(tier: Tier, topic: &str, count: u64) -> LatencyHistogram {
    // Every observation at 7 ms: above the first bound, within the second.
    let counts = LATENCY_BOUNDS_MS
        .iter()
        .map(|&b| if b >= 10 { count } else { 0 })
        .collect();
    LatencyHistogram {
        tier,
        topic: topic.into(),
        bounds_ms: LATENCY_BOUNDS_MS.to_vec(),
        counts,
        count,
        sum_ms: 7 * count,
    }
}

#[tokio::test]
async fn latency_keeps_the_latest_histogram_and_is_sent_again_after_a_reconnect() {
    let agent = TestAgent::start(AgentOptions::default()).await;
    let mut cfg = config(&agent.url());
    cfg.flush_interval = Duration::from_secs(60);
    let emitter = Emitter::start(cfg);
    eventually("connected", || emitter.stats().connected).await;

    emitter.record_latency(vec![latency(Tier::Broker, "orders", 3)]);
    emitter.record_latency(vec![
        latency(Tier::Broker, "orders", 5),
        latency(Tier::Group("billing".into()), "orders", 2),
    ]);
    assert!(emitter.flush(LONG).await);
    let first = agent.latency_on(0);
    assert_eq!(first.len(), 1, "{first:?}");
    let sent: Vec<(&Value, &Value, &Value)> = first[0]["histograms"]
        .as_array()
        .expect("histograms")
        .iter()
        .map(|h| (&h["tier"], &h["count"], &h["sum_ms"]))
        .collect();
    assert_eq!(
        sent,
        [
            (&"broker".into(), &5.into(), &35.into()),
            (&"group:billing".into(), &2.into(), &14.into())
        ]
    );

    // An unchanged histogram is not sent again; a changed one is, alone.
    emitter.record_latency(vec![
        latency(Tier::Broker, "orders", 5),
        latency(Tier::Group("billing".into()), "orders", 4),
    ]);
    assert!(emitter.flush(LONG).await);
    let second = agent.latency_on(0);
    assert_eq!(second.len(), 2, "{second:?}");
    let histograms = second[1]["histograms"].as_array().expect("histograms");
    assert_eq!(histograms.len(), 1, "{histograms:?}");
    assert_eq!(histograms[0]["count"], 4);

    agent.kick();
    eventually("reconnected", || emitter.stats().connects == 2).await;
    eventually("latency sent again", || {
        agent.connections() == 2 && !agent.latency_on(1).is_empty()
    })
    .await;
    let again = agent.latency_on(1);
    let counts: Vec<&Value> = again[0]["histograms"]
        .as_array()
        .expect("histograms")
        .iter()
        .map(|h| &h["count"])
        .collect();
    assert_eq!(counts, [5, 4]);
}

#[tokio::test]
async fn invalid_latency_histograms_are_not_sent() {
    let agent = TestAgent::start(AgentOptions::default()).await;
    let emitter = Emitter::start(config(&agent.url()));
    let mut descending = latency(Tier::Broker, "orders", 3);
    descending.counts[5] = 1;
    emitter.record_latency(vec![descending, latency(Tier::Broker, "payments", 1)]);
    assert!(emitter.flush(LONG).await);
    assert_eq!(emitter.stats().invalid_entries, 1);
    let sent = agent.latency_on(0);
    let topics: Vec<&Value> = sent[0]["histograms"]
        .as_array()
        .expect("histograms")
        .iter()
        .map(|h| &h["topic"])
        .collect();
    assert_eq!(topics, ["payments"]);
}

#[tokio::test]
async fn shutdown_sends_what_is_left_and_stops() {
    let agent = TestAgent::start(AgentOptions::default()).await;
    let mut cfg = config(&agent.url());
    cfg.flush_interval = Duration::from_secs(60);
    let emitter = Emitter::start(cfg);
    let other = emitter.clone();
    emitter.record_count(count("orders", 0, 1, 11));
    timeout(LONG, emitter.shutdown())
        .await
        .expect("shutdown is bounded");
    assert_eq!(agent.latest("orders", 0, 1000), Some(11));
    // The task is gone: what is recorded now stays buffered.
    other.record_count(count("orders", 0, 1, 12));
    sleep(Duration::from_millis(200)).await;
    assert_eq!(agent.latest("orders", 0, 1000), Some(11));
    assert!(!other.stats().connected);
}

#[tokio::test]
async fn shutdown_without_an_agent_is_bounded() {
    let addr = free_port().await;
    let mut cfg = config(&format!("ws://{addr}/api/v1/ingest"));
    cfg.shutdown_timeout = Duration::from_millis(200);
    let emitter = Emitter::start(cfg);
    emitter.record_count(count("orders", 0, 1, 1));
    let began = Instant::now();
    timeout(LONG, emitter.shutdown())
        .await
        .expect("shutdown is bounded");
    assert!(began.elapsed() < Duration::from_secs(2));
}
