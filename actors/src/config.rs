//! The resolved configuration of one node, as the actors use it. The facade's builder and presets
//! produce it; nothing here has defaults of its own except through [`NodeConfig::new`].

use std::time::Duration;

use crate::types::NodeId;

/// Raft ticks per heartbeat interval. Two gives the election timer half-heartbeat resolution.
pub const TICKS_PER_HEARTBEAT: usize = 2;

/// Everything the runtime needs to know about timing, batching and durability.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeConfig {
    /// This node's Raft id.
    pub node_id: NodeId,
    /// Leader heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Minimum election timeout; the actual timeout is drawn from `[t, 2t)` per term.
    pub election_timeout: Duration,
    /// `true`: every write that Raft needs durable (entries, term, vote) is fsynced before the
    /// node acts on it. `false`: writes reach redb but are only fsynced at shutdown (tests,
    /// development): a power loss may forget acknowledged votes and entries.
    pub fsync: bool,
    /// Upper bound on the bytes of entries in one append message (raft-rs `max_size_per_msg`).
    pub max_append_bytes: u64,
    /// Append messages in flight per follower before the leader waits for acknowledgements.
    pub max_inflight_appends: usize,
    /// How long a pending proposal or read is kept before it fails with a timeout.
    pub request_timeout: Duration,
    /// Seed for this node's election jitter; `None` draws one from the OS.
    pub rng_seed: Option<u64>,
    /// Applied entries after the last snapshot that trigger the next one.
    pub max_log_entries: u64,
    /// Entries kept in the log behind a snapshot, so a follower slightly behind catches up from
    /// the log instead of needing the whole snapshot.
    pub snapshot_trailing_entries: u64,
    /// Serve linearizable reads on the leader's lease instead of a ReadIndex round (raft-rs
    /// `ReadOnlyOption::LeaseBased`, with check-quorum): no message per read batch, but it
    /// trusts clocks. A leader cut off from its quorum keeps serving reads until its next
    /// check-quorum tick, at most one election timeout after it last heard a majority, while
    /// the others may elect a new leader once their own (randomized, at least one election
    /// timeout) timers fire after they last heard it. Reads stay linearizable as long as the old
    /// leader's tick timer runs no slower than the others' by more than a vote round trip per
    /// election timeout; a leader process paused (a VM stall, SIGSTOP, swap) for longer than an
    /// election timeout breaks that bound and may serve a stale read. Off by default.
    pub lease_reads: bool,
    /// Votes, heartbeats and their answers on a stream of their own, apart from appends and
    /// snapshots (see the peer module's control lane). On by default; off only
    /// to measure what it buys.
    pub control_stream: bool,
}

impl NodeConfig {
    /// A configuration with moderate timings (100 ms heartbeat, 1 s election timeout, fsync on).
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            fsync: true,
            max_append_bytes: 1024 * 1024,
            max_inflight_appends: 256,
            request_timeout: Duration::from_secs(10),
            rng_seed: None,
            max_log_entries: 10_000,
            snapshot_trailing_entries: 1_000,
            lease_reads: false,
            control_stream: true,
        }
    }

    /// Interval of the Raft tick timer.
    pub fn tick_interval(&self) -> Duration {
        self.heartbeat_interval / TICKS_PER_HEARTBEAT as u32
    }

    /// Election timeout expressed in ticks (at least one heartbeat plus one tick).
    pub fn election_ticks(&self) -> usize {
        let ticks = self.election_timeout.as_micros() / self.tick_interval().as_micros().max(1);
        (ticks as usize).max(TICKS_PER_HEARTBEAT + 1)
    }

    /// Ticks after which a pending request times out.
    pub fn request_timeout_ticks(&self) -> u64 {
        (self.request_timeout.as_micros() / self.tick_interval().as_micros().max(1)) as u64
    }
}

/// Where the StorageActor runs. Production gives it its own OS thread, so redb's blocking
/// commits never stall the async workers; a deterministic simulation on a current-thread runtime
/// runs it as a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageSpawn {
    /// A dedicated OS thread (needs a multi-thread tokio runtime).
    Thread,
    /// A task on the current runtime.
    Task,
}
