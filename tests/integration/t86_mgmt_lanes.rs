//! The management protocol's lanes (pipelined request streams): many calls in flight on one
//! connection each get their own answer, a lane whose framing breaks is refused without
//! harming the connection or the node, and a write whose connection is lost before its answer,
//! or that gets no answer in time once sent, is reported as "outcome unknown", never sent twice
//! and never as "unreachable" (which promises that nothing was sent).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use iroh::{
    SecretKey,
    endpoint::Connection,
    protocol::{AcceptError, ProtocolHandler, Router},
};
use iroh_raft::{
    KvCommand, KvResponse, TicketRole,
    actors::mgmt::GetMgmtState,
    actors::wire::{
        CloseCode, MGMT_ALPN, MGMT_VERSION, MgmtBatch, MgmtCall, MgmtErrorKind, MgmtReader,
        MgmtReply, MgmtRequest, MgmtResponse, MgmtRole, MgmtStatus, encode_mgmt,
        read_mgmt_response,
    },
    mgmt::{ClientError, ClientOptions, IrohRaftManagementClient},
    net::{bind_offline_endpoint, endpoint_peer_addr},
};

use crate::support::{TestCluster, wait_for, wait_for_some};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_connection_each_get_their_own_answer() {
    let cluster =
        TestCluster::start_configured(3, 3, |b| b.remote_reads(iroh_raft::kv::remote_get)).await;
    let (_, ticket) = cluster.leader_ticket(TicketRole::Admin).await;
    let client = IrohRaftManagementClient::connect(&ticket).await.unwrap();
    const N: usize = 300;
    // Writes of distinct keys, all in flight at once: each response is its own command's.
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..N {
        let client = client.clone();
        writes.spawn(async move {
            let cmd = KvCommand::Set {
                key: format!("key-{i}"),
                value: format!("value-{i}"),
            };
            let r: KvResponse = client.propose(&cmd).await.unwrap();
            assert_eq!(
                r.previous, None,
                "key-{i} answered with another call's response"
            );
        });
    }
    while let Some(done) = writes.join_next().await {
        done.unwrap();
    }
    // Reads of distinct keys mixed with status calls: every answer matches its question.
    let mut reads = tokio::task::JoinSet::new();
    for i in 0..N {
        let client = client.clone();
        reads.spawn(async move {
            if i % 10 == 0 {
                let status = client.status().await.unwrap();
                assert_eq!(status.members.len(), 3);
            }
            let value: Option<String> = client.read(&format!("key-{i}")).await.unwrap();
            assert_eq!(value, Some(format!("value-{i}")));
        });
    }
    while let Some(done) = reads.join_next().await {
        done.unwrap();
    }
    // Subscriptions are bounded per connection: the 33rd is refused, and one ended makes room.
    // (The client settles on the leader first: a move would start a fresh connection.)
    wait_for("the client on the leader", || async {
        let status = client.status().await.unwrap();
        client.session().await.unwrap().0 == status.leader
    })
    .await;
    let mut subscriptions = Vec::new();
    for _ in 0..32 {
        subscriptions.push(client.subscribe().await.unwrap());
    }
    let err = client.subscribe().await.err().expect("a 33rd subscription");
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
    drop(subscriptions.pop());
    wait_for("room for a subscription again", || async {
        match client.subscribe().await {
            Ok(s) => {
                drop(s);
                true
            }
            Err(_) => false,
        }
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_moves_to_a_new_leader_by_itself() {
    let cluster = TestCluster::start(3).await;
    let (leader, ticket) = cluster.leader_ticket(TicketRole::Admin).await;
    let client = IrohRaftManagementClient::connect(&ticket).await.unwrap();
    assert_eq!(client.session().await.unwrap().0, leader);
    let target = if leader == 3 { 1 } else { 3 };
    cluster
        .node(leader)
        .transfer_leadership(Some(target))
        .await
        .unwrap();
    // Writes keep working (the old leader forwards them meanwhile), and the replies' leader
    // field brings the client to the new leader without the caller asking for status.
    let mut i = 0;
    wait_for("the client on the new leader", || {
        i += 1;
        let client = client.clone();
        async move {
            let cmd = KvCommand::Set {
                key: format!("moved-{i}"),
                value: "v".into(),
            };
            client.propose::<_, KvResponse>(&cmd).await.unwrap();
            client.session().await.unwrap().0 == target
        }
    })
    .await;
    client.close().await;
    cluster.shutdown().await;
}

/// A raw management connection, admitted with `ticket`.
async fn raw_connection(addr: iroh::EndpointAddr, ticket: &str) -> (iroh::Endpoint, Connection) {
    let ep = bind_offline_endpoint(SecretKey::generate(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let conn = ep.connect(addr, MGMT_ALPN).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = MgmtRequest::Hello {
        version: MGMT_VERSION,
        ticket: Some(ticket.to_string()),
    };
    send.write_all(&encode_mgmt(&hello).unwrap()).await.unwrap();
    send.finish().unwrap();
    let welcome = read_mgmt_response(&mut recv).await.unwrap().unwrap();
    assert!(
        matches!(
            welcome,
            MgmtResponse::Welcome {
                role: MgmtRole::Admin,
                ..
            }
        ),
        "{welcome:?}"
    );
    (ep, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_with_broken_framing_is_refused_and_the_rest_keeps_working() {
    let cluster = TestCluster::start(3).await;
    let (leader, ticket) = cluster.leader_ticket(TicketRole::Admin).await;
    let ticket = ticket.to_string();
    let addr = cluster.addrs[leader as usize - 1].0.clone();
    let (ep, conn) = raw_connection(addr, &ticket).await;

    let garbage: [&[u8]; 3] = [
        // A frame whose bytes are not a call.
        &[
            16, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8,
        ],
        // A length beyond the largest frame.
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        // A stream that ends inside a frame.
        &[100, 0, 0, 0, 1, 2, 3],
    ];
    for bytes in garbage {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        // The node stops reading a broken lane: the client's side may see that, or not.
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        let mut reader = MgmtReader::new();
        let reply = tokio::time::timeout(Duration::from_secs(10), reader.next_reply(&mut recv))
            .await
            .expect("the node answers a broken lane")
            .unwrap()
            .expect("a reply before the end of the lane");
        assert_eq!(reply.id, 0, "{reply:?}");
        assert!(
            matches!(
                reply.response,
                MgmtResponse::Error {
                    kind: MgmtErrorKind::Malformed,
                    ..
                }
            ),
            "{reply:?}"
        );
        // The node ends that lane.
        assert!(reader.next_reply(&mut recv).await.unwrap().is_none());
    }

    // The same connection opens a good lane: two calls in one write, both answered.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut batch = MgmtBatch::new();
    batch
        .push(&MgmtCall {
            id: 7,
            request: MgmtRequest::Health,
            trace: None,
        })
        .unwrap();
    batch
        .push(&MgmtCall {
            id: 8,
            request: MgmtRequest::Status,
            trace: None,
        })
        .unwrap();
    send.write_all(batch.bytes()).await.unwrap();
    send.finish().unwrap();
    let mut reader = MgmtReader::new();
    let mut ids = Vec::new();
    while let Some(MgmtReply { id, response, .. }) = reader.next_reply(&mut recv).await.unwrap() {
        match (id, response) {
            (7, MgmtResponse::Health(_)) | (8, MgmtResponse::Status(_)) => ids.push(id),
            other => panic!("unexpected reply {other:?}"),
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 8]);
    conn.close(0u32.into(), b"done");
    ep.close().await;

    // And the cluster still commits.
    cluster
        .node(leader)
        .propose(KvCommand::Set {
            key: "after".into(),
            value: "garbage".into(),
        })
        .await
        .unwrap();
    cluster.shutdown().await;
}

/// A Hello on a new connection from `ep`: the connection if admitted, else the close code.
async fn hello_from(
    ep: &iroh::Endpoint,
    addr: iroh::EndpointAddr,
    ticket: &str,
) -> Result<Connection, Option<CloseCode>> {
    let conn = ep.connect(addr, MGMT_ALPN).await.map_err(|_| None)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|_| None)?;
    let hello = MgmtRequest::Hello {
        version: MGMT_VERSION,
        ticket: Some(ticket.to_string()),
    };
    let _ = send.write_all(&encode_mgmt(&hello).unwrap()).await;
    let _ = send.finish();
    match read_mgmt_response(&mut recv).await {
        Ok(Some(MgmtResponse::Welcome { .. })) => Ok(conn),
        _ => Err(match conn.close_reason() {
            Some(iroh::endpoint::ConnectionError::ApplicationClosed(c)) => {
                CloseCode::from_u64(c.error_code.into_inner())
            }
            _ => None,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_holds_at_most_sixteen_connections_to_a_node() {
    let cluster = TestCluster::start(1).await;
    let (_, ticket) = cluster.leader_ticket(TicketRole::ReadOnly).await;
    let ticket = ticket.to_string();
    let addr = cluster.addrs[0].0.clone();
    let ep = bind_offline_endpoint(SecretKey::generate(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut conns = Vec::new();
    for _ in 0..16 {
        conns.push(hello_from(&ep, addr.clone(), &ticket).await.unwrap());
    }
    let refused = hello_from(&ep, addr.clone(), &ticket).await.err();
    assert_eq!(refused, Some(Some(CloseCode::TooManyConnections)));
    // Another key is not affected.
    let other = bind_offline_endpoint(SecretKey::generate(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    hello_from(&other, addr.clone(), &ticket).await.unwrap();
    // One connection closed makes room again.
    conns.pop().unwrap().close(0u32.into(), b"done");
    let again = wait_for_some("room for another connection", || {
        let (ep, addr, ticket) = (ep.clone(), addr.clone(), ticket.clone());
        async move { hello_from(&ep, addr, &ticket).await.ok() }
    })
    .await;
    again.close(0u32.into(), b"done");
    other.close().await;
    ep.close().await;
    cluster.shutdown().await;
}

/// The MgmtActor owns the registry: an admitted connection and its subscriptions are counted
/// while they live, per key, and released when they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mgmt_actor_registers_connections_and_subscriptions_while_they_live() {
    let cluster = TestCluster::start(1).await;
    let (leader, ticket) = cluster.leader_ticket(TicketRole::ReadOnly).await;
    let mgmt = cluster.node(leader).actors().mgmt.clone();
    let state = || {
        let mgmt = mgmt.clone();
        async move { mgmt.ask(GetMgmtState).await.unwrap() }
    };
    assert_eq!(state().await.connections, 0);
    let client = IrohRaftManagementClient::connect(&ticket).await.unwrap();
    let events = client.subscribe().await.unwrap();
    let now = state().await;
    assert_eq!((now.connections, now.subscriptions), (1, 1), "{now:?}");
    assert_eq!(now.per_key.values().copied().collect::<Vec<_>>(), vec![1]);
    drop(events);
    wait_for("the subscription released", || async {
        state().await.subscriptions == 0
    })
    .await;
    client.close().await;
    wait_for("the connection released", || async {
        let now = state().await;
        now.connections == 0 && now.per_key.is_empty()
    })
    .await;
    cluster.shutdown().await;
}

/// A connection holds at most `MAX_SUBSCRIPTIONS` subscriptions, and refused attempts do not
/// count against the ones it holds (they once released a slot each, so that retrying opened
/// subscriptions without limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_subscriptions_never_free_a_slot() {
    use iroh_raft::actors::mgmt::MAX_SUBSCRIPTIONS;
    let cluster = TestCluster::start(1).await;
    let (leader, ticket) = cluster.leader_ticket(TicketRole::ReadOnly).await;
    let mgmt = cluster.node(leader).actors().mgmt.clone();
    let client = IrohRaftManagementClient::connect(&ticket).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..MAX_SUBSCRIPTIONS {
        held.push(client.subscribe().await.unwrap());
    }
    for _ in 0..3 {
        assert!(client.subscribe().await.is_err(), "over the limit");
    }
    wait_for("the refusals settled", || async {
        mgmt.ask(GetMgmtState).await.unwrap().subscriptions == MAX_SUBSCRIPTIONS
    })
    .await;
    assert!(client.subscribe().await.is_err(), "still at the limit");
    drop(held);
    client.close().await;
    cluster.shutdown().await;
}

/// A stand-in node: admits anyone, answers Status, and counts proposals; it drops the
/// connection when it receives one, or (`silent`) never answers it. Other requests get no
/// answer.
#[derive(Debug, Clone, Default)]
struct DropsProposals {
    proposals: Arc<AtomicUsize>,
    silent: bool,
}

impl ProtocolHandler for DropsProposals {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let (mut send, mut recv) = conn.accept_bi().await?;
        let _hello = iroh_raft::actors::wire::read_mgmt_request(&mut recv).await;
        let welcome = MgmtResponse::Welcome {
            node_id: 1,
            role: MgmtRole::Admin,
        };
        let _ = send.write_all(&encode_mgmt(&welcome).unwrap()).await;
        let _ = send.finish();
        // Lanes are served concurrently, as a node does.
        let mut lanes = tokio::task::JoinSet::new();
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let (conn, proposals, silent) = (conn.clone(), self.proposals.clone(), self.silent);
            lanes.spawn(async move {
                let mut reader = MgmtReader::new();
                while let Ok(Some(MgmtCall { id, request, .. })) = reader.next_call(&mut recv).await
                {
                    let response = match request {
                        MgmtRequest::Status => MgmtResponse::Status(MgmtStatus {
                            node_id: 1,
                            cluster_id: [0; 16],
                            leader: 0,
                            term: 1,
                            commit_index: 0,
                            applied_index: 0,
                            role: "follower".into(),
                            members: Vec::new(),
                            db_size_bytes: 0,
                            version: String::new(),
                        }),
                        MgmtRequest::Propose { .. } => {
                            proposals.fetch_add(1, Ordering::SeqCst);
                            if silent {
                                continue;
                            }
                            conn.close(1u32.into(), b"gone mid-request");
                            return;
                        }
                        _ => continue,
                    };
                    let mut batch = MgmtBatch::new();
                    batch
                        .push(&MgmtReply {
                            id,
                            leader: 0,
                            response,
                        })
                        .unwrap();
                    if send.write_all(batch.bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_connection_is_lost_is_reported_unknown_and_not_resent() {
    let ep = bind_offline_endpoint(SecretKey::generate(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let handler = DropsProposals::default();
    let router = Router::builder(ep.clone())
        .accept(MGMT_ALPN, handler.clone())
        .spawn();
    let addr = endpoint_peer_addr(&ep).0;
    let client = IrohRaftManagementClient::connect_with(None, vec![addr], None)
        .await
        .unwrap();
    let cmd = KvCommand::Set {
        key: "k".into(),
        value: "v".into(),
    };
    let err = client.propose::<_, KvResponse>(&cmd).await.unwrap_err();
    assert!(matches!(err, ClientError::OutcomeUnknown { .. }), "{err:?}");
    assert_eq!(handler.proposals.load(Ordering::SeqCst), 1, "resent");
    // A read-only request is simply asked again, on a new connection.
    client.status().await.unwrap();
    client.close().await;
    router.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_write_without_an_answer_in_time_is_outcome_unknown_never_unreachable() {
    let ep = bind_offline_endpoint(SecretKey::generate(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let handler = DropsProposals {
        silent: true,
        ..DropsProposals::default()
    };
    let router = Router::builder(ep.clone())
        .accept(MGMT_ALPN, handler.clone())
        .spawn();
    // A member that never answers comes first: it costs nothing while the other one answers.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nobody = iroh::EndpointAddr::new(SecretKey::generate().public())
        .with_ip_addr(hole.local_addr().unwrap());
    let options = ClientOptions::default().timeout(Duration::from_millis(500));
    let members = vec![nobody.clone(), endpoint_peer_addr(&ep).0];
    let client = IrohRaftManagementClient::new(members, None, options.clone())
        .await
        .unwrap();
    client.status().await.unwrap();
    // The write left: it may be applied later, whatever the client hears now.
    let err = client
        .propose::<_, KvResponse>(&KvCommand::Delete { key: "k".into() })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::OutcomeUnknown { .. }), "{err:?}");
    assert_eq!(handler.proposals.load(Ordering::SeqCst), 1, "resent");
    // A request without effect that was sent and not answered is a timeout, not unreachable.
    let err = client.health().await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
    client.close().await;
    // No member admits the client in time: nothing was sent, and it says so.
    let alone = IrohRaftManagementClient::new(vec![nobody], None, options)
        .await
        .unwrap();
    let err = alone
        .propose::<_, KvResponse>(&KvCommand::Delete { key: "k".into() })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    alone.close().await;
    router.shutdown().await.unwrap();
}

/// The MgmtActor runs one workflow per change: the same join asked again waits on the one
/// running (one run, two waiters, one answer for both); the same join with other parameters is
/// refused at once as a change in progress and leaves the running one alone. A workflow cut
/// short by the node's stop answers every waiter `Interrupted` (its change may still apply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_join_asked_twice_runs_once_and_other_parameters_are_in_progress() {
    use iroh_raft::{
        JoinOptions, ProposeError,
        actors::mgmt::{Join, Workflow},
    };
    let cluster = TestCluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    let mgmt = cluster.node(leader).actors().mgmt.clone();
    // Nobody answers at this address: the learner never catches up, so the join keeps running
    // (well past the test) until the node stops.
    let nobody = iroh::EndpointAddr::new(SecretKey::generate().public());
    let join = |max_lag| Join {
        id: 7,
        addr: nobody.clone(),
        options: JoinOptions {
            max_lag,
            timeout: Duration::from_secs(120),
        },
    };
    let ask = |msg: Join| {
        let mgmt = mgmt.clone();
        tokio::spawn(async move { mgmt.ask(msg).await })
    };
    let state = || {
        let mgmt = mgmt.clone();
        async move { mgmt.ask(GetMgmtState).await.unwrap() }
    };
    let first = ask(join(0));
    wait_for("the join running", || async { state().await.waiters == 1 }).await;
    let second = ask(join(0));
    wait_for("the same join waiting on it", || async {
        state().await.waiters == 2
    })
    .await;
    let now = state().await;
    let expected = Workflow::Join {
        id: 7,
        endpoint: nobody.id,
    };
    assert_eq!(now.workflows, vec![expected], "{now:?}");

    let other = mgmt.ask(join(5)).await;
    assert!(
        matches!(
            other,
            Err(kameo::error::SendError::HandlerError(
                ProposeError::Membership(iroh_raft::MembershipRefusal::InProgress)
            ))
        ),
        "{other:?}"
    );
    assert_eq!(
        state().await.waiters,
        2,
        "the refused join joined the waiters"
    );
    assert!(!first.is_finished() && !second.is_finished());

    cluster.shutdown().await;
    // Both waiters hear the one run's answer: cut short by the stop, its outcome is unknown.
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    let answer = |r: Result<u64, kameo::error::SendError<Join, ProposeError>>| match r {
        Err(kameo::error::SendError::HandlerError(e)) => e,
        other => panic!("a join cut short by the stop answered {other:?}"),
    };
    let (first, second) = (answer(first), answer(second));
    assert!(
        matches!(
            first,
            ProposeError::Interrupted | ProposeError::ShuttingDown
        ),
        "{first:?}"
    );
    assert_eq!(first.to_string(), second.to_string());
}
