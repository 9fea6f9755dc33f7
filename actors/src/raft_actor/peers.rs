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
    peer::{
        Dialer, Outbound, PEER_MAILBOX, PeerActor, PeerArgs, PeerUnreachable, Reconnect,
        SnapshotSent, StopPeer,
    },
    storage::{DbHandle, Member},
    types::NodeId,
};

/// Members by Raft id, and a PeerActor for each peer this node has sent to.
#[derive(Debug)]
pub(crate) struct Peers {
    me: NodeId,
    /// This node's incarnation, for the Hello of every stream.
    incarnation: u64,
    members: BTreeMap<NodeId, EndpointAddr>,
    actors: BTreeMap<NodeId, ActorRef<PeerActor>>,
    dialer: Arc<dyn Dialer>,
    raft: WeakRecipient<PeerUnreachable>,
    snapshot_sent: WeakRecipient<SnapshotSent>,
    db: DbHandle,
    events: ActorRef<EventBus>,
}

impl Peers {
    pub(crate) fn new(
        (me, incarnation): (NodeId, u64),
        members: &[Member],
        dialer: Arc<dyn Dialer>,
        raft: (WeakRecipient<PeerUnreachable>, WeakRecipient<SnapshotSent>),
        db: DbHandle,
        events: ActorRef<EventBus>,
    ) -> Self {
        Self {
            me,
            incarnation,
            members: members
                .iter()
                .map(|m| (m.node_id, m.addr.clone()))
                .collect(),
            actors: BTreeMap::new(),
            dialer,
            raft: raft.0,
            snapshot_sent: raft.1,
            db,
            events,
        }
    }

    /// Follows a membership change: new members become reachable, removed ones are dropped
    /// (their PeerActors stop and close their connections).
    pub(crate) fn set_members(&mut self, members: &[Member]) {
        self.members = members
            .iter()
            .map(|m| (m.node_id, m.addr.clone()))
            .collect();
        let gone: Vec<NodeId> = self
            .actors
            .keys()
            .filter(|id| !self.members.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(actor) = self.actors.remove(&id) {
                let _ = actor.tell(StopPeer).try_send();
            }
        }
    }

    /// Hands a batch to the peer's actor without waiting. Gives the batch back when it could not
    /// be queued (unknown peer, or its queue is full because it is slow or unreachable).
    pub(crate) fn send(&mut self, to: NodeId, batch: Outbound) -> Result<(), Outbound> {
        if to == self.me {
            return Err(batch);
        }
        let Some(actor) = self.actor(to) else {
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
            };
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
