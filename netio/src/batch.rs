//! Kafka record batches (magic 2), validated and offset-patched in place.
//!
//! A record batch is kept exactly as the producer sent it. The broker only rewrites the two
//! fields that lie outside the CRC: `baseOffset` and `partitionLeaderEpoch`. Records are not
//! re-encoded on the produce path (compressed batches stay compressed); they are only walked
//! as a stream to validate them (`records.rs`). The one exception is a topic whose
//! `compression.type` names a codec other than the batch's: its records are recompressed into
//! that codec as Kafka does, every other header field kept and the CRC recomputed.
//!
//! The header's layout and reader are in `header.rs`.

use std::ops::ControlFlow;

use bytes::{Bytes, BytesMut};

use crate::codec::{CompressError, Target};
use crate::header::{
    BatchHeader, Truncated, ATTRIBUTE_LOG_APPEND_TIME, BATCH_HEADER_LEN, BATCH_LENGTH_PREFIX_LEN,
    COMPRESSION_MASK, CRC_OFFSET, CRC_START,
};
use crate::records::{RecordsError, DECOMPRESSED_BATCH_BYTES_MAX};

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
    bytes: BytesMut,
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

/// Splits a produce record set into batches and validates each: magic 2, length within the
/// record set, length at most `batch_bytes_max`, CRC-32C, record count consistent with
/// `lastOffsetDelta`, not a control batch, a sequence when a producer id is set, and the
/// records themselves as Kafka checks them: decompressed as a stream (at most
/// [`DECOMPRESSED_BATCH_BYTES_MAX`] bytes), well-formed, offset deltas 0, 1, 2, ..., exactly
/// the header's count. Compressed batches draw on a budget of their own,
/// [`DecompressBudget::for_request`] of `records`' length; see [`split_and_validate_within`].
/// No bytes are copied: each batch is a disjoint part of `records`.
pub fn split_and_validate(
    records: BytesMut,
    batch_bytes_max: usize,
) -> Result<Vec<ValidBatch>, BatchError> {
    let mut budget = DecompressBudget::for_request(records.len());
    split_and_validate_within(records, batch_bytes_max, &mut budget)
}

/// [`split_and_validate`] for one record set of a request: its compressed batches draw on the
/// request's `budget`. Once it is spent, the batch that needs more is refused
/// ([`BatchError::DecompressBudget`]), and a batch met with nothing left is refused unread.
pub fn split_and_validate_within(
    mut records: BytesMut,
    batch_bytes_max: usize,
    budget: &mut DecompressBudget,
) -> Result<Vec<ValidBatch>, BatchError> {
    let mut batches = Vec::new();
    while !records.is_empty() {
        batches.push(split_and_validate_next(
            &mut records,
            batch_bytes_max,
            budget,
            None,
        )?);
    }
    if batches.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(batches)
}

