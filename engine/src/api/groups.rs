//! Consumer groups (classic protocol): FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups, ListGroups, DeleteGroups.
//!
//! This broker coordinates every group; inside it, a group lives on the shard owning its
//! partition of `__consumer_offsets`, and each request runs there (`Broker::on_shard`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use ringtail_netio::request::Header;

use crate::catalog::{TopicMeta, OFFSETS_TOPIC};
use crate::errors::{
    COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, FENCED_INSTANCE_ID, INVALID_GROUP_ID,
};
use crate::group::coordinator::{offsets_partition, Committed, OffsetChange};
use crate::group::offsets_log::write_offsets;
use crate::group::state::{JoinRequest, JoinResult, SyncResult};
use crate::shard::{Broker, Route};
use ringtail_shards::now_ms;

/// Longest committed-offset metadata string (Kafka's offset.metadata.max.bytes).
const OFFSET_METADATA_BYTES_MAX: usize = 4096;
const COORDINATOR_KEY_GROUP: i8 = 0;
/// OffsetFetch's answer for a partition without a commit.
const NOT_COMMITTED: Committed = Committed {
    offset: -1,
    leader_epoch: -1,
    metadata: None,
    commit_ms: -1,
};

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// The offsets topic and the shard coordinating `group`.
fn route(broker: &Broker, group: &str) -> Option<(Arc<TopicMeta>, Route)> {
    let offsets = broker.catalog.snapshot().by_name(OFFSETS_TOPIC).cloned()?;
    let shard = broker.owner(&offsets, offsets_partition(group, offsets.partitions));
    Some((offsets, shard))
}

/// Runs `f` with the coordinating slot's groups once its offsets are loaded; otherwise the
/// error code to answer.
async fn on_coordinator<T: Send + 'static>(
    broker: &Broker,
    group: &str,
    f: impl FnOnce(
            std::rc::Rc<crate::group::coordinator::Coordinator>,
            Arc<TopicMeta>,
        ) -> futures::future::LocalBoxFuture<'static, T>
        + Send
        + 'static,
) -> Result<T, i16> {
    if group.is_empty() {
        return Err(INVALID_GROUP_ID);
    }
    let Some((offsets, shard)) = route(broker, group) else {
        return Err(COORDINATOR_NOT_AVAILABLE);
    };
    broker
        .on_slot(shard, move |slot| {
            let groups = slot.coordinator.clone();
            Box::pin(async move {
                if !groups.loaded.get() {
                    return Err(COORDINATOR_LOAD_IN_PROGRESS);
                }
                Ok(f(groups, offsets).await)
            })
        })
        .await
        .unwrap_or(Err(COORDINATOR_NOT_AVAILABLE))
}

pub fn find_coordinator(
    broker: &Broker,
    header: &Header,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let view = broker.view();
    // The coordinator of a group is the target owner of its offsets partition's slot.
    let answer = |key_type: i8, key: &str| -> (i16, Option<StrBytes>, i32, StrBytes, i32) {
        let none = (-1, text(""), -1);
        if key_type != COORDINATOR_KEY_GROUP {
            let msg = Some(text("transactions are not supported yet"));
            return (COORDINATOR_NOT_AVAILABLE, msg, none.0, none.1, none.2);
        }
        let owner = route(broker, key).map_or(-1, |(_, r)| view.owner(r.slot));
        match view.member(owner) {
            Some(m) => (0, None, m.node_id, text(m.host.clone()), m.port),
            None => (COORDINATOR_NOT_AVAILABLE, None, none.0, none.1, none.2),
        }
    };
    if header.api_version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let (error, message, node, host, port) = answer(request.key_type, key.as_str());
                CoordinatorEntry::default()
                    .with_key(key)
                    .with_node_id(BrokerId(node))
                    .with_host(host)
                    .with_port(port)
                    .with_error_code(error)
                    .with_error_message(message)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let (error, message, node, host, port) = answer(request.key_type, request.key.as_str());
    FindCoordinatorResponse::default()
        .with_error_code(error)
        .with_error_message(message)
        .with_node_id(BrokerId(node))
        .with_host(host)
        .with_port(port)
}

