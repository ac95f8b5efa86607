//! What other nodes send this one: membership datagrams and messages, peer requests and the
//! answers to this node's own, fed to the node; and the group commit that stores the
//! deliveries fed meanwhile in one transaction before they are answered.

use tokio::sync::mpsc;

use podmesh_mesh::{Answer, Input};
use tracing::warn;

use super::{Actor, AnswerTx, GATHER_MAX, mesh_name};
use crate::api_server::ClientEvent;
use crate::transport::Inbound;

impl Actor {
    /// With deliveries staged, feeds what the channels already hold (at most `GATHER_MAX`
    /// inputs, so timers are never starved, and a batch), then commits them in one store
    /// transaction. Nothing waits for more. The node runs on one thread, so the commit's fsync
    /// holds up the transport too: what arrives meanwhile waits in the sockets, is read after
    /// it, and joins the next commit.
    pub(super) fn group_commit(
        &mut self,
        inbound_rx: &mut mpsc::Receiver<Inbound>,
        calls_rx: &mut mpsc::Receiver<ClientEvent>,
    ) {
        let batch_max = self.node.peers().config().delivery_batch_max;
        let mut fed = 0;
        while self.node.staged_deliveries() > 0
            && self.node.staged_deliveries() < batch_max
            && fed < GATHER_MAX
        {
            if let Ok(inbound) = inbound_rx.try_recv() {
                self.inbound(inbound);
            } else if let Ok(event) = calls_rx.try_recv() {
                match event {
                    ClientEvent::Call(call) => self.call(call),
                    ClientEvent::Closed(client) => self.forget_client(&client),
                }
            } else {
                break;
            }
            fed += 1;
        }
        // A batch at most each, until nothing is staged.
        loop {
            let staged = self.node.staged_deliveries();
            if staged == 0 {
                break;
            }
            self.node.commit_deliveries(self.clock.now());
            if self.node.staged_deliveries() >= staged {
                break;
            }
        }
    }

    pub(super) fn inbound(&mut self, inbound: Inbound) {
        let now = self.clock.now();
        let input = match inbound {
            Inbound::Datagram { from, bytes } => match mesh_name(&from) {
                Ok(from) => Input::Datagram { from, bytes },
                Err(_) => return,
            },
            Inbound::Message { from, bytes } => match mesh_name(&from) {
                Ok(from) => Input::Message { from, bytes },
                Err(_) => return,
            },
            Inbound::ConnectionLost { node } => match mesh_name(&node) {
                Ok(node) => Input::ConnectionLost { node },
                Err(_) => return,
            },
            Inbound::Request {
                from,
                bytes,
                reply_tx,
            } => {
                let kind = request_kind(&bytes);
                if kind == Some("commit") {
                    self.faults.crash("participant-before-commit");
                }
                self.next_ticket += 1;
                let ticket = self.next_ticket;
                let answer = match mesh_name(&from) {
                    Ok(from) => self.node.handle_request(ticket, &from, &bytes, now),
                    Err(_) => Answer::Refused,
                };
                if kind == Some("prepare") {
                    self.faults.crash("participant-after-prepare");
                }
                match answer {
                    Answer::Now(bytes) => self.answer_peer(kind, reply_tx, Some(bytes)),
                    Answer::Later => {
                        self.answers.insert(ticket, AnswerTx { kind, reply_tx });
                    }
                    Answer::Refused => self.answer_peer(kind, reply_tx, None),
                }
                return;
            }
            Inbound::Response { rpc, bytes } => {
                self.node.handle_response(rpc, bytes.as_deref(), now);
                return;
            }
        };
        if let Err(e) = self.node.handle(input, now) {
            warn!(error = %e, "input refused");
        }
    }

    /// Answers a peer request (`None` closes its stream), unless a fault point drops it.
    pub(super) fn answer_peer(
        &mut self,
        kind: Option<&'static str>,
        reply_tx: tokio::sync::oneshot::Sender<Option<Vec<u8>>>,
        answer: Option<Vec<u8>>,
    ) {
        if kind == Some("deliver") && self.faults.fire("drop-delivered-reply") {
            return;
        }
        let _ = reply_tx.send(answer);
    }
}

/// The kind of an encoded peer request, for fault points and metrics.
pub(super) fn request_kind(bytes: &[u8]) -> Option<&'static str> {
    use podmesh_mesh::PeerRequest;
    let request = PeerRequest::decode(
        bytes,
        crate::transport::TransportLimits::default().frame_size_max,
    )
    .ok()?;
    Some(match request {
        PeerRequest::Prepare { .. } => "prepare",
        PeerRequest::Commit { .. } => "commit",
        PeerRequest::Abort { .. } => "abort",
        PeerRequest::Query { .. } => "query",
        PeerRequest::Deliver { .. } => "deliver",
    })
}
