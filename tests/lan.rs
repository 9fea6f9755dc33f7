//! Local-network discovery (mDNS) of a named cluster's members. Multicast is tested inside a
//! private network namespace (`unshare -n`, loopback up with multicast routed to it), so the
//! host's network is never touched: the outer test re-runs this binary there.

use std::{collections::BTreeSet, process::Command, time::Duration};

use iroh_raft::{
    KeyValueStore, Preset, RaftCluster, actors::wire::MgmtRole, lan::find_members,
    mgmt::IrohRaftManagementClient,
};

const IN_NETNS: &str = "IROH_RAFT_IN_NETNS";

#[test]
fn lan_discovery_finds_the_members_of_a_named_cluster() {
    let exe = std::env::current_exe().unwrap();
    let script = "ip link set lo up && ip link set lo multicast on && \
                  ip route add 224.0.0.0/4 dev lo && \
                  exec \"$0\" inside_namespace --exact --include-ignored --nocapture";
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .arg(&exe)
        .env(IN_NETNS, "1")
        .output()
        .expect("run unshare (util-linux) to get a private network namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inside the namespace:\n{stdout}\n{stderr}"
    );
}

/// The key of the management client the nodes allow without a ticket.
fn operator() -> iroh::SecretKey {
    iroh::SecretKey::from_bytes(&[7; 32])
}

async fn node(name: &str, dir: &std::path::Path) -> RaftCluster<KeyValueStore> {
    RaftCluster::builder()
        .node_id(1)
        .data_dir(dir)
        .state_machine(KeyValueStore::new())
        .preset(Preset::Testing)
        .lan_discovery(name)
        .mgmt_allow(operator().public(), MgmtRole::ReadOnly)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a private network namespace; run by lan_discovery_finds_the_members_of_a_named_cluster"]
async fn inside_namespace() {
    assert!(
        std::env::var_os(IN_NETNS).is_some(),
        "run through lan_discovery_finds_the_members_of_a_named_cluster"
    );
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let alpha = [
        node("alpha", dirs[0].path()).await,
        node("alpha", dirs[1].path()).await,
    ];
    let beta = node("beta", dirs[2].path()).await;

    let found = find_members("alpha", Duration::from_secs(20))
        .await
        .unwrap();
    let found: BTreeSet<_> = found.iter().map(|a| a.id).collect();
    let expected: BTreeSet<_> = alpha.iter().map(|n| n.endpoint_id()).collect();
    assert_eq!(found, expected);
    let none = find_members("gamma", Duration::from_secs(2)).await.unwrap();
    assert!(none.is_empty());

    // The management client finds "beta" by name; its key is on the allowlist.
    let client = IrohRaftManagementClient::connect_to_cluster(
        "beta",
        Duration::from_secs(20),
        Some(operator()),
        None,
    )
    .await
    .unwrap();
    let status = client.status().await.unwrap();
    assert_eq!(status.members.len(), 1);
    assert_eq!(
        status.members[0].key,
        *beta.endpoint_id().as_bytes(),
        "connected to beta's node"
    );
    client.close().await;
    // Found, but not admitted: a key that is not allowed and no ticket.
    let refused =
        IrohRaftManagementClient::connect_to_cluster("beta", Duration::from_secs(20), None, None)
            .await
            .unwrap_err();
    assert!(
        matches!(refused, iroh_raft::mgmt::ClientError::Refused { .. }),
        "{refused:?}"
    );
    for n in alpha.iter().chain([&beta]) {
        n.shutdown().await.unwrap();
    }
}
