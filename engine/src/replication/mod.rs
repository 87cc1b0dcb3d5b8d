//! The replicated WAL (issue 19; ARCHITECTURE.md, "Replicated WAL"): a slot's owner streams the
//! batches of replicated topics to its followers, which keep them in a replica ring until the
//! owner's uploads commit them. The wire frames (`frame`); what a follower accepts (`follower`,
//! pure) and its replica ring (`ring`) — the follower's connections are served by the shard
//! that holds the rings (`shard::replicas`); the owner's numbering, ISR and acknowledgement rule
//! (`owner`, pure), its link to one follower (`link`) and a slot's links together
//! (`outbound`), which the slot's partitions drive (`partition::replicated`).

pub mod follower;
pub mod frame;
pub mod link;
pub mod outbound;
pub mod owner;
pub mod ring;
