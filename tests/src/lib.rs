//! A harness for end-to-end tests: real `podmesh` processes on 127.0.0.1, each with its own
//! certificates and data directory, driven through the real CLI. [`hosts`] puts them on hosts
//! of their own instead (network namespaces, as root).
//!
//! Nothing here may hang a test run: every wait has a deadline, and every child process is
//! killed and reaped when its [`Cluster`] is dropped, even when the test panics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod hosts;
pub mod relay;
pub mod tmux;
use serde_json::Value;

/// How long a node may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often waits poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// Makes the harness use `bin` (a release build, for benchmarks) instead of building one.
/// Returns false when a binary was already chosen.
pub fn use_podmesh_bin(bin: PathBuf) -> bool {
    BIN.set(bin).is_ok()
}

/// The `podmesh` binary: `$PODMESH_BIN`, else the one cargo builds next to this test binary.
///
/// A test run of this crate alone does not rebuild another package's binary, so the harness
/// asks cargo to build it once (with the fault points the suite needs); cargo makes that a
/// no-op when it is up to date.
pub fn podmesh_bin() -> &'static Path {
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("PODMESH_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binaries live in <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("a target directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        // Cargo describes the package under test to the test process (`CARGO_PKG_NAME`,
        // `CARGO_MANIFEST_DIR`, ...) but not to itself. ring's build script reruns when those
        // change, so passing them on would rebuild ring and everything above it here, and again
        // on the next `cargo test`.
        for (key, _) in std::env::vars_os() {
            let described = key.to_str().is_some_and(|k| {
                k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_MANIFEST_")
                    || matches!(
                        k,
                        "CARGO_CRATE_NAME"
                            | "CARGO_BIN_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                    )
            });
            if described {
                build.env_remove(key);
            }
        }
        let status = build
            .args([
                "build",
                "-p",
                "podmesh",
                "--bin",
                "podmesh",
                "--features",
                "fault-points",
            ])
            .arg("--target-dir")
            .arg(target_dir)
            .stdin(Stdio::null())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the podmesh binary failed");
        profile_dir.join("podmesh")
    })
}

