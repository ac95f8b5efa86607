//! The node's durable state: a redb database at `<data-dir>/node.redb`, with a write-ahead log
//! in front of it at `<data-dir>/node.wal` ([`wal`]).
//!
//! It implements the mesh crate's [`Store`] trait: reads, scans and all-or-nothing batches, each
//! batch durable before `write` returns. A batch is appended to the log and synced there, and
//! that is all its write waits for; redb takes in the batches waiting since its last update in
//! one transaction without a sync of its own, before the next read. A checkpoint (one durable
//! redb commit) retires the log's records when it fills, at a clean stop, and for a batch too
//! big for it. Opening the store applies again what the log holds past the last checkpoint, so
//! a crash loses nothing a `write` returned for. redb also locks its file, so two daemons can
//! never share a data directory (nor its log).

mod wal;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use podmesh_mesh::{Store, StoreError, Table, WriteBatch, WriteOp};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use wal::{LoggedOp, Wal};

/// The database file inside a data directory.
pub const STORE_FILE: &str = "node.redb";

/// The write-ahead log inside a data directory.
pub const WAL_FILE: &str = "node.wal";

type Bytes = TableDefinition<'static, &'static [u8], &'static [u8]>;

const META: Bytes = TableDefinition::new("meta");
const MEMBERS: Bytes = TableDefinition::new("members");
const PODS: Bytes = TableDefinition::new("pods");
const HANDSHAKES: Bytes = TableDefinition::new("handshakes");
const INBOXES: Bytes = TableDefinition::new("inboxes");

/// The store's own record of the log: the last sequence number a durable commit covers.
const WAL_STATE: Bytes = TableDefinition::new("wal");
const THROUGH: &[u8] = b"through";

/// The tables, numbered by their place here in the log's records: the order never changes.
const TABLES: [(Table, Bytes); 5] = [
    (Table::Meta, META),
    (Table::Members, MEMBERS),
    (Table::Pods, PODS),
    (Table::Handshakes, HANDSHAKES),
    (Table::Inboxes, INBOXES),
];

/// `table`'s number in the log's records: its place in [`TABLES`].
fn number(table: Table) -> Result<u8, StoreError> {
    let at = TABLES.iter().position(|(t, _)| *t == table);
    at.map(|at| at as u8)
        .ok_or_else(|| StoreError::new(format!("no redb table for {table:?}")))
}

fn numbered(table: u8) -> Result<Bytes, StoreError> {
    TABLES
        .get(usize::from(table))
        .map(|(_, definition)| *definition)
        .ok_or_else(|| StoreError::new(format!("no table numbered {table}")))
}

fn definition(table: Table) -> Result<Bytes, StoreError> {
    numbered(number(table)?)
}

