//! Cluster membership as the broker sees it: who is alive, which slot each live broker should
//! own (placement), which slots this broker opens or closes (the hand-over protocol), and the
//! routing view the shards read. See ARCHITECTURE.md, "Cluster mode".
//!
//! [`decide`] is pure; [`Runner`] is the thread that renews the lease, reads the other leases
//! and carries the decisions out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use ringtail_objstore::ObjectStore;

use crate::catalog::topic_config::Durability;
use crate::catalog::{Catalog, TopicMeta};
use crate::cluster::lease::{Lease, LeaseError, LeaseRecord, PeerWatch};
use crate::layout::owner_shard;

use arc_swap::ArcSwap;

use crate::cluster::hand_over::{candidates, decide, Decision, Peer};
use crate::cluster::view::{Member, View};

/// How long a lapsed lease's closing waits for its slots before it renews. A slot
/// itself is never let go with acknowledged records not uploaded: closing waits for them.
pub const CLOSE_FLUSH_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// While a closing slot waits for its last uploads, it says so at this interval.
pub const CLOSE_FLUSH_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// This broker's slots, changed under one lock (a reader never sees a slot between two sets).
#[derive(Default)]
struct Slots {
    /// Open on this broker.
    open: BTreeSet<u32>,
    /// Claimed to be opened here: announced in the lease with the open ones, before the opening
    /// starts (see [`Runner::confirm_claims`]).
    opening: BTreeSet<u32>,
    /// Asked to open or close and not done yet.
    pending: BTreeSet<u32>,
    /// Counts openings, closings, failures and rounds (see [`Membership::wait_for_change`]).
    changes: u64,
}

/// Shared between the membership thread and the shards.
pub struct Membership {
    pub view: ArcSwap<View>,
    slots: Mutex<Slots>,
    /// Notified when a slot opens, closes or fails here.
    changed: Condvar,
    /// Slots that could not open, and why (start-up refuses to serve with one).
    failures: Mutex<Vec<(u32, String)>>,
    /// Until when this broker's lease is certainly its own (nanoseconds after `base`; no
    /// lease: forever). Acknowledgements and reads are given only before it (self-fencing).
    valid_until: AtomicU64,
    base: Instant,
    /// Membership rounds completed.
    rounds: AtomicU64,
    /// Lease lapses seen (each closes every slot).
    lapses: AtomicU64,
    /// Every slot's ownership epoch as known here.
    pub epochs: crate::cluster::epochs::SlotEpochs,
    /// Every replicating slot's followers and ISR as known here.
    pub replica_sets: crate::cluster::replica_sets::SlotReplicaSets,
}

impl Membership {
    pub fn new(view: View) -> Membership {
        let slots = view.owners.len();
        Membership {
            epochs: crate::cluster::epochs::SlotEpochs::new(slots),
            replica_sets: Default::default(),
            view: ArcSwap::from_pointee(view),
            slots: Mutex::default(),
            changed: Condvar::new(),
            failures: Mutex::new(Vec::new()),
            valid_until: AtomicU64::new(u64::MAX),
            base: Instant::now(),
            rounds: AtomicU64::new(0),
            lapses: AtomicU64::new(0),
        }
    }

    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    pub fn lapses(&self) -> u64 {
        self.lapses.load(Ordering::Relaxed)
    }

