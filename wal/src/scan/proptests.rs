//! Bounded property tests of the recovery scan (run by `cargo test`, a few seconds in all).
//!
//! Rings are written by the real format code ([`encode_chunk`], [`entry_header`],
//! [`Superblock::encode`]) through a model writer that keeps the ring writer's rules (wrap
//! when a chunk does not fit before the end, never write over what the durable superblock
//! points to), over several laps with trims. Then the ring is damaged — its last write torn,
//! its last superblock write torn, bytes flipped or overwritten anywhere — or replaced by
//! arbitrary bytes. The scan must never panic, never return an entry whose CRC fails, and
//! return a contiguous run of what was written, starting at the trim point of the superblock
//! it used: all of it when the damage missed every byte that matters.

use std::collections::VecDeque;
use std::ops::Range;

use proptest::prelude::*;

use super::{scan, Recovered, ScanError};
use crate::format::{
    chunk_len, encode_chunk, entry_header, EntryMeta, Superblock, CHUNK_HEADER_LEN,
    ENTRY_HEADER_LEN, SUPERBLOCK_LEN,
};

/// Entries per chunk, at most.
const ENTRIES_PER_CHUNK_MAX: usize = 4;
/// Operations applied to one ring, at most.
const OPS_MAX: usize = 80;

fn meta(seq: u64) -> EntryMeta {
    EntryMeta {
        stream_id: [(seq % 251) as u8; 16],
        stream_index: (seq % 7) as i32,
        base_offset: (seq as i64).wrapping_mul(3),
        record_count: 3,
        leader_epoch: (seq % 5) as i32,
    }
}

/// The payload of sequence `seq`: its bytes depend on the sequence, so that an entry from an
/// older lap never equals the one expected.
fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (seq.wrapping_mul(131) as usize + j * 7) as u8)
        .collect()
}

fn distance(from: u64, to: u64, ring_bytes: u64) -> u64 {
    if to >= from {
        to - from
    } else {
        ring_bytes - (from - to)
    }
}

#[derive(Debug, Clone, Copy)]
struct Chunk {
    pos: u64,
    first_seq: u64,
    /// Bytes the CRCs cover: the chunk header and its entries (not the padding).
    covered: u64,
}

/// A ring written like the writer writes it, with the whole history of payloads.
struct Model {
    region: Vec<u8>,
    bs: u64,
    /// The durable (newest) superblock.
    sb: Superblock,
    /// Chunks from the in-memory trim point to the head.
    live: VecDeque<Chunk>,
    head: u64,
    next_seq: u64,
    first_seq: u64,
    /// Payload of sequence `first_seq + i` at index i.
    history: Vec<Vec<u8>>,
    /// Every chunk written, in order.
    written_chunks: Vec<Chunk>,
}

#[derive(Debug, Clone)]
enum Op {
    /// One chunk with entries of these payload lengths.
    Append(Vec<usize>),
    /// Trim the oldest chunks in memory (the next superblock write records it).
    Trim(usize),
    /// Write a superblock now (the writer does at open when the maximum changes).
    Superblock,
}

impl Model {
    fn new(bs: u64, ring_blocks: u64, max_blocks: u64, first_seq: u64) -> Model {
        let region_bytes = (2 + ring_blocks) * bs;
        let sb = Superblock {
            generation: 1,
            block_size: bs as u32,
            region_bytes,
            trim_pos: 2 * bs,
            trim_seq: first_seq,
            chunk_bytes_max: (max_blocks * bs) as u32,
        };
        let mut m = Model {
            region: vec![0; region_bytes as usize],
            bs,
            sb,
            live: VecDeque::new(),
            head: sb.trim_pos,
            next_seq: first_seq,
            first_seq,
            history: Vec::new(),
            written_chunks: Vec::new(),
        };
        m.put_superblock(sb);
        m
    }

    fn ring_bytes(&self) -> u64 {
        self.sb.region_bytes - self.sb.data_start()
    }

    fn put_superblock(&mut self, sb: Superblock) {
        let at = (sb.slot() * self.bs) as usize;
        self.region[at..at + SUPERBLOCK_LEN].copy_from_slice(&sb.encode());
    }

