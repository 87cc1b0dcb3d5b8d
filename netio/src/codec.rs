//! Record batch compression codecs, and compressing a batch's records into one of them at a
//! level: what the broker does when a topic's `compression.type` names a codec other than the
//! producer's (Kafka's `LogValidator` recompresses such batches the same way).
//!
//! Each codec writes the format Kafka's own broker writes, so every client that reads Kafka
//! reads it: gzip members, snappy in xerial framing (32 KiB blocks), LZ4 frames of independent
//! 64 KiB blocks without checksums, zstd frames.

use std::io::Write;
use std::ops::RangeInclusive;

use bytes::{BufMut, BytesMut};

/// The codecs a batch's attribute bits 0-2 name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Codec {
    /// The codec's id in a batch's attributes.
    pub fn id(self) -> i16 {
        self as i16
    }

    /// The codec of a batch's codec id (its attribute bits); `None` for ids Kafka does not know.
    pub fn from_id(id: i16) -> Option<Codec> {
        Some(match id {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            _ => return None,
        })
    }

    /// The codec a `compression.type` value names; `None` for `producer` and unknown values.
    pub fn from_config(value: &str) -> Option<Codec> {
        Some(match value {
            "uncompressed" => Codec::None,
            "gzip" => Codec::Gzip,
            "snappy" => Codec::Snappy,
            "lz4" => Codec::Lz4,
            "zstd" => Codec::Zstd,
            _ => return None,
        })
    }
}

/// `compression.gzip.level` (KIP-390): -1 is zlib's default (6), else 1-9.
pub const GZIP_LEVELS: RangeInclusive<i32> = 1..=9;
pub const GZIP_LEVEL_DEFAULT: i32 = -1;
/// `compression.lz4.level`: 1-17 as lz4-java counts them; see [`liblz4_level`] for how they
/// map onto liblz4.
pub const LZ4_LEVELS: RangeInclusive<i32> = 1..=17;
pub const LZ4_LEVEL_DEFAULT: i32 = 9;
/// `compression.zstd.level`: zstd's own range (negative levels trade ratio for speed).
pub const ZSTD_LEVELS: RangeInclusive<i32> = -131072..=22;
pub const ZSTD_LEVEL_DEFAULT: i32 = 3;

/// liblz4's highest level; its frame API compresses with the fast compressor below 3.
const LIBLZ4_LEVEL_MAX: i32 = 12;
/// The block size Kafka's `SnappyOutputStream` (xerial) compresses at.
const SNAPPY_BLOCK_BYTES: usize = 32 << 10;
/// xerial framing: magic, version 1, compatible version 1.
const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// A thread's reused zstd context is dropped after a batch that grew it beyond this (a high
/// level on a large batch), as the decompression context is.
const ZSTD_CONTEXT_KEPT_BYTES_MAX: usize = 8 << 20;

/// Checks a compression level of `codec` against Kafka's range for it (KIP-390); codecs
/// without levels take 0.
pub fn check_level(codec: Codec, level: i32) -> Result<(), String> {
    let (ok, range) = match codec {
        Codec::Gzip => (
            level == GZIP_LEVEL_DEFAULT || GZIP_LEVELS.contains(&level),
            "-1 (default) or 1 to 9",
        ),
        Codec::Lz4 => (LZ4_LEVELS.contains(&level), "1 to 17"),
        Codec::Zstd => (ZSTD_LEVELS.contains(&level), "-131072 to 22"),
        Codec::None | Codec::Snappy => (level == 0, "none"),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{codec:?} levels are {range}"))
    }
}

/// Why records could not be compressed: never the records' fault (any bytes compress), a
/// codec library failing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{codec:?} compression failed: {reason}")]
pub struct CompressError {
    pub codec: Codec,
    pub reason: String,
}

/// The codec and level a topic stores its batches in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    codec: Codec,
    level: i32,
}

