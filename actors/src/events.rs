//! Cluster events: [`ClusterEvent`], the [`EventBus`] actor that fans them out, and the
//! [`EventStream`] a subscriber reads.
//!
//! The RaftActor and PeerActors publish with a non-blocking `tell` (an event that finds the bus's
//! mailbox full is dropped and counted, never waited for); the bus writes into a bounded
//! broadcast ring. A subscriber that falls more than [`EVENT_BUFFER`] events behind loses the
//! oldest ones and is told how many with [`EventItem::Missed`]: a slow subscriber never slows the
//! node.

use std::convert::Infallible;

use kameo::{
    Actor,
    actor::ActorRef,
    message::{Context, Message},
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::types::{NodeId, Role};

/// Events a subscriber may lag behind by before it starts missing some.
pub const EVENT_BUFFER: usize = 1024;

/// Capacity of the bus's mailbox.
pub const EVENT_MAILBOX: usize = 1024;

/// Something that happened on this node or in the cluster as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A node became leader for a term (reported by every node that learns of it).
    LeaderElected {
        /// The leader.
        new_leader: NodeId,
        /// Its term.
        term: u64,
    },
    /// This node's role changed.
    RoleChanged {
        /// This node.
        node: NodeId,
        /// Its new role.
        role: Role,
        /// The term it changed in.
        term: u64,
    },
    /// This node applied entries up to `index` (one event per Ready round, not per entry).
    Applied {
        /// Highest applied index.
        index: u64,
    },
    /// This node took a snapshot of its state machine and compacted its log behind it.
    SnapshotTaken {
        /// The last index it covers.
        index: u64,
    },
    /// This node installed a snapshot streamed from the leader.
    SnapshotInstalled {
        /// The last index it covers.
        index: u64,
    },
    /// The voter or learner set changed.
    MembershipChanged {
        /// Voters after the change.
        voters: Vec<NodeId>,
        /// Learners after the change.
        learners: Vec<NodeId>,
    },
    /// An outgoing connection to a peer was established.
    PeerConnected {
        /// The peer.
        peer: NodeId,
    },
    /// An outgoing connection to a peer was lost or could not be established.
    PeerDisconnected {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: String,
    },
    /// This node stopped serving for good: removed from the cluster, or a fatal error (every
    /// later call returns it).
    NodeStopped {
        /// This node.
        node: NodeId,
        /// True when it stopped because it was removed from the cluster.
        removed: bool,
        /// The fatal error, as text.
        reason: String,
    },
}

/// One item of an [`EventStream`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventItem {
    /// The next event.
    Event(ClusterEvent),
    /// The subscriber fell behind and this many events were dropped for it.
    Missed(u64),
}

/// A subscription to cluster events.
#[derive(Debug, kameo::Reply)]
pub struct EventStream {
    rx: broadcast::Receiver<ClusterEvent>,
}

impl EventStream {
    /// The next item; `None` once the node has shut down.
    pub async fn next(&mut self) -> Option<EventItem> {
        match self.rx.recv().await {
            Ok(ev) => Some(EventItem::Event(ev)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(EventItem::Missed(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next item if one is ready now.
    pub fn try_next(&mut self) -> Option<EventItem> {
        match self.rx.try_recv() {
            Ok(ev) => Some(EventItem::Event(ev)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(EventItem::Missed(n)),
            Err(_) => None,
        }
    }
}

/// Fans events out to subscribers.
#[derive(Debug)]
pub struct EventBus {
    tx: broadcast::Sender<ClusterEvent>,
}

impl Actor for EventBus {
    type Args = ();
    type Error = Infallible;

    async fn on_start(_: (), _: ActorRef<Self>) -> Result<Self, Self::Error> {
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Self { tx })
    }
}

/// Publish one event.
#[derive(Debug)]
pub struct Publish(pub ClusterEvent);

impl Message<Publish> for EventBus {
    type Reply = ();

    async fn handle(&mut self, Publish(ev): Publish, _: &mut Context<Self, ()>) {
        // No subscribers is not an error.
        let _ = self.tx.send(ev);
    }
}

/// Open a new subscription; it sees events published after it was opened.
#[derive(Debug)]
pub struct Subscribe;

impl Message<Subscribe> for EventBus {
    type Reply = EventStream;

    async fn handle(&mut self, _: Subscribe, _: &mut Context<Self, EventStream>) -> EventStream {
        EventStream {
            rx: self.tx.subscribe(),
        }
    }
}
