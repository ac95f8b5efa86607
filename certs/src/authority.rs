//! The mesh certificate authority and the node certificates it issues.

use std::fs;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use time::{Duration, OffsetDateTime};

use crate::files::{FileMode, read_certs, write_file};
use crate::identity::{CertInfo, NodeIdentityClaim, ca_mesh};
use crate::{Error, MeshName, NodeName, Result};

/// Default lifetime of a mesh CA: ten years, so rotation is a planned event.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default lifetime of a node certificate: 90 days, short enough that a lost key expires soon.
pub const DEFAULT_NODE_DAYS: u32 = 90;
/// How far `not_before` is back-dated, so clocks a little behind still accept a new certificate.
pub const BACKDATE: Duration = Duration::minutes(5);

/// Random serial number length in bytes (RFC 5280 allows at most 20).
const SERIAL_LEN: usize = 16;

/// File names inside a CA directory and a node certificate directory.
const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const NODE_CERT_FILE: &str = "node.crt";
const NODE_KEY_FILE: &str = "node.key";

/// How long a new CA is valid.
#[derive(Clone, Copy, Debug)]
pub struct CaValidity {
    /// Lifetime in days from now.
    pub days: u32,
}

impl Default for CaValidity {
    fn default() -> Self {
        Self {
            days: DEFAULT_CA_DAYS,
        }
    }
}

/// Options for a node certificate.
#[derive(Clone, Debug)]
pub struct NodeCertOptions {
    /// Lifetime in days; the certificate never outlives the CA.
    pub days: u32,
    /// Extra DNS names or IP addresses (advertised addresses) to add as SANs.
    pub extra_sans: Vec<String>,
    /// Start of validity before back-dating; `None` means now. Setting it in the past issues a
    /// certificate that may already be expired, which operators use to test their monitoring.
    pub valid_from: Option<OffsetDateTime>,
}

impl Default for NodeCertOptions {
    fn default() -> Self {
        Self {
            days: DEFAULT_NODE_DAYS,
            extra_sans: Vec::new(),
            valid_from: None,
        }
    }
}

/// A mesh CA: its signing certificate and key, plus any other trusted CAs (rotation).
pub struct MeshCa {
    mesh: MeshName,
    /// PEM of the whole `ca.crt`: the signing CA first, then any other trusted CAs.
    bundle_pem: String,
    key: KeyPair,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("MeshCa")
            .field("mesh", &self.mesh)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; SERIAL_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Config("the system random source failed".into()))?;
    // Clear the sign bit (serials are positive) and set the next one so the serial keeps its
    // full length after DER's minimal-length encoding.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

