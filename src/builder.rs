//! [`RaftClusterBuilder`] and the [`Preset`]s it starts from.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use iroh::{Endpoint, EndpointAddr, SecretKey, protocol::Router};
use iroh_raft_actors::{
    Bootstrap, Identity, IrohDialer, LogDb, Member, Node, NodeConfig, NodeId, NodeSpec, StartError,
    StateMachine, StateMachineSource, StorageSpawn, SupervisorParent, Ticket,
    backup::{self, BackupError, BackupInfo},
    wire::{ALPN, DISCOVERY_ALPN, MGMT_ALPN, MgmtRole},
};

/// Hears `(bytes done, bytes in all)` while a backup is restored.
type RestoreProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;
use tokio::runtime::{Handle, RuntimeFlavor};

mod join;
mod memory;

use join::Created;
pub use join::JOIN_PENDING_FILE;

use crate::{
    JoinOptions, Preset,
    backups::{BackupConfig, Schedule},
    cluster::{Lifetime, RaftCluster},
    error::{BuildError, ConfigError},
    mgmt::{RemoteReader, RemoteWatcher, WatchStep},
    monitoring::MetricsServer,
    net::{PeerAddr, close_within, load_or_create_secret_key},
};

/// Name of the redb file inside the data dir.
pub const DB_FILE: &str = "raft.redb";

/// File in the data dir of a node run by `iroh-raft node`: `bind=ADDR` (the address it comes
/// back on at a restart), `node=ID`, and its relays (`relay=URL` lines, `relay_ca=PATH`).
pub const CONF_FILE: &str = "node.conf";

/// How long a failed build waits for its endpoint's close (see [`close_within`]).
const FAILED_CLOSE_GRACE: Duration = Duration::from_millis(200);

/// How long a PeerActor waits for one connection attempt.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// One initial member: its Raft id and endpoint address.
///
/// Converts from `(id, "<endpoint-id>@<ip:port>")`, `(id, PeerAddr)` and `(id, EndpointAddr)`.
#[derive(Clone, Debug)]
pub struct Peer {
    id: NodeId,
    addr: Result<PeerAddr, ConfigError>,
}

impl From<(NodeId, &str)> for Peer {
    fn from((id, s): (NodeId, &str)) -> Self {
        Peer {
            id,
            addr: s.parse(),
        }
    }
}

impl From<(NodeId, String)> for Peer {
    fn from((id, s): (NodeId, String)) -> Self {
        Peer {
            id,
            addr: s.parse(),
        }
    }
}

impl From<(NodeId, PeerAddr)> for Peer {
    fn from((id, addr): (NodeId, PeerAddr)) -> Self {
        Peer { id, addr: Ok(addr) }
    }
}

impl From<(NodeId, EndpointAddr)> for Peer {
    fn from((id, addr): (NodeId, EndpointAddr)) -> Self {
        Peer {
            id,
            addr: Ok(PeerAddr(addr)),
        }
    }
}

/// Builds a [`RaftCluster`] handle: validates the configuration, opens (or creates) the data
/// dir, binds or adopts an iroh endpoint, recovers or bootstraps the log and spawns the node's
/// actors.
///
/// Peers are the *initial* membership and are used only when the data dir is new; a restarted
/// node uses the membership stored in its data dir. The list may include this node itself
/// (the same list on every node, as with etcd's `initial-cluster`).
#[must_use]
pub struct RaftClusterBuilder<S: StateMachine> {
    node_id: Option<NodeId>,
    data_dir: Option<PathBuf>,
    bind_address: Option<String>,
    endpoint: Option<Endpoint>,
    external_router: bool,
    secret_key: Option<SecretKey>,
    peers: Vec<Peer>,
    state_machine: Option<StateMachineSource<S>>,
    preset: Preset,
    heartbeat: Option<Duration>,
    election: Option<Duration>,
    max_log_entries: Option<u64>,
    snapshot_trailing_entries: Option<u64>,
    lease_reads: bool,
    control_stream: bool,
    memory: Option<iroh_raft_actors::MemoryNetwork>,
    fsync: Option<bool>,
    request_timeout: Option<Duration>,
    rng_seed: Option<u64>,
    joining: bool,
    join_ticket: Option<Ticket>,
    join_as_learner: bool,
    join_options: JoinOptions,
    lan_name: Option<String>,
    restore_from: Option<PathBuf>,
    backups: Option<BackupConfig>,
    restore_progress: Option<RestoreProgress>,
    mgmt_allowlist: BTreeMap<iroh::EndpointId, MgmtRole>,
    remote_reader: Option<RemoteReader<S>>,
    remote_watcher: Option<RemoteWatcher<S>>,
    parent: Option<SupervisorParent<S>>,
    metrics_addr: Option<SocketAddr>,
    relays: Vec<iroh::RelayUrl>,
    relay_ca: Option<PathBuf>,
    congestion: Option<crate::net::CongestionControl>,
    #[cfg(feature = "otel")]
    otlp: Option<crate::telemetry::OtlpOptions>,
}

