//! What each simulated node signs its claims and checks other nodes' with (DESIGN section 2).
//!
//! By default a [`HashAuthority`]: cheap and deterministic, with certificates of a real node
//! certificate's size, so runs replay exactly and the bytes on the wire are those of a real
//! mesh. Every signer also writes down what it signs, so the checker can tell, independently of
//! any verification, whether a claim a node holds was ever made by its subject.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

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

/// The signers of one run's nodes.
#[derive(Debug, Clone)]
pub struct Signers {
    authority: HashAuthority,
    signed: Signed,
}

impl Signers {
    /// The signers of a run whose authority is keyed by `secret`.
    pub fn new(secret: u64) -> Self {
        Self {
            authority: HashAuthority::new(secret, CERTIFICATE_LEN),
            signed: Signed::default(),
        }
    }

    /// Node `node`'s signer (the same key in every life of the node).
    pub fn signer(&self, node: &NodeName) -> Box<dyn Signatures> {
        Box::new(Recorded {
            node: node.clone(),
            inner: Box::new(self.authority.signer(node)),
            signed: self.signed.clone(),
        })
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
