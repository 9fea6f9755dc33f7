//! In-memory nodes (`RaftClusterBuilder::in_memory`): the production runtime with its log in
//! memory and its members reached through a `MemoryNetwork` instead of QUIC.

use std::time::Duration;

use iroh_raft::{
    BuildError, ConfigError, KeyValueStore, MemoryNetwork, Preset, ProposeError, RaftCluster, Role,
    start_memory_cluster,
};

use crate::support::{set, wait_for, wait_for_some};

type Node = RaftCluster<KeyValueStore>;

async fn leader(nodes: &[Node]) -> Node {
    wait_for_some("a leader", || async {
        for n in nodes {
            if n.status().await.ok()?.role == Role::Leader {
                return Some(n.clone());
            }
        }
        None
    })
    .await
}

async fn read(node: &Node, key: &str) -> Option<String> {
    let key = key.to_owned();
    node.linearizable_query(move |kv| kv.get(&key).cloned())
        .await
        .unwrap()
}

async fn memory_cluster(lease_reads: bool) -> (MemoryNetwork, Vec<Node>) {
    start_memory_cluster(3, |_, b| {
        b.state_machine(KeyValueStore::new())
            .preset(Preset::Testing)
            .lease_reads(lease_reads)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_in_memory_replicate_fail_over_and_refuse_a_removed_member() {
    let (_net, nodes) = memory_cluster(false).await;
    assert!(nodes.iter().all(|n| n.endpoint().is_none()));
    let first = leader(&nodes).await;
    for i in 0..50 {
        first.propose(set(format!("k{i}"), "v")).await.unwrap();
    }
    // Linearizable reads on every node, many at once (they share ReadIndex rounds).
    for n in &nodes {
        let reads = (0..50).map(|i| async move { read(n, &format!("k{i}")).await });
        for r in futures_util::future::join_all(reads).await {
            assert_eq!(r.as_deref(), Some("v"));
        }
    }
    // The leader stops: the other two elect and keep every acknowledged write.
    first.shutdown().await.unwrap();
    let rest: Vec<Node> = nodes
        .iter()
        .filter(|n| n.node_id() != first.node_id())
        .cloned()
        .collect();
    let second = leader(&rest).await;
    assert_ne!(second.node_id(), first.node_id());
    second.propose(set("after", "failover")).await.unwrap();
    for n in &rest {
        assert_eq!(read(n, "k49").await.as_deref(), Some("v"));
        assert_eq!(read(n, "after").await.as_deref(), Some("failover"));
    }
    // A removed member is refused: it stops once it learns of its removal.
    let follower = rest
        .iter()
        .find(|n| n.node_id() != second.node_id())
        .unwrap();
    second.remove_member(follower.node_id()).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(20), follower.stopped()).await;
    assert!(stopped.is_ok(), "the removed member did not stop");
    let removed = follower.shutdown().await;
    assert!(
        matches!(removed, Err(iroh_raft::FatalError::Removed { node }) if node == follower.node_id()),
        "{removed:?}"
    );
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reads_in_memory_see_every_acknowledged_write() {
    let (_net, nodes) = memory_cluster(true).await;
    let leader = leader(&nodes).await;
    for i in 0..20 {
        leader.propose(set("counter", i.to_string())).await.unwrap();
        // On the leader (its lease) and on a follower (forwarded to the leader).
        for n in &nodes {
            assert_eq!(read(n, "counter").await, Some(i.to_string()));
        }
    }
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_needing_files_or_sockets_are_refused_in_memory() {
    let net = MemoryNetwork::new();
    let dir = tempfile::tempdir().unwrap();
    let err = RaftCluster::builder()
        .node_id(1)
        .state_machine(KeyValueStore::new())
        .data_dir(dir.path())
        .in_memory(&net)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::Config(ConfigError::NotInMemory { option: "data_dir" })
        ),
        "{err}"
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    let err = RaftCluster::builder()
        .node_id(1)
        .state_machine(KeyValueStore::new())
        .metrics_addr("127.0.0.1:0".parse().unwrap())
        .in_memory(&net)
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("metrics_addr"), "{err}");
    // A single node needs no peers and keeps nothing after shutdown.
    let single = RaftCluster::builder()
        .node_id(1)
        .state_machine(KeyValueStore::new())
        .preset(Preset::Testing)
        .in_memory(&net)
        .build()
        .await
        .unwrap();
    wait_for("the single node to lead", || async {
        single.status().await.is_ok_and(|s| s.role == Role::Leader)
    })
    .await;
    single.propose(set("a", "1")).await.unwrap();
    single.shutdown().await.unwrap();
    assert!(matches!(
        single.propose(set("a", "2")).await,
        Err(ProposeError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_in_memory_through_a_snapshot_stream() {
    let (net, nodes) = start_memory_cluster(3, |_, b| {
        b.state_machine(KeyValueStore::new())
            .preset(Preset::Testing)
            .max_log_entries(20)
            .snapshot_trailing_entries(5)
    })
    .await
    .unwrap();
    let leader = leader(&nodes).await;
    for i in 0..100 {
        leader.propose(set(format!("k{i}"), "v")).await.unwrap();
    }
    wait_for("the leader to compact its log", || async {
        leader.status().await.is_ok_and(|s| s.first_index > 50)
    })
    .await;
    let key = iroh::SecretKey::generate();
    let addr = iroh::EndpointAddr::new(key.public());
    let members: Vec<(u64, iroh::EndpointAddr)> = nodes
        .iter()
        .map(|n| (n.node_id(), n.peer_addr().0))
        .collect();
    let joiner = RaftCluster::builder()
        .node_id(4)
        .secret_key(key)
        .peers(members)
        .joining()
        .state_machine(KeyValueStore::new())
        .preset(Preset::Testing)
        .in_memory(&net)
        .build()
        .await
        .unwrap();
    leader
        .join(4, addr, iroh_raft::JoinOptions::default())
        .await
        .unwrap();
    // The log before index ~95 is compacted: the newcomer got a snapshot, then the rest.
    assert_eq!(read(&joiner, "k0").await.as_deref(), Some("v"));
    assert_eq!(read(&joiner, "k99").await.as_deref(), Some("v"));
    let status = joiner.status().await.unwrap();
    assert!(status.snapshot_index > 0, "{status:?}");
    for n in nodes.iter().chain([&joiner]) {
        n.shutdown().await.unwrap();
    }
}
