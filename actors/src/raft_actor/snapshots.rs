//! The RaftActor's snapshot state ([`Snapshots`]: the current one, one being taken, ones
//! received and awaiting install) and the plain helpers around stored snapshots. The work on the
//! actor (taking, installing, sending) is in `snapshot.rs`.

use std::{collections::BTreeMap, io};

use kameo::reply::ReplySender;
use raft::eraftpb::SnapshotMetadata;

use crate::{
    error::SnapshotError,
    membership::{SnapshotHeader, read_snapshot_header},
    state_machine::StateMachine,
    storage::{SnapshotReader, SnapshotRecord},
};

/// Received snapshots kept while raft-rs decides whether to install them. A leader sends one at a
/// time per follower, so two cover a snapshot arriving while the previous one is being installed.
pub(super) const MAX_STAGED: usize = 2;

/// raft-rs's view of a stored snapshot.
pub(crate) fn snapshot_meta(r: &SnapshotRecord) -> SnapshotMetadata {
    let mut meta = SnapshotMetadata {
        index: r.index,
        term: r.term,
        ..Default::default()
    };
    meta.set_conf_state(r.conf_state.clone());
    meta
}

pub(super) type TriggerReply = ReplySender<Result<u64, SnapshotError>>;

/// The RaftActor's snapshot state.
pub(crate) struct Snapshots {
    /// The durable snapshot raft-rs may send.
    pub(super) current: Option<SnapshotRecord>,
    /// A snapshot is being written out.
    pub(super) taking: bool,
    /// Callers of `TriggerSnapshot` waiting for the one being written.
    pub(super) waiters: Vec<TriggerReply>,
    /// Received from a leader, keyed by (index, term), awaiting install.
    pub(super) staged: BTreeMap<(u64, u64), SnapshotRecord>,
    /// An installed snapshot's (Ready number, index): raft-rs may count it applied only once
    /// that Ready is durable.
    pub(crate) applied_when_persisted: Option<(u64, u64)>,
}

impl Snapshots {
    pub(crate) fn new(current: Option<SnapshotRecord>) -> Self {
        Self {
            current,
            taking: false,
            waiters: Vec::new(),
            staged: BTreeMap::new(),
            applied_when_persisted: None,
        }
    }

    pub(super) fn index(&self) -> u64 {
        self.current.as_ref().map_or(0, |c| c.index)
    }

    pub(crate) fn fail_waiters(&mut self, err: SnapshotError) {
        for w in self.waiters.drain(..) {
            w.send(Err(err.clone()));
        }
    }
}

/// Reads a stored snapshot's header and restores `sm` from the state bytes that follow (when it
/// has any). An error from the reader may be a [`SnapshotReader::corruption`].
pub(super) fn restore_from<S: StateMachine>(
    reader: &mut SnapshotReader,
    sm: &mut S,
) -> io::Result<SnapshotHeader> {
    let header = read_snapshot_header(reader)?;
    if header.has_state {
        sm.restore(reader)?;
    }
    Ok(header)
}
