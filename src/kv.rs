//! The built-in replicated key-value store, with etcd-like semantics: [`KeyValueStore`], the
//! [`KvCommand`]s that change it, and the remote readers and watcher that serve it to
//! management clients.
//!
//! - Revisions: the store's revision counts the commands that changed something (a
//!   transaction that changes several keys is one revision; a failed compare-and-swap, the
//!   delete of an absent key or a transaction whose branch writes nothing takes none). Every
//!   key carries the revision that created it, the revision of its last change and its
//!   version. Every replica applying the same commands computes the same numbers.
//! - Reads: [`KeyValueStore::get_kv`], [`KeyValueStore::range`], [`KeyValueStore::prefix`];
//!   remotely [`remote_query`] (and the older [`remote_get`]).
//! - Watches: each replica keeps its latest changes ([`WATCH_HISTORY`]), local to it and not in
//!   the snapshot; [`KeyValueStore::changes_since`] and [`remote_watch`] serve them from a
//!   revision.
//! - Snapshots: [`KvSnapshot`], an O(1) structural share of the map, written in format v2
//!   (with revisions); v1 snapshots are still restored.
//!
//! Layout: `command` (the proposal wire types), `entry` (a key's value and revisions as the
//! map holds them), `store` (the map, its writes and reads), `txn`,
//! `watch` (the history), `snapshot` (the format), `remote` (the management readers).

mod command;
mod entry;
mod remote;
mod snapshot;
mod store;
mod txn;
mod watch;

#[cfg(test)]
mod tests;

pub use command::{
    Compare, CompareOp, CompareTarget, KeyValue, KvCommand, KvResponse, Txn, TxnOp, TxnOpResult,
};
/// One step of a remote watch: the management protocol's type, which [`remote_watch`] answers.
pub use iroh_raft_actors::mgmt::WatchStep;
pub use remote::{
    KV_QUERY_MAGIC, KvQuery, WATCH_BATCH_BYTES, WATCH_BATCH_EVENTS, remote_get, remote_query,
    remote_watch,
};
pub use snapshot::KvSnapshot;
pub use store::{KeyValueStore, MAX_RANGE_BYTES, MAX_RANGE_KVS, RangeResult};
pub use watch::{
    WATCH_HISTORY, WATCH_HISTORY_BYTES, WatchBatch, WatchCompacted, WatchEvent, WatchEventKind,
    WatchQuery,
};
