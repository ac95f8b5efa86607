//! Scenario files: TOML in `simulations/scenarios/`, documented in `docs/simulations.md`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

use crate::net::NetConfig;

/// Most nodes a scenario may ask for.
pub const NODES_MAX: usize = 20_000;
/// Longest phase a scenario may ask for, in virtual seconds (one day).
pub const PHASE_S_MAX: f64 = 86_400.0;
/// Most forged frames a second a forger may send: more only slows the run.
pub const FORGED_PER_S_MAX: f64 = 1_000.0;

/// One simulation: the mesh, its network, the faults of the safety phase, the workload, and
/// what the run must show.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// What the scenario shows.
    #[serde(default)]
    pub description: String,
    /// Number of nodes.
    pub nodes: usize,
    /// The membership timers: `lan` or `wan`.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Length of the safety phase (faults on), in virtual seconds.
    pub safety_s: f64,
    /// Longest the liveness phase (faults healed) may take to converge, in virtual seconds.
    #[serde(default = "default_liveness_s")]
    pub liveness_s: f64,
    /// How nodes join.
    #[serde(default)]
    pub join: Join,
    /// The links.
    #[serde(default)]
    pub network: Network,
    /// Faults of the safety phase.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Pods, peer handshakes and messages.
    #[serde(default)]
    pub workload: Workload,
    /// What the run must show besides the invariants.
    #[serde(default)]
    pub expect: Expect,
    /// Whether the membership comparison with foca runs for this scenario.
    #[serde(default)]
    pub compare_foca: bool,
}

fn default_profile() -> String {
    "lan".to_owned()
}

fn default_liveness_s() -> f64 {
    120.0
}

/// How the nodes join.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// The first `seeds` nodes are the seeds every other node joins through.
    #[serde(default = "one")]
    pub seeds: usize,
    /// Nodes start at uniform times in `[0, spread_s]`; 0 is a burst.
    #[serde(default)]
    pub spread_s: f64,
}

fn one() -> usize {
    1
}

impl Default for Join {
    fn default() -> Self {
        Join {
            seeds: 1,
            spread_s: 0.0,
        }
    }
}

/// The links, in milliseconds and probabilities.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Range of the links' base latencies.
    #[serde(default = "default_latency")]
    pub latency_ms: [f64; 2],
    /// Jitter added to each frame.
    #[serde(default = "default_jitter")]
    pub jitter_ms: f64,
    /// Datagram loss.
    #[serde(default)]
    pub loss: f64,
    /// Datagram duplication.
    #[serde(default)]
    pub duplicate: f64,
    /// Broken stream exchanges.
    #[serde(default)]
    pub stream_loss: f64,
}

fn default_latency() -> [f64; 2] {
    [1.0, 5.0]
}

fn default_jitter() -> f64 {
    1.0
}

impl Default for Network {
    fn default() -> Self {
        Network {
            latency_ms: default_latency(),
            jitter_ms: default_jitter(),
            loss: 0.0,
            duplicate: 0.0,
            stream_loss: 0.0,
        }
    }
}

impl Network {
    /// The network model's configuration.
    pub fn config(&self) -> NetConfig {
        NetConfig {
            latency_min: ms(self.latency_ms[0]),
            latency_max: ms(self.latency_ms[1]),
            jitter: ms(self.jitter_ms),
            loss: self.loss,
            duplicate: self.duplicate,
            stream_loss: self.stream_loss,
        }
    }
}

