//! Pods, the reciprocal peer handshake and acknowledged delivery, as a state machine.
//!
//! Each node owns its Pods' records. A peer relation between Pods on two nodes is recorded on
//! both sides by a two-phase exchange with presumed abort, coordinated by the requesting Pod's
//! node:
//!
//! 1. The coordinator durably logs its intent (`Preparing`, with whether the relation existed).
//! 2. It sends `Prepare`; the participant checks the target Pod and, in one transaction, changes
//!    the target's peers and logs its own entry (with whether the relation existed), then answers
//!    `Prepared`, or `Rejected` with nothing changed.
//! 3. On `Prepared` the coordinator, in one transaction, changes the source Pod's peers and marks
//!    the intent `Committed`; only then is success reported. It sends `Commit` until
//!    acknowledged, then drops its entry; the participant drops its entry before acknowledging.
//! 4. `Rejected` leaves both sides as they were. No answer in time means abort: the coordinator
//!    never changed its Pod, marks the intent `Aborting` and sends `Abort` until acknowledged; the
//!    participant puts the one relation back as it was. An unknown id is answered "aborted".
//! 5. After a crash, a `Preparing` intent is aborted and a `Committed` one re-sends `Commit`; a
//!    participant that waits too long asks the coordinator (`Query`).
//!
//! Requests on one pair of Pods are serialised: a second one gets `busy`. Every request to another
//! node is an RPC ([`PeersOutput::Request`]): the driver carries it on a bidirectional stream and
//! feeds the answer back with [`Peers::handle_response`], or `None` when the transport failed.
//! The machine keeps its own deadline for every RPC, so a lost answer is a timeout, never a hang.
//!
//! Messages between peers (`Deliver`) are stored durably in the receiver's inbox, deduplicated
//! by id, before `Delivered` is answered; the receiver checks that the sender, whose node name
//! the transport authenticated, is a peer of the target Pod.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::pod::{PodAddr, PodName, PodRecord, PodStatus};
use crate::store::{Store, Table, WriteBatch};
use crate::{NodeName, Time};

/// Bounds and timing of the Pod and peer protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersConfig {
    /// How long an RPC may take before it counts as failed. A handshake whose `Prepare` gets no
    /// answer in this time is aborted; raise it on slow links.
    pub rpc_timeout: Duration,
    /// Pause between re-sends of `Commit` and `Abort` until they are acknowledged.
    pub resend_interval: Duration,
    /// How long a participant waits for the outcome before it asks the coordinator.
    pub participant_wait: Duration,
    /// Attempts to deliver one message before the sender is told `unreachable`.
    pub delivery_attempts: u32,
    /// Largest message body, in bytes (64 KiB: messages are notifications, not bulk data).
    pub message_size_max: usize,
    /// Messages one inbox holds; a full inbox refuses with `inbox_full`, never drops.
    pub inbox_len_max: usize,
    /// Message ids remembered for deduplication, per node (oldest forgotten first). Must exceed
    /// the messages a sender can retry within its attempts.
    pub dedupe_ids_max: usize,
    /// Pods one node hosts.
    pub pods_max: usize,
    /// Peers one Pod has. With `children_per_pod_max` it keeps a Pod record, gossiped as one
    /// state value, under `Config::state_value_size_max` (16 KiB): a peer address takes at most
    /// 130 bytes, a child name 65.
    pub peers_per_pod_max: usize,
    /// Spawned children one Pod keeps, and reclaimed children it remembers (the oldest by name
    /// forgotten first).
    pub children_per_pod_max: usize,
    /// Handshakes in progress (coordinator and participant entries together).
    pub handshakes_max: usize,
    /// Outputs queued for the driver; past it the oldest requests are dropped (they time out
    /// and are retried like any lost message).
    pub output_queue_max: usize,
}

impl Default for PeersConfig {
    fn default() -> Self {
        PeersConfig {
            rpc_timeout: Duration::from_secs(3),
            resend_interval: Duration::from_secs(1),
            participant_wait: Duration::from_secs(10),
            delivery_attempts: 3,
            message_size_max: 64 * 1024,
            inbox_len_max: 1024,
            dedupe_ids_max: 16 * 1024,
            // One replicated state key per Pod, under `Config::state_keys_max` (1024) with room
            // for the node's own keys.
            pods_max: 1000,
            peers_per_pod_max: 64,
            children_per_pod_max: 32,
            handshakes_max: 256,
            output_queue_max: 4096,
        }
    }
}

/// Error codes shared with the local API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request or invalid parameters.
    InvalidRequest,
    /// The Pod is running and cannot change its peers now.
    AlreadyRunning,
    /// A Pod, node or method does not exist.
    NotFound,
    /// The target is not live.
    NotLive,
    /// The target's node cannot be reached.
    Unreachable,
    /// Another request on the same pair is in progress.
    Busy,
    /// The target's inbox is full.
    InboxFull,
    /// Something failed inside the node (a store write, for instance).
    Internal,
}

/// A refused or failed Pod operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct PeerError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// A lowercase explanation.
    pub message: String,
}

impl PeerError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        PeerError {
            code,
            message: message.into(),
        }
    }
}

/// A globally unique id: the issuing node, its incarnation and a counter.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The issuing node.
    pub node: NodeName,
    /// Its incarnation when it issued the id.
    pub incarnation: u64,
    /// A counter within that incarnation.
    pub seq: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}",
            self.node.as_str(),
            self.incarnation,
            self.seq
        )
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Whether a handshake adds or removes the relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerOp {
    /// `register_peer`.
    Register,
    /// `unregister_peer`.
    Unregister,
}

impl PeerOp {
    fn wanted(self) -> bool {
        self == PeerOp::Register
    }
}

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Phase one: change `target`'s peers provisionally.
    Prepare {
        /// Handshake id.
        id: RequestId,
        /// The requesting Pod; its node must be the authenticated sender.
        source: PodAddr,
        /// The Pod on the receiving node.
        target: PodName,
        /// Add or remove.
        op: PeerOp,
    },
    /// The handshake committed.
    Commit {
        /// Handshake id.
        id: RequestId,
    },
    /// The handshake aborted.
    Abort {
        /// Handshake id.
        id: RequestId,
    },
    /// A participant asks the coordinator for the outcome.
    Query {
        /// Handshake id.
        id: RequestId,
    },
    /// A message from a Pod of the sending node to a peer Pod of the receiving node.
    Deliver {
        /// Message id, for deduplication.
        id: RequestId,
        /// The sending Pod (its node is the authenticated sender).
        from: PodName,
        /// The receiving Pod.
        to: PodName,
        /// The message.
        body: String,
    },
}

impl PeerRequest {
    /// Encodes the request as the peer protocol sends it.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode_peer(self)
    }

    /// Decodes a request of at most `limit` bytes; never panics on arbitrary bytes.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<Self, crate::DecodeError> {
        codec::decode_peer(bytes, limit)
    }
}

