use iroh_raft::{KvCommand, ProposeError, Role, actors::Propose};
use kameo::error::SendError;

use crate::support::{TestCluster, set, wait_for_some};

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

/// While the leader hands leadership over, raft-rs drops proposals: the caller learns that the
/// command was not appended (`Busy`, safe to retry), not a hint-less "not leader".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_during_a_leadership_transfer_is_busy_and_safe_to_retry() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let target = cluster
        .running()
        .map(|n| n.node_id())
        .find(|&id| id != leader)
        .unwrap();
    // The target is down, so the transfer stays under way for an election timeout.
    cluster.stop(target).await;
    let node = cluster.node(leader).clone();
    let transfer = tokio::spawn(async move { node.transfer_leadership(Some(target)).await });
    let raft = cluster.node(leader).actors().raft.clone();
    let data = postcard::to_allocvec(&set("k", "v")).unwrap();
    let refused = wait_for_some("a proposal refused during the transfer", || {
        let raft = raft.clone();
        let data = data.clone();
        async move {
            match raft.ask(Propose::new(data)).await {
                Err(SendError::HandlerError(e)) => Some(e),
                _ => None,
            }
        }
    })
    .await;
    assert!(
        matches!(refused, ProposeError::Busy),
        "expected Busy, got {refused:?}"
    );
    assert!(refused.is_safe_to_retry());
    transfer.abort();
    cluster.shutdown().await;
}
