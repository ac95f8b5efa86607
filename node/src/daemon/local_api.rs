//! The local API's methods (docs/local-api.md): each request of a local client answered from
//! the node's state at once, or handed to the node as a local operation whose reply comes
//! later; and the JSON shapes of members, Pods and the node's information.

use std::collections::BTreeMap;

use podmesh_mesh::{
    InboxEntry, LocalOp, LocalReply, Member, MemberState, NodeName, POD_STATE_PREFIX, PodAddr,
    PodName, PodRecord, PodStatus, RequestId, Store as _, Time,
};
use serde_json::{Value, json};

use super::{Actor, PENDING_CALLS_MAX, PendingCall, Stop, Watcher};
use crate::api::{ApiError, ErrorCode, Reply};
use crate::api_server::{ApiCall, ClientTx};
use crate::directory::{self, Directory, DirectoryEntry};

impl Actor {
    pub(super) fn call(&mut self, call: ApiCall) {
        let ApiCall {
            request,
            reply_tx,
            slot,
        } = call;
        let id = request.id;
        match self.answer(&request.method, &request.params, &reply_tx) {
            Ok(Answer::Now(event, data)) => {
                reply_tx.answer(slot, Reply::ok(id, event, data));
            }
            Ok(Answer::Local(op)) => {
                if self.pending.len() >= PENDING_CALLS_MAX {
                    let error = ApiError::new(ErrorCode::Busy, "too many requests in progress");
                    reply_tx.answer(slot, Reply::error(id, &error));
                    return;
                }
                self.next_token += 1;
                let token = self.next_token;
                self.pending.insert(
                    token,
                    PendingCall {
                        id,
                        reply_tx,
                        slot,
                        send_started: matches!(op, LocalOp::Send { .. }).then(|| self.clock.now()),
                    },
                );
                let now = self.clock.now();
                self.node.handle_local(token, op, now);
            }
            Err(error) => {
                reply_tx.answer(slot, Reply::error(id, &error));
            }
        }
    }

    /// Drops a client that has hung up from the Pods it attached to and from the watchers, so
    /// nothing but replies it is still owed holds its connection open.
    pub(super) fn forget_client(&mut self, client: &ClientTx) {
        for clients in self.attached.values_mut() {
            clients.retain(|tx| !tx.same_client(client));
        }
        self.attached.retain(|_, clients| !clients.is_empty());
        self.watchers.retain(|w| !w.tx.same_client(client));
    }

