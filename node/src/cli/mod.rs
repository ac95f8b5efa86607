//! Command-line parsing and dispatch.

mod certs;

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
}

/// Runs a parsed command line; errors are printed by `main` as one line.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Certs(command) => certs::run(command),
    }
}
