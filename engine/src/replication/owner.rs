//! The owner's side of a slot's streams (ARCHITECTURE.md, "Replicated WAL", R1–R3): numbering
//! what goes to each follower, their acknowledgements, which followers a topic uses, who is in
//! sync for which topics, and when a batch may be acknowledged to its producer. Pure: the
//! streams' I/O tells it what was sent and acknowledged and when, placement who the followers
//! are, and the slot's queue of sent batches when a follower may join the ISR.
//!
//! A topic of replication factor `f` sends its batches to the followers ranked below `f − 1`.
//! A follower that moves up a rank (one before it left) starts receiving topics of smaller
//! factors only now: it counts as an in-sync copy of those only once what it missed is in the
//! bucket (`sync_rank`).
//!
//! A follower leaves the ISR in two steps (R2): first it is *leaving* — no longer counted as
//! a copy, no longer in the ISR the owner publishes, but still waited for — and only once the
//! owner's lease carries the ISR without it does it stop being waited for. So every follower a
//! successor may pick from the owner's last lease has every acknowledged batch. A leaving
//! follower that alone holds batches not in the bucket (the staying ones were not sent them)
//! stays in the published ISR until they are in the bucket (`sole_holders`): else a successor
//! picked from the lease would lack them.

use std::time::{Duration, Instant};

/// One follower's stream: the next number it is sent, what it acknowledged, and its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub node: i32,
    pub next_seq: u64,
    pub acked_seq: u64,
    /// In the ISR: every batch of the topics it is in sync for that was acknowledged to a
    /// producer (or made visible) since it joined is on it, and acknowledgements wait for it.
    pub in_sync: bool,
    /// Leaving the ISR: still waited for, no longer counted or published (see the module).
    pub leaving: bool,
    /// The owner's lease carries it in the ISR. Only then does it count as a copy: a successor
    /// is picked from the lease, so a copy it does not name would be lost with the owner (as
    /// Kafka counts the committed ISR for `min.insync.replicas`).
    pub published: bool,
    /// Its link could not hold a batch: once out of the ISR, the link restarts past it.
    pub restart: bool,
    /// Placement's rank among the slot's followers (None: not a follower now).
    pub rank: Option<usize>,
    /// It holds every batch not in the bucket of the topics of factor above `sync_rank + 1`
    /// (never below its rank): in sync for those.
    pub sync_rank: usize,
    /// Out of the ISR: batches queued before this mark (the slot's count of batches sent)
    /// may be missing from its copy; it joins only once they are all in the bucket.
    pub join_mark: u64,
    /// Moved up a rank: batches queued before this mark of the topics it now receives too may
    /// be missing; its `sync_rank` comes down to its rank once they are in the bucket.
    pub rank_mark: u64,
    /// When it last had everything it was sent (Kafka's `lastCaughtUpTime`).
    pub caught_up_at: Instant,
}

impl Stream {
    fn fresh(node: i32, rank: usize, in_sync: bool, mark: u64, now: Instant) -> Stream {
        Stream {
            node,
            next_seq: 1,
            acked_seq: 0,
            in_sync,
            leaving: false,
            published: false,
            restart: false,
            rank: Some(rank),
            sync_rank: rank,
            join_mark: mark,
            rank_mark: 0,
            caught_up_at: now,
        }
    }

    /// In the ISR and staying: counted as a copy, and published.
    pub fn counted(&self) -> bool {
        self.in_sync && !self.leaving
    }

    /// In the ISR, staying, and named so in the owner's lease: a copy a successor has.
    fn copy(&self) -> bool {
        self.counted() && self.published
    }

    /// Whether it counts as an in-sync copy of a topic of `factor`.
    fn copy_of(&self, factor: usize) -> bool {
        self.copy() && self.rank.is_some() && self.sync_rank + 1 < factor
    }
}

/// A batch's place in the streams of its topic's followers: (stream index, sequence).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    pub seqs: Vec<(usize, u64)>,
}

/// A slot's streams, one per follower it had in this epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streams {
    streams: Vec<Stream>,
}

impl Streams {
    /// Streams to `followers` (placement order) under a new epoch: all numbered from 1, every
    /// one in sync (the opening uploads the tail it recovered before it takes a write).
    pub fn new(followers: &[i32], now: Instant) -> Streams {
        Streams {
            streams: followers
                .iter()
                .enumerate()
                .map(|(rank, &node)| Stream::fresh(node, rank, true, 0, now))
                .collect(),
        }
    }

