//! [`RaftProtocol`]: accepts consensus connections from members and feeds their streams to the
//! RaftActor: the consensus stream's frames as [`Inbound`] messages, a snapshot stream's chunks
//! to the StorageActor and, once checksummed, a [`SnapshotReceived`] to the RaftActor.

use std::sync::Arc;

use iroh::{
    EndpointId,
    endpoint::{Connection, ReadExactError, RecvStream},
    protocol::{AcceptError, ProtocolHandler},
};
use iroh_metrics::Counter;
use kameo::actor::{ActorRef, Recipient, ReplyRecipient};
use raft::eraftpb::Message as RaftMessage;
use rkyv::util::AlignedVec;
use tokio::{sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{BoxFuture, transport::close_code};
use crate::{
    membership::{Admission, Membership},
    metrics::{NodeMetrics, PeerLabel},
    raft_actor::{NotHeard, PeerHello},
    storage::{DiscardSnapshot, NewSnapshotId, SnapshotRecord, StorageActor, WriteChunk},
    types::NodeId,
    wire::{
        CloseCode, Frame, InboundPayload, PROTOCOL_VERSION, WireError, WireMessage, check_len,
        decode_aligned, validate_frame, validate_snapshot_header,
    },
};

/// A validated frame from a member, for the RaftActor.
#[derive(Debug)]
pub struct Inbound {
    /// The authenticated sender.
    pub from: NodeId,
    /// What it sent.
    pub payload: InboundPayload,
}

/// A snapshot a leader streamed to us was stored and checksummed; `msg` is its `MsgSnapshot`.
#[derive(Debug)]
pub struct SnapshotReceived {
    /// The leader that sent it.
    pub from: NodeId,
    /// The Raft message carrying its metadata.
    pub msg: RaftMessage,
    /// Where its bytes are.
    pub record: SnapshotRecord,
}

/// The iroh protocol handler for [`crate::wire::ALPN`]. Cheap to clone; mount it on a `Router`.
#[derive(Debug, Clone)]
pub struct RaftProtocol {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftProtocol")
            .field("me", &self.me)
            .finish()
    }
}

struct Inner {
    me: NodeId,
    inbound: Recipient<Inbound>,
    hello: ReplyRecipient<PeerHello, bool>,
    not_heard: Recipient<NotHeard>,
    membership: watch::Receiver<Arc<Membership>>,
    snapshots: Recipient<SnapshotReceived>,
    storage: ActorRef<StorageActor>,
    shutdown: CancellationToken,
    metrics: Arc<NodeMetrics>,
}

/// How reading one stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// The peer finished the stream or the connection went away.
    Closed,
    /// The stream's content was refused (a snapshot that does not match its checksum): the
    /// stream is stopped with the error's code, the connection stays up.
    Rejected(WireError),
    /// The peer broke the protocol: the whole connection is closed with the error's code.
    Refused(WireError),
}

impl From<WireError> for StreamEnd {
    fn from(e: WireError) -> Self {
        StreamEnd::Refused(e)
    }
}

