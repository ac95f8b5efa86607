//! The safety invariants (DESIGN section 8), checked as the run goes and once more at its end.
//!
//! The engine tells the checker what the mesh's users were told (a handshake committed, a
//! message acknowledged) and shows it what the nodes hold; the checker keeps the ledger of
//! what must therefore be true and records every breach with its virtual time.

use std::collections::{BTreeMap, BTreeSet};

use podmesh_mesh::{InboxEntry, NodeName, PodAddr, PodName, PodRecord, RequestId, Store};
use rand::Rng;
use rand::seq::IteratorRandom;

use crate::Time;

/// Violations kept in full; later ones are only counted.
pub const VIOLATIONS_KEPT: usize = 50;
/// Observers whose views' incarnations are tracked (all of them in meshes up to this size).
pub const INCARNATION_OBSERVERS_MAX: usize = 2_000;

/// An unordered pair of Pods: a peer relation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pair(PodAddr, PodAddr);

impl Pair {
    /// The relation between `a` and `b`, whichever asked.
    pub fn new(a: &PodAddr, b: &PodAddr) -> Pair {
        if a <= b {
            Pair(a.clone(), b.clone())
        } else {
            Pair(b.clone(), a.clone())
        }
    }

    fn has(&self, pod: &PodAddr) -> bool {
        &self.0 == pod || &self.1 == pod
    }

    fn other(&self, pod: &PodAddr) -> &PodAddr {
        if &self.0 == pod { &self.1 } else { &self.0 }
    }

    fn on_node(&self, node: &NodeName) -> bool {
        &self.0.node == node || &self.1.node == node
    }
}

/// The ledger and the violations found so far.
#[derive(Debug, Default)]
pub struct Checker {
    violations: Vec<String>,
    violation_count: usize,
    /// Relations whose handshake was acknowledged, minus those acknowledged undone.
    relations: BTreeSet<Pair>,
    by_node: BTreeMap<NodeName, BTreeSet<Pair>>,
    /// Operations in flight per pair.
    busy: BTreeMap<Pair, u32>,
    /// Pairs whose coordinator crashed with the operation in flight: either outcome is right,
    /// as long as both sides agree in the end.
    unknown: BTreeSet<Pair>,
    /// Pairs with a Pod on a node whose store was lost: nothing about them can be promised.
    orphaned: BTreeSet<Pair>,
    wiped: BTreeSet<NodeName>,
    /// `incarnations[observer][subject]`: the highest incarnation the observer announced.
    incarnations: Vec<Vec<u64>>,
    incarnation_lives: Vec<u32>,
    /// Acknowledged messages and their receiving Pod.
    acked: BTreeMap<RequestId, PodAddr>,
    /// Messages each Pod was notified of.
    notified: BTreeMap<PodAddr, BTreeSet<RequestId>>,
}

