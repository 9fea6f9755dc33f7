//! In-process nodes on the lab's hosts: each node's tokio runtime runs on a thread inside its
//! host's namespace, so its endpoint's socket lives there; the handles are used from anywhere.

use std::{sync::mpsc, thread::JoinHandle, time::Duration};

use anyhow::Context;
use iroh::SecretKey;
use iroh_raft::{KeyValueStore, Preset, RaftCluster};

use crate::lab::Host;

pub type Node = RaftCluster<KeyValueStore>;

/// The port every node binds on its host.
const PORT: u16 = 7000;

struct Running {
    node: Node,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// One node per host, founded together (every node names every other by key and address).
pub struct NetCluster {
    nodes: Vec<Running>,
    _dirs: tempfile::TempDir,
}

impl NetCluster {
    pub fn start(hosts: &[Host]) -> anyhow::Result<Self> {
        Self::start_with(hosts, iroh_raft::net::CongestionControl::default())
    }

    /// [`NetCluster::start`] with a congestion controller.
    pub fn start_with(
        hosts: &[Host],
        cc: iroh_raft::net::CongestionControl,
    ) -> anyhow::Result<Self> {
        let dirs = tempfile::tempdir()?;
        let keys: Vec<SecretKey> = hosts.iter().map(|_| SecretKey::generate()).collect();
        let peers: Vec<(u64, String)> = hosts
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(i, (h, k))| (i as u64 + 1, format!("{}@{}:{PORT}", k.public(), h.ip)))
            .collect();
        let mut nodes = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let id = i as u64 + 1;
            let builder = RaftCluster::builder()
                .node_id(id)
                .secret_key(keys[i].clone())
                .data_dir(dirs.path().join(format!("n{id}")))
                .bind_address(format!("{}:{PORT}", host.ip))
                .peers(peers.clone())
                .preset(Preset::Production)
                .congestion_control(cc)
                .state_machine(KeyValueStore::new());
            let (tx, rx) = mpsc::channel();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = host.spawn_in(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let node = match builder.build().await {
                        Ok(node) => node,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(node.clone()));
                    let _ = stopped.await;
                    let _ = node.shutdown().await;
                });
            });
            let node = rx
                .recv()
                .context("node thread")?
                .map_err(|e| anyhow::anyhow!("node {id}: {e}"))?;
            nodes.push(Running { node, stop, thread });
        }
        Ok(Self { nodes, _dirs: dirs })
    }

    /// The leader's handle, once one is elected (within 30 s).
    pub fn leader(&self) -> Option<Node> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        while std::time::Instant::now() < deadline {
            if let Some(id) = rt.block_on(self.nodes[0].node.leader())
                && let Some(r) = self.nodes.get(id as usize - 1)
            {
                return Some(r.node.clone());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Stops every node and waits for its thread.
    pub fn shutdown(self) {
        for r in self.nodes {
            let _ = r.stop.send(());
            let _ = r.thread.join();
        }
    }
}
