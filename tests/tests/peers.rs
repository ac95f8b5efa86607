//! Pods and peers with real node processes over real QUIC on 127.0.0.1: the reciprocal
//! handshake, its refusals and rollbacks, crash recovery at every step, and delivery.

use std::net::SocketAddr;
use std::time::Duration;

use podmesh_tests::{Cluster, wait_for};
use serde_json::{Value, json};

/// Environment variables for one node process.
type Env<'a> = &'a [(&'a str, &'a str)];

/// Membership convergence and handshake settling may take this long on a loaded machine.
const SETTLE_MAX: Duration = Duration::from_secs(40);

/// Starts n1 and n2 (with fault points on either), creates a@n1 and b@n2 and waits until each
/// node knows the other's Pod.
fn two_nodes(n1_env: Env<'_>, n2_env: Env<'_>) -> (Cluster, SocketAddr) {
    let mut cluster = Cluster::new("e2e").unwrap();
    let seed = cluster.start_with("n1", &[], n1_env).unwrap();
    cluster.start_with("n2", &[seed], n2_env).unwrap();
    ok(cluster.api("n1", "pod_create", json!({ "name": "a" })));
    ok(cluster.api("n2", "pod_create", json!({ "name": "b" })));
    let known = wait_for(SETTLE_MAX, || {
        let on = |c: &mut Cluster, node: &str, addr: &str| {
            c.api(node, "directory", json!({}))
                .ok()
                .and_then(Result::ok)
                .is_some_and(|d| pods_of(&d).contains(&addr.to_owned()))
        };
        (on(&mut cluster, "n1", "b@n2") && on(&mut cluster, "n2", "a@n1")).then_some(())
    });
    assert!(known.is_some(), "directories never converged");
    (cluster, seed)
}

fn ok(result: anyhow::Result<Result<Value, (String, String)>>) -> Value {
    match result.unwrap() {
        Ok(value) => value,
        Err((code, message)) => panic!("unexpected error {code}: {message}"),
    }
}

fn err_code(result: anyhow::Result<Result<Value, (String, String)>>) -> String {
    match result.unwrap() {
        Ok(value) => panic!("unexpected success: {value}"),
        Err((code, _)) => code,
    }
}

