//! Fetch: gather from owner shards, apply the response byte limits, long-poll until
//! `min_bytes` arrive or `max_wait_ms` passes.

use std::time::{Duration, Instant};

use kafka_protocol::messages::FetchRequest;
use kafka_protocol::ResponseError;
use ringtail_netio::fetch::{FetchPartition, FetchResponseParts, FetchTopic};
use ringtail_netio::request::Header;

use crate::partition::fetch_sessions::{PartitionRef, Plan, Seen, Want};
use crate::partition::items::{ErrorOutcome, FetchItem, FetchOutcome, PartitionKey};
use crate::shard::{Broker, Route, ShardOp};

/// Longest a fetch may wait for data, whatever the client asks.
const FETCH_WAIT_MS_MAX: i32 = 300_000;

struct Target {
    route: Route,
    key: PartitionKey,
    offset: i64,
    max_bytes: usize,
    current_leader_epoch: i32,
}

/// The partitions a request names, in order, and those it asks its session to forget.
fn requested(request: &FetchRequest) -> (Vec<(PartitionRef, Want)>, Vec<PartitionRef>) {
    let named = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    PartitionRef {
                        topic_id: t.topic_id,
                        topic: t.topic.clone(),
                        partition: p.partition,
                    },
                    Want {
                        fetch_offset: p.fetch_offset,
                        max_bytes: p.partition_max_bytes,
                        leader_epoch: p.current_leader_epoch,
                    },
                )
            })
        })
        .collect();
    let forgotten = request
        .forgotten_topics_data
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|&partition| PartitionRef {
                topic_id: t.topic_id,
                topic: t.topic.clone(),
                partition,
            })
        })
        .collect();
    (named, forgotten)
}

/// The response keeps each partition's batches as the stored buffers; the connection sends
/// them with one vectored write. Fetch sessions (KIP-227): see [`crate::partition::fetch_sessions`].
pub async fn handle(broker: &Broker, header: &Header, request: FetchRequest) -> FetchResponseParts {
    let by_id = header.api_version >= 13;
    let (named, forgotten) = requested(&request);
    let (plan, fetch) = broker.fetch_sessions.lock().expect("not poisoned").begin(
        ringtail_shards::now_ms() as u64,
        request.session_id,
        request.session_epoch,
        by_id,
        named,
        &forgotten,
    );
    if let Plan::Error(code) = plan {
        return FetchResponseParts {
            error_code: code,
            ..FetchResponseParts::default()
        };
    }
    let snapshot = broker.catalog.snapshot();
    // The broker's cap (fetch.max.bytes) bounds what a client may ask for.
    let response_bytes_max = (request.max_bytes.max(0) as usize).min(broker.config.fetch_bytes_max);
    let min_bytes = request.min_bytes.max(0) as usize;
    let wait = Duration::from_millis(request.max_wait_ms.clamp(0, FETCH_WAIT_MS_MAX) as u64);
    let deadline = Instant::now() + wait;

    // Resolve every partition to fetch once: a target on its owner, or an error.
    let slots: Vec<Result<Target, i16>> = fetch
        .iter()
        .map(|(r, want)| {
            let meta = if by_id {
                snapshot.by_id(&r.topic_id)
            } else {
                snapshot.by_name(&r.topic)
            };
            if by_id && meta.is_none() {
                return Err(ResponseError::UnknownTopicId.code());
            }
            let to = super::resolve::resolve(broker, meta, r.partition)?;
            super::resolve::check_leader_epoch(want.leader_epoch, broker.leader_epoch(to.route))?;
            Ok(Target {
                route: to.route,
                key: to.key,
                offset: want.fetch_offset,
                max_bytes: (want.max_bytes.max(0) as usize).min(response_bytes_max),
                current_leader_epoch: want.leader_epoch,
            })
        })
        .collect();
    let outcomes = loop {
        let items = slots
            .iter()
            .flatten()
            .map(|t| {
                (
                    t.route,
                    FetchItem {
                        key: t.key,
                        offset: t.offset,
                        max_bytes: t.max_bytes,
                        first_batch_always: true,
                        current_leader_epoch: t.current_leader_epoch,
                    },
                )
            })
            .collect();
        let mut fetched = broker
            .scatter(items, |s, i| s.fetch(i), ShardOp::Fetch)
            .await
            .into_iter();
        let mut outcomes: Vec<FetchOutcome> = slots
            .iter()
            .map(|s| match s {
                Ok(_) => fetched.next().expect("one outcome per target"),
                Err(code) => FetchOutcome::error(*code),
            })
            .collect();
        let total = limit_response_bytes(&mut outcomes, response_bytes_max);
        let failed = outcomes.iter().any(|o| o.error != 0);
        let now = Instant::now();
        if total >= min_bytes || failed || now >= deadline || slots.iter().all(|s| s.is_err()) {
            break outcomes;
        }
        // Wait for data beyond the log end this round saw, not beyond the fetch offset:
        // data already there (fewer than min_bytes) would wake the watch at once, and the
        // loop would spin until the deadline.
        let watch = slots
            .iter()
            .zip(&outcomes)
            .filter_map(|(s, o)| {
                let t = s.as_ref().ok()?;
                Some((t.route, (t.key, t.offset.max(o.high_watermark))))
            })
            .collect();
        // Woken by new data, or the deadline.
        let _ = ringtail_shards::timeout(deadline - now, broker.watch(watch)).await;
    };
    let outcomes: Vec<FetchOutcome> = if broker.membership.lease_valid() {
        outcomes
    } else {
        // Self-fencing: what this broker holds may be superseded by another owner's writes.
        let code = ResponseError::NotLeaderOrFollower.code();
        outcomes.iter().map(|_| FetchOutcome::error(code)).collect()
    };

    let seen: Vec<Seen> = outcomes
        .iter()
        .map(|o| Seen {
            error: o.error,
            high_watermark: o.high_watermark,
            log_start: o.log_start_offset,
            has_records: !o.batches.is_empty(),
        })
        .collect();
    let include = broker
        .fetch_sessions
        .lock()
        .expect("not poisoned")
        .finish(plan, &fetch, &seen);
    if let Plan::Incremental { .. } = plan {
        use std::sync::atomic::Ordering::Relaxed;
        let omitted = include.iter().filter(|i| !**i).count() as u64;
        broker.stats.fetch_incremental.fetch_add(1, Relaxed);
        broker
            .stats
            .fetch_incremental_partitions_omitted
            .fetch_add(omitted, Relaxed);
    }
    FetchResponseParts {
        session_id: plan.session_id(),
        topics: group_by_topic(fetch.into_iter().zip(outcomes).zip(include)),
        ..FetchResponseParts::default()
    }
}

