//! Assembling one node: check or bootstrap its data dir, spawn the actors in dependency order
//! (EventBus, then under a [`NodeSupervisor`] the StorageActor and the RaftActor), hand out the
//! protocol handler, and take them down again in reverse order.

use std::sync::{Arc, atomic::AtomicBool};

mod mgmt_calls;

use kameo::{
    actor::{ActorRef, Spawn},
    error::HookError,
    mailbox,
    supervision::RestartPolicy,
};
use raft::eraftpb::ConfState;
use tokio::sync::watch;
use tracing::info;

use crate::{
    calls::NodeCalls,
    config::{NodeConfig, StorageSpawn},
    discovery::DiscoveryProtocol,
    error::{FatalError, StartError, StorageError},
    events::{EVENT_MAILBOX, EventBus},
    facts::Facts,
    membership::{Membership, SnapshotHeader, write_snapshot_header},
    metrics::NodeMetrics,
    mgmt::{MGMT_MAILBOX, MgmtActor, MgmtArgs, MgmtOptions, MgmtProtocol},
    peer::{Dialer, RaftProtocol},
    raft_actor::{RAFT_MAILBOX, RaftActor, RaftArgs, Shutdown},
    state_machine::{StateMachine, StateMachineSource},
    storage::{
        Close, DbHandle, Identity, LogDb, Member, PERSIST_QUEUE, PersistBatch, PersistProgress,
        SnapshotRecord, SnapshotWriter, StorageActor, StorageArgs,
    },
    supervisor::{
        Children, MAX_RESTARTS, NodeSupervisor, RESTART_WINDOW, SupervisorArgs, SupervisorParent,
    },
};

/// How a node with a new data dir enters its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// One of the initial members: all of them start with these members as voters (like etcd's
    /// initial cluster), recorded as a snapshot at index 1 so that the log describes the whole
    /// configuration to anyone who joins later.
    Initial(Vec<Member>),
    /// A node joining a running cluster: it knows (some of) the members so it can admit their
    /// connections, and gets the configuration from the leader (a snapshot), after the members
    /// added it as a learner.
    Join(Vec<Member>),
}

/// Everything needed to start a node.
#[derive(Debug)]
pub struct NodeSpec<S: StateMachine> {
    /// Timing and limits (its `node_id` is this node's id).
    pub config: NodeConfig,
    /// This node's iroh key: its public half is its endpoint id (checked against the data
    /// dir), and it signs the tickets the node mints.
    pub secret_key: iroh::SecretKey,
    /// Where the empty state machine comes from.
    pub state_machine: StateMachineSource<S>,
    /// The opened database.
    pub db: LogDb,
    /// How to enter the cluster, used only when the data dir is new.
    pub bootstrap: Bootstrap,
    /// How PeerActors reach peers.
    pub dialer: Arc<dyn Dialer>,
    /// Where the StorageActor runs.
    pub storage_spawn: StorageSpawn,
    /// How the management plane admits clients and brings newcomers in.
    pub mgmt: MgmtOptions<S>,
    /// Spawn the node's supervisor under an application's actor (`None`: on its own).
    pub parent: Option<SupervisorParent<S>>,
}

/// The running actors of one node.
#[derive(Debug)]
pub struct Node<S: StateMachine> {
    /// The RaftActor (the same reference across supervised restarts).
    pub raft: ActorRef<RaftActor<S>>,
    /// The StorageActor.
    pub storage: ActorRef<StorageActor>,
    /// The EventBus.
    pub events: ActorRef<EventBus>,
    /// The supervisor of the RaftActor and StorageActor.
    pub supervisor: ActorRef<NodeSupervisor<S>>,
    /// The database, released at shutdown.
    pub db: DbHandle,
    /// The consensus protocol handler, to mount under [`crate::wire::ALPN`].
    pub protocol: RaftProtocol,
    /// Membership, leadership and liveness, on watches.
    pub facts: Arc<Facts>,
    /// The MgmtActor: the management plane's state and workflows.
    pub mgmt: ActorRef<MgmtActor<S>>,
    /// The calls on this node, with their deadlines and retries.
    pub calls: NodeCalls<S>,
    /// The management protocol handler, to mount under [`crate::wire::MGMT_ALPN`].
    pub mgmt_protocol: MgmtProtocol<S>,
    /// The discovery protocol handler (joins by ticket), to mount under
    /// [`crate::wire::DISCOVERY_ALPN`].
    pub discovery_protocol: DiscoveryProtocol<S>,
    /// The node's metrics and their registry (the application may register its own there).
    pub metrics: Arc<NodeMetrics>,
    /// How PeerActors dial: closed at shutdown, so the node holds no endpoint clone after it.
    dialer: Arc<dyn Dialer>,
    /// Whether the supervisor is a child of an application's actor.
    supervised: bool,
}

