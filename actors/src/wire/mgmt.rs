//! Messages and framing of the management protocol; the specification is in the [`super`]
//! module doc.

use rkyv::{Archive, Deserialize, Serialize, rancor, util::AlignedVec};

use super::discovery::{
    Archivable, Decodable, DiscoveryWireError, decode_framed, encode_framed, read_framed,
};
use crate::trace::TraceContext;

/// ALPN of the management protocol.
pub const MGMT_ALPN: &[u8] = b"iroh-raft-mgmt/0";

/// Version carried in [`MgmtRequest::Hello`].
pub const MGMT_VERSION: u32 = 6;

/// Largest management message (8 MiB: a command of up to 4 MiB with room to spare).
pub const MAX_MGMT_FRAME: usize = 8 * 1024 * 1024;

/// What a client may do, granted at [`MgmtRequest::Hello`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MgmtRole {
    /// Everything: membership changes, proposals, reads, events.
    Admin,
    /// Status, health, events and linearizable reads.
    ReadOnly,
}

/// A member as the management protocol reports it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MgmtMember {
    /// Raft id.
    pub id: u64,
    /// Endpoint id (public key bytes).
    pub key: [u8; 32],
    /// Direct socket addresses, as strings.
    pub addrs: Vec<String>,
    /// `voter`, `learner` or `outgoing`.
    pub role: String,
    /// On the leader: the member's match index (0 elsewhere or unknown).
    pub matched: u64,
    /// On the leader: entries behind the leader's last index (0 elsewhere).
    pub lag: u64,
    /// Milliseconds since this node last heard from the member (`u64::MAX`: never).
    pub last_contact_ms: u64,
    /// This node heard from the member within an election timeout (always true for itself).
    /// On the leader, a voter that is not fresh is one the cluster cannot count on.
    pub fresh: bool,
    /// This node's replica consistency check found the member's applied entries to differ
    /// from its own (a corruption alarm).
    pub diverged: bool,
}

/// The cluster as the answering node sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MgmtStatus {
    /// The node that answered.
    pub node_id: u64,
    /// The cluster id.
    pub cluster_id: [u8; 16],
    /// The leader it knows of (0: none).
    pub leader: u64,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// The answering node's role: `leader`, `follower`, `candidate`, `pre-candidate`.
    pub role: String,
    /// Every member.
    pub members: Vec<MgmtMember>,
    /// Size of the answering node's database file in bytes (0 in memory, or not read yet).
    pub db_size_bytes: u64,
    /// The answering node's software version (`iroh-raft-actors` crate version).
    pub version: String,
}

/// Health as the answering node sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MgmtHealth {
    /// The node that answered.
    pub node_id: u64,
    /// A leader is known and this node heard from it recently (or is it).
    pub quorum_available: bool,
    /// Voters this node heard from within an election timeout (itself included).
    pub healthy_voters: Vec<u64>,
    /// Every voter.
    pub voters: Vec<u64>,
    /// Storage accepts writes (the node has not failed).
    pub storage_ok: bool,
    /// This node's role.
    pub role: String,
    /// Entries this node has not applied yet (commit − applied).
    pub apply_lag: u64,
    /// The `data_corruption` check: members found corrupt as this node sees them (its own id
    /// when it stopped because its data is corrupt or stale, peers whose applied entries
    /// differ from its own). Empty when healthy.
    pub data_corruption: Vec<u64>,
    /// Why this node stopped, if it did (with what to do about it).
    pub stopped: Option<String>,
}

