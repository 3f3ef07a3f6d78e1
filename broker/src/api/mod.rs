//! The Kafka APIs the broker serves: one file per API, one table of the
//! versions it advertises, and one dispatch from (key, version) to handler.

mod acls;
mod alter_configs;
mod api_versions;
mod consumer_group;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod describe_log_dirs;
mod fetch;
mod find_coordinator;
mod heartbeat;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod metadata;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod produce;
pub(crate) mod sasl_authenticate;
pub(crate) mod sasl_handshake;
mod sync_group;
mod txn;

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ConsumerGroupDescribeRequest,
    ConsumerGroupHeartbeatRequest, DescribeTransactionsRequest, EndTxnRequest,
    ListTransactionsRequest, TxnOffsetCommitRequest,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, ApiKey, ApiVersionsRequest, CreateAclsRequest, CreatePartitionsRequest,
    CreateTopicsRequest, DeleteAclsRequest, DeleteGroupsRequest, DeleteRecordsRequest,
    DeleteTopicsRequest, DescribeAclsRequest, DescribeClusterRequest, DescribeConfigsRequest,
    DescribeGroupsRequest, DescribeLogDirsRequest, FetchRequest, FindCoordinatorRequest,
    HeartbeatRequest, IncrementalAlterConfigsRequest, InitProducerIdRequest, JoinGroupRequest,
    LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetDeleteRequest, OffsetFetchRequest, ProduceRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::context::Broker;

/// Every API the broker serves, with the versions it really implements.
/// ApiVersions advertises exactly this table.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::AddPartitionsToTxn, 0, 4),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
];

/// The SASL APIs, served and advertised (after [`SUPPORTED`]) only when the
/// broker requires SASL (`sasl_users`). The connection handles them itself:
/// they change its state, not the broker's.
pub const SASL_SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The table ApiVersions advertises: [`SUPPORTED`], and [`SASL_SUPPORTED`]
/// when SASL is on.
pub(crate) fn advertised(sasl: bool) -> impl Iterator<Item = &'static (ApiKey, i16, i16)> {
    let extra: &[(ApiKey, i16, i16)] = if sasl { SASL_SUPPORTED } else { &[] };
    SUPPORTED.iter().chain(extra)
}

/// Whether `key` is served at `version`.
pub(crate) fn supported(key: ApiKey, version: i16, sasl: bool) -> bool {
    advertised(sasl).any(|(k, min, max)| *k == key && (*min..=*max).contains(&version))
}

/// Who sent a request, as group membership records it.
pub(crate) struct Caller {
    /// The client id of the request header.
    pub(crate) client_id: Option<StrBytes>,
    /// The client's address.
    pub(crate) peer: SocketAddr,
}

impl Caller {
    /// The client id, empty when the header had none.
    pub(crate) fn client_id(&self) -> String {
        self.client_id.as_deref().unwrap_or_default().to_owned()
    }

    /// The client's host as Kafka shows it: `/127.0.0.1`.
    pub(crate) fn host(&self) -> String {
        format!("/{}", self.peer.ip())
    }
}

/// A request body that kafka-protocol could not decode.
#[derive(Debug)]
pub(crate) struct DecodeFailure(pub(crate) String);

pub(crate) fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, DecodeFailure> {
    T::decode(body, version).map_err(|e| DecodeFailure(format!("{e:#}")))
}

pub(crate) fn encode<T: Encodable>(response: &T, version: i16) -> Result<BytesMut, DecodeFailure> {
    let mut buf = BytesMut::new();
    response
        .encode(&mut buf, version)
        .map_err(|e| DecodeFailure(format!("cannot encode the response: {e:#}")))?;
    Ok(buf)
}

