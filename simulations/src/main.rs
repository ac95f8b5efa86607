//! `podmesh-sim`: runs simulation scenarios and prints their reports.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use podmesh_sim::engine::Sim;
use podmesh_sim::report::{FocaSummary, Report};
use podmesh_sim::scenario::Scenario;

/// Deterministic simulations of the podmesh protocols under partial failures.
#[derive(Debug, Parser)]
#[command(name = "podmesh-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a scenario file for one seed or a range of seeds.
    Run(RunArgs),
    /// Check scenario files without running them.
    Check {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The scenario (TOML; see docs/simulations.md).
    file: PathBuf,
    /// Run this one seed (the default is seed 1).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run every seed from A through B (`A..B`, both included), with a progress bar.
    #[arg(long, value_parser = parse_seeds)]
    seeds: Option<Seeds>,
    /// Override the scenario's node count.
    #[arg(long)]
    nodes: Option<usize>,
    /// Write report.json and plot.svg per seed under this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Also run foca on the same scenario and seed (membership only), even if the scenario
    /// does not ask for it.
    #[arg(long)]
    foca: bool,
    /// Do not run foca, even if the scenario asks for it: at 10,000 nodes foca alone takes
    /// hours, its member lookups being linear.
    #[arg(long, conflicts_with = "foca")]
    no_foca: bool,
    /// Run each seed twice and fail unless both runs are identical (wall-clock fields aside).
    #[arg(long, conflicts_with = "real_signatures")]
    check_determinism: bool,
    /// Sign with real ECDSA P-256 keys and certificates from a throwaway mesh CA, as the
    /// daemon does, instead of the cheap deterministic scheme: measures what signing and
    /// checking cost. Such runs do not replay byte for byte (ECDSA draws a nonce).
    #[arg(long)]
    real_signatures: bool,
    /// Parallel runs for a seed range (default: the machine's cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print the whole report as JSON instead of the summary (single seed only).
    #[arg(long)]
    json: bool,
}

/// The seeds of a sweep.
#[derive(Debug, Clone)]
struct Seeds(Vec<u64>);