    pub fn streams(&self) -> &[Stream] {
        &self.streams
    }

    /// Placement's followers changed (`followers`, in order; `mark`: the slot's count of
    /// batches sent so far). A follower gone (its lease lapsed) starts leaving the ISR; a new
    /// one gets a stream, out of the ISR until it has caught up; one back after an absence
    /// lacks what was sent meanwhile; one moved up lacks the smaller factors' recent batches.
    /// Returns the indices of the new streams, and whether a follower started leaving.
    pub fn place(&mut self, followers: &[i32], mark: u64, now: Instant) -> (Vec<usize>, bool) {
        let mut left = false;
        for s in &mut self.streams {
            let rank = followers.iter().position(|&n| n == s.node);
            match (s.rank, rank) {
                (_, None) => {
                    left |= s.counted();
                    s.leaving |= s.in_sync;
                }
                (None, Some(r)) => {
                    s.join_mark = mark;
                    s.sync_rank = r;
                }
                (Some(old), Some(r)) if r < old => s.rank_mark = mark,
                (Some(_), Some(r)) => s.sync_rank = s.sync_rank.max(r),
            }
            s.rank = rank;
        }
        let mut added = Vec::new();
        for (rank, &node) in followers.iter().enumerate() {
            if !self.streams.iter().any(|s| s.node == node) {
                added.push(self.streams.len());
                self.streams
                    .push(Stream::fresh(node, rank, false, mark, now));
            }
        }
        (added, left)
    }

    /// In-sync copies a topic of replication factor `factor` has now, the owner's included.
    pub fn in_sync_copies(&self, factor: usize) -> usize {
        1 + self.streams.iter().filter(|s| s.copy_of(factor)).count()
    }

    /// Whether a produce to a topic of `factor` and `min_insync` may be appended at all
    /// (NOT_ENOUGH_REPLICAS before anything is written, as Kafka).
    pub fn may_append(&self, factor: usize, min_insync: usize) -> bool {
        self.in_sync_copies(factor) >= min_insync
    }

    /// Numbers a batch of a topic of replication factor `factor` on each of its followers'
    /// streams (those ranked below `factor − 1`).
    pub fn send(&mut self, factor: usize, now: Instant) -> Sent {
        let mut seqs = Vec::new();
        for (i, s) in self.streams.iter_mut().enumerate() {
            if s.rank.is_some_and(|r| r + 1 < factor) {
                if s.acked_seq + 1 == s.next_seq {
                    s.caught_up_at = now; // it had everything until now
                }
                seqs.push((i, s.next_seq));
                s.next_seq += 1;
            }
        }
        Sent { seqs }
    }

    /// Follower `index` has everything up to `seq` durable (acknowledgements only grow).
    pub fn acked(&mut self, index: usize, seq: u64, now: Instant) {
        if let Some(s) = self.streams.get_mut(index) {
            debug_assert!(seq < s.next_seq, "only what was sent is acknowledged");
            s.acked_seq = s.acked_seq.max(seq);
            if s.acked_seq + 1 >= s.next_seq {
                s.caught_up_at = now;
            }
        }
    }

    /// Follower `index` joins the ISR: in sync for the topics of its rank (R2).
    pub fn join(&mut self, index: usize, now: Instant) {
        if let Some(s) = self.streams.get_mut(index) {
            s.in_sync = true;
            s.sync_rank = s.rank.unwrap_or(s.sync_rank);
            s.caught_up_at = now;
        }
    }

    /// Follower `index` starts leaving the ISR (it lags; `restart`: its link could not hold
    /// a batch). Out of the ISR already, it is left at once: returns true if its link is to
    /// restart now (batches queued before `mark` may then be missing from its copy).
    pub fn start_leaving(&mut self, index: usize, restart: bool, mark: u64) -> bool {
        let Some(s) = self.streams.get_mut(index) else {
            return false;
        };
        if s.in_sync {
            s.leaving = true;
            s.restart |= restart;
            return false;
        }
        if restart {
            s.join_mark = s.join_mark.max(mark);
        }
        restart
    }

    /// The owner's lease carries the ISR without the leaving followers: they leave now (no
    /// acknowledgement waits for them any more). Returns those whose links are to restart
    /// (batches queued before `mark` may be missing from their copies).
    pub fn leave(&mut self, mark: u64) -> Vec<usize> {
        let mut restart = Vec::new();
        for (i, s) in self.streams.iter_mut().enumerate() {
            if s.leaving {
                s.in_sync = false;
                s.leaving = false;
                s.published = false;
                if std::mem::take(&mut s.restart) {
                    s.join_mark = s.join_mark.max(mark);
                    restart.push(i);
                }
            }
        }
        restart
    }

