//! The uploader's merges: small committed objects read back, merged into one object and
//! committed in their place (the plan is [`super::merge`]'s), and the replaced objects deleted
//! once no reader can still be on them.

use std::time::Instant;

use futures::StreamExt;

use ringtail_objstore::{ObjectStore, StoreError};

use crate::tier::manifest::{CommitError, ObjectRef};
use crate::tier::object_format::{index_trailer, ObjectIndex, Span, INDEX_FORMAT_VERSION};
use crate::tier::{merge, put_object, Tier};

/// A merge read and uploaded, waiting for its commit.
pub struct PreparedMerge {
    run: Vec<ObjectRef>,
    merged: ObjectRef,
    started: Instant,
}

/// Where the slot's merge is.
pub(super) enum MergeState {
    Idle,
    Preparing,
    /// Prepared (None: nothing to merge, or given up), for the upload loop to commit.
    Ready(Option<PreparedMerge>),
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
    /// their live bytes (ranged GETs, [`merge::MERGE_GETS_IN_FLIGHT`] at a time), uploads the
    /// merged object under the epoch's next object key, and commits the manifest with the run
    /// replaced — one conditional put, fenced like every commit. The replaced objects are
    /// deleted [`merge::MERGE_RETIRE_DELAY`] later. `Ok(None)`: nothing to merge, the store
    /// failed (given up at once, through `store_failed`: the next interval plans it again), or
    /// it gave way ([`Tier::merge_yields`], checked before each GET and before the PUT); an
    /// error only when this shard was fenced. Runs on the uploader's task, so its commit never
    /// races an upload's commit or a deletion pass (uploads' PUTs may be under way meanwhile).
    pub async fn merge(&self) -> Result<Option<Merged>, CommitError> {
        match self.prepare_merge().await {
            Some(prepared) => self.commit_merge(prepared).await,
            None => Ok(None),
        }
    }

