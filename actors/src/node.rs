//! Assembling one node: recover or bootstrap its storage, build the driver, spawn the actors in
//! dependency order (EventBus, StorageActor, RaftActor), hand out the protocol handler, and take
//! them down again in reverse order.

use std::sync::Arc;

use kameo::{
    actor::{ActorRef, Spawn},
    mailbox,
};
use raft::eraftpb::ConfState;
use tokio::sync::watch;
use tracing::info;

use crate::{
    config::NodeConfig,
    driver::Driver,
    error::{FatalError, StartError, StorageError},
    events::{EVENT_MAILBOX, EventBus},
    peer::{Dialer, RaftProtocol},
    raft_actor::{RAFT_MAILBOX, RaftActor, RaftArgs, Shutdown},
    state_machine::StateMachine,
    storage::{
        Flush, Identity, LogDb, Member, PERSIST_QUEUE, PersistProgress, Recovered, StorageActor,
        StorageArgs,
    },
};

/// Where the StorageActor runs. Production gives it its own OS thread, so redb's blocking
/// commits never stall the async workers; a deterministic simulation on a current-thread runtime
/// runs it as a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageSpawn {
    /// A dedicated OS thread (needs a multi-thread tokio runtime).
    Thread,
    /// A task on the current runtime.
    Task,
}

/// Everything needed to start a node.
#[derive(Debug)]
pub struct NodeSpec<S> {
    /// Timing and limits (its `node_id` is this node's id).
    pub config: NodeConfig,
    /// This node's iroh endpoint id (checked against the data dir).
    pub endpoint_id: iroh::EndpointId,
    /// The user's state machine, empty.
    pub state_machine: S,
    /// The opened database.
    pub db: LogDb,
    /// Initial members including this node, used only when the data dir is new.
    pub initial_members: Vec<Member>,
    /// How PeerActors reach peers.
    pub dialer: Arc<dyn Dialer>,
    /// Where the StorageActor runs.
    pub storage_spawn: StorageSpawn,
}

/// The running actors of one node.
#[derive(Debug)]
pub struct Node<S: StateMachine> {
    /// The RaftActor.
    pub raft: ActorRef<RaftActor<S>>,
    /// The StorageActor.
    pub storage: ActorRef<StorageActor>,
    /// The EventBus.
    pub events: ActorRef<EventBus>,
    /// The consensus protocol handler, to mount under [`crate::wire::ALPN`].
    pub protocol: RaftProtocol,
}

impl<S: StateMachine> Clone for Node<S> {
    fn clone(&self) -> Self {
        Self {
            raft: self.raft.clone(),
            storage: self.storage.clone(),
            events: self.events.clone(),
            protocol: self.protocol.clone(),
        }
    }
}

/// Reads the data dir; a new one is bootstrapped with the initial membership, an existing one is
/// checked to belong to this node and its stored membership wins.
pub fn recover_or_bootstrap(
    db: &mut LogDb,
    identity: Identity,
    initial_members: &[Member],
) -> Result<Recovered, StorageError> {
    let mut recovered = db.recover()?;
    match recovered.identity {
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
                term = recovered.hard_state.term,
                "recovered from data dir"
            );
            Ok(recovered)
        }
        None => {
            let mut voters: Vec<u64> = initial_members.iter().map(|m| m.node_id).collect();
            voters.sort_unstable();
            let conf_state = ConfState {
                voters,
                ..Default::default()
            };
            db.bootstrap(identity, &conf_state, initial_members)?;
            info!(node = identity.node_id, voters = ?conf_state.voters, "bootstrapped new node");
            recovered.identity = Some(identity);
            recovered.conf_state = conf_state;
            recovered.members = initial_members.to_vec();
            Ok(recovered)
        }
    }
}

impl<S: StateMachine> Node<S> {
    /// Recovers (or bootstraps) storage and spawns the node's actors.
    pub fn start(spec: NodeSpec<S>) -> Result<Self, StartError> {
        let NodeSpec {
            config,
            endpoint_id,
            state_machine,
            mut db,
            initial_members,
            dialer,
            storage_spawn,
        } = spec;
        let identity = Identity {
            node_id: config.node_id,
            endpoint_id,
        };
        let recovered = recover_or_bootstrap(&mut db, identity, &initial_members)?;
        let driver = Driver::new(
            &config,
            recovered.hard_state,
            recovered.conf_state,
            recovered.entries,
            0,
        )
        .map_err(|e| StartError::Raft {
            reason: e.to_string(),
        })?;

        let events = EventBus::spawn_with_mailbox((), mailbox::bounded(EVENT_MAILBOX));
        let (persist_tx, persist_rx) = flume::bounded(PERSIST_QUEUE);
        let (progress_tx, progress_rx) = watch::channel(PersistProgress::default());
        let storage_args = StorageArgs {
            db,
            requests: persist_rx,
            progress: progress_tx,
            fsync: config.fsync,
        };
        let storage = match storage_spawn {
            StorageSpawn::Thread => {
                StorageActor::spawn_in_thread_with_mailbox(storage_args, mailbox::bounded(16))
            }
            StorageSpawn::Task => {
                StorageActor::spawn_with_mailbox(storage_args, mailbox::bounded(16))
            }
        };
        let me = config.node_id;
        let raft_args = RaftArgs {
            config,
            driver,
            state_machine,
            applied: 0,
            members: recovered.members,
            dialer,
            persist_tx,
            persist_progress: progress_rx,
            events: events.clone(),
        };
        let raft = RaftActor::spawn_with_mailbox(raft_args, mailbox::bounded(RAFT_MAILBOX));
        let protocol =
            RaftProtocol::new(me, raft.clone().recipient(), raft.clone().reply_recipient());
        Ok(Self {
            raft,
            storage,
            events,
            protocol,
        })
    }

    /// Graceful stop: refuse new connections, fail pending requests with `ShuttingDown`, close
    /// peer connections, stop the RaftActor, then write and fsync everything queued and stop the
    /// StorageActor.
    pub async fn shutdown(&self) -> Result<(), FatalError> {
        self.protocol.close();
        if self.raft.ask(Shutdown).await.is_ok() {
            let _ = self.raft.stop_gracefully().await;
        }
        self.raft.wait_for_shutdown().await;
        let flushed = match self.storage.ask(Flush).await {
            Ok(()) => Ok(()),
            Err(kameo::error::SendError::HandlerError(e)) => Err(FatalError::Storage(e)),
            Err(_) => Ok(()), // already stopped; its on_stop flushed
        };
        let _ = self.storage.stop_gracefully().await;
        self.storage.wait_for_shutdown().await;
        let _ = self.events.stop_gracefully().await;
        flushed
    }

    /// Immediate stop without flushing (used when the last handle is dropped without shutdown;
    /// the StorageActor still makes what it received durable as it stops).
    pub fn kill(&self) {
        self.protocol.close();
        self.raft.kill();
        let storage = self.storage.clone();
        let events = self.events.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = storage.stop_gracefully().await;
                let _ = events.stop_gracefully().await;
            });
        } else {
            storage.kill();
            events.kill();
        }
    }
}
