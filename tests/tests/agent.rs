//! `examples/agent.py` against two real nodes: a program in another language, written from
//! docs/local-api.md alone, follows its Pod, replies to each message and acknowledges it, and
//! gets again what it had not acknowledged when it stopped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use podmesh_tests::{Cluster, wait_for};
use serde_json::{Value, json};

/// Membership convergence and delivery may take this long on a loaded machine.
const SETTLE_MAX: Duration = Duration::from_secs(40);

fn ok(result: anyhow::Result<Result<Value, (String, String)>>) -> Value {
    match result.unwrap() {
        Ok(value) => value,
        Err((code, message)) => panic!("unexpected error {code}: {message}"),
    }
}

fn messages(cluster: &mut Cluster, node: &str, pod: &str) -> Vec<String> {
    let inbox = ok(cluster.api(node, "inbox", json!({ "pod": pod })));
    inbox["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_owned())
        .collect()
}

/// The agent's process and its stdout lines, read on a thread of their own.
struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Agent {
    fn start(data_dir: &std::path::Path, pod: &str, exit_after: usize) -> Agent {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/agent.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--data-dir".as_ref(), data_dir.as_os_str()])
            .args(["--pod", pod, "--exit-after", &exit_after.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect(
                "python3 runs examples/agent.py (.ci/run installs python3 where it is missing)",
            );
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Agent { child, lines }
    }

    /// The next line it prints, within the bound.
    fn line(&self) -> String {
        self.lines
            .recv_timeout(SETTLE_MAX)
            .expect("a line from the agent within the bound")
    }

    /// Waits for it to exit by itself (`--exit-after`); its exit status.
    fn wait(mut self) -> std::process::ExitStatus {
        let status = wait_for(SETTLE_MAX, || self.child.try_wait().ok().flatten());
        status.unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("the agent did not exit after its messages")
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_python_agent_replies_to_each_message_and_acknowledges_it() {
    let mut cluster = Cluster::new("agent").unwrap();
    let seed = cluster.start("n1", &[]).unwrap();
    cluster.start("n2", &[seed]).unwrap();
    ok(cluster.api("n1", "pod_create", json!({ "name": "a" })));
    ok(cluster.api("n2", "pod_create", json!({ "name": "b" })));
    let known = wait_for(SETTLE_MAX, || {
        let dir = cluster.api("n1", "directory", json!({})).ok()?.ok()?;
        (dir["pods"].as_array()?.len() == 2).then_some(())
    });
    assert!(known.is_some(), "the two Pods never saw each other");
    ok(cluster.api("n1", "register_peer", json!({ "pod": "a", "name": "b@n2" })));
    let send = |cluster: &mut Cluster, text: &str| {
        ok(cluster.api(
            "n1",
            "send_to_peer",
            json!({ "pod": "a", "name": "b@n2", "message": text }),
        ));
    };

    // Sent before the program runs: it comes with the attach's snapshot.
    send(&mut cluster, "early");
    let data_dir = cluster.node("n2").data_dir.clone();
    let agent = Agent::start(&data_dir, "b", 2);
    assert_eq!(agent.line(), "attached to b@n2");
    assert_eq!(agent.line(), "[Peer message from `a@n1`] early");
    // Sent while it runs: a live notification.
    send(&mut cluster, "live");
    assert_eq!(agent.line(), "[Peer message from `a@n1`] live");
    assert!(agent.wait().success());

    // Both were answered to the authenticated sender, and both left b's inbox.
    let replies = wait_for(SETTLE_MAX, || {
        let got = messages(&mut cluster, "n1", "a");
        (got.len() == 2).then_some(got)
    });
    assert_eq!(
        replies.expect("two replies in a's inbox"),
        ["re: early", "re: live"]
    );
    assert!(messages(&mut cluster, "n2", "b").is_empty());

    // A program that received a message and stopped before acknowledging it: the next one
    // gets the message again.
    let (runtime, mut crashed) = cluster.local_client("n2").unwrap();
    runtime
        .block_on(crashed.call("attach", json!({ "pod": "b" })))
        .unwrap();
    send(&mut cluster, "again");
    let seen = runtime.block_on(async {
        loop {
            let event = crashed.next_event().await.unwrap();
            if event.event == "notification" {
                break event;
            }
        }
    });
    assert_eq!(seen.data["message"], "again");
    drop(crashed);
    assert_eq!(messages(&mut cluster, "n2", "b"), ["again"]);
    let agent = Agent::start(&data_dir, "b", 1);
    assert_eq!(agent.line(), "attached to b@n2");
    assert_eq!(agent.line(), "[Peer message from `a@n1`] again");
    assert!(agent.wait().success());
    assert!(messages(&mut cluster, "n2", "b").is_empty());
}
