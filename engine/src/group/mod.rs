//! Consumer groups: the classic group state machine (`state`, pure) and the coordinator that
//! runs it on a slot and keeps committed offsets in the offsets topic (`coordinator`).
//! Groups build on partitions, never the other way.

pub mod coordinator;
pub mod state;
