//! A node inside the application's own kameo supervision tree, on the application's own iroh
//! `Router`.
//!
//! The application's supervisor (`App`) has two children: its own `Counter` actor and the
//! node's supervisor (`.supervised_by(&app)`). The node restarts its own crashed actors in
//! place (a panic in `apply` below is restarted from durable state: the same handle serves on,
//! and `Counter` never notices); when the node stops for good (removed, storage failure, corrupt
//! data) `App::on_link_died` receives an abnormal stop whose typed reason
//! `iroh_raft::actors::node_failure` gives back, and the application decides what to do.
//!
//! The node's three protocols are mounted on the application's router, one ALPN each:
//! consensus (`wire::ALPN`), management (`wire::MGMT_ALPN`) and discovery
//! (`wire::DISCOVERY_ALPN`), beside whatever else the application serves.
//!
//! Run: `cargo run --example custom_supervision`

use std::{
    io,
    ops::ControlFlow,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use iroh::protocol::Router;
use iroh_raft::{
    KeyValueStore, KvCommand, KvResponse, KvSnapshot, Preset, ProposeError, RaftCluster,
    StateMachine,
    actors::{
        node_failure,
        wire::{ALPN, DISCOVERY_ALPN, MGMT_ALPN},
    },
    net::bind_offline_endpoint,
};
use kameo::{
    Actor,
    actor::{ActorId, ActorRef, Spawn, WeakActorRef},
    error::{ActorStopReason, Infallible},
    message::{Context, Message},
};

/// Set to make the next `crash` command panic while it is applied (once).
static CRASH: AtomicBool = AtomicBool::new(false);

/// The KV store, with a crash that can be injected.
struct Store(KeyValueStore);

impl StateMachine for Store {
    type Command = KvCommand;
    type Response = KvResponse;
    type Snapshot = KvSnapshot;

    fn apply(&mut self, command: KvCommand) -> KvResponse {
        if matches!(&command, KvCommand::Set { key, .. } if key == "crash")
            && CRASH.swap(false, Ordering::SeqCst)
        {
            panic!("injected crash while applying");
        }
        self.0.apply(command)
    }

    fn snapshot(&self) -> KvSnapshot {
        self.0.snapshot()
    }

    fn restore(&mut self, input: &mut dyn io::Read) -> io::Result<()> {
        self.0.restore(input)
    }
}

/// The application's supervisor.
struct App;

impl Actor for App {
    type Args = ();
    type Error = Infallible;

    async fn on_start(_: (), _: ActorRef<Self>) -> Result<Self, Infallible> {
        Ok(App)
    }

    async fn on_link_died(
        &mut self,
        _: WeakActorRef<Self>,
        id: ActorId,
        reason: ActorStopReason,
    ) -> Result<ControlFlow<ActorStopReason>, Infallible> {
        match node_failure(&reason) {
            Some(e) => println!("app: the node ({id}) stopped for good: {e}"),
            None => println!("app: child {id} stopped: {reason}"),
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// The application's own actor, a sibling of the node.
struct Counter(u64);

impl Actor for Counter {
    type Args = ();
    type Error = Infallible;

    async fn on_start(_: (), _: ActorRef<Self>) -> Result<Self, Infallible> {
        println!("app: counter started");
        Ok(Counter(0))
    }
}

struct Incr;

impl Message<Incr> for Counter {
    type Reply = u64;

    async fn handle(&mut self, _: Incr, _: &mut Context<Self, u64>) -> u64 {
        self.0 += 1;
        self.0
    }
}

fn set(key: &str, value: &str) -> KvCommand {
    KvCommand::Set {
        key: key.into(),
        value: value.into(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let app = App::spawn(());
    let counter = Counter::supervise(&app, ()).spawn().await;

    let dir = tempfile::tempdir()?;
    let endpoint =
        bind_offline_endpoint(iroh::SecretKey::generate(), "127.0.0.1:0".parse()?).await?;
    let node: RaftCluster<Store> = RaftCluster::builder()
        .node_id(1)
        .data_dir(dir.path())
        .endpoint(endpoint.clone())
        .external_router()
        .supervised_by(&app)
        .preset(Preset::Testing)
        // A factory, so that a crashed RaftActor gets a fresh state machine and replays the log.
        .state_machine_factory(|| Store(KeyValueStore::new()))
        .build()
        .await?;
    let router = Router::builder(endpoint)
        .accept(ALPN, node.protocol_handler())
        .accept(MGMT_ALPN, node.mgmt_handler())
        .accept(DISCOVERY_ALPN, node.discovery_handler())
        .spawn();

    while node.leader().await != Some(1) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..3 {
        node.propose(set(&format!("k{i}"), "v")).await?;
    }
    println!(
        "node: 3 writes applied; counter = {}",
        counter.ask(Incr).await?
    );

    CRASH.store(true, Ordering::SeqCst);
    match node.propose(set("crash", "1")).await {
        Err(ProposeError::Interrupted) => println!("node: crashed applying it (outcome unknown)"),
        other => println!("node: crash write answered {other:?}"),
    }
    // The RaftActor is restarted in place from durable state; the same handle serves on.
    let mut retries = 0;
    while node.propose(set("after", "restart")).await.is_err() {
        retries += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let keys = node.linearizable_query(|s: &Store| s.0.len()).await?;
    println!(
        "node: restarted, {keys} keys after {retries} retries; counter = {} (never restarted)",
        counter.ask(Incr).await?
    );

    node.shutdown().await?;
    router.shutdown().await?;
    Ok(())
}
