//! Opening a slot: the partitions rebuilt from the committed objects and the recovered WAL
//! ring, checked against the topic catalog.

use std::collections::HashMap;
use std::sync::Arc;

use ringtail_netio::header::BatchHeader;
use ringtail_wal::Recovery;
use uuid::Uuid;

use crate::catalog::{Snapshot, TopicMeta};
use crate::partition::copy_starts::CopyStarts;
use crate::partition::items::PartitionKey;
use crate::partition::log::PartitionLog;
use crate::partition::producers::Written;
use crate::partition::store::{add, ShardState, WalTag};
use crate::tier::Tier;

use crate::partition::state::Partition;

impl ShardState {
    /// Partitions learn which committed objects hold their older batches, where their logs
    /// start when older data was deleted, their leader epochs and their idempotent producers as
    /// of the last commit (the WAL replay adds what followed).
    pub(super) fn load_committed(&self, tier: &Tier, snapshot: &Snapshot) -> Result<(), String> {
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
        for e in tier.committed_epochs() {
            if let Some(p) = named_partition(parts, snapshot, e.topic_id, e.partition)? {
                p.epochs.note(e.epoch, e.offset);
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

    /// After recovery: logs with only uploaded data continue at the uploaded end, recovered
    /// batches already uploaded leave memory, and the rest queues for upload.
    pub(super) fn settle_recovered(&self) {
        let mut parts = self.partitions.borrow_mut();
        for p in parts.values_mut() {
            if p.log.is_empty_log() && p.uploaded_end > 0 {
                p.log.reset_to(p.uploaded_end);
            }
            p.log.evict_below(p.uploaded_end);
            p.next_offset = p.log_end();
        }
    }

    /// Appends recovered batches to their partitions; returns each live chunk's tags.
    ///
    /// With an object tier, a batch is kept only while it agrees with the bucket: a batch below
    /// the uploaded end is skipped when an object of this broker's holds its offsets, and
    /// counted as superseded when another owner's object does; a batch beyond it must continue
    /// the log. Once one batch of a partition is superseded, the partition's later batches are
    /// too (they followed it). So are batches an owner after this broker's wrote anew, which a
    /// replica copy this take-over adopts holds (`copies`). A discontinuity with no other owner
    /// involved is damage: refuse.
    pub(super) fn rebuild(
        &self,
        r: &Recovery,
        copies: &CopyStarts,
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
                        || copies.supersedes(&key, &header)
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
                        p.producers.record((&header).into());
                        p.epochs
                            .note(header.partition_leader_epoch, header.base_offset);
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
}

/// The partition of a live topic that a manifest entry names, created if new; None for
/// entries of deleted topics (the next deletion pass drops them).
pub(super) fn named_partition<'a>(
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
pub(super) fn known_topic(
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
