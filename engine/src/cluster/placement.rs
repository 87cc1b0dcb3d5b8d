//! Slot placement for cluster mode (pure; not wired into the broker yet — see ARCHITECTURE.md,
//! "Cluster mode"): which live broker owns each of the bucket's slots (shard manifests).
//!
//! Every broker computes the same answer from the same inputs (the slot count and the node ids
//! of the live leases), so no coordinator is needed to agree on it:
//! * balanced: every broker owns ⌊S/N⌋ or ⌈S/N⌉ slots;
//! * deterministic: independent of the order the brokers are listed in;
//! * stable: a broker joining or leaving moves few slots (rendezvous hashing with bounded
//!   loads: each slot ranks the brokers by a hash of (slot, node), and slots, taken in a fixed
//!   order, go to their best-ranked broker that still has room).

/// A 64-bit mix of (slot, node): the slot's preference for the node.
fn score(slot: u32, node: i32) -> u64 {
    let mut z = ((slot as u64) << 32 | node as u32 as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The owner node of each slot `0..slots` among `nodes` (empty if there are no nodes).
pub fn place(slots: u32, nodes: &[i32]) -> Vec<i32> {
    let mut nodes: Vec<i32> = nodes.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.is_empty() {
        return Vec::new();
    }
    let n = nodes.len() as u32;
    let (base, extra) = (slots / n, slots % n);
    // Which nodes may take one slot more than ⌊S/N⌋: the `extra` with the highest total
    // preference, so that the choice does not depend on node order.
    let mut by_weight: Vec<(u64, i32)> = nodes
        .iter()
        .map(|&node| {
            let w = (0..slots).fold(0u64, |acc, s| acc.wrapping_add(score(s, node) >> 16));
            (w, node)
        })
        .collect();
    by_weight.sort_unstable_by(|a, b| b.cmp(a));
    let capacity = |node: i32| {
        base + u32::from(
            by_weight
                .iter()
                .take(extra as usize)
                .any(|(_, n)| *n == node),
        )
    };
    let mut load: Vec<u32> = vec![0; nodes.len()];
    let mut owners = vec![0; slots as usize];
    for slot in 0..slots {
        let mut ranked: Vec<(u64, usize)> = nodes
            .iter()
            .enumerate()
            .map(|(i, &node)| (score(slot, node), i))
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        let (_, i) = *ranked
            .iter()
            .find(|(_, i)| load[*i] < capacity(nodes[*i]))
            .expect("total capacity equals the slot count");
        load[i] += 1;
        owners[slot as usize] = nodes[i];
    }
    owners
}

/// The followers of `slot` owned by `owner` (the replicated WAL, issue 19): up to `n` of the
/// other live `nodes` (node id, rack), in the slot's rendezvous order, racks spread first —
/// a node on a rack neither the owner nor an earlier follower is on goes before one that is
/// (Kafka's `broker.rack`), in choice and in rank; nodes without a rack count as each on a rack
/// of their own.
pub fn followers(slot: u32, owner: i32, nodes: &[(i32, Option<&str>)], n: usize) -> Vec<i32> {
    let mut ranked: Vec<(u64, i32, Option<&str>)> = nodes
        .iter()
        .filter(|(node, _)| *node != owner)
        .map(|&(node, rack)| (score(slot, node), node, rack))
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.dedup_by_key(|(_, node, _)| *node);
    let owner_rack = nodes
        .iter()
        .find(|(node, _)| *node == owner)
        .and_then(|(_, r)| *r);
    let mut racks: Vec<&str> = owner_rack.into_iter().collect();
    let mut chosen: Vec<i32> = Vec::with_capacity(n);
    for (_, node, rack) in &ranked {
        if chosen.len() == n {
            break;
        }
        if rack.is_none_or(|r| !racks.contains(&r)) {
            chosen.push(*node);
            racks.extend(*rack);
        }
    }
    for (_, node, _) in &ranked {
        if chosen.len() == n {
            break;
        }
        if !chosen.contains(node) {
            chosen.push(*node);
        }
    }
    // In the order chosen: a topic of factor 2 uses the first follower only, which is then on
    // another rack than its owner when there is one.
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_are_other_brokers_in_rendezvous_order_racks_spread_first() {
        let plain: Vec<(i32, Option<&str>)> = (1..=5).map(|n| (n, None)).collect();
        for slot in 0..16 {
            let f = followers(slot, 1, &plain, 2);
            assert_eq!(f.len(), 2);
            assert!(!f.contains(&1));
            assert_ne!(f[0], f[1]);
            let order: Vec<i32> = {
                let mut o: Vec<i32> = (2..=5).collect();
                o.sort_by_key(|n| std::cmp::Reverse(score(slot, *n)));
                o
            };
            assert_eq!(f, order[..2].to_vec(), "the best-ranked others");
            // Deterministic whatever the order the nodes are listed in.
            let mut reversed = plain.clone();
            reversed.reverse();
            assert_eq!(followers(slot, 1, &reversed, 2), f);
        }
        // Fewer other brokers than asked: all of them.
        assert_eq!(followers(0, 1, &[(1, None), (2, None)], 2), vec![2]);
        assert!(followers(0, 1, &[(1, None)], 2).is_empty());
        // Racks: owner on a; 2 and 3 on a, 4 on b, 5 on c: followers are 4 and 5.
        let racked = [
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("a")),
            (4, Some("b")),
            (5, Some("c")),
        ];
        for slot in 0..16 {
            let mut f = followers(slot, 1, &racked, 2);
            f.sort();
            assert_eq!(f, vec![4, 5], "slot {slot}");
        }
        // Only one other rack: one follower there, the other from the owner's rack.
        let two_racks = [(1, Some("a")), (2, Some("a")), (3, Some("b"))];
        let mut f = followers(3, 1, &two_racks, 2);
        f.sort();
        assert_eq!(f, vec![2, 3]);
    }

    fn loads(owners: &[i32], nodes: &[i32]) -> Vec<usize> {
        nodes
            .iter()
            .map(|n| owners.iter().filter(|o| *o == n).count())
            .collect()
    }

    fn moved(a: &[i32], b: &[i32]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn balanced_deterministic_and_stable() {
        for slots in [1u32, 6, 16, 64, 256] {
            for n in 1..=6 {
                let nodes: Vec<i32> = (0..n).map(|i| i * 7 + 1).collect();
                let owners = place(slots, &nodes);
                let l = loads(&owners, &nodes);
                let (min, max) = (*l.iter().min().unwrap(), *l.iter().max().unwrap());
                assert!(max - min <= 1, "{slots} slots over {n}: {l:?}");
                assert_eq!(l.iter().sum::<usize>(), slots as usize);
                let mut reversed = nodes.clone();
                reversed.reverse();
                assert_eq!(place(slots, &reversed), owners, "order-independent");
            }
        }
        // Scale out 3 -> 4 and back: slots move to and from the changed node mostly. An ideal
        // move is S/4 slots; bounded loads may move a few more.
        let slots = 256;
        let three = place(slots, &[1, 2, 3]);
        let four = place(slots, &[1, 2, 3, 4]);
        let m = moved(&three, &four);
        println!(
            "3 -> 4 brokers: {m} of {slots} slots moved (ideal {})",
            slots / 4
        );
        assert!(m <= (slots as usize / 4) * 3 / 2, "{m} moved");
        assert!(four.iter().filter(|o| **o == 4).count() == 64);
        // A node leaving: only its slots (and a few rebalanced ones) move.
        let without_2 = place(slots, &[1, 3]);
        let m = moved(&three, &without_2);
        let owned_by_2 = three.iter().filter(|o| **o == 2).count();
        println!("3 -> 2 brokers: {m} of {slots} slots moved ({owned_by_2} were node 2's)");
        assert!(m <= owned_by_2 * 3 / 2, "{m} moved");
        assert!(place(4, &[]).is_empty());
        assert_eq!(place(3, &[5, 5, 5]), vec![5, 5, 5], "duplicates count once");
    }
}
