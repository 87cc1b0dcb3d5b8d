//! DescribeTopicPartitions (API 75, KIP-966): what `kafka-topics.sh --describe` asks since
//! Kafka 3.7. Metadata's partitions, paged by a cursor so that a topic of many partitions comes
//! in bounded answers. Leader, replicas and ISR are what Metadata reports: a partition has one
//! owner, so it has no eligible leader replicas and none offline.

use std::collections::BTreeSet;
use std::ops::Range;

use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName,
};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::admin::text;
use crate::catalog::{is_internal_topic, validate_name, TopicMeta};
use crate::cluster::view::View;
use crate::shard::Broker;

/// Most partitions one answer describes, whatever the request asks: Kafka's
/// `max.request.partition.size.limit` default.
const PARTITIONS_PER_RESPONSE_MAX: i32 = 2000;

/// One topic's share of a page: the partition indexes it describes, or None for a topic that
/// does not exist.
#[derive(Debug, PartialEq)]
struct Share<'a> {
    name: &'a str,
    partitions: Option<Range<i32>>,
}

#[derive(Debug, PartialEq)]
struct Page<'a> {
    shares: Vec<Share<'a>>,
    /// Where the next page starts (topic, partition), when this one could not hold the rest.
    next: Option<(&'a str, i32)>,
}

/// Pages `topics` (sorted by name, each with its partition count, None if it does not exist)
/// from `cursor` (topic, partition) on, at most `limit` partitions, as Kafka pages them: topics
/// before the cursor's are skipped, the cursor's topic starts at the cursor's partition, a topic
/// that does not exist takes no room, and a page that ends exactly at a topic's end points the
/// next cursor at the next topic's partition 0.
fn page<'a>(topics: &[(&'a str, Option<i32>)], cursor: (&str, i32), limit: i32) -> Page<'a> {
    let mut remaining = limit;
    let mut shares = Vec::new();
    for &(name, count) in topics.iter().filter(|(name, _)| *name >= cursor.0) {
        if remaining == 0 {
            return Page {
                shares,
                next: Some((name, 0)),
            };
        }
        let Some(count) = count else {
            shares.push(Share {
                name,
                partitions: None,
            });
            continue;
        };
        let first = if name == cursor.0 { cursor.1 } else { 0 };
        // A cursor beyond the topic's end describes none of it.
        let end = count.min(first.saturating_add(remaining)).max(first);
        shares.push(Share {
            name,
            partitions: Some(first..end),
        });
        if end < count {
            return Page {
                shares,
                next: Some((name, end)),
            };
        }
        remaining -= end - first;
    }
    Page { shares, next: None }
}

pub fn describe_topic_partitions(
    broker: &Broker,
    request: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let snapshot = broker.catalog.snapshot();
    let all = request.topics.is_empty();
    // A set: each topic once, in name order (the order the cursor walks).
    let names: BTreeSet<String> = if all {
        snapshot.topics().iter().map(|t| t.name.clone()).collect()
    } else {
        request.topics.iter().map(|t| t.name.to_string()).collect()
    };
    let cursor = request
        .cursor
        .as_ref()
        .map(|c| (c.topic_name.to_string(), c.partition_index));
    if let Some((topic, partition)) = &cursor {
        // As Kafka: a cursor must point into the request's topics, at a real partition index.
        if *partition < 0 || (!all && !names.contains(topic)) {
            return refused(&request);
        }
    }
    let topics: Vec<(&str, Option<i32>)> = names
        .iter()
        .map(|n| (n.as_str(), snapshot.by_name(n).map(|t| t.partitions)))
        .collect();
    let start = cursor.as_ref().map_or(("", 0), |(t, p)| (t.as_str(), *p));
    let limit = request
        .response_partition_limit
        .clamp(1, PARTITIONS_PER_RESPONSE_MAX);
    let page = page(&topics, start, limit);
    let view = broker.view();
    let described = page
        .shares
        .into_iter()
        .map(
            |share| match (share.partitions, snapshot.by_name(share.name)) {
                (Some(range), Some(t)) => topic_entry(broker, &view, t, range),
                _ => missing(share.name),
            },
        )
        .collect();
    DescribeTopicPartitionsResponse::default()
        .with_topics(described)
        .with_next_cursor(page.next.map(|(topic, partition)| {
            Cursor::default()
                .with_topic_name(TopicName(text(topic)))
                .with_partition_index(partition)
        }))
}

