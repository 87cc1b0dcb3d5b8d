//! Kafka record batches (magic 2), validated and offset-patched in place.
//!
//! A record batch is kept exactly as the producer sent it. The broker only rewrites the two
//! fields that lie outside the CRC: `baseOffset` and `partitionLeaderEpoch`. Records are not
//! re-encoded on the produce path (compressed batches stay compressed); they are only walked
//! as a stream to validate them (`records.rs`). The one exception is a topic whose
//! `compression.type` names a codec other than the batch's: its records are recompressed into
//! that codec as Kafka does, every other header field kept and the CRC recomputed.
//!
//! The header's layout and reader are in `header.rs`. Here, from the bottom up:
//! * `valid`: a validated batch ([`ValidBatch`]: offset assignment, LogAppendTime) and why a
//!   batch is refused ([`BatchError`]).
//! * `budget`: what one produce request may decompress ([`DecompressBudget`]) and the record
//!   walk that draws on it.
//! * `recompress`: a batch's records put into its topic's codec ([`recompress`]).
//! * `validate`: a record set split into batches, each checked ([`split_and_validate`]).
//! * `encode`: batches made from records: the broker's own ([`encode_records`]) and test
//!   support for other crates ([`testing`]).

mod budget;
mod encode;
mod recompress;
#[cfg(test)]
mod samples;
mod valid;
mod validate;

pub use budget::{
    DecompressBudget, REQUEST_DECOMPRESSED_BYTES_BASE, REQUEST_DECOMPRESSED_BYTES_MAX,
    REQUEST_DECOMPRESSION_RATIO,
};
pub use encode::{encode_records, testing};
pub use recompress::recompress;
pub use valid::{BatchError, ValidBatch};
pub use validate::{split_and_validate, split_and_validate_next, split_and_validate_within};
