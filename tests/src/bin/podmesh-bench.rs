//! `podmesh-bench`: the DESIGN section 9 budgets, measured on this machine.
//!
//! Every figure is compared with a baseline measured in the same run, because these machines
//! are shared and noisy: the real stack on loopback against raw quinn with the same mutual TLS,
//! and the simulated membership against foca under the same network and faults. Each
//! measurement is repeated `--runs` times; the summary gives the median, min and max of the
//! runs. Results go to `<out>/bench.json` and `<out>/bench.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use podmesh::api::ErrorCode;
use podmesh::client::{Client, socket_path};
use podmesh::store::RedbStore;
use podmesh_certs::{
    CaValidity, ClaimKeys, MeshCa, MeshName, MeshTls, NodeCertOptions, NodeIdentity, NodeName,
    ServerTarget, verify_claim,
};
use podmesh_mesh::{HashAuthority, Signatures as _, Store as _, Table, WriteBatch, claim};
use podmesh_sim::engine::Sim;
use podmesh_sim::report::Report;
use podmesh_sim::scenario::Scenario;
use podmesh_tests::{Cluster, use_podmesh_bin, wait_for};
use serde_json::{Value, json};

/// Benchmarks of the real stack and of the simulator, against baselines of the same run.
#[derive(Debug, Parser)]
#[command(name = "podmesh-bench")]
struct Args {
    /// Repetitions of every measurement.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Operations per run of each real-stack measurement.
    #[arg(long, default_value_t = 200)]
    ops: usize,
    /// Where bench.json and bench.md go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The release `podmesh` binary to run (default: build it with cargo).
    #[arg(long)]
    podmesh_bin: Option<PathBuf>,
    /// Node processes for the convergence and memory measurement.
    #[arg(long, default_value_t = 50)]
    processes: usize,
    /// Skip the real-stack benchmarks.
    #[arg(long)]
    skip_real: bool,
    /// Skip the simulator benchmarks.
    #[arg(long)]
    skip_sim: bool,
    /// Repetitions of each simulator measurement (seeds 1..=N); 1,000-node runs take minutes.
    #[arg(long, default_value_t = 3)]
    sim_runs: usize,
    /// Simulated mesh sizes for the steady-state and speed figures.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    sim_nodes: Vec<usize>,
}

/// Median, min and max of a set of runs.
#[derive(Debug, Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Stats {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Stats {
            median: v.get(v.len() / 2).copied().unwrap_or(f64::NAN),
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn json(self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }

    fn cell(self, digits: usize) -> String {
        if !self.median.is_finite() {
            return "never (in the run)".to_owned();
        }
        format!(
            "{:.d$} ({:.d$}-{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }

    /// The cell with its unit, which a "never" goes without.
    fn cell_in(self, digits: usize, unit: &str) -> String {
        if self.median.is_finite() {
            format!("{} {unit}", self.cell(digits))
        } else {
            self.cell(digits)
        }
    }
}

/// One row of the summary.
#[derive(Debug)]
struct Row {
    what: String,
    podmesh: Stats,
    baseline_name: String,
    baseline: Option<Stats>,
    /// podmesh / baseline per run.
    ratio: Option<Stats>,
    unit: String,
    budget: Option<String>,
    met: Option<bool>,
    /// For a missed budget: the gap and its measured cause.
    note: Option<String>,
}

impl Row {
    fn json(&self) -> Value {
        json!({
            "what": self.what,
            "unit": self.unit,
            "podmesh": self.podmesh.json(),
            "baseline": self.baseline_name,
            "baseline_figures": self.baseline.map(Stats::json),
            "ratio": self.ratio.map(Stats::json),
            "budget": self.budget,
            "met": self.met,
            "note": self.note,
        })
    }
}

/// podmesh / baseline per run; runs where either is zero or never happened have no ratio.
fn ratios(a: &[f64], b: &[f64]) -> Stats {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() && y.is_finite() && **y != 0.0)
        .map(|(x, y)| x / y)
        .collect();
    Stats::of(&r)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podmesh-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.runs >= 1 && args.ops >= 1 && args.sim_runs >= 1,
        "--runs, --ops and --sim-runs must be at least 1"
    );
    ensure!(
        !(args.skip_real && args.skip_sim),
        "--skip-real and --skip-sim together leave nothing to measure"
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    if !args.skip_real {
        let bin = match &args.podmesh_bin {
            Some(bin) => bin.clone(),
            None => build_release_binary()?,
        };
        use_podmesh_bin(bin);
        rows.extend(real_stack(args)?);
        rows.extend(claim_costs(args)?);
    }
    if !args.skip_sim {
        rows.extend(simulator(args)?);
    }
    let machine = machine();
    let report = json!({
        "machine": machine,
        "runs": args.runs,
        "ops_per_run": args.ops,
        "wall_s": started.elapsed().as_secs_f64(),
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    std::fs::write(
        args.out.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = markdown(&machine, args, &rows, started.elapsed());
    std::fs::write(args.out.join("bench.md"), &md)?;
    print!("{md}");
    println!(
        "\nwritten: {} and {}",
        args.out.join("bench.json").display(),
        args.out.join("bench.md").display()
    );
    Ok(())
}

fn build_release_binary() -> anyhow::Result<PathBuf> {
    eprintln!("building the release podmesh binary...");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "podmesh", "--bin", "podmesh"])
        .stdin(Stdio::null())
        .status()
        .context("running cargo")?;
    ensure!(status.success(), "building the podmesh binary failed");
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the bench binary's directory")?;
    Ok(dir.join("podmesh"))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0.0, |kb| kb as f64 / 1024.0 / 1024.0);
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "memory_gib": (memory * 10.0).round() / 10.0,
        "kernel": kernel,
    })
}

