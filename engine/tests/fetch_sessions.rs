//! Fetch sessions (KIP-227) with real clients: kafka-python 3.0's consumer fetches incrementally;
//! kafka-go's sessionless form (session id -1, epoch -1) is answered as a full fetch.

mod common;

use std::process::Command;

use common::TestBroker;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

/// kafka-python reads every record once, in order, through partition pauses and resumes; the
/// broker answered most of its fetches incrementally, leaving quiet partitions out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_reads_everything_through_incremental_fetches() {
    let b = TestBroker::start(&["--shards", "2"]);
    common::create_topic(&b.bootstrap(), "sessions", 6, &[]).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/fetch_sessions.py"
    );
    let out = Command::new(common::python())
        .args([script, &b.bootstrap(), "sessions", "6"])
        .output()
        .expect("run python (scripts/test.sh installs the test requirements)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("OK fetch sessions"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let m = b.metrics();
    let incremental = m
        .get("ringtail_fetch_incremental_total")
        .copied()
        .unwrap_or(0);
    let omitted = m
        .get("ringtail_fetch_incremental_partitions_omitted_total")
        .copied()
        .unwrap_or(0);
    assert!(
        incremental >= 5,
        "incremental fetches: {incremental}\n{m:?}"
    );
    assert!(omitted > incremental, "partitions left out: {omitted}");
    let session_errors: u64 = m
        .iter()
        .filter(|(k, _)| k.contains("FetchSession") || k.contains("InvalidFetchSessionEpoch"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(session_errors, 0, "{m:?}");
}

/// Issue 27: kafka-go's `Client.Fetch` sends Fetch v11 with session id -1 and epoch -1, Kafka's
/// sessionless full fetch; it was refused with FETCH_SESSION_ID_NOT_FOUND and no topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessionless_fetch_with_id_minus_one_is_a_full_fetch() {
    let b = TestBroker::start(&[]);
    common::create_topic(&b.bootstrap(), "kgo", 1, &[]).await;
    let mut raw = common::raw::Raw::connect(b.addr);
    assert_eq!(
        raw.produce("kgo", 0, common::raw::records(&[b"one", b"two"]), -1),
        (0, 0)
    );
    let fetch = |session_id, session_epoch| {
        FetchRequest::default()
            .with_max_wait_ms(100)
            .with_max_bytes(1 << 20)
            .with_session_id(session_id)
            .with_session_epoch(session_epoch)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("kgo")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])])
    };
    for (id, epoch) in [(-1, -1), (0, -1), (7, -1)] {
        let r: FetchResponse = raw.call(ApiKey::Fetch, 11, &fetch(id, epoch));
        assert_eq!((r.error_code, r.session_id), (0, 0), "session {id}/{epoch}");
        let p = &r.responses[0].partitions[0];
        assert_eq!((p.error_code, p.high_watermark), (0, 2));
        assert!(p.records.as_ref().is_some_and(|r| !r.is_empty()));
    }
    // Epoch 0 opens a session; an unknown session's incremental fetch is refused as Kafka does.
    let r: FetchResponse = raw.call(ApiKey::Fetch, 11, &fetch(0, 0));
    assert_eq!(r.error_code, 0);
    assert_ne!(r.session_id, 0);
    let r: FetchResponse = raw.call(ApiKey::Fetch, 11, &fetch(r.session_id.wrapping_add(1), 1));
    assert_eq!(r.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");
    assert!(r.responses.is_empty());
}
