//! A cluster of in-process nodes on loopback, with waiting helpers. Every wait polls a condition
//! with a deadline; nothing sleeps for a fixed time and hopes.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use iroh_raft::{
    BuildError, KeyValueStore, KvCommand, NodeStatus, PeerAddr, Preset, RaftCluster,
    RaftClusterBuilder, Role, Ticket, TicketRole,
    net::{bind_endpoint, endpoint_peer_addr},
};
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

pub type Node = RaftCluster<KeyValueStore>;

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=iroh_raft_actors=debug`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds; panics with `what` after [`WAIT`].
pub async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_some(what, || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `f` until it returns `Some`; panics with `what` after [`WAIT`].
pub async fn wait_for_some<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn set(key: impl Into<String>, value: impl Into<String>) -> KvCommand {
    KvCommand::Set {
        key: key.into(),
        value: value.into(),
    }
}

/// Builds a node on a fixed port that an earlier endpoint held. That endpoint's UDP socket is
/// released only once the last clone of it is dropped (tasks of a stopped node, or of the
/// endpoint a test bound and closed, let go of theirs shortly after), so a bind error is retried
/// until the port is free.
pub async fn build_on_port(builder: impl Fn() -> RaftClusterBuilder<KeyValueStore>) -> Node {
    wait_for_some("the port to be free", || async {
        match builder().build().await {
            Ok(node) => Some(node),
            Err(BuildError::Bind { .. }) => None,
            Err(e) => panic!("the node failed to start: {e}"),
        }
    })
    .await
}

type Configure = Arc<
    dyn Fn(RaftClusterBuilder<KeyValueStore>) -> RaftClusterBuilder<KeyValueStore> + Send + Sync,
>;

/// `n` nodes with ids 1..=n, each with its own data dir and a fixed loopback port so that a
/// restarted node is found at the address its peers stored.
pub struct TestCluster {
    pub nodes: Vec<Option<Node>>,
    pub addrs: Vec<PeerAddr>,
    dirs: Vec<TempDir>,
    configure: Configure,
    /// Nodes `0..founders` bootstrap the cluster; the others join it.
    founders: usize,
}

impl TestCluster {
    /// Starts `n` nodes that all know each other.
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, n).await
    }

    /// Creates identities for `members` nodes but starts only the first `running`.
    pub async fn start_with(members: usize, running: usize) -> Self {
        Self::start_configured(members, running, |b| b).await
    }

    /// Like [`Self::start_with`], with extra builder settings applied to every node (at every
    /// restart too).
    pub async fn start_configured(
        members: usize,
        running: usize,
        configure: impl Fn(RaftClusterBuilder<KeyValueStore>) -> RaftClusterBuilder<KeyValueStore>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        init_tracing();
        let dirs: Vec<TempDir> = (0..members).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut endpoints = Vec::new();
        for dir in &dirs {
            endpoints.push(
                bind_endpoint(dir.path(), "127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap(),
            );
        }
        let addrs: Vec<PeerAddr> = endpoints.iter().map(endpoint_peer_addr).collect();
        let mut cluster = TestCluster {
            nodes: (0..members).map(|_| None).collect(),
            addrs,
            dirs,
            configure: Arc::new(configure),
            founders: members,
        };
        for (i, ep) in endpoints.into_iter().enumerate() {
            if i < running {
                let node = cluster.builder(i).endpoint(ep).build().await.unwrap();
                cluster.nodes[i] = Some(node);
            } else {
                ep.close().await;
            }
        }
        cluster
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dirs[i].path().to_owned()
    }

    pub fn port(&self, i: usize) -> SocketAddr {
        *self.addrs[i].0.ip_addrs().next().unwrap()
    }

    /// Identities for `members` nodes; node 1 alone founds the cluster and runs. The others
    /// join with [`Self::start_joiner`].
    pub async fn start_growable(members: usize) -> Self {
        let mut cluster = Self::start_configured(members, 0, |b| b).await;
        cluster.founders = 1;
        let node = build_on_port(|| cluster.builder(0).bind_address(cluster.port(0))).await;
        cluster.nodes[0] = Some(node);
        cluster
    }

    /// Starts node `i` as a new node that waits to be added to the running cluster.
    pub async fn start_joiner(&mut self, i: usize) {
        assert!(i >= self.founders, "node {i} is a founder");
        let node = build_on_port(|| self.builder(i).bind_address(self.port(i))).await;
        self.nodes[i] = Some(node);
    }

    /// A builder for node `i` (id `i + 1`): founders get the founding membership, others join
    /// and know every identity (to admit their connections).
    pub fn builder(&self, i: usize) -> RaftClusterBuilder<KeyValueStore> {
        let known = if i < self.founders {
            self.founders
        } else {
            self.addrs.len()
        };
        let peers: Vec<(u64, PeerAddr)> = self
            .addrs
            .iter()
            .take(known)
            .enumerate()
            .map(|(j, a)| (j as u64 + 1, a.clone()))
            .collect();
        let builder = RaftCluster::builder()
            .node_id(i as u64 + 1)
            .data_dir(self.data_dir(i))
            .peers(peers)
            .state_machine(KeyValueStore::new())
            .preset(Preset::Testing)
            // Fast elections, but a generous bound on each request: tests run unoptimised and in
            // parallel on two cores, and a request that needs longer is still a failure.
            .request_timeout(Duration::from_secs(20))
            .rng_seed(i as u64 + 1);
        let builder = if i < self.founders {
            builder
        } else {
            builder.joining()
        };
        (self.configure)(builder)
    }

    /// Restarts node `i` on its data dir and port, with no peer list (as a real restart would).
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let node = build_on_port(|| {
            let builder = RaftCluster::builder()
                .node_id(i as u64 + 1)
                .data_dir(self.data_dir(i))
                .bind_address(self.port(i))
                .state_machine(KeyValueStore::new())
                .preset(Preset::Testing)
                .request_timeout(Duration::from_secs(20));
            (self.configure)(builder)
        })
        .await;
        self.nodes[i] = Some(node);
    }

    /// Node with id `id`.
    pub fn node(&self, id: u64) -> &Node {
        self.nodes[id as usize - 1]
            .as_ref()
            .expect("node is running")
    }

    pub fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    /// Shuts node `id` down gracefully, and closes its endpoint (the first start's endpoint
    /// was bound by the test, so the node does not close it), freeing its port for a restart.
    pub async fn stop(&mut self, id: u64) {
        let node = self.nodes[id as usize - 1].take().expect("node is running");
        let endpoint = node.endpoint().expect("an iroh node").clone();
        node.shutdown().await.unwrap();
        endpoint.close().await;
    }

    pub async fn statuses(&self) -> Vec<NodeStatus> {
        let mut out = Vec::new();
        for n in self.running() {
            if let Ok(s) = n.status().await {
                out.push(s);
            }
        }
        out
    }

    /// Waits for the leader ([`Self::wait_for_leader`]) and has it mint a ticket for `role`,
    /// valid for a day.
    pub async fn leader_ticket(&self, role: TicketRole) -> (u64, Ticket) {
        let leader = self.wait_for_leader().await;
        let ticket = self
            .node(leader)
            .ticket(role, Duration::from_secs(86_400))
            .await
            .expect("the leader mints a ticket");
        (leader, ticket)
    }

    /// Waits until exactly one running node leads and every running node follows it in the same
    /// term; returns its id.
    pub async fn wait_for_leader(&self) -> u64 {
        wait_for_some("a leader every running node agrees on", || async {
            let statuses = self.statuses().await;
            let leaders: Vec<&NodeStatus> =
                statuses.iter().filter(|s| s.role == Role::Leader).collect();
            let [l] = leaders.as_slice() else { return None };
            let agreed = statuses
                .iter()
                .all(|s| s.leader == Some(l.node_id) && s.term == l.term);
            agreed.then_some(l.node_id)
        })
        .await
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64) {
        wait_for(&format!("every running node to apply {index}"), || async {
            let statuses = self.statuses().await;
            statuses.len() == self.running().count()
                && statuses.iter().all(|s| s.applied_index >= index)
        })
        .await;
    }

    /// Shuts every running node down, concurrently (closing an endpoint waits up to ~3 s for
    /// close acknowledgements from peers that are gone).
    pub async fn shutdown(mut self) {
        let nodes: Vec<Node> = self.nodes.iter_mut().filter_map(Option::take).collect();
        for result in futures::future::join_all(nodes.iter().map(|n| n.shutdown())).await {
            result.unwrap();
        }
    }
}

/// One HTTP/1.1 exchange on a fresh connection: the status code and the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let raw = exchange(addr, request.as_bytes()).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Writes `bytes`, then reads until the server closes (or 10 s pass).
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    try_exchange(addr, bytes)
        .await
        .expect("the listener accepts")
}

/// [`exchange`], or `None` when nothing listens at `addr` (yet).
pub async fn try_exchange(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    Some(out)
}
