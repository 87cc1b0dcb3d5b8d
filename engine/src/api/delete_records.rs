//! DeleteRecords: moves partitions' log start offsets up; the data below goes with the next
//! deletion pass (memory at once, objects once the manifest commit records the new start).

use std::time::Duration;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;

use crate::partition::items::{DeleteItem, DeleteOutcome, ErrorOutcome};
use crate::shard::{Broker, ShardOp};

/// Longest a DeleteRecords waits for its commit, whatever the client asks.
const TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// How long the owner's own commit may take when the client sets no timeout (`timeout_ms` 0 or
/// negative): Kafka's default `request.timeout.ms`.
const OWN_COMMIT_WAIT: Duration = Duration::from_secs(30);

/// How long to wait for the new log starts' commit. Kafka's `timeout_ms` bounds the wait for
/// *followers*; the leader's own deletion is done before it answers, so 0 means "do not wait
/// for replicas", never "time out". Ringtail's own deletion is the manifest commit (the log
/// lives in the bucket), so it is always awaited; a non-positive timeout gets the default bound.
fn commit_wait(timeout_ms: i32) -> Duration {
    if timeout_ms <= 0 {
        OWN_COMMIT_WAIT
    } else {
        Duration::from_millis(timeout_ms as u64).min(TIMEOUT_MAX)
    }
}

pub async fn handle(broker: &Broker, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let snapshot = broker.catalog.snapshot();
    let mut slots = Vec::new();
    let mut items = Vec::new();
    for topic in &request.topics {
        let meta = snapshot.by_name(&topic.name);
        for p in &topic.partitions {
            let resolved = super::resolve::resolve_for_write(broker, meta, p.partition_index);
            slots.push(resolved.map(|to| {
                let offset = p.offset;
                items.push((
                    to.route,
                    DeleteItem {
                        key: to.key,
                        offset,
                    },
                ));
            }));
        }
    }
    let timeout = commit_wait(request.timeout_ms);
    let n = items.len();
    let deleted = broker.scatter(items, |s, i| s.delete_records(i), ShardOp::DeleteRecords);
    // On time out the deletion still happens; the client learns it did not finish in time.
    let outcomes = ringtail_shards::timeout(timeout, deleted)
        .await
        .unwrap_or_else(|| vec![DeleteOutcome::error(ResponseError::RequestTimedOut.code()); n]);
    let mut outcomes = super::resolve::in_request_order(slots, outcomes);
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let o = outcomes.next().expect("an outcome per partition");
                    if o.error == 0 {
                        tracing::info!(topic = %topic.name.as_str(), partition = p.partition_index, low_watermark = o.low_watermark, "deleted records");
                    }
                    DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index)
                        .with_low_watermark(o.low_watermark)
                        .with_error_code(o.error)
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_timeout_still_waits_for_the_owners_commit() {
        assert_eq!(commit_wait(0), OWN_COMMIT_WAIT);
        assert_eq!(commit_wait(-1), OWN_COMMIT_WAIT);
        assert_eq!(commit_wait(1), Duration::from_millis(1));
        assert_eq!(commit_wait(i32::MAX), TIMEOUT_MAX);
    }
}
