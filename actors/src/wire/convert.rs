//! Field-by-field conversion between raft-rs's protobuf types and the wire types, and the
//! validation every received frame goes through before it reaches the Raft core.

use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};

use super::{
    ForwardReply, ForwardedProposal, Frame, WireEntry, WireError, WireMessage, WireSnapshotMeta,
};
use crate::types::NodeId;

/// A validated frame, in the types the RaftActor consumes.
#[derive(Debug)]
pub enum InboundPayload {
    /// Raft messages, each already checked to be from the stream's sender to this node.
    Raft(Vec<Message>),
    /// Proposals forwarded to this node (as leader).
    Forward(Vec<ForwardedProposal>),
    /// Answers to proposals this node forwarded.
    ForwardReply(Vec<ForwardReply>),
    /// The sender's applied index and running hash.
    Checkpoint {
        /// Last applied index.
        index: u64,
        /// The running hash there.
        hash: [u8; 32],
    },
}

/// Validates a frame of a consensus stream from the authenticated `from` to `me` and converts
/// it. Snapshot frames belong on snapshot streams and are refused here.
pub fn validate_frame(frame: Frame, from: NodeId, me: NodeId) -> Result<InboundPayload, WireError> {
    match frame {
        Frame::Hello(_) => Err(WireError::BadHello),
        Frame::SnapshotHeader(_) | Frame::SnapshotChunk(_) | Frame::SnapshotEnd { .. } => {
            Err(WireError::malformed("snapshot frame on a consensus stream"))
        }
        Frame::Raft(msgs) => msgs
            .into_iter()
            .map(|m| message_from_wire(m, from, me))
            .collect::<Result<_, _>>()
            .map(InboundPayload::Raft),
        Frame::Forward(proposals) => Ok(InboundPayload::Forward(proposals)),
        Frame::ForwardReply(replies) => Ok(InboundPayload::ForwardReply(replies)),
        Frame::Checkpoint { index, hash } => Ok(InboundPayload::Checkpoint { index, hash }),
    }
}

/// Message types a peer may send in a Raft frame. Local types (hup, beat, unreachable, snapshot
/// status, check quorum) only ever originate inside a node, proposals travel as
/// [`Frame::Forward`], and `MsgSnapshot` only opens a snapshot stream
/// ([`Frame::SnapshotHeader`], see [`validate_snapshot_header`]).
fn network_message_type(code: u8) -> Option<MessageType> {
    use MessageType::*;
    Some(match code {
        3 => MsgAppend,
        4 => MsgAppendResponse,
        5 => MsgRequestVote,
        6 => MsgRequestVoteResponse,
        8 => MsgHeartbeat,
        9 => MsgHeartbeatResponse,
        13 => MsgTransferLeader,
        14 => MsgTimeoutNow,
        15 => MsgReadIndex,
        16 => MsgReadIndexResp,
        17 => MsgRequestPreVote,
        18 => MsgRequestPreVoteResponse,
        _ => return None,
    })
}

fn entry_type(code: u8) -> Option<EntryType> {
    Some(match code {
        0 => EntryType::EntryNormal,
        2 => EntryType::EntryConfChangeV2,
        _ => return None,
    })
}

/// Converts an outgoing raft-rs message.
pub(crate) fn message_to_wire(m: &Message) -> WireMessage {
    WireMessage {
        msg_type: m.msg_type as i32 as u8,
        to: m.to,
        from: m.from,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        entries: m.entries.iter().map(entry_to_wire).collect(),
        commit: m.commit,
        commit_term: m.commit_term,
        snapshot: m.snapshot.as_ref().map(snapshot_meta_to_wire),
        request_snapshot: m.request_snapshot,
        reject: m.reject,
        reject_hint: m.reject_hint,
        context: m.context.to_vec(),
        priority: m.priority,
    }
}

fn entry_to_wire(e: &Entry) -> WireEntry {
    WireEntry {
        entry_type: e.entry_type as i32 as u8,
        term: e.term,
        index: e.index,
        data: e.data.to_vec(),
        context: e.context.to_vec(),
    }
}

fn snapshot_meta_to_wire(s: &Snapshot) -> WireSnapshotMeta {
    let meta = s.get_metadata();
    let cs = meta.get_conf_state();
    WireSnapshotMeta {
        index: meta.index,
        term: meta.term,
        voters: cs.voters.clone(),
        learners: cs.learners.clone(),
        voters_outgoing: cs.voters_outgoing.clone(),
        learners_next: cs.learners_next.clone(),
        auto_leave: cs.auto_leave,
    }
}

/// Validates the header of a snapshot stream: a `MsgSnapshot` from `from` to `me` carrying
/// snapshot metadata.
pub fn validate_snapshot_header(
    w: Box<WireMessage>,
    from: NodeId,
    me: NodeId,
) -> Result<Message, WireError> {
    if w.msg_type != MessageType::MsgSnapshot as i32 as u8 || w.snapshot.is_none() {
        return Err(WireError::malformed(
            "a snapshot stream must start with MsgSnapshot",
        ));
    }
    build_message(*w, MessageType::MsgSnapshot, from, me)
}

fn message_from_wire(w: WireMessage, from: NodeId, me: NodeId) -> Result<Message, WireError> {
    let msg_type = network_message_type(w.msg_type)
        .ok_or_else(|| WireError::malformed(format!("message type {} not allowed", w.msg_type)))?;
    build_message(w, msg_type, from, me)
}

