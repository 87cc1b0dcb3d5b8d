//! What a follower accepts of one slot's stream (ARCHITECTURE.md, "Replicated WAL", R4–R6).
//! Pure: the replica ring's I/O asks it before every append and tells it what became durable.
//!
//! A stream is the owner's, numbered from its `Start` within one epoch. The follower keeps the
//! highest epoch it has seen: an older owner is refused (R5); a newer one starts afresh, and the
//! slot's entries of older epochs are discarded (R6); within the epoch, batches are taken in
//! sequence only, each checked against what its frame says it is.

use ringtail_netio::header::BatchHeader;

/// Why a frame was refused: logged by the follower and sent back to the owner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("epoch {epoch} is older than the slot's epoch {known} here: a stale owner")]
    StaleEpoch { epoch: u64, known: u64 },
    #[error("epoch {epoch} was not started here (the slot is at epoch {known})")]
    NotStarted { epoch: u64, known: u64 },
    #[error("sequence {got} where {expected} was due: a gap or a repeat")]
    Sequence { expected: u64, got: u64 },
    #[error("this broker is taking the slot over: it accepts nothing more from its owner")]
    Frozen,
    #[error("the batch does not match its frame: {0}")]
    Batch(String),
}

/// How a `Start` was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// A newer epoch: discard every entry of the slot; the stream begins at the first sequence.
    Fresh,
    /// The same epoch again (a reconnect): the owner resends from `next_seq` (entries below it
    /// are appended here, and their acknowledgements follow as they become durable).
    Resume { next_seq: u64 },
}

/// One slot's stream as this follower holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replica {
    epoch: u64,
    /// The sequence the next append must carry.
    next_seq: u64,
    durable_seq: u64,
    /// This broker takes (or took) the slot over at this epoch: nothing of an owner at or
    /// below it is accepted.
    frozen: Option<u64>,
}

