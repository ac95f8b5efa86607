//! What a run reports: figures, budgets, violations, and a plot.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::metrics::{MembershipMetrics, Sample};

/// Pod and peer figures of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PeerFigures {
    /// Handshakes that registered a relation, acknowledged.
    pub registered: u64,
    /// Handshakes that removed one, acknowledged.
    pub unregistered: u64,
    /// Handshakes that failed cleanly (refused, timed out, a write failed).
    pub handshakes_failed: u64,
    /// Messages acknowledged as stored in the peer's inbox.
    pub messages_acked: u64,
    /// Messages refused or not delivered.
    pub messages_refused: u64,
    /// Store writes that failed by injection.
    pub write_failures: u64,
    /// Duplicate deliveries answered without storing again.
    pub duplicates_answered: u64,
    /// Group commits of deliveries written (nodes running at the end).
    pub delivery_batches: u64,
    /// Group commits whose write failed by injection: none of their messages acknowledged.
    pub delivery_batches_failed: u64,
    /// Deliveries staged for a commit when their node crashed: never acknowledged.
    pub staged_lost_in_crash: u64,
    /// Messages acknowledged after their receiver restarted without its store (stored in the
    /// store that was lost; not counted against the invariants).
    pub messages_lost_with_disk: u64,
}

/// What the nodes did with the claims they received (DESIGN section 2), summed over every
/// node and life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClaimFigures {
    /// Claims whose signature was not their subject's, or whose certificate was refused.
    pub refused: u64,
    /// Claims held while the certificate that signed them was asked for.
    pub held: u64,
    /// Held claims dropped unchecked (the bound was reached, or no certificate came in time).
    pub dropped: u64,
    /// Frames the forger sent.
    pub forged: u64,
}

/// A budget and whether the run met it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Budget {
    /// What is measured.
    pub name: String,
    /// The most it may be.
    pub target: f64,
    /// What was measured; `None` when it never happened (a roster never full).
    pub measured: Option<f64>,
    /// Whether it was met.
    pub met: bool,
    /// Whether missing it fails the run (the scenario's `[expect]` asks for it); otherwise
    /// it is reported only.
    pub enforced: bool,
}

impl Budget {
    /// A budget met when `measured` exists and is at most `target`.
    pub fn at_most(name: &str, target: f64, measured: Option<f64>) -> Budget {
        Budget {
            name: name.to_owned(),
            target,
            measured,
            met: measured.is_some_and(|m| m <= target),
            enforced: true,
        }
    }

    /// The same budget, reported but not failing the run.
    pub fn reported_only(mut self) -> Budget {
        self.enforced = false;
        self
    }

    /// One line: name, measured, target.
    pub fn describe(&self) -> String {
        let measured = self
            .measured
            .map_or_else(|| "never".to_owned(), |m| format!("{m:.2}"));
        format!("{}: {} (at most {:.2})", self.name, measured, self.target)
    }
}

/// The foca run of the same scenario and seed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FocaSummary {
    /// Its membership figures.
    pub membership: MembershipMetrics,
    /// Its wall time, in seconds.
    pub wall_s: f64,
    /// Events it processed.
    pub events: u64,
}

/// Everything one run reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Virtual seconds simulated.
    pub simulated_s: f64,
    /// Wall-clock seconds the run took (the only field that differs between replays).
    pub wall_s: f64,
    /// Events processed.
    pub events: u64,
    /// Events per wall-clock second.
    pub events_per_wall_s: f64,
    /// Simulated seconds per wall-clock second.
    pub sim_to_wall: f64,
    /// Hash of the event log: equal for equal runs.
    pub log_hash: String,
    /// Membership figures.
    pub membership: MembershipMetrics,
    /// Pod and peer figures.
    pub peers: PeerFigures,
    /// What the nodes did with received claims.
    pub claims: ClaimFigures,
    /// The scenario's budgets.
    pub budgets: Vec<Budget>,
    /// The longest wait from a crash (that stayed down) until some node first suspected it,
    /// in seconds: the part of detection time spent before the suspicion timeout starts.
    pub first_suspicion_s: Option<f64>,
    /// The first healthy nodes declared dead: (virtual seconds, observer, subject).
    pub false_deaths: Vec<(f64, usize, usize)>,
    /// Invariant breaches and missed budgets; empty for a passing run.
    pub violations: Vec<String>,
    /// Plot points, one per virtual second.
    pub samples: Vec<Sample>,
    /// The foca comparison, when the scenario asks for it.
    pub foca: Option<FocaSummary>,
}

impl Report {
    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The report with the wall-clock fields zeroed, for comparing replays.
    pub fn without_wall_clock(&self) -> Report {
        let mut r = self.clone();
        r.wall_s = 0.0;
        r.events_per_wall_s = 0.0;
        r.sim_to_wall = 0.0;
        if let Some(f) = r.foca.as_mut() {
            f.wall_s = 0.0;
        }
        r
    }

