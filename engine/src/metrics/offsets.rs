//! The per-partition families (log start, log end, high watermark) and the groups' committed
//! offsets and lag, from the offsets each shard publishes once a second; sorted, at most
//! `--metrics-partition-limit` series each.

use std::sync::Arc;

use super::text::{escape, gauge, Family, Out};
use super::{CommittedOffset, PartitionOffsets, ShardStats};

/// Per-partition offsets and group offsets and lag, sorted, at most `limit` series each.
pub(super) fn render(o: &mut Out, shards: &[Arc<ShardStats>], limit: usize) {
    let (partitions, committed) = published_offsets(shards);
    let reported = [
        (
            "of=\"shown\"".to_string(),
            partitions.len().min(limit) as u64,
        ),
        ("of=\"all\"".to_string(), partitions.len() as u64),
    ];
    o.family(
        &gauge(
            "ringtail_partitions_reported",
            "Partitions in the per-partition series (at most --metrics-partition-limit), and all \
             partitions.",
        ),
        reported,
    );
    for (family, value) in PARTITION_SERIES {
        let shown = partitions.iter().take(limit);
        o.family(family, shown.map(|p| (partition_labels(p), value(p))));
    }
    let committed = &committed[..committed.len().min(limit)];
    let lag = committed.iter().filter_map(|c| {
        let p = partitions
            .iter()
            .find(|p| p.topic == c.topic && p.partition == c.partition)?;
        Some((group_labels(c), (p.high_watermark - c.offset).max(0)))
    });
    o.family(
        &gauge(
            "ringtail_group_lag",
            "Records between a group's committed offset and the partition's high watermark.",
        ),
        lag,
    );
    o.family(
        &gauge(
            "ringtail_group_committed_offset",
            "A group's committed offset.",
        ),
        committed.iter().map(|c| (group_labels(c), c.offset)),
    );
}

/// The offsets every shard published, sorted by partition and by group.
fn published_offsets(shards: &[Arc<ShardStats>]) -> (Vec<PartitionOffsets>, Vec<CommittedOffset>) {
    let mut partitions: Vec<PartitionOffsets> = Vec::new();
    let mut committed: Vec<CommittedOffset> = Vec::new();
    for s in shards {
        let snap = s.offsets.lock().unwrap();
        partitions.extend(snap.partitions.iter().cloned());
        committed.extend(snap.committed.iter().cloned());
    }
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    committed
        .sort_by(|a, b| (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition)));
    (partitions, committed)
}

fn partition_labels(p: &PartitionOffsets) -> String {
    format!(
        "topic=\"{}\",partition=\"{}\"",
        escape(&p.topic),
        p.partition
    )
}

fn group_labels(c: &CommittedOffset) -> String {
    format!(
        "group=\"{}\",topic=\"{}\",partition=\"{}\"",
        escape(&c.group),
        escape(&c.topic),
        c.partition
    )
}

type PartitionSeries = (Family, fn(&PartitionOffsets) -> i64);
const PARTITION_SERIES: &[PartitionSeries] = &[
    (
        gauge(
            "ringtail_partition_log_start_offset",
            "First offset a consumer can read.",
        ),
        |p| p.log_start,
    ),
    (
        gauge(
            "ringtail_partition_log_end_offset",
            "Offset the next appended record gets.",
        ),
        |p| p.log_end,
    ),
    (
        gauge(
            "ringtail_partition_high_watermark",
            "Offset below which records are durable and visible to consumers.",
        ),
        |p| p.high_watermark,
    ),
];
