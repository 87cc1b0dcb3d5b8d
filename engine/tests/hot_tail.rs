//! The hot tail: consumers near the log end are served from memory — also after the batches
//! were uploaded, while the hot-tail cache has room — and fetch responses carry the stored
//! buffers to the socket without copying record bytes (counted by the broker, scraped from
//! `/metrics`). With no cache room, the same reads come from objects, still without copies.

mod common;

use std::time::{Duration, Instant};

use common::TestBroker;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn produce(b: &TestBroker, n: usize) -> u64 {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let mut bytes = 0;
    for i in 0..n {
        let v: Vec<u8> = (0..10_000).map(|j| ((i + j) % 251) as u8).collect();
        bytes += v.len() as u64;
        p.send(
            FutureRecord::<(), Vec<u8>>::to("hot")
                .partition((i % 2) as i32)
                .payload(&v),
            TIMEOUT,
        )
        .await
        .unwrap();
    }
    bytes
}

/// Waits until every object is committed (nothing left to upload, judged by the WAL trimming
/// to empty is not visible; the objects directory stops changing instead).
fn wait_uploaded(objects: &std::path::Path) {
    let count = || walk(objects).iter().filter(|p| p.ends_with(".rto")).count();
    let deadline = Instant::now() + TIMEOUT;
    let mut last = (count(), Instant::now());
    while last.1.elapsed() < Duration::from_millis(500) {
        assert!(Instant::now() < deadline, "uploads never settled");
        std::thread::sleep(Duration::from_millis(50));
        let now = count();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    assert!(last.0 > 0, "something was uploaded");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

async fn run(hot_cache_bytes: &str) -> std::collections::BTreeMap<String, u64> {
    let objects = tempfile::tempdir().unwrap();
    let store = format!("file://{}", objects.path().display());
    let b = TestBroker::start(&[
        "--shards",
        "2",
        "--object-store",
        &store,
        "--object-age-max-ms",
        "50",
        "--hot-cache-bytes-per-shard",
        hot_cache_bytes,
    ]);
    common::create_topic(&b.bootstrap(), "hot", 2, &[]).await;
    let produced = produce(&b, 200).await;
    wait_uploaded(objects.path());
    let (read, lows) = common::read_all(&b.bootstrap(), "hot", 2);
    assert_eq!((read.len(), lows), (200, vec![0, 0]));
    let m = b.metrics();
    let sent = m["ringtail_fetch_sent_record_bytes_total"];
    assert!(
        sent >= produced,
        "{sent} record bytes sent for {produced} produced"
    );
    assert_eq!(m["ringtail_fetch_copied_record_bytes_total"], 0, "{m:?}");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_tail_is_served_from_memory_without_copies() {
    let m = run("67108864").await;
    assert!(
        m["ringtail_fetch_bytes_total{source=\"memory\"}"] >= 2_000_000,
        "{m:?}"
    );
    assert_eq!(
        m["ringtail_fetch_bytes_total{source=\"object\"}"], 0,
        "{m:?}"
    );
    assert!(m["ringtail_hot_cache_bytes"] >= 2_000_000, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cache_room_reads_come_from_objects_without_copies() {
    let m = run("0").await;
    assert!(
        m["ringtail_fetch_bytes_total{source=\"object\"}"] >= 2_000_000,
        "{m:?}"
    );
    assert_eq!(m["ringtail_hot_cache_bytes"], 0, "{m:?}");
    assert!(
        m["ringtail_hot_cache_evicted_bytes_total"] >= 2_000_000,
        "{m:?}"
    );
}