fn topic_entry(
    broker: &Broker,
    view: &View,
    t: &TopicMeta,
    partitions: Range<i32>,
) -> DescribeTopicPartitionsResponseTopic {
    let partitions = partitions
        .map(|i| {
            let leader = super::metadata::leader(broker, view, t, i);
            DescribeTopicPartitionsResponsePartition::default()
                .with_error_code(leader.error)
                .with_partition_index(i)
                .with_leader_id(leader.node)
                .with_leader_epoch(leader.epoch)
                .with_replica_nodes(leader.replicas)
                .with_isr_nodes(leader.isr)
                .with_eligible_leader_replicas(Some(Vec::new()))
                .with_last_known_elr(Some(Vec::new()))
        })
        .collect();
    DescribeTopicPartitionsResponseTopic::default()
        .with_name(Some(TopicName(text(t.name.clone()))))
        .with_topic_id(t.id)
        .with_is_internal(t.is_internal())
        .with_partitions(partitions)
}

fn missing(name: &str) -> DescribeTopicPartitionsResponseTopic {
    let error = match validate_name(name) {
        Ok(()) => ResponseError::UnknownTopicOrPartition,
        Err(_) => ResponseError::InvalidTopicException,
    };
    DescribeTopicPartitionsResponseTopic::default()
        .with_error_code(error.code())
        .with_name(Some(TopicName(text(name))))
        .with_topic_id(Uuid::nil())
        .with_is_internal(is_internal_topic(name))
}

/// INVALID_REQUEST for every topic the request names (Kafka's answer to a bad cursor).
fn refused(request: &DescribeTopicPartitionsRequest) -> DescribeTopicPartitionsResponse {
    let topics = request
        .topics
        .iter()
        .map(|t| {
            DescribeTopicPartitionsResponseTopic::default()
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_name(Some(t.name.clone()))
                .with_topic_id(Uuid::nil())
        })
        .collect();
    DescribeTopicPartitionsResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(name: &str, partitions: Option<Range<i32>>) -> Share<'_> {
        Share { name, partitions }
    }

    const TOPICS: &[(&str, Option<i32>)] = &[("a", Some(3)), ("b", None), ("c", Some(2))];

    #[test]
    fn a_page_that_holds_everything_has_no_next_cursor() {
        let p = page(TOPICS, ("", 0), 2000);
        assert_eq!(
            p.shares,
            vec![
                share("a", Some(0..3)),
                share("b", None),
                share("c", Some(0..2))
            ]
        );
        assert_eq!(p.next, None);
    }

    #[test]
    fn a_topic_larger_than_the_limit_is_cut_and_resumed_at_the_cursor() {
        let first = page(TOPICS, ("", 0), 2);
        assert_eq!(first.shares, vec![share("a", Some(0..2))]);
        assert_eq!(first.next, Some(("a", 2)));
        let second = page(TOPICS, ("a", 2), 2);
        // "b" does not exist: it is answered and takes no room.
        assert_eq!(
            second.shares,
            vec![
                share("a", Some(2..3)),
                share("b", None),
                share("c", Some(0..1))
            ]
        );
        assert_eq!(second.next, Some(("c", 1)));
        let third = page(TOPICS, ("c", 1), 2);
        assert_eq!(third.shares, vec![share("c", Some(1..2))]);
        assert_eq!(third.next, None);
    }

    #[test]
    fn a_page_ending_at_a_topics_end_points_at_the_next_topic() {
        let p = page(TOPICS, ("", 0), 3);
        assert_eq!(p.shares, vec![share("a", Some(0..3))]);
        assert_eq!(p.next, Some(("b", 0)));
    }

    #[test]
    fn a_cursor_past_a_topics_end_describes_none_of_it() {
        let p = page(TOPICS, ("c", 7), 10);
        assert_eq!(p.shares, vec![share("c", Some(7..7))]);
        assert_eq!(p.next, None);
    }

    #[test]
    fn the_limit_bounds_every_page_however_large_the_cursor_partition() {
        let p = page(&[("big", Some(i32::MAX))], ("big", i32::MAX - 1), 2000);
        assert_eq!(p.shares, vec![share("big", Some(i32::MAX - 1..i32::MAX))]);
        assert_eq!(p.next, None);
    }
}
