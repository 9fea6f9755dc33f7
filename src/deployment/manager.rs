//! [`ClusterManager`]: bootstraps a deployment, reports on it, updates it one node at a time,
//! adds and removes nodes, stops it.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use iroh::EndpointAddr;
use iroh_raft_actors::wire::{MgmtMember, MgmtStatus, endpoint_addr_from_wire};
use serde::{Deserialize, Serialize};

use super::{
    config::{DeploymentConfig, DeploymentConfigError, NodeConfig, check_binary, preset_name},
    launcher::{LaunchError, LaunchSpec, Launcher, LocalLauncher, StartMode, held_node},
};
use crate::{
    Ticket, TicketRole,
    mgmt::{ClientError, ClientOptions, IrohRaftManagementClient, failed_checks},
};

/// How long the admin tickets the manager keeps stay valid (it mints a new one each time it
/// connects, so an admin ticket expires only after this long without a manager command).
const ADMIN_TICKET_TTL: Duration = Duration::from_secs(30 * 86_400);

/// How long `status` waits for a leader before it reports what each node says of itself.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// How often conditions are checked while the manager waits on them.
const POLL: Duration = Duration::from_millis(50);

/// Why a deployment operation failed. Every variant says which node and what state it left.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeploymentError {
    /// The configuration was refused (nothing was started).
    #[error("configuration: {0}")]
    Config(#[from] DeploymentConfigError),
    /// A process could not be started or stopped.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The cluster did not answer as needed.
    #[error("{what}: {source}")]
    Client {
        /// What the manager was doing.
        what: String,
        /// The client's error.
        source: ClientError,
    },
    /// The deployment has not been bootstrapped (no state in its state dir).
    #[error("cluster '{0}' has not been started: run bootstrap (`iroh-raft cluster up`) first")]
    NotStarted(String),
    /// The node is not part of the deployment.
    #[error("node {0} is not part of the deployment")]
    UnknownNode(u64),
    /// The node is already a member.
    #[error("node {0} is already a member")]
    AlreadyMember(u64),
    /// Taking the node out could cost the cluster its quorum: another voter is not reachable
    /// from the leader, or the others would not be a majority.
    #[error(
        "taking node {node} out could give up quorum: of the {voters} voters, the leader has \
         not heard recently from {unreachable:?}, and without node {node} a majority ({needed}) \
         must remain"
    )]
    WouldLoseQuorum {
        /// The node.
        node: u64,
        /// Other voters the leader has not heard from recently.
        unreachable: Vec<u64>,
        /// Every voter.
        voters: usize,
        /// A majority.
        needed: usize,
    },
    /// No node answered as the leader in time.
    #[error("no leader answered within {0:?} ({1})")]
    NoLeader(Duration, String),
    /// Another manager command holds the deployment's lock.
    #[error(
        "another manager command is running on this deployment (it holds {0}): wait for it to \
         finish"
    )]
    Busy(PathBuf),
    /// A node did not come back caught up and ready in time.
    #[error("node {node} did not catch up and pass its readiness checks: {reason}")]
    NotReady {
        /// The node.
        node: u64,
        /// The last thing that was not yet true.
        reason: String,
    },
    /// A rolling update stopped at its first failure.
    #[error(
        "rolling update stopped at node {node}: {reason}; {restored}; nodes updated before it: {updated:?}"
    )]
    RolloutFailed {
        /// The node it failed on.
        node: u64,
        /// Why.
        reason: String,
        /// What happened to that node: back on its old binary, or why not.
        restored: String,
        /// Nodes that run the new binary.
        updated: Vec<u64>,
    },
    /// The manager's state could not be read or written.
    #[error("state file {path}: {message}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// One step of an operation, for progress output.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Progress {
    /// The node it is about, if one.
    pub node: Option<u64>,
    /// What happened.
    pub message: String,
}

/// A node as the manager sees it.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct NodeState {
    /// Its Raft id.
    pub id: u64,
    /// Whether the launcher reports its process running.
    pub running: bool,
    /// Its role in the membership (`voter`, `learner`), `None` if it is not a member.
    pub member: Option<String>,
    /// Whether it leads.
    pub leader: bool,
    /// Entries behind the leader's log (as the leader sees it).
    pub lag: Option<u64>,
    /// The leader heard from it within an election timeout.
    pub fresh: bool,
    /// Its readiness checks passed (`None`: not asked, it did not answer).
    pub ready: Option<bool>,
    /// Failed checks, or why it could not be asked.
    pub problems: Vec<String>,
    /// The binary it was last started with.
    pub binary: Option<PathBuf>,
    /// Its address.
    pub bind: Option<String>,
}

/// The deployment as the leader and each node see it.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ClusterStatus {
    /// The cluster's name.
    pub name: String,
    /// The leader, if one is known.
    pub leader: Option<u64>,
    /// The term.
    pub term: u64,
    /// The commit index.
    pub commit_index: u64,
    /// Every node of the deployment and every member.
    pub nodes: Vec<NodeState>,
}

impl ClusterStatus {
    /// A leader is known and every node runs, is a member, is ready, and has no problem
    /// reported (an interrupted rollout, ...).
    pub fn healthy(&self) -> bool {
        self.leader.is_some()
            && self.nodes.iter().all(|n| {
                n.running && n.member.is_some() && n.ready == Some(true) && n.problems.is_empty()
            })
    }
}

/// What a finished rolling update did.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct RolloutReport {
    /// The nodes, in the order they were updated (the leader last).
    pub order: Vec<u64>,
    /// How long each node took from its stop to caught up and ready.
    pub durations: Vec<(u64, Duration)>,
}

