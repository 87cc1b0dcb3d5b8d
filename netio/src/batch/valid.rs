//! A validated batch, still mutable so that its owner can assign its offset, and why a batch
//! is refused.

use bytes::{Bytes, BytesMut};

use crate::codec::CompressError;
use crate::header::{BatchHeader, Truncated, ATTRIBUTE_LOG_APPEND_TIME, CRC_OFFSET, CRC_START};
use crate::records::RecordsError;

/// Why a batch was refused. Each maps to one Kafka error code in the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record set is truncated: {remaining} bytes left, batch needs {needed}")]
    Truncated { remaining: usize, needed: usize },
    #[error("batch length {0} is below the minimum header size")]
    LengthTooSmall(i32),
    #[error("unsupported record batch magic {0} (only magic 2 is accepted)")]
    Magic(i8),
    #[error("CRC-32C mismatch: batch says {expected:#010x}, bytes give {actual:#010x}")]
    Crc { expected: u32, actual: u32 },
    #[error("batch of {size_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    #[error("record count {count} does not match lastOffsetDelta {last_offset_delta}")]
    CountMismatch { count: i32, last_offset_delta: i32 },
    #[error("record set holds no batch")]
    Empty,
    #[error(
        "the request's records expand beyond its decompression budget of {budget_bytes} bytes \
         (128 MiB + 16 x its record bytes, at most 1 GiB); its remaining compressed batches \
         are refused"
    )]
    DecompressBudget { budget_bytes: u64 },
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error("clients are not allowed to write control batches")]
    Control,
    #[error("invalid sequence number {base_sequence} in a batch with producer id {producer_id}")]
    Sequence {
        producer_id: i64,
        base_sequence: i32,
    },
    #[error(transparent)]
    Compress(#[from] CompressError),
}

impl From<Truncated> for BatchError {
    fn from(t: Truncated) -> BatchError {
        BatchError::Truncated {
            remaining: t.remaining,
            needed: t.needed,
        }
    }
}

/// One validated batch, still mutable so that the owner can assign its offset.
#[derive(Debug)]
pub struct ValidBatch {
    pub header: BatchHeader,
    pub(super) bytes: BytesMut,
}

impl ValidBatch {
    /// Assigns the batch its place in the log: patches `baseOffset` and `partitionLeaderEpoch`
    /// in place (both lie outside the CRC, so the producer's checksum stays valid) and freezes it.
    pub fn assign(mut self, base_offset: i64, leader_epoch: i32) -> (BatchHeader, Bytes) {
        assert!(base_offset >= 0, "offsets are never negative");
        self.bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
        self.bytes[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
        self.header.base_offset = base_offset;
        self.header.partition_leader_epoch = leader_epoch;
        debug_assert_eq!(
            BatchHeader::parse(&self.bytes).map(|h| h.base_offset),
            Ok(base_offset)
        );
        (self.header, self.bytes.freeze())
    }

    /// Stamps the batch with the broker's append time (topic `message.timestamp.type` =
    /// LogAppendTime), as Kafka does: timestamp-type attribute bit and `maxTimestamp` are set,
    /// and the CRC is recomputed over the (unchanged) records in place.
    pub fn set_log_append_time(&mut self, now_ms: i64) {
        let attributes = self.header.attributes | ATTRIBUTE_LOG_APPEND_TIME;
        self.bytes[21..23].copy_from_slice(&attributes.to_be_bytes());
        self.bytes[35..43].copy_from_slice(&now_ms.to_be_bytes());
        let crc = crc32c::crc32c(&self.bytes[CRC_START..]);
        self.bytes[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
        self.header.attributes = attributes;
        self.header.max_timestamp = now_ms;
        self.header.crc = crc;
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::samples::sample;
    use crate::batch::validate::split_and_validate;
    use kafka_protocol::records::{Compression, RecordBatchDecoder, TimestampType};

    #[test]
    fn log_append_time_keeps_a_valid_crc() {
        let batches = split_and_validate(sample(Compression::Zstd), 1 << 20).unwrap();
        let mut batch = batches.into_iter().next().unwrap();
        batch.set_log_append_time(1_800_000_000_000);
        let (_, bytes) = batch.assign(5, 0);
        let again = split_and_validate(BytesMut::from(&bytes[..]), 1 << 20).expect("crc valid");
        assert_eq!(again[0].header.max_timestamp, 1_800_000_000_000);
        let set = RecordBatchDecoder::decode(&mut bytes.clone()).unwrap();
        assert!(set
            .records
            .iter()
            .all(|r| r.timestamp_type == TimestampType::LogAppend));
    }
}
