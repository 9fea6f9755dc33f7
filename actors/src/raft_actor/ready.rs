//! The RaftActor's Ready round: what it does with each [`crate::driver::Effects`], and with
//! persistence progress and ticks. The order inside a round follows raft-rs's documentation:
//! send the leader's messages, apply committed entries, queue the persist batch, and release the
//! messages that waited for it once the StorageActor confirms.

use std::time::Duration;

use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use tracing::{info, warn};

use super::{
    actor::{Lifecycle, RaftActor},
    peers::Contact,
    pending::decode_context,
    persistence::Queued,
};
use crate::{
    driver::Persist,
    error::{Corruption, CorruptionKind, DataLocation, FatalError, ProposeError, ReadError},
    events::ClusterEvent,
    membership::MembershipRefusal,
    peer::Reconnect,
    state_machine::StateMachine,
    storage::PersistBatch,
    trace::TraceContext,
    types::{Leadership, NodeId, Role},
};

/// Ready rounds run back to back before the actor looks at its mailbox and timers again. A
/// round can enable another (a commit that releases a leader's next messages); the bound keeps
/// ticks and incoming messages from waiting behind a long chain.
const MAX_ROUNDS_PER_RUN: usize = 8;

/// [`RaftActor::ticks_due`]'s rule: `elapsed` real time since the last tick, for a leader or not.
fn ticks_for(elapsed: Duration, interval: Duration, election_ticks: usize, leader: bool) -> u64 {
    if !leader {
        return 1;
    }
    let interval = interval.as_micros().max(1);
    let election = election_ticks as u128;
    match elapsed.as_micros() / interval {
        ticks if ticks >= election => ticks.min(2 * election + 1) as u64,
        _ => 1,
    }
}

impl<S: StateMachine> RaftActor<S> {
    pub(super) fn has_work(&self) -> bool {
        matches!(self.lifecycle, Lifecycle::Running)
            && (self.driver.has_ready()
                || !self.replication.outbox.is_empty()
                || (self.requests.reads.has_waiting() && self.may_start_read_round()))
    }

    /// A new leader serves ReadIndex only once it has committed in its term (raft-rs drops
    /// earlier requests): until then reads wait. A follower forwards the round to its leader.
    fn may_start_read_round(&self) -> bool {
        self.driver.role() != Role::Leader || self.driver.committed_in_term()
    }

    /// Starts one ReadIndex round for every read waiting, if a round may start now.
    fn start_read_round(&mut self) {
        if !self.requests.reads.has_waiting() || !self.may_start_read_round() {
            return;
        }
        let round = self.requests.next_id();
        if self.requests.reads.start_round(round) {
            self.driver.read_index(round.to_le_bytes().to_vec());
        }
    }

    pub(super) fn on_tick(&mut self) {
        self.metrics.raft_beat();
        if !matches!(self.lifecycle, Lifecycle::Running) {
            return;
        }
        // Before the clock moves: a follower that starts campaigning on this tick has not
        // refreshed its peers' silence clocks yet (that happens in the Ready round), and would
        // otherwise drop every healthy connection to them.
        self.reconnect_silent_peers();
        let before = self.now;
        for _ in 0..self.ticks_due() {
            self.now += 1;
            self.driver.tick();
        }
        self.step_down_without_quorum();
        self.requests.expire(self.now);
        self.check_transfers();
        self.driver.leave_joint_if_stuck();
        self.send_checkpoints(before);
    }

