use futures::future::join_all;

use crate::support::{TestCluster, set, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_elects_another_and_writes_continue() {
    let mut cluster = TestCluster::start(3).await;
    let old = cluster.wait_for_leader().await;
    for i in 0..20 {
        cluster
            .node(old)
            .propose(set(format!("before{i}"), "v"))
            .await
            .unwrap();
    }
    cluster.stop(old).await;

    let new = cluster.wait_for_leader().await;
    assert_ne!(new, old);
    let survivor = cluster.running().find(|n| n.node_id() != new).unwrap();
    // Writes through either survivor succeed (the follower forwards).
    let writes = (0..50).map(|i| survivor.propose(set(format!("after{i}"), "v")));
    for r in join_all(writes).await {
        r.unwrap();
    }
    let commit = cluster.node(new).status().await.unwrap().commit_index;
    cluster.wait_applied(commit).await;
    for node in cluster.running() {
        let len = node.query(|kv| kv.len()).await.unwrap();
        assert_eq!(len, 70, "node {}", node.node_id());
    }
    wait_for("term to have advanced", || async {
        cluster.node(new).status().await.unwrap().term > 1
    })
    .await;
    cluster.shutdown().await;
}
