//! The RaftActor's state and its Ready loop.

use std::sync::Arc;

use kameo::{
    Actor,
    actor::{ActorRef, WeakActorRef},
    error::SendError,
    mailbox::{MailboxReceiver, Signal},
    message::BoxMessage,
    reply::{BoxReplySender, ReplyError},
};
use tokio::{
    sync::watch,
    time::{Interval, MissedTickBehavior},
};
use tracing::{Instrument, Span, debug, error, info_span};

use super::{
    MAX_MESSAGES_PER_READY,
    peers::{Peers, Replication},
    pending::Requests,
    persistence::Persistence,
    snapshots::{Snapshots, restore_from, snapshot_meta},
};
use crate::{
    config::NodeConfig,
    config::StorageSpawn,
    consistency::ConsistencyCheck,
    driver::{Driver, InitialLog},
    error::{FatalError, ProposeError, ReadError, SnapshotError, StartError, StorageError},
    events::{ClusterEvent, EventBus, Publish},
    facts::Facts,
    membership::Membership,
    metrics::NodeMetrics,
    peer::Dialer,
    state_machine::{StateMachine, StateMachineSource},
    storage::{DbHandle, PersistBatch, PersistProgress, Recover, SnapshotReader, StorageActor},
    types::{Leadership, NodeId, NodeStatus},
};

/// What the RaftActor is started (and restarted) with. It builds its Raft core from what the
/// StorageActor recovers, so a restart after a crash starts from durable state.
pub struct RaftArgs<S: StateMachine> {
    /// Timing and limits.
    pub config: NodeConfig,
    /// Where the empty state machine comes from.
    pub state_machine: StateMachineSource<S>,
    /// The StorageActor, asked to recover the durable state at every start.
    pub storage: ActorRef<StorageActor>,
    /// The database, for reading snapshots back (restore, install).
    pub db: DbHandle,
    /// Whether blocking work (writing snapshots out) may use threads; a simulation on one
    /// thread says no.
    pub storage_spawn: StorageSpawn,
    /// How PeerActors reach peers.
    pub dialer: Arc<dyn Dialer>,
    /// Where persist batches go (the StorageActor).
    pub persist_tx: flume::Sender<PersistBatch>,
    /// Where the StorageActor reports progress.
    pub persist_progress: watch::Receiver<PersistProgress>,
    /// Where events go.
    pub events: ActorRef<EventBus>,
    /// Where the applied membership, the leadership and a fatal error are published (the
    /// protocol handlers admit by the membership). Outlives restarts of the actor.
    pub facts: Arc<Facts>,
    /// The node's metrics (the RaftActor writes the consensus group; its PeerActors the
    /// peers group).
    pub metrics: Arc<NodeMetrics>,
}

impl<S: StateMachine> Clone for RaftArgs<S> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            state_machine: self.state_machine.clone(),
            storage: self.storage.clone(),
            db: self.db.clone(),
            storage_spawn: self.storage_spawn,
            dialer: self.dialer.clone(),
            persist_tx: self.persist_tx.clone(),
            persist_progress: self.persist_progress.clone(),
            events: self.events.clone(),
            facts: self.facts.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) enum Lifecycle {
    Running,
    ShuttingDown,
    Failed(FatalError),
}

