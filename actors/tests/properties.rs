//! Property tests: the wire codec round-trips every frame and never panics on arbitrary bytes;
//! the redb store behaves like a simple model of a Raft log under random operation sequences.

use std::collections::BTreeMap;

use iroh_raft_actors::{
    CorruptionKind, LogDb, MembershipRefusal, PersistBatch, SnapshotRecord, SnapshotWriter,
    StorageError,
    wire::{
        ForwardOutcome, ForwardReply, ForwardRequest, ForwardedProposal, Frame, Hello,
        TransferRefusal, WireEntry, WireMessage, WireSnapshotMeta, decode_frame, encode_frame,
        validate_frame,
    },
};
use proptest::prelude::*;
use raft::eraftpb::{ConfState, Entry, HardState};

fn wire_entry() -> impl Strategy<Value = WireEntry> {
    (
        0u8..3,
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(entry_type, term, index, data, context)| WireEntry {
            entry_type,
            term,
            index,
            data,
            context,
        })
}

fn wire_message() -> impl Strategy<Value = WireMessage> {
    (
        (
            any::<u8>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        prop::collection::vec(wire_entry(), 0..4),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            any::<u64>(),
            any::<i64>(),
        ),
        prop::option::of((
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(any::<u64>(), 0..5),
        )),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(
            |(
                (msg_type, to, from, term, log_term, index),
                entries,
                (commit, commit_term, request_snapshot, reject, reject_hint, priority),
                snap,
                context,
            )| WireMessage {
                msg_type,
                to,
                from,
                term,
                log_term,
                index,
                entries,
                commit,
                commit_term,
                snapshot: snap.map(|(index, term, voters)| WireSnapshotMeta {
                    index,
                    term,
                    voters,
                    ..Default::default()
                }),
                request_snapshot,
                reject,
                reject_hint,
                context,
                priority,
            },
        )
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(version, from, to)| Frame::Hello(
            Hello {
                version,
                from,
                to,
                incarnation: from ^ to,
            }
        )),
        prop::collection::vec(wire_message(), 0..4).prop_map(Frame::Raft),
        prop::collection::vec(
            (any::<u64>(), prop::collection::vec(any::<u8>(), 0..32)),
            0..4
        )
        .prop_map(|v| Frame::Forward(
            v.into_iter()
                .map(|(id, data)| ForwardedProposal {
                    session: id / 3,
                    id,
                    term: id / 7,
                    trace: (id % 2 == 0).then_some(iroh_raft_actors::TraceContext {
                        trace_id: [id as u8; 16],
                        span_id: [3; 8],
                        flags: 1,
                    }),
                    request: match id % 3 {
                        0 => ForwardRequest::Command(data),
                        1 => ForwardRequest::Membership {
                            change: data,
                            max_lag: Some(id / 5).filter(|l| l % 2 == 0),
                        },
                        _ => ForwardRequest::Transfer(Some(id / 11).filter(|t| t % 2 == 0)),
                    },
                })
                .collect()
        )),
        prop::collection::vec(
            (any::<u64>(), any::<bool>(), any::<u64>(), any::<u64>()),
            0..4
        )
        .prop_map(|v| Frame::ForwardReply(
            v.into_iter()
                .map(|(id, ok, a, b)| ForwardReply {
                    session: a ^ id,
                    id,
                    outcome: match (ok, a % 5) {
                        (true, _) => ForwardOutcome::Appended { index: a, term: b },
                        (false, 0) => ForwardOutcome::NotLeader {
                            leader_hint: Some(b).filter(|b| b % 2 == 0),
                        },
                        (false, 1) => ForwardOutcome::TransferStarted { to: b },
                        (false, 2) => ForwardOutcome::Busy,
                        (false, 3) =>
                            ForwardOutcome::MembershipRefused(MembershipRefusal::NotCaughtUp {
                                id: b,
                                lag: a
                            },),
                        _ => ForwardOutcome::TransferRefused(TransferRefusal::NotAVoter(b)),
                    },
                })
                .collect()
        )),
        wire_message().prop_map(|m| Frame::SnapshotHeader(Box::new(m))),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(Frame::SnapshotChunk),
        (any::<u64>(), any::<u32>())
            .prop_map(|(size, checksum)| Frame::SnapshotEnd { size, checksum }),
        (any::<u64>(), any::<[u8; 32]>())
            .prop_map(|(index, hash)| Frame::Checkpoint { index, hash }),
    ]
}

