//! The values the storage layer stores and hands out, and their byte layouts.

use std::net::SocketAddr;

use iroh::{EndpointAddr, EndpointId};
use raft::eraftpb::{ConfState, Entry, HardState};
use serde::{Deserialize, Serialize};

use super::codec::{ConfStateRecord, conf_state_from_record, conf_state_record};
use crate::types::NodeId;

/// Who a data dir belongs to: written once at bootstrap, checked at every start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The node's Raft id.
    pub node_id: NodeId,
    /// The node's iroh endpoint id.
    pub endpoint_id: EndpointId,
}

/// A cluster member: Raft id and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Raft id.
    pub node_id: NodeId,
    /// Endpoint id and last known direct addresses.
    pub addr: EndpointAddr,
}

/// A stored snapshot: where its bytes are and what they hold.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SnapshotRecord {
    /// Storage id of its chunks.
    pub id: u64,
    /// Last log index the snapshot covers.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// The configuration as of `index`.
    pub conf_state: ConfState,
    /// Total bytes.
    pub size: u64,
    /// Number of chunks.
    pub chunks: u32,
    /// CRC-32 of the whole byte stream.
    pub checksum: u32,
}

/// What one Ready round asks to make durable.
#[derive(Debug, Default)]
pub struct PersistBatch {
    /// The Ready number, confirmed back to the RaftActor once durable.
    pub number: u64,
    /// A snapshot installed from the leader: it becomes current and replaces the whole log
    /// (entries in this batch come after it).
    pub snapshot: Option<SnapshotRecord>,
    /// New entries; any stored entry at or after the first one's index is replaced.
    pub entries: Vec<Entry>,
    /// New hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// New conf state, if it changed.
    pub conf_state: Option<ConfState>,
    /// True when Raft needs this batch on disk before acting on it (entries, term, vote or a
    /// snapshot changed); false for commit-index-only updates.
    pub must_sync: bool,
}

/// Everything a restarting node needs from its data dir.
#[derive(Debug, Default)]
pub struct Recovered {
    /// `None` for a fresh data dir.
    pub identity: Option<Identity>,
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// Voters and learners.
    pub conf_state: ConfState,
    /// Members with their endpoint addresses.
    pub members: Vec<Member>,
    /// The current snapshot, if the node has one.
    pub snapshot: Option<SnapshotRecord>,
    /// Index and term just before the first stored entry (0, 0 if the log was never compacted).
    pub log_start: (u64, u64),
    /// The stored log after `log_start`, in index order.
    pub entries: Vec<Entry>,
    /// This start's incarnation number (counted durably by [`super::Recover`]).
    pub incarnation: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    node_id: NodeId,
    endpoint_id: [u8; 32],
    addrs: Vec<SocketAddr>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct IdentityRecord {
    node_id: NodeId,
    endpoint_id: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct SnapshotRecordBytes {
    id: u64,
    index: u64,
    term: u64,
    conf_state: ConfStateRecord,
    size: u64,
    chunks: u32,
    checksum: u32,
}

pub(crate) fn encode_identity(identity: &Identity) -> Vec<u8> {
    let record = IdentityRecord {
        node_id: identity.node_id,
        endpoint_id: *identity.endpoint_id.as_bytes(),
    };
    postcard::to_allocvec(&record).expect("plain record")
}

pub(crate) fn decode_identity(bytes: &[u8]) -> Option<Identity> {
    let r: IdentityRecord = postcard::from_bytes(bytes).ok()?;
    Some(Identity {
        node_id: r.node_id,
        endpoint_id: EndpointId::from_bytes(&r.endpoint_id).ok()?,
    })
}

pub(crate) fn encode_members(members: &[Member]) -> Vec<u8> {
    let records: Vec<MemberRecord> = members
        .iter()
        .map(|m| MemberRecord {
            node_id: m.node_id,
            endpoint_id: *m.addr.id.as_bytes(),
            addrs: m.addr.ip_addrs().copied().collect(),
        })
        .collect();
    postcard::to_allocvec(&records).expect("plain records")
}

pub(crate) fn decode_members(bytes: &[u8]) -> Option<Vec<Member>> {
    let records: Vec<MemberRecord> = postcard::from_bytes(bytes).ok()?;
    records
        .into_iter()
        .map(|r| {
            let id = EndpointId::from_bytes(&r.endpoint_id).ok()?;
            let addr = r
                .addrs
                .into_iter()
                .fold(EndpointAddr::new(id), |a, ip| a.with_ip_addr(ip));
            Some(Member {
                node_id: r.node_id,
                addr,
            })
        })
        .collect()
}

pub(crate) fn encode_snapshot(r: &SnapshotRecord) -> Vec<u8> {
    let bytes = SnapshotRecordBytes {
        id: r.id,
        index: r.index,
        term: r.term,
        conf_state: conf_state_record(&r.conf_state),
        size: r.size,
        chunks: r.chunks,
        checksum: r.checksum,
    };
    postcard::to_allocvec(&bytes).expect("plain record")
}

pub(crate) fn decode_snapshot(bytes: &[u8]) -> Option<SnapshotRecord> {
    let r: SnapshotRecordBytes = postcard::from_bytes(bytes).ok()?;
    Some(SnapshotRecord {
        id: r.id,
        index: r.index,
        term: r.term,
        conf_state: conf_state_from_record(r.conf_state),
        size: r.size,
        chunks: r.chunks,
        checksum: r.checksum,
    })
}

pub(crate) fn encode_index_term((index, term): (u64, u64)) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&index.to_le_bytes());
    out[8..].copy_from_slice(&term.to_le_bytes());
    out
}

pub(crate) fn decode_index_term(bytes: &[u8]) -> Option<(u64, u64)> {
    let index = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let term = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((index, term))
}
