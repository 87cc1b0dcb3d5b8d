//! The records inside a magic-2 batch, walked as a stream: compressed batches are decompressed
//! through a small buffer, never whole, and at most [`DECOMPRESSED_BATCH_BYTES_MAX`] bytes of
//! records are read, so a batch that expands to gigabytes (a compression bomb) costs a bounded
//! amount of memory and CPU and is refused. Many small bombs in one request are bounded by
//! the request's budget ([`crate::batch::DecompressBudget`], via [`walk_metered`]). A batch the
//! broker recompresses is decompressed whole instead ([`decompress_metered`]), under the same
//! bounds.
//!
//! Record layout (all lengths and deltas zig-zag varints):
//! `length | attributes i8 | timestampDelta varlong | offsetDelta varint | keyLength | key |
//! valueLength | value | headerCount | (headerKeyLength | headerKey | headerValueLength |
//! headerValue)*`. The walk checks every length against the record's `length`, that offset
//! deltas run 0, 1, 2, ..., and that the batch holds exactly the records its header counts and
//! nothing after them, as Kafka's validation does.

use std::io::{self, BufRead, BufReader, Read};
use std::ops::ControlFlow;

use crate::codec::Codec;
use crate::header::{BatchHeader, BATCH_HEADER_LEN, COMPRESSION_MASK};

/// Most bytes of records one batch may expand to. Beyond it the batch is refused (produce) or
/// the walk stops with an error (reads): the bound on what a compression bomb costs. Generous
/// for real producers, whose batches are `batch.size` (16 KiB–1 MiB) before compression.
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 128 << 20;
/// The buffer between a decompressor and the record walk.
const STREAM_BUFFER_BYTES: usize = 16 << 10;
/// The xerial framing Kafka's Java client puts around snappy blocks.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;
/// The most a snappy block can expand: a 3-byte copy element yields at most 64 bytes.
const SNAPPY_EXPANSION_MAX: usize = 22;
/// zstd frames needing a larger window are refused (2^27 = 128 MiB, the zstd and Kafka default).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// A thread's reused zstd context is dropped after a batch that grew it beyond this.
const ZSTD_CONTEXT_KEPT_BYTES_MAX: usize = 4 << 20;

/// Why the records of a batch were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    #[error("unknown compression codec {0}")]
    Codec(i16),
    #[error("records do not decompress or parse: {0}")]
    Corrupt(String),
    #[error("records expand beyond {max_bytes} bytes")]
    TooLarge { max_bytes: usize },
    #[error("batch header counts {expected} records, the batch holds {found}")]
    Count { expected: i32, found: i64 },
    #[error("record {index} has offset delta {offset_delta}")]
    OffsetDelta { index: i32, offset_delta: i32 },
}

/// What the walk shows of each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInfo {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
}

/// Walks every record of `batch` (a whole batch whose header was checked), calling `visit`
/// with each until it breaks. Without a break, the batch must hold exactly its header's
/// record count, well-formed, and nothing after them.
pub fn walk(
    batch: &[u8],
    decompressed_bytes_max: usize,
    visit: impl FnMut(RecordInfo) -> ControlFlow<()>,
) -> Result<(), RecordsError> {
    let mut read = 0;
    walk_metered(batch, decompressed_bytes_max, &mut read, visit)
}

/// [`walk`], adding to `read` the bytes of records it read, whether it succeeds or not: what
/// the walk cost, for a budget shared by several batches.
pub fn walk_metered(
    batch: &[u8],
    decompressed_bytes_max: usize,
    read: &mut u64,
    mut visit: impl FnMut(RecordInfo) -> ControlFlow<()>,
) -> Result<(), RecordsError> {
    let count = BatchHeader::parse(batch)
        .map_err(|e| RecordsError::Corrupt(e.to_string()))?
        .record_count;
    let cap = decompressed_bytes_max as u64;
    with_records(
        batch,
        cap,
        Walk {
            count,
            cap,
            read,
            visit: &mut visit,
        },
    )
}

