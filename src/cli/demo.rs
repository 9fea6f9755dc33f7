//! `iroh-raft demo`: a local cluster in one process on temp dirs and loopback endpoints (no
//! relays, no discovery), fsync on. Elects a leader, writes the built-in KV store, stops the
//! leader, waits for a new one and checks every acknowledged write on the survivors.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use iroh_raft::{KeyValueStore, KvCommand, NodeId, Preset, RaftCluster, Role, start_local_cluster};

type Node = RaftCluster<KeyValueStore>;

/// Options of `iroh-raft demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=9))]
    nodes: u64,
    /// KV writes to make before the leader is stopped.
    #[arg(long, default_value_t = 1000)]
    writes: usize,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dirs: Vec<tempfile::TempDir> = (0..args.nodes)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()
        .context("creating temp data dirs")?;
    println!(
        "starting {} nodes on loopback (data in temp dirs, fsync on)",
        args.nodes
    );
    let nodes = start_local_cluster(&dirs, |_, b| {
        b.state_machine(KeyValueStore::new())
            .preset(Preset::Development)
            .fsync(true)
    })
    .await?;
    for node in &nodes {
        println!("  node {} = {}", node.node_id(), node.peer_addr());
    }

    let started = Instant::now();
    let leader = wait_for_leader(&nodes, None).await?;
    println!(
        "node {} elected leader in {:.0?}",
        leader.node_id(),
        started.elapsed()
    );

    let started = Instant::now();
    write_all(&nodes, &leader, args.writes, args.concurrency).await?;
    let elapsed = started.elapsed();
    let status = leader.status().await?;
    println!(
        "wrote {} entries in {:.2?}: {:.0} writes/s (leader {}, term {}, commit index {})",
        args.writes,
        elapsed,
        args.writes as f64 / elapsed.as_secs_f64(),
        leader.node_id(),
        status.term,
        status.commit_index
    );

    let old = leader.node_id();
    println!("stopping leader {old}");
    let stopped = Instant::now();
    leader.shutdown().await?;
    let survivors: Vec<Node> = nodes.into_iter().filter(|n| n.node_id() != old).collect();
    let new_leader = wait_for_leader(&survivors, Some(old)).await?;
    let status = new_leader.status().await?;
    println!(
        "node {} elected leader in term {} ({:.0?} after the stop)",
        new_leader.node_id(),
        status.term,
        stopped.elapsed()
    );

    for node in &survivors {
        let (len, bad) = node
            .linearizable_query(move |kv: &KeyValueStore| {
                let bad = (0..args.writes)
                    .filter(|i| kv.get(&key(*i)) != Some(&value(*i)))
                    .count();
                (kv.len(), bad)
            })
            .await?;
        ensure!(
            bad == 0,
            "node {}: {bad} acknowledged writes missing or wrong",
            node.node_id()
        );
        println!(
            "node {}: all {} writes present ({len} keys)",
            node.node_id(),
            args.writes
        );
    }
    new_leader
        .propose(KvCommand::Set {
            key: "after-failover".into(),
            value: "ok".into(),
        })
        .await?;
    println!("writes continue under the new leader");

    // Concurrently: each endpoint may wait ~3 s for close acknowledgements from the stopped node.
    let mut stops = tokio::task::JoinSet::new();
    for node in survivors {
        stops.spawn(async move { node.shutdown().await });
    }
    while let Some(stopped) = stops.join_next().await {
        stopped.context("shutdown task")??;
    }
    println!("demo passed");
    Ok(())
}

fn key(i: usize) -> String {
    format!("key-{i:06}")
}

fn value(i: usize) -> String {
    format!("value-{i}")
}

/// Writes `count` keys through all nodes in turn (followers forward to the leader), at most
/// `concurrency` at a time.
async fn write_all(
    nodes: &[Node],
    leader: &Node,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < count || !tasks.is_empty() {
        while next < count && tasks.len() < concurrency.max(1) {
            // Most writes go to the leader; every tenth through a follower to show forwarding.
            let node = if next % 10 == 9 {
                nodes[next % nodes.len()].clone()
            } else {
                leader.clone()
            };
            let i = next;
            tasks.spawn(async move {
                node.propose(KvCommand::Set {
                    key: key(i),
                    value: value(i),
                })
                .await
            });
            next += 1;
        }
        if let Some(done) = tasks.join_next().await {
            done.context("write task")?.context("write")?;
        }
    }
    Ok(())
}

/// Waits (up to 30 s) until one node leads and all the given nodes agree; `not` excludes a
/// stopped former leader.
async fn wait_for_leader(nodes: &[Node], not: Option<NodeId>) -> anyhow::Result<Node> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = nodes[0].subscribe().await?;
    loop {
        let mut statuses = Vec::new();
        for n in nodes {
            statuses.push(n.status().await?);
        }
        if let Some(l) = statuses
            .iter()
            .find(|s| s.role == Role::Leader && Some(s.node_id) != not)
            && statuses
                .iter()
                .all(|s| s.leader == Some(l.node_id) && s.term == l.term)
        {
            let node = nodes
                .iter()
                .find(|n| n.node_id() == l.node_id)
                .expect("listed");
            return Ok(node.clone());
        }
        if Instant::now() > deadline {
            bail!("no leader after 30 s");
        }
        // Wake on the next cluster event (or re-check after a heartbeat-ish pause).
        let _ = tokio::time::timeout(Duration::from_millis(100), events.next()).await;
    }
}
