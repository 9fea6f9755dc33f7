//! [`MgmtActor`]: owns the management plane's state and decisions — admission, the registry of
//! live client connections and their subscriptions, tickets, and the multi-step membership
//! workflows (join, remove with a leadership hand-off, replace). Requests do not run here: lanes
//! send proposals and reads straight to the RaftActor, and a workflow runs in a task this actor
//! spawns, owns and aborts when it stops.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use iroh::{EndpointAddr, EndpointId, SecretKey};
use kameo::{
    Actor,
    actor::{ActorRef, WeakActorRef},
    error::ActorStopReason,
    reply::ReplySender,
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    calls::{JoinOptions, NodeCalls},
    error::{FatalError, ProposeError, ReadError},
    membership::Membership,
    state_machine::StateMachine,
    ticket::{ClusterId, MAX_TICKET_MEMBERS, Ticket, TicketRole},
    types::NodeId,
    wire::MgmtRole,
};

/// Admitted connections one endpoint (key) may hold to this node at once.
pub const MAX_CONNECTIONS_PER_KEY: usize = 16;

/// Subscriptions one management connection may hold at once.
pub const MAX_SUBSCRIPTIONS: usize = 32;

/// Capacity of the MgmtActor's mailbox. Its traffic is one message per connection, subscription
/// or workflow event, never one per request.
pub const MGMT_MAILBOX: usize = 1024;

/// How a node's management plane admits clients.
pub struct MgmtOptions<S: StateMachine> {
    /// Endpoints admitted without a ticket, with their role.
    pub allowlist: BTreeMap<EndpointId, MgmtRole>,
    /// Answers remote reads (`None`: remote reads are unsupported).
    pub reader: Option<super::RemoteReader<S>>,
    /// Answers remote watches (`None`: unsupported).
    pub watcher: Option<super::RemoteWatcher<S>>,
    /// How newcomers that present a join ticket are brought in.
    pub join_options: JoinOptions,
    /// The relays the cluster's members are reachable through, named in the tickets this node
    /// issues (empty: none).
    pub relays: Vec<iroh::RelayUrl>,
}

impl<S: StateMachine> Default for MgmtOptions<S> {
    fn default() -> Self {
        Self {
            allowlist: BTreeMap::new(),
            reader: None,
            watcher: None,
            join_options: JoinOptions::default(),
            relays: Vec::new(),
        }
    }
}

impl<S: StateMachine> Clone for MgmtOptions<S> {
    fn clone(&self) -> Self {
        Self {
            allowlist: self.allowlist.clone(),
            reader: self.reader.clone(),
            watcher: self.watcher.clone(),
            join_options: self.join_options,
            relays: self.relays.clone(),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for MgmtOptions<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgmtOptions")
            .field("allowlist", &self.allowlist.len())
            .field("reads", &self.reader.is_some())
            .field("watches", &self.watcher.is_some())
            .field("join_options", &self.join_options)
            .field("relays", &self.relays)
            .finish()
    }
}

/// What the MgmtActor is started (and restarted) with.
pub struct MgmtArgs<S: StateMachine> {
    /// Calls on the node (the workflows make them).
    pub calls: NodeCalls<S>,
    /// This node's key, to sign tickets.
    pub secret: SecretKey,
    /// The applied membership, admission's ground truth.
    pub membership: watch::Receiver<Arc<Membership>>,
    /// The allowlist.
    pub allowlist: BTreeMap<EndpointId, MgmtRole>,
    /// The relays named in the tickets this node issues.
    pub relays: Vec<iroh::RelayUrl>,
}

impl<S: StateMachine> Clone for MgmtArgs<S> {
    fn clone(&self) -> Self {
        Self {
            calls: self.calls.clone(),
            secret: self.secret.clone(),
            membership: self.membership.clone(),
            allowlist: self.allowlist.clone(),
            relays: self.relays.clone(),
        }
    }
}

/// One admitted management connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Connection {
    pub(super) key: EndpointId,
    pub(super) role: MgmtRole,
    pub(super) subscriptions: usize,
}

/// A multi-step membership change in progress.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workflow {
    /// Add as a learner, wait for it to catch up, promote.
    Join {
        /// The member joining.
        id: NodeId,
        /// Its endpoint.
        endpoint: EndpointId,
    },
    /// Hand leadership over if it leads, then remove it.
    Remove {
        /// The member leaving.
        id: NodeId,
    },
    /// Hand leadership over if `old` leads, then swap it for `id` in one joint change.
    Replace {
        /// The voter leaving.
        old: NodeId,
        /// The voter coming in.
        id: NodeId,
    },
}

pub(super) type WorkflowReply = ReplySender<Result<u64, ProposeError>>;

/// What exactly a workflow was asked to do, beyond its key: a request for the same key with
/// other parameters is not the same change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Params {
    Join(EndpointAddr, JoinOptions),
    Remove,
    Replace(EndpointAddr),
}

