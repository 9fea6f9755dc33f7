//! [`PeerActor`]: the outgoing side of one peer.

use std::{convert::Infallible, sync::Arc, time::Duration};

use iroh::EndpointAddr;
use iroh_metrics::{Counter, Gauge, Histogram};
use kameo::{
    Actor,
    actor::{ActorRef, WeakActorRef, WeakRecipient},
    error::ActorStopReason,
    message::{Context, Message},
};
use raft::eraftpb::Message as RaftMessage;
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tracing::{Instrument, Span, debug, info, info_span, trace};

use super::{BoxFuture, Dialer, Link, LinkError, LinkPath, StreamSink, control::ControlLane};
use crate::{
    consistency::ApplyHash,
    error::Corruption,
    events::{ClusterEvent, EventBus, Publish},
    metrics::{PeerLabel, PeerMetrics},
    storage::{DbHandle, SnapshotReader, SnapshotRecord},
    trace::TraceContext,
    types::NodeId,
    wire::{
        CloseCode, ForwardReply, ForwardedProposal, Frame, Hello, PROTOCOL_VERSION, WireMessage,
        convert_outgoing, encode_frame,
    },
};

/// First redial delay after a failed connection.
pub const MIN_BACKOFF: Duration = Duration::from_millis(20);
/// Longest redial delay: a peer that comes back is found again within this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Target payload of one Raft frame; larger batches are split (a single message may exceed it).
const FRAME_TARGET: usize = 1024 * 1024;
/// How often the connection's round-trip estimate is recorded (at most).
const RTT_EVERY: Duration = Duration::from_secs(1);

/// Everything the RaftActor has for one peer after a Ready round.
#[derive(Debug, Default)]
pub struct Outbound {
    /// Raft messages, in order.
    pub raft: Vec<RaftMessage>,
    /// Proposals forwarded to the peer (it is the leader).
    pub forwards: Vec<ForwardedProposal>,
    /// Answers to proposals the peer forwarded to us.
    pub replies: Vec<ForwardReply>,
    /// A snapshot the peer needs, to stream on a stream of its own.
    pub snapshot: Option<Box<SnapshotOffer>>,
    /// This node's last applied index and running hash (the replica consistency check).
    pub checkpoint: Option<Box<(u64, ApplyHash)>>,
}

/// raft-rs's `MsgSnapshot` for a follower, and where the snapshot's bytes are.
#[derive(Debug)]
pub struct SnapshotOffer {
    /// The message (snapshot metadata, no data).
    pub msg: RaftMessage,
    /// The stored snapshot it describes.
    pub record: SnapshotRecord,
}

/// How streaming a snapshot to `peer` ended.
#[derive(Debug, Clone)]
pub struct SnapshotSent {
    /// The follower.
    pub peer: NodeId,
    /// Whether every byte was delivered and read.
    pub delivered: bool,
    /// The stored snapshot turned out to be damaged while it was read for sending.
    pub corruption: Option<Corruption>,
}

impl Outbound {
    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.raft.is_empty()
            && self.forwards.is_empty()
            && self.replies.is_empty()
            && self.snapshot.is_none()
            && self.checkpoint.is_none()
    }
}

/// Sent by a PeerActor to the RaftActor when messages to `peer` were lost.
#[derive(Debug, Clone)]
pub struct PeerUnreachable {
    /// The peer.
    pub peer: NodeId,
    /// Forwarded proposals that were certainly not sent (dropped before any byte was written):
    /// their proposers may safely retry.
    pub unsent_forwards: Vec<u64>,
    /// The peer refused this node for good: [`CloseCode::Removed`] (this node was removed from
    /// the cluster) or [`CloseCode::StaleIncarnation`] (this node runs on an old data dir).
    pub refused: Option<CloseCode>,
}

