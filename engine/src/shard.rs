//! Per-shard partition state and the messages that reach it.
//!
//! A partition is owned by exactly one shard ([`owner_shard`]); its log and its waiters are only
//! touched on that shard. A request that arrives on another shard reaches the owner as a
//! [`ShardOp`] in its mailbox and gets its answer back on a oneshot channel; a request for a
//! local partition calls [`ShardState`] directly. [`Broker::scatter`] does both, in order.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::records::{RecordBatchDecoder, TimestampType};
use kafka_protocol::ResponseError;
use ringtail_netio::batch::{BatchHeader, ValidBatch};
use ringtail_shards::Mailboxes;
use uuid::Uuid;

use crate::catalog::{Catalog, TopicMeta};
use crate::config::Config;
use crate::log::{MemLog, PartitionLog};

/// The leader epoch of every partition until fencing (failover) exists.
pub const LEADER_EPOCH: i32 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    pub topic_id: Uuid,
    pub partition: i32,
}

/// The shard that owns a partition: deterministic, stable across restarts (by topic name), and
/// spreading a topic's partitions round-robin over the shards.
pub fn owner_shard(topic_name: &str, partition: i32, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic_name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((h % shards as u64) as usize + partition as usize) % shards
}

pub struct ProduceItem {
    pub key: PartitionKey,
    pub topic: Arc<TopicMeta>,
    pub batches: Vec<ValidBatch>,
}

#[derive(Debug, Clone, Copy)]
pub struct ProduceOutcome {
    pub error: i16,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

pub struct FetchItem {
    pub key: PartitionKey,
    pub offset: i64,
    pub max_bytes: usize,
    pub first_batch_always: bool,
}

#[derive(Debug, Clone)]
pub struct FetchOutcome {
    pub error: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub batches: Vec<Bytes>,
}

pub struct ListItem {
    pub key: PartitionKey,
    pub timestamp: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct ListOutcome {
    pub error: i16,
    pub offset: i64,
    pub timestamp: i64,
}

/// Work for a partition's owner shard.
pub enum ShardOp {
    Produce(Vec<ProduceItem>, oneshot::Sender<Vec<ProduceOutcome>>),
    Fetch(Vec<FetchItem>, oneshot::Sender<Vec<FetchOutcome>>),
    ListOffsets(Vec<ListItem>, oneshot::Sender<Vec<ListOutcome>>),
    /// Answer once any of these partitions has data at or beyond the given offset.
    Watch(Vec<(PartitionKey, i64)>, oneshot::Sender<()>),
    DropTopic(Uuid),
}

/// An outcome that carries only an error (owner shard gone).
pub trait ErrorOutcome {
    fn error(code: i16) -> Self;
}

impl ErrorOutcome for ProduceOutcome {
    fn error(code: i16) -> Self {
        ProduceOutcome {
            error: code,
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
        }
    }
}
impl ErrorOutcome for FetchOutcome {
    fn error(code: i16) -> Self {
        FetchOutcome {
            error: code,
            high_watermark: -1,
            log_start_offset: -1,
            batches: Vec::new(),
        }
    }
}
impl ErrorOutcome for ListOutcome {
    fn error(code: i16) -> Self {
        ListOutcome {
            error: code,
            offset: -1,
            timestamp: -1,
        }
    }
}

type Waiter = Rc<RefCell<Option<oneshot::Sender<()>>>>;

struct Partition {
    log: Box<dyn PartitionLog>,
    waiters: Vec<Waiter>,
}

/// The partitions this shard owns.
pub struct ShardState {
    partitions: RefCell<HashMap<PartitionKey, Partition>>,
    log_bytes: Cell<u64>,
    log_bytes_max: u64,
}

impl ShardState {
    pub fn new(log_bytes_max: u64) -> ShardState {
        ShardState {
            partitions: RefCell::new(HashMap::new()),
            log_bytes: Cell::new(0),
            log_bytes_max,
        }
    }

    pub fn handle(&self, op: ShardOp) {
        match op {
            ShardOp::Produce(items, reply) => drop(reply.send(self.produce(items))),
            ShardOp::Fetch(items, reply) => drop(reply.send(self.fetch(items))),
            ShardOp::ListOffsets(items, reply) => drop(reply.send(self.list_offsets(items))),
            ShardOp::Watch(items, reply) => self.watch(items, reply),
            ShardOp::DropTopic(id) => self.drop_topic(id),
        }
    }

    fn with_partition<T>(&self, key: PartitionKey, f: impl FnOnce(&mut Partition) -> T) -> T {
        let mut parts = self.partitions.borrow_mut();
        let p = parts.entry(key).or_insert_with(|| Partition {
            log: Box::new(MemLog::new()),
            waiters: Vec::new(),
        });
        f(p)
    }

