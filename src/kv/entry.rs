//! What the store's map holds per key.

use super::KeyValue;

/// A key's value and revisions, as the map holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) value: String,
    pub(super) create_revision: u64,
    pub(super) mod_revision: u64,
    pub(super) version: u64,
}

impl Entry {
    pub(super) fn to_kv(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}
