//! InitProducerId: producer ids for idempotent producers, unique across restarts and brokers:
//! with an object store from blocks claimed in the bucket (`producer_ids.rs`), without one from
//! the catalog's counter (persisted before it is handed out). A producer
//! that asks again with its id and epoch (v3+, KIP-360) gets the next epoch, which fences its
//! older self. Transactions are not supported.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use crate::shard::Broker;

pub async fn handle(broker: &Broker, request: InitProducerIdRequest) -> InitProducerIdResponse {
    let fail = |code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request.transactional_id.is_some() {
        // A client may ask again and again: the shard's budget of client-caused lines.
        if crate::metrics::client_log::may_log(&broker.stats) {
            tracing::warn!(
                "InitProducerId for a transactional producer: transactions are not supported"
            );
        }
        return fail(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    let (id, epoch) = (request.producer_id.0, request.producer_epoch);
    if id >= 0 && epoch >= 0 {
        let known = match &broker.producer_ids {
            Some(ids) => match ids.is_allocated(id).await {
                Ok(known) => known || broker.catalog.is_allocated_producer_id(id),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the producer id blocks");
                    return fail(ResponseError::CoordinatorNotAvailable.code());
                }
            },
            None => broker.catalog.is_allocated_producer_id(id),
        };
        if !known {
            return fail(ResponseError::InvalidProducerIdMapping.code());
        }
        if epoch < i16::MAX - 1 {
            return InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch + 1);
        }
        // Epochs exhausted: a new id (below).
    }
    if let Some(ids) = &broker.producer_ids {
        return match ids.allocate(broker.catalog.next_producer_id()).await {
            Ok(id) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
            Err(e) => {
                tracing::error!(error = %e, "could not claim producer ids");
                fail(ResponseError::CoordinatorNotAvailable.code())
            }
        };
    }
    match broker.catalog.allocate_producer_id().await {
        Ok(id) => {
            tracing::debug!(producer_id = id, "allocated a producer id");
            InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0)
        }
        Err(e) => {
            tracing::error!(error = %e, "could not persist a producer id");
            fail(ResponseError::CoordinatorNotAvailable.code())
        }
    }
}
