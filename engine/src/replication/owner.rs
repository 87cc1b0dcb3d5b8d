//! The owner's side of a slot's streams (ARCHITECTURE.md, "Replicated WAL", R1–R3): numbering
//! what goes to each follower, their acknowledgements, which followers a topic uses, who is in
//! sync, and when a batch may be acknowledged to its producer. Pure: the streams' I/O tells it
//! what was sent and acknowledged, placement who the followers are, and the slot's queue of
//! sent batches when a follower may join the ISR.

/// One follower's stream: the next number it is sent, what it acknowledged, and its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub node: i32,
    pub next_seq: u64,
    pub acked_seq: u64,
    /// In the ISR: every batch acknowledged to a producer (or visible to consumers) since it
    /// joined is on it, and acknowledgements wait for it.
    pub in_sync: bool,
    /// Placement's rank among the slot's followers (None: not a follower now).
    pub rank: Option<usize>,
    /// Out of the ISR: batches queued before this mark (the slot's count of batches sent)
    /// may be missing from its copy; it joins only once they are all in the bucket.
    pub join_mark: u64,
}

/// A batch's place in the streams of its topic's followers: (stream index, sequence).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    pub seqs: Vec<(usize, u64)>,
}

/// Whether a batch sent to followers may be acknowledged (`acks=all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicated {
    /// On every in-sync follower of its topic, and they are enough.
    Yes,
    /// An in-sync follower has not acknowledged it yet.
    Waiting,
    /// Fewer in-sync copies than `min.insync.replicas` (the owner's included): Kafka's
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND once appended.
    TooFew,
}

/// A slot's streams, one per follower it ever had in this epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Streams {
    streams: Vec<Stream>,
}

impl Streams {
    /// Streams to `followers` (placement order) under a new epoch: all numbered from 1, every
    /// one in sync (everything older is in the bucket: a new owner uploads the tail it
    /// recovered before it takes a write).
    pub fn new(followers: &[i32]) -> Streams {
        Streams {
            streams: followers
                .iter()
                .enumerate()
                .map(|(rank, &node)| Stream {
                    node,
                    next_seq: 1,
                    acked_seq: 0,
                    in_sync: true,
                    rank: Some(rank),
                    join_mark: 0,
                })
                .collect(),
        }
    }

    pub fn streams(&self) -> &[Stream] {
        &self.streams
    }

    /// Placement's followers changed (`followers`, in order; `mark`: the slot's count of
    /// batches sent so far). A follower gone leaves the ISR at once (its lease lapsed); a new
    /// one gets a stream, out of the ISR until it has caught up; one back after an absence
    /// lacks what was sent meanwhile. Returns the indices of the new streams.
    pub fn place(&mut self, followers: &[i32], mark: u64) -> Vec<usize> {
        for s in &mut self.streams {
            let rank = followers.iter().position(|&n| n == s.node);
            if rank.is_none() {
                s.in_sync = false;
            } else if s.rank.is_none() {
                s.join_mark = mark;
            }
            s.rank = rank;
        }
        let mut added = Vec::new();
        for (rank, &node) in followers.iter().enumerate() {
            if !self.streams.iter().any(|s| s.node == node) {
                added.push(self.streams.len());
                self.streams.push(Stream {
                    node,
                    next_seq: 1,
                    acked_seq: 0,
                    in_sync: false,
                    rank: Some(rank),
                    join_mark: mark,
                });
            }
        }
        added
    }

    /// In-sync copies a topic of replication factor `factor` has now, the owner's included.
    pub fn in_sync_copies(&self, factor: usize) -> usize {
        1 + self
            .of_topic(factor)
            .into_iter()
            .filter(|&i| self.streams[i].in_sync)
            .count()
    }

    /// Whether a produce to a topic of `factor` and `min_insync` may be appended at all
    /// (NOT_ENOUGH_REPLICAS before anything is written, as Kafka).
    pub fn may_append(&self, factor: usize, min_insync: usize) -> bool {
        self.in_sync_copies(factor) >= min_insync
    }

    /// Numbers a batch of a topic of replication factor `factor` on each of its followers' streams.
    pub fn send(&mut self, factor: usize) -> Sent {
        Sent {
            seqs: self
                .of_topic(factor)
                .into_iter()
                .map(|i| {
                    let s = &mut self.streams[i];
                    let seq = s.next_seq;
                    s.next_seq += 1;
                    (i, seq)
                })
                .collect(),
        }
    }

    /// Follower `index` has everything up to `seq` durable (acknowledgements only grow).
    pub fn acked(&mut self, index: usize, seq: u64) {
        if let Some(s) = self.streams.get_mut(index) {
            debug_assert!(seq < s.next_seq, "only what was sent is acknowledged");
            s.acked_seq = s.acked_seq.max(seq);
        }
    }

    /// Follower `index` joins or leaves the ISR (R2); one that leaves with batches it may lack
    /// gets `join_mark` (see [`Stream::join_mark`]).
    pub fn set_in_sync(&mut self, index: usize, in_sync: bool, join_mark: u64) {
        if let Some(s) = self.streams.get_mut(index) {
            s.in_sync = in_sync;
            s.join_mark = s.join_mark.max(join_mark);
        }
    }

