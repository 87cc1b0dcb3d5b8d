//! The metrics endpoint after real traffic: counters and histograms moved by exactly what the
//! test caused; partition offsets and group lag; the span cache after cold reads; /health and
//! /ready; the slow-request log in JSON.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::Raw;
use common::TestBroker;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    ApiKey, GroupId, OffsetCommitRequest, OffsetCommitResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;

fn batch(n: usize) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let values = (0..n).map(|i| Some(Bytes::from(format!("value-{i:04}"))));
    ringtail_netio::batch::testing::encode(values, now, Compression::None).freeze()
}

fn produce(raw: &mut Raw, topic: &str, records: Bytes) -> i16 {
    raw.produce(topic, 0, records, -1).0
}

const SPAN_CACHE_FAMILIES: [&str; 6] = [
    "ringtail_span_cache_hits_total",
    "ringtail_span_cache_misses_total",
    "ringtail_span_cache_gets_total",
    "ringtail_span_cache_read_ahead_gets_total",
    "ringtail_span_cache_bytes",
    "ringtail_span_cache_evicted_bytes_total",
];

/// Scrapes until `ok` holds for the metrics (they are published up to a second late).
fn wait_for(
    b: &TestBroker,
    what: &str,
    ok: impl Fn(&std::collections::BTreeMap<String, u64>) -> bool,
) -> std::collections::BTreeMap<String, u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = b.metrics();
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}: {m:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_what_the_clients_did() {
    let b = TestBroker::start(&["--shards", "2"]);
    assert_eq!(b.http_get("/health").0, 200);
    assert_eq!(b.http_get("/ready"), (200, "ready\n".to_string()));
    common::create_topic(&b.bootstrap(), "m", 1, &[]).await;
    let before = b.metrics();

    let mut raw = Raw::connect(b.addr);
    let one = batch(10);
    for _ in 0..3 {
        assert_eq!(produce(&mut raw, "m", one.clone()), 0);
    }
    assert_eq!(produce(&mut raw, "no-such-topic", one.clone()), 3);
    let m = b.metrics();
    let delta = |k: &str| m.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(
        delta("ringtail_requests_total{api=\"Produce\"}"),
        4,
        "{m:#?}"
    );
    assert_eq!(
        delta("ringtail_request_duration_seconds_count{api=\"Produce\"}"),
        4
    );
    assert_eq!(
        delta("ringtail_request_errors_total{api=\"Produce\",error=\"UnknownTopicOrPartition\"}"),
        1
    );
    assert_eq!(delta("ringtail_produce_records_total"), 30);
    assert_eq!(delta("ringtail_produce_bytes_total"), 3 * one.len() as u64);
    let writes = delta("ringtail_wal_writes_total");
    assert!(
        (1..=3).contains(&writes),
        "{writes} WAL writes for 3 produces"
    );
    assert!(delta("ringtail_wal_written_bytes_total") >= 3 * one.len() as u64);
    assert_eq!(
        m["ringtail_wal_write_duration_seconds_count"], m["ringtail_wal_writes_total"],
        "one latency sample per write"
    );
    assert_eq!(m["ringtail_connections"], 1, "the raw connection is open");
    assert!(m["ringtail_connections_accepted_total"] >= 2);
    assert_eq!(m["ringtail_ready"], 1);
    for name in SPAN_CACHE_FAMILIES {
        assert_eq!(m.get(name), Some(&0), "{name}: no cold read yet");
    }

    // Consumption: every record byte comes back, from memory (the hot tail).
    let (read, _) = common::read_all(&b.bootstrap(), "m", 1);
    assert_eq!(read.len(), 30);
    let m = b.metrics();
    assert!(
        m["ringtail_fetch_bytes_total{source=\"memory\"}"] >= 3 * one.len() as u64,
        "{m:#?}"
    );

    // A group's committed offset, and its lag behind the high watermark.
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("m")))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(12)])]);
    let resp: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 2, &commit);
    assert_eq!(resp.topics[0].partitions[0].error_code, 0);
    let m = wait_for(&b, "lag published", |m| {
        m.get("ringtail_group_lag{group=\"g\",topic=\"m\",partition=\"0\"}") == Some(&18)
    });
    assert_eq!(
        m["ringtail_partition_high_watermark{topic=\"m\",partition=\"0\"}"],
        30
    );
    assert_eq!(
        m["ringtail_partition_log_end_offset{topic=\"m\",partition=\"0\"}"],
        30
    );
    assert_eq!(
        m["ringtail_group_committed_offset{group=\"g\",topic=\"m\",partition=\"0\"}"],
        12
    );

    // The object tier (a local directory by default): the batches go up in an object.
    let m = wait_for(&b, "uploaded", |m| {
        m.get("ringtail_object_size_bytes_count")
            .copied()
            .unwrap_or(0)
            >= 1
            && m["ringtail_upload_pending_bytes"] == 0
    });
    assert!(
        m["ringtail_store_requests_total{op=\"put\"}"] >= 2,
        "object and manifest"
    );
    assert!(m["ringtail_store_bytes_total{op=\"put\"}"] >= 3 * one.len() as u64);
    assert_eq!(
        m["ringtail_object_upload_duration_seconds_count"],
        m["ringtail_object_size_bytes_count"]
    );
    assert_eq!(
        m["ringtail_store_errors_total{op=\"put\",kind=\"throttled\"}"],
        0
    );
    drop(raw);
    wait_for(&b, "connection closed", |m| m["ringtail_connections"] == 0);
}

