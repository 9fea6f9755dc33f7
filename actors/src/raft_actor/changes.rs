//! Membership changes and leadership transfer in the RaftActor.
//!
//! A change is validated against the applied membership on the leader (a follower forwards it),
//! proposed as one `ConfChangeV2` (joint consensus when it touches more than one member; raft-rs
//! leaves the joint configuration on its own) and takes effect when applied, on every node, in
//! log order. Only one change is in flight at a time: raft-rs refuses a second while one is
//! unapplied or the configuration is joint, and so do we, with a typed error.

use kameo::{
    message::{Context, Message},
    reply::{DelegatedReply, ReplySender},
};
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, Entry};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    actor::RaftActor,
    pending::{Taken, encode_context},
    transfers::TransferWait,
};
use crate::{
    error::{FatalError, ProposeError, TransferError},
    events::ClusterEvent,
    membership::{MemberInfo, MembershipChange, MembershipRefusal},
    state_machine::StateMachine,
    types::{NodeId, Role},
    wire::{ForwardOutcome, ForwardRequest, ForwardedProposal, TransferRefusal},
};

/// Change the membership. The reply is the log index of the applied change.
#[derive(Debug, Clone)]
pub struct ChangeMembership {
    /// What to change.
    pub change: MembershipChange,
    /// For [`MembershipChange::Promote`]: refuse with [`MembershipRefusal::NotCaughtUp`] while
    /// the learner is more than this many entries behind the leader's log.
    pub max_lag: Option<u64>,
}

/// Hand leadership to `to`, or to the most up-to-date other voter. The reply is the new
/// leader's id once this node sees it lead.
#[derive(Debug, Clone, Copy)]
pub struct TransferLeadership {
    /// The voter to hand over to; `None` picks the voter whose log matches the leader's best.
    pub to: Option<NodeId>,
}

/// The current membership as this node has applied it.
#[derive(Debug, Clone, Copy)]
pub struct GetMembers;

/// What [`GetMembers`] returns.
#[derive(Debug, Clone, kameo::Reply)]
pub struct MembersView {
    /// The cluster's id.
    pub cluster_id: [u8; 16],
    /// Members with their roles.
    pub members: Vec<MemberInfo>,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// On the leader: how far each member's log matches (`(id, match index)`); empty elsewhere.
    pub matched: Vec<(NodeId, u64)>,
    /// The leader's last log index (this node's, on a follower).
    pub last_index: u64,
    /// The lowest id no member ever had (ids of removed members are never reused).
    pub next_free_id: NodeId,
    /// Per peer: how long ago this node last received a frame from it (peers never heard from
    /// since this node started are absent).
    pub last_contact: Vec<(NodeId, std::time::Duration)>,
    /// The election timeout this node runs with.
    pub election_timeout: std::time::Duration,
}

