//! Commands that talk to a running node through its local API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use podmesh::client::{Client, socket_path};
use serde_json::{Value, json};

/// How a client command finds its node.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// The node's data directory (its socket is <DATA_DIR>/podmesh.sock) [env: PODMESH_DATA_DIR].
    #[arg(long, env = "PODMESH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The node's local API socket, instead of --data-dir [env: PODMESH_SOCKET].
    #[arg(long, env = "PODMESH_SOCKET", conflicts_with = "data_dir")]
    socket: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

impl Target {
    /// The socket to use: explicit, else from the data directory, else the only node under
    /// the default data root.
    pub(crate) fn socket(&self) -> anyhow::Result<PathBuf> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        if let Some(dir) = &self.data_dir {
            return Ok(socket_path(dir));
        }
        let root = podmesh::config::data_root()?;
        let sockets: Vec<PathBuf> = std::fs::read_dir(&root)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| socket_path(&e.path()))
                    .filter(|s| s.exists())
                    .collect()
            })
            .unwrap_or_default();
        match sockets.as_slice() {
            [one] => Ok(one.clone()),
            [] => anyhow::bail!(
                "no running node found under {}: give --data-dir or --socket",
                root.display()
            ),
            _ => anyhow::bail!(
                "several nodes run under {}: give --data-dir or --socket",
                root.display()
            ),
        }
    }

    pub(crate) fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let socket = self.socket()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut client = Client::connect(&socket).await?;
            Ok(client.call(method, params).await?.data)
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct MembersArgs {
    #[command(flatten)]
    target: Target,
}

pub(crate) fn members(args: MembersArgs) -> anyhow::Result<ExitCode> {
    let data = args.target.call("members", json!({}))?;
    if args.target.json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(ExitCode::SUCCESS);
    }
    let empty = Vec::new();
    let members = data["members"].as_array().unwrap_or(&empty);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    println!(
        "{:<24} {:<22} {:<8} {:>11}  CHANGED",
        "NAME", "ADDRESS", "STATE", "INCARNATION"
    );
    for m in members {
        let name = m["name"].as_str().unwrap_or("?");
        let local = if m["local"].as_bool() == Some(true) {
            " (this node)"
        } else {
            ""
        };
        let changed = m["changed_at_ms"]
            .as_u64()
            .map(|t| ago(now_ms.saturating_sub(t)));
        println!(
            "{:<24} {:<22} {:<8} {:>11}  {}{}",
            name,
            m["address"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("?"),
            m["incarnation"],
            changed.as_deref().unwrap_or("?"),
            local,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn ago(ms: u64) -> String {
    match ms / 1000 {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s => format!("{}h ago", s / 3600),
    }
}

#[derive(Debug, Args)]
pub(crate) struct LeaveArgs {
    #[command(flatten)]
    target: Target,
}

pub(crate) fn leave(args: LeaveArgs) -> anyhow::Result<ExitCode> {
    let data = args.target.call("leave", json!({}))?;
    if args.target.json {
        println!("{data}");
    } else {
        println!("the node is leaving the mesh");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    #[command(flatten)]
    target: Target,
}

pub(crate) fn info(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let data = args.target.call("node_info", json!({}))?;
    if args.target.json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(ExitCode::SUCCESS);
    }
    for key in [
        "name",
        "mesh",
        "address",
        "incarnation",
        "version",
        "protocol_version",
        "local_health",
        "connections",
    ] {
        println!("{key:<14} {}", data[key]);
    }
    if let Some(counters) = data["counters"].as_object() {
        for (key, value) in counters {
            println!("{key:<20} {value}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct ApiArgs {
    /// The local API method, e.g. `members` or `register_peer` (see docs/local-api.md).
    method: String,
    /// Its parameters as a JSON object.
    #[arg(default_value = "{}")]
    params: String,
    #[command(flatten)]
    target: Target,
}

/// Sends one raw request and prints the reply line; exits 1 when the reply is an error.
pub(crate) fn api(args: ApiArgs) -> anyhow::Result<ExitCode> {
    let params: Value = serde_json::from_str(&args.params)
        .map_err(|e| anyhow::anyhow!("PARAMS is not JSON: {e}"))?;
    let socket = args.target.socket()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = runtime.block_on(async {
        let mut client = Client::connect(&socket).await?;
        client.request(&args.method, params).await
    })?;
    println!("{}", serde_json::to_string(&reply)?);
    Ok(if reply.as_error().is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Debug, Args)]
pub(crate) struct ReloadArgs {
    #[command(flatten)]
    target: Target,
}

/// Asks a node to re-read its certificates and blocklist, as SIGHUP does.
pub(crate) fn reload(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    let data = args.target.call("reload", json!({}))?;
    if args.target.json {
        println!("{data}");
    } else {
        let expelled: Vec<&str> = data["expelled"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "reloaded: {} certificates blocklisted; expelled: {}",
            data["blocklisted"],
            if expelled.is_empty() {
                "none".to_owned()
            } else {
                expelled.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct MonitorArgs {
    #[command(flatten)]
    target: Target,
}

/// Streams membership and Pod events until the node stops or the user interrupts.
pub(crate) fn monitor(args: MonitorArgs) -> anyhow::Result<ExitCode> {
    let socket = args.target.socket()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut client = Client::connect(&socket).await?;
        let first = client.call("monitor", json!({})).await?;
        if args.target.json {
            // The first line says the stream is live, so a reader knows nothing came before.
            println!("{}", json!({ "event": first.event, "data": first.data }));
        } else {
            let count = first.data["members"].as_array().map_or(0, Vec::len);
            println!("monitoring {count} members; Ctrl-C to stop");
        }
        loop {
            let event = match client.next_event().await {
                Ok(event) => event,
                Err(e) => {
                    if !args.target.json {
                        println!("the node closed the connection ({e})");
                    }
                    return Ok(ExitCode::SUCCESS);
                }
            };
            if args.target.json {
                let line = json!({ "event": event.event, "data": event.data });
                println!("{line}");
            } else {
                println!("{}", describe(&event.event, &event.data));
            }
        }
    })
}

/// One monitor event as a line of text.
fn describe(event: &str, data: &Value) -> String {
    let text = |key: &str| data[key].as_str().unwrap_or("?").to_owned();
    match event {
        "member" => format!(
            "member {} {} (incarnation {})",
            text("name"),
            text("state"),
            data["incarnation"]
        ),
        "peer_registered" => format!("peer registered: {} <-> {}", text("source"), text("peer")),
        "peer_unregistered" => {
            format!("peer unregistered: {} <-> {}", text("source"), text("peer"))
        }
        "notification" => format!(
            "message for {} from {}: {}",
            text("pod"),
            text("from"),
            text("message")
        ),
        "status" => format!("pod {} is {}", text("pod"), text("status")),
        other => format!("{other} {data}"),
    }
}
