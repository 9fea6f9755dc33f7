//! The RaftActor's integrity checks: the replica consistency check (running hashes of applied
//! entries, exchanged as checkpoints), stale data dirs (an incarnation below one already seen, a
//! leader's commit index beyond our log), and what a node does when it finds itself corrupt or
//! stale: it stops serving and voting, and fences its data dir so that it never serves from it
//! again.

use kameo::message::{Context, Message};
use raft::eraftpb::{Message as RaftMessage, MessageType};
use tracing::{debug, error, warn};

use super::actor::RaftActor;
use crate::{
    config::TICKS_PER_HEARTBEAT,
    consistency::{ApplyHash, Verdict},
    error::{Corruption, CorruptionKind, DataLocation, FatalError, StaleEvidence},
    events::ClusterEvent,
    peer::{Outbound, Reconnect},
    state_machine::StateMachine,
    storage::Fence,
    types::NodeId,
};

/// Heartbeats between two checkpoints a node sends each member (and one right after start).
pub const CHECKPOINT_HEARTBEATS: u64 = 10;

impl<S: StateMachine> RaftActor<S> {
    /// This node runs on a stale data dir: stop before raft acts on it.
    pub(super) fn stale(&mut self, evidence: StaleEvidence) {
        let node = self.id();
        self.fail(FatalError::StaleDataDir { node, evidence });
    }

    /// Asks the StorageActor to write down, durably, that this data dir must not serve again
    /// (corrupt or stale): the next start refuses it with the reason until the operator empties
    /// it and rejoins the node. Best effort: with the StorageActor gone or its mailbox full the
    /// fence is not written (the next start then finds the damage again, or not if it was only
    /// in memory), and this says so in the log.
    pub(super) fn fence(&self, e: &FatalError) {
        let reason = e.to_string();
        if let Err(err) = self.storage.tell(Fence { reason }).try_send() {
            warn!(error = %err, "could not ask storage to fence the data dir");
        }
    }

    /// Checks a Raft message against this node's log before raft-rs sees it. A leader sends a
    /// heartbeat's commit index only up to what this node acknowledged as durable; a commit
    /// beyond our log means we lost acknowledged entries (raft-rs would panic on it). Returns
    /// false when the node stopped.
    pub(super) fn check_incoming(&mut self, m: &RaftMessage) -> bool {
        let last_index = self.driver.last_index();
        if m.msg_type == MessageType::MsgHeartbeat && m.commit > last_index {
            self.stale(StaleEvidence::LogBehindAcknowledged {
                leader: m.from,
                commit: m.commit,
                last_index,
            });
            return false;
        }
        true
    }

    /// Every [`CHECKPOINT_HEARTBEATS`] heartbeats (at ticks 1, 1 + every, …: the first right
    /// after a start), tells every member where this node's running hash stands. `before` is the
    /// clock before this timer tick: a leader catching up may have moved it past several ticks.
    pub(super) fn send_checkpoints(&mut self, before: u64) {
        let every = CHECKPOINT_HEARTBEATS * TICKS_PER_HEARTBEAT as u64;
        // How many checkpoint ticks lie in 1..=t.
        let passed = |t: u64| t.div_ceil(every);
        if passed(self.now) == passed(before) {
            return;
        }
        let Some(point) = self.consistency.head() else {
            return;
        };
        for peer in self.other_members() {
            let outbox = &mut self.replication.outbox;
            outbox.entry(peer).or_default().checkpoint = Some(Box::new(point));
        }
    }

    /// Every member but this node.
    fn other_members(&self) -> Vec<NodeId> {
        let me = self.id();
        let members = self.membership.members().into_iter().map(|m| m.node_id);
        members.filter(|&id| id != me).collect()
    }

    /// A peer's checkpoint arrived.
    pub(super) fn on_checkpoint(&mut self, from: NodeId, index: u64, hash: ApplyHash) {
        let (voters, me, leader) = self.judges();
        let verdict = self
            .consistency
            .peer_checkpoint(from, index, hash, &voters, me, leader);
        self.act_on(verdict);
    }

    /// After applying: compares the checkpoints that were ahead of us.
    pub(super) fn check_applied(&mut self) {
        if !self.consistency.has_pending() {
            return;
        }
        let (voters, me, leader) = self.judges();
        let verdict = self.consistency.check_pending(&voters, me, leader);
        self.act_on(verdict);
    }

