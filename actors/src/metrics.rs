//! A node's metrics: one [`iroh_metrics`] group per actor that owns the facts it counts, all
//! named `iroh_raft_*`, registered in the node's [`Registry`] next to iroh's own endpoint
//! metrics (the facade adds those) and any the application registers.
//!
//! Each actor writes its own group with plain atomics (no lock, no message) on the path where
//! the fact happens; the exposition reads them when scraped. Where etcd has the metric, ours
//! has its meaning (the README's table maps each name to etcd's). Per-peer metrics carry the
//! peer's node id as the `peer` label, never in the name.
//!
//! iroh-metrics rather than a second metrics stack: iroh already builds it, its registry
//! already holds the endpoint's metrics, and it has what we need (counters, gauges,
//! histograms, labelled families, OpenMetrics text).

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use iroh_metrics::{Counter, EncodeLabelSet, Family, Gauge, Histogram, MetricsGroup, Registry};

use crate::{error::ProposeError, types::NodeId};

/// Bucket bounds (seconds) for disk commits, round trips and proposal latencies: 50 µs to 10 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0, 10.0,
    ]
}

/// Bucket bounds (seconds) for snapshot work: 10 ms to 10 min.
fn snapshot_buckets() -> Vec<f64> {
    vec![
        0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
    ]
}

/// Bucket bounds (bytes) for snapshot sizes: 1 kB to 10 GB.
fn size_buckets() -> Vec<f64> {
    vec![1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10]
}

/// Bucket bounds for entries per group commit: 1 to 4096.
fn batch_buckets() -> Vec<f64> {
    (0..=12).map(|i| f64::from(1u32 << i)).collect()
}

/// Why a proposal failed (label `reason`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A short snake_case reason.
    pub reason: &'static str,
}

/// A refused connection or join: which protocol refused it and why (labels `protocol`,
/// `reason`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `consensus`, `management` or `discovery`.
    pub protocol: &'static str,
    /// A short snake_case reason.
    pub reason: &'static str,
}

/// Which peer (label `peer`: its node id).
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's node id.
    pub peer: NodeId,
}

/// A management request's kind and outcome (labels `kind`, `outcome`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RequestLabels {
    /// The call (`propose`, `read`, `status`, …).
    pub kind: &'static str,
    /// `ok` or the error kind.
    pub outcome: &'static str,
}

/// The RaftActor's facts: leadership, log positions, proposals, snapshots taken and installed.
#[derive(Debug, MetricsGroup)]
#[metrics(name = "iroh_raft", default)]
pub struct ConsensusMetrics {
    /// Whether a leader is known (1) or not (0), as etcd_server_has_leader.
    pub has_leader: Gauge,
    /// Whether this node leads (1) or not (0), as etcd_server_is_leader.
    pub is_leader: Gauge,
    /// Leader changes this node has seen since it started, as etcd_server_leader_changes_seen_total.
    pub leader_changes_seen: Counter,
    /// The current Raft term.
    pub term: Gauge,
    /// The commit index: consensus proposals committed, as etcd_server_proposals_committed_total.
    pub proposals_committed: Gauge,
    /// The applied index: consensus proposals applied, as etcd_server_proposals_applied_total.
    pub proposals_applied: Gauge,
    /// Proposals taken by this node and not yet answered, as etcd_server_proposals_pending.
    pub proposals_pending: Gauge,
    /// Proposals that failed, by reason, as etcd_server_proposals_failed_total (once per call, by its final outcome: retried refusals are not counted).
    pub proposals_failed: Family<ReasonLabel, Counter>,
    /// Seconds from a call to propose on this node to its applied answer (retries included; successful calls only).
    #[default(Histogram::new(latency_buckets()))]
    pub proposal_duration_seconds: Histogram,
    /// The index of the last entry in this node's log.
    pub last_index: Gauge,
    /// Entries held in the log (not yet compacted into a snapshot).
    pub log_entries: Gauge,
    /// Seconds to write a snapshot of the state machine, as etcd_debugging_snap_save_total_duration_seconds.
    #[default(Histogram::new(snapshot_buckets()))]
    pub snapshot_save_duration_seconds: Histogram,
    /// Seconds to install a snapshot received from the leader.
    #[default(Histogram::new(snapshot_buckets()))]
    pub snapshot_install_duration_seconds: Histogram,
    /// Bytes of the snapshots this node wrote.
    #[default(Histogram::new(size_buckets()))]
    pub snapshot_size_bytes: Histogram,
    /// On a follower: how much longer than the heartbeat interval passed between two heartbeats from its leader (0 when on time). A busy leader or link shows here long before it costs an election.
    #[default(Histogram::new(latency_buckets()))]
    pub heartbeat_delay_seconds: Histogram,
}

