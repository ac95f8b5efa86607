//! Signed claims (DESIGN section 2): a node can only speak for itself, even through relays.
//!
//! Every Alive, Left and state record carries its subject's signature. One that would change
//! what this node holds is checked before it is applied or relayed: with the subject's
//! credential when this node holds the certificate the signature names, with a certificate
//! carried in the same push/pull, or else it is held while the node that relayed it is asked
//! for that certificate (the relay checked the claim, so it holds it). A claim whose signature
//! does not verify, or whose certificate is refused (another CA, blocklisted, another node's
//! name), is dropped and counted in `claims_refused`: never applied, never relayed.
//!
//! Accusations (suspect, dead) may come from any member, as SWIM needs, but only at an
//! incarnation their subject signed: each carries the subject's own signature of its Alive in
//! that life, which every accuser holds. So the subject can always refute, and an accusation of
//! a life this node has not heard of also brings the news that the subject lives in it, which
//! ends a suspicion of an older life.

use super::Mesh;
use super::credentials::{HeldClaim, Hold};
use super::entries::Onward;
use crate::codec::{
    Body, CertificateRecord, Life, MemberRecord, MemberState, Signature, StateRecord, claim,
};
use crate::signing::{Credential, Signatures, key_id};
use crate::store::Store;
use crate::time::micros;
use crate::{Error, NodeName, Target, Time};

/// What a claim's signature says, as far as this node can tell now.
enum Check {
    /// Made by its subject.
    Valid,
    /// Not made by its subject, or its certificate was refused.
    Refused,
    /// Signed under a certificate this node does not hold.
    Unknown,
}

/// A claim that a member is suspect or dead in one of its lives.
pub(super) struct Accusation {
    pub(super) name: NodeName,
    pub(super) incarnation: u64,
    /// The accused's own Alive in that life, needed where this node holds an older one.
    pub(super) life: Option<Life>,
    /// Dead rather than suspect.
    pub(super) dead: bool,
    /// The member that first made it.
    pub(super) source: NodeName,
    /// From gossip, where a death is a verdict, rather than a stream exchange's record.
    pub(super) gossip: bool,
}

/// What a message carried of the certificate a claim names.
enum Inline {
    Absent,
    Refused,
    Admitted(Credential),
}

/// Bytes an answer of certificates keeps free for everything but the certificates.
const ANSWER_OVERHEAD: usize = 64;

impl<S: Store> Mesh<S> {
    /// Signs `claim` with this node's key.
    pub(super) fn sign(&mut self, claim: &[u8]) -> Signature {
        super::sign(self.signatures.as_mut(), self.own.0, claim)
    }

    /// Whether an accusation of `name` at `incarnation` is at a life this node holds `name`
    /// in, or an older one (ignored anyway). A higher one may be a life this node has not heard
    /// of yet, or a number a forger chose so that the subject could never refute: its
    /// signature says which.
    pub(super) fn accusation_signed(&self, name: &NodeName, incarnation: u64) -> bool {
        if *name == self.me {
            return incarnation <= self.incarnation;
        }
        self.members
            .get(name)
            .is_some_and(|m| incarnation <= m.incarnation)
    }

    /// Receives a member record that `relay` sent: an Alive or Left from gossip, or any record
    /// of a stream exchange, whose `inline` certificates may include the subject's. `onward`
    /// says whether an Alive or Left goes on by piggyback, as for state records
    /// ([`Mesh::apply_state`]).
    pub(super) fn receive_member(
        &mut self,
        record: MemberRecord,
        onward: Onward,
        relay: &NodeName,
        inline: &[CertificateRecord],
        now: Time,
    ) {
        if matches!(record.state, MemberState::Suspect | MemberState::Dead) {
            let accusation = Accusation {
                name: record.name,
                incarnation: record.incarnation,
                life: Some(Life {
                    addr: record.addr,
                    signature: record.signature,
                }),
                dead: record.state == MemberState::Dead,
                source: relay.clone(),
                gossip: false,
            };
            self.receive_accusation(accusation, relay, now);
            return;
        }
        if !self.member_news(&record) {
            return;
        }
        let claim = record.claim();
        match self.check(&record.name, &claim, &record.signature, inline) {
            Check::Valid => self.apply_member(record, onward, now),
            Check::Refused => self.counters.claims_refused += 1,
            Check::Unknown if record.name != self.me => {
                let (subject, key_id) = (record.name.clone(), record.signature.key_id());
                let relay = relay.clone();
                let claim = HeldClaim::Member {
                    record,
                    relay: relay.clone(),
                    piggyback: onward == Onward::Piggyback,
                };
                self.hold(&subject, key_id, claim, &relay, now);
            }
            // A previous certificate of this node's own: nothing to ask anyone for.
            Check::Unknown => {}
        }
    }

