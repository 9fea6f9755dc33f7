//! What a backup costs: memory while saving and restoring a large state, and write throughput
//! while backups run. Prints two tables.
//!
//! ```sh
//! cargo run --release --example backup_benchmark                    # 200 MB state, 256 clients
//! cargo run --release --example backup_benchmark -- --state-mb 50 --secs 5 --rounds 3
//! ```
//!
//! **Memory** (one node, Production preset, fsync on): the node is filled with `--state-mb` of
//! 1 KiB values; then the peak resident memory (VmHWM, reset through `/proc/self/clear_refs`)
//! above the resident memory before each step: saving a backup to a file, writing a new data
//! dir from it (`backup::restore_into`, what `iroh-raft restore` does before the node starts),
//! and starting a node on that dir (which loads the state into a second state machine, so the
//! state's own size is expected there).
//!
//! **Throughput** (three nodes in this process, Production preset, fsync on): closed-loop
//! writes from `--clients` tasks for `--secs` seconds, alternately with no backup and with
//! backups taken `--gap-ms` apart (0: back to back; each read whole into a sink), `--rounds`
//! times; medians and their ratio.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use iroh_raft::{
    KeyValueStore, KvCommand, Preset, RaftCluster,
    actors::{Identity, LogDb, Member},
    backup, start_local_cluster,
};

#[derive(Parser, Debug)]
struct Args {
    /// Size of the state for the memory part, in MB of values.
    #[arg(long, default_value_t = 200)]
    state_mb: usize,
    /// Concurrent writers in the throughput part.
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// Seconds per throughput window.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Windows of each kind (medians are printed).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pause between backups in the throughput part (0: back to back, the worst case).
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
    /// In the throughput part, take snapshots only (`trigger_snapshot`, no backup read), to
    /// tell the snapshot's share of the cost from the backup's own.
    #[arg(long)]
    snapshots_only: bool,
    /// Skip the memory part.
    #[arg(long)]
    no_memory: bool,
    /// Skip the throughput part.
    #[arg(long)]
    no_throughput: bool,
}

const VALUE: usize = 1024;

/// (VmRSS, VmHWM) of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak (VmHWM) to the current resident size.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Runs `step`, returns its peak resident memory above what was resident before it.
async fn peak_during<F: std::future::Future<Output = T>, T>(step: F) -> (T, u64) {
    let (before, _) = memory();
    reset_peak();
    let out = step.await;
    let (_, peak) = memory();
    (out, peak.saturating_sub(before))
}

