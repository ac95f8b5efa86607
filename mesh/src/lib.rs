//! podmesh protocols as deterministic state machines: no IO, time as an argument.
//!
//! This crate holds the mesh's membership (SWIM with the Lifeguard extensions) and its replicated
//! state (owner-versioned key-value maps with anti-entropy), as one core, [`Mesh`]. The core never
//! reads a clock, opens a socket, spawns a thread or touches a global RNG: the driver (the QUIC
//! daemon, or the simulator) passes the time in, feeds it what arrived, and carries out what it
//! asks for. Given the same seed and the same inputs, it produces byte-identical outputs.
//!
//! # Call order
//!
//! 1. [`Mesh::new`] reads and durably bumps the incarnation in the [`Store`], then loads the last
//!    known members so a restarted node can rejoin without seeds. It takes the node's
//!    [`Signatures`], which sign its claims and check other nodes'.
//! 2. Feed every event through [`Mesh::handle`]: datagrams and stream messages from
//!    authenticated nodes, commands (join, leave, put or delete a state key), lost connections.
//! 3. Sleep until [`Mesh::poll_timeout`], then call [`Mesh::handle_timeout`]. Waking up early
//!    or late is harmless: only timers that are due fire, and they act on the current state.
//! 4. After every call, drain [`Mesh::poll_output`]: datagrams and stream messages to send, and
//!    [`Event`]s (member alive, suspect, dead, left; state changed) to act on.
//!
//! # Membership
//!
//! Every `probe_interval` the core pings the member its probe schedule gives for the period (a
//! ring of the live members, so that each is probed once a period by someone). Without
//! an Ack within `probe_timeout` it asks `indirect_checks` random members to ping the target
//! (PingReq); they answer Ack, or Nack when the target stayed silent, which proves that they and
//! the path to them work. Without an Ack by the end of the period the target becomes suspect.
//! A suspicion turns into death after a timeout that starts at `suspicion_max_mult` times the
//! minimum `suspicion_mult * max(1, log10 N) * probe_interval` and shrinks logarithmically with
//! each independent confirmation from another member. A suspected node that hears of it refutes
//! by gossiping itself alive with a higher incarnation. The Lifeguard local health score
//! (awareness) rises when this node misses Nacks or is suspected, and stretches its own probe
//! interval and timeout, so a slow node stops accusing healthy ones.
//!
//! Updates travel piggybacked on probes and on a gossip tick to `gossip_fanout` members, each
//! sent `retransmit_mult * ceil(log10(N + 1))` times, least-sent first, within the datagram
//! budget. Failure news (suspect, dead, left) and refutations are also pushed to
//! `gossip_fanout` members at once, because detection and refutation times are bounded and a
//! gossip tick is a wait worth saving. A graceful leave is gossiped as `left`, which is not
//! `dead`. Dead and left members are kept as tombstones for `tombstone_ttl`. The incarnation is
//! persisted and bumped on every start, so a restarted node is alive again under the same name.
//! A node starting from an empty store (a first start, or a lost disk) begins at a random
//! incarnation, so it never reuses the request ids of an earlier life, which peers remember to
//! drop duplicate deliveries.
//!
//! A joining node does a full push/pull with its seeds (or, after a restart without seeds, with
//! some of the members it persisted). Afterwards, about every `reconnect_interval`, it sends the
//! summary of its digest to one seed and to one random dead member: cheap while nothing differs,
//! and the way two sides of a healed partition, or an island, find each other again.
//!
//! # Replicated state
//!
//! Each node owns a small key-value map. Every entry carries `(generation, version)`: the
//! generation is the incarnation at start and the version grows with every write, so receivers
//! simply keep the highest. Writes piggyback on gossip; completeness comes from anti-entropy:
//! every `sync_interval` (and a probe period after it starts, or after a member it did not know
//! arrives or one it held dead comes back, which completes a joining node's view and a healed
//! cut quickly) a node sends one random live member the summary hash of its digest
//! (members and live entries, hashed into `sync_buckets` buckets). Only when the summaries differ
//! are the bucket hashes exchanged, and then only the records of differing buckets, so the
//! steady-state cost is one small message per interval whatever the mesh size. Deletions are
//! tombstones, collected after `tombstone_ttl`.
//!
//! # Bounds and trust
//!
//! Every table, queue and message has a named bound in [`Config`] (`members_max`,
//! `broadcast_queue_max`, `indirect_pending_max`, `output_queue_max`, `seeds_max`,
//! `state_keys_max`, `state_key_size_max`, `state_value_size_max`, `datagram_size_max`,
//! `message_size_max`, `claims_held_max`); reaching one drops the excess and counts it in
//! [`Counters`]. Frames come from nodes the transport authenticated, but a valid certificate
//! proves who is speaking, not that what it says is true: a node can only speak for itself.
//! Its Alive, its Left and every record of its replicated state carry its signature, made
//! through the [`Signatures`] given at construction, and an accusation of it stands only at an
//! incarnation it signed. A claim relayed by anyone is applied and relayed only once its
//! subject's signature verifies, with the subject's certificate, which members learn in the
//! join push/pull or by asking the relay ([`Counters::claims_refused`] counts the rest).
//! memberlist, Serf and foca accept claims about third parties from any member; this core does
//! not. A frame that does not decode is only counted.
//!
//! # Pods and peers
//!
//! [`Peers`] is a second machine, driven next to [`Mesh`] and sharing its store
//! ([`Mesh::store_mut`]). It holds this node's Pods, runs the reciprocal peer handshake as a
//! two-phase exchange with presumed abort (durable logs on both sides, rollback to the exact
//! prior state, resumption after a crash) and delivers messages to peers durably and exactly
//! once. Call order: [`Peers::load`] after [`Mesh::new`]; local operations through
//! [`Peers::handle_local`]; requests from other nodes through [`Peers::handle_request`], whose
//! return value is the answer; answers to this node's requests through
//! [`Peers::handle_response`]; timers through [`Peers::poll_timeout`] and
//! [`Peers::handle_timeout`]; then drain [`Peers::poll_output`], publishing Pod records as
//! replicated state under [`PodRecord::state_key`].
//!
//! # One node
//!
//! [`Node`] composes the two machines the way both drivers need them: it starts them in order,
//! feeds Pod records to membership, finds a peer request's address in membership, decides
//! whether a Pod is live, and derives wall-clock time from one clock reading. The daemon and the
//! simulator each drive a [`Node`] and keep only their own IO, so they cannot drift apart.
//!
//! The wire format lives in one module and is documented in `docs/wire.md`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod codec;
mod config;
mod error;
#[cfg(feature = "forge")]
pub mod forge;
mod hash;
mod mesh;
mod name;
mod node;
mod peers;
mod pod;
mod signing;
mod store;
mod time;

pub use codec::{DecodeError, MemberState, PROTOCOL_VERSION, Signature, claim};
pub use config::Config;
pub use error::Error;
pub use mesh::{Command, Counters, Event, Input, Member, Mesh, Output, StateEntry, Target};
pub use name::{NODE_NAME_LEN_MAX, NodeName};
pub use node::{NODE_INFO_KEY, Node, NodeOutput};
pub use peers::{
    Answer, ErrorCode, InboxEntry, LocalOp, LocalReply, PeerError, PeerOp, PeerRequest,
    PeerResponse, Peers, PeersConfig, PeersCounters, PeersOutput, PodEvent, RequestId,
};
pub use pod::{
    InvalidPod, POD_NAME_LEN_MAX, POD_STATE_PREFIX, PodAddr, PodName, PodRecord, PodStatus,
};
pub use signing::{Credential, HashAuthority, HashSignatures, SIGNATURE_LEN, Signatures, key_id};
pub use store::{MemStore, Row, Store, StoreError, Table, WriteBatch, WriteOp};
pub use time::Time;
