//! The write path of a slot's partitions: produce assigns offsets at once (in the order requests
//! reach the owner), checks idempotent producers, queues the batches in the WAL and waits; when
//! the WAL write holding them is durable, [`ShardState::on_durable`] appends them to the
//! partition logs in ring order (offsets stay dense), wakes long-polling fetches and hands them
//! to the object tier, and only then do the producers get their answers.

use std::future::Future;
use std::rc::Rc;
use std::time::Instant;

use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use ringtail_wal::format::EntryMeta;
use ringtail_wal::WalError;

use crate::catalog::topic_config::Durability;
use crate::catalog::TopicMeta;
use crate::partition::items::{ErrorOutcome, PartitionKey, ProduceItem, ProduceOutcome};
use crate::partition::log::PartitionLog;
use crate::partition::producers::Check;
use crate::partition::state::{wake, Partition};
use crate::partition::store::{add, ShardState, WalTag};
use ringtail_shards::now_ms;

impl ShardState {
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
        let durability = item.topic.config.durability;
        if durability == Durability::Object && self.tier.is_none() {
            tracing::warn!(topic = %item.topic.name, "durability=object needs --object-store");
            return Err(ProduceOutcome::error(
                ResponseError::KafkaStorageError.code(),
            ));
        }
        let factor = item.topic.replication_factor.max(1) as usize;
        let min_insync = item.topic.config.min_insync_replicas;
        let replicated = durability == Durability::Replicated;
        // Kafka's rule: acks=all is refused before anything is written while fewer copies
        // than min.insync.replicas are in sync (acks=1 is taken).
        if replicated && item.acks_all && !self.may_append_replicated(factor, min_insync) {
            tracing::debug!(topic = %item.topic.name, partition = item.key.partition, in_sync = self.in_sync_copies(factor), min_insync, "produce refused: not enough replicas in sync");
            return Err(ProduceOutcome::error(
                ResponseError::NotEnoughReplicas.code(),
            ));
        }
        let now = now_ms();
        let leader_epoch = self.leader_epoch();
        let log_append_time = item.topic.config.log_append_time;
        let mut base_offset = None;
        // The last offset the answer waits for (a duplicate's original may still be in flight).
        let mut last_offset = p.next_offset - 1;
        let mut tickets = Vec::with_capacity(item.batches.len());
        let mut sent = Vec::new();
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
            let (header, bytes) = batch.assign(p.next_offset, leader_epoch);
            let meta = EntryMeta {
                stream_id: *item.key.topic_id.as_bytes(),
                stream_index: item.key.partition,
                base_offset: header.base_offset,
                record_count: header.record_count,
                leader_epoch,
            };
            match wal.append(
                meta,
                bytes.clone(),
                WalTag {
                    key: item.key,
                    header,
                    bytes: bytes.clone(),
                    superseded: false,
                },
            ) {
                Ok(ticket) => {
                    add(&self.stats.produce_records, header.record_count as u64);
                    add(&self.stats.produce_bytes, header.size_bytes() as u64);
                    p.next_offset = header.last_offset() + 1;
                    base_offset.get_or_insert(header.base_offset);
                    last_offset = header.last_offset();
                    p.producers.start((&header).into());
                    p.epochs.note(leader_epoch, header.base_offset);
                    if replicated {
                        sent.push(self.send_replicated(p, item.key, &header, &bytes, factor));
                    }
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
        let wait_upload = durability == Durability::Object && p.next_offset > p.uploaded_end;
        let uploaded = wait_upload.then(|| {
            let (tx, rx) = oneshot::channel();
            p.upload_waiters.push((p.next_offset - 1, tx));
            if let Some(tier) = &self.tier {
                tier.request_seal();
            }
            rx
        });
        Ok(Started {
            dispatched: Instant::now(),
            durability: match durability {
                Durability::Replicated if !item.acks_all => Durability::Wal,
                d => d,
            },
            replicas: (replicated && item.acks_all).then_some((factor, min_insync)),
            sent,
            tickets,
            duplicate_of: duplicates,
            uploaded,
            deadline: item.ack_timeout.map(|t| Instant::now() + t),
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
            let uploaded = until(s.deadline, uploaded).await;
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
        // Replicated (acks=all): the batches, or the duplicates' originals, wait for the high
        // watermark, which passes them once every in-sync follower has them (R1).
        loop {
            let (durable, abandoned) = match self.partitions.borrow().get(&s.key) {
                None => (true, false),
                Some(p) => (
                    if s.replicas.is_some() {
                        p.log_end() > s.last_offset
                    } else {
                        p.durable_end() > s.last_offset
                    },
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
            if !durable && s.replicas.is_some() && self.is_fenced() {
                // A successor owns the slot: its followers take nothing more from this one.
                return ProduceOutcome::error(ResponseError::NotLeaderOrFollower.code());
            }
            if durable {
                break;
            }
            let (tx, rx) = oneshot::channel();
            self.watch(vec![(s.key, s.last_offset)], tx);
            if s.replicas.is_none() {
                let _ = rx.await;
            } else if until(s.deadline, rx).await.is_none() {
                // Durable here, not yet on every in-sync follower: the producer retries, and an
                // idempotent retry is answered once they have it.
                tracing::debug!(
                    partition = s.key.partition,
                    "produce timed out waiting for the followers"
                );
                return ProduceOutcome::error(ResponseError::RequestTimedOut.code());
            }
        }
        if let Some((factor, min_insync)) = s.replicas {
            // Each batch is on its in-sync recipients now; fewer than min.insync.replicas
            // copies (followers left the ISR while it waited) is Kafka's
            // NOT_ENOUGH_REPLICAS_AFTER_APPEND — unless the batches reached the bucket.
            let uploaded = self
                .partitions
                .borrow()
                .get(&s.key)
                .is_none_or(|p| p.uploaded_end > s.last_offset);
            // A duplicate's original is on every follower in sync now (it is visible: R3), so
            // the ISR's size is its copies.
            let few = s.sent.iter().any(|sent| self.copies(sent) < min_insync)
                || (!s.duplicate_of.is_empty() && self.in_sync_copies(factor) < min_insync);
            if !uploaded && few {
                return ProduceOutcome::error(ResponseError::NotEnoughReplicasAfterAppend.code());
            }
        }
        let log_start_offset = self
            .partitions
            .borrow()
            .get(&s.key)
            .map(|p| p.log_start())
            .unwrap_or(-1);
        self.stats.produce_ack_wait[s.durability.index()].observe_duration(s.dispatched.elapsed());
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
                p.producers.record((&tag.header).into());
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
        // An object due now (a `durability=object` produce waits for it) starts its upload at
        // once, overlapping the commit the upload loop may be making.
        self.start_due_upload();
        self.writes_done.notify_all();
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
}

impl ShardState {
    /// Seals the pending objects that are due while there is room, with the producers' state
    /// now, and starts their PUTs, which commit them (ARCHITECTURE.md, "Event-driven object
    /// commits").
    pub(super) fn start_due_upload(&self) {
        if let Some(tier) = &self.tier {
            // Several when pending objects reached their size bound while uploads were full.
            while let Some(sealed) = tier.seal_if_due(|| self.producer_snapshot()) {
                tier.start_upload(sealed);
            }
        }
    }
}

pub(super) struct Started {
    /// When its batches were handed to the WAL, and what its acknowledgement waits for.
    pub(super) dispatched: Instant,
    pub(super) durability: Durability,
    /// `durability=replicated` with `acks=all`: (replication factor, `min.insync.replicas`).
    pub(super) replicas: Option<(usize, usize)>,
    /// Where each of its batches went (`durability=replicated`).
    pub(super) sent: Vec<crate::replication::owner::Sent>,
    /// Each batch's WAL ticket, with its producer id and base offset.
    pub(super) tickets: Vec<(WalTicket, i64, i64)>,
    /// A duplicate answered with the original: (producer id, original base offset).
    pub(super) duplicate_of: Vec<(i64, i64)>,
    /// `durability=object`: resolves once the last offset is in a committed object.
    pub(super) uploaded: Option<oneshot::Receiver<()>>,
    /// Until when to wait for `uploaded` or the followers (see [`ProduceItem::ack_timeout`]).
    pub(super) deadline: Option<Instant>,
    pub(super) base_offset: i64,
    /// Answer only once the log is durable through here (covers duplicates' originals).
    pub(super) last_offset: i64,
    pub(super) log_append_time_ms: i64,
    pub(super) key: PartitionKey,
}

/// `wait`'s output, or None if `deadline` passed first.
async fn until<T>(deadline: Option<Instant>, wait: impl Future<Output = T>) -> Option<T> {
    match deadline {
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            ringtail_shards::timeout(left, wait).await
        }
        None => Some(wait.await),
    }
}

/// Resolves once a WAL append is durable (or failed).
pub(super) type WalTicket = oneshot::Receiver<Result<(), WalError>>;
