//! Unit tests of the core, driven with explicit virtual time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::suspicion::suspicion_timeout;
use super::*;
use crate::codec::{Body, CertificateRecord, Datagram, MemberRecord, Message, StateRecord};
use crate::signing::{HashAuthority, HashSignatures};
use crate::{MemStore, PROTOCOL_VERSION};

fn name(i: usize) -> NodeName {
    format!("n{i}").parse().unwrap()
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 7000))
}

/// The signer of node `i`, under the one authority of every test mesh.
fn signer(i: usize) -> HashSignatures {
    HashAuthority::new(0x7e57, 64).signer(&name(i))
}

fn signatures(i: usize) -> Box<dyn Signatures> {
    Box::new(signer(i))
}

/// Node `i`'s signature of `claim`.
fn signed(i: usize, claim: &[u8]) -> Signature {
    let mut signer = signer(i);
    Signature::new(key_id(&signer.certificate()), signer.sign(claim))
}

/// Node `i`'s certificate as push/pull carries it.
fn certificate(i: usize) -> CertificateRecord {
    CertificateRecord {
        name: name(i),
        der: signer(i).certificate().to_vec(),
    }
}

/// Makes `mesh` hold node `i`'s certificate, as if it had met it.
fn know(mesh: &mut Mesh<MemStore>, i: usize) {
    let certificate = signer(i).certificate();
    let credential = mesh.signatures.admit(&name(i), &certificate).unwrap();
    mesh.credentials
        .install(name(i), key_id(&certificate), credential);
}

/// One output as the test network saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    at: Time,
    from: usize,
    output: Output,
}

/// A tiny in-memory network of cores with virtual time, 1 ms latency, directed link blocks and
/// seeded loss. Streams are reliable (QUIC retransmits) unless the link is blocked.
struct Net {
    config: Config,
    nodes: Vec<Option<Mesh<MemStore>>>,
    stores: Vec<Option<MemStore>>,
    now: Time,
    inflight: BTreeMap<(Time, u64), (usize, usize, Output)>,
    seq: u64,
    blocked: BTreeSet<(usize, usize)>,
    loss: f64,
    rng: ChaCha8Rng,
    log: Vec<Sent>,
    events: Vec<(Time, usize, Event)>,
}

impl Net {
    fn new(n: usize, config: Config) -> Net {
        let mut net = Net {
            config,
            nodes: Vec::new(),
            stores: Vec::new(),
            now: Time::ZERO,
            inflight: BTreeMap::new(),
            seq: 0,
            blocked: BTreeSet::new(),
            loss: 0.0,
            rng: ChaCha8Rng::seed_from_u64(99),
            log: Vec::new(),
            events: Vec::new(),
        };
        for i in 0..n {
            net.nodes.push(None);
            net.stores.push(Some(MemStore::new()));
            net.start(i);
        }
        net
    }

    /// A cluster where every node joined through node 0 and the roster is complete.
    fn joined(n: usize, config: Config) -> Net {
        let mut net = Net::new(n, config);
        for i in 1..n {
            net.command(
                i,
                Command::Join {
                    seeds: vec![addr(0)],
                },
            );
        }
        net.run_for(Duration::from_secs(10));
        for i in 0..n {
            let live = net
                .mesh(i)
                .members()
                .iter()
                .filter(|m| m.state == MemberState::Alive)
                .count();
            assert_eq!(live, n, "node {i} has no full roster");
        }
        net
    }

    fn start(&mut self, i: usize) {
        let store = self.stores[i].take().expect("node is not running");
        let mesh = Mesh::new(
            self.config.clone(),
            name(i),
            addr(i),
            store,
            signatures(i),
            i as u64,
            self.now,
        )
        .unwrap();
        self.nodes[i] = Some(mesh);
        self.drain(i);
    }

    fn crash(&mut self, i: usize) {
        let mesh = self.nodes[i].take().expect("node is running");
        self.stores[i] = Some(mesh.into_store());
    }

    fn mesh(&self, i: usize) -> &Mesh<MemStore> {
        self.nodes[i].as_ref().expect("node is running")
    }

    fn command(&mut self, i: usize, command: Command) {
        let now = self.now;
        self.nodes[i]
            .as_mut()
            .unwrap()
            .handle(Input::Command(command), now)
            .unwrap();
        self.drain(i);
    }

    fn index_of(&self, target: &Target) -> Option<usize> {
        (0..self.nodes.len()).find(|&j| addr(j) == target.addr)
    }

    fn drain(&mut self, i: usize) {
        let now = self.now;
        while let Some(output) = self.nodes[i].as_mut().and_then(|m| m.poll_output()) {
            self.log.push(Sent {
                at: now,
                from: i,
                output: output.clone(),
            });
            let to = match &output {
                Output::Event(event) => {
                    self.events.push((now, i, event.clone()));
                    continue;
                }
                Output::Datagram { to, .. } | Output::Message { to, .. } => to.clone(),
            };
            let Some(j) = self.index_of(&to) else {
                continue;
            };
            if self.blocked.contains(&(i, j)) {
                continue;
            }
            if matches!(output, Output::Datagram { .. }) && self.rng.random_bool(self.loss) {
                continue;
            }
            self.seq += 1;
            self.inflight
                .insert((now + Duration::from_millis(1), self.seq), (i, j, output));
        }
    }

    fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    fn run_until(&mut self, end: Time) {
        loop {
            let next_timer = self
                .nodes
                .iter()
                .flatten()
                .filter_map(|m| m.poll_timeout())
                .min();
            let next_packet = self.inflight.first_key_value().map(|((t, _), _)| *t);
            let next = match (next_timer, next_packet) {
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
                let (from, to, output) = entry.remove();
                let now = self.now;
                let Some(mesh) = self.nodes[to].as_mut() else {
                    continue;
                };
                let input = match output {
                    Output::Datagram { bytes, .. } => Input::Datagram {
                        from: name(from),
                        bytes,
                    },
                    Output::Message { bytes, .. } => Input::Message {
                        from: name(from),
                        bytes,
                    },
                    Output::Event(_) => continue,
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

    /// Runs until `done` holds, checking every 100 ms, for at most `limit`; returns the time.
    fn run_until_true(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Net) -> bool,
    ) -> Option<Time> {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return Some(self.now);
            }
            self.run_for(Duration::from_millis(100));
        }
        done(self).then_some(self.now)
    }

    fn state(&self, i: usize, of: usize) -> Option<MemberState> {
        self.mesh(i).member(&name(of)).map(|m| m.state)
    }

    fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.blocked.insert((x, y));
                self.blocked.insert((y, x));
            }
        }
    }

    fn events_about(&self, node: usize) -> Vec<(Time, usize, Event)> {
        let who = name(node);
        self.events
            .iter()
            .filter(|(_, _, e)| match e {
                Event::MemberAlive { node, .. }
                | Event::MemberSuspect { node, .. }
                | Event::MemberDead { node, .. }
                | Event::MemberLeft { node, .. } => *node == who,
                Event::StateChanged { .. } => false,
            })
            .cloned()
            .collect()
    }
}

fn is_dead(e: &Event) -> bool {
    matches!(e, Event::MemberDead { .. })
}

/// The member records a core keeps in its store.
fn stored(mesh: &Mesh<MemStore>) -> Vec<MemberRecord> {
    let rows = mesh.store().scan(Table::Members).unwrap();
    rows.iter()
        .map(|(_, v)| codec::decode_member(v).unwrap())
        .collect()
}

/// Members whose certificates a lone core holds from the start.
const KNOWN: usize = 300;

/// A lone core, for tests that feed it hand-made frames; it holds the certificates of n1 to
/// n300, as if it had met them, so their claims are checked at once.
fn lone(config: Config) -> Mesh<MemStore> {
    let mut mesh = bare(config);
    (1..=KNOWN).for_each(|i| know(&mut mesh, i));
    mesh
}

/// A lone core that holds no certificate but its own.
fn bare(config: Config) -> Mesh<MemStore> {
    Mesh::new(
        config,
        name(0),
        addr(0),
        MemStore::new(),
        signatures(0),
        7,
        Time::ZERO,
    )
    .unwrap()
}

fn gossip(updates: Vec<Update>) -> Vec<u8> {
    codec::encode_datagram(&Datagram {
        probe: Probe::Gossip,
        updates,
    })
}

/// Node `i`'s own Alive, signed.
fn alive(i: usize, incarnation: u64) -> Update {
    Update::Alive {
        name: name(i),
        addr: addr(i),
        incarnation,
        signature: signed(i, &claim::alive(&name(i), addr(i), incarnation)),
    }
}

/// Node `i`'s own Left, signed.
fn left(i: usize, incarnation: u64) -> Update {
    Update::Left {
        name: name(i),
        addr: addr(i),
        incarnation,
        signature: signed(i, &claim::left(&name(i), addr(i), incarnation)),
    }
}

/// A state record of node `owner`, signed by it.
fn state(
    owner: usize,
    key: &str,
    generation: u64,
    version: u64,
    value: Option<Vec<u8>>,
) -> StateRecord {
    let signature = signed(
        owner,
        &claim::state(&name(owner), key, generation, version, value.as_deref()),
    );
    StateRecord {
        owner: name(owner),
        key: key.into(),
        generation,
        version,
        value,
        signature,
    }
}

/// Node `i`'s member record in `state` at `incarnation`, with its own signature.
fn member(i: usize, incarnation: u64, state: MemberState) -> MemberRecord {
    let claim = if state == MemberState::Left {
        claim::left(&name(i), addr(i), incarnation)
    } else {
        claim::alive(&name(i), addr(i), incarnation)
    };
    MemberRecord {
        name: name(i),
        addr: addr(i),
        incarnation,
        state,
        signature: signed(i, &claim),
    }
}

/// Feeds `updates` from node `from` in as many gossip datagrams as they need: a datagram holds
/// about a dozen signed Alives.
fn feed_all(mesh: &mut Mesh<MemStore>, from: usize, updates: Vec<Update>, now: Time) {
    for chunk in updates.chunks(10) {
        feed(mesh, from, gossip(chunk.to_vec()), now);
    }
}

fn drain_all(mesh: &mut Mesh<MemStore>) -> Vec<Output> {
    std::iter::from_fn(|| mesh.poll_output()).collect()
}

fn feed(mesh: &mut Mesh<MemStore>, from: usize, bytes: Vec<u8>, now: Time) {
    mesh.handle(
        Input::Datagram {
            from: name(from),
            bytes,
        },
        now,
    )
    .unwrap();
}

