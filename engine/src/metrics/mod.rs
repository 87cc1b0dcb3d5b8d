//! Metrics: each shard owns its counters and histograms ([`ShardStats`], relaxed atomics written
//! only by that shard); the endpoint (`endpoint.rs`, a thread of its own) only reads them, so a
//! scrape never runs on a shard. Per-partition offsets and committed group offsets are copied by
//! each shard into [`ShardStats::offsets`] once a second ([`OFFSETS_PUBLISH_INTERVAL`]), so a
//! scrape never waits on a shard and is at most that old.
//!
//! `render.rs` writes the Prometheus text, one renderer per family, in the format `text.rs`
//! knows (`offsets.rs`: the per-partition and group families); `metered.rs` counts object-store
//! requests; `client_log.rs` rate-limits the log lines clients cause.

pub mod client_log;
pub mod endpoint;
pub mod metered;
mod offsets;
mod render;
mod text;

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringtail_shards::stats::Histogram;
use ringtail_wal::WalMetrics;

pub use metered::{Metered, StoreMetrics};

use crate::catalog::topic_config::Durability;

/// API keys with their own series (every key Ringtail answers is below this; the highest is
/// DescribeTopicPartitions, 75).
const API_SLOTS: usize = 76;
/// Error codes with their own series: -1 (UNKNOWN_SERVER_ERROR) to 158, at slot code + 1;
/// any other code counts in the last slot ("Other").
const ERROR_SLOTS: usize = 161;
/// How often a shard copies its partitions' offsets for the endpoint.
pub const OFFSETS_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// One API's requests on one shard.
pub struct ApiStats {
    pub requests: AtomicU64,
    /// Seconds from the decoded request to the answer handed to the socket (a Fetch includes
    /// its long-poll wait, as in Kafka's request metrics).
    pub latency: Histogram,
    /// Error codes in the answers (top-level and per partition, topic or group), by code.
    errors: Box<[AtomicU64]>,
}

