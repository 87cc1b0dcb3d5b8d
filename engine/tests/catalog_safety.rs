//! The topic catalog in a shared bucket is never written backwards, and data is deleted only for
//! topics a deletion record names (issue 17, items 1 and 2). Two brokers share a local-directory
//! bucket (its compare-and-swap is the same as S3's); real clients: librdkafka.

mod common;

use std::time::{Duration, Instant};

use common::TestBroker;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn args(store: &str, node: i32) -> Vec<String> {
    [
        "--object-store",
        store,
        "--lease-ms",
        "1000",
        "--shards",
        "1",
        "--slots",
        "2",
        "--object-age-max-ms",
        "50",
        "--node-id",
        &node.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

fn start(dir: &std::path::Path, store: &str, node: i32) -> TestBroker {
    let a = args(store, node);
    TestBroker::start_at(dir, &a.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The topic names `bootstrap`'s Metadata lists.
fn topics(bootstrap: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    md.topics().iter().map(|t| t.name().to_string()).collect()
}

async fn produce(bootstrap: &str, topic: &str, n: usize) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    for i in 0..n {
        let value = format!("v{i}");
        p.send(
            FutureRecord::<(), _>::to(topic)
                .partition(0)
                .payload(&value),
            Duration::from_secs(30),
        )
        .await
        .expect("acknowledged");
    }
}

/// Objects in the bucket holding data (not manifests or leases).
fn object_count(bucket: &std::path::Path) -> usize {
    common::data_objects(bucket).len()
}

/// Issue 17 item 1: node 1 is stopped; node 0 (the controller) creates and fills a topic; node 1
/// restarts on its old data directory. Its old catalog must not replace the cluster's: the topic
/// stays known to both brokers and keeps its records.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarting_broker_never_writes_its_old_catalog_over_the_clusters() {
    let bucket = tempfile::tempdir().unwrap();
    let store = format!("file://{}", bucket.path().display());
    let (dir0, dir1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b0 = start(dir0.path(), &store, 0);
    let b1 = start(dir1.path(), &store, 1);
    common::create_topic(&b0.bootstrap(), "before", 1, &[]).await;
    assert_eq!(b1.terminate(), Some(0));

    common::create_topic(&b0.bootstrap(), "born-while-away", 1, &[]).await;
    produce(&b0.bootstrap(), "born-while-away", 5).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while object_count(bucket.path()) == 0 {
        assert!(Instant::now() < deadline, "no object uploaded");
        std::thread::sleep(Duration::from_millis(50));
    }

    let b1 = start(dir1.path(), &store, 1);
    // Several lease rounds: time for a wrong catalog to be pushed, adopted and acted on.
    std::thread::sleep(Duration::from_secs(5));
    for b in [&b0, &b1] {
        let names = topics(&b.bootstrap());
        assert!(
            names.iter().any(|n| n == "born-while-away"),
            "broker at {} lost the topic: {names:?}",
            b.bootstrap()
        );
    }
    let (records, lows) = common::read_all(&b0.bootstrap(), "born-while-away", 1);
    assert_eq!((records.len(), lows), (5, vec![0]));
    assert!(object_count(bucket.path()) > 0);
}

/// Issue 17 item 2: a broker whose catalog lacks a topic whose data the bucket holds, with no
/// record of its deletion (a catalog older than the data), must not delete that data. It
/// refuses to open the slot, saying why, and serves it once the catalog knows the topic again.
#[tokio::test(flavor = "multi_thread")]
async fn data_of_a_topic_missing_from_the_catalog_is_kept() {
    let bucket = tempfile::tempdir().unwrap();
    let store = format!("file://{}", bucket.path().display());
    let flags = [
        "--object-store",
        &store,
        "--object-age-max-ms",
        "50",
        "--shards",
        "1",
    ];
    let b = TestBroker::start(&flags);
    common::create_topic(&b.bootstrap(), "kept", 1, &[]).await;
    produce(&b.bootstrap(), "kept", 5).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while object_count(bucket.path()) == 0 {
        assert!(Instant::now() < deadline, "no object uploaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.terminate(), Some(0));
    let objects = common::data_objects(bucket.path());

    // The bucket's catalog loses the topic, as a newer generation with no deletion record.
    let path = bucket.path().join("catalog.json");
    let good = std::fs::read(&path).unwrap();
    let mut catalog: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let generation = catalog["generation"].as_u64().unwrap_or(0);
    catalog["generation"] = (generation + 10).into();
    catalog["topics"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["name"] != "kept");
    std::fs::write(&path, serde_json::to_vec(&catalog).unwrap()).unwrap();

    // A broker on a fresh data directory takes the bucket's catalog.
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringtail"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "none",
        ])
        .args(["--wal-size-per-shard", "16777216"])
        .args(flags)
        .arg("--data-dir")
        .arg(data.path())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id();
    // Long enough for several deletion passes (one a second) had the slot opened.
    std::thread::sleep(Duration::from_secs(4));
    common::signal(pid, "-TERM");
    let out = out.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert_eq!(
        common::data_objects(bucket.path()),
        objects,
        "objects were deleted"
    );
    assert!(
        err.contains("neither has nor records as deleted"),
        "says why the slot does not open"
    );

    // The catalog knows the topic again (a newer generation): everything is there.
    let mut fixed: serde_json::Value = serde_json::from_slice(&good).unwrap();
    fixed["generation"] = (generation + 11).into();
    std::fs::write(&path, serde_json::to_vec(&fixed).unwrap()).unwrap();
    let b = TestBroker::start_in(tempfile::tempdir().unwrap(), &flags);
    let (records, lows) = common::read_all(&b.bootstrap(), "kept", 1);
    assert_eq!((records.len(), lows), (5, vec![0]));
}

/// Creates `name` through whichever broker is controller, retrying while the controller moves
/// (NOT_CONTROLLER, timeouts); an "already exists" answer to a retry counts as created.
async fn create_until_done(bootstrap: &str, name: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    // A new client per attempt with a short timeout: a restarted broker listens on another
    // port, and a client's request to the old address would wait for its whole timeout.
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(5)))
        .request_timeout(Some(Duration::from_secs(5)));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
        let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
        match admin.create_topics(&[topic], &options).await {
            Ok(r) => match &r[0] {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return,
                Err((_, code)) => println!("creating {name}: {code:?}; retrying"),
            },
            Err(e) => println!("creating {name}: {e}; retrying"),
        }
        assert!(Instant::now() < deadline, "could not create {name}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The controller itself restarts while topics are being created: node 0 (the lowest id, so
/// the controller whenever it runs) stops; node 1 takes the role and creates topics; node 0
/// comes back in the middle of it and becomes the controller again. Every topic created is
/// known to both brokers afterwards, with its records.
#[tokio::test(flavor = "multi_thread")]
async fn topics_created_while_the_controller_restarts_are_never_lost() {
    let bucket = tempfile::tempdir().unwrap();
    let store = format!("file://{}", bucket.path().display());
    let (dir0, dir1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b0 = start(dir0.path(), &store, 0);
    let b1 = start(dir1.path(), &store, 1);
    common::create_topic(&b0.bootstrap(), "first", 1, &[]).await;
    assert_eq!(b0.terminate(), Some(0));

    let bootstrap1 = b1.bootstrap();
    let created = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = created.clone();
    let creator = tokio::spawn(async move {
        for i in 0..20 {
            create_until_done(&bootstrap1, &format!("t{i}")).await;
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // Node 0 comes back with five topics created while it was away, the rest to come.
    while created.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b0 = start(dir0.path(), &store, 0);
    creator.await.unwrap();
    produce(&b0.bootstrap(), "t19", 3).await;

    std::thread::sleep(Duration::from_secs(4));
    for b in [&b0, &b1] {
        let names = topics(&b.bootstrap());
        for i in 0..20 {
            assert!(
                names.contains(&format!("t{i}")),
                "broker at {} lost t{i}: {names:?}",
                b.bootstrap()
            );
        }
        assert!(names.iter().any(|n| n == "first"));
    }
    let (records, _) = common::read_all(&b1.bootstrap(), "t19", 1);
    assert_eq!(records.len(), 3);
}

/// Review of issue 17: a broker without an object store, upgraded from a catalog without
/// generations, keeps starting after its first topic change. Its WAL ring still holds batches
/// of a topic the old version deleted (a chunk they share with live batches is not trimmed);
/// its own catalog is the only one, so a topic it does not know was deleted. Before, the
/// restart after the first change failed ("neither has nor records as deleted").
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_without_a_store_upgraded_from_a_legacy_catalog_keeps_starting() {
    let data = tempfile::tempdir().unwrap();
    let flags = ["--shards", "1", "--object-store", "none"];
    let b = TestBroker::start_at(data.path(), &flags);
    common::create_topic(&b.bootstrap(), "keep", 1, &[]).await;
    common::create_topic(&b.bootstrap(), "gone", 1, &[]).await;
    produce(&b.bootstrap(), "keep", 3).await;
    produce(&b.bootstrap(), "gone", 3).await;
    assert_eq!(b.terminate(), Some(0));

    // The old version's catalog: format 1, no generation, no deletion records, `gone` deleted.
    let path = data.path().join("catalog.json");
    let mut catalog: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let object = catalog.as_object_mut().unwrap();
    object.remove("generation");
    object.remove("deleted");
    object.insert("format_version".into(), 1.into());
    object["topics"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["name"] != "gone");
    std::fs::write(&path, serde_json::to_vec(&catalog).unwrap()).unwrap();

    let b = TestBroker::start_at(data.path(), &flags);
    common::create_topic(&b.bootstrap(), "after", 1, &[]).await;
    assert_eq!(b.terminate(), Some(0));
    let b = TestBroker::start_at(data.path(), &flags);
    let (records, _) = common::read_all(&b.bootstrap(), "keep", 1);
    assert_eq!(records.len(), 3);
    assert!(!topics(&b.bootstrap()).iter().any(|n| n == "gone"));
}

/// Issue 27 item 1: produces racing a topic's deletion. A produce that arrived after the
/// partition was dropped re-created it at offset 0 while batches of the deleted topic were still
/// in flight (asserts fired on the shard: "a partition's batches are added densely"); since a
/// panic ends the process, the broker died. A deleted partition is never re-created by a
/// produce: it is answered UNKNOWN_TOPIC_OR_PARTITION, and the broker stays up.
#[tokio::test(flavor = "multi_thread")]
async fn produces_racing_a_topic_deletion_never_take_the_broker_down() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut b = TestBroker::start(&["--shards", "2"]);
    let bootstrap = b.bootstrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    // 8 rounds in the suite; issue 27 asks for 200 by hand (`RINGTAIL_TEST_RACE_ROUNDS=200`).
    let rounds: usize = std::env::var("RINGTAIL_TEST_RACE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(8);
    for round in 0..rounds {
        common::create_topic(&bootstrap, "racing", 4, &[]).await;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "3000")
            .create()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::new();
        for partition in 0..4 {
            let (producer, stop) = (producer.clone(), stop.clone());
            senders.push(tokio::spawn(async move {
                let mut acked = 0;
                while !stop.load(Ordering::Relaxed) {
                    let record = FutureRecord::<(), _>::to("racing")
                        .partition(partition)
                        .payload("x");
                    if let Ok(Ok(_)) = tokio::time::timeout(
                        Duration::from_secs(4),
                        producer.send(record, Duration::from_millis(100)),
                    )
                    .await
                    {
                        acked += 1;
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let deleted = admin
            .delete_topics(&["racing"], &AdminOptions::new())
            .await
            .unwrap();
        assert!(deleted[0].is_ok(), "round {round}: {deleted:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let mut acked = 0;
        for s in senders {
            acked += s.await.unwrap();
        }
        println!("round {round}: {acked} records acknowledged before the deletion");
        b.assert_alive();
        // Wait until the deletion reached every shard before the topic is created again.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(b.http_get("/ready").0, 200);
}