proptest! {
    #[test]
    fn every_frame_round_trips(f in frame()) {
        let mut out = Vec::new();
        encode_frame(&f, &mut out).unwrap();
        prop_assert_eq!(decode_frame(&out[4..]).unwrap(), f);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(frame) = decode_frame(&bytes) {
            // Whatever decodes must also survive validation without panicking.
            let _ = validate_frame(frame, 1, 2);
        }
    }

    #[test]
    fn mutated_frames_never_panic(f in frame(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut out = Vec::new();
        encode_frame(&f, &mut out).unwrap();
        let mut payload = out[4..].to_vec();
        for (i, b) in flips {
            let i = i.index(payload.len());
            payload[i] ^= b;
        }
        if let Ok(frame) = decode_frame(&payload) {
            let _ = validate_frame(frame, 1, 2);
        }
    }
}

/// One operation on the store.
#[derive(Debug, Clone)]
enum StoreOp {
    /// Append `count` entries of `term` starting `back` entries before the end (overwriting).
    Append {
        back: u64,
        count: u64,
        term: u64,
    },
    HardState {
        term: u64,
        commit: u64,
    },
    /// Snapshot at `at` entries after the log start, purge `keep` entries before it.
    Snapshot {
        at: u64,
        keep: u64,
    },
    /// Install a leader's snapshot `ahead` entries past our last index.
    Install {
        ahead: u64,
    },
    /// A hard state whose commit lies `past` entries beyond the log: recovery must refuse it.
    /// The previous hard state is written back afterwards.
    CommitPastTheLog {
        past: u64,
    },
    Reopen,
}

fn store_op() -> impl Strategy<Value = StoreOp> {
    prop_oneof![
        4 => (0u64..4, 1u64..6, 1u64..5).prop_map(|(back, count, term)| StoreOp::Append { back, count, term }),
        1 => (1u64..5, 0u64..50).prop_map(|(term, commit)| StoreOp::HardState { term, commit }),
        1 => (0u64..10, 0u64..4).prop_map(|(at, keep)| StoreOp::Snapshot { at, keep }),
        1 => (0u64..5).prop_map(|ahead| StoreOp::Install { ahead }),
        1 => (1u64..5).prop_map(|past| StoreOp::CommitPastTheLog { past }),
        1 => Just(StoreOp::Reopen),
    ]
}

/// What the store should hold.
#[derive(Default, Debug)]
struct Model {
    start: (u64, u64),
    log: BTreeMap<u64, u64>,
    hard_state: Option<(u64, u64)>,
    snapshot: Option<(u64, u64)>,
}

impl Model {
    fn last(&self) -> u64 {
        self.log.keys().next_back().copied().unwrap_or(self.start.0)
    }

    /// The highest term the records mention: what a Raft node's current term is at least.
    fn term(&self) -> u64 {
        let log = self.log.values().copied().max().unwrap_or(0);
        let hs = self.hard_state.map_or(0, |(t, _)| t);
        log.max(hs).max(self.start.1).max(1)
    }

    /// The commit index, if a hard state was written.
    fn commit(&self) -> u64 {
        self.hard_state.map_or(0, |(_, c)| c)
    }

    /// Writes a hard state to the store and the model.
    fn set_hard_state(&mut self, db: &mut LogDb, term: u64, commit: u64) {
        let hs = HardState {
            term,
            commit,
            ..Default::default()
        };
        db.write(
            &[PersistBatch {
                hard_state: Some(hs),
                ..Default::default()
            }],
            false,
        )
        .unwrap();
        self.hard_state = Some((term, commit));
    }

    /// Whether the records describe a Raft state raft-rs could start from (what `recover`
    /// checks): terms never go down along the log, no entry is newer than the hard state's
    /// term, and the commit index is within the log or the snapshot.
    fn consistent(&self) -> bool {
        let (hs_term, commit) = self.hard_state.unwrap_or((0, 0));
        let mut prev = self.start.1;
        for &t in self.log.values() {
            if t < prev {
                return false;
            }
            prev = t;
        }
        let snapshot = self.snapshot.map_or(0, |(i, _)| i);
        prev <= hs_term && commit <= self.last().max(snapshot)
    }
}

fn record(db: &mut LogDb, index: u64, term: u64) -> SnapshotRecord {
    let id = db.new_snapshot_id();
    let mut chunks = Vec::new();
    let mut w = SnapshotWriter::new(|no, c| {
        chunks.push((no, c));
        Ok(())
    });
    std::io::Write::write_all(&mut w, &index.to_le_bytes()).unwrap();
    let (size, n, checksum) = w.finish().unwrap();
    for (no, c) in chunks {
        db.write_snapshot_chunk(id, no, &c).unwrap();
    }
    SnapshotRecord {
        id,
        index,
        term,
        conf_state: ConfState::default(),
        size,
        chunks: n,
        checksum,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn the_store_matches_a_model(ops in prop::collection::vec(store_op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut db = LogDb::open(&path).unwrap();
        let mut m = Model::default();
        for op in ops {
            // The operations keep the records a state Raft could be in (terms never go down,
            // committed entries are never overwritten, the hard state's term covers the log),
            // except CommitPastTheLog, which checks that recovery refuses one it could not be in.
            match op {
                StoreOp::Append { back, count, term } => {
                    let first = (m.last() + 1)
                        .saturating_sub(back)
                        .max(m.start.0 + 1)
                        .max(m.commit() + 1);
                    let kept = m.log.range(..first).map(|(_, &t)| t).max().unwrap_or(0);
                    let term = term.max(kept).max(m.start.1);
                    let entries: Vec<Entry> = (first..first + count).map(|index| Entry { index, term, ..Default::default() }).collect();
                    let hs_term = m.term().max(term);
                    let hs = HardState { term: hs_term, commit: m.commit(), ..Default::default() };
                    db.write(&[PersistBatch { entries, hard_state: Some(hs), must_sync: true, ..Default::default() }], true).unwrap();
                    m.hard_state = Some((hs_term, m.commit()));
                    m.log.retain(|&i, _| i < first);
                    for i in first..first + count {
                        m.log.insert(i, term);
                    }
                }
                StoreOp::HardState { term, commit } => {
                    let limit = m.last().max(m.snapshot.map_or(0, |(i, _)| i));
                    let (term, commit) = (term.max(m.term()), commit.min(limit).max(m.commit()));
                    m.set_hard_state(&mut db, term, commit);
                }
                StoreOp::Snapshot { at, keep } => {
                    // A node snapshots what it applied, which is committed.
                    let index = m.start.0 + at;
                    if index > m.commit() {
                        continue;
                    }
                    let Some(&term) = m.log.get(&index) else { continue };
                    let purge = index.saturating_sub(keep);
                    let purge_to = (purge > m.start.0).then(|| (purge, m.log[&purge]));
                    let r = record(&mut db, index, term);
                    let current = db.commit_snapshot(&r, purge_to).unwrap();
                    let newer = m.snapshot.is_none_or(|(i, _)| index > i);
                    prop_assert_eq!(current, newer);
                    if newer {
                        m.snapshot = Some((index, term));
                        if let Some((p, t)) = purge_to {
                            m.log.retain(|&i, _| i > p);
                            m.start = (p, t);
                        }
                    }
                }
                StoreOp::Install { ahead } => {
                    let index = m.last() + ahead;
                    if m.snapshot.is_some_and(|(i, _)| i >= index) || index == 0 {
                        continue;
                    }
                    // A leader's snapshot comes with its term and is committed, as the hard state then says.
                    let term = m.term();
                    let r = record(&mut db, index, term);
                    let hs = HardState { term, commit: index, ..Default::default() };
                    db.write(&[PersistBatch { snapshot: Some(r), hard_state: Some(hs), must_sync: true, ..Default::default() }], true).unwrap();
                    m.hard_state = Some((term, index));
                    m.log.clear();
                    m.start = (index, term);
                    m.snapshot = Some((index, term));
                }
                StoreOp::CommitPastTheLog { past } => {
                    let (term, commit) = (m.term(), m.commit());
                    let limit = m.last().max(m.snapshot.map_or(0, |(i, _)| i));
                    m.set_hard_state(&mut db, term, limit + past);
                    prop_assert!(!m.consistent());
                    match db.recover() {
                        Err(StorageError::Corrupt(c)) => prop_assert_eq!(&c.kind, &CorruptionKind::Inconsistent),
                        other => prop_assert!(false, "a commit past the log was accepted: {other:?}"),
                    }
                    m.set_hard_state(&mut db, term, commit);
                }
                StoreOp::Reopen => {
                    db.flush().unwrap();
                    drop(db);
                    db = LogDb::open(&path).unwrap();
                }
            }
            prop_assert!(m.consistent(), "the generator left a state Raft cannot be in: {m:?}");
            let r = match db.recover() {
                Ok(r) => r,
                Err(e) => panic!("a consistent state was refused: {e}; {m:?}"),
            };
            let log: BTreeMap<u64, u64> = r.entries.iter().map(|e| (e.index, e.term)).collect();
            prop_assert_eq!(&log, &m.log);
            prop_assert_eq!(r.log_start, m.start);
            prop_assert_eq!(r.snapshot.map(|s| (s.index, s.term)), m.snapshot);
            if let Some((term, commit)) = m.hard_state {
                prop_assert_eq!((r.hard_state.term, r.hard_state.commit), (term, commit));
            }
            prop_assert_eq!(db.last_index(), m.last().max(if log.is_empty() { m.start.0 } else { 0 }));
        }
    }
}
