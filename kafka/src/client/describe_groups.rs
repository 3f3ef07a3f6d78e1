//! DescribeGroups: a group's state, protocol type and member count, asked of its
//! coordinator.

use std::collections::HashMap;

use kafka_protocol::messages::{ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, GroupId};
use kafka_protocol::protocol::StrBytes;

use super::find_coordinator::GroupAnswers;
use super::request::{Api, ResponseErrors, first};
use super::transport::BrokerAddr;
use super::{Client, KafkaCode};
use crate::Result;

impl Api for DescribeGroupsRequest {
    const KEY: ApiKey = ApiKey::DescribeGroups;
    const NAME: &'static str = "DescribeGroups";
    const MIN: i16 = 0;
    const MAX: i16 = 6;
    type Response = DescribeGroupsResponse;
}

impl ResponseErrors for DescribeGroupsResponse {
    fn first_error(&self) -> Option<i16> {
        first(self.groups.iter().map(|g| g.error_code))
    }
}

/// A consumer group as its coordinator describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group id.
    pub group: String,
    /// Its state: `Stable`, `Empty`, `PreparingRebalance`, `Dead`, …
    pub state: String,
    /// Its protocol type: `consumer` for consumers, empty for a group that only commits.
    pub protocol_type: String,
    /// How many members it has.
    pub members: usize,
}

impl Client {
    /// Each group's description, asked of its coordinator (one request per coordinator
    /// for all its groups). See [`per_coordinator`](Client::per_coordinator) for retries.
    pub async fn describe_groups(
        &self,
        groups: &[String],
    ) -> Result<HashMap<String, Result<GroupDescription, KafkaCode>>> {
        let client = self.clone();
        self.per_coordinator(groups, move |addr, groups| {
            let client = client.clone();
            async move { client.describe_groups_at(&addr, &groups).await }
        })
        .await
    }

    async fn describe_groups_at(
        &self,
        broker: &BrokerAddr,
        groups: &[String],
    ) -> Result<GroupAnswers<GroupDescription>> {
        let ids = groups
            .iter()
            .map(|g| GroupId(StrBytes::from_string(g.clone())))
            .collect();
        let (response, _) = self
            .call(broker, |_| {
                DescribeGroupsRequest::default().with_groups(ids)
            })
            .await?;
        Ok(response
            .groups
            .into_iter()
            .map(|g| {
                let group = g.group_id.0.as_str().to_owned();
                let answer = if g.error_code != 0 {
                    Err(KafkaCode(g.error_code))
                } else {
                    Ok(GroupDescription {
                        group: group.clone(),
                        state: g.group_state.as_str().to_owned(),
                        protocol_type: g.protocol_type.as_str().to_owned(),
                        members: g.members.len(),
                    })
                };
                (group, answer)
            })
            .collect())
    }
}
