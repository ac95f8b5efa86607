//! `podmesh-flood`: a node of the mesh that follows the peer protocol only as far as it likes,
//! for tests of what one admitted node can take from another. It holds a real certificate from
//! the mesh CA, speaks real QUIC with mutual TLS through the node's own transport, and sends
//! peer requests as fast as their answers come back. It never joins membership and answers
//! nothing.
//!
//! Modes, each against one node (`--to`, `--node`):
//! - `inbox`: registers its Pod `flood` with `--pod`, then delivers `--count` messages to it.
//! - `peers`: registers `--count` Pods of its own with `--pod`.
//! - `prepare`: prepares `--count` registrations with the Pods of `--pod` (a comma-separated
//!   list, taken in turn) and never commits or aborts any of them.
//! - `slow`: opens `--count` connections and on each as many streams of both kinds as the node
//!   allows, writes all but the last byte of a largest frame on every one, and holds them open
//!   until the node stops them, over and over for `--hold-s` seconds; then closes everything.
//!
//! It prints one JSON object: how many requests (or, for `slow`, frames) succeeded, and the
//! refusals by error code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use podmesh::transport::{Destination, Inbound, Transport, TransportLimits};
use podmesh_certs::{MeshTls, NodeIdentity};
use podmesh_mesh::{NodeName, PeerOp, PeerRequest, PeerResponse, PodAddr, PodName, RequestId};
use tokio::sync::mpsc;

/// What to flood.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Messages into one inbox.
    Inbox,
    /// Peer registrations with one Pod.
    Peers,
    /// Prepared handshakes that never finish.
    Prepare,
    /// Connections that write large frames and never finish them.
    Slow,
}

/// Floods one node with peer requests from an admitted node.
#[derive(Debug, Parser)]
#[command(name = "podmesh-flood")]
struct Args {
    /// What to flood.
    mode: Mode,
    /// This node's certificate directory (`ca.crt`, `node.crt`, `node.key`).
    #[arg(long)]
    certs_dir: PathBuf,
    /// The node to flood, at this address.
    #[arg(long)]
    to: SocketAddr,
    /// Its name.
    #[arg(long)]
    node: podmesh_certs::NodeName,
    /// The Pod (or, for `prepare`, the comma-separated Pods) on that node.
    #[arg(long)]
    pod: String,
    /// Requests to send (messages, registrations or prepares), or connections to open.
    #[arg(long)]
    count: u64,
    /// For `slow`: how long to keep the connections busy.
    #[arg(long, default_value_t = 20)]
    hold_s: u64,
}

/// Bytes the node accepts in one stream frame (the node's `frame_size_max`).
const FRAME_SIZE_MAX: usize = 1 << 20;

/// Streams of one kind the node lets a connection open at once (its
/// `streams_per_connection_max`); asking for more only waits.
const STREAMS_PER_KIND: usize = 16;

/// Keeps one connection's streams full of unfinished frames until `until`; returns how many
/// frames it started.
async fn hold_streams(connection: quinn::Connection, until: tokio::time::Instant) -> u64 {
    let almost = vec![0x5a_u8; FRAME_SIZE_MAX - 1];
    let mut started = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for kind in 0..2 * STREAMS_PER_KIND {
        let connection = connection.clone();
        let almost = almost.clone();
        tasks.spawn(async move {
            let mut started = 0;
            while tokio::time::Instant::now() < until {
                let stream = if kind % 2 == 0 {
                    connection.open_uni().await.ok()
                } else {
                    connection.open_bi().await.ok().map(|(send, _)| send)
                };
                let Some(mut stream) = stream else { break };
                if stream.write_all(&almost).await.is_ok() {
                    started += 1;
                }
                // The node stops the stream once its frame read times out.
                let _ = tokio::time::timeout_at(until, stream.stopped()).await;
            }
            started
        });
    }
    while let Some(n) = tasks.join_next().await {
        started += n.unwrap_or(0);
    }
    started
}

struct Flood {
    me: NodeName,
    incarnation: u64,
    seq: u64,
    rpc: u64,
    transport: Transport,
    inbound: mpsc::Receiver<Inbound>,
    to: Destination,
    ok: u64,
    refused: BTreeMap<String, u64>,
    /// The first refusal's message for each code.
    messages: BTreeMap<String, String>,
}

impl Flood {
    fn next_id(&mut self) -> RequestId {
        self.seq += 1;
        RequestId {
            node: self.me.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
        }
    }

    /// Sends one request and waits for its answer (`None`: the transport failed).
    async fn ask(&mut self, request: &PeerRequest) -> anyhow::Result<Option<PeerResponse>> {
        self.rpc += 1;
        let rpc = self.rpc;
        self.transport
            .request(rpc, self.to.clone(), request.encode());
        loop {
            match self.inbound.recv().await.context("transport stopped")? {
                Inbound::Response { rpc: r, bytes } if r == rpc => {
                    return Ok(bytes.and_then(|b| PeerResponse::decode(&b).ok()));
                }
                Inbound::Request { reply_tx, .. } => drop(reply_tx),
                _ => {}
            }
        }
    }

