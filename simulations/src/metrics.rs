//! Membership metrics, measured the same way for podmesh and for the foca comparison: both
//! drivers tell an [`Observer`] what really happened (nodes up and down, frames sent) and what
//! each node believes (its view of every other node), and it derives the figures.

use serde::Serialize;

use crate::Time;

/// The membership figures of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MembershipMetrics {
    /// Crashes (of nodes that stayed down) whose detection by every live node was measured.
    pub crashes_measured: usize,
    /// The longest time from such a crash until every live node held it dead, in seconds.
    pub detect_all_s: Option<f64>,
    /// Times a node declared dead (or gone) a node that was up and that the network let it
    /// reach both ways: the false positives of the failure detector.
    pub healthy_declared_dead: u64,
    /// Time from the start until every up node saw every other up node alive, in seconds.
    pub full_roster_s: Option<f64>,
    /// Time from the heal until every up node saw exactly the up nodes alive, in seconds.
    pub heal_converge_s: Option<f64>,
    /// Frames (datagrams and stream messages) sent per up node per second, over the run.
    pub msgs_per_node_s: f64,
    /// Their bytes per up node per second.
    pub bytes_per_node_s: f64,
    /// Frames per up node per second in the steady state: the second half of the safety
    /// phase (of the run, when nothing was healed), after the join traffic has settled.
    pub steady_msgs_per_node_s: f64,
    /// Their bytes per up node per second.
    pub steady_bytes_per_node_s: f64,
}

/// One point of the convergence and load plot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Virtual time, in seconds.
    pub t_s: f64,
    /// Share of (up observer, other node) pairs whose view matches reality, 0 to 1.
    pub views_correct: f64,
    /// Up nodes.
    pub up: usize,
    /// Frames sent per up node per second since the previous sample.
    pub msgs_per_node_s: f64,
    /// Bytes sent per up node per second since the previous sample.
    pub bytes_per_node_s: f64,
    /// The most frames one node sent per second since the previous sample.
    pub max_msgs_node_s: f64,
}

/// A bit set over node indexes.
#[derive(Debug, Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: usize, v: bool) {
        if v {
            self.0[i / 64] |= 1 << (i % 64);
        } else {
            self.0[i / 64] &= !(1 << (i % 64));
        }
    }
    fn clear(&mut self) {
        self.0.iter_mut().for_each(|w| *w = 0);
    }
}

/// Tracks reality and every node's view of it, incrementally, so a check costs O(1) per view
/// change and O(N) per node going up or down.
#[derive(Debug, Clone)]
pub struct Observer {
    n: usize,
    up: Bits,
    up_count: usize,
    /// `views[o]` bit `s`: node `o` holds node `s` alive or suspect.
    views: Vec<Bits>,
    /// Per up observer, the nodes whose view differs from reality.
    wrong: Vec<usize>,
    wrong_total: usize,
    /// Crashes being timed: (node, crash time, observers that still hold it live).
    detecting: Vec<(usize, Time, usize)>,
    detect_worst: Option<f64>,
    crashes_measured: usize,
    healthy_declared_dead: u64,
    full_roster: Option<Time>,
    heal: Option<Time>,
    heal_converged: Option<Time>,
    sent_msgs: Vec<u64>,
    sent_bytes: u64,
    total_msgs: u64,
    total_bytes: u64,
    up_time_s: f64,
    last_sample: Time,
    samples: Vec<Sample>,
    sample_msgs: Vec<u64>,
    sample_bytes: u64,
    false_deaths: Vec<(f64, usize, usize)>,
}

/// False positives kept with their details, for diagnosis.
pub const FALSE_DEATHS_KEPT: usize = 20;

