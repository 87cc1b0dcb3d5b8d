//! Topic config `compression.type` with real clients: batches a producer compresses in one
//! codec are stored in the topic's, as Kafka's LogValidator stores them, and read back
//! unchanged; the config is set by every admin API and checked.

mod common;

use common::kcat;

use common::raw::Raw;
use common::TestBroker;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use ringtail_netio::header::BatchHeader;

const INVALID_CONFIG: i16 = 40;

/// Produces `n` keyed records with a header to partition 0 of `topic` through kcat
/// (librdkafka 2.0) compressing with `codec`; returns them as `kcat -f '%k|%s|%h'` prints them.
fn kcat_produce(bootstrap: &str, topic: &str, codec: &str, n: usize) -> Vec<String> {
    let input: String = (0..n)
        .map(|i| format!("k{i}:{topic}-{codec}-value-{i}-{}\n", "abc".repeat(i % 40)))
        .collect();
    kcat(
        &[
            "-b", bootstrap, "-P", "-t", topic, "-p", "0", "-K:", "-z", codec, "-H", "h=v",
        ],
        Some(&input),
    );
    (0..n)
        .map(|i| {
            format!(
                "k{i}|{topic}-{codec}-value-{i}-{}|h=v",
                "abc".repeat(i % 40)
            )
        })
        .collect()
}

/// Every record of partition 0 of `topic`, read back by kcat.
fn kcat_consume(bootstrap: &str, topic: &str) -> Vec<String> {
    kcat(
        &[
            "-b",
            bootstrap,
            "-C",
            "-t",
            topic,
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k|%s|%h\n",
        ],
        None,
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// The codec id (attribute bits 0-2) of every batch stored in partition 0 of `topic`,
/// fetched raw (Fetch v11) as the broker serves them.
fn stored_codecs(b: &TestBroker, topic: &str) -> Vec<i16> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(16 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(16 << 20)])]);
    let fetched: FetchResponse = Raw::connect(b.addr).call(ApiKey::Fetch, 11, &request);
    let partition = &fetched.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    let mut records = partition.records.clone().expect("records");
    let mut codecs = Vec::new();
    while !records.is_empty() {
        let header = BatchHeader::parse(&records).expect("a whole batch header");
        assert_eq!(
            crc32c::crc32c(&records[21..header.size_bytes()]),
            header.crc,
            "{topic}: the stored batch's CRC holds"
        );
        codecs.push(header.attributes & 0x07);
        let _ = records.split_to(header.size_bytes());
    }
    codecs
}

fn admin(b: &TestBroker) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .expect("admin client")
}

/// The topic's configs as DescribeConfigs (librdkafka) reports them: (value, is default).
async fn described(b: &TestBroker, topic: &str, name: &str) -> (String, bool) {
    let described = admin(b)
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let entry = described[0]
        .as_ref()
        .unwrap()
        .get(name)
        .unwrap_or_else(|| panic!("{topic} reports {name}"));
    (entry.value.clone().unwrap_or_default(), entry.is_default)
}

/// One IncrementalAlterConfigs SET of `configs` on `topic`: the resource's error code.
fn incremental_set(raw: &mut Raw, topic: &str, configs: &[(&str, &str)]) -> i16 {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        AlterableConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_config_operation(0)
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            ),
    ]);
    let r: IncrementalAlterConfigsResponse = raw.call(ApiKey::IncrementalAlterConfigs, 1, &request);
    r.responses[0].error_code
}

/// One legacy AlterConfigs of `topic` to exactly `configs`: the resource's error code.
fn legacy_set(raw: &mut Raw, topic: &str, configs: &[(&str, &str)]) -> i16 {
    use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let request =
        AlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        AlterableConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            )]);
    let r: AlterConfigsResponse = raw.call(ApiKey::AlterConfigs, 2, &request);
    r.responses[0].error_code
}

/// kcat compressing with lz4 into a zstd topic, an uncompressed one and a `producer` one:
/// each topic stores its own codec (the `producer` one the lz4 batches as sent), and kcat
/// and librdkafka 2.12 read every record back as it was produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_batches_are_stored_in_the_topics_codec_and_read_back_unchanged() {
    let b = TestBroker::start(&[]);
    let bootstrap = b.bootstrap();
    for (topic, configs, codec) in [
        ("to-zstd", &[("compression.type", "zstd")][..], 4),
        ("to-plain", &[("compression.type", "uncompressed")][..], 0),
        ("as-sent", &[][..], 3),
    ] {
        common::create_topic(&bootstrap, topic, 1, configs).await;
        let mut sent = kcat_produce(&bootstrap, topic, "lz4", 300);
        sent.extend(kcat_produce(&bootstrap, topic, "lz4", 5));
        assert_eq!(kcat_consume(&bootstrap, topic), sent, "{topic}");
        let (read, _) = common::read_all(&bootstrap, topic, 1);
        let values: Vec<String> = read
            .values()
            .map(|v| String::from_utf8(v.clone()).unwrap())
            .collect();
        let sent_values: Vec<String> = sent
            .iter()
            .map(|l| l.split('|').nth(1).unwrap().to_string())
            .collect();
        assert_eq!(
            values, sent_values,
            "{topic}: librdkafka 2.12 reads the same"
        );
        let codecs = stored_codecs(&b, topic);
        assert!(codecs.len() >= 2, "{topic}: {codecs:?}");
        assert!(codecs.iter().all(|c| *c == codec), "{topic}: {codecs:?}");
    }
}

