//! The slots one shard hosts (see ARCHITECTURE.md, "Cluster mode"): opening a slot takes its
//! manifest over and rebuilds its partitions; closing one stops serving it, waits for its writes
//! in flight, uploads what is durable and lets it go. Messages for a slot this shard does not
//! host are answered NOT_LEADER_OR_FOLLOWER (or dropped, for waits and group work).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use ringtail_objstore::ObjectStore;
use ringtail_wal::{WalConfig, WalError};

use crate::catalog::{Catalog, OFFSETS_TOPIC};
use crate::cluster::membership::{Membership, CLOSE_FLUSH_MAX};
use crate::config::Config;
use crate::group::coordinator::Coordinator;
use crate::metrics::{OffsetsSnapshot, ShardStats};
use crate::partition::copy_starts::CopyStarts;
use crate::partition::items::ErrorOutcome;
use crate::partition::store::{ShardLimits, ShardState};
use crate::replication::outbound::{Follower, OutboundConfig};
use crate::shard::replicas::Replicas;
use crate::shard::{owner_shard, ShardOp};
use crate::tier::Tier;

/// How often groups check session timeouts and rebalance deadlines.
const GROUP_TICK: Duration = Duration::from_millis(100);
/// How often an owner checks its followers (placement, lag: the ISR's rules).
const ISR_TICK: Duration = Duration::from_millis(100);
/// Most bytes an owner holds for one follower unacknowledged (at most half the WAL ring).
const LINK_BYTES_MAX: u64 = 64 << 20;
/// What opening a slot needs.
pub struct SlotEnv {
    pub config: Arc<Config>,
    pub catalog: Arc<Catalog>,
    pub store: Option<Arc<dyn ObjectStore>>,
    pub stats: Arc<ShardStats>,
    pub membership: Arc<Membership>,
    pub slots: u32,
    pub cluster_id: String,
}

/// A slot this shard serves: its partitions and the consumer groups it coordinates (whose
/// committed offsets live in those partitions).
pub struct Slot {
    pub partitions: Rc<ShardState>,
    pub coordinator: Rc<Coordinator>,
}

pub struct SlotHost {
    pub shard: usize,
    slots: RefCell<HashMap<u32, Rc<Slot>>>,
    busy: RefCell<HashSet<u32>>,
    env: SlotEnv,
    /// A spare ring is being written.
    making_spare: Rc<Cell<bool>>,
    /// The replica rings this shard keeps of other owners' slots (the replicated WAL).
    pub replicas: Rc<Replicas>,
}

/// Creates the slot's ring if there is none and recovers it, on a thread of its own: both read
/// or write the whole ring, which must not stall the shard's other slots. A new ring is the
/// shard's spare when there is one (renamed: a takeover does not wait for a ring to be written
/// out), else written out in full.
pub async fn recover_ring(
    config: WalConfig,
    spare: Option<std::path::PathBuf>,
) -> Result<ringtail_wal::Recovery, WalError> {
    ringtail_shards::off_thread("ringtail-recover", move || {
        if let Some(spare) = spare.filter(|_| !config.path.exists()) {
            let fits = std::fs::metadata(&spare).is_ok_and(|m| m.len() == config.region_bytes);
            if fits && std::fs::rename(&spare, &config.path).is_ok() {
                tracing::info!(path = %config.path.display(), "took the spare WAL ring");
            }
        }
        ringtail_wal::create_or_check(&config).and_then(|()| ringtail_wal::recover(&config.path))
    })
    .await
    .unwrap_or_else(|| Err(WalError::Failed("the recovery thread failed to run".into())))
}

/// A shard's spare ring (cluster mode): an empty ring written out ahead of a takeover.
fn spare_config(config: &Config, shard: usize) -> WalConfig {
    WalConfig {
        path: config.wal_dir.join(crate::layout::spare_ring(shard)),
        ..wal_config(config, 0)
    }
}

/// The WAL ring of a slot on this broker.
pub fn wal_config(config: &Config, slot: u32) -> WalConfig {
    config.wal_ring(config.wal_dir.join(crate::layout::wal_ring(slot)))
}

