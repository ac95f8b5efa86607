//! Signed claims: what a node asserts about itself to nodes it has never connected to.
//!
//! TLS proves who is at the other end of one connection. Gossip carries a node's claims through
//! other nodes, so the receiver cannot rely on the connection it heard them on. Instead the node
//! signs each claim with the key in `node.key`, and a receiver checks the signature against the
//! public key of that node's certificate, after admitting the certificate with
//! [`MeshTls::admit_certificate`](crate::MeshTls::admit_certificate) just as a handshake would.
//!
//! Signatures are ECDSA P-256 with SHA-256 in the fixed form `r || s`, so every signature has the
//! same size on the wire, [`CLAIM_SIGNATURE_LEN`] bytes.
//!
//! The node key also signs TLS handshakes. So that a claim signature can never be taken for a
//! handshake signature or the other way round, what is signed is not the claim alone but the
//! claim context `podmesh claim v1` and a zero byte, followed by the claim. TLS 1.3 signs
//! content that begins with 64 spaces, which no claim signature input begins with.

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use rustls::pki_types::PrivateKeyDer;
use x509_parser::asn1_rs::Oid;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::{FromDer, X509Certificate};

use std::sync::Arc;

use crate::{Error, MeshTls, NodeIdentity, Result};

/// Length of a claim signature: the two 32-byte scalars `r || s` of ECDSA P-256.
pub const CLAIM_SIGNATURE_LEN: usize = 64;

/// Length of a claim key: an uncompressed P-256 point `0x04 || x || y`, as certificates carry it.
pub const CLAIM_KEY_LEN: usize = 65;

/// What precedes every claim in the signed input, so that claim signatures live apart from
/// TLS signatures made with the same key. Changing it invalidates every signature in flight.
const CLAIM_CONTEXT: &[u8] = b"podmesh claim v1\0";

/// The first byte of an uncompressed elliptic curve point (SEC 1, section 2.3.3).
const UNCOMPRESSED_POINT: u8 = 0x04;

/// Signs this node's claims with its node key.
pub struct ClaimSigner {
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for ClaimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ClaimSigner").finish_non_exhaustive()
    }
}

impl ClaimSigner {
    /// Builds a signer from a node's private key and the certificate it belongs to. Checking
    /// that they match here means a misconfigured node fails at start, rather than sending
    /// claims that every other node silently refuses.
    pub(crate) fn new(key: &PrivateKeyDer<'_>, certificate_der: &[u8]) -> Result<Self> {
        let PrivateKeyDer::Pkcs8(pkcs8) = key else {
            return Err(Error::Key(
                "the node key is not PKCS#8 (podmesh issues PKCS#8 ECDSA P-256 keys)".into(),
            ));
        };
        let rng = SystemRandom::new();
        let key_pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| Error::Key(format!("the node key is not an ECDSA P-256 key ({e})")))?;
        if key_pair.public_key().as_ref() != claim_key(certificate_der)?.as_slice() {
            return Err(Error::Key(
                "the node key does not belong to the node certificate".into(),
            ));
        }
        Ok(Self { key_pair, rng })
    }

    /// The key other nodes check this signer's claims with: the bytes [`claim_key`] reads from
    /// this node's certificate.
    pub fn public_key(&self) -> &[u8] {
        self.key_pair.public_key().as_ref()
    }

    /// Signs `claim`, whatever its bytes, returning the fixed-size `r || s` signature.
    ///
    /// # Panics
    ///
    /// Only if the operating system's random source fails, which no claim can cause.
    pub fn sign(&self, claim: &[u8]) -> [u8; CLAIM_SIGNATURE_LEN] {
        // ring hashes any message, so signing fails only when the system random source cannot
        // give a nonce (or, with negligible probability, after 100 unusable nonces in a row).
        // A node in that state cannot complete a TLS handshake either, and must not go on with
        // a weak nonce, so stopping is the only sound answer.
        let signature = self
            .key_pair
            .sign(&self.rng, &signed_input(claim))
            .expect("the system random source failed while signing a claim");
        // The FIXED encoding of a P-256 signature is always two 32-byte scalars.
        signature
            .as_ref()
            .try_into()
            .expect("an ECDSA P-256 fixed signature is 64 bytes")
    }
}