/// Decompresses the records of `batch` (a whole, compressed batch whose header was checked)
/// into `records`, then walks them as [`walk_metered`] does: at most `decompressed_bytes_max`
/// bytes, adding what was decompressed to `read`. For a batch the broker stores in another
/// codec: one decompression serves the check and the recompression.
pub fn decompress_metered(
    batch: &[u8],
    decompressed_bytes_max: usize,
    read: &mut u64,
    records: &mut Vec<u8>,
) -> Result<(), RecordsError> {
    let count = BatchHeader::parse(batch)
        .map_err(|e| RecordsError::Corrupt(e.to_string()))?
        .record_count;
    let cap = decompressed_bytes_max as u64;
    let collected = with_records(
        batch,
        cap,
        Collect {
            cap,
            records: &mut *records,
        },
    );
    *read = read.saturating_add((records.len() as u64).min(cap));
    collected?;
    let mut walked = 0;
    walk_stream(&records[..], count, cap, &mut walked, &mut |_| {
        ControlFlow::Continue(())
    })
}

/// What is done with a batch's records once its codec's decoder yields them as a stream.
trait RecordsReader {
    fn read<R: BufRead>(self, records: R) -> Result<(), RecordsError>;
}

/// The record walk of [`walk_metered`].
struct Walk<'a, V> {
    count: i32,
    cap: u64,
    read: &'a mut u64,
    visit: &'a mut V,
}

impl<V: FnMut(RecordInfo) -> ControlFlow<()>> RecordsReader for Walk<'_, V> {
    fn read<R: BufRead>(self, records: R) -> Result<(), RecordsError> {
        walk_stream(records, self.count, self.cap, self.read, self.visit)
    }
}

/// The copy of [`decompress_metered`]: reads one byte beyond the cap to tell a batch that
/// ends at it from one that goes on.
struct Collect<'a> {
    cap: u64,
    records: &'a mut Vec<u8>,
}

impl RecordsReader for Collect<'_> {
    fn read<R: BufRead>(self, records: R) -> Result<(), RecordsError> {
        records
            .take(self.cap + 1)
            .read_to_end(self.records)
            .map_err(io_error)?;
        if self.records.len() as u64 > self.cap {
            return Err(RecordsError::TooLarge {
                max_bytes: self.cap as usize,
            });
        }
        Ok(())
    }
}

/// Hands `reader` the records of `batch`, decompressed as a stream by the batch's codec.
fn with_records(batch: &[u8], cap: u64, reader: impl RecordsReader) -> Result<(), RecordsError> {
    let header = BatchHeader::parse(batch).map_err(|e| RecordsError::Corrupt(e.to_string()))?;
    let body = &batch[BATCH_HEADER_LEN..];
    let id = header.attributes & COMPRESSION_MASK;
    match Codec::from_id(id).ok_or(RecordsError::Codec(id))? {
        Codec::None => reader.read(body),
        Codec::Gzip => reader.read(buffered(flate2::bufread::GzDecoder::new(body))),
        Codec::Snappy => reader.read(Snappy::new(body, cap)?),
        Codec::Lz4 => {
            let decoder = lz4::Decoder::new(body).map_err(corrupt)?;
            reader.read(buffered(decoder))
        }
        Codec::Zstd => ZSTD_CONTEXT.with(|cell| {
            // A context per thread, reused: creating one costs as much as decompressing a
            // small batch. One grown large by a big window is not kept.
            let Ok(mut slot) = cell.try_borrow_mut() else {
                let mut ctx = zstd_context();
                return read_zstd(body, &mut ctx, reader);
            };
            let ctx = slot.get_or_insert_with(zstd_context);
            let read = read_zstd(body, ctx, reader);
            if ctx.sizeof() > ZSTD_CONTEXT_KEPT_BYTES_MAX {
                *slot = None;
            }
            read
        }),
    }
}

thread_local! {
    static ZSTD_CONTEXT: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn zstd_context() -> zstd::zstd_safe::DCtx<'static> {
    let mut ctx = zstd::zstd_safe::DCtx::create();
    // Cannot fail for a value in zstd's range.
    let _ = ctx.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
        ZSTD_WINDOW_LOG_MAX,
    ));
    ctx
}

