//! ElectLeaders, AlterPartitionReassignments and ListPartitionReassignments: the replica-set
//! APIs, answered for what Ringtail has today. A partition has one replica, the broker that
//! owns its slot, and that broker leads it: an election is never needed, a reassignment can
//! only name that owner (a no-op), and none is ever in progress. Replica sets come with the
//! replicated WAL (issue 19). Slots move between brokers by placement (joins, leaves, failures),
//! not by these requests. Like topic changes, these are controller requests in cluster mode.

use std::collections::HashSet;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ElectLeadersRequest,
    ElectLeadersResponse, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
    TopicName,
};
use kafka_protocol::ResponseError;
use ringtail_netio::request::Header;

use super::admin::{controller_only, text};
use crate::catalog::{Snapshot, TopicMeta};
use crate::shard::Broker;

/// An error code with the message that explains it.
type Refusal = (ResponseError, String);

/// The partition's owner (the node its slot is placed on, -1 while none is), or the error
/// for a topic or partition that does not exist.
fn owner_of(
    broker: &Broker,
    snapshot: &Snapshot,
    topic: &str,
    partition: i32,
) -> Result<(i32, u32), Refusal> {
    let unknown = |what: String| Err((ResponseError::UnknownTopicOrPartition, what));
    let Some(t) = snapshot.by_name(topic) else {
        return unknown(format!("no such topic as {topic}"));
    };
    if !(0..t.partitions).contains(&partition) {
        return unknown(format!("no such partition as {topic}-{partition}"));
    }
    let slot = broker.owner(t, partition).slot;
    Ok((broker.view().owner(slot), slot))
}

/// The outcome of an election (preferred or unclean) for a partition whose only replica is
/// `owner`: not needed while it leads (Kafka's answer when the preferred leader already leads);
/// while no live broker owns the slot there is no replica to elect.
fn election(owner: i32, slot: u32, unclean: bool) -> Refusal {
    if owner >= 0 {
        return (
            ResponseError::ElectionNotNeeded,
            format!("broker {owner}, the partition's only replica, leads it"),
        );
    }
    let code = if unclean {
        ResponseError::EligibleLeadersNotAvailable
    } else {
        ResponseError::PreferredLeaderNotAvailable
    };
    (
        code,
        format!("no live broker owns slot {slot} now; it is placed on one within a lease period"),
    )
}

pub fn elect_leaders(
    broker: &Broker,
    header: &Header,
    request: ElectLeadersRequest,
) -> ElectLeadersResponse {
    let unclean = match request.election_type {
        0 => false,
        1 => true,
        other => {
            let message = format!("election type {other} is not 0 (preferred) or 1 (unclean)");
            return elect_refused(header, request, (ResponseError::InvalidRequest, message));
        }
    };
    if let Err(message) = controller_only(broker) {
        return elect_refused(header, request, (ResponseError::NotController, message));
    }
    let snapshot = broker.catalog.snapshot();
    let results = match request.topic_partitions {
        // Every partition; as Kafka, only those where an election happened are listed: none.
        None => snapshot
            .topics()
            .iter()
            .map(|t| ReplicaElectionResult::default().with_topic(topic_name(t)))
            .collect(),
        Some(topics) => topics
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|&p| {
                        let (code, message) = match owner_of(broker, &snapshot, &t.topic, p) {
                            Ok((owner, slot)) => election(owner, slot, unclean),
                            Err(refusal) => refusal,
                        };
                        partition_result(p, code, message)
                    })
                    .collect();
                ReplicaElectionResult::default()
                    .with_topic(t.topic)
                    .with_partition_result(partitions)
            })
            .collect(),
    };
    ElectLeadersResponse::default().with_replica_election_results(results)
}

fn topic_name(t: &TopicMeta) -> TopicName {
    TopicName(text(t.name.clone()))
}

fn partition_result(partition: i32, code: ResponseError, message: String) -> PartitionResult {
    PartitionResult::default()
        .with_partition_id(partition)
        .with_error_code(code.code())
        .with_error_message(Some(text(message)))
}

/// The whole request refused: the error at the top (v1 on) and at every partition named, as
/// Kafka answers a request it cannot process.
fn elect_refused(
    header: &Header,
    request: ElectLeadersRequest,
    (code, message): Refusal,
) -> ElectLeadersResponse {
    let results = request
        .topic_partitions
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|&p| partition_result(p, code, message.clone()))
                .collect();
            ReplicaElectionResult::default()
                .with_topic(t.topic)
                .with_partition_result(partitions)
        })
        .collect();
    let response = ElectLeadersResponse::default().with_replica_election_results(results);
    // v0 has no top-level error field (the codec refuses one set).
    if header.api_version >= 1 {
        response.with_error_code(code.code())
    } else {
        response
    }
}

