//! The real `podmesh tui` binary driven through tmux against two real nodes.

use std::process::Command;
use std::time::{Duration, Instant};

use podmesh_tests::{Cluster, podmesh_bin, wait_for};
use serde_json::json;

/// How long the screen may take to show a change (membership bound plus scheduling slack).
const SCREEN_MAX: Duration = Duration::from_secs(30);

/// A tmux server of its own, killed with everything in it when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "tui"]).stdout).into_owned()
    }

    fn wait_screen(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        wait_for(SCREEN_MAX, || {
            let screen = self.screen();
            check(&screen).then_some(screen)
        })
        .unwrap_or_else(|| panic!("screen never showed {what}:\n{}", self.screen()))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn the_tui_peers_shows_messages_and_liveness_and_quits_cleanly() {
    // Issue 6's path through the real binary: :peer, a message from n2, n2's death, :quit.
    assert!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "this end-to-end test drives the TUI through tmux; install tmux to run it"
    );
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

    let tmux = Tmux {
        socket: format!("podmesh-test-{}", std::process::id()),
    };
    let data_dir = cluster.node("n1").data_dir.clone();
    // The shell prints the TUI's exit code on the normal screen once the TUI has left it, then
    // stays alive so tmux keeps the pane's last output (the server is killed on drop).
    let command = format!(
        "{} tui --pod a --data-dir {}; echo tui-exit-status=$?; sleep 600",
        podmesh_bin().display(),
        data_dir.display()
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "tui",
        "-x",
        "140",
        "-y",
        "40",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    tmux.wait_screen("the Pods pane", |s| s.contains("Pods visible to a@n1"));

    tmux.run(&["send-keys", "-t", "tui", ":peer b@n2", "Enter"]);
    tmux.wait_screen("the peer notice", |s| {
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
    tmux.wait_screen("the notification", |s| {
        s.contains("[Peer message from `b@n2`] hello from b")
    });

    cluster.kill("n2");
    let killed = Instant::now();
    tmux.wait_screen("b@n2 not live", |s| {
        s.lines()
            .any(|l| l.contains("b@n2") && l.contains("not live"))
    });
    eprintln!(
        "b@n2 shown not live {:?} after n2 was killed",
        killed.elapsed()
    );

    tmux.run(&["send-keys", "-t", "tui", ":quit", "Enter"]);
    let screen = tmux.wait_screen("the TUI's exit", |s| s.contains("tui-exit-status="));
    assert!(screen.contains("tui-exit-status=0"), "{screen}");
    // The alternate screen is gone: the terminal shows its own screen again, not the TUI.
    assert!(!screen.contains("Pods visible to"), "{screen}");
}
