//! A UDP relay in front of each node, so tests can break the network between real processes
//! without root or kernel modules: per-pair loss, partitions, one-way partitions and delay.
//!
//! Node N listens on its own port but advertises its relay's address, so every other node
//! reaches N through N's relay. The relay keeps one upstream socket per sender, so N sees each
//! sender as a distinct address, and forwards N's answers back from the relay's address. The
//! relay knows which node a sender is by the address it sends from (every node sends from its
//! one endpoint, so that address is the one the node listens on, on any host).
//!
//! Each QUIC connection crosses exactly one relay, the one of the node that was dialled, and
//! connections are pooled by node name and used both ways. A fault meant for every link between
//! two nodes therefore belongs on both nodes' relays, as [`Network`]'s rules are.
//!
//! The `podmesh-relay` binary runs one relay of its own [`Network`] in another process (in a
//! network namespace, say); it knows no node names, so it applies its delay and loss to every
//! packet, both ways.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Largest UDP payload relayed.
const DATAGRAM_MAX: usize = 65_535;
/// Packets one relay holds back while they are delayed; past it new packets are dropped, as a
/// router's full queue drops them. At a few thousand packets a second of test traffic and a
/// delay of at most a second, 4,096 is never reached unless something floods.
pub const DELAYED_PACKETS_MAX: usize = 4096;

/// What the network does to packets, shared by every relay of a [`Network`].
#[derive(Debug, Default)]
struct Rules {
    /// Node name by the address it sends from (its listen address).
    names: BTreeMap<SocketAddr, String>,
    /// Directed pairs (from, to) whose packets are dropped.
    blocked: BTreeSet<(String, String)>,
    /// Probability that any packet is dropped.
    loss: f64,
    /// How long every packet waits in the relay before it goes on, in each direction: the
    /// one-way latency the relay adds, so a round trip through it grows by twice this. Zero
    /// forwards at once. Packets keep their order, as on one link.
    delay: Duration,
    /// A small xorshift state, so loss needs no extra dependency and stays cheap.
    rng: u64,
}

impl Rules {
    /// What happens to one packet from `from` to `to` (`None`: a sender or receiver the
    /// network has no name for, which only loss and delay apply to): dropped (`None`), or
    /// forwarded after the returned delay.
    fn verdict(&mut self, from: Option<&str>, to: Option<&str>) -> Option<Duration> {
        if let (Some(from), Some(to)) = (from, to)
            && self.blocked.contains(&(from.to_owned(), to.to_owned()))
        {
            return None;
        }
        if self.loss > 0.0 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let draw = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
            if draw < self.loss {
                return None;
            }
        }
        Some(self.delay)
    }
}

/// The relays of one test and the rules they apply.
#[derive(Debug, Clone)]
pub struct Network {
    rules: Arc<Mutex<Rules>>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Network {
    /// A network with no faults; its relays run on their own small runtime.
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the relays");
        Network {
            rules: Arc::new(Mutex::new(Rules {
                rng: 0x2545_f491_4f6c_dd1d,
                ..Rules::default()
            })),
            runtime: Arc::new(runtime),
        }
    }

    /// Binds a relay for node `name` on 127.0.0.1; returns its address. Call [`Network::attach`]
    /// once the node's own port is known.
    pub fn relay(&self, name: &str) -> anyhow::Result<Relay> {
        self.relay_on(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Binds a relay for node `name` on `addr` (port 0 picks one).
    pub fn relay_on(&self, name: &str, addr: SocketAddr) -> anyhow::Result<Relay> {
        let socket = self.runtime.block_on(UdpSocket::bind(addr))?;
        let addr = socket.local_addr()?;
        Ok(Relay {
            name: name.to_owned(),
            addr,
            socket: Some(socket),
        })
    }

    /// Starts forwarding `relay`'s traffic to the node listening on `node_addr`.
    pub fn attach(&self, mut relay: Relay, node_addr: SocketAddr) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.names.insert(node_addr, relay.name.clone());
        }
        let Some(socket) = relay.socket.take() else {
            return;
        };
        let rules = self.rules.clone();
        self.runtime
            .spawn(forward(Arc::new(socket), relay.name, node_addr, rules));
    }

