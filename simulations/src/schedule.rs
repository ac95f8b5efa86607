//! A scenario's timeline: which node starts, crashes, leaves or restarts when, and when the
//! network changes, drawn from the run's seed. The podmesh run and the foca comparison replay
//! the same timeline.

use std::time::Duration;

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Time;
use crate::net::Cut;
use crate::scenario::{Fault, Scenario, Shape, ms, secs};

/// Something that happens to the nodes or the network at a given time.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The node starts for the first time and joins through the seeds.
    Start(usize),
    /// The node crashes. With `stays_down`, it does not come back before the heal, and the
    /// time until every live node knows it dead is measured.
    Crash {
        /// The node.
        node: usize,
        /// Whether no restart follows.
        stays_down: bool,
        /// Whether it waits for the node's next group commit and strikes just before it.
        mid_commit: bool,
    },
    /// The node leaves gracefully and stops.
    Leave(usize),
    /// The node starts again, with its store (`durable`) or with an empty one.
    Restart {
        /// The node.
        node: usize,
        /// Whether the store survived.
        durable: bool,
    },
    /// A partition starts (`Some`) or ends (`None`).
    Partition(Option<Cut>),
    /// A node becomes slow by the given delay (zero ends it).
    Slow(usize, Duration),
    /// Extra datagram loss (zero ends it).
    ExtraLoss(f64),
    /// The last node starts forging `per_s` frames a second (zero ends it).
    Forging(f64),
    /// End of the safety phase: every fault is removed and nodes waiting to restart restart.
    Heal,
}