    /// The superblock the next superblock write writes.
    fn next_superblock(&self) -> Superblock {
        let (trim_pos, trim_seq) = match self.live.front() {
            Some(c) => (c.pos, c.first_seq),
            None => (self.head, self.next_seq),
        };
        Superblock {
            generation: self.sb.generation + 1,
            trim_pos,
            trim_seq,
            ..self.sb
        }
    }

    fn write_superblock(&mut self) {
        self.sb = self.next_superblock();
        self.put_superblock(self.sb);
    }

    /// Bytes from the durable trim point to the head (as the writer measures them).
    fn durable_bytes(&self) -> u64 {
        if self.sb.trim_seq == self.next_seq {
            return 0;
        }
        match distance(self.sb.trim_pos, self.head, self.ring_bytes()) {
            0 => self.ring_bytes(),
            d => d,
        }
    }

    fn used_bytes(&self) -> u64 {
        match self.live.front() {
            None => 0,
            Some(c) => match distance(c.pos, self.head, self.ring_bytes()) {
                0 => self.ring_bytes(),
                d => d,
            },
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(lens) => {
                self.append(lens, None);
            }
            Op::Trim(n) => {
                for _ in 0..*n {
                    self.live.pop_front();
                }
            }
            Op::Superblock => self.write_superblock(),
        }
    }

    /// Writes one chunk, trimming the oldest chunks first when the ring has no room (the
    /// caller's uploads would have). With `torn_at`, only the chunk's first bytes reach the
    /// disk: the rest keeps what was there. Returns the chunk and whether every byte its CRCs
    /// cover reached the disk anyway (the old bytes past the cut may be the same).
    fn append(&mut self, lens: &[usize], torn_at: Option<u64>) -> (Chunk, bool) {
        let bs = self.bs;
        let len = chunk_len(lens.iter().copied(), bs as usize) as u64;
        assert!(
            len <= self.sb.chunk_bytes_max as u64,
            "the strategy bounds chunks"
        );
        let end = self.sb.region_bytes;
        let (pos, gap) = if self.head + len > end {
            (self.sb.data_start(), end - self.head)
        } else {
            (self.head, 0)
        };
        while self.used_bytes() + gap + len > self.ring_bytes() {
            self.live
                .pop_front()
                .expect("an empty ring holds any chunk");
        }
        if self.durable_bytes() + gap + len > self.ring_bytes() {
            self.write_superblock();
        }
        assert!(
            self.durable_bytes() + gap + len <= self.ring_bytes(),
            "never overwrite what the durable superblock points to"
        );
        let seq = self.next_seq;
        let payloads: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| payload(seq + i as u64, l))
            .collect();
        let headers: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| entry_header(meta(seq + i as u64), seq + i as u64, p))
            .collect();
        let at = pos as usize..(pos + len) as usize;
        let before = self.region[at.clone()].to_vec();
        encode_chunk(
            &mut self.region[at.clone()],
            seq,
            headers.iter().zip(payloads.iter().map(|p| &p[..])),
        );
        let covered =
            (CHUNK_HEADER_LEN + lens.iter().map(|l| ENTRY_HEADER_LEN + l).sum::<usize>()) as u64;
        let mut intact = true;
        if let Some(cut) = torn_at {
            let cut = cut as usize;
            let c = covered as usize;
            intact = cut >= c || self.region[at.start + cut..at.start + c] == before[cut..c];
            self.region[at.start + cut..at.end].copy_from_slice(&before[cut..]);
        }
        let chunk = Chunk {
            pos,
            first_seq: seq,
            covered,
        };
        self.history.extend(payloads);
        self.next_seq += lens.len() as u64;
        self.head = pos + len;
        if self.head + bs > end {
            self.head = self.sb.data_start();
        }
        self.live.push_back(chunk);
        self.written_chunks.push(chunk);
        (chunk, intact)
    }

    /// Byte ranges whose damage may lose data: the durable superblock's encoded bytes and
    /// what the CRCs cover in every chunk from its trim point on (the live chunks and those
    /// trimmed in memory since it was written).
    fn sensitive(&self) -> Vec<Range<usize>> {
        let sb_at = (self.sb.slot() * self.bs) as usize;
        std::iter::once(sb_at..sb_at + SUPERBLOCK_LEN)
            .chain(
                self.written_chunks
                    .iter()
                    .filter(|c| c.first_seq >= self.sb.trim_seq)
                    .map(|c| c.pos as usize..(c.pos + c.covered) as usize),
            )
            .collect()
    }

    /// The payloads of sequences `from..to`.
    fn written(&self, from: u64, to: u64) -> Vec<Vec<u8>> {
        let base = self.first_seq;
        self.history[(from - base) as usize..(to - base) as usize].to_vec()
    }
}

