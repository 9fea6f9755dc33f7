//! The member side of the management protocol ([`MgmtProtocol`], ALPN
//! [`crate::wire::MGMT_ALPN`]): a connection task reads the client's Hello and asks the
//! [`MgmtActor`] to admit it, then serves each of its lanes (pipelined request streams) in a task
//! of its own, in which the lane's calls run concurrently by sending the node's actors the same
//! messages the facade sends.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use iroh::endpoint::{Connection, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use kameo::actor::ActorRef;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{
    actor::MgmtActor,
    messages::{Admit, Admitted, Disconnected},
};
use crate::{
    calls::NodeCalls,
    state_machine::StateMachine,
    types::Leadership,
    wire::{
        CloseCode, MGMT_VERSION, MgmtBatch, MgmtErrorKind, MgmtReply, MgmtRequest, MgmtResponse,
        encode_mgmt, read_mgmt_request,
    },
};

mod answer;
mod lane;

use lane::{Limits, MAX_LANES};

/// Registry ids of management connections, unique within the process.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// How long a client has to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers a linearizable read: decodes the query, runs it on the state machine, encodes the
/// answer.
pub type RemoteReader<S> = Arc<dyn Fn(&S, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// One step of a remote watch, as a [`RemoteWatcher`] answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStep {
    /// The encoded changes since the cursor (`None`: none that match).
    pub changes: Option<Vec<u8>>,
    /// Where the next step looks from.
    pub cursor: u64,
    /// The step was cut short: ask again at once rather than after the next apply.
    pub more: bool,
}

/// Serves a remote watch: runs on the state machine (after each apply) with the client's
/// encoded query and the previous step's cursor (`None` the first time), and answers the
/// changes since then. An `Err` ends the watch with that message (e.g. the revision asked for
/// is no longer kept).
pub type RemoteWatcher<S> =
    Arc<dyn Fn(&S, &[u8], Option<u64>) -> Result<WatchStep, String> + Send + Sync>;

/// The management protocol handler. Cheap to clone; it holds the node's actor references and
/// watches, no state of its own (that is the [`MgmtActor`]'s).
pub struct MgmtProtocol<S: StateMachine> {
    calls: NodeCalls<S>,
    mgmt: ActorRef<MgmtActor<S>>,
    reader: Option<RemoteReader<S>>,
    watcher: Option<RemoteWatcher<S>>,
    /// The node's leadership as its RaftActor publishes it.
    leadership: watch::Receiver<Leadership>,
}

impl<S: StateMachine> Clone for MgmtProtocol<S> {
    fn clone(&self) -> Self {
        Self {
            calls: self.calls.clone(),
            mgmt: self.mgmt.clone(),
            reader: self.reader.clone(),
            watcher: self.watcher.clone(),
            leadership: self.leadership.clone(),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for MgmtProtocol<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgmtProtocol")
            .field("node_id", &self.calls.node_id())
            .field("reads", &self.reader.is_some())
            .field("watches", &self.watcher.is_some())
            .finish_non_exhaustive()
    }
}

/// An admitted connection, unregistered from the MgmtActor when the connection task ends.
struct Registered<S: StateMachine> {
    mgmt: ActorRef<MgmtActor<S>>,
    connection: u64,
}

impl<S: StateMachine> Drop for Registered<S> {
    fn drop(&mut self) {
        let connection = self.connection;
        tell_from_drop(&self.mgmt, Disconnected { connection });
    }
}

/// Tells the MgmtActor `msg` from a `Drop` (no await there): at once if its mailbox has room,
/// else from a task, so that a full mailbox never leaks a registry slot.
pub(super) fn tell_from_drop<S, M>(mgmt: &ActorRef<MgmtActor<S>>, msg: M)
where
    S: StateMachine,
    M: Send + 'static,
    MgmtActor<S>: kameo::message::Message<M, Reply = ()>,
{
    if let Err(e) = mgmt.tell(msg).try_send() {
        let (Some(msg), Ok(rt)) = (e.msg(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let mgmt = mgmt.clone();
        rt.spawn(async move { mgmt.tell(msg).await });
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
    /// The handler of the node `calls` reaches, whose management plane `mgmt` owns; `reader`
    /// answers remote reads.
    pub fn new(
        calls: NodeCalls<S>,
        mgmt: ActorRef<MgmtActor<S>>,
        reader: Option<RemoteReader<S>>,
    ) -> Self {
        let leadership = calls.facts().leadership();
        Self {
            calls,
            mgmt,
            reader,
            watcher: None,
            leadership,
        }
    }

    /// Serves remote watches with `watcher` ([`MgmtRequest::Watch`]; without one they are
    /// answered [`MgmtErrorKind::Unsupported`]).
    pub fn with_watcher(mut self, watcher: Option<RemoteWatcher<S>>) -> Self {
        self.watcher = watcher;
        self
    }

    /// The leader this node knows of (0: none); every reply carries it, so clients find the
    /// leader without asking.
    pub(super) fn leader(&self) -> u64 {
        self.leadership.borrow().leader.unwrap_or(0)
    }

    /// The node's calls, unless it was shut down.
    fn cluster(&self) -> Option<NodeCalls<S>> {
        (!self.calls.facts().is_shut_down()).then(|| self.calls.clone())
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
        // The registration is released however this task ends, even while the ask is pending.
        let connection = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        let _registered = Registered {
            mgmt: self.mgmt.clone(),
            connection,
        };
        let admit = Admit {
            remote,
            ticket,
            connection,
        };
        let admitted = match self.cluster() {
            None => Err((CloseCode::ShuttingDown, "node is not running".to_string())),
            Some(_) => match self.mgmt.ask(admit).await {
                Ok(admitted) => Ok(admitted),
                Err(kameo::error::SendError::HandlerError(refusal)) => Err(refusal),
                Err(_) => Err((CloseCode::ShuttingDown, "node is not running".into())),
            },
        };
        let Admitted { role, .. } = match admitted {
            Ok(admitted) => admitted,
            Err((code, why)) => {
                warn!(endpoint = %remote.fmt_short(), %why, "management client refused");
                conn.close(code.to_varint(), why.as_bytes());
                return;
            }
        };
        let node_id = self.cluster().map_or(0, |c| c.node_id());
        send(&mut tx, &MgmtResponse::Welcome { node_id, role }).await;
        let _ = tx.finish();
        debug!(endpoint = %remote.fmt_short(), ?role, "management client admitted");
        let limits = Limits::new(connection);
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
