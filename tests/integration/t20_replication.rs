use futures::future::join_all;

use crate::support::{TestCluster, set};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_to_every_node() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.node(cluster.wait_for_leader().await);
    let writes = (0..100).map(|i| leader.propose(set(format!("k{i}"), format!("v{i}"))));
    for response in join_all(writes).await {
        assert!(response.unwrap().applied);
    }
    let commit = leader.status().await.unwrap().commit_index;
    cluster.wait_applied(commit).await;
    for node in cluster.running() {
        let (len, v7) = node
            .query(|kv| (kv.len(), kv.get("k7").cloned()))
            .await
            .unwrap();
        assert_eq!(len, 100, "node {}", node.node_id());
        assert_eq!(v7.as_deref(), Some("v7"));
    }
    cluster.shutdown().await;
}
