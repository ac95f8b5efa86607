//! The live members as an indexable set, so that random choices (gossip targets, indirect
//! probers, sync partners) cost O(k log N) instead of a scan of the whole member table: the
//! simulator runs thousands of cores, each choosing several times per second.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::members::Members;
use crate::NodeName;

/// The `live_at` of a member that is not in the roster.
pub(super) const NOT_LIVE: u32 = u32::MAX;

/// Each live member's position in the list is kept in its member entry (`live_at`), so the
/// roster costs one name per live member and no index of its own.
#[derive(Debug, Default)]
pub(super) struct Roster {
    /// In an order that depends only on the history of inserts and removes, so it is
    /// deterministic.
    list: Vec<NodeName>,
}

impl Roster {
    /// Adds `name`, which must be in `members`, unless it is already in.
    pub(super) fn insert(&mut self, name: &NodeName, members: &mut Members) {
        let Some(member) = members.get_mut(name) else {
            return;
        };
        // The member table never exceeds `members_max`, which validation keeps below NOT_LIVE.
        if member.live_at == NOT_LIVE
            && let Ok(at) = u32::try_from(self.list.len())
        {
            member.live_at = at;
            self.list.push(name.clone());
        }
    }

    /// Removes `name`, if it is in.
    pub(super) fn remove(&mut self, name: &NodeName, members: &mut Members) {
        let Some(member) = members.get_mut(name) else {
            return;
        };
        let at = std::mem::replace(&mut member.live_at, NOT_LIVE);
        if at == NOT_LIVE {
            return;
        }
        let at = at as usize;
        self.list.swap_remove(at);
        if let Some(moved) = self.list.get(at)
            && let Some(entry) = members.get_mut(moved)
        {
            entry.live_at = at as u32;
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
    use std::net::SocketAddr;

    use rand::SeedableRng;

    use super::*;
    use crate::Time;
    use crate::mesh::MemberEntry;

    fn name(i: usize) -> NodeName {
        format!("n{i}").parse().unwrap()
    }

    /// A member table of `n` members, none of them in a roster yet.
    fn members(n: usize) -> Members {
        let mut table = Members::new(1);
        for i in 0..n {
            let addr = SocketAddr::from(([127, 0, 0, 1], 7000));
            table.insert(name(i), MemberEntry::alive(addr, 1, Time::ZERO));
        }
        table
    }

    /// Every listed member's entry points at its slot, and no other entry claims one.
    fn assert_consistent(roster: &Roster, members: &Members) {
        for (at, listed) in roster.names().iter().enumerate() {
            let entry = members
                .get(listed)
                .expect("listed members are in the table");
            assert_eq!(entry.live_at as usize, at, "{listed}");
        }
        let claimed = members
            .iter()
            .filter(|(_, m)| m.live_at != NOT_LIVE)
            .count();
        assert_eq!(claimed, roster.len());
    }

    #[test]
    fn samples_are_distinct_acceptable_and_bounded() {
        // Whatever the size, a sample holds at most k distinct members that pass the filter.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for n in [0, 3, 10, 200] {
            let mut table = members(n);
            let mut roster = Roster::default();
            (0..n).for_each(|i| roster.insert(&name(i), &mut table));
            let odd = |x: &NodeName| x.as_str().ends_with(['1', '3', '5', '7', '9']);
            let chosen = roster.sample(&mut rng, 3, odd);
            assert_eq!(chosen.len(), 3.min(n / 2), "n={n}");
            assert!(chosen.iter().all(odd));
            let unique: std::collections::BTreeSet<_> = chosen.iter().collect();
            assert_eq!(unique.len(), chosen.len());
        }
    }

    #[test]
    fn removal_keeps_the_positions_consistent() {
        // Swap-remove moves the last member; the position in its entry must follow.
        let mut table = members(6);
        let mut roster = Roster::default();
        (0..5).for_each(|i| roster.insert(&name(i), &mut table));
        assert_consistent(&roster, &table);
        roster.remove(&name(1), &mut table);
        roster.remove(&name(1), &mut table);
        roster.insert(&name(0), &mut table);
        assert_eq!(roster.len(), 4);
        assert_consistent(&roster, &table);
        roster.remove(&name(4), &mut table);
        roster.remove(&name(0), &mut table);
        assert_consistent(&roster, &table);
        let mut left: Vec<_> = roster.names().to_vec();
        left.sort();
        assert_eq!(left, vec![name(2), name(3)]);
        // A name outside the member table is never listed.
        roster.insert(&name(9), &mut table);
        assert_eq!(roster.len(), 2);
        roster.insert(&name(5), &mut table);
        assert_consistent(&roster, &table);
    }
}
