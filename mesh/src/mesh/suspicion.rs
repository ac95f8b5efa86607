//! Lifeguard's suspicion timer (DESIGN section 3): who has confirmed a suspicion, and the
//! timeout that starts at `suspicion_max_mult` times the minimum and shrinks logarithmically
//! with each independent confirmation. Deciding when to suspect, and what a timeout means, is
//! the membership protocol's (`membership.rs`).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::time::micros;
use crate::{NodeName, Time};

/// A running Lifeguard suspicion.
#[derive(Debug, Clone)]
pub(super) struct Suspicion {
    pub(super) started: Time,
    /// Distinct members that suspected it, the first one included; bounded by `k + 1`.
    pub(super) suspecters: BTreeSet<NodeName>,
    /// Confirmations after which the timeout reaches its minimum.
    pub(super) k: u32,
    pub(super) min: Duration,
    pub(super) max: Duration,
    pub(super) token: u64,
}

impl Suspicion {
    pub(super) fn confirmations(&self) -> u32 {
        u32::try_from(self.suspecters.len().saturating_sub(1)).unwrap_or(u32::MAX)
    }

    pub(super) fn deadline(&self) -> Time {
        self.started + suspicion_timeout(self.min, self.max, self.k, self.confirmations())
    }
}

/// Lifeguard's suspicion timeout after `c` of `k` expected confirmations: from `max` down to
/// `min`, logarithmically, so the first confirmations shorten it the most.
pub(super) fn suspicion_timeout(min: Duration, max: Duration, k: u32, c: u32) -> Duration {
    if k == 0 || c >= k {
        return min;
    }
    let frac = f64::from(c + 1).ln() / f64::from(k + 1).ln();
    let span = micros(max.saturating_sub(min)) as f64;
    let timeout = micros(max) as f64 - frac * span;
    Duration::from_micros(timeout.max(micros(min) as f64) as u64)
}
