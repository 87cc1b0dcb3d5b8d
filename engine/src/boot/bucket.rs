//! What a broker reads from or writes to the bucket (and its data directory) before its shards
//! start: its node lease, the slot count, the cluster id, the committed-offsets topic — each
//! made once by the first broker and read by the others.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use ringtail_objstore::{Condition, ObjectStore, StoreError};

use crate::catalog::{Catalog, TopicMeta};
use crate::cluster::lease::{Lease, LeaseRecord};
use crate::cluster::view::Member;
use crate::config::Config;

/// Takes this node's lease in the object store (waiting out a dead holder's lease).
pub fn take_node_lease(
    config: &Config,
    me: &Member,
    store: &dyn ObjectStore,
) -> anyhow::Result<Lease> {
    let record = LeaseRecord {
        node_id: config.node_id,
        incarnation: uuid::Uuid::new_v4().to_string(),
        listener: format!("{}:{}", me.host, me.port),
        renewals: 0,
        open: Vec::new(),
        draining: false,
        epochs: Default::default(),
        replicas: Default::default(),
        replication: me.replication.clone(),
        rack: me.rack.clone(),
    };
    let lease =
        futures::executor::block_on(crate::cluster::lease::acquire(store, record, config.lease))?;
    tracing::info!(
        node_id = config.node_id,
        lease_ms = config.lease.as_millis() as u64,
        "holding the node lease"
    );
    Ok(lease)
}

use crate::layout::SLOTS as SLOTS_KEY;

/// The bucket's slot count: stored once (create-only) by the first broker; a bucket from before
/// slots existed keeps its shard manifests as slots. Without an object store: the shard count.
pub fn slot_count(
    config: &Config,
    store: Option<&dyn ObjectStore>,
    rings: &[u32],
) -> anyhow::Result<u32> {
    let Some(store) = store else {
        if let Some(n) = config.slots.filter(|&n| n as usize != config.shards) {
            bail!("--slots {n} needs an object store (without one, slots are the shards)");
        }
        check_rings_fit(config, rings, config.shards as u32)?;
        return Ok(config.shards as u32);
    };
    let read = || -> anyhow::Result<Option<u32>> {
        match retry_blocking("reading the slot count", || store.get(SLOTS_KEY, None)) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).trim().parse().map_err(
                |e| anyhow::anyhow!("{SLOTS_KEY} in the object store is not a number: {e}"),
            )?)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => bail!("reading {SLOTS_KEY}: {e}"),
        }
    };
    let slots = match read()? {
        Some(n) => n,
        None => {
            let manifests = retry_blocking("listing the object store", || {
                store.list(crate::layout::SLOTS_DIR)
            })
            .map_err(|e| anyhow::anyhow!("listing the object store: {e}"))?;
            let existing = manifests
                .iter()
                .filter_map(|m| crate::layout::manifest_slot(&m.key))
                .max()
                .map(|h| h + 1);
            let wanted = existing.unwrap_or(config.slots.unwrap_or(config.shards as u32));
            check_rings_fit(config, rings, wanted)?;
            let put = || {
                store.put(
                    SLOTS_KEY,
                    bytes::Bytes::from(wanted.to_string()),
                    Condition::IfNoneMatch,
                )
            };
            match retry_blocking("storing the slot count", put) {
                Ok(_) => wanted,
                Err(StoreError::PreconditionFailed(_)) => {
                    read()?.context("the slot count vanished from the object store")?
                }
                Err(e) => bail!("storing {SLOTS_KEY}: {e}"),
            }
        }
    };
    if let Some(n) = config.slots.filter(|&n| n != slots) {
        bail!("--slots {n}: the object store already has {slots} slots (drop --slots, or use {slots})");
    }
    Ok(slots)
}

/// The slots whose WAL rings are in this broker's WAL directory.
pub fn local_rings(config: &Config) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(&config.wal_dir) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| crate::layout::wal_ring_slot(e.file_name().to_str()?))
        .collect()
}

/// A slot's partitions are in its WAL ring, and a partition's slot depends on the slot count:
/// WAL rings made under another count would hide their data. Refuse rather than hide it.
fn check_rings_fit(config: &Config, rings: &[u32], slots: u32) -> anyhow::Result<()> {
    if !rings.is_empty() && (rings.len() != slots as usize || rings.iter().any(|&r| r >= slots)) {
        bail!(
            "{} holds WAL rings of {} shard(s), but --shards is {}: start with --shards {} \
             (or move the WAL directory away once its data is in the object store)",
            config.wal_dir.display(),
            rings.len(),
            config.shards,
            rings.len()
        );
    }
    Ok(())
}

