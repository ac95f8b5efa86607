//! Mutual TLS for QUIC: rustls and quinn configurations, verifiers, and peer identity.
//!
//! Both verifiers wrap rustls' WebPKI verifiers, so chain building, validity periods, key usages
//! and signatures are checked by the stock code; on top they refuse blocklisted fingerprints and
//! any certificate whose identity is not exactly one node of this mesh.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls::{OtherError, SignatureScheme};

use crate::authority::file_names;
use crate::claims::ClaimSigner;
use crate::files::{read_certs, read_key};
use crate::identity::{Fingerprint, NodeIdentityClaim, ca_mesh, fingerprint};
use crate::{Error, MeshName, NodeName, Result};

/// The one ALPN protocol podmesh nodes speak.
pub const ALPN: &[u8] = b"podmesh/1";

/// The crypto provider: ring, passed explicitly everywhere so no process-wide default is needed
/// and only one provider is compiled.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's credentials: the CA bundle it trusts, its certificate and its key.
pub struct NodeIdentity {
    /// The identity inside `node.crt`.
    pub claim: NodeIdentityClaim,
    /// Every trusted CA (`ca.crt`).
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// `node.crt`, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("claim", &self.claim)
            .field("ca_certs", &self.ca_certs.len())
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Loads `ca.crt`, `node.crt` and `node.key` from a node's certificate directory and checks
    /// that the certificate is currently valid under the bundle.
    pub fn load(dir: &Path) -> Result<Self> {
        let ca_certs = read_certs(&dir.join(file_names::CA))?;
        let chain = read_certs(&dir.join(file_names::CERT))?;
        let key = read_key(&dir.join(file_names::KEY))?;
        Self::new(ca_certs, chain, key)
    }

    /// Builds an identity from parsed parts, with the same checks as [`NodeIdentity::load`].
    pub fn new(
        ca_certs: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self> {
        let leaf = chain
            .first()
            .ok_or_else(|| Error::Malformed("node.crt holds no certificate".into()))?;
        let claim = verify_node_certificate(&ca_certs, leaf, &BTreeSet::new())
            .map_err(|e| Error::Refused(format!("node certificate: {e}")))?;
        Ok(Self {
            claim,
            ca_certs,
            chain,
            key,
        })
    }

    /// A signer for this node's own claims, made from `node.key`. Fails if the key is not the
    /// PKCS#8 ECDSA P-256 key of the leaf certificate, as `podmesh certs issue` writes it.
    pub fn claim_signer(&self) -> Result<ClaimSigner> {
        // `chain` is a public field, so the check `new` made may no longer hold.
        let leaf = self
            .chain
            .first()
            .ok_or_else(|| Error::Malformed("node.crt holds no certificate".into()))?;
        ClaimSigner::new(&self.key, leaf)
    }
}

/// Which server a client expects to reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerTarget {
    /// A known node: its certificate must name exactly this node.
    Node(NodeName),
    /// Any node of this mesh, for seeds known only by address; the caller reads who answered
    /// with [`MeshTls::peer_node`].
    AnyNode,
}

/// rustls and quinn configurations for one node of one mesh.
#[derive(Clone)]
pub struct MeshTls {
    mesh: MeshName,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    blocklist: Arc<BTreeSet<Fingerprint>>,
    /// The verifiers inside `server` and `client`, kept so that admitting a certificate received
    /// outside a handshake does not rebuild them (and their root store) every time.
    verifiers: Verifiers,
    /// Fingerprints of the trusted CA certificates, to tell whether a reload changed them.
    cas: Vec<Fingerprint>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("mesh", &self.mesh)
            .finish_non_exhaustive()
    }
}

fn config_error(e: impl std::fmt::Display) -> Error {
    Error::Config(e.to_string())
}

fn roots(ca_certs: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for ca in ca_certs {
        roots.add(ca.clone()).map_err(config_error)?;
    }
    Ok(Arc::new(roots))
}

impl MeshTls {
    /// Builds TLS 1.3-only configurations presenting `identity` and trusting its CA bundle,
    /// refusing peers whose certificate fingerprint is in `blocklist`.
    pub fn new(identity: &NodeIdentity, blocklist: BTreeSet<Fingerprint>) -> Result<Self> {
        let mesh = identity.claim.mesh.clone();
        let blocklist = Arc::new(blocklist);
        let verifiers = verifiers(&identity.ca_certs, mesh.clone(), blocklist.clone())?;

        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(verifiers.0.clone())
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(config_error)?;
        server.alpn_protocols = vec![ALPN.to_vec()];

        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifiers.1.clone())
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(config_error)?;
        client.alpn_protocols = vec![ALPN.to_vec()];