    /// The lease was written at `written_at`: nobody can take this broker's slots before
    /// `written_at + duration`; a tenth of it is kept as margin for clock-rate differences.
    pub fn lease_written(&self, written_at: Instant, duration: std::time::Duration) {
        let until = (written_at + duration - duration / 10).saturating_duration_since(self.base);
        self.valid_until
            .store(until.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Whether this broker may still acknowledge writes and serve reads of its slots: while its
    /// lease is certainly its own — or while it has seen no other broker on its bucket, so that
    /// a lone broker's WAL absorbs writes through a store outage as it always did (a broker that
    /// joins meanwhile waits a lease of silence first; what it then overwrites is counted as
    /// superseded when this one replays its WAL).
    pub fn lease_valid(&self) -> bool {
        let until = self.valid_until.load(Ordering::Relaxed);
        until == u64::MAX
            || (self.base.elapsed().as_nanos() as u64) < until
            || self.view.load().members.len() <= 1
    }

    /// Marks `slot` as being opened or closed; false if it already is.
    pub fn request(&self, slot: u32) -> bool {
        self.slots.lock().unwrap().pending.insert(slot)
    }

    pub fn is_pending(&self) -> bool {
        !self.slots.lock().unwrap().pending.is_empty()
    }

    pub fn opened(&self, slot: u32) {
        self.settle(slot, |s| s.open.insert(slot));
    }

    pub fn closed(&self, slot: u32) {
        self.settle(slot, |s| s.open.remove(&slot));
    }

    /// A slot's opening or closing ended (`change` records how); wakes the waiters.
    fn settle(&self, slot: u32, change: impl FnOnce(&mut Slots) -> bool) {
        let mut s = self.slots.lock().unwrap();
        change(&mut s);
        s.opening.remove(&slot);
        s.pending.remove(&slot);
        s.changes += 1;
        self.changed.notify_all();
    }

    /// Claims `slot` for this broker (it is announced from the next lease write on).
    fn claim(&self, slot: u32) {
        self.slots.lock().unwrap().opening.insert(slot);
    }

    /// Gives up a claim that was not acted on (the lease lists it until its next write).
    fn unclaim(&self, slot: u32) {
        self.slots.lock().unwrap().opening.remove(&slot);
    }

    /// What the lease announces: the slots open here and those claimed or being opened.
    pub fn announced(&self) -> BTreeSet<u32> {
        let s = self.slots.lock().unwrap();
        s.open.union(&s.opening).copied().collect()
    }

    /// Opening `slot` failed (logged by the shard); the next round tries again.
    pub fn failed(&self, slot: u32, reason: String) {
        let mut failures = self.failures.lock().unwrap();
        // Read at start-up only; later failures are logged by the shard and retried.
        if failures.len() < 16 {
            failures.push((slot, reason));
        }
        drop(failures);
        self.settle(slot, |_| false);
    }

    /// The failures since the last call.
    pub fn take_failures(&self) -> Vec<(u32, String)> {
        std::mem::take(&mut *self.failures.lock().unwrap())
    }

    /// Waits (blocking) until no slot is open here or opening or closing: as long as their
    /// last uploads take (a slot is not let go with acknowledged records only in this
    /// broker's WAL).
    pub fn wait_all_closed(&self) {
        let s = self.slots.lock().unwrap();
        let _idle = self
            .changed
            .wait_while(s, |s| !s.open.is_empty() || !s.pending.is_empty())
            .unwrap();
    }

    /// The open slots, if any slot is open or asked to open or close (one consistent reading),
    /// with the change count to wait on.
    fn busy(&self) -> Option<(BTreeSet<u32>, u64)> {
        let s = self.slots.lock().unwrap();
        (!s.open.is_empty() || !s.pending.is_empty()).then(|| (s.open.clone(), s.changes))
    }

    /// A membership round completed (start-up waits for the first).
    fn round_done(&self) {
        let mut s = self.slots.lock().unwrap();
        self.rounds.fetch_add(1, Ordering::Relaxed);
        s.changes += 1;
        self.changed.notify_all();
    }

    /// Start-up: blocks until the slots placed here serve — none pending and, in a cluster, a
    /// first round completed. An error for the first slot that failed to open, or at `deadline`.
    pub fn wait_started(&self, cluster: bool, deadline: Instant) -> Result<(), String> {
        loop {
            if let Some((slot, e)) = self.take_failures().into_iter().next() {
                return Err(format!("a shard could not start: slot {slot}: {e}"));
            }
            let seen = {
                let s = self.slots.lock().unwrap();
                if (!cluster || self.rounds() > 0) && s.pending.is_empty() {
                    // A failure recorded just before its slot left `pending`.
                    return match self.take_failures().into_iter().next() {
                        Some((slot, e)) => {
                            Err(format!("a shard could not start: slot {slot}: {e}"))
                        }
                        None => Ok(()),
                    };
                }
                s.changes
            };
            if Instant::now() > deadline {
                return Err("could not join the cluster: the object store does not answer".into());
            }
            self.wait_for_change(seen, deadline);
        }
    }

    /// Blocks until a slot opened, closed or failed here (or a round completed) since the
    /// change count was `seen`, or until `deadline`.
    fn wait_for_change(&self, seen: u64, deadline: Instant) {
        let s = self.slots.lock().unwrap();
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = self
            .changed
            .wait_timeout_while(s, left, |s| s.changes == seen)
            .unwrap();
    }

    /// The epochs of the slots open here (the lease lists them).
    pub fn open_epochs(&self) -> std::collections::BTreeMap<u32, u64> {
        self.open_slots()
            .into_iter()
            .map(|s| (s, self.epochs.get(s)))
            .collect()
    }

    pub fn open_slots(&self) -> BTreeSet<u32> {
        self.slots.lock().unwrap().open.clone()
    }
}

/// What the membership runner asks of the shards that host slots, implemented by the shard
/// layer (membership knows slots, not shards or their messages). Each call queues the work and
/// returns; a slot's opening or closing is reported back through [`Membership`].
pub trait SlotControl: Send {
    /// Queue "take `slot` over and serve it"; false if its shard is gone.
    fn open(&self, slot: u32) -> bool;
    /// Queue "hand `slot` over"; false if its shard is gone.
    fn close(&self, slot: u32) -> bool;
    /// Every shard writes a spare WAL ring if it has none (takeovers may come).
    fn make_spares(&self);
    /// The catalog adopted from the bucket no longer has this topic.
    fn drop_topic(&self, id: uuid::Uuid);
    /// The catalog adopted from the bucket changed this topic's configs or partitions.
    fn topic_changed(&self, topic: Arc<crate::catalog::TopicMeta>);
}

/// The membership thread's work: renew this broker's lease (announcing its open slots), read
/// the others, decide, publish the view and ask the shards to open or close slots.
pub struct Runner {
    pub lease: Lease,
    pub store: Arc<dyn ObjectStore>,
    pub membership: Arc<Membership>,
    pub control: Box<dyn SlotControl>,
    pub slots: u32,
    pub me: Member,
    /// Set on SIGTERM: hand every slot over, then stop.
    pub draining: Arc<AtomicBool>,
    pub watch: PeerWatch,
    /// Spare rings were asked for (the first time another broker was seen).
    spares: bool,
    /// The catalog, which every broker follows from the bucket.
    pub catalog: Option<Arc<Catalog>>,
    last_renewal: Instant,
    /// Slots left closed: their dead owner's in-sync followers are all down (logged once).
    closed_for_copies: BTreeSet<u32>,
    /// Slots in that state opened anyway by an unclean election (logged once).
    opened_unclean: BTreeSet<u32>,
}

impl Runner {
    pub fn new(
        lease: Lease,
        store: Arc<dyn ObjectStore>,
        membership: Arc<Membership>,
        control: Box<dyn SlotControl>,
        slots: u32,
        me: Member,
    ) -> Runner {
        let watch = PeerWatch::new(me.node_id, lease.duration);
        membership.lease_written(lease.written_at, lease.duration);
        Runner {
            lease,
            store,
            membership,
            control,
            slots,
            me,
            draining: Arc::new(AtomicBool::new(false)),
            watch,
            spares: false,
            catalog: None,
            last_renewal: Instant::now(),
            closed_for_copies: BTreeSet::new(),
            opened_unclean: BTreeSet::new(),
        }
    }

    /// One round. Errors of the store are returned (the caller logs and tries again); a lost
    /// lease is returned as [`LeaseError::Lost`].
    pub fn round(&mut self) -> Result<Decision, LeaseError> {
        if !self.membership.lease_valid() {
            self.close_after_lapse();
        }
        let draining = self.draining.load(Ordering::Relaxed);
        self.announce(draining)?;
        // A broker that sees no other lists every round: it does not self-fence while alone,
        // so it must notice a newcomer at once.
        let alone = self.membership.view.load().members.len() <= 1;
        let peers = self.peers(alone)?;
        if self.watch.drain_requested && !draining {
            tracing::info!(
                "drain requested (ringtail admin drain): handing every slot over, then stopping"
            );
            // The process's own shutdown path drains (main waits for the hand-over).
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
        }
        // A slot opens only on a catalog read this round: one opened on a stale catalog would
        // not know topics whose data it holds.
        let catalog_read = self.follow_catalog();
        let mine = self.membership.announced();
        let live: Vec<i32> = peers
            .iter()
            .map(|p| p.member.node_id)
            .chain([self.me.node_id])
            .collect();
        for &slot in &mine {
            self.membership.replica_sets.held(slot, self.me.node_id);
        }
        // The catalog's topics, read only for a dead owner's slot (rare), once per round.
        let snapshot = self.catalog.as_ref().map(|c| c.snapshot());
        let topics = std::cell::OnceCell::new();
        let topics = || -> &[Arc<TopicMeta>] {
            topics.get_or_init(|| snapshot.as_ref().map_or_else(Vec::new, |s| s.topics()))
        };
        let slots = self.slots;
        let mut successors = self
            .membership
            .replica_sets
            .successors(&live, |slot| min_factor(topics(), slot, slots));
        self.elect_unclean(&mut successors, topics, &peers, draining);
        let mut d = decide(
            self.slots,
            self.me.node_id,
            draining,
            &mine,
            &peers,
            &successors,
        );
        let closed: BTreeSet<u32> = successors
            .keys()
            .copied()
            .filter(|&s| d.owners.get(s as usize) == Some(&-1))
            .collect();
        for slot in closed.difference(&self.closed_for_copies) {
            tracing::error!(slot, in_sync = ?successors[slot], "slot left closed: its owner died and every follower in its ISR that holds all its topics' batches is down (opening it elsewhere would lose acknowledged records); it opens when one of them is back, or by an unclean leader election");
        }
        self.closed_for_copies = closed;
        // A round whose claims failed is not counted (start-up waits for a complete one).
        let mut complete = catalog_read;
        if !catalog_read {
            d.open.clear();
        }
        if !d.open.is_empty() {
            d.open = match self.confirm_claims(&d.open, draining) {
                Ok(confirmed) => confirmed,
                Err(e @ LeaseError::Lost(_)) => return Err(e),
                // Nothing opens this round; closes and the view go on.
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim slots; the next round tries again");
                    complete = false;
                    Vec::new()
                }
            };
        }
        let mut members: Vec<Member> = peers.iter().map(|p| p.member.clone()).collect();
        members.push(self.me.clone());
        members.sort_by_key(|m| m.node_id);
        self.membership.view.store(Arc::new(View {
            me: self.me.node_id,
            owners: d.owners.clone(),
            members,
            controller: d.controller,
        }));
        if !peers.is_empty() && !self.spares {
            self.spares = true;
            self.control.make_spares();
        }
        for &slot in &d.open {
            self.request(slot, |c| c.open(slot));
        }
        for &slot in &d.close {
            self.request(slot, |c| c.close(slot));
        }
        if complete {
            self.membership.round_done();
        }
        Ok(d)
    }

    /// Writes the lease if what it announces changed, or every quarter lease (the rounds' own
    /// tick and work add to it: a third would do on an idle machine).
    fn announce(&mut self, draining: bool) -> Result<(), LeaseError> {
        let open: Vec<u32> = self.membership.announced().into_iter().collect();
        let epochs = self.membership.open_epochs();
        let replicas = self
            .membership
            .replica_sets
            .published_by(self.lease.record.node_id);
        let changed = open != self.lease.record.open
            || draining != self.lease.record.draining
            || epochs != self.lease.record.epochs
            || replicas != self.lease.record.replicas;
        if changed || self.last_renewal.elapsed() >= self.lease.duration / 4 {
            self.lease.record.open = open;
            self.lease.record.draining = draining;
            self.lease.record.epochs = epochs;
            self.lease.record.replicas = replicas;
            self.membership.replica_sets.writing();
            futures::executor::block_on(self.lease.renew(self.store.as_ref()))?;
            // Followers leaving an ISR stop being waited for only once this is written.
            self.membership
                .replica_sets
                .written(&self.lease.record.replicas);
            // The lease lapsed before this write was answered: others may have judged it
            // expired. Every slot closes before the renewal makes acknowledgements valid again.
            if !self.membership.lease_valid() {
                self.close_after_lapse();
            }
            self.last_renewal = self.lease.written_at;
            self.membership
                .lease_written(self.lease.written_at, self.lease.duration);
        }
        Ok(())
    }

    /// The other live brokers; `list`: list the leases now (see [`PeerWatch::poll`]).
    fn peers(&mut self, list: bool) -> Result<Vec<Peer>, LeaseError> {
        let records = futures::executor::block_on(self.watch.poll(self.store.as_ref(), list))?;
        for r in &records {
            self.membership.epochs.raise_all(&r.epochs);
            if r.node_id != self.lease.record.node_id {
                self.membership.replica_sets.learn(r.node_id, &r.replicas);
                for &slot in &r.open {
                    self.membership.replica_sets.held(slot, r.node_id);
                }
            }
        }
        Ok(records
            .into_iter()
            .map(|r| Peer {
                member: member_of(&r),
                open: r.open.iter().copied().collect(),
                draining: r.draining,
            })
            .collect())
    }

    /// Claims `slots` before opening them: announces the claim, then reads the other leases
    /// again and keeps only the slots no other live lease lists. Of two brokers claiming one
    /// slot at once, at least one sees the other's claim (each reads after its own write), so
    /// at most one opens it; if both see each other, both give up and the next round decides
    /// again (by then they see the same brokers and target the same owner).
    fn confirm_claims(&mut self, slots: &[u32], draining: bool) -> Result<Vec<u32>, LeaseError> {
        if !self.membership.lease_valid() {
            return Ok(Vec::new());
        }
        let lapses = self.membership.lapses();
        for &slot in slots {
            self.membership.claim(slot);
        }
        // Listed: a broker that has just joined may be claiming too.
        let read = self.announce(draining).and_then(|()| self.peers(true));
        let peers = match read {
            Ok(peers) if self.membership.lapses() == lapses => peers,
            // An error, or a lapse while claiming (the claims are stale: the next round
            // decides anew).
            other => {
                for &slot in slots {
                    self.membership.unclaim(slot);
                }
                return other.map(|_| Vec::new());
            }
        };
        let mut confirmed = Vec::with_capacity(slots.len());
        for &slot in slots {
            match peers.iter().find(|p| p.open.contains(&slot)) {
                None => confirmed.push(slot),
                Some(p) => {
                    tracing::info!(
                        slot,
                        other = p.member.node_id,
                        "another broker claimed the slot at the same time: leaving it"
                    );
                    self.membership.unclaim(slot);
                }
            }
        }
        Ok(confirmed)
    }

    /// The lease was not renewed for (almost) a whole duration — this process was paused, or
    /// cut off from the store — so other brokers may have taken its slots over. Close them all
    /// before renewing: until then nothing is acknowledged or read (the lease is not valid),
    /// and the slots reopen through the hand-over protocol, from the bucket's state.
    fn close_after_lapse(&self) {
        // Opens in progress see it and do not take over (or do not serve).
        self.membership.lapses.fetch_add(1, Ordering::Relaxed);
        let announced = self.membership.announced();
        if announced.is_empty() {
            return;
        }
        tracing::error!(
            slots = ?announced,
            "this broker's lease lapsed (paused or cut off for a lease duration): closing its \
             slots before renewing; other brokers may have taken them over"
        );
        // A slot still opening is closed once it is open (a Close is sent only to a slot with
        // nothing pending).
        let deadline = Instant::now() + CLOSE_FLUSH_MAX;
        while Instant::now() < deadline {
            let Some((open, seen)) = self.membership.busy() else {
                break;
            };
            for &slot in &open {
                self.request(slot, |c| c.close(slot));
            }
            self.membership.wait_for_change(seen, deadline);
        }
    }

    /// `unclean.leader.election.enable` (Kafka's): a dead owner's slot whose in-sync followers
    /// are all down stays closed — unless every `durability=replicated` partition on it permits
    /// an unclean election. Then it goes where placement puts it (dropped from `successors`),
    /// and what only the down copies held (acknowledged, not yet in the bucket) is lost.
    fn elect_unclean<'t>(
        &mut self,
        successors: &mut BTreeMap<u32, Vec<i32>>,
        topics: impl Fn() -> &'t [Arc<TopicMeta>],
        peers: &[Peer],
        draining: bool,
    ) {
        if self.catalog.is_none() {
            return;
        }
        let candidates = candidates(self.me.node_id, draining, peers);
        let unclean: BTreeSet<u32> = successors
            .iter()
            .filter(|(_, isr)| !isr.iter().any(|n| candidates.contains(n)))
            .map(|(&slot, _)| slot)
            .filter(|&slot| unclean_allowed(topics(), slot, self.slots))
            .collect();
        for slot in unclean.difference(&self.opened_unclean) {
            tracing::warn!(slot, in_sync = ?successors[slot], "unclean leader election: the slot's owner died and every follower in its ISR is down; its replicated topics permit it (unclean.leader.election.enable=true), so it opens where placement puts it — records acknowledged and not yet in the bucket are lost");
        }
        successors.retain(|slot, _| !unclean.contains(slot));
        self.opened_unclean = unclean;
    }

