//! The built-in store's remote readers and watcher, for
//! [`RaftClusterBuilder::remote_reads`](crate::RaftClusterBuilder::remote_reads) and the
//! management protocol's watches: queries and answers are postcard-encoded.

use serde::{Deserialize, Serialize};

use super::{KeyValueStore, RangeResult, WatchBatch, WatchQuery, WatchStep};

/// The most events one [`remote_watch`] step carries before it is cut (plus the rest of the
/// revision it reached, which is never split).
pub const WATCH_BATCH_EVENTS: usize = 1_000;

/// The most key and value bytes one [`remote_watch`] step carries before it is cut (plus the
/// rest of the revision it reached): with [`WATCH_BATCH_EVENTS`], what keeps a step inside the
/// 8 MiB management frame unless one revision alone is larger.
pub const WATCH_BATCH_BYTES: usize = 4 << 20;

/// What a [`KvQuery`]'s encoding starts with. A query without it is the older form (a
/// postcard-encoded key, [`remote_get`]'s), which [`remote_query`] still answers: four 0xFF
/// bytes cannot start one (they would announce a key of more than 256 MiB).
pub const KV_QUERY_MAGIC: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, b'K', b'V', b'Q', 1];

impl KvQuery {
    /// The query as [`remote_query`] reads it: [`KV_QUERY_MAGIC`], then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = KV_QUERY_MAGIC.to_vec();
        postcard::to_io(self, &mut bytes).expect("a Vec takes any length");
        bytes
    }
}

/// A read of the built-in store, the query of [`remote_query`] ([`KvQuery::encode`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvQuery {
    /// One key.
    Get {
        /// The key.
        key: String,
    },
    /// The keys from `from` (inclusive) to `to` (exclusive; `None`: to the end).
    Range {
        /// The first key.
        from: String,
        /// The end, excluded.
        to: Option<String>,
        /// The most keys to answer (0: no limit).
        limit: u64,
    },
    /// The keys that start with `prefix`.
    Prefix {
        /// The prefix.
        prefix: String,
        /// The most keys to answer (0: no limit).
        limit: u64,
    },
}

/// The remote read of the built-in store, for
/// [`RaftClusterBuilder::remote_reads`](crate::RaftClusterBuilder::remote_reads): the query is
/// a postcard-encoded key (`String`), the answer a postcard-encoded `Option<String>`.
/// [`remote_query`] reads revisions and ranges too.
pub fn remote_get(kv: &KeyValueStore, query: &[u8]) -> Result<Vec<u8>, String> {
    let key: String =
        postcard::from_bytes(query).map_err(|e| format!("query is not a key: {e}"))?;
    postcard::to_allocvec(&kv.get(&key).cloned()).map_err(|e| e.to_string())
}

/// The remote reader of the built-in store for
/// [`RaftClusterBuilder::remote_reads`](crate::RaftClusterBuilder::remote_reads): the query is
/// a postcard-encoded [`KvQuery`], the answer a postcard-encoded [`RangeResult`] (a
/// [`KvQuery::Get`] answers 0 or 1 key).
///
/// One answer holds at most [`super::MAX_RANGE_KVS`] keys and [`super::MAX_RANGE_BYTES`]
/// bytes of keys and values (whatever the limit, 0 included; [`RangeResult::more`] says it was
/// cut), so it fits the 8 MiB management frame: read on from just after the last key.
pub fn remote_query(kv: &KeyValueStore, query: &[u8]) -> Result<Vec<u8>, String> {
    // The older form: a key, answered with its value alone (clients built before revisions).
    let Some(query) = query.strip_prefix(&KV_QUERY_MAGIC[..]) else {
        return remote_get(kv, query);
    };
    let query: KvQuery =
        postcard::from_bytes(query).map_err(|e| format!("query is not a KvQuery: {e}"))?;
    let limit = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let answer = match query {
        KvQuery::Get { key } => RangeResult {
            kvs: kv.get_kv(&key).into_iter().collect(),
            more: false,
            revision: kv.revision(),
        },
        KvQuery::Range { from, to, limit: n } => kv.range(&from, to.as_deref(), limit(n)),
        KvQuery::Prefix { prefix, limit: n } => kv.prefix(&prefix, limit(n)),
    };
    postcard::to_allocvec(&answer).map_err(|e| e.to_string())
}

/// Serves a watch on the built-in store (the management protocol's remote watcher): `query`
/// is a postcard-encoded [`WatchQuery`]; `cursor` is `None` on the first call (start from the
/// query's `start_revision`, or from the next change when it is 0), then the previous step's
/// cursor. The changes are a postcard-encoded [`WatchBatch`], cut after
/// [`WATCH_BATCH_EVENTS`] events or [`WATCH_BATCH_BYTES`] but never inside a revision.
///
/// Fails (ending the watch) when the query does not decode or the revision asked for is no
/// longer kept ([`super::WatchCompacted`]'s message).
pub fn remote_watch(
    kv: &KeyValueStore,
    query: &[u8],
    cursor: Option<u64>,
) -> Result<WatchStep, String> {
    let query: WatchQuery =
        postcard::from_bytes(query).map_err(|e| format!("query is not a WatchQuery: {e}"))?;
    let cursor_given = cursor.is_some();
    let from = match (cursor, query.start_revision) {
        (Some(cursor), _) => cursor,
        (None, 0) => kv.revision() + 1,
        (None, start) => start,
    };
    let (events, cursor, more) = kv
        .history
        .since(
            kv.revision(),
            from,
            (&query.key, query.prefix),
            WATCH_BATCH_EVENTS,
            WATCH_BATCH_BYTES,
        )
        .map_err(|e| e.to_string())?;
    // The first step always answers, empty or not: its revision tells the watcher where the
    // watch starts (what to resume from if the stream is lost before any change).
    let changes = if events.is_empty() && cursor_given {
        None
    } else {
        let batch = WatchBatch {
            events,
            revision: kv.revision(),
        };
        Some(postcard::to_allocvec(&batch).map_err(|e| e.to_string())?)
    };
    Ok(WatchStep {
        changes,
        cursor,
        more,
    })
}
