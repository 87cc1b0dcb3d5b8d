//! Object-store requests of the whole process, counted by [`Metered`], a wrapper around the
//! store: requests, latency, bytes and errors per operation.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use ringtail_objstore::{Condition, ObjectMeta, ObjectStore, Part, StoreError, StoreResult};
use ringtail_shards::stats::Histogram;

/// Object-store requests of the whole process, by operation (see [`Metered`]).
pub struct StoreMetrics {
    pub(super) ops: Vec<OpStats>,
}

pub(super) struct OpStats {
    pub(super) name: &'static str,
    pub(super) requests: AtomicU64,
    pub(super) latency: Histogram,
    pub(super) bytes: AtomicU64,
    /// By kind: not_found, precondition_failed, throttled, transient, fatal.
    pub(super) errors: [AtomicU64; 5],
}

const OPS: [&str; 9] = [
    "put",
    "get",
    "head",
    "list",
    "delete",
    "create_multipart",
    "upload_part",
    "complete_multipart",
    "abort_multipart",
];
pub(super) const ERROR_KINDS: [&str; 5] = [
    "not_found",
    "precondition_failed",
    "throttled",
    "transient",
    "fatal",
];

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            ops: OPS
                .iter()
                .map(|name| OpStats {
                    name,
                    requests: AtomicU64::new(0),
                    latency: Histogram::latency(),
                    bytes: AtomicU64::new(0),
                    errors: Default::default(),
                })
                .collect(),
        }
    }
}

/// An object store that counts its requests, their latency, bytes and errors (any retryable
/// error — throttled, transient — is followed by a retry of the caller).
pub struct Metered<S> {
    inner: S,
    metrics: Arc<StoreMetrics>,
}

impl<S: ObjectStore> Metered<S> {
    pub fn new(inner: S, metrics: Arc<StoreMetrics>) -> Metered<S> {
        Metered { inner, metrics }
    }

    fn track<T: Send + 'static>(
        &self,
        op: usize,
        bytes_in: u64,
        size_out: fn(&T) -> u64,
        f: BoxFuture<'static, StoreResult<T>>,
    ) -> BoxFuture<'static, StoreResult<T>> {
        let metrics = self.metrics.clone();
        let started = Instant::now();
        Box::pin(async move {
            let result = f.await;
            let o = &metrics.ops[op];
            o.requests.fetch_add(1, Relaxed);
            o.latency.observe_duration(started.elapsed());
            match &result {
                Ok(v) => {
                    o.bytes.fetch_add(bytes_in + size_out(v), Relaxed);
                }
                Err(e) => {
                    let kind = match e {
                        StoreError::NotFound(_) => 0,
                        StoreError::PreconditionFailed(_) => 1,
                        StoreError::Throttled(_) => 2,
                        StoreError::Transient(_) => 3,
                        StoreError::Fatal(_) => 4,
                    };
                    o.errors[kind].fetch_add(1, Relaxed);
                }
            }
            result
        })
    }
}

fn none<T>(_: &T) -> u64 {
    0
}

impl<S: ObjectStore> ObjectStore for Metered<S> {
    fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> BoxFuture<'static, StoreResult<String>> {
        let n = body.len() as u64;
        self.track(0, n, none, self.inner.put(key, body, condition))
    }
    fn put_pieces(
        &self,
        key: &str,
        pieces: Vec<Bytes>,
        condition: Condition,
    ) -> BoxFuture<'static, StoreResult<String>> {
        let n = pieces.iter().map(|p| p.len() as u64).sum();
        self.track(0, n, none, self.inner.put_pieces(key, pieces, condition))
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'static, StoreResult<Bytes>> {
        self.track(1, 0, |b: &Bytes| b.len() as u64, self.inner.get(key, range))
    }
    fn head(&self, key: &str) -> BoxFuture<'static, StoreResult<ObjectMeta>> {
        self.track(2, 0, none, self.inner.head(key))
    }
    fn list(&self, prefix: &str) -> BoxFuture<'static, StoreResult<Vec<ObjectMeta>>> {
        self.track(3, 0, none, self.inner.list(prefix))
    }
    fn delete(&self, key: &str) -> BoxFuture<'static, StoreResult<()>> {
        self.track(4, 0, none, self.inner.delete(key))
    }
    fn create_multipart(&self, key: &str) -> BoxFuture<'static, StoreResult<String>> {
        self.track(5, 0, none, self.inner.create_multipart(key))
    }
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> BoxFuture<'static, StoreResult<Part>> {
        let n = body.len() as u64;
        let f = self.inner.upload_part(key, upload_id, number, body);
        self.track(6, n, none, f)
    }
    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<Part>,
    ) -> BoxFuture<'static, StoreResult<String>> {
        let f = self.inner.complete_multipart(key, upload_id, parts);
        self.track(7, 0, none, f)
    }
    fn abort_multipart(&self, key: &str, upload_id: &str) -> BoxFuture<'static, StoreResult<()>> {
        self.track(8, 0, none, self.inner.abort_multipart(key, upload_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metered_store_counts_requests_bytes_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(StoreMetrics::default());
        let store = Metered::new(
            ringtail_objstore::local::LocalDir::open(dir.path()).unwrap(),
            metrics.clone(),
        );
        futures::executor::block_on(async {
            store
                .put("a", Bytes::from_static(b"hello"), Condition::None)
                .await
                .unwrap();
            assert!(store.get("a", Some(1..3)).await.is_ok());
            assert!(store.get("missing", None).await.is_err());
        });
        let o = |name: &str| metrics.ops.iter().find(|o| o.name == name).unwrap();
        assert_eq!(o("put").requests.load(Relaxed), 1);
        assert_eq!(o("put").bytes.load(Relaxed), 5);
        assert_eq!(o("get").requests.load(Relaxed), 2);
        assert_eq!(o("get").bytes.load(Relaxed), 2);
        assert_eq!(o("get").errors[0].load(Relaxed), 1, "not found");
        assert_eq!(o("get").latency.snapshot().count, 2);
    }
}
