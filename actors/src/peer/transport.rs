//! The seam between a PeerActor and the network: [`Dialer`] opens a [`Link`], a link carries
//! encoded frames. [`IrohDialer`] implements it over iroh QUIC.

use std::{
    fmt::Debug,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh::{
    Endpoint, EndpointAddr,
    endpoint::{Connection, ConnectionError, SendStream},
};

use crate::wire::{ALPN, CloseCode, Frame, Hello, encode_frame};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a link could not be opened or used.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Dialling failed (unreachable, refused, handshake failed, timed out).
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection or stream closed under us.
    #[error("link closed: {0}")]
    Closed(String),
    /// The peer closed the connection with one of our close codes (it refused us).
    #[error("peer closed the connection: {code:?}")]
    Refused {
        /// The code it sent.
        code: CloseCode,
    },
}

/// The close code the peer closed `conn` with, if it did so with one of ours.
pub(crate) fn close_code(conn: &Connection) -> Option<CloseCode> {
    match conn.close_reason()? {
        ConnectionError::ApplicationClosed(c) => CloseCode::from_u64(c.error_code.into_inner()),
        _ => None,
    }
}

/// A failed write on `conn`: a refusal if the peer closed it with a code, else a plain close.
fn write_error(conn: &Connection, e: impl std::fmt::Display) -> LinkError {
    match close_code(conn) {
        Some(code) => LinkError::Refused { code },
        None => LinkError::Closed(e.to_string()),
    }
}

/// Opens outgoing links to peers.
pub trait Dialer: Send + Sync + Debug + 'static {
    /// Dials `hello.to` at `addr` and opens its consensus stream, starting it with `hello`.
    fn dial(
        &self,
        hello: Hello,
        addr: EndpointAddr,
    ) -> BoxFuture<'static, Result<Box<dyn Link>, LinkError>>;

    /// The node is shutting down: dial no more and let go of the network (an iroh endpoint's
    /// socket is released only when its last clone is dropped).
    fn close(&self) {}
}

/// One outgoing consensus stream, and the connection it lives on.
pub trait Link: Send + Debug + 'static {
    /// Writes already-encoded frames, in order.
    fn send<'a>(&'a mut self, frames: &'a [u8]) -> BoxFuture<'a, Result<(), LinkError>>;
    /// Closes the underlying connection with a code.
    fn close(&mut self, code: CloseCode, reason: &str);
    /// Opens another stream on the same connection (for a snapshot transfer, so it never holds
    /// up the consensus stream).
    fn open_stream(&self) -> BoxFuture<'static, Result<Box<dyn StreamSink>, LinkError>>;
    /// Opens the control lane's stream (votes and heartbeats) on the same connection, so that
    /// they never wait behind appends or snapshot chunks written before them. A transport that
    /// cannot keep such a stream fails, and the control messages go on the consensus stream.
    fn open_control_stream(&self) -> BoxFuture<'static, Result<Box<dyn StreamSink>, LinkError>> {
        Box::pin(async {
            Err(LinkError::Closed(
                "no control stream on this transport".into(),
            ))
        })
    }
    /// Resolves when the connection closes: with our close code if the peer closed it with one.
    /// A transport that cannot tell resolves at once with `None`.
    fn closed(&self) -> BoxFuture<'static, Option<CloseCode>> {
        Box::pin(async { None })
    }
    /// The transport's current round-trip estimate, if it keeps one.
    fn rtt(&self) -> Option<Duration> {
        None
    }
    /// The network path the connection sends on now, if the transport can tell.
    fn path(&self) -> Option<LinkPath> {
        None
    }
}

/// The network path a link's connection sends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkPath {
    /// Straight to the peer's IP address (a direct path, hole-punched through NATs or not).
    Direct(std::net::SocketAddr),
    /// Through a relay server, which forwards the connection's encrypted packets.
    Relayed(iroh::RelayUrl),
}

impl std::fmt::Display for LinkPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkPath::Direct(addr) => write!(f, "direct to {addr}"),
            LinkPath::Relayed(url) => write!(f, "relayed through {url}"),
        }
    }
}

/// An extra outgoing stream.
pub trait StreamSink: Send + 'static {
    /// Writes already-encoded frames, in order.
    fn send<'a>(&'a mut self, frames: &'a [u8]) -> BoxFuture<'a, Result<(), LinkError>>;
    /// Ends the stream and waits until the peer has read all of it (an error if it stopped the
    /// stream instead).
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), LinkError>>;
}

/// Dials peers over an iroh endpoint.
#[derive(Debug, Clone)]
pub struct IrohDialer {
    /// `None` once closed. Locked once per connection attempt, never across an await.
    endpoint: Arc<Mutex<Option<Endpoint>>>,
    timeout: Duration,
    /// Relays every peer is also dialled through (the cluster's relays).
    relays: Vec<iroh::RelayUrl>,
}

