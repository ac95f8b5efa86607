//! Stream exchanges (DESIGN sections 3 and 4): the join push/pull, re-contacting seeds and dead
//! members so partitions and islands heal, and anti-entropy, which compares a summary hash of
//! the digest first and drills into buckets only where they differ, so its steady cost does not
//! grow with the mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::digest::summary;
#[cfg(test)]
use super::digest::{Digest, entry_hash};
use super::entries::Onward;
use super::state::state_record;
use super::{MESSAGE_OVERHEAD, Mesh, sample, shuffle};
use crate::codec::{
    self, Body, CertificateRecord, MemberRecord, MemberState, Message, StateRecord,
};
use crate::store::Store;
use crate::{NodeName, Output, Target, Time};

impl<S: Store> Mesh<S> {
    pub(super) fn send_message(&mut self, to: Target, body: Body) {
        let bytes = codec::encode_message(&Message {
            addr: self.addr,
            body,
        });
        debug_assert!(bytes.len() <= self.config.message_size_max);
        self.push_output(Output::Message { to, bytes });
    }

    fn my_record(&self) -> MemberRecord {
        MemberRecord {
            name: self.me.clone(),
            addr: self.addr,
            incarnation: self.incarnation,
            state: if self.left {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            signature: self.own_claim,
        }
    }

    /// A full push/pull: every member with its certificate, so the receiver can check each
    /// one's claims without asking, then every state entry, as many as `message_size_max`
    /// allows.
    pub(super) fn send_push_pull(&mut self, to: Target, reply: bool) {
        let mut budget = self.config.message_size_max - MESSAGE_OVERHEAD;
        let mut truncated = false;
        let mut members = Vec::new();
        let mut certificates = Vec::new();
        let own = (self.my_record(), self.signatures.certificate());
        let others = self.members.sorted().into_iter().filter_map(|(n, m)| {
            let (_, credential) = self.credentials.get(n)?;
            Some((m.record(n), credential.certificate.clone()))
        });
        for (record, der) in std::iter::once(own).chain(others) {
            let certificate = CertificateRecord {
                name: record.name.clone(),
                der: der.to_vec(),
            };
            let size = codec::body_size(&record) + codec::body_size(&certificate);
            if size > budget {
                truncated = true;
                break;
            }
            budget -= size;
            members.push(record);
            certificates.push(certificate);
        }
        let mut entries = Vec::new();
        'owners: for (owner, map) in &self.entries {
            for (key, e) in map {
                let record = state_record(owner, key, e);
                let size = codec::body_size(&record);
                if size > budget {
                    truncated = true;
                    break 'owners;
                }
                budget -= size;
                entries.push(record);
            }
        }
        if truncated {
            // Anti-entropy completes what did not fit.
            self.counters.messages_truncated += 1;
        }
        self.send_message(
            to,
            Body::PushPull {
                reply,
                members,
                entries,
                certificates,
            },
        );
    }

    pub(super) fn contact_rejoin_candidates(&mut self) {
        let candidates = self.rejoin.clone();
        for (name, addr) in sample(&mut self.rng, candidates, self.config.rejoin_fanout) {
            self.send_push_pull(
                Target {
                    addr,
                    name: Some(name),
                },
                true,
            );
        }
    }

    pub(super) fn reconnect(&mut self) {
        if self.left {
            return;
        }
        if self.members.live_len() == 0 {
            // Alone: a full push/pull with every seed, else with some last known members.
            let seeds: Vec<SocketAddr> = self
                .seeds
                .iter()
                .copied()
                .filter(|s| *s != self.addr)
                .collect();
            if seeds.is_empty() {
                self.contact_rejoin_candidates();
            }
            for seed in seeds {
                self.send_push_pull(
                    Target {
                        addr: seed,
                        name: None,
                    },
                    true,
                );
            }
            return;
        }
        // Connected: a cheap summary exchange with one seed and one dead member is enough to
        // notice (and then repair) a partition or an island.
        let hash = summary(&self.digest());
        let seeds: Vec<SocketAddr> = self
            .seeds
            .iter()
            .copied()
            .filter(|s| *s != self.addr)
            .collect();
        if let Some(seed) = sample(&mut self.rng, seeds, 1).pop() {
            self.send_message(
                Target {
                    addr: seed,
                    name: None,
                },
                Body::SyncSummary { hash },
            );
        }
        let mut dead: Vec<(NodeName, SocketAddr)> = if self.has_departed() {
            self.members
                .iter()
                .filter(|(_, m)| m.state == MemberState::Dead)
                .map(|(name, m)| (name.clone(), m.addr))
                .collect()
        } else {
            Vec::new()
        };
        dead.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some((name, addr)) = sample(&mut self.rng, dead, 1).pop() {
            self.send_message(
                Target {
                    addr,
                    name: Some(name),
                },
                Body::SyncSummary { hash },
            );
        }
    }

