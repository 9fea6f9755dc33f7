//! Joining by ticket over the discovery protocol: a good ticket admits a node (learner, then
//! voter); expired, forged, foreign, wrong-role tickets and tickets whose issuer was removed are
//! each refused with their own reason, and the cluster is unaffected. A join that a member
//! admitted but did not finish keeps its node, which finishes joining when built again.

use std::time::{Duration, SystemTime};

use iroh_raft::{
    BuildError, KeyValueStore, Preset, RaftCluster, Ticket, TicketRole, actors::wire::RefusalKind,
};

use crate::support::{TestCluster, set, wait_for, wait_for_some};

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
    // The handle reports the removal on every call, and to whoever waits for its stop.
    let stopped = tokio::time::timeout(crate::support::WAIT, three.stopped()).await;
    assert!(
        matches!(stopped, Ok(Some(iroh_raft::FatalError::Removed { .. }))),
        "{stopped:?}"
    );
    assert!(matches!(
        three.status().await,
        Err(iroh_raft::ReadError::Fatal(
            iroh_raft::FatalError::Removed { .. }
        ))
    ));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_admitted_but_not_finished_keeps_its_node_and_finishes_when_built_again() {
    // Node 1 brings newcomers in patiently; node 2 gives up on a promotion at once (the
    // newcomer cannot have caught up): it admits a learner, then fails the join.
    let mut cluster = TestCluster::start_with(2, 1).await;
    let impatient = iroh_raft::JoinOptions {
        max_lag: 0,
        timeout: Duration::from_millis(1),
    };
    let two = crate::support::build_on_port(|| {
        cluster
            .builder(1)
            .bind_address(cluster.port(1))
            .join_options(impatient)
    })
    .await;
    cluster.nodes[1] = Some(two);
    let leader = cluster.wait_for_leader().await;
    cluster.node(leader).propose(set("a", "1")).await.unwrap();
    let day = Duration::from_secs(86_400);
    let like = cluster.node(1).ticket(TicketRole::Join, day).await.unwrap();
    let only = |i: usize| {
        let key = iroh_raft::net::load_or_create_secret_key(&cluster.data_dir(i)).unwrap();
        let members = vec![cluster.addrs[i].0.clone()];
        Ticket::issue(
            &key,
            like.cluster_id,
            members,
            TicketRole::Join,
            SystemTime::now() + day,
        )
    };

    let dir = tempfile::tempdir().unwrap();
    let builder = |ticket: Ticket, bind: Option<String>| {
        let b = RaftCluster::builder()
            .data_dir(dir.path())
            .state_machine(KeyValueStore::new())
            .preset(Preset::Testing)
            .join_ticket(ticket);
        match bind {
            Some(bind) => b.bind_address(bind),
            None => b,
        }
    };
    let err = builder(only(1), None).build().await.unwrap_err();
    assert!(
        matches!(err, BuildError::JoinIncomplete { node: 3, .. }),
        "{err}"
    );
    // The node is a member now: its data dir is kept, marked, with the address it was given.
    let mark = std::fs::read_to_string(dir.path().join(iroh_raft::JOIN_PENDING_FILE)).unwrap();
    let bind = mark
        .lines()
        .find_map(|l| l.strip_prefix("bind="))
        .expect("the address in the mark")
        .to_owned();
    assert!(dir.path().join(iroh_raft::DB_FILE).exists());

    // Built again with a ticket of a member that finishes joins: the same node, now a voter.
    // (The first attempt's endpoint lets go of its address once its close has drained.)
    let three = wait_for_some("node 3 built again on its address", || {
        let attempt = builder(only(0), Some(bind.clone())).build();
        async move {
            match attempt.await {
                Err(BuildError::Bind { .. }) => None,
                other => Some(other.unwrap()),
            }
        }
    })
    .await;
    assert_eq!(three.node_id(), 3);
    assert!(!dir.path().join(iroh_raft::JOIN_PENDING_FILE).exists());
    wait_for("node 3 to be a voter", || async {
        let members = cluster.node(leader).members().await.unwrap();
        members.voters() == vec![1, 2, 3]
    })
    .await;
    let read = three
        .linearizable_query(|kv| kv.get("a").cloned())
        .await
        .unwrap();
    assert_eq!(read.as_deref(), Some("1"));
    three.shutdown().await.unwrap();
    cluster.shutdown().await;
}

/// A discovery "member" that reads a join request and hangs up without answering (it could
/// have admitted the node first).
#[derive(Debug, Clone)]
struct ReadsAndHangsUp;

impl iroh::protocol::ProtocolHandler for ReadsAndHangsUp {
    async fn accept(
        &self,
        conn: iroh::endpoint::Connection,
    ) -> Result<(), iroh::protocol::AcceptError> {
        let (_send, mut recv) = conn.accept_bi().await?;
        let mut buf = [0u8; 64];
        let _ = recv.read(&mut buf).await;
        conn.close(1u32.into(), b"gone");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_sent_but_unanswered_keeps_only_the_key_and_a_retry_uses_it() {
    let cluster = TestCluster::start(3).await;
    let ticket = cluster
        .node(1)
        .ticket(TicketRole::Join, Duration::from_secs(86_400))
        .await
        .unwrap();
    let ep = iroh_raft::net::bind_offline_endpoint(
        iroh::SecretKey::generate(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let _router = iroh::protocol::Router::builder(ep.clone())
        .accept(iroh_raft::actors::wire::DISCOVERY_ALPN, ReadsAndHangsUp)
        .spawn();
    let mut unanswered = ticket.clone();
    unanswered.members = vec![iroh_raft::net::endpoint_peer_addr(&ep).0];

    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("node");
    let build = |ticket: &Ticket| {
        RaftCluster::builder()
            .data_dir(&dir)
            .state_machine(KeyValueStore::new())
            .preset(Preset::Testing)
            .join_ticket(ticket.clone())
            .build()
    };
    let Err(err) = build(&unanswered).await else {
        panic!("joined although no member answered");
    };
    assert!(
        matches!(err, BuildError::JoinOutcomeUnknown { .. }),
        "a sent request is never reported as unreachable: {err}"
    );
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, [iroh_raft::net::SECRET_KEY_FILE]);
    let key = iroh_raft::net::load_or_create_secret_key(&dir).unwrap();

    // Again with the same data dir and a ticket the cluster answers: the same key joins.
    let joined = build(&ticket).await.unwrap();
    assert_eq!(joined.endpoint_id(), key.public());
    joined.shutdown().await.unwrap();
    cluster.shutdown().await;
}
