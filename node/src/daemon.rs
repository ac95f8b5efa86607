//! The node daemon: one actor task owns the mesh state machine and drives it with real time,
//! the QUIC transport and the local API.
//!
//! Everything reaches the actor through bounded channels: inbound frames from the transport,
//! calls from local clients, and signals. The actor feeds them to [`Mesh::handle`], sleeps until
//! [`Mesh::poll_timeout`], and carries out every [`Output`]. `Instant::now()` is read only in
//! [`Clock`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use podmesh_certs::{Fingerprint, MeshTls, NodeIdentity};
use podmesh_mesh::{
    Command, Config, Event, Input, Member, MemberState, Mesh, Output, Target, Time,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::{ApiError, ErrorCode, REQUEST_QUEUE_LEN_MAX, Reply, SOCKET_FILE};
use crate::api_server::{self, ApiCall};
use crate::config::Preset;
use crate::store::RedbStore;
use crate::transport::{Channel, Destination, Inbound, Transport, TransportLimits};

/// How long a leaving node keeps gossiping its `left` state before it exits.
pub const LEAVE_GRACE_MAX: Duration = Duration::from_secs(3);

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

/// The daemon's one clock: monotonic time for the core, wall time for people.
#[derive(Clone, Copy, Debug)]
struct Clock {
    start: Instant,
    start_wall: SystemTime,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            start_wall: SystemTime::now(),
        }
    }

    fn now(&self) -> Time {
        Time::from_micros(u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn instant(&self, t: Time) -> tokio::time::Instant {
        (self.start + Duration::from_micros(t.as_micros())).into()
    }

    fn unix_ms(&self, t: Time) -> u64 {
        let wall = self.start_wall + Duration::from_micros(t.as_micros());
        wall.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
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

    let mut config = match settings.preset {
        Preset::Lan => Config::lan(),
        Preset::Wan => Config::wan(),
    };
    // QUIC datagrams are smaller than UDP's: leave room for QUIC's own headers.
    config.datagram_size_max = config.datagram_size_max.min(1100);
    let clock = Clock::new();
    let me = mesh_name(&node)?;
    let mesh = Mesh::new(config, me, advertise, store, random_seed(), clock.now())
        .context("starting the membership core")?;

    let socket = data_dir.join(SOCKET_FILE);
    let listener = api_server::bind(&socket)
        .with_context(|| format!("cannot create the local API socket {}", socket.display()))?;
    let (calls_tx, calls_rx) = mpsc::channel(REQUEST_QUEUE_LEN_MAX);
    let api_task = tokio::spawn(api_server::serve(listener, calls_tx));

    info!(
        node = %node, mesh = %identity.claim.mesh, listen = %bound, advertise = %advertise,
        incarnation = mesh.incarnation(), data_dir = %data_dir.display(), "node started"
    );
    // One line on stdout that scripts and tests can wait for.
    println!("podmesh node {node} listening on {bound} (advertising {advertise})");

    let mut actor = Actor {
        mesh,
        transport: transport.clone(),
        clock,
        mesh_name: identity.claim.mesh.to_string(),
        started_unix_ms: clock.unix_ms(Time::ZERO),
        stopping: None,
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

struct Actor {
    mesh: Mesh<RedbStore>,
    transport: Transport,
    clock: Clock,
    mesh_name: String,
    started_unix_ms: u64,
    stopping: Option<Stop>,
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
        self.mesh
            .handle(Input::Command(Command::Join { seeds }), now)?;
        self.flush();
        loop {
            match self.stopping {
                Some(Stop::Now) => return Ok(()),
                Some(Stop::Leave { until }) => {
                    let now = self.clock.now();
                    if now >= until || self.mesh.broadcast_queue_len() == 0 {
                        return Ok(());
                    }
                }
                None => {}
            }
            let deadline = self.mesh.poll_timeout().map(|t| self.clock.instant(t));
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
                    let now = self.clock.now();
                    self.mesh.handle_timeout(now);
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
        if let Err(e) = self.mesh.handle(Input::Command(Command::Leave), now) {
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
        };
        if let Err(e) = self.mesh.handle(input, now) {
            warn!(error = %e, "input refused");
        }
    }

    /// Carries out everything the core asked for.
    fn flush(&mut self) {
        while let Some(output) = self.mesh.poll_output() {
            match output {
                Output::Datagram { to, bytes } => {
                    if let Some(to) = destination(to) {
                        self.transport.send(to, Channel::Datagram, bytes);
                    }
                }
                Output::Message { to, bytes } => {
                    if let Some(to) = destination(to) {
                        self.transport.send(to, Channel::Stream, bytes);
                    }
                }
                Output::Event(event) => log_event(&event),
            }
        }
    }

    fn call(&mut self, call: ApiCall) {
        let id = call.request.id;
        let reply = match self.answer(&call.request.method) {
            Ok((event, data)) => Reply::ok(id, event, data),
            Err(error) => Reply::error(id, &error),
        };
        // A client too slow to take its own reply is dropped by its writer, not waited for.
        let _ = call.reply_tx.try_send(reply);
    }

    fn answer(&mut self, method: &str) -> Result<(&'static str, Value), ApiError> {
        match method {
            "members" => Ok(("members", json!({ "members": self.members_json() }))),
            "node_info" => Ok(("node_info", self.node_info())),
            "leave" => {
                self.leave();
                Ok(("leaving", json!({})))
            }
            "shutdown" => {
                self.stopping = Some(Stop::Now);
                Ok(("shutting_down", json!({})))
            }
            other => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("unknown method {other:?}"),
            )),
        }
    }

    fn members_json(&self) -> Vec<Value> {
        let mut members = self.mesh.members();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members.iter().map(|m| self.member_json(m)).collect()
    }

    fn member_json(&self, member: &Member) -> Value {
        json!({
            "name": member.name.as_str(),
            "address": member.addr.to_string(),
            "state": state_name(member.state),
            "incarnation": member.incarnation,
            "changed_at_ms": self.clock.unix_ms(member.changed_at),
            "local": member.name == *self.mesh.name(),
        })
    }

    fn node_info(&self) -> Value {
        let counters = self.mesh.counters();
        let stats = self.transport.stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        json!({
            "name": self.mesh.name().as_str(),
            "mesh": self.mesh_name,
            "address": self.mesh.addr().to_string(),
            "incarnation": self.mesh.incarnation(),
            "version": env!("CARGO_PKG_VERSION"),
            "started_at_ms": self.started_unix_ms,
            "local_health": self.mesh.local_health(),
            "connections": self.transport.connection_count(),
            "counters": {
                "datagrams_sent": counters.datagrams_sent,
                "messages_sent": counters.messages_sent,
                "datagrams_received": counters.datagrams_received,
                "messages_received": counters.messages_received,
                "bad_frames": counters.bad_frames,
                "sends_dropped": load(&stats.sends_dropped),
                "connect_failures": load(&stats.connect_failures),
                "handshakes_refused": load(&stats.handshakes_refused),
                "frames_too_large": load(&stats.frames_too_large),
            },
        })
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

/// The member state as the CLI and the local API spell it.
pub fn state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Dead => "dead",
        MemberState::Left => "left",
    }
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
