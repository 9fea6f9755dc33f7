//! [`LogDb`]: the synchronous redb store behind the StorageActor: log, hard state, membership,
//! and (in `snapshot.rs`) snapshots.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use raft::eraftpb::ConfState;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction,
    backends::InMemoryBackend,
};

use super::{
    codec,
    records::{
        self, Identity, Member, PersistBatch, Recovered, decode_identity, decode_index_term,
        decode_members, decode_snapshot, encode_identity, encode_index_term, encode_members,
        encode_snapshot,
    },
    tables::{FORMAT_VERSION, LOG, META, SNAPSHOT_CHUNKS, meta_key},
};
use crate::error::StorageError;

/// redb's page cache per database (its default is 1 GiB). The Raft log is read from memory
/// (MemLog) and written in small group commits, and snapshots stream through in chunks, so a
/// small cache costs nothing measurable and keeps a node's memory bounded: redb would otherwise
/// keep every snapshot chunk it wrote or read in memory.
pub const DB_CACHE_SIZE: usize = 32 * 1024 * 1024;

/// Adds the operation's name to a redb error.
pub(crate) trait IoContext<T> {
    fn io(self, operation: &'static str) -> Result<T, StorageError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> IoContext<T> for Result<T, E> {
    fn io(self, operation: &'static str) -> Result<T, StorageError> {
        self.map_err(|e| StorageError::io(operation, e))
    }
}

/// The redb database of one node.
#[derive(Debug)]
pub struct LogDb {
    pub(super) db: Arc<Database>,
    pub(super) path: PathBuf,
    last_index: u64,
    pub(super) next_snapshot_id: u64,
    scratch: Vec<u8>,
}

/// A shareable reference to an open database: what a restarted StorageActor reopens its
/// [`LogDb`] from (a crash of the actor does not close the file), and what snapshot readers
/// read from. [`DbHandle::close`] lets go of it at shutdown, so the file is closed once the
/// StorageActor drops its own `LogDb`.
#[derive(Debug, Clone)]
pub struct DbHandle {
    // The mutex guards a slot that is read at (re)start and emptied at shutdown, never on a
    // hot path.
    slot: Arc<Mutex<Option<Arc<Database>>>>,
    pub(super) path: PathBuf,
}

impl DbHandle {
    /// Lets go of the database; later [`LogDb::from_handle`] calls fail with
    /// [`StorageError::Closed`].
    pub fn close(&self) {
        if let Ok(mut slot) = self.slot.lock() {
            slot.take();
        }
    }

