//! The replica ring on a real file (O_DIRECT through io_uring): what it takes, what a restart
//! keeps, trimming and the epoch file.

use super::*;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::records::Compression;
use ringtail_netio::batch::{split_and_validate, testing};
use ringtail_netio::header::BatchHeader;
use ringtail_wal::{create_or_check, recover, SyncMode};

fn config(dir: &Path) -> WalConfig {
    WalConfig {
        path: dir.join(crate::layout::replica_ring(3)),
        region_bytes: 4 << 20,
        chunk_bytes_max: 256 << 10,
        max_delay: Duration::ZERO,
        sync: SyncMode::Fdatasync,
    }
}

/// A stored batch of 2 records at `base`, appended under leader epoch `epoch`.
fn batch(base: i64, epoch: i32) -> (BatchHeader, Bytes) {
    let values = (0..2).map(|i| Some(Bytes::from(format!("v{base}-{i}"))));
    split_and_validate(testing::encode(values, 1_000, Compression::None), 1 << 20)
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .assign(base, epoch)
}

fn claimed(h: &BatchHeader) -> Claimed {
    Claimed {
        base_offset: h.base_offset,
        record_count: h.record_count,
        leader_epoch: h.partition_leader_epoch,
    }
}

/// Opens the slot's ring in `dir` (creating it), runs `body` on it, and returns its output.
fn with_ring<T: Send + 'static>(
    dir: &Path,
    body: impl FnOnce(
            Rc<ReplicaRing>,
            Rc<RefCell<Vec<(u64, u64)>>>,
        ) -> futures::future::LocalBoxFuture<'static, T>
        + Send
        + 'static,
) -> T {
    let cfg = config(dir);
    create_or_check(&cfg).unwrap();
    let epoch_path = dir.join(crate::layout::replica_epoch(3));
    let floor = read_epoch(&epoch_path).unwrap();
    ringtail_shards::block_on(1 << 20, move || async move {
        let recovery = recover(&cfg.path).unwrap();
        let heard = Rc::new(RefCell::new(Vec::new()));
        let sink = heard.clone();
        let ring = ReplicaRing::open(&cfg, &recovery, floor, epoch_path, move |e, s| {
            sink.borrow_mut().push((e, s))
        })
        .await
        .unwrap();
        body(Rc::new(ring), heard).await
    })
    .unwrap()
}

/// A start's outcome, comparable: the refusal, or None for a ring error.
fn outcome(r: Result<Started, AppendError>) -> Result<Started, Option<Refusal>> {
    r.map_err(|e| match e {
        AppendError::Refused(r) => Some(r),
        AppendError::Ring(_) => None,
    })
}

async fn settle(ring: &ReplicaRing, seq: u64) {
    for _ in 0..5000 {
        if ring.durable_seq() >= seq {
            return;
        }
        ringtail_shards::sleep(Duration::from_millis(2)).await;
    }
    panic!("seq {seq} never durable (at {})", ring.durable_seq());
}

#[test]
fn a_stream_is_appended_in_order_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let topic = [7u8; 16];
    let heard = with_ring(dir.path(), move |ring, heard| {
        Box::pin(async move {
            assert_eq!(outcome(ring.start(4, 1).await), Ok(Started::Fresh));
            for seq in 1..=3u64 {
                let (h, bytes) = batch(10 * seq as i64, 4);
                ring.append(4, seq, topic, 0, claimed(&h), bytes).unwrap();
            }
            settle(&ring, 3).await;
            // Refused, nothing appended: a gap, a repeat, a stale epoch, a damaged batch, a
            // batch of another epoch than its stream's.
            let (h, bytes) = batch(40, 4);
            for (epoch, seq) in [(4, 5), (4, 3), (3, 4)] {
                assert!(matches!(
                    ring.append(epoch, seq, topic, 0, claimed(&h), bytes.clone()),
                    Err(AppendError::Refused(_))
                ));
            }
            let mut damaged = bytes.to_vec();
            let n = damaged.len();
            damaged[n - 1] ^= 0x10;
            assert!(matches!(
                ring.append(4, 4, topic, 0, claimed(&h), Bytes::from(damaged)),
                Err(AppendError::Refused(Refusal::Batch(_)))
            ));
            let (h5, bytes5) = batch(40, 5);
            assert!(matches!(
                ring.append(4, 4, topic, 0, claimed(&h5), bytes5),
                Err(AppendError::Refused(Refusal::Batch(_)))
            ));
            assert_eq!(ring.durable_seq(), 3);
            let heard = heard.borrow().clone();
            heard
        })
    });
    assert_eq!(heard.last(), Some(&(4, 3)), "{heard:?}");
    // After a restart: the stream resumes after what is durable here.
    let resumed = with_ring(dir.path(), |ring, _| {
        Box::pin(async move {
            let stale = outcome(ring.start(3, 1).await);
            let resumed = outcome(ring.start(4, 2).await);
            (ring.epoch(), ring.durable_seq(), stale, resumed)
        })
    });
    assert_eq!(
        resumed,
        (
            4,
            3,
            Err(Some(Refusal::StaleEpoch { epoch: 3, known: 4 })),
            Ok(Started::Resume { next_seq: 4 })
        )
    );
}

