//! DescribeCluster: this one broker, the controller of its cluster, and
//! (when asked) every operation the cluster supports, as no authorizer
//! limits any.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::str_bytes;
use crate::context::Broker;

/// CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS and
/// IDEMPOTENT_WRITE: what Kafka lists for a cluster resource.
pub(super) const CLUSTER_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

/// What Kafka answers when authorized operations were not asked for.
pub(super) const NOT_ASKED: i32 = i32::MIN;

/// The brokers endpoint type; 2 (controllers) has no endpoint here.
const ENDPOINT_BROKERS: i8 = 1;

pub(super) fn handle(
    broker: &Broker,
    request: &DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let response = DescribeClusterResponse::default()
        .with_endpoint_type(request.endpoint_type)
        .with_cluster_id(str_bytes(&broker.cluster_id))
        .with_controller_id(BrokerId(broker.cfg.node_id));
    if version >= 1 && request.endpoint_type != ENDPOINT_BROKERS {
        return response
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_error_message(Some(str_bytes(&format!(
                "endpoint type \"{}\" is not served: this single broker is its own controller; ask for 1 (brokers)",
                request.endpoint_type
            ))));
    }
    let (host, port) = broker.cfg.advertised();
    response
        .with_brokers(vec![
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(broker.cfg.node_id))
                .with_host(str_bytes(&host))
                .with_port(port),
        ])
        .with_cluster_authorized_operations(if request.include_cluster_authorized_operations {
            CLUSTER_OPERATIONS
        } else {
            NOT_ASKED
        })
}
