//! From what a request names to where it goes: a topic (as the request's catalog snapshot has
//! it) and a partition index become the partition's route and key, or the error code the
//! request's answer gives that partition. One set of rules for every data API.

use std::sync::Arc;

use kafka_protocol::ResponseError;

use crate::catalog::TopicMeta;
use crate::partition::items::{ErrorOutcome, PartitionKey};
use crate::shard::{Broker, Route};

/// A partition a request names, found: its topic, where it lives, its key.
pub struct Resolved<'a> {
    pub topic: &'a Arc<TopicMeta>,
    pub route: Route,
    pub key: PartitionKey,
}

/// Partition `partition` of `topic`: where it lives and its key; UNKNOWN_TOPIC_OR_PARTITION for
/// a topic the catalog does not have or an index out of its range.
pub fn resolve<'a>(
    broker: &Broker,
    topic: Option<&'a Arc<TopicMeta>>,
    partition: i32,
) -> Result<Resolved<'a>, i16> {
    match topic {
        Some(t) if (0..t.partitions).contains(&partition) => Ok(Resolved {
            topic: t,
            route: broker.owner(t, partition),
            key: PartitionKey {
                topic_id: t.id,
                partition,
            },
        }),
        _ => Err(ResponseError::UnknownTopicOrPartition.code()),
    }
}

/// As [`resolve`], for requests that write or delete records: only the group coordinator
/// writes the committed-offsets topic (INVALID_TOPIC_EXCEPTION).
pub fn resolve_for_write<'a>(
    broker: &Broker,
    topic: Option<&'a Arc<TopicMeta>>,
    partition: i32,
) -> Result<Resolved<'a>, i16> {
    let resolved = resolve(broker, topic, partition)?;
    if resolved.topic.is_internal() {
        return Err(ResponseError::InvalidTopicException.code());
    }
    Ok(resolved)
}

/// A request's `current_leader_epoch` for a partition against the highest epoch this broker
/// has seen for its slot (KIP-320): an older one is FENCED_LEADER_EPOCH, the client's metadata
/// is stale (retriable: it refreshes). Checked before the partition's owner, which also refuses
/// a newer epoch than its own (a stale owner is never served to a client that knows better):
/// [`crate::partition::epochs::check_current`].
pub fn check_leader_epoch(current: i32, known: i32) -> Result<(), i16> {
    if current >= 0 && current < known {
        Err(ResponseError::FencedLeaderEpoch.code())
    } else {
        Ok(())
    }
}

/// Every partition's outcome in request order: `slots` holds, per partition, Ok if it was sent
/// to its owner (its outcome is the next of `outcomes`, which are in the order they were sent)
/// or its error.
pub fn in_request_order<O: ErrorOutcome>(
    slots: Vec<Result<(), i16>>,
    outcomes: Vec<O>,
) -> impl Iterator<Item = O> {
    let mut outcomes = outcomes.into_iter();
    slots.into_iter().map(move |slot| match slot {
        Ok(()) => outcomes.next().expect("an outcome per item sent"),
        Err(code) => O::error(code),
    })
}
