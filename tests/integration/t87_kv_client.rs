//! The built-in KV store from Rust through the management client (issue 17): revisions, prefix
//! and range reads, a transaction whose changes a watch receives as one revision, a watch
//! resumed from a revision, a node without a remote watcher saying so, and a member's address
//! update (the key cannot change with it).

use std::time::Duration;

use iroh_raft::{
    TicketRole,
    actors::wire::MgmtErrorKind,
    kv::{Compare, CompareOp, CompareTarget, Txn, TxnOp, TxnOpResult, WatchEventKind, WatchQuery},
    mgmt::{ClientError, IrohRaftManagementClient, KvWatch},
};

use crate::support::{TestCluster, wait_for};

const LONG: Duration = Duration::from_secs(30);

async fn next_batch(w: &mut KvWatch) -> iroh_raft::kv::WatchBatch {
    tokio::time::timeout(LONG, w.next())
        .await
        .expect("a batch in time")
        .expect("the stream goes on")
        .expect("a batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_verbs_watch_and_address_updates_through_the_client() {
    let cluster = TestCluster::start_configured(3, 3, |b| {
        b.remote_reads(iroh_raft::kv::remote_query)
            .remote_watches(iroh_raft::kv::remote_watch)
    })
    .await;
    let (_, ticket) = cluster.leader_ticket(TicketRole::Admin).await;
    let client = IrohRaftManagementClient::connect(&ticket).await.unwrap();

    // A watch from the next change: its first (empty) batch says where it starts.
    let query = WatchQuery {
        key: "cfg/".into(),
        prefix: true,
        start_revision: 0,
    };
    let mut watch = client.kv_watch(&query).await.unwrap();
    let first = next_batch(&mut watch).await;
    assert!(first.events.is_empty());
    assert_eq!(watch.next_revision(), first.revision + 1);

    let a = client.kv_put("cfg/a", "1").await.unwrap();
    client.kv_put("other", "x").await.unwrap();
    let got = client.kv_get("cfg/a").await.unwrap().unwrap();
    assert_eq!(
        (got.create_revision, got.mod_revision, got.version),
        (a.revision, a.revision, 1)
    );
    // One transaction: compares, then two changes at one revision.
    let txn = Txn {
        compare: vec![Compare {
            key: "cfg/a".into(),
            target: CompareTarget::Version(1),
            op: CompareOp::Equal,
        }],
        success: vec![
            TxnOp::Put {
                key: "cfg/b".into(),
                value: "2".into(),
            },
            TxnOp::Delete {
                key: "cfg/a".into(),
            },
            TxnOp::Get {
                key: "cfg/b".into(),
            },
        ],
        failure: vec![],
    };
    let r = client.kv_txn(txn.clone()).await.unwrap();
    assert!(r.applied);
    assert_eq!(r.revision, a.revision + 2);
    assert!(matches!(&r.results[2], TxnOpResult::Get { kv: Some(kv) } if kv.value == "2"));
    // Again: the compare fails, nothing changes.
    let again = client.kv_txn(txn).await.unwrap();
    assert!(!again.applied);
    assert_eq!(again.revision, r.revision);

    let under = client.kv_prefix("cfg/", 0).await.unwrap();
    let keys: Vec<_> = under.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["cfg/b"]);
    let range = client.kv_range("a", None, 1).await.unwrap();
    assert!(range.more);
    assert_eq!(range.kvs[0].key, "cfg/b");

    // The watch saw the put, then the transaction's two changes together (not `other`).
    let mut events = Vec::new();
    while events.len() < 3 {
        let batch = next_batch(&mut watch).await;
        events.extend(batch.events);
    }
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.kv.key.as_str(), e.kv.mod_revision))
        .collect();
    assert_eq!(
        seen,
        [
            (WatchEventKind::Put, "cfg/a", a.revision),
            (WatchEventKind::Put, "cfg/b", r.revision),
            (WatchEventKind::Delete, "cfg/a", r.revision),
        ]
    );
    assert_eq!(watch.next_revision(), r.revision + 1);
    drop(watch);
    // Resumed from a revision: the same changes again, from there on.
    let from = WatchQuery {
        start_revision: r.revision,
        ..query
    };
    let mut resumed = client.kv_watch(&from).await.unwrap();
    let batch = next_batch(&mut resumed).await;
    assert_eq!(batch.events.len(), 2);
    assert!(batch.events.iter().all(|e| e.kv.mod_revision == r.revision));

    // More changes than a member keeps (one transaction of them): a watch from revision 1 is
    // refused with what to do, once the member it reaches has applied them.
    let bulk = Txn {
        success: (0..=iroh_raft::kv::WATCH_HISTORY)
            .map(|i| TxnOp::Put {
                key: format!("bulk/{i:05}"),
                value: "x".into(),
            })
            .collect(),
        ..Txn::default()
    };
    assert!(client.kv_txn(bulk).await.unwrap().applied);
    let from_the_start = WatchQuery {
        key: "cfg/".into(),
        prefix: true,
        start_revision: 1,
    };
    wait_for("a watch from revision 1 refused as no longer kept", || {
        let client = client.clone();
        let query = from_the_start.clone();
        async move {
            match client.kv_watch(&query).await {
                Err(ClientError::Failed {
                    kind: MgmtErrorKind::Refused,
                    message,
                }) => {
                    assert!(message.contains("no longer kept"), "{message}");
                    true
                }
                // A member that has not applied the transaction yet still keeps revision 1.
                Ok(_) => false,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;

    // A member's new address is replicated; a new key is refused.
    let mut moved = cluster.addrs[1].0.clone();
    moved = moved.with_ip_addr("127.0.0.1:1".parse().unwrap());
    client.update_address(2, &moved).await.unwrap();
    wait_for("the new address in every member's status", || {
        let client = client.clone();
        async move {
            let status = client.status().await.unwrap();
            status
                .members
                .iter()
                .any(|m| m.id == 2 && m.addrs.iter().any(|a| a == "127.0.0.1:1"))
        }
    })
    .await;
    let other_key = cluster.addrs[2].0.clone();
    match client.update_address(2, &other_key).await {
        Err(ClientError::Failed {
            kind: MgmtErrorKind::Refused,
            message,
        }) => assert!(message.contains("keeps the key"), "{message}"),
        other => panic!("a key change was not refused: {other:?}"),
    }
    // The cluster still commits (node 2 keeps its connections; it was reachable).
    client.kv_put("after", "1").await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_remote_watcher_says_so() {
    let cluster = TestCluster::start(1).await;
    let (_, ticket) = cluster.leader_ticket(TicketRole::Admin).await;
    let client = IrohRaftManagementClient::connect(&ticket).await.unwrap();
    let query = WatchQuery {
        key: "k".into(),
        prefix: false,
        start_revision: 0,
    };
    match client.kv_watch(&query).await {
        Err(ClientError::Failed {
            kind: MgmtErrorKind::Unsupported,
            ..
        }) => {}
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
    cluster.shutdown().await;
}
