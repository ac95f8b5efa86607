//! The peer handshake and delivery, driven deterministically between in-memory nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::MemStore;

const N1: &str = "n1";
const N2: &str = "n2";

fn node(name: &str) -> NodeName {
    name.parse().unwrap()
}

fn pod(name: &str) -> PodName {
    name.parse().unwrap()
}

fn addr(s: &str) -> PodAddr {
    s.parse().unwrap()
}

/// Feeds a peer request under `ticket` and commits at once when it is a staged delivery, as a
/// driver with nothing else waiting does. The answer if it came now; a committed delivery's
/// answer is among the outputs, as `PeersOutput::Answer`.
fn request_now(
    peers: &mut Peers,
    store: &mut MemStore,
    ticket: u64,
    from: &str,
    bytes: &[u8],
    now: Time,
    wall_ms: u64,
) -> Option<Vec<u8>> {
    match peers.handle_request(ticket, &node(from), bytes, now, wall_ms, store) {
        Answer::Now(answer) => Some(answer),
        Answer::Later => {
            peers.commit_deliveries(store);
            None
        }
        Answer::Refused => None,
    }
}

/// A few nodes, each a `Peers` over its own `MemStore`, with RPCs carried by hand so tests can
/// lose, delay or crash at any step.
struct Net {
    nodes: BTreeMap<String, (Peers, MemStore)>,
    now: Time,
    /// Requests sent and not yet carried: (rpc, from, to, bytes).
    requests: Vec<(u64, String, String, Vec<u8>)>,
    replies: BTreeMap<(String, u64), Result<LocalReply, PeerError>>,
    /// Answers to staged deliveries, by (answering node, ticket).
    answers: BTreeMap<(String, u64), Vec<u8>>,
    events: Vec<(String, PodEvent)>,
    next_token: u64,
}

impl Net {
    fn new(names: &[&str]) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            now: Time::ZERO,
            requests: Vec::new(),
            replies: BTreeMap::new(),
            answers: BTreeMap::new(),
            events: Vec::new(),
            next_token: 0,
        };
        for name in names {
            let store = MemStore::new();
            let peers =
                Peers::load(node(name), 1, PeersConfig::default(), &store, Time::ZERO).unwrap();
            net.nodes.insert((*name).to_owned(), (peers, store));
        }
        net
    }

    /// Runs a local operation on `at`; returns its token.
    fn op(&mut self, at: &str, op: LocalOp) -> u64 {
        self.next_token += 1;
        let token = self.next_token;
        let now = self.now;
        let (peers, store) = self.nodes.get_mut(at).unwrap();
        peers.handle_local(token, op, now, 1_000, store);
        peers.commit_deliveries(store);
        self.collect(at);
        token
    }

    fn collect(&mut self, at: &str) {
        let (peers, _) = self.nodes.get_mut(at).unwrap();
        while let Some(output) = peers.poll_output() {
            match output {
                PeersOutput::Request { rpc, to, bytes } => {
                    self.requests
                        .push((rpc, at.to_owned(), to.as_str().to_owned(), bytes));
                }
                PeersOutput::Reply { token, result } => {
                    self.replies.insert((at.to_owned(), token), result);
                }
                PeersOutput::Event(event) => self.events.push((at.to_owned(), event)),
                PeersOutput::Publish { .. } => {}
                PeersOutput::Answer { ticket, bytes } => {
                    self.answers.insert((at.to_owned(), ticket), bytes);
                }
            }
        }
    }

    fn create(&mut self, at: &str, name: &str) {
        let token = self.op(
            at,
            LocalOp::CreatePod {
                name: pod(name),
                parent: None,
            },
        );
        assert!(self.reply(at, token).is_ok());
    }

    fn reply(&self, at: &str, token: u64) -> Result<LocalReply, PeerError> {
        self.replies
            .get(&(at.to_owned(), token))
            .cloned()
            .expect("a reply for this token")
    }

    /// Carries the oldest request to its node and its answer back, unless `lose_answer`.
    fn carry_one(&mut self, lose_answer: bool) {
        let (rpc, from, to, bytes) = self.requests.remove(0);
        let now = self.now;
        let answer = {
            let (peers, store) = self.nodes.get_mut(&to).unwrap();
            request_now(peers, store, rpc, &from, &bytes, now, 2_000)
        };
        self.collect(&to);
        let answer = answer.or_else(|| self.answers.remove(&(to.clone(), rpc)));
        if !lose_answer {
            let (peers, store) = self.nodes.get_mut(&from).unwrap();
            peers.handle_response(rpc, answer.as_deref(), now, store);
            self.collect(&from);
        }
    }

    /// Carries requests until none is left (each answer delivered).
    fn settle(&mut self) {
        let mut steps = 0;
        while !self.requests.is_empty() {
            self.carry_one(false);
            steps += 1;
            assert!(steps < 100, "the exchange does not settle");
        }
    }

    /// Advances time to `t` and fires due timers everywhere.
    fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
        let now = self.now;
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            let (peers, store) = self.nodes.get_mut(&name).unwrap();
            peers.handle_timeout(now, store);
            self.collect(&name);
        }
    }

    /// Crashes `at` and restarts it from its store (unsent outputs and timers are lost).
    fn restart(&mut self, at: &str) {
        self.requests.retain(|(_, from, _, _)| from != at);
        let (_, store) = self.nodes.remove(at).unwrap();
        let peers = Peers::load(node(at), 2, PeersConfig::default(), &store, self.now).unwrap();
        self.nodes.insert(at.to_owned(), (peers, store));
        self.collect(at);
    }

    fn peers_of(&self, at: &str, name: &str) -> Vec<String> {
        self.nodes[at]
            .0
            .pod(&pod(name))
            .unwrap()
            .peers
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn store_mut(&mut self, at: &str) -> &mut MemStore {
        &mut self.nodes.get_mut(at).unwrap().1
    }

    fn logged(&self, at: &str) -> usize {
        self.nodes[at].0.handshakes_logged()
    }
}

fn two_pods() -> Net {
    let mut net = Net::new(&[N1, N2]);
    net.create(N1, "a");
    net.create(N2, "b");
    net
}

fn register(net: &mut Net) -> u64 {
    net.op(
        N1,
        LocalOp::RegisterPeer {
            pod: pod("a"),
            target: addr("b@n2"),
        },
    )
}

