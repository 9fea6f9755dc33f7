//! etcd and iroh-raft side by side over the same emulated network, in one run.
//!
//! For each (nodes, round trip, loss) and each system, a fresh lab of Linux network namespaces
//! (`tests/network/lab.rs`): one host per member on a router, every link between two hosts with a
//! one-way delay of half the round trip, a tenth of that as jitter, and the loss asked for (a
//! userspace NFQUEUE emulator: these kernels have no netem). A round trip of 0 is the same lab
//! with no emulation. On it, one system:
//!
//! - **etcd**: one `/usr/bin/etcd` process per host (`ip netns exec`), data dirs in a temp dir,
//!   etcd's default durability (WAL fsynced before a put is acknowledged) and timeouts (heartbeat
//!   100 ms, election 1 s). Once every member names the same leader and a put commits, a tokio
//!   runtime built inside the **leader's** namespace drives it through `etcd-client` over
//!   `--channels` gRPC channels to the leader's client URL (loopback inside that namespace).
//! - **iroh-raft**: one in-process node per host (`examples/real_network/netcluster.rs`: each
//!   node's runtime inside its host's namespace, `Preset::Production`, fsync on), proposals on the
//!   leader's `RaftCluster` handle (library mode: also next to the leader, without a socket).
//!   QUIC congestion control is the library's default, Cubic; `--systems` may add
//!   `iroh-raft-bbr`, the same nodes with BBR (`RaftClusterBuilder::congestion_control`), which
//!   does not read random loss as congestion.
//!
//! Both get the same closed-loop workload (`src/workload.rs`): N clients, each writing one
//! key-value pair (the strings of a 128-byte `KvCommand::Set`: 18-byte key, 107-byte value) and
//! waiting for it to commit; per level `--warmup` seconds unmeasured, then `--seconds` measured.
//! The systems' order alternates from one setup (and run) to the next. Each row gives every
//! system's ops/s, p50 and p99 (medians over `--runs`), the CPU used while measuring (`cpu s/m`:
//! cores used by the system under test — this process, which holds the clients, the link
//! emulator and, for iroh-raft, the nodes, plus etcd's members — over cores busy on the whole
//! machine), and each iroh-raft system's ops/s over etcd's. Then one client's p50 as a multiple
//! of (round trip + fdatasync p50): a lone write needs one round trip to a quorum and a durable
//! append on each side of it, which overlap. Last, notes: failed runs, leader changes during a
//! load, packets the emulator's queue could not hold.
//!
//! Run as root (namespaces, iptables); `run-network.sh` installs etcd, protoc, iproute2 and
//! iptables when missing:
//!
//! ```sh
//! benches/peers/run-network.sh --nodes 3 --rtt-ms 0,50 --loss 0 --seconds 3 --warmup 1
//! benches/peers/run-network.sh        # 3,5 nodes; 0,10,50,100 ms; 0,1 % loss; 1,64,256 clients
//! ```

#[allow(dead_code)]
#[path = "../../../../examples/performance_comparison/baseline.rs"]
mod baseline;
#[allow(dead_code)]
#[path = "../etcd.rs"]
mod etcd;
#[path = "../../../../tests/network/lab.rs"]
mod lab;
#[allow(dead_code)]
#[path = "../../../../examples/real_network/netcluster.rs"]
mod netcluster;
#[allow(dead_code)]
#[path = "../workload.rs"]
mod workload;

use std::{
    fmt,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use clap::{Parser, ValueEnum};
use etcd_client::Client;
use iroh_raft::net::CongestionControl;
use tokio::runtime::Runtime;

use crate::{
    etcd::{ETCD_CLIENT, EtcdCluster, MemberSpec},
    lab::{Host, Lab, Link},
    netcluster::NetCluster,
    workload::{Figures, Target, run_level},
};

/// The ports every etcd member listens on, on its host's address.
const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
/// How long a level may go on past its time (the last writes returning) before it is abandoned.
const LEVEL_GRACE: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
struct Args {
    /// Systems to run, comma separated: etcd, iroh-raft (the library's default congestion
    /// controller, Cubic), iroh-raft-bbr (the same with BBR: `congestion_control(Bbr)`).
    #[arg(long, value_delimiter = ',', default_value = "etcd,iroh-raft")]
    systems: Vec<System>,
    /// Cluster sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "3,5")]
    nodes: Vec<usize>,
    /// Round trips between any two members in milliseconds, comma separated (0: no emulation).
    #[arg(long, value_delimiter = ',', default_value = "0,10,50,100")]
    rtt_ms: Vec<u64>,
    /// Packet loss on every link in percent, comma separated (a round trip of 0 runs loss 0 only).
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
    /// Runs of every setup and system, each on a fresh lab and cluster; figures are medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// gRPC channels (HTTP/2 connections to the etcd leader) the etcd clients share.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum System {
    Etcd,
    IrohRaft,
    IrohRaftBbr,
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            System::Etcd => "etcd",
            System::IrohRaft => "iroh-raft",
            System::IrohRaftBbr => "iroh-raft-bbr",
        })
    }
}