/// Owns the Raft core and the state machine. See the module docs.
pub struct RaftActor<S: StateMachine> {
    pub(super) config: NodeConfig,
    pub(super) driver: Driver,
    pub(super) sm: S,
    pub(super) applied: u64,
    /// Requests waiting on the log: proposals, membership changes, reads, transfers.
    pub(super) requests: Requests<S>,
    /// The peers: their PeerActors, what goes out to them next, what was heard from them.
    pub(super) replication: Replication,
    /// Persist batches out, confirmations in, rounds waiting for them.
    pub(super) persistence: Persistence,
    pub(super) events: ActorRef<EventBus>,
    pub(super) ticker: Interval,
    /// When the last tick ran (see `ticks_due`).
    pub(super) last_tick: tokio::time::Instant,
    /// Ticks since start: the clock of request deadlines.
    pub(super) now: u64,
    pub(super) handled: usize,
    pub(super) lifecycle: Lifecycle,
    /// `raft{node=…}`: every handler and every Ready round runs inside it.
    pub(super) span: Span,
    /// Snapshot state: the current one, one being taken, ones received and awaiting install.
    pub(super) snapshots: Snapshots,
    pub(super) storage: ActorRef<StorageActor>,
    pub(super) db: DbHandle,
    /// This actor, for the snapshot writer to report back to (weak: no cycle).
    pub(super) myself: WeakActorRef<Self>,
    pub(super) storage_spawn: StorageSpawn,
    /// This incarnation, durably counted at every start: part of every proposal's identity.
    pub(super) session: u64,
    /// Members with their endpoints, as of the last applied configuration change.
    pub(super) membership: Membership,
    /// Where the membership, the leadership and a fatal error are published.
    pub(super) facts: Arc<Facts>,
    /// The leadership last published.
    pub(super) published: Leadership,
    /// The running hash of applied entries and what peers reported of theirs.
    pub(super) consistency: ConsistencyCheck,
    /// The node's metrics.
    pub(super) metrics: Arc<NodeMetrics>,
}

impl<S: StateMachine> RaftActor<S> {
    pub(super) fn id(&self) -> NodeId {
        self.driver.id()
    }

    /// `Ok` while the node serves; otherwise the error every request gets.
    pub(super) fn check_running(&self) -> Result<(), ProposeError> {
        match &self.lifecycle {
            Lifecycle::Running => Ok(()),
            Lifecycle::ShuttingDown => Err(ProposeError::ShuttingDown),
            Lifecycle::Failed(e) => Err(ProposeError::Fatal(e.clone())),
        }
    }

    pub(super) fn check_readable(&self) -> Result<(), ReadError> {
        match &self.lifecycle {
            Lifecycle::Running => Ok(()),
            Lifecycle::ShuttingDown => Err(ReadError::ShuttingDown),
            Lifecycle::Failed(e) => Err(ReadError::Fatal(e.clone())),
        }
    }

    pub(super) fn deadline(&self) -> u64 {
        self.now + self.config.request_timeout_ticks().max(1)
    }

    /// The tick at or after `at` (the node's request timeout from now when `None`).
    pub(super) fn deadline_at(&self, at: Option<tokio::time::Instant>) -> u64 {
        let Some(at) = at else {
            return self.deadline();
        };
        let left = at.saturating_duration_since(tokio::time::Instant::now());
        let tick = self.config.tick_interval().as_micros().max(1);
        self.now + (left.as_micros().div_ceil(tick) as u64).max(1)
    }

    pub(super) fn status(&self) -> NodeStatus {
        let s = self.driver.status();
        NodeStatus {
            node_id: self.id(),
            role: s.role,
            leader: s.leader,
            term: s.term,
            commit_index: s.commit,
            applied_index: self.applied,
            last_index: s.last_index,
            persisted_index: s.persisted,
            first_index: self.driver.first_index(),
            snapshot_index: self.driver.snapshot_meta().index,
            voters: s.voters,
            diverged: self.consistency.diverged_peers().keys().copied().collect(),
        }
    }

    /// Adopts a new membership (a configuration change applied, or a snapshot installed).
    pub(super) fn set_membership(&mut self, membership: Membership) {
        self.replication.peers.set_members(&membership.members());
        self.facts.publish_membership(Arc::new(membership.clone()));
        self.membership = membership;
    }

    pub(super) fn publish(&self, ev: ClusterEvent) {
        // Never wait on the bus: a full mailbox drops the event.
        let _ = self.events.tell(Publish(ev)).try_send();
    }

