//! The RaftActor's messages, one struct each; handlers are short and call the actor's methods.

use kameo::{
    message::{Context, Message},
    reply::DelegatedReply,
};
use raft::eraftpb::MessageType;
use tokio::time::Instant;
use tracing::{debug, trace};

use super::{
    actor::{Lifecycle, RaftActor},
    peers::Contact,
    pending::{ReadFn, Taken, encode_context},
};
use crate::{
    config::TICKS_PER_HEARTBEAT,
    driver::ProposeRefused,
    error::{CodecError, FatalError, ProposeError, ReadError, StaleEvidence},
    peer::{Inbound, PeerUnreachable},
    state_machine::StateMachine,
    trace::TraceContext,
    types::{NodeId, NodeStatus, Role},
    wire::{
        CloseCode, ForwardOutcome, ForwardReply, ForwardRequest, ForwardedProposal, InboundPayload,
    },
};

/// Propose an encoded command; the reply comes once it is applied (or fails).
///
/// The RaftActor owns the proposal's fate, its deadline included: it answers
/// [`ProposeError::Timeout`] (outcome unknown) at the first tick past `deadline`, and no other
/// timer decides. A caller that also bounds its wait (the facade does, in case the actor cannot
/// run at all: a disk that never returns) must give the actor more time than the deadline.
#[derive(Debug)]
pub struct Propose {
    /// The command, serialized with postcard.
    pub data: Vec<u8>,
    /// When the caller stops waiting; `None`: the node's request timeout from now.
    pub deadline: Option<Instant>,
    /// The caller's trace context (taken from its current span by [`Self::new`] and
    /// [`Self::until`]; always `None` without the `otel` feature).
    pub trace: Option<TraceContext>,
}

impl Propose {
    /// A proposal with the node's request timeout.
    pub fn new(data: Vec<u8>) -> Self {
        Self {
            data,
            deadline: None,
            trace: TraceContext::current(),
        }
    }

    /// A proposal the caller waits for until `deadline`.
    pub fn until(data: Vec<u8>, deadline: Instant) -> Self {
        Self {
            data,
            deadline: Some(deadline),
            trace: TraceContext::current(),
        }
    }
}

impl<S: StateMachine> Message<Propose> for RaftActor<S> {
    type Reply = DelegatedReply<Result<S::Response, ProposeError>>;

    async fn handle(&mut self, msg: Propose, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let (delegated, reply) = ctx.reply_sender();
        let Some(reply) = reply else {
            return delegated;
        };
        if let Err(e) = self.check_running() {
            reply.send(Err(e));
            return delegated;
        }
        // A committed entry that does not decode stops every replica (it is never skipped), so
        // bytes from a remote client must be a command before they enter the log.
        if let Err(e) = postcard::from_bytes::<S::Command>(&msg.data) {
            reply.send(Err(ProposeError::Codec(CodecError::new(e))));
            return delegated;
        }
        let id = self.requests.next_id();
        let deadline = self.deadline_at(msg.deadline);
        if self.driver.role() == Role::Leader {
            let mut context = encode_context(self.id(), self.session, id);
            let span = append_span(msg.trace, &mut context, self.id());
            let _entered = span.as_ref().map(tracing::Span::enter);
            match self.driver.propose(context, msg.data) {
                Ok((index, _)) => {
                    self.requests
                        .proposals
                        .insert(id, reply, Taken::Appended(index), deadline)
                }
                Err(ProposeRefused::NotLeader(leader_hint)) => {
                    reply.send(Err(ProposeError::NotLeader { leader_hint }))
                }
                Err(_) => reply.send(Err(ProposeError::Busy)),
            }
        } else if let Some(leader) = self.driver.leader() {
            let term = self.driver.term();
            let forward = ForwardedProposal {
                session: self.session,
                id,
                term,
                request: ForwardRequest::Command(msg.data),
                trace: msg.trace,
            };
            self.replication
                .outbox
                .entry(leader)
                .or_default()
                .forwards
                .push(forward);
            self.requests
                .proposals
                .insert(id, reply, Taken::Forwarded(term), deadline);
        } else {
            reply.send(Err(ProposeError::NotLeader { leader_hint: None }));
        }
        delegated
    }
}