/// A request: [`MgmtRequest::Hello`] alone on a connection's first stream, then any number of
/// them, each in a [`MgmtCall`], on the streams that follow.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum MgmtRequest {
    /// First stream of a connection: version and, unless the client's key is a member or on
    /// the node's allowlist, a ticket (as printed).
    Hello {
        /// [`MGMT_VERSION`].
        version: u32,
        /// An admin or read-only ticket.
        ticket: Option<String>,
    },
    /// [`MgmtStatus`].
    Status,
    /// [`MgmtHealth`].
    Health,
    /// Add a learner.
    AddLearner {
        /// Raft id.
        id: u64,
        /// Endpoint id.
        key: [u8; 32],
        /// Direct addresses.
        addrs: Vec<String>,
    },
    /// Add a voter.
    AddVoter {
        /// Raft id.
        id: u64,
        /// Endpoint id.
        key: [u8; 32],
        /// Direct addresses.
        addrs: Vec<String>,
    },
    /// Add as learner, promote once within `max_lag` entries.
    Join {
        /// Raft id.
        id: u64,
        /// Endpoint id.
        key: [u8; 32],
        /// Direct addresses.
        addrs: Vec<String>,
        /// Largest lag at promotion.
        max_lag: u64,
    },
    /// Give a member new addresses (same key, same role).
    UpdateAddress {
        /// Raft id.
        id: u64,
        /// Endpoint id (must be the member's).
        key: [u8; 32],
        /// Its new direct addresses.
        addrs: Vec<String>,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner.
        id: u64,
    },
    /// Remove a member.
    Remove {
        /// The member.
        id: u64,
    },
    /// Hand leadership over (0: the most up-to-date voter).
    TransferLeader {
        /// The target, or 0.
        to: u64,
    },
    /// Take a snapshot on the answering node.
    Snapshot,
    /// Propose an application command (postcard bytes of the state machine's command).
    Propose {
        /// The encoded command.
        command: Vec<u8>,
    },
    /// A linearizable read (the query's encoding is the node's reader's business).
    Read {
        /// The encoded query.
        query: Vec<u8>,
    },
    /// Stream events: [`MgmtResponse::Event`]s until the client stops the stream. With a
    /// non-zero `epoch`, resume after event `after` of that run of the node's event bus.
    Subscribe {
        /// The run the client saw events of (0: start from now).
        epoch: u64,
        /// The last event number it saw.
        after: u64,
    },
    /// Mint a ticket signed by the answering member (admin only).
    MintTicket {
        /// 0: join, 1: admin, 2: read-only.
        role: u8,
        /// Seconds it stays valid.
        valid_for_secs: u64,
    },
    /// The answering member's metrics, in the OpenMetrics text format (what its `/metrics`
    /// serves).
    Metrics,
    /// The answering member's readiness (`ready`) or liveness checks (what its `/readyz` or
    /// `/livez` runs). A member that stopped for good still answers.
    Probe {
        /// Readiness (true) or liveness (false).
        ready: bool,
    },
    /// A consistent backup of the cluster's state, taken on the answering member (admin only):
    /// [`MgmtResponse::BackupStarted`], the file's bytes in [`MgmtResponse::BackupPiece`]s,
    /// then [`MgmtResponse::BackupEnd`] (or an error). Clients give it a lane of its own.
    Backup,
    /// Stream the state machine's changes through the node's remote watcher (the query's
    /// encoding is the watcher's business): [`MgmtResponse::Watching`], then
    /// [`MgmtResponse::Changes`] until the client stops the stream or the node ends it with an
    /// error. Clients give it a lane of its own.
    Watch {
        /// The encoded query.
        query: Vec<u8>,
    },
}

/// One health check's outcome.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MgmtCheck {
    /// Its name (`leader`, `storage`, ...).
    pub name: String,
    /// `None` when it passed, or why it failed.
    pub failure: Option<String>,
}

/// A member's readiness or liveness checks.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MgmtProbe {
    /// The member that ran them.
    pub node_id: u64,
    /// `readyz` or `livez`.
    pub kind: String,
    /// Every check, in order.
    pub checks: Vec<MgmtCheck>,
}

/// Why a request failed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MgmtErrorKind {
    /// The client's role does not allow this request.
    Forbidden,
    /// No leader, or the leader could not be reached: retry (elsewhere).
    Unavailable,
    /// The outcome is unknown (timeout, interrupted, or the node stopped while the command
    /// was in its hands): do not send it elsewhere blindly.
    Unknown,
    /// Refused (membership refusal, bad input): nothing changed.
    Refused,
    /// The request or its payload did not decode.
    Malformed,
    /// The node cannot serve this request (no remote reader installed).
    Unsupported,
    /// The node is out of service (failed, removed, shutting down) and did nothing with this
    /// request: ask another member.
    NodeDown,
}

impl MgmtErrorKind {
    /// A short snake_case name (the `outcome` label of management request metrics).
    pub fn name(self) -> &'static str {
        match self {
            MgmtErrorKind::Forbidden => "forbidden",
            MgmtErrorKind::Unavailable => "unavailable",
            MgmtErrorKind::Unknown => "unknown",
            MgmtErrorKind::Refused => "refused",
            MgmtErrorKind::Malformed => "malformed",
            MgmtErrorKind::Unsupported => "unsupported",
            MgmtErrorKind::NodeDown => "node_down",
        }
    }
}