impl<S: StateMachine> Clone for Node<S> {
    fn clone(&self) -> Self {
        Self {
            raft: self.raft.clone(),
            storage: self.storage.clone(),
            events: self.events.clone(),
            supervisor: self.supervisor.clone(),
            db: self.db.clone(),
            protocol: self.protocol.clone(),
            facts: self.facts.clone(),
            mgmt: self.mgmt.clone(),
            calls: self.calls.clone(),
            mgmt_protocol: self.mgmt_protocol.clone(),
            discovery_protocol: self.discovery_protocol.clone(),
            metrics: self.metrics.clone(),
            dialer: self.dialer.clone(),
            supervised: self.supervised,
        }
    }
}

/// Checks that an existing data dir belongs to this node, or bootstraps a new one (a restarted
/// node ignores `bootstrap`: its stored state wins).
pub fn check_or_bootstrap(
    db: &mut LogDb,
    identity: Identity,
    bootstrap: &Bootstrap,
) -> Result<(), StorageError> {
    match db.identity()? {
        Some(stored) if stored != identity => Err(StorageError::IdentityMismatch {
            stored_node: stored.node_id,
            stored_endpoint: stored.endpoint_id.to_string(),
            node: identity.node_id,
            endpoint: identity.endpoint_id.to_string(),
        }),
        Some(_) => {
            info!(
                node = identity.node_id,
                last_index = db.last_index(),
                "restarting from data dir"
            );
            Ok(())
        }
        None => match bootstrap {
            Bootstrap::Initial(members) => {
                let mut voters: Vec<u64> = members.iter().map(|m| m.node_id).collect();
                voters.sort_unstable();
                let conf_state = ConfState {
                    voters,
                    ..Default::default()
                };
                db.bootstrap(identity, &conf_state, members)?;
                write_initial_snapshot(db, &conf_state, members)?;
                info!(node = identity.node_id, voters = ?conf_state.voters, "bootstrapped new node");
                Ok(())
            }
            Bootstrap::Join(known) => {
                db.bootstrap(identity, &ConfState::default(), known)?;
                info!(
                    node = identity.node_id,
                    "new node, waiting to be added to the cluster"
                );
                Ok(())
            }
        },
    }
}

/// The configuration every initial member starts from: a snapshot at index 1, term 1, holding
/// the members and no state machine bytes (it starts empty). Identical on every initial member.
fn write_initial_snapshot(
    db: &mut LogDb,
    conf_state: &ConfState,
    members: &[Member],
) -> Result<(), StorageError> {
    let id = db.new_snapshot_id();
    let mut chunks = Vec::new();
    let mut writer = SnapshotWriter::new(|no, bytes| {
        chunks.push((no, bytes));
        Ok(())
    });
    let header = SnapshotHeader {
        membership: Membership::initial(members),
        // Every founding member starts its running hash here, with the same value.
        applied_hash: Some([0; 32]),
        has_state: false,
    };
    write_snapshot_header(&mut writer, &header)
        .map_err(|e| StorageError::io("write initial snapshot", e))?;
    let (size, count, checksum) = writer
        .finish()
        .map_err(|e| StorageError::io("write initial snapshot", e))?;
    for (no, bytes) in chunks {
        db.write_snapshot_chunk(id, no, &bytes)?;
    }
    let record = SnapshotRecord {
        id,
        index: 1,
        term: 1,
        conf_state: conf_state.clone(),
        size,
        chunks: count,
        checksum,
    };
    db.commit_snapshot(&record, Some((1, 1)))?;
    let hard_state = raft::eraftpb::HardState {
        term: 1,
        commit: 1,
        ..Default::default()
    };
    db.write(
        &[PersistBatch {
            hard_state: Some(hard_state),
            must_sync: true,
            ..Default::default()
        }],
        true,
    )
}

