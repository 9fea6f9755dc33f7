//! `Sim`: N real nodes (RaftActor, StorageActor, driver, KV store) on the simulated network and
//! disks, on one paused-time tokio thread. Everything random comes from the seed.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh::{EndpointAddr, SecretKey};
use iroh_raft::{
    KeyValueStore,
    actors::{
        Bootstrap, InspectLog, LogDb, LogView, Member, Node, NodeConfig, NodeId, NodeSpec, Query,
        Role, StartError, StateMachineSource, StorageSpawn,
    },
};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    disk::SimDisk,
    invariants::Invariants,
    net::{SimDialer, SimNet},
};

pub type KvNode = Node<KeyValueStore>;

/// The running nodes, shared with the clients (they pick a node per operation).
pub type Handles = Arc<Mutex<BTreeMap<NodeId, KvNode>>>;

struct SimNode {
    key: SecretKey,
    disk: SimDisk,
    running: Option<(u64, KvNode)>,
    starts: u64,
}

pub struct Sim {
    pub seed: u64,
    pub rng: StdRng,
    pub net: Arc<SimNet>,
    pub ids: Vec<NodeId>,
    pub handles: Handles,
    nodes: BTreeMap<NodeId, SimNode>,
    /// The founding members.
    members: Vec<Member>,
    /// Every identity (founders and spares that may join later).
    identities: Vec<Member>,
    invariants: Invariants,
    configure: fn(&mut NodeConfig),
    pub steps: u64,
    /// How often this run's faults reached what the scenario is about (see `run_scenario`).
    pub reached: u64,
}

impl Sim {
    /// `n` founding members with ids 1..=n, all started, and `spares` more identities (ids
    /// n+1..) that can [`Self::join`] later.
    pub async fn with_spares(
        seed: u64,
        n: u64,
        spares: u64,
        configure: fn(&mut NodeConfig),
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut nodes = BTreeMap::new();
        let mut members = Vec::new();
        // Spares draw their keys from a stream of their own, so that adding them leaves every
        // other draw (and so every existing seed's run) unchanged.
        let mut spare_rng = StdRng::seed_from_u64(seed ^ 0x5ba2_e5ba_2e5b_a2e5);
        for id in 1..=n + spares {
            let key = if id <= n {
                SecretKey::from_bytes(&rng.random())
            } else {
                SecretKey::from_bytes(&spare_rng.random())
            };
            members.push(Member {
                node_id: id,
                addr: EndpointAddr::new(key.public()),
            });
            nodes.insert(
                id,
                SimNode {
                    key,
                    disk: SimDisk::default(),
                    running: None,
                    starts: 0,
                },
            );
        }
        let identities = members.clone();
        members.truncate(n as usize);
        let mut sim = Sim {
            seed,
            rng,
            net: SimNet::new(seed),
            ids: (1..=n).collect(),
            handles: Arc::default(),
            nodes,
            members,
            identities,
            invariants: Invariants::default(),
            configure,
            steps: 0,
            reached: 0,
        };
        for id in 1..=n {
            sim.start(id).await;
        }
        sim
    }

    /// Starts node `id` from what its disk holds.
    pub async fn start(&mut self, id: NodeId) {
        if let Err(e) = self.try_start(id).await {
            panic!("node {id} failed to start: {e}");
        }
    }

    /// Starts node `id` from what its disk holds, or says why it refused to.
    pub async fn try_start(&mut self, id: NodeId) -> Result<(), StartError> {
        let incarnation = self.net.register(id);
        let n = self.nodes.get_mut(&id).expect("known node");
        assert!(n.running.is_none(), "node {id} is running");
        n.starts += 1;
        let mut config = NodeConfig::new(id);
        config.heartbeat_interval = Duration::from_millis(10);
        config.election_timeout = Duration::from_millis(100);
        config.request_timeout = Duration::from_secs(2);
        config.fsync = true;
        config.max_log_entries = 64;
        config.snapshot_trailing_entries = 8;
        config.rng_seed = Some(self.seed ^ (id << 40) ^ n.starts);
        (self.configure)(&mut config);
        let db = match LogDb::with_backend(n.disk.clone(), format!("sim-node-{id}").into()) {
            Ok(db) => db,
            Err(e) => {
                self.net.unregister(id);
                return Err(StartError::Storage(Arc::new(e)));
            }
        };
        let node = Node::start(NodeSpec {
            config,
            secret_key: n.key.clone(),
            state_machine: StateMachineSource::factory(KeyValueStore::new),
            db,
            bootstrap: if self.members.iter().any(|m| m.node_id == id) {
                Bootstrap::Initial(self.members.clone())
            } else {
                // A spare starts empty and knows every identity, to admit the leader.
                Bootstrap::Join(
                    self.identities
                        .iter()
                        .filter(|m| m.node_id != id)
                        .cloned()
                        .collect(),
                )
            },
            dialer: Arc::new(SimDialer {
                net: self.net.clone(),
                incarnation,
            }),
            storage_spawn: StorageSpawn::Task,
            mgmt: Default::default(),
            parent: None,
        })
        .await;
        let node = match node {
            Ok(node) => node,
            Err(e) => {
                self.net.unregister(id);
                return Err(e);
            }
        };
        self.net.attach(id, incarnation, node.protocol.clone());
        self.handles.lock().unwrap().insert(id, node.clone());
        n.running = Some((incarnation, node));
        Ok(())
    }

