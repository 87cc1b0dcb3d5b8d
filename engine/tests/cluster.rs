//! Cluster mode on SeaweedFS: three brokers share one bucket; slots are placed across them and
//! handed over as they join; kill -9 of one moves its slots to the survivors through the
//! manifests' epochs (no data copy). Real clients: librdkafka (idempotent producer, admin,
//! consumer group).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestBroker;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const SLOTS: &str = "6";
const PARTITIONS: i32 = 6;

struct Cluster {
    _weed: ringtail_objstore::testing::Seaweed,
    args: Vec<String>,
}

impl Cluster {
    fn new() -> Cluster {
        let weed = ringtail_objstore::testing::Seaweed::start();
        drop(weed.ready_store(""));
        let cfg = weed.config("");
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        let args = vec![
            "--object-store".to_string(),
            format!("s3://{}/cluster", cfg.bucket),
            "--s3-endpoint".into(),
            cfg.endpoint.clone().unwrap(),
            "--s3-path-style".into(),
            "true".into(),
            "--shards".into(),
            "1".into(),
            "--slots".into(),
            SLOTS.into(),
            "--object-age-max-ms".into(),
            "50".into(),
        ];
        Cluster { _weed: weed, args }
    }

    fn start(&self, node: i32) -> TestBroker {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let node = node.to_string();
        args.extend(["--node-id", &node]);
        TestBroker::start(&args)
    }
}

/// node id -> partitions it leads, from librdkafka's view of `topic` through `bootstrap`.
fn leaders(bootstrap: &str, topic: &str) -> BTreeMap<i32, Vec<i32>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut out: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            out.entry(p.leader()).or_default().push(p.id());
        }
    }
    out
}

/// Waits until every broker serves what Metadata places on it (a produce to each partition
/// through `bootstrap` succeeds).
async fn wait_serving(bootstrap: &str, topic: &str) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    for partition in 0..PARTITIONS {
        p.send(
            FutureRecord::<(), _>::to(topic)
                .partition(partition)
                .payload("warm-up"),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("partition {partition} not served: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_share_the_slots_and_survive_a_kill9() {
    let cluster = Cluster::new();
    let b1 = cluster.start(1);
    let b2 = cluster.start(2);
    let b3 = cluster.start(3);
    let bootstrap = format!("{},{},{}", b1.bootstrap(), b2.bootstrap(), b3.bootstrap());
    common::create_topic(&bootstrap, "drill", PARTITIONS, &[("durability", "object")]).await;
    // The hand-over as brokers joined settles within a few lease periods.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = leaders(&b1.bootstrap(), "drill");
        if l.len() == 3 && l.keys().all(|&n| (1..=3).contains(&n)) {
            println!("placement: {l:?}");
            break;
        }
        assert!(Instant::now() < deadline, "slots never spread: {l:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_serving(&bootstrap, "drill").await;
    let moved: Vec<i32> = leaders(&b1.bootstrap(), "drill")
        .remove(&3)
        .unwrap_or_default();

    // A consumer group reads along, committing as it goes.
    let consumed: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = {
        let (consumed, stop, bootstrap) = (consumed.clone(), stop.clone(), bootstrap.clone());
        std::thread::spawn(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "drill-readers")
                .set("auto.offset.reset", "earliest")
                .set("auto.commit.interval.ms", "200")
                .set("fetch.wait.max.ms", "50")
                .create()
                .unwrap();
            c.subscribe(&["drill"]).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
                    consumed.lock().unwrap().push(v);
                }
            }
        })
    };

    // Idempotent producer, acks=all, every partition in turn, while node 3 is killed.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut killed_at: Option<Instant> = None;
    let mut b3 = Some(b3);
    let mut pending = Vec::new();
    let mut seq = 0u64;
    while started.elapsed() < Duration::from_secs(9) {
        if killed_at.is_none() && started.elapsed() >= Duration::from_secs(3) {
            b3.take().unwrap().kill9();
            killed_at = Some(Instant::now());
        }
        for partition in 0..PARTITIONS {
            let payload = format!("m{seq}");
            seq += 1;
            let sent = producer.send_result(
                FutureRecord::<(), _>::to("drill")
                    .partition(partition)
                    .payload(&payload),
            );
            let sent = sent.unwrap_or_else(|_| panic!("queue full"));
            let done = tokio::spawn(async move {
                let r = sent.await;
                (r, Instant::now())
            });
            pending.push((payload, partition, Instant::now(), done));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = killed_at.unwrap();
    let mut acked: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    let mut errors = Vec::new();
    // Per moved partition: the first acknowledgement of a record sent after the kill.
    let mut first_after: BTreeMap<i32, Duration> = BTreeMap::new();
    for (payload, partition, sent_at, done) in pending {
        let (result, acked_at) = done.await.unwrap();
        match result.unwrap() {
            Ok(d) => {
                let (p, offset) = (d.partition, d.offset);
                if sent_at > killed_at && moved.contains(&partition) {
                    let at = acked_at - killed_at;
                    let first = first_after.entry(partition).or_insert(at);
                    *first = (*first).min(at);
                }
                acked.insert(payload, (p, offset));
            }
            Err((e, _)) => errors.push(format!("{payload}: {e}")),
        }
    }
    assert!(errors.is_empty(), "failed deliveries: {errors:?}");
    println!(
        "takeover after kill -9 of node 3 (partitions {moved:?}): first acks after {first_after:?}"
    );

    // Every acknowledged record is there exactly once, read from the survivors.
    let survivors = format!("{},{}", b1.bootstrap(), b2.bootstrap());
    let (records, _) = common::read_all(&survivors, "drill", PARTITIONS);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for v in records.values() {
        *seen
            .entry(String::from_utf8_lossy(v).to_string())
            .or_default() += 1;
    }
    let lost: Vec<&String> = acked.keys().filter(|k| !seen.contains_key(*k)).collect();
    let duplicated: Vec<(&String, &usize)> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        lost.is_empty(),
        "{} acked records lost: {lost:?}",
        lost.len()
    );
    assert!(
        duplicated.iter().all(|(k, _)| k.as_str() == "warm-up"),
        "duplicates: {duplicated:?}"
    );
    for (payload, (p, o)) in &acked {
        assert_eq!(
            records
                .get(&(*p, *o))
                .map(|v| String::from_utf8_lossy(v).to_string()),
            Some(payload.clone()),
            "acked at {p}/{o}"
        );
    }
    let l = leaders(&survivors, "drill");
    assert!(
        l.keys().all(|&n| n == 1 || n == 2),
        "every partition led by a survivor: {l:?}"
    );

    // The consumer group carries on and sees everything that was acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: BTreeSet<String> = consumed.lock().unwrap().iter().cloned().collect();
        let missing = acked.keys().filter(|k| !got.contains(*k)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer group misses {missing} acknowledged records"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    consumer.join().unwrap();
    println!(
        "{} records acknowledged across the kill, 0 lost, 0 duplicated",
        acked.len()
    );
}

/// A produce to `partition` of `topic` on an open raw connection, sent but not read.
fn send_produce(raw: &mut common::raw::Raw, topic: &str, partition: i32, value: &str) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let records = ringtail_netio::batch::testing::encode(
        [Some(bytes::Bytes::from(value.to_string()))],
        now,
        kafka_protocol::records::Compression::None,
    )
    .freeze();
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    let buf = raw.encode(ApiKey::Produce, 9, &req);
    raw.send_frame(&buf);
}

