//! Backups: a consistent copy of a node's state in one self-checking file, and a new cluster's
//! data dir restored from one.
//!
//! # File format (version [`BACKUP_FORMAT_VERSION`])
//!
//! ```text
//! "IRBK" | version: u16 LE | header length: u32 LE | header (postcard BackupHeader)
//!        | snapshot: `header.size` bytes, exactly as the node stores a snapshot (the snapshot
//!          header — membership, applied hash — then the state machine's bytes)
//!        | blake3 of everything before it: 32 bytes
//! ```
//!
//! A reader checks the magic and the version before it looks at anything else, counts the
//! snapshot's bytes against the header's size (a short file is [`BackupError::Truncated`], a
//! longer one [`BackupError::TrailingBytes`]) and compares the hash at the end
//! ([`BackupError::HashMismatch`]). Nothing is written from a backup that has not been read
//! through once and verified ([`restore_into`] reads it twice: verify, then write, checking the
//! hash again on the way).

use std::{
    fs::File,
    io::{self, BufReader, Read, Write},
    path::{Path, PathBuf},
};

use raft::eraftpb::ConfState;
use serde::{Deserialize, Serialize};

use crate::{
    error::StorageError,
    membership::{Membership, SnapshotHeader, read_snapshot_header, write_snapshot_header},
    storage::{Identity, LogDb, Member, SnapshotRecord, SnapshotWriter},
    types::NodeId,
};

/// The first four bytes of every backup file.
pub const BACKUP_MAGIC: [u8; 4] = *b"IRBK";

/// The backup format this build writes and reads.
pub const BACKUP_FORMAT_VERSION: u16 = 1;

/// The file name extension of backups (`.irbk`).
pub const BACKUP_EXTENSION: &str = "irbk";

/// Largest header a reader accepts (it holds a handful of numbers and the voter lists).
const MAX_HEADER: u32 = 1024 * 1024;

/// Length of the hash trailer.
const HASH_LEN: usize = 32;

/// Bytes of the fixed prefix: magic, version, header length.
const PREFIX_LEN: usize = 10;

/// What a backup says about itself, before the snapshot's bytes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BackupHeader {
    /// The log index the snapshot covers (every entry up to it is in the state).
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// The cluster it was taken from.
    pub cluster_id: [u8; 16],
    /// Voters at that index.
    pub voters: Vec<NodeId>,
    /// Learners at that index.
    pub learners: Vec<NodeId>,
    /// The member that served it.
    pub source_node: NodeId,
    /// When it was taken (milliseconds since the Unix epoch, the serving node's clock).
    pub created_unix_ms: u64,
    /// Bytes of the snapshot that follow.
    pub size: u64,
}

/// A verified backup's description (what `iroh-raft snapshot status` prints).
#[derive(Debug, Clone, PartialEq)]
pub struct BackupInfo {
    /// The file's own header.
    pub header: BackupHeader,
    /// The format version it was written in.
    pub format_version: u16,
    /// The members at the snapshot's index (from the snapshot's own header).
    pub members: Vec<Member>,
    /// The running hash of the applied entries at the index, if the node had it.
    pub applied_hash: Option<[u8; 32]>,
    /// Bytes of the state machine's own state.
    pub state_size: u64,
    /// The whole file's size.
    pub file_size: u64,
    /// The blake3 hash the file ends with (verified).
    pub hash: [u8; 32],
}

