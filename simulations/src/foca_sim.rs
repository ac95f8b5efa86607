//! The foca comparison: the crates.io [`foca`] SWIM implementation run under the same network
//! model, fault timeline and membership metrics as podmesh, so a report can show both side by
//! side.
//!
//! The driver mirrors the podmesh one: one event queue ordered by (time, sequence), one
//! [`ChaCha8Rng`] seeded from the run's seed for every random choice (the network's and foca's
//! own), the scenario's [`timeline`] replayed action by action, and an [`Observer`] told what
//! really happened and what each node believes. Only membership runs: the scenario's Pod
//! workload has no foca counterpart and is ignored.
//!
//! Rules shared with the podmesh driver:
//! - the network's link seed is the first draw of the run's RNG;
//! - a node that starts or restarts announces itself to every seed but itself (foca-only: and
//!   again every `reconnect_interval` of podmesh's profile while it knows no live member, since
//!   foca itself never retries a lost announce);
//! - a frame or timer of a previous life of a node (before a crash, leave or restart) is dropped;
//! - a crash or leave of a node that is down, and a restart of a node that is up or that crashed
//!   for good, are ignored; at the heal, every node that crashed or left without staying down
//!   and has not come back restarts;
//! - the run stops at the first one-second sample after the heal at which every view is right,
//!   or `liveness_s` after the heal.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::num::{NonZeroU32, NonZeroUsize};
use std::rc::Rc;
use std::time::Duration;

use bincode::Options;
use bytes::{Buf, BufMut};
use foca::{
    Codec, Config, Foca, Header, Identity, Member, NoCustomBroadcast, Notification, Runtime, Timer,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Time;
use crate::metrics::{MembershipMetrics, Observer, Sample};
use crate::net::{Kind, Network};
use crate::scenario::{Scenario, secs};
use crate::schedule::{Action, timeline};

/// Time between two plot points, as in the podmesh driver.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Most events one run may process before it is stopped as a runaway.
const EVENTS_MAX: u64 = 2_000_000_000;

/// What one foca run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct FocaRun {
    /// The membership figures, measured as for podmesh.
    pub metrics: MembershipMetrics,
    /// The convergence and load plot, one point a virtual second.
    pub samples: Vec<Sample>,
    /// Events processed (deliveries, timers, timeline actions).
    pub events: u64,
    /// Virtual seconds simulated.
    pub simulated_s: f64,
    /// Errors foca returned (undecodable or unexpected frames, probe cycle complaints); the run
    /// counts them and goes on.
    pub errors: u64,
}

/// Runs foca's SWIM on the scenario's nodes, network and fault timeline (membership only: the
/// scenario's Pod workload is ignored), deterministically from `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> anyhow::Result<FocaRun> {
    scenario.validate()?;
    let mut sim = Sim::new(scenario, seed);
    sim.run()?;
    Ok(sim.finish())
}

/// foca's configuration: its own preset for the scenario's profile (`Config::new_lan`, or
/// `Config::new_wan` for a `wan` scenario, as podmesh picks `Config::lan` or `Config::wan`)
/// sized for the scenario's node count, unchanged but for the packet size, which is podmesh's
/// `datagram_size_max` (1100 bytes) so both work under the same datagram limit.
///
/// The LAN preset (memberlist's `DefaultLANConfig`) probes every 1 s with a 500 ms direct
/// timeout and 3 indirect probes, declares a suspect down after `4 * max(1, log10 N)` seconds
/// (a fixed timeout: no Lifeguard shrinking), piggybacks each update `4 * log10(N + 1)` times,
/// gossips to 3 members every 200 ms while it has updates, announces to 1 member every 30 s
/// (which completes the roster after a join through the seeds), announces to 2 down members
/// every 65 s (which heals partitions) and tells members declared down about it. These
/// extensions are already on in the preset, so nothing else needs enabling.
fn config(scenario: &Scenario) -> Config {
    let size = NonZeroU32::new(u32::try_from(scenario.nodes).unwrap_or(u32::MAX))
        .unwrap_or(NonZeroU32::MIN);
    let mut config = match scenario.profile.as_str() {
        "wan" => Config::new_wan(size),
        _ => Config::new_lan(size),
    };
    if let Some(size) = NonZeroUsize::new(podmesh_mesh::Config::lan().datagram_size_max) {
        config.max_packet_size = size;
    }
    config
}

