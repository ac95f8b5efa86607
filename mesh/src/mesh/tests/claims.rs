//! Signed claims (DESIGN section 2): a node can only speak for itself, even through relays.

use super::*;

/// Node 3, the forger, holds the certificates of every node but signs with its own key.
const FORGER: usize = 3;

/// A lone core that knows n1, n2 (alive at incarnation 5) and the forger.
fn with_members() -> Mesh<MemStore> {
    let mut mesh = lone(Config::lan());
    feed(
        &mut mesh,
        1,
        gossip(vec![alive(1, 1), alive(2, 5), alive(FORGER, 1)]),
        Time::ZERO,
    );
    drain_all(&mut mesh);
    mesh
}

fn message(from: usize, body: Body) -> Input {
    Input::Message {
        from: name(from),
        bytes: codec::encode_message(&Message {
            addr: addr(from),
            body,
        }),
    }
}

/// Every update in the datagrams among `outputs`.
fn gossiped(outputs: &[Output]) -> Vec<Update> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Datagram { bytes, .. } => codec::decode_datagram(bytes, 1 << 16).ok(),
            _ => None,
        })
        .flat_map(|d| d.updates)
        .collect()
}

/// The names asked for in `CertificatesWanted` messages among `outputs`, with their recipient.
fn asks(outputs: &[Output]) -> Vec<(Option<NodeName>, Vec<NodeName>)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Message { to, bytes } => {
                match codec::decode_message(bytes, 1 << 20).ok()?.body {
                    Body::CertificatesWanted { names } => Some((to.name.clone(), names)),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_forged_alive_that_moves_a_member_is_refused_and_never_relayed() {
    // The forger says n2 is alive at the forger's address at the highest incarnation there
    // is: believed, n2 could never refute and would be unreachable for good.
    let mut mesh = with_members();
    let claim = claim::alive(&name(2), addr(FORGER), u64::MAX);
    let forgery = Update::Alive {
        name: name(2),
        addr: addr(FORGER),
        incarnation: u64::MAX,
        signature: signed(FORGER, &claim),
    };
    feed(&mut mesh, FORGER, gossip(vec![forgery]), Time::from_secs(1));
    let n2 = mesh.member(&name(2)).unwrap();
    assert_eq!((n2.addr, n2.incarnation), (addr(2), 5));
    assert_eq!(mesh.counters().claims_refused, 1);
    let mut outputs = Vec::new();
    for s in 1..10 {
        mesh.handle_timeout(Time::from_secs(s));
        outputs.extend(drain_all(&mut mesh));
    }
    assert!(!outputs.is_empty());
    assert!(
        !gossiped(&outputs).iter().any(|u| matches!(
            u,
            Update::Alive {
                incarnation: u64::MAX,
                ..
            }
        )),
        "the forgery went on"
    );
}

#[test]
fn a_member_signature_over_other_fields_is_refused() {
    // n2's real signature of its Alive at incarnation 6, with another address put in.
    let mut mesh = with_members();
    let Update::Alive { signature, .. } = alive(2, 6) else {
        unreachable!("alive() makes an Alive")
    };
    let tampered = Update::Alive {
        name: name(2),
        addr: addr(FORGER),
        incarnation: 6,
        signature,
    };
    feed(
        &mut mesh,
        FORGER,
        gossip(vec![tampered]),
        Time::from_secs(1),
    );
    assert_eq!(mesh.member(&name(2)).unwrap().incarnation, 5);
    assert_eq!(mesh.counters().claims_refused, 1);
    feed(&mut mesh, 1, gossip(vec![alive(2, 6)]), Time::from_secs(2));
    assert_eq!(mesh.member(&name(2)).unwrap().incarnation, 6);
}

#[test]
fn a_forged_left_is_refused_and_the_member_stays_alive() {
    // Only n2 may say it left.
    let mut mesh = with_members();
    let claim = claim::left(&name(2), addr(2), 5);
    let forgery = Update::Left {
        name: name(2),
        addr: addr(2),
        incarnation: 5,
        signature: signed(FORGER, &claim),
    };
    feed(&mut mesh, FORGER, gossip(vec![forgery]), Time::from_secs(1));
    assert_eq!(mesh.member(&name(2)).unwrap().state, MemberState::Alive);
    assert_eq!(mesh.counters().claims_refused, 1);
    feed(&mut mesh, 1, gossip(vec![left(2, 5)]), Time::from_secs(2));
    assert_eq!(mesh.member(&name(2)).unwrap().state, MemberState::Left);
}

#[test]
fn a_forged_state_record_cannot_bury_the_owners_record() {
    // The forger's record of n2's Pod at the highest generation there is would beat anything
    // n2 can write; refused, n2's own record stands and n2's next write still wins.
    let mut mesh = with_members();
    feed(
        &mut mesh,
        1,
        gossip(vec![Update::State(Box::new(state(
            2,
            "pod/b",
            5,
            1,
            Some(b"idle".to_vec()),
        )))]),
        Time::from_secs(1),
    );
    let mut forgery = state(2, "pod/b", u64::MAX, 1, Some(b"stopped".to_vec()));
    forgery.signature = signed(FORGER, &forgery.claim());
    feed(
        &mut mesh,
        FORGER,
        gossip(vec![Update::State(Box::new(forgery))]),
        Time::from_secs(2),
    );
    let value = |m: &Mesh<MemStore>| {
        m.entry(&name(2), "pod/b")
            .and_then(|e| e.value.map(<[u8]>::to_vec))
    };
    assert_eq!(value(&mesh), Some(b"idle".to_vec()));
    assert_eq!(mesh.counters().claims_refused, 1);
    let next = state(2, "pod/b", 5, 2, Some(b"running".to_vec()));
    feed(
        &mut mesh,
        1,
        gossip(vec![Update::State(Box::new(next))]),
        Time::from_secs(3),
    );
    assert_eq!(value(&mesh), Some(b"running".to_vec()));
}

#[test]
fn a_pod_invented_for_another_owner_is_refused_by_gossip_and_by_anti_entropy() {
    // Neither path lets the forger add a key to n2's state.
    let mut mesh = with_members();
    let mut invented = state(2, "pod/ghost", 5, 9, Some(b"idle".to_vec()));
    invented.signature = signed(FORGER, &invented.claim());
    feed(
        &mut mesh,
        FORGER,
        gossip(vec![Update::State(Box::new(invented.clone()))]),
        Time::from_secs(1),
    );
    let delta = Body::SyncDelta {
        reply: false,
        buckets: vec![mesh.bucket_of(&name(2))],
        members: Vec::new(),
        entries: vec![invented],
    };
    mesh.handle(message(FORGER, delta), Time::from_secs(2))
        .unwrap();
    assert!(mesh.entry(&name(2), "pod/ghost").is_none());
    assert_eq!(mesh.counters().claims_refused, 2);
}

#[test]
fn an_accusation_above_any_signed_incarnation_is_dropped_so_the_accused_can_refute() {
    // A suspicion of this node at the highest incarnation there is would make it refute to
    // an incarnation that nothing can ever beat; one of n2 would put n2 there. Both are
    // dropped: no node signed those incarnations.
    let mut mesh = with_members();
    let mine = mesh.incarnation();
    let mut at_top = suspect(0, u64::MAX, FORGER);
    let mut n2_at_top = dead(2, u64::MAX, FORGER);
    for (subject, update) in [(0, &mut at_top), (2, &mut n2_at_top)] {
        if let Update::Suspect {
            life: Some(life), ..
        }
        | Update::Dead {
            life: Some(life), ..
        } = update
        {
            life.signature = signed(
                FORGER,
                &claim::alive(&name(subject), addr(subject), u64::MAX),
            );
        }
    }
    feed(
        &mut mesh,
        FORGER,
        gossip(vec![at_top, n2_at_top]),
        Time::from_secs(1),
    );
    assert_eq!(mesh.incarnation(), mine);
    assert_eq!(mesh.counters().claims_refused, 2);
    let n2 = mesh.member(&name(2)).unwrap();
    assert_eq!((n2.state, n2.incarnation), (MemberState::Alive, 5));
    // At the incarnation each signed, the accusation stands and the accused refutes; one of a
    // newer life n2 signed moves n2 there, suspect.
    feed(
        &mut mesh,
        FORGER,
        gossip(vec![suspect(0, mine, FORGER)]),
        Time::from_secs(2),
    );
    assert_eq!(mesh.incarnation(), mine + 1);
    feed(
        &mut mesh,
        FORGER,
        gossip(vec![suspect(2, 7, FORGER)]),
        Time::from_secs(3),
    );
    let n2 = mesh.member(&name(2)).unwrap();
    assert_eq!((n2.state, n2.incarnation), (MemberState::Suspect, 7));
}

#[test]
fn a_forged_alive_of_this_node_does_not_make_it_refute() {
    // Only this node's own signature (a previous life's) can move its incarnation.
    let mut mesh = with_members();
    let mine = mesh.incarnation();
    let claim = claim::alive(&name(0), addr(0), mine + 100);
    let forgery = Update::Alive {
        name: name(0),
        addr: addr(0),
        incarnation: mine + 100,
        signature: signed(FORGER, &claim),
    };
    feed(&mut mesh, FORGER, gossip(vec![forgery]), Time::from_secs(1));
    assert_eq!(mesh.incarnation(), mine);
    assert_eq!(mesh.counters().claims_refused, 1);
}

#[test]
fn a_record_of_a_newer_life_carries_its_members_signature() {
    // An anti-entropy record says n2 is suspect in a life this node has not heard of: it is
    // believed only with n2's own signature of that life, and then the suspicion is at an
    // incarnation n2 signed.
    let mut mesh = with_members();
    let delta = |record: MemberRecord| Body::SyncDelta {
        reply: false,
        buckets: vec![],
        members: vec![record],
        entries: Vec::new(),
    };
    let mut forged = member(2, 9, MemberState::Suspect);
    forged.signature = signed(FORGER, &forged.claim());
    mesh.handle(message(FORGER, delta(forged)), Time::from_secs(1))
        .unwrap();
    assert_eq!(mesh.member(&name(2)).unwrap().incarnation, 5);
    assert_eq!(mesh.counters().claims_refused, 1);
    let real = member(2, 9, MemberState::Suspect);
    mesh.handle(message(1, delta(real)), Time::from_secs(2))
        .unwrap();
    let n2 = mesh.member(&name(2)).unwrap();
    assert_eq!((n2.state, n2.incarnation), (MemberState::Suspect, 9));
}

#[test]
fn claims_of_a_member_not_met_yet_wait_for_the_certificate_their_relay_sends() {
    // n1 relays the Alive and a Pod of n5, whose certificate this node lacks: it holds both,
    // asks n1 once, and applies them when the certificate comes.
    let mut mesh = bare(Config::lan());
    know(&mut mesh, 1);
    feed(&mut mesh, 1, gossip(vec![alive(1, 1)]), Time::ZERO);
    drain_all(&mut mesh);
    let pod = Update::State(Box::new(state(5, "pod/a", 1, 1, Some(b"idle".to_vec()))));
    feed(
        &mut mesh,
        1,
        gossip(vec![alive(5, 1), pod]),
        Time::from_secs(1),
    );
    assert!(mesh.member(&name(5)).is_none());
    assert_eq!(mesh.counters().claims_held, 2);
    let outputs = drain_all(&mut mesh);
    assert_eq!(asks(&outputs), vec![(Some(name(1)), vec![name(5)])]);
    let answer = Body::Certificates {
        certificates: vec![certificate(5)],
    };
    mesh.handle(message(1, answer), Time::from_secs(1)).unwrap();
    assert_eq!(mesh.member(&name(5)).unwrap().state, MemberState::Alive);
    assert!(mesh.entry(&name(5), "pod/a").is_some());
    assert_eq!(mesh.counters().claims_refused, 0);
}

#[test]
fn a_lost_request_for_a_certificate_is_made_again_to_a_later_relay() {
    // n1 relays n5's Alive and is asked for its certificate, but no answer comes (its stream
    // broke, or it crashed). The same claim from n2 within a probe timeout waits for that
    // request; from n2 a probe timeout after it, it asks n2, which answers.
    let config = Config::lan();
    let mut mesh = bare(config.clone());
    for relay in [1, 2] {
        know(&mut mesh, relay);
        feed(&mut mesh, relay, gossip(vec![alive(relay, 1)]), Time::ZERO);
    }
    drain_all(&mut mesh);
    let asked_at = Time::from_secs(1);
    feed(&mut mesh, 1, gossip(vec![alive(5, 1)]), asked_at);
    assert_eq!(
        asks(&drain_all(&mut mesh)),
        vec![(Some(name(1)), vec![name(5)])]
    );
    let soon = asked_at + config.probe_timeout / 2;
    feed(&mut mesh, 2, gossip(vec![alive(5, 1)]), soon);
    assert!(asks(&drain_all(&mut mesh)).is_empty());
    let later = asked_at + config.probe_timeout;
    assert!(later < asked_at + config.certificate_wait);
    feed(&mut mesh, 2, gossip(vec![alive(5, 1)]), later);
    assert_eq!(
        asks(&drain_all(&mut mesh)),
        vec![(Some(name(2)), vec![name(5)])]
    );
    let answer = Body::Certificates {
        certificates: vec![certificate(5)],
    };
    mesh.handle(message(2, answer), later).unwrap();
    assert_eq!(mesh.member(&name(5)).unwrap().state, MemberState::Alive);
    assert_eq!(mesh.counters().claims_dropped, 0);
}

#[test]
fn held_claims_whose_certificate_is_refused_are_refused() {
    // A forger relays a claim of n5 under its own key and answers the request with its own
    // certificate: not n5's, so the claim is refused.
    let mut mesh = bare(Config::lan());
    know(&mut mesh, FORGER);
    feed(
        &mut mesh,
        FORGER,
        gossip(vec![alive(FORGER, 1)]),
        Time::ZERO,
    );
    let claim = claim::alive(&name(5), addr(5), 1);
    let forgery = Update::Alive {
        name: name(5),
        addr: addr(FORGER),
        incarnation: 1,
        signature: signed(FORGER, &claim),
    };
    feed(&mut mesh, FORGER, gossip(vec![forgery]), Time::from_secs(1));
    drain_all(&mut mesh);
    let mut own = certificate(FORGER);
    own.name = name(5);
    let answer = Body::Certificates {
        certificates: vec![own],
    };
    mesh.handle(message(FORGER, answer), Time::from_secs(1))
        .unwrap();
    assert!(mesh.member(&name(5)).is_none());
    assert_eq!(mesh.counters().claims_refused, 1);
}

#[test]
fn held_claims_are_bounded_in_number_and_in_time() {
    // `claims_held_max` claims wait, the rest are dropped; those that waited are dropped
    // after `certificate_wait`, and a late certificate, asked for by no one any more, is
    // ignored.
    let config = Config {
        claims_held_max: 3,
        ..Config::lan()
    };
    let mut mesh = bare(config.clone());
    know(&mut mesh, 1);
    feed(&mut mesh, 1, gossip(vec![alive(1, 1)]), Time::ZERO);
    feed(
        &mut mesh,
        1,
        gossip((5..10).map(|i| alive(i, 1)).collect()),
        Time::ZERO,
    );
    let counters = mesh.counters();
    assert_eq!((counters.claims_held, counters.claims_dropped), (3, 2));
    let later = Time::ZERO + config.certificate_wait + config.probe_interval * 2;
    mesh.handle_timeout(later);
    assert_eq!(mesh.counters().claims_dropped, 5);
    let answer = Body::Certificates {
        certificates: (5..10).map(certificate).collect(),
    };
    mesh.handle(message(1, answer), later).unwrap();
    assert!((5..10).all(|i| mesh.member(&name(i)).is_none()));
}

#[test]
fn a_request_for_certificates_is_answered_with_those_held_within_the_bound() {
    // This node's own certificate and the members' it holds, up to certificates_wanted_max.
    let config = Config {
        certificates_wanted_max: 3,
        ..Config::lan()
    };
    let mut mesh = lone(config);
    let names = vec![name(0), name(1), name(999), name(2), name(4)];
    mesh.handle(message(1, Body::CertificatesWanted { names }), Time::ZERO)
        .unwrap();
    let answered: Vec<NodeName> = drain_all(&mut mesh)
        .iter()
        .filter_map(|o| match o {
            Output::Message { bytes, .. } => {
                match codec::decode_message(bytes, 1 << 20).ok()?.body {
                    Body::Certificates { certificates } => {
                        Some(certificates.into_iter().map(|c| c.name))
                    }
                    _ => None,
                }
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(answered, vec![name(0), name(1)]);
}

#[test]
fn a_renewed_certificate_signs_the_claims_again_and_the_members_follow() {
    // n1 renews its certificate: it signs a new Alive and its state again, and the others
    // fetch the new certificate from whoever relays them.
    let mut net = Net::joined(3, Config::lan());
    net.command(
        1,
        Command::PutState {
            key: "pod/x".into(),
            value: b"v".to_vec(),
        },
    );
    net.run_for(Duration::from_secs(3));
    let before = net.mesh(0).member(&name(1)).unwrap().incarnation;
    let renewed = HashAuthority::new(0x7e57, 64).renewed(&name(1), 1);
    let new_key = key_id(&renewed.certificate());
    let now = net.now;
    net.nodes[1]
        .as_mut()
        .unwrap()
        .set_signatures(Box::new(renewed), now)
        .unwrap();
    net.drain(1);
    net.run_for(Duration::from_secs(15));
    for i in [0, 2] {
        let mesh = net.mesh(i);
        assert!(
            mesh.member(&name(1)).unwrap().incarnation > before,
            "node {i}"
        );
        assert_eq!(mesh.credentials.get(&name(1)).map(|c| c.0), Some(new_key));
        let entry = mesh.entries.get(&name(1)).unwrap().get("pod/x").unwrap();
        assert_eq!(entry.signature.key_id(), new_key, "node {i}");
        assert_eq!(mesh.counters().claims_refused, 0);
    }
}

#[test]
fn a_reload_that_no_longer_admits_a_members_certificate_expels_it() {
    // Node 0 now trusts another authority only: the members' certificates are refused, so
    // they are dead here at once, and their claims refused from now on.
    let mut net = Net::joined(3, Config::lan());
    let other = HashAuthority::new(0xbad, 64).signer(&name(0));
    let now = net.now;
    net.nodes[0]
        .as_mut()
        .unwrap()
        .set_signatures(Box::new(other), now)
        .unwrap();
    net.drain(0);
    for i in [1, 2] {
        assert_eq!(
            net.mesh(0).member(&name(i)).unwrap().state,
            MemberState::Dead
        );
    }
    feed(
        net.nodes[0].as_mut().unwrap(),
        1,
        gossip(vec![alive(1, 99)]),
        now,
    );
    assert_eq!(
        net.mesh(0).member(&name(1)).unwrap().state,
        MemberState::Dead
    );
}

#[test]
fn an_accusation_carries_the_accused_life_only_while_it_is_new() {
    // Within a probe period of learning n2's life, a suspicion of n2 carries n2's signature of
    // it, for receivers that still hold an older life; later it goes without.
    let config = Config::lan();
    let accusations = |at: Time| {
        let mut mesh = with_members();
        feed(&mut mesh, 1, gossip(vec![alive(2, 6)]), Time::ZERO);
        drain_all(&mut mesh);
        mesh.on_suspect(name(2), 6, name(1), at);
        mesh.handle_timeout(at + config.gossip_interval);
        gossiped(&drain_all(&mut mesh))
            .into_iter()
            .filter_map(|u| match u {
                Update::Suspect { name: n, life, .. } if n == name(2) => Some(life.is_some()),
                _ => None,
            })
            .collect::<Vec<bool>>()
    };
    let early = accusations(Time::ZERO + config.probe_interval / 2);
    let late = accusations(Time::from_secs(5));
    assert!(
        !early.is_empty() && early.iter().all(|with_life| *with_life),
        "{early:?}"
    );
    assert!(
        !late.is_empty() && late.iter().all(|with_life| !with_life),
        "{late:?}"
    );
}
