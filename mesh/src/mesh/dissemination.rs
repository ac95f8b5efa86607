//! Dissemination (DESIGN section 3): what piggybacks on each datagram, gossip rounds to
//! `gossip_fanout` members (recently dead ones included, so a falsely accused node hears of it),
//! the urgent push of failure news, and the dispatch of received updates to the membership and
//! state rules.

use std::net::SocketAddr;

use rand::Rng;

use super::claims::Accusation;
use super::entries::Onward;
use super::{Mesh, SEQ_LEN_SLACK, sample};
use crate::codec::{self, Datagram, MemberRecord, MemberState, Probe, StateRecord, Update};
use crate::store::Store;
use crate::{NodeName, Output, Target, Time};

/// Bytes of a gossip datagram that carry no update (version, probe, list length), rounded up.
const GOSSIP_OVERHEAD: usize = 16;

impl<S: Store> Mesh<S> {
    /// Sends the failure news just learnt without waiting for the next tick, unless a round
    /// went out less than a gossip interval ago: news that comes in bursts (a cut, a heal)
    /// then rides the next tick together instead of a round each.
    pub(super) fn flush_urgent(&mut self, now: Time) {
        let recent = self
            .last_gossip
            .is_some_and(|t| now.saturating_since(t) < self.config.gossip_interval);
        if self.urgent && !recent {
            self.urgent = false;
            self.gossip_round(now, true);
        }
    }

    /// How many times each update is piggybacked: `retransmit_mult * ceil(log10(N + 1))`.
    fn retransmit_limit(&self) -> u32 {
        // ceil(log10(n + 1)) is the number of decimal digits of n, for n >= 1.
        let mut digits = 0u32;
        let mut n = self.live_count();
        while n > 0 {
            digits += 1;
            n /= 10;
        }
        self.config.retransmit_mult.saturating_mul(digits.max(1))
    }

    /// Live members, this node included.
    pub(super) fn live_count(&self) -> usize {
        1 + self.members.live_len()
    }

    /// Sends `probe` to `to` with as many queued updates as fit; `first` goes before them.
    pub(super) fn send_datagram(&mut self, to: Target, probe: Probe, first: Option<Update>) {
        let empty = Datagram {
            probe,
            updates: Vec::new(),
        };
        let mut budget = self
            .config
            .datagram_size_max
            .saturating_sub(1 + codec::body_size(&empty) + SEQ_LEN_SLACK);
        let mut updates = Vec::new();
        if let Some(update) = first {
            let size = codec::body_size(&update);
            if size <= budget {
                budget -= size;
                updates.push(update);
            }
        }
        let limit = self.retransmit_limit();
        updates.extend(self.queue.take(budget, limit));
        let bytes = codec::encode_datagram(&Datagram {
            probe: empty.probe,
            updates,
        });
        debug_assert!(bytes.len() <= self.config.datagram_size_max);
        self.push_output(Output::Datagram { to, bytes });
    }

    /// Sends queued updates to `gossip_fanout` members for `urgent` news, else to as many as
    /// the queue fills whole datagrams for (at least one; what is left over rides the next
    /// round): every update still makes all its transmissions, only in fewer, fuller frames,
    /// so the load of a burst of news (a cut seen from one side) is its size, not a frame per
    /// member per tick.
    pub(super) fn gossip_round(&mut self, now: Time, urgent: bool) {
        self.urgent = false;
        if self.queue.len() == 0 {
            return;
        }
        self.last_gossip = Some(now);
        let room = self
            .config
            .datagram_size_max
            .saturating_sub(GOSSIP_OVERHEAD)
            .max(1);
        let fanout = if urgent {
            self.config.gossip_fanout
        } else {
            (self.queue.bytes() / room).clamp(1, self.config.gossip_fanout)
        };
        // Recently dead members still get gossip, so a falsely accused node can refute.
        let dead_window = self.config.gossip_to_dead;
        let members = &self.members;
        self.recently_dead.retain(|name| {
            members.get(name).is_some_and(|m| {
                m.state == MemberState::Dead && now.saturating_since(m.changed_at) < dead_window
            })
        });
        // Targets are drawn from the live and the recently dead alike, but at most one of them
        // dead, and never in the place of the only live one: after a cut, half the mesh is
        // recently dead, and gossip that goes there is lost to the side that needs it. One is
        // enough for an accused node to hear of it.
        let live = members.live_len();
        let dead = self.recently_dead.len();
        let to_dead =
            dead > 0 && (0..fanout).any(|_| self.rng.random_range(0..live + dead) >= live);
        let mut names = members.sample_live(&mut self.rng, fanout, |_, _| true);
        if to_dead && let Some(name) = sample(&mut self.rng, self.recently_dead.clone(), 1).pop() {
            if names.len() >= self.config.gossip_fanout {
                names.pop();
            }
            names.push(name);
        }
        let chosen: Vec<(NodeName, SocketAddr)> = names
            .into_iter()
            .filter_map(|name| members.get(&name).map(|m| (name, m.addr)))
            .collect();
        for (name, addr) in chosen {
            if self.queue.len() == 0 {
                break;
            }
            self.send_datagram(
                Target {
                    addr,
                    name: Some(name),
                },
                Probe::Gossip,
                None,
            );
        }
    }

    pub(super) fn enqueue(&mut self, update: Update) {
        if self.queue.push(update, self.config.broadcast_queue_max) {
            self.counters.broadcasts_evicted += 1;
        }
    }

    pub(super) fn enqueue_state(&mut self, record: StateRecord) {
        let update = Update::State(Box::new(record));
        // Entries too large for any datagram travel by anti-entropy only.
        let fits =
            1 + codec::body_size(&Datagram {
                probe: Probe::Gossip,
                updates: Vec::new(),
            }) + SEQ_LEN_SLACK
                + codec::body_size(&update)
                <= self.config.datagram_size_max;
        if fits {
            self.enqueue(update);
        }
    }

    /// Applies an update that `relay` sent. Claims a node makes about itself go through
    /// their signature check, and accusations carry their subject's signature of the life
    /// they accuse it in (`claims`).
    pub(super) fn apply_update(&mut self, update: Update, relay: &NodeName, now: Time) {
        let dead = matches!(update, Update::Dead { .. });
        match update {
            Update::Alive {
                name,
                addr,
                incarnation,
                signature,
            } => {
                let record = MemberRecord {
                    name,
                    addr,
                    incarnation,
                    state: MemberState::Alive,
                    signature,
                };
                self.receive_member(record, Onward::Piggyback, relay, &[], now);
            }
            Update::Left {
                name,
                addr,
                incarnation,
                signature,
            } => {
                let record = MemberRecord {
                    name,
                    addr,
                    incarnation,
                    state: MemberState::Left,
                    signature,
                };
                self.receive_member(record, Onward::Piggyback, relay, &[], now);
            }
            Update::Suspect {
                name,
                incarnation,
                source,
                life,
            }
            | Update::Dead {
                name,
                incarnation,
                source,
                life,
            } => {
                let accusation = Accusation {
                    name,
                    incarnation,
                    life,
                    dead,
                    source,
                    gossip: true,
                };
                self.receive_accusation(accusation, relay, now);
            }
            Update::State(record) => {
                self.receive_state(*record, Onward::Piggyback, relay, &[], now)
            }
        }
    }
}
