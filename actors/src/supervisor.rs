//! [`NodeSupervisor`]: restarts a crashed StorageActor or RaftActor from durable state, and
//! gives up after [`MAX_RESTARTS`] within [`RESTART_WINDOW`].
//!
//! Children, in start order: the StorageActor, then the RaftActor (`RestForOne`: a StorageActor
//! restart restarts the RaftActor too, since its in-flight persistence is unknown; a RaftActor
//! restart leaves storage alone). A restarted RaftActor asks the StorageActor to write back its
//! queue and recover, then replays the log into a fresh state machine. Both restart only after
//! an abnormal stop (panic or error), never after an orderly shutdown.
//!
//! When a child is not restarted any more, the supervisor stops the other one, publishes a
//! [`FatalError`] on the node's [`Facts`] (so every call returns the typed reason) and a
//! `NodeStopped` event, and stays up.

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use kameo::{
    Actor,
    actor::{ActorId, ActorRef, WeakActorRef},
    error::{ActorStopReason, Infallible},
    message::{Context, Message},
    supervision::SupervisionStrategy,
};
use tracing::error;

use crate::{
    error::FatalError,
    events::{ClusterEvent, EventBus, Publish},
    facts::Facts,
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
    events: ActorRef<EventBus>,
    raft: Option<ActorRef<RaftActor<S>>>,
    storage: Option<ActorRef<StorageActor>>,
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
        } else {
            "child actor"
        }
    }
}

impl<S: StateMachine> Actor for NodeSupervisor<S> {
    type Args = SupervisorArgs;
    type Error = Infallible;

    fn supervision_strategy() -> SupervisionStrategy {
        SupervisionStrategy::RestForOne
    }

    async fn on_start(args: SupervisorArgs, _: ActorRef<Self>) -> Result<Self, Self::Error> {
        Ok(Self {
            node_id: args.node_id,
            facts: args.facts,
            events: args.events,
            raft: None,
            storage: None,
            failed: false,
        })
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
        if !self.failed {
            self.failed = true;
            let e = FatalError::ActorStopped {
                actor,
                reason: reason.to_string().into(),
            };
            // The RaftActor may have published its own fatal error first: that one stands.
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
        if let Some(raft) = &self.raft {
            let _ = raft.stop_gracefully().await;
        }
        if let Some(storage) = &self.storage {
            let _ = storage.stop_gracefully().await;
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// Tells the supervisor which children it has (they are spawned linked to it by the node).
pub struct Children<S: StateMachine> {
    /// The supervised RaftActor.
    pub raft: ActorRef<RaftActor<S>>,
    /// The supervised StorageActor.
    pub storage: ActorRef<StorageActor>,
}

impl<S: StateMachine> Message<Children<S>> for NodeSupervisor<S> {
    type Reply = ();

    async fn handle(&mut self, c: Children<S>, _: &mut Context<Self, ()>) {
        self.raft = Some(c.raft);
        self.storage = Some(c.storage);
    }
}
