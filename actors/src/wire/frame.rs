//! The rkyv types that cross the wire. Field for field they mirror raft-rs's protobuf types, so
//! conversion (in `convert`) is mechanical and validation is explicit.

use rkyv::{Archive, Deserialize, Serialize};

use crate::{membership::MembershipRefusal, trace::TraceContext};

/// One frame of the consensus stream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Frame {
    /// First frame of every stream.
    Hello(Hello),
    /// Raft messages from the Hello sender to the receiver.
    Raft(Vec<WireMessage>),
    /// Proposals forwarded by a follower to the leader.
    Forward(Vec<ForwardedProposal>),
    /// The leader's answers to forwarded proposals.
    ForwardReply(Vec<ForwardReply>),
    /// Opens a snapshot stream: the `MsgSnapshot` carrying the snapshot's metadata.
    SnapshotHeader(Box<WireMessage>),
    /// The next piece of the snapshot's bytes.
    SnapshotChunk(Vec<u8>),
    /// Closes a snapshot stream: what the receiver must have counted.
    SnapshotEnd {
        /// Total bytes.
        size: u64,
        /// CRC-32 of all the bytes.
        checksum: u32,
    },
    /// The sender's running hash of the entries it applied, up to `index` (the replica
    /// consistency check).
    Checkpoint {
        /// The last index the sender applied.
        index: u64,
        /// Its running hash there.
        hash: [u8; 32],
    },
}

/// Stream preamble.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hello {
    /// Minor protocol version ([`super::PROTOCOL_VERSION`]).
    pub version: u32,
    /// Raft id of the sender.
    pub from: u64,
    /// Raft id the sender believes the receiver has.
    pub to: u64,
    /// How many times the sender's data dir has started a node, counted durably: a receiver that
    /// has seen a higher number from the same node refuses the stream with
    /// [`super::CloseCode::StaleIncarnation`] (the sender runs on an old copy of its data dir).
    pub incarnation: u64,
}

/// A raft-rs `eraftpb::Message`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[allow(missing_docs)]
pub struct WireMessage {
    pub msg_type: u8,
    pub to: u64,
    pub from: u64,
    pub term: u64,
    pub log_term: u64,
    pub index: u64,
    pub entries: Vec<WireEntry>,
    pub commit: u64,
    pub commit_term: u64,
    pub snapshot: Option<WireSnapshotMeta>,
    pub request_snapshot: u64,
    pub reject: bool,
    pub reject_hint: u64,
    pub context: Vec<u8>,
    pub priority: i64,
}

/// A raft-rs `eraftpb::Entry`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[allow(missing_docs)]
pub struct WireEntry {
    pub entry_type: u8,
    pub term: u64,
    pub index: u64,
    pub data: Vec<u8>,
    pub context: Vec<u8>,
}

/// The metadata of a raft-rs snapshot. Snapshot data never rides in a Raft frame: it has a stream
/// of its own.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[allow(missing_docs)]
pub struct WireSnapshotMeta {
    pub index: u64,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub voters_outgoing: Vec<u64>,
    pub learners_next: Vec<u64>,
    pub auto_leave: bool,
}

/// A proposal a follower forwards to the leader.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ForwardedProposal {
    /// The follower's incarnation (its ids restart at every start).
    pub session: u64,
    /// The follower's id for this proposal; it comes back in the entry context and the reply.
    pub id: u64,
    /// The follower's term when it forwarded: the leader appends a command or a membership
    /// change only in that same term (otherwise it answers "not leader"). So once the follower
    /// applies an entry of a later term, a proposal it forwarded that was not applied before
    /// never will be.
    pub term: u64,
    /// What the follower asks of the leader.
    pub request: ForwardRequest,
    /// The proposer's trace context, which the leader puts into the entry (see
    /// [`crate::trace`]).
    pub trace: Option<TraceContext>,
}

impl ForwardedProposal {
    /// Roughly how many bytes it takes in a frame.
    pub fn encoded_size(&self) -> usize {
        let payload = match &self.request {
            ForwardRequest::Command(data) => data.len(),
            ForwardRequest::Membership { change, .. } => change.len() + 16,
            ForwardRequest::Transfer(_) => 16,
        };
        payload + 40
    }
}

/// What a follower forwards to the leader.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ForwardRequest {
    /// An application command (postcard of the state machine's command type; the leader
    /// checks that it decodes before appending it).
    Command(Vec<u8>),
    /// A membership change.
    Membership {
        /// Postcard of the [`crate::MembershipChange`] (it carries iroh endpoint addresses,
        /// whose encoding is iroh's serde one).
        change: Vec<u8>,
        /// The largest lag a learner being promoted may have, if the caller set one.
        max_lag: Option<u64>,
    },
    /// Hand leadership over to this voter, or to the most up-to-date one. The reply is
    /// [`ForwardOutcome::TransferStarted`].
    Transfer(Option<u64>),
}

/// The leader's answer to one forwarded proposal.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ForwardReply {
    /// The follower's incarnation the proposal came from.
    pub session: u64,
    /// The follower's proposal id.
    pub id: u64,
    /// What happened to it.
    pub outcome: ForwardOutcome,
}

/// What the leader did with a forwarded proposal.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ForwardOutcome {
    /// Appended to the leader's log at this index and term.
    Appended {
        /// Log index.
        index: u64,
        /// Term of the entry.
        term: u64,
    },
    /// A leadership transfer to this voter has started.
    TransferStarted {
        /// The voter leadership is handed to.
        to: u64,
    },
    /// The receiver is not the leader (or not in the term the proposal was forwarded in).
    NotLeader {
        /// The leader the receiver believes in, if any.
        leader_hint: Option<u64>,
    },
    /// The leader did not append it: raft-rs dropped it (a leadership transfer is under way,
    /// or too many entries are uncommitted). It was never appended, so retrying is safe.
    Busy,
    /// The leader refused a membership change.
    MembershipRefused(MembershipRefusal),
    /// The leader refused a transfer.
    TransferRefused(TransferRefusal),
}

/// Why a leader refused to hand leadership over.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferRefusal {
    /// The target is not a voter.
    NotAVoter(u64),
    /// There is no other voter to hand over to.
    NoCandidate,
}
