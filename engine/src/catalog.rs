//! The topic catalog: control plane. Topics, their ids, partition counts and configs.
//!
//! Readers (every request) load an immutable snapshot without locking; writers (CreateTopics,
//! DeleteTopics, CreatePartitions, AlterConfigs) are serialised, persist the new catalog to
//! `<data-dir>/catalog.json` (write, fsync, rename) and then publish the snapshot.
//! Partition *data* is never here: it lives on the owning shard.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::topic_config::TopicConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    /// Configs set explicitly on the topic (defaults are not stored).
    pub configs: BTreeMap<String, String>,
    #[serde(skip)]
    pub config: TopicConfig,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    by_name: HashMap<String, Arc<TopicMeta>>,
    by_id: HashMap<Uuid, Arc<TopicMeta>>,
}

impl Snapshot {
    pub fn by_name(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.by_name.get(name)
    }
    pub fn by_id(&self, id: &Uuid) -> Option<&Arc<TopicMeta>> {
        self.by_id.get(id)
    }
    /// All topics, sorted by name.
    pub fn topics(&self) -> Vec<Arc<TopicMeta>> {
        let mut v: Vec<_> = self.by_name.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("topic {0:?} already exists")]
    Exists(String),
    #[error("topic {0:?} does not exist")]
    Unknown(String),
    #[error("invalid topic name {0:?}: {1}")]
    InvalidName(String, &'static str),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("could not persist the catalog: {0}")]
    Storage(String),
}

pub struct Catalog {
    snapshot: ArcSwap<Snapshot>,
    write: Mutex<()>,
    path: Option<PathBuf>,
    /// Persisted with the topics; changed only under `write`.
    next_producer_id: std::sync::atomic::AtomicI64,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format_version: u32,
    topics: Vec<TopicMeta>,
    /// Producer ids below this were handed out (InitProducerId); never reused.
    #[serde(default)]
    next_producer_id: i64,
}

const FORMAT_VERSION: u32 = 1;

impl Catalog {
    /// An empty catalog that is not persisted (tests).
    pub fn in_memory() -> Catalog {
        Catalog {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            write: Mutex::new(()),
            path: None,
            next_producer_id: Default::default(),
        }
    }

