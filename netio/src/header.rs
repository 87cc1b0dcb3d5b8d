//! The fixed header of a Kafka record batch (magic 2), read without copying.
//!
//! Layout of the batch header (all big-endian):
//!
//! | bytes  | field                   | covered by CRC |
//! |--------|-------------------------|----------------|
//! | 0..8   | baseOffset              | no             |
//! | 8..12  | batchLength             | no             |
//! | 12..16 | partitionLeaderEpoch    | no             |
//! | 16     | magic (2)               | no             |
//! | 17..21 | crc (CRC-32C)           | no             |
//! | 21..23 | attributes              | yes            |
//! | 23..27 | lastOffsetDelta         | yes            |
//! | 27..35 | baseTimestamp           | yes            |
//! | 35..43 | maxTimestamp            | yes            |
//! | 43..51 | producerId              | yes            |
//! | 51..53 | producerEpoch           | yes            |
//! | 53..57 | baseSequence            | yes            |
//! | 57..61 | records count           | yes            |
//! | 61..   | records                 | yes            |

/// Size of the fixed record batch header.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before `batchLength` counts: baseOffset + batchLength itself.
pub const BATCH_LENGTH_PREFIX_LEN: usize = 12;
pub(crate) const MAGIC_OFFSET: usize = 16;
pub(crate) const CRC_OFFSET: usize = 17;
pub(crate) const CRC_START: usize = 21;
pub(crate) const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;
/// The attribute bits naming the compression codec (0: none).
pub(crate) const COMPRESSION_MASK: i16 = 0x07;

/// Fewer bytes than a batch header, or than the batch its header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("record set is truncated: {remaining} bytes left, batch needs {needed}")]
pub struct Truncated {
    pub remaining: usize,
    pub needed: usize,
}

/// A read-only view of one batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the fixed header. `bytes` must hold at least [`BATCH_HEADER_LEN`] bytes.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, Truncated> {
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(Truncated {
                remaining: bytes.len(),
                needed: BATCH_HEADER_LEN,
            });
        }
        Ok(BatchHeader {
            base_offset: be_i64(bytes, 0),
            batch_length: be_i32(bytes, 8),
            partition_leader_epoch: be_i32(bytes, 12),
            magic: bytes[MAGIC_OFFSET] as i8,
            crc: be_i32(bytes, CRC_OFFSET) as u32,
            attributes: be_i16(bytes, 21),
            last_offset_delta: be_i32(bytes, 23),
            base_timestamp: be_i64(bytes, 27),
            max_timestamp: be_i64(bytes, 35),
            producer_id: be_i64(bytes, 43),
            producer_epoch: be_i16(bytes, 51),
            base_sequence: be_i32(bytes, 53),
            record_count: be_i32(bytes, 57),
        })
    }

    /// Total size of the batch on the wire.
    pub fn size_bytes(&self) -> usize {
        self.batch_length as usize + BATCH_LENGTH_PREFIX_LEN
    }

    /// Offset of the last record once the batch sits at `base_offset`.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    /// Whether `bytes`, this whole batch, checksum to its CRC-32C (what the CRC covers: from
    /// the attributes to the end; the base offset and leader epoch are outside it).
    pub fn crc_matches(&self, bytes: &[u8]) -> bool {
        bytes.len() == self.size_bytes()
            && bytes.len() >= CRC_START
            && crc32c::crc32c(&bytes[CRC_START..]) == self.crc
    }
}

pub(crate) fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
