//! [`IrohRaftManagementClient`]: talks to a cluster over the management protocol from outside
//! it. It keeps one connection, to the leader when it knows it (every reply names the leader, and
//! the client moves there in the background: writes then take no extra hop; a follower would
//! forward them anyway), pipelines requests on two lanes of it, and fails over to another member
//! when its node stops answering.
//!
//! What is sent again, and what is not: a request that never left the client (its node was
//! unreachable, the lane had closed, its frame was not entirely written) is sent to another
//! member; so are status, health, reads, snapshots and tickets whatever happened. A proposal or a
//! membership change whose connection was lost after it was sent, or that the node could not
//! finish (`MgmtErrorKind::Unknown`), is never sent again: the caller gets
//! [`ClientError::OutcomeUnknown`] or [`ClientError::Failed`] and decides.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use iroh::{
    Endpoint, EndpointAddr, SecretKey,
    endpoint::{Connection, RecvStream, SendStream},
};
use iroh_raft_actors::{
    ClusterEvent, EventItem, NodeId, Ticket,
    wire::{
        CloseCode, MGMT_ALPN, MGMT_VERSION, MgmtBatch, MgmtCall, MgmtErrorKind, MgmtHealth,
        MgmtReader, MgmtReply, MgmtRequest, MgmtResponse, MgmtRole, MgmtStatus, encode_mgmt,
        read_mgmt_response,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::net::{addr_from_wire, bind_offline_endpoint};

/// How a management call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A member refused this client (no valid ticket, not on the allowlist).
    #[error("refused by the cluster: {reason}")]
    Refused {
        /// What the member said.
        reason: String,
    },
    /// No member could be reached.
    #[error("no member reachable: {reason}")]
    Unreachable {
        /// What the last attempt reported.
        reason: String,
    },
    /// The client's role does not allow the request.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request reached the cluster and failed.
    #[error("{kind:?}: {message}")]
    Failed {
        /// The kind, for programs.
        kind: MgmtErrorKind,
        /// What the node said.
        message: String,
    },
    /// A command, query or answer did not (de)serialize.
    #[error("codec: {0}")]
    Codec(String),
    /// No answer in time; the outcome of a write is unknown.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection was lost after a change or a command was sent and before it was
    /// answered: it may or may not have taken effect (the client does not resend it, which
    /// could apply it twice).
    #[error("outcome unknown: {reason}")]
    OutcomeUnknown {
        /// What happened to the connection.
        reason: String,
    },
}

/// How long one member gets to accept a connection before the client tries the next.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Lanes (request streams) a client keeps open on its connection: requests spread over them
/// round robin, so that no single stream's reader on the node decodes all of them.
const LANES: usize = 2;

/// Requests a lane queues before callers wait.
const LANE_QUEUE: usize = 1024;

/// A lane writes up to this many bytes of requests at once.
const WRITE_BATCH: usize = 64 * 1024;

/// How a request on a lane failed (before any answer).
#[derive(Debug)]
enum LaneError {
    /// It was never handed to the connection: safe to send again, anywhere.
    NotSent(String),
    /// It was sent and the lane died before the answer: the outcome is unknown.
    Lost(String),
    /// It does not encode.
    Codec(String),
}

type Answer = oneshot::Sender<Result<MgmtResponse, LaneError>>;

/// The connection to one node, admitted, with its lanes.
#[derive(Clone)]
struct Session {
    conn: Connection,
    node_id: NodeId,
    role: MgmtRole,
    lanes: Arc<Lanes>,
    /// The leader named by the node's latest reply (0: none known).
    leader: Arc<AtomicU64>,
}

struct Lanes {
    queues: Vec<mpsc::Sender<(MgmtRequest, Answer)>>,
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
    async fn open(conn: &Connection, leader: &Arc<AtomicU64>) -> Result<Self, ClientError> {
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

    /// Sends `request` on the next lane and waits for its answer.
    async fn call(&self, request: MgmtRequest) -> Result<MgmtResponse, LaneError> {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        let (answer, answered) = oneshot::channel();
        if self.queues[lane].send((request, answer)).await.is_err() {
            return Err(LaneError::NotSent(
                "the connection's lane has closed".into(),
            ));
        }
        answered
            .await
            .unwrap_or_else(|_| Err(LaneError::Lost("the lane ended before answering".into())))
    }
}

/// A lane's sending half: numbers the queued requests and writes as many as are ready in one
/// write, registering each as awaiting an answer before it goes out. Ends (finishing the
/// stream) when the client drops the lane, or when a write fails: a call whose frame was not
/// entirely handed to the connection is answered `NotSent` (the node cannot have read it),
/// the others are left to the reading half (`Lost` if the lane dies before their answer).
async fn write_calls(
    mut send: SendStream,
    mut jobs: mpsc::Receiver<(MgmtRequest, Answer)>,
    state: SharedLane,
) {
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
        while let Some((request, answer)) = job.take() {
            let id = next_id;
            next_id += 1;
            match batch.push(&MgmtCall { id, request }) {
                Ok(()) => {
                    frames.push((id, batch.len()));
                    answers.push((id, answer));
                }
                Err(e) => {
                    let _ = answer.send(Err(LaneError::Codec(e.to_string())));
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
    while let Ok((_, answer)) = jobs.try_recv() {
        let _ = answer.send(Err(LaneError::NotSent(failure.clone())));
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

/// A remote client of a cluster. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct IrohRaftManagementClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    ticket: Option<String>,
    /// Addresses to try, in order (learned members are added).
    members: Mutex<Vec<EndpointAddr>>,
    /// Members' addresses by raft id, learned from status answers.
    ids: Mutex<HashMap<NodeId, EndpointAddr>>,
    /// A move to the leader is under way.
    moving: AtomicBool,
    current: Mutex<Option<Session>>,
    timeout: Duration,
}

impl std::fmt::Debug for IrohRaftManagementClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrohRaftManagementClient")
            .field("endpoint", &self.inner.endpoint.id())
            .finish_non_exhaustive()
    }
}

/// A subscription to a node's events.
pub struct EventSubscription {
    recv: RecvStream,
    reader: MgmtReader,
    _send: SendStream,
    _conn: Connection,
    /// The run of the node's event bus the numbers belong to (pass it to
    /// [`IrohRaftManagementClient::resume`]).
    pub epoch: u64,
    /// Number of the last event received (or reported missed).
    pub last_seq: u64,
}

impl EventSubscription {
    /// The next event, a "missed N" marker, or `None` once the node ended the stream.
    pub async fn next(&mut self) -> Option<Result<EventItem, ClientError>> {
        let response = self
            .reader
            .next_reply(&mut self.recv)
            .await
            .map(|r| r.map(|r| r.response));
        match response {
            Ok(Some(MgmtResponse::Event { seq, event })) => {
                self.last_seq = seq;
                Some(
                    postcard::from_bytes::<ClusterEvent>(&event)
                        .map(EventItem::Event)
                        .map_err(|e| ClientError::Codec(e.to_string())),
                )
            }
            Ok(Some(MgmtResponse::Missed { count })) => {
                self.last_seq += count;
                Some(Ok(EventItem::Missed(count)))
            }
            Ok(Some(MgmtResponse::Error { kind, message, .. })) => {
                Some(Err(ClientError::Failed { kind, message }))
            }
            Ok(Some(_)) | Ok(None) => None,
            Err(e) => Some(Err(ClientError::Unreachable {
                reason: e.to_string(),
            })),
        }
    }
}

fn addr_strings(addr: &EndpointAddr) -> Vec<String> {
    addr.ip_addrs().map(ToString::to_string).collect()
}

impl IrohRaftManagementClient {
    /// A client that knows these members and is admitted because its key is a member or on
    /// the nodes' allowlist (or with `ticket`). `key` is its identity (`None`: a fresh one).
    pub async fn connect_with(
        key: Option<SecretKey>,
        members: Vec<EndpointAddr>,
        ticket: Option<&Ticket>,
    ) -> Result<Self, ClientError> {
        if members.is_empty() {
            return Err(ClientError::Unreachable {
                reason: "no member address given".into(),
            });
        }
        let key = key.unwrap_or_else(SecretKey::generate);
        let endpoint = bind_offline_endpoint(key, ([0, 0, 0, 0], 0).into())
            .await
            .map_err(|e| ClientError::Unreachable {
                reason: e.to_string(),
            })?;
        Self::connect_on(endpoint, members, ticket).await
    }

    /// Like [`Self::connect_with`], on an endpoint of the caller's (the client closes it at
    /// [`Self::close`]).
    pub async fn connect_on(
        endpoint: Endpoint,
        members: Vec<EndpointAddr>,
        ticket: Option<&Ticket>,
    ) -> Result<Self, ClientError> {
        if members.is_empty() {
            return Err(ClientError::Unreachable {
                reason: "no member address given".into(),
            });
        }
        let client = Self {
            inner: Arc::new(Inner {
                endpoint,
                ticket: ticket.map(ToString::to_string),
                members: Mutex::new(members),
                ids: Mutex::new(HashMap::new()),
                moving: AtomicBool::new(false),
                current: Mutex::new(None),
                timeout: Duration::from_secs(10),
            }),
        };
        if let Err(e) = client.connection().await {
            client.inner.endpoint.close().await;
            return Err(e);
        }
        // Learn the membership and go to the leader, if one is known.
        let _ = client.status().await;
        Ok(client)
    }

    /// Connects to any of `members` (raft id and address), failing over between them.
    pub async fn connect_to_members(
        members: Vec<(NodeId, EndpointAddr)>,
    ) -> Result<Self, ClientError> {
        Self::connect_with(None, members.into_iter().map(|(_, a)| a).collect(), None).await
    }

    /// Finds the members of cluster `name` on the local network (mDNS, see [`crate::lan`]) for
    /// up to `wait` and connects to them. Admission is as always: `key` must be on the nodes'
    /// allowlist ([`crate::RaftClusterBuilder::mgmt_allow`]), or `ticket` must be valid; finding
    /// a cluster grants nothing.
    pub async fn connect_to_cluster(
        name: &str,
        wait: Duration,
        key: Option<SecretKey>,
        ticket: Option<&Ticket>,
    ) -> Result<Self, ClientError> {
        let members =
            crate::lan::find_members(name, wait)
                .await
                .map_err(|e| ClientError::Unreachable {
                    reason: e.to_string(),
                })?;
        if members.is_empty() {
            return Err(ClientError::Unreachable {
                reason: format!("no member of cluster '{name}' answered on the local network"),
            });
        }
        Self::connect_with(key, members, ticket).await
    }

    /// Connects with an admin or read-only ticket, to the members it names.
    pub async fn connect(ticket: &Ticket) -> Result<Self, ClientError> {
        Self::connect_with(None, ticket.members.clone(), Some(ticket)).await
    }

    /// The role the cluster granted, and the node this client talks to.
    pub async fn session(&self) -> Option<(NodeId, MgmtRole)> {
        let current = self.inner.current.lock().await;
        current.as_ref().map(|c| (c.node_id, c.role))
    }

    /// This client's endpoint id.
    pub fn id(&self) -> iroh::EndpointId {
        self.inner.endpoint.id()
    }

    /// Closes the connection and the client's endpoint.
    pub async fn close(&self) {
        if let Some(c) = self.inner.current.lock().await.take() {
            c.conn
                .close(CloseCode::Normal.to_varint(), b"client closed");
        }
        self.inner.endpoint.close().await;
    }

    async fn hello(&self, addr: EndpointAddr) -> Result<Session, ClientError> {
        let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable {
            reason: e.to_string(),
        };
        let conn = self
            .inner
            .endpoint
            .connect(addr, MGMT_ALPN)
            .await
            .map_err(|e| unreachable(&e))?;
        let hello = MgmtRequest::Hello {
            version: MGMT_VERSION,
            ticket: self.inner.ticket.clone(),
        };
        let answer = hello_exchange(&conn, &hello).await;
        match answer {
            Ok(MgmtResponse::Welcome { node_id, role }) => {
                let leader = Arc::new(AtomicU64::new(0));
                let lanes = Arc::new(Lanes::open(&conn, &leader).await?);
                Ok(Session {
                    conn,
                    node_id,
                    role,
                    lanes,
                    leader,
                })
            }
            Ok(other) => Err(ClientError::Codec(format!("unexpected answer {other:?}"))),
            Err(_) => match conn.close_reason() {
                // This node is busy with this key's connections: another member may not be.
                Some(iroh::endpoint::ConnectionError::ApplicationClosed(c))
                    if CloseCode::from_u64(c.error_code.into_inner())
                        == Some(CloseCode::TooManyConnections) =>
                {
                    Err(unreachable(&String::from_utf8_lossy(&c.reason)))
                }
                Some(iroh::endpoint::ConnectionError::ApplicationClosed(c)) => {
                    Err(ClientError::Refused {
                        reason: String::from_utf8_lossy(&c.reason).into_owned(),
                    })
                }
                other => Err(unreachable(&format!("{other:?}"))),
            },
        }
    }

    /// The current session, or a new one with the first member that admits this client.
    async fn connection(&self) -> Result<Session, ClientError> {
        let mut current = self.inner.current.lock().await;
        if let Some(c) = current.as_ref() {
            if c.conn.close_reason().is_none() {
                return Ok(c.clone());
            }
            // Its node went away: try it last.
            let gone = c.conn.remote_id();
            let mut members = self.inner.members.lock().await;
            if let Some(pos) = members.iter().position(|m| m.id == gone) {
                let m = members.remove(pos);
                members.push(m);
            }
        }
        let members = self.inner.members.lock().await.clone();
        let mut last = ClientError::Unreachable {
            reason: "no member".into(),
        };
        // A member that does not answer a dial within DIAL_TIMEOUT is skipped for the next.
        for addr in members {
            match tokio::time::timeout(DIAL_TIMEOUT.min(self.inner.timeout), self.hello(addr)).await
            {
                Ok(Ok(c)) => {
                    *current = Some(c.clone());
                    return Ok(c);
                }
                // A refusal is the cluster's policy: another member would say the same.
                Ok(Err(e @ ClientError::Refused { .. })) => return Err(e),
                Ok(Err(e)) => last = e,
                Err(_) => last = ClientError::Timeout(DIAL_TIMEOUT.min(self.inner.timeout)),
            }
        }
        Err(last)
    }

    /// Drops the current connection (its node stopped answering) so the next call fails over.
    async fn drop_connection(&self, conn: &Connection) {
        let mut current = self.inner.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|c| c.conn.stable_id() == conn.stable_id())
        {
            *current = None;
            // Try the others first next time.
            let mut members = self.inner.members.lock().await;
            if members.len() > 1 {
                members.rotate_left(1);
            }
        }
    }

    /// Sends one request, failing over to other members while they are unreachable or have no
    /// leader, until the client's timeout. A change or command whose connection was lost
    /// after sending is not sent again ([`ClientError::OutcomeUnknown`]).
    async fn request(&self, req: MgmtRequest) -> Result<MgmtResponse, ClientError> {
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        let resendable = matches!(
            req,
            MgmtRequest::Status
                | MgmtRequest::Health
                | MgmtRequest::Read { .. }
                | MgmtRequest::Snapshot
                | MgmtRequest::MintTicket { .. }
        );
        loop {
            let session = self.connection().await?;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let answer = tokio::time::timeout(remaining, session.lanes.call(req.clone())).await;
            if let Ok(Ok(_)) = &answer {
                self.follow_leader(&session);
            }
            let retry = match answer {
                Err(_) => {
                    // The node (or this connection) is stuck: the next call goes elsewhere.
                    self.drop_connection(&session.conn).await;
                    return Err(ClientError::Timeout(self.inner.timeout));
                }
                Ok(Ok(MgmtResponse::Error {
                    kind: MgmtErrorKind::Forbidden,
                    message,
                    ..
                })) => return Err(ClientError::Forbidden(message)),
                Ok(Ok(MgmtResponse::Error {
                    kind: MgmtErrorKind::Unavailable,
                    message,
                    ..
                })) => ClientError::Failed {
                    kind: MgmtErrorKind::Unavailable,
                    message,
                },
                Ok(Ok(MgmtResponse::Error {
                    kind: MgmtErrorKind::NodeDown,
                    message,
                    ..
                })) => {
                    // That node is out of service: fail over.
                    self.drop_connection(&session.conn).await;
                    ClientError::Failed {
                        kind: MgmtErrorKind::NodeDown,
                        message,
                    }
                }
                Ok(Ok(MgmtResponse::Error {
                    kind: MgmtErrorKind::Unknown,
                    message,
                    ..
                })) => {
                    // Timed out or interrupted there (the node may be stopping): the outcome
                    // is the caller's to find out; the next call goes elsewhere.
                    self.drop_connection(&session.conn).await;
                    return Err(ClientError::Failed {
                        kind: MgmtErrorKind::Unknown,
                        message,
                    });
                }
                Ok(Ok(MgmtResponse::Error { kind, message, .. })) => {
                    return Err(ClientError::Failed { kind, message });
                }
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(LaneError::Codec(e))) => return Err(ClientError::Codec(e)),
                Ok(Err(LaneError::NotSent(reason))) => {
                    self.drop_connection(&session.conn).await;
                    ClientError::Unreachable { reason }
                }
                Ok(Err(LaneError::Lost(reason))) => {
                    self.drop_connection(&session.conn).await;
                    if !resendable {
                        return Err(ClientError::OutcomeUnknown { reason });
                    }
                    ClientError::Unreachable { reason }
                }
            };
            if tokio::time::Instant::now() + Duration::from_millis(50) >= deadline {
                return Err(retry);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Moves to the leader, in the background, when the node this client talks to names
    /// another one: writes then take no extra hop (a follower would forward them meanwhile).
    fn follow_leader(&self, session: &Session) {
        let leader = session.leader.load(Ordering::Relaxed);
        if leader == 0
            || leader == session.node_id
            || self.inner.moving.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (this, lanes) = (self.clone(), session.lanes.clone());
        tokio::spawn(async move {
            if !this.move_to(leader, &lanes).await {
                // Not now (it may be down, or not the leader any more): try again later.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            this.inner.moving.store(false, Ordering::Release);
        });
    }

    /// Connects to `leader` and makes it the current session; `false` if that failed.
    async fn move_to(&self, leader: NodeId, lanes: &Lanes) -> bool {
        let known = self.inner.ids.lock().await.get(&leader).cloned();
        let Some(addr) = known else {
            // A leader this client has not heard of: learn the members (which moves there).
            let status =
                tokio::time::timeout(self.inner.timeout, lanes.call(MgmtRequest::Status)).await;
            return match status {
                Ok(Ok(MgmtResponse::Status(status))) => {
                    self.learn(&status).await;
                    true
                }
                _ => false,
            };
        };
        match tokio::time::timeout(DIAL_TIMEOUT.min(self.inner.timeout), self.hello(addr)).await {
            Ok(Ok(session)) if session.node_id == leader => {
                // The old session closes once its calls in flight are answered.
                *self.inner.current.lock().await = Some(session);
                true
            }
            _ => false,
        }
    }

    /// The cluster as the connected node sees it. Also teaches the client the members'
    /// addresses, and moves its connection to the leader.
    pub async fn status(&self) -> Result<MgmtStatus, ClientError> {
        let MgmtResponse::Status(status) = self.request(MgmtRequest::Status).await? else {
            return Err(ClientError::Codec("unexpected answer to Status".into()));
        };
        self.learn(&status).await;
        Ok(status)
    }

    async fn learn(&self, status: &MgmtStatus) {
        let addrs: Vec<(NodeId, EndpointAddr)> = status
            .members
            .iter()
            .filter_map(|m| Some((m.id, addr_from_wire(&m.key, &m.addrs)?)))
            .collect();
        self.inner.ids.lock().await.extend(addrs.iter().cloned());
        {
            let mut members = self.inner.members.lock().await;
            for (_, a) in &addrs {
                if !members.iter().any(|m| m.id == a.id) {
                    members.push(a.clone());
                }
            }
            // The leader first: it is where writes go.
            if let Some(pos) = addrs
                .iter()
                .find(|(id, _)| *id == status.leader)
                .and_then(|(_, a)| members.iter().position(|m| m.id == a.id))
            {
                let leader = members.remove(pos);
                members.insert(0, leader);
            }
        }
        let on_leader = self
            .inner
            .current
            .lock()
            .await
            .as_ref()
            .is_some_and(|c| c.node_id == status.leader);
        if status.leader != 0 && !on_leader {
            let leader = addrs.into_iter().find(|(id, _)| *id == status.leader);
            if let Some((_, addr)) = leader
                && let Ok(Ok(c)) = tokio::time::timeout(self.inner.timeout, self.hello(addr)).await
            {
                // The old connection closes once its calls in flight are answered and its
                // lanes are dropped.
                *self.inner.current.lock().await = Some(c);
            }
        }
    }

    /// Health as the connected node sees it.
    pub async fn health(&self) -> Result<MgmtHealth, ClientError> {
        match self.request(MgmtRequest::Health).await? {
            MgmtResponse::Health(h) => Ok(h),
            other => Err(ClientError::Codec(format!("unexpected answer {other:?}"))),
        }
    }

    /// Replicates an application command (the state machine's `Command` type) and returns the
    /// state machine's response.
    pub async fn propose<C: Serialize, R: DeserializeOwned>(
        &self,
        command: &C,
    ) -> Result<R, ClientError> {
        let command =
            postcard::to_allocvec(command).map_err(|e| ClientError::Codec(e.to_string()))?;
        match self.request(MgmtRequest::Propose { command }).await? {
            MgmtResponse::Proposed { response } => {
                postcard::from_bytes(&response).map_err(|e| ClientError::Codec(e.to_string()))
            }
            other => Err(ClientError::Codec(format!("unexpected answer {other:?}"))),
        }
    }

    /// A linearizable read through the nodes' remote reader (for the built-in KV store: the
    /// query is the key, the answer an `Option<String>`).
    pub async fn read<Q: Serialize, A: DeserializeOwned>(
        &self,
        query: &Q,
    ) -> Result<A, ClientError> {
        let query = postcard::to_allocvec(query).map_err(|e| ClientError::Codec(e.to_string()))?;
        match self.request(MgmtRequest::Read { query }).await? {
            MgmtResponse::ReadResult { value } => {
                postcard::from_bytes(&value).map_err(|e| ClientError::Codec(e.to_string()))
            }
            other => Err(ClientError::Codec(format!("unexpected answer {other:?}"))),
        }
    }

    async fn change(&self, req: MgmtRequest) -> Result<u64, ClientError> {
        match self.request(req).await? {
            MgmtResponse::Changed { index } => Ok(index),
            other => Err(ClientError::Codec(format!("unexpected answer {other:?}"))),
        }
    }

    /// Adds a learner.
    pub async fn add_learner(&self, id: NodeId, addr: &EndpointAddr) -> Result<u64, ClientError> {
        let (key, addrs) = (*addr.id.as_bytes(), addr_strings(addr));
        self.change(MgmtRequest::AddLearner { id, key, addrs })
            .await
    }

    /// Adds a voter.
    pub async fn add_voter(&self, id: NodeId, addr: &EndpointAddr) -> Result<u64, ClientError> {
        let (key, addrs) = (*addr.id.as_bytes(), addr_strings(addr));
        self.change(MgmtRequest::AddVoter { id, key, addrs }).await
    }

    /// Adds a learner and promotes it once it is within `max_lag` entries of the leader.
    pub async fn join(
        &self,
        id: NodeId,
        addr: &EndpointAddr,
        max_lag: u64,
    ) -> Result<u64, ClientError> {
        let (key, addrs) = (*addr.id.as_bytes(), addr_strings(addr));
        self.change(MgmtRequest::Join {
            id,
            key,
            addrs,
            max_lag,
        })
        .await
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, id: NodeId) -> Result<u64, ClientError> {
        self.change(MgmtRequest::Promote { id }).await
    }

    /// Removes a member (the leader hands over first if it is the one removed).
    pub async fn remove_member(&self, id: NodeId) -> Result<u64, ClientError> {
        self.change(MgmtRequest::Remove { id }).await
    }

    /// Hands leadership to `to`, or to the most up-to-date voter; returns the new leader and how
    /// long it took.
    pub async fn transfer_leader(
        &self,
        to: Option<NodeId>,
    ) -> Result<(NodeId, Duration), ClientError> {
        let to = to.unwrap_or(0);
        match self.request(MgmtRequest::TransferLeader { to }).await? {
            MgmtResponse::Transferred { leader, elapsed_ms } => {
                Ok((leader, Duration::from_millis(elapsed_ms)))
            }
            other => Err(ClientError::Codec(format!("unexpected answer {other:?}"))),
        }
    }

    /// Takes a snapshot on the connected node; returns the index it covers.
    pub async fn snapshot(&self) -> Result<u64, ClientError> {
        match self.request(MgmtRequest::Snapshot).await? {
            MgmtResponse::SnapshotTaken { index } => Ok(index),
            other => Err(ClientError::Codec(format!("unexpected answer {other:?}"))),
        }
    }

    /// Mints a ticket signed by the connected member (admin only).
    pub async fn mint_ticket(
        &self,
        role: iroh_raft_actors::TicketRole,
        valid_for: Duration,
    ) -> Result<Ticket, ClientError> {
        let role = match role {
            iroh_raft_actors::TicketRole::Join => 0,
            iroh_raft_actors::TicketRole::Admin => 1,
            _ => 2,
        };
        let req = MgmtRequest::MintTicket {
            role,
            valid_for_secs: valid_for.as_secs(),
        };
        match self.request(req).await? {
            MgmtResponse::Ticket { text } => text
                .parse()
                .map_err(|e: iroh_raft_actors::TicketError| ClientError::Codec(e.to_string())),
            other => Err(ClientError::Codec(format!("unexpected answer {other:?}"))),
        }
    }

    /// Streams the connected node's events from now on.
    pub async fn subscribe(&self) -> Result<EventSubscription, ClientError> {
        self.resume(0, 0).await
    }

    /// Streams the connected node's events after event `after` of run `epoch` (from an earlier
    /// [`EventSubscription`]): the events in between come first while the node still holds them
    /// (else a "missed N" marker). On another node, or after the node restarted, the run differs
    /// and the stream starts from now (compare [`EventSubscription::epoch`]).
    pub async fn resume(&self, epoch: u64, after: u64) -> Result<EventSubscription, ClientError> {
        let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable {
            reason: e.to_string(),
        };
        let session = self.connection().await?;
        // A lane of its own, so that events never hold up other requests.
        let (mut send, mut recv) = session.conn.open_bi().await.map_err(|e| unreachable(&e))?;
        let mut batch = MgmtBatch::new();
        let request = MgmtRequest::Subscribe { epoch, after };
        batch
            .push(&MgmtCall { id: 1, request })
            .map_err(|e| ClientError::Codec(e.to_string()))?;
        send.write_all(batch.bytes())
            .await
            .map_err(|e| unreachable(&e))?;
        let mut reader = MgmtReader::new();
        // Events start once the node confirms the subscription.
        let confirmed = tokio::time::timeout(self.inner.timeout, reader.next_reply(&mut recv))
            .await
            .map_err(|_| ClientError::Timeout(self.inner.timeout))?;
        let (epoch, last_seq) = match confirmed.map(|r| r.map(|r| r.response)) {
            Ok(Some(MgmtResponse::Subscribed { epoch, after })) => (epoch, after),
            Ok(Some(MgmtResponse::Error { kind, message, .. })) => {
                return Err(ClientError::Failed { kind, message });
            }
            other => {
                return Err(unreachable(&format!(
                    "subscription not confirmed: {other:?}"
                )));
            }
        };
        Ok(EventSubscription {
            recv,
            reader,
            _send: send,
            _conn: session.conn,
            epoch,
            last_seq,
        })
    }
}

/// The Hello on a connection's first stream, and its answer.
async fn hello_exchange(conn: &Connection, req: &MgmtRequest) -> Result<MgmtResponse, ClientError> {
    let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable {
        reason: e.to_string(),
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| unreachable(&e))?;
    let bytes = encode_mgmt(req).map_err(|e| ClientError::Codec(e.to_string()))?;
    send.write_all(&bytes).await.map_err(|e| unreachable(&e))?;
    let _ = send.finish();
    match read_mgmt_response(&mut recv).await {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err(unreachable(&"the node closed the stream without answering")),
        Err(e) => Err(unreachable(&e)),
    }
}
