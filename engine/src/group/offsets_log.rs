//! The committed-offsets log: a group's offset changes as records of its partition of the
//! internal topic `__consumer_offsets`, written through the shard's ordinary produce path —
//! WAL, then objects — so they are exactly as durable as user data. An OffsetCommit is
//! answered once its record is durable; a shard replays its offsets partitions at start and
//! answers COORDINATOR_LOAD_IN_PROGRESS until it has; a partition whose log has grown far
//! beyond its live offsets is compacted (rewritten, then the records before the rewrite
//! deleted).
//!
//! A record: key `{"g","t","p"}` (group, topic, partition) and value `{"o","e","m","ts"}`
//! (offset, leader epoch, metadata, commit time in ms) as JSON; no value for a deleted offset.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringtail_netio::batch::ValidBatch;
use serde::{Deserialize, Serialize};

use crate::catalog::TopicMeta;
use crate::errors::{COORDINATOR_NOT_AVAILABLE, NONE};
use crate::group::coordinator::{offsets_partition, Committed, Coordinator, OffsetChange};
use crate::partition::items::{DeleteItem, FetchItem, ListItem, PartitionKey, ProduceItem};
use ringtail_shards::now_ms;

/// How long an offset commit waits for its record to be durable as the offsets topic demands
/// (with an object store: uploaded), then answers COORDINATOR_NOT_AVAILABLE (retriable), as
/// Kafka does after `offsets.commit.timeout.ms` (the same 5 s default).
pub const OFFSETS_COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The offsets topic's configs: kept forever, and as durable as the cluster allows: with an
/// object store `durability=object` (a commit is answered once it is in the bucket: no machine
/// loss loses it), without one the WAL.
pub fn offsets_topic_configs(object_store: bool) -> BTreeMap<String, String> {
    let mut c = crate::catalog::topic_config::config_map(&[
        ("retention.ms", "-1"),
        ("retention.bytes", "-1"),
    ]);
    if object_store {
        c.insert("durability".into(), "object".into());
    }
    c
}

/// The configs an existing offsets topic should move to, or None if it has them: a catalog
/// written before the offsets topic took the strongest durability moves to it; a data directory
/// started again without its object store goes back to the WAL (durability=object would refuse
/// every commit).
pub fn offsets_topic_upgrade(
    current: &BTreeMap<String, String>,
    object_store: bool,
) -> Option<BTreeMap<String, String>> {
    let mut next = current.clone();
    next.remove("durability");
    for (k, v) in offsets_topic_configs(object_store) {
        next.insert(k, v);
    }
    (next != *current).then_some(next)
}

/// A committed offset as stored: the record key...
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OffsetKey {
    g: String,
    t: String,
    p: i32,
}

/// ...and value (no value: the offset was deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OffsetValue {
    o: i64,
    e: i32,
    m: Option<String>,
    ts: i64,
}

/// The record of one offset change.
fn encode_change(group: &str, (topic, partition, value): &OffsetChange) -> (Bytes, Option<Bytes>) {
    let key = OffsetKey {
        g: group.to_string(),
        t: topic.clone(),
        p: *partition,
    };
    let value = value.as_ref().map(|c| OffsetValue {
        o: c.offset,
        e: c.leader_epoch,
        m: c.metadata.clone(),
        ts: c.commit_ms,
    });
    (
        Bytes::from(serde_json::to_vec(&key).expect("serialisable")),
        value.map(|v| Bytes::from(serde_json::to_vec(&v).expect("serialisable"))),
    )
}

/// The offset change a record holds: (group, change). None if it does not read as one.
fn decode_change(key: &[u8], value: Option<&[u8]>) -> Option<(String, OffsetChange)> {
    let k: OffsetKey = serde_json::from_slice(key).ok()?;
    let v = match value {
        Some(v) => {
            let v: OffsetValue = serde_json::from_slice(v).ok()?;
            Some(Committed {
                offset: v.o,
                leader_epoch: v.e,
                metadata: v.m,
                commit_ms: v.ts,
            })
        }
        None => None,
    };
    Some((k.g, (k.t, k.p, v)))
}

