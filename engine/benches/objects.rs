//! Object tier benchmark: prints figures, asserts nothing.
//!
//! Upload path (seal → PUT/multipart → fenced manifest commit) and cold replay (one ranged GET
//! per partition span), each against a baseline measured in the same run on the same store:
//! raw PUTs of the same object sizes, and raw whole-object GETs.
//!
//! `cargo bench -p ringtail-engine --bench objects -- [MB]` — local directory always; SeaweedFS
//! too when `weed` is installed (scripts/test.sh puts it in .venv).

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use kafka_protocol::records::Compression;
use ringtail_engine::metrics::ShardStats;
use ringtail_engine::partition::reads::READ_AHEAD_SPANS;
use ringtail_engine::tier::object_format::Span;
use ringtail_engine::tier::span_cache::SpanCache;
use ringtail_engine::tier::Tier;
use ringtail_netio::batch::split_and_validate;
use ringtail_objstore::local::LocalDir;
use ringtail_objstore::{Condition, ObjectMeta, ObjectStore, Part, StoreResult};

/// Counts requests by kind.
struct Counting<S> {
    inner: S,
    puts: AtomicU64,
    gets: AtomicU64,
}

impl<S: ObjectStore> ObjectStore for Counting<S> {
    fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> BoxFuture<'static, StoreResult<String>> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.inner.put(key, body, condition)
    }
    fn get(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> BoxFuture<'static, StoreResult<Bytes>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key, range)
    }
    fn head(&self, key: &str) -> BoxFuture<'static, StoreResult<ObjectMeta>> {
        self.inner.head(key)
    }
    fn list(&self, prefix: &str) -> BoxFuture<'static, StoreResult<Vec<ObjectMeta>>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> BoxFuture<'static, StoreResult<()>> {
        self.inner.delete(key)
    }
    fn create_multipart(&self, key: &str) -> BoxFuture<'static, StoreResult<String>> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.inner.create_multipart(key)
    }
    fn upload_part(
        &self,
        key: &str,
        id: &str,
        n: i32,
        body: Bytes,
    ) -> BoxFuture<'static, StoreResult<Part>> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.inner.upload_part(key, id, n, body)
    }
    fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        parts: Vec<Part>,
    ) -> BoxFuture<'static, StoreResult<String>> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.inner.complete_multipart(key, id, parts)
    }
    fn abort_multipart(&self, key: &str, id: &str) -> BoxFuture<'static, StoreResult<()>> {
        self.inner.abort_multipart(key, id)
    }
}

/// A 16 KiB batch of 1 KiB records at `base`.
fn batch(base: i64) -> (ringtail_netio::header::BatchHeader, Bytes) {
    let values = (0..16).map(|_| Some(Bytes::from(vec![(base % 251) as u8; 1000])));
    let buf =
        ringtail_netio::batch::testing::encode(values, 1_800_000_000_000 + base, Compression::None);
    split_and_validate(buf, 1 << 20)
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .assign(base, 0)
}

