//! A partition's leader epochs: for each ownership epoch that wrote to it, the offset of its
//! first batch (Kafka's leader-epoch cache). They answer OffsetForLeaderEpoch, so a client that
//! read records under an epoch can tell whether the log it reads now still holds them (KIP-320).
//! Pure: the partition feeds it from the manifest, the WAL replay and its appends.

/// The epoch starts of one partition, oldest first; epochs and offsets both increase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochStarts {
    entries: Vec<(i32, i64)>,
}

/// A request's `current_leader_epoch` against the epoch of the slot serving the partition
/// (KIP-320): older is FENCED_LEADER_EPOCH (the client's metadata is stale), newer
/// UNKNOWN_LEADER_EPOCH (this owner is: another broker took the slot over); -1 is not checked.
/// Both are retriable: the client refreshes its metadata.
pub fn check_current(current: i32, serving: i32) -> Result<(), i16> {
    use kafka_protocol::ResponseError;
    match current {
        c if c < 0 => Ok(()),
        c if c < serving => Err(ResponseError::FencedLeaderEpoch.code()),
        c if c > serving => Err(ResponseError::UnknownLeaderEpoch.code()),
        _ => Ok(()),
    }
}

/// Kafka's "no epoch" and "no offset" in an OffsetForLeaderEpoch answer.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_OFFSET: i64 = -1;

pub use crate::tier::object_format::EPOCHS_MAX;

impl EpochStarts {
    /// A batch of `epoch` was written at `offset`: the epoch's start if it is newer than the
    /// last. An older epoch than the last is ignored (it cannot start later than a newer one).
    pub fn note(&mut self, epoch: i32, offset: i64) {
        if epoch < 0 {
            return;
        }
        match self.entries.last() {
            Some(&(last, start)) if epoch <= last => {
                debug_assert!(epoch < last || offset >= start, "an epoch starts once");
            }
            Some(&(_, start)) if offset < start => {
                // A newer epoch starting below an older one's start: the older one's batches
                // there are gone (a truncated tail). Kafka truncates the cache the same way.
                self.entries.retain(|&(_, s)| s < offset);
                self.entries.push((epoch, offset));
            }
            _ => {
                self.entries.push((epoch, offset));
                if self.entries.len() > EPOCHS_MAX {
                    self.entries.remove(0);
                }
            }
        }
    }

    /// The newest epoch that wrote to the partition.
    pub fn latest(&self) -> Option<i32> {
        self.entries.last().map(|&(e, _)| e)
    }

    /// The epoch of the batch holding `offset`, if one is known.
    pub fn epoch_at(&self, offset: i64) -> Option<i32> {
        self.entries
            .iter()
            .rev()
            .find(|&&(_, start)| start <= offset)
            .map(|&(e, _)| e)
    }

    /// Forgets epochs that end at or below `log_start` (their batches are deleted); the one
    /// holding `log_start` stays.
    pub fn trim_below(&mut self, log_start: i64) {
        let keep_from = self
            .entries
            .iter()
            .rposition(|&(_, start)| start <= log_start)
            .unwrap_or(0);
        self.entries.drain(..keep_from);
    }

