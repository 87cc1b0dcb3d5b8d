//! The ring on disk: creation, recovery from a file, and the group-committing writer.
//!
//! One writer task per ring. Appends made while a write is in flight queue up and go out
//! together in the next write: one aligned O_DIRECT write of one chunk, then the durability
//! barrier. Only one write is ever in flight (recovery relies on it: only the last chunk can be
//! torn). When a chunk is durable the caller's `on_durable` sees its entries in ring order, then
//! the appenders' tickets resolve.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use ringtail_shards::fs::{DmaFile, OpenOptions};
use ringtail_shards::stats::Histogram;

use crate::format::{
    chunk_len, encode_chunk, entry_header, superblock_block, EntryHeader, EntryMeta, Superblock,
    CHUNK_HEADER_LEN, ENTRY_HEADER_LEN,
};
use crate::scan::{scan, ChunkRef, ScanError};

/// Block size of every write: valid for 512-byte and 4 KiB logical-block devices.
pub const BLOCK_SIZE: u32 = 4096;

/// The durability barrier after each write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// write, then fdatasync.
    Fdatasync,
    /// The file is opened with O_DSYNC: each write returns once durable.
    ODsync,
}

#[derive(Debug, Clone)]
pub struct WalConfig {
    pub path: PathBuf,
    /// Whole file: two superblock blocks plus the ring.
    pub region_bytes: u64,
    /// Largest single write (chunk).
    pub chunk_bytes_max: u32,
    /// Extra wait for more appends before writing a small chunk (0: write at once).
    pub max_delay: Duration,
    pub sync: SyncMode,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("WAL ring is full ({used_bytes} of {ring_bytes} bytes hold data that is not safe elsewhere yet)")]
    Full { used_bytes: u64, ring_bytes: u64 },
    #[error("entry of {0} bytes does not fit in one WAL write (--wal-max-write-bytes)")]
    TooLarge(usize),
    #[error("WAL write failed, the ring is read-only until restart: {0}")]
    Failed(String),
    #[error("WAL {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("WAL {path}: {source}")]
    Scan { path: String, source: ScanError },
}

fn open_error(path: &Path, reason: impl ToString) -> WalError {
    WalError::Open {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Creates the ring file, written out in full (so that later writes land in allocated,
/// already-written blocks), or checks that an existing one has the configured size.
/// Blocking: for start-up, before the shard serves.
pub fn create_or_check(config: &WalConfig) -> Result<(), WalError> {
    let path = &config.path;
    let bs = BLOCK_SIZE as u64;
    if !config.region_bytes.is_multiple_of(bs)
        || config.region_bytes < 2 * bs + 4 * config.chunk_bytes_max as u64
    {
        return Err(open_error(path, format!(
            "size {} must be a multiple of {bs} and hold two superblock blocks plus four maximum writes ({} bytes each)",
            config.region_bytes, config.chunk_bytes_max
        )));
    }
    if !(config.chunk_bytes_max as u64).is_multiple_of(bs) || (config.chunk_bytes_max as u64) < bs {
        return Err(open_error(
            path,
            format!(
                "max write bytes {} must be a positive multiple of {bs}",
                config.chunk_bytes_max
            ),
        ));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        let is_device = std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type());
        if !is_device && meta.len() != config.region_bytes {
            return Err(open_error(path, format!(
                "the ring is {} bytes but {} are configured; a ring never changes size (move it away to start afresh)",
                meta.len(),
                config.region_bytes
            )));
        }
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| open_error(path, e))?;
    }
    let tmp = path.with_extension("creating");
    let mut f = std::fs::File::create(&tmp).map_err(|e| open_error(&tmp, e))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = config.region_bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(|e| open_error(&tmp, e))?;
        left -= n as u64;
    }
    let sb = Superblock {
        generation: 1,
        block_size: BLOCK_SIZE,
        region_bytes: config.region_bytes,
        trim_pos: 2 * bs,
        trim_seq: 1,
        chunk_bytes_max: config.chunk_bytes_max,
    };
    use std::os::unix::fs::FileExt;
    f.write_all_at(&superblock_block(&sb), sb.slot() * bs)
        .map_err(|e| open_error(&tmp, e))?;
    f.sync_all().map_err(|e| open_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| open_error(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| open_error(path, e))?;
    }
    tracing::info!(path = %path.display(), bytes = config.region_bytes, "created WAL ring");
    Ok(())
}

