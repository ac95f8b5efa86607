//! What an operator relies on, with real processes: metrics, stop and restart as systemd does
//! them, reloading a blocklist without a restart, and the event monitor.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use podmesh_tests::{Cluster, podmesh, podmesh_bin, wait_for};
use serde_json::json;

const SETTLE_MAX: Duration = Duration::from_secs(30);

/// A loopback port nobody listens on right now.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// `GET /metrics` with a plain TCP client, as a scraper would.
fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: podmesh\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.1 200").then_some(response)
}

fn all_alive(cluster: &mut Cluster, node: &str, count: usize) -> bool {
    cluster
        .members(node)
        .is_ok_and(|m| m.len() == count && m.values().all(|(state, _)| state == "alive"))
}

/// Nodes n1 and n2 (joined through n1), once each sees the other alive.
fn two_nodes() -> Cluster {
    let mut cluster = Cluster::new("ops").unwrap();
    let seed = cluster.start("n1", &[]).unwrap();
    cluster.start("n2", &[seed]).unwrap();
    let joined = wait_for(SETTLE_MAX, || {
        (all_alive(&mut cluster, "n1", 2) && all_alive(&mut cluster, "n2", 2)).then_some(())
    });
    assert!(joined.is_some(), "n1 and n2 did not see each other");
    cluster
}

