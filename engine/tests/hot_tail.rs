//! The hot tail: consumers near the log end are served from memory — also after the batches
//! were uploaded, while the hot-tail cache has room — and fetch responses carry the stored
//! buffers to the socket without copying record bytes (counted by the broker, scraped from
//! `/metrics`). With no cache room, the same reads come from objects, still without copies.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TestBroker;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Produces `n` 10 KB records over 2 partitions; returns what was acknowledged where.
async fn produce(b: &TestBroker, n: usize) -> BTreeMap<(i32, i64), Vec<u8>> {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let v: Vec<u8> = (0..10_000).map(|j| ((i * 7 + j) % 251) as u8).collect();
        let d = p
            .send(
                FutureRecord::<(), Vec<u8>>::to("hot")
                    .partition((i % 2) as i32)
                    .payload(&v),
                TIMEOUT,
            )
            .await
            .unwrap();
        acked.insert((d.partition, d.offset), v);
    }
    acked
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
    let acked = produce(&b, 200).await;
    let produced: u64 = acked.values().map(|v| v.len() as u64).sum();
    wait_uploaded(objects.path());
    let (read, lows) = common::read_all(&b.bootstrap(), "hot", 2);
    assert_eq!(lows, vec![0, 0]);
    assert!(
        read == acked,
        "librdkafka reads back exactly what it produced"
    );
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

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// 200 consumers long-polling an empty partition cost the broker (almost) no CPU: they wait on
/// the partition, not on a timer. One produce wakes them all, and each gets the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_long_polls_cost_no_cpu_and_one_produce_wakes_them_all() {
    use common::raw::Raw;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{
        ApiKey, FetchRequest, FetchResponse, ResponseHeader, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};

    const CONSUMERS: usize = 200;
    let b = TestBroker::start(&["--shards", "2"]);
    common::create_topic(&b.bootstrap(), "idle", 1, &[]).await;
    let request = FetchRequest::default()
        .with_max_wait_ms(60_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("idle")))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let mut consumers: Vec<Raw> = (0..CONSUMERS)
        .map(|_| {
            let mut raw = Raw::connect(b.addr);
            let frame = raw.encode(ApiKey::Fetch, 11, &request);
            raw.send_frame(&frame);
            raw
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(b.pid());
    let idle = Duration::from_secs(3);
    std::thread::sleep(idle);
    let busy = (cpu_seconds(b.pid()) - before) / idle.as_secs_f64();
    println!(
        "{CONSUMERS} parked long-polls: broker CPU {:.1}% of one core",
        busy * 100.0
    );
    assert!(
        busy < 0.10,
        "idle long-polls cost {:.0}% of a core",
        busy * 100.0
    );

    // One record wakes every one of them.
    let started = Instant::now();
    let readers: Vec<_> = consumers
        .drain(..)
        .map(|mut raw| {
            std::thread::spawn(move || {
                let mut frame = raw.read_frame().expect("fetch answered");
                let at = started.elapsed();
                ResponseHeader::decode(&mut frame, FetchResponse::header_version(11)).unwrap();
                let resp = FetchResponse::decode(&mut frame, 11).unwrap();
                let p = &resp.responses[0].partitions[0];
                assert_eq!((p.error_code, p.high_watermark), (0, 1));
                assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()));
                at
            })
        })
        .collect();
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .unwrap();
    let sent = Instant::now();
    p.send(
        FutureRecord::<(), [u8]>::to("idle")
            .partition(0)
            .payload(b"wake"),
        TIMEOUT,
    )
    .await
    .unwrap();
    let acked = sent.elapsed();
    let mut woke: Vec<Duration> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    woke.sort();
    let since_send = |d: Duration| d.saturating_sub(sent - started);
    println!(
        "wake after produce: ack {:?}; consumers p50 {:?}, max {:?} (debug build)",
        acked,
        since_send(woke[CONSUMERS / 2]),
        since_send(woke[CONSUMERS - 1])
    );
}
