//! Log compaction and snapshot transfer at scale, on three durable nodes in one process.
//!
//! - `compaction`: 200,000 writes with the default snapshot policy (every 10,000 applied
//!   entries, 1,000 kept behind); prints, as it goes, the most entries any node holds and the
//!   size of each node's redb file. Both must stay bounded.
//! - `transfer`: two nodes build a 100 MB state, snapshot it, and a third, empty node joins and
//!   catches up through the snapshot stream; prints how long that took and how far the process's
//!   resident memory rose above its level before the third node started (the new node must of
//!   course hold the 100 MB state itself; everything above that is transfer overhead).
//!
//! Run: `cargo run --release --example snapshot_and_compaction -- [compaction|transfer [MB]|both [MB]] [--entries N]`
//! (`--entries`: how many writes the compaction part makes, 200,000 by default)

use std::{
    collections::BTreeMap,
    io,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use iroh_raft::{
    KeyValueStore, KvCommand, NodeId, PeerAddr, Preset, RaftCluster, Role, StateMachine,
    WriteSnapshot,
    net::{bind_endpoint, endpoint_peer_addr},
    start_local_cluster,
};
use serde::{Deserialize, Serialize};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "both".into());
    // `--entries N`: how many entries the compaction part writes (CI's short mode).
    let args: Vec<String> = std::env::args().collect();
    let entries = args
        .iter()
        .position(|a| a == "--entries")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(200_000);
    if mode == "compaction" || mode == "both" {
        compaction(entries).await?;
    }
    if mode == "transfer" || mode == "both" {
        let mb = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(100);
        transfer(mb).await?;
    }
    Ok(())
}

