//! The shard's object tier: batches that are durable in the WAL are packed into objects,
//! uploaded, and committed to the shard's manifest; only then may the WAL trim behind them.

pub mod deletion;
pub mod log;
pub mod manifest;
pub mod merge;
pub mod merging;
pub mod object_format;
pub mod span_cache;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringtail_objstore::{Condition, ObjectStore, Part, StoreError};

use crate::metrics::ShardStats;
use crate::tier::manifest::{
    CommitError, Committed, EpochStart, ManifestStore, ObjectRef, ProducerSnapshot,
};
use crate::tier::object_format::{ObjectBuilder, ObjectIndex, Span, Stamp};

/// Multipart part size for objects larger than one part.
pub const PART_BYTES: usize = 8 << 20;
/// Backoff bounds for retrying a failed upload or commit.
const RETRY_DELAY_MIN: Duration = Duration::from_millis(50);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);
/// How long start-up keeps retrying a store that answers with retryable errors.
pub const STARTUP_RETRY_MAX: Duration = Duration::from_secs(60);
/// While uploads fail with a permanent error, it is logged (at error level) at most this often.
pub const PERMANENT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

pub struct Tier {
    pub store: Arc<dyn ObjectStore>,
    manifests: ManifestStore,
    committed: RefCell<Committed>,
    shard: u32,
    /// This broker's node id, stamped on every object it commits.
    pub node: i32,
    /// This opening's writer id (random), stamped on its uploads: a create-only PUT refused
    /// because its number is taken tells its own earlier attempt from a newer owner's fence.
    writer: u64,
    builder: RefCell<ObjectBuilder>,
    /// Pending objects that reached [`Tier::object_bytes_max`] while no upload could start,
    /// oldest first: sealed before `builder`, so that no upload is one unbounded PUT.
    full: RefCell<std::collections::VecDeque<ObjectBuilder>>,
    /// Record bytes in `full`.
    full_bytes: Cell<u64>,
    next_seq: Cell<u64>,
    oldest: Cell<Option<Instant>>,
    pub bytes_target: u64,
    pub age_max: Duration,
    fenced: Cell<bool>,
    /// Seal whatever is pending, however small (clean shutdown).
    flushing: Cell<bool>,
    /// A commit, deletion or merge pass is under way (see [`Tier::busy_while`]).
    busy: Cell<bool>,
    /// Told each time the tier may have become idle: a hand-over waits there for it.
    settled: ringtail_shards::WaitList,
    urgent: Cell<bool>,
    /// DeleteRecords is waiting: run the deletion pass at the next tick.
    deletion: Cell<bool>,
    /// Unreferenced objects whose delete failed: garbage collection retries them.
    garbage: RefCell<Vec<String>>,
    /// Objects a merge replaced, deleted once their time comes (cold reads planned on them
    /// finish first), oldest first.
    retired: RefCell<std::collections::VecDeque<(Instant, String)>>,
    /// Sealed objects not committed yet, in log order: their PUTs run concurrently (at most
    /// [`UPLOADS_IN_FLIGHT_MAX`]); they commit in this order (L1).
    uploads: RefCell<std::collections::VecDeque<Rc<RefCell<PutState>>>>,
    /// Committed objects the manifest does not name yet, in log order (L4).
    unfolded: RefCell<std::collections::VecDeque<Unfolded>>,
    /// The manifest had no room for a fold: none is tried again before then (deletion passes
    /// and merges can make room meanwhile).
    fold_refused_until: Cell<Option<Instant>>,
    /// The log number of the next upload.
    next_log: Cell<u64>,
    /// The number in this epoch's next merged object's key ([`Tier::next_object_key`]).
    next_object: Cell<u64>,
    /// The upload loop ended: PUTs under way stop retrying.
    stopped: Cell<bool>,
    /// The merge being prepared off the upload loop, or ready for its commit.
    merging: RefCell<merging::MergeState>,
    /// Record bytes sealed into objects not committed yet.
    in_flight_bytes: Cell<u64>,
    /// Since when uploads fail with a permanent store error, and when that was last logged.
    failing_since: Cell<Option<Instant>>,
    failure_logged: Cell<Option<Instant>>,
    /// Wakes the upload loop out of its tick when a producer waits for an upload.
    wake: RefCell<Option<futures::channel::oneshot::Sender<()>>>,
    /// Told of every committed object, at its commit ([`Tier::set_on_committed`]).
    on_committed: RefCell<Option<Rc<OnCommitted>>>,
    stats: Arc<ShardStats>,
}

