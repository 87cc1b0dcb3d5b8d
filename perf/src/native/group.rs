//! Classic consumer-group membership for the native driver: FindCoordinator, JoinGroup (the
//! `consumer` protocol with a round-robin assignment made by the leader), SyncGroup, Heartbeat,
//! LeaveGroup. Offsets are not committed: a run's consumers start at the end of the log, and a
//! rebalance in the middle of a run shows as missing messages (which a healthy run never has).

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::cluster::{topic_name, Cluster};
use super::conn::Conn;

const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;

pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(20);
const PROTOCOL: &str = "roundrobin";

pub struct Member {
    coordinator: Arc<Conn>,
    group: GroupId,
    /// The subscribed topics, each with `partitions` partitions; a slot is
    /// `topic index × partitions + partition`.
    topics: Vec<String>,
    partitions: i32,
    member_id: StrBytes,
    generation: i32,
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// A consumer-protocol message: its version, then the body at that version.
fn versioned<T: Encodable>(version: i16, body: &T) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    body.encode(&mut buf, version)?;
    Ok(buf.freeze())
}

/// The slots of `topics` (each with `partitions` partitions) in a member's assignment.
pub fn assigned_slots(
    mut bytes: Bytes,
    topics: &[String],
    partitions: i32,
) -> anyhow::Result<Vec<usize>> {
    if bytes.len() < 2 {
        return Ok(Vec::new()); // an empty assignment
    }
    let version = bytes.get_i16().clamp(0, 3);
    let a = ConsumerProtocolAssignment::decode(&mut bytes, version)?;
    let mut slots = Vec::new();
    for t in a.assigned_partitions {
        if let Some(ti) = topics.iter().position(|n| n.as_str() == t.topic.as_str()) {
            slots.extend(
                t.partitions
                    .into_iter()
                    .filter(|p| (0..partitions).contains(p))
                    .map(|p| ti * partitions as usize + p as usize),
            );
        }
    }
    Ok(slots)
}

/// Round-robin: the members sorted by id, slot s to member s mod n.
pub fn round_robin(members: &[StrBytes], slots: usize) -> Vec<(StrBytes, Vec<usize>)> {
    let mut ids: Vec<StrBytes> = members.to_vec();
    ids.sort();
    let n = ids.len().max(1);
    ids.iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), (0..slots).filter(|s| s % n == i).collect()))
        .collect()
}

/// A member's assignment message for `slots`.
fn assignment(topics: &[String], partitions: i32, slots: &[usize]) -> ConsumerProtocolAssignment {
    let per_topic = topics
        .iter()
        .enumerate()
        .filter_map(|(ti, name)| {
            let mine: Vec<i32> = slots
                .iter()
                .filter(|s| *s / partitions as usize == ti)
                .map(|s| (s % partitions as usize) as i32)
                .collect();
            (!mine.is_empty()).then(|| {
                TopicPartition::default()
                    .with_topic(topic_name(name))
                    .with_partitions(mine)
            })
        })
        .collect();
    ConsumerProtocolAssignment::default().with_assigned_partitions(per_topic)
}

impl Member {
    /// Joins `group` and returns the member with its first assignment.
    pub async fn join(
        cluster: &Cluster,
        group: &str,
        topics: &[String],
        partitions: i32,
    ) -> anyhow::Result<(Member, Vec<usize>)> {
        let mut m = Member {
            coordinator: find_coordinator(cluster, group).await?,
            group: GroupId(s(group)),
            topics: topics.to_vec(),
            partitions,
            member_id: StrBytes::default(),
            generation: -1,
        };
        let assignment = m.rejoin(cluster).await?;
        Ok((m, assignment))
    }

