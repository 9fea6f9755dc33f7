//! [`NodeCalls`]: the calls on one node's actors with their semantics — deadlines, retries of
//! what was certainly not applied, and the mapping of a failed `ask` onto the caller's typed
//! error. The facade's `RaftCluster`, the management lanes and the membership workflows all
//! call the node through it, so each call means the same wherever it comes from.
//!
//! A cheap clone over the node's actor references and watches; it holds no lock and no state.

use std::{sync::Arc, time::Duration};

use kameo::{actor::ActorRef, error::SendError};
use tokio::time::Instant;
use tracing::Instrument;

use crate::{
    config::NodeConfig,
    error::{FatalError, ProposeError, ReadError, SnapshotError},
    events::{EventBus, EventStream, Subscribe, SubscribeFrom},
    facts::{Facts, Liveness},
    metrics::NodeMetrics,
    raft_actor::{GetStatus, LinearizableQuery, Propose, Query, RaftActor, TriggerSnapshot},
    state_machine::StateMachine,
    storage::DbHandle,
    types::{NodeId, NodeStatus},
    wire::MAX_COMMAND_SIZE,
};

mod backup;
mod health;
mod membership;

pub use backup::{BACKUP_PIECE, BackupStream};
pub use health::{
    CHECK_TIMEOUT, HealthCheck, HealthReport, HealthStatus, LIVEZ_CHECKS, RAFT_STALL,
    READY_MAX_LAG, READYZ_CHECKS, STUCK_WRITE,
};
pub use membership::{JoinOptions, Transferred};

/// How much longer than a proposal's deadline the handle waits for the RaftActor's answer. The
/// actor answers at the first tick past the deadline (a tick is a fraction of a heartbeat,
/// far below this in every preset), so this fires only when the actor cannot run at all (its
/// disk does not return); the answer is then [`ProposeError::Timeout`] too.
const BACKSTOP: Duration = Duration::from_secs(1);

/// Calls on one node's actors. Cheap to clone.
pub struct NodeCalls<S: StateMachine> {
    node_id: NodeId,
    raft: ActorRef<RaftActor<S>>,
    events: ActorRef<EventBus>,
    facts: Arc<Facts>,
    metrics: Arc<NodeMetrics>,
    /// The node's database, for backups to read snapshots from.
    db: DbHandle,
    /// Backups this node streams at once (each pins a snapshot and buffers pieces).
    backups: Arc<tokio::sync::Semaphore>,
    request_timeout: Duration,
    retry_interval: Duration,
}

impl<S: StateMachine> Clone for NodeCalls<S> {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id,
            raft: self.raft.clone(),
            events: self.events.clone(),
            facts: self.facts.clone(),
            metrics: self.metrics.clone(),
            db: self.db.clone(),
            backups: self.backups.clone(),
            request_timeout: self.request_timeout,
            retry_interval: self.retry_interval,
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for NodeCalls<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCalls")
            .field("node_id", &self.node_id)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// How an `ask` to the RaftActor failed, before it is turned into the caller's error type.
pub(crate) enum AskFailure<E> {
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
    pub(crate) fn from_send<M>(e: SendError<M, E>) -> Self {
        match e {
            SendError::HandlerError(e) => AskFailure::Refused(e),
            SendError::Timeout(_) => AskFailure::Timeout,
            SendError::ActorStopped | SendError::ActorRestarting(_) => AskFailure::Interrupted,
            _ => AskFailure::NotRunning,
        }
    }
}

impl<S: StateMachine> NodeCalls<S> {
    /// Calls on the node whose actors these are: a call waits at most the config's request
    /// timeout, and what is safe to retry is retried every heartbeat interval until then.
    pub(crate) fn new(
        config: &NodeConfig,
        raft: ActorRef<RaftActor<S>>,
        events: ActorRef<EventBus>,
        (facts, metrics, db): (Arc<Facts>, Arc<NodeMetrics>, DbHandle),
    ) -> Self {
        Self {
            node_id: config.node_id,
            raft,
            events,
            facts,
            metrics,
            db,
            backups: Arc::new(tokio::sync::Semaphore::new(backup::MAX_BACKUPS)),
            request_timeout: config.request_timeout,
            retry_interval: config.heartbeat_interval,
        }
    }

    /// The node's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The node's membership, leadership and liveness.
    pub fn facts(&self) -> &Arc<Facts> {
        &self.facts
    }

    /// The node's metrics and their registry.
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.metrics
    }

    /// The caller's error for an `ask` about a proposal (to any of the node's actors) that
    /// failed.
    pub(crate) fn propose_failed<M, E: Into<ProposeError>>(
        &self,
        e: SendError<M, E>,
    ) -> ProposeError {
        let e = match e {
            SendError::HandlerError(e) => SendError::HandlerError(e.into()),
            SendError::ActorNotRunning(_) => SendError::ActorNotRunning(()),
            SendError::ActorStopped => SendError::ActorStopped,
            SendError::MailboxFull(_) => SendError::MailboxFull(()),
            SendError::Timeout(_) => SendError::Timeout(None),
            SendError::ActorRestarting(_) => SendError::ActorRestarting(()),
        };
        self.propose_error(AskFailure::from_send(e))
    }

    /// The caller's error for an `ask` about a read that failed.
    pub(crate) fn read_failed<M>(&self, e: SendError<M, ReadError>) -> ReadError {
        self.read_error(AskFailure::from_send(e))
    }

