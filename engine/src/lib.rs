//! The Ringtail broker: partitions and their logs, produce/fetch paths, the topic catalog,
//! Kafka API handlers, and the `ringtail` binary (`src/main.rs`).
//!
//! Architecture invariant: a partition's log is only touched on its owner shard
//! ([`shard::owner_shard`]); other shards reach it with [`shard::ShardOp`] messages.

pub mod api;
pub mod broker_config;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod coordinator;
pub mod errors;
pub mod fetch_sessions;
pub mod group;
pub mod host;
pub mod lease;
pub mod log;
pub mod manifest;
pub mod merge;
pub mod metrics;
pub mod mirror;
pub mod object_format;
pub mod partitions;
pub mod placement;
pub mod producer_ids;
pub mod producers;
pub mod server;
pub mod shard;
pub mod span_cache;
pub mod tier;
pub mod topic_config;
