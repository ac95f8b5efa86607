//! The node daemon: one actor task owns the node's protocol state ([`Node`]: membership, Pods
//! and peers) and drives it with real time, the QUIC transport and the local API.
//!
//! Everything reaches the actor through bounded channels: inbound frames from the transport,
//! calls from local clients, and signals. The actor feeds them to the [`Node`], sleeps until
//! [`Node::poll_timeout`], and carries out every [`NodeOutput`]. How the two machines are
//! composed is decided in `podmesh_mesh::Node`, the same for the simulator; this file holds only
//! IO. `Instant::now()` is read only in [`Clock`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use podmesh_certs::{Fingerprint, MeshTls, NodeIdentity};
use podmesh_mesh::{
    Command, Config, Event, Input, LocalOp, LocalReply, Member, MemberState, Node, NodeName,
    NodeOutput, POD_STATE_PREFIX, PeerError, PeersConfig, PodAddr, PodEvent, PodName, PodRecord,
    PodStatus, Target, Time,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::{ApiError, ErrorCode, REQUEST_QUEUE_LEN_MAX, Reply, SOCKET_FILE};
use crate::api_server::{self, ApiCall};
use crate::config::Preset;
use crate::directory::{self, Directory, DirectoryEntry};
use crate::faults::Faults;
use crate::store::RedbStore;
use crate::transport::{Channel, Destination, Inbound, Transport, TransportLimits};
use podmesh_mesh::Store as _;

/// How long a leaving node keeps gossiping its `left` state before it exits.
pub const LEAVE_GRACE_MAX: Duration = Duration::from_secs(3);
/// Events kept per Pod while no client is attached, replayed as `alert`s on the next attach;
/// past it the oldest are dropped (messages themselves stay in the durable inbox).
pub const ALERTS_MAX: usize = 64;
/// Local API calls waiting for a handshake or delivery to finish.
pub const PENDING_CALLS_MAX: usize = 1024;

/// The words before the bound address in the line a node prints once it listens.
const LISTENING: &str = "listening on";

/// Waits (at most `timeout`) for a `podmesh node run` child, started with a piped stdout, to
/// print its listening line, and returns the address it bound. The rest of its stdout is
/// drained on a thread so the node never blocks on a full pipe. On failure the child is
/// killed and reaped.
pub fn wait_until_listening(
    child: &mut std::process::Child,
    timeout: Duration,
) -> anyhow::Result<SocketAddr> {
    use std::io::BufRead;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("the node's stdout is not piped"))?;
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = line_tx.send(line);
        }
        for _ in lines {}
    });
    let address = line_rx.recv_timeout(timeout).ok().and_then(|line| {
        let (_, rest) = line.split_once(LISTENING)?;
        rest.split_whitespace().next()?.parse().ok()
    });
    match address {
        Some(address) => Ok(address),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the node did not report listening within {timeout:?}")
        }
    }
}

/// Everything `podmesh node run` needs, resolved from flags, environment and file.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// Directory with ca.crt, node.crt and node.key.
    pub certs_dir: PathBuf,
    /// Expected node name (must match the certificate when given).
    pub expected_name: Option<String>,
    /// Data directory; `None` picks the default for the certificate's node name.
    pub data_dir: Option<PathBuf>,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Address advertised to other nodes; `None` derives it.
    pub advertise: Option<SocketAddr>,
    /// Seeds.
    pub join: Vec<SocketAddr>,
    /// Timing preset.
    pub preset: Preset,
    /// Certificates refused by fingerprint.
    pub blocklist: BTreeSet<Fingerprint>,
}

/// The daemon's one clock: monotonic time for the core, read once against wall time so that
/// the core can tell people when things happened ([`Node::wall_ms`]).
#[derive(Clone, Copy, Debug)]
struct Clock {
    start: Instant,
    /// Milliseconds since the Unix epoch at `start`.
    start_unix_ms: u64,
}

