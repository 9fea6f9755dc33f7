//! [`KeyValueStore`]: the map of keys to [`Entry`]s, the store revision, and the two writes
//! every command is made of ([`KeyValueStore::put`], [`KeyValueStore::remove`]), each of which
//! records its change in the watch [`History`].

use std::ops::Bound;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use super::entry::Entry;
use super::watch::{Change, History, WatchCompacted, WatchEvent};
use super::{KeyValue, KvCommand, KvResponse, KvSnapshot};
use crate::StateMachine;

/// The most keys one [`RangeResult`] holds, whatever the limit asked for: with
/// [`MAX_RANGE_BYTES`], what keeps a remote answer ([`super::remote_query`]) inside the
/// management frame ([`MAX_MGMT_FRAME`](crate::actors::wire::MAX_MGMT_FRAME), 8 MiB).
pub const MAX_RANGE_KVS: usize = 10_000;

/// The most key and value bytes one [`RangeResult`] holds (it always holds at least one key
/// when there is one, and one key and value fit in a 4 MiB command): an answer stays under
/// the 8 MiB management frame whatever the size of the values.
pub const MAX_RANGE_BYTES: usize = 4 << 20;

/// Keys in order from a point, as a [`KeyValueStore::range`] or [`KeyValueStore::prefix`]
/// read them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    /// The keys, in order.
    pub kvs: Vec<KeyValue>,
    /// The read stopped before the end of the range (the limit, [`MAX_RANGE_KVS`] or
    /// [`MAX_RANGE_BYTES`]): read on from just after the last key (`last + "\0"`).
    pub more: bool,
    /// The store's revision the read was made at.
    pub revision: u64,
}

/// An ordered map of strings, replicated by Raft, with etcd-style revisions: the store's
/// revision counts the commands that changed something, and every key carries the revision
/// that created it, the revision of its last change and its version.
///
/// It is a persistent map ([`imbl::OrdMap`]): a snapshot shares its structure instead of copying
/// it, so taking one costs O(1) on the Raft loop whatever the size of the store. Each replica
/// also keeps its latest changes (see [`KeyValueStore::changes_since`]); they are local, not in
/// the snapshot, and not compared by `==`.
#[derive(Clone, Debug, Default)]
pub struct KeyValueStore {
    pub(super) map: OrdMap<String, Entry>,
    pub(super) revision: u64,
    pub(super) history: History,
}

impl PartialEq for KeyValueStore {
    fn eq(&self, other: &Self) -> bool {
        self.revision == other.revision && self.map == other.map
    }
}

impl Eq for KeyValueStore {}