impl SlotHost {
    pub fn new(shard: usize, env: SlotEnv) -> Rc<SlotHost> {
        let host = Rc::new(SlotHost {
            shard,
            slots: RefCell::new(HashMap::new()),
            busy: RefCell::new(HashSet::new()),
            env,
            making_spare: Rc::default(),
            replicas: Rc::default(),
        });
        let limit = host.env.config.metrics_partition_limit;
        if limit > 0 && host.env.config.metrics_listen.is_some() {
            let every = crate::metrics::OFFSETS_PUBLISH_INTERVAL;
            ringtail_shards::every(&host, every, move |host| host.publish_offsets(limit));
        }
        host
    }

    pub fn stats(&self) -> &Arc<ShardStats> {
        &self.env.stats
    }

    pub fn get(&self, slot: u32) -> Option<Rc<Slot>> {
        self.slots.borrow().get(&slot).cloned()
    }

    pub fn all(&self) -> Vec<Rc<Slot>> {
        self.slots.borrow().values().cloned().collect()
    }

    fn publish_offsets(&self, limit: usize) {
        let mut all = OffsetsSnapshot::default();
        for slot in self.all() {
            all.partitions.extend(slot.partitions.offsets(limit));
            all.committed.extend(slot.coordinator.all_committed(limit));
        }
        all.partitions.truncate(limit);
        all.committed.truncate(limit);
        *self.env.stats.offsets.lock().unwrap() = all;
    }

    pub fn handle(self: &Rc<Self>, op: ShardOp) {
        let slot = match &op {
            ShardOp::Open(slot) => {
                let (host, slot) = (self.clone(), *slot);
                ringtail_shards::spawn_detached(async move { host.open(slot).await });
                return;
            }
            ShardOp::Close(slot) => {
                let (host, slot) = (self.clone(), *slot);
                ringtail_shards::spawn_detached(async move { host.close(slot).await });
                return;
            }
            ShardOp::MakeSpare => {
                self.make_spare();
                return;
            }
            ShardOp::DropTopic(id) => {
                for slot in self.all() {
                    slot.partitions.drop_topic(*id);
                }
                return;
            }
            ShardOp::TopicChanged(topic) => {
                for slot in self.all() {
                    slot.partitions.topic_changed(topic.clone());
                }
                return;
            }
            ShardOp::Produce(slot, ..)
            | ShardOp::Fetch(slot, ..)
            | ShardOp::ListOffsets(slot, ..)
            | ShardOp::LeaderEpochs(slot, ..)
            | ShardOp::Watch(slot, ..)
            | ShardOp::DeleteRecords(slot, ..)
            | ShardOp::Run(slot, ..) => *slot,
        };
        match self.get(slot) {
            Some(state) => on_slot(&state, op),
            None => not_here(op),
        }
    }

