//! The scenario's workload: Pod operations started at random nodes during the safety phase,
//! and what their replies promise (committed relations, acknowledged messages) recorded for the
//! checkers.

use std::time::Duration;

use podmesh_mesh::{LocalOp, LocalReply, PeerError, PodAddr};
use rand::Rng;

use super::{PendingOp, Sim};
use crate::check::Pair;

impl Sim {
    pub(super) fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    pub(super) fn next_workload_gap(&mut self) -> Duration {
        let rate = self.scenario.workload.peer_per_s + self.scenario.workload.send_per_s;
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        Duration::from_secs_f64(-u.ln() / rate)
    }

    pub(super) fn workload_op(&mut self) {
        let w = self.scenario.workload.clone();
        let n = self.nodes.len();
        let node = self.rng.random_range(0..n);
        if self.nodes[node].running.is_none() {
            return;
        }
        let now = self.now;
        let me = self.names[node].clone();
        let send = self
            .rng
            .random_bool(w.send_per_s / (w.peer_per_s + w.send_per_s));
        let token = self.token();
        let op = if send {
            let Some((from, to)) = self.checker.random_relation_of(&me, &mut self.rng) else {
                return;
            };
            // A burst: the messages before the last go out at once, in order.
            for _ in 1..w.send_burst.max(1) {
                let extra = self.token();
                let op = self.send_op(node, extra, &from, &to);
                let r = self.nodes[node].running.as_mut().expect("checked above");
                r.handle_local(extra, op, now);
            }
            self.send_op(node, token, &from, &to)
        } else if self.rng.random_bool(w.unpeer_fraction) {
            let Some((from, to)) = self.checker.random_relation_of(&me, &mut self.rng) else {
                return;
            };
            let pair = Pair::new(&from, &to);
            self.checker.op_started(&pair);
            self.pending.insert(
                (node, token),
                PendingOp::Peer {
                    pair,
                    register: false,
                },
            );
            LocalOp::UnregisterPeer {
                pod: from.pod,
                target: to,
            }
        } else {
            let other = self.rng.random_range(0..n);
            if other == node {
                return;
            }
            let pod = self.pods[self.rng.random_range(0..self.pods.len())].clone();
            let target = PodAddr::new(
                self.pods[self.rng.random_range(0..self.pods.len())].clone(),
                self.names[other].clone(),
            );
            let from = PodAddr::new(pod.clone(), me);
            let pair = Pair::new(&from, &target);
            self.checker.op_started(&pair);
            self.pending.insert(
                (node, token),
                PendingOp::Peer {
                    pair,
                    register: true,
                },
            );
            LocalOp::RegisterPeer { pod, target }
        };
        let r = self.nodes[node].running.as_mut().expect("checked above");
        r.handle_local(token, op, now);
        self.pump(node);
    }

    /// A message from `from` to its peer `to`, sent from `node` under `token`, recorded as
    /// pending.
    fn send_op(&mut self, node: usize, token: u64, from: &PodAddr, to: &PodAddr) -> LocalOp {
        let wipes = self.nodes[self.by_name[&to.node]].wipes;
        self.pending.insert(
            (node, token),
            PendingOp::Send {
                to: to.clone(),
                wipes,
            },
        );
        LocalOp::Send {
            pod: from.pod.clone(),
            target: to.clone(),
            body: format!("message {token}"),
            // Decided by the node from membership and the gossiped record.
            live: false,
        }
    }

    pub(super) fn reply(&mut self, node: usize, token: u64, result: Result<LocalReply, PeerError>) {
        let now = self.now;
        let Some(op) = self.pending.remove(&(node, token)) else {
            return; // Pod creation at start.
        };
        match (op, result) {
            (PendingOp::Peer { pair, register }, Ok(_)) => {
                if register {
                    self.figures.registered += 1;
                } else {
                    self.figures.unregistered += 1;
                }
                self.checker.committed(pair, register);
            }
            (PendingOp::Peer { pair, .. }, Err(_)) => {
                self.figures.handshakes_failed += 1;
                self.checker.op_done(&pair);
            }
            (PendingOp::Send { to, wipes }, Ok(LocalReply::Delivered { id })) => {
                self.figures.messages_acked += 1;
                let to_node = self.by_name[&to.node];
                if self.nodes[to_node].wipes != wipes {
                    // Stored, then the receiver lost its disk: nothing can be promised.
                    self.figures.messages_lost_with_disk += 1;
                    return;
                }
                let store = self.nodes[to_node]
                    .running
                    .as_ref()
                    .map(|r| r.store())
                    .or(self.nodes[to_node].store.as_ref());
                self.checker.acked(now, &to, id, store);
            }
            (PendingOp::Send { .. }, _) => self.figures.messages_refused += 1,
        }
    }

    /// Pairs of `pod` whose handshake has not settled: an operation in flight, a logged
    /// handshake on either side, or the other side down.
    pub(super) fn unsettled_with(&self, pod: &PodAddr) -> Vec<PodAddr> {
        let mut out = self.checker.busy_with(pod);
        for node in [&pod.node] {
            let Some(&i) = self.by_name.get(node) else {
                continue;
            };
            if let Some(r) = self.nodes[i].running.as_ref() {
                for (a, b) in r.peers().handshake_pairs() {
                    if &a == pod {
                        out.push(b);
                    } else if &b == pod {
                        out.push(a);
                    }
                }
            }
        }
        // The other side's logs, and other sides that are down.
        for other in self.checker.partners_of(pod) {
            let Some(&i) = self.by_name.get(&other.node) else {
                continue;
            };
            match self.nodes[i].running.as_ref() {
                None => out.push(other.clone()),
                Some(r) => {
                    if r.peers()
                        .handshake_pairs()
                        .iter()
                        .any(|(a, b)| (a == pod && b == &other) || (a == &other && b == pod))
                    {
                        out.push(other.clone());
                    }
                }
            }
        }
        out
    }
}
