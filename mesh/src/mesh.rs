//! The core: SWIM membership with Lifeguard, and owner-versioned replicated state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::codec::{
    self, Body, Datagram, DecodeError, MemberRecord, Message, Probe, StateRecord, Update,
};
use crate::store::{Store, Table, WriteBatch};
use crate::time::micros;
use crate::{Config, Error, NodeName, Time};

use broadcast::Broadcasts;
use digest::{Digest, entry_hash, summary};
use members::{Members, NOT_LIVE};

/// Key of the incarnation in [`Table::Meta`], stored as 8 big-endian bytes.
const INCARNATION_KEY: &[u8] = b"incarnation";

/// Probe periods after its start at which a node runs its first anti-entropy round.
const FIRST_SYNC_PROBE_PERIODS: u32 = 2;

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

/// A member's state as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; will be declared dead unless it refutes in time.
    Suspect,
    /// Declared dead by the failure detector.
    Dead,
    /// Left gracefully.
    Left,
}

impl MemberState {
    /// Alive or suspect: still part of the mesh, probed and gossiped to.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }

    /// Precedence at equal incarnation: left beats dead beats suspect beats alive.
    fn rank(self) -> u8 {
        match self {
            MemberState::Alive => 0,
            MemberState::Suspect => 1,
            MemberState::Dead => 2,
            MemberState::Left => 3,
        }
    }
}

/// Where to send a datagram or message.
///
/// When `name` is set, the transport must deliver only to the node authenticated under that
/// name; `addr` is where to dial when no connection exists yet. Addresses come from the nodes'
/// own claims, so honouring the name is what keeps a node from directing traffic at a bystander.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// The node's advertised address.
    pub addr: SocketAddr,
    /// The node's name, which the transport must authenticate; `None` only when contacting a seed
    /// known by address alone, in which case any admitted node may answer.
    pub name: Option<NodeName>,
}

/// Something that happened, for [`Mesh::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A datagram from `from`, whose name the transport authenticated.
    Datagram {
        /// The authenticated sender.
        from: NodeName,
        /// The datagram as received.
        bytes: Vec<u8>,
    },
    /// A stream message from `from`, whose name the transport authenticated.
    Message {
        /// The authenticated sender.
        from: NodeName,
        /// One complete frame.
        bytes: Vec<u8>,
    },
    /// A request of the local operator.
    Command(Command),
    /// The transport lost its connection to `node`. This is only a hint: liveness is decided by
    /// probes, so a flapping connection does not flap membership.
    ConnectionLost {
        /// The node.
        node: NodeName,
    },
}

/// A request of the local operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Contact these seeds with a full push/pull and keep re-contacting them. With no seeds, the
    /// last known members read from the store are contacted instead.
    Join {
        /// Seed addresses.
        seeds: Vec<SocketAddr>,
    },
    /// Leave gracefully: gossip `left` and stop probing.
    Leave,
    /// Set a key of this node's replicated state.
    PutState {
        /// The key, 1 to `state_key_size_max` bytes.
        key: String,
        /// The value, at most `state_value_size_max` bytes.
        value: Vec<u8>,
    },
    /// Delete a key of this node's replicated state (a tombstone).
    DeleteState {
        /// The key.
        key: String,
    },
}

/// Something the driver must do, from [`Mesh::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a datagram (unreliable: losing, duplicating or reordering it is fine).
    Datagram {
        /// The recipient.
        to: Target,
        /// The datagram, at most `datagram_size_max` bytes.
        bytes: Vec<u8>,
    },
    /// Send one frame on a QUIC stream. Frames are independent: the transport may open a stream
    /// per frame or reuse one, and an answer arrives later as a new [`Input::Message`]. Losing a
    /// frame (a failed connection) is safe; anti-entropy repeats the work.
    Message {
        /// The recipient.
        to: Target,
        /// The frame, at most `message_size_max` bytes.
        bytes: Vec<u8>,
    },
    /// Tell the application.
    Event(Event),
}

/// A change the application may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member joined, came back, or refuted a suspicion.
    MemberAlive {
        /// The member.
        node: NodeName,
        /// Its address.
        addr: SocketAddr,
        /// Its incarnation.
        incarnation: u64,
    },
    /// A member missed a probe.
    MemberSuspect {
        /// The member.
        node: NodeName,
        /// Its incarnation.
        incarnation: u64,
    },
    /// A member was declared dead.
    MemberDead {
        /// The member.
        node: NodeName,
        /// Its incarnation.
        incarnation: u64,
    },
    /// A member left gracefully.
    MemberLeft {
        /// The member.
        node: NodeName,
        /// Its incarnation.
        incarnation: u64,
    },
    /// A replicated state key of `node` changed or was deleted, this node's own writes included.
    StateChanged {
        /// The owner.
        node: NodeName,
        /// The key.
        key: String,
    },
}

/// A member as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name.
    pub name: NodeName,
    /// Its advertised address.
    pub addr: SocketAddr,
    /// Its state.
    pub state: MemberState,
    /// Its incarnation.
    pub incarnation: u64,
    /// When this node last saw its state change.
    pub changed_at: Time,
}

/// A replicated state entry, tombstones included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateEntry<'a> {
    /// The owning node.
    pub owner: &'a NodeName,
    /// The key.
    pub key: &'a str,
    /// The owner's incarnation when it wrote the entry.
    pub generation: u64,
    /// The owner's write counter.
    pub version: u64,
    /// The value, or `None` for a deletion tombstone.
    pub value: Option<&'a [u8]>,
}

/// Monotonic counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams handed to the driver.
    pub datagrams_sent: u64,
    /// Their bytes.
    pub datagram_bytes_sent: u64,
    /// Stream messages handed to the driver.
    pub messages_sent: u64,
    /// Their bytes.
    pub message_bytes_sent: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Stream messages received.
    pub messages_received: u64,
    /// Frames dropped because they did not decode or made no sense.
    pub bad_frames: u64,
    /// Records dropped because they broke a size bound.
    pub bad_records: u64,
    /// Outputs dropped because `output_queue_max` was reached.
    pub outputs_dropped: u64,
    /// Updates evicted from a full broadcast queue.
    pub broadcasts_evicted: u64,
    /// New members ignored because `members_max` was reached.
    pub members_dropped: u64,
    /// State entries ignored because `state_keys_max` was reached.
    pub state_dropped: u64,
    /// PingReqs ignored because `indirect_pending_max` was reached.
    pub ping_reqs_dropped: u64,
    /// Seeds ignored because `seeds_max` was reached.
    pub seeds_dropped: u64,
    /// Push/pull or delta messages cut short by `message_size_max`.
    pub messages_truncated: u64,
    /// Store writes that failed (retried later where it matters).
    pub store_write_failures: u64,
    /// Stored member records that did not decode.
    pub store_corrupt_records: u64,
    /// Member and state tombstones collected.
    pub tombstones_collected: u64,
    /// Connection losses reported by the transport.
    pub connections_lost: u64,
    /// Probes of this node that ended without an Ack (each suspects its target).
    pub probes_failed: u64,
    /// Suspicions that timed out here, declaring a member dead.
    pub deaths_declared: u64,
    /// Times this node refuted news of its own suspicion, death or leave.
    pub refutations: u64,
}

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

