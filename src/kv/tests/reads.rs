//! Ranges and prefixes.

use super::*;

fn keys(r: &RangeResult) -> Vec<&str> {
    r.kvs.iter().map(|kv| kv.key.as_str()).collect()
}

#[test]
fn range_from_to_limit() {
    let kv = store(["a", "b", "b/1", "b/2", "c", "d"].map(|k| set(k, k)));
    let r = kv.range("b", Some("c"), 0);
    assert_eq!(
        (keys(&r), r.more, r.revision),
        (vec!["b", "b/1", "b/2"], false, 6)
    );
    assert_eq!(r.kvs[1], super::kv("b/1", "b/1", 3, 3, 1));
    let r = kv.range("b", Some("d"), 2);
    assert_eq!((keys(&r), r.more), (vec!["b", "b/1"], true));
    // The limit reached exactly at the end of the range: nothing more.
    let r = kv.range("b", Some("c"), 3);
    assert_eq!((keys(&r), r.more), (vec!["b", "b/1", "b/2"], false));
    let r = kv.range("c", None, 0);
    assert_eq!((keys(&r), r.more), (vec!["c", "d"], false));
    let r = kv.range("", None, 0);
    assert_eq!(r.kvs.len(), 6);
    for (from, to) in [("c", "c"), ("d", "a")] {
        let r = kv.range(from, Some(to), 0);
        assert_eq!((r.kvs.len(), r.more), (0, false));
    }
    assert_eq!(kv.range("e", None, 0).kvs, []);
}

#[test]
fn prefix_reads() {
    let kv = store(["a", "b", "b/1", "b/2", "b0", "c"].map(|k| set(k, k)));
    assert_eq!(keys(&kv.prefix("b/", 0)), ["b/1", "b/2"]);
    assert_eq!(keys(&kv.prefix("b", 0)), ["b", "b/1", "b/2", "b0"]);
    let r = kv.prefix("b", 2);
    assert_eq!((keys(&r), r.more), (vec!["b", "b/1"], true));
    assert_eq!(kv.prefix("", 0).kvs.len(), 6);
    assert_eq!(kv.prefix("x", 0).kvs, []);
}

#[test]
fn answers_are_capped() {
    let kv = store((0..=MAX_RANGE_KVS).map(|i| set(&format!("{i:06}"), "")));
    let r = kv.range("", None, 0);
    assert_eq!((r.kvs.len(), r.more), (MAX_RANGE_KVS, true));
    let r = kv.prefix("0", MAX_RANGE_KVS + 5);
    assert_eq!((r.kvs.len(), r.more), (MAX_RANGE_KVS, true));
    // Large values: cut by bytes, but never below one key.
    let big = "x".repeat(3 << 20);
    let kv = store([set("a", &big), set("b", &big), set("c", &big)]);
    let r = kv.range("", None, 0);
    assert_eq!((keys(&r), r.more), (vec!["a"], true));
    let r = kv.range("b", None, 0);
    assert_eq!((keys(&r), r.more), (vec!["b"], true));
    let r = kv.range("c", None, 0);
    assert_eq!((keys(&r), r.more), (vec!["c"], false));
}