fn startup_error<E: std::fmt::Display>(
    actor: &'static str,
    e: HookError<&E>,
    map: impl FnOnce(&E) -> StartError,
) -> StartError {
    match e {
        HookError::Error(e) => map(e),
        HookError::Panicked(p) => StartError::Panicked {
            actor,
            reason: p.to_string(),
        },
    }
}

impl<S: StateMachine> Node<S> {
    /// Checks or bootstraps storage and spawns the node's actors; returns once the RaftActor has
    /// recovered the durable state.
    pub async fn start(spec: NodeSpec<S>) -> Result<Self, StartError> {
        let NodeSpec {
            config,
            secret_key,
            state_machine,
            mut db,
            bootstrap,
            dialer,
            storage_spawn,
            mgmt: mgmt_options,
            parent,
        } = spec;
        let endpoint_id = secret_key.public();
        let me = config.node_id;
        check_or_bootstrap(
            &mut db,
            Identity {
                node_id: me,
                endpoint_id,
            },
            &bootstrap,
        )?;

        let metrics = Arc::new(NodeMetrics::default());
        let events =
            EventBus::spawn_with_mailbox(metrics.events.clone(), mailbox::bounded(EVENT_MAILBOX));
        let facts = Facts::new();
        let supervisor_args = SupervisorArgs {
            node_id: me,
            facts: facts.clone(),
            events: events.clone(),
            started: Arc::new(AtomicBool::new(false)),
        };
        let supervisor = match &parent {
            Some(parent) => parent.spawn(supervisor_args).await,
            None => NodeSupervisor::<S>::spawn(supervisor_args),
        };
        let raft_restartable = state_machine.restartable();
        let dialer_handle = dialer.clone();
        let (persist_tx, persist_rx) = flume::bounded(PERSIST_QUEUE);
        let (progress_tx, progress_rx) = watch::channel(PersistProgress::default());

        let db_handle = db.handle();
        let storage_args = StorageArgs {
            db: db_handle.clone(),
            requests: persist_rx,
            progress: progress_tx,
            fsync: config.fsync,
            node_id: me,
            metrics: metrics.clone(),
        };
        drop(db);
        let storage = StorageActor::supervise_with(&supervisor, move || storage_args.clone())
            .restart_policy(RestartPolicy::Transient)
            .restart_limit(MAX_RESTARTS, RESTART_WINDOW);
        let storage = match storage_spawn {
            StorageSpawn::Thread => {
                storage
                    .spawn_in_thread_with_mailbox(mailbox::bounded(16))
                    .await
            }
            StorageSpawn::Task => storage.spawn_with_mailbox(mailbox::bounded(16)).await,
        };
        let started = storage
            .wait_for_startup_with_result(|r| {
                r.map_err(|e| startup_error("StorageActor", e, |e| StartError::Storage(e.clone())))
            })
            .await;
        if let Err(e) = started {
            db_handle.close();
            supervisor.kill();
            events.kill();
            return Err(e);
        }

        let config_copy = config.clone();
        let raft_args = RaftArgs {
            config,
            state_machine,
            storage: storage.clone(),
            db: db_handle.clone(),
            storage_spawn,
            dialer,
            persist_tx,
            persist_progress: progress_rx,
            events: events.clone(),
            facts: facts.clone(),
            metrics: metrics.clone(),
        };
        // Without a factory there is no fresh state machine to restart with: a crash is fatal
        // at once, with its own message.
        let policy = if raft_restartable {
            RestartPolicy::Transient
        } else {
            RestartPolicy::Never
        };
        let raft = RaftActor::supervise_with(&supervisor, move || raft_args.clone())
            .restart_policy(policy)
            .restart_limit(MAX_RESTARTS, RESTART_WINDOW)
            .spawn_with_mailbox(mailbox::bounded(RAFT_MAILBOX))
            .await;
        let started = raft
            .wait_for_startup_with_result(|r| {
                r.map_err(|e| startup_error("RaftActor", e, StartError::clone))
            })
            .await;
        if let Err(e) = started {
            let _ = storage.ask(Close).await;
            db_handle.close();
            supervisor.kill();
            events.kill();
            return Err(e);
        }
        let calls = NodeCalls::new(
            &config_copy,
            raft.clone(),
            events.clone(),
            (facts.clone(), metrics.clone(), db_handle.clone()),
        );
        let mgmt_args = MgmtArgs {
            calls: calls.clone(),
            secret: secret_key,
            membership: facts.membership(),
            allowlist: mgmt_options.allowlist,
            relays: mgmt_options.relays,
        };
        // The youngest child: a StorageActor or RaftActor restart restarts it too (its
        // workflows answer `Interrupted`, clients retry), and its own crash touches nothing else.
        let mgmt = MgmtActor::supervise_with(&supervisor, move || mgmt_args.clone())
            .restart_policy(RestartPolicy::Transient)
            .restart_limit(MAX_RESTARTS, RESTART_WINDOW)
            .spawn_with_mailbox(mailbox::bounded(MGMT_MAILBOX))
            .await;
        let _ = supervisor
            .tell(Children {
                raft: raft.clone(),
                storage: storage.clone(),
                mgmt: mgmt.id(),
                raft_restartable,
            })
            .await;
        let mgmt_protocol = MgmtProtocol::new(calls.clone(), mgmt.clone(), mgmt_options.reader)
            .with_watcher(mgmt_options.watcher);
        let discovery_protocol =
            DiscoveryProtocol::new(calls.clone(), mgmt.clone(), mgmt_options.join_options);
        let protocol = RaftProtocol::new(
            me,
            (
                raft.clone().recipient(),
                raft.clone().reply_recipient(),
                raft.clone().recipient(),
            ),
            facts.membership(),
            raft.clone().recipient(),
            (storage.clone(), metrics.clone()),
        );
        Ok(Self {
            raft,
            storage,
            events,
            supervisor,
            db: db_handle,
            protocol,
            facts,
            mgmt,
            calls,
            mgmt_protocol,
            discovery_protocol,
            metrics,
            dialer: dialer_handle,
            supervised: parent.is_some(),
        })
    }