    /// Counts one answer: `want` is success, anything else a refusal by its code.
    fn count(&mut self, answer: Option<PeerResponse>, want: &PeerResponse) {
        match answer {
            Some(a) if a == *want => self.ok += 1,
            Some(PeerResponse::Rejected(e)) => {
                let code = format!("{:?}", e.code);
                self.messages.entry(code.clone()).or_insert(e.message);
                *self.refused.entry(code).or_default() += 1;
            }
            Some(other) => *self.refused.entry(format!("{other:?}")).or_default() += 1,
            None => *self.refused.entry("no_answer".into()).or_default() += 1,
        }
    }

    async fn prepare(&mut self, source: &str, target: &str) -> anyhow::Result<(RequestId, bool)> {
        let id = self.next_id();
        let request = PeerRequest::Prepare {
            id: id.clone(),
            source: PodAddr::new(source.parse::<PodName>()?, self.me.clone()),
            target: target.parse()?,
            op: PeerOp::Register,
        };
        let answer = self.ask(&request).await?;
        let prepared = answer == Some(PeerResponse::Prepared);
        self.count(answer, &PeerResponse::Prepared);
        Ok((id, prepared))
    }

    async fn register(&mut self, source: &str, target: &str) -> anyhow::Result<bool> {
        let (id, prepared) = self.prepare(source, target).await?;
        if !prepared {
            return Ok(false);
        }
        let answer = self.ask(&PeerRequest::Commit { id }).await?;
        if answer != Some(PeerResponse::Acked) {
            bail!("commit not acknowledged: {answer:?}");
        }
        Ok(true)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let identity = NodeIdentity::load(&args.certs_dir)?;
    let me: NodeName = identity.claim.node.as_str().parse()?;
    let tls = MeshTls::new(&identity, Default::default())?;
    let limits = TransportLimits::default();
    let (inbound_tx, inbound) = mpsc::channel(limits.inbound_queue_len_max);
    let transport = Transport::bind("127.0.0.1:0".parse()?, tls, limits, inbound_tx)?;
    let mut flood = Flood {
        me,
        incarnation: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        seq: 0,
        rpc: 0,
        transport,
        inbound,
        to: Destination {
            addr: args.to,
            name: Some(args.node),
        },
        ok: 0,
        refused: BTreeMap::new(),
        messages: BTreeMap::new(),
    };
    match args.mode {
        Mode::Inbox => {
            if !flood.register("flood", &args.pod).await? {
                bail!("could not register with {}: {:?}", args.pod, flood.refused);
            }
            flood.ok = 0;
            for i in 0..args.count {
                let request = PeerRequest::Deliver {
                    id: flood.next_id(),
                    from: "flood".parse()?,
                    to: args.pod.parse()?,
                    body: format!("flood {i}"),
                };
                let answer = flood.ask(&request).await?;
                flood.count(answer, &PeerResponse::Delivered);
            }
        }
        Mode::Peers => {
            for i in 0..args.count {
                flood.register(&format!("flood-{i}"), &args.pod).await?;
            }
        }
        Mode::Slow => {
            let tls = MeshTls::new(&identity, Default::default())?;
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
            endpoint.set_default_client_config(tls.quinn_client()?);
            let server_name = tls.server_name(&podmesh_certs::ServerTarget::Node(
                flood.to.name.clone().context("a node name")?,
            ));
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(args.hold_s);
            let mut connections = Vec::new();
            let mut holds = tokio::task::JoinSet::new();
            for _ in 0..args.count {
                let connection = endpoint.connect(args.to, &server_name)?.await?;
                connections.push(connection.clone());
                holds.spawn(hold_streams(connection, until));
            }
            while let Some(n) = holds.join_next().await {
                flood.ok += n.unwrap_or(0);
            }
            for connection in connections {
                connection.close(0u32.into(), b"done");
            }
            endpoint.wait_idle().await;
        }
        Mode::Prepare => {
            let targets: Vec<&str> = args.pod.split(',').collect();
            for i in 0..args.count {
                let target = targets[i as usize % targets.len()];
                flood.prepare(&format!("flood-{i}"), target).await?;
            }
        }
    }
    let refused: serde_json::Map<String, serde_json::Value> = flood
        .refused
        .iter()
        .map(|(code, n)| (code.clone(), (*n).into()))
        .collect();
    println!(
        "{}",
        serde_json::json!({ "ok": flood.ok, "refused": refused, "messages": flood.messages })
    );
    flood.transport.close().await;
    Ok(())
}
