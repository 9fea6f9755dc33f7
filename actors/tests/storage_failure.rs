//! A disk that starts failing turns into a typed fatal error for the node: no panic, no
//! acknowledgement of anything that did not reach the disk.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use iroh::{EndpointAddr, SecretKey};
use iroh_raft_actors::{
    FatalError, GetStatus, LogDb, Member, Node, NodeConfig, NodeSpec, Propose, ProposeError, Role,
    StateMachine, StateMachineSource, StorageSpawn, WriteSnapshot,
    peer::{BoxFuture, Dialer, Link, LinkError},
};
use kameo::error::SendError;
use redb::{StorageBackend, backends::InMemoryBackend};

#[derive(Debug)]
struct FailingDisk {
    inner: InMemoryBackend,
    fail: Arc<AtomicBool>,
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

/// A single-node cluster never dials.
#[derive(Debug)]
struct NoNetwork;

impl Dialer for NoNetwork {
    fn dial(
        &self,
        _: u64,
        _: u64,
        _: EndpointAddr,
    ) -> BoxFuture<'static, Result<Box<dyn Link>, LinkError>> {
        Box::pin(async { Err(LinkError::Connect("no network in this test".into())) })
    }
}

#[derive(Default)]
struct Counter(u64);

struct CounterSnapshot(u64);

impl WriteSnapshot for CounterSnapshot {
    fn write_to(self, out: &mut dyn io::Write) -> io::Result<()> {
        out.write_all(&self.0.to_le_bytes())
    }
}

impl StateMachine for Counter {
    type Command = u64;
    type Response = u64;
    type Snapshot = CounterSnapshot;
    fn apply(&mut self, add: u64) -> u64 {
        self.0 += add;
        self.0
    }
    fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot(self.0)
    }
    fn restore(&mut self, input: &mut dyn io::Read) -> io::Result<()> {
        let mut b = [0; 8];
        input.read_exact(&mut b)?;
        self.0 = u64::from_le_bytes(b);
        Ok(())
    }
}

async fn propose(node: &Node<Counter>, add: u64) -> Result<u64, ProposeError> {
    let data = postcard::to_allocvec(&add).unwrap();
    match node
        .raft
        .ask(Propose { data })
        .reply_timeout(Duration::from_secs(5))
        .await
    {
        Ok(v) => Ok(v),
        Err(SendError::HandlerError(e)) => Err(e),
        Err(e) => panic!("unexpected send error {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_is_a_typed_fatal_error_and_nothing_more_is_acknowledged() {
    let fail = Arc::new(AtomicBool::new(false));
    let disk = FailingDisk {
        inner: InMemoryBackend::new(),
        fail: fail.clone(),
    };
    let db = LogDb::with_backend(disk, "failing-disk".into()).unwrap();
    let key = SecretKey::generate().public();
    let mut config = NodeConfig::new(1);
    config.heartbeat_interval = Duration::from_millis(20);
    config.election_timeout = Duration::from_millis(100);
    let node = Node::start(NodeSpec {
        config,
        endpoint_id: key,
        state_machine: StateMachineSource::instance(Counter::default()),
        db,
        initial_members: vec![Member {
            node_id: 1,
            addr: EndpointAddr::new(key),
        }],
        dialer: Arc::new(NoNetwork),
        storage_spawn: StorageSpawn::Thread,
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.raft.ask(GetStatus).await.unwrap().role != Role::Leader {
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(propose(&node, 2).await.unwrap(), 2);
    assert_eq!(propose(&node, 3).await.unwrap(), 5);

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
    let status = node.raft.ask(GetStatus).await.unwrap();
    assert_eq!(
        status.applied_index, 3,
        "nothing after the failure was applied"
    );
    assert!(matches!(node.shutdown().await, Err(FatalError::Storage(_))));
}
