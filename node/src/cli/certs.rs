//! `podmesh certs`: the mesh CA and node certificates.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use podmesh_certs::{
    CaValidity, CertInfo, DEFAULT_CA_DAYS, DEFAULT_NODE_DAYS, MeshCa, MeshName, NodeCertOptions,
    NodeName,
};

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a new mesh CA: writes ca.crt and ca.key (mode 0600) into --ca-dir.
    ///
    /// Keep the CA directory off the nodes: nodes only ever need ca.crt.
    Init(InitArgs),
    /// Issue a node certificate: writes ca.crt, node.crt and node.key (mode 0600) into --out.
    Issue(IssueArgs),
    /// Print a certificate file's subject, SANs, usages, validity, issuer and SHA-256 fingerprint.
    Show(ShowArgs),
    /// Check a node certificate against a CA bundle; exit 0 when valid, 1 with the reason if not.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Name of the mesh (a DNS label), bound into every node certificate.
    #[arg(long, value_parser = parse_mesh)]
    mesh: MeshName,
    /// Directory to write ca.crt and ca.key into (created if missing).
    #[arg(long)]
    ca_dir: PathBuf,
    /// Lifetime of the CA in days.
    #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
    days: u32,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// Name of the node (a DNS label); its identity becomes spiffe://<mesh>/node/<NODE>.
    #[arg(value_parser = parse_node)]
    node: NodeName,
    /// Directory holding the CA's ca.crt and ca.key.
    #[arg(long)]
    ca_dir: PathBuf,
    /// Directory to write ca.crt, node.crt and node.key into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Lifetime in days; never past the CA's own expiry.
    #[arg(long, default_value_t = DEFAULT_NODE_DAYS)]
    days: u32,
    /// Extra host name or IP address the node is reached at (repeatable).
    #[arg(long = "san", value_name = "HOST_OR_IP")]
    sans: Vec<String>,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// A PEM file with one or more certificates (node.crt, ca.crt).
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The CA bundle to trust (ca.crt).
    #[arg(long)]
    ca: PathBuf,
    /// The node certificate to check (node.crt).
    cert: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_mesh(s: &str) -> Result<MeshName, String> {
    s.parse().map_err(|e: podmesh_certs::Error| e.to_string())
}

fn parse_node(s: &str) -> Result<NodeName, String> {
    s.parse().map_err(|e: podmesh_certs::Error| e.to_string())
}

pub(crate) fn run(command: CertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        CertsCommand::Init(args) => init(args),
        CertsCommand::Issue(args) => issue(args),
        CertsCommand::Show(args) => show(args),
        CertsCommand::Verify(args) => verify(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.days > 0, "--days must be at least 1");
    let ca = MeshCa::create(args.mesh, CaValidity { days: args.days })?;
    ca.write(&args.ca_dir, args.force)?;
    println!(
        "created CA for mesh {} in {} (valid until {})",
        ca.mesh(),
        args.ca_dir.display(),
        ca.not_after().date()
    );
    Ok(ExitCode::SUCCESS)
}

fn issue(args: IssueArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.days > 0, "--days must be at least 1");
    let ca = MeshCa::load(&args.ca_dir)
        .with_context(|| format!("loading the CA from {}", args.ca_dir.display()))?;
    let options = NodeCertOptions {
        days: args.days,
        extra_sans: args.sans,
        valid_from: None,
    };
    let cert = ca.issue(&args.node, &options)?;
    cert.write(&args.out, args.force)?;
    println!(
        "issued {} ({}) into {}",
        cert.claim.uri(),
        cert.claim.dns_name(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let certs = podmesh_certs::read_certs(&args.file)?;
    let infos = certs
        .iter()
        .map(|der| CertInfo::parse(der))
        .collect::<Result<Vec<_>, _>>()?;
    if args.json {
        let list: Vec<_> = infos.iter().map(info_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        for (i, info) in infos.iter().enumerate() {
            if i > 0 {
                println!();
            }
            println!("{info}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn info_json(info: &CertInfo) -> serde_json::Value {
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    serde_json::json!({
        "subject": info.subject,
        "issuer": info.issuer,
        "serial": info.serial,
        "not_before": rfc3339(info.not_before),
        "not_after": rfc3339(info.not_after),
        "is_ca": info.is_ca,
        "uris": info.uris,
        "dns_names": info.dns_names,
        "ips": info.ips,
        "extended_key_usages": info.extended_key_usages,
        "key_usages": info.key_usages,
        "sha256": info.fingerprint.to_string(),
    })
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let bundle = podmesh_certs::read_certs(&args.ca)?;
    let certs = podmesh_certs::read_certs(&args.cert)?;
    let leaf = &certs[0]; // read_certs returns at least one certificate.
    let result = podmesh_certs::verify_node_certificate(&bundle, leaf, &BTreeSet::new());
    let (ok, text) = match &result {
        Ok(claim) => (
            true,
            format!("valid: node {} of mesh {}", claim.node, claim.mesh),
        ),
        Err(e) => (false, format!("invalid: {e}")),
    };
    if args.json {
        let value = match &result {
            Ok(claim) => serde_json::json!({
                "valid": true, "node": claim.node.as_str(), "mesh": claim.mesh.as_str(),
            }),
            Err(e) => serde_json::json!({ "valid": false, "reason": e.to_string() }),
        };
        println!("{value}");
    } else if ok {
        println!("{text}");
    } else {
        eprintln!("{text}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
