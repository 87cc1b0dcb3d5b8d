//! A produce record set split into batches, each checked as Kafka checks a client's batch.

use bytes::BytesMut;

use crate::batch::budget::{check_records, DecompressBudget};
use crate::batch::recompress::recompress;
use crate::batch::valid::{BatchError, ValidBatch};
use crate::codec::Target;
use crate::header::{
    BatchHeader, BATCH_HEADER_LEN, BATCH_LENGTH_PREFIX_LEN, COMPRESSION_MASK, CRC_START,
};

/// Splits a produce record set into batches and validates each: magic 2, length within the
/// record set, length at most `batch_bytes_max`, CRC-32C, record count consistent with
/// `lastOffsetDelta`, not a control batch, a sequence when a producer id is set, and the
/// records themselves as Kafka checks them: decompressed as a stream (at most
/// [`DECOMPRESSED_BATCH_BYTES_MAX`](crate::records::DECOMPRESSED_BATCH_BYTES_MAX) bytes), well-formed, offset deltas 0, 1, 2, ..., exactly
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::samples::sample;
    use crate::header::{CRC_OFFSET, MAGIC_OFFSET};
    use kafka_protocol::records::{Compression, RecordBatchDecoder};

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

    const LIBRDKAFKA: [(&str, &[u8]); 5] = [
        (
            "none",
            include_bytes!("../../tests/fixtures/librdkafka-2.0-none.bin"),
        ),
        (
            "gzip",
            include_bytes!("../../tests/fixtures/librdkafka-2.0-gzip.bin"),
        ),
        (
            "snappy",
            include_bytes!("../../tests/fixtures/librdkafka-2.0-snappy.bin"),
        ),
        (
            "lz4",
            include_bytes!("../../tests/fixtures/librdkafka-2.0-lz4.bin"),
        ),
        (
            "zstd",
            include_bytes!("../../tests/fixtures/librdkafka-2.0-zstd.bin"),
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
