//! Byte layouts of what the storage tables hold. Entries use a fixed little-endian layout (they
//! are the hot path); the rest uses postcard over small serde mirrors.

use raft::eraftpb::{ConfState, Entry, EntryType, HardState};
use serde::{Deserialize, Serialize};

use super::seal::{SEAL_LEN, Tag, seal_in_place, unseal};

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// Its checksum does not match.
    Checksum,
    /// The checksum matches but the bytes do not decode.
    Undecodable(String),
}

/// `[entry_type u8][term u64][context_len u32][context][data][seal]`; the index is the table key
/// (and part of the seal).
pub(crate) fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(13 + e.context.len() + e.data.len() + SEAL_LEN);
    out.push(e.entry_type as i32 as u8);
    out.extend_from_slice(&e.term.to_le_bytes());
    out.extend_from_slice(&(e.context.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.context);
    out.extend_from_slice(&e.data);
    seal_in_place(Tag::Log, &e.index.to_le_bytes(), out, 0);
}

pub(crate) fn decode_entry(index: u64, sealed: &[u8]) -> Result<Entry, RecordError> {
    let bytes = unseal(Tag::Log, &index.to_le_bytes(), sealed).ok_or(RecordError::Checksum)?;
    let bad = |why: String| Err(RecordError::Undecodable(why));
    if bytes.len() < 13 {
        return bad(format!("{} bytes, shorter than its header", bytes.len()));
    }
    let entry_type = match bytes[0] {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        t => return bad(format!("unknown entry type {t}")),
    };
    let term = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
    let ctx_len = u32::from_le_bytes(bytes[9..13].try_into().expect("4 bytes")) as usize;
    let rest = &bytes[13..];
    if rest.len() < ctx_len {
        return bad("its context overruns the record".into());
    }
    Ok(Entry {
        entry_type,
        term,
        index,
        context: rest[..ctx_len].to_vec().into(),
        data: rest[ctx_len..].to_vec().into(),
        ..Default::default()
    })
}

pub(crate) fn encode_hard_state(hs: &HardState) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&hs.term.to_le_bytes());
    out[8..16].copy_from_slice(&hs.vote.to_le_bytes());
    out[16..].copy_from_slice(&hs.commit.to_le_bytes());
    out
}

pub(crate) fn decode_hard_state(bytes: &[u8]) -> Result<HardState, String> {
    if bytes.len() != 24 {
        return Err(format!("hard state is {} bytes, expected 24", bytes.len()));
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Ok(HardState {
        term: word(0),
        vote: word(1),
        commit: word(2),
        ..Default::default()
    })
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ConfStateRecord {
    voters: Vec<u64>,
    learners: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners_next: Vec<u64>,
    auto_leave: bool,
}

pub(crate) fn conf_state_record(cs: &ConfState) -> ConfStateRecord {
    ConfStateRecord {
        voters: cs.voters.clone(),
        learners: cs.learners.clone(),
        voters_outgoing: cs.voters_outgoing.clone(),
        learners_next: cs.learners_next.clone(),
        auto_leave: cs.auto_leave,
    }
}

pub(crate) fn conf_state_from_record(r: ConfStateRecord) -> ConfState {
    ConfState {
        voters: r.voters,
        learners: r.learners,
        voters_outgoing: r.voters_outgoing,
        learners_next: r.learners_next,
        auto_leave: r.auto_leave,
        ..Default::default()
    }
}

pub(crate) fn encode_conf_state(cs: &ConfState) -> Vec<u8> {
    postcard::to_allocvec(&conf_state_record(cs)).expect("in-memory serialization of plain vectors")
}

pub(crate) fn decode_conf_state(bytes: &[u8]) -> Result<ConfState, String> {
    let r: ConfStateRecord = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    Ok(conf_state_from_record(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip_and_truncation() {
        let e = Entry {
            entry_type: EntryType::EntryConfChangeV2,
            term: 9,
            index: 42,
            context: vec![1, 2, 3].into(),
            data: b"payload".to_vec().into(),
            ..Default::default()
        };
        let mut buf = Vec::new();
        encode_entry(&e, &mut buf);
        assert_eq!(decode_entry(42, &buf).unwrap(), e);
        for cut in 0..buf.len() {
            assert_eq!(decode_entry(42, &buf[..cut]), Err(RecordError::Checksum));
        }
        // Stored under another index: the seal covers the key.
        assert_eq!(decode_entry(43, &buf), Err(RecordError::Checksum));
        buf[9] = 200; // context length beyond the record
        assert_eq!(decode_entry(42, &buf), Err(RecordError::Checksum));
        // A well-sealed record that does not decode is told apart from a damaged one.
        let mut forged = vec![2u8];
        forged.extend_from_slice(&9u64.to_le_bytes());
        forged.extend_from_slice(&200u32.to_le_bytes());
        super::seal_in_place(Tag::Log, &42u64.to_le_bytes(), &mut forged, 0);
        assert!(matches!(
            decode_entry(42, &forged),
            Err(RecordError::Undecodable(_))
        ));
    }

    #[test]
    fn hard_and_conf_state_round_trip() {
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 17,
            ..Default::default()
        };
        assert_eq!(decode_hard_state(&encode_hard_state(&hs)).unwrap(), hs);
        let cs = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..Default::default()
        };
        assert_eq!(decode_conf_state(&encode_conf_state(&cs)).unwrap(), cs);
    }
}