/// Records of one batch stay under this many bytes, well below the smallest WAL write.
const OFFSET_BATCH_BYTES: usize = 32 << 10;

type RecordKv = (Option<Bytes>, Option<Bytes>);

/// The records of `changes`, as batches small enough for any WAL write.
fn offset_batches(group: &str, changes: &[OffsetChange]) -> Result<Vec<ValidBatch>, String> {
    let mut batches = Vec::new();
    let mut chunk: Vec<RecordKv> = Vec::new();
    let mut bytes = 0usize;
    let flush = |chunk: &mut Vec<RecordKv>, batches: &mut Vec<ValidBatch>| -> Result<(), String> {
        if chunk.is_empty() {
            return Ok(());
        }
        let encoded = ringtail_netio::batch::encode_records(std::mem::take(chunk), now_ms());
        batches.extend(
            ringtail_netio::batch::split_and_validate(encoded, usize::MAX)
                .map_err(|e| e.to_string())?,
        );
        Ok(())
    };
    for c in changes {
        let (k, v) = encode_change(group, c);
        let size = k.len() + v.as_ref().map_or(0, |v| v.len()) + 32;
        if bytes + size > OFFSET_BATCH_BYTES {
            flush(&mut chunk, &mut batches)?;
            bytes = 0;
        }
        bytes += size;
        chunk.push((Some(k), v));
    }
    flush(&mut chunk, &mut batches)?;
    Ok(batches)
}

/// Writes offset changes of `group` to its offsets partition and applies them once durable.
/// `member` (member id, generation) is checked against the group right before the write, with
/// no wait in between, so that a member that lost its generation meanwhile cannot commit.
/// Returns NONE or the error every partition of the commit gets.
pub async fn write_offsets(
    coordinator: &Coordinator,
    offsets_topic: &Arc<TopicMeta>,
    group: &str,
    member: Option<(&str, i32)>,
    changes: Vec<OffsetChange>,
) -> i16 {
    // In flight from here until this returns (a compaction waits for it).
    let _turn = coordinator.compaction.commit_turn().await;
    if let Some((member, generation)) = member {
        let check = coordinator.check_commit(group, member, generation);
        if check != NONE {
            return check;
        }
    }
    if changes.is_empty() {
        return NONE;
    }
    let batches = match offset_batches(group, &changes) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "offset commit batch does not validate");
            return COORDINATOR_NOT_AVAILABLE;
        }
    };
    let partition = offsets_partition(group, offsets_topic.partitions);
    coordinator
        .compaction
        .count_records(partition, changes.len() as u64);
    let groups = vec![(group.to_string(), changes, batches)];
    produce_all(coordinator, offsets_topic, partition, groups).await
}

/// Writes the offset changes of several groups in one produce (one upload to wait for with
/// `durability=object`), and applies them once durable.
async fn produce_all(
    coordinator: &Coordinator,
    offsets_topic: &Arc<TopicMeta>,
    partition: i32,
    groups: Vec<(String, Vec<OffsetChange>, Vec<ValidBatch>)>,
) -> i16 {
    let mut batches = Vec::new();
    let mut applied = Vec::with_capacity(groups.len());
    for (group, changes, b) in groups {
        batches.extend(b);
        applied.push((group, changes));
    }
    let item = ProduceItem {
        key: PartitionKey {
            topic_id: offsets_topic.id,
            partition,
        },
        topic: offsets_topic.clone(),
        batches,
        acks_all: true,
        ack_timeout: Some(OFFSETS_COMMIT_TIMEOUT),
    };
    let outcome = coordinator.partitions.produce(vec![item]).await;
    match outcome.first() {
        Some(o) if o.error == NONE => {
            for (group, changes) in applied {
                coordinator.apply(&group, changes);
            }
            NONE
        }
        Some(o) => {
            tracing::warn!(
                groups = applied.len(),
                error = o.error,
                "offset commit not durable"
            );
            COORDINATOR_NOT_AVAILABLE
        }
        None => COORDINATOR_NOT_AVAILABLE,
    }
}

