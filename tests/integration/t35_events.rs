use iroh_raft::{ClusterEvent, EventItem};

use crate::support::{TestCluster, set, wait_for_some};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_told_what_it_missed_and_never_slows_writes() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.node(cluster.wait_for_leader().await);
    // Subscribed but never read while more events happen than the buffer holds.
    let mut slow = leader.subscribe().await.unwrap();
    for i in 0..1500 {
        leader.propose(set(format!("k{i}"), "v")).await.unwrap();
    }
    let missed = wait_for_some("a Missed marker", || {
        let item = slow.try_next();
        async move {
            match item {
                Some(EventItem::Missed(n)) => Some(n),
                _ => None,
            }
        }
    })
    .await;
    assert!(missed > 0);
    // After the marker the stream continues with recent events. The bus may still be working
    // through the publications of the burst when the marker is read, so the slow subscriber can
    // fall behind again: more markers may come first, then events.
    let next = loop {
        match slow.next().await.unwrap() {
            EventItem::Missed(_) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(next, EventItem::Event(ClusterEvent::Applied { .. })),
        "{next:?}"
    );
    cluster.shutdown().await;
}
