//! The real `podmesh tui` binary driven through tmux against two real nodes.

use std::time::{Duration, Instant};

use podmesh_tests::tmux::Terminal;
use podmesh_tests::{Cluster, podmesh_bin, wait_for};
use serde_json::json;

/// How long the screen may take to show a change (membership bound plus scheduling slack).
const SCREEN_MAX: Duration = Duration::from_secs(30);

#[test]
fn the_tui_peers_shows_messages_and_liveness_and_quits_cleanly() {
    // Issue 6's path through the real binary: :peer, a message from n2, n2's death, :quit.
    let mut cluster = Cluster::new("e2e").unwrap();
    let seed = cluster.start("n1", &[]).unwrap();
    cluster.start("n2", &[seed]).unwrap();
    cluster
        .api("n1", "pod_create", json!({ "name": "a" }))
        .unwrap()
        .unwrap();
    cluster
        .api("n2", "pod_create", json!({ "name": "b" }))
        .unwrap()
        .unwrap();
    let known = wait_for(SCREEN_MAX, || {
        let dir = cluster.api("n1", "directory", json!({})).ok()?.ok()?;
        (dir["pods"].as_array()?.len() == 2).then_some(())
    });
    assert!(known.is_some());

    let data_dir = cluster.node("n1").data_dir.clone();
    // The shell prints the TUI's exit code on the normal screen once the TUI has left it, then
    // stays alive so tmux keeps the pane's last output (the server is killed on drop).
    let command = format!(
        "{} tui --pod a --data-dir {}; echo tui-exit-status=$?; sleep 600",
        podmesh_bin().display(),
        data_dir.display()
    );
    let tmux = Terminal::start(&command, 140, 40);
    tmux.wait_screen(SCREEN_MAX, "the Pods pane", |s| {
        s.contains("Pods visible to a@n1")
    });

    tmux.enter(":peer b@n2");
    tmux.wait_screen(SCREEN_MAX, "the peer notice", |s| {
        s.contains("Peer registered: `a@n1` <-> `b@n2`")
    });
    let a = cluster
        .api("n1", "pod_status", json!({ "name": "a" }))
        .unwrap()
        .unwrap();
    let b = cluster
        .api("n2", "pod_status", json!({ "name": "b" }))
        .unwrap()
        .unwrap();
    assert_eq!(a["peers"], json!(["b@n2"]));
    assert_eq!(b["peers"], json!(["a@n1"]));

    cluster
        .api(
            "n2",
            "send_to_peer",
            json!({ "pod": "b", "name": "a@n1", "message": "hello from b" }),
        )
        .unwrap()
        .unwrap();
    tmux.wait_screen(SCREEN_MAX, "the notification", |s| {
        s.contains("[Peer message from `b@n2`] hello from b")
    });

    // The Pods pane lists the new peer, live, before n2 dies.
    tmux.wait_screen(SCREEN_MAX, "b@n2 live in the Pods pane", |s| {
        s.lines().any(|l| {
            l.contains("b@n2")
                && l.contains("peer")
                && l.contains(" live")
                && !l.contains("not live")
        })
    });
    cluster.kill("n2");
    let killed = Instant::now();
    tmux.wait_screen(SCREEN_MAX, "b@n2 not live", |s| {
        s.lines()
            .any(|l| l.contains("b@n2") && l.contains("not live"))
    });
    eprintln!(
        "b@n2 shown not live {:?} after n2 was killed",
        killed.elapsed()
    );

    // A node restart: the TUI says it lost the node, reconnects by itself and says so, and the
    // durable relation is still listed.
    cluster.restart("n1", &[]).unwrap();
    tmux.wait_screen(SCREEN_MAX, "the reconnection", |s| {
        s.contains("the node went away; reconnecting") && s.contains("reconnected to the node")
    });
    tmux.wait_screen(SCREEN_MAX, "b@n2 still a peer after the restart", |s| {
        s.lines().any(|l| l.contains("b@n2") && l.contains("peer"))
    });

    // A smaller terminal: the TUI redraws to fit (the Pods pane's title and the footer stay).
    tmux.resize(90, 24);
    tmux.wait_screen(SCREEN_MAX, "the TUI redrawn at 90x24", |s| {
        s.lines().count() <= 24
            && s.lines().all(|l| l.chars().count() <= 90)
            && s.contains("Pods visible to a@n1")
            && s.contains(":quit")
    });

    tmux.enter(":quit");
    let screen = tmux.wait_screen(SCREEN_MAX, "the TUI's exit", |s| {
        s.contains("tui-exit-status=")
    });
    assert!(screen.contains("tui-exit-status=0"), "{screen}");
    // The alternate screen is gone: the terminal shows its own screen again, not the TUI.
    assert!(!screen.contains("Pods visible to"), "{screen}");
}