async fn wait_for_leader<S: StateMachine>(
    nodes: &[RaftCluster<S>],
) -> anyhow::Result<RaftCluster<S>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for n in nodes {
            if n.status().await?.role == Role::Leader {
                return Ok(n.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no leader")
}

async fn compaction(total: u64) -> anyhow::Result<()> {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let nodes = start_local_cluster(&dirs, |_, b| {
        b.state_machine(KeyValueStore::new())
            .preset(Preset::Development)
            .fsync(true)
    })
    .await?;
    let leader = wait_for_leader(&nodes).await?;
    println!(
        "compaction: {total} writes of 128 B, snapshot every 10,000 applied entries, 1,000 kept"
    );
    println!(
        "{:>9} {:>14} {:>15} {:>22}",
        "writes", "max entries", "snapshot index", "redb file sizes (MB)"
    );
    let started = Instant::now();
    let mut max_held = 0;
    let mut written = 0;
    while written < total {
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..256u64 {
            let node = leader.clone();
            let first = written + c * 40;
            tasks.spawn(async move {
                for n in first..first + 40 {
                    let key = format!("key-{:08}", n % 50_000);
                    node.propose(KvCommand::Set {
                        key,
                        value: "x".repeat(100),
                    })
                    .await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        written += 256 * 40;
        let mut held = 0;
        let mut snap = u64::MAX;
        for n in &nodes {
            let s = n.status().await?;
            held = held.max(s.last_index + 1 - s.first_index);
            snap = snap.min(s.snapshot_index);
        }
        max_held = max_held.max(held);
        if written % (256 * 40 * 2) == 0 || written >= total {
            let sizes: Vec<String> = dirs
                .iter()
                .map(|d| format!("{:.1}", file_mb(&d.path().join(iroh_raft::DB_FILE))))
                .collect();
            println!(
                "{written:>9} {held:>14} {snap:>15} {:>22}",
                sizes.join(" / ")
            );
        }
    }
    let elapsed = started.elapsed();
    println!(
        "compaction: {written} writes in {elapsed:.1?} ({:.0} writes/s); the most entries any node held: {max_held}",
        written as f64 / elapsed.as_secs_f64()
    );
    for n in &nodes {
        n.shutdown().await?;
    }
    Ok(())
}

fn file_mb(path: &Path) -> f64 {
    std::fs::metadata(path)
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(0.0)
}

/// A state machine of large blobs, generated by `Fill` so the log stays small.
#[derive(Default)]
struct Blobs(BTreeMap<u32, Arc<Vec<u8>>>);

#[derive(Debug, Serialize, Deserialize)]
struct Fill {
    count: u32,
    size: u32,
}

struct BlobsSnapshot(BTreeMap<u32, Arc<Vec<u8>>>);

impl WriteSnapshot for BlobsSnapshot {
    fn write_to(self, out: &mut dyn io::Write) -> io::Result<()> {
        for (k, v) in self.0 {
            out.write_all(&k.to_le_bytes())?;
            out.write_all(&(v.len() as u32).to_le_bytes())?;
            out.write_all(&v)?;
        }
        Ok(())
    }
}

impl StateMachine for Blobs {
    type Command = Fill;
    type Response = u64;
    type Snapshot = BlobsSnapshot;

    fn apply(&mut self, fill: Fill) -> u64 {
        for k in 0..fill.count {
            let blob: Vec<u8> = (0..fill.size).map(|i| (i as u8) ^ (k as u8)).collect();
            self.0.insert(k, Arc::new(blob));
        }
        self.0.values().map(|v| v.len() as u64).sum()
    }

    /// Cheap: the blobs are shared, not copied.
    fn snapshot(&self) -> BlobsSnapshot {
        BlobsSnapshot(self.0.clone())
    }

    /// Streams: one blob in memory at a time besides the state itself.
    fn restore(&mut self, input: &mut dyn io::Read) -> io::Result<()> {
        self.0.clear();
        let mut head = [0u8; 8];
        loop {
            match input.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let k = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(head[4..].try_into().expect("4 bytes")) as usize;
            let mut blob = vec![0; len];
            input.read_exact(&mut blob)?;
            self.0.insert(k, Arc::new(blob));
        }
    }
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn transfer(mb: u32) -> anyhow::Result<()> {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut endpoints = Vec::new();
    for d in &dirs {
        endpoints.push(bind_endpoint(d.path(), ([127, 0, 0, 1], 0).into()).await?);
    }
    let members: Vec<(NodeId, PeerAddr)> = endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| (i as NodeId + 1, endpoint_peer_addr(ep)))
        .collect();
    let build = |i: usize, ep: iroh::Endpoint| {
        RaftCluster::builder()
            .node_id(i as NodeId + 1)
            .data_dir(dirs[i].path())
            .endpoint(ep)
            .peers(members.clone())
            .state_machine(Blobs::default())
            .preset(Preset::Development)
            .fsync(true)
            .snapshot_trailing_entries(0)
            .build()
    };
    let mut endpoints = endpoints.into_iter();
    let first = vec![
        build(0, endpoints.next().context("endpoint")?).await?,
        build(1, endpoints.next().context("endpoint")?).await?,
    ];
    let third_ep = endpoints.next().context("endpoint")?;
    let leader = wait_for_leader(&first).await?;
    let bytes = leader
        .propose(Fill {
            count: mb,
            size: 1 << 20,
        })
        .await?;
    let index = leader.trigger_snapshot().await?;
    for n in &first {
        n.trigger_snapshot().await?;
    }
    println!(
        "transfer: {:.0} MB of state, snapshot at index {index}",
        bytes as f64 / 1e6
    );

    let before = rss_mb();
    let peak = Arc::new(std::sync::Mutex::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let now = rss_mb();
                {
                    let mut p = peak.lock().expect("not poisoned");
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let started = Instant::now();
    let third = build(2, third_ep).await?;
    let commit = leader.status().await?.commit_index;
    loop {
        let s = third.status().await?;
        if s.applied_index >= commit {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("node 3 did not catch up: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    sampler.abort();
    let peak = *peak.lock().expect("not poisoned");
    let held = third
        .query(|b: &Blobs| b.0.values().map(|v| v.len() as u64).sum::<u64>())
        .await?;
    anyhow::ensure!(held == bytes, "node 3 holds {held} bytes, expected {bytes}");
    println!(
        "transfer: node 3 caught up via snapshot in {elapsed:.2?} ({:.0} MB/s); process RSS {before:.0} MB before, peak {peak:.0} MB: +{:.0} MB for a {:.0} MB state",
        bytes as f64 / 1e6 / elapsed.as_secs_f64(),
        peak - before,
        bytes as f64 / 1048576.0
    );
    third.shutdown().await?;
    for n in &first {
        n.shutdown().await?;
    }
    Ok(())
}
