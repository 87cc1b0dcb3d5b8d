//! The native driver: a lean, pipelined Kafka client on the `kafka-protocol` codec, so that on
//! a small machine the client is not what limits the measurement.
//!
//! * Producer: messages accumulate per partition; a partition's batch goes out when it reaches
//!   `batch_size` or has waited `linger_ms`, all ready batches for one broker in one Produce
//!   request, up to [`MAX_IN_FLIGHT`] requests in flight per broker (Kafka's default for
//!   `max.in.flight.requests.per.connection`). Batches that get a retriable error are resent
//!   (see [`send`]); any other failure counts as errors.
//! * Consumer: Fetch long-polls (100 ms, as the librdkafka driver) to each partition leader,
//!   in a group (see [`group`]) or on an assignment split round-robin over the consumers, from
//!   the end of the log.
//!
//! Nothing here is Ringtail-specific: versions are negotiated with ApiVersions.

mod cluster;
pub mod conn;
pub mod group;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    ProduceRequest, ProduceResponse,
};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::sync::Semaphore;

pub use cluster::Cluster;

use crate::shared::{unix_nanos, Shared};
use crate::stats::{due_offset, histogram, record};
use crate::workload::Workload;

/// Produce requests in flight per broker connection.
pub const MAX_IN_FLIGHT: usize = 5;
/// Messages a producer holds unsent at most (a stalled broker must not exhaust memory); at a
/// fixed rate, messages beyond it are generated late and their latency still counts from their
/// due time.
const MAX_BUFFERED_BYTES: usize = 64 << 20;
const FETCH_MAX_WAIT_MS: i32 = 100;
const FETCH_MAX_BYTES: i32 = 64 << 20;
const FETCH_PARTITION_MAX_BYTES: i32 = 4 << 20;
const OFFSET_OUT_OF_RANGE: i16 = 1;

fn compression(name: &str) -> Compression {
    match name {
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        _ => Compression::None,
    }
}

pub async fn ensure_topic(w: &Workload, bootstrap: &str, timeout: Duration) -> anyhow::Result<()> {
    let cluster = Cluster::connect(bootstrap, timeout).await?;
    slot_leaders(&cluster, w).await?;
    Ok(())
}

/// Creates the workload's topics unless they exist; the leader of every slot.
async fn slot_leaders(cluster: &Cluster, w: &Workload) -> anyhow::Result<Vec<i32>> {
    let mut leaders = Vec::with_capacity(w.slots());
    for name in w.topic_names() {
        let l = cluster.ensure_topic(&name, w.partitions).await?;
        leaders.extend_from_slice(&l[..w.partitions as usize]);
    }
    Ok(leaders)
}

/// The `index`th record of a non-idempotent batch. The encoder starts a new batch wherever
/// offset − sequence changes; sequence = index − 1 keeps one batch with base sequence −1.
fn new_record(
    offset: i64,
    index: usize,
    timestamp: i64,
    key: Option<Bytes>,
    value: Bytes,
) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: index as i32 - 1,
        timestamp,
        key,
        value: Some(value),
        headers: Default::default(),
    }
}

/// Messages of one partition waiting to be sent.
#[derive(Default)]
struct Pending {
    records: Vec<Record>,
    /// Each message's due time (Unix nanoseconds), for its publish latency.
    due: Vec<u64>,
    bytes: usize,
    since: Option<Instant>,
}

