//! Unit tests of the store, one file per concern, with the helpers they share.

use std::io;

use super::*;
use crate::{StateMachine, WriteSnapshot};

mod model;
mod reads;
mod remote;
mod revisions;
mod snapshot;
mod watch;

fn set(k: &str, v: &str) -> KvCommand {
    KvCommand::Set {
        key: k.into(),
        value: v.into(),
    }
}

fn del(k: &str) -> KvCommand {
    KvCommand::Delete { key: k.into() }
}

fn put(k: &str, v: &str) -> TxnOp {
    TxnOp::Put {
        key: k.into(),
        value: v.into(),
    }
}

fn cmp(key: &str, target: CompareTarget, op: CompareOp) -> Compare {
    Compare {
        key: key.into(),
        target,
        op,
    }
}

fn store(commands: impl IntoIterator<Item = KvCommand>) -> KeyValueStore {
    let mut kv = KeyValueStore::new();
    for c in commands {
        kv.apply(c);
    }
    kv
}

fn snapshot_bytes(kv: &KeyValueStore) -> Vec<u8> {
    let mut buf = Vec::new();
    kv.snapshot().write_to(&mut buf).unwrap();
    buf
}

fn restored(mut bytes: &[u8]) -> io::Result<KeyValueStore> {
    let mut kv = KeyValueStore::new();
    kv.restore(&mut bytes)?;
    Ok(kv)
}

/// (key, value, create, mod, version) of every key.
fn dump(kv: &KeyValueStore) -> Vec<(String, String, u64, u64, u64)> {
    kv.range("", None, 0)
        .kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect()
}

fn kv(key: &str, value: &str, create: u64, modified: u64, version: u64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: modified,
        version,
    }
}
