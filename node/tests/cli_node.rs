//! `podmesh node run` refuses to start, with one line and a non-zero exit, when it cannot run
//! safely.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use podmesh_certs::{CaValidity, MeshCa, MeshName, NodeCertOptions, NodeName};

fn ca(dir: &Path, name: &str) -> MeshCa {
    let ca = MeshCa::create(MeshName::new("t").unwrap(), CaValidity::default()).unwrap();
    ca.write(&dir.join(name), false).unwrap();
    ca
}

fn issue(ca: &MeshCa, node: &str, out: &Path, options: NodeCertOptions) {
    ca.issue(&NodeName::new(node).unwrap(), &options)
        .unwrap()
        .write(out, false)
        .unwrap();
}

fn run_node(certs: &Path, data: &Path, listen: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_podmesh"));
    command
        .args(["node", "run", "--certs-dir"])
        .arg(certs)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", listen])
        .stdin(Stdio::null());
    command
}

/// Runs a node that must fail at start-up; returns its single stderr line.
fn refused(mut command: Command) -> String {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node started although it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let Output { stderr, .. } = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert_eq!(status.code(), Some(1), "{stderr}");
    // Progress logged while the node waits (for a data directory, say) is not the refusal.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(" INFO "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("podmesh: "), "{stderr}");
    lines[0].to_owned()
}

/// Starts a node that must run, and waits for its listening line.
fn started(mut command: Command) -> Child {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    podmesh::daemon::wait_until_listening(&mut child, Duration::from_secs(20)).unwrap();
    child
}

#[test]
fn missing_certificates_are_a_one_line_error() {
    // No certificate files at all.
    let dir = tempfile::tempdir().unwrap();
    let line = refused(run_node(
        &dir.path().join("nowhere"),
        &dir.path().join("d"),
        "127.0.0.1:0",
    ));
    assert!(
        line.contains("nowhere") && line.contains("ca.crt"),
        "{line}"
    );
}

#[test]
fn a_certificate_not_signed_by_the_bundle_is_refused() {
    // node.crt from one CA, ca.crt from another.
    let dir = tempfile::tempdir().unwrap();
    let ours = ca(dir.path(), "ca1");
    let theirs = ca(dir.path(), "ca2");
    let certs = dir.path().join("certs");
    issue(&theirs, "n1", &certs, NodeCertOptions::default());
    std::fs::write(certs.join("ca.crt"), ours.bundle_pem()).unwrap();
    let line = refused(run_node(&certs, &dir.path().join("d"), "127.0.0.1:0"));
    assert!(line.contains("not signed by"), "{line}");
}

#[test]
fn an_expired_certificate_is_refused() {
    // A certificate that ended yesterday.
    let dir = tempfile::tempdir().unwrap();
    let ours = ca(dir.path(), "ca");
    let certs = dir.path().join("certs");
    let options = NodeCertOptions {
        days: 1,
        valid_from: Some(time::OffsetDateTime::now_utc() - time::Duration::days(3)),
        ..Default::default()
    };
    issue(&ours, "n1", &certs, options);
    let line = refused(run_node(&certs, &dir.path().join("d"), "127.0.0.1:0"));
    assert!(line.contains("expired"), "{line}");
}

#[test]
fn a_port_in_use_is_refused() {
    // Another socket already holds the UDP port.
    let dir = tempfile::tempdir().unwrap();
    let ours = ca(dir.path(), "ca");
    let certs = dir.path().join("certs");
    issue(&ours, "n1", &certs, NodeCertOptions::default());
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let line = refused(run_node(&certs, &dir.path().join("d"), &addr));
    assert!(line.contains("port is in use"), "{line}");
}

#[test]
fn a_data_directory_in_use_by_a_running_node_is_refused() {
    // Two daemons must never share one store.
    let dir = tempfile::tempdir().unwrap();
    let ours = ca(dir.path(), "ca");
    issue(
        &ours,
        "n1",
        &dir.path().join("c1"),
        NodeCertOptions::default(),
    );
    issue(
        &ours,
        "n2",
        &dir.path().join("c2"),
        NodeCertOptions::default(),
    );
    let data = dir.path().join("shared-data");
    let mut first = started(run_node(&dir.path().join("c1"), &data, "127.0.0.1:0"));
    // The second node waits for the first to stop (a restart would), then gives up.
    let line = refused(run_node(&dir.path().join("c2"), &data, "127.0.0.1:0"));
    let _ = first.kill();
    let _ = first.wait();
    assert!(line.contains("in use by another running node"), "{line}");
}

#[test]
fn a_name_that_differs_from_the_certificate_is_refused() {
    // --name is a check, never a way to pick another identity.
    let dir = tempfile::tempdir().unwrap();
    let ours = ca(dir.path(), "ca");
    let certs = dir.path().join("certs");
    issue(&ours, "n1", &certs, NodeCertOptions::default());
    let mut command = run_node(&certs, &dir.path().join("d"), "127.0.0.1:0");
    command.args(["--name", "n2"]);
    let line = refused(command);
    assert!(line.contains("differs from the certificate"), "{line}");
}
