//! Snapshots in redb. A snapshot's bytes are stored as numbered chunks of at most
//! [`SNAPSHOT_CHUNK`] bytes under a storage id; the `snapshot` meta record names the current one.
//! Chunks are written in small non-durable transactions as they are produced (so a large
//! snapshot neither holds up log commits nor needs to fit in memory), and the snapshot becomes
//! current in one durable transaction that also deletes its predecessor and purges the log it
//! covers. A CRC-32 over the whole stream is checked whenever the bytes are read back.

use std::{io, path::PathBuf, sync::Arc};

use redb::{Database, ReadableDatabase};

use super::{
    codec::RecordError,
    db::{DbHandle, IoContext, LogDb, corrupt, put_meta},
    records::{SnapshotRecord, encode_snapshot},
    seal::{Tag, seal, unseal},
    tables::{META, SNAPSHOT_CHUNKS, meta_key},
};
use crate::error::{Corruption, CorruptionKind, DataLocation, StorageError};

/// The seal key of a chunk: its snapshot's storage id and its number.
fn chunk_key(id: u64, no: u32) -> [u8; 12] {
    let mut key = [0; 12];
    key[..8].copy_from_slice(&id.to_le_bytes());
    key[8..].copy_from_slice(&no.to_le_bytes());
    key
}

/// Size of one snapshot chunk (1 MiB): the unit of memory a snapshot costs in flight, of a redb
/// write while it is stored, and of a frame on the transfer stream.
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;

impl LogDb {
    /// A fresh storage id for a snapshot about to be written or received.
    pub fn new_snapshot_id(&mut self) -> u64 {
        let id = self.next_snapshot_id;
        self.next_snapshot_id += 1;
        id
    }

    /// Stores chunk `no` of snapshot `id` (not durable until the snapshot is committed).
    pub fn write_snapshot_chunk(
        &mut self,
        id: u64,
        no: u32,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        let tx = self.begin_write(false)?;
        {
            let mut chunks = tx.open_table(SNAPSHOT_CHUNKS).io("open snapshot chunks")?;
            let sealed = seal(Tag::Chunk, &chunk_key(id, no), bytes);
            chunks
                .insert((id, no), sealed.as_slice())
                .io("write snapshot chunk")?;
        }
        tx.commit().io("commit")
    }

    /// Deletes every stored chunk (what an interrupted restore into a new data dir left).
    pub fn clear_snapshot_chunks(&mut self) -> Result<(), StorageError> {
        let tx = self.begin_write(false)?;
        {
            let mut chunks = tx.open_table(SNAPSHOT_CHUNKS).io("open snapshot chunks")?;
            chunks.retain(|_, _| false).io("clear snapshot chunks")?;
        }
        tx.commit().io("commit")
    }

    /// Deletes the chunks of a snapshot that will not be committed.
    pub fn discard_snapshot(&mut self, id: u64) -> Result<(), StorageError> {
        let tx = self.begin_write(false)?;
        {
            let mut chunks = tx.open_table(SNAPSHOT_CHUNKS).io("open snapshot chunks")?;
            chunks
                .retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
                .io("discard snapshot")?;
        }
        tx.commit().io("commit")
    }

    /// Makes a fully written snapshot current, durably: deletes the previous one's chunks and,
    /// with `purge_to = Some((index, term))`, the log entries up to `index`. A snapshot no newer
    /// than the current one (a leader's was installed while this one was written) is discarded
    /// instead; returns whether it became current.
    pub fn commit_snapshot(
        &mut self,
        record: &SnapshotRecord,
        purge_to: Option<(u64, u64)>,
    ) -> Result<bool, StorageError> {
        let previous = self.current_snapshot()?;
        if previous.as_ref().is_some_and(|p| p.index >= record.index) {
            self.discard_snapshot(record.id)?;
            return Ok(false);
        }
        let tx = self.begin_write(true)?;
        {
            let mut meta = tx.open_table(META).io("open meta")?;
            put_meta(&mut meta, meta_key::SNAPSHOT, &encode_snapshot(record))?;
        }
        if let Some(old) = previous.filter(|old| old.id != record.id) {
            let mut chunks = tx.open_table(SNAPSHOT_CHUNKS).io("open snapshot chunks")?;
            chunks
                .retain_in((old.id, 0)..=(old.id, u32::MAX), |_, _| false)
                .io("delete old snapshot")?;
        }
        if let Some((index, term)) = purge_to {
            LogDb::purge_log(&tx, index, term)?;
        }
        tx.commit().io("commit")?;
        Ok(true)
    }

