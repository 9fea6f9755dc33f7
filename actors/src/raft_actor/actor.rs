//! The RaftActor's state and its Ready loop.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use kameo::{
    Actor,
    actor::{ActorRef, WeakActorRef},
    error::SendError,
    mailbox::{MailboxReceiver, Signal},
    message::BoxMessage,
    reply::{BoxReplySender, ReplyError},
};
use raft::eraftpb::{Entry, EntryType, Message};
use tokio::{
    sync::watch,
    time::{Interval, MissedTickBehavior},
};
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use super::{
    MAX_MESSAGES_PER_READY,
    peers::Peers,
    pending::{Proposals, Reads, decode_context},
};
use crate::{
    config::NodeConfig,
    driver::Driver,
    error::{CodecError, FatalError, ProposeError, ReadError, StartError},
    events::{ClusterEvent, EventBus, Publish},
    peer::{Dialer, Outbound},
    state_machine::{StateMachine, StateMachineSource},
    storage::{PersistBatch, PersistProgress, Recover, StorageActor},
    types::{NodeId, NodeStatus, Role},
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
    /// How PeerActors reach peers.
    pub dialer: Arc<dyn Dialer>,
    /// Where persist batches go (the StorageActor).
    pub persist_tx: flume::Sender<PersistBatch>,
    /// Where the StorageActor reports progress.
    pub persist_progress: watch::Receiver<PersistProgress>,
    /// Where events go.
    pub events: ActorRef<EventBus>,
}

impl<S: StateMachine> Clone for RaftArgs<S> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            state_machine: self.state_machine.clone(),
            storage: self.storage.clone(),
            dialer: self.dialer.clone(),
            persist_tx: self.persist_tx.clone(),
            persist_progress: self.persist_progress.clone(),
            events: self.events.clone(),
        }
    }
}

#[derive(Debug, Clone)]
enum Lifecycle {
    Running,
    ShuttingDown,
    Failed(FatalError),
}

/// A Ready round whose persistence is not confirmed yet.
struct InFlight {
    number: u64,
    /// False for a round that wrote nothing: it completes as soon as every earlier one has.
    stored: bool,
    /// Messages that may leave once it is durable.
    messages: Vec<Message>,
}

/// Owns the Raft core and the state machine. See the module docs.
pub struct RaftActor<S: StateMachine> {
    pub(super) config: NodeConfig,
    pub(super) driver: Driver,
    pub(super) sm: S,
    pub(super) applied: u64,
    pub(super) proposals: Proposals<S::Response>,
    pub(super) reads: Reads<S>,
    pub(super) peers: Peers,
    pub(super) outbox: BTreeMap<NodeId, Outbound>,
    persist_tx: flume::Sender<PersistBatch>,
    progress: watch::Receiver<PersistProgress>,
    storage_gone: bool,
    in_flight: VecDeque<InFlight>,
    events: ActorRef<EventBus>,
    ticker: Interval,
    /// Ticks since start: the clock of request deadlines.
    pub(super) now: u64,
    handled: usize,
    next_id: u64,
    lifecycle: Lifecycle,
    /// `raft{node=…}`: every handler and every Ready round runs inside it.
    span: Span,
}

