//! The partitions one shard owns: their logs, their long-poll waiters, and the shard's WAL ring.
//!
//! Produce assigns offsets at once (in the order requests reach the owner), appends the batches
//! to the WAL and waits. When the WAL write holding them is durable, `on_durable` appends them to
//! the partition logs — in ring order, so offsets stay dense — wakes long-polling fetches, and
//! only then do the producers get their answers. The high watermark is the durable log end.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::ops::ControlFlow;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use ringtail_netio::header::BatchHeader;
use ringtail_netio::records;
use ringtail_wal::format::EntryMeta;
use ringtail_wal::{Recovery, Wal, WalConfig, WalError};
use uuid::Uuid;

use crate::catalog::{Catalog, Snapshot, TopicMeta};
use crate::metrics::ShardStats;
use crate::partition::items::{
    now_ms, DeleteItem, DeleteOutcome, ErrorOutcome, FetchItem, FetchOutcome, ListItem,
    ListOutcome, PartitionKey, ProduceItem, ProduceOutcome, LEADER_EPOCH,
};
use crate::partition::log::{MemLog, PartitionLog};
use crate::partition::producers::{Check, Producers, Written};
use crate::tier::manifest::ProducerSnapshot;
use crate::tier::object_format::Span;
use crate::tier::span_cache::SpanCache;
use crate::tier::{StreamKey, Tier};

type Waiter = Rc<RefCell<Option<oneshot::Sender<()>>>>;

/// What the WAL keeps with each entry, and hands back once it is durable.
#[derive(Clone)]
pub struct WalTag {
    key: PartitionKey,
    header: BatchHeader,
    bytes: Bytes,
    /// A recovered batch that another owner's writes superseded: never served, free to trim.
    superseded: bool,
}

struct Partition {
    /// The batches in the WAL ring (not yet uploaded, or not yet evicted).
    log: MemLog,
    /// Offset the next produced record gets; ahead of the log end while writes are in flight.
    next_offset: i64,
    topic: Arc<TopicMeta>,
    waiters: Vec<Waiter>,
    /// Committed objects holding older batches: span base offset -> (object key, span).
    cold: BTreeMap<i64, (Arc<str>, Span)>,
    /// Offsets below this are in committed objects (0 without an object tier).
    uploaded_end: i64,
    /// Produces of `durability=object` topics waiting for an offset to be in a committed object.
    upload_waiters: Vec<(i64, oneshot::Sender<()>)>,
    /// Records below this were deleted (DeleteRecords, retention); committed to the manifest
    /// when there is an object tier. It may fall inside a batch, as in Kafka.
    deleted_below: i64,
    /// DeleteRecords asked for this, waiting for the manifest commit.
    delete_requested: i64,
    /// DeleteRecords calls waiting for `deleted_below` to reach their offset.
    delete_waiters: Vec<(i64, oneshot::Sender<()>)>,
    /// Idempotent producers' recent batches (dedupe, ordering, fencing).
    producers: Producers,
    /// The highest log start reported (see [`Partition::log_start`]).
    log_start_floor: Cell<i64>,
}

impl Partition {
    /// The first offset held. Invariant: it never decreases while the broker runs — once an
    /// offset was reported out of range it is never served again (asserted in debug builds;
    /// `log_start_floor` holds it in release builds).
    fn log_start(&self) -> i64 {
        let hot = self.log.log_start_offset();
        let stored = self.cold.keys().next().map_or(hot, |&cold| cold.min(hot));
        let start = stored.max(self.deleted_below);
        let floor = self.log_start_floor.get();
        debug_assert!(
            start >= floor,
            "the log start of {}/{} went back from {floor} to {start}",
            self.topic.name,
            self.log.log_end_offset()
        );
        let start = start.max(floor);
        self.log_start_floor.set(start);
        start
    }

    /// Records below `offset` are gone: memory lets them go and the waiting deletes answer.
    fn delete_below(&mut self, offset: i64) {
        self.deleted_below = self.deleted_below.max(offset);
        self.log.evict_below(self.deleted_below);
        self.producers.trim(self.deleted_below);
        let below = self.deleted_below;
        for (_, tx) in self.delete_waiters.extract_if(.., |(o, _)| *o <= below) {
            let _ = tx.send(());
        }
    }

    fn log_end(&self) -> i64 {
        self.log.log_end_offset().max(self.uploaded_end)
    }

    /// Bytes the partition holds: its spans in committed objects, plus what memory (the WAL)
    /// holds that is not in them yet. Batches kept in memory after their upload (the hot-tail
    /// cache) are counted once, as object bytes.
    fn stored_bytes(&self) -> i64 {
        self.cold
            .values()
            .map(|(_, s)| s.byte_len as i64)
            .sum::<i64>()
            + self.log.bytes_from(self.uploaded_end) as i64
    }
}

/// A shard's settings from the broker's configuration.
pub struct ShardLimits {
    /// Uploaded batches kept in memory for tail fetches.
    pub hot_cache_bytes: u64,
    /// How often time and size retention are checked.
    pub retention_check_interval: Duration,
}

