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
use podmesh_certs::{ClaimKeys, Fingerprint, MeshTls, NodeIdentity};
use podmesh_mesh::{
    Command, Config, Event, Input, Node, NodeOutput, PeerError, PeersConfig, PodEvent, PodName,
    Target, Time,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::{ApiError, REQUEST_QUEUE_LEN_MAX, Reply, SOCKET_FILE};
use crate::api_server::{self, ClientEvent, ClientTx, RequestSlot};
use crate::config::Preset;
use crate::faults::Faults;
use crate::metrics::{self, Metrics, Scrape, Snapshot};
use crate::signatures::NodeSignatures;
use crate::store::{OpenError, RedbStore};
use crate::transport::{Channel, Destination, Inbound, Transport, TransportLimits};
use inbound::request_kind;

/// How long a leaving node keeps gossiping its `left` state before it exits.
pub const LEAVE_GRACE_MAX: Duration = Duration::from_secs(3);
/// Events kept per Pod while no client is attached, replayed as `alert`s on the next attach;
/// past it the oldest are dropped (messages themselves stay in the durable inbox).
pub const ALERTS_MAX: usize = 64;
/// Local API calls waiting for a handshake or delivery to finish.
pub const PENDING_CALLS_MAX: usize = 1024;
/// How long `node run` waits for the previous node on the same data directory to stop: a
/// leaving node gossips for up to [`LEAVE_GRACE_MAX`], then closes its connections for up to
/// 2 s, so a restart issued right after a stop still comes up.
pub const DATA_DIR_WAIT_MAX: Duration = Duration::from_secs(10);
/// Scrapes of the metrics endpoint queued towards the actor.
pub const SCRAPES_QUEUED_MAX: usize = 16;

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
    /// Where to serve Prometheus metrics (`/metrics`); `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// Drop the members stored by a previous life before starting, so the node rejoins only
    /// through `join`.
    pub forget_members: bool,
    /// How long a participant asks a coordinator membership forgot before it ends its entry;
    /// `None` keeps the default (`PeersConfig::participant_give_up`).
    pub participant_give_up: Option<Duration>,
}

/// Resolves the blocklist again, from the same flags, environment and file: what SIGHUP and
/// `podmesh node reload` put in force with the certificates directory. It reads files only
/// (no name resolution), since it runs on the actor; other settings need a restart.
pub type Reload = Box<dyn Fn() -> anyhow::Result<BTreeSet<Fingerprint>> + Send>;

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