pub async fn produce(
    w: Workload,
    bootstrap: String,
    index: usize,
    start: Instant,
    base_nanos: u64,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let cluster = Cluster::connect(&bootstrap, shared.stall_timeout).await?;
    let mut leaders = slot_leaders(&cluster, &w).await?;
    let rate = w.rate / w.producers as u64;
    let linger = Duration::from_millis(w.linger_ms);
    let acks: i16 = if w.acks == "all" { -1 } else { w.acks.parse()? };
    let mut pending: Vec<Pending> = (0..w.slots()).map(|_| Pending::default()).collect();
    let mut buffered = 0usize;
    let mut in_flight: BTreeMap<i32, Arc<Semaphore>> = BTreeMap::new();
    let hist = Arc::new(Mutex::new(histogram()));
    let filler = vec![0x5au8; w.max_message_size()];
    let mut i = 0u64;
    loop {
        let stopping = shared.stop_producing.load(Ordering::Relaxed);
        // Generate what is due (fixed rate) or what fits (as fast as possible).
        if !stopping {
            let now = start.elapsed();
            while buffered < MAX_BUFFERED_BYTES {
                let p = w.slot_of(i);
                let due = due_offset(i, rate, now);
                if (rate > 0 && due > now) || (rate == 0 && pending[p].bytes >= w.batch_size) {
                    break;
                }
                let due_nanos = base_nanos + due.as_nanos() as u64;
                let value = Bytes::from(w.payload(&filler, i, index, due_nanos));
                let key = w.key_of(i).map(Bytes::from);
                let part = &mut pending[p];
                let size = value.len() + key.as_ref().map_or(0, |k| k.len());
                let index = part.records.len();
                let timestamp = (due_nanos / 1_000_000) as i64;
                part.records
                    .push(new_record(index as i64, index, timestamp, key, value));
                part.due.push(due_nanos);
                part.bytes += size;
                part.since.get_or_insert_with(Instant::now);
                buffered += size;
                i += 1;
            }
        }
        // Send the ready batches, per leader, as far as the in-flight limit allows.
        let mut by_leader: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for (p, part) in pending.iter().enumerate() {
            let ready = part.bytes >= w.batch_size
                || part.since.is_some_and(|s| s.elapsed() >= linger)
                || stopping;
            if !part.records.is_empty() && ready {
                by_leader.entry(leaders[p]).or_default().push(p);
            }
        }
        let mut blocked = None;
        for (leader, partitions) in by_leader {
            let permits = in_flight
                .entry(leader)
                .or_insert_with(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT)))
                .clone();
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                blocked = Some(permits);
                continue;
            };
            let conn = match cluster.broker(leader).await {
                Ok(c) => c,
                Err(e) => {
                    // The leader moved or went away: count the batches, look again.
                    let lost: usize = partitions.iter().map(|p| pending[*p].due.len()).sum();
                    shared.errors.fetch_add(lost as u64, Ordering::Relaxed);
                    for p in &partitions {
                        buffered -= pending[*p].bytes;
                        pending[*p] = Pending::default();
                    }
                    shared.note_error(&format!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Ok(l) = slot_leaders(&cluster, &w).await {
                        leaders = l;
                    }
                    continue;
                }
            };
            let mut batches = Vec::with_capacity(partitions.len());
            for p in partitions {
                let part = std::mem::take(&mut pending[p]);
                buffered -= part.bytes;
                batches.push((p, part));
            }
            let (w2, shared2, hist2) = (w.clone(), shared.clone(), hist.clone());
            let measuring = shared.measuring.load(Ordering::Relaxed);
            tokio::spawn(async move {
                let _permit = permit;
                send(&conn, &w2, acks, batches, measuring, &shared2, &hist2).await;
            });
        }
        if stopping && pending.iter().all(|p| p.records.is_empty()) {
            break;
        }
        // Wait for the next due message, the next linger deadline, or a free slot.
        let next_due = if rate > 0 && !stopping {
            due_offset(i, rate, Duration::ZERO).saturating_sub(start.elapsed())
        } else if rate == 0 && !stopping && blocked.is_none() {
            Duration::ZERO
        } else {
            Duration::from_millis(10)
        };
        let next_linger = pending
            .iter()
            .filter_map(|p| p.since.map(|s| linger.saturating_sub(s.elapsed())))
            .min()
            .unwrap_or(Duration::MAX);
        let wait = next_due.min(next_linger);
        match blocked {
            Some(permits) => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    p = permits.acquire() => drop(p),
                }
            }
            None if wait > Duration::ZERO => tokio::time::sleep(wait).await,
            None => tokio::task::yield_now().await,
        }
    }
    // Every request answered: all permits back.
    for permits in in_flight.values() {
        let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
    }
    shared.merge_publish(&hist.lock().unwrap());
    Ok(())
}

