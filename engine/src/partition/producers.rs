//! Idempotent producers on one partition: per producer id, its epoch and its last five batches'
//! sequence ranges and offsets, so a retried batch is answered with its original offset instead
//! of being written twice, a gap is refused, and a stale epoch is fenced. Pure: the owner shard
//! checks each batch before it assigns offsets ([`Producers::check`]) and records it after
//! ([`Producers::record`]).
//!
//! Kafka's rules, as the clients expect them: sequences count records, per (producer, partition),
//! from 0, wrapping at i32::MAX; a new epoch starts again at 0; a producer the partition does not
//! know may start at any sequence (its state may have expired, or been written before a restart
//! that kept only the log).

use std::collections::{HashMap, VecDeque};

use kafka_protocol::ResponseError;
use ringtail_netio::header::BatchHeader;
use ringtail_shards::now_ms;

/// What producer state keeps of a batch: whose it is, its sequence numbers and its offset.
#[derive(Debug, Clone, Copy)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub record_count: i32,
    pub base_offset: i64,
}

impl ProducerBatch {
    fn written(&self) -> Written {
        Written {
            first_seq: self.first_seq,
            last_seq: last_sequence(self.first_seq, self.record_count),
            base_offset: self.base_offset,
        }
    }
}

impl From<&BatchHeader> for ProducerBatch {
    fn from(h: &BatchHeader) -> ProducerBatch {
        ProducerBatch {
            producer_id: h.producer_id,
            epoch: h.producer_epoch,
            first_seq: h.base_sequence,
            record_count: h.record_count,
            base_offset: h.base_offset,
        }
    }
}

/// Batches remembered per producer (Kafka's max.in.flight.requests.per.connection bound).
pub const RECENT_BATCHES: usize = 5;

/// A producer idle this long is forgotten (Kafka's producer.id.expiration.ms default): its next
/// batch is accepted as from an unknown producer.
pub const PRODUCER_EXPIRY_MS: i64 = 24 * 3600 * 1000;

/// A slot whose manifest snapshot holds more producers than this is logged and counted
/// (`ringtail_producer_snapshots_large_total`): each costs ~100 bytes of every manifest commit.
/// Nothing is dropped — a producer left out would, after a take-over, have a retried batch
/// written twice; like Kafka, producers are forgotten only by time ([`PRODUCER_EXPIRY_MS`]).
pub const PRODUCER_SNAPSHOT_WARN_ENTRIES: usize = 100_000;

/// One written batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Durable batches, oldest first (what a manifest snapshot holds).
    pub recent: VecDeque<Written>,
    /// Batches accepted but not durable yet, in write order: a retry of one waits for it; if
    /// its write fails it is forgotten and the retry is written anew.
    pub in_flight: VecDeque<Written>,
    /// When it last wrote (ms since the epoch; 0: restored, counts as now).
    pub last_ms: i64,
}

impl ProducerEntry {
    fn latest(&self) -> Option<&Written> {
        self.in_flight.back().or(self.recent.back())
    }

