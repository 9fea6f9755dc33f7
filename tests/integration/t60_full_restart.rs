use futures::future::join_all;
use iroh_raft::{BuildError, KeyValueStore, RaftCluster, StorageError, actors::StartError};

use crate::support::{TestCluster, set};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_keeps_every_acknowledged_write() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.node(cluster.wait_for_leader().await).clone();
    let writes = (0..200).map(|i| leader.propose(set(format!("k{i}"), format!("v{i}"))));
    for r in join_all(writes).await {
        r.unwrap();
    }
    drop(leader);
    for id in 1..=3 {
        cluster.stop(id).await;
    }

    // Restarted with only their data dirs: no peer list, membership comes from disk.
    for i in 0..3 {
        cluster.restart(i).await;
    }
    let leader = cluster.wait_for_leader().await;
    // A write in the new term commits everything before it.
    cluster
        .node(leader)
        .propose(set("after", "restart"))
        .await
        .unwrap();
    let commit = cluster.node(leader).status().await.unwrap().commit_index;
    cluster.wait_applied(commit).await;
    for node in cluster.running() {
        let (len, v) = node
            .query(|kv| (kv.len(), kv.get("k199").cloned()))
            .await
            .unwrap();
        assert_eq!(len, 201, "node {}", node.node_id());
        assert_eq!(v.as_deref(), Some("v199"));
    }

    // A data dir belongs to its node: starting it as another node is refused.
    let dir = cluster.data_dir(0);
    cluster.stop(1).await;
    let err = RaftCluster::builder()
        .node_id(2)
        .data_dir(dir)
        .state_machine(KeyValueStore::new())
        .build()
        .await
        .unwrap_err();
    let BuildError::Start(StartError::Storage(storage)) = &err else {
        panic!("expected a storage error, got {err:?}");
    };
    assert!(
        matches!(
            **storage,
            StorageError::IdentityMismatch {
                stored_node: 1,
                node: 2,
                ..
            }
        ),
        "{err:?}"
    );
    cluster.shutdown().await;
}
