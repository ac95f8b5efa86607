//! What one admitted node can take from another, with real node processes over real QUIC on
//! 127.0.0.1: `podmesh-flood` holds a certificate from the mesh CA and floods n2 with peer
//! requests as fast as their answers come; it fills only its own share (docs/operations.md,
//! "What one peer can make a node hold"), and an honest node's send, peer request and
//! handshake still succeed during and after the flood.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use podmesh_mesh::PeersConfig;
use podmesh_tests::{Cluster, wait_for};
use serde_json::{Value, json};

/// Membership convergence may take this long on a loaded machine.
const SETTLE_MAX: Duration = Duration::from_secs(40);

/// The shares the node runs with (mesh `PeersConfig` defaults).
fn inbox_share() -> u64 {
    PeersConfig::default().inbox_share_per_node_max as u64
}

fn peer_share() -> u64 {
    PeersConfig::default().peers_per_pod_per_node_max as u64
}

fn handshake_share() -> u64 {
    PeersConfig::default().handshakes_per_node_max as u64
}

fn ok(result: anyhow::Result<Result<Value, (String, String)>>) -> Value {
    match result.unwrap() {
        Ok(value) => value,
        Err((code, message)) => panic!("unexpected error {code}: {message}"),
    }
}

/// n1 and n2 joined, Pods `n1_pods` on n1 and `n2_pods` on n2, each node seeing the other's.
fn two_nodes(n1_pods: &[&str], n2_pods: &[&str]) -> (Cluster, SocketAddr) {
    two_nodes_with(n1_pods, n2_pods, &[])
}

/// [`two_nodes`], with `n2_env` in n2's environment.
fn two_nodes_with(
    n1_pods: &[&str],
    n2_pods: &[&str],
    n2_env: &[(&str, &str)],
) -> (Cluster, SocketAddr) {
    let mut cluster = Cluster::new("quotas").unwrap();
    let seed = cluster.start("n1", &[]).unwrap();
    let n2 = cluster.start_with("n2", &[seed], n2_env).unwrap();
    for pod in n1_pods {
        ok(cluster.api("n1", "pod_create", json!({ "name": pod })));
    }
    for pod in n2_pods {
        ok(cluster.api("n2", "pod_create", json!({ "name": pod })));
    }
    let last = format!("{}@n2", n2_pods.last().unwrap());
    let known = wait_for(SETTLE_MAX, || {
        let directory = cluster.api("n1", "directory", json!({})).ok()?.ok()?;
        directory["pods"]
            .as_array()?
            .iter()
            .any(|p| p["address"] == last.as_str())
            .then_some(())
    });
    assert!(known.is_some(), "n1 never saw {last}");
    (cluster, n2)
}

