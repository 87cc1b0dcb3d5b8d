//! Who holds a copy of each slot's tail not yet in the bucket, as this broker knows it (the
//! replicated WAL, issue 19): the owner's followers in placement order, and those in its ISR.
//! The owner sets the sets of its open slots; the other brokers learn them from its lease.
//! Metadata names them as a partition's `replicas` and `isr`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A slot's followers (placement order) and those of them in sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSet {
    pub followers: Vec<i32>,
    /// (node, rank): in sync for the topics of replication factor above `rank + 1` (a
    /// follower that moved up a rank is not yet a copy of the smaller factors' recent batches).
    pub in_sync: Vec<(i32, usize)>,
}

impl ReplicaSet {
    /// A topic of replication factor `factor` on a slot owned by `owner`: (replicas, isr), the
    /// owner first.
    pub fn of_topic(&self, owner: i32, factor: usize) -> (Vec<i32>, Vec<i32>) {
        let followers = self.followers.iter().take(factor.saturating_sub(1));
        let replicas: Vec<i32> = std::iter::once(owner).chain(followers.copied()).collect();
        let isr = replicas
            .iter()
            .copied()
            .filter(|n| {
                *n == owner
                    || self
                        .in_sync
                        .iter()
                        .any(|&(node, rank)| node == *n && rank + 1 < factor)
            })
            .collect();
        (replicas, isr)
    }
}

/// Every slot's set, with the owner that published it; and what this broker's lease carries.
#[derive(Default)]
pub struct SlotReplicaSets {
    sets: Mutex<BTreeMap<u32, (i32, ReplicaSet)>>,
    written: Mutex<BTreeMap<u32, ReplicaSet>>,
}

impl SlotReplicaSets {
    /// `owner` (this broker) has `set` for `slot` now.
    pub fn set(&self, slot: u32, owner: i32, set: ReplicaSet) {
        self.sets.lock().unwrap().insert(slot, (owner, set));
    }

    /// `owner` let `slot` go.
    pub fn forget(&self, slot: u32, owner: i32) {
        let mut sets = self.sets.lock().unwrap();
        if sets.get(&slot).is_some_and(|(o, _)| *o == owner) {
            sets.remove(&slot);
        }
    }

    /// The set `owner` published for `slot` (another owner's is stale: the slot moved).
    pub fn of(&self, slot: u32, owner: i32) -> Option<ReplicaSet> {
        match self.sets.lock().unwrap().get(&slot) {
            Some((o, set)) if *o == owner => Some(set.clone()),
            _ => None,
        }
    }

    /// What `owner`'s lease lists: its sets replace the ones it published before.
    pub fn learn(&self, owner: i32, listed: &BTreeMap<u32, ReplicaSet>) {
        let mut sets = self.sets.lock().unwrap();
        sets.retain(|slot, (o, _)| *o != owner || listed.contains_key(slot));
        for (&slot, set) in listed {
            sets.insert(slot, (owner, set.clone()));
        }
    }

    /// This broker's lease is being written: until a write is known to have landed, no set
    /// counts as in it (a failed write may have landed or not).
    pub fn writing(&self) {
        self.written.lock().unwrap().clear();
    }

    /// `holder`, alive, holds `slot` (open or claimed): a set another broker published for it
    /// is stale (it would make a successor of one of that owner's followers).
    pub fn held(&self, slot: u32, holder: i32) {
        let mut sets = self.sets.lock().unwrap();
        if sets.get(&slot).is_some_and(|(o, _)| *o != holder) {
            sets.remove(&slot);
        }
    }

    /// This broker's lease was written with `sets`.
    pub fn written(&self, sets: &BTreeMap<u32, ReplicaSet>) {
        *self.written.lock().unwrap() = sets.clone();
    }

    /// The set of `slot` this broker's lease carries now.
    pub fn in_lease(&self, slot: u32) -> Option<ReplicaSet> {
        self.written.lock().unwrap().get(&slot).cloned()
    }