impl Target {
    /// `level` must pass [`check_level`] (snappy and none have none: 0).
    pub fn new(codec: Codec, level: i32) -> Result<Target, String> {
        check_level(codec, level)?;
        Ok(Target { codec, level })
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    /// Appends `records` (a batch's records, uncompressed) to `out`, compressed.
    pub fn compress(&self, records: &[u8], out: &mut BytesMut) -> Result<(), CompressError> {
        let failed = |reason: String| CompressError {
            codec: self.codec,
            reason,
        };
        match self.codec {
            Codec::None => {
                out.extend_from_slice(records);
                Ok(())
            }
            Codec::Gzip => gzip(records, self.level, out).map_err(|e| failed(e.to_string())),
            Codec::Snappy => snappy(records, out).map_err(|e| failed(e.to_string())),
            Codec::Lz4 => {
                lz4(records, liblz4_level(self.level), out).map_err(|e| failed(e.to_string()))
            }
            Codec::Zstd => zstd(records, self.level, out).map_err(failed),
        }
    }
}

/// Kafka's lz4 levels as liblz4 reads them. Kafka compresses its default level (9) with
/// lz4-java's fast compressor, as before levels existed, and any other level with the high
/// compressor at that level. liblz4 (frame API): 0 is its fast compressor, 3-12 its high
/// compressor; lz4-java's levels above 12 compress as 12, and 1-2 with the fast one.
fn liblz4_level(kafka_level: i32) -> u32 {
    if kafka_level == LZ4_LEVEL_DEFAULT {
        0
    } else {
        kafka_level.clamp(0, LIBLZ4_LEVEL_MAX) as u32
    }
}

fn gzip(records: &[u8], level: i32, out: &mut BytesMut) -> std::io::Result<()> {
    let level = match level {
        GZIP_LEVEL_DEFAULT => flate2::Compression::default(),
        l => flate2::Compression::new(l as u32),
    };
    let mut encoder = flate2::write::GzEncoder::new(out.writer(), level);
    encoder.write_all(records)?;
    encoder.finish().map(drop)
}

fn snappy(records: &[u8], out: &mut BytesMut) -> Result<(), snap::Error> {
    out.extend_from_slice(XERIAL_HEADER);
    let mut encoder = snap::raw::Encoder::new();
    for block in records.chunks(SNAPPY_BLOCK_BYTES) {
        let at = out.len();
        out.resize(at + 4 + snap::raw::max_compress_len(block.len()), 0);
        let n = encoder.compress(block, &mut out[at + 4..])?;
        out.truncate(at + 4 + n);
        out[at..at + 4].copy_from_slice(&(n as u32).to_be_bytes());
    }
    Ok(())
}

fn lz4(records: &[u8], level: u32, out: &mut BytesMut) -> std::io::Result<()> {
    let mut encoder = lz4::EncoderBuilder::new()
        .level(level)
        .block_size(lz4::BlockSize::Max64KB)
        .block_mode(lz4::BlockMode::Independent)
        .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
        .checksum(lz4::ContentChecksum::NoChecksum)
        .build(out.writer())?;
    encoder.write_all(records)?;
    encoder.finish().1
}

thread_local! {
    static ZSTD_CONTEXT: std::cell::RefCell<Option<zstd::zstd_safe::CCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// One zstd frame, through a context kept per thread: creating one and its tables costs as
/// much as compressing a small batch.
fn zstd(records: &[u8], level: i32, out: &mut BytesMut) -> Result<(), String> {
    ZSTD_CONTEXT.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return zstd_with(&mut zstd::zstd_safe::CCtx::create(), records, level, out);
        };
        let ctx = slot.get_or_insert_with(zstd::zstd_safe::CCtx::create);
        let compressed = zstd_with(ctx, records, level, out);
        if ctx.sizeof() > ZSTD_CONTEXT_KEPT_BYTES_MAX {
            *slot = None;
        }
        compressed
    })
}

