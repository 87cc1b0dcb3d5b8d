//! Pipelined connections (ARCHITECTURE.md, "Pipelined connections"): a client that sends many
//! requests without reading gets every answer, in request order, with the effects in request
//! order; a barrier request runs after the answers before it.

mod common;

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use common::raw::{fetch_request, idempotent_records, produce_request, records, Raw};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};

fn create(raw: &mut Raw, name: &str, configs: &[(&str, &str)]) {
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.into())))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            )]);
    let created: CreateTopicsResponse = raw.call(ApiKey::CreateTopics, 7, &create);
    assert_eq!(created.topics[0].error_code, 0);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sent {
    Produce,
    Fetch,
    Metadata,
}

/// The answer's correlation id and body.
fn decode<P: Decodable + HeaderVersion>(mut frame: Bytes, version: i16) -> (i32, P) {
    let header = ResponseHeader::decode(&mut frame, P::header_version(version)).unwrap();
    (
        header.correlation_id,
        P::decode(&mut frame, version).unwrap(),
    )
}

/// Sends `n` requests to `topic` without reading (produces, with a fetch every 5th and a
/// metadata request every 7th), then reads every answer: they come in request order, the
/// produces' offsets follow the request order, and each fetch sees at least the produces
/// answered before it.
fn pipeline(raw: &mut Raw, topic: &str, n: usize) {
    let mut sent = Vec::new();
    for i in 0..n {
        let (kind, frame) = if i % 5 == 4 {
            (
                Sent::Fetch,
                raw.encode(ApiKey::Fetch, 11, &fetch_request(topic, 0)),
            )
        } else if i % 7 == 6 {
            let req = MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(StrBytes::from_string(topic.into()))))]));
            (Sent::Metadata, raw.encode(ApiKey::Metadata, 9, &req))
        } else {
            let value = format!("v{i}");
            let req = produce_request(topic, 0, records(&[value.as_bytes()]), -1);
            (Sent::Produce, raw.encode(ApiKey::Produce, 9, &req))
        };
        raw.send_frame(&frame);
        sent.push((raw.correlation, kind));
    }
    let mut next_offset = 0;
    let mut produced = 0;
    for (correlation, kind) in sent {
        let frame = raw.read_frame().expect("an answer per request");
        assert_eq!(
            (&frame[..4]).get_i32(),
            correlation,
            "answers in request order"
        );
        match kind {
            Sent::Produce => {
                let (_, r): (i32, ProduceResponse) = decode(frame, 9);
                let p = &r.responses[0].partition_responses[0];
                assert_eq!(p.error_code, 0);
                assert_eq!(p.base_offset, next_offset, "offsets in request order");
                next_offset += 1;
                produced += 1;
            }
            Sent::Fetch => {
                let (_, r): (i32, FetchResponse) = decode(frame, 11);
                let p = &r.responses[0].partitions[0];
                assert_eq!(p.error_code, 0);
                assert!(
                    p.high_watermark >= produced,
                    "a fetch sees the produces answered before it ({} < {produced})",
                    p.high_watermark
                );
            }
            Sent::Metadata => {
                let (_, r): (i32, MetadataResponse) = decode(frame, 9);
                assert_eq!(r.topics[0].error_code, 0);
            }
        }
    }
    assert!(produced > n as i64 / 2);
}

#[test]
fn pipelined_requests_are_answered_and_applied_in_request_order() {
    let broker = common::TestBroker::start(&[]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "pipe-wal", &[]);
    create(&mut raw, "pipe-object", &[("durability", "object")]);
    pipeline(&mut raw, "pipe-wal", 100);
    // Acknowledged only once uploaded: the connection keeps reading meanwhile.
    pipeline(&mut raw, "pipe-object", 100);
    let pipelined = broker.metrics()["ringtail_requests_pipelined_total"];
    assert!(pipelined > 0, "requests overlapped ({pipelined})");
}

