//! The consensus protocol, ALPN [`ALPN`] (`iroh-raft/3`). This module doc is its specification.
//!
//! # Connections
//! Members talk over iroh QUIC connections authenticated by their endpoint keys. A connection
//! carries consensus traffic in one direction only, from the member that dialled it to the one
//! that accepted it: each member dials every peer it has something to send to, so a pair of
//! members normally shares two connections. This keeps reconnection trivial (the sender alone
//! decides when to redial) and there are no dial races to break.
//!
//! The acceptor checks the remote endpoint id against the membership before it reads anything:
//! a non-member is closed with [`CloseCode::NotAMember`], a removed member with
//! [`CloseCode::Removed`] (which tells it to stop). An open connection whose peer is removed
//! later is closed with [`CloseCode::Removed`] as soon as the acceptor applies the removal.
//!
//! # Streams and frames
//! The dialer opens one unidirectional stream and sends frames on it in order. A frame is a
//! little-endian `u32` payload length followed by the payload, an [rkyv] archive of [`Frame`].
//! The length is at most [`MAX_FRAME_SIZE`]; a longer one closes the connection with
//! [`CloseCode::FrameTooLarge`] before any of it is buffered.
//!
//! The first frame of a stream is [`Frame::Hello`]: protocol version, the sender's Raft id, the
//! receiver's, and the sender's incarnation (how many times its data dir started a node). The
//! acceptor checks that the sender id is the one the membership records for the connection's
//! endpoint id and that the receiver id is its own, and asks its RaftActor whether it has seen a
//! higher incarnation from that member: then the sender runs on an old copy of its data dir
//! (it may have forgotten votes and entries it acknowledged) and the connection is closed with
//! [`CloseCode::StaleIncarnation`], which tells the sender to stop. Later frames are one of
//! - [`Frame::Raft`]: a batch of Raft messages; every `from` must be the Hello sender and every
//!   `to` the receiver;
//! - [`Frame::Forward`]: proposals a follower forwards to the leader, each with the follower's
//!   proposal id and a [`ForwardRequest`]: an application command, a membership change, or a
//!   request to hand leadership over;
//! - [`Frame::ForwardReply`]: the leader's [`ForwardOutcome`] per forwarded proposal: the index
//!   and term the entry was given, a transfer started, "not leader" with an optional hint,
//!   "busy" (dropped by raft-rs, never appended), or a typed refusal;
//! - [`Frame::Checkpoint`]: the sender's last applied index and the running hash of every entry
//!   it applied up to there (blake3, chained; see the replica consistency check in the crate
//!   docs), sent to every member every few heartbeats.
//!
//! Entries are `EntryNormal` or `EntryConfChangeV2`; a configuration change must be a flat
//! ConfChangeV2 (only varint and length-delimited fields, no groups), checked before it reaches
//! raft-rs (see below).
//!
//! # Snapshot streams
//! When a follower needs entries the leader no longer has, the leader opens another
//! unidirectional stream on the same connection, so heartbeats and appends to everyone (that
//! follower included) never wait behind snapshot bytes. After the Hello it carries
//! [`Frame::SnapshotHeader`] (the `MsgSnapshot` with the snapshot's index, term and
//! configuration), then [`Frame::SnapshotChunk`]s of at most 1 MiB, then [`Frame::SnapshotEnd`]
//! with the total size and CRC-32, and finishes. The receiver stores chunks as they arrive (never
//! the whole snapshot in memory), checks size and checksum, and only then hands the message to
//! Raft; a mismatch stops the stream with [`CloseCode::MalformedFrame`] (the connection stays up)
//! and the leader retries later. The size need not be known in advance.
//!
//! The receiver validates every frame in full (rkyv's bytecheck, then message types, entry
//! types, sender and receiver ids) before anything reaches the Raft core. A frame that fails
//! closes the connection with the matching [`CloseCode`] and a log line; the node keeps running
//! and the peer may dial again.
//!
//! # Why rkyv and not raft-rs's protobuf
//! raft-rs 0.7 uses protobuf 2.x, which carries RUSTSEC-2024-0437 (unbounded recursion when
//! parsing untrusted input). Bytes from the network are therefore never parsed as protobuf: they
//! are validated rkyv archives, converted field by field into raft-rs's types.
//!
//! # Discovery protocol
//! ALPN [`DISCOVERY_ALPN`] (`iroh-raft-discovery/0`): how a fresh node presents a join ticket to
//! a member and is brought into the cluster.
//!
//! One bidirectional stream per join, opened by the newcomer. Messages are framed like the
//! consensus protocol (`u32` little-endian length, then an rkyv archive), at most
//! [`MAX_DISCOVERY_FRAME`] bytes each, validated with bytecheck.
//!
//! 1. newcomer → member: [`DiscoveryRequest::Join`] with the protocol version, the printed
//!    ticket, the newcomer's direct addresses (its endpoint id is the connection's authenticated
//!    one) and whether it wants to stay a learner.
//! 2. member: checks the ticket (signature, cluster id, issuer still a member, not expired, role
//!    `join` or `admin`), picks the lowest never-used Raft id (or the newcomer's existing id, if
//!    its key is already a member: a retried join is idempotent), adds it as a learner through
//!    the log, and answers [`DiscoveryResponse::Accepted`] with that id and the membership.
//! 3. newcomer: starts its node with that id and membership (so it admits the leader), and keeps
//!    reading the stream.
//! 4. member: waits until the learner has caught up, promotes it (unless it asked to stay a
//!    learner) and answers [`DiscoveryResponse::Joined`].
//!
//! Any refusal is [`DiscoveryResponse::Refused`] with a [`RefusalKind`] and a message for the
//! newcomer to print; the member finishes the stream and the connection closes.
//!
//! # Management protocol
//! ALPN [`MGMT_ALPN`] (`iroh-raft-mgmt/0`): status, health, membership, leadership, snapshots,
//! application commands, linearizable reads and events, for operators and remote applications.
//! Messages are framed like the others (`u32` little-endian length, rkyv archive), at most
//! [`MAX_MGMT_FRAME`] bytes.
//!
//! - Requests are pipelined on lanes: every bidirectional stream after the first is a lane on
//!   which the client sends [`MgmtCall`]s (an id of its choice, unique among its calls in flight
//!   on that lane, never 0, and a [`MgmtRequest`]) without waiting, many per write if it likes.
//!   The node answers each with a [`MgmtReply`] carrying the same id and the leader it knows
//!   of (clients move to the leader when the node they talk to names another one), in
//!   completion order, not request order. A [`MgmtRequest::Subscribe`] gets
//!   [`MgmtResponse::Subscribed`], then [`MgmtResponse::Event`] / [`MgmtResponse::Missed`]
//!   replies until the client stops the stream (clients give a subscription a lane of its own).
//!   A [`MgmtRequest::Watch`] (an application query, e.g. the KV store's keys from a revision)
//!   gets [`MgmtResponse::Watching`], then [`MgmtResponse::Changes`] whenever the node applies
//!   entries that match, on a lane of its own too; it counts as a subscription.
//!   A [`MgmtRequest::Backup`] (admin only) gets [`MgmtResponse::BackupStarted`], the backup
//!   file in [`MgmtResponse::BackupPiece`]s and [`MgmtResponse::BackupEnd`], on a lane of its
//!   own too; the client checks the file's hash itself. When the client finishes its side
//!   the node answers what it has read, then finishes too. A lane whose framing breaks (a frame
//!   that does not decode, a length over [`MAX_MGMT_FRAME`], a stream ending inside a frame, a
//!   call with id 0) gets a reply with id 0 ([`MgmtErrorKind::Malformed`]); the node stops
//!   reading it (STOP_SENDING), answers the calls it had already read, and finishes it. The
//!   connection and its other lanes are unaffected.
//! - Limits per connection: 64 lanes at once (another one gets a reply with id 0,
//!   [`MgmtErrorKind::Refused`], having read nothing from it), 32 subscriptions (another one is
//!   refused), 1,024 calls in progress per lane and 64 MiB of requests in progress over all
//!   lanes; past the last two the node stops reading and QUIC flow control pushes back.
//! - Why lanes rather than a stream per request: batching many calls and replies per write, and
//!   waking one task per lane instead of one per call, took the remote path from 42% to ~65% of
//!   the library's throughput at 256 concurrent clients (see the benchmark in the README).
//! - The first stream of a connection carries [`MgmtRequest::Hello`] (version, optional ticket)
//!   and gets [`MgmtResponse::Welcome`] with the granted [`MgmtRole`]: members are admins of each
//!   other, an endpoint on the node's allowlist gets its configured role, anyone else needs an
//!   admin or read-only ticket. A refused client's connection is closed with
//!   [`CloseCode::NotAMember`] before any request is served. One key may hold 16 admitted
//!   connections to a node at once; another is closed with [`CloseCode::TooManyConnections`].
//! - Read-only clients get [`MgmtErrorKind::Forbidden`] for membership changes, transfers,
//!   snapshots and proposals.
//!
//! # Versioning
//! The ALPN names the major version: an incompatible change gets a new ALPN (`iroh-raft/1` → `/2`), so an
//! old peer fails at the handshake instead of misreading frames. [`Hello::version`] names the
//! minor version within the ALPN; a receiver refuses a version it does not know with
//! [`CloseCode::VersionMismatch`].

