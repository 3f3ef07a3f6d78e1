//! A Kafka client for watching a cluster from outside: metadata, offsets, consumer
//! groups and their committed offsets, fetches (of one record's offset and time, or of
//! whole uncompressed records), and the offset-commit records of `__consumer_offsets`
//! ([`OffsetsTopicRecord`]), over plaintext, TLS and SASL (PLAIN, SCRAM-SHA-256/512,
//! OAUTHBEARER).
//!
//! - [`Client::connect`] tries the bootstrap servers in turn and learns the brokers from
//!   Metadata. Each request then goes where Kafka wants it: ListOffsets and Fetch to the
//!   partition's leader (one ListOffsets per leader for all its partitions), DescribeGroups
//!   and OffsetFetch to the group's coordinator (found with FindCoordinator, batched
//!   where the broker speaks v4, and cached).
//! - Versions are negotiated per connection (ApiVersions) and each request goes in the
//!   newest version both sides speak.
//! - `NOT_LEADER_OR_FOLLOWER` and `UNKNOWN_TOPIC_OR_PARTITION` refresh the metadata and
//!   retry; `NOT_COORDINATOR`, `COORDINATOR_NOT_AVAILABLE` and
//!   `COORDINATOR_LOAD_IN_PROGRESS` forget the coordinator and retry; a lost connection
//!   or a broker that went away reconnects, refreshes and retries. Retries are bounded
//!   ([`Retry`]: 3 attempts, 100 ms doubling by default); what still fails after them is
//!   reported per partition or per group where the API returns per-item results.
//! - The wire sits behind [`Transport`]: [`Connections`] in production, canned
//!   clusters in tests.
//! - One connection per broker, pipelined: requests carry correlation ids and do not
//!   wait for each other's answers ([`Connections`]). A request without an answer
//!   within the request timeout closes its connection, and the next request opens a new
//!   one (with a new SASL login, so an OAUTHBEARER token file is read again). SASL
//!   re-authentication (KIP-368) is not done: a broker that ends a session closes the
//!   connection, and the client reconnects.

mod config;
mod conn;
mod describe_groups;
mod fetch;
mod find_coordinator;
mod list_groups;
mod list_offsets;
mod metadata;
mod offset_fetch;
mod offsets_topic;
mod record_batch;
pub use record_batch::{AbortedTransaction, Aborts, BatchKind};
mod request;
mod transport;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::protocol::HeaderVersion;

pub use config::{ClientConfig, Observer, Outcome, SaslMechanism, SecurityProtocol};
pub use conn::Connections;
pub use describe_groups::GroupDescription;
pub use fetch::{FetchOne, FetchedRecord, FetchedRecords, Isolation, LogChunk, LogFetch, Record};
pub use list_groups::GroupListing;
pub use list_offsets::OffsetSpec;
pub use metadata::{BrokerInfo, Metadata, PartitionMetadata, TopicMetadata};
pub use offset_fetch::CommittedOffset;
pub use offsets_topic::{OffsetCommit, OffsetsTopicRecord};
pub use transport::{ApiVersions, BoxFuture, BrokerAddr, RawRequest, Transport};

use request::{Api, ResponseErrors};

use crate::{Error, Result};

/// A partition of a topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

impl TopicPartition {
    /// Partition `partition` of `topic`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// A Kafka error code from an answer. Shown as Kafka names it, with its number:
/// `NOT_LEADER_OR_FOLLOWER (6)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KafkaCode(pub i16);

impl KafkaCode {
    /// UNKNOWN_TOPIC_OR_PARTITION.
    pub const UNKNOWN_TOPIC_OR_PARTITION: KafkaCode = KafkaCode(3);
    /// LEADER_NOT_AVAILABLE.
    pub const LEADER_NOT_AVAILABLE: KafkaCode = KafkaCode(5);
    /// NOT_LEADER_OR_FOLLOWER.
    pub const NOT_LEADER_OR_FOLLOWER: KafkaCode = KafkaCode(6);
    /// NETWORK_EXCEPTION: also what a per-item result holds when the broker could not be
    /// reached after every attempt.
    pub const NETWORK_EXCEPTION: KafkaCode = KafkaCode(13);
    /// COORDINATOR_LOAD_IN_PROGRESS.
    pub const COORDINATOR_LOAD_IN_PROGRESS: KafkaCode = KafkaCode(14);
    /// COORDINATOR_NOT_AVAILABLE.
    pub const COORDINATOR_NOT_AVAILABLE: KafkaCode = KafkaCode(15);
    /// NOT_COORDINATOR.
    pub const NOT_COORDINATOR: KafkaCode = KafkaCode(16);

    /// Kafka's name for the code (`NOT_LEADER_OR_FOLLOWER`), if the code is known.
    pub fn name(self) -> Option<String> {
        match ResponseError::try_from_code(self.0)? {
            ResponseError::Unknown(_) => None,
            known => Some(screaming_snake(&known.to_string())),
        }
    }