/// The actions of a run, in time order (ties keep their insertion order).
pub fn timeline(scenario: &Scenario, seed: u64) -> Vec<(Time, Action)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7469_6d65_6c69_6e65);
    let n = scenario.nodes;
    let seeds = scenario.join.seeds;
    let end = Time::ZERO + secs(scenario.safety_s);
    let mut out: Vec<(Time, Action)> = Vec::new();
    out.push((Time::ZERO, Action::Start(0)));
    for node in 1..n {
        let at = if node < seeds || scenario.join.spread_s <= 0.0 {
            Time::ZERO
        } else {
            Time::ZERO + secs(rng.random_range(0.0..=scenario.join.spread_s))
        };
        out.push((at, Action::Start(node)));
    }
    let within = |t: Time| t.min(end);
    for fault in &scenario.faults {
        match fault {
            Fault::Partition {
                shape,
                at_s,
                for_s,
                flap_s,
            } => {
                let cut = match shape {
                    Shape::Halves => Cut::halves(n),
                    Shape::IsolateOne => Cut::isolate(n, n - 1),
                    Shape::OneWay => Cut::one_way(n),
                    Shape::MajorityRing => Cut::majority_ring(n, 5),
                };
                let start = Time::ZERO + secs(*at_s);
                let stop = within(start + secs(*for_s));
                match flap_s {
                    None => {
                        out.push((start, Action::Partition(Some(cut))));
                        out.push((stop, Action::Partition(None)));
                    }
                    Some(flap) => {
                        let mut t = start;
                        let mut on = true;
                        while t < stop {
                            out.push((t, Action::Partition(on.then(|| cut.clone()))));
                            on = !on;
                            t = t + secs(*flap);
                        }
                        out.push((stop, Action::Partition(None)));
                    }
                }
            }
            Fault::Crash {
                fraction,
                at_s,
                spread_s,
                restart_after_s,
                durable,
                mid_commit,
            } => {
                let candidates = n - seeds;
                let count = ((candidates as f64) * fraction).round() as usize;
                for i in sample(&mut rng, candidates, count.min(candidates)) {
                    let node = seeds + i;
                    let at = Time::ZERO + secs(at_s + rng.random_range(0.0..=spread_s.max(0.0)));
                    let at = within(at);
                    let back = restart_after_s.map(|r| at + secs(r)).filter(|b| *b < end);
                    out.push((
                        at,
                        Action::Crash {
                            node,
                            stays_down: restart_after_s.is_none(),
                            mid_commit: *mid_commit,
                        },
                    ));
                    if let Some(back) = back {
                        out.push((
                            back,
                            Action::Restart {
                                node,
                                durable: *durable,
                            },
                        ));
                    }
                }
            }
            Fault::Slow {
                count,
                delay_ms,
                at_s,
                for_s,
            } => {
                let start = Time::ZERO + secs(*at_s);
                let stop = within(start + secs(*for_s));
                for i in sample(&mut rng, n - seeds, (*count).min(n - seeds)) {
                    out.push((start, Action::Slow(seeds + i, ms(*delay_ms))));
                    out.push((stop, Action::Slow(seeds + i, Duration::ZERO)));
                }
            }
            Fault::Loss { loss, at_s, for_s } => {
                let start = Time::ZERO + secs(*at_s);
                out.push((start, Action::ExtraLoss(*loss)));
                out.push((within(start + secs(*for_s)), Action::ExtraLoss(0.0)));
            }
            Fault::Forger { per_s, at_s, for_s } => {
                let start = Time::ZERO + secs(*at_s);
                out.push((start, Action::Forging(*per_s)));
                out.push((within(start + secs(*for_s)), Action::Forging(0.0)));
            }
            Fault::Churn {
                per_min,
                at_s,
                for_s,
                down_s,
            } => {
                if *per_min <= 0.0 || n <= seeds {
                    continue;
                }
                let gap = 60.0 / per_min;
                let stop = within(Time::ZERO + secs(at_s + for_s));
                let mut t = Time::ZERO + secs(*at_s);
                let mut graceful = true;
                while t < stop {
                    let node = rng.random_range(seeds..n);
                    out.push((
                        t,
                        if graceful {
                            Action::Leave(node)
                        } else {
                            Action::Crash {
                                node,
                                stays_down: false,
                                mid_commit: false,
                            }
                        },
                    ));
                    let back = t + secs(*down_s);
                    if back < end {
                        out.push((
                            back,
                            Action::Restart {
                                node,
                                durable: true,
                            },
                        ));
                    }
                    graceful = !graceful;
                    t = t + secs(gap * rng.random_range(0.5..1.5));
                }
            }
        }
    }
    out.push((end, Action::Heal));
    // A stable sort keeps same-time actions in the order written above.
    out.sort_by_key(|(t, _)| *t);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(text: &str) -> Scenario {
        Scenario::parse(text).unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_timeline_and_another_seed_another() {
        let s = scenario(
            "name = \"x\"\nnodes = 50\nsafety_s = 100\n[join]\nspread_s = 10\n[[faults]]\nkind = \"crash\"\nfraction = 0.2\nat_s = 20\nspread_s = 30\nrestart_after_s = 10",
        );
        assert_eq!(timeline(&s, 1), timeline(&s, 1));
        assert_ne!(timeline(&s, 1), timeline(&s, 2));
        let crashes = timeline(&s, 1)
            .iter()
            .filter(|(_, a)| matches!(a, Action::Crash { .. }))
            .count();
        assert_eq!(crashes, 10, "20% of the 49 non-seed nodes");
    }

    #[test]
    fn every_fault_ends_by_the_heal_and_seeds_never_crash() {
        let s = scenario(
            "name = \"x\"\nnodes = 20\nsafety_s = 30\n[[faults]]\nkind = \"partition\"\nshape = \"halves\"\nat_s = 10\nfor_s = 100\n[[faults]]\nkind = \"crash\"\nfraction = 1.0\nat_s = 5",
        );
        let t = timeline(&s, 3);
        let (heal_at, last) = t.last().unwrap();
        assert_eq!(*last, Action::Heal);
        assert_eq!(*heal_at, Time::from_secs(30));
        assert!(
            t.iter()
                .any(|(at, a)| *a == Action::Partition(None) && *at == Time::from_secs(30))
        );
        assert!(
            !t.iter()
                .any(|(_, a)| matches!(a, Action::Crash { node: 0, .. }))
        );
        assert!(t.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
