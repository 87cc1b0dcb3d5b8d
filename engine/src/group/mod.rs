//! Consumer groups. Groups build on partitions, never the other way.
//!
//! * The pure state machine of one group (classic protocol): `state` (the vocabulary, SyncGroup,
//!   Heartbeat, LeaveGroup, expiry), `join` (JoinGroup and the join phase of a rebalance),
//!   `static_member` (KIP-345).
//! * The coordinator (`coordinator`): the groups a slot coordinates, their waiting requests and
//!   committed offsets, kept as records of `__consumer_offsets`.

pub mod coordinator;
pub mod join;
pub mod state;
pub mod static_member;