/// Compacts an offsets partition that grew past its threshold: rewrites every live offset of
/// its groups (commits wait meanwhile, so this is the latest state), then deletes the records
/// before the rewrite (DeleteRecords: memory, WAL and objects let them go). Replay after a
/// restart reads the rewrite and what followed; the last record of each key still wins.
pub async fn compact_if_due(coordinator: &Coordinator, offsets_topic: &Arc<TopicMeta>) {
    if !coordinator.loaded.get() {
        return;
    }
    let live = coordinator.live_offsets_count() as u64;
    let Some(partition) = coordinator.compaction.due(live, Instant::now()) else {
        return;
    };
    let turn = coordinator.compaction.compaction_turn().await;
    let key = PartitionKey {
        topic_id: offsets_topic.id,
        partition,
    };
    let end = coordinator
        .partitions
        .list_offsets(vec![ListItem {
            key,
            timestamp: -1,
            current_leader_epoch: -1,
        }])
        .await[0]
        .offset;
    let mut ok = true;
    let mut rewritten = 0usize;
    // One produce for the whole rewrite: with durability=object, one upload to wait for.
    let mut groups = Vec::new();
    for (group, changes) in coordinator.snapshot(partition, offsets_topic.partitions) {
        rewritten += changes.len();
        let Ok(batches) = offset_batches(&group, &changes) else {
            ok = false;
            break;
        };
        groups.push((group, changes, batches));
    }
    if ok && !groups.is_empty() {
        ok = produce_all(coordinator, offsets_topic, partition, groups).await == NONE;
    }
    // The rewrite is durable: later commits land after it, whatever the deletion below does.
    drop(turn);
    if ok && end > 0 {
        let deleted = coordinator
            .partitions
            .delete_records(vec![DeleteItem { key, offset: end }])
            .await;
        ok = deleted[0].error == NONE;
    }
    if ok {
        coordinator
            .compaction
            .compacted(partition, rewritten as u64);
        tracing::info!(
            partition,
            below = end,
            live = rewritten,
            "compacted committed offsets"
        );
    } else {
        tracing::warn!(
            partition,
            "compacting committed offsets failed; retrying in a minute"
        );
        coordinator.compaction.failed(Instant::now());
    }
}

/// A record of the offsets log as replay reads it.
#[derive(Debug, PartialEq)]
enum LogRecord {
    /// An offset change of a group: (group, change).
    Change(String, OffsetChange),
    /// A key or value that does not read as an offset change.
    Unreadable,
    /// No key (the coordinator never writes one).
    Keyless,
}

/// The records of one batch of the offsets log, with their offsets; Err if it does not decode.
fn decode_batch(batch: &Bytes) -> Result<Vec<(i64, LogRecord)>, String> {
    let mut b = batch.clone();
    let set =
        kafka_protocol::records::RecordBatchDecoder::decode(&mut b).map_err(|e| e.to_string())?;
    Ok(set
        .records
        .into_iter()
        .map(|r| {
            let record = match r.key {
                None => LogRecord::Keyless,
                Some(key) => match decode_change(&key, r.value.as_deref()) {
                    Some((group, change)) => LogRecord::Change(group, change),
                    None => LogRecord::Unreadable,
                },
            };
            (r.offset, record)
        })
        .collect())
}

