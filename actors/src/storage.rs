//! Durable state: the Raft log, hard state, membership and snapshots in redb.
//!
//! [`LogDb`] is the synchronous store (tables, codecs, one write transaction per call), tested on
//! its own. [`StorageActor`] owns a `LogDb` on a dedicated OS thread (production) or a task
//! (simulation): the RaftActor feeds it [`PersistBatch`]es through a bounded flume channel, it
//! writes every batch that is waiting in one transaction (group commit) and publishes the highest
//! persisted Ready number on a watch channel, which never blocks it. Snapshot bytes arrive as
//! bounded chunks (`WriteChunk`) from whoever produces them (the local snapshot writer, or a
//! leader's transfer stream) and are written in their own small transactions, interleaved with
//! log commits, so a 100 MB snapshot never holds up the log.

mod actor;
mod codec;
mod db;
mod records;
mod seal;
mod snapshot;
mod tables;

pub use actor::{
    Close, CommitSnapshot, DiscardSnapshot, Fence, Flush, NewSnapshotId, PersistProgress, Recover,
    StorageActor, StorageArgs, WriteChunk,
};
pub use db::{DB_CACHE_SIZE, DbHandle, LogDb};
pub use records::{Identity, Member, PersistBatch, Recovered, SnapshotRecord};
pub use snapshot::{SNAPSHOT_CHUNK, SnapshotReader, SnapshotWriter};
pub use tables::FORMAT_VERSION;

/// Persist batches the RaftActor may queue ahead of the StorageActor (bounded backpressure: when
/// the disk falls this far behind, the Raft loop waits for it, and proposers wait for the loop).
pub const PERSIST_QUEUE: usize = 1024;

/// Most batches one write transaction takes, so one huge burst cannot starve the confirmations.
pub const MAX_BATCHES_PER_COMMIT: usize = 512;
