//! Leader epochs (KIP-320) with librdkafka: every opening of a slot raises its partitions'
//! leader epoch; batches carry the epoch that appended them; a consumer sees the epoch grow in
//! Metadata, validates its position with OffsetForLeaderEpoch and goes on where it was — no
//! record skipped, repeated, or reported as truncated. (The cluster drill in `cluster.rs`
//! shows the other side: a lost tail is detected as a truncation.)

mod common;

use std::time::{Duration, Instant};

use common::TestBroker;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "epochs";

/// A record as the consumer read it: offset, value and the leader epoch of its batch.
#[derive(Debug, Clone, PartialEq)]
struct Read {
    offset: i64,
    value: String,
    epoch: i32,
}

/// Reads partition 0 from the beginning; any truncation or out-of-range position is an error
/// (`auto.offset.reset=error`), never a silent jump.
fn consumer(bootstrap: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "epochs-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "100")
        .set("topic.metadata.refresh.interval.ms", "500")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    c
}

/// Polls until `n` records have arrived; returns them with every error seen meanwhile
/// (transport errors while a broker restarts are expected and skipped by the caller).
fn poll(c: &BaseConsumer, n: usize, within: Duration) -> (Vec<Read>, Vec<KafkaError>) {
    let deadline = Instant::now() + within;
    let (mut reads, mut errors) = (Vec::new(), Vec::new());
    while reads.len() < n && Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => reads.push(Read {
                offset: m.offset(),
                value: String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string(),
                // SAFETY: the message is alive for the call; librdkafka reads its batch's epoch.
                epoch: unsafe { rdkafka::bindings::rd_kafka_message_leader_epoch(m.ptr()) },
            }),
            Some(Err(e)) => errors.push(e),
            None => {}
        }
    }
    (reads, errors)
}

/// Errors that say the log was truncated or the position lost (not a broker restarting).
fn position_errors(errors: &[KafkaError]) -> Vec<String> {
    errors
        .iter()
        .map(|e| e.to_string())
        .filter(|e| {
            e.contains("truncat") || e.contains("out of range") || e.contains("OffsetOutOfRange")
        })
        .collect()
}

async fn produce(bootstrap: &str, prefix: &str, n: usize) -> Vec<i64> {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let mut offsets = Vec::new();
    for i in 0..n {
        let value = format!("{prefix}-{i}");
        let delivery = p
            .send(
                FutureRecord::<(), _>::to(TOPIC)
                    .partition(0)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .expect("acknowledged");
        offsets.push(delivery.offset);
    }
    offsets
}

fn values(reads: &[Read]) -> Vec<(i64, String)> {
    reads.iter().map(|r| (r.offset, r.value.clone())).collect()
}

fn expected(prefix: &str, from: i64, n: usize) -> Vec<(i64, String)> {
    (0..n)
        .map(|i| (from + i as i64, format!("{prefix}-{i}")))
        .collect()
}

/// A clean restart and a kill -9 (the WAL's acknowledged tail replayed): each raises the leader
/// epoch; the consumer validates its position against the new epoch (OffsetForLeaderEpoch)
/// and reads on without a gap, a repeat or a truncation report; replayed batches keep the
/// epoch that appended them.
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_reads_on_across_restarts_as_the_leader_epoch_grows() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_at(dir.path(), &[]);
    let bootstrap = b.bootstrap();
    let listen = ["--listen", bootstrap.as_str()];
    common::create_topic(&bootstrap, TOPIC, 1, &[]).await;
    assert_eq!(
        produce(&bootstrap, "a", 5).await,
        (0..5).collect::<Vec<_>>()
    );
    let c = consumer(&bootstrap);
    let (first, errors) = poll(&c, 5, Duration::from_secs(30));
    assert_eq!(values(&first), expected("a", 0, 5), "errors: {errors:?}");
    let e1 = first[0].epoch;
    assert!(e1 >= 1, "batches carry the slot's epoch: {first:?}");
    assert!(first.iter().all(|r| r.epoch == e1), "{first:?}");

    // A clean restart: everything is uploaded first; the slot reopens one epoch up.
    assert_eq!(b.terminate(), Some(0));
    let b = TestBroker::start_at(dir.path(), &listen);
    assert_eq!(
        produce(&bootstrap, "b", 5).await,
        (5..10).collect::<Vec<_>>()
    );
    let (second, errors) = poll(&c, 5, Duration::from_secs(60));
    assert_eq!(values(&second), expected("b", 5, 5), "errors: {errors:?}");
    assert!(position_errors(&errors).is_empty(), "{errors:?}");
    let e2 = second[0].epoch;
    assert!(e2 > e1, "a restart raises the epoch: {e1} then {second:?}");
    let validations = |b: &TestBroker| {
        b.metrics()
            .get("ringtail_requests_total{api=\"OffsetForLeaderEpoch\"}")
            .copied()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while validations(&b) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        validations(&b) > 0,
        "librdkafka validated its position after the epoch grew"
    );

    // kill -9: "b" is in the WAL (maybe not yet in the bucket) and is replayed under its own
    // epoch; what follows is written under the next one.
    b.kill9();
    let b = TestBroker::start_at(dir.path(), &listen);
    assert_eq!(
        produce(&bootstrap, "c", 5).await,
        (10..15).collect::<Vec<_>>()
    );
    let (third, errors) = poll(&c, 5, Duration::from_secs(60));
    assert_eq!(values(&third), expected("c", 10, 5), "errors: {errors:?}");
    assert!(position_errors(&errors).is_empty(), "{errors:?}");
    let e3 = third[0].epoch;
    assert!(e3 > e2, "{e2} then {third:?}");

    // A new reader from the start sees each record under the epoch that wrote it.
    let fresh = consumer(&bootstrap);
    let (all, errors) = poll(&fresh, 15, Duration::from_secs(30));
    assert!(position_errors(&errors).is_empty(), "{errors:?}");
    let epochs: Vec<i32> = all.iter().map(|r| r.epoch).collect();
    assert_eq!(
        epochs,
        [vec![e1; 5], vec![e2; 5], vec![e3; 5]].concat(),
        "{all:?}"
    );
    drop(b);
}
