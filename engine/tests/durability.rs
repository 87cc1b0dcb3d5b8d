//! The WAL ring: acknowledged records survive kill -9; torn tails recover; corruption in the
//! middle is refused loudly; a full ring refuses produce (retriable) until space is freed.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestBroker;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Every record of every partition, in offset order: (offset, payload).
fn consume_all(b: &TestBroker, topic: &str, partitions: i32) -> BTreeMap<i32, Vec<(i64, Vec<u8>)>> {
    let (all, _) = common::read_all(&b.bootstrap(), topic, partitions);
    let mut out: BTreeMap<i32, Vec<(i64, Vec<u8>)>> = BTreeMap::new();
    for ((p, offset), payload) in all {
        out.entry(p).or_default().push((offset, payload));
    }
    out
}

fn ring_path(b: &std::path::Path, shard: usize) -> std::path::PathBuf {
    b.join("wal").join(format!("shard-{shard}.wal"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_repeated_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--shards", "2"];
    let topic = "durable";
    let partitions = 3;
    let mut acked: BTreeMap<(i32, i64), Vec<u8>> = BTreeMap::new();
    let mut rng: u64 = 0x2545F4914F6CDD1D;
    let kills = 10;
    for round in 0..=kills {
        let b = TestBroker::start_at(dir.path(), &extra);
        if round == 0 {
            common::create_topic(&b.bootstrap(), topic, partitions, &[]).await;
        }
        // Everything acknowledged so far is there, byte-exact, at its offset; offsets are dense.
        let got = consume_all(&b, topic, partitions);
        for (p, recs) in &got {
            for (i, (offset, _)) in recs.iter().enumerate() {
                assert_eq!(
                    *offset, i as i64,
                    "round {round}: partition {p} offsets are dense from 0"
                );
            }
        }
        for ((p, offset), payload) in &acked {
            let rec = got.get(p).and_then(|r| r.get(*offset as usize));
            assert_eq!(
                rec.map(|r| &r.1),
                Some(payload),
                "round {round}: acked record {p}/{offset} lost or changed"
            );
        }
        if round == kills {
            break;
        }
        // Produce with acks=all until a kill -9 at a random moment.
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", b.bootstrap())
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "3000")
            .create()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after = Duration::from_millis(150 + rng % 500);
        let start = Instant::now();
        let mut inflight = Vec::new();
        let mut i = 0u64;
        while start.elapsed() < kill_after {
            let payload =
                format!("round-{round}-record-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes();
            let partition = (i % partitions as u64) as i32;
            let rec = FutureRecord::<(), Vec<u8>>::to(topic)
                .partition(partition)
                .payload(&payload);
            if let Ok(f) = producer.send_result(rec) {
                inflight.push((payload, f));
            }
            i += 1;
            if i.is_multiple_of(20) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        b.kill9();
        let mut acked_this_round = 0;
        for (payload, f) in inflight {
            if let Ok(Ok(Ok(d))) = tokio::time::timeout(Duration::from_secs(5), f).await {
                acked.insert((d.partition, d.offset), payload);
                acked_this_round += 1;
            }
        }
        eprintln!(
            "round {round}: killed after {kill_after:?}, {acked_this_round} acked, {} in total",
            acked.len()
        );
    }
    assert!(
        acked.len() > 100,
        "the test produced too little to mean anything"
    );
}

fn kcat_produce(bootstrap: &str, topic: &str, lines: &str) {
    let mut child = Command::new("kcat")
        .args([
            "-b", bootstrap, "-P", "-t", topic, "-p", "0", "-X", "acks=all",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), lines.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

fn kcat_consume(bootstrap: &str, topic: &str) -> Vec<String> {
    let out = Command::new("kcat")
        .args([
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
            "-q",
            "-f",
            "%o:%s\n",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_recovers_and_middle_corruption_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // WAL only: with an object tier the torn chunk's records may already be in an object.
    let extra = ["--shards", "1", "--object-store", "none"];
    let b = TestBroker::start_at(dir.path(), &extra);
    common::create_topic(&b.bootstrap(), "torn", 1, &[]).await;
    for round in 0..4 {
        kcat_produce(&b.bootstrap(), "torn", &format!("r{round}-a\nr{round}-b\n"));
    }
    assert_eq!(kcat_consume(&b.bootstrap(), "torn").len(), 8);
    assert_eq!(b.terminate(), Some(0));

    // Tear the last write: zero its first block, as a power cut mid-write could.
    let ring = ring_path(dir.path(), 0);
    let recovery = ringtail_wal::recover(&ring).unwrap();
    let last = *recovery.chunks.last().unwrap();
    // Records in the torn chunk: kcat usually sends a round's two lines as one batch, but not
    // always, so count them from the entries.
    let lost: usize = recovery
        .entries
        .iter()
        .filter(|(h, _)| h.seq >= last.first_seq)
        .map(|(h, _)| h.meta.record_count as usize)
        .sum();
    let bytes = std::fs::read(&ring).unwrap();
    let mut torn = bytes.clone();
    torn[last.pos as usize..last.pos as usize + 4096].fill(0);
    std::fs::write(&ring, &torn).unwrap();

    let b = TestBroker::start_at(dir.path(), &extra);
    let after = kcat_consume(&b.bootstrap(), "torn");
    assert_eq!(after.len(), 8 - lost, "{after:?}");
    assert_eq!(after[0], "0:r0-a");
    // New writes continue at the recovered log end, and overwrite the torn chunk's place.
    kcat_produce(&b.bootstrap(), "torn", "again\n");
    let again = kcat_consume(&b.bootstrap(), "torn");
    assert_eq!(again.last().unwrap(), &format!("{}:again", 8 - lost));
    assert_eq!(b.terminate(), Some(0));

    // Damage a chunk in the middle: the broker refuses to start and says so.
    let recovery = ringtail_wal::recover(&ring).unwrap();
    assert!(recovery.chunks.len() >= 3);
    let middle = recovery.chunks[1];
    let mut bytes = std::fs::read(&ring).unwrap();
    bytes[middle.pos as usize + 100] ^= 0x40;
    std::fs::write(&ring, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringtail"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--wal-size-per-shard",
            "33554432",
            "--wal-max-write-bytes",
            "4194304",
            "--object-store",
            "none",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("corruption in the middle"), "{stderr}");

    // A different shard count is refused too (the rings hold the partitions).
    let out = Command::new(env!("CARGO_BIN_EXE_ringtail"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("start with --shards 1"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_ring_refuses_produce_until_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    // WAL only: an object tier would free the ring by uploading.
    let extra = [
        "--shards",
        "1",
        "--wal-size-per-shard",
        "1048576",
        "--wal-max-write-bytes",
        "65536",
        "--object-store",
        "none",
    ];
    let b = TestBroker::start_at(dir.path(), &extra);
    common::create_topic(&b.bootstrap(), "fill", 1, &[]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("acks", "all")
        .set("message.timeout.ms", "2000")
        .set("retries", "0")
        .create()
        .unwrap();
    let value = vec![7u8; 10_000];
    let mut ok = 0;
    let err = loop {
        match producer
            .send(
                FutureRecord::<(), Vec<u8>>::to("fill").payload(&value),
                TIMEOUT,
            )
            .await
        {
            Ok(_) => ok += 1,
            Err((e, _)) => break e,
        }
        assert!(ok < 200, "a 1 MiB ring cannot take 2 MB");
    };
    assert!(
        err.to_string().contains("Storage") || err.to_string().contains("storage"),
        "{err}"
    );
    assert!(ok > 50, "most of the ring was usable ({ok} records)");
    assert!(b.log_contains("produce refused"));

    // Retention frees space: a topic that keeps little takes far more than the ring over time.
    common::create_topic(
        &b.bootstrap(),
        "rolling",
        1,
        &[("retention.bytes", "20000")],
    )
    .await;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .create()
        .unwrap();
    admin
        .delete_topics(&["fill"], &AdminOptions::new())
        .await
        .unwrap()[0]
        .as_ref()
        .expect("deleted");
    // A full ring triggers the retention check at once; the refused produce is retried.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .set("retry.backoff.ms", "50")
        .create()
        .unwrap();
    for i in 0..300 {
        producer
            .send(
                FutureRecord::<(), Vec<u8>>::to("rolling").payload(&value),
                TIMEOUT,
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("record {i} of 3 MB through a 1 MiB ring: {e}"));
    }
    let (low, high) = {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", b.bootstrap())
            .set("group.id", "w")
            .create()
            .unwrap();
        c.fetch_watermarks("rolling", 0, TIMEOUT).unwrap()
    };
    assert_eq!(high, 300);
    // Retention is checked when the ring fills up, not on every append: at most a ring's worth
    // (1 MiB, about 100 records) is held between two checks.
    assert!(low > 190, "retention moved the log start ({low})");
}
