use iroh_raft::{KvCommand, Role};

use crate::support::{TestCluster, set};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_proposals_and_serves_linearizable_reads() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.running().find(|n| n.node_id() != leader).unwrap();
    assert_ne!(follower.status().await.unwrap().role, Role::Leader);

    let first = follower.propose(set("x", "1")).await.unwrap();
    assert_eq!(first.previous, None);
    let second = follower.propose(set("x", "2")).await.unwrap();
    assert_eq!(second.previous.as_deref(), Some("1"));
    let cas = follower
        .propose(KvCommand::CompareAndSwap {
            key: "x".into(),
            expected: Some("1".into()),
            new: Some("3".into()),
        })
        .await
        .unwrap();
    assert!(!cas.applied, "stale compare-and-swap must not apply");

    // A write acknowledged by the leader is visible to a linearizable read on every follower,
    // without waiting.
    cluster
        .node(leader)
        .propose(set("y", "fresh"))
        .await
        .unwrap();
    for node in cluster.running() {
        let y = node
            .linearizable_query(|kv| kv.get("y").cloned())
            .await
            .unwrap();
        assert_eq!(y.as_deref(), Some("fresh"), "node {}", node.node_id());
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_commands_travel_and_oversized_ones_are_refused() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.running().find(|n| n.node_id() != leader).unwrap();
    // Four 2 MiB commands forwarded at once: more than one frame's worth (frames are split at
    // 1 MiB of forwarded data). 8 MiB through an unoptimised debug build takes about a second.
    let big = "x".repeat(2 * 1024 * 1024);
    let writes = (0..4).map(|i| follower.propose(set(format!("big{i}"), big.clone())));
    for r in futures::future::join_all(writes).await {
        r.unwrap();
    }
    let len = follower
        .linearizable_query(|kv| kv.get("big3").map(String::len))
        .await
        .unwrap();
    assert_eq!(len, Some(big.len()));
    let too_big = "x".repeat(iroh_raft::actors::wire::MAX_COMMAND_SIZE + 1);
    let err = follower.propose(set("huge", too_big)).await.unwrap_err();
    assert!(
        matches!(err, iroh_raft::ProposeError::TooLarge { .. }),
        "{err:?}"
    );
    cluster.shutdown().await;
}
