//! Pods: names, addresses, status and the durable record each node keeps of its own Pods.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::NodeName;

/// Longest Pod name.
pub const POD_NAME_LEN_MAX: usize = 64;

/// A string that is not a valid Pod name or Pod address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pod {what} {input:?}: {rule}")]
pub struct InvalidPod {
    what: &'static str,
    input: String,
    rule: &'static str,
}

const POD_RULE: &str =
    "expected 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-', not '.' or '..'";
const ADDR_RULE: &str = "expected pod@node";

/// A Pod's name: `[A-Za-z0-9._-]{1,64}`, not `.` or `..`; unique per node.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodName(String);

impl PodName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PodName {
    type Error = InvalidPod;

    fn try_from(s: String) -> Result<Self, InvalidPod> {
        let valid = !s.is_empty()
            && s.len() <= POD_NAME_LEN_MAX
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(PodName(s))
        } else {
            Err(InvalidPod {
                what: "name",
                input: s,
                rule: POD_RULE,
            })
        }
    }
}

impl FromStr for PodName {
    type Err = InvalidPod;

    fn from_str(s: &str) -> Result<Self, InvalidPod> {
        PodName::try_from(s.to_owned())
    }
}

impl From<PodName> for String {
    fn from(name: PodName) -> String {
        name.0
    }
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A Pod's full address, `pod@node`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodAddr {
    /// The Pod's name on its node.
    pub pod: PodName,
    /// The node hosting it.
    pub node: NodeName,
}

impl PodAddr {
    /// `pod@node`.
    pub fn new(pod: PodName, node: NodeName) -> Self {
        PodAddr { pod, node }
    }
}

impl FromStr for PodAddr {
    type Err = InvalidPod;

    fn from_str(s: &str) -> Result<Self, InvalidPod> {
        let bad = || InvalidPod {
            what: "address",
            input: s.to_owned(),
            rule: ADDR_RULE,
        };
        let (pod, node) = s.rsplit_once('@').ok_or_else(bad)?;
        Ok(PodAddr {
            pod: pod.parse().map_err(|_| bad())?,
            node: node.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for PodAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.pod, self.node.as_str())
    }
}

impl fmt::Debug for PodAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// What a Pod is doing, as reported by the program attached to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PodStatus {
    /// Waiting for work; may change its peers.
    Idle,
    /// Working; peers cannot change until it is idle or paused.
    Running,
    /// Suspended; may change its peers.
    Paused,
    /// Finished; not live.
    Stopped,
}

impl PodStatus {
    /// The lowercase name used by the CLI and the local API.
    pub fn as_str(self) -> &'static str {
        match self {
            PodStatus::Idle => "idle",
            PodStatus::Running => "running",
            PodStatus::Paused => "paused",
            PodStatus::Stopped => "stopped",
        }
    }
}

impl FromStr for PodStatus {
    type Err = InvalidPod;

    fn from_str(s: &str) -> Result<Self, InvalidPod> {
        Ok(match s {
            "idle" => PodStatus::Idle,
            "running" => PodStatus::Running,
            "paused" => PodStatus::Paused,
            "stopped" => PodStatus::Stopped,
            _ => {
                return Err(InvalidPod {
                    what: "status",
                    input: s.to_owned(),
                    rule: "expected idle, running, paused or stopped",
                });
            }
        })
    }
}

/// The durable record of one Pod, kept by its node and gossiped to the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Its name.
    pub name: PodName,
    /// Its status.
    pub status: PodStatus,
    /// Its peers, sorted.
    pub peers: BTreeSet<PodAddr>,
    /// Children it spawned on the same node.
    pub spawned_children: BTreeSet<PodName>,
    /// Children it spawned and later reclaimed.
    pub reclaimed_children: BTreeSet<PodName>,
}

/// Replicated state keys that carry Pod records start with this.
pub const POD_STATE_PREFIX: &str = "pod/";

impl PodRecord {
    /// The command that gossips Pod `pod`'s record as replicated state, or its removal: what
    /// [`crate::Node`] does with [`crate::PeersOutput::Publish`].
    pub(crate) fn publish_command(pod: &PodName, record: Option<&PodRecord>) -> crate::Command {
        let key = PodRecord::state_key(pod);
        match record {
            Some(record) => crate::Command::PutState {
                key,
                value: record.encode(),
            },
            None => crate::Command::DeleteState { key },
        }
    }

    /// Whether this Pod is live while its node is in `node_state`: the node alive or suspect
    /// (not yet declared dead) and the Pod not stopped. [`crate::Node::pod_live`] and every
    /// listing of Pods use this one rule.
    pub fn live_on(&self, node_state: crate::MemberState) -> bool {
        node_state.is_live() && self.status != PodStatus::Stopped
    }

    /// The replicated state key of this Pod: `pod/<name>`.
    pub fn state_key(name: &PodName) -> String {
        format!("{POD_STATE_PREFIX}{name}")
    }

    /// Encodes the record as a replicated state value.
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode_record(self)
    }

    /// Decodes a replicated state value; never panics on arbitrary bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        crate::codec::decode_record(bytes)
    }

    /// A new idle Pod with no relations.
    pub fn new(name: PodName) -> Self {
        PodRecord {
            name,
            status: PodStatus::Idle,
            peers: BTreeSet::new(),
            spawned_children: BTreeSet::new(),
            reclaimed_children: BTreeSet::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_follow_the_documented_rule() {
        // Letters, digits, dot, underscore and dash, 1 to 64 of them, but never . or ..
        for ok in ["a", "Agent_7", "svc.v2", "x-y", "...", &"p".repeat(64)] {
            assert!(ok.parse::<PodName>().is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "a@b", "é", &"p".repeat(65)] {
            assert!(bad.parse::<PodName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pod_addresses_split_at_the_last_at_sign() {
        // `pod@node` round-trips; a missing or invalid part is refused.
        let addr: PodAddr = "agent@n1".parse().unwrap();
        assert_eq!((addr.pod.as_str(), addr.node.as_str()), ("agent", "n1"));
        assert_eq!(addr.to_string(), "agent@n1");
        for bad in ["agent", "@n1", "agent@", "agent@N1", "a@b@c"] {
            assert!(bad.parse::<PodAddr>().is_err(), "{bad}");
        }
    }
}
