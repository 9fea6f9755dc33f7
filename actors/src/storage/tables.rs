//! Every redb table iroh-raft uses, in one place. Names carry a version: a layout change gets a new
//! name and a new [`FORMAT_VERSION`], never a silent reinterpretation.

use redb::TableDefinition;

/// Version of the on-disk layout this build reads and writes.
///
/// 2: every snapshot starts with a header (magic, cluster id, membership with tombstones), and a
/// founded cluster's log starts with a bootstrap snapshot at index 1.
///
/// 3: every stored value but the format version carries a checksum over its table, key and
/// bytes (see `seal.rs`), verified whenever it is read; the snapshot header carries the running
/// hash of the entries applied up to the snapshot.
pub const FORMAT_VERSION: u32 = 3;

/// Node metadata: format version, identity, hard state, conf state, members, the current
/// snapshot and where the log starts. Its name stays at `_v1` so that every build finds the
/// format version (stored without a seal, four little-endian bytes) and refuses a layout it
/// does not read; the other values are sealed since format 3.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("iroh_raft_meta_v1");

/// The Raft log: index → sealed encoded entry.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("iroh_raft_log_v2");

/// Snapshot bytes: (snapshot id, chunk number) → sealed chunk. Only the id named by the `snapshot` meta
/// record is current; any other id is a snapshot being written or received, and is deleted at
/// start-up if the node stopped before it was committed.
pub(crate) const SNAPSHOT_CHUNKS: TableDefinition<(u64, u32), &[u8]> =
    TableDefinition::new("iroh_raft_snapshot_chunks_v2");

/// Keys of [`META`].
pub(crate) mod meta_key {
    pub(crate) const FORMAT_VERSION: &str = "format_version";
    pub(crate) const IDENTITY: &str = "identity";
    pub(crate) const HARD_STATE: &str = "hard_state";
    pub(crate) const CONF_STATE: &str = "conf_state";
    pub(crate) const MEMBERS: &str = "members";
    /// The current snapshot's record.
    pub(crate) const SNAPSHOT: &str = "snapshot";
    /// Index and term of the last entry removed from the front of the log (0, 0 if none).
    pub(crate) const LOG_START: &str = "log_start";
    /// How many times a RaftActor started on this data dir.
    pub(crate) const INCARNATION: &str = "incarnation";
    /// Why this data dir must not serve again (it was found corrupt or stale), if it was.
    pub(crate) const FENCED: &str = "fenced";
}