/// What the load needs, owned (it moves to a thread inside a namespace).
#[derive(Clone)]
struct Load {
    clients: Vec<usize>,
    warmup: Duration,
    seconds: Duration,
    channels: usize,
}

/// One level's figures and the CPU used while it was measured.
#[derive(Clone, Copy, Debug)]
struct Level {
    figures: Figures,
    /// Cores used by the system under test: this process (clients, link emulator, iroh-raft's
    /// nodes) plus etcd's members.
    cores: f64,
    /// Cores busy on the whole machine (whoever used them).
    machine: f64,
}

/// One system on one setup: a level per `--clients` entry, and anything odd seen.
struct SystemRun {
    levels: Vec<Level>,
    notes: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.runs == 0
        || args.seconds == 0
        || args.channels == 0
        || args.clients.contains(&0)
        || args.nodes.contains(&0)
    {
        bail!("--runs, --seconds, --channels and every --clients and --nodes must be at least 1");
    }
    if args.loss.iter().any(|l| !(0.0..=100.0).contains(l)) {
        bail!("--loss is a percentage, 0 to 100");
    }
    if !rustix::process::geteuid().is_root() {
        bail!("needs root: network namespaces and iptables (run-network.sh runs it with sudo)");
    }
    let rt = Runtime::new()?;
    let load = Load {
        clients: args.clients.clone(),
        warmup: Duration::from_secs(args.warmup),
        seconds: Duration::from_secs(args.seconds),
        channels: args.channels,
    };

