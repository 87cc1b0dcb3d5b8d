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
    /// push always carries the newest catalog.
    lock: futures::lock::Mutex<()>,
}

impl CatalogMirror {
    pub fn new(store: Arc<dyn ObjectStore>) -> CatalogMirror {
        CatalogMirror {
            store,
            lock: futures::lock::Mutex::new(()),
        }
    }

    pub async fn push(&self, catalog: &Catalog) -> Result<(), StoreError> {
        let _guard = self.lock.lock().await;
        let body = Bytes::from(catalog.to_json());
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self
                .store
                .put(CATALOG_KEY, body.clone(), Condition::None)
                .await
            {
                Ok(_) => return Ok(()),
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

    /// The stored catalog, if any.
    pub async fn fetch(&self) -> Result<Option<Bytes>, StoreError> {
        match self.store.get(CATALOG_KEY, None).await {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
