//! Several brokers on one bucket: node leases (`lease`), which broker serves which slot
//! (`placement`, pure), the membership runner that renews, reads and decides (`membership`),
//! producer-id blocks shared through the bucket (`producer_ids`), and the slots' ownership
//! epochs as this broker knows them (`epochs`).

pub mod epochs;
pub mod lease;
pub mod membership;
pub mod placement;
pub mod producer_ids;
