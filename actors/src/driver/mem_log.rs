//! [`MemLog`]: the in-memory mirror of the durable log that raft-rs reads through its `Storage`
//! trait. The RaftActor appends to it before handing a Ready to `advance_append_async` (raft-rs
//! requires entries to be readable by then); durability is tracked separately, by Ready number.
//! It holds entries after the last compaction only, and the metadata (not the bytes) of the
//! latest snapshot, which is what raft-rs puts in a `MsgSnapshot`; the bytes stay in redb and
//! travel on a stream of their own.

use raft::{
    GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError,
    eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata},
    util::limit_size,
};

/// Entries `(start.0, last_index]`, the hard state, the conf state and the latest snapshot's
/// metadata.
///
/// Invariants: `entries[i].index == start.0 + 1 + i`; `snapshot.index >= start.0` once a
/// snapshot exists.
#[derive(Debug, Default)]
pub(crate) struct MemLog {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the entry just before the first one held.
    start: (u64, u64),
    snapshot: SnapshotMetadata,
    entries: Vec<Entry>,
}

impl MemLog {
    /// A log over recovered state: `start` is where the stored log begins, `snapshot` the
    /// current snapshot's metadata (index 0 when there is none).
    pub(crate) fn new(
        hard_state: HardState,
        conf_state: ConfState,
        start: (u64, u64),
        snapshot: SnapshotMetadata,
        entries: Vec<Entry>,
    ) -> Self {
        debug_assert!(entries.first().is_none_or(|e| e.index == start.0 + 1));
        Self {
            hard_state,
            conf_state,
            start,
            snapshot,
            entries,
        }
    }

    pub(crate) fn first_index(&self) -> u64 {
        self.start.0 + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.start.0 + self.entries.len() as u64
    }

    pub(crate) fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// A configuration change was applied: snapshots taken from now on carry this one.
    pub(crate) fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The latest snapshot's metadata (index 0: none).
    pub(crate) fn snapshot_meta(&self) -> &SnapshotMetadata {
        &self.snapshot
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

    /// A local snapshot became current: remember it, and drop entries up to `purge_to` (a
    /// trailing window before the snapshot stays for followers that are slightly behind).
    pub(crate) fn snapshot_taken(&mut self, meta: SnapshotMetadata, purge_to: u64) {
        let purge_to = purge_to.min(self.last_index());
        if purge_to > self.start.0 {
            let term = self.term_at(purge_to).expect("purge point is in the log");
            self.entries.drain(..(purge_to - self.start.0) as usize);
            self.start = (purge_to, term);
        }
        self.snapshot = meta;
    }

    /// A snapshot from the leader replaces the whole log.
    pub(crate) fn install_snapshot(&mut self, meta: SnapshotMetadata) {
        self.entries.clear();
        self.start = (meta.index, meta.term);
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.snapshot = meta;
    }

    fn term_at(&self, idx: u64) -> Option<u64> {
        if idx == self.start.0 {
            return Some(self.start.1);
        }
        if idx < self.first_index() || idx > self.last_index() {
            return None;
        }
        Some(self.entries[(idx - self.first_index()) as usize].term)
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
        if idx < self.start.0 {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        self.term_at(idx)
            .ok_or(raft::Error::Store(RaftStorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(MemLog::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(MemLog::last_index(self))
    }

    /// The latest snapshot's metadata; its bytes are streamed from redb by the PeerActor.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.index == 0 || self.snapshot.index < request_index {
            // None yet (or too old): the RaftActor takes one when the log outgrows its limit;
            // raft-rs asks again later.
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(self.snapshot.clone());
        Ok(snap)
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

    fn empty() -> MemLog {
        MemLog::new(
            HardState::default(),
            ConfState::default(),
            (0, 0),
            SnapshotMetadata::default(),
            vec![],
        )
    }

    #[test]
    fn append_replaces_conflicting_tail() {
        let mut log = empty();
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
    fn a_taken_snapshot_compacts_behind_a_trailing_window() {
        let mut log = empty();
        log.append(&(1..=10).map(|i| e(i, 1)).collect::<Vec<_>>());
        assert!(log.snapshot(0, 2).is_err(), "no snapshot yet");
        let meta = SnapshotMetadata {
            index: 8,
            term: 1,
            ..Default::default()
        };
        log.snapshot_taken(meta.clone(), 5);
        assert_eq!(log.first_index(), 6);
        assert_eq!(log.term(5).unwrap(), 1);
        assert!(matches!(
            log.term(4),
            Err(raft::Error::Store(RaftStorageError::Compacted))
        ));
        assert!(matches!(
            log.entries(5, 7, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(RaftStorageError::Compacted))
        ));
        assert_eq!(log.snapshot(0, 2).unwrap().get_metadata(), &meta);
    }

    #[test]
    fn an_installed_snapshot_replaces_everything() {
        let mut log = empty();
        log.append(&[e(1, 1), e(2, 1), e(3, 2)]);
        let mut meta = SnapshotMetadata {
            index: 7,
            term: 3,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![1, 2];
        log.install_snapshot(meta);
        assert_eq!((log.first_index(), log.last_index()), (8, 7));
        assert_eq!(log.term(7).unwrap(), 3);
        assert_eq!(log.conf_state().voters, vec![1, 2]);
        assert_eq!(log.initial_state().unwrap().hard_state.commit, 7);
        log.append(&[e(8, 3)]);
        assert_eq!(log.last_index(), 8);
    }
}
