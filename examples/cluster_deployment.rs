//! A deployment of local node processes driven by `ClusterManager`: bootstrap 3 `iroh-raft
//! node` processes from a config, roll them onto "another" binary (the same one under another
//! name) one at a time under a continuous write load, scale to 5 and back to 3, and print how
//! long writes were unavailable and that every acknowledged write is still there. Finishes on
//! its own (about 30 s in a debug build) and stops every process it started.
//!
//! The nodes run the `iroh-raft` binary, so build it first:
//!
//! ```sh
//! cargo build --bin iroh-raft && cargo run --example cluster_deployment
//! cargo run --example cluster_deployment -- --preset testing --writers 8
//! ```
//!
//! The same steps from the shell: `iroh-raft cluster -f cluster.toml up | status |
//! rolling-update --binary PATH | add ID | remove ID | down`.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use iroh_raft::{
    KvCommand, KvResponse, Ticket,
    deployment::{ClusterManager, ClusterStatus, DeploymentConfig, NodeConfig},
    mgmt::{ClientOptions, IrohRaftManagementClient},
};

#[derive(Parser, Debug)]
struct Args {
    /// The nodes' preset: production (fsync on), development or testing.
    #[arg(long, default_value = "production")]
    preset: String,
    /// Closed-loop writers during the whole run.
    #[arg(long, default_value_t = 4)]
    writers: u64,
    /// The `iroh-raft` binary (default: the one beside this example's build).
    #[arg(long)]
    binary: Option<PathBuf>,
}

