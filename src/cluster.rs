//! [`RaftCluster`]: the handle applications hold. A cheap `Clone` over actor references; every
//! call is a message to the node's actors.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use iroh::{Endpoint, EndpointAddr, EndpointId, protocol::Router};
use iroh_raft_actors::{
    CodecError, EventStream, FatalError, HealthReport, HealthStatus, Liveness, MemoryNetwork, Node,
    NodeCalls, NodeId, NodeMetrics, NodeStatus, ProposeError, RaftProtocol, ReadError,
    SnapshotError, StateMachine, Ticket, TicketRole,
    backup::{BackupError, HashCheck, SavedBackup},
};

use crate::DiscoveryProtocol;
use crate::{
    mgmt::MgmtProtocol,
    monitoring::MetricsServer,
    net::{PeerAddr, endpoint_peer_addr},
};

/// Owns the node for as long as any handle exists; stops it when the last one goes away without
/// `shutdown` having been called.
pub(crate) struct Lifetime<S: StateMachine> {
    node: Node<S>,
    /// `None` for a node on a [`MemoryNetwork`].
    endpoint: Option<Endpoint>,
    endpoint_id: EndpointId,
    router: Option<Router>,
    owns_endpoint: bool,
    /// The in-memory network the node is attached to, left when it stops.
    memory: Option<MemoryNetwork>,
    pub(crate) stopped: AtomicBool,
    /// Whether the node still serves (published by the runtime).
    liveness: tokio::sync::watch::Receiver<Liveness>,
    /// The monitoring listener, if one was asked for.
    pub(crate) metrics_server: Option<MetricsServer>,
    /// The scheduled backups' task, if the builder was given a schedule.
    pub(crate) backups: Option<tokio::task::JoinHandle<()>>,
}

impl<S: StateMachine> Lifetime<S> {
    pub(crate) fn new(
        node: Node<S>,
        endpoint: Endpoint,
        router: Option<Router>,
        owns_endpoint: bool,
    ) -> Self {
        Self {
            liveness: node.facts.liveness(),
            node,
            endpoint_id: endpoint.id(),
            endpoint: Some(endpoint),
            router,
            owns_endpoint,
            memory: None,
            stopped: AtomicBool::new(false),
            metrics_server: None,
            backups: None,
        }
    }

    /// A node reachable on `network` only, under the key `id` (it is attached already).
    pub(crate) fn in_memory(node: Node<S>, id: EndpointId, network: MemoryNetwork) -> Self {
        Self {
            liveness: node.facts.liveness(),
            node,
            endpoint: None,
            endpoint_id: id,
            router: None,
            owns_endpoint: false,
            memory: Some(network),
            stopped: AtomicBool::new(false),
            metrics_server: None,
            backups: None,
        }
    }

    /// Leaves the in-memory network, if the node is on one.
    fn detach(&self) {
        if let Some(network) = &self.memory {
            network.detach(&self.endpoint_id);
        }
    }
}

impl<S: StateMachine> Drop for Lifetime<S> {
    fn drop(&mut self) {
        if let Some(task) = &self.backups {
            task.abort();
        }
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        // No await in Drop: kill the actors (the StorageActor still makes what it received
        // durable as it stops) and close the network in the background if a runtime is there.
        self.node.kill();
        self.detach();
        let router = self.router.take();
        let endpoint = self.endpoint.clone().filter(|_| self.owns_endpoint);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(router) = router {
                    let _ = router.shutdown().await;
                } else if let Some(endpoint) = endpoint {
                    endpoint.close().await;
                }
            });
        }
    }
}

/// A running node of a replicated state machine, and the way to use the cluster through it.
///
/// Cloning is cheap; all clones talk to the same node. The node stops at [`Self::shutdown`] or
/// when the last clone is dropped.
pub struct RaftCluster<S: StateMachine> {
    calls: NodeCalls<S>,
    lifetime: Arc<Lifetime<S>>,
}

impl<S: StateMachine> Clone for RaftCluster<S> {
    fn clone(&self) -> Self {
        Self {
            calls: self.calls.clone(),
            lifetime: self.lifetime.clone(),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for RaftCluster<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftCluster")
            .field("node_id", &self.calls.node_id())
            .field("endpoint", &self.lifetime.endpoint_id)
            .finish()
    }
}

impl<S: StateMachine> RaftCluster<S> {
    pub(crate) fn new(lifetime: Lifetime<S>) -> Self {
        Self {
            calls: lifetime.node.calls.clone(),
            lifetime: Arc::new(lifetime),
        }
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.calls.node_id()
    }

    /// The iroh endpoint the node uses; `None` for a node on a [`MemoryNetwork`]
    /// ([`crate::RaftClusterBuilder::in_memory`]).
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.lifetime.endpoint.as_ref()
    }