    /// (epoch, start offset) pairs, oldest first.
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    /// OffsetForLeaderEpoch's answer for `requested`, Kafka's rule (`LeaderEpochFileCache.
    /// endOffsetFor`): the largest epoch at or below it and the offset where the next epoch
    /// starts; for the current epoch the log end. An epoch older than every one known is
    /// answered with itself and the oldest known start; one newer than the current, UNDEFINED.
    /// `current` is the partition's epoch now, which starts at `log_end` if it wrote nothing.
    pub fn end_offset_for(&self, requested: i32, current: i32, log_end: i64) -> (i32, i64) {
        let mut entries = self.entries.clone();
        if entries.last().is_none_or(|&(last, _)| current > last) {
            entries.push((current, log_end));
        }
        let latest = entries.last().expect("one at least").0;
        if requested < 0 {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        }
        if requested == latest {
            return (latest, log_end);
        }
        let Some(higher) = entries.iter().position(|&(e, _)| e > requested) else {
            return (UNDEFINED_EPOCH, UNDEFINED_OFFSET);
        };
        let end = entries[higher].1;
        match higher.checked_sub(1) {
            Some(floor) => (entries[floor].0, end),
            None => (requested, end),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(list: &[(i32, i64)]) -> EpochStarts {
        let mut e = EpochStarts::default();
        for &(epoch, offset) in list {
            e.note(epoch, offset);
        }
        e
    }

    #[test]
    fn an_epoch_starts_at_its_first_batch_and_only_newer_epochs_are_noted() {
        let mut e = EpochStarts::default();
        e.note(3, 0);
        e.note(3, 10);
        e.note(5, 20);
        e.note(4, 25);
        e.note(-1, 30);
        e.note(5, 30);
        e.note(7, 40);
        assert_eq!(e.entries(), &[(3, 0), (5, 20), (7, 40)]);
        assert_eq!(e.latest(), Some(7));
        assert_eq!(
            (
                e.epoch_at(0),
                e.epoch_at(19),
                e.epoch_at(20),
                e.epoch_at(99)
            ),
            (Some(3), Some(3), Some(5), Some(7))
        );
        assert_eq!(starts(&[(2, 10)]).epoch_at(5), None);
    }

    #[test]
    fn a_newer_epoch_below_an_older_start_truncates_it() {
        // Epoch 5 wrote from 20 but its tail was lost; epoch 6 continues the log at 15.
        let e = starts(&[(3, 0), (4, 15), (5, 20), (6, 15)]);
        assert_eq!(e.entries(), &[(3, 0), (6, 15)]);
    }

    #[test]
    fn offsets_for_leader_epoch_follow_kafkas_rule() {
        // Epochs 3 (0..20), 5 (20..40), 7 (40..), log end 50, current epoch 7.
        let e = starts(&[(3, 0), (5, 20), (7, 40)]);
        assert_eq!(e.end_offset_for(7, 7, 50), (7, 50), "current: the log end");
        assert_eq!(e.end_offset_for(5, 7, 50), (5, 40));
        assert_eq!(
            e.end_offset_for(6, 7, 50),
            (5, 40),
            "the largest at or below"
        );
        assert_eq!(e.end_offset_for(4, 7, 50), (3, 20));
        assert_eq!(
            e.end_offset_for(1, 7, 50),
            (1, 0),
            "older than any: the first start"
        );
        assert_eq!(e.end_offset_for(8, 7, 50), (-1, -1), "newer than current");
        assert_eq!(e.end_offset_for(-1, 7, 50), (-1, -1));
        // Current epoch 9 has written nothing yet: it starts at the log end.
        assert_eq!(e.end_offset_for(9, 9, 50), (9, 50));
        assert_eq!(e.end_offset_for(7, 9, 50), (7, 50));
        assert_eq!(e.end_offset_for(8, 9, 50), (7, 50));
        // Nothing written ever.
        let empty = EpochStarts::default();
        assert_eq!(empty.end_offset_for(4, 4, 0), (4, 0));
        assert_eq!(empty.end_offset_for(2, 4, 0), (2, 0));
    }

    #[test]
    fn a_lost_epoch_reads_as_ending_where_the_next_continues() {
        // Epoch 5 wrote 20..30 that never reached the bucket; epoch 6 continues at 20. A
        // consumer that read up to 28 under epoch 5 asks for 5: told 20, it detects truncation.
        let e = starts(&[(3, 0), (6, 20)]);
        assert_eq!(e.end_offset_for(5, 6, 25), (3, 20));
    }

    #[test]
    fn a_requests_epoch_must_be_the_serving_slots() {
        use kafka_protocol::ResponseError;
        assert_eq!(check_current(-1, 5), Ok(()));
        assert_eq!(check_current(5, 5), Ok(()));
        assert_eq!(
            check_current(4, 5),
            Err(ResponseError::FencedLeaderEpoch.code())
        );
        assert_eq!(
            check_current(6, 5),
            Err(ResponseError::UnknownLeaderEpoch.code()),
            "a client that knows a newer owner is not served by this one"
        );
    }

    #[test]
    fn trimming_keeps_the_epoch_holding_the_log_start() {
        let mut e = starts(&[(3, 0), (5, 20), (7, 40)]);
        e.trim_below(10);
        assert_eq!(e.entries(), &[(3, 0), (5, 20), (7, 40)]);
        e.trim_below(20);
        assert_eq!(e.entries(), &[(5, 20), (7, 40)]);
        e.trim_below(45);
        assert_eq!(e.entries(), &[(7, 40)]);
    }

    #[test]
    fn the_oldest_epochs_go_beyond_the_bound() {
        let mut e = EpochStarts::default();
        for i in 0..(EPOCHS_MAX as i32 + 10) {
            e.note(i, i as i64 * 10);
        }
        assert_eq!(e.entries().len(), EPOCHS_MAX);
        assert_eq!(e.entries()[0], (10, 100));
    }
}