/// A barrier (CreateTopics) sent behind produces is answered after them, and the produces
/// behind it go on in order.
#[test]
fn a_barrier_request_waits_for_the_answers_before_it() {
    let broker = common::TestBroker::start(&[]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "before", &[("durability", "object")]);
    let mut order = Vec::new();
    for i in 0..5 {
        let req = produce_request("before", 0, records(&[format!("a{i}").as_bytes()]), -1);
        let f = raw.encode(ApiKey::Produce, 9, &req);
        raw.send_frame(&f);
        order.push(raw.correlation);
    }
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("after")))
            .with_num_partitions(1)
            .with_replication_factor(1)]);
    let f = raw.encode(ApiKey::CreateTopics, 7, &create);
    raw.send_frame(&f);
    order.push(raw.correlation);
    for i in 0..5 {
        let req = produce_request("after", 0, records(&[format!("b{i}").as_bytes()]), -1);
        let f = raw.encode(ApiKey::Produce, 9, &req);
        raw.send_frame(&f);
        order.push(raw.correlation);
    }
    for (k, correlation) in order.into_iter().enumerate() {
        let frame = raw.read_frame().expect("an answer per request");
        assert_eq!((&frame[..4]).get_i32(), correlation);
        if k == 5 {
            let (_, r): (i32, CreateTopicsResponse) = decode(frame, 7);
            assert_eq!(r.topics[0].error_code, 0);
        } else {
            let (_, r): (i32, ProduceResponse) = decode(frame, 9);
            let p = &r.responses[0].partition_responses[0];
            assert_eq!((p.error_code, p.base_offset), (0, (k % 6) as i64));
        }
    }
}

/// A broker whose uploads of data objects fail while `outage` exists: durability=object
/// acknowledgements are held back for as long as the test needs them to be.
fn start_with_upload_outage(outage: &std::path::Path) -> common::TestBroker {
    let faults = format!("uploads-down-while={}", outage.display());
    common::TestBroker::start(&[
        "--object-age-max-ms",
        "20",
        "--object-store-faults",
        &faults,
    ])
}

/// Polls `done` until it holds, for at most `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(broker: &common::TestBroker, name: &str) -> u64 {
    broker.metrics().get(name).copied().unwrap_or(0)
}

const PIPELINED: &str = "ringtail_requests_pipelined_total";
const PRODUCES_ANSWERED: &str = "ringtail_requests_total{api=\"Produce\"}";

