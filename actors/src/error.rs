//! Error types, one `#[non_exhaustive]` enum per operation family.
//!
//! The split that matters to callers: [`ProposeError`] and [`ReadError`] say "this call was
//! refused or its outcome is unknown" (retry, redirect, give up); [`FatalError`] says "this node
//! is dead" (its storage failed, or its actors stopped for good) and every later call returns it.

use std::{path::PathBuf, sync::Arc};

use crate::{membership::MembershipRefusal, types::NodeId};

/// Why a proposal did not produce a response.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node cannot accept the proposal and could not forward it. Safe to retry elsewhere.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node believes in, if it knows one.
        leader_hint: Option<NodeId>,
    },
    /// The leader could not be reached (its queue was full or its connection down) and the
    /// command was never sent to it. Safe to retry.
    #[error("leader {leader} unreachable; the command was not sent")]
    LeaderUnreachable {
        /// The leader the command was meant for.
        leader: NodeId,
    },
    /// The entry was appended but a new leader overwrote it: it was never applied, so retrying is
    /// safe.
    #[error("proposal dropped at index {index}: a new leader overwrote it")]
    Dropped {
        /// The log index the proposal had been given.
        index: u64,
    },
    /// The leader did not append the command: raft-rs dropped it because a leadership transfer
    /// is under way or too many entries are uncommitted. It was never appended, so retrying
    /// (shortly) is safe.
    #[error("the leader is busy (leadership transfer or uncommitted limit); not appended")]
    Busy,
    /// The proposal was forwarded to the leader of a term that ended without it being applied
    /// (a leader of `term` has committed since): it never will be, so retrying is safe.
    #[error(
        "the leader it was forwarded to lost its term before applying it (term {term} has a leader now)"
    )]
    LeaderChanged {
        /// The term whose leader has committed since.
        term: u64,
    },
    /// No answer in time. The outcome is unknown: the command may or may not have been applied.
    #[error("proposal timed out; its outcome is unknown")]
    Timeout,
    /// The encoded command is larger than a frame can carry.
    #[error("command is {size} bytes, the limit is {max}")]
    TooLarge {
        /// Encoded size of the command.
        size: usize,
        /// [`crate::wire::MAX_COMMAND_SIZE`].
        max: usize,
    },
    /// The command could not be encoded, or (remote bytes) does not decode as a command: refused
    /// before it entered the log. (A committed entry that does not decode stops the node:
    /// [`ProposeError::Fatal`].)
    #[error("command codec failed: {0}")]
    Codec(#[source] CodecError),
    /// The node is shutting down; the command was not accepted (or its outcome is unknown if it
    /// had already been appended).
    #[error("node is shutting down")]
    ShuttingDown,
    /// The outcome is unknown: the RaftActor crashed (and is being restarted) before answering,
    /// or this node caught up through a snapshot that may or may not include the command.
    #[error("the proposal's outcome is unknown (the node restarted or installed a snapshot)")]
    Interrupted,
    /// A membership change was refused before it was proposed (nothing changed).
    #[error("membership change refused: {0}")]
    Membership(#[from] MembershipRefusal),
    /// The node is dead.
    #[error(transparent)]
    Fatal(#[from] FatalError),
}

impl ProposeError {
    /// True when the command was certainly not applied, so sending it again cannot apply it
    /// twice.
    pub fn is_safe_to_retry(&self) -> bool {
        matches!(
            self,
            ProposeError::NotLeader { .. }
                | ProposeError::Busy
                | ProposeError::Dropped { .. }
                | ProposeError::LeaderChanged { .. }
        )
    }
}

/// Why a read did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No leader is known to confirm the read index; retry later.
    #[error("no leader to confirm the read")]
    NoLeader,
    /// Leadership changed while the read waited for confirmation; retry.
    #[error("leadership changed while the read waited")]
    LeadershipChanged,
    /// No confirmation in time.
    #[error("read timed out")]
    Timeout,
    /// The RaftActor crashed (and is being restarted) before answering; retry.
    #[error("the node's Raft actor restarted before answering")]
    Interrupted,
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The node is dead.
    #[error(transparent)]
    Fatal(#[from] FatalError),
}

/// Why a snapshot could not be taken.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The state machine failed to write its state.
    #[error("the state machine failed to write its snapshot: {reason}")]
    StateMachine {
        /// The I/O error it returned.
        reason: Arc<str>,
    },
    /// Writing the snapshot to disk failed (the node is now failed too).
    #[error("storing the snapshot failed: {0}")]
    Storage(#[source] Arc<StorageError>),
    /// A newer snapshot (installed from the leader) replaced the one being taken.
    #[error("a newer snapshot was installed meanwhile")]
    Superseded,
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The node is dead.
    #[error(transparent)]
    Fatal(#[from] FatalError),
}

/// A command or response that serde could not (de)serialize.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    message: Arc<str>,
}

impl CodecError {
    /// An error with the codec's message.
    pub fn new(err: impl std::fmt::Display) -> Self {
        Self {
            message: err.to_string().into(),
        }
    }
}

/// The node can no longer serve: every later call returns this.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FatalError {
    /// A write to durable storage failed; nothing after it was acknowledged.
    #[error("storage failed: {0}")]
    Storage(#[source] Arc<StorageError>),
    /// The Raft core refused to continue (a storage invariant was broken).
    #[error("raft core failed: {reason}")]
    Raft {
        /// What raft-rs reported.
        reason: Arc<str>,
    },
    /// An actor of this node stopped for good (crashed more often than the supervisor allows).
    #[error("actor {actor} stopped: {reason}")]
    ActorStopped {
        /// Which actor.
        actor: &'static str,
        /// Why it stopped.
        reason: Arc<str>,
    },
    /// This node was removed from the cluster; it stopped and its key is refused from now on.
    #[error("node {node} was removed from the cluster")]
    Removed {
        /// This node's id.
        node: NodeId,
    },
    /// Damaged or inconsistent data: a record whose checksum does not match, a committed entry
    /// that does not decode, or a replica whose applied history differs from the cluster's. The
    /// node stopped serving and voting; [`Corruption::RECOVERY`] says what to do.
    #[error(transparent)]
    Corruption(Corruption),
    /// This node's data dir is older than what it had acknowledged to the cluster (restored from
    /// an old copy, or writes lost without fsync). It stopped before raft could act on it; it
    /// must be removed and join again with an empty data dir.
    #[error(
        "node {node} runs on a stale data dir: {evidence}. {}",
        Corruption::RECOVERY
    )]
    StaleDataDir {
        /// This node's id.
        node: NodeId,
        /// How it was found out.
        evidence: StaleEvidence,
    },
}

