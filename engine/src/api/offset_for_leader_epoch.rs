//! OffsetForLeaderEpoch (API 23): where a leader epoch ends in a partition, so a client that
//! read records under it can tell whether the log still holds them (KIP-320's truncation
//! check). Answered by the partition's owner from its epoch starts (Kafka's rule:
//! [`crate::partition::epochs::EpochStarts::end_offset_for`]).

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use crate::partition::items::EpochItem;
use crate::shard::{Broker, ShardOp};

pub async fn handle(
    broker: &Broker,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let snapshot = broker.catalog.snapshot();
    // Only clients: a replica id names a follower fetching from a leader, which Ringtail's
    // brokers never are to each other.
    let from_replica = request.replica_id.0 >= 0;
    let mut slots = Vec::new();
    let mut items = Vec::new();
    for topic in &request.topics {
        let meta = snapshot.by_name(&topic.topic);
        for p in &topic.partitions {
            let slot = if from_replica {
                Err(ResponseError::UnknownServerError.code())
            } else {
                super::resolve::resolve(broker, meta, p.partition).and_then(|to| {
                    super::resolve::check_leader_epoch(
                        p.current_leader_epoch,
                        broker.leader_epoch(to.route),
                    )?;
                    items.push((
                        to.route,
                        EpochItem {
                            key: to.key,
                            epoch: p.leader_epoch,
                            current_leader_epoch: p.current_leader_epoch,
                        },
                    ));
                    Ok(())
                })
            };
            slots.push(slot);
        }
    }
    let found = broker
        .scatter(
            items,
            |s, i| futures::future::ready(s.leader_epochs(i)),
            ShardOp::LeaderEpochs,
        )
        .await;
    let mut found = super::resolve::in_request_order(slots, found);
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let o = found.next().expect("an outcome per partition");
                    tracing::debug!(topic = %topic.topic.0, partition = p.partition, asked = p.leader_epoch, epoch = o.leader_epoch, end_offset = o.end_offset, error = o.error, "offset for leader epoch");
                    EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_error_code(o.error)
                        .with_leader_epoch(o.leader_epoch)
                        .with_end_offset(o.end_offset)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
