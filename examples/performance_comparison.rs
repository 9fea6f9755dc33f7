//! Throughput and latency of a durable three-node cluster, through the library API and through
//! the remote management client over QUIC.
//!
//! Three nodes in one process on loopback (temp-dir redb, Production preset: fsync on, a
//! snapshot every 100,000 entries), 128-byte `KvCommand::Set` commands, closed-loop proposers:
//! `library` calls the leader's `RaftCluster` handle; `remote` sends the same commands through
//! one `IrohRaftManagementClient` (one QUIC connection to the leader, requests pipelined on two
//! streams). Each mode runs on a fresh cluster. One line per mode and concurrency level, then
//! the remote path's throughput as a share of the library's and the latency it adds:
//!
//! ```text
//! mode=library clients=256 ops/s=43288 p50=4.82ms p99=23.70ms
//! mode=remote clients=256 ops/s=28376 p50=7.68ms p99=23.28ms
//! remote/library clients=256 throughput=66% p50 added=+2.86ms
//! ```
//!
//! Run: `cargo run --release --example performance_comparison -- --clients 1,64,256`

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use iroh_raft::{
    KeyValueStore, KvCommand, Preset, RaftCluster, Role, TicketRole,
    mgmt::IrohRaftManagementClient, start_local_cluster,
};

#[derive(Parser, Debug)]
struct Args {
    /// Concurrency levels (closed-loop proposers), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    clients: Vec<usize>,
    /// Measured seconds per level.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Warm-up seconds per level (not measured).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Turn fsync off (not the target configuration; for comparison only).
    #[arg(long)]
    no_fsync: bool,
    /// Applied entries between snapshots (the Production preset's policy is 100,000).
    #[arg(long, default_value_t = 100_000)]
    max_log_entries: u64,
    /// Modes to run, comma separated: library, remote.
    #[arg(long, value_delimiter = ',', default_value = "library,remote")]
    modes: Vec<String>,
    /// With the `otel` feature: export traces at this sampling ratio to an OTLP/HTTP sink in
    /// this process (it accepts and discards), to measure what tracing costs.
    #[cfg(feature = "otel")]
    #[arg(long, value_name = "RATIO")]
    otlp_sampling: Option<f64>,
}

/// An OTLP/HTTP endpoint that answers every export with 200 and keeps nothing.
#[cfg(feature = "otel")]
async fn otlp_sink() -> anyhow::Result<String> {
    use http_body_util::{BodyExt, Full};
    use hyper::{body::Bytes, server::conn::http1, service::service_fn};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok(url)
}

/// Where proposals go.
#[derive(Clone)]
enum Target {
    Library(Node),
    Remote(IrohRaftManagementClient),
}

impl Target {
    async fn propose(&self, cmd: KvCommand) -> anyhow::Result<()> {
        match self {
            Target::Library(node) => {
                node.propose(cmd).await?;
            }
            Target::Remote(client) => {
                let _: iroh_raft::KvResponse = client.propose(&cmd).await?;
            }
        }
        Ok(())
    }
}

type Node = RaftCluster<KeyValueStore>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    #[cfg(feature = "otel")]
    let otlp = match args.otlp_sampling {
        Some(ratio) => Some((otlp_sink().await?, ratio)),
        None => None,
    };
    // Throughput per (mode, clients), to print the ratios at the end.
    let mut results: Vec<(String, usize, f64, f64)> = Vec::new();
    for mode in &args.modes {
        if !matches!(mode.as_str(), "library" | "remote") {
            bail!("unknown mode '{mode}': expected library or remote");
        }
        // A fresh cluster per mode, so that neither inherits the other's log, state and
        // snapshots (a later mode otherwise runs against a bigger store).
        let dirs: Vec<tempfile::TempDir> = (0..3)
            .map(|_| tempfile::tempdir())
            .collect::<Result<_, _>>()?;
        let (fsync, max_log_entries) = (!args.no_fsync, args.max_log_entries);
        let nodes = start_local_cluster(&dirs, |_, b| {
            let b = b
                .state_machine(KeyValueStore::new())
                .preset(Preset::Production)
                .fsync(fsync)
                .max_log_entries(max_log_entries);
            #[cfg(feature = "otel")]
            let b = match &otlp {
                Some((url, ratio)) => b.otlp_endpoint(url.clone()).otlp_sampling(*ratio),
                None => b,
            };
            b
        })
        .await?;
        let leader = wait_for_leader(&nodes).await?;
        eprintln!(
            "{mode}: 3 nodes, fsync {}, leader {}",
            if fsync { "on" } else { "off" },
            leader.node_id()
        );
        let target = if mode == "library" {
            Target::Library(leader.clone())
        } else {
            let ticket = leader
                .ticket(TicketRole::Admin, Duration::from_secs(3600))
                .await?;
            let client = IrohRaftManagementClient::connect(&ticket).await?;
            if let Some((node, _)) = client.session().await {
                eprintln!("remote client connected to node {node}");
            }
            Target::Remote(client)
        };
        for &clients in &args.clients {
            run_level(&target, clients, Duration::from_secs(args.warmup), false).await?;
            let (ops, hist, elapsed) =
                run_level(&target, clients, Duration::from_secs(args.seconds), true).await?;
            let rate = ops as f64 / elapsed.as_secs_f64();
            let p50 = hist.value_at_quantile(0.5) as f64 / 1000.0;
            println!(
                "mode={mode} clients={clients} ops/s={rate:.0} p50={p50:.2}ms p99={:.2}ms",
                hist.value_at_quantile(0.99) as f64 / 1000.0,
            );
            results.push((mode.clone(), clients, rate, p50));
        }
        if let Target::Remote(client) = target {
            client.close().await;
        }
        for n in &nodes {
            n.shutdown().await?;
        }
    }
    for (mode, clients, rate, p50) in &results {
        if mode != "remote" {
            continue;
        }
        if let Some((_, _, lib_rate, lib_p50)) = results
            .iter()
            .find(|(m, c, _, _)| m == "library" && c == clients)
        {
            println!(
                "remote/library clients={clients} throughput={:.0}% p50 added={:+.2}ms",
                100.0 * rate / lib_rate,
                p50 - lib_p50
            );
        }
    }
    Ok(())
}

/// A `Set` whose postcard encoding is 128 bytes.
fn command(client: usize, seq: u64) -> KvCommand {
    let key = format!("c{client:04}-{seq:012}");
    let value = "x".repeat(128 - 3 - key.len());
    KvCommand::Set { key, value }
}

async fn run_level(
    target: &Target,
    clients: usize,
    duration: Duration,
    measure: bool,
) -> anyhow::Result<(u64, Histogram<u64>, Duration)> {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let node = target.clone();
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("valid precision");
            let mut seq = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                node.propose(command(client, seq)).await?;
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
    if measure && total.is_empty() {
        bail!("no operation completed");
    }
    Ok((total.len(), total, elapsed))
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