    /// Takes slot `slot` over and serves it (claimed in the lease before; see cluster.rs). A
    /// slot whose claim went stale meanwhile (this broker's lease lapsed) is not served.
    pub async fn open(self: &Rc<Self>, slot: u32) {
        if self.slots.borrow().contains_key(&slot) {
            self.env.membership.opened(slot);
            return;
        }
        if !self.busy.borrow_mut().insert(slot) {
            return;
        }
        let started = Instant::now();
        let membership = self.env.membership.clone();
        let lapses = membership.lapses();
        let claim_holds = move || membership.lease_valid() && membership.lapses() == lapses;
        match self.open_state(slot, &claim_holds).await {
            Ok(_) if !claim_holds() => {
                tracing::warn!(
                    slot,
                    "this broker's lease lapsed while it opened the slot: not serving it"
                );
                self.env.membership.closed(slot);
                self.make_spare();
            }
            Ok(state) => {
                let (host, me) = (Rc::downgrade(self), Rc::downgrade(&state));
                state.set_on_fenced(move || {
                    tracing::error!(
                        slot,
                        "another broker took this slot over (its manifest was committed under a \
                         newer epoch): closing it here"
                    );
                    let Some(host) = host.upgrade() else { return };
                    // Only this opening of the slot (not a later one under the same number).
                    if host
                        .get(slot)
                        .zip(me.upgrade())
                        .is_some_and(|(s, me)| Rc::ptr_eq(&s.partitions, &me))
                    {
                        ringtail_shards::spawn_detached(async move { host.close(slot).await });
                    }
                });
                if let Some(wal) = state.wal_metrics() {
                    self.env.stats.wal.lock().unwrap().insert(slot, wal);
                }
                let coordinator = Rc::new(Coordinator::new(
                    state.clone(),
                    self.env.config.group_initial_rebalance_delay_ms,
                    self.env.config.offsets_compact_records,
                ));
                self.start_groups(slot, &coordinator);
                let served = Slot {
                    partitions: state,
                    coordinator,
                };
                self.replicate(slot, &served.partitions);
                // Before it serves: requests are checked against the epoch it took over at.
                let epoch = served.partitions.epoch();
                self.env.membership.epochs.raise(slot, epoch);
                self.slots.borrow_mut().insert(slot, Rc::new(served));
                self.env.membership.opened(slot);
                if self.env.membership.view.load().members.len() > 1 {
                    // A takeover may have used the spare: write the next one.
                    self.make_spare();
                }
                tracing::info!(
                    slot,
                    shard = self.shard,
                    ms = started.elapsed().as_millis() as u64,
                    "serving slot"
                );
            }
            Err(e) if !claim_holds() => {
                tracing::warn!(slot, error = %e, "this broker's lease lapsed while it opened the slot: not serving it");
                self.env.membership.closed(slot);
                self.make_spare();
            }
            Err(e) => {
                tracing::error!(slot, error = %e, "could not open slot");
                self.env.membership.failed(slot, e);
            }
        }
        self.busy.borrow_mut().remove(&slot);
    }

    /// Streams the slot's replicated topics to its followers (a broker with a replication
    /// listener and an object store), and applies the ISR's rules while the slot is open.
    fn replicate(&self, slot: u32, state: &Rc<ShardState>) {
        let env = &self.env;
        if env.config.replication_listen.is_none() || env.store.is_none() {
            return;
        }
        let (membership, me) = (env.membership.clone(), env.config.node_id);
        let followers = move || -> Vec<Follower> {
            let view = membership.view.load();
            view.followers(slot, view.me)
                .into_iter()
                .filter_map(|node| {
                    let addr = view.replication_addr(node, slot)?.to_string();
                    Some(Follower { node, addr })
                })
                .collect()
        };
        let config = OutboundConfig {
            cluster_id: env.cluster_id.clone(),
            node: env.config.node_id,
            slot,
            epoch: state.epoch(),
            unacked_bytes_max: LINK_BYTES_MAX.min(env.config.wal_size_per_shard / 2),
        };
        let first = followers();
        tracing::info!(slot, followers = ?first.iter().map(|f| f.node).collect::<Vec<_>>(), "streaming the slot's replicated topics");
        state.replicate_to(config, &first);
        let lag_max = 2 * env.config.lease;
        let membership = env.membership.clone();
        ringtail_shards::every(state, ISR_TICK, move |state| {
            let in_lease = membership.replica_sets.in_lease(slot);
            let set = state.check_isr(&followers(), lag_max, in_lease.as_ref());
            // Published in the lease: Metadata's replicas and ISR everywhere, and who may
            // succeed this owner.
            if let Some(set) = set.filter(|_| !state.is_closing()) {
                membership.replica_sets.set(slot, me, set);
            }
        });
    }