impl PeerResponse {
    /// Decodes an answer; never panics on arbitrary bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        codec::decode_peer(bytes, RESPONSE_SIZE_MAX)
    }
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// `Prepare` applied and logged.
    Prepared,
    /// `Prepare` or `Deliver` refused; nothing changed.
    Rejected(PeerError),
    /// `Commit` or `Abort` applied (or already applied).
    Acked,
    /// The outcome of a handshake, for `Query`.
    Outcome {
        /// Whether it committed.
        committed: bool,
    },
    /// The message is in the inbox.
    Delivered,
}

/// A local operation, from the local API or a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOp {
    /// Create a Pod, optionally as a spawned child of a local parent.
    CreatePod {
        /// Its name.
        name: PodName,
        /// The parent, on this node.
        parent: Option<PodName>,
    },
    /// Remove a Pod that has no peers.
    RemovePod {
        /// Its name.
        name: PodName,
    },
    /// Set a Pod's status.
    SetStatus {
        /// The Pod.
        name: PodName,
        /// The new status.
        status: PodStatus,
    },
    /// Make `pod` and `target` peers.
    RegisterPeer {
        /// The local Pod.
        pod: PodName,
        /// The other Pod, anywhere.
        target: PodAddr,
    },
    /// Undo a peer relation.
    UnregisterPeer {
        /// The local Pod.
        pod: PodName,
        /// The other Pod, anywhere.
        target: PodAddr,
    },
    /// Send a message from `pod` to its peer `target`.
    Send {
        /// The local sending Pod.
        pod: PodName,
        /// The peer.
        target: PodAddr,
        /// The message.
        body: String,
        /// Whether the driver sees the target live (its node alive, the Pod not stopped).
        live: bool,
    },
    /// Read (and optionally remove) a Pod's inbox.
    Inbox {
        /// The Pod.
        pod: PodName,
        /// Remove what is returned.
        drain: bool,
    },
}

/// A message in an inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// Message id.
    pub id: RequestId,
    /// The sending Pod, as authenticated.
    pub from: PodAddr,
    /// The message.
    pub body: String,
    /// Receive time, milliseconds since the Unix epoch as the driver reported it.
    pub received_at_ms: u64,
}

/// The successful result of a [`LocalOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalReply {
    /// The Pod's record after the change.
    Pod(PodRecord),
    /// The Pod was removed.
    Removed,
    /// The relation is recorded on both sides.
    PeerRegistered {
        /// The requesting Pod.
        source: PodAddr,
        /// The other Pod.
        peer: PodAddr,
    },
    /// The relation is removed on both sides.
    PeerUnregistered {
        /// The requesting Pod.
        source: PodAddr,
        /// The other Pod.
        peer: PodAddr,
    },
    /// The message is stored in the peer's inbox.
    Delivered {
        /// Message id.
        id: RequestId,
    },
    /// Inbox contents, oldest first.
    Inbox(Vec<InboxEntry>),
}

/// Something that happened to a local Pod, for clients attached to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodEvent {
    /// A relation of `pod` was recorded on both sides.
    PeerRegistered {
        /// The local Pod concerned.
        pod: PodName,
        /// The Pod that asked.
        source: PodAddr,
        /// The Pod asked.
        peer: PodAddr,
    },
    /// A relation of `pod` was removed on both sides.
    PeerUnregistered {
        /// The local Pod concerned.
        pod: PodName,
        /// The Pod that asked.
        source: PodAddr,
        /// The Pod asked.
        peer: PodAddr,
    },
    /// A message arrived in `pod`'s inbox.
    Notification {
        /// The receiving Pod.
        pod: PodName,
        /// The message.
        entry: InboxEntry,
    },
    /// `pod`'s status changed.
    StatusChanged {
        /// The Pod.
        pod: PodName,
        /// Its new status.
        status: PodStatus,
    },
}

/// What the driver must do, from [`Peers::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeersOutput {
    /// Send `bytes` (an encoded [`PeerRequest`]) to `to` and feed the answer back with
    /// [`Peers::handle_response`] under `rpc`.
    Request {
        /// RPC number, local to this node.
        rpc: u64,
        /// The node.
        to: NodeName,
        /// The encoded request.
        bytes: Vec<u8>,
    },
    /// The result of the local operation submitted with `token`.
    Reply {
        /// The caller's token.
        token: u64,
        /// The result.
        result: Result<LocalReply, PeerError>,
    },
    /// Gossip this Pod's record (or its removal) as replicated state.
    Publish {
        /// The Pod.
        pod: PodName,
        /// Its record, or `None` when removed.
        record: Option<PodRecord>,
    },
    /// Tell clients attached to a local Pod.
    Event(PodEvent),
}

/// Phase of a coordinator entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    Preparing,
    Committed,
    Aborting,
}

/// The coordinator's durable log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CoordEntry {
    id: RequestId,
    source: PodAddr,
    target: PodAddr,
    op: PeerOp,
    had_before: bool,
    phase: Phase,
}

/// The participant's durable log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartEntry {
    id: RequestId,
    source: PodAddr,
    target: PodName,
    op: PeerOp,
    had_before: bool,
}

/// What an RPC in flight is for.
#[derive(Debug, Clone)]
enum Rpc {
    Prepare {
        id: RequestId,
    },
    Commit {
        id: RequestId,
    },
    Abort {
        id: RequestId,
    },
    Query {
        id: RequestId,
    },
    Deliver {
        token: u64,
        id: RequestId,
        to: NodeName,
        bytes: Vec<u8>,
        attempt: u32,
        target: PodAddr,
    },
}

#[derive(Debug, Clone)]
enum Timer {
    RpcDeadline { rpc: u64 },
    Resend { id: RequestId },
    Wait { id: RequestId },
}

const COORD_PREFIX: u8 = b'c';
const PART_PREFIX: u8 = b'p';
const MESSAGE_PREFIX: u8 = b'm';
const DEDUPE_PREFIX: u8 = b'd';
const COUNTER_KEY: &[u8] = b"peers/seq";

fn id_key(prefix: u8, id: &RequestId) -> Vec<u8> {
    let mut key = vec![prefix];
    key.extend_from_slice(id.to_string().as_bytes());
    key
}

