//! The core: SWIM membership with Lifeguard, and owner-versioned replicated state.
//!
//! [`Mesh`] is one state machine with one input door ([`Mesh::handle`],
//! [`Mesh::handle_timeout`]) and one output door ([`Mesh::poll_output`]). This file holds the
//! machine's state, its doors, the commands of the local operator and the timer dispatch; each
//! protocol it runs has a file of its own, as further `impl Mesh` blocks:
//!
//! - `membership`: probes, indirect probes, suspicion, awareness and refutation (SWIM with
//!   Lifeguard, DESIGN section 3);
//! - `dissemination`: the piggyback queue's use, gossip rounds and the updates they carry;
//! - `sync`: join push/pull, reconnection and anti-entropy by digest (DESIGN section 4);
//! - `state`: owner-versioned replicated state, local writes and received records;
//! - `tombstones`: collecting dead and departed members and deleted entries;
//! - `persist`: the sample of members kept in the store for a rejoin without seeds;
//! - `claims`: checking the signature of every claim a node makes about itself before it is
//!   applied or relayed, and fetching the certificates that takes (DESIGN section 2).
//!
//! The leaf `ring` orders the live members for the probe schedule.
//!
//! Leaf modules hold the data structures those share: `members` (the member table and the
//! roster of live members), `broadcast` (the piggyback queue), `digest` (bucket hashes),
//! `entries` (one owner's replicated state), `credentials` (other members' certificates and the
//! claims waiting for one), `suspicion` (Lifeguard's suspicion timer) and `api` (inputs,
//! outputs and views).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::codec::{self, DecodeError, MemberState, Probe, Signature, Update, claim};
use crate::signing::{Credential, Signatures, key_id};
use crate::store::{Store, Table, WriteBatch};
use crate::time::micros;
use crate::{Config, Error, NodeName, Time};

use broadcast::Broadcasts;
use credentials::Credentials;
use digest::Digest;
use entries::{Onward, StateMap};
use members::Members;
use ring::Ring;

pub use api::{Command, Counters, Event, Input, Member, Output, StateEntry, Target};

/// Key of the incarnation in [`Table::Meta`], stored as 8 big-endian bytes.
const INCARNATION_KEY: &[u8] = b"incarnation";

/// Probe periods after its start at which a node runs its first anti-entropy round, and between
/// rounds while its roster is still growing or members come back (see [`Mesh::sync_soon`]). A
/// member missed by the join push/pull and by gossip (its rumour may have died out before
/// reaching this node) is then repaired within seconds rather than at the next `sync_interval`;
/// once a whole round passes with no new member, rounds return to `sync_interval`, so a settled
/// mesh pays nothing for it. One period: signed Alives are four times the size they were
/// unsigned, gossip carries a join burst's news more slowly, and the exchanges carry it whole.
const FIRST_SYNC_PROBE_PERIODS: u32 = 1;

/// Mixed into the RNG seed to draw a fresh store's first incarnation.
const FRESH_START_SALT: u64 = 0x6669_7273_745f_6c69;

/// Mixed into the RNG seed to key the member table's hashing, so that the key costs the
/// protocol's RNG no draw.
const MEMBER_HASH_SALT: u64 = 0x6d65_6d62_6572_735f;

/// Mixed into the RNG seed to key the piggyback queue's subject index, likewise.
const QUEUE_HASH_SALT: u64 = 0x7175_6575_655f_6964;

/// Bytes reserved in a stream message for everything but the records: the sender address, enum
/// tags, flags and the length prefixes of up to four sequences.
const MESSAGE_OVERHEAD: usize = 64;

/// Bytes a varint sequence length can grow beyond the single byte an empty one takes, for any
/// length a datagram can hold (< 65536 needs 3 bytes).
const SEQ_LEN_SLACK: usize = 2;

/// Outputs the drained output queue keeps room for. A burst (a join reply announces every
/// member) gives the rest back, so a node does not hold a burst's worth of memory for good.
const OUTPUTS_KEPT: usize = 64;

/// A timer; stale ones (whose token no longer matches) do nothing when they fire.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Timer {
    Probe,
    ProbeTimeout { seq: u32 },
    Relay { seq: u32 },
    Suspicion { node: NodeName, token: u64 },
    Gossip,
    Sync,
    Reconnect,
    Persist,
    Collect,
}

