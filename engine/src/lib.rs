//! The Ringtail broker: partitions and their logs, produce/fetch paths, the topic catalog,
//! Kafka API handlers, and the `ringtail` binary (`src/main.rs`).
//!
//! Architecture invariant: a partition's log is only touched on its owner shard
//! ([`shard::owner_shard`]); other shards reach it with [`shard::ShardOp`] messages.

pub mod api;
pub mod boot;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod errors;
pub mod group;
pub mod layout;
pub mod metrics;
pub mod partition;
pub mod replication;
pub mod shard;
pub mod tier;