/// What a PeerActor is started with.
#[derive(Debug)]
pub struct PeerArgs {
    /// This node.
    pub me: NodeId,
    /// The peer.
    pub peer: NodeId,
    /// This node's incarnation, sent in every Hello.
    pub incarnation: u64,
    /// Where to reach it.
    pub addr: EndpointAddr,
    /// How to reach it.
    pub dialer: Arc<dyn Dialer>,
    /// Told when messages were lost (weak: a PeerActor must not keep the RaftActor alive).
    pub raft: WeakRecipient<PeerUnreachable>,
    /// Told how a snapshot transfer ended.
    pub snapshot_sent: WeakRecipient<SnapshotSent>,
    /// Where snapshots are read from.
    pub db: DbHandle,
    /// Where connection events go.
    pub events: ActorRef<EventBus>,
    /// Where bytes, frames, failures, reconnects and round trips to this peer are counted.
    pub metrics: Arc<PeerMetrics>,
    /// The receiving end of this peer's control lane (votes and heartbeats on a stream of their
    /// own, see the peer module's control lane); `None`: they go with everything else.
    pub control: Option<mpsc::Receiver<Vec<RaftMessage>>>,
}

/// Owns the outgoing connection to one peer.
#[derive(Debug)]
pub struct PeerActor {
    args: PeerArgs,
    link: Option<Box<dyn Link>>,
    retry_at: Option<Instant>,
    backoff: Duration,
    buf: Vec<u8>,
    span: Span,
    /// The snapshot transfer in progress, if any (one at a time per peer).
    transfer: Option<JoinHandle<()>>,
    /// This peer's counters, looked up once.
    counters: Counters,
    /// Frames encoded in `buf`.
    frames: u64,
    /// Whether a connection was ever made (the next one is a reconnect).
    connected_before: bool,
    /// When the round trip was last recorded.
    rtt_at: Option<Instant>,
    /// The path the connection was last seen sending on.
    path: Option<LinkPath>,
    /// Where each new connection's control stream goes (to the control lane's task).
    control_streams: Option<mpsc::Sender<Box<dyn StreamSink>>>,
    /// The control lane's task, stopped with this actor.
    control_task: Option<JoinHandle<()>>,
}

/// One peer's counters in the node's [`PeerMetrics`].
#[derive(Debug)]
struct Counters {
    sent_bytes: Arc<Counter>,
    sent_frames: Arc<Counter>,
    failures: Arc<Counter>,
    reconnects: Arc<Counter>,
    rtt: Arc<Histogram>,
    path_changes: Arc<Counter>,
}

impl Counters {
    fn new(metrics: &PeerMetrics, peer: NodeId) -> Self {
        let label = PeerLabel { peer };
        Self {
            sent_bytes: metrics.peer_sent_bytes.get_or_create(&label),
            sent_frames: metrics.peer_sent_frames.get_or_create(&label),
            failures: metrics.peer_sent_failures.get_or_create(&label),
            reconnects: metrics.peer_reconnects.get_or_create(&label),
            rtt: metrics.peer_round_trip_time_seconds.get_or_create(&label),
            path_changes: metrics.peer_path_changes.get_or_create(&label),
        }
    }
}

