//! The management plane over QUIC: the server every node mounts ([`MgmtProtocol`]) and the
//! remote client ([`IrohRaftManagementClient`]). The protocol is specified in
//! [`iroh_raft_actors::wire`].

mod client;

pub use client::{
    ClientError, ClientOptions, DEFAULT_TIMEOUT, EventSubscription, IrohRaftManagementClient,
    KvWatch, WatchStream,
};
pub use iroh_raft_actors::mgmt::{MgmtProtocol, RemoteReader, RemoteWatcher, WatchStep};

use iroh_raft_actors::wire::{MgmtProbe, MgmtStatus};

/// The checks of a probe that failed, each as `name: why`.
pub fn failed_checks(probe: &MgmtProbe) -> Vec<String> {
    probe
        .checks
        .iter()
        .filter_map(|c| Some(format!("{}: {}", c.name, c.failure.as_ref()?)))
        .collect()
}

/// Where leadership goes when it is handed away from `from` (a leader about to stop): the
/// other voter the answering node heard from recently that is furthest along (lowest lag,
/// then lowest id). `None` when there is none.
pub fn handover_target(status: &MgmtStatus, from: u64) -> Option<u64> {
    status
        .members
        .iter()
        .filter(|m| m.role == "voter" && m.id != from && m.fresh)
        .min_by_key(|m| (m.lag, m.id))
        .map(|m| m.id)
}