    /// Reads a stored snapshot back.
    pub fn snapshot_reader(&self, record: &SnapshotRecord) -> SnapshotReader {
        SnapshotReader::new(self.db.clone(), self.path.clone(), record.clone())
    }
}

impl DbHandle {
    /// The current snapshot, pinned: the reader holds one read transaction for as long as it
    /// lives, so the snapshot stays whole even when a newer one replaces it meanwhile (its pages
    /// are kept until the reader is dropped: the file grows by what is written meanwhile).
    /// `None` if the node has no snapshot.
    pub fn pinned_snapshot(&self) -> Result<Option<SnapshotReader>, StorageError> {
        let db = self.database()?;
        let tx = db.begin_read().io("begin read")?;
        let record = {
            let meta = tx.open_table(META).io("open meta")?;
            let value = meta.get(meta_key::SNAPSHOT).io("read meta")?;
            value
                .map(|v| {
                    super::db::decode_meta(
                        &self.path,
                        meta_key::SNAPSHOT,
                        v.value(),
                        super::records::decode_snapshot,
                    )
                })
                .transpose()?
        };
        Ok(record.map(|record| {
            let mut reader = SnapshotReader::new(db, self.path.clone(), record);
            reader.pinned = Some(tx);
            reader
        }))
    }

    /// Reads a stored snapshot back.
    pub fn snapshot_reader(&self, record: &SnapshotRecord) -> Result<SnapshotReader, StorageError> {
        Ok(SnapshotReader::new(
            self.database()?,
            self.path.clone(),
            record.clone(),
        ))
    }
}

/// Accumulates a snapshot's bytes into chunks, counting size and checksum. `emit` receives each
/// full chunk (and the last, partial one at [`SnapshotWriter::finish`]).
pub struct SnapshotWriter<F: FnMut(u32, Vec<u8>) -> io::Result<()>> {
    emit: F,
    buf: Vec<u8>,
    chunks: u32,
    size: u64,
    hasher: crc32fast::Hasher,
}

impl<F: FnMut(u32, Vec<u8>) -> io::Result<()>> SnapshotWriter<F> {
    /// A writer handing chunks to `emit`.
    pub fn new(emit: F) -> Self {
        Self {
            emit,
            buf: Vec::with_capacity(SNAPSHOT_CHUNK),
            chunks: 0,
            size: 0,
            hasher: crc32fast::Hasher::new(),
        }
    }

    fn emit_chunk(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK));
        (self.emit)(self.chunks, chunk)?;
        self.chunks += 1;
        Ok(())
    }

    /// Emits the last chunk; returns `(size, chunks, checksum)`.
    pub fn finish(mut self) -> io::Result<(u64, u32, u32)> {
        if !self.buf.is_empty() {
            self.emit_chunk()?;
        }
        Ok((self.size, self.chunks, self.hasher.finalize()))
    }
}