/// Why a backup could not be taken, read or restored. Every variant that concerns a file names
/// what is wrong with it; nothing was written when a restore fails with one of them.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file is empty.
    #[error("the backup is empty (0 bytes)")]
    Empty,
    /// The file does not start with the backup magic.
    #[error("not an iroh-raft backup: it starts with {found:02x?}, not \"IRBK\"")]
    NotABackup {
        /// Its first bytes.
        found: Vec<u8>,
    },
    /// Written in a format this build does not read.
    #[error("backup format version {found} is not supported: this build reads version {supported}")]
    UnsupportedVersion {
        /// The file's version.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The file ends before its header says it does.
    #[error("the backup is truncated: it ends after {read} bytes, its header promises {expected}")]
    Truncated {
        /// Bytes read.
        read: u64,
        /// Bytes the file should have.
        expected: u64,
    },
    /// Bytes follow the hash.
    #[error("the backup has bytes after its end ({expected} bytes): not a file we wrote whole")]
    TrailingBytes {
        /// Where the file should end.
        expected: u64,
    },
    /// The content does not match the hash it ends with: damaged.
    #[error(
        "the backup is damaged: its content hashes to {computed}, its trailer says {stored} \
         (blake3)"
    )]
    HashMismatch {
        /// The hash the file ends with.
        stored: String,
        /// The hash of what was read.
        computed: String,
    },
    /// The header (or the snapshot's own header) does not decode.
    #[error("the backup's {what} does not decode: {reason}")]
    Malformed {
        /// Which part.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A restore's data dir is not empty.
    #[error("{path} is not empty: a restore writes only into an empty or missing data dir")]
    NotEmpty {
        /// The data dir.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{operation} {path}: {source}")]
    File {
        /// What was done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Reading the backup's bytes failed (not a format problem: the medium or the network).
    #[error("reading the backup: {0}")]
    Read(#[source] io::Error),
    /// Writing the backup's bytes out failed.
    #[error("writing the backup: {0}")]
    Write(#[source] io::Error),
    /// The node could not confirm the point to back up: no quorum, or no leader.
    #[error("the cluster could not confirm a consistent point: {0}")]
    NoConsistentPoint(String),
    /// The node's storage failed while the snapshot was read or the data dir written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The node could not take the snapshot.
    #[error("taking the snapshot failed: {0}")]
    Snapshot(String),
    /// The node stopped or shut down meanwhile.
    #[error("the node stopped: {0}")]
    NodeStopped(String),
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// Writes a backup file: the prefix and header at once, the snapshot's bytes through
/// [`Write`], the hash at [`BackupWriter::finish`]. It counts the snapshot's bytes: finishing
/// with fewer or more than the header's size is an error (the file would not verify).
pub struct BackupWriter<W: Write> {
    out: W,
    hasher: blake3::Hasher,
    remaining: u64,
    written: u64,
}

impl<W: Write> BackupWriter<W> {
    /// Starts a backup of `header.size` snapshot bytes.
    pub fn new(mut out: W, header: &BackupHeader) -> io::Result<Self> {
        let encoded = postcard::to_allocvec(header).map_err(io::Error::other)?;
        let mut prefix = Vec::with_capacity(PREFIX_LEN + encoded.len());
        prefix.extend_from_slice(&BACKUP_MAGIC);
        prefix.extend_from_slice(&BACKUP_FORMAT_VERSION.to_le_bytes());
        prefix.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        prefix.extend_from_slice(&encoded);
        out.write_all(&prefix)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&prefix);
        Ok(Self {
            out,
            hasher,
            remaining: header.size,
            written: prefix.len() as u64,
        })
    }

    /// Writes the hash; returns it and the file's size.
    pub fn finish(mut self) -> io::Result<([u8; 32], u64, W)> {
        if self.remaining != 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the snapshot ended {} bytes early", self.remaining),
            ));
        }
        let hash = *self.hasher.finalize().as_bytes();
        self.out.write_all(&hash)?;
        self.out.flush()?;
        Ok((hash, self.written + HASH_LEN as u64, self.out))
    }
}

impl<W: Write> Write for BackupWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.len() as u64 > self.remaining {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the snapshot is longer than its header says",
            ));
        }
        let n = self.out.write(data)?;
        self.hasher.update(&data[..n]);
        self.remaining -= n as u64;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads a backup: [`BackupReader::open`] checks the prefix and header, [`Read`] yields the
/// snapshot's bytes (hashing them), [`BackupReader::finish`] checks the hash and that the file
/// ends there. Bytes read before `finish` are not verified yet: use them only for what can be
/// undone (see [`restore_into`]).
pub struct BackupReader<R: Read> {
    input: R,
    header: BackupHeader,
    hasher: blake3::Hasher,
    remaining: u64,
    read: u64,
}

impl<R: Read> std::fmt::Debug for BackupReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupReader")
            .field("header", &self.header)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