    /// The node's key: its identity in the cluster.
    pub fn endpoint_id(&self) -> EndpointId {
        self.lifetime.endpoint_id
    }

    /// The address other members should use for this node.
    pub fn peer_addr(&self) -> PeerAddr {
        match &self.lifetime.endpoint {
            Some(endpoint) => endpoint_peer_addr(endpoint),
            None => PeerAddr(EndpointAddr::new(self.lifetime.endpoint_id)),
        }
    }

    /// The consensus protocol handler, for applications that run their own iroh `Router`
    /// (see [`crate::RaftClusterBuilder::external_router`]); mount it under
    /// [`iroh_raft_actors::wire::ALPN`].
    pub fn protocol_handler(&self) -> RaftProtocol {
        self.lifetime.node.protocol.clone()
    }

    /// The discovery protocol handler (newcomers present join tickets to it), for applications
    /// that run their own iroh `Router`; mount it under
    /// [`iroh_raft_actors::wire::DISCOVERY_ALPN`].
    pub fn discovery_handler(&self) -> DiscoveryProtocol<S> {
        self.lifetime.node.discovery_protocol.clone()
    }

    /// The management protocol handler, for applications that run their own iroh `Router`;
    /// mount it under [`iroh_raft_actors::wire::MGMT_ALPN`].
    pub fn mgmt_handler(&self) -> MgmtProtocol<S> {
        self.lifetime.node.mgmt_protocol.clone()
    }

    /// Mints a ticket signed by this node's key: `role` is what it grants (join the cluster,
    /// administer it, or read), `valid_for` how long. It names up to 64 current members to
    /// contact, and stays valid while this node is a member and it has not expired.
    pub async fn ticket(&self, role: TicketRole, valid_for: Duration) -> Result<Ticket, ReadError> {
        self.lifetime.node.ticket(role, valid_for).await
    }

    /// The node's actors, for applications that supervise or talk to them directly.
    pub fn actors(&self) -> &Node<S> {
        &self.lifetime.node
    }

    /// The calls this handle makes on its node (the management plane makes the same ones).
    pub fn calls(&self) -> &NodeCalls<S> {
        &self.calls
    }

    /// Replicates `command` and returns the state machine's response once it is applied.
    ///
    /// Works on any node: a follower forwards to the leader. While there is no leader, or when
    /// the command was certainly not applied ([`ProposeError::is_safe_to_retry`]), it retries
    /// until the request timeout. An `Ok` means the entry is committed (durable on a quorum) and
    /// applied here; [`ProposeError::Timeout`] means the outcome is unknown.
    pub async fn propose(&self, command: S::Command) -> Result<S::Response, ProposeError> {
        let data =
            postcard::to_allocvec(&command).map_err(|e| ProposeError::Codec(CodecError::new(e)))?;
        self.propose_encoded(data).await
    }

    /// [`Self::propose`] for a command already encoded with postcard (remote clients).
    pub(crate) async fn propose_encoded(&self, data: Vec<u8>) -> Result<S::Response, ProposeError> {
        self.calls.propose_encoded(data).await
    }

    /// Runs `f` on this node's state machine now. Fast, but on a follower (or a partitioned
    /// leader) it may see a stale state.
    pub async fn query<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        F: FnOnce(&S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.calls.query(f).await
    }

    /// Runs `f` on this node's state machine once a ReadIndex round proves the node has applied
    /// everything committed before the call: the result is linearizable. Works on followers.
    /// Retries while there is no leader, until the request timeout.
    pub async fn linearizable_query<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        F: FnOnce(&S) -> R + Send + Sync + Clone + 'static,
        R: Send + 'static,
    {
        self.calls.linearizable_query(f).await
    }

    /// Takes a snapshot of this node's state machine now and compacts its log behind it; returns
    /// the index the snapshot covers once it is durable. Appends and commits go on meanwhile.
    pub async fn trigger_snapshot(&self) -> Result<u64, SnapshotError> {
        self.calls.trigger_snapshot().await
    }