/// What recovery found in a ring file, owned.
#[derive(Debug)]
pub struct Recovery {
    pub superblock: Superblock,
    pub chunks: Vec<ChunkRef>,
    pub entries: Vec<(EntryHeader, Bytes)>,
    pub head: u64,
    pub next_seq: u64,
}

/// Maps the ring read-only (start-up only, never on a serving shard) and scans it.
pub fn recover(path: &Path) -> Result<Recovery, WalError> {
    let file = std::fs::File::open(path).map_err(|e| open_error(path, e))?;
    // SAFETY: the file is not written by anyone while start-up recovery reads it.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| open_error(path, e))?;
    let r = scan(&map).map_err(|source| WalError::Scan {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Recovery {
        superblock: r.superblock,
        chunks: r.chunks,
        entries: r
            .entries
            .into_iter()
            .map(|(h, p)| (h, Bytes::copy_from_slice(p)))
            .collect(),
        head: r.head,
        next_seq: r.next_seq,
    })
}

struct Pending<T> {
    /// Entry header with sequence number and CRC, computed by the appender.
    header: [u8; ENTRY_HEADER_LEN],
    payload: Bytes,
    tag: T,
    done: oneshot::Sender<Result<(), WalError>>,
}

struct LiveChunk<T> {
    pos: u64,
    /// Bytes on disk (whole blocks): bounds the superblock's `chunk_bytes_max` while live.
    len: u64,
    first_seq: u64,
    tags: Vec<T>,
}

struct State<T> {
    pending: VecDeque<Pending<T>>,
    /// Bytes the pending entries will take (headers included, padding not).
    pending_bytes: u64,
    /// Bytes of the write in flight.
    inflight_bytes: u64,
    chunks: VecDeque<LiveChunk<T>>,
    head: u64,
    /// Sequence number of the next entry to be written.
    next_seq: u64,
    /// Sequence number the next append gets (ahead of `next_seq` by what is queued or in flight).
    next_append_seq: u64,
    /// Bytes from the in-memory trim point to the head, wrap gaps included.
    used_bytes: u64,
    /// The durable superblock (the newest one written and fdatasync'ed). Bytes trimmed in
    /// memory are reusable only once a superblock written here no longer points to them.
    superblock: Superblock,
    failed: Option<String>,
    writer_waker: Option<Waker>,
    /// Fault injection ([`Wal::hold_next_superblock_write`]): tells when the next superblock
    /// write is durable, then waits for the release before the writer records it.
    superblock_hold: Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>,
}

/// Counters of one ring (a metrics probe).
#[derive(Debug, Default, Clone, Copy)]
pub struct WalStats {
    pub writes: u64,
    pub entries: u64,
    pub bytes_written: u64,
    pub superblock_writes: u64,
}

/// A ring's live metrics, written by its shard and readable from any thread.
pub struct WalMetrics {
    pub writes: AtomicU64,
    pub entries: AtomicU64,
    pub bytes_written: AtomicU64,
    pub superblock_writes: AtomicU64,
    /// Seconds per chunk write, durability barrier included (O_DSYNC write, or write plus
    /// fdatasync).
    pub write_latency: Histogram,
    /// Bytes per chunk write.
    pub write_size: Histogram,
    /// Bytes of the ring holding untrimmed data, and the ring's size.
    pub used_bytes: AtomicU64,
    pub ring_bytes: AtomicU64,
}

impl WalMetrics {
    fn new(ring_bytes: u64) -> WalMetrics {
        WalMetrics {
            writes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            superblock_writes: AtomicU64::new(0),
            write_latency: Histogram::latency(),
            write_size: Histogram::sizes(),
            used_bytes: AtomicU64::new(0),
            ring_bytes: AtomicU64::new(ring_bytes),
        }
    }
}

/// A ring open for appends on the current shard. `T` is the caller's tag per entry.
pub struct Wal<T> {
    state: Rc<RefCell<State<T>>>,
    metrics: Arc<WalMetrics>,
    ring_bytes: u64,
    chunk_bytes_max: u64,
    _writer: ringtail_shards::Task<()>,
}

type OnDurable<T> = Box<dyn Fn(&[T])>;

impl<T: Clone + 'static> Wal<T> {
    /// Opens the ring after [`recover`]; `live` pairs each recovered chunk with its entries'
    /// tags (the caller decides what recovered data is). Spawns the writer on this shard.
    pub async fn open(
        config: &WalConfig,
        recovery: &Recovery,
        live: Vec<(ChunkRef, Vec<T>)>,
        on_durable: impl Fn(&[T]) + 'static,
    ) -> Result<Wal<T>, WalError> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if config.sync == SyncMode::ODsync {
            options.custom_flags(libc::O_DSYNC);
        }
        let file = options
            .dma_open(&config.path)
            .await
            .map_err(|e| open_error(&config.path, e))?;
        let sb = recovery.superblock;
        let ring_bytes = sb.region_bytes - sb.data_start();
        let chunks: VecDeque<LiveChunk<T>> = live
            .into_iter()
            .map(|(c, tags)| LiveChunk {
                pos: c.pos,
                len: c.len,
                first_seq: c.first_seq,
                tags,
            })
            .collect();
        let trim_pos = chunks.front().map(|c| c.pos).unwrap_or(recovery.head);
        // Live chunks from the trim position up to the head. The head back at the trim
        // position with chunks live is a ring filled exactly to the byte (a write may take the
        // last byte free), not an empty one: counting it 0 made the first trim underflow.
        let used_bytes = match distance(trim_pos, recovery.head, ring_bytes) {
            _ if chunks.is_empty() => 0,
            0 => ring_bytes,
            d => d,
        };
        let state = Rc::new(RefCell::new(State {
            pending: VecDeque::new(),
            pending_bytes: 0,
            inflight_bytes: 0,
            chunks,
            head: recovery.head,
            next_seq: recovery.next_seq,
            next_append_seq: recovery.next_seq,
            used_bytes,
            superblock: sb,
            failed: None,
            writer_waker: None,
            superblock_hold: None,
        }));
        let metrics = Arc::new(WalMetrics::new(ring_bytes));
        metrics.used_bytes.store(used_bytes, Relaxed);
        let writer = Writer {
            file: Rc::new(file),
            state: state.clone(),
            metrics: metrics.clone(),
            sync: config.sync,
            chunk_bytes_max: config.chunk_bytes_max as u64,
            max_delay: config.max_delay,
            ring_bytes,
            on_durable: Box::new(on_durable),
        };
        if writer.superblock_chunk_bytes_max() != sb.chunk_bytes_max {
            // Recovery bounds chunks by the superblock's max: record a raised max before any
            // write could exceed the old one (a lowered one is kept up to the largest live chunk).
            writer
                .write_superblock()
                .await
                .map_err(|e| open_error(&config.path, e))?;
        }
        let task = ringtail_shards::spawn(writer.run());
        Ok(Wal {
            state,
            metrics,
            ring_bytes,
            chunk_bytes_max: config.chunk_bytes_max as u64,
            _writer: task,
        })
    }

    /// Queues an entry for the next write. The receiver resolves once it is durable (and
    /// `on_durable` has seen it), or with the write's error.
    pub fn append(
        &self,
        meta: EntryMeta,
        payload: Bytes,
        tag: T,
    ) -> Result<oneshot::Receiver<Result<(), WalError>>, WalError> {
        let mut s = self.state.borrow_mut();
        if let Some(reason) = &s.failed {
            return Err(WalError::Failed(reason.clone()));
        }
        let entry_bytes = (ENTRY_HEADER_LEN + payload.len()) as u64;
        if entry_bytes + CHUNK_HEADER_LEN as u64 > self.chunk_bytes_max {
            return Err(WalError::TooLarge(payload.len()));
        }
        // Keep two maximum writes in reserve: a wrap wastes less than one write at the ring's
        // end, and a chunk's header and padding add less than another.
        let committed = s.used_bytes + s.inflight_bytes + s.pending_bytes + entry_bytes;
        if committed + 2 * self.chunk_bytes_max > self.ring_bytes {
            return Err(WalError::Full {
                used_bytes: s.used_bytes,
                ring_bytes: self.ring_bytes,
            });
        }
        let (done, rx) = oneshot::channel();
        let seq = s.next_append_seq;
        s.next_append_seq += 1;
        // The CRC is computed here, by the appender, while an earlier write is in flight.
        let header = entry_header(meta, seq, &payload);
        s.pending.push_back(Pending {
            header,
            payload,
            tag,
            done,
        });
        s.pending_bytes += entry_bytes;
        if let Some(w) = s.writer_waker.take() {
            w.wake();
        }
        Ok(rx)
    }

    /// Drops the oldest chunks while every entry in them is `dead` (safe elsewhere, or no longer
    /// needed). Their space becomes reusable once the trim is in the durable superblock.
    pub fn trim(&self, dead: impl Fn(&T) -> bool) {
        let mut s = self.state.borrow_mut();
        while s.chunks.front().is_some_and(|c| c.tags.iter().all(&dead)) {
            let c = s.chunks.pop_front().expect("front exists");
            let next = s.chunks.front().map(|n| n.pos).unwrap_or(s.head);
            let freed = if s.chunks.is_empty() {
                s.used_bytes
            } else {
                distance(c.pos, next, self.ring_bytes)
            };
            s.used_bytes -= freed;
        }
        self.metrics.used_bytes.store(s.used_bytes, Relaxed);
    }

    /// Fault injection, for tests that need a deterministic interleaving: the writer's next
    /// superblock write stops once its block is durable, before the writer records it (so it
    /// is in flight as far as the rest of the ring is concerned). The first receiver resolves
    /// when the writer is held there; sending on (or dropping) the second releases it.
    pub fn hold_next_superblock_write(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        self.state.borrow_mut().superblock_hold = Some((reached_tx, release_rx));
        (reached_rx, release_tx)
    }

    /// Bytes of the ring holding data that has not been trimmed.
    pub fn used_bytes(&self) -> u64 {
        self.state.borrow().used_bytes
    }

    pub fn ring_bytes(&self) -> u64 {
        self.ring_bytes
    }

    pub fn stats(&self) -> WalStats {
        let m = &self.metrics;
        WalStats {
            writes: m.writes.load(Relaxed),
            entries: m.entries.load(Relaxed),
            bytes_written: m.bytes_written.load(Relaxed),
            superblock_writes: m.superblock_writes.load(Relaxed),
        }
    }

    /// The ring's live metrics (for a metrics endpoint on another thread).
    pub fn metrics(&self) -> Arc<WalMetrics> {
        self.metrics.clone()
    }
}