/// Whether a byte of an answer is waiting on the socket (nothing is consumed).
fn answer_waiting(raw: &Raw) -> bool {
    raw.s.set_nonblocking(true).unwrap();
    let peeked = raw.s.peek(&mut [0u8; 1]);
    raw.s.set_nonblocking(false).unwrap();
    match peeked {
        Ok(n) => n > 0,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("peek: {e}"),
    }
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// An idempotent producer with 5 requests in flight on one connection whose client then
/// retries the last 3 (as after a request timeout), still without reading: each retry is
/// answered like its original — error 0 and the original's offset, as Kafka answers a duplicate
/// of one of a producer's last 5 batches — never OUT_OF_ORDER_SEQUENCE_NUMBER, and the
/// partition holds each batch once, in sequence order. For durability=object the originals'
/// acknowledgements are held back (uploads down) until every retry is dispatched behind them.
#[test]
fn idempotent_retries_pipelined_behind_their_originals_get_the_original_offsets() {
    let ctl = tempfile::tempdir().unwrap();
    let outage = ctl.path().join("uploads-down");
    let broker = start_with_upload_outage(&outage);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "idem-wal", &[]);
    create(&mut raw, "idem-object", &[("durability", "object")]);
    let (pid, epoch) = raw.init_producer_id();
    for topic in ["idem-wal", "idem-object"] {
        let object = topic == "idem-object";
        if object {
            std::fs::write(&outage, b"").unwrap();
        }
        let pipelined = metric(&broker, PIPELINED);
        let batches: Vec<Bytes> = (0..5)
            .map(|seq| idempotent_records(pid, epoch, seq, &[format!("{topic}-{seq}").as_bytes()]))
            .collect();
        // Sequences 0..4 in flight, then the retries of 2, 3 and 4: the same batches again.
        let mut sent = Vec::new();
        for seq in [0, 1, 2, 3, 4, 2, 3, 4] {
            let req = produce_request(topic, 0, batches[seq].clone(), -1);
            let frame = raw.encode(ApiKey::Produce, 9, &req);
            raw.send_frame(&frame);
            sent.push((raw.correlation, seq as i64));
        }
        if object {
            // Every request dispatched, the first alone and 7 behind unanswered ones ...
            wait_until(Duration::from_secs(10), "8 produces dispatched", || {
                metric(&broker, PIPELINED) >= pipelined + 7
            });
            // ... and none acknowledged: the retries are in flight together with the originals.
            assert!(
                !answer_waiting(&raw),
                "durability=object: nothing is acknowledged while uploads are down"
            );
            std::fs::remove_file(&outage).unwrap();
        }
        for (correlation, seq) in sent {
            let frame = raw.read_frame().expect("an answer per request");
            let (c, r): (i32, ProduceResponse) = decode(frame, 9);
            assert_eq!(c, correlation, "answers in request order");
            let p = &r.responses[0].partition_responses[0];
            assert_ne!(
                p.error_code, 45,
                "{topic}: sequence {seq} refused as OUT_OF_ORDER_SEQUENCE_NUMBER"
            );
            assert_eq!(
                (p.error_code, p.base_offset),
                (0, seq),
                "{topic}: sequence {seq} (a retry is answered with its original offset)"
            );
        }
        let (high_watermark, read) = raw.fetch_records(topic, 0);
        let read: Vec<(i64, i32, Bytes)> = read
            .into_iter()
            .map(|r| (r.offset, r.sequence, r.value.unwrap_or_default()))
            .collect();
        let want: Vec<(i64, i32, Bytes)> = (0..5)
            .map(|s| (s as i64, s, Bytes::from(format!("{topic}-{s}"))))
            .collect();
        assert_eq!(high_watermark, 5, "{topic}: 5 batches, no duplicate");
        assert_eq!(read, want, "{topic}: each batch once, in sequence order");
    }
    let answered = broker.log_count("duplicate batch answered");
    println!("{answered} retries answered with their original offsets");
}