    /// Whether a member record would change what this node holds, so that its signature is
    /// worth checking. Only an Alive introduces a member; an accusation is news when it is at
    /// an incarnation above the one this node holds of a live member.
    fn member_news(&self, record: &MemberRecord) -> bool {
        if record.name == self.me {
            return !self.left
                && match record.state {
                    MemberState::Alive => record.incarnation > self.incarnation,
                    MemberState::Left => record.incarnation >= self.incarnation,
                    MemberState::Suspect | MemberState::Dead => true,
                };
        }
        let Some(member) = self.members.get(&record.name) else {
            return record.state == MemberState::Alive;
        };
        match record.state {
            MemberState::Alive => record.incarnation > member.incarnation,
            MemberState::Left => {
                (record.incarnation, record.state.rank())
                    > (member.incarnation, member.state.rank())
            }
            MemberState::Suspect | MemberState::Dead => member.state.is_live(),
        }
    }

    /// Applies a member's Alive or Left whose signature was checked.
    fn apply_member(&mut self, record: MemberRecord, onward: Onward, now: Time) {
        let MemberRecord {
            name,
            addr,
            incarnation,
            state,
            signature,
        } = record;
        if state == MemberState::Left {
            self.on_left(name, addr, incarnation, signature, onward, now);
        } else {
            self.on_alive(name, addr, incarnation, signature, onward, now);
        }
    }

    /// Receives an accusation that `relay` sent: from gossip, or a stream exchange's record of
    /// a suspect or dead member.
    pub(super) fn receive_accusation(
        &mut self,
        accusation: Accusation,
        relay: &NodeName,
        now: Time,
    ) {
        let Accusation {
            name,
            incarnation,
            life,
            dead,
            source,
            gossip,
        } = accusation;
        if !self.accusation_signed(&name, incarnation) {
            // A life this node has not heard of: it stands only with the accused's signature
            // of it, which makes the accused alive in that life (ending a suspicion of an
            // older one) before it is accused in it.
            let Some(Life { addr, signature }) = life else {
                return;
            };
            let record = MemberRecord {
                name,
                addr,
                incarnation,
                state: if dead {
                    MemberState::Dead
                } else {
                    MemberState::Suspect
                },
                signature,
            };
            if !self.member_news(&record) {
                return;
            }
            let claim = claim::alive(&record.name, addr, incarnation);
            match self.check(&record.name, &claim, &signature, &[]) {
                // The Alive it carries needs no rumour of its own: the accusation goes on.
                Check::Valid => self.on_alive(
                    record.name.clone(),
                    addr,
                    incarnation,
                    signature,
                    Onward::StreamsOnly,
                    now,
                ),
                Check::Refused => {
                    self.counters.claims_refused += 1;
                    return;
                }
                Check::Unknown if record.name != self.me => {
                    let (subject, key_id) = (record.name.clone(), signature.key_id());
                    let claim = HeldClaim::Member {
                        record,
                        relay: relay.clone(),
                        piggyback: false,
                    };
                    self.hold(&subject, key_id, claim, relay, now);
                    return;
                }
                Check::Unknown => return,
            }
            return self.receive_accusation(
                Accusation {
                    name: record.name,
                    incarnation,
                    life: None,
                    dead,
                    source,
                    gossip,
                },
                relay,
                now,
            );
        }
        if self.doubts(&name, incarnation, &source, relay, dead, now) {
            return;
        }
        // A death from a stream exchange only raises a suspicion: the sender may be on the
        // other side of a partition that just healed, and the accused deserves the chance to
        // refute.
        if dead && gossip {
            self.on_dead(name, incarnation, source, now);
        } else {
            self.on_suspect(name, incarnation, source, now);
        }
    }

