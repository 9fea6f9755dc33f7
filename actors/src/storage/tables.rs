//! Every redb table iroh-raft uses, in one place. Names carry a version: a layout change gets a new
//! name and a new [`FORMAT_VERSION`], never a silent reinterpretation.

use redb::TableDefinition;

/// Version of the on-disk layout this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Node metadata: format version, identity, hard state, conf state, members.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("iroh_raft_meta_v1");

/// The Raft log: index → encoded entry.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("iroh_raft_log_v1");

/// Keys of [`META`].
pub(crate) mod meta_key {
    pub(crate) const FORMAT_VERSION: &str = "format_version";
    pub(crate) const IDENTITY: &str = "identity";
    pub(crate) const HARD_STATE: &str = "hard_state";
    pub(crate) const CONF_STATE: &str = "conf_state";
    pub(crate) const MEMBERS: &str = "members";
}
