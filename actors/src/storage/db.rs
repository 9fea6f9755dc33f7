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
    codec::{self, RecordError},
    records::{
        self, Identity, Member, PersistBatch, Recovered, decode_identity, decode_index_term,
        decode_members, decode_snapshot, encode_identity, encode_index_term, encode_members,
        encode_snapshot,
    },
    seal::{Tag, seal, unseal},
    tables::{FORMAT_VERSION, LOG, META, SNAPSHOT_CHUNKS, meta_key},
};
use crate::error::{Corruption, CorruptionKind, DataLocation, StorageError};

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
    /// The database file (empty for an in-memory database).
    pub fn path(&self) -> &Path {
        &self.path
    }

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
    ///
    /// redb verifies the checksum of every page of the file at every open (not only after a
    /// crash), and durable commits use its two-phase commit: a damaged page is then an error,
    /// never a silent roll-back to the commit before it (with one-phase commit, redb takes a
    /// last commit that fails its checksums for one torn by a crash and drops it, which would
    /// forget votes and entries this node had acknowledged).
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let db = Self::builder()
            .create(path)
            .map_err(|e| open_error(path, e))?;
        Self::init(db, path.to_owned())
    }

    fn builder() -> redb::Builder {
        let mut builder = Database::builder();
        builder
            .set_cache_size(DB_CACHE_SIZE)
            .set_check_integrity_on_open(true);
        builder
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
        let db = Self::builder()
            .create_with_backend(backend)
            .map_err(|e| open_error(&label, e))?;
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
                        .map_err(|_| {
                            this.corrupt(
                                DataLocation::Meta {
                                    key: meta_key::FORMAT_VERSION,
                                },
                                RecordError::Undecodable(format!("{} bytes", bytes.len())),
                            )
                        })?;
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
                Some(v) => Some(decode_meta(
                    &this.path,
                    meta_key::SNAPSHOT,
                    v.value(),
                    decode_snapshot,
                )?),
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

    pub(super) fn corrupt(&self, location: DataLocation, e: RecordError) -> StorageError {
        corrupt(&self.path, location, e)
    }

    fn inconsistent(&self, location: DataLocation, detail: String) -> StorageError {
        StorageError::Corrupt(Corruption::new(
            &self.path,
            location,
            CorruptionKind::Inconsistent,
            detail,
        ))
    }

    /// A sealed metadata record, checked and decoded.
    fn meta<T>(
        &self,
        tx: &redb::ReadTransaction,
        key: &'static str,
        decode: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Result<Option<T>, StorageError> {
        let table = tx.open_table(META).io("open meta")?;
        let value = table.get(key).io("read meta")?;
        value
            .map(|v| decode_meta(&self.path, key, v.value(), decode))
            .transpose()
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
        // See `open`: a durable commit is written in two phases, so a commit that does not
        // verify later is damage, not a torn write.
        tx.set_two_phase_commit(durable);
        Ok(tx)
    }

    /// The last stored entry's index, or where the log starts if it is empty (after a
    /// snapshot replaced it).
    fn read_last_index(&self) -> Result<u64, StorageError> {
        let tx = self.begin_read()?;
        let log = tx.open_table(LOG).io("open log")?;
        let last = log.last().io("read log")?.map(|(k, _)| k.value());
        let start = self
            .meta(&tx, meta_key::LOG_START, decode_index_term)?
            .map_or(0, |(index, _)| index);
        Ok(last.unwrap_or(0).max(start))
    }

    /// Index of the last entry: the last stored one, or the snapshot's if the log is empty.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The identity recorded at bootstrap, if any.
    pub fn identity(&self) -> Result<Option<Identity>, StorageError> {
        let tx = self.begin_read()?;
        self.meta(&tx, meta_key::IDENTITY, decode_identity)
    }

    /// The current snapshot's record, if there is one.
    pub fn current_snapshot(&self) -> Result<Option<records::SnapshotRecord>, StorageError> {
        let tx = self.begin_read()?;
        self.meta(&tx, meta_key::SNAPSHOT, decode_snapshot)
    }

    /// Reads everything a restarting node needs, verifying every record's checksum and that
    /// the records agree with each other (terms never go down along the log, no entry is newer
    /// than the hard state's term, the commit index is within the log or the snapshot, and the
    /// snapshot covers the compacted prefix).
    pub fn recover(&self) -> Result<Recovered, StorageError> {
        let tx = self.begin_read()?;
        let fenced = self.meta(&tx, meta_key::FENCED, |b| {
            String::from_utf8(b.to_vec()).ok()
        })?;
        if let Some(reason) = fenced {
            return Err(StorageError::Fenced {
                path: self.path.clone(),
                reason,
            });
        }
        let mut out = Recovered {
            identity: self.meta(&tx, meta_key::IDENTITY, decode_identity)?,
            hard_state: self
                .meta(&tx, meta_key::HARD_STATE, |b| {
                    codec::decode_hard_state(b).ok()
                })?
                .unwrap_or_default(),
            conf_state: self
                .meta(&tx, meta_key::CONF_STATE, |b| {
                    codec::decode_conf_state(b).ok()
                })?
                .unwrap_or_default(),
            members: self
                .meta(&tx, meta_key::MEMBERS, decode_members)?
                .unwrap_or_default(),
            snapshot: self.meta(&tx, meta_key::SNAPSHOT, decode_snapshot)?,
            log_start: self
                .meta(&tx, meta_key::LOG_START, decode_index_term)?
                .unwrap_or_default(),
            ..Default::default()
        };
        let log = tx.open_table(LOG).io("open log")?;
        let mut expected = out.log_start.0 + 1;
        for row in log.iter().io("read log")? {
            let (k, v) = row.io("read log")?;
            let index = k.value();
            if index != expected {
                return Err(self.inconsistent(
                    DataLocation::LogEntry { index: expected },
                    format!("the log has a gap: entry {expected} is missing, the next is {index}"),
                ));
            }
            expected = index + 1;
            let entry = codec::decode_entry(index, v.value())
                .map_err(|e| self.corrupt(DataLocation::LogEntry { index }, e))?;
            out.entries.push(entry);
        }
        self.check_consistency(&out)?;
        Ok(out)
    }

    /// The durable records must describe one Raft state that raft-rs can start from: terms never
    /// go down along the log, no entry is from a term the node has not reached, the commit index
    /// is within the log, and the snapshot covers the compacted prefix. A contradiction is a
    /// typed [`StorageError::Corrupt`] here, never a panic inside raft-rs.
    fn check_consistency(&self, r: &Recovered) -> Result<(), StorageError> {
        let hs = &r.hard_state;
        let hard_state = DataLocation::Meta {
            key: meta_key::HARD_STATE,
        };
        let snapshot_index = r.snapshot.as_ref().map_or(0, |s| s.index);
        if snapshot_index < r.log_start.0 {
            return Err(self.inconsistent(
                DataLocation::Meta {
                    key: meta_key::LOG_START,
                },
                format!(
                    "the log was compacted up to {} but the snapshot only covers {snapshot_index}",
                    r.log_start.0
                ),
            ));
        }
        let mut prev_term = r.log_start.1;
        for e in &r.entries {
            if e.term < prev_term {
                return Err(self.inconsistent(
                    DataLocation::LogEntry { index: e.index },
                    format!(
                        "term {} is below the previous entry's term {prev_term}",
                        e.term
                    ),
                ));
            }
            prev_term = e.term;
        }
        if prev_term > hs.term {
            return Err(self.inconsistent(
                hard_state,
                format!(
                    "the log holds an entry of term {prev_term}, after the node's term {}",
                    hs.term
                ),
            ));
        }
        let last_index = r
            .entries
            .last()
            .map_or(r.log_start.0, |e| e.index)
            .max(snapshot_index);
        if hs.commit > last_index {
            return Err(self.inconsistent(
                hard_state,
                format!(
                    "commit index {} is beyond the last entry held ({last_index}): entries this \
                     node acknowledged are missing",
                    hs.commit
                ),
            ));
        }
        Ok(())
    }

    /// Counts one more start of this data dir, durably, and returns the new count: a number no
    /// earlier incarnation of the node used.
    pub fn next_incarnation(&mut self) -> Result<u64, StorageError> {
        let tx = self.begin_write(true)?;
        let next = {
            let mut meta = tx.open_table(META).io("open meta")?;
            let current = match meta.get(meta_key::INCARNATION).io("read incarnation")? {
                Some(v) => decode_meta(&self.path, meta_key::INCARNATION, v.value(), |b| {
                    Some(u64::from_le_bytes(b.try_into().ok()?))
                })?,
                None => 0,
            };
            put_meta(
                &mut meta,
                meta_key::INCARNATION,
                &(current + 1).to_le_bytes(),
            )?;
            current + 1
        };
        tx.commit().io("commit")?;
        Ok(next)
    }

    /// Replaces the stored entry at `entry.index` with `entry`, sealed as if it had been written
    /// so. A fault-injection tool: a record that is wrong but passes its checksum is what the
    /// replica consistency check exists to catch, and tests need one to show that it does.
    #[doc(hidden)]
    pub fn rewrite_entry(&mut self, entry: &raft::eraftpb::Entry) -> Result<(), StorageError> {
        let tx = self.begin_write(true)?;
        {
            let mut log = tx.open_table(LOG).io("open log")?;
            codec::encode_entry(entry, &mut self.scratch);
            log.insert(entry.index, self.scratch.as_slice())
                .io("rewrite entry")?;
        }
        tx.commit().io("commit")
    }

    /// Marks this data dir as one that must not serve again (the node found it corrupt or
    /// stale), durably: [`Self::recover`] refuses it from now on with the reason.
    pub fn fence(&mut self, reason: &str) -> Result<(), StorageError> {
        let tx = self.begin_write(true)?;
        {
            let mut meta = tx.open_table(META).io("open meta")?;
            put_meta(&mut meta, meta_key::FENCED, reason.as_bytes())?;
        }
        tx.commit().io("commit")
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
            put_meta(&mut meta, meta_key::IDENTITY, &encode_identity(&identity))?;
            put_meta(
                &mut meta,
                meta_key::CONF_STATE,
                &codec::encode_conf_state(conf_state),
            )?;
            put_meta(&mut meta, meta_key::MEMBERS, &encode_members(members))?;
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
                    put_meta(&mut meta, meta_key::SNAPSHOT, &encode_snapshot(snap))?;
                    put_meta(
                        &mut meta,
                        meta_key::LOG_START,
                        &encode_index_term((snap.index, snap.term)),
                    )?;
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
                    put_meta(
                        &mut meta,
                        meta_key::HARD_STATE,
                        &codec::encode_hard_state(hs),
                    )?;
                }
                if let Some(cs) = &batch.conf_state {
                    put_meta(
                        &mut meta,
                        meta_key::CONF_STATE,
                        &codec::encode_conf_state(cs),
                    )?;
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
        put_meta(
            &mut meta,
            meta_key::LOG_START,
            &encode_index_term((index, term)),
        )
    }

    /// Makes every earlier non-durable commit durable (an empty fsynced commit).
    pub fn flush(&mut self) -> Result<(), StorageError> {
        self.write(&[], true)
    }
}

/// A redb open error: corruption is typed as such, anything else is an open failure.
fn open_error(path: &Path, e: redb::DatabaseError) -> StorageError {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
            StorageError::Corrupt(Corruption::new(
                path,
                DataLocation::File,
                CorruptionKind::Checksum,
                reason,
            ))
        }
        other => StorageError::Open {
            path: path.to_owned(),
            source: Box::new(other),
        },
    }
}

