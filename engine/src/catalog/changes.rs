//! The changes the admin APIs make: topics created, deleted, given partitions or configs,
//! broker configs altered, producer ids handed out. Each commits the next generation.

use std::collections::BTreeMap;
use std::sync::Arc;

use ringtail_shards::now_ms;
use uuid::Uuid;

use crate::catalog::error::CatalogError;
use crate::catalog::generations::Catalog;
use crate::catalog::snapshot::build;
use crate::catalog::topic::{validate_name, validate_partitions, DeletedTopic, TopicMeta};
use crate::catalog::topic_config::TopicConfig;

/// Producer ids reserved per catalog write without an object store.
pub(super) const PRODUCER_ID_BLOCK: i64 = 1000;

impl Catalog {
    /// Creates a topic (or only validates it). Returns the new topic.
    pub async fn create(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<TopicMeta>, CatalogError> {
        validate_name(name)?;
        validate_partitions(partitions)?;
        let config = TopicConfig::from_map(&configs).map_err(CatalogError::InvalidConfig)?;
        let _w = self.writer.lock().await;
        let current = self.snapshot();
        if current.by_name.contains_key(name) {
            return Err(CatalogError::Exists(name.to_string()));
        }
        let topic = Arc::new(TopicMeta {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions,
            replication_factor,
            configs,
            config,
        });
        if !validate_only {
            let mut all = current.topics();
            all.push(topic.clone());
            self.commit(&current, all, None).await?;
        }
        Ok(topic)
    }

    pub async fn delete(&self, name: &str) -> Result<Arc<TopicMeta>, CatalogError> {
        let _w = self.writer.lock().await;
        let current = self.snapshot();
        let topic = current
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(|| CatalogError::Unknown(name.to_string()))?;
        let rest = current
            .topics()
            .into_iter()
            .filter(|t| t.name != name)
            .collect();
        let record = DeletedTopic {
            id: topic.id,
            name: topic.name.clone(),
            deleted_at_ms: now_ms(),
        };
        self.commit(&current, rest, Some(record)).await?;
        Ok(topic)
    }

    /// Raises a topic's partition count to `count`.
    pub async fn add_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), CatalogError> {
        validate_partitions(count)?;
        let _w = self.writer.lock().await;
        let current = self.snapshot();
        let topic = current
            .by_name
            .get(name)
            .ok_or_else(|| CatalogError::Unknown(name.to_string()))?;
        if count <= topic.partitions {
            return Err(CatalogError::InvalidPartitions(format!(
                "topic {name:?} has {} partitions; the new count {count} must be larger",
                topic.partitions
            )));
        }
        if validate_only {
            return Ok(());
        }
        let topics = current
            .topics()
            .into_iter()
            .map(|t| {
                if t.name == name {
                    Arc::new(TopicMeta {
                        partitions: count,
                        ..(*t).clone()
                    })
                } else {
                    t
                }
            })
            .collect();
        self.commit(&current, topics, None).await
    }

    /// Replaces a topic's explicitly set configs with `f(current)`; returns the updated topic.
    pub async fn alter_configs(
        &self,
        name: &str,
        f: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String>,
        validate_only: bool,
    ) -> Result<Arc<TopicMeta>, CatalogError> {
        let _w = self.writer.lock().await;
        let current = self.snapshot();
        let topic = current
            .by_name
            .get(name)
            .ok_or_else(|| CatalogError::Unknown(name.to_string()))?;
        let configs = f(&topic.configs).map_err(CatalogError::InvalidConfig)?;
        let config = TopicConfig::from_map(&configs).map_err(CatalogError::InvalidConfig)?;
        let updated = Arc::new(TopicMeta {
            configs,
            config,
            ..(**topic).clone()
        });
        if !validate_only {
            let topics = current
                .topics()
                .into_iter()
                .map(|t| if t.name == name { updated.clone() } else { t })
                .collect();
            self.commit(&current, topics, None).await?;
        }
        Ok(updated)
    }

    /// Replaces the dynamic broker configs of `scope` ("" or a node id) with `f(current)`,
    /// checked by `broker_config::validate`; an empty set removes the scope.
    pub async fn alter_broker_configs(
        &self,
        scope: &str,
        f: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String>,
        validate_only: bool,
    ) -> Result<(), CatalogError> {
        let _w = self.writer.lock().await;
        let current = self.snapshot();
        let configs = f(current.broker_configs(scope).unwrap_or(&BTreeMap::new()))
            .map_err(CatalogError::InvalidConfig)?;
        crate::catalog::broker_config::validate(&configs).map_err(CatalogError::InvalidConfig)?;
        let unchanged = match current.broker_configs(scope) {
            Some(set) => *set == configs,
            None => configs.is_empty(),
        };
        if validate_only || unchanged {
            return Ok(());
        }
        let mut broker_configs = current.broker_configs.clone();
        if configs.is_empty() {
            broker_configs.remove(scope);
        } else {
            broker_configs.insert(scope.to_string(), configs);
        }
        self.commit_next(build(
            current.generation + 1,
            current.topics(),
            current.deleted.clone(),
            broker_configs,
        ))
        .await
    }

