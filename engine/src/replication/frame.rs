//! Replication frames: what an owner and its followers send each other on a replication
//! connection. Pure: encoding, and decoding from a read buffer (the batch bytes come out as a
//! slice of it, not copied).
//!
//! ```text
//! frame:  | frame length u32 LE | header length u32 LE | rkyv Header | payload |
//! ```
//! The frame length counts what follows it. Only `Append` has a payload: one batch, the bytes
//! the owner's WAL holds.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest frame accepted: one batch as large as a produce may carry, and its header.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// The largest header accepted (a `Refused` reason is the only free text).
pub const HEADER_BYTES_MAX: usize = 64 << 10;
/// The longest reason a `Refused` carries (longer ones are cut).
pub const REASON_BYTES_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Header {
    /// Owner → follower, first on a connection and at each new epoch: the owner `node` of this
    /// cluster streams `slot` under `epoch`, starting at `first_seq`.
    Start {
        cluster_id: String,
        node: i32,
        slot: u32,
        epoch: u64,
        first_seq: u64,
    },
    /// Owner → follower: batch `seq` of the slot's stream (the payload).
    Append {
        slot: u32,
        epoch: u64,
        seq: u64,
        topic_id: [u8; 16],
        partition: i32,
        base_offset: i64,
        record_count: i32,
        leader_epoch: i32,
    },
    /// Owner → follower: every batch up to `seq` is in a committed object (trim behind it).
    Committed { slot: u32, epoch: u64, seq: u64 },
    /// Follower → owner: the `Start` is taken; send from `next_seq` on. `fresh`: the slot's
    /// copy here begins at this `Start` (nothing of the epoch was held before).
    Started {
        slot: u32,
        epoch: u64,
        next_seq: u64,
        fresh: bool,
    },
    /// Follower → owner: every batch up to `durable_seq` is durable in the replica ring.
    Acked {
        slot: u32,
        epoch: u64,
        durable_seq: u64,
    },
    /// Follower → owner: the last frame was refused, nothing of it appended.
    Refused {
        slot: u32,
        epoch: u64,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("replication frame of {0} bytes exceeds {FRAME_BYTES_MAX}")]
    TooLarge(usize),
    #[error("replication frame header of {0} bytes does not fit its frame or the limit")]
    HeaderLength(usize),
    #[error("replication frame header does not validate: {0}")]
    Header(String),
    #[error("a replication frame carries a payload only with Append")]
    Payload,
}

/// Appends `header` (and `payload`, for an `Append`) as one frame to `out`.
pub fn encode(header: &Header, payload: &[u8], out: &mut BytesMut) {
    let header = match header {
        Header::Refused {
            slot,
            epoch,
            reason,
        } if reason.len() > REASON_BYTES_MAX => Header::Refused {
            slot: *slot,
            epoch: *epoch,
            reason: cut(reason, REASON_BYTES_MAX),
        },
        h => h.clone(),
    };
    assert!(
        matches!(header, Header::Append { .. }) || payload.is_empty(),
        "only an Append has a payload"
    );
    let encoded = rkyv::to_bytes::<rkyv::rancor::Error>(&header).expect("a header serialises");
    let frame_len = 4 + encoded.len() + payload.len();
    assert!(frame_len <= FRAME_BYTES_MAX, "a frame a reader accepts");
    out.reserve(4 + frame_len);
    out.put_u32_le(frame_len as u32);
    out.put_u32_le(encoded.len() as u32);
    out.extend_from_slice(&encoded);
    out.extend_from_slice(payload);
}

/// A frame's bytes up to its payload (`payload_len` bytes follow, sent from their own buffer:
/// an owner writes a batch without copying it).
pub fn encode_prefix(header: &Header, payload_len: usize) -> Bytes {
    let encoded = rkyv::to_bytes::<rkyv::rancor::Error>(header).expect("a header serialises");
    let frame_len = 4 + encoded.len() + payload_len;
    assert!(frame_len <= FRAME_BYTES_MAX, "a frame a reader accepts");
    let mut out = BytesMut::with_capacity(8 + encoded.len());
    out.put_u32_le(frame_len as u32);
    out.put_u32_le(encoded.len() as u32);
    out.extend_from_slice(&encoded);
    out.freeze()
}