    fn answer(
        &mut self,
        method: &str,
        params: &Value,
        reply_tx: &ClientTx,
    ) -> Result<Answer, ApiError> {
        match method {
            "members" => Ok(Answer::Now(
                "members",
                json!({ "members": self.members_json() }),
            )),
            "node_info" => Ok(Answer::Now("node_info", self.node_info())),
            "leave" => {
                self.leave();
                Ok(Answer::Now("leaving", json!({})))
            }
            "shutdown" => {
                self.stopping = Some(Stop::Now);
                Ok(Answer::Now("shutting_down", json!({})))
            }
            "pod_create" => {
                let name = pod_param(params, "name")?;
                let parent = match params.get("parent") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(pod_param(params, "parent")?),
                };
                Ok(Answer::Local(LocalOp::CreatePod { name, parent }))
            }
            "pod_remove" => Ok(Answer::Local(LocalOp::RemovePod {
                name: pod_param(params, "name")?,
            })),
            "pod_status" => {
                let name = pod_param(params, "name")?;
                match params.get("status") {
                    None | Some(Value::Null) => {
                        let record = self.local_pod(&name)?;
                        Ok(Answer::Now(
                            "pod",
                            directory::record_json(self.node.mesh().name(), record),
                        ))
                    }
                    Some(status) => {
                        let status: PodStatus = status
                            .as_str()
                            .unwrap_or_default()
                            .parse()
                            .map_err(|e: podmesh_mesh::InvalidPod| invalid(e.to_string()))?;
                        Ok(Answer::Local(LocalOp::SetStatus { name, status }))
                    }
                }
            }
            "list_pods" => {
                let name = pod_param(params, "pod")?;
                let record = self.local_pod(&name)?.clone();
                let me = PodAddr::new(name, self.node.mesh().name().clone());
                let pods = directory::visible(&me, &record, &self.directory());
                Ok(Answer::Now(
                    "pods",
                    json!({ "pod": me.to_string(), "pods": pods }),
                ))
            }
            "directory" => {
                let pods: Vec<Value> = self
                    .directory()
                    .iter()
                    .map(|(addr, entry)| directory::entry_json(addr, None, Some(entry)))
                    .collect();
                Ok(Answer::Now("directory", json!({ "pods": pods })))
            }
            "register_peer" | "unregister_peer" => {
                let (pod, target) = self.pod_and_target(params)?;
                Ok(Answer::Local(if method == "register_peer" {
                    LocalOp::RegisterPeer { pod, target }
                } else {
                    LocalOp::UnregisterPeer { pod, target }
                }))
            }
            "send_to_peer" => {
                let body = params
                    .get("message")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("missing string parameter \"message\""))?
                    .to_owned();
                let pod = pod_param(params, "pod")?;
                self.local_pod(&pod)?;
                let name = str_param(params, "name")?;
                let target = directory::resolve(name, self.node.mesh().name(), &self.directory())?;
                Ok(Answer::Local(LocalOp::Send {
                    pod,
                    target,
                    body,
                    // Decided by the node (`Node::pod_live`), one rule with the simulator.
                    live: false,
                }))
            }
            "inbox" => {
                let pod = pod_param(params, "pod")?;
                let drain = params
                    .get("drain")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                Ok(Answer::Local(LocalOp::Inbox { pod, drain }))
            }
            "inbox_ack" => {
                let pod = pod_param(params, "pod")?;
                let up_to = str_param(params, "up_to")?
                    .parse::<RequestId>()
                    .map_err(invalid)?;
                Ok(Answer::Local(LocalOp::InboxAck { pod, up_to }))
            }
            "attach" => {
                let pod = pod_param(params, "pod")?;
                let record = self.local_pod(&pod)?.clone();
                // Every message not yet acknowledged: what a program that stopped before
                // acking gets again. Read first, so a failed read loses no alert.
                let inbox = self
                    .node
                    .peers()
                    .inbox_messages(&pod, self.node.store())
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.message))?;
                // The prelude: buffered alerts, then exactly one snapshot, then live events.
                for alert in self.alerts.remove(&pod).unwrap_or_default() {
                    let mut alert = alert;
                    alert.data = json!({ "event": alert.event, "data": alert.data });
                    alert.event = "alert".to_owned();
                    reply_tx.send(alert);
                }
                let me = PodAddr::new(pod.clone(), self.node.mesh().name().clone());
                let snapshot = json!({
                    "pod": directory::record_json(self.node.mesh().name(), &record),
                    "pods": directory::visible(&me, &record, &self.directory()),
                    "members": self.members_json(),
                    "inbox": inbox.iter().map(message_json).collect::<Vec<_>>(),
                });
                self.attached.entry(pod).or_default().push(reply_tx.clone());
                Ok(Answer::Now("snapshot", snapshot))
            }
            "watch" | "monitor" => {
                self.watchers.retain(|w| !w.tx.is_closed());
                let pods = method == "monitor";
                self.watchers.push(Watcher {
                    tx: reply_tx.clone(),
                    pods,
                });
                Ok(Answer::Now(
                    if pods { "monitoring" } else { "watching" },
                    json!({ "members": self.members_json() }),
                ))
            }
            "reload" => match self.reload() {
                Ok(data) => Ok(Answer::Now("reloaded", data)),
                Err(e) => Err(ApiError::new(ErrorCode::InvalidRequest, format!("{e:#}"))),
            },
            other => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("unknown method {other:?}"),
            )),
        }
    }

    /// The Pod and the resolved target of a peer request, checked in the documented order.
    fn pod_and_target(&self, params: &Value) -> Result<(PodName, PodAddr), ApiError> {
        let pod = pod_param(params, "pod")?;
        if let Some(record) = self.node.peers().pod(&pod)
            && !matches!(record.status, PodStatus::Idle | PodStatus::Paused)
        {
            return Err(ApiError::new(
                ErrorCode::AlreadyRunning,
                format!(
                    "pod {pod} is {}; peers change only while idle or paused",
                    record.status.as_str()
                ),
            ));
        }
        let name = str_param(params, "name")?;
        let target = directory::resolve(name, self.node.mesh().name(), &self.directory())?;
        Ok((pod, target))
    }

    fn local_pod(&self, name: &PodName) -> Result<&PodRecord, ApiError> {
        self.node
            .peers()
            .pod(name)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("pod {name} not found")))
    }

    /// Every Pod this node knows: its own, and those gossiped by live or dead members.
    fn directory(&self) -> Directory {
        let me = self.node.mesh().name().clone();
        let states: BTreeMap<NodeName, MemberState> = self
            .node
            .mesh()
            .members()
            .into_iter()
            .map(|m| (m.name, m.state))
            .collect();
        let mut directory = Directory::new();
        for entry in self.node.mesh().entries() {
            let Some(value) = entry.value else { continue };
            if !entry.key.starts_with(POD_STATE_PREFIX) || *entry.owner == me {
                continue;
            }
            let Ok(record) = PodRecord::decode(value) else {
                continue;
            };
            let updated = self
                .updated_at
                .get(&(entry.owner.clone(), entry.key.to_owned()))
                .copied()
                .unwrap_or(Time::ZERO);
            directory.insert(
                PodAddr::new(record.name.clone(), entry.owner.clone()),
                DirectoryEntry {
                    node_state: states
                        .get(entry.owner)
                        .copied()
                        .unwrap_or(MemberState::Dead),
                    updated_at_ms: self.node.wall_ms(updated),
                    record,
                },
            );
        }
        for record in self.node.peers().pods() {
            let key = (me.clone(), PodRecord::state_key(&record.name));
            let updated = self.updated_at.get(&key).copied().unwrap_or(Time::ZERO);
            directory.insert(
                PodAddr::new(record.name.clone(), me.clone()),
                DirectoryEntry {
                    record: record.clone(),
                    node_state: MemberState::Alive,
                    updated_at_ms: self.node.wall_ms(updated),
                },
            );
        }
        directory
    }

    pub(super) fn local_reply_json(&self, id: Option<u64>, reply: LocalReply) -> Reply {
        match reply {
            LocalReply::Pod(record) => Reply::ok(
                id,
                "pod",
                directory::record_json(self.node.mesh().name(), &record),
            ),
            LocalReply::Removed => Reply::ok(id, "removed", json!({})),
            LocalReply::PeerRegistered { source, peer } => Reply::ok(
                id,
                "peer_registered",
                json!({ "source": source.to_string(), "peer": peer.to_string() }),
            ),
            LocalReply::PeerUnregistered { source, peer } => Reply::ok(
                id,
                "peer_unregistered",
                json!({ "source": source.to_string(), "peer": peer.to_string() }),
            ),
            LocalReply::Delivered { id: message } => {
                Reply::ok(id, "delivered", json!({ "id": message.to_string() }))
            }
            LocalReply::Inbox(entries) => {
                let messages: Vec<Value> = entries.iter().map(message_json).collect();
                Reply::ok(id, "inbox", json!({ "messages": messages }))
            }
            LocalReply::Acked { removed } => Reply::ok(id, "acked", json!({ "removed": removed })),
        }
    }

    fn members_json(&self) -> Vec<Value> {
        let mut members = self.node.mesh().members();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members.iter().map(|m| self.member_json(m)).collect()
    }

    fn member_json(&self, member: &Member) -> Value {
        json!({
            "name": member.name.as_str(),
            "address": member.addr.to_string(),
            "state": member.state.as_str(),
            "incarnation": member.incarnation,
            "changed_at_ms": self.node.wall_ms(member.changed_at),
            "local": member.name == *self.node.mesh().name(),
        })
    }

    fn node_info(&self) -> Value {
        let counters = self.node.mesh().counters();
        let peers = self.node.peers().counters();
        let stats = self.transport.stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let counters = json!({
            "datagrams_sent": counters.datagrams_sent,
            "messages_sent": counters.messages_sent,
            "datagrams_received": counters.datagrams_received,
            "messages_received": counters.messages_received,
            "bad_frames": counters.bad_frames + peers.bad_requests + peers.bad_responses,
            "probes_failed": counters.probes_failed,
            "deaths_declared": counters.deaths_declared,
            "refutations": counters.refutations,
            "accusations_dropped": counters.accusations_dropped,
            "claims_refused": counters.claims_refused,
            "claims_held": counters.claims_held,
            "claims_dropped": counters.claims_dropped,
            "store_corrupt_records": counters.store_corrupt_records,
            "identity_mismatches": peers.identity_mismatches,
            "handshakes_committed": peers.handshakes_committed,
            "handshakes_aborted": peers.handshakes_aborted,
            "messages_delivered": peers.messages_delivered,
            "duplicate_messages": peers.duplicates,
            "delivery_batches": peers.delivery_batches,
            "delivery_batches_failed": peers.delivery_batches_failed,
            "store_write_failures": counters.store_write_failures + peers.store_write_failures,
            "sends_dropped": load(&stats.sends_dropped),
            "connect_failures": load(&stats.connect_failures),
            "handshakes_refused": load(&stats.handshakes_refused),
            "frames_too_large": load(&stats.frames_too_large),
            "frames_too_slow": load(&stats.frames_too_slow),
            "connections_replaced": load(&stats.connections_replaced),
            "strangers_closed": load(&stats.strangers_closed),
        });
        json!({
            "name": self.node.mesh().name().as_str(),
            "mesh": self.mesh_name,
            "address": self.node.mesh().addr().to_string(),
            "incarnation": self.node.mesh().incarnation(),
            "version": env!("CARGO_PKG_VERSION"),
            "protocol_version": podmesh_mesh::PROTOCOL_VERSION,
            "started_at_ms": self.clock.start_unix_ms,
            "local_health": self.node.mesh().local_health(),
            "connections": self.transport.connection_count(),
            "pods": self.node.peers().pods().count(),
            "handshakes_logged": self.node.peers().handshakes_logged(),
            "handshakes_ended": self.node.peers().handshakes_ended(),
            "members_persisted": self
                .node
                .mesh()
                .store()
                .scan(podmesh_mesh::Table::Members)
                .map(|rows| rows.len())
                .unwrap_or(0),
            "counters": counters,
        })
    }
}

/// How the actor answers a call.
enum Answer {
    /// Reply now with this event and data.
    Now(&'static str, Value),
    /// Run on the Peers machine; the reply comes with its output.
    Local(LocalOp),
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

fn str_param<'a>(params: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("missing string parameter {key:?}")))
}

fn pod_param(params: &Value, key: &str) -> Result<PodName, ApiError> {
    str_param(params, key)?
        .parse()
        .map_err(|e: podmesh_mesh::InvalidPod| invalid(e.to_string()))
}

/// A stored message as the local API shows it, in `inbox`, snapshots and notifications.
pub(super) fn message_json(entry: &InboxEntry) -> Value {
    json!({
        "from": entry.from.to_string(),
        "message": entry.body,
        "id": entry.id.to_string(),
        "received_at": entry.received_at_ms,
    })
}
