//! Request decoding and response encoding on the `kafka-protocol` crate.
//!
//! Produce is decoded apart from the rest: its record sets come out as disjoint `BytesMut`
//! parts of the receive buffer (no copy), so that the partition owner can patch offsets in place.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, RequestHeader, RequestKind, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown api key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey { api_key: i16, correlation_id: i32 },
    #[error("malformed {api_key:?} v{api_version} request: {reason}")]
    Malformed {
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
        reason: String,
    },
}

/// The parts of a request header the broker keeps, owned (no reference into the frame).
#[derive(Debug, Clone)]
pub struct Header {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
}

/// A decoded request.
#[derive(Debug)]
pub enum Body {
    Produce(ProduceInput),
    Other(Box<RequestKind>),
}

/// A Produce request whose record sets are still raw, mutable, un-copied bytes.
#[derive(Debug)]
pub struct ProduceInput {
    pub transactional_id: Option<String>,
    pub acks: i16,
    pub timeout_ms: i32,
    pub topics: Vec<ProduceTopic>,
    /// Bytes copied in user space to carve out the record sets: zero unless the frame was
    /// shared or a record set is small beside its frame (see [`CARVE_PIN_RATIO_MAX`]).
    pub copied_bytes: usize,
}

#[derive(Debug)]
pub struct ProduceTopic {
    pub name: String,
    pub topic_id: Uuid,
    pub partitions: Vec<ProducePartition>,
}

#[derive(Debug)]
pub struct ProducePartition {
    pub index: i32,
    pub records: Option<BytesMut>,
}