    fn find(&self, first_seq: i32, last_seq: i32) -> Option<&Written> {
        self.recent
            .iter()
            .chain(&self.in_flight)
            .find(|w| w.first_seq == first_seq && w.last_seq == last_seq)
    }
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not idempotent, or the next batch in order: write it.
    Write,
    /// Written before: answer with this base offset, write nothing.
    Duplicate(i64),
    /// Refuse with this error code.
    Refuse(i16),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Producers {
    pub by_id: HashMap<i64, ProducerEntry>,
}

/// The sequence of the last record of a batch (sequences wrap at i32::MAX).
pub fn last_sequence(first_seq: i32, record_count: i32) -> i32 {
    let last = first_seq as i64 + record_count as i64 - 1;
    if last > i32::MAX as i64 {
        (last - i32::MAX as i64 - 1) as i32
    } else {
        last as i32
    }
}

fn next_sequence(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl Producers {
    /// Checks a batch of `producer_id` (-1: not idempotent).
    pub fn check(&self, producer_id: i64, epoch: i16, first_seq: i32, record_count: i32) -> Check {
        if producer_id < 0 {
            return Check::Write;
        }
        let Some(entry) = self.by_id.get(&producer_id) else {
            return Check::Write;
        };
        if epoch < entry.epoch {
            return Check::Refuse(ResponseError::InvalidProducerEpoch.code());
        }
        if epoch > entry.epoch {
            return if first_seq == 0 {
                Check::Write
            } else {
                Check::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
            };
        }
        let last_seq = last_sequence(first_seq, record_count);
        if let Some(w) = entry.find(first_seq, last_seq) {
            return Check::Duplicate(w.base_offset);
        }
        match entry.latest() {
            Some(last) if first_seq != next_sequence(last.last_seq) => {
                Check::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
            }
            _ => Check::Write,
        }
    }

    /// The producer's entry at `epoch`: a new epoch starts with no batches.
    fn entry_at(&mut self, producer_id: i64, epoch: i16) -> &mut ProducerEntry {
        let entry = self.by_id.entry(producer_id).or_default();
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.recent.clear();
            entry.in_flight.clear();
        }
        entry
    }

    /// Records a batch accepted for writing (not durable yet).
    pub fn start(&mut self, batch: ProducerBatch) {
        if batch.producer_id < 0 {
            return;
        }
        let entry = self.entry_at(batch.producer_id, batch.epoch);
        entry.last_ms = now_ms();
        entry.in_flight.push_back(batch.written());
    }

    /// A batch is durable (written, or replayed from the WAL at start): it joins the batches a
    /// retry is checked against and a snapshot holds.
    pub fn record(&mut self, batch: ProducerBatch) {
        if batch.producer_id < 0 {
            return;
        }
        let entry = self.entry_at(batch.producer_id, batch.epoch);
        let written = batch.written();
        entry.in_flight.retain(|w| *w != written);
        // Replaying the WAL over a restored snapshot meets batches it already knows.
        if entry.recent.contains(&written) {
            return;
        }
        entry.recent.push_back(written);
        while entry.recent.len() > RECENT_BATCHES {
            entry.recent.pop_front();
        }
    }

    /// A batch's write failed: forget it, so that its retry is written anew.
    pub fn abandon(&mut self, producer_id: i64, base_offset: i64) {
        if let Some(e) = self.by_id.get_mut(&producer_id) {
            e.in_flight.retain(|w| w.base_offset != base_offset);
        }
    }

    /// Whether the batch at `base_offset` of this producer is still being written.
    pub fn is_in_flight(&self, producer_id: i64, base_offset: i64) -> bool {
        self.by_id
            .get(&producer_id)
            .is_some_and(|e| e.in_flight.iter().any(|w| w.base_offset == base_offset))
    }

    /// Forgets producers idle for longer than [`PRODUCER_EXPIRY_MS`] (nothing in flight).
    pub fn expire(&mut self, now_ms: i64) {
        self.by_id.retain(|_, e| {
            if e.last_ms == 0 {
                e.last_ms = now_ms;
            }
            !e.in_flight.is_empty() || now_ms - e.last_ms < PRODUCER_EXPIRY_MS
        });
    }

    /// The producers a manifest snapshot holds, by id: every one that wrote within
    /// [`PRODUCER_EXPIRY_MS`] (a restored one counts as active now).
    pub fn snapshot(&self, now_ms: i64) -> Vec<(i64, &ProducerEntry)> {
        let active_ms = |e: &ProducerEntry| if e.last_ms == 0 { now_ms } else { e.last_ms };
        let mut v: Vec<(i64, &ProducerEntry)> = self
            .by_id
            .iter()
            .filter(|(_, e)| now_ms - active_ms(e) < PRODUCER_EXPIRY_MS)
            .map(|(&id, e)| (id, e))
            .collect();
        v.sort_by_key(|&(id, _)| id);
        v
    }

    /// Forgets batches below `log_start` (deleted data can no longer be a duplicate's
    /// original); producers left with nothing are forgotten.
    pub fn trim(&mut self, log_start: i64) {
        for e in self.by_id.values_mut() {
            e.recent.retain(|w| w.base_offset >= log_start);
        }
        self.by_id
            .retain(|_, e| !e.recent.is_empty() || !e.in_flight.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: i64, epoch: i16, first_seq: i32, count: i32, base: i64) -> ProducerBatch {
        ProducerBatch {
            producer_id,
            epoch,
            first_seq,
            record_count: count,
            base_offset: base,
        }
    }

    /// A partition written by many producers snapshots every one that wrote within the expiry
    /// window (it used to keep only the 64 most recently active: after a take-over a retried
    /// batch of the 65th was written twice), and none idle past it.
    #[test]
    fn a_snapshot_holds_every_unexpired_producer() {
        let now = 10 * PRODUCER_EXPIRY_MS;
        let mut p = Producers::default();
        for id in 0..1000i64 {
            p.start(batch(id, 0, 0, 1, id));
            p.record(batch(id, 0, 0, 1, id));
            p.by_id.get_mut(&id).unwrap().last_ms = now - PRODUCER_EXPIRY_MS - 500 + id;
        }
        let ids: Vec<i64> = p.snapshot(now).iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, (501..1000).collect::<Vec<_>>(), "all unexpired, by id");
        // Restored from the snapshot (a take-over), the oldest of them still knows its batch:
        // a retry of it is a duplicate, not a second write.
        let mut restored = Producers::default();
        for (id, e) in p.snapshot(now) {
            restored.by_id.insert(id, e.clone());
        }
        assert_eq!(restored.check(501, 0, 0, 1), Check::Duplicate(501));
        assert_eq!(restored.check(999, 0, 0, 1), Check::Duplicate(999));
    }

    #[test]
    fn in_order_duplicates_gaps_and_epochs() {
        let mut p = Producers::default();
        assert_eq!(p.check(-1, 0, 0, 10), Check::Write, "not idempotent");
        assert_eq!(p.check(7, 0, 0, 10), Check::Write);
        p.record(batch(7, 0, 0, 10, 100));
        assert_eq!(p.check(7, 0, 10, 5), Check::Write);
        p.record(batch(7, 0, 10, 5, 110));
        // A retry of either batch gets its offset back.
        assert_eq!(p.check(7, 0, 0, 10), Check::Duplicate(100));
        assert_eq!(p.check(7, 0, 10, 5), Check::Duplicate(110));
        // A gap, or an overlap that is not a retry, is refused.
        assert_eq!(
            p.check(7, 0, 16, 1),
            Check::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        );
        assert_eq!(
            p.check(7, 0, 12, 3),
            Check::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        );
        // Epochs: an older one is fenced; a newer one starts at 0.
        assert_eq!(
            p.check(7, -1, 15, 1),
            Check::Refuse(ResponseError::InvalidProducerEpoch.code())
        );
        assert_eq!(
            p.check(7, 1, 15, 1),
            Check::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        );
        assert_eq!(p.check(7, 1, 0, 1), Check::Write);
        p.record(batch(7, 1, 0, 1, 115));
        assert_eq!(
            p.check(7, 0, 15, 1),
            Check::Refuse(ResponseError::InvalidProducerEpoch.code())
        );
        // Another producer is independent, and may start anywhere.
        assert_eq!(p.check(8, 3, 500, 2), Check::Write);
        // Recording a batch twice (snapshot, then WAL replay) keeps one entry.
        let before = p.clone();
        p.record(batch(7, 1, 0, 1, 115));
        assert_eq!(p, before);
    }

    #[test]
    fn in_flight_batches_count_for_order_and_retries_but_not_for_snapshots() {
        let mut p = Producers::default();
        p.start(batch(3, 0, 0, 2, 10));
        assert_eq!(
            p.check(3, 0, 0, 2),
            Check::Duplicate(10),
            "a retry of an in-flight batch"
        );
        assert_eq!(
            p.check(3, 0, 2, 1),
            Check::Write,
            "continues after the in-flight batch"
        );
        assert!(p.by_id[&3].recent.is_empty(), "nothing durable yet");
        assert!(p.is_in_flight(3, 10));
        // Its write fails: forgotten, and the retry is written anew.
        p.abandon(3, 10);
        assert!(!p.is_in_flight(3, 10));
        assert_eq!(p.check(3, 0, 0, 2), Check::Write);
        p.start(batch(3, 0, 0, 2, 12));
        p.record(batch(3, 0, 0, 2, 12));
        assert_eq!(p.by_id[&3].recent.len(), 1);
        assert!(p.by_id[&3].in_flight.is_empty());
        assert_eq!(p.check(3, 0, 0, 2), Check::Duplicate(12));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut p = Producers::default();
        for i in 0..7 {
            p.record(batch(1, 0, i * 2, 2, 10 * i as i64));
        }
        assert_eq!(p.by_id[&1].recent.len(), RECENT_BATCHES);
        assert_eq!(p.check(1, 0, 12, 2), Check::Duplicate(60));
        // Too old to tell: refused as out of order rather than written twice.
        assert_eq!(
            p.check(1, 0, 0, 2),
            Check::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        );
        assert_eq!(last_sequence(i32::MAX - 1, 3), 0);
        let mut w = Producers::default();
        w.record(batch(2, 0, i32::MAX - 1, 3, 0));
        assert_eq!(
            w.check(2, 0, 1, 1),
            Check::Write,
            "continues after the wrap"
        );
        p.trim(45);
        assert_eq!(p.by_id[&1].recent.len(), 2);
        p.trim(1000);
        assert!(p.by_id.is_empty());
        // Idle producers expire; restored ones (no time yet) start their clock.
        let mut e = Producers::default();
        e.record(batch(4, 0, 0, 1, 0));
        e.by_id.get_mut(&4).unwrap().last_ms = 0;
        e.expire(1_000);
        assert_eq!(e.by_id[&4].last_ms, 1_000);
        e.expire(1_000 + PRODUCER_EXPIRY_MS - 1);
        assert!(e.by_id.contains_key(&4));
        e.expire(1_000 + PRODUCER_EXPIRY_MS);
        assert!(e.by_id.is_empty());
    }
}
