//! A single node over any `LogDb`, without a network: enough to test storage behaviour end to
//! end through the real actors.

#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use iroh::{EndpointAddr, SecretKey};
use iroh_raft_actors::{
    Bootstrap, GetStatus, LinearizableQuery, LogDb, Member, Node, NodeConfig, NodeSpec, Propose,
    ProposeError, ReadError, Role, StateMachine, StateMachineSource, StorageSpawn,
    SupervisorParent, WriteSnapshot,
    peer::{BoxFuture, Dialer, Link, LinkError},
    wire::Hello,
};
use kameo::error::SendError;
use redb::{StorageBackend, backends::InMemoryBackend};

/// The value whose next application panics (0: none): a crash injected into the RaftActor.
static CRASH_ARMED: AtomicU64 = AtomicU64::new(0);

/// The next application of `value` panics; its replay after the restart does not. Tests that
/// run at once use different values.
pub fn arm_crash(value: u64) {
    CRASH_ARMED.store(value, Ordering::SeqCst);
}

/// A single-node cluster never dials.
#[derive(Debug)]
pub struct NoNetwork;

impl Dialer for NoNetwork {
    fn dial(
        &self,
        _: Hello,
        _: EndpointAddr,
    ) -> BoxFuture<'static, Result<Box<dyn Link>, LinkError>> {
        Box::pin(async { Err(LinkError::Connect("no network in this test".into())) })
    }
}

/// Records every applied value; answers with how many it holds.
#[derive(Default)]
pub struct Recorder(pub BTreeSet<u64>);

pub struct RecorderSnapshot(BTreeSet<u64>);

impl WriteSnapshot for RecorderSnapshot {
    fn write_to(self, out: &mut dyn io::Write) -> io::Result<()> {
        for v in self.0 {
            out.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    }
}

impl StateMachine for Recorder {
    type Command = u64;
    type Response = u64;
    type Snapshot = RecorderSnapshot;

    fn apply(&mut self, value: u64) -> u64 {
        let armed = CRASH_ARMED.load(Ordering::Relaxed);
        if armed != 0
            && value == armed
            && CRASH_ARMED
                .compare_exchange(armed, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            panic!("injected crash");
        }
        self.0.insert(value);
        self.0.len() as u64
    }

    fn snapshot(&self) -> RecorderSnapshot {
        RecorderSnapshot(self.0.clone())
    }

    fn restore(&mut self, input: &mut dyn io::Read) -> io::Result<()> {
        self.0.clear();
        let mut b = [0; 8];
        loop {
            match input.read_exact(&mut b) {
                Ok(()) => {
                    self.0.insert(u64::from_le_bytes(b));
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Starts node 1 alone on `db` with fast timings and fsync on.
pub async fn start_single(
    db: LogDb,
    key: SecretKey,
    configure: impl FnOnce(&mut NodeConfig),
) -> Node<Recorder> {
    let source = StateMachineSource::factory(Recorder::default);
    start_single_under(db, key, source, None, configure).await
}

/// [`start_single`] with a given state-machine source, its supervisor under `parent`.
pub async fn start_single_under(
    db: LogDb,
    key: SecretKey,
    state_machine: StateMachineSource<Recorder>,
    parent: Option<SupervisorParent<Recorder>>,
    configure: impl FnOnce(&mut NodeConfig),
) -> Node<Recorder> {
    let mut config = NodeConfig::new(1);
    config.heartbeat_interval = Duration::from_millis(10);
    config.election_timeout = Duration::from_millis(40);
    config.fsync = true;
    configure(&mut config);
    Node::start(NodeSpec {
        config,
        secret_key: key.clone(),
        state_machine,
        db,
        bootstrap: Bootstrap::Initial(vec![Member {
            node_id: 1,
            addr: EndpointAddr::new(key.public()),
        }]),
        dialer: Arc::new(NoNetwork),
        storage_spawn: StorageSpawn::Thread,
        mgmt: Default::default(),
        parent,
    })
    .await
    .unwrap()
}

/// Waits (polling) until the single node leads.
pub async fn wait_leader(node: &Node<Recorder>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.raft.ask(GetStatus).await.unwrap().role != Role::Leader {
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn propose(node: &Node<Recorder>, value: u64) -> Result<u64, ProposeError> {
    let data = postcard::to_allocvec(&value).unwrap();
    match node
        .raft
        .ask(Propose::new(data))
        .reply_timeout(Duration::from_secs(5))
        .await
    {
        Ok(v) => Ok(v),
        Err(SendError::HandlerError(e)) => Err(e),
        // A node that stopped for good has stopped its actors; its error is on its facts.
        Err(e) => Err(ProposeError::Fatal(
            node.failure()
                .unwrap_or_else(|| panic!("unexpected send error {e:?}")),
        )),
    }
}

/// Every value the node's state machine holds, read linearizably (retrying while leadership
/// settles, as the facade does).
pub async fn values(node: &Node<Recorder>) -> BTreeSet<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let read = node
            .raft
            .ask(LinearizableQuery(|r: &Recorder| r.0.clone()))
            .reply_timeout(Duration::from_secs(5))
            .await;
        match read {
            Ok(values) => return values,
            Err(SendError::HandlerError(ReadError::NoLeader | ReadError::LeadershipChanged))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("read failed: {e:?}"),
        }
    }
}

/// An in-memory disk that fails every write and sync while `fail` is set.
#[derive(Debug)]
pub struct FailingDisk {
    pub inner: InMemoryBackend,
    pub fail: Arc<AtomicBool>,
}

impl FailingDisk {
    fn check(&self) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected: no space left on device",
            ));
        }
        Ok(())
    }
}

impl StorageBackend for FailingDisk {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}