impl KeyValueStore {
    /// An empty store (revision 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.map.get(key).map(|e| &e.value)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keys and values in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.map.iter().map(|(k, e)| (k, &e.value))
    }

    /// The store's revision: how many commands have changed something (0 when new).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// `key` with its value and revisions.
    pub fn get_kv(&self, key: &str) -> Option<KeyValue> {
        self.map.get(key).map(|e| e.to_kv(key))
    }

    /// The keys from `from` (inclusive) to `to` (exclusive; `None`: to the end), at most
    /// `limit` of them (0: no limit), and never more than [`MAX_RANGE_KVS`] keys or
    /// [`MAX_RANGE_BYTES`]: [`RangeResult::more`] says when the read was cut.
    pub fn range(&self, from: &str, to: Option<&str>, limit: usize) -> RangeResult {
        match to {
            Some(to) if to <= from => self.collect(std::iter::empty(), limit),
            Some(to) => self.collect(
                self.map
                    .range::<_, str>((Bound::Included(from), Bound::Excluded(to))),
                limit,
            ),
            None => self.collect(
                self.map
                    .range::<_, str>((Bound::Included(from), Bound::Unbounded)),
                limit,
            ),
        }
    }

    /// The keys that start with `prefix`, as [`Self::range`] reads them.
    pub fn prefix(&self, prefix: &str, limit: usize) -> RangeResult {
        self.collect(self.with_prefix(prefix), limit)
    }

    pub(super) fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        self.map
            .range::<_, str>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    fn collect<'a>(
        &self,
        entries: impl Iterator<Item = (&'a String, &'a Entry)>,
        limit: usize,
    ) -> RangeResult {
        let limit = if limit == 0 {
            MAX_RANGE_KVS
        } else {
            limit.min(MAX_RANGE_KVS)
        };
        let (mut kvs, mut bytes, mut more) = (Vec::new(), 0, false);
        for (key, entry) in entries {
            let size = key.len() + entry.value.len();
            if kvs.len() == limit || (!kvs.is_empty() && bytes + size > MAX_RANGE_BYTES) {
                more = true;
                break;
            }
            bytes += size;
            kvs.push(entry.to_kv(key));
        }
        RangeResult {
            kvs,
            more,
            revision: self.revision,
        }
    }

    /// Sets `key` at `revision` (the one the current command will end at) and records the
    /// change; the caller commits `revision` to the store. The returned change holds the
    /// entry the put replaced.
    pub(super) fn put(&mut self, revision: u64, key: String, value: String) -> &Change {
        // The history's copy of the key and value: the only allocations a write adds. An
        // existing key is changed in place (one walk down the map, as a plain insert takes).
        let change_key = key.clone();
        let (entry, prev) = match self.map.get_mut(&key) {
            Some(e) => {
                let prev = Entry {
                    value: std::mem::replace(&mut e.value, value),
                    ..*e
                };
                e.mod_revision = revision;
                e.version += 1;
                (e.clone(), Some(prev))
            }
            None => {
                let entry = Entry {
                    value,
                    create_revision: revision,
                    mod_revision: revision,
                    version: 1,
                };
                self.map.insert(key, entry.clone());
                (entry, None)
            }
        };
        self.history
            .push(Change::new(revision, change_key, Some(entry), prev))
    }

    /// Removes `key` at `revision` and records the change, as [`Self::put`]; `None` (and no
    /// change) when the key is absent.
    pub(super) fn remove(&mut self, revision: u64, key: &str) -> Option<&Change> {
        let (key, prev) = self.map.remove_with_key(key)?;
        Some(
            self.history
                .push(Change::new(revision, key, None, Some(prev))),
        )
    }

    /// The response of a command that ended at the current revision.
    pub(super) fn response(&self, previous: Option<String>, applied: bool) -> KvResponse {
        KvResponse {
            previous,
            applied,
            revision: self.revision,
            ..KvResponse::default()
        }
    }

    fn set(&mut self, key: String, value: String) -> KvResponse {
        let revision = self.revision + 1;
        let previous = self.put(revision, key, value).prev_value();
        self.revision = revision;
        self.response(previous, true)
    }

    fn delete(&mut self, key: &str) -> KvResponse {
        let revision = self.revision + 1;
        let Some(change) = self.remove(revision, key) else {
            return self.response(None, true);
        };
        let previous = change.prev_value();
        self.revision = revision;
        KvResponse {
            deleted: 1,
            ..self.response(previous, true)
        }
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<String>,
        new: Option<String>,
    ) -> KvResponse {
        let current = self.get(&key);
        if current != expected.as_ref() {
            return self.response(current.cloned(), false);
        }
        match new {
            Some(value) => self.set(key, value),
            // Expected absent and removed: nothing changes, no revision.
            None => self.delete(&key),
        }
    }

    fn delete_prefix(&mut self, prefix: &str) -> KvResponse {
        let revision = self.revision + 1;
        let keys: Vec<String> = self.with_prefix(prefix).map(|(k, _)| k.clone()).collect();
        for key in &keys {
            self.remove(revision, key);
        }
        if !keys.is_empty() {
            self.revision = revision;
        }
        KvResponse {
            deleted: keys.len() as u64,
            ..self.response(None, true)
        }
    }
}

impl StateMachine for KeyValueStore {
    type Command = KvCommand;
    type Response = KvResponse;
    type Snapshot = KvSnapshot;

    fn apply(&mut self, command: KvCommand) -> KvResponse {
        match command {
            KvCommand::Set { key, value } => self.set(key, value),
            KvCommand::Delete { key } => self.delete(&key),
            KvCommand::CompareAndSwap { key, expected, new } => {
                self.compare_and_swap(key, expected, new)
            }
            KvCommand::DeletePrefix { prefix } => self.delete_prefix(&prefix),
            KvCommand::Txn(txn) => self.txn(txn),
        }
    }

    fn snapshot(&self) -> KvSnapshot {
        KvSnapshot::new(self.map.clone(), self.revision)
    }

    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        let (map, revision) = super::snapshot::read(input)?;
        self.map = map;
        self.revision = revision;
        self.history.reset(revision);
        Ok(())
    }
}

impl KeyValueStore {
    /// The changes with revision `from_revision` or later to `key` (every key starting with
    /// `key` when `prefix`), in order, at most `max_events` of them (0: no limit) except that
    /// a revision's changes are never split: the last revision is always whole. Also returns
    /// the revision to continue from and whether the answer was cut at `max_events` (then
    /// call again at once from that revision).
    ///
    /// Fails when `from_revision` is at most [`Self::revision`] but older than the changes
    /// this replica keeps ([`super::WATCH_HISTORY`], and none from before its last snapshot restore).
    pub fn changes_since(
        &self,
        from_revision: u64,
        key: &str,
        prefix: bool,
        max_events: usize,
    ) -> Result<(Vec<WatchEvent>, u64, bool), WatchCompacted> {
        self.history
            .since(self.revision, from_revision, (key, prefix), max_events, 0)
    }
}
