//! Claims only their subject can make (DESIGN section 2), with real node processes over real
//! QUIC on 127.0.0.1. Three honest nodes run Pods `a@n1`, `b@n2` (peered with `a@n1`) and
//! `c@n3`; `podmesh-forge` holds a certificate from the same mesh CA, introduces itself
//! honestly, then sends all three nodes claims about n2 that only n2 could make, signed with its
//! own key (under its own key id and under n2's), in gossip and in push/pulls that present its
//! own certificate as n2's. Afterwards, on every honest node: n2 is alive at its own address in
//! a life n2 signed, `b@n2` is idle with its real peers, no invented Pod exists, and the
//! forgeries are counted in `claims_refused`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use podmesh_tests::{Cluster, wait_for};
use serde_json::{Value, json};

/// Membership and Pod records may take this long to settle on a loaded machine.
const SETTLE_MAX: Duration = Duration::from_secs(40);

/// How long the forgeries get to do harm, after the last one is sent, before the checks: far
/// longer than gossip takes to spread a claim through three nodes.
const AFTERMATH: Duration = Duration::from_secs(3);

const HONEST: [&str; 3] = ["n1", "n2", "n3"];

fn ok(result: anyhow::Result<Result<Value, (String, String)>>) -> Value {
    match result.unwrap() {
        Ok(value) => value,
        Err((code, message)) => panic!("unexpected error {code}: {message}"),
    }
}

/// The three honest nodes, settled: every node sees every other alive and `b@n2` peered with
/// `a@n1`.
fn honest_mesh() -> (Cluster, BTreeMap<&'static str, SocketAddr>) {
    let mut cluster = Cluster::new("forgery").unwrap();
    let n1 = cluster.start("n1", &[]).unwrap();
    let n2 = cluster.start("n2", &[n1]).unwrap();
    let n3 = cluster.start("n3", &[n1]).unwrap();
    for (node, pod) in [("n1", "a"), ("n2", "b"), ("n3", "c")] {
        ok(cluster.api(node, "pod_create", json!({ "name": pod })));
    }
    let settled = wait_for(SETTLE_MAX, || {
        HONEST
            .iter()
            .all(|node| {
                cluster
                    .api(node, "directory", json!({}))
                    .ok()
                    .and_then(|r| r.ok())
                    .is_some_and(|d| {
                        let pods = d["pods"].as_array().cloned().unwrap_or_default();
                        ["a@n1", "b@n2", "c@n3"]
                            .iter()
                            .all(|p| pods.iter().any(|e| e["address"] == *p))
                    })
            })
            .then_some(())
    });
    assert!(settled.is_some(), "the honest nodes never saw every Pod");
    ok(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
    let peered = wait_for(SETTLE_MAX, || {
        HONEST
            .iter()
            .all(|node| {
                pod_of(&mut cluster, node, "b@n2").is_some_and(|b| b["peers"] == json!(["a@n1"]))
            })
            .then_some(())
    });
    assert!(peered.is_some(), "not every node saw b@n2 peered with a@n1");
    let addrs = BTreeMap::from([("n1", n1), ("n2", n2), ("n3", n3)]);
    (cluster, addrs)
}

/// `node`'s directory entry for `pod`, if it has one.
fn pod_of(cluster: &mut Cluster, node: &str, pod: &str) -> Option<Value> {
    let directory = cluster.api(node, "directory", json!({})).ok()?.ok()?;
    directory["pods"]
        .as_array()?
        .iter()
        .find(|e| e["address"] == pod)
        .cloned()
}

/// `node`'s record of member `member`.
fn member_of(cluster: &mut Cluster, node: &str, member: &str) -> Value {
    let members = ok(cluster.api(node, "members", json!({})));
    members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == member)
        .cloned()
        .unwrap_or_else(|| panic!("{node} does not know {member}"))
}

fn claims_refused(cluster: &mut Cluster, node: &str) -> u64 {
    let info = ok(cluster.api(node, "node_info", json!({})));
    info["counters"]["claims_refused"].as_u64().unwrap()
}

