//! `podmesh`: the command-line interface to a podmesh node and its certificates.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// jemalloc hands memory freed after a burst (a peer's large frames, a closed connection) back
/// to the system within seconds, by its decay; glibc's allocator keeps most of it in its arenas.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
