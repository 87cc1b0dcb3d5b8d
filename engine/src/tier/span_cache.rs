//! A shard's cache of partition spans read from committed objects: a consumer replaying a span
//! fetch by fetch reads it from the store once, and concurrent readers of the same span share
//! one GET. Bounded by bytes; least recently used spans leave first. There is one per slot (a
//! shard hosting several slots has several); they count together in the shard's
//! [`SpanCacheStats`] (`ringtail_span_cache_*`).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use ringtail_objstore::{ObjectStore, StoreError};

use crate::metrics::{ShardStats, SpanCacheStats};
use crate::tier::object_format::Span;

/// Spans held per shard at most, in bytes.
pub const SPAN_CACHE_BYTES_MAX: usize = 64 << 20;
/// Read-ahead GETs under way per shard at most, in number and in bytes: many cold consumers
/// (or one fetch naming many partitions) must not start GETs without bound. Beyond either,
/// read-ahead waits for the fetches themselves.
pub const READ_AHEAD_GETS_MAX: usize = 16;
pub const READ_AHEAD_INFLIGHT_BYTES_MAX: u64 = SPAN_CACHE_BYTES_MAX as u64 / 2;

type Key = (Arc<str>, u64);
type Pending = Shared<BoxFuture<'static, Result<Bytes, StoreError>>>;

pub struct SpanCache {
    /// Most recently used at the back.
    entries: RefCell<VecDeque<(Key, Bytes)>>,
    bytes: Cell<usize>,
    inflight: RefCell<HashMap<Key, Pending>>,
    /// Read-ahead GETs under way, and their bytes.
    ahead_gets: Rc<Cell<(usize, u64)>>,
    /// The shard's counters (shared with the caches of its other slots).
    stats: Arc<ShardStats>,
}

impl SpanCache {
    pub fn new(stats: Arc<ShardStats>) -> SpanCache {
        SpanCache {
            entries: RefCell::default(),
            bytes: Cell::new(0),
            inflight: RefCell::default(),
            ahead_gets: Rc::default(),
            stats,
        }
    }

    fn counters(&self) -> &SpanCacheStats {
        &self.stats.span_cache
    }

    /// The span's bytes: from memory, from a GET already under way, or from a new ranged GET.
    pub async fn get(
        self: &Rc<Self>,
        store: &dyn ObjectStore,
        object: &Arc<str>,
        span: &Span,
    ) -> Result<Bytes, StoreError> {
        let key: Key = (object.clone(), span.byte_start);
        if let Some(bytes) = self.touch(&key) {
            self.counters().hits.fetch_add(1, Relaxed);
            return Ok(bytes);
        }
        self.counters().misses.fetch_add(1, Relaxed);
        let pending = self.pending(store, &key, span);
        self.finish(key, pending).await
    }

