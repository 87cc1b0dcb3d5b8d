//! The WAL ring's on-disk format. Pure code: bytes in, structs out.
//!
//! ```text
//! file:  | superblock A (1 block) | superblock B (1 block) | data region (ring) ............ |
//! ring:  ... | chunk | chunk | chunk | (unused tail) |  wraps to the data region's start
//! chunk: | chunk header (64 B) | entry | entry | ... | zero padding to the block size |
//! entry: | entry header (64 B) | payload (a Kafka record batch, exactly as received) |
//! ```
//!
//! Every write is exactly one chunk, block-aligned and a whole number of blocks long. All
//! integers are little-endian. Each header carries a CRC-32C; an entry's CRC covers its header
//! (with the CRC field zeroed) and its payload.

use bytes::{BufMut, BytesMut};

pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"RTWALSB1";
pub const CHUNK_MAGIC: u32 = u32::from_le_bytes(*b"RTWC");
pub const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"RTWE");
pub const FORMAT_VERSION: u16 = 1;
pub const CHUNK_HEADER_LEN: usize = 64;
pub const ENTRY_HEADER_LEN: usize = 64;
pub const SUPERBLOCK_LEN: usize = 64;
/// Superblock copies at the start of the file, each in its own block.
pub const SUPERBLOCK_COPIES: u64 = 2;

/// Ring geometry and trim point, double-written at the start of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Bumped on every write; the valid copy with the highest generation wins.
    pub generation: u64,
    pub block_size: u32,
    /// Bytes of the whole region (superblocks + ring).
    pub region_bytes: u64,
    /// Position of the oldest chunk still needed (absolute, inside the data region).
    pub trim_pos: u64,
    /// Sequence number of the first entry of that chunk.
    pub trim_seq: u64,
    /// Largest chunk the writer may write; bounds recovery's look-ahead for later chunks.
    pub chunk_bytes_max: u32,
}

impl Superblock {
    pub fn data_start(&self) -> u64 {
        SUPERBLOCK_COPIES * self.block_size as u64
    }

    /// Which block (0 or 1) this generation is written to: copies alternate.
    pub fn slot(&self) -> u64 {
        self.generation % SUPERBLOCK_COPIES
    }