/// compression.type and the KIP-390 levels through CreateTopics, IncrementalAlterConfigs and
/// AlterConfigs, reported by DescribeConfigs; invalid values get INVALID_CONFIG and change
/// nothing; a change applies to the next produce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_type_is_set_by_every_admin_api_and_checked() {
    let b = TestBroker::start(&[]);
    let bootstrap = b.bootstrap();
    common::create_topic(
        &bootstrap,
        "codecs",
        1,
        &[
            ("compression.type", "gzip"),
            ("compression.gzip.level", "1"),
        ],
    )
    .await;
    assert_eq!(
        described(&b, "codecs", "compression.type").await,
        ("gzip".into(), false)
    );
    assert_eq!(
        described(&b, "codecs", "compression.gzip.level").await,
        ("1".into(), false)
    );
    assert_eq!(
        described(&b, "codecs", "compression.zstd.level").await,
        ("3".into(), true)
    );
    kcat_produce(&bootstrap, "codecs", "snappy", 50);

    // Refused at creation: an unknown codec, a level outside the codec's range.
    let refused = admin(&b)
        .create_topics(
            &[
                NewTopic::new("bad-codec", 1, TopicReplication::Fixed(1))
                    .set("compression.type", "brotli"),
                NewTopic::new("bad-level", 1, TopicReplication::Fixed(1))
                    .set("compression.zstd.level", "23"),
            ],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for r in &refused {
        assert_eq!(r.as_ref().unwrap_err().1, RDKafkaErrorCode::InvalidConfig);
    }

    let mut raw = Raw::connect(b.addr);
    assert_eq!(
        incremental_set(&mut raw, "codecs", &[("compression.type", "brotli")]),
        INVALID_CONFIG
    );
    assert_eq!(
        incremental_set(&mut raw, "codecs", &[("compression.lz4.level", "18")]),
        INVALID_CONFIG
    );
    assert_eq!(
        described(&b, "codecs", "compression.type").await.0,
        "gzip",
        "a refused change changes nothing"
    );
    assert_eq!(
        incremental_set(&mut raw, "codecs", &[("compression.type", "snappy")]),
        0
    );
    assert_eq!(
        described(&b, "codecs", "compression.type").await,
        ("snappy".into(), false)
    );
    kcat_produce(&bootstrap, "codecs", "none", 50);
    assert_eq!(
        legacy_set(&mut raw, "codecs", &[("compression.type", "ZSTD")]),
        INVALID_CONFIG
    );
    assert_eq!(
        legacy_set(
            &mut raw,
            "codecs",
            &[("compression.type", "lz4"), ("compression.lz4.level", "1")]
        ),
        0
    );
    assert_eq!(
        described(&b, "codecs", "compression.gzip.level").await,
        ("-1".into(), true),
        "the legacy API replaces the whole set"
    );
    kcat_produce(&bootstrap, "codecs", "zstd", 50);
    let mut codecs = stored_codecs(&b, "codecs");
    codecs.dedup();
    assert_eq!(codecs, vec![1, 2, 3], "gzip, then snappy, then lz4");
    assert_eq!(kcat_consume(&bootstrap, "codecs").len(), 150);
}

/// An idempotent producer's lz4 batches in a zstd topic: recompressed with producer id,
/// epoch and sequences unchanged, so a retry is still recognised (its original offset, not
/// a second copy) and a gap still refused.
#[test]
fn a_retried_idempotent_batch_is_deduplicated_after_recompression() {
    let b = TestBroker::start(&[]);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::create_topic(
            &b.bootstrap(),
            "idem",
            1,
            &[("compression.type", "zstd")],
        ));
    let mut raw = Raw::connect(b.addr);
    let init: InitProducerIdResponse = raw.call(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(init.error_code, 0);
    let batch = |sequence: i32, n: i32| {
        idempotent_lz4_batch(init.producer_id.0, init.producer_epoch, sequence, n)
    };
    assert_eq!(raw.produce("idem", 0, batch(0, 5), -1), (0, 0));
    assert_eq!(raw.produce("idem", 0, batch(5, 3), -1), (0, 5));
    assert_eq!(
        raw.produce("idem", 0, batch(5, 3), -1),
        (0, 5),
        "the retry gets its original offset"
    );
    const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    assert_eq!(
        raw.produce("idem", 0, batch(10, 1), -1).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER
    );
    assert_eq!(raw.produce("idem", 0, batch(8, 2), -1), (0, 8));
    assert_eq!(stored_codecs(&b, "idem"), vec![4, 4, 4]);
    let (read, _) = common::read_all(&b.bootstrap(), "idem", 1);
    let values: Vec<Vec<u8>> = read.into_values().collect();
    let expected: Vec<Vec<u8>> = (0..10).map(|i| format!("seq-{i}").into_bytes()).collect();
    assert_eq!(values, expected, "offsets 0..10, nothing twice");
}

/// One lz4 batch of `n` records from `producer_id`/`epoch` starting at `sequence`.
fn idempotent_lz4_batch(producer_id: i64, epoch: i16, sequence: i32, n: i32) -> bytes::Bytes {
    let values: Vec<String> = (0..n).map(|i| format!("seq-{}", sequence + i)).collect();
    let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    let lz4 = kafka_protocol::records::Compression::Lz4;
    common::raw::idempotent_batch(producer_id, epoch, sequence, &values, lz4)
}