    /// A producer id never handed out before, on this broker or (through the catalog's copy in
    /// object storage) any broker restored from it. The catalog is written once per
    /// [`PRODUCER_ID_BLOCK`] ids (reserving the block), so ids are never reused after a restart.
    pub async fn allocate_producer_id(&self) -> Result<i64, CatalogError> {
        use std::sync::atomic::Ordering::SeqCst;
        let _w = self.writer.lock().await;
        let id = self.next_producer_id.load(SeqCst);
        let reserved = self.producer_ids_reserved.load(SeqCst);
        if id >= reserved {
            self.producer_ids_reserved
                .store(id + PRODUCER_ID_BLOCK, SeqCst);
            let current = self.snapshot();
            if let Err(e) = self.commit(&current, current.topics(), None).await {
                self.producer_ids_reserved.store(reserved, SeqCst);
                return Err(e);
            }
        }
        self.next_producer_id.store(id + 1, SeqCst);
        Ok(id)
    }

    /// Ids below this may have been handed out by [`Catalog::allocate_producer_id`].
    pub fn next_producer_id(&self) -> i64 {
        self.producer_ids_reserved
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether `id` was handed out by [`Catalog::allocate_producer_id`] (or may have been,
    /// before a restart).
    pub fn is_allocated_producer_id(&self, id: i64) -> bool {
        (0..self
            .producer_ids_reserved
            .load(std::sync::atomic::Ordering::SeqCst))
            .contains(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_delete_and_reload() {
        futures::executor::block_on(create_delete_and_reload_async())
    }

    async fn create_delete_and_reload_async() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path(), None).unwrap();
        let mut cfg = BTreeMap::new();
        cfg.insert("retention.ms".to_string(), "1000".to_string());
        let t = c.create("orders", 3, 1, cfg, false).await.unwrap();
        assert_eq!(
            c.create("orders", 1, 1, BTreeMap::new(), false)
                .await
                .unwrap_err(),
            CatalogError::Exists("orders".into())
        );
        c.create("dry", 1, 1, BTreeMap::new(), true).await.unwrap();
        assert!(c.snapshot().by_name("dry").is_none());
        c.add_partitions("orders", 5, false).await.unwrap();
        assert!(c.add_partitions("orders", 4, false).await.is_err());
        let set_bytes = |_: &BTreeMap<String, String>| {
            Ok(BTreeMap::from([(
                "retention.bytes".to_string(),
                "77".to_string(),
            )]))
        };
        let dry = c.alter_configs("orders", set_bytes, true).await.unwrap();
        assert_eq!(dry.config.retention_bytes, 77);
        assert_eq!(
            c.snapshot()
                .by_name("orders")
                .unwrap()
                .config
                .retention_bytes,
            -1
        );
        c.alter_configs("orders", set_bytes, false).await.unwrap();
        assert!(matches!(
            c.alter_configs("orders", |_| Err("no".into()), false).await,
            Err(CatalogError::InvalidConfig(_))
        ));
        assert!(matches!(
            c.alter_configs("nope", set_bytes, false).await,
            Err(CatalogError::Unknown(_))
        ));
        assert_eq!(c.allocate_producer_id().await.unwrap(), 0);
        assert_eq!(c.allocate_producer_id().await.unwrap(), 1);
        let reopened = Catalog::open(dir.path(), None).unwrap();
        assert_eq!(
            reopened.allocate_producer_id().await.unwrap(),
            PRODUCER_ID_BLOCK,
            "ids are reserved a block per write: a restart continues after the block"
        );
        assert!(
            reopened.is_allocated_producer_id(1)
                && !reopened.is_allocated_producer_id(2 * PRODUCER_ID_BLOCK)
        );
        let again = reopened.snapshot().by_name("orders").cloned().unwrap();
        assert_eq!(
            (
                again.id,
                again.partitions,
                again.config.retention_ms,
                again.config.retention_bytes
            ),
            (t.id, 5, 7 * 24 * 3600 * 1000, 77)
        );
        let generation = reopened.snapshot().generation;
        reopened.delete("orders").await.unwrap();
        let after = Catalog::open(dir.path(), None).unwrap().snapshot();
        assert!(after.by_name("orders").is_none());
        assert!(after.was_deleted(&t.id), "the deletion is recorded");
        assert_eq!(after.generation, generation + 1);
    }

    #[test]
    fn names_partitions_and_configs_are_validated() {
        let c = Catalog::in_memory();
        let create = |name: &str, partitions, configs| {
            futures::executor::block_on(c.create(name, partitions, 1, configs, false))
        };
        for bad in ["", ".", "..", "a b", "x/y", &"a".repeat(250)] {
            assert!(
                matches!(
                    create(bad, 1, BTreeMap::new()),
                    Err(CatalogError::InvalidName(..))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            create("t", 0, BTreeMap::new()),
            Err(CatalogError::InvalidPartitions(_))
        ));
        assert!(matches!(
            create("t", 10_001, BTreeMap::new()),
            Err(CatalogError::InvalidPartitions(_))
        ));
        let mut cfg = BTreeMap::new();
        cfg.insert("no.such.config".to_string(), "1".to_string());
        assert!(matches!(
            create("t", 1, cfg),
            Err(CatalogError::InvalidConfig(_))
        ));
    }
}
