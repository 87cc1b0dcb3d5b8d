//! Tail consumption against raw loopback TCP, measured in the same run.
//!
//! For 1 KiB and 16 KiB records and 1 and 8 consumers (one partition each): the log is filled,
//! then each consumer fetches its partition from offset 0 to the end as fast as it can (8 MiB
//! fetches, responses read in full, batch headers parsed to find the next offset). Baseline: the
//! same number of loopback connections carrying the same bytes in 8 MiB writes. Then produce →
//! consume latency for a long-polling tail consumer at a fixed rate.
//!
//! `cargo bench -p ringtail-engine --bench tail -- [MiB per consumer, default 128]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::Raw;
use common::TestBroker;
use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};
use kafka_protocol::records::Compression;
use ringtail_netio::header::BatchHeader;

const FETCH_BYTES: i32 = 8 << 20;
/// Broker and baseline runs per setting, alternated.
const REPEATS: usize = 5;

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("tail"))
}

fn produce(raw: &mut Raw, partition: i32, batch: Bytes) {
    let req = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])]);
    let resp: ProduceResponse = raw.call(ApiKey::Produce, 9, &req);
    let code = resp.responses[0].partition_responses[0].error_code;
    assert_eq!(code, 0, "produce failed");
}

fn fetch_request(partition: i32, offset: i64, wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_BYTES)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic())
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(FETCH_BYTES)])])
}

/// Fetches one response; returns (next offset, the record set).
fn fetch(raw: &mut Raw, partition: i32, offset: i64, wait_ms: i32) -> (i64, Bytes) {
    let frame = raw.encode(
        ApiKey::Fetch,
        11,
        &fetch_request(partition, offset, wait_ms),
    );
    raw.send_frame(&frame);
    let mut resp = raw.read_frame().expect("fetch response");
    ResponseHeader::decode(&mut resp, FetchResponse::header_version(11)).unwrap();
    let resp = FetchResponse::decode(&mut resp, 11).unwrap();
    let records = resp.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    let mut next = offset;
    let mut at = 0;
    while at < records.len() {
        let h = BatchHeader::parse(&records[at..]).expect("a whole batch");
        next = h.last_offset() + 1;
        at += h.size_bytes();
    }
    (next, records)
}

/// One fetch for the throughput runs, read the way a lean client would: into a buffer reused
/// across fetches (as the raw loopback receiver reuses its buffer), the v11 response parsed
/// in place for its single partition. Returns (record-set bytes, next offset).
fn fetch_into(raw: &mut Raw, buf: &mut Vec<u8>, partition: i32, offset: i64) -> (usize, i64) {
    let frame = raw.encode(ApiKey::Fetch, 11, &fetch_request(partition, offset, 0));
    raw.send_frame(&frame);
    let mut size = [0u8; 4];
    raw.s.read_exact(&mut size).unwrap();
    buf.clear();
    (&mut raw.s)
        .take(i32::from_be_bytes(size) as u64)
        .read_to_end(buf)
        .unwrap();
    // correlation, throttle, error, session, topics count, name, partitions count, index,
    // error, high watermark, last stable offset, log start, aborted (null), preferred replica.
    let name = i16::from_be_bytes([buf[18], buf[19]]) as usize;
    let at = 20 + name + 4 + 4 + 2 + 8 + 8 + 8 + 4 + 4;
    let len = i32::from_be_bytes(buf[at..at + 4].try_into().unwrap()).max(0) as usize;
    let records = &buf[at + 4..at + 4 + len];
    let (mut next, mut pos) = (offset, 0);
    while pos < records.len() {
        let h = BatchHeader::parse(&records[pos..]).expect("a whole batch");
        next = h.last_offset() + 1;
        pos += h.size_bytes();
    }
    (len, next)
}

/// MB/s of `consumers` parallel consumers reading their partitions to `end` from memory.
fn tail_consume(b: &TestBroker, consumers: usize, end: i64) -> f64 {
    let started = Instant::now();
    let threads: Vec<_> = (0..consumers)
        .map(|p| {
            let addr = b.addr;
            std::thread::spawn(move || {
                let mut raw = Raw::connect(addr);
                let mut buf = Vec::with_capacity(FETCH_BYTES as usize + 4096);
                let (mut offset, mut bytes) = (0i64, 0usize);
                while offset < end {
                    let (n, next) = fetch_into(&mut raw, &mut buf, p as i32, offset);
                    bytes += n;
                    offset = next;
                }
                bytes
            })
        })
        .collect();
    let bytes: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    bytes as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// MB/s of `connections` loopback TCP connections each carrying `bytes` in 8 MiB writes.
fn raw_loopback(connections: usize, bytes: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let started = Instant::now();
    let senders: Vec<_> = (0..connections)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let chunk = vec![7u8; FETCH_BYTES as usize];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len());
                    s.write_all(&chunk[..n]).unwrap();
                    left -= n;
                }
            })
        })
        .collect();
    let receivers: Vec<_> = (0..connections)
        .map(|_| {
            let (mut s, _) = listener.accept().unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let mut got = 0;
                while got < bytes {
                    got += s.read(&mut buf).unwrap();
                }
                got
            })
        })
        .collect();
    senders.into_iter().for_each(|t| t.join().unwrap());
    let got: usize = receivers.into_iter().map(|t| t.join().unwrap()).sum();
    got as f64 / started.elapsed().as_secs_f64() / 1e6
}