    pub fn produce(&self, items: Vec<ProduceItem>) -> Vec<ProduceOutcome> {
        let now_ms = now_ms();
        items
            .into_iter()
            .map(|item| {
                let incoming: u64 = item.batches.iter().map(|b| b.len() as u64).sum();
                if self.log_bytes.get() + incoming > self.log_bytes_max {
                    tracing::warn!(
                        topic = %item.topic.name, partition = item.key.partition,
                        held_bytes = self.log_bytes.get(), max_bytes = self.log_bytes_max,
                        "shard log memory full: produce refused (raise --shard-log-bytes-max or lower retention)"
                    );
                    return ProduceOutcome::error(ResponseError::KafkaStorageError.code());
                }
                self.with_partition(item.key, |p| {
                    let appended = p.log.append(item.batches, LEADER_EPOCH, now_ms, &item.topic.config);
                    let freed = p.log.enforce_retention(now_ms, &item.topic.config);
                    self.log_bytes.set(self.log_bytes.get() + incoming - freed);
                    for w in p.waiters.drain(..) {
                        if let Some(tx) = w.borrow_mut().take() {
                            let _ = tx.send(());
                        }
                    }
                    ProduceOutcome {
                        error: 0,
                        base_offset: appended.base_offset,
                        log_append_time_ms: appended.log_append_time_ms,
                        log_start_offset: p.log.log_start_offset(),
                    }
                })
            })
            .collect()
    }

    pub fn fetch(&self, items: Vec<FetchItem>) -> Vec<FetchOutcome> {
        items
            .into_iter()
            .map(|item| {
                self.with_partition(item.key, |p| {
                    let (hw, start) = (p.log.log_end_offset(), p.log.log_start_offset());
                    match p
                        .log
                        .read(item.offset, item.max_bytes, item.first_batch_always)
                    {
                        Ok(batches) => FetchOutcome {
                            error: 0,
                            high_watermark: hw,
                            log_start_offset: start,
                            batches,
                        },
                        Err(_) => FetchOutcome {
                            error: ResponseError::OffsetOutOfRange.code(),
                            high_watermark: hw,
                            log_start_offset: start,
                            batches: Vec::new(),
                        },
                    }
                })
            })
            .collect()
    }

    pub fn list_offsets(&self, items: Vec<ListItem>) -> Vec<ListOutcome> {
        items
            .into_iter()
            .map(|item| {
                self.with_partition(item.key, |p| list_offset(p.log.as_ref(), item.timestamp))
            })
            .collect()
    }

    pub fn watch(&self, items: Vec<(PartitionKey, i64)>, reply: oneshot::Sender<()>) {
        let waiter: Waiter = Rc::new(RefCell::new(Some(reply)));
        for (key, offset) in items {
            let ready = self.with_partition(key, |p| {
                if p.log.log_end_offset() > offset || p.log.log_start_offset() > offset {
                    return true;
                }
                // Drop waiters whose fetch already ended, so idle consumers cost bounded memory.
                p.waiters
                    .retain(|w| w.borrow().as_ref().is_some_and(|tx| !tx.is_canceled()));
                p.waiters.push(waiter.clone());
                false
            });
            if ready {
                if let Some(tx) = waiter.borrow_mut().take() {
                    let _ = tx.send(());
                }
                return;
            }
        }
    }

