//! Errors of building a cluster handle. Errors of running one ([`ProposeError`](crate::ProposeError),
//! [`ReadError`](crate::ReadError), [`FatalError`](crate::FatalError)) come from the runtime crate.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use iroh_raft_actors::{NodeId, StartError};

/// A builder setting that cannot work. Returned by `build`, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `node_id` was not set.
    #[error("node_id is required")]
    MissingNodeId,
    /// Node id 0 is reserved by Raft for "nobody".
    #[error("node id 0 is reserved; use 1 or more")]
    ZeroNodeId,
    /// `state_machine` was not set.
    #[error("state_machine is required")]
    MissingStateMachine,
    /// `data_dir` was not set.
    #[error("data_dir is required")]
    MissingDataDir,
    /// The scheduled backups' configuration is invalid.
    #[error(transparent)]
    Backups(#[from] crate::backups::BackupConfigError),
    /// A restore founds a new cluster: it cannot also join one.
    #[error("restore_from founds a new cluster: it cannot be combined with joining one")]
    RestoreAndJoin,
    /// An option that needs files or sockets was combined with
    /// [`crate::RaftClusterBuilder::in_memory`].
    #[error(
        "{option} cannot be used with in_memory: a node on a memory network has no files and no sockets"
    )]
    NotInMemory {
        /// The builder option.
        option: &'static str,
    },
    /// A congestion controller name that is not `cubic` or `bbr`.
    #[error("unknown congestion controller {given:?}: use cubic or bbr")]
    InvalidCongestionControl {
        /// What was given.
        given: String,
    },
    /// The file of certificate authorities to trust for relays could not be used.
    #[error("relay CA file {path}: {reason}")]
    RelayCa {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Followers would call elections between heartbeats.
    #[error(
        "election timeout {election:?} must be longer than the heartbeat interval {heartbeat:?}"
    )]
    ElectionTimeoutTooShort {
        /// The election timeout.
        election: Duration,
        /// The heartbeat interval.
        heartbeat: Duration,
    },
    /// A zero heartbeat interval.
    #[error("heartbeat interval must be at least 1 ms")]
    HeartbeatTooShort,
    /// `max_log_entries` of 0.
    #[error("max_log_entries must be at least 1")]
    ZeroMaxLogEntries,
    /// Two peers share a node id.
    #[error("node id {0} appears more than once in the membership")]
    DuplicateNodeId(NodeId),
    /// Two peers share an endpoint id.
    #[error("endpoint id {0} appears more than once in the membership")]
    DuplicateEndpoint(String),
    /// The peer list names this node's id with another endpoint id.
    #[error("the peer list gives this node ({node}) endpoint {listed}, but its key is {actual}")]
    SelfMismatch {
        /// This node's id.
        node: NodeId,
        /// Endpoint id in the peer list.
        listed: String,
        /// This node's endpoint id.
        actual: String,
    },
    /// A bare `ip:port`: iroh dials endpoint ids, not addresses.
    #[error(
        "'{given}' is a plain address; iroh dials endpoint ids: write it as <endpoint-id>@{given}"
    )]
    PlainSocketAddr {
        /// What was given.
        given: String,
    },
    /// A peer address that does not parse.
    #[error("invalid peer address '{given}': {reason}")]
    InvalidPeerAddress {
        /// What was given.
        given: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A bind address that does not parse.
    #[error("invalid bind address '{given}': expected ip:port")]
    InvalidBindAddress {
        /// What was given.
        given: String,
    },
    /// Both `bind_address` and `endpoint` were set.
    #[error("set either bind_address or endpoint, not both")]
    BindAddressAndEndpoint,
}

/// Why `build` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data dir cannot be created or read.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The secret key file is unusable.
    #[error("secret key {path}: {reason}")]
    Identity {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The endpoint could not bind.
    #[error("cannot bind {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What iroh said.
        reason: String,
    },
    /// The OTLP trace exporter could not be set up (`otlp_endpoint`).
    #[cfg(feature = "otel")]
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// The monitoring listener (`metrics_addr`) could not bind.
    #[error("cannot bind the metrics listener on {addr}: {reason}")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        reason: String,
    },
    /// Storage or the Raft core refused to start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The join ticket does not parse.
    #[error("invalid ticket: {0}")]
    Ticket(#[from] iroh_raft_actors::TicketError),
    /// A member refused to let this node join (the ticket is expired, forged, for another
    /// cluster, issued by a removed member, ...).
    #[error("join refused ({kind:?}): {message}")]
    JoinRefused {
        /// The reason, for programs.
        kind: iroh_raft_actors::wire::RefusalKind,
        /// The member's explanation.
        message: String,
    },
    /// Local-network announcement could not start.
    #[error("LAN discovery: {0}")]
    Lan(String),
    /// The backup to restore from is not usable, or the data dir is not empty (nothing was
    /// written).
    #[error(transparent)]
    Restore(#[from] iroh_raft_actors::backup::BackupError),
    /// No member named in the ticket could be reached.
    #[error("no member in the ticket could be reached: {reason}")]
    JoinUnreachable {
        /// What the last attempt reported.
        reason: String,
    },
    /// The join request reached a member but no answer came back: the member may have admitted
    /// the node (as a learner) or not. The node's key is kept in the data dir, and nothing
    /// else: building again with the same data dir and a join ticket presents the same key,
    /// which a member that admitted it recognises (same id), and one that did not admits.
    #[error(
        "the join request was sent but not answered, so this node may or may not be in the cluster now: {reason}"
    )]
    JoinOutcomeUnknown {
        /// What the last attempt reported.
        reason: String,
    },
    /// A member admitted this node (it is in the cluster's membership) but the join did not
    /// finish. The data dir holds the node, marked [`crate::JOIN_PENDING_FILE`]: building
    /// again with the same data dir and a join ticket finishes the join.
    #[error("node {node} was admitted but its join did not finish: {source}")]
    JoinIncomplete {
        /// The node's id.
        node: NodeId,
        /// Why it did not finish.
        #[source]
        source: Box<BuildError>,
    },
}
