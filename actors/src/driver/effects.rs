//! [`Effects`]: what one Ready round asks the runtime to do, in the order it must be done.

use raft::{
    ReadState,
    eraftpb::{Entry, HardState, Message, SnapshotMetadata},
};

use crate::types::Role;

/// What one Ready round must make durable, in the driver's terms (the runtime adds the stored
/// snapshot's record when the round installs one).
#[derive(Debug, Default)]
pub(crate) struct Persist {
    /// The Ready number, confirmed back through [`super::Driver::on_persisted`] once durable.
    pub(crate) number: u64,
    /// New entries; any stored entry at or after the first one's index is replaced.
    pub(crate) entries: Vec<Entry>,
    /// New hard state, if it changed.
    pub(crate) hard_state: Option<HardState>,
    /// True when Raft needs this on disk before acting on it (entries, term, vote or a
    /// snapshot changed); false for commit-index-only updates.
    pub(crate) must_sync: bool,
}

/// The work one Ready round hands to the runtime. Handle the fields in declaration order:
/// send `send_now`, apply `committed`, queue `persist`, hold `send_after_persist` until the
/// StorageActor confirms `number`, then answer `read_states` once applied far enough.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// The Ready number; persistence is confirmed by number, in order.
    pub(crate) number: u64,
    /// A leader's messages, which may go out before its own write is durable (Raft thesis
    /// 10.2.1: the leader's disk write and the followers' run in parallel).
    pub(crate) send_now: Vec<Message>,
    /// A snapshot from the leader to install: restore the state machine from it before anything
    /// else (the persist batch must carry it too; there are no committed entries in this round).
    pub(crate) install: Option<SnapshotMetadata>,
    /// Committed entries to apply, in order.
    pub(crate) committed: Vec<Entry>,
    /// What must be made durable; `None` when this round changed nothing on disk.
    pub(crate) persist: Option<Persist>,
    /// Messages that may only leave once `persist` is durable (votes, append responses).
    pub(crate) send_after_persist: Vec<Message>,
    /// ReadIndex confirmations: the read with this context may be served once the state machine
    /// has applied `index`.
    pub(crate) read_states: Vec<ReadState>,
    /// New role and leader, when they changed.
    pub(crate) role_change: Option<(Role, Option<u64>)>,
}