/// Checks every returned entry on its own, against the region's bytes: its header's magic and
/// CRC over header and payload, sequences dense from the superblock's trim sequence, and (for
/// a ring the model wrote, `history` given) its metadata and payload being the ones written
/// for that sequence.
fn check_recovered(
    region: &[u8],
    r: &Recovered<'_>,
    history: Option<&dyn Fn(u64) -> Option<Vec<u8>>>,
) {
    let mut seq = r.superblock.trim_seq;
    for (h, p) in &r.entries {
        let at = p.as_ptr() as usize - region.as_ptr() as usize;
        assert!(at >= ENTRY_HEADER_LEN && at + p.len() <= region.len());
        let header = &region[at - ENTRY_HEADER_LEN..at];
        assert_eq!(&header[0..4], b"RTWE");
        let mut zeroed = header.to_vec();
        zeroed[56..60].fill(0);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&zeroed), p);
        assert_eq!(
            crc.to_le_bytes(),
            header[56..60],
            "a returned entry's CRC holds"
        );
        assert_eq!(h.payload_len as usize, p.len());
        assert_eq!(h.seq, seq, "sequences are dense from the trim point");
        if let Some(history) = history {
            assert_eq!(h.meta, meta(seq));
            if let Some(expected) = history(seq) {
                assert_eq!(&expected[..], *p, "the payload written for sequence {seq}");
            }
        }
        seq += 1;
    }
    assert_eq!(r.next_seq, seq);
    let chunk_entries: u64 = r.chunks.iter().map(|c| c.entry_count as u64).sum();
    assert_eq!(chunk_entries, r.entries.len() as u64);
}

#[derive(Debug, Clone)]
enum Damage {
    None,
    /// The last write: a chunk, of which only the first `cut` (modulo its length) bytes
    /// reached the disk.
    TornChunk(Vec<usize>, u64),
    /// The last write: a superblock, torn (one byte of its encoding changed).
    TornSuperblock(usize, u8),
    /// Bytes xor-ed anywhere in the region.
    Flips(Vec<(usize, u8)>),
    /// A run of arbitrary bytes anywhere in the region.
    Overwrite(usize, Vec<u8>),
}

fn lens(max_payload: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..=max_payload, 1..=ENTRIES_PER_CHUNK_MAX)
}

/// Block size, ring blocks, max chunk blocks, first sequence, operations, damage.
fn ring_case() -> impl Strategy<Value = (u64, u64, u64, u64, Vec<Op>, Damage)> {
    (prop_oneof![Just(512u64), Just(4096u64)], 1u64..=4).prop_flat_map(|(bs, max_blocks)| {
        let max_payload = ((max_blocks * bs) as usize
            - CHUNK_HEADER_LEN
            - ENTRIES_PER_CHUNK_MAX * ENTRY_HEADER_LEN)
            / ENTRIES_PER_CHUNK_MAX;
        let op = prop_oneof![
            6 => lens(max_payload).prop_map(Op::Append),
            2 => (1usize..4).prop_map(Op::Trim),
            1 => Just(Op::Superblock),
        ];
        let damage = prop_oneof![
            Just(Damage::None),
            (lens(max_payload), any::<u64>()).prop_map(|(l, c)| Damage::TornChunk(l, c)),
            (0..SUPERBLOCK_LEN, 1u8..=255).prop_map(|(at, x)| Damage::TornSuperblock(at, x)),
            prop::collection::vec((any::<usize>(), 1u8..=255), 1..4).prop_map(Damage::Flips),
            (any::<usize>(), prop::collection::vec(any::<u8>(), 1..200))
                .prop_map(|(at, b)| Damage::Overwrite(at, b)),
        ];
        (
            Just(bs),
            (4 * max_blocks)..=(4 * max_blocks + 40),
            Just(max_blocks),
            prop_oneof![Just(1u64), 1u64..1 << 40],
            prop::collection::vec(op, 0..OPS_MAX),
            damage,
        )
    })
}

