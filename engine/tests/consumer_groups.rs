//! Consumer groups with real clients: two librdkafka consumers and a kafka-python consumer
//! share a topic's partitions; members leave, are killed, and the group hands their partitions
//! over from the committed offsets; committed offsets survive kill -9 of the broker.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::TestBroker;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 6;

fn member(b: &TestBroker, group: &str, name: &str) -> BaseConsumer {
    member_with(b, group, name, "range,roundrobin")
}

fn member_with(b: &TestBroker, group: &str, name: &str, assignors: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("partition.assignment.strategy", assignors)
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", group)
        .set("client.id", name)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap();
    c.subscribe(&["grp"]).unwrap();
    c
}

async fn produce(b: &TestBroker, per_partition: usize, tag: &str) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("linger.ms", "2")
        .create()
        .unwrap();
    for i in 0..per_partition {
        for part in 0..PARTITIONS {
            let v = format!("{tag}-{part}-{i}");
            p.send(
                FutureRecord::<(), String>::to("grp")
                    .partition(part)
                    .payload(&v),
                TIMEOUT,
            )
            .await
            .unwrap();
        }
    }
}

/// Everything the members delivered: (partition, offset) -> deliveries (member, committed).
/// At-least-once as Kafka defines it: a record may come again only if no delivery of it was
/// covered by a successful commit.
#[derive(Default)]
struct Ledger {
    deliveries: BTreeMap<(i32, i64), Vec<(&'static str, bool)>>,
    /// Deliveries not yet covered by a commit, per member.
    pending: BTreeMap<&'static str, Vec<(i32, i64)>>,
}

impl Ledger {
    fn record(&mut self, who: &'static str, partition: i32, offset: i64) {
        self.deliveries
            .entry((partition, offset))
            .or_default()
            .push((who, false));
        self.pending
            .entry(who)
            .or_default()
            .push((partition, offset));
    }

    /// The member's commit after its deliveries succeeded (or not).
    fn commit(&mut self, who: &'static str, ok: bool) {
        for key in self.pending.remove(who).unwrap_or_default() {
            if ok {
                if let Some(d) = self.deliveries.get_mut(&key).and_then(|v| v.last_mut()) {
                    d.1 = true;
                }
            }
        }
    }

    fn distinct(&self) -> usize {
        self.deliveries.len()
    }

    /// No record delivered again after a delivery of it was committed.
    fn assert_once(&self) {
        let again: Vec<_> = self
            .deliveries
            .iter()
            .filter(|(_, d)| d[..d.len() - 1].iter().any(|(_, committed)| *committed))
            .collect();
        assert!(
            again.is_empty(),
            "delivered again after a commit: {again:?}"
        );
    }