    /// What a verdict depends on: the voters, this node, the leader.
    fn judges(&self) -> (Vec<NodeId>, NodeId, Option<NodeId>) {
        (
            self.driver.conf_state().voters,
            self.id(),
            self.driver.leader(),
        )
    }

    fn act_on(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Consistent => {}
            Verdict::PeerDiverged { peers } => {
                for (node, index) in peers {
                    error!(
                        peer = node,
                        index, "corruption alarm: the peer's applied entries differ from ours"
                    );
                    self.publish(ClusterEvent::ReplicaDiverged { node, index });
                }
            }
            Verdict::SelfDiverged { index, differ } => {
                let detail = format!(
                    "the running hash of the entries applied here differs from the one of \
                     voters {differ:?} at the same index (this replica's history is not the \
                     cluster's)"
                );
                let c = Corruption::new(
                    self.db.path(),
                    DataLocation::AppliedState { index },
                    CorruptionKind::Diverged,
                    detail,
                );
                self.publish(ClusterEvent::ReplicaDiverged {
                    node: self.id(),
                    index,
                });
                // Its last word: its checkpoint, straight to every member, so that the healthy
                // ones raise the alarm even when it outvoted us before our own scheduled
                // checkpoint went out (the outbox is dropped once the node fails).
                if let Some(point) = self.consistency.head() {
                    for peer in self.other_members() {
                        let last = Outbound {
                            checkpoint: Some(Box::new(point)),
                            ..Outbound::default()
                        };
                        let _ = self.replication.peers.send(peer, last);
                    }
                }
                self.fail(FatalError::Corruption(c));
            }
        }
    }
}

/// A peer closed its connection to this node with [`CloseCode::NoAnswer`](crate::wire::CloseCode):
/// it heard nothing from us for an election timeout although its own messages reach us, so our
/// connection to it is the likely dead one (established to a previous process of the peer, say,
/// before we learnt of its restart). Told by the protocol handler; we dial it afresh.
#[derive(Debug, Clone, Copy)]
pub struct NotHeard {
    /// The peer that closed.
    pub from: NodeId,
}

impl<S: StateMachine> Message<NotHeard> for RaftActor<S> {
    type Reply = ();

    async fn handle(&mut self, msg: NotHeard, _: &mut Context<Self, ()>) {
        if self.check_running().is_ok() {
            debug!(
                peer = msg.from,
                "the peer hears nothing from us; redialling it"
            );
            self.replication.peers.reconnect(msg.from, Reconnect::Stale);
        }
    }
}

/// A peer opened a stream to this node with this incarnation: accept it unless a higher one was
/// seen from the same node (then it runs on an old copy of its data dir). Asked by the protocol
/// handler before it reads anything else from the stream.
#[derive(Debug, Clone, Copy)]
pub struct PeerHello {
    /// The authenticated peer.
    pub from: NodeId,
    /// The incarnation in its Hello.
    pub incarnation: u64,
}

impl<S: StateMachine> Message<PeerHello> for RaftActor<S> {
    /// Whether the stream may go on.
    type Reply = bool;

    async fn handle(&mut self, msg: PeerHello, _: &mut Context<Self, bool>) -> bool {
        let seen = self.replication.incarnations.entry(msg.from).or_insert(0);
        if msg.incarnation < *seen {
            warn!(
                peer = msg.from,
                incarnation = msg.incarnation,
                seen = *seen,
                "refusing a peer on a stale data dir"
            );
            return false;
        }
        let restarted = *seen != 0 && msg.incarnation > *seen;
        *seen = msg.incarnation;
        if restarted {
            // The peer restarted: our own connection to it belongs to its previous process,
            // which its new endpoint does not know, and QUIC would go on sending into it until
            // its idle timeout (an election after a restart waited on that: pre-votes and
            // their answers to the restarted node vanished). Dial it afresh.
            debug!(
                peer = msg.from,
                incarnation = msg.incarnation,
                "peer restarted; redialling it"
            );
            self.replication.peers.reconnect(msg.from, Reconnect::Stale);
        }
        true
    }
}