    /// Joins (again) and returns the new assignment.
    pub async fn rejoin(&mut self, cluster: &Cluster) -> anyhow::Result<Vec<usize>> {
        let subscription = versioned(
            0,
            &ConsumerProtocolSubscription::default()
                .with_topics(self.topics.iter().map(|t| s(t)).collect()),
        )?;
        for _ in 0..100 {
            let join = JoinGroupRequest::default()
                .with_group_id(self.group.clone())
                .with_session_timeout_ms(SESSION_TIMEOUT.as_millis() as i32)
                .with_rebalance_timeout_ms(REBALANCE_TIMEOUT.as_millis() as i32)
                .with_member_id(self.member_id.clone())
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(s(PROTOCOL))
                    .with_metadata(subscription.clone())]);
            let (_, joined): (_, JoinGroupResponse) = self
                .coordinator
                .call(ApiKey::JoinGroup, 1..=7, &join)
                .await?;
            match joined.error_code {
                0 => {}
                MEMBER_ID_REQUIRED => {
                    self.member_id = joined.member_id;
                    continue;
                }
                UNKNOWN_MEMBER_ID | ILLEGAL_GENERATION => {
                    self.member_id = StrBytes::default();
                    continue;
                }
                COORDINATOR_LOAD_IN_PROGRESS
                | COORDINATOR_NOT_AVAILABLE
                | NOT_COORDINATOR
                | REBALANCE_IN_PROGRESS => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.coordinator = find_coordinator(cluster, self.group.as_str()).await?;
                    continue;
                }
                e => bail!("joining group {}: error {e}", self.group.as_str()),
            }
            self.member_id = joined.member_id.clone();
            self.generation = joined.generation_id;
            let assignments = if joined.leader == joined.member_id {
                let ids: Vec<StrBytes> =
                    joined.members.iter().map(|m| m.member_id.clone()).collect();
                let slots = self.topics.len() * self.partitions as usize;
                round_robin(&ids, slots)
                    .into_iter()
                    .map(|(id, mine)| {
                        let a = assignment(&self.topics, self.partitions, &mine);
                        Ok(SyncGroupRequestAssignment::default()
                            .with_member_id(id)
                            .with_assignment(versioned(0, &a)?))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            } else {
                Vec::new()
            };
            let v = self.coordinator.version(ApiKey::SyncGroup, 0..=5)?;
            let mut sync = SyncGroupRequest::default()
                .with_group_id(self.group.clone())
                .with_generation_id(self.generation)
                .with_member_id(self.member_id.clone())
                .with_assignments(assignments);
            if v >= 5 {
                sync.protocol_type = Some(s("consumer"));
                sync.protocol_name = Some(s(PROTOCOL));
            }
            let synced: SyncGroupResponse = self
                .coordinator
                .call_at(ApiKey::SyncGroup, v, &sync)
                .await?;
            match synced.error_code {
                0 => return assigned_slots(synced.assignment, &self.topics, self.partitions),
                REBALANCE_IN_PROGRESS | UNKNOWN_MEMBER_ID | ILLEGAL_GENERATION => continue,
                e => bail!("syncing group {}: error {e}", self.group.as_str()),
            }
        }
        bail!(
            "group {}: no stable membership after 100 joins",
            self.group.as_str()
        )
    }

    /// Heartbeats; true when the group is rebalancing and this member must rejoin.
    pub async fn heartbeat(&self) -> anyhow::Result<bool> {
        let req = HeartbeatRequest::default()
            .with_group_id(self.group.clone())
            .with_generation_id(self.generation)
            .with_member_id(self.member_id.clone());
        let (_, answer): (_, HeartbeatResponse) = self
            .coordinator
            .call(ApiKey::Heartbeat, 0..=4, &req)
            .await?;
        match answer.error_code {
            0 => Ok(false),
            REBALANCE_IN_PROGRESS | UNKNOWN_MEMBER_ID | ILLEGAL_GENERATION => Ok(true),
            e => bail!("heartbeat in group {}: error {e}", self.group.as_str()),
        }
    }

    pub async fn leave(&self) -> anyhow::Result<()> {
        let v = self.coordinator.version(ApiKey::LeaveGroup, 0..=5)?;
        let mut req = LeaveGroupRequest::default().with_group_id(self.group.clone());
        if v >= 3 {
            req.members = vec![MemberIdentity::default().with_member_id(self.member_id.clone())];
        } else {
            req.member_id = self.member_id.clone();
        }
        let _: LeaveGroupResponse = self
            .coordinator
            .call_at(ApiKey::LeaveGroup, v, &req)
            .await?;
        Ok(())
    }
}

async fn find_coordinator(cluster: &Cluster, group: &str) -> anyhow::Result<Arc<Conn>> {
    for _ in 0..100 {
        let req = FindCoordinatorRequest::default().with_key(s(group));
        let (_, answer): (_, FindCoordinatorResponse) = cluster
            .any()
            .call(ApiKey::FindCoordinator, 0..=3, &req)
            .await?;
        match answer.error_code {
            0 => {
                let addr = format!("{}:{}", answer.host, answer.port);
                return cluster.broker_at(answer.node_id, addr).await;
            }
            COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            e => bail!("finding the coordinator of group {group}: error {e}"),
        }
    }
    bail!("group {group}: no coordinator after 100 attempts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_gives_every_partition_to_exactly_one_member() {
        let members = [s("b"), s("a"), s("c")];
        let a = round_robin(&members, 8);
        assert_eq!(a[0], (s("a"), vec![0, 3, 6]));
        assert_eq!(a[1], (s("b"), vec![1, 4, 7]));
        assert_eq!(a[2], (s("c"), vec![2, 5]));
        // Two topics of 4 partitions: slots 1 and 6 are t0/1 and t1/2.
        let topics = vec!["t0".to_string(), "t1".to_string()];
        let bytes = versioned(0, &assignment(&topics, 4, &[1, 6])).unwrap();
        assert_eq!(assigned_slots(bytes, &topics, 4).unwrap(), vec![1, 6]);
        let foreign = versioned(
            0,
            &ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
                TopicPartition::default()
                    .with_topic(topic_name("other"))
                    .with_partitions(vec![0]),
            ]),
        )
        .unwrap();
        assert!(assigned_slots(foreign, &topics, 4).unwrap().is_empty());
        assert!(assigned_slots(Bytes::new(), &topics, 4).unwrap().is_empty());
    }
}
