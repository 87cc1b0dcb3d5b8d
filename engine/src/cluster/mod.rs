//! Several brokers on one bucket: node leases (`lease`), which broker serves which slot
//! (`placement`, pure), each round's hand-over decision (`hand_over`, pure), the membership
//! runner that renews, reads and decides (`membership`), producer-id blocks shared through the
//! bucket (`producer_ids`), the slots' ownership epochs and replica sets as this broker knows
//! them (`epochs`, `replica_sets`), and what the shards route by (`view`).

pub mod epochs;
pub mod hand_over;
pub mod lease;
pub mod membership;
pub mod placement;
pub mod producer_ids;
pub mod replica_sets;
pub mod view;
