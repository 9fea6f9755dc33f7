//! The basics: three nodes in one process, writes, reads (local and linearizable), events, a
//! leader that goes away and the cluster that carries on. Finishes on its own.
//!
//! ```sh
//! cargo run --example simple_cluster_example
//! ```

use std::time::Duration;

use iroh_raft::prelude::*;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One data dir per node; loopback endpoints that know each other; relays and DNS off.
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let nodes = iroh_raft::start_local_cluster(&dirs, |_id, builder| {
        builder
            .state_machine_factory(KeyValueStore::new)
            .preset(Preset::Development)
    })
    .await?;
    println!(
        "started nodes {:?}",
        nodes.iter().map(|n| n.node_id()).collect::<Vec<_>>()
    );

    // Events: leader changes, membership changes, snapshots, ...
    let mut events = nodes[2].subscribe().await?;

    // Any node takes writes (a follower forwards them to the leader).
    for (key, value) in [("alice", "10"), ("bob", "20"), ("carol", "30")] {
        let response = nodes[1]
            .propose(KvCommand::Set {
                key: key.into(),
                value: value.into(),
            })
            .await?;
        println!("set {key}={value} (previous: {:?})", response.previous);
    }

    // A linearizable read sees every write acknowledged before it, on any node.
    let bob = nodes[2]
        .linearizable_query(|kv| kv.get("bob").cloned())
        .await?;
    println!("bob = {bob:?} (linearizable, read on node 3)");
    // A local read is as fresh as this node's applied state (cheap, maybe stale).
    let count = nodes[0].query(|kv| kv.len()).await?;
    println!("node 1 holds {count} keys");

    // Compare-and-swap: applied only if the value is what we expect.
    let swapped = nodes[0]
        .propose(KvCommand::CompareAndSwap {
            key: "alice".into(),
            expected: Some("10".into()),
            new: Some("11".into()),
        })
        .await?;
    println!("alice 10 -> 11: applied = {}", swapped.applied);

    // The leader goes away; the other two elect a new one and keep serving.
    let leader = nodes[0].leader().await.ok_or("no leader")?;
    println!("node {leader} leads; shutting it down");
    let leader_node = nodes
        .iter()
        .find(|n| n.node_id() == leader)
        .ok_or("leader")?;
    leader_node.shutdown().await?;
    let survivor = nodes
        .iter()
        .find(|n| n.node_id() != leader)
        .ok_or("survivor")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match survivor
            .propose(KvCommand::Set {
                key: "after-failover".into(),
                value: "ok".into(),
            })
            .await
        {
            Ok(_) => break,
            // No leader yet: the election takes about an election timeout.
            Err(e) if tokio::time::Instant::now() < deadline => {
                println!("  waiting for a new leader ({e})");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!(
        "node {:?} leads now; the write after failover went through",
        survivor.leader().await
    );

    // What node 3 saw meanwhile.
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await
    {
        if let EventItem::Event(event) = item {
            println!("event on node 3: {event:?}");
        }
    }

    for node in &nodes {
        node.shutdown().await?;
    }
    println!("done");
    Ok(())
}
