//! The daemon's [`Signatures`] (DESIGN section 2): this node's claims signed with its node key,
//! and other nodes' certificates admitted exactly as the TLS handshake admits them (the mesh's
//! CA bundle, validity, usages, identity, blocklist).

use std::sync::Arc;

use podmesh_certs::{ClaimKeys, verify_claim};
use podmesh_mesh::{Credential, NodeName, SIGNATURE_LEN, Signatures};

/// The node's [`ClaimKeys`] as the core takes them. A reload builds new ones and hands them to
/// the node ([`podmesh_mesh::Node::set_signatures`]).
#[derive(Debug)]
pub struct NodeSignatures(pub ClaimKeys);

impl Signatures for NodeSignatures {
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