    if args.systems.contains(&System::Etcd) {
        println!(
            "etcd {} ({}), {ETCD_CLIENT}, {} channels to the leader, from the leader's namespace",
            etcd::binary_version(&args.etcd_bin)?,
            args.etcd_bin.display(),
            args.channels,
        );
    }
    if args.systems.contains(&System::IrohRaft) {
        println!(
            "iroh-raft library mode on the leader's handle, Preset::Production, fsync on, \
             QUIC congestion control Cubic (the default)"
        );
    }
    if args.systems.contains(&System::IrohRaftBbr) {
        println!("iroh-raft-bbr the same with QUIC congestion control BBR");
    }
    let scratch = tempfile::tempdir()?;
    let floor = rt.block_on(baseline::measure(scratch.path()))?;
    drop(scratch);
    println!(
        "floor: fdatasync p50 {:.3} ms, loopback UDP round trip p50 {:.3} ms; \
         {} s measured after {} s warm-up per level, {} run(s), {} cores",
        ms(floor.fdatasync),
        ms(floor.round_trip),
        args.seconds,
        args.warmup,
        args.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!();
    print_header(&args.systems);

    let started = Instant::now();
    let mut notes = Vec::new();
    let mut floor_rows = Vec::new();
    let mut setup = 0usize;
    for &nodes in &args.nodes {
        for &rtt_ms in &args.rtt_ms {
            let losses: &[f64] = if rtt_ms == 0 { &[0.0] } else { &args.loss };
            for &loss in losses {
                // Per system (in `args.systems` order): the levels of every run that worked.
                let mut runs: Vec<Vec<Vec<Level>>> = vec![Vec::new(); args.systems.len()];
                for run in 0..args.runs {
                    let mut order: Vec<usize> = (0..args.systems.len()).collect();
                    if (setup + run) % 2 == 1 {
                        order.reverse();
                    }
                    for i in order {
                        let system = args.systems[i];
                        let label = format!(
                            "{nodes} nodes, rtt {rtt_ms} ms, loss {loss}%, {system}, run {}",
                            run + 1
                        );
                        eprintln!("{label}");
                        match run_on_lab(&rt, &args, &load, system, nodes, rtt_ms, loss) {
                            Ok((result, lab_notes)) => {
                                notes
                                    .extend(lab_notes.into_iter().map(|n| format!("{label}: {n}")));
                                runs[i].push(result.levels);
                                notes.extend(
                                    result.notes.into_iter().map(|n| format!("{label}: {n}")),
                                );
                            }
                            Err(e) => {
                                eprintln!("  failed: {e:#}");
                                notes.push(format!("{label}: failed: {e:#}"));
                            }
                        }
                    }
                }
                let medians: Vec<Vec<Option<Level>>> = runs
                    .iter()
                    .map(|r| {
                        (0..args.clients.len())
                            .map(|i| median_level(r, i))
                            .collect()
                    })
                    .collect();
                for (i, &clients) in args.clients.iter().enumerate() {
                    let cells: Vec<Option<Level>> = medians.iter().map(|m| m[i]).collect();
                    print_row(&args.systems, nodes, rtt_ms, loss, clients, &cells);
                }
                if let Some(one) = args.clients.iter().position(|&c| c == 1) {
                    let floor_ms = rtt_ms as f64 + ms(floor.fdatasync);
                    let multiples: Vec<Option<f64>> = medians
                        .iter()
                        .map(|m| m[one].map(|l| l.figures.p50_ms / floor_ms))
                        .collect();
                    floor_rows.push((nodes, rtt_ms, loss, floor_ms, multiples));
                }
                setup += 1;
            }
        }
    }

    if !floor_rows.is_empty() {
        println!();
        println!(
            "one client's p50 as a multiple of (rtt + fdatasync p50 {:.2} ms):",
            ms(floor.fdatasync)
        );
        print!(
            "{:>5} {:>6} {:>5} {:>9}",
            "nodes", "rtt_ms", "loss%", "floor_ms"
        );
        for s in &args.systems {
            print!(" {:>10}", s.to_string());
        }
        println!();
        for (nodes, rtt_ms, loss, floor_ms, multiples) in &floor_rows {
            print!("{nodes:>5} {rtt_ms:>6} {loss:>5.1} {floor_ms:>9.2}");
            for m in multiples {
                print!(" {:>10}", m.map_or("-".to_string(), |m| format!("{m:.2}")));
            }
            println!();
        }
    }
    println!();
    if notes.is_empty() {
        println!("notes: none (no failure, leader change or emulator queue overflow)");
    } else {
        println!("notes:");
        for n in &notes {
            println!("  {n}");
        }
    }
    println!("wall time {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A fresh lab with `nodes` hosts and the links asked for, `system` on it, then the lab torn
/// down. Returns the run and notes about the emulator.
fn run_on_lab(
    rt: &Runtime,
    args: &Args,
    load: &Load,
    system: System,
    nodes: usize,
    rtt_ms: u64,
    loss: f64,
) -> anyhow::Result<(SystemRun, Vec<String>)> {
    let mut lab = Lab::new();
    let hosts: Vec<Host> = (1..=nodes).map(|i| lab.host(&format!("n{i}"))).collect();
    if rtt_ms > 0 {
        let one_way = Duration::from_millis(rtt_ms) / 2;
        lab.set_all_links(Link {
            delay: one_way,
            jitter: one_way / 10,
            loss: loss / 100.0,
        });
    }
    let started = Instant::now();
    let result = match system {
        System::Etcd => run_etcd(rt, args, load, &hosts),
        System::IrohRaft => run_iroh_raft(rt, load, &hosts, CongestionControl::Cubic),
        System::IrohRaftBbr => run_iroh_raft(rt, load, &hosts, CongestionControl::Bbr),
    };
    let stats = lab.emulator_stats();
    drop(lab);
    eprintln!(
        "  emulator: delayed {} dropped {} queue-full {} cpu {:.2} s; {:.1} s in all",
        stats.delayed,
        stats.dropped,
        stats.queue_full,
        stats.cpu_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let mut notes = Vec::new();
    if stats.queue_full > 0 {
        notes.push(format!(
            "the emulator's queue overflowed: {} packets dropped by the kernel",
            stats.queue_full
        ));
    }
    Ok((result?, notes))
}

fn etcd_client_url(host: &Host) -> String {
    format!("http://{}:{ETCD_CLIENT_PORT}", host.ip)
}

/// One etcd member per host; the load from inside the leader's namespace.
fn run_etcd(rt: &Runtime, args: &Args, load: &Load, hosts: &[Host]) -> anyhow::Result<SystemRun> {
    let specs = hosts
        .iter()
        .map(|h| MemberSpec {
            name: h.name.clone(),
            client_url: etcd_client_url(h),
            peer_url: format!("http://{}:{ETCD_PEER_PORT}", h.ip),
            command: h.command(&args.etcd_bin),
        })
        .collect();
    // Spawned from this (the main) thread: the members' parent-death signal follows it.
    let cluster = EtcdCluster::start_members(specs)?;
    let pids = cluster.pids();
    // The host namespaces are reachable from each other only: probe from the first one.
    let (cluster, health) = hosts[0].run_in(move || {
        let mut cluster = cluster;
        let health = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cluster.wait_healthy()));
        (cluster, health)
    });
    let health = health?; // dropping the cluster kills its members
    let leader = hosts
        .iter()
        .find(|h| etcd_client_url(h) == health.leader_url)
        .with_context(|| format!("etcd leader {} is none of the hosts", health.leader_url))?
        .clone();
    eprintln!(
        "  etcd {}: {} members, leader {} ({})",
        health.server_version,
        hosts.len(),
        leader.name,
        health.leader_url
    );
    let load = load.clone();
    let url = health.leader_url.clone();
    let result = leader.run_in(move || -> anyhow::Result<SystemRun> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(etcd_load(load, url, pids))
    });
    let stopped = rt.block_on(cluster.stop());
    let run = result?;
    stopped?;
    Ok(run)
}

async fn etcd_load(load: Load, url: String, pids: Vec<u32>) -> anyhow::Result<SystemRun> {
    let mut targets = Vec::with_capacity(load.channels);
    for _ in 0..load.channels {
        let client = Client::connect([&url], None).await?;
        targets.push(Target::Etcd(Box::new(client.kv_client())));
    }
    let mut status = Client::connect([&url], None).await?;
    let before = status.status().await?;
    let levels = run_levels(&load, &targets, &pids).await?;
    let after = status.status().await?;
    let mut notes = Vec::new();
    if after.raft_term() != before.raft_term() || after.leader() != before.leader() {
        notes.push(format!(
            "etcd changed leader during the load (term {} -> {}, leader {:x} -> {:x})",
            before.raft_term(),
            after.raft_term(),
            before.leader(),
            after.leader()
        ));
    }
    Ok(SystemRun { levels, notes })
}

/// One in-process iroh-raft node per host; the load on the leader's handle.
fn run_iroh_raft(
    rt: &Runtime,
    load: &Load,
    hosts: &[Host],
    cc: CongestionControl,
) -> anyhow::Result<SystemRun> {
    let cluster = NetCluster::start_with(hosts, cc)?;
    let result = (|| -> anyhow::Result<SystemRun> {
        let leader = cluster
            .leader()
            .context("iroh-raft: no leader within 30 s")?;
        eprintln!(
            "  iroh-raft: {} nodes, leader n{}",
            hosts.len(),
            leader.node_id()
        );
        rt.block_on(async {
            let before = leader.status().await?;
            let target = Target::IrohRaft(leader.clone());
            let levels = run_levels(load, std::slice::from_ref(&target), &[]).await?;
            let after = leader.status().await?;
            let mut notes = Vec::new();
            if after.term != before.term || after.leader != before.leader {
                notes.push(format!(
                    "iroh-raft changed leader during the load (term {} -> {}, leader {:?} -> {:?})",
                    before.term, after.term, before.leader, after.leader
                ));
            }
            Ok(SystemRun { levels, notes })
        })
    })();
    cluster.shutdown();
    result
}

/// Every level with its warm-up; CPU measured over the measured part (`pids`: processes of the
/// system besides this one).
async fn run_levels(load: &Load, targets: &[Target], pids: &[u32]) -> anyhow::Result<Vec<Level>> {
    let mut levels = Vec::new();
    for &clients in &load.clients {
        if !load.warmup.is_zero() {
            level_within(targets, clients, load.warmup).await?;
        }
        let before = CpuSnapshot::take(pids);
        let figures = level_within(targets, clients, load.seconds).await?;
        let (cores, machine) = CpuSnapshot::take(pids).since(&before);
        eprintln!(
            "    {clients:>4} clients: {:>8.0} ops/s p50 {:>7.2} ms p99 {:>7.2} ms, cpu {cores:.2} of {machine:.2} busy cores",
            figures.ops_per_sec, figures.p50_ms, figures.p99_ms
        );
        levels.push(Level {
            figures,
            cores,
            machine,
        });
    }
    Ok(levels)
}

/// One level, abandoned if it goes on `LEVEL_GRACE` past its time (a stalled cluster).
async fn level_within(
    targets: &[Target],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    tokio::time::timeout(
        duration + LEVEL_GRACE,
        run_level(targets, clients, duration),
    )
    .await
    .map_err(|_| {
        anyhow!("{clients} clients: writes still pending {LEVEL_GRACE:?} after the level's end")
    })?
}

/// CPU counters at one instant: this process and `pids`, and the whole machine.
struct CpuSnapshot {
    at: Instant,
    /// utime + stime of this process and of `pids`, in clock ticks.
    process_ticks: u64,
    /// The machine's busy and total ticks, over all CPUs.
    busy: u64,
    total: u64,
    cpus: usize,
}

impl CpuSnapshot {
    fn take(pids: &[u32]) -> CpuSnapshot {
        let process_ticks = process_ticks("self")
            + pids
                .iter()
                .map(|p| process_ticks(&p.to_string()))
                .sum::<u64>();
        let (busy, total, cpus) = machine_ticks();
        CpuSnapshot {
            at: Instant::now(),
            process_ticks,
            busy,
            total,
            cpus,
        }
    }