impl MgmtRequest {
    /// A short snake_case name of the call (the `kind` label of management request metrics).
    pub fn kind_name(&self) -> &'static str {
        match self {
            MgmtRequest::Hello { .. } => "hello",
            MgmtRequest::Status => "status",
            MgmtRequest::Health => "health",
            MgmtRequest::AddLearner { .. } => "add_learner",
            MgmtRequest::AddVoter { .. } => "add_voter",
            MgmtRequest::Join { .. } => "join",
            MgmtRequest::Promote { .. } => "promote",
            MgmtRequest::UpdateAddress { .. } => "update_address",
            MgmtRequest::Remove { .. } => "remove",
            MgmtRequest::TransferLeader { .. } => "transfer_leader",
            MgmtRequest::Snapshot => "snapshot",
            MgmtRequest::Propose { .. } => "propose",
            MgmtRequest::Read { .. } => "read",
            MgmtRequest::Subscribe { .. } => "subscribe",
            MgmtRequest::MintTicket { .. } => "mint_ticket",
            MgmtRequest::Metrics => "metrics",
            MgmtRequest::Probe { .. } => "probe",
            MgmtRequest::Backup => "backup",
            MgmtRequest::Watch { .. } => "watch",
        }
    }
}

/// An answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum MgmtResponse {
    /// The connection is admitted with this role.
    Welcome {
        /// The answering node.
        node_id: u64,
        /// What the client may do.
        role: MgmtRole,
    },
    /// Answer to [`MgmtRequest::Status`].
    Status(MgmtStatus),
    /// Answer to [`MgmtRequest::Health`].
    Health(MgmtHealth),
    /// A membership change applied at this index.
    Changed {
        /// Its log index.
        index: u64,
    },
    /// Leadership moved.
    Transferred {
        /// The new leader.
        leader: u64,
        /// How long it took.
        elapsed_ms: u64,
    },
    /// A snapshot covering this index is durable.
    SnapshotTaken {
        /// Its index.
        index: u64,
    },
    /// The state machine's response to a command (postcard bytes).
    Proposed {
        /// The encoded response.
        response: Vec<u8>,
    },
    /// The answer to a read.
    ReadResult {
        /// The encoded answer.
        value: Vec<u8>,
    },
    /// The subscription is in place: events follow, numbered within `epoch`.
    Subscribed {
        /// The run of the node's event bus.
        epoch: u64,
        /// The number of the last event before the first one that follows.
        after: u64,
    },
    /// The watch is in place: its changes follow.
    Watching,
    /// Changes for a [`MgmtRequest::Watch`] (encoded by the node's remote watcher).
    Changes {
        /// The encoded changes.
        bytes: Vec<u8>,
    },
    /// A backup's point is confirmed and its snapshot pinned: its bytes follow.
    BackupStarted {
        /// The log index it covers.
        index: u64,
        /// That entry's term.
        term: u64,
        /// The whole file's size.
        file_size: u64,
    },
    /// The next bytes of a backup file (at most 256 KiB).
    BackupPiece {
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The backup file is complete (its last piece ended with its hash).
    BackupEnd,
    /// A minted ticket, as printed.
    Ticket {
        /// The ticket.
        text: String,
    },
    /// One event (postcard bytes of a `ClusterEvent`) and its number within the run.
    Event {
        /// Its number.
        seq: u64,
        /// The encoded event.
        event: Vec<u8>,
    },
    /// The subscriber fell behind: this many events were dropped.
    Missed {
        /// How many.
        count: u64,
    },
    /// The answer to [`MgmtRequest::Metrics`].
    Metrics {
        /// OpenMetrics text.
        text: String,
    },
    /// The answer to [`MgmtRequest::Probe`].
    Probe(MgmtProbe),
    /// The request failed.
    Error {
        /// The kind, for programs.
        kind: MgmtErrorKind,
        /// What happened, for people.
        message: String,
        /// The leader the node knows of (0: none), for a client that wants to go there.
        leader_hint: u64,
    },
}

/// A request on a lane (any stream after the first), numbered by the client: the
/// [`MgmtReply`]s to it carry the same id.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MgmtCall {
    /// Chosen by the client, unique among its calls in flight on this stream.
    pub id: u64,
    /// The request.
    pub request: MgmtRequest,
    /// The caller's trace context (with the `otel` feature; see [`crate::trace`]): the node
    /// serves the call as part of the caller's trace.
    pub trace: Option<TraceContext>,
}

/// An answer on a lane: one per [`MgmtCall`], or a stream of them for
/// [`MgmtRequest::Subscribe`]. Replies to different calls may come in any order.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MgmtReply {
    /// The id of the call answered.
    pub id: u64,
    /// The leader the answering node knows of (0: none): a client not talking to the leader
    /// moves there, so that its writes take no extra hop.
    pub leader: u64,
    /// The answer.
    pub response: MgmtResponse,
}

