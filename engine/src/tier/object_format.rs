//! Layout of what a shard uploads to object storage (the object tier's format; the uploader,
//! the manifest commit and the cold read path build on it).
//!
//! ```text
//! object:  | batches of partition A, offset order | batches of partition B | ... | index | trailer |
//! trailer: | index length: u32 LE | magic "RTOBJ003" |            (12 bytes, at the very end)
//! index:   rkyv-archived `ObjectIndex`: per partition, its offset range and byte range; and
//!          what commits an upload (its writer, the producer snapshot, or a fence's resume)
//! ```
//!
//! Batches are the exact bytes the WAL holds (offsets already assigned), grouped by partition so
//! that one ranged GET reads one partition's span. An object is immutable once uploaded, and its
//! key is never reused (ARCHITECTURE.md, "One PUT per acknowledgement").
//!
//! Format 1 (magic `RTOBJ001`) had no writer, producers or resume. Its objects are still read
//! (cold reads and merges use the manifest's spans, never an object's index); only indexes of
//! formats 2 and 3 are decoded, which only the log's objects need. Format 3 adds the leader
//! epochs of the batches (a format-2 index reads as one with none: its batches carry epoch 0).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use ringtail_netio::header::BatchHeader;

pub const OBJECT_MAGIC: [u8; 8] = *b"RTOBJ003";
/// The previous format's magic: its indexes are still decoded (the log's unfolded objects of a
/// broker stopped before an upgrade).
const OBJECT_MAGIC_V2: [u8; 8] = *b"RTOBJ002";
pub const TRAILER_LEN: usize = 12;
pub const INDEX_FORMAT_VERSION: u32 = 3;
/// Largest index accepted when reading an object (bounds a corrupt trailer's claim). As large
/// as a manifest may be: an upload's index carries the producer snapshot a manifest did.
pub const INDEX_BYTES_MAX: usize = 256 << 20;

/// One partition's bytes in an object.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Span {
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub base_offset: i64,
    pub last_offset: i64,
    pub byte_start: u64,
    pub byte_len: u64,
    pub max_timestamp: i64,
}

/// An idempotent producer's recent batches on one partition, so that a retry reaching a
/// restarted broker is still recognised after its batch left the WAL.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ProducerSnapshot {
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub producer_id: i64,
    pub epoch: i16,
    /// (first sequence, last sequence, base offset), oldest first.
    pub recent: Vec<(i32, i32, i64)>,
}

/// Where a leader epoch's batches start in a partition: in an object, the epoch of each span's
/// first batch and of every batch whose epoch differs from the one before; in the manifest,
/// each epoch's first offset in the partition (ARCHITECTURE.md, "Leader epochs").
/// How many epochs a partition keeps (the oldest go first): one per ownership change that wrote
/// to it, so only a slot taken over this often without its data ever expiring reaches it. An
/// epoch forgotten is answered as Kafka answers one below the oldest it knows.
pub const EPOCHS_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EpochStart {
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub epoch: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ObjectIndex {
    pub format_version: u32,
    pub shard: u32,
    /// The ownership epoch the object was written under.
    pub epoch: u64,
    /// WAL sequence numbers of the first and last entry it holds (0 and 0 in an object that
    /// merged smaller ones).
    pub first_wal_seq: u64,
    pub last_wal_seq: u64,
    pub spans: Vec<Span>,
    /// The node id of the broker that wrote it.
    pub node: i32,
    /// The opening of the slot that wrote it (random; 0 in a merged object): a PUT refused
    /// because the key exists tells its own earlier write from a newer owner's.
    pub writer: u64,
    /// The idempotent producers' state when it was sealed (an upload), covering every batch it
    /// holds; empty in a merged object.
    pub producers: Vec<ProducerSnapshot>,
    /// Nonzero only in a fence: the log number at which the slot's log continues.
    pub resume: u64,
    /// The leader epochs of its batches, per span in offset order (empty in a merged object).
    pub epochs: Vec<EpochStart>,
}

/// Format 2: no `epochs`.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ObjectIndexV2 {
    format_version: u32,
    shard: u32,
    epoch: u64,
    first_wal_seq: u64,
    last_wal_seq: u64,
    spans: Vec<Span>,
    node: i32,
    writer: u64,
    producers: Vec<ProducerSnapshot>,
    resume: u64,
}

/// Who seals an object: stamped into its index.
#[derive(Debug, Clone, Default)]
pub struct Stamp {
    pub shard: u32,
    pub epoch: u64,
    pub node: i32,
    pub writer: u64,
    pub producers: Vec<ProducerSnapshot>,
}