/// The partitions this shard owns, and its WAL.
pub struct ShardState {
    partitions: RefCell<HashMap<PartitionKey, Partition>>,
    wal: RefCell<Option<Wal<WalTag>>>,
    /// Long-polls on partitions that hold no data yet: woken by the shard's next durable write.
    unborn_waiters: RefCell<Vec<Waiter>>,
    last_full_warning: Cell<Option<Instant>>,
    tier: Option<Rc<Tier>>,
    span_cache: Rc<SpanCache>,
    /// Uploaded batches still in memory (the hot-tail cache), oldest first:
    /// (partition, last offset of the span, bytes).
    hot_uploaded: RefCell<VecDeque<(PartitionKey, i64, u64)>>,
    hot_uploaded_bytes: Cell<u64>,
    hot_cache_bytes: u64,
    pub stats: Arc<ShardStats>,
    /// Being handed over: no new writes.
    closing: Cell<bool>,
    /// A WAL write failed: the ring takes no more writes (see [`Self::wal_failed`]).
    wal_broken: Cell<bool>,
    /// Called once if another broker takes the slot's manifest over (see [`Self::fenced`]).
    on_fenced: RefCell<Option<Box<dyn FnOnce()>>>,
    /// The topics; data is deleted only for those its deletion records name.
    catalog: Arc<Catalog>,
    /// Wakes the retention check early (no object tier: the WAL ring is full).
    retention_kick: RefCell<Option<oneshot::Sender<()>>>,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl ShardState {
    /// Rebuilds every partition's log from the slot's recovered ring (see
    /// [`crate::shard::host::recover_ring`], which runs off the shard) and opens the ring for writes.
    pub async fn open(
        config: &WalConfig,
        recovery: Recovery,
        catalog: Arc<Catalog>,
        tier: Option<Tier>,
        limits: ShardLimits,
        stats: Arc<ShardStats>,
    ) -> Result<Rc<ShardState>, WalError> {
        let state = Rc::new(ShardState {
            partitions: RefCell::new(HashMap::new()),
            wal: RefCell::new(None),
            unborn_waiters: RefCell::new(Vec::new()),
            last_full_warning: Cell::new(None),
            tier: tier.map(Rc::new),
            span_cache: Rc::new(SpanCache::default()),
            hot_uploaded: RefCell::new(VecDeque::new()),
            hot_uploaded_bytes: Cell::new(0),
            hot_cache_bytes: limits.hot_cache_bytes,
            stats,
            closing: Cell::new(false),
            on_fenced: RefCell::new(None),
            wal_broken: Cell::new(false),
            catalog,
            retention_kick: RefCell::new(None),
        });
        let snapshot = state.catalog.snapshot();
        let opened = match &state.tier {
            Some(tier) => state.load_committed(tier, &snapshot),
            None => Ok(()),
        };
        let live = opened
            .and_then(|()| state.rebuild(&recovery, &snapshot))
            .map_err(|reason| WalError::Open {
                path: config.path.display().to_string(),
                reason,
            })?;
        let weak: Weak<ShardState> = Rc::downgrade(&state);
        let wal = Wal::open(config, &recovery, live, move |tags: &[WalTag]| {
            if let Some(state) = weak.upgrade() {
                state.on_durable(tags);
            }
        })
        .await?;
        let partitions = state.partitions.borrow().len();
        tracing::info!(
            path = %config.path.display(),
            entries = recovery.entries.len(),
            partitions,
            used_bytes = wal.used_bytes(),
            "recovered WAL ring"
        );
        *state.wal.borrow_mut() = Some(wal);
        state.settle_recovered();
        state.trim_wal();
        let retention_check = limits.retention_check_interval;
        match &state.tier {
            Some(tier) => {
                let tick =
                    (tier.age_max / 2).clamp(Duration::from_millis(5), Duration::from_millis(100));
                ringtail_shards::spawn_detached(upload_loop(
                    Rc::downgrade(&state),
                    tick,
                    retention_check,
                ));
            }
            None => ringtail_shards::spawn_detached(memory_retention_loop(
                Rc::downgrade(&state),
                retention_check,
            )),
        }
        Ok(state)
    }

    /// Clean shutdown: uploads and commits everything durable, waiting at most `limit`.
    /// Uploads and commits everything durable, waiting as long as the store needs (saying so
    /// every [`crate::cluster::membership::CLOSE_FLUSH_LOG_INTERVAL`]); returns early only if another owner
    /// fenced the slot.
    pub async fn flush_to_objects(&self, slot: u32) {
        let Some(tier) = &self.tier else { return };
        tier.start_flush();
        let started = Instant::now();
        let mut logged = Instant::now();
        while !tier.is_idle() && !tier.is_fenced() {
            if logged.elapsed() >= crate::cluster::membership::CLOSE_FLUSH_LOG_INTERVAL {
                logged = Instant::now();
                tracing::error!(
                    slot,
                    waited_s = started.elapsed().as_secs(),
                    "slot hand-over waits for the upload of acknowledged records (the store \
                     fails, see above): the slot stays claimed until they are in the bucket"
                );
            }
            ringtail_shards::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Partitions learn which committed objects hold their older batches, where their logs
    /// start when older data was deleted, and their idempotent producers as of the last commit
    /// (the WAL replay adds what followed).
    fn load_committed(&self, tier: &Tier, snapshot: &Snapshot) -> Result<(), String> {
        let mut parts = self.partitions.borrow_mut();
        let parts = &mut *parts;
        for start in tier.committed_log_starts() {
            if let Some(p) = named_partition(parts, snapshot, start.topic_id, start.partition)? {
                p.deleted_below = start.offset;
                // Everything below is gone for good: the log continues at or after it.
                p.uploaded_end = p.uploaded_end.max(start.offset);
            }
        }
        for object in tier.committed_objects() {
            let key: Arc<str> = object.key.as_str().into();
            for span in object.spans {
                if let Some(p) = named_partition(parts, snapshot, span.topic_id, span.partition)? {
                    p.uploaded_end = p.uploaded_end.max(span.last_offset + 1);
                    p.cold.insert(span.base_offset, (key.clone(), span));
                }
            }
        }
        for s in tier.committed_producers() {
            if let Some(p) = named_partition(parts, snapshot, s.topic_id, s.partition)? {
                let entry = p.producers.by_id.entry(s.producer_id).or_default();
                entry.epoch = s.epoch;
                // The snapshot also names batches that were only in the committing broker's WAL:
                // those are in the bucket only below the uploaded end. Beyond it, this broker's
                // own WAL replay adds them back (a restart); after a takeover they do not exist,
                // and a producer's retry of one must be written anew, not waited for.
                let uploaded_end = p.uploaded_end;
                entry.recent = s
                    .recent
                    .into_iter()
                    .filter(|&(_, _, base_offset)| base_offset < uploaded_end)
                    .map(|(first_seq, last_seq, base_offset)| Written {
                        first_seq,
                        last_seq,
                        base_offset,
                    })
                    .collect();
            }
        }
        Ok(())
    }

    /// What to do when another broker takes the slot's manifest over (the host closes it).
    /// A WAL write failed: the ring's tail is uncertain and it takes no more writes. Rather
    /// than keep the slot owned and read-only, the broker stops: `/ready` and
    /// `ringtail_wal_failed` say so at once, then SIGTERM runs the usual hand-over (everything
    /// durable is uploaded first, so nothing acknowledged is lost; producers get retriable
    /// errors meanwhile) and the process ends with exit code 1.
    fn wal_failed(&self, reason: &str) {
        self.wal_broken.set(true);
        self.stats
            .wal_failure
            .lock()
            .unwrap()
            .get_or_insert_with(|| reason.to_string());
        if !crate::errors::WAL_FAILED.swap(true, Ordering::SeqCst) {
            tracing::error!(
                shard = self.stats.shard,
                %reason,
                "a WAL write failed: handing every slot over (uploading what is durable), then \
                 stopping with exit code 1"
            );
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
        }
    }

    pub fn set_on_fenced(&self, f: impl FnOnce() + 'static) {
        *self.on_fenced.borrow_mut() = Some(Box::new(f));
    }

    /// Another broker committed the slot's manifest: nothing more is committed here. Writes stop
    /// at once (answered NOT_LEADER_OR_FOLLOWER), writes waiting for an upload get errors, and
    /// the host lets the slot go.
    fn fenced(&self) {
        self.start_closing();
        for p in self.partitions.borrow_mut().values_mut() {
            p.upload_waiters.clear();
            p.delete_waiters.clear();
        }
        if let Some(f) = self.on_fenced.borrow_mut().take() {
            f();
        }
    }

    /// The slot's WAL ring's counters.
    pub fn wal_metrics(&self) -> Option<Arc<ringtail_wal::WalMetrics>> {
        self.wal.borrow().as_ref().map(|w| w.metrics())
    }

    /// Stops taking writes (the slot is being handed over).
    pub fn start_closing(&self) {
        self.closing.set(true);
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Whether some partition has writes whose WAL write has not finished.
    pub fn writes_in_flight(&self) -> bool {
        // After a failed write nothing more becomes durable: nothing is worth waiting for.
        !self.wal_broken.get()
            && self
                .partitions
                .borrow()
                .values()
                .any(|p| p.next_offset > p.log_end())
    }

    /// Every partition's offsets (at most `limit`), for the metrics endpoint.
    pub fn offsets(&self, limit: usize) -> Vec<crate::metrics::PartitionOffsets> {
        self.partitions
            .borrow()
            .iter()
            .take(limit)
            .map(|(key, p)| crate::metrics::PartitionOffsets {
                topic: p.topic.name.clone(),
                partition: key.partition,
                log_start: p.log_start(),
                log_end: p.next_offset,
                high_watermark: p.log_end(),
            })
            .collect()
    }

    /// The bytes each of `keys` holds (see [`Partition::stored_bytes`]); 0 for a partition no
    /// record was written to yet (DescribeLogDirs).
    pub fn stored_bytes(&self, keys: &[PartitionKey]) -> Vec<i64> {
        let parts = self.partitions.borrow();
        keys.iter()
            .map(|k| parts.get(k).map_or(0, Partition::stored_bytes))
            .collect()
    }

    /// Every partition's idempotent producers, for the next manifest commit (those within the
    /// expiry window: [`Producers::snapshot`]); a large one is logged and counted.
    fn producer_snapshot(&self) -> Vec<ProducerSnapshot> {
        let parts = self.partitions.borrow();
        let now = now_ms();
        let mut out = Vec::new();
        for (key, p) in parts.iter() {
            for (producer_id, e) in p.producers.snapshot(now) {
                out.push(ProducerSnapshot {
                    topic_id: *key.topic_id.as_bytes(),
                    partition: key.partition,
                    producer_id,
                    epoch: e.epoch,
                    recent: e
                        .recent
                        .iter()
                        .map(|w| (w.first_seq, w.last_seq, w.base_offset))
                        .collect(),
                });
            }
        }
        if out.len() > crate::partition::producers::PRODUCER_SNAPSHOT_WARN_ENTRIES {
            self.stats
                .producer_snapshots_large
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Logged at most once a minute per process.
            static LOGGED_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
            let last = LOGGED_MS.load(std::sync::atomic::Ordering::Relaxed);
            if now - last >= 60_000 {
                LOGGED_MS.store(now, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    producers = out.len(),
                    "large producer snapshot (idempotent producers active within the expiry \
                     window): every manifest commit carries about 100 bytes each"
                );
            }
        }
        out
    }

    /// After recovery: logs with only uploaded data continue at the uploaded end, recovered
    /// batches already uploaded leave memory, and the rest queues for upload.
    fn settle_recovered(&self) {
        let mut parts = self.partitions.borrow_mut();
        for p in parts.values_mut() {
            if p.log.is_empty_log() && p.uploaded_end > 0 {
                p.log.reset_to(p.uploaded_end);
            }
            p.log.evict_below(p.uploaded_end);
            p.next_offset = p.log_end();
        }
    }

    /// An object is committed: its batches stay in memory while the hot-tail cache has room
    /// (oldest uploaded leave first), cold reads can find them in the object, and the WAL may
    /// trim behind them.
    fn on_uploaded(&self, key: Arc<str>, spans: Vec<Span>) {
        {
            let mut parts = self.partitions.borrow_mut();
            let mut hot = self.hot_uploaded.borrow_mut();
            for span in spans {
                let pk = PartitionKey {
                    topic_id: Uuid::from_bytes(span.topic_id),
                    partition: span.partition,
                };
                let Some(p) = parts.get_mut(&pk) else {
                    continue;
                };
                p.uploaded_end = p.uploaded_end.max(span.last_offset + 1);
                hot.push_back((pk, span.last_offset, span.byte_len));
                self.hot_uploaded_bytes
                    .set(self.hot_uploaded_bytes.get() + span.byte_len);
                p.cold.insert(span.base_offset, (key.clone(), span));
                let end = p.uploaded_end;
                for (_, tx) in p.upload_waiters.extract_if(.., |(last, _)| *last < end) {
                    let _ = tx.send(());
                }
            }
            // Bounded work: one step per span leaving the cache.
            while self.hot_uploaded_bytes.get() > self.hot_cache_bytes {
                let Some((pk, last, bytes)) = hot.pop_front() else {
                    break;
                };
                self.hot_uploaded_bytes
                    .set(self.hot_uploaded_bytes.get() - bytes);
                if let Some(p) = parts.get_mut(&pk) {
                    add(
                        &self.stats.hot_cache_evicted_bytes,
                        p.log.evict_below(last + 1),
                    );
                }
            }
            self.stats
                .hot_cache_bytes
                .store(self.hot_uploaded_bytes.get(), Ordering::Relaxed);
        }
        self.trim_wal();
    }

    /// A merge committed: cold reads of its offsets go to the merged object (its spans cover
    /// exactly the spans it replaced, partition by partition).
    fn on_merged(&self, merged: crate::tier::Merged) {
        let key: Arc<str> = merged.key.as_str().into();
        let mut parts = self.partitions.borrow_mut();
        for span in merged.spans {
            let pk = PartitionKey {
                topic_id: Uuid::from_bytes(span.topic_id),
                partition: span.partition,
            };
            let Some(p) = parts.get_mut(&pk) else {
                continue;
            };
            let replaced: Vec<i64> = p
                .cold
                .range(span.base_offset..=span.last_offset)
                .map(|(&base, _)| base)
                .collect();
            assert!(
                replaced.first() == Some(&span.base_offset),
                "a merged span starts where a replaced one did"
            );
            for base in replaced {
                p.cold.remove(&base);
            }
            p.cold.insert(span.base_offset, (key.clone(), span));
        }
    }

    /// Appends recovered batches to their partitions; returns each live chunk's tags.
    ///
    /// With an object tier, a batch is kept only while it agrees with the bucket: a batch below
    /// the uploaded end is skipped when an object of this broker's holds its offsets, and
    /// counted as superseded when another owner's object does; a batch beyond it must continue
    /// the log. Once one batch of a partition is superseded, the partition's later batches are
    /// too (they followed it). A discontinuity with no other owner involved is damage: refuse.
    fn rebuild(
        &self,
        r: &Recovery,
        snapshot: &Snapshot,
    ) -> Result<Vec<(ringtail_wal::scan::ChunkRef, Vec<WalTag>)>, String> {
        let mut entries = r.entries.iter();
        let mut live = Vec::with_capacity(r.chunks.len());
        let mut parts = self.partitions.borrow_mut();
        let me = self.tier.as_ref().map(|t| t.node);
        let writers: HashMap<String, i32> = self
            .tier
            .as_ref()
            .map(|t| {
                t.committed_objects()
                    .into_iter()
                    .map(|o| (o.key, o.node))
                    .collect()
            })
            .unwrap_or_default();
        let foreign = |key: &Arc<str>| writers.get(&**key).is_some_and(|&n| Some(n) != me);
        // Partition -> (records superseded, first superseded offset).
        let mut superseded: HashMap<PartitionKey, (u64, i64)> = HashMap::new();
        for chunk in &r.chunks {
            let mut tags = Vec::with_capacity(chunk.entry_count as usize);
            for (h, payload) in entries.by_ref().take(chunk.entry_count as usize) {
                let key = PartitionKey {
                    topic_id: Uuid::from_bytes(h.meta.stream_id),
                    partition: h.meta.stream_index,
                };
                let header =
                    BatchHeader::parse(payload).map_err(|e| format!("entry {}: {e}", h.seq))?;
                if header.base_offset != h.meta.base_offset
                    || header.record_count != h.meta.record_count
                {
                    return Err(format!("entry {} disagrees with the batch it holds", h.seq));
                }
                let topic = known_topic(snapshot, &key, self.tier.is_none())?;
                let mut is_superseded = false;
                if let Some(topic) = topic {
                    let p = parts.entry(key).or_insert_with(|| Partition::new(topic));
                    let covering = p
                        .cold
                        .range(..=header.base_offset)
                        .next_back()
                        .filter(|(_, (_, span))| span.last_offset >= header.base_offset)
                        .map(|(_, (object, _))| object.clone());
                    let another_owner = covering.as_ref().is_some_and(&foreign)
                        || (covering.is_none() && p.cold.values().any(|(o, _)| foreign(o)));
                    let continues =
                        p.log.is_empty_log() || header.base_offset == p.log.log_end_offset();
                    let expected = if p.log.is_empty_log() {
                        p.uploaded_end
                    } else {
                        p.log.log_end_offset()
                    };
                    if superseded.contains_key(&key)
                        || (another_owner && header.base_offset != expected)
                    {
                        is_superseded = true;
                        let s = superseded.entry(key).or_insert((0, header.base_offset));
                        s.0 += header.record_count as u64;
                    } else if header.last_offset() >= p.uploaded_end {
                        // Batches already in committed objects stay there; the rest is the hot
                        // log and still has to be uploaded.
                        if !continues {
                            return Err(format!(
                                "partition {}/{}: recovered batch at offset {} does not follow the log end {}",
                                p.topic.name,
                                key.partition,
                                header.base_offset,
                                p.log.log_end_offset()
                            ));
                        }
                        p.log.append(header, payload.clone());
                        p.producers.record(
                            header.producer_id,
                            header.producer_epoch,
                            header.base_sequence,
                            header.record_count,
                            header.base_offset,
                        );
                        if let Some(tier) = &self.tier {
                            tier.add(
                                *key.topic_id.as_bytes(),
                                key.partition,
                                header,
                                payload.clone(),
                            );
                        }
                    }
                }
                tags.push(WalTag {
                    key,
                    header,
                    bytes: payload.clone(),
                    superseded: is_superseded,
                });
            }
            live.push((*chunk, tags));
        }
        for (key, (records, from)) in &superseded {
            let topic = parts
                .get(key)
                .map(|p| p.topic.name.clone())
                .unwrap_or_default();
            tracing::warn!(
                topic = %topic,
                partition = key.partition,
                records,
                from_offset = from,
                "records in this broker's WAL were superseded by another owner's writes and are \
                 dropped: lost if they were acknowledged (durability=wal, not uploaded before \
                 this broker stopped or paused)"
            );
            add(&self.stats.wal_superseded_records, *records);
        }
        Ok(live)
    }

    /// Assigns offsets and queues the batches in the WAL now; the returned future resolves when
    /// they are durable (and visible).
    pub fn produce(
        self: &Rc<Self>,
        items: Vec<ProduceItem>,
    ) -> impl Future<Output = Vec<ProduceOutcome>> + 'static {
        let started: Vec<Result<Started, ProduceOutcome>> = items
            .into_iter()
            .map(|item| self.start_produce(item))
            .collect();
        let state = self.clone();
        async move {
            let mut out = Vec::with_capacity(started.len());
            for s in started {
                out.push(match s {
                    Err(outcome) => outcome,
                    Ok(s) => state.finish_produce(s).await,
                });
            }
            out
        }
    }

    fn start_produce(&self, item: ProduceItem) -> Result<Started, ProduceOutcome> {
        if self.closing.get() {
            return Err(ProduceOutcome::error(
                ResponseError::NotLeaderOrFollower.code(),
            ));
        }
        let wal_ref = self.wal.borrow();
        let wal = wal_ref
            .as_ref()
            .expect("the WAL is open before the shard serves");
        let mut parts = self.partitions.borrow_mut();
        // A partition is created by its first produce only while the catalog has its topic: a
        // produce checked against an older snapshot must not re-create a deleted partition at
        // offset 0 while the deleted one's batches are still in flight (issue 27).
        if !parts.contains_key(&item.key)
            && self
                .catalog
                .snapshot()
                .by_id(&item.key.topic_id)
                .is_none_or(|t| item.key.partition >= t.partitions)
        {
            return Err(ProduceOutcome::error(
                ResponseError::UnknownTopicOrPartition.code(),
            ));
        }
        let p = parts
            .entry(item.key)
            .or_insert_with(|| Partition::new(item.topic.clone()));
        if item.topic.config.durability_object && self.tier.is_none() {
            tracing::warn!(topic = %item.topic.name, "durability=object needs --object-store");
            return Err(ProduceOutcome::error(
                ResponseError::KafkaStorageError.code(),
            ));
        }
        let now = now_ms();
        let log_append_time = item.topic.config.log_append_time;
        let mut base_offset = None;
        // The last offset the answer waits for (a duplicate's original may still be in flight).
        let mut last_offset = p.next_offset - 1;
        let mut tickets = Vec::with_capacity(item.batches.len());
        let mut duplicates = Vec::new();
        for mut batch in item.batches {
            let h = batch.header;
            match p.producers.check(
                h.producer_id,
                h.producer_epoch,
                h.base_sequence,
                h.record_count,
            ) {
                Check::Write => {}
                Check::Duplicate(original) => {
                    duplicates.push((h.producer_id, original));
                    tracing::info!(topic = %item.topic.name, partition = item.key.partition, producer = h.producer_id, sequence = h.base_sequence, original, "duplicate batch answered with its original offset");
                    base_offset.get_or_insert(original);
                    last_offset = last_offset.max(original + h.last_offset_delta as i64);
                    continue;
                }
                Check::Refuse(code) => {
                    tracing::debug!(topic = %item.topic.name, partition = item.key.partition, producer = h.producer_id, epoch = h.producer_epoch, sequence = h.base_sequence, code, "idempotent batch refused");
                    return Err(ProduceOutcome::error(code));
                }
            }
            if log_append_time {
                batch.set_log_append_time(now);
            }
            let (header, bytes) = batch.assign(p.next_offset, LEADER_EPOCH);
            let meta = EntryMeta {
                stream_id: *item.key.topic_id.as_bytes(),
                stream_index: item.key.partition,
                base_offset: header.base_offset,
                record_count: header.record_count,
                leader_epoch: LEADER_EPOCH,
            };
            match wal.append(
                meta,
                bytes.clone(),
                WalTag {
                    key: item.key,
                    header,
                    bytes,
                    superseded: false,
                },
            ) {
                Ok(ticket) => {
                    add(&self.stats.produce_records, header.record_count as u64);
                    add(&self.stats.produce_bytes, header.size_bytes() as u64);
                    p.next_offset = header.last_offset() + 1;
                    base_offset.get_or_insert(header.base_offset);
                    last_offset = header.last_offset();
                    p.producers.start(
                        header.producer_id,
                        header.producer_epoch,
                        header.base_sequence,
                        header.record_count,
                        header.base_offset,
                    );
                    tickets.push((ticket, header.producer_id, header.base_offset));
                }
                // Batches already queued for this partition still land; the producer sees an
                // error and retries the request (idempotence off: possibly a duplicate, as with
                // Kafka). Nothing is overwritten and no offset is skipped.
                Err(e) => return Err(self.append_error(&item.topic, item.key.partition, e)),
            }
        }
        // Waits for the upload of everything up to the partition's end, unless that is in the
        // bucket already (a retry of an uploaded batch): nothing would be uploaded to wake it.
        let wait_upload = item.topic.config.durability_object && p.next_offset > p.uploaded_end;
        let uploaded = wait_upload.then(|| {
            let (tx, rx) = oneshot::channel();
            p.upload_waiters.push((p.next_offset - 1, tx));
            if let Some(tier) = &self.tier {
                tier.request_seal();
            }
            rx
        });
        Ok(Started {
            tickets,
            duplicate_of: duplicates,
            uploaded,
            upload_deadline: item.upload_timeout.map(|t| Instant::now() + t),
            base_offset: base_offset.unwrap_or(p.next_offset),
            last_offset,
            log_append_time_ms: if log_append_time { now } else { -1 },
            key: item.key,
        })
    }

    fn append_error(&self, topic: &TopicMeta, partition: i32, e: WalError) -> ProduceOutcome {
        let code = match e {
            WalError::TooLarge(_) => ResponseError::MessageTooLarge.code(),
            _ => ResponseError::KafkaStorageError.code(),
        };
        if matches!(e, WalError::Full { .. }) {
            self.kick_retention();
        }
        let quiet = self
            .last_full_warning
            .get()
            .is_some_and(|t| t.elapsed().as_secs() < 5);
        if !quiet {
            tracing::warn!(topic = %topic.name, partition, error = %e, "produce refused (retriable)");
            self.last_full_warning.set(Some(Instant::now()));
        }
        ProduceOutcome::error(code)
    }

    async fn finish_produce(&self, s: Started) -> ProduceOutcome {
        let mut failed = false;
        for (t, producer_id, base_offset) in s.tickets {
            let ok = match t.await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "produce failed in the WAL");
                    if let WalError::Failed(reason) = &e {
                        self.wal_failed(reason);
                    }
                    false
                }
                Err(_) => false,
            };
            if !ok {
                // Its retry must be written anew, not answered as a duplicate.
                if let Some(p) = self.partitions.borrow_mut().get_mut(&s.key) {
                    p.producers.abandon(producer_id, base_offset);
                }
                failed = true;
            }
        }
        if failed {
            return ProduceOutcome::error(ResponseError::KafkaStorageError.code());
        }
        if let Some(uploaded) = s.uploaded {
            let uploaded = match s.upload_deadline {
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    ringtail_shards::timeout(left, uploaded).await
                }
                None => Some(uploaded.await),
            };
            match uploaded {
                Some(Ok(())) => {}
                Some(Err(_)) => {
                    return ProduceOutcome::error(ResponseError::KafkaStorageError.code());
                }
                // Written, not yet in the bucket (the store is slow or down): the producer
                // retries; an idempotent retry is answered with these offsets once uploaded.
                None => {
                    tracing::debug!(
                        partition = s.key.partition,
                        "produce timed out waiting for the upload"
                    );
                    return ProduceOutcome::error(ResponseError::RequestTimedOut.code());
                }
            }
        }
        // A duplicate whose original is still being written waits for it; if the original's
        // write failed, so does the duplicate (the producer retries it, and it is written anew).
        loop {
            let (durable, abandoned) = match self.partitions.borrow().get(&s.key) {
                None => (true, false),
                Some(p) => (
                    p.log.log_end_offset().max(p.uploaded_end) > s.last_offset,
                    s.duplicate_of.iter().any(|&(pid, base)| {
                        !p.producers.is_in_flight(pid, base)
                            && !p
                                .producers
                                .by_id
                                .get(&pid)
                                .is_some_and(|e| e.recent.iter().any(|w| w.base_offset == base))
                    }),
                ),
            };
            if abandoned && !durable {
                return ProduceOutcome::error(ResponseError::KafkaStorageError.code());
            }
            if durable {
                break;
            }
            let (tx, rx) = oneshot::channel();
            self.watch(vec![(s.key, s.last_offset)], tx);
            let _ = rx.await;
        }
        let log_start_offset = self
            .partitions
            .borrow()
            .get(&s.key)
            .map(|p| p.log_start())
            .unwrap_or(-1);
        ProduceOutcome {
            error: 0,
            base_offset: s.base_offset,
            log_append_time_ms: s.log_append_time_ms,
            log_start_offset,
        }
    }

    /// Durable batches become visible, in ring order.
    fn on_durable(&self, tags: &[WalTag]) {
        let now = now_ms();
        {
            let mut parts = self.partitions.borrow_mut();
            for tag in tags {
                // A topic deleted while its batch was in flight: nothing to append to.
                let Some(p) = parts.get_mut(&tag.key) else {
                    continue;
                };
                p.log.append(tag.header, tag.bytes.clone());
                p.producers.record(
                    tag.header.producer_id,
                    tag.header.producer_epoch,
                    tag.header.base_sequence,
                    tag.header.record_count,
                    tag.header.base_offset,
                );
                // Amortised: a partition with many producers looks for idle ones now and then.
                if p.producers.by_id.len() > 64 && tag.header.base_offset % 64 == 0 {
                    p.producers.expire(now);
                }
                if let Some(tier) = &self.tier {
                    tier.add(
                        *tag.key.topic_id.as_bytes(),
                        tag.key.partition,
                        tag.header,
                        tag.bytes.clone(),
                    );
                }
                wake(p.waiters.drain(..));
            }
        }
        wake(self.unborn_waiters.borrow_mut().drain(..));
        self.trim_wal();
        if self.tier.is_none() {
            let filling = self
                .wal
                .borrow()
                .as_ref()
                .is_some_and(|w| w.used_bytes() * 4 > w.ring_bytes() * 3);
            if filling {
                self.kick_retention();
            }
        }
    }

    /// Frees WAL chunks whose every batch is gone from its partition (retention, deletion).
    fn trim_wal(&self) {
        let parts = self.partitions.borrow();
        let snapshot = self.catalog.snapshot();
        if let Some(wal) = self.wal.borrow().as_ref() {
            wal.trim(|t| {
                t.superseded
                    || match parts.get(&t.key) {
                        Some(p) => {
                            t.header.last_offset() < p.log.log_start_offset().max(p.uploaded_end)
                        }
                        // Only a deleted topic's batches go without being uploaded.
                        None => {
                            snapshot.was_deleted(&t.key.topic_id)
                                || (self.tier.is_none()
                                    && snapshot.by_id(&t.key.topic_id).is_none())
                        }
                    }
            });
        }
    }

    fn with_partition<T>(
        &self,
        key: PartitionKey,
        f: impl FnOnce(&mut Partition) -> T,
    ) -> Option<T> {
        self.partitions.borrow_mut().get_mut(&key).map(f)
    }

    /// Hot reads answer at once; reads below the in-memory log go to the committed objects.
    pub fn fetch(
        &self,
        items: Vec<FetchItem>,
    ) -> impl Future<Output = Vec<FetchOutcome>> + 'static {
        let plans: Vec<FetchPlan> = items
            .into_iter()
            .map(|item| {
                self.with_partition(item.key, |p| plan_fetch(p, &item))
                    .unwrap_or_else(|| FetchPlan::Ready(empty_partition_fetch(item.offset)))
            })
            .collect();
        let store = self.tier.as_ref().map(|t| t.store.clone());
        let cache = self.span_cache.clone();
        let stats = self.stats.clone();
        async move {
            let mut out = Vec::with_capacity(plans.len());
            for plan in plans {
                let cold = matches!(plan, FetchPlan::Cold(_));
                let o = match plan {
                    FetchPlan::Ready(o) => o,
                    FetchPlan::Cold(c) => match &store {
                        Some(store) => {
                            for (key, span) in &c.ahead {
                                if let Some(read) = cache.prefetch(store.as_ref(), key, span) {
                                    ringtail_shards::spawn_detached(read);
                                }
                            }
                            c.read(store.as_ref(), &cache).await
                        }
                        None => FetchOutcome::error(ResponseError::UnknownServerError.code()),
                    },
                };
                let bytes: u64 = o.batches.iter().map(|b| b.len() as u64).sum();
                if bytes > 0 {
                    let (reads, total) = if cold {
                        (&stats.fetch_object_reads, &stats.fetch_object_bytes)
                    } else {
                        (&stats.fetch_memory_reads, &stats.fetch_memory_bytes)
                    };
                    add(reads, 1);
                    add(total, bytes);
                }
                out.push(o);
            }
            out
        }
    }

    /// Earliest and latest answer at once; timestamp lookups that land in a committed object
    /// read that partition's span from it.
    pub fn list_offsets(
        &self,
        items: Vec<ListItem>,
    ) -> impl Future<Output = Vec<ListOutcome>> + 'static {
        let plans: Vec<(ListPlan, i64)> = items
            .into_iter()
            .map(|item| {
                self.with_partition(item.key, |p| (plan_list(p, item.timestamp), p.log_start()))
                    .unwrap_or_else(|| {
                        (
                            ListPlan::Ready(list_offset(&MemLog::new(), item.timestamp)),
                            0,
                        )
                    })
            })
            .collect();
        let store = self.tier.as_ref().map(|t| t.store.clone());
        async move {
            let mut out = Vec::with_capacity(plans.len());
            for (plan, log_start) in plans {
                let mut o = match (plan, &store) {
                    (ListPlan::Ready(o), _) => o,
                    (
                        ListPlan::Cold {
                            key,
                            span,
                            target,
                            want_max,
                        },
                        Some(store),
                    ) => cold_list_offset(store.as_ref(), &key, &span, target, want_max).await,
                    (ListPlan::Cold { .. }, None) => {
                        ListOutcome::error(ResponseError::UnknownServerError.code())
                    }
                };
                // A record found in the deleted part of a batch that straddles the log start.
                if o.error == 0 && o.offset >= 0 && o.offset < log_start {
                    o.offset = log_start;
                }
                out.push(o);
            }
            out
        }
    }

    pub fn watch(&self, items: Vec<(PartitionKey, i64)>, reply: oneshot::Sender<()>) {
        let waiter: Waiter = Rc::new(RefCell::new(Some(reply)));
        let mut parts = self.partitions.borrow_mut();
        for (key, offset) in items {
            // A partition not produced to yet waits among the unborn (below).
            let Some(p) = parts.get_mut(&key) else {
                continue;
            };
            if p.log_end() > offset || p.log_start() > offset {
                if let Some(tx) = waiter.borrow_mut().take() {
                    let _ = tx.send(());
                }
                return;
            }
            // Drop waiters whose fetch already ended, so idle consumers cost bounded memory.
            p.waiters
                .retain(|w| w.borrow().as_ref().is_some_and(|tx| !tx.is_canceled()));
            p.waiters.push(waiter.clone());
        }
        drop(parts);
        if waiter.borrow().is_some() {
            let mut unborn = self.unborn_waiters.borrow_mut();
            unborn.retain(|w| w.borrow().as_ref().is_some_and(|tx| !tx.is_canceled()));
            unborn.push(waiter);
        }
    }

    /// New configs apply to the partitions at once; a changed retention at the next check.
    pub fn topic_changed(&self, topic: Arc<TopicMeta>) {
        for (key, p) in self.partitions.borrow_mut().iter_mut() {
            if key.topic_id == topic.id {
                p.topic = topic.clone();
            }
        }
    }

    /// Without an object tier retention is what frees the WAL ring: a ring three quarters full
    /// (or refusing a write) has retention checked now rather than at the next interval.
    fn kick_retention(&self) {
        if let Some(kick) = self.retention_kick.take() {
            let _ = kick.send(());
        }
    }

    /// Time and size retention without an object tier: memory (and the WAL) is the only copy,
    /// judged batch by batch; the new log starts are deletions like DeleteRecords'.
    fn enforce_memory_retention(&self) {
        let now = now_ms();
        for p in self.partitions.borrow_mut().values_mut() {
            let start = p.log.retention_start(now, &p.topic.config);
            if start > p.deleted_below {
                p.delete_below(start);
            }
        }
        self.trim_wal();
    }

    pub fn drop_topic(&self, topic_id: Uuid) {
        self.partitions
            .borrow_mut()
            .retain(|k, _| k.topic_id != topic_id);
        self.trim_wal();
    }
}

