//! Cluster events: [`ClusterEvent`], the [`EventBus`] actor that fans them out, and the
//! [`EventStream`] a subscriber reads.
//!
//! The RaftActor and PeerActors publish with a non-blocking `tell` (an event that finds the bus's
//! mailbox full is dropped and counted, never waited for); the bus writes into a bounded
//! broadcast ring. A subscriber that falls more than [`EVENT_BUFFER`] events behind loses the
//! oldest ones and is told how many with [`EventItem::Missed`]: a slow subscriber never slows the
//! node.

use std::{convert::Infallible, sync::Arc};

use kameo::{
    Actor,
    actor::ActorRef,
    message::{Context, Message},
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{
    metrics::EventMetrics,
    types::{NodeId, Role},
};

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
    /// The replica consistency check found that `node`'s applied entries differ from the
    /// cluster's at `index` (a corruption alarm; if `node` is this node, it stops).
    ReplicaDiverged {
        /// The diverged member.
        node: NodeId,
        /// The index compared.
        index: u64,
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
///
/// Events are numbered per node run: [`Self::epoch`] names the run (random at every start of
/// the bus), and every event has the next sequence number of that run. A subscriber that
/// reconnects can resume after the last number it saw ([`SubscribeFrom`]) while the bus still
/// holds the events after it (the last [`EVENT_BUFFER`]).
#[derive(Debug, kameo::Reply)]
pub struct EventStream {
    rx: broadcast::Receiver<(u64, ClusterEvent)>,
    /// Events retained from before the subscription, delivered first.
    backlog: std::collections::VecDeque<(u64, ClusterEvent)>,
    /// A gap to report before anything else (events that were no longer retained).
    gap: u64,
    epoch: u64,
    last_seq: u64,
    /// Counts this subscription while it lives, and what it missed.
    metrics: Arc<EventMetrics>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.metrics.event_subscribers.dec();
    }
}

impl EventStream {
    /// The next item; `None` once the node has shut down.
    pub async fn next(&mut self) -> Option<EventItem> {
        loop {
            if let Some(item) = self.pending() {
                return Some(item);
            }
            let item = match self.rx.recv().await {
                Ok((seq, ev)) => self.event(seq, ev),
                Err(broadcast::error::RecvError::Lagged(n)) => self.missed(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            // `None`: an event already delivered; only a closed bus ends the stream.
            if item.is_some() {
                return item;
            }
        }
    }

    /// The next item if one is ready now.
    pub fn try_next(&mut self) -> Option<EventItem> {
        loop {
            if let Some(item) = self.pending() {
                return Some(item);
            }
            let item = match self.rx.try_recv() {
                Ok((seq, ev)) => self.event(seq, ev),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.missed(n),
                Err(_) => return None,
            };
            if item.is_some() {
                return item;
            }
        }
    }

    /// The run of the bus these events come from.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Sequence number of the last event delivered (or skipped as missed).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    fn pending(&mut self) -> Option<EventItem> {
        if self.gap > 0 {
            let n = std::mem::take(&mut self.gap);
            return self.missed(n);
        }
        while let Some((seq, ev)) = self.backlog.pop_front() {
            if let Some(item) = self.event(seq, ev) {
                return Some(item);
            }
        }
        None
    }

    fn event(&mut self, seq: u64, ev: ClusterEvent) -> Option<EventItem> {
        // An event already delivered from the backlog comes again from the live channel.
        if seq <= self.last_seq {
            return None;
        }
        self.last_seq = seq;
        Some(EventItem::Event(ev))
    }

    fn missed(&mut self, n: u64) -> Option<EventItem> {
        self.last_seq += n;
        self.metrics.events_missed.inc_by(n);
        Some(EventItem::Missed(n))
    }
}

/// Fans events out to subscribers, and keeps the last [`EVENT_BUFFER`] for subscribers that
/// resume.
#[derive(Debug)]
pub struct EventBus {
    tx: broadcast::Sender<(u64, ClusterEvent)>,
    retained: std::collections::VecDeque<(u64, ClusterEvent)>,
    epoch: u64,
    seq: u64,
    metrics: Arc<EventMetrics>,
}

impl Actor for EventBus {
    /// Where subscriptions and missed events are counted.
    type Args = Arc<EventMetrics>;
    type Error = Infallible;

    async fn on_start(metrics: Self::Args, _: ActorRef<Self>) -> Result<Self, Self::Error> {
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Self {
            tx,
            retained: std::collections::VecDeque::with_capacity(EVENT_BUFFER),
            epoch: rand::random::<u64>() | 1,
            seq: 0,
            metrics,
        })
    }
}

/// Publish one event.
#[derive(Debug)]
pub struct Publish(pub ClusterEvent);

impl Message<Publish> for EventBus {
    type Reply = ();

    async fn handle(&mut self, Publish(ev): Publish, _: &mut Context<Self, ()>) {
        self.seq += 1;
        if self.retained.len() == EVENT_BUFFER {
            self.retained.pop_front();
        }
        self.retained.push_back((self.seq, ev.clone()));
        // No subscribers is not an error.
        let _ = self.tx.send((self.seq, ev));
    }
}

/// Open a new subscription; it sees events published after it was opened.
#[derive(Debug)]
pub struct Subscribe;

impl Message<Subscribe> for EventBus {
    type Reply = EventStream;

    async fn handle(&mut self, _: Subscribe, _: &mut Context<Self, EventStream>) -> EventStream {
        self.stream_after(self.epoch, self.seq)
    }
}

/// Resume a subscription after event `after` of run `epoch`: retained events after it come
/// first (with a [`EventItem::Missed`] for any no longer retained), then live ones. A
/// subscription naming another run (the node restarted, its numbering started over) starts
/// from now; [`EventStream::epoch`] tells the subscriber.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeFrom {
    /// The run the subscriber saw events of.
    pub epoch: u64,
    /// The last event number it saw.
    pub after: u64,
}

