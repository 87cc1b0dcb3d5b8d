//! Prometheus text metrics over HTTP (`--metrics-listen`), served from a thread of its own so
//! that a scrape never runs on a shard: each shard owns its counters ([`ShardStats`], relaxed
//! atomics written only by that shard) and the endpoint only reads them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::partitions::ShardStats;

/// One metric family: name, type, help, and its series as (label set, counter).
type Family = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, fn(&ShardStats) -> &AtomicU64)],
);

const FAMILIES: &[Family] = &[
    (
        "ringtail_fetch_reads_total",
        "counter",
        "Partition reads that returned records to a fetch, by source: memory (the hot tail) or object (committed objects, through the span cache).",
        &[
            ("source=\"memory\"", |s| &s.fetch_memory_reads),
            ("source=\"object\"", |s| &s.fetch_object_reads),
        ],
    ),
    (
        "ringtail_fetch_bytes_total",
        "counter",
        "Record bytes returned to fetches, by source.",
        &[
            ("source=\"memory\"", |s| &s.fetch_memory_bytes),
            ("source=\"object\"", |s| &s.fetch_object_bytes),
        ],
    ),
    (
        "ringtail_fetch_sent_record_bytes_total",
        "counter",
        "Record bytes written to fetch responses on this shard's connections.",
        &[("", |s| &s.fetch_sent_record_bytes)],
    ),
    (
        "ringtail_fetch_copied_record_bytes_total",
        "counter",
        "Of those, bytes copied in user space to build the response (0 when the vectored send carries the stored buffers).",
        &[("", |s| &s.fetch_copied_record_bytes)],
    ),
    (
        "ringtail_hot_cache_bytes",
        "gauge",
        "Uploaded batches kept in memory for tail consumers (the hot-tail cache).",
        &[("", |s| &s.hot_cache_bytes)],
    ),
    (
        "ringtail_hot_cache_evicted_bytes_total",
        "counter",
        "Bytes that left the hot-tail cache (they are read from objects from then on).",
        &[("", |s| &s.hot_cache_evicted_bytes)],
    ),
];

/// The Prometheus text exposition of every shard's counters.
pub fn render(shards: &[Arc<ShardStats>]) -> String {
    let mut out = String::new();
    for (name, kind, help, series) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, stats) in shards.iter().enumerate() {
            for (labels, counter) in *series {
                let sep = if labels.is_empty() { "" } else { "," };
                let value = counter(stats).load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"{sep}{labels}}} {value}");
            }
        }
    }
    out
}

/// Serves `/metrics` (and `/health`) on `addr` from a thread of its own; returns the bound
/// address.
pub fn serve(
    addr: std::net::SocketAddr,
    shards: Vec<Arc<ShardStats>>,
) -> anyhow::Result<std::net::SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow::anyhow!("metrics endpoint on {addr}: not an IP address"))?;
    std::thread::Builder::new()
        .name("ringtail-metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, body, kind) = match request.url() {
                    "/metrics" => (200, render(&shards), "text/plain; version=0.0.4"),
                    "/health" => (200, "ok\n".to_string(), "text/plain"),
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

    #[test]
    fn every_shard_and_source_is_a_series() {
        let a = Arc::new(ShardStats::default());
        let b = Arc::new(ShardStats::default());
        a.fetch_memory_bytes.store(42, Ordering::Relaxed);
        b.fetch_object_reads.store(7, Ordering::Relaxed);
        let text = render(&[a, b]);
        assert!(text.contains("ringtail_fetch_bytes_total{shard=\"0\",source=\"memory\"} 42\n"));
        assert!(text.contains("ringtail_fetch_reads_total{shard=\"1\",source=\"object\"} 7\n"));
        assert!(text.contains("ringtail_hot_cache_bytes{shard=\"1\"} 0\n"));
        assert!(text.contains("# TYPE ringtail_hot_cache_bytes gauge\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(
                series.ends_with('}') && value.parse::<u64>().is_ok(),
                "{line}"
            );
        }
    }
}