/// The partition of a live topic that a manifest entry names, created if new; None for
/// entries of deleted topics (the next deletion pass drops them).
fn named_partition<'a>(
    parts: &'a mut HashMap<PartitionKey, Partition>,
    snapshot: &Snapshot,
    topic_id: [u8; 16],
    index: i32,
) -> Result<Option<&'a mut Partition>, String> {
    let pk = PartitionKey {
        topic_id: Uuid::from_bytes(topic_id),
        partition: index,
    };
    Ok(known_topic(snapshot, &pk, false)?
        .map(|topic| parts.entry(pk).or_insert_with(|| Partition::new(topic))))
}

/// The topic of a partition that the slot's data names: None if the topic was deleted; an
/// error if the catalog does not know it (or not that many partitions) and has no record of
/// its deletion: the catalog is older than the data, and the slot must not open on it — its
/// data would be neither served nor kept (issue 17: data of topics merely missing from a
/// catalog was deleted). Without an object store (`local_catalog`) the broker's own catalog is
/// the only one, no newer one can come, and (as before deletions were recorded) a topic it does
/// not know was deleted.
fn known_topic(
    snapshot: &Snapshot,
    key: &PartitionKey,
    local_catalog: bool,
) -> Result<Option<Arc<TopicMeta>>, String> {
    match snapshot.by_id(&key.topic_id) {
        Some(t) if key.partition < t.partitions => Ok(Some(t.clone())),
        None if local_catalog || snapshot.was_deleted(&key.topic_id) => Ok(None),
        _ => Err(format!(
            "the slot holds data of topic id {} partition {}, which the topic catalog (generation \
             {}) neither has nor records as deleted: waiting for a newer catalog",
            key.topic_id, key.partition, snapshot.generation
        )),
    }
}