/// What the manager remembers between runs (in `STATE_DIR/cluster.json`, mode 0600: it holds
/// an admin ticket).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    admin_ticket: Option<String>,
    nodes: BTreeMap<u64, NodeRecord>,
    /// A node a rolling update was working on (set before its stop, cleared once it runs a
    /// known binary again): if the manager died meanwhile, the node may run either.
    #[serde(default)]
    interrupted: Option<Interrupted>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Interrupted {
    node: u64,
    from: PathBuf,
    to: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeRecord {
    binary: PathBuf,
    data_dir: PathBuf,
    bind: String,
    endpoint: String,
}

/// Runs a deployment: the processes through a [`Launcher`], the cluster through the
/// management protocol.
///
/// Rolling updates go one node at a time, followers first and the leader last after its
/// leadership was handed over; a node is touched only while every other voter is reachable
/// (quorum is never knowingly given up), and the next one only once the restarted one is a
/// member again, within `rollout.max_lag` entries of the leader's log and passing its
/// readiness checks. The first failure stops the rollout and puts the old binary back on that
/// node.
pub struct ClusterManager<L: Launcher = LocalLauncher> {
    /// Held while the manager lives: one command at a time per deployment.
    _lock: std::fs::File,
    config: DeploymentConfig,
    launcher: L,
    state: State,
    client: Option<IrohRaftManagementClient>,
    progress: Box<dyn Fn(Progress) + Send + Sync>,
}

impl<L: Launcher> std::fmt::Debug for ClusterManager<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterManager")
            .field("cluster", &self.config.cluster_name)
            .finish_non_exhaustive()
    }
}

impl ClusterManager<LocalLauncher> {
    /// A manager of `config` that runs the nodes on this machine (checks the configuration
    /// again; reads the state an earlier manager left).
    pub async fn new(config: DeploymentConfig) -> Result<Self, DeploymentError> {
        let mut launcher = LocalLauncher::new(&config.state_dir)?;
        for node in &config.nodes {
            launcher.adopt(node.id, &node.data_dir);
        }
        let mut manager = Self::with_launcher(config, launcher).await?;
        // Nodes the file no longer names (added through the API, or dropped from the file) are
        // still found by their data dirs.
        for (id, record) in &manager.state.nodes {
            manager.launcher.adopt(*id, &record.data_dir);
        }
        Ok(manager)
    }
}

fn client_error(what: impl Into<String>) -> impl FnOnce(ClientError) -> DeploymentError {
    let what = what.into();
    move |source| DeploymentError::Client { what, source }
}