/// Runs `podmesh-forge KIND` as node `mallory` against the three honest nodes, about n2.
fn forge(cluster: &mut Cluster, addrs: &BTreeMap<&str, SocketAddr>, kind: &str) -> Value {
    let certs = cluster.issue("mallory", None).unwrap();
    let incarnation = member_of(cluster, "n1", "n2")["incarnation"]
        .as_u64()
        .unwrap();
    let victim_cert = cluster.dir().join("n2").join("certs").join("node.crt");
    let mut command = Command::new(env!("CARGO_BIN_EXE_podmesh-forge"));
    command.arg(kind).arg("--certs-dir").arg(&certs);
    for (name, addr) in addrs {
        command.arg("--to").arg(format!("{name}={addr}"));
    }
    command
        .args(["--victim", "n2", "--victim-addr", &addrs["n2"].to_string()])
        .args(["--incarnation", &incarnation.to_string(), "--pod", "b"])
        .arg("--victim-cert")
        .arg(&victim_cert);
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "podmesh-forge {kind}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(AFTERMATH);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What every honest node must still hold after a forgery: n2 alive at its own address in a
/// life n2 itself signed, `b@n2` idle with its real peers, no Pod `ghost` anywhere, and the
/// forgeries counted as refused.
fn assert_unharmed(cluster: &mut Cluster, addrs: &BTreeMap<&str, SocketAddr>) {
    let own = member_of(cluster, "n2", "n2");
    assert_eq!(own["state"], "alive", "n2 about itself: {own}");
    let life = own["incarnation"].as_u64().unwrap();
    assert!(
        life < u64::MAX / 2,
        "n2 refuted to an incarnation it cannot beat: {own}"
    );
    for node in HONEST {
        if node != "n2" {
            let n2 = member_of(cluster, node, "n2");
            assert_eq!(n2["state"], "alive", "{node}: {n2}");
            assert_eq!(n2["address"], addrs["n2"].to_string(), "{node}: {n2}");
            assert!(n2["incarnation"].as_u64().unwrap() <= life, "{node}: {n2}");
        }
        let b = pod_of(cluster, node, "b@n2").unwrap_or_else(|| panic!("{node} lost b@n2"));
        assert_eq!(b["status"], "idle", "{node}: {b}");
        assert_eq!(b["peers"], json!(["a@n1"]), "{node}: {b}");
        assert!(
            pod_of(cluster, node, "ghost@n2").is_none(),
            "{node} holds ghost@n2"
        );
        assert!(claims_refused(cluster, node) > 0, "{node} refused nothing");
    }
    // And a message to b@n2 still goes through: n1 holds b@n2 live.
    let sent = ok(cluster.api(
        "n1",
        "send_to_peer",
        json!({ "pod": "a", "name": "b@n2", "message": "still here" }),
    ));
    assert!(sent["id"].is_string(), "{sent}");
}

#[test]
fn a_forged_alive_cannot_move_a_node_or_take_its_incarnation() {
    let (mut cluster, addrs) = honest_mesh();
    let sent = forge(&mut cluster, &addrs, "alive");
    assert!(sent["sent"].as_u64().unwrap() > 0);
    assert_unharmed(&mut cluster, &addrs);
}

#[test]
fn a_forged_left_does_not_take_a_node_out_of_the_mesh() {
    let (mut cluster, addrs) = honest_mesh();
    forge(&mut cluster, &addrs, "left");
    assert_unharmed(&mut cluster, &addrs);
}

#[test]
fn a_forged_pod_record_cannot_stop_a_pod_or_change_its_peers() {
    let (mut cluster, addrs) = honest_mesh();
    forge(&mut cluster, &addrs, "pod");
    assert_unharmed(&mut cluster, &addrs);
}

#[test]
fn a_pod_invented_for_another_node_is_refused() {
    let (mut cluster, addrs) = honest_mesh();
    forge(&mut cluster, &addrs, "invent");
    assert_unharmed(&mut cluster, &addrs);
}

#[test]
fn an_accusation_at_a_life_never_signed_changes_nothing() {
    let (mut cluster, addrs) = honest_mesh();
    forge(&mut cluster, &addrs, "accuse");
    assert_unharmed(&mut cluster, &addrs);
}

#[test]
fn members_only_a_forger_vouches_for_never_exist() {
    // Ten invented nodes, alive at the forger's address with its certificate presented as
    // theirs: no honest node ever holds them, so they cost nothing beyond the bounded time
    // their claims wait for a certificate.
    let (mut cluster, addrs) = honest_mesh();
    forge(&mut cluster, &addrs, "members");
    for node in HONEST {
        let members = ok(cluster.api(node, "members", json!({})));
        let names: Vec<&str> = members["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["name"].as_str())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with("ghost")),
            "{node} holds {names:?}"
        );
        assert!(
            claims_refused(&mut cluster, node) > 0,
            "{node} refused nothing"
        );
    }
    assert_unharmed(&mut cluster, &addrs);
}