/// Reads as much of `buf` as the input has; returns how much that was.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> BackupReader<R> {
    /// Checks the magic, the version and the header.
    pub fn open(mut input: R) -> Result<Self, BackupError> {
        let mut prefix = [0u8; PREFIX_LEN];
        let got = read_full(&mut input, &mut prefix).map_err(BackupError::Read)?;
        if got == 0 {
            return Err(BackupError::Empty);
        }
        let magic_len = got.min(4);
        if prefix[..magic_len] != BACKUP_MAGIC[..magic_len] || got < 4 {
            return Err(BackupError::NotABackup {
                found: prefix[..magic_len].to_vec(),
            });
        }
        if got < 6 {
            return Err(BackupError::Truncated {
                read: got as u64,
                expected: PREFIX_LEN as u64,
            });
        }
        let version = u16::from_le_bytes([prefix[4], prefix[5]]);
        if version != BACKUP_FORMAT_VERSION {
            return Err(BackupError::UnsupportedVersion {
                found: version,
                supported: BACKUP_FORMAT_VERSION,
            });
        }
        if got < PREFIX_LEN {
            return Err(BackupError::Truncated {
                read: got as u64,
                expected: PREFIX_LEN as u64,
            });
        }
        let header_len = u32::from_le_bytes([prefix[6], prefix[7], prefix[8], prefix[9]]);
        if header_len > MAX_HEADER {
            return Err(BackupError::Malformed {
                what: "header",
                reason: format!("its length {header_len} is beyond {MAX_HEADER} bytes"),
            });
        }
        let mut encoded = vec![0u8; header_len as usize];
        let got_header = read_full(&mut input, &mut encoded).map_err(BackupError::Read)?;
        if got_header < encoded.len() {
            return Err(BackupError::Truncated {
                read: (PREFIX_LEN + got_header) as u64,
                expected: (PREFIX_LEN + encoded.len()) as u64,
            });
        }
        let header: BackupHeader =
            postcard::from_bytes(&encoded).map_err(|e| BackupError::Malformed {
                what: "header",
                reason: e.to_string(),
            })?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&prefix);
        hasher.update(&encoded);
        Ok(Self {
            input,
            remaining: header.size,
            header,
            hasher,
            read: (PREFIX_LEN + encoded.len()) as u64,
        })
    }

    /// The file's header (not verified until [`BackupReader::finish`]).
    pub fn header(&self) -> &BackupHeader {
        &self.header
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The whole file's size, as its header says.
    pub fn expected_len(&self) -> u64 {
        self.read + self.remaining + HASH_LEN as u64
    }

    /// Reads what is left of the snapshot, checks the hash and that nothing follows it.
    pub fn finish(mut self) -> Result<([u8; 32], u64), BackupError> {
        let mut sink = [0u8; 64 * 1024];
        while self.remaining > 0 {
            match self.read(&mut sink) {
                // Not before `remaining` is 0: a short input is an error of `read`.
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(self.classify(e)),
            }
        }
        let expected = self.expected_len();
        let mut stored = [0u8; HASH_LEN];
        let got = read_full(&mut self.input, &mut stored).map_err(BackupError::Read)?;
        if got < HASH_LEN {
            return Err(BackupError::Truncated {
                read: self.read + got as u64,
                expected,
            });
        }
        let mut extra = [0u8; 1];
        if read_full(&mut self.input, &mut extra).map_err(BackupError::Read)? != 0 {
            return Err(BackupError::TrailingBytes { expected });
        }
        let computed = *self.hasher.finalize().as_bytes();
        if computed != stored {
            return Err(BackupError::HashMismatch {
                stored: hex(&stored),
                computed: hex(&computed),
            });
        }
        Ok((computed, expected))
    }

    /// Turns an error of [`Read`] on this reader into the backup error it stands for.
    pub fn classify(&self, e: io::Error) -> BackupError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            BackupError::Truncated {
                read: self.read,
                expected: self.expected_len(),
            }
        } else {
            BackupError::Read(e)
        }
    }
}

impl<R: Read> Read for BackupReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = out
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = loop {
            match self.input.read(&mut out[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 && want > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backup ends before its snapshot does",
            ));
        }
        self.hasher.update(&out[..n]);
        self.remaining -= n as u64;
        self.read += n as u64;
        Ok(n)
    }
}

/// Reads a whole backup and verifies it; `progress` hears the bytes read so far and the file's
/// size. Nothing is trusted until the hash at the end matched.
pub fn verify(
    input: impl Read,
    mut progress: impl FnMut(u64, u64),
) -> Result<BackupInfo, BackupError> {
    let mut reader = BackupReader::open(input)?;
    let snapshot = read_snapshot_header(&mut reader).map_err(|e| match reader.classify(e) {
        BackupError::Read(e) if e.kind() == io::ErrorKind::InvalidData => BackupError::Malformed {
            what: "snapshot header",
            reason: e.to_string(),
        },
        other => other,
    })?;
    let state_start = reader.bytes_read();
    let total = reader.expected_len();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => progress(reader.bytes_read(), total),
            Err(e) => return Err(reader.classify(e)),
        }
    }
    let body_end = reader.bytes_read();
    let header = reader.header().clone();
    let (hash, file_size) = reader.finish()?;
    progress(file_size, file_size);
    Ok(BackupInfo {
        header,
        format_version: BACKUP_FORMAT_VERSION,
        members: snapshot.membership.members(),
        applied_hash: snapshot.applied_hash,
        state_size: body_end - state_start,
        file_size,
        hash,
    })
}

