//! Heartbeats under a saturating load: does a busy link cost an election?
//!
//! Three durable nodes on loopback (Production preset: 100 ms heartbeats, 700 ms election
//! timeout) hold a large state (`--snapshot-mb`, 100 MB by default) in a snapshot. For
//! `--seconds` (60 by default), `--writers` closed-loop clients write 128-byte commands as fast
//! as they can while, one after another, fresh learners join, catch up through a full snapshot
//! stream from the leader, and are removed again. Run once with the control stream (votes and
//! heartbeats on a prioritized stream of their own, the default) and once without (everything on
//! the consensus stream), each on a fresh cluster.
//!
//! Prints per run: snapshot transfers made, acknowledged writes per second, terms seen (any
//! change is an election), and the followers' heartbeat delay (how much later than the interval
//! a heartbeat came, from the `iroh_raft_heartbeat_delay_seconds` histogram: bucket bounds,
//! so "p99 <= 5 ms" means between the next lower bound and 5 ms). Fails if the run with the
//! control stream saw an election.
//!
//! Run: `cargo run --release --example heartbeats_under_load -- [--seconds 60] [--snapshot-mb 100]`

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use iroh_raft::{KeyValueStore, KvCommand, NodeId, Preset, RaftCluster, Role, start_local_cluster};

type Node = RaftCluster<KeyValueStore>;