/// Run a closure against the local state machine now (may be stale on a follower).
pub struct Query<F>(pub F);

impl<S, F, R> Message<Query<F>> for RaftActor<S>
where
    S: StateMachine,
    F: FnOnce(&S) -> R + Send + 'static,
    R: Send + 'static,
{
    type Reply = Result<R, ReadError>;

    async fn handle(
        &mut self,
        Query(f): Query<F>,
        _: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        self.check_readable()?;
        Ok(f(&self.sm))
    }
}

/// Run a closure against the state machine once a ReadIndex round proves it is up to date.
pub struct LinearizableQuery<F>(pub F);

impl<S, F, R> Message<LinearizableQuery<F>> for RaftActor<S>
where
    S: StateMachine,
    F: FnOnce(&S) -> R + Send + 'static,
    R: Send + 'static,
{
    type Reply = DelegatedReply<Result<R, ReadError>>;

    async fn handle(
        &mut self,
        LinearizableQuery(f): LinearizableQuery<F>,
        ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        let (delegated, reply) = ctx.reply_sender();
        let Some(reply) = reply else {
            return delegated;
        };
        if let Err(e) = self.check_readable() {
            reply.send(Err(e));
            return delegated;
        }
        if self.driver.leader().is_none() {
            reply.send(Err(ReadError::NoLeader));
            return delegated;
        }
        let id = self.requests.next_id();
        let run: ReadFn<S> = Box::new(move |sm| reply.send(sm.map(f)));
        // A read not confirmed within two heartbeats was most likely dropped (by a leader that
        // lost its term, or by a new leader not yet ready): the caller retries.
        let deadline = self.now + 2 * TICKS_PER_HEARTBEAT as u64;
        // The read joins the next ReadIndex round, started before the next Ready round with
        // every read taken meanwhile.
        self.requests.reads.insert(id, run, deadline);
        delegated
    }
}

/// This node's status.
#[derive(Debug, Clone, Copy)]
pub struct GetStatus;

impl<S: StateMachine> Message<GetStatus> for RaftActor<S> {
    type Reply = NodeStatus;

    async fn handle(&mut self, _: GetStatus, _: &mut Context<Self, NodeStatus>) -> NodeStatus {
        self.status()
    }
}

/// Stop taking work, fail what is pending with `ShuttingDown`, close peer connections.
#[derive(Debug, Clone, Copy)]
pub struct Shutdown;

impl<S: StateMachine> Message<Shutdown> for RaftActor<S> {
    /// The fatal error that had stopped the node before, if one had.
    type Reply = Option<FatalError>;

    async fn handle(
        &mut self,
        _: Shutdown,
        _: &mut Context<Self, Option<FatalError>>,
    ) -> Option<FatalError> {
        let failure = match &self.lifecycle {
            Lifecycle::Failed(e) => Some(e.clone()),
            _ => None,
        };
        self.shut_down().await;
        failure
    }
}

/// Whether a peer's frame answers something this node sent (a Raft response, a reply to a
/// forward): proof that both directions of the link work. A peer that only sends requests (a
/// follower campaigning, its checkpoints) may not be hearing us at all.
fn answers_us(payload: &InboundPayload) -> bool {
    match payload {
        InboundPayload::Raft(msgs) => msgs.iter().any(|m| {
            matches!(
                m.msg_type,
                MessageType::MsgAppendResponse
                    | MessageType::MsgHeartbeatResponse
                    | MessageType::MsgRequestVoteResponse
                    | MessageType::MsgRequestPreVoteResponse
                    | MessageType::MsgReadIndexResp
            )
        }),
        InboundPayload::ForwardReply(_) => true,
        InboundPayload::Forward(_) | InboundPayload::Checkpoint { .. } => false,
    }
}