/// A fault of the safety phase. Every fault ends at the latest when the safety phase does.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// A partition from `at_s` for `for_s`.
    Partition {
        /// Its shape.
        shape: Shape,
        /// Start.
        at_s: f64,
        /// Length.
        for_s: f64,
        /// When set, the partition is on and off alternately for this long each.
        #[serde(default)]
        flap_s: Option<f64>,
    },
    /// Crash `fraction` of the non-seed nodes at times spread over `[at_s, at_s + spread_s]`.
    Crash {
        /// Share of the nodes, 0 to 1.
        fraction: f64,
        /// Start.
        at_s: f64,
        /// Spread of the crash times.
        #[serde(default)]
        spread_s: f64,
        /// Restart each node this long after its crash; never when absent.
        #[serde(default)]
        restart_after_s: Option<f64>,
        /// Whether the store survives the crash (a restart without it starts empty).
        #[serde(default = "yes")]
        durable: bool,
        /// Each crash waits until its node has deliveries staged for a group commit and strikes
        /// before that commit is written: what a crash mid-batch loses is checked. A crash
        /// still waiting when its restart is due does not happen.
        #[serde(default)]
        mid_commit: bool,
    },
    /// `count` nodes become slow by `delay_ms` from `at_s` for `for_s`.
    Slow {
        /// How many nodes.
        count: usize,
        /// The added delay.
        delay_ms: f64,
        /// Start.
        at_s: f64,
        /// Length.
        for_s: f64,
    },
    /// Extra datagram loss from `at_s` for `for_s`.
    Loss {
        /// The added loss.
        loss: f64,
        /// Start.
        at_s: f64,
        /// Length.
        for_s: f64,
    },
    /// Churn: from `at_s` for `for_s`, `per_min` random non-seed nodes a minute go away
    /// (half leave gracefully, half crash) and come back `down_s` later.
    Churn {
        /// Departures per minute.
        per_min: f64,
        /// Start.
        at_s: f64,
        /// Length.
        for_s: f64,
        /// How long a node stays away.
        down_s: f64,
    },
    /// The last node forges: besides running the protocol honestly, it sends `per_s` frames a
    /// second to random honest nodes, from `at_s` for `for_s`, each carrying claims about
    /// other nodes that only they could make (their Alive at its own address and the highest
    /// incarnation, their Left, their Pods at the highest generation, invented Pods,
    /// accusations at lives they never had), signed with its own key, in gossip and in
    /// push/pull with its own certificate presented as theirs.
    Forger {
        /// Forged frames per second.
        per_s: f64,
        /// Start.
        at_s: f64,
        /// Length.
        for_s: f64,
    },
}

fn yes() -> bool {
    true
}

/// Shapes of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// Two halves.
    Halves,
    /// The last node alone.
    IsolateOne,
    /// The second half cannot hear the first.
    OneWay,
    /// Five groups in a ring, each seeing its neighbours.
    MajorityRing,
}

/// Pods and what they do during the safety phase.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Pods created on each node at start.
    #[serde(default)]
    pub pods_per_node: usize,
    /// Peer handshakes started per second, mesh-wide.
    #[serde(default)]
    pub peer_per_s: f64,
    /// Share of those that undo an existing relation instead.
    #[serde(default)]
    pub unpeer_fraction: f64,
    /// Messages sent to peers per second, mesh-wide.
    #[serde(default)]
    pub send_per_s: f64,
    /// Messages each send sends at once, from one Pod to one peer (1 when absent): bursts
    /// that reach the receiver within one group commit.
    #[serde(default)]
    pub send_burst: usize,
    /// Probability that a store write fails.
    #[serde(default)]
    pub fail_write: f64,
}

/// What the run must show besides the invariants, which always hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// No live, reachable node is declared dead (steady loss, slow nodes).
    #[serde(default)]
    pub no_false_deaths: bool,
    /// Every crash is known by every live node within the detection bound.
    #[serde(default)]
    pub detect_bound: bool,
    /// Every node sees every other alive within this many seconds of the start (join bursts).
    #[serde(default)]
    pub full_roster_s: Option<f64>,
    /// After the heal, the mesh converges within this many seconds (else `liveness_s`).
    #[serde(default)]
    pub converge_s: Option<f64>,
    /// The steady-state load stays within the per-node budget (messages and bytes).
    #[serde(default)]
    pub load_budget: bool,
}

/// Milliseconds as a duration.
pub fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.0) / 1_000.0)
}

