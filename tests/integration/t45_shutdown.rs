use std::time::Duration;

use iroh_raft::{KeyValueStore, ProposeError, RaftCluster, ReadError};

use crate::support::{TestCluster, set, wait_for, wait_for_some};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_pending_proposals_and_later_calls() {
    let mut cluster = TestCluster::start(3).await;
    let leader_id = cluster.wait_for_leader().await;
    for id in (1..=3).filter(|&id| id != leader_id) {
        cluster.stop(id).await;
    }
    // Without a quorum the proposal cannot commit: it waits in the leader's pending table (or,
    // once the leader steps down, in its retry loop).
    let leader = cluster.node(leader_id).clone();
    let before = leader.status().await.unwrap().last_index;
    let pending = tokio::spawn({
        let leader = leader.clone();
        async move { leader.propose(set("never", "committed")).await }
    });
    wait_for("the proposal to be appended", || async {
        leader
            .status()
            .await
            .map(|s| s.last_index > before)
            .unwrap_or(true)
    })
    .await;
    leader.shutdown().await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(result, Err(ProposeError::ShuttingDown)),
        "{result:?}"
    );
    assert!(matches!(
        leader.propose(set("a", "b")).await,
        Err(ProposeError::ShuttingDown)
    ));
    assert!(matches!(
        leader.query(|kv| kv.len()).await,
        Err(ReadError::ShuttingDown)
    ));
    // Shutdown is idempotent.
    leader.shutdown().await.unwrap();
    cluster.nodes.iter_mut().for_each(|n| drop(n.take()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let build = || {
        RaftCluster::builder()
            .node_id(1)
            .data_dir(dir.path())
            .state_machine(KeyValueStore::new())
            .preset(iroh_raft::Preset::Testing)
            .build()
    };
    let node = build().await.unwrap();
    wait_for("single node to lead", || async {
        node.leader().await == Some(1)
    })
    .await;
    node.propose(set("kept", "yes")).await.unwrap();
    let clone = node.clone();
    drop(node);
    drop(clone);
    // The database is closed (redb allows one open handle per file) and nothing was lost.
    let node = wait_for_some("the data dir to be free again", || async {
        build().await.ok()
    })
    .await;
    wait_for("restarted node to lead", || async {
        node.leader().await == Some(1)
    })
    .await;
    let kept = node
        .linearizable_query(|kv| kv.get("kept").cloned())
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("yes"));
    node.shutdown().await.unwrap();
}

/// With the application's own router, the node's port is free again once the router and the
/// node's handles are gone: the node keeps no clone of the endpoint after its shutdown (iroh
/// releases a socket with the last clone of its endpoint; `Router::shutdown` only closes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_router_node_frees_its_port_once_router_and_handles_are_dropped() {
    use iroh::protocol::Router;
    use iroh_raft::{
        actors::wire::{ALPN, DISCOVERY_ALPN, MGMT_ALPN},
        net::bind_offline_endpoint,
    };

    let dir = tempfile::tempdir().unwrap();
    let key = iroh::SecretKey::generate();
    let endpoint = bind_offline_endpoint(key.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = endpoint.bound_sockets()[0];
    let node: RaftCluster<KeyValueStore> = RaftCluster::builder()
        .node_id(1)
        .data_dir(dir.path())
        .endpoint(endpoint.clone())
        .external_router()
        .state_machine(KeyValueStore::new())
        .preset(iroh_raft::Preset::Testing)
        .build()
        .await
        .unwrap();
    let router = Router::builder(endpoint.clone())
        .accept(ALPN, node.protocol_handler())
        .accept(MGMT_ALPN, node.mgmt_handler())
        .accept(DISCOVERY_ALPN, node.discovery_handler())
        .spawn();
    wait_for("leadership", || async { node.leader().await == Some(1) }).await;
    node.propose(set("k", "v")).await.unwrap();
    node.shutdown().await.unwrap();
    router.shutdown().await.unwrap();
    drop((router, node, endpoint));
    let again = wait_for_some("the port to be free", || {
        let key = key.clone();
        async move { bind_offline_endpoint(key, port).await.ok() }
    })
    .await;
    again.close().await;
}