    pub(super) fn start_sync(&mut self) {
        if self.left {
            return;
        }
        let members = &self.members;
        let partner = members
            .sample_live(&mut self.rng, 1, |_, m| m.state == MemberState::Alive)
            .pop()
            .and_then(|name| members.get(&name).map(|m| (name, m.addr)));
        if let Some((name, addr)) = partner {
            let hash = summary(&self.digest());
            self.send_message(
                Target {
                    addr,
                    name: Some(name),
                },
                Body::SyncSummary { hash },
            );
        }
    }

    pub(super) fn bucket_of(&self, name: &NodeName) -> u16 {
        self.digest.bucket_of(name)
    }

    pub(super) fn digest(&self) -> Vec<u64> {
        self.digest.buckets().to_vec()
    }

    /// Brings `owner`'s contribution to the digest up to date after a change of its liveness,
    /// incarnation or entries.
    pub(super) fn refresh_digest(&mut self, owner: &NodeName) {
        if *owner == self.me {
            let live_incarnation = (!self.left).then_some(self.incarnation);
            self.digest
                .set_owner(owner, live_incarnation, &mut self.own_digested);
        } else if let Some(m) = self.members.get_mut(owner) {
            let live_incarnation = m.state.is_live().then_some(m.incarnation);
            self.digest
                .set_owner(owner, live_incarnation, &mut m.digested);
        }
    }

    /// The digest recomputed from scratch, to check the incremental one.
    #[cfg(test)]
    pub(super) fn digest_recomputed(&self) -> Vec<u64> {
        let mut check = Digest::new(self.config.sync_buckets);
        for (owner, map) in &self.entries {
            for (key, e) in map {
                let hash = entry_hash(owner, key, e.generation, e.version, e.value.is_some());
                check.entry_changed(owner, 0, hash);
            }
        }
        check.set_owner(&self.me, (!self.left).then_some(self.incarnation), &mut 0);
        for (name, m) in self.members.iter() {
            check.set_owner(name, m.state.is_live().then_some(m.incarnation), &mut 0);
        }
        check.buckets().to_vec()
    }

    /// Records of the given buckets (members first, then their entries, tombstones included),
    /// whole buckets only while they fit in the message budget.
    fn bucket_records(
        &self,
        wanted: &[u16],
    ) -> (Vec<u16>, Vec<MemberRecord>, Vec<StateRecord>, bool) {
        let wanted_set: BTreeSet<u16> = wanted.iter().copied().collect();
        let mut per_bucket: BTreeMap<u16, (Vec<MemberRecord>, Vec<StateRecord>)> = BTreeMap::new();
        // Members of the wanted buckets in name order; sorting only those keeps a sync of a
        // few buckets from paying for a sort of the whole table.
        let mut chosen: Vec<_> = self
            .members
            .iter()
            .filter(|(n, _)| wanted_set.contains(&self.bucket_of(n)))
            .collect();
        chosen.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let all =
            std::iter::once(self.my_record()).chain(chosen.into_iter().map(|(n, m)| m.record(n)));
        for record in all {
            let bucket = self.bucket_of(&record.name);
            if !wanted_set.contains(&bucket) {
                continue;
            }
            let slot = per_bucket.entry(bucket).or_default();
            for (key, e) in self.entries.get(&record.name).into_iter().flatten() {
                slot.1.push(state_record(&record.name, key, e));
            }
            slot.0.push(record);
        }
        let mut budget = self.config.message_size_max - MESSAGE_OVERHEAD;
        let (mut covered, mut members, mut entries) = (Vec::new(), Vec::new(), Vec::new());
        let mut truncated = false;
        for bucket in wanted {
            let (bucket_members, bucket_entries) = per_bucket.remove(bucket).unwrap_or_default();
            let size = 3
                + bucket_members.iter().map(codec::body_size).sum::<usize>()
                + bucket_entries.iter().map(codec::body_size).sum::<usize>();
            if size > budget {
                truncated = true;
                continue;
            }
            budget -= size;
            covered.push(*bucket);
            members.extend(bucket_members);
            entries.extend(bucket_entries);
        }
        (covered, members, entries, truncated)
    }

