//! The MgmtActor's messages, one struct each. Every handler decides from the actor's state and
//! returns at once; a workflow's outcome is delegated to the task that runs it.

use std::{collections::BTreeMap, panic::AssertUnwindSafe, time::Duration};

use futures_util::FutureExt;

use iroh::{EndpointAddr, EndpointId};
use kameo::{
    message::{Context, Message},
    reply::DelegatedReply,
};
use tracing::{debug, warn};

use super::{
    actor::{MgmtActor, Params, Running, Workflow, WorkflowReply},
    admission::role_of,
};
use crate::{
    calls::JoinOptions,
    error::{ProposeError, ReadError},
    membership::MembershipRefusal,
    state_machine::StateMachine,
    ticket::{Ticket, TicketRole},
    types::NodeId,
    wire::{CloseCode, MgmtRole},
};

/// A client connected from `remote` (with an optional ticket): admit it or say why not.
#[derive(Debug)]
pub struct Admit {
    /// The client's endpoint.
    pub remote: EndpointId,
    /// The ticket its Hello carried.
    pub ticket: Option<String>,
    /// The connection's id in the registry, chosen by the connection task (which tells
    /// [`Disconnected`] with it when it ends, admitted or not).
    pub connection: u64,
}

/// An admitted connection: its registry id (tell [`Disconnected`] with it when it closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, kameo::Reply)]
pub struct Admitted {
    /// The connection's id in the registry.
    pub connection: u64,
    /// What it may do.
    pub role: MgmtRole,
}

impl<S: StateMachine> Message<Admit> for MgmtActor<S> {
    /// Refused: the close code and the reason.
    type Reply = Result<Admitted, (CloseCode, String)>;

    async fn handle(&mut self, msg: Admit, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let refused = self.admit(msg);
        if let Err((code, _)) = &refused {
            let reason = match code {
                CloseCode::NotAMember => "not_a_member",
                CloseCode::TooManyConnections => "too_many_connections",
                CloseCode::ShuttingDown => "node_down",
                _ => "other",
            };
            self.calls.metrics().mgmt.refused("management", reason);
        }
        refused
    }
}

impl<S: StateMachine> MgmtActor<S> {
    fn admit(&mut self, msg: Admit) -> Result<Admitted, (CloseCode, String)> {
        if let Some(e) = self.calls.fatal_error() {
            return Err((CloseCode::ShuttingDown, e.to_string()));
        }
        let role = role_of(
            &self.membership.borrow(),
            &self.allowlist,
            msg.remote,
            msg.ticket.as_deref(),
            std::time::SystemTime::now(),
        )
        .map_err(|why| (CloseCode::NotAMember, why))?;
        let connection = msg.connection;
        if !self.register(connection, msg.remote, role) {
            let why = format!(
                "at most {} connections per key",
                super::MAX_CONNECTIONS_PER_KEY
            );
            return Err((CloseCode::TooManyConnections, why));
        }
        debug!(endpoint = %msg.remote.fmt_short(), ?role, connection, "management client admitted");
        Ok(Admitted { connection, role })
    }
}

/// An admitted connection closed.
#[derive(Debug, Clone, Copy)]
pub struct Disconnected {
    /// Its registry id.
    pub connection: u64,
}

impl<S: StateMachine> Message<Disconnected> for MgmtActor<S> {
    type Reply = ();

    async fn handle(&mut self, msg: Disconnected, _: &mut Context<Self, ()>) {
        self.unregister(msg.connection);
    }
}

/// A connection asks to open one more subscription; `false`: it holds
/// [`super::MAX_SUBSCRIPTIONS`] already (or is not registered).
#[derive(Debug, Clone, Copy)]
pub struct OpenSubscription {
    /// The connection's registry id.
    pub connection: u64,
}

impl<S: StateMachine> Message<OpenSubscription> for MgmtActor<S> {
    type Reply = bool;

