//! The in-process transport: nodes of one process reach each other through channels instead of
//! QUIC, for applications' own tests (a cluster in one process, no sockets, no files) and for
//! benchmarks of everything but the network.
//!
//! A [`MemoryNetwork`] maps endpoint ids to the [`RaftProtocol`] of the node that holds the key.
//! A [`MemoryDialer`] opens a link to a node by the id in its address: the bytes a PeerActor
//! writes go, in order, through a bounded channel (a full channel makes the writer wait, as QUIC
//! flow control does) to a task that splits them into frames, validates each one with the same
//! decoder the QUIC path uses, and serves them with [`RaftProtocol::serve_link`]: admission by
//! the membership, the Hello check, a member removed later is cut off with the close code a QUIC
//! connection would carry. Snapshot streams are separate channels, served as QUIC streams are.
//!
//! What it does not model: loss, delay, reordering (see the simulation's network for those) and
//! the per-peer received-bytes metrics, which count QUIC streams only.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use iroh::{EndpointAddr, EndpointId};
use rkyv::util::AlignedVec;
use tokio::sync::{mpsc, oneshot, watch};

use super::{BoxFuture, Dialer, FrameSource, Link, LinkError, RaftProtocol, StreamEnd, StreamSink};
use crate::wire::{CloseCode, Frame, Hello, check_len, decode_aligned, encode_frame};

/// Writes in flight on one link before its writer waits. A write is one PeerActor batch (a Ready
/// round's messages for that peer, or one snapshot chunk).
pub const MEMORY_LINK_QUEUE: usize = 256;

/// The nodes of one process that reach each other in memory. Cheap to clone: clones share the
/// same table.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    nodes: Arc<Mutex<BTreeMap<EndpointId, RaftProtocol>>>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork")
            .field("nodes", &self.table().len())
            .finish()
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<EndpointId, RaftProtocol>> {
        // The lock guards a map insert, remove or lookup: never held across an await.
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the node holding the key `id` reachable: links dialled to `id` are served by
    /// `protocol` (replacing a previous node with that key, as a restarted process would).
    pub fn attach(&self, id: EndpointId, protocol: RaftProtocol) {
        self.table().insert(id, protocol);
    }

    /// The node holding `id` is gone: new dials to it fail (links already open end when the
    /// node stops serving them).
    pub fn detach(&self, id: &EndpointId) {
        self.table().remove(id);
    }

    /// A dialer for the node holding the key `me`.
    pub fn dialer(&self, me: EndpointId) -> MemoryDialer {
        MemoryDialer {
            net: self.clone(),
            me,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn protocol(&self, id: &EndpointId) -> Option<RaftProtocol> {
        self.table().get(id).cloned()
    }
}

/// Dials the nodes of a [`MemoryNetwork`] for the node holding the key `me`.
#[derive(Debug)]
pub struct MemoryDialer {
    net: MemoryNetwork,
    me: EndpointId,
    closed: Arc<AtomicBool>,
}

impl Dialer for MemoryDialer {
    fn dial(
        &self,
        hello: Hello,
        addr: EndpointAddr,
    ) -> BoxFuture<'static, Result<Box<dyn Link>, LinkError>> {
        let me = self.me;
        let target = if self.closed.load(Ordering::Acquire) {
            Err(LinkError::Connect("the node is shutting down".into()))
        } else {
            self.net.protocol(&addr.id).ok_or_else(|| {
                LinkError::Connect(format!(
                    "no node with endpoint id {} on this memory network",
                    addr.id.fmt_short()
                ))
            })
        };
        Box::pin(async move {
            let protocol = target?;
            if let Err(code) = protocol.admission(&me) {
                return Err(LinkError::Refused { code });
            }
            let (tx, rx) = mpsc::channel(MEMORY_LINK_QUEUE);
            let (closed_tx, closed_rx) = watch::channel(None);
            let receiver = protocol.clone();
            tokio::spawn(async move {
                let code = receiver.serve_link(me, &mut ChannelFrames::new(rx)).await;
                // Ignored if the link was dropped meanwhile: nobody waits for its close.
                let _ = closed_tx.send(Some(code));
            });
            let mut link = MemoryLink {
                tx,
                closed: closed_rx,
                protocol,
                me,
            };
            let mut bytes = Vec::new();
            encode_frame(&Frame::Hello(hello), &mut bytes)
                .map_err(|e| LinkError::Connect(e.to_string()))?;
            link.send(&bytes).await?;
            Ok(Box::new(link) as Box<dyn Link>)
        })
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// How the receiving side ended a link: `None` while it runs, then the close code it ended
/// with, if any.
type LinkEnd = watch::Receiver<Option<Option<CloseCode>>>;

#[derive(Debug)]
struct MemoryLink {
    tx: mpsc::Sender<Vec<u8>>,
    closed: LinkEnd,
    protocol: RaftProtocol,
    me: EndpointId,
}

impl MemoryLink {
    /// The error for a write the receiver no longer takes.
    fn ended(&self) -> LinkError {
        match *self.closed.borrow() {
            Some(Some(code)) => LinkError::Refused { code },
            _ => LinkError::Closed("the peer stopped reading".into()),
        }
    }
}

impl Link for MemoryLink {
    fn send<'a>(&'a mut self, frames: &'a [u8]) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            match self.tx.send(frames.to_vec()).await {
                Ok(()) => Ok(()),
                Err(_) => Err(self.ended()),
            }
        })
    }

    fn close(&mut self, code: CloseCode, _: &str) {
        // The receiver reads what was written, then the end of the link; a NoAnswer close is
        // reported to it as a QUIC close would be.
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        if code == CloseCode::NoAnswer {
            let protocol = self.protocol.clone();
            if let Ok(from) = protocol.admission(&self.me) {
                tokio::spawn(async move { protocol.peer_closed(from, Some(code)).await });
            }
        }
    }

    fn open_control_stream(&self) -> BoxFuture<'static, Result<Box<dyn StreamSink>, LinkError>> {
        self.open_stream()
    }

    fn open_stream(&self) -> BoxFuture<'static, Result<Box<dyn StreamSink>, LinkError>> {
        let (protocol, me) = (self.protocol.clone(), self.me);
        let open = self.closed.borrow().is_none() && !self.tx.is_closed();
        Box::pin(async move {
            if !open {
                return Err(LinkError::Closed("link closed".into()));
            }
            let from = protocol
                .admission(&me)
                .map_err(|code| LinkError::Refused { code })?;
            let (tx, rx) = mpsc::channel(MEMORY_LINK_QUEUE);
            let (done_tx, done) = oneshot::channel();
            tokio::spawn(async move {
                let end = protocol
                    .serve_stream(from, &mut ChannelFrames::new(rx))
                    .await;
                let _ = done_tx.send(end);
            });
            Ok(Box::new(MemoryStream { tx, done }) as Box<dyn StreamSink>)
        })
    }

    fn closed(&self) -> BoxFuture<'static, Option<CloseCode>> {
        let mut closed = self.closed.clone();
        Box::pin(async move {
            match closed.wait_for(Option::is_some).await {
                Ok(end) => end.flatten(),
                Err(_) => None,
            }
        })
    }
}