/// Runs the CLI with `args` and returns its output.
pub fn podmesh(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(podmesh_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running podmesh")
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// One node process and its files.
#[derive(Debug)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Certificate directory.
    pub certs_dir: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
    /// The QUIC address it listens on.
    pub addr: SocketAddr,
    /// The address it advertises (its relay's), when it runs behind a relay.
    pub advertise: Option<SocketAddr>,
    /// Its log file (stderr).
    pub log: PathBuf,
    /// Extra `node run` arguments it was started with, used again by restarts.
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// Whether its process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The OS process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A set of nodes of one mesh, in a temporary directory.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    /// The mesh CA directory.
    pub ca_dir: PathBuf,
    nodes: BTreeMap<String, Node>,
    /// Processes replaced by a restart while still stopping, reaped on drop.
    stopping: Vec<Child>,
}

impl Cluster {
    /// Creates a mesh CA for `mesh` in a new temporary directory.
    pub fn new(mesh: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca_dir = dir.path().join("ca");
        let out = podmesh(&["certs", "init", "--mesh", mesh, "--ca-dir", path(&ca_dir)])?;
        ensure_success(&out, "certs init")?;
        Ok(Self {
            dir,
            ca_dir,
            nodes: BTreeMap::new(),
            stopping: Vec::new(),
        })
    }

    /// The temporary directory everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues certificates for `name` from this cluster's CA (or from `ca_dir` when given).
    pub fn issue(&self, name: &str, ca_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
        let certs_dir = self.dir.path().join(name).join("certs");
        let ca_dir = ca_dir.unwrap_or(&self.ca_dir);
        let out = podmesh(&[
            "certs",
            "issue",
            name,
            "--ca-dir",
            path(ca_dir),
            "--out",
            path(&certs_dir),
        ])?;
        ensure_success(&out, "certs issue")?;
        Ok(certs_dir)
    }

    /// Starts node `name` on an ephemeral loopback port, joining `join`, and waits until it
    /// listens.
    pub fn start(&mut self, name: &str, join: &[SocketAddr]) -> anyhow::Result<SocketAddr> {
        self.start_with(name, join, &[])
    }

    /// Like [`Cluster::start`], with extra environment variables (fault points).
    pub fn start_with(
        &mut self,
        name: &str,
        join: &[SocketAddr],
        env: &[(&str, &str)],
    ) -> anyhow::Result<SocketAddr> {
        let certs_dir = self.issue(name, None)?;
        self.spawn_with(name, certs_dir, "127.0.0.1:0".parse()?, join, env)
    }

    /// Starts node `name` with extra `node run` arguments (kept for its restarts).
    pub fn start_args(
        &mut self,
        name: &str,
        join: &[SocketAddr],
        args: &[String],
    ) -> anyhow::Result<SocketAddr> {
        let certs_dir = self.issue(name, None)?;
        self.launch_args(
            name,
            certs_dir,
            "127.0.0.1:0".parse()?,
            None,
            join,
            &[],
            args,
        )
    }

    /// Starts a node with certificates from `certs_dir` (possibly of another CA).
    pub fn spawn(
        &mut self,
        name: &str,
        certs_dir: PathBuf,
        listen: SocketAddr,
        join: &[SocketAddr],
    ) -> anyhow::Result<SocketAddr> {
        self.spawn_with(name, certs_dir, listen, join, &[])
    }

    /// Starts node `name` behind a relay of `network`: it advertises the relay's address, so
    /// every packet to it crosses the relay. `join` lists seeds' advertised (relay) addresses.
    /// Returns the relay's address.
    pub fn start_relayed(
        &mut self,
        network: &relay::Network,
        name: &str,
        join: &[SocketAddr],
    ) -> anyhow::Result<SocketAddr> {
        let certs_dir = self.issue(name, None)?;
        let relay = network.relay(name)?;
        let advertise = relay.addr;
        self.launch(
            name,
            certs_dir,
            "127.0.0.1:0".parse()?,
            Some(advertise),
            join,
            &[],
        )?;
        let node_addr = self.node(name).addr;
        network.attach(relay, node_addr);
        Ok(advertise)
    }

    /// Starts a node with extra environment variables.
    pub fn spawn_with(
        &mut self,
        name: &str,
        certs_dir: PathBuf,
        listen: SocketAddr,
        join: &[SocketAddr],
        env: &[(&str, &str)],
    ) -> anyhow::Result<SocketAddr> {
        self.launch(name, certs_dir, listen, None, join, env)
    }

    fn launch(
        &mut self,
        name: &str,
        certs_dir: PathBuf,
        listen: SocketAddr,
        advertise: Option<SocketAddr>,
        join: &[SocketAddr],
        env: &[(&str, &str)],
    ) -> anyhow::Result<SocketAddr> {
        self.launch_args(name, certs_dir, listen, advertise, join, env, &[])
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "every start input of a node process"
    )]
    fn launch_args(
        &mut self,
        name: &str,
        certs_dir: PathBuf,
        listen: SocketAddr,
        advertise: Option<SocketAddr>,
        join: &[SocketAddr],
        env: &[(&str, &str)],
        args: &[String],
    ) -> anyhow::Result<SocketAddr> {
        let node_dir = self.dir.path().join(name);
        let data_dir = node_dir.join("data");
        std::fs::create_dir_all(&node_dir)?;
        let log = unique(node_dir.join("node"));
        let mut command = Command::new(podmesh_bin());
        command
            .args([
                "node",
                "run",
                "--certs-dir",
                path(&certs_dir),
                "--data-dir",
                path(&data_dir),
            ])
            .args(["--listen", &listen.to_string()])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        for seed in join {
            command.args(["--join", &seed.to_string()]);
        }
        if let Some(advertise) = advertise {
            command.args(["--advertise", &advertise.to_string()]);
        }
        command.args(args);
        let mut child = command.spawn().context("spawning podmesh node run")?;
        let addr = podmesh::daemon::wait_until_listening(&mut child, START_TIMEOUT).with_context(
            || {
                format!(
                    "node {name}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            },
        )?;
        self.nodes.insert(
            name.to_owned(),
            Node {
                name: name.to_owned(),
                certs_dir,
                data_dir,
                addr,
                advertise,
                log,
                args: args.to_vec(),
                child: Some(child),
            },
        );
        Ok(addr)
    }

    /// The node called `name`.
    pub fn node(&mut self, name: &str) -> &mut Node {
        self.nodes.get_mut(name).expect("a node of this cluster")
    }

    /// Kills `name` with SIGKILL and reaps it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.node(name).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to `name` (a polite stop: the node leaves the mesh).
    pub fn terminate(&mut self, name: &str) -> anyhow::Result<()> {
        let pid = self.node(name).pid().context("node not running")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        Ok(())
    }

    /// Restarts `name` on its old address and data directory, with the given seeds.
    pub fn restart(&mut self, name: &str, join: &[SocketAddr]) -> anyhow::Result<SocketAddr> {
        self.kill(name);
        // A process that crashed by itself is reaped by kill() above; start afresh.
        self.relaunch(name, join)
    }

    /// Starts `name` again right away on its old address and data directory, without waiting
    /// for a previous process that is still stopping (it is reaped when the cluster drops).
    pub fn restart_now(&mut self, name: &str, join: &[SocketAddr]) -> anyhow::Result<SocketAddr> {
        if let Some(child) = self.node(name).child.take() {
            self.stopping.push(child);
        }
        self.relaunch(name, join)
    }

    fn relaunch(&mut self, name: &str, join: &[SocketAddr]) -> anyhow::Result<SocketAddr> {
        let (certs_dir, addr, advertise, args) = {
            let node = self.node(name);
            (
                node.certs_dir.clone(),
                node.addr,
                node.advertise,
                node.args.clone(),
            )
        };
        self.launch_args(name, certs_dir, addr, advertise, join, &[], &args)
    }

    /// Waits for `name`'s process to exit by itself and returns whether it exited cleanly.
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> Option<bool> {
        let node = self.node(name);
        let child = node.child.as_mut()?;
        let status = wait_for(timeout, || child.try_wait().ok().flatten())?;
        node.child = None;
        Some(status.success())
    }

    /// Runs a client command against node `name` with `--data-dir` and `--json`.
    pub fn cli_json(&mut self, name: &str, args: &[&str]) -> anyhow::Result<Value> {
        let data_dir = self.node(name).data_dir.clone();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--data-dir", path(&data_dir), "--json"]);
        let out = podmesh(&full)?;
        ensure_success(&out, &args.join(" "))?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// A local API client of node `name`, as a program holds one, with the one-thread runtime
    /// that drives it.
    pub fn local_client(
        &mut self,
        name: &str,
    ) -> anyhow::Result<(tokio::runtime::Runtime, podmesh::client::Client)> {
        let socket = podmesh::client::socket_path(&self.node(name).data_dir.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = runtime.block_on(podmesh::client::Client::connect(&socket))?;
        Ok((runtime, client))
    }

    /// Calls the local API of `name` directly; returns the reply data, or the error's
    /// `(code, message)`.
    pub fn api(
        &mut self,
        name: &str,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Result<Value, (String, String)>> {
        let mut full = vec!["api".to_owned(), method.to_owned(), params.to_string()];
        let data_dir = self.node(name).data_dir.clone();
        full.extend(["--data-dir".to_owned(), path(&data_dir).to_owned()]);
        let args: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = podmesh(&args)?;
        api_reply(&out, method)
    }

    /// `name`'s view of the members: name -> (state, incarnation).
    pub fn members(&mut self, name: &str) -> anyhow::Result<BTreeMap<String, (String, u64)>> {
        let value = self.cli_json(name, &["members"])?;
        let mut out = BTreeMap::new();
        for m in value["members"].as_array().context("members array")? {
            out.insert(
                m["name"].as_str().context("name")?.to_owned(),
                (
                    m["state"].as_str().context("state")?.to_owned(),
                    m["incarnation"].as_u64().context("incarnation")?,
                ),
            );
        }
        Ok(out)
    }

    /// Names of nodes whose processes run.
    pub fn running(&mut self) -> Vec<String> {
        self.nodes
            .values_mut()
            .filter_map(|n| n.is_running().then(|| n.name.clone()))
            .collect()
    }

    /// The log of `name`, for failure messages.
    pub fn log(&mut self, name: &str) -> String {
        std::fs::read_to_string(&self.node(name).log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let children = self
            .nodes
            .values_mut()
            .filter_map(|node| node.child.take())
            .chain(self.stopping.drain(..));
        for mut child in children.collect::<Vec<_>>() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The reply of a `podmesh api` run: its data, or the error's `(code, message)`.
pub fn api_reply(out: &Output, method: &str) -> anyhow::Result<Result<Value, (String, String)>> {
    let reply: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("api {method}: {}", String::from_utf8_lossy(&out.stderr)))?;
    if reply["event"] == "error" {
        return Ok(Err((
            reply["data"]["code"].as_str().unwrap_or("").to_owned(),
            reply["data"]["message"].as_str().unwrap_or("").to_owned(),
        )));
    }
    Ok(Ok(reply["data"].clone()))
}

fn unique(path: PathBuf) -> PathBuf {
    let mut n = 0;
    loop {
        let candidate = path.with_extension(format!("{n}.log"));
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

pub(crate) fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

pub(crate) fn ensure_success(out: &Output, what: &str) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "podmesh {what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
