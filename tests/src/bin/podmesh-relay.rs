//! `podmesh-relay`: one [`podmesh_tests::relay`] relay in a process of its own, so a test can put
//! it on another host (a network namespace: `ip netns exec <ns> podmesh-relay ...`) in front of
//! the node there, which then advertises the relay's address.
//!
//! The in-process relays of a `Network` know every node's name by the address it sends from and
//! can cut single pairs. This one serves a single node and learns no names: its delay and loss
//! apply to every packet it carries, in both directions, whoever sent it. Partitions between
//! hosts are made on their links instead (`ip link set ... down`).
//!
//! Once bound it prints `podmesh-relay listening on <addr> ...` on stdout (the line
//! `podmesh::daemon::wait_until_listening` waits for), then relays until it is killed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::ensure;
use clap::Parser;
use podmesh_tests::relay::Network;

/// Relays UDP between a node and everyone else, with a delay and loss on every packet.
#[derive(Debug, Parser)]
#[command(name = "podmesh-relay")]
struct Args {
    /// Address to receive on: the one the node advertises (host:port).
    listen: SocketAddr,
    /// The node's own listen address, where packets go on to.
    upstream: SocketAddr,
    /// How long each packet waits before it goes on, each way, in milliseconds.
    delay_ms: u64,
    /// Probability in [0, 1) that a packet is dropped, each way.
    #[arg(default_value_t = 0.0)]
    loss: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        (0.0..1.0).contains(&args.loss),
        "loss must be in [0, 1), not {}",
        args.loss
    );
    let network = Network::new();
    network.set_delay(Duration::from_millis(args.delay_ms));
    network.set_loss(args.loss);
    let relay = network.relay_on("relayed", args.listen)?;
    let addr = relay.addr;
    network.attach(relay, args.upstream);
    println!(
        "podmesh-relay listening on {addr} (to {}, delay {} ms, loss {})",
        args.upstream, args.delay_ms, args.loss
    );
    // The relay runs on the network's own runtime; this thread only keeps the process alive.
    loop {
        std::thread::park();
    }
}