#[test]
fn same_node_pods_become_peers_in_one_transaction() {
    // Both directions are written by one batch: one store write for the whole relation.
    let mut net = Net::new(&[N1]);
    net.create(N1, "a");
    net.create(N1, "b");
    let writes = net.nodes[N1].1.writes();
    let token = net.op(
        N1,
        LocalOp::RegisterPeer {
            pod: pod("a"),
            target: addr("b@n1"),
        },
    );
    assert!(matches!(
        net.reply(N1, token),
        Ok(LocalReply::PeerRegistered { .. })
    ));
    assert_eq!(net.nodes[N1].1.writes(), writes + 1);
    assert_eq!(net.peers_of(N1, "a"), ["b@n1"]);
    assert_eq!(net.peers_of(N1, "b"), ["a@n1"]);
}

#[test]
fn a_cross_node_handshake_records_the_relation_on_both_sides() {
    // Prepare, Prepared, commit, Commit, Acked: both logs empty, both Pods list each other.
    let mut net = two_pods();
    let token = register(&mut net);
    net.settle();
    assert_eq!(
        net.reply(N1, token),
        Ok(LocalReply::PeerRegistered {
            source: addr("a@n1"),
            peer: addr("b@n2")
        })
    );
    assert_eq!(net.peers_of(N1, "a"), ["b@n2"]);
    assert_eq!(net.peers_of(N2, "b"), ["a@n1"]);
    assert_eq!((net.logged(N1), net.logged(N2)), (0, 0));
    // Clients attached to either Pod hear of it.
    assert!(
        net.events
            .iter()
            .any(|(n, e)| n == N1 && matches!(e, PodEvent::PeerRegistered { .. }))
    );
    assert!(
        net.events
            .iter()
            .any(|(n, e)| n == N2 && matches!(e, PodEvent::PeerRegistered { .. }))
    );
}

#[test]
fn unregister_removes_the_relation_on_both_sides() {
    // The same exchange, removing.
    let mut net = two_pods();
    register(&mut net);
    net.settle();
    let token = net.op(
        N1,
        LocalOp::UnregisterPeer {
            pod: pod("a"),
            target: addr("b@n2"),
        },
    );
    net.settle();
    assert!(matches!(
        net.reply(N1, token),
        Ok(LocalReply::PeerUnregistered { .. })
    ));
    assert!(net.peers_of(N1, "a").is_empty());
    assert!(net.peers_of(N2, "b").is_empty());
}

#[test]
fn refusals_come_in_order_with_their_codes_and_change_nothing() {
    // Running source, self, missing source and missing target are each refused cleanly.
    let mut net = two_pods();
    let token = net.op(
        N1,
        LocalOp::SetStatus {
            name: pod("a"),
            status: PodStatus::Running,
        },
    );
    assert!(net.reply(N1, token).is_ok());
    let token = register(&mut net);
    assert_eq!(
        net.reply(N1, token).unwrap_err().code,
        ErrorCode::AlreadyRunning
    );
    net.op(
        N1,
        LocalOp::SetStatus {
            name: pod("a"),
            status: PodStatus::Paused,
        },
    );

    let token = net.op(
        N1,
        LocalOp::RegisterPeer {
            pod: pod("a"),
            target: addr("a@n1"),
        },
    );
    let error = net.reply(N1, token).unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidRequest);
    assert!(
        error
            .message
            .contains("cannot be registered as a peer of itself")
    );

    let token = net.op(
        N1,
        LocalOp::RegisterPeer {
            pod: pod("zz"),
            target: addr("b@n2"),
        },
    );
    assert_eq!(net.reply(N1, token).unwrap_err().code, ErrorCode::NotFound);

    let token = net.op(
        N1,
        LocalOp::RegisterPeer {
            pod: pod("a"),
            target: addr("nobody@n2"),
        },
    );
    net.settle();
    assert_eq!(net.reply(N1, token).unwrap_err().code, ErrorCode::NotFound);
    assert!(net.peers_of(N1, "a").is_empty());
    assert_eq!((net.logged(N1), net.logged(N2)), (0, 0));
}

#[test]
fn a_lost_prepared_answer_aborts_and_the_participant_restores_its_pod() {
    // The participant applied Prepare, the answer never came back: the user hears
    // `unreachable`, and after Abort both sides are exactly as before.
    let mut net = two_pods();
    let token = register(&mut net);
    net.carry_one(true);
    assert_eq!(net.peers_of(N2, "b"), ["a@n1"], "prepared, not yet settled");
    net.advance(PeersConfig::default().rpc_timeout);
    assert_eq!(
        net.reply(N1, token).unwrap_err().code,
        ErrorCode::Unreachable
    );
    net.settle();
    assert!(net.peers_of(N1, "a").is_empty());
    assert!(net.peers_of(N2, "b").is_empty());
    assert_eq!((net.logged(N1), net.logged(N2)), (0, 0));
}

#[test]
fn an_aborted_register_keeps_a_relation_that_existed_before() {
    // Re-registering an existing pair and losing the answer must not remove the old relation.
    let mut net = two_pods();
    register(&mut net);
    net.settle();
    let token = register(&mut net);
    net.carry_one(true);
    net.advance(PeersConfig::default().rpc_timeout);
    assert!(net.reply(N1, token).is_err());
    net.settle();
    assert_eq!(net.peers_of(N1, "a"), ["b@n2"]);
    assert_eq!(net.peers_of(N2, "b"), ["a@n1"]);
}

#[test]
fn a_coordinator_crash_before_commit_is_a_presumed_abort() {
    // The coordinator dies after the participant prepared: on restart it aborts.
    let mut net = two_pods();
    register(&mut net);
    net.carry_one(true);
    net.restart(N1);
    net.advance(Duration::ZERO);
    net.settle();
    assert!(net.peers_of(N1, "a").is_empty());
    assert!(net.peers_of(N2, "b").is_empty());
    assert_eq!((net.logged(N1), net.logged(N2)), (0, 0));
}

#[test]
fn a_coordinator_crash_after_commit_resends_commit() {
    // Committed on the coordinator, Commit lost, coordinator restarts: Commit goes again.
    let mut net = two_pods();
    let token = register(&mut net);
    net.carry_one(false); // Prepare -> Prepared -> commit
    assert!(net.reply(N1, token).is_ok());
    assert_eq!(net.requests.len(), 1, "the Commit request");
    net.restart(N1);
    assert_eq!(net.logged(N2), 1);
    net.advance(Duration::ZERO);
    net.settle();
    assert_eq!(net.peers_of(N1, "a"), ["b@n2"]);
    assert_eq!(net.peers_of(N2, "b"), ["a@n1"]);
    assert_eq!((net.logged(N1), net.logged(N2)), (0, 0));
}

