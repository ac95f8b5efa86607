//! Node names: DNS labels, valid by construction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Longest node name, the DNS label limit.
pub const NODE_NAME_LEN_MAX: usize = 63;

/// A node's name: a DNS label `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
///
/// The name is bound to the node's certificate, so the transport hands the core names it has
/// authenticated. Deserializing validates too, so a name decoded from the wire is as good as one
/// parsed from a flag.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_valid(s: &str) -> bool {
    let bytes = s.as_bytes();
    let inner_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let edge_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= NODE_NAME_LEN_MAX
                && edge_ok(first)
                && edge_ok(last)
                && bytes.iter().all(inner_ok)
        }
        _ => false,
    }
}

impl TryFrom<String> for NodeName {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        if is_valid(&s) {
            Ok(NodeName(s))
        } else {
            Err(Error::InvalidName(s))
        }
    }
}

impl FromStr for NodeName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        NodeName::try_from(s.to_owned())
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

impl AsRef<str> for NodeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_follow_the_dns_label_rule() {
        // Only lowercase DNS labels of at most 63 bytes, without edge hyphens, are names.
        for ok in ["a", "n1", "node-7", "0", &"a".repeat(63)] {
            assert!(ok.parse::<NodeName>().is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(bad.parse::<NodeName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn deserializing_an_invalid_name_fails() {
        // The wire cannot smuggle in a name the parser would refuse.
        let opts = bincode::DefaultOptions::new();
        let bytes = bincode::Options::serialize(opts, &"Bad_Name".to_owned()).unwrap();
        assert!(bincode::Options::deserialize::<NodeName>(opts, &bytes).is_err());
    }
}