/// A client that writes up to 10,000 produce and metadata requests (~1 KiB each) and never
/// reads, to a durability=object topic whose acknowledgements are held back (uploads down):
/// the broker dispatches IN_FLIGHT_REQUESTS_MAX of them, then stops reading the connection
/// (TCP backpressure, P4), so the client's writes block and the broker's memory stays bounded;
/// another client is served promptly meanwhile. Once the client is gone and uploads are back,
/// the broker is healthy and the stuck connection is closed.
#[test]
fn a_client_that_never_reads_is_held_at_the_in_flight_bound() {
    const REQUESTS: usize = 10_000;
    const IN_FLIGHT_REQUESTS_MAX: u64 = 32; // engine/src/conn/serve.rs
    let ctl = tempfile::tempdir().unwrap();
    let outage = ctl.path().join("uploads-down");
    let mut broker = start_with_upload_outage(&outage);
    let mut other = Raw::connect(broker.addr);
    create(&mut other, "stuck", &[("durability", "object")]);
    create(&mut other, "healthy", &[]);
    assert_eq!(
        other.produce("healthy", 0, records(&[b"warm-up"]), -1),
        (0, 0)
    );
    std::fs::write(&outage, b"").unwrap();
    let connections = metric(&broker, "ringtail_connections");
    let pipelined = metric(&broker, PIPELINED);
    let rss_before = rss_kib(broker.pid());

    let mut stuck = Raw::connect(broker.addr);
    stuck
        .s
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let value = vec![b'x'; 1024];
    let (mut written, mut bytes) = (0usize, 0usize);
    let mut blocked = None;
    for i in 0..REQUESTS {
        let payload = if i % 10 == 9 {
            let req = MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(StrBytes::from_static_str("stuck"))))]));
            stuck.encode(ApiKey::Metadata, 9, &req)
        } else {
            let req = produce_request("stuck", 0, records(&[&value]), -1);
            stuck.encode(ApiKey::Produce, 9, &req)
        };
        let mut frame = (payload.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        match std::io::Write::write_all(&mut stuck.s, &frame) {
            Ok(()) => {
                written += 1;
                bytes += frame.len();
            }
            Err(e) => {
                blocked = Some(e);
                break;
            }
        }
    }
    // The broker holds the bound: IN_FLIGHT_REQUESTS_MAX dispatched (the first alone, the rest
    // behind it), none answered, nothing more read.
    wait_until(
        Duration::from_secs(10),
        "the in-flight bound reached",
        || metric(&broker, PIPELINED) >= pipelined + IN_FLIGHT_REQUESTS_MAX - 1,
    );

    // Another client is served, promptly, meanwhile.
    let t = Instant::now();
    for i in 1..=20i64 {
        let value = format!("healthy-{i}");
        assert_eq!(
            other.produce("healthy", 0, records(&[value.as_bytes()]), -1),
            (0, i)
        );
    }
    let (high_watermark, read) = other.fetch_records("healthy", 0);
    assert_eq!((high_watermark, read.len()), (21, 21));
    let served = t.elapsed();
    assert!(
        served < Duration::from_secs(5),
        "20 produces and a fetch took {served:?} beside the stuck client"
    );

    let rss_after = rss_kib(broker.pid());
    let dispatched = metric(&broker, PIPELINED) - pipelined + 1;
    let growth = rss_after.saturating_sub(rss_before);
    println!(
        "stuck client: wrote {written} of {REQUESTS} requests ({} KiB){}; the broker dispatched \
         {dispatched}; broker RSS {rss_before} KiB before, {rss_after} KiB after (+{growth} KiB); \
         20 produces and a fetch of another client took {served:?}",
        bytes / 1024,
        match &blocked {
            Some(e) => format!(", then a write blocked for 2 s ({e})"),
            None => String::new(),
        },
    );
    assert_eq!(
        dispatched, IN_FLIGHT_REQUESTS_MAX,
        "the broker stops reading at the bound (P4)"
    );
    if let Some(e) = &blocked {
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the write blocked rather than failed: {e}"
        );
    }
    // 32 requests of ~1 KiB in flight and a 64 KiB read buffer; reading all it was sent would
    // hold ~10 MiB of requests (and their batches) more.
    const RSS_GROWTH_MAX_KIB: u64 = 16 * 1024;
    assert!(
        blocked.is_some() || growth < RSS_GROWTH_MAX_KIB,
        "the client wrote all {REQUESTS} requests and the broker grew by {growth} KiB"
    );
    assert!(
        growth < RSS_GROWTH_MAX_KIB,
        "broker RSS grew by {growth} KiB with a client that never reads"
    );

    // The client gives up; uploads come back: the requests it left in flight complete, and its
    // connection is closed.
    drop(stuck);
    std::fs::remove_file(&outage).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the stuck connection closed",
        || metric(&broker, "ringtail_connections") < connections + 1,
    );
    let mut after = Raw::connect(broker.addr);
    let (error, offset) = after.produce("stuck", 0, records(&[b"after"]), -1);
    assert_eq!(error, 0);
    assert!(
        offset >= 1,
        "the stuck client's dispatched produces stay: {offset}"
    );
    assert_eq!(
        other.produce("healthy", 0, records(&[b"after"]), -1),
        (0, 21)
    );
    broker.assert_alive();
    assert!(!broker.log_contains("panicked"));
}