/// Opens the store, waiting (at most `wait_max`) while a previous node on the same data
/// directory is still stopping. Says whether it had to wait.
async fn open_store(
    data_dir: &std::path::Path,
    wait_max: Duration,
) -> anyhow::Result<(RedbStore, bool)> {
    let mut waiting = false;
    let wait = async {
        loop {
            match RedbStore::open(data_dir) {
                Err(OpenError::InUse(_)) => {
                    if !waiting {
                        waiting = true;
                        info!(
                            data_dir = %data_dir.display(),
                            "data directory in use; waiting up to {:?} for the previous node to stop",
                            wait_max
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    };
    match tokio::time::timeout(wait_max, wait).await {
        Ok(result) => Ok((result?, waiting)),
        Err(_) => Err(OpenError::InUse(data_dir.to_owned()).into()),
    }
}

/// Binds the transport; after waiting for a previous node on the same data directory, also
/// waits (at most [`DATA_DIR_WAIT_MAX`]) for that node's port, which it may release just after
/// its store.
async fn bind_transport(
    listen: SocketAddr,
    tls: MeshTls,
    limits: TransportLimits,
    inbound_tx: mpsc::Sender<Inbound>,
    previous_stopping: bool,
) -> anyhow::Result<Transport> {
    let deadline = tokio::time::Instant::now() + DATA_DIR_WAIT_MAX;
    loop {
        match Transport::bind(listen, tls.clone(), limits.clone(), inbound_tx.clone()) {
            Err(e) if previous_stopping && tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "waiting for the previous node's port");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Deletes every stored member, so the node knows only its seeds (`--forget-members`).
fn forget_members(store: &mut RedbStore) -> anyhow::Result<usize> {
    use podmesh_mesh::{Store as _, Table, WriteBatch};
    let rows = store.scan(Table::Members)?;
    let mut batch = WriteBatch::new();
    for (key, _) in &rows {
        batch.delete(Table::Members, key.clone());
    }
    if !batch.is_empty() {
        store.write(batch)?;
    }
    Ok(rows.len())
}

/// Runs a node until it is told to stop (signal, `leave` or `shutdown`). `reload` resolves the
/// settings again for SIGHUP and `podmesh node reload`.
pub async fn run(settings: NodeSettings, reload: Reload) -> anyhow::Result<()> {
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
    let (mut store, previous_stopping) = open_store(&data_dir, DATA_DIR_WAIT_MAX).await?;
    if settings.forget_members {
        let forgotten = forget_members(&mut store)?;
        info!(
            forgotten,
            "stored members dropped; joining only through the seeds"
        );
    }
    let metrics_listener = match settings.metrics_listen {
        Some(listen) => Some(metrics::bind(listen).await?),
        None => None,
    };
    let tls = MeshTls::new(&identity, settings.blocklist.clone())?;
    let limits = TransportLimits::default();
    let (inbound_tx, inbound_rx) = mpsc::channel(limits.inbound_queue_len_max);
    let transport = bind_transport(
        settings.listen,
        tls.clone(),
        limits,
        inbound_tx,
        previous_stopping,
    )
    .await?;
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
    let mut peers_config = PeersConfig::default();
    if let Some(give_up) = settings.participant_give_up {
        peers_config.participant_give_up = give_up;
    }
    let signatures = NodeSignatures(
        ClaimKeys::new(&identity, tls.clone())
            .context("the node key and certificate that sign this node's claims")?,
    );
    let node_state = Node::start(
        config,
        peers_config,
        me,
        advertise,
        store,
        Box::new(signatures),
        random_seed(),
        clock.now(),
        clock.start_unix_ms,
    )
    .context("starting the node: its membership core, Pods and peer handshake log")?;

    let socket = data_dir.join(SOCKET_FILE);
    let listener = api_server::bind(&socket)
        .with_context(|| format!("cannot create the local API socket {}", socket.display()))?;
    let socket_file = RemoveOnDrop(socket);
    let (calls_tx, calls_rx) = mpsc::channel(REQUEST_QUEUE_LEN_MAX);
    let api_task = tokio::spawn(api_server::serve(listener, calls_tx));
    let (scrape_tx, scrape_rx) = mpsc::channel(SCRAPES_QUEUED_MAX);
    let metrics_task = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "serving metrics at http://{addr}/metrics");
        }
        tokio::spawn(metrics::serve(listener, scrape_tx))
    });

    info!(
        node = %node, mesh = %identity.claim.mesh, listen = %bound, advertise = %advertise,
        incarnation = node_state.mesh().incarnation(), data_dir = %data_dir.display(), "node started"
    );
    // One line on stdout that scripts and tests can wait for (see `wait_until_listening`).
    println!("podmesh node {node} {LISTENING} {bound} (advertising {advertise})");

    let mut actor = Actor {
        _socket_file: socket_file,
        node: node_state,
        transport: transport.clone(),
        clock,
        mesh_name: identity.claim.mesh.to_string(),
        stopping: None,
        pending: BTreeMap::new(),
        next_token: 0,
        answers: BTreeMap::new(),
        next_ticket: 0,
        attached: BTreeMap::new(),
        watchers: Vec::new(),
        alerts: BTreeMap::new(),
        updated_at: BTreeMap::new(),
        faults,
        metrics: Metrics::new(),
        sends: BTreeMap::new(),
        reload,
        certs_dir: settings.certs_dir.clone(),
    };
    let result = actor
        .run(settings.join, inbound_rx, calls_rx, scrape_rx)
        .await;
    api_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    transport.close().await;
    info!(node = %node, "node stopped");
    result
}

/// Removes the local API socket however the node exits: a return, an error or a panic. Only a
/// kill leaves it behind, and the next start replaces it.
#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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
    reply_tx: ClientTx,
    slot: RequestSlot,
    /// When a `send_to_peer` started, for the delivery latency histogram.
    send_started: Option<Time>,
}

/// A client of member (and, for `monitor`, Pod) events.
#[derive(Debug)]
struct Watcher {
    tx: ClientTx,
    /// Also every local Pod's events.
    pods: bool,
}

/// Where a peer request answered later goes.
struct AnswerTx {
    kind: Option<&'static str>,
    reply_tx: tokio::sync::oneshot::Sender<Option<Vec<u8>>>,
}

/// Inputs a group commit feeds before it writes: bounded so that a flood of deliveries still
/// lets timers run between commits, and well above `delivery_batch_max`, which bounds the
/// batch itself.
const GATHER_MAX: usize = 256;

struct Actor {
    /// First, so that the socket goes before the store's lock: a node starting next never
    /// has its new socket removed by this one.
    _socket_file: RemoveOnDrop,
    node: Node<RedbStore>,
    transport: Transport,
    clock: Clock,
    mesh_name: String,
    stopping: Option<Stop>,
    pending: BTreeMap<u64, PendingCall>,
    next_token: u64,
    /// Peer requests answered later (deliveries waiting for their group commit), by ticket.
    answers: BTreeMap<u64, AnswerTx>,
    next_ticket: u64,
    /// Clients attached to each local Pod.
    attached: BTreeMap<PodName, Vec<ClientTx>>,
    /// Clients that asked for member events (`watch`), and Pod events too (`monitor`).
    watchers: Vec<Watcher>,
    /// Events for Pods nobody is attached to, replayed as alerts.
    alerts: BTreeMap<PodName, VecDeque<Reply>>,
    /// When each replicated key last changed here.
    updated_at: BTreeMap<(podmesh_mesh::NodeName, String), Time>,
    faults: Faults,
    metrics: Metrics,
    /// `send_to_peer` results, for the metrics.
    sends: BTreeMap<&'static str, u64>,
    reload: Reload,
    certs_dir: PathBuf,
}

impl Actor {
    async fn run(
        &mut self,
        seeds: Vec<SocketAddr>,
        mut inbound_rx: mpsc::Receiver<Inbound>,
        mut calls_rx: mpsc::Receiver<ClientEvent>,
        mut scrape_rx: mpsc::Receiver<Scrape>,
    ) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;

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
                Some(event) = calls_rx.recv() => match event {
                    ClientEvent::Call(call) => self.call(call),
                    ClientEvent::Closed(client) => self.forget_client(&client),
                },
                () = sleep => {
                    self.node.handle_timeout(self.clock.now());
                }
                Some(scrape) = scrape_rx.recv() => {
                    let _ = scrape.send(self.render_metrics());
                }
                _ = sigint.recv() => self.leave(),
                _ = sigterm.recv() => self.leave(),
                _ = sighup.recv() => {
                    if let Err(e) = self.reload() {
                        warn!(error = %e, "reload failed; the previous certificates and blocklist stay");
                    }
                }
            }
            self.group_commit(&mut inbound_rx, &mut calls_rx);
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
                NodeOutput::Answer { ticket, bytes } => {
                    if let Some(AnswerTx { kind, reply_tx }) = self.answers.remove(&ticket) {
                        self.answer_peer(kind, reply_tx, Some(bytes));
                    }
                }
                NodeOutput::Reply { token, result } => {
                    if let Some(call) = self.pending.remove(&token) {
                        if let Some(started) = call.send_started {
                            self.count_send(started, &result);
                        }
                        let reply = match result {
                            Ok(reply) => self.local_reply_json(call.id, reply),
                            Err(error) => Reply::error(call.id, &api_error(error)),
                        };
                        call.reply_tx.answer(call.slot, reply);
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
        if let Event::MemberAlive { node, .. } = &event
            && let Ok(name) = podmesh_certs::NodeName::new(node.as_str())
        {
            // Its own signed Alive made it a member: its connections are no stranger's.
            self.transport.set_member(name);
        }
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
        let mut targets: Vec<ClientTx> = self.watchers.iter().map(|w| w.tx.clone()).collect();
        targets.extend(self.attached.values().flatten().cloned());
        for tx in targets {
            tx.send(reply.clone());
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
                Reply::ok(None, "notification", local_api::message_json(&entry)),
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
        // Monitors see every Pod's events, named by Pod; one too slow to keep up is detached.
        let mut tagged = reply.clone();
        if let Value::Object(data) = &mut tagged.data {
            data.insert("pod".to_owned(), json!(pod.as_str()));
        }
        self.watchers
            .retain(|w| !w.pods || w.tx.send(tagged.clone()));
        let clients = self.attached.entry(pod.clone()).or_default();
        // A client whose queue is full or gone is detached rather than silently skipped.
        clients.retain(|tx| tx.send(reply.clone()));
        // A message needs no alert: it stays in the inbox, which the next attach's snapshot
        // carries, until it is acknowledged or drained.
        if clients.is_empty() && reply.event != "notification" {
            let alerts = self.alerts.entry(pod).or_default();
            if alerts.len() >= ALERTS_MAX {
                alerts.pop_front();
            }
            alerts.push_back(reply);
        }
    }

    /// Re-reads the certificates directory and the blocklist and puts them in force without a
    /// restart: new connections use them, and connections of newly blocklisted certificates
    /// are closed at once. Nothing changes when anything fails to load.
    fn reload(&mut self) -> anyhow::Result<Value> {
        let blocklist = (self.reload)()?;
        let identity = NodeIdentity::load(&self.certs_dir)
            .with_context(|| format!("certificates in {}", self.certs_dir.display()))?;
        anyhow::ensure!(
            identity.claim.node.as_str() == self.node.mesh().name().as_str(),
            "the certificate in {} is for node {}, not {}",
            self.certs_dir.display(),
            identity.claim.node,
            self.node.mesh().name()
        );
        let blocked = blocklist.len();
        let tls = MeshTls::new(&identity, blocklist)?;
        // The claims this node checks from now on are checked under the new CA bundle and
        // blocklist too; members whose certificate they refuse are expelled, and a renewed
        // certificate of this node's own signs its claims again. Done first: a bundle that
        // does not admit this node's own certificate fails here, before anything changed.
        let now = self.clock.now();
        let signatures = NodeSignatures(ClaimKeys::new(&identity, tls.clone())?);
        self.node
            .set_signatures(Box::new(signatures), now)
            .context("the reloaded certificates")?;
        let refused = self.transport.reload(tls)?;
        info!(
            blocked,
            refused = refused.len(),
            "certificates and blocklist reloaded"
        );
        // A node this node now refuses is out of its mesh at once, not after a suspicion.
        for name in &refused {
            let Ok(node) = mesh_name(name) else { continue };
            warn!(member = %node, "expelled: its certificate is blocklisted");
            let _ = self
                .node
                .handle(Input::Command(Command::Expel { node }), now);
        }
        let refused: Vec<&str> = refused.iter().map(|n| n.as_str()).collect();
        Ok(json!({ "blocklisted": blocked, "expelled": refused }))
    }

    /// Counts a finished `send_to_peer` and times it when it was delivered.
    fn count_send(&mut self, started: Time, result: &Result<podmesh_mesh::LocalReply, PeerError>) {
        let outcome = match result {
            Ok(_) => {
                let took = self.clock.now().saturating_since(started);
                self.metrics.observe_delivery(took);
                "delivered"
            }
            Err(error) => error.code.as_str(),
        };
        *self.sends.entry(outcome).or_default() += 1;
    }

    /// The metrics text for one scrape.
    fn render_metrics(&self) -> String {
        let mesh = self.node.mesh();
        let peers = self.node.peers();
        let counters = mesh.counters();
        let peer_counters = peers.counters();
        let mut snapshot = Snapshot::default();
        for member in mesh.members() {
            *snapshot.members.entry(member.state.as_str()).or_default() += 1;
        }
        snapshot.local_health = u64::from(mesh.local_health());
        snapshot.connections = self.transport.connection_count() as u64;
        snapshot.counts = BTreeMap::from([
            ("podmesh_probes", counters.probes_sent),
            ("podmesh_indirect_probes", counters.indirect_probes_sent),
            ("podmesh_suspicions", counters.suspicions),
            ("podmesh_refutations", counters.refutations),
            ("podmesh_accusations_dropped", counters.accusations_dropped),
            ("podmesh_claims_refused", counters.claims_refused),
            ("podmesh_claims_held", counters.claims_held),
            ("podmesh_claims_dropped", counters.claims_dropped),
            ("podmesh_deaths_declared", counters.deaths_declared),
            (
                "podmesh_bad_frames",
                counters.bad_frames + peer_counters.bad_requests + peer_counters.bad_responses,
            ),
            (
                "podmesh_store_write_failures",
                counters.store_write_failures + peer_counters.store_write_failures,
            ),
        ]);
        snapshot.handshakes = BTreeMap::from([
            ("committed", peer_counters.handshakes_committed),
            ("aborted", peer_counters.handshakes_aborted),
        ]);
        snapshot.received = BTreeMap::from([
            ("stored", peer_counters.messages_delivered),
            ("duplicate", peer_counters.duplicates),
        ]);
        snapshot.sends = self.sends.clone();
        snapshot.inboxes = peers
            .pods()
            .map(|pod| (pod.name.to_string(), peers.inbox_len(&pod.name) as u64))
            .collect();
        self.metrics.render(&snapshot)
    }
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

fn api_error(error: PeerError) -> ApiError {
    ApiError::new(error.code, error.message)
}

mod inbound;
mod local_api;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_data_directory_held_past_the_wait_is_refused_as_in_use() {
        // The wait is bounded: a directory another node keeps gives the in-use error after it.
        let dir = tempfile::tempdir().unwrap();
        let held = RedbStore::open(dir.path()).unwrap();
        let err = open_store(dir.path(), Duration::from_millis(300))
            .await
            .expect_err("a held directory must not open");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(held);
        let (_, waited) = open_store(dir.path(), Duration::from_millis(300))
            .await
            .unwrap();
        assert!(!waited, "a free directory opens without waiting");
    }
}
