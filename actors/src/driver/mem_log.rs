//! [`MemLog`]: the in-memory mirror of the durable log that raft-rs reads through its `Storage`
//! trait. The RaftActor appends to it before handing a Ready to `advance_append_async` (raft-rs
//! requires entries to be readable by then); durability is tracked separately, by Ready number.

use raft::{
    GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError,
    eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata},
    util::limit_size,
};

/// Entries `(snapshot.index, last_index]`, the hard state and conf state.
///
/// Invariant: `entries[i].index == snapshot.index + 1 + i`.
#[derive(Debug, Default)]
pub(crate) struct MemLog {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    entries: Vec<Entry>,
}

impl MemLog {
    pub(crate) fn new(hard_state: HardState, conf_state: ConfState, entries: Vec<Entry>) -> Self {
        let mut snapshot = SnapshotMetadata::default();
        if let Some(first) = entries.first() {
            // Nothing before the first stored entry is available (it was compacted away).
            snapshot.index = first.index - 1;
        }
        snapshot.set_conf_state(conf_state.clone());
        Self {
            hard_state,
            conf_state,
            snapshot,
            entries,
        }
    }

    pub(crate) fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    pub(crate) fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Appends entries, replacing any conflicting tail at or after the first new index.
    pub(crate) fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        assert!(
            first.index >= self.first_index() && first.index <= self.last_index() + 1,
            "append at {} leaves a gap in a log of [{}, {}]",
            first.index,
            self.first_index(),
            self.last_index()
        );
        self.entries
            .truncate((first.index - self.first_index()) as usize);
        self.entries.extend_from_slice(ents);
    }
}

impl Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index() + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let offset = self.first_index();
        let mut ents = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if idx < self.first_index() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last_index() {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(MemLog::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(MemLog::last_index(self))
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Log compaction (and with it snapshot transfer) is not implemented yet, so no follower
        // can need entries we no longer have.
        Err(raft::Error::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn append_replaces_conflicting_tail() {
        let mut log = MemLog::new(HardState::default(), ConfState::default(), vec![]);
        log.append(&[e(1, 1), e(2, 1), e(3, 1)]);
        log.append(&[e(2, 2)]);
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.term(2).unwrap(), 2);
        assert_eq!(log.term(0).unwrap(), 0);
        assert!(log.term(3).is_err());
        let got = log
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got, vec![e(1, 1), e(2, 2)]);
    }

    #[test]
    fn recovered_log_starts_after_its_first_entry() {
        let log = MemLog::new(
            HardState::default(),
            ConfState::default(),
            vec![e(5, 2), e(6, 2)],
        );
        assert_eq!(log.first_index(), 5);
        assert_eq!(log.last_index(), 6);
        assert!(
            log.entries(4, 6, None, GetEntriesContext::empty(false))
                .is_err()
        );
    }
}
