//! Mutual TLS over real quinn endpoints on 127.0.0.1: who gets in and who is refused.
//!
//! A QUIC client whose certificate the server refuses still sees `connect()` succeed, because in
//! TLS 1.3 the client finishes its handshake before the server has judged its certificate. Each
//! refusal is therefore observed where it really happens: the server never yields a connection,
//! and the client's first stream fails.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use podmesh_certs::{
    CaValidity, Fingerprint, MeshCa, MeshName, MeshTls, NodeCertOptions, NodeCertificate,
    NodeIdentity, NodeName, ServerTarget,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Bounds every network wait so a broken case fails instead of hanging the suite.
const WAIT_MAX: Duration = Duration::from_secs(10);

fn mesh_ca() -> MeshCa {
    MeshCa::create(MeshName::new("test").unwrap(), CaValidity::default()).unwrap()
}

fn issue(ca: &MeshCa, node: &str) -> NodeCertificate {
    ca.issue(&NodeName::new(node).unwrap(), &NodeCertOptions::default())
        .unwrap()
}

fn parts(cert: &NodeCertificate) -> (Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>) {
    let certs = |pem: &str| {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    (certs(&cert.bundle_pem), certs(&cert.cert_pem))
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn tls(cert: &NodeCertificate, blocklist: BTreeSet<Fingerprint>) -> MeshTls {
    let (ca_certs, chain) = parts(cert);
    let identity = NodeIdentity::new(ca_certs, chain, key(&cert.key_pem)).unwrap();
    MeshTls::new(&identity, blocklist).unwrap()
}

/// Builds TLS for a certificate that `NodeIdentity` itself would refuse to load, the way a
/// misconfigured or hostile peer would present it anyway.
fn raw_tls(
    ca_certs: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key_pem: &str,
) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in ca_certs {
        roots.add(ca.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key(key_pem))
        .unwrap();
    config.alpn_protocols = vec![podmesh_certs::ALPN.to_vec()];
    quinn_client(config)
}

fn quinn_client(config: rustls::ClientConfig) -> quinn::ClientConfig {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(config)).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A server endpoint that accepts one connection, reads the client's node name from its
/// certificate and answers one stream with it.
fn serve(
    tls: &MeshTls,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<NodeName, String>>,
) {
    let endpoint =
        quinn::Endpoint::server(tls.quinn_server().unwrap(), "127.0.0.1:0".parse().unwrap())
            .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let tls = tls.clone();
    let task = tokio::spawn(async move {
        let incoming = endpoint.accept().await.ok_or("endpoint closed")?;
        let connection = incoming.await.map_err(|e| e.to_string())?;
        let client = tls.peer_node(&connection).map_err(|e| e.to_string())?;
        let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
        recv.read_to_end(64).await.map_err(|e| e.to_string())?;
        send.write_all(client.as_str().as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        connection.closed().await;
        Ok(client)
    });
    (addr, task)
}

/// Dials `addr` as `server_name`, sends one stream and returns (server's node name as read
/// from its certificate, the server's answer).
async fn exchange(
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    reader: Option<&MeshTls>,
) -> ClientOutcome {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let connection = endpoint
        .connect(addr, server_name)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let server = reader.map(|tls| tls.peer_node(&connection).unwrap());
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(b"hello").await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let answer = recv.read_to_end(64).await.map_err(|e| e.to_string())?;
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok((server, String::from_utf8(answer).unwrap()))
}

/// What the client saw: the server's node name (when read) and the server's answer.
type ClientOutcome = Result<(Option<NodeName>, String), String>;
/// What the server saw: the client's node name.
type ServerOutcome = Result<NodeName, String>;

/// Runs one dial against one server and returns what each side saw.
async fn attempt(
    server: &MeshTls,
    client: quinn::ClientConfig,
    server_name: &str,
    reader: Option<&MeshTls>,
) -> (ClientOutcome, ServerOutcome) {
    let (addr, server_task) = serve(server);
    let client_result = tokio::time::timeout(WAIT_MAX, exchange(client, addr, server_name, reader))
        .await
        .expect("client exchange finished within its bound");
    let server_result = tokio::time::timeout(WAIT_MAX, server_task)
        .await
        .expect("server finished within its bound")
        .unwrap();
    (client_result, server_result)
}

/// Asserts both sides saw the refusal: no server connection, and a failed client stream.
fn assert_refused((client, server): (ClientOutcome, ServerOutcome), expect_in_server_error: &str) {
    let client_err = client.expect_err("the client's exchange must fail");
    let server_err = server.expect_err("the server must not admit the connection");
    assert!(
        server_err.contains(expect_in_server_error) || client_err.contains(expect_in_server_error),
        "server: {server_err}; client: {client_err}"
    );
}

#[tokio::test]
async fn nodes_of_one_ca_connect_and_read_each_others_names() {
    // The baseline: mutual authentication succeeds and both sides learn the other's node name.
    let ca = mesh_ca();
    let n1 = tls(&issue(&ca, "n1"), BTreeSet::new());
    let n2 = tls(&issue(&ca, "n2"), BTreeSet::new());
    let server_name = n1.server_name(&ServerTarget::Node(NodeName::new("n2").unwrap()));
    let (client, server) = attempt(&n2, n1.quinn_client().unwrap(), &server_name, Some(&n1)).await;
    let (seen_server, answer) = client.unwrap();
    assert_eq!(seen_server.unwrap().as_str(), "n2");
    assert_eq!(answer, "n1");
    assert_eq!(server.unwrap().as_str(), "n1");
}

#[tokio::test]
async fn a_seed_dialled_by_address_alone_reveals_its_name() {
    // Dialling the bare mesh name admits any node of the mesh and tells who answered.
    let ca = mesh_ca();
    let n1 = tls(&issue(&ca, "n1"), BTreeSet::new());
    let seed = tls(&issue(&ca, "seed-7"), BTreeSet::new());
    let any = n1.server_name(&ServerTarget::AnyNode);
    let (client, server) = attempt(&seed, n1.quinn_client().unwrap(), &any, Some(&n1)).await;
    assert_eq!(client.unwrap().0.unwrap().as_str(), "seed-7");
    assert_eq!(server.unwrap().as_str(), "n1");
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_by_the_server() {
    // The client trusts the server, but its own certificate comes from a foreign CA.
    let ca = mesh_ca();
    let server_cert = issue(&ca, "n2");
    let server = tls(&server_cert, BTreeSet::new());
    let foreign = issue(&mesh_ca(), "n1");
    let (server_bundle, _) = parts(&server_cert);
    let (_, foreign_chain) = parts(&foreign);
    let client = raw_tls(&server_bundle, foreign_chain, &foreign.key_pem);
    let outcome = attempt(&server, client, "n2.test", None).await;
    // Both CAs are named `test mesh CA`, so WebPKI finds the anchor by name and the signature
    // check is what fails.
    assert_refused(outcome, "invalid peer certificate: BadSignature");
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    // A certificate whose validity ended yesterday is refused inside the handshake.
    let ca = mesh_ca();
    let server_cert = issue(&ca, "n2");
    let server = tls(&server_cert, BTreeSet::new());
    let expired = ca
        .issue(
            &NodeName::new("n1").unwrap(),
            &NodeCertOptions {
                days: 1,
                valid_from: Some(time::OffsetDateTime::now_utc() - time::Duration::days(2)),
                ..Default::default()
            },
        )
        .unwrap();
    let (bundle, chain) = parts(&expired);
    // NodeIdentity refuses to load it at all, with the reason.
    let load = NodeIdentity::new(bundle.clone(), chain.clone(), key(&expired.key_pem));
    assert!(load.unwrap_err().to_string().contains("expired"));
    let client = raw_tls(&bundle, chain, &expired.key_pem);
    let outcome = attempt(&server, client, "n2.test", None).await;
    assert_refused(outcome, "certificate expired");
}

#[tokio::test]
async fn a_client_certificate_without_client_auth_usage_is_refused() {
    // A certificate signed by the right CA but only for serverAuth cannot act as a client.
    let dir = tempfile::tempdir().unwrap();
    let ca = mesh_ca();
    ca.write(dir.path(), false).unwrap();
    let server = tls(&issue(&ca, "n2"), BTreeSet::new());
    let (bundle, chain, key_pem) = forge(dir.path(), "n1", "n1.test", false);
    let client = raw_tls(&bundle, chain, &key_pem);
    let outcome = attempt(&server, client, "n2.test", None).await;
    assert_refused(
        outcome,
        "does not allow extended key usage for client authentication",
    );
}

#[tokio::test]
async fn a_server_with_another_node_name_is_refused_by_the_client() {
    // Dialling n2 and reaching n3 fails on the client, whatever the CA.
    let ca = mesh_ca();
    let n1 = tls(&issue(&ca, "n1"), BTreeSet::new());
    let n3 = tls(&issue(&ca, "n3"), BTreeSet::new());
    let name = n1.server_name(&ServerTarget::Node(NodeName::new("n2").unwrap()));
    let (client, server) = attempt(&n3, n1.quinn_client().unwrap(), &name, None).await;
    assert!(client.unwrap_err().contains("NotValidForName"));
    assert!(server.is_err());
}

#[tokio::test]
async fn a_server_whose_dns_san_does_not_match_its_identity_is_refused() {
    // URI SAN says n2 but the DNS SAN says n9.test: the stock SNI check refuses it.
    let dir = tempfile::tempdir().unwrap();
    let ca = mesh_ca();
    ca.write(dir.path(), false).unwrap();
    let (bundle, chain, key_pem) = forge(dir.path(), "n2", "n9.test", true);
    let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key(&key_pem))
    .unwrap();
    server_config.alpn_protocols = vec![podmesh_certs::ALPN.to_vec()];
    drop(bundle);
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(server_config)).unwrap();
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let incoming = endpoint.accept().await.ok_or("closed".to_owned())?;
        incoming.await.map(|_| ()).map_err(|e| e.to_string())
    });
    let n1 = tls(&issue(&ca, "n1"), BTreeSet::new());
    let client = tokio::time::timeout(
        WAIT_MAX,
        exchange(n1.quinn_client().unwrap(), addr, "n2.test", None),
    )
    .await
    .unwrap();
    let client_err = client.unwrap_err();
    assert!(
        client_err.contains("not valid for name \"n2.test\""),
        "{client_err}"
    );
    let server = tokio::time::timeout(WAIT_MAX, server_task)
        .await
        .unwrap()
        .unwrap();
    assert!(server.is_err());
}