fn build_message(
    w: WireMessage,
    msg_type: MessageType,
    from: NodeId,
    me: NodeId,
) -> Result<Message, WireError> {
    if w.from != from || w.to != me {
        return Err(WireError::WrongParty {
            claimed: w.from,
            actual: from,
            to: w.to,
            me,
        });
    }
    let mut m = Message {
        msg_type,
        to: w.to,
        from: w.from,
        term: w.term,
        log_term: w.log_term,
        index: w.index,
        commit: w.commit,
        commit_term: w.commit_term,
        request_snapshot: w.request_snapshot,
        reject: w.reject,
        reject_hint: w.reject_hint,
        context: w.context.into(),
        priority: w.priority,
        ..Default::default()
    };
    m.entries = w
        .entries
        .into_iter()
        .map(entry_from_wire)
        .collect::<Result<Vec<_>, _>>()?
        .into();
    if let Some(s) = w.snapshot {
        m.set_snapshot(snapshot_from_wire(s));
    }
    Ok(m)
}

fn entry_from_wire(w: WireEntry) -> Result<Entry, WireError> {
    let entry_type = entry_type(w.entry_type)
        .ok_or_else(|| WireError::malformed(format!("entry type {} unknown", w.entry_type)))?;
    if entry_type == EntryType::EntryConfChangeV2 && !is_plain_conf_change(&w.data) {
        return Err(WireError::malformed(
            "configuration change entry is not a plain ConfChangeV2",
        ));
    }
    Ok(Entry {
        entry_type,
        term: w.term,
        index: w.index,
        data: w.data.into(),
        context: w.context.into(),
        ..Default::default()
    })
}

/// Reads a protobuf varint; `None` when truncated or longer than 10 bytes.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Reads one protobuf field: `(field number, varint value or the bytes of a length-delimited
/// one)`. Only wire types 0 and 2 exist in a ConfChangeV2; anything else (groups above all, the
/// recursion behind RUSTSEC-2024-0437) is refused.
fn field<'a>(bytes: &mut &'a [u8]) -> Option<(u64, Result<u64, &'a [u8]>)> {
    let key = varint(bytes)?;
    match key & 7 {
        0 => Some((key >> 3, Ok(varint(bytes)?))),
        2 => {
            let len = usize::try_from(varint(bytes)?).ok()?;
            if len > bytes.len() {
                return None;
            }
            let (value, rest) = bytes.split_at(len);
            *bytes = rest;
            Some((key >> 3, Err(value)))
        }
        _ => None,
    }
}

/// Whether `data` is a flat ConfChangeV2 (transition, changes of type and node id, context) and
/// nothing else, so that raft-rs's protobuf parser, which the RaftActor runs on committed
/// configuration changes, only ever sees this shape. The empty entry that leaves a joint
/// configuration is one.
pub(crate) fn is_plain_conf_change(mut data: &[u8]) -> bool {
    while !data.is_empty() {
        match field(&mut data) {
            Some((1, Ok(transition))) if transition <= 2 => {}
            Some((2, Err(mut change))) => {
                while !change.is_empty() {
                    match field(&mut change) {
                        Some((1, Ok(kind))) if kind <= 2 => {}
                        Some((2, Ok(_))) => {}
                        _ => return false,
                    }
                }
            }
            Some((3, Err(_))) => {}
            _ => return false,
        }
    }
    true
}

fn snapshot_from_wire(w: WireSnapshotMeta) -> Snapshot {
    let mut s = Snapshot::default();
    let meta = s.mut_metadata();
    meta.index = w.index;
    meta.term = w.term;
    meta.set_conf_state(ConfState {
        voters: w.voters,
        learners: w.learners,
        voters_outgoing: w.voters_outgoing,
        learners_next: w.learners_next,
        auto_leave: w.auto_leave,
        ..Default::default()
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(from: u64, to: u64) -> Message {
        let mut m = Message {
            msg_type: MessageType::MsgAppend,
            from,
            to,
            term: 3,
            index: 4,
            log_term: 2,
            commit: 4,
            ..Default::default()
        };
        m.entries = vec![Entry {
            term: 3,
            index: 5,
            data: b"x".to_vec().into(),
            ..Default::default()
        }]
        .into();
        m
    }

    #[test]
    fn raft_message_round_trips() {
        let m = append(1, 2);
        let frame = Frame::Raft(vec![message_to_wire(&m)]);
        let InboundPayload::Raft(back) = validate_frame(frame, 1, 2).unwrap() else {
            panic!("not raft")
        };
        assert_eq!(back, vec![m]);
    }

    #[test]
    fn spoofed_sender_or_receiver_is_refused() {
        let frame = || Frame::Raft(vec![message_to_wire(&append(1, 2))]);
        assert!(matches!(
            validate_frame(frame(), 3, 2),
            Err(WireError::WrongParty { .. })
        ));
        assert!(matches!(
            validate_frame(frame(), 1, 3),
            Err(WireError::WrongParty { .. })
        ));
    }

    #[test]
    fn local_message_types_are_refused() {
        let mut m = append(1, 2);
        for t in [
            MessageType::MsgHup,
            MessageType::MsgPropose,
            MessageType::MsgBeat,
        ] {
            m.msg_type = t;
            let frame = Frame::Raft(vec![message_to_wire(&m)]);
            assert!(matches!(
                validate_frame(frame, 1, 2),
                Err(WireError::Malformed { .. })
            ));
        }
    }
}
