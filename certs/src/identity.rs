//! What a certificate says: its identity URI, names, usages, validity and fingerprint.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Error, MeshName, NodeName, Result};

const SPIFFE_SCHEME: &str = "spiffe://";

/// The SHA-256 digest of a certificate's DER encoding, shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(pub [u8; 32]);

/// Computes the SHA-256 fingerprint of a DER certificate.
pub fn fingerprint(der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Fingerprint(out)
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = Error;

    /// Accepts 64 hex digits, optionally separated by ':' as `openssl x509 -fingerprint` prints.
    fn from_str(s: &str) -> Result<Self> {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        let bad = || Error::Malformed(format!("fingerprint {s:?} is not 64 hex digits"));
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

/// The identity a node certificate claims: `spiffe://<mesh>/node/<node>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentityClaim {
    /// The mesh the node belongs to.
    pub mesh: MeshName,
    /// The node's name.
    pub node: NodeName,
}

impl NodeIdentityClaim {
    /// The URI SAN that carries this identity.
    pub fn uri(&self) -> String {
        format!("{SPIFFE_SCHEME}{}/node/{}", self.mesh, self.node)
    }

    /// The DNS SAN (and TLS server name) of this node: `<node>.<mesh>`.
    pub fn dns_name(&self) -> String {
        format!("{}.{}", self.node, self.mesh)
    }

    /// Parses `spiffe://<mesh>/node/<node>`.
    pub fn parse_uri(uri: &str) -> Result<Self> {
        let bad = || Error::Identity(format!("{uri:?} is not spiffe://<mesh>/node/<node>"));
        let rest = uri.strip_prefix(SPIFFE_SCHEME).ok_or_else(bad)?;
        let (mesh, node) = rest.split_once("/node/").ok_or_else(bad)?;
        Ok(Self {
            mesh: MeshName::new(mesh).map_err(|_| bad())?,
            node: NodeName::new(node).map_err(|_| bad())?,
        })
    }

    /// Reads the identity of a node certificate: exactly one URI SAN, of the node form.
    pub fn from_cert(der: &[u8]) -> Result<Self> {
        let info = CertInfo::parse(der)?;
        match info.uris.as_slice() {
            [uri] => Self::parse_uri(uri),
            [] => Err(Error::Identity("the certificate has no URI SAN".into())),
            many => Err(Error::Identity(format!(
                "the certificate has {} URI SANs, expected exactly one",
                many.len()
            ))),
        }
    }
}

/// Reads the mesh name of a CA certificate from its one URI SAN `spiffe://<mesh>`.
pub(crate) fn ca_mesh(der: &[u8]) -> Result<MeshName> {
    let info = CertInfo::parse(der)?;
    if !info.is_ca {
        return Err(Error::Malformed("not a CA certificate".into()));
    }
    match info.uris.as_slice() {
        [uri] => uri
            .strip_prefix(SPIFFE_SCHEME)
            .and_then(|mesh| MeshName::new(mesh).ok())
            .ok_or_else(|| Error::Identity(format!("CA URI {uri:?} is not spiffe://<mesh>"))),
        _ => Err(Error::Identity(
            "a mesh CA carries exactly one URI SAN spiffe://<mesh>".into(),
        )),
    }
}

/// The fields of a certificate that `podmesh certs show` prints.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Whether basic constraints mark it a CA.
    pub is_ca: bool,
    /// URI SANs.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Extended key usages by name (`serverAuth`, `clientAuth`, ...).
    pub extended_key_usages: Vec<String>,
    /// Key usages by name (`digitalSignature`, `keyCertSign`, ...).
    pub key_usages: Vec<String>,
    /// SHA-256 of the DER encoding.
    pub fingerprint: Fingerprint,
}

