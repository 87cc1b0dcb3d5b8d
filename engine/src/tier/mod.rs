//! The shard's object tier: batches that are durable in the WAL are packed into objects,
//! uploaded, and committed to the shard's manifest; only then may the WAL trim behind them.

pub mod deletion;
pub mod manifest;
pub mod merge;
pub mod merging;
pub mod object_format;
pub mod span_cache;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringtail_objstore::{Condition, ObjectStore, Part, StoreError};

use crate::metrics::ShardStats;
use crate::tier::manifest::{CommitError, Committed, ManifestStore, ObjectRef, ProducerSnapshot};
use crate::tier::object_format::{ObjectBuilder, ObjectIndex, Span};

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
    builder: RefCell<ObjectBuilder>,
    next_seq: Cell<u64>,
    oldest: Cell<Option<Instant>>,
    pub bytes_target: u64,
    pub age_max: Duration,
    fenced: Cell<bool>,
    /// Seal whatever is pending, however small (clean shutdown).
    flushing: Cell<bool>,
    /// An object is being uploaded or committed (see [`Tier::busy_while`]).
    busy: Cell<bool>,
    /// Told each time the tier stops being busy: a hand-over waits there for it to go idle.
    settled: ringtail_shards::WaitList,
    urgent: Cell<bool>,
    /// DeleteRecords is waiting: run the deletion pass at the next tick.
    deletion: Cell<bool>,
    /// Unreferenced objects whose delete failed: garbage collection retries them.
    garbage: RefCell<Vec<String>>,
    /// Objects a merge replaced, deleted once their time comes (cold reads planned on them
    /// finish first), oldest first.
    retired: RefCell<std::collections::VecDeque<(Instant, String)>>,
    /// Uploaded objects whose commit the manifest's size limit refused, and when to retry them.
    /// While they wait nothing else is sealed or merged, and deletion passes run (they can make
    /// room).
    stalled: RefCell<Option<(Instant, Vec<Uploaded>)>>,
    /// Sealed objects not committed yet, in seal order: their PUTs run concurrently (at most
    /// [`UPLOADS_IN_FLIGHT_MAX`]), their commits go in this order.
    uploads: RefCell<std::collections::VecDeque<Rc<RefCell<PutState>>>>,
    /// The number in this epoch's next object key ([`Tier::next_object_key`]).
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
    stats: Arc<ShardStats>,
}

/// An object ready to upload.
pub struct Sealed {
    pub key: String,
    pub pieces: Vec<Bytes>,
    pub index: ObjectIndex,
    /// When it was sealed (its upload's duration counts from here).
    pub sealed_at: Instant,
}

/// Objects sealed and not yet committed, per slot: their PUTs overlap each other and the
/// commit of the ones before them; commits stay in seal order (ARCHITECTURE.md, "Event-driven
/// object commits").
pub const UPLOADS_IN_FLIGHT_MAX: usize = 4;

/// An object in the store, waiting for its commit.
pub struct Uploaded {
    sealed: Sealed,
    /// The producers' state when it was sealed, committed with it.
    producers: Vec<ProducerSnapshot>,
}

/// Where an upload's PUT is.
enum PutState {
    Putting,
    Done(Uploaded),
    /// Fenced or stopped before the PUT succeeded: never committed.
    GaveUp,
}

