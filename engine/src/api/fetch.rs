//! Fetch: gather from owner shards, apply the response byte limits, long-poll until
//! `min_bytes` arrive or `max_wait_ms` passes.

use std::time::{Duration, Instant};

use kafka_protocol::messages::FetchRequest;
use kafka_protocol::ResponseError;
use ringtail_netio::fetch::{FetchPartition, FetchResponseParts, FetchTopic};
use ringtail_netio::request::Header;

use crate::shard::{
    Broker, ErrorOutcome, FetchItem, FetchOutcome, PartitionKey, Route, ShardOp, LEADER_EPOCH,
};

/// Longest a fetch may wait for data, whatever the client asks.
const FETCH_WAIT_MS_MAX: i32 = 300_000;

struct Target {
    route: Route,
    key: PartitionKey,
    offset: i64,
    max_bytes: usize,
}

/// The response keeps each partition's batches as the stored buffers; the connection sends
/// them with one vectored write.
pub async fn handle(broker: &Broker, header: &Header, request: FetchRequest) -> FetchResponseParts {
    let by_id = header.api_version >= 13;
    if request.session_id != 0 {
        return FetchResponseParts {
            error_code: ResponseError::FetchSessionIdNotFound.code(),
            ..FetchResponseParts::default()
        };
    }
    let snapshot = broker.catalog.snapshot();
    // The broker's cap (fetch.max.bytes) bounds what a client may ask for.
    let response_bytes_max = (request.max_bytes.max(0) as usize).min(broker.config.fetch_bytes_max);
    let min_bytes = request.min_bytes.max(0) as usize;
    let wait = Duration::from_millis(request.max_wait_ms.clamp(0, FETCH_WAIT_MS_MAX) as u64);
    let deadline = Instant::now() + wait;

    // Resolve every requested partition once: a target on its owner, or an error.
    let mut slots: Vec<Result<Target, i16>> = Vec::new();
    for topic in &request.topics {
        let meta = if by_id {
            snapshot.by_id(&topic.topic_id)
        } else {
            snapshot.by_name(&topic.topic)
        };
        for p in &topic.partitions {
            let slot = match meta {
                None if by_id => Err(ResponseError::UnknownTopicId.code()),
                None => Err(ResponseError::UnknownTopicOrPartition.code()),
                Some(m) if p.partition < 0 || p.partition >= m.partitions => {
                    Err(ResponseError::UnknownTopicOrPartition.code())
                }
                Some(_) if p.current_leader_epoch > LEADER_EPOCH => {
                    Err(ResponseError::UnknownLeaderEpoch.code())
                }
                Some(m) => Ok(Target {
                    route: broker.owner(m, p.partition),
                    key: PartitionKey {
                        topic_id: m.id,
                        partition: p.partition,
                    },
                    offset: p.fetch_offset,
                    max_bytes: (p.partition_max_bytes.max(0) as usize).min(response_bytes_max),
                }),
            };
            slots.push(slot);
        }
    }

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

    let mut outcomes = outcomes.into_iter();
    let topics = request
        .topics
        .iter()
        .map(|topic| FetchTopic {
            name: topic.topic.clone(),
            topic_id: topic.topic_id,
            partitions: topic
                .partitions
                .iter()
                .map(|p| {
                    let o = outcomes.next().expect("one outcome per partition");
                    FetchPartition {
                        partition_index: p.partition,
                        error_code: o.error,
                        high_watermark: o.high_watermark,
                        last_stable_offset: o.high_watermark,
                        log_start_offset: o.log_start_offset,
                        batches: o.batches,
                    }
                })
                .collect(),
        })
        .collect();
    FetchResponseParts {
        topics,
        ..FetchResponseParts::default()
    }
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
