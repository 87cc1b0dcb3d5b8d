//! An owner's link to one follower of one slot (ARCHITECTURE.md, "Replicated WAL", step 2):
//! the batches sent and not acknowledged yet, and the connection that streams them. It
//! connects, `Start`s at the oldest batch it still holds, resends from where the follower
//! says, streams what is pushed as it comes (header and batch from their own buffers: the
//! batch is not copied), reports acknowledgements, and reconnects with backoff when the
//! connection breaks or the follower refuses (a refusal is logged; the stream starts again).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use ringtail_shards::net::TcpStream;
use ringtail_shards::{Task, WaitList};

use crate::replication::frame::{self, Header};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection with batches unacknowledged and no answer for this long is given up (a
/// half-open connection, a follower that stopped): the link reconnects.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One batch of the stream.
#[derive(Debug, Clone)]
pub struct Batch {
    pub seq: u64,
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub base_offset: i64,
    pub record_count: i32,
    pub leader_epoch: i32,
    pub bytes: Bytes,
}

/// Who streams what to whom.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub cluster_id: String,
    /// The owner's node id.
    pub node: i32,
    pub slot: u32,
    pub epoch: u64,
    /// The follower's replication listener for the slot's shard.
    pub addr: String,
    /// Most bytes held unacknowledged: beyond, pushes are refused (the follower lags).
    pub unacked_bytes_max: u64,
}

impl LinkConfig {
    /// The `Start` of this stream at `first_seq`.
    fn start(&self, first_seq: u64) -> Header {
        Header::Start {
            cluster_id: self.cluster_id.clone(),
            node: self.node,
            slot: self.slot,
            epoch: self.epoch,
            first_seq,
        }
    }
}

struct LinkState {
    /// Pushed and not acknowledged (nor committed), in sequence order.
    queue: VecDeque<Batch>,
    queued_bytes: u64,
    acked: u64,
    /// The next sequence a push must carry.
    next_seq: u64,
    bytes_max: u64,
    /// Everything up to it is in the bucket (sent on as `Committed`).
    committed: u64,
    /// The follower's last refusal or connection failure, for the log and the owner.
    last_error: Option<String>,
    /// The follower took this connection's `Start`: it is streaming.
    streaming: bool,
    /// The follower answered a `Start` afresh after it had acknowledged batches: it lost its
    /// copy (restarted empty). Its acknowledgements are not reported any more: they would
    /// claim what it lacks.
    lost_copy: bool,
    stopped: bool,
}

/// The link; dropping it stops its connection.
pub struct Link {
    state: Rc<RefCell<LinkState>>,
    changed: Rc<WaitList>,
    _task: Task<()>,
}

impl Link {
    /// Opens the link (connecting in the background); `on_acked(seq)` hears each time the
    /// follower has more of the stream durable.
    pub fn open(config: LinkConfig, on_acked: impl Fn(u64) + 'static) -> Link {
        let state = Rc::new(RefCell::new(LinkState {
            queue: VecDeque::new(),
            queued_bytes: 0,
            acked: 0,
            next_seq: 1,
            bytes_max: config.unacked_bytes_max,
            committed: 0,
            last_error: None,
            streaming: false,
            lost_copy: false,
            stopped: false,
        }));
        let changed = Rc::new(WaitList::new());
        let task = ringtail_shards::spawn(run(
            config,
            state.clone(),
            changed.clone(),
            Rc::new(on_acked),
        ));
        Link {
            state,
            changed,
            _task: task,
        }
    }

    /// Queues `batch` for the follower; false (not queued) if its sequence is not the next,
    /// the follower lags by more than the bound, or the batch is larger than a frame.
    pub fn push(&self, batch: Batch) -> bool {
        {
            let mut s = self.state.borrow_mut();
            let len = batch.bytes.len();
            if batch.seq != s.next_seq
                || s.queued_bytes + len as u64 > s.bytes_max
                || len + frame::HEADER_BYTES_MAX > frame::FRAME_BYTES_MAX
            {
                return false;
            }
            s.next_seq += 1;
            s.queued_bytes += batch.bytes.len() as u64;
            s.queue.push_back(batch);
        }
        self.changed.notify_all();
        true
    }