/// Told of an object (its key and spans) as it commits.
type OnCommitted = dyn Fn(String, Vec<Span>);

/// An object ready to upload: the slot's next log object.
pub struct Sealed {
    pub key: String,
    /// Its number in the slot's log.
    pub number: u64,
    pub pieces: Vec<Bytes>,
    pub index: ObjectIndex,
    /// When it was sealed (its upload's duration counts from here).
    pub sealed_at: Instant,
}

/// Objects sealed and not yet committed, per slot: their PUTs overlap; they commit in log
/// order (ARCHITECTURE.md, "Event-driven object commits").
pub const UPLOADS_IN_FLIGHT_MAX: usize = 4;
/// Committed objects the manifest may leave unfolded (L7): beyond, nothing more is sealed.
pub const UNFOLDED_MAX: usize = 256;
/// [`Tier::object_bytes_max`] is twice the object size target, and at least this.
pub const OBJECT_BYTES_MAX_FLOOR: u64 = 16 << 20;
/// A fold is due with this many objects unfolded, or when the oldest is [`FOLD_AGE`] old.
pub const FOLD_OBJECTS: usize = 32;
pub const FOLD_AGE: Duration = Duration::from_secs(1);

/// A committed object the manifest does not name yet.
struct Unfolded {
    number: u64,
    object: ObjectRef,
    producers: Vec<ProducerSnapshot>,
    epochs: Vec<EpochStart>,
    committed_at: Instant,
}

/// Where an upload's PUT is.
enum PutState {
    Putting,
    Written(Sealed),
    /// Fenced or stopped before the PUT succeeded: never committed by this opening.
    GaveUp,
}

/// How an upload's PUT ended.
enum PutEnd {
    Written,
    /// A newer owner's fence holds the number (L2).
    Fenced,
    /// The upload loop ended first.
    Stopped,
}

