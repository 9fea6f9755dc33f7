//! [`RaftCluster`]: the handle applications hold. A cheap `Clone` over actor references; every
//! call is a message to the node's actors.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use iroh::{Endpoint, protocol::Router};
use iroh_raft_actors::{
    ClusterId, CodecError, EventStream, FatalError, GetStatus, LinearizableQuery, Liveness, Node, NodeId,
    NodeStatus, Propose, ProposeError, Query, RaftProtocol, ReadError, SnapshotError, StateMachine,
    Subscribe, Ticket, TicketRole, TriggerSnapshot, wire::MAX_COMMAND_SIZE,
};
use kameo::error::SendError;
use tokio::time::Instant;

/// How much longer than a proposal's deadline the handle waits for the RaftActor's answer. The
/// actor answers at the first tick past the deadline (a tick is a fraction of a heartbeat,
/// far below this in every preset), so this fires only when the actor cannot run at all (its
/// disk does not return); the answer is then [`ProposeError::Timeout`] too.
const BACKSTOP: Duration = Duration::from_secs(1);

use crate::{
    discovery::DiscoveryProtocol,
    mgmt::MgmtProtocol,
    net::{PeerAddr, endpoint_peer_addr},
};

/// Owns the node for as long as any handle exists; stops it when the last one goes away without
/// `shutdown` having been called.
pub(crate) struct Lifetime<S: StateMachine> {
    node: Node<S>,
    endpoint: Endpoint,
    router: Option<Router>,
    owns_endpoint: bool,
    pub(crate) stopped: AtomicBool,
    discovery: DiscoveryProtocol<S>,
    mgmt: MgmtProtocol<S>,
    /// Whether the node still serves (published by the runtime).
    liveness: tokio::sync::watch::Receiver<Liveness>,
}

impl<S: StateMachine> Lifetime<S> {
    pub(crate) fn new(
        node: Node<S>,
        endpoint: Endpoint,
        router: Option<Router>,
        owns_endpoint: bool,
        (discovery, mgmt): (DiscoveryProtocol<S>, MgmtProtocol<S>),
    ) -> Self {
        Self {
            liveness: node.facts.liveness(),
            node,
            endpoint,
            router,
            owns_endpoint,
            stopped: AtomicBool::new(false),
            discovery,
            mgmt,
        }
    }
}

impl<S: StateMachine> Drop for Lifetime<S> {
    fn drop(&mut self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        // No await in Drop: kill the actors (the StorageActor still makes what it received
        // durable as it stops) and close the network in the background if a runtime is there.
        self.node.kill();
        let router = self.router.take();
        let endpoint = self.owns_endpoint.then(|| self.endpoint.clone());
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
    node_id: NodeId,
    node: Node<S>,
    endpoint: Endpoint,
    pub(crate) request_timeout: Duration,
    pub(crate) retry_interval: Duration,
    lifetime: Arc<Lifetime<S>>,
}

impl<S: StateMachine> Clone for RaftCluster<S> {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id,
            node: self.node.clone(),
            endpoint: self.endpoint.clone(),
            request_timeout: self.request_timeout,
            retry_interval: self.retry_interval,
            lifetime: self.lifetime.clone(),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for RaftCluster<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftCluster")
            .field("node_id", &self.node_id)
            .field("endpoint", &self.endpoint.id())
            .finish()
    }
}

/// A [`RaftCluster`] that does not keep its node alive (held by handlers the node's own router
/// owns).
pub(crate) struct WeakCluster<S: StateMachine> {
    node_id: NodeId,
    request_timeout: Duration,
    retry_interval: Duration,
    lifetime: std::sync::Weak<Lifetime<S>>,
}

impl<S: StateMachine> WeakCluster<S> {
    /// The node, if it is still running.
    pub(crate) fn upgrade(&self) -> Option<RaftCluster<S>> {
        let lifetime = self.lifetime.upgrade()?;
        if lifetime.stopped.load(Ordering::Acquire) {
            return None;
        }
        Some(RaftCluster {
            node_id: self.node_id,
            node: lifetime.node.clone(),
            endpoint: lifetime.endpoint.clone(),
            request_timeout: self.request_timeout,
            retry_interval: self.retry_interval,
            lifetime,
        })
    }
}

/// How an `ask` to the RaftActor failed, before it is turned into the caller's error type.
enum AskFailure<E> {
    /// The handler answered with an error.
    Refused(E),
    /// No answer within the deadline.
    Timeout,
    /// The actor stopped (crashed) with the request in hand.
    Interrupted,
    /// The actor is not running: shut down, or stopped for good after a fatal error.
    NotRunning,
}

impl<E> AskFailure<E> {
    fn from_send<M>(e: SendError<M, E>) -> Self {
        match e {
            SendError::HandlerError(e) => AskFailure::Refused(e),
            SendError::Timeout(_) => AskFailure::Timeout,
            SendError::ActorStopped | SendError::ActorRestarting(_) => AskFailure::Interrupted,
            _ => AskFailure::NotRunning,
        }
    }
}