impl MeshCa {
    /// Creates a new CA for `mesh`: ECDSA P-256, `CN=<mesh> mesh CA`, keyCertSign + cRLSign.
    pub fn create(mesh: MeshName, validity: CaValidity) -> Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{mesh} mesh CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI(format!("spiffe://{mesh}").try_into()?)];
        params.serial_number = Some(random_serial()?);
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(i64::from(validity.days));
        let cert = params.self_signed(&key)?;
        Ok(Self {
            mesh,
            bundle_pem: cert.pem(),
            not_after: params.not_after,
            key,
        })
    }

    /// Loads `ca.crt` and `ca.key` from a CA directory. The first certificate in `ca.crt` must be
    /// the one `ca.key` belongs to; further certificates are other trusted CAs (rotation).
    pub fn load(dir: &Path) -> Result<Self> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let certs = read_certs(&cert_path)?;
        let bundle_pem = fs::read_to_string(&cert_path).map_err(|source| Error::Io {
            path: cert_path.clone(),
            source,
        })?;
        let key_pem = fs::read_to_string(&key_path).map_err(|source| Error::Io {
            path: key_path.clone(),
            source,
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| Error::Pem {
            path: key_path.clone(),
            what: format!("not a usable CA key ({e})"),
        })?;
        let signer = &certs[0]; // read_certs returns at least one certificate.
        let mesh = ca_mesh(signer)?;
        let info = CertInfo::parse(signer)?;
        if !spki_matches(signer, &key)? {
            return Err(Error::Pem {
                path: key_path,
                what: format!(
                    "this key does not belong to the first certificate of {CA_CERT_FILE}"
                ),
            });
        }
        Ok(Self {
            mesh,
            bundle_pem,
            key,
            not_after: info.not_after,
        })
    }

    /// Writes `ca.crt` and `ca.key` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path, force: bool) -> Result<()> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !force {
            for path in [&cert_path, &key_path] {
                if path.exists() {
                    return Err(Error::Exists(path.clone()));
                }
            }
        }
        write_file(
            &key_path,
            self.key.serialize_pem().as_bytes(),
            FileMode::Secret,
            force,
        )?;
        write_file(
            &cert_path,
            self.bundle_pem.as_bytes(),
            FileMode::Public,
            force,
        )
    }

    /// The mesh this CA signs for.
    pub fn mesh(&self) -> &MeshName {
        &self.mesh
    }

    /// PEM of every trusted CA certificate, the signing one first.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// When the signing CA expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues a node certificate as DESIGN section 2 describes: one URI SAN (the identity), one
    /// DNS SAN `<node>.<mesh>`, any extra SANs, serverAuth + clientAuth, a random serial,
    /// back-dated, never past the CA's own expiry.
    pub fn issue(&self, node: &NodeName, options: &NodeCertOptions) -> Result<NodeCertificate> {
        let claim = NodeIdentityClaim {
            mesh: self.mesh.clone(),
            node: node.clone(),
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let start = options.valid_from.unwrap_or_else(OffsetDateTime::now_utc);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, claim.dns_name());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::URI(claim.uri().try_into()?),
            SanType::DnsName(claim.dns_name().try_into()?),
        ];
        for san in &options.extra_sans {
            let san = match san.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(san.clone().try_into()?),
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = start - BACKDATE;
        params.not_after = (start + Duration::days(i64::from(options.days))).min(self.not_after);
        if params.not_after <= params.not_before {
            return Err(Error::Config(format!(
                "the certificate would not be valid at all: the CA expires at {}",
                self.not_after
            )));
        }
        let signer = read_first_cert(&self.bundle_pem)?;
        let issuer = Issuer::from_ca_cert_der(&signer, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(NodeCertificate {
            claim,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            bundle_pem: self.bundle_pem.clone(),
        })
    }
}

fn read_first_cert(pem: &str) -> Result<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(|c| c.ok())
        .ok_or_else(|| Error::Malformed("the CA bundle holds no certificate".into()))
}

fn spki_matches(cert: &[u8], key: &KeyPair) -> Result<bool> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) =
        X509Certificate::from_der(cert).map_err(|e| Error::Malformed(e.to_string()))?;
    Ok(parsed.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// A freshly issued node certificate with its key and the CA bundle to trust.
#[derive(Clone)]
pub struct NodeCertificate {
    /// The identity inside the certificate.
    pub claim: NodeIdentityClaim,
    /// `node.crt`.
    pub cert_pem: String,
    /// `node.key`.
    pub key_pem: String,
    /// `ca.crt`: every CA the node trusts.
    pub bundle_pem: String,
}

impl std::fmt::Debug for NodeCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCertificate")
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

impl NodeCertificate {
    /// The identity a node loads from these files, built in memory: for programs that run many
    /// nodes in one process, such as the simulator with real signatures.
    pub fn identity(&self) -> Result<crate::NodeIdentity> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |pem: &str| -> Result<Vec<CertificateDer<'static>>> {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::Malformed(e.to_string()))
        };
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::Malformed(e.to_string()))?;
        crate::NodeIdentity::new(certs(&self.bundle_pem)?, certs(&self.cert_pem)?, key)
    }

    /// Writes `ca.crt`, `node.crt` and `node.key` (mode 0600) into `dir`; never the CA key.
    pub fn write(&self, dir: &Path, force: bool) -> Result<()> {
        let files = [
            (CA_CERT_FILE, &self.bundle_pem, FileMode::Public),
            (NODE_CERT_FILE, &self.cert_pem, FileMode::Public),
            (NODE_KEY_FILE, &self.key_pem, FileMode::Secret),
        ];
        if !force {
            for (name, _, _) in &files {
                let path = dir.join(name);
                if path.exists() {
                    return Err(Error::Exists(path));
                }
            }
        }
        for (name, contents, mode) in files {
            write_file(&dir.join(name), contents.as_bytes(), mode, force)?;
        }
        Ok(())
    }
}