    fn redelivered(&self) -> usize {
        self.deliveries.values().filter(|d| d.len() > 1).count()
    }
}

/// Polls a librdkafka member once; delivered records go to the ledger and are committed.
fn poll(c: &BaseConsumer, who: &'static str, ledger: &mut Ledger) {
    let mut got = false;
    while let Some(m) = c.poll(Duration::from_millis(20)) {
        let m = m.unwrap();
        ledger.record(who, m.partition(), m.offset());
        got = true;
    }
    if got {
        // A commit refused around a rebalance leaves the records uncommitted: another member
        // (or this one) may get them again, as with Kafka.
        let ok = c.commit_consumer_state(CommitMode::Sync).is_ok();
        ledger.commit(who, ok);
    }
}

fn assignment<C: rdkafka::consumer::ConsumerContext>(c: &BaseConsumer<C>) -> BTreeSet<i32> {
    c.assignment()
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// The kafka-python member's events, read from its stdout.
struct PyMember {
    child: std::process::Child,
    events: mpsc::Receiver<serde_json::Value>,
    assigned: BTreeSet<i32>,
}

impl PyMember {
    fn start(b: &TestBroker, group: &str) -> PyMember {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/group_member.py");
        let mut child = Command::new(common::python())
            .args([script, &b.bootstrap(), group, "grp"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python (scripts/test.sh installs the test requirements)");
        let out = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        PyMember {
            child,
            events,
            assigned: BTreeSet::new(),
        }
    }

    fn drain(&mut self, ledger: &mut Ledger) {
        while let Ok(e) = self.events.try_recv() {
            if let Some(a) = e.get("assigned") {
                self.assigned = a
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_i64().unwrap() as i32)
                    .collect();
            }
            if let Some(r) = e.get("record") {
                ledger.record(
                    "kafka-python",
                    r[0].as_i64().unwrap() as i32,
                    r[1].as_i64().unwrap(),
                );
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PyMember {
    fn drop(&mut self) {
        self.kill();
    }
}

fn committed(c: &BaseConsumer) -> Vec<i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition("grp", p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => -1,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_clients_share_partitions_and_hand_them_over() {
    let b = TestBroker::start(&[
        "--shards",
        "2",
        "--group-initial-rebalance-delay-ms",
        "1000",
    ]);
    common::create_topic(&b.bootstrap(), "grp", PARTITIONS, &[]).await;
    let mut ledger = Ledger::default();
    let mut py = PyMember::start(&b, "g1");
    let c1 = member(&b, "g1", "rdkafka-1");
    let c2 = member(&b, "g1", "rdkafka-2");

    // 1. Three members, each partition owned by exactly one of them.
    let deadline = Instant::now() + TIMEOUT;
    let mut stable_since: Option<Instant> = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "the group never settled: {:?} {:?} {:?}",
            assignment(&c1),
            assignment(&c2),
            py.assigned
        );
        poll(&c1, "rdkafka-1", &mut ledger);
        poll(&c2, "rdkafka-2", &mut ledger);
        py.drain(&mut ledger);
        let (a1, a2, a3) = (assignment(&c1), assignment(&c2), py.assigned.clone());
        let all: BTreeSet<i32> = a1.iter().chain(&a2).chain(&a3).copied().collect();
        let split = !a1.is_empty()
            && !a2.is_empty()
            && !a3.is_empty()
            && a1.len() + a2.len() + a3.len() == PARTITIONS as usize
            && all.len() == PARTITIONS as usize;
        match (split, stable_since) {
            (false, _) => stable_since = None,
            (true, None) => stable_since = Some(Instant::now()),
            (true, Some(t)) if t.elapsed() > Duration::from_secs(2) => break,
            _ => {}
        }
    }

    // 2. Every record reaches exactly one member.
    produce(&b, 60, "a").await;
    let deadline = Instant::now() + TIMEOUT;
    while ledger.distinct() < 360 {
        assert!(
            Instant::now() < deadline,
            "consumed {} of 360",
            ledger.distinct()
        );
        poll(&c1, "rdkafka-1", &mut ledger);
        poll(&c2, "rdkafka-2", &mut ledger);
        py.drain(&mut ledger);
    }
    ledger.assert_once();
    let who: BTreeSet<&str> = ledger
        .deliveries
        .values()
        .flatten()
        .map(|(w, _)| *w)
        .collect();
    assert_eq!(who.len(), 3, "all three members consumed: {who:?}");
    let deadline = Instant::now() + TIMEOUT;
    while committed(&c1) != vec![60; PARTITIONS as usize] {
        assert!(Instant::now() < deadline, "commits: {:?}", committed(&c1));
        poll(&c1, "rdkafka-1", &mut ledger);
        poll(&c2, "rdkafka-2", &mut ledger);
        py.drain(&mut ledger);
    }

    // 3. The kafka-python member is killed: after its session times out, the others take its
    //    partitions from its committed offsets — nothing again, nothing skipped.
    py.kill();
    produce(&b, 10, "b").await;
    let deadline = Instant::now() + TIMEOUT;
    while ledger.distinct() < 420 {
        assert!(
            Instant::now() < deadline,
            "consumed {} of 420",
            ledger.distinct()
        );
        poll(&c1, "rdkafka-1", &mut ledger);
        poll(&c2, "rdkafka-2", &mut ledger);
    }
    ledger.assert_once();
    let both: BTreeSet<i32> = assignment(&c1).union(&assignment(&c2)).copied().collect();
    assert_eq!(both.len(), PARTITIONS as usize);

    // 4. A librdkafka member leaves cleanly; the last one owns everything.
    drop(c2);
    produce(&b, 10, "c").await;
    let deadline = Instant::now() + TIMEOUT;
    while ledger.distinct() < 480 {
        assert!(
            Instant::now() < deadline,
            "consumed {} of 480",
            ledger.distinct()
        );
        poll(&c1, "rdkafka-1", &mut ledger);
    }
    ledger.assert_once();
    assert_eq!(assignment(&c1).len(), PARTITIONS as usize);
    println!(
        "{} records, {} delivered again (consumed but uncommitted when a rebalance came)",
        ledger.distinct(),
        ledger.redelivered()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_kill9_and_the_group_resumes() {
    let data = tempfile::tempdir().unwrap();
    let args = ["--shards", "2", "--group-initial-rebalance-delay-ms", "0"];
    let b = TestBroker::start_at(data.path(), &args);
    common::create_topic(&b.bootstrap(), "grp", PARTITIONS, &[]).await;
    produce(&b, 20, "a").await;
    let mut ledger = Ledger::default();
    {
        let c = member(&b, "g2", "first");
        let deadline = Instant::now() + TIMEOUT;
        while ledger.distinct() < 120 {
            assert!(Instant::now() < deadline, "consumed {}", ledger.distinct());
            poll(&c, "first", &mut ledger);
        }
        let deadline = Instant::now() + TIMEOUT;
        while committed(&c) != vec![20; PARTITIONS as usize] {
            assert!(Instant::now() < deadline, "commits: {:?}", committed(&c));
            poll(&c, "first", &mut ledger);
        }
    }
    b.kill9();

    let b = TestBroker::start_at(data.path(), &args);
    assert!(b.log_contains("committed offsets loaded"));
    produce(&b, 5, "b").await;
    let c = member(&b, "g2", "second");
    let deadline = Instant::now() + TIMEOUT;
    while ledger.distinct() < 150 {
        assert!(Instant::now() < deadline, "consumed {}", ledger.distinct());
        poll(&c, "second", &mut ledger);
    }
    // Only the new records: the group resumed at its committed offsets.
    ledger.assert_once();
    assert!(ledger
        .deliveries
        .iter()
        .filter(|(_, w)| w[0].0 == "second")
        .all(|((_, o), _)| *o >= 20));
    assert_eq!(committed(&c), vec![25; PARTITIONS as usize]);
}

/// Group requests that do not fit the group's state get Kafka's error codes and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_or_unknown_members_get_errors_and_change_nothing() {
    use common::raw::Raw;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    let b = TestBroker::start(&["--shards", "2", "--group-initial-rebalance-delay-ms", "0"]);
    common::create_topic(&b.bootstrap(), "grp", PARTITIONS, &[]).await;
    let mut raw = Raw::connect(b.addr);
    let group = |s: &str| GroupId(StrBytes::from_string(s.to_string()));
    let join = |member: &str| {
        JoinGroupRequest::default()
            .with_group_id(group("raw"))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(StrBytes::from_string(member.to_string()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(bytes::Bytes::from_static(b"m"))])
    };
    let commit = |member: &str, generation: i32, offset: i64| {
        OffsetCommitRequest::default()
            .with_group_id(group("raw"))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(StrBytes::from_string(member.to_string()))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("grp")))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset)])])
    };
    let commit_code = |r: OffsetCommitResponse| r.topics[0].partitions[0].error_code;

