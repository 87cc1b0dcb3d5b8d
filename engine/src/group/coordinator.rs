//! Group coordination on a shard: the groups whose offsets partition this shard owns, their
//! membership state machines ([`Group`]), the requests waiting on them, and their committed
//! offsets.
//!
//! Committed offsets are records in the internal topic `__consumer_offsets` (one partition per
//! shard), written through the shard's ordinary produce path — WAL, then objects — so they are
//! exactly as durable as user data. An OffsetCommit is answered once its record is durable; a
//! shard replays its offsets partitions at start and answers COORDINATOR_LOAD_IN_PROGRESS
//! until it has. Membership is not persisted: after a restart members rejoin (Kafka's clients
//! do so on UNKNOWN_MEMBER_ID).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::channel::oneshot;
use serde::{Deserialize, Serialize};

use crate::catalog::TopicMeta;
use crate::errors::{
    COORDINATOR_NOT_AVAILABLE, GROUP_ID_NOT_FOUND, GROUP_SUBSCRIBED_TO_TOPIC, NONE,
    NON_EMPTY_GROUP, UNKNOWN_MEMBER_ID,
};
use crate::group::state::{Answer, Completed, Group, JoinRequest, JoinResult, SyncResult};
use crate::partition::items::{FetchItem, PartitionKey, ProduceItem};
use crate::partition::store::ShardState;
use ringtail_shards::now_ms;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// How long an offset commit waits for its record to be durable as the offsets topic demands
/// (with an object store: uploaded), then answers COORDINATOR_NOT_AVAILABLE (retriable), as
/// Kafka does after `offsets.commit.timeout.ms` (the same 5 s default).
pub const OFFSETS_COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The offsets topic's configs: kept forever, and as durable as the cluster allows: with an
/// object store `durability=object` (a commit is answered once it is in the bucket: no machine
/// loss loses it), without one the WAL.
pub fn offsets_topic_configs(object_store: bool) -> BTreeMap<String, String> {
    let mut c: BTreeMap<String, String> = [("retention.ms", "-1"), ("retention.bytes", "-1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if object_store {
        c.insert("durability".into(), "object".into());
    }
    c
}

/// The configs an existing offsets topic should move to, or None if it has them: a catalog
/// written before the offsets topic took the strongest durability moves to it; a data directory
/// started again without its object store goes back to the WAL (durability=object would refuse
/// every commit).
pub fn offsets_topic_upgrade(
    current: &BTreeMap<String, String>,
    object_store: bool,
) -> Option<BTreeMap<String, String>> {
    let mut next = current.clone();
    next.remove("durability");
    for (k, v) in offsets_topic_configs(object_store) {
        next.insert(k, v);
    }
    (next != *current).then_some(next)
}

/// How long a failed compaction waits before the next attempt.
const COMPACTION_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// The offsets partition a group's records go to; the shard owning it coordinates the group.
pub fn offsets_partition(group: &str, partitions: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in group.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % partitions.max(1) as u32) as i32
}

/// A committed offset as stored: the record key...
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OffsetKey {
    g: String,
    t: String,
    p: i32,
}

/// ...and value (no value: the offset was deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    #[serde(rename = "o")]
    pub offset: i64,
    #[serde(rename = "e")]
    pub leader_epoch: i32,
    #[serde(rename = "m")]
    pub metadata: Option<String>,
    #[serde(rename = "ts")]
    pub commit_ms: i64,
}

/// One offset change: (topic, partition, new value or deletion).
pub type OffsetChange = (String, i32, Option<Committed>);

/// The record of one offset change.
fn encode_change(group: &str, (topic, partition, value): &OffsetChange) -> (Bytes, Option<Bytes>) {
    let key = OffsetKey {
        g: group.to_string(),
        t: topic.clone(),
        p: *partition,
    };
    (
        Bytes::from(serde_json::to_vec(&key).expect("serialisable")),
        value
            .as_ref()
            .map(|v| Bytes::from(serde_json::to_vec(v).expect("serialisable"))),
    )
}

