//! Prometheus text metrics over HTTP (`--metrics-listen`), served from a thread of its own so
//! that a scrape never runs on a shard: each shard owns its counters and histograms
//! ([`ShardStats`], relaxed atomics written only by that shard), the endpoint only reads them.
//! Per-partition offsets and committed group offsets are copied by each shard into
//! [`ShardStats::offsets`] once a second ([`OFFSETS_PUBLISH_INTERVAL`]), so a scrape never waits
//! on a shard and is at most that old.
//!
//! `/health` answers 200 while the process runs; `/ready` answers 200 once every shard has
//! recovered and accepts connections, and 503 before that, once shutdown began, and while a
//! slot's uploads fail with a permanent store error (the body says which and why).

pub mod client_log;
pub mod metered;

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;
use ringtail_shards::stats::{Histogram, HistogramSnapshot};
use ringtail_wal::WalMetrics;

use metered::ERROR_KINDS;
pub use metered::{Metered, StoreMetrics};

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
    /// Records a returning broker found in its WAL at offsets another owner wrote meanwhile
    /// (acknowledged with durability=wal, not uploaded before a crash or pause): lost.
    pub wal_superseded_records: AtomicU64,
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
            wal_superseded_records: AtomicU64::new(0),
            produce_records: AtomicU64::new(0),
            produce_bytes: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_refused_total: AtomicU64::new(0),
            connections_refused_per_ip: AtomicU64::new(0),
            connections_closed_idle: AtomicU64::new(0),
            connections_closed_read_timeout: AtomicU64::new(0),
            connections_closed_send_timeout: AtomicU64::new(0),
            log_lines_suppressed: AtomicU64::new(0),
            slow_requests: AtomicU64::new(0),
            apis: (0..API_SLOTS).map(|_| ApiStats::new()).collect(),
            wal: Mutex::default(),
            object_size: Histogram::sizes(),
            object_upload_latency: Histogram::latency(),
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

/// Everything the endpoint renders.
pub struct Sources {
    pub shards: Vec<Arc<ShardStats>>,
    pub store: Option<Arc<StoreMetrics>>,
    /// Per-partition offset and group-lag series (bounded by `--metrics-partition-limit`;
    /// 0 turns them off).
    pub partition_limit: usize,
    pub ready: Arc<AtomicBool>,
}

