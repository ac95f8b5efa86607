//! One owner's replicated state as this node holds it: a few keys (a node's information and
//! its Pods), kept in a vector sorted by key.
//!
//! A member view holds one of these per owner that has state, so its size is paid N^2 times
//! in a mesh: a one-entry `BTreeMap` allocates a whole B-tree leaf (eleven slots), about ten
//! times what one sorted slot costs. Lookups are binary searches and iteration is in key
//! order, exactly as the map's were.

use crate::Time;
use crate::codec::Signature;

/// One replicated state entry: its `(generation, version)` and value, `None` for a tombstone,
/// and its owner's signature of them, which goes wherever the entry goes.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) generation: u64,
    pub(super) version: u64,
    pub(super) value: Option<Vec<u8>>,
    pub(super) signature: Signature,
    pub(super) changed_at: Time,
}

/// Whether a record of replicated state goes on by piggyback from this node, or by the stream
/// exchanges only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Onward {
    /// Queued for piggyback, then carried by the stream exchanges too.
    Piggyback,
    /// Carried by the stream exchanges only.
    StreamsOnly,
}

/// Slots a map grows one at a time up to, so that the common map of one or two keys holds no
/// spare room; past it the vector grows geometrically.
const EXACT_SLOTS_MAX: usize = 4;

/// An owner's entries by key, in key order.
#[derive(Debug, Clone, Default)]
pub(super) struct StateMap {
    slots: Vec<(String, Entry)>,
}

impl StateMap {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.slots.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub(super) fn get(&self, key: &str) -> Option<&Entry> {
        self.find(key).ok().map(|at| &self.slots[at].1)
    }

    /// The stored key and its entry.
    pub(super) fn get_key_value(&self, key: &str) -> Option<(&String, &Entry)> {
        self.find(key).ok().map(|at| {
            let (k, e) = &self.slots[at];
            (k, e)
        })
    }

    pub(super) fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key` to `entry` and returns the entry it replaced.
    pub(super) fn insert(&mut self, key: String, entry: Entry) -> Option<Entry> {
        match self.find(&key) {
            Ok(at) => Some(std::mem::replace(&mut self.slots[at].1, entry)),
            Err(at) => {
                if self.slots.len() < EXACT_SLOTS_MAX {
                    self.slots.reserve_exact(1);
                }
                self.slots.insert(at, (key, entry));
                None
            }
        }
    }

    /// Keeps the entries for which `keep` holds, in key order.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&str, &Entry) -> bool) {
        self.slots.retain(|(k, e)| keep(k, e));
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.slots.iter().map(|(k, e)| (k, e))
    }
}

impl<'a> IntoIterator for &'a StateMap {
    type Item = (&'a String, &'a Entry);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Entry)>,
        fn(&'a (String, Entry)) -> (&'a String, &'a Entry),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.slots.iter().map(|(k, e)| (k, e))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn entry(version: u64) -> Entry {
        Entry {
            generation: 1,
            version,
            value: Some(vec![0; 3]),
            signature: crate::codec::Signature::new(0, [0; 64]),
            changed_at: Time::ZERO,
        }
    }

    #[test]
    fn the_sorted_map_behaves_as_a_btree_map() {
        // Random inserts, replacements and retains, checked against the B-tree it replaces.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut map = StateMap::default();
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        for version in 0..3_000u64 {
            let key = format!("pod/{}", rng.random_range(0..200));
            if rng.random_bool(0.05) {
                let cut = rng.random_range(0..200u64);
                map.retain(|_, e| e.version % 200 != cut);
                model.retain(|_, v| *v % 200 != cut);
            } else {
                let old = map.insert(key.clone(), entry(version)).map(|e| e.version);
                assert_eq!(old, model.insert(key, version));
            }
            assert_eq!(map.len(), model.len());
        }
        let ours: Vec<(String, u64)> = map.iter().map(|(k, e)| (k.clone(), e.version)).collect();
        let theirs: Vec<(String, u64)> = model.into_iter().collect();
        assert_eq!(ours, theirs);
        assert!(map.contains_key(&ours[0].0));
        assert!(map.get("pod/none").is_none());
    }

    #[test]
    fn a_map_of_one_key_holds_one_slot() {
        // The common case, a node with only its information, pays for no spare room.
        let mut map = StateMap::default();
        map.insert("node".to_owned(), entry(1));
        assert_eq!(map.slots.capacity(), 1);
        for i in 0..EXACT_SLOTS_MAX {
            map.insert(format!("pod/{i}"), entry(2));
        }
        assert!(map.slots.capacity() > EXACT_SLOTS_MAX);
    }
}