impl ConsensusMetrics {
    /// Counts a failed proposal.
    pub fn failed(&self, e: &ProposeError) {
        let reason = ReasonLabel { reason: e.reason() };
        self.proposals_failed.get_or_create(&reason).inc();
    }
}

/// The StorageActor's facts: commits, their size, the database file.
#[derive(Debug, MetricsGroup)]
#[metrics(name = "iroh_raft", default)]
pub struct StorageMetrics {
    /// Seconds per group commit of persist batches (with its fsync when the preset syncs), as etcd_disk_wal_fsync_duration_seconds and etcd_disk_backend_commit_duration_seconds.
    #[default(Histogram::new(latency_buckets()))]
    pub disk_commit_duration_seconds: Histogram,
    /// Log entries written per group commit.
    #[default(Histogram::new(batch_buckets()))]
    pub persist_batch_entries: Histogram,
    /// Size of the database file in bytes, as etcd_mvcc_db_total_size_in_bytes.
    pub db_size_bytes: Gauge,
    /// Group commits that failed (the node stops on the first).
    pub disk_commit_failures: Counter,
}

/// The PeerActors' and the consensus handler's facts, per peer.
#[derive(Debug, MetricsGroup)]
#[metrics(name = "iroh_raft", default)]
pub struct PeerMetrics {
    /// Round-trip time to a peer (the connection's estimate), as etcd_network_peer_round_trip_time_seconds.
    #[default(Family::with_constructor(|| Histogram::new(latency_buckets())))]
    pub peer_round_trip_time_seconds: Family<PeerLabel, Histogram>,
    /// Bytes sent to a peer, as etcd_network_peer_sent_bytes_total.
    pub peer_sent_bytes: Family<PeerLabel, Counter>,
    /// Bytes received from a peer, as etcd_network_peer_received_bytes_total.
    pub peer_received_bytes: Family<PeerLabel, Counter>,
    /// Frames sent to a peer.
    pub peer_sent_frames: Family<PeerLabel, Counter>,
    /// Frames received from a peer.
    pub peer_received_frames: Family<PeerLabel, Counter>,
    /// Sends to a peer that failed (the batch was lost; Raft retransmits), as etcd_network_peer_sent_failures_total.
    pub peer_sent_failures: Family<PeerLabel, Counter>,
    /// Connections to a peer established again after one was lost or refused.
    pub peer_reconnects: Family<PeerLabel, Counter>,
    /// 1 while the connection to a peer sends through a relay, 0 while it goes straight to
    /// the peer's address (absent until a connection was made).
    pub peer_relayed: Family<PeerLabel, Gauge>,
    /// Times the connection to a peer moved to another path: relayed to direct (a hole was
    /// punched), direct to relayed, or to another address.
    pub peer_path_changes: Family<PeerLabel, Counter>,
    /// Seconds to stream a snapshot to a follower, as etcd_network_snapshot_send_total_duration_seconds.
    #[default(Histogram::new(snapshot_buckets()))]
    pub snapshot_send_duration_seconds: Histogram,
}

/// The EventBus's facts.
#[derive(Debug, MetricsGroup)]
#[metrics(name = "iroh_raft", default)]
pub struct EventMetrics {
    /// Open event subscriptions.
    pub event_subscribers: Gauge,
    /// Events subscribers missed because they read too slowly.
    pub events_missed: Counter,
}

/// The management plane's facts.
#[derive(Debug, MetricsGroup)]
#[metrics(name = "iroh_raft", default)]
pub struct MgmtMetrics {
    /// Management requests answered, by kind and outcome.
    pub mgmt_requests: Family<RequestLabels, Counter>,
    /// Management clients connected to this node now (admitted connections). A rolling
    /// update waits for it to drain before it stops the node.
    pub mgmt_clients: Gauge,
    /// Connections and joins refused, by protocol (consensus, management, discovery) and
    /// reason.
    pub admission_refusals: Family<RefusalLabels, Counter>,
}

impl MgmtMetrics {
    /// Counts a refusal.
    pub fn refused(&self, protocol: &'static str, reason: &'static str) {
        let labels = RefusalLabels { protocol, reason };
        self.admission_refusals.get_or_create(&labels).inc();
    }
}

