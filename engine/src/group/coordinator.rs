//! Group coordination on a shard — the coordinator table: the groups whose offsets partition
//! this shard owns, their membership state machines ([`Group`]), the requests waiting on them,
//! and their committed offsets as last made durable. `offsets_log.rs` writes and replays those
//! offsets as records of the internal topic `__consumer_offsets`.
//!
//! Membership is not persisted: after a restart members rejoin (Kafka's clients do so on
//! UNKNOWN_MEMBER_ID).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use bytes::Bytes;
use futures::channel::oneshot;

use crate::errors::{
    GROUP_ID_NOT_FOUND, GROUP_SUBSCRIBED_TO_TOPIC, NONE, NON_EMPTY_GROUP, UNKNOWN_MEMBER_ID,
};
use crate::group::compaction::Compaction;
use crate::group::state::{Answer, Completed, Group, JoinRequest, JoinResult, SyncResult};
use crate::partition::store::ShardState;
use ringtail_shards::now_ms;

/// The offsets partition a group's records go to; the shard owning it coordinates the group.
pub fn offsets_partition(group: &str, partitions: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in group.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % partitions.max(1) as u32) as i32
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

/// One offset change: (topic, partition, new value or deletion).
pub type OffsetChange = (String, i32, Option<Committed>);

/// A group, the joins and syncs waiting for its answers, and its committed offsets.
struct Entry {
    group: Group,
    joins: HashMap<String, oneshot::Sender<JoinResult>>,
    syncs: HashMap<String, oneshot::Sender<SyncResult>>,
    offsets: BTreeMap<(String, i32), Committed>,
}

impl Entry {
    fn deliver(&mut self, completed: Vec<Completed>) {
        for c in completed {
            match c {
                Completed::Join(id, r) => {
                    if let Some(tx) = self.joins.remove(&id) {
                        let _ = tx.send(r);
                    }
                }
                Completed::Sync(id, r) => {
                    if let Some(tx) = self.syncs.remove(&id) {
                        let _ = tx.send(r);
                    }
                }
            }
        }
        // Requests of members that are gone end (their handlers answer UNKNOWN_MEMBER_ID).
        let group = &self.group;
        self.joins.retain(|id, _| group.member(id).is_some());
        self.syncs.retain(|id, _| group.member(id).is_some());
    }
}

/// What DescribeGroups shows of a group.
pub struct GroupView {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment)
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

/// The groups one slot coordinates, over that slot's partitions (which hold the offsets
/// topic's partitions the slot owns).
pub struct Coordinator {
    pub partitions: Rc<ShardState>,
    groups: RefCell<HashMap<String, Entry>>,
    /// The shard's offsets partitions have been replayed.
    pub loaded: Cell<bool>,
    initial_delay_ms: u64,
    /// When the offsets log is compacted; commits and a compaction take turns.
    pub(super) compaction: Compaction,
}

impl Coordinator {
    pub fn new(
        partitions: Rc<ShardState>,
        initial_delay_ms: u64,
        compact_after_records: u64,
    ) -> Coordinator {
        Coordinator {
            partitions,
            groups: RefCell::new(HashMap::new()),
            loaded: Cell::new(false),
            initial_delay_ms,
            compaction: Compaction::new(compact_after_records),
        }
    }

    /// How many committed offsets the groups hold.
    pub(super) fn live_offsets_count(&self) -> usize {
        self.groups.borrow().values().map(|e| e.offsets.len()).sum()
    }

    /// Every live offset of the groups on `partition` (of `partitions`).
    pub(super) fn snapshot(
        &self,
        partition: i32,
        partitions: i32,
    ) -> Vec<(String, Vec<OffsetChange>)> {
        self.groups
            .borrow()
            .iter()
            .filter(|(g, e)| !e.offsets.is_empty() && offsets_partition(g, partitions) == partition)
            .map(|(g, e)| {
                let changes = e
                    .offsets
                    .iter()
                    .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                    .collect();
                (g.clone(), changes)
            })
            .collect()
    }

    fn with_group<T>(&self, id: &str, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut groups = self.groups.borrow_mut();
        let entry = groups.entry(id.to_string()).or_insert_with(|| Entry {
            group: Group::new(id, self.initial_delay_ms),
            joins: HashMap::new(),
            syncs: HashMap::new(),
            offsets: BTreeMap::new(),
        });
        f(entry)
    }

