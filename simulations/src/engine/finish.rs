//! The end of a run: whether the liveness phase has settled, the final checks read from every
//! node's store, and the report with its budgets.

use std::time::Duration;

use podmesh_mesh::{NodeName, Peers, PodRecord, Store, Table};

use super::Sim;
use crate::report::{Budget, ClaimFigures, Report};

impl Sim {
    /// Whether the liveness phase is done: membership converged, no handshake logged, no
    /// operation in flight.
    pub(super) fn settled(&self) -> bool {
        self.observer.converged() && self.pending.is_empty() && self.logged_handshakes() == 0
    }

    /// Handshakes still logged on running nodes, except those waiting on a node that is down
    /// (for good, at the end of a run: a two-phase handshake cannot finish without both sides).
    fn logged_handshakes(&self) -> usize {
        let up = |name: &NodeName| {
            self.by_name
                .get(name)
                .is_some_and(|&i| self.nodes[i].running.is_some())
        };
        self.nodes
            .iter()
            .filter_map(|n| n.running.as_ref())
            .flat_map(|r| r.peers().handshake_pairs())
            .filter(|(a, b)| up(&a.node) && up(&b.node))
            .count()
    }

    pub(super) fn final_checks(&mut self) {
        let now = self.now;
        if !self.settled() {
            let logged = self.logged_handshakes();
            self.checker.violation(
                now,
                format!(
                    "not settled {:.1} s after the heal: membership {}, {} handshake log entries, {} operations in flight",
                    now.saturating_since(self.heal_at).as_secs_f64(),
                    if self.observer.converged() {
                        "converged".to_owned()
                    } else {
                        format!("not converged ({} up)", self.observer.up_count())
                    },
                    logged,
                    self.pending.len()
                ),
            );
        }
        // Every relation reciprocal, every acknowledged one present, every acknowledged message
        // in its inbox exactly once, read from each node's store.
        let mut records = Vec::new();
        let mut inboxes = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let store = match (&node.running, &node.store) {
                (Some(r), _) => r.store(),
                (None, Some(s)) => s,
                (None, None) => continue,
            };
            for (_, value) in store.scan(Table::Pods).unwrap_or_default() {
                if let Ok(record) = PodRecord::decode(&value) {
                    records.push((self.names[i].clone(), record));
                }
            }
            if let Ok(entries) = Peers::stored_inboxes(store) {
                inboxes.push((self.names[i].clone(), entries));
            }
        }
        let gone: Vec<NodeName> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running.is_none())
            .map(|i| self.names[i].clone())
            .collect();
        self.checker.check_final(now, &records, &inboxes, &gone);
        self.check_all_claims();
    }

    pub(super) fn report(mut self, wall: Duration) -> Report {
        for node in &self.nodes {
            if let Some(r) = &node.running {
                self.figures.write_failures += r.store().failures;
                let c = r.peers().counters();
                self.figures.duplicates_answered += c.duplicates;
                self.figures.delivery_batches += c.delivery_batches;
                self.figures.delivery_batches_failed += c.delivery_batches_failed;
                super::add_claims(&mut self.claims, r.mesh().counters());
            }
        }
        let n = self.scenario.nodes;
        let metrics = self.observer.metrics();
        let simulated = self.now.as_micros() as f64 / 1e6;
        let wall_s = wall.as_secs_f64();
        let mut budgets = Vec::new();
        let e = &self.scenario.expect;
        let probe = self.config.probe_interval.as_secs_f64();
        let detect_bound =
            probe * (f64::from(self.config.suspicion_mult) * (n as f64).log10().max(1.0) + 3.0);
        // Enforced where the scenario asks, once a crash stayed down (detected or not): a run
        // too small for its crash fraction has nothing to detect.
        let crashed = metrics.crashes_measured + self.observer.undetected() > 0;
        if e.detect_bound || metrics.crashes_measured > 0 {
            let budget = Budget::at_most(
                "crash known dead by every live node (s)",
                detect_bound,
                metrics.detect_all_s,
            );
            budgets.push(if e.detect_bound && crashed {
                budget
            } else {
                budget.reported_only()
            });
        }
        if e.no_false_deaths {
            budgets.push(Budget::at_most(
                "healthy nodes declared dead",
                0.0,
                Some(metrics.healthy_declared_dead as f64),
            ));
        }
        if let Some(limit) = e.full_roster_s {
            budgets.push(Budget::at_most(
                "full roster after the join (s)",
                limit,
                metrics.full_roster_s,
            ));
        }
        if let Some(limit) = e.converge_s {
            budgets.push(Budget::at_most(
                "converged after the heal (s)",
                limit,
                metrics.heal_converge_s,
            ));
        }
        if e.load_budget {
            budgets.push(Budget::at_most(
                "steady frames per node per second",
                3.0,
                Some(metrics.steady_msgs_per_node_s),
            ));
            budgets.push(Budget::at_most(
                "steady bytes per node per second",
                1024.0,
                Some(metrics.steady_bytes_per_node_s),
            ));
        }
        for b in &budgets {
            if b.enforced && !b.met {
                self.checker
                    .violation(self.now, format!("budget missed: {}", b.describe()));
            }
        }
        Report {
            scenario: self.scenario.name.clone(),
            seed: self.seed,
            nodes: n,
            simulated_s: simulated,
            wall_s,
            events: self.events,
            events_per_wall_s: self.events as f64 / wall_s.max(1e-9),
            sim_to_wall: simulated / wall_s.max(1e-9),
            log_hash: format!("{:016x}", self.hash.0),
            membership: metrics,
            peers: self.figures,
            claims: ClaimFigures {
                forged: self.forged,
                ..self.claims
            },
            budgets,
            violations: self.checker.into_violations(),
            samples: self.observer.samples().to_vec(),
            false_deaths: self.observer.false_deaths().to_vec(),
            first_suspicion_s: self.first_suspicion_worst,
            foca: None,
        }
    }
}
