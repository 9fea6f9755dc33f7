//! The management plane over QUIC: the server every node mounts ([`MgmtProtocol`]) and the
//! remote client ([`IrohRaftManagementClient`]). The protocol is specified in
//! [`iroh_raft_actors::wire`].

mod client;

pub use client::{
    ClientError, ClientOptions, DEFAULT_TIMEOUT, EventSubscription, IrohRaftManagementClient,
};
pub use iroh_raft_actors::mgmt::{MgmtProtocol, RemoteReader};
