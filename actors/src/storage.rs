//! Durable state: the Raft log, hard state and membership in redb.
//!
//! [`LogDb`] is the synchronous store (tables, codecs, one write transaction per call), tested on
//! its own. [`StorageActor`] owns a `LogDb` on a dedicated OS thread (production) or a task
//! (simulation): the RaftActor feeds it [`PersistBatch`]es through a bounded flume channel, it
//! writes every batch that is waiting in one transaction (group commit) and publishes the highest
//! persisted Ready number on a watch channel, which never blocks it.

mod actor;
mod codec;
mod db;
mod tables;

pub use actor::{Close, Flush, PersistProgress, Recover, StorageActor, StorageArgs};
pub use db::{DbHandle, Identity, LogDb, Member, PersistBatch, Recovered};
pub use tables::FORMAT_VERSION;

/// Persist batches the RaftActor may queue ahead of the StorageActor (bounded backpressure: when
/// the disk falls this far behind, the Raft loop waits for it, and proposers wait for the loop).
pub const PERSIST_QUEUE: usize = 1024;

/// Most batches one write transaction takes, so one huge burst cannot starve the confirmations.
pub const MAX_BATCHES_PER_COMMIT: usize = 512;