impl<S: StateMachine> RaftActor<S> {
    /// Validates and proposes a change as leader; returns its index.
    fn propose_change(
        &mut self,
        context: Vec<u8>,
        change: &MembershipChange,
        max_lag: Option<u64>,
    ) -> Result<u64, ProposeError> {
        if self.driver.role() != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.driver.leader(),
            });
        }
        if self.driver.has_pending_conf() {
            return Err(MembershipRefusal::InProgress.into());
        }
        if let (MembershipChange::Promote { id }, Some(max_lag)) = (change, max_lag) {
            let matched = self
                .driver
                .matched()
                .into_iter()
                .find(|(m, _)| m == id)
                .map_or(0, |(_, matched)| matched);
            let lag = self.driver.last_index().saturating_sub(matched);
            // A learner that never acknowledged anything has not started catching up, however
            // short the log is.
            if lag > max_lag || matched == 0 {
                return Err(MembershipRefusal::NotCaughtUp { id: *id, lag }.into());
            }
        }
        let cc = self
            .membership
            .to_conf_change(change, &self.driver.conf_state())?;
        self.driver
            .propose_conf_change(context, cc)
            .map_err(|e| match e {
                crate::driver::ProposeRefused::NotLeader(leader_hint) => {
                    ProposeError::NotLeader { leader_hint }
                }
                crate::driver::ProposeRefused::ConfChangePending => {
                    MembershipRefusal::InProgress.into()
                }
                crate::driver::ProposeRefused::Dropped => ProposeError::Busy,
            })
    }

    /// As leader, a change forwarded by `from` (postcard of the change).
    pub(super) fn accept_forwarded_change(
        &mut self,
        from: NodeId,
        p: (u64, u64),
        change: &[u8],
        max_lag: Option<u64>,
    ) -> ForwardOutcome {
        let Ok(change) = postcard::from_bytes::<MembershipChange>(change) else {
            return ForwardOutcome::MembershipRefused(MembershipRefusal::Undecodable);
        };
        let term = self.driver.term();
        match self.propose_change(encode_context(from, p.0, p.1), &change, max_lag) {
            Ok(index) => ForwardOutcome::Appended { index, term },
            Err(ProposeError::Membership(r)) => ForwardOutcome::MembershipRefused(r),
            Err(ProposeError::Busy) => ForwardOutcome::Busy,
            Err(_) => ForwardOutcome::NotLeader {
                leader_hint: self.driver.leader(),
            },
        }
    }

    /// As leader, a transfer forwarded by a follower.
    pub(super) fn accept_forwarded_transfer(&mut self, to: Option<NodeId>) -> ForwardOutcome {
        match self.start_transfer(to) {
            Ok(to) => ForwardOutcome::TransferStarted { to },
            Err(TransferError::NotAVoter(id)) => {
                ForwardOutcome::TransferRefused(TransferRefusal::NotAVoter(id))
            }
            Err(TransferError::NoCandidate) => {
                ForwardOutcome::TransferRefused(TransferRefusal::NoCandidate)
            }
            Err(_) => ForwardOutcome::NotLeader {
                leader_hint: self.driver.leader(),
            },
        }
    }

    /// As leader, starts handing over to `to` (or the best other voter); returns the target.
    fn start_transfer(&mut self, to: Option<NodeId>) -> Result<NodeId, TransferError> {
        if self.driver.role() != Role::Leader {
            return Err(TransferError::NoLeader);
        }
        let me = self.id();
        let voters = self.driver.voters();
        let target = match to {
            Some(id) if !voters.contains(&id) => return Err(TransferError::NotAVoter(id)),
            Some(id) => id,
            None => self
                .driver
                .matched()
                .into_iter()
                .filter(|(id, _)| *id != me && voters.contains(id))
                .max_by_key(|&(id, matched)| (matched, std::cmp::Reverse(id)))
                .map(|(id, _)| id)
                .ok_or(TransferError::NoCandidate)?,
        };
        if target != me {
            info!(node = me, to = target, "transferring leadership");
            self.driver.transfer_leader(target);
        }
        Ok(target)
    }

    /// The leader answered the forward `id` of a transfer with a refusal (`Some`) or "not
    /// leader" (`None`): the waiting caller gets the typed reason now, not a timeout.
    pub(super) fn forwarded_transfer_refused(&mut self, id: u64, refusal: Option<TransferRefusal>) {
        let Some(pos) = self
            .requests
            .transfers
            .iter()
            .position(|t| t.forward == Some(id))
        else {
            return;
        };
        let t = self.requests.transfers.swap_remove(pos);
        t.fail(match refusal {
            Some(TransferRefusal::NotAVoter(node)) => TransferError::NotAVoter(node),
            Some(TransferRefusal::NoCandidate) => TransferError::NoCandidate,
            None => TransferError::NoLeader,
        });
    }

    /// The leader started the forwarded transfer `id`, to `to`: the caller waits for `to`.
    pub(super) fn forwarded_transfer_started(&mut self, id: u64, to: NodeId) {
        if let Some(t) = self
            .requests
            .transfers
            .iter_mut()
            .find(|t| t.forward == Some(id))
        {
            t.target = Some(to);
        }
    }

    /// Answers transfers whose outcome is known: the leader moved (to the target, if one was
    /// named), or the deadline passed.
    pub(super) fn check_transfers(&mut self) {
        if self.requests.transfers.is_empty() {
            return;
        }
        let leader = self.driver.leader();
        let now = self.now;
        let mut waiting = Vec::new();
        for t in std::mem::take(&mut self.requests.transfers) {
            let done = match (leader, t.target) {
                (Some(l), Some(target)) => l == target,
                (Some(l), None) => Some(l) != t.from,
                (None, _) => false,
            };
            if done {
                t.reply.send(Ok(leader.unwrap_or_default()));
            } else if now >= t.deadline {
                t.reply.send(Err(TransferError::Timeout {
                    elapsed: t.started.elapsed(),
                }));
            } else {
                waiting.push(t);
            }
        }
        self.requests.transfers = waiting;
    }

    /// Applies a committed configuration change entry: raft-rs's configuration first, then the
    /// membership (endpoints, tombstones), then the peers and the admission list follow.
    pub(super) fn apply_conf_entry(
        &mut self,
        e: &Entry,
        reply: Option<ReplySender<Result<u64, ProposeError>>>,
    ) {
        // The wire accepts only flat ConfChangeV2 bytes (wire::is_plain_conf_change).
        let cc = match ConfChangeV2::parse_from_bytes(&e.data) {
            Ok(cc) => cc,
            Err(err) => {
                let fatal = self.corrupt_entry(
                    e.index,
                    format!("committed configuration change does not decode: {err}"),
                );
                if let Some(reply) = reply {
                    reply.send(Err(ProposeError::Fatal(fatal)));
                }
                return;
            }
        };
        let cs = match self.driver.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(err) => {
                warn!(index = e.index, error = %err, "configuration change refused by raft; skipped");
                return;
            }
        };
        let me = self.id();
        let was_member = self.membership.contains(me);
        let mut membership = self.membership.clone();
        membership.apply(&cc, &cs);
        self.set_membership(membership);
        info!(
            index = e.index,
            voters = ?cs.voters,
            learners = ?cs.learners,
            outgoing = ?cs.voters_outgoing,
            "membership changed"
        );
        self.publish(ClusterEvent::MembershipChanged {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
        });
        if let Some(reply) = reply {
            reply.send(Ok(e.index));
        }
        if was_member && self.membership.is_removed(me) {
            self.removed();
        }
    }

    /// This node was removed from the cluster: it stops serving for good.
    pub(super) fn removed(&mut self) {
        let me = self.id();
        info!(node = me, "removed from the cluster; stopping");
        self.fail(FatalError::Removed { node: me });
    }
}