/// Every metrics group of one node, and the registry they are in.
#[derive(Debug)]
pub struct NodeMetrics {
    /// The RaftActor's.
    pub consensus: Arc<ConsensusMetrics>,
    /// The StorageActor's.
    pub storage: Arc<StorageMetrics>,
    /// The PeerActors' and the consensus handler's.
    pub peers: Arc<PeerMetrics>,
    /// The EventBus's.
    pub events: Arc<EventMetrics>,
    /// The management plane's.
    pub mgmt: Arc<MgmtMetrics>,
    /// The node's registry: these groups, and whatever the facade or the application adds
    /// (iroh's endpoint metrics, their own).
    pub registry: Arc<RwLock<Registry>>,
    /// When the StorageActor's current write started, in µs after `epoch` (0: none running).
    write_started: AtomicU64,
    /// When the RaftActor last ran its loop (a tick or a Ready round), in µs after `epoch`.
    raft_beat: AtomicU64,
    epoch: Instant,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let consensus = Arc::new(ConsensusMetrics::default());
        let storage = Arc::new(StorageMetrics::default());
        let peers = Arc::new(PeerMetrics::default());
        let events = Arc::new(EventMetrics::default());
        let mgmt = Arc::new(MgmtMetrics::default());
        let mut registry = Registry::default();
        registry.register(consensus.clone());
        registry.register(storage.clone());
        registry.register(peers.clone());
        registry.register(events.clone());
        registry.register(mgmt.clone());
        Self {
            consensus,
            storage,
            peers,
            events,
            mgmt,
            registry: Arc::new(RwLock::new(registry)),
            write_started: AtomicU64::new(0),
            raft_beat: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl NodeMetrics {
    /// Everything in the registry, in the OpenMetrics text format (which Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.read().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = registry.encode_openmetrics_to_writer(&mut out);
        out.push_str("# EOF\n");
        out
    }

    fn now_us(&self) -> u64 {
        (self.epoch.elapsed().as_micros() as u64).max(1)
    }

    /// The StorageActor starts a write; the write is timed until the guard is dropped (a
    /// panicking write included).
    pub(crate) fn write_started(&self) -> WriteTimer<'_> {
        self.write_started.store(self.now_us(), Ordering::Relaxed);
        WriteTimer(self)
    }

    /// The RaftActor's loop ran (every tick and Ready round).
    pub(crate) fn raft_beat(&self) {
        self.raft_beat.store(self.now_us(), Ordering::Relaxed);
    }

    /// How long since the RaftActor's loop last ran (`None`: it never did).
    pub fn raft_silent_for(&self) -> Option<Duration> {
        match self.raft_beat.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(self.now_us().saturating_sub(us))),
        }
    }

    /// How long the StorageActor's current write has been running, if one is.
    pub fn write_running_for(&self) -> Option<Duration> {
        match self.write_started.load(Ordering::Relaxed) {
            0 => None,
            us => {
                let now = self.epoch.elapsed().as_micros() as u64;
                Some(Duration::from_micros(now.saturating_sub(us)))
            }
        }
    }
}

/// Times a storage write while it lives.
pub(crate) struct WriteTimer<'a>(&'a NodeMetrics);

impl Drop for WriteTimer<'_> {
    fn drop(&mut self) {
        self.0.write_started.store(0, Ordering::Relaxed);
    }
}

impl ProposeError {
    /// A short snake_case name of the kind of failure, the `reason` label of
    /// `iroh_raft_proposals_failed_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProposeError::NotLeader { .. } => "not_leader",
            ProposeError::LeaderUnreachable { .. } => "leader_unreachable",
            ProposeError::Dropped { .. } => "dropped",
            ProposeError::Busy => "busy",
            ProposeError::LeaderChanged { .. } => "leader_changed",
            ProposeError::Timeout => "timeout",
            ProposeError::TooLarge { .. } => "too_large",
            ProposeError::Codec(_) => "codec",
            ProposeError::ShuttingDown => "shutting_down",
            ProposeError::Interrupted => "interrupted",
            ProposeError::Membership(_) => "membership_refused",
            ProposeError::Fatal(_) => "fatal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_labels_and_etcd_suffixes() {
        let m = NodeMetrics::default();
        m.consensus.has_leader.set(1);
        m.consensus.leader_changes_seen.inc();
        m.consensus.failed(&ProposeError::Timeout);
        m.peers
            .peer_sent_bytes
            .get_or_create(&PeerLabel { peer: 2 })
            .inc_by(10);
        m.storage.disk_commit_duration_seconds.observe(0.002);
        let text = m.encode();
        for line in [
            "iroh_raft_has_leader 1",
            "iroh_raft_leader_changes_seen_total 1",
            "iroh_raft_proposals_failed_total{reason=\"timeout\"} 1",
            "iroh_raft_peer_sent_bytes_total{peer=\"2\"} 10",
            "iroh_raft_disk_commit_duration_seconds_count 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }

    #[test]
    fn a_running_write_is_timed() {
        let m = NodeMetrics::default();
        assert_eq!(m.write_running_for(), None);
        let timer = m.write_started();
        assert!(m.write_running_for().is_some());
        drop(timer);
        assert_eq!(m.write_running_for(), None);
        // A write that panics is not left "running".
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _timer = m.write_started();
            panic!("disk driver bug");
        }));
        assert!(panicked.is_err());
        assert_eq!(m.write_running_for(), None);
    }
}
