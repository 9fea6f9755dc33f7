//! [`ClientError`]: how a management call failed, and what the cluster may have done with it.

use std::time::Duration;

use iroh_raft_actors::wire::MgmtErrorKind;

/// How a management call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A member refused this client (no valid ticket, not on the allowlist). Nothing was sent.
    #[error("refused by the cluster: {reason}")]
    Refused {
        /// What the member said.
        reason: String,
    },
    /// No member admitted this client in time, or the request never left it: nothing was sent.
    #[error("no member reachable: {reason}")]
    Unreachable {
        /// What the last attempt reported.
        reason: String,
    },
    /// The client's role does not allow the request.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request reached the cluster and failed.
    #[error("{kind:?}: {message}")]
    Failed {
        /// The kind, for programs.
        kind: MgmtErrorKind,
        /// What the node said.
        message: String,
    },
    /// A command, query or answer did not (de)serialize.
    #[error("codec: {0}")]
    Codec(String),
    /// A request without effect (status, health, a read, a snapshot, a ticket) was sent and
    /// not answered within the client's timeout. Never a change or a command: those are
    /// [`Self::OutcomeUnknown`].
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A change or a command was sent and not answered (its connection was lost, or no answer
    /// came in time): it may or may not take effect (the client does not resend it, which could
    /// apply it twice).
    #[error("outcome unknown: {reason}")]
    OutcomeUnknown {
        /// What happened.
        reason: String,
    },
    /// A backup could not be saved: the member failed it, the bytes received do not verify, or
    /// writing them out failed. What was written is not a backup.
    #[error("backup: {0}")]
    Backup(String),
    /// The encoded command is larger than a node accepts; nothing was sent.
    #[error("command of {size} bytes is larger than the limit of {max} bytes")]
    TooLarge {
        /// Its encoded size.
        size: usize,
        /// [`MAX_COMMAND_SIZE`](iroh_raft_actors::wire::MAX_COMMAND_SIZE).
        max: usize,
    },
}