fn wake(waiters: impl Iterator<Item = Waiter>) {
    for w in waiters {
        if let Some(tx) = w.borrow_mut().take() {
            let _ = tx.send(());
        }
    }
}

/// Resolves once a WAL append is durable (or failed).
type WalTicket = oneshot::Receiver<Result<(), WalError>>;

struct Started {
    /// Each batch's WAL ticket, with its producer id and base offset.
    tickets: Vec<(WalTicket, i64, i64)>,
    /// A duplicate answered with the original: (producer id, original base offset).
    duplicate_of: Vec<(i64, i64)>,
    /// `durability=object`: resolves once the last offset is in a committed object.
    uploaded: Option<oneshot::Receiver<()>>,
    /// Until when to wait for `uploaded` (see [`ProduceItem::upload_timeout`]).
    upload_deadline: Option<Instant>,
    base_offset: i64,
    /// Answer only once the log is durable through here (covers duplicates' originals).
    last_offset: i64,
    log_append_time_ms: i64,
    key: PartitionKey,
}

impl Partition {
    fn new(topic: Arc<TopicMeta>) -> Partition {
        Partition {
            log: MemLog::new(),
            next_offset: 0,
            topic,
            waiters: Vec::new(),
            cold: BTreeMap::new(),
            uploaded_end: 0,
            upload_waiters: Vec::new(),
            deleted_below: 0,
            delete_requested: 0,
            log_start_floor: Cell::new(0),
            delete_waiters: Vec::new(),
            producers: Producers::default(),
        }
    }
}