impl IrohDialer {
    /// Dials through `endpoint`, giving up on a connection attempt after `timeout`.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        Self {
            endpoint: Arc::new(Mutex::new(Some(endpoint))),
            timeout,
            relays: Vec::new(),
        }
    }

    /// Dials every peer through `relays` as well as at its direct addresses: the members of a
    /// cluster with relays are connected to them (each its home relay), so a member behind a
    /// NAT is reached through the relay until a direct path is found.
    pub fn with_relays(mut self, relays: Vec<iroh::RelayUrl>) -> Self {
        self.relays = relays;
        self
    }

    fn endpoint(&self) -> Option<Endpoint> {
        self.endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Dialer for IrohDialer {
    fn dial(
        &self,
        hello: Hello,
        addr: EndpointAddr,
    ) -> BoxFuture<'static, Result<Box<dyn Link>, LinkError>> {
        let endpoint = self.endpoint();
        let timeout = self.timeout;
        let addr = crate::wire::with_relays(addr, &self.relays);
        Box::pin(async move {
            let endpoint =
                endpoint.ok_or_else(|| LinkError::Connect("the node is shutting down".into()))?;
            let connect = async {
                let conn = endpoint
                    .connect(addr, ALPN)
                    .await
                    .map_err(|e| LinkError::Connect(e.to_string()))?;
                // The peer may close at once (it refuses us): report its close code then.
                let stream = match conn.open_uni().await {
                    Ok(stream) => stream,
                    Err(e) => {
                        return Err(match close_code(&conn) {
                            Some(code) => LinkError::Refused { code },
                            None => LinkError::Connect(e.to_string()),
                        });
                    }
                };
                let mut link = IrohLink { conn, stream };
                let mut bytes = Vec::new();
                encode_frame(&Frame::Hello(hello), &mut bytes)
                    .map_err(|e| LinkError::Connect(e.to_string()))?;
                link.send(&bytes).await?;
                Ok(Box::new(link) as Box<dyn Link>)
            };
            tokio::time::timeout(timeout, connect)
                .await
                .unwrap_or_else(|_| Err(LinkError::Connect(format!("timed out after {timeout:?}"))))
        })
    }

    fn close(&self) {
        self.endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

#[derive(Debug)]
struct IrohLink {
    conn: Connection,
    stream: SendStream,
}

impl Link for IrohLink {
    fn send<'a>(&'a mut self, frames: &'a [u8]) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            let written = self.stream.write_all(frames).await;
            written.map_err(|e| write_error(&self.conn, e))
        })
    }

    fn close(&mut self, code: CloseCode, reason: &str) {
        self.conn.close(code.to_varint(), reason.as_bytes());
    }

    fn rtt(&self) -> Option<Duration> {
        let paths = self.conn.paths();
        let selected = paths.iter().find(|p| p.is_selected());
        selected.map(|p| p.rtt())
    }

    fn path(&self) -> Option<LinkPath> {
        let paths = self.conn.paths();
        let selected = paths.iter().find(|p| p.is_selected())?;
        match selected.remote_addr() {
            iroh::TransportAddr::Ip(addr) => Some(LinkPath::Direct(*addr)),
            iroh::TransportAddr::Relay(url) => Some(LinkPath::Relayed(url.clone())),
            _ => None,
        }
    }

    fn closed(&self) -> BoxFuture<'static, Option<CloseCode>> {
        let conn = self.conn.clone();
        Box::pin(async move {
            match conn.closed().await {
                ConnectionError::ApplicationClosed(c) => {
                    CloseCode::from_u64(c.error_code.into_inner())
                }
                _ => None,
            }
        })
    }

    /// A plain stream: QUIC sends the streams of a connection round-robin, so a heartbeat
    /// written after a megabyte of appends on the consensus stream goes out in the next packets,
    /// not after them. Not a higher send priority: with noq's stream priorities (1 over 0)
    /// linearizable reads at 256 clients fell to 50-65k/s in half the runs here, from 220-276k/s
    /// with equal priorities (ReadIndex rounds are heartbeats).
    fn open_control_stream(&self) -> BoxFuture<'static, Result<Box<dyn StreamSink>, LinkError>> {
        self.open_stream()
    }

    fn open_stream(&self) -> BoxFuture<'static, Result<Box<dyn StreamSink>, LinkError>> {
        let conn = self.conn.clone();
        Box::pin(async move {
            let stream = conn
                .open_uni()
                .await
                .map_err(|e| LinkError::Closed(e.to_string()))?;
            Ok(Box::new(IrohStream { stream }) as Box<dyn StreamSink>)
        })
    }
}

struct IrohStream {
    stream: SendStream,
}

impl StreamSink for IrohStream {
    fn send<'a>(&'a mut self, frames: &'a [u8]) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            self.stream
                .write_all(frames)
                .await
                .map_err(|e| LinkError::Closed(e.to_string()))
        })
    }

    fn finish(mut self: Box<Self>) -> BoxFuture<'static, Result<(), LinkError>> {
        Box::pin(async move {
            self.stream
                .finish()
                .map_err(|e| LinkError::Closed(e.to_string()))?;
            match self.stream.stopped().await {
                Ok(None) => Ok(()),
                Ok(Some(code)) => Err(LinkError::Closed(format!(
                    "peer stopped the stream with code {code}"
                ))),
                Err(e) => Err(LinkError::Closed(e.to_string())),
            }
        })
    }
}
