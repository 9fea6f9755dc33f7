use futures::future::join_all;

use crate::support::{TestCluster, set};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_during_500_writes_catches_up() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let down = (1..=3).find(|&id| id != leader).unwrap();
    cluster.stop(down).await;

    let node = cluster.node(leader).clone();
    for chunk in 0..5 {
        let writes = (0..100).map(|i| node.propose(set(format!("k{chunk}-{i}"), format!("v{i}"))));
        for r in join_all(writes).await {
            r.unwrap();
        }
    }
    let commit = node.status().await.unwrap().commit_index;

    cluster.restart(down as usize - 1).await;
    cluster.wait_applied(commit).await;
    let back = cluster.node(down);
    let (len, sample) = back
        .query(|kv| (kv.len(), kv.get("k4-99").cloned()))
        .await
        .unwrap();
    assert_eq!(len, 500);
    assert_eq!(sample.as_deref(), Some("v99"));
    cluster.shutdown().await;
}
