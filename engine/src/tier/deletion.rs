//! Deleting data from the tier: retention and DeleteRecords commit new log starts and drop
//! spans from the manifest (then delete objects left without any), and garbage collection
//! deletes what no committed manifest references.

use std::collections::HashMap;

use ringtail_objstore::{ObjectStore, StoreError};

use crate::tier::manifest::{CommitError, LogStart, ObjectRef, ProducerSnapshot};
use crate::tier::object_format::{Span, StreamKey};
use crate::tier::{store_backoff, Tier};

impl Tier {
    /// Deletes objects that no committed manifest references and none ever will. With `sweep`
    /// (at start) it lists the shard's objects and deletes those the manifest does not name
    /// and no writer can commit any more:
    /// * merged objects written under an older epoch: merges of an owner that crashed or was
    ///   fenced before committing, and deletes that failed before a restart (an older epoch's
    ///   writer can never commit again: taking over changed the manifest under it; objects of
    ///   the current epoch are never swept, one may be uploading right now);
    /// * log objects numbered below the manifest's `log_next` (L5): an old owner's PUTs that
    ///   landed past a fence, uploads merged away whose delete failed — never a fence (the
    ///   manifest lists them). From `log_next` on they are this owner's, committed or under
    ///   way.
    ///
    /// Always retries the deletes that failed since. Returns how many objects it deleted.
    pub async fn collect_garbage(&self, sweep: bool) -> usize {
        let mut keys = std::mem::take(&mut *self.garbage.borrow_mut());
        if sweep {
            let (epoch, log_next, referenced): (u64, u64, std::collections::HashSet<String>) = {
                let c = self.committed.borrow();
                let fences = c
                    .manifest
                    .fences
                    .iter()
                    .map(|&n| crate::layout::log_object(self.shard, n));
                (
                    c.manifest.epoch,
                    c.manifest.log_next,
                    // Objects a merge replaced wait for their readers (`Tier::delete_retired`).
                    c.manifest
                        .objects
                        .iter()
                        .map(|o| o.key.clone())
                        .chain(self.retired.borrow().iter().map(|(_, k)| k.clone()))
                        .chain(fences)
                        .collect(),
                )
            };
            for prefix in [
                crate::layout::objects(self.shard),
                crate::layout::log_objects(self.shard),
            ] {
                match self.store.list(&prefix).await {
                    Ok(objects) => {
                        keys.extend(objects.into_iter().map(|o| o.key).filter(|k| {
                            !referenced.contains(k)
                                && (crate::layout::object_epoch(k).is_some_and(|e| e < epoch)
                                    || crate::layout::log_number(k).is_some_and(|n| n < log_next))
                        }));
                    }
                    Err(e) => {
                        tracing::warn!(shard = self.shard, error = %e, "listing objects for garbage collection failed; the next start retries")
                    }
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
            next.trim_epochs(&merged, &live);
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
