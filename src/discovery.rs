//! The discovery protocol on the facade: the member side ([`DiscoveryProtocol`], mounted on every
//! node's router) checks a newcomer's ticket and drives [`RaftCluster::join`]; the newcomer side
//! ([`request_join`]) is what [`crate::RaftClusterBuilder::join_ticket`] runs before starting
//! the node. The wire format is specified in [`iroh_raft_actors::wire`].

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use iroh::{
    Endpoint, EndpointAddr, EndpointId,
    endpoint::{Connection, SendStream},
    protocol::{AcceptError, ProtocolHandler},
};
use iroh_raft_actors::{
    ClusterId, Member, MembershipRefusal, ProposeError, StateMachine, Ticket, TicketError,
    TicketRole,
    wire::{
        DISCOVERY_ALPN, DISCOVERY_VERSION, DiscoveryMember, DiscoveryRequest, DiscoveryResponse,
        RefusalKind, encode_discovery, read_request, read_response,
    },
};
use tracing::{info, warn};

use crate::{BuildError, JoinOptions, RaftCluster, cluster::WeakCluster, net::addr_from_wire};

/// How long a member waits for a newcomer's request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The member side of the discovery protocol (ALPN [`DISCOVERY_ALPN`]). Cheap to clone.
pub struct DiscoveryProtocol<S: StateMachine> {
    cluster: Arc<OnceLock<WeakCluster<S>>>,
    options: JoinOptions,
}

impl<S: StateMachine> Clone for DiscoveryProtocol<S> {
    fn clone(&self) -> Self {
        Self {
            cluster: self.cluster.clone(),
            options: self.options,
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for DiscoveryProtocol<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryProtocol").finish_non_exhaustive()
    }
}

impl<S: StateMachine> DiscoveryProtocol<S> {
    pub(crate) fn new(options: JoinOptions) -> Self {
        Self {
            cluster: Arc::new(OnceLock::new()),
            options,
        }
    }

    /// Binds the handler to its node once the node exists.
    pub(crate) fn attach(&self, cluster: &RaftCluster<S>) {
        let _ = self.cluster.set(cluster.downgrade());
    }

    async fn serve(&self, conn: &Connection) {
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
        };
        let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut recv)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return refuse(&mut send, RefusalKind::Malformed, e.to_string()).await;
            }
            Err(_) => return,
        };
        let DiscoveryRequest::Join {
            version,
            ticket,
            addrs,
            learner,
        } = request;
        if version != DISCOVERY_VERSION {
            let msg = format!(
                "discovery version {version} is not supported (this node speaks {DISCOVERY_VERSION})"
            );
            return refuse(&mut send, RefusalKind::Version, msg).await;
        }
        let Some(cluster) = self.cluster.get().and_then(WeakCluster::upgrade) else {
            return refuse(&mut send, RefusalKind::Failed, "node is not running".into()).await;
        };
        let remote = conn.remote_id();
        let addr = addrs
            .iter()
            .filter_map(|a| a.parse::<SocketAddr>().ok())
            .fold(EndpointAddr::new(remote), |a, ip| a.with_ip_addr(ip));
        match admit(
            &mut send,
            &cluster,
            &ticket,
            remote,
            addr,
            learner,
            self.options,
        )
        .await
        {
            Ok((id, index)) => {
                info!(node = id, endpoint = %remote.fmt_short(), "node joined through discovery");
                send_msg(&mut send, &DiscoveryResponse::Joined { index }).await;
            }
            Err((kind, message)) => {
                warn!(endpoint = %remote.fmt_short(), ?kind, %message, "join refused");
                return refuse(&mut send, kind, message).await;
            }
        }
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    }
}

type Refusal = (RefusalKind, String);

fn ticket_refusal(e: TicketError) -> Refusal {
    let kind = match &e {
        TicketError::BadSignature => RefusalKind::BadSignature,
        TicketError::WrongCluster { .. } => RefusalKind::WrongCluster,
        TicketError::IssuerNotMember { .. } => RefusalKind::IssuerNotMember,
        TicketError::Expired { .. } => RefusalKind::Expired,
        _ => RefusalKind::Malformed,
    };
    (kind, e.to_string())
}

