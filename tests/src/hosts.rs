//! Real hosts for end-to-end tests: every node in a Linux network namespace of its own, with its
//! own address on a private test network, deployed by the operator's procedure through the real
//! CLI, and network faults made by the kernel rather than by a relay the nodes know about.
//!
//! The loopback [`Cluster`](crate::Cluster) cannot show what an operator meets on real hosts:
//! nodes that listen on and advertise a host's address, certificates with that address as a
//! SAN, a config file per host, and packets lost, delayed or cut on the wire between hosts. This
//! module builds that on one machine:
//!
//! ```text
//!  netns <tag>-n1          netns <tag>-n2          netns <tag>-n3
//!  eth0 10.203.0.1/24      eth0 10.203.0.2/24      eth0 10.203.0.3/24
//!        |                       |                       |
//!        n1 -------------------- n2 -------------------- n3    veth ends, ports of br0
//!                         netns <tag>-sw (bridge br0)
//! ```
//!
//! The bridge lives in a namespace of its own, so nothing is added to the root namespace's
//! network. `10.203.0.0/24` exists only inside these namespaces, so every test may use it at
//! once. Names carry the process id and a per-process sequence number, so parallel tests and
//! leftovers of a killed run never collide; everything (processes, namespaces, files) is removed
//! when [`Hosts`] is dropped, also when the test panics.
//!
//! Faults, without netem (which this kernel lacks):
//! - loss: an nftables table in a host's namespace drops a share of the UDP packets arriving on
//!   its link ([`Hosts::set_loss`]);
//! - partition: the host's port on the bridge goes down ([`Hosts::cut`], [`Hosts::heal`]);
//! - delay: the `podmesh-relay` binary runs in every host's namespace in front of its node, which
//!   advertises the relay's address ([`Relays`]). Every host is relayed, not only one, because a
//!   QUIC connection crosses only the relay of the node that was dialled, and connections are
//!   pooled by node name and used in both directions: a single relayed node would mostly be
//!   reached over connections it dialled itself, which no relay delays.
//!
//! Unix sockets with a path are not network-namespaced, but client commands still run inside
//! the host's namespace, as an operator runs them on that host.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use podmesh::config::Preset;
use serde_json::Value;

use crate::{START_TIMEOUT, ensure_success, path, podmesh_bin};

/// The first three octets of the test network; host `i` (from 1) is `10.203.0.i/24`.
pub const SUBNET: [u8; 3] = [10, 203, 0];
/// The port every node listens on, on its host's address (podmesh's default port).
pub const NODE_PORT: u16 = 7946;
/// The port a host's relay listens on when the host is relayed; the node advertises it.
pub const RELAY_PORT: u16 = 7947;
/// The nftables table that holds a host's loss rule.
const LOSS_TABLE: &str = "podmesh_loss";
/// The host side of every host's veth pair.
const HOST_LINK: &str = "eth0";
/// The bridge in the switch namespace.
const BRIDGE: &str = "br0";

/// Hosts made by this process so far, so every [`Hosts`] of one run has names of its own.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// Why this machine cannot run the hosts suite, if it cannot: it needs root, `ip` (iproute2)
/// with working `ip netns add`, and `nft` (nftables).
pub fn unavailable() -> Option<String> {
    match effective_uid() {
        Some(0) => {}
        Some(uid) => {
            return Some(format!(
                "not root (effective uid {uid}); network namespaces need root"
            ));
        }
        None => return Some("cannot read the effective uid from /proc/self/status".into()),
    }
    for (tool, package, check) in [("ip", "iproute2", "-V"), ("nft", "nftables", "--version")] {
        match Command::new(tool).arg(check).output() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Some(format!("`{tool}` not found on PATH (install {package})"));
            }
            Err(e) => return Some(format!("`{tool}` cannot be run: {e}")),
        }
    }
    let probe = format!("pmh-{}-probe{}", std::process::id(), next_sequence());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
        Ok(out) => Some(format!(
            "`ip netns add {probe}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("`ip netns add` cannot be run: {e}")),
    }
}