impl Tier {
    /// Takes the shard over (fencing any previous owner: its manifest and its log of objects,
    /// L3) and returns the tier, whose committed manifest is what to rebuild from. Each attempt
    /// fences and commits only while `may_take()` holds (cluster mode: this broker's claim is
    /// still good — its lease has not lapsed since).
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        shard: u32,
        node: i32,
        bytes_target: u64,
        age_max: Duration,
        stats: Arc<ShardStats>,
        may_take: &dyn Fn() -> bool,
    ) -> Result<Tier, CommitError> {
        let manifests = ManifestStore::new(store.clone(), shard);
        let writer = loop {
            let w = uuid::Uuid::new_v4().as_u64_pair().0;
            if w != 0 {
                break w;
            }
        };
        // Start-up rides out a flaky store for a while rather than failing at the first 503.
        let mut backoff = store_backoff().for_at_most(STARTUP_RETRY_MAX);
        let taken = loop {
            match log::take_over(&manifests, &store, node, writer, may_take).await {
                Ok(t) => break t,
                Err(CommitError::Store(e)) if e.is_retryable() && backoff.may_retry() => {
                    tracing::warn!(shard, error = %e, "taking over the manifest failed; retrying");
                    backoff.wait().await;
                }
                Err(e) => return Err(e),
            }
        };
        let committed = taken.committed;
        tracing::info!(
            shard,
            epoch = committed.manifest.epoch,
            objects = committed.manifest.objects.len(),
            "took over the shard's manifest"
        );
        // Merged objects' keys of earlier epochs carry their own epoch: numbering may start
        // anywhere.
        let first_object = committed.manifest.generation + 1;
        let unfolded = taken
            .unfolded
            .into_iter()
            .map(|f| Unfolded {
                number: f.number,
                object: f.object_ref(),
                producers: f.index.producers,
                epochs: f.index.epochs,
                committed_at: Instant::now(),
            })
            .collect();
        Ok(Tier {
            store,
            manifests,
            committed: RefCell::new(committed),
            shard,
            node,
            writer,
            builder: RefCell::new(ObjectBuilder::default()),
            full: RefCell::new(std::collections::VecDeque::new()),
            full_bytes: Cell::new(0),
            next_seq: Cell::new(1),
            oldest: Cell::new(None),
            bytes_target,
            age_max,
            fenced: Cell::new(false),
            flushing: Cell::new(false),
            busy: Cell::new(false),
            settled: ringtail_shards::WaitList::new(),
            urgent: Cell::new(false),
            deletion: Cell::new(false),
            garbage: RefCell::new(Vec::new()),
            retired: RefCell::new(std::collections::VecDeque::new()),
            uploads: RefCell::new(std::collections::VecDeque::new()),
            unfolded: RefCell::new(unfolded),
            fold_refused_until: Cell::new(None),
            next_log: Cell::new(taken.resume),
            next_object: Cell::new(first_object),
            stopped: Cell::new(false),
            merging: RefCell::new(merging::MergeState::Idle),
            in_flight_bytes: Cell::new(0),
            failing_since: Cell::new(None),
            failure_logged: Cell::new(None),
            wake: RefCell::new(None),
            on_committed: RefCell::new(None),
            stats,
        })
    }

    /// Publishes the uploader's backlog: pending plus in-flight record bytes.
    fn publish_pending(&self) {
        let pending =
            self.builder.borrow().data_bytes() + self.full_bytes.get() + self.in_flight_bytes.get();
        self.stats
            .upload_pending_bytes
            .store(pending, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every committed object: those the manifest names, then the unfolded ones in log order.
    pub fn committed_objects(&self) -> Vec<ObjectRef> {
        let mut objects = self.committed.borrow().manifest.objects.clone();
        objects.extend(self.unfolded.borrow().iter().map(|u| u.object.clone()));
        objects
    }

    /// The partitions' leader epochs in the committed data: the manifest's, and those of the
    /// unfolded objects as a fold would add them.
    pub fn committed_epochs(&self) -> Vec<EpochStart> {
        let mut epochs = self.committed.borrow().manifest.epochs.clone();
        manifest::add_epochs(
            &mut epochs,
            self.unfolded.borrow().iter().flat_map(|u| &u.epochs),
        );
        epochs
    }

    /// Who hears of each object as it commits (the slot's partitions: waiting producers are
    /// answered, the WAL trims behind it).
    pub fn set_on_committed(&self, f: impl Fn(String, Vec<Span>) + 'static) {
        *self.on_committed.borrow_mut() = Some(Rc::new(f));
    }

    /// Queues a durable batch for the next object.
    pub fn add(
        &self,
        topic_id: [u8; 16],
        partition: i32,
        header: ringtail_netio::header::BatchHeader,
        bytes: Bytes,
    ) {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        self.builder
            .borrow_mut()
            .add(seq, topic_id, partition, header, bytes);
        if self.oldest.get().is_none() {
            self.oldest.set(Some(Instant::now()));
        }
        if self.builder.borrow().data_bytes() >= self.object_bytes_max() {
            let full = std::mem::take(&mut *self.builder.borrow_mut());
            self.full_bytes
                .set(self.full_bytes.get() + full.data_bytes());
            self.full.borrow_mut().push_back(full);
            self.oldest.set(None);
            self.poke();
        }
        self.publish_pending();
        if self.urgent.get() {
            self.request_seal();
        }
    }

    /// The ownership epoch this opening took the slot over at: its partitions' leader epoch.
    pub fn epoch(&self) -> u64 {
        self.committed.borrow().manifest.epoch
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.get()
    }

    /// Seal the pending object at the next tick, however small (a `durability=object` produce
    /// is waiting for it).
    pub fn request_seal(&self) {
        self.urgent.set(true);
        self.poke();
    }

    /// Resolves when the upload loop has work (at once if it has already): a seal is requested,
    /// there is something to seal and room for another upload, a fold is due, or a merge is
    /// ready to commit. The loop waits on it with its tick as the bound, so a waiting producer
    /// (`durability=object`, an offset commit) does not also wait for the tick.
    pub fn seal_requested(&self) -> futures::channel::oneshot::Receiver<()> {
        let (tx, rx) = futures::channel::oneshot::channel();
        // Only with something to seal: a producer asks before its batch is durable (and added).
        let seal = (self.urgent.get() && !self.builder.borrow().is_empty()
            || !self.full.borrow().is_empty())
            && self.may_start_upload();
        if seal || self.fold_due() || self.merge_ready() {
            let _ = tx.send(());
        } else {
            *self.wake.borrow_mut() = Some(tx);
        }
        rx
    }

    /// Run the deletion pass at the next tick (a DeleteRecords is waiting for it).
    pub fn request_deletion(&self) {
        self.deletion.set(true);
    }

    pub fn take_deletion_request(&self) -> bool {
        self.deletion.replace(false)
    }

    /// From now on every pending batch is sealed at once (clean shutdown).
    pub fn start_flush(&self) {
        self.flushing.set(true);
    }

    /// Nothing pending and nothing in flight: every durable batch is in a committed object
    /// (unfolded ones included: the next owner's take-over folds them).
    /// While flushing (a hand-over, a shutdown) also nothing unfolded, unless the manifest has
    /// no room for it: the next owner's take-over then need not read it, and no fold of this
    /// owner's lands under the next owner's first commit.
    pub fn is_idle(&self) -> bool {
        self.builder.borrow().is_empty()
            && self.full.borrow().is_empty()
            && !self.busy.get()
            && self.uploads.borrow().is_empty()
            && !self.merge_running()
            && (!self.flushing.get()
                || self.unfolded.borrow().is_empty()
                || self.fold_refused_until.get().is_some())
    }

    /// Runs `work` (a fold, a deletion or merge pass) with the tier marked busy, then tells
    /// whoever waits for the tier to settle.
    pub async fn busy_while<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.busy.set(true);
        let out = work.await;
        self.busy.set(false);
        self.settled.notify_all();
        out
    }

    /// Resolves once the tier is idle or fenced (true), or after `limit` (false).
    pub async fn settle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        self.settled
            .wait_until_deadline(deadline, || self.is_idle() || self.is_fenced())
            .await
    }

    /// The pending object, if it is big or old enough and there is room for another upload
    /// ([`Tier::may_start_upload`]), sealed with the producers' state `producers()` gives. It
    /// takes the log's next number.
    pub fn seal_if_due(&self, producers: impl FnOnce() -> Vec<ProducerSnapshot>) -> Option<Sealed> {
        if !self.may_start_upload() || self.fenced.get() {
            return None;
        }
        let full = self.full.borrow_mut().pop_front();
        if let Some(full) = full {
            self.full_bytes
                .set(self.full_bytes.get() - full.data_bytes());
            return Some(self.seal(full, producers));
        }
        let due = {
            let b = self.builder.borrow();
            !b.is_empty()
                && (b.data_bytes() >= self.bytes_target
                    || self.flushing.get()
                    || self.urgent.get()
                    || self
                        .oldest
                        .get()
                        .is_some_and(|t| t.elapsed() >= self.age_max))
        };
        if !due {
            return None;
        }
        let builder = std::mem::take(&mut *self.builder.borrow_mut());
        self.oldest.set(None);
        self.urgent.set(false);
        Some(self.seal(builder, producers))
    }

    /// The largest pending object: beyond, it waits whole (in `full`) and the next begins.
    pub fn object_bytes_max(&self) -> u64 {
        (2 * self.bytes_target).max(OBJECT_BYTES_MAX_FLOOR)
    }

    /// Seals `builder` as the log's next object.
    fn seal(
        &self,
        builder: ObjectBuilder,
        producers: impl FnOnce() -> Vec<ProducerSnapshot>,
    ) -> Sealed {
        self.in_flight_bytes
            .set(self.in_flight_bytes.get() + builder.data_bytes());
        let number = self.next_log.get();
        self.next_log.set(number + 1);
        let epoch = self.committed.borrow().manifest.epoch;
        let stamp = Stamp {
            shard: self.shard,
            epoch,
            node: self.node,
            writer: self.writer,
            producers: producers(),
        };
        let (pieces, index) = builder.finish(stamp);
        Sealed {
            key: crate::layout::log_object(self.shard, number),
            number,
            pieces,
            index,
            sealed_at: Instant::now(),
        }
    }

    /// The key of this epoch's next merged object: never used twice within an epoch, so that
    /// merges never write over each other.
    fn next_object_key(&self, epoch: u64) -> String {
        let n = self.next_object.get();
        self.next_object.set(n + 1);
        crate::layout::object(self.shard, epoch, n)
    }

    /// Whether another object may be sealed and uploaded now: fewer than
    /// [`UPLOADS_IN_FLIGHT_MAX`] are uncommitted and fewer than [`UNFOLDED_MAX`] unfolded.
    pub fn may_start_upload(&self) -> bool {
        self.uploads.borrow().len() < UPLOADS_IN_FLIGHT_MAX
            && self.unfolded.borrow().len() < UNFOLDED_MAX
    }

    /// Starts the PUT of `sealed` on its own task (create-only at its log number, retried with
    /// backoff until it succeeds, or until the tier is fenced or stopped). The PUT that
    /// completes a prefix of the log commits it ([`Tier::advance`], L1).
    pub fn start_upload(self: &Rc<Self>, sealed: Sealed) {
        let slot = Rc::new(RefCell::new(PutState::Putting));
        self.uploads.borrow_mut().push_back(slot.clone());
        let tier = self.clone();
        ringtail_shards::spawn_detached(async move {
            let end = tier.put_sealed(&sealed).await;
            *slot.borrow_mut() = match end {
                PutEnd::Written => PutState::Written(sealed),
                // Kept even if written meanwhile (L5): a later opening folds it if it
                // completes the log's prefix, and sweeps it if not.
                PutEnd::Fenced | PutEnd::Stopped => PutState::GaveUp,
            };
            tier.advance();
            tier.poke();
        });
    }

    /// PUTs an object create-only at its log number, retrying store errors with backoff.
    async fn put_sealed(&self, sealed: &Sealed) -> PutEnd {
        let _uploading = ringtail_shards::stats::Held::enter(&self.stats.uploads_in_flight);
        let mut backoff = store_backoff();
        loop {
            if self.fenced.get() {
                return PutEnd::Fenced;
            }
            if self.stopped.get() {
                return PutEnd::Stopped;
            }
            // The pieces as they are (no joining copy where the store copies anyway).
            let put =
                self.store
                    .put_pieces(&sealed.key, sealed.pieces.clone(), Condition::IfNoneMatch);
            let refused = match put.await {
                Ok(_) => return PutEnd::Written,
                Err(StoreError::PreconditionFailed(_)) => {
                    log::holder(&*self.store, self.shard, &sealed.key, self.writer).await
                }
                Err(e) => Err(e.into()),
            };
            let why = match refused {
                Ok(log::Holder::Own) => return PutEnd::Written,
                // A conditional write there is still under way (this one's own earlier
                // attempt, retried by the client, or another owner's fence): ask again.
                Ok(log::Holder::Nobody) => {
                    backoff.wait().await;
                    continue;
                }
                Err(CommitError::Store(e)) => {
                    self.store_failed(&format!("upload {}", sealed.key), &e, backoff.delay());
                    backoff.wait().await;
                    continue;
                }
                Ok(log::Holder::Other) => "another owner fenced this slot's log".to_string(),
                Err(e) => format!("the object at this upload's number is damaged: {e}"),
            };
            tracing::error!(key = %sealed.key, "object tier stops: {why}");
            self.fenced.set(true);
            self.settled.notify_all();
            return PutEnd::Fenced;
        }
    }

    /// Commits the uploads at the head of the queue whose PUTs are done, in log order (stopping
    /// at the first still under way: commits never overtake), and tells
    /// [`Tier::set_on_committed`]'s listener of each.
    fn advance(&self) {
        let mut committed = Vec::new();
        {
            let mut uploads = self.uploads.borrow_mut();
            let mut unfolded = self.unfolded.borrow_mut();
            while let Some(head) = uploads.front() {
                if !matches!(*head.borrow(), PutState::Written(_)) {
                    break;
                }
                let head = uploads.pop_front().unwrap();
                let PutState::Written(sealed) = head.replace(PutState::GaveUp) else {
                    unreachable!()
                };
                let size = sealed.pieces.iter().map(|p| p.len() as u64).sum();
                let object = ObjectRef::of(sealed.key.clone(), size, &sealed.index);
                let data_bytes: u64 = object.spans.iter().map(|s| s.byte_len).sum();
                self.stats.object_size.observe(object.size as f64);
                self.stats
                    .object_upload_latency
                    .observe_duration(sealed.sealed_at.elapsed());
                self.in_flight_bytes
                    .set(self.in_flight_bytes.get().saturating_sub(data_bytes));
                tracing::debug!(key = %object.key, bytes = object.size, spans = object.spans.len(), "committed object");
                committed.push((object.key.clone(), object.spans.clone()));
                unfolded.push_back(Unfolded {
                    number: sealed.number,
                    object,
                    producers: sealed.index.producers,
                    epochs: sealed.index.epochs,
                    committed_at: Instant::now(),
                });
            }
        }
        if committed.is_empty() {
            return;
        }
        self.store_recovered();
        self.publish_pending();
        let listener = self.on_committed.borrow().clone();
        if let Some(listener) = listener {
            for (key, spans) in committed {
                listener(key, spans);
            }
        }
        self.settled.notify_all();
    }

    /// Objects sealed and not committed yet (PUT under way).
    pub fn has_uploads(&self) -> bool {
        !self.uploads.borrow().is_empty()
    }

    /// No further PUT is retried (the slot's upload loop ended).
    pub fn stop_uploads(&self) {
        self.stopped.set(true);
    }

    /// Wakes the upload loop if it waits (see [`Tier::seal_requested`]).
    fn poke(&self) {
        if let Some(tx) = self.wake.borrow_mut().take() {
            let _ = tx.send(());
        }
    }

    /// Whether a fold is due (L4): [`FOLD_OBJECTS`] unfolded, or the oldest [`FOLD_AGE`] old,
    /// or the tier is flushing; never while a refused fold waits for its retry.
    fn fold_due(&self) -> bool {
        if self
            .fold_refused_until
            .get()
            .is_some_and(|t| Instant::now() < t)
        {
            return false;
        }
        let unfolded = self.unfolded.borrow();
        unfolded.len() >= FOLD_OBJECTS
            || unfolded
                .front()
                .is_some_and(|u| self.flushing.get() || u.committed_at.elapsed() >= FOLD_AGE)
    }

    /// Folds the committed objects the manifest does not name yet into it, if due
    /// ([`Tier::fold_due`]) or `force`d, in one manifest commit retried on store errors until
    /// it succeeds (L4); returns how many it folded. With the producer snapshot of the newest
    /// folded object (L6), or `producers_now()` after a refusal for size (snapshots shrink as
    /// producers expire, which can be what makes room). When the manifest has no room, fewer
    /// are folded; when it has none even for one, [`CommitError::TooLarge`] and no fold is
    /// tried for [`RETRY_DELAY_MAX`] (sealing stops at [`UNFOLDED_MAX`]; the WAL holds the
    /// data). Any other error: this shard was fenced.
    pub async fn fold(
        &self,
        force: bool,
        producers_now: impl Fn() -> Vec<ProducerSnapshot>,
    ) -> Result<usize, CommitError> {
        if self.unfolded.borrow().is_empty() || !(force || self.fold_due()) {
            return Ok(0);
        }
        let fresh = self.fold_refused_until.get().is_some().then(&producers_now);
        let mut n = self.unfolded.borrow().len();
        let mut backoff = store_backoff();
        loop {
            let current = self.committed.borrow().clone();
            let mut next = current.manifest.clone();
            {
                let unfolded = self.unfolded.borrow();
                let batch = unfolded.range(..n);
                next.objects.extend(batch.clone().map(|u| u.object.clone()));
                next.add_epochs(batch.flat_map(|u| &u.epochs));
                let newest = &unfolded[n - 1];
                next.log_next = newest.number + 1;
                next.producers = fresh.clone().unwrap_or_else(|| newest.producers.clone());
            }
            match self.manifests.commit(Some(&current), next).await {
                Ok(c) => {
                    *self.committed.borrow_mut() = c;
                    self.unfolded.borrow_mut().drain(..n);
                    self.fold_refused_until.set(None);
                    self.store_recovered();
                    return Ok(n);
                }
                Err(e @ CommitError::Fenced { .. }) | Err(e @ CommitError::Corrupt { .. }) => {
                    tracing::error!(error = %e, "object tier stops: this shard no longer owns its manifest");
                    self.fenced.set(true);
                    return Err(e);
                }
                // Refused before anything is written: try fewer.
                Err(CommitError::TooLarge { .. }) if n > 1 => n /= 2,
                Err(e @ CommitError::TooLarge { .. }) => {
                    tracing::error!(error = %e, unfolded = self.unfolded.borrow().len(), "manifest full: committed objects stay unfolded (sealing stops at {UNFOLDED_MAX}); retrying in {RETRY_DELAY_MAX:?}");
                    self.fold_refused_until
                        .set(Some(Instant::now() + RETRY_DELAY_MAX));
                    return Err(e);
                }
                Err(CommitError::Store(e)) => {
                    self.store_failed("manifest commit (fold)", &e, backoff.delay());
                    backoff.wait().await;
                }
            }
        }
    }

    /// Uploads and commits one object with no other upload in flight (tests and benchmarks;
    /// the slot uses [`Tier::start_upload`]): the PUT here, then committed as the PUT task
    /// does, then folded into the manifest.
    pub async fn upload(&self, sealed: Sealed) -> Result<Vec<Span>, CommitError> {
        assert!(self.uploads.borrow().is_empty(), "no upload in flight");
        let spans = sealed.index.spans.clone();
        match self.put_sealed(&sealed).await {
            PutEnd::Written => {}
            PutEnd::Fenced => {
                return Err(CommitError::Fenced {
                    shard: self.shard,
                    epoch: self.committed.borrow().manifest.epoch,
                    newer_epoch: None,
                })
            }
            PutEnd::Stopped => panic!("stopped during an upload"),
        }
        let slot = Rc::new(RefCell::new(PutState::Written(sealed)));
        self.uploads.borrow_mut().push_back(slot);
        self.advance();
        self.fold(true, Vec::new).await?;
        Ok(spans)
    }
}