pub(super) fn corrupt(path: &Path, location: DataLocation, e: RecordError) -> StorageError {
    let (kind, detail) = match e {
        RecordError::Checksum => (
            CorruptionKind::Checksum,
            "its checksum does not match its bytes".to_owned(),
        ),
        RecordError::Undecodable(why) => (
            CorruptionKind::Undecodable,
            format!("its checksum matches but it does not decode: {why}"),
        ),
    };
    StorageError::Corrupt(Corruption::new(path, location, kind, detail))
}

/// Checks a metadata record's seal and decodes it.
pub(super) fn decode_meta<T>(
    path: &Path,
    key: &'static str,
    sealed: &[u8],
    decode: impl FnOnce(&[u8]) -> Option<T>,
) -> Result<T, StorageError> {
    let location = || DataLocation::Meta { key };
    let bytes = unseal(Tag::Meta, key.as_bytes(), sealed)
        .ok_or_else(|| corrupt(path, location(), RecordError::Checksum))?;
    decode(bytes).ok_or_else(|| {
        corrupt(
            path,
            location(),
            RecordError::Undecodable(format!("{} bytes", bytes.len())),
        )
    })
}

/// Writes a sealed metadata record.
pub(super) fn put_meta(
    meta: &mut redb::Table<&str, &[u8]>,
    key: &'static str,
    payload: &[u8],
) -> Result<(), StorageError> {
    meta.insert(key, seal(Tag::Meta, key.as_bytes(), payload).as_slice())
        .io("write meta")?;
    Ok(())
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
        let term = entries.iter().map(|e| e.term).max().unwrap_or(0).max(2);
        PersistBatch {
            number,
            entries,
            hard_state: Some(HardState {
                term,
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
        // Truncating to a shorter (uncommitted) tail removes everything after it.
        db.write(&[batch(4, vec![entry(5, 3, "d")], 4)], true)
            .unwrap();
        assert_eq!(db.recover().unwrap().entries.len(), 5);
        assert_eq!(db.last_index(), 5);
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
        assert_eq!(r.entries.len(), 5);
        assert_eq!(db.last_index(), 5);
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

    /// Writes entries with recognisable payloads to a file, closes it, flips one byte of the
    /// first occurrence of `needle` in the file, and recovers it again.
    fn damage_and_recover(needle: &[u8]) -> Result<Recovered, StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut db = LogDb::open(&path).unwrap();
        let entries = (1..=50)
            .map(|i| entry(i, 1, &format!("payload-{i:04}")))
            .collect();
        db.write(&[batch(1, entries, 40)], true).unwrap();
        drop(db);
        let mut file = std::fs::read(&path).unwrap();
        let at = file
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("needle in file");
        file[at + needle.len() - 1] ^= 0x01;
        std::fs::write(&path, &file).unwrap();
        LogDb::open(&path)?.recover()
    }

    /// A byte changed on disk is caught at open, by redb's page checksums (verified at every
    /// open) or by the record's own seal; never served.
    #[test]
    fn a_changed_byte_in_the_file_is_refused() {
        // An entry's value, and the hard state record (term 2, vote 1, commit 40).
        let mut hard_state = 2u64.to_le_bytes().to_vec();
        hard_state.extend_from_slice(&1u64.to_le_bytes());
        hard_state.extend_from_slice(&40u64.to_le_bytes());
        for needle in [&b"payload-0017"[..], &hard_state] {
            match damage_and_recover(needle) {
                Err(StorageError::Corrupt(c)) => {
                    assert_eq!(c.kind, CorruptionKind::Checksum);
                    let message = c.to_string();
                    assert!(message.contains("remove this member"), "{message}");
                }
                other => panic!("expected a corruption, got {other:?}"),
            }
        }
    }

    /// Writes `value` as the raw stored bytes of a record, bypassing the codecs.
    fn put_raw(db: &LogDb, key: RawKey, value: &[u8]) {
        let tx = db.db.begin_write().unwrap();
        match key {
            RawKey::Log(index) => {
                tx.open_table(LOG).unwrap().insert(index, value).unwrap();
            }
            RawKey::Meta(key) => {
                tx.open_table(META).unwrap().insert(key, value).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    enum RawKey {
        Log(u64),
        Meta(&'static str),
    }

    #[test]
    fn a_record_whose_seal_does_not_match_is_refused_naming_it() {
        let mut db = LogDb::in_memory().unwrap();
        db.write(
            &[batch(1, (1..=20).map(|i| entry(i, 1, "v")).collect(), 10)],
            true,
        )
        .unwrap();
        let mut sealed = Vec::new();
        codec::encode_entry(&entry(17, 1, "v"), &mut sealed);
        sealed[14] ^= 0x40;
        put_raw(&db, RawKey::Log(17), &sealed);
        match db.recover() {
            Err(StorageError::Corrupt(c)) => {
                assert_eq!(c.location, DataLocation::LogEntry { index: 17 });
                assert_eq!(c.kind, CorruptionKind::Checksum);
                assert!(c.to_string().contains("log entry 17"), "{c}");
            }
            other => panic!("expected a corruption of entry 17, got {other:?}"),
        }
        // The same entry stored under another index fails its seal too.
        let mut moved = Vec::new();
        codec::encode_entry(&entry(16, 1, "v"), &mut moved);
        put_raw(&db, RawKey::Log(17), &moved);
        assert!(matches!(db.recover(), Err(StorageError::Corrupt(c))
            if c.location == DataLocation::LogEntry { index: 17 }));
        // A metadata record.
        let hs = codec::encode_hard_state(&HardState {
            term: 2,
            commit: 9,
            ..Default::default()
        });
        put_raw(&db, RawKey::Meta(meta_key::HARD_STATE), &hs);
        match db.recover() {
            Err(StorageError::Corrupt(c)) => {
                assert_eq!(c.location, DataLocation::Meta { key: "hard_state" });
                assert_eq!(c.kind, CorruptionKind::Checksum);
            }
            other => panic!("expected a corrupt hard state, got {other:?}"),
        }
    }

    #[test]
    fn a_commit_index_beyond_the_log_is_refused_before_raft_sees_it() {
        let mut db = LogDb::in_memory().unwrap();
        db.write(
            &[batch(1, vec![entry(1, 1, "a"), entry(2, 1, "b")], 2)],
            true,
        )
        .unwrap();
        db.write(&[batch(2, Vec::new(), 9)], true).unwrap();
        match db.recover() {
            Err(StorageError::Corrupt(c)) => {
                assert_eq!(c.kind, CorruptionKind::Inconsistent);
                assert!(c.detail.contains("commit index 9"), "{}", c.detail);
            }
            other => panic!("expected an inconsistency, got {other:?}"),
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
