//! Acknowledged delivery between peers (DESIGN section 5.2, "SendToPeer: acknowledged
//! delivery"): sending a message to a peer Pod, storing a received one durably in the
//! receiving Pod's inbox, deduplicated by id, and reading the stored inboxes back. Deliveries
//! that arrive while a commit is in progress are stored together in the next store transaction
//! (group commit), each acknowledged only once its batch is committed. Re-sends
//! after a lost answer are driven by `Peers::handle_answer`.

use std::collections::{BTreeMap, VecDeque};

use super::{
    DEDUPE_PREFIX, ErrorCode, InboxEntry, LocalReply, MESSAGE_PREFIX, PeerError, PeerRequest,
    PeerResponse, Peers, PeersOutput, PodEvent, RequestId, Rpc, Timer, id_key, message_key,
    not_found_pod,
};
use crate::NodeName;
use crate::Time;
use crate::codec;
use crate::pod::{PodAddr, PodName};
use crate::store::{Store, Table, WriteBatch};

/// Who is told the outcome of a staged delivery.
#[derive(Debug, Clone, Copy)]
pub(super) enum Waiter {
    /// A peer request, by the driver's ticket.
    Peer(u64),
    /// A local send to a Pod of this node, by its token.
    Local(u64),
}

/// A delivery waiting for the next group commit.
#[derive(Debug)]
pub(super) struct Staged {
    waiter: Waiter,
    id: RequestId,
    /// The receiving Pod.
    to: PodName,
    entry: InboxEntry,
    /// A retry of a message staged before it: not counted against the inbox bounds.
    retry: bool,
}

