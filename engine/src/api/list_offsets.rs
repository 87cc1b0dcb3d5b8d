//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3), earliest local (-4), by time.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use crate::partition::items::ListItem;
use crate::shard::{Broker, ShardOp};

pub async fn handle(
    broker: &Broker,
    version: i16,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let snapshot = broker.catalog.snapshot();
    // A partition named twice is INVALID_REQUEST at each mention, as in Kafka (a lookup by
    // time can read an object: one request must not repeat it at will).
    let duplicate = super::repeated(request.topics.iter().flat_map(|topic| {
        topic
            .partitions
            .iter()
            .map(|p| (topic.name.as_str(), p.partition_index))
    }));
    let mut slots = Vec::new();
    let mut items = Vec::new();
    for topic in &request.topics {
        let meta = snapshot.by_name(&topic.name);
        for p in &topic.partitions {
            let slot = if duplicate.contains(&(topic.name.as_str(), p.partition_index)) {
                Err(ResponseError::InvalidRequest.code())
            } else {
                super::resolve::resolve(broker, meta, p.partition_index).and_then(|to| {
                    super::resolve::check_leader_epoch(
                        p.current_leader_epoch,
                        broker.leader_epoch(to.route),
                    )?;
                    tracing::debug!(topic = %to.topic.name, partition = p.partition_index, timestamp = p.timestamp, "list offsets");
                    items.push((
                        to.route,
                        ListItem {
                            key: to.key,
                            timestamp: p.timestamp,
                            current_leader_epoch: p.current_leader_epoch,
                        },
                    ));
                    Ok(())
                })
            };
            slots.push(slot);
        }
    }
    let listed = broker
        .scatter(items, |s, i| s.list_offsets(i), ShardOp::ListOffsets)
        .await;
    let mut listed = super::resolve::in_request_order(slots, listed);
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let o = listed.next().expect("an outcome per partition");
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(o.error)
                        .with_offset(o.offset)
                        .with_timestamp(o.timestamp)
                        // leader_epoch exists from v4 on; the codec refuses it set below that.
                        .with_leader_epoch(if o.error == 0 && version >= 4 {
                            o.leader_epoch
                        } else {
                            -1
                        })
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
