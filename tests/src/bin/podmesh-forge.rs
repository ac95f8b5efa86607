//! `podmesh-forge`: an admitted node that makes claims only other nodes may make, for tests of
//! DESIGN section 2 ("a node can only speak for itself"). It holds a real certificate from the
//! mesh CA and speaks real QUIC with mutual TLS through the node's own transport. It introduces
//! itself honestly (its own signed Alive and certificate, in a push/pull), then sends every
//! honest node `--count` rounds of one kind of forgery about `--victim`, each signed with its
//! own key under its own key id and under the victim's, in gossip datagrams and in push/pulls
//! that present its own certificate as the victim's. It answers nothing.
//!
//! Kinds: `alive` (the victim alive at the forger's address at the highest incarnation),
//! `left` (the victim left, at its incarnation and at the highest), `pod` (the victim's Pod
//! `--pod` stopped with no peers, at the highest generation), `invent` (a Pod `ghost` of the
//! victim's), `accuse` (the victim dead at the highest incarnation, with a forged life),
//! `members` (ten nodes that do not exist, alive at the forger's address, the forger's own
//! certificate presented as theirs).
//!
//! It prints one JSON object: the frames it sent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use podmesh::transport::{Channel, Destination, Transport, TransportLimits};
use podmesh_certs::{ClaimKeys, MeshTls, NodeIdentity, read_certs};
use podmesh_mesh::forge::{self, Forgery};
use podmesh_mesh::{NodeName, PodName, PodRecord, PodStatus, Signature, key_id};
use tokio::sync::mpsc;

/// What to forge.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// The victim alive at the forger's address at the highest incarnation.
    Alive,
    /// The victim left.
    Left,
    /// The victim's Pod stopped with no peers, at the highest generation.
    Pod,
    /// A Pod `ghost` of the victim's.
    Invent,
    /// The victim dead at the highest incarnation.
    Accuse,
    /// Ten members that do not exist (`ghost-0` to `ghost-9`), alive at the forger's address.
    Members,
}

/// Forges claims about another node and sends them to honest nodes.
#[derive(Debug, Parser)]
#[command(name = "podmesh-forge")]
struct Args {
    /// What to forge.
    kind: Kind,
    /// This node's certificate directory (`ca.crt`, `node.crt`, `node.key`).
    #[arg(long)]
    certs_dir: PathBuf,
    /// An honest node to send to, as `NAME=ADDRESS`; repeat for several.
    #[arg(long = "to", value_parser = parse_node, required = true)]
    to: Vec<(NodeName, SocketAddr)>,
    /// The node the claims are about.
    #[arg(long)]
    victim: NodeName,
    /// The victim's address.
    #[arg(long)]
    victim_addr: SocketAddr,
    /// The victim's incarnation, as its members show it.
    #[arg(long)]
    incarnation: u64,
    /// The victim's certificate, whose key id half the forgeries carry.
    #[arg(long)]
    victim_cert: PathBuf,
    /// The victim's Pod, for `pod`.
    #[arg(long, default_value = "b")]
    pod: PodName,
    /// Rounds of forgeries to send.
    #[arg(long, default_value_t = 10)]
    count: u32,
}

fn parse_node(s: &str) -> Result<(NodeName, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=ADDRESS, got {s:?}"))?;
    let name = name.parse().map_err(|e| format!("{e}"))?;
    let addr = addr.parse().map_err(|e| format!("{e}"))?;
    Ok((name, addr))
}