impl Clock {
    fn new() -> Self {
        let start_unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            start: Instant::now(),
            start_unix_ms,
        }
    }

    fn now(&self) -> Time {
        Time::from_micros(u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn instant(&self, t: Time) -> tokio::time::Instant {
        (self.start + Duration::from_micros(t.as_micros())).into()
    }
}

/// Picks the advertised address: explicit, else the listen address when specific, else the
/// local address the kernel would use towards the first seed (no packet is sent).
fn advertise_addr(settings: &NodeSettings, bound: SocketAddr) -> anyhow::Result<SocketAddr> {
    if let Some(addr) = settings.advertise {
        return Ok(addr);
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound);
    }
    let seed = settings.join.first().ok_or_else(|| {
        anyhow::anyhow!(
            "listening on {bound} with no --join seed: give --advertise with the address other nodes reach this one at"
        )
    })?;
    let probe = std::net::UdpSocket::bind(SocketAddr::new(bound.ip(), 0))?;
    probe.connect(seed)?;
    Ok(SocketAddr::new(probe.local_addr()?.ip(), bound.port()))
}

fn mesh_name(name: &podmesh_certs::NodeName) -> anyhow::Result<podmesh_mesh::NodeName> {
    Ok(name.as_str().parse()?)
}

fn random_seed() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // A failing system random source leaves a fixed seed; protocol randomness only needs to
    // differ between nodes, which the node name mixed in below still guarantees.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Runs a node until it is told to stop (signal, `leave` or `shutdown`).
pub async fn run(settings: NodeSettings) -> anyhow::Result<()> {
    let identity = NodeIdentity::load(&settings.certs_dir)
        .with_context(|| format!("certificates in {}", settings.certs_dir.display()))?;
    let node = identity.claim.node.clone();
    if let Some(expected) = &settings.expected_name {
        anyhow::ensure!(
            expected == node.as_str(),
            "--name {expected} differs from the certificate's node name {node}"
        );
    }
    let data_dir = match &settings.data_dir {
        Some(dir) => dir.clone(),
        None => crate::config::default_data_dir(node.as_str())?,
    };
    let store = RedbStore::open(&data_dir)?;
    let tls = MeshTls::new(&identity, settings.blocklist.clone())?;
    let limits = TransportLimits::default();
    let (inbound_tx, inbound_rx) = mpsc::channel(limits.inbound_queue_len_max);
    let transport = Transport::bind(settings.listen, tls, limits, inbound_tx)?;
    let bound = transport.local_addr()?;
    let advertise = advertise_addr(&settings, bound)?;

    let config = match settings.preset {
        Preset::Lan => Config::lan(),
        Preset::Wan => Config::wan(),
    };
    let clock = Clock::new();
    let me = mesh_name(&node)?;
    let mut faults = Faults::from_env()?;
    let mut store = store;
    if faults.fire("fail-handshake-write") {
        store.fail_next_handshake_write();
    }
    let node_state = Node::start(
        config,
        PeersConfig::default(),
        me,
        advertise,
        store,
        random_seed(),
        clock.now(),
        clock.start_unix_ms,
    )
    .context("starting the node: its membership core, Pods and peer handshake log")?;

    let socket = data_dir.join(SOCKET_FILE);
    let listener = api_server::bind(&socket)
        .with_context(|| format!("cannot create the local API socket {}", socket.display()))?;
    let (calls_tx, calls_rx) = mpsc::channel(REQUEST_QUEUE_LEN_MAX);
    let api_task = tokio::spawn(api_server::serve(listener, calls_tx));

    info!(
        node = %node, mesh = %identity.claim.mesh, listen = %bound, advertise = %advertise,
        incarnation = node_state.mesh().incarnation(), data_dir = %data_dir.display(), "node started"
    );
    // One line on stdout that scripts and tests can wait for (see `wait_until_listening`).
    println!("podmesh node {node} {LISTENING} {bound} (advertising {advertise})");

    let mut actor = Actor {
        node: node_state,
        transport: transport.clone(),
        clock,
        mesh_name: identity.claim.mesh.to_string(),
        stopping: None,
        pending: BTreeMap::new(),
        next_token: 0,
        attached: BTreeMap::new(),
        watchers: Vec::new(),
        alerts: BTreeMap::new(),
        updated_at: BTreeMap::new(),
        faults,
    };
    let result = actor.run(settings.join, inbound_rx, calls_rx).await;
    api_task.abort();
    let _ = std::fs::remove_file(&socket);
    transport.close().await;
    info!(node = %node, "node stopped");
    result
}

