//! The member side of the discovery protocol ([`DiscoveryProtocol`], ALPN
//! [`crate::wire::DISCOVERY_ALPN`], mounted on every node's router): checks a newcomer's ticket,
//! adds it as a learner, answers with its id and the membership, then asks the node's
//! [`MgmtActor`] to finish the join (catch up, promote). The newcomer side is the facade
//! builder's. The wire format is specified in [`crate::wire`].

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use crate::{
    calls::{JoinOptions, NodeCalls},
    error::ProposeError,
    membership::MembershipRefusal,
    mgmt::{Join, MgmtActor},
    state_machine::StateMachine,
    ticket::{ClusterId, Ticket, TicketError, TicketRole},
    wire::{
        DISCOVERY_VERSION, DiscoveryMember, DiscoveryRequest, DiscoveryResponse, RefusalKind,
        encode_discovery, read_request,
    },
};
use iroh::{
    EndpointAddr, EndpointId,
    endpoint::{Connection, SendStream},
    protocol::{AcceptError, ProtocolHandler},
};
use kameo::actor::ActorRef;
use tracing::{info, warn};

/// How long a member waits for a newcomer's request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The member side of the discovery protocol (ALPN [`crate::wire::DISCOVERY_ALPN`]). Cheap to clone.
pub struct DiscoveryProtocol<S: StateMachine> {
    calls: NodeCalls<S>,
    mgmt: ActorRef<MgmtActor<S>>,
    options: JoinOptions,
}

impl<S: StateMachine> Clone for DiscoveryProtocol<S> {
    fn clone(&self) -> Self {
        Self {
            calls: self.calls.clone(),
            mgmt: self.mgmt.clone(),
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
    /// The handler of the node `calls` reaches, whose MgmtActor `mgmt` runs the joins;
    /// newcomers join with `options`.
    pub fn new(calls: NodeCalls<S>, mgmt: ActorRef<MgmtActor<S>>, options: JoinOptions) -> Self {
        Self {
            calls,
            mgmt,
            options,
        }
    }

    async fn serve(&self, conn: &Connection) {
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
        };
        let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut recv)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return self
                    .refuse(&mut send, RefusalKind::Malformed, e.to_string())
                    .await;
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
            return self.refuse(&mut send, RefusalKind::Version, msg).await;
        }
        if self.calls.facts().is_shut_down() {
            return self
                .refuse(&mut send, RefusalKind::Failed, "node is not running".into())
                .await;
        }
        let cluster = &self.calls;
        let remote = conn.remote_id();
        let addr = addrs
            .iter()
            .filter_map(|a| a.parse::<SocketAddr>().ok())
            .fold(EndpointAddr::new(remote), |a, ip| a.with_ip_addr(ip));
        let promote = (!learner).then_some(self.options);
        match admit(
            &mut send,
            (cluster, &self.mgmt),
            &ticket,
            remote,
            addr,
            promote,
        )
        .await
        {
            Ok((id, index)) => {
                info!(node = id, endpoint = %remote.fmt_short(), "node joined through discovery");
                send_msg(&mut send, &DiscoveryResponse::Joined { index }).await;
            }
            Err((kind, message)) => {
                warn!(endpoint = %remote.fmt_short(), ?kind, %message, "join refused");
                return self.refuse(&mut send, kind, message).await;
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
/// wait for catch-up), then (with `promote`) has the MgmtActor run its join. Returns its id and
/// the index of its last change.
async fn admit<S: StateMachine>(
    send: &mut SendStream,
    (cluster, mgmt): (&NodeCalls<S>, &ActorRef<MgmtActor<S>>),
    ticket: &str,
    remote: EndpointId,
    addr: EndpointAddr,
    promote: Option<JoinOptions>,
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
    let Some(options) = promote else {
        return Ok((id, 0));
    };
    match mgmt.ask(Join { id, addr, options }).await {
        Ok(index) => Ok((id, index)),
        Err(e) => Err(failed(&cluster.propose_failed(e))),
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

/// The `reason` label of a refused join.
fn refusal_reason(kind: RefusalKind) -> &'static str {
    match kind {
        RefusalKind::Malformed => "malformed",
        RefusalKind::BadSignature => "bad_signature",
        RefusalKind::WrongCluster => "wrong_cluster",
        RefusalKind::IssuerNotMember => "issuer_not_member",
        RefusalKind::Expired => "expired",
        RefusalKind::WrongRole => "wrong_role",
        RefusalKind::Removed => "removed",
        RefusalKind::Version => "version",
        RefusalKind::Failed => "failed",
    }
}

impl<S: StateMachine> DiscoveryProtocol<S> {
    /// Refuses a join and counts it.
    async fn refuse(&self, send: &mut SendStream, kind: RefusalKind, message: String) {
        let reason = refusal_reason(kind);
        self.calls.metrics().mgmt.refused("discovery", reason);
        refuse(send, kind, message).await;
    }
}

impl<S: StateMachine> ProtocolHandler for DiscoveryProtocol<S> {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        self.serve(&conn).await;
        Ok(())
    }
}

/// A member as the discovery protocol carries it.
pub fn member_to_wire(id: u64, addr: &EndpointAddr) -> DiscoveryMember {
    DiscoveryMember {
        id,
        key: *addr.id.as_bytes(),
        addrs: addr.ip_addrs().map(ToString::to_string).collect(),
    }
}