pub async fn join_group(
    broker: &Broker,
    header: &Header,
    request: JoinGroupRequest,
) -> JoinGroupResponse {
    let group = request.group_id.to_string();
    let version = header.api_version;
    let req = JoinRequest {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.map(|s| s.to_string()),
        client_id: header.client_id.clone().unwrap_or_default(),
        client_host: String::new(),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
        supports_skip_assignment: version >= 9,
    };
    let g = group.clone();
    let result = on_coordinator(broker, &group, move |groups, _| {
        Box::pin(async move { groups.join(&g, req).await })
    })
    .await;
    let r = match result {
        Ok(r) => r,
        Err(code) => JoinResult::error(code, ""),
    };
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation)
        .with_protocol_type(if version >= 7 {
            r.protocol_type.map(text)
        } else {
            None
        })
        .with_protocol_name(r.protocol.map(text))
        .with_leader(text(r.leader))
        .with_skip_assignment(r.skip_assignment)
        .with_member_id(text(r.member_id))
        .with_members(
            r.members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(text(id))
                        .with_group_instance_id(if version >= 5 {
                            instance.map(text)
                        } else {
                            None
                        })
                        .with_metadata(metadata)
                })
                .collect(),
        )
}

pub async fn sync_group(
    broker: &Broker,
    header: &Header,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let group = request.group_id.to_string();
    let member = request.member_id.to_string();
    let instance = request.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = request.generation_id;
    let assignments: Vec<(String, Bytes)> = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let g = group.clone();
    let r = on_coordinator(broker, &group, move |groups, _| {
        Box::pin(async move {
            if groups.fenced(&g, &member, instance.as_deref()) {
                return SyncResult {
                    error: FENCED_INSTANCE_ID,
                    protocol_type: None,
                    protocol: None,
                    assignment: Bytes::new(),
                };
            }
            groups.sync(&g, &member, generation, assignments).await
        })
    })
    .await
    .unwrap_or_else(|code| SyncResult {
        error: code,
        protocol_type: None,
        protocol: None,
        assignment: Bytes::new(),
    });
    let v5 = header.api_version >= 5;
    SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_protocol_type(if v5 { r.protocol_type.map(text) } else { None })
        .with_protocol_name(if v5 { r.protocol.map(text) } else { None })
        .with_assignment(r.assignment)
}

pub async fn heartbeat(broker: &Broker, request: HeartbeatRequest) -> HeartbeatResponse {
    let group = request.group_id.to_string();
    let member = request.member_id.to_string();
    let instance = request.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = request.generation_id;
    let g = group.clone();
    let code = on_coordinator(broker, &group, move |groups, _| {
        Box::pin(async move {
            if groups.fenced(&g, &member, instance.as_deref()) {
                return FENCED_INSTANCE_ID;
            }
            groups.heartbeat(&g, &member, generation)
        })
    })
    .await
    .unwrap_or_else(|c| c);
    HeartbeatResponse::default().with_error_code(code)
}

pub async fn leave_group(
    broker: &Broker,
    header: &Header,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let group = request.group_id.to_string();
    let identities: Vec<(String, Option<String>)> = if header.api_version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let ids = identities.clone();
    let g = group.clone();
    let codes = on_coordinator(broker, &group, move |groups, _| {
        Box::pin(async move {
            let members: Vec<String> = ids
                .iter()
                .map(|(id, instance)| groups.resolve_member(&g, id, instance.as_deref()))
                .collect();
            groups.leave(&g, &members)
        })
    })
    .await;
    match codes {
        Err(code) => LeaveGroupResponse::default().with_error_code(code),
        Ok(codes) if header.api_version >= 3 => LeaveGroupResponse::default().with_members(
            identities
                .into_iter()
                .zip(codes)
                .map(|((id, instance), code)| {
                    MemberResponse::default()
                        .with_member_id(text(id))
                        .with_group_instance_id(instance.map(text))
                        .with_error_code(code)
                })
                .collect(),
        ),
        Ok(codes) => LeaveGroupResponse::default().with_error_code(codes[0]),
    }
}

/// A committed partition: its index and Ok (to write) or the error it gets.
type PartitionSlot = (i32, Result<(), i16>);

