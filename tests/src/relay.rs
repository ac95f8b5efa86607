//! A UDP relay in front of each node, so tests can break the network between real processes
//! without root or kernel modules: per-pair loss, partitions and one-way partitions.
//!
//! Node N listens on its own port but advertises its relay's address, so every other node
//! reaches N through N's relay. The relay keeps one upstream socket per sender, so N sees each
//! sender as a distinct address, and forwards N's answers back from the relay's address. The
//! relay knows which node a sender is by its port (every node sends from its one endpoint).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// Largest UDP payload relayed.
const DATAGRAM_MAX: usize = 65_535;

/// What the network does to packets, shared by every relay of a [`Network`].
#[derive(Debug, Default)]
struct Rules {
    /// Node name by the port it sends from.
    names: BTreeMap<u16, String>,
    /// Directed pairs (from, to) whose packets are dropped.
    blocked: BTreeSet<(String, String)>,
    /// Probability that any packet is dropped.
    loss: f64,
    /// A small xorshift state, so loss needs no extra dependency and stays cheap.
    rng: u64,
}

impl Rules {
    fn passes(&mut self, from: Option<&String>, to: &str) -> bool {
        if let Some(from) = from
            && self.blocked.contains(&(from.clone(), to.to_owned()))
        {
            return false;
        }
        if self.loss > 0.0 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let draw = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
            if draw < self.loss {
                return false;
            }
        }
        true
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
        let socket = self.runtime.block_on(UdpSocket::bind("127.0.0.1:0"))?;
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
            rules.names.insert(node_addr.port(), relay.name.clone());
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

    /// Removes every partition and all loss.
    pub fn heal(&self) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.blocked.clear();
            rules.loss = 0.0;
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

/// Forwards packets arriving at the relay to the node (one upstream socket per sender) and the
/// node's answers back to each sender.
async fn forward(
    front: Arc<UdpSocket>,
    node: String,
    node_addr: SocketAddr,
    rules: Arc<Mutex<Rules>>,
) {
    let mut upstreams: BTreeMap<SocketAddr, Arc<UdpSocket>> = BTreeMap::new();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let Ok((len, sender)) = front.recv_from(&mut buf).await else {
            return;
        };
        let from = rules
            .lock()
            .ok()
            .and_then(|r| r.names.get(&sender.port()).cloned());
        let passes = rules
            .lock()
            .map(|mut r| r.passes(from.as_ref(), &node))
            .unwrap_or(true);
        if !passes {
            continue;
        }
        let upstream = match upstreams.get(&sender) {
            Some(upstream) => upstream.clone(),
            None => {
                let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let socket = Arc::new(socket);
                upstreams.insert(sender, socket.clone());
                tokio::spawn(backward(
                    socket.clone(),
                    front.clone(),
                    sender,
                    from.clone(),
                    node.clone(),
                    rules.clone(),
                ));
                socket
            }
        };
        let _ = upstream.send_to(&buf[..len], node_addr).await;
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
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let Ok((len, _)) = upstream.recv_from(&mut buf).await else {
            return;
        };
        let passes = match &sender_name {
            Some(to) => rules
                .lock()
                .map(|mut r| r.passes(Some(&node), to))
                .unwrap_or(true),
            None => true,
        };
        if passes {
            let _ = front.send_to(&buf[..len], sender).await;
        }
    }
}