impl Tier {
    /// A store request of the upload path failed; it is retried after `delay`. A retryable
    /// error (503, 500, no connection) is a warning. A permanent one (403, NoSuchBucket: an
    /// operator must act) is counted, logged at error level at most once per
    /// [`PERMANENT_ERROR_LOG_INTERVAL`], and makes `/ready` answer 503 until a commit succeeds;
    /// retrying goes on meanwhile (the WAL holds the data), so the fix needs no restart.
    fn store_failed(&self, what: &str, e: &StoreError, delay: Duration) {
        if e.is_retryable() {
            tracing::warn!(slot = self.shard, error = %e, "{what} failed; retrying in {delay:?}");
            return;
        }
        self.stats
            .upload_permanent_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let since = *self.failing_since.get().get_or_insert_with(Instant::now);
        self.failing_since.set(Some(since));
        self.stats
            .upload_failures
            .lock()
            .unwrap()
            .insert(self.shard, format!("{what}: {e}"));
        let quiet = self
            .failure_logged
            .get()
            .is_some_and(|t| t.elapsed() < PERMANENT_ERROR_LOG_INTERVAL);
        if quiet {
            tracing::debug!(slot = self.shard, error = %e, "{what} failed (permanent); retrying in {delay:?}");
            return;
        }
        self.failure_logged.set(Some(Instant::now()));
        tracing::error!(
            slot = self.shard,
            error = %e,
            failing_for = ?since.elapsed(),
            "{what} fails with a permanent error: check the bucket and the credentials; \
             retrying (the WAL holds the data until it is full), /ready answers 503 meanwhile"
        );
    }