    /// Loads `<dir>/catalog.json` if it exists.
    pub fn open(dir: &std::path::Path) -> anyhow::Result<Catalog> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        let path = dir.join("catalog.json");
        let mut topics = Vec::new();
        let mut next_producer_id = 0;
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let disk: OnDisk = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            anyhow::ensure!(
                disk.format_version == FORMAT_VERSION,
                "unknown catalog format {}",
                disk.format_version
            );
            next_producer_id = disk.next_producer_id;
            for mut t in disk.topics {
                t.config = TopicConfig::from_map(&t.configs)
                    .map_err(|e| anyhow::anyhow!("topic {} in {}: {e}", t.name, path.display()))?;
                topics.push(Arc::new(t));
            }
        }
        let catalog = Catalog {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            write: Mutex::new(()),
            path: Some(path),
            next_producer_id: next_producer_id.into(),
        };
        catalog.snapshot.store(Arc::new(build(topics)));
        Ok(catalog)
    }

    /// The catalog as stored: JSON of every topic.
    pub fn to_json(&self) -> Vec<u8> {
        let disk = OnDisk {
            format_version: FORMAT_VERSION,
            next_producer_id: self
                .next_producer_id
                .load(std::sync::atomic::Ordering::SeqCst),
            topics: self
                .snapshot()
                .topics()
                .iter()
                .map(|t| (**t).clone())
                .collect(),
        };
        serde_json::to_vec_pretty(&disk).expect("serialisable")
    }

    /// Seeds an empty data dir with a catalog copied from elsewhere (the object store), after
    /// checking that it parses. An existing local catalog is left alone.
    pub fn seed(dir: &std::path::Path, json: &[u8]) -> anyhow::Result<bool> {
        use anyhow::Context;
        let path = dir.join("catalog.json");
        if path.exists() {
            return Ok(false);
        }
        let disk: OnDisk =
            serde_json::from_slice(json).context("parsing the object store's catalog")?;
        anyhow::ensure!(
            disk.format_version == FORMAT_VERSION,
            "unknown catalog format {}",
            disk.format_version
        );
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        write_atomically(&path, json).with_context(|| format!("writing {}", path.display()))?;
        Ok(true)
    }

    /// Takes another broker's catalog (the controller's copy in the bucket) as this one's:
    /// persisted here, published, and the topics it dropped or changed returned.
    pub fn adopt(&self, json: &[u8]) -> anyhow::Result<crate::mirror::Adopted> {
        let disk: OnDisk = serde_json::from_slice(json)?;
        anyhow::ensure!(
            disk.format_version == FORMAT_VERSION,
            "unknown catalog format {}",
            disk.format_version
        );
        let mut topics = Vec::new();
        for mut t in disk.topics {
            t.config = TopicConfig::from_map(&t.configs)
                .map_err(|e| anyhow::anyhow!("topic {}: {e}", t.name))?;
            topics.push(Arc::new(t));
        }
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let before = self.snapshot();
        let mut adopted = crate::mirror::Adopted::default();
        for old in before.topics() {
            match topics.iter().find(|t| t.id == old.id) {
                None => adopted.dropped.push(old.id),
                Some(t) if t.configs != old.configs || t.partitions != old.partitions => {
                    adopted.changed.push(t.clone())
                }
                Some(_) => {}
            }
        }
        self.next_producer_id
            .fetch_max(disk.next_producer_id, std::sync::atomic::Ordering::SeqCst);
        self.publish(topics)?;
        Ok(adopted)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Creates a topic (or only validates it). Returns the new topic.
    pub fn create(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<TopicMeta>, CatalogError> {
        validate_name(name)?;
        validate_partitions(partitions)?;
        let config = TopicConfig::from_map(&configs).map_err(CatalogError::InvalidConfig)?;
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot();
        if current.by_name.contains_key(name) {
            return Err(CatalogError::Exists(name.to_string()));
        }
        let topic = Arc::new(TopicMeta {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions,
            configs,
            config,
        });
        if !validate_only {
            let mut all = current.topics();
            all.push(topic.clone());
            self.publish(all)?;
        }
        Ok(topic)
    }

    pub fn delete(&self, name: &str) -> Result<Arc<TopicMeta>, CatalogError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot();
        let topic = current
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(|| CatalogError::Unknown(name.to_string()))?;
        self.publish(
            current
                .topics()
                .into_iter()
                .filter(|t| t.name != name)
                .collect(),
        )?;
        Ok(topic)
    }

    /// Raises a topic's partition count to `count`.
    pub fn add_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), CatalogError> {
        validate_partitions(count)?;
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
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
        self.publish(topics)
    }

    /// Replaces a topic's explicitly set configs with `f(current)`; returns the updated topic.
    pub fn alter_configs(
        &self,
        name: &str,
        f: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String>,
        validate_only: bool,
    ) -> Result<Arc<TopicMeta>, CatalogError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
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
            self.publish(topics)?;
        }
        Ok(updated)
    }

    /// A producer id never handed out before, on this broker or (through the catalog's copy in
    /// object storage) any broker restored from it. Persisted before it is returned.
    pub fn allocate_producer_id(&self) -> Result<i64, CatalogError> {
        use std::sync::atomic::Ordering::SeqCst;
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let id = self.next_producer_id.load(SeqCst);
        self.next_producer_id.store(id + 1, SeqCst);
        if let Err(e) = self.publish(self.snapshot().topics()) {
            self.next_producer_id.store(id, SeqCst);
            return Err(e);
        }
        Ok(id)
    }

    /// Ids below this were handed out by [`Catalog::allocate_producer_id`].
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether `id` was handed out by [`Catalog::allocate_producer_id`].
    pub fn is_allocated_producer_id(&self, id: i64) -> bool {
        (0..self
            .next_producer_id
            .load(std::sync::atomic::Ordering::SeqCst))
            .contains(&id)
    }

    fn publish(&self, topics: Vec<Arc<TopicMeta>>) -> Result<(), CatalogError> {
        if let Some(path) = &self.path {
            let disk = OnDisk {
                format_version: FORMAT_VERSION,
                topics: topics.iter().map(|t| (**t).clone()).collect(),
                next_producer_id: self
                    .next_producer_id
                    .load(std::sync::atomic::Ordering::SeqCst),
            };
            write_atomically(
                path,
                &serde_json::to_vec_pretty(&disk).expect("serialisable"),
            )
            .map_err(|e| CatalogError::Storage(format!("{}: {e}", path.display())))?;
        }
        self.snapshot.store(Arc::new(build(topics)));
        Ok(())
    }
}

