//! Record batches made from records: the broker's own, and producers' for tests.

use bytes::{Bytes, BytesMut};

/// One uncompressed magic-2 batch of (key, value) records, offsets from 0, all stamped
/// `timestamp_ms`: how the broker writes its own records (committed offsets).
pub fn encode_records(
    records: impl IntoIterator<Item = (Option<Bytes>, Option<Bytes>)>,
    timestamp_ms: i64,
) -> BytesMut {
    let records = records
        .into_iter()
        .map(|(key, value)| (key, value, timestamp_ms));
    encode_batch(records, kafka_protocol::records::Compression::None)
}

/// One magic-2 batch of (key, value, timestamp) records, offsets from 0, no producer id.
fn encode_batch(
    records: impl IntoIterator<Item = (Option<Bytes>, Option<Bytes>, i64)>,
    compression: kafka_protocol::records::Compression,
) -> BytesMut {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value, timestamp))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch whenever offset - sequence changes.
            sequence: i as i32,
            timestamp,
            key,
            value,
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
    .expect("a batch of plain records encodes");
    buf
}

/// Test support for this and other crates: record batches as a producer would send them.
pub mod testing {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::Compression;

    /// One magic-2 batch holding `values` (no keys), offsets from 0, record i stamped
    /// `first_timestamp_ms + i`.
    pub fn encode(
        values: impl IntoIterator<Item = Option<Bytes>>,
        first_timestamp_ms: i64,
        compression: Compression,
    ) -> BytesMut {
        let records = values
            .into_iter()
            .enumerate()
            .map(|(i, value)| (None, value, first_timestamp_ms + i as i64));
        super::encode_batch(records, compression)
    }
}
