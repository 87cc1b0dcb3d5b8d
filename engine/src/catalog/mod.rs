//! The topic catalog: control plane. Topics, their ids, partition counts and configs.
//!
//! Readers (every request) load an immutable snapshot without locking. Writers (CreateTopics,
//! DeleteTopics, CreatePartitions, AlterConfigs) are serialised; each change makes the next
//! *generation*, commits it to the bucket's copy first (compare-and-swap, when there is an
//! object store), then persists it to `<data-dir>/catalog.json` (write, fsync, rename) and
//! publishes the snapshot. So a change the bucket refused is never seen, and a broker never
//! adopts a generation older than its own (see ARCHITECTURE.md, "Catalog").
//! Partition *data* is never here: it lives on the owning shard.

pub mod broker_config;
pub mod mirror;
pub mod topic_config;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ringtail_shards::now_ms;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::mirror::CatalogMirror;
use crate::catalog::topic_config::TopicConfig;

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

/// The record that a topic was deleted: the only thing that lets a shard delete its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedTopic {
    pub id: Uuid,
    pub name: String,
    pub deleted_at_ms: i64,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    /// Grows by one with every change; 0 for a catalog from before generations.
    pub generation: u64,
    by_name: HashMap<String, Arc<TopicMeta>>,
    by_id: HashMap<Uuid, Arc<TopicMeta>>,
    deleted: HashMap<Uuid, DeletedTopic>,
    /// Dynamic broker configs by scope: "" the cluster default, a node id one broker's own
    /// (see `broker_config`).
    broker_configs: BTreeMap<String, BTreeMap<String, String>>,
}

impl Snapshot {
    pub fn by_name(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.by_name.get(name)
    }
    pub fn by_id(&self, id: &Uuid) -> Option<&Arc<TopicMeta>> {
        self.by_id.get(id)
    }
    /// Whether a DeleteTopics removed this topic id. A topic id the catalog does not know and
    /// that was not deleted is data of a catalog this broker has not seen yet: never deleted.
    /// A catalog from before generations (0) recorded no deletions: there, as before, a topic
    /// it does not know counts as deleted.
    pub fn was_deleted(&self, id: &Uuid) -> bool {
        self.deleted.contains_key(id) || (self.generation == 0 && !self.by_id.contains_key(id))
    }
    /// The dynamic broker configs set at `scope` ("" or a node id).
    pub fn broker_configs(&self, scope: &str) -> Option<&BTreeMap<String, String>> {
        self.broker_configs.get(scope)
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
    /// The bucket holds a catalog this broker has not seen: another broker changed topics.
    #[error("the cluster's topic catalog changed meanwhile (another controller?); try again")]
    Stale,
}

pub struct Catalog {
    snapshot: ArcSwap<Snapshot>,
    /// Serialises changes, from reading the current generation to installing the next; a change
    /// waits for the bucket in between, so this is an async lock (held across shard threads).
    writer: futures::lock::Mutex<()>,
    path: Option<PathBuf>,
    /// The bucket's copy, when there is an object store: every change is committed there first.
    mirror: Option<CatalogMirror>,
    /// Producer ids below this were handed out; persisted as `producer_ids_reserved`.
    next_producer_id: std::sync::atomic::AtomicI64,
    /// Ids below this may have been handed out (persisted): allocation writes the catalog once
    /// per [`PRODUCER_ID_BLOCK`] ids, not per InitProducerId.
    producer_ids_reserved: std::sync::atomic::AtomicI64,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format_version: u32,
    #[serde(default)]
    generation: u64,
    topics: Vec<TopicMeta>,
    /// Producer ids below this may have been handed out (InitProducerId); never reused.
    #[serde(default)]
    next_producer_id: i64,
    #[serde(default)]
    deleted: Vec<DeletedTopic>,
    /// Added within format 2 (an older broker reads past it, and drops it when it next writes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    broker_configs: BTreeMap<String, BTreeMap<String, String>>,
}

/// 2: generations and deletion records. A broker of the version before refuses it (it would
/// write a catalog without them, unconditionally, at its start); this one reads 1 as generation 0.
const FORMAT_VERSION: u32 = 2;
const FORMAT_VERSION_LEGACY: u32 = 1;
/// Producer ids reserved per catalog write without an object store.
const PRODUCER_ID_BLOCK: i64 = 1000;

/// What adopting a newer catalog changed.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Topics the new catalog no longer has (deleted, when its deletion record says so).
    pub dropped: Vec<Uuid>,
    pub changed: Vec<Arc<TopicMeta>>,
}

