//! Which node a client talks to: admission (Hello), failover between members, moving to the
//! leader, and the resend rule of [`IrohRaftManagementClient::request`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use iroh::{EndpointAddr, endpoint::Connection};
use iroh_raft_actors::{
    NodeId,
    wire::{
        CloseCode, MGMT_ALPN, MGMT_VERSION, MgmtErrorKind, MgmtRequest, MgmtResponse, MgmtStatus,
        encode_mgmt, read_mgmt_response,
    },
};

use super::{
    ClientError, IrohRaftManagementClient,
    lanes::{LaneError, Lanes, Session},
};
use crate::net::addr_from_wire;

/// How long one member gets to accept a connection before the client tries the next.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

impl IrohRaftManagementClient {
    pub(super) async fn hello(&self, addr: EndpointAddr) -> Result<Session, ClientError> {
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
    pub(super) async fn connection(&self) -> Result<Session, ClientError> {
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
    pub(super) async fn request(&self, req: MgmtRequest) -> Result<MgmtResponse, ClientError> {
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

    pub(super) async fn learn(&self, status: &MgmtStatus) {
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
