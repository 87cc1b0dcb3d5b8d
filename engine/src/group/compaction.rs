//! When an offsets partition's log is compacted, and how commits and a compaction take turns:
//! the offsets log's bookkeeping, without I/O (`offsets_log.rs` writes, replays and compacts).
//!
//! A compaction rewrites every live offset, so its rewrite must be the latest state: it starts
//! once the commits in flight are done, and new commits wait until its rewrite is durable.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use ringtail_shards::WaitList;

/// How long a failed compaction waits before the next attempt.
const COMPACTION_RETRY: Duration = Duration::from_secs(60);

/// The compaction bookkeeping of one coordinator's offsets partitions.
pub struct Compaction {
    /// Records written to (or replayed from) each offsets partition since its last compaction.
    records_since: RefCell<HashMap<i32, u64>>,
    /// Compact a partition once it has this many records beyond the live offsets.
    after_records: u64,
    /// A compaction is running: new commits wait (so that its rewrite is the latest state).
    running: Cell<bool>,
    commits_in_flight: Cell<usize>,
    /// Notified whenever `running` or `commits_in_flight` changes.
    turns: WaitList,
    /// After a failed compaction, not before then.
    retry_at: Cell<Option<Instant>>,
}

impl Compaction {
    pub fn new(after_records: u64) -> Compaction {
        Compaction {
            records_since: RefCell::new(HashMap::new()),
            after_records: after_records.max(1),
            running: Cell::new(false),
            commits_in_flight: Cell::new(0),
            turns: WaitList::new(),
            retry_at: Cell::new(None),
        }
    }

    /// `n` more records in `partition`'s log.
    pub fn count_records(&self, partition: i32, n: u64) {
        *self
            .records_since
            .borrow_mut()
            .entry(partition)
            .or_default() += n;
    }

    /// The offsets partition to compact now, if any: one whose log has grown more than the
    /// threshold beyond the `live_offsets` of all groups — not while a compaction runs, nor
    /// before a failed one's retry time.
    pub fn due(&self, live_offsets: u64, now: Instant) -> Option<i32> {
        if self.running.get() || self.retry_at.get().is_some_and(|t| now < t) {
            return None;
        }
        self.records_since
            .borrow()
            .iter()
            .find(|(_, n)| **n > self.after_records + live_offsets)
            .map(|(p, _)| *p)
    }

    /// `partition` was compacted: its log holds the `rewritten` records of the rewrite.
    pub fn compacted(&self, partition: i32, rewritten: u64) {
        self.records_since.borrow_mut().insert(partition, rewritten);
    }

    /// A compaction failed: the next one waits [`COMPACTION_RETRY`].
    pub fn failed(&self, now: Instant) {
        self.retry_at.set(Some(now + COMPACTION_RETRY));
    }

    /// A commit's turn: waits while a compaction runs; the commit is in flight (a compaction
    /// waits for it) until the turn is dropped.
    pub async fn commit_turn(&self) -> CommitTurn<'_> {
        self.turns.wait_until(|| !self.running.get()).await;
        self.commits_in_flight.set(self.commits_in_flight.get() + 1);
        CommitTurn(self)
    }

    /// A compaction's turn: new commits wait from now on; resolves once the commits in flight
    /// are done. Commits go on when the turn is dropped.
    pub async fn compaction_turn(&self) -> CompactionTurn<'_> {
        let already = self.running.replace(true);
        debug_assert!(!already, "one compaction at a time");
        let turn = CompactionTurn(self);
        self.turns
            .wait_until(|| self.commits_in_flight.get() == 0)
            .await;
        turn
    }
}

/// A commit in flight (see [`Compaction::commit_turn`]).
pub struct CommitTurn<'a>(&'a Compaction);

impl Drop for CommitTurn<'_> {
    fn drop(&mut self) {
        let c = self.0;
        c.commits_in_flight.set(c.commits_in_flight.get() - 1);
        c.turns.notify_all();
    }
}

