//! The watch history: each replica's record of its latest changes, from which watchers are
//! served ([`KeyValueStore::changes_since`], [`super::remote_watch`]). It is local to the
//! replica (not in the snapshot): a replica that restored a snapshot, or has dropped old
//! changes, answers [`WatchCompacted`] for revisions it can no longer replay.
//!
//! Invariants: the changes are in revision order; every revision from `oldest` to the store's
//! revision has all its changes kept (each such revision has at least one: a command that
//! changes nothing takes no revision).

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::KeyValue;
use super::entry::Entry;

/// The most changes (one per key changed) a replica keeps for watchers.
pub const WATCH_HISTORY: usize = 10_000;

/// The most key and value bytes the kept changes may hold (plus the newest change, however
/// large): [`WATCH_HISTORY`] changes of large values would otherwise hold gigabytes.
pub const WATCH_HISTORY_BYTES: usize = 64 << 20;

/// What a [`WatchEvent`] did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchEventKind {
    /// The key was set (created or changed).
    Put,
    /// The key was removed.
    Delete,
}

/// One change of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: WatchEventKind,
    /// The key after the change. For a delete: the key, an empty value, `mod_revision` the
    /// deleting revision, `version` and `create_revision` 0.
    pub kv: KeyValue,
    /// The key before the change (`None`: absent).
    pub prev: Option<KeyValue>,
}

/// What a remote watcher asks for (postcard-encoded, the query of [`super::remote_watch`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchQuery {
    /// The key, or the prefix when `prefix` is set.
    pub key: String,
    /// Watch every key that starts with `key`.
    pub prefix: bool,
    /// The first revision to report (0: from the next change).
    pub start_revision: u64,
}

/// Changes sent to a remote watcher (postcard-encoded in [`super::WatchStep::changes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchBatch {
    /// The matching changes, in revision order; a revision's changes are never split between
    /// batches.
    pub events: Vec<WatchEvent>,
    /// The store's revision this batch was read at.
    pub revision: u64,
}

/// A watch asked for changes this replica no longer keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "revision {requested} is no longer kept: the oldest this member can replay is {oldest} \
     (re-read, then watch from the revision of that read)"
)]
pub struct WatchCompacted {
    /// The revision asked for.
    pub requested: u64,
    /// The oldest revision this replica can replay.
    pub oldest: u64,
}

/// One change as the history keeps it: the key once, the entries before and after.
#[derive(Clone, Debug)]
pub(super) struct Change {
    revision: u64,
    key: String,
    /// `None`: the key was removed.
    entry: Option<Entry>,
    prev: Option<Entry>,
}

impl Change {
    pub(super) fn new(
        revision: u64,
        key: String,
        entry: Option<Entry>,
        prev: Option<Entry>,
    ) -> Self {
        Self {
            revision,
            key,
            entry,
            prev,
        }
    }

    /// The value the change replaced.
    pub(super) fn prev_value(&self) -> Option<String> {
        self.prev.as_ref().map(|e| e.value.clone())
    }

    /// The key as it was before the change.
    pub(super) fn prev_kv(&self) -> Option<KeyValue> {
        self.prev.as_ref().map(|e| e.to_kv(&self.key))
    }

    /// What the change costs the history's byte budget and a watch batch's.
    fn size(&self) -> usize {
        let value = |e: &Option<Entry>| e.as_ref().map_or(0, |e| e.value.len());
        self.key.len() + value(&self.entry) + value(&self.prev)
    }

    fn matches(&self, key: &str, prefix: bool) -> bool {
        if prefix {
            self.key.starts_with(key)
        } else {
            self.key == key
        }
    }

    fn to_event(&self) -> WatchEvent {
        let (kind, kv) = match &self.entry {
            Some(e) => (WatchEventKind::Put, e.to_kv(&self.key)),
            None => (
                WatchEventKind::Delete,
                KeyValue {
                    key: self.key.clone(),
                    value: String::new(),
                    create_revision: 0,
                    mod_revision: self.revision,
                    version: 0,
                },
            ),
        };
        WatchEvent {
            kind,
            kv,
            prev: self.prev_kv(),
        }
    }
}

/// The latest changes, bounded by [`WATCH_HISTORY`] and [`WATCH_HISTORY_BYTES`].
#[derive(Clone)]
pub(super) struct History {
    changes: VecDeque<Change>,
    /// The sum of the changes' sizes.
    bytes: usize,
    /// The oldest revision whose changes are all kept.
    oldest: u64,
}

impl Default for History {
    /// A new store's: it has every change from revision 1 on.
    fn default() -> Self {
        Self {
            changes: VecDeque::new(),
            bytes: 0,
            oldest: 1,
        }
    }
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("changes", &self.changes.len())
            .field("bytes", &self.bytes)
            .field("oldest", &self.oldest)
            .finish()
    }
}

impl History {
    /// Records `change`, dropping the oldest ones to stay within bounds, and returns it.
    pub(super) fn push(&mut self, change: Change) -> &Change {
        let size = change.size();
        while self.changes.len() >= WATCH_HISTORY
            || (!self.changes.is_empty() && self.bytes + size > WATCH_HISTORY_BYTES)
        {
            self.pop();
        }
        self.bytes += size;
        self.changes.push_back(change);
        &self.changes[self.changes.len() - 1]
    }

    fn pop(&mut self) {
        if let Some(change) = self.changes.pop_front() {
            self.bytes -= change.size();
            // Its revision may have other changes still kept, but no longer all of them.
            self.oldest = change.revision + 1;
        }
    }

    /// Forgets everything: the store was replaced by a snapshot at `revision`.
    pub(super) fn reset(&mut self, revision: u64) {
        self.changes.clear();
        self.bytes = 0;
        self.oldest = revision + 1;
    }

    /// The changes from revision `from` on that match `key`, cut after the revision at which
    /// they reach `max_events` events or `max_bytes` (0: no bound), never inside a revision;
    /// with the cursor to go on from and whether the answer was cut. `revision` is the
    /// store's.
    pub(super) fn since(
        &self,
        revision: u64,
        from: u64,
        (key, prefix): (&str, bool),
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(Vec<WatchEvent>, u64, bool), WatchCompacted> {
        let from = from.max(1);
        if from <= revision && from < self.oldest {
            return Err(WatchCompacted {
                requested: from,
                oldest: self.oldest,
            });
        }
        let bound = |n: usize| if n == 0 { usize::MAX } else { n };
        let (max_events, max_bytes) = (bound(max_events), bound(max_bytes));
        let start = self.changes.partition_point(|c| c.revision < from);
        let mut changes = self.changes.range(start..).peekable();
        let (mut events, mut bytes) = (Vec::new(), 0);
        while let Some(change) = changes.next() {
            if change.matches(key, prefix) {
                bytes += change.size();
                events.push(change.to_event());
            }
            let Some(next) = changes.peek() else { break };
            let full = events.len() >= max_events || bytes >= max_bytes;
            if full && next.revision != change.revision {
                return Ok((events, change.revision + 1, true));
            }
        }
        Ok((events, from.max(revision + 1), false))
    }
}