pub async fn offset_commit(broker: &Broker, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = request.group_id.to_string();
    let snapshot = broker.catalog.snapshot();
    // Per partition: Ok(change to write) or Err(code).
    let mut shape: Vec<(TopicName, Vec<PartitionSlot>)> = Vec::new();
    let mut changes: Vec<OffsetChange> = Vec::new();
    let now = now_ms();
    for t in &request.topics {
        let meta = snapshot.by_name(&t.name);
        let mut parts = Vec::new();
        for p in &t.partitions {
            let outcome = match meta {
                Some(m) if (0..m.partitions).contains(&p.partition_index) => {
                    if p.committed_metadata
                        .as_ref()
                        .is_some_and(|s| s.len() > OFFSET_METADATA_BYTES_MAX)
                    {
                        Err(ResponseError::OffsetMetadataTooLarge.code())
                    } else {
                        changes.push((
                            t.name.to_string(),
                            p.partition_index,
                            Some(Committed {
                                offset: p.committed_offset,
                                leader_epoch: p.committed_leader_epoch,
                                metadata: p.committed_metadata.as_ref().map(|s| s.to_string()),
                                commit_ms: now,
                            }),
                        ));
                        Ok(())
                    }
                }
                _ => Err(ResponseError::UnknownTopicOrPartition.code()),
            };
            parts.push((p.partition_index, outcome));
        }
        shape.push((t.name.clone(), parts));
    }
    let member = request.member_id.to_string();
    let instance = request.group_instance_id.as_ref().map(|s| s.to_string());
    let generation = request.generation_id_or_member_epoch;
    let g = group.clone();
    let code = on_coordinator(broker, &group, move |groups, offsets| {
        Box::pin(async move {
            if groups.fenced(&g, &member, instance.as_deref()) {
                return FENCED_INSTANCE_ID;
            }
            write_offsets(&groups, &offsets, &g, Some((&member, generation)), changes).await
        })
    })
    .await
    .unwrap_or_else(|c| c);
    let topics = shape
        .into_iter()
        .map(|(name, parts)| {
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .map(|(index, outcome)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(index)
                                .with_error_code(outcome.err().unwrap_or(code))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// Committed offsets of one group: (topic, partition, committed) for the wanted partitions
/// (all of the group's when None), or the group's error.
async fn fetch_group_offsets(
    broker: &Broker,
    group: String,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<(String, i32, Option<Committed>)>, i16> {
    let g = group.clone();
    on_coordinator(broker, &group, move |groups, _| {
        Box::pin(async move { groups.offsets(&g, wanted) })
    })
    .await
}

/// A topic's partitions and their committed offsets.
type TopicOffsets = (String, Vec<(i32, Option<Committed>)>);

/// The partitions' rows grouped by topic, in first-seen order.
fn by_topic(rows: Vec<(String, i32, Option<Committed>)>) -> Vec<TopicOffsets> {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, Vec<(i32, Option<Committed>)>> = BTreeMap::new();
    for (t, p, c) in rows {
        if !map.contains_key(&t) {
            order.push(t.clone());
        }
        map.entry(t).or_default().push((p, c));
    }
    order
        .into_iter()
        .map(|t| {
            let v = map.remove(&t).unwrap_or_default();
            (t, v)
        })
        .collect()
}

pub async fn offset_fetch(
    broker: &Broker,
    header: &Header,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    if header.api_version >= 8 {
        let mut groups = Vec::new();
        // Each group once: a group named n times would answer all its offsets n times.
        let mut seen = std::collections::HashSet::new();
        for g in request.groups {
            if !seen.insert(g.group_id.clone()) {
                continue;
            }
            let wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.to_string(), t.partition_indexes))
                    .collect()
            });
            let group = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            groups.push(
                match fetch_group_offsets(broker, g.group_id.to_string(), wanted).await {
                    Err(code) => group.with_error_code(code),
                    Ok(rows) => group.with_topics(
                        by_topic(rows)
                            .into_iter()
                            .map(|(t, parts)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(text(t)))
                                    .with_partitions(
                                        parts
                                            .into_iter()
                                            .map(|(p, c)| {
                                                let c = c.unwrap_or(NOT_COMMITTED);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(c.offset)
                                                    .with_committed_leader_epoch(c.leader_epoch)
                                                    .with_metadata(Some(text(
                                                        c.metadata.unwrap_or_default(),
                                                    )))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
                },
            );
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = request.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect()
    });
    match fetch_group_offsets(broker, request.group_id.to_string(), wanted).await {
        Err(code) => OffsetFetchResponse::default().with_error_code(code),
        Ok(rows) => OffsetFetchResponse::default().with_topics(
            by_topic(rows)
                .into_iter()
                .map(|(t, parts)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(text(t)))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, c)| {
                                    let c = c.unwrap_or(NOT_COMMITTED);
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(c.offset)
                                        .with_committed_leader_epoch(if header.api_version >= 5 {
                                            c.leader_epoch
                                        } else {
                                            -1
                                        })
                                        .with_metadata(Some(text(c.metadata.unwrap_or_default())))
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    }
}

pub async fn describe_groups(
    broker: &Broker,
    header: &Header,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut groups = Vec::new();
    for id in request.groups {
        let g = id.to_string();
        let view = on_coordinator(broker, &id, move |groups, _| {
            Box::pin(async move { groups.describe(&g) })
        })
        .await;
        let described = DescribedGroup::default().with_group_id(id.clone());
        groups.push(match view {
            Err(code) => described.with_error_code(code),
            Ok(None) => described.with_group_state(text("Dead")),
            Ok(Some(v)) => described
                .with_group_state(text(v.state))
                .with_protocol_type(text(v.protocol_type))
                .with_protocol_data(text(v.protocol))
                .with_members(
                    v.members
                        .into_iter()
                        .map(|(member, instance, client, host, metadata, assignment)| {
                            DescribedGroupMember::default()
                                .with_member_id(text(member))
                                .with_group_instance_id(if header.api_version >= 4 {
                                    instance.map(text)
                                } else {
                                    None
                                })
                                .with_client_id(text(client))
                                .with_client_host(text(host))
                                .with_member_metadata(metadata)
                                .with_member_assignment(assignment)
                        })
                        .collect(),
                ),
        });
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

pub async fn list_groups(
    broker: &Broker,
    header: &Header,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    let mut all = Vec::new();
    for slot in 0..broker.slots {
        let route = Route {
            shard: slot as usize % broker.shards,
            slot,
        };
        let listed = broker
            .on_slot(route, |slot| {
                Box::pin(async move { slot.coordinator.list() })
            })
            .await
            .unwrap_or_default();
        all.extend(listed);
    }
    all.sort();
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_string())
        .collect();
    let groups = all
        .into_iter()
        .filter(|(_, _, state)| states.is_empty() || states.iter().any(|s| s == state))
        .map(|(id, protocol_type, state)| {
            ListedGroup::default()
                .with_group_id(GroupId(text(id)))
                .with_protocol_type(text(protocol_type))
                .with_group_state(if header.api_version >= 4 {
                    text(state)
                } else {
                    text("")
                })
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub async fn delete_groups(broker: &Broker, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::new();
    for id in request.groups_names {
        let g = id.to_string();
        let code = on_coordinator(broker, &id, move |groups, offsets| {
            Box::pin(async move {
                match groups.deletable(&g) {
                    Err(code) => code,
                    Ok(held) => {
                        let tombstones = held.iter().map(|(t, p)| (t.clone(), *p, None)).collect();
                        let code = write_offsets(&groups, &offsets, &g, None, tombstones).await;
                        if code == 0 {
                            groups.forget(&g, &held);
                        }
                        code
                    }
                }
            })
        })
        .await
        .unwrap_or_else(|c| c);
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

pub async fn offset_delete(broker: &Broker, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    use kafka_protocol::messages::offset_delete_response::{
        OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
    };
    let group = request.group_id.to_string();
    let topics: Vec<(String, Vec<i32>)> = request
        .topics
        .iter()
        .map(|t| {
            (
                t.name.to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let wanted = topics.clone();
    let g = group.clone();
    let result = on_coordinator(broker, &group, move |groups, offsets| {
        Box::pin(async move {
            let names: Vec<String> = wanted.iter().map(|(t, _)| t.clone()).collect();
            let codes = groups.offsets_deletable(&g, &names)?;
            let tombstones: Vec<OffsetChange> = wanted
                .iter()
                .zip(&codes)
                .filter(|(_, code)| **code == 0)
                .flat_map(|((t, ps), _)| ps.iter().map(move |p| (t.clone(), *p, None)))
                .collect();
            match write_offsets(&groups, &offsets, &g, None, tombstones).await {
                0 => Ok(codes),
                e => Err(e),
            }
        })
    })
    .await;
    let codes = match result {
        Ok(Ok(codes)) => codes,
        Ok(Err(code)) | Err(code) => {
            return OffsetDeleteResponse::default().with_error_code(code);
        }
    };
    OffsetDeleteResponse::default().with_topics(
        topics
            .into_iter()
            .zip(codes)
            .map(|((t, ps), code)| {
                OffsetDeleteResponseTopic::default()
                    .with_name(TopicName(text(t)))
                    .with_partitions(
                        ps.into_iter()
                            .map(|p| {
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}
