//! Owner-versioned replicated state (DESIGN section 4): this node's own writes, the bounds they
//! must keep, and the rule for received records: keep the highest `(generation, version)`, and
//! never let a record about this node's own keys override what it wrote. Every record is
//! signed by its owner; `claims` checks the signature of a received one before it is applied.

use super::Mesh;
use super::digest::entry_hash;
use super::entries::{Entry, Onward};
use crate::codec::{StateRecord, claim};
use crate::store::Store;
use crate::{Error, Event, NodeName, Time};

impl<S: Store> Mesh<S> {
    pub(super) fn check_local_write(&self, key: &str) -> Result<(), Error> {
        if self.left {
            return Err(Error::Left);
        }
        let max = self.config.state_key_size_max;
        if key.is_empty() || key.len() > max {
            return Err(Error::StateKey {
                len: key.len(),
                max,
            });
        }
        let map = self.entries.get(&self.me);
        let full = map.is_some_and(|m| m.len() >= self.config.state_keys_max);
        if full && !map.is_some_and(|m| m.contains_key(key)) {
            return Err(Error::StateFull {
                max: self.config.state_keys_max,
            });
        }
        Ok(())
    }

    pub(super) fn put_state(
        &mut self,
        key: String,
        value: Vec<u8>,
        onward: Onward,
        now: Time,
    ) -> Result<(), Error> {
        self.check_local_write(&key)?;
        if value.len() > self.config.state_value_size_max {
            return Err(Error::StateValue {
                len: value.len(),
                max: self.config.state_value_size_max,
            });
        }
        self.write_own(key, Some(value), onward, now);
        Ok(())
    }

    pub(super) fn write_own(
        &mut self,
        key: String,
        value: Option<Vec<u8>>,
        onward: Onward,
        now: Time,
    ) {
        self.state_version += 1;
        let signature = self.sign(&claim::state(
            &self.me,
            &key,
            self.generation,
            self.state_version,
            value.as_deref(),
        ));
        let record = StateRecord {
            owner: self.me.clone(),
            key: key.clone(),
            generation: self.generation,
            version: self.state_version,
            value: value.clone(),
            signature,
        };
        let entry = Entry {
            generation: self.generation,
            version: self.state_version,
            value,
            signature,
            changed_at: now,
        };
        let me = self.me.clone();
        self.set_entry(&me, &key, entry);
        if onward == Onward::Piggyback {
            self.enqueue_state(record);
        }
        self.emit(Event::StateChanged {
            node: self.me.clone(),
            key,
        });
    }

    pub(super) fn record_in_bounds(&self, record: &StateRecord) -> bool {
        !record.key.is_empty()
            && record.key.len() <= self.config.state_key_size_max
            && record
                .value
                .as_ref()
                .is_none_or(|v| v.len() <= self.config.state_value_size_max)
    }

    /// Whether a received record of another owner would change what this node holds: newer
    /// than its entry, and not a tombstone of a key it never held. Counts a new key refused by
    /// `state_keys_max`.
    pub(super) fn state_news(&mut self, record: &StateRecord) -> bool {
        let map = self.entries.get(&record.owner);
        match map.and_then(|m| m.get(&record.key)) {
            Some(e) => (e.generation, e.version) < (record.generation, record.version),
            None if record.value.is_none() => false,
            None if map.is_some_and(|m| m.len() >= self.config.state_keys_max) => {
                self.counters.state_dropped += 1;
                false
            }
            None => true,
        }
    }

    /// Applies a received record of another owner, which [`Mesh::state_news`] accepted and
    /// whose signature was checked. `onward` says whether it goes on by piggyback: a record
    /// that came by piggyback does, as rumours do; one that came in a stream exchange (a
    /// push/pull or an anti-entropy delta) does not, since the exchange is the repair path and
    /// anti-entropy completes what it leaves out, as memberlist merges a push/pull's user state
    /// without broadcasting it. Without this rule every node joining through a seed would
    /// piggyback the whole state the seed gave it.
    pub(super) fn apply_state(&mut self, record: StateRecord, onward: Onward, now: Time) {
        let entry = Entry {
            generation: record.generation,
            version: record.version,
            value: record.value.clone(),
            signature: record.signature,
            changed_at: now,
        };
        self.set_entry(&record.owner, &record.key, entry);
        self.emit(Event::StateChanged {
            node: record.owner.clone(),
            key: record.key.clone(),
        });
        if onward == Onward::Piggyback {
            self.enqueue_state(record);
        }
    }

    /// Whether a received record of this node's own keys is newer than what this life wrote:
    /// a previous life's key that was not written again.
    pub(super) fn own_record_news(&self, record: &StateRecord) -> bool {
        let map = self.entries.get(&self.me);
        match map.and_then(|m| m.get(&record.key)) {
            Some(e) => (e.generation, e.version) < (record.generation, record.version),
            None => {
                record.value.is_some() && map.is_none_or(|m| m.len() < self.config.state_keys_max)
            }
        }
    }

    /// Someone holds an entry of ours that this life did not write (a previous life's key,
    /// signed by this node, that [`Mesh::own_record_news`] found newer): the owner buries it
    /// with a newer tombstone.
    pub(super) fn bury_own_record(&mut self, record: StateRecord, now: Time) {
        if record.generation == self.generation {
            self.state_version = self.state_version.max(record.version);
        }
        self.write_own(record.key, None, Onward::Piggyback, now);
    }

    /// Stores an entry and keeps the digest in step.
    fn set_entry(&mut self, owner: &NodeName, key: &str, entry: Entry) {
        let new = entry_hash(
            owner,
            key,
            entry.generation,
            entry.version,
            entry.value.is_some(),
        );
        let old = self
            .entries
            .entry(owner.clone())
            .or_default()
            .insert(key.to_owned(), entry)
            .map_or(0, |e| {
                entry_hash(owner, key, e.generation, e.version, e.value.is_some())
            });
        self.digest.entry_changed(owner, old, new);
        self.refresh_digest(owner);
    }
}

pub(super) fn state_record(owner: &NodeName, key: &str, e: &Entry) -> StateRecord {
    StateRecord {
        owner: owner.clone(),
        key: key.to_owned(),
        generation: e.generation,
        version: e.version,
        value: e.value.clone(),
        signature: e.signature,
    }
}
