//! Random command sequences: two replicas and a third restored from a snapshot midway agree,
//! on their state, their responses and their watch histories, with a plain reference model.

use std::collections::BTreeMap;

use super::*;

/// splitmix64: small, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn key(&mut self) -> String {
        let dirs = ["a/", "b/", ""];
        format!("{}{}", dirs[self.below(3) as usize], self.below(4))
    }

    fn value(&mut self) -> String {
        ["", "x", "y", "z"][self.below(4) as usize].into()
    }

    fn maybe_value(&mut self) -> Option<String> {
        (self.below(3) > 0).then(|| self.value())
    }

    fn op(&mut self) -> TxnOp {
        match self.below(3) {
            0 => put(&self.key(), &self.value()),
            1 => TxnOp::Delete { key: self.key() },
            _ => TxnOp::Get { key: self.key() },
        }
    }

    fn compare(&mut self) -> Compare {
        let target = match self.below(4) {
            0 => CompareTarget::Value(self.maybe_value()),
            1 => CompareTarget::Version(self.below(3)),
            2 => CompareTarget::CreateRevision(self.below(20)),
            _ => CompareTarget::ModRevision(self.below(20)),
        };
        let op = [
            CompareOp::Equal,
            CompareOp::NotEqual,
            CompareOp::Greater,
            CompareOp::Less,
        ][self.below(4) as usize];
        cmp(&self.key(), target, op)
    }

    fn command(&mut self) -> KvCommand {
        match self.below(10) {
            0..=3 => set(&self.key(), &self.value()),
            4 => del(&self.key()),
            5 => KvCommand::CompareAndSwap {
                key: self.key(),
                expected: self.maybe_value(),
                new: self.maybe_value(),
            },
            6 => KvCommand::DeletePrefix {
                prefix: ["a/", "b/", "a", ""][self.below(4) as usize].into(),
            },
            _ => {
                let ops = |rng: &mut Self| (0..rng.below(4)).map(|_| rng.op()).collect();
                KvCommand::Txn(Txn {
                    compare: (0..self.below(3)).map(|_| self.compare()).collect(),
                    success: ops(self),
                    failure: ops(self),
                })
            }
        }
    }
}

/// The reference: a plain map of keys to (value, create, mod, version) and a revision.
#[derive(Default)]
struct Model {
    map: BTreeMap<String, (String, u64, u64, u64)>,
    revision: u64,
}

impl Model {
    /// Applies a command's writes (the store's own result says which branch a txn took).
    fn apply(&mut self, command: &KvCommand, applied: bool) {
        let next = self.revision + 1;
        let mut changed = false;
        let mut write = |map: &mut BTreeMap<_, _>, key: &str, value: Option<&str>| match value {
            Some(v) => {
                let (create, version) = match map.get(key) {
                    Some(&(_, c, _, n)) => (c, n + 1),
                    None => (next, 1),
                };
                map.insert(key.to_owned(), (v.to_owned(), create, next, version));
                changed = true;
            }
            None => changed |= map.remove(key).is_some(),
        };
        match command {
            KvCommand::Set { key, value } => write(&mut self.map, key, Some(value)),
            KvCommand::Delete { key } => write(&mut self.map, key, None),
            KvCommand::CompareAndSwap { key, expected, new } => {
                if self.map.get(key).map(|e| &e.0) == expected.as_ref() {
                    write(&mut self.map, key, new.as_deref());
                }
            }
            KvCommand::DeletePrefix { prefix } => {
                let keys: Vec<String> = self
                    .map
                    .keys()
                    .filter(|k| k.starts_with(prefix.as_str()))
                    .cloned()
                    .collect();
                for k in keys {
                    write(&mut self.map, &k, None);
                }
            }
            KvCommand::Txn(txn) => {
                for op in if applied { &txn.success } else { &txn.failure } {
                    match op {
                        TxnOp::Put { key, value } => write(&mut self.map, key, Some(value)),
                        TxnOp::Delete { key } => write(&mut self.map, key, None),
                        TxnOp::Get { .. } => {}
                    }
                }
            }
        }
        if changed {
            self.revision = next;
        }
    }
}

#[test]
fn replicas_agree_on_random_commands() {
    for seed in 0..8 {
        let mut rng = Rng(seed);
        let (mut a, mut b, mut c) = (KeyValueStore::new(), KeyValueStore::new(), None);
        let mut model = Model::default();
        let steps = 600;
        for step in 0..steps {
            let command = rng.command();
            let ra = a.apply(command.clone());
            let rb = b.apply(command.clone());
            assert_eq!(ra, rb, "seed {seed} step {step}");
            if let Some(c) = &mut c {
                let c: &mut KeyValueStore = c;
                assert_eq!(c.apply(command.clone()), ra, "seed {seed} step {step}");
            }
            model.apply(&command, ra.applied);
            assert_eq!(
                ra.revision, model.revision,
                "seed {seed} step {step}: {command:?}"
            );
            if step == steps / 2 {
                c = Some(restored(&snapshot_bytes(&a)).unwrap());
            }
        }
        let c = c.unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        let expected: Vec<_> = model
            .map
            .into_iter()
            .map(|(k, (v, create, modified, version))| (k, v, create, modified, version))
            .collect();
        assert_eq!(dump(&a), expected, "seed {seed}");
        check_history(&a, &c);
    }
}

/// Replaying a replica's whole history rebuilds its map; the restored replica's history
/// matches from the revision after its snapshot.
fn check_history(a: &KeyValueStore, c: &KeyValueStore) {
    let (events, cursor, more) = a.changes_since(1, "", true, 0).unwrap();
    assert_eq!((cursor, more), (a.revision() + 1, false));
    let mut replay = BTreeMap::new();
    for e in &events {
        let prev = match e.kind {
            WatchEventKind::Put => replay.insert(e.kv.key.clone(), e.kv.clone()),
            WatchEventKind::Delete => replay.remove(&e.kv.key),
        };
        assert_eq!(prev, e.prev);
    }
    let replayed: Vec<KeyValue> = replay.into_values().collect();
    assert_eq!(replayed, a.range("", None, 0).kvs);
    let from = c
        .changes_since(1, "", true, 0)
        .map_or_else(|e| e.oldest, |_| 1);
    assert_eq!(
        c.changes_since(from, "", true, 0),
        a.changes_since(from, "", true, 0)
    );
    assert!(from == 1 || c.changes_since(from - 1, "", true, 0).is_err());
}