        Ok(Self {
            mesh,
            server: Arc::new(server),
            client: Arc::new(client),
            blocklist,
            verifiers,
            cas: identity.ca_certs.iter().map(|c| fingerprint(c)).collect(),
        })
    }

    /// Whether `other` trusts exactly the CAs these configurations trust.
    pub fn trusts_same_cas(&self, other: &MeshTls) -> bool {
        self.cas == other.cas
    }

    /// Whether the other side of `connection` authenticated with a certificate these
    /// configurations refuse by fingerprint: what a reload with a longer blocklist must close.
    pub fn refuses_peer(&self, connection: &quinn::Connection) -> bool {
        let Some(identity) = connection.peer_identity() else {
            return false;
        };
        let Ok(chain) = identity.downcast::<Vec<CertificateDer<'static>>>() else {
            return false;
        };
        chain
            .first()
            .is_some_and(|leaf| self.blocklist.contains(&fingerprint(leaf)))
    }

    /// The mesh these configurations admit.
    pub fn mesh(&self) -> &MeshName {
        &self.mesh
    }

    /// The rustls server configuration.
    pub fn rustls_server(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The rustls client configuration.
    pub fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }

    /// A quinn server configuration (default transport; the caller tunes it).
    pub fn quinn_server(&self) -> Result<quinn::ServerConfig> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(self.server.clone())
            .map_err(config_error)?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }

    /// A quinn client configuration (default transport; the caller tunes it).
    pub fn quinn_client(&self) -> Result<quinn::ClientConfig> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(self.client.clone())
            .map_err(config_error)?;
        Ok(quinn::ClientConfig::new(Arc::new(crypto)))
    }

    /// The TLS server name to dial `target` with: `<node>.<mesh>`, or `<mesh>` for any node.
    /// No node certificate carries the bare mesh name, so it can only mean "any node".
    pub fn server_name(&self, target: &ServerTarget) -> String {
        match target {
            ServerTarget::Node(node) => format!("{node}.{}", self.mesh),
            ServerTarget::AnyNode => self.mesh.to_string(),
        }
    }

    /// The authenticated node name of the other side of an established connection.
    pub fn peer_node(&self, connection: &quinn::Connection) -> Result<NodeName> {
        let identity = connection
            .peer_identity()
            .ok_or_else(|| Error::Identity("the peer presented no certificate".into()))?;
        let chain = identity
            .downcast::<Vec<CertificateDer<'static>>>()
            .map_err(|_| Error::Identity("the peer identity is not a certificate chain".into()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| Error::Identity("the peer presented an empty chain".into()))?;
        let claim = NodeIdentityClaim::from_cert(leaf)?;
        if claim.mesh != self.mesh {
            return Err(Error::Identity(format!(
                "the peer belongs to mesh {}, not {}",
                claim.mesh, self.mesh
            )));
        }
        Ok(claim.node)
    }

    /// Checks a node certificate received outside a TLS handshake (carried in gossip, say)
    /// exactly as a handshake with its node would: chain to the CA bundle, validity now, both
    /// extended key usages, exactly one node identity of this mesh, the DNS SAN it implies, and
    /// the blocklist. Returns that identity; the caller compares its node name with the name
    /// it expected.
    pub fn admit_certificate(&self, certificate_der: &[u8]) -> Result<NodeIdentityClaim> {
        admit(
            &self.verifiers,
            &self.mesh,
            &CertificateDer::from(certificate_der),
        )
    }
}

type Verifiers = (Arc<dyn ClientCertVerifier>, Arc<dyn ServerCertVerifier>);