#[test]
fn metrics_show_the_members_of_a_two_node_mesh() {
    // `podmesh_members{state="alive"} 2` once two nodes see each other, in Prometheus text.
    let mut cluster = Cluster::new("ops").unwrap();
    let metrics = free_port();
    let seed = cluster
        .start_args("n1", &[], &["--metrics-listen".into(), metrics.to_string()])
        .unwrap();
    cluster.start("n2", &[seed]).unwrap();
    let text = wait_for(SETTLE_MAX, || {
        scrape(metrics).filter(|t| t.contains("podmesh_members{state=\"alive\"} 2\n"))
    });
    let text = text.unwrap_or_else(|| panic!("no two alive members in {:?}", scrape(metrics)));
    assert!(
        text.contains("Content-Type: text/plain; version=0.0.4"),
        "{text}"
    );
    for name in [
        "podmesh_probes_total",
        "podmesh_local_health",
        "podmesh_connections",
        "podmesh_delivery_seconds_bucket",
        "podmesh_bad_frames_total",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
}

#[test]
fn nodes_stopped_by_sigterm_find_each_other_again_without_seeds() {
    // systemd stops with SIGTERM (a graceful leave); both come back with no --join.
    let mut cluster = two_nodes();
    for node in ["n1", "n2"] {
        cluster.terminate(node).unwrap();
        assert_eq!(
            cluster.wait_exit(node, SETTLE_MAX),
            Some(true),
            "{node} did not stop"
        );
    }
    cluster.restart("n1", &[]).unwrap();
    cluster.restart("n2", &[]).unwrap();
    let back = wait_for(SETTLE_MAX, || {
        (all_alive(&mut cluster, "n1", 2) && all_alive(&mut cluster, "n2", 2)).then_some(())
    });
    assert!(
        back.is_some(),
        "after a restart without seeds: n1 {:?}, n2 {:?}",
        cluster.members("n1"),
        cluster.members("n2")
    );
}

#[test]
fn a_restart_right_after_sigterm_waits_for_the_stopping_node() {
    // The new process finds the data directory still locked and waits instead of failing.
    let mut cluster = two_nodes();
    let before = cluster.members("n1").unwrap()["n2"].1;
    cluster.terminate("n2").unwrap();
    cluster.restart_now("n2", &[]).unwrap();
    let back = wait_for(SETTLE_MAX, || {
        let members = cluster.members("n1").ok()?;
        let (state, incarnation) = members.get("n2")?;
        (state == "alive" && *incarnation > before).then_some(())
    });
    assert!(
        back.is_some(),
        "n2 did not come back: {}",
        cluster.log("n2")
    );
    let log = cluster.log("n2");
    assert!(
        log.contains("data directory in use; waiting"),
        "no wait: {log}"
    );
}

#[test]
fn a_blocklisted_certificate_is_removed_by_sighup_without_a_restart() {
    // Add n2's fingerprint to n1's config file, SIGHUP n1: n1 closes and refuses n2, which then
    // dies in n1's view within the membership bound, while n1 keeps running.
    let mut cluster = Cluster::new("ops").unwrap();
    let config = cluster.dir().join("n1.toml");
    std::fs::write(&config, "blocklist = []\n").unwrap();
    let seed = cluster
        .start_args(
            "n1",
            &[],
            &["--config".into(), config.display().to_string()],
        )
        .unwrap();
    cluster.start("n2", &[seed]).unwrap();
    assert!(
        wait_for(SETTLE_MAX, || all_alive(&mut cluster, "n1", 2)
            .then_some(()))
        .is_some()
    );

    let cert = cluster.node("n2").certs_dir.join("node.crt");
    let shown = podmesh(&["certs", "show", &cert.display().to_string(), "--json"]).unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let fingerprint = shown[0]["sha256"].as_str().unwrap().to_owned();
    std::fs::write(&config, format!("blocklist = [\"{fingerprint}\"]\n")).unwrap();
    let pid = cluster.node("n1").pid().unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let sent = std::time::Instant::now();

    let dead = wait_for(SETTLE_MAX, || {
        let members = cluster.members("n1").ok()?;
        (members.get("n2")?.0 == "dead").then_some(())
    });
    assert!(
        dead.is_some(),
        "n2 still in n1's mesh: {:?}",
        cluster.members("n1")
    );
    eprintln!("n2 dead in n1's view {:?} after SIGHUP", sent.elapsed());
    // Refused in the TLS handshake, n2 cannot refute its way back in.
    let back = wait_for(Duration::from_secs(3), || {
        let members = cluster.members("n1").ok()?;
        (members.get("n2")?.0 == "alive").then_some(())
    });
    assert!(back.is_none(), "the blocklisted node came back");
    assert!(cluster.node("n1").is_running(), "SIGHUP stopped the node");
    assert_eq!(cluster.node("n1").pid(), Some(pid));
    let log = cluster.log("n1");
    assert!(log.contains("certificates and blocklist reloaded"), "{log}");
}

#[test]
fn a_reloaded_ca_bundle_admits_a_node_of_the_new_ca_without_a_restart() {
    // CA rotation's first round: n1 trusts only the old CA and refuses n3, issued by the new
    // one; with both CAs in n1's ca.crt and a reload, n3's retries get in.
    let mut cluster = Cluster::new("ops").unwrap();
    let seed = cluster.start("n1", &[]).unwrap();
    let ca2 = cluster.dir().join("ca2");
    let init = podmesh(&[
        "certs",
        "init",
        "--mesh",
        "ops",
        "--ca-dir",
        &ca2.display().to_string(),
    ]);
    assert!(init.unwrap().status.success());
    let n3_certs = cluster.issue("n3", Some(&ca2)).unwrap();
    let old_ca = std::fs::read_to_string(cluster.ca_dir.join("ca.crt")).unwrap();
    let new_ca = std::fs::read_to_string(ca2.join("ca.crt")).unwrap();
    // n3 trusts both, as every node does during a rotation.
    std::fs::write(n3_certs.join("ca.crt"), format!("{new_ca}{old_ca}")).unwrap();
    cluster
        .spawn("n3", n3_certs, "127.0.0.1:0".parse().unwrap(), &[seed])
        .unwrap();
    let refused = wait_for(Duration::from_secs(5), || {
        let members = cluster.members("n1").ok()?;
        members.contains_key("n3").then_some(())
    });
    assert!(
        refused.is_none(),
        "n1 admitted a node of a CA it does not trust"
    );

    let n1_ca = cluster.node("n1").certs_dir.join("ca.crt");
    std::fs::write(&n1_ca, format!("{old_ca}{new_ca}")).unwrap();
    let reloaded = cluster.cli_json("n1", &["node", "reload"]).unwrap();
    assert_eq!(reloaded["expelled"], json!([]));
    let admitted = wait_for(SETTLE_MAX, || {
        (all_alive(&mut cluster, "n1", 2) && all_alive(&mut cluster, "n3", 2)).then_some(())
    });
    assert!(
        admitted.is_some(),
        "n3 not admitted after the reload: {:?}",
        cluster.members("n1")
    );
}

#[test]
fn node_reload_reports_a_bad_blocklist_and_keeps_the_old_one() {
    // n2 is blocklisted from the start; a reload of a broken file changes nothing (n2 stays
    // out), and a reload that empties the list lets n2 in.
    let mut cluster = Cluster::new("ops").unwrap();
    let n2_certs = cluster.issue("n2", None).unwrap();
    let shown = podmesh(&[
        "certs",
        "show",
        &n2_certs.join("node.crt").display().to_string(),
        "--json",
    ]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.unwrap().stdout).unwrap();
    let fingerprint = shown[0]["sha256"].as_str().unwrap().to_owned();
    let config = cluster.dir().join("n1.toml");
    std::fs::write(&config, format!("blocklist = [\"{fingerprint}\"]\n")).unwrap();
    let seed = cluster
        .start_args(
            "n1",
            &[],
            &["--config".into(), config.display().to_string()],
        )
        .unwrap();
    cluster
        .spawn("n2", n2_certs, "127.0.0.1:0".parse().unwrap(), &[seed])
        .unwrap();

    std::fs::write(&config, "blocklist = [\"not-a-fingerprint\"]\n").unwrap();
    let refused = cluster.api("n1", "reload", json!({})).unwrap();
    let (code, message) = refused.unwrap_err();
    assert_eq!(code, "invalid_request");
    assert!(message.contains("fingerprint"), "{message}");
    let admitted = wait_for(Duration::from_secs(5), || {
        cluster.members("n1").ok()?.contains_key("n2").then_some(())
    });
    assert!(admitted.is_none(), "a failed reload dropped the blocklist");

    std::fs::write(&config, "blocklist = []\n").unwrap();
    let reloaded = cluster.cli_json("n1", &["node", "reload"]).unwrap();
    assert_eq!(reloaded["blocklisted"], 0);
    assert_eq!(reloaded["expelled"], json!([]));
    let admitted = wait_for(SETTLE_MAX, || {
        all_alive(&mut cluster, "n1", 2).then_some(())
    });
    assert!(
        admitted.is_some(),
        "n2 still refused: {:?}",
        cluster.members("n1")
    );
}

#[test]
fn monitor_streams_member_and_pod_events_as_json_lines() {
    // `podmesh monitor --json`: one object a line, members and every local Pod's events.
    let mut cluster = Cluster::new("ops").unwrap();
    let seed = cluster.start("n1", &[]).unwrap();
    let data_dir = cluster.node("n1").data_dir.clone();
    let mut monitor = Command::new(podmesh_bin())
        .args([
            "monitor",
            "--json",
            "--data-dir",
            &data_dir.display().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = monitor.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    // The stream is live once its first line, the `monitoring` reply, is out.
    let first = line_rx
        .recv_timeout(SETTLE_MAX)
        .expect("monitor printed nothing");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["event"], "monitoring", "{first}");
    cluster.start("n2", &[seed]).unwrap();
    for (node, pod) in [("n1", "a"), ("n2", "b")] {
        assert!(
            cluster
                .api(node, "pod_create", json!({ "name": pod }))
                .unwrap()
                .is_ok()
        );
    }
    let registered = wait_for(SETTLE_MAX, || {
        let reply = cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" }));
        reply.ok()?.ok()
    });
    assert!(registered.is_some());

    let mut seen_member = false;
    let mut seen_peer = false;
    let deadline = std::time::Instant::now() + SETTLE_MAX;
    while !(seen_member && seen_peer) && std::time::Instant::now() < deadline {
        let Ok(line) = line_rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen_member |= event["event"] == "member" && event["data"]["name"] == "n2";
        seen_peer |= event["event"] == "peer_registered" && event["data"]["pod"] == "a";
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert!(seen_member, "no member event for n2");
    assert!(seen_peer, "no peer_registered event for a");
}