/// Errors after which the broker did not write the batch and a retry may succeed (the Java
/// client's retriable errors that a produce can get).
fn retriable(code: i16) -> bool {
    // UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER,
    // REQUEST_TIMED_OUT, NETWORK_EXCEPTION, NOT_ENOUGH_REPLICAS(_AFTER_APPEND),
    // KAFKA_STORAGE_ERROR, THROTTLING_QUOTA_EXCEEDED.
    matches!(code, 3 | 5 | 6 | 7 | 13 | 19 | 20 | 56 | 89)
}

/// Encodes and sends one Produce request, resends the batches that got a retriable error
/// (100 ms apart, for at most the stall timeout), and records the outcome. A request that got
/// no answer is not resent: without idempotence that could duplicate it.
async fn send(
    conn: &conn::Conn,
    w: &Workload,
    acks: i16,
    batches: Vec<(usize, Pending)>,
    measuring: bool,
    shared: &Shared,
    hist: &Mutex<hdrhistogram::Histogram<u64>>,
) {
    let options = RecordEncodeOptions {
        version: 2,
        compression: compression(&w.compression),
    };
    let mut encoded = Vec::with_capacity(batches.len());
    for (p, part) in batches {
        let mut buf = BytesMut::with_capacity(part.bytes + 256);
        if let Err(e) = RecordBatchEncoder::encode(&mut buf, &part.records, &options) {
            shared.note_error(&format!("encoding a batch: {e}"));
            shared
                .errors
                .fetch_add(part.due.len() as u64, Ordering::Relaxed);
            continue;
        }
        encoded.push((p, part, buf.freeze()));
    }
    let give_up = Instant::now() + shared.stall_timeout;
    let names = w.topic_names();
    while !encoded.is_empty() {
        let mut topics: BTreeMap<usize, Vec<PartitionProduceData>> = BTreeMap::new();
        for (slot, _, records) in &encoded {
            let (t, p) = w.split_slot(*slot);
            topics.entry(t).or_default().push(
                PartitionProduceData::default()
                    .with_index(p)
                    .with_records(Some(records.clone())),
            );
        }
        let req = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(30_000)
            .with_topic_data(
                topics
                    .into_iter()
                    .map(|(t, data)| {
                        TopicProduceData::default()
                            .with_name(cluster::topic_name(&names[t]))
                            .with_partition_data(data)
                    })
                    .collect(),
            );
        let outcome: anyhow::Result<BTreeMap<(String, i32), i16>> = async {
            let v = conn.version(ApiKey::Produce, 3..=9)?;
            if acks == 0 {
                conn.send_only(ApiKey::Produce, v, &req).await?;
                return Ok(BTreeMap::new());
            }
            let answer: ProduceResponse = conn.call_at(ApiKey::Produce, v, &req).await?;
            Ok(answer
                .responses
                .iter()
                .flat_map(|t| {
                    t.partition_responses
                        .iter()
                        .map(|p| ((t.name.to_string(), p.index), p.error_code))
                })
                .collect())
        }
        .await;
        let now = unix_nanos();
        let mut again = Vec::new();
        for (slot, part, records) in encoded {
            let (t, p) = w.split_slot(slot);
            let error = match &outcome {
                Ok(codes) => codes
                    .get(&(names[t].clone(), p))
                    .copied()
                    .unwrap_or(if acks == 0 { 0 } else { -1 }),
                Err(_) => -1,
            };
            let n = part.due.len() as u64;
            if error == 0 {
                shared.acked(n, part.bytes as u64);
                if measuring {
                    let mut h = hist.lock().unwrap();
                    for due in &part.due {
                        record(&mut h, now.saturating_sub(*due) / 1000);
                    }
                }
            } else if retriable(error) && Instant::now() < give_up {
                shared.retries.fetch_add(1, Ordering::Relaxed);
                again.push((slot, part, records));
            } else {
                shared.errors.fetch_add(n, Ordering::Relaxed);
                shared.note_error(&match &outcome {
                    Err(e) => format!("produce: {e:#}"),
                    Ok(_) => format!("produce to {} partition {p}: error {error}", names[t]),
                });
            }
        }
        encoded = again;
        if !encoded.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One consumer: its partitions (a group's assignment or a fixed split), fetched from the end.
pub async fn consume(
    w: Workload,
    bootstrap: String,
    group: String,
    index: usize,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let cluster = Cluster::connect(&bootstrap, shared.stall_timeout).await?;
    let mut leaders = slot_leaders(&cluster, &w).await?;
    let names = w.topic_names();
    let (mut member, mut assigned) = if w.subscribe {
        let (m, a) = group::Member::join(&cluster, &group, &names, w.partitions).await?;
        (Some(m), a)
    } else {
        let mine = (0..w.slots())
            .filter(|s| s % w.consumers == index)
            .collect();
        (None, mine)
    };
    // Slot -> next offset to read.
    let mut positions: BTreeMap<usize, i64> = BTreeMap::new();
    let mut hist = histogram();
    let mut last_heartbeat = Instant::now();
    let mut idle_since = None;
    let mut ready = false;
    loop {
        for slot in &assigned {
            if !positions.contains_key(slot) {
                let (t, p) = w.split_slot(*slot);
                let at = latest_offset(&cluster, &names[t], leaders[*slot], p).await?;
                positions.insert(*slot, at);
            }
        }
        positions.retain(|p, _| assigned.contains(p));
        if !ready && !assigned.is_empty() {
            ready = true;
            shared.consumers_ready.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = member.as_mut() {
            if last_heartbeat.elapsed() >= group::HEARTBEAT_INTERVAL {
                last_heartbeat = Instant::now();
                if m.heartbeat().await? {
                    assigned = m.rejoin(&cluster).await?;
                    continue;
                }
            }
        }
        let mut got = 0;
        let mut by_leader: BTreeMap<i32, Vec<(usize, i64)>> = BTreeMap::new();
        for (slot, at) in &positions {
            by_leader
                .entry(leaders[*slot])
                .or_default()
                .push((*slot, *at));
        }
        let fetches = by_leader.into_iter().map(|(leader, parts)| {
            let (cluster, w) = (&cluster, &w);
            async move {
                let conn = cluster.broker(leader).await?;
                fetch(&conn, w, &parts).await
            }
        });
        if positions.is_empty() {
            tokio::time::sleep(Duration::from_millis(FETCH_MAX_WAIT_MS as u64)).await;
        }
        for answer in futures::future::join_all(fetches).await {
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    shared.note_error(&format!("fetch: {e:#}"));
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Ok(l) = slot_leaders(&cluster, &w).await {
                        leaders = l;
                    }
                    continue;
                }
            };
            for (slot, error, records) in answer {
                let (t, p) = w.split_slot(slot);
                match error {
                    0 => {}
                    OFFSET_OUT_OF_RANGE => {
                        shared.note_error(&format!(
                            "fetch {} partition {p}: offset out of range",
                            names[t]
                        ));
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        positions.remove(&slot);
                        continue;
                    }
                    e => {
                        shared.note_error(&format!("fetch {} partition {p}: error {e}", names[t]));
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                let Some(at) = positions.get_mut(&slot) else {
                    continue;
                };
                match read_records(records, at, |value| {
                    shared.consumed_message(value, &mut hist);
                }) {
                    Ok(n) => got += n,
                    Err(e) => {
                        shared.note_error(&format!("{} partition {p}: {e:#}", names[t]));
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if got > 0 {
            idle_since = None;
        } else if shared.consumer_done(&mut idle_since) {
            break;
        }
    }
    shared.merge_end_to_end(&hist);
    if let Some(m) = member {
        m.leave().await.context("leaving the group")?;
    }
    Ok(())
}

async fn latest_offset(
    cluster: &Cluster,
    topic: &str,
    leader: i32,
    partition: i32,
) -> anyhow::Result<i64> {
    let conn = cluster.broker(leader).await?;
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(cluster::topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-1)])]);
    let (_, answer): (_, ListOffsetsResponse) = conn.call(ApiKey::ListOffsets, 1..=7, &req).await?;
    let p = answer
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| anyhow::anyhow!("ListOffsets: no answer for partition {partition}"))?;
    anyhow::ensure!(
        p.error_code == 0,
        "ListOffsets partition {partition}: error {}",
        p.error_code
    );
    Ok(p.offset)
}

/// One Fetch request for `parts` (slot, offset); (slot, error, records) per partition.
async fn fetch(
    conn: &conn::Conn,
    w: &Workload,
    parts: &[(usize, i64)],
) -> anyhow::Result<Vec<(usize, i16, Option<Bytes>)>> {
    let v = conn.version(ApiKey::Fetch, 4..=12)?;
    let names = w.topic_names();
    let mut topics: BTreeMap<usize, Vec<FetchPartition>> = BTreeMap::new();
    for (slot, at) in parts {
        let (t, p) = w.split_slot(*slot);
        topics.entry(t).or_default().push(
            FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(*at)
                .with_partition_max_bytes(FETCH_PARTITION_MAX_BYTES),
        );
    }
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(FETCH_MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_session_epoch(if v >= 7 { -1 } else { 0 })
        .with_topics(
            topics
                .into_iter()
                .map(|(t, partitions)| {
                    FetchTopic::default()
                        .with_topic(cluster::topic_name(&names[t]))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let answer: FetchResponse = conn.call_at(ApiKey::Fetch, v, &req).await?;
    anyhow::ensure!(answer.error_code == 0, "Fetch: error {}", answer.error_code);
    let mut out = Vec::new();
    for t in answer.responses {
        let Some(ti) = names.iter().position(|n| n.as_str() == t.topic.as_str()) else {
            continue;
        };
        for p in t.partitions {
            if (0..w.partitions).contains(&p.partition_index) {
                let slot = ti * w.partitions as usize + p.partition_index as usize;
                out.push((slot, p.error_code, p.records));
            }
        }
    }
    Ok(out)
}

/// Walks the complete record batches in `records` (a fetch may end with a partial one),
/// hands each record's value at or past `*at` to `each`, and moves `*at` past the last batch.
/// Returns how many records it handed over.
pub fn read_records(
    records: Option<Bytes>,
    at: &mut i64,
    mut each: impl FnMut(&[u8]),
) -> anyhow::Result<usize> {
    let Some(mut rest) = records else {
        return Ok(0);
    };
    let mut n = 0;
    while rest.len() >= 61 {
        let len = i32::from_be_bytes(rest[8..12].try_into().unwrap());
        anyhow::ensure!(len >= 49, "record batch with length {len}");
        let total = 12 + len as usize;
        if rest.len() < total {
            break; // partial batch at the end of the fetch
        }
        let mut batch = rest.split_to(total);
        let base = i64::from_be_bytes(batch[..8].try_into().unwrap());
        let last_delta = i32::from_be_bytes(batch[23..27].try_into().unwrap());
        let control = batch[22] & 0x20 != 0;
        if !control {
            let set = RecordBatchDecoder::decode(&mut batch)?;
            for r in &set.records {
                if r.offset >= *at {
                    each(r.value.as_deref().unwrap_or_default());
                    n += 1;
                }
            }
        }
        *at = (*at).max(base + last_delta as i64 + 1);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, values: &[&[u8]]) -> BytesMut {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| new_record(base + i as i64, i, 0, None, Bytes::copy_from_slice(v)))
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf
    }

    #[test]
    fn records_before_the_position_and_a_partial_last_batch_are_skipped() {
        let one = batch(10, &[b"a", b"b", b"c"]);
        assert_eq!(
            i32::from_be_bytes(one[57..61].try_into().unwrap()),
            3,
            "one batch"
        );
        assert_eq!(
            i32::from_be_bytes(one[53..57].try_into().unwrap()),
            -1,
            "base sequence"
        );
        let mut all = one;
        all.extend_from_slice(&batch(13, &[b"d"]));
        let partial = batch(14, &[b"e", b"f"]);
        all.extend_from_slice(&partial[..partial.len() - 3]);
        let mut at = 11;
        let mut seen = Vec::new();
        let n = read_records(Some(all.freeze()), &mut at, |v| seen.push(v.to_vec())).unwrap();
        assert_eq!(seen, vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        assert_eq!(n, 3);
        assert_eq!(seen, vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        assert_eq!(at, 14, "the position stops before the partial batch");
        let mut bad = batch(0, &[b"x"]);
        bad[8..12].copy_from_slice(&3i32.to_be_bytes());
        assert!(read_records(Some(bad.freeze()), &mut 0, |_| {}).is_err());
    }
}
