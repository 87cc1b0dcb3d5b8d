//! An owner's streams of one slot to its followers (ARCHITECTURE.md, "Replicated WAL", R1–R3):
//! the numbering and the ISR ([`Streams`]) and a [`Link`] per follower. The slot's partitions
//! hand it each batch of a replicated topic as they append it, ask whether a batch is on the
//! followers it must be on, say when batches are in the bucket (the followers may trim them),
//! and move followers in and out of the ISR by the rules in `partition/replicated.rs`.

use std::cell::{Ref, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

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
    /// One per stream, same index, with the address it streams to.
    links: RefCell<Vec<(Link, String)>>,
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
            streams: Rc::new(RefCell::new(Streams::new(&nodes, Instant::now()))),
            links: RefCell::new(Vec::new()),
            on_acked: Rc::new(on_acked),
        };
        for (i, f) in followers.iter().enumerate() {
            let link = out.link(i, &f.addr);
            out.links.borrow_mut().push((link, f.addr.clone()));
        }
        out
    }

    /// A link for stream `i` to `addr`.
    fn link(&self, i: usize, addr: &str) -> Link {
        let (streams, on_acked) = (self.streams.clone(), self.on_acked.clone());
        Link::open(
            LinkConfig {
                cluster_id: self.config.cluster_id.clone(),
                node: self.config.node,
                slot: self.config.slot,
                epoch: self.config.epoch,
                addr: addr.to_string(),
                unacked_bytes_max: self.config.unacked_bytes_max,
            },
            move |seq| {
                streams.borrow_mut().acked(i, seq, Instant::now());
                on_acked();
            },
        )
    }

    /// Placement's followers now (`mark`: the slot's count of batches sent so far): new ones
    /// get a stream and a link, out of the ISR (see [`Streams::place`]); one whose listener
    /// moved (it restarted elsewhere) gets a new link, restarted past what it was sent, and
    /// leaves the ISR. Returns whether a follower left the ISR.
    pub fn place(&self, followers: &[Follower], mark: u64) -> bool {
        let nodes: Vec<i32> = followers.iter().map(|f| f.node).collect();
        let (added, mut left) = self
            .streams
            .borrow_mut()
            .place(&nodes, mark, Instant::now());
        if left {
            tracing::warn!(slot = self.config.slot, followers = ?nodes, "a follower is leaving the ISR: it is no longer a live follower (its lease lapsed)");
        }
        for f in followers {
            let i = self.index_of(f.node).expect("placed");
            if added.contains(&i) {
                tracing::info!(
                    slot = self.config.slot,
                    follower = f.node,
                    "new follower: streaming to it, out of the ISR until it has caught up"
                );
                let link = self.link(i, &f.addr);
                self.links.borrow_mut().push((link, f.addr.clone()));
            } else if self.links.borrow()[i].1 != f.addr {
                // It restarted elsewhere: a new link, once it is out of the ISR.
                tracing::info!(slot = self.config.slot, follower = f.node, addr = %f.addr, "the follower's replication listener moved: streaming to it anew once it is out of the ISR");
                self.links.borrow_mut()[i].1 = f.addr.clone();
                left |= self.streams.borrow().streams()[i].counted();
                self.start_leaving(i, true, mark);
            }
        }
        left
    }

    fn index_of(&self, node: i32) -> Option<usize> {
        self.streams
            .borrow()
            .streams()
            .iter()
            .position(|s| s.node == node)
    }

    pub fn slot(&self) -> u32 {
        self.config.slot
    }

    pub fn streams(&self) -> Ref<'_, Streams> {
        self.streams.borrow()
    }

    /// Follower `index` joins the ISR (see [`Streams::join`]).
    pub fn join(&self, index: usize) {
        self.streams.borrow_mut().join(index, Instant::now());
    }

    /// Follower `index` starts leaving the ISR (see [`Streams::start_leaving`]); `restart`:
    /// its link is to stream anew past what it lacks (to the address placement gives now).
    pub fn start_leaving(&self, index: usize, restart: bool, mark: u64) {
        let now = self
            .streams
            .borrow_mut()
            .start_leaving(index, restart, mark);
        if now {
            self.restart(index);
        }
    }

    /// The owner's lease carries the ISR without the leaving followers: they leave (see
    /// [`Streams::leave`]).
    pub fn leave(&self, mark: u64) {
        let restart = self.streams.borrow_mut().leave(mark);
        for i in restart {
            self.restart(i);
        }
    }

    /// A new link for stream `index`, to its address, streaming from its next sequence: the
    /// follower skips what it was not sent (its stream is marked to lack it).
    fn restart(&self, index: usize) {
        let next_seq = self.streams.borrow().streams()[index].next_seq;
        let addr = self.links.borrow()[index].1.clone();
        let link = self.link(index, &addr);
        link.restart_at(next_seq);
        self.links.borrow_mut()[index].0 = link;
    }

    /// The owner's lease as last written names `in_sync` (see [`Streams::published`]).
    pub fn published(&self, in_sync: &[(i32, usize)]) {
        self.streams.borrow_mut().published(in_sync);
    }

    /// Whether follower `index` lags by more than `lag_max` (see [`Streams::lagging`]).
    pub fn lagging(&self, index: usize, lag_max: Duration) -> bool {
        self.streams
            .borrow()
            .lagging(index, Instant::now(), lag_max)
    }

    /// Every batch queued before `popped` is in the bucket (see [`Streams::settle_ranks`]).
    pub fn settle_ranks(&self, popped: u64) {
        self.streams.borrow_mut().settle_ranks(popped);
    }

    /// Whether follower `index` lost its copy (it restarted empty): it must leave the ISR and
    /// be streamed to anew.
    pub fn lost_copy(&self, index: usize) -> bool {
        self.links
            .borrow()
            .get(index)
            .is_some_and(|(l, _)| l.lost_copy())
    }

    /// Whether follower `index` takes its stream now (its link is connected and started).
    pub fn is_streaming(&self, index: usize) -> bool {
        self.links
            .borrow()
            .get(index)
            .is_some_and(|(l, _)| l.is_streaming())
    }

    /// Whether a produce to a topic of `factor` and `min_insync` may be appended (else Kafka's
    /// NOT_ENOUGH_REPLICAS, before anything is written).
    pub fn may_append(&self, factor: usize, min_insync: usize) -> bool {
        self.streams.borrow().may_append(factor, min_insync)
    }

    /// Numbers `batch` on the streams of its topic's followers and queues it on their links.
    /// Returns the numbers, and the streams whose link refused it (the follower lags by more
    /// than its link holds): it lacks the batch, and is to leave the ISR with its link
    /// restarted ([`Outbound::start_leaving`]).
    pub fn send(&self, factor: usize, batch: Outgoing) -> (Sent, Vec<usize>) {
        let sent = self.streams.borrow_mut().send(factor, Instant::now());
        let links = self.links.borrow();
        let mut refused = Vec::new();
        for &(i, seq) in &sent.seqs {
            let link = &links[i].0;
            let queued = link.push(Batch {
                seq,
                topic_id: batch.topic_id,
                partition: batch.partition,
                base_offset: batch.base_offset,
                record_count: batch.record_count,
                leader_epoch: batch.leader_epoch,
                bytes: batch.bytes.clone(),
            });
            if !queued {
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

    /// The copies of `sent` an acknowledgement may count (see [`Streams::copies`]).
    pub fn copies(&self, sent: &Sent) -> usize {
        self.streams.borrow().copies(sent)
    }

    /// Everything up to each follower's sequence in `upto` is in the bucket.
    pub fn committed(&self, upto: &Sent) {
        let links = self.links.borrow();
        for &(i, seq) in &upto.seqs {
            links[i].0.committed(seq);
        }
    }

    /// The follower's last refusal or connection failure, if any since its last acknowledgement.
    pub fn last_error(&self, index: usize) -> Option<String> {
        self.links
            .borrow()
            .get(index)
            .and_then(|(l, _)| l.last_error())
    }
}
