//! A follower's copy of one slot's stream: its replica ring (the WAL ring's format and direct
//! I/O) and the slot's epoch file. ARCHITECTURE.md, "Replicated WAL", step 2.
//!
//! * An entry is one batch as the owner's WAL holds it. Its header's `base offset` field holds
//!   the stream's sequence number (the batch's own header has its offset), `leader epoch` the
//!   batch's epoch, which is its owner's epoch (an owner streams only what it appended).
//! * The epoch file holds the highest epoch this follower started or froze the slot at. It is
//!   written durably *before* a new epoch's stream is taken and before this broker takes the
//!   slot over, so a restart never forgets that it refused an older owner (R4, R5) — even when
//!   no entry of that epoch is left in the ring.
//! * Entries of older epochs are discarded (R6); the owner's `Committed` trims behind it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use ringtail_wal::format::EntryMeta;
use ringtail_wal::{Recovery, Wal, WalConfig, WalError};

use crate::replication::follower::{check_batch, Claimed, Refusal, Replica, Started};

/// What the ring keeps with each entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaTag {
    pub epoch: u64,
    pub seq: u64,
}

/// Why an append did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("replica ring: {0}")]
    Ring(#[from] WalError),
}

/// A batch of the replica ring, as a successor re-appends it (R4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailEntry {
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub seq: u64,
    pub bytes: Bytes,
}

/// The epoch file's bytes: the epoch (u64 LE) and its CRC-32C (u32 LE).
const EPOCH_FILE_LEN: usize = 12;

/// The highest epoch recorded in the epoch file at `path` (0 if there is none). Blocking.
pub fn read_epoch(path: &Path) -> Result<u64, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if bytes.len() != EPOCH_FILE_LEN {
        return Err(format!(
            "{}: {} bytes, not {EPOCH_FILE_LEN}",
            path.display(),
            bytes.len()
        ));
    }
    let epoch = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[8..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..8]) != crc {
        return Err(format!("{}: checksum mismatch", path.display()));
    }
    Ok(epoch)
}

