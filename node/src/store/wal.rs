//! The store's write-ahead log, `<data-dir>/node.wal`: each batch is appended here and made
//! durable with one `fdatasync`; redb takes it in later without a sync of its own. A checkpoint
//! (one durable redb commit that records the last sequence number it covers) retires the log's
//! records; opening the store applies again those that came after it.
//!
//! Why a log in front of redb: a durable redb commit writes about seven scattered pages and its
//! header, then syncs them; an append syncs one small region of a file whose blocks were all
//! written when it was created, so no block allocation or size change waits for the journal.
//!
//! Layout: the file is [`WAL_SIZE`] bytes, zeros when created. Records follow one another from
//! offset 0, each a [`HEADER`]-byte header and its payload:
//!
//! ```text
//! len: u32 LE (payload bytes) | seq: u64 LE | check: first 8 bytes of SHA-256(len, seq, payload)
//! payload: ops, each  kind: u8 (0 put, 1 delete) | table: u8 | key len: u32 LE | key
//!                     [value len: u32 LE | value]  (puts only)
//! ```
//!
//! After a checkpoint the next record is written at offset 0 again, so what follows the newest
//! records in the file is older ones: sequence numbers tell them apart, and a torn record fails
//! its check. Replay takes the run of records numbered one after another from the first after
//! the checkpoint, and stops at the first that is not.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The log's size on disk: its blocks are written once, when the file is created.
pub(super) const WAL_SIZE: u64 = 4 << 20;

/// Bytes before each record's payload.
pub(super) const HEADER: usize = 4 + 8 + 8;

/// A batch whose record would take more than this goes straight to a durable redb commit: the
/// log stays for the small, frequent writes it is for.
pub(super) const RECORD_MAX: usize = (WAL_SIZE / 4) as usize;

/// One operation of a logged batch, with its table as the store numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LoggedOp {
    /// Insert or replace `key`.
    Put {
        /// The table's number.
        table: u8,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The table's number.
        table: u8,
        /// The key.
        key: Vec<u8>,
    },
}

/// Encodes a batch's operations as a record payload.
pub(super) fn encode(ops: &[LoggedOp]) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    for op in ops {
        match op {
            LoggedOp::Put { table, key, value } => {
                out.extend_from_slice(&[0, *table]);
                bytes(&mut out, key);
                bytes(&mut out, value);
            }
            LoggedOp::Delete { table, key } => {
                out.extend_from_slice(&[1, *table]);
                bytes(&mut out, key);
            }
        }
    }
    out
}

/// Decodes a record payload; `None` if it is not a whole sequence of operations.
pub(super) fn decode(mut payload: &[u8]) -> Option<Vec<LoggedOp>> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if input.len() < n {
            return None;
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Some(head)
    }
    fn bytes(input: &mut &[u8]) -> Option<Vec<u8>> {
        let len = u32::from_le_bytes(take(input, 4)?.try_into().ok()?) as usize;
        Some(take(input, len)?.to_vec())
    }
    let mut ops = Vec::new();
    while !payload.is_empty() {
        let &[kind, table] = take(&mut payload, 2)? else {
            return None;
        };
        let key = bytes(&mut payload)?;
        ops.push(match kind {
            0 => LoggedOp::Put {
                table,
                key,
                value: bytes(&mut payload)?,
            },
            1 => LoggedOp::Delete { table, key },
            _ => return None,
        });
    }
    Some(ops)
}

fn check(len: u32, seq: u64, payload: &[u8]) -> [u8; 8] {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(&len.to_le_bytes());
    digest.update(&seq.to_le_bytes());
    digest.update(payload);
    let mut out = [0; 8];
    out.copy_from_slice(&digest.finish().as_ref()[..8]);
    out
}

/// Record `seq` of `payload`: its header, then the payload.
fn record(seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut record = Vec::with_capacity(HEADER + payload.len());
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(&seq.to_le_bytes());
    record.extend_from_slice(&check(len, seq, payload));
    record.extend_from_slice(payload);
    record
}

/// A record read back at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    /// Its sequence number.
    pub(super) seq: u64,
    /// Its payload.
    pub(super) payload: Vec<u8>,
}

