use iroh_raft::{ClusterEvent, EventItem, Role};

use crate::support::{TestCluster, set, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_one_leader() {
    let cluster = TestCluster::start(3).await;
    let mut events = cluster.node(1).subscribe().await.unwrap();
    let leader = cluster.wait_for_leader().await;
    let statuses = cluster.statuses().await;
    assert_eq!(
        statuses.iter().filter(|s| s.role == Role::Leader).count(),
        1
    );
    assert!(statuses.iter().all(|s| s.voters == vec![1, 2, 3]));
    // Node 1 reports the election it saw.
    wait_for("a LeaderElected event on node 1", || {
        let found = std::iter::from_fn(|| events.try_next()).any(|e| {
            matches!(e, EventItem::Event(ClusterEvent::LeaderElected { new_leader, .. }) if new_leader == leader)
        });
        async move { found }
    })
    .await;
    // The leader accepts a write.
    cluster.node(leader).propose(set("k", "v")).await.unwrap();
    cluster.shutdown().await;
}
