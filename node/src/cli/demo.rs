//! `podmesh demo`: a throwaway mesh of three nodes on 127.0.0.1, with Pods, a peer relation
//! across nodes and a delivered message, then (on a terminal) the TUI on the first node.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use podmesh::client::{Client, socket_path};
use podmesh_certs::{CaValidity, MeshCa, MeshName, NodeCertOptions, NodeName};
use serde_json::{Value, json};

/// How long the demo waits for a node to start or the mesh to converge.
const WAIT_MAX: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const NODES: [&str; 3] = ["n1", "n2", "n3"];

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Run the script and exit, without opening the TUI.
    #[arg(long)]
    once: bool,
    /// Keep the demo's directory (certificates, data, logs) instead of removing it.
    #[arg(long)]
    keep: bool,
}

/// The demo's node processes; killed and reaped on drop, whatever happened.
struct Nodes {
    dir: PathBuf,
    keep: bool,
    children: Vec<Child>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGTERM first: a node that gets it leaves the mesh cleanly.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(POLL_INTERVAL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn step(text: &str) {
    println!("\n== {text}");
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("podmesh-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut nodes = Nodes {
        dir: dir.clone(),
        keep: args.keep,
        children: Vec::new(),
    };

    step("a throwaway mesh CA and one certificate per node");
    let ca = MeshCa::create(MeshName::new("demo")?, CaValidity::default())?;
    ca.write(&dir.join("ca"), false)?;
    for name in NODES {
        ca.issue(&NodeName::new(name)?, &NodeCertOptions::default())?
            .write(&dir.join(name).join("certs"), false)?;
        println!("issued spiffe://demo/node/{name}");
    }

    step("three nodes on 127.0.0.1, joining through n1");
    let mut seed: Option<SocketAddr> = None;
    for name in NODES {
        let (child, addr) = start_node(&dir, name, seed)?;
        nodes.children.push(child);
        println!("{name} listening on {addr}");
        seed.get_or_insert(addr);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let socket = |name: &str| socket_path(&dir.join(name).join("data"));
    runtime.block_on(async {
        wait_until("every node sees three alive members", || async {
            for name in NODES {
                let members = call(&socket(name), "members", json!({})).await.ok()?;
                let alive = members["members"]
                    .as_array()?
                    .iter()
                    .filter(|m| m["state"] == "alive")
                    .count();
                if alive != NODES.len() {
                    return None;
                }
            }
            Some(())
        })
        .await?;

        step("Pods: alice@n1, bob@n2, carol@n3");
        for (node, pod) in [("n1", "alice"), ("n2", "bob"), ("n3", "carol")] {
            call(&socket(node), "pod_create", json!({ "name": pod })).await?;
        }
        wait_until("n1 knows bob@n2 from gossip", || async {
            let dir = call(&socket("n1"), "directory", json!({})).await.ok()?;
            dir["pods"]
                .as_array()?
                .iter()
                .any(|p| p["address"] == "bob@n2")
                .then_some(())
        })
        .await?;

        step("alice peers with bob across nodes (a two-phase handshake over QUIC)");
        let reply = call(
            &socket("n1"),
            "register_peer",
            json!({ "pod": "alice", "name": "bob@n2" }),
        )
        .await?;
        println!(
            "Peer registered: `{}` <-> `{}`",
            reply["source"].as_str().unwrap_or("?"),
            reply["peer"].as_str().unwrap_or("?")
        );

        step("alice sends bob a message (acknowledged once stored in bob's inbox)");
        let sent = call(
            &socket("n1"),
            "send_to_peer",
            json!({ "pod": "alice", "name": "bob", "message": "hello bob, from alice" }),
        )
        .await?;
        println!("delivered, id {}", sent["id"].as_str().unwrap_or("?"));

        step("membership as n1 sees it");
        let members = call(&socket("n1"), "members", json!({})).await?;
        println!("{:<6} {:<22} {:<8} INCARNATION", "NAME", "ADDRESS", "STATE");
        for m in members["members"].as_array().into_iter().flatten() {
            println!(
                "{:<6} {:<22} {:<8} {}",
                m["name"].as_str().unwrap_or("?"),
                m["address"].as_str().unwrap_or("?"),
                m["state"].as_str().unwrap_or("?"),
                m["incarnation"]
            );
        }

        step("peer tables: what alice and bob each see");
        for (node, pod) in [("n1", "alice"), ("n2", "bob")] {
            let view = call(&socket(node), "list_pods", json!({ "pod": pod })).await?;
            println!("visible to {}:", view["pod"].as_str().unwrap_or("?"));
            for row in view["pods"].as_array().into_iter().flatten() {
                println!(
                    "  {:<10} {:<14} {:<8} live={}",
                    row["address"].as_str().unwrap_or("?"),
                    row["reason"].as_str().unwrap_or("?"),
                    row["status"].as_str().unwrap_or("?"),
                    row["live"]
                );
            }
        }

        step("bob's inbox on n2");
        let inbox = call(&socket("n2"), "inbox", json!({ "pod": "bob" })).await?;
        for m in inbox["messages"].as_array().into_iter().flatten() {
            println!(
                "[Peer message from `{}`] {}",
                m["from"].as_str().unwrap_or("?"),
                m["message"].as_str().unwrap_or("")
            );
        }
        anyhow::Ok(())
    })?;

    if !args.once && std::io::stdout().is_terminal() {
        step("opening the TUI on n1 as alice (:help for commands, :quit to leave the demo)");
        let status = Command::new(std::env::current_exe()?)
            .args(["tui", "--pod", "alice", "--data-dir"])
            .arg(dir.join("n1").join("data"))
            .status()
            .context("starting the TUI")?;
        if !status.success() {
            bail!("the TUI exited with {status}");
        }
    }
    step("stopping the nodes (they leave the mesh) and removing the demo directory");
    if args.keep {
        println!("kept in {}", dir.display());
    }
    drop(nodes);
    Ok(ExitCode::SUCCESS)
}

/// Starts one node as a child process and waits for its listening line.
fn start_node(
    dir: &Path,
    name: &str,
    seed: Option<SocketAddr>,
) -> anyhow::Result<(Child, SocketAddr)> {
    let node_dir = dir.join(name);
    let log = std::fs::File::create(node_dir.join("node.log"))?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["node", "run", "--certs-dir"])
        .arg(node_dir.join("certs"))
        .arg("--data-dir")
        .arg(node_dir.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    if let Some(seed) = seed {
        command.args(["--join", &seed.to_string()]);
    }
    let mut child = command.spawn().context("starting a node")?;
    let addr = podmesh::daemon::wait_until_listening(&mut child, WAIT_MAX)
        .with_context(|| format!("node {name}: see {}", node_dir.join("node.log").display()))?;
    Ok((child, addr))
}

async fn call(socket: &Path, method: &str, params: Value) -> anyhow::Result<Value> {
    let mut client = Client::connect(socket).await?;
    Ok(client.call(method, params).await?.data)
}

async fn wait_until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let started = Instant::now();
    print!("waiting until {what} ...");
    while started.elapsed() < WAIT_MAX {
        if check().await.is_some() {
            println!(" done in {:.1} s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    println!();
    bail!("timed out after {WAIT_MAX:?} waiting until {what}")
}
