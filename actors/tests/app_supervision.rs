//! The node inside an application's own supervision tree: its supervisor is a child of the
//! application's, a crashed RaftActor is restarted from durable state without touching the
//! application's other actors, and a node that stops for good reaches the application's
//! supervisor as an abnormal stop with its typed reason.

use std::{
    ops::ControlFlow,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

mod support;

use iroh::SecretKey;
use iroh_raft_actors::{
    FatalError, LogDb, Propose, ProposeError, StateMachineSource, SupervisorParent, node_failure,
};
use kameo::{
    Actor,
    actor::{ActorId, ActorRef, Spawn, WeakActorRef},
    error::{ActorStopReason, Infallible, SendError},
    message::{Context, Message},
};
use redb::backends::InMemoryBackend;
use support::{FailingDisk, Recorder, arm_crash, propose, start_single_under, values, wait_leader};
use tokio::sync::mpsc;

fn encode(value: u64) -> Vec<u8> {
    postcard::to_allocvec(&value).unwrap()
}

/// How long a condition may take to come true before the test fails.
const WAIT: Duration = Duration::from_secs(20);

/// The application's supervisor: reports every child that stops for good.
struct App {
    deaths: mpsc::UnboundedSender<(ActorId, ActorStopReason)>,
}

impl Actor for App {
    type Args = mpsc::UnboundedSender<(ActorId, ActorStopReason)>;
    type Error = Infallible;

    async fn on_start(deaths: Self::Args, _: ActorRef<Self>) -> Result<Self, Infallible> {
        Ok(Self { deaths })
    }

    async fn on_link_died(
        &mut self,
        _: WeakActorRef<Self>,
        id: ActorId,
        reason: ActorStopReason,
    ) -> Result<ControlFlow<ActorStopReason>, Infallible> {
        let _ = self.deaths.send((id, reason));
        Ok(ControlFlow::Continue(()))
    }
}

/// The application's other actor, a sibling of the node.
struct Sibling {
    count: u64,
}

impl Actor for Sibling {
    type Args = Arc<AtomicU32>;
    type Error = Infallible;

    async fn on_start(starts: Self::Args, _: ActorRef<Self>) -> Result<Self, Infallible> {
        starts.fetch_add(1, Ordering::SeqCst);
        Ok(Self { count: 0 })
    }
}

struct Ping;

impl Message<Ping> for Sibling {
    type Reply = u64;

    async fn handle(&mut self, _: Ping, _: &mut Context<Self, u64>) -> u64 {
        self.count += 1;
        self.count
    }
}

struct Tree {
    app: ActorRef<App>,
    deaths: mpsc::UnboundedReceiver<(ActorId, ActorStopReason)>,
    sibling: ActorRef<Sibling>,
    sibling_starts: Arc<AtomicU32>,
}

async fn tree() -> Tree {
    let (tx, deaths) = mpsc::unbounded_channel();
    let app = App::spawn(tx);
    let sibling_starts = Arc::new(AtomicU32::new(0));
    let sibling = Sibling::supervise(&app, sibling_starts.clone())
        .spawn()
        .await;
    Tree {
        app,
        deaths,
        sibling,
        sibling_starts,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_raft_actor_restarts_in_place_and_the_application_is_untouched() {
    let mut t = tree().await;
    let db = LogDb::with_backend(InMemoryBackend::new(), "app-crash".into()).unwrap();
    let source = StateMachineSource::factory(Recorder::default);
    let parent = Some(SupervisorParent::of(&t.app));
    let node = start_single_under(db, SecretKey::generate(), source, parent, |_| {}).await;
    wait_leader(&node).await;
    for v in 1..=5 {
        propose(&node, v).await.unwrap();
    }
    assert_eq!(t.sibling.ask(Ping).await.unwrap(), 1);

    const CRASH: u64 = 0xdead;
    arm_crash(CRASH);
    // The crash happens while applying it: the actor stops with the request in hand.
    let crashed = node.raft.ask(Propose::new(encode(CRASH))).await;
    assert!(
        matches!(crashed, Err(SendError::ActorStopped)),
        "{crashed:?}"
    );
    // The same RaftActor reference serves again: restarted from durable state (the crashing
    // entry replayed, now harmless), writes continue.
    tokio::time::timeout(WAIT, async {
        while propose(&node, 6).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("writes continue after the restart");
    assert_eq!(values(&node).await, (1..=6).chain([CRASH]).collect());

    // The application's sibling kept its state and was never restarted; the application saw no
    // stop.
    assert_eq!(t.sibling.ask(Ping).await.unwrap(), 2);
    assert_eq!(t.sibling_starts.load(Ordering::SeqCst), 1);
    assert!(t.deaths.try_recv().is_err());
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_storage_failure_reaches_the_application_as_an_abnormal_stop() {
    let mut t = tree().await;
    let fail = Arc::new(AtomicBool::new(false));
    let disk = FailingDisk {
        inner: InMemoryBackend::new(),
        fail: fail.clone(),
    };
    let db = LogDb::with_backend(disk, "app-disk".into()).unwrap();
    let source = StateMachineSource::factory(Recorder::default);
    let parent = Some(SupervisorParent::of(&t.app));
    let node = start_single_under(db, SecretKey::generate(), source, parent, |_| {}).await;
    wait_leader(&node).await;
    propose(&node, 1).await.unwrap();

    fail.store(true, Ordering::SeqCst);
    let err = propose(&node, 2).await.unwrap_err();
    assert!(
        matches!(err, ProposeError::Fatal(FatalError::Storage(_))),
        "{err:?}"
    );
    let (id, reason) = tokio::time::timeout(WAIT, t.deaths.recv())
        .await
        .expect("the application's supervisor heard of the stop")
        .unwrap();
    assert_eq!(id, node.supervisor.id());
    assert!(!matches!(reason, ActorStopReason::Normal), "{reason:?}");
    let typed = node_failure(&reason);
    assert!(matches!(typed, Some(FatalError::Storage(_))), "{typed:?}");
    // The rest of the application runs on.
    assert_eq!(t.sibling.ask(Ping).await.unwrap(), 1);
    assert!(matches!(node.shutdown().await, Err(FatalError::Storage(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_state_machine_factory_says_so_when_its_raft_actor_crashes() {
    let mut t = tree().await;
    let db = LogDb::with_backend(InMemoryBackend::new(), "app-instance".into()).unwrap();
    let source = StateMachineSource::instance(Recorder::default());
    let parent = Some(SupervisorParent::of(&t.app));
    let node = start_single_under(db, SecretKey::generate(), source, parent, |_| {}).await;
    wait_leader(&node).await;
    propose(&node, 1).await.unwrap();
    arm_crash(0xbeef);
    let _ = node.raft.ask(Propose::new(encode(0xbeef))).await;
    let (_, reason) = tokio::time::timeout(WAIT, t.deaths.recv())
        .await
        .expect("the application's supervisor heard of the stop")
        .unwrap();
    match node_failure(&reason) {
        Some(FatalError::ActorStopped { actor, reason }) => {
            assert_eq!(actor, "RaftActor");
            assert!(reason.contains("injected crash"), "{reason}");
            assert!(reason.contains("factory"), "{reason}");
        }
        other => panic!("expected the RaftActor's stop, got {other:?}"),
    }
    let _ = node.shutdown().await;
}
