//! The piggyback queue: updates waiting to ride on datagrams.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use crate::NodeName;
use crate::codec::{self, Update};

/// What an update is about; a newer update about the same subject replaces the older one.
#[derive(PartialEq, Eq, Hash)]
enum Subject<'a> {
    Member(&'a NodeName),
    State(&'a NodeName, &'a str),
}

impl<'a> Subject<'a> {
    fn of(update: &'a Update) -> Self {
        match update {
            Update::Alive { name, .. }
            | Update::Suspect { name, .. }
            | Update::Dead { name, .. }
            | Update::Left { name, .. } => Self::Member(name),
            Update::State(record) => Self::State(&record.owner, &record.key),
        }
    }
}

/// A queued update and where it stands in the order.
#[derive(Debug)]
struct Slot {
    update: Update,
    seq: u64,
    sent: u32,
    size: u32,
}

impl Slot {
    fn key(&self, at: u32) -> Key {
        let class = match self.update {
            Update::State(_) => Class::State,
            _ => Class::Membership,
        };
        (class, self.sent, Reverse(self.seq), at)
    }
}

/// Membership news rides before replicated state: failure detection and joins are bounded in
/// time, state has anti-entropy to complete it. Without this, a join burst's state records
/// (every node's information) halve the room its Alive updates have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Membership,
    State,
}

/// `(class, transmissions, newest first, slot)`. Sequence numbers are unique, so the slot never
/// decides the order; it only says where the update is.
type Key = (Class, u32, Reverse<u64>, u32);

/// Updates waiting to be piggybacked: membership news before state, each least transmitted
/// (then newest) first. A newer update about the same subject replaces the older one, so the
/// queue never carries contradicting news.
///
/// The updates stay in their slots. The order holds small integer keys, so taking updates
/// compares and moves integers; the subject index holds slot numbers hashed through the
/// subjects of the updates in them, so a queued update costs no second copy of its subject.
#[derive(Debug)]
pub(super) struct Broadcasts {
    /// The slot of the queued update about each subject.
    by_subject: HashTable<u32>,
    hasher: FixedState,
    order: BTreeSet<Key>,
    slots: Vec<Option<Slot>>,
    /// Empty slots, reused before the vector grows: it never holds more slots than the most
    /// updates ever queued at once.
    free: Vec<u32>,
    next_seq: u64,
    /// The encoded size of every queued update, summed.
    bytes: usize,
}

impl Broadcasts {
    /// An empty queue whose subject index is keyed by `seed`; the index serves lookups only,
    /// so the seed changes no outcome.
    pub(super) fn new(seed: u64) -> Self {
        Self {
            by_subject: HashTable::new(),
            hasher: FixedState::with_seed(seed),
            order: BTreeSet::new(),
            slots: Vec::new(),
            free: Vec::new(),
            next_seq: 0,
            bytes: 0,
        }
    }

    /// Queues `update`; returns whether another update had to be evicted to respect `max`.
    pub(super) fn push(&mut self, update: Update, max: usize) -> bool {
        let subject = Subject::of(&update);
        let hash = self.hasher.hash_one(&subject);
        let slots = &self.slots;
        let older = self
            .by_subject
            .find(hash, |&at| Subject::of(&slot(slots, at).update) == subject)
            .copied();
        // A confirmation of a queued suspicion carries its news on the transmissions the
        // suspicion has left: every node that counts it queues it again, so it spreads anyway,
        // and a fresh start at each confirmation would multiply the load of every suspicion.
        let mut sent = 0;
        if let Some(at) = older {
            if same_suspicion(&slot(&self.slots, at).update, &update) {
                sent = slot(&self.slots, at).sent;
            }
            self.forget(at);
        }
        let mut evicted = false;
        if self.by_subject.len() >= max {
            // The most transmitted state update goes first (anti-entropy repairs state), then
            // the most transmitted membership news, which has done most of its work already.
            if let Some(&(_, _, _, at)) = self.order.last() {
                self.forget(at);
                evicted = true;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let size = u32::try_from(codec::body_size(&update)).unwrap_or(u32::MAX);
        let at = match self.free.pop() {
            Some(at) => at,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).expect("queue bound fits in u32")
            }
        };
        let new = Slot {
            update,
            seq,
            sent,
            size,
        };
        self.order.insert(new.key(at));
        self.bytes += size as usize;
        self.slots[at as usize] = Some(new);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.by_subject.insert_unique(hash, at, |&p| {
            hasher.hash_one(Subject::of(&slot(slots, p).update))
        });
        evicted
    }

    /// Takes updates that fit in `budget` bytes, counting a transmission for each and dropping
    /// those that reached `limit` transmissions.
    pub(super) fn take(&mut self, mut budget: usize, limit: u32) -> Vec<Update> {
        let mut chosen = Vec::new();
        let mut misses = 0;
        for &key in &self.order {
            let size = slot(&self.slots, key.3).size as usize;
            if size <= budget {
                budget -= size;
                chosen.push(key);
            } else {
                misses += 1;
            }
            // A nearly full datagram is not worth a scan of the whole queue for a tiny update.
            if budget < 8 || misses >= 64 {
                break;
            }
        }
        let mut out = Vec::with_capacity(chosen.len());
        for key in chosen {
            self.order.remove(&key);
            let at = key.3;
            let taken = self.slots[at as usize]
                .as_mut()
                .expect("every key in the order has a slot");
            out.push(taken.update.clone());
            taken.sent += 1;
            if taken.sent >= limit {
                self.forget(at);
            } else {
                let key = taken.key(at);
                self.order.insert(key);
            }
        }
        out
    }

