//! Other members' credentials, and the claims waiting for one (DESIGN section 2).
//!
//! A claim names the certificate whose key signed it by key id. When this node holds that
//! certificate for the claim's subject it checks the claim at once; when it does not (a member
//! it has not met, or one that renewed its certificate), it holds the claim and asks the node
//! that relayed it, which checked the claim itself and so holds the certificate. The held
//! claims are bounded in number and in time: a relay that never answers costs a few kilobytes
//! for `certificate_wait`.

use std::collections::BTreeMap;

use crate::codec::{MemberRecord, StateRecord};
use crate::signing::Credential;
use crate::{NodeName, Time};

/// A claim held until its certificate arrives, with what its arrival said about it.
#[derive(Debug, Clone)]
pub(super) enum HeldClaim {
    /// A member's Alive or Left (from gossip or a stream exchange), or a stream exchange's
    /// suspect or dead record at an incarnation this node has not seen, who relayed it, and
    /// whether it goes on by piggyback once checked.
    Member {
        record: MemberRecord,
        relay: NodeName,
        piggyback: bool,
    },
    /// A record of the subject's replicated state, who relayed it, and whether it goes on by
    /// piggyback once checked.
    State {
        record: StateRecord,
        relay: NodeName,
        piggyback: bool,
    },
}

/// The claims of one subject signed under one key.
#[derive(Debug)]
pub(super) struct Held {
    /// When this node first held a claim under this key: it is dropped `certificate_wait`
    /// later if the certificate has not come.
    pub(super) since: Time,
    /// When the certificate was last asked for, if it was: the first relays may be nodes this
    /// node cannot address yet.
    pub(super) asked: Option<Time>,
    pub(super) claims: Vec<HeldClaim>,
}

/// What [`Credentials::hold`] did with a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    /// Held, and nobody was asked for the certificate yet, or the last ask is older than the
    /// `retry` given to [`Credentials::hold`] and was presumably lost (a broken stream, a relay
    /// that crashed): ask again, this claim's relay.
    Ask,
    /// Held next to earlier claims under the same key, whose certificate is asked for.
    Wait,
    /// Not held: `claims_held_max` claims are waiting already.
    Full,
}

#[derive(Debug, Default)]
pub(super) struct Credentials {
    /// Each subject's credential: the one its newest checked claims were signed under, with
    /// the certificate's key id.
    known: BTreeMap<NodeName, (u32, Credential)>,
    /// The subject of each credential above, by key id, to tell a claim signed with another
    /// member's key.
    by_key: BTreeMap<u32, NodeName>,
    /// Claims waiting for a certificate, by subject and key id.
    held: BTreeMap<(NodeName, u32), Held>,
    held_count: usize,
}

impl Credentials {
    /// `subject`'s credential and its key id, if this node holds one.
    pub(super) fn get(&self, subject: &NodeName) -> Option<&(u32, Credential)> {
        self.known.get(subject)
    }

    /// The member whose credential has key id `key_id`, with the credential.
    pub(super) fn by_key(&self, key_id: u32) -> Option<(&NodeName, &Credential)> {
        let subject = self.by_key.get(&key_id)?;
        let (_, credential) = self.known.get(subject)?;
        Some((subject, credential))
    }

    /// Makes `credential` the one `subject`'s claims are checked with from now on.
    pub(super) fn install(&mut self, subject: NodeName, key_id: u32, credential: Credential) {
        if let Some((old, _)) = self.known.insert(subject.clone(), (key_id, credential)) {
            self.unindex(old, &subject);
        }
        self.by_key.insert(key_id, subject);
    }

    fn unindex(&mut self, key_id: u32, subject: &NodeName) {
        if self.by_key.get(&key_id) == Some(subject) {
            self.by_key.remove(&key_id);
        }
    }

    /// Forgets `subject`'s credential (its member was collected or refused) and every claim
    /// of it still held; returns how many claims were held.
    pub(super) fn forget(&mut self, subject: &NodeName) -> usize {
        if let Some((key_id, _)) = self.known.remove(subject) {
            self.unindex(key_id, subject);
        }
        let keys: Vec<(NodeName, u32)> = self
            .held
            .range((subject.clone(), 0)..=(subject.clone(), u32::MAX))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter()
            .map(|k| self.take(k).map_or(0, |h| h.claims.len()))
            .sum()
    }