/// Records `epoch` in the epoch file at `path`, durably (a new file, fsynced, renamed over the
/// old one, the directory fsynced). Blocking: run it off the shard.
pub fn write_epoch(path: &Path, epoch: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut bytes = epoch.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    let tmp = path.with_extension(format!("epoch.tmp-{epoch}"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

struct RingState {
    replica: Replica,
    /// Entries of the current epoch up to this sequence are in the bucket.
    committed_seq: u64,
}

/// One slot's replica ring, open on the shard that hosts the slot.
pub struct ReplicaRing {
    wal: Wal<ReplicaTag>,
    state: Rc<RefCell<RingState>>,
    epoch_path: PathBuf,
    /// Epoch-file writes, one at a time (each reads, compares and replaces the file).
    recording: futures::lock::Mutex<()>,
}

impl ReplicaRing {
    /// Opens the ring `recovery` read (after `create_or_check` and `recover`, off the shard),
    /// with `epoch_floor` from the epoch file at `epoch_path`. `on_durable(epoch, seq)` hears
    /// each time more of the current epoch's stream is durable.
    pub async fn open(
        config: &WalConfig,
        recovery: &Recovery,
        epoch_floor: u64,
        epoch_path: PathBuf,
        on_durable: impl Fn(u64, u64) + 'static,
    ) -> Result<ReplicaRing, WalError> {
        let mut entries = recovery.entries.iter();
        let mut live = Vec::with_capacity(recovery.chunks.len());
        let mut last: Option<ReplicaTag> = None;
        for chunk in &recovery.chunks {
            let tags: Vec<ReplicaTag> = entries
                .by_ref()
                .take(chunk.entry_count as usize)
                .map(|(h, _)| ReplicaTag {
                    epoch: h.meta.leader_epoch.max(0) as u64,
                    seq: h.meta.base_offset.max(0) as u64,
                })
                .collect();
            for t in &tags {
                if last.is_none_or(|l| t.epoch >= l.epoch) {
                    last = Some(*t);
                }
            }
            live.push((*chunk, tags));
        }
        let epoch = epoch_floor.max(last.map_or(0, |t| t.epoch));
        let last_seq = last.filter(|t| t.epoch == epoch).map_or(0, |t| t.seq);
        let state = Rc::new(RefCell::new(RingState {
            replica: Replica::recovered(epoch, last_seq),
            committed_seq: 0,
        }));
        let weak = Rc::downgrade(&state);
        let wal = Wal::open(config, recovery, live, move |tags: &[ReplicaTag]| {
            let Some(state) = weak.upgrade() else { return };
            let advanced = {
                let mut s = state.borrow_mut();
                let epoch = s.replica.epoch();
                let top = tags
                    .iter()
                    .filter(|t| t.epoch == epoch)
                    .map(|t| t.seq)
                    .max();
                top.map(|seq| {
                    s.replica.durable(seq);
                    (epoch, s.replica.durable_seq())
                })
            };
            if let Some((epoch, seq)) = advanced {
                on_durable(epoch, seq);
            }
        })
        .await?;
        let ring = ReplicaRing {
            wal,
            state,
            epoch_path,
            recording: futures::lock::Mutex::new(()),
        };
        ring.trim();
        Ok(ring)
    }

    pub fn epoch(&self) -> u64 {
        self.state.borrow().replica.epoch()
    }

    pub fn durable_seq(&self) -> u64 {
        self.state.borrow().replica.durable_seq()
    }

    /// The owner of `epoch` starts (or resumes) its stream at `first_seq`. A newer epoch is
    /// recorded in the epoch file before it is taken; the older epochs' entries are discarded.
    pub async fn start(&self, epoch: u64, first_seq: u64) -> Result<Started, AppendError> {
        // Decided on a copy: nothing changes until the new epoch is durable.
        let mut next = self.state.borrow().replica.clone();
        let started = next.start(epoch, first_seq)?;
        if started == Started::Fresh {
            self.record_epoch(epoch).await?;
        }
        let mut s = self.state.borrow_mut();
        // Re-decided on the current state: appends may have landed while the file was written.
        let started = s.replica.start(epoch, first_seq)?;
        if started == Started::Fresh {
            s.committed_seq = 0;
        }
        drop(s);
        self.trim();
        Ok(started)
    }

    /// Appends batch `seq` of `epoch` (of partition `partition` of topic `topic_id`), checked
    /// against what its frame claims; durable later (`on_durable`).
    pub fn append(
        &self,
        epoch: u64,
        seq: u64,
        topic_id: [u8; 16],
        partition: i32,
        claimed: Claimed,
        bytes: Bytes,
    ) -> Result<(), AppendError> {
        self.state.borrow().replica.check(epoch, seq)?;
        if claimed.leader_epoch != crate::cluster::epochs::leader_epoch(epoch) {
            return Err(Refusal::Batch(format!(
                "leader epoch {} in a stream of epoch {epoch}",
                claimed.leader_epoch
            ))
            .into());
        }
        let header = check_batch(claimed, &bytes)?;
        let meta = EntryMeta {
            stream_id: topic_id,
            stream_index: partition,
            base_offset: seq as i64,
            record_count: header.record_count,
            leader_epoch: claimed.leader_epoch,
        };
        // The durability ticket is not awaited: `on_durable` reports in ring order.
        drop(self.wal.append(meta, bytes, ReplicaTag { epoch, seq })?);
        self.state
            .borrow_mut()
            .replica
            .accept(epoch, seq)
            .expect("checked above");
        Ok(())
    }

    /// The owner of `epoch` committed everything up to `seq` to the bucket: trim behind it.
    pub fn committed(&self, epoch: u64, seq: u64) {
        {
            let mut s = self.state.borrow_mut();
            if epoch != s.replica.epoch() {
                return;
            }
            s.committed_seq = s.committed_seq.max(seq);
        }
        self.trim();
    }

    /// This broker is taking the slot over, at an epoch not known yet: from now on it accepts
    /// nothing (R4), until [`ReplicaRing::freeze`] names the epoch.
    pub fn freeze_all(&self) {
        self.state.borrow_mut().replica.freeze(u64::MAX);
    }

    /// A take-over that froze the ring did not happen: owners newer than the ring's stream
    /// are taken again (its own owner, which may still hold the slot, is not: a follower that
    /// refused it once is out of its ISR anyway).
    pub fn thaw(&self) {
        let mut s = self.state.borrow_mut();
        let epoch = s.replica.epoch();
        s.replica.freeze(epoch);
    }

    /// This broker takes the slot over at `epoch` (the owner's next): from now on it accepts
    /// nothing of the owner it replaces, and a restart remembers it (R4); a newer owner's
    /// stream is taken again. Then its copy may be read.
    pub async fn freeze(&self, epoch: u64) -> Result<(), AppendError> {
        self.state.borrow_mut().replica.freeze(epoch);
        self.record_epoch(epoch).await
    }

    /// The stream this ring holds of the epoch it was frozen at, not known to be committed, in
    /// sequence order: what a successor re-appends to its own WAL (R4). Read back from the ring
    /// file (a scan, off the shard); only a frozen ring, which takes no more writes, is read.
    pub async fn tail(&self, ring_path: &Path) -> Result<Vec<TailEntry>, String> {
        let (epoch, committed, durable) = {
            let s = self.state.borrow();
            if !s.replica.is_frozen() {
                return Err("the replica ring is read back only once frozen".into());
            }
            (s.replica.epoch(), s.committed_seq, s.replica.durable_seq())
        };
        let path = ring_path.to_path_buf();
        let recovery = ringtail_shards::off_thread("replica-tail", move || {
            ringtail_wal::recover(&path).map_err(|e| e.to_string())
        })
        .await
        .ok_or("the replica ring's reading thread did not run")??;
        let tail: Vec<TailEntry> = recovery
            .entries
            .into_iter()
            .filter(|(h, _)| {
                let seq = h.meta.base_offset.max(0) as u64;
                h.meta.leader_epoch.max(0) as u64 == epoch && seq > committed && seq <= durable
            })
            .map(|(h, bytes)| TailEntry {
                topic_id: h.meta.stream_id,
                partition: h.meta.stream_index,
                seq: h.meta.base_offset as u64,
                bytes,
            })
            .collect();
        // In sequence order; a jump is a stream the owner restarted past batches this follower
        // lacks (they were to be committed first): the successor's re-append stops each
        // partition at its first gap in offsets.
        debug_assert!(tail.windows(2).all(|w| w[1].seq > w[0].seq));
        Ok(tail)
    }

    /// Bytes of the ring holding entries not trimmed.
    pub fn used_bytes(&self) -> u64 {
        self.wal.used_bytes()
    }

    /// Records `epoch` in the epoch file (if higher than what it holds), off the shard.
    async fn record_epoch(&self, epoch: u64) -> Result<(), AppendError> {
        let _one_at_a_time = self.recording.lock().await;
        let path = self.epoch_path.clone();
        let written = ringtail_shards::off_thread("replica-epoch", move || {
            if read_epoch(&path).unwrap_or(0) >= epoch {
                return Ok(());
            }
            write_epoch(&path, epoch)
        })
        .await;
        match written {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(WalError::Failed(format!("epoch file: {e}")).into()),
            None => Err(WalError::Failed("epoch file: its thread did not run".into()).into()),
        }
    }

    /// Drops the oldest entries while they are of an older epoch or committed.
    fn trim(&self) {
        let (epoch, committed) = {
            let s = self.state.borrow();
            (s.replica.epoch(), s.committed_seq)
        };
        self.wal
            .trim(|t| t.epoch < epoch || (t.epoch == epoch && t.seq <= committed));
    }
}

#[cfg(test)]
mod tests;