impl Tier {
    /// Takes the shard over (fencing any previous owner) and returns the tier and the committed
    /// manifest to rebuild from. Each attempt commits only while `may_take()` holds (cluster
    /// mode: this broker's claim is still good — its lease has not lapsed since).
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
        // Start-up rides out a flaky store for a while rather than failing at the first 503.
        let mut backoff = store_backoff().for_at_most(STARTUP_RETRY_MAX);
        let committed = loop {
            match manifests.take_over(may_take).await {
                Ok(c) => break c,
                Err(CommitError::Store(e)) if e.is_retryable() && backoff.may_retry() => {
                    tracing::warn!(shard, error = %e, "taking over the manifest failed; retrying");
                    backoff.wait().await;
                }
                Err(e) => return Err(e),
            }
        };
        tracing::info!(
            shard,
            epoch = committed.manifest.epoch,
            objects = committed.manifest.objects.len(),
            "took over the shard's manifest"
        );
        // Keys of earlier epochs carry their own epoch: numbering may start anywhere.
        let first_object = committed.manifest.generation + 1;
        Ok(Tier {
            store,
            manifests,
            committed: RefCell::new(committed),
            shard,
            node,
            builder: RefCell::new(ObjectBuilder::default()),
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
            stalled: RefCell::new(None),
            uploads: RefCell::new(std::collections::VecDeque::new()),
            next_object: Cell::new(first_object),
            stopped: Cell::new(false),
            merging: RefCell::new(merging::MergeState::Idle),
            in_flight_bytes: Cell::new(0),
            failing_since: Cell::new(None),
            failure_logged: Cell::new(None),
            wake: RefCell::new(None),
            stats,
        })
    }

    /// Publishes the uploader's backlog: pending plus in-flight record bytes.
    fn publish_pending(&self) {
        let pending = self.builder.borrow().data_bytes() + self.in_flight_bytes.get();
        self.stats
            .upload_pending_bytes
            .store(pending, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn committed_objects(&self) -> Vec<ObjectRef> {
        self.committed.borrow().manifest.objects.clone()
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
        self.publish_pending();
        if self.urgent.get() {
            self.request_seal();
        }
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
    /// there is something to seal and room for another upload, or uploads are ready to commit.
    /// The loop waits on it with its tick as the bound, so a waiting producer
    /// (`durability=object`, an offset commit) does not also wait for the tick.
    pub fn seal_requested(&self) -> futures::channel::oneshot::Receiver<()> {
        let (tx, rx) = futures::channel::oneshot::channel();
        // Only with something to seal: a producer asks before its batch is durable (and added).
        let seal =
            self.urgent.get() && !self.builder.borrow().is_empty() && self.may_start_upload();
        if seal || self.commit_ready() {
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

    /// Nothing pending and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.builder.borrow().is_empty()
            && !self.busy.get()
            && self.stalled.borrow().is_none()
            && self.uploads.borrow().is_empty()
            && !self.merge_running()
    }

    /// Runs `work` (an upload, a commit, a deletion or merge pass) with the tier marked busy,
    /// then tells whoever waits for the tier to settle.
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
    /// ([`UPLOADS_IN_FLIGHT_MAX`]; none while a commit is stalled). Its key takes the epoch's
    /// next object number.
    pub fn seal_if_due(&self) -> Option<Sealed> {
        if !self.may_start_upload() {
            return None;
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
        if !due || self.fenced.get() {
            return None;
        }
        let builder = std::mem::take(&mut *self.builder.borrow_mut());
        self.in_flight_bytes
            .set(self.in_flight_bytes.get() + builder.data_bytes());
        self.oldest.set(None);
        self.urgent.set(false);
        let epoch = self.committed.borrow().manifest.epoch;
        let key = self.next_object_key(epoch);
        let (pieces, index) = builder.finish(self.shard, epoch);
        Some(Sealed {
            key,
            pieces,
            index,
            sealed_at: Instant::now(),
        })
    }

    /// The key of this epoch's next object (an upload's or a merge's): never used twice within
    /// an epoch, so uploads in flight and a merge never write over each other.
    fn next_object_key(&self, epoch: u64) -> String {
        let n = self.next_object.get();
        self.next_object.set(n + 1);
        crate::layout::object(self.shard, epoch, n)
    }

    /// Whether another object may be sealed and uploaded now: fewer than
    /// [`UPLOADS_IN_FLIGHT_MAX`] are uncommitted, and no commit is stalled.
    pub fn may_start_upload(&self) -> bool {
        self.stalled.borrow().is_none() && self.uploads.borrow().len() < UPLOADS_IN_FLIGHT_MAX
    }

    /// Starts the PUT of `sealed` on its own task (retried with backoff until it succeeds, or
    /// until the tier is fenced or stopped); [`Tier::commit_uploads`] commits it in seal order
    /// once its PUT and those of the objects sealed before it are done. Wakes the upload loop
    /// when the PUT ends.
    pub fn start_upload(self: &Rc<Self>, sealed: Sealed, producers: Vec<ProducerSnapshot>) {
        let slot = Rc::new(RefCell::new(PutState::Putting));
        self.uploads.borrow_mut().push_back(slot.clone());
        let tier = self.clone();
        ringtail_shards::spawn_detached(async move {
            let put = tier.put_sealed(&sealed).await;
            let done = if put && !tier.fenced.get() && !tier.stopped.get() {
                PutState::Done(Uploaded { sealed, producers })
            } else {
                // Nothing will commit it (only the upload loop commits, and it has ended): what
                // the PUT wrote is this epoch's garbage, which no sweep of this owner deletes.
                let _ = tier.store.delete(&sealed.key).await;
                PutState::GaveUp
            };
            *slot.borrow_mut() = done;
            tier.poke();
        });
    }

    /// PUTs an object, retrying store errors with backoff; false if the tier was fenced or
    /// stopped meanwhile (nothing will commit it: an orphan of this epoch).
    async fn put_sealed(&self, sealed: &Sealed) -> bool {
        let _uploading = ringtail_shards::stats::Held::enter(&self.stats.uploads_in_flight);
        let mut backoff = store_backoff();
        loop {
            if self.fenced.get() || self.stopped.get() {
                return false;
            }
            let put = put_object(
                self.store.clone(),
                sealed.key.clone(),
                sealed.pieces.clone(),
            );
            match put.await {
                Ok(()) => return true,
                Err(e) => {
                    self.store_failed(&format!("upload {}", sealed.key), &e, backoff.delay());
                    backoff.wait().await;
                }
            }
        }
    }

    /// Objects sealed and not committed yet (PUT under way, done, or stalled).
    pub fn has_uploads(&self) -> bool {
        !self.uploads.borrow().is_empty() || self.stalled.borrow().is_some()
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

    /// Uploads ready to commit, in seal order: a stalled batch once its retry is due, else the
    /// uploads at the head of the queue whose PUTs are done (stopping at the first still under
    /// way: commits never overtake).
    fn take_ready(&self) -> (Vec<Uploaded>, bool) {
        let stalled_due = self
            .stalled
            .borrow()
            .as_ref()
            .map(|(at, _)| *at <= Instant::now());
        match stalled_due {
            Some(true) => return (self.stalled.borrow_mut().take().unwrap().1, true),
            Some(false) => return (Vec::new(), false),
            None => {}
        }
        let mut ready = Vec::new();
        let mut uploads = self.uploads.borrow_mut();
        while let Some(head) = uploads.front() {
            if !matches!(*head.borrow(), PutState::Done(_)) {
                break;
            }
            let head = uploads.pop_front().unwrap();
            let PutState::Done(u) = head.replace(PutState::GaveUp) else {
                unreachable!()
            };
            ready.push(u);
        }
        (ready, false)
    }

    /// Whether [`Tier::commit_uploads`] has something to do now.
    fn commit_ready(&self) -> bool {
        if matches!(*self.merging.borrow(), merging::MergeState::Ready(_)) {
            return true;
        }
        match self.stalled.borrow().as_ref() {
            Some((at, _)) => *at <= Instant::now(),
            None => self
                .uploads
                .borrow()
                .front()
                .is_some_and(|h| matches!(*h.borrow(), PutState::Done(_))),
        }
    }

    /// Commits every upload ready ([`Tier::take_ready`]) in one manifest commit, retrying store
    /// errors with backoff until it succeeds; returns each object's key and spans in seal order
    /// (empty: nothing ready), or an error if this shard has been fenced, or
    /// [`CommitError::TooLarge`] when the manifest has no room even for the first of them (the
    /// objects are then kept and committed again [`RETRY_DELAY_MAX`] later; nothing else is
    /// sealed meanwhile). When only some fit, those commit and the rest wait the same way.
    /// A stalled batch commits with a fresh producer snapshot (`producers_now`): snapshots
    /// shrink as producers expire, which can be what makes room.
    pub async fn commit_uploads(
        &self,
        producers_now: impl Fn() -> Vec<ProducerSnapshot>,
    ) -> Result<Vec<(String, Vec<Span>)>, CommitError> {
        let (mut ready, retry) = self.take_ready();
        if ready.is_empty() {
            return Ok(Vec::new());
        }
        let objects: Vec<ObjectRef> = ready
            .iter()
            .map(|u| ObjectRef {
                key: u.sealed.key.clone(),
                size: u.sealed.pieces.iter().map(|p| p.len() as u64).sum(),
                spans: u.sealed.index.spans.clone(),
                node: self.node,
            })
            .collect();
        let fresh = retry.then(&producers_now);
        // How many of them this commit takes (fewer when the manifest has no room for all).
        let mut n = objects.len();
        let mut backoff = store_backoff();
        loop {
            let current = self.committed.borrow().clone();
            let mut next = current.manifest.clone();
            next.objects.extend(objects[..n].iter().cloned());
            // The snapshot taken at the newest object's seal: it covers what they all hold.
            next.producers = match &fresh {
                Some(p) => p.clone(),
                None => ready[n - 1].producers.clone(),
            };
            match self.manifests.commit(Some(&current), next).await {
                Ok(c) => {
                    *self.committed.borrow_mut() = c;
                    self.store_recovered();
                    break;
                }
                Err(e @ CommitError::Fenced { .. }) | Err(e @ CommitError::Corrupt { .. }) => {
                    tracing::error!(error = %e, "object tier stops: this shard no longer owns its manifest");
                    self.fenced.set(true);
                    return Err(e);
                }
                // Refused before anything is written: try fewer.
                Err(CommitError::TooLarge { .. }) if n > 1 => n -= 1,
                Err(e @ CommitError::TooLarge { .. }) => {
                    // Uploads stop (the WAL keeps the data) until a deletion pass makes room —
                    // never an unreadable manifest. The objects are committed again later.
                    tracing::error!(error = %e, key = %objects[0].key, objects = objects.len(), "manifest commit refused: uploads are stopped; retrying in {RETRY_DELAY_MAX:?}");
                    *self.stalled.borrow_mut() = Some((Instant::now() + RETRY_DELAY_MAX, ready));
                    return Err(e);
                }
                Err(CommitError::Store(e)) => {
                    let what = format!("manifest commit of {}", objects[0].key);
                    self.store_failed(&what, &e, backoff.delay());
                    backoff.wait().await;
                }
            }
        }
        if n < ready.len() {
            let rest = ready.split_off(n);
            tracing::error!(objects = rest.len(), "manifest full: the rest of the uploads wait for room; retrying in {RETRY_DELAY_MAX:?}");
            *self.stalled.borrow_mut() = Some((Instant::now() + RETRY_DELAY_MAX, rest));
        }
        let mut committed = Vec::with_capacity(ready.len());
        for (u, object) in ready.into_iter().zip(objects) {
            let data_bytes: u64 = object.spans.iter().map(|s| s.byte_len).sum();
            self.stats.object_size.observe(object.size as f64);
            self.stats
                .object_upload_latency
                .observe_duration(u.sealed.sealed_at.elapsed());
            self.in_flight_bytes
                .set(self.in_flight_bytes.get().saturating_sub(data_bytes));
            tracing::debug!(key = %object.key, bytes = object.size, spans = object.spans.len(), "committed object");
            committed.push((object.key, object.spans));
        }
        self.publish_pending();
        Ok(committed)
    }

    /// Uploads and commits one object with no other upload in flight (tests and benchmarks;
    /// the upload loop uses [`Tier::start_upload`]): PUT here, then committed like
    /// [`Tier::commit_uploads`].
    pub async fn upload(
        &self,
        sealed: Sealed,
        producers: Vec<ProducerSnapshot>,
    ) -> Result<Vec<Span>, CommitError> {
        assert!(self.put_sealed(&sealed).await, "fenced before the upload");
        let slot = Rc::new(RefCell::new(PutState::Done(Uploaded { sealed, producers })));
        self.uploads.borrow_mut().push_back(slot);
        let mut committed = self.commit_uploads(Vec::new).await?;
        Ok(committed.pop().expect("one object committed").1)
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

/// One PUT for a small object; multipart (8 MiB parts) for a large one, aborted on failure.
fn put_object(
    store: Arc<dyn ObjectStore>,
    key: String,
    pieces: Vec<Bytes>,
) -> futures::future::BoxFuture<'static, Result<(), StoreError>> {
    Box::pin(async move {
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        let mut whole = BytesMut::with_capacity(total);
        for p in &pieces {
            whole.extend_from_slice(p);
        }
        let whole = whole.freeze();
        if total <= PART_BYTES {
            return store.put(&key, whole, Condition::None).await.map(|_| ());
        }
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
