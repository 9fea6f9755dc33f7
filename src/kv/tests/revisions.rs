//! Revisions and versions through every command; transactions.

use super::*;

#[test]
fn commands_and_snapshot() {
    let mut kv = KeyValueStore::new();
    assert_eq!(kv.apply(set("a", "1")).previous, None);
    assert_eq!(kv.apply(set("a", "2")).previous.as_deref(), Some("1"));
    let cas = |expected: Option<&str>, new: Option<&str>| KvCommand::CompareAndSwap {
        key: "a".into(),
        expected: expected.map(Into::into),
        new: new.map(Into::into),
    };
    assert!(!kv.apply(cas(Some("1"), Some("3"))).applied);
    assert!(kv.apply(cas(Some("2"), Some("3"))).applied);
    assert_eq!(kv.get("a").map(String::as_str), Some("3"));
    assert!(kv.apply(cas(Some("3"), None)).applied);
    assert!(kv.get("a").is_none());
    kv.apply(set("b", "x"));
    let restored = restored(&snapshot_bytes(&kv)).unwrap();
    assert_eq!(restored, kv);
}

#[test]
fn set_and_delete_count_revisions() {
    let mut kv = KeyValueStore::new();
    assert_eq!(kv.revision(), 0);
    assert_eq!(kv.apply(set("a", "1")).revision, 1);
    assert_eq!(kv.get_kv("a"), Some(super::kv("a", "1", 1, 1, 1)));
    let r = kv.apply(set("a", "2"));
    assert_eq!((r.revision, r.previous.as_deref()), (2, Some("1")));
    assert_eq!(kv.get_kv("a"), Some(super::kv("a", "2", 1, 2, 2)));
    kv.apply(set("b", "x"));
    let r = kv.apply(del("a"));
    assert_eq!(
        (r.revision, r.deleted, r.previous.as_deref()),
        (4, 1, Some("2"))
    );
    // Deleting an absent key changes nothing.
    let r = kv.apply(del("a"));
    assert_eq!(
        (r.revision, r.deleted, r.previous, r.applied),
        (4, 0, None, true)
    );
    // A new life after the delete.
    assert_eq!(kv.apply(set("a", "3")).revision, 5);
    assert_eq!(kv.get_kv("a"), Some(super::kv("a", "3", 5, 5, 1)));
    assert_eq!(kv.get_kv("b"), Some(super::kv("b", "x", 3, 3, 1)));
    // The old accessors.
    assert_eq!(kv.get("a").map(String::as_str), Some("3"));
    assert_eq!(kv.len(), 2);
    assert!(!kv.is_empty());
    let pairs: Vec<_> = kv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(pairs, [("a", "3"), ("b", "x")]);
}

#[test]
fn compare_and_swap_revisions() {
    let cas = |expected: Option<&str>, new: Option<&str>| KvCommand::CompareAndSwap {
        key: "a".into(),
        expected: expected.map(Into::into),
        new: new.map(Into::into),
    };
    let mut kv = KeyValueStore::new();
    // Absent expected absent, removed: holds, but nothing changes.
    let r = kv.apply(cas(None, None));
    assert_eq!((r.applied, r.revision, r.deleted), (true, 0, 0));
    let r = kv.apply(cas(None, Some("1")));
    assert_eq!((r.applied, r.revision, r.previous), (true, 1, None));
    let r = kv.apply(cas(None, Some("2")));
    assert_eq!(
        (r.applied, r.revision, r.previous.as_deref()),
        (false, 1, Some("1"))
    );
    let r = kv.apply(cas(Some("1"), Some("2")));
    assert_eq!((r.applied, r.revision), (true, 2));
    assert_eq!(kv.get_kv("a"), Some(super::kv("a", "2", 1, 2, 2)));
    let r = kv.apply(cas(Some("2"), None));
    assert_eq!((r.applied, r.revision, r.deleted), (true, 3, 1));
    assert_eq!(kv.get_kv("a"), None);
}

#[test]
fn delete_prefix_is_one_revision() {
    let mut kv = store(["a/1", "a/2", "ab", "b"].map(|k| set(k, "v")));
    let r = kv.apply(KvCommand::DeletePrefix {
        prefix: "a/".into(),
    });
    assert_eq!((r.deleted, r.revision, r.applied), (2, 5, true));
    assert_eq!(
        kv.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["ab", "b"]
    );
    let r = kv.apply(KvCommand::DeletePrefix {
        prefix: "zz".into(),
    });
    assert_eq!((r.deleted, r.revision), (0, 5));
    let r = kv.apply(KvCommand::DeletePrefix {
        prefix: String::new(),
    });
    assert_eq!((r.deleted, r.revision), (2, 6));
    assert!(kv.is_empty());
}

