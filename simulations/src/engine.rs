//! The discrete-event engine: the real [`Node`] of every node (its `Mesh` and `Peers`
//! machines, composed as the daemon composes them), driven by one event heap in virtual time,
//! one seeded RNG, the network model and the scenario's timeline, with the invariants checked
//! after every event.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use podmesh_mesh::{
    Answer, Command, Config, Counters, Event, Input, LocalOp, MemStore, Node, NodeName, NodeOutput,
    PeersConfig, PodAddr, PodEvent, PodName, Row, Store, StoreError, Table, Target, WriteBatch,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Time;
use crate::check::{Checker, Pair};
use crate::metrics::Observer;
use crate::net::{Kind, Network};
use crate::report::{ClaimFigures, PeerFigures, Report};
use crate::scenario::{Scenario, secs};
use crate::schedule::{Action, timeline};
use crate::signers::Signers;

/// How often the plot is sampled and the liveness phase checks for convergence.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The modelled time of one fsynced store transaction: deliveries that reach a node while its
/// group commit is in progress are stored in that one (a node's first delivery starts it).
pub const COMMIT_TIME: Duration = Duration::from_millis(1);
/// Events one run may process before it is stopped as runaway (a protocol loop).
pub const EVENTS_MAX: u64 = 2_000_000_000;

/// A store in memory that fails writes with a given probability, from its own seeded RNG.
///
/// Writes are atomic and durable once they return, as redb's are; a crash therefore loses
/// exactly the writes that failed or never happened, and a restart "without durable state"
/// starts from an empty store.
#[derive(Debug, Clone)]
pub struct SimStore {
    inner: MemStore,
    fail: f64,
    rng: ChaCha8Rng,
    failures: u64,
}

impl SimStore {
    fn new(seed: u64) -> SimStore {
        SimStore {
            inner: MemStore::new(),
            fail: 0.0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            failures: 0,
        }
    }
}

impl Store for SimStore {
    fn read(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read(table, key)
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.inner.scan(table)
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        if self.fail > 0.0 && self.rng.random_bool(self.fail) {
            self.failures += 1;
            return Err(StoreError::new("simulated write failure"));
        }
        self.inner.write(batch)
    }
}

/// What the heap holds.
#[derive(Debug)]
enum Ev {
    Action(usize),
    Wake {
        node: usize,
        life: u32,
    },
    Frame {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
        stream: bool,
    },
    Request {
        from: usize,
        from_life: u32,
        to: usize,
        rpc: u64,
        bytes: Vec<u8>,
    },
    Response {
        to: usize,
        life: u32,
        rpc: u64,
        bytes: Vec<u8>,
    },
    /// A node's group commit finishes: its staged deliveries are written and answered.
    Commit {
        node: usize,
        life: u32,
    },
    Workload,
    Sample,
    /// The forger sends its next forged frame.
    Forge,
}

impl Ev {
    fn tag(&self) -> u64 {
        match self {
            Ev::Action(i) => 1 + ((*i as u64) << 8),
            Ev::Wake { node, .. } => 2 + ((*node as u64) << 8),
            Ev::Frame { from, to, .. } => 3 + ((*from as u64) << 8) + ((*to as u64) << 32),
            Ev::Request { from, to, .. } => 4 + ((*from as u64) << 8) + ((*to as u64) << 32),
            Ev::Response { to, .. } => 5 + ((*to as u64) << 8),
            Ev::Workload => 6,
            Ev::Sample => 7,
            Ev::Commit { node, .. } => 8 + ((*node as u64) << 8),
            Ev::Forge => 9,
        }
    }
}

