//! The member side of the management protocol ([`MgmtProtocol`], ALPN
//! [`crate::wire::MGMT_ALPN`]): admits a client at its first stream, then serves each
//! of its lanes (pipelined request streams) in a task of its own, in which the lane's calls run
//! concurrently by sending the node's actors the same messages the facade sends.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, SystemTime},
};

use iroh::{
    EndpointId, SecretKey,
    endpoint::{Connection, SendStream},
    protocol::{AcceptError, ProtocolHandler},
};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::{
    calls::NodeCalls,
    facts::Liveness,
    state_machine::StateMachine,
    ticket::{ClusterId, Ticket, TicketRole},
    types::Leadership,
    wire::{
        CloseCode, MGMT_VERSION, MgmtBatch, MgmtErrorKind, MgmtReply, MgmtRequest, MgmtResponse,
        MgmtRole, encode_mgmt, read_mgmt_request,
    },
};

mod answer;
mod lane;

use lane::{Limits, MAX_LANES};

/// How long a client has to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Admitted connections one endpoint (key) may hold to this node at once.
const MAX_CONNECTIONS_PER_KEY: usize = 16;

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

/// Answers a linearizable read: decodes the query, runs it on the state machine, encodes the
/// answer.
pub type RemoteReader<S> = Arc<dyn Fn(&S, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// The management protocol handler. Cheap to clone.
pub struct MgmtProtocol<S: StateMachine> {
    calls: NodeCalls<S>,
    /// This node's key, to sign the tickets it mints.
    secret: SecretKey,
    allowlist: Arc<BTreeMap<EndpointId, MgmtRole>>,
    reader: Option<RemoteReader<S>>,
    /// The node's leadership as its RaftActor publishes it.
    leadership: watch::Receiver<Leadership>,
    /// Admitted connections per key.
    connections: ConnectionCounts,
}

impl<S: StateMachine> Clone for MgmtProtocol<S> {
    fn clone(&self) -> Self {
        Self {
            calls: self.calls.clone(),
            secret: self.secret.clone(),
            allowlist: self.allowlist.clone(),
            reader: self.reader.clone(),
            leadership: self.leadership.clone(),
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
    /// The handler of the node `calls` reaches, whose key is `secret`: members are admitted as
    /// admins, endpoints on `allowlist` with their role, others by a ticket; `reader` answers
    /// remote reads.
    pub fn new(
        calls: NodeCalls<S>,
        secret: SecretKey,
        allowlist: BTreeMap<EndpointId, MgmtRole>,
        reader: Option<RemoteReader<S>>,
    ) -> Self {
        let leadership = calls.node().facts.leadership();
        Self {
            calls,
            secret,
            allowlist: Arc::new(allowlist),
            reader,
            leadership,
            connections: ConnectionCounts::default(),
        }
    }

    /// The leader this node knows of (0: none); every reply carries it, so clients find the
    /// leader without asking.
    pub(super) fn leader(&self) -> u64 {
        self.leadership.borrow().leader.unwrap_or(0)
    }

    /// The node's calls, unless it was shut down.
    fn cluster(&self) -> Option<NodeCalls<S>> {
        let down = matches!(
            *self.calls.node().facts.liveness().borrow(),
            Liveness::ShutDown
        );
        (!down).then(|| self.calls.clone())
    }

    /// The role a client gets: members are admins, then the allowlist, then its ticket. Refused
    /// with the code to close with: `NotAMember` is the cluster's answer (another member would
    /// give the same), `ShuttingDown` says only that this node cannot serve now.
    async fn admit(
        &self,
        remote: EndpointId,
        ticket: Option<String>,
    ) -> Result<MgmtRole, (CloseCode, String)> {
        let down = |why: String| (CloseCode::ShuttingDown, why);
        let cluster = self
            .cluster()
            .ok_or_else(|| down("node is not running".into()))?;
        let view = cluster
            .members_view()
            .await
            .map_err(|e| down(e.to_string()))?;
        self.admit_in(remote, ticket, &view)
            .map_err(|why| (CloseCode::NotAMember, why))
    }

    fn admit_in(
        &self,
        remote: EndpointId,
        ticket: Option<String>,
        view: &crate::MembersView,
    ) -> Result<MgmtRole, String> {
        if view.members.iter().any(|m| m.addr.id == remote) {
            return Ok(MgmtRole::Admin);
        }
        if let Some(role) = self.allowlist.get(&remote) {
            return Ok(*role);
        }
        let ticket: Ticket = ticket
            .ok_or("not a member, not on the allowlist, and no ticket")?
            .parse()
            .map_err(|e: crate::TicketError| e.to_string())?;
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
            Err((code, why)) => {
                warn!(endpoint = %remote.fmt_short(), %why, "management client refused");
                conn.close(code.to_varint(), why.as_bytes());
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
        let limits = Limits::new();
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
                        let leader = self.leader();
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
}

impl<S: StateMachine> ProtocolHandler for MgmtProtocol<S> {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        self.serve(&conn).await;
        Ok(())
    }
}
