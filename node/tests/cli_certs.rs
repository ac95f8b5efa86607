//! `podmesh certs` as an operator runs it: files, modes, refusals and exit codes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn podmesh(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podmesh"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("podmesh runs")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_issue_and_verify_work_together_and_refuse_a_foreign_ca() {
    // The whole operator flow: one CA, one node, a foreign node refused with exit code 1.
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    assert!(
        podmesh(&["certs", "init", "--mesh", "prod", "--ca-dir", "ca"], cwd)
            .status
            .success()
    );
    assert_eq!(mode(&cwd.join("ca/ca.key")), 0o600);
    let issued = podmesh(
        &[
            "certs",
            "issue",
            "n1",
            "--ca-dir",
            "ca",
            "--out",
            "n1",
            "--san",
            "127.0.0.1",
        ],
        cwd,
    );
    assert!(issued.status.success(), "{issued:?}");
    assert_eq!(mode(&cwd.join("n1/node.key")), 0o600);
    assert!(
        !cwd.join("n1/ca.key").exists(),
        "the CA key never leaves the CA directory"
    );

    let ok = podmesh(
        &["certs", "verify", "--ca", "ca/ca.crt", "n1/node.crt"],
        cwd,
    );
    assert_eq!(ok.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("valid: node n1 of mesh prod"));

    assert!(
        podmesh(
            &["certs", "init", "--mesh", "prod", "--ca-dir", "other"],
            cwd
        )
        .status
        .success()
    );
    assert!(
        podmesh(
            &["certs", "issue", "n9", "--ca-dir", "other", "--out", "n9"],
            cwd
        )
        .status
        .success()
    );
    let foreign = podmesh(
        &["certs", "verify", "--ca", "ca/ca.crt", "n9/node.crt"],
        cwd,
    );
    assert_eq!(foreign.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("invalid: bad signature"));

    let shown = podmesh(&["certs", "show", "--json", "n1/node.crt"], cwd);
    let json: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(json[0]["uris"][0], "spiffe://prod/node/n1");
    assert_eq!(json[0]["dns_names"][0], "n1.prod");
    assert_eq!(
        json[0]["extended_key_usages"],
        serde_json::json!(["serverAuth", "clientAuth"])
    );
}

#[test]
fn existing_files_are_kept_unless_forced() {
    // A second init neither overwrites the CA key nor succeeds; --force replaces it.
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    assert!(
        podmesh(&["certs", "init", "--mesh", "prod", "--ca-dir", "ca"], cwd)
            .status
            .success()
    );
    let key = std::fs::read(cwd.join("ca/ca.key")).unwrap();
    let again = podmesh(&["certs", "init", "--mesh", "prod", "--ca-dir", "ca"], cwd);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists (use --force"));
    assert_eq!(std::fs::read(cwd.join("ca/ca.key")).unwrap(), key);
    assert!(
        podmesh(
            &[
                "certs", "init", "--mesh", "prod", "--ca-dir", "ca", "--force"
            ],
            cwd
        )
        .status
        .success()
    );
    assert_ne!(std::fs::read(cwd.join("ca/ca.key")).unwrap(), key);
}

#[test]
fn names_that_are_not_dns_labels_are_refused_with_the_rule() {
    // Usage errors exit 2 and quote the naming rule.
    let dir = tempfile::tempdir().unwrap();
    let out = podmesh(
        &["certs", "init", "--mesh", "Prod", "--ca-dir", "ca"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a-z, 0-9 and '-'"));
    assert!(!dir.path().join("ca").exists());
}