/// Writes Prometheus text: families with HELP and TYPE, then their series.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn value(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
    }
    fn histogram(&mut self, name: &str, labels: &str, h: &HistogramSnapshot) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in &h.buckets {
            let _ = writeln!(self.0, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            self.0,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(self.0, "{name}_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(self.0, "{name}_count{{{labels}}} {}", h.count);
    }
}

fn api_name(key: usize) -> String {
    ApiKey::try_from(key as i16)
        .map(|k| format!("{k:?}"))
        .unwrap_or_else(|_| format!("api{key}"))
}

fn error_name(slot: usize) -> String {
    if slot == ERROR_SLOTS - 1 {
        return "Other".into();
    }
    match ResponseError::try_from_code(slot as i16 - 1) {
        Some(e) => format!("{e:?}"),
        None => "None".into(),
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition.
pub fn render(src: &Sources) -> String {
    let mut o = Out(String::new());
    type Counter = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ShardStats) -> u64,
    );
    let simple: &[Counter] = &[
        ("ringtail_produce_records_total", "counter", "Records appended by produce requests.", |s| s.produce_records.load(Relaxed)),
        ("ringtail_produce_bytes_total", "counter", "Record-batch bytes appended by produce requests.", |s| s.produce_bytes.load(Relaxed)),
        ("ringtail_fetch_sent_record_bytes_total", "counter", "Record bytes written to fetch responses on this shard's connections.", |s| s.fetch_sent_record_bytes.load(Relaxed)),
        ("ringtail_fetch_copied_record_bytes_total", "counter", "Of those, bytes copied in user space to build the response (0 when the vectored send carries the stored buffers).", |s| s.fetch_copied_record_bytes.load(Relaxed)),
        ("ringtail_fetch_incremental_total", "counter", "Incremental fetches (KIP-227 fetch sessions) answered on this shard's connections.", |s| s.fetch_incremental.load(Relaxed)),
        ("ringtail_fetch_incremental_partitions_omitted_total", "counter", "Partitions incremental fetches left out of their answers (nothing new) that a sessionless fetch would have carried.", |s| s.fetch_incremental_partitions_omitted.load(Relaxed)),
        ("ringtail_hot_cache_bytes", "gauge", "Uploaded batches kept in memory for tail consumers (the hot-tail cache).", |s| s.hot_cache_bytes.load(Relaxed)),
        ("ringtail_hot_cache_evicted_bytes_total", "counter", "Bytes that left the hot-tail cache (they are read from objects from then on).", |s| s.hot_cache_evicted_bytes.load(Relaxed)),
        ("ringtail_wal_superseded_records_total", "counter", "Records replayed from this broker's WAL that another owner's writes had superseded (lost; see the warning in the log).", |s| s.wal_superseded_records.load(Relaxed)),
        ("ringtail_connections_accepted_total", "counter", "Client connections accepted.", |s| s.connections_accepted.load(Relaxed)),
        ("ringtail_connections", "gauge", "Client connections open.", |s| s.connections_open.load(Relaxed)),
        ("ringtail_log_lines_suppressed_total", "counter", "Log lines clients cause (connections closed or refused, requests refused) left out by the rate limit; a summary line counts them.", |s| s.log_lines_suppressed.load(Relaxed)),
        ("ringtail_slow_requests_total", "counter", "Requests slower than --slow-request-ms (each is logged).", |s| s.slow_requests.load(Relaxed)),
        ("ringtail_upload_pending_bytes", "gauge", "Record bytes in the WAL not yet in a committed object (the uploader's backlog).", |s| s.upload_pending_bytes.load(Relaxed)),
        ("ringtail_upload_permanent_errors_total", "counter", "Upload and manifest-commit attempts refused with a permanent store error (403, NoSuchBucket); each is retried.", |s| s.upload_permanent_errors.load(Relaxed)),
        ("ringtail_producer_snapshots_large_total", "counter", "Manifest commits whose producer snapshot held more than 100,000 producers (each ~100 bytes of every commit; none is dropped before its expiry).", |s| s.producer_snapshots_large.load(Relaxed)),
        ("ringtail_wal_failed", "gauge", "1 once a WAL write of this shard failed: the broker hands its slots over and stops (exit code 1).", |s| u64::from(s.wal_failure.lock().unwrap().is_some())),
        ("ringtail_uploads_failing", "gauge", "Slots whose uploads fail with a permanent store error now (/ready answers 503 meanwhile).", |s| s.upload_failures.lock().unwrap().len() as u64),
    ];
    for (name, kind, help, f) in simple {
        o.family(name, kind, help);
        for s in &src.shards {
            o.value(name, &format!("shard=\"{}\"", s.shard), f(s));
        }
    }
    type Labelled = (&'static str, fn(&ShardStats) -> u64);
    let labelled: &[(&str, &str, &[Labelled])] = &[
        ("ringtail_connections_refused_total", "Connections closed as they arrived, by the limit reached: max_connections (--max-connections) or max_connections_per_ip.", &[
            ("reason=\"max_connections\"", |s| s.connections_refused_total.load(Relaxed)),
            ("reason=\"max_connections_per_ip\"", |s| s.connections_refused_per_ip.load(Relaxed)),
        ]),
        ("ringtail_connections_closed_total", "Connections the broker closed, by reason: idle (--connections-max-idle-ms), request_read_timeout (a request not received whole in time), send_timeout (a response not taken in time).", &[
            ("reason=\"idle\"", |s| s.connections_closed_idle.load(Relaxed)),
            ("reason=\"request_read_timeout\"", |s| s.connections_closed_read_timeout.load(Relaxed)),
            ("reason=\"send_timeout\"", |s| s.connections_closed_send_timeout.load(Relaxed)),
        ]),
    ];
    for (name, help, series) in labelled {
        o.family(name, "counter", help);
        for s in &src.shards {
            for (labels, f) in series.iter() {
                o.value(name, &format!("shard=\"{}\",{labels}", s.shard), f(s));
            }
        }
    }
    o.family("ringtail_fetch_reads_total", "counter", "Partition reads that returned records to a fetch, by source: memory (the hot tail: a cache hit) or object (committed objects through the span cache: a miss).");
    for s in &src.shards {
        o.value(
            "ringtail_fetch_reads_total",
            &format!("shard=\"{}\",source=\"memory\"", s.shard),
            s.fetch_memory_reads.load(Relaxed),
        );
        o.value(
            "ringtail_fetch_reads_total",
            &format!("shard=\"{}\",source=\"object\"", s.shard),
            s.fetch_object_reads.load(Relaxed),
        );
    }
    o.family(
        "ringtail_fetch_bytes_total",
        "counter",
        "Record bytes returned to fetches, by source.",
    );
    for s in &src.shards {
        o.value(
            "ringtail_fetch_bytes_total",
            &format!("shard=\"{}\",source=\"memory\"", s.shard),
            s.fetch_memory_bytes.load(Relaxed),
        );
        o.value(
            "ringtail_fetch_bytes_total",
            &format!("shard=\"{}\",source=\"object\"", s.shard),
            s.fetch_object_bytes.load(Relaxed),
        );
    }

    // Requests by API: only APIs that saw a request.
    o.family(
        "ringtail_requests_total",
        "counter",
        "Requests handled, by API.",
    );
    for s in &src.shards {
        for (k, a) in s.apis.iter().enumerate() {
            let n = a.requests.load(Relaxed);
            if n > 0 {
                o.value(
                    "ringtail_requests_total",
                    &format!("shard=\"{}\",api=\"{}\"", s.shard, api_name(k)),
                    n,
                );
            }
        }
    }
    o.family(
        "ringtail_request_errors_total",
        "counter",
        "Error codes in answers (top-level and per topic, partition or group), by API and error.",
    );
    for s in &src.shards {
        for (k, a) in s.apis.iter().enumerate() {
            for (code, n) in a.errors.iter().enumerate() {
                let n = n.load(Relaxed);
                if n > 0 {
                    o.value(
                        "ringtail_request_errors_total",
                        &format!(
                            "shard=\"{}\",api=\"{}\",error=\"{}\"",
                            s.shard,
                            api_name(k),
                            error_name(code)
                        ),
                        n,
                    );
                }
            }
        }
    }
    o.family("ringtail_request_duration_seconds", "histogram", "Seconds from a decoded request to its answer handed to the socket, by API (Fetch includes its long-poll wait).");
    for s in &src.shards {
        for (k, a) in s.apis.iter().enumerate() {
            if a.requests.load(Relaxed) > 0 {
                o.histogram(
                    "ringtail_request_duration_seconds",
                    &format!("shard=\"{}\",api=\"{}\"", s.shard, api_name(k)),
                    &a.latency.snapshot(),
                );
            }
        }
    }

    // The WAL rings.
    type WalCounter = (
        &'static str,
        &'static str,
        &'static str,
        fn(&WalMetrics) -> u64,
    );
    let wal: &[WalCounter] = &[
        (
            "ringtail_wal_writes_total",
            "counter",
            "Chunk writes to the WAL ring (each one durability barrier: group commit).",
            |w| w.writes.load(Relaxed),
        ),
        (
            "ringtail_wal_entries_total",
            "counter",
            "Entries (record batches and control entries) written to the WAL ring.",
            |w| w.entries.load(Relaxed),
        ),
        (
            "ringtail_wal_written_bytes_total",
            "counter",
            "Bytes written to the WAL ring (block-aligned chunks).",
            |w| w.bytes_written.load(Relaxed),
        ),
        (
            "ringtail_wal_superblock_writes_total",
            "counter",
            "Superblock writes (trims made durable).",
            |w| w.superblock_writes.load(Relaxed),
        ),
        (
            "ringtail_wal_used_bytes",
            "gauge",
            "Bytes of the ring holding untrimmed data.",
            |w| w.used_bytes.load(Relaxed),
        ),
        (
            "ringtail_wal_ring_bytes",
            "gauge",
            "Size of the ring's data region.",
            |w| w.ring_bytes.load(Relaxed),
        ),
    ];
    for (name, kind, help, f) in wal {
        o.family(name, kind, help);
        for s in &src.shards {
            for (slot, w) in s.wal.lock().unwrap().iter() {
                o.value(
                    name,
                    &format!("shard=\"{}\",slot=\"{slot}\"", s.shard),
                    f(w),
                );
            }
        }
    }
    o.family(
        "ringtail_wal_write_duration_seconds",
        "histogram",
        "Seconds per WAL chunk write, durability barrier included.",
    );
    for s in &src.shards {
        for (slot, w) in s.wal.lock().unwrap().iter() {
            o.histogram(
                "ringtail_wal_write_duration_seconds",
                &format!("shard=\"{}\",slot=\"{slot}\"", s.shard),
                &w.write_latency.snapshot(),
            );
        }
    }
    o.family(
        "ringtail_wal_write_size_bytes",
        "histogram",
        "Bytes per WAL chunk write.",
    );
    for s in &src.shards {
        for (slot, w) in s.wal.lock().unwrap().iter() {
            o.histogram(
                "ringtail_wal_write_size_bytes",
                &format!("shard=\"{}\",slot=\"{slot}\"", s.shard),
                &w.write_size.snapshot(),
            );
        }
    }

    // The object tier.
    o.family(
        "ringtail_object_size_bytes",
        "histogram",
        "Sizes of the objects this shard uploaded.",
    );
    for s in &src.shards {
        o.histogram(
            "ringtail_object_size_bytes",
            &format!("shard=\"{}\"", s.shard),
            &s.object_size.snapshot(),
        );
    }
    o.family(
        "ringtail_object_upload_duration_seconds",
        "histogram",
        "Seconds from a sealed object to its commit in the manifest (PUT retries included).",
    );
    for s in &src.shards {
        o.histogram(
            "ringtail_object_upload_duration_seconds",
            &format!("shard=\"{}\"", s.shard),
            &s.object_upload_latency.snapshot(),
        );
    }
    if let Some(store) = &src.store {
        o.family(
            "ringtail_store_requests_total",
            "counter",
            "Object-store requests, by operation.",
        );
        for op in &store.ops {
            o.value(
                "ringtail_store_requests_total",
                &format!("op=\"{}\"", op.name),
                op.requests.load(Relaxed),
            );
        }
        o.family(
            "ringtail_store_bytes_total",
            "counter",
            "Bytes sent (put, upload_part) and received (get) by object-store requests.",
        );
        for op in &store.ops {
            o.value(
                "ringtail_store_bytes_total",
                &format!("op=\"{}\"", op.name),
                op.bytes.load(Relaxed),
            );
        }
        o.family("ringtail_store_errors_total", "counter", "Failed object-store requests by operation and kind; throttled (503 SlowDown) and transient ones are retried with backoff.");
        for op in &store.ops {
            for (kind, n) in ERROR_KINDS.iter().zip(&op.errors) {
                o.value(
                    "ringtail_store_errors_total",
                    &format!("op=\"{}\",kind=\"{kind}\"", op.name),
                    n.load(Relaxed),
                );
            }
        }
        o.family(
            "ringtail_store_request_duration_seconds",
            "histogram",
            "Seconds per object-store request, by operation.",
        );
        for op in &store.ops {
            o.histogram(
                "ringtail_store_request_duration_seconds",
                &format!("op=\"{}\"", op.name),
                &op.latency.snapshot(),
            );
        }
    }

    // Per-partition offsets and group lag (bounded).
    if src.partition_limit > 0 {
        let mut partitions: Vec<PartitionOffsets> = Vec::new();
        let mut committed: Vec<CommittedOffset> = Vec::new();
        for s in &src.shards {
            let snap = s.offsets.lock().unwrap();
            partitions.extend(snap.partitions.iter().cloned());
            committed.extend(snap.committed.iter().cloned());
        }
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        committed.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        o.family("ringtail_partitions_reported", "gauge", "Partitions in the per-partition series (at most --metrics-partition-limit), and all partitions.");
        o.value(
            "ringtail_partitions_reported",
            "of=\"shown\"",
            partitions.len().min(src.partition_limit),
        );
        o.value(
            "ringtail_partitions_reported",
            "of=\"all\"",
            partitions.len(),
        );
        type Offset = (&'static str, &'static str, fn(&PartitionOffsets) -> i64);
        let series: [Offset; 3] = [
            (
                "ringtail_partition_log_start_offset",
                "First offset a consumer can read.",
                |p| p.log_start,
            ),
            (
                "ringtail_partition_log_end_offset",
                "Offset the next appended record gets.",
                |p| p.log_end,
            ),
            (
                "ringtail_partition_high_watermark",
                "Offset below which records are durable and visible to consumers.",
                |p| p.high_watermark,
            ),
        ];
        for (name, help, f) in series {
            o.family(name, "gauge", help);
            for p in partitions.iter().take(src.partition_limit) {
                o.value(
                    name,
                    &format!(
                        "topic=\"{}\",partition=\"{}\"",
                        escape(&p.topic),
                        p.partition
                    ),
                    f(p),
                );
            }
        }
        let committed = &committed[..committed.len().min(src.partition_limit)];
        let labels = |c: &CommittedOffset| {
            format!(
                "group=\"{}\",topic=\"{}\",partition=\"{}\"",
                escape(&c.group),
                escape(&c.topic),
                c.partition
            )
        };
        o.family(
            "ringtail_group_lag",
            "gauge",
            "Records between a group's committed offset and the partition's high watermark.",
        );
        for c in committed {
            if let Some(p) = partitions
                .iter()
                .find(|p| p.topic == c.topic && p.partition == c.partition)
            {
                o.value(
                    "ringtail_group_lag",
                    &labels(c),
                    (p.high_watermark - c.offset).max(0),
                );
            }
        }
        o.family(
            "ringtail_group_committed_offset",
            "gauge",
            "A group's committed offset.",
        );
        for c in committed {
            o.value("ringtail_group_committed_offset", &labels(c), c.offset);
        }
    }
    o.family(
        "ringtail_ready",
        "gauge",
        "1 once every shard has recovered and serves, 0 before, during shutdown and while uploads fail permanently (as /ready)."
    );
    o.value("ringtail_ready", "", u8::from(readiness(src).is_ok()));
    o.0
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

/// Serves `/metrics`, `/health` and `/ready` on `addr` from a thread of its own; returns the
/// bound address.
pub fn serve(addr: std::net::SocketAddr, src: Sources) -> anyhow::Result<std::net::SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow::anyhow!("metrics endpoint on {addr}: not an IP address"))?;
    std::thread::Builder::new()
        .name("ringtail-metrics".into())
        .spawn(move || {
            // Below every shard: on a machine whose cores all run shards, a scrape waits for
            // idle time instead of preempting a shard mid-request.
            // SAFETY: sets the calling thread's own scheduling policy; no pointers kept.
            let param = libc::sched_param { sched_priority: 0 };
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                tracing::debug!("the metrics thread keeps the default scheduling policy");
            }
            for request in server.incoming_requests() {
                let (status, body, kind) = match request.url() {
                    "/metrics" => (200, render(&src), "text/plain; version=0.0.4"),
                    "/health" => (200, "ok\n".to_string(), "text/plain"),
                    "/ready" => match readiness(&src) {
                        Ok(()) => (200, "ready\n".to_string(), "text/plain"),
                        Err(why) => (503, why, "text/plain"),
                    },
                    _ => (404, "not found\n".to_string(), "text/plain"),
                };
                let header =
                    tiny_http::Header::from_bytes("Content-Type", kind).expect("static header");
                let response = tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header);
                let _ = request.respond(response);
            }
        })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(shards: Vec<Arc<ShardStats>>) -> Sources {
        Sources {
            shards,
            store: Some(Arc::new(StoreMetrics::default())),
            partition_limit: 10,
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    #[test]
    fn every_advertised_api_has_its_series() {
        for &(key, ..) in crate::api::SUPPORTED {
            assert!((key as usize) < API_SLOTS, "{key:?} has no request series");
        }
    }

    #[test]
    fn a_slot_whose_uploads_fail_permanently_makes_the_broker_unready() {
        let a = Arc::new(ShardStats::new(0));
        let src = sources(vec![a.clone()]);
        assert!(readiness(&src).is_ok());
        a.upload_failures
            .lock()
            .unwrap()
            .insert(3, "upload x: 403".into());
        let why = readiness(&src).unwrap_err();
        assert!(why.contains("slot 3 (shard 0): upload x: 403"), "{why}");
        assert!(render(&src).contains("ringtail_ready{} 0\n"));
        assert!(render(&src).contains("ringtail_uploads_failing{shard=\"0\"} 1\n"));
        a.upload_failures.lock().unwrap().clear();
        assert!(readiness(&src).is_ok());
        *a.wal_failure.lock().unwrap() = Some("write of 4096 bytes at 0: EIO".into());
        let why = readiness(&src).unwrap_err();
        assert!(why.contains("WAL write failed on shard 0"), "{why}");
        assert!(render(&src).contains("ringtail_wal_failed{shard=\"0\"} 1\n"));
    }

    #[test]
    fn every_series_is_well_formed_and_counts_what_happened() {
        let a = Arc::new(ShardStats::new(0));
        let b = Arc::new(ShardStats::new(1));
        a.fetch_memory_bytes.store(42, Relaxed);
        b.fetch_object_reads.store(7, Relaxed);
        a.request(ApiKey::Produce as i16, Duration::from_millis(2));
        a.request(ApiKey::Produce as i16, Duration::from_millis(3));
        a.error(ApiKey::Produce as i16, 3);
        a.error(ApiKey::Produce as i16, 0);
        a.error(ApiKey::Fetch as i16, 999);
        a.error(ApiKey::Fetch as i16, -1);
        b.offsets.lock().unwrap().partitions.push(PartitionOffsets {
            topic: "t\"x".into(),
            partition: 0,
            log_start: 1,
            log_end: 10,
            high_watermark: 9,
        });
        a.offsets.lock().unwrap().committed.push(CommittedOffset {
            group: "g".into(),
            topic: "t\"x".into(),
            partition: 0,
            offset: 4,
        });
        let text = render(&sources(vec![a, b]));
        assert!(text.contains("ringtail_fetch_bytes_total{shard=\"0\",source=\"memory\"} 42\n"));
        assert!(text.contains("ringtail_fetch_reads_total{shard=\"1\",source=\"object\"} 7\n"));
        assert!(text.contains("ringtail_requests_total{shard=\"0\",api=\"Produce\"} 2\n"));
        assert!(
            !text.contains("api=\"Metadata\""),
            "APIs without requests have no series"
        );
        assert!(text.contains(
            "ringtail_request_errors_total{shard=\"0\",api=\"Produce\",error=\"UnknownTopicOrPartition\"} 1\n"
        ));
        assert!(
            text.contains("api=\"Fetch\",error=\"Other\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("api=\"Fetch\",error=\"UnknownServerError\"} 1\n"));
        assert!(text.contains(
            "ringtail_request_duration_seconds_bucket{shard=\"0\",api=\"Produce\",le=\"0.0025\"} 1\n"
        ));
        assert!(text
            .contains("ringtail_request_duration_seconds_count{shard=\"0\",api=\"Produce\"} 2\n"));
        assert!(text
            .contains("ringtail_partition_high_watermark{topic=\"t\\\"x\",partition=\"0\"} 9\n"));
        assert!(
            text.contains("ringtail_group_lag{group=\"g\",topic=\"t\\\"x\",partition=\"0\"} 5\n")
        );
        assert!(text.contains("ringtail_store_errors_total{op=\"put\",kind=\"throttled\"} 0\n"));
        assert!(text.contains("ringtail_ready{} 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(
                series.ends_with('}') && value.parse::<f64>().is_ok(),
                "{line}"
            );
        }
        // Families are declared once each, and a family's series follow its TYPE line together.
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let n = types.len();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), n);
        let mut family = "";
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                family = t.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                let name = line.split('{').next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| *b == family));
                assert_eq!(base.unwrap_or(name), family, "{line}");
            }
        }
    }

    #[test]
    fn the_partition_series_can_be_bounded_or_switched_off() {
        let a = Arc::new(ShardStats::new(0));
        for p in 0..5 {
            a.offsets.lock().unwrap().partitions.push(PartitionOffsets {
                topic: "t".into(),
                partition: p,
                log_start: 0,
                log_end: 1,
                high_watermark: 1,
            });
        }
        let mut src = sources(vec![a]);
        src.partition_limit = 2;
        let text = render(&src);
        assert_eq!(
            text.matches("ringtail_partition_log_end_offset{").count(),
            2
        );
        assert!(text.contains("ringtail_partitions_reported{of=\"all\"} 5\n"));
        src.partition_limit = 0;
        assert!(!render(&src).contains("ringtail_partition_log_end_offset{"));
    }
}