enum ListPlan {
    Ready(ListOutcome),
    Cold {
        key: Arc<str>,
        span: Span,
        target: i64,
        want_max: bool,
    },
}

fn plan_list(p: &Partition, timestamp: i64) -> ListPlan {
    let hot_start = p.log.log_start_offset();
    let cold_before_hot = || {
        p.cold
            .values()
            .filter(|(_, s)| s.base_offset < hot_start && s.last_offset >= p.deleted_below)
    };
    match timestamp {
        -1 => ListPlan::Ready(ListOutcome {
            error: 0,
            offset: p.log_end(),
            timestamp: -1,
        }),
        -2 | -4 => ListPlan::Ready(ListOutcome {
            error: 0,
            offset: p.log_start(),
            timestamp: -1,
        }),
        -3 => {
            // The span holding the largest timestamp, if it beats the in-memory log's.
            let hot_max = p
                .log
                .batch_with_max_timestamp()
                .and_then(|b| BatchHeader::parse(&b).ok())
                .map(|h| h.max_timestamp);
            let cold = cold_before_hot()
                .max_by_key(|(_, s)| (s.max_timestamp, std::cmp::Reverse(s.base_offset)));
            match cold {
                Some((key, span)) if hot_max.is_none_or(|h| span.max_timestamp > h) => {
                    ListPlan::Cold {
                        key: key.clone(),
                        span: span.clone(),
                        target: span.max_timestamp,
                        want_max: true,
                    }
                }
                _ => ListPlan::Ready(list_offset(&p.log, -3)),
            }
        }
        t if t >= 0 => match cold_before_hot().find(|(_, s)| s.max_timestamp >= t) {
            Some((key, span)) => ListPlan::Cold {
                key: key.clone(),
                span: span.clone(),
                target: t,
                want_max: false,
            },
            None => ListPlan::Ready(list_offset(&p.log, t)),
        },
        _ => ListPlan::Ready(list_offset(&p.log, timestamp)),
    }
}