    /// The node can no longer serve: answer everything waiting and refuse all further work.
    pub(super) fn fail(&mut self, e: FatalError) {
        if matches!(self.lifecycle, Lifecycle::Failed(_)) {
            return;
        }
        match &e {
            FatalError::Removed { .. } => {
                tracing::info!(node = self.id(), "node stopped: removed from the cluster")
            }
            FatalError::Corruption(_) | FatalError::StaleDataDir { .. } => {
                error!(node = self.id(), error = %e, "node stopped: it must not serve from this data dir again");
                self.fence(&e);
            }
            _ => error!(node = self.id(), error = %e, "node failed"),
        }
        self.publish(ClusterEvent::NodeStopped {
            node: self.id(),
            removed: matches!(e, FatalError::Removed { .. }),
            reason: e.to_string(),
        });
        self.requests.fail_all(
            || ProposeError::Fatal(e.clone()),
            ReadError::Fatal(e.clone()),
        );
        self.snapshots.fail_waiters(SnapshotError::Fatal(e.clone()));
        self.replication.outbox.clear();
        self.facts.fail(e.clone());
        self.lifecycle = Lifecycle::Failed(e);
        // A stopped node knows no leader.
        self.publish_leadership();
        self.record_metrics();
    }

    /// Sets the gauges of the consensus metrics (a few atomic stores, once per Ready round).
    pub(super) fn record_metrics(&self) {
        self.metrics.raft_beat();
        let m = &self.metrics.consensus;
        let running = matches!(self.lifecycle, Lifecycle::Running);
        let leader = self.driver.leader().filter(|_| running);
        m.has_leader.set(i64::from(leader.is_some()));
        m.is_leader.set(i64::from(leader == Some(self.id())));
        m.term.set(self.driver.term() as i64);
        m.proposals_committed.set(self.driver.commit_index() as i64);
        m.proposals_applied.set(self.applied as i64);
        let pending = self.requests.proposals.len() + self.requests.changes.len();
        m.proposals_pending.set(pending as i64);
        let (first, last) = (self.driver.first_index(), self.driver.last_index());
        m.last_index.set(last as i64);
        m.log_entries.set((last + 1).saturating_sub(first) as i64);
    }

    /// Publishes leader, term and role if they changed since last time.
    pub(super) fn publish_leadership(&mut self) {
        let leadership = match self.lifecycle {
            Lifecycle::Running => Leadership {
                leader: self.driver.leader(),
                term: self.driver.term(),
                role: self.driver.role(),
            },
            _ => Leadership {
                leader: None,
                ..self.published
            },
        };
        if leadership != self.published {
            if leadership.leader.is_some() && leadership.leader != self.published.leader {
                self.metrics.consensus.leader_changes_seen.inc();
            }
            self.published = leadership;
            self.facts.publish_leadership(leadership);
        }
    }

    /// Stops taking work and answers everything waiting with `ShuttingDown`.
    pub(super) async fn shut_down(&mut self) {
        if matches!(self.lifecycle, Lifecycle::Running) {
            self.lifecycle = Lifecycle::ShuttingDown;
        }
        debug!(
            node = self.id(),
            pending = self.requests.proposals.len(),
            "shutting down"
        );
        self.requests
            .fail_all(|| ProposeError::ShuttingDown, ReadError::ShuttingDown);
        self.snapshots.fail_waiters(SnapshotError::ShuttingDown);
        self.replication.outbox.clear();
        self.replication.peers.stop_all().await;
    }
}

impl<S: StateMachine> Actor for RaftActor<S> {
    type Args = RaftArgs<S>;
    type Error = StartError;

