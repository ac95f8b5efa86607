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
    /// Opens (or creates) `<data_dir>/node.redb`. The directory ends up 0700 and every file in
    /// it 0600, whatever the umask or their earlier modes: the inboxes hold other programs'
    /// messages. Each mode it had to tighten is logged as a warning.
    pub fn open(data_dir: &Path) -> Result<Self, OpenError> {
        let path = data_dir.join(STORE_FILE);
        let other = |e: &dyn std::fmt::Display| OpenError::Other {
            path: path.clone(),
            message: e.to_string(),
        };
        create_private_dir(data_dir).map_err(|e| other(&e))?;
        create_private_file(&path).map_err(|e| other(&e))?;
        for tightened in make_private(data_dir).map_err(|e| other(&e))? {
            tracing::warn!(
                path = %tightened.path.display(),
                was = format_args!("{:o}", tightened.was),
                now = format_args!("{:o}", tightened.now),
                "tightened the mode of a data-directory entry others could read"
            );
        }
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

/// Creates `path` with mode 0600 if it does not exist yet, so the database is never readable by
/// others, not even between its creation and [`make_private`]. An existing file is left as is.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
}

/// A mode [`make_private`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    /// The directory or file.
    pub path: PathBuf,
    /// Its permission bits before.
    pub was: u32,
    /// Its permission bits now.
    pub now: u32,
}

/// Takes group and other permissions off `dir` (leaving 0700) and off every file directly in
/// it (leaving 0600, or less if the owner had less). Returns what it changed.
pub fn make_private(dir: &Path) -> std::io::Result<Vec<Tightened>> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = Vec::new();
    let mut tighten = |path: &Path, is_dir: bool| -> std::io::Result<()> {
        let was = std::fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
        let now = if is_dir { 0o700 } else { was & 0o600 };
        if was != now {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(now))?;
            changed.push(Tightened {
                path: path.to_owned(),
                was,
                now,
            });
        }
        Ok(())
    };
    tighten(dir, true)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // Symbolic links are not followed: their targets are not ours to change.
        if entry.file_type()?.is_symlink() {
            continue;
        }
        tighten(&entry.path(), entry.file_type()?.is_dir())?;
    }
    Ok(changed)
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
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_data_directory_and_its_database_are_private() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        drop(RedbStore::open(&dir).unwrap());
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(STORE_FILE)), 0o600);
    }

    #[test]
    fn an_open_data_directory_left_readable_by_others_is_tightened() {
        // A directory made 0755 and files made 0666 and 0644 beforehand, as a umask of 000 or
        // an earlier version would leave them: opening the store takes the others' bits off.
        let dir = tempfile::tempdir().unwrap();
        let set = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let db = dir.path().join(STORE_FILE);
        let log = dir.path().join("node.log");
        let nested = dir.path().join("certs");
        std::fs::write(&db, b"").unwrap();
        std::fs::write(&log, b"started").unwrap();
        std::fs::create_dir(&nested).unwrap();
        set(&db, 0o666);
        set(&log, 0o644);
        set(&nested, 0o755);
        set(dir.path(), 0o755);

        let changed = make_private(dir.path()).unwrap();
        assert_eq!(changed.len(), 4, "{changed:?}");
        assert!(changed.contains(&Tightened {
            path: dir.path().to_owned(),
            was: 0o755,
            now: 0o700
        }));
        assert!(changed.contains(&Tightened {
            path: db.clone(),
            was: 0o666,
            now: 0o600
        }));
        // A second pass has nothing left to do.
        assert_eq!(make_private(dir.path()).unwrap(), vec![]);

        set(&db, 0o644);
        set(dir.path(), 0o777);
        drop(RedbStore::open(dir.path()).unwrap());
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&log), 0o600);
        assert_eq!(mode(&nested), 0o700);
    }

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