impl CertInfo {
    /// Parses a DER certificate; trailing bytes or a bad encoding are errors.
    pub fn parse(der: &[u8]) -> Result<Self> {
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| Error::Malformed(format!("cannot parse certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::Malformed(
                "trailing bytes after the certificate".into(),
            ));
        }
        let mut info = CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca: cert.is_ca(),
            uris: Vec::new(),
            dns_names: Vec::new(),
            ips: Vec::new(),
            extended_key_usages: Vec::new(),
            key_usages: Vec::new(),
            fingerprint: fingerprint(der),
        };
        let malformed = |e: x509_parser::error::X509Error| Error::Malformed(e.to_string());
        if let Some(san) = cert.subject_alternative_name().map_err(malformed)? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => info.uris.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => info.dns_names.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => info.ips.extend(ip_from_bytes(bytes)),
                    _ => {}
                }
            }
        }
        if let Some(eku) = cert.extended_key_usage().map_err(malformed)? {
            let eku = eku.value;
            let named = [
                (eku.server_auth, "serverAuth"),
                (eku.client_auth, "clientAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
                (eku.any, "anyExtendedKeyUsage"),
            ];
            info.extended_key_usages = named
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, name)| (*name).to_owned())
                .collect();
        }
        if let Some(ku) = cert.key_usage().map_err(malformed)? {
            let ku = ku.value;
            let named = [
                (ku.digital_signature(), "digitalSignature"),
                (ku.non_repudiation(), "nonRepudiation"),
                (ku.key_encipherment(), "keyEncipherment"),
                (ku.data_encipherment(), "dataEncipherment"),
                (ku.key_agreement(), "keyAgreement"),
                (ku.key_cert_sign(), "keyCertSign"),
                (ku.crl_sign(), "cRLSign"),
            ];
            info.key_usages = named
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, name)| (*name).to_owned())
                .collect();
        }
        Ok(info)
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        writeln!(f, "subject:      {}", self.subject)?;
        writeln!(f, "issuer:       {}", self.issuer)?;
        writeln!(f, "serial:       {}", self.serial)?;
        writeln!(f, "not before:   {}", self.not_before)?;
        writeln!(f, "not after:    {}", self.not_after)?;
        writeln!(f, "CA:           {}", if self.is_ca { "yes" } else { "no" })?;
        writeln!(f, "URI SANs:     {}", list(&self.uris))?;
        writeln!(f, "DNS SANs:     {}", list(&self.dns_names))?;
        let ips: Vec<String> = self.ips.iter().map(ToString::to_string).collect();
        writeln!(f, "IP SANs:      {}", list(&ips))?;
        writeln!(f, "key usage:    {}", list(&self.key_usages))?;
        writeln!(f, "ext. usage:   {}", list(&self.extended_key_usages))?;
        write!(f, "sha256:       {}", self.fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_identity_uri_round_trips_and_rejects_other_shapes() {
        // Only spiffe://<mesh>/node/<node> with DNS-label names is an identity.
        let claim = NodeIdentityClaim::parse_uri("spiffe://prod/node/n1").unwrap();
        assert_eq!((claim.mesh.as_str(), claim.node.as_str()), ("prod", "n1"));
        assert_eq!(claim.uri(), "spiffe://prod/node/n1");
        assert_eq!(claim.dns_name(), "n1.prod");
        for bad in [
            "https://prod/node/n1",
            "spiffe://prod/pod/n1",
            "spiffe://prod/node/N1",
            "spiffe://prod/node/n1/extra",
            "spiffe://node/n1",
        ] {
            assert!(NodeIdentityClaim::parse_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        // The blocklist accepts the forms operators copy from tools.
        let fp = fingerprint(b"abc");
        let plain = fp.to_string();
        let colons = plain
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(plain.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(colons.parse::<Fingerprint>().unwrap(), fp);
        assert!("abc".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        // Parsing never panics on arbitrary bytes.
        for bytes in [&b""[..], b"\x30", b"\x30\x82\xff\xff", &[0u8; 100]] {
            assert!(CertInfo::parse(bytes).is_err());
        }
    }
}