/// Reads api key, version and correlation id, which sit at fixed places in every header.
pub fn peek_header(frame: &[u8]) -> Option<(i16, i16, i32)> {
    if frame.len() < 8 {
        return None;
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    Some((key, version, correlation_id))
}

/// Decodes the request header. The caller checks the version against what it advertises
/// before calling [`decode_body`].
pub fn decode_header(frame: &Bytes) -> Result<(Header, usize), DecodeError> {
    let (key, version, correlation_id) = peek_header(frame).ok_or(DecodeError::UnknownApiKey {
        api_key: -1,
        correlation_id: -1,
    })?;
    let api_key = ApiKey::try_from(key).map_err(|_| DecodeError::UnknownApiKey {
        api_key: key,
        correlation_id,
    })?;
    let malformed = |reason: String| DecodeError::Malformed {
        api_key,
        api_version: version,
        correlation_id,
        reason,
    };
    // Header versions are defined for supported versions only; clamp so that an unsupported
    // version still yields a header (and a clean UNSUPPORTED_VERSION answer).
    let range = api_key.valid_versions();
    let header_version = api_key.request_header_version(version.clamp(range.min, range.max));
    let mut buf = frame.clone();
    let header =
        RequestHeader::decode(&mut buf, header_version).map_err(|e| malformed(e.to_string()))?;
    let header_len = frame.len() - buf.len();
    let client_id = header.client_id.as_ref().map(|s| s.to_string());
    Ok((
        Header {
            api_key,
            api_version: version,
            correlation_id,
            client_id,
        },
        header_len,
    ))
}

/// Decodes the body that follows a header of `header_len` bytes.
pub fn decode_body(header: &Header, frame: Bytes, header_len: usize) -> Result<Body, DecodeError> {
    let malformed = |reason: String| DecodeError::Malformed {
        api_key: header.api_key,
        api_version: header.api_version,
        correlation_id: header.correlation_id,
        reason,
    };
    if header.api_key == ApiKey::Produce {
        return decode_produce(frame, header_len, header.api_version)
            .map(Body::Produce)
            .map_err(malformed);
    }
    let mut body = frame.slice(header_len..);
    RequestKind::decode(header.api_key, &mut body, header.api_version)
        .map(|r| Body::Other(Box::new(r)))
        .map_err(|e| malformed(e.to_string()))
}

fn decode_produce(frame: Bytes, header_len: usize, version: i16) -> Result<ProduceInput, String> {
    let base = frame.as_ptr() as usize;
    let mut body = frame.slice(header_len..);
    let request = ProduceRequest::decode(&mut body, version).map_err(|e| e.to_string())?;
    drop(body);
    // Own every name, and note where each record set lies in the frame.
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut topics = Vec::with_capacity(request.topic_data.len());
    let mut shape: Vec<Vec<(i32, Option<usize>)>> = Vec::with_capacity(request.topic_data.len());
    for topic in &request.topic_data {
        let mut parts = Vec::with_capacity(topic.partition_data.len());
        for p in &topic.partition_data {
            let slot = p.records.as_ref().map(|r| {
                ranges.push((r.as_ptr() as usize - base, r.len()));
                ranges.len() - 1
            });
            parts.push((p.index, slot));
        }
        shape.push(parts);
        topics.push(ProduceTopic {
            name: topic.name.to_string(),
            topic_id: topic.topic_id,
            partitions: Vec::new(),
        });
    }
    let transactional_id = request.transactional_id.as_ref().map(|s| s.to_string());
    let (acks, timeout_ms) = (request.acks, request.timeout_ms);
    drop(request);

    let (mut pieces, copied_bytes) = carve(frame, &ranges);
    for (topic, parts) in topics.iter_mut().zip(shape) {
        topic.partitions = parts
            .into_iter()
            .map(|(index, slot)| ProducePartition {
                index,
                records: slot.map(|i| std::mem::take(&mut pieces[i])),
            })
            .collect();
    }
    Ok(ProduceInput {
        transactional_id,
        acks,
        timeout_ms,
        topics,
        copied_bytes,
    })
}

/// A record set carved in place keeps its whole request frame alive (up to
/// socket.request.max.bytes) for as long as the broker holds it, while memory accounting
/// (hot-tail cache, retention) counts the record set only. So a record set smaller than
/// 1/`CARVE_PIN_RATIO_MAX` of its frame is copied out instead: a carved record set pins at most
/// this many times its own size (a 100-byte batch beside a 100 MiB one that is refused must not
/// hold 100 MiB).
/// At 16 a request of up to 16 equal record sets is carved whole; copying the record sets of
/// an 8-partition 1 MiB frame cost 0.43–0.60 ms against 0.12 ms carved (release build, with
/// fresh allocations).
pub const CARVE_PIN_RATIO_MAX: usize = 16;
/// Frames up to this size are carved whole whatever their record sets' sizes: pinning one
/// costs little.
pub const CARVE_PIN_FREE_BYTES: usize = 64 * 1024;

/// Whether a record set of `len` bytes is carved in place from a frame of `frame_len` bytes
/// (else copied out).
fn carve_in_place(len: usize, frame_len: usize) -> bool {
    frame_len <= CARVE_PIN_FREE_BYTES || len.saturating_mul(CARVE_PIN_RATIO_MAX) >= frame_len
}

/// Splits `frame` into the given ascending, disjoint ranges. Zero-copy when the frame is no
/// longer shared (the normal case) for record sets large beside the frame; otherwise copies,
/// and reports how many bytes it copied.
fn carve(frame: Bytes, ranges: &[(usize, usize)]) -> (Vec<BytesMut>, usize) {
    let ascending = ranges.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0);
    let frame_len = frame.len();
    match frame.try_into_mut() {
        Ok(mut whole) if ascending => {
            let mut cursor = 0;
            let mut copied = 0;
            let pieces = ranges
                .iter()
                .map(|&(start, len)| {
                    whole.advance(start - cursor);
                    cursor = start + len;
                    if carve_in_place(len, frame_len) {
                        whole.split_to(len)
                    } else {
                        copied += len;
                        let piece = BytesMut::from(&whole[..len]);
                        whole.advance(len);
                        piece
                    }
                })
                .collect();
            (pieces, copied)
        }
        Ok(whole) => copy_ranges(&whole, ranges),
        Err(shared) => copy_ranges(&shared, ranges),
    }
}

fn copy_ranges(frame: &[u8], ranges: &[(usize, usize)]) -> (Vec<BytesMut>, usize) {
    let pieces: Vec<BytesMut> = ranges
        .iter()
        .map(|&(start, len)| BytesMut::from(&frame[start..start + len]))
        .collect();
    (pieces, ranges.iter().map(|r| r.1).sum())
}