/// Whether `test` can run here. When it cannot, it prints one line saying why and returns
/// false, except when the environment variable `CI` is set: CI must run the suite, so there it
/// panics with the reason instead.
pub fn runnable(test: &str) -> bool {
    let Some(why) = unavailable() else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run and CI is set, so it may not be skipped: {why}");
    }
    // Straight to stderr rather than through eprintln!, which the test harness captures and
    // shows only for failures: a skip must be visible.
    let _ = writeln!(std::io::stderr(), "skipping {test}: {why}");
    false
}

/// How a [`Hosts`] mesh is deployed.
#[derive(Clone, Debug)]
pub struct Deployment {
    /// Mesh name (the CA's).
    pub mesh: String,
    /// Number of hosts, at most 254.
    pub hosts: u8,
    /// The membership preset every node.toml names.
    pub preset: Preset,
    /// Relays in front of every node, to delay packets; `None` connects nodes directly.
    pub relays: Option<Relays>,
}

/// A `podmesh-relay` on every host, in front of its node.
#[derive(Clone, Debug)]
pub struct Relays {
    /// The `podmesh-relay` binary (an integration test has it as
    /// `env!("CARGO_BIN_EXE_podmesh-relay")`).
    pub bin: PathBuf,
    /// How long each packet waits in the relay it crosses, each way.
    pub delay: Duration,
}

/// One host: a namespace with its link, address and files, its node, and its relay.
#[derive(Debug)]
pub struct Host {
    /// The node's name (from its certificate), also the name of its port on the bridge.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address on the test network.
    pub ip: Ipv4Addr,
    /// The address its node listens on.
    pub listen: SocketAddr,
    /// The address others reach it at: the listen address, or its relay's.
    pub advertise: SocketAddr,
    /// Its directory: certs/, data/, node.toml and logs.
    pub dir: PathBuf,
    /// The node's data directory (the local API socket is in it).
    pub data_dir: PathBuf,
    /// The node's log (stderr).
    pub log: PathBuf,
    node: Option<Child>,
    relay: Option<Child>,
}

/// A mesh of nodes on hosts made of network namespaces; see the module docs.
#[derive(Debug)]
pub struct Hosts {
    /// The switch namespace, holding the bridge.
    switch: String,
    /// Every namespace made so far, deleted on drop in reverse order.
    namespaces: Vec<String>,
    /// Hosts by node name.
    hosts: BTreeMap<String, Host>,
    /// The mesh CA directory.
    ca_dir: PathBuf,
    dir: tempfile::TempDir,
}

impl Hosts {
    /// Makes the namespaces and deploys one node per host by the operator's procedure
    /// ([`Hosts::deploy`]); returns once every node listens.
    pub fn new(deployment: &Deployment) -> anyhow::Result<Self> {
        let tag = format!("pmh-{}-{}", std::process::id(), next_sequence());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir()?;
        let mut hosts = Hosts {
            switch: format!("{tag}-sw"),
            namespaces: Vec::new(),
            hosts: BTreeMap::new(),
            ca_dir: dir.path().join("ca"),
            dir,
        };
        hosts.wire(&tag, deployment)?;
        hosts.deploy(deployment)?;
        Ok(hosts)
    }

