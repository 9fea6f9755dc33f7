//! [`NodeSupervisor`]: restarts a crashed StorageActor or RaftActor from durable state, and
//! gives up after [`MAX_RESTARTS`] within [`RESTART_WINDOW`].
//!
//! Children, in start order: the StorageActor, then the RaftActor (`RestForOne`: a StorageActor
//! restart restarts the RaftActor too, since its in-flight persistence is unknown; a RaftActor
//! restart leaves storage alone). A restarted RaftActor asks the StorageActor to write back its
//! queue and recover, then replays the log into a fresh state machine. Both restart only after
//! an abnormal stop (panic or error), never after an orderly shutdown.
//!
//! A RaftActor built from a single state-machine instance (no factory) is not restarted: its
//! crash is fatal at once, with the panic's message and what to do about it.
//!
//! When the node can no longer serve — a child is not restarted any more, or the RaftActor
//! failed for good (removed, storage failure, corrupt or stale data) — the supervisor publishes
//! the [`FatalError`] on the node's [`Facts`] (so every call returns the typed reason) and a
//! `NodeStopped` event, stops its children, and stops itself *abnormally* with that error: an
//! application that supervises the node ([`SupervisorParent`]) or links to it sees
//! `ActorStopReason::Panicked`, from which [`node_failure`] gives the typed error back. An
//! orderly shutdown stops it normally.

use std::{
    ops::ControlFlow,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::future::BoxFuture;
use kameo::{
    Actor,
    actor::{ActorId, ActorRef, Spawn, WeakActorRef},
    error::ActorStopReason,
    mailbox::{MailboxReceiver, Signal},
    message::{Context, Message},
    supervision::{RestartPolicy, SupervisionStrategy},
};
use tokio::sync::watch;
use tracing::error;

use crate::{
    error::FatalError,
    events::{ClusterEvent, EventBus, Publish},
    facts::{Facts, Liveness},
    raft_actor::RaftActor,
    state_machine::StateMachine,
    storage::StorageActor,
    types::NodeId,
};

/// What the supervisor is started with.
#[derive(Debug, Clone)]
pub struct SupervisorArgs {
    /// The node's id, for logs and events.
    pub node_id: NodeId,
    /// Where a fatal error is published.
    pub facts: Arc<Facts>,
    /// Where `NodeStopped` is published when the supervisor gives up.
    pub events: ActorRef<EventBus>,
    /// Set at the first start: a node is started again by starting it anew, never by a parent
    /// restarting its supervisor (whose children would be gone).
    pub started: Arc<AtomicBool>,
}

/// Restarts allowed per child within [`RESTART_WINDOW`] before the node stops for good. A
/// deterministic bug (a command whose `apply` panics) fails the same way on every replay, so it
/// must not be retried forever.
pub const MAX_RESTARTS: u32 = 3;

/// The window [`MAX_RESTARTS`] is counted in.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Supervises one node's StorageActor and RaftActor.
pub struct NodeSupervisor<S: StateMachine> {
    node_id: NodeId,
    facts: Arc<Facts>,
    liveness: watch::Receiver<Liveness>,
    events: ActorRef<EventBus>,
    raft: Option<ActorRef<RaftActor<S>>>,
    storage: Option<ActorRef<StorageActor>>,
    mgmt: Option<ActorId>,
    /// Whether the RaftActor can be restarted (its state machine comes from a factory).
    raft_restartable: bool,
    failed: bool,
}

impl<S: StateMachine> std::fmt::Debug for NodeSupervisor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSupervisor")
            .field("node_id", &self.node_id)
            .field("failed", &self.failed)
            .finish()
    }
}

impl<S: StateMachine> NodeSupervisor<S> {
    fn child_name(&self, id: ActorId) -> &'static str {
        if self.raft.as_ref().is_some_and(|r| r.id() == id) {
            "RaftActor"
        } else if self.storage.as_ref().is_some_and(|r| r.id() == id) {
            "StorageActor"
        } else if self.mgmt == Some(id) {
            "MgmtActor"
        } else {
            "child actor"
        }
    }
}

impl<S: StateMachine> Actor for NodeSupervisor<S> {
    type Args = SupervisorArgs;
    type Error = FatalError;

    fn supervision_strategy() -> SupervisionStrategy {
        SupervisionStrategy::RestForOne
    }

    async fn on_start(args: SupervisorArgs, _: ActorRef<Self>) -> Result<Self, Self::Error> {
        if args.started.swap(true, Ordering::SeqCst) {
            return Err(FatalError::ActorStopped {
                actor: "NodeSupervisor",
                reason: "restarted by its parent, without the node's actors: start the node \
                         again instead (supervise it with OneForOne)"
                    .into(),
            });
        }
        Ok(Self {
            node_id: args.node_id,
            liveness: args.facts.liveness(),
            facts: args.facts,
            events: args.events,
            raft: None,
            storage: None,
            mgmt: None,
            raft_restartable: true,
            failed: false,
        })
    }