/// Without a hot-tail cache, uploaded batches leave memory at once: a consumer reads them from
/// their object through the span cache (a miss and a GET), and a second consumer finds the spans
/// held (hits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_reads_move_the_span_cache_series() {
    let b = TestBroker::start(&[
        "--shards",
        "2",
        "--hot-cache-bytes-per-shard",
        "0",
        "--object-age-max-ms",
        "50",
    ]);
    common::create_topic(&b.bootstrap(), "cold", 1, &[]).await;
    let mut raw = Raw::connect(b.addr);
    let one = batch(10);
    for _ in 0..3 {
        assert_eq!(produce(&mut raw, "cold", one.clone()), 0);
    }
    let before = wait_for(&b, "uploaded and out of memory", |m| {
        m.get("ringtail_object_size_bytes_count")
            .copied()
            .unwrap_or(0)
            >= 1
            && m["ringtail_upload_pending_bytes"] == 0
            && m["ringtail_hot_cache_bytes"] == 0
    });
    let (read, _) = common::read_all(&b.bootstrap(), "cold", 1);
    assert_eq!(read.len(), 30);
    let first = b.metrics();
    let moved = |m: &std::collections::BTreeMap<String, u64>, k: &str| m[k] - before[k];
    assert!(
        moved(&first, "ringtail_fetch_reads_total{source=\"object\"}") >= 1,
        "{first:#?}"
    );
    assert!(moved(&first, "ringtail_span_cache_misses_total") >= 1);
    assert!(moved(&first, "ringtail_span_cache_gets_total") >= 1);
    assert!(first["ringtail_span_cache_bytes"] >= 3 * one.len() as u64);
    assert_eq!(first["ringtail_span_cache_evicted_bytes_total"], 0);

    let (again, _) = common::read_all(&b.bootstrap(), "cold", 1);
    assert_eq!(again, read);
    let second = b.metrics();
    assert!(
        moved(&second, "ringtail_span_cache_hits_total")
            > moved(&first, "ringtail_span_cache_hits_total"),
        "the second reader found the spans held: {second:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_are_logged_as_json_and_partition_series_can_be_off() {
    let b = TestBroker::start(&[
        "--slow-request-ms",
        "1",
        "--log-format",
        "json",
        "--metrics-partition-limit",
        "0",
        "--object-age-max-ms",
        "300",
    ]);
    // A durability=object produce waits for its object: the WAL write, the shard's next upload
    // tick (0–100 ms away), the upload and the manifest commit — always over 1 ms.
    common::create_topic(&b.bootstrap(), "slow", 1, &[("durability", "object")]).await;
    let mut raw = Raw::connect(b.addr);
    assert_eq!(produce(&mut raw, "slow", batch(1)), 0);
    let m = b.metrics();
    assert!(m["ringtail_slow_requests_total"] >= 1, "{m:#?}");
    assert!(!m
        .keys()
        .any(|k| k.starts_with("ringtail_partition_log_end_offset{")));
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let found = b
            .log_lines()
            .into_iter()
            .find(|l| l.contains("slow request") && l.contains("Produce"));
        if let Some(l) = found {
            break l;
        }
        assert!(Instant::now() < deadline, "no slow-request log line");
        std::thread::sleep(Duration::from_millis(50));
    };
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["fields"]["message"], "slow request", "{line}");
    assert_eq!(v["fields"]["api"], "Produce");
    assert!(v["fields"]["elapsed_ms"].as_u64().unwrap() >= 1);
    assert_eq!(v["fields"]["client_id"], "raw-test");
}