impl<F: FnMut(u32, Vec<u8>) -> io::Result<()>> io::Write for SnapshotWriter<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(SNAPSHOT_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.hasher.update(&data[..n]);
        self.size += n as u64;
        if self.buf.len() == SNAPSHOT_CHUNK {
            self.emit_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a stored snapshot chunk by chunk (one short read transaction each, so a slow reader does
/// not pin old pages), checking each chunk's seal as it is read, and fails at the end if the size
/// or checksum differ from the record. A damaged chunk is an `InvalidData` I/O error whose inner
/// error is the [`Corruption`] (see [`SnapshotReader::corruption`]).
pub struct SnapshotReader {
    db: Arc<Database>,
    /// A read transaction held for the whole read: the snapshot's chunks stay readable even if
    /// a newer snapshot replaces it meanwhile (see [`DbHandle::pinned_snapshot`]).
    pinned: Option<redb::ReadTransaction>,
    path: PathBuf,
    record: SnapshotRecord,
    next: u32,
    buf: Vec<u8>,
    pos: usize,
    read: u64,
    hasher: crc32fast::Hasher,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("record", &self.record)
            .field("next", &self.next)
            .finish()
    }
}

impl SnapshotReader {
    fn new(db: Arc<Database>, path: PathBuf, record: SnapshotRecord) -> Self {
        Self {
            db,
            pinned: None,
            path,
            record,
            next: 0,
            buf: Vec::new(),
            pos: 0,
            read: 0,
            hasher: crc32fast::Hasher::new(),
        }
    }

    /// The snapshot being read.
    pub fn record(&self) -> &SnapshotRecord {
        &self.record
    }

    /// The [`Corruption`] an error of this reader carries, if it found damaged data.
    pub fn corruption(e: &io::Error) -> Option<&Corruption> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<StorageError>())
            .and_then(|e| match e {
                StorageError::Corrupt(c) => Some(c),
                _ => None,
            })
    }

    /// The next stored chunk, `None` after the last one (once size and checksum matched).
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.next == self.record.chunks {
            let checksum = self.hasher.clone().finalize();
            if self.read != self.record.size || checksum != self.record.checksum {
                let detail = format!(
                    "{} bytes, crc {checksum:08x}; its record says {} bytes, crc {:08x}",
                    self.read, self.record.size, self.record.checksum
                );
                let c = Corruption::new(
                    &self.path,
                    DataLocation::Snapshot {
                        index: self.record.index,
                    },
                    CorruptionKind::Checksum,
                    detail,
                );
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    StorageError::Corrupt(c),
                ));
            }
            return Ok(None);
        }
        let chunk = {
            let fresh;
            let tx = match &self.pinned {
                Some(tx) => tx,
                None => {
                    fresh = self.db.begin_read().map_err(io::Error::other)?;
                    &fresh
                }
            };
            let chunks = tx.open_table(SNAPSHOT_CHUNKS).map_err(io::Error::other)?;
            let value = chunks
                .get((self.record.id, self.next))
                .map_err(io::Error::other)?;
            value.map(|v| v.value().to_vec())
        };
        let chunk = chunk.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "snapshot {} is missing chunk {}",
                    self.record.index, self.next
                ),
            )
        })?;
        let key = chunk_key(self.record.id, self.next);
        let mut chunk = chunk;
        let Some(len) = unseal(Tag::Chunk, &key, &chunk).map(<[u8]>::len) else {
            let location = DataLocation::SnapshotChunk {
                index: self.record.index,
                chunk: self.next,
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                corrupt(&self.path, location, RecordError::Checksum),
            ));
        };
        chunk.truncate(len);
        self.next += 1;
        self.read += chunk.len() as u64;
        self.hasher.update(&chunk);
        Ok(Some(chunk))
    }
}

impl io::Read for SnapshotReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.next_chunk()? {
                Some(chunk) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use raft::eraftpb::{ConfState, Entry, HardState};

    use super::*;
    use crate::storage::PersistBatch;