    async fn next(
        &mut self,
        _: WeakActorRef<Self>,
        mailbox_rx: &mut MailboxReceiver<Self>,
    ) -> Result<Option<Signal<Self>>, Self::Error> {
        loop {
            tokio::select! {
                biased;
                signal = mailbox_rx.recv() => return Ok(signal),
                changed = self.liveness.changed() => {
                    if changed.is_err() {
                        return Ok(mailbox_rx.recv().await);
                    }
                    let failure = match &*self.liveness.borrow_and_update() {
                        Liveness::Failed(e) => Some(e.clone()),
                        _ => None,
                    };
                    if let Some(e) = failure {
                        self.stop_children().await;
                        return Err(e);
                    }
                }
            }
        }
    }

    async fn on_link_died(
        &mut self,
        _: WeakActorRef<Self>,
        id: ActorId,
        reason: ActorStopReason,
    ) -> Result<ControlFlow<ActorStopReason>, Self::Error> {
        if matches!(
            reason,
            ActorStopReason::Normal | ActorStopReason::SupervisorRestart
        ) {
            return Ok(ControlFlow::Continue(()));
        }
        let actor = self.child_name(id);
        error!(node = self.node_id, actor, %reason, "actor stopped for good; node stops");
        let mut why = reason.to_string();
        if actor == "RaftActor" && !self.raft_restartable {
            why.push_str(
                "; the node was built from a single state-machine instance, so the RaftActor \
                 cannot be restarted with a fresh one: build it with a state-machine factory",
            );
        }
        self.fail(FatalError::ActorStopped {
            actor,
            reason: why.into(),
        });
        // The next turn of `next` sees the failure, stops the other child and stops this
        // supervisor with it.
        Ok(ControlFlow::Continue(()))
    }
}

impl<S: StateMachine> NodeSupervisor<S> {
    /// Publishes the node's fatal error (the first one stands) and a `NodeStopped` event.
    fn fail(&mut self, e: FatalError) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.facts.fail(e);
        if let Some(e) = self.facts.failure() {
            let stopped = ClusterEvent::NodeStopped {
                node: self.node_id,
                removed: matches!(e, FatalError::Removed { .. }),
                reason: e.to_string(),
            };
            let _ = self.events.tell(Publish(stopped)).try_send();
        }
    }

    /// Asks both children to stop. Not waited for here: a supervised child's stop completes
    /// only once this supervisor has handled it, which it does after this turn.
    async fn stop_children(&mut self) {
        if let Some(raft) = &self.raft {
            let _ = raft.stop_gracefully().await;
        }
        if let Some(storage) = &self.storage {
            // Whatever reached it is written and fsynced as it stops.
            let _ = storage.stop_gracefully().await;
        }
    }
}

/// The fatal error a node's supervisor stopped with, from the stop reason an application's
/// supervisor (or a linked actor) received: `None` for an orderly stop or another actor.
pub fn node_failure(reason: &ActorStopReason) -> Option<FatalError> {
    match reason {
        ActorStopReason::Panicked(p) => p.downcast::<FatalError>(),
        ActorStopReason::LinkDied { reason, .. } => node_failure(reason),
        _ => None,
    }
}

/// Where a node's [`NodeSupervisor`] is spawned: as a child of an application's actor (its
/// supervisor), so that the node is part of the application's supervision tree. The node
/// restarts its own crashed actors; it is spawned with [`RestartPolicy::Never`] under the
/// parent, so when it stops for good the parent's `on_link_died` gets the abnormal stop
/// (see [`node_failure`]) and decides: start the node again on its data dir, or stop.
pub struct SupervisorParent<S: StateMachine> {
    spawn: Arc<
        dyn Fn(SupervisorArgs) -> BoxFuture<'static, ActorRef<NodeSupervisor<S>>> + Send + Sync,
    >,
}

impl<S: StateMachine> Clone for SupervisorParent<S> {
    fn clone(&self) -> Self {
        Self {
            spawn: self.spawn.clone(),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for SupervisorParent<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorParent").finish_non_exhaustive()
    }
}

impl<S: StateMachine> SupervisorParent<S> {
    /// The node's supervisor becomes a child of `parent`.
    pub fn of<A: Actor>(parent: &ActorRef<A>) -> Self {
        let parent = parent.clone();
        Self {
            spawn: Arc::new(move |args| {
                let parent = parent.clone();
                Box::pin(async move {
                    NodeSupervisor::<S>::supervise(&parent, args)
                        .restart_policy(RestartPolicy::Never)
                        .spawn()
                        .await
                })
            }),
        }
    }

    pub(crate) async fn spawn(&self, args: SupervisorArgs) -> ActorRef<NodeSupervisor<S>> {
        (self.spawn)(args).await
    }
}

/// Tells the supervisor which children it has (they are spawned linked to it by the node).
pub struct Children<S: StateMachine> {
    /// The supervised RaftActor.
    pub raft: ActorRef<RaftActor<S>>,
    /// The supervised StorageActor.
    pub storage: ActorRef<StorageActor>,
    /// The supervised MgmtActor.
    pub mgmt: ActorId,
    /// Whether the RaftActor is restarted after a crash (its state machine has a factory).
    pub raft_restartable: bool,
}

impl<S: StateMachine> Message<Children<S>> for NodeSupervisor<S> {
    type Reply = ();

    async fn handle(&mut self, c: Children<S>, _: &mut Context<Self, ()>) {
        self.raft = Some(c.raft);
        self.storage = Some(c.storage);
        self.raft_restartable = c.raft_restartable;
        self.mgmt = Some(c.mgmt);
    }
}