    async fn handle(&mut self, msg: OpenSubscription, _: &mut Context<Self, bool>) -> bool {
        match self.connections.get_mut(&msg.connection) {
            Some(c) if c.subscriptions < super::MAX_SUBSCRIPTIONS => {
                c.subscriptions += 1;
                true
            }
            _ => false,
        }
    }
}

/// A subscription opened with [`OpenSubscription`] ended.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionEnded {
    /// The connection's registry id.
    pub connection: u64,
}

impl<S: StateMachine> Message<SubscriptionEnded> for MgmtActor<S> {
    type Reply = ();

    async fn handle(&mut self, msg: SubscriptionEnded, _: &mut Context<Self, ()>) {
        if let Some(c) = self.connections.get_mut(&msg.connection) {
            c.subscriptions = c.subscriptions.saturating_sub(1);
        }
    }
}

/// Mint a ticket signed by this node: `role` is what it grants, `valid_for` how long. It names
/// up to [`crate::MAX_TICKET_MEMBERS`] current members to contact.
#[derive(Debug, Clone, Copy)]
pub struct MintTicket {
    /// What it grants.
    pub role: TicketRole,
    /// How long it is valid.
    pub valid_for: Duration,
}

impl<S: StateMachine> Message<MintTicket> for MgmtActor<S> {
    type Reply = Result<Ticket, ReadError>;

    async fn handle(&mut self, msg: MintTicket, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        self.ticket(msg.role, msg.valid_for)
    }
}

/// Add `id` as a learner, wait until it is within `options.max_lag` of the leader's log, then
/// promote it (see [`crate::Node::join`]). The answer is the index of the last change.
#[derive(Debug, Clone)]
pub struct Join {
    /// The new member's id.
    pub id: NodeId,
    /// Its endpoint id and addresses.
    pub addr: EndpointAddr,
    /// Catch-up bound and timeout.
    pub options: JoinOptions,
}

impl<S: StateMachine> Message<Join> for MgmtActor<S> {
    type Reply = DelegatedReply<Result<u64, ProposeError>>;

    async fn handle(&mut self, msg: Join, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let (delegated, reply) = ctx.reply_sender();
        if let Some(reply) = reply {
            let workflow = Workflow::Join {
                id: msg.id,
                endpoint: msg.addr.id,
            };
            let calls = self.calls.clone();
            let params = Params::Join(msg.addr.clone(), msg.options);
            self.start(workflow, params, reply, async move {
                calls.join(msg.id, msg.addr, msg.options).await
            });
        }
        delegated
    }
}

/// Remove member `id`, handing leadership over first if it leads (see
/// [`crate::Node::remove_member`]).
#[derive(Debug, Clone, Copy)]
pub struct Remove {
    /// The member leaving.
    pub id: NodeId,
}

impl<S: StateMachine> Message<Remove> for MgmtActor<S> {
    type Reply = DelegatedReply<Result<u64, ProposeError>>;

    async fn handle(&mut self, msg: Remove, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let (delegated, reply) = ctx.reply_sender();
        if let Some(reply) = reply {
            let calls = self.calls.clone();
            let workflow = Workflow::Remove { id: msg.id };
            self.start(workflow, Params::Remove, reply, async move {
                calls.remove_member(msg.id).await
            });
        }
        delegated
    }
}

/// Swap voter `old` for `id` in one joint change, handing leadership over first if `old`
/// leads (see [`crate::Node::replace`]).
#[derive(Debug, Clone)]
pub struct Replace {
    /// The voter leaving.
    pub old: NodeId,
    /// The new voter's id.
    pub id: NodeId,
    /// Its endpoint id and addresses.
    pub addr: EndpointAddr,
}

impl<S: StateMachine> Message<Replace> for MgmtActor<S> {
    type Reply = DelegatedReply<Result<u64, ProposeError>>;

    async fn handle(&mut self, msg: Replace, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let (delegated, reply) = ctx.reply_sender();
        if let Some(reply) = reply {
            let workflow = Workflow::Replace {
                old: msg.old,
                id: msg.id,
            };
            let calls = self.calls.clone();
            let params = Params::Replace(msg.addr.clone());
            self.start(workflow, params, reply, async move {
                calls.replace(msg.old, msg.id, msg.addr).await
            });
        }
        delegated
    }
}

