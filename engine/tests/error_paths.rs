//! Error paths of the object tier (issue 17 items 7 and 8): a produce that may not wait, a
//! store that refuses for good, retention of records not yet uploaded, the offsets log.

mod common;

use std::time::{Duration, Instant};

use common::TestBroker;
use kafka_protocol::messages::{ApiKey, ProduceResponse};

/// One shard, small objects uploaded within 50 ms, the store wrapped in the fault injector whose
/// outages the test switches with files.
fn start_faulty(dir: &std::path::Path, objects: &std::path::Path, faults: &str) -> TestBroker {
    let store = format!("file://{}", objects.display());
    TestBroker::start_at(
        dir,
        &[
            "--shards",
            "1",
            "--object-store",
            &store,
            "--object-age-max-ms",
            "50",
            "--object-store-faults",
            faults,
        ],
    )
}

/// durability=object and `timeout_ms` 0: Kafka answers at once (REQUEST_TIMED_OUT when the
/// acknowledgement is not there yet), as for acks=all whose replicas lag; the broker waited for
/// the upload without bound. The record is written all the same and lands once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_object_with_timeout_zero_answers_at_once() {
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let ctl = tempfile::tempdir().unwrap();
    let outage = ctl.path().join("store-down");
    let b = start_faulty(
        data.path(),
        objects.path(),
        &format!("down-while={}", outage.display()),
    );
    common::create_topic(&b.bootstrap(), "obj", 1, &[("durability", "object")]).await;
    let batch = |v: &str| common::raw::records(&[v.as_bytes()]);
    let mut raw = common::raw::Raw::connect(b.addr);
    assert_eq!(raw.produce("obj", 0, batch("before"), -1), (0, 0));
    std::fs::write(&outage, b"").unwrap();
    raw.s
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let req = common::raw::produce_request("obj", 0, batch("during"), -1).with_timeout_ms(0);
    let frame = raw.encode(ApiKey::Produce, 9, &req);
    raw.send_frame(&frame);
    let answer = raw.read_frame();
    let waited = t.elapsed();
    assert!(
        answer.is_some(),
        "no answer to a timeout_ms=0 produce within {waited:?} while the store is down"
    );
    let r: ProduceResponse = {
        use kafka_protocol::messages::ResponseHeader;
        use kafka_protocol::protocol::{Decodable, HeaderVersion};
        let mut resp = answer.unwrap();
        ResponseHeader::decode(&mut resp, ProduceResponse::header_version(9)).unwrap();
        ProduceResponse::decode(&mut resp, 9).unwrap()
    };
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 7,
        "REQUEST_TIMED_OUT"
    );
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    println!("timeout_ms=0 answered REQUEST_TIMED_OUT after {waited:?}");
    std::fs::remove_file(&outage).unwrap();
    raw.s
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let req = common::raw::produce_request("obj", 0, batch("after"), -1).with_timeout_ms(-1);
    let r: ProduceResponse = raw.call(ApiKey::Produce, 9, &req);
    let p = &r.responses[0].partition_responses[0];
    assert_eq!(
        (p.error_code, p.base_offset),
        (0, 2),
        "timeout_ms=-1 waits for the upload"
    );
    let (read, _) = common::read_all(&b.bootstrap(), "obj", 1);
    let values: Vec<&[u8]> = read.values().map(|v| v.as_slice()).collect();
    assert_eq!(values, [&b"before"[..], b"during", b"after"]);
}

