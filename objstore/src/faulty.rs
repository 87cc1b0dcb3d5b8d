//! Fault injection: wraps a store and makes it slow, throttled, failing or down, at will.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::{Condition, ObjectMeta, ObjectStore, Part, StoreError, StoreResult};

/// What to inject. Rates are per million requests.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// 503 SlowDown.
    pub throttle_ppm: u32,
    /// 500 InternalError.
    pub error_ppm: u32,
    /// Added to every request.
    pub latency: Duration,
    /// While this file exists, every request fails as a connection error would (an outage a
    /// test starts and ends from outside the process).
    pub down_while: Option<std::path::PathBuf>,
    /// While this file exists, every request fails with 403 AccessDenied: a permanent error
    /// (wrong credentials, a missing bucket) that retrying does not cure.
    pub forbidden_while: Option<std::path::PathBuf>,
    /// While this file exists, writes of data objects (keys ending `.rto`) fail as a connection
    /// error would; everything else (leases, manifests, the catalog) works: uploads stall while
    /// the cluster's bookkeeping goes on.
    pub uploads_down_while: Option<std::path::PathBuf>,
}

pub struct Faulty<S> {
    inner: S,
    faults: std::sync::Mutex<Faults>,
    down: AtomicBool,
    rng: AtomicU64,
    injected: AtomicU64,
    timer: Arc<tokio::runtime::Runtime>,
}

impl Faults {
    /// Parses `throttle=0.2,error=0.05,latency-ms=10,down-while=PATH,forbidden-while=PATH,
    /// uploads-down-while=PATH` (rates are fractions of requests).
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut f = Faults::default();
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("fault {item:?} is not key=value"))?;
            let rate = || {
                v.parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .map(|r| (r * 1e6) as u32)
            };
            match k {
                "throttle" => {
                    f.throttle_ppm =
                        rate().ok_or_else(|| format!("throttle={v} is not a fraction"))?
                }
                "error" => {
                    f.error_ppm = rate().ok_or_else(|| format!("error={v} is not a fraction"))?
                }
                "latency-ms" => {
                    f.latency =
                        Duration::from_millis(v.parse().map_err(|_| format!("latency-ms={v}"))?)
                }
                "down-while" => f.down_while = Some(v.into()),
                "forbidden-while" => f.forbidden_while = Some(v.into()),
                "uploads-down-while" => f.uploads_down_while = Some(v.into()),
                _ => {
                    return Err(format!(
                        "unknown fault {k:?} (throttle, error, latency-ms, down-while, forbidden-while, uploads-down-while)"
                    ))
                }
            }
        }
        Ok(f)
    }
}

impl<S: ObjectStore> Faulty<S> {
    pub fn new(inner: S, faults: Faults, seed: u64) -> Faulty<S> {
        let timer = crate::runtime("ringtail-faults", 1).expect("runtime");
        Faulty {
            inner,
            faults: std::sync::Mutex::new(faults),
            down: AtomicBool::new(false),
            rng: AtomicU64::new(seed | 1),
            injected: AtomicU64::new(0),
            timer: Arc::new(timer),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }

    /// While down, every request fails as a connection error would.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn roll(&self) -> u32 {
        // xorshift; a lost update between threads only changes which request fails.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x % 1_000_000) as u32
    }

    /// A write of a data object while `uploads_down_while` exists fails at once.
    fn upload<T: Send + 'static>(
        &self,
        op: &str,
        key: &str,
        real: impl FnOnce() -> BoxFuture<'static, StoreResult<T>>,
    ) -> BoxFuture<'static, StoreResult<T>> {
        let down = key.ends_with(".rto")
            && self
                .faults
                .lock()
                .unwrap()
                .uploads_down_while
                .as_ref()
                .is_some_and(|p| p.exists());
        if down {
            self.injected.fetch_add(1, Ordering::Relaxed);
            let e = StoreError::Transient(format!("{op} {key}: injected upload outage"));
            return Box::pin(async move { Err(e) });
        }
        self.wrap(op, real)
    }

    /// Decides the fault first: a faulted request never reaches the inner store.
    fn wrap<T: Send + 'static>(
        &self,
        op: &str,
        real: impl FnOnce() -> BoxFuture<'static, StoreResult<T>>,
    ) -> BoxFuture<'static, StoreResult<T>> {
        let f = self.faults.lock().unwrap().clone();
        let exists = |p: &Option<std::path::PathBuf>| p.as_ref().is_some_and(|p| p.exists());
        let fault = if self.down.load(Ordering::SeqCst) || exists(&f.down_while) {
            Some(StoreError::Transient(format!(
                "{op}: injected outage (connection refused)"
            )))
        } else if exists(&f.forbidden_while) {
            Some(StoreError::Fatal(format!(
                "{op}: injected 403 AccessDenied"
            )))
        } else {
            let r = self.roll();
            if r < f.throttle_ppm {
                Some(StoreError::Throttled(format!(
                    "{op}: injected 503 SlowDown"
                )))
            } else if r < f.throttle_ppm + f.error_ppm {
                Some(StoreError::Transient(format!(
                    "{op}: injected 500 InternalError"
                )))
            } else {
                None
            }
        };
        if fault.is_some() {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        let timer = self.timer.clone();
        let latency = f.latency;
        let real = if fault.is_none() { Some(real()) } else { None };
        Box::pin(async move {
            if !latency.is_zero() {
                let _ = timer
                    .spawn(async move { tokio::time::sleep(latency).await })
                    .await;
            }
            match (fault, real) {
                (Some(e), _) => Err(e),
                (None, Some(real)) => real.await,
                (None, None) => unreachable!("a request is either faulted or sent"),
            }
        })
    }
}

impl<S: ObjectStore> ObjectStore for Faulty<S> {
    fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> BoxFuture<'static, StoreResult<String>> {
        self.upload("put", key, || self.inner.put(key, body, condition))
    }
    fn put_pieces(
        &self,
        key: &str,
        pieces: Vec<Bytes>,
        condition: Condition,
    ) -> BoxFuture<'static, StoreResult<String>> {
        self.upload("put", key, || self.inner.put_pieces(key, pieces, condition))
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'static, StoreResult<Bytes>> {
        self.wrap("get", || self.inner.get(key, range))
    }
    fn head(&self, key: &str) -> BoxFuture<'static, StoreResult<ObjectMeta>> {
        self.wrap("head", || self.inner.head(key))
    }
    fn list(&self, prefix: &str) -> BoxFuture<'static, StoreResult<Vec<ObjectMeta>>> {
        self.wrap("list", || self.inner.list(prefix))
    }
    fn delete(&self, key: &str) -> BoxFuture<'static, StoreResult<()>> {
        self.wrap("delete", || self.inner.delete(key))
    }
    fn create_multipart(&self, key: &str) -> BoxFuture<'static, StoreResult<String>> {
        self.upload("create_multipart", key, || self.inner.create_multipart(key))
    }
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> BoxFuture<'static, StoreResult<Part>> {
        self.upload("upload_part", key, || {
            self.inner.upload_part(key, upload_id, number, body)
        })
    }
    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<Part>,
    ) -> BoxFuture<'static, StoreResult<String>> {
        self.upload("complete_multipart", key, || {
            self.inner.complete_multipart(key, upload_id, parts)
        })
    }
    fn abort_multipart(&self, key: &str, upload_id: &str) -> BoxFuture<'static, StoreResult<()>> {
        self.wrap("abort_multipart", || {
            self.inner.abort_multipart(key, upload_id)
        })
    }
}
