//! librdkafka (through the `rdkafka` crate) against the real `ringtail` binary.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TestBroker;
use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

fn admin(b: &TestBroker) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .expect("admin client")
}

fn producer(b: &TestBroker, codec: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("compression.codec", codec)
        .set("message.max.bytes", "3000000")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

fn consumer(b: &TestBroker) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", "unused-no-group-apis-yet")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer")
}

#[derive(Debug, Clone, PartialEq)]
struct Rec {
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: i64,
}

fn payload(seed: usize, len: usize) -> Vec<u8> {
    let mut x = (seed as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Half compressible, half noise.
            if i % 2 == 0 {
                (x >> 56) as u8
            } else {
                b'a'
            }
        })
        .collect()
}

/// Produces with every codec, keys, headers, null values and a 1 MiB message; consumes it all
/// back byte-exact and in order with contiguous offsets; checks ListOffsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_every_codec_byte_exact() {
    // Three shards on two cores: most partitions are owned by a shard other than the one
    // holding the connection, so requests go through cross-shard messages.
    let b = TestBroker::start(&["--shards", "3"]);
    let topic = "roundtrip";
    let partitions = 4;
    common::create_topic(
        &b.bootstrap(),
        topic,
        partitions,
        &[("max.message.bytes", "2097152")],
    )
    .await;

    let mut expected: BTreeMap<i32, Vec<Rec>> = BTreeMap::new();
    // Recent timestamps: older ones would fall to the 7-day retention.ms default at once.
    let base_ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    let mut n = 0usize;
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let p = producer(&b, codec);
        let mut sends = Vec::new();
        for j in 0..40usize {
            n += 1;
            let partition = (j % partitions as usize) as i32;
            let key = format!("{codec}-{j}").into_bytes();
            let value = if j % 7 == 3 {
                None
            } else {
                Some(payload(n, 10 + (j * 37) % 3000))
            };
            let headers = vec![
                ("codec".to_string(), Some(codec.as_bytes().to_vec())),
                ("null".to_string(), None),
            ];
            let ts = base_ts + n as i64;
            sends.push((
                partition,
                Rec {
                    offset: -1,
                    key: Some(key),
                    value,
                    headers,
                    timestamp: ts,
                },
            ));
        }
        // One 1 MiB message (a single record of exactly 1 MiB).
        n += 1;
        sends.push((
            0,
            Rec {
                offset: -1,
                key: None,
                value: Some(payload(n, 1 << 20)),
                headers: vec![],
                timestamp: base_ts + n as i64,
            },
        ));
        let futures: Vec<_> = sends
            .iter()
            .map(|(partition, r)| {
                let mut headers = OwnedHeaders::new();
                for (k, v) in &r.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: v.as_deref(),
                    });
                }
                let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(topic)
                    .partition(*partition)
                    .headers(headers)
                    .timestamp(r.timestamp);
                if let Some(k) = &r.key {
                    record = record.key(k);
                }
                if let Some(v) = &r.value {
                    record = record.payload(v);
                }
                p.send_result(record).map_err(|(e, _)| e).expect("enqueue")
            })
            .collect();
        for ((partition, mut r), f) in sends.into_iter().zip(futures) {
            let delivery = f
                .await
                .expect("delivery future")
                .unwrap_or_else(|(e, _)| panic!("{codec} delivery failed: {e}"));
            assert_eq!(delivery.partition, partition);
            r.offset = delivery.offset;
            expected.entry(partition).or_default().push(r);
        }
    }
    // Offsets per partition are dense from 0, in send order.
    for (partition, recs) in &mut expected {
        recs.sort_by_key(|r| r.offset);
        let offsets: Vec<i64> = recs.iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            (0..recs.len() as i64).collect::<Vec<_>>(),
            "partition {partition}"
        );
    }

    let c = consumer(&b);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let total: usize = expected.values().map(|v| v.len()).sum();
    let mut got: BTreeMap<i32, Vec<Rec>> = BTreeMap::new();
    let deadline = Instant::now() + TIMEOUT;
    while got.values().map(|v| v.len()).sum::<usize>() < total {
        assert!(
            Instant::now() < deadline,
            "timed out consuming: got {:?} of {:?}",
            got.iter().map(|(p, v)| (*p, v.len())).collect::<Vec<_>>(),
            expected
                .iter()
                .map(|(p, v)| (*p, v.len()))
                .collect::<Vec<_>>()
        );
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("consume");
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec())))
                    .collect()
            })
            .unwrap_or_default();
        got.entry(m.partition()).or_default().push(Rec {
            offset: m.offset(),
            key: m.key().map(|k| k.to_vec()),
            value: m.payload().map(|v| v.to_vec()),
            headers,
            timestamp: m.timestamp().to_millis().unwrap(),
        });
    }
    assert_eq!(got, expected, "consumed records equal produced records");

    for (partition, recs) in &expected {
        let (low, high) = c.fetch_watermarks(topic, *partition, TIMEOUT).unwrap();
        assert_eq!((low, high), (0, recs.len() as i64));
        // ListOffsets by timestamp: the record carrying a timestamp is found by it.
        let probe = &recs[recs.len() / 2];
        let mut q = TopicPartitionList::new();
        q.add_partition_offset(topic, *partition, Offset::Offset(probe.timestamp))
            .unwrap();
        let found = c.offsets_for_times(q, TIMEOUT).unwrap();
        let offset = found.find_partition(topic, *partition).unwrap().offset();
        assert_eq!(
            offset,
            Offset::Offset(probe.offset),
            "offset for timestamp {}",
            probe.timestamp
        );
    }
    let mut q = TopicPartitionList::new();
    q.add_partition_offset(topic, 1, Offset::Offset(base_ts + 1_800_000))
        .unwrap();
    let found = c.offsets_for_times(q, TIMEOUT).unwrap();
    assert_eq!(
        found.find_partition(topic, 1).unwrap().offset(),
        Offset::End,
        "no record that late"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_apis_create_describe_extend_delete() {
    let b = TestBroker::start(&[]);
    let a = admin(&b);
    common::create_topic(&b.bootstrap(), "admin-t", 2, &[("retention.ms", "3600000")]).await;

    // Creating it again fails with TOPIC_ALREADY_EXISTS; bad names and configs are refused.
    let again = a
        .create_topics(
            &[NewTopic::new("admin-t", 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        again[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::TopicAlreadyExists
    );
    let bad = a
        .create_topics(
            &[
                NewTopic::new("bad name", 1, TopicReplication::Fixed(1)),
                NewTopic::new("bad-config", 1, TopicReplication::Fixed(1))
                    .set("cleanup.policy", "compact"),
            ],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        bad[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::InvalidTopic
    );
    assert_eq!(
        bad[1].as_ref().unwrap_err().1,
        RDKafkaErrorCode::InvalidConfig
    );

    let configs = a
        .describe_configs(&[ResourceSpecifier::Topic("admin-t")], &AdminOptions::new())
        .await
        .unwrap();
    let resource = configs[0].as_ref().expect("describe topic");
    assert_eq!(
        resource.get("retention.ms").unwrap().value.as_deref(),
        Some("3600000")
    );
    assert!(!resource.get("retention.ms").unwrap().is_default);
    assert_eq!(
        resource.get("max.message.bytes").unwrap().value.as_deref(),
        Some("1048588")
    );
    assert!(resource.get("max.message.bytes").unwrap().is_default);
    let missing = a
        .describe_configs(&[ResourceSpecifier::Topic("nope")], &AdminOptions::new())
        .await
        .unwrap();
    // rdkafka-rs drops per-resource error codes; the broker returns no entries (and
    // UNKNOWN_TOPIC_OR_PARTITION, checked with kafka-python).
    assert!(missing[0].as_ref().map_or(true, |r| r.entries.is_empty()));

    let grown = a
        .create_partitions(&[NewPartitions::new("admin-t", 5)], &AdminOptions::new())
        .await
        .unwrap();
    grown[0].as_ref().expect("create partitions");
    let shrink = a
        .create_partitions(&[NewPartitions::new("admin-t", 3)], &AdminOptions::new())
        .await
        .unwrap();
    assert_eq!(
        shrink[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::InvalidPartitions
    );
    let c = consumer(&b);
    let md = c.fetch_metadata(Some("admin-t"), TIMEOUT).unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 5);
    assert_eq!(md.brokers().len(), 1);
    assert_eq!(md.brokers()[0].port() as u16, b.addr.port());

    // The new partitions take writes.
    let p = producer(&b, "none");
    let d = p
        .send(
            FutureRecord::<(), [u8]>::to("admin-t")
                .partition(4)
                .payload(b"x"),
            TIMEOUT,
        )
        .await
        .expect("produce to new partition");
    assert_eq!((d.partition, d.offset), (4, 0));

    let deleted = a
        .delete_topics(&["admin-t"], &AdminOptions::new())
        .await
        .unwrap();
    deleted[0].as_ref().expect("delete");
    let md = c.fetch_metadata(Some("admin-t"), TIMEOUT).unwrap();
    assert_eq!(
        md.topics()[0].error(),
        Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
    );
    let gone = a
        .delete_topics(&["admin-t"], &AdminOptions::new())
        .await
        .unwrap();
    assert_eq!(
        gone[0].as_ref().unwrap_err().1,
        RDKafkaErrorCode::UnknownTopicOrPartition
    );

    // Re-created under the same name, the topic starts empty (a new topic id).
    common::create_topic(&b.bootstrap(), "admin-t", 1, &[]).await;
    let (low, high) = c.fetch_watermarks("admin-t", 0, TIMEOUT).unwrap();
    assert_eq!((low, high), (0, 0));
}

/// A consumer waiting at the tail is woken by a produce (long-poll), and acks=0 works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_consumer_wakes_on_produce_and_acks_zero_lands() {
    let b = TestBroker::start(&[]);
    common::create_topic(&b.bootstrap(), "tail", 1, &[]).await;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", "unused")
        // No commits: group APIs (and so a coordinator) arrive with the consumer-groups issue.
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5000")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("tail", 0, Offset::End).unwrap();
    c.assign(&tpl).unwrap();
    // Let the consumer reach the tail and park in a long-poll fetch.
    assert!(c.poll(Duration::from_millis(1500)).is_none());
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("acks", "0")
        .create()
        .unwrap();
    p.send(
        FutureRecord::<(), [u8]>::to("tail").payload(b"wake up"),
        TIMEOUT,
    )
    .await
    .expect("acks=0 send");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "tail consumer never woke");
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            assert_eq!(m.payload(), Some(&b"wake up"[..]));
            assert_eq!(m.offset(), 0);
            break;
        }
    }
}

/// Producing to a topic that does not exist fails with UNKNOWN_TOPIC_OR_PARTITION (auto-create
/// is off by default); with auto-create on, the topic appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_and_auto_create() {
    let b = TestBroker::start(&[]);
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("message.timeout.ms", "3000")
        .create()
        .unwrap();
    let err = p
        .send(
            FutureRecord::<(), [u8]>::to("missing").payload(b"x"),
            TIMEOUT,
        )
        .await
        .unwrap_err()
        .0;
    assert!(
        matches!(
            err,
            KafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::MessageTimedOut
            )
        ),
        "{err:?}"
    );
    drop(b);

    let b = TestBroker::start(&["--auto-create-topics", "true", "--default-partitions", "3"]);
    // Issue 27: like Kafka, the Metadata answer that creates a topic says LEADER_NOT_AVAILABLE
    // and lists no partitions; the next one lists them (kafka-go's Conn reads a topic listed at
    // once as one never deleted). Metadata v6, as kafka-go's `ReadPartitions` sends it.
    let metadata = |raw: &mut common::raw::Raw| -> (i16, usize) {
        let req = kafka_protocol::messages::MetadataRequest::default()
            .with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_static_str("by-metadata"),
                    ))),
            ]))
            .with_allow_auto_topic_creation(true);
        let r: kafka_protocol::messages::MetadataResponse =
            raw.call(kafka_protocol::messages::ApiKey::Metadata, 6, &req);
        (r.topics[0].error_code, r.topics[0].partitions.len())
    };
    let mut raw = common::raw::Raw::connect(b.addr);
    assert_eq!(
        metadata(&mut raw),
        (5, 0),
        "LEADER_NOT_AVAILABLE, no partitions"
    );
    assert_eq!(metadata(&mut raw), (0, 3));
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .unwrap();
    let d = p
        .send(FutureRecord::<(), [u8]>::to("auto").payload(b"x"), TIMEOUT)
        .await
        .expect("auto-created");
    assert_eq!(d.offset, 0);
    let md = consumer(&b).fetch_metadata(Some("auto"), TIMEOUT).unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 3);
    assert!(b.log_contains("auto-created topic"));
}