    /// The fatal error that stopped this node, if one did.
    pub fn failure(&self) -> Option<FatalError> {
        self.facts.failure()
    }

    /// Graceful stop: refuse new connections, fail pending requests with `ShuttingDown`, close
    /// peer connections, stop the RaftActor, then write and fsync everything queued and stop the
    /// StorageActor.
    pub async fn shutdown(&self) -> Result<(), FatalError> {
        // From now on the management and discovery handlers admit nobody new.
        let failed_before = self.failure();
        self.facts.shut_down();
        self.protocol.close();
        let mut raft_failure = None;
        if let Ok(failure) = self.raft.ask(Shutdown).await {
            raft_failure = failure;
            let _ = self.raft.stop_gracefully().await;
            self.raft.wait_for_shutdown().await;
        }
        // Write back, fsync and close: when this returns the data dir is free for reuse.
        let flushed = match self.storage.ask(Close).await {
            Ok(()) => Ok(()),
            Err(kameo::error::SendError::HandlerError(e)) => Err(FatalError::Storage(e)),
            Err(_) => {
                // Stopped, or stopping (the supervisor stopped it after a fatal error): its
                // on_stop writes back and fsyncs what it received and lets go of the file; wait
                // for that.
                let _ = self.storage.wait_for_shutdown_result().await;
                Ok(())
            }
        };
        self.db.close();
        self.dialer.close();
        let _ = self.mgmt.stop_gracefully().await;
        let _ = self.supervisor.stop_gracefully().await;
        // A supervisor under an application's actor completes its stop only once that parent
        // has handled it: waiting here from the parent's own handler would never end. Its
        // children were stopped and waited for above.
        if !self.supervised {
            self.supervisor.wait_for_shutdown().await;
        }
        let _ = self.events.stop_gracefully().await;
        match failed_before.or(raft_failure) {
            Some(e) => Err(e),
            None => flushed,
        }
    }

    /// Immediate stop without waiting (when the last handle is dropped without `shutdown`).
    /// Stopping the supervisor stops its children; the StorageActor still makes what it received
    /// durable as it stops.
    pub fn kill(&self) {
        self.protocol.close();
        self.facts.shut_down();
        self.dialer.close();
        self.db.close();
        self.mgmt.kill();
        self.supervisor.kill();
        self.events.kill();
    }
}