fn read_zstd(
    body: &[u8],
    ctx: &mut zstd::zstd_safe::DCtx<'static>,
    reader: impl RecordsReader,
) -> Result<(), RecordsError> {
    let decoder = zstd::stream::read::Decoder::with_context(body, ctx);
    reader.read(buffered(decoder))
}

fn buffered<R: Read>(r: R) -> BufReader<R> {
    BufReader::with_capacity(STREAM_BUFFER_BYTES, r)
}

fn corrupt(e: impl std::fmt::Display) -> RecordsError {
    RecordsError::Corrupt(e.to_string())
}

fn walk_stream<R: BufRead>(
    reader: R,
    count: i32,
    cap: u64,
    read: &mut u64,
    visit: &mut impl FnMut(RecordInfo) -> ControlFlow<()>,
) -> Result<(), RecordsError> {
    let mut input = Input {
        r: reader,
        consumed: 0,
        cap,
    };
    let walked = walk_records(&mut input, count, visit);
    *read = read.saturating_add(input.consumed);
    walked
}

fn walk_records<R: BufRead>(
    input: &mut Input<R>,
    count: i32,
    visit: &mut impl FnMut(RecordInfo) -> ControlFlow<()>,
) -> Result<(), RecordsError> {
    let mut index: i32 = 0;
    loop {
        if input.at_end()? {
            break;
        }
        if index >= count {
            return Err(RecordsError::Count {
                expected: count,
                found: index as i64 + 1,
            });
        }
        let info = input.record()?;
        if info.offset_delta != index {
            return Err(RecordsError::OffsetDelta {
                index,
                offset_delta: info.offset_delta,
            });
        }
        if visit(info).is_break() {
            return Ok(());
        }
        index += 1;
    }
    if index != count {
        return Err(RecordsError::Count {
            expected: count,
            found: index as i64,
        });
    }
    Ok(())
}

/// A reader of decompressed records that counts what it consumes against the cap.
struct Input<R> {
    r: R,
    consumed: u64,
    cap: u64,
}

impl<R: BufRead> Input<R> {
    fn at_end(&mut self) -> Result<bool, RecordsError> {
        Ok(self.r.fill_buf().map_err(io_error)?.is_empty())
    }

    fn byte(&mut self) -> Result<u8, RecordsError> {
        let b = *self
            .r
            .fill_buf()
            .map_err(io_error)?
            .first()
            .ok_or_else(|| corrupt("records end inside a record"))?;
        self.r.consume(1);
        self.charge(1)?;
        Ok(b)
    }

    fn skip(&mut self, mut n: u64) -> Result<(), RecordsError> {
        self.charge(n)?;
        while n > 0 {
            let available = self.r.fill_buf().map_err(io_error)?.len();
            if available == 0 {
                return Err(corrupt("records end inside a record"));
            }
            let k = (available as u64).min(n) as usize;
            self.r.consume(k);
            n -= k as u64;
        }
        Ok(())
    }

    fn charge(&mut self, n: u64) -> Result<(), RecordsError> {
        self.consumed = self.consumed.saturating_add(n);
        if self.consumed > self.cap {
            return Err(RecordsError::TooLarge {
                max_bytes: self.cap as usize,
            });
        }
        Ok(())
    }

