//! The store's conformance suite (in memory and on a file) and its refusals of damaged files.

use iroh::EndpointAddr;
use raft::eraftpb::{Entry, HardState};

use super::*;
use crate::storage::records::Recovered;

fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        index,
        term,
        data: data.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn batch(number: u64, entries: Vec<Entry>, commit: u64) -> PersistBatch {
    let term = entries.iter().map(|e| e.term).max().unwrap_or(0).max(2);
    PersistBatch {
        number,
        entries,
        hard_state: Some(HardState {
            term,
            vote: 1,
            commit,
            ..Default::default()
        }),
        must_sync: true,
        ..Default::default()
    }
}

fn conformance(mut db: LogDb) -> LogDb {
    db.write(
        &[batch(1, (1..=5).map(|i| entry(i, 1, "a")).collect(), 2)],
        true,
    )
    .unwrap();
    // A new leader overwrites 4..=5 with a different tail, in the same group as more entries.
    db.write(
        &[
            batch(2, vec![entry(4, 2, "b"), entry(5, 2, "b")], 3),
            batch(3, vec![entry(6, 2, "c")], 4),
        ],
        false,
    )
    .unwrap();
    db.flush().unwrap();
    let r = db.recover().unwrap();
    let got: Vec<(u64, u64)> = r.entries.iter().map(|e| (e.index, e.term)).collect();
    assert_eq!(got, vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]);
    assert_eq!(r.hard_state.commit, 4);
    assert_eq!(db.last_index(), 6);
    // Truncating to a shorter (uncommitted) tail removes everything after it.
    db.write(&[batch(4, vec![entry(5, 3, "d")], 4)], true)
        .unwrap();
    let got: Vec<(u64, u64)> = db
        .recover()
        .unwrap()
        .entries
        .iter()
        .map(|e| (e.index, e.term))
        .collect();
    assert_eq!(got, vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 3)]);
    assert_eq!(db.last_index(), 5);
    db
}

#[test]
fn conformance_in_memory() {
    conformance(LogDb::in_memory().unwrap());
}

#[test]
fn conformance_on_file_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let mut db = conformance(LogDb::open(&path).unwrap());
    let key = iroh::SecretKey::generate().public();
    let identity = Identity {
        node_id: 7,
        endpoint_id: key,
    };
    let cs = ConfState {
        voters: vec![7, 8],
        ..Default::default()
    };
    let members = vec![Member {
        node_id: 8,
        addr: EndpointAddr::new(key).with_ip_addr("127.0.0.1:9".parse().unwrap()),
    }];
    db.bootstrap(identity, &cs, &members).unwrap();
    drop(db);
    let db = LogDb::open(&path).unwrap();
    let r = db.recover().unwrap();
    assert_eq!(r.identity, Some(identity));
    assert_eq!(r.conf_state, cs);
    assert_eq!(r.members, members);
    let got: Vec<(u64, u64)> = r.entries.iter().map(|e| (e.index, e.term)).collect();
    assert_eq!(got, vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 3)]);
    assert_eq!(db.last_index(), 5);
}

#[test]
fn a_truncated_file_is_refused_not_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let mut db = LogDb::open(&path).unwrap();
    db.write(
        &[batch(
            1,
            (1..=200).map(|i| entry(i, 1, "some payload")).collect(),
            2,
        )],
        true,
    )
    .unwrap();
    drop(db);
    let full = std::fs::read(&path).unwrap();
    for keep in [full.len() / 2, full.len() / 4, 100] {
        std::fs::write(&path, &full[..keep]).unwrap();
        let opened = LogDb::open(&path).and_then(|db| db.recover().map(|_| ()));
        assert!(
            opened.is_err(),
            "a file cut to {keep} of {} bytes was accepted",
            full.len()
        );
        assert_eq!(
            std::fs::read(&path).unwrap().len(),
            keep,
            "the file was modified"
        );
    }
}

/// Writes entries with recognisable payloads to a file, closes it, flips one byte of the
/// first occurrence of `needle` in the file, and recovers it again.
fn damage_and_recover(needle: &[u8]) -> Result<Recovered, StorageError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let mut db = LogDb::open(&path).unwrap();
    let entries = (1..=50)
        .map(|i| entry(i, 1, &format!("payload-{i:04}")))
        .collect();
    db.write(&[batch(1, entries, 40)], true).unwrap();
    drop(db);
    let mut file = std::fs::read(&path).unwrap();
    let at = file
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in file");
    file[at + needle.len() - 1] ^= 0x01;
    std::fs::write(&path, &file).unwrap();
    LogDb::open(&path)?.recover()
}