    /// Whether a new leader may cure it (the metadata is refreshed and the request
    /// retried).
    pub(crate) fn is_stale_leader(self) -> bool {
        matches!(self.0, 3 | 5 | 6 | 74 | 75)
    }

    /// Whether another coordinator, or the same one later, may cure it.
    pub(crate) fn is_coordinator_moving(self) -> bool {
        matches!(self.0, 14..=16)
    }
}

/// `NotLeaderOrFollower` → `NOT_LEADER_OR_FOLLOWER`.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

impl fmt::Display for KafkaCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "unknown error ({})", self.0),
        }
    }
}

impl std::error::Error for KafkaCode {}

/// How often and how patiently a request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// The wait before the second attempt; it doubles for each one after.
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 3,
            backoff: Duration::from_millis(100),
        }
    }
}

/// What the client last learnt about the cluster.
#[derive(Default)]
struct Cluster {
    brokers: BTreeMap<i32, BrokerInfo>,
    leaders: HashMap<TopicPartition, i32>,
    coordinators: HashMap<String, BrokerAddr>,
}

struct Inner {
    transport: Arc<dyn Transport>,
    observer: Option<Arc<dyn Observer>>,
    retry: Retry,
    request_timeout: Duration,
    bootstrap: Vec<BrokerAddr>,
    cluster: RwLock<Cluster>,
    /// Spreads requests that any broker can answer.
    rotation: AtomicUsize,
}

/// A client of one Kafka cluster. Cheap to clone; clones share connections and what
/// the client knows of the cluster.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.inner.bootstrap)
            .field("brokers", &self.brokers())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Checks `cfg`, then tries the bootstrap servers in turn until one answers
    /// ApiVersions and Metadata. Fails naming every server tried and why.
    pub async fn connect(cfg: ClientConfig) -> Result<Client> {
        cfg.validate()?;
        let transport = Arc::new(Connections::new(&cfg)?);
        Client::connect_with(cfg, transport, Retry::default()).await
    }

    /// As [`connect`](Client::connect), over another transport and retry policy.
    pub async fn connect_with(
        cfg: ClientConfig,
        transport: Arc<dyn Transport>,
        retry: Retry,
    ) -> Result<Client> {
        cfg.validate()?;
        let bootstrap = cfg
            .bootstrap
            .iter()
            .map(|b| BrokerAddr::parse(b))
            .collect::<Result<Vec<_>>>()?;
        let client = Client {
            inner: Arc::new(Inner {
                transport,
                observer: cfg.observer.clone(),
                retry: Retry {
                    attempts: retry.attempts.max(1),
                    backoff: retry.backoff,
                },
                request_timeout: cfg.request_timeout,
                bootstrap: bootstrap.clone(),
                cluster: RwLock::new(Cluster::default()),
                rotation: AtomicUsize::new(0),
            }),
        };
        let mut tried = Vec::new();
        for broker in &bootstrap {
            match client.metadata_from(broker).await {
                Ok(_) => return Ok(client),
                Err(e) => {
                    client.inner.transport.disconnect(broker);
                    tried.push((broker.to_string(), e.to_string()));
                }
            }
        }
        Err(Error::Bootstrap { tried })
    }

    /// The brokers of the last metadata.
    pub fn brokers(&self) -> Vec<BrokerInfo> {
        self.cluster().brokers.values().cloned().collect()
    }

    fn cluster(&self) -> std::sync::RwLockReadGuard<'_, Cluster> {
        self.inner.cluster.read().unwrap_or_else(|p| p.into_inner())
    }

    fn cluster_mut(&self) -> std::sync::RwLockWriteGuard<'_, Cluster> {
        self.inner
            .cluster
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Where node `id` listens, per the last metadata.
    fn addr_of(&self, id: i32) -> Option<BrokerAddr> {
        let cluster = self.cluster();
        let b = cluster.brokers.get(&id)?;
        BrokerAddr::from_wire(&b.host, b.port)
    }

    /// Every broker to ask a question that any broker answers: the known ones, starting
    /// at a different one each time, then the bootstrap servers.
    fn any_brokers(&self) -> Vec<BrokerAddr> {
        let known: Vec<BrokerAddr> = self
            .cluster()
            .brokers
            .values()
            .filter_map(|b| BrokerAddr::from_wire(&b.host, b.port))
            .collect();
        let mut all = Vec::with_capacity(known.len() + self.inner.bootstrap.len());
        if !known.is_empty() {
            let start = self.inner.rotation.fetch_add(1, Ordering::Relaxed) % known.len();
            all.extend(known[start..].iter().cloned());
            all.extend(known[..start].iter().cloned());
        }
        for b in &self.inner.bootstrap {
            if !all.contains(b) {
                all.push(b.clone());
            }
        }
        all
    }

    /// Waits before attempt `attempt` (counted from 0; no wait before the first).
    async fn backoff(&self, attempt: u32) {
        if attempt == 0 {
            return;
        }
        let factor = 1u32 << (attempt - 1).min(10);
        tokio::time::sleep(self.inner.retry.backoff.saturating_mul(factor)).await;
    }

    fn attempts(&self) -> u32 {
        self.inner.retry.attempts
    }

    /// Sends one request to `broker` in the newest version both speak; `build` makes the
    /// request for that version. Tells the observer how it went; on a transport error,
    /// drops the connection so that the next request opens a new one.
    async fn call<A: Api>(
        &self,
        broker: &BrokerAddr,
        build: impl FnOnce(i16) -> A,
    ) -> Result<(A::Response, i16)> {
        let started = Instant::now();
        let result = self.call_inner(broker, build).await;
        if let Some(observer) = &self.inner.observer {
            let outcome = match &result {
                Ok((response, _)) => match response.first_error() {
                    Some(code) => Outcome::KafkaError(code),
                    None => Outcome::Ok,
                },
                Err(_) => Outcome::TransportError,
            };
            observer.request(A::NAME, &broker.to_string(), outcome, started.elapsed());
        }
        result
    }

    /// The version of `A` that a request to `broker` would go in.
    async fn version_for<A: Api>(&self, broker: &BrokerAddr) -> Result<i16> {
        let versions = match self.inner.transport.api_versions(broker).await {
            Ok(v) => v,
            Err(e) => {
                if let Some(observer) = &self.inner.observer {
                    observer.request(
                        A::NAME,
                        &broker.to_string(),
                        Outcome::TransportError,
                        Duration::ZERO,
                    );
                }
                self.inner.transport.disconnect(broker);
                return Err(e);
            }
        };
        request::choose::<A>(&versions, &broker.to_string())
    }

    async fn call_inner<A: Api>(
        &self,
        broker: &BrokerAddr,
        build: impl FnOnce(i16) -> A,
    ) -> Result<(A::Response, i16)> {
        let name = broker.to_string();
        let transport = &self.inner.transport;
        let sent = async {
            let versions = transport.api_versions(broker).await?;
            let version = request::choose::<A>(&versions, &name)?;
            let request = build(version);
            let body = request::encode_body(&request, A::NAME, version)?;
            let raw = RawRequest {
                api_key: A::KEY as i16,
                api: A::NAME,
                version,
                header_version: A::header_version(version),
                response_header_version: A::Response::header_version(version),
                body,
            };
            let mut answer = transport.send(broker, raw).await?;
            let response =
                request::decode_body::<A::Response>(&mut answer, &name, A::NAME, version)?;
            Ok((response, version))
        };
        let result: Result<(A::Response, i16)> = sent.await;
        if let Err(e) = &result
            && is_transport(e)
        {
            transport.disconnect(broker);
        }
        result
    }
}

