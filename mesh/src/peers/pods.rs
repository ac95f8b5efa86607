//! The Pod records this node hosts (DESIGN section 5): creating and removing a Pod, setting its
//! status, and reading, draining or acknowledging its inbox. Each change is written in one store transaction
//! before the records in memory follow; changed records, or a removal, are then published as
//! replicated state.

use super::{
    ErrorCode, InboxEntry, LocalReply, PeerError, Peers, PeersOutput, PodEvent, RequestId,
    message_key, not_found_pod,
};
use crate::codec;
use crate::pod::{PodName, PodRecord, PodStatus};
use crate::store::{Store, Table, WriteBatch};

impl Peers {
    // ---- local operations -------------------------------------------------------------

    pub(super) fn create_pod(
        &mut self,
        name: PodName,
        parent: Option<PodName>,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        if self.pods.contains_key(&name) {
            return Some(Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!("pod {name} already exists on this node"),
            )));
        }
        if self.pods.len() >= self.config.pods_max {
            return Some(Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!("this node already hosts {} pods", self.config.pods_max),
            )));
        }
        let record = PodRecord::new(name.clone());
        let mut changed = vec![record.clone()];
        if let Some(parent) = &parent {
            let Some(parent_record) = self.pods.get(parent) else {
                return Some(Err(not_found_pod(parent)));
            };
            if parent_record.spawned_children.len() >= self.config.children_per_pod_max {
                return Some(Err(PeerError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "pod {parent} already has {} spawned children",
                        self.config.children_per_pod_max
                    ),
                )));
            }
            let mut parent_record = parent_record.clone();
            parent_record.spawned_children.insert(name.clone());
            parent_record.reclaimed_children.remove(&name);
            changed.push(parent_record);
        }
        if let Err(e) = self.write_pods(&changed, store) {
            return Some(Err(e));
        }
        for record in changed {
            self.publish(record.clone());
            self.pods.insert(record.name.clone(), record);
        }
        Some(Ok(LocalReply::Pod(self.pods[&name].clone())))
    }

    pub(super) fn remove_pod(
        &mut self,
        name: &PodName,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        let Some(record) = self.pods.get(name) else {
            return Some(Err(not_found_pod(name)));
        };
        if !record.peers.is_empty() {
            return Some(Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "pod {name} still has peers; unpeer them first so no one-sided relation remains"
                ),
            )));
        }
        if self.involved(name) {
            return Some(Err(PeerError::new(
                ErrorCode::Busy,
                format!("pod {name} has a peer handshake in progress"),
            )));
        }
        let mut batch = WriteBatch::new();
        batch.delete(Table::Pods, name.as_str().as_bytes().to_vec());
        let parents: Vec<PodRecord> = self
            .pods
            .values()
            .filter(|p| p.spawned_children.contains(name))
            .map(|p| {
                let mut p = p.clone();
                p.spawned_children.remove(name);
                p.reclaimed_children.insert(name.clone());
                while p.reclaimed_children.len() > self.config.children_per_pod_max {
                    p.reclaimed_children.pop_first();
                }
                p
            })
            .collect();
        for parent in &parents {
            batch.put(
                Table::Pods,
                parent.name.as_str().as_bytes().to_vec(),
                codec::encode_record(parent),
            );
        }
        let inbox = self.inboxes.get(name).cloned().unwrap_or_default();
        for seq in &inbox {
            batch.delete(Table::Inboxes, message_key(name, *seq));
        }
        if let Err(e) = self.write(batch, store) {
            return Some(Err(e));
        }
        self.pods.remove(name);
        self.forget_inbox(name);
        for parent in parents {
            self.publish(parent.clone());
            self.pods.insert(parent.name.clone(), parent);
        }
        self.push(PeersOutput::Publish {
            pod: name.clone(),
            record: None,
        });
        Some(Ok(LocalReply::Removed))
    }

    pub(super) fn set_status(
        &mut self,
        name: &PodName,
        status: PodStatus,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        let Some(record) = self.pods.get(name) else {
            return Some(Err(not_found_pod(name)));
        };
        let mut record = record.clone();
        record.status = status;
        if let Err(e) = self.write_pods(std::slice::from_ref(&record), store) {
            return Some(Err(e));
        }
        self.pods.insert(name.clone(), record.clone());
        self.publish(record.clone());
        self.push(PeersOutput::Event(PodEvent::StatusChanged {
            pod: name.clone(),
            status,
        }));
        Some(Ok(LocalReply::Pod(record)))
    }

    /// The messages in local Pod `pod`'s inbox, oldest first (none for an unknown Pod).
    pub fn inbox_messages(
        &self,
        pod: &PodName,
        store: &impl Store,
    ) -> Result<Vec<InboxEntry>, PeerError> {
        let internal =
            |e: &dyn std::fmt::Display| PeerError::new(ErrorCode::Internal, e.to_string());
        let seqs = self
            .inboxes
            .get(pod)
            .map(|q| q.iter())
            .into_iter()
            .flatten();
        let mut entries = Vec::new();
        for seq in seqs {
            match store.read(Table::Inboxes, &message_key(pod, *seq)) {
                Ok(Some(bytes)) => {
                    entries.push(
                        codec::decode_record::<InboxEntry>(&bytes).map_err(|e| internal(&e))?,
                    );
                }
                Ok(None) => {}
                Err(e) => return Err(internal(&e)),
            }
        }
        Ok(entries)
    }

    pub(super) fn inbox(
        &mut self,
        pod: &PodName,
        drain: bool,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        if !self.pods.contains_key(pod) {
            return Some(Err(not_found_pod(pod)));
        }
        let seqs = self.inboxes.get(pod).cloned().unwrap_or_default();
        let entries = match self.inbox_messages(pod, store) {
            Ok(entries) => entries,
            Err(e) => return Some(Err(e)),
        };
        if drain && !seqs.is_empty() {
            let mut batch = WriteBatch::new();
            for seq in &seqs {
                batch.delete(Table::Inboxes, message_key(pod, *seq));
            }
            if let Err(e) = self.write(batch, store) {
                return Some(Err(e));
            }
            self.forget_inbox(pod);
        }
        Some(Ok(LocalReply::Inbox(entries)))
    }

    /// Removes `pod`'s messages up to and including `up_to`, in inbox order. Acknowledging a
    /// message removed before changes nothing; an id that was never in this inbox is an error.
    pub(super) fn inbox_ack(
        &mut self,
        pod: &PodName,
        up_to: &RequestId,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        if !self.pods.contains_key(pod) {
            return Some(Err(not_found_pod(pod)));
        }
        let internal =
            |e: &dyn std::fmt::Display| PeerError::new(ErrorCode::Internal, e.to_string());
        let queue = self.inboxes.get(pod).cloned().unwrap_or_default();
        // Read every message through `up_to`: the id may have left the dedupe window, and each
        // one's sender is needed for the shares.
        let mut through = Vec::new();
        let mut found = false;
        for seq in &queue {
            if self.dedupe.get(up_to).is_some_and(|s| s < seq) {
                break;
            }
            let entry = match store.read(Table::Inboxes, &message_key(pod, *seq)) {
                Ok(Some(bytes)) => codec::decode_record::<InboxEntry>(&bytes).ok(),
                Ok(None) => None,
                Err(e) => return Some(Err(internal(&e))),
            };
            found = entry.as_ref().is_some_and(|e| e.id == *up_to);
            through.push((*seq, entry.map(|e| e.from.node)));
            if found {
                break;
            }
        }
        if !found {
            // Removed before, by an ack or a drain, if this inbox once held it.
            let held_elsewhere = self.dedupe.get(up_to).is_some_and(|seq| {
                self.inboxes
                    .iter()
                    .any(|(p, q)| p != pod && q.contains(seq))
            });
            let removed_here = self
                .dedupe
                .get(up_to)
                .is_some_and(|seq| queue.front().is_none_or(|front| seq < front));
            if removed_here && !held_elsewhere {
                return Some(Ok(LocalReply::Acked { removed: 0 }));
            }
            return Some(Err(PeerError::new(
                ErrorCode::NotFound,
                format!("no message {up_to} in the inbox of {pod}"),
            )));
        }
        let mut batch = WriteBatch::new();
        for (seq, _) in &through {
            batch.delete(Table::Inboxes, message_key(pod, *seq));
        }
        if let Err(e) = self.write(batch, store) {
            return Some(Err(e));
        }
        if let Some(queue) = self.inboxes.get_mut(pod) {
            queue.drain(..through.len());
        }
        for node in through.iter().filter_map(|(_, node)| node.clone()) {
            let share = (pod.clone(), node);
            if let Some(held) = self.inbox_shares.get_mut(&share) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    self.inbox_shares.remove(&share);
                }
            }
        }
        Some(Ok(LocalReply::Acked {
            removed: through.len(),
        }))
    }
}
