//! [`IrohRaftManagementClient`]: talks to a cluster over the management protocol from outside
//! it. It keeps one connection, to the leader when it knows it (every reply names the leader, and
//! the client moves there in the background: writes then take no extra hop; a follower would
//! forward them anyway), pipelines requests on two lanes of it, and fails over to another member
//! when its node stops answering.
//!
//! What is sent again, and what is not: a request that never left the client (its node was
//! unreachable, the lane had closed, its frame was not entirely written) is sent to another
//! member; so are status, health, reads, snapshots and tickets whatever happened. A proposal or a
//! membership change whose connection was lost after it was sent, that got no answer in time
//! after it was sent, or that the node could not finish (`MgmtErrorKind::Unknown`), is never
//! sent again: the caller gets [`ClientError::OutcomeUnknown`] or [`ClientError::Failed`] and
//! decides.
//!
//! How long a call takes: at most the client's timeout ([`ClientOptions::timeout`], 10 s by
//! default), finding a member included. Members are dialled all at once and the first that
//! admits the client wins, so members that are down cost nothing while another one answers.
//!
//! The error says what the cluster may have done: [`ClientError::Unreachable`] and
//! [`ClientError::Refused`] only when the request provably never left the client;
//! [`ClientError::OutcomeUnknown`] when a change or command may have been delivered;
//! [`ClientError::Timeout`] when a request without effect (status, health, a read, ...) was sent
//! and not answered in time.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use iroh::{Endpoint, EndpointAddr, SecretKey};
use iroh_raft_actors::{
    NodeId, Ticket,
    backup::{HashCheck, SavedBackup},
    wire::{
        CloseCode, MAX_COMMAND_SIZE, MgmtBatch, MgmtCall, MgmtErrorKind, MgmtHealth, MgmtProbe,
        MgmtReader, MgmtRequest, MgmtResponse, MgmtRole, MgmtStatus,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Mutex;

/// How long a backup's stream may go without a reply (the member takes a snapshot before the
/// first one).
const BACKUP_IDLE: Duration = Duration::from_secs(300);
use tracing::Instrument;

use crate::net::{bind_endpoint_with_relays, close_within, transport_config};

mod error;
mod events;
mod kv;
mod lanes;
mod options;
mod session;
mod watch;

pub use error::ClientError;
pub use events::EventSubscription;
use lanes::Session;
pub use options::{ClientOptions, DEFAULT_TIMEOUT};
pub use watch::{KvWatch, WatchStream};

/// How long [`IrohRaftManagementClient::close`] waits for the nodes to acknowledge the close. A
/// live node on a LAN acknowledges within milliseconds; QUIC would otherwise keep retransmitting
/// to members that are down (or never answered a dial) for ~3 s, holding up a CLI's exit.
const CLOSE_GRACE: Duration = Duration::from_millis(150);

/// A remote client of a cluster. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct IrohRaftManagementClient {
    inner: Arc<Inner>,
    /// The longest one call may take, finding a member included.
    timeout: Duration,
}

struct Inner {
    endpoint: Endpoint,
    /// Relays every member is also dialled through.
    relays: Vec<iroh::RelayUrl>,
    ticket: Option<String>,
    /// Addresses to try, in order (learned members are added).
    members: Mutex<Vec<EndpointAddr>>,
    /// Members' addresses by raft id, learned from status answers.
    ids: Mutex<HashMap<NodeId, EndpointAddr>>,
    /// A move to the leader is under way.
    moving: AtomicBool,
    /// Stays on the members it was given.
    pinned: bool,
    current: Mutex<Option<Session>>,
}

impl std::fmt::Debug for IrohRaftManagementClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrohRaftManagementClient")
            .field("endpoint", &self.inner.endpoint.id())
            .finish_non_exhaustive()
    }
}

fn addr_strings(addr: &EndpointAddr) -> Vec<String> {
    addr.ip_addrs().map(ToString::to_string).collect()
}