    /// Builds the switch and one namespace per host, each with its veth pair on the bridge and
    /// its address. A failure here is returned as it is: every step was checked beforehand by
    /// [`unavailable`], so it means the namespace setup itself is broken.
    fn wire(&mut self, tag: &str, deployment: &Deployment) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=254).contains(&deployment.hosts),
            "a /24 holds 1 to 254 hosts"
        );
        let switch = self.switch.clone();
        self.add_namespace(&switch)?;
        ip(&["-n", &switch, "link", "set", "lo", "up"])?;
        ip(&["-n", &switch, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", BRIDGE, "up"])?;
        for i in 1..=deployment.hosts {
            let name = format!("n{i}");
            let netns = format!("{tag}-{name}");
            let ip_addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], i);
            self.add_namespace(&netns)?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            // Created from inside the host's namespace with its peer sent straight to the
            // switch's, so the root namespace never holds either end.
            ip(&[
                "-n", &netns, "link", "add", HOST_LINK, "type", "veth", "peer", "name", &name,
                "netns", &switch,
            ])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{ip_addr}/24"),
                "dev",
                HOST_LINK,
            ])?;
            ip(&["-n", &netns, "link", "set", HOST_LINK, "up"])?;
            ip(&["-n", &switch, "link", "set", &name, "master", BRIDGE])?;
            ip(&["-n", &switch, "link", "set", &name, "up"])?;
            let listen = SocketAddr::V4(SocketAddrV4::new(ip_addr, NODE_PORT));
            let advertise = match deployment.relays {
                Some(_) => SocketAddr::V4(SocketAddrV4::new(ip_addr, RELAY_PORT)),
                None => listen,
            };
            let dir = self.dir.path().join(&name);
            self.hosts.insert(
                name.clone(),
                Host {
                    data_dir: dir.join("data"),
                    log: dir.join("node.log"),
                    dir,
                    name,
                    netns,
                    ip: ip_addr,
                    listen,
                    advertise,
                    node: None,
                    relay: None,
                },
            );
        }
        Ok(())
    }

    fn add_namespace(&mut self, netns: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", netns])?;
        self.namespaces.push(netns.to_owned());
        Ok(())
    }

    /// The operator's procedure, as docs/operations.md gives it, for every host in turn:
    ///
    /// 1. once, on the machine that keeps the CA: `podmesh certs init --mesh <mesh> --ca-dir <ca>`;
    /// 2. per host, there too: `podmesh certs issue <node> --ca-dir <ca> --out <host>/certs
    ///    --san <host ip>`, then the certs directory goes to the host;
    /// 3. on the host: a `<host>/node.toml` ([`node_toml`]) with its certificates, data
    ///    directory, listen and advertised address, seeds (the first host's advertised address,
    ///    for every other host) and preset;
    /// 4. on the host: `podmesh node run --config <host>/node.toml`, here under
    ///    `ip netns exec <host netns>`, and wait for its "listening on" line.
    ///
    /// When relays are asked for, each host's `podmesh-relay` starts before its node.
    fn deploy(&mut self, deployment: &Deployment) -> anyhow::Result<()> {
        let ca_dir = self.ca_dir.clone();
        run_podmesh(&[
            "certs",
            "init",
            "--mesh",
            &deployment.mesh,
            "--ca-dir",
            path(&ca_dir),
        ])?;
        let seed = self
            .hosts
            .values()
            .next()
            .map(|first| first.advertise)
            .context("no hosts")?;
        for host in self.hosts.values_mut() {
            let certs_dir = host.dir.join("certs");
            run_podmesh(&[
                "certs",
                "issue",
                &host.name,
                "--ca-dir",
                path(&ca_dir),
                "--out",
                path(&certs_dir),
                "--san",
                &host.ip.to_string(),
            ])?;
            let join: Vec<SocketAddr> = if host.advertise == seed {
                Vec::new()
            } else {
                vec![seed]
            };
            let config = host.dir.join("node.toml");
            let toml = node_toml(
                &certs_dir,
                &host.data_dir,
                host.listen,
                host.advertise,
                &join,
                deployment.preset,
            );
            std::fs::write(&config, toml)
                .with_context(|| format!("writing {}", config.display()))?;

            if let Some(relays) = &deployment.relays {
                let mut relay = Command::new("ip")
                    .args(["netns", "exec", &host.netns])
                    .arg(&relays.bin)
                    .args([
                        host.advertise.to_string(),
                        host.listen.to_string(),
                        relays.delay.as_millis().to_string(),
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(std::fs::File::create(host.dir.join("relay.log"))?)
                    .spawn()
                    .context("spawning podmesh-relay")?;
                let bound = podmesh::daemon::wait_until_listening(&mut relay, START_TIMEOUT)
                    .with_context(|| format!("the relay of {}", host.name))?;
                host.relay = Some(relay);
                anyhow::ensure!(
                    bound == host.advertise,
                    "the relay of {} bound {bound}",
                    host.name
                );
            }

            let mut node = Command::new("ip")
                .args(["netns", "exec", &host.netns])
                .arg(podmesh_bin())
                .args(["node", "run", "--config", path(&config)])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&host.log)?)
                .spawn()
                .context("spawning podmesh node run")?;
            let bound = podmesh::daemon::wait_until_listening(&mut node, START_TIMEOUT)
                .with_context(|| {
                    format!(
                        "node {}: {}",
                        host.name,
                        std::fs::read_to_string(&host.log).unwrap_or_default()
                    )
                })?;
            host.node = Some(node);
            anyhow::ensure!(
                bound == host.listen,
                "node {} bound {bound}, not {}",
                host.name,
                host.listen
            );
        }
        Ok(())
    }

    /// The host whose node is `name`.
    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts
            .get(name)
            .with_context(|| format!("no host {name}"))
    }

    /// Node names, in order.
    pub fn names(&self) -> Vec<String> {
        self.hosts.keys().cloned().collect()
    }

    /// Runs a client command on host `name` (in its namespace) with `--data-dir` and `--json`.
    pub fn cli_json(&self, name: &str, args: &[&str]) -> anyhow::Result<Value> {
        let host = self.host(name)?;
        let out = host.podmesh(args)?;
        ensure_success(&out, &args.join(" "))?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Calls the local API of `name` (`podmesh api` on its host); returns the reply data, or
    /// the error's `(code, message)`.
    pub fn api(
        &self,
        name: &str,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Result<Value, (String, String)>> {
        let host = self.host(name)?;
        let params = params.to_string();
        let out = host.podmesh(&["api", method, &params])?;
        crate::api_reply(&out, method)
    }

    /// `name`'s view of the members: name -> (state, advertised address).
    pub fn members(&self, name: &str) -> anyhow::Result<BTreeMap<String, (String, String)>> {
        let value = self.cli_json(name, &["members"])?;
        let mut out = BTreeMap::new();
        for m in value["members"].as_array().context("members array")? {
            out.insert(
                m["name"].as_str().context("name")?.to_owned(),
                (
                    m["state"].as_str().context("state")?.to_owned(),
                    m["address"].as_str().context("address")?.to_owned(),
                ),
            );
        }
        Ok(out)
    }

    /// Drops `percent` of the UDP packets for podmesh's ports that arrive at `name`'s host over
    /// its link, with an nftables rule in the host's namespace (replacing an earlier one).
    /// Packets between the relay and the node on the same host do not cross the link and are
    /// never dropped.
    pub fn set_loss(&self, name: &str, percent: u8) -> anyhow::Result<()> {
        anyhow::ensure!(percent <= 100, "loss is a percentage");
        let host = self.host(name)?;
        let _ = host.nft_script(&format!("delete table inet {LOSS_TABLE}\n"));
        host.nft_script(&format!(
            "table inet {LOSS_TABLE} {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname \"{HOST_LINK}\" udp dport {{ {NODE_PORT}, {RELAY_PORT} }} \
             numgen random mod 100 < {percent} counter drop\n\
             \t}}\n\
             }}\n"
        ))
    }

    /// Removes `name`'s loss rule.
    pub fn clear_loss(&self, name: &str) -> anyhow::Result<()> {
        self.host(name)?
            .nft_script(&format!("delete table inet {LOSS_TABLE}\n"))
    }

    /// Packets `name`'s loss rule has dropped so far (its nftables counter).
    pub fn dropped(&self, name: &str) -> anyhow::Result<u64> {
        let host = self.host(name)?;
        let out = run(Command::new("ip").args([
            "netns",
            "exec",
            &host.netns,
            "nft",
            "list",
            "chain",
            "inet",
            LOSS_TABLE,
            "input",
        ]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let packets = text
            .split_whitespace()
            .skip_while(|word| *word != "packets")
            .nth(1)
            .with_context(|| format!("no counter in {text}"))?;
        Ok(packets.parse()?)
    }

    /// Cuts `name`'s host off the network: its port on the bridge goes down, as if its cable
    /// were pulled at the switch. The host's own interface and address stay as they are.
    pub fn cut(&self, name: &str) -> anyhow::Result<()> {
        let host = self.host(name)?;
        ip(&["-n", &self.switch, "link", "set", &host.name, "down"])
    }

    /// Plugs `name`'s host back in.
    pub fn heal(&self, name: &str) -> anyhow::Result<()> {
        let host = self.host(name)?;
        ip(&["-n", &self.switch, "link", "set", &host.name, "up"])
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for host in self.hosts.values() {
            all.push_str(&format!("--- {} ({})\n", host.name, host.log.display()));
            all.push_str(&std::fs::read_to_string(&host.log).unwrap_or_default());
        }
        all
    }
}

impl Host {
    /// Runs `podmesh <args> --data-dir <data> --json` in this host's namespace.
    fn podmesh(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(podmesh_bin())
            .args(args)
            .args(["--data-dir", path(&self.data_dir), "--json"])
            .stdin(Stdio::null())
            .output()
            .context("running podmesh")
    }

    /// Feeds `script` to `nft -f -` in this host's namespace.
    fn nft_script(&self, script: &str) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        child
            .stdin
            .take()
            .context("nft's stdin is piped")?
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft -f - in {} failed ({}): {}\n{script}",
                self.netns,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in self.hosts.values_mut() {
            for mut child in [host.node.take(), host.relay.take()].into_iter().flatten() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Deleting a namespace destroys the veth ends in it, and with them their peers.
        for netns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", netns])
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// A host's node.toml: every setting the host needs, nothing left to flags.
pub fn node_toml(
    certs_dir: &Path,
    data_dir: &Path,
    listen: SocketAddr,
    advertise: SocketAddr,
    join: &[SocketAddr],
    preset: Preset,
) -> String {
    let join = join
        .iter()
        .map(|seed| format!("\"{seed}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let preset = match preset {
        Preset::Lan => "lan",
        Preset::Wan => "wan",
    };
    format!(
        "certs_dir = {}\n\
         data_dir = {}\n\
         listen = \"{listen}\"\n\
         advertise = \"{advertise}\"\n\
         join = [{join}]\n\
         metrics_listen = \"127.0.0.1:9946\"\n\
         preset = \"{preset}\"\n\
         blocklist = []\n",
        toml_string(certs_dir),
        toml_string(data_dir),
    )
}

/// A path as a TOML basic string.
fn toml_string(p: &Path) -> String {
    format!("\"{}\"", path(p).replace('\\', "\\\\").replace('"', "\\\""))
}

fn next_sequence() -> u32 {
    SEQUENCE.fetch_add(1, Ordering::Relaxed)
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // "Uid:" real, effective, saved, filesystem.
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Runs `ip <args>` and fails with its stderr when it does.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args)).map(drop)
}

fn run_podmesh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(podmesh_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running podmesh")?;
    ensure_success(&out, &args.join(" "))
}

/// Runs `command` to completion; fails with its stderr unless it exits 0. Only `ip` and `nft`
/// run through here: they make system calls and return, they never wait on the network.
fn run(command: &mut Command) -> anyhow::Result<Output> {
    let shown = format!("{command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