    /// The owner's lease, as last written, carries `in_sync` (node, rank): those count as
    /// copies from now on.
    pub fn published(&mut self, in_sync: &[(i32, usize)]) {
        for s in &mut self.streams {
            s.published = in_sync.iter().any(|&(n, _)| n == s.node);
        }
    }

    /// Whether a follower is leaving.
    pub fn any_leaving(&self) -> bool {
        self.streams.iter().any(|s| s.leaving)
    }

    /// The leaving followers that hold a batch of `unuploaded` (batches not in the bucket) which
    /// no follower staying in the ISR was sent — a factor-2 topic's batches go to the rank-0
    /// follower alone. They stay in the published ISR until those are in the bucket: a
    /// successor picked from the lease meanwhile must hold every acknowledged batch (R3), and
    /// the followers staying in sync lack these.
    pub fn sole_holders<'a>(&self, unuploaded: impl IntoIterator<Item = &'a Sent>) -> Vec<usize> {
        let mut holders = Vec::new();
        for sent in unuploaded {
            if sent.seqs.iter().any(|&(i, _)| self.streams[i].copy()) {
                continue;
            }
            for &(i, _) in &sent.seqs {
                if self.streams[i].leaving && !holders.contains(&i) {
                    holders.push(i);
                }
            }
        }
        holders
    }

    /// Every batch queued before `popped` is in the bucket: followers that moved up a rank
    /// are in sync for the smaller factors from now on.
    pub fn settle_ranks(&mut self, popped: u64) {
        for s in &mut self.streams {
            if let Some(r) = s.rank {
                if s.sync_rank > r && popped >= s.rank_mark {
                    s.sync_rank = r;
                }
            }
        }
    }

    /// Whether in-sync follower `index` has left a batch unacknowledged for longer than
    /// `lag_max` since it last had everything (Kafka's `replica.lag.time.max.ms`).
    pub fn lagging(&self, index: usize, now: Instant, lag_max: Duration) -> bool {
        self.streams.get(index).is_some_and(|s| {
            s.counted()
                && s.acked_seq + 1 < s.next_seq
                && now.saturating_duration_since(s.caught_up_at) > lag_max
        })
    }

    /// Whether `sent` is on every in-sync follower it went to (what the high watermark of a
    /// replicated partition waits for, as Kafka's waits for the ISR).
    pub fn on_in_sync(&self, sent: &Sent) -> bool {
        sent.seqs.iter().all(|&(i, seq)| {
            let s = &self.streams[i];
            !s.in_sync || s.acked_seq >= seq
        })
    }

    /// The copies of `sent` an acknowledgement may count: the owner's and those of the
    /// followers it went to that are in the ISR, staying, and named so in the owner's lease
    /// (a visible batch: each has it).
    pub fn copies(&self, sent: &Sent) -> usize {
        1 + sent
            .seqs
            .iter()
            .filter(|&&(i, _)| self.streams[i].copy())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Instant {
        Instant::now()
    }

    /// The owner's lease is written with the ISR as it is now.
    fn lease(s: &mut Streams) {
        let isr: Vec<(i32, usize)> = s
            .streams()
            .iter()
            .filter(|f| f.counted())
            .map(|f| (f.node, f.sync_rank))
            .collect();
        s.published(&isr);
    }

    #[test]
    fn a_batch_waits_for_every_in_sync_follower_of_its_topic() {
        let now = at();
        let mut s = Streams::new(&[2, 3], now);
        lease(&mut s);
        // Replication factor 3: both followers; 2: only the first.
        let a = s.send(3, now);
        let b = s.send(2, now);
        let c = s.send(3, now);
        assert_eq!(a.seqs, vec![(0, 1), (1, 1)]);
        assert_eq!(b.seqs, vec![(0, 2)]);
        assert_eq!(c.seqs, vec![(0, 3), (1, 2)]);
        assert!(!s.on_in_sync(&a));
        s.acked(0, 2, now);
        assert!(!s.on_in_sync(&a), "node 3 too");
        assert!(s.on_in_sync(&b));
        s.acked(1, 1, now);
        assert!(s.on_in_sync(&a));
        assert!(!s.on_in_sync(&c));
        // Acknowledgements are cumulative and never go back.
        s.acked(0, 3, now);
        s.acked(0, 1, now);
        s.acked(1, 2, now);
        assert!(s.on_in_sync(&c));
        assert_eq!((s.copies(&a), s.copies(&b)), (3, 2));
        // Replication factor 1: no follower, nothing to wait for.
        let d = s.send(1, now);
        assert!(d.seqs.is_empty());
        assert!(s.on_in_sync(&d));
        assert_eq!(s.copies(&d), 1);
    }

    /// Review of issue 19 (R3): a follower counted as a copy before the owner's lease named it
    /// in the ISR; the owner dying then, the successor was picked from a lease without it (or
    /// none, and the slot opened from the bucket), and records acknowledged with it were lost.
    #[test]
    fn a_follower_counts_as_a_copy_only_once_the_owners_lease_names_it() {
        let now = at();
        let mut s = Streams::new(&[2], now);
        assert!(
            !s.may_append(2, 2),
            "a new epoch's ISR is not in its lease yet"
        );
        let a = s.send(2, now);
        s.acked(0, 1, now);
        assert!(s.on_in_sync(&a));
        assert_eq!(s.copies(&a), 1, "had, not counted");
        s.published(&[(2, 0)]);
        assert!(s.may_append(2, 2));
        assert_eq!(s.copies(&a), 2);
        // A lease written without it (it left): no longer a copy.
        s.published(&[]);
        assert!(!s.may_append(2, 2));
    }

    #[test]
    fn a_leaving_follower_alone_holding_batches_stays_published_until_they_are_uploaded() {
        let now = at();
        let mut s = Streams::new(&[2, 3], now);
        lease(&mut s);
        let wide = s.send(3, now); // to nodes 2 and 3
        let narrow = s.send(2, now); // to node 2 alone
        s.acked(0, 2, now);
        s.acked(1, 1, now);
        assert!(s.sole_holders([&wide, &narrow]).is_empty(), "nobody leaves");
        // Node 2 lags out: it alone holds the factor-2 batch.
        s.start_leaving(0, false, 2);
        assert_eq!(s.sole_holders([&wide, &narrow]), vec![0]);
        assert_eq!(
            s.sole_holders([&wide]),
            Vec::<usize>::new(),
            "node 3 holds that one"
        );
        assert!(
            s.sole_holders(Vec::<&Sent>::new()).is_empty(),
            "all in the bucket"
        );
        // Node 3 leaves too: each holds what it was sent, and no one stays to hold it.
        s.start_leaving(1, false, 2);
        assert_eq!(s.sole_holders([&wide, &narrow]), vec![0, 1]);
    }

    #[test]
    fn a_follower_out_of_the_isr_is_not_waited_for_nor_counted() {
        let now = at();
        let mut s = Streams::new(&[2, 3], now);
        lease(&mut s);
        let a = s.send(3, now);
        s.acked(0, 1, now);
        assert!(!s.on_in_sync(&a));
        // Node 3 starts leaving: no longer counted, still waited for until the lease says so.
        assert!(!s.start_leaving(1, false, 0));
        assert_eq!(s.in_sync_copies(3), 2);
        assert!(s.may_append(3, 2));
        assert!(!s.on_in_sync(&a), "waited for until the leave is published");
        assert_eq!(s.copies(&a), 2);
        assert_eq!(s.leave(0), Vec::<usize>::new());
        assert!(s.on_in_sync(&a));
        // Node 2 leaves too: one copy, below min.insync 2.
        s.start_leaving(0, false, 0);
        s.leave(0);
        assert!(!s.may_append(3, 2));
        assert!(s.may_append(3, 1));
        assert_eq!(s.copies(&a), 1);
    }

    #[test]
    fn placement_adds_followers_out_of_sync_and_drops_gone_ones() {
        let now = at();
        let mut s = Streams::new(&[2], now);
        lease(&mut s);
        let a = s.send(3, now);
        assert_eq!(a.seqs, vec![(0, 1)]);
        // Node 3 joins as the first follower: a factor-2 topic now uses it, out of sync.
        assert_eq!(s.place(&[3, 2], 1, now), (vec![1], false));
        assert_eq!(s.streams()[1].join_mark, 1);
        assert!(!s.streams()[1].in_sync);
        let b = s.send(2, now);
        assert_eq!(b.seqs, vec![(1, 1)], "node 3 ranks first now");
        assert_eq!(s.in_sync_copies(2), 1);
        assert!(!s.may_append(2, 2));
        assert!(s.may_append(3, 2), "node 2 is still in sync");
        s.join(1, now);
        lease(&mut s);
        assert!(s.may_append(2, 2));
        // Node 2 leaves the view: leaving the ISR; back later, it lacks what was sent
        // meanwhile.
        assert_eq!(s.place(&[3], 5, now), (vec![], true));
        assert!(s.streams()[0].leaving);
        s.leave(5);
        assert!(!s.streams()[0].in_sync);
        assert_eq!(s.streams()[0].rank, None);
        assert_eq!(s.send(3, now).seqs, vec![(1, 2)]);
        assert_eq!(s.place(&[3, 2], 7, now), (vec![], false));
        assert_eq!(s.streams()[0].join_mark, 7);
        assert_eq!(s.send(3, now).seqs, vec![(0, 2), (1, 3)]);
    }

    /// Review finding: a follower that moves up a rank is not a copy of the smaller factors'
    /// batches sent before, to the follower above it.
    #[test]
    fn a_follower_moved_up_counts_for_smaller_factors_once_the_bucket_has_what_it_missed() {
        let now = at();
        let mut s = Streams::new(&[2, 3], now);
        lease(&mut s);
        let b = s.send(2, now); // factor 2: node 2 only
        assert_eq!(b.seqs, vec![(0, 1)]);
        // Node 2 dies: node 3 moves up to rank 0, still in sync for factor 3 only.
        assert_eq!(s.place(&[3], 4, now), (vec![], true));
        s.leave(4);
        assert_eq!(s.in_sync_copies(3), 2);
        assert_eq!(s.in_sync_copies(2), 1, "node 3 lacks factor 2's batch 1");
        assert!(!s.may_append(2, 2));
        assert_eq!(s.copies(&b), 1, "its only recipient left");
        s.settle_ranks(3);
        assert_eq!(s.in_sync_copies(2), 1);
        s.settle_ranks(4);
        assert_eq!(s.in_sync_copies(2), 2, "what it missed is in the bucket");
        // Moving down a rank only narrows what it is a copy of.
        s.place(&[4, 3], 9, now);
        assert_eq!(s.streams()[1].sync_rank, 1);
        assert_eq!(s.in_sync_copies(2), 1);
    }

    /// A link that could not hold a batch restarts past it only once the follower is out of
    /// the ISR: until then its acknowledgements cannot jump over the batch it lacks.
    #[test]
    fn a_full_link_restarts_only_once_its_follower_has_left() {
        let now = at();
        let mut s = Streams::new(&[2], now);
        lease(&mut s);
        let a = s.send(2, now);
        assert!(!s.start_leaving(0, true, 1), "in the ISR: no restart yet");
        assert!(!s.on_in_sync(&a));
        assert_eq!(s.leave(1), vec![0]);
        assert_eq!(s.streams()[0].join_mark, 1);
        assert!(s.on_in_sync(&a));
        // Out of the ISR already: the link restarts at once.
        assert!(s.start_leaving(0, true, 3));
        assert_eq!(s.streams()[0].join_mark, 3);
    }

    #[test]
    fn a_follower_lags_once_it_has_not_caught_up_for_the_bound() {
        let t0 = at();
        let lag = Duration::from_secs(3);
        let mut s = Streams::new(&[2], t0);
        lease(&mut s);
        s.send(2, t0);
        assert!(!s.lagging(0, t0 + Duration::from_secs(2), lag));
        assert!(s.lagging(0, t0 + Duration::from_secs(4), lag));
        // Caught up: not lagging, however old its last batch.
        s.acked(0, 1, t0 + Duration::from_secs(4));
        assert!(!s.lagging(0, t0 + Duration::from_secs(9), lag));
        // Idle until a new batch: the clock starts at that batch.
        s.send(2, t0 + Duration::from_secs(10));
        assert!(!s.lagging(0, t0 + Duration::from_secs(12), lag));
        assert!(s.lagging(0, t0 + Duration::from_secs(14), lag));
    }

    #[test]
    fn fewer_followers_than_the_factor_asks_for_count_as_missing_copies() {
        // One other broker alive: a factor-3 topic has at most 2 copies.
        let now = at();
        let mut s = Streams::new(&[2], now);
        lease(&mut s);
        assert_eq!(s.in_sync_copies(3), 2);
        assert!(s.may_append(3, 2));
        assert!(!s.may_append(3, 3));
        let a = s.send(3, now);
        assert_eq!(a.seqs, vec![(0, 1)]);
    }
}
