//! The control lane of one peer: votes, heartbeats, their answers and `TimeoutNow` travel on a
//! stream of their own (QUIC interleaves a connection's streams), fed by a queue of their own. A leader saturating a follower with appends (the PeerActor waiting on
//! QUIC flow control, its mailbox full) or streaming it a large snapshot still reaches it with
//! heartbeats on time, so a busy link never costs an election.
//!
//! The RaftActor's peer table splits each batch: control messages go to this lane's queue
//! (`try_send`: a full queue sends them with the rest instead), everything else to the
//! PeerActor. The PeerActor owns the connection: each time it connects it opens the control
//! stream (starting with a Hello, like every stream) and hands it here. Without a control stream
//! (not connected yet, a transport without one, or the stream failed) the lane
//! hands its messages to the PeerActor, which sends them on the consensus stream and dials if
//! needed. Raft tolerates the reordering between the two streams.

use std::sync::Arc;

use iroh_metrics::Counter;
use kameo::actor::WeakActorRef;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use tokio::sync::mpsc;

use super::{Outbound, PeerActor, StreamSink};
use crate::wire::{Frame, convert_outgoing, encode_frame};

/// Batches of control messages queued for one peer before they go with the appends instead.
/// A Ready round adds at most one batch per peer; a healthy lane drains it at once.
pub const CONTROL_QUEUE: usize = 64;

/// Whether `m` travels on the control lane.
pub(crate) fn is_control(m: &RaftMessage) -> bool {
    matches!(
        m.msg_type,
        MessageType::MsgHeartbeat
            | MessageType::MsgHeartbeatResponse
            | MessageType::MsgRequestVote
            | MessageType::MsgRequestVoteResponse
            | MessageType::MsgRequestPreVote
            | MessageType::MsgRequestPreVoteResponse
            | MessageType::MsgTimeoutNow
    )
}

/// The sending half of a peer's control lane, kept by the RaftActor's peer table.
pub(crate) type ControlSender = mpsc::Sender<Vec<RaftMessage>>;

/// What the lane's task runs with.
pub(crate) struct ControlLane {
    pub(crate) messages: mpsc::Receiver<Vec<RaftMessage>>,
    pub(crate) streams: mpsc::Receiver<Box<dyn StreamSink>>,
    pub(crate) peer: WeakActorRef<PeerActor>,
    pub(crate) sent_bytes: Arc<Counter>,
    pub(crate) sent_frames: Arc<Counter>,
}

impl ControlLane {
    /// Writes control batches until the RaftActor drops the lane or the PeerActor stops.
    pub(crate) async fn run(mut self) {
        let mut stream: Option<Box<dyn StreamSink>> = None;
        let mut buf = Vec::new();
        loop {
            tokio::select! {
                biased;
                next = self.streams.recv() => match next {
                    Some(s) => stream = Some(s),
                    None => return,
                },
                batch = self.messages.recv() => {
                    let Some(batch) = batch else { return };
                    if let Some(s) = stream.as_mut() {
                        buf.clear();
                        let frame = Frame::Raft(batch.iter().map(convert_outgoing).collect());
                        if encode_frame(&frame, &mut buf).is_ok() && s.send(&buf).await.is_ok() {
                            self.sent_bytes.inc_by(buf.len() as u64);
                            self.sent_frames.inc();
                            continue;
                        }
                        // The stream failed: until the PeerActor connects again, the messages
                        // go its way (it notices a dead connection and redials).
                        stream = None;
                    }
                    self.fall_back(batch);
                }
            }
        }
    }

    /// Hands a batch to the PeerActor (lost if its mailbox is full: Raft sends again).
    fn fall_back(&self, raft: Vec<RaftMessage>) {
        if let Some(peer) = self.peer.upgrade() {
            let _ = peer
                .tell(Outbound {
                    raft,
                    ..Outbound::default()
                })
                .try_send();
        }
    }
}
