//! The member table: every member a node knows, dense in a vector and found by name through a
//! hash table of positions, with the roster of live members as positions too.
//!
//! Each node of a simulated mesh of N nodes holds N member entries, so the table's cost per
//! entry decides how large a mesh the simulator can hold, and its lookup is the commonest step
//! of gossip: every update received looks its member up. The hash table holds positions only
//! (four bytes, hashed through the entry's name), so a member costs its entry and a few bytes;
//! a lookup hashes the name once and compares it once.
//!
//! The roster makes random choices among live members (gossip targets, indirect probers, sync
//! partners) cost O(k) instead of a scan of the table: the simulator runs thousands of cores,
//! each choosing several times per second.
//!
//! Nothing depends on the table's order: whoever needs name order sorts what it takes.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::Duration;

use foldhash::fast::FixedState;
use hashbrown::HashTable;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::suspicion::Suspicion;
use crate::codec::{Life, MemberRecord, MemberState, Signature, Update};
use crate::{NodeName, Time};

/// The `live_at` of a member that is not in the roster.
pub(super) const NOT_LIVE: u32 = u32::MAX;

/// What this node knows of one other member.
#[derive(Debug, Clone)]
pub(super) struct MemberEntry {
    pub(super) addr: SocketAddr,
    pub(super) incarnation: u64,
    /// The member's own signature of its Alive at `addr` and `incarnation`, or of its Left
    /// once it has left: what this node shows whoever it tells about the member.
    pub(super) signature: Signature,
    pub(super) state: MemberState,
    pub(super) changed_at: Time,
    /// When this node learnt that the member lives in `incarnation`: while that life is new,
    /// accusations of the member carry its signature of it.
    pub(super) life_since: Time,
    /// Boxed: few members are suspected at a time, and every member view pays for the inline size.
    pub(super) suspicion: Option<Box<Suspicion>>,
    /// Position in the roster of live members, or [`NOT_LIVE`].
    pub(super) live_at: u32,
    /// What this member adds to its digest bucket (0 while it is not live).
    pub(super) digested: u64,
    /// When a frame from this member last arrived here: direct evidence that it is up.
    pub(super) heard_at: Option<Time>,
    /// When it last came back to life here after being dead or gone: until then this node
    /// and it were cut apart, and its news about the others may be from before the heal.
    pub(super) returned_at: Option<Time>,
    /// One more than the incarnation at which this node last told it of a claim against it
    /// while it was speaking to this node, so it is told once per incarnation however many
    /// claims arrive.
    pub(super) told_above: u64,
    /// Whether its death here is this node's own verdict, reached after its own probe of it
    /// failed: a verdict a node that comes back from a cut may have reached only because it
    /// was the one cut off.
    pub(super) judged_here: bool,
}

impl MemberEntry {
    /// A member just heard of: alive, in no roster yet, adding nothing to the digest yet.
    pub(super) fn alive(
        addr: SocketAddr,
        incarnation: u64,
        signature: Signature,
        now: Time,
    ) -> Self {
        Self {
            addr,
            incarnation,
            signature,
            state: MemberState::Alive,
            changed_at: now,
            life_since: now,
            suspicion: None,
            live_at: NOT_LIVE,
            digested: 0,
            heard_at: None,
            returned_at: None,
            told_above: 0,
            judged_here: false,
        }
    }

    /// The claim that this member, `name`, is suspect (or `dead`) in the life this node holds,
    /// first made by `source`. While this node learnt of that life less than `new_for` (a probe
    /// period) before `now`, the claim carries the member's own signature of it: some receivers
    /// may still hold an older life, and the claim brings them the newer one. Later, every
    /// node has it or learns it from the member's own Alive, and the claim goes without: 16
    /// bytes instead of 91, which is what keeps the load of a cut, when every node accuses
    /// half the mesh, within bounds.
    pub(super) fn accusation(
        &self,
        name: &NodeName,
        source: NodeName,
        dead: bool,
        now: Time,
        new_for: Duration,
    ) -> Update {
        let life = (now.saturating_since(self.life_since) < new_for).then_some(Life {
            addr: self.addr,
            signature: self.signature,
        });
        let (name, incarnation) = (name.clone(), self.incarnation);
        if dead {
            Update::Dead {
                name,
                incarnation,
                source,
                life,
            }
        } else {
            Update::Suspect {
                name,
                incarnation,
                source,
                life,
            }
        }
    }

