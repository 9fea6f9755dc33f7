//! Joining by ticket over the discovery protocol: a good ticket admits a node (learner, then
//! voter); expired, forged, foreign, wrong-role tickets and tickets whose issuer was removed are
//! each refused with their own reason, and the cluster is unaffected.

use std::time::Duration;

use iroh_raft::{
    BuildError, KeyValueStore, Preset, RaftCluster, Ticket, TicketRole, actors::wire::RefusalKind,
};

use crate::support::{TestCluster, set, wait_for};

async fn join_with(ticket: &Ticket) -> Result<RaftCluster<KeyValueStore>, BuildError> {
    let dir = tempfile::tempdir().unwrap();
    let result = RaftCluster::builder()
        .data_dir(dir.path())
        .state_machine(KeyValueStore::new())
        .preset(Preset::Testing)
        .join_ticket(ticket.clone())
        .build()
        .await;
    // Keep the data dir for as long as the node runs.
    std::mem::forget(dir);
    result
}

fn refused(result: Result<RaftCluster<KeyValueStore>, BuildError>) -> RefusalKind {
    match result {
        Err(BuildError::JoinRefused { kind, message }) => {
            assert!(!message.is_empty());
            kind
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(node) => panic!("node {} was admitted", node.node_id()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_admit_and_refuse_each_with_its_reason() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.node(leader).propose(set("a", "1")).await.unwrap();
    let day = Duration::from_secs(86_400);

    // A good ticket: the newcomer gets the next id and is a voter when build returns.
    let ticket = cluster.node(1).ticket(TicketRole::Join, day).await.unwrap();
    let joined = join_with(&ticket).await.unwrap();
    assert_eq!(joined.node_id(), 4);
    wait_for("the leader to apply node 4's promotion", || async {
        let members = cluster.node(leader).members().await.unwrap();
        members.voters() == vec![1, 2, 3, 4]
    })
    .await;
    let read = joined
        .linearizable_query(|kv| kv.get("a").cloned())
        .await
        .unwrap();
    assert_eq!(read.as_deref(), Some("1"));

    // Expired.
    let expired = cluster
        .node(2)
        .ticket(TicketRole::Join, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(refused(join_with(&expired).await), RefusalKind::Expired);

    // Tampered: the role changed after signing (admin instead of read-only).
    let mut forged = cluster
        .node(2)
        .ticket(TicketRole::ReadOnly, day)
        .await
        .unwrap();
    forged.role = TicketRole::Admin;
    let forged: Ticket = forged.to_string().parse().unwrap();
    assert_eq!(refused(join_with(&forged).await), RefusalKind::BadSignature);

    // Signed by a key that is not a member, for this cluster's id and members.
    let stranger = iroh::SecretKey::generate();
    let foreign_issuer = Ticket::issue(
        &stranger,
        ticket.cluster_id,
        ticket.members.clone(),
        TicketRole::Join,
        std::time::SystemTime::now() + day,
    );
    assert_eq!(
        refused(join_with(&foreign_issuer).await),
        RefusalKind::IssuerNotMember
    );

    // Another cluster's id, signed by a member.
    let other_cluster = Ticket::issue(
        &iroh_raft::net::load_or_create_secret_key(&cluster.data_dir(0)).unwrap(),
        iroh_raft::ClusterId([7; 16]),
        ticket.members.clone(),
        TicketRole::Join,
        std::time::SystemTime::now() + day,
    );
    assert_eq!(
        refused(join_with(&other_cluster).await),
        RefusalKind::WrongCluster
    );

    // A read-only ticket does not let anyone join.
    let read_only = cluster
        .node(1)
        .ticket(TicketRole::ReadOnly, day)
        .await
        .unwrap();
    assert_eq!(refused(join_with(&read_only).await), RefusalKind::WrongRole);

    // A ticket whose issuer was removed is void.
    let from_three = cluster.node(3).ticket(TicketRole::Join, day).await.unwrap();
    cluster.node(1).remove_member(3).await.unwrap();
    let three = cluster.nodes[2].take().unwrap();
    wait_for("node 3 to learn it was removed", || async {
        three.propose(set("x", "y")).await.is_err_and(|e| {
            matches!(
                e,
                iroh_raft::ProposeError::Fatal(iroh_raft::FatalError::Removed { .. })
            )
        })
    })
    .await;
    let _ = three.shutdown().await;
    // The ticket still names live members (1 and 2), who refuse it.
    assert_eq!(
        refused(join_with(&from_three).await),
        RefusalKind::IssuerNotMember
    );

    // Through all of it the cluster kept serving.
    let leader = cluster.wait_for_leader().await;
    cluster.node(leader).propose(set("b", "2")).await.unwrap();
    joined.shutdown().await.unwrap();
    cluster.shutdown().await;
}