    /// Read-ahead: starts the GET of a span a sequential consumer will want next, unless it is
    /// cached or under way. The GET is registered at once (a fetch arriving meanwhile shares
    /// it); the returned future completes it into the cache and is meant to be spawned.
    pub fn prefetch(
        self: &Rc<Self>,
        store: &dyn ObjectStore,
        object: &Arc<str>,
        span: &Span,
    ) -> Option<impl std::future::Future<Output = ()> + 'static> {
        let key: Key = (object.clone(), span.byte_start);
        if self.contains(&key) || self.inflight.borrow().contains_key(&key) {
            return None;
        }
        let (gets, bytes) = self.ahead_gets.get();
        // The first is always allowed, whatever its size: read-ahead never stops entirely.
        if gets >= READ_AHEAD_GETS_MAX
            || gets > 0 && bytes + span.byte_len > READ_AHEAD_INFLIGHT_BYTES_MAX
        {
            return None;
        }
        let slot = AheadSlot::take(&self.ahead_gets, span.byte_len);
        self.counters().read_ahead_gets.fetch_add(1, Relaxed);
        let pending = self.pending(store, &key, span);
        let cache = self.clone();
        Some(async move {
            let _slot = slot;
            if let Err(e) = cache.finish(key.clone(), pending).await {
                tracing::debug!(object = %key.0, error = %e, "read-ahead failed (a fetch will retry)");
            }
        })
    }

    /// The GET under way for `key`, or a new one.
    fn pending(&self, store: &dyn ObjectStore, key: &Key, span: &Span) -> Pending {
        let mut inflight = self.inflight.borrow_mut();
        if let Some(p) = inflight.get(key) {
            return p.clone();
        }
        self.counters().gets.fetch_add(1, Relaxed);
        let p = store
            .get(
                &key.0,
                Some(span.byte_start..span.byte_start + span.byte_len),
            )
            .shared();
        inflight.insert(key.clone(), p.clone());
        p
    }

    async fn finish(&self, key: Key, pending: Pending) -> Result<Bytes, StoreError> {
        let result = pending.await;
        self.inflight.borrow_mut().remove(&key);
        if let Ok(bytes) = &result {
            self.insert(key, bytes.clone());
        }
        result
    }

    /// Read-ahead GETs under way now, and their bytes.
    pub fn read_ahead_inflight(&self) -> (usize, u64) {
        self.ahead_gets.get()
    }

    fn contains(&self, key: &Key) -> bool {
        self.entries.borrow().iter().any(|(k, _)| k == key)
    }

    fn touch(&self, key: &Key) -> Option<Bytes> {
        let mut entries = self.entries.borrow_mut();
        let at = entries.iter().position(|(k, _)| k == key)?;
        let entry = entries.remove(at).expect("found");
        let bytes = entry.1.clone();
        entries.push_back(entry);
        Some(bytes)
    }

    fn insert(&self, key: Key, bytes: Bytes) {
        if bytes.len() > SPAN_CACHE_BYTES_MAX / 4 {
            return; // one huge span must not flush everything else
        }
        let mut entries = self.entries.borrow_mut();
        if entries.iter().any(|(k, _)| *k == key) {
            return;
        }
        self.bytes.set(self.bytes.get() + bytes.len());
        self.counters().bytes.fetch_add(bytes.len() as u64, Relaxed);
        entries.push_back((key, bytes));
        while self.bytes.get() > SPAN_CACHE_BYTES_MAX {
            let (_, old) = entries.pop_front().expect("over budget means non-empty");
            self.bytes.set(self.bytes.get() - old.len());
            self.counters().bytes.fetch_sub(old.len() as u64, Relaxed);
            self.counters()
                .evicted_bytes
                .fetch_add(old.len() as u64, Relaxed);
        }
    }
}

impl Drop for SpanCache {
    /// The slot is let go: its spans no longer count in the shard's.
    fn drop(&mut self) {
        let held = self.bytes.get() as u64;
        let before = self.counters().bytes.fetch_sub(held, Relaxed);
        debug_assert!(
            before >= held,
            "the shard's span bytes include this cache's"
        );
    }
}

/// One read-ahead GET counted under way until dropped (completed or abandoned).
struct AheadSlot {
    counts: Rc<Cell<(usize, u64)>>,
    bytes: u64,
}

impl AheadSlot {
    fn take(counts: &Rc<Cell<(usize, u64)>>, bytes: u64) -> AheadSlot {
        let (n, b) = counts.get();
        counts.set((n + 1, b + bytes));
        AheadSlot {
            counts: counts.clone(),
            bytes,
        }
    }
}

