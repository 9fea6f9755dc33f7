//! The newcomer side of the discovery protocol ([`request_join`]): what
//! [`crate::RaftClusterBuilder::join_ticket`] runs before starting the node. The member side is
//! the runtime's [`iroh_raft_actors::DiscoveryProtocol`]; the wire format is specified in
//! [`iroh_raft_actors::wire`].

use std::time::Duration;

use futures_util::{StreamExt, stream::FuturesUnordered};
use iroh::{Endpoint, endpoint::Connection};
use iroh_raft_actors::{
    Member, Ticket,
    wire::{
        DISCOVERY_ALPN, DISCOVERY_VERSION, DiscoveryMember, DiscoveryRequest, DiscoveryResponse,
        encode_discovery, read_response,
    },
};
use tracing::warn;

use crate::{BuildError, net::addr_from_wire};

/// How long a member gives a newcomer to send its request; one attempt waits three times that.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
    // Through the ticket's relays too: the members may be behind NATs.
    let members = ticket.members_via_relays();
    let mut dials: FuturesUnordered<_> = members
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