impl<S: StateMachine> RaftActor<S> {
    pub(super) fn id(&self) -> NodeId {
        self.driver.id()
    }

    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
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
            voters: s.voters,
        }
    }

    pub(super) fn publish(&self, ev: ClusterEvent) {
        // Never wait on the bus: a full mailbox drops the event.
        let _ = self.events.tell(Publish(ev)).try_send();
    }

    fn has_work(&self) -> bool {
        matches!(self.lifecycle, Lifecycle::Running)
            && (self.driver.has_ready() || !self.outbox.is_empty())
    }

    fn on_tick(&mut self) {
        if !matches!(self.lifecycle, Lifecycle::Running) {
            return;
        }
        self.now += 1;
        self.driver.tick();
        self.proposals.expire(self.now);
        self.reads.expire(self.now);
    }

    /// Runs Ready rounds until raft-rs has nothing more, then serves reads and sends.
    async fn run_ready(&mut self) {
        self.handled = 0;
        for _ in 0..8 {
            if !matches!(self.lifecycle, Lifecycle::Running) {
                break;
            }
            let Some(fx) = self.driver.ready() else { break };
            for m in fx.send_now {
                self.route(m);
            }
            self.apply(fx.committed);
            if let Some((role, leader)) = fx.role_change {
                self.on_role_change(role, leader);
            }
            for rs in fx.read_states {
                if let Some(id) = rs.request_ctx.get(..8).and_then(|b| b.try_into().ok()) {
                    self.reads.confirm(u64::from_le_bytes(id), rs.index);
                }
            }
            self.queue_persist(fx.number, fx.persist, fx.send_after_persist)
                .await;
        }
        self.reads.serve(self.applied, &self.sm);
        self.flush_outbox();
    }

    pub(super) fn route(&mut self, m: Message) {
        self.outbox.entry(m.to).or_default().raft.push(m);
    }

    fn flush_outbox(&mut self) {
        for (to, batch) in std::mem::take(&mut self.outbox) {
            if !self.peers.send(to, batch) {
                self.driver.report_unreachable(to);
            }
        }
    }

    async fn queue_persist(
        &mut self,
        number: u64,
        batch: Option<PersistBatch>,
        after: Vec<Message>,
    ) {
        let stored = batch.is_some();
        if let Some(batch) = batch {
            if self.persist_tx.send_async(batch).await.is_err() {
                self.fail(FatalError::ActorStopped {
                    actor: "StorageActor",
                    reason: "persist queue closed".into(),
                });
                return;
            }
        } else if self.in_flight.is_empty() {
            // Nothing to wait for: this round is as durable as the last one.
            self.driver.on_persisted(number);
            for m in after {
                self.route(m);
            }
            return;
        }
        self.in_flight.push_back(InFlight {
            number,
            stored,
            messages: after,
        });
    }

    fn on_persist_progress(&mut self) {
        let (number, failure) = {
            let p = self.progress.borrow_and_update();
            (p.number, p.failure.clone())
        };
        if let Some(e) = failure {
            self.fail(FatalError::Storage(e));
            return;
        }
        let mut done = None;
        while let Some(f) = self.in_flight.front() {
            if f.stored && f.number > number {
                break;
            }
            let f = self.in_flight.pop_front().expect("front exists");
            for m in f.messages {
                self.route(m);
            }
            done = Some(f.number);
        }
        if let Some(n) = done {
            self.driver.on_persisted(n);
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        for e in entries {
            self.apply_entry(e);
        }
        self.applied = last;
        self.driver.advance_apply_to(last);
        self.publish(ClusterEvent::Applied { index: last });
    }

    fn apply_entry(&mut self, e: Entry) {
        let me = self.id();
        let ours = decode_context(&e.context)
            .filter(|&(origin, _)| origin == me)
            .map(|(_, id)| id);
        let reply = self.proposals.applied(e.index, ours);
        match e.entry_type {
            EntryType::EntryNormal if e.data.is_empty() => {} // a new leader's first entry
            EntryType::EntryNormal => {
                let response = postcard::from_bytes::<S::Command>(&e.data)
                    .map(|cmd| self.sm.apply(cmd))
                    .map_err(|err| ProposeError::Codec(CodecError::new(err)));
                match (reply, response) {
                    (Some(reply), response) => reply.send(response),
                    (None, Err(err)) => {
                        warn!(index = e.index, error = %err, "entry is not a command; skipped")
                    }
                    (None, Ok(_)) => {}
                }
            }
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                // No API proposes membership changes yet, so only a foreign log could hold one.
                warn!(
                    index = e.index,
                    "membership change entries are not supported yet; skipped"
                );
            }
        }
    }

    fn on_role_change(&mut self, role: Role, leader: Option<NodeId>) {
        let term = self.driver.term();
        info!(node = self.id(), ?role, ?leader, term, "role changed");
        self.publish(ClusterEvent::RoleChanged {
            node: self.id(),
            role,
            term,
        });
        if let Some(new_leader) = leader {
            self.publish(ClusterEvent::LeaderElected { new_leader, term });
        }
        // A ReadIndex request in flight may have been dropped by the old leader: let the
        // caller retry against the new one.
        self.reads.fail_unconfirmed(ReadError::LeadershipChanged);
    }

    /// The node can no longer serve: answer everything waiting and refuse all further work.
    pub(super) fn fail(&mut self, e: FatalError) {
        if matches!(self.lifecycle, Lifecycle::Failed(_)) {
            return;
        }
        error!(node = self.id(), error = %e, "node failed");
        self.proposals.fail_all(|| ProposeError::Fatal(e.clone()));
        self.reads.fail_all(ReadError::Fatal(e.clone()));
        self.outbox.clear();
        self.lifecycle = Lifecycle::Failed(e);
    }

    /// Stops taking work and answers everything waiting with `ShuttingDown`.
    pub(super) async fn shut_down(&mut self) {
        if matches!(self.lifecycle, Lifecycle::Running) {
            self.lifecycle = Lifecycle::ShuttingDown;
        }
        debug!(
            node = self.id(),
            pending = self.proposals.len(),
            "shutting down"
        );
        self.proposals.fail_all(|| ProposeError::ShuttingDown);
        self.reads.fail_all(ReadError::ShuttingDown);
        self.outbox.clear();
        self.peers.stop_all().await;
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
        let sm = args
            .state_machine
            .take()
            .ok_or(StartError::NoStateMachine)?;
        let driver = Driver::new(
            &args.config,
            recovered.hard_state,
            recovered.conf_state,
            recovered.entries,
            0,
        )
        .map_err(|e| StartError::Raft {
            reason: e.to_string(),
        })?;
        let unreachable = actor_ref.recipient().downgrade();
        let mut ticker = tokio::time::interval(args.config.tick_interval());
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            peers: Peers::new(
                me,
                &recovered.members,
                args.dialer,
                unreachable,
                args.events.clone(),
            ),
            config: args.config,
            driver,
            sm,
            applied: 0,
            proposals: Proposals::new(),
            reads: Reads::new(),
            outbox: BTreeMap::new(),
            persist_tx: args.persist_tx,
            progress: args.persist_progress,
            storage_gone: false,
            in_flight: VecDeque::new(),
            events: args.events,
            ticker,
            now: 0,
            handled: 0,
            next_id: 0,
            lifecycle: Lifecycle::Running,
            span: info_span!("raft", node = me),
        })
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
                changed = self.progress.changed(), if !self.storage_gone => match changed {
                    Ok(()) => span.in_scope(|| self.on_persist_progress()),
                    Err(_) => {
                        self.storage_gone = true;
                        if matches!(self.lifecycle, Lifecycle::Running) {
                            self.fail(FatalError::ActorStopped {
                                actor: "StorageActor",
                                reason: "stopped".into(),
                            });
                        }
                    }
                },
                signal = mailbox_rx.recv() => {
                    self.handled += 1;
                    return Ok(signal);
                }
            }
        }
    }
}
