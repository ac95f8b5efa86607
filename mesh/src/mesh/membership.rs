//! SWIM failure detection with the Lifeguard extensions (DESIGN section 3): the probe of each
//! protocol period and its indirect probes, acks and nacks, local health (awareness), the
//! rules that move a member between alive, suspect, dead and left, suspicion timeouts, and
//! this node's refutation of news about itself.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::entries::Onward;
use super::members::MemberEntry;
use super::suspicion::Suspicion;
use super::{INCARNATION_KEY, Mesh, Probing, Relay, Timer};
use crate::codec::{self, Datagram, MemberState, Probe, Signature, Update, claim};
use crate::store::{Store, Table, WriteBatch};
use crate::time::micros;
use crate::{Event, NodeName, Output, Target, Time};

/// Probe periods within which a frame from a member proves it up against a claim of its
/// death (see [`Mesh::doubts`]).
const EVIDENCE_PERIODS: u32 = 3;

impl<S: Store> Mesh<S> {
    /// Scale of the probe interval and timeout under the current local health.
    fn stretch(&self) -> u32 {
        self.awareness + 1
    }

    fn awareness_add(&mut self, delta: u32) {
        self.awareness = (self.awareness.saturating_add(delta)).min(self.config.awareness_max - 1);
    }

    pub(super) fn on_probe_tick(&mut self, now: Time) {
        self.finish_probe(now);
        if self.left {
            return;
        }
        self.expire_held(now);
        let stretch = self.stretch();
        let (next, period) = self.probe_tick_after(now, stretch);
        self.schedule(next, Timer::Probe);
        let Some(target) = self.ring.target(&self.members, &self.me, period) else {
            return;
        };
        let Some(member) = self.members.get(&target) else {
            return;
        };
        let to = Target {
            addr: member.addr,
            name: Some(target.clone()),
        };
        // Lifeguard's buddy system: a suspect target learns of its suspicion from the probe
        // itself, so it can refute even if gossip about it is slow.
        let buddy = (member.state == MemberState::Suspect).then(|| {
            let source = member
                .suspicion
                .as_ref()
                .and_then(|s| s.suspecters.first().cloned())
                .unwrap_or_else(|| self.me.clone());
            member.accusation(&target, source, false, now, self.config.probe_interval)
        });
        let seq = self.next_seq();
        self.probe = Some(Probing {
            seq,
            target,
            acked: false,
            intermediaries: BTreeSet::new(),
            nacks: BTreeSet::new(),
        });
        self.schedule(
            now + self.config.probe_timeout * stretch,
            Timer::ProbeTimeout { seq },
        );
        self.counters.probes_sent += 1;
        self.send_datagram(
            to,
            Probe::Ping {
                seq,
                addr: self.addr,
            },
            buddy,
        );
    }

