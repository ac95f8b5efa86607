//! A small multi-node harness: N cores exchanging frames in memory under virtual time, with
//! seeded latency and loss. Not the simulator; just enough to check whole-mesh behaviour.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use podmesh_mesh::{
    Command, Config, Event, HashAuthority, Input, MemStore, MemberState, Mesh, NodeName, Output,
    Time,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn name(i: usize) -> NodeName {
    format!("node-{i}").parse().unwrap()
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 7000))
}

/// A frame in flight.
struct Frame {
    from: usize,
    to: usize,
    datagram: bool,
    bytes: Vec<u8>,
}

struct Cluster {
    nodes: Vec<Option<Mesh<MemStore>>>,
    by_addr: BTreeMap<SocketAddr, usize>,
    now: Time,
    /// Frames in flight, by delivery time then send order.
    inflight: BTreeMap<(Time, u64), Frame>,
    seq: u64,
    /// Probability that a datagram is lost; streams are reliable, as QUIC makes them.
    loss: f64,
    /// Directed links that drop everything, datagrams and streams alike (a partition).
    blocked: BTreeSet<(usize, usize)>,
    /// Extra delay before a node sees any frame: a slow node.
    slow: BTreeMap<usize, Duration>,
    rng: ChaCha8Rng,
    deaths: Vec<(Time, usize, NodeName)>,
}

impl Cluster {
    fn new(n: usize, config: &Config, seed: u64) -> Cluster {
        let nodes = (0..n)
            .map(|i| {
                let mesh = Mesh::new(
                    config.clone(),
                    name(i),
                    addr(i),
                    MemStore::new(),
                    Box::new(HashAuthority::new(1, 64).signer(&name(i))),
                    seed ^ (i as u64) << 20,
                    Time::ZERO,
                );
                Some(mesh.unwrap())
            })
            .collect();
        Cluster {
            nodes,
            by_addr: (0..n).map(|i| (addr(i), i)).collect(),
            now: Time::ZERO,
            inflight: BTreeMap::new(),
            seq: 0,
            loss: 0.0,
            blocked: BTreeSet::new(),
            slow: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            deaths: Vec::new(),
        }
    }

    fn mesh_mut(&mut self, i: usize) -> &mut Mesh<MemStore> {
        self.nodes[i].as_mut().expect("node is running")
    }

    fn command(&mut self, i: usize, command: Command) {
        let now = self.now;
        self.mesh_mut(i)
            .handle(Input::Command(command), now)
            .unwrap();
        self.drain(i);
    }

    fn drain(&mut self, i: usize) {
        while let Some(output) = self.nodes[i].as_mut().and_then(Mesh::poll_output) {
            let (to, datagram, bytes) = match output {
                Output::Datagram { to, bytes } => (to, true, bytes),
                Output::Message { to, bytes } => (to, false, bytes),
                Output::Event(Event::MemberDead { node, .. }) => {
                    self.deaths.push((self.now, i, node));
                    continue;
                }
                Output::Event(_) => continue,
            };
            let Some(&j) = self.by_addr.get(&to.addr) else {
                continue;
            };
            if self.blocked.contains(&(i, j)) {
                continue;
            }
            if datagram && self.rng.random_bool(self.loss) {
                continue;
            }
            let latency = Duration::from_micros(self.rng.random_range(500..5_000))
                + self.slow.get(&j).copied().unwrap_or_default();
            self.seq += 1;
            self.inflight.insert(
                (self.now + latency, self.seq),
                Frame {
                    from: i,
                    to: j,
                    datagram,
                    bytes,
                },
            );
        }
    }