fn throughput(record_bytes: usize, consumers: usize, mib_per_consumer: usize) {
    // The default object tier (a local directory) lets the rings trim; the hot-tail cache
    // keeps the uploaded batches in memory, where tail consumers read them.
    let cache = (mib_per_consumer * consumers + 64) << 20;
    let b = TestBroker::start(&[
        "--shards",
        "2",
        "--wal-size-per-shard",
        "268435456",
        "--wal-max-write-bytes",
        "4194304",
        "--hot-cache-bytes-per-shard",
        &cache.to_string(),
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(common::create_topic(
        &b.bootstrap(),
        "tail",
        consumers as i32,
        &[],
    ));
    // Under the default max.message.bytes (1 MiB).
    let per_batch = ((512 << 10) / record_bytes).max(1);
    let value = Bytes::from(vec![42u8; record_bytes]);
    let batch = ringtail_netio::batch::testing::encode(
        (0..per_batch).map(|_| Some(value.clone())),
        ringtail_shards::now_ms(),
        Compression::None,
    )
    .freeze();
    let batches = mib_per_consumer * (1 << 20) / batch.len();
    let mut raw = Raw::connect(b.addr);
    for _ in 0..batches {
        for p in 0..consumers {
            produce(&mut raw, p as i32, batch.clone());
        }
    }
    let end = (batches * per_batch) as i64;
    std::thread::sleep(Duration::from_secs(2)); // the last uploads settle
                                                // Alternate broker and baseline runs (A/B/A/B...) so that a noisy machine shows as spread.
    let mut runs: Vec<(f64, f64)> = (0..REPEATS)
        .map(|_| {
            let broker = tail_consume(&b, consumers, end);
            (broker, raw_loopback(consumers, batches * batch.len()))
        })
        .collect();
    let m = b.metrics();
    assert_eq!(
        m["ringtail_fetch_bytes_total{source=\"object\"}"], 0,
        "all from memory"
    );
    assert_eq!(m["ringtail_fetch_copied_record_bytes_total"], 0);
    let ratios: Vec<f64> = runs.iter().map(|(b, r)| b / r).collect();
    runs.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
    let (broker, baseline) = runs[REPEATS / 2];
    println!(
        "| {} KiB | {consumers} | {broker:.0} | {baseline:.0} | {:.2} | {:.2}–{:.2} |",
        record_bytes / 1024,
        broker / baseline,
        ratios.iter().copied().fold(f64::MAX, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
}

/// Produce → consume latency: one producer at `rate` records/s (acks=1), one consumer
/// long-polling the tail; each record carries its send time.
fn latency(rate: u64, seconds: u64) {
    let b = TestBroker::start(&["--shards", "2"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(common::create_topic(&b.bootstrap(), "tail", 1, &[]));
    let origin = Instant::now();
    let total = rate * seconds;
    let addr = b.addr;
    let consumer = std::thread::spawn(move || {
        let mut raw = Raw::connect(addr);
        let mut hist = Histogram::<u64>::new(3).unwrap();
        let mut offset = 0i64;
        while (offset as u64) < total {
            let (next, records) = fetch(&mut raw, 0, offset, 500);
            let received = origin.elapsed().as_micros() as u64;
            let mut at = 0;
            while at < records.len() {
                let h = BatchHeader::parse(&records[at..]).unwrap();
                let mut one = records.slice(at..at + h.size_bytes());
                let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut one).unwrap();
                for r in set.records {
                    let v = r.value.unwrap();
                    let sent = u64::from_le_bytes(v[..8].try_into().unwrap());
                    hist.record(received.saturating_sub(sent).max(1)).unwrap();
                }
                at += h.size_bytes();
            }
            offset = next;
        }
        hist
    });
    let mut raw = Raw::connect(b.addr);
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    for i in 0..total {
        // Fixed schedule: latency counts from the intended send time (no coordinated omission).
        let due = interval * i as u32;
        if let Some(wait) = due.checked_sub(origin.elapsed()) {
            std::thread::sleep(wait);
        }
        let mut v = (due.as_micros() as u64).to_le_bytes().to_vec();
        v.resize(1024, 0);
        let batch = ringtail_netio::batch::testing::encode(
            [Some(Bytes::from(v))],
            ringtail_shards::now_ms(),
            Compression::None,
        )
        .freeze();
        produce(&mut raw, 0, batch);
    }
    let hist = consumer.join().unwrap();
    println!(
        "| {rate}/s, 1 KiB, acks=1 | {} | {} | {} | {} |",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
}

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    println!("Tail consume: {mib} MiB per consumer, 8 MiB fetches, from memory; baseline raw loopback TCP in the same run");
    println!("| record | consumers | broker MB/s | raw loopback MB/s | ratio (median run) | ratio min–max |");
    println!("|---|---:|---:|---:|---:|---:|");
    for record in [1024, 16 << 10] {
        for consumers in [1, 8] {
            throughput(record, consumers, mib);
        }
    }
    println!();
    println!("| produce → consume latency (µs) | p50 | p99 | p99.9 | max |");
    println!("|---|---:|---:|---:|---:|");
    latency(1000, 10);
}