fn decode_change(key: &[u8], value: Option<&[u8]>) -> Option<(String, OffsetChange)> {
    let k: OffsetKey = serde_json::from_slice(key).ok()?;
    let v = match value {
        Some(v) => Some(serde_json::from_slice::<Committed>(v).ok()?),
        None => None,
    };
    Some((k.g, (k.t, k.p, v)))
}

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
    /// Records written to (or replayed from) each offsets partition since its last compaction.
    records_since_compaction: RefCell<HashMap<i32, u64>>,
    /// Compact a partition once it has this many records beyond its live offsets.
    compact_after_records: u64,
    /// A compaction is running: new commits wait (so the snapshot is the latest state).
    compacting: Cell<bool>,
    commits_in_flight: Cell<usize>,
    /// After a failed compaction, not before then.
    compaction_retry_at: Cell<Option<Instant>>,
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
            records_since_compaction: RefCell::new(HashMap::new()),
            compact_after_records: compact_after_records.max(1),
            compacting: Cell::new(false),
            commits_in_flight: Cell::new(0),
            compaction_retry_at: Cell::new(None),
        }
    }

    fn count_records(&self, partition: i32, n: u64) {
        *self
            .records_since_compaction
            .borrow_mut()
            .entry(partition)
            .or_default() += n;
    }

    /// An offsets partition whose log has grown past the threshold, if any.
    fn due_for_compaction(&self) -> Option<i32> {
        let live = self.live_offsets_count() as u64;
        self.records_since_compaction
            .borrow()
            .iter()
            .find(|(_, n)| **n > self.compact_after_records + live)
            .map(|(p, _)| *p)
    }

    fn live_offsets_count(&self) -> usize {
        self.groups.borrow().values().map(|e| e.offsets.len()).sum()
    }

    /// Every live offset of the groups on `partition` (of `partitions`).
    fn snapshot(&self, partition: i32, partitions: i32) -> Vec<(String, Vec<OffsetChange>)> {
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

/// Records of one batch stay under this many bytes, well below the smallest WAL write.
const OFFSET_BATCH_BYTES: usize = 32 << 10;

type RecordKv = (Option<Bytes>, Option<Bytes>);

/// The records of `changes`, as batches small enough for any WAL write.
fn offset_batches(
    group: &str,
    changes: &[OffsetChange],
) -> Result<Vec<ringtail_netio::batch::ValidBatch>, String> {
    let mut batches = Vec::new();
    let mut chunk: Vec<RecordKv> = Vec::new();
    let mut bytes = 0usize;
    let flush = |chunk: &mut Vec<RecordKv>,
                 batches: &mut Vec<ringtail_netio::batch::ValidBatch>|
     -> Result<(), String> {
        if chunk.is_empty() {
            return Ok(());
        }
        let encoded = ringtail_netio::batch::encode_records(std::mem::take(chunk), now_ms());
        batches.extend(
            ringtail_netio::batch::split_and_validate(encoded, usize::MAX)
                .map_err(|e| e.to_string())?,
        );
        Ok(())
    };
    for c in changes {
        let (k, v) = encode_change(group, c);
        let size = k.len() + v.as_ref().map_or(0, |v| v.len()) + 32;
        if bytes + size > OFFSET_BATCH_BYTES {
            flush(&mut chunk, &mut batches)?;
            bytes = 0;
        }
        bytes += size;
        chunk.push((Some(k), v));
    }
    flush(&mut chunk, &mut batches)?;
    Ok(batches)
}

/// Writes offset changes of `group` to its offsets partition and applies them once durable.
/// `member` (member id, generation) is checked against the group right before the write, with
/// no wait in between, so that a member that lost its generation meanwhile cannot commit.
/// Returns NONE or the error every partition of the commit gets.
pub async fn write_offsets(
    coordinator: &Coordinator,
    offsets_topic: &Arc<TopicMeta>,
    group: &str,
    member: Option<(&str, i32)>,
    changes: Vec<OffsetChange>,
) -> i16 {
    while coordinator.compacting.get() {
        ringtail_shards::sleep(std::time::Duration::from_millis(2)).await;
    }
    if let Some((member, generation)) = member {
        let check = coordinator.check_commit(group, member, generation);
        if check != NONE {
            return check;
        }
    }
    if changes.is_empty() {
        return NONE;
    }
    let batches = match offset_batches(group, &changes) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "offset commit batch does not validate");
            return COORDINATOR_NOT_AVAILABLE;
        }
    };
    let partition = offsets_partition(group, offsets_topic.partitions);
    coordinator.count_records(partition, changes.len() as u64);
    coordinator
        .commits_in_flight
        .set(coordinator.commits_in_flight.get() + 1);
    let done = produce_changes(
        coordinator,
        offsets_topic,
        partition,
        group,
        changes,
        batches,
    )
    .await;
    coordinator
        .commits_in_flight
        .set(coordinator.commits_in_flight.get() - 1);
    done
}

