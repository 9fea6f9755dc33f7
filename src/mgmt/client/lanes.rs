//! A client connection's lanes: pipelined request streams, each with a task that writes the
//! queued calls in batches and a task that hands each reply to the caller waiting for it.
//!
//! Whether a call left the client is decided in one place, its [`Claim`]: the writer claims a
//! call before its bytes go to QUIC, a caller whose deadline passed abandons it; whichever comes
//! first wins, so a caller that abandoned its call knows it was never sent (and never will be).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
};

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh_raft_actors::{
    NodeId, TraceContext,
    wire::{
        MgmtBatch, MgmtCall, MgmtErrorKind, MgmtReader, MgmtReply, MgmtRequest, MgmtResponse,
        MgmtRole,
    },
};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, timeout_at},
};

use super::ClientError;

/// Lanes (request streams) a client keeps open on its connection: requests spread over them
/// round robin, so that no single stream's reader on the node decodes all of them.
const LANES: usize = 2;

/// Requests a lane queues before callers wait.
const LANE_QUEUE: usize = 1024;

/// A lane writes up to this many bytes of requests at once.
const WRITE_BATCH: usize = 64 * 1024;

/// How a request on a lane failed (before any answer).
#[derive(Debug)]
pub(super) enum LaneError {
    /// It was never handed to the connection: safe to send again, anywhere.
    NotSent(String),
    /// It was sent and the lane died before the answer: the outcome is unknown.
    Lost(String),
    /// It does not encode.
    Codec(String),
    /// No answer by the deadline. `sent`: the writer had claimed it (its bytes were handed, or
    /// were being handed, to QUIC); if not, it was abandoned in the queue and is never sent.
    TimedOut {
        /// Whether it may have reached the node.
        sent: bool,
    },
}

type Answer = oneshot::Sender<Result<MgmtResponse, LaneError>>;

/// A call waits in the queue.
const QUEUED: u8 = 0;
/// The writer took it: from here on its bytes may reach the node.
const CLAIMED: u8 = 1;
/// Its caller gave up first: the writer drops it unsent.
const ABANDONED: u8 = 2;

/// Who got to a queued call first: the lane's writer ([`CLAIMED`]) or its caller's deadline
/// ([`ABANDONED`]). Moves out of [`QUEUED`] exactly once.
#[derive(Clone, Default)]
struct Claim(Arc<AtomicU8>);