/// A port nothing listens on, UDP and TCP.
fn free_port() -> anyhow::Result<u16> {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

fn node(id: u64, dir: &Path) -> anyhow::Result<NodeConfig> {
    let bind = format!("127.0.0.1:{}", free_port()?).parse()?;
    let metrics = format!("127.0.0.1:{}", free_port()?).parse()?;
    Ok(NodeConfig::new(id, bind, dir.join(format!("node-{id}"))).metrics_addr(metrics))
}

/// The deployment file an operator would write.
fn write_config(dir: &Path, args: &Args) -> anyhow::Result<PathBuf> {
    let mut text = format!(
        "cluster_name = \"example\"\nenvironment = \"{}\"\n",
        args.preset
    );
    if let Some(b) = &args.binary {
        text += &format!("binary = \"{}\"\n", b.display());
    }
    text += "\n[rollout]\nnode_timeout = \"60s\"\nmax_lag = 100\n\n";
    for id in 1..=3 {
        let n = node(id, dir)?;
        text += &format!(
            "[[nodes]]\nid = {id}\nbind = \"{}\"\ndata_dir = \"{}\"\nmetrics_addr = \"{}\"\n\n",
            n.bind,
            n.data_dir.display(),
            n.metrics_addr.map(|m| m.to_string()).unwrap_or_default()
        );
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Writers that each write a new key at a time, recording when each write was acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(Instant, u64)>>>,
    unknown: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    client: IrohRaftManagementClient,
}

impl Load {
    async fn start(ticket: &Ticket, writers: u64) -> anyhow::Result<Self> {
        let options = ClientOptions::default().timeout(Duration::from_secs(5));
        let client =
            IrohRaftManagementClient::new(ticket.members.clone(), Some(ticket), options).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let (unknown, next) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let client = client.clone();
            let (stop, acked, unknown, next) = (
                stop.clone(),
                Arc::clone(&acked),
                unknown.clone(),
                next.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let set = KvCommand::Set {
                        key: format!("k{i}"),
                        value: format!("v{i}"),
                    };
                    match client.propose::<_, KvResponse>(&set).await {
                        Ok(_) => acked.lock().unwrap().push((Instant::now(), i)),
                        // Not acknowledged: it may or may not have been applied.
                        Err(_) => {
                            unknown.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        Ok(Self {
            stop,
            acked,
            unknown,
            tasks,
            client,
        })
    }

    /// Acknowledged writes so far, and the longest time without one since `since`.
    fn window(&self, since: Instant) -> (usize, Duration) {
        let mut at: Vec<Instant> = self
            .acked
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t >= since)
            .collect();
        at.sort();
        at.push(Instant::now());
        let longest = at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        (at.len() - 1, longest)
    }

    /// Stops the writers and reads every acknowledged key back (linearizable reads).
    async fn finish(self) -> anyhow::Result<(usize, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await?;
        }
        let keys: Vec<u64> = self.acked.lock().unwrap().iter().map(|(_, i)| *i).collect();
        for chunk in keys.chunks(64) {
            let reads = chunk.iter().map(|i| {
                let client = self.client.clone();
                async move {
                    (
                        *i,
                        client
                            .read::<String, Option<String>>(&format!("k{i}"))
                            .await,
                    )
                }
            });
            for (i, value) in futures::future::join_all(reads).await {
                anyhow::ensure!(
                    value? == Some(format!("v{i}")),
                    "acknowledged k{i} was lost"
                );
            }
        }
        self.client.close().await;
        Ok((keys.len(), self.unknown.load(Ordering::Relaxed)))
    }
}

fn show(status: &ClusterStatus) {
    let nodes: Vec<String> = status
        .nodes
        .iter()
        .map(|n| {
            let role = match (n.leader, &n.member) {
                (true, _) => "leader",
                (false, Some(r)) => r.as_str(),
                (false, None) => "-",
            };
            let ready = if n.ready == Some(true) {
                "ready"
            } else {
                "NOT READY"
            };
            format!("{}:{role}:{ready}", n.id)
        })
        .collect();
    println!("  members: {}", nodes.join("  "));
}

async fn run(m: &mut ClusterManager, dir: &Path, args: &Args) -> anyhow::Result<()> {
    let t = Instant::now();
    m.bootstrap().await?;
    println!("bootstrap of 3 processes: {:.1?}", t.elapsed());
    show(&m.status().await?);
    let ticket = m
        .admin_ticket()
        .context("no admin ticket after bootstrap")?;
    let load = Load::start(&ticket, args.writers).await?;

    // The "new" binary: the same file under another name.
    let next = dir.join("iroh-raft-next");
    std::os::unix::fs::symlink(&m.config().binary, &next)?;
    let since = Instant::now();
    let report = m.rolling_update(&next).await?;
    let (acked, longest) = load.window(since);
    let steps: Vec<String> = report
        .durations
        .iter()
        .map(|(id, d)| format!("node {id} {d:.1?}"))
        .collect();
    println!(
        "rolling update (followers first, the leader last): {}",
        steps.join(", ")
    );
    println!(
        "  under {} writers: {acked} writes acknowledged, longest time without one {longest:.0?}",
        args.writers
    );

    let since = Instant::now();
    for id in [4, 5] {
        m.add_node(node(id, dir)?).await?;
    }
    let (acked, longest) = load.window(since);
    println!(
        "scaled to 5 in {:.1?}: {acked} writes acknowledged, longest gap {longest:.0?}",
        since.elapsed()
    );
    show(&m.status().await?);

    let since = Instant::now();
    for id in [4, 5] {
        m.remove_node(id).await?;
    }
    let (acked, longest) = load.window(since);
    println!(
        "back to 3 in {:.1?}: {acked} writes acknowledged, longest gap {longest:.0?}",
        since.elapsed()
    );
    show(&m.status().await?);

    let (acked, unknown) = load.finish().await?;
    println!(
        "{acked} writes acknowledged in all, every one read back; {unknown} not acknowledged \
         (outcome unknown to the writer)"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let config = DeploymentConfig::load(write_config(dir.path(), &args)?).context(
        "the nodes run the iroh-raft binary: build it first (cargo build --bin iroh-raft) or \
         pass --binary",
    )?;
    let mut manager = ClusterManager::new(config)
        .await?
        .on_progress(|p| eprintln!("  [node {}] {}", p.node.unwrap_or(0), p.message));
    let outcome = run(&mut manager, dir.path(), &args).await;
    // Whatever happened, no process is left behind.
    manager.stop().await?;
    println!("stopped every node");
    outcome
}
