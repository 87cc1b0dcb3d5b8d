//! A slot's log of objects: uploads are numbered and written create-only, so that one PUT
//! commits one (ARCHITECTURE.md, "One PUT per acknowledgement", invariants L1–L7). This module
//! reads the log (an opening, a PUT refused because its number is taken) and fences it (an
//! opening); the tier writes it.

use std::sync::Arc;

use ringtail_objstore::{Condition, ObjectStore, StoreError};

use crate::tier::manifest::{CommitError, Committed, ManifestStore, ObjectRef, ShardManifest};
use crate::tier::object_format::{
    decode_index, index_len, index_trailer, ObjectIndex, Stamp, TRAILER_LEN,
};

/// How far past the first missing number an opening's fence sends the log (L3): further than
/// the previous owner's PUTs still under way can reach.
pub const FENCE_GAP: u64 = 16;
const _: () = assert!(FENCE_GAP > super::UPLOADS_IN_FLIGHT_MAX as u64);

/// How much of an object's tail one GET reads for its index (most indexes fit).
const INDEX_READ: u64 = 64 << 10;

/// A request of a take-over that fails with a retryable error is tried again this many times
/// (from 20 ms, doubling) before the whole take-over is (`Tier::open` retries it for a minute):
/// a take-over makes a few requests per unfolded object, and starting over at every 503 would
/// rarely finish on a throttling store.
const STEP_ATTEMPTS: u32 = 6;

/// Runs `op` until it succeeds, fails with an error that is not retryable, or
/// [`STEP_ATTEMPTS`] are made.
async fn retrying<T, F>(mut op: impl FnMut() -> F) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = std::time::Duration::from_millis(20);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if e.is_retryable() && attempt < STEP_ATTEMPTS => {
                ringtail_shards::pause(delay).await;
                delay *= 2;
                attempt += 1;
            }
            out => return out,
        }
    }
}

/// An object of the log, as read back.
#[derive(Debug, Clone)]
pub struct Found {
    pub number: u64,
    pub key: String,
    pub size: u64,
    pub index: ObjectIndex,
}

impl Found {
    /// What the manifest names it by.
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::of(self.key.clone(), self.size, &self.index)
    }
}

