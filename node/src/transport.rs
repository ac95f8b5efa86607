//! QUIC transport: one quinn endpoint that serves and dials, and a pool of connections keyed by
//! the authenticated node name at the other end.
//!
//! Datagrams carry probes and piggybacked gossip; anything larger than the path allows, and every
//! stream message, goes on its own unidirectional stream (the whole stream is one frame). What
//! arrives is handed to the actor with the sender's node name as its certificate proves it, never
//! as the message claims it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use podmesh_certs::{MeshTls, NodeName, ServerTarget};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

/// Limits of the transport. Every queue and wait is bounded.
#[derive(Clone, Debug)]
pub struct TransportLimits {
    /// Largest stream frame accepted; larger ones are refused and the stream stopped.
    pub frame_size_max: usize,
    /// Most connections kept open; the least recently used is closed past it.
    pub connections_max: usize,
    /// Connections open at once with one node, in either direction; past it the oldest is
    /// closed. Two let a reconnect replace a connection its peer lost without waiting for the
    /// idle timeout, and keep one certificate from multiplying what its connections hold.
    pub connections_per_node_max: usize,
    /// Inbound connections open at once from nodes that are not members (no claim of theirs
    /// admitted them: see [`Transport::set_member`]); past it the oldest such connection is
    /// closed. An honest node is a stranger only from its first connection until its join
    /// push/pull is read, a round trip; a node that never joins, or many certificates of one
    /// that holds them, can hold no more than this many connection windows.
    pub stranger_connections_max: usize,
    /// Largest request frame accepted on a bidirectional stream: twice the largest peer
    /// request (a 64 KiB message and its fields), where `frame_size_max` serves membership
    /// messages. It keeps what a connection's request streams can hold to an eighth.
    pub request_size_max: usize,
    /// Sends (dial + write) in flight at once; further sends are dropped and counted, as gossip
    /// tolerates loss and a slow peer must not stall the actor.
    pub sends_in_flight_max: usize,
    /// How long a dial may take before the send is dropped.
    pub connect_timeout: Duration,
    /// How long a request on a bidirectional stream may take, dial included.
    pub request_timeout: Duration,
    /// A connection unused this long is closed by QUIC.
    pub idle_timeout: Duration,
    /// Inbound frames queued towards the actor; when full, datagrams are dropped and stream
    /// readers wait (back-pressure on that peer only).
    pub inbound_queue_len_max: usize,
    /// Streams of each kind a peer may have open towards this node at once; more wait for one
    /// to end (QUIC's stream limit), so a connection holds at most this many frame reads.
    pub streams_per_connection_max: u32,
    /// Stream bytes a peer may have sent and this node not yet read, over all of a
    /// connection's streams (QUIC's connection flow-control window). It bounds what one
    /// connection makes the node hold, whatever its peer writes.
    pub connection_window: u32,
    /// Datagram bytes buffered per connection before the oldest are dropped.
    pub datagram_buffer: usize,
    /// How long an inbound stream may take to deliver its whole frame; a slower one is stopped,
    /// so a peer writing slowly cannot hold its buffers.
    pub frame_read_timeout: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            // Matches the mesh codec's stream limit with room for framing.
            frame_size_max: 1 << 20,
            connections_max: 1024,
            connections_per_node_max: 2,
            // 32 connection windows of 2 MiB: 64 MiB at most for nodes not in the mesh, and
            // room for 32 nodes joining through this one in the same round trip (more retry).
            stranger_connections_max: 32,
            request_size_max: 128 << 10,
            sends_in_flight_max: 256,
            connect_timeout: Duration::from_secs(3),
            // Below the peer protocol's own RPC deadline, so the transport reports first.
            request_timeout: Duration::from_millis(2500),
            idle_timeout: Duration::from_secs(60),
            inbound_queue_len_max: 4096,
            // Frames are one per stream and nearly always small; 16 of each kind keep delivery
            // and gossip streams flowing side by side.
            streams_per_connection_max: 16,
            // Two whole frames of the largest size: a large frame is never starved, and a
            // connection holds at most 2 MiB of unread stream data.
            connection_window: 2 << 20,
            // About 100 full-size datagrams: several protocol periods of gossip.
            datagram_buffer: 128 << 10,
            // Well past what a 1 MiB frame takes on a slow path, far short of forever.
            frame_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Something that arrived from another node.
#[derive(Debug)]
pub enum Inbound {
    /// A datagram from an authenticated node.
    Datagram {
        /// The sender, from its certificate.
        from: NodeName,
        /// The payload.
        bytes: Vec<u8>,
    },
    /// A whole stream frame from an authenticated node.
    Message {
        /// The sender, from its certificate.
        from: NodeName,
        /// The payload.
        bytes: Vec<u8>,
    },
    /// A peer-protocol request on a bidirectional stream; answer through `reply_tx` (`None`
    /// resets the stream).
    Request {
        /// The sender, from its certificate.
        from: NodeName,
        /// The request frame.
        bytes: Vec<u8>,
        /// Where the answer goes.
        reply_tx: tokio::sync::oneshot::Sender<Option<Vec<u8>>>,
    },
    /// The answer to an outbound request, or `None` when it failed.
    Response {
        /// The caller's request number.
        rpc: u64,
        /// The answer frame.
        bytes: Option<Vec<u8>>,
    },
    /// The last connection to a node closed.
    ConnectionLost {
        /// The node.
        node: NodeName,
    },
}

/// Where to send: an address and, when known, the node expected there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The node's address.
    pub addr: SocketAddr,
    /// The node's name; `None` for a seed known only by address.
    pub name: Option<NodeName>,
}

