//! Every node restarted in turn: nothing durable is lost.

use std::time::Duration;

use podmesh_tests::{Cluster, wait_for};
use serde_json::{Value, json};

const SETTLE_MAX: Duration = Duration::from_secs(60);
const NODES: [&str; 4] = ["n1", "n2", "n3", "n4"];

fn api_ok(cluster: &mut Cluster, node: &str, method: &str, params: Value) -> Value {
    match cluster.api(node, method, params).unwrap() {
        Ok(v) => v,
        Err((code, message)) => panic!("{method} on {node}: {code}: {message}"),
    }
}

fn pod(node: &str) -> String {
    format!("p{}", &node[1..])
}

#[test]
fn every_node_restarted_in_turn_keeps_every_relation_and_message() {
    // A ring of peers p1..p4, one message along each edge, then SIGKILL and restart of each
    // node in turn: relations reciprocal, inboxes intact, no handshake log entry left.
    let mut cluster = Cluster::new("e2e").unwrap();
    let seed = cluster.start("n1", &[]).unwrap();
    for node in &NODES[1..] {
        cluster.start(node, &[seed]).unwrap();
    }
    for node in NODES {
        api_ok(
            &mut cluster,
            node,
            "pod_create",
            json!({ "name": pod(node) }),
        );
    }
    // Every sender must see its target's record before it sends: gossip reaches nodes one by
    // one, so wait for every directory, not only the seed's.
    let known = wait_for(SETTLE_MAX, || {
        for node in NODES {
            let dir = cluster.api(node, "directory", json!({})).ok()?.ok()?;
            (dir["pods"].as_array()?.len() == NODES.len()).then_some(())?;
        }
        Some(())
    });
    assert!(known.is_some());
    for (i, node) in NODES.iter().enumerate() {
        let next = NODES[(i + 1) % NODES.len()];
        let target = format!("{}@{next}", pod(next));
        api_ok(
            &mut cluster,
            node,
            "register_peer",
            json!({ "pod": pod(node), "name": target }),
        );
        api_ok(
            &mut cluster,
            node,
            "send_to_peer",
            json!({ "pod": pod(node), "name": target, "message": format!("from {node}") }),
        );
    }

    for node in NODES {
        let join = if node == "n1" { vec![] } else { vec![seed] };
        cluster.restart(node, &join).unwrap();
        let alive = wait_for(SETTLE_MAX, || {
            let members = cluster.members("n2").ok()?;
            (members.len() == NODES.len() && members.values().all(|(s, _)| s == "alive"))
                .then_some(())
        });
        assert!(
            alive.is_some(),
            "mesh did not recover after restarting {node}"
        );
    }

    // A Commit in flight when its participant was killed is re-sent until applied.
    let settled = wait_for(SETTLE_MAX, || {
        NODES
            .iter()
            .all(|node| {
                cluster
                    .api(node, "node_info", json!({}))
                    .ok()
                    .and_then(Result::ok)
                    .is_some_and(|info| info["handshakes_logged"] == 0)
            })
            .then_some(())
    });
    assert!(settled.is_some(), "handshake log entries left behind");
    for (i, node) in NODES.iter().enumerate() {
        let next = NODES[(i + 1) % NODES.len()];
        let prev = NODES[(i + NODES.len() - 1) % NODES.len()];
        let record = api_ok(
            &mut cluster,
            node,
            "pod_status",
            json!({ "name": pod(node) }),
        );
        let mut peers: Vec<String> = record["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        peers.sort();
        let mut expected = vec![
            format!("{}@{next}", pod(next)),
            format!("{}@{prev}", pod(prev)),
        ];
        expected.sort();
        assert_eq!(peers, expected, "{node}");
        let inbox = api_ok(&mut cluster, node, "inbox", json!({ "pod": pod(node) }));
        let messages = inbox["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1, "{node}: {inbox}");
        assert_eq!(messages[0]["message"], format!("from {prev}"));
    }
}