    /// The record that carries this member as `name` in push/pull, anti-entropy and the store.
    pub(super) fn record(&self, name: &NodeName) -> MemberRecord {
        MemberRecord {
            name: name.clone(),
            addr: self.addr,
            incarnation: self.incarnation,
            state: self.state,
            signature: self.signature,
        }
    }
}

#[derive(Debug)]
pub(super) struct Members {
    entries: Vec<(NodeName, MemberEntry)>,
    /// Positions in `entries`, hashed by name.
    positions: HashTable<u32>,
    hasher: FixedState,
    /// The roster: positions of the live members, in an order that depends only on the history
    /// of inserts and removes, so it is deterministic. Each live member's place in it is its
    /// entry's `live_at`.
    live: Vec<u32>,
    /// Bumped by every change of the roster or of the positions in it.
    roster_version: u64,
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
            live: Vec::new(),
            roster_version: 0,
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

    /// Adds `name` unless it is in the table already, and says whether it did: an entry is
    /// changed in place, never replaced, so its roster place and digest share stay its own.
    /// Callers keep the table within `members_max`, which validation keeps below `u32::MAX`.
    pub(super) fn insert(&mut self, name: NodeName, entry: MemberEntry) -> bool {
        if self.position(&name).is_some() {
            return false;
        }
        let Ok(at) = u32::try_from(self.entries.len()) else {
            return false;
        };
        let hash = self.hasher.hash_one(&name);
        self.entries.push((name, entry));
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.positions
            .insert_unique(hash, at, |&p| hasher.hash_one(&entries[p as usize].0));
        true
    }

    /// Removes `name`, from the roster too; the last entry takes its place.
    pub(super) fn remove(&mut self, name: &NodeName) -> Option<MemberEntry> {
        self.set_not_live(name);
        // The last entry moves into the freed position.
        self.roster_version += 1;
        let hash = self.hasher.hash_one(name);
        let entries = &self.entries;
        let found = self
            .positions
            .find_entry(hash, |&p| entries[p as usize].0 == *name)
            .ok()?;
        let at = *found.get();
        found.remove();
        let (_, entry) = self.entries.swap_remove(at as usize);
        if let Some((moved, moved_entry)) = self.entries.get(at as usize) {
            let old = self.entries.len() as u32;
            let hash = self.hasher.hash_one(moved);
            if let Some(p) = self.positions.find_mut(hash, |&p| p == old) {
                *p = at;
            }
            if let Some(slot) = self.live.get_mut(moved_entry.live_at as usize) {
                *slot = at;
            }
        }
        Some(entry)
    }

    /// Adds `name`, which must be in the table, to the roster unless it is already in.
    pub(super) fn set_live(&mut self, name: &NodeName) {
        let Some(at) = self.position(name) else {
            return;
        };
        // The table never exceeds `members_max`, which validation keeps below NOT_LIVE.
        let member = &mut self.entries[at].1;
        if member.live_at == NOT_LIVE
            && let Ok(place) = u32::try_from(self.live.len())
        {
            member.live_at = place;
            self.live.push(at as u32);
            self.roster_version += 1;
        }
    }

    /// Takes `name` out of the roster, if it is in.
    pub(super) fn set_not_live(&mut self, name: &NodeName) {
        let Some(at) = self.position(name) else {
            return;
        };
        let place = std::mem::replace(&mut self.entries[at].1.live_at, NOT_LIVE);
        if place == NOT_LIVE {
            return;
        }
        let place = place as usize;
        self.live.swap_remove(place);
        self.roster_version += 1;
        if let Some(&moved) = self.live.get(place) {
            self.entries[moved as usize].1.live_at = place as u32;
        }
    }

    /// Changes whenever the roster, or a position in it, changes.
    pub(super) fn roster_version(&self) -> u64 {
        self.roster_version
    }

    /// The positions of the live members.
    pub(super) fn live_positions(&self) -> &[u32] {
        &self.live
    }

    /// The name at position `at`, which must be a position of the table.
    pub(super) fn name_at(&self, at: u32) -> &NodeName {
        &self.entries[at as usize].0
    }

    /// Members in the roster.
    pub(super) fn live_len(&self) -> usize {
        self.live.len()
    }

    /// The names in the roster, in its order.
    #[cfg(test)]
    pub(super) fn live_names(&self) -> impl Iterator<Item = &NodeName> {
        self.live.iter().map(|&at| &self.entries[at as usize].0)
    }