impl Checker {
    /// Records a breach at `now`.
    pub fn violation(&mut self, now: Time, what: String) {
        self.violation_count += 1;
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(format!("at {now}: {what}"));
        }
    }

    /// The breaches found, with a last line counting those not kept.
    pub fn into_violations(mut self) -> Vec<String> {
        if self.violation_count > self.violations.len() {
            let more = self.violation_count - self.violations.len();
            self.violations.push(format!("... and {more} more"));
        }
        self.violations
    }

    /// Breaches found so far.
    pub fn violation_count(&self) -> usize {
        self.violation_count
    }

    /// Observer `observer` (in its life `life`) announced `subject` at `incarnation`: an
    /// observer's view of an incarnation never goes backwards within one life.
    pub fn check_incarnation(
        &mut self,
        now: Time,
        observer: usize,
        life: u32,
        subject: usize,
        incarnation: u64,
    ) {
        if observer >= INCARNATION_OBSERVERS_MAX {
            return;
        }
        if self.incarnations.len() <= observer {
            self.incarnations.resize(observer + 1, Vec::new());
            self.incarnation_lives.resize(observer + 1, 0);
        }
        if self.incarnation_lives[observer] != life {
            self.incarnation_lives[observer] = life;
            self.incarnations[observer].clear();
        }
        let seen = &mut self.incarnations[observer];
        if seen.len() <= subject {
            seen.resize(subject + 1, 0);
        }
        if incarnation < seen[subject] {
            let was = seen[subject];
            self.violation(
                now,
                format!(
                    "n{observer} moved n{subject}'s incarnation back from {was} to {incarnation}"
                ),
            );
        } else {
            seen[subject] = incarnation;
        }
    }

    /// A handshake on `pair` was started.
    pub fn op_started(&mut self, pair: &Pair) {
        *self.busy.entry(pair.clone()).or_default() += 1;
    }

    /// A handshake on `pair` ended without changing the ledger (it failed).
    pub fn op_done(&mut self, pair: &Pair) {
        if let Some(count) = self.busy.get_mut(pair) {
            *count -= 1;
            if *count == 0 {
                self.busy.remove(pair);
            }
        }
    }

    /// A handshake on `pair` was acknowledged: the relation now exists (`register`) or not.
    pub fn committed(&mut self, pair: Pair, register: bool) {
        self.op_done(&pair);
        self.unknown.remove(&pair);
        if register {
            self.by_node
                .entry(pair.0.node.clone())
                .or_default()
                .insert(pair.clone());
            self.by_node
                .entry(pair.1.node.clone())
                .or_default()
                .insert(pair.clone());
            self.relations.insert(pair);
        } else {
            for node in [&pair.0.node, &pair.1.node] {
                if let Some(set) = self.by_node.get_mut(node) {
                    set.remove(&pair);
                }
            }
            self.relations.remove(&pair);
        }
    }

    /// The coordinator of a handshake on `pair` crashed before answering.
    pub fn outcome_unknown(&mut self, pair: Pair) {
        self.op_done(&pair);
        self.unknown.insert(pair);
    }

    /// `node` restarted without its store: its Pods, relations and inboxes are gone.
    pub fn forget_node(&mut self, node: &NodeName) {
        self.wiped.insert(node.clone());
        let pairs: Vec<Pair> = self
            .relations
            .iter()
            .chain(self.unknown.iter())
            .filter(|p| p.on_node(node))
            .cloned()
            .collect();
        for pair in pairs {
            self.committed(pair.clone(), false);
            self.unknown.remove(&pair);
            self.orphaned.insert(pair);
        }
        self.acked.retain(|_, to| &to.node != node);
        self.notified.retain(|to, _| &to.node != node);
    }

    /// Partners of `pod` in the ledger.
    pub fn partners_of(&self, pod: &PodAddr) -> Vec<PodAddr> {
        self.by_node
            .get(&pod.node)
            .into_iter()
            .flatten()
            .filter(|p| p.has(pod))
            .map(|p| p.other(pod).clone())
            .collect()
    }

    /// Partners of `pod` with an operation in flight.
    pub fn busy_with(&self, pod: &PodAddr) -> Vec<PodAddr> {
        self.busy
            .keys()
            .chain(self.unknown.iter())
            .filter(|p| p.has(pod))
            .map(|p| p.other(pod).clone())
            .collect()
    }

    /// A random acknowledged relation with a Pod on `node`, as (that Pod, the other one).
    pub fn random_relation_of(
        &self,
        node: &NodeName,
        rng: &mut impl Rng,
    ) -> Option<(PodAddr, PodAddr)> {
        let pair = self.by_node.get(node)?.iter().choose(rng)?;
        let (mine, other) = if &pair.0.node == node {
            (&pair.0, &pair.1)
        } else {
            (&pair.1, &pair.0)
        };
        Some((mine.clone(), other.clone()))
    }

    /// `pod`'s record as its node holds it: every acknowledged relation of `pod` whose pair
    /// has settled (`unsettled` lists the partners that have not) is in it.
    pub fn check_record(
        &mut self,
        now: Time,
        pod: &PodAddr,
        record: &PodRecord,
        unsettled: &[PodAddr],
    ) {
        for partner in self.partners_of(pod) {
            if !record.peers.contains(&partner) && !unsettled.contains(&partner) {
                self.violation(
                    now,
                    format!("acknowledged relation {pod} <-> {partner} is missing at {pod}"),
                );
            }
        }
    }

    /// Message `id` to `to` was acknowledged to its sender: it must be in `to`'s inbox, once.
    pub fn acked<S: Store>(&mut self, now: Time, to: &PodAddr, id: RequestId, store: Option<&S>) {
        if let Some(store) = store {
            let entries = podmesh_mesh::Peers::stored_inboxes(store).unwrap_or_default();
            let copies = count(&entries, &to.pod, &id);
            if copies != 1 {
                self.violation(
                    now,
                    format!("acknowledged message {id} is in {to}'s inbox {copies} times"),
                );
            }
        }
        self.acked.insert(id, to.clone());
    }

    /// A restarted node's inboxes still hold every message acknowledged to its Pods, once.
    pub fn check_inboxes_loaded<S: Store>(
        &mut self,
        now: Time,
        node: &NodeName,
        store: &S,
        _life: u32,
    ) {
        let mine: Vec<(RequestId, PodAddr)> = self
            .acked
            .iter()
            .filter(|(_, to)| &to.node == node)
            .map(|(id, to)| (id.clone(), to.clone()))
            .collect();
        if mine.is_empty() {
            return;
        }
        let entries = podmesh_mesh::Peers::stored_inboxes(store).unwrap_or_default();
        for (id, to) in mine {
            let copies = count(&entries, &to.pod, &id);
            if copies != 1 {
                self.violation(
                    now,
                    format!("after a restart, acknowledged message {id} is in {to}'s inbox {copies} times"),
                );
            }
        }
    }

    /// `to` was notified of message `id`; twice would mean it was stored twice.
    pub fn notified(&mut self, now: Time, to: &PodAddr, id: &RequestId) {
        if !self
            .notified
            .entry(to.clone())
            .or_default()
            .insert(id.clone())
        {
            self.violation(now, format!("{to} was notified of message {id} twice"));
        }
    }

    /// The end of the run, from every node's store (`records` by hosting node, `inboxes` by
    /// node): relations reciprocal, acknowledged ones present, none that failed present, every
    /// acknowledged message in its inbox exactly once. Pairs with a node in `gone` (down for
    /// good) are exempt from reciprocity: a handshake cannot finish without both sides.
    pub fn check_final(
        &mut self,
        now: Time,
        records: &[(NodeName, PodRecord)],
        inboxes: &[(NodeName, Vec<(PodName, InboxEntry)>)],
        gone: &[NodeName],
    ) {
        let mut edges: BTreeSet<(PodAddr, PodAddr)> = BTreeSet::new();
        for (node, record) in records {
            let me = PodAddr::new(record.name.clone(), node.clone());
            for peer in &record.peers {
                edges.insert((me.clone(), peer.clone()));
            }
        }
        for (a, b) in &edges {
            let pair = Pair::new(a, b);
            if self.orphaned.contains(&pair) || gone.iter().any(|g| pair.on_node(g)) {
                continue;
            }
            if !edges.contains(&(b.clone(), a.clone())) {
                self.violation(now, format!("relation {a} -> {b} is not reciprocal"));
            }
            if a < b && !self.relations.contains(&pair) && !self.unknown.contains(&pair) {
                self.violation(
                    now,
                    format!("relation {a} <-> {b} exists although no handshake committed it"),
                );
            }
        }
        let relations: Vec<Pair> = self.relations.iter().cloned().collect();
        for pair in relations {
            for (a, b) in [(&pair.0, &pair.1), (&pair.1, &pair.0)] {
                if !edges.contains(&(a.clone(), b.clone())) {
                    self.violation(
                        now,
                        format!("acknowledged relation {a} <-> {b} is missing at {a}"),
                    );
                }
            }
        }
        let acked: Vec<(RequestId, PodAddr)> = self
            .acked
            .iter()
            .map(|(i, t)| (i.clone(), t.clone()))
            .collect();
        for (id, to) in acked {
            let copies = inboxes
                .iter()
                .filter(|(node, _)| node == &to.node)
                .map(|(_, entries)| count(entries, &to.pod, &id))
                .sum::<usize>();
            if copies != 1 {
                self.violation(
                    now,
                    format!("acknowledged message {id} is in {to}'s inbox {copies} times"),
                );
            }
        }
    }
}

