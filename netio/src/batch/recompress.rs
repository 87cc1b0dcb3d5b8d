//! A batch's records put into its topic's codec, as Kafka's `LogValidator` does.

use bytes::BytesMut;

use crate::batch::budget::{check_records, within_budget, DecompressBudget};
use crate::batch::valid::{BatchError, ValidBatch};
use crate::codec::Target;
use crate::header::{
    BatchHeader, BATCH_HEADER_LEN, BATCH_LENGTH_PREFIX_LEN, COMPRESSION_MASK, CRC_OFFSET, CRC_START,
};

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
    use crate::batch::budget::REQUEST_DECOMPRESSED_BYTES_BASE;
    use crate::batch::samples::{encode, record, sample};
    use crate::batch::validate::{split_and_validate, split_and_validate_next};
    use crate::codec::Codec;
    use crate::records::RecordsError;
    use bytes::Bytes;
    use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};

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
}
