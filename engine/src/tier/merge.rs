//! Merging small committed objects, so that the manifest (one `ObjectRef` per object, rewritten
//! whole by every commit) stays bounded: pure planning over the manifest's object list; the
//! uploader (`Tier::merge`) does the I/O and commits the result like any other object.
//!
//! Rules (ARCHITECTURE.md, "Manifest size bounds"):
//! * a run is consecutive in manifest order, from one node, each object's live extent (the bytes
//!   between its first and last referenced span) under [`MERGE_SMALL_BYTES`], at most
//!   [`MERGE_FANIN_MAX`] objects and [`MERGE_OBJECT_BYTES_MAX`] bytes, at least
//!   [`MERGE_FANIN_MIN`] objects;
//! * every partition's spans in the run continue each other (offset after offset), so the merged
//!   object holds each partition's bytes back to back with the same offsets, in spans of at most
//!   [`MERGE_SPAN_BYTES_MAX`] (cut at input span boundaries) that the span cache can hold;
//! * a run starts only at an object no larger than the rest of the run together (size tiers: a
//!   byte is rewritten a logarithmic number of times, not at every merge).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use crate::tier::manifest::ObjectRef;
use crate::tier::object_format::{Span, StreamKey};

/// Objects whose live extent is below this are merged.
pub const MERGE_SMALL_BYTES: u64 = 8 << 20;
/// The largest object a merge writes (and the most it holds in memory, plus one copy to upload).
pub const MERGE_OBJECT_BYTES_MAX: u64 = 32 << 20;
/// A merge replaces at least this many objects...
pub const MERGE_FANIN_MIN: usize = 8;
/// ...and at most this many.
pub const MERGE_FANIN_MAX: usize = 64;
/// A merged partition's bytes are cut into spans of at most this (at input span boundaries), so
/// the span cache can hold them and a cold read GETs no more than this for a fetch.
pub const MERGE_SPAN_BYTES_MAX: u64 = 4 << 20;
const _: () =
    assert!(MERGE_SPAN_BYTES_MAX as usize <= crate::tier::span_cache::SPAN_CACHE_BYTES_MAX / 4);
/// Objects a merge replaced are deleted this long after its commit (cold reads planned on them
/// finish first).
pub const MERGE_RETIRE_DELAY: Duration = Duration::from_secs(30);
/// A merge reads its run with at most this many GETs at once (its memory is the merged
/// object's either way: [`MERGE_OBJECT_BYTES_MAX`]).
pub const MERGE_GETS_IN_FLIGHT: usize = 8;
/// At most one merge starts per interval (uploads go first).
pub const MERGE_INTERVAL: Duration = Duration::from_secs(1);
/// A manifest holding more objects than this is behind on merging: a merge runs after every
/// upload (rather than only on a tick with nothing to upload, which steady `durability=object`
/// traffic never leaves) and does not give way to producers waiting for an upload.
pub const MERGE_BACKLOG_OBJECTS: usize = 2 * MERGE_FANIN_MAX;
/// While behind, merges are planned at most this often (planning scans the manifest).
pub const MERGE_BACKLOG_INTERVAL: Duration = Duration::from_millis(100);

/// The bytes of `o` that spans still reference: from the first span's start to the last one's
/// end (retention may have dropped the others). Spans are in byte order (an object is written
/// partition after partition, and dropping spans keeps the order), so this is O(1); a merge
/// checks every span of its run against it ([`layout`]).
pub fn live_extent(o: &ObjectRef) -> Range<u64> {
    match (o.spans.first(), o.spans.last()) {
        (Some(first), Some(last)) => {
            first.byte_start..(last.byte_start + last.byte_len).max(first.byte_start)
        }
        _ => 0..0,
    }
}

fn extent_len(o: &ObjectRef) -> u64 {
    let e = live_extent(o);
    e.end - e.start
}

/// The next run of objects to merge (indexes into `objects`), if any. Cost: one pass over the
/// spans, plus the continuity check of the chosen run's spans.
pub fn plan_merge(objects: &[ObjectRef]) -> Option<Range<usize>> {
    let extents: Vec<u64> = objects.iter().map(extent_len).collect();
    let small = |i: usize| !objects[i].spans.is_empty() && extents[i] < MERGE_SMALL_BYTES;
    for start in 0..objects.len() {
        if !small(start) {
            continue;
        }
        let mut total = 0u64;
        let mut end = start;
        while end < objects.len()
            && end - start < MERGE_FANIN_MAX
            && small(end)
            && objects[end].node == objects[start].node
            && total + extents[end] <= MERGE_OBJECT_BYTES_MAX
        {
            total += extents[end];
            end += 1;
        }
        if end - start < MERGE_FANIN_MIN || extents[start] > total - extents[start] {
            continue;
        }
        // Every partition's spans must continue each other: cut the run where one does not.
        let cut = start + continuous_prefix(&objects[start..end]);
        let total: u64 = extents[start..cut].iter().sum();
        if cut - start >= MERGE_FANIN_MIN && extents[start] <= total - extents[start] {
            return Some(start..cut);
        }
    }
    None
}