/// Checks the ticket, adds the newcomer as a learner (answering `Accepted` on `send` before the
/// wait for catch-up), then promotes it. Returns its id and the index of its last change.
async fn admit<S: StateMachine>(
    send: &mut SendStream,
    cluster: &RaftCluster<S>,
    ticket: &str,
    remote: EndpointId,
    addr: EndpointAddr,
    learner: bool,
    options: JoinOptions,
) -> Result<(u64, u64), Refusal> {
    let failed = |e: &dyn std::fmt::Display| (RefusalKind::Failed, e.to_string());
    let ticket: Ticket = ticket.parse().map_err(ticket_refusal)?;
    let view = cluster.members_view().await.map_err(|e| failed(&e))?;
    ticket
        .check(&ClusterId(view.cluster_id), SystemTime::now(), |k| {
            view.members.iter().any(|m| m.addr.id == *k)
        })
        .map_err(ticket_refusal)?;
    if !ticket.allows(TicketRole::Join) {
        return Err((
            RefusalKind::WrongRole,
            format!("a {} ticket does not allow joining", ticket.role),
        ));
    }
    let existing = view.members.iter().find(|m| m.addr.id == remote);
    let id = match existing {
        Some(m) => m.node_id,
        None => {
            let mut candidate = view.next_free_id;
            loop {
                match cluster.add_learner(candidate, addr.clone()).await {
                    Ok(_) => break candidate,
                    // Another join took the id, or this member's view lagged: the next one.
                    Err(ProposeError::Membership(
                        MembershipRefusal::IdTaken { .. } | MembershipRefusal::RemovedId(_),
                    )) if candidate < view.next_free_id + 16 => candidate += 1,
                    Err(ProposeError::Membership(MembershipRefusal::RemovedEndpoint(_))) => {
                        return Err((
                            RefusalKind::Removed,
                            format!("endpoint {remote} belonged to a removed member"),
                        ));
                    }
                    Err(e) => return Err(failed(&e)),
                }
            }
        }
    };
    // The newcomer may start its node now: the leader replicates to it from here on.
    let view = cluster.members_view().await.map_err(|e| failed(&e))?;
    let accepted = DiscoveryResponse::Accepted {
        id,
        cluster_id: view.cluster_id,
        members: view
            .members
            .iter()
            .map(|m| member_to_wire(m.node_id, &m.addr))
            .collect(),
    };
    send_msg(send, &accepted).await;
    if learner {
        return Ok((id, 0));
    }
    match cluster.join(id, addr, options).await {
        Ok(index) => Ok((id, index)),
        Err(e) => Err(failed(&e)),
    }
}

async fn send_msg(send: &mut SendStream, msg: &DiscoveryResponse) {
    if let Ok(bytes) = encode_discovery(msg) {
        let _ = send.write_all(&bytes).await;
    }
}

async fn refuse(send: &mut SendStream, kind: RefusalKind, message: String) {
    send_msg(send, &DiscoveryResponse::Refused { kind, message }).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
}

impl<S: StateMachine> ProtocolHandler for DiscoveryProtocol<S> {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        self.serve(&conn).await;
        Ok(())
    }
}

/// What a member answered a join request with: the id and membership to start with, and the
/// stream on which the final answer comes.
pub(crate) struct Accepted {
    pub(crate) id: u64,
    pub(crate) members: Vec<Member>,
    pub(crate) pending: PendingJoin,
}

/// The rest of a join: the member's final answer, once the new node has caught up.
pub(crate) struct PendingJoin {
    conn: Connection,
    recv: iroh::endpoint::RecvStream,
}