impl Peers {
    #[allow(
        clippy::too_many_arguments,
        reason = "one local operation's fields plus the driver's context"
    )]
    pub(super) fn send(
        &mut self,
        token: u64,
        pod: PodName,
        target: PodAddr,
        body: String,
        live: bool,
        now: Time,
        wall_ms: u64,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        let Some(record) = self.pods.get(&pod) else {
            return Some(Err(not_found_pod(&pod)));
        };
        if !record.peers.contains(&target) {
            return Some(Err(PeerError::new(
                ErrorCode::NotFound,
                format!("{target} is not a peer of {pod}"),
            )));
        }
        if !live {
            return Some(Err(PeerError::new(
                ErrorCode::NotLive,
                format!("peer pod {target} is not live"),
            )));
        }
        if body.len() > self.config.message_size_max {
            return Some(Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "message is {} bytes, the limit is {}",
                    body.len(),
                    self.config.message_size_max
                ),
            )));
        }
        let id = match self.next_id(store) {
            Ok(id) => id,
            Err(e) => return Some(Err(e)),
        };
        let from = PodAddr::new(pod.clone(), self.me.clone());
        if target.node == self.me {
            let waiter = Waiter::Local(token);
            return match self.stage_message(waiter, &from, &target.pod, id.clone(), body, wall_ms) {
                Ok(true) => None,
                Ok(false) => Some(Ok(LocalReply::Delivered { id })),
                Err(error) => Some(Err(error)),
            };
        }
        let request = PeerRequest::Deliver {
            id: id.clone(),
            from: pod,
            to: target.pod.clone(),
            body,
        };
        let bytes = codec::encode_peer(&request);
        let rpc = self.next_rpc();
        let to = target.node.clone();
        self.rpcs.insert(
            rpc,
            Rpc::Deliver {
                token,
                id,
                to: to.clone(),
                bytes: bytes.clone(),
                attempt: 1,
                target,
            },
        );
        self.schedule(now + self.config.rpc_timeout, Timer::RpcDeadline { rpc });
        self.push(PeersOutput::Request { rpc, to, bytes });
        None
    }

    /// A `Deliver` from node `from`, submitted under `ticket`: staged for the next group commit
    /// (`None`: answered with [`PeersOutput::Answer`]), or refused now.
    #[allow(
        clippy::too_many_arguments,
        reason = "one request's fields plus the driver's context"
    )]
    pub(super) fn receive(
        &mut self,
        ticket: u64,
        from: &NodeName,
        id: RequestId,
        pod: PodName,
        to: PodName,
        body: String,
        wall_ms: u64,
    ) -> Option<PeerResponse> {
        if id.node != *from {
            self.counters.identity_mismatches += 1;
            return Some(PeerResponse::Rejected(PeerError::new(
                ErrorCode::InvalidRequest,
                "message id from another node",
            )));
        }
        let sender = PodAddr::new(pod, from.clone());
        match self.stage_message(Waiter::Peer(ticket), &sender, &to, id, body, wall_ms) {
            Ok(true) => None,
            Ok(false) => Some(PeerResponse::Delivered),
            Err(error) => Some(PeerResponse::Rejected(error)),
        }
    }

    /// Checks a message for inbox `to` and stages it for the next commit, with `waiter` to be
    /// told the outcome (`Ok(true)`). A message already stored is acknowledged at once
    /// (`Ok(false)`); a retry of one still staged waits for the same commit. A full batch is
    /// committed here.
    #[allow(
        clippy::too_many_arguments,
        reason = "one message's fields plus the driver's context"
    )]
    pub(super) fn stage_message(
        &mut self,
        waiter: Waiter,
        from: &PodAddr,
        to: &PodName,
        id: RequestId,
        body: String,
        wall_ms: u64,
    ) -> Result<bool, PeerError> {
        self.check_relation(from, to)?;
        if self.dedupe.contains_key(&id) {
            self.counters.duplicates += 1;
            return Ok(false);
        }
        if body.len() > self.config.message_size_max {
            return Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "message is {} bytes, the limit is {}",
                    body.len(),
                    self.config.message_size_max
                ),
            ));
        }
        let entry = InboxEntry {
            id: id.clone(),
            from: from.clone(),
            body,
            received_at_ms: wall_ms,
        };
        // A retry of a message still waiting for its write waits for the same outcome (the
        // commit writes each id once).
        if self.staged.iter().any(|s| s.id == id) {
            self.counters.duplicates += 1;
            self.staged.push(Staged {
                waiter,
                id,
                to: to.clone(),
                entry,
                retry: true,
            });
            return Ok(true);
        }
        let staged_for = |inbox: &PodName, node: Option<&NodeName>| {
            self.staged
                .iter()
                .filter(|s| !s.retry && s.to == *inbox)
                .filter(|s| node.is_none_or(|n| *n == s.entry.from.node))
                .count()
        };
        let queued = self.inboxes.get(to).map_or(0, VecDeque::len) + staged_for(to, None);
        if queued >= self.config.inbox_len_max {
            return Err(PeerError::new(
                ErrorCode::InboxFull,
                format!("the inbox of {to} holds {queued} messages"),
            ));
        }
        let share = (to.clone(), from.node.clone());
        let held =
            self.inbox_shares.get(&share).copied().unwrap_or(0) + staged_for(to, Some(&from.node));
        if from.node != self.me && held >= self.config.inbox_share_per_node_max {
            return Err(PeerError::new(
                ErrorCode::InboxFull,
                format!(
                    "the inbox of {to} holds {held} messages from {}, its share",
                    from.node
                ),
            ));
        }
        self.staged.push(Staged {
            waiter,
            id,
            to: to.clone(),
            entry,
            retry: false,
        });
        Ok(true)
    }

    /// `from` may write to local inbox `to`: the Pod exists and has `from` as a peer.
    fn check_relation(&self, from: &PodAddr, to: &PodName) -> Result<(), PeerError> {
        let Some(record) = self.pods.get(to) else {
            return Err(not_found_pod(to));
        };
        if !record.peers.contains(from) {
            return Err(PeerError::new(
                ErrorCode::NotFound,
                format!("{from} is not a peer of {to}"),
            ));
        }
        Ok(())
    }

    /// Stores up to `delivery_batch_max` staged deliveries, oldest first, in one store
    /// transaction (group commit), then answers each: `Delivered` only once the write
    /// succeeded; a failed write acknowledges none of its messages. A retry staged with its
    /// first attempt shares its one write; a relation removed since staging refuses that
    /// message alone. What is left stays staged for the next call.
    pub fn commit_deliveries(&mut self, store: &mut impl Store) {
        let take = self.staged.len().min(self.config.delivery_batch_max.max(1));
        if take == 0 {
            return;
        }
        let staged: Vec<Staged> = self.staged.drain(..take).collect();
        let mut refused: BTreeMap<RequestId, PeerError> = BTreeMap::new();
        let mut stored: Vec<(PodName, InboxEntry, u64)> = Vec::new();
        let mut batch = WriteBatch::new();
        for Staged { to, entry, .. } in &staged {
            let written_before = self.dedupe.contains_key(&entry.id);
            if written_before || stored.iter().any(|(_, e, _)| e.id == entry.id) {
                continue;
            }
            if let Err(error) = self.check_relation(&entry.from, to) {
                refused.insert(entry.id.clone(), error);
                continue;
            }
            let seq = self.inbox_seq + stored.len() as u64;
            batch.put(
                Table::Inboxes,
                message_key(to, seq),
                codec::encode_record(entry),
            );
            batch.put(
                Table::Inboxes,
                id_key(DEDUPE_PREFIX, &entry.id),
                codec::encode_record(&(seq, entry.id.clone())),
            );
            stored.push((to.clone(), entry.clone(), seq));
        }
        let evicted = (self.dedupe_order.len() + stored.len())
            .saturating_sub(self.config.dedupe_ids_max)
            .min(self.dedupe_order.len());
        for old in self.dedupe_order.iter().take(evicted) {
            batch.delete(Table::Inboxes, id_key(DEDUPE_PREFIX, old));
        }
        let written = if batch.is_empty() {
            Ok(())
        } else {
            self.write(batch, store)
        };
        if written.is_ok() {
            for old in self.dedupe_order.drain(..evicted) {
                self.dedupe.remove(&old);
            }
            self.inbox_seq += stored.len() as u64;
            self.counters.delivery_batches += 1;
            for (to, entry, seq) in stored {
                self.dedupe.insert(entry.id.clone(), seq);
                self.dedupe_order.push_back(entry.id.clone());
                self.inboxes.entry(to.clone()).or_default().push_back(seq);
                *self
                    .inbox_shares
                    .entry((to.clone(), entry.from.node.clone()))
                    .or_default() += 1;
                self.counters.messages_delivered += 1;
                self.push(PeersOutput::Event(PodEvent::Notification {
                    pod: to,
                    entry,
                }));
            }
        } else {
            self.counters.delivery_batches_failed += 1;
        }
        for Staged { waiter, id, .. } in staged {
            let result = if self.dedupe.contains_key(&id) {
                Ok(())
            } else if let Some(error) = refused.get(&id) {
                Err(error.clone())
            } else if let Err(error) = &written {
                Err(error.clone())
            } else {
                Err(PeerError::new(
                    ErrorCode::Internal,
                    "the message was not stored",
                ))
            };
            self.answer_waiter(waiter, id, result);
        }
    }

    /// Deliveries staged for the next commit.
    pub fn staged_deliveries(&self) -> usize {
        self.staged.len()
    }

    fn answer_waiter(&mut self, waiter: Waiter, id: RequestId, result: Result<(), PeerError>) {
        match waiter {
            Waiter::Local(token) => self.push(PeersOutput::Reply {
                token,
                result: result.map(|()| LocalReply::Delivered { id }),
            }),
            Waiter::Peer(ticket) => {
                let response = match result {
                    Ok(()) => PeerResponse::Delivered,
                    Err(error) => PeerResponse::Rejected(error),
                };
                self.push(PeersOutput::Answer {
                    ticket,
                    bytes: codec::encode_peer(&response),
                });
            }
        }
    }

    /// Forgets local inbox `pod` after its messages were deleted from the store.
    pub(super) fn forget_inbox(&mut self, pod: &PodName) {
        self.inboxes.remove(pod);
        self.inbox_shares.retain(|(p, _), _| p != pod);
    }

    /// Every message in the inboxes of `store`, by receiving Pod, oldest first. For checkers
    /// that look at a node's durable state while it is down.
    pub fn stored_inboxes(store: &impl Store) -> Result<Vec<(PodName, InboxEntry)>, crate::Error> {
        let mut out = Vec::new();
        for (key, value) in store.scan(Table::Inboxes)? {
            if key.first() != Some(&MESSAGE_PREFIX) {
                continue;
            }
            let pod = key
                .get(1..key.len().saturating_sub(9))
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<PodName>().ok());
            if let Some(pod) = pod {
                out.push((pod, codec::decode_record::<InboxEntry>(&value)?));
            }
        }
        Ok(out)
    }
}