impl IrohRaftManagementClient {
    /// A client of these members (admitted because its key is a member or on the nodes'
    /// allowlist, or with `ticket`) that dials nobody yet: its first call finds a member within
    /// that call's timeout, so a command costs one deadline in all (no round trip before it;
    /// the client moves to the leader in the background once a reply names it).
    pub async fn new(
        members: Vec<EndpointAddr>,
        ticket: Option<&Ticket>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        if members.is_empty() {
            return Err(ClientError::Unreachable {
                reason: "no member address given".into(),
            });
        }
        let key = options.key.unwrap_or_else(SecretKey::generate);
        let mut relays = options.relays;
        if let (Some(ticket), true) = (ticket, relays.urls.is_empty()) {
            relays.urls = ticket.relays.clone();
        }
        let endpoint =
            bind_endpoint_with_relays(key, ([0, 0, 0, 0], 0).into(), transport_config(), &relays)
                .await
                .map_err(|e| ClientError::Unreachable {
                    reason: e.to_string(),
                })?;
        let (timeout, pinned) = (options.timeout, options.pinned);
        let endpoint = (endpoint, relays.urls);
        Ok(Self::assemble(endpoint, members, ticket, (timeout, pinned)))
    }

    /// A client on `endpoint` that dials every member through `relays` too.
    fn assemble(
        (endpoint, relays): (Endpoint, Vec<iroh::RelayUrl>),
        members: Vec<EndpointAddr>,
        ticket: Option<&Ticket>,
        (timeout, pinned): (Duration, bool),
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                endpoint,
                relays,
                ticket: ticket.map(ToString::to_string),
                members: Mutex::new(members),
                ids: Mutex::new(HashMap::new()),
                moving: AtomicBool::new(false),
                pinned,
                current: Mutex::new(None),
            }),
            timeout,
        }
    }

    /// A client that knows these members and is admitted because its key is a member or on
    /// the nodes' allowlist (or with `ticket`). `key` is its identity (`None`: a fresh one).
    /// Returns once a member admitted it (refusals are reported here) and the client is on the
    /// leader, if one is known, all within [`DEFAULT_TIMEOUT`].
    pub async fn connect_with(
        key: Option<SecretKey>,
        members: Vec<EndpointAddr>,
        ticket: Option<&Ticket>,
    ) -> Result<Self, ClientError> {
        let options = ClientOptions {
            key,
            ..ClientOptions::default()
        };
        Self::new(members, ticket, options).await?.admitted().await
    }

    /// Like [`Self::connect_with`], on an endpoint of the caller's (the client closes it at
    /// [`Self::close`]).
    pub async fn connect_on(
        endpoint: Endpoint,
        members: Vec<EndpointAddr>,
        ticket: Option<&Ticket>,
    ) -> Result<Self, ClientError> {
        if members.is_empty() {
            endpoint.close().await;
            return Err(ClientError::Unreachable {
                reason: "no member address given".into(),
            });
        }
        Self::assemble(
            (endpoint, Vec::new()),
            members,
            ticket,
            (DEFAULT_TIMEOUT, false),
        )
        .admitted()
        .await
    }

    /// Finds a member that admits this client and, within the same timeout, learns the
    /// membership and moves to the leader if one is known (a long-lived client's writes then
    /// take no extra hop from the start); on failure closes the endpoint.
    async fn admitted(self) -> Result<Self, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        if let Err(e) = self.connection(deadline).await {
            self.close().await;
            return Err(e);
        }
        if let Ok(MgmtResponse::Status(status)) =
            self.request_by(MgmtRequest::Status, deadline).await
        {
            self.learn(&status, deadline).await;
        }
        Ok(self)
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

    /// The longest one call of this handle may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A handle on the same connection whose calls may take up to `timeout` each.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            inner: self.inner.clone(),
            timeout,
        }
    }

    /// Closes the connection and the client's endpoint. Waits at most 150 ms: the
    /// rest of the close (QUIC's wait for acknowledgements, ~3 s for a member that is down or
    /// a dial that was dropped) goes on in the background.
    pub async fn close(&self) {
        if let Some(c) = self.inner.current.lock().await.take() {
            c.conn
                .close(CloseCode::Normal.to_varint(), b"client closed");
        }
        close_within(&self.inner.endpoint, CLOSE_GRACE).await;
    }

    /// The cluster as the connected node sees it. Also teaches the client the members'
    /// addresses, and moves its connection to the leader (within the call's timeout).
    pub async fn status(&self) -> Result<MgmtStatus, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let MgmtResponse::Status(status) = self.request_by(MgmtRequest::Status, deadline).await?
        else {
            return Err(ClientError::Codec("unexpected answer to Status".into()));
        };
        self.learn(&status, deadline).await;
        Ok(status)
    }

    /// Health as the connected node sees it.
    pub async fn health(&self) -> Result<MgmtHealth, ClientError> {
        match self.request(MgmtRequest::Health).await? {
            MgmtResponse::Health(h) => Ok(h),
            other => Err(ClientError::Codec(format!("unexpected answer {other:?}"))),
        }
    }

    /// The connected node's metrics in the OpenMetrics text format (what its `/metrics`
    /// serves, for clusters that run without the HTTP listener).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        match self.request(MgmtRequest::Metrics).await? {
            MgmtResponse::Metrics { text } => Ok(text),
            other => Err(ClientError::Codec(format!("unexpected answer {other:?}"))),
        }
    }

    /// The connected node's readiness checks (`ready`) or liveness checks (what its `/readyz`
    /// or `/livez` runs).
    pub async fn probe(&self, ready: bool) -> Result<MgmtProbe, ClientError> {
        match self.request(MgmtRequest::Probe { ready }).await? {
            MgmtResponse::Probe(p) => Ok(p),
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
        if command.len() > MAX_COMMAND_SIZE {
            return Err(ClientError::TooLarge {
                size: command.len(),
                max: MAX_COMMAND_SIZE,
            });
        }
        // With the `otel` feature, a sampled proposal's trace starts here, in the client.
        let span = match iroh_raft_actors::sample_proposal() {
            true => tracing::info_span!("propose", remote = true),
            false => tracing::Span::none(),
        };
        let answer = self
            .request(MgmtRequest::Propose { command })
            .instrument(span)
            .await?;
        match answer {
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
        let value = self.read_encoded(query).await?;
        postcard::from_bytes(&value).map_err(|e| ClientError::Codec(e.to_string()))
    }

    /// A linearizable read of an already encoded query; the answer as the reader encoded it.
    pub async fn read_encoded(&self, query: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        match self.request(MgmtRequest::Read { query }).await? {
            MgmtResponse::ReadResult { value } => Ok(value),
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

    /// Gives member `id` new addresses (same key, same role).
    pub async fn update_address(
        &self,
        id: NodeId,
        addr: &EndpointAddr,
    ) -> Result<u64, ClientError> {
        let (key, addrs) = (*addr.id.as_bytes(), addr_strings(addr));
        self.change(MgmtRequest::UpdateAddress { id, key, addrs })
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

    /// Opens a lane of its own on a connection to a member and sends `request` on it as call
    /// 1 (a stream of replies follows). Unreachable until the request left.
    async fn own_lane(
        &self,
        request: MgmtRequest,
        deadline: tokio::time::Instant,
    ) -> Result<
        (
            iroh::endpoint::Connection,
            iroh::endpoint::SendStream,
            iroh::endpoint::RecvStream,
            NodeId,
        ),
        ClientError,
    > {
        let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable {
            reason: e.to_string(),
        };
        let session = self.connection(deadline).await?;
        let (mut send, recv) = session.conn.open_bi().await.map_err(|e| unreachable(&e))?;
        let mut batch = MgmtBatch::new();
        let call = MgmtCall {
            id: 1,
            request,
            trace: None,
        };
        batch
            .push(&call)
            .map_err(|e| ClientError::Codec(e.to_string()))?;
        send.write_all(batch.bytes())
            .await
            .map_err(|e| unreachable(&e))?;
        Ok((session.conn, send, recv, session.node_id))
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
        let deadline = tokio::time::Instant::now() + self.timeout;
        // A lane of its own, so that events never hold up other requests.
        let (conn, send, mut recv, _) = self
            .own_lane(MgmtRequest::Subscribe { epoch, after }, deadline)
            .await?;
        let mut reader = MgmtReader::new();
        // Events start once the node confirms the subscription.
        let confirmed = tokio::time::timeout_at(deadline, reader.next_reply(&mut recv))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?;
        let (epoch, last_seq) = match confirmed.map(|r| r.map(|r| r.response)) {
            Ok(Some(MgmtResponse::Subscribed { epoch, after })) => (epoch, after),
            Ok(Some(MgmtResponse::Error { kind, message, .. })) => {
                return Err(ClientError::Failed { kind, message });
            }
            // It was sent: not "nothing was sent".
            other => {
                return Err(ClientError::Failed {
                    kind: iroh_raft_actors::wire::MgmtErrorKind::Unknown,
                    message: format!("subscription not confirmed: {other:?}"),
                });
            }
        };
        Ok(EventSubscription {
            recv,
            reader,
            _send: send,
            _conn: conn,
            epoch,
            last_seq,
        })
    }

    /// Saves a consistent backup of the cluster into `out`, streamed from the member this
    /// client talks to (the point is a ReadIndex: it holds every write acknowledged before the
    /// call). The bytes' hash is checked as they arrive; `progress` hears `(bytes, file size)`.
    /// On an error, what was written to `out` is not a backup (discard it).
    pub async fn backup<W>(
        &self,
        mut out: W,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<SavedBackup, ClientError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let deadline = tokio::time::Instant::now() + self.timeout;
        // A lane of its own: the pieces never hold up other requests.
        let (_conn, _send, mut recv, _) = self.own_lane(MgmtRequest::Backup, deadline).await?;
        let mut reader = MgmtReader::new();
        // The member confirms the point and writes a snapshot first: allow it time.
        let idle = self.timeout.max(BACKUP_IDLE);
        let mut started = None;
        let mut check = HashCheck::new();
        loop {
            let reply = tokio::time::timeout(idle, reader.next_reply(&mut recv))
                .await
                .map_err(|_| ClientError::Timeout(idle))?;
            let response = match reply {
                Ok(Some(r)) => r.response,
                Ok(None) => {
                    return Err(ClientError::Backup(
                        "the member ended the stream before the backup was complete".into(),
                    ));
                }
                Err(e) => {
                    return Err(ClientError::Backup(format!("the stream was lost: {e}")));
                }
            };
            match (response, started) {
                (
                    MgmtResponse::BackupStarted {
                        index,
                        term,
                        file_size,
                    },
                    None,
                ) => {
                    started = Some((index, term, file_size));
                    progress(0, file_size);
                }
                (MgmtResponse::BackupPiece { bytes }, Some((_, _, size))) => {
                    check.update(&bytes);
                    if check.len() > size {
                        return Err(ClientError::Backup(format!(
                            "the member sent more than the {size} bytes it announced"
                        )));
                    }
                    out.write_all(&bytes)
                        .await
                        .map_err(|e| ClientError::Backup(format!("writing it out: {e}")))?;
                    progress(check.len(), size);
                }
                (MgmtResponse::BackupEnd, Some((index, term, file_size))) => {
                    out.flush()
                        .await
                        .map_err(|e| ClientError::Backup(format!("writing it out: {e}")))?;
                    if check.len() != file_size {
                        return Err(ClientError::Backup(format!(
                            "received {} bytes of a {file_size}-byte backup",
                            check.len()
                        )));
                    }
                    let hash = check
                        .finish()
                        .map_err(|e| ClientError::Backup(e.to_string()))?;
                    return Ok(SavedBackup {
                        index,
                        term,
                        file_size,
                        hash,
                    });
                }
                (MgmtResponse::Error { kind, message, .. }, _) => {
                    return Err(match kind {
                        MgmtErrorKind::Forbidden => ClientError::Forbidden(message),
                        kind => ClientError::Failed { kind, message },
                    });
                }
                (other, _) => {
                    return Err(ClientError::Codec(format!(
                        "unexpected answer to a backup: {other:?}"
                    )));
                }
            }
        }
    }
}