/// A backfill: records whose producer timestamps are older than retention.ms. Kafka keeps them
/// in the active segment until it rolls; the broker dropped them from memory (and let the WAL
/// trim them) as they arrived, before they ever reached a committed object. They must stay
/// readable until they are uploaded, and then leave the bucket through retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfilled_records_are_kept_until_uploaded_then_retention_deletes_them() {
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let store = format!("file://{}", objects.path().display());
    // Uploads wait 3 s: a window to read the batches from memory before they are in an object.
    let b = TestBroker::start_at(
        data.path(),
        &[
            "--shards",
            "1",
            "--object-store",
            &store,
            "--object-age-max-ms",
            "3000",
            "--log-retention-check-interval-ms",
            "200",
        ],
    );
    common::create_topic(
        &b.bootstrap(),
        "backfill",
        1,
        &[("retention.ms", "3600000")],
    )
    .await;
    let two_hours_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 2 * 3_600_000;
    let mut raw = common::raw::Raw::connect(b.addr);
    for i in 0..5i64 {
        let value = bytes::Bytes::from(format!("old-{i}"));
        let batch = ringtail_netio::batch::testing::encode(
            [Some(value)],
            two_hours_ago + i,
            kafka_protocol::records::Compression::None,
        )
        .freeze();
        assert_eq!(raw.produce("backfill", 0, batch, -1), (0, i));
    }
    let uploads = |b: &TestBroker| {
        b.metrics()
            .get("ringtail_object_upload_duration_seconds_count")
            .copied()
            .unwrap_or(0)
    };
    let uploads_before = uploads(&b);
    let (read, lows) = common::read_all(&b.bootstrap(), "backfill", 1);
    let values: Vec<String> = read
        .values()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(
        (lows, values),
        (
            vec![0],
            (0..5).map(|i| format!("old-{i}")).collect::<Vec<_>>()
        ),
        "acknowledged backfilled records before their upload"
    );
    // Then they are uploaded, and retention deletes them from the bucket: the log starts at 5.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, lows) = common::read_all(&b.bootstrap(), "backfill", 1);
        let objects = count_objects(objects.path());
        if lows == [5] && objects == 0 && uploads(&b) > uploads_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not delete the uploaded backfill: lows {lows:?}, {objects} objects, \
             {} uploads",
            uploads(&b)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Data objects under a local-directory bucket.
fn count_objects(dir: &std::path::Path) -> usize {
    common::data_objects(dir).len()
}

