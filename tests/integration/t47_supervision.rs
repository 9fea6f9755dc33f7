use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
};

use iroh_raft::{
    ClusterEvent, EventItem, FatalError, KeyValueStore, KvCommand, KvResponse, KvSnapshot, Preset,
    ProposeError, RaftCluster, ReadError, StateMachine,
};

use crate::support::{WAIT, set, wait_for};

/// The KV store, except that applying `key == "crash"` panics while `armed` is set (and
/// `poison` always panics).
struct Fragile {
    kv: KeyValueStore,
    armed: Arc<AtomicBool>,
}

impl StateMachine for Fragile {
    type Command = KvCommand;
    type Response = KvResponse;
    type Snapshot = KvSnapshot;

    fn apply(&mut self, command: KvCommand) -> KvResponse {
        if let KvCommand::Set { key, .. } = &command {
            if key == "crash" && self.armed.swap(false, Ordering::SeqCst) {
                panic!("injected crash");
            }
            if key == "poison" {
                panic!("injected poison");
            }
        }
        self.kv.apply(command)
    }

    fn snapshot(&self) -> KvSnapshot {
        self.kv.snapshot()
    }

    fn restore(&mut self, input: &mut dyn io::Read) -> io::Result<()> {
        self.kv.restore(input)
    }
}

async fn single_node(
    dir: &std::path::Path,
    armed: Arc<AtomicBool>,
    starts: Arc<AtomicU32>,
) -> RaftCluster<Fragile> {
    RaftCluster::builder()
        .node_id(1)
        .data_dir(dir)
        .preset(Preset::Testing)
        .state_machine_factory(move || {
            starts.fetch_add(1, Ordering::SeqCst);
            Fragile {
                kv: KeyValueStore::new(),
                armed: armed.clone(),
            }
        })
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_raft_actor_restarts_from_durable_state() {
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    let starts = Arc::new(AtomicU32::new(0));
    let node = single_node(dir.path(), armed, starts.clone()).await;
    wait_for("leadership", || async { node.leader().await == Some(1) }).await;
    for i in 0..20 {
        node.propose(set(format!("k{i}"), "v")).await.unwrap();
    }
    // The crash happens while applying this command: its outcome is unknown to the caller.
    let crashed = node.propose(set("crash", "1")).await;
    assert!(
        matches!(crashed, Err(ProposeError::Interrupted)),
        "{crashed:?}"
    );
    wait_for("one restart with a fresh state machine", || async {
        starts.load(Ordering::SeqCst) == 2
    })
    .await;

    // The restarted actor replayed the log (the crashing entry included, now harmless) and
    // serves again through the same handle.
    wait_for("leadership after restart", || async {
        node.leader().await == Some(1)
    })
    .await;
    node.propose(set("after", "restart")).await.unwrap();
    let (len, crash) = node
        .linearizable_query(|f: &Fragile| (f.kv.len(), f.kv.get("crash").cloned()))
        .await
        .unwrap();
    assert_eq!(len, 22);
    assert_eq!(crash.as_deref(), Some("1"));
    assert_eq!(starts.load(Ordering::SeqCst), 2);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_stops_the_node_with_a_fatal_error_after_bounded_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let starts = Arc::new(AtomicU32::new(0));
    let node = single_node(dir.path(), Arc::new(AtomicBool::new(false)), starts.clone()).await;
    wait_for("leadership", || async { node.leader().await == Some(1) }).await;
    node.propose(set("fine", "1")).await.unwrap();
    let mut events = node.subscribe().await.unwrap();
    let _ = node.propose(set("poison", "1")).await;
    // The handle learns of the stop by itself, and tells its subscribers.
    let stopped = tokio::time::timeout(WAIT, node.stopped())
        .await
        .expect("the node reported its stop");
    assert!(
        matches!(stopped, Some(FatalError::ActorStopped { .. })),
        "{stopped:?}"
    );
    let event = tokio::time::timeout(WAIT, async {
        while let Some(item) = events.next().await {
            if let EventItem::Event(ClusterEvent::NodeStopped {
                removed, reason, ..
            }) = item
            {
                return Some((removed, reason));
            }
        }
        None
    })
    .await
    .expect("a NodeStopped event");
    assert!(matches!(event, Some((false, _))), "{event:?}");
    // Every call reports it, status and subscriptions included.
    assert!(node.fatal_error().is_some());
    assert!(matches!(node.status().await, Err(ReadError::Fatal(_))));
    assert!(matches!(node.subscribe().await, Err(ReadError::Fatal(_))));
    assert!(matches!(node.members().await, Err(ReadError::Fatal(_))));
    wait_for("the supervisor to give up", || async {
        matches!(
            node.propose(set("x", "y")).await,
            Err(ProposeError::Fatal(FatalError::ActorStopped {
                actor: "RaftActor",
                ..
            }))
        )
    })
    .await;
    assert_eq!(
        starts.load(Ordering::SeqCst),
        1 + iroh_raft::actors::MAX_RESTARTS
    );
    assert!(
        node.shutdown().await.is_err(),
        "shutdown reports the fatal error"
    );
}
