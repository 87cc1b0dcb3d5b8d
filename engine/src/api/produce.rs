//! Produce: validate batches on the receiving shard, append on the owner, answer per partition.

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use ringtail_netio::batch::{split_and_validate_next, BatchError, DecompressBudget, ValidBatch};
use ringtail_netio::codec::Target;
use ringtail_netio::header::BatchHeader;
use ringtail_netio::request::{Header, ProduceInput};

use super::{respond, Reply};
use crate::errors::batch_error_code;
use crate::partition::items::{ErrorOutcome, ProduceItem, ProduceOutcome};
use crate::shard::{Broker, Route, ShardOp};

type Slot = Result<usize, ProduceOutcome>;

/// The longest a produce waits for its upload (`durability=object`) or its followers
/// (`replicated`), whatever its `timeout_ms` asks (a negative one asks for no bound; the answer
/// still comes, REQUEST_TIMED_OUT if the store or the followers have been down that long).
pub const ACK_WAIT_MAX: Duration = Duration::from_secs(300);

/// How long a produce waits for its upload or followers: `timeout_ms` as Kafka reads it (the longest wait
/// for the acknowledgement; 0 answers at once), capped at [`ACK_WAIT_MAX`]; a negative
/// timeout gets the cap.
pub fn ack_wait(timeout_ms: i32) -> Duration {
    if timeout_ms < 0 {
        return ACK_WAIT_MAX;
    }
    Duration::from_millis(timeout_ms as u64).min(ACK_WAIT_MAX)
}

/// Each time validation has decompressed this many more bytes (a few ms of CPU), the handler
/// lets the shard's reactor and other tasks run if its time slice is up.
const YIELD_AFTER_DECOMPRESSED_BYTES: u64 = 4 << 20;

/// Splits and validates one record set batch by batch (`split_and_validate_next`), drawing
/// on the request's `budget`, and yields every [`YIELD_AFTER_DECOMPRESSED_BYTES`] spent, so a
/// request that decompresses up to its budget (1 GiB: 1-2 s of gzip) does not hold the shard.
/// Batches in another codec than the topic's `compression` are recompressed into it; that
/// costs CPU for uncompressed batches too (which draw nothing on the budget), so their bytes
/// count towards the next yield as well.
async fn validate(
    mut records: BytesMut,
    batch_bytes_max: usize,
    compression: Option<Target>,
    budget: &mut DecompressBudget,
) -> Result<Vec<ValidBatch>, BatchError> {
    let mut batches = Vec::new();
    let mut work_bytes = 0;
    let mut since_yield = budget.spent();
    while !records.is_empty() {
        let before = records.len();
        batches.push(split_and_validate_next(
            &mut records,
            batch_bytes_max,
            budget,
            compression,
        )?);
        if compression.is_some() {
            work_bytes += (before - records.len()) as u64;
        }
        if budget.spent() + work_bytes - since_yield >= YIELD_AFTER_DECOMPRESSED_BYTES {
            ringtail_shards::yield_if_needed().await;
            since_yield = budget.spent() + work_bytes;
        }
    }
    if batches.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(batches)
}

/// A dispatched produce's answer: resolves once its batches are durable (or refused).
pub type Completion = LocalBoxFuture<'static, Reply>;

/// A produce, both stages one after the other.
pub async fn handle(broker: &Rc<Broker>, header: &Header, input: ProduceInput) -> Reply {
    dispatch(broker, header, input).await.await
}

