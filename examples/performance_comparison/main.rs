//! Throughput and latency of a three-node cluster in one process: through the library API
//! (durable, on loopback iroh), through the remote management client over QUIC, and in memory
//! (no files, no sockets: `RaftClusterBuilder::in_memory`), for writes, linearizable reads and a
//! 90%-read mix.
//!
//! Three nodes in one process (Production preset: fsync on, a snapshot every 100,000 entries),
//! 128-byte `KvCommand::Set` commands, closed-loop clients: `library` calls the leader's
//! `RaftCluster` handle; `remote` sends the same commands through one `IrohRaftManagementClient`
//! (one QUIC connection to the leader, requests pipelined); `memory` is `library` on in-memory
//! nodes. Reads are `linearizable_query` (ReadIndex rounds shared by the readers waiting, or the
//! leader's lease with `--reads lease`) of keys written beforehand. Each (run, mode, read kind)
//! gets a fresh cluster; each level runs `--warmup` seconds unmeasured, then `--seconds`
//! measured. With `--runs N` (default 3) every figure is the median of the N runs.
//!
//! Before the runs it measures this machine's floor: a raw 128-byte append + `fdatasync` in the
//! directory the nodes use, and a 128-byte UDP round trip on loopback; a single client's durable
//! write is then printed as a multiple of (round trip + fdatasync). `allocs/op` counts every
//! allocation of the process (all three nodes, the clients, the runtime) per completed
//! operation.
//!
//! Run: `cargo run --release --example performance_comparison -- --clients 1,64,256
//! --modes library,remote,memory --workload write,read,mixed`

mod alloc_count;
mod baseline;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use iroh_raft::{
    KeyValueStore, KvCommand, Preset, RaftCluster, RaftClusterBuilder, Role, TicketRole,
    mgmt::IrohRaftManagementClient, start_local_cluster, start_memory_cluster,
};