impl Observer {
    /// `n` nodes, all down, seeing nothing.
    pub fn new(n: usize) -> Observer {
        Observer {
            n,
            up: Bits::new(n),
            up_count: 0,
            views: vec![Bits::new(n); n],
            wrong: vec![0; n],
            wrong_total: 0,
            detecting: Vec::new(),
            detect_worst: None,
            crashes_measured: 0,
            healthy_declared_dead: 0,
            full_roster: None,
            heal: None,
            heal_converged: None,
            sent_msgs: vec![0; n],
            sent_bytes: 0,
            total_msgs: 0,
            total_bytes: 0,
            up_time_s: 0.0,
            last_sample: Time::ZERO,
            samples: Vec::new(),
            sample_msgs: vec![0; n],
            sample_bytes: 0,
            false_deaths: Vec::new(),
        }
    }

    /// Whether `node` is up.
    pub fn is_up(&self, node: usize) -> bool {
        self.up.get(node)
    }

    /// Up nodes.
    pub fn up_count(&self) -> usize {
        self.up_count
    }

    /// Whether `observer` holds `subject` live.
    pub fn sees_live(&self, observer: usize, subject: usize) -> bool {
        self.views[observer].get(subject)
    }

    /// Whether every up node sees exactly the up nodes live.
    pub fn converged(&self) -> bool {
        self.wrong_total == 0 && self.up_count > 0
    }

    fn set_wrong(&mut self, o: usize, wrong: usize) {
        if self.up.get(o) {
            self.wrong_total = self.wrong_total - self.wrong[o] + wrong;
        }
        self.wrong[o] = wrong;
    }

    /// `node` started (or restarted) at `now`, seeing nobody yet.
    pub fn node_up(&mut self, node: usize, now: Time) {
        if self.up.get(node) {
            return;
        }
        self.views[node].clear();
        self.up.set(node, true);
        self.up_count += 1;
        // Every other up node now wrongly lacks it unless it already held it live.
        for o in 0..self.n {
            if o != node && self.up.get(o) && !self.views[o].get(node) {
                self.wrong[o] += 1;
                self.wrong_total += 1;
            } else if o != node && self.up.get(o) && self.views[o].get(node) {
                // It held a dead node live (wrong); now that is right.
                self.wrong[o] -= 1;
                self.wrong_total -= 1;
            }
        }
        // It sees nobody: every other up node is missing from its view.
        self.wrong[node] = 0;
        self.set_wrong(node, self.up_count - 1);
        self.wrong_total += 0;
        self.check_roster(now);
    }

    /// `node` crashed or left at `now`. With `timed`, the time until every up node holds it
    /// dead is measured (a crash that stays down).
    pub fn node_down(&mut self, node: usize, now: Time, timed: bool) {
        if !self.up.get(node) {
            return;
        }
        self.wrong_total -= self.wrong[node];
        self.wrong[node] = 0;
        self.up.set(node, false);
        self.up_count -= 1;
        let mut holders = 0;
        for o in 0..self.n {
            if o != node && self.up.get(o) {
                if self.views[o].get(node) {
                    // Holding it live is now wrong.
                    self.wrong[o] += 1;
                    self.wrong_total += 1;
                    holders += 1;
                } else {
                    self.wrong[o] -= 1;
                    self.wrong_total -= 1;
                }
            }
        }
        self.detecting.retain(|(n, _, _)| *n != node);
        if timed {
            self.detecting.push((node, now, holders));
            self.settle_detection(now);
        }
        // A crashed node's own detections no longer count against anyone.
        for i in 0..self.detecting.len() {
            let (subject, _, _) = self.detecting[i];
            if self.views[node].get(subject) {
                self.detecting[i].2 -= 1;
            }
        }
        self.settle_detection(now);
        self.check_roster(now);
    }