    /// A manifest commit succeeded: uploads work again (or the slot closes).
    fn store_recovered(&self) {
        if let Some(since) = self.failing_since.take() {
            self.failure_logged.set(None);
            self.stats
                .upload_failures
                .lock()
                .unwrap()
                .remove(&self.shard);
            tracing::info!(slot = self.shard, failed_for = ?since.elapsed(), "uploads resume: the store accepts them again");
        }
    }
}

impl Drop for Tier {
    /// A closed slot no longer keeps the broker unready.
    fn drop(&mut self) {
        self.stats
            .upload_failures
            .lock()
            .unwrap()
            .remove(&self.shard);
    }
}

/// How the upload path retries a failing store: from 50 ms, doubling up to 5 s.
pub fn store_backoff() -> ringtail_shards::Backoff {
    ringtail_shards::Backoff::new(RETRY_DELAY_MIN, RETRY_DELAY_MAX)
}

/// One PUT for a small object; multipart (8 MiB parts) for a large one, aborted on failure
/// (merged objects; uploads are one create-only PUT, whatever their size).
fn put_object(
    store: Arc<dyn ObjectStore>,
    key: String,
    pieces: Vec<Bytes>,
) -> futures::future::BoxFuture<'static, Result<(), StoreError>> {
    Box::pin(async move {
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        if total <= PART_BYTES {
            return store
                .put_pieces(&key, pieces, Condition::None)
                .await
                .map(|_| ());
        }
        let whole = ringtail_objstore::join(&pieces);
        let id = store.create_multipart(&key).await?;
        let mut parts: Vec<Part> = Vec::new();
        for (i, at) in (0..total).step_by(PART_BYTES).enumerate() {
            let chunk = whole.slice(at..(at + PART_BYTES).min(total));
            match store.upload_part(&key, &id, i as i32 + 1, chunk).await {
                Ok(p) => parts.push(p),
                Err(e) => {
                    let _ = store.abort_multipart(&key, &id).await;
                    return Err(e);
                }
            }
        }
        if let Err(e) = store.complete_multipart(&key, &id, parts).await {
            let _ = store.abort_multipart(&key, &id).await;
            return Err(e);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests;
