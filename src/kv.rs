//! The built-in replicated key-value store: [`KeyValueStore`] and its [`KvCommand`]s.

use std::io::{self, Write};

use imbl::OrdMap;

use serde::{Deserialize, Serialize};

use crate::{StateMachine, WriteSnapshot};

/// A command on the [`KeyValueStore`].
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
}

/// The result of a [`KvCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvResponse {
    /// The key's value before the command.
    pub previous: Option<String>,
    /// False only for a compare-and-swap whose expectation did not hold.
    pub applied: bool,
}

/// A captured [`KeyValueStore`]: a structural share of the map, so capturing is O(1) and the
/// store goes on applying while this is written out.
///
/// Format: per pair, `u32` LE key length, key, `u32` LE value length, value.
#[derive(Debug)]
pub struct KvSnapshot(OrdMap<String, String>);

impl WriteSnapshot for KvSnapshot {
    fn write_to(self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut out = io::BufWriter::new(out);
        for (k, v) in self.0.iter() {
            for s in [k, v] {
                out.write_all(&(s.len() as u32).to_le_bytes())?;
                out.write_all(s.as_bytes())?;
            }
        }
        out.flush()
    }
}

/// Reads one length-prefixed string; `None` at a clean end.
fn read_string(input: &mut impl io::Read) -> io::Result<Option<String>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut bytes = vec![0; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut bytes)?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// An ordered map of strings, replicated by Raft.
///
/// It is a persistent map ([`imbl::OrdMap`]): a snapshot shares its structure instead of copying
/// it, so taking one costs O(1) on the Raft loop whatever the size of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValueStore {
    map: OrdMap<String, String>,
}

impl KeyValueStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.map.get(key)
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
        self.map.iter()
    }
}

impl StateMachine for KeyValueStore {
    type Command = KvCommand;
    type Response = KvResponse;
    type Snapshot = KvSnapshot;

    fn apply(&mut self, command: KvCommand) -> KvResponse {
        match command {
            KvCommand::Set { key, value } => KvResponse {
                previous: self.map.insert(key, value),
                applied: true,
            },
            KvCommand::Delete { key } => KvResponse {
                previous: self.map.remove(&key),
                applied: true,
            },
            KvCommand::CompareAndSwap { key, expected, new } => {
                let previous = self.map.get(&key).cloned();
                if previous != expected {
                    return KvResponse {
                        previous,
                        applied: false,
                    };
                }
                match new {
                    Some(v) => self.map.insert(key, v),
                    None => self.map.remove(&key),
                };
                KvResponse {
                    previous,
                    applied: true,
                }
            }
        }
    }

    fn snapshot(&self) -> KvSnapshot {
        KvSnapshot(self.map.clone())
    }

    fn restore(&mut self, input: &mut dyn io::Read) -> io::Result<()> {
        let mut input = io::BufReader::new(input);
        let mut map = OrdMap::new();
        while let Some(k) = read_string(&mut input)? {
            let v = read_string(&mut input)?.ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "snapshot ends after a key")
            })?;
            map.insert(k, v);
        }
        self.map = map;
        Ok(())
    }
}

/// The remote read of the built-in store, for [`crate::RaftClusterBuilder::remote_reads`]: the
/// query is a postcard-encoded key (`String`), the answer a postcard-encoded `Option<String>`.
pub fn remote_get(kv: &KeyValueStore, query: &[u8]) -> Result<Vec<u8>, String> {
    let key: String =
        postcard::from_bytes(query).map_err(|e| format!("query is not a key: {e}"))?;
    postcard::to_allocvec(&kv.get(&key).cloned()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str, v: &str) -> KvCommand {
        KvCommand::Set {
            key: k.into(),
            value: v.into(),
        }
    }

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
        let mut buf = Vec::new();
        kv.snapshot().write_to(&mut buf).unwrap();
        let mut restored = KeyValueStore::new();
        restored.restore(&mut buf.as_slice()).unwrap();
        assert_eq!(restored, kv);
    }
}
