//! The daemon's [`Signatures`] (DESIGN section 2): this node's claims signed with its node key,
//! and other nodes' certificates admitted exactly as the TLS handshake admits them (the mesh's
//! CA bundle, validity, usages, identity, blocklist).

use std::sync::Arc;

use podmesh_certs::{ClaimSigner, MeshTls, NodeIdentity, claim_key, verify_claim};
use podmesh_mesh::{Credential, NodeName, SIGNATURE_LEN, Signatures};

/// Signs with the key of `node.key` and admits certificates under one [`MeshTls`]. A reload
/// builds a new one and hands it to the node ([`podmesh_mesh::Node::set_signatures`]).
#[derive(Debug)]
pub struct NodeSignatures {
    signer: ClaimSigner,
    certificate: Arc<[u8]>,
    tls: MeshTls,
}

impl NodeSignatures {
    /// Signatures for the node of `identity`, admitting what `tls` admits.
    pub fn new(identity: &NodeIdentity, tls: MeshTls) -> anyhow::Result<Self> {
        let signer = identity.claim_signer()?;
        let certificate = identity
            .chain
            .first()
            .map(|leaf| Arc::from(leaf.as_ref()))
            .ok_or_else(|| anyhow::anyhow!("node.crt holds no certificate"))?;
        Ok(Self {
            signer,
            certificate,
            tls,
        })
    }
}

impl Signatures for NodeSignatures {
    fn certificate(&self) -> Arc<[u8]> {
        self.certificate.clone()
    }

    fn sign(&mut self, claim: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signer.sign(claim)
    }

    fn admit(&mut self, subject: &NodeName, certificate: &[u8]) -> Option<Credential> {
        let identity = self.tls.admit_certificate(certificate).ok()?;
        if identity.node.as_str() != subject.as_str() {
            return None;
        }
        let key = claim_key(certificate).ok()?;
        Some(Credential {
            certificate: certificate.into(),
            key: key.into(),
        })
    }

    fn verify(&mut self, key: &[u8], claim: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        verify_claim(key, claim, signature)
    }
}
