//! Leadership transfers a caller waits on ([`TransferWait`]): part of the RaftActor's pending
//! requests. The transfers themselves are started and seen through in `changes.rs`.

use kameo::reply::ReplySender;
use tokio::time::Instant;

use crate::{error::TransferError, types::NodeId};

/// A transfer waiting to be seen through.
pub(super) struct TransferWait {
    /// The target, or `None`: any leader other than `from`.
    pub(super) target: Option<NodeId>,
    /// The leader when the transfer was asked for.
    pub(super) from: Option<NodeId>,
    pub(super) reply: ReplySender<Result<NodeId, TransferError>>,
    pub(super) started: Instant,
    pub(super) deadline: u64,
    /// The id of the forward that carried it to the leader, when this node does not lead.
    pub(super) forward: Option<u64>,
}

impl TransferWait {
    pub(super) fn fail(self, e: TransferError) {
        self.reply.send(Err(e));
    }
}
