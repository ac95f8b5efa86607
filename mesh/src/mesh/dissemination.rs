//! Dissemination (DESIGN section 3): what piggybacks on each datagram, gossip rounds to
//! `gossip_fanout` members (recently dead ones included, so a falsely accused node hears of it),
//! the urgent push of failure news, and the dispatch of received updates to the membership and
//! state rules.

use std::net::SocketAddr;

use super::state::Onward;
use super::{Mesh, SEQ_LEN_SLACK, sample};
use crate::codec::{self, Datagram, MemberState, Probe, StateRecord, Update};
use crate::store::Store;
use crate::{NodeName, Output, Target, Time};

impl<S: Store> Mesh<S> {
    pub(super) fn flush_urgent(&mut self, now: Time) {
        if self.urgent {
            self.urgent = false;
            self.gossip_round(now);
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

    pub(super) fn gossip_round(&mut self, now: Time) {
        if self.queue.len() == 0 {
            return;
        }
        // Recently dead members still get gossip, so a falsely accused node can refute.
        let dead_window = self.config.gossip_to_dead;
        let members = &self.members;
        self.recently_dead.retain(|name| {
            members.get(name).is_some_and(|m| {
                m.state == MemberState::Dead && now.saturating_since(m.changed_at) < dead_window
            })
        });
        let fanout = self.config.gossip_fanout;
        let mut candidates = members.sample_live(&mut self.rng, fanout, |_, _| true);
        candidates.extend(self.recently_dead.iter().cloned());
        let chosen: Vec<(NodeName, SocketAddr)> = sample(&mut self.rng, candidates, fanout)
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

    pub(super) fn apply_update(&mut self, update: Update, now: Time) {
        match update {
            Update::Alive {
                name,
                addr,
                incarnation,
            } => self.on_alive(name, addr, incarnation, now),
            Update::Suspect {
                name,
                incarnation,
                source,
            } => self.on_suspect(name, incarnation, source, now),
            Update::Dead {
                name,
                incarnation,
                source,
            } => self.on_dead(name, incarnation, source, now),
            Update::Left { name, incarnation } => self.on_left(name, incarnation, now),
            Update::State(record) => self.on_state(*record, Onward::Piggyback, now),
        }
    }
}
