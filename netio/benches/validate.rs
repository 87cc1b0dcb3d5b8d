//! What produce validation costs per batch: `split_and_validate` (header, CRC-32C, and the
//! record walk, decompressing as a stream) against the CRC alone, for each codec, on
//! JSON-like records. Reports numbers; asserts nothing about time.
//!
//! `cargo bench -p ringtail-netio --bench validate`

use std::hint::black_box;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::Compression;
use ringtail_netio::batch::{split_and_validate, testing};
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
}
