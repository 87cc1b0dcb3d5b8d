//! The object tier: a 1 MiB WAL ring carries several MB because the shard uploads durable
//! batches to objects, commits them to its manifest and only then trims the ring; consumers read
//! old offsets back from the objects, across restarts and kill -9. On a local directory and on
//! S3 (SeaweedFS).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TestBroker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);
const PARTITIONS: i32 = 3;

/// One shard, a small ring, small objects uploaded within 50 ms, retention checked every 200 ms.
const TIER_FLAGS: [&str; 12] = [
    "--shards",
    "1",
    "--wal-size-per-shard",
    "1048576",
    "--wal-max-write-bytes",
    "65536",
    "--object-bytes-target",
    "65536",
    "--object-age-max-ms",
    "50",
    "--log-retention-check-interval-ms",
    "200",
];

fn tier_args(store: &str) -> Vec<String> {
    let mut args: Vec<String> = TIER_FLAGS.iter().map(|s| s.to_string()).collect();
    args.extend(["--object-store".to_string(), store.to_string()]);
    args
}

/// [`tier_args`] on SeaweedFS's bucket under `prefix`.
fn s3_tier_args(weed: &ringtail_objstore::testing::Seaweed, prefix: &str) -> Vec<String> {
    let mut args: Vec<String> = TIER_FLAGS.iter().map(|s| s.to_string()).collect();
    args.extend(weed.broker_args(prefix));
    args
}

fn start(dir: &std::path::Path, args: &[String]) -> TestBroker {
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    TestBroker::start_at(dir, &args)
}

fn value(i: usize) -> Vec<u8> {
    (0..10_000).map(|j| ((i * 7 + j) % 251) as u8).collect()
}

/// Produces `n` 10 KB records (acks=all) from `first`; returns (partition, offset) -> value.
async fn produce(b: &TestBroker, first: usize, n: usize) -> BTreeMap<(i32, i64), Vec<u8>> {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let mut acked = BTreeMap::new();
    for i in first..first + n {
        let v = value(i);
        let d = p
            .send(
                FutureRecord::<(), Vec<u8>>::to("tiered")
                    .partition((i % PARTITIONS as usize) as i32)
                    .payload(&v),
                TIMEOUT,
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("record {i}: {e}"));
        acked.insert((d.partition, d.offset), v);
    }
    acked
}

fn consume_all(b: &TestBroker) -> BTreeMap<(i32, i64), Vec<u8>> {
    let (all, lows) = common::read_all(&b.bootstrap(), "tiered", PARTITIONS);
    assert!(
        lows.iter().all(|&l| l == 0),
        "every partition starts at 0: {lows:?}"
    );
    all
}