    /// A merge's reads and its PUT, without its commit ([`Tier::merge`]); None: nothing to
    /// merge, given up or gave way. Runs off the upload loop ([`Tier::start_merge`]).
    pub async fn prepare_merge(&self) -> Option<PreparedMerge> {
        // Also while a fold is refused for the manifest's size: a merge only shrinks it, and
        // without retention it is what makes room.
        if self.merge_yields().is_some() {
            return None;
        }
        let (run, epoch) = {
            let c = self.committed.borrow();
            let r = merge::plan_merge(&c.manifest.objects)?;
            (c.manifest.objects[r].to_vec(), c.manifest.epoch)
        };
        let layout = merge::layout(&run);
        // The run's live bytes, [`merge::MERGE_GETS_IN_FLIGHT`] GETs at a time, in run order
        // (one GET after another made a merge of 64 small objects on S3 hold the uploader, and
        // the producers waiting for it, for 64 round trips).
        let gets = run.iter().map(|o| {
            let extent = merge::live_extent(o);
            assert!(o
                .spans
                .iter()
                .all(|s| s.byte_start >= extent.start && s.byte_start + s.byte_len <= extent.end));
            let why = self.merge_yields();
            let get = why
                .is_none()
                .then(|| self.store.get(&o.key, Some(extent.clone())));
            async move {
                match get {
                    Some(get) => (o, extent, Ok(get.await)),
                    None => (o, extent, Err(why.unwrap_or_default())),
                }
            }
        });
        let mut gets = futures::stream::iter(gets).buffered(merge::MERGE_GETS_IN_FLIGHT);
        let mut bodies = Vec::with_capacity(run.len());
        while let Some((o, extent, got)) = gets.next().await {
            match got {
                Err(why) => {
                    tracing::debug!(why, "merge abandoned");
                    return None;
                }
                Ok(Ok(body)) if body.len() as u64 == extent.end - extent.start => {
                    bodies.push((extent.start, body))
                }
                Ok(Ok(body)) => {
                    tracing::warn!(key = %o.key, got = body.len(), wanted = ?extent, "merge: short read; not merged");
                    return None;
                }
                Ok(Err(e)) => {
                    tracing::warn!(key = %o.key, error = %e, "merge: reading an object failed; retrying later");
                    return None;
                }
            }
        }
        drop(gets);
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
            // The run's writer: the WAL-replay rule "own object or another node's" holds.
            node: run[0].node,
            writer: 0,
            producers: Vec::new(),
            resume: 0,
            // The manifest holds the partitions' epochs; a merged object is never folded.
            epochs: Vec::new(),
        };
        pieces.push(index_trailer(&index));
        let size: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        let t = Instant::now();
        if let Some(why) = self.merge_yields() {
            tracing::debug!(why, "merge abandoned before its upload");
            return None;
        }
        let key = self.next_object_key(epoch);
        // Never retried: a failed merge is given up (the next interval plans it again), so
        // uploads, a hand-over's flush and shutdown never wait behind it. What the PUT may have
        // left under `key` (a key no other object of this epoch takes) is never committed:
        // garbage collection deletes it.
        if let Err(e) = put_object(self.store.clone(), key.clone(), pieces).await {
            self.store_failed(&format!("upload merged {key}"), &e, merge::MERGE_INTERVAL);
            self.garbage.borrow_mut().push(key);
            return None;
        }
        Some(PreparedMerge {
            run,
            merged: ObjectRef::of(key, size, &index),
            started: t,
        })
    }

    /// Commits a prepared merge: the manifest with its run replaced by the merged object, if
    /// the run is still there as it was read (a deletion pass may have changed it meanwhile:
    /// then the merged object is garbage), and the merge need not give way (see
    /// [`Tier::merge_yields`]). An error only when this shard was fenced.
    pub async fn commit_merge(&self, p: PreparedMerge) -> Result<Option<Merged>, CommitError> {
        // A flush (hand-over, shutdown) that began while the merge ran wins: its object is left
        // uncommitted (collected at the next start) rather than hold the hand-over up.
        if let Some(why) = self.merge_yields() {
            tracing::debug!(why, "merge abandoned before its commit");
            return Ok(None);
        }
        let PreparedMerge {
            run,
            merged,
            started: t,
        } = p;
        let key = merged.key.clone();
        let size = merged.size;
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
                // A deletion pass changed the run while the merge read it: the merged object
                // is never committed, so it is garbage.
                tracing::info!(%key, "merge: the run changed before its commit; not merged");
                self.garbage.borrow_mut().push(key);
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
                    // A merge only shrinks the manifest; never loop on it. Nothing was written.
                    tracing::error!(error = %e, "manifest commit (merge) refused");
                    self.garbage.borrow_mut().push(key);
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
    /// objects. Then a merge starts after every upload (without it steady `durability=object`
    /// traffic starves merging and the manifest grows by an object per produce).
    pub fn merge_behind(&self) -> bool {
        self.committed.borrow().manifest.objects.len() > merge::MERGE_BACKLOG_OBJECTS
    }

    /// Why a merge must give way now, if it must: the slot is fenced, flushing for a hand-over
    /// or shutdown, or its upload loop ended. (It no longer gives way to waiting producers: it
    /// reads and writes off the upload loop, which only commits it.)
    fn merge_yields(&self) -> Option<&'static str> {
        if self.fenced.get() {
            Some("fenced")
        } else if self.flushing.get() {
            Some("flushing")
        } else if self.stopped.get() {
            Some("stopped")
        } else {
            None
        }
    }

    /// Starts preparing a merge on its own task ([`Tier::prepare_merge`]); the upload loop
    /// commits it once ready ([`Tier::finish_merge`]), so uploads and their commits go on
    /// meanwhile. At most one at a time.
    pub fn start_merge(self: &std::rc::Rc<Self>) {
        *self.merging.borrow_mut() = MergeState::Preparing;
        let tier = self.clone();
        ringtail_shards::spawn_detached(async move {
            let mut prepared = tier.prepare_merge().await;
            if let Some(p) = prepared.take_if(|_| tier.fenced.get() || tier.stopped.get()) {
                // Nothing will commit it.
                let _ = tier.store.delete(&p.merged.key).await;
            }
            *tier.merging.borrow_mut() = MergeState::Ready(prepared);
            tier.poke();
        });
    }

    /// Whether a merge is being prepared or waits for its commit.
    pub fn merge_running(&self) -> bool {
        !matches!(*self.merging.borrow(), MergeState::Idle)
    }

    /// Whether a prepared merge waits for its commit.
    pub(super) fn merge_ready(&self) -> bool {
        matches!(*self.merging.borrow(), MergeState::Ready(_))
    }

    /// Commits the merge [`Tier::start_merge`] prepared, if it is ready.
    pub async fn finish_merge(&self) -> Result<Option<Merged>, CommitError> {
        if !self.merge_ready() {
            return Ok(None);
        }
        let MergeState::Ready(prepared) = self.merging.replace(MergeState::Idle) else {
            unreachable!()
        };
        match prepared {
            Some(p) => self.commit_merge(p).await,
            None => Ok(None),
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
