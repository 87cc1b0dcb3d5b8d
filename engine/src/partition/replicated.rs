//! The slot's side of the replicated WAL (ARCHITECTURE.md, "Replicated WAL", R1): the batches
//! of `durability=replicated` topics go to the slot's followers as they are appended; a
//! partition's high watermark passes a batch once every in-sync follower has it durable (or it
//! is in the bucket), and the followers hear what the bucket holds, to trim their copies.
//!
//! The batches sent wait in one queue in append order: a prefix of it is visible (replicated
//! or uploaded), and its front leaves once in the bucket.
//!
//! The ISR (R2, kept in memory until take-overs read it: step 3): a follower leaves it when its
//! oldest unacknowledged batch is older than the lag bound, when its link could not hold a
//! batch (it then lacks it), or when placement drops it (its lease lapsed). It joins — or a new
//! follower first joins — once every batch it may lack is in the bucket and it has every batch
//! already visible: from then on no batch becomes visible or acknowledged without it (R3).

use std::collections::HashSet;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use ringtail_netio::header::BatchHeader;
use ringtail_wal::format::EntryMeta;
use uuid::Uuid;

use crate::cluster::replica_sets::ReplicaSet;
use crate::partition::items::PartitionKey;
use crate::partition::state::{wake, Partition, Pending};
use crate::partition::store::{ShardState, WalTag};
use crate::replication::outbound::{Follower, Outbound, OutboundConfig, Outgoing};
use crate::replication::owner::Sent;
use crate::replication::ring::TailEntry;

impl ShardState {
    /// Streams the slot's replicated topics to `followers` from now on (its opening, before it
    /// serves).
    pub fn replicate_to(self: &Rc<Self>, config: OutboundConfig, followers: &[Follower]) {
        let weak: Weak<ShardState> = Rc::downgrade(self);
        let outbound = Outbound::open(config, followers, move || {
            if let Some(state) = weak.upgrade() {
                state.advance_replicated();
            }
        });
        *self.outbound.borrow_mut() = Some(outbound);
    }