impl ObjectIndex {
    /// The index of a fence: no data, the log continues at `resume`.
    pub fn fence(stamp: Stamp, resume: u64) -> ObjectIndex {
        assert!(resume > 0, "a fence resumes somewhere");
        ObjectIndex {
            format_version: INDEX_FORMAT_VERSION,
            shard: stamp.shard,
            epoch: stamp.epoch,
            first_wal_seq: 0,
            last_wal_seq: 0,
            spans: Vec::new(),
            node: stamp.node,
            writer: stamp.writer,
            producers: Vec::new(),
            resume,
            epochs: Vec::new(),
        }
    }

    pub fn is_fence(&self) -> bool {
        self.resume != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectFormatError {
    #[error("object is {0} bytes, too short for a trailer")]
    TooShort(usize),
    #[error("object trailer magic is wrong: not a Ringtail object, or damaged")]
    Magic,
    #[error("object index of {0} bytes is larger than the object or the limit")]
    IndexLength(usize),
    #[error("object index does not validate: {0}")]
    Index(String),
    #[error("object index version {0} is not supported")]
    Version(u32),
}

/// A partition in an object or a manifest: (topic id, partition index).
pub type StreamKey = ([u8; 16], i32);

/// Collects durable batches of many partitions into one object.
#[derive(Default)]
pub struct ObjectBuilder {
    partitions: BTreeMap<StreamKey, Vec<(BatchHeader, Bytes)>>,
    bytes: u64,
    first_wal_seq: Option<u64>,
    last_wal_seq: u64,
}

impl ObjectBuilder {
    /// Adds one batch; batches of a partition must arrive in offset order.
    pub fn add(
        &mut self,
        wal_seq: u64,
        topic_id: [u8; 16],
        partition: i32,
        header: BatchHeader,
        bytes: Bytes,
    ) {
        let list = self.partitions.entry((topic_id, partition)).or_default();
        if let Some((last, _)) = list.last() {
            assert_eq!(
                header.base_offset,
                last.last_offset() + 1,
                "a partition's batches are added densely"
            );
        }
        assert!(
            self.first_wal_seq
                .is_none_or(|_| wal_seq > self.last_wal_seq),
            "WAL order"
        );
        self.first_wal_seq.get_or_insert(wal_seq);
        self.last_wal_seq = wal_seq;
        self.bytes += bytes.len() as u64;
        list.push((header, bytes));
    }

    /// Bytes of batch data so far.
    pub fn data_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// The object's bytes as pieces (batch data is not copied), and its index.
    pub fn finish(self, stamp: Stamp) -> (Vec<Bytes>, ObjectIndex) {
        let mut pieces = Vec::new();
        let mut spans = Vec::with_capacity(self.partitions.len());
        let mut epochs = Vec::with_capacity(self.partitions.len());
        let mut at = 0u64;
        for ((topic_id, partition), batches) in self.partitions {
            let start = at;
            let base_offset = batches[0].0.base_offset;
            let last_offset = batches.last().expect("non-empty").0.last_offset();
            let max_timestamp = batches
                .iter()
                .map(|(h, _)| h.max_timestamp)
                .max()
                .unwrap_or(-1);
            let mut epoch = None;
            for (h, b) in batches {
                if epoch != Some(h.partition_leader_epoch) {
                    epoch = Some(h.partition_leader_epoch);
                    epochs.push(EpochStart {
                        topic_id,
                        partition,
                        epoch: h.partition_leader_epoch,
                        offset: h.base_offset,
                    });
                }
                at += b.len() as u64;
                pieces.push(b);
            }
            spans.push(Span {
                topic_id,
                partition,
                base_offset,
                last_offset,
                byte_start: start,
                byte_len: at - start,
                max_timestamp,
            });
        }
        let index = ObjectIndex {
            format_version: INDEX_FORMAT_VERSION,
            shard: stamp.shard,
            epoch: stamp.epoch,
            first_wal_seq: self.first_wal_seq.unwrap_or(0),
            last_wal_seq: self.last_wal_seq,
            spans,
            node: stamp.node,
            writer: stamp.writer,
            producers: stamp.producers,
            resume: 0,
            epochs,
        };
        pieces.push(index_trailer(&index));
        (pieces, index)
    }
}

/// An object's last piece: its encoded index, the index length and the magic.
pub fn index_trailer(index: &ObjectIndex) -> Bytes {
    let encoded = rkyv::to_bytes::<rkyv::rancor::Error>(index).expect("an index always serialises");
    assert!(
        encoded.len() <= INDEX_BYTES_MAX,
        "an index a reader accepts"
    );
    let mut tail = BytesMut::with_capacity(encoded.len() + TRAILER_LEN);
    tail.extend_from_slice(&encoded);
    tail.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    tail.extend_from_slice(&OBJECT_MAGIC);
    tail.freeze()
}

/// Where an object's index is: its length and format, read from the object's last
/// [`TRAILER_LEN`] bytes and checked against the object's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexAt {
    pub len: usize,
    pub format: u32,
}

pub fn index_len(trailer: &[u8], object_len: usize) -> Result<IndexAt, ObjectFormatError> {
    if trailer.len() != TRAILER_LEN || object_len < TRAILER_LEN {
        return Err(ObjectFormatError::TooShort(object_len));
    }
    let format = if trailer[4..] == OBJECT_MAGIC {
        INDEX_FORMAT_VERSION
    } else if trailer[4..] == OBJECT_MAGIC_V2 {
        2
    } else {
        return Err(ObjectFormatError::Magic);
    };
    let len = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes")) as usize;
    if len > INDEX_BYTES_MAX || len + TRAILER_LEN > object_len {
        return Err(ObjectFormatError::IndexLength(len));
    }
    Ok(IndexAt { len, format })
}

/// Validates and decodes an index (the bytes before the trailer) of the `format` its trailer
/// names; a format-2 index reads as one without epochs.
pub fn decode_index(bytes: &[u8], format: u32) -> Result<ObjectIndex, ObjectFormatError> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let invalid = |e: rkyv::rancor::Error| ObjectFormatError::Index(e.to_string());
    let index = match format {
        INDEX_FORMAT_VERSION => {
            rkyv::from_bytes::<ObjectIndex, rkyv::rancor::Error>(&aligned).map_err(invalid)?
        }
        2 => {
            let v2 = rkyv::from_bytes::<ObjectIndexV2, rkyv::rancor::Error>(&aligned)
                .map_err(invalid)?;
            ObjectIndex {
                format_version: v2.format_version,
                shard: v2.shard,
                epoch: v2.epoch,
                first_wal_seq: v2.first_wal_seq,
                last_wal_seq: v2.last_wal_seq,
                spans: v2.spans,
                node: v2.node,
                writer: v2.writer,
                producers: v2.producers,
                resume: v2.resume,
                epochs: Vec::new(),
            }
        }
        other => return Err(ObjectFormatError::Version(other)),
    };
    if index.format_version != format {
        return Err(ObjectFormatError::Version(index.format_version));
    }
    Ok(index)
}