mod codec;
mod convert;
mod discovery;
mod frame;
mod mgmt;

pub use codec::{WireError, decode_frame, encode_frame};
pub(crate) use codec::{check_len, decode_aligned};
#[cfg(test)]
pub(crate) use convert::is_plain_conf_change;
pub(crate) use convert::message_to_wire as convert_outgoing;
pub use convert::{InboundPayload, validate_frame, validate_snapshot_header};
pub use discovery::{
    Archivable, DISCOVERY_ALPN, DISCOVERY_VERSION, DiscoveryMember, DiscoveryRequest,
    DiscoveryResponse, DiscoveryWireError, MAX_DISCOVERY_FRAME, RefusalKind, encode_discovery,
    read_request, read_response,
};
pub use frame::{
    ForwardOutcome, ForwardReply, ForwardRequest, ForwardedProposal, Frame, Hello, TransferRefusal,
    WireEntry, WireMessage, WireSnapshotMeta,
};
pub use mgmt::{
    MAX_MGMT_FRAME, MGMT_ALPN, MGMT_VERSION, MgmtBatch, MgmtCall, MgmtCheck, MgmtErrorKind,
    MgmtHealth, MgmtMember, MgmtProbe, MgmtReader, MgmtReply, MgmtRequest, MgmtResponse, MgmtRole,
    MgmtStatus, encode_mgmt, read_mgmt_request, read_mgmt_response,
};

