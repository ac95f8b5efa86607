//! Unit tests of the composed node: two real nodes wired back to back in virtual time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::{ErrorCode, HashAuthority, MemStore, PodStatus};

fn name(i: usize) -> NodeName {
    format!("n{}", i + 1).parse().unwrap()
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], 7946))
}

fn pod(text: &str) -> PodName {
    text.parse().unwrap()
}

/// The wall-clock time each test node reads at `Time::ZERO`, distinct per node.
fn wall_start(i: usize) -> u64 {
    1_700_000_000_000 + i as u64 * 1_000_000
}

/// Two nodes with zero-latency links: frames are delivered in order, a peer request is
/// answered at once, and time moves only through [`Pair::advance`].
struct Pair {
    nodes: Vec<Node<MemStore>>,
    now: Time,
    replies: Vec<(usize, u64, Result<LocalReply, PeerError>)>,
    published: Vec<(usize, PodName)>,
    requests: usize,
    next_token: u64,
}

impl Pair {
    fn new() -> Pair {
        let nodes = (0..2)
            .map(|i| {
                Node::start(
                    Config::lan(),
                    PeersConfig::default(),
                    name(i),
                    addr(i),
                    MemStore::new(),
                    Box::new(HashAuthority::new(1, 64).signer(&name(i))),
                    i as u64 + 7,
                    Time::ZERO,
                    wall_start(i),
                )
                .unwrap()
            })
            .collect();
        Pair {
            nodes,
            now: Time::ZERO,
            replies: Vec::new(),
            published: Vec::new(),
            requests: 0,
            next_token: 0,
        }
    }

    fn index(&self, to: &Target) -> usize {
        match &to.name {
            Some(n) => (0..2).find(|&i| name(i) == *n).unwrap(),
            None => (0..2).find(|&i| addr(i) == to.addr).unwrap(),
        }
    }

    /// Carries every output until both nodes are quiet.
    fn pump(&mut self) {
        let mut frames: VecDeque<(usize, usize, bool, Vec<u8>)> = VecDeque::new();
        loop {
            let mut quiet = true;
            for i in 0..2 {
                while let Some(out) = self.nodes[i].poll_output() {
                    quiet = false;
                    match out {
                        NodeOutput::Datagram { to, bytes } => {
                            frames.push_back((i, self.index(&to), false, bytes));
                        }
                        NodeOutput::Message { to, bytes } => {
                            frames.push_back((i, self.index(&to), true, bytes));
                        }
                        NodeOutput::Request { rpc, to, bytes } => {
                            self.requests += 1;
                            let j = self.index(&to);
                            let now = self.now;
                            // The ticket says where the answer goes, now or after the commit.
                            let ticket = (i as u64) << 32 | rpc;
                            match self.nodes[j].handle_request(ticket, &name(i), &bytes, now) {
                                Answer::Now(answer) => {
                                    self.nodes[i].handle_response(rpc, Some(&answer), now);
                                }
                                Answer::Later => self.nodes[j].commit_deliveries(now),
                                Answer::Refused => self.nodes[i].handle_response(rpc, None, now),
                            }
                        }
                        NodeOutput::Answer { ticket, bytes } => {
                            let (from, rpc) = ((ticket >> 32) as usize, ticket & 0xffff_ffff);
                            self.nodes[from].handle_response(rpc, Some(&bytes), self.now);
                        }
                        NodeOutput::Reply { token, result } => {
                            self.replies.push((i, token, result));
                        }
                        NodeOutput::Published { pod, refused, .. } => {
                            assert!(refused.is_none(), "membership refused a pod record");
                            self.published.push((i, pod));
                        }
                        NodeOutput::Member(_) | NodeOutput::Pod(_) => {}
                    }
                }
            }
            while let Some((from, to, stream, bytes)) = frames.pop_front() {
                quiet = false;
                let from = name(from);
                let input = if stream {
                    Input::Message { from, bytes }
                } else {
                    Input::Datagram { from, bytes }
                };
                self.nodes[to].handle(input, self.now).unwrap();
            }
            if quiet {
                return;
            }
        }
    }

