//! The anti-entropy digest, maintained incrementally.
//!
//! Per bucket, the wrapping sum of the hashes of live members `(name, incarnation)` and of live
//! entries `(owner, key, generation, version)` of live owners. Suspicion and tombstones are left
//! out on purpose: they differ between nodes for a while by design, and drilling into them every
//! round would cost bytes for nothing. A member and its entries share the bucket of the member's
//! name, so one delta carries both.
//!
//! Sums make the digest incremental: a change subtracts the old contribution and adds the new
//! one, so a sync round never rescans the member table, which matters when a simulator runs
//! thousands of cores.

use std::collections::BTreeMap;

use crate::NodeName;
use crate::hash::{fnv1a, mix};

/// The bucket sums, and each owner's entry sums. What each live owner currently adds to its
/// bucket is kept by the caller (in the member's entry, or beside this node's own state) and
/// passed to [`Digest::set_owner`], so the digest needs no per-member index of its own.
#[derive(Debug)]
pub(super) struct Digest {
    buckets: Vec<u64>,
    /// Sum of the hashes of each owner's live entries, whether or not the owner is live.
    entry_sums: BTreeMap<NodeName, u64>,
}

impl Digest {
    pub(super) fn new(buckets: u16) -> Self {
        Digest {
            buckets: vec![0; usize::from(buckets)],
            entry_sums: BTreeMap::new(),
        }
    }

    pub(super) fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    pub(super) fn bucket_of(&self, name: &NodeName) -> u16 {
        bucket_of(name, self.buckets.len())
    }

    /// Records that an entry of `owner` went from hash `old` to hash `new` (0 for absent or a
    /// tombstone). Call [`Digest::set_owner`] afterwards.
    pub(super) fn entry_changed(&mut self, owner: &NodeName, old: u64, new: u64) {
        let sum = self.entry_sums.entry(owner.clone()).or_default();
        *sum = sum.wrapping_sub(old).wrapping_add(new);
    }

    /// Forgets a collected member's entries; it must not be live, so it contributes nothing.
    pub(super) fn forget(&mut self, owner: &NodeName) {
        self.entry_sums.remove(owner);
    }

    /// Sets what `owner` contributes: its incarnation if it is live, `None` if not.
    /// `contribution` holds what it contributed so far (0 for nothing) and is updated.
    pub(super) fn set_owner(
        &mut self,
        owner: &NodeName,
        live_incarnation: Option<u64>,
        contribution: &mut u64,
    ) {
        let new = live_incarnation.map_or(0, |incarnation| {
            let entries = self.entry_sums.get(owner).copied().unwrap_or(0);
            member_hash(owner, incarnation).wrapping_add(entries)
        });
        let old = std::mem::replace(contribution, new);
        let bucket = usize::from(self.bucket_of(owner));
        if let Some(slot) = self.buckets.get_mut(bucket) {
            *slot = slot.wrapping_sub(old).wrapping_add(new);
        }
    }
}

pub(super) fn bucket_of(name: &NodeName, buckets: usize) -> u16 {
    // Invariant: the bucket count is in 1..=4096 (validated config), so the remainder fits.
    (fnv1a(&[name.as_str().as_bytes()]) % buckets.max(1) as u64) as u16
}

pub(super) fn member_hash(name: &NodeName, incarnation: u64) -> u64 {
    mix(fnv1a(&[
        b"m",
        name.as_str().as_bytes(),
        &incarnation.to_le_bytes(),
    ]))
}

/// The hash of a live entry; tombstones hash to 0, as if absent.
pub(super) fn entry_hash(
    owner: &NodeName,
    key: &str,
    generation: u64,
    version: u64,
    live: bool,
) -> u64 {
    if !live {
        return 0;
    }
    mix(fnv1a(&[
        b"s",
        owner.as_str().as_bytes(),
        key.as_bytes(),
        &generation.to_le_bytes(),
        &version.to_le_bytes(),
    ]))
}

/// The summary hash: the sum of all bucket hashes.
pub(super) fn summary(digest: &[u64]) -> u64 {
    digest.iter().fold(0u64, |acc, h| acc.wrapping_add(*h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_pinned_across_platforms_and_versions() {
        // Digests are compared between nodes, so the hash must never depend on the build.
        let name: NodeName = "n1".parse().unwrap();
        // Reference values computed independently of this code (FNV-1a 64 and splitmix64).
        assert_eq!(member_hash(&name, 1), 0x7e01_0330_d553_1cc5);
        assert_eq!(bucket_of(&name, 64), 46);
        assert_ne!(member_hash(&name, 1), member_hash(&name, 2));
        assert_eq!(entry_hash(&name, "k", 1, 1, false), 0);
    }

    #[test]
    fn changes_are_undone_exactly() {
        // Adding then removing a contribution leaves the digest as it was.
        let a: NodeName = "a".parse().unwrap();
        let mut digest = Digest::new(8);
        let mut contribution = 0;
        digest.set_owner(&a, Some(1), &mut contribution);
        let entry = entry_hash(&a, "k", 1, 1, true);
        digest.entry_changed(&a, 0, entry);
        digest.set_owner(&a, Some(1), &mut contribution);
        assert_ne!(summary(digest.buckets()), 0);
        digest.entry_changed(&a, entry, 0);
        digest.set_owner(&a, Some(2), &mut contribution);
        digest.set_owner(&a, None, &mut contribution);
        assert_eq!(contribution, 0);
        digest.forget(&a);
        assert!(digest.buckets().iter().all(|b| *b == 0));
    }
}
