//! The answers to single calls: each request kind mapped onto the facade, and the facade's
//! errors onto the protocol's error kinds.

use std::{sync::Arc, time::Duration};

use crate::{
    FatalError, MemberRole, ProposeError, ReadError, StateMachine, TicketRole, TransferError,
    wire::{
        MgmtCheck, MgmtErrorKind, MgmtHealth, MgmtMember, MgmtProbe, MgmtRequest, MgmtResponse,
        MgmtRole, MgmtStatus,
    },
};

use super::{
    super::messages::{Join, MintTicket, Remove},
    MgmtProtocol, error,
};
use crate::{
    calls::{JoinOptions, NodeCalls},
    metrics::RequestLabels,
    wire::endpoint_addr_from_wire as addr_from_wire,
};

impl<S: StateMachine> MgmtProtocol<S> {
    /// The answer to one call (other than a subscription), counted by kind and outcome.
    pub(super) async fn answer(&self, role: MgmtRole, request: MgmtRequest) -> MgmtResponse {
        let kind = request.kind_name();
        let response = self.answer_call(role, request).await;
        let outcome = match &response {
            MgmtResponse::Error { kind, .. } => kind.name(),
            _ => "ok",
        };
        let labels = RequestLabels { kind, outcome };
        let requests = &self.calls.metrics().mgmt.mgmt_requests;
        requests.get_or_create(&labels).inc();
        response
    }

    async fn answer_call(&self, role: MgmtRole, request: MgmtRequest) -> MgmtResponse {
        // What a node reports about itself, even once it stopped for good.
        match request {
            MgmtRequest::Metrics => {
                let text = self.calls.metrics().encode();
                return MgmtResponse::Metrics { text };
            }
            MgmtRequest::Probe { ready } => {
                let report = match ready {
                    true => self.calls.readyz(None).await,
                    false => self.calls.livez(None).await,
                };
                let checks = report.checks.into_iter().map(|c| MgmtCheck {
                    name: c.name.to_owned(),
                    failure: c.failure,
                });
                return MgmtResponse::Probe(MgmtProbe {
                    node_id: self.calls.node_id(),
                    kind: report.kind.to_owned(),
                    checks: checks.collect(),
                });
            }
            _ => {}
        }
        let Some(cluster) = self.cluster() else {
            return node_down();
        };
        let writes = matches!(
            request,
            MgmtRequest::AddLearner { .. }
                | MgmtRequest::AddVoter { .. }
                | MgmtRequest::Join { .. }
                | MgmtRequest::Promote { .. }
                | MgmtRequest::UpdateAddress { .. }
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
                    let join = Join { id, addr, options };
                    changed(
                        self.mgmt
                            .ask(join)
                            .await
                            .map_err(|e| cluster.propose_failed(e)),
                    )
                }
                None => error(MgmtErrorKind::Malformed, "invalid endpoint id", None),
            },
            MgmtRequest::Promote { id } => changed(cluster.promote(id).await),
            MgmtRequest::UpdateAddress { id, key, addrs } => match addr_from_wire(&key, &addrs) {
                Some(addr) => changed(cluster.update_address(id, addr).await),
                None => error(MgmtErrorKind::Malformed, "invalid endpoint id", None),
            },
            MgmtRequest::Remove { id } => {
                let remove = self.mgmt.ask(Remove { id }).await;
                changed(remove.map_err(|e| cluster.propose_failed(e)))
            }
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
                    // Applied: only its answer is lost.
                    Err(e) => error(
                        MgmtErrorKind::Unknown,
                        format!("applied, but its answer does not encode: {e}"),
                        None,
                    ),
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
            // Answered above.
            MgmtRequest::Metrics | MgmtRequest::Probe { .. } => node_down(),
            MgmtRequest::Subscribe { .. } | MgmtRequest::Backup | MgmtRequest::Watch { .. } => {
                error(
                    MgmtErrorKind::Malformed,
                    "a streamed call (subscription, backup, watch) is served by the lane",
                    None,
                )
            }
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
                        let mint = MintTicket {
                            role,
                            valid_for: ttl,
                        };
                        match self.mgmt.ask(mint).await {
                            Ok(t) => MgmtResponse::Ticket {
                                text: t.to_string(),
                            },
                            Err(e) => read_error(&cluster.read_failed(e)),
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn node_down() -> MgmtResponse {
    error(MgmtErrorKind::NodeDown, "node is not running", None)
}

fn propose_error(e: &ProposeError) -> MgmtResponse {
    let kind = match e {
        ProposeError::NotLeader { .. }
        | ProposeError::LeaderUnreachable { .. }
        | ProposeError::Busy
        | ProposeError::Dropped { .. }
        | ProposeError::LeaderChanged { .. } => MgmtErrorKind::Unavailable,
        // A node that stops may have appended the command before it did: the outcome is
        // unknown, so the client must not send it elsewhere.
        ProposeError::Timeout
        | ProposeError::Interrupted
        | ProposeError::ShuttingDown
        | ProposeError::Fatal(_) => MgmtErrorKind::Unknown,
        ProposeError::Membership(_) | ProposeError::TooLarge { .. } => MgmtErrorKind::Refused,
        ProposeError::Codec(_) => MgmtErrorKind::Malformed,
    };
    let hint = match e {
        ProposeError::NotLeader { leader_hint } => *leader_hint,
        _ => None,
    };
    error(kind, e, hint)
}

pub(super) fn read_error(e: &ReadError) -> MgmtResponse {
    let kind = match e {
        ReadError::NoLeader | ReadError::LeadershipChanged | ReadError::Interrupted => {
            MgmtErrorKind::Unavailable
        }
        ReadError::Timeout => MgmtErrorKind::Unknown,
        _ => MgmtErrorKind::NodeDown,
    };
    error(kind, e, None)
}

fn changed(result: Result<u64, ProposeError>) -> MgmtResponse {
    match result {
        Ok(index) => MgmtResponse::Changed { index },
        Err(e) => propose_error(&e),
    }
}

async fn status<S: StateMachine>(cluster: &NodeCalls<S>) -> MgmtResponse {
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
                fresh: m.node_id == status.node_id
                    || contact < view.election_timeout.as_millis() as u64,
                diverged: status.diverged.contains(&m.node_id),
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
        role: status.role.name().into(),
        members,
        db_size_bytes: u64::try_from(cluster.metrics().storage.db_size_bytes.get()).unwrap_or(0),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn health<S: StateMachine>(cluster: &NodeCalls<S>) -> MgmtResponse {
    if let Some(e) = cluster.fatal_error() {
        return stopped_health(cluster, &e);
    }
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
        storage_ok: cluster.fatal_error().is_none(),
        role: status.role.name().into(),
        apply_lag: status.commit_index.saturating_sub(status.applied_index),
        data_corruption: status.diverged,
        stopped: None,
    })
}

/// The health of a node that stopped for good: nothing it serves, and why.
fn stopped_health<S: StateMachine>(cluster: &NodeCalls<S>, e: &FatalError) -> MgmtResponse {
    let me = cluster.node_id();
    let corrupt = e.corruption().is_some() || matches!(e, FatalError::StaleDataDir { .. });
    MgmtResponse::Health(MgmtHealth {
        node_id: me,
        quorum_available: false,
        healthy_voters: Vec::new(),
        voters: Vec::new(),
        storage_ok: !matches!(e, FatalError::Storage(_)) && !corrupt,
        role: "stopped".into(),
        apply_lag: 0,
        data_corruption: if corrupt { vec![me] } else { Vec::new() },
        stopped: Some(e.to_string()),
    })
}
