//! The probe schedule's ring (DESIGN section 3): the live members and this node, ordered by a
//! hash of their names that every node computes alike. In probe period `q` every node probes
//! the member [`offset`]`(q)` places after itself, the offset drawn from the period's number
//! alike on every node. While the nodes agree on the roster and on the time within a fraction
//! of a period, that is a permutation: each live member is probed exactly once in every period,
//! by another member each time, so a crash is probed within a period and confirmed by the next
//! ones. Where views or clocks differ, targets are simply random, as in SWIM.

use super::members::Members;
use crate::NodeName;

/// Where this node sits in the ring's slots.
const ME: u32 = u32::MAX;

#[derive(Debug, Default)]
pub(super) struct Ring {
    /// `(ring position, member position or ME)`, sorted.
    slots: Vec<(u64, u32)>,
    /// The roster version the slots were built from; `None` before the first build.
    built_from: Option<u64>,
}

impl Ring {
    /// The member this node (`me`) probes in period `period`, or `None` while it knows no
    /// live member. The slots are rebuilt only when the roster changed.
    pub(super) fn target(
        &mut self,
        members: &Members,
        me: &NodeName,
        period: u64,
    ) -> Option<NodeName> {
        if self.built_from != Some(members.roster_version()) {
            self.rebuild(members, me);
        }
        let len = self.slots.len();
        if len < 2 {
            return None;
        }
        let mine = self.slots.iter().position(|&(_, at)| at == ME)?;
        let (_, at) = self.slots[(mine + offset(period, len)) % len];
        Some(members.name_at(at).clone())
    }

    fn rebuild(&mut self, members: &Members, me: &NodeName) {
        self.slots.clear();
        self.slots.push((position(me), ME));
        self.slots.extend(
            members
                .live_positions()
                .iter()
                .map(|&at| (position(members.name_at(at)), at)),
        );
        let name = |at: u32| if at == ME { me } else { members.name_at(at) };
        // Equal positions (a 64-bit collision) fall back to the names, which every node sees alike.
        self.slots
            .sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| name(a.1).cmp(name(b.1))));
        self.built_from = Some(members.roster_version());
    }
}

/// A name's place on the ring: FNV-1a of its bytes, finished by a 64-bit mix so that similar
/// names (`n1`, `n2`, ...) spread over the ring.
pub(super) fn position(name: &NodeName) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// How many places after itself every node probes in period `period`, on a ring of `len`
/// slots: 1 to `len - 1`, the same on every node.
pub(super) fn offset(period: u64, len: usize) -> usize {
    let others = (len.max(2) - 1) as u64;
    1 + (mix(period) % others) as usize
}

/// A bijective 64-bit finaliser (splitmix64's).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Time;
    use crate::mesh::members::MemberEntry;

    fn name(i: usize) -> NodeName {
        format!("n{i}").parse().unwrap()
    }

    /// The member table node `me` holds when every one of `n` nodes is live.
    fn view(me: usize, n: usize) -> Members {
        let mut members = Members::new(me as u64);
        for i in (0..n).filter(|&i| i != me) {
            let signature = crate::codec::Signature::new(0, [0; 64]);
            let entry =
                MemberEntry::alive("127.0.0.1:1".parse().unwrap(), 1, signature, Time::ZERO);
            members.insert(name(i), entry);
            members.set_live(&name(i));
        }
        members
    }

    #[test]
    fn with_one_roster_every_member_is_probed_exactly_once_a_period() {
        // Each node builds its ring from its own table (its own positions, its own hash
        // seed); the targets of one period still form a permutation.
        let n = 37;
        let mut views: Vec<(Members, Ring)> =
            (0..n).map(|i| (view(i, n), Ring::default())).collect();
        for period in 1_000..1_050 {
            let mut probed = vec![0; n];
            for (i, (members, ring)) in views.iter_mut().enumerate() {
                let target = ring.target(members, &name(i), period).unwrap();
                assert_ne!(target, name(i));
                let j: usize = target.as_str()[1..].parse().unwrap();
                probed[j] += 1;
            }
            assert!(
                probed.iter().all(|&c| c == 1),
                "period {period}: {probed:?}"
            );
        }
    }

    #[test]
    fn the_ring_follows_the_roster_and_a_lone_node_probes_no_one() {
        let mut members = view(0, 3);
        let mut ring = Ring::default();
        assert!(ring.target(&members, &name(0), 7).is_some());
        members.set_not_live(&name(1));
        members.set_not_live(&name(2));
        assert_eq!(ring.target(&members, &name(0), 7), None);
        members.set_live(&name(2));
        assert_eq!(ring.target(&members, &name(0), 7), Some(name(2)));
    }

    #[test]
    fn offsets_cover_every_other_place() {
        let len = 10;
        let seen: std::collections::BTreeSet<usize> = (0..2_000).map(|q| offset(q, len)).collect();
        assert_eq!(seen, (1..len).collect());
    }
}
