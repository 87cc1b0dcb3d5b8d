//! The follower side of replication connections (ARCHITECTURE.md, "Replicated WAL", step 2):
//! each shard listens on its own port; an owner's connection streams the slots this shard
//! hosts. A `Start` is taken only from a live member of this cluster, for a slot this shard
//! hosts and this broker does not own; its batches go to the slot's replica ring, and the
//! ring's durable progress goes back as `Acked`. Anything refused is logged with its reason,
//! answered `Refused`, and nothing of it is appended.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::{Bytes, BytesMut};
use futures::channel::mpsc;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::StreamExt;
use ringtail_shards::net::TcpStream;

use crate::config::Config;
use crate::replication::follower::{Claimed, Refusal, Started};
use crate::replication::frame::{self, Header};
use crate::replication::ring::{self, AppendError, ReplicaRing, TailEntry};
use crate::shard::Broker;

/// Read buffer growth per read.
const READ_BYTES: usize = 256 << 10;
/// Answers a connection may have waiting to be written: a peer that does not read them is
/// dropped rather than let them pile up.
const ANSWERS_QUEUED_MAX: usize = 4096;
/// Bytes buffered on a connection that has started no slot: a `Start` is small.
const UNSTARTED_BYTES_MAX: usize = frame::HEADER_BYTES_MAX + 8;

type Sink = Rc<RefCell<Option<mpsc::UnboundedSender<Bytes>>>>;

/// One slot's replica on this shard: its ring, and the connection its acknowledgements go to.
struct SlotReplica {
    ring: ReplicaRing,
    sink: Sink,
}

/// The replica rings this shard holds, opened at the first `Start` for their slot.
#[derive(Default)]
pub struct Replicas {
    slots: RefCell<HashMap<u32, Rc<SlotReplica>>>,
    /// Held while a ring opens: two `Start`s for one slot never open its file twice.
    opening: futures::lock::Mutex<()>,
    /// A ring is being prepared ahead of its stream (see [`prepare_rings`]).
    preparing: std::cell::Cell<bool>,
}

impl Replicas {
    /// Publishes the bytes the shard's rings hold.
    fn publish(&self, broker: &Broker) {
        let bytes = self
            .slots
            .borrow()
            .values()
            .map(|r| r.ring.used_bytes())
            .sum();
        broker.stats.replica_ring_bytes.store(bytes, Relaxed);
    }