impl<L: Launcher> ClusterManager<L> {
    /// A manager of `config` whose processes `launcher` runs.
    pub async fn with_launcher(
        config: DeploymentConfig,
        launcher: L,
    ) -> Result<Self, DeploymentError> {
        config.check()?;
        let lock = lock_state_dir(&config.state_dir)?;
        let path = state_path(&config);
        let state: State = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DeploymentError::State {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                return Err(DeploymentError::State {
                    path,
                    message: e.to_string(),
                });
            }
        };
        // A node keeps the data dir and address it started with: a file that moved it is refused.
        for (i, node) in config.nodes.iter().enumerate() {
            let Some(record) = state.nodes.get(&node.id) else {
                continue;
            };
            let moved = |field: &str, was: String, now: String| {
                DeploymentError::Config(DeploymentConfigError {
                    field: format!("nodes[{i}].{field}"),
                    message: format!(
                        "node {} runs with {was} (since it joined), not {now}: to move it, add \
                         a node under a new id and remove this one",
                        node.id
                    ),
                })
            };
            if record.data_dir != node.data_dir {
                let (was, now) = (record.data_dir.display(), node.data_dir.display());
                return Err(moved("data_dir", was.to_string(), now.to_string()));
            }
            if record.bind != node.bind.to_string() {
                return Err(moved("bind", record.bind.clone(), node.bind.to_string()));
            }
        }
        Ok(Self {
            _lock: lock,
            config,
            launcher,
            state,
            client: None,
            progress: Box::new(|_| {}),
        })
    }

    /// Calls `f` at each step of an operation.
    pub fn on_progress(mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.progress = Box::new(f);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &DeploymentConfig {
        &self.config
    }

    /// The admin ticket the manager holds (after [`Self::bootstrap`]).
    pub fn admin_ticket(&self) -> Option<Ticket> {
        self.state.admin_ticket.as_ref()?.parse().ok()
    }

    fn say(&self, node: Option<u64>, message: impl Into<String>) {
        (self.progress)(Progress {
            node,
            message: message.into(),
        });
    }

    fn save(&self) -> Result<(), DeploymentError> {
        let path = state_path(&self.config);
        let fail = |message: String| DeploymentError::State {
            path: path.clone(),
            message,
        };
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| fail(e.to_string()))?;
        std::fs::create_dir_all(&self.config.state_dir).map_err(|e| fail(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        write_private(&tmp, &bytes).map_err(|e| fail(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| fail(e.to_string()))
    }

    /// The node's arguments after the binary.
    fn args(&self, node: &NodeConfig, mode: &StartMode) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "node".into(),
            "--data-dir".into(),
            node.data_dir.clone().into(),
            "--preset".into(),
            preset_name(self.config.environment).into(),
        ];
        if let Some(m) = node.metrics_addr {
            args.extend(["--metrics-addr".into(), m.to_string().into()]);
        }
        if let Some(b) = &self.config.backup {
            args.extend([
                "--backup-schedule".into(),
                b.schedule.clone().into(),
                "--backup-target".into(),
                b.target.clone().into(),
                "--backup-retention".into(),
                b.retention.to_string().into(),
            ]);
            if let Some(e) = &b.s3_endpoint {
                args.extend(["--backup-s3-endpoint".into(), e.clone().into()]);
            }
        }
        match mode {
            StartMode::Bootstrap => args.extend([
                "--bootstrap".into(),
                "--node-id".into(),
                node.id.to_string().into(),
                "--bind".into(),
                node.bind.to_string().into(),
            ]),
            StartMode::Join(ticket) => args.extend([
                "--join".into(),
                ticket.clone().into(),
                "--bind".into(),
                node.bind.to_string().into(),
            ]),
            StartMode::Restart => {}
        }
        args
    }

    async fn launch(
        &mut self,
        node: &NodeConfig,
        binary: &Path,
        mode: StartMode,
    ) -> Result<String, DeploymentError> {
        self.check_held(node)?;
        let spec = LaunchSpec {
            node: node.clone(),
            binary: binary.to_owned(),
            args: self.args(node, &mode),
            mode,
            timeout: self.config.rollout.node_timeout,
        };
        let started = self.launcher.start(spec).await?;
        if started.node_id != node.id {
            // A data dir that holds another node than the configuration says (the launcher
            // knows the process by the configured id).
            let _ = self.launcher.stop(node.id, self.grace()).await;
            return Err(DeploymentError::NotReady {
                node: node.id,
                reason: format!(
                    "its data dir {} holds node {}",
                    node.data_dir.display(),
                    started.node_id
                ),
            });
        }
        Ok(started.endpoint)
    }

    /// Refuses a data dir that holds another node than `node` (a second process with that
    /// node's key and log would be that node twice).
    fn check_held(&self, node: &NodeConfig) -> Result<(), DeploymentError> {
        match held_node(&node.data_dir) {
            Some(held) if held != node.id => {
                let i = self.config.nodes.iter().position(|n| n.id == node.id);
                Err(DeploymentError::Config(DeploymentConfigError {
                    field: i.map_or("data_dir".into(), |i| format!("nodes[{i}].data_dir")),
                    message: format!(
                        "{} holds node {held}, not node {}",
                        node.data_dir.display(),
                        node.id
                    ),
                }))
            }
            _ => Ok(()),
        }
    }

    fn grace(&self) -> Duration {
        self.config.rollout.node_timeout
    }

    fn node(&self, id: u64) -> Result<NodeConfig, DeploymentError> {
        self.config
            .nodes
            .iter()
            .find(|n| n.id == id)
            .cloned()
            .ok_or(DeploymentError::UnknownNode(id))
    }

    /// A client of the cluster (admitted with the stored admin ticket, which it renews).
    pub async fn client(&mut self) -> Result<IrohRaftManagementClient, DeploymentError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let ticket: Ticket = self
            .state
            .admin_ticket
            .as_ref()
            .ok_or_else(|| DeploymentError::NotStarted(self.config.cluster_name.clone()))?
            .parse()
            .map_err(|e: crate::TicketError| DeploymentError::State {
                path: state_path(&self.config),
                message: format!("the admin ticket: {e}"),
            })?;
        let client = self.connect(&ticket).await?;
        self.client = Some(client);
        self.renew_ticket().await?;
        self.client
            .clone()
            .ok_or_else(|| DeploymentError::NotStarted(self.config.cluster_name.clone()))
    }

    async fn connect(&self, ticket: &Ticket) -> Result<IrohRaftManagementClient, DeploymentError> {
        let options = ClientOptions::default().timeout(self.config.rollout.node_timeout);
        IrohRaftManagementClient::new(ticket.members.clone(), Some(ticket), options)
            .await
            .map_err(client_error("connecting"))
    }

    /// Mints a new admin ticket from a current member (a ticket whose issuer was removed is
    /// refused) and keeps it.
    async fn renew_ticket(&mut self) -> Result<(), DeploymentError> {
        let Some(client) = self.client.clone() else {
            return Ok(());
        };
        let ticket = client
            .mint_ticket(TicketRole::Admin, ADMIN_TICKET_TTL)
            .await
            .map_err(client_error("renewing the admin ticket"))?;
        self.state.admin_ticket = Some(ticket.to_string());
        self.save()?;
        // A client that reconnects presents the ticket it was made with: onto the new one.
        let renewed = self.connect(&ticket).await?;
        if let Some(old) = self.client.replace(renewed) {
            old.close().await;
        }
        Ok(())
    }

    /// The leader's status (asked until a leader answers, within the node timeout).
    async fn leader_status(&mut self) -> Result<MgmtStatus, DeploymentError> {
        self.leader_status_within(self.config.rollout.node_timeout)
            .await
    }

    /// [`Self::leader_status`], waiting at most `wait` for a leader.
    async fn leader_status_within(
        &mut self,
        wait: Duration,
    ) -> Result<MgmtStatus, DeploymentError> {
        let wait = wait.min(self.config.rollout.node_timeout);
        let client = self.client().await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let status = client.status().await;
            match status {
                Ok(s) if s.role == "leader" => return Ok(s),
                Ok(_) | Err(ClientError::Timeout(_) | ClientError::Unreachable { .. })
                    if tokio::time::Instant::now() < deadline => {}
                Ok(s) => {
                    let knows = match s.leader {
                        0 => "none".to_owned(),
                        l => format!("node {l}"),
                    };
                    let why = format!("node {} answered; the leader it knows: {knows}", s.node_id);
                    return Err(DeploymentError::NoLeader(wait, why));
                }
                Err(e) => return Err(client_error("asking for the cluster's status")(e)),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Founds the cluster with the first node (unless the manager did already), then starts
    /// every node of the configuration: those that are members and not running restart from
    /// their data dirs, the others join. Each is caught up and ready before the next starts.
    pub async fn bootstrap(&mut self) -> Result<(), DeploymentError> {
        if self.state.admin_ticket.is_none() {
            let first = self.config.nodes[0].clone();
            if first.data_dir.join(crate::DB_FILE).exists() {
                return Err(DeploymentError::Config(DeploymentConfigError {
                    field: "nodes[0].data_dir".into(),
                    message: format!(
                        "{} already holds a node, and the manager has no state for this \
                         cluster in {}: start from empty data dirs, or restore the manager's \
                         state dir",
                        first.data_dir.display(),
                        self.config.state_dir.display()
                    ),
                }));
            }
            self.say(Some(first.id), "founding the cluster");
            let binary = self.config.binary.clone();
            let endpoint = self.launch(&first, &binary, StartMode::Bootstrap).await?;
            let path = first.data_dir.join("admin-ticket");
            let ticket = std::fs::read_to_string(&path).map_err(|e| DeploymentError::State {
                path: path.clone(),
                message: e.to_string(),
            })?;
            self.state.admin_ticket = Some(ticket.trim().to_owned());
            self.record(&first, &binary, endpoint);
            self.save()?;
            self.say(Some(first.id), "running, leads");
        }
        // Members that are down restart all at once (one alone could not elect a leader),
        // then each must catch up; nodes that are not members yet join one at a time.
        let mut restarted = Vec::new();
        for node in self.config.nodes.clone() {
            let running = self.launcher.running(node.id).await;
            match self.state.nodes.get(&node.id).cloned() {
                Some(_) if running => self.say(Some(node.id), "running"),
                Some(record) => {
                    self.say(Some(node.id), "restarting from its data dir");
                    self.launch(&node, &record.binary, StartMode::Restart)
                        .await?;
                    restarted.push(node.id);
                    // A node a rollout left stopped runs its recorded binary again.
                    if self
                        .state
                        .interrupted
                        .as_ref()
                        .is_some_and(|i| i.node == node.id)
                    {
                        self.state.interrupted = None;
                        self.save()?;
                    }
                }
                None => {}
            }
        }
        for id in restarted {
            self.caught_up(id).await?;
            self.say(Some(id), "caught up and ready");
        }
        for node in self.config.nodes.clone() {
            if !self.state.nodes.contains_key(&node.id) {
                self.join(&node).await?;
            }
        }
        // A ticket naming every member: clients given it can fail over to any of them.
        self.renew_ticket().await
    }

    fn record(&mut self, node: &NodeConfig, binary: &Path, endpoint: String) {
        self.state.nodes.insert(
            node.id,
            NodeRecord {
                binary: binary.to_owned(),
                data_dir: node.data_dir.clone(),
                bind: node.bind.to_string(),
                endpoint,
            },
        );
    }

    /// Registers the node's key under its id (so the cluster gives it that id), then starts
    /// it with a join ticket; it is promoted once caught up.
    async fn join(&mut self, node: &NodeConfig) -> Result<(), DeploymentError> {
        // Before the cluster is told of it.
        self.check_held(node)?;
        // Where an earlier attempt stopped: a node already running, a dir that holds the node
        // (a join that finished there, or was admitted and not finished), or nothing yet.
        let held = held_node(&node.data_dir) == Some(node.id);
        let pending = node.data_dir.join(crate::JOIN_PENDING_FILE).exists();
        let key = crate::net::load_or_create_secret_key(&node.data_dir).map_err(|e| {
            DeploymentError::State {
                path: node.data_dir.clone(),
                message: e.to_string(),
            }
        })?;
        let addr = EndpointAddr::new(key.public()).with_ip_addr(node.bind);
        let client = self.client().await?;
        let status = self.leader_status().await?;
        match status.members.iter().find(|m| m.id == node.id) {
            Some(m) if m.key != *key.public().as_bytes() => {
                let i = self.config.nodes.iter().position(|n| n.id == node.id);
                return Err(DeploymentError::Config(DeploymentConfigError {
                    field: i.map_or("id".into(), |i| format!("nodes[{i}].id")),
                    message: format!(
                        "id {} is a member with another key: give this node another id",
                        node.id
                    ),
                }));
            }
            Some(_) => {}
            None => {
                self.say(Some(node.id), "registering its key");
                client
                    .add_learner(node.id, &addr)
                    .await
                    .map_err(client_error(format!(
                        "adding node {} as a learner",
                        node.id
                    )))?;
            }
        }
        let binary = self.members_binary();
        if self.launcher.running(node.id).await {
            self.say(Some(node.id), "already running");
        } else {
            let mode = if held && !pending {
                StartMode::Restart
            } else {
                let ticket = client
                    .mint_ticket(TicketRole::Join, Duration::from_secs(3600))
                    .await
                    .map_err(client_error("minting a join ticket"))?;
                StartMode::Join(ticket.to_string())
            };
            self.say(Some(node.id), "joining");
            let endpoint = self.launch(node, &binary, mode).await?;
            self.record(node, &binary, endpoint);
            self.save()?;
        }
        self.caught_up(node.id).await?;
        // A join whose promotion did not finish left a learner: promoted once caught up.
        let status = self.leader_status().await?;
        if status
            .members
            .iter()
            .any(|m| m.id == node.id && m.role == "learner")
        {
            client
                .join(node.id, &addr, self.config.rollout.max_lag)
                .await
                .map_err(client_error(format!("promoting node {}", node.id)))?;
        }
        self.say(Some(node.id), "voter, caught up and ready");
        Ok(())
    }

    /// The binary the members run, for a node that joins them: the one they share, or the
    /// file's when they run several (a rollout that stopped halfway).
    fn members_binary(&self) -> PathBuf {
        let mut binaries = self.state.nodes.values().map(|r| &r.binary);
        match binaries.next() {
            Some(first) if binaries.all(|b| b == first) => first.clone(),
            _ => self.config.binary.clone(),
        }
    }

    /// Waits (up to the node timeout) until node `id` is a member, the leader heard from it
    /// recently, it is within `max_lag` entries of the leader's log, and its readiness checks
    /// pass when asked of it directly.
    async fn caught_up(&mut self, id: u64) -> Result<(), DeploymentError> {
        let deadline = tokio::time::Instant::now() + self.config.rollout.node_timeout;
        loop {
            let reason = match self.check_caught_up(id).await {
                Ok(()) => return Ok(()),
                Err(r) => r,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(DeploymentError::NotReady { node: id, reason });
            }
            if !self.launcher.running(id).await {
                return Err(DeploymentError::NotReady {
                    node: id,
                    reason: format!("its process exited ({reason})"),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn check_caught_up(&mut self, id: u64) -> Result<(), String> {
        let client = self.client().await.map_err(|e| e.to_string())?;
        let status = client.status().await.map_err(|e| e.to_string())?;
        if status.role != "leader" {
            return Err(format!("node {} answered, not the leader", status.node_id));
        }
        let member = status
            .members
            .iter()
            .find(|m| m.id == id)
            .ok_or("not a member")?;
        if id != status.node_id {
            if !member.fresh {
                return Err("the leader has not heard from it recently".into());
            }
            if member.lag > self.config.rollout.max_lag {
                return Err(format!(
                    "{} entries behind the leader (at most {} allowed)",
                    member.lag, self.config.rollout.max_lag
                ));
            }
        }
        let failed = failed_checks(&self.probe(member).await?);
        match failed.is_empty() {
            true => Ok(()),
            false => Err(format!("not ready: {}", failed.join("; "))),
        }
    }

    /// The member's readiness checks, asked of it directly.
    async fn probe(
        &mut self,
        member: &MgmtMember,
    ) -> Result<iroh_raft_actors::wire::MgmtProbe, String> {
        let addr = endpoint_addr_from_wire(&member.key, &member.addrs).ok_or("invalid address")?;
        self.probe_at(addr).await
    }

    /// The readiness checks of the node at `addr`.
    async fn probe_at(
        &mut self,
        addr: EndpointAddr,
    ) -> Result<iroh_raft_actors::wire::MgmtProbe, String> {
        // Longer than a node's own check timeout (3 s), so that a slow check reports itself.
        let client = self.pinned(addr, Duration::from_secs(4)).await?;
        let probe = client.probe(true).await.map_err(|e| e.to_string());
        client.close().await;
        probe
    }

    /// A client of this member alone (not following the leader), each call within `timeout`.
    async fn pinned(
        &self,
        addr: EndpointAddr,
        timeout: Duration,
    ) -> Result<IrohRaftManagementClient, String> {
        let options = ClientOptions::default().pinned().timeout(timeout);
        let ticket = self.admin_ticket();
        IrohRaftManagementClient::new(vec![addr], ticket.as_ref(), options)
            .await
            .map_err(|e| e.to_string())
    }

    /// Every node of the deployment and every member: its process, its place in the
    /// membership, the leader's view of it, and its readiness checks.
    pub async fn status(&mut self) -> Result<ClusterStatus, DeploymentError> {
        let any_running = self.any_running().await;
        if self.state.admin_ticket.is_none() {
            return Err(DeploymentError::NotStarted(
                self.config.cluster_name.clone(),
            ));
        }
        // With no process running there is nobody to ask (and no point waiting for one).
        let status = match any_running {
            true => match self.leader_status_within(STATUS_WAIT).await {
                Ok(status) => status,
                // No leader (or none reachable): what each node says of itself.
                Err(DeploymentError::NoLeader(..) | DeploymentError::Client { .. }) => {
                    return Ok(self.status_without_leader().await);
                }
                Err(e) => return Err(e),
            },
            false => MgmtStatus {
                node_id: 0,
                cluster_id: [0; 16],
                leader: 0,
                term: 0,
                commit_index: 0,
                applied_index: 0,
                role: String::new(),
                members: Vec::new(),
                db_size_bytes: 0,
                version: String::new(),
            },
        };
        let mut ids: Vec<u64> = self.config.nodes.iter().map(|n| n.id).collect();
        ids.extend(status.members.iter().map(|m| m.id));
        ids.extend(self.state.nodes.keys());
        ids.sort_unstable();
        ids.dedup();
        let mut nodes = Vec::new();
        for id in ids {
            let member = status.members.iter().find(|m| m.id == id).cloned();
            let running = self.launcher.running(id).await;
            let (ready, problems) = match &member {
                Some(m) => match self.probe(m).await {
                    Ok(p) => {
                        let failed = failed_checks(&p);
                        (Some(failed.is_empty()), failed)
                    }
                    Err(e) => (None, vec![e]),
                },
                None if !any_running => (None, vec!["down".into()]),
                None if self.config.nodes.iter().any(|n| n.id == id) => (
                    None,
                    vec![format!(
                        "in the file, not a member: `cluster add {id}` joins it (unless a \
                         removed member had id {id}: ids are never given again)"
                    )],
                ),
                None => (None, vec!["not a member".into()]),
            };
            let record = self.state.nodes.get(&id);
            let mut problems = problems;
            problems.extend(self.interrupted_at(id));
            nodes.push(NodeState {
                id,
                running,
                member: member.as_ref().map(|m| m.role.clone()),
                leader: id == status.leader,
                lag: member.as_ref().map(|m| m.lag),
                fresh: member.as_ref().is_some_and(|m| m.fresh),
                ready,
                problems,
                binary: record.map(|r| r.binary.clone()),
                bind: record.map(|r| r.bind.clone()),
            });
        }
        Ok(ClusterStatus {
            name: self.config.cluster_name.clone(),
            leader: Some(status.leader).filter(|l| *l != 0),
            term: status.term,
            commit_index: status.commit_index,
            nodes,
        })
    }

    /// What a status says of a node an interrupted rollout left.
    fn interrupted_at(&self, id: u64) -> Option<String> {
        let i = self.state.interrupted.as_ref().filter(|i| i.node == id)?;
        Some(format!(
            "a rolling update from {} to {} was interrupted at this node: it may run either \
             (run the rolling update again)",
            i.from.display(),
            i.to.display()
        ))
    }

    /// The deployment's nodes when no leader answers: each node's process, and its readiness
    /// checks asked of it directly (they say why it is not ready: no leader known, ...).
    async fn status_without_leader(&mut self) -> ClusterStatus {
        let mut nodes = Vec::new();
        for (id, record) in self.state.nodes.clone() {
            let running = self.launcher.running(id).await;
            let addr = record
                .endpoint
                .parse::<iroh::EndpointId>()
                .ok()
                .zip(record.bind.parse().ok())
                .map(|(key, bind)| EndpointAddr::new(key).with_ip_addr(bind));
            let (ready, mut problems) = match (running, addr) {
                (false, _) => (None, vec!["down".to_owned()]),
                (true, None) => (None, vec!["its recorded address is invalid".to_owned()]),
                (true, Some(addr)) => match self.probe_at(addr).await {
                    Ok(p) => {
                        let failed = failed_checks(&p);
                        (Some(failed.is_empty()), failed)
                    }
                    Err(e) => (None, vec![e]),
                },
            };
            problems.insert(0, "no leader answered".to_owned());
            problems.extend(self.interrupted_at(id));
            nodes.push(NodeState {
                id,
                running,
                member: None,
                leader: false,
                lag: None,
                fresh: false,
                ready,
                problems,
                binary: Some(record.binary.clone()),
                bind: Some(record.bind.clone()),
            });
        }
        ClusterStatus {
            name: self.config.cluster_name.clone(),
            leader: None,
            term: 0,
            commit_index: 0,
            nodes,
        }
    }

    /// Refuses to take node `id` out while the cluster could not do without it: every other
    /// voter must be one the leader heard from recently, and those must be a majority.
    async fn check_quorum_without(&mut self, id: u64) -> Result<(), DeploymentError> {
        let deadline = tokio::time::Instant::now() + self.config.rollout.node_timeout;
        loop {
            let status = self.leader_status().await?;
            let voters: Vec<&MgmtMember> = status
                .members
                .iter()
                .filter(|m| m.role == "voter")
                .collect();
            if !voters.iter().any(|m| m.id == id) {
                return Ok(());
            }
            let needed = voters.len() / 2 + 1;
            let unreachable: Vec<u64> = voters
                .iter()
                .filter(|m| m.id != id && !m.fresh)
                .map(|m| m.id)
                .collect();
            if unreachable.is_empty() && voters.len() > needed {
                return Ok(());
            }
            // Too few voters can never do without it (one voter of one, or of two): no wait.
            if voters.len() <= needed || tokio::time::Instant::now() >= deadline {
                return Err(DeploymentError::WouldLoseQuorum {
                    node: id,
                    unreachable,
                    voters: voters.len(),
                    needed,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Hands leadership away from `id` if it leads; returns once another node leads.
    async fn hand_over(&mut self, id: u64) -> Result<(), DeploymentError> {
        let status = self.leader_status().await?;
        if status.leader != id {
            return Ok(());
        }
        let Some(to) = crate::mgmt::handover_target(&status, id) else {
            return Ok(()); // A one-voter cluster: nobody to hand over to.
        };
        let client = self.client().await?;
        let (leader, took) = client
            .transfer_leader(Some(to))
            .await
            .map_err(client_error(format!(
                "handing leadership from node {id} to node {to}"
            )))?;
        self.say(
            Some(id),
            format!("handed leadership to node {leader} in {took:.0?}"),
        );
        Ok(())
    }

    /// Waits (up to `rollout.drain_timeout`) until no management client but the manager's
    /// own is connected to node `id`: clients move to the leader on their own once a reply
    /// names another node, and a client that moved before the node stops loses nothing in
    /// flight. Clients still there when the bound passes see their node go away.
    async fn drain(&mut self, id: u64) -> Result<(), DeploymentError> {
        let status = self.leader_status().await?;
        let Some(member) = status.members.iter().find(|m| m.id == id) else {
            return Ok(());
        };
        let Some(addr) = endpoint_addr_from_wire(&member.key, &member.addrs) else {
            return Ok(());
        };
        let Ok(pinned) = self.pinned(addr, Duration::from_secs(4)).await else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + self.config.rollout.drain_timeout;
        let mut left = None;
        while tokio::time::Instant::now() < deadline {
            // The manager's own client follows the leader too.
            let _ = self.leader_status().await;
            left = match pinned.metrics().await {
                Ok(text) => mgmt_clients(&text),
                Err(_) => None,
            };
            // Only the pinned client asking.
            if left.is_none_or(|n| n <= 1) {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        pinned.close().await;
        if let Some(n) = left.filter(|n| *n > 1) {
            self.say(
                Some(id),
                format!("{} clients still connected; stopping anyway", n - 1),
            );
        }
        Ok(())
    }

    /// Restarts every node on `binary`, one at a time (see the type's documentation).
    pub async fn rolling_update(
        &mut self,
        binary: impl Into<PathBuf>,
    ) -> Result<RolloutReport, DeploymentError> {
        let binary = binary.into();
        let invalid = |message| DeploymentConfigError {
            field: "binary".into(),
            message,
        };
        check_binary(&binary).map_err(invalid)?;
        // Absolute: the state outlives the working directory of this command.
        let binary = std::path::absolute(&binary)
            .map_err(|e| invalid(format!("{}: {e}", binary.display())))?;
        let status = self.leader_status().await?;
        let mut order: Vec<u64> = self
            .state
            .nodes
            .keys()
            .copied()
            .filter(|id| *id != status.leader)
            .collect();
        if self.state.nodes.contains_key(&status.leader) {
            order.push(status.leader);
        }
        // Every node is known before the first one is touched.
        let nodes = order
            .iter()
            .map(|id| self.node_or_record(*id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut updated = Vec::new();
        let mut durations = Vec::new();
        for node in nodes {
            let id = node.id;
            let old = self.state.nodes[&id].binary.clone();
            let untouched =
                |e: DeploymentError, updated: &Vec<u64>| DeploymentError::RolloutFailed {
                    node: id,
                    reason: e.to_string(),
                    restored: format!("it was not stopped (it runs {})", old.display()),
                    updated: updated.clone(),
                };
            if let Err(e) = self.prepare_stop(id).await {
                return Err(untouched(e, &updated));
            }
            self.state.interrupted = Some(Interrupted {
                node: id,
                from: old.clone(),
                to: binary.clone(),
            });
            self.save()?;
            let began = tokio::time::Instant::now();
            self.say(Some(id), "stopping");
            if let Err(e) = self.launcher.stop(id, self.grace()).await {
                return Err(DeploymentError::RolloutFailed {
                    node: id,
                    reason: e.to_string(),
                    restored: format!("it may still run {}", old.display()),
                    updated,
                });
            }
            self.say(
                Some(id),
                format!(
                    "stopped in {:.1?}; starting {}",
                    began.elapsed(),
                    binary.display()
                ),
            );
            let outcome = match self.launch(&node, &binary, StartMode::Restart).await {
                Ok(_) => {
                    self.say(
                        Some(id),
                        format!("started; {:.1?} since the stop began", began.elapsed()),
                    );
                    self.caught_up(id).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                self.say(
                    Some(id),
                    format!("failed: {e}; putting {} back", old.display()),
                );
                let _ = self.launcher.stop(id, self.grace()).await;
                let restored = match self.launch(&node, &old, StartMode::Restart).await {
                    Ok(_) => match self.caught_up(id).await {
                        Ok(()) => format!("it runs {} again, caught up and ready", old.display()),
                        Err(e) => format!("it was restarted on {} but: {e}", old.display()),
                    },
                    Err(e) => format!("restarting it on {} failed too: {e}", old.display()),
                };
                if self.launcher.running(id).await {
                    self.state.interrupted = None;
                    self.save()?;
                }
                return Err(DeploymentError::RolloutFailed {
                    node: id,
                    reason: e.to_string(),
                    restored,
                    updated,
                });
            }
            if let Some(r) = self.state.nodes.get_mut(&id) {
                r.binary = binary.clone();
            }
            self.state.interrupted = None;
            self.save()?;
            updated.push(id);
            durations.push((id, began.elapsed()));
            self.say(Some(id), format!("updated in {:.1?}", began.elapsed()));
        }
        Ok(RolloutReport { order, durations })
    }

    /// Before a node is stopped: quorum can do without it, it does not lead, its clients left
    /// for the leader, and quorum can still do without it (a voter may have gone meanwhile).
    async fn prepare_stop(&mut self, id: u64) -> Result<(), DeploymentError> {
        self.check_quorum_without(id).await?;
        self.hand_over(id).await?;
        self.drain(id).await?;
        self.check_quorum_without(id).await
    }

    /// The node as the file gives it, or as it was recorded when it started (a node the file
    /// no longer names).
    fn node_or_record(&self, id: u64) -> Result<NodeConfig, DeploymentError> {
        if let Ok(node) = self.node(id) {
            return Ok(node);
        }
        let record = self
            .state
            .nodes
            .get(&id)
            .ok_or(DeploymentError::UnknownNode(id))?;
        let bind = record.bind.parse().map_err(|_| DeploymentError::State {
            path: state_path(&self.config),
            message: format!("node {id}: invalid address {}", record.bind),
        })?;
        Ok(NodeConfig::new(id, bind, record.data_dir.clone()))
    }

    /// Starts a new node and has it join: it becomes a voter once caught up. The node is added
    /// to the manager's configuration. Run again after a failure, it finishes what the first
    /// run started (a node registered, started, or a learner not promoted yet).
    pub async fn add_node(&mut self, node: NodeConfig) -> Result<(), DeploymentError> {
        if self.state.nodes.contains_key(&node.id) && self.launcher.running(node.id).await {
            let status = self.leader_status().await?;
            if status
                .members
                .iter()
                .any(|m| m.id == node.id && m.role == "voter")
            {
                return Err(DeploymentError::AlreadyMember(node.id));
            }
        }
        let mut config = self.config.clone();
        config.nodes.retain(|n| n.id != node.id);
        config.nodes.push(node.clone());
        config.check()?;
        self.config = config;
        self.join(&node).await?;
        self.renew_ticket().await
    }

    /// Removes node `id` from the membership (the leader hands over first if it is the one
    /// removed); the node stops by itself once it learns it. Its data dir is kept (a removed
    /// node cannot come back: its id and key are refused from then on).
    /// Run again after a failure, it finishes: a node no longer a member is stopped and
    /// forgotten.
    pub async fn remove_node(&mut self, id: u64) -> Result<(), DeploymentError> {
        let status = self.leader_status().await?;
        let member = status.members.iter().any(|m| m.id == id);
        if !member && !self.state.nodes.contains_key(&id) {
            return Err(DeploymentError::UnknownNode(id));
        }
        if member {
            self.check_quorum_without(id).await?;
            self.hand_over(id).await?;
            // A ticket is honoured only while its issuer is a member: the one in hand is minted
            // again by the leader (the client is there after this status), not by `id`.
            self.leader_status().await?;
            self.renew_ticket().await?;
            let client = self.client().await?;
            self.say(Some(id), "removing it from the membership");
            client
                .remove_member(id)
                .await
                .map_err(client_error(format!("removing node {id}")))?;
        }
        self.launcher.stop(id, self.grace()).await?;
        self.state.nodes.remove(&id);
        self.config.nodes.retain(|n| n.id != id);
        self.save()?;
        self.say(Some(id), "removed and stopped (its data dir is kept)");
        Ok(())
    }

    /// Stops every node (followers first, the leader last, each gracefully). The data dirs
    /// and the manager's state are kept: [`Self::bootstrap`] starts them again.
    pub async fn stop(&mut self) -> Result<(), DeploymentError> {
        let any_running = self.any_running().await;
        // The leader goes last; with nothing running there is nobody to ask (and a client
        // would wait its whole timeout for an answer).
        let leader = match any_running {
            true => match self.client().await {
                Ok(client) => client.status().await.ok().map(|s| s.leader),
                Err(_) => None,
            },
            false => None,
        };
        if let Some(c) = self.client.take() {
            c.close().await;
        }
        let mut ids: Vec<u64> = self.state.nodes.keys().copied().collect();
        ids.sort_by_key(|id| Some(*id) == leader);
        for id in ids {
            self.launcher.stop(id, self.grace()).await?;
            self.say(Some(id), "stopped");
        }
        Ok(())
    }

    /// Whether the launcher reports any node of the state running.
    async fn any_running(&mut self) -> bool {
        for id in self.state.nodes.keys().copied().collect::<Vec<_>>() {
            if self.launcher.running(id).await {
                return true;
            }
        }
        false
    }

    /// Closes the manager's connection (the nodes keep running).
    pub async fn close(&mut self) {
        if let Some(c) = self.client.take() {
            c.close().await;
        }
    }
}

/// The `iroh_raft_mgmt_clients` gauge in a node's metrics text.
fn mgmt_clients(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("iroh_raft_mgmt_clients "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Takes the deployment's lock (`STATE_DIR/lock`, released when the process ends): commands
/// that stop nodes and rewrite the state must not interleave.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, DeploymentError> {
    let path = dir.join("lock");
    let fail = |e: std::io::Error| DeploymentError::State {
        path: path.clone(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(fail)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DeploymentError::Busy(path)),
        Err(std::fs::TryLockError::Error(e)) => Err(fail(e)),
    }
}

fn state_path(config: &DeploymentConfig) -> PathBuf {
    config.state_dir.join("cluster.json")
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mgmt_clients_gauge_is_read_from_metrics_text() {
        let text = "# TYPE iroh_raft_mgmt_clients gauge\niroh_raft_mgmt_clients 3\n\
                    iroh_raft_mgmt_clients_other 9\n";
        assert_eq!(mgmt_clients(text), Some(3));
        assert_eq!(mgmt_clients("iroh_raft_term 2\n"), None);
    }

    #[test]
    fn a_ready_line_names_the_node_and_its_endpoint() {
        let started = crate::deployment::launcher::parse_ready(
            "ready node=4 endpoint=abc123 addr=127.0.0.1:7004 metrics=127.0.0.1:9004",
        )
        .unwrap();
        assert_eq!((started.node_id, started.endpoint.as_str()), (4, "abc123"));
        assert!(crate::deployment::launcher::parse_ready("join ticket: x").is_none());
        assert!(crate::deployment::launcher::parse_ready("ready node=x endpoint=e").is_none());
    }

    #[test]
    fn a_data_dir_names_the_node_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(held_node(dir.path()), None);
        std::fs::write(
            dir.path().join(crate::JOIN_PENDING_FILE),
            "node=7\nbind=1.2.3.4:5\n",
        )
        .unwrap();
        assert_eq!(held_node(dir.path()), Some(7));
        std::fs::write(
            dir.path().join(crate::CONF_FILE),
            "bind=1.2.3.4:5\nnode=7\n",
        )
        .unwrap();
        assert_eq!(held_node(dir.path()), Some(7));
    }
}
