//! Where Ringtail keeps things: the keys of the bucket and the files of a broker's data and
//! WAL directories. The one place the layout is spelled; everything else asks here.
//!
//! ```text
//! bucket                                             made by / changed by
//!   catalog.json                                     the controller (CAS on its ETag)
//!   cluster_id                                       the first broker, once
//!   cluster/slots                                    the first broker, once
//!   cluster/producer-ids                             brokers taking id blocks (CAS)
//!   cluster/brokers/{node}                           the broker's node lease
//!   cluster/brokers/{node}.drain                     `ringtail admin drain`
//!   shards/{slot:04}/manifest                        the slot's owner (CAS, epoch-fenced)
//!   shards/{slot:04}/objects/{epoch:010}-{n:020}.rto         the slot's merged objects
//!   shards/{slot:04}/log/{n:020}.rto                 the slot's uploads, numbered (create-only)
//! data directory: catalog.json, cluster_id
//! WAL directory:  shard-{slot}.wal (a slot's ring), spare-{shard}.wal (written ahead of a takeover)
//! ```

/// The slot (or shard) that holds a partition: deterministic, stable across restarts (by topic
/// name), and spreading a topic's partitions round-robin over the slots.
pub fn owner_shard(topic_name: &str, partition: i32, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic_name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((h % shards as u64) as usize + partition as usize) % shards
}

/// The topic catalog: a key of the bucket and a file of the data directory.
pub const CATALOG: &str = "catalog.json";
/// The cluster id: a key of the bucket and a file of the data directory.
pub const CLUSTER_ID: &str = "cluster_id";
/// The bucket's slot count.
pub const SLOTS: &str = "cluster/slots";
/// The next free producer id block.
pub const PRODUCER_IDS: &str = "cluster/producer-ids";
/// Where node leases and drain requests live.
pub const BROKERS: &str = "cluster/brokers/";
/// Where the slots' manifests and objects live.
pub const SLOTS_DIR: &str = "shards/";

const DRAIN_SUFFIX: &str = ".drain";

/// Node `node_id`'s lease.
pub fn lease(node_id: i32) -> String {
    format!("{BROKERS}{node_id}")
}

/// A request that node `node_id` hand its slots over and stop.
pub fn drain(node_id: i32) -> String {
    format!("{BROKERS}{node_id}{DRAIN_SUFFIX}")
}

/// Whether a key under [`BROKERS`] is a drain request (not a lease).
pub fn is_drain(key: &str) -> bool {
    key.ends_with(DRAIN_SUFFIX)
}

/// A slot's manifest.
pub fn manifest(slot: u32) -> String {
    format!("{SLOTS_DIR}{slot:04}/manifest")
}

/// The slot whose manifest `key` is (None: not a manifest key).
pub fn manifest_slot(key: &str) -> Option<u32> {
    key.strip_prefix(SLOTS_DIR)?
        .strip_suffix("/manifest")?
        .parse()
        .ok()
}

/// Where a slot's objects live.
pub fn objects(slot: u32) -> String {
    format!("{SLOTS_DIR}{slot:04}/objects/")
}

/// The `number`th object a slot's owner writes under `epoch` (an upload or a merge; numbers are
/// never reused within an epoch). Keys sort by epoch, then by the order they were written in.
pub fn object(slot: u32, epoch: u64, number: u64) -> String {
    format!("{}{epoch:010}-{number:020}.rto", objects(slot))
}

/// The epoch an object was written under, from its key (None: not an object key of ours).
pub fn object_epoch(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?.strip_suffix(".rto")?;
    let (epoch, seq) = name.split_once('-')?;
    if epoch.len() != 10 || seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    epoch.parse().ok()
}

/// Where a slot's numbered uploads live (its log of objects; ARCHITECTURE.md, "One PUT per
/// acknowledgement").
pub fn log_objects(slot: u32) -> String {
    format!("{SLOTS_DIR}{slot:04}/log/")
}

/// The slot's `number`th upload (or the fence at that number). Keys sort by number; they carry
/// no epoch, so that every owner of the slot writes at the same numbers and the first wins.
pub fn log_object(slot: u32, number: u64) -> String {
    format!("{}{number:020}.rto", log_objects(slot))
}

/// The number of a log object, from its key (None: not a log object key).
pub fn log_number(key: &str) -> Option<u64> {
    let (dir, name) = key.rsplit_once('/')?;
    if !dir.ends_with("/log") {
        return None;
    }
    let n = name.strip_suffix(".rto")?;
    if n.len() != 20 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// A slot's WAL ring, in the WAL directory.
pub fn wal_ring(slot: u32) -> String {
    format!("shard-{slot}.wal")
}

/// A follower's replica ring of `slot` in the WAL directory (the replicated WAL, issue 19).
pub fn replica_ring(slot: u32) -> String {
    format!("replica-{slot}.wal")
}

/// The highest epoch a follower accepted for `slot`, next to its replica ring.
pub fn replica_epoch(slot: u32) -> String {
    format!("replica-{slot}.epoch")
}

/// The slot whose ring the WAL directory's file `name` is (None: not a ring).
pub fn wal_ring_slot(name: &str) -> Option<u32> {
    name.strip_prefix("shard-")?
        .strip_suffix(".wal")?
        .parse()
        .ok()
}

/// A shard's spare ring, in the WAL directory.
pub fn spare_ring(shard: usize) -> String {
    format!("spare-{shard}.wal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_name_their_number_and_sort_by_it() {
        let key = log_object(3, 7);
        assert_eq!(key, "shards/0003/log/00000000000000000007.rto");
        assert!(key.starts_with(&log_objects(3)));
        assert!(log_object(3, 9) < log_object(3, 10));
        assert_eq!(log_number(&key), Some(7));
        assert_eq!(object_epoch(&key), None, "not a merged object's key");
        for other in [
            "shards/0003/manifest",
            "shards/0003/log/7.rto",
            "shards/0003/objects/00000000000000000007.rto",
            "shards/0003/log/0000000000000000000x.rto",
            &object(3, 1, 7),
        ] {
            assert_eq!(log_number(other), None, "{other}");
        }
    }

    #[test]
    fn object_keys_name_their_epoch_and_sort_by_epoch_then_wal_order() {
        let key = object(3, 42, 7);
        assert_eq!(
            key,
            "shards/0003/objects/0000000042-00000000000000000007.rto"
        );
        assert!(key.starts_with(&objects(3)));
        assert_eq!(object_epoch(&key), Some(42));
        for other in [
            "shards/0003/manifest",
            "shards/0003/objects/42-7.rto",
            "shards/0003/objects/0000000042-0000000000000000000x.rto",
            "shards/0003/objects/0000000042-00000000000000000007.tmp",
        ] {
            assert_eq!(object_epoch(other), None, "{other}");
        }
        assert!(object(1, 2, 99) < object(1, 2, 100));
        assert!(object(1, 2, u64::MAX) < object(1, 3, 0));
    }

    #[test]
    fn names_parse_back() {
        assert_eq!(manifest(7), "shards/0007/manifest");
        assert_eq!(manifest_slot(&manifest(7)), Some(7));
        assert_eq!(manifest_slot(&object(7, 1, 1)), None);
        assert_eq!(wal_ring_slot(&wal_ring(12)), Some(12));
        assert_eq!(wal_ring_slot(&spare_ring(0)), None);
        assert_eq!(
            (lease(4), drain(4)),
            ("cluster/brokers/4".into(), "cluster/brokers/4.drain".into())
        );
        assert!(is_drain(&drain(4)) && !is_drain(&lease(4)));
    }
}