impl<T> State<T> {
    /// Bytes from the durable superblock's trim point to the head, wrap gaps included: what
    /// recovery would read after a crash now, so what no write may overwrite. Derived from
    /// the superblock itself, not from a count of trims, so that a trim made while a
    /// superblock write is in flight cannot be mistaken for one that write recorded.
    fn durable_bytes(&self, ring_bytes: u64) -> u64 {
        if self.superblock.trim_seq == self.next_seq {
            debug_assert_eq!(self.superblock.trim_pos, self.head, "nothing written since");
            return 0;
        }
        match distance(self.superblock.trim_pos, self.head, ring_bytes) {
            0 => ring_bytes, // a whole lap written since the trim point
            d => d,
        }
    }
}

/// Forward distance from `from` to `to` in the ring (positions inside the data region).
fn distance(from: u64, to: u64, ring_bytes: u64) -> u64 {
    if to >= from {
        to - from
    } else {
        ring_bytes - (from - to)
    }
}

struct Writer<T> {
    file: Rc<DmaFile>,
    state: Rc<RefCell<State<T>>>,
    metrics: Arc<WalMetrics>,
    sync: SyncMode,
    chunk_bytes_max: u64,
    max_delay: Duration,
    ring_bytes: u64,
    on_durable: OnDurable<T>,
}

