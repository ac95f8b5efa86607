//! Persistence of membership (DESIGN section 6): a bounded sample of live members kept in the
//! store, so a restarted node rejoins the mesh without seeds, also after a graceful leave.

use super::Mesh;
use crate::NodeName;
use crate::codec::{self, MemberState};
use crate::store::{Store, Table, WriteBatch};

impl<S: Store> Mesh<S> {
    /// Notes that `name`'s stored record, if it has one, is out of date.
    pub(super) fn mark_dirty(&mut self, name: &NodeName) {
        if self.persisted.contains(name) {
            self.dirty.insert(name.clone());
        }
    }

    /// Keeps a sample of up to `members_persisted_max` live members in the store, so a
    /// restarted node can rejoin through them: records that changed are rewritten, members that
    /// died are deleted, and random live members fill the free places. A member that left
    /// stays until its tombstone is collected: a graceful leave is how a node stops for a
    /// restart or maintenance, and when every node of a small mesh was stopped that way, the
    /// members that left are the only way back in. The first write once connected replaces the
    /// previous life's records wholesale. The cost follows churn among the sampled members, not
    /// N.
    pub(super) fn persist_members(&mut self) {
        if self.full_rewrite && self.members.live_len() == 0 {
            // Keep the previous life's members: they are the way back in.
            return;
        }
        let mut batch = WriteBatch::new();
        if self.full_rewrite {
            // Keys that are not even valid names (corrupt records) go as well.
            for key in &self.stale {
                batch.delete(Table::Members, key.clone());
            }
        }
        let (mut written, mut deleted) = (Vec::new(), Vec::new());
        for name in &self.dirty {
            let stays = |state: MemberState| state.is_live() || state == MemberState::Left;
            match self.members.get(name).filter(|m| stays(m.state)) {
                Some(m) => {
                    batch.put(
                        Table::Members,
                        name.as_str(),
                        codec::encode_member(&m.record(name)),
                    );
                    written.push(name.clone());
                }
                None => {
                    batch.delete(Table::Members, name.as_str());
                    deleted.push(name.clone());
                }
            }
        }
        let kept = self.persisted.len().saturating_sub(deleted.len());
        let free = self.config.members_persisted_max.saturating_sub(kept);
        if free > 0 && self.members.live_len() > kept {
            let persisted = &self.persisted;
            for name in self
                .members
                .sample_live(&mut self.rng, free, |n, _| !persisted.contains(n))
            {
                if let Some(m) = self.members.get(&name) {
                    batch.put(
                        Table::Members,
                        name.as_str(),
                        codec::encode_member(&m.record(&name)),
                    );
                    written.push(name);
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        match self.store.write(batch) {
            Ok(()) => {
                if self.full_rewrite {
                    self.stale.clear();
                    self.full_rewrite = false;
                }
                for name in &deleted {
                    self.persisted.remove(name);
                }
                self.persisted.extend(written);
                self.dirty.clear();
            }
            // Stays dirty, so the next tick retries; the refill is drawn again.
            Err(_) => self.counters.store_write_failures += 1,
        }
    }
}