    /// Subjects with a credential, in name order.
    pub(super) fn subjects(&self) -> Vec<NodeName> {
        self.known.keys().cloned().collect()
    }

    /// Whether any claim of `subject` is held.
    pub(super) fn holds_any(&self, subject: &NodeName) -> bool {
        self.held
            .range((subject.clone(), 0)..=(subject.clone(), u32::MAX))
            .next()
            .is_some()
    }

    /// Whether a claim of `subject` under `key_id` is held.
    pub(super) fn holds(&self, subject: &NodeName, key_id: u32) -> bool {
        self.held.contains_key(&(subject.clone(), key_id))
    }

    /// Holds `claim` of `subject`, signed under `key_id`, unless `max` claims are held
    /// already. A newer claim about the same thing replaces an older one, so a subject's
    /// claims held under one key never outnumber its records. A claim that arrives `retry`
    /// or more after the last ask asks again; the claims' deadline stays that of the first.
    pub(super) fn hold(
        &mut self,
        subject: &NodeName,
        key_id: u32,
        claim: HeldClaim,
        now: Time,
        max: usize,
        retry: u64,
    ) -> Hold {
        let key = (subject.clone(), key_id);
        let held = self.held.get_mut(&key);
        let asked = held
            .as_ref()
            .and_then(|h| h.asked)
            .is_some_and(|at| now.as_micros() < at.as_micros().saturating_add(retry));
        let outcome = if asked { Hold::Wait } else { Hold::Ask };
        if let Some(held) = held
            && let Some(older) = held.claims.iter_mut().find(|c| same_subject(c, &claim))
        {
            if newer(&claim, older) {
                *older = claim;
            }
            return outcome;
        }
        if self.held_count >= max {
            return Hold::Full;
        }
        self.held_count += 1;
        self.held
            .entry(key)
            .or_insert_with(|| Held {
                since: now,
                asked: None,
                claims: Vec::new(),
            })
            .claims
            .push(claim);
        outcome
    }

    /// Notes that the certificate of `subject` with key id `key_id` was asked for at `now`.
    pub(super) fn asked(&mut self, subject: &NodeName, key_id: u32, now: Time) {
        if let Some(held) = self.held.get_mut(&(subject.clone(), key_id)) {
            held.asked = Some(now);
        }
    }

    /// Takes the claims held for `subject` under `key_id`.
    pub(super) fn take(&mut self, key: &(NodeName, u32)) -> Option<Held> {
        let held = self.held.remove(key)?;
        self.held_count -= held.claims.len();
        Some(held)
    }

    /// Drops the claims held since `deadline` or earlier; returns how many.
    pub(super) fn expire(&mut self, deadline: Time) -> usize {
        let expired: Vec<(NodeName, u32)> = self
            .held
            .iter()
            .filter(|(_, h)| h.since <= deadline)
            .map(|(k, _)| k.clone())
            .collect();
        expired
            .iter()
            .map(|k| self.take(k).map_or(0, |h| h.claims.len()))
            .sum()
    }

    /// Claims held.
    pub(super) fn held_count(&self) -> usize {
        self.held_count
    }
}

/// Whether two held claims are about the same thing: the member itself, or one key of its
/// state.
fn same_subject(a: &HeldClaim, b: &HeldClaim) -> bool {
    match (a, b) {
        (HeldClaim::Member { .. }, HeldClaim::Member { .. }) => true,
        (HeldClaim::State { record: x, .. }, HeldClaim::State { record: y, .. }) => x.key == y.key,
        _ => false,
    }
}

/// Whether `a` supersedes `b`, claims about the same thing.
fn newer(a: &HeldClaim, b: &HeldClaim) -> bool {
    match (a, b) {
        (HeldClaim::Member { record: x, .. }, HeldClaim::Member { record: y, .. }) => {
            (x.incarnation, x.state.rank()) > (y.incarnation, y.state.rank())
        }
        (HeldClaim::State { record: x, .. }, HeldClaim::State { record: y, .. }) => {
            (x.generation, x.version) > (y.generation, y.version)
        }
        _ => false,
    }
}
