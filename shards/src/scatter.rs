//! Scatter/gather with ordered reassembly: a request's items go out in groups (one per
//! destination), and the answers come back in the order of the items.

use std::collections::BTreeMap;
use std::future::Future;

/// Splits `items` by destination (keeping their order within a destination), calls `dispatch`
/// once per destination — in destination order, before awaiting any of them, so that work the
/// calls start synchronously starts in a fixed order — then awaits every group at once and
/// returns the outcomes in the order of `items`.
///
/// `dispatch` must answer one outcome per item it gets, in their order.
pub async fn scatter<K: Ord, I, O, F: Future<Output = Vec<O>>>(
    items: Vec<(K, I)>,
    mut dispatch: impl FnMut(K, Vec<I>) -> F,
) -> Vec<O> {
    let n = items.len();
    let mut groups: BTreeMap<K, (Vec<usize>, Vec<I>)> = BTreeMap::new();
    for (i, (key, item)) in items.into_iter().enumerate() {
        let group = groups
            .entry(key)
            .or_insert_with(|| (Vec::new(), Vec::new()));
        group.0.push(i);
        group.1.push(item);
    }
    let started: Vec<(Vec<usize>, F)> = groups
        .into_iter()
        .map(|(key, (positions, items))| (positions, dispatch(key, items)))
        .collect();
    let (positions, pending): (Vec<Vec<usize>>, Vec<F>) = started.into_iter().unzip();
    let answers = futures::future::join_all(pending).await;
    let mut out: Vec<Option<O>> = (0..n).map(|_| None).collect();
    for (positions, outcomes) in positions.into_iter().zip(answers) {
        assert_eq!(positions.len(), outcomes.len(), "one outcome per item");
        for (pos, o) in positions.into_iter().zip(outcomes) {
            out[pos] = Some(o);
        }
    }
    out.into_iter()
        .map(|o| o.expect("every item answered"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn outcomes_come_back_in_item_order_and_groups_start_in_key_order() {
        let started = RefCell::new(Vec::new());
        let items = vec![(2, 'a'), (1, 'b'), (2, 'c'), (3, 'd'), (1, 'e')];
        let out = futures::executor::block_on(scatter(items, |key, items: Vec<char>| {
            started.borrow_mut().push((key, items.clone()));
            async move {
                items
                    .into_iter()
                    .map(|c| format!("{key}{c}"))
                    .collect::<Vec<_>>()
            }
        }));
        assert_eq!(out, vec!["2a", "1b", "2c", "3d", "1e"]);
        assert_eq!(
            started.into_inner(),
            vec![(1, vec!['b', 'e']), (2, vec!['a', 'c']), (3, vec!['d'])]
        );
    }

    #[test]
    fn no_items_no_calls() {
        let out: Vec<u8> =
            futures::executor::block_on(scatter(Vec::<(u8, u8)>::new(), |_, _| async {
                unreachable!("no destination")
            }));
        assert!(out.is_empty());
    }
}
