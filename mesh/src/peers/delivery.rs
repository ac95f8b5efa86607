//! Acknowledged delivery between peers (DESIGN section 5.2, "SendToPeer: acknowledged
//! delivery"): sending a message to a peer Pod, storing a received one durably in the
//! receiving Pod's inbox, deduplicated by id, and reading the stored inboxes back. Re-sends
//! after a lost answer are driven by `Peers::handle_answer`.

use std::collections::VecDeque;

use super::{
    DEDUPE_PREFIX, ErrorCode, InboxEntry, LocalReply, MESSAGE_PREFIX, PeerError, PeerRequest,
    Peers, PeersOutput, PodEvent, RequestId, Rpc, Timer, id_key, message_key, not_found_pod,
};
use crate::Time;
use crate::codec;
use crate::pod::{PodAddr, PodName};
use crate::store::{Store, Table, WriteBatch};

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
            return Some(
                self.store_message(&from, &target.pod, id.clone(), body, wall_ms, store)
                    .map(|()| LocalReply::Delivered { id }),
            );
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

    pub(super) fn store_message(
        &mut self,
        from: &PodAddr,
        to: &PodName,
        id: RequestId,
        body: String,
        wall_ms: u64,
        store: &mut impl Store,
    ) -> Result<(), PeerError> {
        let Some(record) = self.pods.get(to) else {
            return Err(not_found_pod(to));
        };
        if !record.peers.contains(from) {
            return Err(PeerError::new(
                ErrorCode::NotFound,
                format!("{from} is not a peer of {to}"),
            ));
        }
        if self.dedupe.contains(&id) {
            self.counters.duplicates += 1;
            return Ok(());
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
        let queued = self.inboxes.get(to).map_or(0, VecDeque::len);
        if queued >= self.config.inbox_len_max {
            return Err(PeerError::new(
                ErrorCode::InboxFull,
                format!("the inbox of {to} holds {queued} messages"),
            ));
        }
        let share = (to.clone(), from.node.clone());
        let held = self.inbox_shares.get(&share).copied().unwrap_or(0);
        if from.node != self.me && held >= self.config.inbox_share_per_node_max {
            return Err(PeerError::new(
                ErrorCode::InboxFull,
                format!(
                    "the inbox of {to} holds {held} messages from {}, its share",
                    from.node
                ),
            ));
        }
        let entry = InboxEntry {
            id: id.clone(),
            from: from.clone(),
            body,
            received_at_ms: wall_ms,
        };
        let seq = self.inbox_seq;
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Inboxes,
            message_key(to, seq),
            codec::encode_record(&entry),
        );
        batch.put(
            Table::Inboxes,
            id_key(DEDUPE_PREFIX, &id),
            codec::encode_record(&(seq, id.clone())),
        );
        let evicted = (self.dedupe_order.len() >= self.config.dedupe_ids_max)
            .then(|| self.dedupe_order.front().cloned())
            .flatten();
        if let Some(old) = &evicted {
            batch.delete(Table::Inboxes, id_key(DEDUPE_PREFIX, old));
        }
        self.write(batch, store)?;
        self.inbox_seq += 1;
        if evicted.is_some()
            && let Some(old) = self.dedupe_order.pop_front()
        {
            self.dedupe.remove(&old);
        }
        self.dedupe.insert(id.clone());
        self.dedupe_order.push_back(id);
        self.inboxes.entry(to.clone()).or_default().push_back(seq);
        *self.inbox_shares.entry(share).or_default() += 1;
        self.counters.messages_delivered += 1;
        self.push(PeersOutput::Event(PodEvent::Notification {
            pod: to.clone(),
            entry,
        }));
        Ok(())
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
