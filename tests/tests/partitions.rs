//! Real processes behind UDP relays: partitions, one-way partitions and loss between nodes.

use std::time::{Duration, Instant};

use podmesh_tests::relay::Network;
use podmesh_tests::{Cluster, wait_for};
use serde_json::{Value, json};

/// How long membership may take to notice a cut or converge after heal on a loaded machine.
const CONVERGE_MAX: Duration = Duration::from_secs(60);

fn states(cluster: &mut Cluster, observer: &str) -> Vec<(String, String)> {
    cluster
        .members(observer)
        .map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect())
        .unwrap_or_default()
}

fn all_alive(cluster: &mut Cluster, names: &[&str]) -> bool {
    names.iter().all(|o| {
        let seen = states(cluster, o);
        seen.len() == names.len() && seen.iter().all(|(_, s)| s == "alive")
    })
}

fn api_ok(cluster: &mut Cluster, node: &str, method: &str, params: Value) -> Value {
    match cluster.api(node, method, params).unwrap() {
        Ok(v) => v,
        Err((code, message)) => panic!("{method} on {node}: {code}: {message}"),
    }
}

fn peers_of(cluster: &mut Cluster, node: &str, pod: &str) -> Vec<String> {
    api_ok(cluster, node, "pod_status", json!({ "name": pod }))["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect()
}

fn logged(cluster: &mut Cluster, node: &str) -> u64 {
    api_ok(cluster, node, "node_info", json!({}))["handshakes_logged"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[test]
fn a_halves_partition_heals_and_a_handshake_across_it_fails_cleanly_then_succeeds() {
    // Guarantees: membership converges after heal; a handshake across the cut changes nothing
    // on either side; the same request after heal succeeds on both sides.
    let network = Network::new();
    let mut cluster = Cluster::new("e2e").unwrap();
    let names = ["n1", "n2", "n3", "n4"];
    let seed = cluster.start_relayed(&network, "n1", &[]).unwrap();
    for name in &names[1..] {
        cluster.start_relayed(&network, name, &[seed]).unwrap();
    }
    assert!(
        wait_for(CONVERGE_MAX, || all_alive(&mut cluster, &names)
            .then_some(()))
        .is_some()
    );
    api_ok(&mut cluster, "n1", "pod_create", json!({ "name": "a" }));
    api_ok(&mut cluster, "n3", "pod_create", json!({ "name": "c" }));

    network.partition(&["n1", "n2"], &["n3", "n4"]);
    let cut = wait_for(CONVERGE_MAX, || {
        let seen = states(&mut cluster, "n1");
        seen.iter()
            .filter(|(n, s)| (n == "n3" || n == "n4") && s == "dead")
            .count()
            .eq(&2)
            .then_some(())
    });
    assert!(
        cut.is_some(),
        "n1 never saw the far side dead: {:?}",
        states(&mut cluster, "n1")
    );

    let across = cluster
        .api("n1", "register_peer", json!({ "pod": "a", "name": "c@n3" }))
        .unwrap();
    assert_eq!(across.unwrap_err().0, "unreachable");
    assert!(peers_of(&mut cluster, "n1", "a").is_empty());
    assert!(peers_of(&mut cluster, "n3", "c").is_empty());

    let healed_at = Instant::now();
    network.heal();
    let healed = wait_for(CONVERGE_MAX, || {
        all_alive(&mut cluster, &names).then_some(())
    });
    assert!(
        healed.is_some(),
        "no convergence after heal: {:?}",
        states(&mut cluster, "n1")
    );
    eprintln!(
        "4 nodes converged {:?} after the partition healed",
        healed_at.elapsed()
    );

    // The aborted attempt left nothing behind once both sides could talk again.
    let clean = wait_for(CONVERGE_MAX, || {
        (logged(&mut cluster, "n1") == 0 && logged(&mut cluster, "n3") == 0).then_some(())
    });
    assert!(clean.is_some());
    assert!(peers_of(&mut cluster, "n3", "c").is_empty());

    let retried = api_ok(
        &mut cluster,
        "n1",
        "register_peer",
        json!({ "pod": "a", "name": "c@n3" }),
    );
    assert_eq!(retried["peer"], "c@n3");
    let settled = wait_for(CONVERGE_MAX, || {
        (logged(&mut cluster, "n1") == 0 && logged(&mut cluster, "n3") == 0).then_some(())
    });
    assert!(settled.is_some());
    assert_eq!(peers_of(&mut cluster, "n1", "a"), ["c@n3"]);
    assert_eq!(peers_of(&mut cluster, "n3", "c"), ["a@n1"]);
}

#[test]
fn a_one_way_partition_declares_no_one_dead() {
    // n1 cannot reach n2 (n2 still reaches n1): indirect probes through n3 keep both alive.
    let network = Network::new();
    let mut cluster = Cluster::new("e2e").unwrap();
    let names = ["n1", "n2", "n3"];
    let seed = cluster.start_relayed(&network, "n1", &[]).unwrap();
    for name in &names[1..] {
        cluster.start_relayed(&network, name, &[seed]).unwrap();
    }
    assert!(
        wait_for(CONVERGE_MAX, || all_alive(&mut cluster, &names)
            .then_some(()))
        .is_some()
    );

    network.block("n1", "n2");
    // Watch longer than an unconfirmed suspicion lasts: only n1 suspects n2, so its timeout
    // stays at suspicion_max_mult (6) x the minimum (4 s), 24 s, before anything declares death.
    let window = Duration::from_secs(30);
    let started = Instant::now();
    let mut dead_seen = Vec::new();
    while started.elapsed() < window {
        for observer in names {
            for (member, state) in states(&mut cluster, observer) {
                if state == "dead" {
                    dead_seen.push((observer, member));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        dead_seen.is_empty(),
        "declared dead under a one-way partition: {dead_seen:?}"
    );
    network.heal();
    assert!(
        wait_for(CONVERGE_MAX, || all_alive(&mut cluster, &names)
            .then_some(()))
        .is_some()
    );
}

#[test]
fn twenty_nodes_under_ten_percent_loss_for_a_minute_declare_no_one_dead() {
    // Lifeguard's guarantee on real processes: steady loss is not mistaken for failure.
    let network = Network::new();
    let mut cluster = Cluster::new("e2e").unwrap();
    let names: Vec<String> = (1..=20).map(|i| format!("n{i}")).collect();
    let seed = cluster.start_relayed(&network, &names[0], &[]).unwrap();
    for name in &names[1..] {
        cluster.start_relayed(&network, name, &[seed]).unwrap();
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let full = wait_for(CONVERGE_MAX, || {
        all_alive(&mut cluster, &refs).then_some(())
    });
    assert!(
        full.is_some(),
        "no full roster: {:?}",
        states(&mut cluster, "n1")
    );

    network.set_loss(0.10);
    std::thread::sleep(Duration::from_secs(60));
    network.heal();
    // Each node counts the deaths its failure detector declared; a false one that was refuted
    // a moment later still counts, so nothing slips between polls. The probes that failed show
    // the loss really bit.
    let mut probes_failed = 0;
    for name in &refs {
        let info = api_ok(&mut cluster, name, "node_info", json!({}));
        let deaths = info["counters"]["deaths_declared"].as_u64().unwrap();
        assert_eq!(
            deaths, 0,
            "{name} declared {deaths} healthy nodes dead under 10% loss"
        );
        probes_failed += info["counters"]["probes_failed"].as_u64().unwrap();
    }
    assert!(
        probes_failed > 0,
        "no probe failed: the loss was not applied"
    );
    eprintln!(
        "20 nodes, 60 s at 10% loss: 0 deaths declared, {probes_failed} direct probes failed"
    );
    assert_eq!(cluster.running().len(), 20);
}