    /// Writes a consistent backup of the cluster's state into `out`, from this node: a
    /// ReadIndex round first proves this node has applied every write acknowledged before the
    /// call (it needs a quorum), then the node takes a snapshot and streams it, pinned, as a
    /// backup file (see [`iroh_raft_actors::backup`]): a large state never sits in memory
    /// whole, and writes go on meanwhile. On an error, what was written is not a backup.
    pub async fn backup<W>(&self, out: W) -> Result<SavedBackup, BackupError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        self.write_backup(true, out).await
    }

    /// Like [`Self::backup`], without the ReadIndex round: this node's own applied state, which
    /// needs no quorum (what disaster recovery starts from when the quorum is lost for good).
    /// Writes acknowledged by the cluster but not applied here yet are not in it.
    pub async fn backup_applied<W>(&self, out: W) -> Result<SavedBackup, BackupError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        self.write_backup(false, out).await
    }

    async fn write_backup<W>(
        &self,
        consistent: bool,
        mut out: W,
    ) -> Result<SavedBackup, BackupError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = self.calls.backup(consistent).await?;
        let file_size = stream.file_size();
        let mut check = HashCheck::new();
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            check.update(&piece);
            out.write_all(&piece).await.map_err(BackupError::Write)?;
        }
        out.flush().await.map_err(BackupError::Write)?;
        if check.len() != file_size {
            return Err(BackupError::Truncated {
                read: check.len(),
                expected: file_size,
            });
        }
        Ok(SavedBackup {
            index: stream.header.index,
            term: stream.header.term,
            file_size,
            hash: check.finish()?,
        })
    }

    /// A stream of cluster events from now on (a node that stopped for good answers with its
    /// fatal error; its `NodeStopped` event went to the subscribers of that time).
    pub async fn subscribe(&self) -> Result<EventStream, ReadError> {
        self.calls.subscribe().await
    }

    /// Events after event `after` of run `epoch` of this node's event bus (see
    /// [`EventStream::epoch`]), while the bus still holds them, then live ones: how a subscriber
    /// that lost its stream resumes without a gap.
    pub async fn subscribe_from(&self, epoch: u64, after: u64) -> Result<EventStream, ReadError> {
        self.calls.subscribe_from(epoch, after).await
    }

    /// The fatal error that stopped this node for good (removed, storage failure, corrupt
    /// data, the supervisor gave up restarting it). Every call fails with it from then on.
    pub fn fatal_error(&self) -> Option<FatalError> {
        self.calls.fatal_error()
    }

    /// Waits until the node stops for good on its own and returns why; `None` once it was shut
    /// down (or dropped) instead. A process that runs a node waits on this beside its signals.
    pub async fn stopped(&self) -> Option<FatalError> {
        let mut liveness = self.lifetime.liveness.clone();
        let stopped = liveness
            .wait_for(|l| !matches!(l, Liveness::Running))
            .await
            .ok()?;
        match &*stopped {
            Liveness::Failed(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// This node's view of the cluster.
    pub async fn status(&self) -> Result<NodeStatus, ReadError> {
        self.calls.status().await
    }

    /// The leader this node knows of (none once the node stopped).
    pub async fn leader(&self) -> Option<NodeId> {
        self.calls.leader()
    }

    /// Every metric of this node's registry (ours, iroh's endpoint metrics, and any the
    /// application registered) in the OpenMetrics text format Prometheus scrapes: what
    /// `/metrics` serves, without HTTP.
    pub fn export_metrics_prometheus(&self) -> String {
        self.calls.metrics().encode()
    }

    /// The node's metrics: read them directly, or register the application's own groups in
    /// `metrics().registry` so one page shows them all.
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        self.calls.metrics()
    }

    /// Liveness and readiness with the figures behind them: what `/health` serves.
    pub async fn get_health_status(&self) -> HealthStatus {
        self.calls.health_status().await
    }

    /// The liveness checks (all, or the one named): what `/livez` serves.
    pub async fn livez(&self, check: Option<&str>) -> HealthReport {
        self.calls.livez(check).await
    }

    /// The readiness checks (all, or the one named): what `/readyz` serves.
    pub async fn readyz(&self, check: Option<&str>) -> HealthReport {
        self.calls.readyz(check).await
    }

    /// Where the monitoring listener listens, if the builder was given
    /// [`crate::RaftClusterBuilder::metrics_addr`].
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.lifetime
            .metrics_server
            .as_ref()
            .map(MetricsServer::local_addr)
    }

    /// Stops the node: no new work, pending requests fail with `ShuttingDown`, connections close
    /// with a close code, everything written is fsynced. Idempotent; other clones see
    /// `ShuttingDown` afterwards.
    pub async fn shutdown(&self) -> Result<(), FatalError> {
        if self.lifetime.stopped.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(task) = &self.lifetime.backups {
            task.abort();
        }
        let result = self.lifetime.node.shutdown().await;
        self.lifetime.detach();
        if let Some(server) = &self.lifetime.metrics_server {
            server.close().await;
        }
        // Spans of this node's last work are sent before it is gone (blocking: off the runtime).
        #[cfg(feature = "otel")]
        let _ = tokio::task::spawn_blocking(crate::telemetry::flush).await;
        if let Some(router) = &self.lifetime.router {
            let _ = router.shutdown().await;
        } else if let Some(endpoint) = self.endpoint().filter(|_| self.lifetime.owns_endpoint) {
            endpoint.close().await;
        }
        result
    }
}
