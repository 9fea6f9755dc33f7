//! The builder's in-memory path: a node whose log lives in memory (redb's in-memory backend) and
//! whose members reach it through a [`MemoryNetwork`], for applications' own tests (a cluster in
//! one process with no sockets and no files) and for benchmarks. Everything else is the
//! production runtime: the same actors, Ready loop, frames and validation.

use std::sync::Arc;

use iroh::{EndpointAddr, SecretKey};
use iroh_raft_actors::{
    LogDb, MemoryNetwork, Node, NodeSpec, StartError, StateMachine, StateMachineSource,
    StorageSpawn,
};
use tokio::runtime::{Handle, RuntimeFlavor};

use super::RaftClusterBuilder;
use crate::{
    cluster::{Lifetime, RaftCluster},
    error::{BuildError, ConfigError},
};

impl<S: StateMachine> RaftClusterBuilder<S> {
    /// Runs the node in this process only: its log and state in memory (nothing survives
    /// [`RaftCluster::shutdown`]), its members reached through `network` instead of iroh. Give
    /// each node its id, its key ([`Self::secret_key`], a fresh one otherwise) and the members
    /// as `(id, EndpointAddr::new(key.public()))` in [`Self::peers`];
    /// [`crate::start_memory_cluster`] does all that for `n` nodes.
    ///
    /// Options that need files or sockets (a data dir, a bind address or endpoint, a metrics
    /// address, LAN discovery, join tickets, backups, restores) are refused with
    /// [`ConfigError::NotInMemory`]; the management protocol is not served (there is no
    /// endpoint to reach it on). `fsync` has no effect.
    pub fn in_memory(mut self, network: &MemoryNetwork) -> Self {
        self.memory = Some(network.clone());
        self
    }

    /// The first option set that a memory node cannot have.
    fn file_or_socket_option(&self) -> Option<&'static str> {
        [
            (self.data_dir.is_some(), "data_dir"),
            (self.bind_address.is_some(), "bind_address"),
            (self.endpoint.is_some(), "endpoint"),
            (self.external_router, "external_router"),
            (self.metrics_addr.is_some(), "metrics_addr"),
            (self.lan_name.is_some(), "lan_discovery"),
            (self.join_ticket.is_some(), "join_ticket"),
            (self.restore_from.is_some(), "restore_from"),
            (self.backups.is_some(), "backups"),
            (!self.relays.is_empty(), "relay_url"),
            (self.relay_ca.is_some(), "relay_ca_file"),
            (self.congestion.is_some(), "congestion_control"),
        ]
        .into_iter()
        .find_map(|(set, option)| set.then_some(option))
    }

    pub(super) async fn build_in_memory(
        mut self,
        network: MemoryNetwork,
        state_machine: StateMachineSource<S>,
    ) -> Result<RaftCluster<S>, BuildError> {
        if let Some(option) = self.file_or_socket_option() {
            return Err(ConfigError::NotInMemory { option }.into());
        }
        let node_id = self.node_id.ok_or(ConfigError::MissingNodeId)?;
        let key = self.secret_key.take().unwrap_or_else(SecretKey::generate);
        let me = key.public();
        let peers = std::mem::take(&mut self.peers)
            .into_iter()
            .map(|p| p.addr.map(|a| (p.id, a)))
            .collect::<Result<Vec<_>, _>>()?;
        let bootstrap = self.new_bootstrap(node_id, EndpointAddr::new(me), peers)?;
        let db = LogDb::in_memory().map_err(StartError::from)?;
        let storage_spawn = match Handle::current().runtime_flavor() {
            RuntimeFlavor::CurrentThread => StorageSpawn::Task,
            _ => StorageSpawn::Thread,
        };
        let spec = NodeSpec {
            config: self.node_config(node_id)?,
            secret_key: key,
            state_machine,
            db,
            bootstrap,
            dialer: Arc::new(network.dialer(me)),
            storage_spawn,
            mgmt: self.mgmt_options(),
            parent: self.parent.clone(),
        };
        let node = Node::start(spec).await?;
        network.attach(me, node.protocol.clone());
        Ok(RaftCluster::new(Lifetime::in_memory(node, me, network)))
    }
}