fn pods_of(data: &Value) -> Vec<String> {
    data["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["address"].as_str().map(str::to_owned))
        .collect()
}

/// The peers a node's own record of `pod` holds.
fn peers(cluster: &mut Cluster, node: &str, pod: &str) -> Vec<String> {
    let data = ok(cluster.api(node, "pod_status", json!({ "name": pod })));
    data["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect()
}

fn logged(cluster: &mut Cluster, node: &str) -> Option<u64> {
    cluster.api(node, "node_info", json!({})).ok()?.ok()?["handshakes_logged"].as_u64()
}

/// Waits until both nodes are up, neither has a handshake log entry left, and the relation is
/// reciprocal; returns whether a and b are peers.
fn settled(cluster: &mut Cluster) -> bool {
    let outcome = wait_for(SETTLE_MAX, || {
        if logged(cluster, "n1")? != 0 || logged(cluster, "n2")? != 0 {
            return None;
        }
        let a = peers(cluster, "n1", "a") == ["b@n2"];
        let b = peers(cluster, "n2", "b") == ["a@n1"];
        (a == b).then_some(a)
    });
    outcome.unwrap_or_else(|| {
        panic!(
            "no settled, reciprocal state: n1 a={:?} n2 b={:?}\nn1 log:\n{}\nn2 log:\n{}",
            peers(cluster, "n1", "a"),
            peers(cluster, "n2", "b"),
            cluster.log("n1"),
            cluster.log("n2")
        )
    })
}

#[test]
fn pods_on_two_nodes_become_peers_and_see_each_other_as_peer() {
    // The baseline: a@n1 peers with b@n2, both list each other with reason `peer`.
    let (mut cluster, _) = two_nodes(&[], &[]);
    let reply = ok(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
    assert_eq!(
        (reply["source"].as_str(), reply["peer"].as_str()),
        (Some("a@n1"), Some("b@n2"))
    );
    let a_view = ok(cluster.api("n1", "list_pods", json!({ "pod": "a" })));
    let b_view = ok(cluster.api("n2", "list_pods", json!({ "pod": "b" })));
    let row = |view: &Value, addr: &str| {
        view["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["address"] == addr)
            .cloned()
    };
    assert_eq!(row(&a_view, "b@n2").unwrap()["reason"], "peer");
    assert_eq!(row(&b_view, "a@n1").unwrap()["reason"], "peer");
    assert_eq!(row(&a_view, "b@n2").unwrap()["live"], true);
    assert!(settled(&mut cluster));
}

#[test]
fn refusals_carry_their_codes_and_change_nothing() {
    // Self-peer, unknown target, invalid name and a running source: each refused, nothing moves.
    let (mut cluster, _) = two_nodes(&[], &[]);
    let peer = |c: &mut Cluster, name: &str| {
        c.api("n1", "register_peer", json!({ "pod": "a", "name": name }))
    };
    assert_eq!(err_code(peer(&mut cluster, "a")), "invalid_request");
    assert_eq!(err_code(peer(&mut cluster, "nobody")), "not_found");
    assert_eq!(err_code(peer(&mut cluster, "nobody@n2")), "not_found");
    assert_eq!(
        err_code(peer(&mut cluster, "not a name")),
        "invalid_request"
    );
    ok(cluster.api(
        "n1",
        "pod_status",
        json!({ "name": "a", "status": "running" }),
    ));
    assert_eq!(err_code(peer(&mut cluster, "b@n2")), "already_running");
    assert!(peers(&mut cluster, "n1", "a").is_empty());
    assert!(peers(&mut cluster, "n2", "b").is_empty());
    assert_eq!(
        (logged(&mut cluster, "n1"), logged(&mut cluster, "n2")),
        (Some(0), Some(0))
    );
}

#[test]
fn a_relation_that_existed_before_survives_a_failed_request() {
    // Peered, then n2 dies and a second request fails: after n2 returns, the relation is intact.
    let (mut cluster, seed) = two_nodes(&[], &[]);
    ok(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
    assert!(settled(&mut cluster));
    cluster.kill("n2");
    let code = err_code(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
    assert_eq!(code, "unreachable");
    cluster.restart("n2", &[seed]).unwrap();
    assert!(settled(&mut cluster), "the old relation must survive");
}

#[test]
fn a_message_is_stored_once_when_the_delivered_reply_is_lost() {
    // n2 loses its first Delivered answer; the sender retries with the same id.
    let (mut cluster, _) = two_nodes(&[], &[("PODMESH_FAULT", "drop-delivered-reply")]);
    ok(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
    let sent = ok(cluster.api(
        "n1",
        "send_to_peer",
        json!({ "pod": "a", "name": "b@n2", "message": "once" }),
    ));
    assert!(sent["id"].is_string());
    let inbox = ok(cluster.api("n2", "inbox", json!({ "pod": "b" })));
    let messages = inbox["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{inbox}");
    assert_eq!(messages[0]["from"], "a@n1");
    assert_eq!(messages[0]["message"], "once");
    let info = ok(cluster.api("n2", "node_info", json!({})));
    assert_eq!(
        info["counters"]["duplicate_messages"], 1,
        "the retry really happened"
    );
}

#[test]
fn a_pod_that_is_not_a_peer_cannot_deliver_even_with_a_valid_certificate() {
    // A node with a certificate from the mesh CA sends Deliver straight over QUIC: refused.
    let (mut cluster, _) = two_nodes(&[], &[]);
    let n2 = cluster.node("n2").addr;
    let certs = cluster.issue("n3", None).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = runtime.block_on(async {
        let identity = podmesh_certs::NodeIdentity::load(&certs).unwrap();
        let tls = podmesh_certs::MeshTls::new(&identity, Default::default()).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(tls.quinn_client().unwrap());
        let name = tls.server_name(&podmesh_certs::ServerTarget::AnyNode);
        let connection = endpoint.connect(n2, &name).unwrap().await.unwrap();
        let request = podmesh_mesh::PeerRequest::Deliver {
            id: podmesh_mesh::RequestId {
                node: "n3".parse().unwrap(),
                incarnation: 1,
                seq: 1,
            },
            from: "a".parse().unwrap(),
            to: "b".parse().unwrap(),
            body: "let me in".into(),
        };
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&request.encode()).await.unwrap();
        send.finish().unwrap();
        let bytes = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 16))
            .await
            .unwrap()
            .unwrap();
        podmesh_mesh::PeerResponse::decode(&bytes).unwrap()
    });
    assert!(
        matches!(&answer, podmesh_mesh::PeerResponse::Rejected(e) if e.code == podmesh_mesh::ErrorCode::NotFound),
        "{answer:?}"
    );
    let inbox = ok(cluster.api("n2", "inbox", json!({ "pod": "b" })));
    assert!(inbox["messages"].as_array().unwrap().is_empty());
}

#[test]
fn sending_to_a_peer_whose_node_is_dead_fails_with_not_live() {
    // Once membership declares n2 dead, a send fails at once with `not_live`.
    let (mut cluster, _) = two_nodes(&[], &[]);
    ok(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
    cluster.kill("n2");
    let dead = wait_for(SETTLE_MAX, || {
        let members = cluster.members("n1").ok()?;
        (members.get("n2")?.0 == "dead").then_some(())
    });
    assert!(dead.is_some());
    let result = cluster.api(
        "n1",
        "send_to_peer",
        json!({ "pod": "a", "name": "b@n2", "message": "hi" }),
    );
    match result.unwrap() {
        Err((code, message)) => {
            assert_eq!(code, "not_live");
            assert_eq!(message, "peer pod b@n2 is not live");
        }
        Ok(v) => panic!("{v}"),
    }
}

/// Crashes the node carrying `point` during a handshake, restarts it, and checks that both
/// sides settle reciprocally with no log entry left.
fn crash_at(point: &str, on_coordinator: bool) -> bool {
    let env = [("PODMESH_FAULT", point)];
    let (n1_env, n2_env): (Env<'_>, Env<'_>) = if on_coordinator {
        (&env, &[])
    } else {
        (&[], &env)
    };
    let (mut cluster, seed) = two_nodes(n1_env, n2_env);
    let _ = cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" }));
    let victim = if on_coordinator { "n1" } else { "n2" };
    let exited = cluster.wait_exit(victim, Duration::from_secs(20));
    assert_eq!(
        exited,
        Some(false),
        "{victim} should have crashed at {point}"
    );
    assert!(
        cluster
            .log(victim)
            .contains(&format!("fault point {point}"))
    );
    let join: Vec<SocketAddr> = if on_coordinator { vec![] } else { vec![seed] };
    cluster.restart(victim, &join).unwrap();
    settled(&mut cluster)
}

#[test]
fn a_coordinator_crash_after_logging_its_intent_aborts_cleanly() {
    // Nothing reached n2; on restart n1 aborts its intent.
    assert!(!crash_at("coordinator-after-intent", true));
}

#[test]
fn a_participant_crash_after_prepare_is_rolled_back() {
    // n2 prepared durably and died before answering: n1 aborts, n2 restores on restart.
    assert!(!crash_at("participant-after-prepare", false));
}

#[test]
fn a_coordinator_crash_after_commit_completes_on_restart() {
    // n1 committed durably and died before sending Commit: on restart it sends Commit.
    assert!(crash_at("coordinator-after-commit", true));
}

#[test]
fn a_participant_crash_before_applying_commit_completes_on_restart() {
    // n2 died on receiving Commit: the coordinator re-sends until n2 is back and applies it.
    assert!(crash_at("participant-before-commit", false));
}

#[test]
fn a_failed_store_write_on_either_side_leaves_both_sides_as_before() {
    // The participant's prepare write fails, then (new pair of nodes) the coordinator's intent.
    for (n1_env, n2_env) in [
        (&[][..], &[("PODMESH_FAULT", "fail-handshake-write")][..]),
        (&[("PODMESH_FAULT", "fail-handshake-write")][..], &[][..]),
    ] {
        let (mut cluster, _) = two_nodes(n1_env, n2_env);
        let code =
            err_code(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
        assert_eq!(code, "internal");
        assert!(!settled(&mut cluster));
        // And the next attempt works: the failure was one write, not a broken node.
        ok(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
        assert!(settled(&mut cluster));
    }
}

#[test]
fn relations_and_inboxes_survive_restarts_of_both_nodes() {
    // Peer, send, restart both nodes (n2 first, then n1 without seeds): everything is there.
    let (mut cluster, seed) = two_nodes(&[], &[]);
    ok(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
    ok(cluster.api(
        "n1",
        "send_to_peer",
        json!({ "pod": "a", "name": "b@n2", "message": "kept" }),
    ));
    cluster.restart("n2", &[seed]).unwrap();
    cluster.restart("n1", &[]).unwrap();
    assert!(settled(&mut cluster));
    let inbox = ok(cluster.api("n2", "inbox", json!({ "pod": "b" })));
    assert_eq!(inbox["messages"][0]["message"], "kept");
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 1);
}

#[test]
fn an_attached_client_gets_alerts_then_one_snapshot_with_the_inbox_then_live_notifications() {
    // The attach prelude of docs/local-api.md, and the sender label from the TLS identity.
    let (mut cluster, _) = two_nodes(&[], &[]);
    ok(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
    // Sent while nobody is attached to b: it comes back in the snapshot's inbox, once, and
    // the relation made meanwhile as an alert.
    ok(cluster.api(
        "n1",
        "send_to_peer",
        json!({ "pod": "a", "name": "b@n2", "message": "early" }),
    ));
    let (runtime, mut client) = cluster.local_client("n2").unwrap();
    let next = |client: &mut podmesh::client::Client| {
        runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(20), client.next_event()).await
            })
            .expect("an event within the bound")
            .unwrap()
    };

    let attach = podmesh::api::Request {
        id: Some(7),
        method: "attach".into(),
        params: json!({ "pod": "b" }),
    };
    runtime.block_on(client.send(&attach)).unwrap();
    let mut prelude = Vec::new();
    loop {
        let event = next(&mut client);
        let done = event.event == "snapshot";
        prelude.push(event);
        if done {
            break;
        }
    }
    let events: Vec<&str> = prelude.iter().map(|e| e.event.as_str()).collect();
    assert!(
        events.iter().filter(|e| **e == "snapshot").count() == 1,
        "{events:?}"
    );
    assert!(
        prelude
            .iter()
            .any(|e| e.event == "alert" && e.data["event"] == "peer_registered"),
        "{prelude:?}"
    );
    assert!(
        !prelude
            .iter()
            .any(|e| e.event == "alert" && e.data["event"] == "notification"),
        "a message is not an alert too: {prelude:?}"
    );
    let snapshot = prelude.last().unwrap();
    assert_eq!(snapshot.id, Some(7));
    let inbox = snapshot.data["inbox"].as_array().unwrap();
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0]["message"], "early");
    assert_eq!(inbox[0]["from"], "a@n1");
    // A live message arrives as a notification labelled with the authenticated sender.
    ok(cluster.api(
        "n1",
        "send_to_peer",
        json!({ "pod": "a", "name": "b@n2", "message": "live" }),
    ));
    let notification = loop {
        let event = next(&mut client);
        if event.event == "notification" {
            break event;
        }
    };
    assert_eq!(notification.data["from"], "a@n1");
    assert_eq!(notification.data["message"], "live");
}

#[test]
fn acknowledged_messages_leave_the_inbox_for_good_and_the_rest_come_back_after_a_restart() {
    // Three messages; `inbox_ack` up to the second leaves the third, also after a restart of
    // the receiving node. A program that stopped before acking gets the third again from its
    // next attach; acking again is no error; an unknown id is a clear one.
    let (mut cluster, seed) = two_nodes(&[], &[]);
    ok(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        let sent = ok(cluster.api(
            "n1",
            "send_to_peer",
            json!({ "pod": "a", "name": "b@n2", "message": text }),
        ));
        ids.push(sent["id"].as_str().unwrap().to_owned());
    }
    let inbox = ok(cluster.api("n2", "inbox", json!({ "pod": "b" })));
    let listed: Vec<&str> = inbox["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids, "inbox carries the ids the senders were given");
    let acked = ok(cluster.api("n2", "inbox_ack", json!({ "pod": "b", "up_to": ids[1] })));
    assert_eq!(acked["removed"], 2);
    let messages = |cluster: &mut Cluster| -> Vec<String> {
        let inbox = ok(cluster.api("n2", "inbox", json!({ "pod": "b" })));
        inbox["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(messages(&mut cluster), ["three"]);

    cluster.restart("n2", &[seed]).unwrap();
    assert_eq!(
        messages(&mut cluster),
        ["three"],
        "the ack survives the restart"
    );
    let again = ok(cluster.api("n2", "inbox_ack", json!({ "pod": "b", "up_to": ids[0] })));
    assert_eq!(again["removed"], 0, "acking again changes nothing");
    for (up_to, code) in [
        ("n1-1-999999", "not_found"),
        ("nonsense", "invalid_request"),
    ] {
        let refused = cluster
            .api("n2", "inbox_ack", json!({ "pod": "b", "up_to": up_to }))
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.0, code, "{up_to}: {refused:?}");
    }

    // Attach, as a program would after a crash: the unacknowledged message is in the snapshot.
    let (runtime, mut client) = cluster.local_client("n2").unwrap();
    let snapshot = runtime
        .block_on(client.call("attach", json!({ "pod": "b" })))
        .unwrap();
    let inbox = snapshot.data["inbox"].as_array().unwrap();
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0]["id"], ids[2].as_str());
    assert_eq!(
        messages(&mut cluster),
        ["three"],
        "attaching acknowledges nothing"
    );

    // The CLI: `podmesh inbox b --ack` prints what it acknowledges.
    let shown = cluster.cli_json("n2", &["inbox", "b", "--ack"]).unwrap();
    assert_eq!(shown["messages"][0]["message"], "three");
    assert!(messages(&mut cluster).is_empty());
}
