//! A terminal for end-to-end tests of the TUI: a tmux server of its own, driven with
//! `send-keys` and read with `capture-pane`.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::wait_for;

/// A tmux server on a socket of its own with one session named `term`, running `command`
/// through the shell in a `width` x `height` window. The server and everything in it is
/// killed on drop, even when the test panics.
#[derive(Debug)]
pub struct Terminal {
    socket: String,
}

impl Terminal {
    pub fn start(command: &str, width: u16, height: u16) -> Terminal {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        assert!(
            Command::new("tmux").arg("-V").output().is_ok(),
            "the TUI's end-to-end tests drive a terminal through tmux; install tmux to run them"
        );
        let terminal = Terminal {
            socket: format!(
                "podmesh-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let (width, height) = (width.to_string(), height.to_string());
        let started = terminal.tmux(&[
            "new-session",
            "-d",
            "-s",
            "term",
            "-x",
            &width,
            "-y",
            &height,
            command,
        ]);
        assert!(started.status.success(), "{started:?}");
        terminal
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs")
    }

    /// Types `keys` followed by Enter.
    pub fn enter(&self, keys: &str) {
        let sent = self.tmux(&["send-keys", "-t", "term", keys, "Enter"]);
        assert!(sent.status.success(), "{sent:?}");
    }

    /// Resizes the terminal, as a user dragging the window would.
    pub fn resize(&self, width: u16, height: u16) {
        let (width, height) = (width.to_string(), height.to_string());
        let resized = self.tmux(&["resize-window", "-t", "term", "-x", &width, "-y", &height]);
        assert!(resized.status.success(), "{resized:?}");
    }

    /// The visible screen, one line per row.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "term"]).stdout)
            .into_owned()
    }

    /// Waits up to `timeout` for the screen to pass `check`, and returns that screen; panics
    /// with the last screen when it never does.
    pub fn wait_screen(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> String {
        wait_for(timeout, || {
            let screen = self.screen();
            check(&screen).then_some(screen)
        })
        .unwrap_or_else(|| panic!("the screen never showed {what}:\n{}", self.screen()))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}
