//! Where a take-over's replica copy begins in each partition (R4): the line at which this
//! broker's own WAL replay gives way to the copy.

use std::collections::HashMap;

use ringtail_netio::header::BatchHeader;
use uuid::Uuid;

use crate::partition::items::PartitionKey;
use crate::replication::ring::TailEntry;

/// Where a replica copy's tail begins in each partition: (first offset, its leader epoch).
///
/// A take-over's replay of this broker's own WAL gives way to it: an own batch from that offset
/// on, of an older owner than the copy's, was never acknowledged (the copy's owner, which came
/// after, wrote those offsets anew: its stream starts where the bucket and its own recovery left
/// the log), so it is dropped as superseded and the copy is re-appended in its place.
#[derive(Debug, Default)]
pub struct CopyStarts(HashMap<PartitionKey, (i64, i32)>);

impl CopyStarts {
    /// The starts of `tail` (entries that do not parse are left to the re-append to refuse).
    pub fn of(tail: &[TailEntry]) -> Self {
        let mut starts = HashMap::new();
        for e in tail {
            let Ok(header) = BatchHeader::parse(&e.bytes) else {
                continue;
            };
            let key = PartitionKey {
                topic_id: Uuid::from_bytes(e.topic_id),
                partition: e.partition,
            };
            starts
                .entry(key)
                .or_insert((header.base_offset, header.partition_leader_epoch));
        }
        CopyStarts(starts)
    }

    /// Whether this broker's own batch `header` of `key` gives way to the copy.
    pub fn supersedes(&self, key: &PartitionKey, header: &BatchHeader) -> bool {
        self.0.get(key).is_some_and(|&(offset, epoch)| {
            header.last_offset() >= offset && header.partition_leader_epoch < epoch
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A batch header's bytes: offsets `base..=last`, written at leader epoch `epoch`.
    fn header(base: i64, last: i64, epoch: i32) -> Bytes {
        let mut b = vec![0u8; ringtail_netio::header::BATCH_HEADER_LEN];
        b[0..8].copy_from_slice(&base.to_be_bytes());
        b[12..16].copy_from_slice(&epoch.to_be_bytes());
        b[23..27].copy_from_slice(&((last - base) as i32).to_be_bytes());
        Bytes::from(b)
    }

    fn entry(partition: i32, base: i64, last: i64, epoch: i32) -> TailEntry {
        TailEntry {
            topic_id: [7; 16],
            partition,
            seq: base as u64,
            bytes: header(base, last, epoch),
        }
    }

    #[test]
    fn own_batches_of_older_owners_give_way_where_the_copy_begins() {
        let copies = CopyStarts::of(&[entry(0, 5, 6, 4), entry(0, 7, 9, 4), entry(1, 3, 3, 4)]);
        let key = |partition| PartitionKey {
            topic_id: Uuid::from_bytes([7; 16]),
            partition,
        };
        let own = |base, last, epoch| BatchHeader::parse(&header(base, last, epoch)).unwrap();
        // Below the copy: the log the copy's owner continued.
        assert!(!copies.supersedes(&key(0), &own(3, 4, 2)));
        // At or across its start, by an older owner: written anew by the copy's owner.
        assert!(copies.supersedes(&key(0), &own(5, 5, 2)));
        assert!(copies.supersedes(&key(0), &own(4, 6, 2)));
        // By the copy's owner or a later one: the copy is the stale side (the re-append stops).
        assert!(!copies.supersedes(&key(0), &own(5, 6, 4)));
        assert!(!copies.supersedes(&key(0), &own(5, 6, 5)));
        // Another partition has a copy of its own; one without a copy keeps its batches.
        assert!(copies.supersedes(&key(1), &own(3, 3, 1)));
        assert!(!copies.supersedes(&key(2), &own(0, 9, 1)));
    }
}
