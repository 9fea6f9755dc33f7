//! Membership on [`RaftCluster`]: add, promote, remove and replace members, join, and hand
//! leadership over (proxies to [`iroh_raft_actors::NodeCalls`]). Every call works on any member (a follower forwards to the leader); each
//! change goes through the log as one `ConfChangeV2`, one at a time.

#[cfg(doc)]
use iroh_raft_actors::MembershipRefusal;
use iroh_raft_actors::{
    JoinOptions, MemberInfo, MemberRole, MembersView, NodeId, ProposeError, ReadError,
    StateMachine, TransferError, Transferred,
};

use crate::{RaftCluster, net::PeerAddr};

/// The membership as one node has applied it.
#[derive(Debug, Clone)]
pub struct Members {
    /// The cluster's id (hex).
    pub cluster_id: String,
    /// Every member with its endpoint and role.
    pub members: Vec<MemberInfo>,
    /// The leader that node knows of.
    pub leader: Option<NodeId>,
}

impl Members {
    /// Ids of the voters.
    pub fn voters(&self) -> Vec<NodeId> {
        self.with_role(MemberRole::Voter)
    }

    /// Ids of the learners.
    pub fn learners(&self) -> Vec<NodeId> {
        self.with_role(MemberRole::Learner)
    }

    fn with_role(&self, role: MemberRole) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|m| m.role == role)
            .map(|m| m.node_id)
            .collect()
    }
}

/// Hex form of a cluster id.
pub(crate) fn cluster_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl<S: StateMachine> RaftCluster<S> {
    /// The membership as this node has applied it (a follower may lag the leader slightly).
    pub async fn members(&self) -> Result<Members, ReadError> {
        let view = self.members_view().await?;
        Ok(Members {
            cluster_id: cluster_hex(&view.cluster_id),
            members: view.members,
            leader: view.leader,
        })
    }

    pub(crate) async fn members_view(&self) -> Result<MembersView, ReadError> {
        self.calls().members_view().await
    }

    /// Adds a non-voting member that receives the log. Its endpoint id is admitted from the
    /// moment the change applies.
    pub async fn add_learner(
        &self,
        id: NodeId,
        addr: impl Into<PeerAddr>,
    ) -> Result<u64, ProposeError> {
        self.calls().add_learner(id, addr.into().0).await
    }

    /// Adds a voter directly. Prefer [`Self::join`]: a voter that starts empty weakens the quorum
    /// until it has caught up.
    pub async fn add_voter(
        &self,
        id: NodeId,
        addr: impl Into<PeerAddr>,
    ) -> Result<u64, ProposeError> {
        self.calls().add_voter(id, addr.into().0).await
    }

    /// Gives member `id` new addresses (a node that moved, or a NAT that changed): its key and
    /// role stay, and every node dials it there from the moment the change applies. A new key
    /// is a new member (refused here: use [`Self::replace`]).
    pub async fn update_address(
        &self,
        id: NodeId,
        addr: impl Into<PeerAddr>,
    ) -> Result<u64, ProposeError> {
        self.calls().update_address(id, addr.into().0).await
    }

    /// Makes learner `id` a voter now, however far behind it is.
    pub async fn promote(&self, id: NodeId) -> Result<u64, ProposeError> {
        self.calls().promote(id).await
    }

    /// Adds `id` as a learner, waits until its log is within `options.max_lag` entries of the
    /// leader's, then promotes it. A learner that does not catch up within `options.timeout` is
    /// left a learner and the call fails with [`MembershipRefusal::NotCaughtUp`].
    pub async fn join(
        &self,
        id: NodeId,
        addr: impl Into<PeerAddr>,
        options: JoinOptions,
    ) -> Result<u64, ProposeError> {
        self.actors().join(id, addr.into().0, options).await
    }

    /// Removes a member. Removing the leader hands leadership to the most up-to-date other
    /// voter first. The removed node stops once it learns of its removal, and its endpoint id is
    /// refused from then on; its id is never reused. Returns the change's index — or 0 when this
    /// node removed itself and stopped before the change was applied here (it was committed:
    /// a member told it so).
    pub async fn remove_member(&self, id: NodeId) -> Result<u64, ProposeError> {
        self.actors().remove_member(id).await
    }

    /// Swaps voter `old` for a new voter in one joint-consensus step.
    pub async fn replace(
        &self,
        old: NodeId,
        id: NodeId,
        addr: impl Into<PeerAddr>,
    ) -> Result<u64, ProposeError> {
        self.actors().replace(old, id, addr.into().0).await
    }

    /// Hands leadership to voter `to`, or with `None` to the voter whose log best matches the
    /// leader's. Returns once this node sees the new leader, with how long it took.
    pub async fn transfer_leadership(
        &self,
        to: Option<NodeId>,
    ) -> Result<Transferred, TransferError> {
        self.calls().transfer_leadership(to).await
    }
}
