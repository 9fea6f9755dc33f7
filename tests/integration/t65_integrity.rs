//! Damaged and stale data dirs: never served, never skipped. A node that finds its data corrupt
//! or stale stops serving and voting with a typed error, fences its data dir, and the others go
//! on serving.

use std::path::Path;

use iroh_raft::{
    BuildError, FatalError, KvCommand, ReadError, StorageError,
    actors::{CorruptionKind, DataLocation, LogDb, StaleEvidence, StartError},
};

use crate::support::{Node, TestCluster, set, wait_for, wait_for_some};

/// Writes `n` entries with recognisable values through the leader and waits until all apply.
async fn write(cluster: &TestCluster, from: usize, n: usize) -> u64 {
    let leader = cluster.node(cluster.wait_for_leader().await).clone();
    for i in from..from + n {
        leader
            .propose(set(format!("key-{i:04}"), format!("value-{i:04}")))
            .await
            .unwrap();
    }
    let commit = leader.status().await.unwrap().commit_index;
    cluster.wait_applied(commit).await;
    commit
}

/// Some follower's id.
async fn a_follower(cluster: &TestCluster) -> u64 {
    let leader = cluster.wait_for_leader().await;
    (1..=3).find(|&id| id != leader).unwrap()
}

/// Waits until `node` reports a fatal error, and returns it.
async fn fatal(node: &Node) -> FatalError {
    wait_for_some("the node to stop with a fatal error", || async {
        match node.query(|_| ()).await {
            Err(ReadError::Fatal(e)) => Some(e),
            _ => None,
        }
    })
    .await
}

/// Starting `dir` again is refused because it was fenced.
async fn assert_fenced(cluster: &TestCluster, i: usize) {
    let err = cluster.builder(i).build().await.unwrap_err();
    let BuildError::Start(StartError::Storage(e)) = &err else {
        panic!("expected a storage error, got {err:?}");
    };
    assert!(matches!(**e, StorageError::Fenced { .. }), "{err:?}");
}

