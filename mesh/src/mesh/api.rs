//! What goes into the core and what comes out of it: inputs, commands, outputs, events, and
//! the read-only views ([`Member`], [`StateEntry`], [`Counters`]) drivers show to people.

use std::net::SocketAddr;

use crate::codec::MemberState;
use crate::{NodeName, Time};

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

/// Something that happened, for [`Mesh::handle`](crate::Mesh::handle).
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
    /// Set a key of this node's replicated state that travels by the stream exchanges only
    /// (the join push/pull and anti-entropy), never by piggyback: for a value that changes once
    /// per life and need not arrive within seconds, such as the node's information. Piggybacked,
    /// such a value costs every node a share of its datagrams for every other node's value
    /// whenever many nodes start together; anti-entropy delivers it within a few sync rounds.
    PutSyncedState {
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
    /// This node's operator refuses `node` (its certificate was just blocklisted): declare it
    /// dead here at once, at the incarnation known for it, and gossip the verdict, rather than
    /// wait for failed probes to run a suspicion out. Unknown or departed members are left alone.
    Expel {
        /// The refused member.
        node: NodeName,
    },
}

/// Something the driver must do, from [`Mesh::poll_output`](crate::Mesh::poll_output).
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
    /// Direct probes (Pings) this node sent, one per protocol period with a target.
    pub probes_sent: u64,
    /// Indirect probes (PingReqs) this node sent, up to `indirect_checks` per missed Ack.
    pub indirect_probes_sent: u64,
    /// Members this node started to suspect (confirmations of a running suspicion excluded).
    pub suspicions: u64,
    /// Probes of this node that ended without an Ack (each suspects its target).
    pub probes_failed: u64,
    /// Suspicions that timed out here, declaring a member dead, and members expelled here.
    pub deaths_declared: u64,
    /// Times this node refuted news of its own suspicion, death or leave.
    pub refutations: u64,
    /// Accusations (suspect or dead) dropped here: their subject had spoken to this node
    /// within the evidence window, or their accuser or relay had just come back from across a
    /// cut (DESIGN section 3, "Calm heals").
    pub accusations_dropped: u64,
    /// Claims a node made about itself (Alive, Left, state records) that did not carry its
    /// signature, or whose certificate was refused: dropped, never applied or relayed
    /// (DESIGN section 2).
    pub claims_refused: u64,
    /// Claims held while the certificate that signed them was asked for.
    pub claims_held: u64,
    /// Claims dropped unchecked: `claims_held_max` were waiting already, or their certificate
    /// did not come within `certificate_wait`. They come again by gossip or anti-entropy.
    pub claims_dropped: u64,
}
