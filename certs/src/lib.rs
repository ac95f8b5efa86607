//! The podmesh certificate authority, node certificates and mutual-TLS configuration.
//!
//! Every podmesh node proves who it is with a certificate signed by its mesh's own CA:
//!
//! 1. [`MeshCa::create`] makes the CA (`CN=<mesh> mesh CA`, URI SAN `spiffe://<mesh>`), and
//!    [`MeshCa::issue`] signs node certificates carrying exactly one URI SAN
//!    `spiffe://<mesh>/node/<node>` (the identity) and one DNS SAN `<node>.<mesh>` (checked as SNI
//!    by rustls' stock verifier).
//! 2. [`NodeIdentity::load`] reads a node's `ca.crt` bundle, `node.crt` and `node.key`.
//! 3. [`MeshTls`] builds rustls and quinn configurations for mutual TLS 1.3 with ALPN
//!    `podmesh/1` and the ring crypto provider, passed explicitly. Its verifiers wrap rustls'
//!    WebPKI verifiers and also refuse blocklisted fingerprints and certificates whose identity is
//!    not exactly one node of this mesh.
//! 4. After a QUIC handshake, [`MeshTls::peer_node`] reads the authenticated node name of the other side.
//! 5. For claims that travel further than one connection, a node signs with the
//!    [`ClaimSigner`] from [`NodeIdentity::claim_signer`]. A receiver admits the signer's
//!    certificate with [`MeshTls::admit_certificate`], takes its key with [`claim_key`] and
//!    checks each claim with [`verify_claim`].
//!
//! This crate opens no sockets and knows nothing of gossip: a claim is opaque bytes here.

mod authority;
mod claims;
mod files;
mod identity;
mod names;
mod tls;

pub use authority::{BACKDATE, DEFAULT_NODE_DAYS};
pub use authority::{CaValidity, DEFAULT_CA_DAYS, MeshCa, NodeCertOptions, NodeCertificate};
pub use claims::{
    CLAIM_KEY_LEN, CLAIM_SIGNATURE_LEN, ClaimKeys, ClaimSigner, claim_key, verify_claim,
};
pub use files::{FileMode, read_certs, read_key, write_file};
pub use identity::{CertInfo, Fingerprint, NodeIdentityClaim, fingerprint};
pub use names::{LABEL_LEN_MAX, LABEL_RULE, MeshName, NodeName};
pub use tls::{ALPN, MeshTls, NodeIdentity, ServerTarget, verify_node_certificate};

use std::path::PathBuf;

/// Everything that can go wrong with names, certificates and TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A mesh or node name is not a DNS label.
    #[error("invalid {kind} name {name:?}: must be {rule}", rule = LABEL_RULE)]
    InvalidName {
        /// `mesh` or `node`.
        kind: &'static str,
        /// The refused input.
        name: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file would be overwritten without `--force`.
    #[error("{0} already exists (use --force to overwrite)")]
    Exists(PathBuf),
    /// A PEM file held nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// A certificate could not be parsed or lacks a required field.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// A certificate's identity is not exactly one `spiffe://<mesh>/node/<node>` URI.
    #[error("malformed identity: {0}")]
    Identity(String),
    /// A key cannot sign or check claims: it is not ECDSA P-256, or not the certificate's key.
    #[error("unusable key: {0}")]
    Key(String),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate was refused by verification (expired, unknown issuer, wrong usage, ...).
    #[error("{0}")]
    Refused(String),
    /// rustls or quinn refused a configuration.
    #[error("tls configuration: {0}")]
    Config(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
