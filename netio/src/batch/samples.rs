//! Batches as a producer sends them, for the unit tests of this folder.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

pub(super) fn record(i: i64, value: Option<&[u8]>) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: i,
        sequence: i as i32,
        timestamp: 1_700_000_000_000 + i,
        key: Some(Bytes::from(format!("key-{i}"))),
        value: value.map(Bytes::copy_from_slice),
        headers: Default::default(),
    }
}

pub(super) fn encode(records: &[Record], compression: Compression) -> BytesMut {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode");
    buf
}

pub(super) fn sample(compression: Compression) -> BytesMut {
    let records: Vec<Record> = (0..10)
        .map(|i| record(i, if i == 3 { None } else { Some(b"hello world") }))
        .collect();
    encode(&records, compression)
}