/// How many leading objects of `run` hold, per partition, spans that continue each other.
fn continuous_prefix(run: &[ObjectRef]) -> usize {
    let mut ends: HashMap<StreamKey, i64> = HashMap::new();
    for (i, o) in run.iter().enumerate() {
        // A merged object may hold several spans of a partition, each continuing the last.
        let mut seen: HashMap<StreamKey, i64> = HashMap::new();
        for s in &o.spans {
            let key = (s.topic_id, s.partition);
            let last = seen.get(&key).or(ends.get(&key));
            if last.is_some_and(|&last| s.base_offset != last + 1) {
                return i;
            }
            seen.insert(key, s.last_offset);
        }
        ends.extend(seen);
    }
    run.len()
}

/// Where a merged object's bytes come from: for each output span (partition order), the
/// pieces `(index in the run, byte range in that object)` to concatenate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeLayout {
    pub spans: Vec<Span>,
    pub pieces: Vec<Vec<(usize, Range<u64>)>>,
}

/// Lays a run out as one object: each partition's spans back to back, in offset order, cut
/// into output spans of at most [`MERGE_SPAN_BYTES_MAX`] at input span boundaries (an input
/// span bigger than that is one output span).
/// Panics if a partition's spans do not continue each other ([`plan_merge`] only picks runs
/// where they do).
pub fn layout(run: &[ObjectRef]) -> MergeLayout {
    let mut by_partition: BTreeMap<StreamKey, Vec<(usize, &Span)>> = BTreeMap::new();
    for (i, o) in run.iter().enumerate() {
        for pair in o.spans.windows(2) {
            assert!(
                pair[0].byte_start + pair[0].byte_len <= pair[1].byte_start,
                "an object's spans are in byte order"
            );
        }
        for s in &o.spans {
            by_partition
                .entry((s.topic_id, s.partition))
                .or_default()
                .push((i, s));
        }
    }
    let mut spans = Vec::with_capacity(by_partition.len());
    let mut pieces = Vec::with_capacity(by_partition.len());
    let mut at = 0u64;
    for ((topic_id, partition), parts) in by_partition {
        for pair in parts.windows(2) {
            assert_eq!(
                pair[1].1.base_offset,
                pair[0].1.last_offset + 1,
                "a merged partition's spans continue each other"
            );
        }
        // Cut where the next input span would take the output span past the cap.
        let mut cuts: Vec<&[(usize, &Span)]> = Vec::new();
        let mut from = 0;
        let mut bytes = 0u64;
        for (k, (_, s)) in parts.iter().enumerate() {
            if k > from && bytes + s.byte_len > MERGE_SPAN_BYTES_MAX {
                cuts.push(&parts[from..k]);
                from = k;
                bytes = 0;
            }
            bytes += s.byte_len;
        }
        cuts.push(&parts[from..]);
        for cut in cuts {
            let byte_len: u64 = cut.iter().map(|(_, s)| s.byte_len).sum();
            spans.push(Span {
                topic_id,
                partition,
                base_offset: cut[0].1.base_offset,
                last_offset: cut.last().expect("non-empty").1.last_offset,
                byte_start: at,
                byte_len,
                max_timestamp: cut.iter().map(|(_, s)| s.max_timestamp).max().unwrap_or(-1),
            });
            pieces.push(
                cut.iter()
                    .map(|&(i, s)| (i, s.byte_start..s.byte_start + s.byte_len))
                    .collect(),
            );
            at += byte_len;
        }
    }
    MergeLayout { spans, pieces }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::manifest::ShardManifest;

    fn span(p: i32, base: i64, n: i64, at: u64, len: u64, ts: i64) -> Span {
        Span {
            topic_id: [7; 16],
            partition: p,
            base_offset: base,
            last_offset: base + n - 1,
            byte_start: at,
            byte_len: len,
            max_timestamp: ts,
        }
    }

    /// An object holding `span_bytes` for each of `partitions` partitions, offsets following
    /// `next` (updated).
    fn object(
        key: u64,
        node: i32,
        partitions: i32,
        span_bytes: u64,
        ts: i64,
        next: &mut [i64],
    ) -> ObjectRef {
        let spans = (0..partitions)
            .map(|p| {
                let s = span(
                    p,
                    next[p as usize],
                    10,
                    p as u64 * span_bytes,
                    span_bytes,
                    ts,
                );
                next[p as usize] += 10;
                s
            })
            .collect();
        ObjectRef {
            key: crate::layout::object(0, 1, key),
            size: partitions as u64 * span_bytes + 100,
            spans,
            node,
        }
    }

    #[test]
    fn small_runs_are_merged_big_objects_and_other_nodes_are_not() {
        let mut next = vec![0; 4];
        let mut objects: Vec<ObjectRef> = (0..7)
            .map(|k| object(k, 1, 4, 1000, k as i64, &mut next))
            .collect();
        assert_eq!(plan_merge(&objects), None, "7 objects are too few");
        objects.push(object(7, 1, 4, 1000, 7, &mut next));
        assert_eq!(plan_merge(&objects), Some(0..8));
        // A big object ends the run; another node's object too.
        objects.insert(3, object(100, 1, 1, MERGE_SMALL_BYTES, 0, &mut [0]));
        assert_eq!(plan_merge(&objects), None);
        let mut next = vec![0; 4];
        let mut mixed: Vec<ObjectRef> = (0..16)
            .map(|k| object(k, if k == 4 { 2 } else { 1 }, 4, 1000, 0, &mut next))
            .collect();
        assert_eq!(plan_merge(&mixed), Some(5..16));
        // A gap in a partition's offsets ends the run.
        mixed[9].spans[2].base_offset += 1;
        assert_eq!(plan_merge(&mixed), None);
    }

    #[test]
    fn a_big_first_object_waits_until_the_rest_outweighs_it() {
        let mut next = vec![0; 2];
        let mut objects = vec![object(0, 1, 2, 100_000, 0, &mut next)];
        objects.extend((1..9).map(|k| object(k, 1, 2, 1000, 0, &mut next)));
        // 200 kB first, 16 kB after it: merge the 8 small ones only.
        assert_eq!(plan_merge(&objects), Some(1..9));
    }

    #[test]
    fn a_layout_keeps_offsets_and_bytes() {
        let mut next = vec![0; 3];
        let mut run: Vec<ObjectRef> = (0..3)
            .map(|k| object(k, 1, 3, 50, 10 * k as i64, &mut next))
            .collect();
        // Retention dropped partition 0's first span.
        run[0].spans.remove(0);
        let l = layout(&run);
        assert_eq!(l.spans.len(), 3);
        assert_eq!(l.spans[0].base_offset, 10);
        assert_eq!(l.spans[0].last_offset, 29);
        assert_eq!((l.spans[0].byte_start, l.spans[0].byte_len), (0, 100));
        assert_eq!(l.pieces[0], vec![(1, 0..50), (2, 0..50)]);
        assert_eq!(l.spans[1].base_offset, 0);
        assert_eq!(l.spans[1].last_offset, 29);
        assert_eq!((l.spans[1].byte_start, l.spans[1].byte_len), (100, 150));
        assert_eq!(l.pieces[1], vec![(0, 50..100), (1, 50..100), (2, 50..100)]);
        assert_eq!(l.spans[2].max_timestamp, 20);
    }

    /// A merged partition's bytes are cut into output spans of at most
    /// [`MERGE_SPAN_BYTES_MAX`] (at input span boundaries; an input span bigger than that stays
    /// whole), so the span cache, which refuses spans over 16 MiB, can hold them: a single
    /// 32 MiB span was GET again, whole, for every 1 MiB fetch.
    #[test]
    fn a_layout_cuts_a_partitions_bytes_into_cacheable_spans() {
        const MIB: u64 = 1 << 20;
        let mut next = vec![0; 2];
        let mut run: Vec<ObjectRef> = (0..10)
            .map(|k| object(k, 1, 2, MIB, k as i64, &mut next))
            .collect();
        // Partition 1's spans of objects 3..: 6 MiB, more than a cut holds.
        for o in &mut run[3..] {
            o.spans[1].byte_len = 6 * MIB;
        }
        let l = layout(&run);
        let p0: Vec<(i64, i64, u64, u64)> = l
            .spans
            .iter()
            .filter(|s| s.partition == 0)
            .map(|s| (s.base_offset, s.last_offset, s.byte_start, s.byte_len))
            .collect();
        assert_eq!(
            p0,
            vec![
                (0, 39, 0, 4 * MIB),
                (40, 79, 4 * MIB, 4 * MIB),
                (80, 99, 8 * MIB, 2 * MIB)
            ]
        );
        assert_eq!(l.pieces[0], (0..4).map(|k| (k, 0..MIB)).collect::<Vec<_>>());
        assert_eq!(l.spans[2].max_timestamp, 9);
        let p1: Vec<(i64, i64, u64)> = l
            .spans
            .iter()
            .filter(|s| s.partition == 1)
            .map(|s| (s.base_offset, s.last_offset, s.byte_len))
            .collect();
        let mut want = vec![(0, 29, 3 * MIB)];
        want.extend((3..10).map(|k| (k * 10, k * 10 + 9, 6 * MIB)));
        assert_eq!(p1, want);
        // Back to back, each span no longer than the cap unless one input span was.
        let mut at = 0;
        for (s, pieces) in l.spans.iter().zip(&l.pieces) {
            assert_eq!(s.byte_start, at);
            assert!(s.byte_len <= MERGE_SPAN_BYTES_MAX || pieces.len() == 1);
            at += s.byte_len;
        }
        // A merged object with several spans per partition merges again.
        assert_eq!(
            continuous_prefix(&[
                run[0].clone(),
                ObjectRef {
                    spans: l.spans.clone(),
                    ..run[0].clone()
                }
            ]),
            1,
            "offsets restart: not a continuation"
        );
        let mut next = vec![0; 2];
        let first = object(100, 1, 2, MIB, 0, &mut next);
        let mut following = layout(&run).spans;
        for s in &mut following {
            s.base_offset += 10;
            s.last_offset += 10;
        }
        let merged = ObjectRef {
            spans: following,
            ..run[0].clone()
        };
        assert_eq!(continuous_prefix(&[first, merged]), 2);
    }

    /// One shard, 100 partitions, an object every 60 s of simulated time (each partition
    /// writing 100 B/s), retention 7 days, a merge planned after every commit as the uploader
    /// does: the manifest stays small all week and after. Without merging it grows by 6.5 kB
    /// per object: past 8 MiB after 4 simulated hours at one object per 10 s (this test's first
    /// version), past the 256 MiB read limit after about 11 hours at the default one object per
    /// second. The full-rate week is `cargo bench --bench manifest`.
    #[test]
    fn a_simulated_week_keeps_the_manifest_bounded() {
        const PARTITIONS: i32 = 100;
        const EVERY_MS: i64 = 60_000;
        const RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
        const SPAN_BYTES: u64 = 100 * (EVERY_MS as u64 / 1000);
        const BOUND_BYTES: usize = 8 << 20;
        let mut m = ShardManifest::empty(0, 1);
        let mut next = vec![0i64; PARTITIONS as usize];
        let mut merged = 0;
        let mut largest = 0;
        let mut now = 0i64;
        let mut key = 0u64;
        while now < RETENTION_MS + 24 * 3600 * 1000 {
            now += EVERY_MS;
            key += 1;
            m.objects
                .push(object(key, 1, PARTITIONS, SPAN_BYTES, now, &mut next));
            // Retention (whole spans, oldest first, as the deletion pass drops them; every
            // 10 simulated minutes, to keep the test quick).
            if now % 600_000 == 0 {
                m.objects.retain_mut(|o| {
                    o.spans.retain(|s| now - s.max_timestamp <= RETENTION_MS);
                    !o.spans.is_empty()
                });
            }
            if let Some(run) = plan_merge(&m.objects) {
                let l = layout(&m.objects[run.clone()]);
                key += 1;
                let size = l.spans.iter().map(|s| s.byte_len).sum::<u64>() + 100;
                let into = ObjectRef {
                    key: crate::layout::object(0, 1, key),
                    size,
                    spans: l.spans,
                    node: 1,
                };
                m.objects.splice(run, [into]);
                merged += 1;
            }
            if now % (6 * 3600 * 1000) == 0 {
                let bytes = m.encode().len();
                largest = largest.max(bytes);
                assert!(
                    bytes <= BOUND_BYTES,
                    "after {} simulated hours the manifest holds {} objects in {bytes} bytes",
                    now / 3_600_000,
                    m.objects.len()
                );
            }
        }
        assert!(merged > 0);
        eprintln!(
            "simulated 8 days: {} objects, {} bytes at the end, {largest} bytes at most, {merged} merges",
            m.objects.len(),
            m.encode().len()
        );
    }
}
