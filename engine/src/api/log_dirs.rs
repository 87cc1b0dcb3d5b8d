//! DescribeLogDirs (API 35): one log dir per broker, its data directory, listing the partitions
//! this broker serves now (in cluster mode, those of the slots open here) and the bytes each
//! holds: its spans in committed objects plus what its WAL holds beyond them. Ringtail keeps a
//! partition's older bytes in the object store, not in the data directory, but they are the
//! partition's size all the same (what retention.bytes is judged by). Offset lag is 0 and no
//! log is a "future" one: nothing is moved between directories.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use super::admin::text;
use crate::catalog::{Snapshot, TopicMeta};
use crate::partition::items::PartitionKey;
use crate::shard::{Broker, Route};

pub async fn describe_log_dirs(
    broker: &Broker,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let wanted = wanted(&broker.catalog.snapshot(), request.topics);
    let topics = sizes(broker, wanted)
        .await
        .into_iter()
        .map(|(name, partitions)| {
            DescribeLogDirsTopic::default()
                .with_name(TopicName(text(name)))
                .with_partitions(partitions)
        })
        .collect();
    let disk = data_dir_usage(broker.config.data_dir.clone()).await;
    let result = DescribeLogDirsResult::default()
        .with_log_dir(text(disk.path))
        .with_topics(topics)
        .with_total_bytes(disk.total_bytes)
        .with_usable_bytes(disk.usable_bytes);
    DescribeLogDirsResponse::default().with_results(vec![result])
}

/// The partitions the request asks about, by topic: all of them for a null list; unknown
/// topics and partitions are left out (Kafka lists only the logs it has).
fn wanted(
    snapshot: &Snapshot,
    topics: Option<Vec<DescribableLogDirTopic>>,
) -> Vec<(Arc<TopicMeta>, BTreeSet<i32>)> {
    let Some(topics) = topics else {
        return snapshot
            .topics()
            .into_iter()
            .map(|t| {
                let all = (0..t.partitions).collect();
                (t, all)
            })
            .collect();
    };
    // Each topic and partition once, however often the request names them; only partitions
    // that exist are kept, so the sets are bounded by the catalog, not by the request.
    let mut by_name: BTreeMap<&str, (Arc<TopicMeta>, BTreeSet<i32>)> = BTreeMap::new();
    for requested in &topics {
        let Some(t) = snapshot.by_name(&requested.topic) else {
            continue;
        };
        let (_, known) = by_name
            .entry(t.name.as_str())
            .or_insert_with(|| (t.clone(), BTreeSet::new()));
        known.extend(
            requested
                .partitions
                .iter()
                .filter(|p| (0..t.partitions).contains(*p)),
        );
    }
    by_name.into_values().collect()
}

/// The bytes of each wanted partition whose slot this broker serves, by topic name (sorted),
/// asked of each slot once.
async fn sizes(
    broker: &Broker,
    wanted: Vec<(Arc<TopicMeta>, BTreeSet<i32>)>,
) -> BTreeMap<String, Vec<DescribeLogDirsPartition>> {
    let mut by_route: BTreeMap<Route, Vec<(String, PartitionKey)>> = BTreeMap::new();
    for (t, partitions) in &wanted {
        for &partition in partitions {
            let key = PartitionKey {
                topic_id: t.id,
                partition,
            };
            by_route
                .entry(broker.owner(t, partition))
                .or_default()
                .push((t.name.clone(), key));
        }
    }
    let asked = by_route.into_iter().map(|(route, partitions)| async move {
        let keys: Vec<PartitionKey> = partitions.iter().map(|(_, k)| *k).collect();
        let bytes = broker
            .on_slot(route, move |slot| {
                Box::pin(async move { slot.partitions.stored_bytes(&keys) })
            })
            .await;
        // None: the slot is not served here (another broker's, or on its way).
        bytes.map(|bytes| partitions.into_iter().zip(bytes).collect::<Vec<_>>())
    });
    let mut out: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for ((name, key), bytes) in futures::future::join_all(asked)
        .await
        .into_iter()
        .flatten()
        .flatten()
    {
        out.entry(name).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(key.partition)
                .with_partition_size(bytes)
                .with_offset_lag(0)
                .with_is_future_key(false),
        );
    }
    for partitions in out.values_mut() {
        partitions.sort_by_key(|p| p.partition_index);
    }
    out
}

/// The data directory and its file system's size and free bytes (-1 where unknown).
struct DiskUsage {
    path: String,
    total_bytes: i64,
    usable_bytes: i64,
}

/// Reads [`DiskUsage`] on a thread of its own: statvfs can block (a network file system).
async fn data_dir_usage(dir: PathBuf) -> DiskUsage {
    let shown = dir.display().to_string();
    ringtail_shards::off_thread("log-dirs", move || {
        let path = std::path::absolute(&dir).unwrap_or(dir);
        let (total_bytes, usable_bytes) = file_system_bytes(&path).unwrap_or((-1, -1));
        DiskUsage {
            path: path.display().to_string(),
            total_bytes,
            usable_bytes,
        }
    })
    .await
    .unwrap_or(DiskUsage {
        path: shown,
        total_bytes: -1,
        usable_bytes: -1,
    })
}

/// (size, bytes available to unprivileged writers) of the file system holding `path`.
fn file_system_bytes(path: &Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes the struct it is given; all-zero bytes are a valid statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and outlives the call; `st` is a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let block = st.f_frsize as i64;
    Some((
        (st.f_blocks as i64).saturating_mul(block),
        (st.f_bavail as i64).saturating_mul(block),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_systems_bytes_are_read_and_a_missing_path_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let (total, usable) = file_system_bytes(dir.path()).unwrap();
        assert!(
            total > 0 && (0..=total).contains(&usable),
            "{total} {usable}"
        );
        assert_eq!(file_system_bytes(&dir.path().join("nope")), None);
    }
}
