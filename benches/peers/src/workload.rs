//! The closed-loop workload both systems run: `clients` tasks, each writing one 128-byte
//! key-value pair at a time and waiting for it to commit before the next, latencies in an
//! hdrhistogram (microseconds). The same shape as `examples/performance_comparison.rs`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use iroh_raft::{
    KeyValueStore, KvCommand, KvResponse, RaftCluster, mgmt::IrohRaftManagementClient,
};

/// Where a client's writes go.
#[derive(Clone)]
pub enum Target {
    /// A put through one of the shared gRPC channels to the etcd leader (boxed: the client is
    /// several hundred bytes).
    Etcd(Box<etcd_client::KvClient>),
    /// A proposal on the iroh-raft leader's handle, in this process.
    IrohRaft(RaftCluster<KeyValueStore>),
    /// A proposal through iroh-raft's management client (one QUIC connection to the leader).
    IrohRaftRemote(IrohRaftManagementClient),
}

impl Target {
    async fn write(&mut self, client: usize, seq: u64) -> anyhow::Result<()> {
        let (key, value) = key_value(client, seq);
        match self {
            Target::Etcd(kv) => {
                kv.put(key, value, None).await?;
            }
            Target::IrohRaft(node) => {
                node.propose(KvCommand::Set { key, value }).await?;
            }
            Target::IrohRaftRemote(client) => {
                let _: KvResponse = client.propose(&KvCommand::Set { key, value }).await?;
            }
        }
        Ok(())
    }
}

/// The key and value of `performance_comparison`'s command: a `KvCommand::Set` of these is 128
/// bytes in postcard (the key is 18 bytes, the value 107); etcd gets the same two strings.
fn key_value(client: usize, seq: u64) -> (String, String) {
    let key = format!("c{client:04}-{seq:012}");
    let value = "x".repeat(128 - 3 - key.len());
    (key, value)
}

/// One level's figures.
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `clients` closed-loop writers for `duration`; client `i` writes through
/// `targets[i % targets.len()]`. The rate counts every write over the time until the last one
/// returned, as `performance_comparison` does.
pub async fn run_level(
    targets: &[Target],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let mut target = targets[client % targets.len()].clone();
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let mut seq = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                target.write(client, seq).await?;
                hist.record(t.elapsed().as_micros() as u64)?;
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
        bail!("no write completed");
    }
    Ok(Figures {
        ops_per_sec: total.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: total.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: total.value_at_quantile(0.99) as f64 / 1000.0,
    })
}