    fn run_until(&mut self, end: Time) {
        loop {
            let next_timer = self
                .nodes
                .iter()
                .flatten()
                .filter_map(Mesh::poll_timeout)
                .min();
            let next_frame = self.inflight.first_key_value().map(|((t, _), _)| *t);
            let next = match (next_timer, next_frame) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(end),
            };
            if next > end {
                self.now = end;
                return;
            }
            self.now = next;
            while let Some(entry) = self.inflight.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let Frame {
                    from,
                    to,
                    datagram,
                    bytes,
                } = entry.remove();
                let now = self.now;
                let Some(mesh) = self.nodes[to].as_mut() else {
                    continue;
                };
                let from = name(from);
                let input = if datagram {
                    Input::Datagram { from, bytes }
                } else {
                    Input::Message { from, bytes }
                };
                mesh.handle(input, now).unwrap();
                self.drain(to);
            }
            for i in 0..self.nodes.len() {
                let now = self.now;
                if let Some(mesh) = self.nodes[i].as_mut()
                    && mesh.poll_timeout().is_some_and(|t| t <= now)
                {
                    mesh.handle_timeout(now);
                    self.drain(i);
                }
            }
        }
    }

    /// Runs in 100 ms steps until `done` holds or `limit` passes; returns when it held.
    fn run_until_true(&mut self, limit: Duration, done: impl Fn(&Cluster) -> bool) -> Option<Time> {
        let end = self.now + limit;
        loop {
            if done(self) {
                return Some(self.now);
            }
            if self.now >= end {
                return None;
            }
            self.run_until(self.now + Duration::from_millis(100));
        }
    }

    fn running(&self) -> impl Iterator<Item = &Mesh<MemStore>> {
        self.nodes.iter().flatten()
    }

    fn full_roster(&self, n: usize) -> bool {
        self.running().all(|m| {
            m.members()
                .iter()
                .filter(|m| m.state == MemberState::Alive)
                .count()
                == n
        })
    }

    fn join_all_through_node_0(&mut self) {
        for i in 1..self.nodes.len() {
            self.command(
                i,
                Command::Join {
                    seeds: vec![addr(0)],
                },
            );
        }
    }
}

#[test]
fn fifty_nodes_joining_through_one_seed_reach_a_full_roster() {
    // Every node of a simultaneous join through one seed ends up knowing all 50 members alive.
    let n = 50;
    let mut cluster = Cluster::new(n, &Config::lan(), 1);
    cluster.join_all_through_node_0();
    let done = cluster.run_until_true(Duration::from_secs(30), |c| c.full_roster(n));
    assert!(done.is_some(), "no full roster after 30 s");
    assert!(
        cluster.deaths.is_empty(),
        "healthy nodes declared dead: {:?}",
        cluster.deaths
    );
}

#[test]
fn a_crashed_node_is_declared_dead_by_all() {
    // Every survivor learns of the crash within the DESIGN bound, and nobody else is declared
    // dead along the way.
    let n = 50;
    let config = Config::lan();
    let mut cluster = Cluster::new(n, &config, 2);
    cluster.join_all_through_node_0();
    assert!(
        cluster
            .run_until_true(Duration::from_secs(30), |c| c.full_roster(n))
            .is_some()
    );
    let crashed = 7;
    cluster.nodes[crashed] = None;
    let gone = name(crashed);
    let t0 = cluster.now;
    let all_know = cluster.run_until_true(Duration::from_secs(60), |c| {
        c.running().all(|m| {
            m.member(&gone)
                .is_some_and(|m| m.state == MemberState::Dead)
        })
    });
    let all_know = all_know.expect("not every survivor declared the crashed node dead");
    let bound = config
        .probe_interval
        .mul_f64(f64::from(config.suspicion_mult) * (n as f64).log10() + 3.0);
    assert!(
        all_know.saturating_since(t0) <= bound,
        "took {:?}",
        all_know.saturating_since(t0)
    );
    assert!(
        cluster.deaths.iter().all(|(_, _, node)| *node == gone),
        "{:?}",
        cluster.deaths
    );
}

#[test]
fn ten_percent_loss_for_ten_minutes_declares_no_healthy_node_dead() {
    // Lifeguard and refutation keep a lossy but healthy mesh free of false deaths.
    let n = 20;
    let mut cluster = Cluster::new(n, &Config::lan(), 3);
    cluster.join_all_through_node_0();
    assert!(
        cluster
            .run_until_true(Duration::from_secs(30), |c| c.full_roster(n))
            .is_some()
    );
    cluster.loss = 0.10;
    let end = cluster.now + Duration::from_secs(600);
    cluster.run_until(end);
    assert!(
        cluster.deaths.is_empty(),
        "healthy nodes declared dead: {:?}",
        cluster.deaths
    );
    // The loss did cause false suspicions; refutation is what kept them from becoming deaths.
    let refutations: u64 = cluster.running().map(|m| m.counters().refutations).sum();
    assert!(
        refutations > 0,
        "the loss never caused a suspicion: the test proves nothing"
    );
    cluster.loss = 0.0;
    assert!(
        cluster
            .run_until_true(Duration::from_secs(30), |c| c.full_roster(n))
            .is_some()
    );
}