/// An extra stream (a snapshot transfer) on a memory link.
struct MemoryStream {
    tx: mpsc::Sender<Vec<u8>>,
    done: oneshot::Receiver<StreamEnd>,
}

impl StreamSink for MemoryStream {
    fn send<'a>(&'a mut self, frames: &'a [u8]) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            self.tx
                .send(frames.to_vec())
                .await
                .map_err(|_| LinkError::Closed("the peer stopped reading the stream".into()))
        })
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), LinkError>> {
        let MemoryStream { tx, done } = *self;
        drop(tx);
        Box::pin(async move {
            match done.await {
                Ok(StreamEnd::Closed) => Ok(()),
                Ok(StreamEnd::Rejected(e) | StreamEnd::Refused(e)) => {
                    Err(LinkError::Closed(format!("peer stopped the stream: {e}")))
                }
                Err(_) => Err(LinkError::Closed("the peer stopped reading".into())),
            }
        })
    }
}

/// The frames in the byte chunks of a channel: length-prefixed, as on a QUIC stream.
struct ChannelFrames {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl ChannelFrames {
    fn new(rx: mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            rx,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Waits until `n` unread bytes are buffered; false at the end of the stream.
    async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() - self.pos < n {
            let Some(chunk) = self.rx.recv().await else {
                return false;
            };
            if self.pos == self.buf.len() {
                // The common case: whole frames per chunk, nothing left over to keep.
                self.buf = chunk;
                self.pos = 0;
            } else {
                self.buf.drain(..self.pos);
                self.pos = 0;
                self.buf.extend_from_slice(&chunk);
            }
        }
        true
    }

    async fn read(&mut self) -> Result<Option<Frame>, StreamEnd> {
        if !self.fill(4).await {
            if self.pos == self.buf.len() {
                return Ok(None);
            }
            return Err(StreamEnd::Refused(crate::wire::WireError::malformed(
                "stream ended inside a length prefix",
            )));
        }
        let prefix: [u8; 4] = self.buf[self.pos..self.pos + 4]
            .try_into()
            .expect("four bytes");
        let len = check_len(u32::from_le_bytes(prefix))?;
        if !self.fill(4 + len).await {
            return Err(StreamEnd::Refused(crate::wire::WireError::malformed(
                "stream ended inside a frame",
            )));
        }
        let start = self.pos + 4;
        let mut payload = AlignedVec::<16>::with_capacity(len);
        payload.extend_from_slice(&self.buf[start..start + len]);
        self.pos = start + len;
        Ok(Some(decode_aligned(&payload)?))
    }
}

impl FrameSource for ChannelFrames {
    fn next_frame(&mut self) -> BoxFuture<'_, Result<Option<Frame>, StreamEnd>> {
        Box::pin(self.read())
    }
}