    pub(super) fn database(&self) -> Result<Arc<Database>, StorageError> {
        self.slot
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .ok_or(StorageError::Closed)
    }
}

impl LogDb {
    /// Opens (or creates) the database file. A file that is not a redb database, is corrupt, or
    /// was written with another layout version is refused with a typed error; it is never reset.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let db = Database::builder()
            .set_cache_size(DB_CACHE_SIZE)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
                    StorageError::Corrupt {
                        path: path.to_owned(),
                        reason,
                    }
                }
                other => StorageError::Open {
                    path: path.to_owned(),
                    source: Box::new(other),
                },
            })?;
        Self::init(db, path.to_owned())
    }

    /// A database that lives in memory only (tests, simulation).
    pub fn in_memory() -> Result<Self, StorageError> {
        Self::with_backend(InMemoryBackend::new(), PathBuf::new())
    }

    /// A database over any redb backend (fault injection in tests, simulated disks). `label`
    /// names it in errors.
    pub fn with_backend(
        backend: impl redb::StorageBackend,
        label: PathBuf,
    ) -> Result<Self, StorageError> {
        let db = Database::builder()
            .set_cache_size(DB_CACHE_SIZE)
            .create_with_backend(backend)
            .map_err(|e| StorageError::Open {
                path: label.clone(),
                source: Box::new(e),
            })?;
        Self::init(db, label)
    }

    /// Checks (or writes) the format version, creates missing tables and deletes the chunks of
    /// snapshots that were never committed.
    fn init(db: Database, path: PathBuf) -> Result<Self, StorageError> {
        let mut this = Self {
            db: Arc::new(db),
            path,
            last_index: 0,
            next_snapshot_id: 1,
            scratch: Vec::new(),
        };
        let tx = this.db.begin_write().io("begin")?;
        {
            let mut meta = tx.open_table(META).io("open meta")?;
            let found = meta
                .get(meta_key::FORMAT_VERSION)
                .io("read version")?
                .map(|v| v.value().to_vec());
            match found {
                Some(bytes) => {
                    let found = <[u8; 4]>::try_from(bytes.as_slice())
                        .map(u32::from_le_bytes)
                        .map_err(|_| this.corrupt("format version record"))?;
                    if found != FORMAT_VERSION {
                        return Err(StorageError::IncompatibleVersion {
                            found,
                            supported: FORMAT_VERSION,
                        });
                    }
                }
                None => {
                    meta.insert(
                        meta_key::FORMAT_VERSION,
                        FORMAT_VERSION.to_le_bytes().as_slice(),
                    )
                    .io("write version")?;
                }
            }
            let current = match meta.get(meta_key::SNAPSHOT).io("read snapshot")? {
                Some(v) => Some(
                    decode_snapshot(v.value()).ok_or_else(|| this.corrupt("snapshot record"))?,
                ),
                None => None,
            };
            tx.open_table(LOG).io("open log")?;
            let mut chunks = tx.open_table(SNAPSHOT_CHUNKS).io("open snapshot chunks")?;
            let keep = current.as_ref().map_or(0, |s| s.id);
            chunks
                .retain(|(id, _), _| id == keep)
                .io("delete uncommitted snapshots")?;
            this.next_snapshot_id = keep + 1;
        }
        tx.commit().io("commit")?;
        this.last_index = this.read_last_index()?;
        Ok(this)
    }

    /// A handle sharing this database.
    pub fn handle(&self) -> DbHandle {
        DbHandle {
            slot: Arc::new(Mutex::new(Some(self.db.clone()))),
            path: self.path.clone(),
        }
    }

    /// Reopens a `LogDb` over a shared database (after a StorageActor restart).
    pub fn from_handle(handle: DbHandle) -> Result<Self, StorageError> {
        let mut this = Self {
            db: handle.database()?,
            path: handle.path,
            last_index: 0,
            next_snapshot_id: 1,
            scratch: Vec::new(),
        };
        this.last_index = this.read_last_index()?;
        this.next_snapshot_id = this.current_snapshot()?.map_or(0, |s| s.id) + 1;
        Ok(this)
    }

    pub(super) fn corrupt(&self, what: &str) -> StorageError {
        StorageError::Corrupt {
            path: self.path.clone(),
            reason: format!("{what} does not decode"),
        }
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StorageError> {
        self.db.begin_read().io("begin read")
    }

    pub(super) fn begin_write(&self, durable: bool) -> Result<WriteTransaction, StorageError> {
        let mut tx = self.db.begin_write().io("begin")?;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        tx.set_durability(durability).io("set durability")?;
        Ok(tx)
    }

    /// The last stored entry's index, or where the log starts if it is empty (after a
    /// snapshot replaced it).
    fn read_last_index(&self) -> Result<u64, StorageError> {
        let tx = self.begin_read()?;
        let log = tx.open_table(LOG).io("open log")?;
        let last = log.last().io("read log")?.map(|(k, _)| k.value());
        let start = match meta_value(&tx, meta_key::LOG_START)? {
            Some(b) => {
                decode_index_term(&b)
                    .ok_or_else(|| self.corrupt("log start"))?
                    .0
            }
            None => 0,
        };
        Ok(last.unwrap_or(0).max(start))
    }

    /// Index of the last entry: the last stored one, or the snapshot's if the log is empty.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The identity recorded at bootstrap, if any.
    pub fn identity(&self) -> Result<Option<Identity>, StorageError> {
        let tx = self.begin_read()?;
        meta_value(&tx, meta_key::IDENTITY)?
            .map(|b| decode_identity(&b).ok_or_else(|| self.corrupt("identity")))
            .transpose()
    }

    /// The current snapshot's record, if there is one.
    pub fn current_snapshot(&self) -> Result<Option<records::SnapshotRecord>, StorageError> {
        let tx = self.begin_read()?;
        meta_value(&tx, meta_key::SNAPSHOT)?
            .map(|b| decode_snapshot(&b).ok_or_else(|| self.corrupt("snapshot record")))
            .transpose()
    }

    /// Reads everything a restarting node needs.
    pub fn recover(&self) -> Result<Recovered, StorageError> {
        let tx = self.begin_read()?;
        let get = |key: &str| meta_value(&tx, key);
        let mut out = Recovered::default();
        if let Some(b) = get(meta_key::IDENTITY)? {
            out.identity = Some(decode_identity(&b).ok_or_else(|| self.corrupt("identity"))?);
        }
        if let Some(b) = get(meta_key::HARD_STATE)? {
            out.hard_state =
                codec::decode_hard_state(&b).map_err(|_| self.corrupt("hard state"))?;
        }
        if let Some(b) = get(meta_key::CONF_STATE)? {
            out.conf_state =
                codec::decode_conf_state(&b).map_err(|_| self.corrupt("conf state"))?;
        }
        if let Some(b) = get(meta_key::MEMBERS)? {
            out.members = decode_members(&b).ok_or_else(|| self.corrupt("members"))?;
        }
        if let Some(b) = get(meta_key::SNAPSHOT)? {
            out.snapshot =
                Some(decode_snapshot(&b).ok_or_else(|| self.corrupt("snapshot record"))?);
        }
        if let Some(b) = get(meta_key::LOG_START)? {
            out.log_start = decode_index_term(&b).ok_or_else(|| self.corrupt("log start"))?;
        }
        let log = tx.open_table(LOG).io("open log")?;
        let mut expected = out.log_start.0 + 1;
        for row in log.iter().io("read log")? {
            let (k, v) = row.io("read log")?;
            let index = k.value();
            if index != expected {
                return Err(StorageError::Corrupt {
                    path: self.path.clone(),
                    reason: format!("log has a gap: expected index {expected}, found {index}"),
                });
            }
            expected = index + 1;
            let entry =
                codec::decode_entry(index, v.value()).map_err(|reason| StorageError::Corrupt {
                    path: self.path.clone(),
                    reason,
                })?;
            out.entries.push(entry);
        }
        if out
            .snapshot
            .as_ref()
            .is_some_and(|s| s.index < out.log_start.0)
        {
            return Err(StorageError::Corrupt {
                path: self.path.clone(),
                reason: "the log was compacted past the snapshot".into(),
            });
        }
        Ok(out)
    }

    /// Counts one more start of this data dir, durably, and returns the new count: a number no
    /// earlier incarnation of the node used.
    pub fn next_incarnation(&mut self) -> Result<u64, StorageError> {
        let tx = self.begin_write(true)?;
        let next = {
            let mut meta = tx.open_table(META).io("open meta")?;
            let current = match meta.get(meta_key::INCARNATION).io("read incarnation")? {
                Some(v) => u64::from_le_bytes(
                    v.value()
                        .try_into()
                        .map_err(|_| self.corrupt("incarnation"))?,
                ),
                None => 0,
            };
            meta.insert(
                meta_key::INCARNATION,
                (current + 1).to_le_bytes().as_slice(),
            )
            .io("write incarnation")?;
            current + 1
        };
        tx.commit().io("commit")?;
        Ok(next)
    }

    /// Records identity, initial conf state and members of a new node, durably.
    pub fn bootstrap(
        &mut self,
        identity: Identity,
        conf_state: &ConfState,
        members: &[Member],
    ) -> Result<(), StorageError> {
        let tx = self.begin_write(true)?;
        {
            let mut meta = tx.open_table(META).io("open meta")?;
            meta.insert(meta_key::IDENTITY, encode_identity(&identity).as_slice())
                .io("write identity")?;
            meta.insert(
                meta_key::CONF_STATE,
                codec::encode_conf_state(conf_state).as_slice(),
            )
            .io("write conf state")?;
            meta.insert(meta_key::MEMBERS, encode_members(members).as_slice())
                .io("write members")?;
        }
        tx.commit().io("commit")
    }

    /// Writes a group of batches in one transaction, in order. `durable` selects an fsynced
    /// commit; otherwise the data reaches redb but only becomes durable with a later durable
    /// commit (see [`Self::flush`]).
    pub fn write(&mut self, batches: &[PersistBatch], durable: bool) -> Result<(), StorageError> {
        let tx = self.begin_write(durable)?;
        let mut last_index = self.last_index;
        {
            let mut log = tx.open_table(LOG).io("open log")?;
            let mut meta = tx.open_table(META).io("open meta")?;
            for batch in batches {
                if let Some(snap) = &batch.snapshot {
                    // An installed snapshot replaces the whole log: anything we held, committed
                    // or a divergent uncommitted tail, is superseded by it.
                    log.retain(|_, _| false).io("clear log")?;
                    meta.insert(meta_key::SNAPSHOT, encode_snapshot(snap).as_slice())
                        .io("write snapshot record")?;
                    meta.insert(
                        meta_key::LOG_START,
                        encode_index_term((snap.index, snap.term)).as_slice(),
                    )
                    .io("write log start")?;
                    let mut chunks = tx.open_table(SNAPSHOT_CHUNKS).io("open snapshot chunks")?;
                    let keep = snap.id;
                    chunks
                        .retain(|(id, _), _| id == keep)
                        .io("delete old snapshots")?;
                    last_index = snap.index;
                }
                if let Some(first) = batch.entries.first() {
                    if first.index <= last_index {
                        // A new leader replaced our uncommitted tail: drop it before appending.
                        log.retain_in(first.index.., |_, _| false)
                            .io("truncate log")?;
                    }
                    for e in &batch.entries {
                        codec::encode_entry(e, &mut self.scratch);
                        log.insert(e.index, self.scratch.as_slice()).io("append")?;
                    }
                    last_index = batch.entries.last().map_or(last_index, |e| e.index);
                }
                if let Some(hs) = &batch.hard_state {
                    meta.insert(
                        meta_key::HARD_STATE,
                        codec::encode_hard_state(hs).as_slice(),
                    )
                    .io("write hard state")?;
                }
                if let Some(cs) = &batch.conf_state {
                    meta.insert(
                        meta_key::CONF_STATE,
                        codec::encode_conf_state(cs).as_slice(),
                    )
                    .io("write conf state")?;
                }
            }
        }
        tx.commit().io("commit")?;
        self.last_index = last_index;
        Ok(())
    }

    /// Removes log entries up to and including `index` (whose term is `term`): they are covered
    /// by a committed snapshot.
    pub(super) fn purge_log(
        tx: &WriteTransaction,
        index: u64,
        term: u64,
    ) -> Result<(), StorageError> {
        let mut log = tx.open_table(LOG).io("open log")?;
        log.retain_in(..=index, |_, _| false).io("purge log")?;
        let mut meta = tx.open_table(META).io("open meta")?;
        meta.insert(
            meta_key::LOG_START,
            encode_index_term((index, term)).as_slice(),
        )
        .io("write log start")?;
        Ok(())
    }

    /// Makes every earlier non-durable commit durable (an empty fsynced commit).
    pub fn flush(&mut self) -> Result<(), StorageError> {
        self.write(&[], true)
    }
}

