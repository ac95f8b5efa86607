//! The piggyback queue: updates waiting to ride on datagrams.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::NodeName;
use crate::codec::{self, Update};

/// What an update is about; a newer update about the same subject replaces the older one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Subject {
    Member(NodeName),
    State(NodeName, String),
}

#[derive(Debug, Clone)]
struct Queued {
    subject: Subject,
    update: Update,
    size: usize,
}

/// Updates waiting to be piggybacked, least transmitted (then newest) first. A newer update about
/// the same subject replaces the older one, so the queue never carries contradicting news.
///
/// Sequence numbers are unique, so `(transmissions, newest first)` alone orders the queue: taking
/// updates compares integers, and names are compared only to replace or retire an update.
#[derive(Debug, Default)]
pub(super) struct Broadcasts {
    /// The queued update about each subject, by sequence number.
    by_subject: BTreeMap<Subject, u64>,
    /// Transmissions so far, by sequence number.
    transmits: BTreeMap<u64, u32>,
    order: BTreeMap<(u32, Reverse<u64>), Queued>,
    next_seq: u64,
}

impl Broadcasts {
    /// Queues `update`; returns whether another update had to be evicted to respect `max`.
    pub(super) fn push(&mut self, subject: Subject, update: Update, max: usize) -> bool {
        if let Some(seq) = self.by_subject.remove(&subject)
            && let Some(sent) = self.transmits.remove(&seq)
        {
            self.order.remove(&(sent, Reverse(seq)));
        }
        let mut evicted = false;
        if self.by_subject.len() >= max {
            // The most transmitted update has done most of its work already.
            if let Some(((_, Reverse(seq)), victim)) = self.order.pop_last() {
                self.transmits.remove(&seq);
                self.by_subject.remove(&victim.subject);
                evicted = true;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let size = codec::body_size(&update);
        self.by_subject.insert(subject.clone(), seq);
        self.transmits.insert(seq, 0);
        self.order.insert(
            (0, Reverse(seq)),
            Queued {
                subject,
                update,
                size,
            },
        );
        evicted
    }

    /// Takes updates that fit in `budget` bytes, counting a transmission for each and dropping
    /// those that reached `limit` transmissions.
    pub(super) fn take(&mut self, mut budget: usize, limit: u32) -> Vec<Update> {
        let mut chosen = Vec::new();
        let mut misses = 0;
        for (&key, queued) in &self.order {
            if queued.size <= budget {
                budget -= queued.size;
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
        for (sent, seq) in chosen {
            let Some(queued) = self.order.remove(&(sent, seq)) else {
                continue;
            };
            out.push(queued.update.clone());
            let sent = sent + 1;
            if sent >= limit {
                self.transmits.remove(&seq.0);
                self.by_subject.remove(&queued.subject);
            } else {
                self.transmits.insert(seq.0, sent);
                self.order.insert((sent, seq), queued);
            }
        }
        out
    }

    pub(super) fn len(&self) -> usize {
        self.by_subject.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left(i: u64) -> (Subject, Update) {
        let name: NodeName = format!("n{i}").parse().unwrap();
        (
            Subject::Member(name.clone()),
            Update::Left {
                name,
                incarnation: i,
            },
        )
    }

    #[test]
    fn least_sent_goes_first_and_the_limit_retires_updates() {
        // Each update is sent exactly `limit` times, fresh news before repeated news.
        let mut queue = Broadcasts::default();
        let (subject, update) = left(1);
        queue.push(subject, update, 10);
        assert_eq!(queue.take(1000, 2).len(), 1);
        let (subject, update) = left(2);
        queue.push(subject, update.clone(), 10);
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
        let mut queue = Broadcasts::default();
        let (subject, old) = left(1);
        queue.push(subject.clone(), old, 10);
        let name: NodeName = "n1".parse().unwrap();
        let newer = Update::Left {
            name,
            incarnation: 9,
        };
        queue.push(subject, newer.clone(), 10);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.take(1000, 5), vec![newer]);
    }
}