fn parse_seeds(s: &str) -> Result<Seeds, String> {
    let bad = || format!("expected A..B (seeds A through B), got {s:?}");
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let b = b.strip_prefix('=').unwrap_or(b);
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if b < a {
        return Err(format!("the seed range {s:?} is empty"));
    }
    if b - a >= 100_000 {
        return Err("at most 100,000 seeds per sweep".to_owned());
    }
    Ok(Seeds((a..=b).collect()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Check { files } => check(&files),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("podmesh-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    for file in files {
        let s = Scenario::load(file)?;
        println!("{}: {} ({} nodes)", file.display(), s.name, s.nodes);
    }
    Ok(ExitCode::SUCCESS)
}

/// The command that replays one run exactly.
fn replay_command(args: &RunArgs, seed: u64) -> String {
    let mut cmd = format!("podmesh-sim run {} --seed {seed}", args.file.display());
    if let Some(n) = args.nodes {
        cmd += &format!(" --nodes {n}");
    }
    if args.real_signatures {
        cmd += " --real-signatures";
    }
    cmd
}

/// Whether foca runs alongside: the flags decide over the scenario.
fn wants_foca(args: &RunArgs, scenario: &Scenario) -> bool {
    !args.no_foca && (args.foca || scenario.compare_foca)
}

/// Runs one seed (twice with `--check-determinism`), with foca alongside when asked.
fn run_seed(scenario: &Scenario, args: &RunArgs, seed: u64) -> anyhow::Result<Report> {
    let mut sim = Sim::new(scenario.clone(), seed)?;
    if args.real_signatures {
        sim = sim.with_real_signatures()?;
    }
    let mut report = sim.run()?;
    if args.check_determinism {
        let again = Sim::new(scenario.clone(), seed)?.run()?;
        if again.without_wall_clock() != report.without_wall_clock() {
            report.violations.push(format!(
                "not deterministic: log {} then {}",
                report.log_hash, again.log_hash
            ));
        }
    }
    if wants_foca(args, scenario) {
        let started = Instant::now();
        let foca = podmesh_sim::foca_sim::run(scenario, seed)?;
        report.foca = Some(FocaSummary {
            membership: foca.metrics,
            wall_s: started.elapsed().as_secs_f64(),
            events: foca.events,
        });
    }
    if let Some(dir) = &args.report {
        report.write(&dir.join(format!("seed-{seed}")))?;
    }
    Ok(report)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut scenario = Scenario::load(&args.file)?;
    if let Some(n) = args.nodes {
        scenario = scenario.with_nodes(n)?;
    }
    let seeds = match (&args.seeds, args.seed) {
        (Some(seeds), _) => seeds.0.clone(),
        (None, seed) => vec![seed.unwrap_or(1)],
    };
    if seeds.len() == 1 {
        let seed = seeds[0];
        let report = run_seed(&scenario, &args, seed)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.summary());
        }
        if let Some(dir) = &args.report {
            println!("report: {}", dir.join(format!("seed-{seed}")).display());
        }
        if !report.passed() {
            println!("FAILED; replay with: {}", replay_command(&args, seed));
            return Ok(ExitCode::FAILURE);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        bail!("--json prints one report: use it with --seed");
    }
    sweep(&scenario, &args, &seeds)
}

fn sweep(scenario: &Scenario, args: &RunArgs, seeds: &[u64]) -> anyhow::Result<ExitCode> {
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, seeds.len());
    let bar = ProgressBar::new(seeds.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} seeds, {elapsed} (eta {eta})")
            .context("progress template")?
            .progress_chars("=> "),
    );
    bar.set_message(scenario.name.clone());
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(u64, anyhow::Result<Report>)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { break };
                    let result = run_seed(scenario, args, seed);
                    if let Ok(r) = &result
                        && !r.passed()
                    {
                        bar.println(format!(
                            "seed {seed} FAILED; replay with: {}",
                            replay_command(args, seed)
                        ));
                    }
                    results
                        .lock()
                        .expect("no panics hold it")
                        .push((seed, result));
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut results = results.into_inner().expect("threads are done");
    results.sort_by_key(|(seed, _)| *seed);
    let mut failed = Vec::new();
    let mut wall = 0.0;
    for (seed, result) in &results {
        match result {
            Ok(report) => {
                wall += report.wall_s;
                if !report.passed() {
                    print!("{}", report.summary());
                    failed.push(*seed);
                }
            }
            Err(e) => {
                println!("seed {seed}: error: {e:#}");
                failed.push(*seed);
            }
        }
    }
    print_sweep_table(scenario, &results);
    println!(
        "{}: {} of {} seeds passed ({:.1} s of runs)",
        scenario.name,
        results.len() - failed.len(),
        results.len(),
        wall
    );
    for seed in &failed {
        println!("replay: {}", replay_command(args, *seed));
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Median, min and max of the headline figures over the seeds.
fn print_sweep_table(scenario: &Scenario, results: &[(u64, anyhow::Result<Report>)]) {
    let reports: Vec<&Report> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    if reports.is_empty() {
        return;
    }
    let stat = |name: &str, values: Vec<f64>| {
        if values.is_empty() {
            return;
        }
        let mut v = values;
        v.sort_by(f64::total_cmp);
        println!(
            "  {name:<40} median {:>9.2}  min {:>9.2}  max {:>9.2}",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    };
    println!("{} over {} seeds:", scenario.name, reports.len());
    let m = |f: &dyn Fn(&Report) -> Option<f64>| reports.iter().filter_map(|r| f(r)).collect();
    stat("full roster (s)", m(&|r| r.membership.full_roster_s));
    stat("crash known by all (s)", m(&|r| r.membership.detect_all_s));
    stat(
        "healthy declared dead",
        m(&|r| Some(r.membership.healthy_declared_dead as f64)),
    );
    stat(
        "converged after heal (s)",
        m(&|r| r.membership.heal_converge_s),
    );
    stat(
        "frames per node per s",
        m(&|r| Some(r.membership.msgs_per_node_s)),
    );
    stat(
        "bytes per node per s",
        m(&|r| Some(r.membership.bytes_per_node_s)),
    );
    stat(
        "steady frames per node per s",
        m(&|r| Some(r.membership.steady_msgs_per_node_s)),
    );
    stat(
        "steady bytes per node per s",
        m(&|r| Some(r.membership.steady_bytes_per_node_s)),
    );
    stat("wall time (s)", m(&|r| Some(r.wall_s)));
    if reports.iter().any(|r| r.foca.is_some()) {
        let f = |g: &dyn Fn(&FocaSummary) -> Option<f64>| {
            reports
                .iter()
                .filter_map(|r| r.foca.as_ref().and_then(g))
                .collect()
        };
        stat("foca: full roster (s)", f(&|x| x.membership.full_roster_s));
        stat(
            "foca: crash known by all (s)",
            f(&|x| x.membership.detect_all_s),
        );
        stat(
            "foca: healthy declared dead",
            f(&|x| Some(x.membership.healthy_declared_dead as f64)),
        );
        stat(
            "foca: converged after heal (s)",
            f(&|x| x.membership.heal_converge_s),
        );
        stat(
            "foca: frames per node per s",
            f(&|x| Some(x.membership.msgs_per_node_s)),
        );
        stat(
            "foca: bytes per node per s",
            f(&|x| Some(x.membership.bytes_per_node_s)),
        );
        stat(
            "foca: steady frames per node per s",
            f(&|x| Some(x.membership.steady_msgs_per_node_s)),
        );
        stat(
            "foca: steady bytes per node per s",
            f(&|x| Some(x.membership.steady_bytes_per_node_s)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_include_both_ends_and_bad_ones_are_refused() {
        assert_eq!(parse_seeds("1..20").unwrap().0.len(), 20);
        assert_eq!(parse_seeds("3..=3").unwrap().0, vec![3]);
        assert!(parse_seeds("5..4").is_err());
        assert!(parse_seeds("x..4").is_err());
        assert!(parse_seeds("7").is_err());
        assert!(parse_seeds("0..100000").is_err());
    }

    #[test]
    fn the_foca_flags_decide_over_the_scenario_and_exclude_each_other() {
        let run = |flags: &[&str]| {
            let argv = ["podmesh-sim", "run", "s.toml"].iter().chain(flags);
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Cmd::Run(args)) => Ok(args),
                Ok(other) => panic!("parsed as {other:?}"),
                Err(e) => Err(e.kind()),
            }
        };
        let scenario = |foca: bool| {
            Scenario::parse(&format!(
                "name = \"s\"\nnodes = 10\nsafety_s = 10\ncompare_foca = {foca}\n"
            ))
            .unwrap()
        };
        let (asks, silent) = (scenario(true), scenario(false));
        assert!(wants_foca(&run(&[]).unwrap(), &asks));
        assert!(!wants_foca(&run(&[]).unwrap(), &silent));
        assert!(wants_foca(&run(&["--foca"]).unwrap(), &silent));
        assert!(!wants_foca(&run(&["--no-foca"]).unwrap(), &asks));
        assert_eq!(
            run(&["--foca", "--no-foca"]).unwrap_err(),
            clap::error::ErrorKind::ArgumentConflict
        );
    }
}