#[test]
fn a_half_half_partition_heals_after_it_ends() {
    // Each side declares the other dead during a 30 s partition; once it ends, re-contact of
    // seeds and dead members plus anti-entropy bring every node back to a full roster, and
    // state written on one side during the partition reaches the other.
    let n = 20;
    let mut cluster = Cluster::new(n, &Config::lan(), 4);
    cluster.join_all_through_node_0();
    assert!(
        cluster
            .run_until_true(Duration::from_secs(30), |c| c.full_roster(n))
            .is_some()
    );
    let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % 2 == 0);
    for &x in &a {
        for &y in &b {
            cluster.blocked.insert((x, y));
            cluster.blocked.insert((y, x));
        }
    }
    let end = cluster.now + Duration::from_secs(30);
    cluster.run_until(end);
    cluster.command(
        1,
        Command::PutState {
            key: "pod/p".into(),
            value: b"up".to_vec(),
        },
    );
    let split = cluster.run_until_true(Duration::from_secs(60), |c| {
        c.running().all(|m| {
            m.members()
                .iter()
                .filter(|m| m.state == MemberState::Dead)
                .count()
                == n / 2
        })
    });
    assert!(split.is_some(), "the sides never declared each other dead");
    cluster.blocked.clear();
    let writer = name(1);
    // Three mean reconnect intervals: a re-contact of a dead member reaches across, and
    // the rest is anti-entropy and gossip.
    let limit = Config::lan().reconnect_interval * 3;
    let healed = cluster.run_until_true(limit, |c| {
        c.full_roster(n) && c.running().all(|m| m.state_of(&writer).count() == 1)
    });
    assert!(
        healed.is_some(),
        "the partition did not heal within {limit:?}"
    );
}

#[test]
fn a_two_second_slow_node_is_neither_declared_dead_nor_accuses_others() {
    // Lifeguard: a node that takes 2 s to see anything raises its own awareness and stops
    // accusing healthy members, and it refutes every suspicion of itself in time.
    let n = 20;
    let mut cluster = Cluster::new(n, &Config::lan(), 5);
    cluster.join_all_through_node_0();
    assert!(
        cluster
            .run_until_true(Duration::from_secs(30), |c| c.full_roster(n))
            .is_some()
    );
    let slow = 3;
    cluster.slow.insert(slow, Duration::from_secs(2));
    let end = cluster.now + Duration::from_secs(600);
    cluster.run_until(end);
    assert!(
        cluster.deaths.is_empty(),
        "healthy nodes declared dead: {:?}",
        cluster.deaths
    );
    let health = cluster.nodes[slow].as_ref().map(Mesh::local_health);
    assert!(
        health >= Some(3),
        "the slow node's awareness stayed at {health:?}"
    );
}

/// Messages and bytes sent per node per second by a settled cluster of `n` nodes.
fn steady_state_cost(n: usize) -> (f64, f64) {
    let mut cluster = Cluster::new(n, &Config::lan(), 6);
    cluster.join_all_through_node_0();
    assert!(
        cluster
            .run_until_true(Duration::from_secs(30), |c| c.full_roster(n))
            .is_some()
    );
    cluster.run_until(cluster.now + Duration::from_secs(60));
    let before: Vec<_> = cluster.running().map(Mesh::counters).collect();
    let window = Duration::from_secs(120);
    cluster.run_until(cluster.now + window);
    let after: Vec<_> = cluster.running().map(Mesh::counters).collect();
    let (mut messages, mut bytes) = (0, 0);
    for (b, a) in before.iter().zip(&after) {
        messages += a.datagrams_sent + a.messages_sent - b.datagrams_sent - b.messages_sent;
        bytes += a.datagram_bytes_sent + a.message_bytes_sent
            - b.datagram_bytes_sent
            - b.message_bytes_sent;
    }
    let per_node_second = |x: u64| x as f64 / n as f64 / window.as_secs_f64();
    (per_node_second(messages), per_node_second(bytes))
}

#[test]
fn steady_state_cost_per_node_is_flat_in_n_and_within_budget() {
    // DESIGN section 9: at most 3 messages and 1 KiB per node per second, not growing with N
    // (counted in simulated time, so this is a protocol property, not a speed measurement).
    let (small_messages, small_bytes) = steady_state_cost(20);
    let (large_messages, large_bytes) = steady_state_cost(50);
    for (messages, bytes) in [(small_messages, small_bytes), (large_messages, large_bytes)] {
        assert!(messages <= 3.0, "{messages} messages per node per second");
        assert!(bytes <= 1024.0, "{bytes} bytes per node per second");
    }
    assert!(
        large_messages <= small_messages * 1.1,
        "{small_messages} -> {large_messages}"
    );
    assert!(
        large_bytes <= small_bytes * 1.1,
        "{small_bytes} -> {large_bytes}"
    );
}
