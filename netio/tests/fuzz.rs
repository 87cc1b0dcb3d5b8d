//! Bounded property tests (seconds, in every `cargo test`) for what reads untrusted bytes: the
//! request decoder and record-batch validation. Arbitrary input must never panic, and never
//! make the decoder allocate more than a bound proportional to the input: a counting global
//! allocator records the peak of Rust heap allocations on the decoding thread. (The zstd and
//! lz4 decoders are C libraries with their own allocator: their memory is bounded by the
//! zstd window limit and the lz4 block size instead, and not counted here.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::records::Compression;
use proptest::prelude::*;
use ringtail_netio::batch::{
    split_and_validate, split_and_validate_next, testing, DecompressBudget,
};
use ringtail_netio::codec::{Codec, Target};
use ringtail_netio::request::{decode_body, decode_header};

struct Counting;

thread_local! {
    /// (bytes allocated now, peak since the last reset) on this thread.
    static HEAP: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

fn track(grow: isize) {
    let _ = HEAP.try_with(|h| {
        let (now, peak) = h.get();
        let now = (now as isize + grow).max(0) as usize;
        h.set((now, peak.max(now)));
    });
}

// SAFETY: forwards to the system allocator; the bookkeeping does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns the most heap it held at once beyond what was allocated before.
fn peak_heap_bytes(f: impl FnOnce()) -> usize {
    let start = HEAP.with(|h| {
        let (now, _) = h.get();
        h.set((now, now));
        now
    });
    f();
    HEAP.with(|h| h.get().1 - start)
}

/// Heap a decoder may use for `input` bytes: a fixed allowance (buffers, decoder state) plus
/// a multiple of the input (decoded structs are larger than their wire form).
fn heap_bound(input: usize) -> usize {
    (1 << 20) + 64 * input
}

/// Decodes a frame as the server does: header, then the body if the version is one the
/// protocol defines (the server refuses others before decoding).
fn decode_frame(frame: Bytes) {
    if let Ok((header, len)) = decode_header(&frame) {
        let range = header.api_key.valid_versions();
        if (range.min..=range.max).contains(&header.api_version) {
            let _ = decode_body(&header, frame, len);
        }
    }
}

/// Every API key the protocol defines.
fn api_keys() -> Vec<i16> {
    (0..100).filter(|k| ApiKey::try_from(*k).is_ok()).collect()
}

/// One valid batch per codec, for mutation.
fn valid_batches() -> Vec<Bytes> {
    [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ]
    .into_iter()
    .map(|codec| {
        let values = (0..8).map(|i| Some(Bytes::from(vec![b'a' + i as u8; 40 + i * 10])));
        testing::encode(values, 1_800_000_000_000, codec).freeze()
    })
    .collect()
}

/// Sets the CRC so that validation reaches the records.
fn fix_crc(b: &mut [u8]) {
    if b.len() >= 61 {
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any bytes as a frame: no panic, bounded heap.
    #[test]
    fn arbitrary_frames_decode_or_fail_within_bounds(frame in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let n = frame.len();
        let peak = peak_heap_bytes(|| decode_frame(Bytes::from(frame)));
        prop_assert!(peak <= heap_bound(n), "{peak} bytes for a {n}-byte frame");
    }

    /// A well-formed header (every key, every defined version) followed by arbitrary bytes,
    /// so that the body decoders of all APIs see hostile input.
    #[test]
    fn arbitrary_bodies_of_every_api_decode_or_fail_within_bounds(
        key_index in 0usize..1000,
        version_pick in 0i16..100,
        body in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let keys = api_keys();
        let key = keys[key_index % keys.len()];
        let api = ApiKey::try_from(key).expect("defined key");
        let range = api.valid_versions();
        let version = range.min + version_pick % (range.max - range.min + 1);
        let mut frame = BytesMut::new();
        frame.put_i16(key);
        frame.put_i16(version);
        frame.put_i32(7);
        frame.put_i16(-1); // null client id
        if api.request_header_version(version) >= 2 {
            frame.put_u8(0); // no tagged fields
        }
        frame.extend_from_slice(&body);
        let n = frame.len();
        let peak = peak_heap_bytes(|| decode_frame(frame.freeze()));
        prop_assert!(peak <= heap_bound(n), "{peak} bytes for {api:?} v{version}, {n} bytes");
    }

    /// Any bytes as a produce record set: no panic, bounded heap.
    #[test]
    fn arbitrary_record_sets_validate_or_fail_within_bounds(records in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let n = records.len();
        let peak = peak_heap_bytes(|| {
            let _ = split_and_validate(BytesMut::from(&records[..]), 1 << 20);
        });
        prop_assert!(peak <= heap_bound(n), "{peak} bytes for {n} bytes of records");
    }

    /// Valid batches of every codec with bytes changed anywhere after the header's CRC field
    /// and the CRC fixed, so that the record walk and the decompressors see hostile input.
    #[test]
    fn mutated_batches_of_every_codec_validate_or_fail_within_bounds(
        pick in 0usize..5,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut b = valid_batches()[pick].to_vec();
        for (at, value) in edits {
            let at = 21 + at % (b.len() - 21);
            b[at] = value;
        }
        // Sometimes also truncated (the batch length then disagrees: refused early).
        if cut % 4 == 0 {
            let keep = 61 + cut % (b.len() - 61);
            b.truncate(keep);
            let len = (b.len() - 12) as i32;
            b[8..12].copy_from_slice(&len.to_be_bytes());
        }
        fix_crc(&mut b);
        let n = b.len();
        let peak = peak_heap_bytes(|| {
            let _ = split_and_validate(BytesMut::from(&b[..]), 1 << 20);
        });
        prop_assert!(peak <= heap_bound(n), "{peak} bytes for a {n}-byte batch");
    }

    /// The same hostile batches recompressed into a topic's codec (a batch's records are
    /// decompressed whole there): no panic, bounded heap, and what passes is a valid batch.
    #[test]
    fn mutated_batches_recompress_or_fail_within_bounds(
        pick in 0usize..5,
        into in 0usize..5,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut b = valid_batches()[pick].to_vec();
        for (at, value) in edits {
            let at = 21 + at % (b.len() - 21);
            b[at] = value;
        }
        fix_crc(&mut b);
        let codec = [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd][into];
        let target = Target::new(codec, if matches!(codec, Codec::None | Codec::Snappy) { 0 } else { 1 })
            .unwrap();
        let n = b.len();
        let mut stored = None;
        let peak = peak_heap_bytes(|| {
            let mut budget = DecompressBudget::for_request(n);
            let mut records = BytesMut::from(&b[..]);
            stored = split_and_validate_next(&mut records, 1 << 20, &mut budget, Some(target))
                .ok()
                .map(|batch| batch.assign(0, 0).1);
        });
        prop_assert!(peak <= heap_bound(n), "{peak} bytes for a {n}-byte batch");
        if let Some(stored) = stored {
            prop_assert!(split_and_validate(BytesMut::from(&stored[..]), 1 << 20).is_ok());
        }
    }
}