#[test]
fn a_participant_that_waits_too_long_asks_the_coordinator() {
    // Commit keeps getting lost; the participant's Query learns the outcome.
    let mut net = two_pods();
    register(&mut net);
    net.carry_one(false);
    net.requests.clear(); // the Commit is lost
    net.advance(PeersConfig::default().participant_wait);
    let query = net
        .requests
        .iter()
        .position(|(_, from, _, _)| from == N2)
        .expect("a Query");
    let request = net.requests.remove(query);
    net.requests.insert(0, request);
    net.carry_one(false);
    assert_eq!(net.logged(N2), 0, "settled by the Query");
    assert_eq!(net.peers_of(N2, "b"), ["a@n1"]);
    // The coordinator's own Commit re-send is acknowledged as already settled.
    net.advance(PeersConfig::default().rpc_timeout);
    net.advance(PeersConfig::default().resend_interval);
    net.settle();
    assert_eq!((net.logged(N1), net.logged(N2)), (0, 0));
}

#[test]
fn a_failed_write_on_the_participant_rejects_with_nothing_changed() {
    // B's node cannot write: Rejected, and neither side changes.
    let mut net = two_pods();
    net.store_mut(N2).fail_next_writes(1);
    let token = register(&mut net);
    net.settle();
    assert_eq!(net.reply(N1, token).unwrap_err().code, ErrorCode::Internal);
    assert!(net.peers_of(N1, "a").is_empty());
    assert!(net.peers_of(N2, "b").is_empty());
    assert_eq!((net.logged(N1), net.logged(N2)), (0, 0));
}

#[test]
fn a_restart_gossips_every_pod_record_again() {
    // A new life is a new generation of replicated state: without a fresh Publish, the mesh
    // would bury the previous life's records and other nodes would lose these Pods.
    let mut net = two_pods();
    let (_, store) = net.nodes.remove(N1).unwrap();
    let mut peers = Peers::load(node(N1), 2, PeersConfig::default(), &store, net.now).unwrap();
    let mut published = Vec::new();
    while let Some(output) = peers.poll_output() {
        if let PeersOutput::Publish { pod, record } = output {
            assert!(record.is_some());
            published.push(pod.to_string());
        }
    }
    assert_eq!(published, ["a"]);
}

#[test]
fn a_failed_delete_of_the_coordinator_log_is_retried() {
    // Committed and acknowledged, but deleting the coordinator's entry fails: it must not stay
    // logged until some later restart.
    let mut net = two_pods();
    let token = register(&mut net);
    net.carry_one(false); // Prepare -> Prepared -> commit written
    assert!(net.reply(N1, token).is_ok());
    net.store_mut(N1).fail_next_writes(1);
    net.carry_one(false); // Commit -> Acked; the delete fails
    assert_eq!(net.logged(N1), 1);
    net.advance(PeersConfig::default().resend_interval);
    net.settle();
    assert_eq!((net.logged(N1), net.logged(N2)), (0, 0));
    assert_eq!(net.peers_of(N2, "b"), ["a@n1"]);
}

#[test]
fn a_participant_that_cannot_write_the_queried_outcome_asks_again() {
    // The Query's answer arrives but settling fails to write: the participant asks again.
    let mut net = two_pods();
    register(&mut net);
    net.carry_one(false);
    net.requests.clear(); // the Commit is lost
    net.advance(PeersConfig::default().participant_wait);
    net.requests.retain(|(_, from, _, _)| from == N2); // only the Query
    net.store_mut(N2).fail_next_writes(1);
    net.carry_one(false);
    assert_eq!(net.logged(N2), 1, "not settled: the write failed");
    net.requests.clear(); // and the coordinator's re-sent Commit is lost too
    net.advance(PeersConfig::default().resend_interval);
    net.requests.retain(|(_, from, _, _)| from == N2);
    assert_eq!(net.requests.len(), 1, "a second Query");
    net.carry_one(false);
    assert_eq!(net.logged(N2), 0);
    assert_eq!(net.peers_of(N2, "b"), ["a@n1"]);
}

#[test]
fn a_failed_commit_write_on_the_coordinator_aborts_both_sides() {
    // Prepared arrives but the coordinator cannot write its commit: failure, then Abort.
    let mut net = two_pods();
    let token = register(&mut net);
    net.store_mut(N1).fail_next_writes(1);
    net.settle();
    assert_eq!(net.reply(N1, token).unwrap_err().code, ErrorCode::Internal);
    assert!(net.peers_of(N1, "a").is_empty());
    assert!(net.peers_of(N2, "b").is_empty());
    assert_eq!((net.logged(N1), net.logged(N2)), (0, 0));
}

#[test]
fn concurrent_requests_on_one_pair_are_serialised() {
    // While a handshake on (a, b) is in flight, a second one from either side is `busy`.
    let mut net = two_pods();
    register(&mut net);
    let second = register(&mut net);
    assert_eq!(net.reply(N1, second).unwrap_err().code, ErrorCode::Busy);
    net.carry_one(false); // n2 now holds a participant entry until Commit arrives
    let reverse = net.op(
        N2,
        LocalOp::RegisterPeer {
            pod: pod("b"),
            target: addr("a@n1"),
        },
    );
    assert_eq!(net.reply(N2, reverse).unwrap_err().code, ErrorCode::Busy);
    net.settle();
    assert_eq!(net.peers_of(N2, "b"), ["a@n1"]);
}

#[test]
fn a_prepare_that_claims_another_node_is_rejected() {
    // n2 receives a Prepare from n3 that says it comes from a@n1: refused, nothing changed.
    let mut net = Net::new(&[N1, N2, "n3"]);
    net.create(N2, "b");
    let forged = PeerRequest::Prepare {
        id: RequestId {
            node: node(N1),
            incarnation: 1,
            seq: 1,
        },
        source: addr("a@n1"),
        target: pod("b"),
        op: PeerOp::Register,
    };
    let now = net.now;
    let (peers, store) = net.nodes.get_mut(N2).unwrap();
    let answer = request_now(peers, store, 0, "n3", &codec::encode_peer(&forged), now, 0).unwrap();
    let answer: PeerResponse = codec::decode_peer(&answer, RESPONSE_SIZE_MAX).unwrap();
    assert!(matches!(
        answer,
        PeerResponse::Rejected(PeerError {
            code: ErrorCode::InvalidRequest,
            ..
        })
    ));
    assert_eq!(peers.counters().identity_mismatches, 1);
    assert!(net.peers_of(N2, "b").is_empty());
}