/// The answered partitions, consecutive ones of a topic under one topic entry (a session's
/// order may name a topic more than once, as Kafka's responses may).
fn group_by_topic(
    answered: impl Iterator<Item = (((PartitionRef, Want), FetchOutcome), bool)>,
) -> Vec<FetchTopic> {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (((r, _), o), included) in answered {
        if !included {
            continue;
        }
        let partition = FetchPartition {
            partition_index: r.partition,
            error_code: o.error,
            high_watermark: o.high_watermark,
            last_stable_offset: o.high_watermark,
            log_start_offset: o.log_start_offset,
            batches: o.batches,
        };
        match topics.last_mut() {
            Some(t) if t.topic_id == r.topic_id && t.name == r.topic => {
                t.partitions.push(partition)
            }
            _ => topics.push(FetchTopic {
                name: r.topic,
                topic_id: r.topic_id,
                partitions: vec![partition],
            }),
        }
    }
    topics
}

/// Keeps whole batches, in request order, within `max_bytes`; the first batch of the response
/// is kept even when larger (KIP-74), so that a consumer always makes progress.
fn limit_response_bytes(outcomes: &mut [FetchOutcome], max_bytes: usize) -> usize {
    let mut total = 0usize;
    for o in outcomes.iter_mut() {
        let mut keep = 0;
        for b in &o.batches {
            if total + b.len() > max_bytes && total > 0 {
                break;
            }
            total += b.len();
            keep += 1;
        }
        o.batches.truncate(keep);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn outcome(sizes: &[usize]) -> FetchOutcome {
        FetchOutcome {
            error: 0,
            high_watermark: 0,
            log_start_offset: 0,
            batches: sizes.iter().map(|&n| Bytes::from(vec![0; n])).collect(),
        }
    }

    #[test]
    fn response_limit_keeps_whole_batches_and_the_first_oversize_one() {
        let mut o = vec![outcome(&[100, 100]), outcome(&[50])];
        assert_eq!(limit_response_bytes(&mut o, 150), 150);
        assert_eq!((o[0].batches.len(), o[1].batches.len()), (1, 1));
        let mut o = vec![outcome(&[100]), outcome(&[60])];
        assert_eq!(limit_response_bytes(&mut o, 150), 100);
        assert_eq!(
            o[1].batches.len(),
            0,
            "only the response's first batch may exceed the limit"
        );
        let mut o = vec![outcome(&[]), outcome(&[500, 10])];
        assert_eq!(limit_response_bytes(&mut o, 100), 500);
        assert_eq!(o[1].batches.len(), 1);
    }
}