impl Message<SubscribeFrom> for EventBus {
    type Reply = EventStream;

    async fn handle(
        &mut self,
        msg: SubscribeFrom,
        _: &mut Context<Self, EventStream>,
    ) -> EventStream {
        self.stream_after(msg.epoch, msg.after)
    }
}

impl EventBus {
    fn stream_after(&self, epoch: u64, after: u64) -> EventStream {
        // Subscribing and copying the backlog happen in one handler: no event falls between.
        let rx = self.tx.subscribe();
        self.metrics.event_subscribers.inc();
        let metrics = self.metrics.clone();
        if epoch != self.epoch || after >= self.seq {
            return EventStream {
                rx,
                backlog: Default::default(),
                gap: 0,
                epoch: self.epoch,
                last_seq: self.seq,
                metrics,
            };
        }
        let oldest = self.retained.front().map_or(self.seq + 1, |(s, _)| *s);
        let backlog = self
            .retained
            .iter()
            .filter(|(s, _)| *s > after)
            .cloned()
            .collect();
        EventStream {
            rx,
            backlog,
            gap: oldest.saturating_sub(after + 1),
            epoch: self.epoch,
            last_seq: after,
            metrics,
        }
    }
}

#[cfg(test)]
mod tests {
    use kameo::actor::Spawn;

    use super::*;

    #[tokio::test]
    async fn a_resumed_subscription_gets_the_gap_then_live_events() {
        let bus = EventBus::spawn(Default::default());
        let first = bus.ask(Subscribe).await.unwrap();
        let epoch = first.epoch();
        let total = EVENT_BUFFER as u64 + 10;
        for index in 1..=total {
            bus.tell(Publish(ClusterEvent::Applied { index }))
                .await
                .unwrap();
        }
        // Resuming after event 5: events 6..=10 are no longer held (the bus keeps the last
        // EVENT_BUFFER), so the stream starts with Missed(5), then 11..=total in order.
        let mut resumed = bus.ask(SubscribeFrom { epoch, after: 5 }).await.unwrap();
        assert_eq!(resumed.next().await, Some(EventItem::Missed(5)));
        for index in 11..=total {
            assert_eq!(
                resumed.next().await,
                Some(EventItem::Event(ClusterEvent::Applied { index }))
            );
        }
        assert_eq!(resumed.last_seq(), total);
        // Then live ones, without repeats.
        bus.tell(Publish(ClusterEvent::Applied { index: 0 }))
            .await
            .unwrap();
        assert_eq!(
            resumed.next().await,
            Some(EventItem::Event(ClusterEvent::Applied { index: 0 }))
        );
        // Another run's numbers mean nothing here: from now on.
        let other = bus
            .ask(SubscribeFrom {
                epoch: epoch ^ 2,
                after: 3,
            })
            .await
            .unwrap();
        assert_eq!(other.last_seq(), total + 1);
    }
}
