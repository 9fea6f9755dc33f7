//! Membership calls on one node: add, promote, remove and replace members, join (add a learner,
//! wait for it to catch up, promote it), and hand leadership over. Every call works on any
//! member (a follower forwards to the leader); each change goes through the log as one
//! `ConfChangeV2`, one at a time.

use std::time::Duration;

use iroh::EndpointAddr;
use kameo::error::SendError;
use tokio::time::Instant;

use super::{AskFailure, NodeCalls};
use crate::{
    error::{FatalError, ProposeError, ReadError, TransferError},
    membership::{MemberRole, MembershipChange, MembershipRefusal},
    raft_actor::{ChangeMembership, GetMembers, MembersView, TransferLeadership},
    state_machine::StateMachine,
    types::NodeId,
};

/// How [`Node::join`](crate::Node::join) brings a new member in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOptions {
    /// Promote the learner once it is at most this many entries behind the leader's log.
    pub max_lag: u64,
    /// Give up (leaving the node a learner) if it has not caught up by then.
    pub timeout: Duration,
}

impl Default for JoinOptions {
    fn default() -> Self {
        Self {
            max_lag: 100,
            timeout: Duration::from_secs(60),
        }
    }
}

/// A finished leadership transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// The new leader.
    pub leader: NodeId,
    /// How long the handover took.
    pub elapsed: Duration,
}

/// Errors worth retrying for a membership change: nothing changed, and the cause passes.
fn transient(e: &ProposeError) -> bool {
    matches!(
        e,
        ProposeError::NotLeader { .. }
            | ProposeError::Busy
            | ProposeError::LeaderUnreachable { .. }
            | ProposeError::Dropped { .. }
            | ProposeError::Interrupted
            | ProposeError::Membership(MembershipRefusal::InProgress)
    )
}

impl<S: StateMachine> NodeCalls<S> {
    /// The membership as this node has applied it, with the leader it knows of.
    pub async fn members_view(&self) -> Result<MembersView, ReadError> {
        self.check_alive()?;
        match self
            .raft
            .ask(GetMembers)
            .reply_timeout(self.request_timeout)
            .await
        {
            Ok(v) => Ok(v),
            Err(SendError::Timeout(_)) => Err(ReadError::Timeout),
            Err(_) => Err(self.read_error(AskFailure::NotRunning)),
        }
    }

