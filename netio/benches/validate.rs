//! What produce validation costs per batch: `split_and_validate` (header, CRC-32C, and the
//! record walk, decompressing as a stream) against the CRC alone, for each codec, on
//! JSON-like records; then what recompressing into a topic's `compression.type` costs on top
//! (`split_and_validate_next` with a target codec). Reports numbers; asserts nothing about
//! time.
//!
//! `cargo bench -p ringtail-netio --bench validate`

use std::hint::black_box;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::Compression;
use ringtail_netio::batch::{
    split_and_validate, split_and_validate_next, testing, DecompressBudget,
};
use ringtail_netio::codec::{self, Codec, Target};
use ringtail_netio::records::{walk, DECOMPRESSED_BATCH_BYTES_MAX};

/// `count` JSON-like values of about `size` bytes (compressible as real events are).
fn values(count: usize, size: usize, seed: &mut u64) -> Vec<Option<Bytes>> {
    (0..count)
        .map(|i| {
            let mut v = String::with_capacity(size + 64);
            while v.len() < size {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                v.push_str(&format!(
                    "{{\"id\":{},\"user\":\"user-{}\",\"event\":\"{}\",\"ms\":{}}}",
                    i,
                    *seed % 10_000,
                    ["click", "view", "buy", "scroll"][(*seed % 4) as usize],
                    *seed % 1_000_000
                ));
            }
            Some(Bytes::from(v))
        })
        .collect()
}

/// Mean time per call of `f` over about `budget`.
fn time(budget: Duration, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < budget || n < 10 {
        f();
        n += 1;
    }
    started.elapsed() / n
}

fn main() {
    let budget = Duration::from_millis(300);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    println!(
        "| batch | codec | bytes | CRC only | split_and_validate | of which record walk | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (count, size) in [(16, 1000), (100, 200), (1000, 1000)] {
        let records = values(count, size, &mut seed);
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch: Bytes = testing::encode(records.clone(), 1_800_000_000_000, codec).freeze();
            let crc = time(budget, || {
                black_box(crc32c::crc32c(black_box(&batch[21..])));
            });
            let validate = time(budget, || {
                black_box(split_and_validate(BytesMut::from(&batch[..]), 16 << 20).unwrap());
            });
            let copy = time(budget, || {
                black_box(BytesMut::from(&batch[..]));
            });
            let walked = time(budget, || {
                walk(&batch, DECOMPRESSED_BATCH_BYTES_MAX, |_| {
                    ControlFlow::Continue(())
                })
                .unwrap();
            });
            let validate = validate.saturating_sub(copy);
            println!(
                "| {count} x {size} B | {codec:?} | {} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1}x |",
                batch.len(),
                crc.as_secs_f64() * 1e6,
                validate.as_secs_f64() * 1e6,
                walked.as_secs_f64() * 1e6,
                validate.as_secs_f64() / crc.as_secs_f64()
            );
        }
    }
    recompression(budget, &mut seed);
}

/// Validation with recompression into a topic's codec (Kafka's default levels) against
/// validation in place, per batch and per MB of records.
fn recompression(budget: Duration, seed: &mut u64) {
    println!();
    println!("| batch | producer -> topic codec | bytes in | bytes stored | validate in place | validate + recompress | records MB/s recompressed |");
    println!("|---|---|---|---|---|---|---|");
    let zstd = Target::new(Codec::Zstd, codec::ZSTD_LEVEL_DEFAULT).unwrap();
    let pairs = [
        (Compression::Lz4, zstd),
        (
            Compression::Lz4,
            Target::new(Codec::Gzip, codec::GZIP_LEVEL_DEFAULT).unwrap(),
        ),
        (Compression::Lz4, Target::new(Codec::Snappy, 0).unwrap()),
        (Compression::Lz4, Target::new(Codec::None, 0).unwrap()),
        (
            Compression::Zstd,
            Target::new(Codec::Lz4, codec::LZ4_LEVEL_DEFAULT).unwrap(),
        ),
        (Compression::Zstd, Target::new(Codec::Lz4, 12).unwrap()),
        (Compression::None, zstd),
    ];
    for (count, size) in [(16, 1000), (1000, 1000)] {
        let records = values(count, size, seed);
        let record_bytes: usize = records.iter().flatten().map(|v| v.len() + 8).sum();
        for (from, target) in pairs {
            let batch: Bytes = testing::encode(records.clone(), 1_800_000_000_000, from).freeze();
            let run = |target: Option<Target>| {
                let mut budget = DecompressBudget::for_request(batch.len());
                split_and_validate_next(
                    &mut BytesMut::from(&batch[..]),
                    16 << 20,
                    &mut budget,
                    target,
                )
                .unwrap()
            };
            let stored = run(Some(target)).len();
            let copy = time(budget, || {
                black_box(BytesMut::from(&batch[..]));
            });
            let in_place = time(budget, || {
                black_box(run(None));
            })
            .saturating_sub(copy);
            let recompressed = time(budget, || {
                black_box(run(Some(target)));
            })
            .saturating_sub(copy);
            println!(
                "| {count} x {size} B | {from:?} -> {:?} (level {}) | {} | {stored} | {:.1} µs | {:.1} µs | {:.0} |",
                target.codec(),
                target.level(),
                batch.len(),
                in_place.as_secs_f64() * 1e6,
                recompressed.as_secs_f64() * 1e6,
                record_bytes as f64 / recompressed.as_secs_f64() / 1e6,
            );
        }
    }
}