/// Cases per property in `cargo test` (about a second for both in a debug build); a longer
/// run: `PROPTEST_CASES=100000 cargo test -p ringtail-wal --release proptests`.
const CASES_DEFAULT: u32 = 1000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            ProptestConfig::default().cases
        } else {
            CASES_DEFAULT
        },
        // Failures print the minimal case; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn overlaps(ranges: &[Range<usize>], at: Range<usize>) -> bool {
    ranges.iter().any(|r| r.start < at.end && at.start < r.end)
}

proptest! {
    #![proptest_config(config())]

    /// A ring written by the format code, then damaged: never a panic, never an entry whose CRC
    /// fails, always a contiguous run of what was written from the used superblock's trim
    /// point — everything when the damage missed the bytes that matter.
    #[test]
    fn damaged_rings_recover_a_prefix(
        (bs, ring_blocks, max_blocks, first_seq, ops, damage) in ring_case()
    ) {
        let mut m = Model::new(bs, ring_blocks, max_blocks, first_seq);
        for op in &ops {
            m.apply(op);
        }
        let len = m.region.len();
        // (trim sequence, end sequence, head) the scan must find exactly, if known.
        let mut exact = Some((m.sb.trim_seq, m.next_seq, m.head));
        match &damage {
            Damage::None => {}
            Damage::TornChunk(lens, cut) => {
                let head_before = m.head;
                let len = chunk_len(lens.iter().copied(), bs as usize) as u64;
                let cut = cut % len;
                let (c, intact) = m.append(lens, Some(cut));
                exact = Some(if intact {
                    (m.sb.trim_seq, m.next_seq, m.head)
                } else {
                    (m.sb.trim_seq, c.first_seq, head_before)
                });
            }
            Damage::TornSuperblock(at, x) => {
                let older = m.sb;
                m.write_superblock();
                let slot = (m.sb.slot() * bs) as usize;
                m.region[slot + at] ^= x;
                // The older copy is used, and everything it points to is intact.
                exact = Some((older.trim_seq, m.next_seq, m.head));
            }
            Damage::Flips(flips) => {
                let sensitive = m.sensitive();
                for &(at, x) in flips {
                    let at = at % len;
                    m.region[at] ^= x;
                    if overlaps(&sensitive, at..at + 1) {
                        exact = None;
                    }
                }
            }
            Damage::Overwrite(at, bytes) => {
                let sensitive = m.sensitive();
                let at = at % len;
                let end = (at + bytes.len()).min(len);
                if m.region[at..end] != bytes[..end - at] && overlaps(&sensitive, at..end) {
                    exact = None;
                }
                m.region[at..end].copy_from_slice(&bytes[..end - at]);
            }
        }
        let history = |seq: u64| {
            (seq >= m.first_seq && seq < m.next_seq)
                .then(|| m.history[(seq - m.first_seq) as usize].clone())
        };
        match scan(&m.region) {
            Ok(r) => {
                check_recovered(&m.region, &r, Some(&history));
                if let Some((trim_seq, end_seq, head)) = exact {
                    prop_assert_eq!(r.superblock.trim_seq, trim_seq);
                    prop_assert_eq!(r.next_seq, end_seq);
                    prop_assert_eq!(r.head, head);
                    let got: Vec<Vec<u8>> = r.entries.iter().map(|(_, p)| p.to_vec()).collect();
                    prop_assert_eq!(got, m.written(trim_seq, end_seq));
                }
            }
            Err(e @ (ScanError::CorruptMiddle { .. } | ScanError::NoSuperblock)) => {
                prop_assert!(exact.is_none(), "{e} although no byte that matters was damaged");
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }

    /// Arbitrary bytes behind a valid superblock with arbitrary (consistent) fields, with
    /// CRC-valid chunk headers (arbitrary sequence, entry count and length) and entry headers
    /// (arbitrary payload length) planted in them: the scan never panics, allocates only
    /// what the region can hold, and whatever it returns verifies.
    #[test]
    fn arbitrary_bytes_never_panic(
        bs in prop_oneof![Just(512u64), Just(4096u64)],
        blocks in 4u64..=24,
        trim_block in any::<u64>(),
        trim_seq in prop_oneof![any::<u64>(), Just(u64::MAX), Just(u64::MAX - 2), Just(1u64)],
        max_blocks in prop::option::of(any::<u64>()),
        seed in prop::collection::vec(any::<u8>(), 1..4096),
        with_superblock in prop::bool::weighted(0.8),
        plants in prop::collection::vec(plant(), 0..6),
    ) {
        let region_bytes = blocks * bs;
        let mut region: Vec<u8> = (0..region_bytes as usize)
            .map(|i| seed[i % seed.len()] ^ (i / seed.len()) as u8)
            .collect();
        let trim_pos = (2 + trim_block % (blocks - 2)) * bs;
        if with_superblock {
            let sb = Superblock {
                generation: 1,
                block_size: bs as u32,
                region_bytes,
                trim_pos,
                trim_seq,
                // Arbitrary, or (`None`) the whole ring.
                chunk_bytes_max: (max_blocks.map_or(blocks - 2, |m| 1 + m % (blocks - 2)) * bs)
                    as u32,
            };
            let at = (sb.slot() * bs) as usize;
            region[at..at + SUPERBLOCK_LEN].copy_from_slice(&sb.encode());
        }
        for p in &plants {
            p.put(&mut region, bs, trim_pos, trim_seq);
        }
        if let Ok(r) = scan(&region) {
            check_recovered(&region, &r, None);
        }
    }
}

/// A CRC-valid chunk header planted in arbitrary bytes, with entry headers after it.
#[derive(Debug, Clone)]
struct Plant {
    /// Where: at the trim point, or at this block (modulo the ring's).
    block: Option<u64>,
    /// The sequence: the trim sequence plus this (wrapping), or an arbitrary one.
    seq: Result<u64, u64>,
    /// Arbitrary, or (`None`) the number of planted entries.
    entry_count: Option<u32>,
    /// Arbitrary, or (`None`) what the planted entries take, in whole blocks.
    chunk_len: Option<u32>,
    /// Entry headers (payload length, valid CRC) after the chunk header, each followed by
    /// its payload, with sequences counting up from the chunk's.
    entries: Vec<u32>,
}

fn plant() -> impl Strategy<Value = Plant> {
    (
        prop::option::of(any::<u64>()),
        prop_oneof![
            3 => Just(Ok(0)),
            1 => (0u64..3).prop_map(Ok),
            1 => any::<u64>().prop_map(Err),
        ],
        prop_oneof![
            2 => Just(None),
            1 => prop_oneof![0u32..6, Just(u32::MAX), any::<u32>()].prop_map(Some),
        ],
        prop_oneof![
            2 => Just(None),
            1 => prop_oneof![(1u32..8).prop_map(|b| b * 512), any::<u32>()].prop_map(Some),
        ],
        prop::collection::vec(
            prop_oneof![8 => 0u32..400, 1 => 0u32..3000, 1 => any::<u32>()],
            0..4,
        ),
    )
        .prop_map(|(block, seq, entry_count, chunk_len, entries)| Plant {
            block,
            seq,
            entry_count,
            chunk_len,
            entries,
        })
}

impl Plant {
    fn put(&self, region: &mut [u8], bs: u64, trim_pos: u64, trim_seq: u64) {
        let pos = match self.block {
            None => trim_pos,
            Some(b) => (2 + b % (region.len() as u64 / bs - 2)) * bs, // past the superblocks
        } as usize;
        if pos + CHUNK_HEADER_LEN > region.len() {
            return;
        }
        let first_seq = match self.seq {
            Ok(d) => trim_seq.wrapping_add(d),
            Err(s) => s,
        };
        let fitted = chunk_len(self.entries.iter().map(|&l| l as usize), bs as usize);
        crate::format::ChunkHeader {
            first_seq,
            entry_count: self.entry_count.unwrap_or(self.entries.len() as u32),
            chunk_len: self
                .chunk_len
                .unwrap_or(fitted.min(u32::MAX as usize) as u32),
        }
        .encode_into(&mut region[pos..]);
        let mut at = pos + CHUNK_HEADER_LEN;
        for (i, &len) in self.entries.iter().enumerate() {
            let payload_end = (at + ENTRY_HEADER_LEN).saturating_add(len as usize);
            if payload_end > region.len() {
                return;
            }
            let seq = first_seq.wrapping_add(i as u64);
            let payload = &region[at + ENTRY_HEADER_LEN..payload_end];
            let header = entry_header(meta(seq), seq, payload);
            region[at..at + ENTRY_HEADER_LEN].copy_from_slice(&header);
            at = payload_end;
        }
    }
}
