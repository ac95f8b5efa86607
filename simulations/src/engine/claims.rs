//! Signed claims in a run (DESIGN section 2): the forging node's frames, and the invariant
//! that no node holds an Alive, a Left or a state record about a node that this node did not
//! sign. The invariant is checked at every change a node announces (a member alive, suspect,
//! dead or gone, a state entry changed) and, for everything every node holds, at the end of
//! the run. What a node signed is written down by its signer as it signs, so the check does
//! not rest on the verification it checks.

use std::time::Duration;

use podmesh_mesh::forge::{self, Forgery};
use podmesh_mesh::{
    Event, MemberState, NodeName, PodName, PodRecord, PodStatus, Signature, claim, key_id,
};
use rand::Rng;

use super::{Ev, Sim, addr_of};

impl Sim {
    /// Checks that the claim behind `event`, which node `node` announced, was made by its
    /// subject.
    pub(super) fn check_claim(&mut self, node: usize, event: &Event) {
        let Some(r) = self.nodes[node].running.as_ref() else {
            return;
        };
        let mesh = r.mesh();
        let (subject, claim) = match event {
            Event::MemberAlive {
                node: subject,
                addr,
                incarnation,
            } => (subject, claim::alive(subject, *addr, *incarnation)),
            Event::MemberSuspect { node: subject, .. }
            | Event::MemberDead { node: subject, .. }
            | Event::MemberLeft { node: subject, .. } => {
                let Some(member) = mesh.member(subject) else {
                    return;
                };
                (subject, member_claim(subject, &member))
            }
            Event::StateChanged { node: owner, key } => {
                let Some(entry) = mesh.entry(owner, key) else {
                    return;
                };
                let claim = claim::state(owner, key, entry.generation, entry.version, entry.value);
                (owner, claim)
            }
        };
        if !self.signers.signed().contains(subject, &claim) {
            let what = format!("{event:?}");
            self.checker.violation(
                self.now,
                format!("n{node} holds a claim {subject} did not sign: {what}"),
            );
        }
    }

    /// Checks every member and state entry every running node holds.
    pub(super) fn check_all_claims(&mut self) {
        let mut unsigned = Vec::new();
        for (node, host) in self.nodes.iter().enumerate() {
            let Some(r) = host.running.as_ref() else {
                continue;
            };
            let mesh = r.mesh();
            let signed = self.signers.signed();
            for member in mesh.members() {
                if !signed.contains(&member.name, &member_claim(&member.name, &member)) {
                    unsigned.push(format!("n{node} holds {} {member:?}", member.name));
                }
            }
            for e in mesh.entries() {
                let claim = claim::state(e.owner, e.key, e.generation, e.version, e.value);
                if !signed.contains(e.owner, &claim) {
                    unsigned.push(format!("n{node} holds {}'s entry {:?}", e.owner, e.key));
                }
            }
        }
        let now = self.now;
        for what in unsigned {
            self.checker
                .violation(now, format!("a claim its subject did not sign: {what}"));
        }
    }

    /// Starts (`per_s` above zero) or stops the forger.
    pub(super) fn set_forging(&mut self, per_s: f64) {
        let was = self.forging;
        self.forging = per_s;
        if per_s > 0.0 && was == 0.0 {
            let gap = self.forge_gap();
            self.push(self.now + gap, Ev::Forge);
        }
    }

    /// The wait until the forger's next frame: exponential, `forging` a second on average.
    fn forge_gap(&mut self) -> Duration {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        Duration::from_secs_f64(-u.ln() / self.forging.max(f64::EPSILON))
    }

    /// The forger, the last node, sends one forged frame to a random running node.
    pub(super) fn forge(&mut self) {
        if self.forging == 0.0 {
            return;
        }
        let gap = self.forge_gap();
        self.push(self.now + gap, Ev::Forge);
        let forger = self.nodes.len() - 1;
        if self.nodes[forger].running.is_none() {
            return;
        }
        let honest = self.nodes.len() - 1;
        let target = self.rng.random_range(0..honest);
        let victim = self.rng.random_range(0..honest);
        let Some(mut forgery) = self.forgery(forger, victim) else {
            return;
        };
        let name = self.names[victim].clone();
        let own = self.signers.unrecorded(forger, &self.names[forger]);
        let victim_key = key_id(&self.signers.unrecorded(victim, &name).certificate());
        let own_key = key_id(&own.certificate());
        // Signed with the forger's own key, under its own key id, the victim's, or one no
        // certificate has.
        let key = match self.rng.random_range(0..3) {
            0 => own_key,
            1 => victim_key,
            _ => self.rng.random(),
        };
        let mut own = own;
        let sign = |_: &NodeName, claim: &[u8]| Signature::new(key, own.sign(claim));
        let from = addr_of(forger);
        let (bytes, stream) = if self.rng.random_bool(0.7) {
            (forge::datagram(std::slice::from_ref(&forgery), sign), false)
        } else {
            // A push/pull presents the forger's own certificate as the victim's.
            let certificate = self.signers.unrecorded(forger, &self.names[forger]);
            let presented = vec![(name, certificate.certificate().to_vec())];
            if let Forgery::Alive { addr, .. } = &mut forgery {
                *addr = from;
            }
            let forgeries = std::slice::from_ref(&forgery);
            (forge::push_pull(from, forgeries, presented, sign), true)
        };
        self.forged += 1;
        let to = podmesh_mesh::Target {
            addr: addr_of(target),
            name: Some(self.names[target].clone()),
        };
        self.send_frame(forger, &to, bytes, stream);
    }

    /// A claim about `victim` that only it could make, chosen at random: its Alive at the
    /// forger's address at the highest incarnation, its Left, an accusation at a life it never
    /// had, one of its Pods stopped at the highest generation, or a Pod it does not have.
    fn forgery(&mut self, forger: usize, victim: usize) -> Option<Forgery> {
        let subject = self.names[victim].clone();
        let incarnation = self.nodes[victim]
            .running
            .as_ref()
            .map_or(1, |r| r.mesh().incarnation());
        let stopped = |pod: PodName| {
            let mut record = PodRecord::new(pod);
            record.status = PodStatus::Stopped;
            Some(record.encode())
        };
        let forgery = match self.rng.random_range(0..5) {
            0 => Forgery::Alive {
                subject,
                addr: addr_of(forger),
                incarnation: u64::MAX,
            },
            1 => Forgery::Left {
                subject,
                addr: addr_of(victim),
                incarnation,
            },
            2 => Forgery::Accusation {
                subject,
                addr: addr_of(forger),
                incarnation: u64::MAX,
                dead: self.rng.random_bool(0.5),
                source: self.names[forger].clone(),
            },
            3 => {
                let pod = self.pods.first()?.clone();
                Forgery::State {
                    owner: subject,
                    key: PodRecord::state_key(&pod),
                    generation: u64::MAX,
                    version: 1,
                    value: stopped(pod),
                }
            }
            _ => {
                let pod: PodName = "ghost".parse().ok()?;
                Forgery::State {
                    owner: subject,
                    key: PodRecord::state_key(&pod),
                    generation: incarnation,
                    version: u64::MAX,
                    value: stopped(pod),
                }
            }
        };
        Some(forgery)
    }
}

/// What `member`, as a node holds it, signed: its Left if it left, else its Alive.
fn member_claim(name: &NodeName, member: &podmesh_mesh::Member) -> Vec<u8> {
    if member.state == MemberState::Left {
        claim::left(name, member.addr, member.incarnation)
    } else {
        claim::alive(name, member.addr, member.incarnation)
    }
}