    /// Proposes a membership change and waits until it is applied here; retries while there is
    /// no leader or another change is in progress, until `deadline`. Returns the change's index.
    async fn change(
        &self,
        change: MembershipChange,
        max_lag: Option<u64>,
        deadline: Instant,
        retry_while: impl Fn(&ProposeError) -> bool,
    ) -> Result<u64, ProposeError> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = self
                .raft
                .ask(ChangeMembership {
                    change: change.clone(),
                    max_lag,
                })
                .reply_timeout(remaining)
                .await;
            let err = match result {
                Ok(index) => return Ok(index),
                Err(SendError::HandlerError(e)) => e,
                Err(SendError::Timeout(_)) => return Err(ProposeError::Timeout),
                Err(SendError::ActorStopped | SendError::ActorRestarting(_)) => {
                    ProposeError::Interrupted
                }
                Err(e) => return Err(self.propose_failed(e)),
            };
            if !retry_while(&err) || Instant::now() + self.retry_interval >= deadline {
                return Err(err);
            }
            tokio::time::sleep(self.retry_interval).await;
        }
    }

    /// Adds a non-voting member that receives the log. Its endpoint id is admitted from the
    /// moment the change applies.
    pub async fn add_learner(&self, id: NodeId, addr: EndpointAddr) -> Result<u64, ProposeError> {
        self.change_now(MembershipChange::AddLearner { id, addr })
            .await
    }

    /// Gives member `id` new addresses (its key and role stay): every node dials it there from
    /// the moment the change applies.
    pub async fn update_address(
        &self,
        id: NodeId,
        addr: EndpointAddr,
    ) -> Result<u64, ProposeError> {
        self.change_now(MembershipChange::UpdateAddress { id, addr })
            .await
    }

    /// Adds a voter directly. Prefer [`Node::join`](crate::Node::join): a voter that starts
    /// empty weakens the quorum until it has caught up.
    pub async fn add_voter(&self, id: NodeId, addr: EndpointAddr) -> Result<u64, ProposeError> {
        self.change_now(MembershipChange::AddVoter { id, addr })
            .await
    }

    /// Makes learner `id` a voter now, however far behind it is.
    pub async fn promote(&self, id: NodeId) -> Result<u64, ProposeError> {
        self.change_now(MembershipChange::Promote { id }).await
    }

    /// A change with no catch-up condition, retried on transient errors until the request
    /// timeout.
    async fn change_now(&self, change: MembershipChange) -> Result<u64, ProposeError> {
        let deadline = Instant::now() + self.request_timeout;
        self.change(change, None, deadline, transient).await
    }

    /// Adds `id` as a learner, waits until its log is within `options.max_lag` entries of the
    /// leader's, then promotes it. A learner that does not catch up within `options.timeout` is
    /// left a learner and the call fails with [`MembershipRefusal::NotCaughtUp`].
    pub(crate) async fn join(
        &self,
        id: NodeId,
        addr: EndpointAddr,
        options: JoinOptions,
    ) -> Result<u64, ProposeError> {
        let deadline = Instant::now() + options.timeout;
        let already = self
            .members_view()
            .await
            .ok()
            .and_then(|v| v.members.into_iter().find(|m| m.node_id == id));
        match already {
            Some(m) if m.addr.id != addr.id => {
                return Err(MembershipRefusal::IdTaken {
                    id,
                    endpoint: m.addr.id.to_string(),
                }
                .into());
            }
            Some(m) if m.role == MemberRole::Voter => return Ok(0),
            Some(_) => {}
            None => {
                self.change(
                    MembershipChange::AddLearner { id, addr },
                    None,
                    deadline,
                    transient,
                )
                .await?;
            }
        }
        self.change(
            MembershipChange::Promote { id },
            Some(options.max_lag),
            deadline,
            |e| {
                transient(e)
                    || matches!(
                        e,
                        ProposeError::Membership(MembershipRefusal::NotCaughtUp { .. })
                    )
            },
        )
        .await
    }

    /// Removes a member. Removing the leader hands leadership to the most up-to-date other
    /// voter first. The removed node stops once it learns of its removal, and its endpoint id is
    /// refused from then on; its id is never reused. Returns the change's index — or 0 when this
    /// node removed itself and stopped before the change was applied here (it was committed:
    /// a member told it so).
    pub(crate) async fn remove_member(&self, id: NodeId) -> Result<u64, ProposeError> {
        match self.remove_member_inner(id).await {
            Err(ProposeError::Fatal(FatalError::Removed { node }))
                if node == id && node == self.node_id() =>
            {
                Ok(0)
            }
            other => other,
        }
    }

    async fn remove_member_inner(&self, id: NodeId) -> Result<u64, ProposeError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            if self.leader() == Some(id) {
                match self.transfer_leadership(None).await {
                    Ok(_) | Err(TransferError::Timeout { .. }) | Err(TransferError::NoLeader) => {}
                    Err(TransferError::NoCandidate) => {
                        return Err(MembershipRefusal::LastVoter(id).into());
                    }
                    Err(TransferError::Unavailable(e)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "handing leadership over before removal failed")
                    }
                }
            }
            match self
                .change(
                    MembershipChange::Remove { id },
                    None,
                    Instant::now() + self.retry_interval * 4,
                    transient,
                )
                .await
            {
                Err(e) if transient(&e) && Instant::now() < deadline => continue,
                other => return other,
            }
        }
    }

    /// Swaps voter `old` for a new voter in one joint-consensus step.
    pub(crate) async fn replace(
        &self,
        old: NodeId,
        id: NodeId,
        addr: EndpointAddr,
    ) -> Result<u64, ProposeError> {
        if self.leader() == Some(old) {
            let _ = self.transfer_leadership(None).await;
        }
        self.change_now(MembershipChange::Replace { old, id, addr })
            .await
    }

    /// Hands leadership to voter `to`, or with `None` to the voter whose log best matches the
    /// leader's. Returns once this node sees the new leader, with how long it took.
    pub async fn transfer_leadership(
        &self,
        to: Option<NodeId>,
    ) -> Result<Transferred, TransferError> {
        let started = Instant::now();
        let result = self
            .raft
            .ask(TransferLeadership { to })
            .reply_timeout(self.request_timeout)
            .await;
        match result {
            Ok(leader) => Ok(Transferred {
                leader,
                elapsed: started.elapsed(),
            }),
            Err(SendError::HandlerError(e)) => Err(e),
            Err(SendError::Timeout(_)) => Err(TransferError::Timeout {
                elapsed: started.elapsed(),
            }),
            Err(_) => Err(TransferError::Unavailable(
                self.propose_error(AskFailure::NotRunning),
            )),
        }
    }
}