#[test]
fn crashed_member_goes_suspect_then_dead_within_the_formula_bound() {
    // SWIM plus Lifeguard must notice a crash and tell everyone within
    // probe_interval * (suspicion_mult * log10 N + 3).
    let n = 10;
    let config = Config::lan();
    let mut net = Net::joined(n, config.clone());
    let crashed = 4;
    let t0 = net.now;
    net.crash(crashed);
    let bound = config
        .probe_interval
        .mul_f64(f64::from(config.suspicion_mult) * (n as f64).log10() + 3.0);
    let others: Vec<usize> = (0..n).filter(|&i| i != crashed).collect();
    let all_dead = net.run_until_true(bound * 2, |net| {
        others
            .iter()
            .all(|&i| net.state(i, crashed) == Some(MemberState::Dead))
    });
    let all_dead = all_dead.expect("crash never detected by everyone");
    assert!(
        all_dead.saturating_since(t0) <= bound,
        "took {:?}, bound {bound:?}",
        all_dead.saturating_since(t0)
    );
    let events = net.events_about(crashed);
    let first_suspect = events
        .iter()
        .find(|(_, _, e)| matches!(e, Event::MemberSuspect { .. }));
    let first_dead = events.iter().find(|(_, _, e)| is_dead(e));
    assert!(
        first_suspect.unwrap().0 < first_dead.unwrap().0,
        "suspect comes before dead"
    );
}

#[test]
fn probe_counters_count_pings_ping_reqs_and_new_suspicions() {
    // The counters operators graph: every node pings, a crash costs PingReqs and suspicions.
    let n = 5;
    let config = Config::lan();
    let mut net = Net::joined(n, config.clone());
    let before: Vec<Counters> = (0..n).map(|i| net.mesh(i).counters()).collect();
    net.crash(4);
    net.run_for(config.probe_interval * 20);
    let after: Vec<Counters> = (0..4).map(|i| net.mesh(i).counters()).collect();
    for (i, c) in after.iter().enumerate() {
        assert!(c.probes_sent > before[i].probes_sent, "n{i} sent no ping");
    }
    let ping_reqs: u64 = after.iter().map(|c| c.indirect_probes_sent).sum::<u64>()
        - before[..4]
            .iter()
            .map(|c| c.indirect_probes_sent)
            .sum::<u64>();
    let suspicions: u64 = after.iter().map(|c| c.suspicions).sum::<u64>()
        - before[..4].iter().map(|c| c.suspicions).sum::<u64>();
    assert!(ping_reqs >= 1, "a missed ack asks for indirect probes");
    assert!(
        (1..=4).contains(&suspicions),
        "each survivor suspects the crashed node at most once, got {suspicions}"
    );
}

#[test]
fn suspected_live_member_refutes_and_stays_alive() {
    // A member that was unreachable for a moment refutes the suspicion with a higher
    // incarnation and is never declared dead.
    let n = 3;
    let mut net = Net::joined(n, Config::lan());
    let victim = 2;
    let before = net.mesh(victim).incarnation();
    net.partition(&[victim], &[0, 1]);
    let suspected = net.run_until_true(Duration::from_secs(10), |net| {
        (0..2).any(|i| net.state(i, victim) == Some(MemberState::Suspect))
    });
    assert!(
        suspected.is_some(),
        "the unreachable member was never suspected"
    );
    net.blocked.clear();
    let healed = net.run_until_true(Duration::from_secs(30), |net| {
        (0..2).all(|i| {
            let m = net.mesh(i).member(&name(victim)).unwrap();
            m.state == MemberState::Alive && m.incarnation > before
        })
    });
    assert!(healed.is_some(), "the suspected member did not refute");
    assert!(net.mesh(victim).incarnation() > before);
    assert!(net.mesh(victim).counters().refutations >= 1);
    assert!(!net.events_about(victim).iter().any(|(_, _, e)| is_dead(e)));
}

#[test]
fn restarted_member_comes_back_with_a_higher_incarnation_and_is_alive() {
    // A crash and restart over the same store yields the same name with a higher incarnation,
    // which beats the tombstone every other node holds.
    let n = 3;
    let mut net = Net::joined(n, Config::lan());
    let node = 1;
    let before = net.mesh(node).incarnation();
    net.crash(node);
    let dead = net.run_until_true(Duration::from_secs(60), |net| {
        net.state(0, node) == Some(MemberState::Dead)
            && net.state(2, node) == Some(MemberState::Dead)
    });
    assert!(dead.is_some());
    net.start(node);
    let after = net.mesh(node).incarnation();
    assert!(after > before, "incarnation {after} is not above {before}");
    net.command(
        node,
        Command::Join {
            seeds: vec![addr(0)],
        },
    );
    let back = net.run_until_true(Duration::from_secs(10), |net| {
        [0, 2].iter().all(|&i| {
            let m = net.mesh(i).member(&name(node)).unwrap();
            m.state == MemberState::Alive && m.incarnation >= after
        })
    });
    assert!(back.is_some(), "the restarted member is not alive again");
}

#[test]
fn restarted_member_rejoins_from_stored_members_without_seeds() {
    // The last known members are persisted, so a restart needs no seed to find the mesh.
    let n = 3;
    let mut config = Config::lan();
    config.persist_interval = Duration::from_secs(1);
    let mut net = Net::joined(n, config);
    net.run_for(Duration::from_secs(2));
    let node = 2;
    net.crash(node);
    net.run_for(Duration::from_secs(1));
    net.start(node);
    let back = net.run_until_true(Duration::from_secs(10), |net| {
        net.mesh(node)
            .members()
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count()
            == n
            && net.state(0, node) == Some(MemberState::Alive)
    });
    assert!(back.is_some(), "no rejoin without seeds");
}

#[test]
fn left_is_not_dead() {
    // A graceful leave is reported as left everywhere and never turns into a death.
    let n = 4;
    let mut net = Net::joined(n, Config::lan());
    let leaver = 3;
    net.command(leaver, Command::Leave);
    assert!(net.mesh(leaver).has_left());
    let left = net.run_until_true(Duration::from_secs(5), |net| {
        (0..3).all(|i| net.state(i, leaver) == Some(MemberState::Left))
    });
    assert!(left.is_some(), "the leave did not spread");
    net.crash(leaver);
    net.run_for(Duration::from_secs(60));
    assert!((0..3).all(|i| net.state(i, leaver) == Some(MemberState::Left)));
    assert!(!net.events_about(leaver).iter().any(|(_, _, e)| is_dead(e)));
    assert!(matches!(
        net.nodes[0]
            .as_mut()
            .unwrap()
            .handle(Input::Command(Command::Leave), Time::ZERO),
        Ok(())
    ));
}

#[test]
fn a_leave_stores_the_members_known_at_once() {
    // A node stopped right after it joined must still find its mesh again after a restart.
    let n = 3;
    let config = Config {
        persist_interval: Duration::from_secs(3600),
        ..Config::lan()
    };
    let mut net = Net::joined(n, config);
    let leaver = 2;
    let stored = |net: &Net| net.mesh(leaver).store().scan(Table::Members).unwrap().len();
    assert_eq!(stored(&net), 0, "the periodic persist ran early");
    net.command(leaver, Command::Leave);
    assert_eq!(stored(&net), n - 1);
}

#[test]
fn an_expelled_member_is_dead_here_at_once_and_the_verdict_spreads() {
    // A node blocklisted everywhere leaves this node's view now, and the others hear of it by
    // gossip, long before their own probes would run a suspicion out. (Those that heard from
    // it within the evidence window would not believe it: the cut comes first.)
    let n = 4;
    let mut net = Net::joined(n, Config::lan());
    let expelled = 3;
    net.partition(&[0, 1, 2], &[expelled]);
    net.run_for(Duration::from_millis(3_100));
    net.command(
        0,
        Command::Expel {
            node: name(expelled),
        },
    );
    assert_eq!(net.state(0, expelled), Some(MemberState::Dead));
    assert_eq!(net.mesh(0).counters().deaths_declared, 1);
    let heard = net.run_until_true(Duration::from_millis(500), |net| {
        (1..3).all(|i| net.state(i, expelled) == Some(MemberState::Dead))
    });
    assert!(heard.is_some(), "the verdict did not spread");
    net.command(
        0,
        Command::Expel {
            node: "stranger".parse().unwrap(),
        },
    );
    assert_eq!(net.mesh(0).counters().deaths_declared, 1);
}

/// Node `source`'s claim that node `i` is suspect in its life `incarnation`, with `i`'s own
/// signature of that life.
fn suspect(i: usize, incarnation: u64, source: usize) -> Update {
    Update::Suspect {
        name: name(i),
        incarnation,
        source: name(source),
        life: Some(life(i, incarnation)),
    }
}

/// Node `source`'s claim that node `i` is dead in its life `incarnation`, likewise signed.
fn dead(i: usize, incarnation: u64, source: usize) -> Update {
    Update::Dead {
        name: name(i),
        incarnation,
        source: name(source),
        life: Some(life(i, incarnation)),
    }
}

/// `update`, an accusation, as a node sends it once the life it is about is no longer new.
fn without_life(update: Update) -> Update {
    match update {
        Update::Suspect {
            name,
            incarnation,
            source,
            ..
        } => Update::Suspect {
            name,
            incarnation,
            source,
            life: None,
        },
        Update::Dead {
            name,
            incarnation,
            source,
            ..
        } => Update::Dead {
            name,
            incarnation,
            source,
            life: None,
        },
        other => other,
    }
}

/// Node `i`'s own Alive in its life `incarnation`, as accusations carry it.
fn life(i: usize, incarnation: u64) -> codec::Life {
    codec::Life {
        addr: addr(i),
        signature: signed(i, &claim::alive(&name(i), addr(i), incarnation)),
    }
}

