//! `podmesh node run`: run a node daemon in the foreground.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use podmesh::config::{DEFAULT_LISTEN, NodeFile, Preset, resolve};
use podmesh::daemon::{self, NodeSettings};
use podmesh_certs::Fingerprint;

#[derive(Clone, Debug, Args)]
pub(crate) struct RunArgs {
    /// A TOML file with any of the settings below (flags and PODMESH_* variables override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory with ca.crt, node.crt and node.key [env: PODMESH_CERTS_DIR].
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// Data directory for node.redb and podmesh.sock [default: $XDG_DATA_HOME/podmesh/<node>]
    /// [env: PODMESH_DATA_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Expected node name; refused if the certificate says otherwise [env: PODMESH_NAME].
    #[arg(long)]
    name: Option<String>,
    /// QUIC listen address [default: 0.0.0.0:7946] [env: PODMESH_LISTEN].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Address other nodes reach this one at [default: the listen address when specific, else
    /// the local address towards the first seed] [env: PODMESH_ADVERTISE].
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Seed node to join through, host:port (repeatable) [env: PODMESH_JOIN, comma-separated].
    /// Without seeds a restarted node rejoins the members it last knew, also after it left
    /// gracefully; to move it out of its old mesh, start it with --forget-members (to keep it
    /// out for good, blocklist its certificate on the other nodes).
    #[arg(long = "join", value_name = "ADDR")]
    join: Vec<String>,
    /// Drop the members stored by the previous run before starting: the node then joins only
    /// through --join, and contacts no one without it.
    #[arg(long)]
    forget_members: bool,
    /// Membership timing preset [default: lan] [env: PODMESH_PRESET].
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// SHA-256 fingerprint of a certificate to refuse (repeatable) [env: PODMESH_BLOCKLIST].
    /// SIGHUP or `podmesh node reload` re-reads the blocklist and the certificates directory.
    #[arg(long = "block", value_name = "SHA256")]
    blocklist: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics [env: PODMESH_METRICS_LISTEN].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Seconds a peer handshake this node takes part in keeps asking a coordinator that
    /// membership has forgotten (dead or left for good) before it ends it and rolls its Pod
    /// back [default: 600] [env: PODMESH_PARTICIPANT_GIVE_UP_S].
    #[arg(long, value_name = "SECONDS")]
    participant_give_up_s: Option<u64>,
}

fn settings(args: &RunArgs) -> anyhow::Result<NodeSettings> {
    let args = args.clone();
    let mut file = match &args.config {
        Some(path) => NodeFile::load(path)?,
        None => NodeFile::default(),
    };
    file.apply_env(|key| std::env::var(key).ok())?;
    if args.certs_dir.is_some() {
        file.certs_dir = args.certs_dir;
    }
    if args.data_dir.is_some() {
        file.data_dir = args.data_dir;
    }
    if args.name.is_some() {
        file.name = args.name;
    }
    if args.listen.is_some() {
        file.listen = args.listen;
    }
    if args.advertise.is_some() {
        file.advertise = args.advertise;
    }
    if !args.join.is_empty() {
        file.join = args.join;
    }
    if args.preset.is_some() {
        file.preset = args.preset;
    }
    if !args.blocklist.is_empty() {
        file.blocklist = args.blocklist;
    }
    if args.metrics_listen.is_some() {
        file.metrics_listen = args.metrics_listen;
    }
    if args.participant_give_up_s.is_some() {
        file.participant_give_up_s = args.participant_give_up_s;
    }
    let certs_dir = file.certs_dir.ok_or_else(|| {
        anyhow::anyhow!("no certificates: give --certs-dir (or certs_dir in --config)")
    })?;
    let listen = resolve("--listen", file.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
    let advertise = file
        .advertise
        .as_deref()
        .map(|a| resolve("--advertise", a))
        .transpose()?;
    let join = file
        .join
        .iter()
        .map(|a| resolve("--join", a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let blocklist = file
        .blocklist
        .iter()
        .map(|f| f.parse())
        .collect::<Result<BTreeSet<_>, _>>()?;
    let metrics_listen = file
        .metrics_listen
        .as_deref()
        .map(|a| resolve("--metrics-listen", a))
        .transpose()?;
    Ok(NodeSettings {
        certs_dir,
        expected_name: file.name,
        data_dir: file.data_dir,
        listen,
        advertise,
        join,
        preset: file.preset.unwrap_or_default(),
        blocklist,
        metrics_listen,
        forget_members: args.forget_members,
        participant_give_up: file
            .participant_give_up_s
            .map(std::time::Duration::from_secs),
    })
}

/// The blocklist alone, as a reload reads it: the file's list unless `--block` or
/// `PODMESH_BLOCKLIST` override it (then a reload cannot change it, and says so).
fn blocklist(args: &RunArgs) -> anyhow::Result<BTreeSet<Fingerprint>> {
    let overridden = !args.blocklist.is_empty() || std::env::var_os("PODMESH_BLOCKLIST").is_some();
    if overridden {
        tracing::warn!(
            "the blocklist comes from --block or PODMESH_BLOCKLIST, which a reload does not \
             re-read; keep it in the config file to change it without a restart"
        );
    }
    let mut file = match &args.config {
        Some(path) => NodeFile::load(path)?,
        None => NodeFile::default(),
    };
    file.apply_env(|key| std::env::var(key).ok())?;
    if !args.blocklist.is_empty() {
        file.blocklist = args.blocklist.clone();
    }
    file.blocklist
        .iter()
        .map(|f| f.parse().map_err(anyhow::Error::from))
        .collect()
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let resolved = settings(&args)?;
    // SIGHUP and `podmesh node reload` resolve the blocklist again from the same sources.
    let reload: daemon::Reload = Box::new(move || blocklist(&args));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One thread: every hop of a delivery (local API, actor, QUIC streams) is a task on it, so
    // none needs a wake-up across threads. Measured with podmesh-bench against two worker
    // threads: delivery p50 0.66 ms against 0.94, 8 senders 8,110 messages/s against 4,910.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(resolved, reload))?;
    Ok(ExitCode::SUCCESS)
}