    /// Receives a record of replicated state that `relay` sent; `inline` as for
    /// [`Mesh::receive_member`].
    pub(super) fn receive_state(
        &mut self,
        record: StateRecord,
        onward: Onward,
        relay: &NodeName,
        inline: &[CertificateRecord],
        now: Time,
    ) {
        if !self.record_in_bounds(&record) {
            self.counters.bad_records += 1;
            return;
        }
        let mine = record.owner == self.me;
        let news = if mine {
            self.own_record_news(&record)
        } else if self.members.contains_key(&record.owner)
            || self.credentials.holds_any(&record.owner)
        {
            self.state_news(&record)
        } else {
            // Membership news comes first (and in the same anti-entropy bucket), so an entry
            // of an unknown owner is either early or about a collected member: safe to skip.
            false
        };
        if !news {
            return;
        }
        let claim = record.claim();
        match self.check(&record.owner, &claim, &record.signature, inline) {
            Check::Valid if mine => self.bury_own_record(record, now),
            Check::Valid if self.members.contains_key(&record.owner) => {
                self.apply_state(record, onward, now);
            }
            Check::Valid => {}
            Check::Refused => self.counters.claims_refused += 1,
            Check::Unknown if !mine => {
                let (owner, key_id) = (record.owner.clone(), record.signature.key_id());
                let claim = HeldClaim::State {
                    record,
                    relay: relay.clone(),
                    piggyback: onward == Onward::Piggyback,
                };
                self.hold(&owner, key_id, claim, relay, now);
            }
            Check::Unknown => {}
        }
    }

    /// Checks `subject`'s `signature` over `claim`: with the subject's credential if it is
    /// the one the signature names, else with the subject's certificate in `inline`, which is
    /// admitted first.
    fn check(
        &mut self,
        subject: &NodeName,
        claim: &[u8],
        signature: &Signature,
        inline: &[CertificateRecord],
    ) -> Check {
        let id = signature.key_id();
        let credential = if *subject == self.me {
            if self.own.0 != id {
                if self.signed_by_another(subject, claim, signature) {
                    return Check::Refused;
                }
                return Check::Unknown;
            }
            self.own.1.clone()
        } else {
            match self.credentials.get(subject) {
                Some((known, credential)) if *known == id => credential.clone(),
                _ => match self.admit_inline(subject, id, inline) {
                    Inline::Admitted(credential) => credential,
                    Inline::Refused => return Check::Refused,
                    Inline::Absent if self.signed_by_another(subject, claim, signature) => {
                        return Check::Refused;
                    }
                    Inline::Absent => return Check::Unknown,
                },
            }
        };
        if self
            .signatures
            .verify(&credential.key, claim, &signature.bytes())
        {
            Check::Valid
        } else {
            Check::Refused
        }
    }

    /// Whether `signature` of a claim about `subject` was made with another member's key:
    /// a certificate names one node only, so that is a forgery, told at once rather than
    /// after asking for a certificate. The signature is checked, so two certificates whose
    /// key ids happen to be equal never make a real claim look forged.
    fn signed_by_another(
        &mut self,
        subject: &NodeName,
        claim: &[u8],
        signature: &Signature,
    ) -> bool {
        let key = match self.credentials.by_key(signature.key_id()) {
            Some((other, credential)) if other != subject => credential.key.clone(),
            _ => return false,
        };
        self.signatures.verify(&key, claim, &signature.bytes())
    }