#[test]
fn a_new_epoch_is_remembered_and_discards_the_old_ones_entries() {
    let dir = tempfile::tempdir().unwrap();
    let topic = [7u8; 16];
    let used = with_ring(dir.path(), move |ring, _| {
        Box::pin(async move {
            ring.start(4, 1).await.unwrap();
            for seq in 1..=3u64 {
                let (h, bytes) = batch(seq as i64 * 2, 4);
                ring.append(4, seq, topic, 0, claimed(&h), bytes).unwrap();
            }
            settle(&ring, 3).await;
            let before = ring.used_bytes();
            // A new owner: epoch 6, nothing appended yet.
            assert_eq!(outcome(ring.start(6, 1).await), Ok(Started::Fresh));
            (before, ring.used_bytes())
        })
    });
    assert!(
        used.0 > 0 && used.1 == 0,
        "the old epoch's entries went: {used:?}"
    );
    assert_eq!(
        read_epoch(&dir.path().join(crate::layout::replica_epoch(3))),
        Ok(6)
    );
    // A restart with no entry of epoch 6 left still refuses epoch 4's owner.
    let after = with_ring(dir.path(), |ring, _| {
        Box::pin(async move {
            let stale = outcome(ring.start(4, 4).await);
            let resumed = outcome(ring.start(6, 9).await);
            (ring.epoch(), stale, resumed)
        })
    });
    assert_eq!(
        after,
        (
            6,
            Err(Some(Refusal::StaleEpoch { epoch: 4, known: 6 })),
            Ok(Started::Resume { next_seq: 9 })
        )
    );
}

#[test]
fn committed_entries_are_trimmed_and_a_frozen_slot_takes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let topic = [7u8; 16];
    let out = with_ring(dir.path(), move |ring, _| {
        Box::pin(async move {
            ring.start(2, 1).await.unwrap();
            for seq in 1..=4u64 {
                let (h, bytes) = batch(seq as i64 * 2, 2);
                ring.append(2, seq, topic, 1, claimed(&h), bytes).unwrap();
            }
            settle(&ring, 4).await;
            let full = ring.used_bytes();
            ring.committed(1, 4); // another epoch's commit: ignored
            let ignored = ring.used_bytes();
            ring.committed(2, 4);
            let trimmed = ring.used_bytes();
            ring.freeze(3).await.unwrap();
            let (h, bytes) = batch(10, 2);
            let refused = match ring.append(2, 5, topic, 1, claimed(&h), bytes) {
                Err(AppendError::Refused(r)) => Some(r),
                _ => None,
            };
            (full, ignored, trimmed, refused)
        })
    });
    assert!(out.0 > 0 && out.1 == out.0 && out.2 == 0, "{out:?}");
    assert_eq!(out.3, Some(Refusal::Frozen));
    assert_eq!(
        read_epoch(&dir.path().join(crate::layout::replica_epoch(3))),
        Ok(3),
        "the take-over's epoch is recorded"
    );
}

#[test]
fn a_damaged_epoch_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.epoch");
    assert_eq!(read_epoch(&path), Ok(0));
    write_epoch(&path, 77).unwrap();
    assert_eq!(read_epoch(&path), Ok(77));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(read_epoch(&path).unwrap_err().contains("checksum"));
    std::fs::write(&path, b"short").unwrap();
    assert!(read_epoch(&path).is_err());
}

/// A successor reads back, once frozen, the durable stream of the epoch it replaces that is not
/// committed: in order, as the batches were sent.
#[test]
fn a_frozen_ring_gives_back_its_uncommitted_tail() {
    let dir = tempfile::tempdir().unwrap();
    let topic = [7u8; 16];
    let path = config(dir.path()).path;
    let (early, tail, sent) = with_ring(dir.path(), move |ring, _| {
        Box::pin(async move {
            ring.start(5, 1).await.unwrap();
            let mut sent = Vec::new();
            for seq in 1..=6u64 {
                let (h, bytes) = batch(seq as i64 * 2, 5);
                ring.append(5, seq, topic, (seq % 2) as i32, claimed(&h), bytes.clone())
                    .unwrap();
                sent.push((seq, (seq % 2) as i32, bytes));
            }
            settle(&ring, 6).await;
            ring.committed(5, 2);
            let early = ring.tail(&path).await.is_err();
            ring.freeze(6).await.unwrap();
            let tail = ring.tail(&path).await.unwrap();
            (early, tail, sent)
        })
    });
    assert!(early, "an unfrozen ring is not read back");
    // Entries 1 and 2 are committed (and may or may not be trimmed yet): not in the tail.
    let expected: Vec<TailEntry> = sent
        .into_iter()
        .filter(|(seq, _, _)| *seq > 2)
        .map(|(seq, partition, bytes)| TailEntry {
            topic_id: topic,
            partition,
            seq,
            bytes,
        })
        .collect();
    assert_eq!(tail, expected);
}
