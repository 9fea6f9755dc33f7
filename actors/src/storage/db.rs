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
        self, Identity, Member, PersistBatch, decode_identity, decode_index_term, decode_snapshot,
        encode_identity, encode_index_term, encode_members, encode_snapshot,
    },
    seal::{Tag, seal, unseal},
    tables::{FORMAT_VERSION, LOG, META, SNAPSHOT_CHUNKS, meta_key},
};
use crate::error::{Corruption, CorruptionKind, DataLocation, StorageError};

mod recover;

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
    /// The database file (empty for an in-memory database).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (or creates) the database file. A file that is not a redb database, is corrupt, or
    /// was written with another layout version is refused with a typed error; it is never reset.
    ///
    /// redb verifies the checksum of every page of the file at every open (not only after a
    /// crash), and durable commits use its two-phase commit: a damaged page is then an error,
    /// never a silent roll-back to the commit before it (with one-phase commit, redb takes a
    /// last commit that fails its checksums for one torn by a crash and drops it, which would
    /// forget votes and entries this node had acknowledged).
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        check_version_read_only(path)?;
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
    /// Only with the `testing` feature.
    #[cfg(feature = "testing")]
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
            put_founding(&mut meta, identity, conf_state, members)?;
        }
        tx.commit().io("commit")
    }

    /// Founds a restored node in one durable transaction: its identity, configuration and
    /// members, the fully written snapshot `record` made current, the log starting after it and
    /// the hard state. A crash before it leaves a log without identity (a new data dir); after
    /// it, the whole restore.
    pub fn bootstrap_restored(
        &mut self,
        identity: Identity,
        members: &[Member],
        record: &records::SnapshotRecord,
        hard_state: &raft::eraftpb::HardState,
    ) -> Result<(), StorageError> {
        let tx = self.begin_write(true)?;
        {
            let mut meta = tx.open_table(META).io("open meta")?;
            put_founding(&mut meta, identity, &record.conf_state, members)?;
            put_meta(
                &mut meta,
                meta_key::SNAPSHOT,
                &records::encode_snapshot(record),
            )?;
            put_meta(
                &mut meta,
                meta_key::HARD_STATE,
                &codec::encode_hard_state(hard_state),
            )?;
        }
        LogDb::purge_log(&tx, record.index, record.term)?;
        tx.commit().io("commit")?;
        self.last_index = record.index;
        Ok(())
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

/// Writes what a new node is founded on: its identity, configuration and members.
fn put_founding(
    meta: &mut redb::Table<&str, &[u8]>,
    identity: Identity,
    conf_state: &ConfState,
    members: &[Member],
) -> Result<(), StorageError> {
    put_meta(meta, meta_key::IDENTITY, &encode_identity(&identity))?;
    put_meta(
        meta,
        meta_key::CONF_STATE,
        &codec::encode_conf_state(conf_state),
    )?;
    put_meta(meta, meta_key::MEMBERS, &encode_members(members))
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
mod tests;

/// Refuses a file of another layout version before the writable open: that open would change
/// the file even when it refuses it (redb saves its allocator state when a database closes),
/// and a binary that cannot read a data dir must leave every byte of it as it was. Opens it
/// read-only (the file is opened without write access); a file it cannot read that way (new,
/// empty, needing a repair, not redb) is left to the writable open to create or refuse.
fn check_version_read_only(path: &Path) -> Result<(), StorageError> {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return Ok(());
    }
    let Ok(db) = redb::ReadOnlyDatabase::open(path) else {
        return Ok(());
    };
    let Ok(tx) = db.begin_read() else {
        return Ok(());
    };
    let Ok(meta) = tx.open_table(META) else {
        return Ok(());
    };
    let found = meta
        .get(meta_key::FORMAT_VERSION)
        .ok()
        .flatten()
        .and_then(|v| <[u8; 4]>::try_from(v.value()).ok())
        .map(u32::from_le_bytes);
    match found {
        Some(found) if found != FORMAT_VERSION => Err(StorageError::IncompatibleVersion {
            found,
            supported: FORMAT_VERSION,
        }),
        _ => Ok(()),
    }
}