impl PeerActor {
    /// Returns a usable link, dialling if there is none and the backoff has expired.
    async fn link(&mut self) -> Option<&mut Box<dyn Link>> {
        if self.link.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return None;
            }
            let dial = self.args.dialer.dial(self.hello(), self.args.addr.clone());
            match dial.await {
                Ok(link) => {
                    debug!(peer = self.args.peer, "connected");
                    // The peer may refuse us for good after the handshake, or later: watch for
                    // those close codes for as long as the connection lives.
                    let closed = link.closed();
                    let notice = self.refusal_notice();
                    tokio::spawn(async move {
                        if let Some(code) = closed.await {
                            notice(code);
                        }
                    });
                    if let Some(streams) = self.control_streams.clone() {
                        open_control_stream(streams, self.hello(), link.open_control_stream())
                            .await;
                    }
                    self.link = Some(link);
                    if std::mem::replace(&mut self.connected_before, true) {
                        self.counters.reconnects.inc();
                    }
                    self.retry_at = None;
                    self.backoff = MIN_BACKOFF;
                    self.publish(ClusterEvent::PeerConnected {
                        peer: self.args.peer,
                    });
                }
                Err(e) => {
                    if let LinkError::Refused { code } = e {
                        self.refusal_notice()(code);
                    }
                    self.failed(e.to_string());
                    return None;
                }
            }
        }
        self.link.as_mut()
    }

    /// The first frame of every stream to the peer.
    fn hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            from: self.args.me,
            to: self.args.peer,
            incarnation: self.args.incarnation,
        }
    }

    /// Drops the link (if any), schedules a redial and tells the RaftActor.
    fn failed(&mut self, reason: String) {
        let was_connected = self.link.take().is_some();
        let first_failure = self.retry_at.is_none();
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        if was_connected || first_failure {
            debug!(peer = self.args.peer, %reason, "peer unreachable");
            self.publish(ClusterEvent::PeerDisconnected {
                peer: self.args.peer,
                reason,
            });
        }
        self.report_unreachable(Vec::new());
    }

    /// Tells the RaftActor when the peer closed with a code that refuses this node for good
    /// (removed, stale incarnation); callable from a task.
    fn refusal_notice(&self) -> impl FnOnce(CloseCode) + Send + 'static {
        let raft = self.args.raft.clone();
        let peer = self.args.peer;
        move |code| {
            if !matches!(code, CloseCode::Removed | CloseCode::StaleIncarnation) {
                return;
            }
            if let Some(raft) = raft.upgrade() {
                let _ = raft
                    .tell(PeerUnreachable {
                        peer,
                        unsent_forwards: Vec::new(),
                        refused: Some(code),
                    })
                    .try_send();
            }
        }
    }

    fn report_unreachable(&self, unsent_forwards: Vec<u64>) {
        if let Some(raft) = self.args.raft.upgrade() {
            let _ = raft
                .tell(PeerUnreachable {
                    peer: self.args.peer,
                    unsent_forwards,
                    refused: None,
                })
                .try_send();
        }
    }

    fn publish(&self, ev: ClusterEvent) {
        let _ = self.args.events.tell(Publish(ev)).try_send();
    }

    /// Encodes a batch into `self.buf` as one or more frames.
    fn encode(&mut self, batch: Outbound) {
        self.buf.clear();
        self.frames = 0;
        let mut frame: Vec<WireMessage> = Vec::new();
        let mut size = 0;
        for m in &batch.raft {
            let w = convert_outgoing(m);
            size += 64
                + w.entries
                    .iter()
                    .map(|e| e.data.len() + e.context.len() + 32)
                    .sum::<usize>();
            frame.push(w);
            if size >= FRAME_TARGET {
                self.push_frame(Frame::Raft(std::mem::take(&mut frame)));
                size = 0;
            }
        }
        if !frame.is_empty() {
            self.push_frame(Frame::Raft(frame));
        }
        // Forwarded commands can be up to MAX_COMMAND_SIZE each: split them by size too.
        let mut forwards = Vec::new();
        let mut size = 0;
        for f in batch.forwards {
            size += f.encoded_size();
            forwards.push(f);
            if size >= FRAME_TARGET {
                self.push_frame(Frame::Forward(std::mem::take(&mut forwards)));
                size = 0;
            }
        }
        if !forwards.is_empty() {
            self.push_frame(Frame::Forward(forwards));
        }
        if !batch.replies.is_empty() {
            self.push_frame(Frame::ForwardReply(batch.replies));
        }
        if let Some(point) = batch.checkpoint {
            let (index, hash) = *point;
            self.push_frame(Frame::Checkpoint { index, hash });
        }
    }

    fn push_frame(&mut self, frame: Frame) {
        // Sizes are bounded where proposals enter (MAX_COMMAND_SIZE) and by max_append_bytes, so
        // an oversized frame is a bug; drop it loudly rather than poison the stream.
        match encode_frame(&frame, &mut self.buf) {
            Ok(_) => self.frames += 1,
            Err(e) => {
                tracing::error!(peer = self.args.peer, error = %e, "dropping unencodable frame")
            }
        }
    }

    async fn send(&mut self, mut batch: Outbound) {
        if let Some(offer) = batch.snapshot.take() {
            self.start_transfer(offer).await;
        }
        if batch.is_empty() {
            return;
        }
        if self.link().await.is_none() {
            // Still backing off (or the dial just failed): the batch is lost. Raft retransmits
            // its messages; forwarded proposals were never sent, so their proposers may retry.
            self.counters.failures.inc();
            self.report_unreachable(batch.forwards.iter().map(|f| f.id).collect());
            return;
        }
        // With the `otel` feature, sending entries of traced proposals is a `replicate` span
        // linked to each (a root of its own: one send carries many proposals).
        let contexts = batch.raft.iter().flat_map(|m| &m.entries);
        let (node, peer) = (self.args.me, self.args.peer);
        let span = TraceContext::linked_span(
            contexts.map(|e| &e.context[..]),
            || tracing::info_span!(parent: None, "replicate", node, peer),
        );
        self.encode(batch);
        let buf = std::mem::take(&mut self.buf);
        let result = match self.link.as_mut() {
            Some(link) => {
                let span = span.unwrap_or_else(tracing::Span::none);
                link.send(&buf).instrument(span).await
            }
            None => Ok(()),
        };
        self.buf = buf;
        trace!(peer = self.args.peer, bytes = self.buf.len(), "sent");
        match &result {
            Ok(()) => {
                self.counters.sent_bytes.inc_by(self.buf.len() as u64);
                self.counters.sent_frames.inc_by(self.frames);
                self.record_rtt();
            }
            Err(_) => {
                self.counters.failures.inc();
            }
        }
        if let Err(LinkError::Refused { code }) = &result {
            self.refusal_notice()(*code);
        }
        if let Err(e) = result {
            self.failed(e.to_string());
        }
    }
}

