//! The replicated WAL's follower side (issue 19, step 2) on real brokers: two brokers share a
//! SeaweedFS bucket, each with its replication listener; the test plays an owner streaming to
//! broker 1. What a follower takes lands in its replica ring and is acknowledged once durable;
//! a frame from a non-member, of another cluster, of a stale epoch, out of sequence or with a
//! damaged batch is refused with a logged reason and nothing appended. (The frames are the
//! brokers' own protocol, so the test speaks it with the engine's codec.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::TestBroker;
use kafka_protocol::records::Compression;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use ringtail_engine::replication::frame::{decode, encode, Header};
use ringtail_netio::batch::{split_and_validate, testing};

const SLOTS: u32 = 4;

fn start(
    weed: &ringtail_objstore::testing::Seaweed,
    node: i32,
    dir: &std::path::Path,
) -> TestBroker {
    start_on(weed, node, dir, "127.0.0.1:0")
}

/// As [`start`], with the replication listener at `replication`.
fn start_on(
    weed: &ringtail_objstore::testing::Seaweed,
    node: i32,
    dir: &std::path::Path,
    replication: &str,
) -> TestBroker {
    let mut args = weed.broker_args("replication");
    args.extend(
        [
            "--shards",
            "1",
            "--slots",
            "4",
            "--node-id",
            &node.to_string(),
            "--replication-listen",
            replication,
        ]
        .map(String::from),
    );
    TestBroker::start_at(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The address broker `b` said its (only) shard's replication listener is on.
fn replication_addr(b: &TestBroker) -> String {
    b.log_lines()
        .iter()
        .find_map(|l| l.split("replication listening on ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().to_string())
        .expect("the broker logs its replication listener before it says it listens")
}

/// The cluster id broker `b` gives librdkafka.
fn cluster_id(b: &TestBroker) -> String {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .unwrap();
    client
        .client()
        .fetch_cluster_id(Duration::from_secs(10))
        .expect("a cluster id")
}

/// An owner's end of a replication connection.
struct Owner {
    stream: TcpStream,
    buf: BytesMut,
}

impl Owner {
    fn connect(addr: &str) -> Owner {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Owner {
            stream,
            buf: BytesMut::new(),
        }
    }

    fn send(&mut self, header: Header, payload: &[u8]) {
        let mut out = BytesMut::new();
        encode(&header, payload, &mut out);
        self.stream.write_all(&out).unwrap();
    }

    fn next(&mut self) -> Header {
        loop {
            if let Some((h, _)) = decode(&mut self.buf).unwrap() {
                return h;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("an answer in time");
            assert!(n > 0, "the follower closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn start(&mut self, cluster_id: &str, node: i32, slot: u32, epoch: u64) -> Header {
        self.send(
            Header::Start {
                cluster_id: cluster_id.into(),
                node,
                slot,
                epoch,
                first_seq: 1,
            },
            &[],
        );
        self.next()
    }

    fn append(&mut self, slot: u32, epoch: u64, seq: u64, batch: &Bytes) {
        let h = ringtail_netio::header::BatchHeader::parse(batch).unwrap();
        self.send(
            Header::Append {
                slot,
                epoch,
                seq,
                topic_id: [7; 16],
                partition: 0,
                base_offset: h.base_offset,
                record_count: h.record_count,
                leader_epoch: h.partition_leader_epoch,
            },
            batch,
        );
    }
}

/// A stored batch of 3 records at `base` under leader epoch `epoch`.
fn batch(base: i64, epoch: i32) -> Bytes {
    let values = (0..3).map(|i| Some(Bytes::from(format!("r{base}-{i}"))));
    split_and_validate(testing::encode(values, 1_000, Compression::None), 1 << 20)
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .assign(base, epoch)
        .1
}

fn refused(h: &Header) -> Option<&str> {
    match h {
        Header::Refused { reason, .. } => Some(reason),
        _ => None,
    }
}

#[test]
fn a_follower_takes_a_members_stream_and_refuses_bad_frames() {
    let weed = ringtail_objstore::testing::Seaweed::start();
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b1 = start(&weed, 1, dir1.path());
    let b2 = start(&weed, 2, dir2.path());
    let cluster_id = cluster_id(&b1);
    let addr = replication_addr(&b1);

    // Until broker 2 has its half of the slots, broker 1 owns them all: every Start is
    // refused as "owned here"; then exactly the two slots broker 2 serves are taken.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mine, theirs) = loop {
        let mut owner = Owner::connect(&addr);
        let answers: Vec<(u32, Header)> = (0..SLOTS)
            .map(|slot| (slot, owner.start(&cluster_id, 2, slot, 5)))
            .collect();
        let theirs: Vec<u32> = answers
            .iter()
            .filter(|(_, h)| matches!(h, Header::Started { .. }))
            .map(|(s, _)| *s)
            .collect();
        let mine: Vec<u32> = answers
            .iter()
            .filter(|(_, h)| refused(h).is_some_and(|r| r.contains("owned here")))
            .map(|(s, _)| *s)
            .collect();
        if theirs.len() == 2 && mine.len() == 2 {
            break (mine, theirs);
        }
        assert!(Instant::now() < deadline, "slots never spread: {answers:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let slot = theirs[0];

    let mut owner = Owner::connect(&addr);
    assert_eq!(
        owner.start(&cluster_id, 2, slot, 5),
        Header::Started {
            slot,
            epoch: 5,
            next_seq: 1,
            fresh: false
        },
        "the same epoch again resumes where the stream is"
    );
    // Batch 1: appended, acknowledged once durable.
    owner.append(slot, 5, 1, &batch(0, 5));
    assert_eq!(
        owner.next(),
        Header::Acked {
            slot,
            epoch: 5,
            durable_seq: 1
        }
    );
    // Refused, nothing appended: a gap; a damaged batch; a batch whose leader epoch is not
    // its stream's.
    owner.append(slot, 5, 3, &batch(3, 5));
    let gap = owner.next();
    assert!(
        refused(&gap).is_some_and(|r| r.contains("sequence 3 where 2")),
        "{gap:?}"
    );
    let mut damaged = batch(3, 5).to_vec();
    let n = damaged.len();
    damaged[n - 2] ^= 0x20;
    owner.append(slot, 5, 2, &Bytes::from(damaged));
    let crc = owner.next();
    assert!(refused(&crc).is_some_and(|r| r.contains("CRC")), "{crc:?}");
    owner.append(slot, 5, 2, &batch(3, 4));
    let epoch = owner.next();
    assert!(
        refused(&epoch).is_some_and(|r| r.contains("leader epoch 4")),
        "{epoch:?}"
    );
    // The stream goes on where it was.
    owner.append(slot, 5, 2, &batch(3, 5));
    assert_eq!(
        owner.next(),
        Header::Acked {
            slot,
            epoch: 5,
            durable_seq: 2
        }
    );

    // Starts refused: another cluster, a node without a lease, a stale epoch, a slot this
    // broker owns.
    let mut other = Owner::connect(&addr);
    let wrong_cluster = other.start("another-cluster", 2, slot, 6);
    assert!(
        refused(&wrong_cluster).is_some_and(|r| r.contains("cluster")),
        "{wrong_cluster:?}"
    );
    let stranger = other.start(&cluster_id, 9, slot, 6);
    assert!(
        refused(&stranger).is_some_and(|r| r.contains("node 9")),
        "{stranger:?}"
    );
    let stale = other.start(&cluster_id, 2, slot, 4);
    assert!(
        refused(&stale).is_some_and(|r| r.contains("older")),
        "{stale:?}"
    );
    let owned = other.start(&cluster_id, 2, mine[0], 6);
    assert!(
        refused(&owned).is_some_and(|r| r.contains("owned here")),
        "{owned:?}"
    );
    // An append or a commit on a connection that does not stream the slot.
    other.append(slot, 5, 3, &batch(6, 5));
    let unstarted = other.next();
    assert!(refused(&unstarted).is_some(), "{unstarted:?}");
    other.send(
        Header::Committed {
            slot,
            epoch: 5,
            seq: u64::MAX,
        },
        &[],
    );
    let trim = other.next();
    assert!(
        refused(&trim).is_some_and(|r| r.contains("Committed")),
        "{trim:?}"
    );
    assert!(
        b1.metrics()["ringtail_replica_ring_bytes"] > 0,
        "nothing trimmed"
    );

    let m = b1.metrics();
    assert_eq!(m.get("ringtail_replica_appended_batches_total"), Some(&2));
    assert!(m["ringtail_replica_appended_bytes_total"] > 0);
    assert!(
        b1.log_contains("replication frame refused, nothing appended"),
        "refusals are logged"
    );
    // A restarted follower still holds the stream: epoch 5 resumes after 2.
    drop(owner);
    drop(other);
    assert_eq!(b1.terminate(), Some(0));
    let b1 = start(&weed, 1, dir1.path());
    let mut owner = Owner::connect(&replication_addr(&b1));
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        match owner.start(&cluster_id, 2, slot, 5) {
            // Broker 2 held every slot while broker 1 was away and hands them back.
            h if refused(&h).is_some_and(|r| r.contains("node 2")) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            h => break h,
        }
    };
    assert_eq!(
        resumed,
        Header::Started {
            slot,
            epoch: 5,
            next_seq: 3,
            fresh: false
        }
    );
    // What is durable is acknowledged again at every Start: an acknowledgement lost with the
    // old connection is not waited for forever.
    assert_eq!(
        owner.next(),
        Header::Acked {
            slot,
            epoch: 5,
            durable_seq: 2
        }
    );
    let stale = owner.start(&cluster_id, 2, slot, 4);
    assert!(
        refused(&stale).is_some_and(|r| r.contains("older")),
        "{stale:?}"
    );
    drop(b2);
}

/// The first slot of `SLOTS` whose Start from node 2 broker at `addr` takes (broker 2 owns it),
/// waiting for the slots to spread.
fn their_slot(addr: &str, cluster_id: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut owner = Owner::connect(addr);
        for slot in 0..SLOTS {
            if matches!(owner.start(cluster_id, 2, slot, 1), Header::Started { .. }) {
                return slot;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no slot of broker 2's seen from {addr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The owner's link streams batches to a real follower, pipelined; a follower restart breaks
/// the connection, and the link reconnects, resends what was not acknowledged, and goes on.
#[test]
fn an_owners_link_streams_and_resumes_across_a_follower_restart() {
    use ringtail_engine::replication::link::{Batch, Link, LinkConfig};
    let weed = ringtail_objstore::testing::Seaweed::start();
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let b1 = start_on(&weed, 1, dir1.path(), &listen);
    let _b2 = start(&weed, 2, dir2.path());
    let cluster_id = cluster_id(&b1);
    let slot = their_slot(&listen, &cluster_id);
    let config = LinkConfig {
        cluster_id,
        node: 2,
        slot,
        epoch: 3,
        addr: listen.clone(),
        unacked_bytes_max: 64 << 20,
    };
    let batch_of = |seq: u64| Batch {
        seq,
        topic_id: [7; 16],
        partition: 1,
        base_offset: seq as i64 * 3,
        record_count: 3,
        leader_epoch: 3,
        bytes: batch(seq as i64 * 3, 3),
    };
    // The link lives on a shard runtime of the test's own; the broker is stopped and started
    // from here while it runs.
    let (acked_tx, acked_rx) = std::sync::mpsc::channel::<()>();
    let (stopped_tx, stopped_rx) = std::sync::mpsc::channel::<()>();
    let (restarted_tx, restarted_rx) = std::sync::mpsc::channel::<()>();
    let (trimmed_tx, trimmed_rx) = std::sync::mpsc::channel::<()>();
    let runner = std::thread::spawn(move || {
        ringtail_shards::block_on(1 << 20, move || async move {
            let link = Link::open(config, |_| {});
            for seq in 1..=50 {
                assert!(link.push(batch_of(seq)));
            }
            let wait_acked = |n: u64| {
                let link = &link;
                async move {
                    for _ in 0..3000 {
                        if link.acked_seq() >= n {
                            return true;
                        }
                        ringtail_shards::sleep(Duration::from_millis(10)).await;
                    }
                    false
                }
            };
            let until = |rx: &std::sync::mpsc::Receiver<()>| {
                let ready = rx.try_recv().is_ok();
                async move { ready }
            };
            assert!(
                wait_acked(50).await,
                "50 acknowledged: {:?}",
                link.last_error()
            );
            assert_eq!(link.queued_bytes(), 0, "acknowledged batches are let go");
            acked_tx.send(()).unwrap();
            while !until(&stopped_rx).await {
                ringtail_shards::sleep(Duration::from_millis(20)).await;
            }
            // Pushed while the follower is away: held, then sent once it is back.
            for seq in 51..=80 {
                assert!(link.push(batch_of(seq)));
            }
            while !until(&restarted_rx).await {
                ringtail_shards::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                wait_acked(80).await,
                "80 acknowledged after the restart: {:?}",
                link.last_error()
            );
            // Everything is in the bucket: the follower trims its ring (the link lives on until
            // the test has seen it).
            link.committed(80);
            while !until(&trimmed_rx).await {
                ringtail_shards::sleep(Duration::from_millis(20)).await;
            }
            link.acked_seq()
        })
        .unwrap()
    });
    acked_rx.recv().unwrap();
    assert_eq!(b1.metrics()["ringtail_replica_appended_batches_total"], 50);
    assert_eq!(b1.terminate(), Some(0));
    stopped_tx.send(()).unwrap();
    let b1 = start_on(&weed, 1, dir1.path(), &listen);
    restarted_tx.send(()).unwrap();
    // The restarted follower takes exactly the batches it lacked, and trims them all once told
    // they are committed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while b1.metrics()["ringtail_replica_appended_batches_total"] < 30 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    while b1.metrics()["ringtail_replica_ring_bytes"] > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b1.metrics()["ringtail_replica_ring_bytes"], 0, "trimmed");
    trimmed_tx.send(()).unwrap();
    assert_eq!(runner.join().unwrap(), 80);
    assert_eq!(b1.metrics()["ringtail_replica_appended_batches_total"], 30);
}

/// p50, p99 and p99.9 of `samples` in microseconds.
fn percentiles(samples: &mut [u64]) -> (u64, u64, u64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.5), at(0.99), at(0.999))
}

/// Benchmark (prints figures; `cargo test --test replication -- --ignored --nocapture`): 1 KiB
/// batches through an owner's link to a real follower on loopback (its replica ring: direct
/// I/O, fdatasync), against the baseline of the same batches appended to a WAL ring in the
/// test's own process on the same disk — one at a time (latency) and pipelined (throughput).
#[test]
#[ignore]
fn bench_link_against_a_local_wal() {
    use ringtail_engine::replication::link::{Batch, Link, LinkConfig};
    use ringtail_wal::format::EntryMeta;
    let weed = ringtail_objstore::testing::Seaweed::start();
    let (dir1, dir2, local) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let listen = format!("127.0.0.1:{}", common::free_port());
    let b1 = start_on(&weed, 1, dir1.path(), &listen);
    let _b2 = start(&weed, 2, dir2.path());
    let cluster_id = cluster_id(&b1);
    let slot = their_slot(&listen, &cluster_id);
    let config = LinkConfig {
        cluster_id,
        node: 2,
        slot,
        epoch: 3,
        addr: listen,
        unacked_bytes_max: 1 << 30,
    };
    const ONE_BY_ONE: u64 = 2000;
    const PIPELINED: u64 = 20_000;
    // A 1 KiB batch (one record of 1000 bytes).
    let payload = |seq: u64| {
        let value = Bytes::from(vec![b'x'; 1000]);
        split_and_validate(
            testing::encode([Some(value)], 1_000, Compression::None),
            1 << 20,
        )
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .assign(seq as i64, 3)
        .1
    };
    let wal_cfg = ringtail_wal::WalConfig {
        path: local.path().join("local.wal"),
        region_bytes: 256 << 20,
        chunk_bytes_max: 1 << 20,
        max_delay: Duration::ZERO,
        sync: ringtail_wal::SyncMode::Fdatasync,
    };
    ringtail_wal::create_or_check(&wal_cfg).unwrap();
    let report = ringtail_shards::block_on(1 << 20, move || async move {
        // Baseline: the local WAL.
        let recovery = ringtail_wal::recover(&wal_cfg.path).unwrap();
        let wal: ringtail_wal::Wal<u64> =
            ringtail_wal::Wal::open(&wal_cfg, &recovery, Vec::new(), |_| {})
                .await
                .unwrap();
        let meta = |seq: u64| EntryMeta {
            stream_id: [7; 16],
            stream_index: 0,
            base_offset: seq as i64,
            record_count: 1,
            leader_epoch: 3,
        };
        let mut wal_lat = Vec::new();
        for seq in 1..=ONE_BY_ONE {
            let t = Instant::now();
            wal.append(meta(seq), payload(seq), seq)
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            wal_lat.push(t.elapsed().as_micros() as u64);
        }
        let t = Instant::now();
        let mut tickets = Vec::new();
        for seq in ONE_BY_ONE + 1..=ONE_BY_ONE + PIPELINED {
            tickets.push(wal.append(meta(seq), payload(seq), seq).unwrap());
        }
        for ticket in tickets {
            ticket.await.unwrap().unwrap();
        }
        let wal_secs = t.elapsed().as_secs_f64();
        // The link to the follower.
        let acked = std::rc::Rc::new(ringtail_shards::WaitList::new());
        let told = acked.clone();
        let link = Link::open(config, move |_| told.notify_all());
        let batch_of = |seq: u64| Batch {
            seq,
            topic_id: [7; 16],
            partition: 0,
            base_offset: seq as i64,
            record_count: 1,
            leader_epoch: 3,
            bytes: payload(seq),
        };
        let wait_acked = |n: u64| {
            let (link, acked) = (&link, &acked);
            async move { acked.wait_until(|| link.acked_seq() >= n).await }
        };
        // Connected and warm.
        assert!(link.push(batch_of(1)));
        wait_acked(1).await;
        let mut link_lat = Vec::new();
        for seq in 2..=ONE_BY_ONE {
            let t = Instant::now();
            assert!(link.push(batch_of(seq)));
            wait_acked(seq).await;
            link_lat.push(t.elapsed().as_micros() as u64);
        }
        let t = Instant::now();
        for seq in ONE_BY_ONE + 1..=ONE_BY_ONE + PIPELINED {
            assert!(link.push(batch_of(seq)));
            if seq % 1000 == 0 {
                link.committed(seq - 1000);
                ringtail_shards::yield_if_needed().await;
            }
        }
        wait_acked(ONE_BY_ONE + PIPELINED).await;
        let link_secs = t.elapsed().as_secs_f64();
        (
            percentiles(&mut wal_lat),
            wal_secs,
            percentiles(&mut link_lat),
            link_secs,
        )
    })
    .unwrap();
    let ((w50, w99, w999), wal_secs, (l50, l99, l999), link_secs) = report;
    let mb = PIPELINED as f64 * 1061.0 / 1e6;
    println!("one at a time ({ONE_BY_ONE} batches of 1 KiB), µs p50/p99/p99.9:");
    println!("  local WAL (baseline)     {w50} / {w99} / {w999}");
    println!("  link to a follower       {l50} / {l99} / {l999}");
    println!(
        "  ratio link/WAL           {:.2} / {:.2} / {:.2}",
        l50 as f64 / w50 as f64,
        l99 as f64 / w99 as f64,
        l999 as f64 / w999 as f64
    );
    println!("pipelined ({PIPELINED} batches of 1 KiB):");
    println!("  local WAL (baseline)     {:.1} MB/s", mb / wal_secs);
    println!("  link to a follower       {:.1} MB/s", mb / link_secs);
    println!("  ratio link/WAL           {:.2}", wal_secs / link_secs);
}
