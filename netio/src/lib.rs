//! Kafka wire protocol for Ringtail.
//!
//! * [`frame`]: size-prefixed framing with a hard bound on request size.
//! * [`request`]: header and body decoding on the `kafka-protocol` crate; Produce record sets
//!   come out as un-copied, mutable parts of the receive buffer; response encoding.
//! * [`header`]: the fixed record batch header (magic 2), read without copying.
//! * [`batch`]: record batch validation and in-place offset assignment.
//! * [`records`]: the records inside a batch, walked as a bounded stream (compressed or not).
//! * [`codec`]: compressing records into a topic's `compression.type` at its level.
//! * [`fetch`]: Fetch responses as segments for a vectored write, record batches uncopied.
//!
//! Architecture invariant: this crate knows the Kafka protocol and nothing of the broker: no
//! partitions, no storage, no runtime. Everything here is plain functions over bytes.

pub mod batch;
pub mod codec;
pub mod fetch;
pub mod frame;
pub mod header;
pub mod records;
pub mod request;

pub use kafka_protocol;
