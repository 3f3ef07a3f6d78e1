//! InitProducerId: producer ids for idempotent producers (transactions are
//! not supported).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use tracing::warn;

use crate::context::Broker;

pub(super) fn handle(broker: &Broker, request: InitProducerIdRequest) -> InitProducerIdResponse {
    if request.transactional_id.is_some() {
        return InitProducerIdResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    // A producer that already has an id asks for its epoch to be bumped.
    if request.producer_id.0 >= 0 && request.producer_epoch >= 0 {
        let epoch = request.producer_epoch.checked_add(1);
        return match epoch {
            Some(e) => InitProducerIdResponse::default()
                .with_producer_id(request.producer_id)
                .with_producer_epoch(e),
            None => fresh(broker),
        };
    }
    fresh(broker)
}

fn fresh(broker: &Broker) -> InitProducerIdResponse {
    match broker.producer_ids.next() {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => {
            warn!("cannot allocate a producer id: {e}");
            InitProducerIdResponse::default()
                .with_error_code(ResponseError::KafkaStorageError.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}
