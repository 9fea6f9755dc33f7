//! etcd and iroh-raft side by side, on the same machine, in one run.
//!
//! Each run starts a fresh three-member etcd cluster (Debian's `/usr/bin/etcd`, loopback,
//! default durability) and drives it through `etcd-client` over a few shared gRPC channels to
//! the leader; then a fresh three-node iroh-raft cluster in this process (Production preset,
//! fsync on), driven in library mode on the leader's handle. Both get the same closed-loop
//! workload (see `workload`). Runs alternate etcd, iroh-raft, etcd, …; the medians over runs
//! and the ratios come last:
//!
//! ```text
//! system=etcd clients=256 ops/s=... p50=...ms p99=...ms
//! system=iroh-raft clients=256 ops/s=... p50=...ms p99=...ms
//! iroh-raft/etcd clients=256 throughput=...x p50=...x
//! ```
//!
//! Run: `benches/peers/run-etcd.sh --runs 3 --seconds 5` (installs etcd and protoc if missing).

mod etcd;
mod workload;

use std::{
    fmt,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use etcd_client::Client;
use iroh_raft::{
    KeyValueStore, Preset, RaftCluster, Role, TicketRole, mgmt::IrohRaftManagementClient,
    start_local_cluster,
};

use crate::{
    etcd::{ETCD_CLIENT, EtcdCluster},
    workload::{Figures, Target, run_level},
};

#[derive(Parser, Debug)]
struct Args {
    /// Concurrency levels (closed-loop clients), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    clients: Vec<usize>,
    /// Measured seconds per level.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Warm-up seconds per level (not measured).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Runs; each runs every system once, on a fresh cluster.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// gRPC channels (each one HTTP/2 connection to the etcd leader) the etcd clients share,
    /// client `i` on channel `i % channels`.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Systems to run, in this order within a run. `iroh-raft-remote` (not in the default) sends
    /// the same writes through iroh-raft's management client: one QUIC connection to the leader,
    /// a client over the network like etcd's, where `iroh-raft` calls the leader in-process.
    #[arg(long, value_delimiter = ',', default_value = "etcd,iroh-raft")]
    systems: Vec<System>,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum System {
    Etcd,
    IrohRaft,
    IrohRaftRemote,
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            System::Etcd => "etcd",
            System::IrohRaft => "iroh-raft",
            System::IrohRaftRemote => "iroh-raft-remote",
        })
    }
}

/// One system's figures in one run, one entry per level in `Args::clients` order.
struct RunResult {
    system: System,
    levels: Vec<Figures>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.channels == 0 || args.runs == 0 || args.seconds == 0 || args.clients.contains(&0) {
        bail!("--channels, --runs, --seconds and every --clients level must be at least 1");
    }
    if args.systems.contains(&System::Etcd) {
        println!(
            "etcd={} ({}) client={ETCD_CLIENT} channels={} target=leader",
            etcd::binary_version(&args.etcd_bin)?,
            args.etcd_bin.display(),
            args.channels,
        );
    }
    if args.systems.contains(&System::IrohRaft) {
        println!("iroh-raft mode=library target=leader preset=Production fsync=on");
    }
    if args.systems.contains(&System::IrohRaftRemote) {
        println!(
            "iroh-raft-remote mode=remote connections=1 target=leader preset=Production fsync=on"
        );
    }
    // Ctrl-C ends the runs through their guards (etcd's group is killed, temp dirs removed)
    // instead of leaving the members running.
    let results = tokio::select! {
        results = run_all(&args) => results?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    report(&args, &results);
    Ok(())
}

async fn run_all(args: &Args) -> anyhow::Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for run in 1..=args.runs {
        for &system in &args.systems {
            let levels = match system {
                System::Etcd => run_etcd(args).await,
                System::IrohRaft => run_iroh_raft(args, false).await,
                System::IrohRaftRemote => run_iroh_raft(args, true).await,
            }
            .with_context(|| format!("run {run}, {system}"))?;
            for (clients, f) in args.clients.iter().zip(&levels) {
                println!("run={run} {}", line(system, *clients, f));
            }
            results.push(RunResult { system, levels });
        }
    }
    Ok(results)
}