fn peered() -> Net {
    let mut net = two_pods();
    register(&mut net);
    net.settle();
    net
}

fn send(net: &mut Net, body: &str) -> u64 {
    net.op(
        N1,
        LocalOp::Send {
            pod: pod("a"),
            target: addr("b@n2"),
            body: body.to_owned(),
            live: true,
        },
    )
}

fn inbox(net: &mut Net, at: &str, name: &str) -> Vec<InboxEntry> {
    let token = net.op(
        at,
        LocalOp::Inbox {
            pod: pod(name),
            drain: false,
        },
    );
    match net.reply(at, token) {
        Ok(LocalReply::Inbox(entries)) => entries,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_message_is_acknowledged_only_once_stored_and_labelled_by_the_sender_node() {
    // Delivered means in B's inbox, with the sender as authenticated, and a notification.
    let mut net = peered();
    let token = send(&mut net, "hello");
    net.settle();
    assert!(matches!(
        net.reply(N1, token),
        Ok(LocalReply::Delivered { .. })
    ));
    let entries = inbox(&mut net, N2, "b");
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (
            entries[0].from.to_string().as_str(),
            entries[0].body.as_str()
        ),
        ("a@n1", "hello")
    );
    assert_eq!(entries[0].received_at_ms, 2_000);
    assert!(
        net.events
            .iter()
            .any(|(n, e)| n == N2 && matches!(e, PodEvent::Notification { .. }))
    );
}

#[test]
fn a_retried_message_is_stored_exactly_once() {
    // The Delivered answer is lost; the retry carries the same id and is not stored twice.
    let mut net = peered();
    let token = send(&mut net, "once");
    net.carry_one(true);
    net.advance(PeersConfig::default().rpc_timeout);
    net.settle();
    assert!(matches!(
        net.reply(N1, token),
        Ok(LocalReply::Delivered { .. })
    ));
    assert_eq!(inbox(&mut net, N2, "b").len(), 1);
    assert_eq!(net.nodes[N2].0.counters().duplicates, 1);
}

#[test]
fn messages_survive_a_restart_of_the_receiver() {
    // The inbox is durable.
    let mut net = peered();
    send(&mut net, "durable");
    net.settle();
    net.restart(N2);
    let entries = inbox(&mut net, N2, "b");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].body, "durable");
}

#[test]
fn only_peers_may_deliver() {
    // A Pod on n3 that is not b's peer is refused, whatever it claims.
    let mut net = Net::new(&[N1, N2, "n3"]);
    net.create(N2, "b");
    net.create("n3", "a");
    let deliver = PeerRequest::Deliver {
        id: RequestId {
            node: node("n3"),
            incarnation: 1,
            seq: 1,
        },
        from: pod("a"),
        to: pod("b"),
        body: "hi".into(),
    };
    let now = net.now;
    let (peers, store) = net.nodes.get_mut(N2).unwrap();
    let answer = request_now(peers, store, 0, "n3", &codec::encode_peer(&deliver), now, 0).unwrap();
    let answer: PeerResponse = codec::decode_peer(&answer, RESPONSE_SIZE_MAX).unwrap();
    assert!(matches!(
        answer,
        PeerResponse::Rejected(PeerError {
            code: ErrorCode::NotFound,
            ..
        })
    ));
    assert!(inbox(&mut net, N2, "b").is_empty());
}

/// Sends `request` to n2 as node `from` would (its name authenticated), bypassing `from`'s own
/// machine: for nodes that follow the protocol only as far as a test needs, or not at all.
fn to_n2(net: &mut Net, from: &str, request: &PeerRequest) -> PeerResponse {
    let now = net.now;
    let (peers, store) = net.nodes.get_mut(N2).unwrap();
    let answer = request_now(peers, store, 0, from, &codec::encode_peer(request), now, 0);
    net.collect(N2);
    let answer = answer
        .or_else(|| net.answers.remove(&(N2.to_owned(), 0)))
        .unwrap();
    codec::decode_peer(&answer, RESPONSE_SIZE_MAX).unwrap()
}

fn hand_id(from: &str, seq: u64) -> RequestId {
    RequestId {
        node: node(from),
        incarnation: 1,
        seq,
    }
}

/// Node `from` prepares registering its Pod `source` with `target` on n2, as handshake `seq`.
fn hand_prepare(net: &mut Net, from: &str, seq: u64, source: &str, target: &str) -> PeerResponse {
    let request = PeerRequest::Prepare {
        id: hand_id(from, seq),
        source: PodAddr::new(pod(source), node(from)),
        target: pod(target),
        op: PeerOp::Register,
    };
    to_n2(net, from, &request)
}

/// Node `from` registers its Pod `source` with `target` on n2, both phases, as handshake `seq`.
fn hand_register(net: &mut Net, from: &str, seq: u64, source: &str, target: &str) {
    assert_eq!(
        hand_prepare(net, from, seq, source, target),
        PeerResponse::Prepared
    );
    let commit = PeerRequest::Commit {
        id: hand_id(from, seq),
    };
    assert_eq!(to_n2(net, from, &commit), PeerResponse::Acked);
}

fn hand_deliver(net: &mut Net, from: &str, seq: u64, source: &str, to: &str) -> PeerResponse {
    let request = PeerRequest::Deliver {
        id: hand_id(from, 1_000_000 + seq),
        from: pod(source),
        to: pod(to),
        body: format!("m{seq}"),
    };
    to_n2(net, from, &request)
}

fn is_refused(answer: &PeerResponse, code: ErrorCode) -> bool {
    matches!(answer, PeerResponse::Rejected(e) if e.code == code)
}

#[test]
fn a_full_inbox_refuses_instead_of_dropping() {
    // inbox_len_max messages fit, from several nodes; the next is refused with inbox_full and
    // the sender hears it.
    let mut net = Net::new(&[N1, N2, "n3", "n4", "n5", "n6"]);
    net.create(N1, "a");
    net.create(N2, "b");
    register(&mut net);
    net.settle();
    let config = PeersConfig::default();
    let senders = ["n3", "n4", "n5", "n6"];
    assert_eq!(
        senders.len() * config.inbox_share_per_node_max,
        config.inbox_len_max
    );
    for (i, from) in senders.iter().enumerate() {
        hand_register(&mut net, from, i as u64, "x", "b");
        for seq in 0..config.inbox_share_per_node_max as u64 {
            assert_eq!(
                hand_deliver(&mut net, from, seq, "x", "b"),
                PeerResponse::Delivered
            );
        }
    }
    let token = send(&mut net, "one too many");
    net.settle();
    assert_eq!(net.reply(N1, token).unwrap_err().code, ErrorCode::InboxFull);
    assert_eq!(inbox(&mut net, N2, "b").len(), config.inbox_len_max);
    // Draining makes room again.
    net.op(
        N2,
        LocalOp::Inbox {
            pod: pod("b"),
            drain: true,
        },
    );
    let token = send(&mut net, "fits now");
    net.settle();
    assert!(net.reply(N1, token).is_ok());
}

