//! Node leases on a shared object store: a second broker with the same node id refuses to start
//! (naming the holder); after a kill -9 the node is taken over once its lease has been silent for a lease duration; a clean
//! shutdown frees it at once.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestBroker;

const LEASE_MS: &str = "1000";

fn start_expecting_refusal(store: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ringtail"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "none",
        ])
        .args([
            "--object-store",
            store,
            "--lease-ms",
            LEASE_MS,
            "--node-id",
            "0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{err}");
    assert!(!out.status.success(), "a second broker must not start");
    assert!(started.elapsed() < Duration::from_secs(20));
    err
}

#[test]
fn one_broker_per_node_id_and_a_dead_ones_node_is_taken_over() {
    let bucket = tempfile::tempdir().unwrap();
    let store = format!("file://{}", bucket.path().display());
    let args = ["--object-store", &store, "--lease-ms", LEASE_MS];
    let a_dir = tempfile::tempdir().unwrap();
    let a = TestBroker::start_at(a_dir.path(), &args);

    let err = start_expecting_refusal(&store);
    assert!(
        err.contains("node id 0 is held by a running broker"),
        "{err}"
    );
    assert!(
        err.contains(&format!(":{}", a.addr.port())),
        "names the holder: {err}"
    );
    let mut a = a;
    a.assert_alive();

    // kill -9: the lease stays behind; a new broker for node 0 takes it over after the lease
    // has been silent for a lease duration, and serves.
    a.kill9();
    let b_dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let b = TestBroker::start_at(b_dir.path(), &args);
    let took = t.elapsed();
    println!("takeover of node 0 after kill -9: broker serving in {took:?}");
    assert!(b.log_contains("waiting to see whether its holder renews it"));
    assert!(b.log_contains("holding the node lease"));

    // A clean shutdown deletes the lease: the next start does not wait.
    assert_eq!(b.terminate(), Some(0));
    let c = TestBroker::start_at(b_dir.path(), &args);
    assert!(!c.log_contains("waiting to see whether its holder renews it"));
    assert!(c.log_contains("holding the node lease"));
}

/// Issue 17 item 6: a panic on a shard ends the process (it lived on with a dead shard and a
/// renewed lease, so nobody took that shard's slots over); a new broker for the node then
/// takes the node over and serves.
#[tokio::test(flavor = "multi_thread")]
async fn a_shard_panic_ends_the_process_and_the_node_is_taken_over() {
    let bucket = tempfile::tempdir().unwrap();
    let store = format!("file://{}", bucket.path().display());
    let args = ["--object-store", &store, "--lease-ms", LEASE_MS];
    let dir = tempfile::tempdir().unwrap();
    let mut a = TestBroker::start_wrapped(
        &["env", "RINGTAIL_TEST_PANIC_ON_CREATE=boom"],
        dir.path(),
        &args,
    );
    common::create_topic(&a.bootstrap(), "fine", 1, &[]).await;
    // The admin client's request dies with the broker: its answer does not matter.
    let bootstrap = a.bootstrap();
    tokio::spawn(async move {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        let topic = NewTopic::new("boom", 1, TopicReplication::Fixed(1));
        let _ = admin.create_topics(&[topic], &AdminOptions::new()).await;
    });
    let status = a.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the broker must end after a shard panic: {status:?}"
    );
    assert!(a.log_contains("ending the process so that its partitions fail over"));
    drop(a);
    let fresh = tempfile::tempdir().unwrap();
    let b = TestBroker::start_at(fresh.path(), &args);
    assert!(b.log_contains("holding the node lease"));
    let (records, _) = common::read_all(&b.bootstrap(), "fine", 1);
    assert!(records.is_empty());
}