/// Seconds as a duration.
pub fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.0, PHASE_S_MAX))
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        Scenario::parse(&text)
            .with_context(|| format!("{} is not a valid scenario", path.display()))
    }

    /// Reads and checks a scenario from its TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks every bound and range; the error names the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (2..=NODES_MAX).contains(&self.nodes),
            "nodes must be 2 to {NODES_MAX}, not {}",
            self.nodes
        );
        ensure!(
            self.profile == "lan" || self.profile == "wan",
            "profile must be lan or wan, not {:?}",
            self.profile
        );
        for (name, v) in [("safety_s", self.safety_s), ("liveness_s", self.liveness_s)] {
            ensure!(
                v > 0.0 && v <= PHASE_S_MAX,
                "{name} must be in (0, {PHASE_S_MAX}], not {v}"
            );
        }
        ensure!(
            (1..self.nodes).contains(&self.join.seeds),
            "join.seeds must be 1 to nodes - 1"
        );
        ensure!(self.join.spread_s >= 0.0, "join.spread_s must be >= 0");
        let n = &self.network;
        ensure!(
            0.0 <= n.latency_ms[0] && n.latency_ms[0] <= n.latency_ms[1],
            "network.latency_ms must be [min, max] with 0 <= min <= max"
        );
        ensure!(n.jitter_ms >= 0.0, "network.jitter_ms must be >= 0");
        for (name, p) in [
            ("network.loss", n.loss),
            ("network.duplicate", n.duplicate),
            ("network.stream_loss", n.stream_loss),
            ("workload.unpeer_fraction", self.workload.unpeer_fraction),
            ("workload.fail_write", self.workload.fail_write),
        ] {
            ensure!((0.0..=1.0).contains(&p), "{name} must be 0 to 1, not {p}");
        }
        ensure!(
            self.workload.peer_per_s >= 0.0 && self.workload.send_per_s >= 0.0,
            "workload rates must be >= 0"
        );
        for (i, fault) in self.faults.iter().enumerate() {
            let (at, len) = match fault {
                Fault::Partition {
                    at_s,
                    for_s,
                    flap_s,
                    ..
                } => {
                    if let Some(f) = flap_s {
                        ensure!(*f > 0.0, "faults[{i}].flap_s must be > 0");
                    }
                    (*at_s, *for_s)
                }
                Fault::Crash {
                    fraction,
                    at_s,
                    spread_s,
                    restart_after_s,
                    ..
                } => {
                    ensure!(
                        (0.0..=1.0).contains(fraction),
                        "faults[{i}].fraction must be 0 to 1"
                    );
                    if let Some(r) = restart_after_s {
                        ensure!(*r >= 0.0, "faults[{i}].restart_after_s must be >= 0");
                    }
                    (*at_s, *spread_s)
                }
                Fault::Slow {
                    count,
                    delay_ms,
                    at_s,
                    for_s,
                } => {
                    ensure!(*count < self.nodes, "faults[{i}].count must be below nodes");
                    ensure!(*delay_ms >= 0.0, "faults[{i}].delay_ms must be >= 0");
                    (*at_s, *for_s)
                }
                Fault::Loss { loss, at_s, for_s } => {
                    ensure!(
                        (0.0..=1.0).contains(loss),
                        "faults[{i}].loss must be 0 to 1"
                    );
                    (*at_s, *for_s)
                }
                Fault::Churn {
                    per_min,
                    at_s,
                    for_s,
                    down_s,
                } => {
                    ensure!(
                        *per_min >= 0.0 && *down_s >= 0.0,
                        "faults[{i}] rates must be >= 0"
                    );
                    (*at_s, *for_s)
                }
                Fault::Forger { per_s, at_s, for_s } => {
                    ensure!(
                        *per_s > 0.0 && *per_s <= FORGED_PER_S_MAX,
                        "faults[{i}].per_s must be in (0, {FORGED_PER_S_MAX}]"
                    );
                    ensure!(
                        self.nodes > self.join.seeds + 1,
                        "faults[{i}]: a forger needs a node besides the seeds and one honest node"
                    );
                    (*at_s, *for_s)
                }
            };
            ensure!(
                at >= 0.0 && len >= 0.0 && at <= self.safety_s,
                "faults[{i}] must start within the safety phase (0 to {} s)",
                self.safety_s
            );
        }
        Ok(())
    }

    /// The scenario with `nodes` nodes instead (the `--nodes` override).
    pub fn with_nodes(mut self, nodes: usize) -> anyhow::Result<Scenario> {
        if nodes <= self.join.seeds {
            bail!(
                "--nodes must exceed the scenario's {} seeds",
                self.join.seeds
            );
        }
        self.nodes = nodes;
        self.faults.iter_mut().for_each(|f| {
            if let Fault::Slow { count, .. } = f {
                *count = (*count).min(nodes - 1);
            }
        });
        self.validate()?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Scenario> {
        Scenario::parse(text)
    }

    #[test]
    fn a_full_scenario_parses() {
        let s = parse(
            r#"
            name = "x"
            nodes = 10
            safety_s = 60
            [network]
            loss = 0.05
            [[faults]]
            kind = "partition"
            shape = "halves"
            at_s = 10
            for_s = 30
            [[faults]]
            kind = "crash"
            fraction = 0.1
            at_s = 5
            restart_after_s = 20
            [workload]
            pods_per_node = 2
            peer_per_s = 1
            [expect]
            detect_bound = true
            "#,
        )
        .unwrap();
        assert_eq!(s.faults.len(), 2);
        assert!(matches!(s.faults[1], Fault::Crash { durable: true, .. }));
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_field_named() {
        let cases = [
            ("name = \"x\"\nnodes = 1\nsafety_s = 1", "nodes"),
            (
                "name = \"x\"\nnodes = 5\nsafety_s = 1\n[network]\nloss = 2",
                "network.loss",
            ),
            ("name = \"x\"\nnodes = 5\nsafety_s = 1\nbogus = 3", "bogus"),
            (
                "name = \"x\"\nnodes = 5\nsafety_s = 10\n[[faults]]\nkind = \"loss\"\nloss = 0.1\nat_s = 20\nfor_s = 1",
                "faults[0]",
            ),
        ];
        for (text, field) in cases {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(field), "{err} should name {field}");
        }
    }
}
