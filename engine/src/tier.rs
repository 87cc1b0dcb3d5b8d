//! The shard's object tier: batches that are durable in the WAL are packed into objects,
//! uploaded, and committed to the shard's manifest; only then may the WAL trim behind them.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringtail_objstore::{Condition, ObjectStore, Part, StoreError};

use std::collections::HashMap;

use crate::manifest::{
    CommitError, Committed, LogStart, ManifestStore, ObjectRef, ProducerSnapshot,
};
use crate::metrics::ShardStats;
use crate::object_format::{
    object_epoch, object_key, object_prefix, ObjectBuilder, ObjectIndex, Span,
};

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
    /// An object is being uploaded or committed.
    pub busy: Cell<bool>,
    urgent: Cell<bool>,
    /// DeleteRecords is waiting: run the deletion pass at the next tick.
    deletion: Cell<bool>,
    /// Unreferenced objects whose delete failed: garbage collection retries them.
    garbage: RefCell<Vec<String>>,
    /// Record bytes sealed into the object being uploaded (not committed yet).
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
        let deadline = Instant::now() + STARTUP_RETRY_MAX;
        let mut delay = RETRY_DELAY_MIN;
        let committed = loop {
            match manifests.take_over(may_take).await {
                Ok(c) => break c,
                Err(CommitError::Store(e)) if e.is_retryable() && Instant::now() < deadline => {
                    tracing::warn!(shard, error = %e, "taking over the manifest failed; retrying");
                    ringtail_shards::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
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
            urgent: Cell::new(false),
            deletion: Cell::new(false),
            garbage: RefCell::new(Vec::new()),
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
        header: ringtail_netio::batch::BatchHeader,
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
        if let Some(tx) = self.wake.borrow_mut().take() {
            let _ = tx.send(());
        }
    }

    /// Resolves when a seal is requested and there is something to seal (at once if so
    /// already): the upload loop waits on it with its tick as the bound, so a waiting producer
    /// (`durability=object`, an offset commit) does not also wait for the tick.
    pub fn seal_requested(&self) -> futures::channel::oneshot::Receiver<()> {
        let (tx, rx) = futures::channel::oneshot::channel();
        // Only with something to seal: a producer asks before its batch is durable (and added).
        if self.urgent.get() && !self.builder.borrow().is_empty() {
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
        self.builder.borrow().is_empty() && !self.busy.get()
    }

    /// The pending object, if it is big or old enough.
    pub fn seal_if_due(&self) -> Option<Sealed> {
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
        let (epoch, generation) = {
            let c = self.committed.borrow();
            (c.manifest.epoch, c.manifest.generation)
        };
        let key = object_key(self.shard, epoch, generation + 1);
        let (pieces, index) = builder.finish(self.shard, epoch);
        Some(Sealed { key, pieces, index })
    }

    /// Uploads and commits an object, retrying store errors with backoff until it succeeds;
    /// returns its spans, or an error only if this shard has been fenced.
    pub async fn upload(
        &self,
        sealed: Sealed,
        producers: Vec<ProducerSnapshot>,
    ) -> Result<Vec<Span>, CommitError> {
        let size: u64 = sealed.pieces.iter().map(|p| p.len() as u64).sum();
        let data_bytes: u64 = sealed.index.spans.iter().map(|s| s.byte_len).sum();
        let t = Instant::now();
        let mut delay = RETRY_DELAY_MIN;
        while let Err(e) = put_object(
            self.store.clone(),
            sealed.key.clone(),
            sealed.pieces.clone(),
        )
        .await
        {
            self.store_failed(&format!("upload {}", sealed.key), &e, delay);
            ringtail_shards::sleep(jitter(delay)).await;
            delay = (delay * 2).min(RETRY_DELAY_MAX);
        }
        let upload_ms = t.elapsed().as_millis();
        let object = ObjectRef {
            key: sealed.key.clone(),
            size,
            spans: sealed.index.spans.clone(),
            node: self.node,
        };
        let mut delay = RETRY_DELAY_MIN;
        loop {
            let current = self.committed.borrow().clone();
            let mut next = current.manifest.clone();
            next.objects.push(object.clone());
            next.producers = producers.clone();
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
                Err(CommitError::Store(e)) => {
                    self.store_failed(&format!("manifest commit of {}", sealed.key), &e, delay);
                    ringtail_shards::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
                }
            }
        }
        self.stats.object_size.observe(size as f64);
        self.stats
            .object_upload_latency
            .observe_duration(t.elapsed());
        self.in_flight_bytes
            .set(self.in_flight_bytes.get().saturating_sub(data_bytes));
        self.publish_pending();
        tracing::debug!(key = %sealed.key, bytes = size, spans = object.spans.len(), upload_ms, "committed object");
        Ok(object.spans)
    }
}

impl Tier {
    /// Deletes objects that no committed manifest references and none ever will. With `sweep`
    /// (at start) it lists the shard's objects and deletes those written under an older epoch
    /// that the manifest does not name: uploads of an owner that crashed or was fenced before
    /// committing, and deletes that failed before a restart. An older epoch's writer can never
    /// commit again (taking over changed the manifest under it), so these are certain garbage;
    /// objects of the current epoch are never swept (one may be uploading right now). Always
    /// retries the deletes that failed since. Returns how many objects it deleted.
    pub async fn collect_garbage(&self, sweep: bool) -> usize {
        let mut keys = std::mem::take(&mut *self.garbage.borrow_mut());
        if sweep {
            let prefix = object_prefix(self.shard);
            match self.store.list(&prefix).await {
                Ok(objects) => {
                    let (epoch, referenced): (u64, std::collections::HashSet<String>) = {
                        let c = self.committed.borrow();
                        (
                            c.manifest.epoch,
                            c.manifest.objects.iter().map(|o| o.key.clone()).collect(),
                        )
                    };
                    keys.extend(objects.into_iter().map(|o| o.key).filter(|k| {
                        !referenced.contains(k) && object_epoch(k).is_some_and(|e| e < epoch)
                    }));
                }
                Err(e) => {
                    tracing::warn!(shard = self.shard, error = %e, "listing objects for garbage collection failed; the next start retries")
                }
            }
        }
        keys.sort();
        keys.dedup();
        let mut deleted = 0;
        for key in keys {
            match self.store.delete(&key).await {
                Ok(()) | Err(StoreError::NotFound(_)) => deleted += 1,
                Err(e) => {
                    tracing::warn!(%key, error = %e, "could not delete garbage; retrying later");
                    self.garbage.borrow_mut().push(key);
                }
            }
        }
        if deleted > 0 {
            tracing::info!(shard = self.shard, deleted, "deleted unreferenced objects");
        }
        deleted
    }
}

/// A partition in a manifest: (topic id, partition index).
pub type StreamKey = ([u8; 16], i32);

impl Tier {
    /// The committed log starts (partitions that deleted data).
    pub fn committed_log_starts(&self) -> Vec<LogStart> {
        self.committed.borrow().manifest.log_starts.clone()
    }

    /// The idempotent producers' state as last committed.
    pub fn committed_producers(&self) -> Vec<ProducerSnapshot> {
        self.committed.borrow().manifest.producers.clone()
    }

    /// Deletes data in one manifest commit: removes the spans `drop` selects (retention,
    /// DeleteRecords, deleted topics), raises log starts to `starts`, forgets the log starts of
    /// partitions `live` rejects; then deletes the objects left without any span. Returns the
    /// dropped spans and the committed log starts.
    pub async fn delete_data(
        &self,
        drop: impl Fn(&Span) -> bool,
        starts: &HashMap<StreamKey, i64>,
        live: impl Fn(&StreamKey) -> bool,
    ) -> Result<(Vec<Span>, HashMap<StreamKey, i64>), CommitError> {
        let mut delay = RETRY_DELAY_MIN;
        loop {
            let current = self.committed.borrow().clone();
            let mut dropped = Vec::new();
            let mut unreferenced = Vec::new();
            let mut next = current.manifest.clone();
            next.objects = current
                .manifest
                .objects
                .iter()
                .filter_map(|o| {
                    let (gone, kept): (Vec<Span>, Vec<Span>) =
                        o.spans.iter().cloned().partition(|s| drop(s));
                    dropped.extend(gone);
                    if kept.is_empty() {
                        unreferenced.push(o.key.clone());
                        None
                    } else {
                        Some(ObjectRef {
                            spans: kept,
                            ..o.clone()
                        })
                    }
                })
                .collect();
            let mut merged: HashMap<StreamKey, i64> = current
                .manifest
                .log_starts
                .iter()
                .map(|l| ((l.topic_id, l.partition), l.offset))
                .filter(|(k, _)| live(k))
                .collect();
            for (k, &offset) in starts {
                let at = merged.entry(*k).or_insert(offset);
                *at = (*at).max(offset);
            }
            let mut log_starts: Vec<LogStart> = merged
                .iter()
                .map(|(&(topic_id, partition), &offset)| LogStart {
                    topic_id,
                    partition,
                    offset,
                })
                .collect();
            log_starts.sort_by_key(|l| (l.topic_id, l.partition));
            if dropped.is_empty() && log_starts == current.manifest.log_starts {
                return Ok((dropped, merged));
            }
            next.log_starts = log_starts;
            match self.manifests.commit(Some(&current), next).await {
                Ok(c) => {
                    *self.committed.borrow_mut() = c;
                    self.store_recovered();
                    // Only now that no committed manifest references them.
                    for key in unreferenced {
                        if let Err(e) = self.store.delete(&key).await {
                            tracing::warn!(%key, error = %e, "could not delete an unreferenced object (garbage collection retries it)");
                            self.garbage.borrow_mut().push(key);
                        }
                    }
                    return Ok((dropped, merged));
                }
                Err(e @ CommitError::Fenced { .. }) | Err(e @ CommitError::Corrupt { .. }) => {
                    tracing::error!(error = %e, "object tier stops: this shard no longer owns its manifest");
                    self.fenced.set(true);
                    return Err(e);
                }
                Err(CommitError::Store(e)) => {
                    self.store_failed("manifest commit (deletion)", &e, delay);
                    ringtail_shards::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
                }
            }
        }
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

fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64((nanos % 1000) as f64 / 2000.0)
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
