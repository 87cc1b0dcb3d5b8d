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

/// A topic as librdkafka's DescribeTopics reports it: (name, error code, partitions as
/// (index, leader, replicas)).
type Described = (String, i32, Vec<(i32, i32, Vec<i32>)>);

/// `rd_kafka_DescribeTopics` of librdkafka 2.12, which the rdkafka crate does not wrap, called
/// through its C API on an rdkafka admin client.
fn librdkafka_describe_topics(bootstrap: &str, names: &[&str]) -> Vec<Described> {
    use rdkafka::admin::AdminClient;
    use rdkafka::bindings as rd;
    use rdkafka::client::DefaultClientContext;
    use std::ffi::{CStr, CString};

    let admin: AdminClient<DefaultClientContext> = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let rk = admin.inner().native_ptr();
    let c_names: Vec<CString> = names.iter().map(|n| CString::new(*n).unwrap()).collect();
    let mut pointers: Vec<*const std::ffi::c_char> = c_names.iter().map(|c| c.as_ptr()).collect();
    let node_ids = |nodes: *mut *const rd::rd_kafka_Node_t, n: usize| -> Vec<i32> {
        // SAFETY: librdkafka returns an array of `n` valid node pointers.
        (0..n)
            .map(|i| unsafe { rd::rd_kafka_Node_id(*nodes.add(i)) })
            .collect()
    };
    // SAFETY: every pointer passed comes from librdkafka (or from `c_names`, which outlives the
    // call); the event and what it holds are read before it is destroyed; each object is
    // destroyed once.
    unsafe {
        let queue = rd::rd_kafka_queue_new(rk);
        let topics =
            rd::rd_kafka_TopicCollection_of_topic_names(pointers.as_mut_ptr(), pointers.len());
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
        );
        rd::rd_kafka_DescribeTopics(rk, topics, options, queue);
        let event = rd::rd_kafka_queue_poll(queue, 30_000);
        assert!(
            !event.is_null(),
            "DescribeTopics did not answer within 30 s"
        );
        assert_eq!(
            rd::rd_kafka_event_error(event),
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        );
        let result = rd::rd_kafka_event_DescribeTopics_result(event);
        let mut count = 0;
        let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        let described = (0..count)
            .map(|i| {
                let d = *descriptions.add(i);
                let name = CStr::from_ptr(rd::rd_kafka_TopicDescription_name(d))
                    .to_string_lossy()
                    .to_string();
                let error = rd::rd_kafka_error_code(rd::rd_kafka_TopicDescription_error(d)) as i32;
                let mut n = 0;
                let partitions = rd::rd_kafka_TopicDescription_partitions(d, &mut n);
                let partitions = (0..n)
                    .map(|j| {
                        let p = *partitions.add(j);
                        let leader = rd::rd_kafka_TopicPartitionInfo_leader(p);
                        let leader = if leader.is_null() {
                            -1
                        } else {
                            rd::rd_kafka_Node_id(leader)
                        };
                        let mut r = 0;
                        let replicas = rd::rd_kafka_TopicPartitionInfo_replicas(p, &mut r);
                        (
                            rd::rd_kafka_TopicPartitionInfo_partition(p),
                            leader,
                            node_ids(replicas, r),
                        )
                    })
                    .collect();
                (name, error, partitions)
            })
            .collect();
        rd::rd_kafka_event_destroy(event);
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_TopicCollection_destroy(topics);
        rd::rd_kafka_queue_destroy(queue);
        described
    }
}

/// With DescribeTopicPartitions advertised, librdkafka's DescribeTopics still works. librdkafka
/// 2.12 does not know API 75 (its protocol table ends at 73) and asks Metadata; the broker's
/// request counts confirm it, so docs/compatibility.md's statement is checked here too.
#[tokio::test(flavor = "multi_thread")]
async fn librdkafka_describe_topics_works_with_api_75_advertised() {
    let broker = TestBroker::start(&["--shards", "2"]);
    common::create_topic(&broker.bootstrap(), "described", 3, &[]).await;
    let bootstrap = broker.bootstrap();
    let mut described = tokio::task::spawn_blocking(move || {
        librdkafka_describe_topics(&bootstrap, &["described", "missing"])
    })
    .await
    .unwrap();
    described.sort();
    let unknown_topic = 3;
    assert_eq!(
        described,
        vec![
            (
                "described".to_string(),
                0,
                (0..3).map(|p| (p, 0, vec![0])).collect()
            ),
            ("missing".to_string(), unknown_topic, vec![]),
        ]
    );
    let metrics = broker.metrics();
    assert!(
        !metrics.contains_key("ringtail_requests_total{api=\"DescribeTopicPartitions\"}")
            && metrics["ringtail_requests_total{api=\"Metadata\"}"] > 0,
        "{metrics:?}"
    );
}

/// Dynamic broker configs (librdkafka's admin test 0081 sets one; `kafka-configs.sh
/// --entity-type brokers` does): set on a broker and as the cluster default, described with
/// their sources, static and unknown ones refused with INVALID_CONFIG, kept across a restart.
#[test]
fn dynamic_broker_configs_are_set_described_and_kept() {
    let data = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_at(data.path(), &[]);
    script(
        "broker-configs",
        &broker.bootstrap(),
        &[],
        Duration::from_secs(120),
    );
    broker.terminate();
    let broker = TestBroker::start_at(data.path(), &[]);
    script(
        "broker-configs-kept",
        &broker.bootstrap(),
        &[],
        Duration::from_secs(60),
    );
}