fn build(topics: Vec<Arc<TopicMeta>>) -> Snapshot {
    let mut s = Snapshot::default();
    for t in topics {
        s.by_id.insert(t.id, t.clone());
        s.by_name.insert(t.name.clone(), t);
    }
    s
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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

fn validate_partitions(count: i32) -> Result<(), CatalogError> {
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
    fn create_delete_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        let mut cfg = BTreeMap::new();
        cfg.insert("retention.ms".to_string(), "1000".to_string());
        let t = c.create("orders", 3, cfg, false).unwrap();
        assert_eq!(
            c.create("orders", 1, BTreeMap::new(), false).unwrap_err(),
            CatalogError::Exists("orders".into())
        );
        c.create("dry", 1, BTreeMap::new(), true).unwrap();
        assert!(c.snapshot().by_name("dry").is_none());
        c.add_partitions("orders", 5, false).unwrap();
        assert!(c.add_partitions("orders", 4, false).is_err());
        let set_bytes = |_: &BTreeMap<String, String>| {
            Ok(BTreeMap::from([(
                "retention.bytes".to_string(),
                "77".to_string(),
            )]))
        };
        let dry = c.alter_configs("orders", set_bytes, true).unwrap();
        assert_eq!(dry.config.retention_bytes, 77);
        assert_eq!(
            c.snapshot()
                .by_name("orders")
                .unwrap()
                .config
                .retention_bytes,
            -1
        );
        c.alter_configs("orders", set_bytes, false).unwrap();
        assert!(matches!(
            c.alter_configs("orders", |_| Err("no".into()), false),
            Err(CatalogError::InvalidConfig(_))
        ));
        assert!(matches!(
            c.alter_configs("nope", set_bytes, false),
            Err(CatalogError::Unknown(_))
        ));
        assert_eq!(c.allocate_producer_id().unwrap(), 0);
        assert_eq!(c.allocate_producer_id().unwrap(), 1);
        let reopened = Catalog::open(dir.path()).unwrap();
        assert_eq!(
            reopened.allocate_producer_id().unwrap(),
            2,
            "ids survive a restart"
        );
        assert!(reopened.is_allocated_producer_id(1) && !reopened.is_allocated_producer_id(3));
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
        reopened.delete("orders").unwrap();
        assert!(Catalog::open(dir.path())
            .unwrap()
            .snapshot()
            .by_name("orders")
            .is_none());
    }

    #[test]
    fn names_partitions_and_configs_are_validated() {
        let c = Catalog::in_memory();
        for bad in ["", ".", "..", "a b", "x/y", &"a".repeat(250)] {
            assert!(
                matches!(
                    c.create(bad, 1, BTreeMap::new(), false),
                    Err(CatalogError::InvalidName(..))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            c.create("t", 0, BTreeMap::new(), false),
            Err(CatalogError::InvalidPartitions(_))
        ));
        assert!(matches!(
            c.create("t", 10_001, BTreeMap::new(), false),
            Err(CatalogError::InvalidPartitions(_))
        ));
        let mut cfg = BTreeMap::new();
        cfg.insert("no.such.config".to_string(), "1".to_string());
        assert!(matches!(
            c.create("t", 1, cfg, false),
            Err(CatalogError::InvalidConfig(_))
        ));
    }
}
