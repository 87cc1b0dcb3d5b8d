//! Requests that are valid but hostile: each must cost the broker little (CPU, memory, response
//! size), get the answer Kafka gives, and leave the broker serving everyone else.

mod common;

use std::time::{Duration, Instant};

use common::raw::{records, Raw};
use common::TestBroker;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn create(raw: &mut Raw, topic: &str, partitions: i32) {
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(1)]);
    let resp: CreateTopicsResponse = raw.call(ApiKey::CreateTopics, 7, &req);
    assert_eq!(resp.topics[0].error_code, 0, "create {topic}");
}

fn fetch_request(topic: &str, offset: i64, min_bytes: i32, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(50 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(10 << 20)])])
}

/// (error code, high watermark, record bytes returned).
fn fetch_answer(resp: &FetchResponse) -> (i16, i64, usize) {
    let p = &resp.responses[0].partitions[0];
    (
        p.error_code,
        p.high_watermark,
        p.records.as_ref().map_or(0, |r| r.len()),
    )
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

/// Issue #17 item 11: a fetch whose `min_bytes` is above what the partition holds (but the
/// partition is not empty) waits for new data or its `max_wait_ms` without burning CPU: it
/// once re-armed its wake-up at the fetch offset, which fired at once, and spun until the
/// deadline. It still answers as soon as enough data arrives, and at `max_wait_ms` with what
/// there is.
#[test]
fn fetch_below_min_bytes_waits_without_spinning() {
    const CONSUMERS: usize = 4;
    const WAIT_MS: i32 = 2_000;
    let b = TestBroker::start(&["--shards", "2"]);
    let mut raw = Raw::connect(b.addr);
    create(&mut raw, "small", 1);
    assert_eq!(raw.produce("small", 0, records(&[b"12345"]), -1), (0, 0));

    // CONSUMERS connections, each fetching with min_bytes 1 MB again and again for 6 s.
    let window = Duration::from_secs(6);
    let before = cpu_seconds(b.pid());
    let started = Instant::now();
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let mut raw = Raw::connect(b.addr);
            std::thread::spawn(move || {
                let mut waits = Vec::new();
                while started.elapsed() < window {
                    let sent = Instant::now();
                    let resp: FetchResponse = raw.call(
                        ApiKey::Fetch,
                        11,
                        &fetch_request("small", 0, 1_000_000, WAIT_MS),
                    );
                    waits.push(sent.elapsed());
                    let (error, hwm, bytes) = fetch_answer(&resp);
                    assert_eq!((error, hwm), (0, 1));
                    assert!(bytes > 0, "answered at max_wait with what there is");
                }
                waits
            })
        })
        .collect();
    let waits: Vec<Duration> = consumers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(b.pid()) - before;
    println!(
        "{CONSUMERS} fetches with min_bytes above the data, {} answers in {elapsed:?}: broker CPU {cpu:.2} s",
        waits.len()
    );
    for w in &waits {
        assert!(
            *w >= Duration::from_millis(WAIT_MS as u64 - 100),
            "answered before max_wait_ms without min_bytes: {w:?}"
        );
    }
    assert!(
        cpu < 0.5,
        "waiting fetches cost the broker {cpu:.2} CPU-seconds in {elapsed:?}"
    );

    // A waiting fetch answers once enough data has arrived, batch by batch: min_bytes needs
    // the existing batch and three more, produced 300 ms apart.
    let one = records(&[b"12345"]).len() as i32;
    let mut waiter = Raw::connect(b.addr);
    let frame = waiter.encode(
        ApiKey::Fetch,
        11,
        &fetch_request("small", 0, 4 * one, 20_000),
    );
    waiter.send_frame(&frame);
    let sent = Instant::now();
    for i in 1..=3 {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(raw.produce("small", 0, records(&[b"12345"]), -1), (0, i));
    }
    let resp: FetchResponse = waiter.answer(11);
    let answered = sent.elapsed();
    println!("fetch for 4 batches produced 300 ms apart answered after {answered:?}");
    assert_eq!(fetch_answer(&resp), (0, 4, 4 * one as usize));
    assert!(
        answered < Duration::from_secs(5),
        "answered after {answered:?}, not when min_bytes arrived"
    );
}