/// Reads a span and finds the first record at or after `target` (or with the span's largest
/// timestamp) in it.
async fn cold_list_offset(
    store: &dyn ringtail_objstore::ObjectStore,
    key: &str,
    span: &Span,
    target: i64,
    want_max: bool,
) -> ListOutcome {
    let range = span.byte_start..span.byte_start + span.byte_len;
    let bytes = match store.get(key, Some(range)).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%key, error = %e, "cold offset lookup failed");
            return ListOutcome::error(ResponseError::KafkaStorageError.code());
        }
    };
    let mut at = 0usize;
    while at < bytes.len() {
        let Ok(h) = BatchHeader::parse(&bytes[at..]) else {
            break;
        };
        let size = h.size_bytes();
        if at + size > bytes.len() {
            break;
        }
        let hit = if want_max {
            h.max_timestamp == target
        } else {
            h.max_timestamp >= target
        };
        if hit {
            return first_record_at_or_after(&bytes.slice(at..at + size), target, want_max);
        }
        at += size;
    }
    ListOutcome {
        error: 0,
        offset: -1,
        timestamp: -1,
    }
}

enum FetchPlan {
    Ready(FetchOutcome),
    Cold(ColdRead),
}

/// Spans read ahead of a consumer replaying from objects, so that GETs overlap with the
/// consumer's fetches (measured in `benches/objects.rs`: 4 beat 2 by 1.2x on SeaweedFS), and
/// at most this many bytes of them beyond the first, so cold consumers do not crowd each other
/// out of the span cache.
pub const READ_AHEAD_SPANS: usize = 4;
pub const READ_AHEAD_BYTES: u64 = 8 << 20;

/// A read of one partition's span in one committed object.
struct ColdRead {
    key: Arc<str>,
    span: Span,
    /// The partition's next spans, to read ahead.
    ahead: Vec<(Arc<str>, Span)>,
    offset: i64,
    max_bytes: usize,
    first_batch_always: bool,
    high_watermark: i64,
    log_start_offset: i64,
}

fn plan_fetch(p: &Partition, item: &FetchItem) -> FetchPlan {
    let (start, end) = (p.log_start(), p.log_end());
    let out_of_range = FetchOutcome {
        error: ResponseError::OffsetOutOfRange.code(),
        high_watermark: end,
        log_start_offset: start,
        batches: Vec::new(),
    };
    if item.offset < start || item.offset > end {
        return FetchPlan::Ready(out_of_range);
    }
    if item.offset >= p.log.log_start_offset() {
        return FetchPlan::Ready(
            match p
                .log
                .read(item.offset, item.max_bytes, item.first_batch_always)
            {
                Ok(batches) => FetchOutcome {
                    error: 0,
                    high_watermark: end,
                    log_start_offset: start,
                    batches,
                },
                Err(_) => out_of_range,
            },
        );
    }
    match p.cold.range(..=item.offset).next_back() {
        Some((_, (key, span))) if item.offset <= span.last_offset => FetchPlan::Cold(ColdRead {
            key: key.clone(),
            span: span.clone(),
            ahead: p
                .cold
                .range(span.base_offset + 1..)
                .map(|(_, s)| s)
                .take_while(|(_, s)| s.base_offset < p.log.log_start_offset())
                .take(READ_AHEAD_SPANS)
                .scan(0u64, |bytes, (key, s)| {
                    let first = *bytes == 0;
                    *bytes += s.byte_len;
                    (first || *bytes <= READ_AHEAD_BYTES).then(|| (key.clone(), s.clone()))
                })
                .collect(),
            offset: item.offset,
            max_bytes: item.max_bytes,
            first_batch_always: item.first_batch_always,
            high_watermark: end,
            log_start_offset: start,
        }),
        _ => FetchPlan::Ready(out_of_range),
    }
}