impl<S: StateMachine> Message<Inbound> for RaftActor<S> {
    type Reply = ();

    async fn handle(&mut self, msg: Inbound, _: &mut Context<Self, ()>) {
        if self.check_running().is_err() {
            return;
        }
        let now = self.now;
        let contact = self
            .replication
            .heard
            .entry(msg.from)
            .or_insert(Contact::new(now));
        contact.frame = now;
        if answers_us(&msg.payload) {
            contact.answer = now;
        }
        match msg.payload {
            InboundPayload::Checkpoint { index, hash } => self.on_checkpoint(msg.from, index, hash),
            InboundPayload::Raft(msgs) => {
                for m in msgs {
                    trace!(from = msg.from, kind = ?m.msg_type, "step");
                    if m.msg_type == MessageType::MsgHeartbeat {
                        self.heartbeat_from(msg.from);
                    }
                    if !self.check_incoming(&m) {
                        return;
                    }
                    if let Err(e) = self.driver.step(m) {
                        debug!(from = msg.from, error = %e, "message ignored");
                    }
                }
            }
            InboundPayload::Forward(proposals) => self.accept_forwards(msg.from, proposals),
            InboundPayload::ForwardReply(replies) => {
                // Replies to a previous incarnation's forwards are not ours.
                let session = self.session;
                for r in replies.into_iter().filter(|r| r.session == session) {
                    self.forward_answered(r.id, r.outcome);
                }
            }
        }
    }
}

impl<S: StateMachine> RaftActor<S> {
    /// Records how late a heartbeat from `leader` came after its previous one.
    fn heartbeat_from(&mut self, leader: NodeId) {
        let now = std::time::Instant::now();
        if let Some((from, at)) = self.replication.last_heartbeat
            && from == leader
        {
            let late = now
                .duration_since(at)
                .saturating_sub(self.config.heartbeat_interval);
            self.metrics
                .consensus
                .heartbeat_delay_seconds
                .observe(late.as_secs_f64());
        }
        self.replication.last_heartbeat = Some((leader, now));
    }

    /// The leader's answer to our forward `id`.
    fn forward_answered(&mut self, id: u64, outcome: ForwardOutcome) {
        match outcome {
            ForwardOutcome::Appended { index, .. } => {
                self.requests.proposals.set_index(id, index);
                self.requests.changes.set_index(id, index);
            }
            ForwardOutcome::TransferStarted { to } => self.forwarded_transfer_started(id, to),
            ForwardOutcome::NotLeader { leader_hint } => {
                self.requests
                    .proposals
                    .fail(id, ProposeError::NotLeader { leader_hint });
                self.requests
                    .changes
                    .fail(id, ProposeError::NotLeader { leader_hint });
                self.forwarded_transfer_refused(id, None);
            }
            ForwardOutcome::Busy => {
                self.requests.proposals.fail(id, ProposeError::Busy);
                self.requests.changes.fail(id, ProposeError::Busy);
            }
            ForwardOutcome::MembershipRefused(refusal) => {
                self.requests.changes.fail(id, refusal.into());
            }
            ForwardOutcome::TransferRefused(refusal) => {
                self.forwarded_transfer_refused(id, Some(refusal));
            }
        }
    }

