//! Durable state behind a synchronous trait with atomic batches.
//!
//! The daemon implements [`Store`] over redb and the simulator over memory; the core only needs
//! reads at start and all-or-nothing batches afterwards. Tables are named here so later protocols
//! (Pods, the handshake log, inboxes) share one store and one transaction boundary.

use std::collections::BTreeMap;

/// A table of the store. Keys and values are opaque bytes owned by the protocol writing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Table {
    /// Small node-wide values such as the incarnation.
    Meta,
    /// Last known members, so a restarted node can rejoin without seeds.
    Members,
    /// The node's Pods.
    Pods,
    /// The peer handshake log.
    Handshakes,
    /// Pod inboxes.
    Inboxes,
}

/// One change of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert or replace `key` in `table`.
    Put {
        /// The table.
        table: Table,
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove `key` from `table` if present.
    Delete {
        /// The table.
        table: Table,
        /// The key.
        key: Vec<u8>,
    },
}

/// Changes applied all-or-nothing, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        WriteBatch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Put {
            table,
            key: key.into(),
            value: value.into(),
        });
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Delete {
            table,
            key: key.into(),
        });
    }

    /// The changes, in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Takes the changes out.
    pub fn into_ops(self) -> Vec<WriteOp> {
        self.ops
    }
}

/// A store operation failed; nothing of the failed batch was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store failed: {message}")]
pub struct StoreError {
    message: String,
}

impl StoreError {
    /// An error with a human-readable cause.
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
        }
    }
}

/// One key and its value, as [`Store::scan`] returns them.
pub type Row = (Vec<u8>, Vec<u8>);

/// Synchronous durable storage with atomic batches.
///
/// A successful `write` must be durable before it returns: the core relies on it for the
/// incarnation, which must never go backwards across restarts.
pub trait Store {
    /// Reads one value.
    fn read(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Reads a whole table, in key order.
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError>;
    /// Applies every change of `batch` or none of them.
    fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError>;
}

/// An in-memory [`Store`] for tests and the simulator, which can be told to fail writes.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    data: BTreeMap<(Table, Vec<u8>), Vec<u8>>,
    failing_writes: u32,
    writes: u64,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        MemStore::default()
    }

    /// Makes the next `n` writes fail without applying anything.
    pub fn fail_next_writes(&mut self, n: u32) {
        self.failing_writes = n;
    }

    /// How many writes succeeded so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl Store for MemStore {
    fn read(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.data.get(&(table, key.to_vec())).cloned())
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        Ok(self
            .data
            .range((table, Vec::new())..)
            .take_while(|((t, _), _)| *t == table)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        if self.failing_writes > 0 {
            self.failing_writes -= 1;
            return Err(StoreError::new("injected write failure"));
        }
        for op in batch.into_ops() {
            match op {
                WriteOp::Put { table, key, value } => {
                    self.data.insert((table, key), value);
                }
                WriteOp::Delete { table, key } => {
                    self.data.remove(&(table, key));
                }
            }
        }
        self.writes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_batch_applies_nothing() {
        // Atomicity: an injected failure leaves the store exactly as before.
        let mut store = MemStore::new();
        let mut batch = WriteBatch::new();
        batch.put(Table::Meta, b"a".to_vec(), b"1".to_vec());
        store.write(batch.clone()).unwrap();
        store.fail_next_writes(1);
        let mut failing = WriteBatch::new();
        failing.put(Table::Meta, b"b".to_vec(), b"2".to_vec());
        failing.delete(Table::Meta, b"a".to_vec());
        assert!(store.write(failing.clone()).is_err());
        assert_eq!(store.read(Table::Meta, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.read(Table::Meta, b"b").unwrap(), None);
        store.write(failing).unwrap();
        assert_eq!(
            store.scan(Table::Meta).unwrap(),
            vec![(b"b".to_vec(), b"2".to_vec())]
        );
    }

    #[test]
    fn scan_returns_only_its_table_in_key_order() {
        // Tables share one map internally; a scan must not leak into the next table.
        let mut store = MemStore::new();
        let mut batch = WriteBatch::new();
        batch.put(Table::Members, b"z".to_vec(), b"1".to_vec());
        batch.put(Table::Members, b"a".to_vec(), b"2".to_vec());
        batch.put(Table::Meta, b"m".to_vec(), b"3".to_vec());
        batch.put(Table::Pods, b"p".to_vec(), b"4".to_vec());
        store.write(batch).unwrap();
        let keys: Vec<_> = store
            .scan(Table::Members)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"z".to_vec()]);
    }
}
