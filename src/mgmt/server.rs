//! The member side of the management protocol ([`MgmtProtocol`], ALPN
//! [`iroh_raft_actors::wire::MGMT_ALPN`]): admits a client at its first stream, then serves each
//! of its lanes (pipelined request streams) in a task of its own, in which the lane's calls run
//! concurrently by sending the node's actors the same messages the facade sends.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use futures_util::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use iroh::{
    EndpointId,
    endpoint::{Connection, RecvStream, SendStream},
    protocol::{AcceptError, ProtocolHandler},
};
use iroh_raft_actors::{
    ClusterEvent, ClusterId, EventItem, MemberRole, ProposeError, ReadError, Role, StateMachine,
    Ticket, TicketRole, TransferError,
    wire::{
        CloseCode, MGMT_VERSION, MgmtBatch, MgmtCall, MgmtErrorKind, MgmtHealth, MgmtMember,
        MgmtReader, MgmtReply, MgmtRequest, MgmtResponse, MgmtRole, MgmtStatus, encode_mgmt,
        read_mgmt_request,
    },
};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use crate::{JoinOptions, RaftCluster, cluster::WeakCluster, net::addr_from_wire};

/// How long a client has to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Admitted connections one endpoint (key) may hold to this node at once.
const MAX_CONNECTIONS_PER_KEY: usize = 16;

/// Request streams (lanes) one connection may have open at once; a lane beyond it is refused.
const MAX_LANES: usize = 64;

/// Calls one lane may have in progress; beyond it the lane is not read (the client's stream
/// flow control pushes back) until one completes.
const MAX_LANE_CALLS: usize = 1024;

/// Subscriptions one connection may hold at once; another is refused.
const MAX_SUBSCRIPTIONS: usize = 32;

/// Bytes of requests one connection may have in progress over all its lanes (each running
/// call holds its decoded request); beyond it its lanes are not read until calls complete.
const CONNECTION_BYTES: usize = 64 * 1024 * 1024;

/// How often a lane held back by [`CONNECTION_BYTES`] looks again.
const BUDGET_RECHECK: Duration = Duration::from_millis(10);

/// What one connection's lanes share.
#[derive(Clone)]
struct Limits {
    /// Bytes of requests in progress.
    bytes: Arc<AtomicUsize>,
    /// Subscriptions left.
    subscriptions: Arc<Semaphore>,
}

/// Admitted connections per key.
type ConnectionCounts = Arc<std::sync::Mutex<HashMap<EndpointId, usize>>>;

/// One admitted connection of a key, counted while it lives.
struct ConnectionSlot {
    counts: ConnectionCounts,
    key: EndpointId,
}

