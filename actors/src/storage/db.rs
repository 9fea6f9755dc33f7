//! [`LogDb`]: the synchronous redb store behind the StorageActor.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use iroh::{EndpointAddr, EndpointId};
use raft::eraftpb::{ConfState, Entry, HardState};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, backends::InMemoryBackend};
use serde::{Deserialize, Serialize};

use super::{
    codec,
    tables::{FORMAT_VERSION, LOG, META, meta_key},
};
use crate::{error::StorageError, types::NodeId};

/// Who a data dir belongs to: written once at bootstrap, checked at every start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The node's Raft id.
    pub node_id: NodeId,
    /// The node's iroh endpoint id.
    pub endpoint_id: EndpointId,
}

/// A cluster member: Raft id and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Raft id.
    pub node_id: NodeId,
    /// Endpoint id and last known direct addresses.
    pub addr: EndpointAddr,
}

#[derive(Serialize, Deserialize)]
struct MemberRecord {
    node_id: NodeId,
    endpoint_id: [u8; 32],
    addrs: Vec<SocketAddr>,
}

#[derive(Serialize, Deserialize)]
struct IdentityRecord {
    node_id: NodeId,
    endpoint_id: [u8; 32],
}

/// What one Ready round asks to make durable.
#[derive(Debug, Default)]
pub struct PersistBatch {
    /// The Ready number, confirmed back to the RaftActor once durable.
    pub number: u64,
    /// New entries; any stored entry at or after the first one's index is replaced.
    pub entries: Vec<Entry>,
    /// New hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// New conf state, if it changed.
    pub conf_state: Option<ConfState>,
    /// True when Raft needs this batch on disk before acting on it (entries, term or vote
    /// changed); false for commit-index-only updates.
    pub must_sync: bool,
}

/// Everything a restarting node needs from its data dir.
#[derive(Debug, Default)]
pub struct Recovered {
    /// `None` for a fresh data dir.
    pub identity: Option<Identity>,
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// Voters and learners.
    pub conf_state: ConfState,
    /// Members with their endpoint addresses.
    pub members: Vec<Member>,
    /// The whole stored log, in index order.
    pub entries: Vec<Entry>,
}

/// The redb database of one node.
#[derive(Debug)]
pub struct LogDb {
    db: Arc<Database>,
    path: PathBuf,
    last_index: u64,
    scratch: Vec<u8>,
}

/// A shareable reference to an open database: what a restarted StorageActor reopens its
/// [`LogDb`] from (a crash of the actor does not close the file). [`DbHandle::close`] lets go
/// of it at shutdown, so the file is closed once the StorageActor drops its own `LogDb`.
#[derive(Debug, Clone)]
pub struct DbHandle {
    // The mutex guards a slot that is read at (re)start and emptied at shutdown, never on a
    // hot path.
    slot: Arc<Mutex<Option<Arc<Database>>>>,
    path: PathBuf,
}

impl DbHandle {
    /// Lets go of the database; later [`LogDb::from_handle`] calls fail with
    /// [`StorageError::Closed`].
    pub fn close(&self) {
        if let Ok(mut slot) = self.slot.lock() {
            slot.take();
        }
    }
}