    /// Whether `sent` is on every in-sync follower it went to, and those are enough copies
    /// for `min_insync` (R1). A follower out of the ISR is not waited for (R2).
    pub fn replicated(&self, sent: &Sent, factor: usize, min_insync: usize) -> Replicated {
        if self.in_sync_copies(factor) < min_insync {
            return Replicated::TooFew;
        }
        if self.on_in_sync(sent) {
            Replicated::Yes
        } else {
            Replicated::Waiting
        }
    }

    /// Whether `sent` is on every in-sync follower it went to (what the high watermark of a
    /// replicated partition waits for, as Kafka's waits for the ISR).
    pub fn on_in_sync(&self, sent: &Sent) -> bool {
        sent.seqs.iter().all(|&(i, seq)| {
            let s = &self.streams[i];
            !s.in_sync || s.acked_seq >= seq
        })
    }

    /// The streams of a topic of `factor`: the first `factor − 1` followers by rank.
    fn of_topic(&self, factor: usize) -> Vec<usize> {
        let mut placed: Vec<(usize, usize)> = self
            .streams
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.rank.map(|r| (r, i)))
            .collect();
        placed.sort_unstable();
        placed
            .into_iter()
            .take(factor.saturating_sub(1))
            .map(|(_, i)| i)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_waits_for_every_in_sync_follower_of_its_topic() {
        let mut s = Streams::new(&[2, 3]);
        // Replication factor 3: both followers; 2: only the first.
        let a = s.send(3);
        let b = s.send(2);
        let c = s.send(3);
        assert_eq!(a.seqs, vec![(0, 1), (1, 1)]);
        assert_eq!(b.seqs, vec![(0, 2)]);
        assert_eq!(c.seqs, vec![(0, 3), (1, 2)]);
        assert_eq!(s.replicated(&a, 3, 2), Replicated::Waiting);
        s.acked(0, 2);
        assert_eq!(s.replicated(&a, 3, 2), Replicated::Waiting, "node 3 too");
        assert_eq!(s.replicated(&b, 2, 2), Replicated::Yes);
        s.acked(1, 1);
        assert_eq!(s.replicated(&a, 3, 2), Replicated::Yes);
        assert_eq!(s.replicated(&c, 3, 2), Replicated::Waiting);
        // Acknowledgements are cumulative and never go back.
        s.acked(0, 3);
        s.acked(0, 1);
        s.acked(1, 2);
        assert_eq!(s.replicated(&c, 3, 2), Replicated::Yes);
        // Replication factor 1: no follower, nothing to wait for.
        let d = s.send(1);
        assert!(d.seqs.is_empty());
        assert_eq!(s.replicated(&d, 1, 1), Replicated::Yes);
    }

    #[test]
    fn a_follower_out_of_the_isr_is_not_waited_for_down_to_min_insync() {
        let mut s = Streams::new(&[2, 3]);
        let a = s.send(3);
        s.acked(0, 1);
        assert_eq!(s.replicated(&a, 3, 2), Replicated::Waiting);
        // Node 3 left the ISR by a commit: 2 copies remain, enough for min.insync 2.
        s.set_in_sync(1, false, 0);
        assert_eq!(s.in_sync_copies(3), 2);
        assert!(s.may_append(3, 2));
        assert_eq!(s.replicated(&a, 3, 2), Replicated::Yes);
        // Node 2 leaves too: one copy, below min.insync 2.
        s.set_in_sync(0, false, 0);
        assert!(!s.may_append(3, 2));
        assert!(s.may_append(3, 1));
        assert_eq!(s.replicated(&a, 3, 2), Replicated::TooFew);
        assert_eq!(s.replicated(&a, 3, 1), Replicated::Yes);
    }

    #[test]
    fn placement_adds_followers_out_of_sync_and_drops_gone_ones() {
        let mut s = Streams::new(&[2]);
        let a = s.send(3);
        assert_eq!(a.seqs, vec![(0, 1)]);
        // Node 3 joins as the first follower: a factor-2 topic now uses it, out of sync.
        assert_eq!(s.place(&[3, 2], 1), vec![1]);
        assert_eq!(s.streams()[1].join_mark, 1);
        assert!(!s.streams()[1].in_sync);
        let b = s.send(2);
        assert_eq!(b.seqs, vec![(1, 1)], "node 3 ranks first now");
        assert_eq!(s.in_sync_copies(2), 1);
        assert!(!s.may_append(2, 2));
        assert!(s.may_append(3, 2), "node 2 is still in sync");
        s.set_in_sync(1, true, 0);
        assert!(s.may_append(2, 2));
        // Node 2 leaves the view: out of the ISR at once; back later, it lacks what was sent
        // meanwhile.
        assert!(s.place(&[3], 5).is_empty());
        assert!(!s.streams()[0].in_sync);
        assert_eq!(s.streams()[0].rank, None);
        assert_eq!(s.send(3).seqs, vec![(1, 2)]);
        assert!(s.place(&[3, 2], 7).is_empty());
        assert_eq!(s.streams()[0].join_mark, 7);
        assert_eq!(s.send(3).seqs, vec![(1, 3), (0, 2)]);
    }

    #[test]
    fn fewer_followers_than_the_factor_asks_for_count_as_missing_copies() {
        // One other broker alive: a factor-3 topic has at most 2 copies.
        let mut s = Streams::new(&[2]);
        assert_eq!(s.in_sync_copies(3), 2);
        assert!(s.may_append(3, 2));
        assert!(!s.may_append(3, 3));
        let a = s.send(3);
        assert_eq!(a.seqs, vec![(0, 1)]);
    }
}