/// Encodes a response frame: size, response header (of the version the API demands), body.
pub fn encode_response<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    version: i16,
    body: &R,
) -> Result<Bytes, String> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = R::header_version(version);
    let size = header
        .compute_size(header_version)
        .map_err(|e| e.to_string())?
        + body.compute_size(version).map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size as i32);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, version).map_err(|e| e.to_string())?;
    debug_assert_eq!(buf.len(), 4 + size);
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{MetadataRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn frame_of<R: Encodable>(key: ApiKey, version: i16, body: &R) -> BytesMut {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(77)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf
    }

    #[test]
    fn produce_record_sets_are_carved_without_copy() {
        for version in [3i16, 9, 11] {
            let request = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(Bytes::from_static(b"first"))),
                        PartitionProduceData::default()
                            .with_index(1)
                            .with_records(None),
                        PartitionProduceData::default()
                            .with_index(2)
                            .with_records(Some(Bytes::from_static(b"second!"))),
                    ])]);
            let frame = frame_of(ApiKey::Produce, version, &request).freeze();
            let (lo, hi) = (
                frame.as_ptr() as usize,
                frame.as_ptr() as usize + frame.len(),
            );
            let (header, header_len) = decode_header(&frame).unwrap();
            assert_eq!(header.correlation_id, 77);
            assert_eq!(header.client_id.as_deref(), Some("test"));
            let Body::Produce(p) = decode_body(&header, frame, header_len).unwrap() else {
                panic!()
            };
            assert_eq!(p.copied_bytes, 0);
            assert_eq!(p.acks, -1);
            let parts = &p.topics[0].partitions;
            assert_eq!(&parts[0].records.as_ref().unwrap()[..], b"first");
            assert!(parts[1].records.is_none());
            assert_eq!(&parts[2].records.as_ref().unwrap()[..], b"second!");
            let ptr = parts[2].records.as_ref().unwrap().as_ptr() as usize;
            assert!(
                ptr > lo && ptr < hi,
                "record set points into the receive buffer"
            );
        }
    }

    #[test]
    fn a_small_record_set_does_not_pin_a_large_frame() {
        let big = Bytes::from(vec![1u8; 1 << 20]);
        let small = Bytes::from(vec![2u8; 100]);
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(big.clone())),
                    PartitionProduceData::default()
                        .with_index(1)
                        .with_records(Some(small.clone())),
                ])]);
        let frame = frame_of(ApiKey::Produce, 9, &request).freeze();
        let (lo, n) = (frame.as_ptr() as usize, frame.len());
        let (header, header_len) = decode_header(&frame).unwrap();
        let Body::Produce(p) = decode_body(&header, frame.clone(), header_len).unwrap() else {
            panic!()
        };
        // Shared (the clone above): everything is copied.
        assert_eq!(p.copied_bytes, big.len() + small.len());
        drop(p);
        let Body::Produce(p) = decode_body(&header, frame, header_len).unwrap() else {
            panic!()
        };
        let parts = &p.topics[0].partitions;
        let (b, s) = (
            parts[0].records.as_ref().unwrap(),
            parts[1].records.as_ref().unwrap(),
        );
        assert_eq!((&b[..], &s[..]), (&big[..], &small[..]));
        let within = |p: &BytesMut| (lo..lo + n).contains(&(p.as_ptr() as usize));
        assert!(within(b), "the large record set is carved in place");
        assert!(!within(s), "the small one is copied out: it pins no frame");
        assert_eq!(p.copied_bytes, small.len());
        assert!(carve_in_place(10, CARVE_PIN_FREE_BYTES));
        assert!(carve_in_place(1 << 20, 16 << 20));
        assert!(!carve_in_place((1 << 20) - 1, 16 << 20));
    }

    #[test]
    fn unknown_keys_and_garbage_are_errors_not_panics() {
        let mut frame = BytesMut::new();
        frame.put_i16(9999);
        frame.put_i16(0);
        frame.put_i32(5);
        assert!(matches!(
            decode_header(&frame.freeze()),
            Err(DecodeError::UnknownApiKey {
                api_key: 9999,
                correlation_id: 5
            })
        ));
        // A Metadata v1 request that claims an absurd topic count must fail cleanly.
        let mut frame = frame_of(
            ApiKey::Metadata,
            1,
            &MetadataRequest::default().with_topics(Some(vec![])),
        );
        let n = frame.len();
        frame[n - 4..].copy_from_slice(&i32::MAX.to_be_bytes());
        let frame = frame.freeze();
        let (header, len) = decode_header(&frame).unwrap();
        assert!(matches!(
            decode_body(&header, frame, len),
            Err(DecodeError::Malformed { .. })
        ));
        // Random garbage after a valid header prefix.
        for seed in 0u32..200 {
            let mut garbage = BytesMut::new();
            garbage.put_i16((seed % 70) as i16);
            garbage.put_i16((seed % 13) as i16);
            garbage.put_i32(1);
            let mut x = seed.wrapping_mul(2654435761);
            for _ in 0..(seed % 64) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                garbage.put_u8(x as u8);
            }
            let frame = garbage.freeze();
            if let Ok((header, len)) = decode_header(&frame) {
                let _ = decode_body(&header, frame, len);
            }
        }
    }
}
