//! The [`Catalog`]: its published snapshot and how each generation is made: loaded at start,
//! committed (the bucket first, compare-and-swap, then `catalog.json` here), reconciled with the
//! bucket's at start, and followed from the controller's.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use uuid::Uuid;

use crate::catalog::error::CatalogError;
use crate::catalog::format::{write_atomically, OnDisk, FORMAT_VERSION};
use crate::catalog::mirror::CatalogMirror;
use crate::catalog::snapshot::{build, Snapshot};
use crate::catalog::topic::{DeletedTopic, TopicMeta};

pub struct Catalog {
    snapshot: ArcSwap<Snapshot>,
    /// Serialises changes, from reading the current generation to installing the next; a change
    /// waits for the bucket in between, so this is an async lock (held across shard threads).
    pub(super) writer: futures::lock::Mutex<()>,
    path: Option<PathBuf>,
    /// The bucket's copy, when there is an object store: every change is committed there first.
    mirror: Option<CatalogMirror>,
    /// Producer ids below this were handed out; persisted as `producer_ids_reserved`.
    pub(super) next_producer_id: std::sync::atomic::AtomicI64,
    /// Ids below this may have been handed out (persisted): allocation writes the catalog once
    /// per [`PRODUCER_ID_BLOCK`](crate::catalog::changes::PRODUCER_ID_BLOCK) ids, not per
    /// InitProducerId.
    pub(super) producer_ids_reserved: std::sync::atomic::AtomicI64,
}

/// What adopting a newer catalog changed.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Topics the new catalog no longer has (deleted, when its deletion record says so).
    pub dropped: Vec<Uuid>,
    pub changed: Vec<Arc<TopicMeta>>,
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
        let path = dir.join(crate::layout::CATALOG);
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
    pub(super) async fn commit(
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
    pub(super) async fn commit_next(&self, next: Snapshot) -> Result<(), CatalogError> {
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
}

/// Attempts at writing the local catalog over a bucket that keeps changing, at start.
const PUSH_RACES_MAX: u32 = 16;

#[cfg(test)]
mod tests {
    use super::*;

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
                .create("a", 1, 1, BTreeMap::new(), false)
                .await
                .unwrap();
            let away = broker_catalog(d1.path(), &store).await;
            assert!(away.snapshot().by_name("a").is_some());
            drop(away);
            // While it is away, the controller creates and deletes.
            let b_topic = controller
                .create("b", 1, 1, BTreeMap::new(), false)
                .await
                .unwrap();
            controller
                .create("c", 1, 1, BTreeMap::new(), false)
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
                .create("d", 1, 1, BTreeMap::new(), false)
                .await
                .unwrap();
            assert_eq!(
                stale
                    .create("e", 1, 1, BTreeMap::new(), false)
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
            c.create("a", 1, 1, BTreeMap::new(), false).await.unwrap();
            // The local write fails: its temporary file's name is taken by a directory.
            let blocker = d0.path().join("catalog.json.tmp");
            std::fs::create_dir(&blocker).unwrap();
            let x = c.create("x", 1, 1, BTreeMap::new(), false).await.unwrap();
            assert!(c.snapshot().by_name("x").is_some());
            std::fs::remove_dir(&blocker).unwrap();
            c.create("y", 1, 1, BTreeMap::new(), false).await.unwrap();
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
            local
                .create("x", 2, 1, BTreeMap::new(), false)
                .await
                .unwrap();
            drop(local);
            let store = bucket(b.path());
            let c = broker_catalog(d0.path(), &store).await;
            assert!(c.snapshot().by_name("x").is_some());
            let fresh = tempfile::tempdir().unwrap();
            let other = broker_catalog(fresh.path(), &store).await;
            assert_eq!(other.snapshot().by_name("x").map(|t| t.partitions), Some(2));
        })
    }
}
