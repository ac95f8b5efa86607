//! Node names: DNS labels, valid by construction.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

use crate::Error;

/// Longest node name, the DNS label limit.
pub const NODE_NAME_LEN_MAX: usize = 63;

/// Size below which a thread's name interner is never pruned; above it, the interner is pruned
/// whenever it has doubled since the last pruning, so it holds at most about twice the names in
/// use plus this many.
const INTERNER_PRUNE_MIN: usize = 1024;

/// A node's name: a DNS label `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
///
/// The name is bound to the node's certificate, so the transport hands the core names it has
/// authenticated. Deserializing validates too, so a name decoded from the wire is as good as one
/// parsed from a flag.
///
/// The text is shared: a node keeps a member's name in several places (member table, probe
/// order, digest, piggybacked updates), and a clone costs a reference count, not an
/// allocation. Names are interned per thread as well, so the copies decoded from every frame
/// that mentions a member share one allocation: a simulator holding thousands of nodes keeps
/// one text per name, not one per node.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct NodeName(Arc<str>);

/// Byte-wise, as `str` orders. Written out because names are short and every member lookup
/// compares a few of them: an inline loop beats a call into the C library's `memcmp`.
impl Ord for NodeName {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        for (x, y) in a.iter().zip(b) {
            if x != y {
                return x.cmp(y);
            }
        }
        a.len().cmp(&b.len())
    }
}

impl PartialOrd for NodeName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

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
            Ok(NodeName(
                INTERNER.with(|interner| interner.borrow_mut().intern(s)),
            ))
        } else {
            Err(Error::InvalidName(s))
        }
    }
}

thread_local! {
    static INTERNER: RefCell<Interner> = RefCell::new(Interner::default());
}

/// The names this thread made, so that equal names share one allocation.
#[derive(Default)]
struct Interner {
    names: HashSet<Arc<str>>,
    prune_at: usize,
}

impl Interner {
    fn intern(&mut self, s: String) -> Arc<str> {
        if let Some(known) = self.names.get(s.as_str()) {
            return Arc::clone(known);
        }
        if self.names.len() >= self.prune_at.max(INTERNER_PRUNE_MIN) {
            // Names that only the interner still holds are no longer in use.
            self.names.retain(|name| Arc::strong_count(name) > 1);
            self.prune_at = 2 * self.names.len();
        }
        let name: Arc<str> = Arc::from(s);
        self.names.insert(Arc::clone(&name));
        name
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
        n.0.as_ref().to_owned()
    }
}

/// Encodes as the plain string, exactly as a `String` would, so the wire format does not depend
/// on how a name is held in memory.
impl Serialize for NodeName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
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
    fn names_order_as_their_strings() {
        // Member tables iterate in name order, so the hand-written order must be str's.
        let mut texts: Vec<String> = ["a", "a0", "a-b", "ab", "b", "n1", "n10", "n2", "z", "0"]
            .map(String::from)
            .to_vec();
        texts.push("a".repeat(NODE_NAME_LEN_MAX));
        texts.push(format!("{}b", "a".repeat(NODE_NAME_LEN_MAX - 1)));
        for x in &texts {
            let a: NodeName = x.parse().unwrap();
            assert_eq!(a.as_str(), x);
            for y in &texts {
                let b: NodeName = y.parse().unwrap();
                assert_eq!(a.cmp(&b), x.cmp(y), "{x} vs {y}");
                assert_eq!(a.partial_cmp(&b), Some(x.cmp(y)));
                assert_eq!(a == b, x == y);
            }
        }
    }

    #[test]
    fn a_name_encodes_exactly_as_its_string() {
        // The wire sees a plain string; how the name is held in memory does not show.
        let opts = bincode::DefaultOptions::new();
        let name: NodeName = "node-7".parse().unwrap();
        let bytes = bincode::Options::serialize(opts, &name).unwrap();
        assert_eq!(
            bytes,
            bincode::Options::serialize(opts, &"node-7".to_owned()).unwrap()
        );
        let back: NodeName = bincode::Options::deserialize(opts, &bytes).unwrap();
        assert_eq!(back, name);
        assert_eq!(String::from(back), "node-7");
    }

    #[test]
    fn equal_names_share_one_allocation() {
        // A name decoded from the wire points at the text of the one parsed before.
        let opts = bincode::DefaultOptions::new();
        let name: NodeName = "node-8".parse().unwrap();
        let bytes = bincode::Options::serialize(opts, &name).unwrap();
        let back: NodeName = bincode::Options::deserialize(opts, &bytes).unwrap();
        assert!(Arc::ptr_eq(&name.0, &back.0));
    }

    #[test]
    fn the_interner_forgets_names_no_longer_in_use() {
        // However many distinct names pass through, the interner keeps within its bound, and
        // names still in use stay shared.
        let kept: Vec<NodeName> = (0..10)
            .map(|i| format!("kept-{i}").parse().unwrap())
            .collect();
        for i in 0..10 * INTERNER_PRUNE_MIN {
            let gone: NodeName = format!("gone-{i}").parse().unwrap();
            drop(gone);
        }
        let held = INTERNER.with(|interner| interner.borrow().names.len());
        assert!(held <= INTERNER_PRUNE_MIN, "{held} names held");
        let again: NodeName = "kept-3".parse().unwrap();
        assert!(Arc::ptr_eq(&again.0, &kept[3].0));
    }

    #[test]
    fn deserializing_an_invalid_name_fails() {
        // The wire cannot smuggle in a name the parser would refuse.
        let opts = bincode::DefaultOptions::new();
        let bytes = bincode::Options::serialize(opts, &"Bad_Name".to_owned()).unwrap();
        assert!(bincode::Options::deserialize::<NodeName>(opts, &bytes).is_err());
    }
}