    /// The slot's followers (placement order) and those in sync (None: it replicates nothing),
    /// leaving followers among them while they alone hold batches not in the bucket
    /// (`holding`, stream indices). One placement dropped (its lease lapsed) is not: it is not
    /// sent the batches acknowledged since, so it is no successor; its batches are uploaded at
    /// once instead (`sole_holders`), and the followers staying take them over from the bucket.
    fn replica_set(&self, holding: &[usize]) -> Option<ReplicaSet> {
        let outbound = self.outbound.borrow();
        let streams = outbound.as_ref()?.streams();
        let mut placed: Vec<_> = streams
            .streams()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.rank.map(|r| (r, i, s)))
            .collect();
        placed.sort_unstable_by_key(|(r, _, _)| *r);
        Some(ReplicaSet {
            followers: placed.iter().map(|(_, _, s)| s.node).collect(),
            in_sync: placed
                .iter()
                .filter(|(_, i, s)| s.counted() || holding.contains(i))
                .map(|(_, _, s)| (s.node, s.sync_rank))
                .collect(),
        })
    }

    /// The leaving followers that alone hold batches not in the bucket (`Streams::sole_holders`):
    /// still published as in sync, and the upload of those batches asked for now.
    fn sole_holders(&self) -> Vec<usize> {
        let outbound = self.outbound.borrow();
        let Some(outbound) = outbound.as_ref().filter(|o| o.streams().any_leaving()) else {
            return Vec::new();
        };
        let parts = self.partitions.borrow();
        let queue = self.sent_queue.borrow();
        let unuploaded = queue.entries.iter().filter(|e| {
            parts
                .get(&e.key)
                .is_some_and(|p| p.uploaded_end <= e.last_offset)
        });
        let holding = outbound.streams().sole_holders(unuploaded.map(|e| &e.sent));
        if let (false, Some(tier)) = (holding.is_empty(), &self.tier) {
            tier.request_seal();
        }
        holding
    }

    /// In-sync copies a topic of `factor` has now, the owner's included.
    pub(super) fn in_sync_copies(&self, factor: usize) -> usize {
        self.outbound
            .borrow()
            .as_ref()
            .map_or(1, |o| o.in_sync_copies(factor))
    }

    /// Whether an `acks=all` produce to a topic of `factor` and `min_insync` may be appended.
    pub(super) fn may_append_replicated(&self, factor: usize, min_insync: usize) -> bool {
        match self.outbound.borrow().as_ref() {
            Some(o) => o.may_append(factor, min_insync),
            None => min_insync <= 1,
        }
    }

    /// Sends a batch just appended to `p` (queued in the WAL) to its topic's followers; the
    /// partition's high watermark waits for them. Returns where it went.
    pub(super) fn send_replicated(
        &self,
        p: &mut Partition,
        key: PartitionKey,
        header: &BatchHeader,
        bytes: &Bytes,
        factor: usize,
    ) -> Sent {
        let outbound = self.outbound.borrow();
        let Some(outbound) = outbound.as_ref() else {
            return Sent::default();
        };
        let (sent, refused) = outbound.send(
            factor,
            Outgoing {
                topic_id: *key.topic_id.as_bytes(),
                partition: key.partition,
                base_offset: header.base_offset,
                record_count: header.record_count,
                leader_epoch: header.partition_leader_epoch,
                bytes: bytes.clone(),
            },
        );
        if sent.seqs.is_empty() {
            return sent;
        }
        p.awaiting_replicas += 1;
        if p.awaiting_replicas == 1 {
            p.replicated_end = header.base_offset;
        }
        let mut queue = self.sent_queue.borrow_mut();
        queue.entries.push_back(Pending {
            key,
            last_offset: header.last_offset(),
            sent: sent.clone(),
        });
        queue.pushed += 1;
        for i in refused {
            // It lacks this batch: out of the ISR until the bucket has everything sent so far.
            let s = outbound.streams().streams()[i].clone();
            if s.counted() {
                tracing::warn!(
                    slot = outbound.slot(),
                    follower = s.node,
                    "follower leaving the ISR: it lags by more than its link holds"
                );
            }
            outbound.start_leaving(i, true, queue.pushed);
        }
        sent
    }

    /// The copies of `sent` an acknowledgement may count, the owner's included.
    pub(super) fn copies(&self, sent: &Sent) -> usize {
        self.outbound
            .borrow()
            .as_ref()
            .map_or(1, |o| o.copies(sent))
    }

    /// Moves the high watermarks past the batches now on every in-sync follower or in the
    /// bucket (in append order), wakes what waits on them, and tells the followers what the
    /// bucket holds.
    pub(super) fn advance_replicated(&self) {
        let outbound = self.outbound.borrow();
        let Some(outbound) = outbound.as_ref() else {
            return;
        };
        let mut parts = self.partitions.borrow_mut();
        let mut queue = self.sent_queue.borrow_mut();
        let queue = &mut *queue;
        let uploaded = |parts: &std::collections::HashMap<PartitionKey, Partition>, e: &Pending| {
            parts
                .get(&e.key)
                .is_none_or(|p| p.uploaded_end > e.last_offset)
        };
        while let Some(e) = queue.entries.get(queue.visible) {
            if !(uploaded(&parts, e) || outbound.on_in_sync(&e.sent)) {
                break;
            }
            if let Some(p) = parts.get_mut(&e.key) {
                p.awaiting_replicas -= 1;
                p.replicated_end = if p.awaiting_replicas == 0 {
                    i64::MAX
                } else {
                    e.last_offset + 1
                };
                wake(p.waiters.drain(..));
            }
            queue.visible += 1;
        }
        let mut committed: Option<Sent> = None;
        while queue.visible > 0 && queue.entries.front().is_some_and(|e| uploaded(&parts, e)) {
            let e = queue.entries.pop_front().expect("front exists");
            queue.visible -= 1;
            queue.popped += 1;
            let upto = committed.get_or_insert_with(Sent::default);
            for (i, seq) in e.sent.seqs {
                match upto.seqs.iter_mut().find(|(j, _)| *j == i) {
                    Some((_, s)) => *s = (*s).max(seq),
                    None => upto.seqs.push((i, seq)),
                }
            }
        }
        if let Some(upto) = committed {
            outbound.committed(&upto);
        }
    }

    /// The ISR's rules, at a regular tick: `followers` is placement's choice now, `lag_max`
    /// how long a follower may go without having everything it was sent and stay in sync,
    /// `in_lease` the ISR the owner's lease carries now. Returns the followers and ISR to
    /// publish; followers leaving it stop being waited for once the lease carries that.
    pub fn check_isr(
        &self,
        followers: &[Follower],
        lag_max: Duration,
        in_lease: Option<&ReplicaSet>,
    ) -> Option<ReplicaSet> {
        {
            let outbound = self.outbound.borrow();
            let outbound = outbound.as_ref()?;
            let queue = self.sent_queue.borrow();
            outbound.place(followers, queue.pushed);
            outbound.settle_ranks(queue.popped);
            outbound.published(in_lease.map_or(&[][..], |set| &set.in_sync[..]));
            let count = outbound.streams().streams().len();
            for i in 0..count {
                let s = outbound.streams().streams()[i].clone();
                if outbound.lost_copy(i) && !s.restart {
                    if s.counted() {
                        tracing::warn!(slot = outbound.slot(), follower = s.node, "follower lost its copy (it restarted empty): leaving the ISR, to be streamed to anew");
                    }
                    outbound.start_leaving(i, true, queue.pushed);
                    continue;
                }
                if s.in_sync {
                    if outbound.lagging(i, lag_max) {
                        tracing::warn!(slot = outbound.slot(), follower = s.node, lag_ms = lag_max.as_millis() as u64, error = ?outbound.last_error(i), "follower leaving the ISR: it has not had everything it was sent for longer than the lag bound");
                        outbound.start_leaving(i, false, queue.pushed);
                    }
                    continue;
                }
                // Joins once it takes its stream, every batch it may lack is in the bucket,
                // and it has every batch of its stream already visible.
                let has_visible = queue
                    .entries
                    .iter()
                    .take(queue.visible)
                    .filter_map(|e| e.sent.seqs.iter().find(|(j, _)| *j == i))
                    .all(|&(_, seq)| seq <= s.acked_seq);
                if s.rank.is_some()
                    && queue.popped >= s.join_mark
                    && outbound.is_streaming(i)
                    && has_visible
                {
                    tracing::info!(
                        slot = outbound.slot(),
                        follower = s.node,
                        "follower joined the ISR"
                    );
                    outbound.join(i);
                }
            }
        }
        let holding = self.sole_holders();
        let publish = self.replica_set(&holding)?;
        let left = {
            let outbound = self.outbound.borrow();
            let outbound = outbound.as_ref()?;
            // Once the lease says they are out (none still published as the only holder of a
            // batch), no successor picks them and nothing waits for them.
            let left = outbound.streams().any_leaving()
                && holding.is_empty()
                && in_lease == Some(&publish);
            if left {
                tracing::warn!(slot = outbound.slot(), isr = ?publish.in_sync, "followers left the ISR (the lease says so)");
                outbound.leave(self.sent_queue.borrow().pushed);
            }
            left
        };
        if left {
            // Batches that waited for a follower that left may be visible now.
            self.advance_replicated();
        }
        Some(publish)
    }

    /// A take-over's recovery from this broker's replica ring (R4): the replaced owner's batches
    /// that continue their partitions where this opening left them (the bucket's end, or this
    /// broker's own WAL) are appended again at their offsets, keeping their epoch and their
    /// producers' sequences (a retry of one is a duplicate); resolves once they are durable
    /// (then [`ShardState::upload_all`] puts them in the bucket). A batch past a gap in its
    /// partition (a copy that missed batches, which were to be in the bucket) stops that
    /// partition there, logged.
    pub async fn adopt_replica_tail(&self, slot: u32, tail: Vec<TailEntry>) -> Result<(), String> {
        if tail.is_empty() {
            return Ok(());
        }
        let snapshot = self.catalog.snapshot();
        let mut tickets = Vec::new();
        let (mut batches, mut records) = (0usize, 0i64);
        {
            let wal = self.wal.borrow();
            let wal = wal
                .as_ref()
                .expect("the WAL is open before the tail is adopted");
            let mut parts = self.partitions.borrow_mut();
            let mut stopped: HashSet<PartitionKey> = HashSet::new();
            for e in tail {
                let key = PartitionKey {
                    topic_id: Uuid::from_bytes(e.topic_id),
                    partition: e.partition,
                };
                let Some(topic) = snapshot
                    .by_id(&key.topic_id)
                    .filter(|t| key.partition < t.partitions)
                else {
                    continue; // deleted meanwhile
                };
                let header = BatchHeader::parse(&e.bytes)
                    .map_err(|err| format!("replica ring entry {}: {err}", e.seq))?;
                let p = parts
                    .entry(key)
                    .or_insert_with(|| Partition::new(topic.clone()));
                if stopped.contains(&key) || header.base_offset < p.next_offset {
                    continue; // in the bucket or this broker's WAL already
                }
                if p.epochs
                    .latest()
                    .is_some_and(|e| header.partition_leader_epoch < e)
                {
                    // A newer owner wrote this partition since: the copy is stale here.
                    stopped.insert(key);
                    continue;
                }
                if header.base_offset > p.next_offset {
                    tracing::error!(slot, topic = %topic.name, partition = key.partition, at = p.next_offset, next_copied = header.base_offset, "the replica copy misses batches of this partition: it is recovered up to the gap");
                    stopped.insert(key);
                    continue;
                }
                let meta = EntryMeta {
                    stream_id: e.topic_id,
                    stream_index: e.partition,
                    base_offset: header.base_offset,
                    record_count: header.record_count,
                    leader_epoch: header.partition_leader_epoch,
                };
                let tag = WalTag {
                    key,
                    header,
                    bytes: e.bytes.clone(),
                    superseded: false,
                };
                let ticket = wal
                    .append(meta, e.bytes, tag)
                    .map_err(|err| format!("re-appending the replica tail: {err}"))?;
                tickets.push(ticket);
                p.next_offset = header.last_offset() + 1;
                p.producers.start((&header).into());
                p.epochs
                    .note(header.partition_leader_epoch, header.base_offset);
                batches += 1;
                records += header.record_count as i64;
            }
        }
        for t in tickets {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(format!("re-appending the replica tail: {err}")),
                Err(_) => return Err("re-appending the replica tail: the WAL closed".into()),
            }
        }
        tracing::info!(slot, batches, records, "recovered the replaced owner's tail from this broker's replica ring: re-appended at its offsets");
        Ok(())
    }

    /// Uploads everything the slot holds that is not in the bucket, and resolves once it is
    /// committed: an opening that streams to followers does so before it takes a write, since
    /// its followers start the new epoch empty — a successor recovers this epoch's stream
    /// alone, so the tail this opening recovered (its own WAL's, a replica ring's) must be in
    /// the bucket first.
    pub async fn upload_all(&self, slot: u32) -> Result<(), String> {
        let mut uploads = Vec::new();
        for (key, p) in self.partitions.borrow_mut().iter_mut() {
            if p.next_offset > p.uploaded_end {
                let (tx, rx) = oneshot::channel();
                p.upload_waiters.push((p.next_offset - 1, tx));
                uploads.push((*key, p.next_offset - p.uploaded_end, rx));
            }
        }
        if uploads.is_empty() {
            return Ok(());
        }
        if let Some(tier) = &self.tier {
            tier.request_seal();
        }
        let records: i64 = uploads.iter().map(|(_, n, _)| n).sum();
        for (key, _, rx) in uploads {
            if rx.await.is_err() {
                return Err(format!(
                    "the recovered tail of partition {} was not uploaded (the slot was fenced)",
                    key.partition
                ));
            }
        }
        tracing::info!(
            slot,
            records,
            "uploaded the recovered tail before taking writes"
        );
        Ok(())
    }
}
