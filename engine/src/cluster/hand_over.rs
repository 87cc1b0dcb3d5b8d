//! The hand-over protocol's decision (pure; run by the membership runner every round): from
//! the live brokers' leases, which slots this broker opens, closes or waits for, who the
//! controller is, and where every slot is served — placement's choice, or for a dead owner's
//! slot a live follower that was in its ISR (the replicated WAL's take-over, R4).

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::placement::place;
use crate::cluster::view::Member;

/// Another live broker, as its lease describes it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub member: Member,
    pub open: BTreeSet<u32>,
    pub draining: bool,
}

/// One membership round's outcome.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub owners: Vec<i32>,
    pub controller: i32,
    /// Slots targeted here that no live lease lists and that are not open or claimed here.
    pub open: Vec<u32>,
    /// Slots open here that are targeted elsewhere.
    pub close: Vec<u32>,
    /// Slots targeted here but still listed by another live broker (waiting for its hand-over).
    pub waiting: Vec<u32>,
}

/// The brokers that may own slots: the live peers not draining, and this one (`me`) unless it
/// is draining.
pub fn candidates(me: i32, draining: bool, peers: &[Peer]) -> Vec<i32> {
    peers
        .iter()
        .filter(|p| !p.draining)
        .map(|p| p.member.node_id)
        .chain((!draining).then_some(me))
        .collect()
}

