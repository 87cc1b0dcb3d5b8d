//! What one produce request may decompress to validate its compressed batches, and the record
//! walk that draws on it.

use std::ops::ControlFlow;

use crate::batch::valid::BatchError;
use crate::header::{BatchHeader, COMPRESSION_MASK};
use crate::records::{RecordsError, DECOMPRESSED_BATCH_BYTES_MAX};

/// Bytes of records every produce request may decompress, whatever its size: one batch at
/// the per-batch cap always fits.
pub const REQUEST_DECOMPRESSED_BYTES_BASE: u64 = DECOMPRESSED_BATCH_BYTES_MAX as u64;
/// Plus this many times the request's record bytes: real producers' data compresses 2-10x
/// (text, JSON, logs), so 16x leaves room; a bomb expands 1000x and more.
pub const REQUEST_DECOMPRESSION_RATIO: u64 = 16;
/// The most one request may decompress: about 0.1 s of zstd and 1-2 s of gzip on one core,
/// the longest validation may hold a shard thread for one request.
pub const REQUEST_DECOMPRESSED_BYTES_MAX: u64 = 1 << 30;

/// The bytes of records one produce request may still decompress to validate its compressed
/// batches, shared by all its partitions. The per-batch cap
/// ([`DECOMPRESSED_BATCH_BYTES_MAX`]) alone bounds memory, not CPU: a batch of a few kB can
/// expand to 127 MiB, and a request can hold thousands of them. Uncompressed batches are not
/// charged: walking them costs what their bytes, already received, cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecompressBudget {
    total: u64,
    spent: u64,
}

impl DecompressBudget {
    /// The budget of a request carrying `record_bytes` bytes of record sets:
    /// [`REQUEST_DECOMPRESSED_BYTES_BASE`] + [`REQUEST_DECOMPRESSION_RATIO`] x `record_bytes`,
    /// at most [`REQUEST_DECOMPRESSED_BYTES_MAX`].
    pub fn for_request(record_bytes: usize) -> DecompressBudget {
        let total = (record_bytes as u64)
            .saturating_mul(REQUEST_DECOMPRESSION_RATIO)
            .saturating_add(REQUEST_DECOMPRESSED_BYTES_BASE)
            .min(REQUEST_DECOMPRESSED_BYTES_MAX);
        DecompressBudget { total, spent: 0 }
    }

    /// Bytes of records decompressed so far.
    pub fn spent(&self) -> u64 {
        self.spent
    }

    fn remaining(&self) -> u64 {
        self.total - self.spent
    }

    fn charge(&mut self, bytes: u64) {
        // A walk reads at most its cap, which is at most what remains.
        debug_assert!(bytes <= self.remaining(), "walk read beyond its cap");
        self.spent = self.spent.saturating_add(bytes).min(self.total);
    }
}

/// The record walk of [`split_and_validate_next`](crate::batch::split_and_validate_next): an uncompressed batch's records in place,
/// a compressed one's decompressed as a stream on the request's budget.
pub(super) fn check_records(
    bytes: &[u8],
    header: BatchHeader,
    budget: &mut DecompressBudget,
) -> Result<(), BatchError> {
    if header.attributes & COMPRESSION_MASK == 0 {
        crate::records::walk(bytes, DECOMPRESSED_BATCH_BYTES_MAX, |_| {
            ControlFlow::Continue(())
        })?;
        return Ok(());
    }
    within_budget(budget, |cap, read| {
        crate::records::walk_metered(bytes, cap, read, |_| ControlFlow::Continue(()))
    })
}

/// Runs `decompress` (which adds the bytes it decompressed to its `read`) with a cap of what
/// is left of `budget`, at most [`DECOMPRESSED_BATCH_BYTES_MAX`], and charges what it read.
/// Refused unrun when nothing is left; a batch stopped by a cap below the per-batch one ran
/// out of budget ([`BatchError::DecompressBudget`]).
pub(super) fn within_budget(
    budget: &mut DecompressBudget,
    decompress: impl FnOnce(usize, &mut u64) -> Result<(), RecordsError>,
) -> Result<(), BatchError> {
    let over_budget = BatchError::DecompressBudget {
        budget_bytes: budget.total,
    };
    let remaining = budget.remaining();
    if remaining == 0 {
        return Err(over_budget);
    }
    let cap = remaining.min(DECOMPRESSED_BATCH_BYTES_MAX as u64);
    let mut read = 0;
    let decompressed = decompress(cap as usize, &mut read);
    budget.charge(read);
    match decompressed {
        Err(RecordsError::TooLarge { .. }) if cap < DECOMPRESSED_BATCH_BYTES_MAX as u64 => {
            Err(over_budget)
        }
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::samples::{encode, record, sample};
    use crate::batch::validate::split_and_validate_within;
    use bytes::BytesMut;
    use kafka_protocol::records::{Compression, Record};

    #[test]
    fn a_requests_compressed_batches_share_one_decompression_budget() {
        // Batches of 10 records of 1 MiB of zeros: ~1 kB compressed, ~10 MiB of records.
        let zeros = vec![0u8; 1 << 20];
        let records: Vec<Record> = (0..10).map(|i| record(i, Some(&zeros))).collect();
        let bomb = encode(&records, Compression::Zstd);
        let expanded = 10 * (1 << 20) as u64;
        assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
        let set = |n: usize| {
            let mut b = BytesMut::new();
            for _ in 0..n {
                b.extend_from_slice(&bomb);
            }
            b
        };
        // The budget of a small request is the base: 12 batches (~120 MiB) fit in it.
        let mut budget = DecompressBudget::for_request(0);
        let within = split_and_validate_within(set(12), 1 << 20, &mut budget).unwrap();
        assert_eq!(within.len(), 12);
        assert!(budget.spent() >= 12 * expanded && budget.spent() < 13 * expanded);
        // The 13th batch, in the same record set or another of the request, no longer fits:
        // it is refused after reading the records that fit what was left (less than one
        // record of 1 MiB remains), and the next one unread.
        let err = split_and_validate_within(set(2), 1 << 20, &mut budget).unwrap_err();
        assert_eq!(
            err,
            BatchError::DecompressBudget {
                budget_bytes: REQUEST_DECOMPRESSED_BYTES_BASE
            }
        );
        let left = REQUEST_DECOMPRESSED_BYTES_BASE - budget.spent();
        assert!(left < (1 << 20) + 64, "{left} bytes left");
        assert_eq!(
            split_and_validate_within(set(1), 1 << 20, &mut budget).unwrap_err(),
            err
        );
        // Uncompressed batches cost their own bytes only and are not charged.
        assert_eq!(
            split_and_validate_within(sample(Compression::None), 1 << 20, &mut budget)
                .unwrap()
                .len(),
            1
        );
        // The budget grows with the request's bytes, up to its cap.
        let budget = |bytes: usize| DecompressBudget::for_request(bytes).remaining();
        assert_eq!(budget(0), REQUEST_DECOMPRESSED_BYTES_BASE);
        assert_eq!(
            budget(1 << 20),
            REQUEST_DECOMPRESSED_BYTES_BASE + REQUEST_DECOMPRESSION_RATIO * (1 << 20)
        );
        assert_eq!(budget(100 << 20), REQUEST_DECOMPRESSED_BYTES_MAX);
        assert_eq!(budget(usize::MAX), REQUEST_DECOMPRESSED_BYTES_MAX);
        // A single batch up to the per-batch cap always fits a request's budget.
        assert!(REQUEST_DECOMPRESSED_BYTES_BASE >= DECOMPRESSED_BATCH_BYTES_MAX as u64);
    }
}
