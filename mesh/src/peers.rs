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

mod config;
mod delivery;
mod handshake;
mod pods;
mod rpc;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

pub use self::config::PeersConfig;
pub use self::rpc::{ErrorCode, PeerError, PeerOp, PeerRequest, PeerResponse, RequestId};
use self::rpc::{REQUEST_OVERHEAD_MAX, RESPONSE_SIZE_MAX};
use crate::codec;
use crate::pod::{PodAddr, PodName, PodRecord, PodStatus};
use crate::store::{Store, Table, WriteBatch};
use crate::{NodeName, Time};

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
        /// Whether the target is live (its node alive or suspect, the Pod not stopped). A driver
        /// of a whole [`crate::Node`] need not set it: [`crate::Node::handle_local`] decides it
        /// from membership and the gossiped record, one rule for the daemon and the simulator.
        live: bool,
    },
    /// Read (and optionally remove) a Pod's inbox.
    Inbox {
        /// The Pod.
        pod: PodName,
        /// Remove what is returned.
        drain: bool,
    },
    /// Remove a Pod's messages up to and including message `up_to`: the program handled them.
    InboxAck {
        /// The Pod.
        pod: PodName,
        /// The id of the last message handled.
        up_to: RequestId,
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
    /// Messages removed from the inbox by an acknowledgement.
    Acked {
        /// How many (0 when they were acknowledged before).
        removed: usize,
    },
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
    /// The answer to the peer request submitted with `ticket` and answered
    /// [`Answer::Later`]: a delivery, once the batch it joined is committed (or failed).
    Answer {
        /// The driver's ticket.
        ticket: u64,
        /// The encoded [`PeerResponse`].
        bytes: Vec<u8>,
    },
}