/// AlterConfigs (librdkafka's admin uses the legacy, whole-set API) changes a topic's configs
/// at once, on its partitions too: a lowered retention.bytes trims a WAL-only partition at the
/// next retention check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_configs_take_effect() {
    let b = TestBroker::start(&[
        "--object-store",
        "none",
        "--log-retention-check-interval-ms",
        "100",
    ]);
    let a = admin(&b);
    common::create_topic(&b.bootstrap(), "alter-t", 1, &[("retention.ms", "3600000")]).await;
    let p = producer(&b, "none");
    for i in 0..20 {
        p.send(
            FutureRecord::<(), Vec<u8>>::to("alter-t")
                .partition(0)
                .payload(&payload(i, 10_000)),
            TIMEOUT,
        )
        .await
        .expect("produce");
    }
    let c = consumer(&b);
    assert_eq!(c.fetch_watermarks("alter-t", 0, TIMEOUT).unwrap(), (0, 20));

    let set = rdkafka::admin::AlterConfig::new(ResourceSpecifier::Topic("alter-t"))
        .set("retention.bytes", "30000");
    let done = a.alter_configs(&[set], &AdminOptions::new()).await.unwrap();
    done[0].as_ref().expect("altered");
    let described = a
        .describe_configs(&[ResourceSpecifier::Topic("alter-t")], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described[0].as_ref().unwrap();
    assert_eq!(
        resource.get("retention.bytes").unwrap().value.as_deref(),
        Some("30000")
    );
    assert!(
        resource.get("retention.ms").unwrap().is_default,
        "the legacy API replaces the whole set"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (low, high) = c.fetch_watermarks("alter-t", 0, TIMEOUT).unwrap();
        if low >= 16 && high == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention not applied: {low}..{high}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Refused: a value that does not validate, durability=object without an object store, a
    // broker resource. rdkafka-rs drops per-resource error codes (kafka-python checks them), so
    // this checks that nothing changed.
    for (key, value) in [("retention.bytes", "-9"), ("durability", "object")] {
        let change =
            rdkafka::admin::AlterConfig::new(ResourceSpecifier::Topic("alter-t")).set(key, value);
        a.alter_configs(&[change], &AdminOptions::new())
            .await
            .unwrap();
    }
    let broker =
        rdkafka::admin::AlterConfig::new(ResourceSpecifier::Broker(0)).set("num.partitions", "3");
    a.alter_configs(&[broker], &AdminOptions::new())
        .await
        .unwrap();
    let described = a
        .describe_configs(&[ResourceSpecifier::Topic("alter-t")], &AdminOptions::new())
        .await
        .unwrap();
    assert_eq!(
        described[0]
            .as_ref()
            .unwrap()
            .get("durability")
            .unwrap()
            .value
            .as_deref(),
        Some("wal")
    );
    let described = a
        .describe_configs(&[ResourceSpecifier::Topic("alter-t")], &AdminOptions::new())
        .await
        .unwrap();
    assert_eq!(
        described[0]
            .as_ref()
            .unwrap()
            .get("retention.bytes")
            .unwrap()
            .value
            .as_deref(),
        Some("30000")
    );

    // librdkafka's test 0092 sets the deprecated message.format.version, which Kafka 3.x
    // accepts and ignores (issue 27: it was refused as an unknown config).
    let old_format = rdkafka::admin::AlterConfig::new(ResourceSpecifier::Topic("alter-t"))
        .set("message.format.version", "0.10.0.0");
    let done = a
        .alter_configs(&[old_format], &AdminOptions::new())
        .await
        .unwrap();
    done[0].as_ref().expect("accepted");
    let described = a
        .describe_configs(&[ResourceSpecifier::Topic("alter-t")], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described[0].as_ref().unwrap();
    assert_eq!(
        resource
            .get("message.format.version")
            .unwrap()
            .value
            .as_deref(),
        Some("0.10.0.0")
    );
}

/// Issue 27 (librdkafka 0054, 0059): records with old CreateTimes (1970) stay readable next to
/// newer ones until retention is checked, and then only as whole units: Ringtail removed them
/// when the next batch was appended, and the log start went 1 → 0 a second later, serving an
/// offset it had reported out of range. Now retention runs at its check interval, judges a
/// unit by its largest timestamp and keeps the active tail; the log start never decreases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_timestamps_stay_until_retention_is_checked_and_the_log_start_never_decreases() {
    let b = TestBroker::start(&["--object-age-max-ms", "200"]);
    common::create_topic(&b.bootstrap(), "old-ts", 1, &[]).await;
    let p = producer(&b, "none");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (i, ts) in [1234, 1235, now].into_iter().enumerate() {
        let d = p
            .send(
                FutureRecord::<(), String>::to("old-ts")
                    .partition(0)
                    .timestamp(ts)
                    .payload(&format!("v{i}")),
                TIMEOUT,
            )
            .await
            .expect("produce");
        assert_eq!(d.offset, i as i64);
    }
    let c = consumer(&b);
    // Watched for 3 s, through uploads: the log start stays 0 and offset 0 is served.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(c.fetch_watermarks("old-ts", 0, TIMEOUT).unwrap(), (0, 3));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("old-ts", 0, Offset::Offset(1000))
        .unwrap();
    let found = c.offsets_for_times(tpl, TIMEOUT).unwrap();
    assert_eq!(found.elements()[0].offset(), Offset::Offset(0));
    let (read, lows) = common::read_all(&b.bootstrap(), "old-ts", 1);
    assert_eq!((read.len(), lows), (3, vec![0]));
    drop(b);

    // With a short check interval, expired data leaves in whole units, the log start only
    // moves forward, and an idle partition whose every record expired is emptied (as Kafka
    // deletes an expired active segment); new data then stays.
    let b = TestBroker::start(&[
        "--object-age-max-ms",
        "50",
        "--log-retention-check-interval-ms",
        "100",
    ]);
    common::create_topic(&b.bootstrap(), "expiring", 1, &[("retention.ms", "60000")]).await;
    let p = producer(&b, "none");
    let send = |ts: i64, i: usize| {
        let (p, value) = (&p, format!("v{i}"));
        async move {
            p.send(
                FutureRecord::<(), String>::to("expiring")
                    .partition(0)
                    .timestamp(ts)
                    .payload(&value),
                TIMEOUT,
            )
            .await
        }
    };
    for i in 0..19 {
        send(1234 + i as i64, i).await.expect("produce");
        std::thread::sleep(Duration::from_millis(20)); // several spans
    }
    let c = consumer(&b);
    let mut low = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while low < 19 {
        assert!(Instant::now() < deadline, "retention stopped at {low}");
        let (l, h) = c.fetch_watermarks("expiring", 0, TIMEOUT).unwrap();
        assert!(l >= low, "the log start went back from {low} to {l}");
        assert_eq!(h, 19);
        low = l;
        std::thread::sleep(Duration::from_millis(20));
    }
    send(now, 19).await.expect("produce");
    std::thread::sleep(Duration::from_millis(1000)); // uploaded, ten checks
    assert_eq!(
        c.fetch_watermarks("expiring", 0, TIMEOUT).unwrap(),
        (19, 20)
    );
    let (read, lows) = common::read_all(&b.bootstrap(), "expiring", 1);
    assert_eq!((read.len(), lows), (1, vec![19]));
}
