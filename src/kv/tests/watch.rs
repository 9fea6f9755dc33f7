//! The watch history: order, filters, whole revisions, cursors, compaction.

use super::*;

fn revisions(events: &[WatchEvent]) -> Vec<(u64, &str)> {
    events
        .iter()
        .map(|e| (e.kv.mod_revision, e.kv.key.as_str()))
        .collect()
}

#[test]
fn changes_in_order_with_previous_values() {
    let kv = store([set("a", "1"), set("b", "2"), set("a", "3"), del("a")]);
    let (events, cursor, more) = kv.changes_since(1, "a", false, 0).unwrap();
    assert_eq!((cursor, more), (5, false));
    assert_eq!(
        events,
        [
            WatchEvent {
                kind: WatchEventKind::Put,
                kv: super::kv("a", "1", 1, 1, 1),
                prev: None,
            },
            WatchEvent {
                kind: WatchEventKind::Put,
                kv: super::kv("a", "3", 1, 3, 2),
                prev: Some(super::kv("a", "1", 1, 1, 1)),
            },
            WatchEvent {
                kind: WatchEventKind::Delete,
                kv: super::kv("a", "", 0, 4, 0),
                prev: Some(super::kv("a", "3", 1, 3, 2)),
            },
        ]
    );
    let (events, ..) = kv.changes_since(3, "a", false, 0).unwrap();
    assert_eq!(revisions(&events), [(3, "a"), (4, "a")]);
    // From revision 0 means from the start; from the future, nothing yet.
    assert_eq!(kv.changes_since(0, "b", false, 0).unwrap().0.len(), 1);
    assert_eq!(
        kv.changes_since(5, "a", false, 0).unwrap(),
        (vec![], 5, false)
    );
    assert_eq!(
        kv.changes_since(9, "a", false, 0).unwrap(),
        (vec![], 9, false)
    );
}

#[test]
fn prefix_filter() {
    let kv = store([
        set("a/1", "x"),
        set("b/1", "x"),
        set("a/2", "x"),
        set("a", "x"),
    ]);
    let (events, ..) = kv.changes_since(1, "a/", true, 0).unwrap();
    assert_eq!(revisions(&events), [(1, "a/1"), (3, "a/2")]);
    let (events, ..) = kv.changes_since(1, "", true, 0).unwrap();
    assert_eq!(events.len(), 4);
    let (events, ..) = kv.changes_since(1, "a/", false, 0).unwrap();
    assert!(events.is_empty());
}

#[test]
fn a_revision_is_never_split() {
    let mut kv = store([set("x", "0")]);
    kv.apply(KvCommand::Txn(Txn {
        success: ["a", "b", "c"].map(|k| put(k, "1")).into(),
        ..Txn::default()
    }));
    kv.apply(KvCommand::DeletePrefix {
        prefix: String::new(),
    });
    kv.apply(set("z", "1"));
    // Cut after revision 2 although the cap is 1: its three events go together.
    let (events, cursor, more) = kv.changes_since(2, "", true, 1).unwrap();
    assert_eq!(revisions(&events), [(2, "a"), (2, "b"), (2, "c")]);
    assert_eq!((cursor, more), (3, true));
    let (events, cursor, more) = kv.changes_since(cursor, "", true, 2).unwrap();
    assert_eq!(revisions(&events), [(3, "a"), (3, "b"), (3, "c"), (3, "x")]);
    assert!(events.iter().all(|e| e.kind == WatchEventKind::Delete));
    assert_eq!((cursor, more), (4, true));
    let (events, cursor, more) = kv.changes_since(cursor, "", true, 2).unwrap();
    assert_eq!(revisions(&events), [(4, "z")]);
    assert_eq!((cursor, more), (5, false));
}

#[test]
fn cursors_continue_where_the_last_step_stopped() {
    let kv = store((0..50).map(|i| set(&format!("k{}", i % 7), &i.to_string())));
    let (all, ..) = kv.changes_since(1, "k", true, 0).unwrap();
    let (mut collected, mut cursor) = (Vec::new(), 1);
    loop {
        let (events, next, more) = kv.changes_since(cursor, "k", true, 3).unwrap();
        assert!(events.len() <= 3);
        collected.extend(events);
        cursor = next;
        if !more {
            break;
        }
    }
    assert_eq!(cursor, 51);
    assert_eq!(collected, all);
}

#[test]
fn old_revisions_are_compacted() {
    let mut kv = store((0..WATCH_HISTORY + 5).map(|i| set(&format!("{}", i % 10), "v")));
    let err = kv.changes_since(1, "", true, 0).unwrap_err();
    assert_eq!(
        err,
        WatchCompacted {
            requested: 1,
            oldest: 6
        }
    );
    assert_eq!(
        err.to_string(),
        "revision 1 is no longer kept: the oldest this member can replay is 6 \
         (re-read, then watch from the revision of that read)"
    );
    assert!(kv.changes_since(5, "", true, 0).is_err());
    let (events, cursor, _) = kv.changes_since(6, "", true, 0).unwrap();
    assert_eq!(
        (events.len(), cursor),
        (WATCH_HISTORY, WATCH_HISTORY as u64 + 6)
    );

    // A restore forgets the history: only what comes after it can be watched.
    let revision = kv.revision();
    let bytes = snapshot_bytes(&kv);
    kv.restore(&mut bytes.as_slice()).unwrap();
    let err = kv.changes_since(revision, "", true, 0).unwrap_err();
    assert_eq!(
        err,
        WatchCompacted {
            requested: revision,
            oldest: revision + 1
        }
    );
    assert_eq!(kv.changes_since(revision + 1, "", true, 0).unwrap().0, []);
    kv.apply(set("new", "v"));
    let (events, ..) = kv.changes_since(revision + 1, "", true, 0).unwrap();
    assert_eq!(revisions(&events), [(revision + 1, "new")]);
}

#[test]
fn large_values_are_dropped_by_bytes() {
    let value = "v".repeat(1 << 20);
    let kv = store((0..WATCH_HISTORY_BYTES / value.len() + 2).map(|i| set(&i.to_string(), &value)));
    let err = kv.changes_since(1, "", true, 0).unwrap_err();
    assert!(err.oldest > 1);
    let (events, ..) = kv.changes_since(err.oldest, "", true, 0).unwrap();
    let bytes: usize = events
        .iter()
        .map(|e| e.kv.key.len() + e.kv.value.len())
        .sum();
    assert!(bytes <= WATCH_HISTORY_BYTES);
}

#[test]
fn history_is_not_compared() {
    let a = store([set("a", "1")]);
    let b = restored(&snapshot_bytes(&a)).unwrap();
    assert!(b.changes_since(1, "", true, 0).is_err());
    assert_eq!(a, b);
    assert_ne!(a, store([set("a", "2")]));
    assert_ne!(
        a,
        restored(&snapshot_bytes(&store([
            set("b", "0"),
            del("b"),
            set("a", "1")
        ])))
        .unwrap()
    );
}