    // The committed-offsets topic is the coordinator's: clients cannot write, delete records,
    // add partitions or change configs there.
    let offsets_topic = || TopicName(StrBytes::from_static_str("__consumer_offsets"));
    let dr: DeleteRecordsResponse = raw.call(
        ApiKey::DeleteRecords,
        2,
        &DeleteRecordsRequest::default().with_topics(vec![
            kafka_protocol::messages::delete_records_request::DeleteRecordsTopic::default()
                .with_name(offsets_topic())
                .with_partitions(vec![
                    kafka_protocol::messages::delete_records_request::DeleteRecordsPartition::default()
                        .with_offset(-1),
                ]),
        ]),
    );
    assert_eq!(dr.topics[0].partitions[0].error_code, 17);
    let cp: CreatePartitionsResponse = raw.call(
        ApiKey::CreatePartitions,
        1,
        &CreatePartitionsRequest::default().with_topics(vec![
            kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic::default()
                .with_name(offsets_topic())
                .with_count(10),
        ]),
    );
    assert_eq!(cp.results[0].error_code, 17);
    // An empty group id, and a member id the group never handed out.
    let r: JoinGroupResponse = raw.call(ApiKey::JoinGroup, 5, &join("").with_group_id(group("")));
    assert_eq!(r.error_code, 24, "INVALID_GROUP_ID");
    let r: JoinGroupResponse = raw.call(ApiKey::JoinGroup, 5, &join("made-up"));
    assert_eq!(r.error_code, 25, "UNKNOWN_MEMBER_ID");
    // The v4+ dance: MEMBER_ID_REQUIRED, then join with that id: generation 1, we lead.
    let r: JoinGroupResponse = raw.call(ApiKey::JoinGroup, 5, &join(""));
    assert_eq!(r.error_code, 79, "MEMBER_ID_REQUIRED");
    let me = r.member_id.to_string();
    let r: JoinGroupResponse = raw.call(ApiKey::JoinGroup, 5, &join(&me));
    assert_eq!((r.error_code, r.generation_id), (0, 1));
    assert_eq!(r.leader.as_str(), me);
    // Commits: from a stranger, from a stale generation, then a real one.
    let c: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 7, &commit("stranger", 1, 5));
    assert_eq!(commit_code(c), 25, "UNKNOWN_MEMBER_ID");
    let c: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 7, &commit(&me, 0, 5));
    assert_eq!(commit_code(c), 22, "ILLEGAL_GENERATION");
    let c: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 7, &commit(&me, 1, 5));
    assert_eq!(
        commit_code(c),
        27,
        "REBALANCE_IN_PROGRESS until the assignment is synced"
    );
    let s: SyncGroupResponse = raw.call(
        ApiKey::SyncGroup,
        3,
        &SyncGroupRequest::default()
            .with_group_id(group("raw"))
            .with_generation_id(7)
            .with_member_id(StrBytes::from_string(me.clone())),
    );
    assert_eq!(s.error_code, 22, "ILLEGAL_GENERATION");
    let s: SyncGroupResponse = raw.call(
        ApiKey::SyncGroup,
        3,
        &SyncGroupRequest::default()
            .with_group_id(group("raw"))
            .with_generation_id(1)
            .with_member_id(StrBytes::from_string(me.clone())),
    );
    assert_eq!(s.error_code, 0);
    let c: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 7, &commit(&me, 1, 5));
    assert_eq!(commit_code(c), 0);
    let h: HeartbeatResponse = raw.call(
        ApiKey::Heartbeat,
        3,
        &HeartbeatRequest::default()
            .with_group_id(group("raw"))
            .with_generation_id(1)
            .with_member_id(StrBytes::from_static_str("stranger")),
    );
    assert_eq!(h.error_code, 25);
    // Unknown topics are refused per partition; nothing else changed: the offset is still 5.
    let mut bad = commit(&me, 1, 9);
    bad.topics[0].name = TopicName(StrBytes::from_static_str("no-such-topic"));
    let c: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 7, &bad);
    assert_eq!(commit_code(c), 3, "UNKNOWN_TOPIC_OR_PARTITION");
    let f: OffsetFetchResponse = raw.call(
        ApiKey::OffsetFetch,
        5,
        &OffsetFetchRequest::default()
            .with_group_id(group("raw"))
            .with_topics(None),
    );
    assert_eq!(f.error_code, 0);
    assert_eq!(f.topics.len(), 1);
    assert_eq!(f.topics[0].partitions[0].committed_offset, 5);
    // OffsetDelete: the raw member subscribes to nothing the consumer protocol can read, so its
    // offsets for "grp" may go; for a group nobody knows, GROUP_ID_NOT_FOUND.
    let delete_offsets = |g: &str| {
        use kafka_protocol::messages::offset_delete_request::*;
        OffsetDeleteRequest::default()
            .with_group_id(group(g))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("grp")))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0)
                ])])
    };
    let d: OffsetDeleteResponse = raw.call(ApiKey::OffsetDelete, 0, &delete_offsets("raw"));
    assert_eq!((d.error_code, d.topics[0].partitions[0].error_code), (0, 0));
    let d: OffsetDeleteResponse = raw.call(ApiKey::OffsetDelete, 0, &delete_offsets("nobody"));
    assert_eq!(d.error_code, 69, "GROUP_ID_NOT_FOUND");
    let f: OffsetFetchResponse = raw.call(
        ApiKey::OffsetFetch,
        5,
        &OffsetFetchRequest::default()
            .with_group_id(group("raw"))
            .with_topics(None),
    );
    assert!(f.topics.is_empty(), "the offset is gone");
    let c: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 7, &commit(&me, 1, 5));
    assert_eq!(commit_code(c), 0);
    // A group nobody knows has no offsets; deleting a group with members is refused.
    let f: OffsetFetchResponse = raw.call(
        ApiKey::OffsetFetch,
        5,
        &OffsetFetchRequest::default()
            .with_group_id(group("nobody"))
            .with_topics(None),
    );
    assert!(f.topics.is_empty());
    let d: DeleteGroupsResponse = raw.call(
        ApiKey::DeleteGroups,
        2,
        &DeleteGroupsRequest::default().with_groups_names(vec![group("raw"), group("nobody")]),
    );
    assert_eq!(
        d.results.iter().map(|r| r.error_code).collect::<Vec<_>>(),
        vec![68, 69],
        "NON_EMPTY_GROUP, GROUP_ID_NOT_FOUND"
    );
    // Leave, then the group (and its offsets) can be deleted.
    let l: LeaveGroupResponse = raw.call(
        ApiKey::LeaveGroup,
        2,
        &LeaveGroupRequest::default()
            .with_group_id(group("raw"))
            .with_member_id(StrBytes::from_string(me.clone())),
    );
    assert_eq!(l.error_code, 0);
    let d: DeleteGroupsResponse = raw.call(
        ApiKey::DeleteGroups,
        2,
        &DeleteGroupsRequest::default().with_groups_names(vec![group("raw")]),
    );
    assert_eq!(d.results[0].error_code, 0);
    let f: OffsetFetchResponse = raw.call(
        ApiKey::OffsetFetch,
        5,
        &OffsetFetchRequest::default()
            .with_group_id(group("raw"))
            .with_topics(None),
    );
    assert!(f.topics.is_empty(), "deleted with its offsets");
}

