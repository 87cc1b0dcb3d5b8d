//! One published version of the catalog: what every request reads, without locking.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use uuid::Uuid;

use crate::catalog::topic::{DeletedTopic, TopicMeta};

#[derive(Debug, Default)]
pub struct Snapshot {
    /// Grows by one with every change; 0 for a catalog from before generations.
    pub generation: u64,
    pub(super) by_name: HashMap<String, Arc<TopicMeta>>,
    by_id: HashMap<Uuid, Arc<TopicMeta>>,
    pub(super) deleted: HashMap<Uuid, DeletedTopic>,
    /// Dynamic broker configs by scope: "" the cluster default, a node id one broker's own
    /// (see `broker_config`).
    pub(super) broker_configs: BTreeMap<String, BTreeMap<String, String>>,
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

pub(super) fn build(
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