impl FatalError {
    /// The corruption that stopped the node, if that is what did (including a storage failure
    /// that found damaged data).
    pub fn corruption(&self) -> Option<&Corruption> {
        match self {
            FatalError::Corruption(c) => Some(c),
            FatalError::Storage(e) => match e.as_ref() {
                StorageError::Corrupt(c) => Some(c),
                _ => None,
            },
            _ => None,
        }
    }
}

/// How a node found out that its data dir is stale.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StaleEvidence {
    /// The leader says entries up to `commit` are committed and held here (it counted this
    /// node's acknowledgements), but the log here ends at `last_index`.
    #[error(
        "the leader ({leader}) counts entries up to {commit} as held here, but the log ends at {last_index}"
    )]
    LogBehindAcknowledged {
        /// The leader that sent the commit index.
        leader: NodeId,
        /// The commit index it sent (at most what this node acknowledged).
        commit: u64,
        /// The last index of this node's log.
        last_index: u64,
    },
    /// A peer has seen this node start more often than its data dir remembers (it refused our
    /// Hello with [`crate::wire::CloseCode::StaleIncarnation`]).
    #[error(
        "peer {peer} has seen a later start of this node than its data dir's incarnation {ours}"
    )]
    IncarnationBehind {
        /// The peer that refused us.
        peer: NodeId,
        /// This start's incarnation.
        ours: u64,
    },
}

/// Where damaged or inconsistent data was found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataLocation {
    /// The database file as a whole (redb refused it).
    File,
    /// A Raft log entry.
    LogEntry {
        /// Its index.
        index: u64,
    },
    /// A node metadata record (hard state, membership, identity...).
    Meta {
        /// The record's key.
        key: &'static str,
    },
    /// One stored chunk of a snapshot.
    SnapshotChunk {
        /// The snapshot's last log index.
        index: u64,
        /// The chunk's number.
        chunk: u32,
    },
    /// A snapshot as a whole (its size or checksum over all chunks, or its header).
    Snapshot {
        /// The snapshot's last log index.
        index: u64,
    },
    /// The state machine as of an applied index (the replica consistency check).
    AppliedState {
        /// The index whose running hash differs.
        index: u64,
    },
}

impl std::fmt::Display for DataLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataLocation::File => write!(f, "the database file"),
            DataLocation::LogEntry { index } => write!(f, "log entry {index} (table log)"),
            DataLocation::Meta { key } => write!(f, "metadata record {key:?} (table meta)"),
            DataLocation::SnapshotChunk { index, chunk } => {
                write!(
                    f,
                    "chunk {chunk} of the snapshot at {index} (table snapshot_chunks)"
                )
            }
            DataLocation::Snapshot { index } => write!(f, "the snapshot at {index}"),
            DataLocation::AppliedState { index } => {
                write!(f, "the entries applied up to {index}")
            }
        }
    }
}

