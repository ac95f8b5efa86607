//! Command-line parsing and dispatch.

mod certs;
mod client;
mod node;

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
    /// Make a node leave the mesh gracefully (others see it as `left`, not dead) and stop.
    Leave(client::LeaveArgs),
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Run a node daemon in the foreground; SIGINT or SIGTERM makes it leave and stop.
    Run(node::RunArgs),
    /// Show a running node's name, mesh, address, incarnation, version and counters.
    Info(client::InfoArgs),
}

/// Runs a parsed command line; errors are printed by `main` as one line.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Certs(command) => certs::run(command),
        Command::Node(NodeCommand::Run(args)) => node::run(args),
        Command::Node(NodeCommand::Info(args)) => client::info(args),
        Command::Members(args) => client::members(args),
        Command::Leave(args) => client::leave(args),
    }
}