/// Opens and verifies the backup file at `path`.
pub fn verify_file(path: &Path, progress: impl FnMut(u64, u64)) -> Result<BackupInfo, BackupError> {
    let file = open_file(path)?;
    verify(BufReader::with_capacity(256 * 1024, file), progress)
}

fn open_file(path: &Path) -> Result<File, BackupError> {
    File::open(path).map_err(|source| BackupError::File {
        operation: "opening",
        path: path.to_path_buf(),
        source,
    })
}

/// The id of a cluster restored from the backup whose hash is `backup_hash`, with `members`:
/// every member restored from the same file with the same member list computes the same id,
/// and it differs from the id of the cluster the backup was taken from (so that cluster's
/// tickets are not honoured by the new one).
pub fn restored_cluster_id(backup_hash: &[u8; 32], members: &[Member]) -> [u8; 16] {
    crate::membership::derive_cluster_id(
        &[b"iroh-raft restored cluster id v1", backup_hash],
        members,
    )
}

/// Writes a new node's data dir from a backup: verifies the whole file first (nothing is
/// written if it does not verify), then reads it again into a snapshot at the backup's index
/// whose header holds the new cluster's membership (`members`, all voters, cluster id from
/// [`restored_cluster_id`]), checking the hash again before the snapshot is committed. The
/// state machine's bytes are copied as they are; the running hash of applied entries
/// continues from the backup's. `db` must be new (no identity). `verified` is what a
/// [`verify_file`] of the same file returned just before (the first pass is then skipped; the
/// second still checks the hash).
pub fn restore_into(
    db: &mut LogDb,
    identity: Identity,
    members: &[Member],
    (path, verified): (&Path, Option<BackupInfo>),
    mut progress: impl FnMut(u64, u64),
) -> Result<BackupInfo, BackupError> {
    if db.identity()?.is_some() {
        return Err(BackupError::NotEmpty {
            path: db.path().to_path_buf(),
        });
    }
    let info = match verified {
        Some(info) => info,
        None => verify_file(path, |read, total| progress(read / 2, total))?,
    };
    let half = info.file_size / 2;
    let mut reader = BackupReader::open(BufReader::with_capacity(256 * 1024, open_file(path)?))?;
    if *reader.header() != info.header {
        return Err(changed_meanwhile(path));
    }
    let old = read_snapshot_header(&mut reader).map_err(|e| reader.classify(e))?;
    // A new data dir holds no snapshot; chunks here are what an interrupted restore left.
    db.clear_snapshot_chunks()?;
    let cluster_id = restored_cluster_id(&info.hash, members);
    let snapshot_id = db.new_snapshot_id();
    let mut stored = Ok(());
    let mut writer = SnapshotWriter::new(|no, bytes| {
        stored = db.write_snapshot_chunk(snapshot_id, no, &bytes);
        stored
            .as_ref()
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(())
    });
    let header = SnapshotHeader {
        membership: Membership::new(cluster_id, members),
        applied_hash: old.applied_hash,
        has_state: old.has_state,
    };
    let copied = write_snapshot_header(&mut writer, &header).and_then(|()| {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            writer.write_all(&buf[..n])?;
            progress(half + reader.bytes_read() / 2, info.file_size);
        }
    });
    let finished = copied.and_then(|()| writer.finish());
    let stored_failed = std::mem::replace(&mut stored, Ok(()));
    let (size, chunks, checksum) = match (finished, stored_failed) {
        (_, Err(e)) => {
            let _ = db.discard_snapshot(snapshot_id);
            return Err(e.into());
        }
        (Err(e), Ok(())) => {
            let _ = db.discard_snapshot(snapshot_id);
            return Err(reader.classify(e));
        }
        (Ok(done), Ok(())) => done,
    };
    let again = reader.finish();
    if !matches!(&again, Ok((hash, _)) if *hash == info.hash) {
        let _ = db.discard_snapshot(snapshot_id);
        return Err(again.err().unwrap_or_else(|| changed_meanwhile(path)));
    }
    let mut voters: Vec<NodeId> = members.iter().map(|m| m.node_id).collect();
    voters.sort_unstable();
    let record = SnapshotRecord {
        id: snapshot_id,
        index: info.header.index,
        term: info.header.term,
        conf_state: ConfState {
            voters,
            ..Default::default()
        },
        size,
        chunks,
        checksum,
    };
    let hard_state = raft::eraftpb::HardState {
        term: record.term,
        commit: record.index,
        ..Default::default()
    };
    // One durable transaction: a crash leaves either no node or the whole restore.
    db.bootstrap_restored(identity, members, &record, &hard_state)?;
    progress(info.file_size, info.file_size);
    Ok(info)
}

