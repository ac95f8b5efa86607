//! The node's durable state: a redb database at `<data-dir>/node.redb`.
//!
//! It implements the mesh crate's [`Store`] trait: reads, scans and all-or-nothing batches, each
//! batch one redb write transaction committed with immediate durability before `write` returns.
//! redb also locks the file, so two daemons can never share a data directory.

use std::path::{Path, PathBuf};

use podmesh_mesh::{Store, StoreError, Table, WriteBatch, WriteOp};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The database file inside a data directory.
pub const STORE_FILE: &str = "node.redb";

type Bytes = TableDefinition<'static, &'static [u8], &'static [u8]>;

const META: Bytes = TableDefinition::new("meta");
const MEMBERS: Bytes = TableDefinition::new("members");
const PODS: Bytes = TableDefinition::new("pods");
const HANDSHAKES: Bytes = TableDefinition::new("handshakes");
const INBOXES: Bytes = TableDefinition::new("inboxes");

const ALL: [Bytes; 5] = [META, MEMBERS, PODS, HANDSHAKES, INBOXES];

fn definition(table: Table) -> Result<Bytes, StoreError> {
    Ok(match table {
        Table::Meta => META,
        Table::Members => MEMBERS,
        Table::Pods => PODS,
        Table::Handshakes => HANDSHAKES,
        Table::Inboxes => INBOXES,
        #[allow(unreachable_patterns, reason = "the mesh crate may add tables")]
        other => return Err(StoreError::new(format!("no redb table for {other:?}"))),
    })
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the database.
    #[error("data directory {0} is in use by another running node")]
    InUse(PathBuf),
    /// The directory or file could not be created or read.
    #[error("cannot open {path}: {message}")]
    Other {
        /// The database file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
}

/// The redb-backed [`Store`].
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    /// Set by a fault point: the next batch touching the handshake log fails.
    fail_next_handshake_write: bool,
}

fn store_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) `<data_dir>/node.redb`, creating the directory with mode 0700.
    pub fn open(data_dir: &Path) -> Result<Self, OpenError> {
        let path = data_dir.join(STORE_FILE);
        let other = |e: &dyn std::fmt::Display| OpenError::Other {
            path: path.clone(),
            message: e.to_string(),
        };
        create_private_dir(data_dir).map_err(|e| other(&e))?;
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(OpenError::InUse(data_dir.to_owned()));
            }
            Err(e) => return Err(other(&e)),
        };
        // Create every table up front so reads never meet a missing table.
        let txn = db.begin_write().map_err(|e| other(&e))?;
        for table in ALL {
            txn.open_table(table).map_err(|e| other(&e))?;
        }
        txn.commit().map_err(|e| other(&e))?;
        Ok(Self {
            db,
            fail_next_handshake_write: false,
        })
    }
}

/// Creates `dir` (and parents) so that only the owner can enter the new directory.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl RedbStore {
    /// Makes the next batch that touches the handshake log fail, as a full disk would.
    pub fn fail_next_handshake_write(&mut self) {
        self.fail_next_handshake_write = true;
    }
}

impl Store for RedbStore {
    fn read(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let table = txn.open_table(definition(table)?).map_err(store_error)?;
        let value = table.get(key).map_err(store_error)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan(&self, table: Table) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(store_error)?;
        let table = txn.open_table(definition(table)?).map_err(store_error)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(store_error)? {
            let (key, value) = entry.map_err(store_error)?;
            out.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(out)
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let touches_log = batch.ops().iter().any(|op| {
            matches!(
                op,
                WriteOp::Put {
                    table: Table::Handshakes,
                    ..
                } | WriteOp::Delete {
                    table: Table::Handshakes,
                    ..
                }
            )
        });
        if self.fail_next_handshake_write && touches_log {
            self.fail_next_handshake_write = false;
            return Err(StoreError::new("injected write failure"));
        }
        // Dropping an uncommitted transaction aborts it, so an error anywhere applies nothing.
        let txn = self.db.begin_write().map_err(store_error)?;
        for op in batch.into_ops() {
            match op {
                WriteOp::Put { table, key, value } => {
                    let mut t = txn.open_table(definition(table)?).map_err(store_error)?;
                    t.insert(key.as_slice(), value.as_slice())
                        .map_err(store_error)?;
                }
                WriteOp::Delete { table, key } => {
                    let mut t = txn.open_table(definition(table)?).map_err(store_error)?;
                    t.remove(key.as_slice()).map_err(store_error)?;
                }
            }
        }
        txn.commit().map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_survive_reopening_the_database() {
        // What a committed batch wrote is there after the database is closed and reopened.
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = RedbStore::open(dir.path()).unwrap();
            let mut batch = WriteBatch::new();
            batch.put(
                Table::Meta,
                b"incarnation".to_vec(),
                7u64.to_be_bytes().to_vec(),
            );
            batch.put(Table::Members, b"n2".to_vec(), b"addr".to_vec());
            batch.put(Table::Members, b"n3".to_vec(), b"addr".to_vec());
            batch.delete(Table::Members, b"n3".to_vec());
            store.write(batch).unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(
            store.read(Table::Meta, b"incarnation").unwrap(),
            Some(7u64.to_be_bytes().to_vec())
        );
        assert_eq!(
            store.scan(Table::Members).unwrap(),
            vec![(b"n2".to_vec(), b"addr".to_vec())]
        );
        assert_eq!(store.read(Table::Pods, b"missing").unwrap(), None);
    }

    #[test]
    fn a_data_directory_serves_one_node_at_a_time() {
        // A second open of the same directory is refused with a clear reason while the first lives.
        let dir = tempfile::tempdir().unwrap();
        let _first = RedbStore::open(dir.path()).unwrap();
        let err = RedbStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, OpenError::InUse(_)), "{err}");
        assert!(err.to_string().contains("in use by another running node"));
    }
}