/// Frames management messages into one buffer, to send many in one write. Serialises through
/// a scratch buffer it keeps, so once both have grown a message costs no allocation.
#[derive(Debug, Default)]
pub struct MgmtBatch {
    out: Vec<u8>,
    scratch: AlignedVec,
}

impl MgmtBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one framed message; on error (too large) the batch is unchanged.
    pub fn push<T: Archivable>(&mut self, msg: &T) -> Result<(), DiscoveryWireError> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(msg, buf)
            .map_err(|e| DiscoveryWireError::Malformed(e.to_string()))?;
        let len = buf.len();
        let fits = len <= MAX_MGMT_FRAME;
        if fits {
            self.out.extend_from_slice(&(len as u32).to_le_bytes());
            self.out.extend_from_slice(&buf);
        }
        self.scratch = buf;
        if fits {
            Ok(())
        } else {
            Err(DiscoveryWireError::TooLarge(len))
        }
    }

    /// The framed bytes so far.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    /// How many bytes are framed.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Nothing framed yet.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.out.clear();
    }
}

/// How much a [`MgmtReader`] asks the stream for at once.
const READ_CHUNK: usize = 64 * 1024;

/// Reads framed management messages from a stream in large chunks (one stream read serves
/// every frame it holds, instead of two reads per frame). Cancel-safe: a read interrupted at
/// an `.await` loses nothing, the bytes already taken stay buffered here.
#[derive(Debug, Default)]
pub struct MgmtReader {
    buf: Vec<u8>,
    pos: usize,
    frame: AlignedVec,
}

impl MgmtReader {
    /// The size in bytes of the last frame read (what the decoded message may hold on to).
    pub fn last_len(&self) -> usize {
        self.frame.len()
    }
}

impl MgmtReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next [`MgmtCall`]; `Ok(None)` when the stream ended cleanly between frames.
    pub async fn next_call(
        &mut self,
        recv: &mut iroh::endpoint::RecvStream,
    ) -> Result<Option<MgmtCall>, DiscoveryWireError> {
        self.next(recv).await
    }

    /// The next [`MgmtReply`]; `Ok(None)` when the stream ended cleanly between frames.
    pub async fn next_reply(
        &mut self,
        recv: &mut iroh::endpoint::RecvStream,
    ) -> Result<Option<MgmtReply>, DiscoveryWireError> {
        self.next(recv).await
    }

    async fn next<T: Decodable>(
        &mut self,
        recv: &mut iroh::endpoint::RecvStream,
    ) -> Result<Option<T>, DiscoveryWireError> {
        match self.next_frame(recv).await? {
            Some(frame) => decode_framed(frame).map(Some),
            None => Ok(None),
        }
    }

    /// The next frame's archive, copied to an aligned buffer.
    async fn next_frame(
        &mut self,
        recv: &mut iroh::endpoint::RecvStream,
    ) -> Result<Option<&AlignedVec>, DiscoveryWireError> {
        loop {
            if let Some(len) = self.complete_frame()? {
                let start = self.pos + 4;
                self.frame.clear();
                self.frame.extend_from_slice(&self.buf[start..start + len]);
                self.pos = start + len;
                return Ok(Some(&self.frame));
            }
            // Keep only the unread tail before reading more.
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            match recv.read_chunk(READ_CHUNK).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => {
                    return Err(DiscoveryWireError::Io(
                        "the stream ended inside a frame".into(),
                    ));
                }
                Err(e) => return Err(DiscoveryWireError::Io(e.to_string())),
            }
        }
    }

    /// The length of the frame at the read position if all of it is buffered.
    fn complete_frame(&self) -> Result<Option<usize>, DiscoveryWireError> {
        let avail = &self.buf[self.pos..];
        let Some(header) = avail.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(header.try_into().expect("four bytes")) as usize;
        if len > MAX_MGMT_FRAME {
            return Err(DiscoveryWireError::TooLarge(len));
        }
        Ok((avail.len() >= 4 + len).then_some(len))
    }
}

/// Encodes one framed management message (`u32` LE length, rkyv archive).
pub fn encode_mgmt<T: Archivable>(msg: &T) -> Result<Vec<u8>, DiscoveryWireError> {
    encode_framed(msg, MAX_MGMT_FRAME)
}

/// Reads one framed [`MgmtRequest`]; `Ok(None)` when the stream ended cleanly first.
pub async fn read_mgmt_request(
    recv: &mut iroh::endpoint::RecvStream,
) -> Result<Option<MgmtRequest>, DiscoveryWireError> {
    read_mgmt(recv).await
}