/// The open log.
#[derive(Debug)]
pub(super) struct Wal {
    file: File,
    path: PathBuf,
    /// Where the next record goes.
    end: u64,
    /// The next record's sequence number.
    next_seq: u64,
}

impl Wal {
    /// Opens the log at `path`, creating it (mode 0600, [`WAL_SIZE`] bytes of zeros, synced with
    /// its directory entry) if it is missing or short. Returns it with the records that follow
    /// `through`, the last sequence number a durable redb commit covers, oldest first. The next
    /// append goes at offset 0, over them: the caller makes them durable in redb first.
    pub(super) fn open(path: &Path, through: u64) -> io::Result<(Wal, Vec<Record>)> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < WAL_SIZE {
            let zeros = vec![0; (WAL_SIZE - len) as usize];
            file.write_all_at(&zeros, len)?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let mut contents = vec![0; WAL_SIZE as usize];
        file.read_exact_at(&mut contents, 0)?;
        let records = replay(&contents, through);
        let next_seq = records.last().map_or(through, |r| r.seq) + 1;
        let wal = Wal {
            file,
            path: path.to_owned(),
            end: 0,
            next_seq,
        };
        Ok((wal, records))
    }

    /// Whether a payload of `len` bytes fits after the records already appended.
    pub(super) fn has_room(&self, len: usize) -> bool {
        self.end + (HEADER + len) as u64 <= WAL_SIZE
    }

    /// The sequence number of the newest record appended (or replayed).
    pub(super) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Whether no record was appended since the last [`Wal::restart`].
    pub(super) fn is_empty(&self) -> bool {
        self.end == 0
    }

    /// Appends one record and syncs it. On an error nothing counts as appended: the next record
    /// is written over whatever part of this one reached the file. A payload is never empty:
    /// a record of no bytes is where replay stops.
    pub(super) fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        if payload.is_empty() {
            return Err(io::Error::other("an empty record"));
        }
        if !self.has_room(payload.len()) {
            return Err(io::Error::other(format!(
                "a record of {} bytes does not fit in {}",
                payload.len(),
                self.path.display()
            )));
        }
        let record = record(self.next_seq, payload);
        self.file.write_all_at(&record, self.end)?;
        self.file.sync_data()?;
        self.end += record.len() as u64;
        self.next_seq += 1;
        Ok(())
    }

    /// Starts again at offset 0, once a durable redb commit covers every record appended.
    pub(super) fn restart(&mut self) {
        self.end = 0;
    }
}