fn count(entries: &[(PodName, InboxEntry)], pod: &PodName, id: &RequestId) -> usize {
    entries
        .iter()
        .filter(|(p, e)| p == pod && &e.id == id)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use podmesh_mesh::{MemStore, PodStatus};

    fn pod(s: &str) -> PodAddr {
        s.parse().unwrap()
    }

    fn record(name: &str, peers: &[&str]) -> PodRecord {
        let mut r = PodRecord::new(name.parse().unwrap());
        r.status = PodStatus::Idle;
        r.peers = peers.iter().map(|p| pod(p)).collect();
        r
    }

    fn node(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    fn id(seq: u64) -> RequestId {
        RequestId {
            node: node("n1"),
            incarnation: 1,
            seq,
        }
    }

    #[test]
    fn a_lost_acknowledged_relation_is_a_violation_unless_unsettled() {
        let mut c = Checker::default();
        let (a, b) = (pod("a@n1"), pod("b@n2"));
        c.op_started(&Pair::new(&a, &b));
        c.committed(Pair::new(&a, &b), true);
        c.check_record(Time::ZERO, &a, &record("a", &["b@n2"]), &[]);
        assert_eq!(c.violation_count(), 0);
        c.check_record(Time::ZERO, &a, &record("a", &[]), std::slice::from_ref(&b));
        assert_eq!(c.violation_count(), 0, "an unsettled pair may differ");
        c.check_record(Time::ZERO, &a, &record("a", &[]), &[]);
        assert_eq!(c.violation_count(), 1);
    }

    #[test]
    fn incarnations_going_backwards_are_caught_and_a_new_life_starts_over() {
        let mut c = Checker::default();
        c.check_incarnation(Time::ZERO, 0, 0, 1, 5);
        c.check_incarnation(Time::ZERO, 0, 0, 1, 5);
        assert_eq!(c.violation_count(), 0);
        c.check_incarnation(Time::ZERO, 0, 0, 1, 4);
        assert_eq!(c.violation_count(), 1);
        c.check_incarnation(Time::ZERO, 0, 1, 1, 2);
        assert_eq!(
            c.violation_count(),
            1,
            "a restarted observer knows nothing yet"
        );
    }

    #[test]
    fn the_final_check_catches_one_sided_phantom_and_missing_relations() {
        let mut c = Checker::default();
        let (a, b) = (pod("a@n1"), pod("b@n2"));
        c.committed(Pair::new(&a, &b), true);
        // b lost a: not reciprocal, and the acknowledged relation is missing at b.
        c.check_final(
            Time::ZERO,
            &[
                (node("n1"), record("a", &["b@n2"])),
                (node("n2"), record("b", &[])),
            ],
            &[],
            &[],
        );
        assert_eq!(c.violation_count(), 2);
        // A reciprocal relation nobody committed is a phantom.
        let mut c = Checker::default();
        c.check_final(
            Time::ZERO,
            &[
                (node("n1"), record("a", &["b@n2"])),
                (node("n2"), record("b", &["a@n1"])),
            ],
            &[],
            &[],
        );
        assert_eq!(c.violation_count(), 1);
        // Unless its coordinator crashed before answering: either outcome is fine then.
        let mut c = Checker::default();
        c.outcome_unknown(Pair::new(&a, &b));
        c.check_final(
            Time::ZERO,
            &[
                (node("n1"), record("a", &["b@n2"])),
                (node("n2"), record("b", &["a@n1"])),
            ],
            &[],
            &[],
        );
        assert_eq!(c.violation_count(), 0);
    }

    #[test]
    fn an_acknowledged_message_must_be_stored_exactly_once() {
        let entry = |seq| InboxEntry {
            id: id(seq),
            from: pod("a@n1"),
            body: "hi".to_owned(),
            received_at_ms: 0,
        };
        let mut c = Checker::default();
        let to = pod("b@n2");
        c.acked(Time::ZERO, &to, id(1), None::<&MemStore>);
        c.acked(Time::ZERO, &to, id(2), None::<&MemStore>);
        let b: PodName = "b".parse().unwrap();
        c.check_final(
            Time::ZERO,
            &[],
            &[(
                node("n2"),
                vec![(b.clone(), entry(1)), (b.clone(), entry(2)), (b, entry(2))],
            )],
            &[],
        );
        assert_eq!(c.violation_count(), 1, "message 2 is there twice");
        c.notified(Time::ZERO, &to, &id(3));
        c.notified(Time::ZERO, &to, &id(3));
        assert_eq!(
            c.violation_count(),
            2,
            "a second notification means a second copy"
        );
    }

    #[test]
    fn a_wiped_node_releases_its_promises() {
        let mut c = Checker::default();
        let (a, b) = (pod("a@n1"), pod("b@n2"));
        c.committed(Pair::new(&a, &b), true);
        c.acked(Time::ZERO, &b, id(1), None::<&MemStore>);
        c.forget_node(&node("n2"));
        c.check_final(
            Time::ZERO,
            &[(node("n1"), record("a", &["b@n2"]))],
            &[],
            &[],
        );
        assert_eq!(c.violation_count(), 0);
    }
}