fn verifiers(
    ca_certs: &[CertificateDer<'static>],
    mesh: MeshName,
    blocklist: Arc<BTreeSet<Fingerprint>>,
) -> Result<Verifiers> {
    let roots = roots(ca_certs)?;
    let client_inner = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(config_error)?;
    let server_inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(config_error)?;
    let check = IdentityCheck { mesh, blocklist };
    Ok((
        Arc::new(MeshClientVerifier {
            inner: client_inner,
            check: check.clone(),
        }),
        Arc::new(MeshServerVerifier {
            inner: server_inner,
            check,
        }),
    ))
}

/// The checks podmesh adds to WebPKI verification.
#[derive(Clone, Debug)]
struct IdentityCheck {
    mesh: MeshName,
    blocklist: Arc<BTreeSet<Fingerprint>>,
}

fn refused(error: Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

impl IdentityCheck {
    /// Refuses blocklisted certificates and returns the identity if it belongs to this mesh.
    fn claim(&self, end_entity: &CertificateDer<'_>) -> Result<NodeIdentityClaim, rustls::Error> {
        if self.blocklist.contains(&fingerprint(end_entity)) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        let claim = NodeIdentityClaim::from_cert(end_entity).map_err(refused)?;
        if claim.mesh != self.mesh {
            return Err(refused(Error::Identity(format!(
                "certificate of mesh {}, expected {}",
                claim.mesh, self.mesh
            ))));
        }
        Ok(claim)
    }
}

#[derive(Debug)]
struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    check: IdentityCheck,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check.claim(end_entity)?;
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct MeshServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    check: IdentityCheck,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let claim = self.check.claim(end_entity)?;
        let expected = claim.dns_name();
        let dialled = match server_name {
            ServerName::DnsName(name) => name.as_ref().to_owned(),
            _ => String::new(),
        };
        // Dialling the bare mesh name means "any node"; the stock verifier then checks the DNS
        // SAN the identity implies. Otherwise the dialled node must be the one in the URI SAN.
        if dialled != self.check.mesh.as_str() && dialled != expected {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        let name = ServerName::try_from(expected)
            .map_err(|e| refused(Error::Identity(format!("identity is not a DNS name: {e}"))))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Checks `cert` as a node certificate of the mesh whose CAs are `ca_certs` (the first CA names
/// the mesh), exactly as a peer would during the TLS handshake: chain, validity now, both
/// extended key usages, identity, DNS SAN and blocklist. Returns the identity it carries.
pub fn verify_node_certificate(
    ca_certs: &[CertificateDer<'static>],
    cert: &CertificateDer<'_>,
    blocklist: &BTreeSet<Fingerprint>,
) -> Result<NodeIdentityClaim> {
    let first = ca_certs
        .first()
        .ok_or_else(|| Error::Malformed("the CA bundle holds no certificate".into()))?;
    let mesh = ca_mesh(first)?;
    let verifiers = verifiers(ca_certs, mesh.clone(), Arc::new(blocklist.clone()))?;
    admit(&verifiers, &mesh, cert)
}

/// Runs `cert` through both verifiers of `mesh`: as a client certificate, then as the server
/// of a connection dialled by the bare mesh name, which makes the server verifier also check
/// the DNS SAN the identity implies. Node certificates are signed by a CA of the bundle
/// directly, so there are no intermediates.
fn admit(
    (client, server): &Verifiers,
    mesh: &MeshName,
    cert: &CertificateDer<'_>,
) -> Result<NodeIdentityClaim> {
    let now = UnixTime::now();
    client
        .verify_client_cert(cert, &[], now)
        .map_err(|e| Error::Refused(describe(&e)))?;
    let any = ServerName::try_from(mesh.to_string()).map_err(config_error)?;
    server
        .verify_server_cert(cert, &[], &any, &[], now)
        .map_err(|e| Error::Refused(describe(&e)))?;
    NodeIdentityClaim::from_cert(cert)
}

/// A human reason for a verification failure.
fn describe(error: &rustls::Error) -> String {
    let rustls::Error::InvalidCertificate(cert_error) = error else {
        return error.to_string();
    };
    match cert_error {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not valid yet".into()
        }
        CertificateError::UnknownIssuer => {
            "unknown issuer: not signed by any CA in the bundle".into()
        }
        CertificateError::BadSignature => {
            "bad signature: not signed by the CA in the bundle that bears its issuer's name".into()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "wrong usage: a node certificate needs both serverAuth and clientAuth".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "name mismatch: the DNS SAN does not match the node identity".into()
        }
        CertificateError::Revoked => "blocklisted fingerprint".into(),
        CertificateError::Other(other) => other.to_string(),
        other => format!("{other:?}"),
    }
}