/// Stage one (ARCHITECTURE.md, "Pipelined connections"): validates the batches, checks their
/// producer ids and hands them to their owners — local slots assign offsets now, remote items
/// are queued in their owners' mailboxes — so that whatever the connection dispatches next
/// takes effect after this. Returns stage two: the wait for durability and the answer.
pub async fn dispatch(broker: &Rc<Broker>, header: &Header, input: ProduceInput) -> Completion {
    if input.copied_bytes > 0 {
        tracing::debug!(
            bytes = input.copied_bytes,
            "produce record sets were copied (shared frame)"
        );
    }
    let acks = input.acks;
    let ack_timeout = Some(ack_wait(input.timeout_ms));
    let snapshot = broker.catalog.snapshot();
    // One budget of decompressed bytes for the whole request (a bomb is small: the per-batch
    // cap bounds memory, this bounds CPU), and chances for the shard's other work to run
    // while it is spent.
    let record_bytes = input
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
        .sum();
    let mut budget = DecompressBudget::for_request(record_bytes);
    // Per partition: the index of its item for the owner, or an immediate (error) outcome.
    let mut shape: Vec<(String, Vec<(i32, Slot)>)> = Vec::new();
    let mut items: Vec<(Route, ProduceItem)> = Vec::new();
    for topic in input.topics {
        let meta = snapshot.by_name(&topic.name).cloned();
        let mut parts = Vec::new();
        for p in topic.partitions {
            let outcome = if !matches!(acks, -1..=1) {
                Err(ResponseError::InvalidRequiredAcks.code())
            } else {
                match (
                    super::resolve::resolve_for_write(broker, meta.as_ref(), p.index),
                    p.records,
                ) {
                    (Err(code), _) => Err(code),
                    (Ok(_), None) => Err(ResponseError::CorruptMessage.code()),
                    (Ok(to), Some(records)) => {
                        let m = to.topic;
                        let validated = validate(
                            records,
                            m.config.max_message_bytes,
                            m.config.compression,
                            &mut budget,
                        )
                        .await;
                        match validated {
                            Ok(batches) => {
                                items.push((
                                    to.route,
                                    ProduceItem {
                                        key: to.key,
                                        topic: m.clone(),
                                        batches,
                                        acks_all: acks == -1,
                                        ack_timeout,
                                    },
                                ));
                                Ok(items.len() - 1)
                            }
                            Err(e) => {
                                tracing::debug!(topic = %m.name, partition = p.index, error = %e, "produce batch refused");
                                Err(batch_error_code(&e))
                            }
                        }
                    }
                }
            };
            parts.push((p.index, outcome.map_err(ProduceOutcome::error)));
        }
        shape.push((topic.name, parts));
    }
    let refused = refuse_producers(broker, &items).await;
    if refused.iter().any(|r| r.is_some()) {
        // Keep the items that pass, and point each partition at its new index or its error.
        let mut kept = Vec::with_capacity(items.len());
        let mut index = Vec::with_capacity(items.len());
        for (item, refusal) in items.into_iter().zip(&refused) {
            index.push(kept.len());
            if refusal.is_none() {
                kept.push(item);
            }
        }
        items = kept;
        for (_, parts) in shape.iter_mut() {
            for (_, slot) in parts.iter_mut() {
                if let Ok(i) = *slot {
                    *slot = match refused[i] {
                        Some(code) => Err(ProduceOutcome::error(code)),
                        None => Ok(index[i]),
                    };
                }
            }
        }
    }
    if !broker.membership.lease_valid() {
        // Self-fencing before anything is appended, not only in the answer: a replicated
        // topic's followers would take a lapsed owner's write (their copies take anything of
        // the current epoch until a successor opens), and a successor would then serve it.
        items.clear();
        let fenced = ProduceOutcome::error(ResponseError::NotLeaderOrFollower.code());
        for (_, parts) in shape.iter_mut() {
            for (_, slot) in parts.iter_mut().filter(|(_, s)| s.is_ok()) {
                *slot = Err(fenced);
            }
        }
    }
    let (broker, header) = (broker.clone(), header.clone());
    let mut done = Box::pin(async move {
        let outcomes = broker
            .scatter(items, |s, i| s.produce(i), ShardOp::Produce)
            .await;
        answer(&broker, &header, acks, shape, outcomes)
    });
    // The first poll starts the local slots and queues the remote items (each sender has a
    // guaranteed slot in a mailbox: it never waits).
    match futures::poll!(done.as_mut()) {
        std::task::Poll::Ready(reply) => futures::future::ready(reply).boxed_local(),
        std::task::Poll::Pending => done,
    }
}

