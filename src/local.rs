//! Several nodes in one process, on loopback or in memory: for tests, demos and benchmarks.

use std::path::Path;

use iroh::{EndpointAddr, SecretKey};
use iroh_raft_actors::{MemoryNetwork, NodeId, StateMachine};

use crate::{
    BuildError, PeerAddr, RaftCluster, RaftClusterBuilder,
    net::{bind_endpoint, endpoint_peer_addr},
};

/// Starts one node per data dir (ids `1..=n`, in order) on loopback endpoints that know each
/// other. Each builder already has its id, data dir, endpoint and the full member list;
/// `configure` adds the rest (state machine, preset...).
///
/// Every endpoint is bound before any node is built, because each node's peer list needs every
/// other node's address.
pub async fn start_local_cluster<S, P, F>(
    data_dirs: &[P],
    configure: F,
) -> Result<Vec<RaftCluster<S>>, BuildError>
where
    S: StateMachine,
    P: AsRef<Path>,
    F: Fn(NodeId, RaftClusterBuilder<S>) -> RaftClusterBuilder<S>,
{
    let mut endpoints = Vec::with_capacity(data_dirs.len());
    for dir in data_dirs {
        endpoints.push(bind_endpoint(dir.as_ref(), ([127, 0, 0, 1], 0).into()).await?);
    }
    let members: Vec<(NodeId, PeerAddr)> = endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| (i as NodeId + 1, endpoint_peer_addr(ep)))
        .collect();
    let mut nodes = Vec::with_capacity(endpoints.len());
    for ((i, ep), dir) in endpoints.into_iter().enumerate().zip(data_dirs) {
        let id = i as NodeId + 1;
        let builder = RaftCluster::builder()
            .node_id(id)
            .data_dir(dir.as_ref())
            .endpoint(ep)
            .peers(members.clone());
        nodes.push(configure(id, builder).build().await?);
    }
    Ok(nodes)
}

/// Starts `n` nodes (ids `1..=n`) in memory on a fresh [`MemoryNetwork`]: no files, no sockets,
/// nothing kept after shutdown (see [`RaftClusterBuilder::in_memory`]). Each builder already has
/// its id, key, network and the full member list; `configure` adds the rest (state machine,
/// preset...). The network is returned too, for nodes started later (`.joining()`).
pub async fn start_memory_cluster<S, F>(
    n: usize,
    configure: F,
) -> Result<(MemoryNetwork, Vec<RaftCluster<S>>), BuildError>
where
    S: StateMachine,
    F: Fn(NodeId, RaftClusterBuilder<S>) -> RaftClusterBuilder<S>,
{
    let network = MemoryNetwork::new();
    let keys: Vec<SecretKey> = (0..n).map(|_| SecretKey::generate()).collect();
    let members: Vec<(NodeId, EndpointAddr)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i as NodeId + 1, EndpointAddr::new(k.public())))
        .collect();
    let mut nodes = Vec::with_capacity(n);
    for (i, key) in keys.into_iter().enumerate() {
        let id = i as NodeId + 1;
        let builder = RaftCluster::builder()
            .node_id(id)
            .secret_key(key)
            .peers(members.clone())
            .in_memory(&network);
        nodes.push(configure(id, builder).build().await?);
    }
    Ok((network, nodes))
}