// ---- the real stack --------------------------------------------------------------------

/// Two mTLS endpoints of one throwaway mesh, for the raw quinn baselines.
struct RawQuinn {
    server: quinn::Endpoint,
    client: quinn::Endpoint,
    server_name: String,
    _dir: tempfile::TempDir,
}

impl RawQuinn {
    fn new() -> anyhow::Result<RawQuinn> {
        let dir = tempfile::tempdir()?;
        let ca = MeshCa::create(MeshName::new("bench")?, CaValidity::default())?;
        let mut tls = Vec::new();
        for name in ["s", "c"] {
            let node_dir = dir.path().join(name);
            ca.issue(&NodeName::new(name)?, &NodeCertOptions::default())?
                .write(&node_dir, false)?;
            let identity = NodeIdentity::load(&node_dir)?;
            tls.push(MeshTls::new(&identity, Default::default())?);
        }
        let server = quinn::Endpoint::server(tls[0].quinn_server()?, "127.0.0.1:0".parse()?)?;
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        client.set_default_client_config(tls[1].quinn_client()?);
        let server_name = tls[1].server_name(&ServerTarget::Node(NodeName::new("s")?));
        Ok(RawQuinn {
            server,
            client,
            server_name,
            _dir: dir,
        })
    }

    /// Accepts connections and echoes every bi stream, until the endpoint closes.
    fn serve_echo(&self) {
        let server = self.server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            if let Ok(data) = recv.read_to_end(1 << 20).await {
                                let _ = send.write_all(&data).await;
                                let _ = send.finish();
                            }
                        });
                    }
                });
            }
        });
    }

    async fn connect(&self) -> anyhow::Result<quinn::Connection> {
        let addr = self.server.local_addr()?;
        Ok(self.client.connect(addr, &self.server_name)?.await?)
    }
}

async fn echo(conn: &quinn::Connection, body: &[u8]) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(body).await?;
    send.finish()?;
    let back = recv.read_to_end(1 << 20).await?;
    ensure!(back.len() == body.len(), "short echo");
    Ok(())
}

/// A 64-byte message body, the size of a short notification.
const BODY: &str = "benchmark message, sixty-four bytes long, padded to that size ok.";

/// A message record of about 200 bytes and its dedupe key, as a receiver stores them.
fn message_records(seq: u64) -> [(Vec<u8>, Vec<u8>); 2] {
    let mut key = b"mb\0".to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    let mut record = BODY.as_bytes().to_vec();
    record.extend_from_slice(&[0u8; 136]);
    let dedupe = format!("dn1-1-{seq}").into_bytes();
    [(key, record), (dedupe, seq.to_be_bytes().to_vec())]
}

/// The physical floor of one delivery: one fsynced redb transaction the size and shape of a
/// stored message; and the node's own store ([`RedbStore`]: a synced append to its log) taking
/// the same.
struct Disk {
    redb: redb::Database,
    store: RedbStore,
    seq: u64,
    _dirs: [tempfile::TempDir; 2],
}

const FLOOR_TABLE: redb::TableDefinition<'static, &'static [u8], &'static [u8]> =
    redb::TableDefinition::new("inboxes");

impl Disk {
    fn new() -> anyhow::Result<Disk> {
        let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
        Ok(Disk {
            redb: redb::Database::create(dirs[0].path().join("floor.redb"))?,
            store: RedbStore::open(dirs[1].path())?,
            seq: 0,
            _dirs: dirs,
        })
    }

