//! The partitions of one slot ([`ShardState`]): opening them from the recovered WAL ring and
//! the manifest, reads (fetch, list offsets, long-poll watches), what the object tier tells them
//! (uploads and merges committed, fencing), closing and hand-over. The write path is in
//! `produce.rs`; the rule is the same everywhere: the high watermark is the durable log end.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use ringtail_netio::header::BatchHeader;
use ringtail_wal::{Recovery, Wal, WalConfig, WalError};
use uuid::Uuid;

use crate::catalog::{Catalog, TopicMeta};
use crate::metrics::ShardStats;
use crate::partition::epochs::{check_current, EpochStarts};
use crate::partition::items::{
    EpochItem, EpochOutcome, ErrorOutcome, FetchItem, FetchOutcome, ListItem, ListOutcome,
    PartitionKey,
};
use crate::partition::log::{MemLog, PartitionLog};
use crate::partition::reads::{
    cold_list_offset, empty_partition_fetch, list_offset, plan_fetch, plan_list, FetchPlan,
    ListPlan,
};
use crate::tier::manifest::ProducerSnapshot;
use crate::tier::object_format::Span;
use crate::tier::span_cache::SpanCache;
use crate::tier::Tier;
use ringtail_shards::now_ms;

use crate::partition::copy_starts::CopyStarts;
use crate::partition::state::{wake, Partition, Waiter};
/// What the WAL keeps with each entry, and hands back once it is durable.
#[derive(Clone)]
pub struct WalTag {
    pub(super) key: PartitionKey,
    pub(super) header: BatchHeader,
    pub(super) bytes: Bytes,
    /// A recovered batch that another owner's writes superseded: never served, free to trim.
    pub(super) superseded: bool,
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
    pub(super) partitions: RefCell<HashMap<PartitionKey, Partition>>,
    pub(super) wal: RefCell<Option<Wal<WalTag>>>,
    /// Long-polls on partitions that hold no data yet: woken by the shard's next durable write.
    pub(super) unborn_waiters: RefCell<Vec<Waiter>>,
    pub(super) last_full_warning: Cell<Option<Instant>>,
    pub(super) tier: Option<Rc<Tier>>,
    pub(super) span_cache: Rc<SpanCache>,
    /// Uploaded batches still in memory (the hot-tail cache), oldest first:
    /// (partition, last offset of the span, bytes).
    pub(super) hot_uploaded: RefCell<VecDeque<(PartitionKey, i64, u64)>>,
    pub(super) hot_uploaded_bytes: Cell<u64>,
    pub(super) hot_cache_bytes: u64,
    pub stats: Arc<ShardStats>,
    /// Being handed over: no new writes.
    pub(super) closing: Cell<bool>,
    /// A WAL write failed: the ring takes no more writes (see [`Self::wal_failed`]).
    pub(super) wal_broken: Cell<bool>,
    /// Told when writes in flight may have finished (see [`Self::writes_settled`]).
    pub(super) writes_done: ringtail_shards::WaitList,
    /// Called once if another broker takes the slot's manifest over (see [`Self::fenced`]).
    pub(super) on_fenced: RefCell<Option<Box<dyn FnOnce()>>>,
    /// The topics; data is deleted only for those its deletion records name.
    pub(super) catalog: Arc<Catalog>,
    /// Wakes the retention check early (no object tier: the WAL ring is full).
    pub(super) retention_kick: RefCell<Option<oneshot::Sender<()>>>,
    /// The streams to the slot's followers (None: it replicates nothing), and what was sent
    /// and is not in the bucket yet (`replicated.rs`).
    pub(super) outbound: RefCell<Option<crate::replication::outbound::Outbound>>,
    pub(super) sent_queue: RefCell<crate::partition::state::SentQueue>,
}

pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl ShardState {
    /// Rebuilds every partition's log from the slot's recovered ring (see
    /// [`crate::shard::host::recover_ring`], which runs off the shard) and opens the ring for writes.
    /// Own batches that a replica copy this opening adopts wrote anew give way to it (`copies`).
    pub async fn open(
        config: &WalConfig,
        recovery: Recovery,
        copies: &CopyStarts,
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
            span_cache: Rc::new(SpanCache::new(stats.clone())),
            hot_uploaded: RefCell::new(VecDeque::new()),
            hot_uploaded_bytes: Cell::new(0),
            hot_cache_bytes: limits.hot_cache_bytes,
            stats,
            closing: Cell::new(false),
            on_fenced: RefCell::new(None),
            wal_broken: Cell::new(false),
            writes_done: ringtail_shards::WaitList::new(),
            catalog,
            retention_kick: RefCell::new(None),
            outbound: RefCell::new(None),
            sent_queue: RefCell::default(),
        });
        let snapshot = state.catalog.snapshot();
        let opened = match &state.tier {
            Some(tier) => state.load_committed(tier, &snapshot),
            None => Ok(()),
        };
        let live = opened
            .and_then(|()| state.rebuild(&recovery, copies, &snapshot))
            .map_err(|reason| WalError::Open {
                path: config.path.display().to_string(),
                reason,
            })?;
        let weak: Weak<ShardState> = Rc::downgrade(&state);
        if let Some(tier) = &state.tier {
            let weak = weak.clone();
            tier.set_on_committed(move |key, spans| {
                if let Some(state) = weak.upgrade() {
                    state.on_uploaded(key.as_str().into(), spans);
                }
            });
        }
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
        state.start_retention(limits.retention_check_interval);
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
        while !tier
            .settle(crate::cluster::membership::CLOSE_FLUSH_LOG_INTERVAL)
            .await
        {
            tracing::error!(
                slot,
                waited_s = started.elapsed().as_secs(),
                "slot hand-over waits for the upload of acknowledged records (the store \
                 fails, see above): the slot stays claimed until they are in the bucket"
            );
        }
    }

    /// What to do when another broker takes the slot's manifest over (the host closes it).
    /// A WAL write failed: the ring's tail is uncertain and it takes no more writes. Rather
    /// than keep the slot owned and read-only, the broker stops: `/ready` and
    /// `ringtail_wal_failed` say so at once, then SIGTERM runs the usual hand-over (everything
    /// durable is uploaded first, so nothing acknowledged is lost; producers get retriable
    /// errors meanwhile) and the process ends with exit code 1.
    pub(super) fn wal_failed(&self, reason: &str) {
        self.wal_broken.set(true);
        self.writes_done.notify_all();
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
    pub(super) fn fenced(&self) {
        self.start_closing();
        for p in self.partitions.borrow_mut().values_mut() {
            p.upload_waiters.clear();
            p.delete_waiters.clear();
            // Produces waiting for followers learn it at once (see `finish_produce`).
            wake(p.waiters.drain(..));
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

    /// Another broker took the slot's manifest over.
    pub fn is_fenced(&self) -> bool {
        self.tier.as_ref().is_some_and(|t| t.is_fenced())
    }

    /// Resolves once no write is in flight (true), or at `deadline` (false).
    pub async fn writes_settled(&self, deadline: Instant) -> bool {
        self.writes_done
            .wait_until_deadline(deadline, || !self.writes_in_flight())
            .await
    }

    /// Whether some partition has writes whose WAL write has not finished.
    pub fn writes_in_flight(&self) -> bool {
        // After a failed write nothing more becomes durable: nothing is worth waiting for.
        !self.wal_broken.get()
            && self
                .partitions
                .borrow()
                .values()
                .any(|p| p.next_offset > p.durable_end())
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
    pub(super) fn producer_snapshot(&self) -> Vec<ProducerSnapshot> {
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

    /// An object is committed: its batches stay in memory while the hot-tail cache has room
    /// (oldest uploaded leave first), cold reads can find them in the object, and the WAL may
    /// trim behind them.
    pub(super) fn on_uploaded(&self, key: Arc<str>, spans: Vec<Span>) {
        let held_before = self.hot_uploaded_bytes.get();
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
                if p.awaiting_replicas > 0 {
                    // In the bucket before every follower has it: visible now.
                    wake(p.waiters.drain(..));
                }
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
        }
        // The shard's gauge counts the hot caches of all its slots: this one's change only.
        let held = self.hot_uploaded_bytes.get();
        self.stats
            .hot_cache_bytes
            .fetch_add(held.wrapping_sub(held_before), Ordering::Relaxed);
        self.trim_wal();
        self.advance_replicated();
    }

    /// A merge committed: cold reads of its offsets go to the merged object (its spans cover
    /// exactly the spans it replaced, partition by partition).
    pub(super) fn on_merged(&self, merged: crate::tier::merging::Merged) {
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

    /// Frees WAL chunks whose every batch is gone from its partition (retention, deletion).
    pub(super) fn trim_wal(&self) {
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

    pub(super) fn with_partition<T>(
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
        let serving = self.leader_epoch();
        let plans: Vec<FetchPlan> = items
            .into_iter()
            .map(|item| {
                if let Err(code) = check_current(item.current_leader_epoch, serving) {
                    return FetchPlan::Ready(FetchOutcome::error(code));
                }
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
        let current = self.leader_epoch();
        let plans: Vec<(ListPlan, i64, EpochStarts)> = items
            .into_iter()
            .map(|item| {
                if let Err(code) = check_current(item.current_leader_epoch, current) {
                    return (
                        ListPlan::Ready(ListOutcome::error(code)),
                        0,
                        EpochStarts::default(),
                    );
                }
                self.with_partition(item.key, |p| {
                    (
                        plan_list(p, item.timestamp),
                        p.log_start(),
                        p.epochs.clone(),
                    )
                })
                .unwrap_or_else(|| {
                    (
                        ListPlan::Ready(list_offset(&MemLog::new(), item.timestamp)),
                        0,
                        EpochStarts::default(),
                    )
                })
            })
            .collect();
        let store = self.tier.as_ref().map(|t| t.store.clone());
        async move {
            let mut out = Vec::with_capacity(plans.len());
            for (plan, log_start, epochs) in plans {
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
                if o.error == 0 && o.offset >= 0 {
                    // As Kafka: the epoch of the batch holding it, -1 if none is known.
                    o.leader_epoch = epochs.epoch_at(o.offset).unwrap_or(-1);
                }
                out.push(o);
            }
            out
        }
    }

    /// The slot's ownership epoch: the one its opening took over at (0 without an object
    /// tier: a broker alone on its disk is the only owner there ever is).
    pub fn epoch(&self) -> u64 {
        self.tier.as_ref().map_or(0, |t| t.epoch())
    }

    /// The slot's ownership epoch as its partitions' leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        crate::cluster::epochs::leader_epoch(self.epoch())
    }

    /// OffsetForLeaderEpoch: where each asked epoch ends in its partition, by the durable log
    /// end (a partition never written to has no epochs and ends at 0).
    pub fn leader_epochs(&self, items: Vec<EpochItem>) -> Vec<EpochOutcome> {
        let current = self.leader_epoch();
        items
            .into_iter()
            .map(|item| {
                if let Err(code) = check_current(item.current_leader_epoch, current) {
                    return EpochOutcome::error(code);
                }
                let (leader_epoch, end_offset) = self
                    .with_partition(item.key, |p| {
                        p.epochs.end_offset_for(item.epoch, current, p.log_end())
                    })
                    .unwrap_or_else(|| {
                        EpochStarts::default().end_offset_for(item.epoch, current, 0)
                    });
                EpochOutcome {
                    error: 0,
                    leader_epoch,
                    end_offset,
                }
            })
            .collect()
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
    pub(super) fn kick_retention(&self) {
        if let Some(kick) = self.retention_kick.take() {
            let _ = kick.send(());
        }
    }

    /// Time and size retention without an object tier: memory (and the WAL) is the only copy,
    /// judged batch by batch; the new log starts are deletions like DeleteRecords'.
    pub(super) fn enforce_memory_retention(&self) {
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
        self.writes_done.notify_all();
        self.trim_wal();
        // Its batches waiting for followers no longer hold the others' high watermarks back.
        self.advance_replicated();
    }
}

impl Drop for ShardState {
    /// The slot is let go: its hot cache no longer counts in the shard's.
    fn drop(&mut self) {
        self.stats
            .hot_cache_bytes
            .fetch_sub(self.hot_uploaded_bytes.get(), Ordering::Relaxed);
    }
}
