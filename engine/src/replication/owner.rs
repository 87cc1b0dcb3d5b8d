//! The owner's side of a slot's streams (ARCHITECTURE.md, "Replicated WAL", R1): numbering what
//! goes to each follower, their acknowledgements, and when a batch may be acknowledged to its
//! producer. Pure: the streams' I/O tells it what was sent and acknowledged, and the ISR as
//! last committed.

/// One follower's stream: the next number it is sent, what it acknowledged, and whether it is
/// in the committed ISR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub node: i32,
    pub next_seq: u64,
    pub acked_seq: u64,
    pub in_sync: bool,
}

/// A batch's place in the streams of its topic's followers: (follower index, sequence).
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

/// A slot's streams, one per follower in placement order.
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
                .map(|&node| Stream {
                    node,
                    next_seq: 1,
                    acked_seq: 0,
                    in_sync: true,
                })
                .collect(),
        }
    }

    pub fn streams(&self) -> &[Stream] {
        &self.streams
    }

    /// In-sync copies a topic of replication factor `factor` has now, the owner's included.
    pub fn in_sync_copies(&self, factor: usize) -> usize {
        1 + self.of_topic(factor).filter(|(_, s)| s.in_sync).count()
    }

    /// Whether a produce to a topic of `factor` and `min_insync` may be appended at all
    /// (NOT_ENOUGH_REPLICAS before anything is written, as Kafka).
    pub fn may_append(&self, factor: usize, min_insync: usize) -> bool {
        self.in_sync_copies(factor) >= min_insync
    }

    /// Numbers a batch of a topic of replication factor `factor` on each of its followers' streams.
    pub fn send(&mut self, factor: usize) -> Sent {
        let n = factor.saturating_sub(1).min(self.streams.len());
        Sent {
            seqs: self.streams[..n]
                .iter_mut()
                .enumerate()
                .map(|(i, s)| {
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

    /// The committed ISR changed: follower `index` is in it or not (R2).
    pub fn set_in_sync(&mut self, index: usize, in_sync: bool) {
        if let Some(s) = self.streams.get_mut(index) {
            s.in_sync = in_sync;
        }
    }

    /// Whether `sent` is on every in-sync follower it went to, and those are enough copies
    /// for `min_insync` (R1). A follower out of the ISR is not waited for — it left only by a
    /// committed change, which no acknowledgement relied on before (R2).
    pub fn replicated(&self, sent: &Sent, factor: usize, min_insync: usize) -> Replicated {
        if self.in_sync_copies(factor) < min_insync {
            return Replicated::TooFew;
        }
        let waiting = sent.seqs.iter().any(|&(i, seq)| {
            let s = &self.streams[i];
            s.in_sync && s.acked_seq < seq
        });
        if waiting {
            Replicated::Waiting
        } else {
            Replicated::Yes
        }
    }

    fn of_topic(&self, factor: usize) -> impl Iterator<Item = (usize, &Stream)> {
        let n = factor.saturating_sub(1).min(self.streams.len());
        self.streams[..n].iter().enumerate()
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
        s.set_in_sync(1, false);
        assert_eq!(s.in_sync_copies(3), 2);
        assert!(s.may_append(3, 2));
        assert_eq!(s.replicated(&a, 3, 2), Replicated::Yes);
        // Node 2 leaves too: one copy, below min.insync 2.
        s.set_in_sync(0, false);
        assert!(!s.may_append(3, 2));
        assert!(s.may_append(3, 1));
        assert_eq!(s.replicated(&a, 3, 2), Replicated::TooFew);
        assert_eq!(s.replicated(&a, 3, 1), Replicated::Yes);
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
