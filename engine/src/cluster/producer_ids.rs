//! Producer ids with an object store: handed out from blocks that brokers claim by
//! compare-and-swap on `cluster/producer-ids` (the next unclaimed id), so no two brokers of a
//! cluster, nor a broker restored from the bucket, ever hand out the same id.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ringtail_objstore::{Condition, ObjectStore, StoreError};

use crate::layout::PRODUCER_IDS as KEY;
/// Ids per claim.
pub const BLOCK: i64 = 1000;
const CLAIM_ATTEMPTS_MAX: u32 = 20;

pub struct ProducerIds {
    store: Arc<dyn ObjectStore>,
    /// The block being handed out: [next, end).
    block: futures::lock::Mutex<(i64, i64)>,
    /// The highest claimed end seen in the bucket: every id below was handed out by someone.
    claimed_end: AtomicI64,
}

impl ProducerIds {
    pub fn new(store: Arc<dyn ObjectStore>) -> ProducerIds {
        ProducerIds {
            store,
            block: futures::lock::Mutex::new((0, 0)),
            claimed_end: AtomicI64::new(0),
        }
    }

    async fn read(&self) -> Result<(i64, Option<String>), StoreError> {
        let etag = match self.store.head(KEY).await {
            Ok(m) => m.etag,
            Err(StoreError::NotFound(_)) => return Ok((0, None)),
            Err(e) => return Err(e),
        };
        let body = self.store.get(KEY, None).await?;
        let next = String::from_utf8_lossy(&body)
            .trim()
            .parse()
            .map_err(|e| StoreError::Fatal(format!("{KEY} is not a number: {e}")))?;
        self.claimed_end.fetch_max(next, Ordering::Relaxed);
        Ok((next, Some(etag)))
    }

    /// A new producer id. `floor`: ids below were handed out before blocks existed (the
    /// catalog's counter) and are skipped.
    pub async fn allocate(&self, floor: i64) -> Result<i64, StoreError> {
        let mut block = self.block.lock().await;
        if block.0 >= block.1 {
            *block = self.claim(floor).await?;
        }
        let id = block.0;
        block.0 += 1;
        Ok(id)
    }

    async fn claim(&self, floor: i64) -> Result<(i64, i64), StoreError> {
        for _ in 0..CLAIM_ATTEMPTS_MAX {
            let (next, etag) = self.read().await?;
            let start = next.max(floor);
            let end = start + BLOCK;
            let condition = match etag {
                Some(e) => Condition::IfMatch(e),
                None => Condition::IfNoneMatch,
            };
            match self
                .store
                .put(KEY, Bytes::from(end.to_string()), condition)
                .await
            {
                Ok(_) => {
                    self.claimed_end.fetch_max(end, Ordering::Relaxed);
                    tracing::info!(start, end, "claimed a block of producer ids");
                    return Ok((start, end));
                }
                // Another broker claimed a block meanwhile: read again.
                Err(StoreError::PreconditionFailed(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Fatal(
            "could not claim a block of producer ids (too much contention)".into(),
        ))
    }

    /// Whether some broker handed `id` out (so a producer may bump its epoch).
    pub async fn is_allocated(&self, id: i64) -> Result<bool, StoreError> {
        Ok(id < self.allocated_end(id).await?)
    }

    /// An id below which every id was handed out by some broker, read from the bucket only
    /// when `id` is not below the highest end seen yet: one read answers for all ids <= `id`.
    pub async fn allocated_end(&self, id: i64) -> Result<i64, StoreError> {
        let seen = self.claimed_end.load(Ordering::Relaxed);
        if id < seen {
            return Ok(seen);
        }
        let (next, _) = self.read().await?;
        Ok(next.max(self.claimed_end.load(Ordering::Relaxed)))
    }
}