    /// Everything up to `seq` is in the bucket: no need to keep or resend it, and the follower
    /// may trim it.
    pub fn committed(&self, seq: u64) {
        {
            let mut s = self.state.borrow_mut();
            s.committed = s.committed.max(seq);
            release(&mut s, seq);
        }
        self.changed.notify_all();
    }

    /// Drops every batch held and streams on from `seq` (the follower lagged by more than the
    /// link holds): a new `Start` tells it the batches before are not coming, so what it lacks
    /// must be in the bucket before it is counted in sync again.
    pub fn restart_at(&self, seq: u64) {
        {
            let mut s = self.state.borrow_mut();
            s.queue.clear();
            s.queued_bytes = 0;
            s.next_seq = seq;
        }
        self.changed.notify_all();
    }

    pub fn acked_seq(&self) -> u64 {
        self.state.borrow().acked
    }

    pub fn queued_bytes(&self) -> u64 {
        self.state.borrow().queued_bytes
    }

    /// The last refusal or connection failure, if any since the last acknowledgement.
    pub fn last_error(&self) -> Option<String> {
        self.state.borrow().last_error.clone()
    }

    /// Whether the follower is taking the stream now (it answered the connection's `Start`).
    pub fn is_streaming(&self) -> bool {
        self.state.borrow().streaming
    }

    /// Whether the follower lost its copy (see `LinkState::lost_copy`).
    pub fn lost_copy(&self) -> bool {
        self.state.borrow().lost_copy
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.state.borrow_mut().stopped = true;
        self.changed.notify_all();
    }
}

/// Drops the queued batches up to `seq`.
fn release(s: &mut LinkState, seq: u64) {
    while s.queue.front().is_some_and(|b| b.seq <= seq) {
        let b = s.queue.pop_front().expect("front exists");
        s.queued_bytes -= b.bytes.len() as u64;
    }
}

async fn run(
    config: LinkConfig,
    state: Rc<RefCell<LinkState>>,
    changed: Rc<WaitList>,
    on_acked: Rc<dyn Fn(u64)>,
) {
    let mut backoff =
        ringtail_shards::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    while !state.borrow().stopped {
        let outcome = connection(&config, &state, &changed, &on_acked).await;
        state.borrow_mut().streaming = false;
        if state.borrow().stopped {
            return;
        }
        let reason = match outcome {
            Ok(()) => "the follower closed the connection".to_string(),
            Err(e) => e,
        };
        tracing::warn!(slot = config.slot, follower = %config.addr, %reason, "replication link down; reconnecting");
        state.borrow_mut().last_error = Some(reason);
        backoff.wait().await;
    }
}

