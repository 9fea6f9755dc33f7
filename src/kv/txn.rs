//! Transactions: evaluating a [`Txn`]'s compares and applying the chosen branch as one
//! revision.

use std::cmp::Ordering;

use super::store::KeyValueStore;
use super::{Compare, CompareOp, CompareTarget, KvResponse, Txn, TxnOp, TxnOpResult};

impl KeyValueStore {
    /// Applies `txn`: every write of the chosen branch is stamped with the next revision, which
    /// the store takes only if one of them changed something.
    pub(super) fn txn(&mut self, txn: Txn) -> KvResponse {
        let applied = txn.compare.iter().all(|c| self.holds(c));
        let ops = if applied { txn.success } else { txn.failure };
        let revision = self.revision + 1;
        let (mut changed, mut deleted) = (false, 0);
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOp::Put { key, value } => {
                    changed = true;
                    TxnOpResult::Put {
                        previous: self.put(revision, key, value).prev_kv(),
                    }
                }
                TxnOp::Delete { key } => {
                    let previous = self.remove(revision, &key).and_then(|c| c.prev_kv());
                    if previous.is_some() {
                        changed = true;
                        deleted += 1;
                    }
                    TxnOpResult::Delete { previous }
                }
                TxnOp::Get { key } => TxnOpResult::Get {
                    kv: self.get_kv(&key),
                },
            });
        }
        if changed {
            self.revision = revision;
        }
        KvResponse {
            results,
            deleted,
            ..self.response(None, applied)
        }
    }

    /// Whether `compare` holds now: an absent key has value `None` and every number 0.
    fn holds(&self, compare: &Compare) -> bool {
        let entry = self.map.get(&compare.key);
        let number = |field: fn(&super::entry::Entry) -> u64| entry.map_or(0, field);
        let ordering = match &compare.target {
            CompareTarget::Value(v) => entry.map(|e| e.value.as_str()).cmp(&v.as_deref()),
            CompareTarget::Version(n) => number(|e| e.version).cmp(n),
            CompareTarget::CreateRevision(n) => number(|e| e.create_revision).cmp(n),
            CompareTarget::ModRevision(n) => number(|e| e.mod_revision).cmp(n),
        };
        match compare.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
        }
    }
}