    /// One redb write transaction of a message, committed with immediate durability.
    fn redb_commit(&mut self) -> anyhow::Result<()> {
        self.seq += 1;
        let txn = self.redb.begin_write()?;
        {
            let mut table = txn.open_table(FLOOR_TABLE)?;
            for (key, value) in message_records(self.seq) {
                table.insert(key.as_slice(), value.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The same message written through the node's store.
    fn store_write(&mut self) -> anyhow::Result<()> {
        self.seq += 1;
        let mut batch = WriteBatch::new();
        for (key, value) in message_records(self.seq) {
            batch.put(Table::Inboxes, key, value);
        }
        self.store.write(batch)?;
        Ok(())
    }
}

fn real_stack(args: &Args) -> anyhow::Result<Vec<Row>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let raw = runtime.block_on(async { RawQuinn::new() })?;
    runtime.block_on(async { raw.serve_echo() });

    eprintln!("starting two nodes...");
    let mut cluster = Cluster::new("bench")?;
    let seed = cluster.start("n1", &[])?;
    cluster.start("n2", &[seed])?;
    for (node, pod) in [("n1", "a"), ("n2", "b")] {
        cluster
            .api(node, "pod_create", json!({ "name": pod }))?
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let known = wait_for(Duration::from_secs(30), || {
        let dir = cluster.api("n1", "directory", json!({})).ok()?.ok()?;
        (dir["pods"].as_array()?.len() == 2).then_some(())
    });
    ensure!(known.is_some(), "the two Pods never saw each other");
    let n1 = socket_path(&cluster.node("n1").data_dir.clone());
    let n2 = socket_path(&cluster.node("n2").data_dir.clone());

    let mut disk = Disk::new()?;
    let mut setup = Vec::new();
    let mut handshake = Vec::new();
    let mut echo_rtt = Vec::new();
    let mut commit_time = Vec::new();
    let mut store_time = Vec::new();
    let mut batch_size = Vec::new();
    let mut echo_commit = Vec::new();
    let mut api_rtt = Vec::new();
    let mut send_rtt = Vec::new();
    let mut raw_rate = Vec::new();
    let mut send_rate = Vec::new();
    for run in 0..args.runs {
        eprintln!("real stack, run {} of {}", run + 1, args.runs);
        let r: anyhow::Result<()> = runtime.block_on(async {
            // Raw quinn: connection setup, and echo round trips on an open connection.
            let mut t = Vec::new();
            for _ in 0..args.ops {
                let start = Instant::now();
                let conn = raw.connect().await?;
                t.push(ms(start.elapsed()));
                conn.close(0u32.into(), b"");
            }
            setup.push(median(&mut t));
            let conn = raw.connect().await?;
            let mut t = Vec::new();
            for _ in 0..args.ops {
                let start = Instant::now();
                echo(&conn, BODY.as_bytes()).await?;
                t.push(ms(start.elapsed()));
            }
            echo_rtt.push(median(&mut t));
            // The disk alone, then an echo followed by the disk: delivery's physical floor.
            let mut t = Vec::new();
            for _ in 0..args.ops {
                let start = Instant::now();
                disk.redb_commit()?;
                t.push(ms(start.elapsed()));
            }
            commit_time.push(median(&mut t));
            let mut t = Vec::new();
            for _ in 0..args.ops {
                let start = Instant::now();
                disk.store_write()?;
                t.push(ms(start.elapsed()));
            }
            store_time.push(median(&mut t));
            let mut t = Vec::new();
            for _ in 0..args.ops {
                let start = Instant::now();
                echo(&conn, BODY.as_bytes()).await?;
                disk.redb_commit()?;
                t.push(ms(start.elapsed()));
            }
            echo_commit.push(median(&mut t));
            raw_rate.push(raw_throughput(&conn, args.ops * 4).await?);
            conn.close(0u32.into(), b"");

            // podmesh through the local API, as a program attached to its Pod uses it.
            let mut client = Client::connect(&n1).await?;
            let mut t = Vec::new();
            for _ in 0..args.ops {
                let start = Instant::now();
                client.call("node_info", json!({})).await?;
                t.push(ms(start.elapsed()));
            }
            api_rtt.push(median(&mut t));
            let mut t = Vec::new();
            let peer = json!({ "pod": "a", "name": "b@n2" });
            for _ in 0..args.ops {
                // The previous handshake's Commit may still be on its way to the participant,
                // which answers `busy` until then: wait for it outside the timed part.
                settle(&mut client, "unregister_peer", &peer).await?;
                t.push(ms(settle(&mut client, "register_peer", &peer).await?));
            }
            settle(&mut client, "unregister_peer", &peer).await?;
            handshake.push(median(&mut t));
            settle(&mut client, "register_peer", &peer).await?;
            let mut drain = Client::connect(&n2).await?;
            let mut t = Vec::new();
            let message = json!({ "pod": "a", "name": "b@n2", "message": BODY });
            for i in 0..args.ops {
                let start = Instant::now();
                client.call("send_to_peer", message.clone()).await?;
                t.push(ms(start.elapsed()));
                if i % 200 == 199 {
                    drain
                        .call("inbox", json!({ "pod": "b", "drain": true }))
                        .await?;
                }
            }
            drain
                .call("inbox", json!({ "pod": "b", "drain": true }))
                .await?;
            send_rtt.push(median(&mut t));
            let before = batches(&n2).await?;
            send_rate.push(pod_throughput(&n1, &n2, args.ops * 4).await?);
            let after = batches(&n2).await?;
            batch_size.push((after.0 - before.0) / (after.1 - before.1).max(1.0));
            settle(&mut client, "unregister_peer", &peer).await?;
            Ok(())
        });
        r?;
    }
    let (converge, per_member) = processes(args)?;
    raw.server.close(0u32.into(), b"");
    drop(cluster);

    let lat = |v: &Vec<f64>| Stats::of(v);
    let mut rows = vec![
        Row {
            what: "peer handshake (register_peer through the local API), p50".into(),
            podmesh: lat(&handshake),
            baseline_name: "raw quinn mTLS connection setup, p50".into(),
            baseline: Some(lat(&setup)),
            ratio: Some(ratios(&handshake, &setup)),
            unit: "ms".into(),
            budget: Some("<= 5 ms".into()),
            met: Some(lat(&handshake).median <= 5.0),
            note: None,
        },
        Row {
            what: "message delivery (send_to_peer until stored in the peer's inbox), p50".into(),
            podmesh: lat(&send_rtt),
            baseline_name: "raw quinn bi-stream echo on an open connection, p50".into(),
            baseline: Some(lat(&echo_rtt)),
            ratio: Some(ratios(&send_rtt, &echo_rtt)),
            unit: "ms".into(),
            budget: Some("<= 2 ms".into()),
            met: Some(lat(&send_rtt).median <= 2.0),
            note: None,
        },
        Row {
            what: "message delivery, p50, against its physical floor".into(),
            podmesh: lat(&send_rtt),
            baseline_name:
                "raw quinn echo, then one fsynced redb transaction of a message's size, p50".into(),
            baseline: Some(lat(&echo_commit)),
            ratio: Some(ratios(&send_rtt, &echo_commit)),
            unit: "ms".into(),
            budget: Some("<= 1.5x the floor".into()),
            met: Some(ratios(&send_rtt, &echo_commit).median <= 1.5),
            note: None,
        },
        Row {
            what: "one durable write of a message's size through the node's store (a synced append to its log), p50".into(),
            podmesh: lat(&store_time),
            baseline_name: "one fsynced redb transaction of the same size, p50".into(),
            baseline: Some(lat(&commit_time)),
            ratio: Some(ratios(&store_time, &commit_time)),
            unit: "ms".into(),
            budget: None,
            met: None,
            note: None,
        },
        Row {
            what: "one fsynced redb transaction of a message's size, p50".into(),
            podmesh: lat(&commit_time),
            baseline_name: "raw quinn bi-stream echo, p50".into(),
            baseline: Some(lat(&echo_rtt)),
            ratio: Some(ratios(&commit_time, &echo_rtt)),
            unit: "ms".into(),
            budget: None,
            met: None,
            note: None,
        },
        Row {
            what: "local API round trip (node_info), p50: part of both figures above".into(),
            podmesh: lat(&api_rtt),
            baseline_name: "raw quinn bi-stream echo, p50".into(),
            baseline: Some(lat(&echo_rtt)),
            ratio: Some(ratios(&api_rtt, &echo_rtt)),
            unit: "ms".into(),
            budget: None,
            met: None,
            note: None,
        },
        Row {
            what: "messages per second between two Pods (8 senders)".into(),
            podmesh: lat(&send_rate),
            baseline_name: "raw quinn echo streams per second (8 concurrent)".into(),
            baseline: Some(lat(&raw_rate)),
            ratio: Some(ratios(&send_rate, &raw_rate)),
            unit: "msg/s".into(),
            budget: Some(">= 0.25x raw quinn".into()),
            met: Some(ratios(&send_rate, &raw_rate).median >= 0.25),
            note: None,
        },
    ];
    rows.push(Row {
        what: "messages per group commit on the receiver during the 8-sender run".into(),
        podmesh: Stats::of(&batch_size),
        baseline_name: String::new(),
        baseline: None,
        ratio: None,
        unit: "msg".into(),
        budget: None,
        met: None,
        note: None,
    });
    rows.push(Row {
        what: format!(
            "{} node processes converge (after the last one starts)",
            args.processes
        ),
        podmesh: Stats::of(&[converge]),
        baseline_name: String::new(),
        baseline: None,
        ratio: None,
        unit: "s".into(),
        budget: Some("<= 5 s".into()),
        met: Some(converge <= 5.0),
        note: None,
    });
    rows.push(Row {
        what: "node memory per known member (resident set growth)".into(),
        podmesh: Stats::of(&[per_member]),
        baseline_name: String::new(),
        baseline: None,
        ratio: None,
        unit: "KiB".into(),
        budget: None,
        met: None,
        note: None,
    });
    Ok(rows)
}

/// Claims signed or checked per timed run of [`claim_costs`].
const CLAIMS_PER_RUN: usize = 2_000;

/// Certificates admitted per timed run of [`claim_costs`].
const ADMISSIONS_PER_RUN: usize = 200;

/// What signed claims cost a node (DESIGN section 2): signing one of its own claims, checking
/// another node's, and admitting a certificate once per member, with the node's real keys
/// (ECDSA P-256 through ring) next to the simulator's hash scheme, per claim.
fn claim_costs(args: &Args) -> anyhow::Result<Vec<Row>> {
    let ca = MeshCa::create(MeshName::new("bench")?, CaValidity::default())?;
    let issue = |name: &str| -> anyhow::Result<NodeIdentity> {
        Ok(ca
            .issue(&NodeName::new(name)?, &NodeCertOptions::default())?
            .identity()?)
    };
    let (n1, n2) = (issue("n1")?, issue("n2")?);
    let tls = MeshTls::new(&n1, Default::default())?;
    let signer = ClaimKeys::new(&n2, tls.clone())?;
    let checker = ClaimKeys::new(&n1, tls)?;
    let certificate = signer.certificate();
    let key = checker
        .admit("n2", &certificate)
        .context("n1 does not admit n2's certificate")?;
    let name: podmesh_mesh::NodeName = "n2".parse()?;
    let claims: Vec<Vec<u8>> = (0..CLAIMS_PER_RUN as u64)
        .map(|i| claim::alive(&name, "127.0.0.1:7946".parse().expect("an address"), i))
        .collect();
    let authority = HashAuthority::new(1, 440);
    let mut hash = authority.signer(&name);
    let hash_key = hash
        .admit(&name, &hash.certificate())
        .context("the hash scheme does not admit its own certificate")?;
    let per_claim = |started: Instant, n: usize| started.elapsed().as_secs_f64() * 1e6 / n as f64;
    let (mut sign, mut verify, mut admit, mut hash_sign, mut hash_verify) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let started = Instant::now();
        let signatures: Vec<_> = claims.iter().map(|c| signer.sign(c)).collect();
        sign.push(per_claim(started, claims.len()));
        let started = Instant::now();
        let valid = claims
            .iter()
            .zip(&signatures)
            .filter(|(c, s)| verify_claim(&key, c, s))
            .count();
        verify.push(per_claim(started, claims.len()));
        ensure!(
            valid == claims.len(),
            "{valid} of {} signatures verified",
            claims.len()
        );
        let started = Instant::now();
        for _ in 0..ADMISSIONS_PER_RUN {
            checker
                .admit("n2", &certificate)
                .context("admission failed")?;
        }
        admit.push(per_claim(started, ADMISSIONS_PER_RUN));
        let started = Instant::now();
        let signatures: Vec<_> = claims.iter().map(|c| hash.sign(c)).collect();
        hash_sign.push(per_claim(started, claims.len()));
        let started = Instant::now();
        let valid = claims
            .iter()
            .zip(&signatures)
            .filter(|(c, s)| hash.verify(&hash_key.key, c, s))
            .count();
        hash_verify.push(per_claim(started, claims.len()));
        ensure!(
            valid == claims.len(),
            "the hash scheme refused its own signatures"
        );
    }
    let row = |what: &str, real: &[f64], cheap: &[f64]| Row {
        what: what.to_owned(),
        podmesh: Stats::of(real),
        baseline_name: "the simulator's hash scheme, same claims".into(),
        baseline: Some(Stats::of(cheap)),
        ratio: Some(ratios(real, cheap)),
        unit: "µs".into(),
        budget: None,
        met: None,
        note: None,
    };
    Ok(vec![
        row(
            "signing one claim (ECDSA P-256, the node key)",
            &sign,
            &hash_sign,
        ),
        row("checking one claim's signature", &verify, &hash_verify),
        Row {
            what: "admitting a member's certificate (once per member: chain, usages, blocklist)"
                .into(),
            podmesh: Stats::of(&admit),
            baseline_name: String::new(),
            baseline: None,
            ratio: None,
            unit: "µs".into(),
            budget: None,
            met: None,
            note: None,
        },
    ])
}

/// Calls `method` until the node stops answering `busy` (the previous handshake on the pair
/// is still finishing on the other side), within a bound; returns how long the successful
/// call took.
async fn settle(client: &mut Client, method: &str, params: &Value) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let start = Instant::now();
        let reply = client.request(method, params.clone()).await?;
        match reply.as_error() {
            None => return Ok(start.elapsed()),
            Some(e) if e.code == ErrorCode::Busy && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Some(e) => bail!("{method}: {}", e.message),
        }
    }
}

/// Messages stored and group commits written by the node at `socket`, from `node_info`.
async fn batches(socket: &Path) -> anyhow::Result<(f64, f64)> {
    let info = Client::connect(socket)
        .await?
        .call("node_info", json!({}))
        .await?;
    let counter = |name: &str| info.data["counters"][name].as_f64().unwrap_or(0.0);
    Ok((counter("messages_delivered"), counter("delivery_batches")))
}

/// Concurrent senders for the throughput figures.
const SENDERS: usize = 8;

async fn raw_throughput(conn: &quinn::Connection, total: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..SENDERS {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..total / SENDERS {
                echo(&conn, BODY.as_bytes()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((total / SENDERS * SENDERS) as f64 / start.elapsed().as_secs_f64())
}

async fn pod_throughput(n1: &Path, n2: &Path, total: usize) -> anyhow::Result<f64> {
    let per = total / SENDERS;
    // One node's messages take at most its share of an inbox: keep the batch within it and
    // drain between batches.
    let share = podmesh_mesh::PeersConfig::default().inbox_share_per_node_max;
    let batch = (share / SENDERS).min(per).max(1);
    let mut drain = Client::connect(n2).await?;
    let mut clients = Vec::new();
    for _ in 0..SENDERS {
        clients.push(Client::connect(n1).await?);
    }
    let message = json!({ "pod": "a", "name": "b@n2", "message": BODY });
    let mut elapsed = Duration::ZERO;
    let mut sent = 0;
    while sent < per {
        let n = batch.min(per - sent);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for mut client in clients.drain(..) {
            let message = message.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..n {
                    client.call("send_to_peer", message.clone()).await?;
                }
                anyhow::Ok(client)
            }));
        }
        for t in tasks {
            clients.push(t.await??);
        }
        elapsed += start.elapsed();
        sent += n;
        drain
            .call("inbox", json!({ "pod": "b", "drain": true }))
            .await?;
    }
    Ok((sent * SENDERS) as f64 / elapsed.as_secs_f64())
}

fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// Starts `--processes` nodes: the time to a full roster everywhere after the last one is
/// listening, and the first node's memory growth per member.
fn processes(args: &Args) -> anyhow::Result<(f64, f64)> {
    let n = args.processes;
    ensure!(n >= 3, "--processes must be at least 3");
    eprintln!("starting {n} node processes...");
    let mut cluster = Cluster::new("bench")?;
    let seed = cluster.start("n1", &[])?;
    std::thread::sleep(Duration::from_secs(2));
    let pid = cluster.node("n1").pid().context("n1 runs")?;
    let alone = rss_kib(pid)?;
    for i in 2..=n {
        cluster.start(&format!("n{i}"), &[seed])?;
    }
    let started = Instant::now();
    let sockets: Vec<PathBuf> = (1..=n)
        .map(|i| socket_path(&cluster.node(&format!("n{i}")).data_dir.clone()))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let converged = runtime.block_on(async {
        let mut clients = Vec::new();
        for s in &sockets {
            clients.push(Client::connect(s).await?);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let mut all = true;
            for c in &mut clients {
                let reply = c.call("members", json!({})).await?;
                let alive = reply.data["members"]
                    .as_array()
                    .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
                if alive != n {
                    all = false;
                    break;
                }
            }
            if all {
                return anyhow::Ok(Some(started.elapsed().as_secs_f64()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(None)
    })?;
    let Some(converged) = converged else {
        bail!("{n} node processes did not converge within 60 s");
    };
    std::thread::sleep(Duration::from_secs(5));
    let full = rss_kib(pid)?;
    Ok((converged, (full - alone) / (n - 1) as f64))
}

// ---- the simulator -----------------------------------------------------------------------

fn scenario(dir: &Path, file: &str) -> anyhow::Result<Scenario> {
    Scenario::load(&dir.join(file))
}

fn sim_runs(scenario: &Scenario, runs: usize) -> anyhow::Result<Vec<Report>> {
    let mut out = Vec::new();
    for seed in 1..=runs as u64 {
        eprintln!("simulating {} seed {seed}...", scenario.name);
        let mut report = Sim::new(scenario.clone(), seed)?.run()?;
        let start = Instant::now();
        let foca = podmesh_sim::foca_sim::run(scenario, seed)?;
        report.foca = Some(podmesh_sim::report::FocaSummary {
            membership: foca.metrics,
            wall_s: start.elapsed().as_secs_f64(),
            events: foca.events,
        });
        out.push(report);
    }
    Ok(out)
}

/// A row comparing one membership figure of podmesh and foca over the same runs.
fn versus(
    what: &str,
    unit: &str,
    reports: &[Report],
    figure: impl Fn(&podmesh_sim::metrics::MembershipMetrics) -> Option<f64>,
    budget: Option<(&str, f64)>,
) -> Row {
    let ours: Vec<f64> = reports
        .iter()
        .map(|r| figure(&r.membership).unwrap_or(f64::INFINITY))
        .collect();
    let theirs: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.foca.as_ref())
        .map(|f| figure(&f.membership).unwrap_or(f64::INFINITY))
        .collect();
    let podmesh = Stats::of(&ours);
    Row {
        what: what.to_owned(),
        podmesh,
        baseline_name: "foca, same network, faults and seeds".into(),
        baseline: Some(Stats::of(&theirs)),
        ratio: Some(ratios(&ours, &theirs)),
        unit: unit.to_owned(),
        budget: budget.map(|(b, _)| b.to_owned()),
        met: budget.map(|(_, limit)| podmesh.max <= limit),
        note: None,
    }
}

fn simulator(args: &Args) -> anyhow::Result<Vec<Row>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("simulations")
        .join("scenarios");
    let runs = args.sim_runs;
    let mut rows = Vec::new();
    let mut speeds = Vec::new();
    for &n in &args.sim_nodes {
        let steady = scenario(&dir, "scale-1000.toml")?.with_nodes(n)?;
        let reports = sim_runs(&steady, runs)?;
        rows.push(versus(
            &format!("steady frames per node per second, N = {n}"),
            "frames/s",
            &reports,
            |m| Some(m.steady_msgs_per_node_s),
            Some(("<= 3", 3.0)),
        ));
        rows.push(versus(
            &format!("steady bytes per node per second, N = {n}"),
            "B/s",
            &reports,
            |m| Some(m.steady_bytes_per_node_s),
            Some(("<= 1024", 1024.0)),
        ));
        let events: Vec<f64> = reports.iter().map(|r| r.events_per_wall_s).collect();
        let speed: Vec<f64> = reports.iter().map(|r| r.sim_to_wall).collect();
        rows.push(Row {
            what: format!("simulator events per wall second, N = {n}"),
            podmesh: Stats::of(&events),
            baseline_name: String::new(),
            baseline: None,
            ratio: None,
            unit: "events/s".into(),
            budget: None,
            met: None,
            note: None,
        });
        rows.push(Row {
            what: format!("simulated seconds per wall second, N = {n}"),
            podmesh: Stats::of(&speed),
            baseline_name: String::new(),
            baseline: None,
            ratio: None,
            unit: "x".into(),
            budget: if n == 1000 {
                Some(">= 60 (1 simulated hour in <= 60 s)".into())
            } else {
                None
            },
            met: (n == 1000).then(|| Stats::of(&speed).min >= 60.0),
            note: None,
        });
        speeds.push((n, Stats::of(&speed)));
    }
    let join = sim_runs(&scenario(&dir, "join-burst.toml")?, runs)?;
    let join_wall: Vec<f64> = join.iter().map(|r| r.wall_s).collect();
    let peak = peak_rss_kib()?;
    rows.push(Row {
        what: "simulator peak memory per member view (peak resident set / N^2), N = 1,000".into(),
        podmesh: Stats::of(&[peak * 1024.0 / 1e6]),
        baseline_name: String::new(),
        baseline: None,
        ratio: None,
        unit: "B".into(),
        budget: Some("10,000 nodes fit at this rate".into()),
        met: Some(peak * 1024.0 / 1e6 * 1e8 < total_memory_bytes()),
        note: Some(format!(
            "every simulated node holds the whole membership, so memory grows with N^2: 10,000 nodes would need about {:.0} GiB at this rate, an upper bound because the piggyback queues are bounded per node (docs/simulations.md has a measured 10,000-node run)",
            peak * 1024.0 / 1e6 * 1e8 / (1u64 << 30) as f64
        )),
    });
    rows.push(versus(
        "full roster after a 1,000-node join burst through one seed",
        "s",
        &join,
        |m| m.full_roster_s,
        Some(("<= 10 s", 10.0)),
    ));
    for row in rows.iter_mut() {
        if row.met == Some(false) && row.what.starts_with("simulated seconds per wall second") {
            let steady = speeds
                .iter()
                .find(|(n, _)| *n == 1000)
                .map_or(f64::NAN, |(_, s)| s.median);
            row.note = Some(format!(
                "this is the rate of a 5-minute run that starts with 1,000 nodes joining ({steady:.1}x overall); a 1,000-node join burst alone takes {} s of wall time for its first 30 simulated seconds (every joiner's push/pull, and the gossip of 1,000 new members to 1,000 nodes: O(N^2) records), after which the steady state is much cheaper (`hour-1000.toml` measures the whole hour)",
                Stats::of(&join_wall).cell(0)
            ));
        }
    }
    let heal = sim_runs(&scenario(&dir, "partition-halves-30s.toml")?, runs)?;
    rows.push(versus(
        "converged after a 30 s half/half partition of 1,000 nodes heals",
        "s",
        &heal,
        |m| m.heal_converge_s,
        Some(("<= 15 s", 15.0)),
    ));
    let detect = sim_runs(&scenario(&dir, "crash-detect.toml")?, runs)?;
    let mut row = versus(
        "crash known dead by every live node, N = 100 (worst of 10 crashes)",
        "s",
        &detect,
        |m| m.detect_all_s,
        Some(("<= 11 s", 11.0)),
    );
    if row.met == Some(false) {
        let first: Vec<f64> = detect.iter().filter_map(|r| r.first_suspicion_s).collect();
        row.note = Some(format!(
            "the wait from a crash until any node first suspects it was up to {} s (median of runs): SWIM's probe targets are random, so no node may probe the crashed one for several periods; the bound leaves 3 periods for that and for dissemination, on top of the 8 s Lifeguard suspicion minimum",
            Stats::of(&first).cell(1)
        ));
    }
    rows.push(row);
    for file in ["loss-10.toml", "slow-node.toml"] {
        let s = scenario(&dir, file)?;
        let reports = sim_runs(&s, runs)?;
        rows.push(versus(
            &format!("healthy nodes declared dead in 1 h, {}", s.name),
            "count",
            &reports,
            |m| Some(m.healthy_declared_dead as f64),
            Some(("0", 0.0)),
        ));
    }
    Ok(rows)
}

/// The peak resident set of this process so far, in KiB.
fn peak_rss_kib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}

/// The machine's memory, in bytes.
fn total_memory_bytes() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb * 1024.0)
}