impl ApiStats {
    fn new() -> ApiStats {
        ApiStats {
            requests: AtomicU64::new(0),
            latency: Histogram::latency(),
            errors: (0..ERROR_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// A partition's offsets as last published by its shard.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionOffsets {
    pub topic: String,
    pub partition: i32,
    pub log_start: i64,
    pub log_end: i64,
    pub high_watermark: i64,
}

/// A group's committed offset as last published by its coordinator's shard.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedOffset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Default)]
pub struct OffsetsSnapshot {
    pub partitions: Vec<PartitionOffsets>,
    pub committed: Vec<CommittedOffset>,
}

/// The span caches of a shard's slots (`tier::span_cache`), counted together.
#[derive(Debug, Default)]
pub struct SpanCacheStats {
    /// Cold reads answered from spans held in memory, and those that were not (they joined a
    /// GET under way or started one).
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Ranged GETs started, for fetches and read-ahead, and of them the read-ahead ones.
    pub gets: AtomicU64,
    pub read_ahead_gets: AtomicU64,
    /// Span bytes held now, and bytes evicted (least recently used first) so far.
    pub bytes: AtomicU64,
    pub evicted_bytes: AtomicU64,
}

/// A shard's counters: written only by the shard (relaxed atomics, no lock), read by anyone.
pub struct ShardStats {
    pub shard: usize,
    /// Fetch reads answered from memory (the hot tail), and their record bytes.
    pub fetch_memory_reads: AtomicU64,
    pub fetch_memory_bytes: AtomicU64,
    /// Fetch reads answered from committed objects (span cache or GET), and their bytes.
    pub fetch_object_reads: AtomicU64,
    pub fetch_object_bytes: AtomicU64,
    /// Record bytes sent in fetch responses on this shard's connections, and how many of them
    /// were copied in user space to build the response.
    pub fetch_sent_record_bytes: AtomicU64,
    pub fetch_copied_record_bytes: AtomicU64,
    /// Incremental fetches (KIP-227 sessions) answered, and the partitions they left out (no
    /// news) that a sessionless fetch would have carried.
    pub fetch_incremental: AtomicU64,
    pub fetch_incremental_partitions_omitted: AtomicU64,
    /// Uploaded batches kept in memory now, and bytes evicted from there so far.
    pub hot_cache_bytes: AtomicU64,
    pub hot_cache_evicted_bytes: AtomicU64,
    /// Cold reads through the span caches of the slots open on this shard.
    pub span_cache: SpanCacheStats,
    /// Records a returning broker found in its WAL at offsets another owner wrote meanwhile
    /// (acknowledged with durability=wal, not uploaded before a crash or pause): lost.
    pub wal_superseded_records: AtomicU64,
    /// Batches and bytes this broker appended to its replica rings as a follower, and the
    /// replication frames it refused (a non-member, a stale epoch, a gap, a damaged batch).
    pub replica_appended_batches: AtomicU64,
    pub replica_appended_bytes: AtomicU64,
    pub replica_refused: AtomicU64,
    /// Bytes this shard's replica rings hold (not trimmed yet).
    pub replica_ring_bytes: AtomicU64,
    /// Records and record-batch bytes appended by produce requests.
    pub produce_records: AtomicU64,
    pub produce_bytes: AtomicU64,
    /// Connections accepted by this shard, and those open now.
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicU64,
    /// Connections refused at accept: over `--max-connections`, over `--max-connections-per-ip`.
    pub connections_refused_total: AtomicU64,
    pub connections_refused_per_ip: AtomicU64,
    /// Connections the broker closed: idle past `--connections-max-idle-ms`, a request not
    /// received whole within `--request-read-timeout-ms`, a response not taken within
    /// `--send-timeout-ms`.
    pub connections_closed_idle: AtomicU64,
    /// Requests dispatched while earlier ones of their connection were still unanswered.
    pub requests_pipelined: AtomicU64,
    /// Per request read: its connection's unanswered requests, itself included.
    pub requests_in_flight: Histogram,
    /// Seconds from a produce's dispatch on its shard to its acknowledgement, by durability
    /// mode ([`Durability::index`]).
    pub produce_ack_wait: [Histogram; Durability::COUNT],
    pub connections_closed_read_timeout: AtomicU64,
    pub connections_closed_send_timeout: AtomicU64,
    /// Connection log lines left out by the per-shard rate limit.
    pub log_lines_suppressed: AtomicU64,
    /// Requests slower than `--slow-request-ms` (each also logged).
    pub slow_requests: AtomicU64,
    apis: Box<[ApiStats]>,
    /// The WAL rings of the slots open on this shard, by slot.
    pub wal: Mutex<std::collections::BTreeMap<u32, Arc<WalMetrics>>>,
    /// Objects uploaded by this shard: their sizes, and seconds from sealed to committed in
    /// the manifest (PUT retries and commit included).
    pub object_size: Histogram,
    pub object_upload_latency: Histogram,
    /// Object PUTs under way now (an upload's; its manifest commit is not counted).
    pub uploads_in_flight: AtomicU64,
    /// Record bytes held in the WAL that are not in a committed object yet.
    pub upload_pending_bytes: AtomicU64,
    /// Upload and manifest-commit attempts that failed with a permanent store error (403,
    /// NoSuchBucket: retrying alone does not cure them).
    pub upload_permanent_errors: AtomicU64,
    /// Manifest commits whose producer snapshot held more than
    /// [`crate::partition::producers::PRODUCER_SNAPSHOT_WARN_ENTRIES`] producers (none is dropped).
    pub producer_snapshots_large: AtomicU64,
    /// Slots whose uploads fail permanently now, with the last error: `/ready` answers 503
    /// while any is set.
    pub upload_failures: Mutex<std::collections::BTreeMap<u32, String>>,
    /// Set when a WAL write of this shard failed (the ring's tail is uncertain): the broker
    /// hands its slots over and stops; `/ready` answers 503 meanwhile.
    pub wal_failure: Mutex<Option<String>>,
    /// Partition offsets and committed group offsets, copied once a second by the shard.
    pub offsets: Mutex<OffsetsSnapshot>,
}

impl ShardStats {
    pub fn new(shard: usize) -> ShardStats {
        ShardStats {
            shard,
            fetch_memory_reads: AtomicU64::new(0),
            fetch_memory_bytes: AtomicU64::new(0),
            fetch_object_reads: AtomicU64::new(0),
            fetch_object_bytes: AtomicU64::new(0),
            fetch_sent_record_bytes: AtomicU64::new(0),
            fetch_copied_record_bytes: AtomicU64::new(0),
            fetch_incremental: AtomicU64::new(0),
            fetch_incremental_partitions_omitted: AtomicU64::new(0),
            hot_cache_bytes: AtomicU64::new(0),
            hot_cache_evicted_bytes: AtomicU64::new(0),
            span_cache: SpanCacheStats::default(),
            wal_superseded_records: AtomicU64::new(0),
            replica_appended_batches: AtomicU64::new(0),
            replica_appended_bytes: AtomicU64::new(0),
            replica_refused: AtomicU64::new(0),
            replica_ring_bytes: AtomicU64::new(0),
            produce_records: AtomicU64::new(0),
            produce_bytes: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_refused_total: AtomicU64::new(0),
            connections_refused_per_ip: AtomicU64::new(0),
            connections_closed_idle: AtomicU64::new(0),
            requests_pipelined: AtomicU64::new(0),
            requests_in_flight: Histogram::new(IN_FLIGHT_BOUNDS),
            produce_ack_wait: std::array::from_fn(|_| Histogram::latency()),
            connections_closed_read_timeout: AtomicU64::new(0),
            connections_closed_send_timeout: AtomicU64::new(0),
            log_lines_suppressed: AtomicU64::new(0),
            slow_requests: AtomicU64::new(0),
            apis: (0..API_SLOTS).map(|_| ApiStats::new()).collect(),
            wal: Mutex::default(),
            object_size: Histogram::sizes(),
            object_upload_latency: Histogram::latency(),
            uploads_in_flight: AtomicU64::new(0),
            upload_pending_bytes: AtomicU64::new(0),
            upload_permanent_errors: AtomicU64::new(0),
            producer_snapshots_large: AtomicU64::new(0),
            upload_failures: Mutex::default(),
            wal_failure: Mutex::default(),
            offsets: Mutex::new(OffsetsSnapshot::default()),
        }
    }

    /// Counts one request of `api` that took `elapsed`.
    pub fn request(&self, api: i16, elapsed: Duration) {
        if let Some(a) = self.apis.get(api as usize) {
            add(&a.requests, 1);
            a.latency.observe_duration(elapsed);
        }
    }

    /// Counts an error code (not 0) in an answer to `api`.
    pub fn error(&self, api: i16, code: i16) {
        if code == 0 {
            return;
        }
        if let Some(a) = self.apis.get(api as usize) {
            let slot = usize::try_from(code as i32 + 1)
                .ok()
                .filter(|s| *s < ERROR_SLOTS - 1)
                .unwrap_or(ERROR_SLOTS - 1);
            add(&a.errors[slot], 1);
        }
    }
}

/// Bounds of the requests-in-flight histogram (the bound per connection is 32).
const IN_FLIGHT_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

/// Everything the endpoint renders.
pub struct Sources {
    pub shards: Vec<Arc<ShardStats>>,
    pub store: Option<Arc<StoreMetrics>>,
    /// Per-partition offset and group-lag series (bounded by `--metrics-partition-limit`;
    /// 0 turns them off).
    pub partition_limit: usize,
    pub ready: Arc<AtomicBool>,
}

/// Ready: every shard serves and no slot's uploads fail permanently. Otherwise why not.
pub fn readiness(src: &Sources) -> Result<(), String> {
    if !src.ready.load(Relaxed) {
        return Err("not ready\n".into());
    }
    for s in &src.shards {
        if let Some(e) = s.wal_failure.lock().unwrap().as_ref() {
            return Err(format!(
                "not ready: a WAL write failed on shard {} ({e}); handing the slots over and \
                 stopping\n",
                s.shard
            ));
        }
    }
    let mut failing = String::new();
    for s in &src.shards {
        for (slot, error) in s.upload_failures.lock().unwrap().iter() {
            let _ = writeln!(failing, "slot {slot} (shard {}): {error}", s.shard);
        }
    }
    if failing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "not ready: uploads to the object store fail with a permanent error (the WAL holds \
         the data until it is full; uploads resume once the store accepts them)\n{failing}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_api_has_its_series() {
        for &(key, ..) in crate::api::SUPPORTED {
            assert!((key as usize) < API_SLOTS, "{key:?} has no request series");
        }
    }
}
