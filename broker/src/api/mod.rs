//! The Kafka APIs the broker serves: one file per API, one table of the
//! versions it advertises, and one dispatch from (key, version) to handler.

mod api_versions;
mod create_topics;
mod delete_topics;
mod describe_configs;
mod fetch;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod produce;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    FetchRequest, InitProducerIdRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::server::Broker;

/// Every API the broker serves, with the versions it really implements.
/// ApiVersions advertises exactly this table.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
];

/// Whether `key` is served at `version`.
pub(crate) fn supported(key: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|(k, min, max)| *k == key && (*min..=*max).contains(&version))
}

/// A request body that kafka-protocol could not decode.
#[derive(Debug)]
pub(crate) struct DecodeFailure(pub(crate) String);

fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, DecodeFailure> {
    T::decode(body, version).map_err(|e| DecodeFailure(format!("{e:#}")))
}

fn encode<T: Encodable>(response: &T, version: i16) -> Result<BytesMut, DecodeFailure> {
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
            &fetch::handle(broker, decode::<FetchRequest>(b, v)?, v).await,
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
            &api_versions::handle(&decode::<ApiVersionsRequest>(b, v)?),
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
            &init_producer_id::handle(broker, decode::<InitProducerIdRequest>(b, v)?),
            v,
        )?,
        ApiKey::DescribeConfigs => encode(
            &describe_configs::handle(broker, decode::<DescribeConfigsRequest>(b, v)?, v),
            v,
        )?,
        other => return Err(DecodeFailure(format!("API {other:?} is not served"))),
    }))
}

/// The ApiVersions v0 answer to a version the broker does not serve.
pub(crate) fn unsupported_api_versions() -> BytesMut {
    let response = api_versions::unsupported();
    // v0 of the response is plain: encoding it cannot fail.
    encode(&response, 0).unwrap_or_default()
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}
