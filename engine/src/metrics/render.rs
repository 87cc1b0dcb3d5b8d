//! The Prometheus text exposition of [`Sources`]: one renderer per family of metrics — the
//! shards' counters, connections and fetches by label, requests by API, the WAL rings, the
//! object tier, the span cache, object-store requests, partition and group offsets, readiness — over a few
//! shapes (a series per shard, per shard and label, per API, per WAL ring).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;
use ringtail_wal::WalMetrics;

use super::metered::{OpStats, StoreMetrics, ERROR_KINDS};
use super::text::{counter, gauge, histogram, Family, Out, Sample};
use super::{readiness, ApiStats, ShardStats, Sources, ERROR_SLOTS};
use crate::catalog::topic_config::Durability;

/// The Prometheus text exposition.
pub fn render(src: &Sources) -> String {
    let mut o = Out::default();
    let shards = &src.shards[..];
    for (family, value) in SHARD_SERIES {
        per_shard(&mut o, shards, family, value);
    }
    for (family, series) in SHARD_SERIES_BY_LABEL {
        per_shard_by(&mut o, shards, family, series);
    }
    requests(&mut o, shards);
    wal(&mut o, shards);
    object_tier(&mut o, shards);
    acknowledgements(&mut o, shards);
    for (family, value) in SPAN_CACHE_SERIES {
        per_shard(&mut o, shards, family, value);
    }
    if let Some(store) = &src.store {
        store_requests(&mut o, store);
    }
    if src.partition_limit > 0 {
        super::offsets::render(&mut o, shards, src.partition_limit);
    }
    o.family(&READY, [(String::new(), u64::from(readiness(src).is_ok()))]);
    o.finish()
}

const READY: Family = gauge(
    "ringtail_ready",
    "1 once every shard has recovered and serves, 0 before, during shutdown and while uploads \
     fail permanently (as /ready).",
);

fn shard_label(s: &ShardStats) -> String {
    format!("shard=\"{}\"", s.shard)
}

/// A family with one series per shard.
fn per_shard<S: Sample>(
    o: &mut Out,
    shards: &[Arc<ShardStats>],
    family: &Family,
    value: impl Fn(&ShardStats) -> S,
) {
    o.family(family, shards.iter().map(|s| (shard_label(s), value(s))));
}

/// A family with one series per shard and label set (`reason="idle"`), shard after shard.
fn per_shard_by(
    o: &mut Out,
    shards: &[Arc<ShardStats>],
    family: &Family,
    series: &[ShardLabelled],
) {
    let all = shards.iter().flat_map(|s| {
        series
            .iter()
            .map(move |(labels, value)| (format!("{},{labels}", shard_label(s)), value(s)))
    });
    o.family(family, all);
}

/// A family with one series per API that saw a request, on each shard.
fn per_api<S: Sample>(
    o: &mut Out,
    shards: &[Arc<ShardStats>],
    family: &Family,
    value: impl Fn(&ApiStats) -> S,
) {
    let all = shards.iter().flat_map(|s| {
        let seen = s.apis.iter().enumerate();
        let seen = seen.filter(|(_, a)| a.requests.load(Relaxed) > 0);
        seen.map(move |(k, a)| (format!("{},api=\"{}\"", shard_label(s), api_name(k)), a))
    });
    o.family(family, all.map(|(labels, a)| (labels, value(a))));
}

/// A family with one series per WAL ring (a slot open on the shard), shard after shard.
fn per_slot<S: Sample>(
    o: &mut Out,
    shards: &[Arc<ShardStats>],
    family: &Family,
    value: impl Fn(&WalMetrics) -> S,
) {
    let mut all = Vec::new();
    for s in shards {
        for (slot, w) in s.wal.lock().unwrap().iter() {
            all.push((format!("{},slot=\"{slot}\"", shard_label(s)), value(w)));
        }
    }
    o.family(family, all);
}

