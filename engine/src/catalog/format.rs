//! The catalog as stored: `catalog.json`, the same bytes here and in the bucket.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalog::topic::{DeletedTopic, TopicMeta};
use crate::catalog::topic_config::TopicConfig;

#[derive(Serialize, Deserialize)]
pub(super) struct OnDisk {
    pub(super) format_version: u32,
    #[serde(default)]
    pub(super) generation: u64,
    pub(super) topics: Vec<TopicMeta>,
    /// Producer ids below this may have been handed out (InitProducerId); never reused.
    #[serde(default)]
    pub(super) next_producer_id: i64,
    #[serde(default)]
    pub(super) deleted: Vec<DeletedTopic>,
    /// Added within format 2 (an older broker reads past it, and drops it when it next writes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) broker_configs: BTreeMap<String, BTreeMap<String, String>>,
}

/// 2: generations and deletion records. A broker of the version before refuses it (it would
/// write a catalog without them, unconditionally, at its start); this one reads 1 as generation 0.
pub(super) const FORMAT_VERSION: u32 = 2;
const FORMAT_VERSION_LEGACY: u32 = 1;

impl OnDisk {
    pub(super) fn parse(json: &[u8]) -> anyhow::Result<OnDisk> {
        let disk: OnDisk = serde_json::from_slice(json)?;
        anyhow::ensure!(
            disk.format_version == FORMAT_VERSION
                || (disk.format_version == FORMAT_VERSION_LEGACY && disk.generation == 0),
            "unknown catalog format {}",
            disk.format_version
        );
        Ok(disk)
    }

    pub(super) fn topics(&self) -> anyhow::Result<Vec<Arc<TopicMeta>>> {
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

    pub(super) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("serialisable")
    }
}

pub(super) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
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