/// Handles one request; `None` when no response is due (Produce with acks=0).
pub(crate) async fn dispatch(
    broker: &Broker,
    key: ApiKey,
    version: i16,
    mut body: Bytes,
    caller: &Caller,
) -> Result<Option<BytesMut>, DecodeFailure> {
    let b = &mut body;
    let v = version;
    Ok(Some(match key {
        ApiKey::Produce => {
            match produce::handle(broker, decode::<ProduceRequest>(b, v)?, v).await {
                Some(r) => encode(&r, v)?,
                None => return Ok(None),
            }
        }
        ApiKey::Fetch => encode(
            &fetch::handle(broker, decode::<FetchRequest>(b, v)?, v, caller).await,
            v,
        )?,
        ApiKey::ListOffsets => encode(
            &list_offsets::handle(broker, decode::<ListOffsetsRequest>(b, v)?, v),
            v,
        )?,
        ApiKey::Metadata => encode(
            &metadata::handle(broker, decode::<MetadataRequest>(b, v)?, v),
            v,
        )?,
        ApiKey::ApiVersions => encode(
            &api_versions::handle(
                &decode::<ApiVersionsRequest>(b, v)?,
                broker.cfg.sasl_users.is_some(),
            ),
            v,
        )?,
        ApiKey::CreateTopics => encode(
            &create_topics::handle(broker, decode::<CreateTopicsRequest>(b, v)?, v),
            v,
        )?,
        ApiKey::DeleteTopics => encode(
            &delete_topics::handle(broker, decode::<DeleteTopicsRequest>(b, v)?, v),
            v,
        )?,
        ApiKey::InitProducerId => encode(
            &init_producer_id::handle(broker, decode::<InitProducerIdRequest>(b, v)?).await,
            v,
        )?,
        ApiKey::DescribeConfigs => encode(
            &describe_configs::handle(broker, decode::<DescribeConfigsRequest>(b, v)?, v),
            v,
        )?,
        ApiKey::OffsetCommit => encode(
            &offset_commit::handle(broker, decode::<OffsetCommitRequest>(b, v)?, v).await,
            v,
        )?,
        ApiKey::OffsetFetch => encode(
            &offset_fetch::handle(broker, decode::<OffsetFetchRequest>(b, v)?, v),
            v,
        )?,
        ApiKey::FindCoordinator => encode(
            &find_coordinator::handle(broker, decode::<FindCoordinatorRequest>(b, v)?, v),
            v,
        )?,
        ApiKey::JoinGroup => encode(
            &join_group::handle(broker, decode::<JoinGroupRequest>(b, v)?, v, caller).await,
            v,
        )?,
        ApiKey::Heartbeat => encode(
            &heartbeat::handle(broker, decode::<HeartbeatRequest>(b, v)?),
            v,
        )?,
        ApiKey::LeaveGroup => encode(
            &leave_group::handle(broker, decode::<LeaveGroupRequest>(b, v)?, v),
            v,
        )?,
        ApiKey::SyncGroup => encode(
            &sync_group::handle(broker, decode::<SyncGroupRequest>(b, v)?, v).await,
            v,
        )?,
        ApiKey::DescribeGroups => encode(
            &describe_groups::handle(broker, decode::<DescribeGroupsRequest>(b, v)?, v),
            v,
        )?,
        ApiKey::ListGroups => encode(
            &list_groups::handle(broker, decode::<ListGroupsRequest>(b, v)?, v),
            v,
        )?,
        ApiKey::DeleteGroups => encode(
            &delete_groups::handle(broker, decode::<DeleteGroupsRequest>(b, v)?).await,
            v,
        )?,
        ApiKey::CreatePartitions => encode(
            &create_partitions::handle(broker, decode::<CreatePartitionsRequest>(b, v)?),
            v,
        )?,
        ApiKey::DescribeAcls => {
            decode::<DescribeAclsRequest>(b, v)?;
            encode(&acls::describe(), v)?
        }
        ApiKey::CreateAcls => encode(&acls::create(&decode::<CreateAclsRequest>(b, v)?), v)?,
        ApiKey::DeleteAcls => encode(&acls::delete(&decode::<DeleteAclsRequest>(b, v)?), v)?,
        ApiKey::DescribeLogDirs => encode(
            &describe_log_dirs::handle(broker, &decode::<DescribeLogDirsRequest>(b, v)?),
            v,
        )?,
        ApiKey::OffsetDelete => encode(
            &offset_delete::handle(broker, decode::<OffsetDeleteRequest>(b, v)?).await,
            v,
        )?,
        ApiKey::AlterConfigs => encode(
            &alter_configs::alter(broker, &decode::<AlterConfigsRequest>(b, v)?),
            v,
        )?,
        ApiKey::IncrementalAlterConfigs => encode(
            &alter_configs::incremental(broker, &decode::<IncrementalAlterConfigsRequest>(b, v)?),
            v,
        )?,
        ApiKey::DeleteRecords => encode(
            &delete_records::handle(broker, &decode::<DeleteRecordsRequest>(b, v)?),
            v,
        )?,
        ApiKey::DescribeCluster => encode(
            &describe_cluster::handle(broker, &decode::<DescribeClusterRequest>(b, v)?, v),
            v,
        )?,
        ApiKey::AddPartitionsToTxn => encode(
            &txn::add_partitions(broker, &decode::<AddPartitionsToTxnRequest>(b, v)?, v),
            v,
        )?,
        ApiKey::AddOffsetsToTxn => encode(
            &txn::add_offsets(broker, &decode::<AddOffsetsToTxnRequest>(b, v)?),
            v,
        )?,
        ApiKey::EndTxn => encode(&txn::end(broker, &decode::<EndTxnRequest>(b, v)?).await, v)?,
        ApiKey::TxnOffsetCommit => encode(
            &txn::offset_commit(broker, decode::<TxnOffsetCommitRequest>(b, v)?),
            v,
        )?,
        ApiKey::DescribeTransactions => encode(
            &txn::describe(broker, &decode::<DescribeTransactionsRequest>(b, v)?),
            v,
        )?,
        ApiKey::ListTransactions => encode(
            &txn::list(broker, &decode::<ListTransactionsRequest>(b, v)?),
            v,
        )?,
        ApiKey::ConsumerGroupHeartbeat => encode(
            &consumer_group::heartbeat(
                broker,
                decode::<ConsumerGroupHeartbeatRequest>(b, v)?,
                caller,
            ),
            v,
        )?,
        ApiKey::ConsumerGroupDescribe => encode(
            &consumer_group::describe(broker, &decode::<ConsumerGroupDescribeRequest>(b, v)?),
            v,
        )?,
        other => return Err(DecodeFailure(format!("API {other:?} is not served"))),
    }))
}

