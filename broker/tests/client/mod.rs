//! A small Kafka client for the broker's tests: requests are encoded with
//! kafka-protocol's own types and framed as a real client frames them, so the
//! broker is exercised over a real TCP socket; record batches are built with
//! kafka-protocol's `RecordBatchEncoder`.
//!
//! Every read is bounded in time, so a broker that never answers fails the
//! test instead of hanging it.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiVersionsRequest, FetchRequest, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single read from the broker may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The client id every request carries.
pub const CLIENT_ID: &str = "tally-tests";

/// A whole request frame (size, header, body) for `request` in `version`.
pub fn frame<R: Request>(request: &R, version: i16, correlation_id: i32) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
        .encode(&mut buf, R::header_version(version))
        .unwrap_or_else(|e| panic!("request header v{version} of api {}: {e:#}", R::KEY));
    request
        .encode(&mut buf, version)
        .unwrap_or_else(|e| panic!("api {} v{version} does not encode: {e:#}", R::KEY));
    let len = i32::try_from(buf.len() - 4).unwrap();
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// A frame with a raw header (api key, version, correlation id, no client
/// id) and a raw body: for requests kafka-protocol would refuse to encode.
pub fn raw_frame(api_key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i32(i32::try_from(10 + body.len()).unwrap());
    buf.put_i16(api_key);
    buf.put_i16(version);
    buf.put_i32(correlation_id);
    buf.put_i16(-1);
    buf.extend_from_slice(body);
    buf.freeze()
}

/// Decodes a response body (the bytes after the correlation id and, in
/// flexible versions, the header's tagged fields).
pub fn decode_response<R: Request>(frame: Bytes, version: i16) -> io::Result<(i32, R::Response)> {
    let mut buf = frame;
    let header = ResponseHeader::decode(&mut buf, R::Response::header_version(version))
        .map_err(|e| io::Error::other(format!("response header: {e:#}")))?;
    let body = R::Response::decode(&mut buf, version)
        .map_err(|e| io::Error::other(format!("api {} v{version} response: {e:#}", R::KEY)))?;
    if !buf.is_empty() {
        return Err(io::Error::other(format!(
            "api {} v{version} response: {} bytes after the body",
            R::KEY,
            buf.len()
        )));
    }
    Ok((header.correlation_id, body))
}

/// One connection to the broker.
pub struct Client {
    stream: TcpStream,
    next_correlation_id: i32,
}

impl Client {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            next_correlation_id: 1,
        })
    }

    /// Sends `request` without waiting for its answer; returns its correlation id.
    pub async fn send<R: Request>(&mut self, request: &R, version: i16) -> io::Result<i32> {
        let id = self.next_correlation_id;
        self.next_correlation_id += 1;
        self.stream.write_all(&frame(request, version, id)).await?;
        Ok(id)
    }

    /// Reads the next response, decoding it as the answer to an `R` in `version`.
    pub async fn receive<R: Request>(&mut self, version: i16) -> io::Result<(i32, R::Response)> {
        let frame = self
            .read_frame()
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))?;
        decode_response::<R>(frame, version)
    }

    /// Sends `request` and reads its answer, checking the correlation id.
    pub async fn call<R: Request>(&mut self, request: &R, version: i16) -> io::Result<R::Response> {
        let id = self.send(request, version).await?;
        let (got, response) = self.receive::<R>(version).await?;
        if got != id {
            return Err(io::Error::other(format!(
                "answer carries correlation id {got}, expected {id}"
            )));
        }
        Ok(response)
    }

    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads one response frame without its size; `None` when the broker
    /// closed the connection cleanly before a new frame began.
    pub async fn read_frame(&mut self) -> io::Result<Option<Bytes>> {
        let read = async {
            let mut size = [0u8; 4];
            match self.stream.read_exact(&mut size).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            let len = usize::try_from(i32::from_be_bytes(size))
                .map_err(|_| io::Error::other("negative response size"))?;
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).await?;
            Ok(Some(Bytes::from(body)))
        };
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
    }

    /// Whether the broker closes the connection (end of stream or reset)
    /// within the read timeout, without sending anything first.
    pub async fn is_closed_by_broker(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut byte)).await {
            Ok(Ok(0)) => true,
            Ok(Ok(_)) => false,
            Ok(Err(e)) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
            Err(_) => false,
        }
    }

    /// An ApiVersions v3 round trip: the broker answers with error 0.
    pub async fn api_versions(&mut self) -> io::Result<()> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("tally-tests"))
            .with_client_software_version(StrBytes::from_static_str("1"));
        let response = self.call(&request, 3).await?;
        if response.error_code != 0 || response.api_keys.is_empty() {
            return Err(io::Error::other(format!(
                "ApiVersions answered error {} with {} apis",
                response.error_code,
                response.api_keys.len()
            )));
        }
        Ok(())
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A topic name for requests.
pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// The producer fields of a batch: plain, or an idempotent producer's.
#[derive(Clone, Copy, Debug)]
pub struct Producer {
    /// Producer id, -1 for none.
    pub id: i64,
    /// Producer epoch, -1 for none.
    pub epoch: i16,
    /// Sequence of the batch's first record, -1 for none.
    pub base_sequence: i32,
}

impl Producer {
    /// A producer that is not idempotent.
    pub const PLAIN: Producer = Producer {
        id: -1,
        epoch: -1,
        base_sequence: -1,
    };
}

/// One v2 record batch holding `values` with these timestamps.
pub fn batch_at(values: &[&[u8]], timestamps: &[i64], producer: Producer) -> Bytes {
    batch_with(values, timestamps, producer, Compression::None)
}

/// [`batch_at`] with its records compressed by `compression`.
pub fn batch_with(
    values: &[&[u8]],
    timestamps: &[i64],
    producer: Producer,
    compression: Compression,
) -> Bytes {
    assert_eq!(values.len(), timestamps.len());
    let records: Vec<Record> = values
        .iter()
        .zip(timestamps)
        .enumerate()
        .map(|(i, (value, ts))| {
            let i = i32::try_from(i).unwrap();
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: producer.id,
                producer_epoch: producer.epoch,
                timestamp_type: TimestampType::Creation,
                offset: i64::from(i),
                // The encoder keeps records in one batch while offset minus
                // sequence stays the same, and derives the base sequence from
                // the first record: -1 for a plain batch.
                sequence: producer.base_sequence.wrapping_add(i),
                timestamp: *ts,
                key: None,
                value: Some(Bytes::copy_from_slice(value)),
                headers: IndexMap::new(),
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

/// One plain v2 record batch holding `values`, stamped now.
pub fn batch(values: &[&[u8]]) -> Bytes {
    let now = now_ms();
    batch_at(values, &vec![now; values.len()], Producer::PLAIN)
}

/// A Produce request of `records` for one partition.
pub fn produce_request(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ])
}

/// A Fetch request for one partition from `offset`.
pub fn fetch_request(topic: &str, partition: i32, offset: i64, max_bytes: i32) -> FetchRequest {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(max_bytes)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(max_bytes),
                ]),
        ])
}

/// Every record in fetched `records` bytes, as (offset, timestamp, value).
pub fn records(bytes: &Bytes) -> Vec<(i64, i64, Bytes)> {
    let mut buf = bytes.clone();
    RecordBatchDecoder::decode_all(&mut buf)
        .unwrap_or_else(|e| panic!("fetched records do not decode: {e:#}"))
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| (r.offset, r.timestamp, r.value.unwrap_or_default()))
        .collect()
}
