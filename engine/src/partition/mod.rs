//! Partitions: the vocabulary of keys, work items and outcomes (`items`); a slot's partition
//! state (`store`: open, reads, hand-over), its write path (`produce`) and its streams to
//! followers (`replicated`); the pure planners of
//! reads (`reads`), rebuilding from the WAL (`recovery`), retention and the upload loop
//! (`retention`); the in-memory index of a partition's batches (`log`), idempotent producer
//! state (`producers`), leader epochs (`epochs`) and incremental fetch sessions
//! (`fetch_sessions`).

pub mod copy_starts;
pub mod epochs;
pub mod fetch_sessions;
pub mod items;
pub mod log;
pub mod produce;
pub mod producers;
pub mod reads;
pub mod recovery;
pub mod replicated;
pub mod retention;
pub mod state;
pub mod store;