/// Reads the public key of a node certificate in the form [`verify_claim`] takes: the
/// uncompressed P-256 point of its SubjectPublicKeyInfo, [`CLAIM_KEY_LEN`] bytes.
///
/// This only parses: admit the certificate with
/// [`MeshTls::admit_certificate`](crate::MeshTls::admit_certificate) before trusting the key.
pub fn claim_key(certificate_der: &[u8]) -> Result<Vec<u8>> {
    let (rest, certificate) = X509Certificate::from_der(certificate_der)
        .map_err(|e| Error::Malformed(format!("cannot parse certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::Malformed(
            "trailing bytes after the certificate".into(),
        ));
    }
    let spki = certificate.public_key();
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(Error::Key(format!(
            "the certificate's public key has algorithm {}, expected EC P-256",
            spki.algorithm.algorithm
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|parameters| Oid::try_from(parameters).ok());
    if curve.as_ref() != Some(&OID_EC_P256) {
        let curve = curve.map_or_else(|| "no named curve".to_owned(), |oid| oid.to_string());
        return Err(Error::Key(format!(
            "the certificate's EC key is on {curve}, expected P-256"
        )));
    }
    let point = spki.subject_public_key.data.as_ref();
    if point.len() != CLAIM_KEY_LEN || point.first() != Some(&UNCOMPRESSED_POINT) {
        return Err(Error::Key(
            "the certificate's P-256 key is not an uncompressed point".into(),
        ));
    }
    Ok(point.to_vec())
}

/// Whether `signature` is a claim signature over `claim` by the holder of `key` (a
/// [`claim_key`]). Any malformed key or signature is simply not valid.
pub fn verify_claim(key: &[u8], claim: &[u8], signature: &[u8; CLAIM_SIGNATURE_LEN]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
        .verify(&signed_input(claim), signature)
        .is_ok()
}

/// Everything one node needs for signed claims: its signer and certificate, and the admission
/// of other nodes' certificates under a [`MeshTls`], exactly as its TLS handshakes admit them.
#[derive(Debug)]
pub struct ClaimKeys {
    signer: ClaimSigner,
    certificate: Arc<[u8]>,
    tls: MeshTls,
}

impl ClaimKeys {
    /// The claim keys of the node of `identity`, admitting what `tls` admits.
    pub fn new(identity: &NodeIdentity, tls: MeshTls) -> Result<Self> {
        let signer = identity.claim_signer()?;
        let certificate = identity
            .chain
            .first()
            .map(|leaf| Arc::from(leaf.as_ref()))
            .ok_or_else(|| Error::Malformed("node.crt holds no certificate".into()))?;
        Ok(Self {
            signer,
            certificate,
            tls,
        })
    }

    /// This node's certificate (DER).
    pub fn certificate(&self) -> Arc<[u8]> {
        self.certificate.clone()
    }

    /// Signs `claim` with this node's key.
    pub fn sign(&self, claim: &[u8]) -> [u8; CLAIM_SIGNATURE_LEN] {
        self.signer.sign(claim)
    }

    /// The claim key of `certificate` if it is node `node`'s, admitted as a TLS handshake
    /// would admit it (CA bundle, validity, usages, identity, blocklist).
    pub fn admit(&self, node: &str, certificate: &[u8]) -> Option<Vec<u8>> {
        let identity = self.tls.admit_certificate(certificate).ok()?;
        if identity.node.as_str() != node {
            return None;
        }
        claim_key(certificate).ok()
    }
}

/// The bytes a claim signature covers: the claim context, then the claim.
fn signed_input(claim: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(CLAIM_CONTEXT.len() + claim.len());
    input.extend_from_slice(CLAIM_CONTEXT);
    input.extend_from_slice(claim);
    input
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{PrivatePkcs8KeyDer, PrivateSec1KeyDer};

    use super::*;
    use crate::{
        CaValidity, MeshCa, MeshName, MeshTls, NodeCertOptions, NodeIdentity, NodeName, fingerprint,
    };

    fn mesh_ca(mesh: &str) -> MeshCa {
        MeshCa::create(MeshName::new(mesh).unwrap(), CaValidity::default()).unwrap()
    }

    /// Issues `node` from `ca`, writes its files under `dir` and loads them back, as a node
    /// starts.
    fn node(ca: &MeshCa, node: &str, dir: &Path) -> NodeIdentity {
        let certs = dir.join(node);
        ca.issue(&NodeName::new(node).unwrap(), &NodeCertOptions::default())
            .unwrap()
            .write(&certs, false)
            .unwrap();
        NodeIdentity::load(&certs).unwrap()
    }

    fn leaf(identity: &NodeIdentity) -> &[u8] {
        &identity.chain[0]
    }

    fn pkcs8_key(dir: &Path, node: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(dir.join(node).join("node.key")).unwrap()
    }

    #[test]
    fn a_claim_signed_by_a_node_verifies_with_the_key_of_its_certificate() {
        // What one node signs, any node holding its certificate accepts.
        let dir = tempfile::tempdir().unwrap();
        let n1 = node(&mesh_ca("test"), "n1", dir.path());
        let signer = n1.claim_signer().unwrap();
        let key = claim_key(leaf(&n1)).unwrap();
        assert_eq!(key.len(), CLAIM_KEY_LEN);
        assert_eq!(signer.public_key(), key.as_slice());
        for claim in [&b""[..], b"n1 alive at incarnation 7", &[0u8; 4096]] {
            assert!(verify_claim(&key, claim, &signer.sign(claim)));
        }
    }

    #[test]
    fn a_signature_does_not_cover_other_bytes() {
        // A claim changed in transit, even by one byte or by truncation, is refused.
        let dir = tempfile::tempdir().unwrap();
        let n1 = node(&mesh_ca("test"), "n1", dir.path());
        let key = claim_key(leaf(&n1)).unwrap();
        let signature = n1
            .claim_signer()
            .unwrap()
            .sign(b"n1 alive at incarnation 7");
        for other in [
            &b"n1 alive at incarnation 8"[..],
            b"n1 alive at incarnation ",
            b"n1 alive at incarnation 7 ",
            b"",
        ] {
            assert!(!verify_claim(&key, other, &signature));
        }
    }

    #[test]
    fn a_signature_with_any_flipped_bit_is_refused() {
        // A damaged signature never verifies, wherever the damage is.
        let dir = tempfile::tempdir().unwrap();
        let n1 = node(&mesh_ca("test"), "n1", dir.path());
        let key = claim_key(leaf(&n1)).unwrap();
        let claim = b"n1 alive at incarnation 7";
        let signature = n1.claim_signer().unwrap().sign(claim);
        for bit in 0..8 * CLAIM_SIGNATURE_LEN {
            let mut damaged = signature;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(!verify_claim(&key, claim, &damaged), "bit {bit}");
        }
    }

    #[test]
    fn a_claim_signed_by_one_node_does_not_verify_with_another_nodes_key() {
        // One node of the mesh cannot speak for another.
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh_ca("test");
        let n1 = node(&ca, "n1", dir.path());
        let n2 = node(&ca, "n2", dir.path());
        let claim = b"n2 alive at incarnation 7";
        let signature = n1.claim_signer().unwrap().sign(claim);
        assert!(!verify_claim(
            &claim_key(leaf(&n2)).unwrap(),
            claim,
            &signature
        ));
    }

    #[test]
    fn a_plain_signature_by_the_node_key_is_not_a_claim_signature() {
        // What the node key signs for another purpose, such as a TLS handshake, never passes
        // for a claim.
        let dir = tempfile::tempdir().unwrap();
        let n1 = node(&mesh_ca("test"), "n1", dir.path());
        let key = claim_key(leaf(&n1)).unwrap();
        let PrivateKeyDer::Pkcs8(pkcs8) = pkcs8_key(dir.path(), "n1") else {
            panic!("podmesh writes PKCS#8 keys");
        };
        let rng = SystemRandom::new();
        let plain = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &rng,
        )
        .unwrap();
        let claim = b"n1 alive at incarnation 7";
        let signature = plain.sign(&rng, claim).unwrap();
        let signature: [u8; CLAIM_SIGNATURE_LEN] = signature.as_ref().try_into().unwrap();
        assert!(!verify_claim(&key, claim, &signature));
    }

    #[test]
    fn admit_certificate_accepts_a_node_of_the_mesh_ca_and_names_it() {
        // A certificate from the mesh's own CA is admitted with the identity it carries.
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh_ca("test");
        let tls = MeshTls::new(&node(&ca, "n1", dir.path()), BTreeSet::new()).unwrap();
        let n2 = node(&ca, "n2", dir.path());
        let claim = tls.admit_certificate(leaf(&n2)).unwrap();
        assert_eq!((claim.mesh.as_str(), claim.node.as_str()), ("test", "n2"));
    }

    #[test]
    fn admit_certificate_refuses_a_node_of_a_foreign_ca() {
        // A CA that merely shares the mesh's name, or a CA of another mesh, admits no one here.
        let dir = tempfile::tempdir().unwrap();
        let tls = MeshTls::new(&node(&mesh_ca("test"), "n1", dir.path()), BTreeSet::new()).unwrap();
        let impostor = node(&mesh_ca("test"), "n2", &dir.path().join("impostor"));
        let err = tls.admit_certificate(leaf(&impostor)).unwrap_err();
        assert!(err.to_string().contains("bad signature"), "{err}");
        let stranger = node(&mesh_ca("other"), "n2", &dir.path().join("stranger"));
        let err = tls.admit_certificate(leaf(&stranger)).unwrap_err();
        assert!(err.to_string().contains("mesh other"), "{err}");
    }

    #[test]
    fn admit_certificate_refuses_a_blocklisted_fingerprint() {
        // The operator's blocklist applies to certificates carried in gossip as in handshakes.
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh_ca("test");
        let n2 = node(&ca, "n2", dir.path());
        let n3 = node(&ca, "n3", dir.path());
        let blocklist = BTreeSet::from([fingerprint(leaf(&n2))]);
        let tls = MeshTls::new(&node(&ca, "n1", dir.path()), blocklist).unwrap();
        let err = tls.admit_certificate(leaf(&n2)).unwrap_err();
        assert!(err.to_string().contains("blocklisted"), "{err}");
        assert_eq!(
            tls.admit_certificate(leaf(&n3)).unwrap().node.as_str(),
            "n3"
        );
    }

    #[test]
    fn garbage_is_neither_a_claim_key_nor_an_admitted_certificate() {
        // Bytes from the network that are not a certificate are an error, never a panic.
        let dir = tempfile::tempdir().unwrap();
        let n1 = node(&mesh_ca("test"), "n1", dir.path());
        let tls = MeshTls::new(&n1, BTreeSet::new()).unwrap();
        let mut trailing = leaf(&n1).to_vec();
        trailing.push(0);
        let truncated = &leaf(&n1)[..leaf(&n1).len() - 1];
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x82\xff\xff",
            &[0u8; 100],
            &trailing,
            truncated,
        ] {
            assert!(matches!(claim_key(bytes), Err(Error::Malformed(_))));
            assert!(tls.admit_certificate(bytes).is_err());
        }
    }

    #[test]
    fn claim_key_refuses_a_key_that_is_not_p256() {
        // Only P-256 keys can check claims; other algorithms and curves are named in the error.
        for (algorithm, expected) in [
            (&rcgen::PKCS_ED25519, "expected EC P-256"),
            (&rcgen::PKCS_ECDSA_P384_SHA384, "expected P-256"),
        ] {
            let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let certificate = rcgen::CertificateParams::new(vec!["n1.test".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let err = claim_key(certificate.der()).unwrap_err();
            assert!(matches!(err, Error::Key(_)), "{err}");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn claim_signer_refuses_a_key_that_is_not_pkcs8_p256() {
        // A node key of another format or algorithm fails at start with a clear reason.
        let dir = tempfile::tempdir().unwrap();
        let n1 = node(&mesh_ca("test"), "n1", dir.path());
        let ed25519 =
            ring::signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let keys = [
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ed25519.as_ref().to_vec())),
            PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(vec![0x30, 0x00])),
        ];
        for key in keys {
            let identity = NodeIdentity::new(n1.ca_certs.clone(), n1.chain.clone(), key).unwrap();
            let err = identity.claim_signer().unwrap_err();
            assert!(matches!(err, Error::Key(_)), "{err}");
        }
    }

    #[test]
    fn claim_signer_refuses_the_key_of_another_certificate() {
        // A node whose key and certificate do not match would sign claims nobody accepts.
        let dir = tempfile::tempdir().unwrap();
        let ca = mesh_ca("test");
        let n1 = node(&ca, "n1", dir.path());
        node(&ca, "n2", dir.path());
        let mixed = NodeIdentity::new(
            n1.ca_certs.clone(),
            n1.chain.clone(),
            pkcs8_key(dir.path(), "n2"),
        )
        .unwrap();
        let err = mixed.claim_signer().unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        // `chain` is public, so a caller can empty it after loading.
        let mut empty = mixed;
        empty.chain.clear();
        assert!(matches!(empty.claim_signer(), Err(Error::Malformed(_))));
    }
}
