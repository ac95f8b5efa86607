//! The shipped scenarios: they load, a run replays exactly, and a small sweep of every one
//! passes (the full sweeps are documented in docs/simulations.md).

use std::path::PathBuf;

use podmesh_sim::engine::Sim;
use podmesh_sim::scenario::Scenario;

/// Nodes per scenario in the test sweep: enough for partitions, crashes and handshakes across
/// nodes, small enough for every test run.
const SWEEP_NODES_MAX: usize = 16;
/// Scenarios whose budget is a property of their own size, swept at that size. slow-node's
/// "no healthy node declared dead" is stated for N = 100: with 16 nodes the suspicion timeout
/// (which grows with log10 N) is shorter than the slow node's 4 s round trip plus gossip.
const AT_FULL_SIZE: &[&str] = &["slow-node"];
/// Seeds per scenario in the test sweep.
const SWEEP_SEEDS: std::ops::RangeInclusive<u64> = 1..=2;

fn scenarios() -> Vec<(PathBuf, Scenario)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let s = Scenario::load(&p).unwrap_or_else(|e| panic!("{e:#}"));
            (p, s)
        })
        .collect()
}

#[test]
fn every_shipped_scenario_loads_and_the_required_ones_are_there() {
    let names: Vec<String> = scenarios().into_iter().map(|(_, s)| s.name).collect();
    for wanted in [
        "join-burst",
        "loss-1",
        "loss-5",
        "loss-10",
        "slow-node",
        "crash-1",
        "crash-10",
        "crash-33",
        "partition-halves-30s",
        "partition-halves-10min",
        "isolate-one",
        "one-way",
        "majority-ring",
        "handshake-storm",
        "churn",
        "scale-10",
        "scale-100",
        "scale-1000",
        "hour-1000",
    ] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} missing");
    }
}

#[test]
fn the_same_seed_replays_exactly_and_another_seed_differs() {
    let (_, storm) = scenarios()
        .into_iter()
        .find(|(_, s)| s.name == "handshake-storm")
        .unwrap();
    let storm = storm.with_nodes(12).unwrap();
    let a = Sim::new(storm.clone(), 7).unwrap().run().unwrap();
    let b = Sim::new(storm.clone(), 7).unwrap().run().unwrap();
    let c = Sim::new(storm, 8).unwrap().run().unwrap();
    assert_eq!(a.without_wall_clock(), b.without_wall_clock());
    assert_ne!(a.log_hash, c.log_hash);
    assert!(
        a.peers.registered > 0 && a.peers.messages_acked > 0,
        "{}",
        a.summary()
    );
}

#[test]
fn a_small_sweep_of_every_shipped_scenario_passes() {
    let mut failures = Vec::new();
    for (path, scenario) in scenarios() {
        let nodes = if AT_FULL_SIZE.contains(&scenario.name.as_str()) {
            scenario.nodes
        } else {
            scenario.nodes.min(SWEEP_NODES_MAX)
        };
        let scenario = scenario.with_nodes(nodes).unwrap();
        for seed in SWEEP_SEEDS {
            let report = Sim::new(scenario.clone(), seed).unwrap().run().unwrap();
            if !report.passed() {
                failures.push(format!(
                    "{}replay: podmesh-sim run {} --seed {seed} --nodes {nodes}",
                    report.summary(),
                    path.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
