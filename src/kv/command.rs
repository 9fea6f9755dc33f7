//! What clients send to the [`KeyValueStore`](super::KeyValueStore) and what they get back:
//! the wire types of a proposal, encoded with postcard.
//!
//! Compatibility: postcard encodes an enum variant by its index and a struct as its fields in
//! order, so new [`KvCommand`] variants go at the end and new [`KvResponse`] fields after the
//! old ones (a client built before they existed reads the fields it knows and ignores the rest).

use serde::{Deserialize, Serialize};

/// A key with its value and etcd-style revisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: String,
    /// The store revision that created the key (since its last delete).
    pub create_revision: u64,
    /// The store revision of the key's last change.
    pub mod_revision: u64,
    /// 1 when the key was created, +1 per change since (a delete resets it).
    pub version: u64,
}

/// A command on the [`KeyValueStore`](super::KeyValueStore). Every command that changes
/// something advances the store's revision by exactly one, however many keys it changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KvCommand {
    /// Set `key` to `value`.
    Set {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Set `key` to `new` (or remove it when `new` is `None`) only if its current value is
    /// `expected` (`None`: absent).
    CompareAndSwap {
        /// The key.
        key: String,
        /// The value the key must have for the swap to happen.
        expected: Option<String>,
        /// The value to store (`None` removes the key).
        new: Option<String>,
    },
    /// Remove every key that starts with `prefix` (the empty prefix: every key);
    /// [`KvResponse::deleted`] says how many.
    DeletePrefix {
        /// The prefix.
        prefix: String,
    },
    /// A transaction: compare, then apply one branch atomically.
    Txn(Txn),
}

/// A transaction: when every [`Compare`] holds, the `success` operations are applied, else the
/// `failure` ones, in order and as one revision (a [`TxnOp::Get`] after a [`TxnOp::Put`] of
/// the same transaction sees the put).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// The conditions; none means the `success` branch.
    pub compare: Vec<Compare>,
    /// What to do when every condition holds.
    pub success: Vec<TxnOp>,
    /// What to do otherwise.
    pub failure: Vec<TxnOp>,
}

/// One condition of a [`Txn`]: the key's `target` field compared with `op` to the given value,
/// as in `current <op> given`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key.
    pub key: String,
    /// Which field of the key, and the value to compare it with.
    pub target: CompareTarget,
    /// How to compare.
    pub op: CompareOp,
}

/// The field of a key a [`Compare`] looks at, with the value to compare it with. An absent key
/// has value `None` and every number 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value (`None`: absent). Ordered lexicographically, absent before any value.
    Value(Option<String>),
    /// The version (0: absent).
    Version(u64),
    /// The revision that created the key.
    CreateRevision(u64),
    /// The revision of the key's last change.
    ModRevision(u64),
}

/// How a [`Compare`] compares the key's current field (left) with the given value (right).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// Equal.
    Equal,
    /// Not equal.
    NotEqual,
    /// The current field is greater.
    Greater,
    /// The current field is less.
    Less,
}

/// One operation of a [`Txn`] branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Read `key` as the transaction has left it so far.
    Get {
        /// The key.
        key: String,
    },
}

/// The outcome of one [`TxnOp`], in the order of the branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    /// A put, with the key as it was before.
    Put {
        /// The key before the put (`None`: absent).
        previous: Option<KeyValue>,
    },
    /// A delete, with the key as it was before.
    Delete {
        /// The key before the delete (`None`: absent, nothing deleted).
        previous: Option<KeyValue>,
    },
    /// A read.
    Get {
        /// The key (`None`: absent).
        kv: Option<KeyValue>,
    },
}

/// The result of a [`KvCommand`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvResponse {
    /// The key's value before the command (`Set`, `Delete`, `CompareAndSwap`; `None` for the
    /// others).
    pub previous: Option<String>,
    /// False only for a compare-and-swap whose expectation did not hold, or a transaction
    /// whose compares did not all hold (it ran its `failure` branch).
    pub applied: bool,
    /// The store's revision after the command.
    pub revision: u64,
    /// A transaction's operation results, in order (empty for other commands).
    pub results: Vec<TxnOpResult>,
    /// How many keys the command deleted (`DeletePrefix`; 0 or 1 for `Delete` and
    /// `CompareAndSwap`; the deletes of a transaction's branch).
    pub deleted: u64,
}
