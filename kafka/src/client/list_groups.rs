//! ListGroups: the groups every broker coordinates.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use kafka_protocol::messages::{ApiKey, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use super::request::{Api, ResponseErrors, first};
use super::transport::BrokerAddr;
use super::{Client, KafkaCode, is_transport};
use crate::{Error, Result};

impl Api for ListGroupsRequest {
    const KEY: ApiKey = ApiKey::ListGroups;
    const NAME: &'static str = "ListGroups";
    const MIN: i16 = 0;
    const MAX: i16 = 5;
    type Response = ListGroupsResponse;
}

impl ResponseErrors for ListGroupsResponse {
    fn first_error(&self) -> Option<i16> {
        first([self.error_code])
    }
}

/// A group as ListGroups lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    /// The group id.
    pub group: String,
    /// Its protocol type: `consumer` for consumers, empty for a group that only commits.
    pub protocol_type: String,
    /// Its state (ListGroups v4+).
    pub state: Option<String>,
    /// Its type, `classic` or `consumer` (ListGroups v5+).
    pub group_type: Option<String>,
}

impl Client {
    /// Every consumer group of the cluster: ListGroups to every broker, concurrently,
    /// each in its newest version (v5 with the types `classic` and `consumer`, so that
    /// share and streams groups are left out). A broker that fails after every attempt
    /// fails the call, since a partial list would make live groups look deleted, unless
    /// the refreshed metadata no longer lists it.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let mut brokers: Vec<BrokerAddr> = self
            .brokers()
            .iter()
            .filter_map(|b| BrokerAddr::from_wire(&b.host, b.port))
            .collect();
        if brokers.is_empty() {
            self.metadata().await?;
            brokers = self
                .brokers()
                .iter()
                .filter_map(|b| BrokerAddr::from_wire(&b.host, b.port))
                .collect();
        }
        let calls = brokers.iter().map(|b| self.list_groups_at_with_retries(b));
        let mut groups = BTreeMap::new();
        for answer in join_all(calls).await {
            for g in answer? {
                groups.insert(g.group.clone(), g);
            }
        }
        Ok(groups.into_values().collect())
    }

    async fn list_groups_at_with_retries(&self, broker: &BrokerAddr) -> Result<Vec<GroupListing>> {
        let mut last = None;
        for attempt in 0..self.attempts() {
            self.backoff(attempt).await;
            match self.list_groups_at(broker).await {
                Ok(groups) => return Ok(groups),
                Err(e @ Error::Kafka { code, .. }) if code.is_coordinator_moving() => {
                    last = Some(e);
                }
                Err(e) if is_transport(&e) => {
                    // A broker that left the cluster coordinates nothing any more.
                    self.refresh().await;
                    let listed = self
                        .brokers()
                        .iter()
                        .any(|b| BrokerAddr::from_wire(&b.host, b.port).as_ref() == Some(broker));
                    if !listed {
                        return Ok(Vec::new());
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::NoBroker { api: "ListGroups" }))
    }

    async fn list_groups_at(&self, broker: &BrokerAddr) -> Result<Vec<GroupListing>> {
        let (response, version) = self
            .call(broker, |version| {
                let request = ListGroupsRequest::default();
                if version >= 5 {
                    request.with_types_filter(vec![
                        StrBytes::from_static_str("classic"),
                        StrBytes::from_static_str("consumer"),
                    ])
                } else {
                    request
                }
            })
            .await?;
        if response.error_code != 0 {
            return Err(Error::Kafka {
                broker: broker.to_string(),
                api: "ListGroups",
                code: KafkaCode(response.error_code),
            });
        }
        Ok(response
            .groups
            .into_iter()
            .map(|g| GroupListing {
                group: g.group_id.0.as_str().to_owned(),
                protocol_type: g.protocol_type.as_str().to_owned(),
                state: (version >= 4).then(|| g.group_state.as_str().to_owned()),
                group_type: (version >= 5).then(|| g.group_type.as_str().to_owned()),
            })
            .collect())
    }
}
