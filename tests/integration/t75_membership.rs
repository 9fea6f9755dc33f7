//! Membership changes on a live cluster: grow, shrink, replace, remove the leader, learners,
//! leadership transfer, removed nodes and reused ids.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh_raft::{
    ALPN, ClusterEvent, EventItem, FatalError, JoinOptions, MembershipRefusal, ProposeError, Role,
    net::bind_offline_endpoint,
};
use tokio::sync::watch;

use crate::{
    support::{Node, TestCluster, set, wait_for},
    t70_admission::close_code,
};

/// Writes `key-N` through whichever node `target` names, until `stop` is set; records every
/// acknowledged write.
fn spawn_writer(
    target: watch::Receiver<Node>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0usize;
        let mut failures = 0usize;
        while !*stop.borrow() {
            let node = target.borrow().clone();
            let (key, value) = (format!("key-{n}"), format!("value-{n}"));
            match node.propose(set(key.clone(), value.clone())).await {
                Ok(_) => {
                    acked.lock().unwrap().insert(key, value);
                }
                // Outcome unknown or refused: never counted as acknowledged.
                Err(_) => failures += 1,
            }
            n += 1;
        }
        failures
    })
}

async fn voters_and_learners(node: &Node) -> (Vec<u64>, Vec<u64>) {
    let m = node.members().await.unwrap();
    (m.voters(), m.learners())
}

/// Waits until node `id` stops because it was removed.
async fn wait_removed(cluster: &mut TestCluster, id: u64) {
    let node = cluster.nodes[id as usize - 1].take().expect("running");
    wait_for(&format!("node {id} to learn it was removed"), || {
        let node = node.clone();
        async move {
            matches!(
                node.propose(set("x", "y")).await,
                Err(ProposeError::Fatal(FatalError::Removed { .. }))
            )
        }
    })
    .await;
    assert!(matches!(
        node.shutdown().await,
        Err(FatalError::Removed { node }) if node == id
    ));
}

