//! The snapshot format: v2 round trips, v1 still restores, corruption is an error.

use super::*;

fn v1_bytes(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        for s in [k, v] {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

fn sample() -> KeyValueStore {
    store([
        set("a", "1"),
        set("b", "2"),
        set("a", "3"),
        del("b"),
        set("ü", "é"),
        set("c", ""),
    ])
}

#[test]
fn v2_round_trip_keeps_revisions() {
    let kv = sample();
    let bytes = snapshot_bytes(&kv);
    assert_eq!(&bytes[..8], b"\xff\xff\xff\xffIRKV");
    assert_eq!(bytes[8..12], 2u32.to_le_bytes());
    assert_eq!(bytes[12..20], 6u64.to_le_bytes());
    let back = restored(&bytes).unwrap();
    assert_eq!(back, kv);
    assert_eq!(back.revision(), 6);
    assert_eq!(dump(&back), dump(&kv));
    assert_eq!(back.get_kv("a"), Some(super::kv("a", "3", 1, 3, 2)));
    // An empty store round-trips too (a header alone).
    assert_eq!(
        restored(&snapshot_bytes(&KeyValueStore::new())).unwrap(),
        KeyValueStore::new()
    );
    // The store goes on from the restored revision.
    let mut back = back;
    assert_eq!(back.apply(set("a", "4")).revision, 7);
    assert_eq!(back.get_kv("a"), Some(super::kv("a", "4", 1, 7, 3)));
}

#[test]
fn restore_replaces_everything() {
    let mut kv = store([set("old", "1"), set("older", "2")]);
    kv.restore(&mut snapshot_bytes(&sample()).as_slice())
        .unwrap();
    assert_eq!(kv, sample());
}

#[test]
fn v1_snapshots_restore_at_revision_zero() {
    let kv = restored(&v1_bytes(&[("a", "1"), ("b", ""), ("", "empty key")])).unwrap();
    assert_eq!(kv.revision(), 0);
    assert_eq!(
        dump(&kv),
        [
            ("".into(), "empty key".into(), 0, 0, 1),
            ("a".into(), "1".into(), 0, 0, 1),
            ("b".into(), "".into(), 0, 0, 1),
        ]
    );
    assert_eq!(restored(&[]).unwrap(), KeyValueStore::new());
    // And they upgrade: written again as v2, restored the same.
    let mut kv = kv;
    kv.apply(set("a", "2"));
    assert_eq!(kv.get_kv("a"), Some(super::kv("a", "2", 0, 1, 2)));
    assert_eq!(restored(&snapshot_bytes(&kv)).unwrap(), kv);
}

#[test]
fn corrupt_snapshots_are_errors() {
    let good = snapshot_bytes(&sample());
    let kind = |bytes: &[u8]| restored(bytes).unwrap_err().kind();
    // Truncated inside the header or inside any key's fields. (A cut exactly between two keys
    // reads as a shorter snapshot: the runtime checksums snapshots before restoring them.)
    let mut boundaries = vec![20];
    let mut at = 20;
    while at < good.len() {
        let key = u32::from_le_bytes(good[at..at + 4].try_into().unwrap()) as usize;
        let value_at = at + 4 + key;
        let value = u32::from_le_bytes(good[value_at..value_at + 4].try_into().unwrap()) as usize;
        at = value_at + 4 + value + 24;
        boundaries.push(at);
    }
    assert_eq!(at, good.len());
    for len in 1..good.len() {
        if !boundaries.contains(&len) {
            assert_eq!(
                kind(&good[..len]),
                io::ErrorKind::UnexpectedEof,
                "cut at {len}"
            );
        }
    }
    let mut unknown = good.clone();
    unknown[8..12].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(kind(&unknown), io::ErrorKind::InvalidData);
    let mut magic = good.clone();
    magic[4] = b'X';
    assert_eq!(kind(&magic), io::ErrorKind::InvalidData);
    // A revision older than a key's: impossible.
    let mut revision = good.clone();
    revision[12..20].copy_from_slice(&1u64.to_le_bytes());
    assert_eq!(kind(&revision), io::ErrorKind::InvalidData);
    // Not UTF-8.
    let mut v1 = v1_bytes(&[("ab", "c")]);
    v1[4] = 0xC0;
    assert_eq!(kind(&v1), io::ErrorKind::InvalidData);
    // A v1 snapshot cut inside a value, and a huge length that is not there.
    let v1 = v1_bytes(&[("ab", "cd")]);
    assert_eq!(kind(&v1[..v1.len() - 1]), io::ErrorKind::UnexpectedEof);
    assert_eq!(
        kind(&[0xFE, 0xFF, 0xFF, 0xFF, b'a']),
        io::ErrorKind::UnexpectedEof
    );
}