/// A batch's operation as the log records it.
fn logged(op: WriteOp) -> Result<LoggedOp, StoreError> {
    Ok(match op {
        WriteOp::Put { table, key, value } => LoggedOp::Put {
            table: number(table)?,
            key,
            value,
        },
        WriteOp::Delete { table, key } => LoggedOp::Delete {
            table: number(table)?,
            key,
        },
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

/// Logged batches redb may be behind by: past this many, a write first brings redb up to date.
pub const PENDING_BATCHES_MAX: usize = 256;

/// Logged batches redb has not taken in yet.
#[derive(Debug, Default)]
struct Pending {
    /// Their operations, oldest first.
    ops: Vec<LoggedOp>,
    /// How many batches they came in.
    batches: usize,
}

/// The redb-backed [`Store`].
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    wal: Wal,
    /// What the log holds and redb has not taken in yet: applied together in one transaction
    /// before the next read or scan, once [`PENDING_BATCHES_MAX`] batches wait, and at each
    /// checkpoint. A delivery's write is its log append alone, and redb's cost is shared by
    /// every batch in between.
    pending: RefCell<Pending>,
    /// Set by a fault point: the next batch touching the handshake log fails.
    fail_next_handshake_write: bool,
}

fn store_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) `<data_dir>/node.redb` and its log, applying what the log holds past
    /// the last checkpoint. The directory ends up 0700 and every file in it 0600, whatever the
    /// umask or their earlier modes: the inboxes hold other programs' messages. Each mode it had
    /// to tighten is logged as a warning.
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
        for (_, table) in TABLES {
            txn.open_table(table).map_err(|e| other(&e))?;
        }
        let through = {
            let state = txn.open_table(WAL_STATE).map_err(|e| other(&e))?;
            let value = state.get(THROUGH).map_err(|e| other(&e))?;
            match value.map(|v| <[u8; 8]>::try_from(v.value())) {
                None => 0,
                Some(Ok(bytes)) => u64::from_be_bytes(bytes),
                Some(Err(_)) => return Err(other(&"the log's checkpoint record is damaged")),
            }
        };
        txn.commit().map_err(|e| other(&e))?;

        let wal_path = data_dir.join(WAL_FILE);
        let wal_error = |e: &dyn std::fmt::Display| OpenError::Other {
            path: wal_path.clone(),
            message: e.to_string(),
        };
        let (wal, records) = Wal::open(&wal_path, through).map_err(|e| wal_error(&e))?;
        let mut ops = Vec::new();
        for record in &records {
            let Some(record_ops) = wal::decode(&record.payload) else {
                return Err(wal_error(&format!(
                    "record {} passes its check but does not decode",
                    record.seq
                )));
            };
            ops.extend(record_ops);
        }
        let mut store = Self {
            db,
            wal,
            pending: RefCell::default(),
            fail_next_handshake_write: false,
        };
        if !records.is_empty() {
            store.checkpoint(&ops).map_err(|e| wal_error(&e))?;
            tracing::info!(
                batches = records.len(),
                "applied the batches the write-ahead log held past its last checkpoint"
            );
        }
        Ok(store)
    }

    /// Applies `ops` in one redb transaction: durable, recording that it covers every record
    /// the log holds, or not synced (the log already holds them).
    fn apply(
        &self,
        ops: &[LoggedOp],
        durability: Durability,
        through: Option<u64>,
    ) -> Result<(), StoreError> {
        // Dropping an uncommitted transaction aborts it, so an error anywhere applies nothing.
        let mut txn = self.db.begin_write().map_err(store_error)?;
        txn.set_durability(durability).map_err(store_error)?;
        for op in ops {
            match op {
                LoggedOp::Put { table, key, value } => {
                    let mut t = txn.open_table(numbered(*table)?).map_err(store_error)?;
                    t.insert(key.as_slice(), value.as_slice())
                        .map_err(store_error)?;
                }
                LoggedOp::Delete { table, key } => {
                    let mut t = txn.open_table(numbered(*table)?).map_err(store_error)?;
                    t.remove(key.as_slice()).map_err(store_error)?;
                }
            }
        }
        if let Some(seq) = through {
            let mut state = txn.open_table(WAL_STATE).map_err(store_error)?;
            state
                .insert(THROUGH, seq.to_be_bytes().as_slice())
                .map_err(store_error)?;
        }
        txn.commit().map_err(store_error)
    }

    /// One durable redb commit of the pending batches and `ops`, which also makes durable every
    /// batch applied since the last one and retires the log's records.
    fn checkpoint(&mut self, ops: &[LoggedOp]) -> Result<(), StoreError> {
        let mut all = std::mem::take(&mut self.pending.get_mut().ops);
        let logged = all.len();
        all.extend_from_slice(ops);
        if let Err(e) = self.apply(&all, Durability::Immediate, Some(self.wal.last_seq())) {
            all.truncate(logged);
            self.pending.get_mut().ops = all;
            return Err(e);
        }
        *self.pending.get_mut() = Pending::default();
        self.wal.restart();
        Ok(())
    }

    /// Applies the pending batches to redb, in one transaction without a sync (the log holds
    /// them). On an error they stay pending: the next read, write or start tries again.
    fn settle(&self) -> Result<(), StoreError> {
        let mut pending = self.pending.borrow_mut();
        if pending.batches == 0 {
            return Ok(());
        }
        self.apply(&pending.ops, Durability::None, None)?;
        *pending = Pending::default();
        Ok(())
    }
}

