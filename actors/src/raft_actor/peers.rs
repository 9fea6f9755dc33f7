//! The RaftActor's table of members and their PeerActors.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use iroh::EndpointAddr;
use kameo::{
    actor::{ActorRef, Spawn, WeakRecipient},
    error::SendError,
    mailbox,
};

/// How long shutdown waits for a PeerActor to close its connection politely.
const PEER_STOP_GRACE: Duration = Duration::from_millis(200);

use crate::{
    events::EventBus,
    metrics::PeerMetrics,
    peer::{
        CONTROL_QUEUE, Dialer, Outbound, PEER_MAILBOX, PeerActor, PeerArgs, PeerUnreachable,
        Reconnect, SnapshotSent, StopPeer,
        control::{ControlSender, is_control},
    },
    storage::{DbHandle, Member},
    types::NodeId,
};

/// The RaftActor's side of replication: the peers' PeerActors, what goes out to each in the
/// next flush, and what was heard from each.
#[derive(Debug)]
pub(super) struct Replication {
    pub(super) peers: Peers,
    /// Raft messages, forward replies, checkpoints and snapshot offers for the next flush.
    pub(super) outbox: BTreeMap<NodeId, Outbound>,
    /// Per peer: when this node last heard from it, had an answer from it, asked to redial it.
    pub(super) heard: BTreeMap<NodeId, Contact>,
    /// Per peer: the highest incarnation seen in its Hellos (a lower one is a stale data dir).
    pub(super) incarnations: BTreeMap<NodeId, u64>,
    /// The last heartbeat received, and from whom (the heartbeat delay metric).
    pub(super) last_heartbeat: Option<(NodeId, std::time::Instant)>,
    /// The leader's last tick found no quorum of voters answering within an election timeout
    /// (it steps down if the next tick finds the same).
    pub(super) quorum_silent: bool,
}

impl Replication {
    pub(super) fn new(peers: Peers) -> Self {
        Self {
            peers,
            outbox: BTreeMap::new(),
            heard: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            last_heartbeat: None,
            quorum_silent: false,
        }
    }
}

/// Ticks of what this node last had from one peer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Contact {
    /// The last frame received from it (any: it reaches us).
    pub(super) frame: u64,
    /// The last answer (a Raft response or a forward reply: it hears us, and we hear it). A
    /// peer that only sends requests (campaigning, its checkpoints) may not be hearing us.
    pub(super) answer: u64,
    /// The last time this node asked to redial it.
    pub(super) redial: u64,
}

impl Contact {
    pub(super) fn new(now: u64) -> Self {
        Self {
            frame: now,
            answer: now,
            redial: now,
        }
    }
}

/// Members by Raft id, and a PeerActor for each peer this node has sent to.
#[derive(Debug)]
pub(crate) struct Peers {
    me: NodeId,
    /// This node's incarnation, for the Hello of every stream.
    incarnation: u64,
    members: BTreeMap<NodeId, EndpointAddr>,
    actors: BTreeMap<NodeId, ActorRef<PeerActor>>,
    /// Each PeerActor's control lane (votes and heartbeats on a stream of their own); empty
    /// when the lanes are off.
    control: BTreeMap<NodeId, ControlSender>,
    control_lanes: bool,
    dialer: Arc<dyn Dialer>,
    raft: WeakRecipient<PeerUnreachable>,
    snapshot_sent: WeakRecipient<SnapshotSent>,
    db: DbHandle,
    events: ActorRef<EventBus>,
    metrics: Arc<PeerMetrics>,
}

impl Peers {
    pub(crate) fn new(
        (me, incarnation): (NodeId, u64),
        members: &[Member],
        dialer: Arc<dyn Dialer>,
        raft: (WeakRecipient<PeerUnreachable>, WeakRecipient<SnapshotSent>),
        db: DbHandle,
        (events, metrics): (ActorRef<EventBus>, Arc<PeerMetrics>),
        control_lanes: bool,
    ) -> Self {
        Self {
            me,
            incarnation,
            members: members
                .iter()
                .map(|m| (m.node_id, m.addr.clone()))
                .collect(),
            actors: BTreeMap::new(),
            control: BTreeMap::new(),
            control_lanes,
            dialer,
            raft: raft.0,
            snapshot_sent: raft.1,
            db,
            events,
            metrics,
        }
    }

