//! What a node knows of every Pod in the mesh: its own records plus the records other nodes
//! gossip, with liveness from membership. Pure functions over snapshots, so they are tested
//! without a network.

use std::collections::BTreeMap;

use podmesh_mesh::{MemberState, NodeName, PodAddr, PodName, PodRecord};
use serde_json::{Value, json};

use crate::api::{ApiError, ErrorCode};

/// One Pod as the directory knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// The Pod's record (from its node, possibly via gossip).
    pub record: PodRecord,
    /// Its node's membership state as this node sees it.
    pub node_state: MemberState,
    /// When this node last saw the record change, ms since the Unix epoch.
    pub updated_at_ms: u64,
}

impl DirectoryEntry {
    /// Live: the node is alive (or suspect, not yet declared dead) and the Pod is not stopped.
    pub fn live(&self) -> bool {
        self.record.live_on(self.node_state)
    }
}

/// Every known Pod, by address.
pub type Directory = BTreeMap<PodAddr, DirectoryEntry>;

/// Why a Pod is visible to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The Pod itself.
    SelfPod,
    /// A child it spawned.
    SpawnedChild,
    /// A peer.
    Peer,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::SelfPod => "self_pod",
            Reason::SpawnedChild => "spawned_child",
            Reason::Peer => "peer",
        }
    }
}

/// Resolves what a user typed as a target: `pod@node`, else the local Pod of that name, else
/// the only Pod of that name in the mesh.
pub fn resolve(target: &str, me: &NodeName, directory: &Directory) -> Result<PodAddr, ApiError> {
    if target.contains('@') {
        return target.parse().map_err(|e: podmesh_mesh::InvalidPod| {
            ApiError::new(ErrorCode::InvalidRequest, e.to_string())
        });
    }
    let name: PodName = target.parse().map_err(|e: podmesh_mesh::InvalidPod| {
        ApiError::new(ErrorCode::InvalidRequest, e.to_string())
    })?;
    let local = PodAddr::new(name.clone(), me.clone());
    if directory.contains_key(&local) {
        return Ok(local);
    }
    let candidates: Vec<&PodAddr> = directory.keys().filter(|a| a.pod == name).collect();
    match candidates.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no pod named {name} in the mesh"),
        )),
        many => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "several pods are named {name}: {}; give pod@node",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The Pods visible to `pod`, first reason wins: itself, its spawned children, its peers.
pub fn visible(pod: &PodAddr, record: &PodRecord, directory: &Directory) -> Vec<Value> {
    let mut seen = BTreeMap::new();
    let mut order = Vec::new();
    let mut add = |addr: PodAddr, reason: Reason| {
        if !seen.contains_key(&addr) {
            seen.insert(addr.clone(), reason);
            order.push(addr);
        }
    };
    add(pod.clone(), Reason::SelfPod);
    for child in &record.spawned_children {
        add(
            PodAddr::new(child.clone(), pod.node.clone()),
            Reason::SpawnedChild,
        );
    }
    for peer in &record.peers {
        add(peer.clone(), Reason::Peer);
    }
    order
        .into_iter()
        .map(|addr| entry_json(&addr, Some(seen[&addr]), directory.get(&addr)))
        .collect()
}

/// One Pod as JSON, for `list_pods` and the directory.
pub fn entry_json(addr: &PodAddr, reason: Option<Reason>, entry: Option<&DirectoryEntry>) -> Value {
    let mut value = json!({
        "address": addr.to_string(),
        "pod": addr.pod.as_str(),
        "node": addr.node.as_str(),
        "status": entry.map_or("unknown", |e| e.record.status.as_str()),
        "live": entry.is_some_and(DirectoryEntry::live),
        "node_state": entry.map_or("unknown", |e| e.node_state.as_str()),
        "updated_at_ms": entry.map(|e| e.updated_at_ms),
    });
    if let Some(reason) = reason {
        value["reason"] = json!(reason.as_str());
    }
    if let Some(entry) = entry {
        value["peers"] = json!(
            entry
                .record
                .peers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        );
    }
    value
}

