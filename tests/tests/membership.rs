//! Membership with real node processes over real QUIC on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use podmesh_tests::{Cluster, wait_for};

/// LAN preset figures the daemon runs with (DESIGN section 3).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const SUSPICION_MULT: f64 = 4.0;

/// The detection budget of DESIGN section 9 for `n` nodes,
/// `probe_interval * (suspicion_mult * log10 n + 3)`, with `log10 n` at least 1 as in the
/// suspicion minimum of DESIGN section 3 (below 10 nodes the minimum does not shrink further).
fn detection_bound(n: usize) -> Duration {
    PROBE_INTERVAL.mul_f64(SUSPICION_MULT * (n as f64).log10().max(1.0) + 3.0)
}

/// Real processes on a shared 2-core machine are scheduled late at times; a wait allows this
/// much on top of a protocol bound before it calls the run a failure.
const SCHEDULING_SLACK: Duration = Duration::from_secs(10);
/// How long a join burst may take to converge before the test fails.
const CONVERGE_MAX: Duration = Duration::from_secs(30);

fn all_see(
    cluster: &mut Cluster,
    observers: &[&str],
    expect: impl Fn(&BTreeMap<String, (String, u64)>) -> bool,
) -> bool {
    observers
        .iter()
        .all(|o| cluster.members(o).map(|m| expect(&m)).unwrap_or(false))
}

#[test]
fn five_nodes_converge_detect_a_crash_welcome_a_restart_and_see_a_leave() {
    // The whole membership life cycle a user relies on, on one 5-node mesh.
    let mut cluster = Cluster::new("e2e").unwrap();
    let seed = cluster.start("n1", &[]).unwrap();
    for name in ["n2", "n3", "n4", "n5"] {
        cluster.start(name, &[seed]).unwrap();
    }
    let names = ["n1", "n2", "n3", "n4", "n5"];

    // Join: every node lists all five alive.
    let converged = wait_for(CONVERGE_MAX, || {
        all_see(&mut cluster, &names, |m| {
            m.len() == 5 && m.values().all(|(state, _)| state == "alive")
        })
        .then_some(())
    });
    assert!(
        converged.is_some(),
        "no full roster: {:?}",
        cluster.members("n1")
    );
    let before = cluster.members("n1").unwrap()["n5"].1;

    // n5 must have written the other four to its store, or it could not rejoin without seeds.
    let persisted = wait_for(CONVERGE_MAX, || {
        let info = cluster.cli_json("n5", &["node", "info"]).ok()?;
        (info["members_persisted"].as_u64()? >= 4).then_some(())
    });
    assert!(persisted.is_some(), "n5 never persisted its members");

    // Crash: SIGKILL n5; the other four mark it dead within the detection bound.
    let killed_at = Instant::now();
    cluster.kill("n5");
    let others = ["n1", "n2", "n3", "n4"];
    let bound = detection_bound(5);
    let dead = wait_for(bound + SCHEDULING_SLACK, || {
        all_see(&mut cluster, &others, |m| m["n5"].0 == "dead").then_some(())
    });
    let took = killed_at.elapsed();
    assert!(dead.is_some(), "n5 not dead everywhere after {took:?}");
    eprintln!("crash of n5 known dead by all 4 others after {took:?} (budget {bound:?})");

    // Restart on the same data directory with no seed: alive everywhere with a higher
    // incarnation, under the same name.
    cluster.restart("n5", &[]).unwrap();
    let back = wait_for(CONVERGE_MAX, || {
        all_see(&mut cluster, &names, |m| {
            m.get("n5")
                .is_some_and(|(s, inc)| s == "alive" && *inc > before)
        })
        .then_some(())
    });
    assert!(
        back.is_some(),
        "n5 not back: n1 sees {:?}; n5 log: {}",
        cluster.members("n1"),
        cluster.log("n5")
    );

    // Leave: n4 is `left`, not dead, everywhere, and its process exits cleanly.
    cluster.cli_json("n4", &["leave"]).unwrap();
    assert_eq!(cluster.wait_exit("n4", Duration::from_secs(10)), Some(true));
    let left = wait_for(CONVERGE_MAX, || {
        all_see(&mut cluster, &["n1", "n2", "n3", "n5"], |m| {
            m["n4"].0 == "left"
        })
        .then_some(())
    });
    assert!(left.is_some(), "n4 not left: {:?}", cluster.members("n1"));

    // SIGTERM is a leave too: n3 exits cleanly and is `left` for the rest.
    cluster.terminate("n3").unwrap();
    assert_eq!(cluster.wait_exit("n3", Duration::from_secs(10)), Some(true));
    let left = wait_for(CONVERGE_MAX, || {
        all_see(&mut cluster, &["n1", "n2", "n5"], |m| m["n3"].0 == "left").then_some(())
    });
    assert!(left.is_some(), "n3 not left: {:?}", cluster.members("n1"));
}

