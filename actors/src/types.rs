//! Small value types shared by every layer: node ids, roles, status snapshots.

use serde::{Deserialize, Serialize};

/// A member's Raft id. Unique within a cluster, never reused for another key, never 0.
pub type NodeId = u64;

/// What a node currently is in Raft terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Checking whether an election could succeed before disturbing the cluster (pre-vote).
    PreCandidate,
    /// Asking for votes in a new term.
    Candidate,
    /// Accepts proposals and replicates them.
    Leader,
}

impl Role {
    /// Its name as the management protocol and the CLI print it (`leader`, `follower`,
    /// `candidate`, `pre-candidate`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            Role::Follower => "follower",
        }
    }

    pub(crate) fn from_raft(role: raft::StateRole) -> Self {
        match role {
            raft::StateRole::Follower => Role::Follower,
            raft::StateRole::PreCandidate => Role::PreCandidate,
            raft::StateRole::Candidate => Role::Candidate,
            raft::StateRole::Leader => Role::Leader,
        }
    }
}

/// A point-in-time view of one node, as its RaftActor sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, kameo::Reply)]
#[non_exhaustive]
pub struct NodeStatus {
    /// This node's id.
    pub node_id: NodeId,
    /// This node's role.
    pub role: Role,
    /// The leader this node knows of, if any.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: u64,
    /// Highest index known to be committed.
    pub commit_index: u64,
    /// Highest index applied to the state machine.
    pub applied_index: u64,
    /// Index of the last entry in this node's log.
    pub last_index: u64,
    /// Highest index known durable on this node's disk.
    pub persisted_index: u64,
    /// First index still in the log (entries before it were compacted into a snapshot).
    pub first_index: u64,
    /// Last index covered by this node's current snapshot (0: none).
    pub snapshot_index: u64,
    /// The current voters.
    pub voters: Vec<NodeId>,
    /// Members whose applied entries this node found to differ from its own (the replica
    /// consistency check): a corruption alarm for each.
    pub diverged: Vec<NodeId>,
}

/// Who leads, in which term, and this node's role: what the RaftActor publishes on a watch
/// ([`crate::Facts::leadership`]) whenever one of them changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// The leader this node knows of, if any.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: u64,
    /// This node's role.
    pub role: Role,
}

impl Default for Leadership {
    fn default() -> Self {
        Self {
            leader: None,
            term: 0,
            role: Role::Follower,
        }
    }
}