fn message_key(pod: &PodName, seq: u64) -> Vec<u8> {
    let mut key = vec![MESSAGE_PREFIX];
    key.extend_from_slice(pod.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Counters of the Pod and peer protocols.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeersCounters {
    /// Requests that failed to decode.
    pub bad_requests: u64,
    /// Answers that failed to decode.
    pub bad_responses: u64,
    /// Requests whose claimed node differs from the authenticated sender.
    pub identity_mismatches: u64,
    /// Store writes that failed.
    pub store_write_failures: u64,
    /// Outputs dropped because the queue was full.
    pub outputs_dropped: u64,
    /// Handshakes committed as coordinator.
    pub handshakes_committed: u64,
    /// Handshakes aborted as coordinator.
    pub handshakes_aborted: u64,
    /// Messages stored in local inboxes.
    pub messages_delivered: u64,
    /// Duplicate deliveries answered without storing again.
    pub duplicates: u64,
}

/// The Pod and peer state machine of one node.
///
/// It does no IO: durable state goes through the [`Store`] passed to each call (the same store
/// the membership core uses), time is an argument, and everything to send comes out of
/// [`Peers::poll_output`].
#[derive(Debug)]
pub struct Peers {
    me: NodeName,
    incarnation: u64,
    config: PeersConfig,
    pods: BTreeMap<PodName, PodRecord>,
    coordinating: BTreeMap<RequestId, CoordEntry>,
    /// Local operations waiting for a handshake's outcome, by handshake id.
    waiting: BTreeMap<RequestId, u64>,
    participating: BTreeMap<RequestId, PartEntry>,
    inboxes: BTreeMap<PodName, VecDeque<u64>>,
    inbox_seq: u64,
    dedupe: BTreeSet<RequestId>,
    dedupe_order: VecDeque<RequestId>,
    seq: u64,
    rpcs: BTreeMap<u64, Rpc>,
    next_rpc: u64,
    timers: BTreeMap<(Time, u64), Timer>,
    timer_seq: u64,
    outputs: VecDeque<PeersOutput>,
    counters: PeersCounters,
}

impl Peers {
    /// Loads the Pods, logs and inbox indexes of node `me` (now at `incarnation`) from `store`,
    /// and resumes every handshake the logs show unfinished.
    pub fn load(
        me: NodeName,
        incarnation: u64,
        config: PeersConfig,
        store: &impl Store,
        now: Time,
    ) -> Result<Self, crate::Error> {
        let mut peers = Peers {
            me,
            incarnation,
            config,
            pods: BTreeMap::new(),
            coordinating: BTreeMap::new(),
            waiting: BTreeMap::new(),
            participating: BTreeMap::new(),
            inboxes: BTreeMap::new(),
            inbox_seq: 0,
            dedupe: BTreeSet::new(),
            dedupe_order: VecDeque::new(),
            seq: 0,
            rpcs: BTreeMap::new(),
            next_rpc: 0,
            timers: BTreeMap::new(),
            timer_seq: 0,
            outputs: VecDeque::new(),
            counters: PeersCounters::default(),
        };
        for (_, value) in store.scan(Table::Pods)? {
            let record: PodRecord = codec::decode_record(&value)?;
            peers.pods.insert(record.name.clone(), record);
        }
        let mut dedupe: Vec<(u64, RequestId)> = Vec::new();
        for (key, value) in store.scan(Table::Inboxes)? {
            match key.first() {
                Some(&MESSAGE_PREFIX) => {
                    let seq = key
                        .len()
                        .checked_sub(8)
                        .and_then(|at| key.get(at..))
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                        .unwrap_or(0);
                    let pod = key
                        .get(1..key.len().saturating_sub(9))
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .and_then(|s| s.parse::<PodName>().ok());
                    if let Some(pod) = pod {
                        peers.inboxes.entry(pod).or_default().push_back(seq);
                    }
                    peers.inbox_seq = peers.inbox_seq.max(seq + 1);
                }
                Some(&DEDUPE_PREFIX) => {
                    let (order, id): (u64, RequestId) = codec::decode_record(&value)?;
                    dedupe.push((order, id));
                }
                _ => {}
            }
        }
        dedupe.sort();
        for (order, id) in dedupe {
            peers.inbox_seq = peers.inbox_seq.max(order + 1);
            peers.dedupe.insert(id.clone());
            peers.dedupe_order.push_back(id);
        }
        for (key, value) in store.scan(Table::Handshakes)? {
            match key.first() {
                Some(&COORD_PREFIX) => {
                    let entry: CoordEntry = codec::decode_record(&value)?;
                    peers.coordinating.insert(entry.id.clone(), entry);
                }
                Some(&PART_PREFIX) => {
                    let entry: PartEntry = codec::decode_record(&value)?;
                    peers.participating.insert(entry.id.clone(), entry);
                }
                _ => {}
            }
        }
        if let Some(bytes) = store.read(Table::Meta, COUNTER_KEY)? {
            peers.seq = codec::decode_record(&bytes)?;
        }
        peers.resume(now);
        // A new life starts a new generation of replicated state, and the mesh buries the
        // previous life's entries it hears about: gossip every Pod record again.
        let records: Vec<PodRecord> = peers.pods.values().cloned().collect();
        for record in records {
            peers.publish(record);
        }
        Ok(peers)
    }

    /// Resumes unfinished handshakes after a restart: presumed abort for intents that never
    /// committed, re-sent `Commit` for those that did, and a wait (then `Query`) for every
    /// participant entry.
    fn resume(&mut self, now: Time) {
        let ids: Vec<RequestId> = self.coordinating.keys().cloned().collect();
        for id in ids {
            let Some(entry) = self.coordinating.get_mut(&id) else {
                continue;
            };
            if entry.phase == Phase::Preparing {
                // The new phase is written lazily by the next store call; until then a second
                // crash simply resumes here again, with the same outcome.
                entry.phase = Phase::Aborting;
            }
            self.schedule(now, Timer::Resend { id });
        }
        let ids: Vec<RequestId> = self.participating.keys().cloned().collect();
        for id in ids {
            self.schedule(now + self.config.participant_wait, Timer::Wait { id });
        }
    }

    /// This node's Pods.
    pub fn pods(&self) -> impl Iterator<Item = &PodRecord> {
        self.pods.values()
    }

    /// One local Pod.
    pub fn pod(&self, name: &PodName) -> Option<&PodRecord> {
        self.pods.get(name)
    }

    /// Handshakes this node coordinates or takes part in, still logged.
    pub fn handshakes_logged(&self) -> usize {
        self.coordinating.len() + self.participating.len()
    }

    /// The Pod pairs of every logged handshake, as (requesting Pod, asked Pod), whether this
    /// node coordinates it or takes part in it. Empty once every handshake has settled.
    pub fn handshake_pairs(&self) -> Vec<(PodAddr, PodAddr)> {
        let coordinating = self
            .coordinating
            .values()
            .map(|e| (e.source.clone(), e.target.clone()));
        let participating = self.participating.values().map(|e| {
            let target = PodAddr {
                pod: e.target.clone(),
                node: self.me.clone(),
            };
            (e.source.clone(), target)
        });
        coordinating.chain(participating).collect()
    }

    /// Every message in the inboxes of `store`, by receiving Pod, oldest first. For checkers
    /// that look at a node's durable state while it is down.
    pub fn stored_inboxes(store: &impl Store) -> Result<Vec<(PodName, InboxEntry)>, crate::Error> {
        let mut out = Vec::new();
        for (key, value) in store.scan(Table::Inboxes)? {
            if key.first() != Some(&MESSAGE_PREFIX) {
                continue;
            }
            let pod = key
                .get(1..key.len().saturating_sub(9))
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<PodName>().ok());
            if let Some(pod) = pod {
                out.push((pod, codec::decode_record::<InboxEntry>(&value)?));
            }
        }
        Ok(out)
    }

    /// Counters.
    pub fn counters(&self) -> PeersCounters {
        self.counters
    }

    /// The configuration.
    pub fn config(&self) -> &PeersConfig {
        &self.config
    }

    /// The earliest time [`Peers::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.keys().next().map(|(t, _)| *t)
    }

    /// The next output for the driver.
    pub fn poll_output(&mut self) -> Option<PeersOutput> {
        self.outputs.pop_front()
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time, store: &mut impl Store) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            match timer {
                Timer::RpcDeadline { rpc } => {
                    if self.rpcs.contains_key(&rpc) {
                        self.handle_answer(rpc, None, now, store);
                    }
                }
                Timer::Resend { id } => self.resend(&id, now, store),
                Timer::Wait { id } => {
                    if self.participating.contains_key(&id) {
                        let coordinator = id.node.clone();
                        self.send_rpc(
                            coordinator,
                            PeerRequest::Query { id: id.clone() },
                            Rpc::Query { id },
                            now,
                        );
                    }
                }
            }
        }
    }

    /// Runs a local operation; its result comes out as [`PeersOutput::Reply`] with `token`,
    /// at once or when the handshake or delivery finishes.
    pub fn handle_local(
        &mut self,
        token: u64,
        op: LocalOp,
        now: Time,
        wall_ms: u64,
        store: &mut impl Store,
    ) {
        let result = match op {
            LocalOp::CreatePod { name, parent } => self.create_pod(name, parent, store),
            LocalOp::RemovePod { name } => self.remove_pod(&name, store),
            LocalOp::SetStatus { name, status } => self.set_status(&name, status, store),
            LocalOp::RegisterPeer { pod, target } => {
                self.handshake(token, pod, target, PeerOp::Register, now, store)
            }
            LocalOp::UnregisterPeer { pod, target } => {
                self.handshake(token, pod, target, PeerOp::Unregister, now, store)
            }
            LocalOp::Send {
                pod,
                target,
                body,
                live,
            } => self.send(token, pod, target, body, live, now, wall_ms, store),
            LocalOp::Inbox { pod, drain } => self.inbox(&pod, drain, store),
        };
        if let Some(result) = result {
            self.push(PeersOutput::Reply { token, result });
        }
    }

    /// Answers a request from node `from` (authenticated by the transport). The returned bytes
    /// are the encoded [`PeerResponse`]; a request that does not decode gets `None` and is
    /// counted, and the driver closes that stream.
    pub fn handle_request(
        &mut self,
        from: &NodeName,
        bytes: &[u8],
        now: Time,
        wall_ms: u64,
        store: &mut impl Store,
    ) -> Option<Vec<u8>> {
        let limit = self.config.message_size_max + REQUEST_OVERHEAD_MAX;
        let request: PeerRequest = match codec::decode_peer(bytes, limit) {
            Ok(request) => request,
            Err(_) => {
                self.counters.bad_requests += 1;
                return None;
            }
        };
        let response = self.answer(from, request, now, wall_ms, store);
        Some(codec::encode_peer(&response))
    }

    /// Feeds the answer to RPC `rpc`: the encoded response, or `None` when the transport could
    /// not deliver the request or read the answer.
    pub fn handle_response(
        &mut self,
        rpc: u64,
        bytes: Option<&[u8]>,
        now: Time,
        store: &mut impl Store,
    ) {
        let response = match bytes.map(|b| codec::decode_peer::<PeerResponse>(b, RESPONSE_SIZE_MAX))
        {
            Some(Ok(response)) => Some(response),
            Some(Err(_)) => {
                self.counters.bad_responses += 1;
                None
            }
            None => None,
        };
        self.handle_answer(rpc, response, now, store);
    }

    fn handle_answer(
        &mut self,
        rpc: u64,
        response: Option<PeerResponse>,
        now: Time,
        store: &mut impl Store,
    ) {
        let Some(kind) = self.rpcs.remove(&rpc) else {
            return; // An answer after its deadline, or a duplicate: the outcome is settled.
        };
        match kind {
            Rpc::Prepare { id } => self.on_prepare_answer(&id, response, now, store),
            Rpc::Commit { id } | Rpc::Abort { id } => {
                if response == Some(PeerResponse::Acked) {
                    self.finish_coordinator(&id, now, store);
                } else {
                    self.schedule(now + self.config.resend_interval, Timer::Resend { id });
                }
            }
            Rpc::Query { id } => match response {
                Some(PeerResponse::Outcome { committed }) => {
                    if !self.settle_participant(&id, committed, store) {
                        // The outcome is known but could not be written: ask again soon.
                        self.schedule(now + self.config.resend_interval, Timer::Wait { id });
                    }
                }
                _ => self.schedule(now + self.config.participant_wait, Timer::Wait { id }),
            },
            Rpc::Deliver {
                token,
                id,
                to,
                bytes,
                attempt,
                target,
            } => match response {
                Some(PeerResponse::Delivered) => {
                    self.push(PeersOutput::Reply {
                        token,
                        result: Ok(LocalReply::Delivered { id }),
                    });
                }
                Some(PeerResponse::Rejected(error)) => {
                    self.push(PeersOutput::Reply {
                        token,
                        result: Err(error),
                    });
                }
                _ if attempt < self.config.delivery_attempts => {
                    // Same id, so a message that did arrive is not stored twice.
                    let rpc = self.next_rpc();
                    self.rpcs.insert(
                        rpc,
                        Rpc::Deliver {
                            token,
                            id,
                            to: to.clone(),
                            bytes: bytes.clone(),
                            attempt: attempt + 1,
                            target,
                        },
                    );
                    self.schedule(now + self.config.rpc_timeout, Timer::RpcDeadline { rpc });
                    self.push(PeersOutput::Request { rpc, to, bytes });
                }
                _ => {
                    self.push(PeersOutput::Reply {
                        token,
                        result: Err(PeerError::new(
                            ErrorCode::Unreachable,
                            format!("peer pod {target} did not acknowledge the message"),
                        )),
                    });
                }
            },
        }
    }

    // ---- local operations -------------------------------------------------------------

    fn create_pod(
        &mut self,
        name: PodName,
        parent: Option<PodName>,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        if self.pods.contains_key(&name) {
            return Some(Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!("pod {name} already exists on this node"),
            )));
        }
        if self.pods.len() >= self.config.pods_max {
            return Some(Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!("this node already hosts {} pods", self.config.pods_max),
            )));
        }
        let record = PodRecord::new(name.clone());
        let mut changed = vec![record.clone()];
        if let Some(parent) = &parent {
            let Some(parent_record) = self.pods.get(parent) else {
                return Some(Err(not_found_pod(parent)));
            };
            if parent_record.spawned_children.len() >= self.config.children_per_pod_max {
                return Some(Err(PeerError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "pod {parent} already has {} spawned children",
                        self.config.children_per_pod_max
                    ),
                )));
            }
            let mut parent_record = parent_record.clone();
            parent_record.spawned_children.insert(name.clone());
            parent_record.reclaimed_children.remove(&name);
            changed.push(parent_record);
        }
        if let Err(e) = self.write_pods(&changed, store) {
            return Some(Err(e));
        }
        for record in changed {
            self.publish(record.clone());
            self.pods.insert(record.name.clone(), record);
        }
        Some(Ok(LocalReply::Pod(self.pods[&name].clone())))
    }

    fn remove_pod(
        &mut self,
        name: &PodName,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        let Some(record) = self.pods.get(name) else {
            return Some(Err(not_found_pod(name)));
        };
        if !record.peers.is_empty() {
            return Some(Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "pod {name} still has peers; unpeer them first so no one-sided relation remains"
                ),
            )));
        }
        if self.involved(name) {
            return Some(Err(PeerError::new(
                ErrorCode::Busy,
                format!("pod {name} has a peer handshake in progress"),
            )));
        }
        let mut batch = WriteBatch::new();
        batch.delete(Table::Pods, name.as_str().as_bytes().to_vec());
        let parents: Vec<PodRecord> = self
            .pods
            .values()
            .filter(|p| p.spawned_children.contains(name))
            .map(|p| {
                let mut p = p.clone();
                p.spawned_children.remove(name);
                p.reclaimed_children.insert(name.clone());
                while p.reclaimed_children.len() > self.config.children_per_pod_max {
                    p.reclaimed_children.pop_first();
                }
                p
            })
            .collect();
        for parent in &parents {
            batch.put(
                Table::Pods,
                parent.name.as_str().as_bytes().to_vec(),
                codec::encode_record(parent),
            );
        }
        let inbox = self.inboxes.get(name).cloned().unwrap_or_default();
        for seq in &inbox {
            batch.delete(Table::Inboxes, message_key(name, *seq));
        }
        if let Err(e) = self.write(batch, store) {
            return Some(Err(e));
        }
        self.pods.remove(name);
        self.inboxes.remove(name);
        for parent in parents {
            self.publish(parent.clone());
            self.pods.insert(parent.name.clone(), parent);
        }
        self.push(PeersOutput::Publish {
            pod: name.clone(),
            record: None,
        });
        Some(Ok(LocalReply::Removed))
    }

    fn set_status(
        &mut self,
        name: &PodName,
        status: PodStatus,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        let Some(record) = self.pods.get(name) else {
            return Some(Err(not_found_pod(name)));
        };
        let mut record = record.clone();
        record.status = status;
        if let Err(e) = self.write_pods(std::slice::from_ref(&record), store) {
            return Some(Err(e));
        }
        self.pods.insert(name.clone(), record.clone());
        self.publish(record.clone());
        self.push(PeersOutput::Event(PodEvent::StatusChanged {
            pod: name.clone(),
            status,
        }));
        Some(Ok(LocalReply::Pod(record)))
    }

    fn inbox(
        &mut self,
        pod: &PodName,
        drain: bool,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        if !self.pods.contains_key(pod) {
            return Some(Err(not_found_pod(pod)));
        }
        let seqs = self.inboxes.get(pod).cloned().unwrap_or_default();
        let mut entries = Vec::with_capacity(seqs.len());
        for seq in &seqs {
            match store.read(Table::Inboxes, &message_key(pod, *seq)) {
                Ok(Some(bytes)) => match codec::decode_record::<InboxEntry>(&bytes) {
                    Ok(entry) => entries.push(entry),
                    Err(e) => return Some(Err(PeerError::new(ErrorCode::Internal, e.to_string()))),
                },
                Ok(None) => {}
                Err(e) => return Some(Err(PeerError::new(ErrorCode::Internal, e.to_string()))),
            }
        }
        if drain && !seqs.is_empty() {
            let mut batch = WriteBatch::new();
            for seq in &seqs {
                batch.delete(Table::Inboxes, message_key(pod, *seq));
            }
            if let Err(e) = self.write(batch, store) {
                return Some(Err(e));
            }
            self.inboxes.remove(pod);
        }
        Some(Ok(LocalReply::Inbox(entries)))
    }

    fn handshake(
        &mut self,
        token: u64,
        pod: PodName,
        target: PodAddr,
        op: PeerOp,
        now: Time,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        let source = PodAddr::new(pod.clone(), self.me.clone());
        let Some(record) = self.pods.get(&pod).cloned() else {
            return Some(Err(not_found_pod(&pod)));
        };
        if !matches!(record.status, PodStatus::Idle | PodStatus::Paused) {
            return Some(Err(PeerError::new(
                ErrorCode::AlreadyRunning,
                format!(
                    "pod {pod} is {}; peers change only while idle or paused",
                    record.status.as_str()
                ),
            )));
        }
        if target == source {
            return Some(Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!("pod {pod} cannot be registered as a peer of itself"),
            )));
        }
        if self.pair_busy(&source, &target) {
            return Some(Err(PeerError::new(
                ErrorCode::Busy,
                format!("a peer request between {source} and {target} is already in progress"),
            )));
        }
        if op == PeerOp::Register
            && record.peers.len() >= self.config.peers_per_pod_max
            && !record.peers.contains(&target)
        {
            return Some(Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "pod {pod} already has {} peers",
                    self.config.peers_per_pod_max
                ),
            )));
        }
        if target.node == self.me {
            return Some(self.local_handshake(&source, &target, op, store));
        }
        if self.handshakes_logged() >= self.config.handshakes_max {
            return Some(Err(PeerError::new(
                ErrorCode::Busy,
                format!(
                    "{} peer handshakes already in progress on this node",
                    self.config.handshakes_max
                ),
            )));
        }
        let id = match self.next_id(store) {
            Ok(id) => id,
            Err(e) => return Some(Err(e)),
        };
        let entry = CoordEntry {
            id: id.clone(),
            source,
            target: target.clone(),
            op,
            had_before: record.peers.contains(&target),
            phase: Phase::Preparing,
        };
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Handshakes,
            id_key(COORD_PREFIX, &id),
            codec::encode_record(&entry),
        );
        if let Err(e) = self.write(batch, store) {
            return Some(Err(e));
        }
        let request = PeerRequest::Prepare {
            id: id.clone(),
            source: entry.source.clone(),
            target: target.pod.clone(),
            op,
        };
        self.coordinating.insert(id.clone(), entry);
        self.waiting.insert(id.clone(), token);
        self.send_rpc(target.node.clone(), request, Rpc::Prepare { id }, now);
        None
    }

    /// Both Pods on this node: both directions in one transaction.
    fn local_handshake(
        &mut self,
        source: &PodAddr,
        target: &PodAddr,
        op: PeerOp,
        store: &mut impl Store,
    ) -> Result<LocalReply, PeerError> {
        let (Some(a), Some(b)) = (self.pods.get(&source.pod), self.pods.get(&target.pod)) else {
            return Err(not_found_pod(&target.pod));
        };
        let mut a = a.clone();
        let mut b = b.clone();
        set_edge(&mut a, target, op.wanted());
        set_edge(&mut b, source, op.wanted());
        self.write_pods(&[a.clone(), b.clone()], store)?;
        for record in [a, b] {
            self.publish(record.clone());
            self.pods.insert(record.name.clone(), record);
        }
        self.emit_relation(op, &source.pod, source, target);
        self.emit_relation(op, &target.pod, source, target);
        Ok(relation_reply(op, source, target))
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one local operation's fields plus the driver's context"
    )]
    fn send(
        &mut self,
        token: u64,
        pod: PodName,
        target: PodAddr,
        body: String,
        live: bool,
        now: Time,
        wall_ms: u64,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        let Some(record) = self.pods.get(&pod) else {
            return Some(Err(not_found_pod(&pod)));
        };
        if !record.peers.contains(&target) {
            return Some(Err(PeerError::new(
                ErrorCode::NotFound,
                format!("{target} is not a peer of {pod}"),
            )));
        }
        if !live {
            return Some(Err(PeerError::new(
                ErrorCode::NotLive,
                format!("peer pod {target} is not live"),
            )));
        }
        if body.len() > self.config.message_size_max {
            return Some(Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "message is {} bytes, the limit is {}",
                    body.len(),
                    self.config.message_size_max
                ),
            )));
        }
        let id = match self.next_id(store) {
            Ok(id) => id,
            Err(e) => return Some(Err(e)),
        };
        let from = PodAddr::new(pod.clone(), self.me.clone());
        if target.node == self.me {
            return Some(
                self.store_message(&from, &target.pod, id.clone(), body, wall_ms, store)
                    .map(|()| LocalReply::Delivered { id }),
            );
        }
        let request = PeerRequest::Deliver {
            id: id.clone(),
            from: pod,
            to: target.pod.clone(),
            body,
        };
        let bytes = codec::encode_peer(&request);
        let rpc = self.next_rpc();
        let to = target.node.clone();
        self.rpcs.insert(
            rpc,
            Rpc::Deliver {
                token,
                id,
                to: to.clone(),
                bytes: bytes.clone(),
                attempt: 1,
                target,
            },
        );
        self.schedule(now + self.config.rpc_timeout, Timer::RpcDeadline { rpc });
        self.push(PeersOutput::Request { rpc, to, bytes });
        None
    }

    // ---- coordinator ------------------------------------------------------------------

    fn on_prepare_answer(
        &mut self,
        id: &RequestId,
        response: Option<PeerResponse>,
        now: Time,
        store: &mut impl Store,
    ) {
        let Some(entry) = self.coordinating.get(id).cloned() else {
            return;
        };
        if entry.phase != Phase::Preparing {
            return; // Already aborted (a participant's Query decided it).
        }
        match response {
            Some(PeerResponse::Prepared) => self.commit(entry, now, store),
            Some(PeerResponse::Rejected(error)) => {
                // Nothing changed anywhere; forget the intent. Should the delete fail, the
                // entry is aborted after a restart, which the participant answers "acked".
                let mut batch = WriteBatch::new();
                batch.delete(Table::Handshakes, id_key(COORD_PREFIX, id));
                let _ = self.write(batch, store);
                self.coordinating.remove(id);
                self.counters.handshakes_aborted += 1;
                self.answer_waiting(id, Err(error));
            }
            _ => {
                let error = PeerError::new(
                    ErrorCode::Unreachable,
                    format!(
                        "node {} did not answer the peer handshake",
                        entry.target.node.as_str()
                    ),
                );
                self.abort(id, error, now, store);
            }
        }
    }

    fn commit(&mut self, mut entry: CoordEntry, now: Time, store: &mut impl Store) {
        let Some(record) = self.pods.get(&entry.source.pod) else {
            let error = PeerError::new(ErrorCode::Internal, "the source pod disappeared");
            self.abort(&entry.id, error, now, store);
            return;
        };
        let mut record = record.clone();
        set_edge(&mut record, &entry.target, entry.op.wanted());
        entry.phase = Phase::Committed;
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Pods,
            record.name.as_str().as_bytes().to_vec(),
            codec::encode_record(&record),
        );
        batch.put(
            Table::Handshakes,
            id_key(COORD_PREFIX, &entry.id),
            codec::encode_record(&entry),
        );
        if let Err(error) = self.write(batch, store) {
            self.abort(&entry.id, error, now, store);
            return;
        }
        self.counters.handshakes_committed += 1;
        self.pods.insert(record.name.clone(), record.clone());
        self.publish(record);
        let id = entry.id.clone();
        let (source, target, op) = (entry.source.clone(), entry.target.clone(), entry.op);
        self.coordinating.insert(id.clone(), entry);
        self.emit_relation(op, &source.pod, &source, &target);
        self.answer_waiting(&id, Ok(relation_reply(op, &source, &target)));
        self.send_rpc(
            target.node.clone(),
            PeerRequest::Commit { id: id.clone() },
            Rpc::Commit { id },
            now,
        );
    }

    /// Aborts a handshake this node coordinates. The source Pod was never changed before
    /// commit, so its prior state is already in place; the participant is told to restore its.
    fn abort(&mut self, id: &RequestId, error: PeerError, now: Time, store: &mut impl Store) {
        let Some(entry) = self.coordinating.get_mut(id) else {
            return;
        };
        entry.phase = Phase::Aborting;
        let entry = entry.clone();
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Handshakes,
            id_key(COORD_PREFIX, id),
            codec::encode_record(&entry),
        );
        // A failed write is harmless: the stored entry still says Preparing, which a restart
        // aborts too.
        let _ = self.write(batch, store);
        self.counters.handshakes_aborted += 1;
        self.answer_waiting(id, Err(error));
        let to = entry.target.node.clone();
        self.send_rpc(
            to,
            PeerRequest::Abort { id: id.clone() },
            Rpc::Abort { id: id.clone() },
            now,
        );
    }

    fn resend(&mut self, id: &RequestId, now: Time, store: &mut impl Store) {
        let Some(entry) = self.coordinating.get(id).cloned() else {
            return;
        };
        if self
            .rpcs
            .values()
            .any(|r| matches!(r, Rpc::Commit { id: i } | Rpc::Abort { id: i } if i == id))
        {
            return;
        }
        match entry.phase {
            Phase::Committed => {
                let to = entry.target.node.clone();
                self.send_rpc(
                    to,
                    PeerRequest::Commit { id: id.clone() },
                    Rpc::Commit { id: id.clone() },
                    now,
                );
            }
            Phase::Aborting | Phase::Preparing => {
                if entry.phase == Phase::Preparing {
                    let error =
                        PeerError::new(ErrorCode::Unreachable, "the handshake was interrupted");
                    self.abort(id, error, now, store);
                    return;
                }
                let mut batch = WriteBatch::new();
                batch.put(
                    Table::Handshakes,
                    id_key(COORD_PREFIX, id),
                    codec::encode_record(&entry),
                );
                let _ = self.write(batch, store);
                let to = entry.target.node.clone();
                self.send_rpc(
                    to,
                    PeerRequest::Abort { id: id.clone() },
                    Rpc::Abort { id: id.clone() },
                    now,
                );
            }
        }
    }

    fn finish_coordinator(&mut self, id: &RequestId, now: Time, store: &mut impl Store) {
        let mut batch = WriteBatch::new();
        batch.delete(Table::Handshakes, id_key(COORD_PREFIX, id));
        if self.write(batch, store).is_ok() {
            self.coordinating.remove(id);
        } else {
            // The entry stays: send its outcome again later, which the participant
            // acknowledges again, and retry the delete then.
            self.schedule(
                now + self.config.resend_interval,
                Timer::Resend { id: id.clone() },
            );
        }
    }

    fn answer_waiting(&mut self, id: &RequestId, result: Result<LocalReply, PeerError>) {
        if let Some(token) = self.waiting.remove(id) {
            self.push(PeersOutput::Reply { token, result });
        }
    }

    // ---- participant and receiver -----------------------------------------------------

    fn answer(
        &mut self,
        from: &NodeName,
        request: PeerRequest,
        now: Time,
        wall_ms: u64,
        store: &mut impl Store,
    ) -> PeerResponse {
        match request {
            PeerRequest::Prepare {
                id,
                source,
                target,
                op,
            } => {
                if source.node != *from || id.node != *from {
                    self.counters.identity_mismatches += 1;
                    return PeerResponse::Rejected(PeerError::new(
                        ErrorCode::InvalidRequest,
                        format!("node {} cannot act for {source}", from.as_str()),
                    ));
                }
                match self.prepare(id, source, target, op, now, store) {
                    Ok(()) => PeerResponse::Prepared,
                    Err(error) => PeerResponse::Rejected(error),
                }
            }
            PeerRequest::Commit { id } | PeerRequest::Abort { id } if id.node != *from => {
                self.counters.identity_mismatches += 1;
                PeerResponse::Rejected(PeerError::new(
                    ErrorCode::InvalidRequest,
                    "only the coordinator decides a handshake",
                ))
            }
            PeerRequest::Commit { id } => {
                if self.settle_participant(&id, true, store) {
                    PeerResponse::Acked
                } else {
                    PeerResponse::Rejected(PeerError::new(
                        ErrorCode::Internal,
                        "store write failed",
                    ))
                }
            }
            PeerRequest::Abort { id } => {
                if self.settle_participant(&id, false, store) {
                    PeerResponse::Acked
                } else {
                    PeerResponse::Rejected(PeerError::new(
                        ErrorCode::Internal,
                        "store write failed",
                    ))
                }
            }
            PeerRequest::Query { id } => {
                let entry = self.coordinating.get(&id);
                if entry.is_some_and(|e| e.target.node != *from) {
                    // Only the participant may ask: an answer to anyone else could abort a
                    // handshake that is still preparing.
                    self.counters.identity_mismatches += 1;
                    return PeerResponse::Rejected(PeerError::new(
                        ErrorCode::InvalidRequest,
                        "only the participant may ask for a handshake's outcome",
                    ));
                }
                let committed = match entry.map(|e| e.phase) {
                    Some(Phase::Committed) => true,
                    Some(Phase::Preparing) => {
                        // The Prepared answer was lost; decide now, for good.
                        let error = PeerError::new(
                            ErrorCode::Unreachable,
                            "the peer handshake's answer was lost",
                        );
                        self.abort(&id, error, now, store);
                        false
                    }
                    // Aborting, or unknown: presumed abort.
                    _ => false,
                };
                PeerResponse::Outcome { committed }
            }
            PeerRequest::Deliver {
                id,
                from: pod,
                to,
                body,
            } => {
                let sender = PodAddr::new(pod, from.clone());
                if id.node != *from {
                    self.counters.identity_mismatches += 1;
                    return PeerResponse::Rejected(PeerError::new(
                        ErrorCode::InvalidRequest,
                        "message id from another node",
                    ));
                }
                match self.store_message(&sender, &to, id, body, wall_ms, store) {
                    Ok(()) => PeerResponse::Delivered,
                    Err(error) => PeerResponse::Rejected(error),
                }
            }
        }
    }

    fn prepare(
        &mut self,
        id: RequestId,
        source: PodAddr,
        target: PodName,
        op: PeerOp,
        now: Time,
        store: &mut impl Store,
    ) -> Result<(), PeerError> {
        if let Some(existing) = self.participating.get(&id) {
            // A re-sent Prepare: the first one was applied and logged.
            return if existing.source == source && existing.target == target {
                Ok(())
            } else {
                Err(PeerError::new(
                    ErrorCode::InvalidRequest,
                    "handshake id reused",
                ))
            };
        }
        let Some(record) = self.pods.get(&target) else {
            return Err(not_found_pod(&target));
        };
        let target_addr = PodAddr::new(target.clone(), self.me.clone());
        if self.pair_busy(&target_addr, &source) {
            return Err(PeerError::new(
                ErrorCode::Busy,
                format!("a peer request between {source} and {target_addr} is already in progress"),
            ));
        }
        if self.handshakes_logged() >= self.config.handshakes_max {
            return Err(PeerError::new(
                ErrorCode::Busy,
                "too many peer handshakes in progress",
            ));
        }
        let had_before = record.peers.contains(&source);
        if op == PeerOp::Register
            && !had_before
            && record.peers.len() >= self.config.peers_per_pod_max
        {
            return Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "pod {target} already has {} peers",
                    self.config.peers_per_pod_max
                ),
            ));
        }
        let mut record = record.clone();
        set_edge(&mut record, &source, op.wanted());
        let entry = PartEntry {
            id: id.clone(),
            source,
            target,
            op,
            had_before,
        };
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Pods,
            record.name.as_str().as_bytes().to_vec(),
            codec::encode_record(&record),
        );
        batch.put(
            Table::Handshakes,
            id_key(PART_PREFIX, &id),
            codec::encode_record(&entry),
        );
        self.write(batch, store)?;
        self.pods.insert(record.name.clone(), record);
        self.participating.insert(id.clone(), entry);
        self.schedule(now + self.config.participant_wait, Timer::Wait { id });
        Ok(())
    }

    /// Applies the outcome of a handshake this node took part in. Returns whether the outcome
    /// is durable (an unknown id was settled earlier, which is durable too).
    fn settle_participant(
        &mut self,
        id: &RequestId,
        committed: bool,
        store: &mut impl Store,
    ) -> bool {
        let Some(entry) = self.participating.get(id).cloned() else {
            return true;
        };
        let mut batch = WriteBatch::new();
        batch.delete(Table::Handshakes, id_key(PART_PREFIX, id));
        let mut restored = None;
        if !committed && let Some(record) = self.pods.get(&entry.target) {
            let mut record = record.clone();
            set_edge(&mut record, &entry.source, entry.had_before);
            batch.put(
                Table::Pods,
                record.name.as_str().as_bytes().to_vec(),
                codec::encode_record(&record),
            );
            restored = Some(record);
        }
        if self.write(batch, store).is_err() {
            return false;
        }
        self.participating.remove(id);
        if let Some(record) = restored {
            self.pods.insert(record.name.clone(), record);
        }
        if let Some(record) = self.pods.get(&entry.target).cloned() {
            self.publish(record);
        }
        if committed {
            let target = PodAddr::new(entry.target.clone(), self.me.clone());
            self.emit_relation(entry.op, &entry.target, &entry.source, &target);
        }
        true
    }

    fn store_message(
        &mut self,
        from: &PodAddr,
        to: &PodName,
        id: RequestId,
        body: String,
        wall_ms: u64,
        store: &mut impl Store,
    ) -> Result<(), PeerError> {
        let Some(record) = self.pods.get(to) else {
            return Err(not_found_pod(to));
        };
        if !record.peers.contains(from) {
            return Err(PeerError::new(
                ErrorCode::NotFound,
                format!("{from} is not a peer of {to}"),
            ));
        }
        if self.dedupe.contains(&id) {
            self.counters.duplicates += 1;
            return Ok(());
        }
        if body.len() > self.config.message_size_max {
            return Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "message is {} bytes, the limit is {}",
                    body.len(),
                    self.config.message_size_max
                ),
            ));
        }
        let queued = self.inboxes.get(to).map_or(0, VecDeque::len);
        if queued >= self.config.inbox_len_max {
            return Err(PeerError::new(
                ErrorCode::InboxFull,
                format!("the inbox of {to} holds {queued} messages"),
            ));
        }
        let entry = InboxEntry {
            id: id.clone(),
            from: from.clone(),
            body,
            received_at_ms: wall_ms,
        };
        let seq = self.inbox_seq;
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Inboxes,
            message_key(to, seq),
            codec::encode_record(&entry),
        );
        batch.put(
            Table::Inboxes,
            id_key(DEDUPE_PREFIX, &id),
            codec::encode_record(&(seq, id.clone())),
        );
        let evicted = (self.dedupe_order.len() >= self.config.dedupe_ids_max)
            .then(|| self.dedupe_order.front().cloned())
            .flatten();
        if let Some(old) = &evicted {
            batch.delete(Table::Inboxes, id_key(DEDUPE_PREFIX, old));
        }
        self.write(batch, store)?;
        self.inbox_seq += 1;
        if evicted.is_some()
            && let Some(old) = self.dedupe_order.pop_front()
        {
            self.dedupe.remove(&old);
        }
        self.dedupe.insert(id.clone());
        self.dedupe_order.push_back(id);
        self.inboxes.entry(to.clone()).or_default().push_back(seq);
        self.counters.messages_delivered += 1;
        self.push(PeersOutput::Event(PodEvent::Notification {
            pod: to.clone(),
            entry,
        }));
        Ok(())
    }

    // ---- helpers ----------------------------------------------------------------------

    /// Whether a handshake between these two Pods (either direction) is logged.
    fn pair_busy(&self, a: &PodAddr, b: &PodAddr) -> bool {
        let same = |x: &PodAddr, y: &PodAddr| (x == a && y == b) || (x == b && y == a);
        self.coordinating
            .values()
            .any(|e| same(&e.source, &e.target))
            || self.participating.values().any(|e| {
                let target = PodAddr::new(e.target.clone(), self.me.clone());
                same(&e.source, &target)
            })
    }

    fn involved(&self, pod: &PodName) -> bool {
        self.coordinating.values().any(|e| e.source.pod == *pod)
            || self.participating.values().any(|e| e.target == *pod)
    }

    fn next_id(&mut self, store: &mut impl Store) -> Result<RequestId, PeerError> {
        // The counter is durable so ids stay unique even if the incarnation were reused.
        let seq = self.seq + 1;
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Meta,
            COUNTER_KEY.to_vec(),
            codec::encode_record(&seq),
        );
        self.write(batch, store)?;
        self.seq = seq;
        Ok(RequestId {
            node: self.me.clone(),
            incarnation: self.incarnation,
            seq,
        })
    }

    fn next_rpc(&mut self) -> u64 {
        self.next_rpc += 1;
        self.next_rpc
    }

    fn send_rpc(&mut self, to: NodeName, request: PeerRequest, kind: Rpc, now: Time) {
        let rpc = self.next_rpc();
        self.rpcs.insert(rpc, kind);
        self.schedule(now + self.config.rpc_timeout, Timer::RpcDeadline { rpc });
        self.push(PeersOutput::Request {
            rpc,
            to,
            bytes: codec::encode_peer(&request),
        });
    }

    fn schedule(&mut self, at: Time, timer: Timer) {
        self.timers.insert((at, self.timer_seq), timer);
        self.timer_seq += 1;
    }

    fn push(&mut self, output: PeersOutput) {
        if self.outputs.len() >= self.config.output_queue_max {
            // Replies and events matter more than requests, which time out and are re-sent.
            if let Some(at) = self
                .outputs
                .iter()
                .position(|o| matches!(o, PeersOutput::Request { .. }))
            {
                self.outputs.remove(at);
                self.counters.outputs_dropped += 1;
            }
        }
        self.outputs.push_back(output);
    }

    fn publish(&mut self, record: PodRecord) {
        self.push(PeersOutput::Publish {
            pod: record.name.clone(),
            record: Some(record),
        });
    }

    fn emit_relation(&mut self, op: PeerOp, pod: &PodName, source: &PodAddr, peer: &PodAddr) {
        let (pod, source, peer) = (pod.clone(), source.clone(), peer.clone());
        self.push(PeersOutput::Event(match op {
            PeerOp::Register => PodEvent::PeerRegistered { pod, source, peer },
            PeerOp::Unregister => PodEvent::PeerUnregistered { pod, source, peer },
        }));
    }

    fn write_pods(
        &mut self,
        records: &[PodRecord],
        store: &mut impl Store,
    ) -> Result<(), PeerError> {
        let mut batch = WriteBatch::new();
        for record in records {
            batch.put(
                Table::Pods,
                record.name.as_str().as_bytes().to_vec(),
                codec::encode_record(record),
            );
        }
        self.write(batch, store)
    }

    fn write(&mut self, batch: WriteBatch, store: &mut impl Store) -> Result<(), PeerError> {
        store.write(batch).map_err(|e| {
            self.counters.store_write_failures += 1;
            PeerError::new(ErrorCode::Internal, e.to_string())
        })
    }
}

/// Room for a `Deliver` request's fields around its body.
const REQUEST_OVERHEAD_MAX: usize = 1024;
/// Largest encoded answer (a rejection's message included).
const RESPONSE_SIZE_MAX: usize = 4096;

fn set_edge(record: &mut PodRecord, other: &PodAddr, present: bool) {
    if present {
        record.peers.insert(other.clone());
    } else {
        record.peers.remove(other);
    }
}

fn relation_reply(op: PeerOp, source: &PodAddr, peer: &PodAddr) -> LocalReply {
    let (source, peer) = (source.clone(), peer.clone());
    match op {
        PeerOp::Register => LocalReply::PeerRegistered { source, peer },
        PeerOp::Unregister => LocalReply::PeerUnregistered { source, peer },
    }
}

fn not_found_pod(name: &PodName) -> PeerError {
    PeerError::new(ErrorCode::NotFound, format!("pod {name} not found"))
}

#[cfg(test)]
mod tests;
