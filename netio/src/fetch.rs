//! Fetch responses as a chain of segments, so that record batches are never copied.
//!
//! Batches go out as the very `Bytes` the log holds. Only the small fields around them (size,
//! header, topic and partition fields, length prefixes) are written, all into one fresh buffer
//! that is then sliced between the batches. The segments are meant for one vectored socket
//! write; laid end to end they are, byte for byte, what `kafka-protocol` encodes for the
//! equivalent [`FetchResponse`](kafka_protocol::messages::FetchResponse): its encoder is the
//! reference, and the tests compare against it for every version.
//!
//! Fields by version, as the broker sends them:
//!
//! | field                                 | versions | note                                |
//! |---------------------------------------|----------|-------------------------------------|
//! | header: correlation id                | 4+       | empty tagged fields from 12         |
//! | throttle_time_ms                      | 4+       |                                     |
//! | error_code, session_id                | 7+       | a session id below 7 is an error    |
//! | topics                                | 4+       | compact array from 12               |
//! | topic name                            | 4..=12   | compact string at 12                |
//! | topic id                              | 13+      |                                     |
//! | partitions                            | 4+       | compact array from 12               |
//! | index, error, high watermark, LSO     | 4+       |                                     |
//! | log_start_offset                      | 5+       |                                     |
//! | aborted_transactions                  | 4+       | always null: i32 -1, compact 0      |
//! | preferred_read_replica                | 11+      | always -1                           |
//! | records                               | 4+       | never null; compact bytes from 12   |
//! | partition, topic, body tagged fields  | 12+      | always none                         |
//!
//! Segments: let `B` be the number of non-empty batches and `R` the number of partitions with a
//! non-empty record set. Each such record set is preceded by exactly one metadata segment, and
//! at most one metadata segment follows the last one, so a frame is `B + R` or `B + R + 1`
//! segments (at most `2B + 1`), none empty: everything up to the first record set is one
//! segment, then batches alternate with coalesced metadata.

use std::ops::RangeInclusive;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::TopicName;
use uuid::Uuid;

/// Fetch versions encoded here.
pub const VERSIONS: RangeInclusive<i16> = 4..=16;
const LOG_START_OFFSET_VERSION_MIN: i16 = 5;
const SESSION_VERSION_MIN: i16 = 7;
const PREFERRED_READ_REPLICA_VERSION_MIN: i16 = 11;
/// Compact lengths, tagged fields and response header v1 from this version on.
const FLEXIBLE_VERSION_MIN: i16 = 12;
/// Topics are named by id alone from this version on.
const TOPIC_ID_VERSION_MIN: i16 = 13;

/// The size prefix is an i32 and counts the bytes after itself.
const FRAME_BYTES_MAX: usize = i32::MAX as usize;
const RECORDS_BYTES_MAX: usize = i32::MAX as usize;
const ARRAY_ITEMS_MAX: usize = i32::MAX as usize;
/// Longest non-compact string (i16 length).
const STRING_BYTES_MAX: usize = i16::MAX as usize;

/// Upper bounds of the metadata bytes, so that the buffer is allocated once. Response: size,
/// correlation id, header tags, throttle, error, session, topic count, body tags.
const RESPONSE_META_BYTES_MAX: usize = 4 + 4 + 1 + 4 + 2 + 4 + 5 + 1;
/// Name length, topic id, partition count, tags; the name itself comes on top.
const TOPIC_META_BYTES_MAX: usize = 5 + 16 + 5 + 1;
/// Index, error, three offsets, aborted transactions, preferred replica, records length, tags.
const PARTITION_META_BYTES_MAX: usize = 4 + 2 + 3 * 8 + 4 + 4 + 5 + 1;

/// One partition of a Fetch response; `batches` are whole record batches, sent as they are.
#[derive(Debug, Clone)]
pub struct FetchPartition {
    pub partition_index: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub batches: Vec<Bytes>,
}

/// One topic; the version decides whether it goes out by `name` (below 13) or `topic_id`.
#[derive(Debug, Clone)]
pub struct FetchTopic {
    pub name: TopicName,
    pub topic_id: Uuid,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Debug, Clone, Default)]