    pub fn drop_topic(&self, topic_id: Uuid) {
        let mut parts = self.partitions.borrow_mut();
        let mut freed = 0;
        parts.retain(|k, p| {
            let keep = k.topic_id != topic_id;
            if !keep {
                freed += p.log.size_bytes();
            }
            keep
        });
        self.log_bytes.set(self.log_bytes.get() - freed);
    }
}

fn list_offset(log: &dyn PartitionLog, timestamp: i64) -> ListOutcome {
    let ok = |offset, timestamp| ListOutcome {
        error: 0,
        offset,
        timestamp,
    };
    match timestamp {
        -1 => ok(log.log_end_offset(), -1),
        -2 | -4 => ok(log.log_start_offset(), -1),
        -3 => match log.batch_with_max_timestamp() {
            Some(batch) => first_record_at_or_after(&batch, i64::MIN, true),
            None => ok(-1, -1),
        },
        t if t >= 0 => match log.batches_from_timestamp(t, 1).into_iter().next() {
            Some(batch) => first_record_at_or_after(&batch, t, false),
            None => ok(-1, -1),
        },
        _ => ListOutcome::error(ResponseError::InvalidRequest.code()),
    }
}

/// Decodes one batch (this is the cold ListOffsets path, never produce or fetch) to find the
/// first record with a timestamp >= `target`, or the first one with the batch's max timestamp.
fn first_record_at_or_after(batch: &Bytes, target: i64, want_max: bool) -> ListOutcome {
    let header = BatchHeader::parse(batch).expect("stored batches were validated");
    if header.attributes & 0x08 != 0 {
        // LogAppendTime: every record carries the batch's max timestamp.
        return ListOutcome {
            error: 0,
            offset: header.base_offset,
            timestamp: header.max_timestamp,
        };
    }
    let target = if want_max {
        header.max_timestamp
    } else {
        target
    };
    match RecordBatchDecoder::decode(&mut batch.clone()) {
        Ok(set) => set
            .records
            .iter()
            .find(|r| r.timestamp >= target && r.timestamp_type == TimestampType::Creation)
            .map(|r| ListOutcome {
                error: 0,
                offset: r.offset,
                timestamp: r.timestamp,
            })
            .unwrap_or(ListOutcome {
                error: 0,
                offset: header.base_offset,
                timestamp: header.max_timestamp,
            }),
        Err(e) => {
            tracing::error!(error = %e, base_offset = header.base_offset, "stored batch does not decode");
            ListOutcome::error(ResponseError::CorruptMessage.code())
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a connection's handlers see on their shard.
pub struct Broker {
    pub shard: usize,
    pub shards: usize,
    pub state: Rc<ShardState>,
    pub mailboxes: Mailboxes<ShardOp>,
    pub catalog: Arc<Catalog>,
    pub config: Arc<Config>,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub cluster_id: String,
}

impl Broker {
    pub fn owner(&self, topic: &TopicMeta, partition: i32) -> usize {
        owner_shard(&topic.name, partition, self.shards)
    }

    /// Runs `items` on their owner shards (locally or by message) and returns the outcomes in
    /// the order of `items`.
    pub async fn scatter<I, O: ErrorOutcome>(
        &self,
        items: Vec<(usize, I)>,
        local: impl Fn(&ShardState, Vec<I>) -> Vec<O>,
        op: impl Fn(Vec<I>, oneshot::Sender<Vec<O>>) -> ShardOp,
    ) -> Vec<O> {
        let n = items.len();
        let mut by_shard: Vec<(Vec<usize>, Vec<I>)> =
            (0..self.shards).map(|_| (Vec::new(), Vec::new())).collect();
        for (i, (shard, item)) in items.into_iter().enumerate() {
            by_shard[shard].0.push(i);
            by_shard[shard].1.push(item);
        }
        let mut pending = Vec::new();
        let mut out: Vec<Option<O>> = (0..n).map(|_| None).collect();
        for (shard, (positions, items)) in by_shard.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            if shard == self.shard {
                for (pos, o) in positions.into_iter().zip(local(&self.state, items)) {
                    out[pos] = Some(o);
                }
            } else {
                let (tx, rx) = oneshot::channel();
                let sent = self.mailboxes.send(shard, op(items, tx)).await;
                pending.push((positions, sent.ok().map(|_| rx)));
            }
        }
        for (positions, rx) in pending {
            let outcomes = match rx {
                Some(rx) => rx.await.ok(),
                None => None,
            };
            match outcomes {
                Some(outcomes) => {
                    for (pos, o) in positions.into_iter().zip(outcomes) {
                        out[pos] = Some(o);
                    }
                }
                None => {
                    tracing::error!("owner shard did not answer");
                    for pos in positions {
                        out[pos] = Some(O::error(ResponseError::UnknownServerError.code()));
                    }
                }
            }
        }
        out.into_iter()
            .map(|o| o.expect("every item answered"))
            .collect()
    }

    /// Resolves once any of the partitions has data beyond its offset (or never, if none does).
    pub async fn watch(&self, items: Vec<(usize, (PartitionKey, i64))>) {
        let mut receivers = Vec::new();
        let mut by_shard: Vec<Vec<(PartitionKey, i64)>> =
            (0..self.shards).map(|_| Vec::new()).collect();
        for (shard, item) in items {
            by_shard[shard].push(item);
        }
        for (shard, items) in by_shard.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            if shard == self.shard {
                self.state.watch(items, tx);
            } else if self
                .mailboxes
                .send(shard, ShardOp::Watch(items, tx))
                .await
                .is_err()
            {
                continue;
            }
            receivers.push(rx);
        }
        if receivers.is_empty() {
            return futures::future::pending().await;
        }
        // A dropped sender (topic deleted) also wakes the fetch, which then re-reads.
        let _ = futures::future::select_all(receivers).await;
    }

    /// Tells every shard to forget a deleted topic's partitions.
    pub async fn drop_topic(&self, topic_id: Uuid) {
        for shard in 0..self.shards {
            if shard == self.shard {
                self.state.drop_topic(topic_id);
            } else {
                let _ = self
                    .mailboxes
                    .send(shard, ShardOp::DropTopic(topic_id))
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_deterministic_and_spreads_partitions() {
        let shards = 4;
        let owners: Vec<usize> = (0..8).map(|p| owner_shard("orders", p, shards)).collect();
        assert_eq!(
            owners,
            (0..8)
                .map(|p| owner_shard("orders", p, shards))
                .collect::<Vec<_>>()
        );
        for s in 0..shards {
            assert_eq!(owners.iter().filter(|&&o| o == s).count(), 2);
        }
        assert_eq!(owner_shard("x", 5, 1), 0);
    }
}