#[derive(Debug, Clone)]
struct MemberEntry {
    addr: SocketAddr,
    incarnation: u64,
    state: MemberState,
    changed_at: Time,
    /// Boxed: few members are suspected at a time, and every member view pays for the inline size.
    suspicion: Option<Box<Suspicion>>,
    /// Position in the roster of live members, or [`NOT_LIVE`].
    live_at: u32,
    /// What this member adds to its digest bucket (0 while it is not live).
    digested: u64,
}

impl MemberEntry {
    /// A member just heard of: alive, in no roster yet, adding nothing to the digest yet.
    fn alive(addr: SocketAddr, incarnation: u64, now: Time) -> Self {
        Self {
            addr,
            incarnation,
            state: MemberState::Alive,
            changed_at: now,
            suspicion: None,
            live_at: NOT_LIVE,
            digested: 0,
        }
    }

    /// The record that carries this member as `name` in push/pull, anti-entropy and the store.
    fn record(&self, name: &NodeName) -> MemberRecord {
        MemberRecord {
            name: name.clone(),
            addr: self.addr,
            incarnation: self.incarnation,
            state: self.state,
        }
    }
}

/// A running Lifeguard suspicion.
#[derive(Debug, Clone)]
struct Suspicion {
    started: Time,
    /// Distinct members that suspected it, the first one included; bounded by `k + 1`.
    suspecters: BTreeSet<NodeName>,
    /// Confirmations after which the timeout reaches its minimum.
    k: u32,
    min: Duration,
    max: Duration,
    token: u64,
}

impl Suspicion {
    fn confirmations(&self) -> u32 {
        u32::try_from(self.suspecters.len().saturating_sub(1)).unwrap_or(u32::MAX)
    }

    fn deadline(&self) -> Time {
        self.started + suspicion_timeout(self.min, self.max, self.k, self.confirmations())
    }
}

#[derive(Debug, Clone)]
struct Entry {
    generation: u64,
    version: u64,
    value: Option<Vec<u8>>,
    changed_at: Time,
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
    store: S,
    rng: ChaCha8Rng,
    /// Every other member, tombstones included.
    members: Members,
    /// Members declared dead recently, still gossiped to (pruned by `gossip_to_dead`).
    recently_dead: Vec<NodeName>,
    /// Replicated state per owner that has any, this node included.
    entries: BTreeMap<NodeName, BTreeMap<String, Entry>>,
    queue: Broadcasts,
    digest: Digest,
    /// What this node adds to its own digest bucket.
    own_digested: u64,
    timers: BTreeMap<(Time, u64), Timer>,
    timer_seq: u64,
    outputs: VecDeque<Output>,
    probe_order: Vec<NodeName>,
    probe_next: usize,
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
    next_token: u64,
    counters: Counters,
}

impl<S: Store> Mesh<S> {
    /// Builds the core for node `me`, reachable at `advertise`.
    ///
    /// Durably bumps the incarnation (so this life is newer than every previous one) and loads
    /// the last known members. Fails if the config is invalid or the store cannot be read or
    /// written: running with an incarnation that might go backwards would make this node a ghost.
    pub fn new(
        config: Config,
        me: NodeName,
        advertise: SocketAddr,
        mut store: S,
        rng_seed: u64,
        now: Time,
    ) -> Result<Self, Error> {
        config.validate()?;
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
            store,
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            members: Members::new(rng_seed ^ MEMBER_HASH_SALT),
            recently_dead: Vec::new(),
            entries: BTreeMap::from([(me, BTreeMap::new())]),
            queue: Broadcasts::new(rng_seed ^ QUEUE_HASH_SALT),
            digest: Digest::new(config.sync_buckets),
            own_digested: 0,
            timers: BTreeMap::new(),
            timer_seq: 0,
            outputs: VecDeque::new(),
            probe_order: Vec::new(),
            probe_next: 0,
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
            next_token: 0,
            counters,
            config,
        };
        // Random phases keep nodes started together from probing and syncing in lockstep.
        let probe_at = now + mesh.jitter(mesh.config.probe_interval);
        // The first anti-entropy round comes a couple of probe periods after the start: by then
        // a joining node has heard of most members by gossip, and one sync fills in whatever its
        // join push/pull missed (its seed may not have known everyone yet). Later rounds come
        // every `sync_interval`.
        let sync_at = now
            + mesh.config.probe_interval * FIRST_SYNC_PROBE_PERIODS
            + mesh.jitter(mesh.config.probe_interval);
        mesh.schedule(probe_at, Timer::Probe);
        mesh.schedule(now + mesh.config.gossip_interval, Timer::Gossip);
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

