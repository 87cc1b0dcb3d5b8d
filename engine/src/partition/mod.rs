//! Partitions: the vocabulary of keys, work items and outcomes (`items`), a slot's partition state and the produce, fetch, list and delete paths
//! (`store`), the in-memory index of a partition's batches (`log`), and idempotent producer
//! state (`producers`).

pub mod fetch_sessions;
pub mod items;
pub mod log;
pub mod producers;
pub mod reads;
pub mod recovery;
pub mod retention;
pub mod state;
pub mod store;