#[test]
fn txn_success_branch_is_one_revision_and_reads_its_writes() {
    let mut kv = store([set("a", "1")]);
    let txn = Txn {
        compare: vec![
            cmp(
                "a",
                CompareTarget::Value(Some("1".into())),
                CompareOp::Equal,
            ),
            cmp("a", CompareTarget::Version(1), CompareOp::Equal),
            cmp("a", CompareTarget::CreateRevision(1), CompareOp::Equal),
            cmp("a", CompareTarget::ModRevision(0), CompareOp::Greater),
            cmp("b", CompareTarget::Value(None), CompareOp::Equal),
            cmp("b", CompareTarget::Version(0), CompareOp::Equal),
        ],
        success: vec![
            put("a", "2"),
            put("b", "x"),
            TxnOp::Get { key: "a".into() },
            TxnOp::Delete { key: "b".into() },
            TxnOp::Delete { key: "c".into() },
            TxnOp::Get { key: "b".into() },
        ],
        failure: vec![put("failed", "1")],
    };
    let r = kv.apply(KvCommand::Txn(txn));
    assert!(r.applied);
    assert_eq!((r.revision, r.deleted), (2, 1));
    assert_eq!(
        r.results,
        [
            TxnOpResult::Put {
                previous: Some(super::kv("a", "1", 1, 1, 1))
            },
            TxnOpResult::Put { previous: None },
            TxnOpResult::Get {
                kv: Some(super::kv("a", "2", 1, 2, 2))
            },
            TxnOpResult::Delete {
                previous: Some(super::kv("b", "x", 2, 2, 1))
            },
            TxnOpResult::Delete { previous: None },
            TxnOpResult::Get { kv: None },
        ]
    );
    assert_eq!(dump(&kv), [("a".into(), "2".into(), 1, 2, 2)]);
}

#[test]
fn txn_failure_branch() {
    let mut kv = store([set("a", "m")]);
    let failing = |compare| {
        KvCommand::Txn(Txn {
            compare: vec![
                cmp(
                    "a",
                    CompareTarget::Value(Some("a".into())),
                    CompareOp::Greater,
                ),
                compare,
            ],
            success: vec![put("ok", "1")],
            failure: vec![
                put("failed", "1"),
                TxnOp::Get {
                    key: "failed".into(),
                },
            ],
        })
    };
    let r = kv.apply(failing(cmp(
        "a",
        CompareTarget::Value(Some("n".into())),
        CompareOp::Greater,
    )));
    assert!(!r.applied);
    assert_eq!(r.revision, 2);
    assert_eq!(
        r.results,
        [
            TxnOpResult::Put { previous: None },
            TxnOpResult::Get {
                kv: Some(super::kv("failed", "1", 2, 2, 1))
            }
        ]
    );
    assert_eq!(kv.get("ok"), None);
    // Less on values, NotEqual, and an absent key's numbers are 0.
    let r = kv.apply(failing(cmp(
        "a",
        CompareTarget::Value(Some("n".into())),
        CompareOp::Less,
    )));
    assert!(r.applied);
    for (target, op) in [
        (CompareTarget::ModRevision(1), CompareOp::NotEqual),
        (CompareTarget::CreateRevision(0), CompareOp::Equal),
        (CompareTarget::Value(None), CompareOp::Less),
    ] {
        let mut kv = store([set("a", "m")]);
        let r = kv.apply(failing(cmp("absent", target.clone(), op)));
        assert_eq!(r.applied, op != CompareOp::Less, "{target:?} {op:?}");
    }
}

#[test]
fn txn_that_writes_nothing_takes_no_revision() {
    let mut kv = store([set("a", "1")]);
    let r = kv.apply(KvCommand::Txn(Txn {
        compare: vec![],
        success: vec![
            TxnOp::Get { key: "a".into() },
            TxnOp::Delete { key: "x".into() },
        ],
        failure: vec![],
    }));
    assert_eq!((r.applied, r.revision, r.deleted), (true, 1, 0));
    assert_eq!(
        r.results[0],
        TxnOpResult::Get {
            kv: Some(super::kv("a", "1", 1, 1, 1))
        }
    );
    let r = kv.apply(KvCommand::Txn(Txn::default()));
    assert_eq!((r.applied, r.revision, r.results.len()), (true, 1, 0));
}
