//! The ring writer on a real file with O_DIRECT through io_uring.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use ringtail_wal::format::EntryMeta;
use ringtail_wal::{create_or_check, recover, SyncMode, Wal, WalConfig, WalError};

fn config(
    dir: &std::path::Path,
    region_bytes: u64,
    chunk_bytes_max: u32,
    sync: SyncMode,
) -> WalConfig {
    WalConfig {
        path: dir.join("ring.wal"),
        region_bytes,
        chunk_bytes_max,
        max_delay: Duration::ZERO,
        sync,
    }
}

fn meta(i: u64) -> EntryMeta {
    EntryMeta {
        stream_id: [9; 16],
        stream_index: (i % 3) as i32,
        base_offset: i as i64,
        record_count: 1,
        leader_epoch: 0,
    }
}

fn payload(i: u64) -> Bytes {
    Bytes::from(
        (0..(100 + (i * 37) % 3000))
            .map(|j| (i + j) as u8)
            .collect::<Vec<u8>>(),
    )
}

#[test]
fn concurrent_appends_group_commit_in_order_and_recover() {
    for sync in [SyncMode::Fdatasync, SyncMode::ODsync] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 8 << 20, 256 << 10, sync);
        create_or_check(&cfg).unwrap();
        let cfg2 = cfg.clone();
        let (durable, writes) = ringtail_shards::block_on(1 << 20, move || async move {
            let recovery = recover(&cfg2.path).unwrap();
            assert!(recovery.entries.is_empty());
            let seen = Rc::new(RefCell::new(Vec::new()));
            let sink = seen.clone();
            let wal: Wal<u64> = Wal::open(&cfg2, &recovery, Vec::new(), move |tags: &[u64]| {
                sink.borrow_mut().extend_from_slice(tags)
            })
            .await
            .unwrap();
            let tickets: Vec<_> = (0..500u64)
                .map(|i| wal.append(meta(i), payload(i), i).unwrap())
                .collect();
            for t in tickets {
                t.await.unwrap().unwrap();
            }
            let seen = seen.borrow().clone();
            (seen, wal.stats().writes)
        })
        .unwrap();
        assert_eq!(
            durable,
            (0..500).collect::<Vec<_>>(),
            "{sync:?}: on_durable sees entries in append order"
        );
        assert!(
            writes < 500,
            "{sync:?}: appends queued during a write share the next one ({writes} writes)"
        );
        let recovery = recover(&cfg.path).unwrap();
        assert_eq!(recovery.entries.len(), 500);
        for (i, (h, p)) in recovery.entries.iter().enumerate() {
            assert_eq!((h.meta, p.clone()), (meta(i as u64), payload(i as u64)));
        }
    }
}

#[test]
fn full_ring_refuses_then_trim_frees_space_across_many_laps() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2 << 20, 64 << 10, SyncMode::Fdatasync);
    create_or_check(&cfg).unwrap();
    let cfg2 = cfg.clone();
    let (last, superblocks) = ringtail_shards::block_on(1 << 20, move || async move {
        let recovery = recover(&cfg2.path).unwrap();
        let wal: Wal<u64> = Wal::open(&cfg2, &recovery, Vec::new(), |_: &[u64]| {})
            .await
            .unwrap();
        let mut i = 0u64;
        // Fill until the ring refuses.
        loop {
            match wal.append(meta(i), payload(i), i) {
                Ok(t) => t.await.unwrap().unwrap(),
                Err(WalError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
            i += 1;
        }
        assert!(wal.used_bytes() > wal.ring_bytes() / 2);
        // Keep going for ten laps, trimming everything but the newest 100 entries.
        let target = i * 10;
        while i < target {
            let keep_from = i.saturating_sub(100);
            wal.trim(|&t| t < keep_from);
            wal.append(meta(i), payload(i), i)
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            i += 1;
        }
        (i - 1, wal.stats().superblock_writes)
    })
    .unwrap();
    assert!(
        superblocks > 0,
        "space was reclaimed through durable superblock updates"
    );
    let recovery = recover(&cfg.path).unwrap();
    let last_entry = recovery.entries.last().unwrap();
    assert_eq!(last_entry.0.meta, meta(last));
    assert!(recovery.entries.len() >= 100);
    let first = recovery.entries[0].0.meta.base_offset as u64;
    for (k, (h, p)) in recovery.entries.iter().enumerate() {
        assert_eq!(
            (h.meta, p.clone()),
            (meta(first + k as u64), payload(first + k as u64)),
            "recovered entries are contiguous and intact"
        );
    }
}

#[test]
fn size_changes_and_oversize_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2 << 20, 64 << 10, SyncMode::Fdatasync);
    create_or_check(&cfg).unwrap();
    let bigger = WalConfig {
        region_bytes: 4 << 20,
        ..cfg.clone()
    };
    let err = create_or_check(&bigger).unwrap_err().to_string();
    assert!(err.contains("never changes size"), "{err}");
    let tiny = WalConfig {
        region_bytes: 64 << 10,
        path: dir.path().join("t.wal"),
        ..cfg.clone()
    };
    assert!(create_or_check(&tiny).is_err());
    let cfg2 = cfg.clone();
    ringtail_shards::block_on(1 << 20, move || async move {
        let recovery = recover(&cfg2.path).unwrap();
        let wal: Wal<u64> = Wal::open(&cfg2, &recovery, Vec::new(), |_: &[u64]| {})
            .await
            .unwrap();
        let big = Bytes::from(vec![0u8; 64 << 10]);
        assert!(matches!(
            wal.append(meta(0), big, 0),
            Err(WalError::TooLarge(_))
        ));
    })
    .unwrap();
}