/// The index of the object at `key` and its size (None: there is none). A damaged object is
/// [`CommitError::Corrupt`]: a log object is written whole or not at all, so damage is not a
/// torn write but something an operator must look at.
pub async fn read_index_at(
    store: &dyn ObjectStore,
    shard: u32,
    key: &str,
) -> Result<Option<(ObjectIndex, u64)>, CommitError> {
    let size = match retrying(|| store.head(key)).await {
        Ok(m) => m.size,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let corrupt = |reason: String| CommitError::Corrupt {
        shard,
        reason: format!("{key}: {reason}"),
    };
    let tail_len = size.min(INDEX_READ);
    let tail = match retrying(|| store.get(key, Some(size - tail_len..size))).await {
        Ok(b) => b,
        // Deleted between the two requests: as if never there (garbage collection of a number
        // below the manifest's `log_next`, which a later read does not look at).
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if tail.len() as u64 != tail_len || tail.len() < TRAILER_LEN {
        return Err(corrupt(format!("{} bytes read of {size}", tail.len())));
    }
    let at = index_len(&tail[tail.len() - TRAILER_LEN..], size as usize)
        .map_err(|e| corrupt(e.to_string()))?;
    let end = tail.len() - TRAILER_LEN;
    let index = if at.len <= end {
        decode_index(&tail[end - at.len..end], at.format)
    } else {
        let from = size - TRAILER_LEN as u64 - at.len as u64;
        let bytes = retrying(|| store.get(key, Some(from..size - TRAILER_LEN as u64)))
            .await
            .map_err(CommitError::from)?;
        decode_index(&bytes, at.format)
    }
    .map_err(|e| corrupt(e.to_string()))?;
    if index.shard != shard {
        return Err(corrupt(format!("it belongs to slot {}", index.shard)));
    }
    Ok(Some((index, size)))
}

/// What [`read_log`] found: the objects in number order, the fences it passed over, and the
/// first missing number.
#[derive(Debug, Default)]
pub struct LogRead {
    pub found: Vec<Found>,
    pub fences: Vec<u64>,
    pub gap: u64,
}

/// How many numbers of the log [`read_log`] reads at once (a take-over after a crash under load
/// reads up to [`super::UNFOLDED_MAX`] objects, two requests each).
const READ_AHEAD: u64 = 8;

/// Reads the log from number `from` on, passing over fences, up to the first missing number.
/// Reads [`READ_AHEAD`] numbers at once and takes their answers in number order, so the result
/// is what reading one after another would give: every number below the gap was found (a
/// number past it may have been written since; the create-only fence at the gap decides).
pub async fn read_log(
    store: &dyn ObjectStore,
    shard: u32,
    from: u64,
) -> Result<LogRead, CommitError> {
    let mut read = LogRead::default();
    let mut n = from;
    'window: loop {
        let keys: Vec<String> = (n..n + READ_AHEAD)
            .map(|k| crate::layout::log_object(shard, k))
            .collect();
        let answers =
            futures::future::join_all(keys.iter().map(|key| read_index_at(store, shard, key)))
                .await;
        for ((k, key), answer) in (n..).zip(keys).zip(answers) {
            match answer? {
                None => {
                    read.gap = k;
                    return Ok(read);
                }
                Some((index, _)) if index.is_fence() => {
                    if index.resume <= k {
                        return Err(CommitError::Corrupt {
                            shard,
                            reason: format!("{key}: a fence that resumes at {}", index.resume),
                        });
                    }
                    read.fences.push(k);
                    n = index.resume;
                    continue 'window;
                }
                Some((index, size)) => read.found.push(Found {
                    number: k,
                    key,
                    size,
                    index,
                }),
            }
        }
        n += READ_AHEAD;
    }
}

/// A slot taken over ([`take_over`]).
#[derive(Debug)]
pub struct TakenOver {
    pub committed: Committed,
    /// The number of this owner's first upload: past its fence.
    pub resume: u64,
    /// Objects found in the log that the manifest had no room for, in number order: committed
    /// all the same, folded later like this owner's own uploads.
    pub unfolded: Vec<Found>,
}

/// Takes the slot over (L3): reads the manifest and the log's unfolded objects, fences the log
/// at its first missing number, and commits the manifest under the next epoch with those
/// objects folded in (as many as it has room for: the rest stay unfolded, L7) and `log_next`
/// past them. `may_take()` is checked before the fence and before the commit (cluster mode:
/// this broker's claim still holds).
pub async fn take_over(
    manifests: &ManifestStore,
    store: &Arc<dyn ObjectStore>,
    node: i32,
    writer: u64,
    may_take: &dyn Fn() -> bool,
) -> Result<TakenOver, CommitError> {
    let shard = manifests.shard();
    let lapsed = || {
        CommitError::Store(StoreError::Fatal(
            "not taken over: this broker's lease lapsed meanwhile".into(),
        ))
    };
    let current = manifests.load().await?;
    let mut next = match &current {
        Some(c) => c.manifest.clone(),
        None => ShardManifest::empty(shard, 0),
    };
    next.epoch += 1;
    let mut found: Vec<Found> = Vec::new();
    let mut at = next.log_next;
    // A create-only PUT refused while nothing is there yet: a conditional write to that key is
    // still under way (S3 answers 409). Read again after a pause, longer each time.
    let mut contended: Option<(u64, u32)> = None;
    let resume = loop {
        let read = read_log(&**store, shard, at).await?;
        found.extend(read.found);
        // Every fence stays listed (never swept), this opening's own and those of take-overs
        // that wrote one and then failed: a fenced owner may still be retrying at its number.
        next.fences.extend(read.fences);
        let gap = read.gap;
        if let Some((at, n)) = contended.filter(|&(at, _)| at == gap) {
            ringtail_shards::pause(std::time::Duration::from_millis(20 << n.min(8))).await;
            contended = Some((at, n + 1));
        }
        if !may_take() {
            return Err(lapsed());
        }
        let resume = gap + FENCE_GAP;
        let stamp = Stamp {
            shard,
            epoch: next.epoch,
            node,
            writer,
            producers: Vec::new(),
        };
        let fence = index_trailer(&ObjectIndex::fence(stamp, resume));
        let key = crate::layout::log_object(shard, gap);
        // A retried PUT whose first attempt landed meets its own fence: read on from it.
        match retrying(|| store.put(&key, fence.clone(), Condition::IfNoneMatch)).await {
            Ok(_) => {
                next.fences.push(gap);
                break resume;
            }
            // Written meanwhile (the previous owner's PUT won, or our own fence whose answer
            // was lost), or being written: read on from it.
            Err(StoreError::PreconditionFailed(_)) => {
                at = gap;
                contended.get_or_insert((gap, 0));
            }
            Err(e) => return Err(e.into()),
        }
    };
    next.fences.sort_unstable();
    next.fences.dedup();
    // As many of the objects found as the manifest has room for (a refusal writes nothing).
    let mut n = found.len();
    let committed = loop {
        let mut attempt = next.clone();
        attempt
            .objects
            .extend(found[..n].iter().map(Found::object_ref));
        attempt.add_epochs(found[..n].iter().flat_map(|f| &f.index.epochs));
        if n > 0 {
            attempt.producers = found[n - 1].index.producers.clone();
        }
        attempt.log_next = found.get(n).map_or(resume, |f| f.number);
        if !may_take() {
            return Err(lapsed());
        }
        match manifests.commit(current.as_ref(), attempt).await {
            Ok(c) => break c,
            Err(CommitError::TooLarge { .. }) if n > 0 => n /= 2,
            Err(e) => return Err(e),
        }
    };
    let unfolded = found.split_off(n);
    tracing::info!(
        shard,
        epoch = committed.manifest.epoch,
        folded = n,
        unfolded = unfolded.len(),
        resume,
        "fenced the slot's log of objects"
    );
    Ok(TakenOver {
        committed,
        resume,
        unfolded,
    })
}

/// Who holds a log number whose create-only PUT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Nothing is there (yet): a conditional write to it is under way; ask again later.
    Nobody,
    /// This opening's own upload (an earlier attempt whose answer was lost, L2).
    Own,
    /// A fence or another writer's upload: a newer owner fenced this one.
    Other,
}

/// Who holds the log number at `key`, for the writer `writer` whose create-only PUT there was
/// refused.
pub async fn holder(
    store: &dyn ObjectStore,
    shard: u32,
    key: &str,
    writer: u64,
) -> Result<Holder, CommitError> {
    Ok(match read_index_at(store, shard, key).await? {
        None => Holder::Nobody,
        Some((index, _)) if index.writer == writer && !index.is_fence() => Holder::Own,
        Some(_) => Holder::Other,
    })
}