impl Drop for RedbStore {
    /// A clean stop leaves nothing in the log to apply again.
    fn drop(&mut self) {
        if !self.wal.is_empty()
            && let Err(e) = self.checkpoint(&[])
        {
            tracing::warn!(
                error = %e,
                "the last checkpoint failed; the next start applies the log"
            );
        }
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
        self.settle()?;
        let txn = self.db.begin_read().map_err(store_error)?;
        let table = txn.open_table(definition(table)?).map_err(store_error)?;
        let value = table.get(key).map_err(store_error)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan(&self, table: Table) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.settle()?;
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
        let ops = batch
            .into_ops()
            .into_iter()
            .map(logged)
            .collect::<Result<Vec<_>, _>>()?;
        let payload = wal::encode(&ops);
        if payload.len() > wal::RECORD_MAX {
            return self.checkpoint(&ops);
        }
        if !self.wal.has_room(payload.len()) {
            self.checkpoint(&[])?;
        }
        if self.pending.get_mut().batches >= PENDING_BATCHES_MAX {
            self.settle()?;
        }
        self.wal.append(&payload).map_err(store_error)?;
        let pending = self.pending.get_mut();
        pending.ops.extend(ops);
        pending.batches += 1;
        Ok(())
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
    fn redb_takes_in_logged_batches_before_a_read_and_past_the_bound() {
        // Writes wait in the log; a read sees them all, and PENDING_BATCHES_MAX bounds the wait.
        let dir = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(dir.path()).unwrap();
        let put = |store: &mut RedbStore, i: u64| {
            let mut batch = WriteBatch::new();
            batch.put(Table::Inboxes, i.to_be_bytes().to_vec(), b"m".to_vec());
            store.write(batch).unwrap();
        };
        for i in 0..3 {
            put(&mut store, i);
        }
        assert_eq!(
            store.pending.borrow().batches,
            3,
            "the writes wait in the log"
        );
        assert_eq!(
            store.read(Table::Inboxes, &1u64.to_be_bytes()).unwrap(),
            Some(b"m".to_vec())
        );
        assert_eq!(store.pending.borrow().batches, 0);
        for i in 3..3 + PENDING_BATCHES_MAX as u64 + 10 {
            put(&mut store, i);
            assert!(store.pending.borrow().batches <= PENDING_BATCHES_MAX);
        }
        assert_eq!(store.pending.borrow().batches, 10);
        assert_eq!(
            store.scan(Table::Inboxes).unwrap().len(),
            PENDING_BATCHES_MAX + 13
        );
    }

    /// Set for the child process of [`batches_survive_a_crash`]: the data directory it writes.
    const CRASH_DIR: &str = "PODMESH_STORE_TEST_CRASH_DIR";

    /// What the child writes: enough large batches to fill the log (a checkpoint for room), one
    /// too big for it (a checkpoint of its own), then small ones that only the log holds.
    fn crash_writes(store: &mut RedbStore) {
        for i in 0..50 {
            let mut batch = WriteBatch::new();
            batch.put(
                Table::Pods,
                format!("big{i}").into_bytes(),
                vec![1; 100_000],
            );
            store.write(batch).unwrap();
        }
        let mut batch = WriteBatch::new();
        batch.put(Table::Pods, b"huge".to_vec(), vec![2; 2 << 20]);
        store.write(batch).unwrap();
        for i in 0..20u64 {
            let mut batch = WriteBatch::new();
            batch.put(Table::Inboxes, i.to_be_bytes().to_vec(), vec![3; 200]);
            if let Some(old) = i.checked_sub(5) {
                batch.delete(Table::Inboxes, old.to_be_bytes().to_vec());
            }
            store.write(batch).unwrap();
        }
    }

    #[test]
    fn batches_survive_a_crash() {
        // Every batch a write returned for is there after the process dies mid-cycle.
        if let Ok(dir) = std::env::var(CRASH_DIR) {
            // The child: write, then die with no destructor run and no checkpoint.
            let mut store = RedbStore::open(Path::new(&dir)).unwrap();
            crash_writes(&mut store);
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::tests::batches_survive_a_crash"])
            .env(CRASH_DIR, dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            std::os::unix::process::ExitStatusExt::signal(&status) == Some(6),
            "the child writes, then aborts: {status}"
        );
        let store = RedbStore::open(dir.path()).unwrap();
        let inbox: Vec<u64> = store
            .scan(Table::Inboxes)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                assert_eq!(v, vec![3; 200]);
                u64::from_be_bytes(k.try_into().unwrap())
            })
            .collect();
        assert_eq!(inbox, (15..20).collect::<Vec<_>>());
        assert_eq!(store.scan(Table::Pods).unwrap().len(), 51);
        assert_eq!(
            store.read(Table::Pods, b"huge").unwrap().map(|v| v.len()),
            Some(2 << 20)
        );
        // Applied once, the log is retired: a second open finds the same and nothing to apply.
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.scan(Table::Inboxes).unwrap().len(), 5);
        assert!(store.wal.is_empty());
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