/// The offsets log is compacted: after many commits its old records are deleted (the log start
/// moves), the live offsets are rewritten, and they read back the same, also after kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offsets_log_is_compacted_and_still_replays() {
    use common::raw::Raw;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    let data = tempfile::tempdir().unwrap();
    let args = [
        "--shards",
        "1",
        "--offsets-compact-records",
        "20",
        "--object-age-max-ms",
        "50",
    ];
    let b = TestBroker::start_at(data.path(), &args);
    common::create_topic(&b.bootstrap(), "grp", PARTITIONS, &[]).await;
    let mut raw = Raw::connect(b.addr);
    for round in 1..=30i64 {
        // Simple commits: no membership (generation -1), as tools and `assign()` users do.
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("cg")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("grp")))
                .with_partitions(
                    (0..PARTITIONS)
                        .map(|p| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(round * 10 + p as i64)
                        })
                        .collect(),
                )]);
        let r: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 7, &req);
        assert!(r.topics[0].partitions.iter().all(|p| p.error_code == 0));
    }
    let offsets = |b: &TestBroker| -> Vec<i64> {
        let mut raw = Raw::connect(b.addr);
        let f = loop {
            let f: OffsetFetchResponse = raw.call(
                ApiKey::OffsetFetch,
                5,
                &OffsetFetchRequest::default()
                    .with_group_id(GroupId(StrBytes::from_static_str("cg")))
                    .with_topics(None),
            );
            // COORDINATOR_LOAD_IN_PROGRESS right after a start: clients retry.
            if f.error_code != 14 {
                break f;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(f.error_code, 0);
        let mut o: Vec<(i32, i64)> = f.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.committed_offset))
            .collect();
        o.sort();
        o.into_iter().map(|(_, o)| o).collect()
    };
    let want: Vec<i64> = (0..PARTITIONS as i64).map(|p| 300 + p).collect();
    assert_eq!(offsets(&b), want);
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (low, high) = c
            .fetch_watermarks("__consumer_offsets", 0, Duration::from_secs(10))
            .unwrap();
        if low > 0 && high - low < 180 {
            break;
        }
        assert!(Instant::now() < deadline, "never compacted: {low}..{high}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.log_contains("compacted committed offsets"));
    drop(c);
    b.kill9();
    let b = TestBroker::start_at(data.path(), &args);
    assert_eq!(offsets(&b), want, "replayed from the compacted log");
}