/// The probe of the current protocol period.
#[derive(Debug, Clone)]
struct Probing {
    seq: u32,
    target: NodeName,
    acked: bool,
    intermediaries: BTreeSet<NodeName>,
    nacks: BTreeSet<NodeName>,
}

/// An indirect probe this node runs for someone else.
#[derive(Debug, Clone)]
struct Relay {
    requester: NodeName,
    addr: SocketAddr,
    seq: u32,
    target: NodeName,
}

/// The membership and replicated-state state machine. See the crate documentation for the
/// protocol and the call order.
#[derive(Debug)]
pub struct Mesh<S> {
    config: Config,
    me: NodeName,
    addr: SocketAddr,
    incarnation: u64,
    /// Incarnation at start: the generation of this life's state entries.
    generation: u64,
    /// Write counter of this node's state entries.
    state_version: u64,
    left: bool,
    /// When this node's own state last changed (start, refutation, leave).
    changed_at: Time,
    /// Signs this node's claims and checks other nodes' (DESIGN section 2).
    signatures: Box<dyn Signatures>,
    /// This node's own credential, to check claims about itself (a previous life's) with.
    own: (u32, Credential),
    /// This node's signature of its current Alive, or of its Left once it has left.
    own_claim: Signature,
    /// Other members' credentials, and the claims waiting for one.
    credentials: Credentials,
    /// Certificates to ask for once the current input is handled: per relay, its address
    /// and the subjects whose claims it relayed.
    asks: BTreeMap<NodeName, (SocketAddr, Vec<NodeName>)>,
    store: S,
    rng: ChaCha8Rng,
    /// Every other member, tombstones included.
    members: Members,
    /// Members declared dead recently, still gossiped to (pruned by `gossip_to_dead`).
    recently_dead: Vec<NodeName>,
    /// When the last gossip round went out: urgent rounds come at most once per interval.
    last_gossip: Option<Time>,
    /// Replicated state per owner that has any, this node included.
    entries: BTreeMap<NodeName, StateMap>,
    queue: Broadcasts,
    digest: Digest,
    /// What this node adds to its own digest bucket.
    own_digested: u64,
    timers: BTreeMap<(Time, u64), Timer>,
    timer_seq: u64,
    outputs: VecDeque<Output>,
    /// The probe schedule: the ring of live members it draws each period's target from.
    ring: Ring,
    /// Microseconds of the wall clock at `Time::ZERO`: probe periods begin at the same
    /// instants on every node whose clock is right (see [`Mesh::set_wall_epoch`]).
    wall_epoch: u64,
    /// Where in each probe period this node's tick falls: within the first tenth, so the
    /// period's probes go out together and the next prober is at most a period away.
    probe_phase: u64,
    probe: Option<Probing>,
    seq: u32,
    relays: BTreeMap<u32, Relay>,
    awareness: u32,
    seeds: Vec<SocketAddr>,
    /// Last known members read from the store, contacted when this node knows no live member.
    rejoin: Vec<(NodeName, SocketAddr)>,
    /// The previous life's keys in [`Table::Members`], valid names or not, deleted by the full
    /// rewrite.
    stale: Vec<Vec<u8>>,
    /// Members this life wrote to [`Table::Members`] and has not deleted since.
    persisted: BTreeSet<NodeName>,
    /// Members whose stored record is out of date.
    dirty: BTreeSet<NodeName>,
    /// Whether the stored members still hold a previous life's view, to be replaced by a full
    /// rewrite once this node is connected again.
    full_rewrite: bool,
    /// Failure news (suspect, dead, left, a refutation) was queued: push it at once instead of
    /// waiting for the next gossip tick, since detection and refutation times are bounded.
    urgent: bool,
    /// A member this node did not know arrived since the latest anti-entropy round began: the
    /// roster is still growing (a join), so the next round comes after
    /// [`FIRST_SYNC_PROBE_PERIODS`] rather than `sync_interval`.
    roster_grew: bool,
    /// When the next anti-entropy round is due; a [`Timer::Sync`] that fires earlier is stale.
    next_sync: Time,
    next_token: u64,
    counters: Counters,
}

