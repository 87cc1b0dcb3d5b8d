//! The shard layer: where a partition lives ([`owner_shard`], [`Route`]), the messages between
//! shards ([`ShardOp`]), and [`Broker`], what a connection's handlers see on their shard; the
//! slots a shard serves (`host`) and the replica rings it keeps for other owners (`replicas`).
//!
//! A partition is owned by exactly one shard; its log and its waiters are only touched on that
//! shard. A request that arrives on another shard reaches the owner as a [`ShardOp`] in its
//! mailbox and gets its answer back on a oneshot channel; a request for a local partition calls
//! the slot's state directly. [`Broker::scatter`] does both, in order.

pub mod host;
pub mod replicas;

use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use kafka_protocol::ResponseError;
use ringtail_shards::Mailboxes;
use uuid::Uuid;

use crate::catalog::{Catalog, TopicMeta};
use crate::cluster::membership::{Membership, SlotControl};
use crate::cluster::view::View;
use crate::config::Config;
use crate::metrics::ShardStats;
use crate::partition::items::{
    DeleteItem, DeleteOutcome, EpochItem, EpochOutcome, ErrorOutcome, FetchItem, FetchOutcome,
    ListItem, ListOutcome, PartitionKey, ProduceItem, ProduceOutcome,
};
use crate::partition::store::ShardState;
use crate::shard::host::{Slot, SlotHost};

pub use crate::layout::owner_shard;

/// Work to run on a particular shard.
pub type OnShard = Box<dyn FnOnce(&Rc<Slot>) + Send>;

/// Work for a shard: most of it for one slot the shard hosts (the first field).
pub enum ShardOp {
    Produce(u32, Vec<ProduceItem>, oneshot::Sender<Vec<ProduceOutcome>>),
    Fetch(u32, Vec<FetchItem>, oneshot::Sender<Vec<FetchOutcome>>),
    ListOffsets(u32, Vec<ListItem>, oneshot::Sender<Vec<ListOutcome>>),
    LeaderEpochs(u32, Vec<EpochItem>, oneshot::Sender<Vec<EpochOutcome>>),
    /// Answer once any of these partitions has data at or beyond the given offset.
    Watch(u32, Vec<(PartitionKey, i64)>, oneshot::Sender<()>),
    DeleteRecords(u32, Vec<DeleteItem>, oneshot::Sender<Vec<DeleteOutcome>>),
    /// Run this on the slot (group coordination: the group lives in one slot).
    Run(u32, OnShard),
    /// For every slot the shard hosts.
    DropTopic(Uuid),
    /// A topic's configs changed: its partitions follow the new ones from now on.
    TopicChanged(Arc<TopicMeta>),
    /// Take the slot over and serve it / hand it over (cluster membership).
    Open(u32),
    Close(u32),
    /// Write a spare WAL ring if the shard has none (another broker joined: takeovers may come).
    MakeSpare,
}

/// The membership runner's hold on the shards: its requests become [`ShardOp`]s queued in the
/// mailbox of the shard hosting the slot (a slot lives on shard `slot % shards`).
pub struct ShardSlots {
    pub mailboxes: Mailboxes<ShardOp>,
    pub shards: usize,
}

impl ShardSlots {
    fn queue(&self, shard: usize, op: ShardOp) -> bool {
        futures::executor::block_on(self.mailboxes.send(shard, op)).is_ok()
    }

    fn broadcast(&self, op: impl Fn() -> ShardOp) {
        futures::executor::block_on(self.mailboxes.broadcast(None, op))
    }
}

impl SlotControl for ShardSlots {
    fn open(&self, slot: u32) -> bool {
        self.queue(slot as usize % self.shards, ShardOp::Open(slot))
    }
    fn close(&self, slot: u32) -> bool {
        self.queue(slot as usize % self.shards, ShardOp::Close(slot))
    }
    fn make_spares(&self) {
        self.broadcast(|| ShardOp::MakeSpare);
    }
    fn drop_topic(&self, id: Uuid) {
        self.broadcast(|| ShardOp::DropTopic(id));
    }
    fn topic_changed(&self, topic: Arc<TopicMeta>) {
        self.broadcast(|| ShardOp::TopicChanged(topic.clone()));
    }
}

/// Where a partition lives: its slot, and the shard that hosts that slot on any broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub shard: usize,
    pub slot: u32,
}

/// What a connection's handlers see on their shard.
pub struct Broker {
    pub shard: usize,
    pub shards: usize,
    /// The bucket's slot count (the shard count without an object store).
    pub slots: u32,
    pub host: Rc<SlotHost>,
    pub stats: Arc<ShardStats>,
    pub membership: Arc<Membership>,
    pub mailboxes: Mailboxes<ShardOp>,
    pub catalog: Arc<Catalog>,
    pub config: Arc<Config>,
    pub cluster_id: String,
    /// Producer id blocks in the bucket, when there is an object tier.
    pub producer_ids: Option<Arc<crate::cluster::producer_ids::ProducerIds>>,
    /// The broker's incremental fetch sessions, shared by its shards: a client that reconnects
    /// to another shard keeps its session.
    pub fetch_sessions: Arc<std::sync::Mutex<crate::partition::fetch_sessions::FetchSessions>>,
}

impl Broker {
    pub fn owner(&self, topic: &TopicMeta, partition: i32) -> Route {
        let slot = owner_shard(&topic.name, partition, self.slots as usize) as u32;
        Route {
            shard: slot as usize % self.shards,
            slot,
        }
    }