/// Why the actor is winding down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Gossip `left` for a while, then exit.
    Leave { until: Time },
    /// Exit now.
    Now,
}

/// A local API call waiting for the Peers machine.
#[derive(Debug)]
struct PendingCall {
    id: Option<u64>,
    reply_tx: mpsc::Sender<Reply>,
}

struct Actor {
    node: Node<RedbStore>,
    transport: Transport,
    clock: Clock,
    mesh_name: String,
    stopping: Option<Stop>,
    pending: BTreeMap<u64, PendingCall>,
    next_token: u64,
    /// Clients attached to each local Pod.
    attached: BTreeMap<PodName, Vec<mpsc::Sender<Reply>>>,
    /// Clients that asked for member events only.
    watchers: Vec<mpsc::Sender<Reply>>,
    /// Events for Pods nobody is attached to, replayed as alerts.
    alerts: BTreeMap<PodName, VecDeque<Reply>>,
    /// When each replicated key last changed here.
    updated_at: BTreeMap<(podmesh_mesh::NodeName, String), Time>,
    faults: Faults,
}

impl Actor {
    async fn run(
        &mut self,
        seeds: Vec<SocketAddr>,
        mut inbound_rx: mpsc::Receiver<Inbound>,
        mut calls_rx: mpsc::Receiver<ApiCall>,
    ) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;