    /// Writes the shard's spare ring if it has none, on a thread of its own. Only once another
    /// broker shares the bucket: a broker alone never takes a slot over.
    fn make_spare(&self) {
        if self.env.store.is_none() || self.making_spare.replace(true) {
            return;
        }
        let config = spare_config(&self.env.config, self.shard);
        let busy = self.making_spare.clone();
        ringtail_shards::spawn_detached(async move {
            let written = ringtail_shards::off_thread("ringtail-spare", move || {
                ringtail_wal::create_or_check(&config)
            })
            .await;
            match written {
                Some(Ok(())) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "could not write a spare WAL ring"),
                None => tracing::warn!("could not start a thread to write a spare WAL ring"),
            }
            busy.set(false);
        });
    }

    async fn open_state(
        &self,
        slot: u32,
        may_take: &dyn Fn() -> bool,
    ) -> Result<Rc<ShardState>, String> {
        let env = &self.env;
        let wal = wal_config(&env.config, slot);
        let spare = env
            .store
            .as_ref()
            .map(|_| spare_config(&env.config, self.shard).path);
        // The manifest take-over and the ring's recovery (or creation) at once.
        let tier = async {
            match &env.store {
                None => Ok(None),
                Some(store) => Tier::open(
                    store.clone(),
                    slot,
                    env.config.node_id,
                    env.config.object_bytes_target,
                    env.config.object_age_max,
                    env.stats.clone(),
                    may_take,
                )
                .await
                .map(Some)
                .map_err(|e| format!("object store: {e}")),
            }
        };
        // A copy of the slot's stream here takes nothing more before the manifest is taken.
        let replicating = env.store.is_some() && env.config.replication_listen.is_some();
        let frozen = match replicating {
            true => self.replicas.freeze(&env.config, slot).await?,
            false => None,
        };
        let opened = async {
            let (tier, recovery) = futures::join!(tier, recover_ring(wal.clone(), spare));
            let (tier, recovery) = (tier?, recovery.map_err(|e| e.to_string())?);
            // The replaced owner's tail this broker holds (R4), read before the WAL's replay:
            // it gives way to the copy where this broker's own batches are of an older owner.
            let tail = match (&frozen, &tier) {
                (Some(frozen), Some(tier)) => frozen.tail(tier.epoch()).await?,
                _ => Vec::new(),
            };
            let state = ShardState::open(
                &wal,
                recovery,
                &CopyStarts::of(&tail),
                env.catalog.clone(),
                tier,
                ShardLimits {
                    hot_cache_bytes: env.config.hot_cache_bytes_per_shard,
                    retention_check_interval: env.config.retention_check_interval,
                },
                env.stats.clone(),
            )
            .await
            .map_err(|e| e.to_string())?;
            // Back at its offsets.
            state.adopt_replica_tail(slot, tail).await?;
            if replicating {
                // In the bucket before the slot takes a write: the followers start this epoch
                // empty.
                state.upload_all(slot).await?;
            }
            if let Some(frozen) = &frozen {
                frozen.record(state.epoch()).await?;
            }
            Ok(state)
        }
        .await;
        if let (Err(_), Some(frozen)) = (&opened, &frozen) {
            frozen.thaw();
        }
        opened
    }

    /// Group coordination of the slot: replay its committed offsets, and run the groups' clocks
    /// (session timeouts, rebalance deadlines) while the slot is open.
    fn start_groups(&self, slot: u32, coordinator: &Rc<Coordinator>) {
        let Some(offsets) = self.env.catalog.snapshot().by_name(OFFSETS_TOPIC).cloned() else {
            return;
        };
        let mine: Vec<i32> = (0..offsets.partitions)
            .filter(|&p| owner_shard(&offsets.name, p, self.env.slots as usize) == slot as usize)
            .collect();
        ringtail_shards::spawn_detached(crate::group::offsets_log::load_offsets(
            coordinator.clone(),
            offsets.clone(),
            mine,
        ));
        ringtail_shards::every(coordinator, GROUP_TICK, move |coordinator| {
            if coordinator.partitions.is_closing() {
                return;
            }
            coordinator.tick();
            // In a task of its own: the clock keeps ticking while a compaction waits.
            let (c, o) = (coordinator.clone(), offsets.clone());
            ringtail_shards::spawn_detached(async move {
                crate::group::offsets_log::compact_if_due(&c, &o).await
            });
        });
    }

    /// Stops serving `slot`: new requests are answered NOT_LEADER_OR_FOLLOWER at once; writes
    /// in flight finish, everything durable is uploaded and committed (however long the store
    /// takes: letting the slot go earlier would let the next owner supersede acknowledged
    /// records), then the slot is let go.
    pub async fn close(self: &Rc<Self>, slot: u32) {
        if !self.busy.borrow_mut().insert(slot) {
            return;
        }
        let served = self.slots.borrow_mut().remove(&slot);
        if let Some(state) = served.map(|s| s.partitions.clone()) {
            let started = Instant::now();
            state.start_closing();
            state.writes_settled(started + CLOSE_FLUSH_MAX).await;
            // Acknowledged records not in the bucket yet are only in this broker's WAL: the
            // slot stays claimed until they are uploaded (or another owner fenced it).
            state.flush_to_objects(slot).await;
            tracing::info!(
                slot,
                ms = started.elapsed().as_millis() as u64,
                "handed slot over"
            );
            self.env.stats.wal.lock().unwrap().remove(&slot);
        }
        self.env
            .membership
            .replica_sets
            .forget(slot, self.env.config.node_id);
        self.env.membership.closed(slot);
        self.busy.borrow_mut().remove(&slot);
    }

    /// Closes every slot (clean shutdown).
    pub async fn close_all(self: &Rc<Self>) {
        let slots: Vec<u32> = self.slots.borrow().keys().copied().collect();
        futures::future::join_all(slots.into_iter().map(|s| self.close(s))).await;
    }
}

