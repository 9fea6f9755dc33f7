//! The management API from outside a cluster: start a local cluster, connect a remote client
//! with an admin ticket, print status, add a member, transfer leadership, and stream events
//! while the leader is killed.
//!
//! Run: `cargo run --example management_api_example`

use std::time::Duration;

use anyhow::Context;
use iroh_raft::{
    EventItem, KeyValueStore, KvCommand, KvResponse, Preset, RaftCluster, TicketRole,
    mgmt::IrohRaftManagementClient, start_local_cluster,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dirs: Vec<tempfile::TempDir> = (0..4)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    // Three founding members; the fourth joins later.
    let mut nodes = start_local_cluster(&dirs[..3], |_, b| {
        b.state_machine(KeyValueStore::new())
            .preset(Preset::Development)
            .remote_reads(iroh_raft::kv::remote_get)
    })
    .await?;

    // A remote client: admitted by an admin ticket any member can mint.
    let ticket = nodes[0]
        .ticket(TicketRole::Admin, Duration::from_secs(3600))
        .await?;
    println!("admin ticket: {ticket}");
    let client = IrohRaftManagementClient::connect(&ticket).await?;
    let status = wait_for_leader(&client).await?;
    println!(
        "leader {} in term {}, commit index {}",
        status.leader, status.term, status.commit_index
    );
    for m in &status.members {
        println!("  member {} ({}) lag {}", m.id, m.role, m.lag);
    }

    // Writes and linearizable reads through the client.
    let set = KvCommand::Set {
        key: "greeting".into(),
        value: "hello".into(),
    };
    let _: KvResponse = client.propose(&set).await?;
    let value: Option<String> = client.read(&"greeting".to_string()).await?;
    println!("greeting = {value:?}");

    // Add a member: a fourth node started to join, brought in as learner, then voter.
    let joiner = RaftCluster::builder()
        .node_id(4)
        .data_dir(dirs[3].path())
        .state_machine(KeyValueStore::new())
        .preset(Preset::Development)
        .peers(nodes.iter().map(|n| (n.node_id(), n.peer_addr())))
        .joining()
        .build()
        .await?;
    let index = client.join(4, &joiner.peer_addr().0, 100).await?;
    println!("node 4 joined (index {index})");
    nodes.push(joiner);

    // Hand leadership to node 4.
    let (leader, took) = client.transfer_leader(Some(4)).await?;
    println!("leadership moved to node {leader} in {took:.0?}");

    // Watch events while the leader is killed.
    let mut events = client.subscribe().await?;
    let leader_node = nodes
        .iter()
        .position(|n| n.node_id() == leader)
        .context("leader handle")?;
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(Ok(item)) = events.next().await {
            match item {
                EventItem::Event(ev) => {
                    let done = matches!(ev, iroh_raft::ClusterEvent::LeaderElected { .. });
                    seen.push(format!("{ev:?}"));
                    if done {
                        break;
                    }
                }
                EventItem::Missed(n) => seen.push(format!("missed {n} events")),
            }
        }
        seen
    });
    println!("stopping leader {leader}");
    nodes.remove(leader_node).shutdown().await?;
    let seen = tokio::time::timeout(Duration::from_secs(30), watcher).await??;
    for ev in seen {
        println!("  event: {ev}");
    }
    let status = wait_for_leader(&client).await?;
    println!("new leader {} in term {}", status.leader, status.term);

    client.close().await;
    for n in &nodes {
        n.shutdown().await?;
    }
    Ok(())
}

/// Polls status until a leader is known (the client fails over if its node is gone).
async fn wait_for_leader(
    client: &IrohRaftManagementClient,
) -> anyhow::Result<iroh_raft::actors::wire::MgmtStatus> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(status) = client.status().await
            && status.leader != 0
        {
            return Ok(status);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no leader in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
