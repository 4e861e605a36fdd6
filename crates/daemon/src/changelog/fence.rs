//! Revoke fences for writes: once a partition is revoked (or is being restored), a batch
//! processed before that writes nothing of the partition's customers and positions, so the
//! local copy stays as the changelog checkpoint says it is: a warm cache for a later
//! assignment, restored from there.

use journeyd_store::WriteSet;
use std::collections::{BTreeMap, HashSet};

/// The part of `write` this replica may still make, when some of it belongs to partitions
/// `owned` refuses: without their customers (state, timers, history) and input positions.
/// The partitions' counts follow their positions. `owners` gives each entry of `write.customers` its input partition. `None` when all of
/// it may be written.
pub fn owned_part(
    write: &WriteSet,
    owners: &[Option<i32>],
    owned: &dyn Fn(i32) -> bool,
) -> Option<WriteSet> {
    // `owned` is asked once per partition (it takes locks): a batch names few partitions
    // and many customers.
    let mut verdicts: BTreeMap<i32, bool> = BTreeMap::new();
    let mut owned = |p: i32| *verdicts.entry(p).or_insert_with(|| owned(p));
    let mut gone: HashSet<&str> = HashSet::new();
    for ((id, _), owner) in write.customers.iter().zip(owners) {
        if owner.is_some_and(|p| !owned(p)) {
            gone.insert(id);
        }
    }
    for (id, p) in &write.timer_partitions {
        if !owned(*p) {
            gone.insert(id);
        }
    }
    let positions_gone = write.offsets.iter().any(|o| !owned(o.partition))
        || write.counts.iter().any(|(p, _)| !owned(*p));
    if gone.is_empty() && !positions_gone {
        return None;
    }
    let keep = |id: &String| !gone.contains(id.as_str());
    Some(WriteSet {
        customers: write
            .customers
            .iter()
            .filter(|(id, _)| keep(id))
            .cloned()
            .collect(),
        clear_timers: write
            .clear_timers
            .iter()
            .filter(|(_, id)| keep(id))
            .cloned()
            .collect(),
        set_timers: write
            .set_timers
            .iter()
            .filter(|(_, id)| keep(id))
            .cloned()
            .collect(),
        timer_partitions: write
            .timer_partitions
            .iter()
            .filter(|(id, _)| keep(id))
            .cloned()
            .collect(),
        owners: write
            .owners
            .iter()
            .filter(|(id, _)| keep(id))
            .cloned()
            .collect(),
        offsets: write
            .offsets
            .iter()
            .filter(|o| owned(o.partition))
            .cloned()
            .collect(),
        history: write
            .history
            .iter()
            .filter(|(id, _)| keep(id))
            .cloned()
            .collect(),
        history_limit: write.history_limit,
        counts: write
            .counts
            .iter()
            .filter(|(p, _)| owned(*p))
            .cloned()
            .collect(),
        // The store finds out itself.
        customers_existed: None,
        timers_existed: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use journeyd_store::Offset;

    #[test]
    fn a_revoked_partitions_customers_and_positions_are_left_out() {
        let write = WriteSet {
            customers: vec![
                ("a".into(), Some(vec![1])),
                ("b".into(), Some(vec![2])),
                ("legacy".into(), Some(vec![3])),
            ],
            clear_timers: vec![(5, "a".into()), (5, "b".into())],
            set_timers: vec![(9, "a".into()), (9, "b".into()), (9, "q".into())],
            timer_partitions: vec![("a".into(), 0), ("b".into(), 1), ("q".into(), 1)],
            owners: vec![],
            offsets: vec![
                Offset {
                    topic: "t".into(),
                    partition: 0,
                    next: 10,
                },
                Offset {
                    topic: "t".into(),
                    partition: 1,
                    next: 20,
                },
            ],
            history: vec![("a".into(), vec![7]), ("b".into(), vec![8])],
            history_limit: 5,
            counts: vec![(0, vec![1]), (1, vec![2])],
            customers_existed: Some(vec![true, true, false]),
            timers_existed: Some(vec![None; 5]),
        };
        let owners = [Some(0), Some(1), None];
        assert_eq!(owned_part(&write, &owners, &|_| true), None, "all owned");
        let part = owned_part(&write, &owners, &|p| p == 0).unwrap();
        let ids = |v: &[(String, Option<Vec<u8>>)]| -> Vec<String> {
            v.iter().map(|(id, _)| id.clone()).collect()
        };
        assert_eq!(ids(&part.customers), ["a", "legacy"]);
        assert_eq!(part.clear_timers, [(5, "a".to_owned())]);
        assert_eq!(part.set_timers, [(9, "a".to_owned())], "q is partition 1's");
        assert_eq!(part.timer_partitions, [("a".to_owned(), 0)]);
        assert_eq!(part.offsets.len(), 1);
        assert_eq!(part.offsets[0].partition, 0);
        assert_eq!(part.history, [("a".to_owned(), vec![7])]);
        assert_eq!(part.counts, [(0, vec![1])]);
        assert_eq!(part.customers_existed, None);
    }
}