/// Waits until `f` holds, or panics with `what` after `limit`.
async fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what} (waited {limit:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The store refuses every request with 403 (a permanent error: credentials revoked, a bucket
/// policy, a deleted bucket). Uploads retried forever with a warning per attempt and `/ready`
/// stayed 200. Now: one error line (rate-limited), a counter, and `/ready` 503 with the reason
/// while it lasts; the WAL keeps taking writes; once the store accepts again the uploads resume,
/// `/ready` is 200 and everything is in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_store_error_makes_the_broker_unready_until_uploads_resume() {
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let ctl = tempfile::tempdir().unwrap();
    let forbidden = ctl.path().join("forbidden");
    let b = start_faulty(
        data.path(),
        objects.path(),
        &format!("forbidden-while={}", forbidden.display()),
    );
    common::create_topic(&b.bootstrap(), "t", 1, &[]).await;
    let batch = |v: &str| common::raw::records(&[v.as_bytes()]);
    let mut raw = common::raw::Raw::connect(b.addr);
    assert_eq!(raw.produce("t", 0, batch("before"), -1), (0, 0));
    assert_eq!(b.http_get("/ready").0, 200);
    std::fs::write(&forbidden, b"").unwrap();
    // The WAL takes writes while the store refuses.
    assert_eq!(raw.produce("t", 0, batch("during-1"), -1), (0, 1));
    assert_eq!(raw.produce("t", 0, batch("during-2"), -1), (0, 2));
    let failing = || {
        b.metrics()
            .get("ringtail_uploads_failing")
            .copied()
            .unwrap_or(0)
    };
    wait_until(
        Duration::from_secs(5),
        "/ready still 200 while uploads fail permanently",
        || b.http_get("/ready").0 == 503,
    )
    .await;
    let (_, body) = b.http_get("/ready");
    assert!(body.contains("AccessDenied"), "the reason: {body:?}");
    assert_eq!(failing(), 1, "ringtail_uploads_failing");
    let errors = b.metrics()["ringtail_upload_permanent_errors_total"];
    assert!(errors >= 1, "{errors}");
    // Several attempts fail within 3 s; the log says so once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let errors = b.metrics()["ringtail_upload_permanent_errors_total"];
    let lines = b.log_count("fails with a permanent error");
    assert!(errors >= 2, "attempts {errors}");
    assert_eq!(lines, 1, "error lines for {errors} failed attempts");
    assert!(b
        .log_lines()
        .iter()
        .any(|l| l.contains("ERROR") && l.contains("fails with a permanent error")));
    println!("{errors} failed attempts, {lines} error line");
    std::fs::remove_file(&forbidden).unwrap();
    wait_until(
        Duration::from_secs(15),
        "/ready not back to 200 after the store recovered",
        || b.http_get("/ready").0 == 200,
    )
    .await;
    assert_eq!(failing(), 0);
    assert_eq!(raw.produce("t", 0, batch("after"), -1), (0, 3));
    assert_eq!(b.terminate(), Some(0));
    // A new broker on a fresh data directory reads it all from the bucket.
    let fresh = tempfile::tempdir().unwrap();
    let b = start_faulty(fresh.path(), objects.path(), "");
    let (read, _) = common::read_all(&b.bootstrap(), "t", 1);
    let values: Vec<&[u8]> = read.values().map(|v| v.as_slice()).collect();
    assert_eq!(values, [&b"before"[..], b"during-1", b"during-2", b"after"]);
}

/// Committed offsets live in `__consumer_offsets`; with an object store it is durability=object,
/// so an OffsetCommit is answered only once the commit is in the bucket. It was durability=wal:
/// a machine lost right after the answer (kill -9, then a broker on a fresh data directory and
/// the same bucket) lost every commit of the upload window. Also reports the commit latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_commit_is_answered_only_once_in_the_bucket() {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let store = format!("file://{}", objects.path().display());
    // Uploads by age only after a minute: only a commit that waits for its upload is in time.
    let args = [
        "--shards",
        "1",
        "--object-store",
        &store,
        "--object-age-max-ms",
        "60000",
    ];
    let b = TestBroker::start_at(data.path(), &args);
    common::create_topic(&b.bootstrap(), "t", 1, &[]).await;
    let consumer = |b: &TestBroker| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", b.bootstrap())
            .set("group.id", "g")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    };
    let c = consumer(&b);
    let commits = 20i64;
    let t = Instant::now();
    for offset in 1..=commits {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Offset(offset))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).expect("commit");
    }
    let per_commit = t.elapsed() / commits as u32;
    println!("OffsetCommit (sync, local-directory store): {per_commit:?} per commit");
    drop(c);
    b.kill9();
    let fresh = tempfile::tempdir().unwrap();
    let b = TestBroker::start_at(fresh.path(), &args);
    let c = consumer(&b);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("t", 0);
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .find_partition("t", 0)
        .unwrap()
        .offset();
    assert_eq!(
        committed,
        Offset::Offset(commits),
        "the last acknowledged commit, read back from the bucket"
    );
}