#[test]
fn a_node_with_a_certificate_from_another_ca_never_joins() {
    // Same mesh name, foreign CA: its connections are refused and nobody lists it.
    let mut cluster = Cluster::new("e2e").unwrap();
    let seed = cluster.start("n1", &[]).unwrap();
    cluster.start("n2", &[seed]).unwrap();
    let other_ca = cluster.dir().join("other-ca");
    let out = podmesh_tests::podmesh(&[
        "certs",
        "init",
        "--mesh",
        "e2e",
        "--ca-dir",
        other_ca.to_str().unwrap(),
    ])
    .unwrap();
    assert!(out.status.success());
    let certs = cluster.issue("intruder", Some(&other_ca)).unwrap();
    cluster
        .spawn("intruder", certs, "127.0.0.1:0".parse().unwrap(), &[seed])
        .unwrap();

    // Wait for the positive signal that the intruder really tried: n1 refused a handshake.
    let refused = wait_for(CONVERGE_MAX, || {
        let info = cluster.cli_json("n1", &["node", "info"]).ok()?;
        (info["counters"]["handshakes_refused"].as_u64()? > 0).then_some(())
    });
    assert!(refused.is_some(), "n1 never saw the intruder's handshake");
    for observer in ["n1", "n2"] {
        let members = cluster.members(observer).unwrap();
        assert!(
            !members.contains_key("intruder"),
            "{observer} lists {members:?}"
        );
    }
    let intruder_view = cluster.members("intruder").unwrap();
    assert_eq!(intruder_view.keys().collect::<Vec<_>>(), ["intruder"]);
}

#[test]
fn garbage_from_the_network_neither_crashes_a_node_nor_changes_membership() {
    // Raw UDP junk and malformed frames from an authenticated peer are dropped and counted.
    let mut cluster = Cluster::new("e2e").unwrap();
    let seed = cluster.start("n1", &[]).unwrap();
    cluster.start("n2", &[seed]).unwrap();
    cluster.start("n3", &[seed]).unwrap();
    let names = ["n1", "n2", "n3"];
    let full = wait_for(CONVERGE_MAX, || {
        all_see(&mut cluster, &names, |m| {
            m.len() == 3 && m.values().all(|(s, _)| s == "alive")
        })
        .then_some(())
    });
    assert!(full.is_some());
    let before = cluster.members("n1").unwrap();

    // 1. Unauthenticated junk straight at the QUIC port.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut junk = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..2000 {
        junk ^= junk << 13;
        junk ^= junk >> 7;
        junk ^= junk << 17;
        let len = 1 + (junk as usize % 1400);
        let datagram: Vec<u8> = (0..len)
            .map(|j| (junk >> (j % 56)) as u8 ^ i as u8)
            .collect();
        raw.send_to(&datagram, seed).unwrap();
    }

    // 2. An authenticated peer (valid certificate of this CA) sending malformed frames.
    let certs = cluster.issue("prankster", None).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(send_garbage_frames(&certs, seed));

    // The node still runs, counted the bad frames, and membership is what it was.
    let counted = wait_for(Duration::from_secs(10), || {
        let info = cluster.cli_json("n1", &["node", "info"]).ok()?;
        (info["counters"]["bad_frames"].as_u64()? > 0).then_some(info)
    });
    assert!(counted.is_some(), "n1 counted no bad frame");
    assert!(cluster.node("n1").is_running(), "{}", cluster.log("n1"));
    let after = cluster.members("n1").unwrap();
    assert_eq!(
        after.iter().map(|(k, v)| (k, &v.0)).collect::<Vec<_>>(),
        before.iter().map(|(k, v)| (k, &v.0)).collect::<Vec<_>>()
    );
}

async fn send_garbage_frames(certs: &std::path::Path, to: std::net::SocketAddr) {
    let identity = podmesh_certs::NodeIdentity::load(certs).unwrap();
    let tls = podmesh_certs::MeshTls::new(&identity, Default::default()).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(tls.quinn_client().unwrap());
    let name = tls.server_name(&podmesh_certs::ServerTarget::AnyNode);
    let connection = endpoint.connect(to, &name).unwrap().await.unwrap();
    let frames: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        vec![1, 0xff, 0xff, 0xff, 0xff, 0xff],
        vec![1; 900],
        (0..=255).collect(),
    ];
    for frame in &frames {
        let _ = connection.send_datagram(frame.clone().into());
        let mut stream = connection.open_uni().await.unwrap();
        let _ = stream.write_all(frame).await;
        let _ = stream.finish();
    }
    // A frame over the stream size limit is refused by the reader.
    let mut stream = connection.open_uni().await.unwrap();
    let big = vec![7u8; (1 << 20) + 10];
    let _ = stream.write_all(&big).await;
    let _ = stream.finish();
    // Give the frames time to leave before closing, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.stopped()).await;
    connection.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}
