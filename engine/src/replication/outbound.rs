//! An owner's streams of one slot to its followers (ARCHITECTURE.md, "Replicated WAL", R1–R3):
//! the numbering and the ISR ([`Streams`]) and a [`Link`] per follower. The slot's partitions
//! hand it each batch of a replicated topic as they append it, ask whether a batch is on the
//! followers it must be on, say when batches are in the bucket (the followers may trim them),
//! and move followers in and out of the ISR by the rules in `partition/replicated.rs`.

use std::cell::{Ref, RefCell};
use std::rc::Rc;

use bytes::Bytes;

use crate::replication::link::{Batch, Link, LinkConfig};
use crate::replication::owner::{Sent, Streams};

/// Who streams, and how much a follower may lag in bytes before its link restarts.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    pub cluster_id: String,
    pub node: i32,
    pub slot: u32,
    pub epoch: u64,
    pub unacked_bytes_max: u64,
}

/// A follower: its node id and its replication listener for the slot.
#[derive(Debug, Clone)]
pub struct Follower {
    pub node: i32,
    pub addr: String,
}

/// One batch as the partitions append it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub base_offset: i64,
    pub record_count: i32,
    pub leader_epoch: i32,
    pub bytes: Bytes,
}

/// The slot's streams; dropping it stops every link.
pub struct Outbound {
    config: OutboundConfig,
    streams: Rc<RefCell<Streams>>,
    /// One per stream, same index.
    links: RefCell<Vec<Link>>,
    on_acked: Rc<dyn Fn()>,
}

impl Outbound {
    /// Opens a link to each follower (placement order), all in sync (they hold nothing of this
    /// epoch); `on_acked` hears each time a follower has more durable.
    pub fn open(
        config: OutboundConfig,
        followers: &[Follower],
        on_acked: impl Fn() + 'static,
    ) -> Outbound {
        let nodes: Vec<i32> = followers.iter().map(|f| f.node).collect();
        let out = Outbound {
            config,
            streams: Rc::new(RefCell::new(Streams::new(&nodes))),
            links: RefCell::new(Vec::new()),
            on_acked: Rc::new(on_acked),
        };
        for f in followers {
            out.open_link(&f.addr);
        }
        out
    }

    fn open_link(&self, addr: &str) {
        let i = self.links.borrow().len();
        let (streams, on_acked) = (self.streams.clone(), self.on_acked.clone());
        let link = Link::open(
            LinkConfig {
                cluster_id: self.config.cluster_id.clone(),
                node: self.config.node,
                slot: self.config.slot,
                epoch: self.config.epoch,
                addr: addr.to_string(),
                unacked_bytes_max: self.config.unacked_bytes_max,
            },
            move |seq| {
                streams.borrow_mut().acked(i, seq);
                on_acked();
            },
        );
        self.links.borrow_mut().push(link);
    }

    /// Placement's followers now (`mark`: the slot's count of batches sent so far): new ones
    /// get a stream and a link, out of the ISR (see [`Streams::place`]).
    pub fn place(&self, followers: &[Follower], mark: u64) {
        let nodes: Vec<i32> = followers.iter().map(|f| f.node).collect();
        let in_sync = |streams: &Streams| -> Vec<i32> {
            streams
                .streams()
                .iter()
                .filter(|s| s.in_sync)
                .map(|s| s.node)
                .collect()
        };
        let before = in_sync(&self.streams.borrow());
        let added = self.streams.borrow_mut().place(&nodes, mark);
        let after = in_sync(&self.streams.borrow());
        for node in before.iter().filter(|n| !after.contains(n)) {
            tracing::warn!(
                slot = self.config.slot,
                follower = node,
                "follower left the ISR: it is no longer a live follower (its lease lapsed)"
            );
        }
        for i in added {
            let node = self.streams.borrow().streams()[i].node;
            let addr = &followers
                .iter()
                .find(|f| f.node == node)
                .expect("placed")
                .addr;
            tracing::info!(
                slot = self.config.slot,
                follower = node,
                "new follower: streaming to it, out of the ISR until it has caught up"
            );
            self.open_link(addr);
        }
    }

    pub fn slot(&self) -> u32 {
        self.config.slot
    }

    pub fn streams(&self) -> Ref<'_, Streams> {
        self.streams.borrow()
    }

    /// Follower `index` joins or leaves the ISR (see [`Streams::set_in_sync`]).
    pub fn set_in_sync(&self, index: usize, in_sync: bool, join_mark: u64) {
        self.streams
            .borrow_mut()
            .set_in_sync(index, in_sync, join_mark);
    }

    /// Whether a produce to a topic of `factor` and `min_insync` may be appended (else Kafka's
    /// NOT_ENOUGH_REPLICAS, before anything is written).
    pub fn may_append(&self, factor: usize, min_insync: usize) -> bool {
        self.streams.borrow().may_append(factor, min_insync)
    }

    /// Numbers `batch` on the streams of its topic's followers and queues it on their links.
    /// Returns the numbers, and the streams whose link refused it (the follower lags by more
    /// than its link holds): those links start again after it, and the follower lacks it.
    pub fn send(&self, factor: usize, batch: Outgoing) -> (Sent, Vec<usize>) {
        let sent = self.streams.borrow_mut().send(factor);
        let links = self.links.borrow();
        let mut refused = Vec::new();
        for &(i, seq) in &sent.seqs {
            let queued = links[i].push(Batch {
                seq,
                topic_id: batch.topic_id,
                partition: batch.partition,
                base_offset: batch.base_offset,
                record_count: batch.record_count,
                leader_epoch: batch.leader_epoch,
                bytes: batch.bytes.clone(),
            });
            if !queued {
                links[i].restart_at(seq + 1);
                refused.push(i);
            }
        }
        (sent, refused)
    }

    /// Whether `sent` is on every in-sync follower it went to (the high watermark may pass it).
    pub fn on_in_sync(&self, sent: &Sent) -> bool {
        self.streams.borrow().on_in_sync(sent)
    }

    /// In-sync copies a topic of `factor` has, the owner's included.
    pub fn in_sync_copies(&self, factor: usize) -> usize {
        self.streams.borrow().in_sync_copies(factor)
    }

    /// Everything up to each follower's sequence in `upto` is in the bucket.
    pub fn committed(&self, upto: &Sent) {
        let links = self.links.borrow();
        for &(i, seq) in &upto.seqs {
            links[i].committed(seq);
        }
    }

    /// The follower's last refusal or connection failure, if any since its last acknowledgement.
    pub fn last_error(&self, index: usize) -> Option<String> {
        self.links.borrow().get(index).and_then(Link::last_error)
    }
}