impl Drop for AheadSlot {
    fn drop(&mut self) {
        let (n, b) = self.counts.get();
        assert!(n > 0 && b >= self.bytes);
        self.counts.set((n - 1, b - self.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use ringtail_objstore::local::LocalDir;
    use ringtail_objstore::Condition;

    fn span(start: u64, len: u64) -> Span {
        Span {
            topic_id: [0; 16],
            partition: 0,
            base_offset: 0,
            last_offset: 0,
            byte_start: start,
            byte_len: len,
            max_timestamp: 0,
        }
    }

    #[test]
    fn repeated_and_concurrent_reads_share_one_get_and_the_budget_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::open(dir.path()).unwrap();
        let body = Bytes::from((0..4096u32).map(|i| i as u8).collect::<Vec<u8>>());
        block_on(store.put("o", body.clone(), Condition::None)).unwrap();
        let stats = Arc::new(ShardStats::new(0));
        let c = &stats.span_cache;
        let cache = Rc::new(SpanCache::new(stats.clone()));
        let key: Arc<str> = "o".into();
        let s = span(100, 50);
        let (a, b) = block_on(futures::future::join(
            cache.get(&store, &key, &s),
            cache.get(&store, &key, &s),
        ));
        assert_eq!(a.unwrap(), body.slice(100..150));
        assert_eq!(b.unwrap(), body.slice(100..150));
        // The second reader shared the GET in flight, or (if the store answered before it
        // asked) found the span cached: never a second GET.
        assert_eq!(c.gets.load(Relaxed), 1, "concurrent readers shared one GET");
        let hits = c.hits.load(Relaxed);
        assert_eq!(hits + c.misses.load(Relaxed), 2);
        assert_eq!(c.bytes.load(Relaxed), 50);
        assert_eq!(
            block_on(cache.get(&store, &key, &s)).unwrap(),
            body.slice(100..150)
        );
        assert_eq!((c.gets.load(Relaxed), c.hits.load(Relaxed)), (1, hits + 1));
        assert!(matches!(
            block_on(cache.get(&store, &"missing".into(), &s)),
            Err(StoreError::NotFound(_))
        ));
        // Read-ahead registers its GET at once: a fetch arriving before it completes shares it,
        // and a span cached or under way is not fetched again.
        let next = span(200, 50);
        let ahead = cache.prefetch(&store, &key, &next).expect("not cached yet");
        assert!(
            cache.prefetch(&store, &key, &next).is_none(),
            "already under way"
        );
        let gets = c.gets.load(Relaxed);
        let (read, ()) = block_on(futures::future::join(cache.get(&store, &key, &next), ahead));
        assert_eq!(read.unwrap(), body.slice(200..250));
        assert_eq!(
            c.gets.load(Relaxed),
            gets,
            "the fetch shared the read-ahead's GET"
        );
        assert!(cache.prefetch(&store, &key, &next).is_none(), "cached now");
        assert_eq!(c.read_ahead_gets.load(Relaxed), 1);
        // Read-ahead is bounded in GETs under way and in their bytes.
        let started: Vec<_> = (0..100u64)
            .filter_map(|i| cache.prefetch(&store, &key, &span(i * 10, 10)))
            .collect();
        assert_eq!(started.len(), READ_AHEAD_GETS_MAX);
        assert_eq!(cache.read_ahead_inflight(), (READ_AHEAD_GETS_MAX, 160));
        block_on(futures::future::join_all(started));
        assert_eq!(
            cache.read_ahead_inflight(),
            (0, 0),
            "finished GETs give way"
        );
        let big = READ_AHEAD_INFLIGHT_BYTES_MAX / 3 + 1;
        let big_reads: Vec<_> = (0..10u64)
            .filter_map(|i| cache.prefetch(&store, &"big".into(), &span(i * big, big)))
            .collect();
        assert_eq!(
            big_reads.len(),
            2,
            "at most {READ_AHEAD_INFLIGHT_BYTES_MAX} bytes ahead"
        );
        drop(big_reads);
        assert_eq!(
            cache.read_ahead_inflight(),
            (0, 0),
            "abandoned GETs give way"
        );
        // Many distinct spans never exceed the byte budget.
        for i in 0..2000u64 {
            cache.insert(("x".into(), i), Bytes::from(vec![0u8; 100_000]));
            assert!(cache.bytes.get() <= SPAN_CACHE_BYTES_MAX);
        }
        // The shard's counters follow: bytes held now, bytes evicted, and nothing held once the
        // slot's cache is gone.
        let held = c.bytes.load(Relaxed);
        assert_eq!(held, cache.bytes.get() as u64);
        assert!(held > SPAN_CACHE_BYTES_MAX as u64 - 100_000);
        assert!(c.evicted_bytes.load(Relaxed) >= 2000 * 100_000 - held);
        drop(cache);
        assert_eq!(c.bytes.load(Relaxed), 0);
    }

    #[test]
    fn the_caches_of_a_shards_slots_count_together() {
        let stats = Arc::new(ShardStats::new(0));
        let (a, b) = (SpanCache::new(stats.clone()), SpanCache::new(stats.clone()));
        a.insert(("x".into(), 0), Bytes::from_static(b"abc"));
        b.insert(("x".into(), 0), Bytes::from_static(b"de"));
        assert_eq!(stats.span_cache.bytes.load(Relaxed), 5);
        drop(a);
        assert_eq!(stats.span_cache.bytes.load(Relaxed), 2, "a slot let go");
    }
}