pub struct FetchResponseParts {
    pub throttle_time_ms: i32,
    pub error_code: i16,
    pub session_id: i32,
    pub topics: Vec<FetchTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchEncodeError {
    #[error("Fetch v{0} is not supported (v4 to v16 are)")]
    UnsupportedVersion(i16),
    #[error("session id {0} cannot be sent before Fetch v7")]
    SessionBeforeV7(i32),
    #[error("{what} of {len} exceeds the wire limit of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// Encodes a whole response frame (size prefix, response header, body) as segments for a
/// vectored write. The size prefix always equals the total length of the segments minus 4.
pub fn encode_fetch_response(
    correlation_id: i32,
    version: i16,
    response: &FetchResponseParts,
) -> Result<Vec<Bytes>, FetchEncodeError> {
    if !VERSIONS.contains(&version) {
        return Err(FetchEncodeError::UnsupportedVersion(version));
    }
    if version < SESSION_VERSION_MIN && response.session_id != 0 {
        return Err(FetchEncodeError::SessionBeforeV7(response.session_id));
    }
    let mut w = Writer::new(version, meta_bytes_max(response));
    w.meta.put_i32(0); // The size, set by `finish`.
    w.meta.put_i32(correlation_id);
    w.tags();
    w.meta.put_i32(response.throttle_time_ms);
    if version >= SESSION_VERSION_MIN {
        w.meta.put_i16(response.error_code);
        w.meta.put_i32(response.session_id);
    }
    w.array_len(response.topics.len())?;
    for topic in &response.topics {
        if version < TOPIC_ID_VERSION_MIN {
            w.string(&topic.name)?;
        } else {
            w.meta.put_slice(topic.topic_id.as_bytes());
        }
        w.array_len(topic.partitions.len())?;
        for partition in &topic.partitions {
            w.partition(partition)?;
        }
        w.tags();
    }
    w.tags();
    w.finish()
}

fn meta_bytes_max(response: &FetchResponseParts) -> usize {
    let topics: usize = response
        .topics
        .iter()
        .map(|t| {
            TOPIC_META_BYTES_MAX + t.name.len() + t.partitions.len() * PARTITION_META_BYTES_MAX
        })
        .sum();
    RESPONSE_META_BYTES_MAX + topics
}

/// Metadata bytes, and where in them each batch goes.
struct Writer {
    version: i16,
    meta: BytesMut,
    meta_bytes_max: usize,
    /// `(offset in meta, batch)`: the batch follows the metadata written before that offset.
    batches: Vec<(usize, Bytes)>,
}

impl Writer {
    fn new(version: i16, meta_bytes_max: usize) -> Writer {
        Writer {
            version,
            meta: BytesMut::with_capacity(meta_bytes_max),
            meta_bytes_max,
            batches: Vec::new(),
        }
    }

    fn flexible(&self) -> bool {
        self.version >= FLEXIBLE_VERSION_MIN
    }

    fn partition(&mut self, p: &FetchPartition) -> Result<(), FetchEncodeError> {
        self.meta.put_i32(p.partition_index);
        self.meta.put_i16(p.error_code);
        self.meta.put_i64(p.high_watermark);
        self.meta.put_i64(p.last_stable_offset);
        if self.version >= LOG_START_OFFSET_VERSION_MIN {
            self.meta.put_i64(p.log_start_offset);
        }
        // aborted_transactions: null.
        if self.flexible() {
            self.meta.put_u8(0);
        } else {
            self.meta.put_i32(-1);
        }
        if self.version >= PREFERRED_READ_REPLICA_VERSION_MIN {
            self.meta.put_i32(-1);
        }
        let records_bytes: usize = p.batches.iter().map(Bytes::len).sum();
        check("record set bytes", records_bytes, RECORDS_BYTES_MAX)?;
        if self.flexible() {
            put_uvarint(&mut self.meta, records_bytes as u32 + 1);
        } else {
            self.meta.put_i32(records_bytes as i32);
        }
        let at = self.meta.len();
        let batches = p.batches.iter().filter(|b| !b.is_empty());
        self.batches.extend(batches.map(|b| (at, b.clone())));
        self.tags();
        Ok(())
    }

    fn array_len(&mut self, items: usize) -> Result<(), FetchEncodeError> {
        check("array items", items, ARRAY_ITEMS_MAX)?;
        if self.flexible() {
            put_uvarint(&mut self.meta, items as u32 + 1);
        } else {
            self.meta.put_i32(items as i32);
        }
        Ok(())
    }

    fn string(&mut self, s: &str) -> Result<(), FetchEncodeError> {
        if self.flexible() {
            check("string bytes", s.len(), FRAME_BYTES_MAX)?;
            put_uvarint(&mut self.meta, s.len() as u32 + 1);
        } else {
            check("string bytes", s.len(), STRING_BYTES_MAX)?;
            self.meta.put_i16(s.len() as i16);
        }
        self.meta.put_slice(s.as_bytes());
        Ok(())
    }

    /// An empty tagged-field section, in flexible versions.
    fn tags(&mut self) {
        if self.flexible() {
            self.meta.put_u8(0);
        }
    }

    /// Sets the size prefix and cuts the metadata between the batches.
    fn finish(self) -> Result<Vec<Bytes>, FetchEncodeError> {
        debug_assert!(self.meta.len() <= self.meta_bytes_max);
        let records_bytes: usize = self.batches.iter().map(|(_, b)| b.len()).sum();
        let size_bytes = self.meta.len() - 4 + records_bytes;
        check("frame bytes", size_bytes, FRAME_BYTES_MAX)?;
        let mut meta = self.meta;
        meta[..4].copy_from_slice(&(size_bytes as i32).to_be_bytes());
        let meta = meta.freeze();
        let mut segments = Vec::with_capacity(2 * self.batches.len() + 1);
        let mut cursor = 0;
        for (at, batch) in self.batches {
            if at > cursor {
                segments.push(meta.slice(cursor..at));
                cursor = at;
            }
            segments.push(batch);
        }
        if cursor < meta.len() {
            segments.push(meta.slice(cursor..));
        }
        debug_assert_eq!(
            segments.iter().map(Bytes::len).sum::<usize>(),
            4 + size_bytes
        );
        Ok(segments)
    }
}

fn check(what: &'static str, len: usize, max: usize) -> Result<(), FetchEncodeError> {
    if len > max {
        return Err(FetchEncodeError::TooLarge { what, len, max });
    }
    Ok(())
}

fn put_uvarint(buf: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8(value as u8 | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::encode_response;
    use bytes::Buf;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};

    const CORRELATION_ID: i32 = 0x0102_0304;

    /// A batch-sized run of bytes that differs from every other (the content is opaque here).
    fn batch(seed: u8, len: usize) -> Bytes {
        (0..len)
            .map(|i| seed.wrapping_add(i as u8))
            .collect::<Vec<u8>>()
            .into()
    }

    fn partition(partition_index: i32, batches: Vec<Bytes>) -> FetchPartition {
        FetchPartition {
            partition_index,
            error_code: if partition_index % 2 == 1 { 6 } else { 0 },
            high_watermark: 1_000_000 + partition_index as i64,
            last_stable_offset: 999_000 + partition_index as i64,
            log_start_offset: 17 * partition_index as i64,
            batches,
        }
    }

    fn topic(name: &'static str, id: u128, partitions: Vec<FetchPartition>) -> FetchTopic {
        FetchTopic {
            name: TopicName(StrBytes::from_static_str(name)),
            topic_id: Uuid::from_u128(id),
            partitions,
        }
    }

    /// Partitions with 0, 1 and 3 batches, empty batches among them, a topic without
    /// partitions, a record set long enough for a 3-byte varint, and a batch at the very end.
    fn sample(version: i16) -> FetchResponseParts {
        FetchResponseParts {
            throttle_time_ms: 25,
            error_code: 3,
            session_id: if version >= SESSION_VERSION_MIN {
                0x1234
            } else {
                0
            },
            topics: vec![
                topic(
                    "orders",
                    0x0123_4567_89ab_cdef_0011_2233_4455_6677,
                    vec![
                        partition(0, vec![]),
                        partition(1, vec![batch(1, 61)]),
                        partition(2, vec![batch(2, 100), batch(3, 20_000), batch(4, 7)]),
                    ],
                ),
                topic("a", 0xfeed, vec![]),
                topic(
                    "telemetry.events-2",
                    u128::MAX - 1,
                    vec![
                        partition(5, vec![Bytes::new(), batch(5, 300), Bytes::new()]),
                        partition(0, vec![Bytes::new()]),
                        partition(9, vec![batch(9, 129)]),
                    ],
                ),
            ],
        }
    }

    /// Many partitions in one topic, each with a record set that needs a 3-byte varint: the
    /// per-partition metadata bound is tested here, where topics add no slack.
    fn wide() -> FetchResponseParts {
        let shared = batch(7, 20_000);
        let partitions = (0..300).map(|i| partition(i, vec![shared.clone()]));
        FetchResponseParts {
            topics: vec![topic("wide", 0xabc, partitions.collect())],
            ..FetchResponseParts::default()
        }
    }

    /// The same response as kafka-protocol models it; name and id are both set, as the engine
    /// does, and the encoder leaves out the one the version lacks.
    fn reference(parts: &FetchResponseParts) -> FetchResponse {
        let topics = parts.topics.iter().map(|t| {
            let partitions = t.partitions.iter().map(|p| {
                PartitionData::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(p.error_code)
                    .with_high_watermark(p.high_watermark)
                    .with_last_stable_offset(p.last_stable_offset)
                    .with_log_start_offset(p.log_start_offset)
                    .with_aborted_transactions(None)
                    .with_records(Some(p.batches.concat().into()))
            });
            FetchableTopicResponse::default()
                .with_topic(t.name.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(partitions.collect())
        });
        FetchResponse::default()
            .with_throttle_time_ms(parts.throttle_time_ms)
            .with_error_code(parts.error_code)
            .with_session_id(parts.session_id)
            .with_responses(topics.collect())
    }

    fn concat(segments: &[Bytes]) -> Vec<u8> {
        segments.concat()
    }

    #[test]
    fn segments_match_kafka_protocol_for_every_version() {
        for version in VERSIONS {
            for parts in [sample(version), wide(), FetchResponseParts::default()] {
                let segments = encode_fetch_response(CORRELATION_ID, version, &parts).unwrap();
                let expected =
                    encode_response(CORRELATION_ID, version, &reference(&parts)).unwrap();
                assert_eq!(concat(&segments), &expected[..], "Fetch v{version}");
            }
        }
    }

    #[test]
    fn record_batches_are_sent_without_copy() {
        for version in VERSIONS {
            let parts = sample(version);
            let segments = encode_fetch_response(CORRELATION_ID, version, &parts).unwrap();
            let partitions = parts.topics.iter().flat_map(|t| &t.partitions);
            let inputs: Vec<(*const u8, usize)> = partitions
                .clone()
                .flat_map(|p| &p.batches)
                .filter(|b| !b.is_empty())
                .map(|b| (b.as_ptr(), b.len()))
                .collect();
            let is_batch = |s: &Bytes| inputs.iter().any(|&(ptr, _)| ptr == s.as_ptr());
            // Every batch appears, in order, as the very same bytes.
            let outputs: Vec<(*const u8, usize)> = segments
                .iter()
                .filter(|s| is_batch(s))
                .map(|s| (s.as_ptr(), s.len()))
                .collect();
            assert_eq!(outputs, inputs, "Fetch v{version}");
            assert!(segments.iter().all(|s| !s.is_empty()));
            // Metadata is coalesced: it starts the frame and never comes twice in a row.
            assert!(!is_batch(&segments[0]));
            assert!(segments
                .windows(2)
                .all(|w| is_batch(&w[0]) || is_batch(&w[1])));
            let record_sets = partitions
                .filter(|p| p.batches.iter().any(|b| !b.is_empty()))
                .count();
            let bound_min = inputs.len() + record_sets;
            assert!((bound_min..=bound_min + 1).contains(&segments.len()));
            assert!(segments.len() <= 2 * inputs.len() + 1);
        }
        let empty = encode_fetch_response(CORRELATION_ID, 16, &FetchResponseParts::default());
        assert_eq!(empty.unwrap().len(), 1);
    }

    #[test]
    fn size_prefix_counts_the_rest_of_the_frame() {
        for version in VERSIONS {
            for parts in [sample(version), FetchResponseParts::default()] {
                let frame =
                    concat(&encode_fetch_response(CORRELATION_ID, version, &parts).unwrap());
                let size = i32::from_be_bytes(frame[..4].try_into().unwrap());
                assert_eq!(size as usize, frame.len() - 4, "Fetch v{version}");
            }
        }
    }

    #[test]
    fn unsupported_versions_are_errors() {
        for version in [i16::MIN, -1, 0, 3, 17, 18, i16::MAX] {
            assert_eq!(
                encode_fetch_response(CORRELATION_ID, version, &sample(16)),
                Err(FetchEncodeError::UnsupportedVersion(version))
            );
        }
    }

    #[test]
    fn fields_the_wire_cannot_hold_are_errors() {
        let mut parts = sample(16);
        assert_eq!(
            encode_fetch_response(CORRELATION_ID, 6, &parts),
            Err(FetchEncodeError::SessionBeforeV7(0x1234))
        );
        // Gigabyte record sets out of one shared megabyte: nothing is allocated, so nothing
        // may be copied either.
        let mib = batch(0, 1 << 20);
        let gib = vec![mib; 1 << 10];
        parts.topics[0].partitions[1].batches = [gib.clone(), gib.clone()].concat();
        assert_eq!(
            encode_fetch_response(CORRELATION_ID, 16, &parts),
            Err(FetchEncodeError::TooLarge {
                what: "record set bytes",
                len: 1 << 31,
                max: RECORDS_BYTES_MAX
            })
        );
        parts.topics[0].partitions[1].batches = gib.clone();
        parts.topics[0].partitions[2].batches = gib;
        let too_large = encode_fetch_response(CORRELATION_ID, 16, &parts);
        assert!(
            matches!(too_large, Err(FetchEncodeError::TooLarge { what: "frame bytes", len, .. }) if len > FRAME_BYTES_MAX),
            "{too_large:?}"
        );
        // A name beyond an i16 length fits only a compact string, and is not sent from v13.
        let mut parts = sample(11);
        let long_name = "n".repeat(STRING_BYTES_MAX + 1);
        parts.topics[1].name = TopicName(StrBytes::from_string(long_name));
        assert!(matches!(
            encode_fetch_response(CORRELATION_ID, 11, &parts),
            Err(FetchEncodeError::TooLarge {
                what: "string bytes",
                ..
            })
        ));
        for version in [12, 13] {
            let segments = encode_fetch_response(CORRELATION_ID, version, &parts).unwrap();
            let expected = encode_response(CORRELATION_ID, version, &reference(&parts)).unwrap();
            assert_eq!(concat(&segments), &expected[..], "Fetch v{version}");
        }
    }

    #[test]
    fn encoded_frames_decode_with_kafka_protocol() {
        for version in [11, 12, 16] {
            let parts = sample(version);
            let segments = encode_fetch_response(CORRELATION_ID, version, &parts).unwrap();
            let mut frame = Bytes::from(concat(&segments));
            frame.advance(4);
            let header_version = FetchResponse::header_version(version);
            let header = ResponseHeader::decode(&mut frame, header_version).unwrap();
            assert_eq!(header.correlation_id, CORRELATION_ID);
            let decoded = FetchResponse::decode(&mut frame, version).unwrap();
            assert!(
                !frame.has_remaining(),
                "Fetch v{version} decodes to the end"
            );
            // The version carries the name or the id, not both.
            let mut expected = reference(&parts);
            for topic in &mut expected.responses {
                if version < TOPIC_ID_VERSION_MIN {
                    topic.topic_id = Uuid::nil();
                } else {
                    topic.topic = TopicName::default();
                }
            }
            assert_eq!(decoded, expected, "Fetch v{version}");
        }
    }
}
