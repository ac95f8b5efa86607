//! The reciprocal peer handshake (DESIGN section 5.1, "RegisterPeer: the reciprocal
//! handshake"), in both roles, with its durable log. The coordinator (the requesting Pod's
//! node) logs its intent, sends `Prepare`, and commits or aborts; the participant applies and
//! logs the change, then settles it when told the outcome or, after waiting, asks for it. After
//! a restart, [`Peers::load`] resumes every handshake the log shows unfinished. Requests from
//! other nodes land in `answer` here, which hands a `Deliver` on to the inbox.

use super::{
    COORD_PREFIX, CoordEntry, ENDED_PREFIX, ErrorCode, LocalReply, PART_PREFIX, PartEntry,
    PeerError, PeerOp, PeerRequest, PeerResponse, Peers, PeersOutput, Phase, PodEvent, RequestId,
    Rpc, Timer, id_key, not_found_pod,
};
use crate::codec;
use crate::pod::{PodAddr, PodName, PodRecord, PodStatus};
use crate::store::{Store, Table, WriteBatch};
use crate::{NodeName, Time};

impl Peers {
    /// Resumes unfinished handshakes after a restart: presumed abort for intents that never
    /// committed, re-sent `Commit` for those that did, and a wait (then `Query`) for every
    /// participant entry.
    pub(super) fn resume(&mut self, now: Time) {
        let ids: Vec<RequestId> = self.coordinating.keys().cloned().collect();
        for id in ids {
            let Some(entry) = self.coordinating.get_mut(&id) else {
                continue;
            };
            if entry.phase == Phase::Preparing {
                // The new phase is written lazily by the next store call; until then a second
                // crash simply resumes here again, with the same outcome.
                entry.phase = Phase::Aborting;
            }
            self.schedule(now, Timer::Resend { id });
        }
        let ids: Vec<RequestId> = self
            .participating
            .keys()
            .chain(self.ended.keys())
            .cloned()
            .collect();
        for id in ids {
            self.schedule(now + self.config.participant_wait, Timer::Wait { id });
        }
    }