#[test]
fn a_flooding_node_fills_only_its_share_of_an_inbox_also_after_a_restart() {
    let mut net = peered();
    let share = PeersConfig::default().inbox_share_per_node_max as u64;
    net.nodes.insert("n3".into(), {
        let store = MemStore::new();
        let peers = Peers::load(node("n3"), 1, PeersConfig::default(), &store, net.now).unwrap();
        (peers, store)
    });
    hand_register(&mut net, "n3", 1, "x", "b");
    hand_register(&mut net, "n3", 2, "y", "b");
    // Two Pods of n3 share one node's share.
    for seq in 0..share {
        let source = if seq % 2 == 0 { "x" } else { "y" };
        assert_eq!(
            hand_deliver(&mut net, "n3", seq, source, "b"),
            PeerResponse::Delivered
        );
    }
    assert!(is_refused(
        &hand_deliver(&mut net, "n3", share, "x", "b"),
        ErrorCode::InboxFull
    ));
    // An honest sender on another node still has room.
    let token = send(&mut net, "from a");
    net.settle();
    assert!(net.reply(N1, token).is_ok(), "{:?}", net.reply(N1, token));
    // The share is counted from the stored inbox after a restart.
    net.restart(N2);
    assert!(is_refused(
        &hand_deliver(&mut net, "n3", share + 1, "y", "b"),
        ErrorCode::InboxFull
    ));
    net.op(
        N2,
        LocalOp::Inbox {
            pod: pod("b"),
            drain: true,
        },
    );
    assert_eq!(
        hand_deliver(&mut net, "n3", share + 2, "y", "b"),
        PeerResponse::Delivered
    );
}

#[test]
fn one_node_takes_at_most_its_share_of_a_pods_peer_slots() {
    let mut net = two_pods();
    let share = PeersConfig::default().peers_per_pod_per_node_max;
    for i in 0..share {
        hand_register(&mut net, "n3", i as u64, &format!("x{i}"), "b");
    }
    let answer = hand_prepare(&mut net, "n3", 99, "one-more", "b");
    assert!(is_refused(&answer, ErrorCode::InvalidRequest), "{answer:?}");
    assert_eq!(net.peers_of(N2, "b").len(), share);
    // Another node's Pod still finds a slot.
    let token = register(&mut net);
    net.settle();
    assert!(net.reply(N1, token).is_ok(), "{:?}", net.reply(N1, token));
    assert!(net.peers_of(N2, "b").contains(&"a@n1".to_owned()));
}

#[test]
fn one_coordinator_holds_at_most_its_share_of_the_handshakes_in_progress() {
    // n3 prepares and never finishes: it holds its share of n2's handshake slots, no more.
    let mut net = two_pods();
    let config = PeersConfig::default();
    let share = config.handshakes_per_node_max;
    let targets = share.div_ceil(config.peers_per_pod_per_node_max) + 1;
    for t in 0..targets {
        net.create(N2, &format!("t{t}"));
    }
    for i in 0..share {
        let target = format!("t{}", i % targets);
        let answer = hand_prepare(&mut net, "n3", i as u64, &format!("x{i}"), &target);
        assert_eq!(answer, PeerResponse::Prepared, "handshake {i}");
    }
    let answer = hand_prepare(&mut net, "n3", 99, "one-more", "t0");
    assert!(is_refused(&answer, ErrorCode::Busy), "{answer:?}");
    assert_eq!(net.logged(N2), share);
    // An honest coordinator's handshake goes through.
    let token = register(&mut net);
    net.settle();
    assert!(net.reply(N1, token).is_ok(), "{:?}", net.reply(N1, token));
}

#[test]
fn a_message_over_the_size_limit_is_refused_before_sending() {
    // message_size_max is checked at the sender.
    let mut net = peered();
    let body = "x".repeat(PeersConfig::default().message_size_max + 1);
    let token = send(&mut net, &body);
    assert_eq!(
        net.reply(N1, token).unwrap_err().code,
        ErrorCode::InvalidRequest
    );
    assert!(net.requests.is_empty());
}

#[test]
fn sending_to_a_peer_that_is_not_live_fails_at_once() {
    // The driver says the target is not live: `not_live`, nothing sent.
    let mut net = peered();
    let token = net.op(
        N1,
        LocalOp::Send {
            pod: pod("a"),
            target: addr("b@n2"),
            body: "x".into(),
            live: false,
        },
    );
    let error = net.reply(N1, token).unwrap_err();
    assert_eq!(error.code, ErrorCode::NotLive);
    assert_eq!(error.message, "peer pod b@n2 is not live");
    assert!(net.requests.is_empty());
}

#[test]
fn an_unreachable_receiver_fails_after_the_retry_bound() {
    // delivery_attempts tries, each timing out, then `unreachable`.
    let mut net = peered();
    let token = send(&mut net, "void");
    for _ in 0..PeersConfig::default().delivery_attempts {
        assert_eq!(net.requests.len(), 1);
        net.requests.clear();
        net.advance(PeersConfig::default().rpc_timeout);
    }
    assert_eq!(
        net.reply(N1, token).unwrap_err().code,
        ErrorCode::Unreachable
    );
    assert!(net.requests.is_empty());
}

#[test]
fn a_pod_with_peers_cannot_be_removed() {
    // Removing it would leave one-sided relations behind.
    let mut net = peered();
    let token = net.op(N1, LocalOp::RemovePod { name: pod("a") });
    assert_eq!(
        net.reply(N1, token).unwrap_err().code,
        ErrorCode::InvalidRequest
    );
    net.op(
        N1,
        LocalOp::UnregisterPeer {
            pod: pod("a"),
            target: addr("b@n2"),
        },
    );
    net.settle();
    let token = net.op(N1, LocalOp::RemovePod { name: pod("a") });
    assert_eq!(net.reply(N1, token), Ok(LocalReply::Removed));
}