/// Runs `podmesh-flood MODE` as node n3 against n2; returns its counts.
fn flood(cluster: &Cluster, n2: SocketAddr, mode: &str, pod: &str, count: u64) -> Value {
    let issued = cluster.dir().join("n3").join("certs");
    let certs = if issued.exists() {
        issued
    } else {
        cluster.issue("n3", None).unwrap()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_podmesh-flood"))
        .args([mode, "--certs-dir"])
        .arg(&certs)
        .args(["--to", &n2.to_string(), "--node", "n2", "--pod", pod])
        .args(["--count", &count.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podmesh-flood {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn refused(counts: &Value, code: &str) -> u64 {
    counts["refused"][code].as_u64().unwrap_or(0)
}

#[test]
fn a_flooding_node_fills_only_its_share_of_an_inbox() {
    let (mut cluster, n2) = two_nodes(&["a"], &["b"]);
    ok(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
    let extra = 50;
    let counts = flood(&cluster, n2, "inbox", "b", inbox_share() + extra);
    assert_eq!(counts["ok"], inbox_share(), "{counts}");
    assert_eq!(refused(&counts, "InboxFull"), extra, "{counts}");
    // The honest sender still has room, and so do its next messages.
    for i in 0..3 {
        let sent = ok(cluster.api(
            "n1",
            "send_to_peer",
            json!({ "pod": "a", "name": "b@n2", "message": format!("honest {i}") }),
        ));
        assert!(sent["id"].is_string(), "{sent}");
    }
    let inbox = ok(cluster.api("n2", "inbox", json!({ "pod": "b" })));
    let messages = inbox["messages"].as_array().unwrap();
    let from = |who: &str| messages.iter().filter(|m| m["from"] == who).count() as u64;
    assert_eq!(from("flood@n3"), inbox_share());
    assert_eq!(from("a@n1"), 3);
}

#[test]
fn a_flooding_node_takes_only_its_share_of_a_pods_peer_slots() {
    let (mut cluster, n2) = two_nodes(&["d"], &["c"]);
    let extra = 4;
    let counts = flood(&cluster, n2, "peers", "c", peer_share() + extra);
    assert_eq!(counts["ok"], peer_share(), "{counts}");
    assert_eq!(refused(&counts, "InvalidRequest"), extra, "{counts}");
    let reply = ok(cluster.api("n1", "register_peer", json!({ "pod": "d", "name": "c@n2" })));
    assert_eq!(reply["peer"], "c@n2", "{reply}");
    let status = ok(cluster.api("n2", "pod_status", json!({ "name": "c" })));
    let peers = status["peers"].as_array().unwrap();
    assert_eq!(peers.len() as u64, peer_share() + 1, "{status}");
    assert!(peers.iter().any(|p| p == "d@n1"), "{status}");
}

#[test]
fn a_coordinator_that_never_finishes_holds_only_its_share_of_the_handshakes() {
    let (mut cluster, n2) = two_nodes(&["a"], &["t0", "t1", "t2", "t3"]);
    let extra = 8;
    let counts = flood(
        &cluster,
        n2,
        "prepare",
        "t0,t1,t2,t3",
        handshake_share() + extra,
    );
    assert_eq!(counts["ok"], handshake_share(), "{counts}");
    assert_eq!(refused(&counts, "Busy"), extra, "{counts}");
    let info = ok(cluster.api("n2", "node_info", json!({})));
    assert_eq!(info["handshakes_logged"], handshake_share(), "{info}");
    // The flooder is gone and its prepares stay logged; an honest handshake still goes through,
    // with each of the Pods the flooder used.
    for target in ["t0@n2", "t3@n2"] {
        let reply = ok(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": target })));
        assert_eq!(reply["peer"], target, "{reply}");
    }
}

#[test]
fn prepares_of_a_coordinator_membership_never_knew_end_after_the_give_up_and_free_their_slots() {
    // The flooder never joins: membership does not know it, so once its prepares have waited
    // participant_give_up (here 15 s) they end, their Pods go back to their peers before, and
    // the ended markers still count in its share.
    let env = [("PODMESH_PARTICIPANT_GIVE_UP_S", "15")];
    let (mut cluster, n2) = two_nodes_with(&["a"], &["t0", "t1", "t2", "t3"], &env);
    let counts = flood(&cluster, n2, "prepare", "t0,t1,t2,t3", handshake_share());
    assert_eq!(counts["ok"], handshake_share(), "{counts}");
    let ended = wait_for(SETTLE_MAX * 2, || {
        let info = cluster.api("n2", "node_info", json!({})).ok()?.ok()?;
        (info["handshakes_logged"] == 0 && info["handshakes_ended"] == handshake_share())
            .then_some(info)
    });
    assert!(ended.is_some(), "the flooder's prepares never ended");
    for pod in ["t0", "t1", "t2", "t3"] {
        let status = ok(cluster.api("n2", "pod_status", json!({ "name": pod })));
        assert_eq!(status["peers"], json!([]), "{status}");
    }
    // Its markers fill its share: it cannot start more here (on a pair no marker holds), and
    // honest nodes are unaffected.
    let again = flood(&cluster, n2, "prepare", "t1", 1);
    assert_eq!(refused(&again, "Busy"), 1, "{again}");
    let message = again["messages"]["Busy"].as_str().unwrap_or_default();
    assert!(message.ends_with("its share"), "{again}");
    let reply = ok(cluster.api(
        "n1",
        "register_peer",
        json!({ "pod": "a", "name": "t0@n2" }),
    ));
    assert_eq!(reply["peer"], "t0@n2", "{reply}");
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

const MIB: u64 = 1 << 20;

#[test]
fn connections_writing_large_frames_slowly_hold_bounded_memory_given_back_when_they_close() {
    // Six connections from one certificate, each keeping every stream it may open filled with
    // an unfinished frame of the largest size. Two are kept (connections_per_node_max); each
    // holds at most 16 membership frames of 1 MiB, 16 request frames of 128 KiB and a 2 MiB
    // window: 40 MiB of live data for both. The rest of the bound is the allocator's room and
    // quinn's own state. Before the bounds, four such connections took a node from 25 MB to
    // 165 MB, still 159 MB after they closed.
    let mut cluster = Cluster::new("quotas").unwrap();
    let n2 = cluster.start("n2", &[]).unwrap();
    let pid = cluster.node("n2").pid().unwrap();
    let certs = cluster.issue("n3", None).unwrap();
    // Let the node finish starting before the baseline.
    wait_for(SETTLE_MAX, || {
        cluster.api("n2", "node_info", json!({})).ok()?.ok()
    });
    let start = rss(pid);
    let mut flooder = Command::new(env!("CARGO_BIN_EXE_podmesh-flood"))
        .args(["slow", "--certs-dir"])
        .arg(&certs)
        .args(["--to", &n2.to_string(), "--node", "n2", "--pod", "-"])
        .args(["--count", "6", "--hold-s", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = start;
    while flooder.try_wait().unwrap().is_none() {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = flooder.wait_with_output().unwrap();
    assert!(out.status.success());
    let counts: Value = serde_json::from_slice(&out.stdout).unwrap();
    let info = ok(cluster.api("n2", "node_info", json!({})));
    let counters = &info["counters"];
    eprintln!(
        "resident: {} MiB at start, {} MiB at the peak; flood {counts}; node {counters}",
        start / MIB,
        peak / MIB
    );
    assert!(counts["ok"].as_u64().unwrap() > 0, "{counts}");
    assert!(
        counters["frames_too_slow"].as_u64().unwrap() > 0,
        "{counters}"
    );
    assert!(
        counters["connections_replaced"].as_u64().unwrap() >= 4,
        "{counters}"
    );
    assert!(
        peak <= start + 96 * MIB,
        "{} MiB over the start",
        peak.saturating_sub(start) / MIB
    );
    let back = wait_for(SETTLE_MAX, || {
        let now = rss(pid);
        (now <= start + 16 * MIB).then_some(now)
    });
    assert!(
        back.is_some(),
        "still {} MiB over the start after the connections closed",
        rss(pid).saturating_sub(start) / MIB
    );
    eprintln!("resident after they closed: {} MiB", back.unwrap() / MIB);
}