/// The forgeries of one round, by kind.
fn forgeries(args: &Args, me: &NodeName, addr: SocketAddr) -> Vec<Forgery> {
    let victim = args.victim.clone();
    let record = |status: PodStatus, name: PodName| {
        let mut record = PodRecord::new(name);
        record.status = status;
        Some(record.encode())
    };
    match args.kind {
        Kind::Alive => vec![Forgery::Alive {
            subject: victim,
            addr,
            incarnation: u64::MAX,
        }],
        Kind::Left => [args.incarnation, u64::MAX]
            .into_iter()
            .map(|incarnation| Forgery::Left {
                subject: victim.clone(),
                addr: args.victim_addr,
                incarnation,
            })
            .collect(),
        Kind::Pod => vec![Forgery::State {
            owner: victim,
            key: PodRecord::state_key(&args.pod),
            generation: u64::MAX,
            version: 1,
            value: record(PodStatus::Stopped, args.pod.clone()),
        }],
        Kind::Invent => {
            let ghost: PodName = "ghost".parse().expect("a valid Pod name");
            vec![Forgery::State {
                owner: victim,
                key: PodRecord::state_key(&ghost),
                // Above any generation n2 can write, so n2 cannot bury it with a tombstone.
                generation: u64::MAX,
                version: 1,
                value: record(PodStatus::Idle, ghost),
            }]
        }
        Kind::Accuse => vec![Forgery::Accusation {
            subject: victim,
            addr,
            incarnation: u64::MAX,
            dead: true,
            source: me.clone(),
        }],
        Kind::Members => ghosts()
            .into_iter()
            .map(|subject| Forgery::Alive {
                subject,
                addr,
                incarnation: 1,
            })
            .collect(),
    }
}

/// The members `members` invents.
fn ghosts() -> Vec<NodeName> {
    (0..10)
        .map(|i| format!("ghost-{i}").parse().expect("a valid node name"))
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let identity = NodeIdentity::load(&args.certs_dir)?;
    let me: NodeName = identity.claim.node.as_str().parse()?;
    let tls = MeshTls::new(&identity, Default::default())?;
    let keys = ClaimKeys::new(&identity, tls.clone())?;
    let own_key = key_id(&keys.certificate());
    let victim_cert = read_certs(&args.victim_cert)?;
    let victim_key = key_id(victim_cert.first().context("the victim's certificate")?);
    let limits = TransportLimits::default();
    let (inbound_tx, mut inbound) = mpsc::channel(limits.inbound_queue_len_max);
    let transport = Transport::bind("127.0.0.1:0".parse()?, tls, limits, inbound_tx)?;
    let addr = transport.local_addr()?;
    // Whatever the honest nodes send (probes, requests for certificates) goes unanswered.
    tokio::spawn(async move { while inbound.recv().await.is_some() {} });
    let send = |to: &(NodeName, SocketAddr), channel: Channel, bytes: Vec<u8>| {
        // Invariant: a mesh node name is a DNS label, which is what a certificate name is.
        let name = podmesh_certs::NodeName::new(to.0.as_str()).expect("a DNS label");
        let destination = Destination {
            addr: to.1,
            name: Some(name),
        };
        transport.send(destination, channel, bytes);
    };

    // An honest introduction: its own Alive, signed, and its own certificate.
    let incarnation = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let own = Forgery::Alive {
        subject: me.clone(),
        addr,
        incarnation,
    };
    let certificate = vec![(me.clone(), keys.certificate().to_vec())];
    let sign_own = |_: &NodeName, claim: &[u8]| Signature::new(own_key, keys.sign(claim));
    let intro = forge::push_pull(addr, &[own], certificate.clone(), sign_own);
    for to in &args.to {
        send(to, Channel::Stream, intro.clone());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let forgeries = forgeries(&args, &me, addr);
    let own_certificate = keys.certificate().to_vec();
    let presented: Vec<(NodeName, Vec<u8>)> = match args.kind {
        Kind::Members => ghosts()
            .into_iter()
            .map(|ghost| (ghost, own_certificate.clone()))
            .collect(),
        _ => vec![(args.victim.clone(), own_certificate)],
    };
    let mut sent = 0u64;
    for round in 0..args.count {
        let key = if round % 2 == 0 { own_key } else { victim_key };
        let sign = |_: &NodeName, claim: &[u8]| Signature::new(key, keys.sign(claim));
        let datagram = forge::datagram(&forgeries, sign);
        let push_pull = forge::push_pull(addr, &forgeries, presented.clone(), sign);
        for to in &args.to {
            send(to, Channel::Datagram, datagram.clone());
            send(to, Channel::Stream, push_pull.clone());
            sent += 2;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last frames leave before the connections close.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("{}", serde_json::json!({ "sent": sent }));
    transport.close().await;
    Ok(())
}
