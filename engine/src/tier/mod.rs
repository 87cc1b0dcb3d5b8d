//! The shard's object tier: batches that are durable in the WAL are packed into objects,
//! uploaded, and committed to the shard's manifest; only then may the WAL trim behind them.

pub mod manifest;
pub mod merge;
pub mod object_format;
pub mod span_cache;

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringtail_objstore::{Condition, ObjectStore, Part, StoreError};

use std::collections::HashMap;

use crate::metrics::ShardStats;
use crate::tier::manifest::{
    CommitError, Committed, LogStart, ManifestStore, ObjectRef, ProducerSnapshot,
};
use crate::tier::object_format::{
    index_trailer, ObjectBuilder, ObjectIndex, Span, INDEX_FORMAT_VERSION,
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
    /// An uploaded object whose commit the manifest's size limit refused, and when to retry it.
    /// While it waits nothing else is sealed or merged (a merge would take its key), and
    /// deletion passes run (they can make room).
    stalled: RefCell<Option<(Instant, Sealed)>>,
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
        self.builder.borrow().is_empty() && !self.busy.get() && self.stalled.borrow().is_none()
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

    /// The pending object, if it is big or old enough; first, a stalled one whose retry is due.
    pub fn seal_if_due(&self) -> Option<Sealed> {
        let stalled_due = self
            .stalled
            .borrow()
            .as_ref()
            .map(|(at, _)| *at <= Instant::now());
        match stalled_due {
            Some(true) => return self.stalled.borrow_mut().take().map(|(_, s)| s),
            Some(false) => return None,
            None => {}
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
        let (epoch, generation) = {
            let c = self.committed.borrow();
            (c.manifest.epoch, c.manifest.generation)
        };
        let key = crate::layout::object(self.shard, epoch, generation + 1);
        let (pieces, index) = builder.finish(self.shard, epoch);
        Some(Sealed { key, pieces, index })
    }

    /// Uploads and commits an object, retrying store errors with backoff until it succeeds;
    /// returns its spans, or an error if this shard has been fenced, or
    /// [`CommitError::TooLarge`] when the manifest has no room (the object is then kept and
    /// returned by a later [`Tier::seal_if_due`]).
    pub async fn upload(
        &self,
        sealed: Sealed,
        producers: Vec<ProducerSnapshot>,
    ) -> Result<Vec<Span>, CommitError> {
        let size: u64 = sealed.pieces.iter().map(|p| p.len() as u64).sum();
        let data_bytes: u64 = sealed.index.spans.iter().map(|s| s.byte_len).sum();
        let t = Instant::now();
        let mut backoff = store_backoff();
        while let Err(e) = put_object(
            self.store.clone(),
            sealed.key.clone(),
            sealed.pieces.clone(),
        )
        .await
        {
            self.store_failed(&format!("upload {}", sealed.key), &e, backoff.delay());
            backoff.wait().await;
        }
        let upload_ms = t.elapsed().as_millis();
        let object = ObjectRef {
            key: sealed.key.clone(),
            size,
            spans: sealed.index.spans.clone(),
            node: self.node,
        };
        let mut backoff = store_backoff();
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
                Err(e @ CommitError::TooLarge { .. }) => {
                    // Uploads stop (the WAL keeps the data) until a deletion pass makes room —
                    // never an unreadable manifest. The object is retried later.
                    tracing::error!(error = %e, key = %sealed.key, "manifest commit refused: uploads are stopped; retrying in {RETRY_DELAY_MAX:?}");
                    *self.stalled.borrow_mut() = Some((Instant::now() + RETRY_DELAY_MAX, sealed));
                    return Err(e);
                }
                Err(CommitError::Store(e)) => {
                    let what = format!("manifest commit of {}", sealed.key);
                    self.store_failed(&what, &e, backoff.delay());
                    backoff.wait().await;
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

/// A committed merge: the object that replaced a run of small ones.
#[derive(Debug)]
pub struct Merged {
    pub key: String,
    pub spans: Vec<Span>,
    /// How many objects it replaced.
    pub replaced: usize,
}

impl Tier {
    /// Merges the next run of small committed objects ([`merge::plan_merge`]) into one: reads
    /// their live bytes (one ranged GET each), uploads the merged object under the next
    /// generation's key, and commits the manifest with the run replaced — one conditional put,
    /// fenced like every commit. The replaced objects are deleted [`merge::MERGE_RETIRE_DELAY`]
    /// later. `Ok(None)`: nothing to merge, the store failed (given up at once, through
    /// `store_failed`: the next interval plans it again), or it gave way ([`Tier::merge_yields`],
    /// checked before each GET and before the PUT); an error only when this shard was fenced. Runs on the uploader's task, never alongside an
    /// upload or a deletion pass.
    pub async fn merge(&self) -> Result<Option<Merged>, CommitError> {
        // A stalled upload holds the next generation's key, which a merge would take.
        if self.merge_yields().is_some() || self.stalled.borrow().is_some() {
            return Ok(None);
        }
        let (run, epoch, generation) = {
            let c = self.committed.borrow();
            let Some(r) = merge::plan_merge(&c.manifest.objects) else {
                return Ok(None);
            };
            (
                c.manifest.objects[r].to_vec(),
                c.manifest.epoch,
                c.manifest.generation,
            )
        };
        let layout = merge::layout(&run);
        let mut bodies = Vec::with_capacity(run.len());
        for o in &run {
            if let Some(why) = self.merge_yields() {
                tracing::debug!(why, "merge abandoned");
                return Ok(None);
            }
            let extent = merge::live_extent(o);
            assert!(o
                .spans
                .iter()
                .all(|s| s.byte_start >= extent.start && s.byte_start + s.byte_len <= extent.end));
            match self.store.get(&o.key, Some(extent.clone())).await {
                Ok(body) if body.len() as u64 == extent.end - extent.start => {
                    bodies.push((extent.start, body))
                }
                Ok(body) => {
                    tracing::warn!(key = %o.key, got = body.len(), wanted = ?extent, "merge: short read; not merged");
                    return Ok(None);
                }
                Err(e) => {
                    tracing::warn!(key = %o.key, error = %e, "merge: reading an object failed; retrying later");
                    return Ok(None);
                }
            }
        }
        let mut pieces = Vec::new();
        for span_pieces in &layout.pieces {
            for (i, range) in span_pieces {
                let (at, body) = &bodies[*i];
                pieces.push(body.slice((range.start - at) as usize..(range.end - at) as usize));
            }
        }
        let index = ObjectIndex {
            format_version: INDEX_FORMAT_VERSION,
            shard: self.shard,
            epoch,
            first_wal_seq: 0,
            last_wal_seq: 0,
            spans: layout.spans.clone(),
        };
        pieces.push(index_trailer(&index));
        let size: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        let key = crate::layout::object(self.shard, epoch, generation + 1);
        let t = Instant::now();
        if let Some(why) = self.merge_yields() {
            tracing::debug!(why, "merge abandoned before its upload");
            return Ok(None);
        }
        // Never retried: a failed merge is given up (the next interval plans it again), so
        // uploads, a hand-over's flush and shutdown never wait behind it. What the PUT may have
        // left under `key` is overwritten by the next upload or merge, which takes the same
        // generation's key (so it must not go to garbage collection).
        if let Err(e) = put_object(self.store.clone(), key.clone(), pieces).await {
            self.store_failed(&format!("upload merged {key}"), &e, merge::MERGE_INTERVAL);
            return Ok(None);
        }
        let merged = ObjectRef {
            key: key.clone(),
            size,
            spans: layout.spans,
            node: run[0].node,
        };
        {
            let current = self.committed.borrow().clone();
            let at = current
                .manifest
                .objects
                .iter()
                .position(|o| o.key == run[0].key);
            let Some(at) =
                at.filter(|&at| current.manifest.objects.get(at..at + run.len()) == Some(&run[..]))
            else {
                // Only this task commits, so the run cannot have changed; if it did, the
                // merged object is left unreferenced (the next owner's sweep deletes it).
                tracing::error!(%key, "merge: the run changed before its commit; not merged");
                return Ok(None);
            };
            let mut next = current.manifest.clone();
            next.objects.splice(at..at + run.len(), [merged.clone()]);
            match self.manifests.commit(Some(&current), next).await {
                Ok(c) => {
                    *self.committed.borrow_mut() = c;
                    self.store_recovered();
                    let due = Instant::now() + merge::MERGE_RETIRE_DELAY;
                    self.retired
                        .borrow_mut()
                        .extend(run.iter().map(|o| (due, o.key.clone())));
                    tracing::info!(%key, bytes = size, replaced = run.len(), ms = t.elapsed().as_millis() as u64, "merged small objects");
                    Ok(Some(Merged {
                        key,
                        spans: merged.spans,
                        replaced: run.len(),
                    }))
                }
                Err(e @ CommitError::Fenced { .. }) | Err(e @ CommitError::Corrupt { .. }) => {
                    tracing::error!(error = %e, "object tier stops: this shard no longer owns its manifest");
                    self.fenced.set(true);
                    Err(e)
                }
                Err(e @ CommitError::TooLarge { .. }) => {
                    // A merge only shrinks the manifest; never loop on it.
                    tracing::error!(error = %e, "manifest commit (merge) refused");
                    Ok(None)
                }
                Err(CommitError::Store(e)) => {
                    // Given up like a failed upload of the merged object.
                    self.store_failed(
                        &format!("manifest commit (merge {key})"),
                        &e,
                        merge::MERGE_INTERVAL,
                    );
                    Ok(None)
                }
            }
        }
    }

    /// Whether merging is behind: the manifest holds more than [`merge::MERGE_BACKLOG_OBJECTS`]
    /// objects. Then a merge runs after every upload and does not give way to waiting producers
    /// (they wait one merge longer; without it steady `durability=object` traffic starves
    /// merging and the manifest grows by an object per produce).
    pub fn merge_behind(&self) -> bool {
        self.committed.borrow().manifest.objects.len() > merge::MERGE_BACKLOG_OBJECTS
    }

    /// Why a merge must give way now, if it must: the slot is fenced, flushing for a hand-over
    /// or shutdown, or a producer waits for an upload (unless merging is behind).
    fn merge_yields(&self) -> Option<&'static str> {
        if self.fenced.get() {
            Some("fenced")
        } else if self.flushing.get() {
            Some("flushing")
        } else if self.urgent.get() && !self.merge_behind() {
            Some("a producer waits for an upload")
        } else {
            None
        }
    }

    /// Deletes the objects merges replaced whose delay has passed (failures go to garbage
    /// collection).
    pub async fn delete_retired(&self) {
        loop {
            let key = {
                let mut retired = self.retired.borrow_mut();
                match retired.front() {
                    Some((due, _)) if *due <= Instant::now() => retired.pop_front().map(|r| r.1),
                    _ => None,
                }
            };
            let Some(key) = key else { return };
            match self.store.delete(&key).await {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(%key, error = %e, "could not delete a merged object; retrying later");
                    self.garbage.borrow_mut().push(key);
                }
            }
        }
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
            let prefix = crate::layout::objects(self.shard);
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
                        !referenced.contains(k)
                            && crate::layout::object_epoch(k).is_some_and(|e| e < epoch)
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
        let mut backoff = store_backoff();
        loop {
            // Once a second with nothing due: a scan of the committed manifest, not a copy.
            let (log_starts, merged, due) = {
                let c = self.committed.borrow();
                let (log_starts, merged) = next_log_starts(&c.manifest.log_starts, starts, &live);
                let due = log_starts != c.manifest.log_starts
                    || c.manifest.objects.iter().any(|o| o.spans.iter().any(&drop));
                (log_starts, merged, due)
            };
            if !due {
                return Ok((Vec::new(), merged));
            }
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
                Err(e @ CommitError::TooLarge { .. }) => {
                    // Cannot happen for a deletion, which only shrinks the manifest; never loop.
                    tracing::error!(error = %e, "manifest commit (deletion) refused");
                    return Err(e);
                }
                Err(CommitError::Store(e)) => {
                    self.store_failed("manifest commit (deletion)", &e, backoff.delay());
                    backoff.wait().await;
                }
            }
        }
    }
}

/// The log starts a deletion commits: the committed ones of partitions `live` keeps, raised to
/// `starts`; sorted, and as a map.
fn next_log_starts(
    committed: &[LogStart],
    starts: &HashMap<StreamKey, i64>,
    live: impl Fn(&StreamKey) -> bool,
) -> (Vec<LogStart>, HashMap<StreamKey, i64>) {
    let mut merged: HashMap<StreamKey, i64> = committed
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
    (log_starts, merged)
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
mod tests {
    use super::*;
    use futures::executor::block_on;
    use kafka_protocol::records::Compression;
    use ringtail_netio::batch::{split_and_validate, testing};
    use std::future::Future as _;

    fn batch(base: i64, n: i64) -> (ringtail_netio::header::BatchHeader, Bytes) {
        let values = (0..n).map(|i| Some(Bytes::from(format!("value-{base}-{i}"))));
        let buf = testing::encode(values, 1000 + base, Compression::None);
        split_and_validate(buf, 1 << 20)
            .unwrap()
            .into_iter()
            .next()
            .unwrap()
            .assign(base, 0)
    }

    /// A tier that committed `objects` one-batch objects on two partitions; returns every
    /// partition's batch bytes in offset order.
    fn tier_with_objects(
        store: Arc<dyn ObjectStore>,
        objects: i64,
    ) -> (Tier, HashMap<i32, Vec<u8>>) {
        let stats = Arc::new(ShardStats::new(0));
        let tier = block_on(Tier::open(
            store,
            0,
            1,
            1 << 20,
            Duration::from_secs(60),
            stats,
            &|| true,
        ))
        .unwrap();
        let mut written: HashMap<i32, Vec<u8>> = HashMap::new();
        for k in 0..objects {
            for partition in 0..2 {
                let (header, bytes) = batch(k * 3, 3);
                written
                    .entry(partition)
                    .or_default()
                    .extend_from_slice(&bytes);
                tier.add([9; 16], partition, header, bytes);
            }
            tier.request_seal();
            let sealed = tier.seal_if_due().expect("a seal was requested");
            block_on(tier.upload(sealed, Vec::new())).unwrap();
        }
        (tier, written)
    }

    #[test]
    fn a_merge_keeps_offsets_and_bytes_in_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
        let (tier, written) = tier_with_objects(store.clone(), 9);
        let before = tier.committed_objects();
        assert_eq!(before.len(), 9);
        let merged = block_on(tier.merge())
            .unwrap()
            .expect("9 small objects merge");
        assert_eq!(merged.replaced, 9);
        let loaded = block_on(ManifestStore::new(store.clone(), 0).load())
            .unwrap()
            .unwrap();
        assert_eq!(loaded.manifest.objects.len(), 1);
        assert_eq!(loaded.manifest.objects[0].key, merged.key);
        for span in &merged.spans {
            assert_eq!((span.base_offset, span.last_offset), (0, 26));
            let bytes = block_on(store.get(
                &merged.key,
                Some(span.byte_start..span.byte_start + span.byte_len),
            ))
            .unwrap();
            assert_eq!(&bytes[..], &written[&span.partition][..]);
        }
        // The replaced objects stay readable until their delay has passed.
        block_on(tier.delete_retired());
        assert!(block_on(store.head(&before[0].key)).is_ok());
        assert!(
            block_on(tier.merge()).unwrap().is_none(),
            "nothing left to merge"
        );
    }

    /// A commit refused for the manifest's size stops uploads without losing the object or
    /// blocking the deletion pass: once a deletion makes room, the same object is committed.
    #[test]
    fn an_object_refused_for_the_manifests_size_waits_for_room() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
        let (mut tier, _) = tier_with_objects(store.clone(), 2);
        let limit = tier.committed.borrow().manifest.encode().len() + 16;
        tier.manifests = ManifestStore::with_bytes_max(store.clone(), 0, limit);
        let (header, bytes) = batch(6, 3);
        tier.add([9; 16], 0, header, bytes);
        tier.request_seal();
        let sealed = tier.seal_if_due().unwrap();
        let key = sealed.key.clone();
        let refused = block_on(tier.upload(sealed, Vec::new()));
        assert!(
            matches!(refused, Err(CommitError::TooLarge { .. })),
            "{refused:?}"
        );
        assert!(!tier.is_fenced());
        assert!(!tier.is_idle(), "a shutdown flush waits for it");
        assert!(tier.seal_if_due().is_none(), "not retried before its time");
        assert!(
            block_on(tier.merge()).unwrap().is_none(),
            "no merge takes its key"
        );
        // Retention drops the oldest object: room for one more.
        let (dropped, _) =
            block_on(tier.delete_data(|s| s.base_offset == 0, &HashMap::new(), |_| true)).unwrap();
        assert_eq!(dropped.len(), 2);
        tier.stalled.borrow_mut().as_mut().unwrap().0 = Instant::now();
        let again = tier.seal_if_due().expect("the stalled object, due now");
        assert_eq!(again.key, key);
        block_on(tier.upload(again, Vec::new())).unwrap();
        assert!(tier.is_idle());
        let loaded = block_on(ManifestStore::new(store, 0).load())
            .unwrap()
            .unwrap();
        assert_eq!(loaded.manifest.objects.last().unwrap().key, key);
    }

    /// A merge is a manifest commit like any other: an owner fenced by a take-over never lands
    /// one, and the new owner's manifest keeps every object.
    #[test]
    fn a_fenced_owner_never_commits_a_merge() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
        let (tier, _) = tier_with_objects(store.clone(), 9);
        let taken = block_on(ManifestStore::new(store.clone(), 0).take_over(&|| true)).unwrap();
        assert_eq!(taken.manifest.objects.len(), 9);
        let refused = block_on(tier.merge());
        assert!(
            matches!(refused, Err(CommitError::Fenced { .. })),
            "{refused:?}"
        );
        assert!(tier.is_fenced());
        let loaded = block_on(ManifestStore::new(store, 0).load())
            .unwrap()
            .unwrap();
        assert_eq!(loaded, taken);
    }

    /// A store whose PUTs of data objects (keys ending `.rto`) fail with 403 while `refuse` is
    /// set; everything else reaches the local store.
    struct RefusingPuts {
        inner: Arc<dyn ObjectStore>,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl RefusingPuts {
        fn refused(&self, key: &str) -> Option<StoreError> {
            (key.ends_with(".rto") && self.refuse.load(std::sync::atomic::Ordering::SeqCst))
                .then(|| StoreError::Fatal(format!("put {key}: 403 AccessDenied")))
        }
    }

    impl ObjectStore for RefusingPuts {
        fn put(
            &self,
            key: &str,
            body: Bytes,
            condition: Condition,
        ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<String>> {
            match self.refused(key) {
                Some(e) => Box::pin(async move { Err(e) }),
                None => self.inner.put(key, body, condition),
            }
        }
        fn get(
            &self,
            key: &str,
            range: Option<std::ops::Range<u64>>,
        ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<Bytes>> {
            self.inner.get(key, range)
        }
        fn head(
            &self,
            key: &str,
        ) -> futures::future::BoxFuture<
            'static,
            ringtail_objstore::StoreResult<ringtail_objstore::ObjectMeta>,
        > {
            self.inner.head(key)
        }
        fn list(
            &self,
            prefix: &str,
        ) -> futures::future::BoxFuture<
            'static,
            ringtail_objstore::StoreResult<Vec<ringtail_objstore::ObjectMeta>>,
        > {
            self.inner.list(prefix)
        }
        fn delete(
            &self,
            key: &str,
        ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<()>> {
            self.inner.delete(key)
        }
        fn create_multipart(
            &self,
            key: &str,
        ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<String>> {
            match self.refused(key) {
                Some(e) => Box::pin(async move { Err(e) }),
                None => self.inner.create_multipart(key),
            }
        }
        fn upload_part(
            &self,
            key: &str,
            upload_id: &str,
            number: i32,
            body: Bytes,
        ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<Part>> {
            self.inner.upload_part(key, upload_id, number, body)
        }
        fn complete_multipart(
            &self,
            key: &str,
            upload_id: &str,
            parts: Vec<Part>,
        ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<String>> {
            self.inner.complete_multipart(key, upload_id, parts)
        }
        fn abort_multipart(
            &self,
            key: &str,
            upload_id: &str,
        ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<()>> {
            self.inner.abort_multipart(key, upload_id)
        }
    }

    /// A merge whose upload the store refuses (403) is given up at once — it never blocks the
    /// uploader — and reported like a failed upload (`/ready` answers 503); once the store
    /// accepts writes again, uploads and merges go on under the same keys.
    #[test]
    fn a_merge_the_store_refuses_is_given_up_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> =
            Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
        let store = Arc::new(RefusingPuts {
            inner: local,
            refuse: std::sync::atomic::AtomicBool::new(false),
        });
        let (tier, _) = tier_with_objects(store.clone(), 9);
        store
            .refuse
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let given_up = futures::executor::block_on(async {
            futures::future::select(
                Box::pin(tier.merge()),
                Box::pin(futures_timer(Duration::from_secs(10))),
            )
            .await
        });
        let futures::future::Either::Left((given_up, _)) = given_up else {
            panic!("the merge still retries its refused upload after 10 s");
        };
        assert!(matches!(given_up, Ok(None)), "{given_up:?}");
        assert_eq!(tier.committed_objects().len(), 9, "nothing committed");
        assert!(!tier.is_fenced());
        assert!(
            tier.stats.upload_failures.lock().unwrap().contains_key(&0),
            "/ready reports the permanent error"
        );
        store
            .refuse
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let merged = block_on(tier.merge())
            .unwrap()
            .expect("merged once allowed");
        assert_eq!(merged.replaced, 9);
        assert!(tier.stats.upload_failures.lock().unwrap().is_empty());
    }

    /// A merge gives way between its reads when a flush starts (a hand-over or shutdown must
    /// not wait for up to 64 GETs and a 32 MiB PUT): nothing is uploaded or committed.
    #[test]
    fn a_merge_gives_way_to_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
        let (tier, _) = tier_with_objects(store.clone(), 9);
        let keys_before = block_on(store.list("")).unwrap().len();
        let mut merge = Box::pin(tier.merge());
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        // The first poll sends the first GET (the local store answers on its own runtime).
        assert!(merge.as_mut().poll(&mut cx).is_pending());
        tier.start_flush();
        let out = block_on(merge);
        assert!(matches!(out, Ok(None)), "{out:?}");
        assert_eq!(tier.committed_objects().len(), 9);
        assert_eq!(
            block_on(store.list("")).unwrap().len(),
            keys_before,
            "no merged object"
        );
    }

    /// A timer for tests driven by `futures::executor` (no shard reactor).
    async fn futures_timer(d: Duration) {
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        std::thread::spawn(move || {
            std::thread::sleep(d);
            let _ = tx.send(());
        });
        let _ = rx.await;
    }
}