/// The answer to a produce, from its items' outcomes.
fn answer(
    broker: &Broker,
    header: &Header,
    acks: i16,
    shape: Vec<(String, Vec<(i32, Slot)>)>,
    mut outcomes: Vec<ProduceOutcome>,
) -> Reply {
    if !broker.membership.lease_valid() {
        // Self-fencing: another broker may own these slots by now (ARCHITECTURE.md).
        for o in outcomes.iter_mut().filter(|o| o.error == 0) {
            *o = ProduceOutcome::error(ResponseError::NotLeaderOrFollower.code());
        }
    }
    if acks == 0 {
        return Reply::Nothing;
    }
    let responses = shape
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(index, slot)| {
                    let o = match slot {
                        Ok(i) => outcomes[i],
                        Err(o) => o,
                    };
                    PartitionProduceResponse::default()
                        .with_index(index)
                        .with_error_code(o.error)
                        .with_base_offset(o.base_offset)
                        .with_log_append_time_ms(o.log_append_time_ms)
                        .with_log_start_offset(o.log_start_offset)
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_string(name)))
                .with_partition_responses(partitions)
        })
        .collect();
    respond(
        broker,
        header,
        &ProduceResponse::default().with_responses(responses),
    )
}

/// Per item, the error that refuses it, if any. Transactions do not exist here (yet): a
/// transactional batch gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED on every partition the
/// request writes, which Kafka answers when the request's transactional id is missing or not
/// authorised (and the one InitProducerId answers every transactional id here). An idempotent
/// batch must carry a producer id that InitProducerId handed out (UNKNOWN_PRODUCER_ID
/// otherwise): one bucket read at most per request, for its highest id.
async fn refuse_producers(broker: &Broker, items: &[(Route, ProduceItem)]) -> Vec<Option<i16>> {
    fn batches(item: &ProduceItem) -> impl Iterator<Item = &BatchHeader> {
        item.batches.iter().map(|b| &b.header)
    }
    if items
        .iter()
        .any(|(_, item)| batches(item).any(|h| h.is_transactional()))
    {
        let code = ResponseError::TransactionalIdAuthorizationFailed.code();
        return vec![Some(code); items.len()];
    }
    let highest = items
        .iter()
        .flat_map(|(_, item)| batches(item))
        .map(|h| h.producer_id)
        .max()
        .unwrap_or(-1);
    if highest < 0 {
        return vec![None; items.len()];
    }
    let allocated_end = match &broker.producer_ids {
        None => 0,
        Some(ids) => match ids.allocated_end(highest).await {
            Ok(end) => end,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the producer id blocks");
                let code = ResponseError::KafkaStorageError.code();
                return items
                    .iter()
                    .map(|(_, item)| batches(item).any(|h| h.producer_id >= 0).then_some(code))
                    .collect();
            }
        },
    };
    let known = |id: i64| id < allocated_end || broker.catalog.is_allocated_producer_id(id);
    items
        .iter()
        .map(|(_, item)| {
            batches(item)
                .any(|h| h.producer_id >= 0 && !known(h.producer_id))
                .then_some(ResponseError::UnknownProducerId.code())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_wait_follows_timeout_ms_within_the_cap() {
        assert_eq!(ack_wait(0), Duration::ZERO);
        assert_eq!(ack_wait(1500), Duration::from_millis(1500));
        assert_eq!(ack_wait(-1), ACK_WAIT_MAX);
        assert_eq!(ack_wait(i32::MIN), ACK_WAIT_MAX);
        assert_eq!(ack_wait(i32::MAX), ACK_WAIT_MAX);
    }
}