/// One step of [`split_and_validate_within`], for a caller that lets other work run between
/// batches: splits the first batch off `records` (not empty) and validates it. With a
/// `target` (the topic's `compression.type` when not `producer`), a batch in another codec
/// is recompressed into it ([`recompress`]); otherwise, the common case, it stays in place.
pub fn split_and_validate_next(
    records: &mut BytesMut,
    batch_bytes_max: usize,
    budget: &mut DecompressBudget,
    target: Option<Target>,
) -> Result<ValidBatch, BatchError> {
    assert!(!records.is_empty(), "no batch left to split off");
    let header = BatchHeader::parse(records)?;
    if (header.batch_length as usize) < BATCH_HEADER_LEN - BATCH_LENGTH_PREFIX_LEN
        || header.batch_length < 0
    {
        return Err(BatchError::LengthTooSmall(header.batch_length));
    }
    let size_bytes = header.size_bytes();
    if header.magic != 2 {
        return Err(BatchError::Magic(header.magic));
    }
    if size_bytes > records.len() {
        return Err(BatchError::Truncated {
            remaining: records.len(),
            needed: size_bytes,
        });
    }
    if size_bytes > batch_bytes_max {
        return Err(BatchError::TooLarge {
            size_bytes,
            max_bytes: batch_bytes_max,
        });
    }
    let bytes = records.split_to(size_bytes);
    let actual = crc32c::crc32c(&bytes[CRC_START..]);
    if actual != header.crc {
        return Err(BatchError::Crc {
            expected: header.crc,
            actual,
        });
    }
    if header.record_count <= 0
        || header.last_offset_delta < 0
        || header.record_count as i64 != header.last_offset_delta as i64 + 1
    {
        return Err(BatchError::CountMismatch {
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    // As Kafka's validation of a client's batch: no control batches (only a transaction
    // coordinator writes them), and an idempotent batch carries a sequence.
    if header.is_control() {
        return Err(BatchError::Control);
    }
    if header.producer_id >= 0 && header.base_sequence < 0 {
        return Err(BatchError::Sequence {
            producer_id: header.producer_id,
            base_sequence: header.base_sequence,
        });
    }
    match target.filter(|t| t.codec().id() != header.attributes & COMPRESSION_MASK) {
        None => {
            check_records(&bytes, header, budget)?;
            Ok(ValidBatch { header, bytes })
        }
        Some(target) => recompress(&bytes, header, target, batch_bytes_max, budget),
    }
}

/// The record walk of [`split_and_validate_next`]: an uncompressed batch's records in place,
/// a compressed one's decompressed as a stream on the request's budget.
fn check_records(
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
fn within_budget(
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

/// A validated batch (CRC, header) whose records are stored in `target`'s codec, as Kafka's
/// `LogValidator` does when a topic's `compression.type` differs from the producer's: the
/// records are checked as they are decompressed (on the request's budget), recompressed
/// byte for byte (offset and timestamp deltas, keys, values, headers), and the header keeps
/// everything but the codec bits, `batchLength` and the CRC: base and max timestamp,
/// producer id, epoch and base sequence (so idempotent dedupe sees the same batch), the
/// transactional and timestamp-type bits. The new batch must still fit `batch_bytes_max`
/// (recompressing can grow it), else [`BatchError::TooLarge`], as Kafka answers.
pub fn recompress(
    bytes: &[u8],
    mut header: BatchHeader,
    target: Target,
    batch_bytes_max: usize,
    budget: &mut DecompressBudget,
) -> Result<ValidBatch, BatchError> {
    let mut decompressed = Vec::new();
    let records = if header.attributes & COMPRESSION_MASK == 0 {
        check_records(bytes, header, budget)?;
        &bytes[BATCH_HEADER_LEN..]
    } else {
        within_budget(budget, |cap, read| {
            crate::records::decompress_metered(bytes, cap, read, &mut decompressed)
        })?;
        &decompressed[..]
    };
    let mut out = BytesMut::with_capacity(BATCH_HEADER_LEN + records.len());
    out.extend_from_slice(&bytes[..BATCH_HEADER_LEN]);
    target.compress(records, &mut out)?;
    if out.capacity() - out.len() > out.len() / 8 {
        // The log holds a batch's whole allocation as long as it holds the batch: a copy of
        // the compressed bytes costs little next to compressing them.
        out = BytesMut::from(&out[..]);
    }
    if out.len() > batch_bytes_max {
        return Err(BatchError::TooLarge {
            size_bytes: out.len(),
            max_bytes: batch_bytes_max,
        });
    }
    header.batch_length =
        i32::try_from(out.len() - BATCH_LENGTH_PREFIX_LEN).map_err(|_| BatchError::TooLarge {
            size_bytes: out.len(),
            max_bytes: i32::MAX as usize,
        })?;
    header.attributes = (header.attributes & !COMPRESSION_MASK) | target.codec().id();
    out[8..12].copy_from_slice(&header.batch_length.to_be_bytes());
    out[21..23].copy_from_slice(&header.attributes.to_be_bytes());
    header.crc = crc32c::crc32c(&out[CRC_START..]);
    out[CRC_OFFSET..CRC_START].copy_from_slice(&header.crc.to_be_bytes());
    debug_assert_eq!(BatchHeader::parse(&out), Ok(header));
    Ok(ValidBatch { header, bytes: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::header::MAGIC_OFFSET;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    fn record(i: i64, value: Option<&[u8]>) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: value.map(Bytes::copy_from_slice),
            headers: Default::default(),
        }
    }

    fn encode(records: &[Record], compression: Compression) -> BytesMut {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        buf
    }

    fn sample(compression: Compression) -> BytesMut {
        let records: Vec<Record> = (0..10)
            .map(|i| record(i, if i == 3 { None } else { Some(b"hello world") }))
            .collect();
        encode(&records, compression)
    }

    #[test]
    fn valid_batches_of_every_codec_pass_and_patch_in_place() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let buf = sample(compression);
            let ptr = buf.as_ptr();
            let batches = split_and_validate(buf, 1 << 20).expect("valid");
            assert_eq!(batches.len(), 1);
            assert_eq!(batches[0].header.record_count, 10);
            let (header, bytes) = batches.into_iter().next().unwrap().assign(4242, 7);
            assert_eq!(bytes.as_ptr(), ptr, "patched in place, not copied");
            assert_eq!(header.base_offset, 4242);
            assert_eq!(header.last_offset(), 4251);
            // The patched batch still decodes, with the new offsets, and its CRC still holds.
            let mut b = bytes.clone();
            let set = RecordBatchDecoder::decode(&mut b).expect("decodes");
            let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, (4242..4252).collect::<Vec<_>>());
            assert_eq!(set.records[3].value, None);
            assert_eq!(set.records[0].partition_leader_epoch, 7);
            split_and_validate(BytesMut::from(&bytes[..]), 1 << 20).expect("crc still valid");
        }
    }

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

    const LIBRDKAFKA: [(&str, &[u8]); 5] = [
        (
            "none",
            include_bytes!("../tests/fixtures/librdkafka-2.0-none.bin"),
        ),
        (
            "gzip",
            include_bytes!("../tests/fixtures/librdkafka-2.0-gzip.bin"),
        ),
        (
            "snappy",
            include_bytes!("../tests/fixtures/librdkafka-2.0-snappy.bin"),
        ),
        (
            "lz4",
            include_bytes!("../tests/fixtures/librdkafka-2.0-lz4.bin"),
        ),
        (
            "zstd",
            include_bytes!("../tests/fixtures/librdkafka-2.0-zstd.bin"),
        ),
    ];

    #[test]
    fn librdkafka_batches_validate_patch_and_decode() {
        for (codec, fixture) in LIBRDKAFKA {
            let batches = split_and_validate(BytesMut::from(fixture), 1 << 20)
                .unwrap_or_else(|e| panic!("{codec}: {e}"));
            assert_eq!(batches.len(), 1, "{codec}");
            assert_eq!(
                batches[0].header.partition_leader_epoch, -1,
                "{codec}: as the producer sent it"
            );
            assert_eq!(batches[0].header.record_count, 5, "{codec}");
            let (_, bytes) = batches.into_iter().next().unwrap().assign(1_000_000, 3);
            assert_eq!(
                &bytes[21..],
                &fixture[21..],
                "{codec}: CRC-covered bytes untouched"
            );
            let set = RecordBatchDecoder::decode(&mut bytes.clone())
                .unwrap_or_else(|e| panic!("{codec}: {e}"));
            for (i, r) in set.records.iter().enumerate() {
                assert_eq!(r.offset, 1_000_000 + i as i64, "{codec}");
                assert_eq!(
                    r.key.as_deref(),
                    Some(format!("key{i}").as_bytes()),
                    "{codec}"
                );
                let value = format!("value-{i}-{}", "x".repeat(i * 10));
                assert_eq!(r.value.as_deref(), Some(value.as_bytes()), "{codec}");
                let headers: Vec<(&str, Option<&[u8]>)> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_deref()))
                    .collect();
                assert_eq!(headers, vec![("h", Some(&b"v"[..]))], "{codec}");
            }
        }
    }

    #[test]
    fn any_flipped_bit_in_a_librdkafka_batch_is_caught() {
        for (codec, fixture) in LIBRDKAFKA {
            for at in (CRC_OFFSET..fixture.len()).step_by(7) {
                let mut b = BytesMut::from(fixture);
                b[at] ^= 0x10;
                let r = split_and_validate(b, 1 << 20);
                assert!(r.is_err(), "{codec}: flip at byte {at} accepted");
            }
        }
    }

    #[test]
    fn several_batches_split_without_copy() {
        let mut buf = sample(Compression::None);
        buf.extend_from_slice(&sample(Compression::Lz4));
        let batches = split_and_validate(buf, 1 << 20).unwrap();
        assert_eq!(batches.len(), 2);
    }

    #[test]
    fn corrupt_crc_is_refused() {
        let mut buf = sample(Compression::None);
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        assert!(matches!(
            split_and_validate(buf, 1 << 20),
            Err(BatchError::Crc { .. })
        ));
    }

    #[test]
    fn wrong_magic_is_refused() {
        let mut buf = sample(Compression::None);
        buf[MAGIC_OFFSET] = 1;
        assert_eq!(
            split_and_validate(buf, 1 << 20).unwrap_err(),
            BatchError::Magic(1)
        );
    }

    #[test]
    fn truncated_and_short_sets_are_refused() {
        let buf = sample(Compression::Gzip);
        let short = BytesMut::from(&buf[..buf.len() - 1]);
        assert!(matches!(
            split_and_validate(short, 1 << 20),
            Err(BatchError::Truncated { .. })
        ));
        let tiny = BytesMut::from(&buf[..20]);
        assert!(matches!(
            split_and_validate(tiny, 1 << 20),
            Err(BatchError::Truncated { .. })
        ));
        assert_eq!(
            split_and_validate(BytesMut::new(), 1 << 20).unwrap_err(),
            BatchError::Empty
        );
        let mut neg = buf.clone();
        neg[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            split_and_validate(neg, 1 << 20),
            Err(BatchError::LengthTooSmall(-5))
        ));
    }

    #[test]
    fn oversize_batch_is_refused() {
        let buf = sample(Compression::None);
        let len = buf.len();
        assert_eq!(
            split_and_validate(buf, len - 1).unwrap_err(),
            BatchError::TooLarge {
                size_bytes: len,
                max_bytes: len - 1
            }
        );
    }

    /// Sets attributes, producer id and base sequence, and fixes the CRC.
    fn with_producer(
        mut buf: BytesMut,
        attributes: i16,
        producer_id: i64,
        sequence: i32,
    ) -> BytesMut {
        buf[21..23].copy_from_slice(&attributes.to_be_bytes());
        buf[43..51].copy_from_slice(&producer_id.to_be_bytes());
        buf[53..57].copy_from_slice(&sequence.to_be_bytes());
        let crc = crc32c::crc32c(&buf[CRC_START..]);
        buf[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
        buf
    }

    #[test]
    fn control_batches_and_idempotent_batches_without_sequence_are_refused() {
        let buf = with_producer(sample(Compression::None), 0x20, 7, 0);
        assert_eq!(
            split_and_validate(buf, 1 << 20).unwrap_err(),
            BatchError::Control
        );
        let buf = with_producer(sample(Compression::None), 0, 7, -1);
        assert_eq!(
            split_and_validate(buf, 1 << 20).unwrap_err(),
            BatchError::Sequence {
                producer_id: 7,
                base_sequence: -1
            }
        );
        // Idempotent and transactional batches pass here (the broker decides on them).
        let buf = with_producer(sample(Compression::Zstd), 0x10 | 4, 7, 0);
        let batches = split_and_validate(buf, 1 << 20).unwrap();
        assert!(batches[0].header.is_transactional());
    }

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

    const CODECS: [(Compression, Codec); 5] = [
        (Compression::None, Codec::None),
        (Compression::Gzip, Codec::Gzip),
        (Compression::Snappy, Codec::Snappy),
        (Compression::Lz4, Codec::Lz4),
        (Compression::Zstd, Codec::Zstd),
    ];

    /// A batch as an idempotent producer sends it: producer id, epoch and base sequence set,
    /// records with keys, null and non-null values and headers, CRC fixed.
    fn idempotent(compression: Compression) -> BytesMut {
        let records: Vec<Record> = (0..50)
            .map(|i| {
                let mut r = record(i, (i != 3).then_some(&b"hello world hello world"[..]));
                r.headers
                    .insert("h".into(), Some(Bytes::from(format!("v{i}"))));
                r
            })
            .collect();
        let mut buf = encode(&records, compression);
        buf[43..51].copy_from_slice(&77i64.to_be_bytes());
        buf[51..53].copy_from_slice(&5i16.to_be_bytes());
        buf[53..57].copy_from_slice(&1000i32.to_be_bytes());
        let crc = crc32c::crc32c(&buf[CRC_START..]);
        buf[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
        buf
    }

    /// `to` at Kafka's default level.
    fn kafka_default(to: Codec) -> Target {
        let level = match to {
            Codec::Gzip => crate::codec::GZIP_LEVEL_DEFAULT,
            Codec::Lz4 => crate::codec::LZ4_LEVEL_DEFAULT,
            Codec::Zstd => crate::codec::ZSTD_LEVEL_DEFAULT,
            Codec::None | Codec::Snappy => 0,
        };
        Target::new(to, level).unwrap()
    }

    fn next(mut buf: BytesMut, target: Option<Target>) -> Result<ValidBatch, BatchError> {
        let mut budget = DecompressBudget::for_request(buf.len());
        split_and_validate_next(&mut buf, 1 << 20, &mut budget, target)
    }

    #[test]
    fn recompression_between_every_pair_of_codecs_keeps_everything_but_the_codec() {
        for (from, _) in CODECS {
            let sent = idempotent(from);
            let sent_header = BatchHeader::parse(&sent).unwrap();
            let sent_records = RecordBatchDecoder::decode(&mut sent.clone().freeze()).unwrap();
            for (to_compression, to) in CODECS {
                let what = format!("{from:?} -> {to:?}");
                let target = kafka_default(to);
                let batch = next(sent.clone(), Some(target)).expect(&what);
                let (header, bytes) = batch.assign(9000, 4);
                assert_eq!(header.attributes & COMPRESSION_MASK, to.id(), "{what}");
                assert_eq!(BatchHeader::parse(&bytes).unwrap(), header, "{what}");
                assert_eq!(header.size_bytes(), bytes.len(), "{what}");
                // Every header field but the codec bits, the length and the CRC is kept.
                let unchanged = |h: BatchHeader| BatchHeader {
                    base_offset: 0,
                    partition_leader_epoch: 0,
                    batch_length: 0,
                    crc: 0,
                    attributes: h.attributes & !COMPRESSION_MASK,
                    ..h
                };
                assert_eq!(unchanged(header), unchanged(sent_header), "{what}");
                assert_eq!(header.producer_id, 77);
                assert_eq!(header.producer_epoch, 5);
                assert_eq!(header.base_sequence, 1000);
                // The CRC holds, the records validate and decode as sent, at their new offsets.
                let again = split_and_validate(BytesMut::from(&bytes[..]), 1 << 20).expect(&what);
                assert_eq!(again[0].header, header, "{what}");
                let stored = RecordBatchDecoder::decode(&mut bytes.clone()).expect(&what);
                assert_eq!(stored.compression, to_compression, "{what}");
                assert_eq!(stored.records.len(), 50, "{what}");
                assert_eq!(sent_records.records[0].sequence, 1000);
                for (s, r) in sent_records.records.iter().zip(&stored.records) {
                    assert_eq!(r.offset, s.offset + 9000, "{what}");
                    let same = |r: &Record| {
                        (
                            r.timestamp,
                            r.key.clone(),
                            r.value.clone(),
                            r.headers.clone(),
                        )
                    };
                    assert_eq!(same(r), same(s), "{what}");
                    assert_eq!((r.producer_id, r.sequence), (77, s.sequence), "{what}");
                }
                if from == to_compression {
                    assert_eq!(&bytes[21..], &sent[21..], "{what}: in place, untouched");
                }
            }
        }
    }

    #[test]
    fn a_batch_already_in_the_topics_codec_stays_in_place() {
        let buf = sample(Compression::Lz4);
        let ptr = buf.as_ptr();
        let (_, bytes) = next(buf, Some(Target::new(Codec::Lz4, 1).unwrap()))
            .unwrap()
            .assign(1, 0);
        assert_eq!(bytes.as_ptr(), ptr, "not copied");
    }

    #[test]
    fn recompressing_a_corrupt_batch_or_a_bomb_is_refused() {
        let zstd = Target::new(Codec::Zstd, 3).unwrap();
        // Records that do not decompress, under a valid CRC.
        let mut broken = sample(Compression::Lz4);
        let n = broken.len();
        broken[n - 8..].copy_from_slice(&[0xff; 8]);
        let crc = crc32c::crc32c(&broken[CRC_START..]);
        broken[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            next(broken, Some(zstd)),
            Err(BatchError::Records(RecordsError::Corrupt(_)))
        ));
        // Well-formed compression of malformed records: a count that does not match.
        let mut miscounted = sample(Compression::Gzip);
        miscounted[57..61].copy_from_slice(&9i32.to_be_bytes());
        miscounted[23..27].copy_from_slice(&8i32.to_be_bytes());
        let crc = crc32c::crc32c(&miscounted[CRC_START..]);
        miscounted[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            next(miscounted, Some(zstd)),
            Err(BatchError::Records(RecordsError::Count { .. }))
        ));
        // A bad CRC is refused before anything is decompressed.
        let mut flipped = sample(Compression::Snappy);
        flipped[70] ^= 1;
        assert!(matches!(
            next(flipped, Some(zstd)),
            Err(BatchError::Crc { .. })
        ));
        // Decompressing for recompression draws on the request's budget as validation does:
        // batches of 20 MiB of zeros (a few kB each), 6 fit the base budget, the 7th not.
        let lz4 = Some(Target::new(Codec::Lz4, 1).unwrap());
        let zeros = vec![0u8; 1 << 20];
        let records: Vec<Record> = (0..20).map(|i| record(i, Some(&zeros))).collect();
        let bomb = encode(&records, Compression::Zstd);
        let mut budget = DecompressBudget::for_request(0);
        for _ in 0..6 {
            split_and_validate_next(&mut bomb.clone(), 1 << 20, &mut budget, lz4).unwrap();
        }
        assert!(budget.spent() > (6 * 20) << 20);
        assert_eq!(
            split_and_validate_next(&mut bomb.clone(), 1 << 20, &mut budget, lz4).unwrap_err(),
            BatchError::DecompressBudget {
                budget_bytes: REQUEST_DECOMPRESSED_BYTES_BASE
            }
        );
    }

    #[test]
    fn a_batch_that_recompresses_beyond_the_limit_is_too_large() {
        let buf = sample(Compression::Zstd);
        let uncompressed = Target::new(Codec::None, 0).unwrap();
        let size = next(buf.clone(), Some(uncompressed)).unwrap().len();
        assert!(size > buf.len());
        let mut budget = DecompressBudget::for_request(buf.len());
        assert_eq!(
            split_and_validate_next(&mut buf.clone(), size - 1, &mut budget, Some(uncompressed))
                .unwrap_err(),
            BatchError::TooLarge {
                size_bytes: size,
                max_bytes: size - 1
            }
        );
    }

    #[test]
    fn inconsistent_record_count_is_refused() {
        let mut buf = sample(Compression::None);
        buf[57..61].copy_from_slice(&11i32.to_be_bytes());
        let crc = crc32c::crc32c(&buf[CRC_START..]);
        buf[CRC_OFFSET..CRC_START].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            split_and_validate(buf, 1 << 20),
            Err(BatchError::CountMismatch {
                count: 11,
                last_offset_delta: 9
            })
        ));
    }
}