    /// Adopts a newer catalog another broker (the controller) pushed, and tells every shard
    /// about the topics it dropped or changed. False if the bucket's catalog could not be read.
    fn follow_catalog(&self) -> bool {
        let Some(catalog) = &self.catalog else {
            return true;
        };
        match futures::executor::block_on(catalog.follow()) {
            Ok(None) => true,
            Ok(Some(adopted)) => {
                tracing::info!(
                    dropped = adopted.dropped.len(),
                    changed = adopted.changed.len(),
                    "adopted the controller's topic catalog"
                );
                for &id in &adopted.dropped {
                    self.control.drop_topic(id);
                }
                for t in &adopted.changed {
                    self.control.topic_changed(t.clone());
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not follow the bucket's topic catalog");
                false
            }
        }
    }

    /// Asks for a slot's opening or closing unless one is already under way for it.
    fn request(&self, slot: u32, ask: impl FnOnce(&dyn SlotControl) -> bool) {
        if self.membership.request(slot) && !ask(self.control.as_ref()) {
            self.membership.failed(slot, "shard gone".into());
        }
    }

    /// Runs rounds every sixth of the lease duration until `stop`; returns the lease (for its
    /// release). Calls `lost` (which should end the process) if the lease was taken over.
    pub fn spawn(
        mut self,
        stop: Arc<AtomicBool>,
        lost: impl FnOnce(LeaseError) + Send + 'static,
    ) -> std::thread::JoinHandle<Lease> {
        std::thread::Builder::new()
            .name("ringtail-cluster".into())
            .spawn(move || {
                let tick = self.lease.duration / 6;
                let mut last_ok = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    match self.round() {
                        Ok(_) => last_ok = Instant::now(),
                        Err(e @ LeaseError::Lost(_)) => {
                            lost(e);
                            break;
                        }
                        Err(e) if last_ok.elapsed() >= self.lease.duration => {
                            tracing::error!(error = %e, silent_ms = last_ok.elapsed().as_millis() as u64,
                                "cluster membership failed for a whole lease duration: other brokers may take this node's slots over");
                        }
                        Err(e) => tracing::warn!(error = %e, "cluster membership round failed; retrying"),
                    }
                    std::thread::sleep(tick);
                }
                self.lease
            })
            .expect("spawn the cluster thread")
    }
}

