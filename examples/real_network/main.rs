//! Write throughput and latency over emulated real networks: each node on a host of its own (a
//! Linux network namespace), every link between them with a one-way delay of half the round
//! trip asked for, 10% of it as jitter, and a packet loss rate. Needs root (namespaces,
//! iptables); see `tests/network/lab.rs` for how links are emulated (a userspace netfilter
//! queue: these kernels have no netem).
//!
//! Each (nodes, round trip, loss) gets a fresh cluster of in-process nodes (Production preset:
//! fsync on), each node's runtime inside its host's namespace; closed-loop clients call the
//! leader's `RaftCluster::propose` with 128-byte `KvCommand::Set` commands (library mode, as in
//! `performance_comparison`). A round trip of 0 is the same cluster with no emulation: the
//! baseline the others are compared with. One client's median write is printed as a multiple of
//! (round trip + fdatasync): a write needs one round trip to a quorum and one durable append on
//! each side of it, which overlap.
//!
//! Run (release, as root): `cargo run --release --example real_network -- --nodes 3,5
//! --rtt-ms 0,10,50,100 --loss 0,1 --clients 1,64,256`. etcd under the same emulation:
//! `benches/peers` (`network` binary).

#[allow(dead_code)]
#[path = "../performance_comparison/baseline.rs"]
mod baseline;
#[path = "../../tests/network/lab.rs"]
mod lab;
pub mod netcluster;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use iroh_raft::KvCommand;

#[derive(Parser, Debug)]
struct Args {
    /// Cluster sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "3,5")]
    nodes: Vec<usize>,
    /// Round trips between any two nodes in milliseconds, comma separated (0: no emulation).
    #[arg(long, value_delimiter = ',', default_value = "0,10,50,100")]
    rtt_ms: Vec<u64>,
    /// Packet loss on every link in percent, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    loss: Vec<f64>,
    /// Concurrency levels (closed-loop clients), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    clients: Vec<usize>,
    /// Measured seconds per level.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Warm-up seconds per level (not measured).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Runs of everything; each figure printed is the median over runs.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Jitter on every link, in percent of its one-way delay (uniform: packets are reordered,
    /// as with netem's jitter).
    #[arg(long, default_value_t = 10)]
    jitter_pct: u32,
    /// QUIC congestion controllers to compare, comma separated: cubic, bbr.
    #[arg(long, value_delimiter = ',', default_value = "cubic")]
    congestion: Vec<iroh_raft::net::CongestionControl>,
}

/// One level's figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.runs > 0 && args.seconds > 0 && !args.clients.contains(&0),
        "--runs, --seconds and every --clients level must be at least 1"
    );
    let rt = tokio::runtime::Runtime::new()?;
    let scratch = tempfile::tempdir()?;
    let floor = rt.block_on(baseline::measure(scratch.path()))?;
    let fsync = floor.fdatasync;
    println!("floor: fdatasync p50 {:.3} ms", ms(fsync));
    println!(
        "{:>5} {:>7} {:>6} {:>6} {:>7} {:>10} {:>9} {:>9} {:>14}",
        "nodes", "rtt_ms", "loss%", "cc", "clients", "ops/s", "p50_ms", "p99_ms", "p50/(rtt+fsync)"
    );
    let mut rows = Vec::new();
    for &nodes in &args.nodes {
        for &rtt_ms in &args.rtt_ms {
            let losses: &[f64] = if rtt_ms == 0 { &[0.0] } else { &args.loss };
            for &loss in losses {
                for &cc in &args.congestion {
                    let mut runs: Vec<Vec<Sample>> = Vec::new();
                    for _ in 0..args.runs {
                        runs.push(run_setup(&rt, &args, (nodes, rtt_ms, loss), cc)?);
                    }
                    let cc_name = format!("{cc:?}").to_lowercase();
                    for (i, &clients) in args.clients.iter().enumerate() {
                        let s = median(runs.iter().map(|r| r[i]).collect());
                        let rtt = Duration::from_millis(rtt_ms);
                        let ratio = ms(s.p50) / ms(rtt + fsync);
                        println!(
                            "{nodes:>5} {rtt_ms:>7} {loss:>6.1} {cc_name:>6} {clients:>7} {:>10.0} {:>9.2} {:>9.2} {:>14.2}",
                            s.ops_per_sec,
                            ms(s.p50),
                            ms(s.p99),
                            ratio
                        );
                        rows.push((nodes, rtt_ms, loss, cc, clients, s));
                    }
                }
            }
        }
    }
    // Throughput at each round trip against the same size's unemulated figure.
    println!("\nthroughput against the same cluster with no emulation (loss 0):");
    for &(nodes, rtt_ms, loss, cc, clients, s) in &rows {
        if rtt_ms == 0 || loss != 0.0 {
            continue;
        }
        if let Some((.., base)) = rows
            .iter()
            .find(|r| r.0 == nodes && r.1 == 0 && r.3 == cc && r.4 == clients)
        {
            println!(
                "  {nodes} nodes, {rtt_ms} ms, {cc:?}, {clients} clients: {:.2} x",
                s.ops_per_sec / base.ops_per_sec
            );
        }
    }
    Ok(())
}

