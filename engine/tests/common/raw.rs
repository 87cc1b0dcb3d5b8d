//! A raw Kafka protocol connection for tests that need exact requests (hostile input, many
//! parked long-polls): frames by hand, bodies through kafka-protocol.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

pub struct Raw {
    pub s: TcpStream,
    pub correlation: i32,
}

impl Raw {
    pub fn connect(addr: std::net::SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Raw { s, correlation: 0 }
    }

    pub fn send_frame(&mut self, payload: &[u8]) {
        let mut f = (payload.len() as i32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        self.s.write_all(&f).unwrap();
    }

    /// The next response frame, or None if the broker closed the connection.
    pub fn read_frame(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        if self.s.read_exact(&mut size).is_err() {
            return None;
        }
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.s.read_exact(&mut body).ok()?;
        Some(Bytes::from(body))
    }

    pub fn assert_closed(&mut self) {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) | Err(_) => {}
            Ok(_) => panic!("connection should be closed"),
        }
    }

    pub fn encode<R: Encodable + HeaderVersion>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &R,
    ) -> BytesMut {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("raw-test")));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, R::header_version(version)).unwrap();
        req.encode(&mut buf, version).unwrap();
        buf
    }

    pub fn call<Q: Encodable + HeaderVersion, P: Decodable + HeaderVersion>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Q,
    ) -> P {
        let buf = self.encode(key, version, req);
        self.send_frame(&buf);
        self.answer(version)
    }

    /// Reads and decodes the answer to the request sent last.
    pub fn answer<P: Decodable + HeaderVersion>(&mut self, version: i16) -> P {
        let mut resp = self.read_frame().expect("response");
        let header = ResponseHeader::decode(&mut resp, P::header_version(version)).unwrap();
        assert_eq!(header.correlation_id, self.correlation);
        P::decode(&mut resp, version).unwrap()
    }

    /// Produces `records` to one partition (Produce v9) and reads the answer:
    /// (error code, base offset).
    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        records: Bytes,
        acks: i16,
    ) -> (i16, i64) {
        let req = produce_request(topic, partition, records, acks);
        let r: kafka_protocol::messages::ProduceResponse = self.call(ApiKey::Produce, 9, &req);
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    }

    /// InitProducerId for a new idempotent producer (no transactional id): (id, epoch).
    pub fn init_producer_id(&mut self) -> (i64, i16) {
        self.init_producer_id_from(-1, -1)
    }

    /// InitProducerId for an idempotent producer: a fresh id for (-1, -1), else the epoch bump
    /// of `id`/`epoch` (KIP-360). Returns (id, epoch).
    pub fn init_producer_id_from(&mut self, id: i64, epoch: i16) -> (i64, i16) {
        use kafka_protocol::messages::*;
        let init: InitProducerIdResponse = self.call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch),
        );
        assert_eq!(init.error_code, 0);
        (init.producer_id.0, init.producer_epoch)
    }

    /// Fetches partition 0 of `topic` from `offset` (Fetch v11, no long-poll): its high
    /// watermark and the records of the answer.
    pub fn fetch_records(
        &mut self,
        topic: &str,
        offset: i64,
    ) -> (i64, Vec<kafka_protocol::records::Record>) {
        use kafka_protocol::records::RecordBatchDecoder;
        let r: kafka_protocol::messages::FetchResponse =
            self.call(ApiKey::Fetch, 11, &fetch_request(topic, offset));
        let p = &r.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch {topic} from {offset}");
        let mut bytes = p.records.clone().unwrap_or_default();
        let sets = RecordBatchDecoder::decode_all(&mut bytes).expect("record batches");
        let records = sets.into_iter().flat_map(|s| s.records).collect();
        (p.high_watermark, records)
    }
}

/// One idempotent record batch of `values` from `producer_id`/`epoch`, its first record at
/// `sequence`, timestamped now.
pub fn idempotent_records(producer_id: i64, epoch: i16, sequence: i32, values: &[&[u8]]) -> Bytes {
    let none = kafka_protocol::records::Compression::None;
    idempotent_batch(producer_id, epoch, sequence, values, none)
}

/// [`idempotent_records`] in `compression`.
pub fn idempotent_batch(
    producer_id: i64,
    epoch: i16,
    sequence: i32,
    values: &[&[u8]],
    compression: kafka_protocol::records::Compression,
) -> Bytes {
    use kafka_protocol::records::*;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: sequence + i as i32,
            timestamp: now,
            key: None,
            value: Some(Bytes::copy_from_slice(v)),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

/// One record batch of `values`, timestamped now (an old timestamp would fall to the 7-day
/// retention.ms default).
pub fn records(values: &[&[u8]]) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let values = values.iter().map(|v| Some(Bytes::copy_from_slice(v)));
    ringtail_netio::batch::testing::encode(values, now, kafka_protocol::records::Compression::None)
        .freeze()
}

/// A Fetch (v4+) of partition 0 of `topic` from `offset`, answered at once (no long-poll).
pub fn fetch_request(topic: &str, offset: i64) -> kafka_protocol::messages::FetchRequest {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, TopicName};
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

/// A Produce request of `records` to one partition.
pub fn produce_request(
    topic: &str,
    partition: i32,
    records: Bytes,
    acks: i16,
) -> kafka_protocol::messages::ProduceRequest {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}