#[derive(Parser, Debug)]
struct Args {
    /// Seconds of load per run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Size of the state every learner receives as a snapshot, in MB.
    #[arg(long, default_value_t = 100)]
    snapshot_mb: usize,
    /// Closed-loop writers.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Which runs: on, off (the control stream), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "on,off")]
    control_stream: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut failed = false;
    for setting in &args.control_stream {
        let on = match setting.as_str() {
            "on" => true,
            "off" => false,
            other => bail!("--control-stream takes on or off, not {other}"),
        };
        let report = run(&args, on).await?;
        println!(
            "control_stream={setting} transfers={} writes/s={:.0} terms={:?} heartbeat_delay p50<={} p99<={} max<={} (ms, {} heartbeats)",
            report.transfers,
            report.writes_per_s,
            report.terms,
            report.delay.quantile(0.5),
            report.delay.quantile(0.99),
            report.delay.quantile(1.0),
            report.delay.total,
        );
        if on && report.terms.len() > 1 {
            eprintln!("an election happened with the control stream on");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

struct Report {
    transfers: usize,
    writes_per_s: f64,
    terms: Vec<u64>,
    delay: Buckets,
}

async fn run(args: &Args, control_stream: bool) -> anyhow::Result<Report> {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let configure = move |_, b: iroh_raft::RaftClusterBuilder<KeyValueStore>| {
        b.state_machine(KeyValueStore::new())
            .preset(Preset::Production)
            .control_stream(control_stream)
            // Only the snapshot taken below: learners must get the whole state.
            .max_log_entries(100_000_000)
            .snapshot_trailing_entries(0)
    };
    let nodes = start_local_cluster(&dirs, configure).await?;
    let leader = wait_for_leader(&nodes).await?;
    // The state: 1 MB values.
    let value = "v".repeat(1 << 20);
    for i in 0..args.snapshot_mb {
        leader
            .propose(KvCommand::Set {
                key: format!("big-{i}"),
                value: value.clone(),
            })
            .await?;
    }
    for n in &nodes {
        n.trigger_snapshot().await?;
    }
    let before: Vec<Buckets> = nodes.iter().map(Buckets::of).collect();
    let mut terms = vec![leader.status().await?.term];
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let writers = spawn_writers(&leader, args.writers, end);
    let mut transfers = 0;
    let mut next_id: NodeId = 4;
    while Instant::now() < end {
        transfer_to_learner(&leader, &nodes, next_id).await?;
        next_id += 1;
        transfers += 1;
        for n in &nodes {
            let term = n.status().await?.term;
            if !terms.contains(&term) {
                terms.push(term);
            }
        }
    }
    let mut writes = 0u64;
    for w in writers {
        writes += w.await??;
    }
    for n in &nodes {
        let term = n.status().await?.term;
        if !terms.contains(&term) {
            terms.push(term);
        }
    }
    let mut delay = Buckets::default();
    for (n, before) in nodes.iter().zip(&before) {
        if n.status().await?.role != Role::Leader {
            delay.add(&Buckets::of(n).minus(before));
        }
    }
    for n in &nodes {
        n.shutdown().await?;
    }
    Ok(Report {
        transfers,
        writes_per_s: writes as f64 / args.seconds as f64,
        terms,
        delay,
    })
}

/// Closed-loop writers of 128-byte commands until `end`; each returns its acknowledged writes.
fn spawn_writers(
    leader: &Node,
    writers: usize,
    end: Instant,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<u64>>> {
    (0..writers)
        .map(|w| {
            let leader = leader.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < end {
                    let key = format!("w{w:03}-{done:012}");
                    let value = "x".repeat(128 - 3 - key.len());
                    leader.propose(KvCommand::Set { key, value }).await?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect()
}

/// A fresh learner joins, receives the whole state as a snapshot stream, and is removed.
async fn transfer_to_learner(leader: &Node, members: &[Node], id: NodeId) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let peers: Vec<(NodeId, iroh_raft::PeerAddr)> = members
        .iter()
        .map(|n| (n.node_id(), n.peer_addr()))
        .collect();
    let learner = RaftCluster::builder()
        .node_id(id)
        .data_dir(dir.path())
        .peers(peers)
        .joining()
        .state_machine(KeyValueStore::new())
        .preset(Preset::Production)
        .build()
        .await?;
    leader.add_learner(id, learner.peer_addr()).await?;
    let snapshot = leader.status().await?.snapshot_index;
    let deadline = Instant::now() + Duration::from_secs(120);
    while learner.status().await?.applied_index < snapshot {
        if Instant::now() > deadline {
            bail!("learner {id} did not catch up within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    leader.remove_member(id).await?;
    // Removed: it stops with that as its reason.
    let _ = learner.shutdown().await;
    Ok(())
}

async fn wait_for_leader(nodes: &[Node]) -> anyhow::Result<Node> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for n in nodes {
            if n.status().await?.role == Role::Leader {
                return Ok(n.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no leader after 30 s")
}

/// A histogram's cumulative bucket counts by upper bound in ms (`f64::INFINITY` for +Inf).
#[derive(Default, Clone)]
struct Buckets {
    counts: BTreeMap<u64, u64>,
    total: u64,
}

impl Buckets {
    /// The follower's `heartbeat_delay_seconds` histogram, from its Prometheus export.
    fn of(node: &Node) -> Self {
        let mut b = Buckets::default();
        for line in node.export_metrics_prometheus().lines() {
            let Some(rest) = line.strip_prefix("iroh_raft_heartbeat_delay_seconds_bucket{le=\"")
            else {
                continue;
            };
            let Some((le, count)) = rest.split_once("\"} ") else {
                continue;
            };
            let count: u64 = count.trim().parse().unwrap_or(0);
            // Bounds as micro-seconds (integers, for the map's order).
            let bound = if le == "+Inf" {
                u64::MAX
            } else {
                (le.parse::<f64>().unwrap_or(f64::MAX) * 1e6) as u64
            };
            b.counts.insert(bound, count);
            if bound == u64::MAX {
                b.total = count;
            }
        }
        b
    }

    fn minus(&self, earlier: &Buckets) -> Buckets {
        let counts = self
            .counts
            .iter()
            .map(|(k, v)| (*k, v - earlier.counts.get(k).copied().unwrap_or(0)))
            .collect();
        Buckets {
            counts,
            total: self.total - earlier.total,
        }
    }

    fn add(&mut self, other: &Buckets) {
        for (k, v) in &other.counts {
            *self.counts.entry(*k).or_default() += v;
        }
        self.total += other.total;
    }

    /// The upper bound (ms) of the bucket holding quantile `q`.
    fn quantile(&self, q: f64) -> String {
        let want = (q * self.total as f64).ceil() as u64;
        self.counts
            .iter()
            .find(|(_, c)| **c >= want.max(1))
            .map(|(bound, _)| {
                if *bound == u64::MAX {
                    "inf".to_owned()
                } else {
                    format!("{}", *bound as f64 / 1000.0)
                }
            })
            .context("no heartbeats")
            .unwrap_or_else(|_| "-".into())
    }
}
