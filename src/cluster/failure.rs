//! Watches a node for the fatal error that stops it for good, so that its handle reports the
//! error on every call ([`RaftCluster::fatal_error`] is checked first) and in its events, and
//! [`RaftCluster::stopped`] resolves.
//!
//! A node stops on its own in one of two ways. The RaftActor fails (removed, storage failure,
//! corrupt data): it stays up refusing all work with the error and publishes
//! `ClusterEvent::NodeStopped`. Or the supervisor gives up restarting a child: the RaftActor is
//! gone for good, the supervisor holds the error, and no event was published — the watcher
//! publishes it, so that subscribers learn of every stop the same way.

use iroh_raft_actors::{
    ClusterEvent, EventItem, FatalError, Node, NodeId, Publish, Query, ReadError, StateMachine,
    Subscribe,
};
use kameo::error::SendError;
use tokio::sync::watch;

/// Starts the watcher of `node`; the receiver sees its fatal error once there is one (and
/// closes without one if the node was shut down).
pub(super) fn spawn<S: StateMachine>(
    id: NodeId,
    node: &Node<S>,
) -> watch::Receiver<Option<FatalError>> {
    let (failure, seen) = watch::channel(None);
    let node = node.clone();
    tokio::spawn(async move {
        if let Some(e) = watch_node(id, &node).await {
            failure.send_replace(Some(e));
        }
    });
    seen
}

/// The node's fatal error once it has one; `None` if it stopped without one (shut down).
async fn watch_node<S: StateMachine>(id: NodeId, node: &Node<S>) -> Option<FatalError> {
    // Subscribe first, then look: a failure before the subscription is found by the look, one
    // after it by the event.
    let mut events = node.events.ask(Subscribe).await.ok()?;
    if let Some(e) = probe(node).await {
        return Some(e);
    }
    loop {
        tokio::select! {
            biased;
            () = node.raft.wait_for_shutdown() => {
                // Stopped for good: the supervisor gave up (and holds the error), or shutdown.
                let e = node.failure().await?;
                let stopped = ClusterEvent::NodeStopped {
                    node: id,
                    removed: matches!(e, FatalError::Removed { .. }),
                    reason: e.to_string(),
                };
                let _ = node.events.tell(Publish(stopped)).await;
                return Some(e);
            }
            item = events.next() => match item {
                // The event carries the reason as text; the actor has the typed error.
                Some(EventItem::Event(ClusterEvent::NodeStopped { .. }) | EventItem::Missed(_)) => {
                    if let Some(e) = probe(node).await {
                        return Some(e);
                    }
                }
                Some(_) => {}
                // The bus stopped: the node was shut down or dropped.
                None => return None,
            },
        }
    }
}

/// The node's fatal error, if it has one now: a failed RaftActor answers every read with it; a
/// RaftActor that is gone leaves it with the supervisor.
async fn probe<S: StateMachine>(node: &Node<S>) -> Option<FatalError> {
    match node.raft.ask(Query(|_: &S| ())).await {
        Ok(()) => None,
        Err(SendError::HandlerError(ReadError::Fatal(e))) => Some(e),
        Err(SendError::HandlerError(_)) => None,
        Err(_) => node.failure().await,
    }
}