/// A lease's broker as Metadata names it (listener `host:port`).
fn member_of(r: &LeaseRecord) -> Member {
    let (host, port) = r
        .listener
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse().unwrap_or(-1)))
        .unwrap_or((r.listener.clone(), -1));
    Member {
        node_id: r.node_id,
        host,
        port,
        replication: r.replication.clone(),
        rack: r.rack.clone(),
    }
}

/// The smallest replication factor of the `durability=replicated` partitions of `topics` on
/// `slot` (of `slots`) that have followers: a successor must be in sync for it (usize::MAX:
/// none is there).
pub fn min_factor(topics: &[Arc<TopicMeta>], slot: u32, slots: u32) -> usize {
    topics
        .iter()
        .filter(|t| t.config.durability == Durability::Replicated && t.replication_factor > 1)
        .filter(|t| on_slot(t, slot, slots))
        .map(|t| t.replication_factor as usize)
        .min()
        .unwrap_or(usize::MAX)
}

/// Whether every `durability=replicated` partition of `topics` on `slot` (of `slots`) permits
/// an unclean election (`unclean.leader.election.enable=true`); true when none is there
/// (nothing acknowledged can be lost).
pub fn unclean_allowed(topics: &[Arc<TopicMeta>], slot: u32, slots: u32) -> bool {
    topics
        .iter()
        .filter(|t| t.config.durability == Durability::Replicated)
        .all(|t| t.config.unclean_leader_election || !on_slot(t, slot, slots))
}

