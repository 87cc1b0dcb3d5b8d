//! Soak: several hundred MiB (`RINGTAIL_SOAK_MIB`, default 256) through 2 shards with 32 MiB WAL
//! rings on SeaweedFS, with the S3 server killed for 30 s mid-run. The rings hold an eighth of
//! the data, so the run only completes if they trim behind committed objects; while S3 is away
//! the rings fill and producers retry. Then a broker on an empty data dir (cold caches, no WAL)
//! replays everything from offset 0 out of S3: every acknowledged record byte-exact.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestBroker;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 8;
const VALUE_BYTES: usize = 64 << 10;
const OUTAGE: Duration = Duration::from_secs(30);

/// Record `i`'s value: 64 KiB of xorshift output seeded by `i`, its index in front.
fn value(i: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(VALUE_BYTES);
    out.extend_from_slice(&i.to_le_bytes());
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < VALUE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn args(weed: &ringtail_objstore::testing::Seaweed) -> Vec<String> {
    let mut args: Vec<String> = [
        "--shards",
        "2",
        "--wal-size-per-shard",
        "33554432",
        "--wal-max-write-bytes",
        "4194304",
        "--object-age-max-ms",
        "500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(weed.broker_args("soak"));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_mib_through_small_rings_and_an_s3_outage_replay_cold() {
    let mib: u64 = std::env::var("RINGTAIL_SOAK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let records = mib * (1 << 20) / VALUE_BYTES as u64;
    let mut weed = ringtail_objstore::testing::Seaweed::start();
    let data = tempfile::tempdir().unwrap();
    let args = args(&weed);
    let args_ref: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let b = TestBroker::start_at(data.path(), &args_ref);
    common::create_topic(&b.bootstrap(), "soak", PARTITIONS, &[]).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("message.timeout.ms", "300000")
        .create()
        .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let produce = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut acked: BTreeMap<(i32, i64), u64> = BTreeMap::new();
            for chunk in (0..records).collect::<Vec<_>>().chunks(256) {
                let sends = chunk.iter().map(|&i| {
                    let producer = producer.clone();
                    async move {
                        let v = value(i);
                        let record = FutureRecord::<(), Vec<u8>>::to("soak")
                            .partition((i % PARTITIONS as u64) as i32)
                            .payload(&v);
                        let d = producer
                            .send(record, Duration::from_secs(300))
                            .await
                            .unwrap_or_else(|(e, _)| panic!("record {i}: {e}"));
                        ((d.partition, d.offset), i)
                    }
                });
                acked.extend(futures::future::join_all(sends).await);
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            acked
        })
    };
    // The S3 server dies a third of the way in and stays away for 30 s.
    while sent.load(Ordering::Relaxed) < records / 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    weed.kill();
    let killed_at = sent.load(Ordering::Relaxed);
    tokio::time::sleep(OUTAGE).await;
    let during = sent.load(Ordering::Relaxed) - killed_at;
    weed.restart();
    let acked = produce.await.unwrap();
    let produce_secs = started.elapsed().as_secs_f64();
    assert_eq!(acked.len() as u64, records);
    println!(
        "soak: {mib} MiB acknowledged in {produce_secs:.1} s ({} records acknowledged during the 30 s outage)",
        during
    );
    assert!(b.log_contains("retrying"), "the outage was felt");
    assert_eq!(b.terminate(), Some(0), "clean shutdown uploads the rest");

    // A fresh broker, nothing local: everything comes from S3.
    std::fs::remove_dir_all(data.path()).unwrap();
    let b = TestBroker::start_at(data.path(), &args_ref);
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", "soak-verify")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..PARTITIONS {
        let (low, high) = c
            .fetch_watermarks("soak", p, Duration::from_secs(60))
            .unwrap();
        assert_eq!(low, 0);
        ends.push(high);
        tpl.add_partition_offset("soak", p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let total: i64 = ends.iter().sum();
    let (mut read, mut extra, mut bytes) = (0i64, 0u64, 0u64);
    let mut next = vec![0i64; PARTITIONS as usize];
    let t = Instant::now();
    let mut last_progress = Instant::now();
    while read < total {
        assert!(
            last_progress.elapsed() < Duration::from_secs(120),
            "replay stalled at {read} of {total}"
        );
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        last_progress = Instant::now();
        let (p, o) = (m.partition(), m.offset());
        assert_eq!(o, next[p as usize], "partition {p}: offsets are dense");
        next[p as usize] += 1;
        read += 1;
        let payload = m.payload().unwrap();
        bytes += payload.len() as u64;
        match acked.get(&(p, o)) {
            Some(&i) => assert!(
                payload == value(i).as_slice(),
                "{p}/{o} differs from record {i}"
            ),
            // Without idempotence a retried batch may land twice (as with Kafka); it must
            // still be one of ours, whole.
            None => {
                let i = u64::from_le_bytes(payload[..8].try_into().unwrap());
                assert!(
                    payload == value(i).as_slice(),
                    "{p}/{o} is not a record we sent"
                );
                extra += 1;
            }
        }
    }
    let replay_secs = t.elapsed().as_secs_f64();
    println!(
        "soak: replayed {read} records ({:.0} MiB) cold from S3 in {replay_secs:.1} s ({:.0} MB/s); {extra} duplicates from producer retries",
        bytes as f64 / (1u64 << 20) as f64,
        bytes as f64 / replay_secs / 1e6
    );
    assert_eq!(b.terminate(), Some(0));
}