/// What was wrong with damaged data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The record's checksum does not match its bytes.
    Checksum,
    /// The record's checksum matches but its contents do not decode.
    Undecodable,
    /// Records that decode contradict each other (a commit index beyond the log, a gap).
    Inconsistent,
    /// The running hash of the applied entries differs from the one the rest of the cluster
    /// computed at the same index.
    Diverged,
}

/// Damaged or inconsistent data, with where it was found. Never skipped: the node stops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("data corruption in {}: {location}: {detail}. {}", path.display(), Corruption::RECOVERY)]
pub struct Corruption {
    /// The database file (empty for an in-memory database).
    pub path: PathBuf,
    /// Where in it.
    pub location: DataLocation,
    /// What was wrong.
    pub kind: CorruptionKind,
    /// A sentence for the operator.
    pub detail: String,
}

impl Corruption {
    /// What an operator does about a corrupt or stale member.
    pub const RECOVERY: &'static str = "To recover: remove this member from the cluster \
        (`iroh-raft ctl remove-member ID`), empty its data dir, and join it again with a \
        ticket; the other members keep serving meanwhile";

    pub(crate) fn new(
        path: &std::path::Path,
        location: DataLocation,
        kind: CorruptionKind,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            path: path.to_owned(),
            location,
            kind,
            detail: detail.into(),
        }
    }
}

/// Why a leadership transfer did not happen.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The named node is not a voter.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// There is no other voter to hand leadership to.
    #[error("no other voter to hand leadership to")]
    NoCandidate,
    /// No leader is known to hand leadership over.
    #[error("no leader is known")]
    NoLeader,
    /// Leadership did not move in time (the target is behind or unreachable; raft-rs aborts a
    /// transfer after an election timeout).
    #[error("leadership did not move within {elapsed:?}")]
    Timeout {
        /// How long it waited.
        elapsed: std::time::Duration,
    },
    /// The node is shutting down or dead.
    #[error("node unavailable: {0}")]
    Unavailable(#[source] ProposeError),
}

/// Failures of the durable log (redb) and of the data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database file could not be opened or created.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The redb file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The file is not a database we wrote, or a record in it is damaged (its checksum does
    /// not match, it does not decode, or it contradicts the others).
    #[error(transparent)]
    Corrupt(Corruption),
    /// The data dir was written by a version with another storage layout.
    #[error("data dir format version {found} is not supported (this build reads {supported})")]
    IncompatibleVersion {
        /// The version recorded in the data dir.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The data dir belongs to another node.
    #[error(
        "data dir belongs to node {stored_node} (endpoint {stored_endpoint}), not node {node} (endpoint {endpoint})"
    )]
    IdentityMismatch {
        /// Node id recorded in the data dir.
        stored_node: NodeId,
        /// Endpoint id recorded in the data dir.
        stored_endpoint: String,
        /// Node id this process was started as.
        node: NodeId,
        /// Endpoint id this process was started with.
        endpoint: String,
    },
    /// The node found this data dir corrupt or stale while it ran, and fenced it: it never
    /// serves from it again.
    #[error("{} was fenced: {reason}", path.display())]
    Fenced {
        /// The redb file.
        path: PathBuf,
        /// The fatal error that fenced it (it says how to recover).
        reason: String,
    },
    /// The database was closed (the node shut down).
    #[error("the database is closed")]
    Closed,
    /// A read or write transaction failed (I/O error, disk full...).
    #[error("storage {operation} failed: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// What redb said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StorageError {
    pub(crate) fn io(
        operation: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StorageError::Io {
            operation,
            source: Box::new(source),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data dir could not be read or written, or belongs to someone else.
    #[error(transparent)]
    Storage(Arc<StorageError>),
    /// The StorageActor is not running.
    #[error("the storage actor is not running")]
    StorageUnavailable,
    /// A restart needed a fresh state machine, and no factory was given.
    #[error("no state machine to start with (a restart needs a state machine factory)")]
    NoStateMachine,
    /// The state machine could not restore the stored snapshot.
    #[error("restoring the snapshot at index {index} failed: {reason}")]
    Restore {
        /// The snapshot's index.
        index: u64,
        /// What `restore` (or the checksum check) said.
        reason: String,
    },
    /// raft-rs refused the recovered state or the configuration.
    #[error("raft core refused to start: {reason}")]
    Raft {
        /// What raft-rs said.
        reason: String,
    },
    /// An actor panicked while starting.
    #[error("{actor} panicked while starting: {reason}")]
    Panicked {
        /// Which actor.
        actor: &'static str,
        /// The panic message.
        reason: String,
    },
}

impl From<StorageError> for StartError {
    fn from(e: StorageError) -> Self {
        StartError::Storage(Arc::new(e))
    }
}