/// The datagrams among `outputs` that went to node `to`.
fn datagrams_to(outputs: &[Output], to: usize) -> Vec<Datagram> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Datagram { to: t, bytes } if t.addr == addr(to) => {
                codec::decode_datagram(bytes, 1 << 16).ok()
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_death_claim_about_a_member_heard_within_the_evidence_window_is_dropped_and_it_is_told() {
    // Node 1 spoke to us a second ago: a claim of its death is false here, whoever makes it.
    // We keep it alive, pass nothing on, and tell it once so it refutes; once it has been
    // silent longer than the window, the same claim lands.
    let mut mesh = lone(Config::lan());
    let t = Time::from_secs;
    feed(&mut mesh, 1, gossip(vec![alive(1, 5), alive(2, 5)]), t(1));
    feed(&mut mesh, 2, gossip(vec![]), t(1));
    drain_all(&mut mesh);
    feed(&mut mesh, 2, gossip(vec![dead(1, 5, 2)]), t(2));
    let state = |m: &Mesh<MemStore>| m.member(&name(1)).map(|m| m.state);
    assert_eq!(state(&mesh), Some(MemberState::Alive));
    assert_eq!(mesh.counters().accusations_dropped, 1);
    let told = datagrams_to(&drain_all(&mut mesh), 1);
    assert!(
        told.iter().any(|d| matches!(d.probe, Probe::Ping { .. })
            && d.updates.first() == Some(&without_life(dead(1, 5, 2)))),
        "the accused was not told: {told:?}"
    );
    assert!(
        mesh.broadcast_queue_len() <= 2,
        "the claim was queued onward"
    );
    // A second claim is dropped too, but the accused is not told twice.
    feed(&mut mesh, 2, gossip(vec![dead(1, 5, 2)]), t(2));
    let again = datagrams_to(&drain_all(&mut mesh), 1);
    assert!(
        !again
            .iter()
            .any(|d| d.updates.contains(&without_life(dead(1, 5, 2))))
    );
    assert_eq!(mesh.counters().accusations_dropped, 2);
    // Silent for longer than the window (three probe periods): the claim is believed.
    feed(
        &mut mesh,
        2,
        gossip(vec![dead(1, 5, 2)]),
        t(4) + Duration::from_millis(100),
    );
    assert_eq!(state(&mesh), Some(MemberState::Dead));
}

#[test]
fn a_suspicion_of_a_member_heard_within_the_last_period_is_told_to_it_once() {
    // Node 1 spoke to us half a second ago when node 2's suspicion of it arrives: we hold it
    // suspect, as SWIM says, but tell it at once in a Ping that carries the claim alone, so
    // it refutes even if no gossip about it reaches it. Node 3 was last heard two periods
    // ago, and may have crashed since: it is not told.
    let mut mesh = lone(Config::lan());
    let t = Time::from_millis;
    feed(
        &mut mesh,
        1,
        gossip(vec![alive(1, 5), alive(2, 5), alive(3, 5)]),
        t(0),
    );
    feed(&mut mesh, 3, gossip(vec![]), t(1_000));
    feed(&mut mesh, 1, gossip(vec![]), t(2_500));
    drain_all(&mut mesh);
    feed(
        &mut mesh,
        2,
        gossip(vec![suspect(1, 5, 2), suspect(3, 5, 2)]),
        t(3_000),
    );
    let state = |m: &Mesh<MemStore>, i| m.member(&name(i)).map(|m| m.state);
    assert_eq!(state(&mesh, 1), Some(MemberState::Suspect));
    assert_eq!(state(&mesh, 3), Some(MemberState::Suspect));
    let outputs = drain_all(&mut mesh);
    let told = datagrams_to(&outputs, 1);
    assert!(
        told.iter().any(|d| matches!(d.probe, Probe::Ping { .. })
            && d.updates == vec![without_life(suspect(1, 5, 2))]),
        "the accused was not told: {told:?}"
    );
    assert!(
        !datagrams_to(&outputs, 3)
            .iter()
            .any(|d| d.updates.contains(&without_life(suspect(3, 5, 2)))),
        "a member silent for two periods was told"
    );
    // A confirmation from another node: already told at this incarnation.
    feed(&mut mesh, 3, gossip(vec![suspect(1, 5, 3)]), t(3_100));
    let again = datagrams_to(&drain_all(&mut mesh), 1);
    assert!(
        !again
            .iter()
            .any(|d| matches!(d.probe, Probe::Ping { .. }) && d.updates.len() == 1),
        "the accused was told twice: {again:?}"
    );
}

#[test]
fn accusations_from_across_a_healed_cut_are_dropped_until_the_accused_could_refute() {
    // Node 3 was dead here (a cut) and just came back: what it says about node 2, whom we
    // held alive all along, may be from before the heal, whether it says it itself or
    // another node relays its claim. After `gossip_to_dead` it is believed again. A claim at
    // an incarnation above the one held here brings the accused's own signature of that
    // newer life, which this node takes; the claim itself is dropped like the others.
    let config = Config::lan();
    let mut mesh = lone(config.clone());
    let t = Time::from_secs;
    feed(
        &mut mesh,
        1,
        gossip(vec![alive(1, 5), alive(2, 5), alive(3, 5)]),
        t(0),
    );
    feed(&mut mesh, 1, gossip(vec![dead(3, 5, 1)]), t(10));
    feed(&mut mesh, 3, gossip(vec![alive(3, 6)]), t(20));
    let state = |m: &Mesh<MemStore>, i| m.member(&name(i)).map(|m| m.state);
    assert_eq!(state(&mesh, 3), Some(MemberState::Alive));
    feed(&mut mesh, 3, gossip(vec![dead(2, 5, 3)]), t(21));
    let relayed = suspect(2, 5, 3);
    feed(&mut mesh, 1, gossip(vec![relayed]), t(22));
    assert_eq!(state(&mesh, 2), Some(MemberState::Alive));
    assert_eq!(mesh.counters().accusations_dropped, 2);
    let newer = suspect(1, 6, 3);
    feed(&mut mesh, 3, gossip(vec![newer]), t(23));
    assert_eq!(state(&mesh, 1), Some(MemberState::Alive));
    assert_eq!(mesh.member(&name(1)).map(|m| m.incarnation), Some(6));
    assert_eq!(mesh.counters().accusations_dropped, 3);
    let later = t(20) + config.gossip_to_dead + Duration::from_secs(1);
    feed(&mut mesh, 3, gossip(vec![dead(2, 5, 3)]), later);
    assert_eq!(state(&mesh, 2), Some(MemberState::Dead));
}

#[test]
fn a_suspicion_waits_while_its_member_still_speaks_and_ends_when_it_falls_silent() {
    // Node 1 is suspected (its Acks do not reach us) yet its gossip does: it is up, so the
    // timeout tells it again and waits. When its frames stop, the suspicion runs out as soon
    // as the last one is older than the evidence window.
    let mut mesh = lone(Config::lan());
    let t = Time::from_secs;
    feed(&mut mesh, 1, gossip(vec![alive(1, 5), alive(2, 5)]), t(0));
    let suspect = suspect(1, 5, 2);
    feed(&mut mesh, 2, gossip(vec![suspect]), t(5));
    let state = |m: &Mesh<MemStore>| m.member(&name(1)).map(|m| m.state);
    assert_eq!(state(&mesh), Some(MemberState::Suspect));
    let mut told = 0;
    let mut now = t(5);
    // Longer than the longest suspicion (six times the minimum of four periods).
    while now < t(40) {
        now = now + Duration::from_millis(500);
        feed(&mut mesh, 1, gossip(vec![]), now);
        if let Some(due) = mesh.poll_timeout().filter(|d| *d <= now) {
            mesh.handle_timeout(due.max(now));
        }
        let outputs = drain_all(&mut mesh);
        told += datagrams_to(&outputs, 1)
            .iter()
            .filter(|d| matches!(d.updates.first(), Some(Update::Suspect { .. })))
            .count();
        assert_eq!(state(&mesh), Some(MemberState::Suspect), "at {now:?}");
    }
    assert!(told > 0, "the suspect was never told");
    let dead_at = loop {
        now = now + Duration::from_millis(500);
        mesh.handle_timeout(now);
        drain_all(&mut mesh);
        if state(&mesh) == Some(MemberState::Dead) {
            break now;
        }
        assert!(now < t(80), "the suspicion never ran out");
    };
    // Its last frame is evidence for the three periods of the window, then the verdict lands.
    assert!(
        dead_at > t(42),
        "dead at {dead_at:?}, within the evidence window"
    );
    assert!(dead_at <= t(44), "dead only at {dead_at:?}");
}

#[test]
fn gossip_sends_one_recently_dead_target_at_most_and_fills_fewer_datagrams_for_less_news() {
    // Half the members are recently dead (a cut): gossip still reaches the live half, with
    // at most one datagram a round to the dead. And a round whose news fits one datagram
    // sends one, not `gossip_fanout`.
    let config = Config::lan();
    let mut mesh = lone(config.clone());
    let t = Time::from_secs;
    let live: Vec<usize> = (1..=10).collect();
    let gone: Vec<usize> = (11..=20).collect();
    let all = live.iter().chain(&gone).map(|&i| alive(i, 1)).collect();
    feed_all(&mut mesh, 1, all, t(0));
    drain_all(&mut mesh);
    // A round a little later, with the queue full of the join's news.
    let mut now = t(0);
    for _ in 0..3 {
        now = now + config.gossip_interval;
        mesh.handle_timeout(now);
    }
    drain_all(&mut mesh);
    let deaths = gone.iter().map(|&i| dead(i, 1, 1)).collect();
    feed(&mut mesh, 1, gossip(deaths), t(5));
    drain_all(&mut mesh);
    let (mut rounds, mut to_live) = (0, 0);
    let mut per_round = BTreeMap::<Time, (usize, usize)>::new();
    now = t(5);
    while now < t(8) {
        now = now + Duration::from_millis(50);
        if mesh.poll_timeout().is_some_and(|d| d <= now) {
            mesh.handle_timeout(now);
        }
        for o in drain_all(&mut mesh) {
            let Output::Datagram { to, bytes } = &o else {
                continue;
            };
            let d = codec::decode_datagram(bytes, 1 << 16).unwrap();
            if d.probe != Probe::Gossip {
                continue;
            }
            let i = (1..=20).find(|&i| addr(i) == to.addr).unwrap();
            let slot = per_round.entry(now).or_default();
            if gone.contains(&i) {
                slot.0 += 1;
            } else {
                slot.1 += 1;
                to_live += 1;
            }
        }
    }
    for (at, (dead, live)) in &per_round {
        assert!(*dead <= 1, "{dead} dead targets in the round at {at:?}");
        assert!(dead + live <= config.gossip_fanout, "{per_round:?}");
        rounds += 1;
    }
    assert!(rounds > 0 && to_live > 0, "no gossip reached the living");
    // Ten Dead updates fit one datagram: the rounds on the tick send one each.
    let single = per_round.values().filter(|(d, l)| d + l == 1).count();
    assert!(single * 2 >= rounds, "rounds {per_round:?}");
}

/// Times at which `node` sent a Ping of its own (not a relayed one) to anyone, each once: a
/// probe tick that ends a failed probe also tells the newly suspected member, in a Ping of the
/// same instant.
fn ping_times(net: &Net, node: usize) -> Vec<Time> {
    net.log
        .iter()
        .filter(|s| s.from == node)
        .filter_map(|s| match &s.output {
            Output::Datagram { bytes, .. } => codec::decode_datagram(bytes, 1 << 16)
                .ok()
                .map(|d| (s.at, d)),
            _ => None,
        })
        .filter(|(_, d)| matches!(d.probe, Probe::Ping { .. }))
        .map(|(at, _)| at)
        .collect::<BTreeSet<Time>>()
        .into_iter()
        .collect()
}

#[test]
fn awareness_rises_when_nacks_are_missing_and_stretches_the_probe_interval() {
    // A node that hears nothing back (its inbound path is broken) blames itself, and probes
    // more slowly instead of accusing healthy members.
    let n = 5;
    let config = Config::lan();
    let mut net = Net::joined(n, config.clone());
    let sick = 0;
    assert_eq!(net.mesh(sick).local_health(), 0);
    for i in 1..n {
        net.blocked.insert((i, sick));
    }
    let start = net.now;
    net.run_for(Duration::from_secs(30));
    // Three missing Nacks per failed probe; the score stops at its bound, awareness_max - 1.
    let health = net.mesh(sick).local_health();
    assert_eq!(
        health,
        config.awareness_max - 1,
        "awareness did not reach its bound"
    );
    let pings: Vec<Time> = ping_times(&net, sick)
        .into_iter()
        .filter(|t| *t > start)
        .collect();
    let gaps: Vec<Duration> = pings
        .windows(2)
        .map(|w| w[1].saturating_since(w[0]))
        .collect();
    assert_eq!(gaps.first(), Some(&config.probe_interval), "{gaps:?}");
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
    assert!(
        gaps.contains(&(config.probe_interval * config.awareness_max)),
        "probe interval was not stretched to its bound: {gaps:?}"
    );
}

#[test]
fn nacks_from_healthy_intermediaries_keep_awareness_low() {
    // When a target is really gone, intermediaries answer Nack, so the prober does not blame
    // itself: Lifeguard only stretches the timers of the slow node.
    let n = 5;
    let mut net = Net::joined(n, Config::lan());
    net.crash(4);
    net.run_for(Duration::from_secs(20));
    for i in 0..4 {
        assert_eq!(net.mesh(i).local_health(), 0, "node {i}");
    }
}

#[test]
fn suspicion_timeout_shrinks_with_confirmations() {
    // Lifeguard: the first confirmations shorten the timeout the most, k of them reach the
    // minimum, and more never go below it.
    let min = Duration::from_secs(4);
    let max = Duration::from_secs(24);
    let timeouts: Vec<Duration> = (0..5).map(|c| suspicion_timeout(min, max, 3, c)).collect();
    assert_eq!(timeouts[0], max);
    assert!(timeouts.windows(2).all(|w| w[1] <= w[0]), "{timeouts:?}");
    assert!(timeouts[0] - timeouts[1] > timeouts[1] - timeouts[2]);
    assert_eq!(timeouts[3], min);
    assert_eq!(timeouts[4], min);
    assert_eq!(suspicion_timeout(min, max, 0, 0), min);
}

/// When a lone core with `n` known members declares n1 dead after hearing `confirmations`
/// independent suspicions at time 0.
fn time_to_dead(n: usize, confirmations: usize) -> Time {
    let mut mesh = lone(Config::lan());
    feed(
        &mut mesh,
        1,
        gossip((1..n).map(|i| alive(i, 1)).collect()),
        Time::ZERO,
    );
    let t0 = Time::from_secs(1);
    for source in 2..2 + confirmations + 1 {
        feed(&mut mesh, source, gossip(vec![suspect(1, 1, source)]), t0);
    }
    drain_all(&mut mesh);
    // Keep n1's silence from mattering: only the suspicion timer can kill it, and nothing
    // here answers probes, so step through timers until the death event.
    while let Some(at) = mesh.poll_timeout() {
        let now = at;
        mesh.handle_timeout(now);
        let dead = drain_all(&mut mesh)
            .into_iter()
            .any(|o| matches!(o, Output::Event(Event::MemberDead { node, .. }) if node == name(1)));
        if dead {
            return now;
        }
        assert!(now < Time::from_secs(600), "never declared dead");
    }
    unreachable!("timers never run out")
}

#[test]
fn confirmations_bring_the_declaration_of_death_forward() {
    // In a core with 10 members, a lone suspicion waits suspicion_max_mult times the minimum,
    // three confirmations only the minimum (4 s * log10 10).
    let alone = time_to_dead(10, 0).saturating_since(Time::from_secs(1));
    let confirmed = time_to_dead(10, 3).saturating_since(Time::from_secs(1));
    assert_eq!(confirmed, Duration::from_secs(4));
    assert_eq!(alone, Duration::from_secs(24));
}

#[test]
fn state_write_during_partition_reaches_the_other_side_after_heal() {
    // Anti-entropy and re-contact of seeds and dead members repair both membership and state
    // once a partition heals.
    let n = 4;
    let mut net = Net::joined(n, Config::lan());
    net.partition(&[0, 1], &[2, 3]);
    net.run_for(Duration::from_secs(5));
    net.command(
        0,
        Command::PutState {
            key: "pod/a".into(),
            value: b"running".to_vec(),
        },
    );
    net.command(
        3,
        Command::PutState {
            key: "pod/b".into(),
            value: b"idle".to_vec(),
        },
    );
    net.run_for(Duration::from_secs(60));
    assert_eq!(
        net.state(3, 0),
        Some(MemberState::Dead),
        "the partition was not noticed"
    );
    assert_eq!(net.mesh(3).state_of(&name(0)).count(), 0);
    net.blocked.clear();
    let healed = net.run_until_true(Duration::from_secs(120), |net| {
        (0..n).all(|i| {
            let m = net.mesh(i);
            m.members().iter().all(|m| m.state == MemberState::Alive)
                && m.state_of(&name(0)).eq([("pod/a", &b"running"[..])])
                && m.state_of(&name(3)).eq([("pod/b", &b"idle"[..])])
        })
    });
    assert!(healed.is_some(), "the partition never healed");
}

#[test]
fn state_spreads_by_gossip_and_deletion_leaves_a_tombstone() {
    // A write reaches every node fast through piggybacking, and a delete replaces it with a
    // tombstone rather than just vanishing.
    let n = 5;
    let mut net = Net::joined(n, Config::lan());
    net.command(
        2,
        Command::PutState {
            key: "pod/x".into(),
            value: vec![1, 2, 3],
        },
    );
    let spread = net.run_until_true(Duration::from_secs(3), |net| {
        (0..n).all(|i| net.mesh(i).state_of(&name(2)).count() == 1)
    });
    assert!(spread.is_some());
    net.command(
        2,
        Command::DeleteState {
            key: "pod/x".into(),
        },
    );
    let deleted = net.run_until_true(Duration::from_secs(3), |net| {
        (0..n).all(|i| {
            net.mesh(i)
                .entries()
                .any(|e| *e.owner == name(2) && e.key == "pod/x" && e.value.is_none())
        })
    });
    assert!(deleted.is_some());
}

#[test]
fn a_tombstone_is_collected_after_its_ttl() {
    // Deleted entries and dead members are kept for tombstone_ttl, then forgotten.
    let mut config = Config::lan();
    config.tombstone_ttl = Duration::from_secs(60);
    let n = 4;
    let mut net = Net::joined(n, config);
    net.command(
        1,
        Command::PutState {
            key: "k".into(),
            value: b"v".to_vec(),
        },
    );
    net.run_for(Duration::from_secs(3));
    net.command(1, Command::DeleteState { key: "k".into() });
    net.crash(3);
    net.run_for(Duration::from_secs(30));
    let has_tombstone = |net: &Net, i: usize| net.mesh(i).entries().any(|e| e.key == "k");
    assert!((0..3).all(|i| has_tombstone(&net, i)));
    assert!((0..3).all(|i| net.state(i, 3) == Some(MemberState::Dead)));
    net.run_for(Duration::from_secs(60));
    assert!(
        (0..3).all(|i| !has_tombstone(&net, i)),
        "state tombstone not collected"
    );
    assert!(
        (0..3).all(|i| net.state(i, 3).is_none()),
        "member tombstone not collected"
    );
    assert!(net.mesh(0).counters().tombstones_collected >= 2);
}

fn scripted_run(seed_offset: u64) -> Vec<Sent> {
    let mut net = Net::new(5, Config::lan());
    net.loss = 0.05;
    net.rng = ChaCha8Rng::seed_from_u64(99 + seed_offset);
    for i in 1..5 {
        net.command(
            i,
            Command::Join {
                seeds: vec![addr(0)],
            },
        );
    }
    net.run_for(Duration::from_secs(5));
    net.command(
        3,
        Command::PutState {
            key: "pod/a".into(),
            value: b"1".to_vec(),
        },
    );
    net.crash(2);
    net.run_for(Duration::from_secs(30));
    net.log
}

#[test]
fn same_seed_and_inputs_give_byte_identical_outputs() {
    // Determinism: replaying the same inputs with the same seeds reproduces every byte.
    let a = scripted_run(0);
    let b = scripted_run(0);
    assert!(a.len() > 100);
    assert_eq!(a, b);
    assert_ne!(
        a,
        scripted_run(1),
        "a different network seed should change something"
    );
}

#[test]
fn anti_entropy_steady_state_is_one_summary_per_interval_whatever_the_size() {
    // Once states agree, every stream message is a small summary: the cost does not grow with N.
    for n in [4, 16] {
        let mut net = Net::joined(n, Config::lan());
        net.run_for(Duration::from_secs(30));
        let from = net.log.len();
        net.run_for(Duration::from_secs(60));
        let messages: Vec<Message> = net.log[from..]
            .iter()
            .filter_map(|s| match &s.output {
                Output::Message { bytes, .. } => {
                    Some(codec::decode_message(bytes, 1 << 20).unwrap())
                }
                _ => None,
            })
            .collect();
        assert!(!messages.is_empty());
        assert!(
            messages
                .iter()
                .all(|m| matches!(m.body, Body::SyncSummary { .. })),
            "n={n}: {:?}",
            messages
                .iter()
                .find(|m| !matches!(m.body, Body::SyncSummary { .. }))
        );
        // Per node: one summary per sync interval, plus one to a seed per reconnect tick (which
        // comes at least every reconnect_interval / 2), whatever n is.
        let config = Config::lan();
        let window = 60.0;
        let sync_rounds = window / config.sync_interval.as_secs_f64();
        let reconnect_rounds = window / (config.reconnect_interval.as_secs_f64() / 2.0);
        let per_node = messages.len() as f64 / n as f64;
        assert!(
            per_node <= sync_rounds + reconnect_rounds + 1.0,
            "n={n}: {per_node} messages per node"
        );
    }
}

#[test]
fn bad_frames_are_counted_and_dropped() {
    // Garbage from the network changes nothing but a counter.
    let mut mesh = lone(Config::lan());
    drain_all(&mut mesh);
    feed(&mut mesh, 1, vec![0xff, 1, 2, 3], Time::ZERO);
    mesh.handle(
        Input::Message {
            from: name(1),
            bytes: vec![PROTOCOL_VERSION, 200],
        },
        Time::ZERO,
    )
    .unwrap();
    let oversized = vec![PROTOCOL_VERSION; mesh.config().datagram_size_max + 1];
    feed(&mut mesh, 1, oversized, Time::ZERO);
    assert_eq!(mesh.counters().bad_frames, 3);
    assert!(drain_all(&mut mesh).is_empty());
    assert_eq!(mesh.members().len(), 1);
}

#[test]
fn a_wake_up_with_nothing_due_does_nothing() {
    // Early or spurious timer wake-ups are harmless.
    let mut mesh = lone(Config::lan());
    mesh.handle_timeout(Time::ZERO);
    drain_all(&mut mesh);
    let next = mesh.poll_timeout().unwrap();
    mesh.handle_timeout(next - Duration::from_micros(1));
    assert!(drain_all(&mut mesh).is_empty());
    assert_eq!(mesh.poll_timeout(), Some(next));
}

#[test]
fn a_failed_incarnation_write_refuses_to_start() {
    // Running with an incarnation that may not be durable could make a restart a ghost.
    let mut store = MemStore::new();
    store.fail_next_writes(1);
    let result = Mesh::new(
        Config::lan(),
        name(0),
        addr(0),
        store,
        signatures(0),
        1,
        Time::ZERO,
    );
    assert!(matches!(result, Err(Error::Store(_))));
}

#[test]
fn members_max_bounds_the_member_table() {
    // News of more members than members_max is dropped and counted.
    let config = Config {
        members_max: 3,
        ..Config::lan()
    };
    let mut mesh = lone(config);
    feed(
        &mut mesh,
        1,
        gossip((1..=5).map(|i| alive(i, 1)).collect()),
        Time::ZERO,
    );
    assert_eq!(mesh.members().len(), 4);
    assert_eq!(mesh.counters().members_dropped, 2);
}

#[test]
fn broadcast_queue_max_evicts_the_most_sent_update() {
    // The piggyback queue never exceeds its bound.
    let config = Config {
        broadcast_queue_max: 4,
        ..Config::lan()
    };
    let mut mesh = lone(config);
    feed(
        &mut mesh,
        1,
        gossip((1..=10).map(|i| alive(i, 1)).collect()),
        Time::ZERO,
    );
    assert_eq!(mesh.broadcast_queue_len(), 4);
    assert_eq!(mesh.counters().broadcasts_evicted, 6);
}

#[test]
fn indirect_pending_max_bounds_relayed_probes() {
    // A flood of PingReqs cannot make this node run unbounded indirect probes.
    let config = Config {
        indirect_pending_max: 2,
        ..Config::lan()
    };
    let mut mesh = lone(config);
    for seq in 0..3 {
        let probe = Probe::PingReq {
            seq,
            addr: addr(1),
            target: name(2),
            target_addr: addr(2),
        };
        let bytes = codec::encode_datagram(&Datagram {
            probe,
            updates: Vec::new(),
        });
        feed(&mut mesh, 1, bytes, Time::ZERO);
    }
    assert_eq!(mesh.counters().ping_reqs_dropped, 1);
    // The two accepted ones end in a Nack each when the target stays silent.
    drain_all(&mut mesh);
    mesh.handle_timeout(Time::from_secs(1));
    let nacks = drain_all(&mut mesh)
        .into_iter()
        .filter_map(|o| match o {
            Output::Datagram { bytes, .. } => codec::decode_datagram(&bytes, 1200).ok(),
            _ => None,
        })
        .filter(|d| matches!(d.probe, Probe::Nack { .. }))
        .count();
    assert_eq!(nacks, 2);
}

#[test]
fn output_queue_max_drops_and_counts_when_the_driver_does_not_drain() {
    // A driver that never drains cannot make the core grow without bound.
    let config = Config {
        output_queue_max: 4,
        ..Config::lan()
    };
    let mut mesh = lone(config);
    feed(
        &mut mesh,
        1,
        gossip((1..=10).map(|i| alive(i, 1)).collect()),
        Time::ZERO,
    );
    assert!(mesh.counters().outputs_dropped >= 6);
    assert_eq!(drain_all(&mut mesh).len(), 4);
}

#[test]
fn seeds_max_bounds_the_remembered_seeds() {
    // Only seeds_max seeds are remembered for re-contact.
    let config = Config {
        seeds_max: 2,
        ..Config::lan()
    };
    let mut mesh = lone(config);
    let seeds = (1..=5).map(addr).collect();
    mesh.handle(Input::Command(Command::Join { seeds }), Time::ZERO)
        .unwrap();
    assert_eq!(mesh.counters().seeds_dropped, 3);
}

#[test]
fn local_state_bounds_are_enforced() {
    // Keys, values and the number of keys all have bounds the owner cannot exceed.
    let config = Config {
        state_keys_max: 2,
        state_key_size_max: 8,
        state_value_size_max: 16,
        ..Config::lan()
    };
    let mut mesh = lone(config);
    let mut put = |key: &str, len: usize| {
        let command = Command::PutState {
            key: key.to_owned(),
            value: vec![0; len],
        };
        mesh.handle(Input::Command(command), Time::ZERO)
    };
    assert!(put("a", 16).is_ok());
    assert!(matches!(
        put("b", 17),
        Err(Error::StateValue { len: 17, max: 16 })
    ));
    assert!(matches!(put("", 1), Err(Error::StateKey { .. })));
    assert!(matches!(
        put("123456789", 1),
        Err(Error::StateKey { len: 9, max: 8 })
    ));
    assert!(put("b", 1).is_ok());
    assert!(matches!(put("c", 1), Err(Error::StateFull { max: 2 })));
    assert!(
        put("a", 2).is_ok(),
        "overwriting an existing key is fine when full"
    );
}

#[test]
fn state_keys_max_bounds_what_is_accepted_from_others() {
    // A remote owner cannot push more than state_keys_max entries into this node.
    let config = Config {
        state_keys_max: 2,
        ..Config::lan()
    };
    let mut mesh = lone(config);
    let mut updates = vec![alive(1, 1)];
    for v in 1..=4 {
        updates.push(Update::State(Box::new(state(
            1,
            &format!("k{v}"),
            1,
            v,
            Some(vec![1]),
        ))));
    }
    feed(&mut mesh, 1, gossip(updates), Time::ZERO);
    assert_eq!(mesh.state_of(&name(1)).count(), 2);
    assert_eq!(mesh.counters().state_dropped, 2);
}

#[test]
fn datagrams_never_exceed_datagram_size_max() {
    // Piggybacking fills datagrams up to the budget and spreads the rest over later ones.
    let mut mesh = lone(Config::lan());
    feed_all(
        &mut mesh,
        1,
        (1..=30).map(|i| alive(i, 1)).collect(),
        Time::ZERO,
    );
    for i in 0..40 {
        let command = Command::PutState {
            key: format!("pod/{i}"),
            value: vec![7; 100],
        };
        mesh.handle(Input::Command(command), Time::ZERO).unwrap();
    }
    drain_all(&mut mesh);
    let mut sizes = Vec::new();
    let mut now = Time::ZERO;
    for _ in 0..20 {
        now = now + Duration::from_millis(200);
        mesh.handle_timeout(now);
        for output in drain_all(&mut mesh) {
            if let Output::Datagram { bytes, .. } = output {
                assert!(codec::decode_datagram(&bytes, 1200).is_ok());
                sizes.push(bytes.len());
            }
        }
    }
    let max = mesh.config().datagram_size_max;
    assert!(sizes.iter().all(|s| *s <= max), "{sizes:?}");
    assert!(
        sizes.iter().any(|s| *s > max - 150),
        "datagrams are not filled: {sizes:?}"
    );
}

#[test]
fn message_size_max_truncates_a_push_pull() {
    // A join push/pull larger than message_size_max is cut to fit; anti-entropy does the rest.
    let config = Config {
        message_size_max: 2048,
        state_value_size_max: 1024,
        ..Config::lan()
    };
    let mut mesh = lone(config);
    feed_all(
        &mut mesh,
        1,
        (1..=200).map(|i| alive(i, 1)).collect(),
        Time::ZERO,
    );
    assert_eq!(mesh.members().len(), 201);
    drain_all(&mut mesh);
    mesh.handle(
        Input::Command(Command::Join {
            seeds: vec![addr(999)],
        }),
        Time::ZERO,
    )
    .unwrap();
    let sizes: Vec<usize> = drain_all(&mut mesh)
        .into_iter()
        .filter_map(|o| match o {
            Output::Message { bytes, .. } => Some(bytes.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes.len(), 1);
    assert!(sizes[0] <= 2048);
    assert_eq!(mesh.counters().messages_truncated, 1);
}

#[test]
fn a_stale_entry_of_a_previous_life_is_buried_by_its_owner() {
    // After a restart, keys the new life did not write again are deleted by the owner itself.
    let mut mesh = lone(Config::lan());
    let stale = state(0, "pod/old", 0, 9, Some(b"x".to_vec()));
    feed(
        &mut mesh,
        1,
        gossip(vec![alive(1, 1), Update::State(Box::new(stale))]),
        Time::ZERO,
    );
    let entry = mesh
        .entries()
        .find(|e| e.key == "pod/old")
        .map(|e| (e.generation, e.value.is_none()));
    assert_eq!(entry, Some((mesh.incarnation(), true)));
}

#[test]
fn rejoin_fanout_bounds_the_contacts_of_a_restart_without_seeds() {
    // A restarted node with many stored members contacts only rejoin_fanout of them.
    let mut store = MemStore::new();
    let mut batch = WriteBatch::new();
    for i in 1..=10 {
        let record = member(i, 1, MemberState::Alive);
        batch.put(
            Table::Members,
            name(i).as_str(),
            codec::encode_member(&record),
        );
    }
    batch.put(Table::Members, "garbage", vec![0xff]);
    store.write(batch).unwrap();
    let mut mesh = Mesh::new(
        Config::lan(),
        name(0),
        addr(0),
        store,
        signatures(0),
        3,
        Time::ZERO,
    )
    .unwrap();
    assert_eq!(mesh.counters().store_corrupt_records, 1);
    mesh.handle_timeout(Time::ZERO);
    let push_pulls: Vec<Target> = drain_all(&mut mesh)
        .into_iter()
        .filter_map(|o| match o {
            Output::Message { to, bytes } => {
                let message = codec::decode_message(&bytes, 1 << 20).unwrap();
                matches!(message.body, Body::PushPull { reply: true, .. }).then_some(to)
            }
            _ => None,
        })
        .collect();
    assert_eq!(push_pulls.len(), mesh.config().rejoin_fanout);
    assert!(push_pulls.iter().all(|t| t.name.is_some()));
}

#[test]
fn a_sync_delta_covers_only_the_buckets_that_fit_message_size_max() {
    // Anti-entropy deltas respect message_size_max by sending whole buckets that fit and
    // naming only those, so the rest is repaired in later rounds.
    let config = Config {
        message_size_max: 2048,
        state_value_size_max: 1024,
        ..Config::lan()
    };
    let buckets = usize::from(config.sync_buckets);
    let mut mesh = lone(config);
    feed_all(
        &mut mesh,
        1,
        (1..=300).map(|i| alive(i, 1)).collect(),
        Time::ZERO,
    );
    drain_all(&mut mesh);
    let ask = |hashes: Vec<u64>| Message {
        addr: addr(1),
        body: Body::SyncBuckets { hashes },
    };
    let bytes = codec::encode_message(&ask(vec![0; buckets - 1]));
    mesh.handle(
        Input::Message {
            from: name(1),
            bytes,
        },
        Time::ZERO,
    )
    .unwrap();
    assert_eq!(
        mesh.counters().bad_frames,
        1,
        "a digest of the wrong size is a bad frame"
    );
    let bytes = codec::encode_message(&ask(vec![0; buckets]));
    mesh.handle(
        Input::Message {
            from: name(1),
            bytes,
        },
        Time::ZERO,
    )
    .unwrap();
    let replies: Vec<Vec<u8>> = drain_all(&mut mesh)
        .into_iter()
        .filter_map(|o| match o {
            Output::Message { bytes, .. } => Some(bytes),
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 1);
    assert!(replies[0].len() <= 2048);
    let Body::SyncDelta {
        reply,
        buckets: covered,
        members,
        ..
    } = codec::decode_message(&replies[0], 2048).unwrap().body
    else {
        panic!("expected a delta");
    };
    assert!(reply);
    assert!(
        !covered.is_empty() && covered.len() < buckets,
        "{} buckets",
        covered.len()
    );
    assert!(
        members
            .iter()
            .all(|m| covered.contains(&mesh.bucket_of(&m.name)))
    );
    assert_eq!(mesh.counters().messages_truncated, 1);
}

#[test]
fn a_failed_member_write_is_retried_at_the_next_persist_tick() {
    // A store failure loses nothing: the member list stays dirty until a write succeeds.
    let config = Config {
        persist_interval: Duration::from_secs(1),
        ..Config::lan()
    };
    let mut mesh = lone(config);
    feed(
        &mut mesh,
        1,
        gossip((1..=3).map(|i| alive(i, 1)).collect()),
        Time::ZERO,
    );
    mesh.store_mut().fail_next_writes(1);
    mesh.handle_timeout(Time::from_secs(1));
    assert_eq!(mesh.counters().store_write_failures, 1);
    assert!(mesh.store().scan(Table::Members).unwrap().is_empty());
    mesh.handle_timeout(Time::from_secs(2));
    assert_eq!(mesh.store().scan(Table::Members).unwrap().len(), 3);
}

#[test]
fn the_store_keeps_a_bounded_sample_of_live_members_and_refills_it() {
    // However many members are known, at most members_persisted_max are stored; news about
    // members outside the sample writes nothing, a sampled member that dies is replaced by a
    // live one, and a sampled member's new incarnation is rewritten.
    let config = Config {
        persist_interval: Duration::from_secs(1),
        rejoin_fanout: 2,
        members_persisted_max: 3,
        ..Config::lan()
    };
    let mut mesh = lone(config);
    feed(
        &mut mesh,
        1,
        gossip((1..=8).map(|i| alive(i, 1)).collect()),
        Time::ZERO,
    );
    mesh.handle_timeout(Time::from_secs(1));
    let mut first = stored(&mesh);
    assert_eq!(first.len(), 3);
    // Node 1 brings all the news, so a claim of its death is false here (the evidence
    // window): the victim below is another member.
    first.sort_by_key(|r| r.name == name(1));

    let writes = mesh.store().writes();
    feed_all(
        &mut mesh,
        1,
        (9..=20).map(|i| alive(i, 1)).collect(),
        Time::from_secs(1),
    );
    mesh.handle_timeout(Time::from_secs(2));
    assert_eq!(
        mesh.store().writes(),
        writes,
        "new members outside the sample"
    );

    let victim = first[0].name.clone();
    let index = |n: &NodeName| n.as_str()[1..].parse::<usize>().unwrap();
    let witness = (1..=8)
        .find(|&i| first.iter().all(|r| r.name != name(i)))
        .unwrap();
    let verdict = dead(index(&victim), 1, witness);
    feed(&mut mesh, 1, gossip(vec![verdict]), Time::from_secs(2));
    mesh.handle_timeout(Time::from_secs(3));
    let second = stored(&mesh);
    let names: Vec<&NodeName> = second.iter().map(|r| &r.name).collect();
    assert_eq!(second.len(), 3);
    assert!(!names.contains(&&victim), "a dead member stays stored");
    assert!(first[1..].iter().all(|r| names.contains(&&r.name)));

    let refuter = first[1].name.clone();
    let index: usize = refuter.as_str()[1..].parse().unwrap();
    feed(
        &mut mesh,
        1,
        gossip(vec![alive(index, 5)]),
        Time::from_secs(3),
    );
    mesh.handle_timeout(Time::from_secs(4));
    let third = stored(&mesh);
    let record = third.iter().find(|r| r.name == refuter).unwrap();
    assert_eq!(record.incarnation, 5);
    assert_eq!(third.len(), 3);
}

#[test]
fn a_member_that_left_stays_stored_until_its_tombstone_is_collected() {
    // A graceful leave keeps the member as a way back in after a restart; collection ends it.
    let config = Config {
        persist_interval: Duration::from_secs(1),
        rejoin_fanout: 2,
        members_persisted_max: 3,
        ..Config::lan()
    };
    let ttl = config.tombstone_ttl;
    let mut mesh = lone(config);
    feed(
        &mut mesh,
        1,
        gossip((1..=3).map(|i| alive(i, 1)).collect()),
        Time::ZERO,
    );
    mesh.handle_timeout(Time::from_secs(1));
    assert_eq!(stored(&mesh).len(), 3);

    feed(&mut mesh, 1, gossip(vec![left(2, 1)]), Time::from_secs(1));
    mesh.handle_timeout(Time::from_secs(2));
    let after_leave = stored(&mesh);
    let record = after_leave.iter().find(|r| r.name == name(2));
    assert_eq!(
        record.map(|r| r.state),
        Some(MemberState::Left),
        "a member that left is dropped from the stored sample"
    );

    let collected = Time::from_secs(2) + ttl * 2;
    mesh.handle_timeout(collected);
    mesh.handle_timeout(collected + Duration::from_secs(1));
    assert!(
        stored(&mesh).iter().all(|r| r.name != name(2)),
        "a collected tombstone stays stored"
    );
}

#[test]
fn a_refutation_is_persisted_so_a_restart_starts_above_it() {
    // An incarnation raised by refuting is written through, so the next life starts higher.
    // The news is this node's own Alive from a life it has no record of (a lost disk).
    let mut mesh = lone(Config::lan());
    let start = mesh.incarnation();
    feed(
        &mut mesh,
        1,
        gossip(vec![alive(1, 1), alive(0, start + 4)]),
        Time::from_secs(3),
    );
    assert_eq!(mesh.incarnation(), start + 5);
    assert_eq!(mesh.members()[0].changed_at, Time::from_secs(3));
    let store = mesh.into_store();
    let again = Mesh::new(
        Config::lan(),
        name(0),
        addr(0),
        store,
        signatures(0),
        7,
        Time::ZERO,
    )
    .unwrap();
    assert_eq!(again.incarnation(), start + 6);
}

#[test]
fn a_node_that_lost_its_store_does_not_reuse_an_earlier_incarnation() {
    // Fresh stores start at random points: a node whose disk was lost must not issue the
    // request ids (node, incarnation, seq) of its earlier life again.
    let first = Mesh::new(
        Config::lan(),
        name(0),
        addr(0),
        MemStore::new(),
        signatures(0),
        1,
        Time::ZERO,
    )
    .unwrap();
    let again = Mesh::new(
        Config::lan(),
        name(0),
        addr(0),
        MemStore::new(),
        signatures(0),
        2,
        Time::ZERO,
    )
    .unwrap();
    assert_ne!(first.incarnation(), again.incarnation());
    assert!(first.incarnation() >= 1 && again.incarnation() >= 1);
}

mod claims;

mod fuzz {
    //! Structured fuzzing of the core: well-formed but arbitrary frames from a handful of
    //! members, in arbitrary order, must never panic it or break its invariants.

    use proptest::prelude::*;

    use super::*;

    fn small_name() -> impl Strategy<Value = NodeName> {
        (0..5usize).prop_map(name)
    }

    fn member_state() -> impl Strategy<Value = MemberState> {
        prop_oneof![
            Just(MemberState::Alive),
            Just(MemberState::Suspect),
            Just(MemberState::Dead),
            Just(MemberState::Left),
        ]
    }

    /// Who signs a claim of node `subject`: itself, or (a forgery) node `signer`.
    fn by(subject: usize, forged: Option<usize>) -> usize {
        forged.unwrap_or(subject)
    }

    fn record() -> impl Strategy<Value = StateRecord> {
        (
            0..5usize,
            "[a-c]{0,3}",
            0..4u64,
            0..6u64,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            proptest::option::of(0..6usize),
        )
            .prop_map(|(owner, key, generation, version, value, forged)| {
                let mut record = state(owner, &key, generation, version, value);
                let claim = record.claim();
                record.signature = signed(by(owner, forged), &claim);
                record
            })
    }

    fn update() -> impl Strategy<Value = Update> {
        prop_oneof![
            (0..5usize, 0..8u64).prop_map(|(i, inc)| alive(i, inc)),
            (
                0..5usize,
                0..8u64,
                0..5usize,
                proptest::option::of(0..6usize),
                any::<bool>()
            )
                .prop_map(|(i, incarnation, source, forged, is_dead)| {
                    let mut update = if is_dead {
                        dead(i, incarnation, source)
                    } else {
                        suspect(i, incarnation, source)
                    };
                    if let (
                        Some(forger),
                        Update::Suspect {
                            life: Some(life), ..
                        }
                        | Update::Dead {
                            life: Some(life), ..
                        },
                    ) = (forged, &mut update)
                    {
                        life.signature =
                            signed(forger, &claim::alive(&name(i), addr(i), incarnation));
                    }
                    update
                }),
            (0..5usize, 0..8u64, proptest::option::of(0..6usize)).prop_map(
                |(i, incarnation, forged)| {
                    let signature =
                        signed(by(i, forged), &claim::left(&name(i), addr(i), incarnation));
                    Update::Left {
                        name: name(i),
                        addr: addr(i),
                        incarnation,
                        signature,
                    }
                }
            ),
            (0..5usize, 0..8u64, 0..6usize).prop_map(|(i, incarnation, forger)| {
                // An Alive at the forger's address, signed by the forger.
                let signature = signed(forger, &claim::alive(&name(i), addr(forger), incarnation));
                Update::Alive {
                    name: name(i),
                    addr: addr(forger),
                    incarnation,
                    signature,
                }
            }),
            record().prop_map(|r| Update::State(Box::new(r))),
        ]
    }

    fn probe() -> impl Strategy<Value = Probe> {
        prop_oneof![
            Just(Probe::Gossip),
            (0..8u32).prop_map(|seq| Probe::Ping { seq, addr: addr(1) }),
            (0..8u32).prop_map(|seq| Probe::Ack { seq }),
            (0..8u32, 0..5usize).prop_map(|(seq, t)| Probe::PingReq {
                seq,
                addr: addr(1),
                target: name(t),
                target_addr: addr(t),
            }),
            (0..8u32).prop_map(|seq| Probe::Nack { seq }),
        ]
    }

    fn body() -> impl Strategy<Value = Body> {
        let members = || {
            proptest::collection::vec(
                (
                    0..5usize,
                    0..8u64,
                    member_state(),
                    proptest::option::of(0..6usize),
                )
                    .prop_map(|(i, incarnation, state, forged)| {
                        let mut record = member(i, incarnation, state);
                        let claim = record.claim();
                        record.signature = signed(by(i, forged), &claim);
                        record
                    }),
                0..5,
            )
        };
        let entries = || proptest::collection::vec(record(), 0..5);
        prop_oneof![
            (
                any::<bool>(),
                members(),
                entries(),
                proptest::collection::vec(0..45usize, 0..3)
            )
                .prop_map(|(reply, members, entries, known)| Body::PushPull {
                    reply,
                    members,
                    entries,
                    certificates: known.into_iter().map(certificate).collect(),
                }),
            proptest::collection::vec(small_name(), 0..4)
                .prop_map(|names| Body::CertificatesWanted { names }),
            proptest::collection::vec(0..45usize, 0..3).prop_map(|known| Body::Certificates {
                certificates: known.into_iter().map(certificate).collect(),
            }),
            any::<u64>().prop_map(|hash| Body::SyncSummary { hash }),
            proptest::collection::vec(any::<u64>(), 64..=64)
                .prop_map(|hashes| Body::SyncBuckets { hashes }),
            (
                any::<bool>(),
                proptest::collection::vec(0..64u16, 0..4),
                members(),
                entries()
            )
                .prop_map(|(reply, buckets, members, entries)| Body::SyncDelta {
                    reply,
                    buckets,
                    members,
                    entries,
                }),
        ]
    }

    #[derive(Debug, Clone)]
    enum Step {
        Datagram(usize, Datagram),
        Message(usize, Body),
        Put(String),
        Delete(String),
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (1..5usize, probe(), proptest::collection::vec(update(), 0..4))
                .prop_map(|(from, probe, updates)| Step::Datagram(from, Datagram { probe, updates })),
            2 => (1..5usize, body()).prop_map(|(from, body)| Step::Message(from, body)),
            1 => "[a-c]{1,2}".prop_map(Step::Put),
            1 => "[a-c]{1,2}".prop_map(Step::Delete),
            2 => (0..40_000_000u64).prop_map(Step::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_frames_keep_the_core_sane(steps in proptest::collection::vec(step(), 1..40)) {
            // The invariants of DESIGN section 8 that one node can check alone: no panic, the
            // incarnation never decreases, the node never lists itself as anything but alive,
            // and every output respects its size bound.
            let config = Config::lan();
            let mut mesh = lone(config.clone());
            let mut now = Time::ZERO;
            let mut incarnation = mesh.incarnation();
            for step in steps {
                match step {
                    Step::Datagram(from, datagram) => {
                        feed(&mut mesh, from, codec::encode_datagram(&datagram), now);
                    }
                    Step::Message(from, body) => {
                        let bytes = codec::encode_message(&Message { addr: addr(from), body });
                        mesh.handle(Input::Message { from: name(from), bytes }, now).unwrap();
                    }
                    Step::Put(key) => {
                        let put = Command::PutState { key, value: vec![1] };
                        mesh.handle(Input::Command(put), now).unwrap();
                    }
                    Step::Delete(key) => {
                        mesh.handle(Input::Command(Command::DeleteState { key }), now).unwrap();
                    }
                    Step::Wait(micros) => {
                        now = now + Duration::from_micros(micros);
                        mesh.handle_timeout(now);
                    }
                }
                prop_assert_eq!(mesh.digest(), mesh.digest_recomputed());
                prop_assert!(mesh.incarnation() >= incarnation);
                incarnation = mesh.incarnation();
                let me = mesh.members().into_iter().find(|m| m.name == name(0)).unwrap();
                prop_assert_eq!(me.state, MemberState::Alive);
                prop_assert!(mesh.member(&name(0)).is_none());
                for output in drain_all(&mut mesh) {
                    match output {
                        Output::Datagram { bytes, .. } => {
                            prop_assert!(bytes.len() <= config.datagram_size_max);
                            prop_assert!(codec::decode_datagram(&bytes, config.datagram_size_max).is_ok());
                        }
                        Output::Message { bytes, .. } => {
                            prop_assert!(bytes.len() <= config.message_size_max);
                            prop_assert!(codec::decode_message(&bytes, config.message_size_max).is_ok());
                        }
                        Output::Event(Event::MemberDead { node, .. }) => prop_assert_ne!(node, name(0)),
                        Output::Event(_) => {}
                    }
                }
            }
        }
    }
}

#[test]
fn the_incremental_digest_matches_a_full_recomputation() {
    // Every change keeps the maintained digest equal to one computed from scratch, through
    // joins, writes, deletes, deaths, refutations and collection.
    let mut config = Config::lan();
    config.tombstone_ttl = Duration::from_secs(40);
    let n = 5;
    let mut net = Net::joined(n, config);
    net.command(
        1,
        Command::PutState {
            key: "a".into(),
            value: vec![1],
        },
    );
    net.command(
        2,
        Command::PutState {
            key: "b".into(),
            value: vec![2],
        },
    );
    net.run_for(Duration::from_secs(2));
    net.command(1, Command::DeleteState { key: "a".into() });
    net.crash(4);
    for _ in 0..12 {
        net.run_for(Duration::from_secs(5));
        for i in 0..4 {
            assert_eq!(
                net.mesh(i).digest(),
                net.mesh(i).digest_recomputed(),
                "node {i}"
            );
        }
    }
    assert!(
        net.mesh(0).member(&name(4)).is_none(),
        "the dead member should be collected by now"
    );
}

#[test]
fn stored_members_follow_churn_and_replace_the_previous_life_once_connected() {
    // The store keeps the previous life's members while they are the only way back in, then
    // holds exactly the live members: the previous life's records go, corrupt ones too.
    let config = Config {
        persist_interval: Duration::from_secs(1),
        ..Config::lan()
    };
    let mut store = MemStore::new();
    let mut batch = WriteBatch::new();
    let old = member(9, 1, MemberState::Alive);
    batch.put(Table::Members, name(9).as_str(), codec::encode_member(&old));
    batch.put(Table::Members, "garbage", vec![0xff]);
    store.write(batch).unwrap();
    let mut mesh = Mesh::new(
        config,
        name(0),
        addr(0),
        store,
        signatures(0),
        1,
        Time::ZERO,
    )
    .unwrap();
    let stored = |mesh: &Mesh<MemStore>| -> Vec<Vec<u8>> {
        mesh.store()
            .scan(Table::Members)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    mesh.handle_timeout(Time::from_secs(1));
    assert_eq!(
        stored(&mesh),
        vec![b"garbage".to_vec(), b"n9".to_vec()],
        "alone: keep the way back in"
    );
    know(&mut mesh, 1);
    know(&mut mesh, 2);
    feed(
        &mut mesh,
        1,
        gossip(vec![alive(1, 1), alive(2, 1)]),
        Time::from_secs(1),
    );
    mesh.handle_timeout(Time::from_secs(2));
    assert_eq!(stored(&mesh), vec![b"n1".to_vec(), b"n2".to_vec()]);
    feed(
        &mut mesh,
        1,
        gossip(vec![dead(2, 1, 1)]),
        Time::from_secs(2),
    );
    mesh.handle_timeout(Time::from_secs(3));
    assert_eq!(stored(&mesh), vec![b"n1".to_vec()]);
}

#[test]
fn a_drained_output_queue_gives_back_the_room_of_a_burst() {
    let mut mesh = lone(Config::default());
    drain_all(&mut mesh);
    for batch in 0..10 {
        let updates = (1..=20).map(|i| alive(batch * 20 + i, 1)).collect();
        feed_all(&mut mesh, 1, updates, Time::ZERO);
    }
    assert!(mesh.outputs.capacity() >= 200, "the burst was queued");
    let events = drain_all(&mut mesh)
        .into_iter()
        .filter(|o| matches!(o, Output::Event(Event::MemberAlive { .. })))
        .count();
    assert_eq!(events, 200);
    assert!(mesh.outputs.capacity() <= OUTPUTS_KEPT);
}

fn record_of(owner: usize, key: &str) -> StateRecord {
    state(owner, key, 1, 1, Some(vec![7]))
}

/// Keys of the state updates a node's datagrams carry in `log`.
fn piggybacked_keys(log: &[Sent], from: usize) -> BTreeSet<String> {
    log.iter()
        .filter(|s| s.from == from)
        .filter_map(|s| match &s.output {
            Output::Datagram { bytes, .. } => codec::decode_datagram(bytes, 1 << 20).ok(),
            _ => None,
        })
        .flat_map(|d| d.updates)
        .filter_map(|u| match u {
            Update::State(record) => Some(record.key),
            _ => None,
        })
        .collect()
}

#[test]
fn a_record_from_a_stream_exchange_is_applied_but_not_piggybacked_onward() {
    // A rumour goes on; what a push/pull brought is the repair path, and is not re-gossiped.
    let mut mesh = lone(Config::lan());
    feed(&mut mesh, 1, gossip(vec![alive(1, 1)]), Time::ZERO);
    let queued = mesh.queue.len();
    let push_pull = codec::encode_message(&Message {
        addr: addr(1),
        body: Body::PushPull {
            reply: false,
            members: Vec::new(),
            entries: vec![record_of(1, "pod/streamed")],
            certificates: Vec::new(),
        },
    });
    mesh.handle(
        Input::Message {
            from: name(1),
            bytes: push_pull,
        },
        Time::ZERO,
    )
    .unwrap();
    assert_eq!(mesh.state_of(&name(1)).count(), 1, "the record is applied");
    assert_eq!(mesh.queue.len(), queued, "and not queued for piggyback");
    feed(
        &mut mesh,
        1,
        gossip(vec![Update::State(Box::new(record_of(1, "pod/rumour")))]),
        Time::ZERO,
    );
    assert_eq!(mesh.state_of(&name(1)).count(), 2);
    assert_eq!(mesh.queue.len(), queued + 1, "a rumour goes on");
}

#[test]
fn synced_state_is_never_piggybacked_and_reaches_every_node_by_anti_entropy() {
    let n = 5;
    let mut net = Net::joined(n, Config::lan());
    let from = net.log.len();
    net.command(
        2,
        Command::PutSyncedState {
            key: "node".into(),
            value: b"info".to_vec(),
        },
    );
    net.command(
        3,
        Command::PutState {
            key: "pod/x".into(),
            value: vec![1],
        },
    );
    let rounds = Config::lan().sync_interval * 4;
    let spread = net.run_until_true(rounds, |net| {
        (0..n).all(|i| net.mesh(i).state_of(&name(2)).any(|(k, _)| k == "node"))
    });
    assert!(spread.is_some(), "anti-entropy carries the synced key");
    for i in 0..n {
        let keys = piggybacked_keys(&net.log[from..], i);
        assert!(
            !keys.contains("node"),
            "node {i} piggybacked the synced key"
        );
    }
    assert!(
        piggybacked_keys(&net.log[from..], 3).contains("pod/x"),
        "an ordinary write is piggybacked (the check above can fail)"
    );
}

/// The times of a lone node's anti-entropy rounds over `window`, with a new member heard of
/// (by gossip) at each of `arrivals`.
fn sync_times(mesh: &mut Mesh<MemStore>, window: Duration, mut arrivals: Vec<Time>) -> Vec<Time> {
    let next_sync = |mesh: &Mesh<MemStore>| mesh.next_sync;
    let mut times = vec![next_sync(mesh)];
    let mut members = 1;
    let end = Time::ZERO + window;
    loop {
        let next_timer = mesh.poll_timeout().unwrap();
        let next = arrivals
            .first()
            .map_or(next_timer, |t| (*t).min(next_timer));
        if next > end {
            times.pop_if(|t| *t > end);
            return times;
        }
        if arrivals.first() == Some(&next) {
            arrivals.remove(0);
            feed(mesh, members, gossip(vec![alive(members, 1)]), next);
            members += 1;
        } else {
            mesh.handle_timeout(next);
        }
        drain_all(mesh);
        let at = next_sync(mesh);
        if times.last() != Some(&at) {
            times.push(at);
        }
    }
}

#[test]
fn anti_entropy_follows_up_within_a_probe_period_only_while_the_roster_grows() {
    let config = Config::lan();
    let probe = config.probe_interval;
    let short = probe * FIRST_SYNC_PROBE_PERIODS;
    let mut mesh = lone(config.clone());
    // New members arrive during the first 2 s, then none.
    let arrivals = vec![
        Time::ZERO + Duration::from_millis(100),
        Time::ZERO + Duration::from_millis(1_500),
    ];
    let times = sync_times(&mut mesh, Duration::from_secs(40), arrivals);
    let gaps: Vec<Duration> = times
        .windows(2)
        .map(|w| w[1].saturating_since(w[0]))
        .collect();
    assert!(times.len() >= 4, "{times:?}");
    // The first round (one to two probe periods after the start) saw the roster grow, and so
    // did the second: both follow up a probe period later. The third saw nothing new.
    assert_eq!(gaps[0], short, "{times:?}");
    assert_eq!(gaps[1], short, "{times:?}");
    assert!(
        gaps[2..].iter().all(|g| *g == config.sync_interval),
        "{times:?}"
    );
    // Without new members after the first round, the pace is sync_interval from the start.
    let mut settled = lone(config.clone());
    let times = sync_times(
        &mut settled,
        Duration::from_secs(40),
        vec![Time::ZERO + Duration::from_millis(100)],
    );
    let gaps: Vec<Duration> = times
        .windows(2)
        .map(|w| w[1].saturating_since(w[0]))
        .collect();
    assert_eq!(gaps[0], short, "{times:?}");
    assert!(
        gaps[1..].iter().all(|g| *g == config.sync_interval),
        "{times:?}"
    );
}

#[test]
fn a_member_back_from_the_dead_brings_the_next_anti_entropy_round_forward() {
    // After a cut heals, half the mesh's refutations are learnt by one exchange of the
    // differing buckets, not by waiting up to `sync_interval` for the next round.
    let config = Config::lan();
    let mut mesh = lone(config.clone());
    let t = Time::from_secs;
    feed(&mut mesh, 1, gossip(vec![alive(1, 1), alive(2, 1)]), t(0));
    let mut now = t(0);
    while now < t(4) {
        now = mesh.poll_timeout().unwrap();
        mesh.handle_timeout(now);
    }
    drain_all(&mut mesh);
    // Nothing answers this lone node, so it suspects n1 and n2 by now: the verdict is its own.
    mesh.on_dead(name(2), 1, name(0), t(4));
    assert!(mesh.next_sync > t(10), "next round at {:?}", mesh.next_sync);
    feed(&mut mesh, 1, gossip(vec![alive(2, 2)]), t(5));
    let soon = t(5) + config.probe_interval * (2 * FIRST_SYNC_PROBE_PERIODS);
    assert!(mesh.next_sync <= soon, "next round at {:?}", mesh.next_sync);
    // The round runs by then, and the one after it comes `sync_interval` later.
    while now < soon {
        now = mesh.poll_timeout().unwrap();
        mesh.handle_timeout(now);
    }
    assert!(
        mesh.next_sync >= t(5) + config.sync_interval,
        "next round at {:?}",
        mesh.next_sync
    );
}

#[test]
fn an_accusation_made_or_relayed_by_a_member_this_node_suspects_is_dropped() {
    // A member this node cannot reach may be on a side that cannot hear the members it
    // accuses (a one-way cut, or its own slowness): its claims are not believed or relayed.
    let mut mesh = lone(Config::lan());
    let t = Time::from_secs;
    feed_all(
        &mut mesh,
        1,
        vec![alive(1, 1), alive(2, 1), alive(3, 1)],
        t(0),
    );
    mesh.on_suspect(name(3), 1, name(0), t(1));
    drain_all(&mut mesh);
    feed(&mut mesh, 3, gossip(vec![suspect(2, 1, 3)]), t(2));
    feed(&mut mesh, 1, gossip(vec![suspect(2, 1, 3)]), t(2));
    feed(&mut mesh, 3, gossip(vec![suspect(2, 1, 1)]), t(2));
    let state = |m: &Mesh<MemStore>| m.member(&name(2)).map(|m| m.state);
    assert_eq!(state(&mesh), Some(MemberState::Alive));
    assert_eq!(mesh.counters().accusations_dropped, 3);
    // Made and brought by members it holds alive, the claim stands.
    feed(&mut mesh, 1, gossip(vec![suspect(2, 1, 1)]), t(3));
    assert_eq!(state(&mesh), Some(MemberState::Suspect));
}

#[test]
fn a_member_suspected_after_this_nodes_own_probe_is_told_at_once() {
    // Nothing answers a lone node: when its probe of a member fails, the member hears of the
    // suspicion from it directly, once, in a Ping carrying the claim alone.
    let mut mesh = lone(Config::lan());
    feed_all(&mut mesh, 1, vec![alive(1, 1), alive(2, 1)], Time::ZERO);
    drain_all(&mut mesh);
    let mut told = Vec::new();
    let mut now = Time::ZERO;
    while now < Time::from_secs(4) {
        now = mesh.poll_timeout().unwrap();
        mesh.handle_timeout(now);
        for output in drain_all(&mut mesh) {
            let Output::Datagram { to, bytes } = output else {
                continue;
            };
            let d = codec::decode_datagram(&bytes, 1 << 16).unwrap();
            if let (Probe::Ping { .. }, [Update::Suspect { name, source, .. }]) =
                (&d.probe, d.updates.as_slice())
                && Some(name) == to.name.as_ref()
            {
                told.push((name.clone(), source.clone()));
            }
        }
    }
    let suspected = mesh.counters().suspicions;
    assert!(suspected >= 1, "{suspected} suspicions");
    assert_eq!(told.len() as u64, suspected, "{told:?}");
    assert!(told.iter().all(|(_, source)| *source == name(0)));
}

#[test]
fn a_node_accused_itself_tells_again_the_members_its_own_probes_accuse() {
    // A lone node suspects members as its probes fail, tells each once, and declares them
    // dead; every word is lost (a cut). When it hears that it is suspected itself, it was the
    // one cut off: it refutes and tells again each member it suspects, and once each it
    // judged dead, so the live ones refute.
    let mut mesh = lone(Config::lan());
    feed_all(
        &mut mesh,
        1,
        (1..=3).map(|i| alive(i, 1)).collect(),
        Time::ZERO,
    );
    drain_all(&mut mesh);
    // (member, told dead rather than suspect) for each Ping that carries a claim about its
    // own target alone.
    let told = |outputs: Vec<Output>| -> Vec<(NodeName, bool)> {
        let mut told: Vec<(NodeName, bool)> = outputs
            .into_iter()
            .filter_map(|output| {
                let Output::Datagram { to, bytes } = output else {
                    return None;
                };
                let d = codec::decode_datagram(&bytes, 1 << 16).ok()?;
                let (subject, dead) = match (&d.probe, d.updates.as_slice()) {
                    (Probe::Ping { .. }, [Update::Suspect { name, .. }]) => (name, false),
                    (Probe::Ping { .. }, [Update::Dead { name, .. }]) => (name, true),
                    _ => return None,
                };
                (Some(subject) == to.name.as_ref()).then(|| (subject.clone(), dead))
            })
            .collect();
        told.sort();
        told
    };
    let held = |mesh: &Mesh<MemStore>| -> Vec<(NodeName, bool)> {
        (1..=3)
            .map(name)
            .filter_map(|n| match mesh.member(&n).unwrap().state {
                MemberState::Suspect => Some((n, false)),
                MemberState::Dead => Some((n, true)),
                _ => None,
            })
            .collect()
    };
    let accuse = |mesh: &mut Mesh<MemStore>, now: Time| {
        let before = mesh.incarnation();
        feed(mesh, 1, gossip(vec![suspect(0, before, 1)]), now);
        assert!(mesh.incarnation() > before, "it refutes");
        told(drain_all(mesh))
    };
    let mut now = Time::ZERO;
    let step = |mesh: &mut Mesh<MemStore>| {
        let next = mesh.poll_timeout().unwrap();
        mesh.handle_timeout(next);
        drain_all(mesh);
        next
    };
    while mesh.counters().deaths_declared == 0 {
        now = step(&mut mesh);
    }
    let first = held(&mesh);
    assert!(first.iter().any(|(_, dead)| *dead), "{first:?}");
    assert!(first.iter().any(|(_, dead)| !*dead), "{first:?}");
    assert_eq!(accuse(&mut mesh, now), first);

    // Accused again at once: the suspects are told again, the verdicts are not.
    let suspects: Vec<(NodeName, bool)> = first.iter().filter(|(_, d)| !d).cloned().collect();
    assert_eq!(accuse(&mut mesh, now), suspects);

    // Once every member is judged, only the verdicts since are told.
    while held(&mesh).len() < 3 || held(&mesh).iter().any(|(_, dead)| !dead) {
        now = step(&mut mesh);
    }
    let judged_since: Vec<(NodeName, bool)> = held(&mesh)
        .into_iter()
        .filter(|judged| !first.contains(judged))
        .collect();
    assert_eq!(judged_since.len(), 3 - (first.len() - suspects.len()));
    assert_eq!(accuse(&mut mesh, now), judged_since);
}