/// Families with one series per shard.
type ShardSeries = (Family, fn(&ShardStats) -> u64);
const SHARD_SERIES: &[ShardSeries] = &[
    (
        counter(
            "ringtail_produce_records_total",
            "Records appended by produce requests.",
        ),
        |s| s.produce_records.load(Relaxed),
    ),
    (
        counter(
            "ringtail_produce_bytes_total",
            "Record-batch bytes appended by produce requests.",
        ),
        |s| s.produce_bytes.load(Relaxed),
    ),
    (
        counter(
            "ringtail_fetch_sent_record_bytes_total",
            "Record bytes written to fetch responses on this shard's connections.",
        ),
        |s| s.fetch_sent_record_bytes.load(Relaxed),
    ),
    (
        counter(
            "ringtail_fetch_copied_record_bytes_total",
            "Of those, bytes copied in user space to build the response (0 when the vectored send carries the stored buffers).",
        ),
        |s| s.fetch_copied_record_bytes.load(Relaxed),
    ),
    (
        counter(
            "ringtail_requests_pipelined_total",
            "Requests read and dispatched while earlier requests of the same connection were still unanswered (pipelined connections).",
        ),
        |s| s.requests_pipelined.load(Relaxed),
    ),
    (
        counter(
            "ringtail_fetch_incremental_total",
            "Incremental fetches (KIP-227 fetch sessions) answered on this shard's connections.",
        ),
        |s| s.fetch_incremental.load(Relaxed),
    ),
    (
        counter(
            "ringtail_fetch_incremental_partitions_omitted_total",
            "Partitions incremental fetches left out of their answers (nothing new) that a sessionless fetch would have carried.",
        ),
        |s| s.fetch_incremental_partitions_omitted.load(Relaxed),
    ),
    (
        gauge(
            "ringtail_hot_cache_bytes",
            "Uploaded batches kept in memory for tail consumers (the hot-tail cache).",
        ),
        |s| s.hot_cache_bytes.load(Relaxed),
    ),
    (
        counter(
            "ringtail_hot_cache_evicted_bytes_total",
            "Bytes that left the hot-tail cache (they are read from objects from then on).",
        ),
        |s| s.hot_cache_evicted_bytes.load(Relaxed),
    ),
    (
        counter(
            "ringtail_wal_superseded_records_total",
            "Records replayed from this broker's WAL that another owner's writes had superseded (lost; see the warning in the log).",
        ),
        |s| s.wal_superseded_records.load(Relaxed),
    ),
    (
        counter(
            "ringtail_replica_appended_batches_total",
            "Batches appended to this broker's replica rings as a follower.",
        ),
        |s| s.replica_appended_batches.load(Relaxed),
    ),
    (
        counter(
            "ringtail_replica_appended_bytes_total",
            "Bytes appended to this broker's replica rings as a follower.",
        ),
        |s| s.replica_appended_bytes.load(Relaxed),
    ),
    (
        counter(
            "ringtail_replica_refused_total",
            "Replication frames refused (see the warnings in the log); nothing of them appended.",
        ),
        |s| s.replica_refused.load(Relaxed),
    ),
    (
        gauge(
            "ringtail_replica_ring_bytes",
            "Bytes this broker's replica rings hold, not trimmed behind their owners' uploads yet.",
        ),
        |s| s.replica_ring_bytes.load(Relaxed),
    ),
    (
        counter(
            "ringtail_connections_accepted_total",
            "Client connections accepted.",
        ),
        |s| s.connections_accepted.load(Relaxed),
    ),
    (
        gauge(
            "ringtail_connections",
            "Client connections open.",
        ),
        |s| s.connections_open.load(Relaxed),
    ),
    (
        counter(
            "ringtail_log_lines_suppressed_total",
            "Log lines clients cause (connections closed or refused, requests refused) left out by the rate limit; a summary line counts them.",
        ),
        |s| s.log_lines_suppressed.load(Relaxed),
    ),
    (
        counter(
            "ringtail_slow_requests_total",
            "Requests slower than --slow-request-ms (each is logged).",
        ),
        |s| s.slow_requests.load(Relaxed),
    ),
    (
        gauge(
            "ringtail_upload_pending_bytes",
            "Record bytes in the WAL not yet in a committed object (the uploader's backlog).",
        ),
        |s| s.upload_pending_bytes.load(Relaxed),
    ),
    (
        gauge(
            "ringtail_uploads_in_flight",
            "Object PUTs this shard has under way now (uploads; their manifest commits are not counted).",
        ),
        |s| s.uploads_in_flight.load(Relaxed),
    ),
    (
        counter(
            "ringtail_upload_permanent_errors_total",
            "Upload and manifest-commit attempts refused with a permanent store error (403, NoSuchBucket); each is retried.",
        ),
        |s| s.upload_permanent_errors.load(Relaxed),
    ),
    (
        counter(
            "ringtail_producer_snapshots_large_total",
            "Manifest commits whose producer snapshot held more than 100,000 producers (each ~100 bytes of every commit; none is dropped before its expiry).",
        ),
        |s| s.producer_snapshots_large.load(Relaxed),
    ),
    (
        gauge(
            "ringtail_wal_failed",
            "1 once a WAL write of this shard failed: the broker hands its slots over and stops (exit code 1).",
        ),
        |s| u64::from(s.wal_failure.lock().unwrap().is_some()),
    ),
    (
        gauge(
            "ringtail_uploads_failing",
            "Slots whose uploads fail with a permanent store error now (/ready answers 503 meanwhile).",
        ),
        |s| s.upload_failures.lock().unwrap().len() as u64,
    ),
];

