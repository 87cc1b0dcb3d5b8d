//! The topic catalog: control plane. Topics, their ids, partition counts and configs.
//!
//! Readers (every request) load an immutable snapshot without locking. Writers (CreateTopics,
//! DeleteTopics, CreatePartitions, AlterConfigs) are serialised; each change makes the next
//! *generation*, commits it to the bucket's copy first (compare-and-swap, when there is an
//! object store), then persists it to `<data-dir>/catalog.json` (write, fsync, rename) and
//! publishes the snapshot. So a change the bucket refused is never seen, and a broker never
//! adopts a generation older than its own (see ARCHITECTURE.md, "Catalog").
//! Partition *data* is never here: it lives on the owning shard.
//!
//! From the bottom up: `topic` (a topic's metadata and name rules), `error`, `snapshot` (one
//! published version), `format` (the catalog as stored: `catalog.json` here and in the bucket),
//! `generations` (the [`Catalog`]: opened, committed, reconciled at start, following the
//! controller), `changes` (the changes the admin APIs make); `topic_config`, `broker_config`
//! and `mirror` beside them.

pub mod broker_config;
mod changes;
mod error;
mod format;
mod generations;
pub mod mirror;
mod snapshot;
mod topic;
pub mod topic_config;

pub use error::CatalogError;
pub use generations::{Adopted, Catalog};
pub use snapshot::Snapshot;
pub use topic::{is_internal_topic, validate_name, DeletedTopic, TopicMeta, OFFSETS_TOPIC};
