//! What leaves a slot's partitions: time and size retention, DeleteRecords, deleted topics,
//! and the upload loop that drives them with the object tier.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::catalog::Snapshot;
use crate::partition::items::{DeleteItem, DeleteOutcome, PartitionKey};
use crate::partition::store::ShardState;
use crate::tier::object_format::Span;
use crate::tier::object_format::StreamKey;
use crate::tier::Tier;
use ringtail_shards::now_ms;

/// How often a shard applies DeleteRecords and topic deletions to its committed objects (time
/// and size retention run at their own interval, `log.retention.check.interval.ms`).
pub(super) const DELETION_INTERVAL: Duration = Duration::from_secs(1);
/// How often a shard retries deleting garbage whose delete failed.
pub(super) const GARBAGE_RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// Whether `retention.bytes` drops a partition's oldest span (`span_bytes` of the `total` it
/// holds): Kafka's rule for segments, only if what stays still holds at least `retention_bytes`
/// (a merged span holds up to 32 MiB: dropping it whenever the partition is one byte over
/// would cut the log far below the limit). Negative: no limit.
pub(super) fn drops_for_bytes(total: i64, span_bytes: i64, retention_bytes: i64) -> bool {
    retention_bytes >= 0 && total - span_bytes >= retention_bytes
}

/// What one retention pass deletes.
#[derive(Default)]
pub(super) struct Deletion {
    /// (partition, span base offset) of the spans to drop.
    pub(super) spans: HashSet<(PartitionKey, i64)>,
    /// New log starts: DeleteRecords' offsets, and the ends of the spans retention drops.
    pub(super) starts: HashMap<StreamKey, i64>,
    pub(super) live: HashSet<PartitionKey>,
    /// The catalog as the pass began: data of partitions not live is dropped only when it
    /// records their topic's deletion.
    pub(super) catalog: Arc<Snapshot>,
}

impl Deletion {
    /// Whether the pass may forget everything of partition `key`: its topic was deleted.
    pub(super) fn forgets(&self, key: &PartitionKey) -> bool {
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
    pub(super) fn plan_deletion(&self, retention: bool) -> Deletion {
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
    pub(super) async fn enforce_deletion(self: &Rc<Self>, tier: &Tier, retention: bool) {
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

impl ShardState {
    /// Starts what trims the slot while it lives: with an object tier the upload loop (which
    /// also applies retention, DeleteRecords and deletions to objects), else the in-memory
    /// retention loop.
    pub(super) fn start_retention(self: &Rc<Self>, retention_check: Duration) {
        let weak = Rc::downgrade(self);
        match &self.tier {
            Some(tier) => {
                let tick =
                    (tier.age_max / 2).clamp(Duration::from_millis(5), Duration::from_millis(100));
                ringtail_shards::spawn_detached(upload_loop(weak, tick, retention_check));
            }
            None => ringtail_shards::spawn_detached(memory_retention_loop(weak, retention_check)),
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
pub(super) const RETENTION_KICK_GAP: Duration = Duration::from_millis(100);

/// Seals and uploads objects while the shard lives; then lets the PUTs still under way stop.
async fn upload_loop(weak: Weak<ShardState>, tick: Duration, retention_check: Duration) {
    let Some(tier) = weak.upgrade().and_then(|s| s.tier.clone()) else {
        return;
    };
    run_uploads(weak, tick, retention_check).await;
    tier.stop_uploads();
}

async fn run_uploads(weak: Weak<ShardState>, tick: Duration, retention_check: Duration) {
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
                tier.busy_while(state.enforce_deletion(&tier, check)).await;
            }
            if last_gc.is_none_or(|t| t.elapsed() >= GARBAGE_RETRY_INTERVAL) {
                let sweep = last_gc.is_none();
                last_gc = Some(Instant::now());
                tier.busy_while(tier.collect_garbage(sweep)).await;
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
        // Seal and start the next upload if one is due (its PUT commits it, ARCHITECTURE.md,
        // "Event-driven object commits"), then fold what is committed into the manifest if due.
        state.start_due_upload();
        drop(state);
        let producers_now = || {
            weak.upgrade()
                .map(|s| s.producer_snapshot())
                .unwrap_or_default()
        };
        // A fold refused for size is retried after the deletion passes meanwhile. Its other
        // errors, and a merge commit's, mean the tier was fenced: checked once, below.
        let _ = tier.busy_while(tier.fold(false, producers_now)).await;
        // Then merge: on a tick with nothing to upload, at most one merge per interval; when
        // merging is behind, after every upload too (steady durability=object traffic asks for
        // an upload on every produce, so it never leaves such a tick). One at a time.
        let nothing_sealed = !tier.has_uploads();
        // A merge is read and written off this loop; only its commit is here.
        if !tier.is_fenced() {
            if let Ok(Some(m)) = tier.busy_while(tier.finish_merge()).await {
                if let Some(state) = weak.upgrade() {
                    state.on_merged(m);
                }
            }
        }
        if tier.is_fenced() {
            if let Some(state) = weak.upgrade() {
                state.fenced();
            }
            return;
        }
        let due = if tier.merge_behind() {
            last_merge.elapsed() >= crate::tier::merge::MERGE_BACKLOG_INTERVAL
        } else {
            nothing_sealed && last_merge.elapsed() >= crate::tier::merge::MERGE_INTERVAL
        };
        if due && !tier.merge_running() {
            last_merge = Instant::now();
            tier.start_merge();
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