    /// (cores used by the processes, cores busy on the machine) since `earlier`.
    fn since(&self, earlier: &CpuSnapshot) -> (f64, f64) {
        let wall = (self.at - earlier.at).as_secs_f64().max(1e-9);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cores = self.process_ticks.saturating_sub(earlier.process_ticks) as f64 / hz / wall;
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        let machine = self.busy.saturating_sub(earlier.busy) as f64 / total * self.cpus as f64;
        (cores, machine)
    }
}

/// utime + stime of `/proc/{pid}/stat` in clock ticks (0 once the process is gone).
fn process_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// (busy, total, cpus) from `/proc/stat`: idle and iowait are not busy.
fn machine_ticks() -> (u64, u64, usize) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut lines = stat.lines();
    let values: Vec<u64> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8) // user nice system idle iowait irq softirq steal (guest is within user)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    let cpus = lines
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    (total.saturating_sub(idle), total, cpus.max(1))
}

/// The systems whose ops/s are given over etcd's in the last columns (none without etcd).
fn ratio_systems(systems: &[System]) -> Vec<System> {
    if !systems.contains(&System::Etcd) {
        return Vec::new();
    }
    systems
        .iter()
        .copied()
        .filter(|&s| s != System::Etcd)
        .collect()
}

fn ratio_width(s: System) -> usize {
    s.to_string().len().max(9)
}