    pub(super) fn len(&self) -> usize {
        self.by_subject.len()
    }

    /// The encoded size of every queued update, summed.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops the update in slot `at` from the order and the subject index, and frees the slot.
    fn forget(&mut self, at: u32) {
        let Some(gone) = self.slots[at as usize].take() else {
            return;
        };
        self.order.remove(&gone.key(at));
        self.bytes -= gone.size as usize;
        let hash = self.hasher.hash_one(Subject::of(&gone.update));
        if let Ok(found) = self.by_subject.find_entry(hash, |&p| p == at) {
            found.remove();
        }
        self.free.push(at);
    }
}

/// Whether `b` confirms the suspicion `a`: the same member at the same incarnation.
fn same_suspicion(a: &Update, b: &Update) -> bool {
    matches!(
        (a, b),
        (
            Update::Suspect { name: x, incarnation: i, .. },
            Update::Suspect { name: y, incarnation: j, .. },
        ) if x == y && i == j
    )
}

fn slot(slots: &[Option<Slot>], at: u32) -> &Slot {
    slots[at as usize]
        .as_ref()
        .expect("every queued update has a slot")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any signature: the queue never looks at one.
    fn signature() -> codec::Signature {
        codec::Signature::new(0, [0; 64])
    }

    fn left_of(name: &str, incarnation: u64) -> Update {
        Update::Left {
            name: name.parse().unwrap(),
            addr: "127.0.0.1:1".parse().unwrap(),
            incarnation,
            signature: signature(),
        }
    }

    fn left(i: u64) -> Update {
        left_of(&format!("member-{i:04}"), i)
    }

    #[test]
    fn least_sent_goes_first_and_the_limit_retires_updates() {
        // Each update is sent exactly `limit` times, fresh news before repeated news.
        let mut queue = Broadcasts::new(1);
        queue.push(left(1), 10);
        assert_eq!(queue.take(1000, 2).len(), 1);
        let update = left(2);
        queue.push(update.clone(), 10);
        let one_fits = codec::body_size(&update);
        assert_eq!(queue.take(one_fits, 2), vec![update]);
        assert_eq!(
            queue.take(1000, 2).len(),
            2,
            "both have one transmission left"
        );
        assert!(queue.take(1000, 2).is_empty());
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn newer_news_replaces_older_news_about_the_same_subject() {
        // The queue never carries two contradicting updates about one member.
        let mut queue = Broadcasts::new(1);
        queue.push(left(1), 10);
        let newer = left_of("member-0001", 9);
        queue.push(newer.clone(), 10);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.take(1000, 5), vec![newer]);
    }

    #[test]
    fn state_updates_replace_each_other_per_owner_and_key() {
        let state = |owner: &str, key: &str, version| {
            Update::State(Box::new(codec::StateRecord {
                owner: owner.parse().unwrap(),
                key: key.to_owned(),
                generation: 1,
                version,
                value: Some(vec![1]),
                signature: signature(),
            }))
        };
        let mut queue = Broadcasts::new(1);
        queue.push(state("a", "k", 1), 10);
        queue.push(state("a", "other", 1), 10);
        queue.push(state("b", "k", 1), 10);
        // News about member "a" is about another subject than a's entries.
        let a_left = left_of("a", 1);
        queue.push(a_left, 10);
        assert_eq!(queue.len(), 4);
        queue.push(state("a", "k", 2), 10);
        assert_eq!(queue.len(), 4);
        let taken = queue.take(10_000, 5);
        assert!(taken.contains(&state("a", "k", 2)));
        assert!(!taken.contains(&state("a", "k", 1)));
    }

    #[test]
    fn a_full_queue_evicts_the_most_sent_oldest_update_and_reuses_its_slot() {
        let mut queue = Broadcasts::new(1);
        for i in 1..=3 {
            queue.push(left(i), 3);
        }
        // One transmission each for n3 and n2, the newest first; n1 stays unsent.
        let two_fit = codec::body_size(&left(3)) + codec::body_size(&left(2));
        assert_eq!(queue.take(two_fit, 10), vec![left(3), left(2)]);
        assert!(queue.push(left(4), 3), "the queue was full");
        assert_eq!(queue.len(), 3);
        // n2 was the older of the two sent updates, so it went; n4 is new, n1 unsent, n3 sent.
        assert_eq!(queue.take(1000, 10), vec![left(4), left(1), left(3)]);
        for i in 5..100 {
            queue.push(left(i), 3);
        }
        assert_eq!(queue.len(), 3);
        assert_eq!(
            queue.slots.len(),
            3,
            "slots are reused, never more than the bound"
        );
    }
}