    /// Runs both nodes' timers for `span` of virtual time.
    fn advance(&mut self, span: Duration) {
        let end = self.now + span;
        loop {
            self.pump();
            let next = self.nodes.iter().filter_map(Node::poll_timeout).min();
            match next {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    for node in &mut self.nodes {
                        node.handle_timeout(self.now);
                    }
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn local(&mut self, i: usize, op: LocalOp) -> Result<LocalReply, PeerError> {
        self.next_token += 1;
        let token = self.next_token;
        self.nodes[i].handle_local(token, op, self.now);
        self.pump();
        let at = self
            .replies
            .iter()
            .position(|(n, t, _)| *n == i && *t == token)
            .expect("a local operation is answered once its exchanges are done");
        self.replies.remove(at).2
    }

    /// Two joined nodes with Pods `a@n1` and `b@n2`, peers; returns `b@n2` too.
    fn peered() -> (Pair, PodAddr) {
        let mut pair = Pair::new();
        pair.join();
        for (i, p) in [(0, "a"), (1, "b")] {
            pair.local(
                i,
                LocalOp::CreatePod {
                    name: pod(p),
                    parent: None,
                },
            )
            .unwrap();
        }
        pair.advance(Duration::from_secs(2));
        let b = PodAddr::new(pod("b"), name(1));
        let registered = pair.local(
            0,
            LocalOp::RegisterPeer {
                pod: pod("a"),
                target: b.clone(),
            },
        );
        assert!(registered.is_ok(), "{registered:?}");
        (pair, b)
    }

    fn join(&mut self) {
        self.nodes[1]
            .handle(
                Input::Command(Command::Join {
                    seeds: vec![addr(0)],
                }),
                self.now,
            )
            .unwrap();
        self.advance(Duration::from_secs(3));
    }
}

#[test]
fn a_node_gossips_its_information_from_the_start() {
    // The node info (address, version, start time) is replicated state from the first moment.
    let pair = Pair::new();
    let info: Vec<(&str, &[u8])> = pair.nodes[0]
        .mesh()
        .state_of(&name(0))
        .filter(|(k, _)| *k == NODE_INFO_KEY)
        .collect();
    let [(_, value)] = info.as_slice() else {
        panic!("expected one node info entry, got {info:?}");
    };
    let text = std::str::from_utf8(value).unwrap();
    assert!(
        text.contains(&format!("\"address\":\"{}\"", addr(0))),
        "{text}"
    );
    assert!(
        text.contains(&format!("\"started_at_ms\":{}", wall_start(0))),
        "{text}"
    );
}

#[test]
fn pod_records_are_published_through_membership() {
    // A created Pod is handed to membership, so other nodes learn it by gossip.
    let mut pair = Pair::new();
    pair.join();
    let created = pair.local(
        0,
        LocalOp::CreatePod {
            name: pod("a"),
            parent: None,
        },
    );
    assert!(created.is_ok());
    assert!(pair.published.contains(&(0, pod("a"))));
    pair.advance(Duration::from_secs(2));
    let seen = pair.nodes[1].remote_pod(&PodAddr::new(pod("a"), name(0)));
    assert_eq!(seen.map(|r| r.name), Some(pod("a")));
}

#[test]
fn a_request_to_a_node_membership_does_not_know_fails_at_once() {
    // No address, no request: the handshake aborts without waiting for its RPC timeout.
    let mut pair = Pair::new();
    pair.local(
        0,
        LocalOp::CreatePod {
            name: pod("a"),
            parent: None,
        },
    )
    .unwrap();
    let stranger = PodAddr::new(pod("b"), "n9".parse().unwrap());
    let result = pair.local(
        0,
        LocalOp::RegisterPeer {
            pod: pod("a"),
            target: stranger,
        },
    );
    assert_eq!(result.unwrap_err().code, ErrorCode::Unreachable);
    assert_eq!(pair.requests, 0);
    assert!(
        pair.nodes[0]
            .peers()
            .pod(&pod("a"))
            .unwrap()
            .peers
            .is_empty()
    );
}

#[test]
fn peers_across_two_nodes_deliver_with_the_receivers_wall_clock() {
    // The whole composition: join, handshake, delivery, timestamps from the node's one clock.
    let (mut pair, b) = Pair::peered();
    let at = pair.now;
    let sent = pair.local(
        0,
        LocalOp::Send {
            pod: pod("a"),
            target: b,
            body: "hello".to_owned(),
            live: false,
        },
    );
    assert!(matches!(sent, Ok(LocalReply::Delivered { .. })), "{sent:?}");
    let inbox = pair.local(
        1,
        LocalOp::Inbox {
            pod: pod("b"),
            drain: false,
        },
    );
    let Ok(LocalReply::Inbox(entries)) = inbox else {
        panic!("expected an inbox, got {inbox:?}");
    };
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].from, PodAddr::new(pod("a"), name(0)));
    assert_eq!(
        entries[0].received_at_ms,
        wall_start(1) + at.as_micros() / 1_000
    );
}

#[test]
fn the_node_decides_liveness_whatever_the_caller_says() {
    // `live` in a Send is the node's to decide: a stopped or unknown peer is refused.
    let (mut pair, b) = Pair::peered();
    assert!(pair.nodes[0].pod_live(&b));
    pair.local(
        1,
        LocalOp::SetStatus {
            name: pod("b"),
            status: PodStatus::Stopped,
        },
    )
    .unwrap();
    pair.advance(Duration::from_secs(2));
    assert!(!pair.nodes[0].pod_live(&b));
    let sent = pair.local(
        0,
        LocalOp::Send {
            pod: pod("a"),
            target: b,
            body: "hello".to_owned(),
            live: true,
        },
    );
    assert_eq!(sent.unwrap_err().code, ErrorCode::NotLive);
    assert!(!pair.nodes[0].pod_live(&PodAddr::new(pod("c"), name(1))));
}