    /// For each slot whose owner (the last to publish its set) is not `live` and whose ISR had
    /// followers: those of them in sync for every replicated topic on the slot — whose
    /// smallest replication factor is `min_factor(slot)` (a follower ranked too low for it was
    /// never sent its batches) — those in sync for the most topics first, then in rank order
    /// (the candidates to succeed it, R4). Empty: the slot stays closed.
    pub fn successors(
        &self,
        live: &[i32],
        min_factor: impl Fn(u32) -> usize,
    ) -> BTreeMap<u32, Vec<i32>> {
        self.sets
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (owner, _))| !live.contains(owner))
            .map(|(&slot, (_, set))| {
                // Those in sync for the most topics first (a follower that moved up a rank is
                // not yet a copy of the smaller factors'), then by rank.
                let mut isr: Vec<(usize, usize, i32)> = set
                    .followers
                    .iter()
                    .enumerate()
                    .filter_map(|(rank, n)| {
                        let (_, sync_rank) = set.in_sync.iter().find(|(m, _)| m == n)?;
                        Some((*sync_rank, rank, *n))
                    })
                    .collect();
                isr.sort_unstable();
                (slot, isr)
            })
            .filter(|(_, isr)| !isr.is_empty())
            .map(|(slot, isr)| {
                let factor = min_factor(slot);
                let copies = isr
                    .into_iter()
                    .filter(|&(sync_rank, _, _)| sync_rank + 1 < factor)
                    .map(|(_, _, n)| n);
                (slot, copies.collect())
            })
            .collect()
    }

    /// The sets `owner` (this broker) published, for its lease.
    pub fn published_by(&self, owner: i32) -> BTreeMap<u32, ReplicaSet> {
        self.sets
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (o, _))| *o == owner)
            .map(|(&slot, (_, set))| (slot, set.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(followers: &[i32], in_sync: &[(i32, usize)]) -> ReplicaSet {
        ReplicaSet {
            followers: followers.to_vec(),
            in_sync: in_sync.to_vec(),
        }
    }

    #[test]
    fn a_topic_names_its_owner_and_first_followers() {
        let s = set(&[3, 2], &[(2, 1)]);
        assert_eq!(s.of_topic(1, 3), (vec![1, 3, 2], vec![1, 2]));
        assert_eq!(s.of_topic(1, 2), (vec![1, 3], vec![1]));
        assert_eq!(s.of_topic(1, 1), (vec![1], vec![1]));
        // Node 3 moved up to rank 0 and is not yet a copy of factor 2's recent batches.
        let s = set(&[3], &[(3, 1)]);
        assert_eq!(s.of_topic(1, 2), (vec![1, 3], vec![1]));
        assert_eq!(s.of_topic(1, 3), (vec![1, 3], vec![1, 3]));
    }

    #[test]
    fn only_the_current_owners_set_counts() {
        let sets = SlotReplicaSets::default();
        sets.set(0, 1, set(&[2, 3], &[(2, 0), (3, 1)]));
        assert_eq!(
            sets.of(0, 2),
            None,
            "slot 0 moved to node 2: node 1's set is stale"
        );
        assert!(sets.of(0, 1).is_some());
        // Node 2's lease lists slot 1 only; then nothing: its sets go.
        sets.learn(2, &BTreeMap::from([(1, set(&[1], &[]))]));
        assert_eq!(sets.of(1, 2), Some(set(&[1], &[])));
        assert_eq!(sets.published_by(1).len(), 1);
        sets.learn(2, &BTreeMap::new());
        assert_eq!(sets.of(1, 2), None);
        sets.forget(0, 2);
        assert!(sets.of(0, 1).is_some(), "only its owner forgets it");
        sets.forget(0, 1);
        assert_eq!(sets.of(0, 1), None);
    }

    /// Review finding: a dead owner's set outlived the slot's take-over on a broker that never
    /// read the successor's lease, and kept the slot closed; any live holder drops it.
    #[test]
    fn a_live_holder_drops_a_dead_owners_set_and_the_lease_counts_once_written() {
        let sets = SlotReplicaSets::default();
        let any = |_| usize::MAX;
        sets.set(3, 9, set(&[1, 2], &[(1, 0), (2, 1)]));
        assert_eq!(
            sets.successors(&[1, 2], any),
            BTreeMap::from([(3, vec![1, 2])])
        );
        // Node 4 moved up to rank 0 but is in sync for factor 3 only: node 2 goes first.
        sets.set(4, 9, set(&[4, 2], &[(4, 1), (2, 1)]));
        sets.set(6, 9, set(&[4, 2], &[(4, 1), (2, 0)]));
        assert_eq!(sets.successors(&[2, 4], any)[&6], vec![2, 4]);
        assert_eq!(sets.successors(&[2, 4], any)[&4], vec![4, 2]);
        // A factor-2 topic on slot 6: only node 2 (rank 0) was sent its batches; on slot 4
        // neither was (both moved up): it stays closed.
        let two = |slot: u32| if slot == 3 { usize::MAX } else { 2 };
        assert_eq!(sets.successors(&[2, 4], two)[&6], vec![2]);
        assert_eq!(sets.successors(&[2, 4], two)[&4], Vec::<i32>::new());
        sets.held(3, 9);
        assert!(sets.of(3, 9).is_some(), "its own holder keeps it");
        sets.held(3, 1);
        assert!(!sets.successors(&[1, 2], any).contains_key(&3));
        // What the lease carries counts only once a write landed.
        let written = BTreeMap::from([(5, set(&[2], &[(2, 0)]))]);
        sets.written(&written);
        assert_eq!(sets.in_lease(5), Some(set(&[2], &[(2, 0)])));
        sets.writing();
        assert_eq!(sets.in_lease(5), None);
    }
}