    /// Admits the certificate of `subject` with key id `wanted` carried in `inline`, and makes
    /// it the subject's credential. A certificate the mesh's CA issued to the subject is safe
    /// to use whatever claim brought it.
    fn admit_inline(
        &mut self,
        subject: &NodeName,
        wanted: u32,
        inline: &[CertificateRecord],
    ) -> Inline {
        let Some(record) = inline
            .iter()
            .find(|c| c.name == *subject && key_id(&c.der) == wanted)
        else {
            return Inline::Absent;
        };
        match self.signatures.admit(subject, &record.der) {
            Some(credential) => {
                self.credentials
                    .install(subject.clone(), wanted, credential.clone());
                Inline::Admitted(credential)
            }
            None => Inline::Refused,
        }
    }

    /// Holds `claim` of `subject` until the certificate with key id `key_id` arrives, and asks
    /// for it unless it was asked for less than a probe timeout ago: the relay, which checked
    /// the claim and so holds the certificate, or, when this node cannot address the relay (a
    /// datagram does not say where its sender is), the subject itself at the address its own
    /// Alive gives. The transport checks the name of whoever answers there, so a false address
    /// only fails.
    fn hold(
        &mut self,
        subject: &NodeName,
        key_id: u32,
        claim: HeldClaim,
        relay: &NodeName,
        now: Time,
    ) {
        let claimed_addr = match &claim {
            HeldClaim::Member { record, .. } => Some(record.addr),
            HeldClaim::State { .. } => None,
        };
        let max = self.config.claims_held_max;
        // An ask without an answer within a probe timeout is taken as lost, as a probe is.
        let retry = micros(self.config.probe_timeout);
        match self
            .credentials
            .hold(subject, key_id, claim, now, max, retry)
        {
            Hold::Ask => {
                self.counters.claims_held += 1;
                let ask = match self.members.get(relay) {
                    Some(member) => Some((relay.clone(), member.addr)),
                    None => claimed_addr.map(|addr| (subject.clone(), addr)),
                };
                let Some((whom, addr)) = ask else {
                    // Another relay brings the claim again.
                    return;
                };
                self.credentials.asked(subject, key_id, now);
                let names = &mut self.asks.entry(whom).or_insert((addr, Vec::new())).1;
                if !names.contains(subject) {
                    names.push(subject.clone());
                }
            }
            Hold::Wait => self.counters.claims_held += 1,
            Hold::Full => self.counters.claims_dropped += 1,
        }
    }

    /// Sends the certificate requests the last input called for, one message per relay (or
    /// several, of `certificates_wanted_max` names each).
    pub(super) fn flush_asks(&mut self) {
        let asks = std::mem::take(&mut self.asks);
        for (relay, (addr, names)) in asks {
            for chunk in names.chunks(self.config.certificates_wanted_max) {
                let to = Target {
                    addr,
                    name: Some(relay.clone()),
                };
                let body = Body::CertificatesWanted {
                    names: chunk.to_vec(),
                };
                self.send_message(to, body);
            }
        }
    }

    /// Answers a request for certificates with those this node holds, its own included, as
    /// many as `certificates_wanted_max` and the message size allow.
    pub(super) fn answer_certificates(&mut self, reply_to: Target, names: Vec<NodeName>) {
        let mut budget = self.config.message_size_max - ANSWER_OVERHEAD;
        let mut certificates = Vec::new();
        for name in names.into_iter().take(self.config.certificates_wanted_max) {
            let der = if name == self.me {
                self.signatures.certificate()
            } else {
                match self.credentials.get(&name) {
                    Some((_, credential)) => credential.certificate.clone(),
                    None => continue,
                }
            };
            // A certificate, its name and their length prefixes.
            let size = der.len() + name.as_str().len() + 16;
            if size > budget {
                break;
            }
            budget -= size;
            certificates.push(CertificateRecord {
                name,
                der: der.to_vec(),
            });
        }
        if !certificates.is_empty() {
            self.send_message(reply_to, Body::Certificates { certificates });
        }
    }