    /// Up to `k` distinct live members accepted by `keep`, chosen uniformly at random.
    pub(super) fn sample_live(
        &self,
        rng: &mut ChaCha8Rng,
        k: usize,
        keep: impl Fn(&NodeName, &MemberEntry) -> bool,
    ) -> Vec<NodeName> {
        if k == 0 || self.live.is_empty() {
            return Vec::new();
        }
        let accept = |at: u32| {
            let (name, entry) = &self.entries[at as usize];
            keep(name, entry)
        };
        if self.live.len() > 4 * k + 8 {
            // Rejection sampling: cheap while most members are acceptable, which is the norm.
            let mut out: Vec<u32> = Vec::with_capacity(k);
            for _ in 0..8 * k + 16 {
                let candidate = self.live[rng.random_range(0..self.live.len())];
                if accept(candidate) && !out.contains(&candidate) {
                    out.push(candidate);
                    if out.len() == k {
                        return self.names_at(out);
                    }
                }
            }
        }
        // Few members, or too many rejected: choose exactly among the acceptable ones.
        let acceptable = self.live.iter().copied().filter(|&at| accept(at)).collect();
        self.names_at(super::sample(rng, acceptable, k))
    }

    fn names_at(&self, positions: Vec<u32>) -> Vec<NodeName> {
        positions
            .into_iter()
            .map(|at| self.entries[at as usize].0.clone())
            .collect()
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
    use rand::SeedableRng;

    use super::*;
    use crate::Time;

    fn entry(incarnation: u64) -> MemberEntry {
        let signature = Signature::new(0, [0; 64]);
        MemberEntry::alive(
            "127.0.0.1:1".parse().unwrap(),
            incarnation,
            signature,
            Time::ZERO,
        )
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
                let added = table.insert(n.clone(), entry(step));
                assert_eq!(added, !model.contains_key(&n), "step {step}");
                if let Some(m) = table.get_mut(&n) {
                    m.incarnation = step;
                }
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

    /// A member table of `n` members, none of them in the roster yet.
    fn table(n: u64) -> Members {
        let mut table = Members::new(1);
        for i in 0..n {
            table.insert(name(i), entry(1));
        }
        table
    }

    /// Every member in the roster points at its place, the roster points back at it, and no
    /// other entry claims a place.
    fn assert_roster_consistent(table: &Members) {
        for (place, &at) in table.live.iter().enumerate() {
            assert_eq!(table.entries[at as usize].1.live_at as usize, place);
        }
        let claimed = table.iter().filter(|(_, m)| m.live_at != NOT_LIVE).count();
        assert_eq!(claimed, table.live_len());
    }

    #[test]
    fn samples_are_distinct_acceptable_and_bounded() {
        // Whatever the size, a sample holds at most k distinct members that pass the filter.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for n in [0, 3, 10, 200] {
            let mut table = table(n);
            (0..n).for_each(|i| table.set_live(&name(i)));
            let odd =
                |x: &NodeName, _: &MemberEntry| x.as_str().ends_with(['1', '3', '5', '7', '9']);
            let chosen = table.sample_live(&mut rng, 3, odd);
            assert_eq!(chosen.len(), 3.min(n as usize / 2), "n={n}");
            assert!(chosen.iter().all(|x| odd(x, &entry(1))));
            let unique: std::collections::BTreeSet<_> = chosen.iter().collect();
            assert_eq!(unique.len(), chosen.len());
        }
    }

    #[test]
    fn the_roster_stays_consistent_through_swap_removes_in_both_lists() {
        // Swap-removes move the last member of the roster, and of the table; the places and
        // positions that point at them must follow.
        let mut table = table(8);
        (0..7).for_each(|i| table.set_live(&name(i)));
        assert_roster_consistent(&table);
        table.set_not_live(&name(1));
        table.set_not_live(&name(1));
        table.set_live(&name(0));
        assert_eq!(table.live_len(), 6);
        assert_roster_consistent(&table);
        // n1 is not live and n7, moved into its position, is not either; n2 is live, and n6,
        // moved into its position, is too.
        table.remove(&name(1));
        table.remove(&name(2));
        assert_roster_consistent(&table);
        table.remove(&name(7));
        table.set_live(&name(7));
        assert_roster_consistent(&table);
        let mut live: Vec<_> = table.live_names().cloned().collect();
        live.sort();
        assert_eq!(live, vec![name(0), name(3), name(4), name(5), name(6)]);
        assert_eq!(
            table.get(&name(6)).map(|m| m.live_at != NOT_LIVE),
            Some(true)
        );
    }
}
