use futures::future::join_all;
use iroh_raft::RaftClusterBuilder;

use crate::support::{TestCluster, set, wait_for};

/// Small limits so that a few hundred writes go through several snapshots.
fn compacting(
    b: RaftClusterBuilder<iroh_raft::KeyValueStore>,
) -> RaftClusterBuilder<iroh_raft::KeyValueStore> {
    b.max_log_entries(50).snapshot_trailing_entries(10)
}

async fn write(node: &crate::support::Node, prefix: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let writes = chunk
            .iter()
            .map(|i| node.propose(set(format!("{prefix}{i}"), format!("v{i}"))));
        for r in join_all(writes).await {
            r.unwrap();
        }
    }
}

async fn assert_all(cluster: &TestCluster, prefix: &str, n: usize) {
    let prefix = prefix.to_owned();
    for node in cluster.running() {
        let p = prefix.clone();
        let missing = node
            .linearizable_query(move |kv| {
                (0..n)
                    .filter(|i| kv.get(&format!("{p}{i}")) != Some(&format!("v{i}")))
                    .count()
            })
            .await
            .unwrap();
        assert_eq!(missing, 0, "node {} misses writes", node.node_id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_behind_snapshots() {
    let cluster = TestCluster::start_configured(3, 3, compacting).await;
    let leader = cluster.node(cluster.wait_for_leader().await).clone();
    write(&leader, "k", 600).await;
    let commit = leader.status().await.unwrap().commit_index;
    cluster.wait_applied(commit).await;
    wait_for("every node to have snapshotted", || async {
        cluster
            .statuses()
            .await
            .iter()
            .all(|s| s.snapshot_index >= 500)
    })
    .await;
    for s in cluster.statuses().await {
        let held = s.last_index + 1 - s.first_index;
        // At most one snapshot interval, the trailing window and one batch of writes.
        assert!(
            held <= 50 + 10 + 50,
            "node {} holds {held} entries ({s:?})",
            s.node_id
        );
        assert!(
            s.first_index > 400,
            "node {} never compacted ({s:?})",
            s.node_id
        );
    }
    assert_all(&cluster, "k", 600).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_trailing_window_catches_up_via_snapshot() {
    let mut cluster = TestCluster::start_configured(3, 3, compacting).await;
    let leader = cluster.wait_for_leader().await;
    let down = (1..=3).find(|&id| id != leader).unwrap();
    let behind = cluster.node(down).status().await.unwrap().last_index;
    cluster.stop(down).await;
    let node = cluster.node(leader).clone();
    write(&node, "k", 400).await;
    // The leader no longer has what the follower is missing: only a snapshot can bring it back.
    let first = node.status().await.unwrap().first_index;
    assert!(
        first > behind + 1,
        "leader log starts at {first}, follower stopped at {behind}"
    );

    cluster.restart(down as usize - 1).await;
    let commit = node.status().await.unwrap().commit_index;
    cluster.wait_applied(commit).await;
    let s = cluster.node(down).status().await.unwrap();
    assert!(s.snapshot_index > behind, "{s:?}");
    assert_all(&cluster, "k", 400).await;
    // And it keeps up from the log afterwards.
    write(&node, "after", 20).await;
    assert_all(&cluster, "after", 20).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_empty_node_catches_up_via_snapshot() {
    let mut cluster = TestCluster::start_configured(3, 2, compacting).await;
    let leader = cluster.node(cluster.wait_for_leader().await).clone();
    write(&leader, "k", 300).await;
    assert!(leader.status().await.unwrap().first_index > 1);
    let addr = cluster.port(2);
    let node3 = cluster.builder(2).bind_address(addr).build().await.unwrap();
    cluster.nodes[2] = Some(node3);
    let commit = leader.status().await.unwrap().commit_index;
    cluster.wait_applied(commit).await;
    assert!(cluster.node(3).status().await.unwrap().snapshot_index > 0);
    assert_all(&cluster, "k", 300).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_the_snapshot_and_replays_the_rest() {
    let mut cluster = TestCluster::start_configured(3, 3, compacting).await;
    let leader = cluster.node(cluster.wait_for_leader().await).clone();
    write(&leader, "k", 275).await;
    drop(leader);
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    for i in 0..3 {
        cluster.restart(i).await;
    }
    let leader = cluster.wait_for_leader().await;
    cluster
        .node(leader)
        .propose(set("after", "restart"))
        .await
        .unwrap();
    for s in cluster.statuses().await {
        assert!(s.snapshot_index > 0, "{s:?}");
    }
    assert_all(&cluster, "k", 275).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_snapshot_takes_one_on_demand() {
    let cluster = TestCluster::start_configured(3, 3, |b| b.snapshot_trailing_entries(5)).await;
    let leader = cluster.node(cluster.wait_for_leader().await).clone();
    write(&leader, "k", 40).await;
    let applied = leader.status().await.unwrap().applied_index;
    let index = leader.trigger_snapshot().await.unwrap();
    assert!(index >= applied);
    let s = leader.status().await.unwrap();
    assert_eq!(s.snapshot_index, index);
    assert_eq!(s.first_index, index - 5 + 1);
    // Asking again with nothing new applied returns the same snapshot.
    assert_eq!(leader.trigger_snapshot().await.unwrap(), index);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_in_quick_succession_and_during_a_transfer_are_harmless() {
    let mut cluster =
        TestCluster::start_configured(3, 3, |b| b.max_log_entries(10).snapshot_trailing_entries(2))
            .await;
    let leader_id = cluster.wait_for_leader().await;
    let down = (1..=3).find(|&id| id != leader_id).unwrap();
    cluster.stop(down).await;
    let leader = cluster.node(leader_id).clone();
    // Writes and explicit snapshot requests race each other.
    for round in 0..10 {
        let writes = (0..20).map(|i| leader.propose(set(format!("k{round}-{i}"), format!("v{i}"))));
        let triggers = (0..3).map(|_| leader.trigger_snapshot());
        let (w, t) = futures::join!(join_all(writes), join_all(triggers));
        w.into_iter().for_each(|r| {
            r.unwrap();
        });
        for r in t {
            r.unwrap();
        }
    }
    // The follower comes back and needs a snapshot while new ones keep replacing the current
    // one (a transfer whose snapshot is replaced fails and is retried with the new one).
    cluster.restart(down as usize - 1).await;
    for round in 10..20 {
        let writes = (0..20).map(|i| leader.propose(set(format!("k{round}-{i}"), format!("v{i}"))));
        for r in join_all(writes).await {
            r.unwrap();
        }
        leader.trigger_snapshot().await.unwrap();
    }
    let commit = leader.status().await.unwrap().commit_index;
    cluster.wait_applied(commit).await;
    for node in cluster.running() {
        let len = node.linearizable_query(|kv| kv.len()).await.unwrap();
        assert_eq!(len, 400, "node {}", node.node_id());
    }
    cluster.shutdown().await;
}