#[derive(Debug)]
struct Queued {
    at: Time,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One simulated host: the node's life cycle around its protocol state.
#[derive(Debug)]
struct Host {
    /// Bumped on every crash, so frames and timers of a previous life are dropped.
    life: u32,
    running: Option<Node<SimStore>>,
    /// The store while the node is down.
    store: Option<SimStore>,
    wake_at: Option<Time>,
    /// Down, and to be restarted at the heal at the latest.
    awaiting_restart: bool,
    /// The highest incarnation any of its lives had.
    incarnation_max: u64,
    /// Times it restarted without its store.
    wipes: u32,
    /// When it crashed for good, until some node first suspects it.
    crashed_at: Option<Time>,
    /// When its group commit in progress finishes.
    commit_at: Option<Time>,
    /// A crash waiting for the next group commit (`Some(stays_down)`).
    crash_at_commit: Option<bool>,
    /// Peer requests answered after a commit, by ticket: (requester, its life, its rpc).
    answers: BTreeMap<u64, (usize, u32, u64)>,
    next_ticket: u64,
}

/// FNV-1a, for the event-log hash: tiny, stable across builds and platforms.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn mix(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn mix_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A workload operation waiting for its reply.
#[derive(Debug, Clone)]
enum PendingOp {
    Peer {
        pair: Pair,
        register: bool,
    },
    /// `wipes`: how many times the receiver had lost its store when the message was sent.
    Send {
        to: PodAddr,
        wipes: u32,
    },
}

/// One simulation run.
#[derive(Debug)]
pub struct Sim {
    scenario: Scenario,
    seed: u64,
    config: Config,
    now: Time,
    heap: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    rng: ChaCha8Rng,
    net: Network,
    nodes: Vec<Host>,
    names: Vec<NodeName>,
    by_name: HashMap<NodeName, usize>,
    by_addr: HashMap<SocketAddr, usize>,
    observer: Observer,
    checker: Checker,
    timeline: Vec<(Time, Action)>,
    hash: Fnv,
    events: u64,
    heal_at: Time,
    healed: bool,
    pending: HashMap<(usize, u64), PendingOp>,
    next_token: u64,
    pods: Vec<PodName>,
    figures: PeerFigures,
    /// Claims refused, held and dropped by nodes that have crashed since.
    claims: ClaimFigures,
    /// Forged frames a second the forger sends now (zero: it is honest).
    forging: f64,
    /// Forged frames sent.
    forged: u64,
    /// What every node signs its claims with, and the record of what each signed.
    signers: Signers,
    /// The longest wait from a crash (that stays down) until some node suspected it.
    first_suspicion_worst: Option<f64>,
}

/// Adds one node's claim counters to `figures`.
fn add_claims(figures: &mut ClaimFigures, counters: Counters) {
    figures.refused += counters.claims_refused;
    figures.held += counters.claims_held;
    figures.dropped += counters.claims_dropped;
}

fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7946))
}

impl Sim {
    /// The run with real signatures: each node gets a certificate from a throwaway mesh CA
    /// and signs with ECDSA P-256, as the daemon does, so their cost is measured. Such a run
    /// does not replay byte for byte (ECDSA draws a nonce per signature).
    pub fn with_real_signatures(mut self) -> anyhow::Result<Sim> {
        self.signers = Signers::real(&self.names)?;
        Ok(self)
    }