/// The ApiVersions v0 answer to a version the broker does not serve.
pub(crate) fn unsupported_api_versions(sasl: bool) -> BytesMut {
    let response = api_versions::unsupported(sasl);
    // v0 of the response is plain: encoding it cannot fail.
    encode(&response, 0).unwrap_or_default()
}

/// `items` with each name once (its first entry), and the names given more
/// than once: Kafka refuses such a name once, acting on none of its entries.
pub(crate) fn each_once<T>(
    items: Vec<T>,
    name: impl Fn(&T) -> &str,
) -> (Vec<T>, std::collections::HashSet<String>) {
    let mut seen = std::collections::HashSet::new();
    let mut twice = std::collections::HashSet::new();
    let mut once = Vec::with_capacity(items.len());
    for item in items {
        if seen.insert(name(&item).to_owned()) {
            once.push(item);
        } else {
            twice.insert(name(&item).to_owned());
        }
    }
    (once, twice)
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_apis_are_served_and_advertised_only_with_sasl_on() {
        for (key, version) in [
            (ApiKey::SaslHandshake, 0),
            (ApiKey::SaslHandshake, 1),
            (ApiKey::SaslAuthenticate, 2),
        ] {
            assert!(supported(key, version, true), "{key:?} v{version}");
            assert!(!supported(key, version, false), "{key:?} v{version}");
        }
        assert!(!supported(ApiKey::SaslHandshake, 2, true));
        assert!(!supported(ApiKey::SaslAuthenticate, 3, true));
        assert_eq!(advertised(false).count(), SUPPORTED.len());
        assert_eq!(advertised(true).count(), SUPPORTED.len() + 2);
        assert!(supported(ApiKey::Metadata, 12, true) && supported(ApiKey::Metadata, 12, false));
    }
}
