//! The local API's promises to its clients, with a real node process: a client that does not
//! read is disconnected with a final error line, one that reads gets every reply, clients that
//! hang up give their slot back at once, and the data directory is private whatever the umask.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use podmesh_tests::{Cluster, podmesh_bin};
use serde_json::{Value, json};

/// Far more requests than a client's queue, its in-progress requests and both socket buffers
/// hold together.
const PIPELINED: u64 = 20_000;

fn connect(data_dir: &Path) -> UnixStream {
    let stream = UnixStream::connect(data_dir.join("podmesh.sock")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
}

fn one_node() -> (Cluster, std::path::PathBuf) {
    let mut cluster = Cluster::new("api").unwrap();
    cluster.start("n1", &[]).unwrap();
    let data_dir = cluster.node("n1").data_dir.clone();
    (cluster, data_dir)
}

/// Writes `count` `members` requests, ids 1..=count, on a thread; errors end it (the node may
/// close the connection).
fn pipeline(stream: &UnixStream, count: u64) -> std::thread::JoinHandle<u64> {
    let mut write = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut written = 0;
        for id in 1..=count {
            let line = format!("{{\"id\":{id},\"method\":\"members\"}}\n");
            if write.write_all(line.as_bytes()).is_err() {
                break;
            }
            written += 1;
        }
        written
    })
}

/// Every line the node writes until it closes the connection.
fn read_all(stream: &UnixStream) -> Vec<Value> {
    BufReader::new(stream.try_clone().unwrap())
        .lines()
        .map_while(Result::ok)
        .map(|line| serde_json::from_str(&line).unwrap())
        .collect()
}

#[test]
fn a_client_that_does_not_read_is_disconnected_with_a_final_error_line() {
    let (_cluster, data_dir) = one_node();
    let stream = connect(&data_dir);
    // All requests go out before a single reply is read.
    let written = pipeline(&stream, PIPELINED).join().unwrap();
    let lines = read_all(&stream);

    let (last, replies) = lines.split_last().expect("no line at all");
    assert_eq!(last["event"], "error", "{last}");
    assert_eq!(last["data"]["code"], "busy", "{last}");
    assert!(
        last["data"]["message"]
            .as_str()
            .unwrap()
            .contains("too slow"),
        "{last}"
    );
    // What came before the error is every reply, in order, up to where the client fell
    // behind: none skipped.
    assert!(!replies.is_empty());
    for (n, reply) in replies.iter().enumerate() {
        assert_eq!(reply["event"], "members", "{reply}");
        assert_eq!(reply["id"], n as u64 + 1, "reply {n} is {reply}");
    }
    assert!((replies.len() as u64) < PIPELINED, "every request answered");
    // The node read (and discarded) the rest, so the client's writes were never stuck.
    assert_eq!(written, PIPELINED);
}

#[test]
fn a_client_that_reads_gets_a_reply_to_every_pipelined_request() {
    let (_cluster, data_dir) = one_node();
    let stream = connect(&data_dir);
    let writer = pipeline(&stream, PIPELINED);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    for expected in 1..=PIPELINED {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "closed at {expected}"
        );
        let reply: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["event"], "members", "{reply}");
        assert_eq!(reply["id"], expected, "{reply}");
    }
    assert_eq!(writer.join().unwrap(), PIPELINED);
}

#[test]
fn a_thousand_attach_and_detach_cycles_leave_room_for_a_new_client() {
    // Each attached client that hangs up frees its slot without waiting for a Pod event; 1,000
    // cycles are four times the 256 slots.
    let (mut cluster, data_dir) = one_node();
    assert!(
        cluster
            .api("n1", "pod_create", json!({ "name": "a" }))
            .unwrap()
            .is_ok()
    );
    for cycle in 0..1_000 {
        let mut stream = connect(&data_dir);
        stream
            .write_all(b"{\"id\":1,\"method\":\"attach\",\"params\":{\"pod\":\"a\"}}\n")
            .unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        let reply: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("cycle {cycle}: {e}: {line:?}"));
        assert_eq!(reply["event"], "snapshot", "cycle {cycle}: {reply}");
    }
    let reply = cluster.api("n1", "members", json!({})).unwrap();
    assert!(reply.is_ok(), "{reply:?}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Runs node `name` under umask 000 on `data_dir` until it listens, then stops it.
fn run_under_umask_000(cluster: &mut Cluster, name: &str, data_dir: &Path) {
    let certs = cluster.issue(name, None).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(podmesh_bin())
        .args(["node", "run", "--listen", "127.0.0.1:0", "--certs-dir"])
        .arg(&certs)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listening = podmesh::daemon::wait_until_listening(&mut child, Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    listening.unwrap();
}

#[test]
fn the_data_directory_is_private_under_umask_000_new_or_left_open() {
    let mut cluster = Cluster::new("api").unwrap();

    let new = cluster.dir().join("new-data");
    run_under_umask_000(&mut cluster, "n1", &new);
    assert_eq!(mode(&new), 0o700);
    assert_eq!(mode(&new.join("node.redb")), 0o600);

    // A directory an earlier version or a careless hand left open, with a readable file in it.
    let open = cluster.dir().join("open-data");
    std::fs::create_dir(&open).unwrap();
    std::fs::write(open.join("notes.txt"), b"kept").unwrap();
    std::fs::set_permissions(
        open.join("notes.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    run_under_umask_000(&mut cluster, "n2", &open);
    assert_eq!(mode(&open), 0o700);
    assert_eq!(mode(&open.join("node.redb")), 0o600);
    assert_eq!(mode(&open.join("notes.txt")), 0o600);
    assert_eq!(std::fs::read(open.join("notes.txt")).unwrap(), b"kept");
}

#[test]
fn the_socket_is_removed_on_every_way_of_stopping_and_sighup_stops_nothing() {
    let mut cluster = Cluster::new("api").unwrap();
    for (name, stop) in [("n1", "TERM"), ("n2", "INT"), ("n3", "shutdown")] {
        cluster.start(name, &[]).unwrap();
        let socket = cluster.node(name).data_dir.join("podmesh.sock");
        assert!(socket.exists());
        let pid = cluster.node(name).pid().unwrap().to_string();
        // SIGHUP reloads; the node stays up and keeps serving.
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
        assert!(cluster.api(name, "members", json!({})).unwrap().is_ok());
        assert!(cluster.node(name).is_running(), "{name} died of SIGHUP");
        if stop == "shutdown" {
            let _ = cluster.api(name, "shutdown", json!({}));
        } else {
            let signal = format!("-{stop}");
            assert!(
                Command::new("kill")
                    .args([&signal, &pid])
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let exited = cluster.wait_exit(name, Duration::from_secs(30));
        assert_eq!(
            exited,
            Some(true),
            "{name} after {stop}: {}",
            cluster.log(name)
        );
        assert!(!socket.exists(), "{name} left its socket after {stop}");
    }
}