/// How often a node that knows no live member announces itself to the seeds again: podmesh's
/// `reconnect_interval` for the profile (LAN 10 s, WAN 60 s), after which a lone podmesh node
/// contacts the seeds again.
fn rejoin_interval(scenario: &Scenario) -> Duration {
    match scenario.profile.as_str() {
        "wan" => podmesh_mesh::Config::wan().reconnect_interval,
        _ => podmesh_mesh::Config::lan().reconnect_interval,
    }
}

/// A node's foca identity: its index, which is its address, and a generation bumped on every
/// restart and every automatic rejoin, so that the newer identity wins over the older one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct NodeId {
    index: u32,
    generation: u32,
}

impl NodeId {
    fn node(self) -> usize {
        self.index as usize
    }
}

impl Identity for NodeId {
    type Addr = u32;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            index: self.index,
            generation: self.generation.saturating_add(1),
        })
    }

    fn addr(&self) -> u32 {
        self.index
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// foca's wire format: bincode 1.3.3 with the options podmesh uses (varint integers, little
/// endian, a byte limit), so frame sizes compare fairly.
#[derive(Debug, Clone, Copy)]
struct BincodeCodec {
    limit: u64,
}

impl BincodeCodec {
    fn options(self) -> impl Options {
        bincode::DefaultOptions::new()
            .with_varint_encoding()
            .with_little_endian()
            .with_limit(self.limit)
    }

    /// Writes `value` whole, or nothing if it does not fit.
    fn put<V: Serialize>(self, value: &V, mut buf: impl BufMut) -> bincode::Result<()> {
        let bytes = self.options().serialize(value)?;
        if buf.remaining_mut() < bytes.len() {
            return Err(Box::new(bincode::ErrorKind::SizeLimit));
        }
        buf.put_slice(&bytes);
        Ok(())
    }

    /// Reads one value and advances past it.
    fn take<V: DeserializeOwned>(self, mut buf: impl Buf) -> bincode::Result<V> {
        let mut rest = buf.chunk();
        let before = rest.len();
        let value = self.options().deserialize_from(&mut rest)?;
        let used = before - rest.len();
        buf.advance(used);
        Ok(value)
    }
}

impl Codec<NodeId> for BincodeCodec {
    type Error = bincode::Error;

    fn encode_header(&mut self, header: &Header<NodeId>, buf: impl BufMut) -> bincode::Result<()> {
        self.put(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> bincode::Result<Header<NodeId>> {
        self.take(buf)
    }

    fn encode_member(&mut self, member: &Member<NodeId>, buf: impl BufMut) -> bincode::Result<()> {
        self.put(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> bincode::Result<Member<NodeId>> {
        self.take(buf)
    }
}

/// The run's one RNG, shared by the network model and every foca instance. foca draws through
/// the `rand_core` 0.10 traits its `rand` 0.10 dependency requires; this adapts the workspace's
/// rand 0.9 [`ChaCha8Rng`] to them.
#[derive(Debug, Clone)]
struct SharedRng(Rc<RefCell<ChaCha8Rng>>);

impl rand_core_foca::TryRng for SharedRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.0.borrow_mut().next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.borrow_mut().next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.borrow_mut().fill_bytes(dst);
        Ok(())
    }
}

/// One running foca instance.
type Node = Foca<NodeId, BincodeCodec, SharedRng, NoCustomBroadcast>;

/// What foca asked for during one call, handled by the driver right after it.
#[derive(Debug, Default)]
struct Outbox {
    frames: Vec<(NodeId, Rc<[u8]>)>,
    timers: Vec<(Timer<NodeId>, Duration)>,
    /// Membership changes: the subject and whether it is now active (alive or suspect).
    views: Vec<(NodeId, bool)>,
    /// The node's own new identity after an automatic rejoin.
    renamed: Option<NodeId>,
}

impl Runtime<NodeId> for Outbox {
    fn notify(&mut self, notification: Notification<'_, NodeId>) {
        match notification {
            Notification::MemberUp(id) => self.views.push((*id, true)),
            Notification::MemberDown(id) => self.views.push((*id, false)),
            // foca keeps one identity per address: a rename alone changes no liveness (a
            // change comes as MemberUp or MemberDown right after it).
            Notification::Rejoin(id) => self.renamed = Some(*id),
            Notification::Rename(..)
            | Notification::Active
            | Notification::Idle
            | Notification::Defunct => {}
        }
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        self.frames.push((to, data.into()));
    }

    fn submit_after(&mut self, event: Timer<NodeId>, after: Duration) {
        self.timers.push((event, after));
    }
}

/// What the queue holds.
#[derive(Debug)]
enum Event {
    /// The timeline's action at this index.
    Action(usize),
    /// A datagram reaching `to`, sent during its life `life`.
    Deliver {
        to: usize,
        life: u64,
        data: Rc<[u8]>,
    },
    /// A timer foca asked for during life `life` of `node`.
    Timer {
        node: usize,
        life: u64,
        timer: Timer<NodeId>,
    },
    /// Time for `node`, during life `life`, to announce itself to the seeds again if it still
    /// knows no live member.
    Rejoin { node: usize, life: u64 },
    /// A plot point, and the time the liveness phase checks for convergence.
    Sample,
}

/// The simulation of one run.
struct Sim {
    timeline: Vec<(Time, Action)>,
    config: Config,
    codec: BincodeCodec,
    seeds: usize,
    rejoin_interval: Duration,
    liveness_end: Time,
    now: Time,
    queue: BTreeMap<(Time, u64), Event>,
    seq: u64,
    rng: SharedRng,
    net: Network,
    nodes: Vec<Option<Node>>,
    /// Bumped whenever a node goes down or comes back.
    life: Vec<u64>,
    /// The latest identity generation of each node.
    generation: Vec<u32>,
    /// Nodes down that come back at the heal unless a restart brings them back earlier.
    awaiting_restart: Vec<bool>,
    healed: bool,
    observer: Observer,
    events: u64,
    errors: u64,
}

impl Sim {
    fn new(scenario: &Scenario, seed: u64) -> Sim {
        let n = scenario.nodes;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let net = Network::new(scenario.network.config(), n, rng.random());
        let config = config(scenario);
        let heal_at = Time::ZERO + secs(scenario.safety_s);
        let mut sim = Sim {
            timeline: timeline(scenario, seed),
            codec: BincodeCodec {
                limit: config.max_packet_size.get() as u64,
            },
            config,
            seeds: scenario.join.seeds,
            rejoin_interval: rejoin_interval(scenario),
            liveness_end: heal_at + secs(scenario.liveness_s),
            now: Time::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            rng: SharedRng(Rc::new(RefCell::new(rng))),
            net,
            nodes: (0..n).map(|_| None).collect(),
            life: vec![0; n],
            generation: vec![0; n],
            awaiting_restart: vec![false; n],
            healed: false,
            observer: Observer::new(n),
            events: 0,
            errors: 0,
        };
        for i in 0..sim.timeline.len() {
            let at = sim.timeline[i].0;
            sim.push(at, Event::Action(i));
        }
        sim.push(Time::ZERO + SAMPLE_INTERVAL, Event::Sample);
        sim
    }

    fn push(&mut self, at: Time, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    /// Runs the safety phase and the liveness phase.
    fn run(&mut self) -> anyhow::Result<()> {
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > self.liveness_end {
                break;
            }
            self.now = at;
            self.events += 1;
            anyhow::ensure!(
                self.events <= EVENTS_MAX,
                "more than {EVENTS_MAX} events: stopped as a runaway"
            );
            let sample = matches!(event, Event::Sample);
            self.dispatch(event);
            if sample && self.healed && self.observer.converged() {
                break;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> FocaRun {
        self.observer.sample(self.now);
        FocaRun {
            metrics: self.observer.metrics(),
            samples: self.observer.samples().to_vec(),
            events: self.events,
            simulated_s: self.now.as_micros() as f64 / 1e6,
            errors: self.errors,
        }
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Action(i) => {
                let action = self.timeline[i].1.clone();
                self.act(action);
            }
            Event::Deliver { to, life, data } => {
                if self.life[to] == life {
                    self.call(to, |foca, out| foca.handle_data(&data, out));
                }
            }
            Event::Timer { node, life, timer } => {
                if self.life[node] == life {
                    self.call(node, |foca, out| foca.handle_timer(timer, out));
                }
            }
            Event::Rejoin { node, life } => {
                if self.life[node] == life {
                    self.rejoin(node);
                }
            }
            Event::Sample => {
                self.observer.sample(self.now);
                self.push(self.now + SAMPLE_INTERVAL, Event::Sample);
            }
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Start(node) => self.start(node),
            Action::Restart { node, .. } => {
                if self.awaiting_restart[node] {
                    self.start(node);
                }
            }
            Action::Crash {
                node, stays_down, ..
            } => self.stop(node, stays_down),
            Action::Leave(node) => {
                if self.nodes[node].is_some() {
                    self.call(node, |foca, out| foca.leave_cluster(out));
                    self.stop(node, false);
                }
            }
            Action::Partition(cut) => self.net.set_partition(cut),
            Action::Slow(node, delay) => self.net.set_slow(node, delay),
            Action::ExtraLoss(loss) => self.net.set_extra_loss(loss),
            // foca has no signed claims to forge: its run leaves the forger honest.
            Action::Forging(_) => {}
            Action::Heal => self.heal(),
        }
    }

    /// The end of the safety phase: every fault ends and the nodes waiting to come back do.
    fn heal(&mut self) {
        self.healed = true;
        self.net.heal();
        for node in 0..self.nodes.len() {
            if self.awaiting_restart[node] {
                self.start(node);
            }
        }
        self.observer.healed(self.now);
    }

    /// Starts `node` (again, with a new identity, after a crash or leave) and announces it to
    /// the seeds.
    fn start(&mut self, node: usize) {
        if self.nodes[node].is_some() {
            return;
        }
        if self.life[node] > 0 {
            self.generation[node] = self.generation[node].saturating_add(1);
        }
        self.life[node] += 1;
        self.awaiting_restart[node] = false;
        let id = NodeId {
            index: node as u32,
            generation: self.generation[node],
        };
        self.nodes[node] = Some(Foca::new(
            id,
            self.config.clone(),
            self.rng.clone(),
            self.codec,
        ));
        self.observer.node_up(node, self.now);
        self.announce(node);
    }

    /// Announces `node` to every seed but itself. Announces go to an address: any identity of
    /// the seed accepts them.
    fn announce(&mut self, node: usize) {
        for seed in (0..self.seeds).filter(|&s| s != node) {
            let to = NodeId {
                index: seed as u32,
                generation: 0,
            };
            self.call(node, |foca, out| foca.announce(to, out));
        }
        let life = self.life[node];
        self.push(
            self.now + self.rejoin_interval,
            Event::Rejoin { node, life },
        );
    }

    /// foca retries nothing while it knows no live member (its periodic announces only run once
    /// it is connected), so the driver, as an application would, announces again.
    fn rejoin(&mut self, node: usize) {
        if self.nodes[node]
            .as_ref()
            .is_some_and(|f| f.num_members() == 0)
        {
            self.announce(node);
        } else {
            let life = self.life[node];
            self.push(
                self.now + self.rejoin_interval,
                Event::Rejoin { node, life },
            );
        }
    }

    /// Stops `node` (a crash, or the end of a leave); with `stays_down`, it stays down until
    /// the end and its detection is timed.
    fn stop(&mut self, node: usize, stays_down: bool) {
        if self.nodes[node].take().is_none() {
            return;
        }
        self.life[node] += 1;
        self.awaiting_restart[node] = !stays_down;
        self.observer.node_down(node, self.now, stays_down);
    }

    /// Calls `node`'s foca, if it runs, and carries out what it asked for.
    fn call(
        &mut self,
        node: usize,
        f: impl FnOnce(&mut Node, &mut Outbox) -> Result<(), foca::Error>,
    ) {
        let Some(foca) = self.nodes[node].as_mut() else {
            return;
        };
        let mut out = Outbox::default();
        if f(foca, &mut out).is_err() {
            self.errors += 1;
        }
        self.carry_out(node, out);
    }

    fn carry_out(&mut self, node: usize, out: Outbox) {
        if let Some(id) = out.renamed {
            self.generation[node] = id.generation;
        }
        for (subject, live) in out.views {
            self.view(node, subject.node(), live);
        }
        for (to, data) in out.frames {
            self.send(node, to.node(), data);
        }
        let life = self.life[node];
        for (timer, after) in out.timers {
            self.push(self.now + after, Event::Timer { node, life, timer });
        }
    }

    fn view(&mut self, observer: usize, subject: usize, live: bool) {
        if subject >= self.nodes.len() {
            self.errors += 1;
            return;
        }
        let reachable =
            self.net.reachable(observer, subject) && self.net.reachable(subject, observer);
        self.observer
            .view(observer, subject, live, reachable, self.now);
    }

    fn send(&mut self, from: usize, to: usize, data: Rc<[u8]>) {
        self.observer.sent(from, data.len());
        if to >= self.nodes.len() {
            self.errors += 1;
            return;
        }
        let delays = {
            let mut rng = self.rng.0.borrow_mut();
            self.net.route(&mut *rng, from, to, Kind::Datagram)
        };
        let life = self.life[to];
        for delay in delays {
            let data = Rc::clone(&data);
            self.push(self.now + delay, Event::Deliver { to, life, data });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(text: &str) -> Scenario {
        Scenario::parse(text).unwrap()
    }

    #[test]
    fn a_join_burst_reaches_the_full_roster_without_false_deaths() {
        let s = scenario("name = \"burst\"\nnodes = 20\nsafety_s = 60\nliveness_s = 10");
        let run = run(&s, 1).unwrap();
        let m = &run.metrics;
        assert!(m.full_roster_s.is_some(), "{m:?}");
        assert_eq!(m.healthy_declared_dead, 0, "{m:?}");
        assert!(m.msgs_per_node_s > 0.0 && run.events > 0);
        assert!(run.samples.len() >= 60, "{}", run.samples.len());
        assert_eq!(run.errors, 0);
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let s = scenario(
            "name = \"x\"\nnodes = 15\nsafety_s = 40\n[join]\nspread_s = 5\n[network]\nloss = 0.05\n[[faults]]\nkind = \"churn\"\nper_min = 10\nat_s = 10\nfor_s = 20\ndown_s = 5",
        );
        let (a, b) = (run(&s, 7).unwrap(), run(&s, 7).unwrap());
        assert_eq!(a.metrics, b.metrics);
        assert_eq!(a.samples, b.samples);
        assert_eq!(a, b);
        assert_ne!(a.samples, run(&s, 8).unwrap().samples);
    }

    #[test]
    fn a_crash_that_stays_down_is_detected_by_all() {
        let s = scenario(
            "name = \"crash\"\nnodes = 20\nsafety_s = 60\n[[faults]]\nkind = \"crash\"\nfraction = 0.1\nat_s = 20",
        );
        let run = run(&s, 3).unwrap();
        let m = &run.metrics;
        assert_eq!(m.crashes_measured, 2, "{m:?}");
        let detect = m.detect_all_s.unwrap();
        assert!(detect > 0.0 && detect < 30.0, "{m:?}");
        assert_eq!(m.healthy_declared_dead, 0, "{m:?}");
        assert!(m.heal_converge_s.is_some(), "{m:?}");
    }
}
