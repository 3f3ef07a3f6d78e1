//! FindCoordinator: this broker coordinates every group (key type 0) and
//! every transactional id (key type 1); one
//! key before v4, a batch of keys from v4.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

use super::str_bytes;
use crate::context::Broker;

const GROUP: i8 = 0;
const TRANSACTION: i8 = 1;

/// The coordinator's address, or why there is none.
fn locate(
    broker: &Broker,
    key_type: i8,
) -> Result<(BrokerId, String, i32), (ResponseError, String)> {
    match key_type {
        GROUP | TRANSACTION => match broker.groups.unavailable() {
            None => {
                let (host, port) = broker.cfg.advertised();
                Ok((BrokerId(broker.cfg.node_id), host, port))
            }
            Some(_) => Err((
                ResponseError::CoordinatorNotAvailable,
                "the committed offsets are still loading".to_owned(),
            )),
        },
        other => Err((
            ResponseError::InvalidRequest,
            format!("key type \"{other}\" is not supported: expected 0 (group) or 1 (transaction)"),
        )),
    }
}

pub(super) fn handle(
    broker: &Broker,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let found = locate(broker, request.key_type);
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key);
                match &found {
                    Ok((node, host, port)) => c
                        .with_node_id(*node)
                        .with_host(str_bytes(host))
                        .with_port(*port),
                    Err((e, message)) => c
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(e.code())
                        .with_error_message(Some(str_bytes(message))),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match found {
        Ok((node, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(node)
            .with_host(str_bytes(&host))
            .with_port(port),
        Err((e, message)) => FindCoordinatorResponse::default()
            .with_error_code(e.code())
            .with_error_message((version >= 1).then(|| str_bytes(&message)))
            .with_node_id(BrokerId(-1))
            .with_port(-1),
    }
}