/// ALPN of the consensus protocol. `/1` since the Hello carries the sender's incarnation and
/// members exchange applied-entry checkpoints (storage format 3); `/2` since forwards and their
/// replies are typed enums ([`ForwardRequest`], [`ForwardOutcome`]) instead of kind bytes, zero
/// hints and postcard-encoded refusals.
pub const ALPN: &[u8] = b"iroh-raft/3";

/// Minor protocol version carried in [`Hello`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame payload accepted (16 MiB). It must hold one append message of
/// `max_append_bytes` (1 MiB by default) plus an entry of up to [`MAX_COMMAND_SIZE`]; anything
/// bigger is refused before it is buffered, so a peer cannot make us allocate more.
pub const MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// Largest encoded command a proposal may carry (4 MiB): it must fit in one frame with room for
/// the rest of an append message.
pub const MAX_COMMAND_SIZE: usize = 4 * 1024 * 1024;

/// Application close codes of the consensus protocol, sent in QUIC `CONNECTION_CLOSE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
#[non_exhaustive]
pub enum CloseCode {
    /// Orderly close (a peer removed, a connection replaced).
    Normal = 0,
    /// The node is shutting down.
    ShuttingDown = 1,
    /// The remote endpoint id is not a member of this cluster.
    NotAMember = 2,
    /// A frame did not decode or failed validation.
    MalformedFrame = 3,
    /// A frame declared a length above [`MAX_FRAME_SIZE`].
    FrameTooLarge = 4,
    /// The Hello named another sender or receiver, or a frame claimed another sender.
    ProtocolViolation = 5,
    /// The Hello carried a protocol version this node does not speak.
    VersionMismatch = 6,
    /// The remote endpoint belonged to a member that was removed: refused for good. A node
    /// that receives this stops.
    Removed = 7,
    /// The management protocol: this endpoint already has as many connections to this node as
    /// one key may hold. Another member may accept it.
    TooManyConnections = 8,
    /// The Hello carried an incarnation below one this node has already seen from the same
    /// member: the sender runs on an old copy of its data dir. A node that receives this stops.
    StaleIncarnation = 9,
    /// The sender heard nothing from this node for an election timeout and dials afresh. Its
    /// own connection was fine (this close arrived), so the dead one is likely the receiver's
    /// connection to it: the receiver dials afresh too.
    NoAnswer = 10,
}

impl CloseCode {
    /// The code as a QUIC varint.
    pub fn to_varint(self) -> iroh::endpoint::VarInt {
        iroh::endpoint::VarInt::from_u32(self as u32)
    }

    /// The code a received close carried, if it is one of ours.
    pub fn from_u64(code: u64) -> Option<Self> {
        Some(match code {
            0 => CloseCode::Normal,
            1 => CloseCode::ShuttingDown,
            2 => CloseCode::NotAMember,
            3 => CloseCode::MalformedFrame,
            4 => CloseCode::FrameTooLarge,
            5 => CloseCode::ProtocolViolation,
            6 => CloseCode::VersionMismatch,
            7 => CloseCode::Removed,
            8 => CloseCode::TooManyConnections,
            9 => CloseCode::StaleIncarnation,
            10 => CloseCode::NoAnswer,
            _ => return None,
        })
    }
}

/// `addr` with each of `relays` added to it (a member of a cluster with relays is reachable
/// through them as well as at its direct addresses). An address that names a relay of its own
/// keeps it.
pub fn with_relays(addr: iroh::EndpointAddr, relays: &[iroh::RelayUrl]) -> iroh::EndpointAddr {
    relays.iter().fold(addr, |a, r| {
        if a.relay_urls().any(|own| own == r) {
            a
        } else {
            a.with_relay_url(r.clone())
        }
    })
}

/// An endpoint address from its key bytes and direct addresses written as strings (the wire's
/// form in the management and discovery protocols); addresses that do not parse are skipped,
/// an invalid key gives `None`.
pub fn endpoint_addr_from_wire(key: &[u8; 32], addrs: &[String]) -> Option<iroh::EndpointAddr> {
    let key = iroh::EndpointId::from_bytes(key).ok()?;
    Some(
        addrs
            .iter()
            .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
            .fold(iroh::EndpointAddr::new(key), |a, ip| a.with_ip_addr(ip)),
    )
}