/// A byte changed on disk is caught at open, by redb's page checksums (verified at every
/// open) or by the record's own seal; never served.
#[test]
fn a_changed_byte_in_the_file_is_refused() {
    // An entry's value, and the hard state record (term 2, vote 1, commit 40).
    let mut hard_state = 2u64.to_le_bytes().to_vec();
    hard_state.extend_from_slice(&1u64.to_le_bytes());
    hard_state.extend_from_slice(&40u64.to_le_bytes());
    for needle in [&b"payload-0017"[..], &hard_state] {
        match damage_and_recover(needle) {
            Err(StorageError::Corrupt(c)) => {
                assert_eq!(c.kind, CorruptionKind::Checksum);
                let message = c.to_string();
                assert!(message.contains("remove this member"), "{message}");
            }
            other => panic!("expected a corruption, got {other:?}"),
        }
    }
}

/// Writes `value` as the raw stored bytes of a record, bypassing the codecs.
fn put_raw(db: &LogDb, key: RawKey, value: &[u8]) {
    let tx = db.db.begin_write().unwrap();
    match key {
        RawKey::Log(index) => {
            tx.open_table(LOG).unwrap().insert(index, value).unwrap();
        }
        RawKey::Meta(key) => {
            tx.open_table(META).unwrap().insert(key, value).unwrap();
        }
    }
    tx.commit().unwrap();
}

enum RawKey {
    Log(u64),
    Meta(&'static str),
}

#[test]
fn a_record_whose_seal_does_not_match_is_refused_naming_it() {
    let mut db = LogDb::in_memory().unwrap();
    db.write(
        &[batch(1, (1..=20).map(|i| entry(i, 1, "v")).collect(), 10)],
        true,
    )
    .unwrap();
    let mut sealed = Vec::new();
    codec::encode_entry(&entry(17, 1, "v"), &mut sealed);
    sealed[14] ^= 0x40;
    put_raw(&db, RawKey::Log(17), &sealed);
    match db.recover() {
        Err(StorageError::Corrupt(c)) => {
            assert_eq!(c.location, DataLocation::LogEntry { index: 17 });
            assert_eq!(c.kind, CorruptionKind::Checksum);
            assert!(c.to_string().contains("log entry 17"), "{c}");
        }
        other => panic!("expected a corruption of entry 17, got {other:?}"),
    }
    // The same entry stored under another index fails its seal too.
    let mut moved = Vec::new();
    codec::encode_entry(&entry(16, 1, "v"), &mut moved);
    put_raw(&db, RawKey::Log(17), &moved);
    assert!(matches!(db.recover(), Err(StorageError::Corrupt(c))
        if c.location == DataLocation::LogEntry { index: 17 }));
    // A metadata record.
    let hs = codec::encode_hard_state(&HardState {
        term: 2,
        commit: 9,
        ..Default::default()
    });
    put_raw(&db, RawKey::Meta(meta_key::HARD_STATE), &hs);
    match db.recover() {
        Err(StorageError::Corrupt(c)) => {
            assert_eq!(c.location, DataLocation::Meta { key: "hard_state" });
            assert_eq!(c.kind, CorruptionKind::Checksum);
        }
        other => panic!("expected a corrupt hard state, got {other:?}"),
    }
}

#[test]
fn a_commit_index_beyond_the_log_is_refused_before_raft_sees_it() {
    let mut db = LogDb::in_memory().unwrap();
    db.write(
        &[batch(1, vec![entry(1, 1, "a"), entry(2, 1, "b")], 2)],
        true,
    )
    .unwrap();
    db.write(&[batch(2, Vec::new(), 9)], true).unwrap();
    match db.recover() {
        Err(StorageError::Corrupt(c)) => {
            assert_eq!(c.kind, CorruptionKind::Inconsistent);
            assert!(c.detail.contains("commit index 9"), "{}", c.detail);
        }
        other => panic!("expected an inconsistency, got {other:?}"),
    }
}

#[test]
fn another_format_version_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    drop(LogDb::open(&path).unwrap());
    {
        let db = Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert(meta_key::FORMAT_VERSION, 99u32.to_le_bytes().as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    match LogDb::open(&path) {
        Err(StorageError::IncompatibleVersion {
            found: 99,
            supported,
        }) => assert_eq!(supported, FORMAT_VERSION),
        other => panic!("expected IncompatibleVersion, got {other:?}"),
    }
}

#[test]
fn foreign_file_is_refused_not_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    assert!(LogDb::open(&path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
}
