//! [`NodeCalls::backup`]: a consistent copy of the node's state, streamed as a backup file.

use std::{
    io::{self, Read, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc;

use super::NodeCalls;
use crate::{
    backup::{BackupError, BackupHeader, BackupWriter},
    error::{ReadError, SnapshotError},
    state_machine::StateMachine,
    storage::{DbHandle, SnapshotReader},
};

/// Bytes of the backup file per piece of the stream.
pub const BACKUP_PIECE: usize = 256 * 1024;

/// Backups one node streams at once; more wait for one to finish.
pub(super) const MAX_BACKUPS: usize = 2;

/// Pieces in flight between the reader and the consumer: what a backup costs in memory beyond
/// one snapshot chunk (at most 2 MiB).
const PIECES_IN_FLIGHT: usize = 8;

/// A backup being streamed: its header at once, then the file's bytes in pieces.
#[derive(Debug)]
pub struct BackupStream {
    /// The backup's header (its index, term, size).
    pub header: BackupHeader,
    pieces: mpsc::Receiver<Result<Vec<u8>, BackupError>>,
}

impl BackupStream {
    /// The next piece of the file; `None` once it is complete (after its hash). An error ends
    /// the stream: what was received is not a backup.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, BackupError>> {
        self.pieces.recv().await
    }

    /// The file's size, from the header: prefix, header, snapshot and hash.
    pub fn file_size(&self) -> u64 {
        let header = postcard::to_allocvec(&self.header).map_or(0, |h| h.len() as u64);
        10 + header + self.header.size + 32
    }
}

impl<S: StateMachine> NodeCalls<S> {
    /// Streams a backup of this node's state. With `consistent`, a ReadIndex round first proves
    /// that this node has applied every write acknowledged before the call (needs a quorum),
    /// so the backup holds all of them; without, it is this node's own applied state (disaster
    /// recovery, when no quorum is left). The node takes a snapshot at or after that point
    /// (appends and commits go on meanwhile) and the stream reads it pinned, one chunk at a
    /// time: a large state is never in memory whole.
    pub async fn backup(&self, consistent: bool) -> Result<BackupStream, BackupError> {
        // Held until the stream is read to its end (or dropped).
        let permit = self
            .backups
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BackupError::NodeStopped("shutting down".into()))?;
        if consistent {
            self.linearizable_query(|_| ())
                .await
                .map_err(|e| read_failed(&e))?;
        }
        let status = self.status().await.map_err(|e| read_failed(&e))?;
        let point = status.applied_index;
        // A snapshot already being written may predate the point: ask until one covers it.
        let mut attempts = 0;
        loop {
            let index = self.trigger_snapshot().await.map_err(snapshot_failed)?;
            if index >= point {
                break;
            }
            attempts += 1;
            if attempts > 3 {
                return Err(BackupError::Snapshot(format!(
                    "snapshots stop at index {index}, before the backup's point {point}"
                )));
            }
        }
        let db = self.db.clone();
        let cluster_id = self.facts.membership().borrow().cluster_id();
        let node = self.node_id;
        let reader = tokio::task::spawn_blocking(move || pinned(&db, point))
            .await
            .map_err(|e| BackupError::Snapshot(format!("the snapshot reader failed: {e}")))??;
        let record = reader.record();
        let header = BackupHeader {
            index: record.index,
            term: record.term,
            cluster_id,
            voters: record.conf_state.voters.clone(),
            learners: record.conf_state.learners.clone(),
            source_node: node,
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            size: record.size,
        };
        let (tx, pieces) = mpsc::channel(PIECES_IN_FLIGHT);
        let streamed = header.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let failed = tx.clone();
            if let Err(e) = stream(reader, &streamed, tx) {
                let _ = failed.blocking_send(Err(e));
            }
        });
        Ok(BackupStream { header, pieces })
    }
}

fn read_failed(e: &ReadError) -> BackupError {
    match e {
        ReadError::Fatal(f) => BackupError::NodeStopped(f.to_string()),
        ReadError::ShuttingDown => BackupError::NodeStopped(e.to_string()),
        _ => BackupError::NoConsistentPoint(e.to_string()),
    }
}

fn snapshot_failed(e: SnapshotError) -> BackupError {
    match e {
        SnapshotError::Fatal(f) => BackupError::NodeStopped(f.to_string()),
        SnapshotError::ShuttingDown => BackupError::NodeStopped(e.to_string()),
        e => BackupError::Snapshot(e.to_string()),
    }
}

/// The current snapshot, pinned, if it covers `point`.
fn pinned(db: &DbHandle, point: u64) -> Result<SnapshotReader, BackupError> {
    match db.pinned_snapshot()? {
        Some(r) if r.record().index >= point => Ok(r),
        Some(r) => Err(BackupError::Snapshot(format!(
            "the current snapshot covers index {}, before the backup's point {point}",
            r.record().index
        ))),
        None => Err(BackupError::Snapshot("the node has no snapshot".into())),
    }
}

/// Writes the backup file into the channel, piece by piece; stops quietly when the consumer
/// went away.
fn stream(
    mut reader: SnapshotReader,
    header: &BackupHeader,
    tx: mpsc::Sender<Result<Vec<u8>, BackupError>>,
) -> Result<(), BackupError> {
    let sink = Pieces {
        tx,
        buf: Vec::with_capacity(BACKUP_PIECE),
    };
    let mut out = BackupWriter::new(sink, header).map_err(BackupError::Write)?;
    let mut chunk = vec![0u8; BACKUP_PIECE];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(n) => n,
            Err(e) => {
                return Err(match SnapshotReader::corruption(&e) {
                    Some(c) => BackupError::Storage(crate::error::StorageError::Corrupt(c.clone())),
                    None => BackupError::Read(e),
                });
            }
        };
        if n == 0 {
            break;
        }
        match out.write_all(&chunk[..n]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(BackupError::Write(e)),
        }
    }
    match out.finish() {
        Ok((_, _, mut sink)) => {
            sink.send_rest();
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(BackupError::Write(e)),
    }
}

/// An `io::Write` that sends what it is given down a channel in pieces of [`BACKUP_PIECE`].
struct Pieces {
    tx: mpsc::Sender<Result<Vec<u8>, BackupError>>,
    buf: Vec<u8>,
}

impl Pieces {
    fn send(&mut self) -> io::Result<()> {
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(BACKUP_PIECE));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Sends the last, partial piece (a consumer that went away needs no answer).
    fn send_rest(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.send();
        }
    }
}

impl Write for Pieces {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BACKUP_PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BACKUP_PIECE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
