//! Produce latency of a running broker on 127.0.0.1: several producers, each
//! on its own connection and its own partition of one topic, one request in
//! flight per connection, each request one uncompressed batch.
//!
//! The records' timestamps walk through the last `--span-minutes` of event
//! time over the run, in time order, so that every partition's audit books
//! end up holding about that many buckets (a day of one-minute buckets by
//! default) and the audit tick has that much to count and store.
//!
//! With `--rate` each producer sends on a fixed schedule, so that two brokers
//! compared see the same offered load; a request that the previous one's late
//! answer held back is timed from when it was due, so that a stall is not
//! hidden by the requests it kept from being sent. Without `--rate` the loop
//! is closed: the next request goes as soon as the answer is in.
//!
//! Prints one line of JSON (latencies in microseconds) and exits non-zero on
//! any error code in an answer.
//!
//! ```text
//! cargo run --release -p tally-broker --example produce_latency -- --port 9092 --rate 500
//! ```

use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    CreateTopicsRequest, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

const USAGE: &str = "\
usage: produce_latency [--port PORT] [--topic NAME] [--producers N] [--records N]
                       [--value-bytes N] [--seconds S] [--warmup S] [--rate N]
                       [--acks 1|-1|all] [--span-minutes N] [--produce-version 3..9]";

/// Produce v9 is the newest the broker serves; v7 and v8 differ only in
/// what the answer may carry.
const PRODUCE_VERSION: i16 = 9;
const CREATE_TOPICS_VERSION: i16 = 7;
const CLIENT_ID: &str = "tally-produce-latency";
/// Any single answer taking longer than this ends the run: the broker hangs.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Kafka's TOPIC_ALREADY_EXISTS: a second run against the same broker.
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// The event-time bucket width the broker counts by (its default).
const MINUTE_MS: i64 = 60_000;

#[derive(Clone, Debug)]
struct Options {
    port: u16,
    topic: String,
    producers: i32,
    records: usize,
    value_bytes: usize,
    seconds: f64,
    warmup: f64,
    /// Requests per second per producer; 0 for a closed loop.
    rate: f64,
    acks: i16,
    span_minutes: i64,
    produce_version: i16,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options> {
        let mut o = Options {
            port: 9092,
            topic: "produce-latency".to_owned(),
            producers: 8,
            records: 10,
            value_bytes: 100,
            seconds: 20.0,
            warmup: 3.0,
            rate: 0.0,
            acks: 1,
            span_minutes: 1440,
            produce_version: PRODUCE_VERSION,
        };
        while let Some(flag) = args.next() {
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = args
                .next()
                .ok_or_else(|| format!("\"{flag}\" needs a value\n{USAGE}"))?;
            let bad = |what: &str| format!("{flag} \"{value}\": expected {what}");
            match flag.as_str() {
                "--port" => o.port = value.parse().map_err(|_| bad("a port number"))?,
                "--topic" => o.topic = value.clone(),
                "--producers" => {
                    o.producers = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("a count above 0"))?
                }
                "--records" => {
                    o.records = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("a count above 0"))?
                }
                "--value-bytes" => o.value_bytes = value.parse().map_err(|_| bad("a size"))?,
                "--seconds" => {
                    o.seconds = value
                        .parse()
                        .ok()
                        .filter(|s: &f64| *s > 0.0)
                        .ok_or_else(|| bad("seconds above 0"))?
                }
                "--warmup" => {
                    o.warmup = value
                        .parse()
                        .ok()
                        .filter(|s: &f64| *s >= 0.0)
                        .ok_or_else(|| bad("seconds, 0 or more"))?
                }
                "--rate" => {
                    o.rate = value
                        .trim_end_matches("/s")
                        .parse()
                        .ok()
                        .filter(|r: &f64| *r >= 0.0)
                        .ok_or_else(|| bad("requests per second per producer, 0 for none"))?
                }
                "--acks" => {
                    o.acks = match value.as_str() {
                        "1" => 1,
                        "-1" | "all" => -1,
                        _ => return Err(bad("1, -1 or all").into()),
                    }
                }
                "--span-minutes" => {
                    o.span_minutes = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("minutes above 0"))?
                }
                "--produce-version" => {
                    o.produce_version = value
                        .parse()
                        .ok()
                        .filter(|v| (3..=PRODUCE_VERSION).contains(v))
                        .ok_or_else(|| bad("a Produce version from 3 to 9"))?
                }
                _ => return Err(format!("unknown flag \"{flag}\"\n{USAGE}").into()),
            }
        }
        Ok(o)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
}

/// One connection to the broker, one request at a time.
struct Connection {
    stream: TcpStream,
    next_correlation_id: i32,
    frame: BytesMut,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Result<Connection> {
        let stream = tokio::time::timeout(ANSWER_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            next_correlation_id: 1,
            frame: BytesMut::new(),
        })
    }

    /// Sends `request` and reads its answer.
    async fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let id = self.next_correlation_id;
        self.next_correlation_id = id.wrapping_add(1);
        let buf = &mut self.frame;
        buf.clear();
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
            .encode(buf, R::header_version(version))?;
        request.encode(buf, version)?;
        let len = i32::try_from(buf.len() - 4)?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(buf).await?;

        let mut answer = tokio::time::timeout(ANSWER_TIMEOUT, self.read_frame())
            .await
            .map_err(|_| format!("no answer to api {} within {ANSWER_TIMEOUT:?}", R::KEY))??;
        let header = ResponseHeader::decode(&mut answer, R::Response::header_version(version))?;
        if header.correlation_id != id {
            return Err(format!(
                "answer carries correlation id {}, expected {id}",
                header.correlation_id
            )
            .into());
        }
        Ok(R::Response::decode(&mut answer, version)?)
    }

    async fn read_frame(&mut self) -> Result<Bytes> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).await?;
        let len = usize::try_from(i32::from_be_bytes(size))?;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await?;
        Ok(Bytes::from(body))
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