async fn produce_changes(
    coordinator: &Coordinator,
    offsets_topic: &Arc<TopicMeta>,
    partition: i32,
    group: &str,
    changes: Vec<OffsetChange>,
    batches: Vec<ringtail_netio::batch::ValidBatch>,
) -> i16 {
    produce_all(
        coordinator,
        offsets_topic,
        partition,
        vec![(group.to_string(), changes, batches)],
    )
    .await
}

/// Writes the offset changes of several groups in one produce (one upload to wait for with
/// `durability=object`), and applies them once durable.
async fn produce_all(
    coordinator: &Coordinator,
    offsets_topic: &Arc<TopicMeta>,
    partition: i32,
    groups: Vec<(
        String,
        Vec<OffsetChange>,
        Vec<ringtail_netio::batch::ValidBatch>,
    )>,
) -> i16 {
    let mut batches = Vec::new();
    let mut applied = Vec::with_capacity(groups.len());
    for (group, changes, b) in groups {
        batches.extend(b);
        applied.push((group, changes));
    }
    let item = ProduceItem {
        key: PartitionKey {
            topic_id: offsets_topic.id,
            partition,
        },
        topic: offsets_topic.clone(),
        batches,
        upload_timeout: Some(OFFSETS_COMMIT_TIMEOUT),
    };
    let outcome = coordinator.partitions.produce(vec![item]).await;
    match outcome.first() {
        Some(o) if o.error == NONE => {
            for (group, changes) in applied {
                coordinator.apply(&group, changes);
            }
            NONE
        }
        Some(o) => {
            tracing::warn!(
                groups = applied.len(),
                error = o.error,
                "offset commit not durable"
            );
            COORDINATOR_NOT_AVAILABLE
        }
        None => COORDINATOR_NOT_AVAILABLE,
    }
}

/// Compacts an offsets partition that grew past its threshold: rewrites every live offset of
/// its groups (commits wait meanwhile, so this is the latest state), then deletes the records
/// before the rewrite (DeleteRecords: memory, WAL and objects let them go). Replay after a
/// restart reads the rewrite and what followed; the last record of each key still wins.
pub async fn compact_if_due(coordinator: &Coordinator, offsets_topic: &Arc<TopicMeta>) {
    if !coordinator.loaded.get()
        || coordinator.compacting.get()
        || coordinator
            .compaction_retry_at
            .get()
            .is_some_and(|t| Instant::now() < t)
    {
        return;
    }
    let Some(partition) = coordinator.due_for_compaction() else {
        return;
    };
    coordinator.compacting.set(true);
    while coordinator.commits_in_flight.get() > 0 {
        ringtail_shards::sleep(std::time::Duration::from_millis(2)).await;
    }
    let key = PartitionKey {
        topic_id: offsets_topic.id,
        partition,
    };
    let end = coordinator
        .partitions
        .list_offsets(vec![crate::partition::items::ListItem {
            key,
            timestamp: -1,
        }])
        .await[0]
        .offset;
    let mut ok = true;
    let mut rewritten = 0usize;
    // One produce for the whole rewrite: with durability=object, one upload to wait for.
    let mut groups = Vec::new();
    for (group, changes) in coordinator.snapshot(partition, offsets_topic.partitions) {
        rewritten += changes.len();
        let Ok(batches) = offset_batches(&group, &changes) else {
            ok = false;
            break;
        };
        groups.push((group, changes, batches));
    }
    if ok && !groups.is_empty() {
        ok = produce_all(coordinator, offsets_topic, partition, groups).await == NONE;
    }
    // The rewrite is durable: later commits land after it, whatever the deletion below does.
    coordinator.compacting.set(false);
    if ok && end > 0 {
        let deleted = coordinator
            .partitions
            .delete_records(vec![crate::partition::items::DeleteItem {
                key,
                offset: end,
            }])
            .await;
        ok = deleted[0].error == NONE;
    }
    if ok {
        coordinator
            .records_since_compaction
            .borrow_mut()
            .insert(partition, rewritten as u64);
        tracing::info!(
            partition,
            below = end,
            live = rewritten,
            "compacted committed offsets"
        );
    } else {
        tracing::warn!(
            partition,
            "compacting committed offsets failed; retrying in a minute"
        );
        coordinator
            .compaction_retry_at
            .set(Some(Instant::now() + COMPACTION_RETRY));
    }
    coordinator.compacting.set(false);
}