    /// The slot's replica, its ring opened (created if new) on first use.
    async fn open(&self, config: &Config, slot: u32) -> Result<Rc<SlotReplica>, String> {
        if let Some(r) = self.slots.borrow().get(&slot) {
            return Ok(r.clone());
        }
        let _opening = self.opening.lock().await;
        if let Some(r) = self.slots.borrow().get(&slot) {
            return Ok(r.clone());
        }
        let epoch_path = config.wal_dir.join(crate::layout::replica_epoch(slot));
        let config = ring_config(config, slot);
        let (cfg, epath) = (config.clone(), epoch_path.clone());
        let opened = ringtail_shards::off_thread("replica-open", move || {
            ringtail_wal::create_or_check(&cfg).map_err(|e| e.to_string())?;
            let recovery = ringtail_wal::recover(&cfg.path).map_err(|e| e.to_string())?;
            let floor = ring::read_epoch(&epath)?;
            Ok::<_, String>((recovery, floor))
        })
        .await
        .ok_or("the replica ring's opening thread did not run")??;
        let (recovery, floor) = opened;
        let sink: Sink = Rc::new(RefCell::new(None));
        let acks = sink.clone();
        let ring = ReplicaRing::open(&config, &recovery, floor, epoch_path, move |epoch, seq| {
            let mut out = BytesMut::new();
            let acked = Header::Acked {
                slot,
                epoch,
                durable_seq: seq,
            };
            frame::encode(&acked, &[], &mut out);
            if let Some(tx) = acks.borrow().as_ref() {
                let _ = tx.unbounded_send(out.freeze());
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        tracing::info!(
            slot,
            epoch = ring.epoch(),
            durable_seq = ring.durable_seq(),
            "opened the slot's replica ring"
        );
        let replica = Rc::new(SlotReplica { ring, sink });
        self.slots.borrow_mut().insert(slot, replica.clone());
        Ok(replica)
    }
}

impl Replicas {
    /// This broker is taking `slot` over: if it holds a copy of the slot's stream, the copy
    /// takes nothing more from now on (R4–R5: before the manifest is taken, so whatever the
    /// replaced owner had acknowledged with this copy is in it).
    pub async fn freeze(&self, config: &Config, slot: u32) -> Result<Option<Frozen>, String> {
        let ring_config = ring_config(config, slot);
        if !self.slots.borrow().contains_key(&slot) && !ring_config.path.exists() {
            return Ok(None);
        }
        let replica = self.open(config, slot).await?;
        replica.ring.freeze_all();
        // The replaced owner's connection hears no more acknowledgements.
        *replica.sink.borrow_mut() = None;
        Ok(Some(Frozen {
            replica,
            path: ring_config.path,
        }))
    }
}

/// A replica ring frozen for this broker's take-over of its slot.
pub struct Frozen {
    replica: Rc<SlotReplica>,
    path: std::path::PathBuf,
}

impl Frozen {
    /// The copy's durable, uncommitted tail, in the order it was sent, if it is of an owner
    /// before the take-over's `epoch`: the batches to re-append. (Which of them continue their
    /// partitions is for the re-append to judge: a copy of an older owner than the last one to
    /// write a partition is stale there.) Read while the ring takes nothing.
    pub async fn tail(&self, epoch: u64) -> Result<Vec<TailEntry>, String> {
        let ring = &self.replica.ring;
        if ring.epoch() >= epoch || ring.epoch() == 0 {
            tracing::info!(
                epoch,
                copy_epoch = ring.epoch(),
                "the replica ring holds no copy of an owner before this one"
            );
            return Ok(Vec::new());
        }
        ring.tail(&self.path).await
    }

    /// The take-over at `epoch` is done (the tail re-appended and uploaded): recorded in the
    /// ring, so that a restart refuses the owners it replaced too. Only now: recorded earlier,
    /// a restart before the tail was safe would trim the copy as an older epoch's.
    pub async fn record(&self, epoch: u64) -> Result<(), String> {
        self.replica
            .ring
            .freeze(epoch)
            .await
            .map_err(|e| e.to_string())
    }

    /// The take-over did not happen.
    pub fn thaw(&self) {
        self.replica.ring.thaw();
    }
}

/// Opens (creating if new) the replica ring of a slot this shard hosts and this broker now
/// follows, ahead of its owner's first `Start`: writing out a full-size ring takes seconds, which
/// the owner's stream (and its producers) would otherwise wait for. One ring at a time.
pub fn prepare_rings(broker: &Rc<Broker>, replicas: &Rc<Replicas>) {
    if replicas.preparing.get() {
        return;
    }
    let view = broker.view();
    let next = (broker.shard as u32..broker.slots)
        .step_by(broker.shards.max(1))
        .find(|&slot| {
            let owner = view.owner(slot);
            owner >= 0
                && owner != view.me
                && broker.host.get(slot).is_none()
                && !replicas.slots.borrow().contains_key(&slot)
                && view.followers(slot, owner).contains(&view.me)
        });
    let Some(slot) = next else { return };
    replicas.preparing.set(true);
    let (broker, replicas) = (broker.clone(), replicas.clone());
    ringtail_shards::spawn_detached(async move {
        if let Err(e) = replicas.open(&broker.config, slot).await {
            if crate::metrics::client_log::may_log(&broker.stats) {
                tracing::warn!(slot, error = %e, "could not prepare the slot's replica ring");
            }
        }
        replicas.preparing.set(false);
    });
}

/// The replica ring of `slot` on a broker of `config`: the WAL ring's settings, its own file.
pub fn ring_config(config: &Config, slot: u32) -> ringtail_wal::WalConfig {
    config.wal_ring(config.wal_dir.join(crate::layout::replica_ring(slot)))
}

/// Serves one owner's replication connection until it closes or breaks the protocol.
pub async fn serve(broker: Rc<Broker>, replicas: Rc<Replicas>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (mut reader, mut writer) = stream.split();
    let (tx, mut rx) = mpsc::unbounded::<Bytes>();
    let queued = Rc::new(std::cell::Cell::new(0usize));
    let written = queued.clone();
    let _writer = ringtail_shards::spawn(async move {
        while let Some(b) = rx.next().await {
            written.set(written.get().saturating_sub(1));
            if writer.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut buf = BytesMut::new();
    // The slots this connection streams (their acknowledgements come here).
    let mut streaming: Vec<u32> = Vec::new();
    'read: loop {
        let len = buf.len();
        buf.resize(len + READ_BYTES, 0);
        let n = match reader.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.truncate(len + n);
        if streaming.is_empty() && buf.len() > UNSTARTED_BYTES_MAX {
            tracing::warn!(%peer, "replication connection closed: a large frame before any Start");
            break;
        }
        if queued.get() > ANSWERS_QUEUED_MAX {
            tracing::warn!(%peer, "replication connection closed: the peer does not read its answers");
            break;
        }
        loop {
            let (header, payload) = match frame::decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "replication connection closed: a broken frame");
                    break 'read;
                }
            };
            let answers = match header {
                Header::Start {
                    cluster_id,
                    node,
                    slot,
                    epoch,
                    first_seq,
                } => {
                    let started = start(
                        &broker,
                        &replicas,
                        &cluster_id,
                        node,
                        slot,
                        epoch,
                        first_seq,
                    )
                    .await;
                    match started {
                        Ok((replica, next_seq, fresh)) => {
                            *replica.sink.borrow_mut() = Some(tx.clone());
                            if !streaming.contains(&slot) {
                                streaming.push(slot);
                            }
                            let mut answers = vec![Header::Started {
                                slot,
                                epoch,
                                next_seq,
                                fresh,
                            }];
                            // What is durable already is acknowledged again: an
                            // acknowledgement lost with the previous connection is not waited
                            // for forever.
                            let durable_seq = replica.ring.durable_seq();
                            if durable_seq > 0 {
                                answers.push(Header::Acked {
                                    slot,
                                    epoch,
                                    durable_seq,
                                });
                            }
                            answers
                        }
                        Err(reason) => vec![refuse(&broker, &peer, slot, epoch, reason)],
                    }
                }
                Header::Append {
                    slot,
                    epoch,
                    seq,
                    topic_id,
                    partition,
                    base_offset,
                    record_count,
                    leader_epoch,
                } => {
                    let claimed = Claimed {
                        base_offset,
                        record_count,
                        leader_epoch,
                    };
                    let len = payload.len() as u64;
                    let appended = match replicas.slots.borrow().get(&slot) {
                        Some(r) if streams_here(r, &tx) => r
                            .ring
                            .append(epoch, seq, topic_id, partition, claimed, payload)
                            .map_err(|e| e.to_string()),
                        _ => Err(Refusal::NotStarted { epoch, known: 0 }.to_string()),
                    };
                    match appended {
                        Ok(()) => {
                            broker.stats.replica_appended_batches.fetch_add(1, Relaxed);
                            broker.stats.replica_appended_bytes.fetch_add(len, Relaxed);
                            replicas.publish(&broker);
                            continue;
                        }
                        Err(reason) => vec![refuse(&broker, &peer, slot, epoch, reason)],
                    }
                }
                Header::Committed { slot, epoch, seq } => {
                    // Only from the connection that streams the slot now: trimming is what
                    // lets the ring forget acknowledged batches.
                    match replicas.slots.borrow().get(&slot) {
                        Some(r) if streams_here(r, &tx) => {
                            r.ring.committed(epoch, seq);
                            replicas.publish(&broker);
                            continue;
                        }
                        _ => vec![refuse(
                            &broker,
                            &peer,
                            slot,
                            epoch,
                            "Committed on a connection that does not stream the slot".into(),
                        )],
                    }
                }
                other => {
                    tracing::warn!(%peer, frame = ?other, "replication connection closed: a follower's frame from an owner");
                    break 'read;
                }
            };
            let mut out = BytesMut::new();
            for answer in &answers {
                frame::encode(answer, &[], &mut out);
            }
            queued.set(queued.get() + 1);
            if tx.unbounded_send(out.freeze()).is_err() {
                break 'read;
            }
        }
    }
    // Acknowledgements of this connection's slots have nowhere to go until the next Start.
    for slot in streaming {
        if let Some(r) = replicas.slots.borrow().get(&slot) {
            if streams_here(r, &tx) {
                *r.sink.borrow_mut() = None;
            }
        }
    }
}

/// Whether the connection answering on `tx` is the one streaming `replica`'s slot now (the last
/// whose `Start` it took).
fn streams_here(replica: &SlotReplica, tx: &mpsc::UnboundedSender<Bytes>) -> bool {
    replica
        .sink
        .borrow()
        .as_ref()
        .is_some_and(|s| s.same_receiver(tx))
}

/// Takes a `Start`: the slot's replica and where the stream goes on.
async fn start(
    broker: &Broker,
    replicas: &Replicas,
    cluster_id: &str,
    node: i32,
    slot: u32,
    epoch: u64,
    first_seq: u64,
) -> Result<(Rc<SlotReplica>, u64, bool), String> {
    if cluster_id != broker.cluster_id {
        return Err(format!(
            "cluster {cluster_id:?} is not this broker's ({:?})",
            broker.cluster_id
        ));
    }
    let view = broker.view();
    if node == view.me || view.member(node).is_none() {
        return Err(format!("node {node} holds no live lease of this cluster"));
    }
    if slot >= broker.slots || slot as usize % broker.shards != broker.shard {
        return Err(format!("slot {slot} is not hosted on this shard"));
    }
    if broker.host.get(slot).is_some() {
        return Err(format!("slot {slot} is owned here"));
    }
    // Only a follower of the slot as placement has it (a ring is a full-size file).
    let followers = view.followers(slot, node);
    if !followers.contains(&view.me) {
        return Err(format!(
            "this broker is not a follower of slot {slot} owned by node {node} (followers {followers:?})"
        ));
    }
    let replica = replicas.open(&broker.config, slot).await?;
    match replica.ring.start(epoch, first_seq).await {
        Ok(Started::Fresh) => Ok((replica, first_seq, true)),
        Ok(Started::Resume { next_seq }) => Ok((replica, next_seq, false)),
        Err(AppendError::Refused(r)) => Err(r.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Logs a refusal (rate limited) and counts it; the answer to send.
fn refuse(broker: &Broker, peer: &str, slot: u32, epoch: u64, reason: String) -> Header {
    broker.stats.replica_refused.fetch_add(1, Relaxed);
    if crate::metrics::client_log::may_log(&broker.stats) {
        tracing::warn!(%peer, slot, epoch, %reason, "replication frame refused, nothing appended");
    }
    Header::Refused {
        slot,
        epoch,
        reason,
    }
}
