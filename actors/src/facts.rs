//! [`Facts`]: what one node knows that many parts read — the applied membership, who leads in
//! which term, whether the node still runs — published on watch channels.
//!
//! The RaftActor is the only writer of the membership and the leadership; the RaftActor (a
//! fatal error), the supervisor (it gave up restarting a child) and [`crate::Node::shutdown`]
//! write the liveness. Readers (the protocol handlers, the management plane, the facade) borrow
//! the current value or wait for a change; nobody keeps a copy fed by events. The senders live
//! here, outside the actors, so they survive a supervised restart of the RaftActor.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{
    error::FatalError,
    membership::Membership,
    types::{Leadership, NodeId},
};

/// Whether a node still serves.
#[derive(Clone, Debug, Default)]
pub enum Liveness {
    /// It serves (or is restarting a crashed actor).
    #[default]
    Running,
    /// It stopped for good on its own, for this reason.
    Failed(FatalError),
    /// It was shut down (or dropped).
    ShutDown,
}

/// The watch channels of one node's shared facts.
#[derive(Debug)]
pub struct Facts {
    membership: watch::Sender<Arc<Membership>>,
    leadership: watch::Sender<Leadership>,
    liveness: watch::Sender<Liveness>,
}

impl Default for Facts {
    fn default() -> Self {
        Self {
            membership: watch::channel(Arc::new(Membership::default())).0,
            leadership: watch::channel(Leadership::default()).0,
            liveness: watch::channel(Liveness::Running).0,
        }
    }
}

impl Facts {
    /// Fresh channels: no membership, no leader, running.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The applied membership (changes when a configuration change is applied or a snapshot
    /// installed).
    pub fn membership(&self) -> watch::Receiver<Arc<Membership>> {
        self.membership.subscribe()
    }

    /// Leader, term and role.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    /// Whether the node still serves.
    pub fn liveness(&self) -> watch::Receiver<Liveness> {
        self.liveness.subscribe()
    }

    /// Whether the node serves now (no receiver is made: cheap on a request path).
    pub fn liveness_now(&self) -> Liveness {
        self.liveness.borrow().clone()
    }

    /// Whether the node was shut down.
    pub fn is_shut_down(&self) -> bool {
        matches!(*self.liveness.borrow(), Liveness::ShutDown)
    }

    /// The leader this node knows of now.
    pub fn leader(&self) -> Option<NodeId> {
        self.leadership.borrow().leader
    }

    /// The fatal error that stopped the node, if one did.
    pub fn failure(&self) -> Option<FatalError> {
        match &*self.liveness.borrow() {
            Liveness::Failed(e) => Some(e.clone()),
            _ => None,
        }
    }

    pub(crate) fn publish_membership(&self, membership: Arc<Membership>) {
        self.membership.send_replace(membership);
    }

    fn forget_leader(&self) {
        self.leadership
            .send_if_modified(|l| l.leader.take().is_some());
    }

    pub(crate) fn publish_leadership(&self, leadership: Leadership) {
        self.leadership.send_if_modified(|current| {
            let changed = *current != leadership;
            *current = leadership;
            changed
        });
    }

    /// Records the node's fatal error (the first one wins; a node shut down stays shut down). A
    /// stopped node knows no leader.
    pub(crate) fn fail(&self, e: FatalError) {
        self.forget_leader();
        self.liveness.send_if_modified(|l| match l {
            Liveness::Running => {
                *l = Liveness::Failed(e);
                true
            }
            _ => false,
        });
    }

    /// Records an orderly stop (unless the node had already failed).
    pub(crate) fn shut_down(&self) {
        self.forget_leader();
        self.liveness.send_if_modified(|l| match l {
            Liveness::Running => {
                *l = Liveness::ShutDown;
                true
            }
            _ => false,
        });
    }
}