    /// An unsigned LEB128 of at most `max_bytes` bytes, zig-zag decoded.
    fn varlong(&mut self, max_bytes: u32) -> Result<i64, RecordsError> {
        let mut value: u64 = 0;
        for i in 0..max_bytes {
            let b = self.byte()?;
            value |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(corrupt("varint too long"))
    }

    fn varint(&mut self) -> Result<i32, RecordsError> {
        let v = self.varlong(5)?;
        i32::try_from(v).map_err(|_| corrupt("varint out of range"))
    }

    /// One record: its body must take exactly the bytes its length says.
    fn record(&mut self) -> Result<RecordInfo, RecordsError> {
        let length = self.varint()?;
        if length < 0 {
            return Err(corrupt(format!("record length {length}")));
        }
        let end = self.consumed + length as u64;
        if end > self.cap {
            return Err(RecordsError::TooLarge {
                max_bytes: self.cap as usize,
            });
        }
        let _attributes = self.byte()?;
        let timestamp_delta = self.varlong(10)?;
        let offset_delta = self.varint()?;
        self.field(end, true)?; // key
        self.field(end, true)?; // value
        let headers = self.varint()?;
        if headers < 0 {
            return Err(corrupt(format!("header count {headers}")));
        }
        for _ in 0..headers {
            self.field(end, false)?; // header key
            self.field(end, true)?; // header value
            if self.consumed > end {
                break;
            }
        }
        if self.consumed != end {
            return Err(corrupt(format!(
                "record length {length} does not match its fields"
            )));
        }
        Ok(RecordInfo {
            offset_delta,
            timestamp_delta,
        })
    }

    /// A length-prefixed field (-1: null, when allowed), skipped; it must end by `end`.
    fn field(&mut self, end: u64, nullable: bool) -> Result<(), RecordsError> {
        let len = self.varint()?;
        if len == -1 && nullable {
            return Ok(());
        }
        if len < 0 || self.consumed + len as u64 > end {
            return Err(corrupt(format!("field length {len} outside its record")));
        }
        self.skip(len as u64)
    }
}

fn io_error(e: io::Error) -> RecordsError {
    corrupt(e)
}

/// Snappy as Kafka writes it: one raw block, or xerial framing (a header, then blocks each
/// prefixed by its compressed length). Each block is decompressed into one reused buffer after
/// its stated length is checked against the cap.
struct Snappy<'a> {
    rest: &'a [u8],
    block: Vec<u8>,
    at: usize,
    framed: bool,
    produced: u64,
    cap: u64,
}

impl<'a> Snappy<'a> {
    fn new(body: &'a [u8], cap: u64) -> Result<Snappy<'a>, RecordsError> {
        let framed = body.len() >= XERIAL_HEADER_LEN && body.starts_with(XERIAL_MAGIC);
        let mut s = Snappy {
            rest: if framed {
                &body[XERIAL_HEADER_LEN..]
            } else {
                body
            },
            block: Vec::new(),
            at: 0,
            framed,
            produced: 0,
            cap,
        };
        if !framed {
            let raw = std::mem::take(&mut s.rest);
            s.decompress(raw)?;
        }
        Ok(s)
    }

    fn decompress(&mut self, compressed: &[u8]) -> Result<(), RecordsError> {
        let len = snap::raw::decompress_len(compressed).map_err(corrupt)?;
        // The buffer is sized by the block's own claim: refuse a claim no snappy block of
        // this size can honour, before allocating for it.
        if len > compressed.len().saturating_mul(SNAPPY_EXPANSION_MAX) {
            return Err(corrupt(format!(
                "a snappy block of {} bytes claims {len} bytes",
                compressed.len()
            )));
        }
        self.produced += len as u64;
        if self.produced > self.cap {
            return Err(RecordsError::TooLarge {
                max_bytes: self.cap as usize,
            });
        }
        self.block.clear();
        self.block.resize(len, 0);
        snap::raw::Decoder::new()
            .decompress(compressed, &mut self.block)
            .map_err(corrupt)?;
        self.at = 0;
        Ok(())
    }

    fn next_block(&mut self) -> io::Result<()> {
        if self.rest.len() < 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated snappy block length",
            ));
        }
        let n = u32::from_be_bytes(self.rest[..4].try_into().expect("4 bytes")) as usize;
        if n > self.rest.len() - 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated snappy block",
            ));
        }
        let block = &self.rest[4..4 + n];
        self.rest = &self.rest[4 + n..];
        self.decompress(block)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }
}

