//! [`Driver`]: one raft-rs `RawNode` and the bookkeeping of its Ready rounds.

use raft::{
    Config, RawNode, ReadOnlyOption, SnapshotStatus, StateRole, Storage,
    eraftpb::{ConfChangeV2, ConfState, Entry, HardState, Message, SnapshotMetadata},
};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{Effects, Persist, logger::raft_logger, mem_log::MemLog};
use crate::{
    config::{NodeConfig, TICKS_PER_HEARTBEAT},
    types::{NodeId, Role},
};

/// Why the driver refused a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProposeRefused {
    /// Only a leader appends proposals; this is the leader it knows of.
    NotLeader(Option<NodeId>),
    /// The leader is handing over leadership, or raft-rs dropped the proposal for another
    /// reason (uncommitted size limit).
    Dropped,
    /// A configuration change is still pending (or the configuration is joint).
    ConfChangePending,
}

/// The durable state a driver starts from.
#[derive(Debug, Default)]
pub(crate) struct InitialLog {
    /// Term, vote, commit.
    pub(crate) hard_state: HardState,
    /// Voters and learners.
    pub(crate) conf_state: ConfState,
    /// Index and term just before the first entry.
    pub(crate) start: (u64, u64),
    /// The current snapshot's metadata (index 0: none).
    pub(crate) snapshot: SnapshotMetadata,
    /// The log after `start`.
    pub(crate) entries: Vec<Entry>,
}

/// A cheap snapshot of the driver's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DriverStatus {
    /// This node's role.
    pub(crate) role: Role,
    /// The leader it knows of.
    pub(crate) leader: Option<NodeId>,
    /// Current term.
    pub(crate) term: u64,
    /// Commit index.
    pub(crate) commit: u64,
    /// Applied index (as reported by the runtime).
    pub(crate) applied: u64,
    /// Last index in the log (durable or not).
    pub(crate) last_index: u64,
    /// Highest index durable on this node.
    pub(crate) persisted: u64,
    /// Current voters.
    pub(crate) voters: Vec<NodeId>,
}

/// raft-rs's `RawNode` plus a seeded election-jitter RNG.
pub(crate) struct Driver {
    pub(super) raw: RawNode<MemLog>,
    rng: StdRng,
    election_ticks: usize,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("id", &self.raw.raft.id)
            .field("status", &self.status())
            .finish()
    }
}

impl Driver {
    /// Builds a driver over recovered state. `applied` is the index the state machine already
    /// holds (its snapshot index); committed entries after it are handed out again for apply.
    pub(crate) fn new(
        config: &NodeConfig,
        log: InitialLog,
        applied: u64,
    ) -> Result<Self, raft::Error> {
        let election_ticks = config.election_ticks();
        let raft_config = Config {
            id: config.node_id,
            election_tick: election_ticks,
            heartbeat_tick: TICKS_PER_HEARTBEAT,
            applied,
            max_size_per_msg: config.max_append_bytes,
            max_inflight_msgs: config.max_inflight_appends,
            check_quorum: true,
            pre_vote: true,
            read_only_option: if config.lease_reads {
                ReadOnlyOption::LeaseBased
            } else {
                ReadOnlyOption::Safe
            },
            ..Default::default()
        };
        raft_config.validate()?;
        let mut hard_state = log.hard_state;
        // A snapshot implies its index is committed, even if the commit index on disk lagged.
        hard_state.commit = hard_state.commit.max(log.snapshot.index);
        let store = MemLog::new(
            hard_state,
            log.conf_state,
            log.start,
            log.snapshot,
            log.entries,
        );
        let raw = RawNode::new(&raft_config, store, &raft_logger(config.node_id))?;
        let seed = config.rng_seed.unwrap_or_else(rand::random);
        let mut driver = Self {
            raw,
            rng: StdRng::seed_from_u64(seed ^ config.node_id.rotate_left(32)),
            election_ticks,
        };
        driver.reseed_election_timeout();
        Ok(driver)
    }

    /// This node's id.
    pub(crate) fn id(&self) -> NodeId {
        self.raw.raft.id
    }

    /// Current role.
    pub(crate) fn role(&self) -> Role {
        Role::from_raft(self.raw.raft.state)
    }

    /// Whether `heard` (this node included or not) holds a quorum of the voters (of both
    /// configurations while a joint change is under way).
    pub(crate) fn is_quorum(&self, heard: impl IntoIterator<Item = NodeId>) -> bool {
        // raft-rs's own hasher, inferred from the call.
        let mut set = std::collections::HashSet::default();
        set.extend(heard);
        self.raw.raft.prs().has_quorum(&set)
    }

    /// A leader gives up leadership in its term: it becomes a follower with no known leader
    /// (the step raft-rs's check-quorum takes). Anything else is left alone.
    pub(crate) fn step_down(&mut self) {
        if self.role() == Role::Leader {
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
            self.reseed_election_timeout();
        }
    }