/// The answer for a message whose slot is not hosted here.
fn not_here(op: ShardOp) {
    let code = ResponseError::NotLeaderOrFollower.code();
    fn all<O: ErrorOutcome>(n: usize, code: i16) -> Vec<O> {
        (0..n).map(|_| O::error(code)).collect()
    }
    match op {
        ShardOp::Produce(_, items, reply) => drop(reply.send(all(items.len(), code))),
        ShardOp::Fetch(_, items, reply) => drop(reply.send(all(items.len(), code))),
        ShardOp::ListOffsets(_, items, reply) => drop(reply.send(all(items.len(), code))),
        ShardOp::LeaderEpochs(_, items, reply) => drop(reply.send(all(items.len(), code))),
        ShardOp::DeleteRecords(_, items, reply) => drop(reply.send(all(items.len(), code))),
        // Dropped: a waiting fetch wakes and re-reads; group work answers NOT_COORDINATOR.
        ShardOp::Watch(..) | ShardOp::Run(..) => {}
        ShardOp::Open(_)
        | ShardOp::Close(_)
        | ShardOp::MakeSpare
        | ShardOp::DropTopic(_)
        | ShardOp::TopicChanged(_) => {
            unreachable!("handled by the host")
        }
    }
}

/// Runs a message meant for one slot on that slot's state; the answer goes back on the
/// message's channel once it is ready.
fn on_slot(slot: &Rc<Slot>, op: ShardOp) {
    let state = &slot.partitions;
    match op {
        ShardOp::Produce(_, items, reply) => answer(reply, state.produce(items)),
        ShardOp::Fetch(_, items, reply) => answer(reply, state.fetch(items)),
        ShardOp::ListOffsets(_, items, reply) => answer(reply, state.list_offsets(items)),
        ShardOp::LeaderEpochs(_, items, reply) => drop(reply.send(state.leader_epochs(items))),
        ShardOp::DeleteRecords(_, items, reply) => answer(reply, state.delete_records(items)),
        ShardOp::Watch(_, items, reply) => state.watch(items, reply),
        ShardOp::Run(_, f) => f(slot),
        ShardOp::Open(_)
        | ShardOp::Close(_)
        | ShardOp::MakeSpare
        | ShardOp::DropTopic(_)
        | ShardOp::TopicChanged(_) => unreachable!("handled by SlotHost::handle"),
    }
}

/// Sends `done`'s output on `reply` once it is ready (a requester that went away is no error).
fn answer<T: 'static>(
    reply: oneshot::Sender<T>,
    done: impl std::future::Future<Output = T> + 'static,
) {
    ringtail_shards::spawn_detached(async move {
        let _ = reply.send(done.await);
    });
}
