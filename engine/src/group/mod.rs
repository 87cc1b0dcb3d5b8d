//! Consumer groups. Groups build on partitions, never the other way.
//!
//! * The pure state machine of one group (classic protocol): `state` (the vocabulary, SyncGroup,
//!   Heartbeat, LeaveGroup, expiry), `join` (JoinGroup and the join phase of a rebalance),
//!   `static_member` (KIP-345).
//! * The coordinator table (`coordinator`): the groups a slot coordinates, their waiting
//!   requests and committed offsets.
//! * The committed-offsets log (`offsets_log`): commits as records of `__consumer_offsets`,
//!   replay at start, compaction; `compaction` is its bookkeeping (when to compact, commits and
//!   a compaction taking turns).

pub mod compaction;
pub mod coordinator;
pub mod join;
pub mod offsets_log;
pub mod state;
pub mod static_member;
