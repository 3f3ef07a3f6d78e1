//! InitProducerId: producer ids for idempotent producers, and for
//! transactional ones the id and epoch their `transactional.id` holds (a new
//! epoch fences the producer that held it before, and its open transaction
//! is aborted first).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use tracing::warn;

use crate::context::Broker;
use crate::txn::{self, Init};

fn refused(error: ResponseError) -> InitProducerIdResponse {
    InitProducerIdResponse::default()
        .with_error_code(error.code())
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

pub(super) async fn handle(
    broker: &Broker,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    if let Some(id) = &request.transactional_id {
        if id.0.is_empty() {
            return refused(ResponseError::InvalidRequest);
        }
        if broker.groups.unavailable().is_some() {
            return refused(ResponseError::CoordinatorLoadInProgress);
        }
        // v3+ names the id and epoch a producer had, to bump its own epoch.
        let claimed =
            (request.producer_id.0 >= 0).then_some((request.producer_id.0, request.producer_epoch));
        // At most twice: an open transaction is aborted, then the id is ready.
        for _ in 0..2 {
            match broker
                .txns
                .init(&id.0, request.transaction_timeout_ms, claimed, || {
                    broker.producer_ids.next()
                }) {
                Ok(Init::Ready(pid, epoch)) => {
                    return InitProducerIdResponse::default()
                        .with_producer_id(ProducerId(pid))
                        .with_producer_epoch(epoch);
                }
                Ok(Init::AbortFirst(ending)) => {
                    if let Err(e) = txn::complete(broker, &ending).await {
                        return refused(e);
                    }
                }
                Err(e) => return refused(e),
            }
        }
        return refused(ResponseError::ConcurrentTransactions);
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
            refused(ResponseError::KafkaStorageError)
        }
    }
}