    /// Certificates this node asked for arrived: each one that claims are waiting for is
    /// admitted and the claims are checked with it; unasked ones are ignored, so nobody fills
    /// this node's credentials with certificates no claim needs.
    pub(super) fn on_certificates(&mut self, certificates: Vec<CertificateRecord>, now: Time) {
        for record in certificates
            .into_iter()
            .take(self.config.certificates_wanted_max)
        {
            let id = key_id(&record.der);
            if !self.credentials.holds(&record.name, id) {
                continue;
            }
            let key = (record.name.clone(), id);
            match self.signatures.admit(&record.name, &record.der) {
                Some(credential) => {
                    self.credentials.install(record.name, id, credential);
                    self.release(&key, now);
                }
                None => {
                    let refused = self.credentials.take(&key).map_or(0, |h| h.claims.len());
                    self.counters.claims_refused += refused as u64;
                }
            }
        }
    }

    /// Checks and applies the claims held for `key`, whose certificate just became the
    /// subject's credential: the member's own claim first, since only it makes the subject a
    /// member whose state this node keeps.
    fn release(&mut self, key: &(NodeName, u32), now: Time) {
        let Some(held) = self.credentials.take(key) else {
            return;
        };
        let (members, states): (Vec<_>, Vec<_>) = held
            .claims
            .into_iter()
            .partition(|c| matches!(c, HeldClaim::Member { .. }));
        let onward = |piggyback: bool| {
            if piggyback {
                Onward::Piggyback
            } else {
                Onward::StreamsOnly
            }
        };
        for claim in members.into_iter().chain(states) {
            match claim {
                HeldClaim::Member {
                    record,
                    relay,
                    piggyback,
                } => {
                    self.receive_member(record, onward(piggyback), &relay, &[], now);
                }
                HeldClaim::State {
                    record,
                    relay,
                    piggyback,
                } => {
                    self.receive_state(record, onward(piggyback), &relay, &[], now);
                }
            }
        }
    }

    /// Drops the claims that waited `certificate_wait` for their certificate.
    pub(super) fn expire_held(&mut self, now: Time) {
        if self.credentials.held_count() == 0 {
            return;
        }
        let wait = micros(self.config.certificate_wait);
        let Some(deadline) = now.as_micros().checked_sub(wait) else {
            return;
        };
        let dropped = self.credentials.expire(Time::from_micros(deadline));
        self.counters.claims_dropped += dropped as u64;
    }

    /// Puts `signatures` in force, as after a reload of the node's certificates, CA bundle and
    /// blocklist: every credential admitted so far is admitted again, and a member whose
    /// certificate is now refused is expelled; if this node's own certificate changed, it signs
    /// its claims again (a new incarnation, and every live state entry written again), so
    /// members that meet its new certificate can check them.
    pub fn set_signatures(
        &mut self,
        mut signatures: Box<dyn Signatures>,
        now: Time,
    ) -> Result<(), Error> {
        let own = super::own_credential(signatures.as_mut(), &self.me)?;
        let renewed = own.0 != self.own.0;
        self.signatures = signatures;
        self.own = own;
        for subject in self.credentials.subjects() {
            let Some((_, credential)) = self.credentials.get(&subject) else {
                continue;
            };
            let certificate = credential.certificate.clone();
            if self.signatures.admit(&subject, &certificate).is_none() {
                self.counters.claims_refused += self.credentials.forget(&subject) as u64;
                self.expel(subject, now);
            }
        }
        if renewed && !self.left {
            let incarnation = self.incarnation;
            self.refute(incarnation, now);
            let me = self.me.clone();
            let live: Vec<(String, Vec<u8>)> = self
                .entries
                .get(&me)
                .into_iter()
                .flat_map(|map| map.iter())
                .filter_map(|(k, e)| e.value.clone().map(|v| (k.clone(), v)))
                .collect();
            for (key, value) in live {
                self.write_own(key, Some(value), Onward::StreamsOnly, now);
            }
        }
        Ok(())
    }
}