    /// How long a call waits.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    fn propose_error(&self, f: AskFailure<ProposeError>) -> ProposeError {
        match f {
            AskFailure::Refused(e) => e,
            AskFailure::Timeout => ProposeError::Timeout,
            AskFailure::Interrupted => ProposeError::Interrupted,
            AskFailure::NotRunning => match self.stopped() {
                Liveness::Failed(e) => ProposeError::Fatal(e),
                Liveness::ShutDown => ProposeError::ShuttingDown,
                // Not running, yet neither failed nor shut down: it crashed and the
                // supervisor's verdict is not out yet. The outcome is unknown.
                Liveness::Running => ProposeError::Interrupted,
            },
        }
    }

    /// Why the node's actors do not run (as far as is known now).
    fn stopped(&self) -> Liveness {
        self.facts.liveness_now()
    }

    fn read_error(&self, f: AskFailure<ReadError>) -> ReadError {
        match f {
            AskFailure::Refused(e) => e,
            AskFailure::Timeout => ReadError::Timeout,
            AskFailure::Interrupted => ReadError::Interrupted,
            AskFailure::NotRunning => match self.stopped() {
                Liveness::Failed(e) => ReadError::Fatal(e),
                Liveness::ShutDown => ReadError::ShuttingDown,
                Liveness::Running => ReadError::Interrupted,
            },
        }
    }

    /// Replicates a command already encoded with postcard and returns the state machine's
    /// response once it is applied. Works on any node: a follower forwards to the leader. While
    /// there is no leader, or when the command was certainly not applied
    /// ([`ProposeError::is_safe_to_retry`]), it retries until the request timeout. An `Ok` means
    /// the entry is committed (durable on a quorum) and applied here; [`ProposeError::Timeout`]
    /// means the outcome is unknown.
    pub async fn propose_encoded(&self, data: Vec<u8>) -> Result<S::Response, ProposeError> {
        // Counted once per call, by its final outcome (a retried refusal is not a failure).
        let started = Instant::now();
        // The proposal's trace starts here (its context rides with it: see `crate::trace`); an
        // unsampled proposal opens no span at all.
        let span = match crate::trace::sample_proposal() {
            true => tracing::info_span!("propose", node = self.node_id),
            false => tracing::Span::none(),
        };
        let outcome = self.propose_attempts(data).instrument(span).await;
        let m = &self.metrics.consensus;
        match &outcome {
            Ok(_) => m
                .proposal_duration_seconds
                .observe(started.elapsed().as_secs_f64()),
            Err(e) => m.failed(e),
        }
        outcome
    }

    async fn propose_attempts(&self, data: Vec<u8>) -> Result<S::Response, ProposeError> {
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
                .raft
                .ask(Propose::until(data.clone(), deadline))
                .reply_timeout(remaining + BACKSTOP)
                .await
            {
                Ok(response) => Ok(response),
                Err(e) => Err(self.propose_error(AskFailure::from_send(e))),
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
            .raft
            .ask(Query(f))
            .reply_timeout(self.request_timeout)
            .await
        {
            Ok(r) => Ok(r),
            Err(e) => Err(self.read_error(AskFailure::from_send(e))),
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
                .raft
                .ask(LinearizableQuery(f.clone()))
                .reply_timeout(remaining)
                .await
            {
                Ok(r) => Ok(r),
                Err(e) => Err(self.read_error(AskFailure::from_send(e))),
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
        match self.raft.ask(TriggerSnapshot).await {
            Ok(index) => Ok(index),
            Err(SendError::HandlerError(e)) => Err(e),
            Err(_) => match self.facts.failure() {
                Some(e) => Err(SnapshotError::Fatal(e)),
                None => Err(SnapshotError::ShuttingDown),
            },
        }
    }

    /// A stream of cluster events from now on (a node that stopped for good answers with its
    /// fatal error; its `NodeStopped` event went to the subscribers of that time).
    pub async fn subscribe(&self) -> Result<EventStream, ReadError> {
        self.check_alive()?;
        self.events
            .ask(Subscribe)
            .await
            .map_err(|_| ReadError::ShuttingDown)
    }

    /// Events after event `after` of run `epoch` of this node's event bus (see
    /// [`EventStream::epoch`]), while the bus still holds them, then live ones: how a subscriber
    /// that lost its stream resumes without a gap.
    pub async fn subscribe_from(&self, epoch: u64, after: u64) -> Result<EventStream, ReadError> {
        self.events
            .ask(SubscribeFrom { epoch, after })
            .await
            .map_err(|_| ReadError::ShuttingDown)
    }

    /// The fatal error that stopped this node for good (removed, storage failure, corrupt
    /// data, the supervisor gave up restarting it), once the handle has seen it. Every call
    /// fails with it from then on.
    pub fn fatal_error(&self) -> Option<FatalError> {
        self.facts.failure()
    }

    /// `Err` with the node's fatal error, if it has one.
    pub fn check_alive(&self) -> Result<(), ReadError> {
        match self.fatal_error() {
            Some(e) => Err(ReadError::Fatal(e)),
            None => Ok(()),
        }
    }

    /// This node's view of the cluster.
    pub async fn status(&self) -> Result<NodeStatus, ReadError> {
        self.check_alive()?;
        match self
            .raft
            .ask(GetStatus)
            .reply_timeout(self.request_timeout)
            .await
        {
            Ok(s) => Ok(s),
            Err(SendError::Timeout(_)) => Err(ReadError::Timeout),
            Err(SendError::ActorStopped) => Err(ReadError::Interrupted),
            Err(_) => Err(self.read_error(AskFailure::NotRunning)),
        }
    }

    /// The leader this node knows of (none once the node stopped).
    pub fn leader(&self) -> Option<NodeId> {
        self.facts.leader()
    }
}