/// How a frame travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Unreliable datagram (falls back to a stream when too large for the path).
    Datagram,
    /// Reliable stream frame.
    Stream,
}

/// Counters an operator can read through the local API.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Sends dropped because too many were in flight.
    pub sends_dropped: std::sync::atomic::AtomicU64,
    /// Dials that failed or timed out.
    pub connect_failures: std::sync::atomic::AtomicU64,
    /// Inbound connections refused during the handshake.
    pub handshakes_refused: std::sync::atomic::AtomicU64,
    /// Inbound frames over the size limit.
    pub frames_too_large: std::sync::atomic::AtomicU64,
    /// Inbound frames not complete within `frame_read_timeout`.
    pub frames_too_slow: std::sync::atomic::AtomicU64,
    /// Inbound datagrams dropped because the actor's queue was full.
    pub datagrams_dropped: std::sync::atomic::AtomicU64,
    /// Connections closed because a newer one with the same node went past
    /// `connections_per_node_max`.
    pub connections_replaced: std::sync::atomic::AtomicU64,
    /// Inbound connections of nodes that are not members closed past
    /// `stranger_connections_max`.
    pub strangers_closed: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Pooled {
    connection: quinn::Connection,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct Pool {
    by_name: HashMap<NodeName, Pooled>,
    /// Every open connection, pooled or replaced by a newer one to the same node, by stable
    /// id: what a reload checks against a new blocklist, and what `connections_per_node_max`
    /// counts.
    open: HashMap<usize, Open>,
}

impl Pool {
    /// Closes the oldest `excess` of the open connections `ids` (each with when it opened),
    /// counting each in `counter`.
    fn close_oldest(
        &mut self,
        mut ids: Vec<(Instant, usize)>,
        excess: usize,
        counter: &std::sync::atomic::AtomicU64,
        reason: &'static [u8],
    ) {
        ids.sort_unstable();
        for (_, id) in ids.into_iter().take(excess) {
            let Some(old) = self.open.remove(&id) else {
                continue;
            };
            bump(counter);
            if self
                .by_name
                .get(&old.name)
                .is_some_and(|p| p.connection.stable_id() == id)
            {
                self.by_name.remove(&old.name);
            }
            old.connection.close(0u32.into(), reason);
        }
    }
}

#[derive(Debug)]
struct Open {
    name: NodeName,
    connection: quinn::Connection,
    opened: Instant,
    /// Accepted from the peer rather than dialled by this node.
    inbound: bool,
}

/// The TLS configuration in force: replaced whole by [`Transport::reload`].
#[derive(Clone, Debug)]
struct Tls {
    mesh: MeshTls,
    client: quinn::ClientConfig,
}

/// The QUIC transport of one node.
#[derive(Clone, Debug)]
pub struct Transport {
    endpoint: quinn::Endpoint,
    tls: Arc<RwLock<Tls>>,
    pool: Arc<Mutex<Pool>>,
    /// The nodes that are members here: the others' inbound connections are strangers, held
    /// to `stranger_connections_max`.
    members: Arc<RwLock<HashSet<NodeName>>>,
    /// Serialises dials per destination so two sends never open two connections.
    dialing: Arc<tokio::sync::Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>>,
    inbound_tx: mpsc::Sender<Inbound>,
    sends: Arc<Semaphore>,
    limits: TransportLimits,
    stats: Arc<TransportStats>,
}

fn transport_config(limits: &TransportLimits) -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    // The idle timeout is what closes pooled connections nobody uses any more.
    if let Ok(idle) = quinn::IdleTimeout::try_from(limits.idle_timeout) {
        config.max_idle_timeout(Some(idle));
    }
    // What one connection can make this node hold, from our own frame limits: quinn's defaults
    // let a peer keep 100 streams of 1.25 MB each in flight with no connection-wide cap.
    let frame = u32::try_from(limits.frame_size_max).unwrap_or(u32::MAX);
    config.max_concurrent_uni_streams(limits.streams_per_connection_max.into());
    config.max_concurrent_bidi_streams(limits.streams_per_connection_max.into());
    // A stream's window need not hold a whole frame: the reader consumes as data arrives. A
    // quarter of the largest frame keeps what a refused or abandoned stream brings in small.
    config.stream_receive_window((frame / 4).max(1).into());
    config.receive_window(limits.connection_window.max(frame).into());
    config.send_window(u64::from(limits.connection_window.max(frame)));
    config.datagram_receive_buffer_size(Some(limits.datagram_buffer));
    Arc::new(config)
}

fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl Transport {
    /// Binds the endpoint on `listen` and starts accepting connections; inbound frames go to
    /// `inbound_tx`.
    pub fn bind(
        listen: SocketAddr,
        tls: MeshTls,
        limits: TransportLimits,
        inbound_tx: mpsc::Sender<Inbound>,
    ) -> anyhow::Result<Self> {
        let mut server = tls.quinn_server()?;
        server.transport_config(transport_config(&limits));
        let mut client_config = tls.quinn_client()?;
        client_config.transport_config(transport_config(&limits));
        let endpoint = quinn::Endpoint::server(server, listen).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                anyhow::anyhow!("cannot listen on {listen}: the port is in use")
            } else {
                anyhow::anyhow!("cannot listen on {listen}: {e}")
            }
        })?;
        let transport = Self {
            endpoint,
            tls: Arc::new(RwLock::new(Tls {
                mesh: tls,
                client: client_config,
            })),
            pool: Arc::default(),
            members: Arc::default(),
            dialing: Arc::default(),
            inbound_tx,
            sends: Arc::new(Semaphore::new(limits.sends_in_flight_max)),
            limits,
            stats: Arc::default(),
        };
        tokio::spawn(transport.clone().accept_loop());
        Ok(transport)
    }

    /// Puts renewed certificates, CA bundle or blocklist in force: new connections, in and
    /// out, use `tls`, and every open connection whose peer `tls` refuses by fingerprint is
    /// closed at once. When the trusted CAs changed, every connection is closed, so that each
    /// is authenticated again under the new trust (the mesh redials at once; a lost connection
    /// is only a hint to membership). Returns the nodes refused by fingerprint.
    pub fn reload(&self, tls: MeshTls) -> anyhow::Result<Vec<NodeName>> {
        let mut server = tls.quinn_server()?;
        server.transport_config(transport_config(&self.limits));
        let mut client = tls.quinn_client()?;
        client.transport_config(transport_config(&self.limits));
        // Swapped under the pool lock, which `adopt` also holds while it checks a connection
        // against the configuration in force: no connection slips between check and swap.
        let (refused, retrusted) = {
            let pool = self
                .pool
                .lock()
                .map_err(|_| anyhow::anyhow!("the connection pool lock is poisoned"))?;
            let mut current = self
                .tls
                .write()
                .map_err(|_| anyhow::anyhow!("the TLS configuration lock is poisoned"))?;
            let same_cas = current.mesh.trusts_same_cas(&tls);
            self.endpoint.set_server_config(Some(server));
            let (refused, others): (Vec<_>, Vec<_>) = pool
                .open
                .values()
                .map(|open| open.connection.clone())
                .partition(|c| tls.refuses_peer(c));
            *current = Tls { mesh: tls, client };
            (refused, if same_cas { Vec::new() } else { others })
        };
        let mut names = Vec::new();
        for connection in &refused {
            if let Some(name) = self.mesh_tls().and_then(|t| t.peer_node(connection).ok()) {
                names.push(name);
            }
            connection.close(2u32.into(), b"blocklisted");
        }
        for connection in &retrusted {
            connection.close(0u32.into(), b"trust changed");
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Notes that `name` is a member here (its own signed claim admitted it): its inbound
    /// connections no longer count as strangers'.
    pub fn set_member(&self, name: NodeName) {
        if let Ok(mut members) = self.members.write() {
            members.insert(name);
        }
    }

    fn mesh_tls(&self) -> Option<MeshTls> {
        self.tls.read().ok().map(|tls| tls.mesh.clone())
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The transport's counters.
    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    /// Number of pooled connections.
    pub fn connection_count(&self) -> usize {
        self.pool.lock().map(|p| p.by_name.len()).unwrap_or(0)
    }

    /// Sends `bytes` to `to` in the background; never blocks the caller. When too many sends
    /// are in flight the frame is dropped and counted.
    pub fn send(&self, to: Destination, channel: Channel, bytes: Vec<u8>) {
        let Ok(permit) = self.sends.clone().try_acquire_owned() else {
            bump(&self.stats.sends_dropped);
            return;
        };
        let transport = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = transport.send_now(&to, channel, bytes).await {
                debug!(addr = %to.addr, node = ?to.name, error = %e, "send failed");
            }
        });
    }

    async fn send_now(
        &self,
        to: &Destination,
        channel: Channel,
        bytes: Vec<u8>,
    ) -> anyhow::Result<()> {
        let connection = self.connection(to).await?;
        let fits = connection
            .max_datagram_size()
            .is_some_and(|max| bytes.len() <= max);
        if channel == Channel::Datagram && fits {
            connection.send_datagram(bytes.into())?;
            return Ok(());
        }
        let mut stream = connection.open_uni().await?;
        stream.write_all(&bytes).await?;
        stream.finish()?;
        Ok(())
    }

    /// Sends a request on a new bidirectional stream in the background; the answer (or `None`)
    /// comes back to the actor as [`Inbound::Response`] with `rpc`.
    pub fn request(&self, rpc: u64, to: Destination, bytes: Vec<u8>) {
        let Ok(permit) = self.sends.clone().try_acquire_owned() else {
            bump(&self.stats.sends_dropped);
            let inbound_tx = self.inbound_tx.clone();
            tokio::spawn(async move {
                let _ = inbound_tx
                    .send(Inbound::Response { rpc, bytes: None })
                    .await;
            });
            return;
        };
        let transport = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let deadline = tokio::time::Instant::now() + transport.limits.request_timeout;
            let answer = match transport.exchange(&to, bytes, deadline).await {
                Ok(answer) => Some(answer),
                Err(e) => {
                    debug!(addr = %to.addr, node = ?to.name, error = %e, "request failed");
                    None
                }
            };
            let _ = transport
                .inbound_tx
                .send(Inbound::Response { rpc, bytes: answer })
                .await;
        });
    }

    /// One request and its answer, all by `deadline`. A request given up on is reset, so QUIC
    /// stops retransmitting it: a request that was reported failed should not be carried out
    /// later, when a cut heals. (Bytes the other side already received cannot be called back;
    /// the peer protocol's ids make a late arrival harmless.)
    async fn exchange(
        &self,
        to: &Destination,
        bytes: Vec<u8>,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Vec<u8>> {
        let late = || anyhow::anyhow!("no answer from {} in time", to.addr);
        let connection = tokio::time::timeout_at(deadline, self.connection(to))
            .await
            .map_err(|_| late())??;
        let (mut send, mut recv) = tokio::time::timeout_at(deadline, connection.open_bi())
            .await
            .map_err(|_| late())??;
        let limit = self.limits.frame_size_max;
        let answer = tokio::time::timeout_at(deadline, async {
            send.write_all(&bytes).await?;
            send.finish()?;
            anyhow::Ok(recv.read_to_end(limit).await?)
        })
        .await;
        match answer {
            Ok(answer) => answer,
            Err(_) => {
                let _ = send.reset(1u32.into());
                let _ = recv.stop(1u32.into());
                Err(late())
            }
        }
    }

    /// Returns a live pooled connection to `to`, dialling if there is none.
    async fn connection(&self, to: &Destination) -> anyhow::Result<quinn::Connection> {
        if let Some(connection) = to.name.as_ref().and_then(|name| self.pooled(name)) {
            return Ok(connection);
        }
        let slot = {
            let mut dialing = self.dialing.lock().await;
            dialing.entry(to.addr).or_default().clone()
        };
        let _guard = slot.lock().await;
        // Another send may have connected while this one waited.
        if let Some(connection) = to.name.as_ref().and_then(|name| self.pooled(name)) {
            return Ok(connection);
        }
        let target = match &to.name {
            Some(name) => ServerTarget::Node(name.clone()),
            None => ServerTarget::AnyNode,
        };
        let tls = self
            .tls
            .read()
            .map_err(|_| anyhow::anyhow!("the TLS configuration lock is poisoned"))?
            .clone();
        let server_name = tls.mesh.server_name(&target);
        let connecting = self
            .endpoint
            .connect_with(tls.client, to.addr, &server_name)?;
        let connection = match tokio::time::timeout(self.limits.connect_timeout, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                bump(&self.stats.connect_failures);
                return Err(e.into());
            }
            Err(_) => {
                bump(&self.stats.connect_failures);
                anyhow::bail!("connecting to {} timed out", to.addr);
            }
        };
        let name = tls.mesh.peer_node(&connection)?;
        self.adopt(name, connection.clone(), false);
        Ok(connection)
    }

    fn pooled(&self, name: &NodeName) -> Option<quinn::Connection> {
        let mut pool = self.pool.lock().ok()?;
        let entry = pool.by_name.get_mut(name)?;
        if entry.connection.close_reason().is_some() {
            pool.by_name.remove(name);
            return None;
        }
        entry.last_used = Instant::now();
        Some(entry.connection.clone())
    }

    /// Pools a connection (`inbound`, or dialled by this node) under its authenticated name and
    /// starts reading from it.
    fn adopt(&self, name: NodeName, connection: quinn::Connection, inbound: bool) {
        if let Ok(mut pool) = self.pool.lock() {
            // A handshake that finished under the configuration a reload just replaced.
            if self
                .tls
                .read()
                .is_ok_and(|tls| tls.mesh.refuses_peer(&connection))
            {
                connection.close(2u32.into(), b"blocklisted");
                return;
            }
            if pool.by_name.len() >= self.limits.connections_max
                && !pool.by_name.contains_key(&name)
            {
                let oldest = pool
                    .by_name
                    .iter()
                    .min_by_key(|(_, p)| p.last_used)
                    .map(|(n, _)| n.clone());
                if let Some(oldest) = oldest.and_then(|n| pool.by_name.remove(&n)) {
                    oldest.connection.close(0u32.into(), b"pool full");
                }
            }
            pool.open.insert(
                connection.stable_id(),
                Open {
                    name: name.clone(),
                    connection: connection.clone(),
                    opened: Instant::now(),
                    inbound,
                },
            );
            if inbound {
                self.hold_strangers(&mut pool);
            }
            let same: Vec<(Instant, usize)> = pool
                .open
                .iter()
                .filter(|(id, open)| open.name == name && **id != connection.stable_id())
                .map(|(id, open)| (open.opened, *id))
                .collect();
            // The new connection is kept; the oldest others go past the bound.
            let excess = (same.len() + 1).saturating_sub(self.limits.connections_per_node_max);
            pool.close_oldest(same, excess, &self.stats.connections_replaced, b"replaced");
            pool.by_name.insert(
                name.clone(),
                Pooled {
                    connection: connection.clone(),
                    last_used: Instant::now(),
                },
            );
        }
        tokio::spawn(
            self.clone()
                .read_datagrams(name.clone(), connection.clone()),
        );
        tokio::spawn(self.clone().read_requests(name.clone(), connection.clone()));
        tokio::spawn(self.clone().read_streams(name, connection));
    }

    /// Closes the oldest inbound connections of nodes that are not members past
    /// `stranger_connections_max`.
    fn hold_strangers(&self, pool: &mut Pool) {
        let Ok(members) = self.members.read() else {
            return;
        };
        let strangers: Vec<(Instant, usize)> = pool
            .open
            .iter()
            .filter(|(_, open)| open.inbound && !members.contains(&open.name))
            .map(|(id, open)| (open.opened, *id))
            .collect();
        drop(members);
        let excess = strangers
            .len()
            .saturating_sub(self.limits.stranger_connections_max);
        pool.close_oldest(
            strangers,
            excess,
            &self.stats.strangers_closed,
            b"not a member",
        );
    }

    async fn accept_loop(self) {
        while let Some(incoming) = self.endpoint.accept().await {
            let transport = self.clone();
            tokio::spawn(async move {
                let connection = match incoming.await {
                    Ok(connection) => connection,
                    Err(e) => {
                        bump(&transport.stats.handshakes_refused);
                        debug!(error = %e, "inbound handshake refused");
                        return;
                    }
                };
                let Some(tls) = transport.mesh_tls() else {
                    return;
                };
                match tls.peer_node(&connection) {
                    Ok(name) => transport.adopt(name, connection, true),
                    Err(e) => {
                        bump(&transport.stats.handshakes_refused);
                        warn!(error = %e, "inbound connection without a node identity");
                        connection.close(1u32.into(), b"identity");
                    }
                }
            });
        }
    }

    async fn read_datagrams(self, from: NodeName, connection: quinn::Connection) {
        while let Ok(bytes) = connection.read_datagram().await {
            let inbound = Inbound::Datagram {
                from: from.clone(),
                bytes: bytes.to_vec(),
            };
            if self.inbound_tx.try_send(inbound).is_err() {
                bump(&self.stats.datagrams_dropped);
            }
        }
        self.forget(&from, &connection).await;
    }

    async fn read_streams(self, from: NodeName, connection: quinn::Connection) {
        while let Ok(mut stream) = connection.accept_uni().await {
            let transport = self.clone();
            let from = from.clone();
            tokio::spawn(async move {
                let read = stream.read_to_end(transport.limits.frame_size_max);
                let Ok(read) =
                    tokio::time::timeout(transport.limits.frame_read_timeout, read).await
                else {
                    bump(&transport.stats.frames_too_slow);
                    let _ = stream.stop(2u32.into());
                    debug!(node = %from, "stream frame too slow; stopped");
                    return;
                };
                match read {
                    Ok(bytes) => {
                        let _ = transport
                            .inbound_tx
                            .send(Inbound::Message { from, bytes })
                            .await;
                    }
                    Err(quinn::ReadToEndError::TooLong) => {
                        bump(&transport.stats.frames_too_large);
                        let _ = stream.stop(1u32.into());
                        warn!(node = %from, "stream frame over the size limit");
                    }
                    Err(e) => debug!(node = %from, error = %e, "stream read failed"),
                }
            });
        }
    }

    async fn read_requests(self, from: NodeName, connection: quinn::Connection) {
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let transport = self.clone();
            let from = from.clone();
            tokio::spawn(async move {
                let read = recv.read_to_end(transport.limits.request_size_max);
                let Ok(read) =
                    tokio::time::timeout(transport.limits.frame_read_timeout, read).await
                else {
                    bump(&transport.stats.frames_too_slow);
                    let _ = recv.stop(2u32.into());
                    let _ = send.reset(2u32.into());
                    return;
                };
                let bytes = match read {
                    Ok(bytes) => bytes,
                    Err(quinn::ReadToEndError::TooLong) => {
                        bump(&transport.stats.frames_too_large);
                        let _ = recv.stop(1u32.into());
                        let _ = send.reset(1u32.into());
                        return;
                    }
                    Err(_) => return,
                };
                let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
                let request = Inbound::Request {
                    from,
                    bytes,
                    reply_tx,
                };
                if transport.inbound_tx.send(request).await.is_err() {
                    return;
                }
                match tokio::time::timeout(transport.limits.request_timeout, reply_rx).await {
                    Ok(Ok(Some(answer))) => {
                        if send.write_all(&answer).await.is_ok() {
                            let _ = send.finish();
                        }
                    }
                    _ => {
                        let _ = send.reset(1u32.into());
                    }
                }
            });
        }
    }

    /// Drops a closed connection from the pool and tells the actor when it was the node's last.
    async fn forget(&self, name: &NodeName, connection: &quinn::Connection) {
        let removed = match self.pool.lock() {
            Ok(mut pool) => {
                pool.open.remove(&connection.stable_id());
                match pool.by_name.get(name) {
                    Some(p) if p.connection.stable_id() == connection.stable_id() => {
                        pool.by_name.remove(name);
                        true
                    }
                    _ => false,
                }
            }
            Err(_) => false,
        };
        if removed {
            let _ = self
                .inbound_tx
                .send(Inbound::ConnectionLost { node: name.clone() })
                .await;
        }
    }

    /// Closes every connection and waits (bounded) for the peers to be told.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use podmesh_certs::{CaValidity, MeshCa, MeshName, NodeCertOptions, NodeIdentity};

    use super::*;

    fn tls(ca: &MeshCa, name: &str, dir: &std::path::Path) -> MeshTls {
        let node = NodeName::new(name).unwrap();
        let certs = dir.join(name);
        ca.issue(&node, &NodeCertOptions::default())
            .unwrap()
            .write(&certs, false)
            .unwrap();
        MeshTls::new(&NodeIdentity::load(&certs).unwrap(), Default::default()).unwrap()
    }

    #[tokio::test]
    async fn a_peer_writing_frames_slowly_holds_its_streams_only_until_the_read_timeout() {
        // A peer that opens streams and never finishes them: it cannot have more than
        // `streams_per_connection_max` open at once, and each is stopped (its buffer dropped)
        // after `frame_read_timeout`.
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::create(MeshName::new("t").unwrap(), CaValidity::default()).unwrap();
        let limits = TransportLimits {
            streams_per_connection_max: 2,
            frame_read_timeout: Duration::from_millis(300),
            ..TransportLimits::default()
        };
        let (inbound_tx, mut inbound) = mpsc::channel(16);
        let node = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls(&ca, "n1", dir.path()),
            limits,
            inbound_tx,
        )
        .unwrap();

        let peer = tls(&ca, "n2", dir.path());
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let server_name = peer.server_name(&ServerTarget::Node(NodeName::new("n1").unwrap()));
        let connection = endpoint
            .connect_with(
                peer.quinn_client().unwrap(),
                node.local_addr().unwrap(),
                &server_name,
            )
            .unwrap()
            .await
            .unwrap();
        let mut first = connection.open_uni().await.unwrap();
        first.write_all(b"the start of a frame").await.unwrap();
        let mut second = connection.open_uni().await.unwrap();
        second.write_all(b"another start").await.unwrap();

        // Two streams are all it may have open: a third is refused on its first try.
        let refused = tokio::time::timeout(Duration::ZERO, connection.open_uni()).await;
        assert!(refused.is_err(), "a third stream opened at once");

        let wait = Duration::from_secs(30);
        for stream in [&mut first, &mut second] {
            let stopped = tokio::time::timeout(wait, stream.stopped()).await.unwrap();
            assert_eq!(stopped.unwrap(), Some(2u32.into()));
        }
        assert_eq!(node.stats().frames_too_slow.load(Relaxed), 2);
        // Once it lets the stopped streams go, it may open others.
        drop((first, second));
        let mut third = tokio::time::timeout(wait, connection.open_uni())
            .await
            .expect("the node never gave the streams back")
            .unwrap();
        // A whole frame sent at once still arrives.
        third.write_all(b"a whole frame").await.unwrap();
        third.finish().unwrap();

        let message = tokio::time::timeout(wait, inbound.recv()).await.unwrap();
        assert!(
            matches!(message, Some(Inbound::Message { ref bytes, .. }) if bytes == b"a whole frame"),
            "{message:?}"
        );
    }

    #[tokio::test]
    async fn connections_from_nodes_that_are_not_members_are_held_to_their_bound() {
        // Five strangers connect to a node that lets three hold connections: the two oldest are
        // closed, and a member's connection, however old, is never counted among them.
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::create(MeshName::new("t").unwrap(), CaValidity::default()).unwrap();
        let limits = TransportLimits {
            stranger_connections_max: 3,
            ..TransportLimits::default()
        };
        let (inbound_tx, mut inbound) = mpsc::channel(64);
        let node = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls(&ca, "n0", dir.path()),
            limits,
            inbound_tx,
        )
        .unwrap();
        node.set_member(NodeName::new("member").unwrap());
        let to = Destination {
            addr: node.local_addr().unwrap(),
            name: Some(NodeName::new("n0").unwrap()),
        };
        let mut peers = Vec::new();
        for name in ["member", "s1", "s2", "s3", "s4", "s5"] {
            let (tx, _rx) = mpsc::channel(4);
            let peer = Transport::bind(
                "127.0.0.1:0".parse().unwrap(),
                tls(&ca, name, dir.path()),
                TransportLimits::default(),
                tx,
            )
            .unwrap();
            // A message on a stream of its own: it arrives, so the connection was adopted.
            peer.send(to.clone(), Channel::Stream, name.as_bytes().to_vec());
            let wait = Duration::from_secs(10);
            let arrived = tokio::time::timeout(wait, inbound.recv()).await.unwrap();
            assert!(
                matches!(arrived, Some(Inbound::Message { .. })),
                "{arrived:?}"
            );
            peers.push((peer, _rx));
        }
        assert_eq!(node.stats().strangers_closed.load(Relaxed), 2);
        let open: Vec<String> = {
            let pool = node.pool.lock().unwrap();
            let mut names: Vec<String> = pool
                .open
                .values()
                .filter(|o| o.connection.close_reason().is_none())
                .map(|o| o.name.as_str().to_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(open, ["member", "s3", "s4", "s5"]);
    }
}