/// A Pod record as JSON.
pub fn record_json(node: &NodeName, record: &PodRecord) -> Value {
    json!({
        "address": PodAddr::new(record.name.clone(), node.clone()).to_string(),
        "name": record.name.as_str(),
        "status": record.status.as_str(),
        "peers": record.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "spawned_children": record.spawned_children.iter().map(PodName::as_str).collect::<Vec<_>>(),
        "reclaimed_children": record.reclaimed_children.iter().map(PodName::as_str).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use podmesh_mesh::PodStatus;

    use super::*;

    fn entry(name: &str, state: MemberState, status: PodStatus) -> DirectoryEntry {
        let mut record = PodRecord::new(name.parse().unwrap());
        record.status = status;
        DirectoryEntry {
            record,
            node_state: state,
            updated_at_ms: 0,
        }
    }

    fn directory(items: &[(&str, MemberState, PodStatus)]) -> Directory {
        items
            .iter()
            .map(|(addr, state, status)| {
                let addr: PodAddr = addr.parse().unwrap();
                let e = entry(addr.pod.as_str(), *state, *status);
                (addr, e)
            })
            .collect()
    }

    #[test]
    fn a_bare_name_prefers_the_local_pod_then_the_only_one_in_the_mesh() {
        // Resolution rules of DESIGN section 2, including the candidate list.
        let me: NodeName = "n1".parse().unwrap();
        let dir = directory(&[
            ("a@n1", MemberState::Alive, PodStatus::Idle),
            ("a@n2", MemberState::Alive, PodStatus::Idle),
            ("b@n2", MemberState::Alive, PodStatus::Idle),
            ("c@n2", MemberState::Alive, PodStatus::Idle),
            ("c@n3", MemberState::Alive, PodStatus::Idle),
        ]);
        assert_eq!(resolve("a", &me, &dir).unwrap().to_string(), "a@n1");
        assert_eq!(resolve("b", &me, &dir).unwrap().to_string(), "b@n2");
        assert_eq!(resolve("x@n9", &me, &dir).unwrap().to_string(), "x@n9");
        let several = resolve("c", &me, &dir).unwrap_err();
        assert!(several.message.contains("c@n2, c@n3"), "{several}");
        assert_eq!(
            resolve("zz", &me, &dir).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            resolve("bad name", &me, &dir).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            resolve("a@N1", &me, &dir).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn visibility_lists_self_then_children_then_peers_first_reason_winning() {
        // A child that is also a peer shows once, as spawned_child; liveness follows membership.
        let dir = directory(&[
            ("p@n1", MemberState::Alive, PodStatus::Idle),
            ("kid@n1", MemberState::Alive, PodStatus::Running),
            ("far@n2", MemberState::Dead, PodStatus::Idle),
            ("done@n3", MemberState::Alive, PodStatus::Stopped),
        ]);
        let me: PodAddr = "p@n1".parse().unwrap();
        let mut record = PodRecord::new("p".parse().unwrap());
        record.spawned_children.insert("kid".parse().unwrap());
        for peer in ["kid@n1", "far@n2", "done@n3"] {
            record.peers.insert(peer.parse().unwrap());
        }
        let rows = visible(&me, &record, &dir);
        let summary: Vec<(String, String, bool)> = rows
            .iter()
            .map(|r| {
                (
                    r["address"].as_str().unwrap().to_owned(),
                    r["reason"].as_str().unwrap().to_owned(),
                    r["live"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("p@n1".to_owned(), "self_pod".to_owned(), true),
                ("kid@n1".to_owned(), "spawned_child".to_owned(), true),
                ("done@n3".to_owned(), "peer".to_owned(), false),
                ("far@n2".to_owned(), "peer".to_owned(), false),
            ]
        );
    }
}