/// Names of the files in a node's certificate directory.
pub(crate) mod file_names {
    pub(crate) const CA: &str = super::CA_CERT_FILE;
    pub(crate) const CERT: &str = super::NODE_CERT_FILE;
    pub(crate) const KEY: &str = super::NODE_KEY_FILE;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> MeshCa {
        MeshCa::create(MeshName::new("test").unwrap(), CaValidity::default()).unwrap()
    }

    #[test]
    fn node_certificate_carries_exactly_the_identity_names_and_usages() {
        // The issued certificate has one URI SAN, one DNS SAN, both EKUs and a back-dated start.
        let ca = ca();
        let node = ca
            .issue(&NodeName::new("n1").unwrap(), &NodeCertOptions::default())
            .unwrap();
        let der = read_first_cert(&node.cert_pem).unwrap();
        let info = CertInfo::parse(&der).unwrap();
        assert_eq!(info.uris, ["spiffe://test/node/n1"]);
        assert_eq!(info.dns_names, ["n1.test"]);
        assert_eq!(info.extended_key_usages, ["serverAuth", "clientAuth"]);
        assert!(!info.is_ca);
        let lifetime = info.not_after - info.not_before;
        assert_eq!(lifetime, Duration::days(90) + BACKDATE);
        assert!(info.not_before < OffsetDateTime::now_utc() - Duration::minutes(4));
        assert_eq!(info.serial.len(), 2 * SERIAL_LEN);
    }

    #[test]
    fn node_certificate_never_outlives_the_ca() {
        // A 10-year node certificate from a 30-day CA ends when the CA ends.
        let ca = MeshCa::create(MeshName::new("test").unwrap(), CaValidity { days: 30 }).unwrap();
        let options = NodeCertOptions {
            days: 3650,
            ..Default::default()
        };
        let node = ca.issue(&NodeName::new("n1").unwrap(), &options).unwrap();
        let info = CertInfo::parse(&read_first_cert(&node.cert_pem).unwrap()).unwrap();
        assert_eq!(
            info.not_after.unix_timestamp(),
            ca.not_after().unix_timestamp()
        );
    }

    #[test]
    fn serials_differ_between_certificates() {
        // Two certificates for the same node never share a serial.
        let ca = ca();
        let name = NodeName::new("n1").unwrap();
        let serial = |c: NodeCertificate| {
            CertInfo::parse(&read_first_cert(&c.cert_pem).unwrap())
                .unwrap()
                .serial
        };
        let a = serial(ca.issue(&name, &NodeCertOptions::default()).unwrap());
        let b = serial(ca.issue(&name, &NodeCertOptions::default()).unwrap());
        assert_ne!(a, b);
    }

    #[test]
    fn ca_round_trips_through_its_directory_and_checks_its_key() {
        // A written CA loads back with its mesh; a key that belongs to another CA is refused.
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        ca.write(dir.path(), false).unwrap();
        let loaded = MeshCa::load(dir.path()).unwrap();
        assert_eq!(loaded.mesh().as_str(), "test");
        assert!(matches!(ca.write(dir.path(), false), Err(Error::Exists(_))));

        let other = MeshCa::create(MeshName::new("test").unwrap(), CaValidity::default()).unwrap();
        fs::write(dir.path().join(CA_KEY_FILE), other.key.serialize_pem()).unwrap();
        let err = MeshCa::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
    }

    #[test]
    fn extra_sans_accept_host_names_and_addresses() {
        // Advertised addresses become IP SANs, host names DNS SANs, after the identity names.
        let options = NodeCertOptions {
            extra_sans: vec!["10.0.0.7".into(), "host.example".into()],
            ..Default::default()
        };
        let node = ca().issue(&NodeName::new("n1").unwrap(), &options).unwrap();
        let info = CertInfo::parse(&read_first_cert(&node.cert_pem).unwrap()).unwrap();
        assert_eq!(info.dns_names, ["n1.test", "host.example"]);
        assert_eq!(info.ips, ["10.0.0.7".parse::<std::net::IpAddr>().unwrap()]);
    }
}
