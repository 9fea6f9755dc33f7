//! The management protocol against a live cluster: every request kind (asked of a follower too),
//! failover while the leader is down, admission by ticket and role, and the event stream.

use std::time::Duration;

use iroh_raft::{
    ClusterEvent, EventItem, KvCommand, KvResponse, TicketRole,
    actors::wire::{MgmtErrorKind, MgmtRole},
    mgmt::{ClientError, IrohRaftManagementClient},
};

use crate::support::{TestCluster, wait_for};

const DAY: Duration = Duration::from_secs(86_400);

async fn cluster(n: usize) -> TestCluster {
    TestCluster::start_configured(n, n, |b| b.remote_reads(iroh_raft::kv::remote_get)).await
}

fn put(key: &str, value: &str) -> KvCommand {
    KvCommand::Set {
        key: key.into(),
        value: value.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_kind_works_from_any_member() {
    let mut cluster = cluster(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = if leader == 1 { 2 } else { 1 };
    let ticket = cluster
        .node(follower)
        .ticket(TicketRole::Admin, DAY)
        .await
        .unwrap();
    // Only the follower's address (the ticket's member list is signed: it is not edited): the
    // client learns the rest.
    let follower_addr = cluster.addrs[follower as usize - 1].0.clone();
    let client = IrohRaftManagementClient::connect_with(None, vec![follower_addr], Some(&ticket))
        .await
        .unwrap();
    assert_eq!(client.session().await.unwrap().1, MgmtRole::Admin);

    let status = client.status().await.unwrap();
    assert_eq!(status.leader, leader);
    assert_eq!(status.members.len(), 3);
    assert!(status.members.iter().all(|m| m.role == "voter"));
    // The client moved to the leader, which reports its followers' lag.
    assert_eq!(client.session().await.unwrap().0, leader);
    let health = client.health().await.unwrap();
    assert!(health.quorum_available && health.storage_ok, "{health:?}");
    assert_eq!(health.voters, vec![1, 2, 3]);

    let r: KvResponse = client.propose(&put("k", "v1")).await.unwrap();
    assert_eq!(r.previous, None);
    let read: Option<String> = client.read(&"k".to_string()).await.unwrap();
    assert_eq!(read.as_deref(), Some("v1"));

    let index = client.snapshot().await.unwrap();
    assert!(index > 0);

    let target = (1..=3).find(|&i| i != leader).unwrap();
    let (new_leader, _) = client.transfer_leader(Some(target)).await.unwrap();
    assert_eq!(new_leader, target);

    // Membership: remove a voter (not the one the client talks to), then it is gone.
    let victim = (1..=3).find(|&i| i != target).unwrap();
    client.remove_member(victim).await.unwrap();
    wait_for("the removal to show in status", || async {
        client
            .status()
            .await
            .is_ok_and(|s| s.members.iter().all(|m| m.id != victim))
    })
    .await;
    let gone = cluster.nodes[victim as usize - 1].take().unwrap();
    let _ = gone.shutdown().await;
    let err = client.promote(victim).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Failed {
                kind: MgmtErrorKind::Refused,
                ..
            }
        ),
        "{err:?}"
    );
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_fails_over_when_its_node_dies() {
    let mut cluster = cluster(3).await;
    let (leader, ticket) = cluster.leader_ticket(TicketRole::Admin).await;
    let client = IrohRaftManagementClient::connect(&ticket).await.unwrap();
    assert_eq!(client.session().await.unwrap().0, leader);
    let _: KvResponse = client.propose(&put("a", "1")).await.unwrap();
    cluster.stop(leader).await;
    // Reads of the cluster's state answer from a surviving member at once, leader or not.
    let status = client.status().await.unwrap();
    assert_ne!(status.node_id, leader);
    let health = client.health().await.unwrap();
    assert_ne!(health.node_id, leader);
    // A membership change waits for the new leader, then is refused for what it is (node 9
    // is no member), not for the election.
    let err = client.promote(9).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Failed {
                kind: MgmtErrorKind::Refused,
                ..
            }
        ),
        "{err:?}"
    );
    // The next write finds another member and, once one leads, succeeds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.propose::<_, KvResponse>(&put("b", "2")).await {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
    }
    let read: Option<String> = client.read(&"a".to_string()).await.unwrap();
    assert_eq!(read.as_deref(), Some("1"));
    assert_ne!(client.session().await.unwrap().0, leader);
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_by_ticket_and_role() {
    let cluster = cluster(3).await;
    let leader = cluster.wait_for_leader().await;
    let node = cluster.node(leader);

    // No ticket, unknown key: refused before any request.
    let members: Vec<_> = cluster.addrs.iter().map(|a| (0, a.0.clone())).collect();
    let err = IrohRaftManagementClient::connect_to_members(members)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Refused { .. }), "{err:?}");

    // A join ticket grants no management access.
    let join = node.ticket(TicketRole::Join, DAY).await.unwrap();
    let err = IrohRaftManagementClient::connect(&join).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused { .. }), "{err:?}");

    // An expired admin ticket is refused too.
    let expired = node
        .ticket(TicketRole::Admin, Duration::ZERO)
        .await
        .unwrap();
    let err = IrohRaftManagementClient::connect(&expired)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Refused { .. }), "{err:?}");

    // Read-only: status, health and reads; no writes.
    let read_only = node.ticket(TicketRole::ReadOnly, DAY).await.unwrap();
    let client = IrohRaftManagementClient::connect(&read_only).await.unwrap();
    assert_eq!(client.session().await.unwrap().1, MgmtRole::ReadOnly);
    client.status().await.unwrap();
    client.health().await.unwrap();
    let read: Option<String> = client.read(&"nothing".to_string()).await.unwrap();
    assert_eq!(read, None);
    let err = client
        .propose::<_, KvResponse>(&put("x", "y"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Forbidden(_)), "{err:?}");
    let err = client.remove_member(1).await.unwrap_err();
    assert!(matches!(err, ClientError::Forbidden(_)), "{err:?}");
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_in_order() {
    let cluster = cluster(3).await;
    let (leader, ticket) = cluster.leader_ticket(TicketRole::ReadOnly).await;
    let client = IrohRaftManagementClient::connect(&ticket).await.unwrap();
    let mut events = client.subscribe().await.unwrap();
    cluster.node(leader).propose(put("e", "1")).await.unwrap();
    let applied = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(item) = events.next().await {
            if let Ok(EventItem::Event(ClusterEvent::Applied { index })) = item {
                return index;
            }
        }
        0
    })
    .await
    .unwrap();
    assert!(applied > 0);
    assert!(events.last_seq >= 1);

    // The client loses its stream; events happen meanwhile; it resumes after the last one it
    // saw and gets exactly the ones in between, in order, then live ones.
    let (epoch, seen) = (events.epoch, events.last_seq);
    drop(events);
    for i in 0..5 {
        cluster
            .node(leader)
            .propose(put("gap", &i.to_string()))
            .await
            .unwrap();
    }
    let mut resumed = client.resume(epoch, seen).await.unwrap();
    assert_eq!(resumed.epoch, epoch);
    let first = tokio::time::timeout(Duration::from_secs(20), resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, EventItem::Event(_)), "{first:?}");
    assert_eq!(resumed.last_seq, seen + 1, "no gap and no repeat");
    // A run that is not the node's (it restarted, or another node) starts from now.
    let fresh = client.resume(epoch ^ 1, seen).await.unwrap();
    assert_ne!(fresh.epoch, epoch ^ 1);
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_remote_subscriber_is_told_what_it_missed_and_never_slows_writes() {
    let cluster = cluster(3).await;
    let (leader, ticket) = cluster.leader_ticket(TicketRole::ReadOnly).await;
    // A client whose streams take at most 2 KiB before it reads: the node's sends to a
    // subscriber that does not read block on QUIC flow control almost at once.
    let transport = iroh::endpoint::QuicTransportConfig::builder()
        .stream_receive_window(iroh::endpoint::VarInt::from_u32(2048))
        .build();
    let endpoint = iroh_raft::net::bind_offline_endpoint_with(
        iroh::SecretKey::generate(),
        "127.0.0.1:0".parse().unwrap(),
        transport,
    )
    .await
    .unwrap();
    let client =
        IrohRaftManagementClient::connect_on(endpoint, ticket.members.clone(), Some(&ticket))
            .await
            .unwrap();
    let mut events = client.subscribe().await.unwrap();
    // Far more events than the bus holds for a subscriber: every write completes meanwhile.
    let node = cluster.node(leader).clone();
    let writes = tokio::spawn(async move {
        for i in 0..(iroh_raft::actors::EVENT_BUFFER + 200) {
            node.propose(put("slow", &i.to_string())).await.unwrap();
        }
    });
    tokio::time::timeout(Duration::from_secs(120), writes)
        .await
        .expect("writes stalled behind a slow subscriber")
        .unwrap();
    // Now the subscriber reads: somewhere in its stream it is told what it missed.
    let missed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(item) = events.next().await {
            if let Ok(EventItem::Missed(n)) = item {
                return n;
            }
        }
        0
    })
    .await
    .unwrap();
    assert!(missed > 0);
    client.close().await;
    cluster.shutdown().await;
}
