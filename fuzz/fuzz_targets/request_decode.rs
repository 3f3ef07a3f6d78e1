//! The broker's request path under libFuzzer: the input is a request frame
//! (header and body, without the size prefix). The guard checks it first; what
//! the guard accepts goes to kafka-protocol's decoder, which must decode it.
//! An abort here is a request that would take the broker down; a decode error
//! is a request the guard should have refused.

#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiVersionsRequest, CreateTopicsRequest, DeleteGroupsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest,
    HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, RequestHeader, SyncGroupRequest,
};
use kafka_protocol::protocol::Decodable;
use libfuzzer_sys::fuzz_target;
use tally_broker::guard;

fn decode_body(api_key: i16, version: i16, body: &[u8]) -> Result<(), String> {
    let mut buf = Bytes::copy_from_slice(body);
    macro_rules! decode_as {
        ($ty:ty) => {
            <$ty>::decode(&mut buf, version)
                .map(drop)
                .map_err(|e| e.to_string())
        };
    }
    match api_key {
        0 => decode_as!(ProduceRequest),
        1 => decode_as!(FetchRequest),
        2 => decode_as!(ListOffsetsRequest),
        3 => decode_as!(MetadataRequest),
        8 => decode_as!(OffsetCommitRequest),
        9 => decode_as!(OffsetFetchRequest),
        10 => decode_as!(FindCoordinatorRequest),
        11 => decode_as!(JoinGroupRequest),
        12 => decode_as!(HeartbeatRequest),
        13 => decode_as!(LeaveGroupRequest),
        14 => decode_as!(SyncGroupRequest),
        15 => decode_as!(DescribeGroupsRequest),
        16 => decode_as!(ListGroupsRequest),
        18 => decode_as!(ApiVersionsRequest),
        19 => decode_as!(CreateTopicsRequest),
        20 => decode_as!(DeleteTopicsRequest),
        22 => decode_as!(InitProducerIdRequest),
        32 => decode_as!(DescribeConfigsRequest),
        42 => decode_as!(DeleteGroupsRequest),
        other => panic!("the guard accepted api key {other}, which has no request type here"),
    }
}

fuzz_target!(|frame: &[u8]| {
    let [k0, k1, v0, v1, ..] = *frame else {
        return;
    };
    let (api_key, api_version) = (i16::from_be_bytes([k0, k1]), i16::from_be_bytes([v0, v1]));
    let Ok(header_version) = guard::request_header_version(api_key, api_version) else {
        return;
    };
    let Ok(header_len) = guard::check_request_header(frame, header_version) else {
        return;
    };
    let mut header = Bytes::copy_from_slice(&frame[..header_len]);
    if let Err(e) = RequestHeader::decode(&mut header, header_version) {
        panic!("the guard accepted a header kafka-protocol cannot decode: {e}");
    }
    let body = &frame[header_len..];
    if guard::check_request_body(api_key, api_version, body).is_err() {
        return;
    }
    if let Err(e) = decode_body(api_key, api_version, body) {
        panic!("the guard accepted a body kafka-protocol cannot decode: {e}");
    }
});
