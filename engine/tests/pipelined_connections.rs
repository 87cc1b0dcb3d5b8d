//! Pipelined connections (ARCHITECTURE.md, "Pipelined connections"): a client that sends many
//! requests without reading gets every answer, in request order, with the effects in request
//! order; a barrier request runs after the answers before it.

mod common;

use bytes::{Buf, Bytes};
use common::raw::{fetch_request, produce_request, records, Raw};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};

fn create(raw: &mut Raw, name: &str, configs: &[(&str, &str)]) {
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.into())))
            .with_num_partitions(1)
            .with_replication_factor(1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            )]);
    let created: CreateTopicsResponse = raw.call(ApiKey::CreateTopics, 7, &create);
    assert_eq!(created.topics[0].error_code, 0);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sent {
    Produce,
    Fetch,
    Metadata,
}

/// The answer's correlation id and body.
fn decode<P: Decodable + HeaderVersion>(mut frame: Bytes, version: i16) -> (i32, P) {
    let header = ResponseHeader::decode(&mut frame, P::header_version(version)).unwrap();
    (
        header.correlation_id,
        P::decode(&mut frame, version).unwrap(),
    )
}

/// Sends `n` requests to `topic` without reading (produces, with a fetch every 5th and a
/// metadata request every 7th), then reads every answer: they come in request order, the
/// produces' offsets follow the request order, and each fetch sees at least the produces
/// answered before it.
fn pipeline(raw: &mut Raw, topic: &str, n: usize) {
    let mut sent = Vec::new();
    for i in 0..n {
        let (kind, frame) = if i % 5 == 4 {
            (
                Sent::Fetch,
                raw.encode(ApiKey::Fetch, 11, &fetch_request(topic, 0)),
            )
        } else if i % 7 == 6 {
            let req = MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(StrBytes::from_string(topic.into()))))]));
            (Sent::Metadata, raw.encode(ApiKey::Metadata, 9, &req))
        } else {
            let value = format!("v{i}");
            let req = produce_request(topic, 0, records(&[value.as_bytes()]), -1);
            (Sent::Produce, raw.encode(ApiKey::Produce, 9, &req))
        };
        raw.send_frame(&frame);
        sent.push((raw.correlation, kind));
    }
    let mut next_offset = 0;
    let mut produced = 0;
    for (correlation, kind) in sent {
        let frame = raw.read_frame().expect("an answer per request");
        assert_eq!(
            (&frame[..4]).get_i32(),
            correlation,
            "answers in request order"
        );
        match kind {
            Sent::Produce => {
                let (_, r): (i32, ProduceResponse) = decode(frame, 9);
                let p = &r.responses[0].partition_responses[0];
                assert_eq!(p.error_code, 0);
                assert_eq!(p.base_offset, next_offset, "offsets in request order");
                next_offset += 1;
                produced += 1;
            }
            Sent::Fetch => {
                let (_, r): (i32, FetchResponse) = decode(frame, 11);
                let p = &r.responses[0].partitions[0];
                assert_eq!(p.error_code, 0);
                assert!(
                    p.high_watermark >= produced,
                    "a fetch sees the produces answered before it ({} < {produced})",
                    p.high_watermark
                );
            }
            Sent::Metadata => {
                let (_, r): (i32, MetadataResponse) = decode(frame, 9);
                assert_eq!(r.topics[0].error_code, 0);
            }
        }
    }
    assert!(produced > n as i64 / 2);
}

#[test]
fn pipelined_requests_are_answered_and_applied_in_request_order() {
    let broker = common::TestBroker::start(&[]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "pipe-wal", &[]);
    create(&mut raw, "pipe-object", &[("durability", "object")]);
    pipeline(&mut raw, "pipe-wal", 100);
    // Acknowledged only once uploaded: the connection keeps reading meanwhile.
    pipeline(&mut raw, "pipe-object", 100);
    let pipelined = broker.metrics()["ringtail_requests_pipelined_total"];
    assert!(pipelined > 0, "requests overlapped ({pipelined})");
}

/// A barrier (CreateTopics) sent behind produces is answered after them, and the produces
/// behind it go on in order.
#[test]
fn a_barrier_request_waits_for_the_answers_before_it() {
    let broker = common::TestBroker::start(&[]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "before", &[("durability", "object")]);
    let mut order = Vec::new();
    for i in 0..5 {
        let req = produce_request("before", 0, records(&[format!("a{i}").as_bytes()]), -1);
        let f = raw.encode(ApiKey::Produce, 9, &req);
        raw.send_frame(&f);
        order.push(raw.correlation);
    }
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("after")))
            .with_num_partitions(1)
            .with_replication_factor(1)]);
    let f = raw.encode(ApiKey::CreateTopics, 7, &create);
    raw.send_frame(&f);
    order.push(raw.correlation);
    for i in 0..5 {
        let req = produce_request("after", 0, records(&[format!("b{i}").as_bytes()]), -1);
        let f = raw.encode(ApiKey::Produce, 9, &req);
        raw.send_frame(&f);
        order.push(raw.correlation);
    }
    for (k, correlation) in order.into_iter().enumerate() {
        let frame = raw.read_frame().expect("an answer per request");
        assert_eq!((&frame[..4]).get_i32(), correlation);
        if k == 5 {
            let (_, r): (i32, CreateTopicsResponse) = decode(frame, 7);
            assert_eq!(r.topics[0].error_code, 0);
        } else {
            let (_, r): (i32, ProduceResponse) = decode(frame, 9);
            let p = &r.responses[0].partition_responses[0];
            assert_eq!((p.error_code, p.base_offset), (0, (k % 6) as i64));
        }
    }
}
