//! A small replicated KV service as an application would write it: three nodes (each serving
//! the management protocol, with remote linearizable reads), and a remote client that writes
//! and reads through an admin ticket while the leader is lost, then the lost node comes back
//! from its data dir and catches up. Finishes on its own.
//!
//! ```sh
//! cargo run --example distributed_kv_store
//! ```

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use iroh_raft::{
    KeyValueStore, KvCommand, KvResponse, Preset, RaftCluster, RaftClusterBuilder, TicketRole,
    mgmt::{ClientError, IrohRaftManagementClient},
};

type Node = RaftCluster<KeyValueStore>;

/// What every node of the service runs: the built-in KV store, rebuilt from its data dir after
/// a crash, serving linearizable reads to remote clients.
fn configure(builder: RaftClusterBuilder<KeyValueStore>) -> RaftClusterBuilder<KeyValueStore> {
    builder
        .state_machine_factory(KeyValueStore::new)
        .remote_reads(iroh_raft::kv::remote_get)
        .preset(Preset::Development)
}

/// A write that retries while the cluster elects. `Set` is idempotent, so retrying one whose
/// outcome is unknown is safe (a non-idempotent command would need its own dedupe).
async fn put(client: &IrohRaftManagementClient, key: &str, value: &str) -> Result<(), ClientError> {
    let command = KvCommand::Set {
        key: key.into(),
        value: value.into(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.propose::<_, KvResponse>(&command).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                println!("  put {key}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn get(client: &IrohRaftManagementClient, key: &str) -> Result<Option<String>, ClientError> {
    client.read::<_, Option<String>>(&key.to_owned()).await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let mut nodes: Vec<Option<Node>> =
        iroh_raft::start_local_cluster(&dirs, |_id, builder| configure(builder))
            .await?
            .into_iter()
            .map(Some)
            .collect();
    let running = |nodes: &[Option<Node>]| nodes.iter().flatten().cloned().collect::<Vec<_>>();

    // The client side: an admin ticket (it names the members and admits its holder).
    let ticket = running(&nodes)[0]
        .ticket(TicketRole::Admin, Duration::from_secs(600))
        .await?;
    let client = IrohRaftManagementClient::connect(&ticket).await?;
    for i in 0..100 {
        put(
            &client,
            &format!("user:{i}"),
            &format!("balance={}", i * 10),
        )
        .await?;
    }
    println!(
        "client wrote 100 keys; user:42 = {:?}",
        get(&client, "user:42").await?
    );

    // Lose the leader. The client follows the cluster to the new leader.
    let leader = running(&nodes)[0].leader().await.ok_or("no leader")?;
    let at = nodes
        .iter()
        .position(|n| n.as_ref().is_some_and(|n| n.node_id() == leader))
        .ok_or("leader not found")?;
    let lost = nodes[at].take().ok_or("leader")?;
    let addr: SocketAddr = lost
        .endpoint()
        .ok_or("an iroh node")?
        .bound_sockets()
        .into_iter()
        .find(SocketAddr::is_ipv4)
        .ok_or("no address")?;
    lost.shutdown().await?;
    drop(lost);
    println!("node {leader} (the leader) is gone");
    let started = Instant::now();
    put(&client, "after-failover", "written").await?;
    println!(
        "the next write went through {:.1?} later; user:7 = {:?}",
        started.elapsed(),
        get(&client, "user:7").await?
    );

    // The lost node comes back on its address, from its data dir alone, and catches up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let back = loop {
        let built = configure(RaftCluster::builder())
            .data_dir(dirs[at].path())
            .bind_address(addr)
            .build()
            .await;
        match built {
            Ok(node) => break node,
            // Its old socket may take a moment to be released.
            Err(e) if Instant::now() < deadline => {
                println!("  restart: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let caught_up = back
        .linearizable_query(|kv| kv.get("after-failover").cloned())
        .await?;
    println!(
        "node {} is back and has the write made while it was away: {caught_up:?}",
        back.node_id()
    );
    nodes[at] = Some(back);

    client.close().await;
    for node in running(&nodes) {
        node.shutdown().await?;
    }
    println!("done");
    Ok(())
}