    fn settle_detection(&mut self, now: Time) {
        let mut i = 0;
        while i < self.detecting.len() {
            let (_, crashed, holders) = self.detecting[i];
            if holders == 0 {
                let took = now.saturating_since(crashed).as_secs_f64();
                self.detect_worst = Some(self.detect_worst.map_or(took, |w| w.max(took)));
                self.crashes_measured += 1;
                self.detecting.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// `observer` now holds `subject` live (alive or suspect) or not (dead or left).
    /// `reachable` says whether the network let the two reach each other both ways, so a
    /// declaration of death about an up, reachable node counts as a false positive.
    pub fn view(
        &mut self,
        observer: usize,
        subject: usize,
        live: bool,
        reachable: bool,
        now: Time,
    ) {
        if observer == subject || self.views[observer].get(subject) == live {
            return;
        }
        self.views[observer].set(subject, live);
        if self.up.get(observer) {
            let right = live == self.up.get(subject);
            if right {
                self.wrong[observer] -= 1;
                self.wrong_total -= 1;
            } else {
                self.wrong[observer] += 1;
                self.wrong_total += 1;
            }
        }
        if !live && self.up.get(subject) && self.up.get(observer) && reachable {
            self.healthy_declared_dead += 1;
            if self.false_deaths.len() < FALSE_DEATHS_KEPT {
                self.false_deaths
                    .push((now.as_micros() as f64 / 1e6, observer, subject));
            }
        }
        if !live && self.up.get(observer) {
            for d in &mut self.detecting {
                if d.0 == subject {
                    d.2 -= 1;
                }
            }
            self.settle_detection(now);
        } else if live && !self.up.get(subject) && self.up.get(observer) {
            // A live rumour about a crashed node being timed: it must be detected again.
            for d in &mut self.detecting {
                if d.0 == subject {
                    d.2 += 1;
                }
            }
        }
        self.check_roster(now);
    }

    fn check_roster(&mut self, now: Time) {
        if self.converged() {
            if self.full_roster.is_none() && self.up_count == self.n {
                self.full_roster = Some(now);
            }
            if let Some(heal) = self.heal
                && self.heal_converged.is_none()
            {
                self.heal_converged = Some(now.max(heal));
            }
        }
    }

    /// Every fault was healed at `now`: convergence is timed from here.
    pub fn healed(&mut self, now: Time) {
        self.heal = Some(now);
        self.heal_converged = None;
        self.check_roster(now);
    }

    /// When the mesh converged after the heal, if it did.
    pub fn heal_converged(&self) -> Option<Time> {
        self.heal_converged
    }

    /// When every node first saw the full roster, if it did.
    pub fn full_roster(&self) -> Option<Time> {
        self.full_roster
    }

    /// `node` sent a frame of `bytes` bytes.
    pub fn sent(&mut self, node: usize, bytes: usize) {
        self.sent_msgs[node] += 1;
        self.sample_msgs[node] += 1;
        self.sent_bytes += bytes as u64;
        self.sample_bytes += bytes as u64;
        self.total_msgs += 1;
        self.total_bytes += bytes as u64;
    }

    /// Records a plot point at `now` covering the time since the previous one.
    pub fn sample(&mut self, now: Time) {
        let span = now.saturating_since(self.last_sample).as_secs_f64();
        if span <= 0.0 {
            return;
        }
        let up = self.up_count.max(1) as f64;
        let msgs: u64 = self.sample_msgs.iter().sum();
        let max = self.sample_msgs.iter().copied().max().unwrap_or(0);
        let pairs = (self.up_count * self.n.saturating_sub(1)).max(1) as f64;
        self.samples.push(Sample {
            t_s: now.as_micros() as f64 / 1e6,
            views_correct: 1.0 - self.wrong_total as f64 / pairs,
            up: self.up_count,
            msgs_per_node_s: msgs as f64 / up / span,
            bytes_per_node_s: self.sample_bytes as f64 / up / span,
            max_msgs_node_s: max as f64 / span,
        });
        self.up_time_s += up * span;
        self.sample_msgs.iter_mut().for_each(|m| *m = 0);
        self.sample_bytes = 0;
        self.last_sample = now;
    }

    /// The plot points so far.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The figures of the run so far (call [`Observer::sample`] at the end first).
    pub fn metrics(&self) -> MembershipMetrics {
        let secs = |t: Option<Time>| t.map(|t| t.as_micros() as f64 / 1e6);
        MembershipMetrics {
            crashes_measured: self.crashes_measured,
            detect_all_s: self.detect_worst,
            healthy_declared_dead: self.healthy_declared_dead,
            full_roster_s: secs(self.full_roster),
            heal_converge_s: match (self.heal, self.heal_converged) {
                (Some(h), Some(c)) => Some(c.saturating_since(h).as_secs_f64()),
                _ => None,
            },
            msgs_per_node_s: self.total_msgs as f64 / self.up_time_s.max(1e-9),
            bytes_per_node_s: self.total_bytes as f64 / self.up_time_s.max(1e-9),
            steady_msgs_per_node_s: self.steady(|s| s.msgs_per_node_s),
            steady_bytes_per_node_s: self.steady(|s| s.bytes_per_node_s),
        }
    }

    /// The mean of `value` over the samples of the steady window.
    fn steady(&self, value: impl Fn(&Sample) -> f64) -> f64 {
        let end = match self.heal {
            Some(h) => h.as_micros() as f64 / 1e6,
            None => self.samples.last().map_or(0.0, |s| s.t_s),
        };
        let window: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.t_s > end / 2.0 && s.t_s <= end)
            .map(value)
            .collect();
        window.iter().sum::<f64>() / (window.len().max(1) as f64)
    }

    /// The first false positives: (virtual seconds, observer, subject).
    pub fn false_deaths(&self) -> &[(f64, usize, usize)] {
        &self.false_deaths
    }

    /// Crashes still waiting to be known dead everywhere.
    pub fn undetected(&self) -> usize {
        self.detecting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Time {
        Time::from_secs(s)
    }

    #[test]
    fn convergence_needs_every_view_to_match_reality() {
        let mut o = Observer::new(3);
        for i in 0..3 {
            o.node_up(i, t(0));
        }
        assert!(!o.converged());
        for a in 0..3 {
            for b in 0..3 {
                o.view(a, b, true, true, t(1));
            }
        }
        assert!(o.converged());
        assert_eq!(o.metrics().full_roster_s, Some(1.0));
        // A wrong belief breaks it again.
        o.view(0, 1, false, true, t(2));
        assert!(!o.converged());
        assert_eq!(o.metrics().healthy_declared_dead, 1);
    }

    #[test]
    fn a_crash_is_detected_when_every_up_node_holds_it_dead() {
        let mut o = Observer::new(3);
        for i in 0..3 {
            o.node_up(i, t(0));
        }
        for a in 0..3 {
            for b in 0..3 {
                o.view(a, b, true, true, t(0));
            }
        }
        o.node_down(2, t(10), true);
        assert!(!o.converged());
        o.view(0, 2, false, false, t(13));
        assert_eq!(o.undetected(), 1);
        // A live rumour at node 0 reopens it; node 1 then detects, and node 0 again.
        o.view(0, 2, true, false, t(14));
        o.view(1, 2, false, false, t(15));
        assert_eq!(o.undetected(), 1);
        o.view(0, 2, false, false, t(17));
        assert_eq!(o.undetected(), 0);
        assert_eq!(o.metrics().detect_all_s, Some(7.0));
        assert_eq!(o.metrics().healthy_declared_dead, 0);
        assert!(o.converged());
    }

    #[test]
    fn heal_convergence_is_timed_from_the_heal() {
        let mut o = Observer::new(2);
        o.node_up(0, t(0));
        o.node_up(1, t(0));
        o.view(0, 1, true, true, t(1));
        o.healed(t(5));
        assert_eq!(o.metrics().heal_converge_s, None);
        o.view(1, 0, true, true, t(8));
        assert_eq!(o.metrics().heal_converge_s, Some(3.0));
    }
}
