//! [`RaftProtocol`]: accepts consensus connections from members and feeds their frames to the
//! RaftActor.

use std::sync::Arc;

use iroh::{
    EndpointId,
    endpoint::{Connection, ReadExactError, RecvStream},
    protocol::{AcceptError, ProtocolHandler},
};
use kameo::{
    actor::{Recipient, ReplyRecipient},
    error::Infallible,
};
use rkyv::util::AlignedVec;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    types::NodeId,
    wire::{
        CloseCode, Frame, InboundPayload, PROTOCOL_VERSION, WireError, check_len, decode_aligned,
        validate_frame,
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

/// Asks the RaftActor which member (if any) owns an endpoint id.
#[derive(Debug, Clone, Copy)]
pub struct Admit {
    /// The remote endpoint id of an incoming connection.
    pub endpoint: EndpointId,
}

/// The iroh protocol handler for [`crate::wire::ALPN`]. Cheap to clone; mount it on a `Router`.
#[derive(Debug, Clone)]
pub struct RaftProtocol {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    me: NodeId,
    inbound: Recipient<Inbound>,
    admit: ReplyRecipient<Admit, Option<NodeId>, Infallible>,
    shutdown: CancellationToken,
}

enum StreamEnd {
    /// The peer finished the stream or the connection went away.
    Closed,
    /// The peer broke the protocol.
    Refused(WireError),
}

impl RaftProtocol {
    /// A handler for node `me` feeding `inbound` and asking `admit` about each connection.
    pub fn new(
        me: NodeId,
        inbound: Recipient<Inbound>,
        admit: ReplyRecipient<Admit, Option<NodeId>, Infallible>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                me,
                inbound,
                admit,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Stops serving: open connections are closed with [`CloseCode::ShuttingDown`].
    pub fn close(&self) {
        self.inner.shutdown.cancel();
    }

    async fn serve(&self, conn: &Connection) {
        let remote = conn.remote_id();
        let member = match self.inner.admit.ask(Admit { endpoint: remote }).await {
            Ok(member) => member,
            Err(_) => {
                conn.close(
                    CloseCode::ShuttingDown.to_varint(),
                    b"node is shutting down",
                );
                return;
            }
        };
        let Some(from) = member else {
            warn!(endpoint = %remote.fmt_short(), "refused connection from a non-member");
            conn.close(
                CloseCode::NotAMember.to_varint(),
                b"not a member of this cluster",
            );
            return;
        };
        debug!(peer = from, "accepted consensus connection");
        loop {
            let recv = match conn.accept_uni().await {
                Ok(recv) => recv,
                Err(_) => return,
            };
            match self.read_stream(from, recv).await {
                StreamEnd::Closed => {}
                StreamEnd::Refused(e) => {
                    warn!(peer = from, error = %e, "closing connection: protocol error");
                    conn.close(e.close_code().to_varint(), e.to_string().as_bytes());
                    return;
                }
            }
        }
    }

    async fn read_stream(&self, from: NodeId, mut recv: RecvStream) -> StreamEnd {
        let me = self.inner.me;
        match read_frame(&mut recv).await {
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
            }
            Ok(Some(_)) => return StreamEnd::Refused(WireError::BadHello),
            Ok(None) => return StreamEnd::Closed,
            Err(end) => return end,
        }
        loop {
            let frame = match read_frame(&mut recv).await {
                Ok(Some(frame)) => frame,
                Ok(None) => return StreamEnd::Closed,
                Err(end) => return end,
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
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
async fn read_frame(recv: &mut RecvStream) -> Result<Option<Frame>, StreamEnd> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(_)) => {
            return Err(StreamEnd::Refused(WireError::malformed(
                "stream ended inside a length prefix",
            )));
        }
        Err(ReadExactError::ReadError(_)) => return Err(StreamEnd::Closed),
    }
    let len = check_len(u32::from_le_bytes(len)).map_err(StreamEnd::Refused)?;
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
    decode_aligned(&payload)
        .map(Some)
        .map_err(StreamEnd::Refused)
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