/// A fresh lab and cluster for one (nodes, round trip, loss); every client level in turn.
fn run_setup(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    (nodes, rtt_ms, loss): (usize, u64, f64),
    cc: iroh_raft::net::CongestionControl,
) -> anyhow::Result<Vec<Sample>> {
    let mut lab = lab::Lab::new();
    let hosts: Vec<lab::Host> = (1..=nodes).map(|i| lab.host(&format!("n{i}"))).collect();
    if rtt_ms > 0 {
        let one_way = Duration::from_millis(rtt_ms) / 2;
        lab.set_all_links(lab::Link {
            delay: one_way,
            jitter: one_way * args.jitter_pct / 100,
            loss: loss / 100.0,
        });
    }
    let cluster = netcluster::NetCluster::start_with(&hosts, cc)?;
    let leader = cluster.leader().context("no leader")?;
    let mut samples = Vec::new();
    for &clients in &args.clients {
        rt.block_on(level(&leader, clients, Duration::from_secs(args.warmup)))?;
        let s = rt.block_on(level(&leader, clients, Duration::from_secs(args.seconds)))?;
        samples.push(s);
    }
    let stats = lab.emulator_stats();
    eprintln!(
        "  ({nodes} nodes, {rtt_ms} ms, {loss}%: emulator delayed {} dropped {} queue-full {} cpu {:?})",
        stats.delayed, stats.dropped, stats.queue_full, stats.cpu_time
    );
    cluster.shutdown();
    drop(lab);
    Ok(samples)
}

/// `clients` closed-loop writers on the leader for `duration`.
async fn level(
    leader: &netcluster::Node,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let leader = leader.clone();
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("valid precision");
            let mut seq = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                let cmd = KvCommand::Set {
                    key: format!("c{client:05}-{:010}", seq % 10_000),
                    value: "x".repeat(112),
                };
                leader.propose(cmd).await?;
                hist.record(t.elapsed().as_micros() as u64)
                    .expect("in range");
                seq += 1;
            }
            anyhow::Ok(hist)
        });
    }
    let mut total = Histogram::<u64>::new(3)?;
    while let Some(done) = tasks.join_next().await {
        total.add(done.context("client task")??)?;
    }
    let elapsed = start.elapsed();
    Ok(Sample {
        ops_per_sec: total.len() as f64 / elapsed.as_secs_f64(),
        p50: Duration::from_micros(total.value_at_quantile(0.5)),
        p99: Duration::from_micros(total.value_at_quantile(0.99)),
    })
}

fn median(mut samples: Vec<Sample>) -> Sample {
    samples.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    let mid = samples[samples.len() / 2];
    let mut p50: Vec<_> = samples.iter().map(|s| s.p50).collect();
    let mut p99: Vec<_> = samples.iter().map(|s| s.p99).collect();
    p50.sort();
    p99.sort();
    Sample {
        ops_per_sec: mid.ops_per_sec,
        p50: p50[p50.len() / 2],
        p99: p99[p99.len() / 2],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
