//! Signed claims (DESIGN section 2): a node can only speak for itself.
//!
//! What only a node may say about itself, its Alive (name, address, incarnation), its Left and
//! every record of its replicated state, carries its signature, made with the key of its node
//! certificate. Members learn each other's certificates (in the join push/pull, or by asking
//! the node that relayed a claim) and check each one against the mesh's CA bundle and blocklist
//! before they use it; a claim whose signature does not verify is dropped, never applied and
//! never relayed.
//!
//! The core does no cryptography itself: signing and checking go through [`Signatures`], given
//! at construction. The daemon implements it with the node's real key (ECDSA P-256);
//! [`HashSignatures`] is a cheap deterministic stand-in for simulations and tests.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::NodeName;
use crate::hash::{fnv1a, mix};

/// Bytes of a signature: ECDSA P-256 in its fixed form, `r` then `s`.
pub const SIGNATURE_LEN: usize = 64;

/// A certificate admitted as one node's, and the public key its claims are checked with.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The certificate (DER), passed on to members that ask for it.
    pub certificate: Arc<[u8]>,
    /// The certificate's public key, in the form [`Signatures::verify`] takes.
    pub key: Arc<[u8]>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("certificate_len", &self.certificate.len())
            .field("key_len", &self.key.len())
            .finish()
    }
}

/// How a node signs its own claims and checks other nodes' (DESIGN section 2).
///
/// The core calls it with claims encoded by [`crate::claim`], so every implementation signs
/// the same bytes.
pub trait Signatures: fmt::Debug + Send {
    /// This node's certificate, as other nodes admit it. It may change between calls (a reload
    /// with a renewed certificate); the core reads it when it sends it.
    fn certificate(&self) -> Arc<[u8]>;

    /// Signs `claim` with this node's key.
    fn sign(&mut self, claim: &[u8]) -> [u8; SIGNATURE_LEN];

    /// Admits `certificate` as node `subject`'s: issued by the mesh's CA, currently valid, not
    /// blocklisted, and naming exactly `subject`. `None` refuses it.
    fn admit(&mut self, subject: &NodeName, certificate: &[u8]) -> Option<Credential>;

    /// Whether `signature` over `claim` was made with the private half of `key`.
    fn verify(&mut self, key: &[u8], claim: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool;
}

/// The authority of a mesh that uses [`HashSignatures`]: it issues every node's key and
/// certificate, and every node checks certificates with it.
///
/// A node's key is a 64-bit secret and its public key is the same number, a "certificate" binds
/// a node name to a key with the authority's secret, and a signature is a keyed hash of the
/// claim. It checks what the real scheme checks (the certificate comes from the mesh's
/// authority and names the subject; the signature is the subject's over exactly these bytes),
/// at the cost of a few hashes, and it is deterministic, so a simulated run replays exactly. It
/// proves nothing against an adversary who reads this code: use it where every node is code
/// you wrote, as in a simulation whose forger forges with its own key.
#[derive(Clone)]
pub struct HashAuthority {
    inner: Arc<AuthorityInner>,
}

/// Certificates by node and key.
type Issued = BTreeMap<(NodeName, u64), Arc<[u8]>>;

struct AuthorityInner {
    secret: u64,
    certificate_len: usize,
    /// Certificates issued, by node and key: every node that admits one shares this copy, so
    /// a simulated mesh of N nodes holds N certificates, not N^2.
    issued: Mutex<Issued>,
}

impl fmt::Debug for HashAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashAuthority")
            .field("certificate_len", &self.inner.certificate_len)
            .finish_non_exhaustive()
    }
}

/// Bytes of a [`HashAuthority`] certificate before its padding: the key, the tag and the name's
/// length.
const HASH_CERTIFICATE_HEADER: usize = 8 + 8 + 1;