    pub async fn join(&self, group: &str, req: JoinRequest) -> JoinResult {
        let member = req.member_id.clone();
        let waiting = self.with_group(group, |e| {
            let (answer, completed) = e.group.join(now_ms() as u64, req);
            let r = match answer {
                Answer::Now(r) => Ok(r),
                Answer::Later => {
                    // The member id may have been assigned by this join (static members).
                    let id = if member.is_empty() {
                        e.group
                            .members
                            .values()
                            .last()
                            .map(|m| m.id.clone())
                            .unwrap_or_default()
                    } else {
                        member.clone()
                    };
                    let (tx, rx) = oneshot::channel();
                    e.joins.insert(id, tx);
                    Err(rx)
                }
            };
            e.deliver(completed);
            r
        });
        match waiting {
            Ok(r) => r,
            Err(rx) => rx
                .await
                .unwrap_or_else(|_| JoinResult::error(UNKNOWN_MEMBER_ID, &member)),
        }
    }

    pub async fn sync(
        &self,
        group: &str,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncResult {
        let waiting = self.with_group(group, |e| {
            let (answer, completed) =
                e.group
                    .sync(now_ms() as u64, member, generation, assignments);
            let r = match answer {
                Answer::Now(r) => Ok(r),
                Answer::Later => {
                    let (tx, rx) = oneshot::channel();
                    e.syncs.insert(member.to_string(), tx);
                    Err(rx)
                }
            };
            e.deliver(completed);
            r
        });
        match waiting {
            Ok(r) => r,
            // A dropped sender: the member was removed while it waited.
            Err(rx) => rx.await.unwrap_or(SyncResult {
                error: UNKNOWN_MEMBER_ID,
                protocol_type: None,
                protocol: None,
                assignment: Bytes::new(),
            }),
        }
    }

    /// See [`Group::is_fenced`].
    pub fn fenced(&self, group: &str, member: &str, instance: Option<&str>) -> bool {
        self.groups
            .borrow()
            .get(group)
            .is_some_and(|e| e.group.is_fenced(member, instance))
    }

    pub fn heartbeat(&self, group: &str, member: &str, generation: i32) -> i16 {
        self.with_group(group, |e| {
            e.group.heartbeat(now_ms() as u64, member, generation)
        })
    }

    pub fn leave(&self, group: &str, members: &[String]) -> Vec<i16> {
        self.with_group(group, |e| {
            let (codes, completed) = e.group.leave(now_ms() as u64, members);
            e.deliver(completed);
            codes
        })
    }

    /// Session expiry and rebalance deadlines of every group.
    pub fn tick(&self) {
        let now = now_ms() as u64;
        let mut groups = self.groups.borrow_mut();
        for e in groups.values_mut() {
            if !e.group.is_idle() {
                let completed = e.group.tick(now);
                e.deliver(completed);
            }
        }
        // Forget groups with neither members nor offsets.
        groups.retain(|_, e| !e.group.is_idle() || !e.offsets.is_empty());
    }

    pub fn check_commit(&self, group: &str, member: &str, generation: i32) -> i16 {
        self.with_group(group, |e| e.group.check_commit(member, generation))
    }

    /// Applies durable offset changes (after a commit, or while replaying the log).
    pub fn apply(&self, group: &str, changes: Vec<OffsetChange>) {
        self.with_group(group, |e| {
            for (topic, partition, value) in changes {
                match value {
                    Some(v) => e.offsets.insert((topic, partition), v),
                    None => e.offsets.remove(&(topic, partition)),
                };
            }
        })
    }

    /// Every committed offset of the groups this shard coordinates (for metrics), at most `limit`.
    pub fn all_committed(&self, limit: usize) -> Vec<crate::metrics::CommittedOffset> {
        let groups = self.groups.borrow();
        groups
            .iter()
            .flat_map(|(g, e)| {
                e.offsets
                    .iter()
                    .map(move |((t, p), c)| crate::metrics::CommittedOffset {
                        group: g.clone(),
                        topic: t.clone(),
                        partition: *p,
                        offset: c.offset,
                    })
            })
            .take(limit)
            .collect()
    }

    /// Committed offsets: of the given (topic, partitions), or all of the group's.
    pub fn offsets(
        &self,
        group: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, i32, Option<Committed>)> {
        let groups = self.groups.borrow();
        let offsets = groups.get(group).map(|e| &e.offsets);
        // Each partition once: one named n times would answer its metadata (up to
        // OFFSET_METADATA_BYTES_MAX) n times.
        let mut seen = std::collections::HashSet::new();
        match wanted {
            Some(wanted) => wanted
                .into_iter()
                .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
                .filter(|tp| seen.insert(tp.clone()))
                .map(|(t, p)| {
                    let c = offsets.and_then(|o| o.get(&(t.clone(), p)).cloned());
                    (t, p, c)
                })
                .collect(),
            None => offsets
                .into_iter()
                .flatten()
                .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                .collect(),
        }
    }

    pub fn describe(&self, group: &str) -> Option<GroupView> {
        let groups = self.groups.borrow();
        let g = &groups.get(group)?.group;
        let protocol = g.protocol.clone().unwrap_or_default();
        Some(GroupView {
            state: g.reported_state().name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            members: g
                .members
                .values()
                .map(|m| {
                    let meta = m.metadata_for(&protocol);
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.client_id.clone(),
                        m.client_host.clone(),
                        meta,
                        m.assignment.clone(),
                    )
                })
                .collect(),
            protocol,
        })
    }