        let now = self.clock.now();
        self.node
            .handle(Input::Command(Command::Join { seeds }), now)?;
        self.flush();
        loop {
            match self.stopping {
                Some(Stop::Now) => return Ok(()),
                Some(Stop::Leave { until }) => {
                    let now = self.clock.now();
                    if now >= until || self.node.mesh().broadcast_queue_len() == 0 {
                        return Ok(());
                    }
                }
                None => {}
            }
            let deadline = self.node.poll_timeout().map(|t| self.clock.instant(t));
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(inbound) = inbound_rx.recv() => self.inbound(inbound),
                Some(call) = calls_rx.recv() => self.call(call),
                () = sleep => {
                    self.node.handle_timeout(self.clock.now());
                }
                _ = sigint.recv() => self.leave(),
                _ = sigterm.recv() => self.leave(),
            }
            self.flush();
        }
    }

    fn leave(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let now = self.clock.now();
        info!("leaving the mesh");
        if let Err(e) = self.node.handle(Input::Command(Command::Leave), now) {
            warn!(error = %e, "leave failed");
        }
        let until = now + LEAVE_GRACE_MAX;
        self.stopping = Some(Stop::Leave { until });
    }

    fn inbound(&mut self, inbound: Inbound) {
        let now = self.clock.now();
        let input = match inbound {
            Inbound::Datagram { from, bytes } => match mesh_name(&from) {
                Ok(from) => Input::Datagram { from, bytes },
                Err(_) => return,
            },
            Inbound::Message { from, bytes } => match mesh_name(&from) {
                Ok(from) => Input::Message { from, bytes },
                Err(_) => return,
            },
            Inbound::ConnectionLost { node } => match mesh_name(&node) {
                Ok(node) => Input::ConnectionLost { node },
                Err(_) => return,
            },
            Inbound::Request {
                from,
                bytes,
                reply_tx,
            } => {
                let kind = request_kind(&bytes);
                if kind == Some("commit") {
                    self.faults.crash("participant-before-commit");
                }
                let answer = match mesh_name(&from) {
                    Ok(from) => self.node.handle_request(&from, &bytes, now),
                    Err(_) => None,
                };
                match kind {
                    Some("prepare") => self.faults.crash("participant-after-prepare"),
                    Some("deliver") if self.faults.fire("drop-delivered-reply") => return,
                    _ => {}
                }
                let _ = reply_tx.send(answer);
                return;
            }
            Inbound::Response { rpc, bytes } => {
                self.node.handle_response(rpc, bytes.as_deref(), now);
                return;
            }
        };
        if let Err(e) = self.node.handle(input, now) {
            warn!(error = %e, "input refused");
        }
    }

    /// Carries out everything the node asked for, until it has nothing more.
    fn flush(&mut self) {
        while let Some(output) = self.node.poll_output() {
            match output {
                NodeOutput::Datagram { to, bytes } => {
                    if let Some(to) = destination(to) {
                        self.transport.send(to, Channel::Datagram, bytes);
                    }
                }
                NodeOutput::Message { to, bytes } => {
                    if let Some(to) = destination(to) {
                        self.transport.send(to, Channel::Stream, bytes);
                    }
                }
                NodeOutput::Request { rpc, to, bytes } => self.request(rpc, to, bytes),
                NodeOutput::Reply { token, result } => {
                    if let Some(call) = self.pending.remove(&token) {
                        let reply = match result {
                            Ok(reply) => self.local_reply_json(call.id, reply),
                            Err(error) => Reply::error(call.id, &api_error(error)),
                        };
                        let _ = call.reply_tx.try_send(reply);
                    }
                }
                NodeOutput::Published {
                    pod,
                    refused: Some(e),
                    ..
                } => {
                    warn!(pod = %pod, error = %e, "cannot gossip the pod record");
                }
                NodeOutput::Published { .. } => {}
                NodeOutput::Member(event) => self.mesh_event(event),
                NodeOutput::Pod(event) => self.pod_event(event),
            }
        }
    }

    /// Sends a peer request on a stream of its own; the transport feeds the answer back.
    fn request(&mut self, rpc: u64, to: Target, bytes: Vec<u8>) {
        match request_kind(&bytes) {
            Some("prepare") if self.faults.fire("coordinator-after-intent") => {
                self.faults.crash_now("coordinator-after-intent");
            }
            Some("commit") if self.faults.fire("coordinator-after-commit") => {
                self.faults.crash_now("coordinator-after-commit");
            }
            _ => {}
        }
        match destination(to) {
            Some(to) => self.transport.request(rpc, to, bytes),
            None => {
                let now = self.clock.now();
                self.node.handle_response(rpc, None, now);
            }
        }
    }

    fn mesh_event(&mut self, event: Event) {
        log_event(&event);
        let now = self.clock.now();
        let data = match &event {
            Event::StateChanged { node, key } => {
                self.updated_at.insert((node.clone(), key.clone()), now);
                return;
            }
            Event::MemberAlive {
                node, incarnation, ..
            } => (node, "alive", incarnation),
            Event::MemberSuspect { node, incarnation } => (node, "suspect", incarnation),
            Event::MemberDead { node, incarnation } => (node, "dead", incarnation),
            Event::MemberLeft { node, incarnation } => (node, "left", incarnation),
        };
        let reply = Reply::ok(
            None,
            "member",
            json!({ "name": data.0.as_str(), "state": data.1, "incarnation": data.2 }),
        );
        let mut targets: Vec<mpsc::Sender<Reply>> = self.watchers.clone();
        targets.extend(self.attached.values().flatten().cloned());
        for tx in targets {
            let _ = tx.try_send(reply.clone());
        }
    }

    fn pod_event(&mut self, event: PodEvent) {
        let (pod, reply) = match event {
            PodEvent::PeerRegistered { pod, source, peer } => (
                pod,
                Reply::ok(
                    None,
                    "peer_registered",
                    json!({ "source": source.to_string(), "peer": peer.to_string() }),
                ),
            ),
            PodEvent::PeerUnregistered { pod, source, peer } => (
                pod,
                Reply::ok(
                    None,
                    "peer_unregistered",
                    json!({ "source": source.to_string(), "peer": peer.to_string() }),
                ),
            ),
            PodEvent::Notification { pod, entry } => (
                pod,
                Reply::ok(
                    None,
                    "notification",
                    json!({
                        "from": entry.from.to_string(),
                        "message": entry.body,
                        "id": entry.id.to_string(),
                        "received_at": entry.received_at_ms,
                    }),
                ),
            ),
            PodEvent::StatusChanged { pod, status } => (
                pod.clone(),
                Reply::ok(
                    None,
                    "status",
                    json!({ "pod": pod.as_str(), "status": status.as_str() }),
                ),
            ),
        };
        let clients = self.attached.entry(pod.clone()).or_default();
        // A client whose queue is full or gone is detached rather than silently skipped.
        clients.retain(|tx| tx.try_send(reply.clone()).is_ok());
        if clients.is_empty() {
            let alerts = self.alerts.entry(pod).or_default();
            if alerts.len() >= ALERTS_MAX {
                alerts.pop_front();
            }
            alerts.push_back(reply);
        }
    }

    fn call(&mut self, call: ApiCall) {
        let id = call.request.id;
        let params = call.request.params.clone();
        match self.answer(&call.request.method, &params, &call.reply_tx, id) {
            Ok(Answer::Now(event, data)) => {
                let _ = call.reply_tx.try_send(Reply::ok(id, event, data));
            }
            Ok(Answer::Sent) => {}
            Ok(Answer::Local(op)) => {
                if self.pending.len() >= PENDING_CALLS_MAX {
                    let error = ApiError::new(ErrorCode::Busy, "too many requests in progress");
                    let _ = call.reply_tx.try_send(Reply::error(id, &error));
                    return;
                }
                self.next_token += 1;
                let token = self.next_token;
                self.pending.insert(
                    token,
                    PendingCall {
                        id,
                        reply_tx: call.reply_tx,
                    },
                );
                let now = self.clock.now();
                self.node.handle_local(token, op, now);
            }
            Err(error) => {
                let _ = call.reply_tx.try_send(Reply::error(id, &error));
            }
        }
    }

    fn answer(
        &mut self,
        method: &str,
        params: &Value,
        reply_tx: &mpsc::Sender<Reply>,
        id: Option<u64>,
    ) -> Result<Answer, ApiError> {
        match method {
            "members" => Ok(Answer::Now(
                "members",
                json!({ "members": self.members_json() }),
            )),
            "node_info" => Ok(Answer::Now("node_info", self.node_info())),
            "leave" => {
                self.leave();
                Ok(Answer::Now("leaving", json!({})))
            }
            "shutdown" => {
                self.stopping = Some(Stop::Now);
                Ok(Answer::Now("shutting_down", json!({})))
            }
            "pod_create" => {
                let name = pod_param(params, "name")?;
                let parent = match params.get("parent") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(pod_param(params, "parent")?),
                };
                Ok(Answer::Local(LocalOp::CreatePod { name, parent }))
            }
            "pod_remove" => Ok(Answer::Local(LocalOp::RemovePod {
                name: pod_param(params, "name")?,
            })),
            "pod_status" => {
                let name = pod_param(params, "name")?;
                match params.get("status") {
                    None | Some(Value::Null) => {
                        let record = self.local_pod(&name)?;
                        Ok(Answer::Now(
                            "pod",
                            directory::record_json(self.node.mesh().name(), record),
                        ))
                    }
                    Some(status) => {
                        let status: PodStatus = status
                            .as_str()
                            .unwrap_or_default()
                            .parse()
                            .map_err(|e: podmesh_mesh::InvalidPod| invalid(e.to_string()))?;
                        Ok(Answer::Local(LocalOp::SetStatus { name, status }))
                    }
                }
            }
            "list_pods" => {
                let name = pod_param(params, "pod")?;
                let record = self.local_pod(&name)?.clone();
                let me = PodAddr::new(name, self.node.mesh().name().clone());
                let pods = directory::visible(&me, &record, &self.directory());
                Ok(Answer::Now(
                    "pods",
                    json!({ "pod": me.to_string(), "pods": pods }),
                ))
            }
            "directory" => {
                let pods: Vec<Value> = self
                    .directory()
                    .iter()
                    .map(|(addr, entry)| directory::entry_json(addr, None, Some(entry)))
                    .collect();
                Ok(Answer::Now("directory", json!({ "pods": pods })))
            }
            "register_peer" | "unregister_peer" => {
                let (pod, target) = self.pod_and_target(params)?;
                Ok(Answer::Local(if method == "register_peer" {
                    LocalOp::RegisterPeer { pod, target }
                } else {
                    LocalOp::UnregisterPeer { pod, target }
                }))
            }
            "send_to_peer" => {
                let body = params
                    .get("message")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("missing string parameter \"message\""))?
                    .to_owned();
                let pod = pod_param(params, "pod")?;
                self.local_pod(&pod)?;
                let name = str_param(params, "name")?;
                let target = directory::resolve(name, self.node.mesh().name(), &self.directory())?;
                Ok(Answer::Local(LocalOp::Send {
                    pod,
                    target,
                    body,
                    // Decided by the node (`Node::pod_live`), one rule with the simulator.
                    live: false,
                }))
            }
            "inbox" => {
                let pod = pod_param(params, "pod")?;
                let drain = params
                    .get("drain")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                Ok(Answer::Local(LocalOp::Inbox { pod, drain }))
            }
            "attach" => {
                let pod = pod_param(params, "pod")?;
                let record = self.local_pod(&pod)?.clone();
                // The prelude: buffered alerts, then exactly one snapshot, then live events.
                for alert in self.alerts.remove(&pod).unwrap_or_default() {
                    let mut alert = alert;
                    alert.data = json!({ "event": alert.event, "data": alert.data });
                    alert.event = "alert".to_owned();
                    let _ = reply_tx.try_send(alert);
                }
                let me = PodAddr::new(pod.clone(), self.node.mesh().name().clone());
                let snapshot = json!({
                    "pod": directory::record_json(self.node.mesh().name(), &record),
                    "pods": directory::visible(&me, &record, &self.directory()),
                    "members": self.members_json(),
                });
                let _ = reply_tx.try_send(Reply::ok(id, "snapshot", snapshot));
                self.attached.entry(pod).or_default().push(reply_tx.clone());
                Ok(Answer::Sent)
            }
            "watch" => {
                self.watchers.retain(|tx| !tx.is_closed());
                self.watchers.push(reply_tx.clone());
                Ok(Answer::Now(
                    "watching",
                    json!({ "members": self.members_json() }),
                ))
            }
            other => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("unknown method {other:?}"),
            )),
        }
    }

    /// The Pod and the resolved target of a peer request, checked in the documented order.
    fn pod_and_target(&self, params: &Value) -> Result<(PodName, PodAddr), ApiError> {
        let pod = pod_param(params, "pod")?;
        if let Some(record) = self.node.peers().pod(&pod)
            && !matches!(record.status, PodStatus::Idle | PodStatus::Paused)
        {
            return Err(ApiError::new(
                ErrorCode::AlreadyRunning,
                format!(
                    "pod {pod} is {}; peers change only while idle or paused",
                    record.status.as_str()
                ),
            ));
        }
        let name = str_param(params, "name")?;
        let target = directory::resolve(name, self.node.mesh().name(), &self.directory())?;
        Ok((pod, target))
    }

    fn local_pod(&self, name: &PodName) -> Result<&PodRecord, ApiError> {
        self.node
            .peers()
            .pod(name)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("pod {name} not found")))
    }

    /// Every Pod this node knows: its own, and those gossiped by live or dead members.
    fn directory(&self) -> Directory {
        let me = self.node.mesh().name().clone();
        let states: BTreeMap<NodeName, MemberState> = self
            .node
            .mesh()
            .members()
            .into_iter()
            .map(|m| (m.name, m.state))
            .collect();
        let mut directory = Directory::new();
        for entry in self.node.mesh().entries() {
            let Some(value) = entry.value else { continue };
            if !entry.key.starts_with(POD_STATE_PREFIX) || *entry.owner == me {
                continue;
            }
            let Ok(record) = PodRecord::decode(value) else {
                continue;
            };
            let updated = self
                .updated_at
                .get(&(entry.owner.clone(), entry.key.to_owned()))
                .copied()
                .unwrap_or(Time::ZERO);
            directory.insert(
                PodAddr::new(record.name.clone(), entry.owner.clone()),
                DirectoryEntry {
                    node_state: states
                        .get(entry.owner)
                        .copied()
                        .unwrap_or(MemberState::Dead),
                    updated_at_ms: self.node.wall_ms(updated),
                    record,
                },
            );
        }
        for record in self.node.peers().pods() {
            let key = (me.clone(), PodRecord::state_key(&record.name));
            let updated = self.updated_at.get(&key).copied().unwrap_or(Time::ZERO);
            directory.insert(
                PodAddr::new(record.name.clone(), me.clone()),
                DirectoryEntry {
                    record: record.clone(),
                    node_state: MemberState::Alive,
                    updated_at_ms: self.node.wall_ms(updated),
                },
            );
        }
        directory
    }

    fn local_reply_json(&self, id: Option<u64>, reply: LocalReply) -> Reply {
        match reply {
            LocalReply::Pod(record) => Reply::ok(
                id,
                "pod",
                directory::record_json(self.node.mesh().name(), &record),
            ),
            LocalReply::Removed => Reply::ok(id, "removed", json!({})),
            LocalReply::PeerRegistered { source, peer } => Reply::ok(
                id,
                "peer_registered",
                json!({ "source": source.to_string(), "peer": peer.to_string() }),
            ),
            LocalReply::PeerUnregistered { source, peer } => Reply::ok(
                id,
                "peer_unregistered",
                json!({ "source": source.to_string(), "peer": peer.to_string() }),
            ),
            LocalReply::Delivered { id: message } => {
                Reply::ok(id, "delivered", json!({ "id": message.to_string() }))
            }
            LocalReply::Inbox(entries) => {
                let messages: Vec<Value> = entries
                    .iter()
                    .map(|e| {
                        json!({
                            "from": e.from.to_string(),
                            "message": e.body,
                            "id": e.id.to_string(),
                            "received_at": e.received_at_ms,
                        })
                    })
                    .collect();
                Reply::ok(id, "inbox", json!({ "messages": messages }))
            }
        }
    }

    fn members_json(&self) -> Vec<Value> {
        let mut members = self.node.mesh().members();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members.iter().map(|m| self.member_json(m)).collect()
    }

    fn member_json(&self, member: &Member) -> Value {
        json!({
            "name": member.name.as_str(),
            "address": member.addr.to_string(),
            "state": member.state.as_str(),
            "incarnation": member.incarnation,
            "changed_at_ms": self.node.wall_ms(member.changed_at),
            "local": member.name == *self.node.mesh().name(),
        })
    }

    fn node_info(&self) -> Value {
        let counters = self.node.mesh().counters();
        let peers = self.node.peers().counters();
        let stats = self.transport.stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        json!({
            "name": self.node.mesh().name().as_str(),
            "mesh": self.mesh_name,
            "address": self.node.mesh().addr().to_string(),
            "incarnation": self.node.mesh().incarnation(),
            "version": env!("CARGO_PKG_VERSION"),
            "started_at_ms": self.clock.start_unix_ms,
            "local_health": self.node.mesh().local_health(),
            "connections": self.transport.connection_count(),
            "pods": self.node.peers().pods().count(),
            "handshakes_logged": self.node.peers().handshakes_logged(),
            "members_persisted": self
                .node
                .mesh()
                .store()
                .scan(podmesh_mesh::Table::Members)
                .map(|rows| rows.len())
                .unwrap_or(0),
            "counters": {
                "datagrams_sent": counters.datagrams_sent,
                "messages_sent": counters.messages_sent,
                "datagrams_received": counters.datagrams_received,
                "messages_received": counters.messages_received,
                "bad_frames": counters.bad_frames + peers.bad_requests + peers.bad_responses,
                "probes_failed": counters.probes_failed,
                "deaths_declared": counters.deaths_declared,
                "refutations": counters.refutations,
                "identity_mismatches": peers.identity_mismatches,
                "handshakes_committed": peers.handshakes_committed,
                "handshakes_aborted": peers.handshakes_aborted,
                "messages_delivered": peers.messages_delivered,
                "duplicate_messages": peers.duplicates,
                "store_write_failures": counters.store_write_failures + peers.store_write_failures,
                "sends_dropped": load(&stats.sends_dropped),
                "connect_failures": load(&stats.connect_failures),
                "handshakes_refused": load(&stats.handshakes_refused),
                "frames_too_large": load(&stats.frames_too_large),
            },
        })
    }
}