impl ColdRead {
    async fn read(
        self,
        store: &dyn ringtail_objstore::ObjectStore,
        cache: &Rc<SpanCache>,
    ) -> FetchOutcome {
        let bytes = match cache.get(store, &self.key, &self.span).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "cold read failed");
                return FetchOutcome::error(ResponseError::KafkaStorageError.code());
            }
        };
        let mut batches = Vec::new();
        let mut taken = 0usize;
        let mut at = 0usize;
        while at < bytes.len() {
            let Ok(h) = BatchHeader::parse(&bytes[at..]) else {
                break;
            };
            let size = h.size_bytes();
            if at + size > bytes.len() {
                tracing::error!(key = %self.key, at, "object span ends inside a batch");
                break;
            }
            if h.last_offset() >= self.offset {
                let fits = taken + size <= self.max_bytes;
                if !(fits || batches.is_empty() && self.first_batch_always) {
                    break;
                }
                taken += size;
                batches.push(bytes.slice(at..at + size));
                if !fits {
                    break;
                }
            }
            at += size;
        }
        FetchOutcome {
            error: 0,
            high_watermark: self.high_watermark,
            log_start_offset: self.log_start_offset,
            batches,
        }
    }
}

/// How often a shard applies DeleteRecords and topic deletions to its committed objects (time
/// and size retention run at their own interval, `log.retention.check.interval.ms`).
const DELETION_INTERVAL: Duration = Duration::from_secs(1);
/// How often a shard retries deleting garbage whose delete failed.
const GARBAGE_RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// Whether `retention.bytes` drops a partition's oldest span (`span_bytes` of the `total` it
/// holds): Kafka's rule for segments, only if what stays still holds at least `retention_bytes`
/// (a merged span holds up to 32 MiB: dropping it whenever the partition is one byte over
/// would cut the log far below the limit). Negative: no limit.
fn drops_for_bytes(total: i64, span_bytes: i64, retention_bytes: i64) -> bool {
    retention_bytes >= 0 && total - span_bytes >= retention_bytes
}

/// What one retention pass deletes.
#[derive(Default)]
struct Deletion {
    /// (partition, span base offset) of the spans to drop.
    spans: HashSet<(PartitionKey, i64)>,
    /// New log starts: DeleteRecords' offsets, and the ends of the spans retention drops.
    starts: HashMap<StreamKey, i64>,
    live: HashSet<PartitionKey>,
    /// The catalog as the pass began: data of partitions not live is dropped only when it
    /// records their topic's deletion.
    catalog: Arc<Snapshot>,
}

impl Deletion {
    /// Whether the pass may forget everything of partition `key`: its topic was deleted.
    fn forgets(&self, key: &PartitionKey) -> bool {
        !self.live.contains(key) && self.catalog.was_deleted(&key.topic_id)
    }
}

impl ShardState {
    /// Spans to drop: those below a DeleteRecords offset, and, when retention is checked
    /// (`retention`), the oldest ones beyond `retention.ms` (judged by the span's largest
    /// timestamp, as Kafka judges a segment) or `retention.bytes` (counting the in-memory log
    /// too). Only committed spans are judged: the active tail, not yet in an object, stays
    /// whatever its timestamps; an idle partition whose every span expired is emptied, as Kafka
    /// rolls and deletes an expired active segment.
    fn plan_deletion(&self, retention: bool) -> Deletion {
        let now = now_ms();
        let parts = self.partitions.borrow();
        let mut d = Deletion {
            live: parts.keys().copied().collect(),
            catalog: self.catalog.snapshot(),
            ..Deletion::default()
        };
        for (key, p) in parts.iter() {
            let cfg = &p.topic.config;
            let below = p.deleted_below.max(p.delete_requested);
            let mut start = below;
            let mut total = p.stored_bytes();
            for (&base, (_, span)) in &p.cold {
                let deleted = span.last_offset < below;
                let old = cfg.retention_ms >= 0 && now - span.max_timestamp > cfg.retention_ms;
                let over = drops_for_bytes(total, span.byte_len as i64, cfg.retention_bytes);
                if !(deleted || (retention && (old || over))) {
                    break;
                }
                total -= span.byte_len as i64;
                d.spans.insert((*key, base));
                start = start.max(span.last_offset + 1);
            }
            if start > p.deleted_below {
                d.starts
                    .insert((*key.topic_id.as_bytes(), key.partition), start);
            }
        }
        d
    }

    /// Applies retention and DeleteRecords to the objects: one manifest commit forgets the
    /// dropped spans and records the new log starts, objects nobody references are deleted, and
    /// only then do the partitions' log starts move up and waiting DeleteRecords answer.
    async fn enforce_deletion(self: &Rc<Self>, tier: &Tier, retention: bool) {
        let d = self.plan_deletion(retention);
        let drop = |s: &Span| {
            let key = PartitionKey {
                topic_id: Uuid::from_bytes(s.topic_id),
                partition: s.partition,
            };
            d.forgets(&key) || d.spans.contains(&(key, s.base_offset))
        };
        let live = |k: &StreamKey| {
            !d.forgets(&PartitionKey {
                topic_id: Uuid::from_bytes(k.0),
                partition: k.1,
            })
        };
        let Ok((dropped, starts)) = tier.delete_data(drop, &d.starts, live).await else {
            return;
        };
        {
            let mut parts = self.partitions.borrow_mut();
            for span in dropped {
                let key = PartitionKey {
                    topic_id: Uuid::from_bytes(span.topic_id),
                    partition: span.partition,
                };
                if let Some(p) = parts.get_mut(&key) {
                    p.cold.remove(&span.base_offset);
                }
            }
            for p in parts.values_mut() {
                p.producers.expire(now_ms());
            }
            for ((topic_id, partition), offset) in starts {
                let key = PartitionKey {
                    topic_id: Uuid::from_bytes(topic_id),
                    partition,
                };
                if let Some(p) = parts.get_mut(&key) {
                    p.delete_below(offset);
                }
            }
        }
        self.trim_wal();
    }

    /// DeleteRecords: answers once the new log start is committed (at once without an object
    /// tier, where it holds until restart). `offset` -1 means the high watermark.
    pub fn delete_records(
        self: &Rc<Self>,
        items: Vec<DeleteItem>,
    ) -> impl Future<Output = Vec<DeleteOutcome>> + 'static {
        let mut waits = Vec::with_capacity(items.len());
        {
            let mut parts = self.partitions.borrow_mut();
            for item in items {
                let Some(p) = parts.get_mut(&item.key) else {
                    // Never produced to: only offset 0 (or -1, the high watermark) is in range.
                    let ok = item.offset == 0 || item.offset == -1;
                    waits.push(Err(DeleteOutcome {
                        error: if ok {
                            0
                        } else {
                            ResponseError::OffsetOutOfRange.code()
                        },
                        low_watermark: if ok { 0 } else { -1 },
                    }));
                    continue;
                };
                let end = p.log_end();
                let offset = if item.offset == -1 { end } else { item.offset };
                if offset < 0 || offset > end {
                    waits.push(Err(DeleteOutcome {
                        error: ResponseError::OffsetOutOfRange.code(),
                        low_watermark: -1,
                    }));
                    continue;
                }
                if offset <= p.log_start() {
                    waits.push(Err(DeleteOutcome {
                        error: 0,
                        low_watermark: p.log_start(),
                    }));
                    continue;
                }
                match &self.tier {
                    None => {
                        p.delete_below(offset);
                        waits.push(Err(DeleteOutcome {
                            error: 0,
                            low_watermark: p.log_start(),
                        }));
                    }
                    Some(tier) => {
                        let (tx, rx) = oneshot::channel();
                        p.delete_requested = p.delete_requested.max(offset);
                        p.delete_waiters.push((offset, tx));
                        tier.request_deletion();
                        waits.push(Ok((item.key, rx)));
                    }
                }
            }
        }
        if self.tier.is_none() {
            self.trim_wal();
        }
        let weak = Rc::downgrade(self);
        async move {
            let mut out = Vec::with_capacity(waits.len());
            for w in waits {
                out.push(match w {
                    Err(done) => done,
                    Ok((key, rx)) => match rx.await {
                        Ok(()) => DeleteOutcome {
                            error: 0,
                            low_watermark: weak
                                .upgrade()
                                .and_then(|s| s.with_partition(key, |p| p.log_start()))
                                .unwrap_or(-1),
                        },
                        // Fenced, or the topic was deleted meanwhile.
                        Err(_) => DeleteOutcome {
                            error: ResponseError::KafkaStorageError.code(),
                            low_watermark: -1,
                        },
                    },
                });
            }
            out
        }
    }
}

