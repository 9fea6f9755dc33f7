//! [`IrohRaftManagementClient`]: talks to a cluster over the management protocol from outside
//! it. It keeps one connection, to the leader when it knows it (writes then take no extra hop;
//! a follower would forward them anyway), and fails over to another member when its node stops
//! answering.

use std::{sync::Arc, time::Duration};

use iroh::{Endpoint, EndpointAddr, SecretKey, endpoint::Connection};
use iroh_raft_actors::{
    ClusterEvent, EventItem, NodeId, Ticket,
    wire::{
        CloseCode, MGMT_ALPN, MGMT_VERSION, MgmtErrorKind, MgmtHealth, MgmtRequest, MgmtResponse,
        MgmtRole, MgmtStatus, encode_mgmt, read_mgmt_response,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Mutex;

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
}

/// How long one member gets to accept a connection before the client tries the next.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

struct Current {
    conn: Connection,
    node_id: NodeId,
    role: MgmtRole,
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
    current: Mutex<Option<Current>>,
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
    recv: iroh::endpoint::RecvStream,
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
        match read_mgmt_response(&mut self.recv).await {
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

    async fn hello(&self, addr: EndpointAddr) -> Result<Current, ClientError> {
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
        let answer = exchange(&conn, &hello).await;
        match answer {
            Ok(MgmtResponse::Welcome { node_id, role }) => Ok(Current {
                conn,
                node_id,
                role,
            }),
            Ok(other) => Err(ClientError::Codec(format!("unexpected answer {other:?}"))),
            Err(_) => match conn.close_reason() {
                Some(iroh::endpoint::ConnectionError::ApplicationClosed(c)) => {
                    Err(ClientError::Refused {
                        reason: String::from_utf8_lossy(&c.reason).into_owned(),
                    })
                }
                other => Err(unreachable(&format!("{other:?}"))),
            },
        }
    }

    /// The current connection, or a new one to the first member that admits this client.
    async fn connection(&self) -> Result<(Connection, NodeId, MgmtRole), ClientError> {
        let mut current = self.inner.current.lock().await;
        if let Some(c) = current.as_ref() {
            if c.conn.close_reason().is_none() {
                return Ok((c.conn.clone(), c.node_id, c.role));
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
                    let out = (c.conn.clone(), c.node_id, c.role);
                    *current = Some(c);
                    return Ok(out);
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
    /// leader, until the client's timeout.
    async fn request(&self, req: MgmtRequest) -> Result<MgmtResponse, ClientError> {
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        loop {
            let (conn, _, _) = self.connection().await?;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let answer = tokio::time::timeout(remaining, exchange(&conn, &req)).await;
            let retry = match answer {
                Err(_) => return Err(ClientError::Timeout(self.inner.timeout)),
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
                    self.drop_connection(&conn).await;
                    ClientError::Failed {
                        kind: MgmtErrorKind::NodeDown,
                        message,
                    }
                }
                Ok(Ok(MgmtResponse::Error { kind, message, .. })) => {
                    return Err(ClientError::Failed { kind, message });
                }
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => {
                    self.drop_connection(&conn).await;
                    e
                }
            };
            if tokio::time::Instant::now() + Duration::from_millis(50) >= deadline {
                return Err(retry);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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
                let mut current = self.inner.current.lock().await;
                if let Some(old) = current.replace(c) {
                    old.conn
                        .close(CloseCode::Normal.to_varint(), b"moving to the leader");
                }
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
        let (conn, _, _) = self.connection().await?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| ClientError::Unreachable {
            reason: e.to_string(),
        })?;
        let bytes = encode_mgmt(&MgmtRequest::Subscribe { epoch, after })
            .map_err(|e| ClientError::Codec(e.to_string()))?;
        send.write_all(&bytes)
            .await
            .map_err(|e| ClientError::Unreachable {
                reason: e.to_string(),
            })?;
        let _ = send.finish();
        let mut recv = recv;
        // Events start once the node confirms the subscription.
        let (epoch, last_seq) = match read_mgmt_response(&mut recv).await {
            Ok(Some(MgmtResponse::Subscribed { epoch, after })) => (epoch, after),
            Ok(Some(MgmtResponse::Error { kind, message, .. })) => {
                return Err(ClientError::Failed { kind, message });
            }
            other => {
                return Err(ClientError::Unreachable {
                    reason: format!("subscription not confirmed: {other:?}"),
                });
            }
        };
        Ok(EventSubscription {
            recv,
            _conn: conn,
            epoch,
            last_seq,
        })
    }
}

/// One request on a new stream of `conn`, one answer.
async fn exchange(conn: &Connection, req: &MgmtRequest) -> Result<MgmtResponse, ClientError> {
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