    fn flush_urgent(&mut self, now: Time) {
        if self.urgent {
            self.urgent = false;
            self.gossip_round(now);
        }
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

    // ----- commands -----

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
                    let update = Update::Left {
                        name: self.me.clone(),
                        incarnation: self.incarnation,
                    };
                    self.enqueue(update);
                    // Push the news right away rather than waiting for the next gossip tick.
                    self.gossip_round(now);
                }
                Ok(())
            }
            Command::PutState { key, value } => {
                self.check_local_write(&key)?;
                if value.len() > self.config.state_value_size_max {
                    return Err(Error::StateValue {
                        len: value.len(),
                        max: self.config.state_value_size_max,
                    });
                }
                self.write_own(key, Some(value), now);
                Ok(())
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
                    self.write_own(key, None, now);
                }
                Ok(())
            }
        }
    }

    fn check_local_write(&self, key: &str) -> Result<(), Error> {
        if self.left {
            return Err(Error::Left);
        }
        let max = self.config.state_key_size_max;
        if key.is_empty() || key.len() > max {
            return Err(Error::StateKey {
                len: key.len(),
                max,
            });
        }
        let map = self.entries.get(&self.me);
        let full = map.is_some_and(|m| m.len() >= self.config.state_keys_max);
        if full && !map.is_some_and(|m| m.contains_key(key)) {
            return Err(Error::StateFull {
                max: self.config.state_keys_max,
            });
        }
        Ok(())
    }

    fn write_own(&mut self, key: String, value: Option<Vec<u8>>, now: Time) {
        self.state_version += 1;
        let record = StateRecord {
            owner: self.me.clone(),
            key: key.clone(),
            generation: self.generation,
            version: self.state_version,
            value: value.clone(),
        };
        let entry = Entry {
            generation: self.generation,
            version: self.state_version,
            value,
            changed_at: now,
        };
        let me = self.me.clone();
        self.set_entry(&me, &key, entry);
        self.enqueue_state(record);
        self.emit(Event::StateChanged {
            node: self.me.clone(),
            key,
        });
    }

    // ----- timers -----

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
                self.gossip_round(now);
            }
            Timer::Sync => {
                self.schedule(now + self.config.sync_interval, Timer::Sync);
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

    /// Scale of the probe interval and timeout under the current local health.
    fn stretch(&self) -> u32 {
        self.awareness + 1
    }

    fn awareness_add(&mut self, delta: u32) {
        self.awareness = (self.awareness.saturating_add(delta)).min(self.config.awareness_max - 1);
    }

    fn on_probe_tick(&mut self, now: Time) {
        self.finish_probe(now);
        if self.left {
            return;
        }
        let stretch = self.stretch();
        self.schedule(now + self.config.probe_interval * stretch, Timer::Probe);
        let Some(target) = self.next_probe_target() else {
            return;
        };
        let Some(member) = self.members.get(&target) else {
            return;
        };
        let to = Target {
            addr: member.addr,
            name: Some(target.clone()),
        };
        // Lifeguard's buddy system: a suspect target learns of its suspicion from the probe
        // itself, so it can refute even if gossip about it is slow.
        let buddy = (member.state == MemberState::Suspect).then(|| Update::Suspect {
            name: target.clone(),
            incarnation: member.incarnation,
            source: member
                .suspicion
                .as_ref()
                .and_then(|s| s.suspecters.first().cloned())
                .unwrap_or_else(|| self.me.clone()),
        });
        let seq = self.next_seq();
        self.probe = Some(Probing {
            seq,
            target,
            acked: false,
            intermediaries: BTreeSet::new(),
            nacks: BTreeSet::new(),
        });
        self.schedule(
            now + self.config.probe_timeout * stretch,
            Timer::ProbeTimeout { seq },
        );
        self.send_datagram(
            to,
            Probe::Ping {
                seq,
                addr: self.addr,
            },
            buddy,
        );
    }

    /// Closes the previous protocol period: without an Ack, the target becomes suspect and the
    /// missing Nacks count against our own health.
    fn finish_probe(&mut self, now: Time) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        if probe.acked {
            return;
        }
        let delta = if probe.intermediaries.is_empty() {
            1
        } else {
            probe.intermediaries.len().saturating_sub(probe.nacks.len())
        };
        self.awareness_add(u32::try_from(delta).unwrap_or(u32::MAX));
        self.counters.probes_failed += 1;
        if let Some(member) = self.members.get(&probe.target)
            && member.state.is_live()
        {
            let incarnation = member.incarnation;
            self.on_suspect(probe.target, incarnation, self.me.clone(), now);
        }
    }

    fn next_probe_target(&mut self) -> Option<NodeName> {
        // Each pass visits every live member once, in a fresh random order.
        for _ in 0..2 {
            while self.probe_next < self.probe_order.len() {
                let name = self.probe_order[self.probe_next].clone();
                self.probe_next += 1;
                if self.members.get(&name).is_some_and(|m| m.state.is_live()) {
                    return Some(name);
                }
            }
            let mut order: Vec<NodeName> = self.members.live_names().cloned().collect();
            shuffle(&mut self.rng, &mut order);
            self.probe_order = order;
            self.probe_next = 0;
        }
        None
    }

    fn on_probe_timeout(&mut self, seq: u32) {
        let Some(probe) = &self.probe else { return };
        if probe.seq != seq || probe.acked {
            return;
        }
        let target = probe.target.clone();
        let Some(target_addr) = self.members.get(&target).map(|m| m.addr) else {
            return;
        };
        let members = &self.members;
        let chosen: Vec<(NodeName, SocketAddr)> = members
            .sample_live(&mut self.rng, self.config.indirect_checks, |name, m| {
                *name != target && m.state == MemberState::Alive
            })
            .into_iter()
            .filter_map(|name| members.get(&name).map(|m| (name, m.addr)))
            .collect();
        if let Some(probe) = &mut self.probe {
            probe.intermediaries = chosen.iter().map(|(name, _)| name.clone()).collect();
        }
        for (name, addr) in chosen {
            let ping_req = Probe::PingReq {
                seq,
                addr: self.addr,
                target: target.clone(),
                target_addr,
            };
            self.send_datagram(
                Target {
                    addr,
                    name: Some(name),
                },
                ping_req,
                None,
            );
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    // ----- datagrams -----

    fn on_datagram(&mut self, from: NodeName, datagram: Datagram, now: Time) {
        for update in datagram.updates {
            self.apply_update(update, now);
        }
        match datagram.probe {
            Probe::Gossip => {}
            Probe::Ping { seq, addr } => {
                self.send_datagram(
                    Target {
                        addr,
                        name: Some(from),
                    },
                    Probe::Ack { seq },
                    None,
                );
            }
            Probe::Ack { seq } => self.on_ack(from, seq),
            Probe::PingReq {
                seq,
                addr,
                target,
                target_addr,
            } => {
                if target == self.me {
                    self.send_datagram(
                        Target {
                            addr,
                            name: Some(from),
                        },
                        Probe::Ack { seq },
                        None,
                    );
                } else if self.relays.len() >= self.config.indirect_pending_max {
                    self.counters.ping_reqs_dropped += 1;
                } else {
                    let relay_seq = self.next_seq();
                    self.relays.insert(
                        relay_seq,
                        Relay {
                            requester: from,
                            addr,
                            seq,
                            target: target.clone(),
                        },
                    );
                    // Nack before the requester's period ends, so the Nack proves our health in time.
                    let nack_at = now + self.config.probe_timeout.mul_f64(0.8);
                    self.schedule(nack_at, Timer::Relay { seq: relay_seq });
                    let ping = Probe::Ping {
                        seq: relay_seq,
                        addr: self.addr,
                    };
                    self.send_datagram(
                        Target {
                            addr: target_addr,
                            name: Some(target),
                        },
                        ping,
                        None,
                    );
                }
            }
            Probe::Nack { seq } => {
                if let Some(probe) = &mut self.probe
                    && probe.seq == seq
                    && probe.intermediaries.contains(&from)
                {
                    probe.nacks.insert(from);
                }
            }
        }
    }

    fn on_ack(&mut self, from: NodeName, seq: u32) {
        if let Some(probe) = &mut self.probe
            && probe.seq == seq
            && !probe.acked
            && (probe.target == from || probe.intermediaries.contains(&from))
        {
            probe.acked = true;
            self.awareness = self.awareness.saturating_sub(1);
            return;
        }
        if self.relays.get(&seq).is_some_and(|r| r.target == from)
            && let Some(relay) = self.relays.remove(&seq)
        {
            let to = Target {
                addr: relay.addr,
                name: Some(relay.requester),
            };
            self.send_datagram(to, Probe::Ack { seq: relay.seq }, None);
        }
    }

    /// How many times each update is piggybacked: `retransmit_mult * ceil(log10(N + 1))`.
    fn retransmit_limit(&self) -> u32 {
        // ceil(log10(n + 1)) is the number of decimal digits of n, for n >= 1.
        let mut digits = 0u32;
        let mut n = self.live_count();
        while n > 0 {
            digits += 1;
            n /= 10;
        }
        self.config.retransmit_mult.saturating_mul(digits.max(1))
    }

    /// Live members, this node included.
    fn live_count(&self) -> usize {
        1 + self.members.live_len()
    }

    /// Sends `probe` to `to` with as many queued updates as fit; `first` goes before them.
    fn send_datagram(&mut self, to: Target, probe: Probe, first: Option<Update>) {
        let empty = Datagram {
            probe,
            updates: Vec::new(),
        };
        let mut budget = self
            .config
            .datagram_size_max
            .saturating_sub(1 + codec::body_size(&empty) + SEQ_LEN_SLACK);
        let mut updates = Vec::new();
        if let Some(update) = first {
            let size = codec::body_size(&update);
            if size <= budget {
                budget -= size;
                updates.push(update);
            }
        }
        let limit = self.retransmit_limit();
        updates.extend(self.queue.take(budget, limit));
        let bytes = codec::encode_datagram(&Datagram {
            probe: empty.probe,
            updates,
        });
        debug_assert!(bytes.len() <= self.config.datagram_size_max);
        self.push_output(Output::Datagram { to, bytes });
    }

    fn gossip_round(&mut self, now: Time) {
        if self.queue.len() == 0 {
            return;
        }
        // Recently dead members still get gossip, so a falsely accused node can refute.
        let dead_window = self.config.gossip_to_dead;
        let members = &self.members;
        self.recently_dead.retain(|name| {
            members.get(name).is_some_and(|m| {
                m.state == MemberState::Dead && now.saturating_since(m.changed_at) < dead_window
            })
        });
        let fanout = self.config.gossip_fanout;
        let mut candidates = members.sample_live(&mut self.rng, fanout, |_, _| true);
        candidates.extend(self.recently_dead.iter().cloned());
        let chosen: Vec<(NodeName, SocketAddr)> = sample(&mut self.rng, candidates, fanout)
            .into_iter()
            .filter_map(|name| members.get(&name).map(|m| (name, m.addr)))
            .collect();
        for (name, addr) in chosen {
            if self.queue.len() == 0 {
                break;
            }
            self.send_datagram(
                Target {
                    addr,
                    name: Some(name),
                },
                Probe::Gossip,
                None,
            );
        }
    }

    fn enqueue(&mut self, update: Update) {
        if self.queue.push(update, self.config.broadcast_queue_max) {
            self.counters.broadcasts_evicted += 1;
        }
    }

    fn enqueue_state(&mut self, record: StateRecord) {
        let update = Update::State(Box::new(record));
        // Entries too large for any datagram travel by anti-entropy only.
        let fits =
            1 + codec::body_size(&Datagram {
                probe: Probe::Gossip,
                updates: Vec::new(),
            }) + SEQ_LEN_SLACK
                + codec::body_size(&update)
                <= self.config.datagram_size_max;
        if fits {
            self.enqueue(update);
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

    // ----- membership rules -----

    fn apply_update(&mut self, update: Update, now: Time) {
        match update {
            Update::Alive {
                name,
                addr,
                incarnation,
            } => self.on_alive(name, addr, incarnation, now),
            Update::Suspect {
                name,
                incarnation,
                source,
            } => self.on_suspect(name, incarnation, source, now),
            Update::Dead {
                name,
                incarnation,
                source,
            } => self.on_dead(name, incarnation, source, now),
            Update::Left { name, incarnation } => self.on_left(name, incarnation, now),
            Update::State(record) => self.on_state(*record, now),
        }
    }

    /// Applies a member record from a push/pull or an anti-entropy delta. A death learned this
    /// way only raises a suspicion: the sender may be on the other side of a partition that just
    /// healed, and the accused node deserves the chance to refute.
    fn apply_record(&mut self, record: MemberRecord, from: &NodeName, now: Time) {
        let MemberRecord {
            name,
            addr,
            incarnation,
            state,
        } = record;
        match state {
            MemberState::Alive => self.on_alive(name, addr, incarnation, now),
            MemberState::Suspect | MemberState::Dead => {
                self.on_suspect(name, incarnation, from.clone(), now)
            }
            MemberState::Left => self.on_left(name, incarnation, now),
        }
    }

    fn on_alive(&mut self, name: NodeName, addr: SocketAddr, incarnation: u64, now: Time) {
        if name == self.me {
            if incarnation > self.incarnation && !self.left {
                self.refute(incarnation, now);
            }
            return;
        }
        match self.members.get_mut(&name) {
            None => {
                if self.members.len() >= self.config.members_max {
                    self.counters.members_dropped += 1;
                    return;
                }
                self.members
                    .insert(name.clone(), MemberEntry::alive(addr, incarnation, now));
                self.members.set_live(&name);
                self.add_to_probe_order(name.clone());
            }
            Some(member) => {
                if incarnation <= member.incarnation {
                    return;
                }
                let was = member.state;
                member.incarnation = incarnation;
                member.addr = addr;
                member.state = MemberState::Alive;
                member.suspicion = None;
                if was == MemberState::Alive {
                    self.refresh_digest(&name);
                    self.mark_dirty(&name);
                    self.enqueue(Update::Alive {
                        name,
                        addr,
                        incarnation,
                    });
                    return;
                }
                member.changed_at = now;
                if !was.is_live() {
                    self.members.set_live(&name);
                    self.add_to_probe_order(name.clone());
                }
            }
        }
        self.mark_dirty(&name);
        self.refresh_digest(&name);
        self.emit(Event::MemberAlive {
            node: name.clone(),
            addr,
            incarnation,
        });
        self.enqueue(Update::Alive {
            name,
            addr,
            incarnation,
        });
    }

    fn add_to_probe_order(&mut self, name: NodeName) {
        // A random slot among the members not yet probed this round, as SWIM's round-robin
        // with random insertion prescribes.
        let start = self.probe_next.min(self.probe_order.len());
        let at = self.rng.random_range(start..=self.probe_order.len());
        self.probe_order.insert(at, name);
    }

    fn suspicion_bounds(&self) -> (Duration, Duration, u32) {
        let n = self.live_count();
        let scale = (n as f64).log10().max(1.0);
        let min_micros = f64::from(self.config.suspicion_mult)
            * scale
            * micros(self.config.probe_interval) as f64;
        let min = Duration::from_micros(min_micros as u64);
        let max = min * self.config.suspicion_max_mult;
        // Only members other than the suspect and the first suspecter can confirm.
        let k = self.config.indirect_checks.min(n.saturating_sub(2));
        (min, max, u32::try_from(k).unwrap_or(u32::MAX))
    }

    fn on_suspect(&mut self, name: NodeName, incarnation: u64, source: NodeName, now: Time) {
        if name == self.me {
            if !self.left && incarnation >= self.incarnation {
                // Being suspected hints that we are the slow one: Lifeguard raises awareness.
                self.awareness_add(1);
                self.refute(incarnation, now);
            }
            return;
        }
        let (min, max, k) = self.suspicion_bounds();
        let token = self.next_token;
        let Some(member) = self.members.get_mut(&name) else {
            return;
        };
        if incarnation < member.incarnation || !member.state.is_live() {
            return;
        }
        if member.state == MemberState::Suspect && incarnation == member.incarnation {
            // A confirmation: counts only if independent and while it can still shrink the timeout.
            let Some(suspicion) = &mut member.suspicion else {
                return;
            };
            if suspicion.confirmations() >= suspicion.k
                || !suspicion.suspecters.insert(source.clone())
            {
                return;
            }
            suspicion.token = token;
            let deadline = suspicion.deadline();
            self.next_token += 1;
            self.schedule(
                deadline.max(now),
                Timer::Suspicion {
                    node: name.clone(),
                    token,
                },
            );
            self.enqueue(Update::Suspect {
                name,
                incarnation,
                source,
            });
            return;
        }
        let suspicion = Suspicion {
            started: now,
            suspecters: BTreeSet::from([source.clone()]),
            k,
            min,
            max,
            token,
        };
        let deadline = suspicion.deadline();
        member.incarnation = incarnation;
        member.state = MemberState::Suspect;
        member.changed_at = now;
        member.suspicion = Some(Box::new(suspicion));
        self.next_token += 1;
        self.refresh_digest(&name);
        self.schedule(
            deadline,
            Timer::Suspicion {
                node: name.clone(),
                token,
            },
        );
        self.urgent = true;
        self.emit(Event::MemberSuspect {
            node: name.clone(),
            incarnation,
        });
        self.enqueue(Update::Suspect {
            name,
            incarnation,
            source,
        });
    }

    fn on_suspicion_timeout(&mut self, name: NodeName, token: u64, now: Time) {
        let Some(member) = self.members.get(&name) else {
            return;
        };
        let current = member.suspicion.as_ref().is_some_and(|s| s.token == token);
        if member.state != MemberState::Suspect || !current {
            return;
        }
        let incarnation = member.incarnation;
        self.counters.deaths_declared += 1;
        self.on_dead(name, incarnation, self.me.clone(), now);
    }

    fn on_dead(&mut self, name: NodeName, incarnation: u64, source: NodeName, now: Time) {
        if name == self.me {
            if !self.left && incarnation >= self.incarnation {
                self.refute(incarnation, now);
            }
            return;
        }
        let Some(member) = self.members.get_mut(&name) else {
            return;
        };
        if incarnation < member.incarnation || !member.state.is_live() {
            return;
        }
        member.incarnation = incarnation;
        member.state = MemberState::Dead;
        member.changed_at = now;
        member.suspicion = None;
        self.members.set_not_live(&name);
        self.recently_dead.push(name.clone());
        self.mark_dirty(&name);
        self.refresh_digest(&name);
        self.urgent = true;
        self.emit(Event::MemberDead {
            node: name.clone(),
            incarnation,
        });
        self.enqueue(Update::Dead {
            name,
            incarnation,
            source,
        });
    }

    fn on_left(&mut self, name: NodeName, incarnation: u64, now: Time) {
        if name == self.me {
            // A leave from a previous life must not stick to this one.
            if !self.left && incarnation >= self.incarnation {
                self.refute(incarnation, now);
            }
            return;
        }
        let Some(member) = self.members.get_mut(&name) else {
            return;
        };
        if incarnation < member.incarnation || member.state == MemberState::Left {
            return;
        }
        member.incarnation = incarnation;
        member.state = MemberState::Left;
        member.changed_at = now;
        member.suspicion = None;
        self.members.set_not_live(&name);
        self.mark_dirty(&name);
        self.refresh_digest(&name);
        self.urgent = true;
        self.emit(Event::MemberLeft {
            node: name.clone(),
            incarnation,
        });
        self.enqueue(Update::Left { name, incarnation });
    }

    /// Claims a higher incarnation than anything said about us, and persists it so a restart
    /// starts above it.
    fn refute(&mut self, seen: u64, now: Time) {
        self.incarnation = self.incarnation.max(seen).saturating_add(1);
        self.changed_at = now;
        self.urgent = true;
        self.counters.refutations += 1;
        let me = self.me.clone();
        self.refresh_digest(&me);
        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, INCARNATION_KEY, self.incarnation.to_be_bytes());
        if self.store.write(batch).is_err() {
            // Not fatal: the next start still bumps past the stored value, and if that is lower
            // than what others saw, their news about us makes us refute again.
            self.counters.store_write_failures += 1;
        }
        let update = Update::Alive {
            name: self.me.clone(),
            addr: self.addr,
            incarnation: self.incarnation,
        };
        self.enqueue(update);
    }

    // ----- replicated state rules -----

    fn record_in_bounds(&self, record: &StateRecord) -> bool {
        !record.key.is_empty()
            && record.key.len() <= self.config.state_key_size_max
            && record
                .value
                .as_ref()
                .is_none_or(|v| v.len() <= self.config.state_value_size_max)
    }

    fn on_state(&mut self, record: StateRecord, now: Time) {
        if !self.record_in_bounds(&record) {
            self.counters.bad_records += 1;
            return;
        }
        if record.owner == self.me {
            self.on_own_record(record, now);
            return;
        }
        if !self.members.contains_key(&record.owner) {
            // Membership news comes first (and in the same anti-entropy bucket), so an entry of
            // an unknown owner is either early or about a collected member: safe to skip.
            return;
        }
        let keys_max = self.config.state_keys_max;
        let map = self.entries.entry(record.owner.clone()).or_default();
        match map.get(&record.key) {
            Some(e) if (e.generation, e.version) >= (record.generation, record.version) => return,
            None if record.value.is_none() => return,
            None if map.len() >= keys_max => {
                self.counters.state_dropped += 1;
                return;
            }
            _ => {}
        }
        let entry = Entry {
            generation: record.generation,
            version: record.version,
            value: record.value.clone(),
            changed_at: now,
        };
        self.set_entry(&record.owner, &record.key, entry);
        self.emit(Event::StateChanged {
            node: record.owner.clone(),
            key: record.key.clone(),
        });
        self.enqueue_state(record);
    }

    /// Someone holds an entry of ours that this life did not write (a previous life's key that
    /// was not written again): the owner buries it with a newer tombstone.
    fn on_own_record(&mut self, record: StateRecord, now: Time) {
        let map = self.entries.entry(self.me.clone()).or_default();
        let known = map.get(&record.key);
        if known.is_some_and(|e| (e.generation, e.version) >= (record.generation, record.version)) {
            return;
        }
        if known.is_none() && (record.value.is_none() || map.len() >= self.config.state_keys_max) {
            return;
        }
        if record.generation == self.generation {
            self.state_version = self.state_version.max(record.version);
        }
        self.write_own(record.key, None, now);
    }

    // ----- tombstones and persistence -----

    /// Tombstones are swept every eighth of their TTL (at most once per probe interval), so
    /// one lives between `tombstone_ttl` and 9/8 of it, and sweeping stays cheap.
    fn collect_interval(&self) -> Duration {
        (self.config.tombstone_ttl / 8).max(self.config.probe_interval)
    }

    /// Whether any member is dead or has left. The roster holds exactly the live members, so
    /// the common case, all live, skips scans of the whole member table.
    fn has_departed(&self) -> bool {
        self.members.len() > self.members.live_len()
    }

    fn collect_tombstones(&mut self, now: Time) {
        let ttl = self.config.tombstone_ttl;
        // Only dead and departed members expire.
        let mut expired: Vec<NodeName> = if self.has_departed() {
            self.members
                .iter()
                .filter(|(_, m)| !m.state.is_live() && now.saturating_since(m.changed_at) >= ttl)
                .map(|(name, _)| name.clone())
                .collect()
        } else {
            Vec::new()
        };
        expired.sort_unstable();
        for name in expired {
            self.members.remove(&name);
            self.entries.remove(&name);
            self.digest.forget(&name);
            self.mark_dirty(&name);
            self.counters.tombstones_collected += 1;
        }
        let mut collected = 0;
        self.entries.retain(|_, map| {
            let before = map.len();
            map.retain(|_, e| e.value.is_some() || now.saturating_since(e.changed_at) < ttl);
            collected += (before - map.len()) as u64;
            !map.is_empty()
        });
        self.counters.tombstones_collected += collected;
    }

    /// Notes that `name`'s stored record, if it has one, is out of date.
    fn mark_dirty(&mut self, name: &NodeName) {
        if self.persisted.contains(name) {
            self.dirty.insert(name.clone());
        }
    }

    /// Keeps a sample of up to `members_persisted_max` live members in the store, so a
    /// restarted node can rejoin through them: records that changed are rewritten, members that
    /// died or left are deleted, and random live members fill the free places. The first write
    /// once connected replaces the previous life's records wholesale. The cost follows churn
    /// among the sampled members, not N.
    fn persist_members(&mut self) {
        if self.full_rewrite && self.members.live_len() == 0 {
            // Keep the previous life's members: they are the way back in.
            return;
        }
        let mut batch = WriteBatch::new();
        if self.full_rewrite {
            // Keys that are not even valid names (corrupt records) go as well.
            for key in &self.stale {
                batch.delete(Table::Members, key.clone());
            }
        }
        let (mut written, mut deleted) = (Vec::new(), Vec::new());
        for name in &self.dirty {
            match self.members.get(name).filter(|m| m.state.is_live()) {
                Some(m) => {
                    batch.put(
                        Table::Members,
                        name.as_str(),
                        codec::encode_member(&m.record(name)),
                    );
                    written.push(name.clone());
                }
                None => {
                    batch.delete(Table::Members, name.as_str());
                    deleted.push(name.clone());
                }
            }
        }
        let kept = self.persisted.len().saturating_sub(deleted.len());
        let free = self.config.members_persisted_max.saturating_sub(kept);
        if free > 0 && self.members.live_len() > kept {
            let persisted = &self.persisted;
            for name in self
                .members
                .sample_live(&mut self.rng, free, |n, _| !persisted.contains(n))
            {
                if let Some(m) = self.members.get(&name) {
                    batch.put(
                        Table::Members,
                        name.as_str(),
                        codec::encode_member(&m.record(&name)),
                    );
                    written.push(name);
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        match self.store.write(batch) {
            Ok(()) => {
                if self.full_rewrite {
                    self.stale.clear();
                    self.full_rewrite = false;
                }
                for name in &deleted {
                    self.persisted.remove(name);
                }
                self.persisted.extend(written);
                self.dirty.clear();
            }
            // Stays dirty, so the next tick retries; the refill is drawn again.
            Err(_) => self.counters.store_write_failures += 1,
        }
    }

    // ----- stream messages: join push/pull and anti-entropy -----

    fn send_message(&mut self, to: Target, body: Body) {
        let bytes = codec::encode_message(&Message {
            addr: self.addr,
            body,
        });
        debug_assert!(bytes.len() <= self.config.message_size_max);
        self.push_output(Output::Message { to, bytes });
    }

    fn my_record(&self) -> MemberRecord {
        MemberRecord {
            name: self.me.clone(),
            addr: self.addr,
            incarnation: self.incarnation,
            state: if self.left {
                MemberState::Left
            } else {
                MemberState::Alive
            },
        }
    }

    fn send_push_pull(&mut self, to: Target, reply: bool) {
        let mut budget = self.config.message_size_max - MESSAGE_OVERHEAD;
        let mut truncated = false;
        let mut members = Vec::new();
        let records = std::iter::once(self.my_record())
            .chain(self.members.sorted().into_iter().map(|(n, m)| m.record(n)));
        for record in records {
            let size = codec::body_size(&record);
            if size > budget {
                truncated = true;
                break;
            }
            budget -= size;
            members.push(record);
        }
        let mut entries = Vec::new();
        'owners: for (owner, map) in &self.entries {
            for (key, e) in map {
                let record = state_record(owner, key, e);
                let size = codec::body_size(&record);
                if size > budget {
                    truncated = true;
                    break 'owners;
                }
                budget -= size;
                entries.push(record);
            }
        }
        if truncated {
            // Anti-entropy completes what did not fit.
            self.counters.messages_truncated += 1;
        }
        self.send_message(
            to,
            Body::PushPull {
                reply,
                members,
                entries,
            },
        );
    }

    fn contact_rejoin_candidates(&mut self) {
        let candidates = self.rejoin.clone();
        for (name, addr) in sample(&mut self.rng, candidates, self.config.rejoin_fanout) {
            self.send_push_pull(
                Target {
                    addr,
                    name: Some(name),
                },
                true,
            );
        }
    }

    fn reconnect(&mut self) {
        if self.left {
            return;
        }
        if self.members.live_len() == 0 {
            // Alone: a full push/pull with every seed, else with some last known members.
            let seeds: Vec<SocketAddr> = self
                .seeds
                .iter()
                .copied()
                .filter(|s| *s != self.addr)
                .collect();
            if seeds.is_empty() {
                self.contact_rejoin_candidates();
            }
            for seed in seeds {
                self.send_push_pull(
                    Target {
                        addr: seed,
                        name: None,
                    },
                    true,
                );
            }
            return;
        }
        // Connected: a cheap summary exchange with one seed and one dead member is enough to
        // notice (and then repair) a partition or an island.
        let hash = summary(&self.digest());
        let seeds: Vec<SocketAddr> = self
            .seeds
            .iter()
            .copied()
            .filter(|s| *s != self.addr)
            .collect();
        if let Some(seed) = sample(&mut self.rng, seeds, 1).pop() {
            self.send_message(
                Target {
                    addr: seed,
                    name: None,
                },
                Body::SyncSummary { hash },
            );
        }
        let mut dead: Vec<(NodeName, SocketAddr)> = if self.has_departed() {
            self.members
                .iter()
                .filter(|(_, m)| m.state == MemberState::Dead)
                .map(|(name, m)| (name.clone(), m.addr))
                .collect()
        } else {
            Vec::new()
        };
        dead.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some((name, addr)) = sample(&mut self.rng, dead, 1).pop() {
            self.send_message(
                Target {
                    addr,
                    name: Some(name),
                },
                Body::SyncSummary { hash },
            );
        }
    }

    fn start_sync(&mut self) {
        if self.left {
            return;
        }
        let members = &self.members;
        let partner = members
            .sample_live(&mut self.rng, 1, |_, m| m.state == MemberState::Alive)
            .pop()
            .and_then(|name| members.get(&name).map(|m| (name, m.addr)));
        if let Some((name, addr)) = partner {
            let hash = summary(&self.digest());
            self.send_message(
                Target {
                    addr,
                    name: Some(name),
                },
                Body::SyncSummary { hash },
            );
        }
    }

    fn bucket_of(&self, name: &NodeName) -> u16 {
        self.digest.bucket_of(name)
    }

    fn digest(&self) -> Vec<u64> {
        self.digest.buckets().to_vec()
    }

    /// Brings `owner`'s contribution to the digest up to date after a change of its liveness,
    /// incarnation or entries.
    fn refresh_digest(&mut self, owner: &NodeName) {
        if *owner == self.me {
            let live_incarnation = (!self.left).then_some(self.incarnation);
            self.digest
                .set_owner(owner, live_incarnation, &mut self.own_digested);
        } else if let Some(m) = self.members.get_mut(owner) {
            let live_incarnation = m.state.is_live().then_some(m.incarnation);
            self.digest
                .set_owner(owner, live_incarnation, &mut m.digested);
        }
    }

    /// Stores an entry and keeps the digest in step.
    fn set_entry(&mut self, owner: &NodeName, key: &str, entry: Entry) {
        let new = entry_hash(
            owner,
            key,
            entry.generation,
            entry.version,
            entry.value.is_some(),
        );
        let old = self
            .entries
            .entry(owner.clone())
            .or_default()
            .insert(key.to_owned(), entry)
            .map_or(0, |e| {
                entry_hash(owner, key, e.generation, e.version, e.value.is_some())
            });
        self.digest.entry_changed(owner, old, new);
        self.refresh_digest(owner);
    }

    /// The digest recomputed from scratch, to check the incremental one.
    #[cfg(test)]
    fn digest_recomputed(&self) -> Vec<u64> {
        let mut check = Digest::new(self.config.sync_buckets);
        for (owner, map) in &self.entries {
            for (key, e) in map {
                let hash = entry_hash(owner, key, e.generation, e.version, e.value.is_some());
                check.entry_changed(owner, 0, hash);
            }
        }
        check.set_owner(&self.me, (!self.left).then_some(self.incarnation), &mut 0);
        for (name, m) in self.members.iter() {
            check.set_owner(name, m.state.is_live().then_some(m.incarnation), &mut 0);
        }
        check.buckets().to_vec()
    }

    /// Records of the given buckets (members first, then their entries, tombstones included),
    /// whole buckets only while they fit in the message budget.
    fn bucket_records(
        &self,
        wanted: &[u16],
    ) -> (Vec<u16>, Vec<MemberRecord>, Vec<StateRecord>, bool) {
        let wanted_set: BTreeSet<u16> = wanted.iter().copied().collect();
        let mut per_bucket: BTreeMap<u16, (Vec<MemberRecord>, Vec<StateRecord>)> = BTreeMap::new();
        // Members of the wanted buckets in name order; sorting only those keeps a sync of a
        // few buckets from paying for a sort of the whole table.
        let mut chosen: Vec<_> = self
            .members
            .iter()
            .filter(|(n, _)| wanted_set.contains(&self.bucket_of(n)))
            .collect();
        chosen.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let all =
            std::iter::once(self.my_record()).chain(chosen.into_iter().map(|(n, m)| m.record(n)));
        for record in all {
            let bucket = self.bucket_of(&record.name);
            if !wanted_set.contains(&bucket) {
                continue;
            }
            let slot = per_bucket.entry(bucket).or_default();
            for (key, e) in self.entries.get(&record.name).into_iter().flatten() {
                slot.1.push(state_record(&record.name, key, e));
            }
            slot.0.push(record);
        }
        let mut budget = self.config.message_size_max - MESSAGE_OVERHEAD;
        let (mut covered, mut members, mut entries) = (Vec::new(), Vec::new(), Vec::new());
        let mut truncated = false;
        for bucket in wanted {
            let (bucket_members, bucket_entries) = per_bucket.remove(bucket).unwrap_or_default();
            let size = 3
                + bucket_members.iter().map(codec::body_size).sum::<usize>()
                + bucket_entries.iter().map(codec::body_size).sum::<usize>();
            if size > budget {
                truncated = true;
                continue;
            }
            budget -= size;
            covered.push(*bucket);
            members.extend(bucket_members);
            entries.extend(bucket_entries);
        }
        (covered, members, entries, truncated)
    }

    fn on_message(&mut self, from: NodeName, message: Message, now: Time) {
        let reply_to = Target {
            addr: message.addr,
            name: Some(from.clone()),
        };
        match message.body {
            Body::PushPull {
                reply,
                members,
                entries,
            } => {
                self.apply_records(&from, members, entries, now);
                if reply {
                    self.send_push_pull(reply_to, false);
                }
            }
            Body::SyncSummary { hash } => {
                let digest = self.digest();
                if summary(&digest) != hash {
                    self.send_message(reply_to, Body::SyncBuckets { hashes: digest });
                }
            }
            Body::SyncBuckets { hashes } => {
                if hashes.len() != usize::from(self.config.sync_buckets) {
                    self.counters.bad_frames += 1;
                    return;
                }
                let digest = self.digest();
                let mut differing: Vec<u16> = (0..self.config.sync_buckets)
                    .filter(|&b| hashes.get(usize::from(b)) != digest.get(usize::from(b)))
                    .collect();
                if differing.is_empty() {
                    return;
                }
                // A random order, so a delta too big for one message covers other buckets next time.
                shuffle(&mut self.rng, &mut differing);
                let (buckets, members, entries, truncated) = self.bucket_records(&differing);
                if truncated {
                    self.counters.messages_truncated += 1;
                }
                self.send_message(
                    reply_to,
                    Body::SyncDelta {
                        reply: true,
                        buckets,
                        members,
                        entries,
                    },
                );
            }
            Body::SyncDelta {
                reply,
                buckets,
                members,
                entries,
            } => {
                if buckets.iter().any(|b| *b >= self.config.sync_buckets) {
                    self.counters.bad_frames += 1;
                    return;
                }
                let theirs_members: BTreeMap<NodeName, (u64, u8)> = members
                    .iter()
                    .map(|r| (r.name.clone(), (r.incarnation, r.state.rank())))
                    .collect();
                let theirs_entries: BTreeMap<(NodeName, String), (u64, u64)> = entries
                    .iter()
                    .map(|r| ((r.owner.clone(), r.key.clone()), (r.generation, r.version)))
                    .collect();
                self.apply_records(&from, members, entries, now);
                if !reply {
                    return;
                }
                let (buckets, mut members, mut entries, truncated) = self.bucket_records(&buckets);
                if truncated {
                    self.counters.messages_truncated += 1;
                }
                // Send back only what the other side lacks or holds in an older version.
                members.retain(|r| {
                    theirs_members
                        .get(&r.name)
                        .is_none_or(|v| *v < (r.incarnation, r.state.rank()))
                });
                entries.retain(|r| {
                    theirs_entries
                        .get(&(r.owner.clone(), r.key.clone()))
                        .is_none_or(|v| *v < (r.generation, r.version))
                });
                if !members.is_empty() || !entries.is_empty() {
                    let body = Body::SyncDelta {
                        reply: false,
                        buckets,
                        members,
                        entries,
                    };
                    self.send_message(reply_to, body);
                }
            }
        }
    }

    fn apply_records(
        &mut self,
        from: &NodeName,
        members: Vec<MemberRecord>,
        entries: Vec<StateRecord>,
        now: Time,
    ) {
        for record in members {
            self.apply_record(record, from, now);
        }
        for record in entries {
            self.on_state(record, now);
        }
    }
}

fn state_record(owner: &NodeName, key: &str, e: &Entry) -> StateRecord {
    StateRecord {
        owner: owner.clone(),
        key: key.to_owned(),
        generation: e.generation,
        version: e.version,
        value: e.value.clone(),
    }
}

/// Lifeguard's suspicion timeout after `c` of `k` expected confirmations: from `max` down to
/// `min`, logarithmically, so the first confirmations shorten it the most.
fn suspicion_timeout(min: Duration, max: Duration, k: u32, c: u32) -> Duration {
    if k == 0 || c >= k {
        return min;
    }
    let frac = f64::from(c + 1).ln() / f64::from(k + 1).ln();
    let span = micros(max.saturating_sub(min)) as f64;
    let timeout = micros(max) as f64 - frac * span;
    Duration::from_micros(timeout.max(micros(min) as f64) as u64)
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

mod broadcast;
mod digest;
mod members;

#[cfg(test)]
mod tests;