impl PeerActor {
    /// Records the connection's round-trip estimate and the path it sends on, at most once
    /// per [`RTT_EVERY`].
    fn record_rtt(&mut self) {
        if self.rtt_at.is_some_and(|t| t.elapsed() < RTT_EVERY) {
            return;
        }
        self.rtt_at = Some(Instant::now());
        let Some(link) = self.link.as_ref() else {
            return;
        };
        if let Some(rtt) = link.rtt() {
            self.counters.rtt.observe(rtt.as_secs_f64());
        }
        let path = link.path();
        if let Some(now) = path.as_ref().filter(|p| Some(*p) != self.path.as_ref()) {
            let relayed = matches!(now, LinkPath::Relayed(_));
            // Created at the first path seen: before that the peer has no path to report.
            let label = PeerLabel {
                peer: self.args.peer,
            };
            let gauge: Arc<Gauge> = self.args.metrics.peer_relayed.get_or_create(&label);
            gauge.set(i64::from(relayed));
            if let Some(before) = &self.path {
                self.counters.path_changes.inc();
                info!(peer = self.args.peer, path = %now, was = %before, "path to peer changed");
            } else {
                info!(peer = self.args.peer, path = %now, "path to peer");
            }
            self.path = path;
        }
    }

    /// Streams a snapshot on a new stream of the current connection, in a task of its own.
    async fn start_transfer(&mut self, offer: Box<SnapshotOffer>) {
        let busy = self.transfer.as_ref().is_some_and(|t| !t.is_finished());
        let stream = match (busy, self.link().await) {
            (false, Some(link)) => Some(link.open_stream()),
            _ => None,
        };
        let report = self.args.snapshot_sent.clone();
        let peer = self.args.peer;
        let Some(stream) = stream else {
            // Busy or unreachable: raft-rs sends the offer again after a failure report.
            if let Some(r) = report.upgrade() {
                let _ = r
                    .tell(SnapshotSent {
                        peer,
                        delivered: false,
                        corruption: None,
                    })
                    .try_send();
            }
            return;
        };
        let (hello, db) = (self.hello(), self.args.db.clone());
        let span = self.span.clone();
        let (sent_bytes, took) = (self.counters.sent_bytes.clone(), self.args.metrics.clone());
        let started = Instant::now();
        self.transfer = Some(tokio::spawn(
            async move {
                let index = offer.record.index;
                let result =
                    async { stream_snapshot(stream.await?, hello, offer, &db).await }.await;
                let mut corruption = None;
                match &result {
                    Ok(bytes) => {
                        debug!(index, bytes, "snapshot delivered");
                        sent_bytes.inc_by(*bytes);
                        let secs = started.elapsed().as_secs_f64();
                        took.snapshot_send_duration_seconds.observe(secs);
                    }
                    Err(SendFailure::Corrupt(c)) => corruption = Some(c.clone()),
                    Err(SendFailure::Link(e)) => {
                        debug!(index, error = %e, "snapshot transfer failed")
                    }
                }
                if let Some(r) = report.upgrade() {
                    let delivered = result.is_ok();
                    let sent = SnapshotSent {
                        peer,
                        delivered,
                        corruption,
                    };
                    let _ = r.tell(sent).await;
                }
            }
            .instrument(span),
        ));
    }
}

