//! Command-line parsing and dispatch.

mod certs;
mod client;
mod demo;
mod node;
mod pods;
mod tui;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// podmesh: a peer mesh for Pods over QUIC with mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "podmesh", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the mesh CA, issue node certificates, inspect and verify them.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Run a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// List the mesh members a node knows: name, address, state, incarnation, last change.
    Members(client::MembersArgs),
    /// List Pods: every Pod the mesh knows, or those visible to one Pod (--pod).
    Pods(pods::PodsArgs),
    /// Create, remove, show or set the status of a Pod.
    #[command(subcommand)]
    Pod(pods::PodCommand),
    /// Create a child Pod spawned by a parent Pod on the same node.
    Spawn(pods::SpawnArgs),
    /// Make two Pods peers, recorded durably on both nodes.
    Peer(pods::PeerArgs),
    /// Remove a peer relation on both nodes.
    Unpeer(pods::PeerArgs),
    /// Send a message to a peer Pod; succeeds once it is stored in the peer's inbox.
    Send(pods::SendArgs),
    /// Show a Pod's inbox (messages from its peers).
    Inbox(pods::InboxArgs),
    /// Open the terminal UI on a local Pod: visible Pods, members, notifications, `:` commands.
    Tui(tui::TuiArgs),
    /// Send one raw local API request and print the reply as JSON (for scripts).
    Api(client::ApiArgs),
    /// A throwaway three-node mesh on 127.0.0.1: Pods, a peer relation, a message, the tables;
    /// then the TUI on a terminal. Start here.
    Demo(demo::DemoArgs),
    /// Make a node leave the mesh gracefully (others see it as `left`, not dead) and stop.
    Leave(client::LeaveArgs),
    /// Stream membership and Pod events as they happen (`--json`: one object a line).
    Monitor(client::MonitorArgs),
    /// Print a shell completion script, e.g. `podmesh completions bash > /etc/bash_completion.d/podmesh`.
    Completions(CompletionsArgs),
}

#[derive(Debug, clap::Args)]
struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Run a node daemon in the foreground; SIGINT or SIGTERM makes it leave and stop, SIGHUP
    /// re-reads its certificates and blocklist.
    Run(node::RunArgs),
    /// Show a running node's name, mesh, address, incarnation, version and counters.
    Info(client::InfoArgs),
    /// Make a running node re-read its certificates and blocklist without a restart (as
    /// SIGHUP does): new connections use them, blocklisted peers are disconnected at once.
    Reload(client::ReloadArgs),
}

/// Runs a parsed command line; errors are printed by `main` as one line.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Certs(command) => certs::run(command),
        Command::Node(NodeCommand::Run(args)) => node::run(args),
        Command::Node(NodeCommand::Info(args)) => client::info(args),
        Command::Node(NodeCommand::Reload(args)) => client::reload(args),
        Command::Members(args) => client::members(args),
        Command::Pods(args) => pods::pods(args),
        Command::Pod(command) => pods::pod(command),
        Command::Spawn(args) => pods::spawn(args),
        Command::Peer(args) => pods::peer(args, true),
        Command::Unpeer(args) => pods::peer(args, false),
        Command::Send(args) => pods::send(args),
        Command::Inbox(args) => pods::inbox(args),
        Command::Leave(args) => client::leave(args),
        Command::Api(args) => client::api(args),
        Command::Tui(args) => tui::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Monitor(args) => client::monitor(args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(args.shell, &mut command, "podmesh", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}