/// A client that sends 20 produces to a durability=object topic and closes its connection
/// without reading any answer, once with a FIN (close) and once with a reset (SO_LINGER 0),
/// while the produces wait for their uploads: the produces complete (P5: appended batches stay,
/// offsets are not reused) and the log is consistent — offsets contiguous from 0, each value
/// once, in request order; no answer is written after either; the broker stays healthy.
#[test]
fn a_connection_closed_with_produces_in_flight_keeps_their_effects() {
    const N: usize = 20;
    let ctl = tempfile::tempdir().unwrap();
    let outage = ctl.path().join("uploads-down");
    let mut broker = start_with_upload_outage(&outage);
    let mut admin = Raw::connect(broker.addr);
    for (topic, reset) in [("closed-fin", false), ("closed-reset", true)] {
        create(&mut admin, topic, &[("durability", "object")]);
        let connections = metric(&broker, "ringtail_connections");
        std::fs::write(&outage, b"").unwrap();
        let (pipelined, answered) = (
            metric(&broker, PIPELINED),
            metric(&broker, PRODUCES_ANSWERED),
        );
        let mut c = Raw::connect(broker.addr);
        for i in 0..N {
            let req = produce_request(topic, 0, records(&[format!("{topic}-{i}").as_bytes()]), -1);
            let frame = c.encode(ApiKey::Produce, 9, &req);
            c.send_frame(&frame);
        }
        // All dispatched, none answered (uploads are down).
        wait_until(Duration::from_secs(10), "20 produces dispatched", || {
            metric(&broker, PIPELINED) >= pipelined + N as u64 - 1
        });
        assert!(!answer_waiting(&c));
        if reset {
            socket2::SockRef::from(&c.s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(c);
        if reset {
            // The broker drops a reset connection at once; its requests complete detached.
            wait_until(
                Duration::from_secs(10),
                "the reset connection closed",
                || metric(&broker, "ringtail_connections") <= connections,
            );
        }
        std::fs::remove_file(&outage).unwrap();

        // The tier settles: nothing left to upload, the high watermark no longer moves.
        let mut reader = Raw::connect(broker.addr);
        let mut last = -1;
        let deadline = Instant::now() + Duration::from_secs(30);
        let (high_watermark, read) = loop {
            let (hw, read) = reader.fetch_records(topic, 0);
            if hw == last && metric(&broker, "ringtail_upload_pending_bytes") == 0 {
                break (hw, read);
            }
            assert!(Instant::now() < deadline, "the tier did not settle ({hw})");
            last = hw;
            std::thread::sleep(Duration::from_millis(100));
        };
        // A later produce waits for an upload after theirs: their completions have run.
        let (error, offset) = reader.produce(topic, 0, records(&[b"later"]), -1);
        assert_eq!(
            (error, offset),
            (0, high_watermark),
            "{topic}: offsets not reused"
        );

        let offsets: Vec<i64> = read.iter().map(|r| r.offset).collect();
        let values: Vec<Bytes> = read
            .into_iter()
            .map(|r| r.value.unwrap_or_default())
            .collect();
        assert_eq!(
            offsets,
            (0..high_watermark).collect::<Vec<_>>(),
            "{topic}: offsets contiguous from 0"
        );
        let want: Vec<Bytes> = (0..N)
            .map(|i| Bytes::from(format!("{topic}-{i}")))
            .collect();
        assert_eq!(
            values,
            want,
            "{topic}: every produce dispatched before the close is in the log, once, in request order"
        );
        // Produce answers written: the later produce's only (a FIN closes the connection as
        // a reset does, as in Kafka).
        wait_until(Duration::from_secs(10), "the later produce counted", || {
            metric(&broker, PRODUCES_ANSWERED) > answered
        });
        let written = metric(&broker, PRODUCES_ANSWERED) - answered - 1;
        println!(
            "{topic}: {N} produces in flight at the close; {written} answers written after it"
        );
        assert_eq!(written, 0, "nothing is written to a closed connection (P5)");
        wait_until(
            Duration::from_secs(10),
            "the closed connection gone",
            || metric(&broker, "ringtail_connections") <= connections + 1,
        );
    }
    broker.assert_alive();
    assert!(!broker.log_contains("panicked"));
    let all = MetadataRequest::default().with_topics(None);
    let r: MetadataResponse = admin.call(ApiKey::Metadata, 9, &all);
    for topic in ["closed-fin", "closed-reset"] {
        let t = r
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| &***n) == Some(topic));
        assert_eq!(t.map(|t| t.error_code), Some(0), "{topic} in the metadata");
    }
}