    /// Follows a membership change: new members become reachable, removed ones are dropped
    /// (their PeerActors stop and close their connections). A member whose addresses changed
    /// gets a new PeerActor, which dials the new ones.
    pub(crate) fn set_members(&mut self, members: &[Member]) {
        let before = std::mem::take(&mut self.members);
        self.members = members
            .iter()
            .map(|m| (m.node_id, m.addr.clone()))
            .collect();
        let gone: Vec<NodeId> = self
            .actors
            .keys()
            // Gone (`None` now), or at other addresses.
            .filter(|id| {
                self.members
                    .get(id)
                    .is_none_or(|now| before.get(id) != Some(now))
            })
            .copied()
            .collect();
        for id in gone {
            if let Some(actor) = self.actors.remove(&id) {
                let _ = actor.tell(StopPeer).try_send();
            }
            self.control.remove(&id);
        }
    }

    /// Hands a batch to the peer's actor without waiting. Gives the batch back when it could not
    /// be queued (unknown peer, or its queue is full because it is slow or unreachable).
    pub(crate) fn send(&mut self, to: NodeId, mut batch: Outbound) -> Result<(), Outbound> {
        if to == self.me {
            return Err(batch);
        }
        if self.actor(to).is_none() {
            return Err(batch);
        }
        if let Some(lane) = self.control.get(&to)
            && batch.raft.iter().any(is_control)
        {
            let control: Vec<_> = batch.raft.extract_if(.., |m| is_control(m)).collect();
            // A full lane: they go with the rest rather than not at all.
            if let Err(e) = lane.try_send(control) {
                let (tokio::sync::mpsc::error::TrySendError::Full(back)
                | tokio::sync::mpsc::error::TrySendError::Closed(back)) = e;
                batch.raft.extend(back);
            }
            if batch.is_empty() {
                return Ok(());
            }
        }
        let Some(actor) = self.actors.get(&to) else {
            return Err(batch);
        };
        actor.tell(batch).try_send().map_err(|e| match e {
            SendError::ActorNotRunning(b)
            | SendError::MailboxFull(b)
            | SendError::ActorRestarting(b) => b,
            _ => Outbound::default(),
        })
    }

    fn actor(&mut self, to: NodeId) -> Option<&ActorRef<PeerActor>> {
        if self.actors.get(&to).is_some_and(|a| !a.is_alive()) {
            self.actors.remove(&to);
            self.control.remove(&to);
        }
        if !self.actors.contains_key(&to) {
            let addr = self.members.get(&to)?.clone();
            let args = PeerArgs {
                me: self.me,
                peer: to,
                incarnation: self.incarnation,
                addr,
                dialer: self.dialer.clone(),
                raft: self.raft.clone(),
                snapshot_sent: self.snapshot_sent.clone(),
                db: self.db.clone(),
                events: self.events.clone(),
                metrics: self.metrics.clone(),
                control: None,
            };
            let mut args = args;
            if self.control_lanes {
                let (tx, rx) = tokio::sync::mpsc::channel(CONTROL_QUEUE);
                args.control = Some(rx);
                self.control.insert(to, tx);
            }
            let actor = PeerActor::spawn_with_mailbox(args, mailbox::bounded(PEER_MAILBOX));
            self.actors.insert(to, actor);
        }
        self.actors.get(&to)
    }

    /// Asks the PeerActor of `id` (if there is one) to drop its connection and dial afresh.
    pub(crate) fn reconnect(&self, id: NodeId, why: Reconnect) {
        if let Some(actor) = self.actors.get(&id) {
            let _ = actor.tell(why).try_send();
        }
    }

    /// Stops every PeerActor; each closes its connection with a shutdown code. One still busy
    /// after [`PEER_STOP_GRACE`] (typically dialling a dead peer) is killed, which drops its
    /// connection without a code.
    pub(crate) async fn stop_all(&mut self) {
        let actors: Vec<_> = std::mem::take(&mut self.actors).into_values().collect();
        self.control.clear();
        for actor in &actors {
            let _ = actor.tell(StopPeer).try_send();
        }
        for actor in &actors {
            if tokio::time::timeout(PEER_STOP_GRACE, actor.wait_for_shutdown())
                .await
                .is_err()
            {
                actor.kill();
            }
        }
    }
}