#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

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
    /// Runs of everything; each figure printed is the median over runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Turn fsync off (not the target configuration; for comparison only).
    #[arg(long)]
    no_fsync: bool,
    /// Applied entries between snapshots (the Production preset's policy is 100,000).
    #[arg(long, default_value_t = 100_000)]
    max_log_entries: u64,
    /// Modes to run, comma separated: library, remote, memory.
    #[arg(long, value_delimiter = ',', default_value = "library,remote")]
    modes: Vec<Mode>,
    /// Workloads, comma separated: write, read (linearizable), mixed (90% reads).
    #[arg(long, value_delimiter = ',', default_value = "write")]
    workload: Vec<Workload>,
    /// How linearizable reads are confirmed, comma separated: index (a ReadIndex round with
    /// the followers), lease (the leader's check-quorum lease).
    #[arg(long, value_delimiter = ',', default_value = "index")]
    reads: Vec<Reads>,
    /// Votes and heartbeats on the consensus stream instead of a stream of their own (for
    /// comparison only).
    #[arg(long)]
    no_control_stream: bool,
    /// Skip measuring the machine's fdatasync and round-trip floor.
    #[arg(long)]
    no_floor: bool,
    /// With the `otel` feature: export traces at this sampling ratio to an OTLP/HTTP sink in
    /// this process (it accepts and discards), to measure what tracing costs.
    #[cfg(feature = "otel")]
    #[arg(long, value_name = "RATIO")]
    otlp_sampling: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Mode {
    Library,
    Remote,
    Memory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Workload {
    Write,
    Read,
    Mixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Reads {
    Index,
    Lease,
}

fn name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
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

type Node = RaftCluster<KeyValueStore>;

/// Where operations go.
#[derive(Clone)]
enum Target {
    Library(Node),
    Remote(IrohRaftManagementClient),
}

/// Keys written before the runs, read by the read workloads.
const READ_KEYS: usize = 1_000;

impl Target {
    async fn write(&self, cmd: KvCommand) -> anyhow::Result<()> {
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

    async fn read(&self, key: String) -> anyhow::Result<()> {
        let value = match self {
            Target::Library(node) => {
                node.linearizable_query(move |kv| kv.get(&key).cloned())
                    .await?
            }
            Target::Remote(client) => client.read::<String, Option<String>>(&key).await?,
        };
        value.context("a key written before the run is missing")?;
        Ok(())
    }
}

/// One measured level of one run.
#[derive(Clone, Copy)]
struct Sample {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    allocs_per_op: f64,
}

/// What a line of the table is about.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    mode: Mode,
    workload: Workload,
    reads: Reads,
    clients: usize,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mode={} workload={}",
            name(&self.mode),
            name(&self.workload)
        )?;
        if self.workload != Workload::Write {
            write!(f, " reads={}", name(&self.reads))?;
        }
        write!(f, " clients={}", self.clients)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let floor = if args.no_floor {
        None
    } else {
        let dir = tempfile::tempdir()?;
        let floor = baseline::measure(dir.path()).await?;
        println!(
            "floor: fdatasync p50={:.3}ms loopback udp round trip p50={:.3}ms",
            ms(floor.fdatasync),
            ms(floor.round_trip)
        );
        Some(floor)
    };
    eprintln!(
        "each level: {} s warm-up (not measured), then {} s measured; {} run(s), medians printed",
        args.warmup, args.seconds, args.runs
    );
    let mut samples: BTreeMap<Key, Vec<Sample>> = BTreeMap::new();
    for run in 1..=args.runs {
        for &mode in &args.modes {
            for reads in read_kinds(&args) {
                let workloads: Vec<Workload> = args
                    .workload
                    .iter()
                    .copied()
                    // Writes do not depend on how reads are confirmed: measured once.
                    .filter(|w| *w != Workload::Write || reads == args.reads[0])
                    .collect();
                if workloads.is_empty() {
                    continue;
                }
                let (cluster, target) = start(&args, mode, reads).await?;
                eprintln!("run {run}: {} reads={}", name(&mode), name(&reads));
                for &workload in &workloads {
                    for &clients in &args.clients {
                        let key = Key {
                            mode,
                            workload,
                            reads,
                            clients,
                        };
                        if args.warmup > 0 {
                            let warmup = Duration::from_secs(args.warmup);
                            run_level(&target, workload, clients, warmup).await?;
                        }
                        let sample = run_level(
                            &target,
                            workload,
                            clients,
                            Duration::from_secs(args.seconds),
                        )
                        .await?;
                        println!("run={run} {key} {}", show(&sample));
                        samples.entry(key).or_default().push(sample);
                    }
                }
                if let Target::Remote(client) = target {
                    client.close().await;
                }
                for n in &cluster.nodes {
                    n.shutdown().await?;
                }
            }
        }
    }
    report(&samples, floor.as_ref());
    Ok(())
}

/// The read kinds to run: only the first when no workload reads.
fn read_kinds(args: &Args) -> Vec<Reads> {
    if args.workload.iter().all(|w| *w == Workload::Write) {
        args.reads.iter().take(1).copied().collect()
    } else {
        args.reads.clone()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn show(s: &Sample) -> String {
    format!(
        "ops/s={:.0} p50={:.2}ms p99={:.2}ms allocs/op={:.0}",
        s.rate, s.p50_ms, s.p99_ms, s.allocs_per_op
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn report(samples: &BTreeMap<Key, Vec<Sample>>, floor: Option<&baseline::Floor>) {
    let medians: BTreeMap<Key, Sample> = samples
        .iter()
        .map(|(k, runs)| {
            let m = |f: fn(&Sample) -> f64| median(runs.iter().map(f).collect());
            let sample = Sample {
                rate: m(|s| s.rate),
                p50_ms: m(|s| s.p50_ms),
                p99_ms: m(|s| s.p99_ms),
                allocs_per_op: m(|s| s.allocs_per_op),
            };
            (*k, sample)
        })
        .collect();
    println!(
        "medians of {} run(s):",
        samples.values().map(Vec::len).max().unwrap_or(0)
    );
    for (key, s) in &medians {
        println!("{key} {}", show(s));
    }
    for (key, s) in &medians {
        if key.mode == Mode::Library {
            continue;
        }
        let library = Key {
            mode: Mode::Library,
            ..*key
        };
        if let Some(lib) = medians.get(&library) {
            println!(
                "{}/library {} throughput={:.0}% p50 {:+.2}ms",
                name(&key.mode),
                Key {
                    mode: Mode::Library,
                    ..*key
                }
                .to_string()
                .trim_start_matches("mode=library "),
                100.0 * s.rate / lib.rate,
                s.p50_ms - lib.p50_ms
            );
        }
    }
    let single = Key {
        mode: Mode::Library,
        workload: Workload::Write,
        reads: Reads::Index,
        clients: 1,
    };
    if let (Some(floor), Some(s)) = (floor, medians.get(&single)) {
        println!(
            "library 1-client write p50 = {:.2} x (round trip + fdatasync = {:.3}ms)",
            s.p50_ms / ms(floor.write()),
            ms(floor.write())
        );
    }
}

/// A fresh three-node cluster for `mode`, and where its clients send.
/// A running cluster, and the directories of its files (removed when it is dropped, after the
/// nodes stopped).
struct Cluster {
    nodes: Vec<Node>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start(args: &Args, mode: Mode, reads: Reads) -> anyhow::Result<(Cluster, Target)> {
    let (fsync, max_log_entries) = (!args.no_fsync, args.max_log_entries);
    let control_stream = !args.no_control_stream;
    #[cfg(feature = "otel")]
    let otlp = match args.otlp_sampling {
        Some(ratio) => Some((otlp_sink().await?, ratio)),
        None => None,
    };
    let configure = move |_, b: RaftClusterBuilder<KeyValueStore>| {
        let b = b
            .state_machine(KeyValueStore::new())
            .preset(Preset::Production)
            .fsync(fsync)
            .max_log_entries(max_log_entries)
            .lease_reads(reads == Reads::Lease)
            .control_stream(control_stream)
            .remote_reads(iroh_raft::kv::remote_get);
        #[cfg(feature = "otel")]
        let b = match &otlp {
            Some((url, ratio)) => b.otlp_endpoint(url.clone()).otlp_sampling(*ratio),
            None => b,
        };
        b
    };
    let (nodes, dirs) = if mode == Mode::Memory {
        (start_memory_cluster(3, configure).await?.1, Vec::new())
    } else {
        let dirs: Vec<tempfile::TempDir> = (0..3)
            .map(|_| tempfile::tempdir())
            .collect::<Result<_, _>>()?;
        (start_local_cluster(&dirs, configure).await?, dirs)
    };
    let leader = wait_for_leader(&nodes).await?;
    for i in 0..READ_KEYS {
        leader.propose(command(usize::MAX, i as u64)).await?;
    }
    let target = if mode == Mode::Remote {
        let ticket = leader
            .ticket(TicketRole::Admin, Duration::from_secs(3600))
            .await?;
        Target::Remote(IrohRaftManagementClient::connect(&ticket).await?)
    } else {
        Target::Library(leader)
    };
    Ok((Cluster { nodes, _dirs: dirs }, target))
}

/// A `Set` whose postcard encoding is 128 bytes.
fn command(client: usize, seq: u64) -> KvCommand {
    KvCommand::Set {
        key: key(client, seq),
        value: "x".repeat(128 - 3 - key(client, seq).len()),
    }
}

fn key(client: usize, seq: u64) -> String {
    format!("c{:04}-{seq:012}", client % 10_000)
}

/// Runs `clients` closed-loop clients for `duration`.
async fn run_level(
    target: &Target,
    workload: Workload,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Sample> {
    let allocs = alloc_count::allocations();
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let target = target.clone();
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("valid precision");
            let mut seq = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                // Mixed: 9 reads, then a write, per 10 operations of a client.
                let write = match workload {
                    Workload::Write => true,
                    Workload::Read => false,
                    Workload::Mixed => seq % 10 == 9,
                };
                if write {
                    target.write(command(client, seq)).await?;
                } else {
                    let n = (client as u64 * 7919 + seq) % READ_KEYS as u64;
                    target.read(key(usize::MAX, n)).await?;
                }
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
    if total.is_empty() {
        bail!("no operation completed");
    }
    let ops = total.len();
    Ok(Sample {
        rate: ops as f64 / elapsed.as_secs_f64(),
        p50_ms: total.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: total.value_at_quantile(0.99) as f64 / 1000.0,
        allocs_per_op: (alloc_count::allocations() - allocs) as f64 / ops as f64,
    })
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