impl<S: Store> Mesh<S> {
    /// Builds the core for node `me`, reachable at `advertise`, signing its claims with
    /// `signatures`.
    ///
    /// Durably bumps the incarnation (so this life is newer than every previous one) and loads
    /// the last known members. Fails if the config is invalid, if `signatures` does not admit
    /// its own certificate as `me`'s, or if the store cannot be read or written: running with an
    /// incarnation that might go backwards would make this node a ghost.
    pub fn new(
        config: Config,
        me: NodeName,
        advertise: SocketAddr,
        mut store: S,
        mut signatures: Box<dyn Signatures>,
        rng_seed: u64,
        now: Time,
    ) -> Result<Self, Error> {
        config.validate()?;
        let own = own_credential(signatures.as_mut(), &me)?;
        let previous = match store.read(Table::Meta, INCARNATION_KEY)? {
            // A store without an incarnation is a first start, or a node whose disk was lost.
            // Starting from a random point keeps a node that lost its disk from reusing the
            // incarnation of an earlier life, and with it the ids of the requests that life
            // sent (receivers remember those to drop duplicates).
            None => {
                u64::from(ChaCha8Rng::seed_from_u64(rng_seed ^ FRESH_START_SALT).random::<u32>())
            }
            Some(bytes) => {
                let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    DecodeError::Malformed("stored incarnation is not 8 bytes".to_owned())
                })?;
                u64::from_be_bytes(bytes)
            }
        };
        let incarnation = previous.saturating_add(1);
        let own_claim = sign(
            signatures.as_mut(),
            own.0,
            &claim::alive(&me, advertise, incarnation),
        );
        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, INCARNATION_KEY, incarnation.to_be_bytes());
        store.write(batch)?;

        let mut counters = Counters::default();
        let mut rejoin = Vec::new();
        let mut stale = Vec::new();
        for (key, value) in store.scan(Table::Members)? {
            match codec::decode_member(&value) {
                Ok(record) if record.name != me => rejoin.push((record.name, record.addr)),
                Ok(_) => {}
                Err(_) => counters.store_corrupt_records += 1,
            }
            stale.push(key);
        }

        let mut mesh = Mesh {
            me: me.clone(),
            addr: advertise,
            incarnation,
            generation: incarnation,
            state_version: 0,
            left: false,
            changed_at: now,
            signatures,
            own,
            own_claim,
            credentials: Credentials::default(),
            asks: BTreeMap::new(),
            store,
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            members: Members::new(rng_seed ^ MEMBER_HASH_SALT),
            recently_dead: Vec::new(),
            last_gossip: None,
            entries: BTreeMap::from([(me, StateMap::default())]),
            queue: Broadcasts::new(rng_seed ^ QUEUE_HASH_SALT),
            digest: Digest::new(config.sync_buckets),
            own_digested: 0,
            timers: BTreeMap::new(),
            timer_seq: 0,
            outputs: VecDeque::new(),
            ring: Ring::default(),
            wall_epoch: 0,
            probe_phase: 0,
            probe: None,
            seq: 0,
            relays: BTreeMap::new(),
            awareness: 0,
            seeds: Vec::new(),
            rejoin,
            stale,
            persisted: BTreeSet::new(),
            dirty: BTreeSet::new(),
            full_rewrite: true,
            urgent: false,
            roster_grew: false,
            next_sync: Time::ZERO,
            next_token: 0,
            counters,
            config,
        };
        // Probe ticks come at the start of each probe period, at this node's phase: the
        // schedule needs every node's period q at about the same time. Syncs keep random
        // phases, so that nodes started together do not sync in lockstep.
        mesh.probe_phase = micros(mesh.jitter(mesh.config.probe_interval / 10));
        let probe_at = mesh.probe_tick_after(now, 1).0;
        // The first anti-entropy round comes a couple of probe periods after the start: by then
        // a joining node has heard of most members by gossip, and one sync fills in whatever its
        // join push/pull missed (its seed may not have known everyone yet). Later rounds come
        // every `sync_interval`.
        let sync_at = now
            + mesh.config.probe_interval * FIRST_SYNC_PROBE_PERIODS
            + mesh.jitter(mesh.config.probe_interval);
        mesh.schedule(probe_at, Timer::Probe);
        mesh.schedule(now + mesh.config.gossip_interval, Timer::Gossip);
        mesh.next_sync = sync_at;
        mesh.schedule(sync_at, Timer::Sync);
        mesh.schedule(now, Timer::Reconnect);
        mesh.schedule(now + mesh.config.persist_interval, Timer::Persist);
        mesh.schedule(now + mesh.collect_interval(), Timer::Collect);
        let me = mesh.me.clone();
        mesh.refresh_digest(&me);
        Ok(mesh)
    }

    /// Feeds one input. Network input never fails (bad frames are counted and dropped); only a
    /// command the core refuses returns an error. `now` must never go backwards between calls.
    pub fn handle(&mut self, input: Input, now: Time) -> Result<(), Error> {
        let result = self.dispatch(input, now);
        self.flush_asks();
        self.flush_urgent(now);
        result
    }

    fn dispatch(&mut self, input: Input, now: Time) -> Result<(), Error> {
        match input {
            Input::Datagram { from, bytes } => {
                self.counters.datagrams_received += 1;
                match codec::decode_datagram(&bytes, self.config.datagram_size_max) {
                    Ok(datagram) if from != self.me => self.on_datagram(from, datagram, now),
                    Ok(_) | Err(_) => self.counters.bad_frames += 1,
                }
                Ok(())
            }
            Input::Message { from, bytes } => {
                self.counters.messages_received += 1;
                match codec::decode_message(&bytes, self.config.message_size_max) {
                    Ok(message) if from != self.me => self.on_message(from, message, now),
                    Ok(_) | Err(_) => self.counters.bad_frames += 1,
                }
                Ok(())
            }
            Input::Command(command) => self.on_command(command, now),
            Input::ConnectionLost { .. } => {
                self.counters.connections_lost += 1;
                Ok(())
            }
        }
    }

    /// Says what the wall clock read at `Time::ZERO`, in microseconds since the Unix epoch,
    /// so that probe periods begin at the same instants on every node and the probe schedule
    /// probes each member once a period. Drivers whose nodes share one virtual clock (the
    /// simulator) need not call it. Takes effect from the next probe tick.
    pub fn set_wall_epoch(&mut self, unix_micros: u64) {
        self.wall_epoch = unix_micros;
    }

    /// When [`Mesh::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.first_key_value().map(|((at, _), _)| *at)
    }

    /// Fires every timer due at `now`. A call with nothing due does nothing.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.on_timer(timer, now);
        }
        self.flush_urgent(now);
    }

    /// The next thing the driver must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        let output = self.outputs.pop_front();
        if output.is_none() && self.outputs.capacity() > OUTPUTS_KEPT {
            self.outputs.shrink_to(OUTPUTS_KEPT);
        }
        output
    }

    /// Every member this node knows, itself included, tombstones included, in name order.
    pub fn members(&self) -> Vec<Member> {
        let me = Member {
            name: self.me.clone(),
            addr: self.addr,
            state: if self.left {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            incarnation: self.incarnation,
            changed_at: self.changed_at,
        };
        let mut out: Vec<Member> = self
            .members
            .sorted()
            .into_iter()
            .map(|(name, m)| Member {
                name: name.clone(),
                addr: m.addr,
                state: m.state,
                incarnation: m.incarnation,
                changed_at: m.changed_at,
            })
            .collect();
        let at = out.partition_point(|m| m.name < self.me);
        out.insert(at, me);
        out
    }

    /// One member (never this node), if known.
    pub fn member(&self, name: &NodeName) -> Option<Member> {
        self.members.get(name).map(|m| Member {
            name: name.clone(),
            addr: m.addr,
            state: m.state,
            incarnation: m.incarnation,
            changed_at: m.changed_at,
        })
    }

    /// `owner`'s state entry under `key`, tombstone included, if this node holds it.
    pub fn entry(&self, owner: &NodeName, key: &str) -> Option<StateEntry<'_>> {
        let (owner, map) = self.entries.get_key_value(owner)?;
        let (key, e) = map.get_key_value(key)?;
        Some(StateEntry {
            owner,
            key,
            generation: e.generation,
            version: e.version,
            value: e.value.as_deref(),
        })
    }

    /// The live (not deleted) state entries of `node`, in key order.
    pub fn state_of<'a>(
        &'a self,
        node: &NodeName,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> + use<'a, S> {
        self.entries.get(node).into_iter().flat_map(|map| {
            map.iter()
                .filter_map(|(k, e)| e.value.as_deref().map(|v| (k.as_str(), v)))
        })
    }

    /// Every replicated state entry known here, tombstones included, by owner then key.
    pub fn entries(&self) -> impl Iterator<Item = StateEntry<'_>> {
        self.entries.iter().flat_map(|(owner, map)| {
            map.iter().map(move |(key, e)| StateEntry {
                owner,
                key,
                generation: e.generation,
                version: e.version,
                value: e.value.as_deref(),
            })
        })
    }

    /// The Lifeguard local health score, 0 (healthy) to `awareness_max - 1`.
    pub fn local_health(&self) -> u32 {
        self.awareness
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// This node's current incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.me
    }

    /// This node's advertised address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether this node left the mesh.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Updates waiting to be piggybacked.
    pub fn broadcast_queue_len(&self) -> usize {
        self.queue.len()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, mutably: lets a simulator inject failures into a running node's store.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the store back, for a restart.
    pub fn into_store(self) -> S {
        self.store
    }

    fn on_command(&mut self, command: Command, now: Time) -> Result<(), Error> {
        match command {
            Command::Join { seeds } => {
                if self.left {
                    // Left is final for this life; rejoining takes a restart (a new incarnation).
                    return Err(Error::Left);
                }
                for seed in &seeds {
                    if self.seeds.contains(seed) {
                        continue;
                    }
                    if self.seeds.len() >= self.config.seeds_max {
                        self.counters.seeds_dropped += 1;
                        continue;
                    }
                    self.seeds.push(*seed);
                }
                if seeds.is_empty() {
                    self.contact_rejoin_candidates();
                }
                let own = self.addr;
                for seed in seeds.into_iter().filter(|s| *s != own) {
                    self.send_push_pull(
                        Target {
                            addr: seed,
                            name: None,
                        },
                        true,
                    );
                }
                Ok(())
            }
            Command::Leave => {
                if !self.left {
                    self.left = true;
                    self.changed_at = now;
                    let me = self.me.clone();
                    self.refresh_digest(&me);
                    self.probe = None;
                    let left = claim::left(&self.me, self.addr, self.incarnation);
                    self.own_claim = self.sign(&left);
                    let update = Update::Left {
                        name: self.me.clone(),
                        addr: self.addr,
                        incarnation: self.incarnation,
                        signature: self.own_claim,
                    };
                    self.enqueue(update);
                    // Push the news right away rather than waiting for the next gossip tick.
                    self.gossip_round(now, true);
                    // A leave is how a node stops for a restart: store the members it knows
                    // now, not at the next persist tick, which may never come.
                    self.persist_members();
                }
                Ok(())
            }
            Command::Expel { node } => {
                self.expel(node, now);
                Ok(())
            }
            Command::PutState { key, value } => self.put_state(key, value, Onward::Piggyback, now),
            Command::PutSyncedState { key, value } => {
                self.put_state(key, value, Onward::StreamsOnly, now)
            }
            Command::DeleteState { key } => {
                if self.left {
                    return Err(Error::Left);
                }
                let exists = self
                    .entries
                    .get(&self.me)
                    .and_then(|map| map.get(&key))
                    .is_some_and(|e| e.value.is_some());
                if exists {
                    self.write_own(key, None, Onward::Piggyback, now);
                }
                Ok(())
            }
        }
    }

    /// Declares `node` dead here at once, at the incarnation known for it, and gossips the
    /// verdict: this node's operator refuses it. Unknown or departed members are left alone.
    fn expel(&mut self, node: NodeName, now: Time) {
        let known = self.members.get(&node).filter(|m| m.state.is_live());
        if let Some(incarnation) = known.map(|m| m.incarnation) {
            self.counters.deaths_declared += 1;
            let me = self.me.clone();
            self.on_dead(node, incarnation, me, now);
        }
    }

    /// Brings the next anti-entropy round forward to within about a probe period, when a
    /// member this node did not know arrived or one it held dead or gone came back, and the
    /// round is far off. After a cut heals, every node has half the mesh's refutations to
    /// learn: signed, they are too big for gossip to carry to everyone within seconds, and one
    /// exchange of the differing buckets carries them all.
    pub(super) fn sync_soon(&mut self, now: Time) {
        let period = self.config.probe_interval * FIRST_SYNC_PROBE_PERIODS;
        if self.next_sync <= now + period * 2 {
            return;
        }
        let soon = now + period + self.jitter(period);
        if soon < self.next_sync {
            self.next_sync = soon;
            self.schedule(soon, Timer::Sync);
        }
    }

    fn schedule(&mut self, at: Time, timer: Timer) {
        self.timers.insert((at, self.timer_seq), timer);
        self.timer_seq += 1;
    }

    fn jitter(&mut self, span: Duration) -> Duration {
        Duration::from_micros(self.rng.random_range(0..micros(span).max(1)))
    }

    fn on_timer(&mut self, timer: Timer, now: Time) {
        match timer {
            Timer::Probe => self.on_probe_tick(now),
            Timer::ProbeTimeout { seq } => self.on_probe_timeout(seq),
            Timer::Relay { seq } => {
                if let Some(relay) = self.relays.remove(&seq) {
                    let to = Target {
                        addr: relay.addr,
                        name: Some(relay.requester),
                    };
                    self.send_datagram(to, Probe::Nack { seq: relay.seq }, None);
                }
            }
            Timer::Suspicion { node, token } => self.on_suspicion_timeout(node, token, now),
            Timer::Gossip => {
                self.schedule(now + self.config.gossip_interval, Timer::Gossip);
                self.gossip_round(now, false);
            }
            Timer::Sync => {
                if now < self.next_sync {
                    return;
                }
                let next = if std::mem::take(&mut self.roster_grew) {
                    (self.config.probe_interval * FIRST_SYNC_PROBE_PERIODS)
                        .min(self.config.sync_interval)
                } else {
                    self.config.sync_interval
                };
                self.next_sync = now + next;
                self.schedule(self.next_sync, Timer::Sync);
                self.start_sync();
            }
            Timer::Reconnect => {
                // Uniform in [interval / 2, 3 * interval / 2): nodes started together must not
                // re-contact in lockstep, and the mean stays the configured interval.
                let interval = self.config.reconnect_interval;
                let next = now + interval / 2 + self.jitter(interval);
                self.schedule(next, Timer::Reconnect);
                self.reconnect();
            }
            Timer::Collect => {
                self.schedule(now + self.collect_interval(), Timer::Collect);
                self.collect_tombstones(now);
            }
            Timer::Persist => {
                self.schedule(now + self.config.persist_interval, Timer::Persist);
                self.persist_members();
            }
        }
    }

    fn emit(&mut self, event: Event) {
        self.push_output(Output::Event(event));
    }

    fn push_output(&mut self, output: Output) {
        if self.outputs.len() >= self.config.output_queue_max {
            self.counters.outputs_dropped += 1;
            return;
        }
        match &output {
            Output::Datagram { bytes, .. } => {
                self.counters.datagrams_sent += 1;
                self.counters.datagram_bytes_sent += bytes.len() as u64;
            }
            Output::Message { bytes, .. } => {
                self.counters.messages_sent += 1;
                self.counters.message_bytes_sent += bytes.len() as u64;
            }
            Output::Event(_) => {}
        }
        self.outputs.push_back(output);
    }
}