impl<T: Clone + 'static> Writer<T> {
    async fn run(self) {
        loop {
            self.wait_for_pending().await;
            if !self.max_delay.is_zero()
                && self.state.borrow().pending_bytes < self.chunk_bytes_max / 2
            {
                ringtail_shards::sleep(self.max_delay).await;
            }
            let group = self.take_group();
            if let Err((group, e)) = self.write_group(group).await {
                self.fail(group, e);
                return;
            }
        }
    }

    async fn wait_for_pending(&self) {
        futures::future::poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            if s.pending.is_empty() {
                s.writer_waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Takes the pending entries that fit in one write.
    fn take_group(&self) -> Vec<Pending<T>> {
        let mut s = self.state.borrow_mut();
        let mut group = Vec::new();
        let mut bytes = CHUNK_HEADER_LEN as u64;
        while let Some(p) = s.pending.front() {
            let entry = (ENTRY_HEADER_LEN + p.payload.len()) as u64;
            if !group.is_empty() && bytes + entry > self.chunk_bytes_max {
                break;
            }
            bytes += entry;
            group.push(s.pending.pop_front().expect("front exists"));
        }
        let taken: u64 = group
            .iter()
            .map(|p| (ENTRY_HEADER_LEN + p.payload.len()) as u64)
            .sum();
        s.pending_bytes -= taken;
        s.inflight_bytes = taken;
        group
    }

    async fn write_group(&self, group: Vec<Pending<T>>) -> Result<(), (Vec<Pending<T>>, String)> {
        match self.write_chunk(&group).await {
            Ok(()) => {
                for p in group {
                    let _ = p.done.send(Ok(()));
                }
                Ok(())
            }
            Err(e) => Err((group, e)),
        }
    }

    async fn write_chunk(&self, group: &[Pending<T>]) -> Result<(), String> {
        if let Some(reason) = injected_write_failure() {
            return Err(reason);
        }
        let bs = BLOCK_SIZE as u64;
        let len = chunk_len(group.iter().map(|p| p.payload.len()), BLOCK_SIZE as usize) as u64;
        assert!(
            len <= self.chunk_bytes_max,
            "groups are bounded by the max write size"
        );
        let (pos, seq, gap) = {
            let s = self.state.borrow();
            let end = s.superblock.region_bytes;
            if s.head + len > end {
                (s.superblock.data_start(), s.next_seq, end - s.head)
            } else {
                (s.head, s.next_seq, 0)
            }
        };
        // Space: never write over data the durable superblock still points to.
        let needs_superblock = {
            let s = self.state.borrow();
            s.durable_bytes(self.ring_bytes) + gap + len > self.ring_bytes
        };
        if needs_superblock {
            self.write_superblock().await?;
        }
        {
            let s = self.state.borrow();
            assert!(
                s.used_bytes + gap + len <= self.ring_bytes,
                "append admission keeps a write's worth of room"
            );
            let durable = s.durable_bytes(self.ring_bytes);
            assert!(
                durable + gap + len <= self.ring_bytes,
                "never overwrite what the durable superblock points to: {durable} bytes from its \
                 trim point {} to the head {}, a write of {len} bytes after a {gap}-byte gap",
                s.superblock.trim_pos,
                s.head,
            );
        }
        let mut buf = self.file.alloc_dma_buffer(len as usize);
        encode_chunk(
            buf.as_bytes_mut(),
            seq,
            group.iter().map(|p| (&p.header, &p.payload[..])),
        );
        debug_assert_eq!(pos % bs, 0, "writes are block-aligned");
        let started = Instant::now();
        let written = self
            .file
            .write_at(buf, pos)
            .await
            .map_err(|e| format!("write of {len} bytes at {pos}: {e}"))?;
        if written as u64 != len {
            return Err(format!("short write: {written} of {len} bytes at {pos}"));
        }
        if self.sync == SyncMode::Fdatasync {
            self.file
                .fdatasync()
                .await
                .map_err(|e| format!("fdatasync: {e}"))?;
        }
        let m = &self.metrics;
        m.write_latency.observe_duration(started.elapsed());
        m.write_size.observe(len as f64);
        let tags: Vec<T> = group.iter().map(|p| p.tag.clone()).collect();
        {
            let mut s = self.state.borrow_mut();
            s.used_bytes += gap + len;
            s.head = pos + len;
            if s.head + bs > s.superblock.region_bytes {
                s.used_bytes += s.superblock.region_bytes - s.head;
                s.head = s.superblock.data_start();
            }
            s.next_seq += group.len() as u64;
            debug_assert!(s.next_seq <= s.next_append_seq);
            s.inflight_bytes = 0;
            s.chunks.push_back(LiveChunk {
                pos,
                len,
                first_seq: seq,
                tags: tags.clone(),
            });
        }
        m.writes.fetch_add(1, Relaxed);
        m.entries.fetch_add(group.len() as u64, Relaxed);
        m.bytes_written.fetch_add(len, Relaxed);
        m.used_bytes.store(self.state.borrow().used_bytes, Relaxed);
        (self.on_durable)(&tags);
        Ok(())
    }

    /// The largest chunk recovery must accept: the configured maximum, or a larger chunk
    /// still live (written before `--wal-max-write-bytes` was lowered) until it is trimmed.
    /// Recovery stops at the first chunk above the superblock's maximum, so recording only a
    /// lowered maximum would cut the log there.
    fn superblock_chunk_bytes_max(&self) -> u32 {
        let s = self.state.borrow();
        let largest_live = s.chunks.iter().map(|c| c.len).max().unwrap_or(0);
        let max = self.chunk_bytes_max.max(largest_live);
        assert!(
            max <= self.ring_bytes && max.is_multiple_of(BLOCK_SIZE as u64),
            "chunks are whole blocks inside the ring"
        );
        max as u32
    }

    async fn write_superblock(&self) -> Result<(), String> {
        let chunk_bytes_max = self.superblock_chunk_bytes_max();
        let sb = {
            let s = self.state.borrow();
            let (trim_pos, trim_seq) = match s.chunks.front() {
                Some(c) => (c.pos, c.first_seq),
                None => (s.head, s.next_seq),
            };
            Superblock {
                generation: s.superblock.generation + 1,
                trim_pos,
                trim_seq,
                chunk_bytes_max,
                ..s.superblock
            }
        };
        let block = superblock_block(&sb);
        let mut buf = self.file.alloc_dma_buffer(block.len());
        buf.as_bytes_mut().copy_from_slice(&block);
        let at = sb.slot() * BLOCK_SIZE as u64;
        self.file
            .write_at(buf, at)
            .await
            .map_err(|e| format!("superblock write: {e}"))?;
        self.file
            .fdatasync()
            .await
            .map_err(|e| format!("superblock fdatasync: {e}"))?;
        let hold = self.state.borrow_mut().superblock_hold.take();
        if let Some((reached, release)) = hold {
            let _ = reached.send(());
            let _ = release.await;
        }
        let mut s = self.state.borrow_mut();
        // Trims made while this write was in flight are not in it: they stay pending (the
        // durable bytes are measured from this superblock's trim point).
        s.superblock = sb;
        self.metrics.superblock_writes.fetch_add(1, Relaxed);
        Ok(())
    }

    /// A failed write leaves the ring's tail uncertain: fail everything queued and refuse more.
    fn fail(&self, group: Vec<Pending<T>>, reason: String) {
        tracing::error!(%reason, "WAL write failed; this ring takes no more writes");
        let pending: Vec<Pending<T>> = {
            let mut s = self.state.borrow_mut();
            s.failed = Some(reason.clone());
            s.pending_bytes = 0;
            s.inflight_bytes = 0;
            s.pending.drain(..).collect()
        };
        for p in group.into_iter().chain(pending) {
            let _ = p.done.send(Err(WalError::Failed(reason.clone())));
        }
    }
}

/// Test only: while the file named by `RINGTAIL_TEST_WAL_FAIL_WHILE` exists, every WAL write
/// fails as a failing disk's would (EIO), so tests can drive the write-failure path of a real
/// broker. Unset (production): one cached environment lookup, no file check.
fn injected_write_failure() -> Option<String> {
    static PATH: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let path =
        PATH.get_or_init(|| std::env::var_os("RINGTAIL_TEST_WAL_FAIL_WHILE").map(PathBuf::from));
    path.as_ref()
        .filter(|p| p.exists())
        .map(|p| format!("injected write failure (EIO) while {} exists", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{CHUNK_HEADER_LEN, ENTRY_HEADER_LEN};
    use crate::scan::tests::{MemRing, BS};

    /// A ring filled to the last byte (the head came back to the trim position) recovers as
    /// full: its chunks are counted, trimming frees them one by one, and nothing underflows.
    #[test]
    fn a_ring_filled_to_the_byte_recovers_full_and_trims() {
        let mut ring = MemRing::new(16 * BS);
        ring.sb.chunk_bytes_max = BS as u32;
        ring.write_superblock();
        let one_block = BS - CHUNK_HEADER_LEN - ENTRY_HEADER_LEN;
        for i in 0..14u8 {
            ring.append(&[vec![i; one_block]]);
        }
        assert_eq!(
            ring.head, ring.sb.trim_pos,
            "14 one-block chunks fill the 14 data blocks"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.wal");
        std::fs::write(&path, &ring.region).unwrap();
        let config = WalConfig {
            path: path.clone(),
            region_bytes: ring.region.len() as u64,
            chunk_bytes_max: BS as u32,
            max_delay: Duration::ZERO,
            sync: SyncMode::Fdatasync,
        };
        let recovery = recover(&path).unwrap();
        assert_eq!((recovery.chunks.len(), recovery.head), (14, ring.head));
        let used = ringtail_shards::block_on(1 << 20, move || async move {
            let live = recovery
                .chunks
                .iter()
                .map(|c| (*c, vec![c.first_seq]))
                .collect();
            let wal: Wal<u64> = Wal::open(&config, &recovery, live, |_: &[u64]| {})
                .await
                .unwrap();
            let mut used = vec![wal.used_bytes()];
            assert!(matches!(
                wal.append(meta(), Bytes::from_static(b"x"), 0),
                Err(WalError::Full { .. })
            ));
            wal.trim(|&seq| seq < 8); // the first 7 chunks (sequence numbers 1..=7)
            used.push(wal.used_bytes());
            wal.trim(|_| true);
            used.push(wal.used_bytes());
            used
        })
        .unwrap();
        let bs = BS as u64;
        assert_eq!(used, vec![14 * bs, 7 * bs, 0]);
    }

    fn meta() -> EntryMeta {
        EntryMeta {
            stream_id: [1; 16],
            stream_index: 0,
            base_offset: 0,
            record_count: 1,
            leader_epoch: 0,
        }
    }
}