#[test]
fn raising_the_max_write_size_keeps_larger_writes_recoverable() {
    let dir = tempfile::tempdir().unwrap();
    let small = config(dir.path(), 4 << 20, 64 << 10, SyncMode::Fdatasync);
    create_or_check(&small).unwrap();
    let big = WalConfig {
        chunk_bytes_max: 512 << 10,
        ..small.clone()
    };
    let cfg = big.clone();
    ringtail_shards::block_on(1 << 20, move || async move {
        let recovery = recover(&cfg.path).unwrap();
        let wal: Wal<u64> = Wal::open(&cfg, &recovery, Vec::new(), |_: &[u64]| {})
            .await
            .unwrap();
        let payload = Bytes::from(vec![3u8; 300 << 10]); // larger than the old 64 KiB max
        wal.append(meta(0), payload, 0)
            .unwrap()
            .await
            .unwrap()
            .unwrap();
    })
    .unwrap();
    let recovery = recover(&big.path).unwrap();
    assert_eq!(
        recovery.entries.len(),
        1,
        "the 300 KiB write is found after restart"
    );
    assert_eq!(recovery.superblock.chunk_bytes_max, 512 << 10);
}

/// One entry that fills a whole chunk of `max` bytes.
fn chunk_sized(i: u64, max: usize) -> Bytes {
    Bytes::from(vec![i as u8; max - 128])
}