#[test]
fn spawned_children_are_tracked_and_reclaimed_separately_from_peers() {
    // A child appears in its parent's spawned_children, and moves to reclaimed on removal.
    let mut net = Net::new(&[N1]);
    net.create(N1, "parent");
    let token = net.op(
        N1,
        LocalOp::CreatePod {
            name: pod("child"),
            parent: Some(pod("parent")),
        },
    );
    assert!(net.reply(N1, token).is_ok());
    let parent = net.nodes[N1].0.pod(&pod("parent")).unwrap().clone();
    assert!(parent.spawned_children.contains(&pod("child")) && parent.peers.is_empty());
    net.op(N1, LocalOp::RemovePod { name: pod("child") });
    let parent = net.nodes[N1].0.pod(&pod("parent")).unwrap().clone();
    assert!(parent.spawned_children.is_empty());
    assert!(parent.reclaimed_children.contains(&pod("child")));
}

#[test]
fn the_pod_bound_is_reached_and_refused() {
    // pods_max Pods fit on a node; one more is refused.
    let mut net = Net::new(&[N1]);
    let max = PeersConfig::default().pods_max;
    for i in 0..max {
        net.create(N1, &format!("p{i}"));
    }
    let token = net.op(
        N1,
        LocalOp::CreatePod {
            name: pod("extra"),
            parent: None,
        },
    );
    assert_eq!(
        net.reply(N1, token).unwrap_err().code,
        ErrorCode::InvalidRequest
    );
}

#[test]
fn the_handshake_bound_is_reached_and_answered_busy() {
    // handshakes_max handshakes may be in flight; the next one is `busy`.
    let mut net = Net::new(&[N1, N2]);
    let max = PeersConfig::default().handshakes_max;
    net.create(N2, "b");
    for i in 0..=max {
        net.create(N1, &format!("a{i}"));
    }
    for i in 0..max {
        let token = net.op(
            N1,
            LocalOp::RegisterPeer {
                pod: pod(&format!("a{i}")),
                target: addr("b@n2"),
            },
        );
        assert!(!net.replies.contains_key(&(N1.to_owned(), token)));
    }
    let token = net.op(
        N1,
        LocalOp::RegisterPeer {
            pod: pod(&format!("a{max}")),
            target: addr("b@n2"),
        },
    );
    assert_eq!(net.reply(N1, token).unwrap_err().code, ErrorCode::Busy);
}

#[test]
fn garbage_requests_and_answers_are_counted_and_dropped() {
    // Arbitrary bytes never panic and never change state.
    let mut net = two_pods();
    let now = net.now;
    let (peers, store) = net.nodes.get_mut(N2).unwrap();
    for bytes in [
        &b""[..],
        b"\x01",
        b"\x01\xff\xff\xff",
        b"\x02\x00",
        &[1u8; 300],
    ] {
        assert!(peers.handle_request(0, &node(N1), bytes, now, 0, store) == Answer::Refused);
        peers.handle_response(99, Some(bytes), now, store);
    }
    assert_eq!(peers.counters().bad_requests, 5);
    assert!(net.peers_of(N2, "b").is_empty());
}

#[test]
fn the_child_bound_is_reached_and_refused() {
    // children_per_pod_max children fit under one parent; one more is refused.
    let mut net = Net::new(&[N1]);
    net.create(N1, "parent");
    let max = PeersConfig::default().children_per_pod_max;
    for i in 0..max {
        let token = net.op(
            N1,
            LocalOp::CreatePod {
                name: pod(&format!("c{i}")),
                parent: Some(pod("parent")),
            },
        );
        assert!(net.reply(N1, token).is_ok());
    }
    let token = net.op(
        N1,
        LocalOp::CreatePod {
            name: pod("extra"),
            parent: Some(pod("parent")),
        },
    );
    assert_eq!(
        net.reply(N1, token).unwrap_err().code,
        ErrorCode::InvalidRequest
    );
}

#[test]
fn a_full_pod_record_fits_in_one_gossiped_state_value() {
    // The worst-case record the bounds allow stays under the state value limit.
    let config = PeersConfig::default();
    let long_pod = |i: usize| -> PodName { format!("{i:0>64}").parse().unwrap() };
    let long_node: NodeName = "n".repeat(63).parse().unwrap();
    let mut record = PodRecord::new(long_pod(0));
    for i in 0..config.peers_per_pod_max {
        record
            .peers
            .insert(PodAddr::new(long_pod(i), long_node.clone()));
    }
    for i in 0..config.children_per_pod_max {
        record.spawned_children.insert(long_pod(i));
        record.reclaimed_children.insert(long_pod(1000 + i));
    }
    let size = codec::encode_record(&record).len();
    assert!(
        size <= crate::Config::lan().state_value_size_max,
        "{size} bytes"
    );
}

/// Fails every request n2 has sent as one to a node membership does not know.
fn fail_as_unknown(net: &mut Net) {
    let now = net.now;
    let sent: Vec<_> = net.requests.drain(..).collect();
    for (rpc, from, to, bytes) in sent {
        if from != N2 {
            net.requests.push((rpc, from, to, bytes));
            continue;
        }
        let (peers, store) = net.nodes.get_mut(N2).unwrap();
        peers.handle_unknown_node(rpc, now, store);
        net.collect(N2);
    }
}

/// n3 prepares registering x@n3 with b@n2 and is never heard of again; n2 asks about it until
/// `participant_give_up` has passed, then ends its entry.
fn ended_by_a_gone_coordinator() -> Net {
    let mut net = two_pods();
    assert_eq!(
        hand_prepare(&mut net, "n3", 1, "x", "b"),
        PeerResponse::Prepared
    );
    assert_eq!(net.peers_of(N2, "b"), ["x@n3"]);
    let config = PeersConfig::default();
    let mut waited = Duration::ZERO;
    while waited < config.participant_give_up {
        net.advance(config.participant_wait);
        waited += config.participant_wait;
        assert_eq!(net.logged(N2), 1, "ended before participant_give_up");
        fail_as_unknown(&mut net);
    }
    net.advance(config.participant_wait);
    fail_as_unknown(&mut net);
    net
}

#[test]
fn a_participant_ends_its_entry_once_its_coordinator_is_gone_and_frees_its_slot() {
    let mut net = ended_by_a_gone_coordinator();
    let peers = &net.nodes[N2].0;
    assert_eq!(net.logged(N2), 0, "the slot is free");
    assert_eq!(peers.handshakes_ended(), 1);
    assert_eq!(peers.counters().handshakes_ended, 1);
    assert!(
        net.peers_of(N2, "b").is_empty(),
        "rolled back as on an abort"
    );
    // The marker survives a restart, still holding no slot; a late Abort removes it.
    net.restart(N2);
    assert_eq!((net.logged(N2), net.nodes[N2].0.handshakes_ended()), (0, 1));
    let abort = PeerRequest::Abort {
        id: hand_id("n3", 1),
    };
    assert_eq!(to_n2(&mut net, "n3", &abort), PeerResponse::Acked);
    assert_eq!(net.nodes[N2].0.handshakes_ended(), 0);
    assert!(net.peers_of(N2, "b").is_empty());
}

