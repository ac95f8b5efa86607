//! `podmesh`: the command-line interface to a podmesh node and its certificates.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("podmesh: {error:#}");
            ExitCode::FAILURE
        }
    }
}