impl HashAuthority {
    /// An authority keyed by `secret` whose certificates are `certificate_len` bytes long
    /// (padded), so that the bytes a simulated mesh sends are those of real certificates.
    pub fn new(secret: u64, certificate_len: usize) -> Self {
        Self {
            inner: Arc::new(AuthorityInner {
                secret,
                certificate_len,
                issued: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The signer of node `node`: its key derives from the authority's secret and its name,
    /// so a restarted node signs as before.
    pub fn signer(&self, node: &NodeName) -> HashSignatures {
        self.renewed(node, 0)
    }

    /// The signer of node `node` after its `renewal`-th certificate renewal: a new key and a
    /// new certificate for the same name (renewal 0 is [`HashAuthority::signer`]).
    pub fn renewed(&self, node: &NodeName, renewal: u64) -> HashSignatures {
        let secret = self.inner.secret.to_le_bytes();
        let name = node.as_str().as_bytes();
        let key = fnv1a(&[&secret, b"key", name, &renewal.to_le_bytes()]);
        let certificate = self.certificate(node, key);
        HashSignatures {
            authority: self.clone(),
            key,
            certificate,
        }
    }

    /// The certificate binding `node` to `key`: the key, a tag only the authority can make, the
    /// name, and zero padding up to the certificate length.
    fn certificate(&self, node: &NodeName, key: u64) -> Arc<[u8]> {
        let name = node.as_str().as_bytes();
        let tag = self.tag(name, key);
        let mut bytes = Vec::with_capacity(self.inner.certificate_len.max(64));
        bytes.extend_from_slice(&key.to_le_bytes());
        bytes.extend_from_slice(&tag.to_le_bytes());
        // Names are at most 63 bytes, so the length fits one byte.
        bytes.push(name.len() as u8);
        bytes.extend_from_slice(name);
        bytes.resize(bytes.len().max(self.inner.certificate_len), 0);
        let certificate: Arc<[u8]> = bytes.into();
        let mut issued = self
            .inner
            .issued
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        issued
            .entry((node.clone(), key))
            .or_insert_with(|| certificate.clone())
            .clone()
    }

    fn tag(&self, name: &[u8], key: u64) -> u64 {
        fnv1a(&[
            &self.inner.secret.to_le_bytes(),
            b"cert",
            name,
            &key.to_le_bytes(),
        ])
    }

    /// The key a certificate binds to `subject`, if the authority issued it.
    fn check(&self, subject: &NodeName, certificate: &[u8]) -> Option<u64> {
        let word = |at: usize| -> Option<u64> {
            let bytes: [u8; 8] = certificate.get(at..at + 8)?.try_into().ok()?;
            Some(u64::from_le_bytes(bytes))
        };
        let (key, tag) = (word(0)?, word(8)?);
        let len = usize::from(*certificate.get(16)?);
        let name = certificate.get(HASH_CERTIFICATE_HEADER..HASH_CERTIFICATE_HEADER + len)?;
        let padding = certificate.get(HASH_CERTIFICATE_HEADER + len..)?;
        (name == subject.as_str().as_bytes()
            && tag == self.tag(name, key)
            && padding.iter().all(|b| *b == 0))
        .then_some(key)
    }
}

/// One node's [`Signatures`] under a [`HashAuthority`].
#[derive(Clone)]
pub struct HashSignatures {
    authority: HashAuthority,
    key: u64,
    certificate: Arc<[u8]>,
}

impl fmt::Debug for HashSignatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashSignatures").finish_non_exhaustive()
    }
}

impl Signatures for HashSignatures {
    fn certificate(&self) -> Arc<[u8]> {
        self.certificate.clone()
    }

    fn sign(&mut self, claim: &[u8]) -> [u8; SIGNATURE_LEN] {
        hash_signature(self.key, claim)
    }

    fn admit(&mut self, subject: &NodeName, certificate: &[u8]) -> Option<Credential> {
        let key = self.authority.check(subject, certificate)?;
        let shared = self.authority.certificate(subject, key);
        let certificate = if *shared == *certificate {
            shared
        } else {
            certificate.into()
        };
        Some(Credential {
            certificate,
            key: key.to_le_bytes().to_vec().into(),
        })
    }

    fn verify(&mut self, key: &[u8], claim: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        let Ok(key) = <[u8; 8]>::try_from(key) else {
            return false;
        };
        hash_signature(u64::from_le_bytes(key), claim) == *signature
    }
}

/// Eight keyed hashes of `claim`, one per eighth of the signature.
fn hash_signature(key: u64, claim: &[u8]) -> [u8; SIGNATURE_LEN] {
    let base = fnv1a(&[&key.to_le_bytes(), claim]);
    let mut out = [0; SIGNATURE_LEN];
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        let word = mix(base ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// The id of a certificate's key as signatures carry it: the low 32 bits of the FNV-1a hash of
/// the certificate. It only says which certificate to check a signature with (a node renews
/// its certificate now and then); the signature itself is what proves the claim.
pub fn key_id(certificate: &[u8]) -> u32 {
    fnv1a(&[certificate]) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    #[test]
    fn a_signature_verifies_only_for_its_signer_and_its_claim() {
        // What n1 signs, n2 can check with n1's admitted certificate, and nothing else passes.
        let authority = HashAuthority::new(7, 400);
        let mut n1 = authority.signer(&name("n1"));
        let mut n2 = authority.signer(&name("n2"));
        let signature = n1.sign(b"claim");
        let credential = n2.admit(&name("n1"), &n1.certificate()).unwrap();
        assert!(n2.verify(&credential.key, b"claim", &signature));
        assert!(!n2.verify(&credential.key, b"claim!", &signature));
        let forged = n2.sign(b"claim");
        assert!(!n2.verify(&credential.key, b"claim", &forged));
        assert_eq!(n1.certificate().len(), 400);
    }

    #[test]
    fn a_certificate_is_admitted_only_for_its_own_name_and_authority() {
        // Another node's certificate, another mesh's, or a tampered one is refused.
        let authority = HashAuthority::new(7, 100);
        let other_mesh = HashAuthority::new(8, 100);
        let mut n2 = authority.signer(&name("n2"));
        let n1 = authority.signer(&name("n1"));
        assert!(n2.admit(&name("n1"), &n1.certificate()).is_some());
        assert!(n2.admit(&name("n3"), &n1.certificate()).is_none());
        let foreign = other_mesh.signer(&name("n1"));
        assert!(n2.admit(&name("n1"), &foreign.certificate()).is_none());
        let mut tampered = n1.certificate().to_vec();
        tampered[0] ^= 1;
        assert!(n2.admit(&name("n1"), &tampered).is_none());
        assert!(n2.admit(&name("n1"), &[]).is_none());
        assert!(n2.admit(&name("n1"), &[1; 3]).is_none());
    }

    #[test]
    fn admitted_certificates_share_the_authority_copy() {
        // Many nodes admitting one certificate hold one allocation of it.
        let authority = HashAuthority::new(7, 300);
        let n1 = authority.signer(&name("n1"));
        let received = n1.certificate().to_vec();
        let mut a = authority.signer(&name("a"));
        let mut b = authority.signer(&name("b"));
        let x = a.admit(&name("n1"), &received).unwrap();
        let y = b.admit(&name("n1"), &received).unwrap();
        assert!(Arc::ptr_eq(&x.certificate, &y.certificate));
    }
}
