//! `podmesh tui`: the terminal UI attached to a local node.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::client::Target;

#[derive(Debug, Args)]
pub(crate) struct TuiArgs {
    /// The local Pod to follow; defaults to the node's only Pod.
    #[arg(long)]
    pod: Option<String>,
    #[command(flatten)]
    target: Target,
}

pub(crate) fn run(args: TuiArgs) -> anyhow::Result<ExitCode> {
    let socket = args.target.socket()?;
    let pod = match args.pod {
        Some(pod) => pod,
        None => {
            let info = args.target.call("node_info", json!({}))?;
            let me = info["name"].as_str().unwrap_or_default().to_owned();
            let directory = args.target.call("directory", json!({}))?;
            let local: Vec<String> = directory["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["node"] == me.as_str())
                .filter_map(|p| p["pod"].as_str().map(str::to_owned))
                .collect();
            match local.as_slice() {
                [one] => one.clone(),
                [] => anyhow::bail!(
                    "this node hosts no Pod: create one with `podmesh pod create NAME`"
                ),
                many => anyhow::bail!(
                    "this node hosts several Pods ({}): give --pod",
                    many.join(", ")
                ),
            }
        }
    };
    podmesh::tui::run(socket, pod)?;
    Ok(ExitCode::SUCCESS)
}