    /// Crashes node `id` and changes one digit of a client's value somewhere on its disk (a
    /// log entry, a snapshot chunk, or a stale copy in a free page): the damage a bad sector or
    /// a stray write leaves. Returns false if the disk held no client value yet.
    pub fn crash_and_damage(&mut self, id: NodeId) -> bool {
        self.crash(id);
        let n = self.nodes.get_mut(&id).expect("known node");
        let mut image = n.disk.crash_image();
        // Client values look like `c<client>-<n>`: remember where each one's last digit is.
        let mut digits = Vec::new();
        let mut i = 0;
        while i + 3 < image.len() {
            if image[i] == b'c' && image[i + 1].is_ascii_digit() {
                let mut j = i + 1;
                while j < image.len() && image[j].is_ascii_digit() {
                    j += 1;
                }
                if j + 1 < image.len() && image[j] == b'-' && image[j + 1].is_ascii_digit() {
                    let mut k = j + 1;
                    while k + 1 < image.len() && image[k + 1].is_ascii_digit() {
                        k += 1;
                    }
                    digits.push(k);
                    i = k;
                }
            }
            i += 1;
        }
        if digits.is_empty() {
            return false;
        }
        let at = digits[self.rng.random_range(0..digits.len())];
        image[at] = if image[at] == b'9' {
            b'0'
        } else {
            image[at] + 1
        };
        n.disk = SimDisk::from_image(image);
        true
    }

    /// Kills node `id` at once and loses every write its disk had not synced.
    pub fn crash(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("known node");
        let Some((_, node)) = n.running.take() else {
            return;
        };
        self.net.unregister(id);
        self.handles.lock().unwrap().remove(&id);
        node.kill();
        n.disk = SimDisk::from_image(n.disk.crash_image());
    }

    /// From now on node `id`'s disk fails every write.
    pub fn fail_disk(&mut self, id: NodeId) {
        self.nodes[&id].disk.fail();
    }

    /// Starts spare node `id` (empty, waiting to be added) and counts it as a member from now on.
    pub async fn join(&mut self, id: NodeId) {
        assert!(!self.ids.contains(&id), "node {id} is a member");
        self.start(id).await;
        self.ids.push(id);
    }

    /// Node `id` was removed from the cluster: it stops for good and is no longer checked.
    pub fn retire(&mut self, id: NodeId) {
        self.crash(id);
        self.ids.retain(|&i| i != id);
    }

    /// The endpoint address of node `id`.
    pub fn addr(&self, id: NodeId) -> EndpointAddr {
        self.identities[id as usize - 1].addr.clone()
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.nodes[&id].running.is_some()
    }

    /// Restarts every node that is down (a failed disk is replaced by its last synced image).
    pub async fn restart_all(&mut self) {
        for id in self.ids.clone() {
            if self.nodes[&id].running.is_none() {
                self.start(id).await;
            }
        }
    }

    /// Crashes and restarts nodes whose disk failed (their node is dead).
    pub async fn replace_failed_disks(&mut self, failed: &[NodeId]) {
        for &id in failed {
            self.crash(id);
            self.start(id).await;
        }
    }

    pub fn random_node(&mut self) -> NodeId {
        self.ids[self.rng.random_range(0..self.ids.len())]
    }

    /// Every running node's log view (nodes that do not answer in time are left out).
    pub async fn views(&self) -> Vec<(NodeId, u64, LogView)> {
        let mut out = Vec::new();
        for (&id, n) in &self.nodes {
            if let Some((inc, node)) = &n.running
                && let Ok(v) = node
                    .raft
                    .ask(InspectLog { from: 0 })
                    .reply_timeout(Duration::from_millis(500))
                    .await
            {
                out.push((id, *inc, v));
            }
        }
        out
    }

    /// Lets time pass in steps, checking every invariant after each.
    pub async fn run_for(&mut self, duration: Duration) -> Result<(), String> {
        let step = Duration::from_millis(10);
        let end = tokio::time::Instant::now() + duration;
        while tokio::time::Instant::now() < end {
            tokio::time::sleep(step).await;
            self.check().await?;
        }
        Ok(())
    }

