use iroh::{SecretKey, endpoint::ConnectionError};
use iroh_raft::{ALPN, actors::wire::CloseCode, net::bind_offline_endpoint};

use crate::support::{TestCluster, set};

/// The close code a connection was closed with by the remote side.
pub fn close_code(err: ConnectionError) -> Option<CloseCode> {
    match err {
        ConnectionError::ApplicationClosed(close) => {
            CloseCode::from_u64(close.error_code.into_inner())
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_is_refused_with_a_close_code() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;

    let stranger = bind_offline_endpoint(SecretKey::generate(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    for target in &cluster.addrs {
        let conn = stranger.connect(target.0.clone(), ALPN).await.unwrap();
        assert_eq!(close_code(conn.closed().await), Some(CloseCode::NotAMember));
    }
    stranger.close().await;
    // Each node counted the refusal.
    for node in cluster.running() {
        let page = node.export_metrics_prometheus();
        let line =
            "iroh_raft_admission_refusals_total{protocol=\"consensus\",reason=\"not_a_member\"} 1";
        assert!(page.lines().any(|l| l == line), "no `{line}` in\n{page}");
    }

    // The cluster is unaffected.
    cluster
        .node(leader)
        .propose(set("still", "working"))
        .await
        .unwrap();
    cluster.shutdown().await;
}
