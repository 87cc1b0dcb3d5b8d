//! Ringtail's write-ahead log ring.
//!
//! * [`format`]: the on-disk format (superblocks, chunks, entries), pure code.
//! * [`scan`]: recovery — finds the live entries of a ring from its bytes, pure code.
//! * [`ring`]: the file: creation, recovery through a read-only map, the group-committing writer.
//!
//! Architecture invariant: `wal` knows nothing of Kafka. An entry is an opaque payload with a
//! stream id/index, an offset range and an epoch that the caller assigns.

pub mod format;
pub mod ring;
pub mod scan;

pub use ring::{
    create_or_check, recover, Recovery, SyncMode, Wal, WalConfig, WalError, WalMetrics, WalStats,
};