    /// Ticks to run now. A follower runs one per timer tick: when its loop is slow (a burst of
    /// large entries) its clock slows with it instead of making it campaign against a healthy
    /// leader. So does a leader, unless its last tick is an election timeout or more ago: then
    /// it runs the ticks of that real time (at most two election timeouts' worth). A leader
    /// whose process was paused (SIGSTOP, a VM freeze) or starved that long has most likely been
    /// replaced, and its check-quorum now steps it down on the first tick instead of when a
    /// message from the new term happens to reach it; the silence of its peers it reports is the
    /// real one too. (Shorter stalls run one tick: each tick past a heartbeat period would send
    /// every peer another heartbeat.)
    fn ticks_due(&mut self) -> u64 {
        let now = tokio::time::Instant::now();
        let elapsed = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        let leader = self.driver.role() == Role::Leader;
        ticks_for(
            elapsed,
            self.config.tick_interval(),
            self.config.election_ticks(),
            leader,
        )
    }

    /// A leader that has had no answer from a quorum of voters for an election timeout steps
    /// down on this tick. raft-rs's own check-quorum looks only once per election timeout, at
    /// whether each voter was heard since its previous look, so a leader cut off just after a
    /// look would lead on for up to two election timeouts, taking writes it cannot commit (and,
    /// with lease reads, serving reads its lease no longer covers). Stepping down is always
    /// safe: the term stays, nothing is voted, and the proposals and reads it held fail as at
    /// any leader change. The silence clocks start when the node became leader.
    ///
    /// It takes two ticks in a row to find the silence: ticks go before messages, so after a
    /// stall (a long Ready round, a starved process) the first tick may run while answers that
    /// arrived meanwhile still wait in the mailbox; before the next tick they are handled.
    fn step_down_without_quorum(&mut self) {
        if self.driver.role() != Role::Leader {
            self.replication.quorum_silent = false;
            return;
        }
        let (now, timeout, me) = (self.now, self.config.election_ticks() as u64, self.id());
        let conf = self.driver.conf_state();
        let mut answered = vec![me];
        for peer in conf.voters.iter().chain(&conf.voters_outgoing) {
            let contact = self
                .replication
                .heard
                .entry(*peer)
                .or_insert(Contact::new(now));
            if now.saturating_sub(contact.answer) < timeout {
                answered.push(*peer);
            }
        }
        let silent = !self.driver.is_quorum(answered.iter().copied());
        let confirmed = silent && self.replication.quorum_silent;
        self.replication.quorum_silent = silent && !confirmed;
        if confirmed {
            warn!(
                node = me,
                term = self.driver.term(),
                heard = ?answered,
                "stepping down: no answer from a quorum of voters for an election timeout"
            );
            self.driver.step_down();
        }
    }

    /// A leader or candidate expects every voter to answer within an election timeout; a peer
    /// that stays silent longer may sit behind a dead connection QUIC has not noticed yet: its
    /// PeerActor redials (at most once per election timeout per peer). Followers expect nothing
    /// from each other, so they never do this.
    fn reconnect_silent_peers(&mut self) {
        if self.driver.role() == Role::Follower {
            return;
        }
        let timeout = self.config.election_ticks() as u64;
        let now = self.now;
        for peer in self.driver.conf_state().voters {
            if peer == self.id() {
                continue;
            }
            let contact = self
                .replication
                .heard
                .entry(peer)
                .or_insert(Contact::new(now));
            if now.saturating_sub(contact.answer) > timeout
                && now.saturating_sub(contact.redial) > timeout
            {
                contact.redial = now;
                self.replication.peers.reconnect(peer, Reconnect::NoAnswer);
            }
        }
    }