/// A workflow's task and everyone waiting for its outcome (a client that retries the same
/// change waits on the running one instead of starting another).
pub(super) struct Running {
    pub(super) params: Params,
    pub(super) task: JoinHandle<()>,
    pub(super) waiters: Vec<WorkflowReply>,
}

/// Owns the management plane's state. See the module docs.
pub struct MgmtActor<S: StateMachine> {
    pub(super) calls: NodeCalls<S>,
    pub(super) secret: SecretKey,
    pub(super) membership: watch::Receiver<Arc<Membership>>,
    pub(super) allowlist: BTreeMap<EndpointId, MgmtRole>,
    pub(super) relays: Vec<iroh::RelayUrl>,
    pub(super) connections: BTreeMap<u64, Connection>,
    pub(super) per_key: BTreeMap<EndpointId, usize>,
    pub(super) workflows: BTreeMap<Workflow, Running>,
    pub(super) myself: WeakActorRef<Self>,
}

impl<S: StateMachine> std::fmt::Debug for MgmtActor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgmtActor")
            .field("node_id", &self.calls.node_id())
            .field("connections", &self.connections.len())
            .field("workflows", &self.workflows.len())
            .finish()
    }
}

impl<S: StateMachine> Actor for MgmtActor<S> {
    type Args = MgmtArgs<S>;
    type Error = std::convert::Infallible;

    async fn on_start(args: MgmtArgs<S>, me: ActorRef<Self>) -> Result<Self, Self::Error> {
        Ok(Self {
            calls: args.calls,
            secret: args.secret,
            membership: args.membership,
            allowlist: args.allowlist,
            relays: args.relays,
            connections: BTreeMap::new(),
            per_key: BTreeMap::new(),
            workflows: BTreeMap::new(),
            myself: me.downgrade(),
        })
    }

    async fn on_stop(
        &mut self,
        _: WeakActorRef<Self>,
        _: ActorStopReason,
    ) -> Result<(), Self::Error> {
        // A workflow's outcome is unknown once it is cut short: a change it proposed may still
        // be applied. One is known: this node stopped because it applied its own removal (the
        // node stops with it, and this actor with the node), so removing it was committed.
        let me = self.calls.node_id();
        let removed = matches!(
            self.calls.fatal_error(),
            Some(FatalError::Removed { node }) if node == me
        );
        for (workflow, running) in std::mem::take(&mut self.workflows) {
            running.task.abort();
            let outcome = match workflow {
                Workflow::Remove { id } if removed && id == me => Ok(0),
                _ => Err(ProposeError::Interrupted),
            };
            for w in running.waiters {
                w.send(outcome.clone());
            }
        }
        Ok(())
    }
}

impl<S: StateMachine> MgmtActor<S> {
    /// Registers admitted connection `id` of `key`, unless the key holds
    /// [`MAX_CONNECTIONS_PER_KEY`] already (or `id` is registered).
    pub(super) fn register(&mut self, id: u64, key: EndpointId, role: MgmtRole) -> bool {
        let n = self.per_key.get(&key).copied().unwrap_or(0);
        if n >= MAX_CONNECTIONS_PER_KEY || self.connections.contains_key(&id) {
            return false;
        }
        self.per_key.insert(key, n + 1);
        let connection = Connection {
            key,
            role,
            subscriptions: 0,
        };
        self.connections.insert(id, connection);
        self.count_clients();
        true
    }

    fn count_clients(&self) {
        let n = i64::try_from(self.connections.len()).unwrap_or(i64::MAX);
        self.calls.metrics().mgmt.mgmt_clients.set(n);
    }

    pub(super) fn unregister(&mut self, id: u64) {
        let Some(c) = self.connections.remove(&id) else {
            return;
        };
        self.count_clients();
        if let Some(n) = self.per_key.get_mut(&c.key) {
            *n -= 1;
            if *n == 0 {
                self.per_key.remove(&c.key);
            }
        }
    }

    /// A ticket signed by this node naming up to [`MAX_TICKET_MEMBERS`] current members.
    pub(super) fn ticket(
        &self,
        role: TicketRole,
        valid_for: Duration,
    ) -> Result<Ticket, ReadError> {
        if let Some(e) = self.calls.fatal_error() {
            return Err(ReadError::Fatal(e));
        }
        let membership = self.membership.borrow();
        let members: Vec<EndpointAddr> = membership
            .members()
            .into_iter()
            .take(MAX_TICKET_MEMBERS)
            .map(|m| m.addr)
            .collect();
        Ok(Ticket::issue_with_relays(
            &self.secret,
            ClusterId(membership.cluster_id()),
            members,
            self.relays.clone(),
            role,
            SystemTime::now() + valid_for,
        ))
    }
}