/// Why a snapshot was not delivered.
enum SendFailure {
    Link(LinkError),
    /// The stored snapshot is damaged.
    Corrupt(Corruption),
}

impl From<LinkError> for SendFailure {
    fn from(e: LinkError) -> Self {
        SendFailure::Link(e)
    }
}

/// Writes Hello, header, every chunk and the end frame; returns the bytes sent.
/// Opens the control stream on a new connection and hands it to the control lane. A transport
/// without control streams, or a failure, leaves the lane sending through the PeerActor.
async fn open_control_stream(
    streams: mpsc::Sender<Box<dyn StreamSink>>,
    hello: Hello,
    opening: BoxFuture<'static, Result<Box<dyn StreamSink>, LinkError>>,
) {
    let Ok(mut stream) = opening.await else {
        return;
    };
    let mut bytes = Vec::new();
    if encode_frame(&Frame::Hello(hello), &mut bytes).is_ok() && stream.send(&bytes).await.is_ok() {
        let _ = streams.try_send(stream);
    }
}

async fn stream_snapshot(
    mut stream: Box<dyn StreamSink>,
    hello: Hello,
    offer: Box<SnapshotOffer>,
    db: &DbHandle,
) -> Result<u64, SendFailure> {
    let mut buf = Vec::new();
    let push = |frame: Frame, buf: &mut Vec<u8>| {
        buf.clear();
        encode_frame(&frame, buf).map_err(|e| LinkError::Closed(e.to_string()))
    };
    push(Frame::Hello(hello), &mut buf)?;
    stream.send(&buf).await?;
    push(
        Frame::SnapshotHeader(Box::new(convert_outgoing(&offer.msg))),
        &mut buf,
    )?;
    stream.send(&buf).await?;
    let mut reader = db
        .snapshot_reader(&offer.record)
        .map_err(|e| LinkError::Closed(e.to_string()))?;
    // One chunk in memory at a time; the reader checks size and checksum after the last one.
    while let Some(chunk) =
        reader
            .next_chunk()
            .map_err(|e| match SnapshotReader::corruption(&e) {
                Some(c) => SendFailure::Corrupt(c.clone()),
                None => SendFailure::Link(LinkError::Closed(e.to_string())),
            })?
    {
        push(Frame::SnapshotChunk(chunk), &mut buf)?;
        stream.send(&buf).await?;
    }
    push(
        Frame::SnapshotEnd {
            size: offer.record.size,
            checksum: offer.record.checksum,
        },
        &mut buf,
    )?;
    stream.send(&buf).await?;
    stream.finish().await?;
    Ok(offer.record.size)
}