fn markdown(machine: &Value, args: &Args, rows: &[Row], wall: Duration) -> String {
    let mut s = String::new();
    s += "# podmesh benchmarks\n\n";
    let real = (!args.skip_real).then(|| {
        format!(
            "{} runs of each real-stack measurement ({} operations each)",
            args.runs, args.ops
        )
    });
    let sim = (!args.skip_sim).then(|| format!("{} runs of each simulation", args.sim_runs));
    let runs: Vec<String> = real.into_iter().chain(sim).collect();
    s += &format!(
        "Machine: {} ({} cores, {} GiB), Linux {}. {}; medians with (min-max) over the runs. Took {:.0} s.\n\n",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["memory_gib"],
        machine["kernel"].as_str().unwrap_or("?"),
        runs.join(", "),
        wall.as_secs_f64()
    );
    s += "| measurement | podmesh | baseline | ratio | budget |\n|---|---|---|---|---|\n";
    let mut notes = Vec::new();
    for r in rows {
        let digits = if r.podmesh.median.abs() >= 100.0 {
            0
        } else {
            2
        };
        let baseline = match &r.baseline {
            Some(b) => format!("{}: {}", r.baseline_name, b.cell_in(digits, &r.unit)),
            None => "-".to_owned(),
        };
        let ratio = r
            .ratio
            .filter(|x| !x.median.is_nan())
            .map_or_else(|| "-".to_owned(), |x| x.cell(2));
        let mut budget = match (&r.budget, r.met) {
            (Some(b), Some(true)) => format!("{b}: met"),
            (Some(b), Some(false)) => format!("{b}: **missed**"),
            _ => "-".to_owned(),
        };
        if let (Some(note), Some(false)) = (&r.note, r.met) {
            notes.push(format!("{}. {}: {note}.", notes.len() + 1, r.what));
            budget += &format!(" (gap {})", notes.len());
        }
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            r.what,
            r.podmesh.cell_in(digits, &r.unit),
            baseline,
            ratio,
            budget
        );
    }
    if !notes.is_empty() {
        s += "\nGaps and their measured causes:\n\n";
        for note in notes {
            s += &note;
            s += "\n";
        }
    }
    s
}