impl Claim {
    fn take(&self, to: u8) -> bool {
        self.0
            .compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A call in a lane's queue.
struct Job {
    request: MgmtRequest,
    /// The caller's trace context, taken in its task.
    trace: Option<TraceContext>,
    answer: Answer,
    claim: Claim,
}

/// The connection to one node, admitted, with its lanes.
#[derive(Clone)]
pub(super) struct Session {
    pub(super) conn: Connection,
    pub(super) node_id: NodeId,
    pub(super) role: MgmtRole,
    pub(super) lanes: Arc<Lanes>,
    /// The leader named by the node's latest reply (0: none known).
    pub(super) leader: Arc<AtomicU64>,
}

pub(super) struct Lanes {
    queues: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
}

/// What a lane's two halves share: the calls awaiting an answer, and why the lane ended.
#[derive(Default)]
struct LaneState {
    waiting: HashMap<u64, Answer>,
    ended: Option<String>,
}

type SharedLane = Arc<std::sync::Mutex<LaneState>>;

fn lock(state: &SharedLane) -> std::sync::MutexGuard<'_, LaneState> {
    // A panic while holding it cannot leave the map inconsistent: keep going.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Lanes {
    /// Opens the lanes on an admitted connection and starts their tasks.
    pub(super) async fn open(
        conn: &Connection,
        leader: &Arc<AtomicU64>,
    ) -> Result<Self, ClientError> {
        let mut queues = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (send, recv) = conn.open_bi().await.map_err(|e| ClientError::Unreachable {
                reason: e.to_string(),
            })?;
            let (queue, jobs) = mpsc::channel(LANE_QUEUE);
            let state = SharedLane::default();
            tokio::spawn(write_calls(send, jobs, state.clone()));
            tokio::spawn(read_replies(recv, state, leader.clone()));
            queues.push(queue);
        }
        Ok(Self {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    /// Sends `request` on the next lane and waits for its answer until `deadline`.
    pub(super) async fn call(
        &self,
        request: MgmtRequest,
        deadline: Instant,
    ) -> Result<MgmtResponse, LaneError> {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        let (answer, answered) = oneshot::channel();
        let claim = Claim::default();
        let job = Job {
            request,
            trace: TraceContext::current(),
            answer,
            claim: claim.clone(),
        };
        match timeout_at(deadline, self.queues[lane].send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(LaneError::NotSent(
                    "the connection's lane has closed".into(),
                ));
            }
            Err(_) => return Err(LaneError::TimedOut { sent: false }),
        }
        match timeout_at(deadline, answered).await {
            Ok(answer) => answer
                .unwrap_or_else(|_| Err(LaneError::Lost("the lane ended before answering".into()))),
            Err(_) => Err(LaneError::TimedOut {
                sent: !claim.take(ABANDONED),
            }),
        }
    }
}

/// A lane's sending half: numbers the queued requests and writes as many as are ready in one
/// write, registering each as awaiting an answer before it goes out. Ends (finishing the
/// stream) when the client drops the lane, or when a write fails: a call whose frame was not
/// entirely handed to the connection is answered `NotSent` (the node cannot have read it),
/// the others are left to the reading half (`Lost` if the lane dies before their answer).
async fn write_calls(mut send: SendStream, mut jobs: mpsc::Receiver<Job>, state: SharedLane) {
    let mut next_id = 1u64;
    let mut batch = MgmtBatch::new();
    // (id, end of its frame in the batch)
    let mut frames: Vec<(u64, usize)> = Vec::new();
    let failure = 'lane: loop {
        let Some(first) = jobs.recv().await else {
            let _ = send.finish();
            return;
        };
        batch.clear();
        frames.clear();
        let mut answers = Vec::new();
        let mut job = Some(first);
        while let Some(Job {
            request,
            trace,
            answer,
            claim,
        }) = job.take()
        {
            // A call whose caller already gave up is dropped unsent.
            if claim.take(CLAIMED) {
                let id = next_id;
                next_id += 1;
                match batch.push(&MgmtCall { id, request, trace }) {
                    Ok(()) => {
                        frames.push((id, batch.len()));
                        answers.push((id, answer));
                    }
                    Err(e) => {
                        let _ = answer.send(Err(LaneError::Codec(e.to_string())));
                    }
                }
            }
            if batch.len() < WRITE_BATCH {
                job = jobs.try_recv().ok();
            }
        }
        {
            let mut lane = lock(&state);
            if let Some(why) = lane.ended.clone() {
                for (_, answer) in answers {
                    let _ = answer.send(Err(LaneError::NotSent(why.clone())));
                }
                break 'lane why;
            }
            lane.waiting.extend(answers);
        }
        let bytes = batch.bytes();
        let mut written = 0;
        while written < bytes.len() {
            match send.write(&bytes[written..]).await {
                Ok(n) => written += n,
                Err(e) => {
                    let mut lane = lock(&state);
                    for &(id, end) in &frames {
                        if end > written
                            && let Some(answer) = lane.waiting.remove(&id)
                        {
                            let _ = answer.send(Err(LaneError::NotSent(e.to_string())));
                        }
                    }
                    break 'lane e.to_string();
                }
            }
        }
    };
    // Whatever is still queued was never sent.
    jobs.close();
    while let Ok(job) = jobs.try_recv() {
        let _ = job.answer.send(Err(LaneError::NotSent(failure.clone())));
    }
}

/// A lane's receiving half: hands each reply to the caller waiting for its id. When the lane
/// ends, every caller still waiting learns that its outcome is unknown (or, if the node
/// refused the lane outright, that its call was not sent).
async fn read_replies(mut recv: RecvStream, state: SharedLane, leader: Arc<AtomicU64>) {
    let mut reader = MgmtReader::new();
    // The node's word on the lane itself (a reply with id 0), if any.
    let mut lane_error: Option<MgmtResponse> = None;
    let why = loop {
        let reply = match reader.next_reply(&mut recv).await {
            Ok(Some(reply)) => reply,
            Ok(None) => break "the node ended the lane".to_string(),
            Err(e) => break e.to_string(),
        };
        let MgmtReply {
            id,
            leader: known,
            response,
        } = reply;
        leader.store(known, Ordering::Relaxed);
        if id == 0 {
            // The node still answers the calls it read before; it then ends the lane.
            lane_error = Some(response);
            continue;
        }
        let answer = lock(&state).waiting.remove(&id);
        if let Some(answer) = answer {
            let _ = answer.send(Ok(response));
        }
    };
    let (why, refused) = match lane_error {
        Some(MgmtResponse::Error {
            kind: MgmtErrorKind::Refused,
            message,
            ..
        }) => (format!("the node refused the lane: {message}"), true),
        Some(other) => (format!("the node ended the lane: {other:?}"), false),
        None => (why, false),
    };
    let waiting = {
        let mut lane = lock(&state);
        lane.ended = Some(why.clone());
        std::mem::take(&mut lane.waiting)
    };
    for (_, answer) in waiting {
        let error = if refused {
            LaneError::NotSent(why.clone())
        } else {
            LaneError::Lost(why.clone())
        };
        let _ = answer.send(Err(error));
    }
}