fn changed_meanwhile(path: &Path) -> BackupError {
    BackupError::File {
        operation: "reading",
        path: path.to_path_buf(),
        source: io::Error::other("the file changed while it was being restored"),
    }
}

/// Checks a backup file's hash as its bytes go by (a client receiving one): everything but the
/// last 32 bytes is hashed, and those must be the hash.
#[derive(Debug, Default)]
pub struct HashCheck {
    hasher: blake3::Hasher,
    tail: Vec<u8>,
    len: u64,
}

impl HashCheck {
    /// A check of a file not started yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next bytes of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > HASH_LEN {
            let cut = self.tail.len() - HASH_LEN;
            self.hasher.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
    }

    /// Bytes seen.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no bytes were seen.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's hash, if it ends with the hash of what came before it.
    pub fn finish(self) -> Result<[u8; 32], BackupError> {
        if self.tail.len() < HASH_LEN {
            return Err(BackupError::Truncated {
                read: self.len,
                expected: (PREFIX_LEN + HASH_LEN) as u64,
            });
        }
        let computed = *self.hasher.finalize().as_bytes();
        if computed[..] != self.tail[..] {
            return Err(BackupError::HashMismatch {
                stored: hex(&self.tail),
                computed: hex(&computed),
            });
        }
        Ok(computed)
    }
}

/// What was saved: the header, the file's size and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedBackup {
    /// The log index the backup covers.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// The file's size.
    pub file_size: u64,
    /// The file's blake3 hash (its last 32 bytes).
    pub hash: [u8; 32],
}

impl SavedBackup {
    /// The hash in hex.
    pub fn hash_hex(&self) -> String {
        hex(&self.hash)
    }
}

impl BackupInfo {
    /// The hash in hex.
    pub fn hash_hex(&self) -> String {
        hex(&self.hash)
    }