/// A running compaction (see [`Compaction::compaction_turn`]).
pub struct CompactionTurn<'a>(&'a Compaction);

impl Drop for CompactionTurn<'_> {
    fn drop(&mut self) {
        self.0.running.set(false);
        self.0.turns.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use futures::executor::block_on;
    use futures::poll;

    use super::*;

    #[test]
    fn a_partition_is_due_once_its_log_outgrows_the_live_offsets_by_the_threshold() {
        let c = Compaction::new(20);
        let now = Instant::now();
        assert_eq!(c.due(0, now), None, "nothing written");
        c.count_records(3, 25);
        c.count_records(3, 5);
        c.count_records(1, 10);
        assert_eq!(
            c.due(10, now),
            None,
            "30 records, 10 live: 20 beyond, not more"
        );
        c.count_records(3, 1);
        assert_eq!(c.due(10, now), Some(3));
        assert_eq!(c.due(11, now), None, "the live offsets of all groups count");
        // Compacted, the log holds its rewrite only.
        c.compacted(3, 10);
        assert_eq!(c.due(10, now), None);
        c.count_records(3, 21);
        assert_eq!(c.due(10, now), Some(3));
        // A threshold of 0 is 1: a log is not rewritten for every commit.
        let eager = Compaction::new(0);
        eager.count_records(0, 1);
        assert_eq!(eager.due(0, now), None);
        eager.count_records(0, 1);
        assert_eq!(eager.due(0, now), Some(0));
    }

    #[test]
    fn a_failed_compaction_is_retried_after_a_minute() {
        let c = Compaction::new(1);
        c.count_records(0, 5);
        let now = Instant::now();
        c.failed(now);
        assert_eq!(c.due(0, now), None);
        let almost = now + COMPACTION_RETRY - Duration::from_millis(1);
        assert_eq!(c.due(0, almost), None);
        assert_eq!(c.due(0, now + COMPACTION_RETRY), Some(0));
    }

    #[test]
    fn commits_and_a_compaction_take_turns() {
        let c = Compaction::new(1);
        c.count_records(0, 5);
        block_on(async {
            let commit = c.commit_turn().await;
            let mut compaction = Box::pin(c.compaction_turn());
            assert!(
                poll!(compaction.as_mut()).is_pending(),
                "waits for the commit in flight"
            );
            assert_eq!(c.due(0, Instant::now()), None, "one compaction at a time");
            let mut late = Box::pin(c.commit_turn());
            assert!(
                poll!(late.as_mut()).is_pending(),
                "a new commit waits for the compaction"
            );
            drop(commit);
            let Poll::Ready(turn) = poll!(compaction.as_mut()) else {
                panic!("woken once the commit in flight was done")
            };
            assert!(poll!(late.as_mut()).is_pending());
            drop(turn);
            let Poll::Ready(_late) = poll!(late.as_mut()) else {
                panic!("woken once the compaction was over")
            };
            assert_eq!(c.commits_in_flight.get(), 1);
        });
        assert_eq!(c.commits_in_flight.get(), 0);
        assert_eq!(
            c.due(0, Instant::now()),
            Some(0),
            "the next compaction may start"
        );
    }

    #[test]
    fn a_compaction_given_up_while_it_waits_lets_commits_go_on() {
        let c = Compaction::new(1);
        block_on(async {
            let commit = c.commit_turn().await;
            let mut compaction = Box::pin(c.compaction_turn());
            assert!(poll!(compaction.as_mut()).is_pending());
            let mut late = Box::pin(c.commit_turn());
            assert!(poll!(late.as_mut()).is_pending());
            drop(compaction);
            assert!(
                poll!(late.as_mut()).is_ready(),
                "woken: the compaction is over"
            );
            drop(commit);
        });
        assert!(!c.running.get());
        assert_eq!(c.commits_in_flight.get(), 0);
    }
}
