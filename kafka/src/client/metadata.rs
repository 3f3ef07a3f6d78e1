//! Metadata: the brokers, the topics and their partitions' leaders.

use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};

use super::request::{Api, ResponseErrors, first};
use super::transport::BrokerAddr;
use super::{Client, KafkaCode, TopicPartition};
use crate::{Error, Result};

impl Api for MetadataRequest {
    const KEY: ApiKey = ApiKey::Metadata;
    const NAME: &'static str = "Metadata";
    const MIN: i16 = 0;
    const MAX: i16 = 13;
    type Response = MetadataResponse;
}

impl ResponseErrors for MetadataResponse {
    fn first_error(&self) -> Option<i16> {
        first(
            std::iter::once(self.error_code).chain(self.topics.iter().flat_map(|t| {
                std::iter::once(t.error_code).chain(t.partitions.iter().map(|p| p.error_code))
            })),
        )
    }
}

/// The cluster as one Metadata answer describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// The cluster id (Metadata v2+).
    pub cluster_id: Option<String>,
    /// The controller's node id, -1 when unknown.
    pub controller_id: i32,
    /// The brokers.
    pub brokers: Vec<BrokerInfo>,
    /// Every topic.
    pub topics: Vec<TopicMetadata>,
}

/// A broker.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BrokerInfo {
    /// Its node id.
    pub node_id: i32,
    /// The host it advertises.
    pub host: String,
    /// The port it advertises.
    pub port: i32,
    /// Its rack, if it has one.
    pub rack: Option<String>,
}

/// A topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Its name.
    pub name: String,
    /// Whether Kafka flags it internal (`__consumer_offsets`, …).
    pub is_internal: bool,
    /// The topic's error, if any (then its partitions may be missing).
    pub error: Option<KafkaCode>,
    /// Its partitions, by index.
    pub partitions: Vec<PartitionMetadata>,
}

/// A partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// Its index.
    pub partition: i32,
    /// The leader's node id, -1 when it has none.
    pub leader: i32,
    /// The replicas' node ids.
    pub replicas: Vec<i32>,
    /// The in-sync replicas' node ids.
    pub isr: Vec<i32>,
    /// The offline replicas' node ids.
    pub offline_replicas: Vec<i32>,
    /// The partition's error, if any.
    pub error: Option<KafkaCode>,
}

fn code(c: i16) -> Option<KafkaCode> {
    (c != 0).then_some(KafkaCode(c))
}

fn convert(response: MetadataResponse) -> Metadata {
    let brokers = response
        .brokers
        .into_iter()
        .map(|b| BrokerInfo {
            node_id: b.node_id.0,
            host: b.host.as_str().to_owned(),
            port: b.port,
            rack: b.rack.map(|r| r.as_str().to_owned()),
        })
        .collect();
    let topics = response
        .topics
        .into_iter()
        .filter_map(|t| {
            // A topic without a name (v12+, asked for by id) cannot be named to the user.
            let name = t.name?.0.as_str().to_owned();
            let mut partitions: Vec<PartitionMetadata> = t
                .partitions
                .into_iter()
                .map(|p| PartitionMetadata {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    replicas: p.replica_nodes.iter().map(|n| n.0).collect(),
                    isr: p.isr_nodes.iter().map(|n| n.0).collect(),
                    offline_replicas: p.offline_replicas.iter().map(|n| n.0).collect(),
                    error: code(p.error_code),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            Some(TopicMetadata {
                name,
                is_internal: t.is_internal,
                error: code(t.error_code),
                partitions,
            })
        })
        .collect();
    Metadata {
        cluster_id: response.cluster_id.map(|c| c.as_str().to_owned()),
        controller_id: response.controller_id.0,
        brokers,
        topics,
    }
}

impl Client {
    /// Every topic, and the brokers; also refreshes the brokers and leaders that the
    /// client routes by. Tries the known brokers, then the bootstrap servers, each once.
    pub async fn metadata(&self) -> Result<Metadata> {
        let mut last = None;
        for broker in self.any_brokers() {
            match self.metadata_from(&broker).await {
                Ok(metadata) => return Ok(metadata),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::NoBroker { api: "Metadata" }))
    }

    /// Asks `broker` for every topic and learns from the answer.
    pub(super) async fn metadata_from(&self, broker: &BrokerAddr) -> Result<Metadata> {
        let (response, _) = self
            .call(broker, |version| {
                MetadataRequest::default()
                    // v0 lists every topic for an empty list; later versions for null.
                    .with_topics(if version == 0 { Some(Vec::new()) } else { None })
                    .with_allow_auto_topic_creation(false)
            })
            .await?;
        if response.error_code != 0 {
            return Err(Error::Kafka {
                broker: broker.to_string(),
                api: "Metadata",
                code: KafkaCode(response.error_code),
            });
        }
        let metadata = convert(response);
        self.learn(&metadata);
        Ok(metadata)
    }

    /// Replaces the brokers and leaders with those of `metadata`.
    fn learn(&self, metadata: &Metadata) {
        let mut cluster = self.cluster_mut();
        cluster.brokers = metadata
            .brokers
            .iter()
            .map(|b| (b.node_id, b.clone()))
            .collect();
        cluster.leaders = metadata
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (TopicPartition::new(t.name.clone(), p.partition), p.leader))
            })
            .collect();
    }

    /// The leader of `tp` per the last metadata, and where it listens.
    pub(super) fn leader_of(&self, tp: &TopicPartition) -> Option<(i32, BrokerAddr)> {
        let leader = *self.cluster().leaders.get(tp)?;
        if leader < 0 {
            return None;
        }
        Some((leader, self.addr_of(leader)?))
    }

    /// Whether the last metadata knows partition `tp`.
    pub(super) fn knows(&self, tp: &TopicPartition) -> bool {
        self.cluster().leaders.contains_key(tp)
    }

    /// Refreshes the metadata, ignoring a failure: the retry that follows reports it.
    pub(super) async fn refresh(&self) {
        let _ = self.metadata().await;
    }
}