/// Replays the offsets partitions this shard owns (start-up), then marks the coordinator
/// loaded.
pub async fn load_offsets(
    coordinator: Rc<Coordinator>,
    offsets_topic: Arc<TopicMeta>,
    partitions: Vec<i32>,
) {
    let mut records = 0usize;
    for partition in partitions {
        let key = PartitionKey {
            topic_id: offsets_topic.id,
            partition,
        };
        let mut offset = 0i64;
        loop {
            let out = coordinator
                .partitions
                .fetch(vec![FetchItem {
                    key,
                    offset,
                    max_bytes: 8 << 20,
                    first_batch_always: true,
                }])
                .await;
            let o = &out[0];
            if o.error == kafka_protocol::ResponseError::OffsetOutOfRange.code()
                && offset < o.log_start_offset
            {
                offset = o.log_start_offset;
                continue;
            }
            if o.error != NONE {
                tracing::error!(
                    partition,
                    offset,
                    error = o.error,
                    "reading committed offsets failed; retrying"
                );
                ringtail_shards::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            if o.batches.is_empty() {
                break;
            }
            for batch in &o.batches {
                let mut b = batch.clone();
                let set = match kafka_protocol::records::RecordBatchDecoder::decode(&mut b) {
                    Ok(set) => set,
                    Err(e) => {
                        tracing::error!(partition, error = %e, "a committed-offsets batch does not decode; skipped");
                        if let Ok(h) = ringtail_netio::header::BatchHeader::parse(batch) {
                            offset = offset.max(h.last_offset() + 1);
                        }
                        continue;
                    }
                };
                for r in set.records {
                    offset = offset.max(r.offset + 1);
                    let Some(key) = r.key else { continue };
                    match decode_change(&key, r.value.as_deref()) {
                        Some((group, change)) => {
                            coordinator.apply(&group, vec![change]);
                            coordinator.count_records(partition, 1);
                            records += 1;
                        }
                        None => tracing::warn!(
                            partition,
                            offset = r.offset,
                            "unreadable committed-offset record; skipped"
                        ),
                    }
                }
            }
        }
    }
    tracing::info!(records, "committed offsets loaded");
    coordinator.loaded.set(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offsets_topic_is_as_durable_as_the_cluster_allows() {
        let with_store = offsets_topic_configs(true);
        assert_eq!(with_store["durability"], "object");
        assert_eq!(with_store["retention.ms"], "-1");
        assert!(!offsets_topic_configs(false).contains_key("durability"));
        // Validates as a topic config.
        assert!(
            crate::catalog::topic_config::TopicConfig::from_map(&with_store)
                .unwrap()
                .durability_object
        );
        // An offsets topic created before it took durability=object is moved to it, once.
        let old = offsets_topic_configs(false);
        assert_eq!(offsets_topic_upgrade(&old, true), Some(with_store.clone()));
        assert_eq!(offsets_topic_upgrade(&with_store, true), None);
        assert_eq!(offsets_topic_upgrade(&old, false), None);
        assert_eq!(offsets_topic_upgrade(&with_store, false), Some(old));
    }

    #[test]
    fn offset_records_round_trip_and_garbage_is_refused() {
        let change: OffsetChange = (
            "orders".into(),
            3,
            Some(Committed {
                offset: 42,
                leader_epoch: 0,
                metadata: Some("m".into()),
                commit_ms: 5,
            }),
        );
        let (k, v) = encode_change("g1", &change);
        assert_eq!(decode_change(&k, v.as_deref()), Some(("g1".into(), change)));
        let gone: OffsetChange = ("orders".into(), 3, None);
        let (k, v) = encode_change("g1", &gone);
        assert_eq!(decode_change(&k, v.as_deref()), Some(("g1".into(), gone)));
        assert_eq!(decode_change(b"nope", None), None);
        assert_eq!(decode_change(&k, Some(b"{")), None);
    }

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