/// A trim that lands while a superblock write is in flight must stay pending until a later
/// superblock records it: the space it frees is still what the durable superblock points to.
/// (The writer used to forget such trims once its superblock write completed, then wrote over
/// the chunk at the durable trim point; recovery refused the ring as corrupt in the middle.)
#[test]
fn trim_during_a_superblock_write_never_frees_what_the_durable_superblock_points_to() {
    use futures::future::{select, Either};
    let max = 64usize << 10;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, max as u32, SyncMode::Fdatasync);
    create_or_check(&cfg).unwrap();
    let cfg2 = cfg.clone();
    let (last, held_at) = ringtail_shards::block_on(1 << 20, move || async move {
        let recovery = recover(&cfg2.path).unwrap();
        let wal: Wal<u64> = Wal::open(&cfg2, &recovery, Vec::new(), |_: &[u64]| {})
            .await
            .unwrap();
        let mut i = 0u64;
        loop {
            match wal.append(meta(i), chunk_sized(i, max), i) {
                Ok(t) => t.await.unwrap().unwrap(),
                Err(WalError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
            i += 1;
        }
        assert_eq!(wal.stats().superblock_writes, 0);
        // Free the four oldest chunks: the next superblock write records chunk 4 as the trim
        // point. Append until a write needs it; the hold stops it once it is durable.
        wal.trim(|&t| t < 4);
        let (mut reached, release) = wal.hold_next_superblock_write();
        let held = loop {
            let ticket = wal.append(meta(i), chunk_sized(i, max), i).unwrap();
            i += 1;
            match select(ticket, &mut reached).await {
                Either::Left((written, _)) => written.unwrap().unwrap(),
                Either::Right((r, ticket)) => {
                    r.unwrap();
                    break ticket;
                }
            }
        };
        let held_at = i - 1;
        // The superblock pointing at chunk 4 is on disk but not recorded: trim everything.
        wal.trim(|&t| t < held_at);
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        // Write until the ring is full again, without trimming: no write may land on chunk 4
        // until a new superblock has moved the trim point past it.
        loop {
            match wal.append(meta(i), chunk_sized(i, max), i) {
                Ok(t) => t.await.unwrap().unwrap(),
                Err(WalError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
            i += 1;
        }
        (i - 1, held_at)
    })
    .unwrap();
    // A crash now: recovery reads from the durable superblock's trim point.
    let recovery = recover(&cfg.path).unwrap();
    let first = recovery.entries[0].0.meta.base_offset as u64;
    assert!(first <= held_at, "entries from {first} recovered");
    assert_eq!(recovery.entries.len() as u64, last - first + 1);
    for (k, (h, p)) in recovery.entries.iter().enumerate() {
        let i = first + k as u64;
        assert_eq!((h.meta, p.clone()), (meta(i), chunk_sized(i, max)));
    }
}

/// Each recovered chunk with its entries' tags (the entry's base offset, as `meta` sets it).
fn live_tags(recovery: &ringtail_wal::Recovery) -> Vec<(ringtail_wal::scan::ChunkRef, Vec<u64>)> {
    let mut entries = recovery.entries.iter();
    recovery
        .chunks
        .iter()
        .map(|c| {
            let tags = entries
                .by_ref()
                .take(c.entry_count as usize)
                .map(|(h, _)| h.meta.base_offset as u64)
                .collect();
            (*c, tags)
        })
        .collect()
}

/// Lowering `--wal-max-write-bytes` while larger chunks are live must not hide them from
/// recovery: the superblock keeps the largest live chunk size until those chunks are trimmed.
#[test]
fn lowering_the_max_write_size_keeps_larger_live_writes_recoverable() {
    let dir = tempfile::tempdir().unwrap();
    let big = config(dir.path(), 4 << 20, 512 << 10, SyncMode::Fdatasync);
    create_or_check(&big).unwrap();
    let small = WalConfig {
        chunk_bytes_max: 64 << 10,
        ..big.clone()
    };
    let large = |i: u64| Bytes::from(vec![i as u8; 300 << 10]);
    let payload_of = move |i: u64| if i < 3 { large(i) } else { payload(i) };
    let cfg = big.clone();
    ringtail_shards::block_on(1 << 20, move || async move {
        let recovery = recover(&cfg.path).unwrap();
        let wal: Wal<u64> = Wal::open(&cfg, &recovery, Vec::new(), |_: &[u64]| {})
            .await
            .unwrap();
        for i in 0..3 {
            wal.append(meta(i), large(i), i)
                .unwrap()
                .await
                .unwrap()
                .unwrap();
        }
    })
    .unwrap();
    // Restart with a smaller maximum and write small entries after the large ones.
    let cfg = small.clone();
    ringtail_shards::block_on(1 << 20, move || async move {
        let recovery = recover(&cfg.path).unwrap();
        assert_eq!(recovery.entries.len(), 3);
        let live = live_tags(&recovery);
        let wal: Wal<u64> = Wal::open(&cfg, &recovery, live, |_: &[u64]| {})
            .await
            .unwrap();
        for i in 3..8 {
            wal.append(meta(i), payload(i), i)
                .unwrap()
                .await
                .unwrap()
                .unwrap();
        }
    })
    .unwrap();
    let recovery = recover(&small.path).unwrap();
    assert_eq!(
        recovery.entries.len(),
        8,
        "the three 300 KiB entries and the five after them are found after the second restart"
    );
    for (i, (h, p)) in recovery.entries.iter().enumerate() {
        assert_eq!((h.meta, p.clone()), (meta(i as u64), payload_of(i as u64)));
    }
    let largest = recovery.chunks.iter().map(|c| c.len).max().unwrap();
    assert!(largest > 64 << 10);
    assert_eq!(recovery.superblock.chunk_bytes_max as u64, largest);
    // Once the large chunks are trimmed, the next superblock goes back to the configured max.
    let cfg = small.clone();
    let (superblocks, i) = ringtail_shards::block_on(1 << 20, move || async move {
        let recovery = recover(&cfg.path).unwrap();
        let live = live_tags(&recovery);
        let wal: Wal<u64> = Wal::open(&cfg, &recovery, live, |_: &[u64]| {})
            .await
            .unwrap();
        wal.trim(|&t| t < 3);
        let mut i = 8;
        while wal.stats().superblock_writes == 0 {
            assert!(i < 1000, "a superblock write within a lap");
            wal.append(meta(i), chunk_sized(i, 64 << 10), i)
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            i += 1;
        }
        (wal.stats().superblock_writes, i)
    })
    .unwrap();
    assert_eq!(superblocks, 1);
    let recovery = recover(&small.path).unwrap();
    assert_eq!(recovery.superblock.chunk_bytes_max, 64 << 10);
    assert_eq!(
        recovery.entries.len() as u64,
        i - 3,
        "everything after the trim"
    );
}
