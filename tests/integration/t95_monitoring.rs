//! The monitoring listener: `/metrics` carries our metrics and iroh's with etcd's meanings,
//! `/readyz` follows whether the node can serve (503 without a quorum, 200 once it is back)
//! while `/livez` stays 200, unknown paths are 404, other methods 405, and the listener
//! survives garbage.

use std::collections::BTreeMap;

use crate::support::{TestCluster, exchange, http, set, wait_for};

/// Samples `name{labels}` → value from an OpenMetrics page.
pub fn samples(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn start_with_listeners(members: usize) -> impl std::future::Future<Output = TestCluster> {
    TestCluster::start_configured(members, members, |b| {
        b.metrics_addr("127.0.0.1:0".parse().unwrap())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_leadership_progress_and_iroh_endpoint_figures() {
    let cluster = start_with_listeners(3).await;
    let leader = cluster.wait_for_leader().await;
    for i in 0..5 {
        cluster
            .node(leader)
            .propose(set(format!("k{i}"), "v"))
            .await
            .unwrap();
    }
    let mut is_leader = 0.0;
    for node in cluster.running() {
        let addr = node.metrics_addr().expect("a listener");
        let (status, page) = http(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(page.ends_with("# EOF\n"), "not OpenMetrics: {page}");
        let m = samples(&page);
        assert_eq!(m["iroh_raft_has_leader"], 1.0, "{page}");
        assert!(m["iroh_raft_leader_changes_seen_total"] >= 1.0);
        assert!(m["iroh_raft_term"] >= 1.0);
        assert!(m["iroh_raft_proposals_committed"] >= 5.0);
        assert!(m["iroh_raft_log_entries"] >= 1.0);
        assert!(m["iroh_raft_db_size_bytes"] > 0.0);
        assert!(m["iroh_raft_disk_commit_duration_seconds_count"] >= 1.0);
        is_leader += m["iroh_raft_is_leader"];
        // Per-peer figures carry the peer as a label, for both other members.
        for peer in (1..=3).filter(|&p| p != node.node_id()) {
            let sent = format!("iroh_raft_peer_sent_bytes_total{{peer=\"{peer}\"}}");
            assert!(
                m.get(&sent).is_some_and(|&v| v > 0.0),
                "no {sent} in {page}"
            );
        }
        // iroh's endpoint metrics are on the same page.
        assert!(
            m.keys().any(|k| k.starts_with("iroh_socket_")),
            "no iroh endpoint metrics in {page}"
        );
        // The same text from Rust, without HTTP.
        let direct = node.export_metrics_prometheus();
        assert!(direct.contains("iroh_raft_has_leader 1"));
    }
    assert_eq!(is_leader, 1.0, "exactly one leader");
    // The leader answered the proposals: their latency was recorded there.
    let page = cluster.node(leader).export_metrics_prometheus();
    assert!(samples(&page)["iroh_raft_proposal_duration_seconds_count"] >= 5.0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_proposal_is_counted_by_reason() {
    let cluster = start_with_listeners(1).await;
    cluster.wait_for_leader().await;
    let node = cluster.node(1);
    // A command that is not a KvCommand never enters the log.
    let _ = node
        .calls()
        .propose_encoded(vec![0xff; 3])
        .await
        .unwrap_err();
    let m = samples(&node.export_metrics_prometheus());
    assert_eq!(m["iroh_raft_proposals_failed_total{reason=\"codec\"}"], 1.0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_quorum_while_livez_stays_up() {
    let mut cluster = start_with_listeners(3).await;
    cluster.wait_for_leader().await;
    let addr = cluster.node(1).metrics_addr().unwrap();
    assert_eq!(http(addr, "GET", "/readyz").await, (200, "ok\n".into()));
    let (status, verbose) = http(addr, "GET", "/readyz?verbose").await;
    assert_eq!(status, 200);
    for check in [
        "[+]running ok",
        "[+]leader ok",
        "[+]linearizable_read ok",
        "readyz check passed",
    ] {
        assert!(verbose.contains(check), "{verbose}");
    }
    let (status, health) = http(addr, "GET", "/health").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["health"], "true", "{health}");

    // Node 1 alone: no quorum, so no ReadIndex completes and no leader stays known.
    cluster.stop(2).await;
    cluster.stop(3).await;
    wait_for("/readyz to fail without a quorum", || async {
        http(addr, "GET", "/readyz").await.0 == 503
    })
    .await;
    let (status, body) = http(addr, "GET", "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("[-]linearizable_read failed"), "{body}");
    assert!(body.contains("readyz check failed"), "{body}");
    assert_eq!(http(addr, "GET", "/readyz/running").await.0, 200);
    assert_eq!(http(addr, "GET", "/livez").await, (200, "ok\n".into()));
    let (status, health) = http(addr, "GET", "/health").await;
    assert_eq!(status, 503);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["health"], "false");

    // Healed: ready again.
    cluster.restart(1).await;
    cluster.restart(2).await;
    wait_for("/readyz to pass again", || async {
        http(addr, "GET", "/readyz").await.0 == 200
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_other_methods_and_garbage_get_errors_and_the_listener_survives() {
    let cluster = start_with_listeners(1).await;
    cluster.wait_for_leader().await;
    let addr = cluster.node(1).metrics_addr().unwrap();
    assert_eq!(http(addr, "GET", "/nope").await.0, 404);
    assert_eq!(http(addr, "GET", "/readyz/nope").await.0, 404);
    assert_eq!(http(addr, "GET", "/metrics/extra").await.0, 404);
    assert_eq!(http(addr, "POST", "/metrics").await.0, 405);
    assert_eq!(http(addr, "DELETE", "/livez").await.0, 405);
    assert_eq!(http(addr, "GET", "/livez/storage").await.0, 200);
    // From Rust, a check that does not exist fails rather than passing by being absent.
    let node = cluster.node(1);
    assert!(!node.readyz(Some("nope")).await.is_ok());
    assert!(
        !node.livez(Some("leader")).await.is_ok(),
        "leader is a readiness check"
    );
    assert!(node.livez(Some("storage")).await.is_ok());

    // 10,000 garbage requests, 50 connections at a time: each gets an error or a closed
    // connection, never a crash.
    let garbage: [&[u8]; 5] = [
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"GARBAGE GARBAGE GARBAGE\r\n\r\n",
    ];
    for round in 0..200 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let bytes = garbage[(round + i) % garbage.len()];
            tasks.spawn(async move { exchange(addr, bytes).await });
        }
        while tasks.join_next().await.is_some() {}
    }
    let (status, page) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(page.contains("iroh_raft_has_leader 1"));
    cluster.shutdown().await;
}