/// The hand-over protocol's decision for this broker (`me`, draining or not, with `mine` open)
/// given the live peers, and for slots whose owner died (held by no live broker), the
/// followers that were in its ISR (`successors`, from its last lease): the first of them alive
/// takes the slot over, as it holds the acknowledged tail (R4); with none alive the slot stays
/// closed rather than lose acknowledged records.
pub fn decide(
    slots: u32,
    me: i32,
    draining: bool,
    mine: &BTreeSet<u32>,
    peers: &[Peer],
    successors: &BTreeMap<u32, Vec<i32>>,
) -> Decision {
    let candidates = candidates(me, draining, peers);
    let owners = place(slots, &candidates);
    let mut owners = if owners.is_empty() {
        vec![-1; slots as usize]
    } else {
        owners
    };
    let held_elsewhere: BTreeMap<u32, i32> = peers
        .iter()
        .flat_map(|p| p.open.iter().map(move |&s| (s, p.member.node_id)))
        .collect();
    for (&slot, isr) in successors {
        let unheld = !mine.contains(&slot) && !held_elsewhere.contains_key(&slot);
        if let Some(owner) = owners.get_mut(slot as usize).filter(|_| unheld) {
            *owner = isr
                .iter()
                .copied()
                .find(|n| candidates.contains(n))
                .unwrap_or(-1);
        }
    }
    let mut d = Decision {
        controller: peers
            .iter()
            .map(|p| p.member.node_id)
            .chain([me])
            .min()
            .expect("at least this broker"),
        open: Vec::new(),
        close: Vec::new(),
        waiting: Vec::new(),
        owners: Vec::new(),
    };
    for (slot, &owner) in owners.iter().enumerate() {
        let slot = slot as u32;
        let here = mine.contains(&slot);
        if owner == me {
            if held_elsewhere.contains_key(&slot) {
                d.waiting.push(slot);
            } else if !here {
                d.open.push(slot);
            }
        } else if here {
            d.close.push(slot);
        }
    }
    d.owners = owners;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decision without replica sets: placement alone.
    fn placed(
        slots: u32,
        me: i32,
        draining: bool,
        mine: &BTreeSet<u32>,
        peers: &[Peer],
    ) -> Decision {
        decide(slots, me, draining, mine, peers, &BTreeMap::new())
    }

    /// Review of issue 19's take-over: a dead owner's slot goes to a live follower that was in
    /// its ISR (it holds the acknowledged tail), not to placement's choice; with none of them
    /// alive it stays closed.
    #[test]
    fn a_dead_owners_slot_goes_to_a_live_in_sync_follower() {
        let peers = [peer(2, &[], false)];
        let plain = placed(6, 1, false, &BTreeSet::new(), &peers);
        let slot = (0..6u32)
            .find(|&s| plain.owners[s as usize] == 1)
            .expect("node 1 places a slot on itself");
        let isr = BTreeMap::from([(slot, vec![9, 2])]);
        let d = decide(6, 1, false, &BTreeSet::new(), &peers, &isr);
        assert_eq!(
            d.owners[slot as usize], 2,
            "node 9 is dead: node 2 succeeds"
        );
        assert!(!d.open.contains(&slot));
        let dead = BTreeMap::from([(slot, vec![9])]);
        let d = decide(6, 1, false, &BTreeSet::new(), &peers, &dead);
        assert_eq!(d.owners[slot as usize], -1, "no in-sync copy alive: closed");
        assert!(!d.open.contains(&slot));
        // Held by a live broker: placement as usual.
        let d = decide(6, 1, false, &[slot].into(), &peers, &dead);
        assert_eq!(d.owners[slot as usize], 1);
    }

    fn peer(node: i32, open: &[u32], draining: bool) -> Peer {
        Peer {
            member: Member {
                node_id: node,
                host: "h".into(),
                port: 9000 + node,
                replication: Vec::new(),
                rack: None,
            },
            open: open.iter().copied().collect(),
            draining,
        }
    }

    #[test]
    fn a_lone_broker_opens_every_slot() {
        let d = placed(4, 1, false, &BTreeSet::new(), &[]);
        assert_eq!(d.owners, vec![1; 4]);
        assert_eq!(d.open, vec![0, 1, 2, 3]);
        assert!(d.close.is_empty() && d.waiting.is_empty());
        assert_eq!(d.controller, 1);
    }

    #[test]
    fn a_joining_broker_waits_for_the_hand_over() {
        // Node 1 holds everything; node 2 joins.
        let all: BTreeSet<u32> = (0..6).collect();
        let d2 = placed(
            6,
            2,
            false,
            &BTreeSet::new(),
            &[peer(1, &[0, 1, 2, 3, 4, 5], false)],
        );
        assert!(d2.open.is_empty(), "nothing opens while node 1 lists it");
        assert_eq!(d2.waiting.len(), 3);
        // Node 1 sees node 2 and closes what is now targeted there.
        let d1 = placed(6, 1, false, &all, &[peer(2, &[], false)]);
        assert_eq!(d1.close, d2.waiting);
        assert_eq!(d1.owners, d2.owners, "both compute the same placement");
        assert_eq!(d1.controller, 1);
        // Once node 1 announces the smaller set, node 2 opens.
        let kept: Vec<u32> = (0..6).filter(|s| !d1.close.contains(s)).collect();
        let d2 = placed(6, 2, false, &BTreeSet::new(), &[peer(1, &kept, false)]);
        assert_eq!(d2.open, d1.close);
        assert!(d2.waiting.is_empty());
    }

    #[test]
    fn a_dead_brokers_slots_are_opened_by_the_survivors() {
        // Three brokers, node 3's lease expired: it is not a peer any more.
        let d1 = placed(6, 1, false, &[0, 1].into(), &[peer(2, &[2, 3], false)]);
        let d2 = placed(6, 2, false, &[2, 3].into(), &[peer(1, &[0, 1], false)]);
        let opened: BTreeSet<u32> = d1.open.iter().chain(&d2.open).copied().collect();
        assert_eq!(opened, [4, 5].into());
        assert_eq!(d1.owners, d2.owners);
    }

    #[test]
    fn a_draining_broker_gives_everything_away_and_is_given_nothing() {
        let d = placed(4, 1, true, &[0, 1, 2, 3].into(), &[peer(2, &[], false)]);
        assert_eq!(d.close, vec![0, 1, 2, 3]);
        assert_eq!(d.owners, vec![2; 4]);
        let d2 = placed(
            4,
            2,
            false,
            &BTreeSet::new(),
            &[peer(1, &[0, 1, 2, 3], true)],
        );
        assert_eq!(
            d2.waiting,
            vec![0, 1, 2, 3],
            "waits for the drain to hand over"
        );
        // Draining alone: nobody to hand to, every slot closes (the uploads already ran).
        let d = placed(2, 1, true, &[0, 1].into(), &[]);
        assert_eq!(d.owners, vec![-1, -1]);
        assert_eq!(d.close, vec![0, 1]);
    }
}