/// How [`Peers::handle_request`] answers a peer request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The encoded [`PeerResponse`], now.
    Now(Vec<u8>),
    /// As [`PeersOutput::Answer`] with the request's ticket: the request is a delivery staged
    /// for the next group commit ([`Peers::commit_deliveries`]).
    Later,
    /// Never: the request did not decode (counted); the driver closes the stream.
    Refused,
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
const ENDED_PREFIX: u8 = b'e';
const MESSAGE_PREFIX: u8 = b'm';
const DEDUPE_PREFIX: u8 = b'd';
const COUNTER_KEY: &[u8] = b"peers/seq";
/// Message and handshake ids reserved in the store at a time.
const ID_BLOCK: u64 = 1024;

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
    /// Participant entries ended because their coordinator was gone.
    pub handshakes_ended: u64,
    /// Messages stored in local inboxes.
    pub messages_delivered: u64,
    /// Duplicate deliveries answered without storing again.
    pub duplicates: u64,
    /// Group commits of deliveries that were written.
    pub delivery_batches: u64,
    /// Group commits of deliveries whose write failed (none of their messages acknowledged).
    pub delivery_batches_failed: u64,
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
    /// When each participant entry began waiting in this life.
    waiting_since: BTreeMap<RequestId, Time>,
    /// Participant entries ended while their coordinator was gone: rolled back, held only so
    /// that the coordinator's late Commit or Abort is applied right.
    ended: BTreeMap<RequestId, PartEntry>,
    inboxes: BTreeMap<PodName, VecDeque<u64>>,
    /// Messages in each local inbox by sending node, for `inbox_share_per_node_max`.
    inbox_shares: BTreeMap<(PodName, NodeName), usize>,
    inbox_seq: u64,
    /// Ids of stored messages, with their inbox sequence number, for deduplication and acks.
    dedupe: BTreeMap<RequestId, u64>,
    dedupe_order: VecDeque<RequestId>,
    /// Deliveries accepted since the last commit, waiting for it.
    staged: Vec<delivery::Staged>,
    seq: u64,
    /// The highest id counter the store allows this life to use (`ID_BLOCK` at a time).
    seq_reserved: u64,
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
            waiting_since: BTreeMap::new(),
            ended: BTreeMap::new(),
            inboxes: BTreeMap::new(),
            inbox_shares: BTreeMap::new(),
            inbox_seq: 0,
            dedupe: BTreeMap::new(),
            dedupe_order: VecDeque::new(),
            staged: Vec::new(),
            seq: 0,
            seq_reserved: 0,
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
                        // A message that does not decode fails only its own read, as before.
                        if let Ok(entry) = codec::decode_record::<InboxEntry>(&value) {
                            *peers
                                .inbox_shares
                                .entry((pod.clone(), entry.from.node))
                                .or_default() += 1;
                        }
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
            peers.dedupe.insert(id.clone(), order);
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
                    peers.waiting_since.insert(entry.id.clone(), now);
                    peers.participating.insert(entry.id.clone(), entry);
                }
                Some(&ENDED_PREFIX) => {
                    let entry: PartEntry = codec::decode_record(&value)?;
                    peers.ended.insert(entry.id.clone(), entry);
                }
                _ => {}
            }
        }
        if let Some(bytes) = store.read(Table::Meta, COUNTER_KEY)? {
            peers.seq = codec::decode_record(&bytes)?;
            peers.seq_reserved = peers.seq;
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

    /// This node's Pods.
    pub fn pods(&self) -> impl Iterator<Item = &PodRecord> {
        self.pods.values()
    }

    /// One local Pod.
    pub fn pod(&self, name: &PodName) -> Option<&PodRecord> {
        self.pods.get(name)
    }

    /// Messages waiting in local Pod `pod`'s inbox.
    pub fn inbox_len(&self, pod: &PodName) -> usize {
        self.inboxes.get(pod).map_or(0, VecDeque::len)
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
        let participating = self
            .participating
            .values()
            .chain(self.ended.values())
            .map(|e| {
                let target = PodAddr {
                    pod: e.target.clone(),
                    node: self.me.clone(),
                };
                (e.source.clone(), target)
            });
        coordinating.chain(participating).collect()
    }

    /// Participant entries ended while their coordinator was gone, kept until it answers.
    pub fn handshakes_ended(&self) -> usize {
        self.ended.len()
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
                    if self.participating.contains_key(&id) || self.ended.contains_key(&id) {
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
            LocalOp::InboxAck { pod, up_to } => self.inbox_ack(&pod, &up_to, store),
        };
        if let Some(result) = result {
            self.push(PeersOutput::Reply { token, result });
        }
    }

    /// Answers a request from node `from` (authenticated by the transport), submitted by the
    /// driver under `ticket`. A delivery is staged for the next group commit and answered
    /// [`Answer::Later`]; the driver calls [`Peers::commit_deliveries`] once it has fed what
    /// arrived meanwhile.
    pub fn handle_request(
        &mut self,
        ticket: u64,
        from: &NodeName,
        bytes: &[u8],
        now: Time,
        wall_ms: u64,
        store: &mut impl Store,
    ) -> Answer {
        let limit = self.config.message_size_max + REQUEST_OVERHEAD_MAX;
        let request: PeerRequest = match codec::decode_peer(bytes, limit) {
            Ok(request) => request,
            Err(_) => {
                self.counters.bad_requests += 1;
                return Answer::Refused;
            }
        };
        let response = match request {
            PeerRequest::Deliver {
                id,
                from: pod,
                to,
                body,
            } => match self.receive(ticket, from, id, pod, to, body, wall_ms) {
                Some(response) => response,
                None => return Answer::Later,
            },
            request => self.answer(from, request, now, store),
        };
        Answer::Now(codec::encode_peer(&response))
    }

    /// Fails RPC `rpc` to a node membership does not know (forgotten or never heard of), as
    /// [`Peers::handle_response`] with `None`; a participant that has asked such a coordinator
    /// for `participant_give_up` ends its entry.
    pub fn handle_unknown_node(&mut self, rpc: u64, now: Time, store: &mut impl Store) {
        if let Some(Rpc::Query { id }) = self.rpcs.get(&rpc)
            && self.waiting_since.get(id).is_some_and(|since| {
                now.saturating_since(*since) >= self.config.participant_give_up
            })
        {
            let id = id.clone();
            self.rpcs.remove(&rpc);
            // Ended or not (a failed write retries), it is asked about again.
            self.end_participant(&id, store);
            self.schedule(now + self.config.participant_wait, Timer::Wait { id });
            return;
        }
        self.handle_response(rpc, None, now, store);
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

    // ---- helpers ----------------------------------------------------------------------

    fn next_id(&mut self, store: &mut impl Store) -> Result<RequestId, PeerError> {
        // The counter is durable so ids stay unique even if the incarnation were reused. It is
        // reserved a block at a time, so a send writes to the store once per `ID_BLOCK` ids;
        // a crash skips the rest of the block.
        let seq = self.seq + 1;
        if seq > self.seq_reserved {
            let reserved = self.seq + ID_BLOCK;
            let mut batch = WriteBatch::new();
            batch.put(
                Table::Meta,
                COUNTER_KEY.to_vec(),
                codec::encode_record(&reserved),
            );
            self.write(batch, store)?;
            self.seq_reserved = reserved;
        }
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

fn not_found_pod(name: &PodName) -> PeerError {
    PeerError::new(ErrorCode::NotFound, format!("pod {name} not found"))
}

#[cfg(test)]
mod tests;
