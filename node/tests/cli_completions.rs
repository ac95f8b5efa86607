//! `podmesh completions`: a shell completion script generated from the command line itself.

use std::process::Command;

#[test]
fn completion_scripts_name_every_top_level_command() {
    // A script for each shell, covering the commands an operator types most.
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_podmesh"))
            .args(["completions", shell])
            .output()
            .expect("podmesh runs");
        assert!(out.status.success(), "{shell}: {:?}", out.status);
        let script = String::from_utf8(out.stdout).unwrap();
        for command in [
            "members",
            "monitor",
            "unpeer",
            "inbox",
            "completions",
            "reload",
        ] {
            assert!(script.contains(command), "{shell} script lacks {command}");
        }
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_podmesh"))
        .args(["completions", "cmd.exe"])
        .output()
        .expect("podmesh runs");
    assert!(!bad.status.success(), "an unknown shell is refused");
}