impl<S: StateMachine> Default for RaftClusterBuilder<S> {
    fn default() -> Self {
        Self {
            node_id: None,
            data_dir: None,
            bind_address: None,
            endpoint: None,
            external_router: false,
            secret_key: None,
            peers: Vec::new(),
            state_machine: None,
            preset: Preset::default(),
            heartbeat: None,
            election: None,
            max_log_entries: None,
            snapshot_trailing_entries: None,
            lease_reads: false,
            control_stream: true,
            memory: None,
            fsync: None,
            request_timeout: None,
            rng_seed: None,
            joining: false,
            join_ticket: None,
            join_as_learner: false,
            join_options: JoinOptions::default(),
            lan_name: None,
            restore_from: None,
            backups: None,
            restore_progress: None,
            mgmt_allowlist: BTreeMap::new(),
            remote_reader: None,
            remote_watcher: None,
            parent: None,
            metrics_addr: None,
            relays: Vec::new(),
            relay_ca: None,
            congestion: None,
            #[cfg(feature = "otel")]
            otlp: None,
        }
    }
}

impl<S: StateMachine> RaftCluster<S> {
    /// Starts configuring a node.
    pub fn builder() -> RaftClusterBuilder<S> {
        RaftClusterBuilder::default()
    }
}

impl<S: StateMachine> RaftClusterBuilder<S> {
    /// This node's Raft id (required, not 0).
    pub fn node_id(mut self, id: NodeId) -> Self {
        self.node_id = Some(id);
        self
    }

    /// Directory for the log (`raft.redb`) and the node's secret key (`secret.key`). Required.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Address the node's own endpoint binds to (default `127.0.0.1:0`). Not with
    /// [`Self::endpoint`].
    pub fn bind_address(mut self, addr: impl ToString) -> Self {
        self.bind_address = Some(addr.to_string());
        self
    }

    /// Uses the application's endpoint instead of binding one. Its key is the node's identity
    /// (the data dir's `secret.key` is then not used). Unless [`Self::external_router`] is set,
    /// the node spawns an iroh `Router` on it for [`ALPN`] and closes the endpoint at shutdown.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Do not spawn a router: the application mounts the node's three protocol handlers on its
    /// own `Router`: [`RaftCluster::protocol_handler`] under [`ALPN`] (consensus),
    /// [`RaftCluster::mgmt_handler`] under [`MGMT_ALPN`] (management) and
    /// [`RaftCluster::discovery_handler`] under [`DISCOVERY_ALPN`] (joins by ticket). The
    /// endpoint's UDP socket is released once the last clone of the `Endpoint` is gone: the
    /// `Router` holds one until it is dropped (`Router::shutdown` only closes it).
    pub fn external_router(mut self) -> Self {
        self.external_router = true;
        self
    }

    /// Spawn the node's supervisor as a child of `parent` (the application's supervisor), so
    /// the node is part of the application's supervision tree: the node still restarts its own
    /// crashed actors, and when it stops for good `parent` sees an abnormal stop whose typed
    /// reason [`iroh_raft_actors::node_failure`] gives back. See
    /// [`iroh_raft_actors::SupervisorParent`]: the parent should use `OneForOne`, and must not
    /// await [`RaftCluster::shutdown`] inside its own handlers.
    pub fn supervised_by<A: kameo::Actor>(mut self, parent: &kameo::actor::ActorRef<A>) -> Self {
        self.parent = Some(SupervisorParent::of(parent));
        self
    }

