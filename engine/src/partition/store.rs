//! The partitions one shard owns: their logs, their long-poll waiters, and the shard's WAL ring.
//!
//! Produce assigns offsets at once (in the order requests reach the owner), appends the batches
//! to the WAL and waits. When the WAL write holding them is durable, `on_durable` appends them to
//! the partition logs — in ring order, so offsets stay dense — wakes long-polling fetches, and
//! only then do the producers get their answers. The high watermark is the durable log end.

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
use ringtail_wal::format::EntryMeta;
use ringtail_wal::{Recovery, Wal, WalConfig, WalError};
use uuid::Uuid;

use crate::catalog::{Catalog, TopicMeta};
use crate::metrics::ShardStats;
use crate::partition::items::{
    ErrorOutcome, FetchItem, FetchOutcome, ListItem, ListOutcome, PartitionKey, ProduceItem,
    ProduceOutcome, LEADER_EPOCH,
};
use crate::partition::log::{MemLog, PartitionLog};
use crate::partition::producers::Check;
use crate::partition::reads::{
    cold_list_offset, empty_partition_fetch, list_offset, plan_fetch, plan_list, FetchPlan,
    ListPlan,
};
use crate::tier::manifest::ProducerSnapshot;
use crate::tier::object_format::Span;
use crate::tier::span_cache::SpanCache;
use crate::tier::Tier;
use ringtail_shards::now_ms;

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
    /// Called once if another broker takes the slot's manifest over (see [`Self::fenced`]).
    pub(super) on_fenced: RefCell<Option<Box<dyn FnOnce()>>>,
    /// The topics; data is deleted only for those its deletion records name.
    pub(super) catalog: Arc<Catalog>,
    /// Wakes the retention check early (no object tier: the WAL ring is full).
    pub(super) retention_kick: RefCell<Option<oneshot::Sender<()>>>,
}

pub(super) fn add(counter: &AtomicU64, n: u64) {
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
            span_cache: Rc::new(SpanCache::new(stats.clone())),
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

    /// What to do when another broker takes the slot's manifest over (the host closes it).
    /// A WAL write failed: the ring's tail is uncertain and it takes no more writes. Rather
    /// than keep the slot owned and read-only, the broker stops: `/ready` and
    /// `ringtail_wal_failed` say so at once, then SIGTERM runs the usual hand-over (everything
    /// durable is uploaded first, so nothing acknowledged is lost; producers get retriable
    /// errors meanwhile) and the process ends with exit code 1.
    pub(super) fn wal_failed(&self, reason: &str) {
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
    pub(super) fn fenced(&self) {
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
    pub(super) fn on_merged(&self, merged: crate::tier::Merged) {
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

    pub(super) fn start_produce(&self, item: ProduceItem) -> Result<Started, ProduceOutcome> {
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

    pub(super) fn append_error(
        &self,
        topic: &TopicMeta,
        partition: i32,
        e: WalError,
    ) -> ProduceOutcome {
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

    pub(super) async fn finish_produce(&self, s: Started) -> ProduceOutcome {
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
    pub(super) fn on_durable(&self, tags: &[WalTag]) {
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
        self.trim_wal();
    }
}

/// Resolves once a WAL append is durable (or failed).
pub(super) type WalTicket = oneshot::Receiver<Result<(), WalError>>;

pub(super) struct Started {
    /// Each batch's WAL ticket, with its producer id and base offset.
    pub(super) tickets: Vec<(WalTicket, i64, i64)>,
    /// A duplicate answered with the original: (producer id, original base offset).
    pub(super) duplicate_of: Vec<(i64, i64)>,
    /// `durability=object`: resolves once the last offset is in a committed object.
    pub(super) uploaded: Option<oneshot::Receiver<()>>,
    /// Until when to wait for `uploaded` (see [`ProduceItem::upload_timeout`]).
    pub(super) upload_deadline: Option<Instant>,
    pub(super) base_offset: i64,
    /// Answer only once the log is durable through here (covers duplicates' originals).
    pub(super) last_offset: i64,
    pub(super) log_append_time_ms: i64,
    pub(super) key: PartitionKey,
}