fn flip_every(path: &Path, needle: &[u8]) -> usize {
    let mut file = std::fs::read(path).unwrap();
    let mut hits = 0;
    let mut at = 0;
    while let Some(pos) = file[at..].windows(needle.len()).position(|w| w == needle) {
        let pos = at + pos;
        file[pos + needle.len() - 1] ^= 0x01;
        hits += 1;
        at = pos + needle.len();
    }
    std::fs::write(path, file).unwrap();
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_byte_in_an_entry_is_refused_at_restart_and_the_others_serve() {
    let mut cluster = TestCluster::start(3).await;
    write(&cluster, 0, 40).await;
    let victim = a_follower(&cluster).await;
    cluster.stop(victim).await;
    let db = cluster
        .data_dir(victim as usize - 1)
        .join(iroh_raft::DB_FILE);
    assert!(
        flip_every(&db, b"value-0017") > 0,
        "the value is in the file"
    );

    let err = cluster
        .builder(victim as usize - 1)
        .build()
        .await
        .unwrap_err();
    let BuildError::Start(StartError::Storage(e)) = &err else {
        panic!("expected a storage error, got {err:?}");
    };
    let StorageError::Corrupt(c) = &**e else {
        panic!("expected a corruption, got {err:?}");
    };
    // redb's page checksums (verified at every open) or the entry's own seal catch it.
    assert!(
        matches!(
            c.location,
            DataLocation::File | DataLocation::LogEntry { .. }
        ),
        "{c:?}"
    );
    assert_eq!(c.kind, CorruptionKind::Checksum);
    assert!(c.to_string().contains("remove this member"), "{c}");

    // The other two still make progress.
    write(&cluster, 100, 5).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_applied_entries_differ_stops_and_the_others_raise_the_alarm() {
    let mut cluster = TestCluster::start(3).await;
    write(&cluster, 0, 30).await;
    let victim = a_follower(&cluster).await;
    cluster.stop(victim).await;
    let dir = cluster.data_dir(victim as usize - 1);

    rename_a_key(&dir);

    cluster.restart(victim as usize - 1).await;
    let node = cluster.nodes[victim as usize - 1].take().unwrap();
    let FatalError::Corruption(c) = fatal(&node).await else {
        panic!("expected a corruption");
    };
    assert_eq!(c.kind, CorruptionKind::Diverged);
    assert!(matches!(c.location, DataLocation::AppliedState { .. }));
    // The healthy members raise the alarm about it and keep serving.
    for id in (1..=3).filter(|&id| id != victim) {
        wait_for("the corruption alarm on a healthy member", || async {
            cluster.node(id).status().await.unwrap().diverged == vec![victim]
        })
        .await;
    }
    write(&cluster, 100, 5).await;
    assert!(node.shutdown().await.is_err());
    assert_fenced(&cluster, victim as usize - 1).await;
    cluster.shutdown().await;
}

/// Renames key-0012 inside the stored entry that set it, keeping the record's checksum valid
/// (what a bug could write): the node's applied history then differs from the cluster's.
fn rename_a_key(dir: &Path) {
    let mut db = LogDb::open(&dir.join(iroh_raft::DB_FILE)).unwrap();
    let recovered = db.recover().unwrap();
    let mut entry = recovered
        .entries
        .iter()
        .find(|e| {
            postcard::from_bytes::<KvCommand>(&e.data)
                .is_ok_and(|c| matches!(c, KvCommand::Set { key, .. } if key == "key-0012"))
        })
        .expect("the entry is in the log")
        .clone();
    entry.data = postcard::to_allocvec(&set("key-phantom", "value-0012"))
        .unwrap()
        .into();
    db.rewrite_entry(&entry).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_applied_entries_differ_stops_once_a_majority_disagrees() {
    let mut cluster = TestCluster::start(3).await;
    write(&cluster, 0, 30).await;
    let victim = cluster.wait_for_leader().await;
    let [healthy, third] = {
        let others: Vec<u64> = (1..=3).filter(|&id| id != victim).collect();
        [others[0], others[1]]
    };
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    rename_a_key(&cluster.data_dir(victim as usize - 1));

    // The damaged node and one healthy member: a quorum, with the damaged node leading. Two
    // voters that disagree cannot tell who is wrong; each raises the alarm about the other.
    cluster.restart(victim as usize - 1).await;
    cluster.restart(healthy as usize - 1).await;
    if cluster.wait_for_leader().await != victim {
        let leader = cluster.wait_for_leader().await;
        cluster
            .node(leader)
            .transfer_leadership(Some(victim))
            .await
            .unwrap();
    }
    assert_eq!(cluster.wait_for_leader().await, victim);
    wait_for("both members to see the other differ", || async {
        cluster
            .node(victim)
            .status()
            .await
            .is_ok_and(|s| s.diverged == vec![healthy])
            && cluster
                .node(healthy)
                .status()
                .await
                .is_ok_and(|s| s.diverged == vec![victim])
    })
    .await;

    // The third member makes the disagreement a majority: the leader is the odd one out and
    // stops; the two others elect and serve.
    cluster.restart(third as usize - 1).await;
    let node = cluster.nodes[victim as usize - 1].take().unwrap();
    let FatalError::Corruption(c) = fatal(&node).await else {
        panic!("expected a corruption");
    };
    assert_eq!(c.kind, CorruptionKind::Diverged);
    assert!(matches!(c.location, DataLocation::AppliedState { .. }));
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, victim);
    // The member that compared with it keeps the alarm up. The third may never have heard the
    // leader's checkpoint (its own could have stopped the leader first); it blames nobody else.
    assert_eq!(
        cluster.node(healthy).status().await.unwrap().diverged,
        vec![victim]
    );
    let seen = cluster.node(third).status().await.unwrap().diverged;
    assert!(seen.is_empty() || seen == vec![victim], "{seen:?}");
    write(&cluster, 100, 5).await;
    let value = cluster
        .node(new_leader)
        .query(|kv| kv.get("key-0012").cloned())
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("value-0012"));
    assert!(node.shutdown().await.is_err());
    assert_fenced(&cluster, victim as usize - 1).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_from_an_old_copy_of_its_data_dir_is_refused() {
    let mut cluster = TestCluster::start(3).await;
    write(&cluster, 0, 10).await;
    let victim = a_follower(&cluster).await;
    let i = victim as usize - 1;
    let db = cluster.data_dir(i).join(iroh_raft::DB_FILE);
    cluster.stop(victim).await;
    let old_copy = std::fs::read(&db).unwrap();

    // Two more starts, and writes it acknowledged, after the copy was taken.
    for round in 0..2 {
        cluster.restart(i).await;
        write(&cluster, 100 * (round + 1), 20).await;
        cluster.stop(victim).await;
    }
    std::fs::write(&db, &old_copy).unwrap();

    cluster.restart(i).await;
    let node = cluster.nodes[i].take().unwrap();
    match fatal(&node).await {
        FatalError::StaleDataDir { node: id, evidence } => {
            assert_eq!(id, victim);
            assert!(
                matches!(
                    evidence,
                    StaleEvidence::IncarnationBehind { .. }
                        | StaleEvidence::LogBehindAcknowledged { .. }
                ),
                "{evidence:?}"
            );
        }
        other => panic!("expected a stale data dir, got {other:?}"),
    }
    write(&cluster, 1000, 5).await;
    assert!(node.shutdown().await.is_err());
    assert_fenced(&cluster, i).await;
    cluster.shutdown().await;
}
