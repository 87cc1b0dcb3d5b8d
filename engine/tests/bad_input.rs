//! Malformed, hostile and invalid requests over a raw socket: each gets the Kafka error code or
//! a closed connection, the broker keeps running, and a real client still works afterwards.

mod common;

use std::io::Write;
use std::net::Shutdown;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::raw::Raw;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};

use common::raw::records as batch;

fn produce(raw: &mut Raw, topic: &str, partition: i32, records: Bytes, acks: i16) -> (i16, i64) {
    raw.produce(topic, partition, records, acks)
}

fn fetch(raw: &mut Raw, topic: &str, offset: i64) -> (i16, i64) {
    let req = common::raw::fetch_request(topic, offset);
    let resp: FetchResponse = raw.call(ApiKey::Fetch, 11, &req);
    let p = &resp.responses[0].partitions[0];
    (p.error_code, p.high_watermark)
}

#[test]
fn hostile_and_invalid_requests_get_errors_and_the_broker_keeps_serving() {
    let mut broker = common::TestBroker::start(&["--request-bytes-max", "4194304"]);

    // Set up a topic with a small max.message.bytes.
    let mut raw = Raw::connect(broker.addr);
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("bad")))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(vec![CreatableTopicConfig::default()
                .with_name(StrBytes::from_static_str("max.message.bytes"))
                .with_value(Some(StrBytes::from_static_str("2000")))])]);
    let created: CreateTopicsResponse = raw.call(ApiKey::CreateTopics, 7, &create);
    assert_eq!(created.topics[0].error_code, 0);

    // ApiVersions newer than ours: UNSUPPORTED_VERSION in a v0 body listing what we support.
    // key 18, version 99, correlation id 1000, null client id, no tagged fields, junk body.
    raw.send_frame(&[0, 18, 0, 99, 0, 0, 0x03, 0xe8, 0xff, 0xff, 0, 7, 7, 7]);
    let mut resp = raw.read_frame().expect("ApiVersions answers");
    assert_eq!(
        resp.get_i32(),
        1000,
        "response header v0: correlation id only"
    );
    let v0 = ApiVersionsResponse::decode(&mut resp, 0).unwrap();
    assert_eq!(v0.error_code, 35);
    assert!(v0
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));
    // ...and the same connection keeps working.
    let v3: ApiVersionsResponse = raw.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(v3.error_code, 0);

    // Produce errors, each on a still-open connection.
    let good = batch(&[b"a", b"b"]);
    assert_eq!(produce(&mut raw, "bad", 0, good.clone(), -1), (0, 0));
    let mut corrupt = BytesMut::from(&good[..]);
    let n = corrupt.len();
    corrupt[n - 1] ^= 0x55;
    assert_eq!(
        produce(&mut raw, "bad", 0, corrupt.freeze(), -1).0,
        2,
        "CORRUPT_MESSAGE"
    );
    let mut magic = BytesMut::from(&good[..]);
    magic[16] = 1;
    assert_eq!(
        produce(&mut raw, "bad", 0, magic.freeze(), -1).0,
        87,
        "INVALID_RECORD"
    );
    assert_eq!(
        produce(&mut raw, "bad", 0, good.slice(..30), -1).0,
        2,
        "truncated batch: CORRUPT_MESSAGE"
    );
    assert_eq!(
        produce(&mut raw, "missing", 0, good.clone(), -1).0,
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    assert_eq!(
        produce(&mut raw, "bad", 7, good.clone(), -1).0,
        3,
        "partition out of range"
    );
    assert_eq!(
        produce(&mut raw, "bad", 0, batch(&[&[0u8; 3000]]), -1).0,
        10,
        "MESSAGE_TOO_LARGE"
    );
    assert_eq!(
        produce(&mut raw, "bad", 0, good.clone(), 2).0,
        21,
        "INVALID_REQUIRED_ACKS"
    );
    assert_eq!(
        produce(&mut raw, "bad", 0, good.clone(), 1),
        (0, 2),
        "nothing was appended by the failures"
    );

    // Fetch out of range.
    assert_eq!(fetch(&mut raw, "bad", 4), (0, 4));
    assert_eq!(fetch(&mut raw, "bad", 5).0, 1, "OFFSET_OUT_OF_RANGE");
    assert_eq!(fetch(&mut raw, "bad", -7).0, 1, "OFFSET_OUT_OF_RANGE");
    assert_eq!(fetch(&mut raw, "missing", 0).0, 3);

    // Connection-level garbage: each closes its connection.
    let mut c = Raw::connect(broker.addr);
    c.send_frame(&[0x27, 0x0f, 0, 0, 0, 0, 0, 1]); // api key 9999
    c.assert_closed();

    let mut c = Raw::connect(broker.addr);
    c.send_frame(&[0, 0, 0, 99, 0, 0, 0, 1, 0xff, 0xff, 0]); // Produce v99
    c.assert_closed();

    let mut c = Raw::connect(broker.addr);
    c.s.write_all(&(200 * 1024 * 1024i32).to_be_bytes())
        .unwrap(); // beyond --request-bytes-max
    c.assert_closed();

    let mut c = Raw::connect(broker.addr);
    c.s.write_all(&(-5i32).to_be_bytes()).unwrap();
    c.assert_closed();

    let mut c = Raw::connect(broker.addr);
    c.s.write_all(&100i32.to_be_bytes()).unwrap();
    c.s.write_all(&[0, 3, 0, 1, 0, 0]).unwrap(); // truncated: 6 of 100 bytes, then EOF
    c.s.shutdown(Shutdown::Write).unwrap();
    c.assert_closed();

    // A Metadata request that claims 2^31-1 topics (this once made the codec reserve ~150 GB).
    let mut c = Raw::connect(broker.addr);
    let mut frame = c.encode(
        ApiKey::Metadata,
        1,
        &MetadataRequest::default().with_topics(Some(vec![])),
    );
    let n = frame.len();
    frame[n - 4..].copy_from_slice(&i32::MAX.to_be_bytes());
    c.send_frame(&frame);
    c.assert_closed();

    // Random garbage bodies for every advertised API.
    let mut x: u32 = 12345;
    for key in [0i16, 1, 2, 3, 18, 19, 20, 32, 35, 37, 43, 45, 46, 60, 75] {
        for version in [0i16, 1, 4, 9, 12] {
            let mut c = Raw::connect(broker.addr);
            let mut frame = BytesMut::new();
            frame.put_i16(key);
            frame.put_i16(version);
            frame.put_i32(1);
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                frame.put_u8(x as u8);
            }
            c.send_frame(&frame);
            let _ = c.read_frame(); // an answer or a close: either way, no crash
        }
    }

    broker.assert_alive();
    // The earlier connection and the data are intact.
    assert_eq!(fetch(&mut raw, "bad", 0), (0, 4));
    assert_eq!(produce(&mut raw, "bad", 0, batch(&[b"after"]), -1), (0, 4));
    // A real client still works.
    let out = std::process::Command::new("kcat")
        .args([
            "-b",
            &broker.bootstrap(),
            "-C",
            "-t",
            "bad",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%s\n",
        ])
        .output()
        .expect("kcat");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\na\nb\nafter\n");
    assert_eq!(broker.terminate(), Some(0), "clean exit on SIGTERM");
}
