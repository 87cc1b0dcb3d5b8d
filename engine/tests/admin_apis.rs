//! DescribeTopicPartitions (75), DescribeLogDirs (35), ElectLeaders (43) and
//! Alter/ListPartitionReassignments (45/46) through kafka-python 3's admin client against the
//! real binary (`tests/python/admin_apis.py`). Before these were advertised, a client calling
//! them had its connection closed. Needs the packages in `scripts/test-requirements.txt`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestBroker;

/// Runs `admin_apis.py MODE BOOTSTRAP ARGS...` and returns its stdout, or panics with its
/// output when it fails or runs longer than `limit`.
fn script(mode: &str, bootstrap: &str, args: &[&str], limit: Duration) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/admin_apis.py");
    let mut child = Command::new(common::python())
        .arg(path)
        .arg(mode)
        .arg(bootstrap)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python (scripts/test.sh installs the test requirements)");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let timed_out = child.try_wait().unwrap().is_none();
    if timed_out {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !timed_out && out.status.success() && stdout.contains(&format!("OK {mode}")),
        "admin_apis.py {mode} failed ({}, timed out: {timed_out})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn describe_topic_partitions_pages_metadatas_partitions() {
    let broker = TestBroker::start(&["--shards", "2"]);
    script(
        "describe",
        &broker.bootstrap(),
        &[],
        Duration::from_secs(120),
    );
    let metrics = broker.metrics();
    let counted = |api: &str| {
        metrics
            .get(&format!("ringtail_requests_total{{api=\"{api}\"}}"))
            .copied()
    };
    assert!(
        counted("DescribeTopicPartitions").is_some_and(|n| n >= 10),
        "{metrics:?}"
    );
    assert!(
        metrics.contains_key(
            "ringtail_request_errors_total{api=\"DescribeTopicPartitions\",error=\"UnknownTopicOrPartition\"}"
        ),
        "{metrics:?}"
    );
}

/// The partition sizes DescribeLogDirs reports add up to the batch bytes produced (the broker's
/// own count), whether the bytes are in the WAL only or already in objects. Returns the broker's
/// metrics.
fn log_dirs_report_the_bytes_produced(extra: &[&str]) -> std::collections::BTreeMap<String, u64> {
    let mut args = vec!["--shards", "2"];
    args.extend(extra);
    let broker = TestBroker::start(&args);
    let data_dir = std::path::absolute(&broker.data_dir).unwrap();
    let out = script(
        "log-dirs",
        &broker.bootstrap(),
        &[data_dir.to_str().unwrap()],
        Duration::from_secs(120),
    );
    let sizes: serde_json::Value = out
        .lines()
        .find_map(|l| l.strip_prefix("SIZES "))
        .map(|json| serde_json::from_str(json).unwrap())
        .unwrap_or_else(|| panic!("no SIZES line:\n{out}"));
    let reported: u64 = sizes
        .as_object()
        .unwrap()
        .values()
        .flat_map(|partitions| partitions.as_object().unwrap().values())
        .map(|size| size.as_u64().unwrap())
        .sum();
    let metrics = broker.metrics();
    assert_eq!(reported, metrics["ringtail_produce_bytes_total"], "{sizes}");
    metrics
}

#[test]
fn log_dirs_report_wal_bytes() {
    log_dirs_report_the_bytes_produced(&["--object-store", "none"]);
}

/// Uploaded within 20 ms and no hot-tail cache: the bytes reported are those of the objects
/// (counting memory alone would report nothing, counting both would report them twice).
#[test]
fn log_dirs_report_object_bytes() {
    let metrics = log_dirs_report_the_bytes_produced(&[
        "--object-age-max-ms",
        "20",
        "--hot-cache-bytes-per-shard",
        "0",
    ]);
    assert!(
        metrics["ringtail_store_requests_total{op=\"put\"}"] > 0,
        "{metrics:?}"
    );
}

#[test]
fn elections_are_not_needed_and_reassignment_only_to_the_owner() {
    let broker = TestBroker::start(&["--shards", "2"]);
    script(
        "replicas",
        &broker.bootstrap(),
        &[],
        Duration::from_secs(120),
    );
}

/// Two brokers on one bucket: the controller answers the replica-set requests, the other
/// NOT_CONTROLLER; each broker's log dir lists the partitions Metadata says it leads.
#[tokio::test(flavor = "multi_thread")]
async fn in_a_cluster_controller_requests_and_log_dirs_follow_ownership() {
    let bucket = tempfile::tempdir().unwrap();
    let store = format!("file://{}", bucket.path().display());
    let start = |node: &str| {
        TestBroker::start(&[
            "--object-store",
            &store,
            "--node-id",
            node,
            "--shards",
            "1",
            "--slots",
            "4",
            "--object-age-max-ms",
            "50",
        ])
    };
    let a = start("0");
    let b = start("1");
    common::create_topic(&b.bootstrap(), "spread", 8, &[]).await;
    let bootstrap = b.bootstrap();
    let out = tokio::task::spawn_blocking(move || {
        script("cluster", &bootstrap, &["spread"], Duration::from_secs(120))
    })
    .await
    .unwrap();
    eprintln!("{out}");
    drop(a);
}