/// How the actor answers a call.
enum Answer {
    /// Reply now with this event and data.
    Now(&'static str, Value),
    /// Already replied (the attach prelude).
    Sent,
    /// Run on the Peers machine; the reply comes with its output.
    Local(LocalOp),
}

/// The kind of a peer request, for fault points and logs.
fn request_kind(bytes: &[u8]) -> Option<&'static str> {
    use podmesh_mesh::PeerRequest;
    let request = PeerRequest::decode(
        bytes,
        crate::transport::TransportLimits::default().frame_size_max,
    )
    .ok()?;
    Some(match request {
        PeerRequest::Prepare { .. } => "prepare",
        PeerRequest::Commit { .. } => "commit",
        PeerRequest::Abort { .. } => "abort",
        PeerRequest::Query { .. } => "query",
        PeerRequest::Deliver { .. } => "deliver",
    })
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

fn str_param<'a>(params: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("missing string parameter {key:?}")))
}

fn pod_param(params: &Value, key: &str) -> Result<PodName, ApiError> {
    str_param(params, key)?
        .parse()
        .map_err(|e: podmesh_mesh::InvalidPod| invalid(e.to_string()))
}

fn api_error(error: PeerError) -> ApiError {
    ApiError::new(error.code, error.message)
}

fn destination(target: Target) -> Option<Destination> {
    let name = match target.name {
        Some(name) => Some(name.as_str().parse().ok()?),
        None => None,
    };
    Some(Destination {
        addr: target.addr,
        name,
    })
}

fn log_event(event: &Event) {
    match event {
        Event::MemberAlive {
            node,
            addr,
            incarnation,
        } => {
            info!(member = %node, %addr, incarnation, "member alive");
        }
        Event::MemberSuspect { node, incarnation } => {
            info!(member = %node, incarnation, "member suspect");
        }
        Event::MemberDead { node, incarnation } => {
            warn!(member = %node, incarnation, "member dead");
        }
        Event::MemberLeft { node, incarnation } => {
            info!(member = %node, incarnation, "member left");
        }
        Event::StateChanged { .. } => {}
    }
}