    /// (group, protocol type, state) of every group this shard knows.
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        self.groups
            .borrow()
            .iter()
            .map(|(id, e)| {
                (
                    id.clone(),
                    e.group.protocol_type.clone().unwrap_or_default(),
                    e.group.reported_state().name(),
                )
            })
            .collect()
    }

    /// LeaveGroup v3+ may name a static member by instance id alone.
    pub fn resolve_member(&self, group: &str, member_id: &str, instance: Option<&str>) -> String {
        if !member_id.is_empty() {
            return member_id.to_string();
        }
        let groups = self.groups.borrow();
        groups
            .get(group)
            .and_then(|e| {
                e.group
                    .members
                    .values()
                    .find(|m| m.instance_id.is_some() && m.instance_id.as_deref() == instance)
            })
            .map(|m| m.id.clone())
            .unwrap_or_default()
    }

    /// A deleted group is gone once its offsets' tombstones are durable — unless a member
    /// joined meanwhile (then only the tombstoned offsets go).
    pub fn forget(&self, group: &str, tombstoned: &[(String, i32)]) {
        let mut groups = self.groups.borrow_mut();
        if let Some(e) = groups.get_mut(group) {
            for key in tombstoned {
                e.offsets.remove(key);
            }
            if e.group.members.is_empty() && e.offsets.is_empty() {
                groups.remove(group);
            }
        }
    }

    /// OffsetDelete: per topic, whether its offsets may go (not while a member subscribes to
    /// it); the group's error if it does not exist.
    pub fn offsets_deletable(&self, group: &str, topics: &[String]) -> Result<Vec<i16>, i16> {
        let groups = self.groups.borrow();
        let Some(e) = groups.get(group) else {
            return Err(GROUP_ID_NOT_FOUND);
        };
        Ok(topics
            .iter()
            .map(|t| {
                if !e.group.members.is_empty() && e.group.subscribed_to(t) {
                    GROUP_SUBSCRIBED_TO_TOPIC
                } else {
                    NONE
                }
            })
            .collect())
    }

    /// A group may be deleted only while it has no members: the offsets it holds.
    pub fn deletable(&self, group: &str) -> Result<Vec<(String, i32)>, i16> {
        let groups = self.groups.borrow();
        let Some(e) = groups.get(group) else {
            return Err(GROUP_ID_NOT_FOUND);
        };
        if !e.group.members.is_empty() {
            return Err(NON_EMPTY_GROUP);
        }
        Ok(e.offsets.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_spread_over_offsets_partitions_deterministically() {
        let p = offsets_partition("group-a", 4);
        assert_eq!(p, offsets_partition("group-a", 4));
        assert!((0..4).contains(&p));
        let used: std::collections::HashSet<i32> = (0..100)
            .map(|i| offsets_partition(&format!("g{i}"), 4))
            .collect();
        assert_eq!(used.len(), 4);
    }
}