fn error_name(code: i16) -> String {
    match code.err() {
        Some(e) => format!("{e:?} ({code})"),
        None => code.to_string(),
    }
}

/// Creates the topic with one partition per producer.
async fn create_topic(o: &Options) -> Result<()> {
    let mut conn = Connection::open(o.addr()).await?;
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(topic_name(&o.topic))
                .with_num_partitions(o.producers)
                .with_replication_factor(1),
        ]);
    let answer = conn.call(&request, CREATE_TOPICS_VERSION).await?;
    for t in answer.topics {
        match t.error_code {
            0 => {}
            // Produce answers UNKNOWN_TOPIC_OR_PARTITION if it has too few.
            TOPIC_ALREADY_EXISTS => eprintln!("produce_latency: topic \"{}\" exists", o.topic),
            code => {
                return Err(format!(
                    "cannot create topic \"{}\": {}: {}",
                    o.topic,
                    error_name(code),
                    t.error_message.as_deref().unwrap_or("")
                )
                .into());
            }
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where the run is in time, shared by every producer.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    recording_from: Instant,
    end: Instant,
    /// Event time of the run's start: `span` before the wall clock then.
    event_start_ms: i64,
    span_ms: i64,
}

impl Clock {
    /// The event time of records sent now: as far into the span as the run
    /// is into its whole length, so each partition walks the span once.
    fn event_ms(&self, now: Instant) -> i64 {
        let total = (self.end - self.start).as_secs_f64();
        let done = ((now - self.start).as_secs_f64() / total).min(1.0);
        self.event_start_ms + (done * self.span_ms as f64) as i64
    }
}

/// What one producer measured.
struct Outcome {
    latency_us: Histogram<u64>,
    error: Option<String>,
}

async fn produce(o: Options, partition: i32, clock: Clock) -> Result<Outcome> {
    let mut conn = Connection::open(o.addr()).await?;
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let value = Bytes::from(vec![b'x'; o.value_bytes]);
    let topic = topic_name(&o.topic);
    let encode_options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    let mut records: Vec<Record> = (0..o.records)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: Some(value.clone()),
            headers: IndexMap::new(),
        })
        .collect();
    let interval = (o.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / o.rate));
    // Producers on a schedule start spread over one interval, not in step.
    let mut due = clock.start
        + interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(f64::from(partition) / f64::from(o.producers))
        });
    let mut last_answer = clock.start;
    let mut batch = BytesMut::new();

    loop {
        if interval.is_some() {
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = Instant::now();
        if sent >= clock.end {
            break;
        }
        let ts = clock.event_ms(sent);
        for (i, r) in records.iter_mut().enumerate() {
            r.timestamp = ts + i as i64;
        }
        batch.clear();
        RecordBatchEncoder::encode(&mut batch, &records, &encode_options)?;
        let request = ProduceRequest::default()
            .with_acks(o.acks)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(topic.clone())
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(batch.split().freeze())),
                    ]),
            ]);
        let answer = conn.call(&request, o.produce_version).await?;
        let done = Instant::now();

        // Held back by the previous answer: timed from when it was due. Sent
        // late only by the timer's millisecond grain: timed from the send.
        let from = match interval {
            Some(_) if last_answer > due => due,
            _ => sent,
        };
        if from >= clock.recording_from && done <= clock.end {
            let us = u64::try_from((done - from).as_micros()).unwrap_or(u64::MAX);
            latency_us.saturating_record(us.max(1));
        }
        last_answer = done;
        if let Some(i) = interval {
            due += i;
        }

        let errors: Vec<String> = answer
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .filter(|p| p.error_code != 0)
            .map(|p| {
                format!(
                    "produce to \"{}\" partition {}: {}: {}",
                    o.topic,
                    p.index,
                    error_name(p.error_code),
                    p.error_message.as_deref().unwrap_or("")
                )
            })
            .collect();
        if !errors.is_empty() {
            return Ok(Outcome {
                latency_us,
                error: Some(errors.join("; ")),
            });
        }
    }
    Ok(Outcome {
        latency_us,
        error: None,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("produce_latency: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let o = Options::parse(std::env::args().skip(1))?;
    create_topic(&o).await?;

    let start = Instant::now();
    let recording_from = start + Duration::from_secs_f64(o.warmup);
    let span_ms = o.span_minutes * MINUTE_MS;
    let clock = Clock {
        start,
        recording_from,
        end: recording_from + Duration::from_secs_f64(o.seconds),
        event_start_ms: now_ms() - span_ms,
        span_ms,
    };
    let producers: Vec<_> = (0..o.producers)
        .map(|p| tokio::spawn(produce(o.clone(), p, clock)))
        .collect();

    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = Vec::new();
    for p in producers {
        let outcome = p.await??;
        all.add(&outcome.latency_us)?;
        errors.extend(outcome.error);
    }
    let json = serde_json::json!({
        "requests": all.len(),
        "requests_per_s": (all.len() as f64 / o.seconds).round(),
        "p50_us": all.value_at_quantile(0.50),
        "p99_us": all.value_at_quantile(0.99),
        "p999_us": all.value_at_quantile(0.999),
        "max_us": all.max(),
        "errors": errors.len(),
    });
    println!("{json}");
    if !errors.is_empty() {
        return Err(errors.join("\n").into());
    }
    Ok(())
}