/// The cluster id, made once and kept in the data dir and, with an object tier, in the bucket
/// (the first broker to create it wins; the others read it).
pub fn cluster_id(dir: &Path, store: Option<&dyn ObjectStore>) -> anyhow::Result<String> {
    let path = dir.join(crate::layout::CLUSTER_ID);
    if let Ok(id) = std::fs::read_to_string(&path) {
        return Ok(id.trim().to_string());
    }
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    if let Some(store) = store {
        let put = || {
            store.put(
                crate::layout::CLUSTER_ID,
                bytes::Bytes::from(id.clone()),
                Condition::IfNoneMatch,
            )
        };
        match retry_blocking("storing the cluster id", put) {
            Ok(_) => {}
            Err(StoreError::PreconditionFailed(_)) => {
                let stored = retry_blocking("reading the cluster id", || {
                    store.get(crate::layout::CLUSTER_ID, None)
                })
                .map_err(|e| anyhow::anyhow!("reading the cluster id: {e}"))?;
                id = String::from_utf8_lossy(&stored).trim().to_string();
            }
            Err(e) => bail!("storing the cluster id in the object store: {e}"),
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// The committed-offsets topic: one partition per shard, created at first start, kept forever.
/// Creates the committed-offsets topic, or moves an existing one to the strongest durability
/// the cluster offers (`durability=object` with an object store: a catalog from before that
/// default is upgraded at start).
pub fn offsets_topic(
    catalog: &Catalog,
    slots: u32,
    object_store: bool,
) -> anyhow::Result<Arc<TopicMeta>> {
    use crate::catalog::CatalogError;
    use crate::catalog::OFFSETS_TOPIC;
    use crate::group::offsets_log::{offsets_topic_configs, offsets_topic_upgrade};
    // Brokers starting together race to create it: the loser adopts the winner's catalog.
    for _ in 0..OFFSETS_TOPIC_RACES_MAX {
        if let Some(t) = catalog.snapshot().by_name(OFFSETS_TOPIC).cloned() {
            let Some(next) = offsets_topic_upgrade(&t.configs, object_store) else {
                return Ok(t);
            };
            match futures::executor::block_on(catalog.alter_configs(
                OFFSETS_TOPIC,
                |_| Ok(next),
                false,
            )) {
                Ok(t) => {
                    tracing::info!(
                        configs = ?t.configs,
                        "the committed-offsets topic takes the strongest durability the cluster offers"
                    );
                    return Ok(t);
                }
                Err(CatalogError::Stale) => {
                    futures::executor::block_on(catalog.follow())?;
                    continue;
                }
                Err(e) => anyhow::bail!("upgrading {OFFSETS_TOPIC}'s configs: {e}"),
            }
        }
        match futures::executor::block_on(catalog.create(
            OFFSETS_TOPIC,
            slots as i32,
            1,
            offsets_topic_configs(object_store),
            false,
        )) {
            Ok(t) => {
                tracing::info!(
                    partitions = t.partitions,
                    "created the committed-offsets topic"
                );
                return Ok(t);
            }
            Err(CatalogError::Stale | CatalogError::Exists(_)) => {
                futures::executor::block_on(catalog.follow())?;
            }
            Err(e) => anyhow::bail!("creating {OFFSETS_TOPIC}: {e}"),
        }
    }
    anyhow::bail!("creating {OFFSETS_TOPIC}: the object store's catalog kept changing")
}

/// Attempts at creating the committed-offsets topic while other brokers change the catalog.
const OFFSETS_TOPIC_RACES_MAX: u32 = 16;

/// Runs a store request at start-up (no shard runs yet), retrying retryable errors for a while.
pub fn retry_blocking<'a, T>(
    what: &str,
    mut op: impl FnMut() -> futures::future::BoxFuture<'a, Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let mut backoff = crate::tier::store_backoff().for_at_most(crate::tier::STARTUP_RETRY_MAX);
    loop {
        match futures::executor::block_on(op()) {
            Err(e) if e.is_retryable() && backoff.may_retry() => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                futures::executor::block_on(backoff.wait());
            }
            other => return other,
        }
    }
}