    pub fn encode(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[0..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.region_bytes.to_le_bytes());
        b[32..40].copy_from_slice(&self.trim_pos.to_le_bytes());
        b[40..48].copy_from_slice(&self.trim_seq.to_le_bytes());
        b[48..52].copy_from_slice(&self.chunk_bytes_max.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes one copy; `None` if it is not a valid superblock.
    pub fn decode(b: &[u8]) -> Option<Superblock> {
        if b.len() < SUPERBLOCK_LEN || b[0..8] != SUPERBLOCK_MAGIC || le_u16(b, 8) != FORMAT_VERSION
        {
            return None;
        }
        if crc32c::crc32c(&b[..60]) != le_u32(b, 60) {
            return None;
        }
        let sb = Superblock {
            block_size: le_u32(b, 12),
            generation: le_u64(b, 16),
            region_bytes: le_u64(b, 24),
            trim_pos: le_u64(b, 32),
            trim_seq: le_u64(b, 40),
            chunk_bytes_max: le_u32(b, 48),
        };
        sb.is_consistent().then_some(sb)
    }

    fn is_consistent(&self) -> bool {
        let bs = self.block_size as u64;
        bs >= 512
            && bs.is_power_of_two()
            && self.region_bytes.is_multiple_of(bs)
            && self.region_bytes >= self.data_start() + 2 * bs
            && self.trim_pos >= self.data_start()
            && self.trim_pos < self.region_bytes
            && self.trim_pos.is_multiple_of(bs)
            && (self.chunk_bytes_max as u64).is_multiple_of(bs)
            && self.chunk_bytes_max as u64 >= bs
            && (self.chunk_bytes_max as u64) <= self.region_bytes - self.data_start()
    }

    /// The newest valid copy among the two superblock blocks.
    pub fn newest(copy_a: &[u8], copy_b: &[u8]) -> Option<Superblock> {
        match (Superblock::decode(copy_a), Superblock::decode(copy_b)) {
            (Some(a), Some(b)) => Some(if a.generation >= b.generation { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

/// What the caller stores with each payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Opaque 16-byte stream id (the engine puts a topic id here).
    pub stream_id: [u8; 16],
    /// Opaque sub-stream index (the engine puts a partition index here).
    pub stream_index: i32,
    pub base_offset: i64,
    pub record_count: i32,
    pub leader_epoch: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub meta: EntryMeta,
    pub seq: u64,
    pub payload_len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Sequence number of the chunk's first entry; entries count up from it.
    pub first_seq: u64,
    pub entry_count: u32,
    /// Bytes of the chunk including padding: a multiple of the block size.
    pub chunk_len: u32,
}

impl ChunkHeader {
    pub fn decode(b: &[u8]) -> Option<ChunkHeader> {
        if b.len() < CHUNK_HEADER_LEN
            || le_u32(b, 0) != CHUNK_MAGIC
            || le_u16(b, 4) != FORMAT_VERSION
        {
            return None;
        }
        if crc32c::crc32c(&b[..60]) != le_u32(b, 60) {
            return None;
        }
        Some(ChunkHeader {
            first_seq: le_u64(b, 8),
            entry_count: le_u32(b, 16),
            chunk_len: le_u32(b, 20),
        })
    }

    pub(crate) fn encode_into(&self, out: &mut [u8]) {
        out[..CHUNK_HEADER_LEN].fill(0);
        out[0..4].copy_from_slice(&CHUNK_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&self.first_seq.to_le_bytes());
        out[16..20].copy_from_slice(&self.entry_count.to_le_bytes());
        out[20..24].copy_from_slice(&self.chunk_len.to_le_bytes());
        let crc = crc32c::crc32c(&out[..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Bytes a chunk of entries with these payload sizes takes on disk.
pub fn chunk_len(payload_lens: impl Iterator<Item = usize>, block_size: usize) -> usize {
    let raw: usize = CHUNK_HEADER_LEN + payload_lens.map(|l| ENTRY_HEADER_LEN + l).sum::<usize>();
    raw.div_ceil(block_size) * block_size
}

/// Encodes one chunk into `out` (which must be exactly `chunk_len(..)` bytes, e.g. an aligned
/// DMA buffer). Entries are numbered `first_seq..`.
/// An entry's header with its CRC (over the header and the payload). Computed when the entry is
/// appended, by the appender, so that the write path only copies bytes.
pub fn entry_header(meta: EntryMeta, seq: u64, payload: &[u8]) -> [u8; ENTRY_HEADER_LEN] {
    let mut header = [0u8; ENTRY_HEADER_LEN];
    let h = EntryHeader {
        meta,
        seq,
        payload_len: payload.len() as u32,
    };
    encode_entry_header(&h, &mut header);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header), payload);
    header[56..60].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Encodes one chunk into `out` (exactly `chunk_len(..)` bytes, e.g. an aligned DMA buffer)
/// from entries whose headers [`entry_header`] made, numbered `first_seq..`.
pub fn encode_chunk<'a>(
    out: &mut [u8],
    first_seq: u64,
    entries: impl ExactSizeIterator<Item = (&'a [u8; ENTRY_HEADER_LEN], &'a [u8])>,
) {
    let count = entries.len() as u32;
    let mut at = CHUNK_HEADER_LEN;
    for (i, (header, payload)) in entries.enumerate() {
        debug_assert_eq!(
            le_u64(header, 12),
            first_seq + i as u64,
            "entries are numbered densely"
        );
        out[at..at + ENTRY_HEADER_LEN].copy_from_slice(header);
        at += ENTRY_HEADER_LEN;
        out[at..at + payload.len()].copy_from_slice(payload);
        at += payload.len();
    }
    out[at..].fill(0);
    assert!(
        out.len() >= at && out.len() <= u32::MAX as usize,
        "chunk buffer sized by chunk_len"
    );
    ChunkHeader {
        first_seq,
        entry_count: count,
        chunk_len: out.len() as u32,
    }
    .encode_into(out);
}

fn encode_entry_header(h: &EntryHeader, out: &mut [u8]) {
    out.fill(0);
    out[0..4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[8..12].copy_from_slice(&h.payload_len.to_le_bytes());
    out[12..20].copy_from_slice(&h.seq.to_le_bytes());
    out[20..36].copy_from_slice(&h.meta.stream_id);
    out[36..40].copy_from_slice(&h.meta.stream_index.to_le_bytes());
    out[40..48].copy_from_slice(&h.meta.base_offset.to_le_bytes());
    out[48..52].copy_from_slice(&h.meta.record_count.to_le_bytes());
    out[52..56].copy_from_slice(&h.meta.leader_epoch.to_le_bytes());
    // 56..60: CRC, filled by the caller; 60..64 reserved.
}

/// Decodes the entry at the start of `b`, verifying its CRC. Returns the header and the payload.
pub fn decode_entry(b: &[u8]) -> Option<(EntryHeader, &[u8])> {
    if b.len() < ENTRY_HEADER_LEN || le_u32(b, 0) != ENTRY_MAGIC || le_u16(b, 4) != FORMAT_VERSION {
        return None;
    }
    let payload_len = le_u32(b, 8) as usize;
    let end = ENTRY_HEADER_LEN.checked_add(payload_len)?;
    if b.len() < end {
        return None;
    }
    let mut header = [0u8; ENTRY_HEADER_LEN];
    header.copy_from_slice(&b[..ENTRY_HEADER_LEN]);
    header[56..60].fill(0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header), &b[ENTRY_HEADER_LEN..end]);
    if crc != le_u32(b, 56) {
        return None;
    }
    let mut stream_id = [0u8; 16];
    stream_id.copy_from_slice(&b[20..36]);
    let h = EntryHeader {
        payload_len: payload_len as u32,
        seq: le_u64(b, 12),
        meta: EntryMeta {
            stream_id,
            stream_index: le_u32(b, 36) as i32,
            base_offset: le_u64(b, 40) as i64,
            record_count: le_u32(b, 48) as i32,
            leader_epoch: le_u32(b, 52) as i32,
        },
    };
    Some((h, &b[ENTRY_HEADER_LEN..end]))
}

/// A superblock copy padded to a full block, ready for an O_DIRECT write.
pub fn superblock_block(sb: &Superblock) -> BytesMut {
    let mut b = BytesMut::with_capacity(sb.block_size as usize);
    b.put_slice(&sb.encode());
    b.resize(sb.block_size as usize, 0);
    b
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn meta(i: i64) -> EntryMeta {
        EntryMeta {
            stream_id: [7; 16],
            stream_index: 3,
            base_offset: i * 10,
            record_count: 10,
            leader_epoch: 0,
        }
    }

    #[test]
    fn superblock_round_trips_and_newest_wins() {
        let a = Superblock {
            generation: 4,
            block_size: 4096,
            region_bytes: 1 << 20,
            trim_pos: 8192,
            trim_seq: 1,
            chunk_bytes_max: 65536,
        };
        let b = Superblock {
            generation: 5,
            trim_pos: 12288,
            trim_seq: 9,
            ..a
        };
        assert_eq!(Superblock::decode(&a.encode()), Some(a));
        assert_eq!(Superblock::newest(&a.encode(), &b.encode()), Some(b));
        let mut torn = b.encode();
        torn[33] ^= 1;
        assert_eq!(
            Superblock::newest(&a.encode(), &torn),
            Some(a),
            "a torn copy falls back to the other"
        );
        assert_eq!(Superblock::newest(&[0; 64], &[0; 64]), None);
        let bad = Superblock { trim_pos: 100, ..a };
        assert_eq!(
            Superblock::decode(&bad.encode()),
            None,
            "inconsistent geometry is refused"
        );
    }

    #[test]
    fn chunk_encodes_padded_and_entries_decode() {
        let payloads: Vec<Vec<u8>> = (0..3).map(|i| vec![i as u8; 100 + i * 1000]).collect();
        let len = chunk_len(payloads.iter().map(|p| p.len()), 4096);
        assert_eq!(len % 4096, 0);
        let mut buf = vec![0xAAu8; len];
        let headers: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| entry_header(meta(i as i64), 42 + i as u64, p))
            .collect();
        encode_chunk(
            &mut buf,
            42,
            headers.iter().zip(payloads.iter().map(|p| &p[..])),
        );
        let ch = ChunkHeader::decode(&buf).unwrap();
        assert_eq!(
            ch,
            ChunkHeader {
                first_seq: 42,
                entry_count: 3,
                chunk_len: len as u32
            }
        );
        let mut at = CHUNK_HEADER_LEN;
        for (i, p) in payloads.iter().enumerate() {
            let (h, payload) = decode_entry(&buf[at..]).unwrap();
            assert_eq!(
                (h.seq, h.meta, payload),
                (42 + i as u64, meta(i as i64), &p[..])
            );
            at += ENTRY_HEADER_LEN + p.len();
        }
        assert!(buf[at..].iter().all(|&b| b == 0), "padding is zeroed");
        // Any flipped bit in an entry is caught.
        buf[CHUNK_HEADER_LEN + ENTRY_HEADER_LEN + 50] ^= 4;
        assert!(decode_entry(&buf[CHUNK_HEADER_LEN..]).is_none());
    }
}