#[test]
fn a_coordinator_that_comes_back_with_a_commit_gets_its_relation_on_both_sides() {
    // The coordinator may have told its user of the success before it went away.
    let mut net = ended_by_a_gone_coordinator();
    let commit = PeerRequest::Commit {
        id: hand_id("n3", 1),
    };
    assert_eq!(to_n2(&mut net, "n3", &commit), PeerResponse::Acked);
    assert_eq!(net.peers_of(N2, "b"), ["x@n3"]);
    assert_eq!(net.nodes[N2].0.handshakes_ended(), 0);
    assert!(net.events.iter().any(|(at, e)| at == N2
        && matches!(e, PodEvent::PeerRegistered { source, .. } if source.to_string() == "x@n3")));
    // A re-sent Prepare of an ended handshake is refused, so its coordinator aborts: the
    // coordinator had not committed, and the marker goes.
    let mut net = ended_by_a_gone_coordinator();
    let answer = hand_prepare(&mut net, "n3", 1, "x", "b");
    assert!(is_refused(&answer, ErrorCode::Busy), "{answer:?}");
    assert!(net.peers_of(N2, "b").is_empty());
    assert_eq!(net.nodes[N2].0.handshakes_ended(), 0);
}

#[test]
fn an_ended_marker_is_asked_about_and_settled_once_its_coordinator_answers() {
    // The coordinator is back but lost its store: it knows no such id, a presumed abort.
    let mut net = ended_by_a_gone_coordinator();
    net.requests.clear();
    net.advance(PeersConfig::default().participant_wait);
    let (rpc, ..) = net
        .requests
        .iter()
        .find(|(_, from, to, _)| from == N2 && to == "n3")
        .cloned()
        .expect("n2 asks n3 about its marker");
    let outcome = codec::encode_peer(&PeerResponse::Outcome { committed: false });
    let now = net.now;
    let (peers, store) = net.nodes.get_mut(N2).unwrap();
    peers.handle_response(rpc, Some(&outcome), now, store);
    assert_eq!(peers.handshakes_ended(), 0);
    assert!(net.peers_of(N2, "b").is_empty());
}

#[test]
fn pods_of_this_node_share_no_quota_in_each_others_inboxes() {
    // The shares bound other nodes; a local sender may fill a local inbox.
    let mut net = Net::new(&[N1, N2]);
    net.create(N2, "b");
    net.create(N2, "c");
    let token = net.op(
        N2,
        LocalOp::RegisterPeer {
            pod: pod("c"),
            target: addr("b@n2"),
        },
    );
    assert!(net.reply(N2, token).is_ok());
    let sends = PeersConfig::default().inbox_share_per_node_max + 10;
    for i in 0..sends {
        let token = net.op(
            N2,
            LocalOp::Send {
                pod: pod("c"),
                target: addr("b@n2"),
                body: format!("m{i}"),
                live: true,
            },
        );
        net.settle();
        assert!(
            net.reply(N2, token).is_ok(),
            "message {i}: {:?}",
            net.reply(N2, token)
        );
    }
    assert_eq!(inbox(&mut net, N2, "b").len(), sends);
}

#[test]
fn a_coordinator_known_to_membership_is_asked_forever() {
    // Unreachable but not forgotten (a partition, a crash within the tombstone TTL): no end.
    let mut net = two_pods();
    assert_eq!(
        hand_prepare(&mut net, "n3", 1, "x", "b"),
        PeerResponse::Prepared
    );
    let config = PeersConfig::default();
    for _ in 0..2 * (config.participant_give_up.as_secs() / config.participant_wait.as_secs()) {
        net.advance(config.participant_wait);
        let now = net.now;
        let sent: Vec<_> = net.requests.drain(..).collect();
        for (rpc, ..) in sent {
            let (peers, store) = net.nodes.get_mut(N2).unwrap();
            peers.handle_response(rpc, None, now, store);
        }
        net.collect(N2);
    }
    assert_eq!(net.logged(N2), 1);
    assert_eq!(net.peers_of(N2, "b"), ["x@n3"]);
}

/// Feeds every request in flight to its node without committing, as deliveries that arrive
/// during a commit are; then commits each node's batch and carries the answers back.
fn carry_as_one_batch(net: &mut Net) {
    let requests = std::mem::take(&mut net.requests);
    let now = net.now;
    let mut later = Vec::new();
    for (rpc, from, to, bytes) in requests {
        let (peers, store) = net.nodes.get_mut(&to).unwrap();
        match peers.handle_request(rpc, &node(&from), &bytes, now, 2_000, store) {
            Answer::Later => later.push((rpc, from, to)),
            other => panic!("a delivery to a peer is staged, got {other:?}"),
        }
    }
    for (rpc, from, to) in later {
        let (peers, store) = net.nodes.get_mut(&to).unwrap();
        peers.commit_deliveries(store);
        net.collect(&to);
        let answer = net.answers.remove(&(to.clone(), rpc));
        let (peers, store) = net.nodes.get_mut(&from).unwrap();
        peers.handle_response(rpc, answer.as_deref(), now, store);
        net.collect(&from);
    }
}

fn delivered(net: &Net, token: u64) -> bool {
    matches!(net.reply(N1, token), Ok(LocalReply::Delivered { .. }))
}

#[test]
fn deliveries_staged_together_are_stored_in_one_write_and_acknowledged_after_it() {
    let mut net = peered();
    let tokens: Vec<u64> = (0..5).map(|i| send(&mut net, &format!("m{i}"))).collect();
    let writes = net.nodes[N2].1.writes();
    let now = net.now;
    let requests = std::mem::take(&mut net.requests);
    for (rpc, from, to, bytes) in &requests {
        let (peers, store) = net.nodes.get_mut(to).unwrap();
        let answer = peers.handle_request(*rpc, &node(from), bytes, now, 2_000, store);
        assert_eq!(answer, Answer::Later);
    }
    net.collect(N2);
    assert!(
        net.answers.is_empty(),
        "nothing is acknowledged before the commit"
    );
    assert_eq!(net.nodes[N2].0.inbox_len(&pod("b")), 0);
    net.requests = requests;
    carry_as_one_batch(&mut net);
    assert_eq!(
        net.nodes[N2].1.writes(),
        writes + 1,
        "one transaction for the five"
    );
    assert!(tokens.iter().all(|t| delivered(&net, *t)));
    let bodies: Vec<String> = inbox(&mut net, N2, "b")
        .into_iter()
        .map(|e| e.body)
        .collect();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(net.nodes[N2].0.counters().delivery_batches, 1);
}