async fn check_all(node: &Node, acked: &BTreeMap<String, String>) {
    let acked = acked.clone();
    let missing = node
        .linearizable_query(move |kv| acked.iter().filter(|(k, v)| kv.get(k) != Some(v)).count())
        .await
        .unwrap();
    assert_eq!(missing, 0, "acknowledged writes missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_shrink_replace_and_remove_the_leader_under_load() {
    let mut cluster = TestCluster::start_growable(6).await;
    cluster.wait_for_leader().await;
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (target_tx, target_rx) = watch::channel(cluster.node(1).clone());
    let writer = spawn_writer(target_rx, acked.clone(), stop_rx);

    // 1 → 3 → 5 voters.
    for id in 2..=5u64 {
        cluster.start_joiner(id as usize - 1).await;
        cluster
            .node(1)
            .join(
                id,
                cluster.addrs[id as usize - 1].clone(),
                JoinOptions::default(),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        voters_and_learners(cluster.node(1)).await,
        (vec![1, 2, 3, 4, 5], vec![])
    );
    wait_for("every node to see 5 voters", || async {
        let mut all = true;
        for n in cluster.running() {
            all &= n.status().await.is_ok_and(|s| s.voters.len() == 5);
        }
        all
    })
    .await;

    // 5 → 3: the removed nodes stop.
    cluster.node(2).remove_member(5).await.unwrap();
    cluster.node(1).remove_member(4).await.unwrap();
    wait_removed(&mut cluster, 5).await;
    wait_removed(&mut cluster, 4).await;
    assert_eq!(voters_and_learners(cluster.node(1)).await.0, vec![1, 2, 3]);

    // Replace voter 3 by a new node 6 in one joint step.
    cluster.start_joiner(5).await;
    cluster
        .node(2)
        .replace(3, 6, cluster.addrs[5].clone())
        .await
        .unwrap();
    wait_removed(&mut cluster, 3).await;
    wait_for("the joint configuration to be left", || async {
        voters_and_learners(cluster.node(1)).await.0 == vec![1, 2, 6]
            && cluster
                .node(1)
                .status()
                .await
                .is_ok_and(|s| s.voters == vec![1, 2, 6])
    })
    .await;

    // Remove the leader: it hands leadership over first.
    let leader = cluster.wait_for_leader().await;
    let stays = [1u64, 2, 6].into_iter().find(|&i| i != leader).unwrap();
    target_tx.send_replace(cluster.node(stays).clone());
    cluster.node(stays).remove_member(leader).await.unwrap();
    wait_removed(&mut cluster, leader).await;
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);

    // A few more writes on the two remaining voters, then check every acknowledged write.
    let before = acked.lock().unwrap().len();
    wait_for("writes to continue after the removals", || async {
        acked.lock().unwrap().len() > before + 20
    })
    .await;
    stop_tx.send_replace(true);
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    for node in cluster.running() {
        check_all(node, &acked).await;
    }
    assert_eq!(cluster.running().count(), 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_does_not_vote_and_is_promoted_only_once_caught_up() {
    let mut cluster = TestCluster::start_growable(3).await;
    cluster.wait_for_leader().await;
    let leader = cluster.node(1).clone();
    for i in 0..200 {
        leader.propose(set(format!("k{i}"), "v")).await.unwrap();
    }

    // Node 3 is added but never started: it cannot catch up, so it is never promoted.
    leader
        .add_learner(3, cluster.addrs[2].clone())
        .await
        .unwrap();
    let refused = leader
        .join(
            3,
            cluster.addrs[2].clone(),
            JoinOptions {
                max_lag: 10,
                timeout: Duration::from_secs(2),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ProposeError::Membership(MembershipRefusal::NotCaughtUp { id: 3, .. })
        ),
        "{refused:?}"
    );
    assert_eq!(voters_and_learners(&leader).await, (vec![1], vec![3]));

    // Node 2 joins: a learner first, promoted once caught up.
    let mut events = leader.subscribe().await.unwrap();
    cluster.start_joiner(1).await;
    leader
        .join(2, cluster.addrs[1].clone(), JoinOptions::default())
        .await
        .unwrap();
    let mut saw_learner = false;
    while let Some(EventItem::Event(ev)) = events.next().await {
        if let ClusterEvent::MembershipChanged { voters, learners } = ev {
            if learners.contains(&2) {
                saw_learner = true;
            }
            if voters.contains(&2) {
                break;
            }
        }
    }
    assert!(saw_learner, "node 2 was a learner before it was a voter");
    let status = cluster.node(2).status().await.unwrap();
    assert!(
        status.applied_index >= 200,
        "promoted before catching up: {status:?}"
    );
    assert_eq!(voters_and_learners(&leader).await, (vec![1, 2], vec![3]));

    // A learner never campaigns: with voters {1, 2} and node 2 stopped, learner 3 is started
    // and leader 1 keeps the lead; the learner stays a follower for ten election timeouts.
    cluster.start_joiner(2).await;
    let learner = cluster.node(3).clone();
    let mut learner_events = learner.subscribe().await.unwrap();
    wait_for("the learner to catch up", || async {
        learner.status().await.is_ok_and(|s| s.applied_index >= 200)
    })
    .await;
    cluster.stop(1).await; // node 1 leads; now nobody can win an election
    let quiet = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(item) = learner_events.next().await {
            if let EventItem::Event(ClusterEvent::RoleChanged { role, .. }) = item
                && role != Role::Follower
            {
                return role;
            }
        }
        Role::Follower
    })
    .await;
    assert!(quiet.is_err(), "the learner campaigned: {quiet:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_a_named_voter_and_to_the_best_one() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster
        .node(leader)
        .propose(set("before", "transfer"))
        .await
        .unwrap();
    let target = if leader == 3 { 2 } else { 3 };
    // Asked on a follower that is not the target.
    let asker = (1..=3).find(|&i| i != leader && i != target).unwrap();
    let done = cluster
        .node(asker)
        .transfer_leadership(Some(target))
        .await
        .unwrap();
    assert_eq!(done.leader, target);
    assert_eq!(cluster.wait_for_leader().await, target);

    // "Best": asked on the leader itself.
    let done = cluster
        .node(target)
        .transfer_leadership(None)
        .await
        .unwrap();
    assert_ne!(done.leader, target);
    assert_eq!(cluster.wait_for_leader().await, done.leader);

    // A non-voter is refused with a typed error, by the leader and through a follower alike.
    let follower = (1..=3).find(|&i| i != done.leader).unwrap();
    for asked in [done.leader, follower] {
        let err = cluster
            .node(asked)
            .transfer_leadership(Some(9))
            .await
            .unwrap_err();
        assert!(
            matches!(err, iroh_raft::TransferError::NotAVoter(9)),
            "asked {asked}: {err:?}"
        );
    }
    let read = cluster
        .node(asker)
        .linearizable_query(|kv| kv.get("before").cloned())
        .await
        .unwrap();
    assert_eq!(read.as_deref(), Some("transfer"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_for_good_and_its_id_is_never_reused() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let victim = if leader == 3 { 2 } else { 3 };
    let victim_addr = cluster.addrs[victim as usize - 1].clone();
    let victim_key =
        iroh_raft::net::load_or_create_secret_key(&cluster.data_dir(victim as usize - 1)).unwrap();
    cluster.node(leader).remove_member(victim).await.unwrap();
    wait_removed(&mut cluster, victim).await;

    // Its key is refused with the Removed close code, by every remaining member.
    let ghost = bind_offline_endpoint(victim_key, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    for id in (1..=3u64).filter(|&i| i != victim) {
        let conn = ghost
            .connect(cluster.addrs[id as usize - 1].0.clone(), ALPN)
            .await
            .unwrap();
        assert_eq!(
            close_code(conn.closed().await),
            Some(iroh_raft::actors::wire::CloseCode::Removed)
        );
    }
    ghost.close().await;

    // Its id cannot come back with a new key, nor its key with a new id.
    let stranger =
        bind_offline_endpoint(iroh::SecretKey::generate(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
    let stranger_addr = iroh_raft::net::endpoint_peer_addr(&stranger);
    let err = cluster
        .node(leader)
        .add_learner(victim, stranger_addr)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProposeError::Membership(MembershipRefusal::RemovedId(id)) if id == victim),
        "{err:?}"
    );
    let err = cluster
        .node(leader)
        .add_learner(7, victim_addr)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProposeError::Membership(MembershipRefusal::RemovedEndpoint(_))
        ),
        "{err:?}"
    );
    stranger.close().await;

    // The cluster still serves.
    cluster
        .node(leader)
        .propose(set("after", "removal"))
        .await
        .unwrap();
    cluster.shutdown().await;
}
