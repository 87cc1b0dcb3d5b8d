//! Object storage for Ringtail.
//!
//! One interface ([`ObjectStore`]) with two backends — S3 and S3-compatible stores
//! ([`s3::S3Store`]) and a local directory ([`local::LocalDir`], the embedded default) — and a
//! fault-injecting wrapper ([`faulty::Faulty`]) for tests.
//!
//! Every operation runs on the store's own small tokio runtime (its own threads) and is returned
//! as a plain boxed future: a glommio shard awaits it without blocking its reactor and without
//! touching tokio itself.
//!
//! Architecture invariant: `objstore` knows no broker: keys and bytes only.

use std::ops::Range;

use bytes::Bytes;
use futures::future::BoxFuture;

pub mod faulty;
pub mod local;
pub mod s3;
pub mod testing;

/// A write precondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    None,
    /// Create only: fail with [`StoreError::PreconditionFailed`] if the key exists.
    IfNoneMatch,
    /// Replace only the version with this ETag.
    IfMatch(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub number: i32,
    pub etag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("object {0:?} not found")]
    NotFound(String),
    #[error("precondition failed for {0:?}")]
    PreconditionFailed(String),
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("transient error: {0}")]
    Transient(String),
    #[error("{0}")]
    Fatal(String),
}

impl StoreError {
    /// Worth retrying with backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Throttled(_) | StoreError::Transient(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An object store. Keys are `/`-separated relative paths (the backend adds its prefix).
pub trait ObjectStore: Send + Sync {
    fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> BoxFuture<'static, StoreResult<String>>;
    /// A PUT of the concatenation of `pieces` (an object sealed from many batches). A backend
    /// that copies the body anyway (the local directory, into its O_DIRECT bounce buffer)
    /// takes the pieces as they are; the default joins them into one body first.
    fn put_pieces(
        &self,
        key: &str,
        pieces: Vec<Bytes>,
        condition: Condition,
    ) -> BoxFuture<'static, StoreResult<String>> {
        self.put(key, join(&pieces), condition)
    }
    /// The whole object, or `range` of it.
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'static, StoreResult<Bytes>>;
    fn head(&self, key: &str) -> BoxFuture<'static, StoreResult<ObjectMeta>>;
    /// Every object under `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> BoxFuture<'static, StoreResult<Vec<ObjectMeta>>>;
    /// Deleting a missing object succeeds.
    fn delete(&self, key: &str) -> BoxFuture<'static, StoreResult<()>>;
    fn create_multipart(&self, key: &str) -> BoxFuture<'static, StoreResult<String>>;
    /// Part numbers start at 1; every part but the last must be at least 5 MiB on S3.
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> BoxFuture<'static, StoreResult<Part>>;
    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<Part>,
    ) -> BoxFuture<'static, StoreResult<String>>;
    fn abort_multipart(&self, key: &str, upload_id: &str) -> BoxFuture<'static, StoreResult<()>>;
}

/// Runs `work` on `rt` and hands back a future any executor can await.
pub(crate) fn on_runtime<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    work: impl std::future::Future<Output = StoreResult<T>> + Send + 'static,
) -> BoxFuture<'static, StoreResult<T>> {
    let handle = rt.spawn(work);
    Box::pin(async move {
        handle
            .await
            .unwrap_or_else(|e| Err(StoreError::Fatal(format!("store task failed: {e}"))))
    })
}

/// A small runtime of its own for a store's I/O.
pub(crate) fn runtime(name: &str, threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .max_blocking_threads(8)
        .thread_name(name)
        .enable_all()
        .build()
}

/// `pieces` as one buffer.
pub fn join(pieces: &[Bytes]) -> Bytes {
    if let [one] = pieces {
        return one.clone();
    }
    let mut whole = bytes::BytesMut::with_capacity(pieces.iter().map(|p| p.len()).sum());
    for p in pieces {
        whole.extend_from_slice(p);
    }
    whole.freeze()
}

/// A shared store is a store.
impl<T: ObjectStore + ?Sized> ObjectStore for std::sync::Arc<T> {
    fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> BoxFuture<'static, StoreResult<String>> {
        (**self).put(key, body, condition)
    }
    fn put_pieces(
        &self,
        key: &str,
        pieces: Vec<Bytes>,
        condition: Condition,
    ) -> BoxFuture<'static, StoreResult<String>> {
        (**self).put_pieces(key, pieces, condition)
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'static, StoreResult<Bytes>> {
        (**self).get(key, range)
    }
    fn head(&self, key: &str) -> BoxFuture<'static, StoreResult<ObjectMeta>> {
        (**self).head(key)
    }
    fn list(&self, prefix: &str) -> BoxFuture<'static, StoreResult<Vec<ObjectMeta>>> {
        (**self).list(prefix)
    }
    fn delete(&self, key: &str) -> BoxFuture<'static, StoreResult<()>> {
        (**self).delete(key)
    }
    fn create_multipart(&self, key: &str) -> BoxFuture<'static, StoreResult<String>> {
        (**self).create_multipart(key)
    }
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> BoxFuture<'static, StoreResult<Part>> {
        (**self).upload_part(key, upload_id, number, body)
    }
    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<Part>,
    ) -> BoxFuture<'static, StoreResult<String>> {
        (**self).complete_multipart(key, upload_id, parts)
    }
    fn abort_multipart(&self, key: &str, upload_id: &str) -> BoxFuture<'static, StoreResult<()>> {
        (**self).abort_multipart(key, upload_id)
    }
}
