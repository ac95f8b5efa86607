//! `podmesh demo --once`, as a newcomer runs it.

use std::process::{Command, Stdio};
use std::time::Duration;

use podmesh_tests::tmux::Terminal;
use podmesh_tests::{podmesh_bin, wait_for};

#[test]
fn the_demo_shows_three_alive_nodes_a_reciprocal_relation_and_the_message_then_cleans_up() {
    // The output a newcomer reads, exit 0, and nothing left running or on disk.
    let child = Command::new(podmesh_bin())
        .args(["demo", "--once"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let alive_rows = stdout
        .lines()
        .filter(|l| l.starts_with('n') && l.contains(" alive "))
        .count();
    assert_eq!(alive_rows, 3, "{stdout}");
    assert!(
        stdout.contains("Peer registered: `alice@n1` <-> `bob@n2`"),
        "{stdout}"
    );
    assert!(stdout.contains("bob@n2     peer"), "{stdout}");
    assert!(stdout.contains("alice@n1   peer"), "{stdout}");
    assert!(
        stdout.contains("[Peer message from `alice@n1`] hello bob, from alice"),
        "{stdout}"
    );

    let dir = std::env::temp_dir().join(format!("podmesh-demo-{pid}"));
    assert!(!dir.exists(), "the demo directory is removed");
    // No node process of this demo survives it (their command lines name its directory).
    let gone = wait_for(Duration::from_secs(5), || {
        let out = Command::new("pgrep")
            .args(["-f", dir.to_str()?])
            .output()
            .ok()?;
        out.stdout.is_empty().then_some(())
    });
    assert!(gone.is_some(), "demo nodes still running");
}

#[test]
fn the_demo_on_a_terminal_opens_the_tui_and_quitting_it_ends_the_demo() {
    // Without --once, on a terminal, the demo hands the terminal to the TUI attached to alice.
    let command = format!(
        "{} demo; echo demo-exit-status=$?; sleep 600",
        podmesh_bin().display()
    );
    let term = Terminal::start(&command, 140, 40);
    let wait = Duration::from_secs(60);
    let screen = term.wait_screen(wait, "the TUI attached to alice", |s| {
        s.contains("Pods visible to alice@n1")
    });
    assert!(
        screen
            .lines()
            .any(|l| l.contains("bob@n2") && l.contains("peer")),
        "{screen}"
    );
    term.enter(":quit");
    let screen = term.wait_screen(wait, "the demo's exit", |s| s.contains("demo-exit-status="));
    assert!(screen.contains("demo-exit-status=0"), "{screen}");
    assert!(screen.contains("removing the demo directory"), "{screen}");
}