/// A series of a family by shard and label: its labels, and its value on a shard.
type ShardLabelled = (&'static str, fn(&ShardStats) -> u64);
/// Families with one series per shard and label set.
const SHARD_SERIES_BY_LABEL: &[(Family, &[ShardLabelled])] = &[
    (
        counter(
            "ringtail_connections_refused_total",
            "Connections closed as they arrived, by the limit reached: max_connections \
             (--max-connections) or max_connections_per_ip.",
        ),
        &[
            ("reason=\"max_connections\"", |s| {
                s.connections_refused_total.load(Relaxed)
            }),
            ("reason=\"max_connections_per_ip\"", |s| {
                s.connections_refused_per_ip.load(Relaxed)
            }),
        ],
    ),
    (
        counter(
            "ringtail_connections_closed_total",
            "Connections the broker closed, by reason: idle (--connections-max-idle-ms), \
             request_read_timeout (a request not received whole in time), send_timeout (a \
             response not taken in time).",
        ),
        &[
            ("reason=\"idle\"", |s| {
                s.connections_closed_idle.load(Relaxed)
            }),
            ("reason=\"request_read_timeout\"", |s| {
                s.connections_closed_read_timeout.load(Relaxed)
            }),
            ("reason=\"send_timeout\"", |s| {
                s.connections_closed_send_timeout.load(Relaxed)
            }),
        ],
    ),
    (
        counter(
            "ringtail_fetch_reads_total",
            "Partition reads that returned records to a fetch, by source: memory (the hot tail: \
             a cache hit) or object (committed objects through the span cache: a miss).",
        ),
        &[
            ("source=\"memory\"", |s| s.fetch_memory_reads.load(Relaxed)),
            ("source=\"object\"", |s| s.fetch_object_reads.load(Relaxed)),
        ],
    ),
    (
        counter(
            "ringtail_fetch_bytes_total",
            "Record bytes returned to fetches, by source.",
        ),
        &[
            ("source=\"memory\"", |s| s.fetch_memory_bytes.load(Relaxed)),
            ("source=\"object\"", |s| s.fetch_object_bytes.load(Relaxed)),
        ],
    ),
];

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

/// Requests, their error codes and their durations by API: only APIs that saw a request.
fn requests(o: &mut Out, shards: &[Arc<ShardStats>]) {
    per_api(
        o,
        shards,
        &counter("ringtail_requests_total", "Requests handled, by API."),
        |a| a.requests.load(Relaxed),
    );
    let errors = shards.iter().flat_map(|s| {
        s.apis.iter().enumerate().flat_map(move |(k, a)| {
            let counts = a.errors.iter().map(|n| n.load(Relaxed)).enumerate();
            counts.filter(|(_, n)| *n > 0).map(move |(code, n)| {
                let (api, error) = (api_name(k), error_name(code));
                let labels = format!("{},api=\"{api}\",error=\"{error}\"", shard_label(s));
                (labels, n)
            })
        })
    });
    o.family(
        &counter(
            "ringtail_request_errors_total",
            "Error codes in answers (top-level and per topic, partition or group), by API and \
             error.",
        ),
        errors,
    );
    per_api(
        o,
        shards,
        &histogram(
            "ringtail_request_duration_seconds",
            "Seconds from a decoded request to its answer handed to the socket, by API (Fetch \
             includes its long-poll wait).",
        ),
        |a| a.latency.snapshot(),
    );
}

/// The WAL rings of the slots open on each shard.
fn wal(o: &mut Out, shards: &[Arc<ShardStats>]) {
    for (family, value) in WAL_SERIES {
        per_slot(o, shards, family, value);
    }
    per_slot(
        o,
        shards,
        &histogram(
            "ringtail_wal_write_duration_seconds",
            "Seconds per WAL chunk write, durability barrier included.",
        ),
        |w| w.write_latency.snapshot(),
    );
    per_slot(
        o,
        shards,
        &histogram(
            "ringtail_wal_write_size_bytes",
            "Bytes per WAL chunk write.",
        ),
        |w| w.write_size.snapshot(),
    );
}

type WalSeries = (Family, fn(&WalMetrics) -> u64);
const WAL_SERIES: &[WalSeries] = &[
    (
        counter(
            "ringtail_wal_writes_total",
            "Chunk writes to the WAL ring (each one durability barrier: group commit).",
        ),
        |w| w.writes.load(Relaxed),
    ),
    (
        counter(
            "ringtail_wal_entries_total",
            "Entries (record batches and control entries) written to the WAL ring.",
        ),
        |w| w.entries.load(Relaxed),
    ),
    (
        counter(
            "ringtail_wal_written_bytes_total",
            "Bytes written to the WAL ring (block-aligned chunks).",
        ),
        |w| w.bytes_written.load(Relaxed),
    ),
    (
        counter(
            "ringtail_wal_superblock_writes_total",
            "Superblock writes (trims made durable).",
        ),
        |w| w.superblock_writes.load(Relaxed),
    ),
    (
        gauge(
            "ringtail_wal_used_bytes",
            "Bytes of the ring holding untrimmed data.",
        ),
        |w| w.used_bytes.load(Relaxed),
    ),
    (
        gauge("ringtail_wal_ring_bytes", "Size of the ring's data region."),
        |w| w.ring_bytes.load(Relaxed),
    ),
];

/// The objects each shard uploaded.
fn object_tier(o: &mut Out, shards: &[Arc<ShardStats>]) {
    per_shard(
        o,
        shards,
        &histogram(
            "ringtail_object_size_bytes",
            "Sizes of the objects this shard uploaded.",
        ),
        |s| s.object_size.snapshot(),
    );
    per_shard(
        o,
        shards,
        &histogram(
            "ringtail_object_upload_duration_seconds",
            "Seconds from a sealed object to its commit in the manifest (PUT retries included).",
        ),
        |s| s.object_upload_latency.snapshot(),
    );
}

/// How long produces wait for their acknowledgement, and how deep connections pipeline.
fn acknowledgements(o: &mut Out, shards: &[Arc<ShardStats>]) {
    let by_mode = shards.iter().flat_map(|s| {
        Durability::ALL.into_iter().map(move |d| {
            let labels = format!("{},durability=\"{}\"", shard_label(s), d.name());
            (labels, s.produce_ack_wait[d.index()].snapshot())
        })
    });
    o.family(
        &histogram(
            "ringtail_produce_ack_wait_seconds",
            "Seconds from a produce's dispatch on its partition's shard to its acknowledgement, \
             by the topic's durability (wal: the WAL write; object: the upload).",
        ),
        by_mode,
    );
    per_shard(
        o,
        shards,
        &histogram(
            "ringtail_connection_requests_in_flight",
            "Per request read: its connection's unanswered requests, itself included (at most \
             32: pipelined connections).",
        ),
        |s| s.requests_in_flight.snapshot(),
    );
}

/// Cold reads through the span caches of each shard's slots.
const SPAN_CACHE_SERIES: &[ShardSeries] = &[
    (
        counter(
            "ringtail_span_cache_hits_total",
            "Cold reads answered from spans the span cache held (no GET).",
        ),
        |s| s.span_cache.hits.load(Relaxed),
    ),
    (
        counter(
            "ringtail_span_cache_misses_total",
            "Cold reads of spans the span cache did not hold: they joined a GET under way (a \
             read-ahead's or another reader's) or started one.",
        ),
        |s| s.span_cache.misses.load(Relaxed),
    ),
    (
        counter(
            "ringtail_span_cache_gets_total",
            "Ranged GETs of spans the span cache started, for cold reads and read-ahead.",
        ),
        |s| s.span_cache.gets.load(Relaxed),
    ),
    (
        counter(
            "ringtail_span_cache_read_ahead_gets_total",
            "Of those, read-ahead GETs: a partition's next spans, started by a cold read.",
        ),
        |s| s.span_cache.read_ahead_gets.load(Relaxed),
    ),
    (
        gauge(
            "ringtail_span_cache_bytes",
            "Bytes of object spans held in memory for cold reads (the span cache).",
        ),
        |s| s.span_cache.bytes.load(Relaxed),
    ),
    (
        counter(
            "ringtail_span_cache_evicted_bytes_total",
            "Bytes that left the span cache, least recently used first.",
        ),
        |s| s.span_cache.evicted_bytes.load(Relaxed),
    ),
];

/// Object-store requests of the process, by operation.
fn store_requests(o: &mut Out, store: &StoreMetrics) {
    let by_op = |value: fn(&OpStats) -> u64| {
        let ops = store.ops.iter();
        ops.map(move |op| (format!("op=\"{}\"", op.name), value(op)))
    };
    o.family(
        &counter(
            "ringtail_store_requests_total",
            "Object-store requests, by operation.",
        ),
        by_op(|op| op.requests.load(Relaxed)),
    );
    o.family(
        &counter(
            "ringtail_store_bytes_total",
            "Bytes sent (put, upload_part) and received (get) by object-store requests.",
        ),
        by_op(|op| op.bytes.load(Relaxed)),
    );
    let errors = store.ops.iter().flat_map(|op| {
        let kinds = ERROR_KINDS.iter().zip(&op.errors);
        kinds.map(|(kind, n)| {
            (
                format!("op=\"{}\",kind=\"{kind}\"", op.name),
                n.load(Relaxed),
            )
        })
    });
    o.family(
        &counter(
            "ringtail_store_errors_total",
            "Failed object-store requests by operation and kind; throttled (503 SlowDown) and \
             transient ones are retried with backoff.",
        ),
        errors,
    );
    let latency = store.ops.iter();
    let latency = latency.map(|op| (format!("op=\"{}\"", op.name), op.latency.snapshot()));
    o.family(
        &histogram(
            "ringtail_store_request_duration_seconds",
            "Seconds per object-store request, by operation.",
        ),
        latency,
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::time::Duration;

    use ringtail_shards::stats::Histogram;

    use super::*;
    use crate::metrics::{CommittedOffset, PartitionOffsets};

    fn sources(shards: Vec<Arc<ShardStats>>) -> Sources {
        Sources {
            shards,
            store: Some(Arc::new(StoreMetrics::default())),
            partition_limit: 10,
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The lines of family `name` in `text`: its HELP and TYPE lines and its series.
    fn family<'a>(text: &'a str, name: &str) -> &'a str {
        let start = text.find(&format!("# HELP {name} ")).expect(name);
        let rest = &text[start..];
        let end = rest[1..].find("# HELP ").map_or(rest.len(), |e| e + 1);
        &rest[..end]
    }

    fn wal_metrics(writes: u64) -> WalMetrics {
        WalMetrics {
            writes: AtomicU64::new(writes),
            entries: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            superblock_writes: AtomicU64::new(0),
            write_latency: Histogram::latency(),
            write_size: Histogram::sizes(),
            used_bytes: AtomicU64::new(0),
            ring_bytes: AtomicU64::new(0),
        }
    }

    /// A few families' exact text, from stats built by hand: by shard and label, by WAL ring,
    /// by API (only APIs that saw a request), by shard (the span cache), by group.
    #[test]
    fn families_render_exactly() {
        let a = Arc::new(ShardStats::new(0));
        let b = Arc::new(ShardStats::new(1));
        a.connections_closed_idle.store(3, Relaxed);
        b.connections_closed_send_timeout.store(1, Relaxed);
        for (slot, writes) in [(4, 7), (1, 2)] {
            a.wal
                .lock()
                .unwrap()
                .insert(slot, Arc::new(wal_metrics(writes)));
        }
        b.request(ApiKey::Metadata as i16, Duration::from_millis(1));
        b.request(ApiKey::Metadata as i16, Duration::from_millis(1));
        a.span_cache.hits.store(5, Relaxed);
        b.span_cache.bytes.store(4096, Relaxed);
        a.offsets.lock().unwrap().partitions.push(PartitionOffsets {
            topic: "t".into(),
            partition: 0,
            log_start: 0,
            log_end: 10,
            high_watermark: 10,
        });
        for (group, offset) in [("h", 12), ("g", 4)] {
            b.offsets.lock().unwrap().committed.push(CommittedOffset {
                group: group.into(),
                topic: "t".into(),
                partition: 0,
                offset,
            });
        }
        let text = render(&sources(vec![a, b]));
        assert_eq!(
            family(&text, "ringtail_connections_closed_total"),
            r#"# HELP ringtail_connections_closed_total Connections the broker closed, by reason: idle (--connections-max-idle-ms), request_read_timeout (a request not received whole in time), send_timeout (a response not taken in time).
# TYPE ringtail_connections_closed_total counter
ringtail_connections_closed_total{shard="0",reason="idle"} 3
ringtail_connections_closed_total{shard="0",reason="request_read_timeout"} 0
ringtail_connections_closed_total{shard="0",reason="send_timeout"} 0
ringtail_connections_closed_total{shard="1",reason="idle"} 0
ringtail_connections_closed_total{shard="1",reason="request_read_timeout"} 0
ringtail_connections_closed_total{shard="1",reason="send_timeout"} 1
"#
        );
        assert_eq!(
            family(&text, "ringtail_wal_writes_total"),
            r#"# HELP ringtail_wal_writes_total Chunk writes to the WAL ring (each one durability barrier: group commit).
# TYPE ringtail_wal_writes_total counter
ringtail_wal_writes_total{shard="0",slot="1"} 2
ringtail_wal_writes_total{shard="0",slot="4"} 7
"#
        );
        assert_eq!(
            family(&text, "ringtail_requests_total"),
            r#"# HELP ringtail_requests_total Requests handled, by API.
# TYPE ringtail_requests_total counter
ringtail_requests_total{shard="1",api="Metadata"} 2
"#
        );
        assert_eq!(
            family(&text, "ringtail_span_cache_hits_total"),
            r#"# HELP ringtail_span_cache_hits_total Cold reads answered from spans the span cache held (no GET).
# TYPE ringtail_span_cache_hits_total counter
ringtail_span_cache_hits_total{shard="0"} 5
ringtail_span_cache_hits_total{shard="1"} 0
"#
        );
        assert_eq!(
            family(&text, "ringtail_span_cache_bytes"),
            r#"# HELP ringtail_span_cache_bytes Bytes of object spans held in memory for cold reads (the span cache).
# TYPE ringtail_span_cache_bytes gauge
ringtail_span_cache_bytes{shard="0"} 0
ringtail_span_cache_bytes{shard="1"} 4096
"#
        );
        assert_eq!(
            family(&text, "ringtail_group_lag"),
            r#"# HELP ringtail_group_lag Records between a group's committed offset and the partition's high watermark.
# TYPE ringtail_group_lag gauge
ringtail_group_lag{group="g",topic="t",partition="0"} 6
ringtail_group_lag{group="h",topic="t",partition="0"} 0
"#
        );
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
