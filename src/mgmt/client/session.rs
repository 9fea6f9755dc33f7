//! Which node a client talks to: admission (Hello) with every member dialled at once, failover
//! between members, moving to the leader, and the resend rule of
//! [`IrohRaftManagementClient::request`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use iroh::{EndpointAddr, endpoint::Connection};
use iroh_raft_actors::{
    NodeId,
    wire::{
        CloseCode, MGMT_ALPN, MGMT_VERSION, MgmtErrorKind, MgmtRequest, MgmtResponse, MgmtStatus,
        encode_mgmt, read_mgmt_response,
    },
};

use tokio::time::{Instant, timeout_at};

use super::{
    ClientError, IrohRaftManagementClient,
    lanes::{LaneError, Lanes, Session},
};
use crate::net::addr_from_wire;

/// How long a background move to the leader may take to dial it.
const MOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between attempts while the cluster has no leader or a member is unavailable.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

impl IrohRaftManagementClient {
    pub(super) async fn hello(&self, addr: EndpointAddr) -> Result<Session, ClientError> {
        let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable {
            reason: e.to_string(),
        };
        let addr = iroh_raft_actors::wire::with_relays(addr, &self.inner.relays);
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
                // The cluster's answer to this client: another member would give the same.
                Some(iroh::endpoint::ConnectionError::ApplicationClosed(c))
                    if matches!(
                        CloseCode::from_u64(c.error_code.into_inner()),
                        Some(CloseCode::NotAMember | CloseCode::VersionMismatch)
                    ) =>
                {
                    Err(ClientError::Refused {
                        reason: String::from_utf8_lossy(&c.reason).into_owned(),
                    })
                }
                // This node cannot serve now (shutting down, stopped, busy with this key's
                // connections): another member may.
                Some(iroh::endpoint::ConnectionError::ApplicationClosed(c)) => {
                    Err(unreachable(&String::from_utf8_lossy(&c.reason)))
                }
                other => Err(unreachable(&format!("{other:?}"))),
            },
        }
    }

    /// The current session, or a new one with the first member that admits this client by
    /// `deadline`. Every member is dialled at once: the first to admit the client wins and the
    /// other attempts are dropped; a refusal is the cluster's policy (another member would say
    /// the same) and ends the search. Nothing is sent on a failed search.
    pub(super) async fn connection(&self, deadline: Instant) -> Result<Session, ClientError> {
        let waited = || ClientError::Unreachable {
            reason: format!("no member admitted this client within {:?}", self.timeout),
        };
        let mut current = timeout_at(deadline, self.inner.current.lock())
            .await
            .map_err(|_| waited())?;
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
        let mut dials: FuturesUnordered<_> = members
            .into_iter()
            .map(|addr| {
                let this = self.clone();
                async move { this.hello(addr).await }
            })
            .collect();
        let mut last = None;
        loop {
            match timeout_at(deadline, dials.next()).await {
                Ok(Some(Ok(c))) => {
                    *current = Some(c.clone());
                    tokio::spawn(close_losers(dials, deadline));
                    return Ok(c);
                }
                Ok(Some(Err(e @ ClientError::Refused { .. }))) => return Err(e),
                Ok(Some(Err(e))) => last = Some(e),
                Ok(None) => {
                    return Err(last.unwrap_or_else(|| ClientError::Unreachable {
                        reason: "no member".into(),
                    }));
                }
                Err(_) => {
                    let mut e = waited();
                    if let (ClientError::Unreachable { reason }, Some(l)) = (&mut e, last) {
                        reason.push_str(&format!(" (last: {l})"));
                    }
                    return Err(e);
                }
            }
        }
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

    /// Sends one request within the client's timeout; see [`Self::request_by`].
    pub(super) async fn request(&self, req: MgmtRequest) -> Result<MgmtResponse, ClientError> {
        self.request_by(req, Instant::now() + self.timeout).await
    }

    /// Sends one request, failing over to other members while they are unreachable or have no
    /// leader, until `deadline`. A change or command that may have left the client and got no
    /// answer is not sent again ([`ClientError::OutcomeUnknown`]); one that provably did not
    /// leave is [`ClientError::Unreachable`].
    pub(super) async fn request_by(
        &self,
        req: MgmtRequest,
        deadline: Instant,
    ) -> Result<MgmtResponse, ClientError> {
        let resendable = matches!(
            req,
            MgmtRequest::Status
                | MgmtRequest::Health
                | MgmtRequest::Read { .. }
                | MgmtRequest::Snapshot
                | MgmtRequest::MintTicket { .. }
                | MgmtRequest::Metrics
                | MgmtRequest::Probe { .. }
        );
        // Why the last attempt that left the client had no effect (no leader, node down, a read
        // whose connection was lost): if the next attempt cannot find a member, that is the
        // answer, not "unreachable" (which promises nothing was sent).
        let mut answered: Option<ClientError> = None;
        loop {
            let session = match self.connection(deadline).await {
                Ok(s) => s,
                Err(e) => return Err(answered.unwrap_or(e)),
            };
            let answer = session.lanes.call(req.clone(), deadline).await;
            if answer.is_ok() {
                self.follow_leader(&session);
            }
            let retry = match self.outcome(&session, answer, resendable).await {
                Ok(answer) => return Ok(answer),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::NoEffect(e)) => {
                    answered = Some(e.clone());
                    e
                }
                Err(Attempt::NotSent(e)) => e,
            };
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(answered.unwrap_or(retry));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// What one attempt of a request came to.
    async fn outcome(
        &self,
        session: &Session,
        answer: Result<MgmtResponse, LaneError>,
        resendable: bool,
    ) -> Result<MgmtResponse, Attempt> {
        let response = match answer {
            Ok(response) => response,
            Err(LaneError::Codec(e)) => return Err(Attempt::Final(ClientError::Codec(e))),
            Err(LaneError::TimedOut { sent }) => {
                // The node (or this connection) is stuck: the next call goes elsewhere.
                self.drop_connection(&session.conn).await;
                let e = match (sent, resendable) {
                    // Not this attempt's, but an earlier one may have been answered: the loop
                    // reports that if there was one.
                    (false, _) => {
                        return Err(Attempt::NotSent(ClientError::Unreachable {
                            reason: format!(
                                "no answer within {:?}; the request was never sent",
                                self.timeout
                            ),
                        }));
                    }
                    (true, true) => ClientError::Timeout(self.timeout),
                    (true, false) => ClientError::OutcomeUnknown {
                        reason: format!("sent, and no answer within {:?}", self.timeout),
                    },
                };
                return Err(Attempt::Final(e));
            }
            Err(LaneError::NotSent(reason)) => {
                self.drop_connection(&session.conn).await;
                return Err(Attempt::NotSent(ClientError::Unreachable { reason }));
            }
            Err(LaneError::Lost(reason)) => {
                self.drop_connection(&session.conn).await;
                if !resendable {
                    return Err(Attempt::Final(ClientError::OutcomeUnknown { reason }));
                }
                return Err(Attempt::NoEffect(ClientError::Timeout(self.timeout)));
            }
        };
        let MgmtResponse::Error { kind, message, .. } = response else {
            return Ok(response);
        };
        match kind {
            MgmtErrorKind::Forbidden => Err(Attempt::Final(ClientError::Forbidden(message))),
            MgmtErrorKind::Unavailable => {
                Err(Attempt::NoEffect(ClientError::Failed { kind, message }))
            }
            MgmtErrorKind::NodeDown => {
                // That node is out of service: fail over.
                self.drop_connection(&session.conn).await;
                Err(Attempt::NoEffect(ClientError::Failed { kind, message }))
            }
            MgmtErrorKind::Unknown => {
                // Timed out or interrupted there (the node may be stopping): the outcome is the
                // caller's to find out; the next call goes elsewhere.
                self.drop_connection(&session.conn).await;
                Err(Attempt::Final(ClientError::Failed { kind, message }))
            }
            _ => Err(Attempt::Final(ClientError::Failed { kind, message })),
        }
    }

    /// Moves to the leader, in the background, when the node this client talks to names
    /// another one: writes then take no extra hop (a follower would forward them meanwhile).
    fn follow_leader(&self, session: &Session) {
        let leader = session.leader.load(Ordering::Relaxed);
        if self.inner.pinned
            || leader == 0
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
            let deadline = Instant::now() + self.timeout;
            return match lanes.call(MgmtRequest::Status, deadline).await {
                Ok(MgmtResponse::Status(status)) => {
                    self.learn(&status, deadline).await;
                    true
                }
                _ => false,
            };
        };
        match tokio::time::timeout(MOVE_TIMEOUT.min(self.timeout), self.hello(addr)).await {
            Ok(Ok(session)) if session.node_id == leader => {
                self.adopt(session).await;
                true
            }
            _ => false,
        }
    }

    /// Makes `session` the current one, unless the client already has a live session with its
    /// node (another call moved there meanwhile): then `session` is closed. A replaced session
    /// closes once its calls in flight are answered and its lanes are dropped.
    async fn adopt(&self, session: Session) {
        let mut current = self.inner.current.lock().await;
        let there = current
            .as_ref()
            .is_some_and(|c| c.node_id == session.node_id && c.conn.close_reason().is_none());
        if there {
            session
                .conn
                .close(CloseCode::Normal.to_varint(), b"already connected");
        } else {
            *current = Some(session);
        }
    }

    /// Learns the members' addresses from `status` and, if it names a leader this client is
    /// not on, moves there (if it admits the client by `deadline`).
    pub(super) async fn learn(&self, status: &MgmtStatus, deadline: Instant) {
        if self.inner.pinned {
            return;
        }
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
                && let Ok(Ok(session)) = timeout_at(deadline, self.hello(addr)).await
                && session.node_id == status.leader
            {
                self.adopt(session).await;
            }
        }
    }
}

/// Lets the dials that lost the race finish (until `deadline`) and closes them politely: a
/// dial dropped mid-handshake makes its node log an aborted handshake.
async fn close_losers<F>(mut dials: FuturesUnordered<F>, deadline: Instant)
where
    F: Future<Output = Result<Session, ClientError>>,
{
    while let Ok(Some(dialled)) = timeout_at(deadline, dials.next()).await {
        if let Ok(session) = dialled {
            session.conn.close(
                CloseCode::Normal.to_varint(),
                b"another member answered first",
            );
        }
    }
}

/// How one attempt of a request ended, when it did not succeed.
enum Attempt {
    /// The request never left the client: try another member.
    NotSent(ClientError),
    /// It left the client and had no effect (a node answered that it did not act on it, or a
    /// request without effect was lost): try again.
    NoEffect(ClientError),
    /// Nothing more to try.
    Final(ClientError),
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