/// Whether a partition of `t` is on `slot` (of `slots`).
fn on_slot(t: &TopicMeta, slot: u32, slots: u32) -> bool {
    (0..t.partitions).any(|p| owner_shard(&t.name, p, slots as usize) as u32 == slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: i32) -> Member {
        Member {
            node_id: node,
            host: "h".into(),
            port: 9000 + node,
            replication: Vec::new(),
            rack: None,
        }
    }

    fn topic(name: &str, partitions: i32, configs: &[(&str, &str)]) -> Arc<TopicMeta> {
        let configs: std::collections::BTreeMap<String, String> = configs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Arc::new(TopicMeta {
            name: name.into(),
            id: uuid::Uuid::new_v4(),
            partitions,
            replication_factor: 3,
            config: crate::catalog::topic_config::TopicConfig::from_map(&configs).unwrap(),
            configs,
        })
    }

    #[test]
    fn a_successor_must_hold_the_copies_of_the_slots_smallest_replication_factor() {
        let with_factor = |name: &str, factor: i16| {
            let t = topic(name, 1, &[("durability", "replicated")]);
            Arc::new(TopicMeta {
                replication_factor: factor,
                ..(*t).clone()
            })
        };
        let slot = |name: &str| owner_shard(name, 0, 64) as u32;
        let (two, three, one) = (
            with_factor("two", 2),
            with_factor("three", 3),
            with_factor("one", 1),
        );
        let topics = [
            two.clone(),
            three.clone(),
            one.clone(),
            topic("plain", 1, &[]),
        ];
        assert_eq!(min_factor(&topics, slot("three"), 64), 3);
        assert_eq!(min_factor(&topics, slot("two"), 64), 2);
        // One copy (no follower) or not replicated: no constraint.
        assert_eq!(
            min_factor(std::slice::from_ref(&one), slot("one"), 64),
            usize::MAX
        );
        let empty = (0..64)
            .find(|&s| s != slot("two") && s != slot("three"))
            .unwrap();
        assert_eq!(min_factor(&topics, empty, 64), usize::MAX);
    }

    #[test]
    fn an_unclean_election_needs_every_replicated_partition_on_the_slot_to_permit_it() {
        let slot_of = |name: &str, p: i32| owner_shard(name, p, 8) as u32;
        let lax = topic(
            "lax",
            1,
            &[
                ("durability", "replicated"),
                ("unclean.leader.election.enable", "TRUE"),
            ],
        );
        let strict = topic("strict", 8, &[("durability", "replicated")]);
        let wal = topic("plain", 8, &[]);
        let slot = slot_of("lax", 0);
        // Alone on its slot, the permitting topic opens it; a wal topic has no ISR to wait for.
        assert!(unclean_allowed(&[lax.clone(), wal.clone()], slot, 8));
        // A strict replicated topic with a partition there (8 partitions: one on every slot)
        // keeps it closed.
        assert!(!unclean_allowed(&[lax.clone(), strict.clone()], slot, 8));
        // A slot without replicated partitions has nothing to lose.
        assert!(unclean_allowed(&[wal], slot, 8));
        let one = topic("strict-one", 1, &[("durability", "replicated")]);
        let elsewhere = (0..8).find(|&s| s != slot_of("strict-one", 0)).unwrap();
        assert!(unclean_allowed(std::slice::from_ref(&one), elsewhere, 8));
        assert!(!unclean_allowed(&[one], slot_of("strict-one", 0), 8));
        assert!(crate::catalog::topic_config::TopicConfig::from_map(
            &[(
                "unclean.leader.election.enable".to_string(),
                "yes".to_string()
            )]
            .into()
        )
        .is_err());
    }

    #[test]
    fn slots_move_from_pending_to_open_or_closed_and_failures_are_kept_for_start_up() {
        let m = Membership::new(View::alone(member(1), 4));
        assert!(
            m.request(0) && !m.request(0),
            "one request at a time per slot"
        );
        m.claim(0);
        assert_eq!(
            m.announced(),
            [0].into(),
            "a claim is announced before it opens"
        );
        assert!(m.is_pending() && m.busy().is_some());
        m.opened(0);
        assert!(!m.is_pending());
        assert_eq!((m.open_slots(), m.announced()), ([0].into(), [0].into()));
        assert!(m.request(1));
        m.claim(1);
        m.failed(1, "disk".into());
        assert_eq!(
            m.announced(),
            [0].into(),
            "a failed opening is no longer claimed"
        );
        assert_eq!(m.take_failures(), vec![(1, "disk".to_string())]);
        assert!(m.take_failures().is_empty());
        for _ in 0..20 {
            m.failed(2, "again".into());
        }
        assert_eq!(m.take_failures().len(), 16, "bounded");
        assert!(m.request(0));
        m.closed(0);
        assert!(m.open_slots().is_empty() && m.busy().is_none());
        m.wait_all_closed(); // returns at once
    }

    #[test]
    fn waiting_for_the_slots_to_close_wakes_on_the_last_close() {
        let m = Arc::new(Membership::new(View::alone(member(1), 2)));
        m.opened(0);
        m.opened(1);
        let (_, seen) = m.busy().unwrap();
        let closer = m.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            closer.closed(0);
            std::thread::sleep(std::time::Duration::from_millis(20));
            closer.closed(1);
        });
        let started = Instant::now();
        m.wait_for_change(seen, started + std::time::Duration::from_secs(10));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "woken by the change"
        );
        m.wait_all_closed();
        assert!(m.busy().is_none());
        t.join().unwrap();
        // Nothing changes: the wait ends at its deadline.
        m.opened(0);
        let (_, seen) = m.busy().unwrap();
        let deadline = Instant::now() + std::time::Duration::from_millis(10);
        m.wait_for_change(seen, deadline);
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn the_lease_is_valid_until_its_margin_or_while_no_other_broker_is_seen() {
        let d = std::time::Duration::from_secs(10);
        let m = Membership::new(View::alone(member(1), 2));
        assert!(m.lease_valid(), "no lease written yet: valid");
        m.lease_written(Instant::now(), d);
        assert!(m.lease_valid());
        // Written a lease ago (less a tenth of margin): lapsed...
        m.lease_written(Instant::now() - d + d / 20, d);
        assert!(
            m.lease_valid(),
            "...but a lone broker keeps serving from its WAL"
        );
        let mut two = View::alone(member(1), 2);
        two.members.push(member(2));
        m.view.store(Arc::new(two));
        assert!(
            !m.lease_valid(),
            "with another broker on the bucket it stops"
        );
        m.lease_written(Instant::now(), d);
        assert!(m.lease_valid(), "renewed");
    }
}