impl Replica {
    /// A slot whose ring holds, after recovery, entries up to `last_seq` of `epoch`, its
    /// highest (0: none of it — the owner's next `Start` of that epoch says where it resumes).
    pub fn recovered(epoch: u64, last_seq: u64) -> Replica {
        Replica {
            epoch,
            next_seq: if last_seq == 0 { 0 } else { last_seq + 1 },
            durable_seq: last_seq,
            frozen: None,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// The owner of `epoch` starts (or resumes) streaming at `first_seq`.
    pub fn start(&mut self, epoch: u64, first_seq: u64) -> Result<Started, Refusal> {
        if self.frozen.is_some_and(|at| epoch <= at) {
            return Err(Refusal::Frozen);
        }
        if epoch < self.epoch {
            return Err(Refusal::StaleEpoch {
                epoch,
                known: self.epoch,
            });
        }
        if first_seq == 0 {
            return Err(Refusal::Sequence {
                expected: 1,
                got: 0,
            });
        }
        if epoch > self.epoch {
            // A newer owner than the take-over this broker froze the slot for.
            *self = Replica {
                epoch,
                next_seq: first_seq,
                durable_seq: first_seq - 1,
                frozen: None,
            };
            return Ok(Started::Fresh);
        }
        // The owner resends what it still holds from `first_seq` on. What it let go of was
        // acknowledged here (so it is in this ring) or is in a committed object: numbers it no
        // longer has that this ring lacks are in the bucket, and the stream jumps them.
        if first_seq > self.next_seq {
            self.next_seq = first_seq;
            self.durable_seq = self.durable_seq.max(first_seq - 1);
        }
        Ok(Started::Resume {
            next_seq: self.next_seq,
        })
    }

    /// Batch `seq` of `epoch` may be appended (and is counted as appended).
    pub fn accept(&mut self, epoch: u64, seq: u64) -> Result<(), Refusal> {
        self.check(epoch, seq)?;
        self.next_seq += 1;
        Ok(())
    }

    /// Whether batch `seq` of `epoch` may be appended (nothing changes).
    pub fn check(&self, epoch: u64, seq: u64) -> Result<(), Refusal> {
        if self.frozen.is_some() {
            return Err(Refusal::Frozen);
        }
        if epoch < self.epoch {
            return Err(Refusal::StaleEpoch {
                epoch,
                known: self.epoch,
            });
        }
        if epoch > self.epoch || self.next_seq == 0 {
            return Err(Refusal::NotStarted {
                epoch,
                known: self.epoch,
            });
        }
        if seq != self.next_seq {
            return Err(Refusal::Sequence {
                expected: self.next_seq,
                got: seq,
            });
        }
        Ok(())
    }

    /// The ring made everything up to `seq` of the current epoch durable.
    pub fn durable(&mut self, seq: u64) {
        debug_assert!(
            seq < self.next_seq,
            "only what was appended becomes durable"
        );
        self.durable_seq = self.durable_seq.max(seq);
    }

    /// This broker takes the slot over at epoch `at` (R4): from now on nothing of an owner at
    /// or below it is accepted — the owner it replaces — before it reads its own copy; a newer
    /// owner's `Start` takes the slot afresh. (`u64::MAX`: while the take-over's epoch is not
    /// known yet, nothing at all.)
    pub fn freeze(&mut self, at: u64) {
        self.frozen = Some(at);
    }
}

/// What an `Append` frame says its batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub base_offset: i64,
    pub record_count: i32,
    pub leader_epoch: i32,
}

/// Checks the batch an `Append` carries against its frame: a whole Kafka batch (magic 2) at the
/// claimed offset, count and leader epoch, whose CRC-32C holds.
pub fn check_batch(claimed: Claimed, bytes: &[u8]) -> Result<BatchHeader, Refusal> {
    let bad = |why: String| Err(Refusal::Batch(why));
    let header = match BatchHeader::parse(bytes) {
        Ok(h) => h,
        Err(e) => return bad(format!("{e}")),
    };
    if header.magic != 2 {
        return bad(format!("magic {}", header.magic));
    }
    if header.batch_length < 0 || header.size_bytes() != bytes.len() {
        return bad(format!(
            "{} bytes for a batch of {}",
            bytes.len(),
            header.batch_length
        ));
    }
    let found = Claimed {
        base_offset: header.base_offset,
        record_count: header.record_count,
        leader_epoch: header.partition_leader_epoch,
    };
    if found != claimed {
        return bad(format!("it is {found:?}, its frame says {claimed:?}"));
    }
    if !header.crc_matches(bytes) {
        return bad("CRC-32C mismatch".into());
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::records::Compression;
    use ringtail_netio::batch::{split_and_validate, testing};

    #[test]
    fn a_stream_is_taken_in_sequence_within_its_epoch() {
        let mut r = Replica::default();
        assert_eq!(
            r.accept(3, 1),
            Err(Refusal::NotStarted { epoch: 3, known: 0 })
        );
        assert_eq!(r.start(3, 1), Ok(Started::Fresh));
        assert_eq!(r.accept(3, 1), Ok(()));
        assert_eq!(r.accept(3, 2), Ok(()));
        assert_eq!(
            r.accept(3, 2),
            Err(Refusal::Sequence {
                expected: 3,
                got: 2
            }),
            "a repeat"
        );
        assert_eq!(
            r.accept(3, 5),
            Err(Refusal::Sequence {
                expected: 3,
                got: 5
            }),
            "a gap"
        );
        r.durable(1);
        assert_eq!(r.durable_seq(), 1);
        // A reconnect within the epoch resumes after what was appended.
        assert_eq!(r.start(3, 2), Ok(Started::Resume { next_seq: 3 }));
        assert_eq!(r.accept(3, 3), Ok(()));
        // The owner let go of 4..5 (committed in the bucket meanwhile): the stream jumps them.
        assert_eq!(r.start(3, 6), Ok(Started::Resume { next_seq: 6 }));
        assert_eq!(r.durable_seq(), 5);
        assert_eq!(r.accept(3, 6), Ok(()));
    }

    #[test]
    fn a_ring_with_nothing_of_its_epoch_resumes_where_the_owner_says() {
        let mut r = Replica::recovered(4, 0);
        assert_eq!(
            r.accept(4, 1),
            Err(Refusal::NotStarted { epoch: 4, known: 4 })
        );
        assert_eq!(
            r.start(3, 1),
            Err(Refusal::StaleEpoch { epoch: 3, known: 4 })
        );
        assert_eq!(r.start(4, 30), Ok(Started::Resume { next_seq: 30 }));
        assert_eq!(r.accept(4, 30), Ok(()));
    }

    #[test]
    fn a_newer_epoch_starts_afresh_and_an_older_one_is_refused() {
        let mut r = Replica::recovered(3, 10);
        assert_eq!(
            r.start(2, 1),
            Err(Refusal::StaleEpoch { epoch: 2, known: 3 })
        );
        assert_eq!(
            r.accept(2, 11),
            Err(Refusal::StaleEpoch { epoch: 2, known: 3 })
        );
        assert_eq!(r.accept(3, 11), Ok(()));
        assert_eq!(r.start(5, 1), Ok(Started::Fresh));
        assert_eq!((r.epoch(), r.durable_seq()), (5, 0));
        assert_eq!(
            r.accept(3, 12),
            Err(Refusal::StaleEpoch { epoch: 3, known: 5 })
        );
        assert_eq!(r.accept(5, 1), Ok(()));
    }

    #[test]
    fn a_frozen_slot_accepts_nothing() {
        let mut r = Replica::recovered(4, 2);
        r.freeze(u64::MAX);
        assert_eq!(r.accept(4, 3), Err(Refusal::Frozen));
        assert_eq!(r.start(9, 1), Err(Refusal::Frozen));
        // The take-over's epoch known: owners up to it are refused, a newer one starts afresh.
        r.freeze(5);
        assert_eq!(r.start(5, 3), Err(Refusal::Frozen));
        assert_eq!(r.start(6, 1), Ok(Started::Fresh));
        assert!(!r.is_frozen());
        assert_eq!(r.accept(6, 1), Ok(()));
    }

    fn stored_batch(base: i64, epoch: i32) -> (BatchHeader, Bytes) {
        let buf = testing::encode(
            (0..3).map(|i| Some(Bytes::from(format!("v{i}")))),
            1_000,
            Compression::None,
        );
        split_and_validate(buf, 1 << 20)
            .unwrap()
            .into_iter()
            .next()
            .unwrap()
            .assign(base, epoch)
    }

    #[test]
    fn a_batch_must_be_what_its_frame_claims() {
        let (h, bytes) = stored_batch(40, 7);
        let claimed = Claimed {
            base_offset: 40,
            record_count: 3,
            leader_epoch: 7,
        };
        assert_eq!(check_batch(claimed, &bytes), Ok(h));
        for wrong in [
            Claimed {
                base_offset: 41,
                ..claimed
            },
            Claimed {
                record_count: 2,
                ..claimed
            },
            Claimed {
                leader_epoch: 6,
                ..claimed
            },
        ] {
            assert!(matches!(check_batch(wrong, &bytes), Err(Refusal::Batch(_))));
        }
        let mut flipped = bytes.to_vec();
        let n = flipped.len();
        flipped[n - 1] ^= 1;
        assert_eq!(
            check_batch(claimed, &flipped),
            Err(Refusal::Batch("CRC-32C mismatch".into()))
        );
        assert!(check_batch(claimed, &bytes[..n - 1]).is_err());
        assert!(check_batch(claimed, &bytes[..10]).is_err());
    }
}