fn zstd_with(
    ctx: &mut zstd::zstd_safe::CCtx<'static>,
    records: &[u8],
    level: i32,
    out: &mut BytesMut,
) -> Result<(), String> {
    let name = |code| zstd::zstd_safe::get_error_name(code).to_string();
    ctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(level))
        .map_err(name)?;
    let at = out.len();
    out.resize(at + zstd::zstd_safe::compress_bound(records.len()), 0);
    let compressed = ctx.compress2(&mut out[at..], records);
    out.truncate(at + *compressed.as_ref().unwrap_or(&0));
    compressed.map(drop).map_err(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| format!("{{\"n\":{},\"v\":\"{}\"}}", i % 977, i % 13).into_bytes())
            .collect()
    }

    fn decode(codec: Codec, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match codec {
            Codec::None => out.extend_from_slice(body),
            Codec::Gzip => {
                flate2::read::GzDecoder::new(body)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Codec::Snappy => {
                assert_eq!(&body[..16], XERIAL_HEADER);
                let mut rest = &body[16..];
                while !rest.is_empty() {
                    let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                    let block = snap::raw::Decoder::new()
                        .decompress_vec(&rest[4..4 + n])
                        .unwrap();
                    assert!(block.len() <= SNAPPY_BLOCK_BYTES);
                    out.extend_from_slice(&block);
                    rest = &rest[4 + n..];
                }
            }
            Codec::Lz4 => {
                lz4::Decoder::new(body)
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Codec::Zstd => out = zstd::decode_all(body).unwrap(),
        }
        out
    }

    #[test]
    fn every_codec_and_level_round_trips_after_what_is_in_the_buffer() {
        let records = sample();
        for (codec, levels) in [
            (Codec::None, vec![0]),
            (Codec::Gzip, vec![GZIP_LEVEL_DEFAULT, 1, 9]),
            (Codec::Snappy, vec![0]),
            (Codec::Lz4, vec![1, LZ4_LEVEL_DEFAULT, 17]),
            (Codec::Zstd, vec![-5, ZSTD_LEVEL_DEFAULT, 19]),
        ] {
            for level in levels {
                let mut out = BytesMut::from(&b"header"[..]);
                Target::new(codec, level)
                    .unwrap()
                    .compress(&records, &mut out)
                    .unwrap();
                assert_eq!(&out[..6], b"header", "{codec:?} {level}");
                assert_eq!(decode(codec, &out[6..]), records, "{codec:?} {level}");
                if codec != Codec::None {
                    assert!(
                        out.len() < records.len() / 2,
                        "{codec:?} {level}: {}",
                        out.len()
                    );
                }
            }
        }
    }

    #[test]
    fn kafkas_default_lz4_level_is_the_fast_compressor() {
        assert_eq!(liblz4_level(LZ4_LEVEL_DEFAULT), 0);
        assert_eq!(liblz4_level(1), 1);
        assert_eq!(liblz4_level(10), 10);
        assert_eq!(liblz4_level(17), 12);
        // The high compressor compresses these records smaller than the fast one.
        let size = |level| {
            let mut out = BytesMut::new();
            Target::new(Codec::Lz4, level)
                .unwrap()
                .compress(&sample(), &mut out)
                .unwrap();
            out.len()
        };
        assert!(
            size(12) < size(LZ4_LEVEL_DEFAULT),
            "{} {}",
            size(12),
            size(9)
        );
    }

    #[test]
    fn lz4_frames_are_written_as_kafka_writes_them() {
        let mut out = BytesMut::new();
        Target::new(Codec::Lz4, 1)
            .unwrap()
            .compress(&sample(), &mut out)
            .unwrap();
        assert_eq!(&out[..4], &[0x04, 0x22, 0x4d, 0x18], "LZ4 frame magic");
        // FLG: version 01, block independence, no block/content checksum, no content size.
        assert_eq!(out[4], 0b0110_0000);
        // BD: 64 KiB blocks.
        assert_eq!(out[5], 0b0100_0000);
    }

    #[test]
    fn levels_outside_kafkas_ranges_are_refused() {
        for (codec, level) in [
            (Codec::Gzip, 0),
            (Codec::Gzip, 10),
            (Codec::Lz4, 0),
            (Codec::Lz4, 18),
            (Codec::Zstd, 23),
            (Codec::Zstd, -131073),
            (Codec::Snappy, 1),
        ] {
            assert!(Target::new(codec, level).is_err(), "{codec:?} {level}");
        }
        assert!(Target::new(Codec::Zstd, -131072).is_ok());
        assert_eq!(Codec::from_config("uncompressed"), Some(Codec::None));
        assert_eq!(Codec::from_config("zstd").map(Codec::id), Some(4));
        assert_eq!(Codec::from_config("producer"), None);
        assert_eq!(Codec::from_config("brotli"), None);
    }
}