/// librdkafka's cooperative-sticky assignor (incremental rebalances over the classic protocol):
/// members split the partitions, one leaves, the other takes them over; nothing is delivered
/// again after a commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_sticky_members_rebalance_incrementally() {
    let b = TestBroker::start(&["--shards", "2", "--group-initial-rebalance-delay-ms", "500"]);
    common::create_topic(&b.bootstrap(), "grp", PARTITIONS, &[]).await;
    let mut ledger = Ledger::default();
    let c1 = member_with(&b, "coop", "rdkafka-1", "cooperative-sticky");
    let c2 = member_with(&b, "coop", "rdkafka-2", "cooperative-sticky");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(
            Instant::now() < deadline,
            "never split: {:?} {:?}",
            assignment(&c1),
            assignment(&c2)
        );
        poll(&c1, "rdkafka-1", &mut ledger);
        poll(&c2, "rdkafka-2", &mut ledger);
        let (a1, a2) = (assignment(&c1), assignment(&c2));
        if !a1.is_empty()
            && !a2.is_empty()
            && a1.len() + a2.len() == PARTITIONS as usize
            && a1.is_disjoint(&a2)
        {
            break;
        }
    }
    produce(&b, 20, "a").await;
    let deadline = Instant::now() + TIMEOUT;
    while ledger.distinct() < 120 {
        assert!(
            Instant::now() < deadline,
            "consumed {} of 120",
            ledger.distinct()
        );
        poll(&c1, "rdkafka-1", &mut ledger);
        poll(&c2, "rdkafka-2", &mut ledger);
    }
    drop(c2);
    produce(&b, 5, "b").await;
    let deadline = Instant::now() + TIMEOUT;
    while ledger.distinct() < 150 {
        assert!(
            Instant::now() < deadline,
            "consumed {} of 150",
            ledger.distinct()
        );
        poll(&c1, "rdkafka-1", &mut ledger);
    }
    ledger.assert_once();
    assert_eq!(assignment(&c1).len(), PARTITIONS as usize);
}

