//! One node's protocols composed: the membership core ([`Mesh`]) and the Pods and peers machine
//! ([`Peers`]), sharing one store.
//!
//! Both drivers, the daemon and the simulator, run a [`Node`], so everything that ties the two
//! machines together is decided here once: the order in which their outputs are drained (Pods
//! and peers first, then membership), how a peer request finds its node's address (from
//! membership; a node membership does not know fails the request at once), the rule for "is
//! that Pod live" (its node alive or suspect, its record not stopped), how wall-clock time is
//! derived (from the driver's one clock reading at [`Time::ZERO`]), and the start order (the
//! membership core bumps the incarnation, the Pods and handshake logs load and resume, the
//! node's information becomes replicated state, the driver joins, and every Pod record is
//! handed to membership as the first outputs drained after that). A driver
//! keeps only its own IO: sockets or a modelled network, a database or a modelled store, local
//! clients or a workload.
//!
//! # Call order
//!
//! 1. [`Node::start`], then [`Node::handle`] with [`Command::Join`].
//! 2. Feed what arrives: [`Node::handle`] (datagrams, stream messages, commands, lost
//!    connections), [`Node::handle_request`] (a peer request from another node; the return value
//!    is its answer, or says it comes later as [`NodeOutput::Answer`]), [`Node::handle_response`] (the answer to one of this node's requests, or
//!    `None` when the transport failed), [`Node::handle_local`] (an operation of a local client).
//! 3. When nothing more is waiting to be fed and [`Node::staged_deliveries`] is not zero, call
//!    [`Node::commit_deliveries`]: the deliveries fed since the last commit are stored in one
//!    transaction (group commit), then answered.
//! 4. Sleep until [`Node::poll_timeout`], then [`Node::handle_timeout`].
//! 5. After every call, drain [`Node::poll_output`].

use std::net::SocketAddr;

use crate::codec::MemberState;
use crate::pod::{PodAddr, PodName, PodRecord};
use crate::store::Store;
use crate::{
    Answer, Command, Config, Error, Event, Input, LocalOp, LocalReply, Mesh, NodeName, Output,
    PeerError, Peers, PeersConfig, PeersOutput, PodEvent, Signatures, Target, Time,
};

/// Replicated state key of a node's own information (address, software version, start time).
pub const NODE_INFO_KEY: &str = "node";

/// Something the driver must do, or may show, from [`Node::poll_output`].
#[derive(Debug)]
pub enum NodeOutput {
    /// Send a datagram (a probe with piggybacked updates).
    Datagram {
        /// The node to send to.
        to: Target,
        /// The encoded datagram.
        bytes: Vec<u8>,
    },
    /// Send one membership message on a stream of its own.
    Message {
        /// The node to send to.
        to: Target,
        /// The encoded message.
        bytes: Vec<u8>,
    },
    /// Send a peer request on a bidirectional stream and feed its answer back with
    /// [`Node::handle_response`] under `rpc`.
    Request {
        /// RPC number, local to this node.
        rpc: u64,
        /// The node, at the address membership knows for it; its name must be authenticated.
        to: Target,
        /// The encoded [`crate::PeerRequest`].
        bytes: Vec<u8>,
    },
    /// The answer to the peer request fed under `ticket` and answered [`Answer::Later`].
    Answer {
        /// The driver's ticket.
        ticket: u64,
        /// The encoded [`crate::PeerResponse`].
        bytes: Vec<u8>,
    },
    /// The result of the local operation submitted with `token`.
    Reply {
        /// The caller's token.
        token: u64,
        /// The result.
        result: Result<LocalReply, PeerError>,
    },
    /// A membership event (member alive, suspect, dead, left; state changed).
    Member(Event),
    /// A Pod event for clients attached to a local Pod.
    Pod(PodEvent),
    /// A Pod record (or its removal) was handed to membership for gossip: for drivers that log
    /// or audit what a node publishes. `refused` is set when membership did not take it (the
    /// node has left, or the record is over a state bound).
    Published {
        /// The Pod.
        pod: PodName,
        /// Its record, or `None` when removed.
        record: Option<PodRecord>,
        /// Why membership refused it, if it did.
        refused: Option<Error>,
    },
}