#[tokio::test]
async fn a_blocklisted_client_fingerprint_is_refused() {
    // The operator blocklists one node's certificate; the same CA's other nodes still get in.
    let ca = mesh_ca();
    let banned = issue(&ca, "n1");
    let (_, chain) = parts(&banned);
    let blocklist = BTreeSet::from([podmesh_certs::fingerprint(&chain[0])]);
    let server = tls(&issue(&ca, "n2"), blocklist);
    let name = "n2.test";
    let outcome = attempt(
        &server,
        tls(&banned, BTreeSet::new()).quinn_client().unwrap(),
        name,
        None,
    )
    .await;
    assert_refused(outcome, "invalid peer certificate: Revoked");

    let allowed = tls(&issue(&ca, "n3"), BTreeSet::new());
    let (client, server_seen) = attempt(&server, allowed.quinn_client().unwrap(), name, None).await;
    assert!(client.is_ok());
    assert_eq!(server_seen.unwrap().as_str(), "n3");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    // A client that offers no certificate at all never gets a connection.
    let ca = mesh_ca();
    let server_cert = issue(&ca, "n2");
    let server = tls(&server_cert, BTreeSet::new());
    let (bundle, _) = parts(&server_cert);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(bundle[0].clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![podmesh_certs::ALPN.to_vec()];
    let outcome = attempt(&server, quinn_client(config), "n2.test", None).await;
    assert_refused(outcome, "");
}

/// Signs a certificate with the CA in `ca_dir` directly through rcgen, with a chosen DNS SAN and
/// with or without the clientAuth usage, as a careless or hostile issuer might.
fn forge(
    ca_dir: &std::path::Path,
    node: &str,
    dns: &str,
    client_auth: bool,
) -> (
    Vec<CertificateDer<'static>>,
    Vec<CertificateDer<'static>>,
    String,
) {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(format!("spiffe://test/node/{node}").try_into().unwrap()),
        SanType::DnsName(dns.to_owned().try_into().unwrap()),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if client_auth {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let bundle = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (bundle, vec![cert.der().clone()], key.serialize_pem())
}