    pub(super) fn on_message(&mut self, from: NodeName, message: Message, now: Time) {
        self.heard_from(&from, now);
        let reply_to = Target {
            addr: message.addr,
            name: Some(from.clone()),
        };
        match message.body {
            Body::PushPull {
                reply,
                members,
                entries,
                certificates,
            } => {
                self.apply_records(&from, members, entries, &certificates, now);
                if reply {
                    self.send_push_pull(reply_to, false);
                }
            }
            Body::CertificatesWanted { names } => self.answer_certificates(reply_to, names),
            Body::Certificates { certificates } => self.on_certificates(certificates, now),
            Body::SyncSummary { hash } => {
                let digest = self.digest();
                if summary(&digest) != hash {
                    self.send_message(reply_to, Body::SyncBuckets { hashes: digest });
                }
            }
            Body::SyncBuckets { hashes } => {
                if hashes.len() != usize::from(self.config.sync_buckets) {
                    self.counters.bad_frames += 1;
                    return;
                }
                let digest = self.digest();
                let mut differing: Vec<u16> = (0..self.config.sync_buckets)
                    .filter(|&b| hashes.get(usize::from(b)) != digest.get(usize::from(b)))
                    .collect();
                if differing.is_empty() {
                    return;
                }
                // A random order, so a delta too big for one message covers other buckets next time.
                shuffle(&mut self.rng, &mut differing);
                let (buckets, members, entries, truncated) = self.bucket_records(&differing);
                if truncated {
                    self.counters.messages_truncated += 1;
                }
                self.send_message(
                    reply_to,
                    Body::SyncDelta {
                        reply: true,
                        buckets,
                        members,
                        entries,
                    },
                );
            }
            Body::SyncDelta {
                reply,
                buckets,
                members,
                entries,
            } => {
                if buckets.iter().any(|b| *b >= self.config.sync_buckets) {
                    self.counters.bad_frames += 1;
                    return;
                }
                let theirs_members: BTreeMap<NodeName, (u64, u8)> = members
                    .iter()
                    .map(|r| (r.name.clone(), (r.incarnation, r.state.rank())))
                    .collect();
                let theirs_entries: BTreeMap<(NodeName, String), (u64, u64)> = entries
                    .iter()
                    .map(|r| ((r.owner.clone(), r.key.clone()), (r.generation, r.version)))
                    .collect();
                self.apply_records(&from, members, entries, &[], now);
                if !reply {
                    return;
                }
                let (buckets, mut members, mut entries, truncated) = self.bucket_records(&buckets);
                if truncated {
                    self.counters.messages_truncated += 1;
                }
                // Send back only what the other side lacks or holds in an older version.
                members.retain(|r| {
                    theirs_members
                        .get(&r.name)
                        .is_none_or(|v| *v < (r.incarnation, r.state.rank()))
                });
                entries.retain(|r| {
                    theirs_entries
                        .get(&(r.owner.clone(), r.key.clone()))
                        .is_none_or(|v| *v < (r.generation, r.version))
                });
                if !members.is_empty() || !entries.is_empty() {
                    let body = Body::SyncDelta {
                        reply: false,
                        buckets,
                        members,
                        entries,
                    };
                    self.send_message(reply_to, body);
                }
            }
        }
    }

    /// Receives the records of a push/pull or an anti-entropy delta from `from`, members
    /// first; `certificates` are those the message carried. What an exchange teaches goes on
    /// by the exchanges only, except the sender's own record: a node introducing itself in
    /// its join push/pull is news that its seed spreads by gossip. Without this rule every
    /// node joining through a seed would gossip the whole roster the seed gave it, each Alive
    /// with its 68-byte signature.
    fn apply_records(
        &mut self,
        from: &NodeName,
        members: Vec<MemberRecord>,
        entries: Vec<StateRecord>,
        certificates: &[CertificateRecord],
        now: Time,
    ) {
        for record in members {
            let onward = if record.name == *from {
                Onward::Piggyback
            } else {
                Onward::StreamsOnly
            };
            self.receive_member(record, onward, from, certificates, now);
        }
        for record in entries {
            self.receive_state(record, Onward::StreamsOnly, from, certificates, now);
        }
    }
}