    async fn on_start(
        mut args: Self::Args,
        actor_ref: ActorRef<Self>,
    ) -> Result<Self, Self::Error> {
        let me = args.config.node_id;
        let recovered = match args.storage.ask(Recover).await {
            Ok(r) => r,
            Err(SendError::HandlerError(e)) => return Err(StartError::Storage(e)),
            Err(_) => return Err(StartError::StorageUnavailable),
        };
        // Recovery restarted the Ready numbering; what the watch holds now is not news.
        args.persist_progress.borrow_and_update();
        let mut sm = args
            .state_machine
            .take()
            .ok_or(StartError::NoStateMachine)?;
        // The snapshot holds the membership and state as of its index; the log after it is
        // replayed. A joining node without one yet knows only the members it was given.
        let (membership, conf_state, applied, check) = match &recovered.snapshot {
            Some(record) => {
                let restore_err = |e: std::io::Error| match SnapshotReader::corruption(&e) {
                    Some(c) => StartError::Storage(Arc::new(StorageError::Corrupt(c.clone()))),
                    None => StartError::Restore {
                        index: record.index,
                        reason: e.to_string(),
                    },
                };
                let mut reader = args.db.snapshot_reader(record).map_err(StartError::from)?;
                let header = restore_from(&mut reader, &mut sm).map_err(restore_err)?;
                let check = ConsistencyCheck::new(header.applied_hash.map(|h| (record.index, h)));
                (
                    header.membership,
                    record.conf_state.clone(),
                    record.index,
                    check,
                )
            }
            None => (
                Membership::new([0; 16], &recovered.members),
                recovered.conf_state,
                0,
                // A joining node applies nothing before the leader's snapshot, which carries
                // the hash to continue from.
                ConsistencyCheck::new(None),
            ),
        };
        args.facts.publish_membership(Arc::new(membership.clone()));
        let log = InitialLog {
            hard_state: recovered.hard_state,
            conf_state,
            start: recovered.log_start,
            snapshot: recovered
                .snapshot
                .as_ref()
                .map(snapshot_meta)
                .unwrap_or_default(),
            entries: recovered.entries,
        };
        let driver = Driver::new(&args.config, log, applied).map_err(|e| StartError::Raft {
            reason: e.to_string(),
        })?;
        let to_me = (
            actor_ref.clone().recipient().downgrade(),
            actor_ref.clone().recipient().downgrade(),
        );
        let mut ticker = tokio::time::interval(args.config.tick_interval());
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut actor = Self {
            replication: Replication::new(Peers::new(
                (me, recovered.incarnation),
                &membership.members(),
                args.dialer,
                to_me,
                args.db.clone(),
                (args.events.clone(), args.metrics.peers.clone()),
                args.config.control_stream,
            )),
            config: args.config,
            driver,
            sm,
            applied,
            requests: Requests::new(),
            persistence: Persistence::new(args.persist_tx, args.persist_progress),
            events: args.events,
            ticker,
            last_tick: tokio::time::Instant::now(),
            now: 0,
            handled: 0,
            lifecycle: Lifecycle::Running,
            span: info_span!("raft", node = me),
            snapshots: Snapshots::new(recovered.snapshot),
            storage: args.storage,
            db: args.db,
            myself: actor_ref.downgrade(),
            storage_spawn: args.storage_spawn,
            session: recovered.incarnation,
            membership,
            facts: args.facts,
            published: Leadership::default(),
            consistency: check,
            metrics: args.metrics,
        };
        actor.publish_leadership();
        Ok(actor)
    }

    fn on_message(
        &mut self,
        msg: BoxMessage<Self>,
        actor_ref: ActorRef<Self>,
        tx: Option<BoxReplySender>,
        stop: &mut bool,
    ) -> impl Future<Output = Result<(), Box<dyn ReplyError>>> + Send {
        let span = self.span.clone();
        async move {
            msg.handle_dyn(self, actor_ref, tx, stop)
                .instrument(span)
                .await
        }
    }

    async fn next(
        &mut self,
        _: WeakActorRef<Self>,
        mailbox_rx: &mut MailboxReceiver<Self>,
    ) -> Result<Option<Signal<Self>>, Self::Error> {
        let span = self.span.clone();
        loop {
            if self.has_work() && (mailbox_rx.is_empty() || self.handled >= MAX_MESSAGES_PER_READY)
            {
                self.run_ready().instrument(span.clone()).await;
            }
            tokio::select! {
                biased;
                _ = self.ticker.tick() => span.in_scope(|| self.on_tick()),
                confirmed = self.persistence.changed() => {
                    if confirmed {
                        span.in_scope(|| self.on_persist_progress());
                    } else if matches!(self.lifecycle, Lifecycle::Running) {
                        self.fail(FatalError::ActorStopped {
                            actor: "StorageActor",
                            reason: "stopped".into(),
                        });
                    }
                }
                signal = mailbox_rx.recv() => {
                    self.handled += 1;
                    return Ok(signal);
                }
            }
        }
    }
}