/// Takes the next whole frame off the front of `buf`: None while it is incomplete. A frame
/// that breaks the format is an error (the connection is closed; nothing of it is used).
pub fn decode(buf: &mut BytesMut) -> Result<Option<(Header, Bytes)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let frame_len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if frame_len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge(frame_len));
    }
    if frame_len < 4 {
        return Err(FrameError::HeaderLength(frame_len));
    }
    if buf.len() < 4 + frame_len {
        return Ok(None);
    }
    let header_len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if header_len > HEADER_BYTES_MAX || header_len > frame_len - 4 {
        return Err(FrameError::HeaderLength(header_len));
    }
    let mut frame = buf.split_to(4 + frame_len);
    frame.advance(8);
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(header_len);
    aligned.extend_from_slice(&frame[..header_len]);
    let header = rkyv::from_bytes::<Header, rkyv::rancor::Error>(&aligned)
        .map_err(|e| FrameError::Header(e.to_string()))?;
    frame.advance(header_len);
    let payload = frame.freeze();
    if !payload.is_empty() && !matches!(header, Header::Append { .. }) {
        return Err(FrameError::Payload);
    }
    Ok(Some((header, payload)))
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(seq: u64) -> Header {
        Header::Append {
            slot: 3,
            epoch: 7,
            seq,
            topic_id: [5; 16],
            partition: 1,
            base_offset: 40,
            record_count: 2,
            leader_epoch: 7,
        }
    }

    #[test]
    fn frames_round_trip_and_arrive_whole() {
        let mut out = BytesMut::new();
        let start = Header::Start {
            cluster_id: "c1".into(),
            node: 2,
            slot: 3,
            epoch: 7,
            first_seq: 1,
        };
        encode(&start, &[], &mut out);
        encode(&append(1), b"batch-bytes", &mut out);
        let acked = Header::Acked {
            slot: 3,
            epoch: 7,
            durable_seq: 1,
        };
        encode(&acked, &[], &mut out);
        let whole = out.clone();
        // Byte by byte: nothing comes out before a frame is whole.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in whole.iter() {
            buf.put_u8(*b);
            while let Some(f) = decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![
                (start, Bytes::new()),
                (append(1), Bytes::from_static(b"batch-bytes")),
                (acked, Bytes::new()),
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn a_prefix_and_its_payload_are_one_frame() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encode_prefix(&append(4), 5));
        buf.extend_from_slice(b"hello");
        assert_eq!(
            decode(&mut buf).unwrap(),
            Some((append(4), Bytes::from_static(b"hello")))
        );
    }

    #[test]
    fn broken_frames_are_errors_not_panics() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(FRAME_BYTES_MAX as u32 + 1);
        assert_eq!(
            decode(&mut buf),
            Err(FrameError::TooLarge(FRAME_BYTES_MAX + 1))
        );
        let mut buf = BytesMut::new();
        buf.put_u32_le(8);
        buf.put_u32_le(9);
        buf.put_u32_le(0);
        assert_eq!(decode(&mut buf), Err(FrameError::HeaderLength(9)));
        // A payload on anything but an Append.
        let mut ok = BytesMut::new();
        encode(
            &Header::Committed {
                slot: 1,
                epoch: 1,
                seq: 1,
            },
            &[],
            &mut ok,
        );
        let mut bad = BytesMut::new();
        bad.put_u32_le(u32::from_le_bytes(ok[..4].try_into().unwrap()) + 2);
        bad.extend_from_slice(&ok[4..]);
        bad.extend_from_slice(b"xx");
        assert_eq!(decode(&mut bad), Err(FrameError::Payload));
        // Damaged headers: validation catches what would be unsafe to read.
        let mut good = BytesMut::new();
        encode(&append(9), b"p", &mut good);
        for i in 8..good.len() - 1 {
            let mut bad = good.clone();
            bad[i] = bad[i].wrapping_add(0x5b);
            let _ = decode(&mut bad);
        }
    }

    #[test]
    fn a_long_refusal_reason_is_cut() {
        let mut out = BytesMut::new();
        let reason = "é".repeat(REASON_BYTES_MAX);
        encode(
            &Header::Refused {
                slot: 0,
                epoch: 1,
                reason,
            },
            &[],
            &mut out,
        );
        let Some((Header::Refused { reason, .. }, _)) = decode(&mut out).unwrap() else {
            panic!("a refusal")
        };
        assert!(reason.len() <= REASON_BYTES_MAX && !reason.is_empty());
    }
}
