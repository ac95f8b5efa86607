//! What each simulated node signs its claims and checks other nodes' with (DESIGN section 2).
//!
//! By default a [`HashAuthority`]: cheap and deterministic, with certificates of a real node
//! certificate's size, so runs replay exactly and the bytes on the wire are those of a real
//! mesh. With real signatures, a throwaway mesh CA issues every node a real certificate and
//! each node signs with ECDSA P-256 and admits certificates as the daemon does, so the cost of
//! the real scheme is measured; ECDSA draws a random nonce per signature, so such runs do not
//! replay byte for byte. Either way every signer also writes down what it signs, so the checker
//! can tell, independently of any verification, whether a claim a node holds was ever made by
//! its subject.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use podmesh_certs::{ClaimKeys, MeshCa, MeshName, MeshTls, NodeCertOptions, verify_claim};
use podmesh_mesh::{Credential, HashAuthority, NodeName, SIGNATURE_LEN, Signatures};

/// Bytes of a simulated certificate: a real node certificate of a short mesh and node name is
/// 425 to 450 bytes (`podmesh certs issue`).
pub const CERTIFICATE_LEN: usize = 440;

/// Every claim any node of a run signed, by the hash of its subject and bytes.
#[derive(Debug, Default, Clone)]
pub struct Signed(Arc<Mutex<HashSet<u64>>>);

impl Signed {
    fn lock(&self) -> MutexGuard<'_, HashSet<u64>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `subject` signed `claim`.
    pub fn contains(&self, subject: &NodeName, claim: &[u8]) -> bool {
        self.lock().contains(&claim_hash(subject, claim))
    }
}

fn claim_hash(subject: &NodeName, claim: &[u8]) -> u64 {
    // FNV-1a: the registry needs no resistance to crafted input, only few collisions.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let parts: [&[u8]; 3] = [subject.as_str().as_bytes(), &[0xff], claim];
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// How the nodes of a run sign.
#[derive(Debug, Clone)]
enum Scheme {
    Hash(HashAuthority),
    /// Each node's claim keys, by node index; the keys are shared by the node's lives.
    Real(Arc<Vec<Arc<ClaimKeys>>>),
}

/// The signers of one run's nodes.
#[derive(Debug, Clone)]
pub struct Signers {
    scheme: Scheme,
    signed: Signed,
}

impl Signers {
    /// Cheap deterministic signers under an authority keyed by `secret`.
    pub fn hash(secret: u64) -> Self {
        Self {
            scheme: Scheme::Hash(HashAuthority::new(secret, CERTIFICATE_LEN)),
            signed: Signed::default(),
        }
    }

    /// Real signers for nodes `names`: a throwaway mesh CA, a certificate and key for every
    /// node, and admission as the daemon's.
    pub fn real(names: &[NodeName]) -> anyhow::Result<Self> {
        let ca = MeshCa::create(MeshName::new("sim")?, Default::default())
            .context("creating the throwaway mesh CA")?;
        let mut identities = Vec::with_capacity(names.len());
        for name in names {
            let node = podmesh_certs::NodeName::new(name.as_str())?;
            let certificate = ca.issue(&node, &NodeCertOptions::default())?;
            identities.push(certificate.identity()?);
        }
        let first = identities.first().context("a run has nodes")?;
        // Admission depends only on the CA bundle and the blocklist, alike for every node.
        let tls = MeshTls::new(first, Default::default())?;
        let keys = identities
            .iter()
            .map(|identity| Ok(Arc::new(ClaimKeys::new(identity, tls.clone())?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            scheme: Scheme::Real(Arc::new(keys)),
            signed: Signed::default(),
        })
    }

    /// Node `node`'s signer (the same key in every life of the node), writing down what it
    /// signs.
    pub fn signer(&self, index: usize, node: &NodeName) -> Box<dyn Signatures> {
        Box::new(Recorded {
            node: node.clone(),
            inner: self.unrecorded(index, node),
            signed: self.signed.clone(),
        })
    }

    /// Node `node`'s signer, writing down nothing: what a forger signs about other nodes is
    /// not theirs, and the checker must not count it as theirs.
    pub fn unrecorded(&self, index: usize, node: &NodeName) -> Box<dyn Signatures> {
        match &self.scheme {
            Scheme::Hash(authority) => Box::new(authority.signer(node)),
            Scheme::Real(keys) => Box::new(RealSignatures(keys[index].clone())),
        }
    }

    /// What the nodes signed.
    pub fn signed(&self) -> &Signed {
        &self.signed
    }
}

/// A signer that writes down what it signs.
#[derive(Debug)]
struct Recorded {
    node: NodeName,
    inner: Box<dyn Signatures>,
    signed: Signed,
}

impl Signatures for Recorded {
    fn certificate(&self) -> Arc<[u8]> {
        self.inner.certificate()
    }

    fn sign(&mut self, claim: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signed.lock().insert(claim_hash(&self.node, claim));
        self.inner.sign(claim)
    }

    fn admit(&mut self, subject: &NodeName, certificate: &[u8]) -> Option<Credential> {
        self.inner.admit(subject, certificate)
    }

    fn verify(&mut self, key: &[u8], claim: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        self.inner.verify(key, claim, signature)
    }
}

/// A node's real claim keys as the core takes them: the daemon's `NodeSignatures` again, since
/// the simulator never depends on the node crate and `certs` knows nothing of the mesh
/// (ARCHITECTURE.md); the keys are shared by the node's lives.
#[derive(Debug)]
struct RealSignatures(Arc<ClaimKeys>);

impl Signatures for RealSignatures {
    fn certificate(&self) -> Arc<[u8]> {
        self.0.certificate()
    }

    fn sign(&mut self, claim: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(claim)
    }

    fn admit(&mut self, subject: &NodeName, certificate: &[u8]) -> Option<Credential> {
        let key = self.0.admit(subject.as_str(), certificate)?;
        Some(Credential {
            certificate: certificate.into(),
            key: key.into(),
        })
    }

    fn verify(&mut self, key: &[u8], claim: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        verify_claim(key, claim, signature)
    }
}