/// One connection: Start, resend, stream; returns when it breaks.
async fn connection(
    config: &LinkConfig,
    state: &Rc<RefCell<LinkState>>,
    changed: &Rc<WaitList>,
    on_acked: &Rc<dyn Fn(u64)>,
) -> Result<(), String> {
    let connect = TcpStream::connect(config.addr.as_str());
    let stream = ringtail_shards::timeout(CONNECT_TIMEOUT, connect)
        .await
        .ok_or("connecting timed out")?
        .map_err(|e| format!("connecting: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.split();
    let first_seq = {
        let s = state.borrow();
        s.queue.front().map_or(s.next_seq, |b| b.seq)
    };
    let start = config.start(first_seq);
    let mut out = BytesMut::new();
    frame::encode(&start, &[], &mut out);
    writer.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    let next_seq = match ringtail_shards::timeout(ANSWER_TIMEOUT, read_frame(&mut reader, &mut buf))
        .await
        .ok_or("no answer to Start")??
    {
        Header::Started {
            next_seq, fresh, ..
        } => {
            let mut s = state.borrow_mut();
            s.streaming = true;
            s.lost_copy |= fresh && s.acked > 0;
            next_seq
        }
        Header::Refused { reason, .. } => return Err(format!("Start refused: {reason}")),
        other => return Err(format!("unexpected answer to Start: {other:?}")),
    };
    let sending = send(config, state, changed, writer, next_seq);
    let reading = async {
        loop {
            let answer =
                ringtail_shards::timeout(ANSWER_TIMEOUT, read_frame(&mut reader, &mut buf)).await;
            let Some(answer) = answer else {
                if state.borrow().queue.is_empty() {
                    continue;
                }
                return Err(format!(
                    "no answer for {ANSWER_TIMEOUT:?} with batches unacknowledged"
                ));
            };
            match answer? {
                // The answer to a Start sent mid-stream (after a commit freed batches unsent).
                Header::Started { fresh, .. } => {
                    let mut s = state.borrow_mut();
                    s.lost_copy |= fresh && s.acked > 0;
                }
                Header::Acked { durable_seq, .. } => {
                    let lost_copy = {
                        let mut s = state.borrow_mut();
                        s.acked = s.acked.max(durable_seq);
                        s.last_error = None;
                        release(&mut s, durable_seq);
                        s.lost_copy
                    };
                    if !lost_copy {
                        on_acked(durable_seq);
                    }
                }
                Header::Refused { reason, .. } => return Err(format!("refused: {reason}")),
                other => return Err(format!("unexpected frame: {other:?}")),
            }
        }
    };
    futures::pin_mut!(sending, reading);
    match futures::future::select(sending, reading).await {
        futures::future::Either::Left((r, _)) | futures::future::Either::Right((r, _)) => r,
    }
}

/// Streams the queued batches from `from` on, then each as it is pushed, and the committed
/// sequence as it moves.
async fn send(
    config: &LinkConfig,
    state: &Rc<RefCell<LinkState>>,
    changed: &Rc<WaitList>,
    mut writer: WriteHalf<TcpStream>,
    mut from: u64,
) -> Result<(), String> {
    let mut committed_sent = 0;
    loop {
        changed
            .wait_until(|| {
                let s = state.borrow();
                s.stopped || s.next_seq > from || s.committed > committed_sent
            })
            .await;
        // What to write, decided without awaiting: batches from `from` on (the queue is
        // contiguous in sequence), or first a new Start if a commit freed some before they were
        // sent (the follower jumps them: they are in the bucket); and the committed sequence.
        let (restart, batches, committed) = {
            let s = state.borrow();
            if s.stopped {
                return Ok(());
            }
            let front = s.queue.front().map_or(s.next_seq, |b| b.seq);
            let restart = (from < front).then_some(front);
            let skip = (from.max(front) - front) as usize;
            let batches: Vec<Batch> = s.queue.iter().skip(skip).cloned().collect();
            (restart, batches, s.committed)
        };
        let mut out = BytesMut::new();
        if let Some(first_seq) = restart {
            frame::encode(&config.start(first_seq), &[], &mut out);
            writer.write_all(&out).await.map_err(|e| e.to_string())?;
            from = first_seq;
        }
        for b in batches {
            let header = Header::Append {
                slot: config.slot,
                epoch: config.epoch,
                seq: b.seq,
                topic_id: b.topic_id,
                partition: b.partition,
                base_offset: b.base_offset,
                record_count: b.record_count,
                leader_epoch: b.leader_epoch,
            };
            let prefix = frame::encode_prefix(&header, b.bytes.len());
            writer.write_all(&prefix).await.map_err(|e| e.to_string())?;
            writer
                .write_all(&b.bytes)
                .await
                .map_err(|e| e.to_string())?;
            from = b.seq + 1;
        }
        if committed > committed_sent {
            let trim = Header::Committed {
                slot: config.slot,
                epoch: config.epoch,
                seq: committed,
            };
            out.clear();
            frame::encode(&trim, &[], &mut out);
            writer.write_all(&out).await.map_err(|e| e.to_string())?;
            committed_sent = committed;
        }
        writer.flush().await.map_err(|e| e.to_string())?;
    }
}

/// Reads the next whole frame; `buf` holds what was read past it. Dropped while it waits, it
/// loses nothing (a read lands in `buf` only once it returned).
async fn read_frame(
    reader: &mut ReadHalf<TcpStream>,
    buf: &mut BytesMut,
) -> Result<Header, String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((header, _)) = frame::decode(buf).map_err(|e| e.to_string())? {
            return Ok(header);
        }
        let n = reader.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the follower closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
