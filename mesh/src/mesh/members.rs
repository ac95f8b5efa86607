//! The member table: every member a node knows, dense in a vector and found by name through a
//! hash table of positions.
//!
//! Each node of a simulated mesh of N nodes holds N member entries, so the table's cost per
//! entry decides how large a mesh the simulator can hold, and its lookup is the commonest step
//! of gossip: every update received looks its member up. The hash table holds positions only
//! (four bytes, hashed through the entry's name), so a member costs its entry and a few bytes;
//! a lookup hashes the name once and compares it once.
//!
//! Nothing depends on the table's order: whoever needs name order sorts what it takes.

use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use super::MemberEntry;
use crate::NodeName;

#[derive(Debug)]
pub(super) struct Members {
    entries: Vec<(NodeName, MemberEntry)>,
    /// Positions in `entries`, hashed by name.
    positions: HashTable<u32>,
    hasher: FixedState,
}

impl Members {
    /// A table whose hashing is keyed by `seed`. The node draws its seed at random, so names
    /// crafted to collide cannot pile up in one probe sequence; the table serves lookups only,
    /// so the seed changes no outcome.
    pub(super) fn new(seed: u64) -> Self {
        Self {
            entries: Vec::new(),
            positions: HashTable::new(),
            hasher: FixedState::with_seed(seed),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn get(&self, name: &NodeName) -> Option<&MemberEntry> {
        let at = self.position(name)?;
        Some(&self.entries[at].1)
    }

    pub(super) fn get_mut(&mut self, name: &NodeName) -> Option<&mut MemberEntry> {
        let at = self.position(name)?;
        Some(&mut self.entries[at].1)
    }

    pub(super) fn contains_key(&self, name: &NodeName) -> bool {
        self.position(name).is_some()
    }

    /// Adds `name`, or replaces its entry. Callers keep the table within `members_max`, which
    /// validation keeps below `u32::MAX`.
    pub(super) fn insert(&mut self, name: NodeName, entry: MemberEntry) {
        if let Some(at) = self.position(&name) {
            self.entries[at].1 = entry;
            return;
        }
        let Ok(at) = u32::try_from(self.entries.len()) else {
            return;
        };
        let hash = self.hasher.hash_one(&name);
        self.entries.push((name, entry));
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.positions
            .insert_unique(hash, at, |&p| hasher.hash_one(&entries[p as usize].0));
    }

    /// Removes `name`; the last entry takes its place.
    pub(super) fn remove(&mut self, name: &NodeName) -> Option<MemberEntry> {
        let hash = self.hasher.hash_one(name);
        let entries = &self.entries;
        let found = self
            .positions
            .find_entry(hash, |&p| entries[p as usize].0 == *name)
            .ok()?;
        let at = *found.get() as usize;
        found.remove();
        let (_, entry) = self.entries.swap_remove(at);
        if let Some((moved, _)) = self.entries.get(at) {
            let old = self.entries.len() as u32;
            let hash = self.hasher.hash_one(moved);
            if let Some(p) = self.positions.find_mut(hash, |&p| p == old) {
                *p = at as u32;
            }
        }
        Some(entry)
    }

    /// Every member, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&NodeName, &MemberEntry)> {
        self.entries.iter().map(|(name, entry)| (name, entry))
    }

    /// Every member, in name order.
    pub(super) fn sorted(&self) -> Vec<(&NodeName, &MemberEntry)> {
        let mut all: Vec<_> = self.iter().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }

    fn position(&self, name: &NodeName) -> Option<usize> {
        let hash = self.hasher.hash_one(name);
        self.positions
            .find(hash, |&p| self.entries[p as usize].0 == *name)
            .map(|&p| p as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Time;

    fn entry(incarnation: u64) -> MemberEntry {
        MemberEntry::alive("127.0.0.1:1".parse().unwrap(), incarnation, Time::ZERO)
    }

    fn name(i: u64) -> NodeName {
        format!("n{i}").parse().unwrap()
    }

    #[test]
    fn finds_every_member_through_inserts_replacements_and_removals() {
        let mut table = Members::new(1);
        let mut model = std::collections::BTreeMap::new();
        // A fixed pseudo-random walk over 300 names: inserts, replacements and removals mixed.
        let mut x: u64 = 7;
        for step in 0..5_000u64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let n = name((x >> 33) % 300);
            if (x >> 20).is_multiple_of(3) {
                assert_eq!(
                    table.remove(&n).map(|e| e.incarnation),
                    model.remove(&n),
                    "step {step}"
                );
            } else {
                table.insert(n.clone(), entry(step));
                model.insert(n, step);
            }
            assert_eq!(table.len(), model.len());
        }
        for i in 0..300 {
            let n = name(i);
            assert_eq!(table.get(&n).map(|e| e.incarnation), model.get(&n).copied());
            assert_eq!(table.contains_key(&n), model.contains_key(&n));
        }
        let sorted: Vec<_> = table
            .sorted()
            .into_iter()
            .map(|(n, e)| (n.clone(), e.incarnation))
            .collect();
        assert_eq!(sorted, model.into_iter().collect::<Vec<_>>());
    }
}
