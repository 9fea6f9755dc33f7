use iroh::{
    endpoint::Connection,
    protocol::{AcceptError, ProtocolHandler, Router},
};
use iroh_raft::{
    ALPN, KeyValueStore, Preset, RaftCluster,
    net::{bind_endpoint, endpoint_peer_addr},
};

use crate::support::{set, wait_for_some};

/// The application's own protocol, sharing the endpoint with iroh-raft.
#[derive(Debug, Clone)]
struct Echo;

const ECHO: &[u8] = b"app/echo/0";

impl ProtocolHandler for Echo {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let (mut send, mut recv) = conn.accept_bi().await?;
        let msg = recv
            .read_to_end(1024)
            .await
            .map_err(AcceptError::from_err)?;
        send.write_all(&msg).await.map_err(AcceptError::from_err)?;
        send.finish().map_err(AcceptError::from_err)?;
        conn.closed().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_run_on_the_applications_endpoint_and_router() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut endpoints = Vec::new();
    for d in &dirs {
        endpoints.push(
            bind_endpoint(d.path(), "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap(),
        );
    }
    let members: Vec<_> = endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| (i as u64 + 1, endpoint_peer_addr(ep)))
        .collect();
    let mut nodes = Vec::new();
    let mut routers = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let node = RaftCluster::builder()
            .node_id(i as u64 + 1)
            .data_dir(dirs[i].path())
            .endpoint(ep.clone())
            .external_router()
            .peers(members.clone())
            .state_machine(KeyValueStore::new())
            .preset(Preset::Testing)
            .build()
            .await
            .unwrap();
        routers.push(
            Router::builder(ep.clone())
                .accept(ALPN, node.protocol_handler())
                .accept(ECHO, Echo)
                .spawn(),
        );
        nodes.push(node);
    }
    let leader = wait_for_some("a leader", || async {
        for n in &nodes {
            if n.leader().await == Some(n.node_id()) {
                return Some(n.clone());
            }
        }
        None
    })
    .await;
    leader.propose(set("k", "v")).await.unwrap();
    for n in &nodes {
        assert_eq!(
            n.linearizable_query(|kv| kv.get("k").cloned())
                .await
                .unwrap()
                .as_deref(),
            Some("v")
        );
    }

    // The application's protocol works on the same endpoints.
    let conn = endpoints[0]
        .connect(endpoint_peer_addr(&endpoints[1]).0, ECHO)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"hello").await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(1024).await.unwrap(), b"hello");
    conn.close(0u32.into(), b"done");

    for n in &nodes {
        n.shutdown().await.unwrap();
    }
    // The endpoints belong to the application and are still open until it closes them.
    assert!(!endpoints[0].is_closed());
    for r in routers {
        r.shutdown().await.unwrap();
    }
}
