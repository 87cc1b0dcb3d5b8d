//! The topic catalog's copy in object storage, so that a broker started with an empty data
//! directory and the same bucket finds its topics again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringtail_objstore::{Condition, ObjectStore, StoreError};

use crate::catalog::Catalog;

pub const CATALOG_KEY: &str = "catalog.json";
/// Attempts at pushing one catalog version before giving up (the next change or start retries).
const PUSH_ATTEMPTS_MAX: u32 = 8;

pub struct CatalogMirror {
    store: Arc<dyn ObjectStore>,
    /// Pushes are serialised and each uploads the catalog as it is when it runs, so the last
    /// push always carries the newest catalog. Holds the ETag of the version this broker last
    /// pushed or adopted: a push is conditional on it, so a broker that missed a newer catalog
    /// (a controller that lost its role) cannot overwrite it.
    lock: futures::lock::Mutex<Option<String>>,
}

/// What adopting a newer catalog changed.
#[derive(Debug, Default)]
pub struct Adopted {
    pub dropped: Vec<uuid::Uuid>,
    pub changed: Vec<Arc<crate::catalog::TopicMeta>>,
}

impl CatalogMirror {
    pub fn new(store: Arc<dyn ObjectStore>) -> CatalogMirror {
        CatalogMirror {
            store,
            lock: futures::lock::Mutex::new(None),
        }
    }

    pub async fn push(&self, catalog: &Catalog) -> Result<(), StoreError> {
        let mut known = self.lock.lock().await;
        let body = Bytes::from(catalog.to_json());
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        let condition = match known.clone() {
            Some(etag) => Condition::IfMatch(etag),
            None => Condition::None,
        };
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
                Err(e) if e.is_retryable() && attempt < PUSH_ATTEMPTS_MAX => {
                    tracing::warn!(error = %e, attempt, "catalog push failed; retrying");
                    ringtail_shards::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Adopts the bucket's catalog if it changed since this broker last pushed or adopted it
    /// (cluster mode: only the controller changes topics, every other broker follows).
    pub async fn follow(&self, catalog: &Catalog) -> Result<Option<Adopted>, StoreError> {
        let mut known = self.lock.lock().await;
        let etag = match self.store.head(CATALOG_KEY).await {
            Ok(m) => m.etag,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if known.as_deref() == Some(etag.as_str()) {
            return Ok(None);
        }
        let body = self.store.get(CATALOG_KEY, None).await?;
        let adopted = catalog
            .adopt(&body)
            .map_err(|e| StoreError::Fatal(format!("the bucket's catalog: {e}")))?;
        *known = Some(etag);
        Ok(Some(adopted))
    }

    /// The stored catalog, if any.
    pub async fn fetch(&self) -> Result<Option<Bytes>, StoreError> {
        match self.store.get(CATALOG_KEY, None).await {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
