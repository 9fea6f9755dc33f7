//! [`NodeSupervisor`]: restarts a crashed StorageActor or RaftActor from durable state, and
//! gives up after [`MAX_RESTARTS`] within [`RESTART_WINDOW`].
//!
//! Children, in start order: the StorageActor, then the RaftActor (`RestForOne`: a StorageActor
//! restart restarts the RaftActor too, since its in-flight persistence is unknown; a RaftActor
//! restart leaves storage alone). A restarted RaftActor asks the StorageActor to write back its
//! queue and recover, then replays the log into a fresh state machine. Both restart only after
//! an abnormal stop (panic or error), never after an orderly shutdown.
//!
//! When a child is not restarted any more, the supervisor stops the other one, records a
//! [`FatalError`] and stays up to report it: the facade asks for it when the RaftActor no longer
//! answers, so every call returns the typed reason.

use std::{ops::ControlFlow, time::Duration};

use kameo::{
    Actor,
    actor::{ActorId, ActorRef, WeakActorRef},
    error::{ActorStopReason, Infallible},
    message::{Context, Message},
    supervision::SupervisionStrategy,
};
use tracing::error;

use crate::{
    error::FatalError, raft_actor::RaftActor, state_machine::StateMachine, storage::StorageActor,
    types::NodeId,
};

/// Restarts allowed per child within [`RESTART_WINDOW`] before the node stops for good. A
/// deterministic bug (a command whose `apply` panics) fails the same way on every replay, so it
/// must not be retried forever.
pub const MAX_RESTARTS: u32 = 3;

/// The window [`MAX_RESTARTS`] is counted in.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Supervises one node's StorageActor and RaftActor.
pub struct NodeSupervisor<S: StateMachine> {
    node_id: NodeId,
    raft: Option<ActorRef<RaftActor<S>>>,
    storage: Option<ActorRef<StorageActor>>,
    failure: Option<FatalError>,
}

impl<S: StateMachine> std::fmt::Debug for NodeSupervisor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSupervisor")
            .field("node_id", &self.node_id)
            .field("failure", &self.failure)
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
    type Args = NodeId;
    type Error = Infallible;

    fn supervision_strategy() -> SupervisionStrategy {
        SupervisionStrategy::RestForOne
    }

    async fn on_start(node_id: NodeId, _: ActorRef<Self>) -> Result<Self, Self::Error> {
        Ok(Self {
            node_id,
            raft: None,
            storage: None,
            failure: None,
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
        if self.failure.is_none() {
            self.failure = Some(FatalError::ActorStopped {
                actor,
                reason: reason.to_string().into(),
            });
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

/// The fatal error that stopped the node, if one did.
#[derive(Debug, Clone, Copy)]
pub struct GetFailure;

impl<S: StateMachine> Message<GetFailure> for NodeSupervisor<S> {
    type Reply = Option<FatalError>;

    async fn handle(&mut self, _: GetFailure, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        self.failure.clone()
    }
}