impl<S: StateMachine> RaftCluster<S> {
    async fn propose_error(&self, f: AskFailure<ProposeError>) -> ProposeError {
        match f {
            AskFailure::Refused(e) => e,
            AskFailure::Timeout => ProposeError::Timeout,
            AskFailure::Interrupted => ProposeError::Interrupted,
            AskFailure::NotRunning => match self.node.failure() {
                Some(e) => ProposeError::Fatal(e),
                None => ProposeError::ShuttingDown,
            },
        }
    }

    async fn read_error(&self, f: AskFailure<ReadError>) -> ReadError {
        match f {
            AskFailure::Refused(e) => e,
            AskFailure::Timeout => ReadError::Timeout,
            AskFailure::Interrupted => ReadError::Interrupted,
            AskFailure::NotRunning => match self.node.failure() {
                Some(e) => ReadError::Fatal(e),
                None => ReadError::ShuttingDown,
            },
        }
    }

    pub(crate) fn new(
        node_id: NodeId,
        request_timeout: Duration,
        retry_interval: Duration,
        lifetime: Lifetime<S>,
    ) -> Self {
        Self {
            node_id,
            node: lifetime.node.clone(),
            endpoint: lifetime.endpoint.clone(),
            request_timeout,
            retry_interval,
            lifetime: Arc::new(lifetime),
        }
    }

    /// A handle that does not keep the node alive.
    pub(crate) fn downgrade(&self) -> WeakCluster<S> {
        WeakCluster {
            node_id: self.node_id,
            request_timeout: self.request_timeout,
            retry_interval: self.retry_interval,
            lifetime: Arc::downgrade(&self.lifetime),
        }
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The iroh endpoint the node uses.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The address other members should use for this node.
    pub fn peer_addr(&self) -> PeerAddr {
        endpoint_peer_addr(&self.endpoint)
    }

    /// The consensus protocol handler, for applications that run their own iroh `Router`
    /// (see [`crate::RaftClusterBuilder::external_router`]); mount it under
    /// [`iroh_raft_actors::wire::ALPN`].
    pub fn protocol_handler(&self) -> RaftProtocol {
        self.node.protocol.clone()
    }

    /// The discovery protocol handler (newcomers present join tickets to it), for applications
    /// that run their own iroh `Router`; mount it under
    /// [`iroh_raft_actors::wire::DISCOVERY_ALPN`].
    pub fn discovery_handler(&self) -> DiscoveryProtocol<S> {
        self.lifetime.discovery.clone()
    }

    /// The management protocol handler, for applications that run their own iroh `Router`;
    /// mount it under [`iroh_raft_actors::wire::MGMT_ALPN`].
    pub fn mgmt_handler(&self) -> MgmtProtocol<S> {
        self.lifetime.mgmt.clone()
    }

    /// Mints a ticket signed by this node's key: `role` is what it grants (join the cluster,
    /// administer it, or read), `valid_for` how long. It names up to 64 current members to
    /// contact, and stays valid while this node is a member and it has not expired.
    pub async fn ticket(&self, role: TicketRole, valid_for: Duration) -> Result<Ticket, ReadError> {
        let view = self.members_view().await?;
        let members = view
            .members
            .into_iter()
            .take(iroh_raft_actors::MAX_TICKET_MEMBERS)
            .map(|m| m.addr)
            .collect();
        Ok(Ticket::issue(
            self.endpoint.secret_key(),
            ClusterId(view.cluster_id),
            members,
            role,
            std::time::SystemTime::now() + valid_for,
        ))
    }

    /// The node's actors, for applications that supervise or talk to them directly.
    pub fn actors(&self) -> &Node<S> {
        &self.node
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
        if data.len() > MAX_COMMAND_SIZE {
            return Err(ProposeError::TooLarge {
                size: data.len(),
                max: MAX_COMMAND_SIZE,
            });
        }
        // The RaftActor owns each attempt's deadline (see `Propose`); the reply timeout here is
        // a backstop for an actor that cannot run at all, and the loop only retries what was
        // certainly not applied.
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = match self
                .node
                .raft
                .ask(Propose::until(data.clone(), deadline))
                .reply_timeout(remaining + BACKSTOP)
                .await
            {
                Ok(response) => Ok(response),
                Err(e) => Err(self.propose_error(AskFailure::from_send(e)).await),
            };
            match result {
                Err(e)
                    if e.is_safe_to_retry() && Instant::now() + self.retry_interval < deadline =>
                {
                    tokio::time::sleep(self.retry_interval).await;
                }
                Err(e) if e.is_safe_to_retry() => return Err(e),
                other => return other,
            }
        }
    }