/// Decodes a whole object's index (tests, `inspect`, recovery of a lost manifest).
pub fn read_index(object: &[u8]) -> Result<ObjectIndex, ObjectFormatError> {
    if object.len() < TRAILER_LEN {
        return Err(ObjectFormatError::TooShort(object.len()));
    }
    let at = index_len(&object[object.len() - TRAILER_LEN..], object.len())?;
    let end = object.len() - TRAILER_LEN;
    decode_index(&object[end - at.len..end], at.format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::Compression;
    use ringtail_netio::batch::{split_and_validate, testing};

    fn batch(base: i64, n: i64, ts: i64) -> (BatchHeader, Bytes) {
        let values = (0..n).map(|i| Some(Bytes::from(format!("value-{base}-{i}"))));
        let buf = testing::encode(values, ts, Compression::Lz4);
        split_and_validate(buf, 1 << 20)
            .unwrap()
            .into_iter()
            .next()
            .unwrap()
            .assign(base, 0)
    }

    fn join(pieces: &[Bytes]) -> Vec<u8> {
        pieces.iter().flat_map(|p| p.iter().copied()).collect()
    }

    #[test]
    fn an_object_groups_partitions_and_its_index_finds_them() {
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let mut builder = ObjectBuilder::default();
        let mut expected: BTreeMap<([u8; 16], i32), Vec<u8>> = BTreeMap::new();
        for (seq, (topic, partition, base, n)) in (10u64..).zip([
            (b, 0, 0, 3),
            (a, 1, 100, 2),
            (b, 0, 3, 5),
            (a, 1, 102, 1),
            (a, 0, 7, 4),
        ]) {
            let (h, bytes) = batch(base, n, 1_000 + base);
            expected
                .entry((topic, partition))
                .or_default()
                .extend_from_slice(&bytes);
            builder.add(seq, topic, partition, h, bytes);
        }
        let data = builder.data_bytes();
        let stamp = Stamp {
            shard: 3,
            epoch: 7,
            node: 2,
            writer: 99,
            producers: vec![ProducerSnapshot {
                topic_id: a,
                partition: 1,
                producer_id: 5,
                epoch: 0,
                recent: vec![(0, 2, 100)],
            }],
        };
        let (pieces, index) = builder.finish(stamp.clone());
        let object = join(&pieces);
        assert_eq!(read_index(&object).unwrap(), index);
        assert_eq!(
            (
                index.shard,
                index.epoch,
                index.first_wal_seq,
                index.last_wal_seq
            ),
            (3, 7, 10, 14)
        );
        assert_eq!((index.node, index.writer), (2, 99));
        assert_eq!(index.producers, stamp.producers);
        assert!(!index.is_fence());
        let fence = ObjectIndex::fence(stamp, 40);
        let fenced = join(&[index_trailer(&fence)]);
        assert_eq!(read_index(&fenced).unwrap(), fence);
        assert!(fence.is_fence() && fence.spans.is_empty());
        assert_eq!(index.spans.iter().map(|s| s.byte_len).sum::<u64>(), data);
        for span in &index.spans {
            let bytes =
                &object[span.byte_start as usize..(span.byte_start + span.byte_len) as usize];
            assert_eq!(
                bytes,
                &expected[&(span.topic_id, span.partition)][..],
                "one ranged read is one partition"
            );
            let first = BatchHeader::parse(bytes).unwrap();
            assert_eq!(first.base_offset, span.base_offset);
        }
        let a1 = index
            .spans
            .iter()
            .find(|s| s.topic_id == a && s.partition == 1)
            .unwrap();
        assert_eq!((a1.base_offset, a1.last_offset), (100, 102));
    }

    /// Each span names the epoch of its first batch and every change after it.
    #[test]
    fn an_index_names_where_each_leader_epoch_starts() {
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let mut builder = ObjectBuilder::default();
        for (seq, (topic, base, epoch)) in (1u64..).zip([
            (a, 0, 4),
            (b, 10, 5),
            (a, 2, 4),
            (a, 4, 6),
            (a, 6, 6),
            (b, 12, 5),
        ]) {
            let (h, bytes) = batch(base, 2, 1);
            let mut bytes = bytes.to_vec();
            bytes[12..16].copy_from_slice(&i32::to_be_bytes(epoch));
            let h = BatchHeader {
                partition_leader_epoch: epoch,
                ..h
            };
            builder.add(seq, topic, 0, h, Bytes::from(bytes));
        }
        let (pieces, index) = builder.finish(Stamp::default());
        let start = |topic, epoch, offset| EpochStart {
            topic_id: topic,
            partition: 0,
            epoch,
            offset,
        };
        assert_eq!(
            index.epochs,
            vec![start(a, 4, 0), start(a, 6, 4), start(b, 5, 10)]
        );
        assert_eq!(read_index(&join(&pieces)).unwrap().epochs, index.epochs);
    }

    /// A log object of the previous format (left unfolded by a broker stopped before an
    /// upgrade) reads as one whose batches name no epochs.
    #[test]
    fn a_format_2_index_reads_without_epochs() {
        let old = ObjectIndexV2 {
            format_version: 2,
            shard: 1,
            epoch: 3,
            first_wal_seq: 1,
            last_wal_seq: 2,
            spans: Vec::new(),
            node: 7,
            writer: 9,
            producers: Vec::new(),
            resume: 0,
        };
        let encoded = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        let mut object = encoded.to_vec();
        object.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        object.extend_from_slice(&OBJECT_MAGIC_V2);
        let index = read_index(&object).unwrap();
        assert_eq!(
            (
                index.format_version,
                index.node,
                index.writer,
                index.epochs.len()
            ),
            (2, 7, 9, 0)
        );
        // The same bytes under the current magic are refused, not misread.
        let n = object.len();
        object[n - 8..].copy_from_slice(&OBJECT_MAGIC);
        assert!(read_index(&object).is_err());
    }

    #[test]
    fn damaged_objects_are_errors_not_panics() {
        let mut builder = ObjectBuilder::default();
        let (h, bytes) = batch(0, 2, 5);
        builder.add(1, [9; 16], 0, h, bytes);
        let object = join(&builder.finish(Stamp::default()).0);
        assert_eq!(
            read_index(&object[..5]),
            Err(ObjectFormatError::TooShort(5))
        );
        let mut bad = object.clone();
        let n = bad.len();
        // (Not a bit flip of the last byte: "RTOBJ002" is the previous format's magic.)
        bad[n - 1] = b'x';
        assert_eq!(read_index(&bad), Err(ObjectFormatError::Magic));
        let mut bad = object.clone();
        bad[n - TRAILER_LEN..n - 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_index(&bad),
            Err(ObjectFormatError::IndexLength(_))
        ));
        // Flip bytes inside the index: validation catches what would be unsafe to read.
        for i in 1..40 {
            let mut bad = object.clone();
            let at = n - TRAILER_LEN - i;
            bad[at] = bad[at].wrapping_add(0x5b);
            let _ = read_index(&bad);
        }
    }
}