/// Checks time and size retention while the shard lives (no object tier): at start (a WAL
/// replay brings back batches an earlier check dropped but the ring had not trimmed), every
/// `interval`, and early when the ring fills up (see [`ShardState::kick_retention`]), at most
/// once per [`RETENTION_KICK_GAP`].
async fn memory_retention_loop(weak: Weak<ShardState>, interval: Duration) {
    loop {
        match weak.upgrade() {
            Some(state) => state.enforce_memory_retention(),
            None => return,
        }
        ringtail_shards::sleep(RETENTION_KICK_GAP).await;
        let (tx, rx) = oneshot::channel();
        match weak.upgrade() {
            Some(state) => *state.retention_kick.borrow_mut() = Some(tx),
            None => return,
        }
        let _ = ringtail_shards::timeout(interval.saturating_sub(RETENTION_KICK_GAP), rx).await;
    }
}

/// Least time between two retention checks that a filling ring asks for.
const RETENTION_KICK_GAP: Duration = Duration::from_millis(100);

/// Seals and uploads objects while the shard lives.
async fn upload_loop(weak: Weak<ShardState>, tick: Duration, retention_check: Duration) {
    let mut last_retention = Instant::now();
    let mut last_retention_check = Instant::now();
    let mut last_gc: Option<Instant> = None;
    let mut last_merge = Instant::now();
    loop {
        let requested = weak
            .upgrade()
            .and_then(|s| s.tier.as_ref().map(|t| t.seal_requested()));
        match requested {
            // A waiting producer wakes the loop at once (the bound is the tick).
            Some(rx) => {
                let _ = ringtail_shards::timeout(tick, rx).await;
            }
            None => return,
        }
        let Some(state) = weak.upgrade() else { return };
        if let Some(tier) = state.tier.clone() {
            let check = last_retention_check.elapsed() >= retention_check;
            if check
                || last_retention.elapsed() >= DELETION_INTERVAL
                || tier.take_deletion_request()
            {
                last_retention = Instant::now();
                if check {
                    last_retention_check = last_retention;
                }
                tier.busy.set(true);
                state.enforce_deletion(&tier, check).await;
                tier.busy.set(false);
            }
            if last_gc.is_none_or(|t| t.elapsed() >= GARBAGE_RETRY_INTERVAL) {
                let sweep = last_gc.is_none();
                last_gc = Some(Instant::now());
                tier.busy.set(true);
                tier.collect_garbage(sweep).await;
                tier.busy.set(false);
            }
        }
        let Some(tier) = state.tier.clone() else {
            return;
        };
        if tier.is_fenced() {
            state.fenced();
            return;
        }
        tier.delete_retired().await;
        // Seal first, then merge: on a tick with nothing to upload, at most one merge per
        // interval; when merging is behind, after every upload too (steady durability=object
        // traffic asks for an upload on every produce, so it never leaves such a tick).
        let sealed = tier.seal_if_due();
        let nothing_sealed = sealed.is_none();
        if let Some(sealed) = sealed {
            drop(state);
            let key: Arc<str> = sealed.key.as_str().into();
            tier.busy.set(true);
            let producers = weak
                .upgrade()
                .map(|s| s.producer_snapshot())
                .unwrap_or_default();
            let uploaded = tier.upload(sealed, producers).await;
            tier.busy.set(false);
            match uploaded {
                Ok(spans) => {
                    if let Some(state) = weak.upgrade() {
                        state.on_uploaded(key, spans);
                    }
                }
                // Kept by the tier and retried after the deletion passes meanwhile.
                Err(crate::tier::manifest::CommitError::TooLarge { .. }) => {}
                Err(_) => {
                    if let Some(state) = weak.upgrade() {
                        state.fenced();
                    }
                    return;
                }
            }
        } else {
            drop(state);
        }
        let due = if tier.merge_behind() {
            last_merge.elapsed() >= crate::tier::merge::MERGE_BACKLOG_INTERVAL
        } else {
            nothing_sealed && last_merge.elapsed() >= crate::tier::merge::MERGE_INTERVAL
        };
        if due {
            last_merge = Instant::now();
            tier.busy.set(true);
            let merged = tier.merge().await;
            tier.busy.set(false);
            match merged {
                Ok(Some(m)) => {
                    if let Some(state) = weak.upgrade() {
                        state.on_merged(m);
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    if let Some(state) = weak.upgrade() {
                        state.fenced();
                    }
                    return;
                }
            }
        }
    }
}

fn empty_partition_fetch(offset: i64) -> FetchOutcome {
    if offset == 0 {
        FetchOutcome {
            error: 0,
            high_watermark: 0,
            log_start_offset: 0,
            batches: Vec::new(),
        }
    } else {
        FetchOutcome {
            error: ResponseError::OffsetOutOfRange.code(),
            high_watermark: 0,
            log_start_offset: 0,
            batches: Vec::new(),
        }
    }
}
fn list_offset(log: &dyn PartitionLog, timestamp: i64) -> ListOutcome {
    let ok = |offset, timestamp| ListOutcome {
        error: 0,
        offset,
        timestamp,
    };
    match timestamp {
        -1 => ok(log.log_end_offset(), -1),
        -2 | -4 => ok(log.log_start_offset(), -1),
        -3 => match log.batch_with_max_timestamp() {
            Some(batch) => first_record_at_or_after(&batch, i64::MIN, true),
            None => ok(-1, -1),
        },
        t if t >= 0 => match log.batches_from_timestamp(t, 1).into_iter().next() {
            Some(batch) => first_record_at_or_after(&batch, t, false),
            None => ok(-1, -1),
        },
        _ => ListOutcome::error(ResponseError::InvalidRequest.code()),
    }
}

/// Walks one batch's records as a stream (this is the ListOffsets path, never produce or
/// fetch; a compressed batch is never expanded whole, and at most
/// `DECOMPRESSED_BATCH_BYTES_MAX` of it is read) to find the first record with a timestamp
/// >= `target`, or the first one with the batch's max timestamp.
fn first_record_at_or_after(batch: &Bytes, target: i64, want_max: bool) -> ListOutcome {
    let header = BatchHeader::parse(batch).expect("stored batches were validated");
    if header.attributes & 0x08 != 0 {
        // LogAppendTime: every record carries the batch's max timestamp.
        return ListOutcome {
            error: 0,
            offset: header.base_offset,
            timestamp: header.max_timestamp,
        };
    }
    let target = if want_max {
        header.max_timestamp
    } else {
        target
    };
    let mut found = None;
    let walked = records::walk(batch, records::DECOMPRESSED_BATCH_BYTES_MAX, |r| {
        let timestamp = header.base_timestamp.wrapping_add(r.timestamp_delta);
        if timestamp >= target {
            found = Some(ListOutcome {
                error: 0,
                offset: header.base_offset + r.offset_delta as i64,
                timestamp,
            });
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    match walked {
        Ok(()) => found.unwrap_or(ListOutcome {
            error: 0,
            offset: header.base_offset,
            timestamp: header.max_timestamp,
        }),
        Err(e) => {
            tracing::error!(error = %e, base_offset = header.base_offset, "stored batch does not decode");
            ListOutcome::error(ResponseError::CorruptMessage.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::drops_for_bytes;

    /// How many of `spans` (oldest first) retention.bytes drops, as `plan_deletion` walks them.
    fn dropped(spans: &[i64], memory: i64, retention_bytes: i64) -> usize {
        let mut total = spans.iter().sum::<i64>() + memory;
        let mut n = 0;
        for &len in spans {
            if !drops_for_bytes(total, len, retention_bytes) {
                break;
            }
            total -= len;
            n += 1;
        }
        n
    }

    /// Kafka's rule: the oldest span goes only if what stays is still at least the limit.
    #[test]
    fn retention_bytes_keeps_at_least_the_limit() {
        const MIB: i64 = 1 << 20;
        // One byte over, the oldest a 32 MiB merged span: it stays (it used to go, leaving
        // 1 MiB of a 33 MiB limit).
        assert_eq!(dropped(&[32 * MIB, MIB], 1, 33 * MIB), 0);
        // Exactly the limit left without it: it goes.
        assert_eq!(dropped(&[32 * MIB, MIB], 0, MIB), 1);
        // Small spans go one by one until the next would cut below the limit.
        assert_eq!(dropped(&[1000; 10], 0, 7500), 2);
        assert_eq!(dropped(&[1000; 10], 0, 0), 10);
        assert_eq!(dropped(&[1000; 10], 0, -1), 0, "no limit");
    }
}
