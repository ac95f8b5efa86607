//! Mesh and node names: DNS labels, valid by construction.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Longest DNS label (RFC 1035 section 2.3.4).
pub const LABEL_LEN_MAX: usize = 63;

/// The rule every mesh and node name follows, quoted in error messages.
pub const LABEL_RULE: &str =
    "1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit";

fn check_label(kind: &'static str, s: &str) -> Result<(), Error> {
    let bytes = s.as_bytes();
    let edge_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = !bytes.is_empty()
        && bytes.len() <= LABEL_LEN_MAX
        && bytes.first().is_some_and(edge_ok)
        && bytes.last().is_some_and(edge_ok)
        && bytes.iter().all(|b| edge_ok(b) || *b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidName {
            kind,
            name: s.to_owned(),
        })
    }
}

macro_rules! label_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses `s`, refusing anything that is not a DNS label.
            pub fn new(s: impl Into<String>) -> Result<Self, Error> {
                let s = s.into();
                check_label($kind, &s)?;
                Ok(Self(s))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

label_newtype!(
    /// The name of a mesh: one DNS label, shared by every node certificate the mesh CA issues.
    MeshName,
    "mesh"
);
label_newtype!(
    /// The name of a node: one DNS label, bound to the node's certificate.
    NodeName,
    "node"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_accepted() {
        // Typical names, the shortest and the longest allowed label.
        for ok in ["n1", "a", "node-7", "0", &"a".repeat(63)] {
            assert_eq!(NodeName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn names_that_are_not_dns_labels_are_refused_with_the_rule() {
        // Upper case, edges with '-', dots, empty and over-long names are all refused.
        for bad in ["", "N1", "-a", "a-", "a.b", "a_b", "é", &"a".repeat(64)] {
            let err = MeshName::new(bad).unwrap_err();
            assert!(err.to_string().contains(LABEL_RULE), "{err}");
        }
    }
}