impl ConnectionSlot {
    /// A slot for `key`, unless it holds [`MAX_CONNECTIONS_PER_KEY`] already.
    fn take(counts: &ConnectionCounts, key: EndpointId) -> Option<Self> {
        let mut map = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(key).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_KEY {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            key,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Bytes counted against a connection's budget while a call runs.
struct Held {
    counter: Arc<AtomicUsize>,
    bytes: usize,
}

impl Held {
    fn new(counter: &Arc<AtomicUsize>, bytes: usize) -> Self {
        counter.fetch_add(bytes, Ordering::Relaxed);
        Self {
            counter: counter.clone(),
            bytes,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Replies a lane holds before its handlers wait for the client to read (small, so that a
/// subscriber that reads slowly is soon told what it missed instead of buffering events).
const LANE_QUEUE: usize = 64;

/// A lane writes up to this many bytes of replies at once.
const WRITE_BATCH: usize = 64 * 1024;

/// Answers a linearizable read: decodes the query, runs it on the state machine, encodes the
/// answer.
pub type RemoteReader<S> = Arc<dyn Fn(&S, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// The management protocol handler. Cheap to clone.
pub struct MgmtProtocol<S: StateMachine> {
    cluster: Arc<OnceLock<WeakCluster<S>>>,
    allowlist: Arc<BTreeMap<EndpointId, MgmtRole>>,
    reader: Option<RemoteReader<S>>,
    /// The leader this node last heard of (0: none), kept by a task that follows the node's
    /// events; every reply carries it, so clients find the leader without asking.
    leader: Arc<AtomicU64>,
    /// Admitted connections per key.
    connections: ConnectionCounts,
}

impl<S: StateMachine> Clone for MgmtProtocol<S> {
    fn clone(&self) -> Self {
        Self {
            cluster: self.cluster.clone(),
            allowlist: self.allowlist.clone(),
            reader: self.reader.clone(),
            leader: self.leader.clone(),
            connections: self.connections.clone(),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for MgmtProtocol<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgmtProtocol")
            .field("allowlist", &self.allowlist.len())
            .field("reads", &self.reader.is_some())
            .finish_non_exhaustive()
    }
}

fn error(kind: MgmtErrorKind, message: impl ToString, leader_hint: Option<u64>) -> MgmtResponse {
    MgmtResponse::Error {
        kind,
        message: message.to_string(),
        leader_hint: leader_hint.unwrap_or(0),
    }
}

fn propose_error(e: &ProposeError) -> MgmtResponse {
    let kind = match e {
        ProposeError::NotLeader { .. }
        | ProposeError::LeaderUnreachable { .. }
        | ProposeError::Dropped { .. } => MgmtErrorKind::Unavailable,
        // A node that stops may have appended the command before it did: the outcome is
        // unknown, so the client must not send it elsewhere.
        ProposeError::Timeout
        | ProposeError::Interrupted
        | ProposeError::ShuttingDown
        | ProposeError::Fatal(_) => MgmtErrorKind::Unknown,
        ProposeError::Membership(_) | ProposeError::TooLarge { .. } => MgmtErrorKind::Refused,
        ProposeError::Codec(_) => MgmtErrorKind::Malformed,
        _ => MgmtErrorKind::NodeDown,
    };
    let hint = match e {
        ProposeError::NotLeader { leader_hint } => *leader_hint,
        _ => None,
    };
    error(kind, e, hint)
}

fn read_error(e: &ReadError) -> MgmtResponse {
    let kind = match e {
        ReadError::NoLeader | ReadError::LeadershipChanged | ReadError::Interrupted => {
            MgmtErrorKind::Unavailable
        }
        ReadError::Timeout => MgmtErrorKind::Unknown,
        _ => MgmtErrorKind::NodeDown,
    };
    error(kind, e, None)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
        _ => "follower",
    }
}

async fn send(send: &mut SendStream, msg: &MgmtResponse) -> bool {
    match encode_mgmt(msg) {
        Ok(bytes) => send.write_all(&bytes).await.is_ok(),
        Err(e) => {
            warn!(error = %e, "management response does not encode");
            false
        }
    }
}

impl<S: StateMachine> MgmtProtocol<S> {
    pub(crate) fn new(
        allowlist: BTreeMap<EndpointId, MgmtRole>,
        reader: Option<RemoteReader<S>>,
    ) -> Self {
        Self {
            cluster: Arc::new(OnceLock::new()),
            allowlist: Arc::new(allowlist),
            reader,
            leader: Arc::new(AtomicU64::new(0)),
            connections: ConnectionCounts::default(),
        }
    }

    /// Binds the handler to its node once the node exists, and starts following its leader.
    pub(crate) fn attach(&self, cluster: &RaftCluster<S>) {
        if self.cluster.set(cluster.downgrade()).is_err() {
            return;
        }
        let (weak, leader) = (cluster.downgrade(), self.leader.clone());
        tokio::spawn(async move {
            let Some(cluster) = weak.upgrade() else {
                return;
            };
            // Subscribe first, then read the current leader: no election falls in between.
            let Ok(mut events) = cluster.subscribe().await else {
                return;
            };
            let current =
                |cluster: RaftCluster<S>| async move { cluster.leader().await.unwrap_or(0) };
            leader.store(current(cluster).await, Ordering::Relaxed);
            // Ends when the node's event bus stops.
            while let Some(item) = events.next().await {
                match item {
                    EventItem::Event(ClusterEvent::LeaderElected { new_leader, .. }) => {
                        leader.store(new_leader, Ordering::Relaxed);
                    }
                    EventItem::Missed(_) => match weak.upgrade() {
                        Some(cluster) => leader.store(current(cluster).await, Ordering::Relaxed),
                        None => return,
                    },
                    _ => {}
                }
            }
        });
    }

    fn cluster(&self) -> Option<RaftCluster<S>> {
        self.cluster.get().and_then(WeakCluster::upgrade)
    }

    /// The role a client gets: members are admins, then the allowlist, then its ticket.
    async fn admit(&self, remote: EndpointId, ticket: Option<String>) -> Result<MgmtRole, String> {
        let cluster = self.cluster().ok_or("node is not running")?;
        let view = cluster.members_view().await.map_err(|e| e.to_string())?;
        if view.members.iter().any(|m| m.addr.id == remote) {
            return Ok(MgmtRole::Admin);
        }
        if let Some(role) = self.allowlist.get(&remote) {
            return Ok(*role);
        }
        let ticket: Ticket = ticket
            .ok_or("not a member, not on the allowlist, and no ticket")?
            .parse()
            .map_err(|e: iroh_raft_actors::TicketError| e.to_string())?;
        ticket
            .check(&ClusterId(view.cluster_id), SystemTime::now(), |k| {
                view.members.iter().any(|m| m.addr.id == *k)
            })
            .map_err(|e| e.to_string())?;
        match ticket.role {
            TicketRole::Admin => Ok(MgmtRole::Admin),
            TicketRole::ReadOnly => Ok(MgmtRole::ReadOnly),
            _ => Err(format!(
                "a {} ticket grants no management access",
                ticket.role
            )),
        }
    }

    async fn serve(&self, conn: &Connection) {
        let remote = conn.remote_id();
        let Ok(Ok((mut tx, mut rx))) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await
        else {
            return;
        };
        let hello = tokio::time::timeout(HELLO_TIMEOUT, read_mgmt_request(&mut rx)).await;
        let ticket = match hello {
            Ok(Ok(Some(MgmtRequest::Hello { version, ticket }))) if version == MGMT_VERSION => {
                ticket
            }
            Ok(Ok(Some(MgmtRequest::Hello { version, .. }))) => {
                let why = format!(
                    "management version {version} unknown; this node speaks {MGMT_VERSION}"
                );
                conn.close(CloseCode::VersionMismatch.to_varint(), why.as_bytes());
                return;
            }
            _ => {
                conn.close(
                    CloseCode::ProtocolViolation.to_varint(),
                    b"the first stream must carry a Hello",
                );
                return;
            }
        };
        let role = match self.admit(remote, ticket).await {
            Ok(role) => role,
            Err(why) => {
                warn!(endpoint = %remote.fmt_short(), %why, "management client refused");
                conn.close(CloseCode::NotAMember.to_varint(), why.as_bytes());
                return;
            }
        };
        let Some(_slot) = ConnectionSlot::take(&self.connections, remote) else {
            let why = format!("at most {MAX_CONNECTIONS_PER_KEY} connections per key");
            warn!(endpoint = %remote.fmt_short(), "management client over its connections");
            conn.close(CloseCode::TooManyConnections.to_varint(), why.as_bytes());
            return;
        };
        let node_id = self.cluster().map_or(0, |c| c.node_id());
        send(&mut tx, &MgmtResponse::Welcome { node_id, role }).await;
        let _ = tx.finish();
        debug!(endpoint = %remote.fmt_short(), ?role, "management client admitted");
        let limits = Limits {
            bytes: Arc::new(AtomicUsize::new(0)),
            subscriptions: Arc::new(Semaphore::new(MAX_SUBSCRIPTIONS)),
        };
        let mut lanes = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                Some(_) = lanes.join_next() => {}
                stream = conn.accept_bi() => {
                    let Ok((mut tx, mut rx)) = stream else { return };
                    if lanes.len() >= MAX_LANES {
                        let why = format!("more than {MAX_LANES} request streams at once");
                        let response = error(MgmtErrorKind::Refused, why, None);
                        let mut batch = MgmtBatch::new();
                        let leader = self.leader.load(Ordering::Relaxed);
                        let reply = MgmtReply { id: 0, leader, response };
                        if batch.push(&reply).is_ok() {
                            let _ = tx.write_all(batch.bytes()).await;
                        }
                        let _ = tx.finish();
                        let _ = rx.stop(CloseCode::ProtocolViolation.to_varint());
                        continue;
                    }
                    lanes.spawn(self.clone().lane(role, tx, rx, limits.clone()));
                }
            }
        }
    }

    /// Serves one lane. Calls run concurrently inside this task (no task per call: a commit
    /// that answers hundreds of proposals at once wakes this task once, and their replies go
    /// out in one write); a subscription runs in a task of its own and sends its events here.
    async fn lane(self, role: MgmtRole, mut tx: SendStream, mut rx: RecvStream, limits: Limits) {
        let (events_out, mut events) = mpsc::channel::<MgmtReply>(LANE_QUEUE);
        let mut events_out = Some(events_out);
        let mut running: FuturesUnordered<BoxFuture<'static, MgmtReply>> = FuturesUnordered::new();
        let mut reader = MgmtReader::new();
        let mut batch = MgmtBatch::new();
        let stopped = tx.stopped();
        tokio::pin!(stopped);
        // Open while a subscription of this lane may still send events.
        let mut events_open = true;
        loop {
            let reading = events_out.is_some();
            if !reading && running.is_empty() && !events_open {
                break;
            }
            let room = limits.bytes.load(Ordering::Relaxed) < CONNECTION_BYTES;
            let first = tokio::select! {
                call = reader.next_call(&mut rx), if reading && room && running.len() < MAX_LANE_CALLS => {
                    match call {
                        Ok(Some(MgmtCall { id, request })) if id != 0 => {
                            let held = Held::new(&limits.bytes, reader.last_len());
                            if let MgmtRequest::Subscribe { epoch, after } = request {
                                let Ok(permit) = limits.subscriptions.clone().try_acquire_owned() else {
                                    let why = format!(
                                        "at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
                                    );
                                    let response = error(MgmtErrorKind::Refused, why, None);
                                    running.push(std::future::ready(MgmtReply { id, leader: 0, response }).boxed());
                                    continue;
                                };
                                drop(held);
                                let out = events_out.clone().expect("reading");
                                let cluster = self.cluster();
                                tokio::spawn(async move {
                                    let response = match cluster {
                                        Some(cluster) => subscribe(&cluster, id, epoch, after, &out).await,
                                        None => Some(node_down()),
                                    };
                                    if let Some(response) = response {
                                        let _ = out.send(MgmtReply { id, leader: 0, response }).await;
                                    }
                                    drop(permit);
                                });
                                continue;
                            }
                            let this = self.clone();
                            running.push(async move {
                                let response = this.answer(role, request).await;
                                drop(held);
                                MgmtReply { id, leader: 0, response }
                            }.boxed());
                            continue;
                        }
                        // The client finished its side: answer what is running, then finish.
                        Ok(None) => {
                            events_out = None;
                            continue;
                        }
                        // The lane's framing is lost (or a call used the reserved id 0): say
                        // why (id 0 names the lane), stop reading it, and end it once the calls
                        // already read are answered.
                        other => {
                            events_out = None;
                            let _ = rx.stop(CloseCode::ProtocolViolation.to_varint());
                            let why = match other {
                                Err(e) => e.to_string(),
                                _ => "call id 0 is reserved".to_string(),
                            };
                            MgmtReply { id: 0, leader: 0, response: error(MgmtErrorKind::Malformed, why, None) }
                        }
                    }
                }
                Some(reply) = running.next(), if !running.is_empty() => reply,
                reply = events.recv(), if events_open => match reply {
                    Some(reply) => reply,
                    None => {
                        events_open = false;
                        continue;
                    }
                },
                // Over the connection's byte budget: look again once other lanes had a moment
                // to finish calls (this lane's own completions wake it anyway).
                _ = tokio::time::sleep(BUDGET_RECHECK), if reading && !room => continue,
                _ = &mut stopped => return,
            };
            // Everything else that is ready goes in the same write.
            batch.clear();
            let leader = self.leader.load(Ordering::Relaxed);
            push_reply(&mut batch, first, leader);
            while batch.len() < WRITE_BATCH {
                if let Some(Some(reply)) = running.next().now_or_never() {
                    push_reply(&mut batch, reply, leader);
                } else if let Ok(reply) = events.try_recv() {
                    push_reply(&mut batch, reply, leader);
                } else {
                    break;
                }
            }
            if tx.write_all(batch.bytes()).await.is_err() {
                return;
            }
        }
        let _ = tx.finish();
    }

    /// The answer to one call (other than a subscription).
    async fn answer(&self, role: MgmtRole, request: MgmtRequest) -> MgmtResponse {
        let Some(cluster) = self.cluster() else {
            return node_down();
        };
        let writes = matches!(
            request,
            MgmtRequest::AddLearner { .. }
                | MgmtRequest::AddVoter { .. }
                | MgmtRequest::Join { .. }
                | MgmtRequest::Promote { .. }
                | MgmtRequest::Remove { .. }
                | MgmtRequest::TransferLeader { .. }
                | MgmtRequest::Snapshot
                | MgmtRequest::Propose { .. }
                | MgmtRequest::MintTicket { .. }
        );
        if writes && role != MgmtRole::Admin {
            let msg = "a read-only client may not change the cluster";
            return error(MgmtErrorKind::Forbidden, msg, None);
        }
        match request {
            MgmtRequest::Hello { .. } => error(MgmtErrorKind::Malformed, "Hello twice", None),
            MgmtRequest::Status => status(&cluster).await,
            MgmtRequest::Health => health(&cluster).await,
            MgmtRequest::AddLearner { id, key, addrs } => match addr_from_wire(&key, &addrs) {
                Some(addr) => changed(cluster.add_learner(id, addr).await),
                None => error(MgmtErrorKind::Malformed, "invalid endpoint id", None),
            },
            MgmtRequest::AddVoter { id, key, addrs } => match addr_from_wire(&key, &addrs) {
                Some(addr) => changed(cluster.add_voter(id, addr).await),
                None => error(MgmtErrorKind::Malformed, "invalid endpoint id", None),
            },
            MgmtRequest::Join {
                id,
                key,
                addrs,
                max_lag,
            } => match addr_from_wire(&key, &addrs) {
                Some(addr) => {
                    let options = JoinOptions {
                        max_lag,
                        ..JoinOptions::default()
                    };
                    changed(cluster.join(id, addr, options).await)
                }
                None => error(MgmtErrorKind::Malformed, "invalid endpoint id", None),
            },
            MgmtRequest::Promote { id } => changed(cluster.promote(id).await),
            MgmtRequest::Remove { id } => changed(cluster.remove_member(id).await),
            MgmtRequest::TransferLeader { to } => {
                let to = (to != 0).then_some(to);
                match cluster.transfer_leadership(to).await {
                    Ok(t) => MgmtResponse::Transferred {
                        leader: t.leader,
                        elapsed_ms: t.elapsed.as_millis() as u64,
                    },
                    Err(e) => {
                        let kind = match e {
                            TransferError::NotAVoter(_) | TransferError::NoCandidate => {
                                MgmtErrorKind::Refused
                            }
                            TransferError::NoLeader => MgmtErrorKind::Unavailable,
                            _ => MgmtErrorKind::Unknown,
                        };
                        error(kind, e, None)
                    }
                }
            }
            MgmtRequest::Snapshot => match cluster.trigger_snapshot().await {
                Ok(index) => MgmtResponse::SnapshotTaken { index },
                Err(e) => error(MgmtErrorKind::NodeDown, e, None),
            },
            MgmtRequest::Propose { command } => match cluster.propose_encoded(command).await {
                Ok(response) => match postcard::to_allocvec(&response) {
                    Ok(response) => MgmtResponse::Proposed { response },
                    Err(e) => error(MgmtErrorKind::Malformed, e, None),
                },
                Err(e) => propose_error(&e),
            },
            MgmtRequest::Read { query } => match &self.reader {
                None => error(
                    MgmtErrorKind::Unsupported,
                    "this node serves no remote reads",
                    None,
                ),
                Some(reader) => {
                    let reader = reader.clone();
                    let query: Arc<[u8]> = query.into();
                    match cluster
                        .linearizable_query(move |sm| reader(sm, &query))
                        .await
                    {
                        Ok(Ok(value)) => MgmtResponse::ReadResult { value },
                        Ok(Err(e)) => error(MgmtErrorKind::Malformed, e, None),
                        Err(e) => read_error(&e),
                    }
                }
            },
            MgmtRequest::Subscribe { .. } => error(
                MgmtErrorKind::Malformed,
                "a subscription is served by the lane",
                None,
            ),
            MgmtRequest::MintTicket {
                role,
                valid_for_secs,
            } => {
                let role = match role {
                    0 => Some(TicketRole::Join),
                    1 => Some(TicketRole::Admin),
                    2 => Some(TicketRole::ReadOnly),
                    _ => None,
                };
                match role {
                    None => error(MgmtErrorKind::Malformed, "unknown ticket role", None),
                    Some(role) => {
                        let ttl = Duration::from_secs(valid_for_secs);
                        match cluster.ticket(role, ttl).await {
                            Ok(t) => MgmtResponse::Ticket {
                                text: t.to_string(),
                            },
                            Err(e) => read_error(&e),
                        }
                    }
                }
            }
        }
    }
}

fn node_down() -> MgmtResponse {
    error(MgmtErrorKind::NodeDown, "node is not running", None)
}

/// Frames a reply, stamped with the leader this node knows of, into the batch; an answer too
/// large to send becomes an error for its call.
fn push_reply(batch: &mut MgmtBatch, mut reply: MgmtReply, leader: u64) {
    reply.leader = leader;
    if let Err(e) = batch.push(&reply) {
        warn!(error = %e, "management answer does not encode");
        let response = error(MgmtErrorKind::Refused, format!("the answer {e}"), None);
        let fallback = MgmtReply {
            id: reply.id,
            leader: reply.leader,
            response,
        };
        if let Err(e) = batch.push(&fallback) {
            warn!(error = %e, "management error does not encode");
        }
    }
}

fn changed(result: Result<u64, ProposeError>) -> MgmtResponse {
    match result {
        Ok(index) => MgmtResponse::Changed { index },
        Err(e) => propose_error(&e),
    }
}

async fn status<S: StateMachine>(cluster: &RaftCluster<S>) -> MgmtResponse {
    let (status, view) = match (cluster.status().await, cluster.members_view().await) {
        (Ok(s), Ok(v)) => (s, v),
        (Err(e), _) | (_, Err(e)) => return read_error(&e),
    };
    let members = view
        .members
        .iter()
        .map(|m| {
            let matched = view
                .matched
                .iter()
                .find(|(id, _)| *id == m.node_id)
                .map_or(0, |(_, matched)| *matched);
            let contact = view
                .last_contact
                .iter()
                .find(|(id, _)| *id == m.node_id)
                .map_or(u64::MAX, |(_, d)| d.as_millis() as u64);
            MgmtMember {
                id: m.node_id,
                key: *m.addr.id.as_bytes(),
                addrs: m.addr.ip_addrs().map(ToString::to_string).collect(),
                role: match m.role {
                    MemberRole::Voter => "voter",
                    MemberRole::Learner => "learner",
                    _ => "outgoing",
                }
                .into(),
                matched,
                lag: if view.matched.is_empty() {
                    0
                } else {
                    view.last_index.saturating_sub(matched)
                },
                last_contact_ms: if m.node_id == status.node_id {
                    0
                } else {
                    contact
                },
            }
        })
        .collect();
    MgmtResponse::Status(MgmtStatus {
        node_id: status.node_id,
        cluster_id: view.cluster_id,
        leader: status.leader.unwrap_or(0),
        term: status.term,
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        role: role_name(status.role).into(),
        members,
    })
}

async fn health<S: StateMachine>(cluster: &RaftCluster<S>) -> MgmtResponse {
    let (status, view) = match (cluster.status().await, cluster.members_view().await) {
        (Ok(s), Ok(v)) => (s, v),
        (Err(e), _) | (_, Err(e)) => return read_error(&e),
    };
    let fresh = |id: u64| {
        id == status.node_id
            || view
                .last_contact
                .iter()
                .any(|(p, d)| *p == id && *d < view.election_timeout)
    };
    let voters = status.voters.clone();
    let healthy_voters: Vec<u64> = voters.iter().copied().filter(|&v| fresh(v)).collect();
    let quorum_available = match status.leader {
        Some(l) if l == status.node_id => healthy_voters.len() * 2 > voters.len(),
        Some(l) => fresh(l),
        None => false,
    };
    MgmtResponse::Health(MgmtHealth {
        node_id: status.node_id,
        quorum_available,
        healthy_voters,
        voters,
        storage_ok: cluster.actors().failure().await.is_none(),
        role: role_name(status.role).into(),
        apply_lag: status.commit_index.saturating_sub(status.applied_index),
    })
}

/// Streams events as replies to call `id` until the client stops reading; `Some` is the
/// answer when the subscription could not start.
async fn subscribe<S: StateMachine>(
    cluster: &RaftCluster<S>,
    id: u64,
    epoch: u64,
    after: u64,
    out: &mpsc::Sender<MgmtReply>,
) -> Option<MgmtResponse> {
    let events = if epoch == 0 {
        cluster.subscribe().await
    } else {
        cluster.subscribe_from(epoch, after).await
    };
    let mut events = match events {
        Ok(e) => e,
        Err(e) => return Some(read_error(&e)),
    };
    let subscribed = MgmtResponse::Subscribed {
        epoch: events.epoch(),
        after: events.last_seq(),
    };
    if out
        .send(MgmtReply {
            id,
            leader: 0,
            response: subscribed,
        })
        .await
        .is_err()
    {
        return None;
    }
    loop {
        // Wait for the next event, or for the lane's writer to go (the client went away).
        let item = tokio::select! {
            item = events.next() => item,
            _ = out.closed() => None,
        };
        let Some(item) = item else { break };
        let response = match item {
            EventItem::Event(ev) => match postcard::to_allocvec(&ev) {
                Ok(event) => MgmtResponse::Event {
                    seq: events.last_seq(),
                    event,
                },
                Err(_) => continue,
            },
            EventItem::Missed(count) => MgmtResponse::Missed { count },
        };
        // Waits while the client reads slowly: the event bus then reports what it dropped.
        if out
            .send(MgmtReply {
                id,
                leader: 0,
                response,
            })
            .await
            .is_err()
        {
            break;
        }
    }
    None
}

impl<S: StateMachine> ProtocolHandler for MgmtProtocol<S> {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        self.serve(&conn).await;
        Ok(())
    }
}