/// Reads one framed [`MgmtResponse`]; `Ok(None)` when the stream ended cleanly first.
pub async fn read_mgmt_response(
    recv: &mut iroh::endpoint::RecvStream,
) -> Result<Option<MgmtResponse>, DiscoveryWireError> {
    read_mgmt(recv).await
}

async fn read_mgmt<T: Decodable>(
    recv: &mut iroh::endpoint::RecvStream,
) -> Result<Option<T>, DiscoveryWireError> {
    match read_framed(recv, MAX_MGMT_FRAME).await? {
        Some(bytes) => decode_framed(&bytes).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use rkyv::util::AlignedVec;

    use super::*;

    fn round_trip<T: Archivable>(msg: &T) -> AlignedVec {
        let framed = encode_mgmt(msg).unwrap();
        let mut payload = AlignedVec::new();
        payload.extend_from_slice(&framed[4..]);
        payload
    }

    #[test]
    fn requests_and_responses_round_trip_and_garbage_is_refused() {
        for req in [
            MgmtRequest::Hello {
                version: MGMT_VERSION,
                ticket: Some("irohraft1x".into()),
            },
            MgmtRequest::Propose {
                command: vec![1, 2, 3],
            },
            MgmtRequest::Join {
                id: 4,
                key: [9; 32],
                addrs: vec!["127.0.0.1:1".into()],
                max_lag: 10,
            },
            MgmtRequest::Metrics,
            MgmtRequest::Probe { ready: true },
            MgmtRequest::Backup,
        ] {
            let bytes = round_trip(&req);
            assert_eq!(
                rkyv::from_bytes::<MgmtRequest, rancor::Error>(&bytes).unwrap(),
                req
            );
        }
        for resp in [
            MgmtResponse::Error {
                kind: MgmtErrorKind::Forbidden,
                message: "read-only".into(),
                leader_hint: 2,
            },
            MgmtResponse::Metrics {
                text: "iroh_raft_has_leader 1\n# EOF\n".into(),
            },
            MgmtResponse::BackupStarted {
                index: 9,
                term: 2,
                file_size: 1234,
            },
            MgmtResponse::BackupPiece {
                bytes: vec![5; 1000],
            },
            MgmtResponse::BackupEnd,
            MgmtResponse::Probe(MgmtProbe {
                node_id: 3,
                kind: "readyz".into(),
                checks: vec![
                    MgmtCheck {
                        name: "leader".into(),
                        failure: None,
                    },
                    MgmtCheck {
                        name: "linearizable_read".into(),
                        failure: Some("no quorum".into()),
                    },
                ],
            }),
        ] {
            let bytes = round_trip(&resp);
            assert_eq!(
                rkyv::from_bytes::<MgmtResponse, rancor::Error>(&bytes).unwrap(),
                resp
            );
        }
        let mut garbage = AlignedVec::<16>::new();
        garbage.extend_from_slice(&[0xff; 64]);
        assert!(rkyv::from_bytes::<MgmtRequest, rancor::Error>(&garbage).is_err());
    }

    #[test]
    fn a_batch_frames_calls_back_to_back_and_refuses_an_oversized_one_whole() {
        let mut batch = MgmtBatch::new();
        let calls = [
            MgmtCall {
                id: 1,
                request: MgmtRequest::Status,
                trace: None,
            },
            MgmtCall {
                id: 2,
                request: MgmtRequest::Propose {
                    command: vec![7; 300],
                },
                trace: Some(TraceContext {
                    trace_id: [1; 16],
                    span_id: [2; 8],
                    flags: 1,
                }),
            },
        ];
        for c in &calls {
            batch.push(c).unwrap();
        }
        let before = batch.len();
        let huge = MgmtCall {
            id: 3,
            request: MgmtRequest::Propose {
                command: vec![0; MAX_MGMT_FRAME + 1],
            },
            trace: None,
        };
        assert!(matches!(
            batch.push(&huge),
            Err(DiscoveryWireError::TooLarge(_))
        ));
        assert_eq!(
            batch.len(),
            before,
            "a refused message leaves the batch as it was"
        );
        // Split the batch back into frames.
        let (mut bytes, mut decoded) = (batch.bytes(), Vec::new());
        while !bytes.is_empty() {
            let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
            let mut frame = AlignedVec::<16>::new();
            frame.extend_from_slice(&bytes[4..4 + len]);
            decoded.push(rkyv::from_bytes::<MgmtCall, rancor::Error>(&frame).unwrap());
            bytes = &bytes[4 + len..];
        }
        assert_eq!(decoded, calls);
        batch.clear();
        assert!(batch.is_empty());
    }
}
