//! One partition as its slot holds it: its batches in memory, offsets, long-poll waiters,
//! cold spans in objects, and its idempotent producers; and the slot's queue of batches sent to
//! followers.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;

use crate::catalog::TopicMeta;
use crate::partition::epochs::EpochStarts;
use crate::partition::items::PartitionKey;
use crate::partition::log::{MemLog, PartitionLog};
use crate::partition::producers::Producers;
use crate::replication::owner::Sent;
use crate::tier::object_format::Span;

pub(super) type Waiter = Rc<RefCell<Option<oneshot::Sender<()>>>>;

pub(super) struct Partition {
    /// The batches in the WAL ring (not yet uploaded, or not yet evicted).
    pub(super) log: MemLog,
    /// Offset the next produced record gets; ahead of the log end while writes are in flight.
    pub(super) next_offset: i64,
    pub(super) topic: Arc<TopicMeta>,
    pub(super) waiters: Vec<Waiter>,
    /// Committed objects holding older batches: span base offset -> (object key, span).
    pub(super) cold: BTreeMap<i64, (Arc<str>, Span)>,
    /// Offsets below this are in committed objects (0 without an object tier).
    pub(super) uploaded_end: i64,
    /// Produces of `durability=object` topics waiting for an offset to be in a committed object.
    pub(super) upload_waiters: Vec<(i64, oneshot::Sender<()>)>,
    /// Records below this were deleted (DeleteRecords, retention); committed to the manifest
    /// when there is an object tier. It may fall inside a batch, as in Kafka.
    pub(super) deleted_below: i64,
    /// DeleteRecords asked for this, waiting for the manifest commit.
    pub(super) delete_requested: i64,
    /// DeleteRecords calls waiting for `deleted_below` to reach their offset.
    pub(super) delete_waiters: Vec<(i64, oneshot::Sender<()>)>,
    /// Idempotent producers' recent batches (dedupe, ordering, fencing).
    pub(super) producers: Producers,
    /// The highest log start reported (see [`Partition::log_start`]).
    pub(super) log_start_floor: Cell<i64>,
    /// Where each leader epoch's batches start.
    pub(super) epochs: EpochStarts,
    /// Batches sent to followers whose in-sync copies are not all durable yet (a replicated
    /// topic), and the first offset of the oldest of them (`i64::MAX`: none). The high
    /// watermark stays below it (see [`Partition::log_end`]).
    pub(super) awaiting_replicas: usize,
    pub(super) replicated_end: i64,
}

impl Partition {
    /// The first offset held. Invariant: it never decreases while the broker runs — once an
    /// offset was reported out of range it is never served again (asserted in debug builds;
    /// `log_start_floor` holds it in release builds).
    pub(super) fn log_start(&self) -> i64 {
        let hot = self.log.log_start_offset();
        let stored = self.cold.keys().next().map_or(hot, |&cold| cold.min(hot));
        let start = stored.max(self.deleted_below);
        let floor = self.log_start_floor.get();
        debug_assert!(
            start >= floor,
            "the log start of {}/{} went back from {floor} to {start}",
            self.topic.name,
            self.log.log_end_offset()
        );
        let start = start.max(floor);
        self.log_start_floor.set(start);
        start
    }

    /// Records below `offset` are gone: memory lets them go and the waiting deletes answer.
    pub(super) fn delete_below(&mut self, offset: i64) {
        self.deleted_below = self.deleted_below.max(offset);
        self.log.evict_below(self.deleted_below);
        self.producers.trim(self.deleted_below);
        self.epochs.trim_below(self.deleted_below);
        let below = self.deleted_below;
        for (_, tx) in self.delete_waiters.extract_if(.., |(o, _)| *o <= below) {
            let _ = tx.send(());
        }
    }

    /// The high watermark: durable here, and on every in-sync follower if the topic is
    /// replicated (as Kafka's is the ISR's) — or in the bucket.
    pub(super) fn log_end(&self) -> i64 {
        self.log
            .log_end_offset()
            .min(self.replicated_end)
            .max(self.uploaded_end)
    }

    /// The end of what is durable here (the WAL) or in the bucket.
    pub(super) fn durable_end(&self) -> i64 {
        self.log.log_end_offset().max(self.uploaded_end)
    }

    /// Bytes the partition holds: its spans in committed objects, plus what memory (the WAL)
    /// holds that is not in them yet. Batches kept in memory after their upload (the hot-tail
    /// cache) are counted once, as object bytes.
    pub(super) fn stored_bytes(&self) -> i64 {
        self.cold
            .values()
            .map(|(_, s)| s.byte_len as i64)
            .sum::<i64>()
            + self.log.bytes_from(self.uploaded_end) as i64
    }
}

impl Partition {
    pub(super) fn new(topic: Arc<TopicMeta>) -> Partition {
        Partition {
            log: MemLog::new(),
            next_offset: 0,
            topic,
            waiters: Vec::new(),
            cold: BTreeMap::new(),
            uploaded_end: 0,
            upload_waiters: Vec::new(),
            deleted_below: 0,
            delete_requested: 0,
            log_start_floor: Cell::new(0),
            delete_waiters: Vec::new(),
            producers: Producers::default(),
            epochs: EpochStarts::default(),
            awaiting_replicas: 0,
            replicated_end: i64::MAX,
        }
    }
}

pub(super) fn wake(waiters: impl Iterator<Item = Waiter>) {
    for w in waiters {
        if let Some(tx) = w.borrow_mut().take() {
            let _ = tx.send(());
        }
    }
}

/// A batch sent to followers (`replicated.rs`).
pub(super) struct Pending {
    pub(super) key: PartitionKey,
    pub(super) last_offset: i64,
    pub(super) sent: Sent,
}

/// The slot's batches sent to followers and not yet in the bucket, in append order; the first
/// `visible` are past their partitions' high watermarks (`replicated.rs`).
#[derive(Default)]
pub(super) struct SentQueue {
    pub(super) entries: VecDeque<Pending>,
    pub(super) visible: usize,
    /// Batches ever sent, and ever left (in the bucket): the marks of [`Stream::join_mark`].
    ///
    /// [`Stream::join_mark`]: crate::replication::owner::Stream::join_mark
    pub(super) pushed: u64,
    pub(super) popped: u64,
}