    /// Serves the node's metrics and health over HTTP on `addr` (port 0 picks one; see
    /// [`RaftCluster::metrics_addr`]): `/metrics` (OpenMetrics text, ours and iroh's),
    /// `/livez`, `/readyz` and `/health` with etcd's meanings. See [`crate::monitoring`]. Off by
    /// default; the same figures are always available from Rust
    /// ([`RaftCluster::export_metrics_prometheus`], [`RaftCluster::get_health_status`]).
    pub fn metrics_addr(mut self, addr: SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }

    /// Exports traces (one per proposal, across nodes) over OTLP/HTTP to `endpoint` (a base
    /// URL such as `http://collector:4318`), recording all new traces unless
    /// [`Self::otlp_sampling`] says otherwise. Installs the process's global tracing subscriber
    /// at build (see [`crate::telemetry::init_otlp`]); an application with its own subscriber
    /// adds [`crate::telemetry::otlp_layer`] to it instead.
    #[cfg(feature = "otel")]
    pub fn otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        let ratio = self.otlp.as_ref().map_or(1.0, |o| o.sampling_ratio);
        self.otlp = Some(crate::telemetry::OtlpOptions::new(endpoint).sampling_ratio(ratio));
        self
    }

    /// The share of new traces recorded (0.0 to 1.0) with [`Self::otlp_endpoint`].
    #[cfg(feature = "otel")]
    pub fn otlp_sampling(mut self, ratio: f64) -> Self {
        let options = self
            .otlp
            .take()
            .unwrap_or_else(|| crate::telemetry::OtlpOptions::new(String::new()));
        self.otlp = Some(options.sampling_ratio(ratio));
        self
    }

    /// Uses this secret key instead of the one in the data dir (ignored with [`Self::endpoint`]).
    pub fn secret_key(mut self, key: SecretKey) -> Self {
        self.secret_key = Some(key);
        self
    }

    /// The initial members other than (or including) this node.
    pub fn peers<I, P>(mut self, peers: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<Peer>,
    {
        self.peers.extend(peers.into_iter().map(Into::into));
        self
    }

    /// The state machine, empty (a restarted node replays its log into it).
    ///
    /// With a single instance the node cannot rebuild its state machine if the RaftActor crashes
    /// (a panic in `apply`, say): such a crash stops the node with a fatal error. Use
    /// [`Self::state_machine_factory`] to let the supervisor restart it instead.
    pub fn state_machine(mut self, sm: S) -> Self {
        self.state_machine = Some(StateMachineSource::instance(sm));
        self
    }

    /// A factory of empty state machines: the node starts with one, and after a RaftActor crash
    /// the supervisor restarts it with a fresh one and replays the log (up to
    /// [`iroh_raft_actors::MAX_RESTARTS`] times within [`iroh_raft_actors::RESTART_WINDOW`]).
    pub fn state_machine_factory(mut self, f: impl Fn() -> S + Send + Sync + 'static) -> Self {
        self.state_machine = Some(StateMachineSource::factory(f));
        self
    }

    /// Timing and durability defaults; see [`Preset`].
    pub fn preset(mut self, preset: Preset) -> Self {
        self.preset = preset;
        self
    }

    /// Leader heartbeat interval.
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat = Some(d);
        self
    }

    /// Minimum election timeout (the actual one is drawn from `[t, 2t)` each term); must be longer
    /// than the heartbeat interval.
    pub fn election_timeout(mut self, d: Duration) -> Self {
        self.election = Some(d);
        self
    }

    /// Applied entries between snapshots (preset default, see [`Preset`]): once this many were
    /// applied since the last snapshot, the node snapshots its state machine and compacts its
    /// log behind it.
    pub fn max_log_entries(mut self, n: u64) -> Self {
        self.max_log_entries = Some(n);
        self
    }

    /// Entries kept in the log behind each snapshot (default 1,000), so a follower slightly behind
    /// catches up from the log rather than needing the whole snapshot.
    pub fn snapshot_trailing_entries(mut self, n: u64) -> Self {
        self.snapshot_trailing_entries = Some(n);
        self
    }

    /// Overrides the preset's fsync choice.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = Some(on);
        self
    }

    /// How long `propose` and reads wait, retries included, before giving up.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = Some(d);
        self
    }

    /// Serves [`RaftCluster::linearizable_query`] on the leader's lease (check-quorum) instead
    /// of a ReadIndex round with the followers. Off by default: it is linearizable only while
    /// the nodes' clocks advance at nearly the same rate and no leader is paused for longer than
    /// an election timeout (see `NodeConfig::lease_reads` for the bound).
    pub fn lease_reads(mut self, on: bool) -> Self {
        self.lease_reads = on;
        self
    }

    /// Sends votes and heartbeats on a stream of their own, apart from appends
    /// and snapshots (default on), so a saturated link does not delay them into an election.
    /// Turning it off is for measuring what it buys.
    pub fn control_stream(mut self, on: bool) -> Self {
        self.control_stream = on;
        self
    }

    /// Seeds the election jitter (reproducible runs).
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = Some(seed);
        self
    }

    fn node_config(&self, node_id: NodeId) -> Result<NodeConfig, ConfigError> {
        let heartbeat = self.heartbeat.unwrap_or(self.preset.heartbeat());
        let election = self.election.unwrap_or(self.preset.election_timeout());
        if heartbeat < Duration::from_millis(1) {
            return Err(ConfigError::HeartbeatTooShort);
        }
        if election <= heartbeat {
            return Err(ConfigError::ElectionTimeoutTooShort {
                election,
                heartbeat,
            });
        }
        let max_log_entries = self
            .max_log_entries
            .unwrap_or(self.preset.max_log_entries());
        if max_log_entries == 0 {
            return Err(ConfigError::ZeroMaxLogEntries);
        }
        let mut config = NodeConfig::new(node_id);
        config.heartbeat_interval = heartbeat;
        config.election_timeout = election;
        config.fsync = self.fsync.unwrap_or(self.preset.fsync());
        config.request_timeout = self
            .request_timeout
            .unwrap_or(self.preset.request_timeout());
        config.rng_seed = self.rng_seed;
        config.max_log_entries = max_log_entries;
        config.snapshot_trailing_entries = self.snapshot_trailing_entries.unwrap_or(1_000);
        config.lease_reads = self.lease_reads;
        config.control_stream = self.control_stream;
        Ok(config)
    }

    /// How the management plane admits clients and brings newcomers in.
    fn mgmt_options(&self) -> iroh_raft_actors::mgmt::MgmtOptions<S> {
        iroh_raft_actors::mgmt::MgmtOptions {
            allowlist: self.mgmt_allowlist.clone(),
            reader: self.remote_reader.clone(),
            watcher: self.remote_watcher.clone(),
            join_options: self.join_options,
            relays: self.relays.clone(),
        }
    }

    /// Makes the node reachable through the relay server at `url` (call again for more), for
    /// members behind NATs: the node keeps a connection to its home relay, dials every member
    /// through the relays as well as at its direct addresses, and moves to a direct path when
    /// hole punching finds one. Default: no relays (direct addresses only). Give every member
    /// the same relays; the tickets the node issues name them, and a newcomer that joins with
    /// such a ticket and no relays of its own uses the ticket's.
    ///
    /// What a relay can see, and how to run one: [`crate::net::Relays`] and the README.
    pub fn relay_url(mut self, url: iroh::RelayUrl) -> Self {
        self.relays.push(url);
        self
    }

    /// Trusts the PEM certificates in `path` as certificate authorities for the relays' TLS
    /// (a relay with a certificate of a private CA, or a self-signed one), besides the usual
    /// web roots. A file that cannot be read or holds no certificate fails the build with
    /// [`ConfigError::RelayCa`].
    pub fn relay_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.relay_ca = Some(path.into());
        self
    }

    /// The congestion controller of the node's QUIC connections (default
    /// [`CongestionControl::Cubic`](crate::net::CongestionControl)). BBR keeps throughput up on
    /// long links with random packet loss, where Cubic backs off at every loss. Applies to the
    /// endpoint the node binds itself, not to one given with [`Self::endpoint`].
    pub fn congestion_control(mut self, cc: crate::net::CongestionControl) -> Self {
        self.congestion = Some(cc);
        self
    }

    /// The relays the node uses: its own, else its join ticket's, with the CA file read.
    fn resolve_relays(&self) -> Result<crate::net::Relays, ConfigError> {
        let urls = match (&self.join_ticket, self.relays.is_empty()) {
            (Some(ticket), true) => ticket.relays.clone(),
            _ => self.relays.clone(),
        };
        crate::net::Relays::with_ca_file(urls, self.relay_ca.as_deref())
    }

    /// How a node with no stored state enters: founding with `peers` (plus itself at `own`),
    /// or, with [`Self::joining`], waiting to be added by them.
    fn new_bootstrap(
        &self,
        node_id: NodeId,
        own: EndpointAddr,
        peers: Vec<(NodeId, PeerAddr)>,
    ) -> Result<Bootstrap, ConfigError> {
        let members = initial_members(node_id, own, peers)?;
        Ok(if self.joining {
            Bootstrap::Join(
                members
                    .into_iter()
                    .filter(|m| m.node_id != node_id)
                    .collect(),
            )
        } else {
            Bootstrap::Initial(members)
        })
    }

    /// This node joins a running cluster instead of founding one: [`Self::peers`] are (some of)
    /// its current members, whose connections it admits; it starts with no configuration and
    /// waits for a member to add it ([`RaftCluster::join`] or [`RaftCluster::add_learner`]),
    /// then receives the configuration and state from the leader. Ignored on restart.
    pub fn joining(mut self) -> Self {
        self.joining = true;
        self
    }

    /// Joins the cluster a ticket names (its role must be `join` or `admin`): at build time the
    /// node presents the ticket to a member over the discovery protocol, is given its Raft id
    /// and the membership, starts, and `build` returns once it has caught up and been promoted
    /// to voter (or added as a learner, with [`Self::join_as_learner`]). No `node_id` is needed.
    /// A restarted node (its data dir already holds a node) ignores the ticket.
    pub fn join_ticket(mut self, ticket: Ticket) -> Self {
        self.join_ticket = Some(ticket);
        self
    }

    /// With [`Self::join_ticket`]: stay a learner (receives the log, does not vote).
    pub fn join_as_learner(mut self) -> Self {
        self.join_as_learner = true;
        self
    }

    /// How this node brings in newcomers that present a ticket to it, and how long a joining
    /// node waits for its own promotion. Default: promote within 100 entries, give up after 60 s.
    pub fn join_options(mut self, options: JoinOptions) -> Self {
        self.join_options = options;
        self
    }

    /// Announces this node on the local network (mDNS) as a member of cluster `name`, so that
    /// [`crate::lan::find_members`] finds it. Admission is unchanged: only members and ticket
    /// holders get in.
    pub fn lan_discovery(mut self, name: impl Into<String>) -> Self {
        self.lan_name = Some(name.into());
        self
    }

    /// Founds a new cluster from a backup (`RaftCluster::backup`, `iroh-raft ctl snapshot
    /// save`), like `etcdutl snapshot restore`: the data dir must hold no node (it may hold the
    /// node's key, nothing else is read), and the
    /// backup is read through and its hash and format version checked before anything is
    /// created. The node (with the [`Self::peers`] given, all voters) starts at the backup's
    /// index with its state; the cluster is a new one (its id derives from the backup's hash
    /// and the members), so the old cluster's tickets and keys are not honoured. Every initial
    /// member restores the same file with the same peers; or one member restores alone and
    /// the others join it by ticket.
    pub fn restore_from(mut self, backup: impl Into<PathBuf>) -> Self {
        self.restore_from = Some(backup.into());
        self
    }

    /// Scheduled backups: on `config.schedule` the leader saves a consistent backup to
    /// `config.target` (a directory or `s3://bucket/prefix`), reads it back and checks its hash,
    /// then deletes the oldest beyond `config.retention` (see [`crate::backups`]).
    pub fn backups(mut self, config: BackupConfig) -> Self {
        self.backups = Some(config);
        self
    }

    /// With [`Self::restore_from`]: hears `(bytes done, bytes in all)` while the backup is
    /// verified and written.
    pub fn restore_progress(mut self, progress: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        self.restore_progress = Some(Arc::new(progress));
        self
    }

    /// Admits the management client with endpoint id `key` with `role` without a ticket
    /// (members are always admins of each other).
    pub fn mgmt_allow(mut self, key: iroh::EndpointId, role: MgmtRole) -> Self {
        self.mgmt_allowlist.insert(key, role);
        self
    }

    /// Serves linearizable reads to remote clients: `reader` decodes a query, runs it on the
    /// state machine and encodes the answer (see [`crate::kv::remote_get`] for the KV store).
    pub fn remote_reads(
        mut self,
        reader: impl Fn(&S, &[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    ) -> Self {
        self.remote_reader = Some(Arc::new(reader));
        self
    }

    /// Serves watches to remote clients: `watcher` runs on the state machine after every apply
    /// with the client's encoded query and the previous step's cursor, and answers the changes
    /// since (see [`crate::kv::remote_watch`] for the KV store).
    pub fn remote_watches(
        mut self,
        watcher: impl Fn(&S, &[u8], Option<u64>) -> Result<WatchStep, String> + Send + Sync + 'static,
    ) -> Self {
        self.remote_watcher = Some(Arc::new(watcher));
        self
    }

    /// Validates, binds, recovers and starts the node.
    pub async fn build(mut self) -> Result<RaftCluster<S>, BuildError> {
        if self.node_id == Some(0) {
            return Err(ConfigError::ZeroNodeId.into());
        }
        // Check the configuration before any IO (the real id comes later for a joining node).
        self.node_config(self.node_id.unwrap_or(1))?;
        if self.node_id.is_none() && self.join_ticket.is_none() && self.data_dir.is_none() {
            return Err(ConfigError::MissingNodeId.into());
        }
        let state_machine = self
            .state_machine
            .take()
            .ok_or(ConfigError::MissingStateMachine)?;
        if let Some(network) = self.memory.take() {
            return self.build_in_memory(network, state_machine).await;
        }
        let data_dir = self.data_dir.clone().ok_or(ConfigError::MissingDataDir)?;
        let relays = self.resolve_relays()?;
        self.relays = relays.urls.clone();
        let peers = std::mem::take(&mut self.peers)
            .into_iter()
            .map(|p| p.addr.map(|a| (p.id, a)))
            .collect::<Result<Vec<_>, _>>()?;
        let bind = match (&self.bind_address, &self.endpoint) {
            (Some(_), Some(_)) => return Err(ConfigError::BindAddressAndEndpoint.into()),
            (Some(s), None) => Some(
                s.parse::<SocketAddr>()
                    .map_err(|_| ConfigError::InvalidBindAddress { given: s.clone() })?,
            ),
            (None, _) => None,
        };

        let schedule = self
            .backups
            .as_ref()
            .map(BackupConfig::check)
            .transpose()
            .map_err(ConfigError::Backups)?;
        let restored = self.verify_restore(&data_dir).await?;

        // All or nothing: until the node exists, a failure removes what this build created.
        let mut created = Created::missing_dirs(&data_dir);
        std::fs::create_dir_all(&data_dir).map_err(|source| BuildError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        created.file(data_dir.join(DB_FILE));
        let bound = match self.endpoint.take() {
            Some(ep) => Ok((ep, false)),
            None => {
                let bind = bind.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
                self.own_endpoint(&data_dir, bind, &relays, &mut created)
                    .await
                    .map(|ep| (ep, true))
            }
        };
        let (endpoint, owns_endpoint) = match bound {
            Ok(bound) => bound,
            Err(e) => {
                created.undo();
                return Err(e);
            }
        };
        let started = self
            .start(
                endpoint.clone(),
                owns_endpoint,
                (data_dir, &mut created),
                peers,
                (state_machine, restored, schedule),
            )
            .await;
        match started {
            Ok(cluster) => Ok(cluster),
            Err(e) => {
                if owns_endpoint {
                    // Dials to members that are down would hold a full close up for ~3 s.
                    close_within(&endpoint, FAILED_CLOSE_GRACE).await;
                }
                created.undo();
                Err(e)
            }
        }
    }

    /// With [`Self::restore_from`]: checks that the data dir is empty and reads the backup
    /// through, before anything is created.
    async fn verify_restore(
        &self,
        data_dir: &std::path::Path,
    ) -> Result<Option<BackupInfo>, BuildError> {
        let Some(path) = self.restore_from.clone() else {
            return Ok(None);
        };
        if self.joining || self.join_ticket.is_some() {
            return Err(ConfigError::RestoreAndJoin.into());
        }
        // The dir may hold the node's key already (peers need it in advance), and a log
        // without a node (what an interrupted restore or first start leaves), never a node.
        let db_path = data_dir.join(DB_FILE);
        let holds_node = data_dir.join(JOIN_PENDING_FILE).exists()
            || (db_path.exists()
                && tokio::task::spawn_blocking(move || {
                    LogDb::open(&db_path).and_then(|db| db.identity())
                })
                .await
                .map_err(|e| BuildError::Restore(BackupError::Snapshot(e.to_string())))?
                .map_err(StartError::from)?
                .is_some());
        if holds_node {
            return Err(BackupError::NotEmpty {
                path: data_dir.to_owned(),
            }
            .into());
        }
        let progress = self.restore_progress.clone();
        let info = tokio::task::spawn_blocking(move || {
            backup::verify_file(&path, |done, all| {
                if let Some(p) = &progress {
                    p(done / 2, all);
                }
            })
        })
        .await
        .map_err(|e| BuildError::Restore(BackupError::Snapshot(e.to_string())))??;
        Ok(Some(info))
    }

    /// Writes the verified backup into the new node's log.
    async fn restore(
        &self,
        mut db: LogDb,
        identity: Identity,
        members: Vec<Member>,
        info: BackupInfo,
    ) -> Result<LogDb, BuildError> {
        let path = self
            .restore_from
            .clone()
            .ok_or(ConfigError::RestoreAndJoin)?;
        let progress = self.restore_progress.clone();
        let (db, restored) = tokio::task::spawn_blocking(move || {
            let half = info.file_size / 2;
            let restored = backup::restore_into(
                &mut db,
                identity,
                &members,
                (&path, Some(info)),
                |done, all| {
                    if let Some(p) = &progress {
                        p(half + done / 2, all);
                    }
                },
            );
            (db, restored)
        })
        .await
        .map_err(|e| BuildError::Restore(BackupError::Snapshot(e.to_string())))?;
        let info = restored?;
        tracing::info!(
            index = info.header.index,
            term = info.header.term,
            bytes = info.file_size,
            "restored the node's state from a backup"
        );
        Ok(db)
    }

    /// The node's own endpoint, with the data dir's key unless one was given.
    async fn own_endpoint(
        &mut self,
        data_dir: &std::path::Path,
        bind: SocketAddr,
        relays: &crate::net::Relays,
        created: &mut Created,
    ) -> Result<Endpoint, BuildError> {
        let key = match self.secret_key.take() {
            Some(key) => key,
            None => {
                created.file(data_dir.join(crate::net::SECRET_KEY_FILE));
                load_or_create_secret_key(data_dir)?
            }
        };
        let transport = crate::net::transport_config_with(self.congestion.unwrap_or_default());
        crate::net::bind_endpoint_with_relays(key, bind, transport, relays).await
    }

    async fn start(
        self,
        endpoint: Endpoint,
        owns_endpoint: bool,
        (data_dir, created): (PathBuf, &mut Created),
        peers: Vec<(NodeId, PeerAddr)>,
        (state_machine, restored, schedule): (
            StateMachineSource<S>,
            Option<BackupInfo>,
            Option<Schedule>,
        ),
    ) -> Result<RaftCluster<S>, BuildError> {
        #[cfg(feature = "otel")]
        if let Some(otlp) = &self.otlp {
            crate::telemetry::init_otlp(otlp)?;
        }
        // Bound before anything starts: a taken port fails the build with nothing to undo.
        let metrics_listener = match self.metrics_addr {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                BuildError::MetricsBind {
                    addr,
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };
        let db_path = data_dir.join(DB_FILE);
        // A new node asks to join before it creates its log: a refusal leaves nothing behind.
        let mut accepted = None;
        if let Some(ticket) = &self.join_ticket
            && !db_path.exists()
        {
            accepted = Some(
                self.ask_to_join(&endpoint, ticket, &data_dir, created)
                    .await?,
            );
        }
        let db = tokio::task::spawn_blocking(move || LogDb::open(&db_path))
            .await
            .map_err(|e| StartError::Raft {
                reason: format!("storage open task failed: {e}"),
            })?
            .map_err(StartError::from)?;
        let stored = db.identity().map_err(StartError::from)?;
        let (node_id, bootstrap, join) = self
            .identity(stored, accepted, &endpoint, &data_dir, created, peers)
            .await?;
        let db = match (restored, &bootstrap) {
            (Some(info), Bootstrap::Initial(members)) => {
                let identity = Identity {
                    node_id,
                    endpoint_id: endpoint.id(),
                };
                self.restore(db, identity, members.clone(), info).await?
            }
            (Some(_), _) => return Err(ConfigError::RestoreAndJoin.into()),
            (None, _) => db,
        };
        created.keep();
        let config = self.node_config(node_id)?;
        let storage_spawn = match Handle::current().runtime_flavor() {
            RuntimeFlavor::CurrentThread => StorageSpawn::Task,
            _ => StorageSpawn::Thread,
        };
        let spec = NodeSpec {
            config,
            secret_key: endpoint.secret_key().clone(),
            state_machine,
            db,
            bootstrap,
            dialer: Arc::new(
                IrohDialer::new(endpoint.clone(), DIAL_TIMEOUT).with_relays(self.relays.clone()),
            ),
            storage_spawn,
            mgmt: self.mgmt_options(),
            parent: self.parent.clone(),
        };
        if let Some(name) = &self.lan_name {
            crate::lan::announce(&endpoint, name).map_err(|e| BuildError::Lan(e.to_string()))?;
        }
        let node = Node::start(spec).await?;
        // One registry shows iroh's endpoint metrics (under `iroh_`) beside ours.
        node.metrics
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .sub_registry_with_prefix("iroh")
            .register_all(endpoint.metrics());
        let metrics_server = metrics_listener.map(|l| MetricsServer::serve(l, node.calls.clone()));
        let router = (!self.external_router).then(|| {
            Router::builder(endpoint.clone())
                .accept(ALPN, node.protocol.clone())
                .accept(DISCOVERY_ALPN, node.discovery_protocol.clone())
                .accept(MGMT_ALPN, node.mgmt_protocol.clone())
                .spawn()
        });
        let mut backups = None;
        if let Some(schedule) = schedule {
            let calls = node.calls.clone();
            let metrics = Arc::new(crate::backups::BackupMetrics::default());
            node.metrics
                .registry
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .register(metrics.clone());
            backups = Some(crate::backups::spawn(calls, schedule, metrics));
        }
        let mut lifetime = Lifetime::new(node, endpoint, router, owns_endpoint);
        lifetime.backups = backups;
        lifetime.metrics_server = metrics_server;
        let cluster = RaftCluster::new(lifetime);
        self.finish_join(&cluster, join, &data_dir).await?;
        Ok(cluster)
    }
}

/// The initial membership: the peers plus this node, checked for duplicates.
fn initial_members(
    me: NodeId,
    own: EndpointAddr,
    peers: Vec<(NodeId, PeerAddr)>,
) -> Result<Vec<Member>, ConfigError> {
    let mut ids = BTreeSet::new();
    let mut endpoints = BTreeSet::new();
    let own_id = own.id;
    let mut members = vec![Member {
        node_id: me,
        addr: own,
    }];
    ids.insert(me);
    endpoints.insert(own_id);
    for (id, addr) in peers {
        if id == me {
            if addr.id() != own_id {
                return Err(ConfigError::SelfMismatch {
                    node: me,
                    listed: addr.id().to_string(),
                    actual: own_id.to_string(),
                });
            }
            continue;
        }
        if !ids.insert(id) {
            return Err(ConfigError::DuplicateNodeId(id));
        }
        if !endpoints.insert(addr.id()) {
            return Err(ConfigError::DuplicateEndpoint(addr.id().to_string()));
        }
        members.push(Member {
            node_id: id,
            addr: addr.0,
        });
    }
    if id_zero(&members) {
        return Err(ConfigError::ZeroNodeId);
    }
    Ok(members)
}

fn id_zero(members: &[Member]) -> bool {
    members.iter().any(|m| m.node_id == 0)
}