impl LogDb {
    /// Opens (or creates) the database file. A file that is not a redb database, is corrupt, or
    /// was written with another layout version is refused with a typed error; it is never reset.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let db = Database::create(path).map_err(|e| match e {
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
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .map_err(|e| StorageError::Open {
                path: PathBuf::new(),
                source: Box::new(e),
            })?;
        Self::init(db, PathBuf::new())
    }

    /// A database over any redb backend (fault injection in tests, simulated disks). `label`
    /// names it in errors.
    pub fn with_backend(
        backend: impl redb::StorageBackend,
        label: PathBuf,
    ) -> Result<Self, StorageError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|e| StorageError::Open {
                path: label.clone(),
                source: Box::new(e),
            })?;
        Self::init(db, label)
    }

    fn init(db: Database, path: PathBuf) -> Result<Self, StorageError> {
        let mut this = Self {
            db: Arc::new(db),
            path,
            last_index: 0,
            scratch: Vec::new(),
        };
        let tx = this
            .db
            .begin_write()
            .map_err(|e| StorageError::io("begin", e))?;
        {
            let mut meta = tx
                .open_table(META)
                .map_err(|e| StorageError::io("open meta", e))?;
            let found = meta
                .get(meta_key::FORMAT_VERSION)
                .map_err(|e| StorageError::io("read version", e))?
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
                    .map_err(|e| StorageError::io("write version", e))?;
                }
            }
            tx.open_table(LOG)
                .map_err(|e| StorageError::io("open log", e))?;
        }
        tx.commit().map_err(|e| StorageError::io("commit", e))?;
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
        let db = handle
            .slot
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .ok_or(StorageError::Closed)?;
        let mut this = Self {
            db,
            path: handle.path,
            last_index: 0,
            scratch: Vec::new(),
        };
        this.last_index = this.read_last_index()?;
        Ok(this)
    }

    fn corrupt(&self, what: &str) -> StorageError {
        StorageError::Corrupt {
            path: self.path.clone(),
            reason: format!("{what} does not decode"),
        }
    }

    fn read_last_index(&self) -> Result<u64, StorageError> {
        let tx = self.begin_read()?;
        let log = tx
            .open_table(LOG)
            .map_err(|e| StorageError::io("open log", e))?;
        Ok(log
            .last()
            .map_err(|e| StorageError::io("read log", e))?
            .map(|(k, _)| k.value())
            .unwrap_or(0))
    }

    /// Index of the last stored entry (0 when the log is empty).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The identity recorded at bootstrap, if any.
    pub fn identity(&self) -> Result<Option<Identity>, StorageError> {
        let tx = self.begin_read()?;
        match meta_value(&tx, meta_key::IDENTITY)? {
            Some(bytes) => self.decode_identity(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StorageError> {
        self.db
            .begin_read()
            .map_err(|e| StorageError::io("begin read", e))
    }

    fn decode_identity(&self, bytes: &[u8]) -> Result<Identity, StorageError> {
        let r: IdentityRecord =
            postcard::from_bytes(bytes).map_err(|_| self.corrupt("identity"))?;
        Ok(Identity {
            node_id: r.node_id,
            endpoint_id: EndpointId::from_bytes(&r.endpoint_id)
                .map_err(|_| self.corrupt("identity key"))?,
        })
    }

    /// Reads everything a restarting node needs.
    pub fn recover(&self) -> Result<Recovered, StorageError> {
        let tx = self.begin_read()?;
        let get = |key: &str| meta_value(&tx, key);
        let mut out = Recovered::default();
        if let Some(bytes) = get(meta_key::IDENTITY)? {
            out.identity = Some(self.decode_identity(&bytes)?);
        }
        if let Some(bytes) = get(meta_key::HARD_STATE)? {
            out.hard_state =
                codec::decode_hard_state(&bytes).map_err(|_| self.corrupt("hard state"))?;
        }
        if let Some(bytes) = get(meta_key::CONF_STATE)? {
            out.conf_state =
                codec::decode_conf_state(&bytes).map_err(|_| self.corrupt("conf state"))?;
        }
        if let Some(bytes) = get(meta_key::MEMBERS)? {
            out.members = decode_members(&bytes).ok_or_else(|| self.corrupt("members"))?;
        }
        let log = tx
            .open_table(LOG)
            .map_err(|e| StorageError::io("open log", e))?;
        let mut expected = None;
        for row in log.iter().map_err(|e| StorageError::io("read log", e))? {
            let (k, v) = row.map_err(|e| StorageError::io("read log", e))?;
            let index = k.value();
            if expected.is_some_and(|x| x != index) {
                return Err(StorageError::Corrupt {
                    path: self.path.clone(),
                    reason: format!("log has a gap before index {index}"),
                });
            }
            expected = Some(index + 1);
            let entry =
                codec::decode_entry(index, v.value()).map_err(|reason| StorageError::Corrupt {
                    path: self.path.clone(),
                    reason,
                })?;
            out.entries.push(entry);
        }
        Ok(out)
    }

    /// Records identity, initial conf state and members of a new node, durably.
    pub fn bootstrap(
        &mut self,
        identity: Identity,
        conf_state: &ConfState,
        members: &[Member],
    ) -> Result<(), StorageError> {
        let mut tx = self
            .db
            .begin_write()
            .map_err(|e| StorageError::io("begin", e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| StorageError::io("set durability", e))?;
        {
            let mut meta = tx
                .open_table(META)
                .map_err(|e| StorageError::io("open meta", e))?;
            let record = IdentityRecord {
                node_id: identity.node_id,
                endpoint_id: *identity.endpoint_id.as_bytes(),
            };
            let bytes = postcard::to_allocvec(&record).expect("plain record");
            meta.insert(meta_key::IDENTITY, bytes.as_slice())
                .map_err(|e| StorageError::io("write identity", e))?;
            meta.insert(
                meta_key::CONF_STATE,
                codec::encode_conf_state(conf_state).as_slice(),
            )
            .map_err(|e| StorageError::io("write conf state", e))?;
            meta.insert(meta_key::MEMBERS, encode_members(members).as_slice())
                .map_err(|e| StorageError::io("write members", e))?;
        }
        tx.commit().map_err(|e| StorageError::io("commit", e))
    }

    /// Writes a group of batches in one transaction, in order. `durable` selects an fsynced
    /// commit; otherwise the data reaches redb but only becomes durable with a later durable
    /// commit (see [`Self::flush`]).
    pub fn write(&mut self, batches: &[PersistBatch], durable: bool) -> Result<(), StorageError> {
        let mut tx = self
            .db
            .begin_write()
            .map_err(|e| StorageError::io("begin", e))?;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        tx.set_durability(durability)
            .map_err(|e| StorageError::io("set durability", e))?;
        let mut last_index = self.last_index;
        {
            let mut log = tx
                .open_table(LOG)
                .map_err(|e| StorageError::io("open log", e))?;
            let mut meta = tx
                .open_table(META)
                .map_err(|e| StorageError::io("open meta", e))?;
            for batch in batches {
                if let Some(first) = batch.entries.first() {
                    if first.index <= last_index {
                        // A new leader replaced our uncommitted tail: drop it before appending.
                        log.retain_in(first.index.., |_, _| false)
                            .map_err(|e| StorageError::io("truncate log", e))?;
                    }
                    for e in &batch.entries {
                        codec::encode_entry(e, &mut self.scratch);
                        log.insert(e.index, self.scratch.as_slice())
                            .map_err(|e| StorageError::io("append", e))?;
                    }
                    last_index = batch.entries.last().map_or(last_index, |e| e.index);
                }
                if let Some(hs) = &batch.hard_state {
                    meta.insert(
                        meta_key::HARD_STATE,
                        codec::encode_hard_state(hs).as_slice(),
                    )
                    .map_err(|e| StorageError::io("write hard state", e))?;
                }
                if let Some(cs) = &batch.conf_state {
                    meta.insert(
                        meta_key::CONF_STATE,
                        codec::encode_conf_state(cs).as_slice(),
                    )
                    .map_err(|e| StorageError::io("write conf state", e))?;
                }
            }
        }
        tx.commit().map_err(|e| StorageError::io("commit", e))?;
        self.last_index = last_index;
        Ok(())
    }

    /// Makes every earlier non-durable commit durable (an empty fsynced commit).
    pub fn flush(&mut self) -> Result<(), StorageError> {
        self.write(&[], true)
    }
}

fn meta_value(tx: &redb::ReadTransaction, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
    let meta = tx
        .open_table(META)
        .map_err(|e| StorageError::io("open meta", e))?;
    let value = meta
        .get(key)
        .map_err(|e| StorageError::io("read meta", e))?;
    Ok(value.map(|v| v.value().to_vec()))
}

fn encode_members(members: &[Member]) -> Vec<u8> {
    let records: Vec<MemberRecord> = members
        .iter()
        .map(|m| MemberRecord {
            node_id: m.node_id,
            endpoint_id: *m.addr.id.as_bytes(),
            addrs: m.addr.ip_addrs().copied().collect(),
        })
        .collect();
    postcard::to_allocvec(&records).expect("plain records")
}

fn decode_members(bytes: &[u8]) -> Option<Vec<Member>> {
    let records: Vec<MemberRecord> = postcard::from_bytes(bytes).ok()?;
    records
        .into_iter()
        .map(|r| {
            let id = EndpointId::from_bytes(&r.endpoint_id).ok()?;
            let addr = r
                .addrs
                .into_iter()
                .fold(EndpointAddr::new(id), |a, ip| a.with_ip_addr(ip));
            Some(Member {
                node_id: r.node_id,
                addr,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
            conf_state: None,
            must_sync: true,
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
    fn foreign_file_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        assert!(LogDb::open(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
    }
}