async fn tiered_round_trip(store: &str, data: &std::path::Path) {
    let args = tier_args(store);
    let b = start(data, &args);
    common::create_topic(&b.bootstrap(), "tiered", PARTITIONS, &[]).await;
    // 3 MB through a 1 MiB ring: only possible if the ring trims behind committed objects.
    let mut acked = produce(&b, 0, 300).await;
    assert_eq!(
        consume_all(&b),
        acked,
        "all offsets read back byte-exact, old ones from objects"
    );
    assert_eq!(b.terminate(), Some(0));

    // Restart: the manifest and the ring together give every offset back.
    let b = start(data, &args);
    assert_eq!(consume_all(&b), acked, "after a clean restart");
    acked.extend(produce(&b, 300, 30).await);
    b.kill9();

    let b = start(data, &args);
    assert_eq!(consume_all(&b), acked, "after kill -9");
    assert!(b.log_contains("took over the shard's manifest"));
    acked.extend(produce(&b, 330, 20).await);
    // A clean shutdown uploads everything; then the broker holds no state the bucket lacks.
    assert_eq!(b.terminate(), Some(0));
    std::fs::remove_dir_all(data).unwrap();
    let b = start(data, &args);
    assert!(b.log_contains("took the cluster's topic catalog from the object store"));
    assert_eq!(
        consume_all(&b),
        acked,
        "from an empty data dir: topics, offsets and data from the bucket"
    );
    acked.extend(produce(&b, 350, 5).await);
    assert_eq!(
        consume_all(&b).len(),
        acked.len(),
        "and it carries on at the right offsets"
    );
    assert_eq!(b.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_object_tier() {
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    tiered_round_trip(&format!("file://{}", objects.path().display()), data.path()).await;
    // The objects hold all of it (small ones may have been merged into bigger ones meanwhile).
    let stored: u64 = walk(objects.path())
        .into_iter()
        .filter(|p| p.ends_with(".rto"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        stored >= 350 * 10_000,
        "every record went out ({stored} bytes in objects)"
    );
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_object_tier_on_seaweedfs() {
    let weed = ringtail_objstore::testing::Seaweed::start();
    let data = tempfile::tempdir().unwrap();
    let args = s3_tier_args(&weed, "ringtail");
    let b = start(data.path(), &args);
    common::create_topic(&b.bootstrap(), "tiered", PARTITIONS, &[]).await;
    let acked = produce(&b, 0, 200).await;
    assert_eq!(consume_all(&b), acked, "read back from S3 objects");
    assert_eq!(b.terminate(), Some(0));
    let b = start(data.path(), &args);
    assert_eq!(consume_all(&b), acked, "after restart, from S3");
}

/// 20% of object-store requests fail (503 SlowDown and 500) for the whole run: uploads and
/// commits retry, nothing acknowledged is lost, the broker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_store_faults_lose_nothing() {
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let mut args = tier_args(&format!("file://{}", objects.path().display()));
    args.extend([
        "--object-store-faults".to_string(),
        "throttle=0.15,error=0.05".to_string(),
    ]);
    let b = start(data.path(), &args);
    common::create_topic(&b.bootstrap(), "tiered", PARTITIONS, &[]).await;
    let acked = produce(&b, 0, 250).await;
    assert_eq!(consume_all(&b), acked);
    assert!(
        b.log_contains("retrying"),
        "faults were injected and retried"
    );
    assert_eq!(b.terminate(), Some(0));
    let b = start(data.path(), &args);
    assert_eq!(consume_all(&b), acked, "after restart, through the faults");
}

/// The S3 server goes away mid-run and comes back: the WAL absorbs writes meanwhile, uploads
/// resume, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_mid_run_loses_nothing() {
    let mut weed = ringtail_objstore::testing::Seaweed::start();
    let data = tempfile::tempdir().unwrap();
    let args = s3_tier_args(&weed, "outage");
    let b = start(data.path(), &args);
    common::create_topic(&b.bootstrap(), "tiered", PARTITIONS, &[]).await;
    let mut acked = produce(&b, 0, 60).await;
    weed.kill();
    // Less than the ring holds: the WAL takes it while the store is down.
    acked.extend(produce(&b, 60, 40).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    weed.restart();
    acked.extend(produce(&b, 100, 60).await);
    assert_eq!(consume_all(&b), acked, "everything, across the outage");
    assert_eq!(b.terminate(), Some(0));
    std::fs::remove_dir_all(data.path()).unwrap();
    let b = start(data.path(), &args);
    assert_eq!(consume_all(&b), acked, "and all of it made it to S3");
}

/// durability=object while the store is down: the answer waits for the upload only as long as
/// the request's `timeout_ms`, then says REQUEST_TIMED_OUT (retriable); the record is written
/// and lands in the bucket once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_waiting_on_a_down_store_times_out_and_lands_later() {
    use kafka_protocol::messages::{ApiKey, ProduceResponse};
    let mut weed = ringtail_objstore::testing::Seaweed::start();
    let data = tempfile::tempdir().unwrap();
    let args = s3_tier_args(&weed, "timeout");
    let b = start(data.path(), &args);
    common::create_topic(&b.bootstrap(), "obj", 1, &[("durability", "object")]).await;
    let batch = |v: &str| common::raw::records(&[v.as_bytes()]);
    let mut raw = common::raw::Raw::connect(b.addr);
    assert_eq!(raw.produce("obj", 0, batch("before"), -1), (0, 0));
    weed.kill();
    let t = Instant::now();
    let req = common::raw::produce_request("obj", 0, batch("during"), -1).with_timeout_ms(1000);
    let r: ProduceResponse = raw.call(ApiKey::Produce, 9, &req);
    let waited = t.elapsed();
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 7,
        "REQUEST_TIMED_OUT"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    println!("answered REQUEST_TIMED_OUT after {waited:?} (timeout_ms 1000)");
    weed.restart();
    assert_eq!(raw.produce("obj", 0, batch("after"), -1), (0, 2));
    let (read, _) = common::read_all(&b.bootstrap(), "obj", 1);
    let values: Vec<&[u8]> = read.values().map(|v| v.as_slice()).collect();
    assert_eq!(values, [&b"before"[..], b"during", b"after"]);
}

/// The spans of slot 0's committed objects in a local-directory bucket: the manifest's, then
/// the log's from `log_next` up to its first missing number (passing over fences).
fn committed_spans(bucket: &std::path::Path) -> Vec<ringtail_engine::tier::object_format::Span> {
    use ringtail_engine::tier::object_format::read_index;
    let bytes = std::fs::read(bucket.join("shards/0000/manifest")).unwrap();
    let m = ringtail_engine::tier::manifest::ShardManifest::decode(&bytes).unwrap();
    let mut spans: Vec<_> = m.objects.into_iter().flat_map(|o| o.spans).collect();
    let mut n = m.log_next;
    while let Ok(bytes) = std::fs::read(bucket.join(format!("shards/0000/log/{n:020}.rto"))) {
        let index = read_index(&bytes).unwrap();
        if index.is_fence() {
            n = index.resume;
        } else {
            spans.extend(index.spans);
            n += 1;
        }
    }
    spans
}

/// How many data objects (not fences) the bucket holds, and their bytes.
fn rto_bytes(dir: &std::path::Path) -> (usize, u64) {
    let files = common::data_objects(dir);
    let bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    (files.len(), bytes)
}

/// retention.bytes applies to the whole log: expired spans leave the manifest, objects nobody
/// references are deleted, the log start moves; deleting the topic deletes its objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_deletion_remove_objects() {
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let b = start(
        data.path(),
        &tier_args(&format!("file://{}", objects.path().display())),
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .unwrap();
    common::create_topic(
        &b.bootstrap(),
        "tiered",
        PARTITIONS,
        &[("retention.bytes", "200000")],
    )
    .await;
    produce(&b, 0, 300).await;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", "w")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    // Settled: the log starts have not moved for longer than a deletion pass interval (the
    // last uploads are still followed by passes; a read racing them restarts at the end).
    let mut settled: Option<(Vec<i64>, Instant)> = None;
    loop {
        let lows: Vec<i64> = (0..PARTITIONS)
            .map(|p| c.fetch_watermarks("tiered", p, TIMEOUT).unwrap().0)
            .collect();
        if lows.iter().all(|&l| l > 0) {
            match &settled {
                Some((before, since)) if *before == lows => {
                    if since.elapsed() >= Duration::from_millis(1500) {
                        break;
                    }
                }
                _ => settled = Some((lows.clone(), Instant::now())),
            }
        }
        assert!(
            Instant::now() < deadline,
            "retention did not act: lows {lows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Objects nobody references are deleted: those retention dropped at once, those a merge
    // replaced after MERGE_RETIRE_DELAY.
    let deadline = Instant::now() + ringtail_engine::tier::merge::MERGE_RETIRE_DELAY + TIMEOUT;
    loop {
        let (on_disk, bytes) = rto_bytes(objects.path());
        let referenced = manifest_at(objects.path()).objects.len();
        if on_disk == referenced {
            assert!(bytes < 1_500_000, "{bytes} bytes retained");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{on_disk} objects on disk, {referenced} referenced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What is left reads back, from the new log start.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("tiered", 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let (low, high) = c.fetch_watermarks("tiered", 0, TIMEOUT).unwrap();
    let mut first = None;
    let mut n = 0;
    let deadline = Instant::now() + TIMEOUT;
    while n < high - low {
        assert!(
            Instant::now() < deadline,
            "timed out reading the retained tail"
        );
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            first.get_or_insert(m.offset());
            n += 1;
        }
    }
    assert_eq!(first, Some(low));

    admin
        .delete_topics(&["tiered"], &AdminOptions::new())
        .await
        .unwrap()[0]
        .as_ref()
        .expect("deleted");
    let deadline = Instant::now() + TIMEOUT;
    while rto_bytes(objects.path()).0 > 0 {
        assert!(
            Instant::now() < deadline,
            "the deleted topic's objects were not deleted: {:?}",
            rto_bytes(objects.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A broker on `data` and the bucket `objects` with the one-partition `durability=object` topic
/// "safe" (and a long age bound: only a waiting producer makes the shard seal early), an
/// acks=all producer (`linger.ms=0`), and the broker's arguments.
async fn safe_topic(
    data: &std::path::Path,
    objects: &std::path::Path,
) -> (TestBroker, FutureProducer, Vec<String>) {
    let mut args = tier_args(&format!("file://{}", objects.display()));
    assert_eq!(args[8], "--object-age-max-ms");
    args[9] = "60000".into();
    let b = start(data, &args);
    common::create_topic(&b.bootstrap(), "safe", 1, &[("durability", "object")]).await;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    (b, p, args)
}

/// durability=object: the acknowledgement comes only once the batch is in a committed object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_object_acks_after_the_object_commit() {
    let (data, objects) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (b, p, _) = safe_topic(data.path(), objects.path()).await;
    for i in 0..3i64 {
        let d = p
            .send(
                FutureRecord::<(), [u8]>::to("safe").payload(b"in an object"),
                TIMEOUT,
            )
            .await
            .expect("ack");
        // At the moment of the ack, a committed object covers the record: one the manifest
        // names, or one of the slot's log from the manifest's `log_next` on, with every number
        // before it written (what a take-over folds).
        let covered = committed_spans(objects.path())
            .iter()
            .any(|s| s.partition == 0 && s.base_offset <= d.offset && d.offset <= s.last_offset);
        assert!(
            covered,
            "record {i} at offset {} acked before its object was committed",
            d.offset
        );
    }
    drop(b);
    // Without an object store the topic config is refused.
    let b = TestBroker::start(&["--object-store", "none"]);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .unwrap();
    let t = NewTopic::new("safe", 1, TopicReplication::Fixed(1)).set("durability", "object");
    let r = admin
        .create_topics(&[t], &AdminOptions::new())
        .await
        .unwrap();
    assert_eq!(
        r[0].as_ref().unwrap_err().1,
        rdkafka::types::RDKafkaErrorCode::InvalidConfig
    );
}

/// An acknowledged `durability=object` record survives the loss of its broker's machine while
/// its object is only in the slot's log, not yet folded into the manifest: after kill -9, a
/// broker with an empty data directory (and so no WAL) on the same bucket takes the slot over,
/// folds the log's tail and serves every acknowledged record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_records_in_the_logs_unfolded_tail_survive_losing_the_broker() {
    let (data, objects) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (b, p, args) = safe_topic(data.path(), objects.path()).await;
    let mut acked: BTreeMap<(i32, i64), Vec<u8>> = BTreeMap::new();
    loop {
        let v = format!("record-{}", acked.len()).into_bytes();
        let d = p
            .send(FutureRecord::<(), [u8]>::to("safe").payload(&v), TIMEOUT)
            .await
            .expect("ack");
        acked.insert((d.partition, d.offset), v);
        // Lose the broker as soon as the newest acknowledged record is in no object the
        // manifest names (a fold takes 32 objects, or any a second old).
        let folded = manifest_at(objects.path())
            .objects
            .iter()
            .flat_map(|o| &o.spans)
            .any(|s| s.last_offset >= d.offset);
        if acked.len() >= 10 && !folded {
            break;
        }
        assert!(
            acked.len() < 1000,
            "every acknowledgement waited for a fold"
        );
    }
    b.kill9();
    drop(data);
    let fresh = tempfile::tempdir().unwrap();
    let b = start(fresh.path(), &args);
    let (read, lows) = common::read_all(&b.bootstrap(), "safe", 1);
    assert_eq!(lows, [0]);
    assert_eq!(read, acked, "every acknowledged record, at its offset");
    assert!(b.log_contains("fenced the slot's log of objects"));
    assert_eq!(b.terminate(), Some(0));
}

fn watermarks(b: &TestBroker) -> Vec<(i64, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| c.fetch_watermarks("tiered", p, TIMEOUT).unwrap())
        .collect()
}

/// DeleteRecords (librdkafka admin) moves log starts — inside a batch, to the end, in memory and
/// in objects — and the new starts survive kill -9 and an empty data dir: offsets below are
/// out of range, nothing at or above is lost, and no offset is ever handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_log_starts_durably() {
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let args = tier_args(&format!("file://{}", objects.path().display()));
    let b = start(data.path(), &args);
    common::create_topic(&b.bootstrap(), "tiered", PARTITIONS, &[]).await;
    let acked = produce(&b, 0, 150).await; // 50 records per partition
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("tiered", 0, Offset::Offset(20))
        .unwrap();
    tpl.add_partition_offset("tiered", 1, Offset::End).unwrap();
    let done = admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .unwrap();
    let lows: Vec<_> = done
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset(), e.error().is_ok()))
        .collect();
    assert_eq!(
        lows,
        vec![(0, Offset::Offset(20), true), (1, Offset::Offset(50), true)]
    );
    let expect = vec![(20, 50), (50, 50), (0, 50)];
    assert_eq!(watermarks(&b), expect);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("tiered", 2, Offset::Offset(51))
        .unwrap();
    let beyond = admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .unwrap();
    assert!(
        beyond.elements()[0].error().is_err(),
        "beyond the high watermark is out of range"
    );
    // Issue 27: `timeout_ms` 0 (librdkafka's operation_timeout 0, as its test 0081 sends) means
    // "do not wait for followers", not "time out": the deletion is answered with its low
    // watermark (before: REQUEST_TIMED_OUT and -1, although the records were deleted).
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("tiered", 2, Offset::Offset(10))
        .unwrap();
    let no_wait = AdminOptions::new().operation_timeout(Some(Duration::ZERO));
    let done = admin.delete_records(&tpl, &no_wait).await.unwrap();
    let e = &done.elements()[0];
    assert_eq!((e.offset(), e.error()), (Offset::Offset(10), Ok(())));
    let remaining = |all: &BTreeMap<(i32, i64), Vec<u8>>| -> BTreeMap<(i32, i64), Vec<u8>> {
        all.iter()
            .filter(|((p, o), _)| (*p == 2 && *o >= 10) || (*p == 0 && *o >= 20))
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    };
    let (read, lows) = common::read_all(&b.bootstrap(), "tiered", PARTITIONS);
    assert_eq!(lows, vec![20, 50, 10]);
    assert_eq!(read, remaining(&acked));
    // Below the log start is out of range for a fetch.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", "out-of-range")
        .set("auto.offset.reset", "error")
        .create()
        .unwrap();
    let mut from0 = TopicPartitionList::new();
    from0
        .add_partition_offset("tiered", 0, Offset::Offset(5))
        .unwrap();
    c.assign(&from0).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "no out-of-range error");
        match c.poll(Duration::from_millis(100)) {
            Some(Err(e)) => {
                // librdkafka's report of OFFSET_OUT_OF_RANGE with auto.offset.reset=error.
                assert!(e.to_string().contains("AutoOffsetReset"), "{e}");
                break;
            }
            Some(Ok(m)) => panic!("read deleted offset {}", m.offset()),
            None => {}
        }
    }
    drop(c);

    b.kill9();
    let b = start(data.path(), &args);
    assert_eq!(
        watermarks(&b),
        vec![(20, 50), (50, 50), (10, 50)],
        "after kill -9"
    );
    let more = produce(&b, 150, 6).await;
    assert!(
        more.keys().any(|&(p, o)| p == 1 && o == 50),
        "partition 1 continues at 50: {:?}",
        more.keys()
    );
    assert_eq!(b.terminate(), Some(0));
    std::fs::remove_dir_all(data.path()).unwrap();
    let b = start(data.path(), &args);
    assert_eq!(
        watermarks(&b),
        vec![(20, 52), (50, 52), (10, 52)],
        "from an empty data dir"
    );
    let mut all = acked;
    all.extend(more);
    let (read, _) = common::read_all(&b.bootstrap(), "tiered", PARTITIONS);
    let mut want = remaining(&all);
    want.extend(
        all.iter()
            .filter(|((p, o), _)| *p == 1 && *o >= 50)
            .map(|(k, v)| (*k, v.clone())),
    );
    assert_eq!(read, want);
    assert_eq!(b.terminate(), Some(0));
}

/// Objects no manifest references — an upload whose owner died before committing it — are
/// deleted at the next start; committed objects and files that are not ours stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_objects_are_collected_at_start() {
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let args = tier_args(&format!("file://{}", objects.path().display()));
    let b = start(data.path(), &args);
    common::create_topic(&b.bootstrap(), "tiered", PARTITIONS, &[]).await;
    let acked = produce(&b, 0, 60).await;
    assert_eq!(b.terminate(), Some(0));
    let dir = objects.path().join("shards/0000/objects");
    std::fs::create_dir_all(&dir).unwrap();
    let orphan = dir.join("0000000001-00000000000000999999.rto");
    let foreign = dir.join("README.txt");
    std::fs::write(&orphan, b"an upload nobody committed").unwrap();
    // An old owner's upload that landed past a fence: in the numbers the take-over skipped
    // (the first start fenced the log at 1 and resumed at 1 + FENCE_GAP).
    let past_fence = objects
        .path()
        .join("shards/0000/log/00000000000000000002.rto");
    std::fs::write(&past_fence, b"a late upload").unwrap();
    let fence = objects
        .path()
        .join("shards/0000/log/00000000000000000001.rto");
    assert!(fence.exists(), "the first start's fence");
    std::fs::write(&foreign, b"not an object key").unwrap();
    let (committed, _) = rto_bytes(objects.path());

    let b = start(data.path(), &args);
    let deadline = Instant::now() + TIMEOUT;
    while orphan.exists() || past_fence.exists() {
        assert!(Instant::now() < deadline, "the orphans were not collected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(foreign.exists());
    assert!(fence.exists(), "fences stay");
    // The committed objects stay (a merge of them may have begun meanwhile: fewer, never more).
    assert!(rto_bytes(objects.path()).0 < committed);
    assert_eq!(consume_all(&b), acked);
    assert!(b.log_contains("deleted unreferenced objects"));
    assert_eq!(b.terminate(), Some(0));
}

/// The shard's committed manifest in a local-directory bucket.
fn manifest_at(objects: &std::path::Path) -> ringtail_engine::tier::manifest::ShardManifest {
    let bytes = std::fs::read(objects.join("shards/0000/manifest")).unwrap();
    ringtail_engine::tier::manifest::ShardManifest::decode(&bytes).unwrap()
}

/// Small objects are merged (issue 17: the manifest kept one entry per upload for good — with
/// an object a second and 100 partitions it passed its 256 MiB read limit within a day): the
/// uploads of 300 produces, each sealed alone by the 50 ms age bound, end up in a few objects
/// that hold the same bytes at the same offsets, read back before and after kill -9 and a
/// restart, which also deletes the replaced objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_objects_are_merged_and_read_back() {
    const OBJECTS_MAX: usize = 12;
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let args = tier_args(&format!("file://{}", objects.path().display()));
    let b = start(data.path(), &args);
    common::create_topic(&b.bootstrap(), "tiered", PARTITIONS, &[]).await;
    let mut acked = produce(&b, 0, 300).await;
    let uploads = rto_bytes(objects.path()).0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = manifest_at(objects.path());
        if m.objects.len() <= OBJECTS_MAX {
            eprintln!(
                "{uploads} objects on disk after producing, {} in the manifest now",
                m.objects.len()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the manifest still holds {} objects ({uploads} uploaded), more than {OBJECTS_MAX}",
            m.objects.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // About 40 (3 MB in objects sealed at 64 KiB or 50 ms), fewer under load.
    assert!(
        uploads > 2 * OBJECTS_MAX,
        "{uploads} uploads: too few to show merging"
    );
    assert!(b.log_contains("merged small objects"));
    // Each object's own index names exactly the spans the manifest holds for it.
    for o in manifest_at(objects.path()).objects {
        let bytes = std::fs::read(objects.path().join(&o.key)).unwrap();
        let index = ringtail_engine::tier::object_format::read_index(&bytes).unwrap();
        assert_eq!(index.spans, o.spans, "{}", o.key);
    }
    assert_eq!(consume_all(&b), acked, "read back from merged objects");
    b.kill9();

    let b = start(data.path(), &args);
    assert_eq!(
        consume_all(&b),
        acked,
        "after kill -9 (WAL replay over merged objects)"
    );
    acked.extend(produce(&b, 300, 20).await);
    assert_eq!(b.terminate(), Some(0));

    let b = start(data.path(), &args);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (on_disk, _) = rto_bytes(objects.path());
        let referenced = manifest_at(objects.path()).objects.len();
        if on_disk == referenced {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{on_disk} objects on disk, {referenced} referenced: replaced objects were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(consume_all(&b), acked, "after a restart");
    assert_eq!(b.terminate(), Some(0));
}

/// retention.bytes follows Kafka's rule for segments: the oldest span goes only if what stays
/// still holds at least retention.bytes. A merged span holds up to 32 MiB of a partition; it
/// used to be dropped whole as soon as the partition was one byte over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bytes_never_drops_below_the_limit() {
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let b = start(
        data.path(),
        &tier_args(&format!("file://{}", objects.path().display())),
    );
    common::create_topic(&b.bootstrap(), "tiered", PARTITIONS, &[]).await;
    produce(&b, 0, 300).await;
    // Partition 0's spans once all 100 records are in objects and the first span is a merged
    // one (more than a few records).
    let spans = |m: &ringtail_engine::tier::manifest::ShardManifest| -> Vec<(i64, i64, u64)> {
        let mut v: Vec<(i64, i64, u64)> = m
            .objects
            .iter()
            .flat_map(|o| o.spans.iter())
            .filter(|s| s.partition == 0)
            .map(|s| (s.base_offset, s.last_offset, s.byte_len))
            .collect();
        v.sort();
        v
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (total, first) = loop {
        let v = spans(&manifest_at(objects.path()));
        if v.last().is_some_and(|s| s.1 == 99) && v[0].1 - v[0].0 >= 10 {
            break (v.iter().map(|s| s.2).sum::<u64>(), v[0]);
        }
        assert!(Instant::now() < deadline, "not merged: {v:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .unwrap();
    let set_retention = |bytes: u64| {
        let admin = &admin;
        async move {
            let value = bytes.to_string();
            let set = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(
                "tiered",
            ))
            .set("retention.bytes", &value);
            admin
                .alter_configs(&[set], &AdminOptions::new())
                .await
                .unwrap()[0]
                .as_ref()
                .expect("altered");
        }
    };
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .unwrap();
    // Dropping the first span would leave less than the limit: it stays (a merge meanwhile
    // only makes the first span bigger).
    set_retention(total - first.2 / 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        c.fetch_watermarks("tiered", 0, TIMEOUT).unwrap(),
        (0, 100),
        "partition 0 ({total} bytes, first span {first:?}) kept at retention.bytes {}",
        total - first.2 / 2
    );
    // What stays without it is exactly the limit: it goes.
    let v = spans(&manifest_at(objects.path()));
    set_retention(total - v[0].2).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (low, high) = c.fetch_watermarks("tiered", 0, TIMEOUT).unwrap();
        if low > 0 {
            assert_eq!((low, high), (v[0].1 + 1, 100), "only the first span went");
            break;
        }
        assert!(Instant::now() < deadline, "retention.bytes did not act");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(b.terminate(), Some(0));
}

/// Steady `durability=object` traffic (every produce asks for an upload at once, as every
/// offset commit does) still lets merges run: the manifest stays bounded. Merges used to run
/// only on a tick with nothing to upload, so they never did and it grew by an object per produce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merging_keeps_up_with_steady_durability_object_traffic() {
    const PRODUCE_FOR: Duration = Duration::from_secs(12);
    let bound = 2 * ringtail_engine::tier::merge::MERGE_BACKLOG_OBJECTS;
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let mut args = tier_args(&format!("file://{}", objects.path().display()));
    // A long age: only the waiting producers make the shard seal.
    assert_eq!(args[8], "--object-age-max-ms");
    args[9] = "60000".into();
    let b = start(data.path(), &args);
    common::create_topic(
        &b.bootstrap(),
        "safe",
        PARTITIONS,
        &[("durability", "object")],
    )
    .await;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let start_at = Instant::now();
    let mut acked = 0usize;
    let mut largest = 0usize;
    while start_at.elapsed() < PRODUCE_FOR {
        p.send(
            FutureRecord::<(), [u8]>::to("safe")
                .partition((acked % PARTITIONS as usize) as i32)
                .payload(b"steady"),
            TIMEOUT,
        )
        .await
        .expect("ack");
        acked += 1;
        if acked.is_multiple_of(20) {
            largest = largest.max(manifest_at(objects.path()).objects.len());
        }
    }
    let uploads = rto_bytes(objects.path()).0;
    let merges = b.log_count("merged small objects");
    eprintln!(
        "{acked} produces, {uploads} objects on disk, {merges} merges, manifest at most {largest} objects"
    );
    assert!(
        acked > bound + 100,
        "{acked} produces: too few to show the manifest's bound"
    );
    assert!(
        largest <= bound,
        "the manifest grew to {largest} objects ({acked} produces, {merges} merges)"
    );
    assert_eq!(b.terminate(), Some(0));
}