    pub async fn check(&mut self) -> Result<(), String> {
        self.steps += 1;
        let views = self.views().await;
        if std::env::var("SIM_VERBOSE").as_deref() == Ok("2") && self.steps.is_multiple_of(20) {
            let s: Vec<String> = views
                .iter()
                .map(|(id, _, v)| {
                    let s = &v.status;
                    format!(
                        "{id}:{:?} t{} c{} a{} l{} f{}",
                        s.role,
                        s.term,
                        s.commit_index,
                        s.applied_index,
                        s.last_index,
                        s.first_index
                    )
                })
                .collect();
            eprintln!("step {} [{}]", self.steps, s.join(" | "));
        }
        self.invariants.check(&views)
    }

    /// The leader every node agrees on, if there is one and every node runs.
    pub async fn agreed_leader(&self) -> Option<NodeId> {
        let (leader, running) = self.leader_of_running().await?;
        (running == self.ids.len()).then_some(leader)
    }

    /// The leader every running node agrees on (in one term), if any, and how many run.
    pub async fn leader_of_running(&self) -> Option<(NodeId, usize)> {
        let views = self.views().await;
        let leader = views
            .iter()
            .find(|(_, _, v)| v.status.role == Role::Leader)?;
        let (term, id) = (leader.2.status.term, leader.0);
        views
            .iter()
            .all(|(_, _, v)| v.status.leader == Some(id) && v.status.term == term)
            .then_some((id, views.len()))
    }

    /// Liveness: with faults gone, a leader is elected, a write commits and every node applies
    /// the same log and holds the same state, within `bound`.
    pub async fn converge(&mut self, bound: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + bound;
        let leader = loop {
            if let Some(l) = self.agreed_leader().await {
                break l;
            }
            if tokio::time::Instant::now() > deadline {
                let seen: Vec<String> = self
                    .views()
                    .await
                    .iter()
                    .map(|(id, _, v)| {
                        let s = &v.status;
                        format!(
                            "node {id}: {:?} leader {:?} term {}",
                            s.role, s.leader, s.term
                        )
                    })
                    .collect();
                let mut failed = Vec::new();
                let handles = self.handles.lock().unwrap().clone();
                for (id, node) in handles {
                    let asked = node
                        .raft
                        .ask(Query(|_: &KeyValueStore| ()))
                        .reply_timeout(Duration::from_millis(100))
                        .await;
                    if let Err(e) = asked {
                        failed.push(format!("node {id}: {e}"));
                    }
                }
                return Err(format!(
                    "liveness: no agreed leader within {bound:?} among {:?}: {seen:?} {failed:?}",
                    self.ids
                ));
            }
            self.run_for(Duration::from_millis(50)).await?;
        };
        let node = self.handles.lock().unwrap()[&leader].clone();
        let data = postcard::to_allocvec(&iroh_raft::KvCommand::Set {
            key: "liveness".into(),
            value: "ok".into(),
        })
        .unwrap();
        loop {
            let r = node
                .raft
                .ask(iroh_raft::actors::Propose::new(data.clone()))
                .reply_timeout(Duration::from_secs(1))
                .await;
            if r.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "liveness: leader {leader} could not commit a write: {r:?}"
                ));
            }
            self.run_for(Duration::from_millis(50)).await?;
        }
        loop {
            let views = self.views().await;
            let commit = views
                .iter()
                .map(|(_, _, v)| v.status.commit_index)
                .max()
                .unwrap_or(0);
            let settled = views.len() == self.ids.len()
                && views
                    .iter()
                    .all(|(_, _, v)| v.status.applied_index == commit);
            if settled {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                let s: Vec<_> = views
                    .iter()
                    .map(|(id, _, v)| (id, v.status.applied_index, v.status.commit_index))
                    .collect();
                return Err(format!(
                    "liveness: nodes did not converge within {bound:?}: {s:?}"
                ));
            }
            self.run_for(Duration::from_millis(20)).await?;
        }
        self.check().await?;
        // Every node holds the same state.
        let mut states = Vec::new();
        for id in &self.ids {
            let (_, node) = self.nodes[id].running.as_ref().expect("all running");
            let kv: Vec<(String, String)> = node
                .raft
                .ask(Query(|kv: &KeyValueStore| {
                    kv.iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<Vec<_>>()
                }))
                .await
                .map_err(|e| format!("node {id} state unreadable: {e:?}"))?;
            states.push((*id, kv));
        }
        if let Some((first_id, first)) = states.first() {
            for (id, s) in &states[1..] {
                if s != first {
                    return Err(format!(
                        "state machine safety: node {id} and node {first_id} hold different states"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Stops every node (gracefully).
    pub async fn shutdown(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some((_, node)) = n.running.take() {
                let _ = node.shutdown().await;
            }
        }
        self.handles.lock().unwrap().clear();
    }

    pub fn leader_terms(&self) -> usize {
        self.invariants.leader_terms()
    }

    pub fn committed_index(&self) -> u64 {
        self.invariants.committed_index()
    }
}