    /// Runs Ready rounds until raft-rs has nothing more, then serves reads and sends.
    pub(super) async fn run_ready(&mut self) {
        self.handled = 0;
        self.start_read_round();
        for _ in 0..MAX_ROUNDS_PER_RUN {
            if !matches!(self.lifecycle, Lifecycle::Running) {
                break;
            }
            let Some(mut fx) = self.driver.ready() else {
                break;
            };
            for m in fx.send_now {
                self.route(m);
            }
            let mut batch = fx.persist.map(persist_batch);
            if let Some(meta) = fx.install.take() {
                match self.install_snapshot(&meta) {
                    Ok(record) => {
                        if let Some(batch) = batch.as_mut() {
                            batch.snapshot = Some(record);
                        }
                        self.snapshots.applied_when_persisted = Some((fx.number, meta.index));
                    }
                    Err(e) => {
                        self.fail(e);
                        break;
                    }
                }
            }
            self.apply(fx.committed);
            if let Some((role, leader)) = fx.role_change {
                self.on_role_change(role, leader);
            }
            self.publish_leadership();
            for rs in fx.read_states {
                if let Some(id) = rs.request_ctx.get(..8).and_then(|b| b.try_into().ok()) {
                    self.requests
                        .reads
                        .confirm(u64::from_le_bytes(id), rs.index);
                }
            }
            self.queue_persist(fx.number, batch, fx.send_after_persist)
                .await;
        }
        self.start_read_round();
        self.requests.reads.serve(self.applied, &self.sm);
        self.check_transfers();
        self.flush_outbox();
        self.record_metrics();
    }

    pub(super) fn route(&mut self, m: Message) {
        if m.msg_type == MessageType::MsgSnapshot {
            return self.route_snapshot(m);
        }
        self.replication
            .outbox
            .entry(m.to)
            .or_default()
            .raft
            .push(m);
    }

    fn flush_outbox(&mut self) {
        for (to, batch) in std::mem::take(&mut self.replication.outbox) {
            if let Err(dropped) = self.replication.peers.send(to, batch) {
                self.driver.report_unreachable(to);
                self.unsent_forwards(to, dropped.forwards.iter().map(|f| f.id));
            }
        }
    }

    async fn queue_persist(
        &mut self,
        number: u64,
        batch: Option<PersistBatch>,
        after: Vec<Message>,
    ) {
        match self.persistence.queue(number, batch, after).await {
            Queued::Waiting => {}
            Queued::Durable(after) => {
                // This round is as durable as the last one.
                self.driver.on_persisted(number);
                for m in after {
                    self.route(m);
                }
            }
            Queued::Closed => self.fail(FatalError::ActorStopped {
                actor: "StorageActor",
                reason: "persist queue closed".into(),
            }),
        }
    }