#[test]
fn a_failed_batch_acknowledges_none_of_its_messages_and_stores_none() {
    let mut net = peered();
    let tokens: Vec<u64> = (0..3).map(|i| send(&mut net, &format!("m{i}"))).collect();
    net.store_mut(N2).fail_next_writes(1);
    carry_as_one_batch(&mut net);
    for token in &tokens {
        assert!(
            matches!(
                net.reply(N1, *token),
                Err(PeerError {
                    code: ErrorCode::Internal,
                    ..
                })
            ),
            "{:?}",
            net.reply(N1, *token)
        );
    }
    assert!(inbox(&mut net, N2, "b").is_empty());
    assert_eq!(net.nodes[N2].0.counters().delivery_batches_failed, 1);
    // Nothing half-applied in memory: the same messages can be stored afterwards.
    let token = send(&mut net, "again");
    net.settle();
    assert!(delivered(&net, token));
    assert_eq!(inbox(&mut net, N2, "b").len(), 1);
}

#[test]
fn a_retry_of_a_staged_message_waits_for_the_same_commit_and_is_stored_once() {
    let mut net = peered();
    let token = send(&mut net, "once");
    let (rpc, from, to, bytes) = net.requests[0].clone();
    // The first attempt's answer is slow; the retry (same id) arrives before the commit.
    net.requests.push((rpc + 1000, from, to, bytes));
    carry_as_one_batch(&mut net);
    assert!(delivered(&net, token));
    assert_eq!(inbox(&mut net, N2, "b").len(), 1);
    assert_eq!(net.nodes[N2].0.counters().duplicates, 1);
}

#[test]
fn a_commit_takes_at_most_a_batch_and_leaves_the_rest_staged() {
    let mut net = peered();
    let max = PeersConfig::default().delivery_batch_max;
    for i in 0..max + 3 {
        send(&mut net, &format!("m{i}"));
    }
    let now = net.now;
    let requests = std::mem::take(&mut net.requests);
    let (peers, store) = net.nodes.get_mut(N2).unwrap();
    for (rpc, from, _, bytes) in &requests {
        peers.handle_request(*rpc, &node(from), bytes, now, 2_000, store);
    }
    let writes = store.writes();
    peers.commit_deliveries(store);
    assert_eq!(store.writes(), writes + 1);
    assert_eq!(peers.inbox_len(&pod("b")), max);
    assert_eq!(peers.staged_deliveries(), 3);
    peers.commit_deliveries(store);
    assert_eq!(peers.inbox_len(&pod("b")), max + 3);
    net.collect(N2);
    let delivered = |bytes: &Vec<u8>| {
        matches!(
            codec::decode_peer::<PeerResponse>(bytes, RESPONSE_SIZE_MAX),
            Ok(PeerResponse::Delivered)
        )
    };
    assert_eq!(net.answers.len(), max + 3);
    assert!(net.answers.values().all(delivered));
}

fn ack(net: &mut Net, up_to: &RequestId) -> Result<LocalReply, PeerError> {
    let token = net.op(
        N2,
        LocalOp::InboxAck {
            pod: pod("b"),
            up_to: up_to.clone(),
        },
    );
    net.reply(N2, token)
}

#[test]
fn an_ack_removes_the_messages_through_its_id_and_a_restart_keeps_that() {
    let mut net = peered();
    for body in ["one", "two", "three"] {
        send(&mut net, body);
        net.settle();
    }
    let ids: Vec<RequestId> = inbox(&mut net, N2, "b").into_iter().map(|e| e.id).collect();
    assert_eq!(ack(&mut net, &ids[1]), Ok(LocalReply::Acked { removed: 2 }));
    let left = |net: &mut Net| -> Vec<String> {
        inbox(net, N2, "b").into_iter().map(|e| e.body).collect()
    };
    assert_eq!(left(&mut net), ["three"]);
    // Idempotent: acknowledging again removes nothing and is no error.
    assert_eq!(ack(&mut net, &ids[0]), Ok(LocalReply::Acked { removed: 0 }));
    assert_eq!(ack(&mut net, &ids[1]), Ok(LocalReply::Acked { removed: 0 }));
    let unknown = hand_id("n1", 999_999);
    assert!(matches!(
        ack(&mut net, &unknown),
        Err(PeerError {
            code: ErrorCode::NotFound,
            ..
        })
    ));
    net.restart(N2);
    assert_eq!(left(&mut net), ["three"]);
    // The share freed by the ack stays freed after the restart.
    assert_eq!(net.nodes[N2].0.inbox_shares.values().sum::<usize>(), 1);
    assert_eq!(ack(&mut net, &ids[2]), Ok(LocalReply::Acked { removed: 1 }));
    assert!(left(&mut net).is_empty());
    assert!(net.nodes[N2].0.inbox_shares.is_empty());
}

#[test]
fn message_ids_reserved_a_block_at_a_time_stay_unique_across_restarts() {
    let mut net = peered();
    let writes = net.nodes[N1].1.writes();
    let mut ids = BTreeSet::new();
    for i in 0..10 {
        send(&mut net, &format!("m{i}"));
        net.settle();
    }
    assert_eq!(
        net.nodes[N1].1.writes(),
        writes,
        "the first handshake reserved the block"
    );
    for e in inbox(&mut net, N2, "b") {
        ids.insert(e.id);
    }
    net.restart(N1);
    for i in 0..10 {
        send(&mut net, &format!("after{i}"));
        net.settle();
    }
    for e in inbox(&mut net, N2, "b") {
        ids.insert(e.id);
    }
    assert_eq!(ids.len(), 20, "no id used twice");
}

#[test]
fn message_ids_parse_back_from_their_display_form() {
    let id = RequestId {
        node: node("node-with-dashes"),
        incarnation: 7,
        seq: 42,
    };
    assert_eq!(id.to_string().parse::<RequestId>(), Ok(id));
    assert!("n1-7".parse::<RequestId>().is_err());
    assert!("n1-x-3".parse::<RequestId>().is_err());
}