impl Actor for PeerActor {
    type Args = PeerArgs;
    type Error = Infallible;

    async fn on_start(mut args: Self::Args, me: ActorRef<Self>) -> Result<Self, Self::Error> {
        let counters = Counters::new(&args.metrics, args.peer);
        let (control_streams, control_task) = match args.control.take() {
            Some(messages) => {
                let (tx, streams) = mpsc::channel(2);
                let lane = ControlLane {
                    messages,
                    streams,
                    peer: me.downgrade(),
                    sent_bytes: counters.sent_bytes.clone(),
                    sent_frames: counters.sent_frames.clone(),
                };
                (Some(tx), Some(tokio::spawn(lane.run())))
            }
            None => (None, None),
        };
        Ok(Self {
            span: info_span!("peer", node = args.me, peer = args.peer),
            counters,
            control_streams,
            control_task,
            frames: 0,
            connected_before: false,
            rtt_at: None,
            path: None,
            args,
            link: None,
            retry_at: None,
            backoff: MIN_BACKOFF,
            buf: Vec::new(),
            transfer: None,
        })
    }

    async fn on_stop(
        &mut self,
        _: WeakActorRef<Self>,
        _: ActorStopReason,
    ) -> Result<(), Self::Error> {
        if let Some(mut link) = self.link.take() {
            link.close(CloseCode::ShuttingDown, "shutting down");
        }
        if let Some(task) = self.control_task.take() {
            task.abort();
        }
        Ok(())
    }
}

impl Message<Outbound> for PeerActor {
    type Reply = ();

    async fn handle(&mut self, batch: Outbound, _: &mut Context<Self, ()>) {
        let span = self.span.clone();
        self.send(batch).instrument(span).await;
    }
}

/// Close the connection with [`CloseCode::ShuttingDown`] and stop. Unlike kameo's graceful stop
/// it does not wait behind queued batches: they are dropped.
#[derive(Debug, Clone, Copy)]
pub struct StopPeer;

impl Message<StopPeer> for PeerActor {
    type Reply = ();

    async fn handle(&mut self, _: StopPeer, ctx: &mut Context<Self, ()>) {
        if let Some(mut link) = self.link.take() {
            link.close(CloseCode::ShuttingDown, "shutting down");
        }
        ctx.stop();
    }
}

/// The connection may be dead without QUIC having noticed yet (the peer process was killed and
/// restarted: its new endpoint does not know the old connection, which lingers until the idle
/// timeout). Drop it; the next batch dials afresh, without backoff.
#[derive(Debug, Clone, Copy)]
pub enum Reconnect {
    /// The peer has not answered for an election timeout although this node expected it to (it
    /// leads, or campaigns). The close tells it so ([`CloseCode::NoAnswer`]): when only its
    /// connection to us is dead, it redials too.
    NoAnswer,
    /// The peer restarted, or told us it hears nothing from us: a plain close.
    Stale,
}

impl Message<Reconnect> for PeerActor {
    type Reply = ();

    async fn handle(&mut self, why: Reconnect, _: &mut Context<Self, ()>) {
        if let Some(mut link) = self.link.take() {
            debug!(peer = self.args.peer, ?why, "reconnecting");
            match why {
                Reconnect::NoAnswer => link.close(CloseCode::NoAnswer, "no answer; reconnecting"),
                Reconnect::Stale => link.close(CloseCode::Normal, "reconnecting"),
            }
            self.retry_at = None;
            self.backoff = MIN_BACKOFF;
        }
    }
}