    pub(super) fn on_persist_progress(&mut self) {
        let (n, released) = match self.persistence.confirmed() {
            Ok(Some(done)) => done,
            Ok(None) => return,
            Err(e) => return self.fail(FatalError::Storage(e)),
        };
        for m in released {
            self.route(m);
        }
        self.driver.on_persisted(n);
        if let Some((number, index)) = self.snapshots.applied_when_persisted
            && n >= number
        {
            self.snapshots.applied_when_persisted = None;
            self.driver.advance_apply_to(index);
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        let mut last = None;
        let mut term = 0;
        for e in entries {
            let index = e.index;
            term = e.term;
            self.consistency.applied(&e);
            self.apply_entry(e);
            if !matches!(self.lifecycle, Lifecycle::Running) {
                // A committed entry that cannot be applied stops the node right there: nothing
                // after it is applied, and the applied index stays before it.
                break;
            }
            last = Some(index);
        }
        let Some(last) = last else {
            return;
        };
        self.applied = last;
        self.requests.forwarded_before(term);
        self.driver.advance_apply_to(last);
        self.publish(ClusterEvent::Applied { index: last });
        self.check_applied();
        self.maybe_snapshot();
    }

    fn apply_entry(&mut self, e: Entry) {
        let me = self.id();
        let session = self.session;
        let ours = decode_context(&e.context)
            .filter(|&(origin, s, _)| origin == me && s == session)
            .map(|(_, _, id)| id);
        let reply = self.requests.proposals.applied(e.index, ours);
        let conf_reply = self.requests.changes.applied(e.index, ours);
        match e.entry_type {
            EntryType::EntryNormal if e.data.is_empty() => {
                // A new leader's first entry, or a configuration change raft-rs refused (it
                // turns those into empty entries).
                if let Some(reply) = conf_reply {
                    reply.send(Err(MembershipRefusal::InProgress.into()));
                }
            }
            EntryType::EntryNormal => match postcard::from_bytes::<S::Command>(&e.data) {
                Ok(cmd) => {
                    // A traced proposal's `apply` span, on every node that applies it.
                    let span = TraceContext::from_entry_context(&e.context).map(|t| {
                        let span = tracing::info_span!("apply", node = me, index = e.index);
                        t.adopt(&span);
                        span
                    });
                    let _entered = span.as_ref().map(tracing::Span::enter);
                    let response = self.sm.apply(cmd);
                    if let Some(reply) = reply {
                        reply.send(Ok(response));
                    }
                }
                Err(err) => {
                    // Skipping it would make this replica's state differ from the others'. The
                    // proposer learns the node stopped on its committed entry, not that its
                    // command was refused: it is in the log of a quorum.
                    let fatal = self
                        .corrupt_entry(e.index, format!("committed entry is not a command: {err}"));
                    if let Some(reply) = reply {
                        reply.send(Err(ProposeError::Fatal(fatal)));
                    }
                }
            },
            EntryType::EntryConfChangeV2 => self.apply_conf_entry(&e, conf_reply),
            EntryType::EntryConfChange => {
                // Never proposed by this crate, and refused on the wire.
                self.corrupt_entry(e.index, "committed entry is a legacy configuration change");
            }
        }
    }

    /// A committed entry cannot be applied: the node stops with a typed corruption, returned.
    pub(super) fn corrupt_entry(&mut self, index: u64, detail: impl Into<String>) -> FatalError {
        let fatal = FatalError::Corruption(Corruption::new(
            self.db.path(),
            DataLocation::LogEntry { index },
            CorruptionKind::Undecodable,
            detail,
        ));
        self.fail(fatal.clone());
        fatal
    }

    /// Forwarded proposals that never left this node: their callers may retry.
    pub(super) fn unsent_forwards(&mut self, leader: NodeId, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            self.requests
                .proposals
                .fail(id, ProposeError::LeaderUnreachable { leader });
        }
    }

    /// A soft-state change of this round; `self.published` still holds the previous round's.
    fn on_role_change(&mut self, role: Role, leader: Option<NodeId>) {
        let term = self.driver.term();
        info!(node = self.id(), ?role, ?leader, term, "role changed");
        if role_changed(self.published, role, term) {
            self.publish(ClusterEvent::RoleChanged {
                node: self.id(),
                role,
                term,
            });
        }
        if let Some(new_leader) = leader {
            self.publish(ClusterEvent::LeaderElected { new_leader, term });
        }
        if role == Role::Leader {
            self.driver.leave_joint_if_stuck();
        }
        if role != Role::Follower {
            // From now on this node expects answers: start every voter's silence clock.
            let now = self.now;
            let conf = self.driver.conf_state();
            for peer in conf.voters.into_iter().chain(conf.voters_outgoing) {
                self.replication
                    .heard
                    .entry(peer)
                    .or_insert(Contact::new(now))
                    .answer = now;
            }
        }
        // A ReadIndex request in flight may have been dropped by the old leader: let the
        // caller retry against the new one.
        self.requests
            .reads
            .fail_unconfirmed(ReadError::LeadershipChanged);
    }
}

/// Whether a soft-state change is a new role or term. raft-rs reports its soft state when the
/// known leader changes too: a follower that hears a candidate of a new term (leader: none),
/// then the winner (leader: it) reports twice in one role and term, and `RoleChanged` must not
/// repeat for the second.
fn role_changed(published: Leadership, role: Role, term: u64) -> bool {
    (published.role, published.term) != (role, term)
}

