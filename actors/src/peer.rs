//! Connections between members.
//!
//! - [`PeerActor`]: one per peer this node sends to. It owns the outgoing connection (dialled on
//!   demand, redialled with exponential backoff), encodes the RaftActor's outbound batches into
//!   frames and writes them. Its mailbox is small and the RaftActor only ever `try_send`s to it:
//!   a dead or slow peer costs dropped messages (Raft retransmits), never a blocked leader.
//! - [`RaftProtocol`]: the iroh `ProtocolHandler` for [`crate::wire::ALPN`]. It admits only
//!   members (asking the RaftActor), reads and validates frames, and forwards them to the
//!   RaftActor with backpressure (a reader waits for mailbox room, so QUIC flow control slows
//!   the sender).
//! - Snapshot transfers: when the RaftActor hands a PeerActor a [`SnapshotOffer`], the PeerActor
//!   starts a task that opens a second stream on the same connection and streams the snapshot's
//!   chunks from redb, one at a time; the consensus stream keeps flowing meanwhile, and the
//!   outcome goes back to the RaftActor as [`SnapshotSent`]. The receiving handler stores chunks
//!   through the StorageActor as they arrive and reports [`SnapshotReceived`] once the checksum
//!   matched.
//! - [`Dialer`] / [`Link`]: the small interface through which a PeerActor reaches its peer.
//!   [`IrohDialer`] is the production implementation; [`MemoryNetwork`] connects the nodes of
//!   one process through channels (tests, benchmarks); the simulation supplies its own lossy
//!   network.

mod actor;
pub(crate) mod control;
mod handler;
mod memory;
mod transport;

pub use actor::{
    MAX_BACKOFF, MIN_BACKOFF, Outbound, PeerActor, PeerArgs, PeerUnreachable, Reconnect,
    SnapshotOffer, SnapshotSent, StopPeer,
};
pub use control::CONTROL_QUEUE;
pub use handler::{FrameSource, Inbound, RaftProtocol, SnapshotReceived, StreamEnd};
pub use memory::{MEMORY_LINK_QUEUE, MemoryDialer, MemoryNetwork};
pub use transport::{BoxFuture, Dialer, IrohDialer, Link, LinkError, LinkPath, StreamSink};

/// Outbound batches a PeerActor may have queued before new ones are dropped. Each batch is one
/// Ready round's worth of messages for that peer, so this is far more than a healthy peer needs.
pub const PEER_MAILBOX: usize = 128;