impl PendingJoin {
    /// Waits for the member to report the join done (promoted, or added as a learner).
    pub(crate) async fn finish(mut self, timeout: Duration) -> Result<u64, BuildError> {
        let answer = tokio::time::timeout(timeout, read_response(&mut self.recv)).await;
        let result = match answer {
            Ok(Ok(DiscoveryResponse::Joined { index })) => Ok(index),
            Ok(Ok(DiscoveryResponse::Refused { kind, message })) => {
                Err(BuildError::JoinRefused { kind, message })
            }
            Ok(Ok(other)) => Err(BuildError::JoinUnreachable {
                reason: format!("unexpected answer {other:?}"),
            }),
            Ok(Err(e)) => Err(BuildError::JoinUnreachable {
                reason: e.to_string(),
            }),
            Err(_) => Err(BuildError::JoinUnreachable {
                reason: format!("no answer within {timeout:?}"),
            }),
        };
        self.conn.close(0u32.into(), b"done");
        result
    }
}

/// How long a newcomer waits for any member named in its ticket to accept a connection. On a
/// LAN a live member answers within milliseconds; members that are down cost no more than this,
/// all of them together (they are dialled at once).
const JOIN_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The newcomer side: dials every member the ticket names at once and presents the ticket on
/// the first connection that opens (once: two members must not each add the newcomer), then on
/// the next one if that member fails to answer.
pub(crate) async fn request_join(
    endpoint: &Endpoint,
    ticket: &Ticket,
    learner: bool,
) -> Result<Accepted, BuildError> {
    let request = DiscoveryRequest::Join {
        version: DISCOVERY_VERSION,
        ticket: ticket.to_string(),
        addrs: endpoint
            .bound_sockets()
            .iter()
            .map(ToString::to_string)
            .collect(),
        learner,
    };
    let bytes = encode_discovery(&request).map_err(|e| BuildError::JoinUnreachable {
        reason: e.to_string(),
    })?;
    let mut dials: FuturesUnordered<_> = ticket
        .members
        .iter()
        .map(|member| async move {
            let conn = endpoint.connect(member.clone(), DISCOVERY_ALPN).await;
            (member.id, conn.map_err(|e| e.to_string()))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + JOIN_DIAL_TIMEOUT;
    let mut last = String::from("the ticket names no member");
    // A member that read the request may have admitted the node before its answer was lost.
    let sent = std::cell::Cell::new(false);
    let failed = |reason: String| {
        if sent.get() {
            BuildError::JoinOutcomeUnknown { reason }
        } else {
            BuildError::JoinUnreachable { reason }
        }
    };
    loop {
        let (member, conn) = match tokio::time::timeout_at(deadline, dials.next()).await {
            Ok(Some(dialled)) => dialled,
            Ok(None) => return Err(failed(last)),
            Err(_) => {
                return Err(failed(format!(
                    "no member accepted a connection within {JOIN_DIAL_TIMEOUT:?} (last: {last})"
                )));
            }
        };
        let attempt = async {
            let conn = conn?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&bytes).await.map_err(|e| e.to_string())?;
            sent.set(true);
            let answer = read_response(&mut recv).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((conn, recv, answer))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT * 3, attempt).await {
            Ok(Ok((conn, recv, DiscoveryResponse::Accepted { id, members, .. }))) => {
                let members = members.into_iter().filter_map(member_from_wire).collect();
                return Ok(Accepted {
                    id,
                    members,
                    pending: PendingJoin { conn, recv },
                });
            }
            Ok(Ok((_, _, DiscoveryResponse::Refused { kind, message }))) => {
                // A refusal is the cluster's answer: another member would say the same.
                return Err(BuildError::JoinRefused { kind, message });
            }
            Ok(Ok((_, _, other))) => last = format!("unexpected answer {other:?}"),
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out".into(),
        }
        warn!(member = %member.fmt_short(), reason = %last, "member unreachable for join");
    }
}

fn member_from_wire(m: DiscoveryMember) -> Option<Member> {
    Some(Member {
        node_id: m.id,
        addr: addr_from_wire(&m.key, &m.addrs)?,
    })
}

pub(crate) fn member_to_wire(id: u64, addr: &EndpointAddr) -> DiscoveryMember {
    DiscoveryMember {
        id,
        key: *addr.id.as_bytes(),
        addrs: addr.ip_addrs().map(ToString::to_string).collect(),
    }
}