/// Whether an error is the connection's (the broker may be back, or another may answer)
/// rather than the request's.
fn is_transport(e: &Error) -> bool {
    matches!(
        e,
        Error::Connect { .. }
            | Error::Connection { .. }
            | Error::Timeout { .. }
            | Error::Malformed { .. }
            | Error::Handshake { .. }
    )
}

#[cfg(test)]
mod tests;

/// The end of a call that retried per key (partition or group): keys still without an
/// answer after the last attempt get the last error seen for them (or `default`), but
/// when no broker answered anything at all the call fails with the transport error.
fn settle<K, V>(
    mut results: HashMap<K, std::result::Result<V, KafkaCode>>,
    remaining: Vec<K>,
    last_error: &HashMap<K, KafkaCode>,
    answered: bool,
    transport_error: Option<Error>,
    default: KafkaCode,
) -> Result<HashMap<K, std::result::Result<V, KafkaCode>>>
where
    K: std::hash::Hash + Eq,
{
    if !remaining.is_empty()
        && !answered
        && let Some(e) = transport_error
    {
        return Err(e);
    }
    for key in remaining {
        let code = last_error.get(&key).copied().unwrap_or(default);
        results.insert(key, Err(code));
    }
    Ok(results)
}

#[cfg(test)]
mod code_tests {
    use super::*;

    #[test]
    fn codes_show_kafka_names_and_numbers() {
        assert_eq!(KafkaCode(6).to_string(), "NOT_LEADER_OR_FOLLOWER (6)");
        assert_eq!(KafkaCode(16).to_string(), "NOT_COORDINATOR (16)");
        assert_eq!(KafkaCode(58).to_string(), "SASL_AUTHENTICATION_FAILED (58)");
        assert_eq!(KafkaCode(-1).to_string(), "UNKNOWN_SERVER_ERROR (-1)");
        assert_eq!(KafkaCode(9999).to_string(), "unknown error (9999)");
    }
}