impl<S: StateMachine> Message<ChangeMembership> for RaftActor<S> {
    type Reply = DelegatedReply<Result<u64, ProposeError>>;

    async fn handle(
        &mut self,
        msg: ChangeMembership,
        ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        let (delegated, reply) = ctx.reply_sender();
        let Some(reply) = reply else {
            return delegated;
        };
        if let Err(e) = self.check_running() {
            reply.send(Err(e));
            return delegated;
        }
        let id = self.requests.next_id();
        let deadline = self.deadline();
        if self.driver.role() == Role::Leader {
            let context = encode_context(self.id(), self.session, id);
            match self.propose_change(context, &msg.change, msg.max_lag) {
                Ok(index) => {
                    self.requests
                        .changes
                        .insert(id, reply, Taken::Appended(index), deadline)
                }
                Err(e) => reply.send(Err(e)),
            }
        } else if let Some(leader) = self.driver.leader() {
            let change = postcard::to_allocvec(&msg.change).expect("membership changes encode");
            self.replication
                .outbox
                .entry(leader)
                .or_default()
                .forwards
                .push(ForwardedProposal {
                    trace: None,
                    session: self.session,
                    id,
                    term: self.driver.term(),
                    request: ForwardRequest::Membership {
                        change,
                        max_lag: msg.max_lag,
                    },
                });
            let taken = Taken::Forwarded(self.driver.term());
            self.requests.changes.insert(id, reply, taken, deadline);
        } else {
            reply.send(Err(ProposeError::NotLeader { leader_hint: None }));
        }
        delegated
    }
}

impl<S: StateMachine> Message<TransferLeadership> for RaftActor<S> {
    type Reply = DelegatedReply<Result<NodeId, TransferError>>;

    async fn handle(
        &mut self,
        msg: TransferLeadership,
        ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        let (delegated, reply) = ctx.reply_sender();
        let Some(reply) = reply else {
            return delegated;
        };
        if let Err(e) = self.check_running() {
            reply.send(Err(TransferError::Unavailable(e)));
            return delegated;
        }
        let leader = self.driver.leader();
        if leader.is_some() && leader == msg.to {
            reply.send(Ok(msg.to.unwrap_or_default()));
            return delegated;
        }
        let mut forward = None;
        let target = if self.driver.role() == Role::Leader {
            match self.start_transfer(msg.to) {
                Ok(target) if target == self.id() => {
                    reply.send(Ok(target));
                    return delegated;
                }
                Ok(target) => Some(target),
                Err(e) => {
                    reply.send(Err(e));
                    return delegated;
                }
            }
        } else if let Some(leader) = leader {
            let id = self.requests.next_id();
            forward = Some(id);
            self.replication
                .outbox
                .entry(leader)
                .or_default()
                .forwards
                .push(ForwardedProposal {
                    trace: None,
                    session: self.session,
                    id,
                    term: self.driver.term(),
                    request: ForwardRequest::Transfer(msg.to),
                });
            msg.to
        } else {
            reply.send(Err(TransferError::NoLeader));
            return delegated;
        };
        // raft-rs aborts a transfer after an election timeout; give it two, plus a heartbeat.
        let ticks =
            2 * self.config.election_ticks() as u64 + crate::config::TICKS_PER_HEARTBEAT as u64;
        self.requests.transfers.push(TransferWait {
            target,
            from: leader,
            reply,
            started: Instant::now(),
            deadline: self.now + ticks,
            forward,
        });
        delegated
    }
}

impl<S: StateMachine> Message<GetMembers> for RaftActor<S> {
    type Reply = MembersView;

    async fn handle(&mut self, _: GetMembers, _: &mut Context<Self, MembersView>) -> MembersView {
        MembersView {
            cluster_id: self.membership.cluster_id(),
            members: self.membership.describe(&self.driver.conf_state()),
            leader: self.driver.leader(),
            matched: self.driver.matched(),
            last_index: self.driver.last_index(),
            next_free_id: self.membership.next_free_id(),
            last_contact: self
                .replication
                .heard
                .iter()
                .map(|(&id, contact)| {
                    let ticks = self.now.saturating_sub(contact.frame);
                    (id, self.config.tick_interval() * ticks as u32)
                })
                .collect(),
            election_timeout: self.config.election_timeout,
        }
    }
}