    /// Prepares a run of `scenario` from `seed`.
    pub fn new(scenario: Scenario, seed: u64) -> anyhow::Result<Sim> {
        scenario.validate()?;
        let n = scenario.nodes;
        let config = match scenario.profile.as_str() {
            "wan" => Config::wan(),
            _ => Config::lan(),
        };
        let names: Vec<NodeName> = (0..n)
            .map(|i| format!("n{i}").parse())
            .collect::<Result<_, _>>()?;
        let pods = (0..scenario.workload.pods_per_node)
            .map(|p| format!("p{p}").parse())
            .collect::<Result<Vec<PodName>, _>>()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let net = Network::new(scenario.network.config(), n, rng.random());
        let signers = Signers::hash(rng.random());
        let heal_at = Time::ZERO + secs(scenario.safety_s);
        let mut sim = Sim {
            timeline: timeline(&scenario, seed),
            seed,
            config,
            now: Time::ZERO,
            heap: BinaryHeap::new(),
            seq: 0,
            rng,
            net,
            nodes: (0..n)
                .map(|_| Host {
                    life: 0,
                    running: None,
                    store: None,
                    wake_at: None,
                    commit_at: None,
                    crash_at_commit: None,
                    answers: BTreeMap::new(),
                    next_ticket: 0,
                    awaiting_restart: false,
                    incarnation_max: 0,
                    wipes: 0,
                    crashed_at: None,
                })
                .collect(),
            by_name: names
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, m)| (m, i))
                .collect(),
            by_addr: (0..n).map(|i| (addr_of(i), i)).collect(),
            names,
            observer: Observer::new(n),
            checker: Checker::default(),
            hash: Fnv(0xcbf2_9ce4_8422_2325),
            events: 0,
            heal_at,
            healed: false,
            pending: HashMap::new(),
            next_token: 0,
            pods,
            figures: PeerFigures::default(),
            claims: ClaimFigures::default(),
            forging: 0.0,
            forged: 0,
            signers,
            first_suspicion_worst: None,
            scenario,
        };
        for i in 0..sim.timeline.len() {
            let at = sim.timeline[i].0;
            sim.push(at, Ev::Action(i));
        }
        sim.push(Time::ZERO + SAMPLE_INTERVAL, Ev::Sample);
        if sim.scenario.workload.peer_per_s + sim.scenario.workload.send_per_s > 0.0
            && !sim.pods.is_empty()
        {
            let first = sim.next_workload_gap();
            sim.push(Time::ZERO + secs(1.0) + first, Ev::Workload);
        }
        Ok(sim)
    }

    fn push(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse(Queued {
            at,
            seq: self.seq,
            ev,
        }));
    }

    /// Runs the safety phase and the liveness phase and returns the report.
    pub fn run(mut self) -> anyhow::Result<Report> {
        let started = Instant::now();
        let liveness_end = self.heal_at + secs(self.scenario.liveness_s);
        while let Some(Reverse(q)) = self.heap.pop() {
            if q.at > liveness_end {
                break;
            }
            self.now = q.at;
            self.events += 1;
            self.hash.mix(q.at.as_micros());
            self.hash.mix(q.ev.tag());
            if self.events > EVENTS_MAX {
                anyhow::bail!("more than {EVENTS_MAX} events: stopped as a runaway");
            }
            let sample = matches!(q.ev, Ev::Sample);
            self.dispatch(q.ev);
            if sample && self.healed && self.settled() {
                break;
            }
        }
        self.observer.sample(self.now);
        self.final_checks();
        Ok(self.report(started.elapsed()))
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Action(i) => {
                let action = self.timeline[i].1.clone();
                self.act(action);
            }
            Ev::Wake { node, life } => {
                if self.nodes[node].life != life || self.nodes[node].wake_at != Some(self.now) {
                    return;
                }
                self.nodes[node].wake_at = None;
                let now = self.now;
                if let Some(r) = self.nodes[node].running.as_mut() {
                    r.handle_timeout(now);
                }
                self.pump(node);
            }
            Ev::Frame {
                from,
                to,
                bytes,
                stream,
            } => {
                self.hash.mix_bytes(&bytes);
                let now = self.now;
                let from_name = self.names[from].clone();
                let Some(r) = self.nodes[to].running.as_mut() else {
                    return;
                };
                let input = if stream {
                    Input::Message {
                        from: from_name,
                        bytes,
                    }
                } else {
                    Input::Datagram {
                        from: from_name,
                        bytes,
                    }
                };
                // Network input never fails the core; an error would be a bug worth seeing.
                if let Err(e) = r.handle(input, now) {
                    self.checker
                        .violation(now, format!("n{to} refused network input: {e}"));
                }
                self.pump(to);
            }
            Ev::Request {
                from,
                from_life,
                to,
                rpc,
                bytes,
            } => {
                self.hash.mix_bytes(&bytes);
                let now = self.now;
                let from_name = self.names[from].clone();
                let host = &mut self.nodes[to];
                let Some(r) = host.running.as_mut() else {
                    return;
                };
                host.next_ticket += 1;
                let ticket = host.next_ticket;
                match r.handle_request(ticket, &from_name, &bytes, now) {
                    Answer::Now(answer) => self.respond(to, (from, from_life, rpc), answer),
                    Answer::Later => {
                        host.answers.insert(ticket, (from, from_life, rpc));
                    }
                    Answer::Refused => {}
                }
                self.pump(to);
            }
            Ev::Commit { node, life } => {
                if self.nodes[node].life != life {
                    return;
                }
                self.nodes[node].commit_at = None;
                if let Some(stays_down) = self.nodes[node].crash_at_commit.take() {
                    self.act(Action::Crash {
                        node,
                        stays_down,
                        mid_commit: false,
                    });
                    return;
                }
                let now = self.now;
                if let Some(r) = self.nodes[node].running.as_mut() {
                    r.commit_deliveries(now);
                }
                self.pump(node);
            }
            Ev::Response {
                to,
                life,
                rpc,
                bytes,
            } => {
                self.hash.mix_bytes(&bytes);
                if self.nodes[to].life != life {
                    return;
                }
                let now = self.now;
                if let Some(r) = self.nodes[to].running.as_mut() {
                    r.handle_response(rpc, Some(&bytes), now);
                }
                self.pump(to);
            }
            Ev::Workload => {
                if self.now < self.heal_at {
                    self.workload_op();
                    let gap = self.next_workload_gap();
                    self.push(self.now + gap, Ev::Workload);
                }
            }
            Ev::Sample => {
                self.observer.sample(self.now);
                self.push(self.now + SAMPLE_INTERVAL, Ev::Sample);
            }
            Ev::Forge => self.forge(),
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Start(node) => self.start(node, true, true),
            Action::Restart { node, .. } if self.nodes[node].crash_at_commit.is_some() => {
                // A crash waiting for a commit that never came before its restart was due
                // does not happen.
                self.nodes[node].crash_at_commit = None;
            }
            Action::Restart { node, durable } => {
                if self.nodes[node].running.is_none() && self.nodes[node].awaiting_restart {
                    self.start(node, durable, false);
                }
            }
            Action::Crash {
                node,
                stays_down,
                mid_commit: true,
            } if self.nodes[node].commit_at.is_none() && self.nodes[node].running.is_some() => {
                self.nodes[node].crash_at_commit = Some(stays_down);
            }
            Action::Crash {
                node, stays_down, ..
            } => {
                if stays_down && self.nodes[node].running.is_some() {
                    self.nodes[node].crashed_at = Some(self.now);
                }
                self.crash(node, stays_down);
            }
            Action::Leave(node) => {
                let now = self.now;
                if let Some(r) = self.nodes[node].running.as_mut() {
                    let _ = r.handle(Input::Command(Command::Leave), now);
                    self.pump(node);
                    self.crash(node, false);
                }
            }
            Action::Partition(cut) => self.net.set_partition(cut),
            Action::Slow(node, delay) => self.net.set_slow(node, delay),
            Action::ExtraLoss(loss) => self.net.set_extra_loss(loss),
            Action::Forging(per_s) => self.set_forging(per_s),
            Action::Heal => self.heal(),
        }
    }

    fn heal(&mut self) {
        self.healed = true;
        self.net.heal();
        for node in 0..self.nodes.len() {
            if let Some(r) = self.nodes[node].running.as_mut() {
                r.store_mut().fail = 0.0;
            }
            if let Some(store) = self.nodes[node].store.as_mut() {
                store.fail = 0.0;
            }
            if self.nodes[node].running.is_none() && self.nodes[node].awaiting_restart {
                self.start(node, true, false);
            }
        }
        self.observer.healed(self.now);
    }

    fn fail_rate(&self) -> f64 {
        if self.healed {
            0.0
        } else {
            self.scenario.workload.fail_write
        }
    }

    /// Starts `node`: for the first time (`first`), after a crash with its store (`durable`),
    /// or after a crash that lost the store.
    fn start(&mut self, node: usize, durable: bool, first: bool) {
        if self.nodes[node].running.is_some() {
            return;
        }
        let now = self.now;
        let store_seed: u64 = self.rng.random();
        let mut store = match self.nodes[node].store.take() {
            Some(store) if durable => store,
            Some(_) | None => {
                if !first {
                    self.checker.forget_node(&self.names[node]);
                    self.nodes[node].wipes += 1;
                }
                SimStore::new(store_seed)
            }
        };
        store.fail = 0.0;
        let mesh_seed: u64 = self.rng.random();
        // Wall-clock time is virtual time since the Unix epoch.
        let started = Node::start(
            self.config.clone(),
            PeersConfig::default(),
            self.names[node].clone(),
            addr_of(node),
            store,
            self.signers.signer(node, &self.names[node]),
            mesh_seed,
            now,
            0,
        );
        let started = match started {
            Ok(started) => started,
            Err(e) => {
                self.checker
                    .violation(now, format!("n{node} could not start: {e}"));
                return;
            }
        };
        let incarnation = started.mesh().incarnation();
        if durable && !first && incarnation <= self.nodes[node].incarnation_max {
            self.checker.violation(
                now,
                format!(
                    "n{node} restarted at incarnation {incarnation}, not above {}",
                    self.nodes[node].incarnation_max
                ),
            );
        }
        self.nodes[node].incarnation_max = self.nodes[node].incarnation_max.max(incarnation);
        // Durability: every acknowledged relation of this node's Pods is in what it loaded.
        let me = self.names[node].clone();
        for record in started.peers().pods() {
            let addr = PodAddr::new(record.name.clone(), me.clone());
            self.checker
                .check_record(now, &addr, record, &self.unsettled_with(&addr));
        }
        self.checker
            .check_inboxes_loaded(now, &me, started.store(), self.nodes[node].life);
        self.nodes[node].running = Some(started);
        self.nodes[node].awaiting_restart = false;
        self.observer.node_up(node, now);
        // Seeds to join through: the scenario's seeds (a durable restart also finds the
        // members it stored; the seeds are how an empty node gets in at all).
        let seeds: Vec<SocketAddr> = (0..self.scenario.join.seeds)
            .filter(|&s| s != node)
            .map(addr_of)
            .collect();
        let r = self.nodes[node].running.as_mut().expect("just started");
        let join = if durable && !first { Vec::new() } else { seeds };
        let _ = r.handle(Input::Command(Command::Join { seeds: join }), now);
        if first || !durable {
            for pod in self.pods.clone() {
                let token = self.token();
                let r = self.nodes[node].running.as_mut().expect("just started");
                r.handle_local(
                    token,
                    LocalOp::CreatePod {
                        name: pod,
                        parent: None,
                    },
                    now,
                );
            }
        }
        let fail = self.fail_rate();
        if let Some(r) = self.nodes[node].running.as_mut() {
            r.store_mut().fail = fail;
        }
        self.pump(node);
    }

    fn crash(&mut self, node: usize, stays_down: bool) {
        let Some(r) = self.nodes[node].running.take() else {
            return;
        };
        self.figures.staged_lost_in_crash += r.staged_deliveries() as u64;
        add_claims(&mut self.claims, r.mesh().counters());
        let n = &mut self.nodes[node];
        n.life += 1;
        n.wake_at = None;
        n.commit_at = None;
        n.crash_at_commit = None;
        n.answers.clear();
        n.awaiting_restart = !stays_down;
        let mut store = r.into_store();
        self.figures.write_failures += store.failures;
        store.failures = 0;
        n.store = Some(store);
        // Its operations in flight get no reply now: their outcome is learnt at the end.
        let lost: Vec<(usize, u64)> = self
            .pending
            .keys()
            .filter(|(n, _)| *n == node)
            .copied()
            .collect();
        for key in lost {
            if let Some(PendingOp::Peer { pair, .. }) = self.pending.remove(&key) {
                self.checker.outcome_unknown(pair);
            }
        }
        self.observer.node_down(node, self.now, stays_down);
    }

    fn node_of(&self, target: &Target) -> Option<usize> {
        match &target.name {
            Some(name) => self.by_name.get(name).copied(),
            None => self.by_addr.get(&target.addr).copied(),
        }
    }

    /// Carries out everything node `node` asked for, then schedules its next wake-up.
    /// Sends the answer of a peer request back to `(requester, its life, its rpc)`.
    fn respond(&mut self, node: usize, (to, life, rpc): (usize, u32, u64), answer: Vec<u8>) {
        let now = self.now;
        for delay in self.net.route(&mut self.rng, node, to, Kind::Stream) {
            self.push(
                now + delay,
                Ev::Response {
                    to,
                    life,
                    rpc,
                    bytes: answer.clone(),
                },
            );
        }
    }

    fn pump(&mut self, node: usize) {
        let now = self.now;
        loop {
            let Some(r) = self.nodes[node].running.as_mut() else {
                return;
            };
            let Some(out) = r.poll_output() else {
                break;
            };
            self.output(node, out);
        }
        let life = self.nodes[node].life;
        let Some(r) = self.nodes[node].running.as_ref() else {
            return;
        };
        // A commit starts when the first delivery is staged; those staged until it finishes
        // share it.
        let (staged, wake) = (r.staged_deliveries(), r.poll_timeout());
        if staged > 0 && self.nodes[node].commit_at.is_none() {
            let at = now + COMMIT_TIME;
            self.nodes[node].commit_at = Some(at);
            self.push(at, Ev::Commit { node, life });
        }
        if let Some(at) = wake {
            let at = at.max(now);
            if self.nodes[node].wake_at.is_none_or(|w| at < w) {
                self.nodes[node].wake_at = Some(at);
                self.push(at, Ev::Wake { node, life });
            }
        }
    }

    fn output(&mut self, node: usize, out: NodeOutput) {
        let now = self.now;
        match out {
            NodeOutput::Datagram { to, bytes } => self.send_frame(node, &to, bytes, false),
            NodeOutput::Message { to, bytes } => self.send_frame(node, &to, bytes, true),
            NodeOutput::Request { rpc, to, bytes } => self.send_request(node, &to, rpc, bytes),
            NodeOutput::Reply { token, result } => self.reply(node, token, result),
            NodeOutput::Answer { ticket, bytes } => {
                if let Some(requester) = self.nodes[node].answers.remove(&ticket) {
                    self.respond(node, requester, bytes);
                }
            }
            NodeOutput::Published { pod, record, .. } => {
                // Durability: every acknowledged relation is in each record a node publishes.
                if let Some(record) = &record {
                    let addr = PodAddr::new(pod, self.names[node].clone());
                    let unsettled = self.unsettled_with(&addr);
                    self.checker.check_record(now, &addr, record, &unsettled);
                }
            }
            NodeOutput::Pod(PodEvent::Notification { pod, entry }) => {
                let to = PodAddr::new(pod, self.names[node].clone());
                self.checker.notified(now, &to, &entry.id);
            }
            NodeOutput::Pod(_) => {}
            NodeOutput::Member(event) => {
                self.check_claim(node, &event);
                let (subject, live, incarnation) = match &event {
                    Event::MemberAlive {
                        node, incarnation, ..
                    } => (node, true, *incarnation),
                    Event::MemberSuspect { node, incarnation } => (node, true, *incarnation),
                    Event::MemberDead { node, incarnation }
                    | Event::MemberLeft { node, incarnation } => (node, false, *incarnation),
                    Event::StateChanged { .. } => return,
                };
                let Some(&s) = self.by_name.get(subject) else {
                    return;
                };
                let life = self.nodes[node].life;
                if s == node {
                    self.checker
                        .violation(now, format!("n{node} holds itself {event:?}"));
                    return;
                }
                self.checker
                    .check_incarnation(now, node, life, s, incarnation);
                if !matches!(event, Event::MemberAlive { .. })
                    && let Some(crashed) = self.nodes[s].crashed_at.take()
                {
                    // The first suspicion of a crash that stays down: where detection time goes.
                    let waited = now.saturating_since(crashed).as_secs_f64();
                    self.first_suspicion_worst = Some(
                        self.first_suspicion_worst
                            .map_or(waited, |w: f64| w.max(waited)),
                    );
                }
                let reachable = self.net.reachable(node, s) && self.net.reachable(s, node);
                self.observer.view(node, s, live, reachable, now);
            }
        }
    }

    fn send_frame(&mut self, from: usize, to: &Target, mut bytes: Vec<u8>, stream: bool) {
        self.observer.sent(from, bytes.len());
        let Some(to) = self.node_of(to) else {
            return;
        };
        let kind = if stream { Kind::Stream } else { Kind::Datagram };
        let delays = self.net.route(&mut self.rng, from, to, kind);
        let now = self.now;
        let mut delays = delays.into_iter().peekable();
        while let Some(delay) = delays.next() {
            let bytes = if delays.peek().is_some() {
                bytes.clone()
            } else {
                std::mem::take(&mut bytes)
            };
            self.push(
                now + delay,
                Ev::Frame {
                    from,
                    to,
                    bytes,
                    stream,
                },
            );
        }
    }

    /// Sends peer request `rpc` on a stream; its answer comes back as an [`Ev::Response`].
    fn send_request(&mut self, node: usize, to: &Target, rpc: u64, bytes: Vec<u8>) {
        let now = self.now;
        let Some(to) = self.node_of(to) else {
            return;
        };
        let from_life = self.nodes[node].life;
        self.observer.sent(node, bytes.len());
        for delay in self.net.route(&mut self.rng, node, to, Kind::Stream) {
            self.push(
                now + delay,
                Ev::Request {
                    from: node,
                    from_life,
                    to,
                    rpc,
                    bytes: bytes.clone(),
                },
            );
        }
    }
}

mod claims;
mod finish;
mod workload;
