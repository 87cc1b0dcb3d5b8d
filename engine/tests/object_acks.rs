//! `durability=object` under a steady stream from an unchanged client (issue 26): one
//! confluent-kafka producer, acks=all, `linger.ms=0`, 1 KiB values at 200 messages/s for 15 s —
//! every message acknowledged and none failed, on the embedded store and on S3 (SeaweedFS).
//! Before pipelined connections about 5 % failed and the p50 was tens of seconds: librdkafka
//! sends each partition's batch as its own request on one connection, and each waited for the
//! upload of the one before. The latency is printed; the figures belong to docs/benchmarks.md.

mod common;

use std::process::Command;

use common::TestBroker;

/// Runs scripts/ack_latency.py against `broker`; returns its summary line.
fn stream(broker: &TestBroker, topic: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ack_latency.py");
    let out = Command::new(common::python())
        .args([script, &broker.bootstrap(), topic, "object"])
        .args(["--rate", "200", "--seconds", "15", "--linger-ms", "0"])
        .output()
        .expect("run python (scripts/test.sh installs confluent-kafka)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "a message failed or was never acknowledged\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("sent 3000 acked 3000 failed 0"), "{stdout}");
    stdout
}

/// The acknowledgement metrics saw the stream: every produce's wait is in the `object`
/// histogram, the connection pipelined, uploads are counted as they run.
fn check_metrics(broker: &TestBroker) {
    let m = broker.metrics();
    let object = m
        .get("ringtail_produce_ack_wait_seconds_count{durability=\"object\"}")
        .copied()
        .unwrap_or(0);
    // One per partition of a produce request (a batch may carry several messages).
    assert!(
        (1000..=3000).contains(&object),
        "{object} object acknowledgements counted"
    );
    assert_eq!(
        m.get("ringtail_produce_ack_wait_seconds_count{durability=\"wal\"}"),
        Some(&0)
    );
    let deep = m
        .get("ringtail_connection_requests_in_flight_bucket{le=\"1\"}")
        .copied()
        .unwrap_or(0);
    let all = m["ringtail_connection_requests_in_flight_count"];
    assert!(
        all > deep,
        "no request was read while another was unanswered"
    );
    assert!(m.contains_key("ringtail_uploads_in_flight"));
}

#[test]
fn a_steady_stream_to_an_object_topic_is_acknowledged_on_the_embedded_store() {
    let broker = TestBroker::start(&["--shards", "2"]);
    stream(&broker, "steady-object");
    check_metrics(&broker);
}

#[test]
fn a_steady_stream_to_an_object_topic_is_acknowledged_on_s3() {
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let weed = ringtail_objstore::testing::Seaweed::start();
    let mut args = vec!["--shards".to_string(), "2".to_string()];
    args.extend(weed.broker_args("acks/"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = TestBroker::start(&args);
    stream(&broker, "steady-object-s3");
    check_metrics(&broker);
}
