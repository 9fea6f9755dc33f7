//! Relays on loopback: nodes that know each other only by endpoint id (no address) form a
//! cluster through a relay server of our own, a ticket names the relay and a newcomer with no
//! relay of its own joins through it, and the relay's certificate must be trusted.

use std::{net::Ipv4Addr, time::Duration};

use iroh::SecretKey;
use iroh_raft::{BuildError, ConfigError, KeyValueStore, RaftCluster, TicketRole};
use iroh_raft_actors::metrics::PeerLabel;

#[path = "../network/relay.rs"]
mod relay;

use crate::support::{Node, init_tracing, set, wait_for};

/// Builds node `id` of a three-node cluster whose peers are named by endpoint id alone.
async fn node(
    id: u64,
    keys: &[SecretKey],
    dir: &std::path::Path,
    relay: &iroh::RelayUrl,
    ca: &std::path::Path,
) -> Node {
    let peers: Vec<(u64, String)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i as u64 + 1, k.public().to_string()))
        .filter(|(peer, _)| *peer != id)
        .collect();
    RaftCluster::builder()
        .node_id(id)
        .secret_key(keys[id as usize - 1].clone())
        .data_dir(dir.join(format!("n{id}")))
        .bind_address("127.0.0.1:0")
        .peers(peers)
        .preset(iroh_raft::Preset::Testing)
        .relay_url(relay.clone())
        .relay_ca_file(ca)
        .state_machine(KeyValueStore::new())
        .build()
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_known_by_id_alone_form_a_cluster_through_the_relay() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let certs = relay::RelayCerts::new(Ipv4Addr::LOCALHOST.into());
    let ca = certs.write_ca(dir.path());
    let (server, url) = relay::start_relay(Ipv4Addr::LOCALHOST.into(), 0, 0, &certs).await;
    let keys: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(node(id, &keys, dir.path(), &url, &ca).await);
    }
    wait_for("a leader elected through the relay", || async {
        nodes[0].leader().await.is_some()
    })
    .await;
    let leader = nodes[0].leader().await.unwrap();
    let leader = &nodes[leader as usize - 1];
    for i in 0..20 {
        assert!(
            leader
                .propose(set(format!("k{i}"), "v"))
                .await
                .unwrap()
                .applied
        );
    }
    for n in &nodes {
        wait_for("every write applied on every node", || async {
            n.query(|kv| kv.len()).await.unwrap() == 20
        })
        .await;
    }
    // The first connections went through the relay (no address was known); on loopback hole
    // punching finds a direct path at once, and the metrics show every path direct in the end,
    // with the moves from the relay counted.
    for n in &nodes {
        for peer in (1..=3).filter(|p| *p != n.node_id()) {
            wait_for("a direct path to every peer", || async {
                n.metrics()
                    .peers
                    .peer_relayed
                    .get(&PeerLabel { peer })
                    .is_some_and(|g| g.get() == 0)
            })
            .await;
        }
    }
    let moves: u64 = nodes
        .iter()
        .flat_map(|n| {
            (1..=3u64).filter_map(move |peer| {
                let changes = n.metrics().peers.peer_path_changes.get(&PeerLabel { peer });
                changes.map(|c| c.get())
            })
        })
        .sum();
    assert!(
        moves >= 1,
        "no connection moved from the relay to a direct path"
    );

    // A join ticket names the relay; a newcomer given none of its own joins through it.
    let ticket = leader
        .ticket(TicketRole::Join, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(ticket.relays, vec![url.clone()]);
    let text = ticket.to_string();
    assert!(text.starts_with("irohraft2"), "{text}");
    let parsed: iroh_raft::Ticket = text.parse().unwrap();
    assert_eq!(parsed, ticket);
    let newcomer = RaftCluster::builder()
        .data_dir(dir.path().join("n4"))
        .bind_address("127.0.0.1:0")
        .preset(iroh_raft::Preset::Testing)
        .join_ticket(parsed)
        .relay_ca_file(&ca)
        .state_machine(KeyValueStore::new())
        .build()
        .await
        .expect("the newcomer joins through the ticket's relay");
    wait_for("the newcomer caught up", || async {
        newcomer.query(|kv| kv.len()).await.unwrap() == 20
    })
    .await;

    newcomer.shutdown().await.unwrap();
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_ca_file_that_is_not_pem_fails_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("ca.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let built = RaftCluster::builder()
        .node_id(1)
        .data_dir(dir.path().join("n1"))
        .relay_url("https://127.0.0.1:1".parse().unwrap())
        .relay_ca_file(&bad)
        .state_machine(KeyValueStore::new())
        .build()
        .await;
    assert!(
        matches!(built, Err(BuildError::Config(ConfigError::RelayCa { .. }))),
        "{built:?}"
    );
    assert!(!dir.path().join("n1").exists(), "nothing written");
}
