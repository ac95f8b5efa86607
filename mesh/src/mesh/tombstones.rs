//! Tombstones (DESIGN sections 3 and 4): dead and departed members, and deleted state entries,
//! are kept for `tombstone_ttl` so stale news cannot resurrect them, then collected.

use std::time::Duration;

use super::Mesh;
use crate::store::Store;
use crate::{NodeName, Time};

impl<S: Store> Mesh<S> {
    /// Tombstones are swept every eighth of their TTL (at most once per probe interval), so
    /// one lives between `tombstone_ttl` and 9/8 of it, and sweeping stays cheap.
    pub(super) fn collect_interval(&self) -> Duration {
        (self.config.tombstone_ttl / 8).max(self.config.probe_interval)
    }

    /// Whether any member is dead or has left. The roster holds exactly the live members, so
    /// the common case, all live, skips scans of the whole member table.
    pub(super) fn has_departed(&self) -> bool {
        self.members.len() > self.members.live_len()
    }

    pub(super) fn collect_tombstones(&mut self, now: Time) {
        let ttl = self.config.tombstone_ttl;
        // Only dead and departed members expire.
        let mut expired: Vec<NodeName> = if self.has_departed() {
            self.members
                .iter()
                .filter(|(_, m)| !m.state.is_live() && now.saturating_since(m.changed_at) >= ttl)
                .map(|(name, _)| name.clone())
                .collect()
        } else {
            Vec::new()
        };
        expired.sort_unstable();
        for name in expired {
            self.members.remove(&name);
            self.entries.remove(&name);
            self.digest.forget(&name);
            self.counters.claims_dropped += self.credentials.forget(&name) as u64;
            self.mark_dirty(&name);
            self.counters.tombstones_collected += 1;
        }
        let mut collected = 0;
        self.entries.retain(|_, map| {
            let before = map.len();
            map.retain(|_, e| e.value.is_some() || now.saturating_since(e.changed_at) < ttl);
            collected += (before - map.len()) as u64;
            !map.is_empty()
        });
        self.counters.tombstones_collected += collected;
    }
}