    /// Runs `f` on this node's state machine now. Fast, but on a follower (or a partitioned
    /// leader) it may see a stale state.
    pub async fn query<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        F: FnOnce(&S) -> R + Send + 'static,
        R: Send + 'static,
    {
        match self
            .node
            .raft
            .ask(Query(f))
            .reply_timeout(self.request_timeout)
            .await
        {
            Ok(r) => Ok(r),
            Err(e) => Err(self.read_error(AskFailure::from_send(e)).await),
        }
    }

    /// Runs `f` on this node's state machine once a ReadIndex round proves the node has applied
    /// everything committed before the call: the result is linearizable. Works on followers.
    /// Retries while there is no leader, until the request timeout.
    pub async fn linearizable_query<R, F>(&self, f: F) -> Result<R, ReadError>
    where
        F: FnOnce(&S) -> R + Send + Sync + Clone + 'static,
        R: Send + 'static,
    {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = match self
                .node
                .raft
                .ask(LinearizableQuery(f.clone()))
                .reply_timeout(remaining)
                .await
            {
                Ok(r) => Ok(r),
                Err(e) => Err(self.read_error(AskFailure::from_send(e)).await),
            };
            match result {
                Err(
                    ReadError::NoLeader | ReadError::LeadershipChanged | ReadError::Interrupted,
                ) if Instant::now() + self.retry_interval < deadline => {
                    tokio::time::sleep(self.retry_interval).await;
                }
                other => return other,
            }
        }
    }

    /// Takes a snapshot of this node's state machine now and compacts its log behind it; returns
    /// the index the snapshot covers once it is durable. Appends and commits go on meanwhile.
    pub async fn trigger_snapshot(&self) -> Result<u64, SnapshotError> {
        if let Some(e) = self.fatal_error() {
            return Err(SnapshotError::Fatal(e));
        }
        match self.node.raft.ask(TriggerSnapshot).await {
            Ok(index) => Ok(index),
            Err(SendError::HandlerError(e)) => Err(e),
            Err(_) => match self.node.failure() {
                Some(e) => Err(SnapshotError::Fatal(e)),
                None => Err(SnapshotError::ShuttingDown),
            },
        }
    }

    /// A stream of cluster events from now on (a node that stopped for good answers with its
    /// fatal error; its `NodeStopped` event went to the subscribers of that time).
    pub async fn subscribe(&self) -> Result<EventStream, ReadError> {
        self.check_alive()?;
        self.node
            .events
            .ask(Subscribe)
            .await
            .map_err(|_| ReadError::ShuttingDown)
    }

    /// Events after event `after` of run `epoch` of this node's event bus (see
    /// [`EventStream::epoch`]), while the bus still holds them, then live ones: how a subscriber
    /// that lost its stream resumes without a gap.
    pub async fn subscribe_from(&self, epoch: u64, after: u64) -> Result<EventStream, ReadError> {
        self.node
            .events
            .ask(iroh_raft_actors::SubscribeFrom { epoch, after })
            .await
            .map_err(|_| ReadError::ShuttingDown)
    }

    /// The fatal error that stopped this node for good (removed, storage failure, corrupt
    /// data, the supervisor gave up restarting it), once the handle has seen it. Every call
    /// fails with it from then on.
    pub fn fatal_error(&self) -> Option<FatalError> {
        match &*self.lifetime.liveness.borrow() {
            Liveness::Failed(e) => Some(e.clone()),
            _ => None,
        }
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

    /// `Err` with the node's fatal error, if it has one.
    pub(crate) fn check_alive(&self) -> Result<(), ReadError> {
        match self.fatal_error() {
            Some(e) => Err(ReadError::Fatal(e)),
            None => Ok(()),
        }
    }

    /// This node's view of the cluster.
    pub async fn status(&self) -> Result<NodeStatus, ReadError> {
        self.check_alive()?;
        match self
            .node
            .raft
            .ask(GetStatus)
            .reply_timeout(self.request_timeout)
            .await
        {
            Ok(s) => Ok(s),
            Err(SendError::Timeout(_)) => Err(ReadError::Timeout),
            Err(SendError::ActorStopped) => Err(ReadError::Interrupted),
            Err(_) => Err(self.read_error(AskFailure::NotRunning).await),
        }
    }

    /// The leader this node knows of (none once the node stopped).
    pub async fn leader(&self) -> Option<NodeId> {
        self.node.facts.leader()
    }

    /// Stops the node: no new work, pending requests fail with `ShuttingDown`, connections close
    /// with a close code, everything written is fsynced. Idempotent; other clones see
    /// `ShuttingDown` afterwards.
    pub async fn shutdown(&self) -> Result<(), FatalError> {
        if self.lifetime.stopped.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self.node.shutdown().await;
        if let Some(router) = &self.lifetime.router {
            let _ = router.shutdown().await;
        } else if self.lifetime.owns_endpoint {
            self.endpoint.close().await;
        }
        result
    }
}
