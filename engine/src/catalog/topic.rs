//! A topic as the catalog knows it, the record of a deleted one, and the rules for names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::error::CatalogError;
use crate::catalog::topic_config::TopicConfig;

/// The topic of consumer groups' committed offsets, written only by their coordinator
/// (`group::coordinator`).
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    /// Copies of each partition's tail not yet in the bucket, the owner's included (CreateTopics'
    /// `replication_factor`): more than 1 only for `durability=replicated` topics.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub replication_factor: i16,
    /// Configs set explicitly on the topic (defaults are not stored).
    pub configs: BTreeMap<String, String>,
    #[serde(skip)]
    pub config: TopicConfig,
}

fn one() -> i16 {
    1
}

fn is_one(n: &i16) -> bool {
    *n == 1
}

/// The record that a topic was deleted: the only thing that lets a shard delete its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedTopic {
    pub id: Uuid,
    pub name: String,
    pub deleted_at_ms: i64,
}

impl TopicMeta {
    /// Whether this is an internal topic ([`is_internal_topic`]).
    pub fn is_internal(&self) -> bool {
        is_internal_topic(&self.name)
    }
}

/// Whether `name` is an internal topic, as Kafka's `Topic.isInternal`: the committed offsets'
/// ([`OFFSETS_TOPIC`]), the only one Ringtail has. Metadata flags it internal; clients may not
/// produce to it, delete it or its records, add partitions to it or alter its configs.
pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC
}

/// Kafka's rules: 1..=249 characters of [a-zA-Z0-9._-], not "." or "..".
pub fn validate_name(name: &str) -> Result<(), CatalogError> {
    let bad = |why| Err(CatalogError::InvalidName(name.to_string(), why));
    if name.is_empty() {
        return bad("empty");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

pub(super) fn validate_partitions(count: i32) -> Result<(), CatalogError> {
    if !(1..=crate::config::PARTITIONS_PER_TOPIC_MAX).contains(&count) {
        return Err(CatalogError::InvalidPartitions(format!(
            "partition count {count} is outside 1..={}",
            crate::config::PARTITIONS_PER_TOPIC_MAX
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_committed_offsets_topic_is_internal() {
        assert!(is_internal_topic("__consumer_offsets"));
        for name in ["orders", "__consumer_offsets_", "__transaction_state", ""] {
            assert!(!is_internal_topic(name), "{name:?}");
        }
        let topic = |name: &str| TopicMeta {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions: 1,
            replication_factor: 1,
            configs: BTreeMap::new(),
            config: TopicConfig::default(),
        };
        assert!(topic(OFFSETS_TOPIC).is_internal());
        assert!(!topic("orders").is_internal());
    }
}
