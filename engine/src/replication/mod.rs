//! The replicated WAL (issue 19; ARCHITECTURE.md, "Replicated WAL"): a slot's owner streams the
//! batches of replicated topics to its followers, which keep them in a replica ring until the
//! owner's uploads commit them. Step 2's pure cores so far: the wire frames (`frame`), what a
//! follower accepts (`follower`) and when an owner may acknowledge (`owner`); and a follower's
//! replica ring (`ring`), the follower's side of the connections (`serve`) and the owner's
//! link to one follower (`link`). Wiring the links into the produce path comes next.

pub mod follower;
pub mod frame;
pub mod link;
pub mod owner;
pub mod ring;
pub mod serve;