/// A node's protocol state: membership, replicated state, Pods, handshakes and delivery.
#[derive(Debug)]
pub struct Node<S> {
    mesh: Mesh<S>,
    peers: Peers,
    /// Milliseconds since the Unix epoch at [`Time::ZERO`], from the driver's one clock.
    wall_start_ms: u64,
    /// The time of the latest call, for the work [`Node::poll_output`] does between the
    /// machines (a publish, a request to a node nobody knows).
    now: Time,
}

impl<S: Store> Node<S> {
    /// Starts node `me`, reachable at `advertise` and signing its claims with `signatures`:
    /// bumps the incarnation durably, loads the last known members, the Pods, the handshake
    /// logs and the inbox indexes, resumes every unfinished handshake, and writes the node's
    /// information as replicated state. Every Pod record goes to membership with the first
    /// [`Node::poll_output`] calls.
    /// `wall_start_ms` is the wall-clock time at [`Time::ZERO`], in milliseconds since the Unix
    /// epoch; message timestamps and the node's start time derive from it.
    #[expect(
        clippy::too_many_arguments,
        reason = "each is an independent start-up input"
    )]
    pub fn start(
        config: Config,
        peers_config: PeersConfig,
        me: NodeName,
        advertise: SocketAddr,
        store: S,
        signatures: Box<dyn Signatures>,
        rng_seed: u64,
        now: Time,
        wall_start_ms: u64,
    ) -> Result<Self, Error> {
        let mut mesh = Mesh::new(
            config,
            me.clone(),
            advertise,
            store,
            signatures,
            rng_seed,
            now,
        )?;
        // Probe periods on the wall clock, alike on every node (the probe schedule).
        mesh.set_wall_epoch(wall_start_ms.saturating_mul(1_000));
        let peers = Peers::load(me, mesh.incarnation(), peers_config, mesh.store(), now)?;
        let mut node = Node {
            mesh,
            peers,
            wall_start_ms,
            now,
        };
        let info = node_info(advertise, node.wall_ms(now));
        node.mesh.handle(
            Input::Command(Command::PutSyncedState {
                key: NODE_INFO_KEY.to_owned(),
                value: info,
            }),
            now,
        )?;
        Ok(node)
    }

    /// Feeds one membership input. Network input never fails; a command the core refuses
    /// returns an error and changes nothing.
    pub fn handle(&mut self, input: Input, now: Time) -> Result<(), Error> {
        self.now = now;
        self.mesh.handle(input, now)
    }

    /// Answers a peer request from node `from`, whose name the transport authenticated,
    /// submitted under the driver's `ticket`: now, later as [`NodeOutput::Answer`] (a delivery
    /// waiting for [`Node::commit_deliveries`]), or never (it did not decode: the driver closes
    /// that stream).
    pub fn handle_request(
        &mut self,
        ticket: u64,
        from: &NodeName,
        bytes: &[u8],
        now: Time,
    ) -> Answer {
        self.now = now;
        let wall = self.wall_ms(now);
        self.peers
            .handle_request(ticket, from, bytes, now, wall, self.mesh.store_mut())
    }

    /// Puts new signatures in force (a reload of the certificates, CA bundle or blocklist):
    /// see [`Mesh::set_signatures`].
    pub fn set_signatures(
        &mut self,
        signatures: Box<dyn Signatures>,
        now: Time,
    ) -> Result<(), Error> {
        self.now = now;
        self.mesh.set_signatures(signatures, now)
    }

    /// Deliveries fed since the last commit, waiting for [`Node::commit_deliveries`].
    pub fn staged_deliveries(&self) -> usize {
        self.peers.staged_deliveries()
    }

    /// Stores the staged deliveries in one transaction and answers them: acknowledged once
    /// committed, refused all together if the write fails.
    pub fn commit_deliveries(&mut self, now: Time) {
        self.now = now;
        self.peers.commit_deliveries(self.mesh.store_mut());
    }

    /// Feeds the answer to this node's RPC `rpc`, or `None` when the transport could not
    /// deliver the request or read its answer.
    pub fn handle_response(&mut self, rpc: u64, bytes: Option<&[u8]>, now: Time) {
        self.now = now;
        self.peers
            .handle_response(rpc, bytes, now, self.mesh.store_mut());
    }

    /// Runs a local operation; its result comes out as [`NodeOutput::Reply`] with `token`. For
    /// [`LocalOp::Send`] the node decides whether the target is live ([`Node::pod_live`]),
    /// whatever the caller set.
    pub fn handle_local(&mut self, token: u64, mut op: LocalOp, now: Time) {
        self.now = now;
        if let LocalOp::Send { target, live, .. } = &mut op {
            *live = self.pod_live(target);
        }
        let wall = self.wall_ms(now);
        self.peers
            .handle_local(token, op, now, wall, self.mesh.store_mut());
    }

    /// When [`Node::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Time> {
        match (self.mesh.poll_timeout(), self.peers.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires every timer of both machines due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        self.mesh.handle_timeout(now);
        self.peers.handle_timeout(now, self.mesh.store_mut());
    }

    /// The next thing the driver must do. Pods and peers come first: a Pod record is handed to
    /// membership here (and reported as [`NodeOutput::Published`]), and a request to a node
    /// membership does not know fails at once; then membership's own outputs.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        while let Some(output) = self.peers.poll_output() {
            match output {
                PeersOutput::Request { rpc, to, bytes } => match self.mesh.member(&to) {
                    Some(member) => {
                        let to = Target {
                            addr: member.addr,
                            name: Some(to),
                        };
                        return Some(NodeOutput::Request { rpc, to, bytes });
                    }
                    None => {
                        self.peers
                            .handle_unknown_node(rpc, self.now, self.mesh.store_mut());
                    }
                },
                PeersOutput::Reply { token, result } => {
                    return Some(NodeOutput::Reply { token, result });
                }
                PeersOutput::Answer { ticket, bytes } => {
                    return Some(NodeOutput::Answer { ticket, bytes });
                }
                PeersOutput::Publish { pod, record } => {
                    let command = PodRecord::publish_command(&pod, record.as_ref());
                    let refused = self.mesh.handle(Input::Command(command), self.now).err();
                    return Some(NodeOutput::Published {
                        pod,
                        record,
                        refused,
                    });
                }
                PeersOutput::Event(event) => return Some(NodeOutput::Pod(event)),
            }
        }
        self.mesh.poll_output().map(|output| match output {
            Output::Datagram { to, bytes } => NodeOutput::Datagram { to, bytes },
            Output::Message { to, bytes } => NodeOutput::Message { to, bytes },
            Output::Event(event) => NodeOutput::Member(event),
        })
    }

    /// Whether Pod `pod` is live as this node sees it: a local Pod that is not stopped, or a
    /// Pod whose node is alive or suspect and whose gossiped record is not stopped. A Pod this
    /// node has no record of is not live.
    pub fn pod_live(&self, pod: &PodAddr) -> bool {
        if pod.node == *self.mesh.name() {
            return self
                .peers
                .pod(&pod.pod)
                .is_some_and(|record| record.live_on(MemberState::Alive));
        }
        let Some(member) = self.mesh.member(&pod.node) else {
            return false;
        };
        self.remote_pod(pod)
            .is_some_and(|record| record.live_on(member.state))
    }

    /// The record node `pod.node` gossips for `pod.pod`, if this node has it.
    pub fn remote_pod(&self, pod: &PodAddr) -> Option<PodRecord> {
        let key = PodRecord::state_key(&pod.pod);
        self.mesh
            .state_of(&pod.node)
            .find(|(k, _)| *k == key)
            .and_then(|(_, value)| PodRecord::decode(value).ok())
    }

    /// Milliseconds since the Unix epoch at `t`, on the driver's clock.
    pub fn wall_ms(&self, t: Time) -> u64 {
        self.wall_start_ms.saturating_add(t.as_micros() / 1_000)
    }

    /// The membership core, to read members, state and counters.
    pub fn mesh(&self) -> &Mesh<S> {
        &self.mesh
    }

    /// The Pods and peers machine, to read Pods, logs and counters.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The store both machines share.
    pub fn store(&self) -> &S {
        self.mesh.store()
    }

    /// The store, mutably: for drivers that inject faults into it.
    pub fn store_mut(&mut self) -> &mut S {
        self.mesh.store_mut()
    }

    /// Stops the node and gives back its store, as a crash leaves it.
    pub fn into_store(self) -> S {
        self.mesh.into_store()
    }
}

/// The node's information as gossiped under [`NODE_INFO_KEY`]: a small JSON object, so any
/// reader of the replicated state can show it. Every field is an address, a version or a
/// number, none of which needs escaping.
fn node_info(address: SocketAddr, started_at_ms: u64) -> Vec<u8> {
    format!(
        "{{\"address\":\"{address}\",\"version\":\"{}\",\"started_at_ms\":{started_at_ms}}}",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

#[cfg(test)]
mod tests;