/// The run of records numbered `through + 1`, `through + 2`, ... in `contents`, skipping older
/// ones before it (what the last cycle left), and ending at the first record that is torn,
/// older, or numbered out of turn.
fn replay(contents: &[u8], through: u64) -> Vec<Record> {
    let mut records = Vec::new();
    let mut at = 0;
    while at + HEADER <= contents.len() {
        let header = &contents[at..at + HEADER];
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
        let start = at + HEADER;
        let Some(end) = start
            .checked_add(len as usize)
            .filter(|end| *end <= contents.len())
        else {
            break;
        };
        let payload = &contents[start..end];
        if len == 0 || header[12..] != check(len, seq, payload) {
            break;
        }
        let expected = records.last().map_or(through, |r: &Record| r.seq) + 1;
        if seq > expected || (seq < expected && !records.is_empty()) {
            break;
        }
        if seq == expected {
            records.push(Record {
                seq,
                payload: payload.to_vec(),
            });
        }
        at = end;
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> Vec<u8> {
        encode(&[LoggedOp::Put {
            table: 4,
            key: key.as_bytes().to_vec(),
            value: vec![7; 100],
        }])
    }

    fn seqs(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    /// A new log in a scratch directory holding one record for each key.
    fn log_of(keys: &[&str]) -> (tempfile::TempDir, PathBuf, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.wal");
        let (mut wal, records) = Wal::open(&path, 0).unwrap();
        assert!(records.is_empty());
        for key in keys {
            wal.append(&put(key)).unwrap();
        }
        (dir, path, wal)
    }

    #[test]
    fn operations_come_back_as_they_were_encoded_and_garbage_does_not_decode() {
        // A payload decodes to the operations it encodes, and a cut or unknown one to nothing.
        let ops = vec![
            LoggedOp::Put {
                table: 0,
                key: b"k".to_vec(),
                value: vec![],
            },
            LoggedOp::Delete {
                table: 4,
                key: vec![0xff; 300],
            },
        ];
        let payload = encode(&ops);
        assert_eq!(decode(&payload), Some(ops));
        assert_eq!(decode(&payload[..payload.len() - 1]), None);
        assert_eq!(decode(&[2, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode(&[0, 0, 9, 0, 0, 0]), None);
    }

    #[test]
    fn records_after_the_checkpoint_come_back_in_order() {
        // Replay returns the records numbered past the checkpoint, oldest first.
        let (_dir, path, wal) = log_of(&["a", "b", "c"]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), WAL_SIZE);
        drop(wal);
        let (wal, records) = Wal::open(&path, 0).unwrap();
        assert_eq!(seqs(&records), [1, 2, 3]);
        assert_eq!(records[1].payload, put("b"));
        assert_eq!(wal.last_seq(), 3);
        // A checkpoint through 2 leaves the third alone.
        let (_, records) = Wal::open(&path, 2).unwrap();
        assert_eq!(seqs(&records), [3]);
        let (wal, records) = Wal::open(&path, 3).unwrap();
        assert!(records.is_empty());
        assert_eq!(wal.last_seq(), 3);
    }

    #[test]
    fn a_torn_record_ends_the_replay() {
        // A record that fails its check ends the replay; numbering goes on from the last good one.
        let (_dir, path, wal) = log_of(&["a", "b", "c"]);
        drop(wal);
        // A byte of the second record's payload is not the one written, as a torn write leaves.
        let record = (HEADER + put("a").len()) as u64;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xaa], record + HEADER as u64 + 20)
            .unwrap();
        let (wal, records) = Wal::open(&path, 0).unwrap();
        assert_eq!(seqs(&records), [1]);
        assert_eq!(wal.last_seq(), 1);
    }

    #[test]
    fn after_a_restart_older_records_left_behind_are_not_replayed() {
        // Records of the previous cycle, left after the newest in the file, are not replayed.
        let (_dir, path, mut wal) = log_of(&["a", "b", "c", "d"]);
        // A checkpoint through 4, then two records over the first two of the last cycle.
        wal.restart();
        wal.append(&put("e")).unwrap();
        wal.append(&put("f")).unwrap();
        drop(wal);
        let (wal, records) = Wal::open(&path, 4).unwrap();
        assert_eq!(seqs(&records), [5, 6]);
        assert_eq!(records[1].payload, put("f"));
        assert_eq!(wal.last_seq(), 6);
        // With no record after the checkpoint, the whole old cycle is skipped.
        let (_, records) = Wal::open(&path, 6).unwrap();
        assert!(records.is_empty());
    }

    #[test]
    fn a_full_log_refuses_a_record_and_says_so() {
        // The log's bound: a record past WAL_SIZE is refused with a reason until a restart.
        let (_dir, _, mut wal) = log_of(&[]);
        let big = vec![0; RECORD_MAX];
        let mut appended = 0;
        while wal.has_room(big.len()) {
            wal.append(&big).unwrap();
            appended += 1;
        }
        assert_eq!(appended, 3);
        let err = wal.append(&big).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        assert!(
            wal.append(&[]).is_err(),
            "an empty record would end the replay"
        );
        wal.restart();
        assert!(wal.has_room(big.len()));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_replay_or_the_decoder(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            through in 0u64..4,
        ) {
            // Whatever a damaged disk holds, reading it returns instead of panicking.
            let _ = replay(&bytes, through);
            let _ = decode(&bytes);
        }

        #[test]
        fn records_appended_to_a_buffer_replay_as_written(
            payloads in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 1..300), 0..20),
        ) {
            // Records as `append` writes them, then zeros, come back whole and in order.
            let mut contents = Vec::new();
            for (seq, payload) in (1u64..).zip(&payloads) {
                contents.extend(record(seq, payload));
            }
            contents.resize(contents.len() + HEADER, 0);
            let records = replay(&contents, 0);
            let back: Vec<Vec<u8>> = records.into_iter().map(|r| r.payload).collect();
            proptest::prop_assert_eq!(back, payloads);
        }
    }
}