/// Replays the offsets partitions this shard owns (start-up), then marks the coordinator
/// loaded.
pub async fn load_offsets(
    coordinator: Rc<Coordinator>,
    offsets_topic: Arc<TopicMeta>,
    partitions: Vec<i32>,
) {
    let mut records = 0usize;
    for partition in partitions {
        let key = PartitionKey {
            topic_id: offsets_topic.id,
            partition,
        };
        let mut offset = 0i64;
        loop {
            let out = coordinator
                .partitions
                .fetch(vec![FetchItem {
                    key,
                    offset,
                    max_bytes: 8 << 20,
                    first_batch_always: true,
                    current_leader_epoch: -1,
                }])
                .await;
            let o = &out[0];
            if o.error == kafka_protocol::ResponseError::OffsetOutOfRange.code()
                && offset < o.log_start_offset
            {
                offset = o.log_start_offset;
                continue;
            }
            if o.error != NONE {
                tracing::error!(
                    partition,
                    offset,
                    error = o.error,
                    "reading committed offsets failed; retrying"
                );
                ringtail_shards::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            if o.batches.is_empty() {
                break;
            }
            for batch in &o.batches {
                let decoded = match decode_batch(batch) {
                    Ok(decoded) => decoded,
                    Err(e) => {
                        tracing::error!(partition, error = %e, "a committed-offsets batch does not decode; skipped");
                        if let Ok(h) = ringtail_netio::header::BatchHeader::parse(batch) {
                            offset = offset.max(h.last_offset() + 1);
                        }
                        continue;
                    }
                };
                for (at, record) in decoded {
                    offset = offset.max(at + 1);
                    match record {
                        LogRecord::Change(group, change) => {
                            coordinator.apply(&group, vec![change]);
                            coordinator.compaction.count_records(partition, 1);
                            records += 1;
                        }
                        LogRecord::Unreadable => tracing::warn!(
                            partition,
                            offset = at,
                            "unreadable committed-offset record; skipped"
                        ),
                        LogRecord::Keyless => {}
                    }
                }
            }
        }
    }
    tracing::info!(records, "committed offsets loaded");
    coordinator.loaded.set(true);
}

#[cfg(test)]
mod tests {
    use ringtail_netio::header::BATCH_HEADER_LEN;

    use super::*;

    #[test]
    fn the_offsets_topic_is_as_durable_as_the_cluster_allows() {
        let with_store = offsets_topic_configs(true);
        assert_eq!(with_store["durability"], "object");
        assert_eq!(with_store["retention.ms"], "-1");
        assert!(!offsets_topic_configs(false).contains_key("durability"));
        // Validates as a topic config.
        assert_eq!(
            crate::catalog::topic_config::TopicConfig::from_map(&with_store)
                .unwrap()
                .durability,
            crate::catalog::topic_config::Durability::Object
        );
        // An offsets topic created before it took durability=object is moved to it, once.
        let old = offsets_topic_configs(false);
        assert_eq!(offsets_topic_upgrade(&old, true), Some(with_store.clone()));
        assert_eq!(offsets_topic_upgrade(&with_store, true), None);
        assert_eq!(offsets_topic_upgrade(&old, false), None);
        assert_eq!(offsets_topic_upgrade(&with_store, false), Some(old));
    }

    fn commit(offset: i64, metadata: Option<&str>) -> Option<Committed> {
        Some(Committed {
            offset,
            leader_epoch: (offset % 3) as i32 - 1,
            metadata: metadata.map(str::to_string),
            commit_ms: 1_700_000_000_000 + offset,
        })
    }

    /// What replay reads of `batches` once the log has given them consecutive offsets.
    fn replayed(batches: Vec<ValidBatch>) -> Vec<(i64, LogRecord)> {
        let mut next = 0;
        let mut records = Vec::new();
        for batch in batches {
            let (header, bytes) = batch.assign(next, 0);
            next = header.last_offset() + 1;
            records.extend(decode_batch(&bytes).expect("a batch we wrote decodes"));
        }
        records
    }

    #[test]
    fn the_record_format_is_kept() {
        // The bytes logs written so far hold: replay must keep reading them.
        let (k, v) = encode_change("g1", &("orders".into(), 3, commit(42, Some("m"))));
        assert_eq!(&k[..], br#"{"g":"g1","t":"orders","p":3}"#);
        assert_eq!(
            v.as_deref(),
            Some(&br#"{"o":42,"e":-1,"m":"m","ts":1700000000042}"#[..])
        );
        let (_, v) = encode_change("g1", &("orders".into(), 3, None));
        assert_eq!(v, None, "a deleted offset is a record without value");
        assert_eq!(
            decode_change(
                br#"{"g":"g","t":"t","p":0}"#,
                Some(br#"{"o":7,"e":-1,"m":null,"ts":1}"#)
            ),
            Some((
                "g".into(),
                (
                    "t".into(),
                    0,
                    Some(Committed {
                        offset: 7,
                        leader_epoch: -1,
                        metadata: None,
                        commit_ms: 1
                    })
                )
            ))
        );
    }

    #[test]
    fn a_commit_of_many_partitions_round_trips_through_its_batches() {
        let metadata = [
            "",
            "m",
            "quote \" backslash \\ ünïcödé ✓",
            "{\"json\": [1]}",
        ];
        let changes: Vec<OffsetChange> = (0..40)
            .flat_map(|t| (0..50).map(move |p| (t, p)))
            .map(|(t, p)| {
                let n = t * 50 + p;
                let value = match n % 7 {
                    0 => None, // deleted
                    1 => commit(n as i64, None),
                    _ => commit(n as i64 * 1_000, Some(metadata[n % metadata.len()])),
                };
                (format!("topic-{t}"), p as i32, value)
            })
            .collect();
        let group = "group ✓";
        let batches = offset_batches(group, &changes).unwrap();
        assert!(batches.len() > 1, "2000 records fill more than one batch");
        for b in &batches {
            assert!(
                b.len() <= OFFSET_BATCH_BYTES + BATCH_HEADER_LEN,
                "{}",
                b.len()
            );
        }
        let records = replayed(batches);
        let offsets: Vec<i64> = records.iter().map(|(at, _)| *at).collect();
        assert_eq!(offsets, (0..changes.len() as i64).collect::<Vec<_>>());
        let read: Vec<LogRecord> = records.into_iter().map(|(_, r)| r).collect();
        let written: Vec<LogRecord> = changes
            .into_iter()
            .map(|c| LogRecord::Change(group.into(), c))
            .collect();
        assert_eq!(read, written);
    }

    #[test]
    fn no_changes_no_batches_and_an_oversized_record_travels_alone() {
        assert!(offset_batches("g", &[]).unwrap().is_empty());
        let big = "x".repeat(OFFSET_BATCH_BYTES);
        let changes: Vec<OffsetChange> = vec![
            ("t".into(), 0, commit(1, None)),
            ("t".into(), 1, commit(2, Some(&big))),
            ("t".into(), 2, None),
        ];
        let batches = offset_batches("g", &changes).unwrap();
        let counts: Vec<i32> = batches.iter().map(|b| b.header.record_count).collect();
        assert_eq!(counts, vec![1, 1, 1]);
        let read: Vec<LogRecord> = replayed(batches).into_iter().map(|(_, r)| r).collect();
        let written: Vec<LogRecord> = changes
            .into_iter()
            .map(|c| LogRecord::Change("g".into(), c))
            .collect();
        assert_eq!(read, written);
    }

    #[test]
    fn replay_skips_what_is_not_an_offset_change() {
        let records = vec![
            (None, Some(Bytes::from_static(b"{}"))),
            (Some(Bytes::from_static(b"not json")), None),
            (
                Some(Bytes::from_static(br#"{"g":"g","t":"t","p":0}"#)),
                Some(Bytes::from_static(b"{")),
            ),
            (
                Some(Bytes::from_static(br#"{"g":"g","t":"t","p":1}"#)),
                None,
            ),
        ];
        let batch = ringtail_netio::batch::encode_records(records, 0).freeze();
        assert_eq!(
            decode_batch(&batch).unwrap(),
            vec![
                (0, LogRecord::Keyless),
                (1, LogRecord::Unreadable),
                (2, LogRecord::Unreadable),
                (3, LogRecord::Change("g".into(), ("t".into(), 1, None))),
            ]
        );
        assert!(decode_batch(&Bytes::from_static(b"not a batch")).is_err());
    }

    #[test]
    fn offset_records_round_trip_and_garbage_is_refused() {
        let change: OffsetChange = (
            "orders".into(),
            3,
            Some(Committed {
                offset: 42,
                leader_epoch: 0,
                metadata: Some("m".into()),
                commit_ms: 5,
            }),
        );
        let (k, v) = encode_change("g1", &change);
        assert_eq!(decode_change(&k, v.as_deref()), Some(("g1".into(), change)));
        let gone: OffsetChange = ("orders".into(), 3, None);
        let (k, v) = encode_change("g1", &gone);
        assert_eq!(decode_change(&k, v.as_deref()), Some(("g1".into(), gone)));
        assert_eq!(decode_change(b"nope", None), None);
        assert_eq!(decode_change(&k, Some(b"{")), None);
    }
}