    /// As leader, appends proposals a follower forwarded and tells it where they went.
    fn accept_forwards(&mut self, from: NodeId, proposals: Vec<ForwardedProposal>) {
        let leads = self.driver.role() == Role::Leader;
        for p in proposals {
            // Commands and changes are appended only in the term they were forwarded in (see
            // `ForwardedProposal::term`); a transfer is not appended and has no such bound.
            let in_term = leads && p.term == self.driver.term();
            let outcome = match p.request {
                ForwardRequest::Transfer(to) if leads => self.accept_forwarded_transfer(to),
                ForwardRequest::Command(data) if in_term => {
                    let mut context = encode_context(from, p.session, p.id);
                    let span = append_span(p.trace, &mut context, self.id());
                    let _entered = span.as_ref().map(tracing::Span::enter);
                    match self.driver.propose(context, data) {
                        Ok((index, term)) => ForwardOutcome::Appended { index, term },
                        Err(ProposeRefused::Dropped) => ForwardOutcome::Busy,
                        Err(_) => ForwardOutcome::NotLeader {
                            leader_hint: self.driver.leader(),
                        },
                    }
                }
                ForwardRequest::Membership { change, max_lag } if in_term => {
                    self.accept_forwarded_change(from, (p.session, p.id), &change, max_lag)
                }
                _ => ForwardOutcome::NotLeader {
                    leader_hint: self.driver.leader(),
                },
            };
            let reply = ForwardReply {
                session: p.session,
                id: p.id,
                outcome,
            };
            self.replication
                .outbox
                .entry(from)
                .or_default()
                .replies
                .push(reply);
        }
    }
}

impl<S: StateMachine> Message<PeerUnreachable> for RaftActor<S> {
    type Reply = ();

    async fn handle(&mut self, msg: PeerUnreachable, _: &mut Context<Self, ()>) {
        match msg.refused {
            Some(CloseCode::Removed) if self.membership.contains(self.id()) => {
                // A member refused us as removed: tombstones are permanent, so this node's
                // removal was committed even if it never applied it itself.
                self.removed();
                return;
            }
            Some(CloseCode::StaleIncarnation) => {
                let evidence = StaleEvidence::IncarnationBehind {
                    peer: msg.peer,
                    ours: self.session,
                };
                self.stale(evidence);
                return;
            }
            _ => {}
        }
        self.driver.report_unreachable(msg.peer);
        self.unsent_forwards(msg.peer, msg.unsent_forwards);
    }
}

/// The entries this node holds from `from` on, with its status: for invariant checks in tests
/// and for tools. Each entry is `(index, term, hash of its type, context and data)`.
#[derive(Debug, Clone, Copy)]
pub struct InspectLog {
    /// First index wanted (clamped to what the log still holds).
    pub from: u64,
}

/// What [`InspectLog`] returns.
#[derive(Debug, Clone, kameo::Reply)]
pub struct LogView {
    /// The node's status.
    pub status: NodeStatus,
    /// The node's vote in the current term (0: none).
    pub vote: NodeId,
    /// `(index, term, content hash)` of each entry held.
    pub entries: Vec<(u64, u64, u64)>,
}

/// FNV-1a: a stable content hash for comparing entries across nodes.
pub(crate) fn entry_hash(e: &raft::eraftpb::Entry) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let ty = [e.entry_type as i32 as u8];
    for b in ty.iter().chain(e.context.iter()).chain(e.data.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl<S: StateMachine> Message<InspectLog> for RaftActor<S> {
    type Reply = LogView;

    async fn handle(&mut self, msg: InspectLog, _: &mut Context<Self, LogView>) -> LogView {
        LogView {
            status: self.status(),
            vote: self.driver.vote(),
            entries: self
                .driver
                .entries_from(msg.from)
                .iter()
                .map(|e| (e.index, e.term, entry_hash(e)))
                .collect(),
        }
    }
}

/// For a traced proposal: puts its trace context into the entry's `context` and opens the
/// `append` span under it (the leader appending it to its log).
fn append_span(
    trace: Option<TraceContext>,
    context: &mut Vec<u8>,
    node: NodeId,
) -> Option<tracing::Span> {
    let trace = trace?;
    trace.append_to(context);
    let span = tracing::info_span!("append", node);
    trace.adopt(&span);
    Some(span)
}
