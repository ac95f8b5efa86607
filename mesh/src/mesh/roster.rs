//! The live members as an indexable set, so that random choices (gossip targets, indirect
//! probers, sync partners) cost O(k log N) instead of a scan of the whole member table: the
//! simulator runs thousands of cores, each choosing several times per second.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::NodeName;

#[derive(Debug, Default)]
pub(super) struct Roster {
    /// In an order that depends only on the history of inserts and removes, so it is
    /// deterministic.
    list: Vec<NodeName>,
    pos: BTreeMap<NodeName, usize>,
}

impl Roster {
    pub(super) fn insert(&mut self, name: &NodeName) {
        if !self.pos.contains_key(name) {
            self.pos.insert(name.clone(), self.list.len());
            self.list.push(name.clone());
        }
    }

    pub(super) fn remove(&mut self, name: &NodeName) {
        let Some(at) = self.pos.remove(name) else {
            return;
        };
        self.list.swap_remove(at);
        if let Some(moved) = self.list.get(at) {
            self.pos.insert(moved.clone(), at);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn names(&self) -> &[NodeName] {
        &self.list
    }

    /// Up to `k` distinct members accepted by `keep`, chosen uniformly at random.
    pub(super) fn sample(
        &self,
        rng: &mut ChaCha8Rng,
        k: usize,
        keep: impl Fn(&NodeName) -> bool,
    ) -> Vec<NodeName> {
        if k == 0 || self.list.is_empty() {
            return Vec::new();
        }
        if self.list.len() > 4 * k + 8 {
            // Rejection sampling: cheap while most members are acceptable, which is the norm.
            let mut out: Vec<NodeName> = Vec::with_capacity(k);
            for _ in 0..8 * k + 16 {
                let candidate = &self.list[rng.random_range(0..self.list.len())];
                if keep(candidate) && !out.contains(candidate) {
                    out.push(candidate.clone());
                    if out.len() == k {
                        return out;
                    }
                }
            }
        }
        // Few members, or too many rejected: choose exactly among the acceptable ones.
        let acceptable = self.list.iter().filter(|n| keep(n)).cloned().collect();
        super::sample(rng, acceptable, k)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn name(i: usize) -> NodeName {
        format!("n{i}").parse().unwrap()
    }

    #[test]
    fn samples_are_distinct_acceptable_and_bounded() {
        // Whatever the size, a sample holds at most k distinct members that pass the filter.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for n in [0, 3, 10, 200] {
            let mut roster = Roster::default();
            (0..n).for_each(|i| roster.insert(&name(i)));
            let odd = |x: &NodeName| x.as_str().ends_with(['1', '3', '5', '7', '9']);
            let chosen = roster.sample(&mut rng, 3, odd);
            assert_eq!(chosen.len(), 3.min(n / 2), "n={n}");
            assert!(chosen.iter().all(odd));
            let unique: std::collections::BTreeSet<_> = chosen.iter().collect();
            assert_eq!(unique.len(), chosen.len());
        }
    }

    #[test]
    fn removal_keeps_the_index_consistent() {
        // Swap-remove moves the last member; its position must follow.
        let mut roster = Roster::default();
        (0..5).for_each(|i| roster.insert(&name(i)));
        roster.remove(&name(1));
        roster.remove(&name(1));
        roster.insert(&name(0));
        assert_eq!(roster.len(), 4);
        roster.remove(&name(4));
        roster.remove(&name(0));
        let mut left: Vec<_> = roster.names().to_vec();
        left.sort();
        assert_eq!(left, vec![name(2), name(3)]);
    }
}