/// Counts the rebalances a librdkafka consumer goes through.
struct CountRebalances(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl rdkafka::ClientContext for CountRebalances {}

impl rdkafka::consumer::ConsumerContext for CountRebalances {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &rdkafka::consumer::Rebalance<'_>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn static_member(
    b: &TestBroker,
    instance: &str,
    rebalances: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> BaseConsumer<CountRebalances> {
    let c: BaseConsumer<CountRebalances> = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", "static")
        .set("group.instance.id", instance)
        .set("client.id", instance)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "30000")
        .set("heartbeat.interval.ms", "500")
        .create_with_context(CountRebalances(rebalances.clone()))
        .unwrap();
    c.subscribe(&["grp"]).unwrap();
    c
}

/// Issue 27 (librdkafka 0102, KIP-345): a static member that restarts within its session
/// timeout gets its partitions back at once and the other members are not disturbed. Before,
/// the broker held the restarted member's join for a rebalance (8 s in the suite) and told the
/// others REBALANCE_IN_PROGRESS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_static_member_keeps_its_partitions_without_a_rebalance() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let b = TestBroker::start(&["--shards", "2", "--group-initial-rebalance-delay-ms", "500"]);
    common::create_topic(&b.bootstrap(), "grp", PARTITIONS, &[]).await;
    let (r1, r2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let c1 = static_member(&b, "host-1", &r1);
    let c2 = static_member(&b, "host-2", &r2);
    let deadline = Instant::now() + TIMEOUT;
    let (a1, a2) = loop {
        assert!(Instant::now() < deadline, "the two members never split");
        let _ = c1.poll(Duration::from_millis(50));
        let _ = c2.poll(Duration::from_millis(50));
        let (a1, a2) = (assignment(&c1), assignment(&c2));
        if a1.len() + a2.len() == PARTITIONS as usize && a1.is_disjoint(&a2) && !a1.is_empty() {
            break (a1, a2);
        }
    };
    // Settle: let c2 finish its own rebalance callbacks, then count from here.
    for _ in 0..10 {
        let _ = c2.poll(Duration::from_millis(50));
    }
    let before = r2.load(SeqCst);
    // A static member's close leaves the group to its session timeout (no LeaveGroup).
    drop(c1);
    let restarted_at = Instant::now();
    let r1b = Arc::new(AtomicUsize::new(0));
    let c1 = static_member(&b, "host-1", &r1b);
    loop {
        assert!(
            restarted_at.elapsed() < Duration::from_secs(20),
            "the restarted member got no partitions"
        );
        let _ = c1.poll(Duration::from_millis(50));
        let _ = c2.poll(Duration::from_millis(50));
        if !assignment(&c1).is_empty() {
            break;
        }
    }
    let took = restarted_at.elapsed();
    for _ in 0..40 {
        let _ = c1.poll(Duration::from_millis(50));
        let _ = c2.poll(Duration::from_millis(50));
    }
    assert_eq!(
        assignment(&c1),
        a1,
        "the same partitions as before the restart"
    );
    assert_eq!(assignment(&c2), a2);
    assert_eq!(
        r2.load(SeqCst),
        before,
        "the other member went through a rebalance"
    );
    assert!(
        took < Duration::from_secs(5),
        "the restarted member waited {took:?} for its partitions"
    );
}