/// The storage batch for what a Ready round must make durable.
fn persist_batch(p: Persist) -> PersistBatch {
    PersistBatch {
        number: p.number,
        snapshot: None,
        entries: p.entries,
        hard_state: p.hard_state,
        conf_state: None,
        must_sync: p.must_sync,
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::ConfState;

    use super::*;
    use crate::{
        config::NodeConfig,
        driver::{Driver, InitialLog},
    };

    /// Rounds on every node with an instant disk, every message delivered, until all is quiet;
    /// each node's `(role, term)` whose `RoleChanged` the actor would publish, in order (the
    /// actor's `published` leadership kept as it keeps it: after every round).
    fn settle_role_events(
        nodes: &mut [Driver],
        published: &mut [Leadership],
    ) -> Vec<Vec<(Role, u64)>> {
        let mut events = vec![Vec::new(); nodes.len()];
        for _ in 0..50 {
            let mut msgs = Vec::new();
            for (i, d) in nodes.iter_mut().enumerate() {
                while let Some(fx) = d.ready() {
                    d.on_persisted(fx.number);
                    if let Some(last) = fx.committed.last() {
                        d.advance_apply_to(last.index);
                    }
                    if let Some((role, _)) = fx.role_change
                        && role_changed(published[i], role, d.term())
                    {
                        events[i].push((role, d.term()));
                    }
                    published[i] = Leadership {
                        leader: d.leader(),
                        term: d.term(),
                        role: d.role(),
                    };
                    msgs.extend(fx.send_now);
                    msgs.extend(fx.send_after_persist);
                }
            }
            if msgs.is_empty() {
                return events;
            }
            for m in msgs {
                nodes[m.to as usize - 1].step(m).unwrap();
            }
        }
        panic!("cluster did not settle");
    }

    #[test]
    fn a_follower_reports_one_role_change_when_the_leader_moves() {
        let mut nodes: Vec<Driver> = (1..=3)
            .map(|id| {
                let mut config = NodeConfig::new(id);
                config.rng_seed = Some(id);
                let log = InitialLog {
                    conf_state: ConfState {
                        voters: vec![1, 2, 3],
                        ..Default::default()
                    },
                    ..Default::default()
                };
                Driver::new(&config, log, 0).unwrap()
            })
            .collect();
        let mut published = vec![Leadership::default(); 3];
        nodes[0].campaign().unwrap();
        settle_role_events(&mut nodes, &mut published);
        assert_eq!(nodes[1].leader(), Some(1));
        let term = nodes[0].term();

        // Node 2 hears node 3's vote request (leader: none), then node 3 leading (leader: 3):
        // two soft-state changes in one role and term, one RoleChanged.
        nodes[0].transfer_leader(3);
        let events = settle_role_events(&mut nodes, &mut published);
        assert_eq!(nodes[1].leader(), Some(3));
        assert_eq!(events[1], vec![(Role::Follower, term + 1)]);
        assert_eq!(
            events[2],
            vec![(Role::Candidate, term + 1), (Role::Leader, term + 1)]
        );
        assert_eq!(events[0], vec![(Role::Follower, term + 1)]);
    }

    #[test]
    fn a_leader_catches_up_only_after_an_election_timeout_without_a_tick() {
        let tick = Duration::from_millis(10);
        let ms = Duration::from_millis;
        // A follower's clock never jumps (a slow loop must not make it campaign).
        assert_eq!(ticks_for(ms(5_000), tick, 70, false), 1);
        // A leader's short stall runs one tick (no heartbeat burst).
        assert_eq!(ticks_for(ms(10), tick, 70, true), 1);
        assert_eq!(ticks_for(ms(690), tick, 70, true), 1);
        // An election timeout or more: the ticks of that time, at most two timeouts' worth.
        assert_eq!(ticks_for(ms(700), tick, 70, true), 70);
        assert_eq!(ticks_for(ms(1_000), tick, 70, true), 100);
        assert_eq!(ticks_for(ms(60_000), tick, 70, true), 141);
    }
}