/// One uncompressed magic-2 batch of (key, value) records, offsets from 0, all stamped
/// `timestamp_ms`: how the broker writes its own records (committed offsets).
pub fn encode_records(
    records: impl IntoIterator<Item = (Option<Bytes>, Option<Bytes>)>,
    timestamp_ms: i64,
) -> BytesMut {
    let records = records
        .into_iter()
        .map(|(key, value)| (key, value, timestamp_ms));
    encode_batch(records, kafka_protocol::records::Compression::None)
}

/// One magic-2 batch of (key, value, timestamp) records, offsets from 0, no producer id.
fn encode_batch(
    records: impl IntoIterator<Item = (Option<Bytes>, Option<Bytes>, i64)>,
    compression: kafka_protocol::records::Compression,
) -> BytesMut {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value, timestamp))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch whenever offset - sequence changes.
            sequence: i as i32,
            timestamp,
            key,
            value,
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("a batch of plain records encodes");
    buf
}

/// Test support for this and other crates: record batches as a producer would send them.
pub mod testing {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::Compression;

    /// One magic-2 batch holding `values` (no keys), offsets from 0, record i stamped
    /// `first_timestamp_ms + i`.
    pub fn encode(
        values: impl IntoIterator<Item = Option<Bytes>>,
        first_timestamp_ms: i64,
        compression: Compression,
    ) -> BytesMut {
        let records = values
            .into_iter()
            .enumerate()
            .map(|(i, value)| (None, value, first_timestamp_ms + i as i64));
        super::encode_batch(records, compression)
    }
}