impl OnDisk {
    fn parse(json: &[u8]) -> anyhow::Result<OnDisk> {
        let disk: OnDisk = serde_json::from_slice(json)?;
        anyhow::ensure!(
            disk.format_version == FORMAT_VERSION
                || (disk.format_version == FORMAT_VERSION_LEGACY && disk.generation == 0),
            "unknown catalog format {}",
            disk.format_version
        );
        Ok(disk)
    }

    fn topics(&self) -> anyhow::Result<Vec<Arc<TopicMeta>>> {
        self.topics
            .iter()
            .map(|t| {
                let config = TopicConfig::from_map(&t.configs)
                    .map_err(|e| anyhow::anyhow!("topic {}: {e}", t.name))?;
                Ok(Arc::new(TopicMeta {
                    config,
                    ..t.clone()
                }))
            })
            .collect()
    }

    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("serialisable")
    }
}

impl Catalog {
    /// An empty catalog that is not persisted (tests).
    pub fn in_memory() -> Catalog {
        Catalog {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            writer: futures::lock::Mutex::new(()),
            path: None,
            mirror: None,
            next_producer_id: Default::default(),
            producer_ids_reserved: Default::default(),
        }
    }

    /// Loads `<dir>/catalog.json` if it exists. With `mirror`, call [`Catalog::reconcile`]
    /// before anything reads it.
    pub fn open(dir: &std::path::Path, mirror: Option<CatalogMirror>) -> anyhow::Result<Catalog> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        let path = dir.join("catalog.json");
        let catalog = Catalog {
            path: Some(path.clone()),
            mirror,
            ..Catalog::in_memory()
        };
        if path.exists() {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let disk =
                OnDisk::parse(&bytes).with_context(|| format!("parsing {}", path.display()))?;
            catalog
                .load(&disk)
                .with_context(|| format!("loading {}", path.display()))?;
        }
        Ok(catalog)
    }

    /// Makes `disk` the published version (nothing persisted).
    fn load(&self, disk: &OnDisk) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let topics = disk.topics()?;
        // A reservation made elsewhere (an older run, another broker): ids below it may be out.
        let reserved = self
            .producer_ids_reserved
            .fetch_max(disk.next_producer_id, SeqCst);
        if disk.next_producer_id > reserved {
            self.next_producer_id
                .fetch_max(disk.next_producer_id, SeqCst);
        }
        self.snapshot.store(Arc::new(build(
            disk.generation,
            topics,
            disk.deleted.iter().map(|d| (d.id, d.clone())).collect(),
            disk.broker_configs.clone(),
        )));
        Ok(())
    }

    /// At start, with an object store: the bucket's catalog is the cluster's. A generation at
    /// least as new as the local one replaces it (a broker that was away catches up before it
    /// serves); a newer local one (a bucket that lost it, or a broker run without the store)
    /// is written to the bucket, compare-and-swap on the version read, never over a newer one.
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let Some(mirror) = &self.mirror else {
            return Ok(());
        };
        let _w = self.writer.lock().await;
        for _ in 0..PUSH_RACES_MAX {
            let local = self.snapshot();
            if let Some(body) = mirror.read().await? {
                let theirs = OnDisk::parse(&body)
                    .map_err(|e| anyhow::anyhow!("the bucket's catalog: {e}"))?;
                if theirs.generation == 0 && local.generation == 0 {
                    // Both from before generations, when a broker wrote its own copy first and
                    // the bucket's after (a push that failed left the bucket behind): neither is
                    // known to be newer, so the union is the first generation.
                    let ours: Vec<Arc<TopicMeta>> = local
                        .topics()
                        .into_iter()
                        .filter(|t| !theirs.topics.iter().any(|o| o.id == t.id))
                        .collect();
                    if !ours.is_empty() {
                        let mut union: Vec<Arc<TopicMeta>> = theirs
                            .topics()?
                            .into_iter()
                            .filter(|o| !ours.iter().any(|t| t.name == o.name))
                            .collect();
                        tracing::warn!(
                            topics = ?ours.iter().map(|t| &t.name).collect::<Vec<_>>(),
                            "the object store's catalog (from before generations) lacks topics this \
                             broker's has: writing the union as generation 1"
                        );
                        union.extend(ours);
                        let next = build(1, union, HashMap::new(), BTreeMap::new());
                        match self.push_and_install(mirror, &next).await {
                            Err(CatalogError::Stale) => continue,
                            other => return other.map_err(|e| anyhow::anyhow!("{e}")),
                        }
                    }
                }
                if theirs.generation >= local.generation {
                    if theirs.generation > local.generation {
                        tracing::info!(
                            ours = local.generation,
                            theirs = theirs.generation,
                            "took the cluster's topic catalog from the object store"
                        );
                    }
                    self.install(&theirs).await?;
                    return Ok(());
                }
            }
            match mirror
                .push(self.to_disk(&local, local.generation).to_json().into())
                .await
            {
                Ok(()) => return Ok(()),
                // Another broker wrote first: read again.
                Err(ringtail_objstore::StoreError::PreconditionFailed(_)) => continue,
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "writing the catalog to the object store: {e}"
                    ))
                }
            }
        }
        anyhow::bail!("the object store's catalog kept changing while this broker started")
    }

    /// Adopts the bucket's catalog if it is a newer generation than this one (cluster mode:
    /// only the controller changes topics, every other broker follows). Never goes back.
    pub async fn follow(&self) -> anyhow::Result<Option<Adopted>> {
        let Some(mirror) = &self.mirror else {
            return Ok(None);
        };
        // A change in progress here is this broker's own (it is the controller): the next
        // round follows. The membership thread must never wait for a change's store retries.
        let Some(_w) = self.writer.try_lock() else {
            return Ok(None);
        };
        let Some(body) = mirror.changed().await? else {
            return Ok(None);
        };
        let theirs =
            OnDisk::parse(&body).map_err(|e| anyhow::anyhow!("the bucket's catalog: {e}"))?;
        let before = self.snapshot();
        if theirs.generation <= before.generation {
            if theirs.generation < before.generation {
                tracing::warn!(
                    ours = before.generation,
                    theirs = theirs.generation,
                    "the object store holds an older topic catalog than this broker: not adopted"
                );
            }
            return Ok(None);
        }
        let topics = theirs.topics()?;
        let mut adopted = Adopted::default();
        for old in before.topics() {
            match topics.iter().find(|t| t.id == old.id) {
                None => adopted.dropped.push(old.id),
                Some(t) if t.configs != old.configs || t.partitions != old.partitions => {
                    adopted.changed.push(t.clone())
                }
                Some(_) => {}
            }
        }
        self.install(&theirs).await?;
        Ok(Some(adopted))
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The catalog as stored at `generation`.
    fn to_disk(&self, s: &Snapshot, generation: u64) -> OnDisk {
        let mut deleted: Vec<DeletedTopic> = s.deleted.values().cloned().collect();
        deleted.sort_by_key(|d| (d.deleted_at_ms, d.id));
        OnDisk {
            format_version: FORMAT_VERSION,
            generation,
            topics: s.topics().iter().map(|t| (**t).clone()).collect(),
            next_producer_id: self
                .producer_ids_reserved
                .load(std::sync::atomic::Ordering::SeqCst),
            deleted,
            broker_configs: s.broker_configs.clone(),
        }
    }

    /// The catalog as stored: JSON of every topic.
    pub fn to_json(&self) -> Vec<u8> {
        let s = self.snapshot();
        self.to_disk(&s, s.generation).to_json()
    }

    /// Persists `disk` here (on a thread of its own: the write ends with fsyncs, which must
    /// not stall the shard that changes topics) and publishes it.
    /// With an object store the bucket's copy is the catalog and this one a cache: a failed
    /// local write is logged and the version published all the same, so that this broker's
    /// snapshot never lags the version its next compare-and-swap names (it would build that
    /// generation again, over the one the others adopted). Without a store a failed write fails.
    async fn install(&self, disk: &OnDisk) -> Result<(), CatalogError> {
        if let Some(path) = self.path.clone() {
            let json = disk.to_json();
            let written = ringtail_shards::off_thread("ringtail-catalog", move || {
                write_atomically(&path, &json)
                    .map_err(|e| CatalogError::Storage(format!("{}: {e}", path.display())))
            })
            .await
            .unwrap_or_else(|| Err(CatalogError::Storage("the write thread failed".into())));
            match written {
                Err(e) if self.mirror.is_some() => tracing::error!(
                    error = %e,
                    generation = disk.generation,
                    "could not write the topic catalog's local copy; the object store holds it"
                ),
                other => other?,
            }
        }
        self.load(disk)
            .map_err(|e| CatalogError::Storage(e.to_string()))
    }

    /// Commits the next generation: `topics` (and a new deletion record) on top of `current`.
    /// The bucket first (compare-and-swap on the version this broker last saw), then here.
    /// Call with the writer lock held.
    async fn commit(
        &self,
        current: &Snapshot,
        topics: Vec<Arc<TopicMeta>>,
        deleted: Option<DeletedTopic>,
    ) -> Result<(), CatalogError> {
        let mut next = build(
            current.generation + 1,
            topics,
            current.deleted.clone(),
            current.broker_configs.clone(),
        );
        if let Some(d) = deleted {
            next.deleted.insert(d.id, d);
        }
        self.commit_next(next).await
    }

    /// Commits `next` (built on the current generation): the bucket first, then here.
    async fn commit_next(&self, next: Snapshot) -> Result<(), CatalogError> {
        match &self.mirror {
            Some(mirror) => self.push_and_install(mirror, &next).await,
            None => self.install(&self.to_disk(&next, next.generation)).await,
        }
    }

    /// Writes `next` to the bucket (compare-and-swap on the version last seen), then here.
    async fn push_and_install(
        &self,
        mirror: &CatalogMirror,
        next: &Snapshot,
    ) -> Result<(), CatalogError> {
        let disk = self.to_disk(next, next.generation);
        match mirror.push(disk.to_json().into()).await {
            Ok(()) => self.install(&disk).await,
            Err(ringtail_objstore::StoreError::PreconditionFailed(_)) => Err(CatalogError::Stale),
            Err(e) => Err(CatalogError::Storage(format!("object store: {e}"))),
        }
    }

    /// Creates a topic (or only validates it). Returns the new topic.
    pub async fn create(
        &self,
        name: &str,
        partitions: i32,
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

/// Attempts at writing the local catalog over a bucket that keeps changing, at start.
const PUSH_RACES_MAX: u32 = 16;

fn build(
    generation: u64,
    topics: Vec<Arc<TopicMeta>>,
    deleted: HashMap<Uuid, DeletedTopic>,
    broker_configs: BTreeMap<String, BTreeMap<String, String>>,
) -> Snapshot {
    let mut s = Snapshot {
        generation,
        deleted,
        broker_configs,
        ..Snapshot::default()
    };
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
        futures::executor::block_on(create_delete_and_reload_async())
    }

    async fn create_delete_and_reload_async() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path(), None).unwrap();
        let mut cfg = BTreeMap::new();
        cfg.insert("retention.ms".to_string(), "1000".to_string());
        let t = c.create("orders", 3, cfg, false).await.unwrap();
        assert_eq!(
            c.create("orders", 1, BTreeMap::new(), false)
                .await
                .unwrap_err(),
            CatalogError::Exists("orders".into())
        );
        c.create("dry", 1, BTreeMap::new(), true).await.unwrap();
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

    fn bucket(dir: &std::path::Path) -> Arc<dyn ringtail_objstore::ObjectStore> {
        Arc::new(ringtail_objstore::local::LocalDir::open(dir).unwrap())
    }

    async fn broker_catalog(
        data: &std::path::Path,
        store: &Arc<dyn ringtail_objstore::ObjectStore>,
    ) -> Catalog {
        let c = Catalog::open(data, Some(CatalogMirror::new(store.clone()))).unwrap();
        c.reconcile().await.unwrap();
        c
    }

    /// Issue 17 item 1: a broker restarting with an old catalog takes the bucket's newer one;
    /// it never writes its own over it, and never adopts an older generation.
    #[test]
    fn the_bucket_catalog_only_moves_forward() {
        futures::executor::block_on(async {
            let (b, d0, d1) = (
                tempfile::tempdir().unwrap(),
                tempfile::tempdir().unwrap(),
                tempfile::tempdir().unwrap(),
            );
            let store = bucket(b.path());
            let controller = broker_catalog(d0.path(), &store).await;
            controller
                .create("a", 1, BTreeMap::new(), false)
                .await
                .unwrap();
            let away = broker_catalog(d1.path(), &store).await;
            assert!(away.snapshot().by_name("a").is_some());
            drop(away);
            // While it is away, the controller creates and deletes.
            let b_topic = controller
                .create("b", 1, BTreeMap::new(), false)
                .await
                .unwrap();
            controller
                .create("c", 1, BTreeMap::new(), false)
                .await
                .unwrap();
            controller.delete("c").await.unwrap();
            let generation = controller.snapshot().generation;

            // It comes back on its old data directory: the bucket's catalog wins.
            let back = broker_catalog(d1.path(), &store).await;
            let s = back.snapshot();
            assert_eq!(s.generation, generation);
            assert_eq!(s.by_name("b").map(|t| t.id), Some(b_topic.id));
            assert!(s.by_name("c").is_none());
            // The controller sees nothing older in the bucket.
            assert!(controller.follow().await.unwrap().is_none());
            assert_eq!(
                controller.snapshot().by_name("b").map(|t| t.id),
                Some(b_topic.id)
            );

            // A broker that missed the newest catalog cannot write: its change is refused
            // and nothing of it is seen, here or in the bucket.
            let stale = broker_catalog(d1.path(), &store).await;
            controller
                .create("d", 1, BTreeMap::new(), false)
                .await
                .unwrap();
            assert_eq!(
                stale
                    .create("e", 1, BTreeMap::new(), false)
                    .await
                    .unwrap_err(),
                CatalogError::Stale
            );
            assert!(stale.snapshot().by_name("e").is_none());
            let adopted = stale.follow().await.unwrap().expect("a newer generation");
            assert!(adopted.dropped.is_empty());
            assert!(stale.snapshot().by_name("d").is_some());
            assert!(controller.follow().await.unwrap().is_none());
            assert!(controller.snapshot().by_name("e").is_none());
        })
    }

    /// Review of issue 17: a change the bucket took while this broker's local write failed is
    /// published all the same; it was kept unpublished, and the next change rebuilt that
    /// generation without it and wrote it over the bucket's (topic `x` vanished).
    #[test]
    fn a_change_in_the_bucket_is_never_rebuilt_without_it() {
        futures::executor::block_on(async {
            let (b, d0) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let store = bucket(b.path());
            let c = broker_catalog(d0.path(), &store).await;
            c.create("a", 1, BTreeMap::new(), false).await.unwrap();
            // The local write fails: its temporary file's name is taken by a directory.
            let blocker = d0.path().join("catalog.json.tmp");
            std::fs::create_dir(&blocker).unwrap();
            let x = c.create("x", 1, BTreeMap::new(), false).await.unwrap();
            assert!(c.snapshot().by_name("x").is_some());
            std::fs::remove_dir(&blocker).unwrap();
            c.create("y", 1, BTreeMap::new(), false).await.unwrap();
            let fresh = tempfile::tempdir().unwrap();
            let other = broker_catalog(fresh.path(), &store).await;
            let s = other.snapshot();
            assert_eq!(
                s.by_name("x").map(|t| t.id),
                Some(x.id),
                "x survives in the bucket"
            );
            assert!(s.by_name("y").is_some() && s.by_name("a").is_some());
        })
    }

    /// Catalogs from before generations (format 1) on both sides that differ: the bucket's
    /// copy may have missed a push, so neither wins alone; the union is generation 1.
    #[test]
    fn legacy_catalogs_that_differ_are_united() {
        futures::executor::block_on(async {
            let (b, d0) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let legacy = |names: &[(&str, &str)]| {
                let topics: Vec<String> = names
                    .iter()
                    .map(|(n, id)| {
                        format!(r#"{{"name":"{n}","id":"{id}","partitions":1,"configs":{{}}}}"#)
                    })
                    .collect();
                format!(
                    r#"{{"format_version":1,"topics":[{}],"next_producer_id":0}}"#,
                    topics.join(",")
                )
            };
            let a = "00000000-0000-0000-0000-00000000000a";
            let bb = "00000000-0000-0000-0000-00000000000b";
            std::fs::write(
                d0.path().join("catalog.json"),
                legacy(&[("a", a), ("b", bb)]),
            )
            .unwrap();
            std::fs::write(b.path().join("catalog.json"), legacy(&[("a", a)])).unwrap();
            let store = bucket(b.path());
            let c = broker_catalog(d0.path(), &store).await;
            let s = c.snapshot();
            assert_eq!(s.generation, 1);
            assert!(s.by_name("a").is_some() && s.by_name("b").is_some());
            let fresh = tempfile::tempdir().unwrap();
            let other = broker_catalog(fresh.path(), &store).await;
            assert!(
                other.snapshot().by_name("b").is_some(),
                "the union is in the bucket"
            );
        })
    }

    /// A bucket holding an older generation than a broker's (restored from a backup, or
    /// written by a broker run without the store) gets the newer one, by compare-and-swap.
    #[test]
    fn a_newer_local_catalog_is_written_to_the_bucket() {
        futures::executor::block_on(async {
            let (b, d0) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let local = Catalog::open(d0.path(), None).unwrap();
            local.create("x", 2, BTreeMap::new(), false).await.unwrap();
            drop(local);
            let store = bucket(b.path());
            let c = broker_catalog(d0.path(), &store).await;
            assert!(c.snapshot().by_name("x").is_some());
            let fresh = tempfile::tempdir().unwrap();
            let other = broker_catalog(fresh.path(), &store).await;
            assert_eq!(other.snapshot().by_name("x").map(|t| t.partitions), Some(2));
        })
    }

    #[test]
    fn names_partitions_and_configs_are_validated() {
        let c = Catalog::in_memory();
        let create = |name: &str, partitions, configs| {
            futures::executor::block_on(c.create(name, partitions, configs, false))
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
