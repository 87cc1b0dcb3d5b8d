//! Manifest size and commit cost over a simulated week: prints figures, asserts nothing.
//!
//! One shard, 100 partitions each writing 100 B/s, an object sealed every second (the default
//! `--object-age-max-ms`), 7-day retention. *Merged*: a merge planned after every commit, as the
//! uploader does (`merge.rs`). *Unmerged*: the manifest as it was before merging existed (one
//! entry per upload), followed until it passes the 256 MiB a reader accepts.
//!
//! `cargo bench -p ringtail-engine --bench manifest`

use std::time::Instant;

use ringtail_engine::layout::object as object_key;
use ringtail_engine::tier::manifest::{ObjectRef, ShardManifest, MANIFEST_BYTES_MAX};
use ringtail_engine::tier::merge::{layout, plan_merge};
use ringtail_engine::tier::object_format::Span;

const PARTITIONS: i32 = 100;
const EVERY_MS: i64 = 1000;
const SPAN_BYTES: u64 = 100;
const RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
const HOUR_MS: i64 = 3600 * 1000;

fn object(key: u64, ts: i64, next: &mut [i64]) -> ObjectRef {
    let spans = (0..PARTITIONS)
        .map(|p| {
            let base = next[p as usize];
            next[p as usize] += 1;
            Span {
                topic_id: [7; 16],
                partition: p,
                base_offset: base,
                last_offset: base,
                byte_start: p as u64 * SPAN_BYTES,
                byte_len: SPAN_BYTES,
                max_timestamp: ts,
            }
        })
        .collect();
    ObjectRef {
        key: object_key(0, 1, key),
        size: PARTITIONS as u64 * SPAN_BYTES + 7000,
        spans,
        node: 1,
    }
}

/// Microseconds per call of `f`, the best of 5.
fn best_us(mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .fold(f64::MAX, f64::min)
}

/// What a commit costs at this size: encoding it, and (before) the copy the deletion pass made
/// every second; after, the deletion pass's scan with nothing due.
fn report(label: &str, now: i64, m: &ShardManifest) {
    let bytes = m.encode().len();
    let encode_us = best_us(|| {
        std::hint::black_box(m.encode());
    });
    let clone_us = best_us(|| {
        std::hint::black_box(m.clone());
    });
    let scan_us = best_us(|| {
        let due = m
            .objects
            .iter()
            .any(|o| o.spans.iter().any(|s| now - s.max_timestamp > RETENTION_MS));
        std::hint::black_box(due);
    });
    println!(
        "| {label} | {:>5.1} h | {:>7} | {:>11} | {:>10.0} | {:>10.0} | {:>8.0} |",
        now as f64 / HOUR_MS as f64,
        m.objects.len(),
        bytes,
        encode_us,
        clone_us,
        scan_us
    );
}

fn main() {
    println!("| run | simulated | objects | manifest B | encode µs | clone µs | scan µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    // Unmerged: until past the read limit.
    let mut m = ShardManifest::empty(0, 1);
    let mut next = vec![0i64; PARTITIONS as usize];
    let (mut now, mut key) = (0i64, 0u64);
    let mut reported = 1;
    loop {
        now += EVERY_MS;
        key += 1;
        m.objects.push(object(key, now, &mut next));
        if now % HOUR_MS == 0 && (now / HOUR_MS) == reported {
            reported *= 2;
            report("unmerged", now, &m);
        }
        if now % (10 * 60 * 1000) == 0 && m.encode().len() > MANIFEST_BYTES_MAX {
            report("unmerged, past the read limit", now, &m);
            break;
        }
    }
    drop(m);

    // Merged: a week and a day.
    let mut m = ShardManifest::empty(0, 1);
    let mut next = vec![0i64; PARTITIONS as usize];
    let (mut now, mut key) = (0i64, 0u64);
    let (mut merges, mut merged_objects, mut rewritten_bytes, mut largest) = (0u64, 0u64, 0u64, 0);
    let t = Instant::now();
    while now < RETENTION_MS + 24 * HOUR_MS {
        now += EVERY_MS;
        key += 1;
        m.objects.push(object(key, now, &mut next));
        if now % 60_000 == 0 {
            m.objects.retain_mut(|o| {
                o.spans.retain(|s| now - s.max_timestamp <= RETENTION_MS);
                !o.spans.is_empty()
            });
        }
        if let Some(run) = plan_merge(&m.objects) {
            let l = layout(&m.objects[run.clone()]);
            key += 1;
            let size = l.spans.iter().map(|s| s.byte_len).sum::<u64>();
            merges += 1;
            merged_objects += run.len() as u64;
            rewritten_bytes += size;
            let into = ObjectRef {
                key: object_key(0, 1, key),
                size,
                spans: l.spans,
                node: 1,
            };
            m.objects.splice(run, [into]);
        }
        if now % (24 * HOUR_MS) == 0 {
            largest = largest.max(m.encode().len());
            report("merged", now, &m);
        }
    }
    let written = (now / EVERY_MS) as u64 * PARTITIONS as u64 * SPAN_BYTES;
    println!(
        "\nmerged: {merges} merges of {merged_objects} objects; {:.1} bytes rewritten per byte \
         written; largest manifest {largest} B; simulation took {:.1} s",
        rewritten_bytes as f64 / written as f64,
        t.elapsed().as_secs_f64()
    );
}
