//! Pod commands: create, remove, status, spawn, list, peer, unpeer, send, inbox.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::Target;

#[derive(Debug, Subcommand)]
pub(crate) enum PodCommand {
    /// Create a Pod on this node (idle, no peers).
    Create(NameArgs),
    /// Remove a Pod; it must have no peers left (unpeer first).
    Rm(NameArgs),
    /// Show a Pod's status, or set it (idle, running, paused, stopped).
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub(crate) struct NameArgs {
    /// The Pod's name on this node.
    name: String,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The Pod's name on this node.
    name: String,
    /// The new status; omit to show the current one.
    status: Option<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub(crate) struct SpawnArgs {
    /// The parent Pod on this node.
    parent: String,
    /// The child Pod to create on this node.
    child: String,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub(crate) struct PodsArgs {
    /// List every Pod the gossip knows, on every node.
    #[arg(long, conflicts_with = "pod")]
    all: bool,
    /// List the Pods visible to this Pod (itself, its spawned children, its peers).
    #[arg(long)]
    pod: Option<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub(crate) struct PeerArgs {
    /// The local Pod.
    pod: String,
    /// The other Pod: pod@node, or a bare name (the local Pod of that name, else the only one
    /// in the mesh).
    other: String,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// The local sending Pod.
    pod: String,
    /// The peer Pod: pod@node or a bare name.
    other: String,
    /// The message.
    message: String,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub(crate) struct InboxArgs {
    /// The local Pod.
    pod: String,
    /// Remove the messages shown, making room in the inbox.
    #[arg(long, conflicts_with = "ack")]
    drain: bool,
    /// Acknowledge the messages shown once they are printed (`inbox_ack` up to the last one):
    /// they leave the inbox; any that arrived meanwhile stay.
    #[arg(long)]
    ack: bool,
    #[command(flatten)]
    target: Target,
}

fn print(target: &Target, data: &Value, text: impl FnOnce(&Value)) -> anyhow::Result<ExitCode> {
    if target.json {
        println!("{}", serde_json::to_string_pretty(data)?);
    } else {
        text(data);
    }
    Ok(ExitCode::SUCCESS)
}

fn show_pod(data: &Value) {
    println!(
        "{} {} peers: [{}]",
        data["address"].as_str().unwrap_or("?"),
        data["status"].as_str().unwrap_or("?"),
        strings(&data["peers"]).join(", ")
    );
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn pod(command: PodCommand) -> anyhow::Result<ExitCode> {
    match command {
        PodCommand::Create(args) => {
            let data = args
                .target
                .call("pod_create", json!({ "name": args.name }))?;
            print(&args.target, &data, show_pod)
        }
        PodCommand::Rm(args) => {
            let data = args
                .target
                .call("pod_remove", json!({ "name": args.name }))?;
            print(&args.target, &data, |_| println!("removed {}", args.name))
        }
        PodCommand::Status(args) => {
            let data = args.target.call(
                "pod_status",
                json!({ "name": args.name, "status": args.status }),
            )?;
            print(&args.target, &data, show_pod)
        }
    }
}

pub(crate) fn spawn(args: SpawnArgs) -> anyhow::Result<ExitCode> {
    let params = json!({ "name": args.child, "parent": args.parent });
    let data = args.target.call("pod_create", params)?;
    print(&args.target, &data, show_pod)
}

pub(crate) fn pods(args: PodsArgs) -> anyhow::Result<ExitCode> {
    let data = match &args.pod {
        Some(pod) => args.target.call("list_pods", json!({ "pod": pod }))?,
        None => args.target.call("directory", json!({}))?,
    };
    let _ = args.all; // --all is the default without --pod; the flag says so explicitly.
    print(&args.target, &data, |data| {
        println!(
            "{:<32} {:<14} {:<8} {:<5} {:<8} PEERS",
            "POD", "REASON", "STATUS", "LIVE", "NODE"
        );
        for row in data["pods"].as_array().into_iter().flatten() {
            println!(
                "{:<32} {:<14} {:<8} {:<5} {:<8} {}",
                row["address"].as_str().unwrap_or("?"),
                row["reason"].as_str().unwrap_or("-"),
                row["status"].as_str().unwrap_or("?"),
                if row["live"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
                row["node_state"].as_str().unwrap_or("?"),
                strings(&row["peers"]).join(", "),
            );
        }
    })
}

pub(crate) fn peer(args: PeerArgs, register: bool) -> anyhow::Result<ExitCode> {
    let method = if register {
        "register_peer"
    } else {
        "unregister_peer"
    };
    let data = args
        .target
        .call(method, json!({ "pod": args.pod, "name": args.other }))?;
    print(&args.target, &data, |data| {
        let verb = if register {
            "registered"
        } else {
            "unregistered"
        };
        println!(
            "Peer {verb}: `{}` <-> `{}`",
            data["source"].as_str().unwrap_or("?"),
            data["peer"].as_str().unwrap_or("?")
        );
    })
}

pub(crate) fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let params = json!({ "pod": args.pod, "name": args.other, "message": args.message });
    let data = args.target.call("send_to_peer", params)?;
    print(&args.target, &data, |data| {
        println!("delivered (id {})", data["id"].as_str().unwrap_or("?"));
    })
}

pub(crate) fn inbox(args: InboxArgs) -> anyhow::Result<ExitCode> {
    let data = args
        .target
        .call("inbox", json!({ "pod": args.pod, "drain": args.drain }))?;
    let code = print(&args.target, &data, |data| {
        for m in data["messages"].as_array().into_iter().flatten() {
            println!(
                "[Peer message from `{}`] {}",
                m["from"].as_str().unwrap_or("?"),
                m["message"].as_str().unwrap_or("")
            );
        }
    })?;
    let last = data["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["id"].as_str());
    if let (true, Some(up_to)) = (args.ack, last) {
        let acked = args
            .target
            .call("inbox_ack", json!({ "pod": args.pod, "up_to": up_to }))?;
        if !args.target.json {
            eprintln!("acknowledged {} messages", acked["removed"]);
        }
    }
    Ok(code)
}
