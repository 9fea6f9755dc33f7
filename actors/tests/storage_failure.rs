//! A disk that starts failing turns into a typed fatal error for the node: no panic, no
//! acknowledgement of anything that did not reach the disk.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

mod support;

use iroh::SecretKey;
use iroh_raft_actors::{
    Close, ClusterEvent, DiscardSnapshot, EventItem, FatalError, Flush, GetStatus, LogDb,
    NewSnapshotId, PersistProgress, ProposeError, StorageActor, StorageArgs, Subscribe, WriteChunk,
};
use kameo::{actor::Spawn, error::SendError};
use redb::backends::InMemoryBackend;
use support::{FailingDisk, propose, start_single, wait_leader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_is_a_typed_fatal_error_and_nothing_more_is_acknowledged() {
    let fail = Arc::new(AtomicBool::new(false));
    let disk = FailingDisk {
        inner: InMemoryBackend::new(),
        fail: fail.clone(),
    };
    let db = LogDb::with_backend(disk, "failing-disk".into()).unwrap();
    let node = start_single(db, SecretKey::generate(), |_| {}).await;
    wait_leader(&node).await;
    assert_eq!(propose(&node, 2).await.unwrap(), 1);
    assert_eq!(propose(&node, 3).await.unwrap(), 2);

    let before = node.raft.ask(GetStatus).await.unwrap().applied_index;
    // Everything the node applies is announced on its event bus (which outlives the stop).
    let mut events = node.events.ask(Subscribe).await.unwrap();
    fail.store(true, Ordering::SeqCst);
    let err = propose(&node, 10).await.unwrap_err();
    assert!(
        matches!(err, ProposeError::Fatal(FatalError::Storage(_))),
        "{err:?}"
    );
    // The node keeps answering, with the same typed reason.
    let again = propose(&node, 1).await.unwrap_err();
    assert!(
        matches!(again, ProposeError::Fatal(FatalError::Storage(_))),
        "{again:?}"
    );
    // Nothing after the failure was applied: up to the node's stop, no entry past `before`.
    loop {
        match events.next().await {
            Some(EventItem::Event(ClusterEvent::Applied { index })) => {
                assert!(index <= before, "entry {index} applied after the failure");
            }
            Some(EventItem::Event(ClusterEvent::NodeStopped { .. })) | None => break,
            Some(_) => {}
        }
    }
    assert!(matches!(node.shutdown().await, Err(FatalError::Storage(_))));
}

/// Snapshot discards are sent with `tell`; in kameo an `Err` answered to a `tell` stops the
/// receiver, so a discard that fails must not answer one (it used to, and the StorageActor of
/// a node whose disk hiccuped during a snapshot transfer stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_discard_leaves_the_storage_actor_running() {
    let db = LogDb::with_backend(InMemoryBackend::new(), "discard".into()).unwrap();
    let (_batches, requests) = flume::bounded(4);
    let (progress, _seen) = tokio::sync::watch::channel(PersistProgress::default());
    let storage = StorageActor::spawn(StorageArgs {
        db: db.handle(),
        requests,
        progress,
        fsync: true,
        node_id: 1,
        metrics: Default::default(),
    });
    // A snapshot's chunks are stored, then the discard fails: the actor's database is closed
    // (the deterministic way to fail it; an injected disk error did not reach a non-durable
    // discard before redb's next durable commit).
    let id = storage.ask(NewSnapshotId).await.unwrap();
    let bytes = vec![7; 4096];
    storage.ask(WriteChunk { id, no: 0, bytes }).await.unwrap();
    storage.ask(Close).await.unwrap();
    storage.tell(DiscardSnapshot { id }).await.unwrap();
    // The next message is handled by a running actor (its answer: the database is closed).
    let flushed = storage.ask(Flush).await;
    assert!(
        matches!(flushed, Err(SendError::HandlerError(_))),
        "the StorageActor stopped: {flushed:?}"
    );
    assert!(storage.is_alive());
}