impl RaftProtocol {
    /// A handler for node `me`: frames go to `inbound`, the membership the RaftActor publishes
    /// decides who may connect (and closes connections of members removed later), and received
    /// snapshots are stored through `storage` and announced to `snapshots`.
    pub fn new(
        me: NodeId,
        (inbound, hello, not_heard): (
            Recipient<Inbound>,
            ReplyRecipient<PeerHello, bool>,
            Recipient<NotHeard>,
        ),
        membership: watch::Receiver<Arc<Membership>>,
        snapshots: Recipient<SnapshotReceived>,
        (storage, metrics): (ActorRef<StorageActor>, Arc<NodeMetrics>),
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                me,
                inbound,
                hello,
                not_heard,
                membership,
                snapshots,
                storage,
                shutdown: CancellationToken::new(),
                metrics,
            }),
        }
    }

    /// Stops serving: open connections are closed with [`CloseCode::ShuttingDown`].
    pub fn close(&self) {
        self.inner.shutdown.cancel();
    }

    /// Closes `conn` unless `remote` is the member `expected` (any member when `None`); returns
    /// the member's id.
    fn admit(
        conn: &Connection,
        membership: &Membership,
        remote: &EndpointId,
        expected: Option<NodeId>,
    ) -> Result<NodeId, &'static str> {
        match membership.admission(remote) {
            Admission::Member(id) if expected.is_none_or(|e| e == id) => Ok(id),
            Admission::Removed(id) => {
                warn!(endpoint = %remote.fmt_short(), node = id, "refused connection from a removed member");
                conn.close(CloseCode::Removed.to_varint(), b"removed from this cluster");
                Err("removed")
            }
            _ => {
                warn!(endpoint = %remote.fmt_short(), "refused connection from a non-member");
                conn.close(
                    CloseCode::NotAMember.to_varint(),
                    b"not a member of this cluster",
                );
                Err("not_a_member")
            }
        }
    }

    async fn serve(&self, conn: &Connection) {
        let remote = conn.remote_id();
        let mut membership = self.inner.membership.clone();
        let admitted = Self::admit(conn, &membership.borrow_and_update(), &remote, None);
        let from = match admitted {
            Ok(from) => from,
            Err(reason) => return self.inner.metrics.mgmt.refused("consensus", reason),
        };
        debug!(peer = from, "accepted consensus connection");
        // Each stream is read by its own task: a snapshot transfer never holds up the
        // consensus stream. Dropping the set (when this returns) stops them all.
        let mut readers = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                Some(done) = readers.join_next() => {
                    if let Ok(StreamEnd::Refused(e)) = done {
                        warn!(peer = from, error = %e, "closing connection: protocol error");
                        conn.close(e.close_code().to_varint(), e.to_string().as_bytes());
                        return;
                    }
                }
                changed = membership.changed() => {
                    // The node stopped (sender gone) or the membership changed: a member that
                    // was removed meanwhile is disconnected now, not at its next dial.
                    if changed.is_err() {
                        return;
                    }
                    let current = membership.borrow_and_update().clone();
                    if Self::admit(conn, &current, &remote, Some(from)).is_err() {
                        return;
                    }
                }
                stream = conn.accept_uni() => {
                    let Ok(recv) = stream else {
                        self.peer_closed(from, close_code(conn)).await;
                        return;
                    };
                    let this = self.clone();
                    readers.spawn(async move { this.read_stream(from, recv).await });
                }
            }
        }
    }

    /// Whether the endpoint `remote` may open a consensus link to this node now: its member id,
    /// or the close code a QUIC connection from it would be closed with. For transports that
    /// carry no iroh connection (the in-memory network).
    pub fn admission(&self, remote: &EndpointId) -> Result<NodeId, CloseCode> {
        if self.inner.shutdown.is_cancelled() {
            return Err(CloseCode::ShuttingDown);
        }
        match self.inner.membership.borrow().admission(remote) {
            Admission::Member(id) => Ok(id),
            Admission::Removed(_) => Err(CloseCode::Removed),
            _ => Err(CloseCode::NotAMember),
        }
    }

    /// Serves one link from the endpoint `remote` (a member, see [`Self::admission`]) whose
    /// frames come from `source`, as the QUIC path serves a connection: until the link ends,
    /// the node shuts down, or `remote` stops being a member. Returns the close code a QUIC
    /// connection would have been closed with, if any.
    pub async fn serve_link(
        &self,
        remote: EndpointId,
        source: &mut dyn FrameSource,
    ) -> Option<CloseCode> {
        let from = match self.admission(&remote) {
            Ok(from) => from,
            Err(code) => return Some(code),
        };
        let mut membership = self.inner.membership.clone();
        membership.mark_unchanged();
        let serve = self.serve_stream(from, source);
        tokio::pin!(serve);
        loop {
            tokio::select! {
                biased;
                _ = self.inner.shutdown.cancelled() => return Some(CloseCode::ShuttingDown),
                end = &mut serve => {
                    return match end {
                        StreamEnd::Refused(e) | StreamEnd::Rejected(e) => Some(e.close_code()),
                        StreamEnd::Closed => None,
                    };
                }
                changed = membership.changed() => {
                    if changed.is_err() {
                        return Some(CloseCode::ShuttingDown);
                    }
                    if let Err(code) = self.admission(&remote) {
                        return Some(code);
                    }
                }
            }
        }
    }

    /// Member `from` closed its connection to us, with `code` if it was one of ours. When it did
    /// so because it heard nothing from us, our connection to it may be dead: the RaftActor
    /// redials it. The QUIC accept loop calls this; a simulation calls it from its own network.
    pub async fn peer_closed(&self, from: NodeId, code: Option<CloseCode>) {
        if code == Some(CloseCode::NoAnswer) {
            let _ = self.inner.not_heard.tell(NotHeard { from }).await;
        }
    }

    async fn read_stream(&self, from: NodeId, mut recv: RecvStream) -> StreamEnd {
        let label = PeerLabel { peer: from };
        let peers = &self.inner.metrics.peers;
        let mut frames = QuicFrames {
            recv: &mut recv,
            bytes: peers.peer_received_bytes.get_or_create(&label),
            frames: peers.peer_received_frames.get_or_create(&label),
        };
        let end = self.serve_stream(from, &mut frames).await;
        if let StreamEnd::Rejected(e) = &end {
            warn!(peer = from, error = %e, "stopping stream");
            let _ = recv.stop(e.close_code().to_varint());
        }
        end
    }

    /// Reads one stream from member `from` (already admitted) to its end: a consensus stream's
    /// frames go to the RaftActor, a snapshot stream's chunks to storage. The QUIC accept loop
    /// calls this for every stream; a simulation calls it with frames from its own network.
    pub async fn serve_stream(&self, from: NodeId, source: &mut dyn FrameSource) -> StreamEnd {
        let me = self.inner.me;
        match source.next_frame().await {
            Ok(Some(Frame::Hello(h))) => {
                if h.version != PROTOCOL_VERSION {
                    return StreamEnd::Refused(WireError::VersionMismatch {
                        theirs: h.version,
                        ours: PROTOCOL_VERSION,
                    });
                }
                if h.from != from || h.to != me {
                    return StreamEnd::Refused(WireError::WrongParty {
                        claimed: h.from,
                        actual: from,
                        to: h.to,
                        me,
                    });
                }
                let hello = PeerHello {
                    from,
                    incarnation: h.incarnation,
                };
                match self.inner.hello.ask(hello).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return StreamEnd::Refused(WireError::StaleIncarnation {
                            from,
                            incarnation: h.incarnation,
                        });
                    }
                    // The RaftActor is gone (stopping or restarting): nothing to serve.
                    Err(_) => return StreamEnd::Closed,
                }
            }
            Ok(Some(_)) => return StreamEnd::Refused(WireError::BadHello),
            Ok(None) => return StreamEnd::Closed,
            Err(end) => return end,
        }
        let mut first = match source.next_frame().await {
            Ok(Some(Frame::SnapshotHeader(header))) => {
                return self.read_snapshot(from, header, source).await;
            }
            Ok(Some(frame)) => Some(frame),
            Ok(None) => return StreamEnd::Closed,
            Err(end) => return end,
        };
        loop {
            let frame = match first.take() {
                Some(frame) => frame,
                None => match source.next_frame().await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return StreamEnd::Closed,
                    Err(end) => return end,
                },
            };
            let payload = match validate_frame(frame, from, me) {
                Ok(payload) => payload,
                Err(e) => return StreamEnd::Refused(e),
            };
            // Waiting for mailbox room is the backpressure: QUIC flow control then slows the peer.
            if self
                .inner
                .inbound
                .tell(Inbound { from, payload })
                .await
                .is_err()
            {
                return StreamEnd::Closed;
            }
        }
    }

    /// Stores a snapshot stream's chunks as they arrive; announces the snapshot once its size
    /// and checksum match.
    async fn read_snapshot(
        &self,
        from: NodeId,
        header: Box<WireMessage>,
        source: &mut dyn FrameSource,
    ) -> StreamEnd {
        let msg = match validate_snapshot_header(header, from, self.inner.me) {
            Ok(msg) => msg,
            Err(e) => return StreamEnd::Refused(e),
        };
        let storage = &self.inner.storage;
        let Ok(id) = storage.ask(NewSnapshotId).await else {
            return StreamEnd::Closed;
        };
        let end = self.store_chunks(id, source).await;
        match end {
            Ok((size, chunks, checksum)) => {
                let meta = msg.get_snapshot().get_metadata();
                let record = SnapshotRecord {
                    id,
                    index: meta.index,
                    term: meta.term,
                    conf_state: meta.get_conf_state().clone(),
                    size,
                    chunks,
                    checksum,
                };
                debug!(
                    peer = from,
                    index = record.index,
                    bytes = size,
                    "snapshot received"
                );
                if self
                    .inner
                    .snapshots
                    .tell(SnapshotReceived { from, msg, record })
                    .await
                    .is_err()
                {
                    let _ = storage.tell(DiscardSnapshot { id }).await;
                }
                StreamEnd::Closed
            }
            Err(end) => {
                let _ = storage.tell(DiscardSnapshot { id }).await;
                end
            }
        }
    }

    async fn store_chunks(
        &self,
        id: u64,
        source: &mut dyn FrameSource,
    ) -> Result<(u64, u32, u32), StreamEnd> {
        let mut hasher = crc32fast::Hasher::new();
        let (mut size, mut no) = (0u64, 0u32);
        loop {
            match source.next_frame().await? {
                Some(Frame::SnapshotChunk(bytes)) => {
                    hasher.update(&bytes);
                    size += bytes.len() as u64;
                    let stored = self.inner.storage.ask(WriteChunk { id, no, bytes }).await;
                    if stored.is_err() {
                        return Err(StreamEnd::Closed);
                    }
                    no += 1;
                }
                Some(Frame::SnapshotEnd {
                    size: sent,
                    checksum,
                }) => {
                    let ours = hasher.finalize();
                    if sent != size || checksum != ours {
                        return Err(StreamEnd::Rejected(WireError::malformed(format!(
                            "snapshot of {size} bytes with crc {ours:08x} does not match the sender's {sent} bytes, crc {checksum:08x}"
                        ))));
                    }
                    return Ok((size, no, checksum));
                }
                Some(_) => {
                    return Err(StreamEnd::Refused(WireError::malformed(
                        "unexpected frame in a snapshot stream",
                    )));
                }
                None => return Err(StreamEnd::Closed),
            }
        }
    }
}