    pub(super) fn handshake(
        &mut self,
        token: u64,
        pod: PodName,
        target: PodAddr,
        op: PeerOp,
        now: Time,
        store: &mut impl Store,
    ) -> Option<Result<LocalReply, PeerError>> {
        let source = PodAddr::new(pod.clone(), self.me.clone());
        let Some(record) = self.pods.get(&pod).cloned() else {
            return Some(Err(not_found_pod(&pod)));
        };
        if !matches!(record.status, PodStatus::Idle | PodStatus::Paused) {
            return Some(Err(PeerError::new(
                ErrorCode::AlreadyRunning,
                format!(
                    "pod {pod} is {}; peers change only while idle or paused",
                    record.status.as_str()
                ),
            )));
        }
        if target == source {
            return Some(Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!("pod {pod} cannot be registered as a peer of itself"),
            )));
        }
        if self.pair_busy(&source, &target) {
            return Some(Err(PeerError::new(
                ErrorCode::Busy,
                format!("a peer request between {source} and {target} is already in progress"),
            )));
        }
        if op == PeerOp::Register
            && record.peers.len() >= self.config.peers_per_pod_max
            && !record.peers.contains(&target)
        {
            return Some(Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "pod {pod} already has {} peers",
                    self.config.peers_per_pod_max
                ),
            )));
        }
        if target.node == self.me {
            return Some(self.local_handshake(&source, &target, op, store));
        }
        if self.handshakes_logged() >= self.config.handshakes_max {
            return Some(Err(PeerError::new(
                ErrorCode::Busy,
                format!(
                    "{} peer handshakes already in progress on this node",
                    self.config.handshakes_max
                ),
            )));
        }
        let id = match self.next_id(store) {
            Ok(id) => id,
            Err(e) => return Some(Err(e)),
        };
        let entry = CoordEntry {
            id: id.clone(),
            source,
            target: target.clone(),
            op,
            had_before: record.peers.contains(&target),
            phase: Phase::Preparing,
        };
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Handshakes,
            id_key(COORD_PREFIX, &id),
            codec::encode_record(&entry),
        );
        if let Err(e) = self.write(batch, store) {
            return Some(Err(e));
        }
        let request = PeerRequest::Prepare {
            id: id.clone(),
            source: entry.source.clone(),
            target: target.pod.clone(),
            op,
        };
        self.coordinating.insert(id.clone(), entry);
        self.waiting.insert(id.clone(), token);
        self.send_rpc(target.node.clone(), request, Rpc::Prepare { id }, now);
        None
    }

    /// Both Pods on this node: both directions in one transaction.
    fn local_handshake(
        &mut self,
        source: &PodAddr,
        target: &PodAddr,
        op: PeerOp,
        store: &mut impl Store,
    ) -> Result<LocalReply, PeerError> {
        let (Some(a), Some(b)) = (self.pods.get(&source.pod), self.pods.get(&target.pod)) else {
            return Err(not_found_pod(&target.pod));
        };
        let mut a = a.clone();
        let mut b = b.clone();
        set_edge(&mut a, target, op.wanted());
        set_edge(&mut b, source, op.wanted());
        self.write_pods(&[a.clone(), b.clone()], store)?;
        for record in [a, b] {
            self.publish(record.clone());
            self.pods.insert(record.name.clone(), record);
        }
        self.emit_relation(op, &source.pod, source, target);
        self.emit_relation(op, &target.pod, source, target);
        Ok(relation_reply(op, source, target))
    }

    // ---- coordinator ------------------------------------------------------------------

    pub(super) fn on_prepare_answer(
        &mut self,
        id: &RequestId,
        response: Option<PeerResponse>,
        now: Time,
        store: &mut impl Store,
    ) {
        let Some(entry) = self.coordinating.get(id).cloned() else {
            return;
        };
        if entry.phase != Phase::Preparing {
            return; // Already aborted (a participant's Query decided it).
        }
        match response {
            Some(PeerResponse::Prepared) => self.commit(entry, now, store),
            Some(PeerResponse::Rejected(error)) => {
                // Nothing changed anywhere; forget the intent. Should the delete fail, the
                // entry is aborted after a restart, which the participant answers "acked".
                let mut batch = WriteBatch::new();
                batch.delete(Table::Handshakes, id_key(COORD_PREFIX, id));
                let _ = self.write(batch, store);
                self.coordinating.remove(id);
                self.counters.handshakes_aborted += 1;
                self.answer_waiting(id, Err(error));
            }
            _ => {
                let error = PeerError::new(
                    ErrorCode::Unreachable,
                    format!(
                        "node {} did not answer the peer handshake",
                        entry.target.node.as_str()
                    ),
                );
                self.abort(id, error, now, store);
            }
        }
    }

    fn commit(&mut self, mut entry: CoordEntry, now: Time, store: &mut impl Store) {
        let Some(record) = self.pods.get(&entry.source.pod) else {
            let error = PeerError::new(ErrorCode::Internal, "the source pod disappeared");
            self.abort(&entry.id, error, now, store);
            return;
        };
        let mut record = record.clone();
        set_edge(&mut record, &entry.target, entry.op.wanted());
        entry.phase = Phase::Committed;
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Pods,
            record.name.as_str().as_bytes().to_vec(),
            codec::encode_record(&record),
        );
        batch.put(
            Table::Handshakes,
            id_key(COORD_PREFIX, &entry.id),
            codec::encode_record(&entry),
        );
        if let Err(error) = self.write(batch, store) {
            self.abort(&entry.id, error, now, store);
            return;
        }
        self.counters.handshakes_committed += 1;
        self.pods.insert(record.name.clone(), record.clone());
        self.publish(record);
        let id = entry.id.clone();
        let (source, target, op) = (entry.source.clone(), entry.target.clone(), entry.op);
        self.coordinating.insert(id.clone(), entry);
        self.emit_relation(op, &source.pod, &source, &target);
        self.answer_waiting(&id, Ok(relation_reply(op, &source, &target)));
        self.send_rpc(
            target.node.clone(),
            PeerRequest::Commit { id: id.clone() },
            Rpc::Commit { id },
            now,
        );
    }

    /// Aborts a handshake this node coordinates. The source Pod was never changed before
    /// commit, so its prior state is already in place; the participant is told to restore its.
    fn abort(&mut self, id: &RequestId, error: PeerError, now: Time, store: &mut impl Store) {
        let Some(entry) = self.coordinating.get_mut(id) else {
            return;
        };
        entry.phase = Phase::Aborting;
        let entry = entry.clone();
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Handshakes,
            id_key(COORD_PREFIX, id),
            codec::encode_record(&entry),
        );
        // A failed write is harmless: the stored entry still says Preparing, which a restart
        // aborts too.
        let _ = self.write(batch, store);
        self.counters.handshakes_aborted += 1;
        self.answer_waiting(id, Err(error));
        let to = entry.target.node.clone();
        self.send_rpc(
            to,
            PeerRequest::Abort { id: id.clone() },
            Rpc::Abort { id: id.clone() },
            now,
        );
    }

    pub(super) fn resend(&mut self, id: &RequestId, now: Time, store: &mut impl Store) {
        let Some(entry) = self.coordinating.get(id).cloned() else {
            return;
        };
        if self
            .rpcs
            .values()
            .any(|r| matches!(r, Rpc::Commit { id: i } | Rpc::Abort { id: i } if i == id))
        {
            return;
        }
        match entry.phase {
            Phase::Committed => {
                let to = entry.target.node.clone();
                self.send_rpc(
                    to,
                    PeerRequest::Commit { id: id.clone() },
                    Rpc::Commit { id: id.clone() },
                    now,
                );
            }
            Phase::Aborting | Phase::Preparing => {
                if entry.phase == Phase::Preparing {
                    let error =
                        PeerError::new(ErrorCode::Unreachable, "the handshake was interrupted");
                    self.abort(id, error, now, store);
                    return;
                }
                let mut batch = WriteBatch::new();
                batch.put(
                    Table::Handshakes,
                    id_key(COORD_PREFIX, id),
                    codec::encode_record(&entry),
                );
                let _ = self.write(batch, store);
                let to = entry.target.node.clone();
                self.send_rpc(
                    to,
                    PeerRequest::Abort { id: id.clone() },
                    Rpc::Abort { id: id.clone() },
                    now,
                );
            }
        }
    }

    pub(super) fn finish_coordinator(&mut self, id: &RequestId, now: Time, store: &mut impl Store) {
        let mut batch = WriteBatch::new();
        batch.delete(Table::Handshakes, id_key(COORD_PREFIX, id));
        if self.write(batch, store).is_ok() {
            self.coordinating.remove(id);
        } else {
            // The entry stays: send its outcome again later, which the participant
            // acknowledges again, and retry the delete then.
            self.schedule(
                now + self.config.resend_interval,
                Timer::Resend { id: id.clone() },
            );
        }
    }

    fn answer_waiting(&mut self, id: &RequestId, result: Result<LocalReply, PeerError>) {
        if let Some(token) = self.waiting.remove(id) {
            self.push(PeersOutput::Reply { token, result });
        }
    }

    // ---- participant and receiver -----------------------------------------------------

    pub(super) fn answer(
        &mut self,
        from: &NodeName,
        request: PeerRequest,
        now: Time,
        store: &mut impl Store,
    ) -> PeerResponse {
        match request {
            PeerRequest::Prepare {
                id,
                source,
                target,
                op,
            } => {
                if source.node != *from || id.node != *from {
                    self.counters.identity_mismatches += 1;
                    return PeerResponse::Rejected(PeerError::new(
                        ErrorCode::InvalidRequest,
                        format!("node {} cannot act for {source}", from.as_str()),
                    ));
                }
                match self.prepare(id, source, target, op, now, store) {
                    Ok(()) => PeerResponse::Prepared,
                    Err(error) => PeerResponse::Rejected(error),
                }
            }
            PeerRequest::Commit { id } | PeerRequest::Abort { id } if id.node != *from => {
                self.counters.identity_mismatches += 1;
                PeerResponse::Rejected(PeerError::new(
                    ErrorCode::InvalidRequest,
                    "only the coordinator decides a handshake",
                ))
            }
            PeerRequest::Commit { id } => {
                if self.settle_participant(&id, true, store) {
                    PeerResponse::Acked
                } else {
                    PeerResponse::Rejected(PeerError::new(
                        ErrorCode::Internal,
                        "store write failed",
                    ))
                }
            }
            PeerRequest::Abort { id } => {
                if self.settle_participant(&id, false, store) {
                    PeerResponse::Acked
                } else {
                    PeerResponse::Rejected(PeerError::new(
                        ErrorCode::Internal,
                        "store write failed",
                    ))
                }
            }
            PeerRequest::Query { id } => {
                let entry = self.coordinating.get(&id);
                if entry.is_some_and(|e| e.target.node != *from) {
                    // Only the participant may ask: an answer to anyone else could abort a
                    // handshake that is still preparing.
                    self.counters.identity_mismatches += 1;
                    return PeerResponse::Rejected(PeerError::new(
                        ErrorCode::InvalidRequest,
                        "only the participant may ask for a handshake's outcome",
                    ));
                }
                let committed = match entry.map(|e| e.phase) {
                    Some(Phase::Committed) => true,
                    Some(Phase::Preparing) => {
                        // The Prepared answer was lost; decide now, for good.
                        let error = PeerError::new(
                            ErrorCode::Unreachable,
                            "the peer handshake's answer was lost",
                        );
                        self.abort(&id, error, now, store);
                        false
                    }
                    // Aborting, or unknown: presumed abort.
                    _ => false,
                };
                PeerResponse::Outcome { committed }
            }
            // Staged for a group commit by `Peers::receive`, before this dispatch.
            PeerRequest::Deliver { .. } => PeerResponse::Rejected(PeerError::new(
                ErrorCode::Internal,
                "a delivery is not a handshake request",
            )),
        }
    }

    fn prepare(
        &mut self,
        id: RequestId,
        source: PodAddr,
        target: PodName,
        op: PeerOp,
        now: Time,
        store: &mut impl Store,
    ) -> Result<(), PeerError> {
        if self.ended.contains_key(&id) {
            // Its coordinator was gone long enough for this node to end it. A coordinator that
            // re-sends a Prepare never had its answer, so it has not committed: the marker goes
            // (the Pod is as before already), and the refusal makes the coordinator abort.
            self.settle_ended(&id, false, store);
            return Err(PeerError::new(
                ErrorCode::Busy,
                "handshake ended here while its coordinator was gone",
            ));
        }
        if let Some(existing) = self.participating.get(&id) {
            // A re-sent Prepare: the first one was applied and logged.
            return if existing.source == source && existing.target == target {
                Ok(())
            } else {
                Err(PeerError::new(
                    ErrorCode::InvalidRequest,
                    "handshake id reused",
                ))
            };
        }
        let Some(record) = self.pods.get(&target) else {
            return Err(not_found_pod(&target));
        };
        let target_addr = PodAddr::new(target.clone(), self.me.clone());
        if self.pair_busy(&target_addr, &source) {
            return Err(PeerError::new(
                ErrorCode::Busy,
                format!("a peer request between {source} and {target_addr} is already in progress"),
            ));
        }
        if self.handshakes_logged() >= self.config.handshakes_max {
            return Err(PeerError::new(
                ErrorCode::Busy,
                "too many peer handshakes in progress",
            ));
        }
        let coordinator = &id.node;
        // Ended entries count too: a coordinator resolves them (it comes back and sends their
        // outcome) before it starts more here, so what it leaves behind stays within its share.
        let held = self
            .participating
            .keys()
            .chain(self.ended.keys())
            .filter(|other| other.node == *coordinator)
            .count();
        if held >= self.config.handshakes_per_node_max {
            return Err(PeerError::new(
                ErrorCode::Busy,
                format!(
                    "{held} peer handshakes of {coordinator} already in progress here, its share"
                ),
            ));
        }
        let had_before = record.peers.contains(&source);
        if op == PeerOp::Register
            && !had_before
            && record.peers.len() >= self.config.peers_per_pod_max
        {
            return Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "pod {target} already has {} peers",
                    self.config.peers_per_pod_max
                ),
            ));
        }
        let from_node = record
            .peers
            .iter()
            .filter(|peer| peer.node == source.node)
            .count();
        if op == PeerOp::Register
            && !had_before
            && from_node >= self.config.peers_per_pod_per_node_max
        {
            return Err(PeerError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "pod {target} already has {from_node} peers on {}, that node's share",
                    source.node
                ),
            ));
        }
        let mut record = record.clone();
        set_edge(&mut record, &source, op.wanted());
        let entry = PartEntry {
            id: id.clone(),
            source,
            target,
            op,
            had_before,
        };
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Pods,
            record.name.as_str().as_bytes().to_vec(),
            codec::encode_record(&record),
        );
        batch.put(
            Table::Handshakes,
            id_key(PART_PREFIX, &id),
            codec::encode_record(&entry),
        );
        self.write(batch, store)?;
        self.pods.insert(record.name.clone(), record);
        self.participating.insert(id.clone(), entry);
        self.waiting_since.insert(id.clone(), now);
        self.schedule(now + self.config.participant_wait, Timer::Wait { id });
        Ok(())
    }

    /// Applies the outcome of a handshake this node took part in. Returns whether the outcome
    /// is durable (an unknown id was settled earlier, which is durable too).
    pub(super) fn settle_participant(
        &mut self,
        id: &RequestId,
        committed: bool,
        store: &mut impl Store,
    ) -> bool {
        let Some(entry) = self.participating.get(id).cloned() else {
            return self.settle_ended(id, committed, store);
        };
        let mut batch = WriteBatch::new();
        batch.delete(Table::Handshakes, id_key(PART_PREFIX, id));
        let restored = if committed {
            None
        } else {
            self.stage_edge(&entry, entry.had_before, &mut batch)
        };
        if self.write(batch, store).is_err() {
            return false;
        }
        self.participating.remove(id);
        self.waiting_since.remove(id);
        if let Some(record) = restored {
            self.pods.insert(record.name.clone(), record);
        }
        if let Some(record) = self.pods.get(&entry.target).cloned() {
            self.publish(record);
        }
        if committed {
            let target = PodAddr::new(entry.target.clone(), self.me.clone());
            self.emit_relation(entry.op, &entry.target, &entry.source, &target);
        }
        true
    }

    /// Ends participant entry `id`, whose coordinator membership has forgotten and which has
    /// waited `participant_give_up`: the Pod goes back to its state before the Prepare, as on
    /// an abort, and the entry stays as an ended marker in the same transaction. A marker holds
    /// no handshake slot; it counts in its coordinator's share and keeps its pair busy, and it
    /// is still asked about every `participant_wait` (a request membership fails at once while
    /// the coordinator is unknown). Once the coordinator is back, its outcome, or a presumed
    /// abort for an id it no longer knows, settles the marker ([`Peers::settle_ended`]):
    /// nothing reported to a user is lost, nothing stays one-sided once the two nodes talk
    /// again. Returns whether the end is durable.
    pub(super) fn end_participant(&mut self, id: &RequestId, store: &mut impl Store) -> bool {
        let Some(entry) = self.participating.get(id).cloned() else {
            return true;
        };
        let mut batch = WriteBatch::new();
        batch.delete(Table::Handshakes, id_key(PART_PREFIX, id));
        batch.put(
            Table::Handshakes,
            id_key(ENDED_PREFIX, id),
            codec::encode_record(&entry),
        );
        let restored = self.stage_edge(&entry, entry.had_before, &mut batch);
        if self.write(batch, store).is_err() {
            return false;
        }
        self.participating.remove(id);
        self.waiting_since.remove(id);
        self.counters.handshakes_ended += 1;
        if let Some(record) = restored {
            self.pods.insert(record.name.clone(), record.clone());
            self.publish(record);
        }
        self.ended.insert(id.clone(), entry);
        true
    }

    /// The outcome of a handshake whose entry ended here while its coordinator was gone. An
    /// abort finds the Pod as it was before the Prepare already; a commit, which the coordinator
    /// may have reported to its user, applies the relation now. Unknown ids were settled
    /// earlier. Returns whether the outcome is durable.
    pub(super) fn settle_ended(
        &mut self,
        id: &RequestId,
        committed: bool,
        store: &mut impl Store,
    ) -> bool {
        let Some(entry) = self.ended.get(id).cloned() else {
            return true;
        };
        let mut batch = WriteBatch::new();
        batch.delete(Table::Handshakes, id_key(ENDED_PREFIX, id));
        let applied = if committed {
            self.stage_edge(&entry, entry.op.wanted(), &mut batch)
        } else {
            None
        };
        if self.write(batch, store).is_err() {
            return false;
        }
        self.ended.remove(id);
        if let Some(record) = applied {
            self.pods.insert(record.name.clone(), record.clone());
            self.publish(record);
            let target = PodAddr::new(entry.target.clone(), self.me.clone());
            self.emit_relation(entry.op, &entry.target, &entry.source, &target);
        }
        true
    }

    // ---- helpers ----------------------------------------------------------------------

    /// The participant entry's Pod with the relation to its source `present` or not, staged in
    /// `batch`; `None` when the Pod is gone.
    fn stage_edge(
        &self,
        entry: &PartEntry,
        present: bool,
        batch: &mut WriteBatch,
    ) -> Option<PodRecord> {
        let mut record = self.pods.get(&entry.target)?.clone();
        set_edge(&mut record, &entry.source, present);
        batch.put(
            Table::Pods,
            record.name.as_str().as_bytes().to_vec(),
            codec::encode_record(&record),
        );
        Some(record)
    }

    /// Whether a handshake between these two Pods (either direction) is logged.
    fn pair_busy(&self, a: &PodAddr, b: &PodAddr) -> bool {
        let same = |x: &PodAddr, y: &PodAddr| (x == a && y == b) || (x == b && y == a);
        self.coordinating
            .values()
            .any(|e| same(&e.source, &e.target))
            || self
                .participating
                .values()
                .chain(self.ended.values())
                .any(|e| {
                    let target = PodAddr::new(e.target.clone(), self.me.clone());
                    same(&e.source, &target)
                })
    }

    pub(super) fn involved(&self, pod: &PodName) -> bool {
        self.coordinating.values().any(|e| e.source.pod == *pod)
            || self.participating.values().any(|e| e.target == *pod)
    }

    fn emit_relation(&mut self, op: PeerOp, pod: &PodName, source: &PodAddr, peer: &PodAddr) {
        let (pod, source, peer) = (pod.clone(), source.clone(), peer.clone());
        self.push(PeersOutput::Event(match op {
            PeerOp::Register => PodEvent::PeerRegistered { pod, source, peer },
            PeerOp::Unregister => PodEvent::PeerUnregistered { pod, source, peer },
        }));
    }
}

fn set_edge(record: &mut PodRecord, other: &PodAddr, present: bool) {
    if present {
        record.peers.insert(other.clone());
    } else {
        record.peers.remove(other);
    }
}

fn relation_reply(op: PeerOp, source: &PodAddr, peer: &PodAddr) -> LocalReply {
    let (source, peer) = (source.clone(), peer.clone());
    match op {
        PeerOp::Register => LocalReply::PeerRegistered { source, peer },
        PeerOp::Unregister => LocalReply::PeerUnregistered { source, peer },
    }
}