    /// The cluster id, as tickets and status print it.
    pub fn cluster_id(&self) -> crate::ticket::ClusterId {
        crate::ticket::ClusterId(self.header.cluster_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64) -> Member {
        let key = iroh::SecretKey::from_bytes(&[id as u8; 32]).public();
        Member {
            node_id: id,
            addr: iroh::EndpointAddr::new(key),
        }
    }

    /// A backup of `state` at index 42, as a node writes it.
    fn backup_bytes(state: &[u8]) -> Vec<u8> {
        let mut snapshot = Vec::new();
        let header = SnapshotHeader {
            membership: Membership::initial(&[member(1), member(2)]),
            applied_hash: Some([7; 32]),
            has_state: true,
        };
        write_snapshot_header(&mut snapshot, &header).unwrap();
        snapshot.extend_from_slice(state);
        let header = BackupHeader {
            index: 42,
            term: 3,
            cluster_id: [9; 16],
            voters: vec![1, 2],
            learners: vec![],
            source_node: 1,
            created_unix_ms: 1,
            size: snapshot.len() as u64,
        };
        let mut w = BackupWriter::new(Vec::new(), &header).unwrap();
        w.write_all(&snapshot).unwrap();
        let (hash, size, out) = w.finish().unwrap();
        assert_eq!(size, out.len() as u64);
        assert_eq!(&out[out.len() - 32..], &hash);
        out
    }

    #[test]
    fn a_backup_round_trips_and_describes_itself() {
        let state = vec![5u8; 700_000];
        let bytes = backup_bytes(&state);
        let info = verify(bytes.as_slice(), |_, _| {}).unwrap();
        assert_eq!((info.header.index, info.header.term), (42, 3));
        assert_eq!(info.members.len(), 2);
        assert_eq!(info.state_size, state.len() as u64);
        assert_eq!(info.file_size, bytes.len() as u64);
        assert_eq!(info.applied_hash, Some([7; 32]));
        let mut check = HashCheck::new();
        for piece in bytes.chunks(1000) {
            check.update(piece);
        }
        assert_eq!(check.finish().unwrap(), info.hash);
    }

    #[test]
    fn every_damage_is_a_typed_error_naming_it() {
        let bytes = backup_bytes(b"the state");
        // One flipped bit anywhere: in the header, the snapshot or the hash itself.
        for at in [12, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            let err = verify(bad.as_slice(), |_, _| {}).unwrap_err();
            assert!(
                matches!(
                    err,
                    BackupError::HashMismatch { .. } | BackupError::Malformed { .. }
                ),
                "byte {at}: {err}"
            );
        }
        let mut check = HashCheck::new();
        let mut bad = bytes.clone();
        bad[20] ^= 0x80;
        check.update(&bad);
        assert!(matches!(
            check.finish(),
            Err(BackupError::HashMismatch { .. })
        ));
        // Truncated anywhere.
        for len in [3, 8, 20, bytes.len() - 10, bytes.len() - 1] {
            let err = verify(&bytes[..len], |_, _| {}).unwrap_err();
            assert!(
                matches!(
                    err,
                    BackupError::Truncated { .. } | BackupError::NotABackup { .. }
                ),
                "{len} bytes: {err}"
            );
        }
        assert!(matches!(
            verify(&bytes[..0], |_, _| {}),
            Err(BackupError::Empty)
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            verify(longer.as_slice(), |_, _| {}),
            Err(BackupError::TrailingBytes { .. })
        ));
        let mut foreign = bytes.clone();
        foreign[4] = 9;
        assert!(matches!(
            verify(foreign.as_slice(), |_, _| {}),
            Err(BackupError::UnsupportedVersion {
                found: 9,
                supported: 1
            })
        ));
        let err = verify(&b"SQLite format 3\0 and more"[..], |_, _| {}).unwrap_err();
        assert!(matches!(err, BackupError::NotABackup { .. }), "{err}");
    }

    #[test]
    fn a_restore_verifies_before_it_writes_and_founds_a_new_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.irbk");
        let bytes = backup_bytes(b"kv state");
        let identity = |id: u64| Identity {
            node_id: id,
            endpoint_id: member(id).addr.id,
        };
        // A damaged file: nothing is written.
        let mut bad = bytes.clone();
        bad[bytes.len() - 34] ^= 1;
        std::fs::write(&file, &bad).unwrap();
        let mut db = LogDb::open(&dir.path().join("raft.redb")).unwrap();
        let err = restore_into(&mut db, identity(5), &[member(5)], (&file, None), |_, _| {});
        assert!(matches!(err, Err(BackupError::HashMismatch { .. })));
        assert_eq!(db.identity().unwrap(), None);
        assert_eq!(db.current_snapshot().unwrap(), None);

        // What a restore interrupted mid-copy leaves: chunks, and no node. It is done again.
        let orphan = db.new_snapshot_id();
        db.write_snapshot_chunk(orphan, 0, b"half a copy").unwrap();
        std::fs::write(&file, &bytes).unwrap();
        let info =
            restore_into(&mut db, identity(5), &[member(5)], (&file, None), |_, _| {}).unwrap();
        let orphaned = SnapshotRecord {
            id: orphan,
            chunks: 1,
            ..Default::default()
        };
        let mut rest = Vec::new();
        let gone = db.snapshot_reader(&orphaned).read_to_end(&mut rest);
        assert_eq!(gone.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let r = db.recover().unwrap();
        let snap = r.snapshot.unwrap();
        assert_eq!((snap.index, snap.term), (42, 3));
        assert_eq!(r.hard_state.commit, 42);
        assert_eq!(r.conf_state.voters, vec![5]);
        let mut reader = db.snapshot_reader(&snap);
        let header = read_snapshot_header(&mut reader).unwrap();
        assert_eq!(
            header.membership.cluster_id(),
            restored_cluster_id(&info.hash, &[member(5)])
        );
        assert_ne!(header.membership.cluster_id(), [9; 16]);
        assert_eq!(header.applied_hash, Some([7; 32]));
        let mut state = Vec::new();
        reader.read_to_end(&mut state).unwrap();
        assert_eq!(state, b"kv state");
        // A node's log is never overwritten.
        let again = restore_into(&mut db, identity(5), &[member(5)], (&file, None), |_, _| {});
        assert!(matches!(again, Err(BackupError::NotEmpty { .. })));
    }
}