    /// Drops every packet from `from` to `to` (one direction).
    pub fn block(&self, from: &str, to: &str) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.blocked.insert((from.to_owned(), to.to_owned()));
        }
    }

    /// Cuts every link between the two groups, both directions.
    pub fn partition(&self, left: &[&str], right: &[&str]) {
        for a in left {
            for b in right {
                self.block(a, b);
                self.block(b, a);
            }
        }
    }

    /// Drops each packet with probability `loss`, everywhere.
    pub fn set_loss(&self, loss: f64) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.loss = loss;
        }
    }

    /// Holds every packet back for `delay` in each relay it crosses, in each direction.
    pub fn set_delay(&self, delay: Duration) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.delay = delay;
        }
    }

    /// Removes every partition, all loss and all delay.
    pub fn heal(&self) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.blocked.clear();
            rules.loss = 0.0;
            rules.delay = Duration::ZERO;
        }
    }
}

/// A bound relay, not yet forwarding.
#[derive(Debug)]
pub struct Relay {
    name: String,
    /// The address other nodes use for this node (pass it as `--advertise`).
    pub addr: SocketAddr,
    socket: Option<UdpSocket>,
}

/// A packet waiting out its delay: when it is due, the socket it leaves by and where it goes.
#[derive(Debug)]
struct Delayed {
    due: Instant,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// Starts a relay's delay line: one task that sends each packet when
/// it is due, in the order they came, so a delay never blocks the relay's receive loops.
fn delay_line() -> mpsc::Sender<Delayed> {
    let (delayed_tx, mut delayed_rx) = mpsc::channel::<Delayed>(DELAYED_PACKETS_MAX);
    tokio::spawn(async move {
        while let Some(packet) = delayed_rx.recv().await {
            tokio::time::sleep_until(packet.due).await;
            let _ = packet.socket.send_to(&packet.bytes, packet.to).await;
        }
    });
    delayed_tx
}

/// Sends `bytes` from `socket` to `to` now, or after `delay` through the delay line (dropped
/// when the line is full).
async fn send(
    socket: &Arc<UdpSocket>,
    to: SocketAddr,
    bytes: &[u8],
    delay: Duration,
    delayed_tx: &mpsc::Sender<Delayed>,
) {
    if delay.is_zero() {
        let _ = socket.send_to(bytes, to).await;
        return;
    }
    let _ = delayed_tx.try_send(Delayed {
        due: Instant::now() + delay,
        socket: socket.clone(),
        to,
        bytes: bytes.to_vec(),
    });
}

/// Forwards packets arriving at the relay to the node (one upstream socket per sender) and the
/// node's answers back to each sender.
async fn forward(
    front: Arc<UdpSocket>,
    node: String,
    node_addr: SocketAddr,
    rules: Arc<Mutex<Rules>>,
) {
    let delayed_tx = delay_line();
    let mut upstreams: BTreeMap<SocketAddr, Arc<UdpSocket>> = BTreeMap::new();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    // Upstream sockets sit on the node's own address, so the node can answer them whether it
    // listens on loopback or on a host's interface.
    let upstream_bind = SocketAddr::new(node_addr.ip(), 0);
    loop {
        let Ok((len, sender)) = front.recv_from(&mut buf).await else {
            return;
        };
        let (from, verdict) = match rules.lock() {
            Ok(mut rules) => {
                let from = rules.names.get(&sender).cloned();
                let verdict = rules.verdict(from.as_deref(), Some(&node));
                (from, verdict)
            }
            Err(_) => (None, Some(Duration::ZERO)),
        };
        let Some(delay) = verdict else {
            continue;
        };
        let upstream = match upstreams.get(&sender) {
            Some(upstream) => upstream.clone(),
            None => {
                let Ok(socket) = UdpSocket::bind(upstream_bind).await else {
                    continue;
                };
                let socket = Arc::new(socket);
                upstreams.insert(sender, socket.clone());
                tokio::spawn(backward(
                    socket.clone(),
                    front.clone(),
                    sender,
                    from,
                    node.clone(),
                    rules.clone(),
                    delayed_tx.clone(),
                ));
                socket
            }
        };
        send(&upstream, node_addr, &buf[..len], delay, &delayed_tx).await;
    }
}

/// Carries the node's answers to one sender back through the relay's front socket.
async fn backward(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    sender: SocketAddr,
    sender_name: Option<String>,
    node: String,
    rules: Arc<Mutex<Rules>>,
    delayed_tx: mpsc::Sender<Delayed>,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let Ok((len, _)) = upstream.recv_from(&mut buf).await else {
            return;
        };
        let verdict = rules
            .lock()
            .map(|mut r| r.verdict(Some(&node), sender_name.as_deref()))
            .unwrap_or(Some(Duration::ZERO));
        if let Some(delay) = verdict {
            send(&front, sender, &buf[..len], delay, &delayed_tx).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket as StdSocket;
    use std::time::Instant as StdInstant;

    use super::*;

    /// Reads one datagram from `socket` (which has a read timeout) as text.
    fn receive(socket: &StdSocket) -> (String, SocketAddr) {
        let mut buf = [0u8; 64];
        let (len, from) = socket
            .recv_from(&mut buf)
            .expect("a datagram before the timeout");
        (String::from_utf8_lossy(&buf[..len]).into_owned(), from)
    }

    fn socket(ip: [u8; 4], port: u16) -> StdSocket {
        let socket = StdSocket::bind(SocketAddr::from((ip, port))).expect("a loopback socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        socket
    }

    #[test]
    fn a_delayed_relay_holds_each_packet_back_both_ways_and_keeps_their_order() {
        // The delay is a lower bound per crossing, so a round trip takes at least twice it.
        let network = Network::new();
        let delay = Duration::from_millis(50);
        network.set_delay(delay);
        let node = socket([127, 0, 0, 1], 0);
        let relay = network.relay("n1").expect("a relay");
        let relay_addr = relay.addr;
        network.attach(relay, node.local_addr().expect("bound"));
        let client = socket([127, 0, 0, 1], 0);

        let sent_at = StdInstant::now();
        for text in ["one", "two", "three"] {
            client.send_to(text.as_bytes(), relay_addr).expect("sent");
        }
        let mut upstream = None;
        for expected in ["one", "two", "three"] {
            let (text, from) = receive(&node);
            assert_eq!(text, expected);
            upstream = Some(from);
        }
        assert!(sent_at.elapsed() >= delay);
        node.send_to(b"answer", upstream.expect("three packets came"))
            .expect("sent");
        let (text, from) = receive(&client);
        assert_eq!((text.as_str(), from), ("answer", relay_addr));
        assert!(sent_at.elapsed() >= 2 * delay);
    }

    #[test]
    fn senders_on_one_port_of_different_hosts_are_told_apart() {
        // Nodes on different hosts all listen on one port; a rule for one must not hit another.
        let network = Network::new();
        let node = socket([127, 0, 0, 1], 0);
        let relay = network.relay("n1").expect("a relay");
        let relay_addr = relay.addr;
        network.attach(relay, node.local_addr().expect("bound"));
        let n2 = socket([127, 0, 0, 2], 0);
        let port = n2.local_addr().expect("bound").port();
        let n3 = socket([127, 0, 0, 3], port);
        for (name, peer) in [("n2", &n2), ("n3", &n3)] {
            let other = network.relay(name).expect("a relay");
            network.attach(other, peer.local_addr().expect("bound"));
        }
        network.block("n2", "n1");

        n2.send_to(b"from n2", relay_addr).expect("sent");
        n3.send_to(b"from n3", relay_addr).expect("sent");
        assert_eq!(receive(&node).0, "from n3");
        n2.send_to(b"from n2 again", relay_addr).expect("sent");
        node.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("a read timeout");
        let mut buf = [0u8; 64];
        assert!(
            node.recv_from(&mut buf).is_err(),
            "n2's packets are blocked"
        );
    }
}