/// A clean stop hands the slots over after uploading what is durable. With the store down the
/// hand-over gave up after 30 s (CLOSE_FLUSH_MAX) and let the slot go with acknowledged
/// durability=wal records not in the bucket: the next owner's writes superseded them. Now the
/// slot is held (the broker keeps running and keeps trying) until they are uploaded, saying so
/// loudly; once the store is back it uploads, stops cleanly, and the bucket has every record.
/// Takes about 40 s: the old limit has to be passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_keeps_the_slot_until_acknowledged_records_are_uploaded() {
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let ctl = tempfile::tempdir().unwrap();
    let outage = ctl.path().join("store-down");
    let store = format!("file://{}", objects.path().display());
    // Only uploads fail: leases and manifests work, so the hand-over runs.
    let faults = format!("uploads-down-while={}", outage.display());
    let args = [
        "--shards",
        "1",
        "--object-store",
        &store,
        "--object-age-max-ms",
        "60000",
        "--object-store-faults",
        &faults,
    ];
    let mut b = TestBroker::start_at(data.path(), &args);
    common::create_topic(&b.bootstrap(), "t", 1, &[]).await;
    let mut raw = common::raw::Raw::connect(b.addr);
    std::fs::write(&outage, b"").unwrap();
    for i in 0..3i64 {
        let batch = common::raw::records(&[format!("acked-{i}").as_bytes()]);
        assert_eq!(
            raw.produce("t", 0, batch, -1),
            (0, i),
            "durability=wal: in the WAL"
        );
    }
    common::signal(b.pid(), "-TERM");
    // Past the old 30 s limit, the slot is still held and the process runs.
    std::thread::sleep(Duration::from_secs(33));
    b.assert_alive();
    assert!(
        !b.log_contains("handed slot over"),
        "the slot was let go with acknowledged records not uploaded"
    );
    assert!(
        b.log_contains("hand-over waits for the upload"),
        "the wait is logged"
    );
    std::fs::remove_file(&outage).unwrap();
    let status = b.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "stops cleanly once uploaded"
    );
    let fresh = tempfile::tempdir().unwrap();
    let args: Vec<&str> = args[..args.len() - 2].to_vec();
    let b = TestBroker::start_at(fresh.path(), &args);
    let (read, _) = common::read_all(&b.bootstrap(), "t", 1);
    let values: Vec<&[u8]> = read.values().map(|v| v.as_slice()).collect();
    assert_eq!(values, [&b"acked-0"[..], b"acked-1", b"acked-2"]);
}

/// A WAL write fails (a failing disk; injected with `RINGTAIL_TEST_WAL_FAIL_WHILE`). The slot
/// stayed owned and read-only: every produce refused until someone restarted the broker. Now the
/// producer gets a retriable error, the broker hands its slots over after uploading what is
/// durable and stops with exit code 1; a broker on a fresh data dir and the same bucket serves
/// every acknowledged record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wal_write_hands_the_slots_over_and_stops_the_broker() {
    let data = tempfile::tempdir().unwrap();
    let objects = tempfile::tempdir().unwrap();
    let ctl = tempfile::tempdir().unwrap();
    let disk_fails = ctl.path().join("wal-fails");
    let store = format!("file://{}", objects.path().display());
    // Uploads by age only after a minute: the acknowledged records are only in the WAL.
    let args = [
        "--shards",
        "1",
        "--object-store",
        &store,
        "--object-age-max-ms",
        "60000",
    ];
    let env = format!("RINGTAIL_TEST_WAL_FAIL_WHILE={}", disk_fails.display());
    let mut b = TestBroker::start_wrapped(&["env", &env], data.path(), &args);
    common::create_topic(&b.bootstrap(), "t", 1, &[]).await;
    let mut raw = common::raw::Raw::connect(b.addr);
    for i in 0..3i64 {
        let batch = common::raw::records(&[format!("acked-{i}").as_bytes()]);
        assert_eq!(raw.produce("t", 0, batch, -1), (0, i));
    }
    std::fs::write(&disk_fails, b"").unwrap();
    let (code, _) = raw.produce("t", 0, common::raw::records(&[b"refused"]), -1);
    assert!(
        code == 56 || code == 6,
        "a retriable error (KAFKA_STORAGE_ERROR or NOT_LEADER_OR_FOLLOWER), got {code}"
    );
    let status = b.wait_exit(Duration::from_secs(15));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "the broker stops (exit code 1) after a WAL write failed"
    );
    assert!(b.log_contains("a WAL write failed: handing every slot over"));
    let fresh = tempfile::tempdir().unwrap();
    let b = TestBroker::start_at(fresh.path(), &args);
    let (read, _) = common::read_all(&b.bootstrap(), "t", 1);
    let values: Vec<&[u8]> = read.values().map(|v| v.as_slice()).collect();
    assert_eq!(values, [&b"acked-0"[..], b"acked-1", b"acked-2"]);
}
