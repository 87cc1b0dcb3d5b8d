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

#[cfg(test)]
mod tests {
    use super::*;

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
