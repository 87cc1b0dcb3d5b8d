//! `durability=replicated` topics (issue 19, R1–R3) on real brokers: three brokers share a
//! SeaweedFS bucket, each with its replication listener. A topic created with replication
//! factor -1 is replicated to 3 copies; librdkafka's acks=all produce is acknowledged once the
//! followers hold the batches, and reads back whole. With one follower down produce goes on
//! (2 of 3 in sync, min.insync.replicas 2); with both down acks=all is refused
//! NOT_ENOUGH_REPLICAS (acks=1 is taken), and service resumes when a follower comes back.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::raw::Raw;
use common::TestBroker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

const NOT_ENOUGH_REPLICAS: i16 = 19;

fn start(
    weed: &ringtail_objstore::testing::Seaweed,
    node: i32,
    dir: &std::path::Path,
) -> TestBroker {
    start_with(weed, node, dir, &[])
}

/// As [`start`], with `extra` flags.
fn start_with(
    weed: &ringtail_objstore::testing::Seaweed,
    node: i32,
    dir: &std::path::Path,
    extra: &[&str],
) -> TestBroker {
    let mut args = weed.broker_args("replicated");
    args.extend(extra.iter().map(|s| s.to_string()));
    if !extra.contains(&"--replication-listen") {
        args.extend(["--replication-listen".to_string(), "127.0.0.1:0".into()]);
    }
    args.extend(
        [
            "--shards",
            "1",
            "--slots",
            "4",
            "--node-id",
            &node.to_string(),
        ]
        .map(String::from),
    );
    TestBroker::start_at(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn bootstrap(brokers: &[&TestBroker]) -> String {
    brokers
        .iter()
        .map(|b| b.bootstrap())
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits until every broker's own Metadata names all of them (each has read the others'
/// leases: a topic created with replication factor -1 gets a copy on each).
fn wait_members(brokers: &[&TestBroker]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for b in brokers {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", b.bootstrap())
            .create()
            .unwrap();
        loop {
            let md = c.fetch_metadata(None, Duration::from_secs(5));
            if md.is_ok_and(|md| md.brokers().len() == brokers.len()) {
                break;
            }
            assert!(Instant::now() < deadline, "the brokers never all joined");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Creates `name` with `replication` copies and `configs`, and returns the replication factor
/// CreateTopics answered (librdkafka does not show it: the test asks Metadata's replica count
/// elsewhere), asserting it was created.
async fn create(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    replication: i32,
    configs: &[(&str, &str)],
) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
        for (k, v) in configs {
            topic = topic.set(k, v);
        }
        let r = admin
            .create_topics(&[topic], &AdminOptions::new())
            .await
            .unwrap();
        match &r[0] {
            Ok(_) => return,
            // The controller may not have seen every broker's lease yet: Kafka's answer for
            // more copies than live brokers.
            Err((
                _,
                rdkafka::types::RDKafkaErrorCode::NotController
                | rdkafka::types::RDKafkaErrorCode::InvalidReplicationFactor,
            )) => {}
            Err(e) => panic!("creating {name}: {e:?}"),
        }
        assert!(Instant::now() < deadline, "no controller answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node Metadata names as `topic`/`partition`'s leader, once it names one.
fn leader(bootstrap: &str, topic: &str, partition: i32) -> i32 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let leader = md.topics()[0]
            .partitions()
            .get(partition as usize)
            .map_or(-1, |p| p.leader());
        if leader >= 0 {
            return leader;
        }
        assert!(Instant::now() < deadline, "{topic} has no leader");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until Metadata through `bootstrap` names, for every partition of `topic`, replicas
/// and an ISR that `ok` accepts: (leader, replicas, isr).
fn wait_replicas(bootstrap: &str, topic: &str, ok: impl Fn(i32, &[i32], &[i32]) -> bool) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let parts: Vec<(i32, Vec<i32>, Vec<i32>)> = md.topics()[0]
            .partitions()
            .iter()
            .map(|p| (p.leader(), p.replicas().to_vec(), p.isr().to_vec()))
            .collect();
        if !parts.is_empty() && parts.iter().all(|(l, r, i)| ok(*l, r, i)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: (leader, replicas, isr) {parts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metric(b: &TestBroker, name: &str) -> u64 {
    b.metrics().get(name).copied().unwrap_or(0)
}

/// Answers to produces of unique values: (value, error code).
type Answers = Vec<(String, i16)>;

/// Produces `name-1`, `name-2`, ... with `acks` on `raw` until one is answered `want` (other
/// answers are the retriable ones of a cluster changing: timeouts, not enough replicas after
/// the append, ...); every answer goes to `answers`.
fn produce_until(
    raw: &mut Raw,
    answers: &mut Answers,
    name: &str,
    acks: i16,
    want: i16,
    within: Duration,
) {
    produce_to(raw, "ledger", answers, name, acks, want, within)
}

/// As [`produce_until`], to `topic`.
fn produce_to(
    raw: &mut Raw,
    topic: &str,
    answers: &mut Answers,
    name: &str,
    acks: i16,
    want: i16,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    for attempt in 1.. {
        let value = format!("{name}-{attempt}");
        let (code, _) = raw.produce(topic, 0, common::raw::records(&[value.as_bytes()]), acks);
        println!("{value}: {code}");
        answers.push((value, code));
        if code == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name}: never answered {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Partition 0 of `topic` as Metadata through `bootstrap` names it: (leader, replicas).
fn partition_zero(bootstrap: &str, topic: &str) -> (i32, Vec<i32>) {
    let md = common::metadata(bootstrap, topic);
    let p = &md.topics()[0].partitions()[0];
    (p.leader(), p.replicas().to_vec())
}

/// Every value of `topic`'s one partition, read back through `bootstrap` in offset order.
fn values_of(bootstrap: &str, topic: &str) -> Vec<String> {
    let (records, _) = common::read_all(bootstrap, topic, 1);
    records
        .values()
        .map(|v| String::from_utf8_lossy(v).to_string())
        .collect()
}

/// Every produce answered 0 is among `values`; every one refused NOT_ENOUGH_REPLICAS is not.
fn assert_answers_kept(answers: &Answers, values: &[String]) {
    for (value, code) in answers {
        match *code {
            0 => assert!(
                values.iter().any(|v| v == value),
                "{value} acknowledged, not read back: {values:?}"
            ),
            NOT_ENOUGH_REPLICAS => assert!(
                !values.iter().any(|v| v == value),
                "{value} was refused, yet written"
            ),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_topics_acknowledged_records_are_on_its_followers() {
    let weed = ringtail_objstore::testing::Seaweed::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let brokers: Vec<TestBroker> = (0..3)
        .map(|i| start(&weed, i as i32 + 1, dirs[i].path()))
        .collect();
    let all = bootstrap(&brokers.iter().collect::<Vec<_>>());
    wait_members(&brokers.iter().collect::<Vec<_>>());
    // No durability named, 3 copies asked for, three replicating brokers: replicated. (-1
    // resolves to the same, unit-tested: a lease judged lapsed for a moment on a loaded
    // machine would make it 2 here.)
    create(&all, "orders", 4, 3, &[]).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &all)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    // Metadata tells the truth: three copies, the leader first, all in sync.
    wait_replicas(&all, "orders", |leader, replicas, isr| {
        replicas.len() == 3 && replicas[0] == leader && isr.len() == 3
    });
    let mut acked = BTreeMap::new();
    for i in 0..400 {
        let value = format!("order-{i}");
        let key = format!("k{}", i % 16);
        let d = producer
            .send(
                FutureRecord::to("orders").key(&key).payload(&value),
                Duration::from_secs(60),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("acknowledged");
        let (p, o) = (d.partition, d.offset);
        acked.insert(value, (p, o));
    }
    // Every broker follows the slots the others own: each appended batches to its replica
    // rings; every batch written has a follower copy, two once both followers are placed.
    let sum = |name: &str| -> Vec<u64> { brokers.iter().map(|b| metric(b, name)).collect() };
    let appended = sum("ringtail_replica_appended_batches_total");
    let (copied, produced) = (
        sum("ringtail_replica_appended_bytes_total")
            .iter()
            .sum::<u64>(),
        sum("ringtail_produce_bytes_total").iter().sum::<u64>(),
    );
    println!("batches appended to replica rings per broker: {appended:?}; follower bytes {copied} for {produced} produced");
    assert!(
        appended.iter().all(|&n| n > 0),
        "every broker follows: {appended:?}"
    );
    assert!(
        copied >= produced && copied <= 2 * produced,
        "{copied} bytes copied for {produced}"
    );
    let (records, _) = common::read_all(&all, "orders", 4);
    for (value, (p, o)) in &acked {
        assert_eq!(
            records
                .get(&(*p, *o))
                .map(|v| String::from_utf8_lossy(v).to_string())
                .as_deref(),
            Some(value.as_str()),
            "acknowledged at {p}/{o}"
        );
    }
    assert_eq!(records.len(), acked.len(), "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_needs_min_insync_replicas_and_resumes_when_a_follower_returns() {
    let weed = ringtail_objstore::testing::Seaweed::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Fixed replication listeners: a broker restarted comes back at the same address.
    let listeners: BTreeMap<i32, String> = (1..=3)
        .map(|n| (n, format!("127.0.0.1:{}", common::free_port())))
        .collect();
    let at = |n: i32| ["--replication-listen", listeners[&n].as_str()];
    let mut brokers: BTreeMap<i32, TestBroker> = (1..=3)
        .map(|n| (n, start_with(&weed, n, dirs[n as usize - 1].path(), &at(n))))
        .collect();
    let all = bootstrap(&brokers.values().collect::<Vec<_>>());
    wait_members(&brokers.values().collect::<Vec<_>>());
    create(&all, "ledger", 1, 3, &[("min.insync.replicas", "2")]).await;
    let owner = leader(&all, "ledger", 0);
    let followers: Vec<i32> = (1..=3).filter(|&n| n != owner).collect();
    let mut raw = Raw::connect(brokers[&owner].bootstrap().parse().unwrap());
    let mut answers = Answers::new();
    let within = Duration::from_secs(30);
    produce_until(&mut raw, &mut answers, "all-three", -1, 0, within);

    // One follower down: two copies in sync remain, enough.
    brokers.remove(&followers[0]).unwrap().kill9();
    produce_until(&mut raw, &mut answers, "one-down", -1, 0, within);

    // Both down: once the owner knows, acks=all is refused before anything is written; acks=1
    // is taken.
    brokers.remove(&followers[1]).unwrap().kill9();
    produce_until(
        &mut raw,
        &mut answers,
        "both-down",
        -1,
        NOT_ENOUGH_REPLICAS,
        within,
    );
    produce_until(&mut raw, &mut answers, "owner-only", 1, 0, within);
    wait_replicas(&brokers[&owner].bootstrap(), "ledger", |_, _, isr| {
        isr == [owner]
    });
    produce_until(
        &mut raw,
        &mut answers,
        "still-refused",
        -1,
        NOT_ENOUGH_REPLICAS,
        within,
    );

    // A follower comes back with its disk: it catches up, joins the ISR, acks=all resumes.
    let back = followers[0];
    brokers.insert(
        back,
        start_with(&weed, back, dirs[back as usize - 1].path(), &at(back)),
    );
    produce_until(
        &mut raw,
        &mut answers,
        "resumed",
        -1,
        0,
        Duration::from_secs(60),
    );
    wait_replicas(
        &brokers[&owner].bootstrap(),
        "ledger",
        |leader, replicas, isr| {
            leader == owner && replicas.contains(&back) && isr.len() == 2 && isr.contains(&back)
        },
    );
    assert!(brokers[&owner].log_contains("follower joined the ISR"));
    assert!(brokers[&owner].log_contains("left the ISR"));

    // The same follower again, its disk wiped this time: with its peer down acks=all is
    // refused until it is back and has caught up from nothing.
    brokers.remove(&back).unwrap().kill9();
    produce_until(
        &mut raw,
        &mut answers,
        "wiped-away",
        -1,
        NOT_ENOUGH_REPLICAS,
        within,
    );
    let wiped = tempfile::tempdir().unwrap();
    brokers.insert(back, start_with(&weed, back, wiped.path(), &at(back)));
    produce_until(
        &mut raw,
        &mut answers,
        "after-wipe",
        -1,
        0,
        Duration::from_secs(60),
    );

    let bootstrap_now = bootstrap(&brokers.values().collect::<Vec<_>>());
    let values = values_of(&bootstrap_now, "ledger");
    assert_answers_kept(&answers, &values);
    let unique: std::collections::BTreeSet<&String> = values.iter().collect();
    assert_eq!(unique.len(), values.len(), "no record twice: {values:?}");
}

/// Machine loss of a partition owner: kill -9 and its data directory deleted, under an
/// idempotent acks=all producer. Uploads are held back (4 s) so that the records acknowledged
/// last before the kill are in no object yet: they survive only through the followers' copies,
/// which the successor re-appends at their offsets before it takes a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_machine_lost_loses_no_acknowledged_record() {
    let weed = ringtail_objstore::testing::Seaweed::start();
    let mut dirs: BTreeMap<i32, tempfile::TempDir> =
        (1..=3).map(|n| (n, tempfile::tempdir().unwrap())).collect();
    let slow_uploads = ["--object-age-max-ms", "4000"];
    let mut brokers: BTreeMap<i32, TestBroker> = (1..=3)
        .map(|n| (n, start_with(&weed, n, dirs[&n].path(), &slow_uploads)))
        .collect();
    let all = bootstrap(&brokers.values().collect::<Vec<_>>());
    wait_members(&brokers.values().collect::<Vec<_>>());
    create(&all, "payments", 2, 3, &[("min.insync.replicas", "2")]).await;
    wait_replicas(&all, "payments", |_, replicas, isr| {
        replicas.len() == 3 && isr.len() == 3
    });
    let victim = leader(&all, "payments", 0);

    // A librdkafka consumer reads along across the take-over (validating its position by
    // leader epoch when the epoch grows, KIP-320).
    type Seen = Vec<(i32, i64, String)>;
    let read: std::sync::Arc<std::sync::Mutex<Seen>> = Default::default();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (read, stop, all) = (read.clone(), stop.clone(), all.clone());
        std::thread::spawn(move || {
            use rdkafka::message::Message;
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &all)
                .set("group.id", "along")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "50")
                .set("topic.metadata.refresh.interval.ms", "500")
                .create()
                .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..2 {
                tpl.add_partition_offset("payments", p, rdkafka::Offset::Beginning)
                    .unwrap();
            }
            c.assign(&tpl).unwrap();
            let mut errors = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => read.lock().unwrap().push((
                        m.partition(),
                        m.offset(),
                        String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string(),
                    )),
                    Some(Err(e)) => errors.push(e.to_string()),
                    None => {}
                }
            }
            errors
        })
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &all)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut killed_at = None;
    let mut pending = Vec::new();
    let mut seq = 0u64;
    while started.elapsed() < Duration::from_secs(8) {
        if killed_at.is_none() && started.elapsed() >= Duration::from_secs(3) {
            brokers.remove(&victim).unwrap().kill9();
            // The machine is gone: its disk with it.
            dirs.remove(&victim).unwrap().close().unwrap();
            killed_at = Some(Instant::now());
        }
        for partition in 0..2 {
            let payload = format!("p{seq}");
            seq += 1;
            let sent = producer
                .send_result(
                    FutureRecord::<(), _>::to("payments")
                        .partition(partition)
                        .payload(&payload),
                )
                .unwrap_or_else(|_| panic!("queue full"));
            let done = tokio::spawn(async move { (sent.await, Instant::now()) });
            pending.push((payload, done));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = killed_at.unwrap();
    let mut acked: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    let mut acked_before_kill = 0;
    let mut first_after_kill: Option<Duration> = None;
    for (payload, done) in pending {
        let (result, at) = done.await.unwrap();
        let d = result
            .unwrap()
            .unwrap_or_else(|(e, _)| panic!("{payload} not delivered: {e}"));
        if at < killed_at {
            acked_before_kill += 1;
        } else {
            let after = at - killed_at;
            first_after_kill = Some(first_after_kill.map_or(after, |f| f.min(after)));
        }
        acked.insert(payload, (d.partition, d.offset));
    }
    let recovered: Vec<String> = brokers
        .values()
        .flat_map(|b| b.log_lines())
        .filter(|l| l.contains("recovered the replaced owner's tail"))
        .collect();
    println!(
        "{} acknowledged ({acked_before_kill} before the kill of node {victim}); first          acknowledgement after the kill in {first_after_kill:?}; {recovered:?}",
        acked.len()
    );
    assert!(
        !recovered.is_empty(),
        "a successor recovered the tail from its copy"
    );

    let survivors = bootstrap(&brokers.values().collect::<Vec<_>>());
    let (records, _) = common::read_all(&survivors, "payments", 2);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for v in records.values() {
        *seen
            .entry(String::from_utf8_lossy(v).to_string())
            .or_default() += 1;
    }
    let lost: Vec<&String> = acked.keys().filter(|k| !seen.contains_key(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost: {lost:?}",
        lost.len()
    );
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "duplicates: {twice:?}");
    for (payload, (p, o)) in &acked {
        assert_eq!(
            records
                .get(&(*p, *o))
                .map(|v| String::from_utf8_lossy(v).to_string()),
            Some(payload.clone()),
            "acknowledged at {p}/{o}"
        );
    }
    // The reader reads on to the end, every record in offset order, none skipped: what it
    // read before the kill is what the successor serves at those offsets.
    let deadline = Instant::now() + Duration::from_secs(30);
    while read.lock().unwrap().len() < records.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let errors = reader.join().unwrap();
    let read = read.lock().unwrap().clone();
    println!(
        "the reader read {} records across the take-over; errors {errors:?}",
        seen.len()
    );
    assert!(
        !errors.iter().any(|e| e.contains("runcat")),
        "truncation reported: {errors:?}"
    );
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o, v) in &read {
        let expected = next.entry(*p).or_insert(0);
        assert!(
            *o <= *expected,
            "partition {p}: offset {o} read at {expected}: skipped"
        );
        *expected = (*expected).max(o + 1);
        assert_eq!(
            records
                .get(&(*p, *o))
                .map(|r| String::from_utf8_lossy(r).to_string())
                .as_ref(),
            Some(v),
            "read at {p}/{o}; the log differs there now"
        );
    }
    assert_eq!(
        next.values().sum::<i64>() as usize,
        records.len(),
        "the reader reached the end of every partition"
    );
}

/// A zombie owner: SIGSTOP past its lease while a follower took the slot over from its copy,
/// then SIGCONT. A produce it received while paused is never acknowledged nor visible; the
/// records it acknowledged before the pause (held back from the bucket) are served by the
/// successor. Followers refuse its epoch (counted, logged) if it streams again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_gets_no_acknowledgement_and_its_late_write_never_appears() {
    let weed = ringtail_objstore::testing::Seaweed::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let slow_uploads = ["--object-age-max-ms", "4000"];
    let brokers: BTreeMap<i32, TestBroker> = (1..=3)
        .map(|n| {
            let dir = dirs[n as usize - 1].path();
            (n, start_with(&weed, n, dir, &slow_uploads))
        })
        .collect();
    let all = bootstrap(&brokers.values().collect::<Vec<_>>());
    wait_members(&brokers.values().collect::<Vec<_>>());
    create(&all, "ledger", 1, 3, &[("min.insync.replicas", "2")]).await;
    wait_replicas(&all, "ledger", |_, replicas, isr| {
        replicas.len() == 3 && isr.len() == 3
    });
    let owner = leader(&all, "ledger", 0);
    let survivors: Vec<&TestBroker> = brokers
        .iter()
        .filter(|(&n, _)| n != owner)
        .map(|(_, b)| b)
        .collect();
    let survivors = bootstrap(&survivors);
    let mut raw = Raw::connect(brokers[&owner].bootstrap().parse().unwrap());
    let mut answers = Answers::new();
    let within = Duration::from_secs(30);
    produce_until(&mut raw, &mut answers, "before-pause", -1, 0, within);

    common::signal(brokers[&owner].pid(), "-STOP");
    let paused = Instant::now();
    // A follower takes the slot over from its copy and serves it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let successor = loop {
        let now = leader(&survivors, "ledger", 0);
        if now != owner {
            break now;
        }
        assert!(Instant::now() < deadline, "the slot never moved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "partition served by node {successor} {:?} after SIGSTOP of node {owner}",
        paused.elapsed()
    );

    // A write reaches the paused owner; it wakes up with a lapsed lease.
    let late =
        common::raw::produce_request("ledger", 0, common::raw::records(&[b"zombie-late"]), -1);
    let frame = raw.encode(kafka_protocol::messages::ApiKey::Produce, 9, &late);
    raw.send_frame(&frame);
    tokio::time::sleep(Duration::from_millis(200)).await;
    common::signal(brokers[&owner].pid(), "-CONT");
    let resp: kafka_protocol::messages::ProduceResponse = raw.answer(9);
    let code = resp.responses[0].partition_responses[0].error_code;
    assert_eq!(code, 6, "NOT_LEADER_OR_FOLLOWER, not an acknowledgement");
    println!("the paused owner's answer to the late write: {code}");

    let values = values_of(&survivors, "ledger");
    assert_answers_kept(&answers, &values);
    assert!(
        !values.iter().any(|v| v == "zombie-late"),
        "the paused owner's write became visible: {values:?}"
    );
    assert!(
        brokers[&successor].log_contains("recovered the replaced owner's tail"),
        "the successor recovered the tail from its copy"
    );
    let refused: u64 = brokers
        .values()
        .map(|b| metric(b, "ringtail_replica_refused_total"))
        .sum();
    println!("replication frames refused across the brokers: {refused}");
}

/// A successor's own WAL may hold a batch it wrote as an earlier owner and never got
/// acknowledged (its followers paused, then it died before the upload). The owner after it
/// wrote other records at those offsets, acknowledged them, and streamed them to this broker's
/// replica ring. When this broker takes the slot over again, the copy (the newer epoch) wins:
/// the acknowledged records are served, the never-acknowledged one is not.
///
/// Node ids are chosen so that the slot is placed on `a` while a, b and c live, and on `b`
/// while only a and b do: `a` comes back as `b`'s follower instead of taking its slot home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successors_own_unacknowledged_batch_gives_way_to_the_newer_copy() {
    use ringtail_engine::cluster::placement::place;
    let nodes = || {
        (1..8)
            .flat_map(|a| (1..8).flat_map(move |b| (1..8).map(move |c| (a, b, c))))
            .filter(|&(a, b, c)| a != b && b != c && a != c)
    };
    let (topic, slot, (a, b, c)) = (0..100)
        .map(|i| format!("ledger-{i}"))
        .find_map(|topic| {
            let slot = ringtail_engine::shard::owner_shard(&topic, 0, 4);
            let placed = nodes().find(|&(a, b, c)| {
                place(4, &[a, b, c])[slot] == a && place(4, &[a, b])[slot] == b
            })?;
            Some((topic, slot, placed))
        })
        .expect("a topic and node ids with that placement");
    let topic = topic.as_str();
    let weed = ringtail_objstore::testing::Seaweed::start();
    let dirs: BTreeMap<i32, tempfile::TempDir> = [a, b, c]
        .into_iter()
        .map(|n| (n, tempfile::tempdir().unwrap()))
        .collect();
    let listeners: BTreeMap<i32, String> = [a, b, c]
        .into_iter()
        .map(|n| (n, format!("127.0.0.1:{}", common::free_port())))
        .collect();
    // Uploads 3 s after a batch arrives: each owner here dies before its writes are uploaded.
    let flags = |n: i32| {
        [
            "--replication-listen",
            listeners[&n].as_str(),
            "--object-age-max-ms",
            "3000",
        ]
    };
    let run = |n: i32| start_with(&weed, n, dirs[&n].path(), &flags(n));
    let mut brokers: BTreeMap<i32, TestBroker> =
        [a, b, c].into_iter().map(|n| (n, run(n))).collect();
    let all = bootstrap(&brokers.values().collect::<Vec<_>>());
    wait_members(&brokers.values().collect::<Vec<_>>());
    create(&all, topic, 1, 3, &[("min.insync.replicas", "2")]).await;
    wait_replicas(&all, topic, |l, replicas, isr| {
        l == a && replicas.len() == 3 && isr.len() == 3
    });
    let mut raw = Raw::connect(brokers[&a].bootstrap().parse().unwrap());
    let mut answers = Answers::new();
    let within = Duration::from_secs(30);
    // `a` appends the partition's first batch, which no follower takes: they are paused, and
    // die with it before reading it from their sockets. `a` never uploads it.
    for n in [b, c] {
        common::signal(brokers[&n].pid(), "-STOP");
    }
    let stale =
        common::raw::produce_request(topic, 0, common::raw::records(&[b"never-acknowledged"]), -1);
    let frame = raw.encode(kafka_protocol::messages::ApiKey::Produce, 9, &stale);
    raw.send_frame(&frame);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in [a, b, c] {
        brokers.remove(&n).unwrap().kill9();
    }
    // b comes back with its disk (c stays down): the slot's ISR names it, it takes the slot
    // over from its copy (which lacks the batch).
    brokers.insert(b, run(b));
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader(&brokers[&b].bootstrap(), topic, 0) != b {
        assert!(Instant::now() < deadline, "b never took the slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `a` comes back with its disk and follows b, which writes at the offsets `a`'s WAL holds
    // its unacknowledged batch at.
    brokers.insert(a, run(a));
    wait_replicas(&brokers[&b].bootstrap(), topic, |l, _, isr| {
        l == b && isr.len() == 2
    });
    let mut raw = Raw::connect(brokers[&b].bootstrap().parse().unwrap());
    produce_to(&mut raw, topic, &mut answers, "fresh", -1, 0, within);
    produce_to(&mut raw, topic, &mut answers, "fresher", -1, 0, within);
    assert!(
        metric(&brokers[&b], "ringtail_upload_pending_bytes") > 0,
        "b's writes are in no object yet"
    );

    // b dies before uploading them: `a` takes the slot over from its copy of b's stream.
    brokers.remove(&b).unwrap().kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader(&brokers[&a].bootstrap(), topic, 0) != a {
        assert!(Instant::now() < deadline, "a never took the slot back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let values = values_of(&brokers[&a].bootstrap(), topic);
    println!("nodes a={a} b={b} c={c}, slot {slot}; read back: {values:?}");
    assert_answers_kept(&answers, &values);
    assert!(
        !values.iter().any(|v| v == "never-acknowledged"),
        "the unacknowledged batch of an older owner came back: {values:?}"
    );
}

/// `unclean.leader.election.enable`: the owner of a factor-2 topic's partition and its one
/// in-sync follower die together. The partition stays offline (the third broker holds no copy:
/// opening it there would lose acknowledged records) until the topic permits an unclean
/// election; then the third broker serves it, with every record the bucket holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_copies_are_all_down_waits_for_an_unclean_election() {
    let weed = ringtail_objstore::testing::Seaweed::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut brokers: BTreeMap<i32, TestBroker> = (1..=3)
        .map(|n| (n, start(&weed, n, dirs[n as usize - 1].path())))
        .collect();
    let all = bootstrap(&brokers.values().collect::<Vec<_>>());
    wait_members(&brokers.values().collect::<Vec<_>>());
    create(&all, "ledger", 1, 2, &[("min.insync.replicas", "2")]).await;
    wait_replicas(&all, "ledger", |_, replicas, isr| {
        replicas.len() == 2 && isr.len() == 2
    });
    let owner = leader(&all, "ledger", 0);
    let mut raw = Raw::connect(brokers[&owner].bootstrap().parse().unwrap());
    let mut answers = Answers::new();
    produce_until(
        &mut raw,
        &mut answers,
        "kept",
        -1,
        0,
        Duration::from_secs(30),
    );
    // In the bucket before the copies go.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&brokers[&owner], "ringtail_upload_pending_bytes") > 0 {
        assert!(Instant::now() < deadline, "never uploaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, copies) = partition_zero(&all, "ledger");
    let third = (1..=3).find(|n| !copies.contains(n)).unwrap();
    for n in &copies {
        brokers.remove(n).unwrap().kill9();
    }
    let survivor = brokers[&third].bootstrap();
    // Offline: no leader, for longer than a take-over takes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        partition_zero(&survivor, "ledger").0,
        -1,
        "served without a copy"
    );
    assert!(brokers[&third].log_contains("slot left closed"));

    // The operator permits an unclean election: the survivor serves the partition.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &survivor)
        .create()
        .unwrap();
    let alter =
        rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic("ledger"))
            .set("unclean.leader.election.enable", "true")
            .set("min.insync.replicas", "1");
    let r = admin
        .alter_configs(&[alter], &AdminOptions::new())
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{:?}", r[0]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader(&survivor, "ledger", 0) != third {
        assert!(Instant::now() < deadline, "never elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(brokers[&third].log_contains("unclean leader election"));
    let mut raw = Raw::connect(survivor.parse().unwrap());
    produce_until(
        &mut raw,
        &mut answers,
        "after",
        -1,
        0,
        Duration::from_secs(30),
    );
    let values = values_of(&survivor, "ledger");
    assert_answers_kept(&answers, &values);
}