/// `me`'s credential and its key id, as `signatures` admits its own certificate: a node whose
/// own certificate does not pass its own checks would sign claims nobody accepts.
fn own_credential(
    signatures: &mut dyn Signatures,
    me: &NodeName,
) -> Result<(u32, Credential), Error> {
    let certificate = signatures.certificate();
    let credential = signatures
        .admit(me, &certificate)
        .ok_or(Error::OwnCertificate)?;
    Ok((key_id(&certificate), credential))
}

/// Signs `claim` under the key whose id is `key_id`.
fn sign(signatures: &mut dyn Signatures, key_id: u32, claim: &[u8]) -> Signature {
    Signature::new(key_id, signatures.sign(claim))
}

/// Fisher-Yates with the core's seeded RNG.
fn shuffle<T>(rng: &mut ChaCha8Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = rng.random_range(0..=i);
        items.swap(i, j);
    }
}

/// Up to `k` items chosen uniformly without replacement (a partial Fisher-Yates).
fn sample<T>(rng: &mut ChaCha8Rng, mut items: Vec<T>, k: usize) -> Vec<T> {
    let k = k.min(items.len());
    for i in 0..k {
        let j = rng.random_range(i..items.len());
        items.swap(i, j);
    }
    items.truncate(k);
    items
}

mod api;
mod broadcast;
mod claims;
mod credentials;
mod digest;
mod dissemination;
mod entries;
mod members;
mod membership;
mod persist;
mod ring;
mod state;
mod suspicion;
mod sync;
mod tombstones;

#[cfg(test)]
mod tests;
