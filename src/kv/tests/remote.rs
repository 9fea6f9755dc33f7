//! The remote reader and watcher: their encodings, end to end.

use super::*;

fn query(kv: &KeyValueStore, q: KvQuery) -> RangeResult {
    let answer = remote_query(kv, &q.encode()).unwrap();
    postcard::from_bytes(&answer).unwrap()
}

fn watch(kv: &KeyValueStore, q: &WatchQuery, cursor: Option<u64>) -> Result<WatchStep, String> {
    remote_watch(kv, &postcard::to_allocvec(q).unwrap(), cursor)
}

fn batch(step: &WatchStep) -> WatchBatch {
    postcard::from_bytes(step.changes.as_deref().unwrap()).unwrap()
}

#[test]
fn remote_get_keeps_its_format() {
    let kv = store([set("a", "1")]);
    let get = |key: &str| -> Option<String> {
        let answer = remote_get(&kv, &postcard::to_allocvec(key).unwrap()).unwrap();
        postcard::from_bytes(&answer).unwrap()
    };
    assert_eq!(get("a").as_deref(), Some("1"));
    assert_eq!(get("b"), None);
    assert!(remote_get(&kv, &[0xFF]).is_err());
}

#[test]
fn remote_queries() {
    let kv = store(["a", "b/1", "b/2", "c"].map(|k| set(k, "v")));
    let r = query(&kv, KvQuery::Get { key: "b/1".into() });
    assert_eq!(
        r,
        RangeResult {
            kvs: vec![super::kv("b/1", "v", 2, 2, 1)],
            more: false,
            revision: 4
        }
    );
    let r = query(&kv, KvQuery::Get { key: "x".into() });
    assert_eq!((r.kvs.len(), r.revision), (0, 4));
    let r = query(
        &kv,
        KvQuery::Range {
            from: "b".into(),
            to: None,
            limit: 2,
        },
    );
    assert_eq!(r, kv.range("b", None, 2));
    assert!(r.more);
    let r = query(
        &kv,
        KvQuery::Range {
            from: "a".into(),
            to: Some("c".into()),
            limit: 0,
        },
    );
    assert_eq!(r.kvs.len(), 3);
    let r = query(
        &kv,
        KvQuery::Prefix {
            prefix: "b/".into(),
            limit: u64::MAX,
        },
    );
    assert_eq!(r, kv.prefix("b/", 0));
    let mut truncated = KvQuery::Get { key: "b/1".into() }.encode();
    truncated.pop();
    assert!(
        remote_query(&kv, &truncated)
            .unwrap_err()
            .contains("KvQuery")
    );
    // The older form, a key alone, is still answered with the value alone.
    let old = remote_query(&kv, &postcard::to_allocvec("b/1").unwrap()).unwrap();
    let value: Option<String> = postcard::from_bytes(&old).unwrap();
    assert_eq!(value, kv.get("b/1").cloned());
    assert!(remote_query(&kv, b"\xff\xff").unwrap_err().contains("key"));
}

#[test]
fn remote_watch_steps() {
    let mut kv = store([set("a/1", "x")]);
    let q = WatchQuery {
        key: "a/".into(),
        prefix: true,
        start_revision: 0,
    };
    // From the next change: nothing yet, but the first step says at which revision.
    let step = watch(&kv, &q, None).unwrap();
    assert_eq!((step.cursor, step.more), (2, false));
    let first = batch(&step);
    assert_eq!((first.events.len(), first.revision), (0, 1));
    // Later steps without a change say nothing.
    assert!(watch(&kv, &q, Some(2)).unwrap().changes.is_none());
    kv.apply(set("b", "x"));
    kv.apply(set("a/2", "y"));
    let step = watch(&kv, &q, Some(step.cursor)).unwrap();
    assert_eq!((step.cursor, step.more), (4, false));
    let b = batch(&step);
    assert_eq!(b.revision, 3);
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.events[0].kv, super::kv("a/2", "y", 3, 3, 1));
    // From a start revision, and a watch on one key.
    let q = WatchQuery {
        key: "a/1".into(),
        prefix: false,
        start_revision: 1,
    };
    let step = watch(&kv, &q, None).unwrap();
    assert_eq!(batch(&step).events[0].kv.key, "a/1");
    // Bad queries and compacted revisions end the watch.
    assert!(
        remote_watch(&kv, &[0xFF], None)
            .unwrap_err()
            .contains("WatchQuery")
    );
    let kv = restored(&snapshot_bytes(&kv)).unwrap();
    let err = watch(&kv, &q, None).unwrap_err();
    assert_eq!(
        err,
        WatchCompacted {
            requested: 1,
            oldest: 4
        }
        .to_string()
    );
}

#[test]
fn remote_watch_is_cut_into_batches() {
    let kv = store((0..WATCH_BATCH_EVENTS + 10).map(|i| set(&format!("k{i}"), "v")));
    let q = WatchQuery {
        key: "k".into(),
        prefix: true,
        start_revision: 1,
    };
    let step = watch(&kv, &q, None).unwrap();
    assert!(step.more);
    assert_eq!(batch(&step).events.len(), WATCH_BATCH_EVENTS);
    let step = watch(&kv, &q, Some(step.cursor)).unwrap();
    assert_eq!((batch(&step).events.len(), step.more), (10, false));
    assert_eq!(step.cursor, kv.revision() + 1);
}
