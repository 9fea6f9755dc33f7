//! Subcommands of the `iroh-raft` binary.

pub(crate) mod backup;
pub(crate) mod cluster;
pub(crate) mod ctl;
pub(crate) mod demo;
pub(crate) mod docs;
pub(crate) mod kv;
pub(crate) mod node;