fn meta_value(tx: &redb::ReadTransaction, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
    let meta = tx.open_table(META).io("open meta")?;
    let value = meta.get(key).io("read meta")?;
    Ok(value.map(|v| v.value().to_vec()))
}

#[cfg(test)]
mod tests {
    use iroh::EndpointAddr;
    use raft::eraftpb::{Entry, HardState};

    use super::*;

    fn entry(index: u64, term: u64, data: &str) -> Entry {
        Entry {
            index,
            term,
            data: data.as_bytes().to_vec().into(),
            ..Default::default()
        }
    }

    fn batch(number: u64, entries: Vec<Entry>, commit: u64) -> PersistBatch {
        PersistBatch {
            number,
            entries,
            hard_state: Some(HardState {
                term: 2,
                vote: 1,
                commit,
                ..Default::default()
            }),
            must_sync: true,
            ..Default::default()
        }
    }

    fn conformance(mut db: LogDb) -> LogDb {
        db.write(
            &[batch(1, (1..=5).map(|i| entry(i, 1, "a")).collect(), 2)],
            true,
        )
        .unwrap();
        // A new leader overwrites 4..=5 with a different tail, in the same group as more entries.
        db.write(
            &[
                batch(2, vec![entry(4, 2, "b"), entry(5, 2, "b")], 3),
                batch(3, vec![entry(6, 2, "c")], 4),
            ],
            false,
        )
        .unwrap();
        db.flush().unwrap();
        let r = db.recover().unwrap();
        let got: Vec<(u64, u64)> = r.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]);
        assert_eq!(r.hard_state.commit, 4);
        assert_eq!(db.last_index(), 6);
        // Truncating to a shorter tail removes everything after it.
        db.write(&[batch(4, vec![entry(3, 3, "d")], 4)], true)
            .unwrap();
        assert_eq!(db.recover().unwrap().entries.len(), 3);
        assert_eq!(db.last_index(), 3);
        db
    }

    #[test]
    fn conformance_in_memory() {
        conformance(LogDb::in_memory().unwrap());
    }

    #[test]
    fn conformance_on_file_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut db = conformance(LogDb::open(&path).unwrap());
        let key = iroh::SecretKey::generate().public();
        let identity = Identity {
            node_id: 7,
            endpoint_id: key,
        };
        let cs = ConfState {
            voters: vec![7, 8],
            ..Default::default()
        };
        let members = vec![Member {
            node_id: 8,
            addr: EndpointAddr::new(key).with_ip_addr("127.0.0.1:9".parse().unwrap()),
        }];
        db.bootstrap(identity, &cs, &members).unwrap();
        drop(db);
        let db = LogDb::open(&path).unwrap();
        let r = db.recover().unwrap();
        assert_eq!(r.identity, Some(identity));
        assert_eq!(r.conf_state, cs);
        assert_eq!(r.members, members);
        assert_eq!(r.entries.len(), 3);
        assert_eq!(db.last_index(), 3);
    }

    #[test]
    fn a_truncated_file_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut db = LogDb::open(&path).unwrap();
        db.write(
            &[batch(
                1,
                (1..=200).map(|i| entry(i, 1, "some payload")).collect(),
                2,
            )],
            true,
        )
        .unwrap();
        drop(db);
        let full = std::fs::read(&path).unwrap();
        for keep in [full.len() / 2, full.len() / 4, 100] {
            std::fs::write(&path, &full[..keep]).unwrap();
            let opened = LogDb::open(&path).and_then(|db| db.recover().map(|_| ()));
            assert!(
                opened.is_err(),
                "a file cut to {keep} of {} bytes was accepted",
                full.len()
            );
            assert_eq!(
                std::fs::read(&path).unwrap().len(),
                keep,
                "the file was modified"
            );
        }
    }

    #[test]
    fn another_format_version_is_refused_with_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        drop(LogDb::open(&path).unwrap());
        {
            let db = Database::open(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert(meta_key::FORMAT_VERSION, 99u32.to_le_bytes().as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        match LogDb::open(&path) {
            Err(StorageError::IncompatibleVersion {
                found: 99,
                supported,
            }) => assert_eq!(supported, FORMAT_VERSION),
            other => panic!("expected IncompatibleVersion, got {other:?}"),
        }
    }

    #[test]
    fn foreign_file_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        assert!(LogDb::open(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
    }
}
