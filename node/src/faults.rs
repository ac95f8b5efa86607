//! Fault points for tests: named places where a node crashes on purpose, drops an answer, or
//! fails a store write. Compiled only with the `fault-points` feature, which release builds do
//! not enable; without it every check is a constant `false`.
//!
//! A test sets `PODMESH_FAULT=point[,point...]` for the node process. Each point fires once.
//!
//! | point | where |
//! |---|---|
//! | `coordinator-after-intent` | the requesting node logged its intent and is about to send Prepare |
//! | `participant-after-prepare` | the target's node applied and logged Prepare, before answering |
//! | `coordinator-after-commit` | the requesting node committed, before it answers the user or sends Commit |
//! | `participant-before-commit` | the target's node received Commit, before applying it |
//! | `drop-delivered-reply` | the receiver stored a message and then loses its Delivered answer |
//! | `fail-handshake-write` | the next store write touching the handshake log fails |

/// The environment variable naming the active fault points.
pub const FAULT_ENV: &str = "PODMESH_FAULT";

/// The active fault points of this process.
#[derive(Debug, Default)]
pub struct Faults {
    #[cfg(feature = "fault-points")]
    armed: std::collections::BTreeSet<String>,
}

impl Faults {
    /// Reads [`FAULT_ENV`]. A build without fault points refuses to start when it is set, so a
    /// test can never believe it injected a fault that was not there.
    pub fn from_env() -> anyhow::Result<Self> {
        let value = std::env::var(FAULT_ENV).unwrap_or_default();
        #[cfg(feature = "fault-points")]
        {
            Ok(Self {
                armed: value
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        }
        #[cfg(not(feature = "fault-points"))]
        {
            anyhow::ensure!(
                value.is_empty(),
                "{FAULT_ENV} is set but this build has no fault points (build with --features fault-points)"
            );
            Ok(Self {})
        }
    }

    /// Whether `point` is armed; disarms it, so each point fires once.
    pub fn fire(&mut self, point: &str) -> bool {
        #[cfg(feature = "fault-points")]
        {
            self.armed.remove(point)
        }
        #[cfg(not(feature = "fault-points"))]
        {
            let _ = point;
            false
        }
    }

    /// Crashes the process at `point` if it is armed, the way SIGKILL would: no clean-up.
    pub fn crash(&mut self, point: &str) {
        if self.fire(point) {
            self.crash_now(point);
        }
    }

    /// Crashes the process now, naming the point that fired.
    pub fn crash_now(&self, point: &str) -> ! {
        eprintln!("fault point {point}: crashing");
        std::process::abort();
    }
}
