//! The topic catalog's copy in object storage: the cluster's catalog. A broker started with an
//! empty data directory and the same bucket finds its topics there; every change is written
//! here first, by compare-and-swap on the version this broker last saw (see `catalog.rs`).
//! Knows bytes and ETags only, not what a catalog holds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringtail_objstore::{Condition, ObjectStore, StoreError};

use crate::layout::CATALOG as CATALOG_KEY;
/// Attempts at one write or read before giving up (the caller reports the error).
const ATTEMPTS_MAX: u32 = 8;

pub struct CatalogMirror {
    store: Arc<dyn ObjectStore>,
    /// The ETag of the version this broker last wrote or read (None: none seen; the next write
    /// is create-only). A write is conditional on it, so a broker that missed a newer catalog
    /// cannot overwrite it.
    known: futures::lock::Mutex<Option<String>>,
}

impl CatalogMirror {
    pub fn new(store: Arc<dyn ObjectStore>) -> CatalogMirror {
        CatalogMirror {
            store,
            known: futures::lock::Mutex::new(None),
        }
    }

    /// Writes `body` if the bucket still holds the version last seen here: else
    /// `PreconditionFailed`. A write that landed although its answer was lost (the client
    /// retries it into a 412) is recognised by its body and counts as written.
    pub async fn push(&self, body: Bytes) -> Result<(), StoreError> {
        let mut known = self.known.lock().await;
        let condition = match known.clone() {
            Some(etag) => Condition::IfMatch(etag),
            None => Condition::IfNoneMatch,
        };
        let mut backoff = catalog_backoff();
        loop {
            match self
                .store
                .put(CATALOG_KEY, body.clone(), condition.clone())
                .await
            {
                Ok(etag) => {
                    *known = Some(etag);
                    return Ok(());
                }
                Err(StoreError::PreconditionFailed(why)) => {
                    // Also on a first attempt: the store client may have retried the PUT
                    // itself after its answer was lost.
                    let etag = self.store.head(CATALOG_KEY).await?.etag;
                    if self.store.get(CATALOG_KEY, None).await? == body {
                        *known = Some(etag);
                        return Ok(());
                    }
                    return Err(StoreError::PreconditionFailed(why));
                }
                Err(e) if e.is_retryable() && backoff.may_retry() => {
                    tracing::warn!(error = %e, "catalog write failed; retrying");
                    backoff.wait().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The bucket's catalog if it changed since this broker last wrote or read it.
    pub async fn changed(&self) -> Result<Option<Bytes>, StoreError> {
        let mut known = self.known.lock().await;
        let etag = match self.store.head(CATALOG_KEY).await {
            Ok(m) => m.etag,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if known.as_deref() == Some(etag.as_str()) {
            return Ok(None);
        }
        // The ETag read before the body: if a write lands in between, the next write's
        // compare-and-swap fails and the next read sees the newer version again.
        let body = self.store.get(CATALOG_KEY, None).await?;
        *known = Some(etag);
        Ok(Some(body))
    }

    /// The bucket's catalog, if any (start-up; retryable errors are retried).
    pub async fn read(&self) -> Result<Option<Bytes>, StoreError> {
        let mut backoff = catalog_backoff();
        loop {
            match self.changed_or_current().await {
                Err(e) if e.is_retryable() && backoff.may_retry() => {
                    tracing::warn!(error = %e, "reading the catalog failed; retrying");
                    backoff.wait().await;
                }
                other => return other,
            }
        }
    }

    async fn changed_or_current(&self) -> Result<Option<Bytes>, StoreError> {
        *self.known.lock().await = None;
        self.changed().await
    }
}

/// Catalog reads and writes retry a failing store [`ATTEMPTS_MAX`] times in all, from 100 ms
/// doubling up to 2 s: a controller request is waiting.
fn catalog_backoff() -> ringtail_shards::Backoff {
    ringtail_shards::Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
        .retries(ATTEMPTS_MAX - 1)
}