/// Where a stream's frames come from: a QUIC receive stream in production, the simulation's
/// network in tests.
pub trait FrameSource: Send {
    /// The next frame, validated by rkyv; `Ok(None)` at a clean end of the stream.
    fn next_frame(&mut self) -> BoxFuture<'_, Result<Option<Frame>, StreamEnd>>;
}

/// A QUIC stream's frames, counted into the sending peer's received bytes and frames.
struct QuicFrames<'a> {
    recv: &'a mut RecvStream,
    bytes: Arc<Counter>,
    frames: Arc<Counter>,
}

impl FrameSource for QuicFrames<'_> {
    fn next_frame(&mut self) -> BoxFuture<'_, Result<Option<Frame>, StreamEnd>> {
        Box::pin(async move {
            let (frame, len) = read_frame(self.recv).await?;
            if frame.is_some() {
                self.bytes.inc_by(len as u64 + 4);
                self.frames.inc();
            }
            Ok(frame)
        })
    }
}

/// Reads one frame and its length; `Ok((None, 0))` at a clean end of stream.
async fn read_frame(recv: &mut RecvStream) -> Result<(Option<Frame>, usize), StreamEnd> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok((None, 0)),
        Err(ReadExactError::FinishedEarly(_)) => {
            return Err(StreamEnd::Refused(WireError::malformed(
                "stream ended inside a length prefix",
            )));
        }
        Err(ReadExactError::ReadError(_)) => return Err(StreamEnd::Closed),
    }
    let len = check_len(u32::from_le_bytes(len))?;
    let mut payload = AlignedVec::<16>::with_capacity(len);
    payload.resize(len, 0);
    match recv.read_exact(&mut payload).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(_)) => {
            return Err(StreamEnd::Refused(WireError::malformed(
                "stream ended inside a frame",
            )));
        }
        Err(ReadExactError::ReadError(_)) => return Err(StreamEnd::Closed),
    }
    Ok((Some(decode_aligned(&payload)?), len))
}

impl ProtocolHandler for RaftProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        tokio::select! {
            biased;
            _ = self.inner.shutdown.cancelled() => {
                conn.close(CloseCode::ShuttingDown.to_varint(), b"node is shutting down");
            }
            _ = self.serve(&conn) => {}
        }
        Ok(())
    }

    async fn shutdown(&self) {
        self.close();
    }
}