    /// A partition's leader epoch as this broker knows it: its slot's ownership epoch.
    pub fn leader_epoch(&self, route: Route) -> i32 {
        self.membership.epochs.leader_epoch(route.slot)
    }

    /// The cluster as this broker sees it now.
    pub fn view(&self) -> Arc<View> {
        self.membership.view.load_full()
    }

    /// Runs `items` on their slots (locally or by message) and returns the outcomes in the
    /// order of `items`. Items for a slot not served here are answered NOT_LEADER_OR_FOLLOWER.
    /// Local slots start their work in route order before anything is awaited (offsets are
    /// assigned in arrival order).
    pub async fn scatter<I: Send + 'static, O: ErrorOutcome + Send + 'static, F>(
        &self,
        items: Vec<(Route, I)>,
        local: impl Fn(&Rc<ShardState>, Vec<I>) -> F,
        op: impl Fn(u32, Vec<I>, oneshot::Sender<Vec<O>>) -> ShardOp,
    ) -> Vec<O>
    where
        F: Future<Output = Vec<O>> + 'static,
    {
        let op = &op;
        ringtail_shards::scatter(items, |route, items| -> LocalBoxFuture<'_, Vec<O>> {
            let n = items.len();
            let errors = move |code: i16| (0..n).map(|_| O::error(code)).collect();
            if route.shard == self.shard {
                return match self.host.get(route.slot) {
                    Some(slot) => local(&slot.partitions, items).boxed_local(),
                    None => {
                        futures::future::ready(errors(ResponseError::NotLeaderOrFollower.code()))
                            .boxed_local()
                    }
                };
            }
            let slot = route.slot;
            let call = self
                .mailboxes
                .call(route.shard, move |tx| op(slot, items, tx));
            async move {
                call.await.unwrap_or_else(|e| {
                    // The owner shard stopped (a shutdown under way, or a crash): the slot is
                    // not served here any more. A retriable answer: the client refreshes its
                    // metadata and retries (UNKNOWN_SERVER_ERROR failed produces for good).
                    tracing::warn!(error = %e, "owner shard did not answer: NOT_LEADER_OR_FOLLOWER");
                    errors(ResponseError::NotLeaderOrFollower.code())
                })
            }
            .boxed_local()
        })
        .await
    }

    /// Resolves once any of the partitions has data beyond its offset (or never, if none does).
    pub async fn watch(&self, items: Vec<(Route, (PartitionKey, i64))>) {
        let mut by_route: BTreeMap<Route, Vec<(PartitionKey, i64)>> = BTreeMap::new();
        for (route, item) in items {
            by_route.entry(route).or_default().push(item);
        }
        let mut wakes = Vec::new();
        for (route, items) in by_route {
            if route.shard != self.shard {
                let slot = route.slot;
                let call = self
                    .mailboxes
                    .call(route.shard, move |tx| ShardOp::Watch(slot, items, tx));
                wakes.push(call.map(|_| ()).boxed_local());
                continue;
            }
            let (tx, rx) = oneshot::channel();
            match self.host.get(route.slot) {
                Some(slot) => slot.partitions.watch(items, tx),
                // Not served here: the fetch re-reads at once and answers the error.
                None => drop(tx),
            }
            wakes.push(rx.map(|_| ()).boxed_local());
        }
        if wakes.is_empty() {
            return futures::future::pending().await;
        }
        // A dropped sender (topic deleted, slot moved, shard gone) also wakes the fetch, which
        // re-reads.
        let _ = futures::future::select_all(wakes).await;
    }

    /// Runs `f` on the slot's state (here, or on its shard by message) and returns its result;
    /// None if the slot is not served here.
    pub async fn on_slot<T: Send + 'static>(
        &self,
        route: Route,
        f: impl FnOnce(Rc<Slot>) -> LocalBoxFuture<'static, T> + Send + 'static,
    ) -> Option<T> {
        if route.shard == self.shard {
            let slot = self.host.get(route.slot)?;
            return Some(f(slot).await);
        }
        let run = |tx: oneshot::Sender<T>| {
            ShardOp::Run(
                route.slot,
                Box::new(move |slot: &Rc<Slot>| {
                    let done = f(slot.clone());
                    ringtail_shards::spawn_detached(async move {
                        let _ = tx.send(done.await);
                    });
                }),
            )
        };
        self.mailboxes.call(route.shard, run).await.ok()
    }

    /// Tells every shard to forget a deleted topic's partitions.
    pub async fn drop_topic(&self, topic_id: Uuid) {
        self.broadcast(|| ShardOp::DropTopic(topic_id)).await
    }

    /// Tells every shard that a topic's configs changed.
    pub async fn topic_changed(&self, topic: Arc<TopicMeta>) {
        self.broadcast(|| ShardOp::TopicChanged(topic.clone()))
            .await
    }

    /// Runs `op` here and queues it for every other shard.
    async fn broadcast(&self, op: impl Fn() -> ShardOp) {
        self.host.handle(op());
        self.mailboxes.broadcast(Some(self.shard), op).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_deterministic_and_spreads_partitions() {
        let shards = 4;
        let owners: Vec<usize> = (0..8).map(|p| owner_shard("orders", p, shards)).collect();
        assert_eq!(
            owners,
            (0..8)
                .map(|p| owner_shard("orders", p, shards))
                .collect::<Vec<_>>()
        );
        for s in 0..shards {
            assert_eq!(owners.iter().filter(|&&o| o == s).count(), 2);
        }
        assert_eq!(owner_shard("x", 5, 1), 0);
    }
}
