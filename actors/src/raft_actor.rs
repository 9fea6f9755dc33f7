//! The [`RaftActor`]: owns the [`crate::driver::Driver`], the user's state machine, every pending
//! proposal and read, and the table of PeerActors. It is the only place Raft state changes.
//!
//! Its loop (`Actor::next`) handles, in priority order: the tick timer, persistence progress from
//! the StorageActor (a watch channel, so storage never blocks on it), then mailbox messages
//! (proposals, reads, inbound frames). A Ready round runs whenever the mailbox is drained or
//! [`MAX_MESSAGES_PER_READY`] messages were handled since the last round, so proposals that
//! arrive together leave together: one persist batch, one append per follower.

mod actor;
mod changes;
mod integrity;
mod messages;
mod peers;
mod pending;
mod persistence;
mod ready;
mod snapshot;
mod snapshots;
mod transfers;

pub use actor::{RaftActor, RaftArgs};
pub use changes::{ChangeMembership, GetMembers, MembersView, TransferLeadership};
pub use integrity::{CHECKPOINT_HEARTBEATS, NotHeard, PeerHello};
pub use messages::{GetStatus, InspectLog, LinearizableQuery, LogView, Propose, Query, Shutdown};
pub use snapshot::TriggerSnapshot;

/// Most mailbox messages handled between two Ready rounds: bounds the latency a long burst adds
/// to the first message in it.
pub const MAX_MESSAGES_PER_READY: usize = 256;

/// Capacity of the RaftActor's mailbox. Proposers and inbound readers wait for room: this is
/// where backpressure from a saturated node reaches them.
pub const RAFT_MAILBOX: usize = 4096;