    /// A human summary.
    pub fn summary(&self) -> String {
        let m = &self.membership;
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} seed {}: {} nodes, {:.0} s simulated in {:.1} s wall ({:.0}x), {} events, log {}",
            self.scenario,
            self.seed,
            self.nodes,
            self.simulated_s,
            self.wall_s,
            self.sim_to_wall,
            self.events,
            self.log_hash
        );
        let _ = writeln!(
            s,
            "  membership: full roster {} s, crash known by all {} s ({} crashes), healthy declared dead {}, converged {} s after heal, {:.2} frames and {:.0} B per node per s (steady {:.2} and {:.0})",
            opt(m.full_roster_s),
            opt(m.detect_all_s),
            m.crashes_measured,
            m.healthy_declared_dead,
            opt(m.heal_converge_s),
            m.msgs_per_node_s,
            m.bytes_per_node_s,
            m.steady_msgs_per_node_s,
            m.steady_bytes_per_node_s
        );
        if let Some(first) = self.first_suspicion_s {
            let _ = writeln!(
                s,
                "  longest wait from a crash to its first suspicion: {first:.1} s"
            );
        }
        let p = &self.peers;
        if p.registered + p.unregistered + p.handshakes_failed + p.messages_acked > 0 {
            let _ = writeln!(
                s,
                "  peers: {} registered, {} unregistered, {} failed cleanly, {} messages acknowledged, {} refused, {} write failures injected",
                p.registered,
                p.unregistered,
                p.handshakes_failed,
                p.messages_acked,
                p.messages_refused,
                p.write_failures
            );
            let _ = writeln!(
                s,
                "  group commits: {} written, {} failed, {} staged deliveries lost in crashes",
                p.delivery_batches, p.delivery_batches_failed, p.staged_lost_in_crash
            );
        }
        let c = &self.claims;
        if c.refused + c.held + c.dropped + c.forged > 0 {
            let _ = writeln!(
                s,
                "  claims: {} refused, {} held for a certificate, {} dropped unchecked; {} forged frames sent",
                c.refused, c.held, c.dropped, c.forged
            );
        }
        if let Some(f) = &self.foca {
            let fm = &f.membership;
            let _ = writeln!(
                s,
                "  foca:       full roster {} s, crash known by all {} s ({} crashes), healthy declared dead {}, converged {} s after heal, {:.2} frames and {:.0} B per node per s (steady {:.2} and {:.0}) ({:.1} s wall)",
                opt(fm.full_roster_s),
                opt(fm.detect_all_s),
                fm.crashes_measured,
                fm.healthy_declared_dead,
                opt(fm.heal_converge_s),
                fm.msgs_per_node_s,
                fm.bytes_per_node_s,
                fm.steady_msgs_per_node_s,
                fm.steady_bytes_per_node_s,
                f.wall_s
            );
        }
        for b in &self.budgets {
            let verdict = match (b.met, b.enforced) {
                (true, _) => "met",
                (false, true) => "MISSED",
                (false, false) => "missed (reported only)",
            };
            let _ = writeln!(s, "  budget {verdict}: {}", b.describe());
        }
        for (t, observer, subject) in &self.false_deaths {
            let _ = writeln!(
                s,
                "  at {t:.1} s n{observer} declared the healthy n{subject} dead"
            );
        }
        for v in &self.violations {
            let _ = writeln!(s, "  VIOLATION {v}");
        }
        s
    }

    /// Writes `report.json` and `plot.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("report.json"), json)?;
        std::fs::write(dir.join("plot.svg"), self.svg())?;
        Ok(())
    }

    /// An SVG plot: share of correct views (top) and frames per node per second (bottom)
    /// over virtual time.
    pub fn svg(&self) -> String {
        const W: f64 = 800.0;
        const H: f64 = 220.0;
        const PAD: f64 = 50.0;
        let t_max = self.samples.last().map_or(1.0, |s| s.t_s).max(1.0);
        let load_max = self
            .samples
            .iter()
            .map(|s| s.msgs_per_node_s.max(s.max_msgs_node_s))
            .fold(1.0, f64::max);
        let x = |t: f64| PAD + (W - 2.0 * PAD) * t / t_max;
        let line = |top: f64, value: &dyn Fn(&Sample) -> f64, max: f64, colour: &str| {
            let points: Vec<String> = self
                .samples
                .iter()
                .map(|s| {
                    let y = top + H - 20.0 - (H - 40.0) * (value(s) / max).clamp(0.0, 1.0);
                    format!("{:.1},{:.1}", x(s.t_s), y)
                })
                .collect();
            format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
                points.join(" ")
            )
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">",
            2.0 * H + 20.0
        );
        let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let _ = writeln!(
            s,
            "<text x=\"{PAD}\" y=\"15\">{} seed {}, {} nodes: share of correct views (0 to 1)</text>",
            self.scenario, self.seed, self.nodes
        );
        s += &line(10.0, &|s| s.views_correct, 1.0, "#1f77b4");
        let _ = writeln!(
            s,
            "<text x=\"{PAD}\" y=\"{}\">frames per node per second: mean (orange) and busiest node (grey), max {load_max:.1}</text>",
            H + 25.0
        );
        s += &line(H + 20.0, &|s| s.max_msgs_node_s, load_max, "#999999");
        s += &line(H + 20.0, &|s| s.msgs_per_node_s, load_max, "#ff7f0e");
        for top in [10.0, H + 20.0] {
            let _ = writeln!(
                s,
                "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
                top + H - 20.0,
                W - PAD,
                top + H - 20.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{t_max:.0} s</text>",
            W - PAD,
            2.0 * H + 15.0
        );
        s += "</svg>\n";
        s
    }
}
