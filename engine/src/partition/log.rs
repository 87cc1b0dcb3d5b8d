//! A partition's log of durable batches: the seam that the hot-tail cache and the object tier
//! fill later.
//!
//! [`MemLog`] keeps every batch that is in the shard's WAL ring in memory. A batch enters it only
//! once the WAL write holding it is durable, so its end is the high watermark.

use std::collections::VecDeque;

use bytes::Bytes;
use ringtail_netio::header::BatchHeader;

use crate::catalog::topic_config::TopicConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("offset {offset} is outside the log [{log_start}, {log_end}]")]
pub struct OutOfRange {
    pub offset: i64,
    pub log_start: i64,
    pub log_end: i64,
}

/// One partition's log. Offsets are dense: a batch of n records takes n offsets.
pub trait PartitionLog {
    /// First offset still held.
    fn log_start_offset(&self) -> i64;
    /// Offset the next record gets; also the high watermark (no replication).
    fn log_end_offset(&self) -> i64;
    /// Appends a durable batch whose offsets were assigned: it must start at the log end (or, in
    /// an empty log, anywhere: the log then starts there).
    fn append(&mut self, header: BatchHeader, bytes: Bytes);
    /// Whole batches from the one holding `offset`, up to `max_bytes`; the first batch is
    /// returned even when larger if `first_batch_always` (so consumers always progress).
    fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        first_batch_always: bool,
    ) -> Result<Vec<Bytes>, OutOfRange>;
    /// Batches whose max timestamp is at least `timestamp_ms`, first one first (at most `max`).
    fn batches_from_timestamp(&self, timestamp_ms: i64, max: usize) -> Vec<Bytes>;
    /// The batch with the largest max timestamp (earliest such), if any.
    fn batch_with_max_timestamp(&self) -> Option<Bytes>;
    /// Where time and size retention would start the log: past the whole batches at the front
    /// whose max timestamp is older than `retention.ms`, or whose removal still leaves
    /// `retention.bytes` (Kafka's rule for segments); an idle log whose every batch expired is
    /// emptied (its start moves to its end). Judged only when retention is checked
    /// (`log.retention.check.interval.ms`), never on append.
    fn retention_start(&self, now_ms: i64, config: &TopicConfig) -> i64;
}

struct Entry {
    header: BatchHeader,
    bytes: Bytes,
}

#[derive(Default)]
pub struct MemLog {
    entries: VecDeque<Entry>,
    log_start: i64,
    log_end: i64,
    size_bytes: u64,
}

impl MemLog {
    pub fn new() -> MemLog {
        MemLog::default()
    }

    /// True until the first batch arrives.
    pub fn is_empty_log(&self) -> bool {
        self.entries.is_empty() && self.log_start == self.log_end
    }

    /// An empty log continues at `offset` (its older batches are elsewhere).
    pub fn reset_to(&mut self, offset: i64) {
        assert!(self.entries.is_empty(), "only an empty log moves");
        self.log_start = offset;
        self.log_end = offset;
    }

    /// Drops the batches that end below `offset` (they are safe elsewhere); the log end stays.
    pub fn evict_below(&mut self, offset: i64) -> u64 {
        let mut freed = 0;
        while self
            .entries
            .front()
            .is_some_and(|e| e.header.last_offset() < offset)
        {
            freed += self.pop_front();
        }
        freed
    }

    /// Bytes of the batches that end at or after `offset`.
    pub fn bytes_from(&self, offset: i64) -> u64 {
        let first = self
            .entries
            .partition_point(|e| e.header.last_offset() < offset);
        self.entries
            .range(first..)
            .map(|e| e.bytes.len() as u64)
            .sum()
    }

    fn pop_front(&mut self) -> u64 {
        let e = self.entries.pop_front().expect("not empty");
        self.log_start = e.header.last_offset() + 1;
        self.size_bytes -= e.bytes.len() as u64;
        e.bytes.len() as u64
    }
}

impl PartitionLog for MemLog {
    fn log_start_offset(&self) -> i64 {
        self.log_start
    }

    fn log_end_offset(&self) -> i64 {
        self.log_end
    }

    fn append(&mut self, header: BatchHeader, bytes: Bytes) {
        if self.entries.is_empty() && self.log_start == self.log_end {
            self.log_start = header.base_offset;
            self.log_end = header.base_offset;
        }
        assert_eq!(
            header.base_offset, self.log_end,
            "batches are appended densely, in offset order"
        );
        assert!(header.last_offset() >= header.base_offset);
        self.log_end = header.last_offset() + 1;
        self.size_bytes += bytes.len() as u64;
        self.entries.push_back(Entry { header, bytes });
    }

    fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        first_batch_always: bool,
    ) -> Result<Vec<Bytes>, OutOfRange> {
        if offset < self.log_start || offset > self.log_end {
            return Err(OutOfRange {
                offset,
                log_start: self.log_start,
                log_end: self.log_end,
            });
        }
        let first = self
            .entries
            .partition_point(|e| e.header.last_offset() < offset);
        let mut out = Vec::new();
        let mut taken = 0usize;
        for e in self.entries.range(first..) {
            let fits = taken + e.bytes.len() <= max_bytes;
            if !(fits || out.is_empty() && first_batch_always) {
                break;
            }
            debug_assert!(
                e.header.last_offset() >= offset,
                "served batch holds the requested offset or later"
            );
            taken += e.bytes.len();
            out.push(e.bytes.clone());
            if !fits {
                break;
            }
        }
        Ok(out)
    }

    fn batches_from_timestamp(&self, timestamp_ms: i64, max: usize) -> Vec<Bytes> {
        self.entries
            .iter()
            .skip_while(|e| e.header.max_timestamp < timestamp_ms)
            .take(max)
            .map(|e| e.bytes.clone())
            .collect()
    }

    fn batch_with_max_timestamp(&self) -> Option<Bytes> {
        let mut best: Option<&Entry> = None;
        for e in &self.entries {
            if best.is_none_or(|b| e.header.max_timestamp > b.header.max_timestamp) {
                best = Some(e);
            }
        }
        best.map(|e| e.bytes.clone())
    }

    fn retention_start(&self, now_ms: i64, config: &TopicConfig) -> i64 {
        let mut start = self.log_start;
        let mut left = self.size_bytes as i64;
        for e in &self.entries {
            let old =
                config.retention_ms >= 0 && now_ms - e.header.max_timestamp > config.retention_ms;
            let len = e.bytes.len() as i64;
            let over = config.retention_bytes >= 0 && left - len >= config.retention_bytes;
            if !(old || over) {
                break;
            }
            left -= len;
            start = e.header.last_offset() + 1;
        }
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::Compression;
    use ringtail_netio::batch::{split_and_validate, testing, ValidBatch};

    /// Appends like the produce path: assign the next offsets, then append the durable batch.
    fn append(log: &mut MemLog, batches: Vec<ValidBatch>) -> i64 {
        let base = log.log_end_offset();
        for b in batches {
            let (header, bytes) = b.assign(log.log_end_offset(), 0);
            log.append(header, bytes);
        }
        base
    }

    fn batch(n: i64, ts: i64) -> Vec<ValidBatch> {
        let values = (0..n).map(|_| Some(Bytes::from(vec![7u8; 100])));
        split_and_validate(testing::encode(values, ts, Compression::None), 1 << 20).unwrap()
    }

    #[test]
    fn offsets_are_dense_and_reads_return_whole_batches() {
        let mut log = MemLog::new();
        assert_eq!(append(&mut log, batch(3, 10)), 0);
        assert_eq!(append(&mut log, batch(2, 20)), 3);
        assert_eq!(log.log_end_offset(), 5);
        assert_eq!(log.read(4, 1 << 20, true).unwrap().len(), 1);
        assert_eq!(log.read(0, 1 << 20, true).unwrap().len(), 2);
        assert_eq!(log.read(5, 1 << 20, true).unwrap().len(), 0);
        assert_eq!(
            log.read(0, 10, true).unwrap().len(),
            1,
            "first batch even if larger"
        );
        assert_eq!(log.read(0, 10, false).unwrap().len(), 0);
        assert!(log.read(6, 100, true).is_err());
        assert!(log.read(-1, 100, true).is_err());
        assert_eq!(log.batches_from_timestamp(15, 10).len(), 1);
    }

    #[test]
    fn a_recovered_log_starts_where_its_first_batch_does() {
        let mut log = MemLog::new();
        let (header, bytes) = batch(4, 10).into_iter().next().unwrap().assign(100, 0);
        log.append(header, bytes);
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (100, 104));
        assert!(log.read(99, 100, true).is_err());
    }

    #[test]
    #[should_panic(expected = "densely")]
    fn a_gap_is_refused() {
        let mut log = MemLog::new();
        let (h, b) = batch(1, 10).into_iter().next().unwrap().assign(0, 0);
        log.append(h, b);
        let (h, b) = batch(1, 10).into_iter().next().unwrap().assign(5, 0);
        log.append(h, b);
    }

    #[test]
    fn retention_starts_past_expired_or_surplus_whole_batches() {
        let mut log = MemLog::new();
        append(&mut log, batch(3, 10)); // offsets 0..3, about 1.1 KB
        append(&mut log, batch(2, 20)); // 3..5
        append(&mut log, batch(1, 1000)); // 5
        let by_size = TopicConfig {
            retention_bytes: 1,
            ..TopicConfig::default()
        };
        assert_eq!(
            log.retention_start(0, &by_size),
            5,
            "what stays holds retention.bytes"
        );
        let none_left = TopicConfig {
            retention_bytes: 0,
            ..TopicConfig::default()
        };
        assert_eq!(log.retention_start(0, &none_left), 6);
        let by_time = TopicConfig {
            retention_ms: 5,
            ..TopicConfig::default()
        };
        assert_eq!(
            log.retention_start(20, &by_time),
            3,
            "judged by each batch's max timestamp"
        );
        assert_eq!(
            log.retention_start(1_000_000, &by_time),
            6,
            "all expired: emptied"
        );
        assert_eq!(log.retention_start(0, &TopicConfig::default()), 0);
        // Size: a batch goes only if what stays still holds retention.bytes.
        let all = log.size_bytes as i64;
        let keep_most = TopicConfig {
            retention_bytes: all - 10,
            ..TopicConfig::default()
        };
        assert_eq!(log.retention_start(0, &keep_most), 0);
        // Judging moves nothing: the partition applies it as a deletion.
        assert_eq!(log.log_start_offset(), 0);
        log.evict_below(log.retention_start(1_000, &by_time));
        assert_eq!(log.log_start_offset(), 5);
        assert_eq!(log.retention_start(1_000, &by_time), 5);
        log.evict_below(log.retention_start(1_000_000, &by_time));
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (6, 6));
    }
}