/// A workflow task finished.
pub(super) struct WorkflowDone {
    pub(super) workflow: Workflow,
    pub(super) outcome: Result<u64, ProposeError>,
}

impl<S: StateMachine> Message<WorkflowDone> for MgmtActor<S> {
    type Reply = ();

    async fn handle(&mut self, msg: WorkflowDone, _: &mut Context<Self, ()>) {
        let Some(running) = self.workflows.remove(&msg.workflow) else {
            return;
        };
        if let Err(e) = &msg.outcome {
            warn!(workflow = ?msg.workflow, error = %e, "membership workflow failed");
        }
        for w in running.waiters {
            w.send(msg.outcome.clone());
        }
    }
}

/// What the management plane holds now (for tests and operators).
#[derive(Debug, Clone, Copy)]
pub struct GetMgmtState;

/// The management plane's state.
#[derive(Debug, Clone, PartialEq, Eq, kameo::Reply)]
pub struct MgmtState {
    /// Admitted connections.
    pub connections: usize,
    /// Admitted connections per key.
    pub per_key: BTreeMap<EndpointId, usize>,
    /// Open subscriptions over all connections.
    pub subscriptions: usize,
    /// Workflows in progress.
    pub workflows: Vec<Workflow>,
    /// Callers waiting on those workflows (the same change asked twice waits on one run).
    pub waiters: usize,
}

impl<S: StateMachine> Message<GetMgmtState> for MgmtActor<S> {
    type Reply = MgmtState;

    async fn handle(&mut self, _: GetMgmtState, _: &mut Context<Self, MgmtState>) -> MgmtState {
        MgmtState {
            connections: self.connections.len(),
            per_key: self.per_key.clone(),
            subscriptions: self.connections.values().map(|c| c.subscriptions).sum(),
            workflows: self.workflows.keys().cloned().collect(),
            waiters: self.workflows.values().map(|w| w.waiters.len()).sum(),
        }
    }
}

impl<S: StateMachine> MgmtActor<S> {
    /// Runs `run` as the task of `workflow`, or adds `reply` to the waiters of the same
    /// workflow already running. The same key with other parameters is refused as a change in
    /// progress (nothing is done for it).
    fn start(
        &mut self,
        workflow: Workflow,
        params: Params,
        reply: WorkflowReply,
        run: impl Future<Output = Result<u64, ProposeError>> + Send + 'static,
    ) {
        if let Some(running) = self.workflows.get_mut(&workflow) {
            if running.params == params {
                running.waiters.push(reply);
            } else {
                reply.send(Err(MembershipRefusal::InProgress.into()));
            }
            return;
        }
        let me = self.myself.clone();
        let done = workflow.clone();
        let task = tokio::spawn(async move {
            let outcome = settle(run).await;
            if let Some(me) = me.upgrade() {
                let _ = me
                    .tell(WorkflowDone {
                        workflow: done,
                        outcome,
                    })
                    .await;
            }
        });
        let running = Running {
            params,
            task,
            waiters: vec![reply],
        };
        self.workflows.insert(workflow, running);
    }
}

/// A workflow's outcome. One that panics must still answer its waiters: what it had done by
/// then is unknown, so the answer is `Interrupted`, never a guess.
async fn settle(
    run: impl Future<Output = Result<u64, ProposeError>> + Send,
) -> Result<u64, ProposeError> {
    AssertUnwindSafe(run)
        .catch_unwind()
        .await
        .unwrap_or(Err(ProposeError::Interrupted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_workflow_is_answered_interrupted() {
        let panics = async { panic!("a workflow bug") };
        assert!(matches!(
            settle(panics).await,
            Err(ProposeError::Interrupted)
        ));
        assert!(matches!(settle(async { Ok(7) }).await, Ok(7)));
        let refused = async { Err(ProposeError::Busy) };
        assert!(matches!(settle(refused).await, Err(ProposeError::Busy)));
    }
}