fn print_header(systems: &[System]) {
    let ratios = ratio_systems(systems);
    print!("{:27}", "");
    for s in systems {
        print!("| {:<38}", s.to_string());
    }
    if ratios.is_empty() {
        println!("|");
    } else {
        println!("| ops ours/etcd");
    }
    print!(
        "{:>5} {:>6} {:>5} {:>7} ",
        "nodes", "rtt_ms", "loss%", "clients"
    );
    for _ in systems {
        print!(
            "| {:>9} {:>8} {:>8} {:>9} ",
            "ops/s", "p50_ms", "p99_ms", "cpu s/m"
        );
    }
    if !ratios.is_empty() {
        print!("|");
        for &s in &ratios {
            print!(" {:>w$}", s.to_string(), w = ratio_width(s));
        }
    }
    println!();
}

fn print_row(
    systems: &[System],
    nodes: usize,
    rtt_ms: u64,
    loss: f64,
    clients: usize,
    cells: &[Option<Level>],
) {
    print!("{nodes:>5} {rtt_ms:>6} {loss:>5.1} {clients:>7} ");
    for cell in cells {
        match cell {
            Some(l) => print!(
                "| {:>9.0} {:>8.2} {:>8.2} {:>9} ",
                l.figures.ops_per_sec,
                l.figures.p50_ms,
                l.figures.p99_ms,
                format!("{:.1}/{:.1}", l.cores, l.machine)
            ),
            None => print!("| {:>9} {:>8} {:>8} {:>9} ", "failed", "-", "-", "-"),
        }
    }
    let find = |s: System| systems.iter().position(|&x| x == s).and_then(|i| cells[i]);
    let ratios = ratio_systems(systems);
    if !ratios.is_empty() {
        print!("|");
        for &s in &ratios {
            let ratio = match (find(s), find(System::Etcd)) {
                (Some(ours), Some(etcd)) => format!(
                    "{:.2}x",
                    ours.figures.ops_per_sec / etcd.figures.ops_per_sec
                ),
                _ => "-".to_string(),
            };
            print!(" {ratio:>w$}", w = ratio_width(s));
        }
    }
    println!();
}

/// The medians over runs of level `i`, each figure on its own (`None` if no run worked).
fn median_level(runs: &[Vec<Level>], i: usize) -> Option<Level> {
    if runs.is_empty() {
        return None;
    }
    let m = |f: &dyn Fn(&Level) -> f64| median(runs.iter().map(|r| f(&r[i])));
    Some(Level {
        figures: Figures {
            ops_per_sec: m(&|l| l.figures.ops_per_sec),
            p50_ms: m(&|l| l.figures.p50_ms),
            p99_ms: m(&|l| l.figures.p99_ms),
        },
        cores: m(&|l| l.cores),
        machine: m(&|l| l.machine),
    })
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