    /// Closes the previous protocol period: without an Ack, the target becomes suspect and the
    /// missing Nacks count against our own health.
    fn finish_probe(&mut self, now: Time) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        if probe.acked {
            return;
        }
        let delta = if probe.intermediaries.is_empty() {
            1
        } else {
            probe.intermediaries.len().saturating_sub(probe.nacks.len())
        };
        self.awareness_add(u32::try_from(delta).unwrap_or(u32::MAX));
        self.counters.probes_failed += 1;
        if let Some(member) = self.members.get(&probe.target)
            && member.state.is_live()
        {
            let incarnation = member.incarnation;
            self.on_suspect(probe.target.clone(), incarnation, self.me.clone(), now);
            self.tell_suspected(&probe.target, now);
        }
    }

    /// Tells `name`, just suspected here after this node's own probe of it failed, of the
    /// suspicion at once, once per incarnation: if this node is the one that cannot reach it
    /// (a cut, or slowness of its own), the members that hold this node suspect drop its
    /// accusation rather than relay it, and the accused would otherwise hear of it only from
    /// the verdict.
    fn tell_suspected(&mut self, name: &NodeName, now: Time) {
        if self
            .members
            .get(name)
            .is_some_and(|m| m.told_above <= m.incarnation)
        {
            self.tell_suspect(name, now);
        }
    }

    /// Tells `name`, if this node holds it suspect, of the suspicion in a Ping of its own.
    fn tell_suspect(&mut self, name: &NodeName, now: Time) {
        let Some(member) = self.members.get(name) else {
            return;
        };
        if member.state != MemberState::Suspect {
            return;
        }
        let period = self.config.probe_interval;
        let claim = member.accusation(name, self.me.clone(), false, now, period);
        let (addr, incarnation) = (member.addr, member.incarnation);
        if let Some(m) = self.members.get_mut(name) {
            m.told_above = incarnation.saturating_add(1);
        }
        self.tell(name.clone(), addr, claim);
    }

    /// The tick `periods` probe periods after the one `now` is in, and the number of the
    /// period `now` is in. Periods are counted on the wall clock (see [`Mesh::set_wall_epoch`])
    /// and each node ticks at its phase within them.
    pub(super) fn probe_tick_after(&self, now: Time, periods: u32) -> (Time, u64) {
        let interval = micros(self.config.probe_interval).max(1);
        let wall = now.as_micros().saturating_add(self.wall_epoch);
        let period = wall.saturating_sub(self.probe_phase) / interval;
        let next = (period + u64::from(periods))
            .saturating_mul(interval)
            .saturating_add(self.probe_phase)
            .saturating_sub(self.wall_epoch);
        (Time::from_micros(next.max(now.as_micros() + 1)), period)
    }

    pub(super) fn on_probe_timeout(&mut self, seq: u32) {
        let Some(probe) = &self.probe else { return };
        if probe.seq != seq || probe.acked {
            return;
        }
        let target = probe.target.clone();
        let Some(target_addr) = self.members.get(&target).map(|m| m.addr) else {
            return;
        };
        let members = &self.members;
        let chosen: Vec<(NodeName, SocketAddr)> = members
            .sample_live(&mut self.rng, self.config.indirect_checks, |name, m| {
                *name != target && m.state == MemberState::Alive
            })
            .into_iter()
            .filter_map(|name| members.get(&name).map(|m| (name, m.addr)))
            .collect();
        if let Some(probe) = &mut self.probe {
            probe.intermediaries = chosen.iter().map(|(name, _)| name.clone()).collect();
        }
        for (name, addr) in chosen {
            self.counters.indirect_probes_sent += 1;
            let ping_req = Probe::PingReq {
                seq,
                addr: self.addr,
                target: target.clone(),
                target_addr,
            };
            self.send_datagram(
                Target {
                    addr,
                    name: Some(name),
                },
                ping_req,
                None,
            );
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    pub(super) fn on_datagram(&mut self, from: NodeName, datagram: Datagram, now: Time) {
        for update in datagram.updates {
            self.apply_update(update, &from, now);
        }
        // After the updates, so a member that introduces itself counts as heard.
        self.heard_from(&from, now);
        match datagram.probe {
            Probe::Gossip => {}
            Probe::Ping { seq, addr } => {
                self.send_datagram(
                    Target {
                        addr,
                        name: Some(from),
                    },
                    Probe::Ack { seq },
                    None,
                );
            }
            Probe::Ack { seq } => self.on_ack(from, seq),
            Probe::PingReq {
                seq,
                addr,
                target,
                target_addr,
            } => {
                if target == self.me {
                    self.send_datagram(
                        Target {
                            addr,
                            name: Some(from),
                        },
                        Probe::Ack { seq },
                        None,
                    );
                } else if self.relays.len() >= self.config.indirect_pending_max {
                    self.counters.ping_reqs_dropped += 1;
                } else {
                    let relay_seq = self.next_seq();
                    self.relays.insert(
                        relay_seq,
                        Relay {
                            requester: from,
                            addr,
                            seq,
                            target: target.clone(),
                        },
                    );
                    // Nack before the requester's period ends, so the Nack proves our health in time.
                    let nack_at = now + self.config.probe_timeout.mul_f64(0.8);
                    self.schedule(nack_at, Timer::Relay { seq: relay_seq });
                    let ping = Probe::Ping {
                        seq: relay_seq,
                        addr: self.addr,
                    };
                    self.send_datagram(
                        Target {
                            addr: target_addr,
                            name: Some(target),
                        },
                        ping,
                        None,
                    );
                }
            }
            Probe::Nack { seq } => {
                if let Some(probe) = &mut self.probe
                    && probe.seq == seq
                    && probe.intermediaries.contains(&from)
                {
                    probe.nacks.insert(from);
                }
            }
        }
    }

    fn on_ack(&mut self, from: NodeName, seq: u32) {
        if let Some(probe) = &mut self.probe
            && probe.seq == seq
            && !probe.acked
            && (probe.target == from || probe.intermediaries.contains(&from))
        {
            probe.acked = true;
            self.awareness = self.awareness.saturating_sub(1);
            return;
        }
        if self.relays.get(&seq).is_some_and(|r| r.target == from)
            && let Some(relay) = self.relays.remove(&seq)
        {
            let to = Target {
                addr: relay.addr,
                name: Some(relay.requester),
            };
            self.send_datagram(to, Probe::Ack { seq: relay.seq }, None);
        }
    }

    fn suspicion_bounds(&self) -> (Duration, Duration, u32) {
        let n = self.live_count();
        let scale = (n as f64).log10().max(1.0);
        let min_micros = f64::from(self.config.suspicion_mult)
            * scale
            * micros(self.config.probe_interval) as f64;
        let min = Duration::from_micros(min_micros as u64);
        let max = min * self.config.suspicion_max_mult;
        // Only members other than the suspect and the first suspecter can confirm.
        let k = self.config.indirect_checks.min(n.saturating_sub(2));
        (min, max, u32::try_from(k).unwrap_or(u32::MAX))
    }

    /// Applies `name`'s own claim that it is alive at `addr` in life `incarnation`, whose
    /// `signature` was checked. It goes on by piggyback unless it introduces the member and
    /// `onward` says the stream exchanges carry it. News about this node itself is a previous
    /// life's (the caller checked it is this node's own signature): it refutes.
    pub(super) fn on_alive(
        &mut self,
        name: NodeName,
        addr: SocketAddr,
        incarnation: u64,
        signature: Signature,
        onward: Onward,
        now: Time,
    ) {
        if name == self.me {
            if incarnation > self.incarnation && !self.left {
                self.refute(incarnation, now);
            }
            return;
        }
        let introduced = !self.members.contains_key(&name);
        match self.members.get_mut(&name) {
            None => {
                if self.members.len() >= self.config.members_max {
                    self.counters.members_dropped += 1;
                    return;
                }
                self.members.insert(
                    name.clone(),
                    MemberEntry::alive(addr, incarnation, signature, now),
                );
                self.roster_grew = true;
                self.sync_soon(now);
                self.members.set_live(&name);
            }
            Some(member) => {
                if incarnation <= member.incarnation {
                    return;
                }
                let was = member.state;
                member.incarnation = incarnation;
                member.addr = addr;
                member.signature = signature;
                member.life_since = now;
                member.state = MemberState::Alive;
                member.suspicion = None;
                if was != MemberState::Alive {
                    member.changed_at = now;
                }
                if !was.is_live() {
                    member.returned_at = Some(now);
                    self.members.set_live(&name);
                    self.sync_soon(now);
                }
            }
        }
        self.mark_dirty(&name);
        self.refresh_digest(&name);
        self.emit(Event::MemberAlive {
            node: name.clone(),
            addr,
            incarnation,
        });
        // A member's new life is news to spread however it arrived (a refutation, a return
        // after a cut); only an introduction learnt from a stream exchange stays off gossip.
        if onward == Onward::Piggyback || !introduced {
            self.enqueue(Update::Alive {
                name,
                addr,
                incarnation,
                signature,
            });
        }
    }

    pub(super) fn on_suspect(
        &mut self,
        name: NodeName,
        incarnation: u64,
        source: NodeName,
        now: Time,
    ) {
        if name == self.me {
            if !self.left && incarnation >= self.incarnation {
                // Being suspected hints that we are the slow one: Lifeguard raises awareness.
                self.awareness_add(1);
                self.refute(incarnation, now);
            }
            return;
        }
        let (min, max, k) = self.suspicion_bounds();
        let token = self.next_token;
        let Some(member) = self.members.get_mut(&name) else {
            return;
        };
        // Callers pass the life this node holds: a higher one needs the member's signature,
        // which makes it the held one first (see `claims`).
        if incarnation != member.incarnation || !member.state.is_live() {
            return;
        }
        if member.state == MemberState::Suspect {
            // A confirmation: counts only if independent and while it can still shrink the timeout.
            let Some(suspicion) = &mut member.suspicion else {
                return;
            };
            if suspicion.confirmations() >= suspicion.k
                || !suspicion.suspecters.insert(source.clone())
            {
                return;
            }
            suspicion.token = token;
            let deadline = suspicion.deadline();
            let update = member.accusation(&name, source, false, now, self.config.probe_interval);
            self.next_token += 1;
            self.schedule(
                deadline.max(now),
                Timer::Suspicion {
                    node: name.clone(),
                    token,
                },
            );
            self.enqueue(update);
            return;
        }
        let suspicion = Suspicion {
            started: now,
            suspecters: BTreeSet::from([source.clone()]),
            k,
            min,
            max,
            token,
        };
        let deadline = suspicion.deadline();
        member.state = MemberState::Suspect;
        member.changed_at = now;
        member.suspicion = Some(Box::new(suspicion));
        let update = member.accusation(&name, source, false, now, self.config.probe_interval);
        self.counters.suspicions += 1;
        self.next_token += 1;
        self.refresh_digest(&name);
        self.schedule(
            deadline,
            Timer::Suspicion {
                node: name.clone(),
                token,
            },
        );
        self.emit(Event::MemberSuspect {
            node: name.clone(),
            incarnation,
        });
        self.enqueue(update);
    }

    pub(super) fn on_suspicion_timeout(&mut self, name: NodeName, token: u64, now: Time) {
        let Some(member) = self.members.get(&name) else {
            return;
        };
        let Some(suspicion) = member.suspicion.as_ref().filter(|s| s.token == token) else {
            return;
        };
        if member.state != MemberState::Suspect {
            return;
        }
        let incarnation = member.incarnation;
        // It spoke to this node since the suspicion began, and lately: it is up, and only has
        // not heard. Tell it again and wait one more period; a crash ends what it says, so
        // this never shields one for longer than the evidence window.
        let window = self.evidence_window();
        if member
            .heard_at
            .is_some_and(|t| t > suspicion.started && now.saturating_since(t) < window)
        {
            let source = suspicion
                .suspecters
                .first()
                .cloned()
                .unwrap_or_else(|| self.me.clone());
            let addr = member.addr;
            let claim = member.accusation(&name, source, false, now, self.config.probe_interval);
            self.schedule(
                now + self.config.probe_interval,
                Timer::Suspicion {
                    node: name.clone(),
                    token,
                },
            );
            self.tell(name, addr, claim);
            return;
        }
        let judged_here = suspicion.suspecters.contains(&self.me);
        self.counters.deaths_declared += 1;
        self.on_dead(name.clone(), incarnation, self.me.clone(), now);
        if let Some(member) = self.members.get_mut(&name) {
            member.judged_here = judged_here && member.state == MemberState::Dead;
        }
    }

    pub(super) fn on_dead(
        &mut self,
        name: NodeName,
        incarnation: u64,
        source: NodeName,
        now: Time,
    ) {
        if name == self.me {
            if !self.left && incarnation >= self.incarnation {
                self.refute(incarnation, now);
            }
            return;
        }
        let Some(member) = self.members.get_mut(&name) else {
            return;
        };
        if incarnation != member.incarnation || !member.state.is_live() {
            return;
        }
        member.state = MemberState::Dead;
        member.changed_at = now;
        member.suspicion = None;
        member.judged_here = false;
        let update = member.accusation(&name, source, true, now, self.config.probe_interval);
        self.members.set_not_live(&name);
        self.recently_dead.push(name.clone());
        self.mark_dirty(&name);
        self.refresh_digest(&name);
        self.urgent = true;
        self.emit(Event::MemberDead {
            node: name.clone(),
            incarnation,
        });
        self.enqueue(update);
    }

    /// Applies `name`'s own claim that it left, at `addr` in life `incarnation`, whose
    /// `signature` was checked, and passes it on by piggyback if `onward` says so.
    pub(super) fn on_left(
        &mut self,
        name: NodeName,
        addr: SocketAddr,
        incarnation: u64,
        signature: Signature,
        onward: Onward,
        now: Time,
    ) {
        if name == self.me {
            // A leave from a previous life must not stick to this one.
            if !self.left && incarnation >= self.incarnation {
                self.refute(incarnation, now);
            }
            return;
        }
        let Some(member) = self.members.get_mut(&name) else {
            return;
        };
        if incarnation < member.incarnation || member.state == MemberState::Left {
            return;
        }
        member.incarnation = incarnation;
        member.addr = addr;
        member.signature = signature;
        member.state = MemberState::Left;
        member.changed_at = now;
        member.suspicion = None;
        self.members.set_not_live(&name);
        self.mark_dirty(&name);
        self.refresh_digest(&name);
        self.urgent = true;
        self.emit(Event::MemberLeft {
            node: name.clone(),
            incarnation,
        });
        if onward == Onward::Piggyback {
            self.enqueue(Update::Left {
                name,
                addr,
                incarnation,
                signature,
            });
        }
    }

    /// Notes a frame from `from`: direct evidence that it is up.
    pub(super) fn heard_from(&mut self, from: &NodeName, now: Time) {
        if let Some(member) = self.members.get_mut(from) {
            member.heard_at = Some(now);
        }
    }

    /// How recently a member must have spoken to this node for a claim of its death to be
    /// known false: a few probe periods, and never longer than the shortest suspicion, so a
    /// real crash, which takes a probe timeout and a whole suspicion to become a verdict, has
    /// always gone silent for longer.
    fn evidence_window(&self) -> Duration {
        self.config.probe_interval * EVIDENCE_PERIODS.min(self.config.suspicion_mult)
    }

    /// Whether `name` may be speaking from across a cut: this node suspects it, holds it dead
    /// or gone, or it came back less than `gossip_to_dead` ago. Its accusations of the members
    /// this node holds alive may come from a side that cannot hear them (a one-way cut, or a
    /// node too slow for its own probes), or predate a heal.
    fn across_a_cut(&self, name: &NodeName, now: Time) -> bool {
        self.members.get(name).is_some_and(|m| {
            m.state != MemberState::Alive
                || m.returned_at
                    .is_some_and(|t| now.saturating_since(t) < self.config.gossip_to_dead)
        })
    }

    /// Whether to drop a claim that `name` is suspect (or, with `dead`, dead) at
    /// `incarnation`, first made by `source` and brought here by `relay`. Only a claim at the
    /// incarnation this node holds live is in question: a higher one is news, a lower one is
    /// ignored anyway.
    ///
    /// If `name` spoke to this node within the last probe period (for a death claim, within the
    /// evidence window), this node tells it (Lifeguard's buddy system), once per incarnation, so
    /// it refutes at once: gossip reaches one member in N per transmission, and an accused that
    /// only some nodes can reach may hear of its suspicion from none of them before the
    /// verdict. The claim is dropped, and not passed on, when
    /// - it says dead and `name` spoke to this node within the window: the verdict lands
    ///   nowhere that has evidence against it;
    /// - its accuser or its relay speaks from across a cut: the accused hears the claim from
    ///   them too and refutes, and meanwhile the nodes that could reach it all along keep it.
    pub(super) fn doubts(
        &mut self,
        name: &NodeName,
        incarnation: u64,
        source: &NodeName,
        relay: &NodeName,
        dead: bool,
        now: Time,
    ) -> bool {
        let window = self.evidence_window();
        let Some(member) = self.members.get(name) else {
            return false;
        };
        if !member.state.is_live() || incarnation != member.incarnation {
            return false;
        }
        let since = member.heard_at.map(|t| now.saturating_since(t));
        let heard = since.is_some_and(|d| d < window);
        // A suspicion comes a probe timeout at least after the silence it reports, so a member
        // heard within the last period is up; one heard only before that may have crashed since.
        let period = self.config.probe_interval;
        let tell_within = if dead { window.max(period) } else { period };
        if since.is_some_and(|d| d < tell_within) && member.told_above <= incarnation {
            let addr = member.addr;
            let claim =
                member.accusation(name, source.clone(), dead, now, self.config.probe_interval);
            if let Some(m) = self.members.get_mut(name) {
                m.told_above = incarnation.saturating_add(1);
            }
            self.tell(name.clone(), addr, claim);
        }
        if (dead && heard) || self.across_a_cut(source, now) || self.across_a_cut(relay, now) {
            self.counters.accusations_dropped += 1;
            return true;
        }
        false
    }

    /// Tells `name` of `claim` about it in a Ping of its own, so it refutes even if gossip
    /// about it is slow; its Ack is more evidence that it is up. The Ping carries the claim
    /// alone: the accused may have crashed, and queued news sent there would lose a
    /// transmission that a live member needs.
    fn tell(&mut self, name: NodeName, addr: SocketAddr, claim: Update) {
        let seq = self.next_seq();
        let ping = Probe::Ping {
            seq,
            addr: self.addr,
        };
        let to = Target {
            addr,
            name: Some(name),
        };
        let bytes = codec::encode_datagram(&Datagram {
            probe: ping,
            updates: vec![claim],
        });
        self.push_output(Output::Datagram { to, bytes });
    }

    /// Claims a higher incarnation than anything said about us, and persists it so a restart
    /// starts above it.
    pub(super) fn refute(&mut self, seen: u64, now: Time) {
        self.incarnation = self.incarnation.max(seen).saturating_add(1);
        self.changed_at = now;
        self.urgent = true;
        self.counters.refutations += 1;
        let me = self.me.clone();
        self.refresh_digest(&me);
        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, INCARNATION_KEY, self.incarnation.to_be_bytes());
        if self.store.write(batch).is_err() {
            // Not fatal: the next start still bumps past the stored value, and if that is lower
            // than what others saw, their news about us makes us refute again.
            self.counters.store_write_failures += 1;
        }
        self.own_claim = self.sign(&claim::alive(&self.me, self.addr, self.incarnation));
        let update = Update::Alive {
            name: self.me.clone(),
            addr: self.addr,
            incarnation: self.incarnation,
            signature: self.own_claim,
        };
        self.enqueue(update);
        self.tell_own_accused_again(now);
    }

    /// Tells again every member this node accuses on the strength of its own probes: each it
    /// suspects after its own probe failed, and, once, each it declared dead that way. Being
    /// accused hints that this node was the one cut off or slow: its first word to them
    /// ([`Mesh::tell_suspected`]) may have been lost, and nobody else tells them, since the
    /// members that held this node suspect or dead drop its accusations as news from across a
    /// cut. Without this a node back from a cut declares dead the members it began to suspect
    /// before the heal, and holds dead those it judged during the cut until anti-entropy
    /// happens to bring their own word. The suspects are at most those its own probes found
    /// (one a period) within a suspicion timeout; each verdict is told again at most once.
    fn tell_own_accused_again(&mut self, now: Time) {
        let mut suspects = Vec::new();
        let mut judged = Vec::new();
        for (name, m) in self.members.iter() {
            match m.state {
                MemberState::Suspect
                    if m.suspicion
                        .as_ref()
                        .is_some_and(|s| s.suspecters.contains(&self.me)) =>
                {
                    suspects.push(name.clone());
                }
                MemberState::Dead if m.judged_here => judged.push(name.clone()),
                _ => {}
            }
        }
        for name in suspects {
            self.tell_suspect(&name, now);
        }
        let period = self.config.probe_interval;
        for name in judged {
            let Some(m) = self.members.get_mut(&name) else {
                continue;
            };
            m.judged_here = false;
            let claim = m.accusation(&name, self.me.clone(), true, now, period);
            let addr = m.addr;
            self.tell(name, addr, claim);
        }
    }
}