    /// The leader this node knows of.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        Some(self.raw.raft.leader_id).filter(|&id| id != raft::INVALID_ID)
    }

    /// Current term.
    pub(crate) fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Who this node voted for in the current term (0: nobody).
    pub(crate) fn vote(&self) -> NodeId {
        self.raw.raft.vote
    }

    /// Current voters (the incoming configuration when joint).
    pub(crate) fn voters(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.raw.store().conf_state().voters.clone();
        v.sort_unstable();
        v
    }

    /// Advances the logical clock by one tick.
    pub(crate) fn tick(&mut self) {
        self.raw.tick();
        self.reseed_election_timeout();
    }

    /// Feeds a message from a peer. Errors (a message from a removed peer, a stale response) are
    /// returned for logging; none of them harms the node.
    pub(crate) fn step(&mut self, msg: Message) -> Result<(), raft::Error> {
        let result = self.raw.step(msg);
        self.reseed_election_timeout();
        result
    }

    /// Starts an election now (tests).
    #[cfg(test)]
    pub(crate) fn campaign(&mut self) -> Result<(), raft::Error> {
        let result = self.raw.campaign();
        self.reseed_election_timeout();
        result
    }

    /// Appends a proposal if this node leads; returns the index and term it was given.
    pub(crate) fn propose(
        &mut self,
        context: Vec<u8>,
        data: Vec<u8>,
    ) -> Result<(u64, u64), ProposeRefused> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeRefused::NotLeader(self.leader()));
        }
        let before = self.raw.raft.raft_log.last_index();
        match self.raw.propose(context, data) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                debug_assert_eq!(index, before + 1);
                Ok((index, self.raw.raft.term))
            }
            Err(_) => Err(ProposeRefused::Dropped),
        }
    }

    /// Appends a configuration change if this node leads and no other one is pending; returns
    /// its index.
    pub(crate) fn propose_conf_change(
        &mut self,
        context: Vec<u8>,
        cc: ConfChangeV2,
    ) -> Result<u64, ProposeRefused> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeRefused::NotLeader(self.leader()));
        }
        if self.has_pending_conf() {
            return Err(ProposeRefused::ConfChangePending);
        }
        match self.raw.propose_conf_change(context, cc) {
            Ok(()) => Ok(self.raw.raft.raft_log.last_index()),
            Err(_) => Err(ProposeRefused::Dropped),
        }
    }

    /// Whether a configuration change is proposed but not applied yet, or the configuration is
    /// joint (one change at a time, and a joint configuration must be left first).
    pub(crate) fn has_pending_conf(&self) -> bool {
        self.raw.raft.has_pending_conf()
            || !self.raw.store().conf_state().voters_outgoing.is_empty()
    }

    /// Applies a committed configuration change; returns the configuration it produced.
    pub(crate) fn apply_conf_change(
        &mut self,
        cc: &ConfChangeV2,
    ) -> Result<ConfState, raft::Error> {
        let cs = self.raw.apply_conf_change(cc)?;
        self.raw.mut_store().set_conf_state(cs.clone());
        Ok(cs)
    }

    /// A leader whose predecessor entered a joint configuration and lost leadership before
    /// leaving it never leaves on its own (raft-rs's auto-leave only fires on the leader that
    /// applied the entering change): propose the empty change that leaves it.
    pub(crate) fn leave_joint_if_stuck(&mut self) {
        let raft = &self.raw.raft;
        if raft.state == StateRole::Leader
            && !self.raw.store().conf_state().voters_outgoing.is_empty()
            && !raft.has_pending_conf()
            && raft.lead_transferee.is_none()
        {
            let _ = self
                .raw
                .propose_conf_change(Vec::new(), ConfChangeV2::default());
        }
    }

    /// As leader, hands leadership to `to` once it has caught up (raft-rs sends it
    /// `MsgTimeoutNow`); aborted after an election timeout.
    pub(crate) fn transfer_leader(&mut self, to: NodeId) {
        self.raw.transfer_leader(to);
    }

    /// How far each peer's log matches the leader's, by id (leader only; empty otherwise).
    pub(crate) fn matched(&self) -> Vec<(NodeId, u64)> {
        if self.raw.raft.state != StateRole::Leader {
            return Vec::new();
        }
        self.raw
            .raft
            .prs()
            .iter()
            .map(|(&id, p)| (id, p.matched))
            .collect()
    }

    /// The highest index known to be committed.
    pub(crate) fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The last index of this node's log.
    pub(crate) fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// True once this node, as leader, has committed an entry of its own term: before that
    /// raft-rs ignores ReadIndex requests.
    pub(crate) fn committed_in_term(&self) -> bool {
        self.raw.raft.commit_to_current_term()
    }

    /// Starts a ReadIndex round identified by `context`.
    pub(crate) fn read_index(&mut self, context: Vec<u8>) {
        self.raw.read_index(context);
    }

    /// A local snapshot at `meta.index` is durable: raft-rs may send it from now on, and the log
    /// up to `purge_to` is dropped.
    pub(crate) fn snapshot_taken(&mut self, meta: SnapshotMetadata, purge_to: u64) {
        self.raw.mut_store().snapshot_taken(meta, purge_to);
    }

    /// The latest snapshot's metadata (index 0: none).
    pub(crate) fn snapshot_meta(&self) -> &SnapshotMetadata {
        self.raw.store().snapshot_meta()
    }

    /// The term of the entry at `index`, if the log still holds it.
    pub(crate) fn term_at(&self, index: u64) -> Option<u64> {
        self.raw.store().term(index).ok()
    }

    /// The current configuration.
    pub(crate) fn conf_state(&self) -> ConfState {
        self.raw.store().conf_state().clone()
    }

    /// `(index, term, entry)` for every entry held from `from` on (tests and tools).
    pub(crate) fn entries_from(&self, from: u64) -> Vec<Entry> {
        let store = self.raw.store();
        let low = from.max(store.first_index());
        let high = store.last_index() + 1;
        if low >= high {
            return Vec::new();
        }
        store
            .entries(low, high, None, raft::GetEntriesContext::empty(false))
            .unwrap_or_default()
    }

    /// Index of the first entry the log still holds.
    pub(crate) fn first_index(&self) -> u64 {
        self.raw.store().first_index()
    }

    /// Reports how sending a snapshot to `id` ended.
    pub(crate) fn report_snapshot(&mut self, id: NodeId, delivered: bool) {
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(id, status);
    }

    /// Tells raft-rs that a peer could not be reached, so it stops optimistic pipelining to it.
    pub(crate) fn report_unreachable(&mut self, id: NodeId) {
        self.raw.report_unreachable(id);
    }

    /// Whether a Ready round has anything to do.
    pub(crate) fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Runs one Ready round, following raft-rs's documented order: new entries and hard state
    /// go to the in-memory log (so raft-rs can read them back) and into the persist batch, then
    /// the round is advanced asynchronously; durability is confirmed later by number.
    pub(crate) fn ready(&mut self) -> Option<Effects> {
        if !self.raw.has_ready() {
            return None;
        }
        let mut rd = self.raw.ready();
        let role_change = rd.ss().map(|ss| {
            let leader = Some(ss.leader_id).filter(|&id| id != raft::INVALID_ID);
            (Role::from_raft(ss.raft_state), leader)
        });
        let install = (!rd.snapshot().is_empty()).then(|| rd.snapshot().get_metadata().clone());
        let mut fx = Effects {
            number: rd.number(),
            send_now: rd.take_messages(),
            committed: rd.take_committed_entries(),
            read_states: rd.take_read_states(),
            role_change,
            ..Default::default()
        };
        let entries = rd.take_entries();
        let hard_state = rd.hs().cloned();
        let must_sync = rd.must_sync();
        fx.send_after_persist = rd.take_persisted_messages();
        let store = self.raw.mut_store();
        if let Some(meta) = &install {
            store.install_snapshot(meta.clone());
        }
        store.append(&entries);
        if let Some(hs) = &hard_state {
            store.set_hard_state(hs.clone());
        }
        fx.install = install;
        if !entries.is_empty() || hard_state.is_some() || fx.install.is_some() {
            fx.persist = Some(Persist {
                number: fx.number,
                entries,
                hard_state,
                must_sync,
            });
        }
        self.raw.advance_append_async(rd);
        Some(fx)
    }

    /// Every Ready up to `number` is durable.
    pub(crate) fn on_persisted(&mut self, number: u64) {
        self.raw.on_persist_ready(number);
    }

    /// The state machine has applied everything up to `index`.
    pub(crate) fn advance_apply_to(&mut self, index: u64) {
        self.raw.advance_apply_to(index);
    }

    /// Progress figures for status reports and tests.
    pub(crate) fn status(&self) -> DriverStatus {
        let raft = &self.raw.raft;
        DriverStatus {
            role: self.role(),
            leader: self.leader(),
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            last_index: raft.raft_log.last_index(),
            persisted: raft.raft_log.persisted,
            voters: self.voters(),
        }
    }

    /// raft-rs resets the election timer (and draws jitter from `thread_rng`) whenever it
    /// resets `election_elapsed`; we redraw from our own seeded RNG right after, before any tick
    /// can use raft-rs's draw.
    fn reseed_election_timeout(&mut self) {
        if self.raw.raft.election_elapsed == 0 {
            let t = self
                .rng
                .random_range(self.election_ticks..2 * self.election_ticks);
            self.raw.raft.set_randomized_election_timeout(t);
        }
    }
}