async fn run(label: &str, store: Arc<Counting<Arc<dyn ObjectStore>>>, total_mb: usize) {
    let object_bytes = 8 << 20;
    let stats = Arc::new(ShardStats::new(0));
    let tier = Tier::open(
        store.clone(),
        0,
        0,
        object_bytes,
        Duration::from_secs(3600),
        stats,
        &|| true,
    )
    .await
    .unwrap();
    let partitions = 8;
    let (_, sample) = batch(0);
    let batches_total = total_mb * (1 << 20) / sample.len();
    let mut next = vec![0i64; partitions];
    let mut commit_ms = Histogram::<u64>::new(3).unwrap();
    let puts_before = store.puts.load(Ordering::Relaxed);
    let mut uploaded = 0u64;
    let mut spans_all = Vec::new();
    let start = Instant::now();
    for i in 0..batches_total {
        let p = i % partitions;
        let (h, b) = batch(next[p]);
        next[p] = h.last_offset() + 1;
        tier.add([7; 16], p as i32, h, b);
        if let Some(sealed) = tier.seal_if_due(Vec::new) {
            let key = sealed.key.clone();
            let t = Instant::now();
            let spans = tier.upload(sealed).await.unwrap();
            commit_ms
                .record(t.elapsed().as_millis().max(1) as u64)
                .unwrap();
            uploaded += spans.iter().map(|s| s.byte_len).sum::<u64>();
            spans_all.extend(spans.into_iter().map(|s| (key.clone(), s)));
        }
    }
    let up_secs = start.elapsed().as_secs_f64();
    let puts = store.puts.load(Ordering::Relaxed) - puts_before;
    // Baseline: raw PUTs of the same object size.
    let body = Bytes::from(vec![1u8; object_bytes as usize]);
    let n = (uploaded / object_bytes).max(1);
    let t = Instant::now();
    for i in 0..n {
        store
            .inner
            .put(&format!("raw/{i}"), body.clone(), Condition::None)
            .await
            .unwrap();
    }
    let raw_up_secs = t.elapsed().as_secs_f64();
    // Cold replay: one ranged GET per span, vs whole-object GETs of the same objects.
    let t = Instant::now();
    let mut replayed = 0u64;
    for (key, s) in &spans_all {
        replayed += store
            .get(key, Some(s.byte_start..s.byte_start + s.byte_len))
            .await
            .unwrap()
            .len() as u64;
    }
    let replay_secs = t.elapsed().as_secs_f64();
    // A sequential consumer per partition, through the span cache: without and with read-ahead.
    let mut by_partition: Vec<Vec<(Arc<str>, Span)>> = vec![Vec::new(); partitions];
    for (key, s) in &spans_all {
        by_partition[s.partition as usize].push((key.as_str().into(), s.clone()));
    }
    let sequential = |ahead: usize| {
        let cache = Rc::new(SpanCache::new(Arc::new(ShardStats::new(0))));
        let store: Arc<dyn ObjectStore> = store.clone();
        let by_partition = by_partition.clone();
        async move {
            let t = Instant::now();
            let mut bytes = 0u64;
            for spans in &by_partition {
                for (i, (key, span)) in spans.iter().enumerate() {
                    for (k, s) in spans.iter().skip(i + 1).take(ahead) {
                        if let Some(read) = cache.prefetch(store.as_ref(), k, s) {
                            ringtail_shards::spawn_detached(read);
                        }
                    }
                    bytes += cache.get(store.as_ref(), key, span).await.unwrap().len() as u64;
                }
            }
            bytes as f64 / t.elapsed().as_secs_f64() / 1e6
        }
    };
    let plain_mbs = sequential(0).await;
    let ahead_mbs = sequential(READ_AHEAD_SPANS).await;
    let mut keys: Vec<&String> = spans_all.iter().map(|(k, _)| k).collect();
    keys.dedup();
    let t = Instant::now();
    let mut raw_got = 0u64;
    for k in &keys {
        raw_got += store.inner.get(k, None).await.unwrap().len() as u64;
    }
    let raw_get_secs = t.elapsed().as_secs_f64();
    let mb = |b: u64, s: f64| b as f64 / s / 1e6;
    println!(
        "| {label} | {:.0} | {:.0} | {:.2} | {:.1} | {} / {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
        mb(uploaded, up_secs),
        mb(n * object_bytes, raw_up_secs),
        mb(uploaded, up_secs) / mb(n * object_bytes, raw_up_secs),
        puts as f64 / (uploaded as f64 / (1u64 << 30) as f64),
        commit_ms.value_at_quantile(0.5),
        commit_ms.value_at_quantile(0.99),
        mb(replayed, replay_secs),
        plain_mbs,
        ahead_mbs,
        mb(raw_got, raw_get_secs),
        ahead_mbs / mb(raw_got, raw_get_secs),
    );
}

fn main() {
    let total_mb: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    println!("Object tier bench: {total_mb} MB of 16 KiB batches over 8 partitions, 8 MiB objects");
    println!("| store | upload MB/s | raw PUT MB/s | ratio | PUTs per GiB | commit ms p50 / p99 | cold replay MB/s (span by span) | sequential consumer, no read-ahead | sequential consumer, read-ahead 4 | raw GET MB/s | read-ahead / raw GET |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn ObjectStore> = Arc::new(LocalDir::open(dir.path()).unwrap());
    let local = Arc::new(Counting {
        inner: local,
        puts: AtomicU64::new(0),
        gets: AtomicU64::new(0),
    });
    ringtail_shards::block_on(16 << 20, move || async move {
        run("local directory", local, total_mb).await
    })
    .unwrap();
    let weed_available =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/weed"))
            .arg("version")
            .output()
            .is_ok();
    if weed_available {
        let weed = ringtail_objstore::testing::Seaweed::start();
        let s3: Arc<dyn ObjectStore> = Arc::new(weed.ready_store("bench/"));
        let s3 = Arc::new(Counting {
            inner: s3,
            puts: AtomicU64::new(0),
            gets: AtomicU64::new(0),
        });
        ringtail_shards::block_on(16 << 20, move || async move {
            run("SeaweedFS (S3, loopback)", s3, total_mb).await
        })
        .unwrap();
        drop(weed);
    }
}