impl Read for Snappy<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Snappy<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.at == self.block.len() && self.framed && !self.rest.is_empty() {
            self.next_block()?;
        }
        Ok(&self.block[self.at..])
    }

    fn consume(&mut self, n: usize) {
        self.at = (self.at + n).min(self.block.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::testing;
    use bytes::Bytes;
    use kafka_protocol::records::Compression;

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn values(n: usize, size: usize) -> Vec<Option<Bytes>> {
        (0..n)
            .map(|i| (i != 3).then(|| Bytes::from(vec![b'a' + (i % 26) as u8; size])))
            .collect()
    }

    #[test]
    fn every_codec_walks_every_record() {
        for codec in CODECS {
            let batch = testing::encode(values(10, 100), 1000, codec);
            let mut seen = Vec::new();
            walk(&batch, 1 << 20, |r| {
                seen.push(r.offset_delta);
                ControlFlow::Continue(())
            })
            .unwrap_or_else(|e| panic!("{codec:?}: {e}"));
            assert_eq!(seen, (0..10).collect::<Vec<_>>(), "{codec:?}");
        }
    }

    #[test]
    fn a_batch_expanding_beyond_the_cap_is_refused_without_expanding_it() {
        for codec in CODECS {
            // 4 records of 1 MiB each, compressible to almost nothing (but for None).
            let batch = testing::encode(values(4, 1 << 20), 1000, codec);
            assert_eq!(
                walk(&batch, 2 << 20, |_| ControlFlow::Continue(())),
                Err(RecordsError::TooLarge { max_bytes: 2 << 20 }),
                "{codec:?}"
            );
            assert!(walk(&batch, 5 << 20, |_| ControlFlow::Continue(())).is_ok());
        }
    }

    #[test]
    fn a_count_that_does_not_match_the_records_is_refused() {
        for codec in CODECS {
            let mut batch = testing::encode(values(10, 10), 1000, codec);
            batch[57..61].copy_from_slice(&11i32.to_be_bytes());
            assert_eq!(
                walk(&batch, 1 << 20, |_| ControlFlow::Continue(())),
                Err(RecordsError::Count {
                    expected: 11,
                    found: 10
                }),
                "{codec:?}"
            );
            batch[57..61].copy_from_slice(&9i32.to_be_bytes());
            assert_eq!(
                walk(&batch, 1 << 20, |_| ControlFlow::Continue(())),
                Err(RecordsError::Count {
                    expected: 9,
                    found: 10
                }),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn damaged_records_are_refused() {
        let batch = testing::encode(values(3, 10), 1000, Compression::None);
        // Every truncation of the records and every byte flipped inside them: refused or (for
        // a flip in a key/value byte) still well-formed — never a panic.
        for end in BATCH_HEADER_LEN..batch.len() {
            assert!(walk(&batch[..end], 1 << 20, |_| ControlFlow::Continue(())).is_err());
        }
        for at in BATCH_HEADER_LEN..batch.len() {
            let mut b = batch.clone();
            b[at] ^= 0x41;
            let _ = walk(&b, 1 << 20, |_| ControlFlow::Continue(()));
        }
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut b = testing::encode(values(3, 100), 1000, codec);
            let n = b.len();
            b.truncate(BATCH_HEADER_LEN + (n - BATCH_HEADER_LEN) / 2);
            assert!(
                walk(&b, 1 << 20, |_| ControlFlow::Continue(())).is_err(),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn a_snappy_block_claiming_more_than_snappy_can_expand_is_refused_before_allocating() {
        // Raw snappy: a varint length claiming 100 MiB, then one literal byte.
        let block = [0x80, 0x80, 0x80, 0x32, 0x00, b'x'];
        let mut batch = testing::encode(values(1, 1), 1000, Compression::None);
        batch.truncate(BATCH_HEADER_LEN);
        batch[21..23].copy_from_slice(&Codec::Snappy.id().to_be_bytes());
        batch.extend_from_slice(&block);
        assert!(matches!(
            walk(&batch, 1 << 30, |_| ControlFlow::Continue(())),
            Err(RecordsError::Corrupt(m)) if m.contains("claims")
        ));
    }

    #[test]
    fn a_break_stops_the_walk() {
        let batch = testing::encode(values(10, 10), 1000, Compression::Zstd);
        let mut n = 0;
        walk(&batch, 1 << 20, |r| {
            n += 1;
            if r.offset_delta == 4 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert_eq!(n, 5);
    }
}