/// The outcome of moving a partition owned by `owner` to the replicas `target` (None: cancel
/// a reassignment in progress). Checked in Kafka's order: the list itself, the replication
/// factor, then what Ringtail can do.
fn reassignment(
    owner: i32,
    target: Option<&[i32]>,
    factor_change_allowed: bool,
) -> Result<(), Refusal> {
    let Some(target) = target else {
        return Err((
            ResponseError::NoReassignmentInProgress,
            "no reassignment of this partition is in progress".into(),
        ));
    };
    let invalid = |message: String| Err((ResponseError::InvalidReplicaAssignment, message));
    if target.is_empty() {
        return invalid("the replica list is empty".into());
    }
    let mut seen = HashSet::new();
    if let Some(twice) = target.iter().find(|b| !seen.insert(**b)) {
        return invalid(format!("the replica list names broker {twice} twice"));
    }
    if !factor_change_allowed && target.len() != 1 {
        return Err((
            ResponseError::InvalidReplicationFactor,
            format!(
                "the partition has 1 replica and the request does not allow changing the replication factor to {}",
                target.len()
            ),
        ));
    }
    if owner >= 0 && target == [owner] {
        return Ok(());
    }
    let now = if owner >= 0 {
        format!("its owner, broker {owner}")
    } else {
        "the broker its slot is placed on (none is live now)".to_string()
    };
    invalid(format!(
        "a partition has one replica, {now}; replica sets come with the replicated WAL (issue 19)"
    ))
}

pub fn alter_partition_reassignments(
    broker: &Broker,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let refusal = controller_only(broker)
        .err()
        .map(|message| (ResponseError::NotController, message));
    let snapshot = broker.catalog.snapshot();
    let factor_change_allowed = request.allow_replication_factor_change;
    let responses = request
        .topics
        .into_iter()
        .map(|t| {
            let partitions =
                t.partitions
                    .into_iter()
                    .map(|p| {
                        let target: Option<Vec<i32>> =
                            p.replicas.map(|r| r.into_iter().map(|b| b.0).collect());
                        let outcome = match &refusal {
                            Some(whole) => Err(whole.clone()),
                            None => owner_of(broker, &snapshot, &t.name, p.partition_index)
                                .and_then(|(owner, _)| {
                                    reassignment(owner, target.as_deref(), factor_change_allowed)
                                }),
                        };
                        let response = ReassignablePartitionResponse::default()
                            .with_partition_index(p.partition_index);
                        match outcome {
                            Ok(()) => response,
                            Err((code, message)) => response
                                .with_error_code(code.code())
                                .with_error_message(Some(text(message))),
                        }
                    })
                    .collect();
            ReassignableTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    let response = AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(factor_change_allowed)
        .with_responses(responses);
    match refusal {
        Some((code, message)) => response
            .with_error_code(code.code())
            .with_error_message(Some(text(message))),
        None => response,
    }
}

/// No reassignment is ever in progress: an empty list, for all partitions or those named
/// (Kafka leaves unknown ones out too).
pub fn list_partition_reassignments(
    broker: &Broker,
    _request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    match controller_only(broker) {
        Ok(()) => ListPartitionReassignmentsResponse::default(),
        Err(message) => ListPartitionReassignmentsResponse::default()
            .with_error_code(ResponseError::NotController.code())
            .with_error_message(Some(text(message))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<(), Refusal>) -> Option<ResponseError> {
        r.err().map(|(code, _)| code)
    }

    #[test]
    fn an_owned_partition_needs_no_election_and_an_unowned_one_has_nobody_to_elect() {
        assert_eq!(election(2, 5, false).0, ResponseError::ElectionNotNeeded);
        assert_eq!(election(0, 5, true).0, ResponseError::ElectionNotNeeded);
        assert_eq!(
            election(-1, 5, false).0,
            ResponseError::PreferredLeaderNotAvailable
        );
        assert_eq!(
            election(-1, 5, true).0,
            ResponseError::EligibleLeadersNotAvailable
        );
    }

    #[test]
    fn only_a_reassignment_to_the_owner_itself_succeeds() {
        assert_eq!(code(reassignment(3, Some(&[3][..]), true)), None);
        assert_eq!(code(reassignment(3, Some(&[3][..]), false)), None);
        let refused = reassignment(3, Some(&[4][..]), true).unwrap_err();
        assert_eq!(refused.0, ResponseError::InvalidReplicaAssignment);
        assert!(
            refused.1.contains("issue 19") && refused.1.contains("broker 3"),
            "{}",
            refused.1
        );
        assert_eq!(
            code(reassignment(3, Some(&[3, 4][..]), true)),
            Some(ResponseError::InvalidReplicaAssignment)
        );
        // No live owner: nothing to move to, not even broker -1.
        assert_eq!(
            code(reassignment(-1, Some(&[-1][..]), true)),
            Some(ResponseError::InvalidReplicaAssignment)
        );
    }

    #[test]
    fn bad_replica_lists_and_cancels_get_kafkas_errors() {
        assert_eq!(
            code(reassignment(3, None, true)),
            Some(ResponseError::NoReassignmentInProgress)
        );
        assert_eq!(
            code(reassignment(3, Some(&[][..]), true)),
            Some(ResponseError::InvalidReplicaAssignment)
        );
        let twice = reassignment(3, Some(&[3, 3][..]), true).unwrap_err();
        assert_eq!(twice.0, ResponseError::InvalidReplicaAssignment);
        assert!(twice.1.contains("twice"), "{}", twice.1);
        assert_eq!(
            code(reassignment(3, Some(&[3, 4][..]), false)),
            Some(ResponseError::InvalidReplicationFactor)
        );
    }
}