    fn write_snapshot(db: &mut LogDb, index: u64, data: &[u8]) -> SnapshotRecord {
        let id = db.new_snapshot_id();
        let mut chunks = Vec::new();
        let mut w = SnapshotWriter::new(|no, c| {
            chunks.push((no, c));
            Ok(())
        });
        w.write_all(data).unwrap();
        let (size, n, checksum) = w.finish().unwrap();
        for (no, c) in chunks {
            db.write_snapshot_chunk(id, no, &c).unwrap();
        }
        SnapshotRecord {
            id,
            index,
            term: 2,
            conf_state: ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            },
            size,
            chunks: n,
            checksum,
        }
    }

    fn entries(range: std::ops::RangeInclusive<u64>) -> PersistBatch {
        PersistBatch {
            entries: range
                .map(|index| Entry {
                    index,
                    term: 2,
                    ..Default::default()
                })
                .collect(),
            hard_state: Some(HardState {
                term: 2,
                commit: 10,
                ..Default::default()
            }),
            must_sync: true,
            ..Default::default()
        }
    }

    fn read_all(db: &LogDb, r: &SnapshotRecord) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        db.snapshot_reader(r).read_to_end(&mut out)?;
        Ok(out)
    }

    fn on_both_backends(check: fn(LogDb)) {
        check(LogDb::in_memory().unwrap());
        let dir = tempfile::tempdir().unwrap();
        check(LogDb::open(&dir.path().join("raft.redb")).unwrap());
    }

    #[test]
    fn a_multi_chunk_snapshot_round_trips_and_compacts_the_log() {
        on_both_backends(multi_chunk_round_trip);
    }

    #[test]
    fn an_installed_snapshot_replaces_the_whole_log_including_a_divergent_tail() {
        on_both_backends(install_replaces_log);
    }

    fn multi_chunk_round_trip(mut db: LogDb) {
        db.write(&[entries(1..=20)], true).unwrap();
        let data: Vec<u8> = (0..(SNAPSHOT_CHUNK * 2 + 77))
            .map(|i| (i % 251) as u8)
            .collect();
        let record = write_snapshot(&mut db, 15, &data);
        assert_eq!(record.chunks, 3);
        db.commit_snapshot(&record, Some((10, 2))).unwrap();
        assert_eq!(read_all(&db, &record).unwrap(), data);
        let r = db.recover().unwrap();
        assert_eq!(r.snapshot, Some(record.clone()));
        assert_eq!(r.log_start, (10, 2));
        assert_eq!(r.entries.first().map(|e| e.index), Some(11));
        assert_eq!(r.entries.last().map(|e| e.index), Some(20));

        // A newer snapshot replaces the old one's chunks.
        let newer = write_snapshot(&mut db, 20, b"newer");
        db.commit_snapshot(&newer, Some((18, 2))).unwrap();
        assert!(read_all(&db, &record).is_err(), "old chunks are gone");
        assert_eq!(read_all(&db, &newer).unwrap(), b"newer");
        assert_eq!(db.recover().unwrap().log_start, (18, 2));
    }

    fn install_replaces_log(mut db: LogDb) {
        db.write(&[entries(1..=30)], true).unwrap();
        let record = write_snapshot(&mut db, 25, b"leader state");
        let install = PersistBatch {
            snapshot: Some(record.clone()),
            hard_state: Some(HardState {
                term: 3,
                commit: 25,
                ..Default::default()
            }),
            must_sync: true,
            ..Default::default()
        };
        db.write(&[install, entries(26..=27)], true).unwrap();
        let r = db.recover().unwrap();
        assert_eq!(r.log_start, (25, 2));
        assert_eq!(
            r.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![26, 27]
        );
        assert_eq!(r.snapshot, Some(record));
        assert_eq!(db.last_index(), 27);
    }

    /// Found by the store-model property test: after a leader's snapshot replaced the whole log
    /// and the database was reopened, `last_index` fell back to 0 instead of the snapshot index.
    #[test]
    fn regression_last_index_after_install_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut db = LogDb::open(&path).unwrap();
        let record = write_snapshot(&mut db, 7, b"state");
        let install = PersistBatch {
            snapshot: Some(record),
            must_sync: true,
            ..Default::default()
        };
        db.write(&[install], true).unwrap();
        assert_eq!(db.last_index(), 7);
        drop(db);
        assert_eq!(LogDb::open(&path).unwrap().last_index(), 7);
    }

    #[test]
    fn corruption_and_missing_chunks_are_detected() {
        let mut db = LogDb::in_memory().unwrap();
        let data = vec![9u8; SNAPSHOT_CHUNK + 10];
        let mut record = write_snapshot(&mut db, 5, &data);
        let good = record.clone();
        record.checksum ^= 1;
        assert_eq!(
            read_all(&db, &record).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        db.discard_snapshot(good.id).unwrap();
        assert_eq!(
            read_all(&db, &good).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn a_chunk_whose_seal_does_not_match_is_refused_naming_it() {
        let mut db = LogDb::in_memory().unwrap();
        let mut data = vec![7u8; SNAPSHOT_CHUNK];
        data.extend_from_slice(b"the second chunk's bytes");
        let record = write_snapshot(&mut db, 12, &data);
        db.commit_snapshot(&record, None).unwrap();
        // The second chunk's stored bytes change after they were written.
        {
            let tx = db.db.begin_write().unwrap();
            let mut chunks = tx.open_table(SNAPSHOT_CHUNKS).unwrap();
            let mut stored = redb::ReadableTable::get(&chunks, (record.id, 1))
                .unwrap()
                .unwrap()
                .value()
                .to_vec();
            stored[3] ^= 0x20;
            chunks.insert((record.id, 1), stored.as_slice()).unwrap();
            drop(chunks);
            tx.commit().unwrap();
        }
        let err = read_all(&db, &record).unwrap_err();
        let c = SnapshotReader::corruption(&err).expect("a typed corruption");
        assert_eq!(
            c.location,
            DataLocation::SnapshotChunk {
                index: 12,
                chunk: 1
            }
        );
        assert_eq!(c.kind, CorruptionKind::Checksum);
    }

    #[test]
    fn uncommitted_snapshot_chunks_are_dropped_at_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut db = LogDb::open(&path).unwrap();
        let committed = write_snapshot(&mut db, 3, b"kept");
        db.commit_snapshot(&committed, None).unwrap();
        let abandoned = write_snapshot(&mut db, 9, b"half written");
        db.flush().unwrap();
        drop(db);
        let mut db = LogDb::open(&path).unwrap();
        assert_eq!(read_all(&db, &committed).unwrap(), b"kept");
        assert!(read_all(&db, &abandoned).is_err());
        assert!(db.new_snapshot_id() > committed.id);
    }
}