/// Every level with its warm-up, on `targets`.
async fn run_levels(args: &Args, targets: &[Target]) -> anyhow::Result<Vec<Figures>> {
    let mut levels = Vec::new();
    for &clients in &args.clients {
        if args.warmup > 0 {
            run_level(targets, clients, Duration::from_secs(args.warmup)).await?;
        }
        levels.push(run_level(targets, clients, Duration::from_secs(args.seconds)).await?);
    }
    Ok(levels)
}

async fn run_etcd(args: &Args) -> anyhow::Result<Vec<Figures>> {
    let mut cluster = EtcdCluster::start(&args.etcd_bin)?;
    let health = cluster.wait_healthy().await?;
    eprintln!(
        "etcd: 3 members, version {}, leader {}",
        health.server_version, health.leader_url
    );
    let mut targets = Vec::with_capacity(args.channels);
    for _ in 0..args.channels {
        let client = Client::connect([&health.leader_url], None).await?;
        targets.push(Target::Etcd(Box::new(client.kv_client())));
    }
    let levels = run_levels(args, &targets).await?;
    drop(targets);
    cluster.stop().await?;
    Ok(levels)
}

async fn run_iroh_raft(args: &Args, remote: bool) -> anyhow::Result<Vec<Figures>> {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let nodes = start_local_cluster(&dirs, |_, b| {
        b.state_machine(KeyValueStore::new())
            .preset(Preset::Production)
            .fsync(true)
    })
    .await?;
    let leader = wait_for_leader(&nodes).await?;
    eprintln!("iroh-raft: 3 nodes, fsync on, leader {}", leader.node_id());
    let target = if remote {
        let ticket = leader
            .ticket(TicketRole::Admin, Duration::from_secs(3600))
            .await?;
        Target::IrohRaftRemote(IrohRaftManagementClient::connect(&ticket).await?)
    } else {
        Target::IrohRaft(leader)
    };
    let levels = run_levels(args, std::slice::from_ref(&target)).await?;
    if let Target::IrohRaftRemote(client) = target {
        client.close().await;
    }
    for n in &nodes {
        n.shutdown().await?;
    }
    Ok(levels)
}

async fn wait_for_leader(
    nodes: &[RaftCluster<KeyValueStore>],
) -> anyhow::Result<RaftCluster<KeyValueStore>> {
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

/// The medians over runs per system and level, then iroh-raft's figures as multiples of etcd's
/// (throughput: ours / etcd's; p50: ours / etcd's, below 1 when ours is shorter).
fn report(args: &Args, results: &[RunResult]) {
    println!("medians runs={} seconds={}", args.runs, args.seconds);
    let mut medians = Vec::new();
    for (i, &clients) in args.clients.iter().enumerate() {
        for &system in &args.systems {
            let runs: Vec<Figures> = results
                .iter()
                .filter(|r| r.system == system)
                .map(|r| r.levels[i])
                .collect();
            let m = Figures {
                ops_per_sec: median(runs.iter().map(|f| f.ops_per_sec)),
                p50_ms: median(runs.iter().map(|f| f.p50_ms)),
                p99_ms: median(runs.iter().map(|f| f.p99_ms)),
            };
            println!("{}", line(system, clients, &m));
            medians.push((system, clients, m));
        }
    }
    let find = |system, clients| {
        medians
            .iter()
            .find(|(s, c, _)| *s == system && *c == clients)
            .map(|(_, _, m)| *m)
    };
    for &clients in &args.clients {
        for ours in [System::IrohRaft, System::IrohRaftRemote] {
            if let (Some(o), Some(e)) = (find(ours, clients), find(System::Etcd, clients)) {
                println!(
                    "{ours}/etcd clients={clients} throughput={:.2}x p50={:.2}x",
                    o.ops_per_sec / e.ops_per_sec,
                    o.p50_ms / e.p50_ms,
                );
            }
        }
    }
}

fn line(system: System, clients: usize, f: &Figures) -> String {
    format!(
        "system={system} clients={clients} ops/s={:.0} p50={:.2}ms p99={:.2}ms",
        f.ops_per_sec, f.p50_ms, f.p99_ms
    )
}

/// The median (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}