async fn fill(node: &RaftCluster<KeyValueStore>, bytes: usize) {
    let count = bytes / VALUE;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..128 {
        let (node, next) = (node.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count {
                    return;
                }
                let value: String =
                    std::iter::repeat_n((b'a' + (i % 26) as u8) as char, VALUE).collect();
                let cmd = KvCommand::Set {
                    key: format!("key-{i:09}"),
                    value,
                };
                node.propose(cmd).await.expect("fill write");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn memory_part(args: &Args) -> anyhow::Result<()> {
    let dirs = tempfile::tempdir()?;
    let (empty, _) = memory();
    let node = RaftCluster::builder()
        .node_id(1)
        .data_dir(dirs.path().join("a"))
        .state_machine_factory(KeyValueStore::new)
        .preset(Preset::Production)
        .build()
        .await?;
    let started = Instant::now();
    fill(&node, args.state_mb * 1_000_000).await;
    let filled = started.elapsed();
    // Settle the snapshots the fill triggered before measuring.
    node.trigger_snapshot().await?;
    let (with_state, _) = memory();
    let file = dirs.path().join("state.irbk");
    let out = tokio::io::BufWriter::new(tokio::fs::File::create(&file).await?);
    let (saved, save_peak) = peak_during(node.backup(out)).await;
    let saved = saved?;
    node.shutdown().await?;
    drop(node);

    let key = iroh::SecretKey::generate();
    let identity = Identity {
        node_id: 1,
        endpoint_id: key.public(),
    };
    let members = [Member {
        node_id: 1,
        addr: iroh::EndpointAddr::new(key.public()),
    }];
    let target = dirs.path().join("b");
    std::fs::create_dir_all(&target)?;
    let restore_file = file.clone();
    let restore_target = target.join(iroh_raft::DB_FILE);
    let (restored, write_peak) = peak_during(async move {
        tokio::task::spawn_blocking(move || {
            let mut db = LogDb::open(&restore_target)?;
            backup::restore_into(
                &mut db,
                identity,
                &members,
                (&restore_file, None),
                |_, _| {},
            )
            .map_err(anyhow::Error::from)
        })
        .await?
    })
    .await;
    restored?;
    let (started_node, start_peak) = peak_during(
        RaftCluster::builder()
            .node_id(1)
            .data_dir(&target)
            .secret_key(key)
            .state_machine_factory(KeyValueStore::new)
            .preset(Preset::Production)
            .build(),
    )
    .await;
    let started_node = started_node?;
    let held = started_node.query(|kv| kv.len()).await?;
    started_node.shutdown().await?;

    println!(
        "\nMemory: {} MB of values ({} keys, filled in {:.1?}), resident {:.0} MB empty, {:.0} MB with the state",
        args.state_mb,
        args.state_mb * 1_000_000 / VALUE,
        filled,
        mb(empty),
        mb(with_state)
    );
    println!(
        "backup file: {:.1} MB, index {}",
        mb(saved.file_size),
        saved.index
    );
    println!("| step | peak resident above the step's start |");
    println!("|---|---|");
    println!(
        "| save (`RaftCluster::backup` to a file) | {:.1} MB |",
        mb(save_peak)
    );
    println!(
        "| write the restored data dir (`backup::restore_into`) | {:.1} MB |",
        mb(write_peak)
    );
    println!(
        "| start a node on it ({held} keys loaded into a new state machine) | {:.1} MB |",
        mb(start_peak)
    );
    Ok(())
}

type Node = RaftCluster<KeyValueStore>;

/// Writes from `clients` tasks for `secs`; returns ops/s.
async fn window(leader: &Node, clients: usize, secs: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (leader, stop, done) = (leader.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let cmd = KvCommand::Set {
                    key: format!("c{c}-{}", seq % 64),
                    value: "x".repeat(128),
                };
                if leader.propose(cmd).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                seq += 1;
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let count = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    count as f64 / elapsed.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn throughput_part(args: &Args) -> anyhow::Result<()> {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let nodes = start_local_cluster(&dirs, |_, b| {
        b.state_machine_factory(KeyValueStore::new)
            .preset(Preset::Production)
    })
    .await?;
    let leader = loop {
        if let Some(id) = nodes[0].leader().await
            && let Some(n) = nodes.iter().find(|n| n.node_id() == id)
        {
            break n.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    window(&leader, args.clients, 2).await; // warm-up
    let (mut plain, mut during, mut backups, mut sizes) = (vec![], vec![], vec![], vec![]);
    for _ in 0..args.rounds {
        plain.push(window(&leader, args.clients, args.secs).await);
        let stop = Arc::new(AtomicBool::new(false));
        let taker = {
            let (leader, stop, gap) = (leader.clone(), stop.clone(), args.gap_ms);
            let snapshots_only = args.snapshots_only;
            tokio::spawn(async move {
                let (mut n, mut size) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    if snapshots_only {
                        if leader.trigger_snapshot().await.is_ok() {
                            n += 1;
                        }
                    } else if let Ok(saved) = leader.backup(tokio::io::sink()).await {
                        n += 1;
                        size = saved.file_size;
                    }
                    tokio::time::sleep(Duration::from_millis(gap)).await;
                }
                (n, size)
            })
        };
        during.push(window(&leader, args.clients, args.secs).await);
        stop.store(true, Ordering::Relaxed);
        let (n, size) = taker.await?;
        backups.push(n as f64);
        sizes.push(size as f64);
    }
    let (p, d) = (median(plain.clone()), median(during.clone()));
    println!(
        "\nThroughput: 3 nodes, Production (fsync on), {} clients, 128-byte writes, {} s windows, medians of {}",
        args.clients, args.secs, args.rounds
    );
    println!("| | writes/s | all windows |");
    println!("|---|---|---|");
    println!("| no backup | {p:.0} | {plain:.0?} |");
    let what = if args.snapshots_only {
        "snapshots"
    } else {
        "backups"
    };
    println!(
        "| {what}, {} ms apart | {d:.0} | {during:.0?} |",
        args.gap_ms
    );
    println!(
        "ratio {:.2}; {:.0} backups per window (median), last one {:.1} MB",
        d / p,
        median(backups),
        mb(median(sizes) as u64)
    );
    for n in nodes {
        n.shutdown().await?;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.no_memory {
        memory_part(&args).await?;
    }
    if !args.no_throughput {
        throughput_part(&args).await?;
    }
    Ok(())
}