fn produce_answer(raw: &mut common::raw::Raw) -> i16 {
    use kafka_protocol::messages::{ProduceResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;
    let mut frame = raw.read_frame().expect("a produce answer");
    ResponseHeader::decode(&mut frame, 1).unwrap();
    let resp = ProduceResponse::decode(&mut frame, 9).unwrap();
    resp.responses[0].partition_responses[0].error_code
}

/// SIGSTOP a broker until its slots move, then SIGCONT: a produce it received while paused is
/// answered NOT_LEADER_OR_FOLLOWER, never acknowledged, and its record never becomes visible;
/// the broker closes its superseded slots and rejoins through the hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_broker_is_fenced_and_its_late_write_never_appears() {
    let cluster = Cluster::new();
    let b1 = cluster.start(1);
    let b2 = cluster.start(2);
    let b3 = cluster.start(3);
    let bootstrap = format!("{},{},{}", b1.bootstrap(), b2.bootstrap(), b3.bootstrap());
    common::create_topic(&bootstrap, "zombie", PARTITIONS, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let theirs = loop {
        let l = leaders(&b1.bootstrap(), "zombie");
        if l.len() == 3 {
            break l[&3].clone();
        }
        assert!(Instant::now() < deadline, "slots never spread: {l:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    wait_serving(&bootstrap, "zombie").await;
    let partition = theirs[0];

    let mut raw = common::raw::Raw::connect(b3.addr);
    // Past the upload age (50 ms here): what node 3 acknowledged is in the bucket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::signal(b3.pid(), "-STOP");
    let paused = Instant::now();
    // The survivors take node 3's slots over and serve them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = leaders(&b1.bootstrap(), "zombie");
        if !l.contains_key(&3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3's slots never moved: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let survivors = format!("{},{}", b1.bootstrap(), b2.bootstrap());
    wait_serving(&survivors, "zombie").await;
    println!(
        "node 3's partitions served elsewhere {:?} after SIGSTOP",
        paused.elapsed()
    );

    // A write reaches the paused broker; it wakes up with a lapsed lease.
    send_produce(&mut raw, "zombie", partition, "zombie-late");
    tokio::time::sleep(Duration::from_millis(200)).await;
    common::signal(b3.pid(), "-CONT");
    let code = produce_answer(&mut raw);
    assert_eq!(code, 6, "NOT_LEADER_OR_FOLLOWER, not an acknowledgement");

    // It closes its slots, renews, and gets its share back through the hand-over.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = leaders(&b1.bootstrap(), "zombie");
        if l.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 never rejoined: {l:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(b3.log_contains("lease lapsed"));
    // Its upload of the late write was refused by the manifest epoch.
    assert!(b3.log_contains("fenced"));
    wait_serving(&bootstrap, "zombie").await;
    let (records, _) = common::read_all(&bootstrap, "zombie", PARTITIONS);
    assert!(
        records.values().all(|v| v.as_slice() != b"zombie-late"),
        "the paused broker's unacknowledged write became visible"
    );
    assert!(
        records
            .values()
            .filter(|v| v.as_slice() == b"warm-up")
            .count()
            >= 3 * PARTITIONS as usize
    );
}
