//! Reading a data dir back at start-up: every record checked against its seal, and the records
//! checked against each other before raft-rs sees them.

use redb::ReadableTable;

use super::{IoContext, LogDb, codec, meta_key};
use crate::{
    error::{DataLocation, StorageError},
    storage::{
        records::{Recovered, decode_identity, decode_index_term, decode_members, decode_snapshot},
        tables::LOG,
    },
};

impl LogDb {
    /// Reads everything a restarting node needs, verifying every record's checksum and that
    /// the records agree with each other (terms never go down along the log, no entry is newer
    /// than the hard state's term, the commit index is within the log or the snapshot, and the
    /// snapshot covers the compacted prefix).
    pub fn recover(&self) -> Result<Recovered, StorageError> {
        let tx = self.begin_read()?;
        let fenced = self.meta(&tx, meta_key::FENCED, |b| {
            String::from_utf8(b.to_vec()).ok()
        })?;
        if let Some(reason) = fenced {
            return Err(StorageError::Fenced {
                path: self.path.clone(),
                reason,
            });
        }
        let mut out = Recovered {
            identity: self.meta(&tx, meta_key::IDENTITY, decode_identity)?,
            hard_state: self
                .meta(&tx, meta_key::HARD_STATE, |b| {
                    codec::decode_hard_state(b).ok()
                })?
                .unwrap_or_default(),
            conf_state: self
                .meta(&tx, meta_key::CONF_STATE, |b| {
                    codec::decode_conf_state(b).ok()
                })?
                .unwrap_or_default(),
            members: self
                .meta(&tx, meta_key::MEMBERS, decode_members)?
                .unwrap_or_default(),
            snapshot: self.meta(&tx, meta_key::SNAPSHOT, decode_snapshot)?,
            log_start: self
                .meta(&tx, meta_key::LOG_START, decode_index_term)?
                .unwrap_or_default(),
            ..Default::default()
        };
        let log = tx.open_table(LOG).io("open log")?;
        let mut expected = out.log_start.0 + 1;
        for row in log.iter().io("read log")? {
            let (k, v) = row.io("read log")?;
            let index = k.value();
            if index != expected {
                return Err(self.inconsistent(
                    DataLocation::LogEntry { index: expected },
                    format!("the log has a gap: entry {expected} is missing, the next is {index}"),
                ));
            }
            expected = index + 1;
            let entry = codec::decode_entry(index, v.value())
                .map_err(|e| self.corrupt(DataLocation::LogEntry { index }, e))?;
            out.entries.push(entry);
        }
        self.check_consistency(&out)?;
        Ok(out)
    }

    /// The durable records must describe one Raft state that raft-rs can start from: terms never
    /// go down along the log, no entry is from a term the node has not reached, the commit index
    /// is within the log, and the snapshot covers the compacted prefix. A contradiction is a
    /// typed [`StorageError::Corrupt`] here, never a panic inside raft-rs.
    fn check_consistency(&self, r: &Recovered) -> Result<(), StorageError> {
        let hs = &r.hard_state;
        let hard_state = DataLocation::Meta {
            key: meta_key::HARD_STATE,
        };
        let snapshot_index = r.snapshot.as_ref().map_or(0, |s| s.index);
        if snapshot_index < r.log_start.0 {
            return Err(self.inconsistent(
                DataLocation::Meta {
                    key: meta_key::LOG_START,
                },
                format!(
                    "the log was compacted up to {} but the snapshot only covers {snapshot_index}",
                    r.log_start.0
                ),
            ));
        }
        let mut prev_term = r.log_start.1;
        for e in &r.entries {
            if e.term < prev_term {
                return Err(self.inconsistent(
                    DataLocation::LogEntry { index: e.index },
                    format!(
                        "term {} is below the previous entry's term {prev_term}",
                        e.term
                    ),
                ));
            }
            prev_term = e.term;
        }
        if prev_term > hs.term {
            return Err(self.inconsistent(
                hard_state,
                format!(
                    "the log holds an entry of term {prev_term}, after the node's term {}",
                    hs.term
                ),
            ));
        }
        let last_index = r
            .entries
            .last()
            .map_or(r.log_start.0, |e| e.index)
            .max(snapshot_index);
        if hs.commit > last_index {
            return Err(self.inconsistent(
                hard_state,
                format!(
                    "commit index {} is beyond the last entry held ({last_index}): entries this \
                     node acknowledged are missing",
                    hs.commit
                ),
            ));
        }
        Ok(())
    }
}
