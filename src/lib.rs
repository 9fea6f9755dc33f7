#![doc = include_str!("../README.md")]
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod builder;
mod cluster;
pub mod deployment;
mod discovery;
mod error;
pub mod kv;
pub mod lan;
mod local;
mod membership;
pub mod mgmt;
pub mod monitoring;
pub mod net;
mod preset;
#[cfg(feature = "otel")]
pub mod telemetry;

pub use builder::{CONF_FILE, DB_FILE, JOIN_PENDING_FILE, Peer, RaftClusterBuilder};
pub use cluster::RaftCluster;
pub use error::{BuildError, ConfigError};
pub mod backups;
/// Backup files: their format, verification and restore (see [`RaftCluster::backup`] and
/// [`RaftClusterBuilder::restore_from`]).
pub use iroh_raft_actors::backup;
pub use iroh_raft_actors::{
    ClusterEvent, ClusterId, EventItem, EventStream, FatalError, MemberInfo, MemberRole,
    MembershipRefusal, NodeId, NodeStatus, ProposeError, RaftProtocol, ReadError, Role,
    SnapshotError, StateMachine, StorageError, Ticket, TicketError, TicketRole, TransferError,
    WriteSnapshot, wire::ALPN,
};
pub use iroh_raft_actors::{
    DiscoveryProtocol, HealthCheck, HealthReport, HealthStatus, JoinOptions, MemoryNetwork,
    NodeMetrics, Transferred,
};
pub use kv::{KeyValueStore, KvCommand, KvResponse, KvSnapshot};
pub use local::{start_local_cluster, start_memory_cluster};
pub use membership::Members;
pub use net::PeerAddr;
pub use preset::Preset;

/// The runtime crate, for applications that spawn or supervise the actors themselves.
pub use iroh_raft_actors as actors;

/// What most applications need.
pub mod prelude {
    pub use crate::{
        ClusterEvent, EventItem, KeyValueStore, KvCommand, KvResponse, NodeId, PeerAddr, Preset,
        ProposeError, RaftCluster, ReadError, StateMachine, WriteSnapshot,
    };
}
